// The engine's view of agent health: every health key of the watched tiers, kept current by a
// watch on the health prefix (read once, then watch; read again when etcd cancels the watch).
// A deleted key is an agent that stopped (its lease expired) and is reported at once.
// A report is trusted by its key, not its body: tier and host come from the key
// (health/<tier>/<host>), and a body that claims another tier or host is dropped and counted, so
// that an agent cannot speak for a tier or host it is not (docs/security-signatures.md).
import { EventEmitter } from 'node:events';
import type { Etcd3, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import client from 'prom-client';
import { backoffMs } from '../schemas/etcd.js';
import { type Health, HealthSchema } from '../schemas/tier.js';

const PAGE = 2000;

export class HealthCache extends EventEmitter {
  readonly agents = new Map<string, Health>(); // key: tier/hostId
  /** When the engine last received each agent's report (ms, its own clock), same keys. */
  readonly seenAt = new Map<string, number>();
  private watcher: Watcher | null = null;
  private stopped = false;
  ready = false;
  /** Health reports dropped, by reason; on no registry: the engine's metrics register it. */
  readonly rejected = new client.Counter({
    name: 'sslwall_engine_health_rejected_total',
    help: 'Agent health reports the engine dropped: misplaced (the body names another tier or host than its key) or invalid (unreadable, or over its bounds)',
    labelNames: ['reason'] as const,
    registers: [],
  });

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string, // e.g. /sslwall/health/
    private readonly log: Logger,
  ) {
    super();
  }

  start(): void {
    void this.loop();
  }

  tier(tier: string): Health[] {
    const out: Health[] = [];
    for (const h of this.agents.values()) if (h.tier === tier) out.push(h);
    return out;
  }

  private id(key: string): string {
    return key.slice(this.prefix.length);
  }

  private set(key: string, value: Buffer): void {
    const id = this.id(key);
    // A health document we cannot read, or that speaks for someone else, is the same as none:
    // the agent counts as missing.
    let h: Health;
    try {
      h = HealthSchema.parse(JSON.parse(value.toString()));
    } catch (err) {
      this.drop(id, 'invalid', (err as Error).message);
      return;
    }
    const slash = id.indexOf('/');
    const tier = id.slice(0, slash);
    const hostId = id.slice(slash + 1);
    if (slash < 0 || h.tier !== tier || h.hostId !== hostId) {
      this.drop(id, 'misplaced', `the body names tier ${h.tier} host ${h.hostId}`);
      return;
    }
    this.agents.set(id, h);
    this.seenAt.set(id, Date.now());
  }

  /** The reports of one host, in any tier (a host id is unique, but a moved host may briefly report in two). */
  host(hostId: string): Health[] {
    const out: Health[] = [];
    for (const h of this.agents.values()) if (h.hostId === hostId) out.push(h);
    return out;
  }

  private drop(id: string, reason: 'invalid' | 'misplaced', detail: string): void {
    this.rejected.inc({ reason });
    this.agents.delete(id);
    this.seenAt.delete(id);
    this.log.warn({ event: 'health_rejected', key: `${this.prefix}${id}`, reason, detail: detail.slice(0, 300) }, 'agent health report dropped');
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      try {
        // In pages at one revision: 10,000 health documents are over gRPC's 4 MiB message limit.
        this.agents.clear();
        this.seenAt.clear();
        const end = prefixEnd(this.prefix);
        let from = Buffer.from(this.prefix);
        let revision: string | undefined;
        for (;;) {
          const page = await this.client.kv.range({ key: from, range_end: end, limit: PAGE, ...(revision ? { revision } : {}) });
          revision ??= String(page.header.revision);
          for (const kv of page.kvs) this.set(kv.key.toString(), kv.value);
          if (!page.more || page.kvs.length === 0) break;
          from = Buffer.concat([page.kvs[page.kvs.length - 1]!.key, Buffer.from([0])]);
        }
        const res = { header: { revision: revision! } };
        this.ready = true;
        attempt = 0;
        const reason = await new Promise<string>((resolve) => {
          const w = this.client
            .watch()
            .prefix(this.prefix)
            .startRevision(String(Number(res.header.revision) + 1))
            .watcher();
          this.watcher = w;
          w.on('put', (kv) => this.set(kv.key.toString(), kv.value));
          w.on('delete', (kv) => {
            const id = this.id(kv.key.toString());
            const gone = this.agents.get(id);
            this.agents.delete(id);
            this.seenAt.delete(id);
            this.emit('gone', id, gone);
          });
          w.on('error', (e) => resolve(String(e)));
          w.on('disconnected', () => resolve('disconnected'));
        });
        await this.watcher?.cancel().catch(() => undefined);
        this.log.warn({ event: 'health_watch_restart', reason }, 'reading agent health again');
      } catch (err) {
        this.log.warn({ event: 'health_read_failed', err: (err as Error).message }, 'cannot read agent health');
      }
      this.ready = false;
      await new Promise((r) => setTimeout(r, backoffMs(attempt++)));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel().catch(() => undefined);
  }
}

/** The range end that covers every key starting with prefix. */
export function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]! += 1;
  return b;
}
