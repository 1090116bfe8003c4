// One simulated agent: the real agent's etcd code without a kernel. It runs the agent's own
// EtcdFollower (agent/etcd-source.ts: the watch loop of agent/etcd-watch.ts, validation,
// signature check, cohort and effective config, the health reporter of agent/health.ts with its
// lease) over a SimTransport (conn.ts: the etcd3 client, watch streams, lease keepalive streams
// and the bound on calls in flight that the agents of one process share). What differs from a
// real agent is the kernel step (apply records the version, and fails on purpose for the agents
// picked to fail) and where the health counters come from.
import pino from 'pino';
import { EtcdFollower, type Handlers } from '../../agent/etcd-source.js';
import { HEALTH_SPREAD_MS, HEALTH_TTL_S } from '../../agent/health.js';
import type { AppliedMeta } from '../../agent/state.js';
import type { AgentStatus } from '../../agent/status.js';
import { BpfError } from '../../native/index.js';
import { cohortBucket } from '../../schemas/cohort.js';
import type { Config } from '../../schemas/config.js';
import type { etcdKeys } from '../../schemas/keys.js';
import type { Verifier } from '../../schemas/signing.js';
import type { Health } from '../../schemas/tier.js';
import { type LeaseKeeper, type Limiter, type SharedConn, SimTransport } from './conn.js';

export const SIM_AGENT_VERSION = '0.1.0-sim';
export { HEALTH_SPREAD_MS, HEALTH_TTL_S };

export interface AgentEnv {
  conn: SharedConn;
  limiter: Limiter;
  leases: LeaseKeeper;
  verifier: Verifier | null;
  keys: ReturnType<typeof etcdKeys>;
  tier: string;
  healthMinIntervalMs: number;
  healthSpreadMs: number;
  /** Failing agents fail for tier versions >= this. */
  errorFromVersion: number;
  /** A valid tier document with this version was parsed (for propagation times). */
  seen(version: number): void;
  /** This version is now in force on one more agent. */
  appliedVersion(version: number): void;
  /** A health write reporting this version landed. */
  reported(version: number): void;
}

type Status = 'starting' | 'running' | 'dead' | 'stopped';

/** Simulated agents log nothing: thousands of them would drown stderr. */
const quiet = pino({ level: 'silent' });

export class SimAgent {
  status: Status = 'starting';
  readonly state: AgentStatus = { applied: null, appliedAt: null, applyLatencyMs: null, lastError: null };
  private readonly follower: EtcdFollower;
  private readonly counters = { violationsReported: 0, violationsBlocked: 0, remoteViolationsReported: 0, remoteViolationsBlocked: 0, flows: 0, evictions: 0 };
  private countersAt = 0;
  /** Some hosts see plaintext now and then (simulated counters). */
  private readonly leaky: boolean;

  constructor(
    index: number,
    readonly hostId: string,
    readonly failApply: boolean,
    private readonly env: AgentEnv,
  ) {
    this.leaky = cohortBucket(hostId, 'sslwall-simulate/leaky') < 1000;
    this.counters.flows = cohortBucket(hostId, 'sslwall-simulate/flows') % 400;
    const kernel: Handlers = {
      apply: (config, meta) => this.kernelApply(config, meta),
      keep: (config, meta) => {
        // Nothing changes in the kernel; the version in force (and health) still moves on.
        this.state.applied = { config, meta };
        if (meta.tierVersion !== null) env.appliedVersion(meta.tierVersion);
      },
      refuse: (err, _reason, revision) => {
        const code = (err as { code?: string }).code ?? 'SSLWALL_E_INTERNAL';
        this.state.lastError = { code, message: (err as Error).message, revision, at: new Date().toISOString() };
      },
    };
    this.follower = new EtcdFollower(
      new SimTransport(env.conn, env.limiter, env.leases, index),
      {
        keys: env.keys,
        tier: env.tier,
        hostId,
        verifier: env.verifier,
        agentVersion: SIM_AGENT_VERSION,
        health: { ttlS: HEALTH_TTL_S, intervalMs: 5000, refreshMs: 60000, minIntervalMs: env.healthMinIntervalMs, spreadMs: env.healthSpreadMs },
      },
      this.state,
      kernel,
      { counters: () => this.simCounters(), features: () => ({ simulated: true, tcAttach: 'none' }) },
      quiet,
      (v) => env.seen(v),
      (doc) => doc.configVersion !== null && env.reported(doc.configVersion),
    );
  }

  private get live(): boolean {
    return this.status === 'starting' || this.status === 'running';
  }

  /** Both watchers are created on etcd (the stats' "connected"). */
  get watching(): boolean {
    return this.live && this.follower.watch.state === 'watching';
  }

  get relists(): number {
    return Math.max(0, this.follower.watch.reads - 1);
  }

  get reconnects(): number {
    return this.follower.watch.reconnects;
  }

  get health() {
    return this.follower.health;
  }

  /** Grant the lease, read both keys, start watching; resolves once the first read is done and the lease granted. */
  async start(): Promise<void> {
    const firstRead = new Promise<void>((r) => {
      this.follower.watch.once('snapshot', () => r());
      this.follower.watch.once('state', (s) => s === 'stopped' && r());
    });
    this.follower.start();
    await Promise.all([firstRead, this.follower.health.whenLeased]);
    if (this.status === 'starting') this.status = 'running';
  }

  /** Like a SIGKILLed agent: watches gone, keepalive stops, the lease is NOT revoked. */
  async die(): Promise<void> {
    if (!this.live) return;
    this.status = 'dead';
    await this.follower.stop(false);
  }

  /** A clean stop: watches cancelled, lease revoked (the health key goes at once). True when revoked. */
  async stop(): Promise<boolean> {
    const wasLive = this.live;
    this.status = 'stopped';
    const revoked = await this.follower.stop(true);
    return wasLive && revoked;
  }

  private kernelApply(config: Config, meta: AppliedMeta): void {
    const started = process.hrtime.bigint();
    if (this.failApply && (meta.tierVersion ?? 0) >= this.env.errorFromVersion) {
      throw new BpfError(
        `simulated failure: updating sslwall_config for ${this.env.keys.tierConfig(this.env.tier)} version ${meta.tierVersion}: No space left on device`,
        'map_update',
        28,
      );
    }
    this.state.applied = { config, meta };
    this.state.appliedAt = new Date().toISOString();
    this.state.applyLatencyMs = Number(process.hrtime.bigint() - started) / 1e6;
    if (meta.tierVersion !== null) this.env.appliedVersion(meta.tierVersion);
  }

  /** Simulated counters, moving at most every 30 s like the real agent's flow count. */
  private simCounters(): Health['counters'] {
    const mode = this.state.applied?.config.mode ?? 'off';
    if (this.leaky && mode !== 'off' && Date.now() - this.countersAt > 30000) {
      this.countersAt = Date.now();
      const n = 1 + Math.floor(Math.random() * 3);
      this.counters.violationsReported += n;
      if (mode === 'active') this.counters.violationsBlocked += n;
    }
    return { ...this.counters };
  }
}
