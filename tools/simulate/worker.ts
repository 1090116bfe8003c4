// A simulator worker process (forked by main.ts): runs a slice of the simulated agents over one
// shared etcd3 client and answers the parent's stats requests over IPC. Stops (revoking every
// lease) on the parent's "stop", on SIGTERM/SIGINT, or when the parent goes away.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { etcdKeys } from '../../schemas/keys.js';
import { Verifier } from '../../schemas/signing.js';
import { type AgentEnv, HEALTH_SPREAD_MS, HEALTH_TTL_S, SimAgent } from './agent.js';
import { LeaseKeeper, Limiter, SharedConn, sleep } from './conn.js';
import { type FromWorker, hostId, type SimOptions, simPicked, type ToWorker, type VersionStats, type WorkerStats } from './shared.js';

/** Agents per watch stream and per lease keepalive stream (conn.ts says why not all on one). */
const AGENTS_PER_WATCH_STREAM = 50;
const AGENTS_PER_KEEPALIVE_STREAM = 10;

function send(msg: FromWorker): void {
  if (process.connected) process.send!(msg);
}

class Worker {
  private readonly conn: SharedConn;
  private readonly limiter: Limiter;
  private readonly leases: LeaseKeeper;
  private readonly agents: SimAgent[] = [];
  private readonly versions = new Map<number, VersionStats>();
  private started = 0;
  private stopping: Promise<void> | null = null;
  private dieTimer: NodeJS.Timeout | undefined;
  private bareCount = 0;
  private bareConnected = 0;
  private readonly bareSeen = new Map<string, number>();

  constructor(
    private readonly opts: SimOptions,
    first: number,
    count: number,
    private readonly startedAt: number,
  ) {
    this.conn = new SharedConn(opts.conn, Math.ceil(count / AGENTS_PER_WATCH_STREAM));
    this.limiter = new Limiter(opts.concurrency);
    this.leases = new LeaseKeeper(this.conn, HEALTH_TTL_S, Math.ceil(count / AGENTS_PER_KEEPALIVE_STREAM));
    const env: AgentEnv = {
      conn: this.conn,
      limiter: this.limiter,
      leases: this.leases,
      verifier: opts.verifyKeys.length ? Verifier.fromSources(opts.verifyKeys) : null,
      keys: etcdKeys(opts.prefix),
      tier: opts.tier,
      healthMinIntervalMs: opts.healthMinIntervalMs,
      healthSpreadMs: opts.healthSpreadMs ?? HEALTH_SPREAD_MS,
      errorFromVersion: opts.errorFromVersion,
      seen: (v) => {
        if (!this.versions.has(v)) this.versions.set(v, { firstSeen: Date.now(), lastApplied: null, lastReported: null });
      },
      appliedVersion: (v) => {
        const s = this.versions.get(v);
        if (s) s.lastApplied = Date.now();
      },
      reported: (v) => {
        const s = this.versions.get(v);
        if (s) s.lastReported = Date.now();
      },
    };
    if (opts.bareWatch) {
      this.bareCount = count;
      return;
    }
    for (let i = first; i < first + count; i++) {
      const id = hostId(opts.hostPrefix, i);
      this.agents.push(new SimAgent(i - first, id, simPicked('error', id, opts.errorPercent), env));
    }
  }

  /**
   * --bare-watch: watchers of the tier key on the same watch streams the agents would use, each
   * noting only when a put arrives (by mod revision): what etcd's fan-out costs without any agent
   * work (no JSON, no signature, no health write).
   */
  private async startBare(): Promise<void> {
    const key = etcdKeys(this.opts.prefix).tierConfig(this.opts.tier);
    const seen = this.bareSeen;
    await Promise.all(
      Array.from({ length: this.bareCount }, (_, i) => {
        const w = this.conn.watchOn(i).watch().key(key).watcher();
        w.on('put', (kv) => {
          const rev = String(kv.mod_revision);
          const now = Date.now();
          const vs = this.versions.get(Number(rev));
          if (vs) vs.lastApplied = now;
          else this.versions.set(Number(rev), { firstSeen: now, lastApplied: now, lastReported: null });
          seen.set(rev, (seen.get(rev) ?? 0) + 1);
        });
        return new Promise<void>((r) => w.once('connected', () => r())).then(() => {
          this.bareConnected++;
          this.started++;
        });
      }),
    );
  }

  debug(): void {
    const h = monitorEventLoopDelay({ resolution: 20 });
    h.enable();
    setInterval(() => {
      const st = this.stats();
      process.stderr.write(
        `[worker ${process.pid}] started ${st.started}/${st.agents} connected ${st.connected} pending ${this.limiter.pending} ` +
          `ka sent ${this.leases.sent} recv ${this.leases.received} lost ${this.leases.lost} restarts ${this.leases.streamRestarts} ` +
          `writes ${st.healthWrites} werr ${st.healthWriteErrors} loopDelay p99 ${(h.percentile(99) / 1e6).toFixed(0)}ms max ${(h.max / 1e6).toFixed(0)}ms\n`,
      );
      h.reset();
    }, 2000).unref();
  }

  async start(): Promise<void> {
    if (process.env.SSLWALL_SIM_DEBUG) this.debug();
    const t0 = Date.now();
    if (this.opts.bareWatch) {
      await this.startBare();
      send({ type: 'started', count: this.bareCount, ms: Date.now() - t0 });
      return;
    }
    const dying = this.agents.filter((a) => simPicked('die', a.hostId, this.opts.diePercent));
    if (dying.length) {
      const at = this.startedAt + this.opts.dieAfterS * 1000;
      this.dieTimer = setTimeout(() => void Promise.all(dying.map((a) => a.die())), Math.max(0, at - Date.now()));
    }
    // Start in waves: bounded concurrency, a little jitter so the processes do not move in step.
    const startLimiter = new Limiter(this.opts.concurrency);
    await Promise.all(
      this.agents.map((a) =>
        startLimiter.run(async () => {
          if (this.stopping) return;
          await sleep(Math.random() * 20);
          await a.start();
          this.started++;
        }),
      ),
    );
    if (!this.stopping) send({ type: 'started', count: this.agents.length, ms: Date.now() - t0 });
  }

  stats(): WorkerStats {
    const s: WorkerStats = {
      agents: this.agents.length,
      started: this.started,
      alive: 0,
      connected: 0,
      applied: {},
      errors: 0,
      errorCodes: {},
      relists: 0,
      reconnects: 0,
      leaseRegrants: 0,
      healthWrites: 0,
      healthWriteErrors: 0,
      cpuMs: (({ user, system }) => (user + system) / 1000)(process.cpuUsage()),
      versions: Object.fromEntries(this.versions),
    };
    if (this.opts.bareWatch) {
      s.agents = s.alive = this.bareCount;
      s.connected = this.bareConnected;
      s.applied = Object.fromEntries(this.bareSeen);
      return s;
    }
    for (const a of this.agents) {
      s.relists += a.relists;
      s.reconnects += a.reconnects;
      s.leaseRegrants += a.health.regrants;
      s.healthWrites += a.health.writes;
      s.healthWriteErrors += a.health.writeErrors;
      if (a.status !== 'starting' && a.status !== 'running') continue;
      s.alive++;
      if (a.watching) s.connected++;
      const v = String(a.state.applied?.meta.tierVersion ?? 'none');
      s.applied[v] = (s.applied[v] ?? 0) + 1;
      const err = a.state.lastError;
      if (err) {
        s.errors++;
        s.errorCodes[err.code] = (s.errorCodes[err.code] ?? 0) + 1;
      }
    }
    return s;
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearTimeout(this.dieTimer);
      const results = await Promise.all(this.agents.map((a) => a.stop()));
      this.leases.stop();
      this.conn.close();
      send({ type: 'stopped', revoked: results.filter(Boolean).length });
    })();
    return this.stopping;
  }
}

let worker: Worker | null = null;

async function shutdown(code: number): Promise<never> {
  // Never hang on the way out: a dead etcd would make revokes wait for their deadline.
  setTimeout(() => process.exit(code), 15_000).unref();
  await worker?.stop().catch(() => undefined);
  process.disconnect?.();
  process.exit(code);
}

process.on('message', (raw: unknown) => {
  const msg = raw as ToWorker;
  if (msg.type === 'init' && !worker) {
    try {
      worker = new Worker(msg.opts, msg.first, msg.count, msg.startedAt);
    } catch (err) {
      send({ type: 'fatal', message: (err as Error).message });
      process.exit(1);
    }
    worker.start().catch((err: Error) => send({ type: 'fatal', message: err.message }));
  } else if (msg.type === 'stats' && worker) {
    send({ type: 'stats', seq: msg.seq, stats: worker.stats() });
  } else if (msg.type === 'stop') {
    void shutdown(0);
  }
});
// The parent is gone (killed): clean up as on a stop.
process.on('disconnect', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
process.on('SIGINT', () => void shutdown(0));
send({ type: 'ready' });
