// The engine's view of agent health: every health key of the watched tiers, followed by
// AgentReports (read in pages, then watched; trusted by its key: health/<tier>/<host>, a body
// that claims another tier or host dropped and counted). A deleted key is an agent that stopped
// (its lease expired) and is reported at once.
import { EventEmitter } from 'node:events';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import client from 'prom-client';
import { type Health, HealthSchema } from '../schemas/tier.js';
import { AgentReports, trustedByKey } from './agent-reports.js';

// A health document is at most a few KiB: 2,000 of them stay under gRPC's 4 MiB message limit.
const PAGE = 2000;

export class HealthCache extends EventEmitter {
  readonly agents = new Map<string, Health>(); // key: tier/hostId
  /** When the engine last received each agent's report (ms, its own clock), same keys. */
  readonly seenAt = new Map<string, number>();
  ready = false;
  /** Health reports dropped, by reason; on no registry: the engine's metrics register it. */
  readonly rejected = new client.Counter({
    name: 'sslwall_engine_health_rejected_total',
    help: 'Agent health reports the engine dropped: misplaced (the body names another tier or host than its key) or invalid (unreadable, or over its bounds)',
    labelNames: ['reason'] as const,
    registers: [],
  });
  private readonly reports: AgentReports;

  constructor(
    client: Etcd3,
    private readonly prefix: string, // e.g. /sslwall/health/
    private readonly log: Logger,
  ) {
    super();
    this.reports = new AgentReports(client, prefix, PAGE, 'health', log, {
      reset: () => {
        this.agents.clear();
        this.seenAt.clear();
      },
      put: (id, value) => this.set(id, value),
      delete: (id) => {
        const gone = this.agents.get(id);
        this.forget(id);
        this.emit('gone', id, gone);
      },
      current: () => {
        this.ready = true;
      },
      stale: () => {
        this.ready = false;
      },
    });
  }

  start(): void {
    this.reports.start();
  }

  async stop(): Promise<void> {
    await this.reports.stop();
  }

  tier(tier: string): Health[] {
    const out: Health[] = [];
    for (const h of this.agents.values()) if (h.tier === tier) out.push(h);
    return out;
  }

  /** The reports of one host, in any tier (a host id is unique, but a moved host may briefly report in two). */
  host(hostId: string): Health[] {
    const out: Health[] = [];
    for (const h of this.agents.values()) if (h.hostId === hostId) out.push(h);
    return out;
  }

  private set(id: string, value: Buffer): void {
    // A health document we cannot read, or that speaks for someone else, is the same as none:
    // the agent counts as missing.
    const r = trustedByKey(HealthSchema, id, value);
    if (!('doc' in r)) {
      this.rejected.inc({ reason: r.reason });
      this.forget(id);
      this.log.warn({ event: 'health_rejected', key: `${this.prefix}${id}`, reason: r.reason, detail: r.detail.slice(0, 300) }, 'agent health report dropped');
      return;
    }
    this.agents.set(id, r.doc);
    this.seenAt.set(id, Date.now());
  }

  private forget(id: string): void {
    this.agents.delete(id);
    this.seenAt.delete(id);
  }
}
