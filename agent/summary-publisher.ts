// Publishing the violation summary (agent/summary.ts) to summary/<tier>/<host>, under the health
// key's lease, so it goes when the agent goes. Never a write per violation: the first summary
// firstDelayMs after the first violation (a burst becomes one write), then at most every
// minIntervalMs and only when something was counted since. A new lease (the old one was lost,
// and the key with it) writes again soon. Goes through the agent's one breaker, like health.
import type { Logger } from 'pino';
import { backoffMs, isPermissionDenied } from '../schemas/etcd.js';
import { SUMMARY_MIN_INTERVAL_MS } from '../schemas/summary.js';
import type { EtcdTransport, Guard } from './etcd-client.js';
import type { HealthReporter } from './health.js';
import type { SummaryBuilder } from './summary.js';

export interface SummaryPublishOptions {
  minIntervalMs: number;
  firstDelayMs: number;
}

export const DEFAULT_SUMMARY_PUBLISH: SummaryPublishOptions = { minIntervalMs: SUMMARY_MIN_INTERVAL_MS, firstDelayMs: 1000 };

export class SummaryPublisher {
  writes = 0;
  writeErrors = 0;
  private publishedVersion = 0;
  private publishedLease: string | null = null;
  private lastWriteAt = -Infinity;
  private failures = 0;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private readonly transport: EtcdTransport,
    private readonly guard: Guard,
    private readonly key: string,
    private readonly builder: SummaryBuilder,
    private readonly health: HealthReporter,
    private readonly log: Logger,
    private readonly opts: SummaryPublishOptions = DEFAULT_SUMMARY_PUBLISH,
  ) {
    health.onGranted(() => this.schedule());
  }

  /** A violation was added to the builder. Cheap: at most one timer is pending. */
  notify(): void {
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped || this.timer || this.writing || this.builder.version === 0) return;
    const lease = this.health.lease;
    if (!lease) return; // onGranted calls again
    const sameLease = lease === this.publishedLease;
    if (sameLease && this.builder.version === this.publishedVersion) return;
    const now = Date.now();
    const earliest = sameLease ? this.lastWriteAt + this.opts.minIntervalMs : now + this.opts.firstDelayMs;
    const retry = this.failures ? now + backoffMs(this.failures, 1000, this.opts.minIntervalMs) : now;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.writing = this.write().finally(() => {
          this.writing = null;
          this.schedule();
        });
      },
      Math.max(earliest, retry, now) - now,
    );
  }

  private async write(): Promise<void> {
    const lease = this.health.lease;
    if (this.stopped || !lease) return;
    const version = this.builder.version;
    const doc = this.builder.build(Date.now());
    try {
      await this.guard(() => (this.stopped ? Promise.resolve() : this.transport.put(this.key, JSON.stringify(doc), lease)));
      if (this.stopped) return;
      this.writes++;
      this.failures = 0;
      this.publishedVersion = version;
      this.publishedLease = lease;
      this.lastWriteAt = Date.now();
    } catch (err) {
      this.writeErrors++;
      this.failures++;
      if (isPermissionDenied(err))
        this.log.error({ event: 'summary_put_denied', code: 'SSLWALL_E_ETCD_DENIED', err: (err as Error).message }, 'etcd refused the summary write');
      else this.log.debug({ event: 'summary_put_failed', err: (err as Error).message }, 'summary not written');
    }
  }

  /** Before the health lease is revoked: no write lands after it. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.writing;
  }
}
