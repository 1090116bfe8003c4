// The engine's view of what every agent saw: the violation summaries (summary/<tier>/<host>,
// schemas/summary.ts), followed by AgentReports as HealthCache follows health: read in pages,
// then watched, and trusted by the key (a body that names another tier or host is dropped and
// counted, so an agent cannot speak for a host it is not).
// On top of the documents it answers the service owner's questions (docs/dashboard.md): a tier's
// services, a search by service, host or destination, and each service's totals over time,
// sampled in memory (bounded: SERIES_POINTS points of at most SERIES_SERVICES services a tier).
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import client from 'prom-client';
import { type Service, type Summary, type SummaryEntry, SummarySchema } from '../schemas/summary.js';
import { AgentReports, trustedByKey } from './agent-reports.js';

// A summary is up to ~30 KiB (SUMMARY_MAX_ENTRIES entries): 100 of them stay under gRPC's 4 MiB message limit.
const PAGE = 100;
/** Samples kept: one a minute (by default) for 24 hours. */
export const SERIES_POINTS = 1440;
/** Services sampled per tier and point: the ones with the most violations. */
export const SERIES_SERVICES = 200;
/** Destinations kept per service in the tier's service list. */
const TOP_DESTINATIONS = 5;
/** A tier's service list is computed again at most this often (ms): it scans every summary of the tier. */
const AGGREGATE_TTL_MS = 1000;

/** What a person calls a service: its systemd unit, else its container, process name or cgroup. */
export function serviceName(s: Service): string {
  return s.unit ?? (s.container ? `container:${s.container.slice(0, 12)}` : null) ?? s.comm ?? s.cgroup ?? '(unknown)';
}

export interface ServiceTotals {
  service: string;
  unit: string | null;
  comm: string | null;
  hosts: number;
  reported: number;
  blocked: number;
  lastSeen: string;
  destinations: Array<{ addr: string; port: number; count: number }>;
}

export interface Point {
  t: number;
  reported: number;
  blocked: number;
}

/** A service's totals over a tier's hosts, kept up to date as summaries arrive and go. */
interface Running {
  unit: string | null;
  comm: string | null;
  reported: number;
  blocked: number;
  lastSeen: string;
  /** host → entries of this service there */
  hosts: Map<string, number>;
  /** addr:port → count and the entries that add to it */
  dest: Map<string, { addr: string; port: number; count: number; refs: number }>;
}

interface Held {
  summary: Summary;
  /** Per entry, the lower-cased text a search matches: unit, comm, cgroup, container, host, remote address and port. */
  hay: string[];
  /** Every entry's text at once: most hosts do not match, and one look tells. */
  all: string;
}

interface Hit {
  tier: string;
  hostId: string;
  entry: SummaryEntry;
}

/** Newest last seen first, then by host: plain comparisons (ISO times and host ids are ASCII), no locale. */
function newestFirst(a: Hit, b: Hit): number {
  if (a.entry.lastSeen !== b.entry.lastSeen) return a.entry.lastSeen > b.entry.lastSeen ? -1 : 1;
  return a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0;
}

function byViolations(a: ServiceTotals, b: ServiceTotals): number {
  return b.reported + b.blocked - (a.reported + a.blocked) || (a.service < b.service ? -1 : a.service > b.service ? 1 : 0);
}

/** The TOP_DESTINATIONS most frequent, by one pass (a service may have thousands). */
function top(dests: Iterable<{ addr: string; port: number; count: number }>): ServiceTotals['destinations'] {
  const out: ServiceTotals['destinations'] = [];
  for (const d of dests) {
    if (out.length === TOP_DESTINATIONS && d.count <= out[TOP_DESTINATIONS - 1]!.count) continue;
    out.push({ addr: d.addr, port: d.port, count: d.count });
    out.sort((a, b) => b.count - a.count);
    if (out.length > TOP_DESTINATIONS) out.pop();
  }
  return out;
}

export class SummaryCache {
  /** key: tier/hostId */
  private readonly held = new Map<string, Held>();
  /** tier → hosts with a summary and the running totals per service: a change costs its entries, not a scan of the tier. */
  private readonly running = new Map<string, { hosts: number; services: Map<string, Running> }>();
  private readonly aggregates = new Map<string, { at: number; hosts: number; services: ServiceTotals[] }>();
  /** tier → service → sampled totals, oldest first; every series has the same sample times. */
  private readonly series = new Map<string, { times: number[]; services: Map<string, Array<[number, number]>> }>();
  private sampler: NodeJS.Timeout | undefined;
  private readonly reports: AgentReports;
  /** The first read is done (the first sample is taken then). */
  private ready = false;
  readonly rejected = new client.Counter({
    name: 'sslwall_engine_summary_rejected_total',
    help: 'Agent violation summaries the engine dropped: misplaced (the body names another tier or host than its key) or invalid (unreadable, or over its bounds)',
    labelNames: ['reason'] as const,
    registers: [],
  });

  constructor(
    client: Etcd3,
    private readonly prefix: string, // e.g. /sslwall/summary/
    private readonly log: Logger,
    /** ms between samples of the per-service totals. */
    readonly sampleMs = 60_000,
  ) {
    this.reports = new AgentReports(client, prefix, PAGE, 'summary', log, {
      reset: () => {
        this.held.clear();
        this.running.clear();
      },
      put: (id, value) => this.set(id, value),
      // The summary lives under the agent's health lease: an agent gone takes its summary with it.
      delete: (id) => this.remove(id),
      current: () => {
        this.aggregates.clear();
        if (!this.ready) this.sample();
        this.ready = true;
      },
      // Still the first read's answers: the summaries held stay until the next read replaces them.
      stale: () => undefined,
    });
  }

  start(): void {
    this.reports.start();
    this.sampler = setInterval(() => this.sample(), this.sampleMs);
    this.sampler.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.sampler);
    await this.reports.stop();
  }

  summary(tier: string, hostId: string): Summary | undefined {
    return this.held.get(`${tier}/${hostId}`)?.summary;
  }

  /** The tier's services, most violations first, and how many hosts sent a summary (recomputed at most once a second). */
  services(tier: string): { hosts: number; services: ServiceTotals[] } {
    const memo = this.aggregates.get(tier);
    if (memo && Date.now() - memo.at < AGGREGATE_TTL_MS) return memo;
    const t = this.running.get(tier);
    const services: ServiceTotals[] = [];
    for (const [service, s] of t?.services ?? []) {
      services.push({
        service,
        unit: s.unit,
        comm: s.comm,
        hosts: s.hosts.size,
        reported: s.reported,
        blocked: s.blocked,
        lastSeen: s.lastSeen,
        destinations: top(s.dest.values()),
      });
    }
    services.sort(byViolations);
    const r = { at: Date.now(), hosts: t?.hosts ?? 0, services };
    this.aggregates.set(tier, r);
    return r;
  }

  /** The joining hosts' violations, grouped by service (what a percentage bump would block). */
  servicesOf(tier: string, hostIds: Iterable<string>): ServiceTotals[] {
    const hosts: Array<{ hostId: string; entries: SummaryEntry[] }> = [];
    for (const h of hostIds) {
      const s = this.summary(tier, h);
      if (s) hosts.push({ hostId: h, entries: s.entries });
    }
    return aggregate(hosts);
  }

  /**
   * Entries whose service (unit, process name, cgroup, container), host id or remote address
   * (addr or addr:port) contains q, case-insensitive; newest first. `total` counts every match.
   */
  search(q: string, opts: { tier?: string; limit: number; offset: number }) {
    const needle = q.toLowerCase();
    // Only the first offset+limit are kept, in order: a search that matches most of a fleet's
    // 500,000 entries must not sort them all.
    const keep = opts.offset + opts.limit;
    const best: Hit[] = [];
    let total = 0;
    for (const { summary, all, hay } of this.held.values()) {
      if ((opts.tier !== undefined && summary.tier !== opts.tier) || !all.includes(needle)) continue;
      for (let i = 0; i < hay.length; i++) {
        if (!hay[i]!.includes(needle)) continue;
        total++;
        const hit = { tier: summary.tier, hostId: summary.hostId, entry: summary.entries[i]! };
        if (best.length === keep && newestFirst(hit, best[keep - 1]!) >= 0) continue;
        let lo = 0;
        let hi = best.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (newestFirst(best[mid]!, hit) <= 0) lo = mid + 1;
          else hi = mid;
        }
        best.splice(lo, 0, hit);
        if (best.length > keep) best.pop();
      }
    }
    return { total, page: best.slice(opts.offset) };
  }

  /** The sampled totals of the services whose name contains q (at most `max` series, most violations first). */
  seriesFor(q: string, opts: { tier?: string; max: number }) {
    const needle = q.toLowerCase();
    const out: Array<{ tier: string; service: string; points: Point[] }> = [];
    for (const [tier, s] of this.series) {
      if (opts.tier !== undefined && tier !== opts.tier) continue;
      for (const [service, values] of s.services) {
        if (!service.toLowerCase().includes(needle)) continue;
        out.push({ tier, service, points: values.map(([reported, blocked], i) => ({ t: s.times[i]!, reported, blocked })) });
      }
    }
    const last = (x: { points: Point[] }) => {
      const p = x.points[x.points.length - 1];
      return p ? p.reported + p.blocked : 0;
    };
    return out.sort((a, b) => last(b) - last(a)).slice(0, opts.max);
  }

  /** Take one sample of every tier's top services (also called once the first read is done, so a chart has a point at once). */
  sample(now = Date.now()): void {
    const tiers = new Set<string>();
    for (const { summary } of this.held.values()) tiers.add(summary.tier);
    for (const tier of new Set([...tiers, ...this.series.keys()])) {
      const top = this.services(tier).services.slice(0, SERIES_SERVICES);
      const s = this.series.get(tier) ?? { times: [], services: new Map<string, Array<[number, number]>>() };
      this.series.set(tier, s);
      const n = s.times.length;
      s.times.push(now);
      // A service new to the top starts with zeros back to the first sample, so every series lines up.
      for (const t of top)
        if (!s.services.has(t.service))
          s.services.set(
            t.service,
            Array.from({ length: n }, () => [0, 0]),
          );
      const byName = new Map(top.map((t) => [t.service, t]));
      for (const [name, values] of s.services) {
        const t = byName.get(name);
        values.push(t ? [t.reported, t.blocked] : [0, 0]);
      }
      if (s.times.length > SERIES_POINTS) {
        s.times.shift();
        for (const values of s.services.values()) values.shift();
      }
      // A service that fell out of the top and is zero across the window goes.
      for (const [name, values] of s.services) if (values.every(([r, b]) => r === 0 && b === 0)) s.services.delete(name);
      if (s.services.size === 0 && !tiers.has(tier)) this.series.delete(tier);
    }
  }

  private set(id: string, value: Buffer): void {
    const r = trustedByKey(SummarySchema, id, value);
    if (!('doc' in r)) {
      this.drop(id, r.reason, r.detail);
      return;
    }
    const s = r.doc;
    const hay = s.entries.map((e) =>
      [e.service.unit, e.service.comm, e.service.cgroup, e.service.container, s.hostId, `${e.remote.addr}:${e.remote.port}`]
        .filter((x) => x !== null)
        .join('\n')
        .toLowerCase(),
    );
    this.remove(id);
    this.held.set(id, { summary: s, hay, all: hay.join('\n') });
    this.account(s, 1);
  }

  private remove(id: string): void {
    const old = this.held.get(id);
    if (!old) return;
    this.held.delete(id);
    this.account(old.summary, -1);
  }

  /** Add a summary's entries to its tier's running totals (sign 1), or take them away (-1). */
  private account(s: Summary, sign: 1 | -1): void {
    const t = this.running.get(s.tier) ?? { hosts: 0, services: new Map<string, Running>() };
    this.running.set(s.tier, t);
    t.hosts += sign;
    for (const e of s.entries) {
      const name = serviceName(e.service);
      const r = t.services.get(name) ?? {
        unit: e.service.unit,
        comm: e.service.comm,
        reported: 0,
        blocked: 0,
        lastSeen: e.lastSeen,
        hosts: new Map(),
        dest: new Map(),
      };
      t.services.set(name, r);
      r[e.verdict] += sign * e.count;
      // The newest sighting while it was reported; a host that goes does not make it older.
      if (sign > 0 && e.lastSeen > r.lastSeen) r.lastSeen = e.lastSeen;
      r.comm ??= e.service.comm;
      const refs = (r.hosts.get(s.hostId) ?? 0) + sign;
      if (refs > 0) r.hosts.set(s.hostId, refs);
      else r.hosts.delete(s.hostId);
      const dk = `${e.remote.addr}:${e.remote.port}`;
      const d = r.dest.get(dk) ?? { addr: e.remote.addr, port: e.remote.port, count: 0, refs: 0 };
      r.dest.set(dk, d);
      d.count += sign * e.count;
      d.refs += sign;
      if (d.refs <= 0) r.dest.delete(dk);
      if (r.hosts.size === 0) t.services.delete(name);
    }
    if (t.hosts <= 0) this.running.delete(s.tier);
  }

  private drop(id: string, reason: 'invalid' | 'misplaced', detail: string): void {
    this.rejected.inc({ reason });
    this.remove(id);
    this.log.warn({ event: 'summary_rejected', key: `${this.prefix}${id}`, reason, detail: detail.slice(0, 300) }, 'agent violation summary dropped');
  }
}

/** Per service: hosts, totals by verdict, last seen and the top destinations; most violations first. */
function aggregate(hosts: Iterable<{ hostId: string; entries: SummaryEntry[] }>): ServiceTotals[] {
  const by = new Map<string, ServiceTotals & { hostSet: Set<string>; dest: Map<string, { addr: string; port: number; count: number }> }>();
  for (const { hostId, entries } of hosts) {
    for (const e of entries) {
      const name = serviceName(e.service);
      let t = by.get(name);
      if (!t) {
        t = {
          service: name,
          unit: e.service.unit,
          comm: e.service.comm,
          hosts: 0,
          reported: 0,
          blocked: 0,
          lastSeen: e.lastSeen,
          destinations: [],
          hostSet: new Set(),
          dest: new Map(),
        };
        by.set(name, t);
      }
      t.hostSet.add(hostId);
      t[e.verdict] += e.count;
      if (e.lastSeen > t.lastSeen) t.lastSeen = e.lastSeen;
      t.comm ??= e.service.comm;
      const dk = `${e.remote.addr}:${e.remote.port}`;
      const d = t.dest.get(dk);
      if (d) d.count += e.count;
      else t.dest.set(dk, { addr: e.remote.addr, port: e.remote.port, count: e.count });
    }
  }
  return [...by.values()]
    .map(({ hostSet, dest, ...t }) => ({
      ...t,
      hosts: hostSet.size,
      destinations: top(dest.values()),
    }))
    .sort(byViolations);
}
