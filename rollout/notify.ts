// Rollout notifications to a chat webhook (`sslwall engine --notify-url`): each transition the
// leader makes — a stage written, a stage applied or advanced, a pause, a failed check, a
// rollback — as a Slack-compatible JSON message ({"text": …}, which Slack, Mattermost and
// Rocket.Chat incoming webhooks take), with the same facts under "sslwall" for scripts. Only
// transitions at or above --notify-severity are sent. Delivery never holds up a rollout: messages
// wait in a bounded queue and go out one at a time, in order, each tried a few times with a
// timeout; what cannot be delivered is counted and logged, then dropped.
import type { Logger } from 'pino';
import client from 'prom-client';
import { backoffMs } from '../schemas/etcd.js';

export const SEVERITIES = ['info', 'warning', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

/** The severity of each transition action; those not listed (a passing check) are not sent. */
export const SEVERITY_OF: Record<string, Severity> = {
  stage_written: 'info',
  applied: 'info',
  advanced: 'info',
  completed: 'info',
  promote_ignored: 'info',
  abort_ignored: 'info',
  check_failed: 'warning',
  paused: 'warning',
  rolled_back: 'critical',
};

export interface NotifierOptions {
  url: string;
  /** Send transitions of this severity and above. */
  minSeverity: Severity;
  /** Attempts per message (default 3) and per-attempt timeout (default 5 s). */
  attempts?: number;
  timeoutMs?: number;
  /** Messages waiting at most; the oldest is dropped beyond it (default 100). */
  queueMax?: number;
  /** Shown in messages, e.g. the dashboard's URL. */
  link?: string;
}

export interface Notification {
  text: string;
  sslwall: { tier: string; action: string; severity: Severity; reason: string; time: string };
}

export class Notifier {
  /** On no registry: the engine's metrics register it. */
  readonly sent = new client.Counter({
    name: 'sslwall_engine_notifications_total',
    help: 'Rollout notifications to --notify-url: sent, failed (after every attempt) or dropped (queue full)',
    labelNames: ['result'] as const,
    registers: [],
  });
  private readonly queue: Notification[] = [];
  private sending: Promise<void> | null = null;

  constructor(
    private readonly opts: NotifierOptions,
    private readonly log: Logger,
  ) {}

  /** Queue a transition's message if its severity is high enough; returns at once. */
  notify(tier: string, action: string, reason: string): void {
    const severity = SEVERITY_OF[action];
    if (!severity || SEVERITIES.indexOf(severity) < SEVERITIES.indexOf(this.opts.minSeverity)) return;
    const mark = { info: 'ℹ️', warning: '⚠️', critical: '🚨' }[severity];
    const text = `${mark} sslwall tier *${tier}*: ${action.replaceAll('_', ' ')} — ${reason}${this.opts.link ? ` (${this.opts.link})` : ''}`;
    this.queue.push({ text, sslwall: { tier, action, severity, reason, time: new Date().toISOString() } });
    if (this.queue.length > (this.opts.queueMax ?? 100)) {
      this.queue.shift();
      this.sent.inc({ result: 'dropped' });
    }
    this.sending ??= this.drain().finally(() => {
      this.sending = null;
    });
  }

  /** Resolves once every queued message was sent or given up on (tests, a clean stop). */
  async flush(): Promise<void> {
    while (this.sending) await this.sending;
  }

  private async drain(): Promise<void> {
    for (let n = this.queue.shift(); n; n = this.queue.shift()) await this.deliver(n);
  }

  private async deliver(n: Notification): Promise<void> {
    const attempts = this.opts.attempts ?? 3;
    let last = '';
    for (let i = 0; i < attempts; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, backoffMs(i - 1)));
      try {
        const res = await fetch(this.opts.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(n),
          signal: AbortSignal.timeout(this.opts.timeoutMs ?? 5000),
        });
        // A 4xx other than 429 will not get better by trying again (a revoked webhook, a bad URL).
        if (res.ok) {
          this.sent.inc({ result: 'sent' });
          return;
        }
        last = `HTTP ${res.status}`;
        if (res.status < 500 && res.status !== 429) break;
      } catch (err) {
        last = (err as Error).message;
      }
    }
    this.sent.inc({ result: 'failed' });
    this.log.warn({ event: 'notification_failed', tier: n.sslwall.tier, action: n.sslwall.action, err: last }, 'rollout notification not delivered');
  }
}
