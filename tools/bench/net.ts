// The classifier on a real interface: the agent itself (`sslwall agent`, run inside the client
// namespace of a two-namespace test bed) attaches it to the client's veth end, egress and
// ingress, in passive mode. Each figure compares runs with the agent's filter against runs
// without any filter, on the same bed, ordered A B B A so a slow drift of the machine (another
// process, thermal, a noisy neighbour VM) weighs on both sides alike.
//
// Nothing here touches a host interface: the veth ends live in namespaces the bed created, the
// agent's pins in a bpffs of the bed's own, its cgroup under the bed's prefix; the agent is
// stopped and `sslwall uninstall` run after the "with" runs, and tb.destroy() removes the rest
// (also on error).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../native/index.js';
import { readCounters, type Counters } from '../../agent/flows.js';
import { pinLayout } from '../../agent/paths.js';
import { createTestbed, type Testbed } from '../../test/lib/netns.js';
import { iperfClient, startIperf } from '../../test/lib/peers.js';
import { waitFor, tail } from '../../test/lib/proc.js';
import { AgentProc, agentEnv, sslwall, writeConfig, type AgentEnv } from '../../test/integration/agent-proc.js';
import { median, round, spread } from './stats.js';
import type { Bench, BenchContext, BenchResult } from './types.js';

const PASSIVE = { mode: 'passive' };
const IPERF_PORT = 5201;
const PASSIVE_BYPASS_IPERF = { mode: 'passive', bypass: { ports: [IPERF_PORT] } };

/** An agent on the client side of a bed, started and removed by the bench. */
class BenchAgent {
  private agent: AgentProc | undefined;
  private installed = false;

  private constructor(
    readonly env: AgentEnv,
    private readonly ctx: BenchContext,
  ) {}

  static async prepare(tb: Testbed, ctx: BenchContext, config: unknown): Promise<BenchAgent> {
    const cgroup2 = await tb.mountCgroup2();
    // The agent's --cgroup is a cgroup named with the bed's prefix (not the hierarchy root):
    // the agent creates its sslwall-bypass cgroup under it, and tb.destroy() removes both.
    const env = await agentEnv(tb, 'client', cgroup2);
    writeConfig(env, config);
    return new BenchAgent(env, ctx);
  }

  async start(): Promise<void> {
    const t0 = Date.now();
    this.installed = true; // from here on, uninstall even if the start fails half-way
    this.agent = await AgentProc.start(this.env);
    const attached = this.agent.lines().filter((l) => l.event === 'filter_attached' || l.event === 'filter_adopted');
    const dirs = new Set(attached.map((l) => l.dir));
    if (!dirs.has('egress') || !dirs.has('ingress')) {
      throw new Error(`agent_ready came without the filter on both directions of ${this.env.tb.client.ifname} (saw: ${[...dirs].join(', ') || 'none'})`);
    }
    this.ctx.progress(`agent attached to ${this.env.tb.client.ifname} (egress+ingress) in ${Date.now() - t0} ms`);
  }

  async setConfig(config: unknown, what: string): Promise<void> {
    const agent = this.need();
    const count = () => agent.lines().filter((l) => l.event === 'config_applied').length;
    const before = count();
    writeConfig(this.env, config);
    await agent.waitFor(() => count() > before, 5000, `config_applied (${what})`);
  }

  /** The filter's own counters, read from the agent's pinned map (independent of its logging). */
  counters(): Counters {
    const fd = native().getPinned(pinLayout(this.env.bpffs).map('sslwall_counters'));
    try {
      return readCounters(fd);
    } finally {
      native().closeFd(fd);
    }
  }

  /** Stop the agent and detach everything it pinned. Idempotent. */
  async remove(): Promise<void> {
    if (this.agent) {
      await this.agent.stop();
      this.agent = undefined;
    }
    if (!this.installed) return;
    this.installed = false;
    const r = await sslwall(this.env, ['uninstall', '--bpffs', this.env.bpffs, '--json']);
    if (r.code !== 0) throw new Error(`sslwall uninstall failed (exit ${r.code}): ${r.stderr || r.stdout}`);
    const removed = (JSON.parse(r.stdout) as { removed: string[] }).removed;
    const ifname = this.env.tb.client.ifname;
    for (const dir of ['ingress', 'egress']) {
      if (!removed.some((p) => p.endsWith(`tcx_${ifname}_${dir}`))) throw new Error(`uninstall did not remove the ${dir} link of ${ifname}: ${r.stdout}`);
    }
    this.ctx.progress('agent stopped, filter uninstalled');
  }

  private need(): AgentProc {
    if (!this.agent) throw new Error('the agent is not running');
    return this.agent;
  }
}

function classCount(c: Counters, cls: string): bigint {
  return c.byClass.filter((x) => x.class === cls).reduce((s, x) => s + x.value, 0n);
}

type Cleanup = (fn: () => Promise<void>) => void;

/**
 * Run the body on a fresh bed; afterwards (also on error) run the registered cleanups (latest
 * first) and destroy the bed. A cleanup problem after a failed body is printed and the body's
 * error wins; after a successful body it fails the bench: leftovers must not go unnoticed.
 */
async function onBed<T>(label: string, ctx: BenchContext, body: (tb: Testbed, cleanup: Cleanup) => Promise<T>): Promise<T> {
  const t0 = Date.now();
  const tb = await createTestbed(label);
  ctx.progress(`test bed ${tb.prefix} up (${tb.client.ns} ${tb.client.ipv4} <-veth-> ${tb.server.ns} ${tb.server.ipv4}) in ${Date.now() - t0} ms`);
  const cleanups: (() => Promise<void>)[] = [];
  let result: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    result = { ok: true, value: await body(tb, (fn) => cleanups.push(fn)) };
  } catch (error) {
    result = { ok: false, error };
  }
  const problems: unknown[] = [];
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch (e) {
      problems.push(e);
    }
  }
  try {
    await tb.destroy();
    ctx.progress('test bed removed');
  } catch (e) {
    problems.push(e);
  }
  if (!result.ok) {
    for (const p of problems) ctx.progress(`cleanup: ${(p as Error).message}`);
    throw result.error;
  }
  if (problems.length) throw problems[0];
  return result.value;
}

// ---------------------------------------------------------------------------------------------

const IPERF_SECONDS = 4;
const IPERF_OMIT = 1;
const IPERF_CYCLES = 2;

export const vethThroughput: Bench = {
  name: 'veth_throughput',
  produces: ['veth_throughput', 'veth_throughput_bypass'],
  summary: `iperf3 client ns -> server ns over veth (${IPERF_SECONDS} s per run after ${IPERF_OMIT} s omitted), without a filter vs with the agent's classifier (passive) vs with port ${IPERF_PORT} bypassed; median of ${2 * IPERF_CYCLES} runs each`,
  async run(ctx: BenchContext): Promise<BenchResult[]> {
    return onBed('bench-veth', ctx, async (tb, cleanup) => {
      const iperf = await startIperf(tb, { port: IPERF_PORT });
      const agent = await BenchAgent.prepare(tb, ctx, PASSIVE);
      cleanup(() => agent.remove());

      const without: number[] = [];
      const withFilter: number[] = [];
      const bypassed: number[] = [];
      const measure = async (into: number[], label: string) => {
        const r = await iperfClient(tb, iperf, { durationS: IPERF_SECONDS, args: ['-O', String(IPERF_OMIT)] });
        into.push(r.bitsPerSecond / 1e9);
        ctx.progress(`${label}: ${round(r.bitsPerSecond / 1e9, 2)} Gbit/s`);
      };

      // Each cycle runs A B C C B A: without, with, with+bypass, with+bypass, with, without.
      for (let cycle = 1; cycle <= IPERF_CYCLES; cycle++) {
        ctx.progress(`cycle ${cycle}/${IPERF_CYCLES}`);
        await measure(without, 'without filter');
        writeConfig(agent.env, PASSIVE);
        await agent.start();
        let c0 = agent.counters();
        await measure(withFilter, 'with filter (passive)');
        let c1 = agent.counters();
        // Passive mode: iperf3 is plaintext, so its flows must have been judged plaintext/reported.
        if (classCount(c1, 'plaintext') <= classCount(c0, 'plaintext')) {
          throw new Error(`the filter did not classify the iperf3 flows (plaintext count ${classCount(c0, 'plaintext')} -> ${classCount(c1, 'plaintext')}): is it on the path?`);
        }
        await agent.setConfig(PASSIVE_BYPASS_IPERF, `bypass ${IPERF_PORT}`);
        c0 = agent.counters();
        await measure(bypassed, `with filter, port ${IPERF_PORT} bypassed`);
        await measure(bypassed, `with filter, port ${IPERF_PORT} bypassed`);
        c1 = agent.counters();
        if (classCount(c1, 'bypass') <= classCount(c0, 'bypass') || classCount(c1, 'plaintext') !== classCount(c0, 'plaintext')) {
          throw new Error(`with port ${IPERF_PORT} bypassed the iperf3 flows should count as bypass and none as plaintext; counters: ${JSON.stringify(c1.byClass, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))}`);
        }
        await agent.setConfig(PASSIVE, 'passive');
        await measure(withFilter, 'with filter (passive)');
        await agent.remove();
        await measure(without, 'without filter');
      }

      const base = median(without);
      const w = median(withFilter);
      const b = median(bypassed);
      ctx.progress(`spread (max-min)/median: without ${pct(spread(without))}, with ${pct(spread(withFilter))}, bypass ${pct(spread(bypassed))}`);
      return [
        {
          bench: 'veth_throughput',
          value: round(w, 2),
          unit: 'Gbit/s',
          baseline: round(base, 2),
          ratio: round(w / base, 3),
          target: { op: '>=', ratio: 0.97 },
          meaning: `TCP over veth keeps ${pct(w / base)} of its throughput with the classifier (flow classified, then fast path)`,
        },
        {
          bench: 'veth_throughput_bypass',
          value: round(b, 2),
          unit: 'Gbit/s',
          baseline: round(base, 2),
          ratio: round(b / base, 3),
          target: { op: '>=', ratio: 0.97 },
          meaning: `same with port ${IPERF_PORT} in bypass.ports: ${pct(b / base)} of the throughput`,
        },
      ];
    });
  },
};

// ---------------------------------------------------------------------------------------------

const CONN_PORT = 7000;
const CONN_MS = 2500;
const CONN_CYCLES = 2;
const CONN_WARMUP_MS = 300;
const CONN_CONCURRENCY = 8;

interface ConnReport {
  connections: number;
  errors: number;
  seconds: number;
  rate: number;
  firstError?: string;
}

function connrateScript(): string {
  // Beside this module in dist/tools/bench/.
  const p = path.join(path.dirname(fileURLToPath(import.meta.url)), 'connrate.js');
  if (!fs.existsSync(p)) throw new Error(`${p} is missing; build with npm run build:ts`);
  return p;
}

export const connectRate: Bench = {
  name: 'connect_rate',
  produces: ['connect_rate'],
  summary: `TCP connect+close cycles per second, client ns -> server ns, ${CONN_CONCURRENCY} in flight, ${CONN_MS / 1000} s per run, without vs with the agent (passive); median of ${2 * CONN_CYCLES} runs each`,
  async run(ctx: BenchContext): Promise<BenchResult[]> {
    return onBed('bench-connect', ctx, async (tb, cleanup) => {
      const script = connrateScript();
      // Per-namespace TCP knobs of the client: ~16k TIME_WAIT sockets per run must not exhaust
      // the ephemeral ports of the next run.
      await tb.execOk('client', '/usr/sbin/sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65535']);
      const server = tb.spawn('server', 'connrate-server', process.execPath, [script, 'server', tb.server.ipv4, String(CONN_PORT)]);
      await waitFor('the connect_rate server to listen', () => fs.existsSync(server.logFile) && fs.readFileSync(server.logFile, 'utf8').includes('listening'), {
        timeoutMs: 10_000,
        abortIf: () => (server.running ? undefined : `it exited (code ${server.exitCode})`),
        explain: () => tail(server.logFile),
      });
      const agent = await BenchAgent.prepare(tb, ctx, PASSIVE);
      cleanup(() => agent.remove());

      const without: number[] = [];
      const withFilter: number[] = [];
      const measure = async (into: number[], label: string) => {
        const r = await tb.exec('client', process.execPath, [script, 'client', tb.server.ipv4, String(CONN_PORT), String(CONN_MS), String(CONN_CONCURRENCY), String(CONN_WARMUP_MS)], {
          timeoutMs: CONN_MS + CONN_WARMUP_MS + 20_000,
        });
        let rep: ConnReport;
        try {
          rep = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as ConnReport;
        } catch {
          throw new Error(`connect_rate client printed no report (exit ${r.code ?? r.signal}): ${r.stderr || r.stdout}`);
        }
        if (rep.errors > rep.connections * 0.001) {
          throw new Error(`connect_rate client: ${rep.errors} failed connections of ${rep.connections + rep.errors} (first: ${rep.firstError})`);
        }
        into.push(rep.rate);
        ctx.progress(`${label}: ${Math.round(rep.rate)} connections/s (${rep.connections} in ${rep.seconds} s, ${rep.errors} errors)`);
      };

      // Each cycle runs A B B A: without, with, with, without.
      for (let cycle = 1; cycle <= CONN_CYCLES; cycle++) {
        ctx.progress(`cycle ${cycle}/${CONN_CYCLES}`);
        await measure(without, 'without filter');
        await agent.start();
        const c0 = agent.counters();
        const before = withFilter.length;
        await measure(withFilter, 'with filter (passive)');
        await measure(withFilter, 'with filter (passive)');
        const c1 = agent.counters();
        const created = Number(c1.flowsCreated - c0.flowsCreated);
        const closed = Number(c1.flowsClosed - c0.flowsClosed);
        const expected = withFilter.slice(before).reduce((sum, rate) => sum + (rate * CONN_MS) / 1000, 0);
        ctx.progress(`the filter created ${created} flows and saw ${closed} closes for at least ${Math.round(expected)} connections`);
        if (created < expected) throw new Error(`the filter created only ${created} flows for ${Math.round(expected)} connections: is it on the path?`);
        await agent.remove();
        await measure(without, 'without filter');
      }

      const base = median(without);
      const w = median(withFilter);
      ctx.progress(`spread (max-min)/median: without ${pct(spread(without))}, with ${pct(spread(withFilter))}`);
      return [
        {
          bench: 'connect_rate',
          value: Math.round(w),
          unit: 'conn/s',
          baseline: Math.round(base),
          ratio: round(w / base, 3),
          meaning: `connect+close keeps ${pct(w / base)} of its rate with the classifier (flow insert at SYN, removal at close)`,
        },
      ];
    });
  },
};

function pct(x: number): string {
  return `${round(x * 100, 1)}%`;
}

