// The agent's health key, under a lease (TTL 10 s, kept alive by etcd3): it disappears within
// the TTL when the agent dies, which is how the engine notices a dead agent. A lost lease
// (etcd away longer than the TTL) is granted again and the key re-written.
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';
import type CircuitBreaker from 'opossum';
import { breaker } from './etcd-client.js';
import type { Health } from '../schemas/tier.js';

export const HEALTH_TTL_S = 10;

export class HealthReporter {
  readonly putBreaker: CircuitBreaker<[string], void>;
  private lease: Lease | null = null;
  private timer: NodeJS.Timeout | undefined;
  private lastContent = '';

  constructor(
    private readonly client: Etcd3,
    private readonly key: string,
    private readonly log: Logger,
    private readonly ttl = HEALTH_TTL_S,
  ) {
    this.putBreaker = breaker('etcd_health', (value: string) => this.put(value));
  }

  private leaseFor(): Lease {
    if (this.lease) return this.lease;
    const lease = this.client.lease(this.ttl);
    lease.on('lost', (err) => {
      this.log.warn({ event: 'health_lease_lost', err: err.message }, 'health lease lost; granting a new one');
      if (this.lease === lease) this.lease = null;
      this.lastContent = '';
    });
    this.lease = lease;
    return lease;
  }

  private async put(value: string): Promise<void> {
    await this.leaseFor().put(this.key).value(value).exec();
  }

  /**
   * Publish now and then every intervalMs when something besides the timestamp changed (the lease
   * keepalive is what says the agent lives: 10,000 agents rewriting a timestamp every 5 s would be
   * 2,000 writes a second), and at least every refreshMs.
   */
  start(get: () => Health, intervalMs = 5000, refreshMs = 60000): void {
    let lastAt = 0;
    const tick = () => {
      const doc = get();
      const value = JSON.stringify(doc);
      const content = JSON.stringify({ ...doc, updatedAt: '' });
      if (content === this.lastContent && Date.now() - lastAt < refreshMs) return;
      this.lastContent = content;
      lastAt = Date.now();
      this.putBreaker.fire(value).catch((err: Error) => {
        this.lastContent = ''; // not written: try again at the next tick
        this.log.debug({ event: 'health_put_failed', err: err.message }, 'health not written');
      });
    };
    tick();
    this.timer = setInterval(tick, intervalMs);
  }

  /** Publish at once (a change worth telling the engine now: config applied, error). */
  nudge(get: () => Health): void {
    const value = JSON.stringify(get());
    this.putBreaker.fire(value).catch(() => undefined);
  }

  async stop(revoke: boolean): Promise<void> {
    clearInterval(this.timer);
    if (revoke && this.lease) await this.lease.revoke().catch(() => undefined);
    this.putBreaker.shutdown();
  }
}
