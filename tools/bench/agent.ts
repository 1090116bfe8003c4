// The agent as a process: how fast a config written to etcd reaches its kernel maps
// ("propagation"), whether a running transfer notices config changes and program replacements
// ("hot_swap"), and what the agent costs while nothing happens ("agent_idle").
//
// Every bench builds its own test bed (test/lib/netns.ts: a client and a server namespace joined
// by a veth pair) and runs the real `sslwall agent` inside the client namespace, attached to its
// veth end, with a bpffs and a cgroup of the bed's own. The etcd benches start a Debian etcd on
// loopback (test/lib/etcd.ts) and reach it from the namespace through the unix-socket bridge the
// integration tests use (test/integration/etcd-bridge.ts). The host process reads the agent's
// pinned maps with the native addon to see what the kernel has in force.
//
// Nothing here touches a host interface. At the end (also on error) the agent is stopped,
// `sslwall uninstall` run, etcd killed and its data removed, and the bed destroyed.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { activeGen, currentMode, type MapHandles } from '../../agent/apply.js';
import { addrToBytes, decode, encode } from '../../agent/codec.js';
import { closeMaps } from '../../agent/datapath.js';
import { decodeFlowKey, FLOW_MAPS, type FlowMap, flowMapKey } from '../../agent/flow-maps.js';
import { Defines, SslwallClass, type SslwallFlow, type SslwallFlowKey, SslwallVerdict } from '../../agent/generated/shared.js';
import { pinLayout, repoRoot } from '../../agent/paths.js';
import { type MapHandle, native } from '../../native/index.js';
import { generateKeyPair, Signer } from '../../rollout/signing.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { AGENT_ENV_FILE, type AgentEnv, AgentProc, agentEnv, type LogLine, shippedAgentEnv, writeConfig } from '../lab/agent-proc.js';
import { makeCa, makeHostCert } from '../lab/certs.js';
import { type EtcdServer, startEtcd } from '../lab/etcd.js';
import { EtcdBridge } from '../lab/etcd-bridge.js';
import { createTestbed, type Testbed } from '../lab/netns.js';
import { startIperf } from '../lab/peers.js';
import { BIN, Proc, pidAlive, runOk } from '../lab/proc.js';
import { uninstallChecked } from './net.js';
import { mean, median, quantile, round } from './stats.js';
import type { Bench, BenchContext, BenchResult } from './types.js';

// ---- figures with a target on the value ----------------------------------------------------

/**
 * A goal on the figure's own value (ms, MB, a count) rather than on its ratio, e.g. "p99 ≤ 100
 * ms". main.ts prints it in the TARGET column like a ratio target.
 */
export interface ValueTarget {
  op: '<=' | '>=';
  value: number;
}

/** A BenchResult that may carry a ValueTarget (main.ts reads it; the JSON line does not). */
export type Figure = BenchResult & { valueTarget?: ValueTarget };

/**
 * value / baseline for figures that are counts: a baseline of 0 counts as 1, so 0 events
 * against 0 gives 0 ("none"), not a division by zero.
 */
export function countRatio(value: number, baseline: number): number {
  return value / Math.max(baseline, 1);
}

// ---- cleanup -----------------------------------------------------------------------------------

/** Cleanups registered while a bench builds its fixture, run latest first. */
export class Scope {
  private readonly fns: Array<{ what: string; fn: () => unknown }> = [];
  defer(what: string, fn: () => unknown): void {
    this.fns.push({ what, fn });
  }
  /** Run every cleanup (latest first); returns the problems, never throws. */
  async close(): Promise<string[]> {
    const problems: string[] = [];
    for (const { what, fn } of this.fns.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        problems.push(`${what}: ${(e as Error).message}`);
      }
    }
    return problems;
  }
}

/**
 * Run body with a fresh Scope and close it afterwards (also on error). A cleanup problem after a
 * failed body is printed and the body's error wins; after a successful body it fails the bench:
 * leftovers must not go unnoticed.
 */
export async function scoped<T>(ctx: BenchContext, body: (scope: Scope) => Promise<T>): Promise<T> {
  const scope = new Scope();
  let result: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    result = { ok: true, value: await body(scope) };
  } catch (error) {
    result = { ok: false, error };
  }
  const problems = await scope.close();
  if (!result.ok) {
    for (const p of problems) ctx.progress(`cleanup: ${p}`);
    throw result.error;
  }
  if (problems.length) throw new Error(`cleanup failed: ${problems.join('; ')}`);
  return result.value;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---- the agent in a bed --------------------------------------------------------------------------

/** `sslwall agent` in the client namespace of a bed; remove() (registered at creation) uninstalls it. */
class BedAgent {
  proc: AgentProc | undefined;
  private installed = false;

  private constructor(
    readonly env: AgentEnv,
    private readonly ctx: BenchContext,
    private readonly args: string[],
  ) {}

  /** config: a config document for --config-file; undefined: no config file (etcd mode, args carry --etcd ...). */
  static async create(tb: Testbed, ctx: BenchContext, scope: Scope, opts: { config?: unknown; args?: string[] }): Promise<BedAgent> {
    const cgroup2 = await tb.mountCgroup2();
    // --cgroup is a cgroup named with the bed's prefix; tb.destroy() removes it.
    const env0 = await agentEnv(tb, 'client', cgroup2);
    const env = opts.config === undefined ? { ...env0, configFile: '' } : env0;
    if (opts.config !== undefined) writeConfig(env, opts.config);
    const a = new BedAgent(env, ctx, opts.args ?? []);
    scope.defer('agent', () => a.remove());
    return a;
  }

  get bpffs(): string {
    return this.env.bpffs;
  }

  /** Start (or restart after stop()); returns once agent_ready is logged with both filters in place. */
  async start(procEnv?: NodeJS.ProcessEnv): Promise<AgentProc> {
    if (this.proc) throw new Error('the agent is already running');
    this.installed = true; // from here on, uninstall even if the start fails half-way
    const p = await AgentProc.start(this.env, this.args, procEnv);
    this.proc = p;
    const attached = p.lines().filter((l) => l.event === 'filter_attached' || l.event === 'filter_adopted');
    const dirs = new Set(attached.map((l) => l.dir));
    if (!dirs.has('egress') || !dirs.has('ingress')) {
      throw new Error(`agent_ready came without the filter on both directions of ${this.env.tb.client.ifname} (saw: ${[...dirs].join(', ') || 'none'})`);
    }
    return p;
  }

  need(): AgentProc {
    if (!this.proc) throw new Error('the agent is not running');
    return this.proc;
  }

  /** SIGTERM and wait; the pinned programs stay and keep enforcing. */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    await p?.stop();
  }

  /** Stop the agent and detach everything it attached and pinned. Idempotent. */
  async remove(): Promise<void> {
    await this.stop();
    if (!this.installed) return;
    this.installed = false;
    await uninstallChecked(this.env);
    this.ctx.progress('agent stopped, filter uninstalled');
  }
}

/** The maps that say which config the kernel has in force, opened once from the agent's pins. */
class PinnedConfig {
  private readonly maps: MapHandles;
  constructor(bpffs: string) {
    const pins = pinLayout(bpffs);
    const maps: Partial<MapHandles> = {};
    try {
      for (const m of ['sslwall_active_gen', 'sslwall_config'] as const) maps[m] = native().getPinned(pins.map(m), 'map');
    } catch (e) {
      closeMaps(maps);
      throw e;
    }
    // Only the two maps activeGen and currentMode read are opened.
    this.maps = maps as MapHandles;
  }
  /** Two map lookups: the active generation, then that generation's config slot. */
  mode(): string {
    return currentMode(this.maps);
  }
  gen(): number {
    return activeGen(this.maps);
  }
  close(): void {
    closeMaps(this.maps);
  }
}

function withPinnedMap<T>(bpffs: string, name: string, fn: (map: MapHandle) => T): T {
  const map = native().getPinned(pinLayout(bpffs).map(name), 'map');
  try {
    return fn(map);
  } finally {
    map.close();
  }
}

// ---- etcd + signed tier documents ------------------------------------------------------------------

const TIER = 'bench';
const HOST = 'bench-host-0001';

interface EtcdFixture {
  tb: Testbed;
  etcd: EtcdServer;
  client: Etcd3;
  bridge: EtcdBridge;
  signer: Signer;
  verifyKey: string;
  key: string;
  /** The signed tier document (JSON text): every host of the tier in the cohort, in `mode`; config: the tier's config (default: bypass port 22). */
  doc(version: number, mode: 'passive' | 'active', config?: Record<string, unknown>): string;
  /** Arguments of `sslwall agent` for this tier, through the bridge, with --verify-key. */
  agentArgs: string[];
}

async function etcdFixture(label: string, ctx: BenchContext, scope: Scope): Promise<EtcdFixture> {
  const t0 = Date.now();
  const tb = await createTestbed(label);
  scope.defer('test bed', () => tb.destroy());
  const etcd = await startEtcd();
  scope.defer('etcd', () => etcd.destroy());
  const client = createEtcdClient({ endpoints: etcd.endpoints });
  scope.defer('etcd client', () => client.close());
  const bridge = await EtcdBridge.start(tb, 'client', etcd.clientPort);
  const keys = generateKeyPair(tb.tempDir('keys')); // removed with the bed
  const signer = Signer.fromFile(keys.signingKey);
  ctx.progress(
    `bed ${tb.prefix} (${tb.client.ns} <-veth-> ${tb.server.ns}), etcd ${etcd.endpoint}, bridge ${bridge.url} in ${tb.client.ns} (${Date.now() - t0} ms)`,
  );
  return {
    tb,
    etcd,
    client,
    bridge,
    signer,
    verifyKey: keys.verifyKey,
    key: etcdKeys('/sslwall/').tierConfig(TIER),
    doc: (version, mode, config) =>
      JSON.stringify(
        signer.sign({
          schema: 1,
          kind: 'tier',
          tier: TIER,
          version,
          config: { mode: 'off', bypass: { ports: [22] }, ...config },
          rollout: { mode, percent: 100, otherwise: 'passive', salt: 'bench' },
        }),
      ),
    agentArgs: ['--etcd', bridge.url, '--tier', TIER, '--host-id', HOST, '--verify-key', keys.verifyKey],
  };
}

/** An etcd-mode agent on the fixture's tier, started once version `version` (passive) is in etcd and applied. */
async function startEtcdAgent(
  fx: EtcdFixture,
  ctx: BenchContext,
  scope: Scope,
  version: number,
  opts: { config?: Record<string, unknown>; args?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<BedAgent> {
  await fx.client.put(fx.key).value(fx.doc(version, 'passive', opts.config));
  const agent = await BedAgent.create(fx.tb, ctx, scope, { args: [...fx.agentArgs, ...(opts.args ?? [])] });
  const t0 = Date.now();
  const p = await agent.start(opts.env);
  await p.waitFor((l) => l.event === 'config_applied' && l.tierVersion === version, 10_000, `tier version ${version} applied`);
  ctx.progress(`agent on etcd attached to ${fx.tb.client.ifname} and applied version ${version} in ${Date.now() - t0} ms`);
  return agent;
}

// ---- propagation ------------------------------------------------------------------------------------

const PROP_PUTS = 100;
const PROP_WARMUP = 5;
const PROP_TIMEOUT_MS = 5000;

// The baseline: a bare etcd3 watcher (the agent's own client factory, nothing else) in the same
// namespace, through the same bridge. It prints the mod revision and arrival time of each put.
const WATCHER_JS = `
const [mod, endpoint, key] = process.argv.slice(1);
const { createEtcdClient } = await import(mod);
const client = createEtcdClient({ endpoints: [endpoint] });
const w = await client.watch().key(key).create();
w.on('put', (kv) => process.stdout.write(JSON.stringify({ rev: Number(kv.mod_revision), t: performance.timeOrigin + performance.now() }) + '\\n'));
process.stdout.write(JSON.stringify({ ready: true }) + '\\n');
process.on('SIGTERM', () => { client.close(); process.exit(0); });
`;

class BareWatcher {
  private constructor(private readonly proc: Proc) {}

  static async start(fx: EtcdFixture, scope: Scope): Promise<BareWatcher> {
    const mod = new URL('../../schemas/etcd.js', import.meta.url).href;
    const proc = fx.tb.spawn('client', 'bare-watcher', process.execPath, ['--input-type=module', '-e', WATCHER_JS, mod, fx.bridge.url, fx.key]);
    scope.defer('bare watcher', () => proc.stop());
    const w = new BareWatcher(proc);
    const deadline = Date.now() + 10_000;
    while (!w.lines().some((l) => l.ready)) {
      if (!proc.running || Date.now() > deadline) throw new Error(`the bare etcd watcher did not start: ${w.text().slice(-1000)}`);
      await sleep(20);
    }
    return w;
  }

  private text(): string {
    return fs.existsSync(this.proc.logFile) ? fs.readFileSync(this.proc.logFile, 'utf8') : '';
  }

  private lines(): Array<{ ready?: boolean; rev?: number; t?: number }> {
    return this.text()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { ready?: boolean; rev?: number; t?: number });
  }

  /** Epoch ms (sub-ms precision) at which the watcher saw revision rev. */
  async seen(rev: number, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines().find((l) => l.rev === rev);
      if (hit?.t !== undefined) return hit.t;
      if (Date.now() > deadline) throw new Error(`the bare watcher did not see revision ${rev} within ${timeoutMs} ms`);
      await sleep(5);
    }
  }
}

function ms2(x: number): number {
  return round(x, 2);
}

/** p50/p99 of each step an agent timed in its config_applied lines (agent/timing.ts), in the order of the steps. */
function stepBreakdown(lines: LogLine[]): string {
  const steps = new Map<string, number[]>();
  for (const l of lines) for (const [k, v] of Object.entries((l.steps ?? {}) as Record<string, number>)) steps.set(k, [...(steps.get(k) ?? []), v]);
  return `${[...steps].map(([k, v]) => `${k} ${round(median(v), 3)}/${round(quantile(v, 0.99), 3)}`).join(', ')} (ms, p50/p99)`;
}

export const propagation: Bench = {
  name: 'propagation',
  produces: ['propagation_ms_p50', 'propagation_ms_p99'],
  summary: `etcd put of a signed tier document -> the new mode in the kernel map of a real agent (netns, etcd through a unix-socket bridge), ${PROP_PUTS} puts, maps polled every ~1 ms; baseline: a bare etcd3 watcher on the same path`,
  async run(ctx: BenchContext): Promise<Figure[]> {
    return scoped(ctx, async (scope) => {
      const fx = await etcdFixture('bench-prop', ctx, scope);
      let version = 1;
      const agent = await startEtcdAgent(fx, ctx, scope, version);
      const watcher = await BareWatcher.start(fx, scope);
      const maps = new PinnedConfig(agent.bpffs);
      scope.defer('pinned map fds', () => maps.close());
      if (maps.mode() !== 'passive') throw new Error(`the kernel has mode ${maps.mode()} in force, expected passive after version 1`);

      /** put -> the bench's poll of the kernel maps saw the new mode (an upper bound: the poll's own lag under load). */
      const polledMs: number[] = [];
      const watchMs: number[] = [];
      /** Epoch ms of each measured put's start, by tier version: the agent's received_at and in_force_at are read against it. */
      const putAt = new Map<number, number>();
      let mode: 'passive' | 'active' = 'passive';
      for (let i = 0; i < PROP_WARMUP + PROP_PUTS; i++) {
        version++;
        // Alternate the mode so every version changes what the kernel has in force.
        mode = mode === 'passive' ? 'active' : 'passive';
        const value = fx.doc(version, mode);
        const genBefore = maps.gen();
        const t0 = performance.now();
        const put = fx.client.put(fx.key).value(value).exec();
        let tApplied: number | undefined;
        while (performance.now() - t0 < PROP_TIMEOUT_MS) {
          if (maps.mode() === mode) {
            tApplied = performance.now();
            break;
          }
          await sleep(1);
        }
        const rev = Number((await put).header.revision);
        if (tApplied === undefined) {
          throw new Error(
            `version ${version} (mode ${mode}, revision ${rev}) did not reach the kernel within ${PROP_TIMEOUT_MS} ms; agent log:\n${agent
              .need()
              .lines()
              .slice(-8)
              .map((l) => JSON.stringify(l))
              .join('\n')}`,
          );
        }
        if (maps.gen() === genBefore) throw new Error(`version ${version}: the mode changed without a generation flip`);
        const tWatch = await watcher.seen(rev, PROP_TIMEOUT_MS);
        if (i >= PROP_WARMUP) {
          putAt.set(version, performance.timeOrigin + t0);
          polledMs.push(tApplied - t0);
          watchMs.push(tWatch - (performance.timeOrigin + t0));
        }
        if ((i + 1) % 25 === 0)
          ctx.progress(
            `${i + 1}/${PROP_WARMUP + PROP_PUTS} puts (first ${PROP_WARMUP} are warm-up); last: agent ${ms2(tApplied - t0)} ms, bare watcher ${ms2(tWatch - (performance.timeOrigin + t0))} ms`,
          );
        // A pause between puts, jittered so they do not fall in step with the agent's timers.
        await sleep(20 + Math.random() * 30);
      }

      // Everything was applied, nothing refused; the agent's own apply time shows where the time goes.
      const lines = agent.need().lines();
      const refused = lines.filter((l) => l.event === 'config_refused');
      if (refused.length) throw new Error(`the agent refused ${refused.length} document(s): ${JSON.stringify(refused[0])}`);
      const applied = lines.filter(
        (l: LogLine) => l.event === 'config_applied' && typeof l.tierVersion === 'number' && (l.tierVersion as number) > 1 + PROP_WARMUP,
      );
      if (applied.length !== PROP_PUTS) throw new Error(`expected ${PROP_PUTS} config_applied lines for the measured versions, saw ${applied.length}`);
      const applyMs = applied.map((l) => Number(l.apply_ms));
      // The figure: put -> the generation flip, on the agent's clock, as the baseline is put ->
      // arrival on the watcher's (both performance.timeOrigin + now()): symmetric, and free of
      // the bench's polling lag. The poll checked each one really reached the kernel.
      const since = (field: string) => applied.map((l) => Number(l[field]) - putAt.get(l.tierVersion as number)!);
      const [recv, agentMs] = [since('received_at'), since('in_force_at')];
      if (agentMs.some((ms) => !Number.isFinite(ms))) throw new Error('a config_applied line without received_at/in_force_at');
      ctx.progress(
        `agent (put -> flip, its clock): p50 ${ms2(median(agentMs))} ms, p90 ${ms2(quantile(agentMs, 0.9))} ms, p99 ${ms2(quantile(agentMs, 0.99))} ms, max ${ms2(Math.max(...agentMs))} ms`,
      );
      ctx.progress(`the bench's poll of the kernel maps saw it: p50 ${ms2(median(polledMs))} ms, p99 ${ms2(quantile(polledMs, 0.99))} ms`);
      ctx.progress(`bare watcher: p50 ${ms2(median(watchMs))} ms, p99 ${ms2(quantile(watchMs, 0.99))} ms, max ${ms2(Math.max(...watchMs))} ms`);
      ctx.progress(`of which the agent's map writes (apply_ms in its log): p50 ${ms2(median(applyMs))} ms, p99 ${ms2(quantile(applyMs, 0.99))} ms`);
      ctx.progress(`of which put -> watch event in the agent's JavaScript: p50 ${ms2(median(recv))} ms, p99 ${ms2(quantile(recv, 0.99))} ms`);
      ctx.progress(`step by step (the steps of its config_applied lines; flip_ms ends when the kernel has it): ${stepBreakdown(applied)}`);

      await agent.remove();
      const p50 = median(agentMs);
      const p99 = quantile(agentMs, 0.99);
      const b50 = median(watchMs);
      const b99 = quantile(watchMs, 0.99);
      return [
        {
          bench: 'propagation_ms_p50',
          value: ms2(p50),
          unit: 'ms',
          baseline: ms2(b50),
          ratio: round(p50 / b50, 2),
          meaning: `median etcd put -> new config in force (generation flip, agent's clock); a bare watcher sees the put after ${ms2(b50)} ms`,
        },
        {
          bench: 'propagation_ms_p99',
          value: ms2(p99),
          unit: 'ms',
          baseline: ms2(b99),
          ratio: round(p99 / b99, 2),
          target: { op: '<=', ratio: 3 },
          meaning: `99th percentile of ${PROP_PUTS} puts (watch delivery, signature check, validation, map writes, generation flip)`,
        },
      ];
    });
  },
};

// ---- hot swap -----------------------------------------------------------------------------------------

const SWAP_RESTARTS = 10;
const SWAP_CONFIGS = 100;
const SWAP_BEFORE_S = 6;
const SWAP_AFTER_S = 3;
/** Idle TLS flows in the map besides the transfer's, as on a busy host: what a config change walks. */
const SWAP_FLOWS = 20_000;
const IPERF_PORT = 5201;
/** Two configs the changes alternate between; both passive (iperf3 is plaintext: active would block it). */
const SWAP_CONFIG_A = { mode: 'passive' };
const SWAP_CONFIG_B = { mode: 'passive', bypass: { ports: [2222], cidrs: ['192.0.2.0/24'] }, starttls: { smtp: [2525] } };

/**
 * The bed's veth MTU. TCP here is BBR (this machine's default), and BBR drains to a 4-segment
 * window for 200 ms every 10 s (PROBE_RTT) when no lower RTT came by: at a 1,500-byte MTU that
 * is ~1 Gbit/s on this veth, so every 10th second of any transfer falls to ~0.8 of the others
 * with no sslwall part loaded (docs/bench.md, hot_swap). At 65,535 bytes the 4 segments carry
 * the link's full rate, so the transfer's quiet seconds stay within a few percent and the worst
 * second shows what the swaps do. The classifier sees the same packets either way: over veth
 * TCP hands it GSO packets of up to 64 KiB whatever the MTU.
 */
const SWAP_MTU = 65_535;
/** Set by main.ts from --hot-swap-mtu. */
export const hotSwapOptions: { mtu: number } = { mtu: SWAP_MTU };

async function setMtu(tb: Testbed, mtu: number): Promise<void> {
  for (const h of [tb.client, tb.server]) await runOk(BIN.ip, ['-n', h.ns, 'link', 'set', h.ifname, 'mtu', String(mtu)]);
}

/**
 * A second build of the BPF objects, from the same sources with -mcpu=v2 instead of the default
 * v1: other instructions (so another program tag: a restart really replaces the program behind
 * the tcx links), same maps (so the pinned state is adopted as it is).
 */
function buildVariant(dir: string): string {
  const src = path.join(repoRoot, 'bpf');
  for (const f of ['Makefile', 'shared.h', 'classifier.bpf.c', 'lifecycle.bpf.c']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  for (const d of ['lib', 'include']) fs.cpSync(path.join(src, d), path.join(dir, d), { recursive: true });
  const arch = process.arch === 'arm64' ? 'arm64' : 'x86';
  execFileSync('make', ['-C', dir, '--no-print-directory', `CFLAGS=-O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_${arch} -Iinclude -I. -mcpu=v2`], {
    stdio: 'pipe',
  });
  return path.join(dir, 'build');
}

interface FlowState {
  key: string;
  cls: number;
  verdict: number;
  firstSeenNs: bigint;
  ports: [number, number];
}

function flowsOnPort(bpffs: string, port: number): FlowState[] {
  return FLOW_MAPS.flatMap((name) => flowsOnPortIn(bpffs, name, port));
}

function flowsOnPortIn(bpffs: string, name: FlowMap, port: number): FlowState[] {
  return withPinnedMap(bpffs, name, (map) =>
    native()
      .mapDump(map)
      .flatMap(([k, v]) => {
        const key = decodeFlowKey(k);
        if (key.port_lo !== port && key.port_hi !== port) return [];
        const f = decode<SslwallFlow>('sslwall_flow', v);
        return [
          { key: k.toString('hex'), cls: f.cls, verdict: f.verdict, firstSeenNs: f.first_seen_ns, ports: [key.port_lo, key.port_hi] as [number, number] },
        ];
      }),
  );
}

/** TCP failure counters of one namespace (nstat: absolute, history untouched). */
async function tcpFailures(tb: Testbed, side: 'client' | 'server'): Promise<{ resets: number; retrans: number; detail: Record<string, number> }> {
  const r = await tb.execOk(side, BIN.nstat, ['-asz', '--json']);
  const k = (JSON.parse(r.stdout) as { kernel: Record<string, number> }).kernel;
  const names = ['TcpEstabResets', 'TcpAttemptFails', 'TcpOutRsts', 'TcpExtTCPAbortOnTimeout', 'TcpExtTCPAbortOnData', 'TcpExtTCPAbortOnClose'];
  const detail = Object.fromEntries(names.map((n) => [n, k[n] ?? 0]));
  // Connection-level failures: an established connection reset, an attempt that failed, a
  // connection aborted on timeout. (OutRsts and AbortOn* are shown for the record: they also
  // count a close with unread data, which an interrupted iperf3 does at the very end.)
  return { resets: (k.TcpEstabResets ?? 0) + (k.TcpAttemptFails ?? 0) + (k.TcpExtTCPAbortOnTimeout ?? 0), retrans: k.TcpRetransSegs ?? 0, detail };
}

async function bothFailures(tb: Testbed) {
  const [c, s] = await Promise.all([tcpFailures(tb, 'client'), tcpFailures(tb, 'server')]);
  return { resets: c.resets + s.resets, retrans: c.retrans + s.retrans, outRsts: (c.detail.TcpOutRsts ?? 0) + (s.detail.TcpOutRsts ?? 0) };
}

interface IperfInterval {
  start: number;
  end: number;
  seconds: number;
  gbps: number;
}

export const hotSwap: Bench = {
  name: 'hot_swap',
  produces: ['hot_swap_reset_connections', 'hot_swap_throughput_ratio'],
  summary: `iperf3 over the veth while the agent applies ${SWAP_CONFIGS} config changes and is restarted ${SWAP_RESTARTS} times onto a rebuilt program (tcx link updated in place): connections reset, flows kept, throughput dip`,
  async run(ctx: BenchContext): Promise<Figure[]> {
    return scoped(ctx, async (scope) => {
      const tb = await createTestbed('bench-hotswap');
      scope.defer('test bed', () => tb.destroy());
      const { mtu } = hotSwapOptions;
      await setMtu(tb, mtu);
      ctx.progress(`bed ${tb.prefix}: ${tb.client.ns} ${tb.client.ipv4} <-veth, MTU ${mtu}-> ${tb.server.ns} ${tb.server.ipv4}`);
      let t = Date.now();
      const variant = buildVariant(tb.tempDir('bpf-variant'));
      const builds = [variant, path.join(repoRoot, 'bpf/build')];
      ctx.progress(`second build of the BPF objects (-mcpu=v2) in ${Date.now() - t} ms`);
      const iperf = await startIperf(tb, { port: IPERF_PORT });
      const agent = await BedAgent.create(tb, ctx, scope, { config: SWAP_CONFIG_A });
      await agent.start();
      ctx.progress(`${insertFlows(tb, agent.bpffs, SWAP_FLOWS)} flows in the map`);

      // The long transfer: stopped with SIGINT at the end (iperf3 then prints its JSON report
      // with the 1-s intervals and the error "interrupt - the client has terminated").
      const iperfLog = path.join(tb.tempDir('iperf3-client'), 'client.json');
      const client = tb.spawn('client', 'iperf3-client', BIN.iperf3, ['-c', iperf.address, '-p', String(IPERF_PORT), '-t', '900', '-i', '1', '--json'], {
        logFile: iperfLog,
      });
      scope.defer('iperf3 client', () => client.stop('SIGKILL', 1000));
      const deadline = Date.now() + 10_000;
      // The control connection and the data connection, both decided (iperf3 is plaintext).
      const decided = (fs: FlowState[]) => fs.filter((f) => f.cls !== SslwallClass.SSLWALL_CLASS_PENDING).length;
      let flows = flowsOnPort(agent.bpffs, IPERF_PORT);
      for (; decided(flows) < 2; flows = flowsOnPort(agent.bpffs, IPERF_PORT)) {
        if (Date.now() > deadline || !client.running)
          throw new Error(
            `iperf3's flows did not show up decided in the flow map: ${JSON.stringify(flows, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}\n${fs.existsSync(iperfLog) ? fs.readFileSync(iperfLog, 'utf8').slice(-800) : ''}`,
          );
        await sleep(50);
      }
      // The data connection is the later one; its first packet is when the test's clock starts.
      const data = flows.reduce((a, b) => (b.firstSeenNs > a.firstSeenNs ? b : a));
      const rel = (hr: bigint) => Number(hr - data.firstSeenNs) / 1e9; // seconds since the data SYN (both CLOCK_MONOTONIC)
      ctx.progress(`transfer running: ${flows.length} flows to port ${IPERF_PORT} in the map, class ${flows.map((f) => f.cls).join(', ')}`);

      const f0 = await bothFailures(tb);
      await sleep(SWAP_BEFORE_S * 1000);
      const f1 = await bothFailures(tb);
      const swapStart = rel(process.hrtime.bigint());

      let configs = 0;
      let replaced = 0;
      const restartMs: number[] = [];
      /** The classifier object's load (the verifier, mostly) in each restart, from datapath_loaded. */
      const verifyMs: number[] = [];
      const applied: LogLine[] = [];
      const configMs: number[] = [];
      /** [from, to] of each restart, in seconds of the transfer. */
      const restartWindows: Array<[number, number]> = [];
      for (let r = 0; r < SWAP_RESTARTS; r++) {
        t = Date.now();
        const from = rel(process.hrtime.bigint());
        await agent.stop();
        const p = await agent.start({ SSLWALL_BPF_DIR: builds[r % 2]! });
        restartWindows.push([from, rel(process.hrtime.bigint())]);
        restartMs.push(Date.now() - t);
        const adopted = p.lines().filter((l) => l.event === 'filter_adopted');
        if (adopted.length !== 2 || adopted.some((l) => l.replaced !== true))
          throw new Error(`restart ${r + 1}: expected both filters adopted with the program replaced, saw ${JSON.stringify(adopted)}`);
        const loaded = p.lines().find((l) => l.event === 'datapath_loaded');
        if (!FLOW_MAPS.every((m) => (loaded?.reused_maps as string[] | undefined)?.includes(m)))
          throw new Error(`restart ${r + 1}: the pinned flow maps were not reused: ${JSON.stringify(loaded)}`);
        replaced += adopted.length;
        verifyMs.push((loaded!.load_ms as Record<string, number>).classifier_ms!);
        for (let c = 0; c < SWAP_CONFIGS / SWAP_RESTARTS; c++) {
          const count = () => p.lines().filter((l) => l.event === 'config_applied').length;
          const before = count();
          t = Date.now();
          writeConfig(agent.env, configs % 2 === 0 ? SWAP_CONFIG_B : SWAP_CONFIG_A);
          await p.waitFor(() => count() > before, 5000, `config change ${configs + 1} applied`);
          applied.push(
            p
              .lines()
              .filter((l) => l.event === 'config_applied')
              .at(-1)!,
          );
          configMs.push(Date.now() - t);
          configs++;
        }
        ctx.progress(
          `restart ${r + 1}/${SWAP_RESTARTS} (${r % 2 === 0 ? '-mcpu=v2 build' : 'repo build'}, ${restartMs[r]} ms to agent_ready) + ${configs} config changes so far`,
        );
      }
      const swapEnd = rel(process.hrtime.bigint());
      const f2 = await bothFailures(tb);
      await sleep(SWAP_AFTER_S * 1000);
      const f3 = await bothFailures(tb);

      // The flows of the transfer are still there, same entries (first_seen), same class.
      const after = flowsOnPort(agent.bpffs, IPERF_PORT);
      const lost = flows.filter((f) => !after.some((a) => a.key === f.key && a.cls === f.cls && a.verdict === f.verdict && a.firstSeenNs === f.firstSeenNs));
      // A control as long as the swaps, with nothing happening: the worst second of a stretch
      // that long is what this machine's own noise gives the same statistic.
      const controlStart = rel(process.hrtime.bigint());
      await sleep((swapEnd - swapStart) * 1000);
      const controlEnd = rel(process.hrtime.bigint());

      process.kill(client.pid, 'SIGINT');
      const exited = await Promise.race([client.exited.then(() => true), sleep(10_000).then(() => false)]);
      if (!exited) throw new Error('iperf3 did not stop on SIGINT');
      let report: { error?: string; intervals?: Array<{ sum: { start: number; end: number; seconds: number; bits_per_second: number } }> };
      try {
        report = JSON.parse(fs.readFileSync(iperfLog, 'utf8')) as typeof report;
      } catch {
        throw new Error(`iperf3 printed no JSON report: ${fs.readFileSync(iperfLog, 'utf8').slice(-800)}`);
      }
      const interrupted = report.error === undefined || /interrupt - the client has terminated/.test(report.error);
      const intervals: IperfInterval[] = (report.intervals ?? []).map((i) => ({
        start: i.sum.start,
        end: i.sum.end,
        seconds: i.sum.seconds,
        gbps: i.sum.bits_per_second / 1e9,
      }));
      // Full seconds only; the first one holds the ramp-up.
      const full = intervals.filter((i) => i.seconds >= 0.9);
      const beforeIv = full.filter((i) => i.start >= 1 && i.end <= swapStart);
      const duringIv = full.filter((i) => i.end > swapStart && i.start < swapEnd);
      const afterIv = full.filter((i) => i.start >= swapEnd);
      const controlIv = full.filter((i) => i.start >= controlStart && i.end <= controlEnd);
      if (beforeIv.length < 2 || duringIv.length < 1)
        throw new Error(
          `too few iperf3 intervals to compare (before ${beforeIv.length}, during ${duringIv.length}; swaps from ${round(swapStart, 1)} s to ${round(swapEnd, 1)} s)`,
        );
      const stalls = duringIv.filter((i) => i.gbps < 0.01).length;
      // Seconds that saw a restart (node start-up, BPF load and verification: CPU-heavy) against
      // seconds that saw only config changes.
      const hasRestart = (i: IperfInterval) => restartWindows.some(([a, b]) => i.end > a && i.start < b);
      const withRestart = duringIv.filter(hasRestart).map((i) => i.gbps);
      const configOnly = duringIv.filter((i) => !hasRestart(i)).map((i) => i.gbps);
      const summary = (xs: number[]) => (xs.length ? `mean ${round(mean(xs), 2)}, min ${round(Math.min(...xs), 2)} Gbit/s (${xs.length} s)` : 'none');

      const resetsDuring = f3.resets - f1.resets + (interrupted ? 0 : 1);
      const resetsBefore = f1.resets - f0.resets;
      const base = mean(beforeIv.map((i) => i.gbps));
      const minDuring = Math.min(...duringIv.map((i) => i.gbps));
      ctx.progress(
        `swaps from ${round(swapStart, 1)} s to ${round(swapEnd, 1)} s of the transfer: ${SWAP_RESTARTS} restarts (${replaced} program replacements; agent_ready after median ${median(restartMs)} ms), ${configs} config changes (applied after median ${median(configMs)} ms)`,
      );
      ctx.progress(
        `iperf3 ${interrupted ? 'ran until interrupted' : `FAILED: ${report.error}`}; 1-s intervals (Gbit/s): before ${beforeIv.map((i) => round(i.gbps, 2)).join(' ')} | during ${duringIv.map((i) => round(i.gbps, 2)).join(' ')} | after ${afterIv.map((i) => round(i.gbps, 2)).join(' ')}`,
      );
      ctx.progress(
        `during the swaps: seconds with a restart ${summary(withRestart)}; seconds with config changes only ${summary(configOnly)}; before: min ${round(Math.min(...beforeIv.map((i) => i.gbps)), 2)} Gbit/s`,
      );
      if (controlIv.length)
        ctx.progress(
          `control, ${controlIv.length} s without changes after the swaps: worst second ${round(Math.min(...controlIv.map((i) => i.gbps)), 2)} Gbit/s = ${round(Math.min(...controlIv.map((i) => i.gbps)) / base, 3)} of the mean before (the noise floor of this figure on this machine), mean ${round(mean(controlIv.map((i) => i.gbps)), 2)}`,
        );
      ctx.progress(`restarts: classifier load (verification) median ${round(median(verifyMs), 0)} ms, max ${round(Math.max(...verifyMs), 0)} ms`);
      ctx.progress(
        `config changes with ${SWAP_FLOWS} flows in the map: apply_ms median ${round(median(applied.map((l) => l.apply_ms as number)), 2)}; steps ${stepBreakdown(applied)}`,
      );
      ctx.progress(
        `TCP failures (resets + failed attempts + timeouts, both namespaces): before ${resetsBefore}, during+after ${resetsDuring - (interrupted ? 0 : 1)}; RSTs sent ${f3.outRsts - f1.outRsts}; retransmitted segments before ${f1.retrans - f0.retrans}, during ${f2.retrans - f1.retrans}, after ${f3.retrans - f2.retrans}; stalled intervals ${stalls}`,
      );
      ctx.progress(`flows of the transfer kept: ${flows.length - lost.length}/${flows.length} (same entry, class and verdict)`);
      if (lost.length)
        throw new Error(
          `${lost.length} of the transfer's ${flows.length} flows were lost or changed in the flow map: before ${JSON.stringify(flows, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}, after ${JSON.stringify(after, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`,
        );

      await agent.remove();
      return [
        {
          bench: 'hot_swap_reset_connections',
          value: resetsDuring,
          unit: 'connections',
          baseline: resetsBefore,
          ratio: round(countRatio(resetsDuring, resetsBefore), 3),
          valueTarget: { op: '<=', value: 0 },
          meaning: `TCP connections reset or failed during ${configs} config changes and ${SWAP_RESTARTS} restarts (${replaced} program swaps); transfer flows kept in the map`,
        },
        {
          bench: 'hot_swap_throughput_ratio',
          value: round(minDuring, 2),
          unit: 'Gbit/s',
          baseline: round(base, 2),
          ratio: round(minDuring / base, 3),
          target: { op: '>=', ratio: 0.9 },
          meaning: `worst 1-s interval of the transfer during the swaps vs its mean before (each restart: node start-up and the classifier's verification, median ${round(median(verifyMs), 0)} ms of kernel CPU, agent_ready after ${median(restartMs)} ms, on the 2 CPUs iperf3 fills; veth MTU ${mtu})`,
        },
      ];
    });
  },
};

// ---- idle cost ----------------------------------------------------------------------------------------

const IDLE_FLOWS = 10_000;
const IDLE_SETTLE_MS = 5_000;
const IDLE_WINDOW_MS = 60_000;

interface ProcSample {
  ticks: number;
  /** CPU time of every thread, ns (schedstat): a finer cross-check of the ticks. */
  schedNs: number;
  at: number;
}

function sample(pid: number): ProcSample {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) are the 12th and 13th after the state field (field 3).
  const ticks = Number(fields[11]) + Number(fields[12]);
  let schedNs = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      schedNs += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* thread gone */
    }
  }
  return { ticks, schedNs, at: performance.now() };
}

function rssMb(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/** The node process behind a Proc that may be nsenter (which execs, without a fork, for --net alone). */
function nodePid(pid: number): number {
  const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  if (comm.startsWith('node')) return pid;
  const kids = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  const node = kids.find((k) => fs.readFileSync(`/proc/${k}/comm`, 'utf8').trim().startsWith('node'));
  if (!node) throw new Error(`pid ${pid} (${comm}) is not node and has no node child`);
  return node;
}

/** Insert n TLS flows (client ports 20000... to the server's 443) into the agent's pinned flow map. */
function insertFlows(tb: Testbed, bpffs: string, n: number): number {
  if (n > 40_000) throw new Error(`at most 40000 synthetic flows (distinct client ports), not ${n}`);
  const client = addrToBytes(tb.client.ipv4).bytes;
  const server = addrToBytes(tb.server.ipv4).bytes;
  const now = process.hrtime.bigint();
  const value = encode<SslwallFlow>('sslwall_flow', {
    first_seen_ns: now,
    cls: SslwallClass.SSLWALL_CLASS_TLS,
    verdict: SslwallVerdict.SSLWALL_VERDICT_ALLOWED,
    client_is_lo: 1,
  });
  const keys: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    // IPv4: the 12-byte keys of sslwall_flows4.
    const full = encode<SslwallFlowKey>('sslwall_flow_key', {
      addr_lo: client,
      addr_hi: server,
      port_lo: 20_000 + i,
      port_hi: 443,
      family: Defines.SSLWALL_FAMILY_IPV4,
    });
    keys.push(flowMapKey(full).key);
  }
  return withPinnedMap(bpffs, 'sslwall_flows4', (map) => {
    native().mapUpdateBatch(map, Buffer.concat(keys), Buffer.concat(Array<Buffer>(n).fill(value)), n);
    return native().mapDump(map).length;
  });
}

/** Context switches (voluntary + involuntary) of each thread of pid, by thread (name/tid; "main" for the event loop's): how often each wakes. */
function wakeups(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const status = fs.readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8');
      const name = /^Name:\s+(.*)$/m.exec(status)?.[1]?.trim() ?? '?';
      const n = [...status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)].reduce((a, m) => a + Number(m[1]), 0);
      out.set(Number(task) === pid ? 'main' : `${name}/${task}`, n);
    } catch {
      /* thread gone */
    }
  }
  return out;
}

/** Wake-ups per second by thread name between two wakeups() samples, busiest first. */
function wakeupRates(w0: Map<string, number>, w1: Map<string, number>, seconds: number): string {
  return [...w1]
    .map(([name, n]) => [name, (n - (w0.get(name) ?? 0)) / seconds] as const)
    .filter(([, r]) => r > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([name, r]) => `${name} ${round(r, 1)}/s`)
    .join(', ');
}

/** Resident memory split into file-backed pages (mostly the node binary's code, shared by every node process) and anonymous ones (heaps). */
function rssSplit(pid: number): string {
  const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? 0);
  const [rss, anon] = [kb('Rss'), kb('Anonymous')];
  return `${round((rss - anon) / 1024, 1)} MB file-backed + ${round(anon / 1024, 1)} MB anonymous`;
}

function clockTicks(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
}

export const agentIdle: Bench = {
  name: 'agent_idle',
  produces: ['agent_rss_mb', 'agent_idle_cpu_percent'],
  summary: `the agent attached, watching etcd, TTLS on (proxy and terminator listening), ${IDLE_FLOWS} flows in its map, no traffic: RSS and CPU over ${IDLE_WINDOW_MS / 1000} s; baseline: an idle node process (setInterval) measured the same way`,
  async run(ctx: BenchContext): Promise<Figure[]> {
    return scoped(ctx, async (scope) => {
      const fx = await etcdFixture('bench-idle', ctx, scope);
      // TTLS enabled but idle: certificates given and the config wraps a port of the server, so
      // the proxy, the terminator and their TLS and HTTP/2 code are loaded; nothing connects.
      const certDir = fx.tb.tempDir('ttls-certs'); // removed with the bed
      const ca = await makeCa(certDir, 'bench-ca');
      const cert = await makeHostCert(certDir, ca, 'client', [fx.tb.client.ipv4]);
      const agent = await startEtcdAgent(fx, ctx, scope, 1, {
        config: { ttls: { ports: [6379], cidrs: [`${fx.tb.server.ipv4}/32`] } },
        args: ['--ttls-cert', cert.cert, '--ttls-key', cert.key, '--ttls-ca', ca.caCert],
      });
      ctx.progress(`agent started as the unit starts it (${path.relative(repoRoot, AGENT_ENV_FILE)}): ${JSON.stringify(shippedAgentEnv())}`);
      await agent.need().waitFor((l) => l.event === 'ttls_started', 10_000, 'ttls_started');
      const pid = nodePid(agent.need().proc.pid);
      const inMap = insertFlows(fx.tb, agent.bpffs, IDLE_FLOWS);
      if (inMap < IDLE_FLOWS) throw new Error(`only ${inMap} flows in the map after inserting ${IDLE_FLOWS}`);
      ctx.progress(`${inMap} flows in the agent's flow map (class tls, distinct client ports)`);
      // The agent's one start-up collection (10 s after agent_ready) ends its start-up: the window
      // opens after it. Opened before it, the window held that tail of start-up, ~0.18 of the
      // 0.27 % it read (docs/bench.md, agent_idle).
      const gcLine = await agent.need().waitFor((l) => l.event === 'startup_gc', 30_000, 'startup_gc');
      ctx.progress(`start-up collection done (${String(gcLine.gc_ms)} ms, heap ${JSON.stringify(gcLine.heap_used_mb)} MB); idle from here`);
      const idle = Proc.start('idle-node', process.execPath, ['-e', 'setInterval(() => {}, 1000)'], path.join(fx.tb.tempDir('idle-node'), 'idle-node.log'));
      scope.defer('idle node', () => idle.stop('SIGKILL'));
      await sleep(IDLE_SETTLE_MS);
      if (!pidAlive(idle.pid)) throw new Error('the idle node process exited');

      const a0 = sample(pid);
      const b0 = sample(idle.pid);
      const w0 = wakeups(pid);
      for (let left = IDLE_WINDOW_MS; left > 0; left -= 15_000) {
        await sleep(Math.min(15_000, left));
        if (!pidAlive(pid)) throw new Error(`the agent (pid ${pid}) exited during the measurement`);
        ctx.progress(`${Math.round((IDLE_WINDOW_MS - left + Math.min(15_000, left)) / 1000)}/${IDLE_WINDOW_MS / 1000} s`);
      }
      const a1 = sample(pid);
      const b1 = sample(idle.pid);
      const w1 = wakeups(pid);
      const aRss = rssMb(pid);
      const bRss = rssMb(idle.pid);
      ctx.progress(`RSS: agent ${rssSplit(pid)}; idle node ${rssSplit(idle.pid)}`);

      const hz = clockTicks();
      const cpu = (s0: ProcSample, s1: ProcSample) => ((s1.ticks - s0.ticks) / hz / ((s1.at - s0.at) / 1000)) * 100;
      const cpuFine = (s0: ProcSample, s1: ProcSample) => ((s1.schedNs - s0.schedNs) / 1e9 / ((s1.at - s0.at) / 1000)) * 100;
      const aCpu = cpu(a0, a1);
      const bCpu = cpu(b0, b1);
      const oneTick = (1 / hz / ((b1.at - b0.at) / 1000)) * 100;
      const still = FLOW_MAPS.reduce((n, m) => n + withPinnedMap(agent.bpffs, m, (map) => native().mapDump(map).length), 0);
      ctx.progress(
        `agent pid ${pid}: ${a1.ticks - a0.ticks} ticks (${round(cpuFine(a0, a1), 3)} % by schedstat), RSS ${round(aRss, 1)} MB; idle node: ${b1.ticks - b0.ticks} ticks (${round(cpuFine(b0, b1), 3)} % by schedstat), RSS ${round(bRss, 1)} MB; ${still} flows still in the map`,
      );
      ctx.progress(`agent wake-ups (context switches by thread): ${wakeupRates(w0, w1, (a1.at - a0.at) / 1000)}`);
      if (still < IDLE_FLOWS) throw new Error(`flows vanished from the map while idle: ${still} of ${IDLE_FLOWS}`);

      await agent.remove();
      return [
        {
          bench: 'agent_rss_mb',
          value: round(aRss, 1),
          unit: 'MB',
          baseline: round(bRss, 1),
          ratio: round(aRss / bRss, 2),
          valueTarget: { op: '<=', value: 64 },
          meaning: `resident memory of the idle agent (watching etcd, TTLS on, ${IDLE_FLOWS} flows) vs an idle node process`,
        },
        {
          bench: 'agent_idle_cpu_percent',
          value: round(aCpu, 3),
          unit: '% of a CPU',
          baseline: round(bCpu, 3),
          // The idle node may use no whole tick in the window: count it as one tick at least.
          ratio: round(aCpu / Math.max(bCpu, oneTick), 2),
          valueTarget: { op: '<=', value: 0.3 },
          meaning: `utime+stime over ${IDLE_WINDOW_MS / 1000} s with nothing to do (health every 5 s, flow count every 30 s)`,
        },
      ];
    });
  },
};
