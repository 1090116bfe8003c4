// The agent's health key, under a lease (TTL 10 s, kept alive by the transport): it disappears
// within the TTL when the agent dies, which is how the engine notices a dead agent, and at once
// when the agent stops cleanly (the lease is revoked). A lost lease (etcd away longer than the
// TTL) is granted again and the key re-written. The etcd calls go through an EtcdTransport
// (agent/etcd-client.ts), so the simulator runs this same reporter.
import type { Logger } from 'pino';
import { backoffMs, isPermissionDenied } from '../schemas/etcd.js';
import type { Health } from '../schemas/tier.js';
import { type EtcdTransport, type Guard, isLeaseGone } from './etcd-client.js';

export const HEALTH_TTL_S = 10;

export interface HealthOptions {
  ttlS: number;
  /** How often to look whether something besides the timestamp changed. */
  intervalMs: number;
  /** Write at least this often even when nothing changed. */
  refreshMs: number;
  /** At least this long between two writes (a burst of changes becomes one write). */
  minIntervalMs: number;
  /**
   * Every write but the first waits a random time up to this long (full jitter): a change reaches
   * every agent of a tier within a fraction of a second, and their reports would otherwise reach
   * etcd together, during its fan-out of the change to the agents still waiting for it.
   */
  spreadMs: number;
}

/** `--health-spread` by default: 10,000 agents' reports of a change spread over a second. */
export const HEALTH_SPREAD_MS = 1000;

export const DEFAULT_HEALTH: HealthOptions = { ttlS: HEALTH_TTL_S, intervalMs: 5000, refreshMs: 60000, minIntervalMs: 0, spreadMs: HEALTH_SPREAD_MS };

/** How long a clean stop keeps trying to revoke: past etcd3's per-host breaker (1 s half-open). */
const REVOKE_BUDGET_MS = 5000;

export class HealthReporter {
  writes = 0;
  writeErrors = 0;
  /** Leases granted again after one was lost. */
  regrants = 0;
  private leaseId: string | null = null;
  /** Leases seen lost from here: etcd may still hold one (a keepalive answer after a partition); a clean stop revokes them too. */
  private readonly former = new Set<string>();
  private granting: Promise<void> | null = null;
  private writing: Promise<void> | null = null;
  private stopped = false;
  /** Nothing is written before the first nudge: the first write carries what etcd said. */
  private ready = false;
  private dirty = false;
  private failures = 0;
  private lastContent = '';
  private lastAt = 0;
  private get: () => Health = () => {
    throw new Error('HealthReporter not started');
  };
  private ticker: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | null = null;
  private leased!: () => void;
  private readonly grantedHooks: Array<() => void> = [];
  /** Resolves once a lease is granted (or the reporter stops). */
  readonly whenLeased = new Promise<void>((r) => (this.leased = r));

  constructor(
    private readonly transport: EtcdTransport,
    private readonly guard: Guard,
    private readonly key: string,
    private readonly log: Logger,
    private readonly opts: HealthOptions = DEFAULT_HEALTH,
    /** A write landed (the simulator times when a version is reported). */
    private readonly onWritten: (doc: Health) => void = () => undefined,
  ) {}

  /**
   * Grant the lease now; write on nudge, and every intervalMs when something besides the
   * timestamp changed (the lease keepalive is what says the agent lives: 10,000 agents rewriting
   * a timestamp every 5 s would be 2,000 writes a second), and at least every refreshMs.
   */
  start(get: () => Health): void {
    this.get = get;
    void this.grant();
    this.ticker = setInterval(() => {
      const content = JSON.stringify({ ...this.get(), updatedAt: '' });
      if (content !== this.lastContent || Date.now() - this.lastAt >= this.opts.refreshMs) this.nudge();
    }, this.opts.intervalMs);
  }

  /** The lease in force (the summary key rides it too), or null between a loss and a grant. */
  get lease(): string | null {
    return this.stopped ? null : this.leaseId;
  }

  /** fn runs after every grant, a new one after a loss included (keys under the old lease are gone). */
  onGranted(fn: () => void): void {
    this.grantedHooks.push(fn);
  }

  /** Something worth telling the engine now (config applied, error, back on etcd): write soon. */
  nudge(): void {
    this.ready = true;
    this.dirty = true;
    this.schedule();
  }

  private grant(): Promise<void> {
    this.granting ??= (async () => {
      for (let attempt = 0; !this.stopped && !this.leaseId; attempt++) {
        try {
          const id = await this.guard(() => this.transport.grantLease(this.opts.ttlS, () => this.lost(id)));
          // Kept even when stopped meanwhile: stop() waits for this grant and revokes it.
          this.leaseId = id;
          this.leased();
          this.schedule();
          for (const fn of this.grantedHooks) fn();
        } catch (err) {
          if (this.stopped) break;
          this.log.debug({ event: 'health_lease_grant_failed', err: (err as Error).message, attempt }, 'health lease not granted; retrying');
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, backoffMs(attempt, 200, 3000));
            this.wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
          this.wake = null;
        }
      }
    })().finally(() => (this.granting = null));
    return this.granting;
  }

  private lost(id: string): void {
    if (this.leaseId !== id || this.stopped) return;
    this.log.warn({ event: 'health_lease_lost' }, 'health lease lost; granting a new one');
    this.leaseId = null;
    this.former.add(id);
    this.regrants++;
    this.dirty = true;
    void this.grant();
  }

  private schedule(): void {
    if (this.stopped || this.timer || this.writing || !this.dirty || !this.ready || !this.leaseId) return;
    const retry = this.failures ? backoffMs(this.failures, 200, 5000) : 0;
    // The first write goes at once: it tells the engine this agent is up (a fleet's starts are
    // spread by the restarts themselves).
    const spread = this.lastAt ? Math.random() * this.opts.spreadMs : 0;
    const wait = Math.max(retry, this.lastAt + this.opts.minIntervalMs - Date.now(), spread, 0);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.writing = this.write().finally(() => {
        this.writing = null;
        this.schedule();
      });
    }, wait);
  }

  private async write(): Promise<void> {
    const lease = this.leaseId;
    if (this.stopped || !lease) return;
    this.dirty = false;
    const doc = this.get();
    try {
      await this.guard(() => (this.stopped ? Promise.resolve() : this.transport.put(this.key, JSON.stringify(doc), lease)));
      if (this.stopped) return;
      this.writes++;
      this.failures = 0;
      this.lastContent = JSON.stringify({ ...doc, updatedAt: '' });
      this.onWritten(doc);
    } catch (err) {
      this.writeErrors++;
      this.failures++;
      this.dirty = true;
      if (isPermissionDenied(err))
        this.log.error({ event: 'health_put_denied', code: 'SSLWALL_E_ETCD_DENIED', err: (err as Error).message }, 'etcd refused the health write');
      else this.log.debug({ event: 'health_put_failed', err: (err as Error).message }, 'health not written');
      if (isLeaseGone(err)) this.lost(lease);
    } finally {
      this.lastAt = Date.now();
    }
  }

  /**
   * revoke: a clean stop, the key goes at once; true when the current lease was revoked. Waits
   * for a grant or a write in flight first, so neither lands after the revoke and leaves a key
   * (or a lease) behind. Otherwise (a killed agent, simulated) the lease is left to expire.
   */
  async stop(revoke: boolean): Promise<boolean> {
    this.stopped = true;
    clearInterval(this.ticker);
    clearTimeout(this.timer);
    this.timer = undefined;
    this.wake?.();
    this.leased();
    await Promise.all([this.granting, this.writing]);
    const current = this.leaseId;
    const ids = [...(current ? [current] : []), ...this.former];
    this.former.clear();
    if (!revoke) {
      for (const id of ids) this.transport.releaseLease(id);
      return false;
    }
    const done = await Promise.all(ids.map((id) => this.revoke(id)));
    return current !== null && done[0] === true;
  }

  /** Not through the breaker: a clean stop tries even when etcd looked sick. */
  private async revoke(id: string): Promise<boolean> {
    const until = Date.now() + REVOKE_BUDGET_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.transport.revokeLease(id);
        return true;
      } catch (err) {
        if (isLeaseGone(err)) return true;
        if (Date.now() > until) {
          this.log.warn({ event: 'health_lease_not_revoked', err: (err as Error).message }, 'health lease not revoked; the key expires by its TTL');
          return false;
        }
        await new Promise((r) => setTimeout(r, backoffMs(attempt, 200, 1000)));
      }
    }
  }
}
