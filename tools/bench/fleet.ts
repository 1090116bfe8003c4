// The fleet: N simulated agents (`sslwall simulate`, default 10,000) on one etcd with a rollout
// engine (`sslwall engine`), all as processes the way an operator runs them. Four figures, in
// one run over one fleet:
//   - fleet_propagation_ms_p99: a config written through the engine's API -> every agent applied
//     it. Baseline: one bare etcd3 watcher on the tier key, same writes.
//   - rollback_ms_p99: a rollout baking; a firing Alertmanager alert for the tier -> every agent
//     reports the rolled-back version in its health key. Baseline: the same bare watcher seeing
//     the rolled-back version.
//   - dead_agent_detect_ms: 1 % more agents join, then die without revoking their leases -> the
//     engine no longer counts them. Baseline: the health lease TTL, 10 s.
//   - reconnect_relists_per_agent: etcd SIGKILLed and restarted under the N watchers -> re-reads
//     per agent until all watch again. Baseline: 1 (every agent reading once).
// Nothing here touches a network interface or the kernel: etcd, engine and simulator talk over
// loopback. Everything started is stopped at the end (also on error or Ctrl-C) and the temp dirs
// (etcd data, keys, logs) are removed.

import { type ChildProcess, spawn } from 'node:child_process';
import { createPublicKey, verify } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3, Watcher } from 'etcd3';
import { decide } from '../../agent/etcd-source.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { signedBytes, Verifier } from '../../schemas/signing.js';
import { HealthSchema } from '../../schemas/tier.js';
import { SSLWALL } from '../lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../lab/etcd.js';
import { EngineProc, type Keys, makeKeys } from '../lab/fleet.js';
import type { StatsLine } from '../simulate/shared.js';
import { type Figure, type Scope, scoped, sleep } from './agent.js';
import { median, quantile, round } from './stats.js';
import type { Bench, BenchContext } from './types.js';

/** Set by main.ts from --fleet-agents and --fleet-health-spread (undefined: the agent's default). */
export const fleetOptions: { agents: number; healthSpreadMs?: number } = { agents: 10_000 };

const TIER = 'fleet';
const KEYS = etcdKeys('/sslwall/');
const PROPAGATION_CHANGES = 5;
const ROLLBACKS = 3;
const DIE_AFTER_S = 12;
const LEASE_TTL_MS = 10_000;
const STATS_INTERVAL_MS = 250;
/** The quiet window whose CPU rate is subtracted from each change's. */
const CPU_QUIET_MS = 2000;

const BASE_CONFIG = { mode: 'passive', bypass: { ports: [22] } };
const BASE_ROLLOUT = { mode: 'passive', percent: 100, otherwise: 'off', salt: 'bench-fleet' };

// ---- processes that must not outlive the bench --------------------------------------------------

const liveGroups = new Set<number>();
let exitHook = false;
function trackGroup(pid: number): void {
  liveGroups.add(pid);
  if (exitHook) return;
  exitHook = true;
  // Last resort (a crash, Ctrl-C: test/lib installs the signal handlers that exit): SIGKILL the
  // simulators' process groups (the parent and its workers).
  process.on('exit', () => {
    for (const pid of liveGroups) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
}

/** A running `sslwall simulate`: its stats lines, each with the time it arrived. */
class SimRun {
  readonly lines: Array<{ recv: number; s: StatsLine }> = [];
  private buf = '';
  private exited = false;

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    readonly logFile: string,
  ) {
    proc.stdout!.on('data', (b: Buffer) => {
      const recv = performance.now();
      this.buf += b.toString();
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        try {
          this.lines.push({ recv, s: JSON.parse(line) as StatsLine });
        } catch {
          /* not a stats line */
        }
      }
    });
    proc.on('exit', () => {
      this.exited = true;
      liveGroups.delete(proc.pid!);
    });
  }

  static start(name: string, logDir: string, args: string[]): SimRun {
    const logFile = path.join(logDir, `${name}.log`);
    const err = fs.openSync(logFile, 'a');
    try {
      // detached: a process group of its own (the parent and its forked workers), so a last-resort
      // kill reaches the workers too.
      const proc = spawn(process.execPath, [SSLWALL, 'simulate', ...args], { stdio: ['ignore', 'pipe', err], detached: true });
      trackGroup(proc.pid!);
      return new SimRun(name, proc, logFile);
    } finally {
      fs.closeSync(err);
    }
  }

  get running(): boolean {
    return !this.exited;
  }

  last(): { recv: number; s: StatsLine } | undefined {
    return this.lines[this.lines.length - 1];
  }

  /** The simulator's clock origin in our performance.now() terms: stats t is ms since its start. */
  origin(): number {
    let best = Infinity;
    for (const l of this.lines) best = Math.min(best, l.recv - l.s.t);
    return best;
  }

  tail(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-12).join('\n');
    } catch {
      return '';
    }
  }

  /** The first stats line (arrived after `after`, default now) that satisfies pred. */
  async until(
    pred: (s: StatsLine) => boolean,
    timeoutMs: number,
    what: string,
    progress?: (s: StatsLine) => void,
    after = performance.now(),
  ): Promise<{ recv: number; s: StatsLine }> {
    const deadline = performance.now() + timeoutMs;
    let seen = this.lines.length;
    let lastProgress = performance.now();
    for (;;) {
      for (; seen < this.lines.length; seen++) {
        const l = this.lines[seen]!;
        if (l.recv >= after && pred(l.s)) return l;
      }
      if (!this.running) throw new Error(`${this.name}: the simulator exited while waiting for ${what}\n${this.tail()}`);
      if (performance.now() > deadline)
        throw new Error(`${this.name}: no ${what} within ${Math.round(timeoutMs / 1000)} s; last stats ${JSON.stringify(this.last()?.s)}\n${this.tail()}`);
      if (progress && performance.now() - lastProgress > 5000 && this.last()) {
        lastProgress = performance.now();
        progress(this.last()!.s);
      }
      await sleep(20);
    }
  }

  /** SIGTERM (every lease revoked), SIGKILL to the group after graceMs. */
  async stop(graceMs = 30_000): Promise<void> {
    if (this.running) {
      this.proc.kill('SIGTERM');
      const deadline = performance.now() + graceMs;
      while (this.running && performance.now() < deadline) await sleep(50);
    }
    try {
      process.kill(-this.proc.pid!, 'SIGKILL'); // workers that did not go
    } catch {
      /* the group is empty */
    }
    while (this.running) await sleep(20);
    liveGroups.delete(this.proc.pid!);
  }
}

// ---- the fleet fixture ------------------------------------------------------------------------------

/** Every put of the tier key as one bare etcd3 watcher sees it: version -> arrival time. */
class TierWatcher {
  readonly seen = new Map<number, number>();
  private constructor(private readonly w: Watcher) {
    w.on('put', (kv) => {
      const t = performance.now();
      try {
        const v = (JSON.parse(kv.value.toString()) as { version: number }).version;
        if (!this.seen.has(v)) this.seen.set(v, t);
      } catch {
        /* not a document */
      }
    });
  }
  static async start(client: Etcd3): Promise<TierWatcher> {
    return new TierWatcher(await client.watch().key(KEYS.tierConfig(TIER)).create());
  }
  async when(version: number, timeoutMs: number): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const t = this.seen.get(version);
      if (t !== undefined) return t;
      if (performance.now() > deadline) throw new Error(`the bare watcher did not see version ${version} within ${timeoutMs} ms`);
      await sleep(2);
    }
  }
  /** The first version above `above` it saw, and when. */
  async next(above: number, timeoutMs: number): Promise<{ version: number; t: number }> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const hit = [...this.seen].find(([v]) => v > above);
      if (hit) return { version: hit[0], t: hit[1] };
      if (performance.now() > deadline) throw new Error(`the bare watcher saw no version above ${above} within ${timeoutMs} ms`);
      await sleep(2);
    }
  }
  async close(): Promise<void> {
    await this.w.cancel().catch(() => undefined);
  }
}

async function engineAgents(engine: EngineProc): Promise<number> {
  const text = await (await fetch(`${engine.url}/metrics`)).text();
  const m = new RegExp(`^sslwall_engine_agents\\{tier="${TIER}"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

async function waitEngineAgents(engine: EngineProc, pred: (n: number) => boolean, timeoutMs: number, what: string): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let n = -1;
  for (;;) {
    n = await engineAgents(engine).catch(() => -1);
    if (pred(n)) return n;
    if (performance.now() > deadline) throw new Error(`the engine did not count ${what} within ${Math.round(timeoutMs / 1000)} s (it counts ${n})`);
    await sleep(100);
  }
}

async function api<T>(engine: EngineProc, method: string, p: string, body?: unknown): Promise<T> {
  const r = await engine.api<T>(method, p, body);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

interface RolloutView {
  status: string;
  phase: string;
  stageVersion: number | null;
  reason: string;
}

async function waitRollout(engine: EngineProc, pred: (r: RolloutView) => boolean, timeoutMs: number, what: string): Promise<RolloutView> {
  const deadline = performance.now() + timeoutMs;
  let last: RolloutView | undefined;
  for (;;) {
    last = (await engine.api<RolloutView>('GET', `/api/tiers/${TIER}/rollout`).catch(() => ({ body: undefined }))).body;
    if (last && pred(last)) return last;
    if (performance.now() > deadline)
      throw new Error(`rollout: no ${what} within ${Math.round(timeoutMs / 1000)} s; last ${JSON.stringify(last)?.slice(0, 600)}`);
    await sleep(100);
  }
}

/**
 * Health keys of the tier reporting `version`, by reading the whole health prefix in pages (all
 * of 10,000 keys at once is over gRPC's 4 MiB message limit).
 */
async function reportingVersion(client: Etcd3, version: number): Promise<number> {
  const prefix = Buffer.from(KEYS.healthPrefix(TIER));
  const end = Buffer.from(prefix);
  end[end.length - 1]! += 1;
  let from = prefix;
  let n = 0;
  for (;;) {
    const r = await client.kv.range({ key: from, range_end: end, limit: '2000' });
    for (const kv of r.kvs) {
      try {
        if (HealthSchema.parse(JSON.parse(kv.value.toString())).configVersion === version) n++;
      } catch {
        /* unreadable: not reporting */
      }
    }
    if (!r.more || r.kvs.length === 0) return n;
    from = Buffer.concat([r.kvs[r.kvs.length - 1]!.key, Buffer.from([0])]);
  }
}

const fmtS = (ms: number) => `${round(ms / 1000, 2)} s`;

/** CPU µs per call of f, the median of 5 rounds of n calls (after a warm-up round). */
function cpuPerCall(n: number, f: () => unknown): number {
  const rounds: number[] = [];
  for (let r = 0; r < 6; r++) {
    const c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) f();
    const d = process.cpuUsage(c0);
    if (r > 0) rounds.push((d.user + d.system) / n);
  }
  return median(rounds);
}

/**
 * The agent's accept path on its own, in this process: decide() (JSON, the signature check
 * against the verify key file, zod, place and replay checks, cohort) on the tier document the
 * engine wrote, as each simulated agent runs it; and crypto.verify alone on the same bytes.
 */
async function acceptCost(client: Etcd3, verifyKey: string): Promise<{ decideUs: number; verifyUs: number }> {
  const kv = (await client.get(KEYS.tierConfig(TIER)).exec()).kvs[0]!;
  const snap = { tier: { value: kv.value, modRevision: Number(kv.mod_revision) }, override: null, revision: Number(kv.mod_revision) };
  const verifier = Verifier.fromSources([verifyKey]);
  const keys = { tier: KEYS.tierConfig(TIER), override: KEYS.hostOverride('f-00000') };
  const place = { tier: TIER, hostId: 'f-00000' };
  const d = decide(snap, keys, verifier, place, { tier: null, override: null });
  if (d.kind !== 'config') throw new Error(`the accept path refused the engine's document: ${JSON.stringify(d)}`);
  const doc = JSON.parse(kv.value.toString()) as { signature: { value: string } };
  const bytes = signedBytes(doc);
  const sig = Buffer.from(doc.signature.value, 'base64');
  const pub = createPublicKey(fs.readFileSync(verifyKey));
  return {
    decideUs: cpuPerCall(2000, () => decide(snap, keys, verifier, place, { tier: null, override: null })),
    verifyUs: cpuPerCall(2000, () => verify(null, bytes, pub, sig)),
  };
}

// ---- the bench ----------------------------------------------------------------------------------------

export const fleet: Bench = {
  name: 'fleet',
  produces: [
    'fleet_propagation_ms_p99',
    'fleet_fanout_ms_p99',
    'fleet_change_cpu_ms_per_agent',
    'fleet_accept_cpu_ms',
    'rollback_ms_p99',
    'dead_agent_detect_ms',
    'reconnect_relists_per_agent',
  ],
  summary: `N simulated agents (--fleet-agents, default 10000) on one etcd with an engine: config -> all applied (${PROPAGATION_CHANGES} changes), alert -> all rolled back (${ROLLBACKS}x), dead agents -> engine, etcd restart -> re-reads per agent`,
  async run(ctx: BenchContext): Promise<Figure[]> {
    const N = fleetOptions.agents;
    return scoped(ctx, async (scope: Scope) => {
      const t0 = performance.now();
      const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-bench-fleet-'));
      scope.defer('log dir', () => fs.rmSync(logDir, { recursive: true, force: true }));
      const keys: Keys = makeKeys();
      scope.defer('keys', () => fs.rmSync(keys.dir, { recursive: true, force: true }));
      const etcd: EtcdServer = await startEtcd();
      scope.defer('etcd', () => etcd.destroy());
      const client = createEtcdClient({ endpoints: etcd.endpoints });
      scope.defer('etcd client', () => client.close());
      const engine = await EngineProc.start(etcd.endpoints, keys, 'bench', logDir);
      scope.defer('engine', () => engine.stop());
      const leaderBy = performance.now() + 20_000;
      while (!(await engine.isLeader())) {
        if (performance.now() > leaderBy) throw new Error(`the engine did not become leader:\n${engine.log().slice(-1500)}`);
        await sleep(100);
      }
      const watcher = await TierWatcher.start(client);
      scope.defer('bare watcher', () => watcher.close());
      // ---- etcd's fan-out alone: N bare watchers, the same changes, no agent work ------------------
      const fanMs: number[] = [];
      const fanWatch: number[] = [];
      const fanCpu: number[] = [];
      {
        const bare = SimRun.start('bare', logDir, [
          '--etcd',
          etcd.endpoint,
          '--tier',
          TIER,
          '--agents',
          String(N),
          '--bare-watch',
          '--stats-interval',
          String(STATS_INTERVAL_MS),
        ]);
        scope.defer('bare watchers', () => bare.stop());
        const t = performance.now();
        await bare.until((s) => s.connected === N, Math.max(120_000, N * 20), `${N} bare watchers watching`);
        ctx.progress(`${N} bare watchers of the tier key watching after ${fmtS(performance.now() - t)}`);
        for (let i = 0; i < PROPAGATION_CHANGES; i++) {
          const config = { ...BASE_CONFIG, bypass: { ports: i % 2 === 0 ? [22, 2222] : [22] } };
          await sleep(STATS_INTERVAL_MS * 2);
          const before = bare.last()!;
          const tPut = performance.now();
          const rec = await api<{ version: number }>(engine, 'PUT', `/api/tiers/${TIER}/config`, {
            document: { config, rollout: BASE_ROLLOUT },
            message: `bench: fan-out ${i + 1}`,
          });
          const tWatch = await watcher.when(rec.version, 10_000);
          const rev = String((await client.get(KEYS.tierConfig(TIER)).exec()).kvs[0]!.mod_revision);
          const all = await bare.until(
            (s) => s.applied[rev] === N && s.lastChangeAppliedMs[rev] !== undefined,
            60_000,
            `all bare watchers saw revision ${rev}`,
            undefined,
            tPut,
          );
          fanMs.push(tWatch - tPut + all.s.lastChangeAppliedMs[rev]!);
          fanWatch.push(tWatch - tPut);
          fanCpu.push((all.s.cpuMs - before.s.cpuMs) / N);
          ctx.progress(
            `fan-out ${i + 1}/${PROPAGATION_CHANGES} (revision ${rev}): all ${N} bare watchers had it after ${round(fanMs[i]!, 1)} ms (first -> last ${all.s.lastChangeAppliedMs[rev]} ms); their CPU ${round(fanCpu[i]! * 1000, 1)} µs per watcher`,
          );
        }
        await bare.stop();
      }

      const first = await api<{ version: number }>(engine, 'PUT', `/api/tiers/${TIER}/config`, {
        document: { config: BASE_CONFIG, rollout: BASE_ROLLOUT },
        message: 'bench: first version',
      });
      ctx.progress(`etcd ${etcd.endpoint}, engine ${engine.url} (leader), tier ${TIER} version ${first.version}`);

      // ---- N agents -------------------------------------------------------------------------------
      const sim = SimRun.start('sim', logDir, [
        '--etcd',
        etcd.endpoint,
        '--tier',
        TIER,
        '--agents',
        String(N),
        '--verify-key',
        keys.verifyKey,
        '--host-prefix',
        'f-',
        '--stats-interval',
        String(STATS_INTERVAL_MS),
        ...(fleetOptions.healthSpreadMs === undefined ? [] : ['--health-spread', String(fleetOptions.healthSpreadMs)]),
      ]);
      scope.defer('simulator', () => sim.stop());
      let t = performance.now();
      const up = await sim.until(
        (s) => s.started === N && s.connected === N && s.applied[String(first.version)] === N,
        Math.max(180_000, N * 30),
        `${N} agents started, watching, on version ${first.version}`,
        (s) =>
          ctx.progress(`starting: ${s.started}/${N} started, ${s.connected} watching, ${s.applied[String(first.version)] ?? 0} on version ${first.version}`),
      );
      ctx.progress(`${N} simulated agents in ${up.s.workers} processes started, watching and on version ${first.version} after ${fmtS(performance.now() - t)}`);
      await waitEngineAgents(engine, (n) => n === N, 120_000, `${N} agents`);
      ctx.progress(`the engine counts ${N} agents (${fmtS(performance.now() - t)} after the simulator's launch)`);
      await sleep(2000); // the start-up health writes drain
      // What the quiet fleet costs (lease keepalives, health ticks): subtracted from each change's CPU.
      const quiet0 = sim.last()!;
      await sleep(CPU_QUIET_MS);
      const quiet1 = sim.last()!;
      const quietRate = (quiet1.s.cpuMs - quiet0.s.cpuMs) / (quiet1.recv - quiet0.recv);
      ctx.progress(`the quiet fleet uses ${round(quietRate * 100, 1)} % of a CPU (${N} agents' keepalives and health ticks)`);
      const accept = await acceptCost(client, keys.verifyKey);
      ctx.progress(
        `the accept path alone (decide on the engine's document): ${round(accept.decideUs, 1)} µs of CPU, of which crypto.verify ${round(accept.verifyUs, 1)} µs`,
      );

      // ---- propagation ----------------------------------------------------------------------------
      const propMs: number[] = [];
      const propWatch: number[] = [];
      const changeCpu: number[] = [];
      for (let i = 0; i < PROPAGATION_CHANGES; i++) {
        const config = { ...BASE_CONFIG, bypass: { ports: i % 2 === 0 ? [22, 2222] : [22] } };
        const before = sim.last()!;
        const tPut = performance.now();
        const rec = await api<{ version: number }>(engine, 'PUT', `/api/tiers/${TIER}/config`, {
          document: { config, rollout: BASE_ROLLOUT },
          message: `bench: change ${i + 1}`,
        });
        const v = String(rec.version);
        const tWatch = await watcher.when(rec.version, 10_000);
        const all = await sim.until(
          (s) => s.applied[v] === s.alive && s.alive === N && s.lastChangeAppliedMs[v] !== undefined,
          120_000,
          `all agents on version ${v}`,
          undefined,
          tPut,
        );
        // From the write to the first agent seeing it ~ the bare watcher's latency; from there to
        // the last apply, the simulator's own clock (lastChangeAppliedMs).
        const precise = tWatch - tPut + all.s.lastChangeAppliedMs[v]!;
        const polled = all.recv - tPut;
        propMs.push(Math.min(precise, polled));
        propWatch.push(tWatch - tPut);
        ctx.progress(
          `change ${i + 1}/${PROPAGATION_CHANGES} (version ${v}): all ${N} applied after ${round(precise, 1)} ms (first agent -> last ${all.s.lastChangeAppliedMs[v]} ms; stats poll says <= ${round(polled, 0)} ms); bare watcher ${round(tWatch - tPut, 2)} ms`,
        );
        // Their health writes drain (every agent writes one after applying; the simulator lets a
        // worker's burst of watch events end first), then 500 ms for the last answers.
        await sim.until((s) => s.healthWrites - before.s.healthWrites >= N, 30_000, `${N} health writes after version ${v}`, undefined, tPut);
        await sleep(500);
        // The change's CPU in the simulator, per agent: receiving, parsing, verifying, validating,
        // deciding, applying (no kernel) and the health write it causes, less the quiet fleet's.
        const after = sim.last()!;
        changeCpu.push((after.s.cpuMs - before.s.cpuMs - quietRate * (after.recv - before.recv)) / N);
        ctx.progress(`change ${i + 1}: ${round(changeCpu[i]! * 1000, 0)} µs of CPU per agent (simulator processes, quiet fleet subtracted)`);
      }

      // ---- rollback on an alert ---------------------------------------------------------------------
      const rbMs: number[] = [];
      const rbWatch: number[] = [];
      for (let i = 0; i < ROLLBACKS; i++) {
        t = performance.now();
        await api(engine, 'POST', `/api/tiers/${TIER}/rollout`, {
          stages: 'active:100',
          bake: '30m',
          // Only the alert may end this bake: the simulator's leaky hosts report blocked flows.
          analysis: { checkIntervalMs: 1000, failureLimit: 1, maxBlockedPerMinute: 1e9, applyDeadlineMs: 600_000 },
        });
        const baking = await waitRollout(engine, (r) => r.status === 'running' && r.phase === 'baking', 180_000, 'stage baking');
        ctx.progress(
          `rollback ${i + 1}/${ROLLBACKS}: rollout stage active:100 (version ${baking.stageVersion}) applied by all and baking after ${fmtS(performance.now() - t)}`,
        );
        await sleep(1500);
        const fingerprint = `bench-${Date.now()}-${i}`;
        const alert = {
          status: 'firing',
          labels: { alertname: 'BenchRollback', tier: TIER, severity: 'page' },
          startsAt: new Date().toISOString(),
          fingerprint,
        };
        const tAlert = performance.now();
        await api(engine, 'POST', '/api/alerts', { version: '4', status: 'firing', alerts: [alert] });
        const rb = await watcher.next(baking.stageVersion!, 30_000);
        const v = String(rb.version);
        const applied = await sim.until((s) => s.applied[v] === s.alive && s.alive === N, 120_000, `all agents on rolled-back version ${v}`, undefined, tAlert);
        // "Reports": the health key of every agent names the version (one read of the prefix).
        let tReported = 0;
        const reportBy = performance.now() + 60_000;
        for (;;) {
          const n = await reportingVersion(client, rb.version);
          if (n === N) {
            tReported = performance.now();
            break;
          }
          if (performance.now() > reportBy) throw new Error(`only ${n} of ${N} health keys report the rolled-back version ${v}`);
          await sleep(500);
        }
        const after = await sim.until((s) => s.lastChangeReportedMs[v] !== undefined, 10_000, 'stats after the health read', undefined, tReported);
        const precise = rb.t - tAlert + after.s.lastChangeReportedMs[v]!;
        const polled = tReported - tAlert;
        rbMs.push(Math.min(precise, polled));
        rbWatch.push(rb.t - tAlert);
        ctx.progress(
          `rollback ${i + 1}/${ROLLBACKS}: alert -> version ${v} written ${round(rb.t - tAlert, 1)} ms -> all applied (stats <= ${round(applied.recv - tAlert, 0)} ms) -> all reported ${round(precise, 0)} ms (health read says <= ${round(polled, 0)} ms)`,
        );
        await api(engine, 'POST', '/api/alerts', { alerts: [{ ...alert, status: 'resolved', endsAt: new Date().toISOString() }] });
        const done = await waitRollout(engine, (r) => r.status !== 'running', 10_000, 'rollout ended');
        if (done.status !== 'aborted' || !/BenchRollback/.test(done.reason))
          throw new Error(`the rollout should have been aborted by the alert: ${done.status}: ${done.reason}`);
        await sleep(2500);
      }

      // ---- dead agents --------------------------------------------------------------------------------
      const D = Math.max(10, Math.round(N / 100));
      t = performance.now();
      const dying = SimRun.start('sim-dying', logDir, [
        '--etcd',
        etcd.endpoint,
        '--tier',
        TIER,
        '--agents',
        String(D),
        '--verify-key',
        keys.verifyKey,
        '--host-prefix',
        'dead-',
        '--die-percent',
        '100',
        '--die-after',
        String(DIE_AFTER_S),
        '--stats-interval',
        '50',
      ]);
      scope.defer('dying simulator', () => dying.stop());
      await dying.until((s) => s.started === D && s.connected === D, DIE_AFTER_S * 1000, `${D} more agents up`);
      await waitEngineAgents(engine, (n) => n === N + D, DIE_AFTER_S * 1000, `${N + D} agents`);
      const dieAt = dying.origin() + DIE_AFTER_S * 1000;
      if (performance.now() >= dieAt)
        throw new Error(`the ${D} extra agents were not all counted by the engine before they died (${DIE_AFTER_S} s after their start); raise DIE_AFTER_S`);
      ctx.progress(`${D} more agents up and counted (${N + D}); they die ${fmtS(dieAt - performance.now())} from now without revoking their leases`);
      let firstGone: number | undefined;
      let allGone: number | undefined;
      while (allGone === undefined) {
        const n = await engineAgents(engine).catch(() => -1);
        const now = performance.now();
        if (n >= 0 && n < N + D && firstGone === undefined) firstGone = now;
        if (n >= 0 && n <= N) allGone = now;
        if (now - dieAt > 60_000) throw new Error(`the engine still counts ${n} agents 60 s after ${D} died`);
        await sleep(100);
      }
      const deadStats = dying.last()?.s;
      if (deadStats && deadStats.alive !== 0) throw new Error(`the dying simulator still reports ${deadStats.alive} agents alive`);
      const detectMs = allGone - dieAt;
      ctx.progress(
        `dead agents: the engine counted the first gone after ${round((firstGone ?? allGone) - dieAt, 0)} ms and all ${D} after ${round(detectMs, 0)} ms (lease TTL ${LEASE_TTL_MS} ms, refreshed every ~3.3 s)`,
      );
      await dying.stop();
      await waitEngineAgents(engine, (n) => n === N, 10_000, `${N} agents`);

      // ---- etcd restarted under the watchers ------------------------------------------------------------
      await sleep(2000);
      const before = sim.last()!.s;
      const tKill = performance.now();
      await etcd.kill();
      await etcd.restart();
      const tUp = performance.now();
      ctx.progress(`etcd SIGKILLed and restarted in ${fmtS(tUp - tKill)}; waiting for ${N} agents to watch again`);
      const back = await sim.until(
        (s) => s.connected === s.alive && s.alive === N && s.reconnects - before.reconnects >= N,
        Math.max(180_000, N * 30),
        `all ${N} agents watching again after the restart`,
        (s) =>
          ctx.progress(`reconnecting: ${s.connected}/${s.alive} watching, ${s.reconnects - before.reconnects} resumes, ${s.relists - before.relists} re-reads`),
        tUp,
      );
      // Late re-reads (a resume that met a cancel) would come within a few seconds.
      await sleep(5000);
      const settled = sim.last()!.s;
      const relists = settled.relists - before.relists;
      ctx.progress(
        `etcd restart: all ${N} watching again ${fmtS(back.recv - tUp)} after etcd was back; ${settled.reconnects - before.reconnects} resumes, ${relists} re-reads, ${settled.leaseRegrants - before.leaseRegrants} leases granted again, ${settled.errors} agents reporting errors`,
      );

      // Not a figure, but what an operator would ask next: does the engine see the fleet again?
      // (Its count alone can be stale: the health cache keeps the agents it had until a re-read
      // of the health prefix succeeds.)
      const engineLog = engine.log().split('\n');
      const restarts = engineLog.filter((l) => l.includes('"health_watch_restart"')).length;
      const readFailures = engineLog.filter((l) => l.includes('"health_read_failed"'));
      const reasons = [...new Set(readFailures.map((l) => String((JSON.parse(l) as { err?: unknown }).err ?? '?')))];
      const count = await engineAgents(engine).catch(() => -1);
      ctx.progress(
        `engine after the etcd restart: counts ${count} agents; ${restarts} health watch restart(s), ${readFailures.length} failed re-read(s) of the health prefix` +
          (reasons.length ? ` (${reasons.map((r) => r.slice(0, 160)).join(' | ')})` : ''),
      );

      await sim.stop();
      ctx.progress(`fleet bench body took ${fmtS(performance.now() - t0)}`);

      const p99 = quantile(propMs, 0.99);
      const b99 = quantile(propWatch, 0.99);
      const r99 = quantile(rbMs, 0.99);
      const rb99 = quantile(rbWatch, 0.99);
      const perAgent = relists / N;
      return [
        {
          bench: 'fleet_propagation_ms_p99',
          value: round(p99, 1),
          unit: 'ms',
          baseline: round(b99, 2),
          ratio: round(p99 / b99, 1),
          valueTarget: { op: '<=', value: 2000 },
          meaning: `config written through the engine -> all ${N} simulated agents applied it (${PROPAGATION_CHANGES} changes); one bare watcher: ${round(b99, 1)} ms`,
        },
        {
          bench: 'fleet_fanout_ms_p99',
          value: round(quantile(fanMs, 0.99), 1),
          unit: 'ms',
          baseline: round(quantile(fanWatch, 0.99), 2),
          ratio: round(quantile(fanMs, 0.99) / quantile(fanWatch, 0.99), 1),
          meaning: `the same changes to ${N} bare watchers (same watch streams and processes, no agent work): etcd's fan-out and its delivery alone`,
        },
        {
          bench: 'fleet_change_cpu_ms_per_agent',
          value: round(median(changeCpu), 3),
          unit: 'CPU ms/agent',
          baseline: round(median(fanCpu), 3),
          ratio: round(median(changeCpu) / median(fanCpu), 1),
          meaning: `median CPU one change costs a simulated agent (its own watch, JSON, ed25519, zod, cohort, health write); baseline: a bare watcher receiving it`,
        },
        {
          bench: 'fleet_accept_cpu_ms',
          value: round(accept.decideUs / 1000, 4),
          unit: 'CPU ms',
          baseline: round(accept.verifyUs / 1000, 4),
          ratio: round(accept.decideUs / accept.verifyUs, 2),
          meaning: `the agent's accept path alone, in the bench process: decide() on the engine's signed document (JSON, ed25519, zod, place, cohort); baseline: crypto.verify alone`,
        },
        {
          bench: 'rollback_ms_p99',
          value: round(r99, 0),
          unit: 'ms',
          baseline: round(rb99, 1),
          ratio: round(r99 / rb99, 1),
          valueTarget: { op: '<=', value: 10_000 },
          meaning: `firing alert -> all ${N} agents report the rolled-back version (${ROLLBACKS} rollouts in their bake); one bare watcher sees it after ${round(rb99, 0)} ms`,
        },
        {
          bench: 'dead_agent_detect_ms',
          value: round(detectMs, 0),
          unit: 'ms',
          baseline: LEASE_TTL_MS,
          ratio: round(detectMs / LEASE_TTL_MS, 2),
          valueTarget: { op: '<=', value: 15_000 },
          meaning: `${D} agents die without revoking their leases -> the engine no longer counts any of them`,
        },
        {
          bench: 'reconnect_relists_per_agent',
          value: round(perAgent, 3),
          unit: 're-reads/agent',
          baseline: 1,
          ratio: round(perAgent, 3),
          valueTarget: { op: '<=', value: 1 },
          meaning: `etcd SIGKILLed and restarted under ${N} watchers: they resume from their revision instead of reading again`,
        },
      ];
    });
  },
};
