// One simulated agent: the real agent's etcd behaviour without a kernel. It reads its tier
// document and its host override at one revision, watches both from the next one, runs every
// snapshot through the agent's own validation, signature check, cohort and effective-config code
// (agent/etcd-source.ts parseDocument, agent/effective.ts), "applies" it (records the version),
// and writes the same health document under a lease. The etcd client, the lease keepalive
// stream and the bound on calls in flight are shared by the agents of one process (conn.ts).
import type { Watcher, IKeyValue } from 'etcd3';
import { decide, healthDocument } from '../../agent/etcd-source.js';
import { cohortBucket } from '../../schemas/cohort.js';
import { backoffMs } from '../../schemas/etcd.js';
import type { KeyState, Snapshot } from '../../agent/etcd-watch.js';
import type { AppliedMeta } from '../../agent/state.js';
import { BpfError } from '../../native/index.js';
import { Verifier } from '../../schemas/signing.js';
import type { Config } from '../../schemas/config.js';
import type { Health } from '../../schemas/tier.js';
import type { etcdKeys } from '../../schemas/keys.js';
import { Limiter, LeaseKeeper, SharedConn, sleep, type LeaseOwner } from './conn.js';

export const SIM_AGENT_VERSION = '0.1.0-sim';
export const HEALTH_TTL_S = 10;

export interface AgentEnv {
  conn: SharedConn;
  limiter: Limiter;
  leases: LeaseKeeper;
  verifier: Verifier | null;
  keys: ReturnType<typeof etcdKeys>;
  tier: string;
  healthMinIntervalMs: number;
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

export class SimAgent implements LeaseOwner {
  status: Status = 'starting';
  applied: { config: Config; meta: AppliedMeta } | null = null;
  appliedAt: string | null = null;
  applyLatencyMs: number | null = null;
  lastError: Health['lastError'] = null;
  connected = false;
  /** Both watchers are created on etcd (the stats' "connected"). */
  watching = false;
  watchRevision: number | null = null;
  relists = 0;
  reconnects = 0;
  leaseRegrants = 0;
  healthWrites = 0;
  healthWriteErrors = 0;

  private leaseId: string | null = null;
  private readonly formerLeases = new Set<string>();
  private granting = false;
  private watchers: Watcher[] = [];
  private wake: (() => void) | null = null;
  private endWatch: ((reason: string) => void) | null = null;
  private dirty = false;
  private writing = false;
  private lastPutAt = 0;
  private putTimer: NodeJS.Timeout | undefined;
  private firstRead!: Promise<void>;
  private readOnce = false;
  private firstReadDone: () => void = () => undefined;
  private readonly tierKey: string;
  private readonly overrideKey: string;
  private readonly healthKey: string;
  private readonly counters = { violationsReported: 0, violationsBlocked: 0, flows: 0, evictions: 0 };
  /** Some hosts see plaintext now and then (simulated counters). */
  private readonly leaky: boolean;

  constructor(
    /** Position in this process (spreads the agents over watch streams). */
    private readonly index: number,
    readonly hostId: string,
    readonly failApply: boolean,
    private readonly env: AgentEnv,
  ) {
    this.tierKey = env.keys.tierConfig(env.tier);
    this.overrideKey = env.keys.hostOverride(hostId);
    this.healthKey = env.keys.health(env.tier, hostId);
    this.leaky = cohortBucket(hostId, 'sslwall-simulate/leaky') < 1000;
    this.firstRead = new Promise<void>((r) => (this.firstReadDone = r));
  }

  private get live(): boolean {
    return this.status === 'starting' || this.status === 'running';
  }

  /** Grant the lease, read both keys, start watching; resolves once the first read is done. */
  async start(): Promise<void> {
    void this.watchLoop();
    await Promise.all([this.ensureLease(), this.firstRead]);
    if (this.status === 'starting') this.status = 'running';
  }

  /** Like a SIGKILLed agent: watches gone, keepalive stops, the lease is NOT revoked. */
  async die(): Promise<void> {
    if (!this.live) return;
    this.status = 'dead';
    this.halt();
    await this.cancelWatchers();
  }

  /** A clean stop: watches cancelled, lease revoked (the health key goes at once). */
  async stop(): Promise<boolean> {
    const wasLive = this.live;
    this.status = 'stopped';
    this.halt();
    await this.cancelWatchers();
    const id = this.leaseId;
    this.leaseId = null;
    for (const old of this.formerLeases) await this.env.conn.client.leaseClient.leaseRevoke({ ID: old }).catch(() => undefined);
    this.formerLeases.clear();
    if (!wasLive || !id) return false;
    // A revoke can fail under load (deadline, a busy member): try again before giving up, or the
    // key would outlive a clean stop by the whole TTL.
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.env.limiter.run(() => this.env.conn.client.leaseClient.leaseRevoke({ ID: id }));
        return true;
      } catch (err) {
        if (/lease not found/i.test((err as Error).message)) return true;
        await sleep(100 * (attempt + 1));
      }
    }
    return false;
  }

  private halt(): void {
    this.watching = false;
    clearTimeout(this.putTimer);
    this.putTimer = undefined;
    if (this.leaseId) this.env.leases.remove(this.leaseId);
    this.wake?.();
    this.endWatch?.('stopped');
    this.firstReadDone();
  }

  // ---- lease -------------------------------------------------------------------------------

  private async ensureLease(): Promise<void> {
    if (this.granting || this.leaseId) return;
    this.granting = true;
    try {
      for (let attempt = 0; this.live && !this.leaseId; attempt++) {
        try {
          const res = await this.env.limiter.run(() => this.env.conn.client.leaseClient.leaseGrant({ TTL: HEALTH_TTL_S }));
          if (!this.live) {
            // Stopped meanwhile: do not leave a lease behind.
            await this.env.conn.client.leaseClient.leaseRevoke({ ID: res.ID }).catch(() => undefined);
            return;
          }
          this.leaseId = String(res.ID);
          this.env.leases.add(this.leaseId, this);
          this.markDirty();
        } catch {
          await sleep(backoffMs(attempt, 200, 3000));
        }
      }
    } finally {
      this.granting = false;
    }
  }

  leaseLost(id: string): void {
    if (this.leaseId !== id || !this.live) return;
    this.env.leases.remove(id);
    this.leaseId = null;
    // "Lost" as seen from here (a keepalive answer after a partition) may still hold our key in
    // etcd until it expires: remember it so a clean stop revokes it too.
    this.formerLeases.add(id);
    this.leaseRegrants++;
    void this.ensureLease();
  }

  // ---- health ------------------------------------------------------------------------------

  private markDirty(): void {
    this.dirty = true;
    this.schedule();
  }

  private schedule(): void {
    // Not before the first read: one write at start-up, with the version applied.
    if (this.putTimer || this.writing || !this.dirty || !this.live || !this.leaseId || !this.readOnce) return;
    const wait = Math.max(0, this.lastPutAt + this.env.healthMinIntervalMs - Date.now());
    this.putTimer = setTimeout(() => {
      this.putTimer = undefined;
      void this.writeHealth();
    }, wait);
  }

  private async writeHealth(): Promise<void> {
    const lease = this.leaseId;
    if (!this.dirty || !this.live || !lease) return;
    this.writing = true;
    this.dirty = false;
    try {
      const version = await this.env.limiter.run(async () => {
        if (!this.live) return null;
        const doc = this.healthDoc();
        await this.env.conn.client.kv.put({ key: Buffer.from(this.healthKey), value: Buffer.from(JSON.stringify(doc)), lease });
        return doc.configVersion;
      });
      this.healthWrites++;
      if (version !== null) this.env.reported(version);
    } catch (err) {
      this.healthWriteErrors++;
      this.dirty = true;
      if (/lease not found/i.test((err as Error).message)) this.leaseLost(lease);
    } finally {
      this.writing = false;
      this.lastPutAt = Date.now();
      this.schedule();
    }
  }

  /** The health document, field for field as agent/etcd-source.ts writes it. */
  healthDoc(): Health {
    const mode = this.applied?.config.mode ?? 'off';
    this.counters.flows = Math.floor(Math.random() * 400);
    if (this.leaky && mode !== 'off' && Math.random() < 0.3) {
      const n = 1 + Math.floor(Math.random() * 3);
      this.counters.violationsReported += n;
      if (mode === 'active') this.counters.violationsBlocked += n;
    }
    return healthDocument({
      hostId: this.hostId,
      tier: this.env.tier,
      agentVersion: SIM_AGENT_VERSION,
      applied: this.applied,
      applyLatencyMs: this.applyLatencyMs,
      appliedAt: this.appliedAt,
      counters: { ...this.counters },
      connected: this.connected,
      watchRevision: this.watchRevision,
      lastError: this.lastError,
      features: { simulated: true, tcAttach: 'none' },
    });
  }

  // ---- config ------------------------------------------------------------------------------

  /** agent/etcd-source.ts onSnapshot, with the kernel apply simulated. */
  private onSnapshot(s: Snapshot): void {
    this.watchRevision = s.revision;
    this.setConnected(true);
    const d = decide(s, { tier: this.tierKey, override: this.overrideKey }, this.env.verifier, this.hostId);
    if (d.kind === 'none') return; // no document for this tier: the config in force stays
    if (d.kind === 'refused') {
      this.refuse(d.err, s.revision);
      this.markDirty();
      return;
    }
    this.env.seen(d.tierVersion);
    this.lastError = null;
    if (JSON.stringify(d.config) === JSON.stringify(this.applied?.config)) {
      // Nothing changes in the kernel; the version in force (and health) still moves on.
      this.applied = { config: d.config, meta: d.meta };
      this.env.appliedVersion(d.tierVersion);
    } else {
      try {
        this.kernelApply(d.config, d.meta);
        this.env.appliedVersion(d.tierVersion);
      } catch (err) {
        this.refuse(err, s.revision);
      }
    }
    this.markDirty();
  }

  private kernelApply(config: Config, meta: AppliedMeta): void {
    const started = process.hrtime.bigint();
    if (this.failApply && (meta.tierVersion ?? 0) >= this.env.errorFromVersion) {
      throw new BpfError(`simulated failure: updating sslwall_config for ${this.tierKey} version ${meta.tierVersion}: No space left on device`, 'map_update', 28);
    }
    this.applied = { config, meta };
    this.appliedAt = new Date().toISOString();
    this.applyLatencyMs = Number(process.hrtime.bigint() - started) / 1e6;
  }

  private refuse(err: unknown, revision: number | null): void {
    const code = (err as { code?: string }).code ?? 'SSLWALL_E_INTERNAL';
    this.lastError = { code, message: (err as Error).message, revision, at: new Date().toISOString() };
  }

  private setConnected(c: boolean): void {
    if (c === this.connected) return;
    this.connected = c;
    // Back on etcd after a break: tell the engine (the write is throttled like any other).
    if (c && this.applied) this.markDirty();
  }

  // ---- watch -------------------------------------------------------------------------------

  /** Both keys at one revision, in one call (a read-only txn: what the agent does in two ranges). */
  private async read(): Promise<Snapshot> {
    const r = await this.env.conn.client.kv.txn({
      compare: [],
      success: [{ request_range: { key: Buffer.from(this.tierKey) } }, { request_range: { key: Buffer.from(this.overrideKey) } }],
      failure: [],
    });
    const ks = (kvs: IKeyValue[] | undefined): KeyState | null => (kvs?.[0] ? { value: kvs[0].value, modRevision: Number(kvs[0].mod_revision) } : null);
    return { tier: ks(r.responses[0]?.response_range.kvs), override: ks(r.responses[1]?.response_range.kvs), revision: Number(r.header.revision) };
  }

  /** agent/etcd-watch.ts loop: resume from the last revision after a break, read again only after a cancel. */
  private async watchLoop(): Promise<void> {
    let attempt = 0;
    let last: Snapshot | null = null;
    let reads = 0;
    while (this.live) {
      try {
        let snap: Snapshot;
        if (last) {
          snap = last;
        } else {
          snap = await this.env.limiter.run(() => this.read());
          if (!this.live) return;
          if (reads++ > 0) this.relists++;
          this.readOnce = true;
          this.onSnapshot({ ...snap });
          this.firstReadDone();
        }
        const gen = this.env.conn.gen;
        const end = await this.watchFrom(snap);
        this.watching = false;
        if (!this.live) return;
        // Back off afresh only after a watch that got going: while etcd is away, a resume that
        // never connects keeps growing the delay (instead of retrying every ~100 ms).
        if (end.watched) attempt = 0;
        last = end.reason === 'disconnected' ? end.snapshot : null;
        this.connected = false;
        if (last) {
          this.reconnects++;
          this.env.conn.renew(gen);
        }
      } catch {
        if (!this.live) return;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoffMs(attempt++));
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  private watchFrom(snap: Snapshot): Promise<{ reason: string; snapshot: Snapshot; watched: boolean }> {
    const start = String(snap.revision + 1);
    const current = { ...snap };
    const client = this.env.conn.watchOn(this.index);
    // watcher(), not create(): listeners must be on before the stream answers, since a
    // compaction cancel can follow the "created" answer at once.
    const tw = client.watch().key(this.tierKey).startRevision(start).watcher();
    const ow = client.watch().key(this.overrideKey).startRevision(start).watcher();
    this.watchers = [tw, ow];
    return new Promise((resolve) => {
      let done = false;
      let connected = 0;
      const finish = (reason: string) => {
        if (done) return;
        done = true;
        this.endWatch = null;
        void this.cancelWatchers().then(() => resolve({ reason, snapshot: { ...current }, watched: connected === 2 }));
      };
      this.endWatch = finish;
      const bind = (w: Watcher, which: 'tier' | 'override') => {
        w.on('connected', () => {
          if (!done && ++connected === 2) {
            this.watching = true;
            this.setConnected(true);
          }
        });
        w.on('put', (kv) => {
          if (done) return;
          current[which] = { value: kv.value, modRevision: Number(kv.mod_revision) };
          current.revision = Math.max(current.revision, Number(kv.mod_revision));
          this.onSnapshot({ ...current });
        });
        w.on('delete', (kv) => {
          if (done) return;
          current[which] = null;
          current.revision = Math.max(current.revision, Number(kv.mod_revision));
          this.onSnapshot({ ...current });
        });
        w.on('disconnected', () => finish('disconnected'));
        // Compaction (or any cancel) ends the watcher for good: read and watch again.
        w.on('error', (err) => finish(`cancelled: ${String((err as Error)?.message ?? err)}`));
      };
      bind(tw, 'tier');
      bind(ow, 'override');
      if (!this.live) finish('stopped');
    });
  }

  private async cancelWatchers(): Promise<void> {
    const ws = this.watchers;
    this.watchers = [];
    if (ws.length === 0) return;
    // A cancel waits for the server's answer (and, for a watcher still queued for creation, for
    // its creation); do not hold the agent up for it.
    await Promise.race([Promise.all(ws.map((w) => w.cancel().catch(() => undefined))), sleep(500)]);
  }
}
