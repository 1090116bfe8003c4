// `sslwall simulate`: a fleet of simulated agents on a real etcd, for exercising the rollout
// engine (docs/simulate.md). The parent forks worker processes (worker.ts), each running a slice
// of the agents over one etcd3 client, prints one JSON stats line per interval on stdout and
// human progress on stderr, and on SIGTERM/SIGINT stops every worker (leases revoked: the health
// keys go at once) and returns 0.
import { type ChildProcess, fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { exitCodeFor, SslwallError } from '../../schemas/errors.js';
import { DEFAULT_ETCD_PREFIX } from '../../schemas/keys.js';
import { type FromWorker, type SimOptions, type StatsLine, slices, type ToWorker, type WorkerStats } from './shared.js';

export const SIMULATE_HELP = `Usage: sslwall simulate --etcd URL[,URL...] --tier TIER --agents N (--verify-key FILE|DIR ... | --insecure-unsigned) [options]

Runs N simulated agents against a real etcd: each reads and watches its tier's document and its
own host override, validates and verifies them with the agent's code, decides its cohort and
effective config, "applies" it (no kernel) and reports health under a lease (TTL 10 s), like
'sslwall agent --etcd'. For exercising the rollout engine (docs/simulate.md).

  --etcd URL[,URL...]     etcd endpoints                                          (required)
  --tier TIER             the tier every simulated host belongs to                (required)
  --agents N              number of simulated agents; host ids PREFIX00000...     (required)
  --verify-key FILE|DIR   the engine's ed25519 public key, or a folder whose *.pub files are
                          all accepted; repeat for more (key rotation); unsigned documents
                          are refused
  --insecure-unsigned     accept unsigned documents
  --error-percent X       share of agents (0-100, picked by host id) whose apply fails with
                          SSLWALL_E_BPF; they keep their previous version             [0]
  --error-from-version V  they fail only for tier versions >= V                  [every version]
  --die-percent Y         share of agents (picked by host id) that stop after --die-after
                          without revoking their lease (the health key expires by TTL)  [0]
  --die-after SECONDS     when those agents die, from the simulator's start           [30]
  --processes P           worker processes                               [ceil(N / 2500)]
  --concurrency C         etcd calls in flight per worker process (start-up, writes)   [64]
  --health-interval MS    at most one health write per agent per MS                  [1000]
  --health-spread MS      each health write but an agent's first waits a random time up to
                          MS, as the agent's --health-spread           [the agent's: 1000]
  --prefix P              etcd key prefix                                      [/sslwall/]
  --host-prefix P         host id prefix                                           [sim-]
  --stats-interval MS     one JSON stats line on stdout every MS                     [1000]
  --bare-watch            no agents: N bare watchers of the tier key that only note when each
                          put arrives (versions keyed by mod revision): etcd's fan-out alone
  --etcd-cacert FILE      CA bundle for https:// endpoints
  --etcd-cert FILE        client certificate (mutual TLS)
  --etcd-key FILE         client key

stdout, one line per interval: {"t","agents","alive","connected","applied":{VERSION:n},"errors",
"relists","reconnects","lastChangeAppliedMs":{VERSION:ms}, ...}. SIGTERM/SIGINT: every lease is
revoked, the workers exit, exit status 0.
`;

export const SIMULATE_OPTIONS: ParseArgsConfig['options'] = {
  etcd: { type: 'string' },
  tier: { type: 'string' },
  agents: { type: 'string' },
  'verify-key': { type: 'string', multiple: true },
  'insecure-unsigned': { type: 'boolean' },
  'error-percent': { type: 'string' },
  'error-from-version': { type: 'string' },
  'die-percent': { type: 'string' },
  'die-after': { type: 'string' },
  processes: { type: 'string' },
  concurrency: { type: 'string' },
  'health-interval': { type: 'string' },
  'health-spread': { type: 'string' },
  prefix: { type: 'string' },
  'host-prefix': { type: 'string' },
  'stats-interval': { type: 'string' },
  'bare-watch': { type: 'boolean' },
  'etcd-cacert': { type: 'string' },
  'etcd-cert': { type: 'string' },
  'etcd-key': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

const AGENTS_PER_PROCESS = 2500;

function usage(message: string): SslwallError {
  return new SslwallError('SSLWALL_E_USAGE', `${message}; run sslwall simulate --help`);
}

function num(v: string | undefined, name: string, def: number, min: number, max: number, integer = false): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw usage(`--${name} ${v}: expected ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
  }
  return n;
}

/** The options from the command line (after "simulate"); throws SSLWALL_E_USAGE. */
export function parseSimulateArgs(argv: string[]): SimOptions {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options: SIMULATE_OPTIONS, allowPositionals: false, strict: true }) as {
      values: Record<string, string | boolean | undefined>;
    });
  } catch (err) {
    throw usage((err as Error).message);
  }
  const s = (k: string) => values[k] as string | undefined;
  if (!s('etcd')) throw usage('--etcd URL[,URL...] is required');
  if (!s('tier')) throw usage('--tier TIER is required');
  if (!s('agents')) throw usage('--agents N is required');
  const verifyKeys = (values['verify-key'] as string[] | undefined) ?? [];
  const bareWatch = values['bare-watch'] === true;
  if (!bareWatch && !verifyKeys.length === !values['insecure-unsigned']) throw usage('give one of --verify-key FILE or --insecure-unsigned');
  for (const k of verifyKeys) if (!existsSync(k)) throw usage(`--verify-key ${k}: no such file or folder`);
  const agents = num(s('agents'), 'agents', 0, 1, 1_000_000, true);
  const endpoints = s('etcd')!
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  return {
    conn: { endpoints, cacert: s('etcd-cacert'), cert: s('etcd-cert'), key: s('etcd-key') },
    tier: s('tier')!,
    agents,
    errorPercent: num(s('error-percent'), 'error-percent', 0, 0, 100),
    errorFromVersion: num(s('error-from-version'), 'error-from-version', 0, 0, Number.MAX_SAFE_INTEGER, true),
    diePercent: num(s('die-percent'), 'die-percent', 0, 0, 100),
    dieAfterS: num(s('die-after'), 'die-after', 30, 0, 1e7),
    processes: Math.min(agents, num(s('processes'), 'processes', Math.ceil(agents / AGENTS_PER_PROCESS), 1, 256, true)),
    verifyKeys,
    prefix: s('prefix') ?? DEFAULT_ETCD_PREFIX,
    hostPrefix: s('host-prefix') ?? 'sim-',
    statsIntervalMs: num(s('stats-interval'), 'stats-interval', 1000, 50, 3_600_000, true),
    concurrency: num(s('concurrency'), 'concurrency', 64, 1, 100_000, true),
    healthMinIntervalMs: num(s('health-interval'), 'health-interval', 1000, 0, 3_600_000, true),
    healthSpreadMs: s('health-spread') === undefined ? undefined : num(s('health-spread'), 'health-spread', 0, 0, 60_000, true),
    bareWatch,
  };
}

/** The compiled worker next to this file (dist/tools/simulate/worker.js). */
function workerPath(): string {
  return fileURLToPath(new URL('./worker.js', import.meta.url));
}

interface Child {
  proc: ChildProcess;
  first: number;
  count: number;
  stats: WorkerStats | null;
  started: boolean;
  exited: boolean;
}

/** Sum the workers' latest stats into one line. */
export function mergeStats(t: number, agents: number, all: Array<WorkerStats | null>, workers: number): StatsLine {
  const line: StatsLine = {
    t,
    agents,
    alive: 0,
    connected: 0,
    applied: {},
    errors: 0,
    relists: 0,
    reconnects: 0,
    lastChangeAppliedMs: {},
    lastChangeReportedMs: {},
    started: 0,
    errorCodes: {},
    leaseRegrants: 0,
    healthWrites: 0,
    healthWriteErrors: 0,
    cpuMs: 0,
    workers,
  };
  const first = new Map<string, number>();
  const last = new Map<string, number>();
  const reported = new Map<string, number>();
  for (const s of all) {
    if (!s) continue;
    line.alive += s.alive;
    line.connected += s.connected;
    line.errors += s.errors;
    line.relists += s.relists;
    line.reconnects += s.reconnects;
    line.started += s.started;
    line.leaseRegrants += s.leaseRegrants;
    line.healthWrites += s.healthWrites;
    line.healthWriteErrors += s.healthWriteErrors;
    line.cpuMs += s.cpuMs;
    for (const [v, n] of Object.entries(s.applied)) line.applied[v] = (line.applied[v] ?? 0) + n;
    for (const [c, n] of Object.entries(s.errorCodes)) line.errorCodes[c] = (line.errorCodes[c] ?? 0) + n;
    for (const [v, vs] of Object.entries(s.versions)) {
      first.set(v, Math.min(first.get(v) ?? Infinity, vs.firstSeen));
      if (vs.lastApplied !== null) last.set(v, Math.max(last.get(v) ?? 0, vs.lastApplied));
      if (vs.lastReported !== null) reported.set(v, Math.max(reported.get(v) ?? 0, vs.lastReported));
    }
  }
  for (const [v, f] of first) {
    const l = last.get(v);
    if (l !== undefined) line.lastChangeAppliedMs[v] = Math.max(0, l - f);
    const r = reported.get(v);
    if (r !== undefined) line.lastChangeReportedMs[v] = Math.max(0, r - f);
  }
  return line;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(SIMULATE_HELP);
    return 0;
  }
  const opts = parseSimulateArgs(argv);
  const wp = workerPath();
  if (!existsSync(wp)) throw new SslwallError('SSLWALL_E_INTERNAL', `${wp} is missing; run npm run build:ts`);
  const t0 = Date.now();
  const log = (m: string) => process.stderr.write(`simulate +${((Date.now() - t0) / 1000).toFixed(1)}s: ${m}\n`);
  log(`${opts.agents} agents on tier ${opts.tier} in ${opts.processes} process(es), etcd ${opts.conn.endpoints.join(',')}`);

  const children: Child[] = [];
  let seq = 0;
  const waiting = new Map<number, { need: Set<Child>; done: () => void }>();
  let stopping = false;
  let failed: string | null = null;
  let resolveStop!: () => void;
  const stopRequested = new Promise<void>((r) => (resolveStop = r));

  for (const sl of slices(opts.agents, opts.processes)) {
    // The worker's stdout goes to our stderr: our stdout carries only the stats lines.
    // SSLWALL_SIM_WORKER_ARGS: extra node flags for the workers (e.g. --cpu-prof), for profiling.
    const execArgv = [...process.execArgv, ...(process.env.SSLWALL_SIM_WORKER_ARGS?.split(' ').filter(Boolean) ?? [])];
    const proc = fork(wp, [], { stdio: ['ignore', 2, 2, 'ipc'], serialization: 'json', execArgv });
    const c: Child = { proc, ...sl, stats: null, started: false, exited: false };
    children.push(c);
    proc.on('message', (raw: unknown) => {
      const m = raw as FromWorker;
      if (m.type === 'ready') {
        const init: ToWorker = { type: 'init', opts, first: sl.first, count: sl.count, startedAt: t0 };
        proc.send(init);
      } else if (m.type === 'stats') {
        c.stats = m.stats;
        for (const [, w] of waiting) {
          if (w.need.delete(c) && w.need.size === 0) w.done();
        }
      } else if (m.type === 'started') {
        c.started = true;
        log(`worker ${proc.pid}: agents ${sl.first}..${sl.first + sl.count - 1} started in ${(m.ms / 1000).toFixed(1)} s`);
        if (children.every((x) => x.started)) log(`all ${opts.agents} agents started (${((Date.now() - t0) / 1000).toFixed(1)} s after launch)`);
      } else if (m.type === 'stopped') {
        log(`worker ${proc.pid}: stopped, ${m.revoked} lease(s) revoked`);
      } else if (m.type === 'fatal') {
        failed = `worker ${proc.pid}: ${m.message}`;
        log(failed);
        resolveStop();
      }
    });
    proc.on('exit', (code, signal) => {
      c.exited = true;
      for (const [, w] of waiting) {
        if (w.need.delete(c) && w.need.size === 0) w.done();
      }
      if (!stopping) {
        failed = `worker ${proc.pid} exited (${code ?? signal}) before being asked to stop`;
        log(failed);
        resolveStop();
      }
    });
  }

  // One stats line per interval: ask every worker, print when all answered (or 80% of the interval passed).
  let printing = false;
  let lastLine: StatsLine | null = null;
  const tick = async () => {
    if (printing || stopping) return;
    printing = true;
    const id = ++seq;
    const live = children.filter((c) => !c.exited);
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, Math.max(50, opts.statsIntervalMs * 0.8));
      waiting.set(id, {
        need: new Set(live),
        done: () => {
          clearTimeout(t);
          resolve();
        },
      });
      const msg: ToWorker = { type: 'stats', seq: id };
      for (const c of live) c.proc.send(msg, (err) => err && undefined);
    });
    waiting.delete(id);
    printing = false;
    if (stopping) return;
    lastLine = mergeStats(
      Date.now() - t0,
      opts.agents,
      children.map((c) => c.stats),
      live.length,
    );
    process.stdout.write(`${JSON.stringify(lastLine)}\n`);
  };
  const timer = setInterval(() => void tick(), opts.statsIntervalMs);

  const onSignal = (sig: string) => {
    log(`${sig}: stopping every agent (leases revoked)`);
    resolveStop();
  };
  const onTerm = () => onSignal('SIGTERM');
  const onInt = () => onSignal('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);

  await stopRequested;
  stopping = true;
  clearInterval(timer);
  process.off('SIGTERM', onTerm);
  process.off('SIGINT', onInt);
  for (const c of children) {
    if (!c.exited && c.proc.connected) c.proc.send({ type: 'stop' } satisfies ToWorker, () => undefined);
  }
  const deadline = Date.now() + 20_000;
  while (children.some((c) => !c.exited) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  for (const c of children) {
    if (!c.exited) {
      log(`worker ${c.proc.pid} did not stop in 20 s; killing it`);
      c.proc.kill('SIGKILL');
    }
  }
  while (children.some((c) => !c.exited)) await new Promise((r) => setTimeout(r, 20));
  if (lastLine) log(`stopped; last: alive ${(lastLine as StatsLine).alive}, applied ${JSON.stringify((lastLine as StatsLine).applied)}`);
  return failed ? 1 : 0;
}

// Run directly (node dist/tools/simulate/main.js ...), as well as through `sslwall simulate`.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`sslwall simulate: ${(err as SslwallError).code ?? 'SSLWALL_E_INTERNAL'}: ${(err as Error).message}\n`);
      process.exitCode = exitCodeFor(err);
    },
  );
}
