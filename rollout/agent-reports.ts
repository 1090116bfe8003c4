// What agents write under <prefix><tier>/<host> (health, violation summaries), as the engine
// follows it: every key read in pages at one revision, then watched from the next revision, and
// read again from scratch (after a backoff) when the watch ends — cancelled by etcd after a
// compaction, or disconnected. A report is trusted by its key, not its body: tier and host come
// from the key, and a body that names another tier or host is refused, so that an agent cannot
// speak for a tier or host it is not (docs/security.md). HealthCache and SummaryCache are the two
// views built on it.
import type { Etcd3, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import type { ZodType } from 'zod';
import { backoffMs } from '../schemas/etcd.js';

/** What a view does with the reports; ids are `<tier>/<host>`, the key below the prefix. */
export interface ReportHandlers {
  /** A read from scratch begins: forget every report. */
  reset(): void;
  put(id: string, value: Buffer): void;
  /** The key is gone (the agent's lease expired, or it stopped). */
  delete(id: string): void;
  /** The read is complete and the watch starts: the view is current. */
  current(): void;
  /** The watch ended or the read failed: the view is stale until the next current(). */
  stale(): void;
}

export class AgentReports {
  private watcher: Watcher | null = null;
  private stopped = false;

  constructor(
    private readonly client: Etcd3,
    /** e.g. /sslwall/health/ */
    private readonly prefix: string,
    /** Keys a page: a page must stay under gRPC's 4 MiB message limit. */
    private readonly pageSize: number,
    /** What the reports are, in log lines: `health` (health_watch_restart, …) or `summary`. */
    private readonly what: string,
    private readonly log: Logger,
    private readonly on: ReportHandlers,
  ) {}

  start(): void {
    void this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel().catch(() => undefined);
  }

  private id(key: Buffer): string {
    return key.toString().slice(this.prefix.length);
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      try {
        this.on.reset();
        const end = prefixEnd(this.prefix);
        let from = Buffer.from(this.prefix);
        let revision: string | undefined;
        for (;;) {
          const page = await this.client.kv.range({ key: from, range_end: end, limit: this.pageSize, ...(revision ? { revision } : {}) });
          revision ??= String(page.header.revision);
          for (const kv of page.kvs) this.on.put(this.id(kv.key), kv.value);
          if (!page.more || page.kvs.length === 0) break;
          from = Buffer.concat([page.kvs[page.kvs.length - 1]!.key, Buffer.from([0])]);
        }
        this.on.current();
        attempt = 0;
        const reason = await new Promise<string>((resolve) => {
          const w = this.client
            .watch()
            .prefix(this.prefix)
            .startRevision(String(Number(revision) + 1))
            .watcher();
          this.watcher = w;
          w.on('put', (kv) => this.on.put(this.id(kv.key), kv.value));
          w.on('delete', (kv) => this.on.delete(this.id(kv.key)));
          w.on('error', (e) => resolve(String(e)));
          w.on('disconnected', () => resolve('disconnected'));
        });
        await this.watcher?.cancel().catch(() => undefined);
        this.log.warn({ event: `${this.what}_watch_restart`, reason }, `reading agents' ${this.what} reports again`);
      } catch (err) {
        this.log.warn({ event: `${this.what}_read_failed`, err: (err as Error).message }, `cannot read agents' ${this.what} reports`);
      }
      this.on.stale();
      await new Promise((r) => setTimeout(r, backoffMs(attempt++)));
    }
  }
}

/**
 * A report parsed with its schema and checked against its key: the document, or why it is
 * refused (`invalid`: unreadable or over its bounds; `misplaced`: the body names another tier
 * or host than its key).
 */
export function trustedByKey<T extends { tier: string; hostId: string }>(
  schema: ZodType<T>,
  id: string,
  value: Buffer,
): { doc: T } | { reason: 'invalid' | 'misplaced'; detail: string } {
  let doc: T;
  try {
    doc = schema.parse(JSON.parse(value.toString()));
  } catch (err) {
    return { reason: 'invalid', detail: (err as Error).message };
  }
  const slash = id.indexOf('/');
  if (slash < 0 || doc.tier !== id.slice(0, slash) || doc.hostId !== id.slice(slash + 1))
    return { reason: 'misplaced', detail: `the body names tier ${doc.tier} host ${doc.hostId}` };
  return { doc };
}

/** The range end that covers every key starting with prefix. */
export function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]! += 1;
  return b;
}
