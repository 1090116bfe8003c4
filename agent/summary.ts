// The violation summary an agent publishes (schemas/summary.ts): violations aggregated by local
// service, direction, remote end and verdict, bounded on the host. Pure (no I/O, no clock of
// its own): the real agent feeds it from the ring buffer and the fleet simulator can feed it
// made-up violations, and both publish what build() returns (agent/summary-publisher.ts).
//
// Bounds and eviction: up to workingEntries distinct entries are tracked (a few times what is
// published, so an entry climbing into the top is not thrown out on its way up). A new entry
// when the working set is full evicts the one with the smallest count (the oldest lastSeen among
// equals): its count moves to `dropped`. build() publishes the most frequent maxEntries that fit
// in maxBytes of JSON; everything else is counted in `dropped`, so count sum + dropped = every
// violation since `since`. An evicted entry that comes back starts counting again.

import { type Service, SUMMARY_MAX_ENTRIES, type Summary, type SummaryEntry } from '../schemas/summary.js';
import { SCHEMA_VERSION } from '../schemas/tier.js';

/** The published document's JSON is at most this long: a summary is one etcd value per host. */
export const SUMMARY_MAX_BYTES = 32 * 1024;

export interface Violation {
  service: Service;
  direction: 'client' | 'server';
  /** The other end; for a server, the remote client's ephemeral port is not kept (0). */
  remote: { addr: string; port: number };
  /** The service's listening port (server); 0 for a client. */
  localPort: number;
  verdict: 'reported' | 'blocked';
}

export interface SummaryOptions {
  maxEntries: number;
  workingEntries: number;
  maxBytes: number;
}

export const DEFAULT_SUMMARY: SummaryOptions = { maxEntries: SUMMARY_MAX_ENTRIES, workingEntries: 4 * SUMMARY_MAX_ENTRIES, maxBytes: SUMMARY_MAX_BYTES };

interface Tracked {
  service: Service;
  direction: Violation['direction'];
  remote: Violation['remote'];
  localPort: number;
  verdict: Violation['verdict'];
  count: number;
  firstMs: number;
  lastMs: number;
}

/** Strings bounded as ServiceSchema wants; a long cgroup path keeps its tail, which names the service. */
function bounded(s: Service): Service {
  const cut = (v: string | null, n: number) => (v === null || v.length <= n ? v : v.slice(0, n));
  return {
    unit: cut(s.unit, 256),
    cgroup: s.cgroup !== null && s.cgroup.length > 512 ? `…${s.cgroup.slice(-511)}` : s.cgroup,
    container: cut(s.container, 128),
    comm: cut(s.comm, 16),
    pid: s.pid,
  };
}

/** The aggregation key: the service without its pid (a restarted service is the same service). */
function keyOf(v: Violation): string {
  const s = v.service;
  return `${s.unit}\0${s.cgroup}\0${s.container}\0${s.comm}\0${v.direction}\0${v.remote.addr}\0${v.remote.port}\0${v.localPort}\0${v.verdict}`;
}

export class SummaryBuilder {
  /** Bumped by every add: the publisher writes only when it moved. */
  version = 0;
  private readonly entries = new Map<string, Tracked>();
  private total = 0;

  constructor(
    readonly hostId: string,
    readonly tier: string,
    readonly sinceMs: number,
    private readonly opts: SummaryOptions = DEFAULT_SUMMARY,
  ) {}

  add(v: Violation, atMs: number): void {
    this.version++;
    this.total++;
    const key = keyOf(v);
    const t = this.entries.get(key);
    if (t) {
      t.count++;
      t.lastMs = atMs;
      t.service.pid = v.service.pid;
      return;
    }
    if (this.entries.size >= this.opts.workingEntries) this.evict();
    this.entries.set(key, {
      service: bounded(v.service),
      direction: v.direction,
      remote: { ...v.remote },
      localPort: v.localPort,
      verdict: v.verdict,
      count: 1,
      firstMs: atMs,
      lastMs: atMs,
    });
  }

  /** Distinct entries tracked now (at most workingEntries). */
  get tracked(): number {
    return this.entries.size;
  }

  private evict(): void {
    let victim: string | undefined;
    let min: Tracked | undefined;
    for (const [k, t] of this.entries) {
      if (!min || t.count < min.count || (t.count === min.count && t.lastMs < min.lastMs)) {
        victim = k;
        min = t;
      }
    }
    if (victim !== undefined) this.entries.delete(victim);
  }

  build(nowMs: number): Summary {
    const top = [...this.entries.values()].sort((a, b) => b.count - a.count || b.lastMs - a.lastMs).slice(0, this.opts.maxEntries);
    const entries: SummaryEntry[] = top.map((t) => ({
      service: { ...t.service },
      direction: t.direction,
      remote: { ...t.remote },
      localPort: t.localPort,
      verdict: t.verdict,
      count: t.count,
      firstSeen: new Date(t.firstMs).toISOString(),
      lastSeen: new Date(t.lastMs).toISOString(),
    }));
    const doc = (): Summary => ({
      schema: SCHEMA_VERSION,
      hostId: this.hostId,
      tier: this.tier,
      since: new Date(this.sinceMs).toISOString(),
      updatedAt: new Date(nowMs).toISOString(),
      entries,
      dropped: this.total - entries.reduce((n, e) => n + e.count, 0),
    });
    let out = doc();
    // Rarely true (entries with long cgroup paths): drop the least frequent until it fits.
    while (entries.length && Buffer.byteLength(JSON.stringify(out)) > this.opts.maxBytes) {
      entries.pop();
      out = doc();
    }
    return out;
  }
}
