// Violation summaries written into etcd as agents publish them (summary/<tier>/<host>,
// schemas/summary.ts), for the dashboard's tests and the dashboard_api_ms_p99 bench.
// A stand-in for the agent's own publishing (agent/summary.ts, built alongside): the simulated
// fleet has no kernel to attribute violations, so the documents are made here, parsed with
// SummarySchema so that they are exactly what the engine accepts from an agent.
import type { Etcd3 } from 'etcd3';
import { etcdKeys } from '../../schemas/keys.js';
import { SUMMARY_MAX_ENTRIES, type Summary, type SummaryEntry, SummarySchema } from '../../schemas/summary.js';
import { SCHEMA_VERSION } from '../../schemas/tier.js';

export interface LabViolation {
  unit: string | null;
  comm: string | null;
  direction?: 'client' | 'server';
  remote: { addr: string; port: number };
  localPort?: number;
  verdict?: 'reported' | 'blocked';
  count: number;
}

export function labSummary(tier: string, hostId: string, violations: LabViolation[], now = new Date()): Summary {
  const at = now.toISOString();
  const entries: SummaryEntry[] = violations.slice(0, SUMMARY_MAX_ENTRIES).map((v) => ({
    service: {
      unit: v.unit,
      cgroup: v.unit ? `/system.slice/${v.unit}` : null,
      container: null,
      comm: v.comm,
      pid: v.comm ? 1000 + (v.count % 30000) : null,
    },
    direction: v.direction ?? 'client',
    remote: v.remote,
    localPort: v.localPort ?? 0,
    verdict: v.verdict ?? 'reported',
    count: v.count,
    firstSeen: new Date(now.getTime() - 3600_000).toISOString(),
    lastSeen: at,
  }));
  return SummarySchema.parse({
    schema: SCHEMA_VERSION,
    hostId,
    tier,
    since: new Date(now.getTime() - 7200_000).toISOString(),
    updatedAt: at,
    entries,
    dropped: 0,
  });
}

/** Put each summary under its own host's key, `parallel` puts at a time. */
export async function writeSummaries(client: Etcd3, prefix: string, docs: Summary[], parallel = 64): Promise<void> {
  const keys = etcdKeys(prefix);
  let next = 0;
  const worker = async () => {
    while (next < docs.length) {
      const d = docs[next++]!;
      await client.put(keys.summary(d.tier, d.hostId)).value(JSON.stringify(d));
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
}

/**
 * A full summary for fleet host number i: SUMMARY_MAX_ENTRIES entries from a pool of 500
 * services talking to 2,000 destinations, so that the engine's aggregation and search see a
 * fleet's spread rather than one service.
 */
export function fleetSummary(tier: string, hostId: string, i: number, now = new Date()): Summary {
  const violations: LabViolation[] = [];
  for (let k = 0; k < SUMMARY_MAX_ENTRIES; k++) {
    const s = (i * 7 + k * 13) % 500;
    const d = (i * 31 + k) % 2000;
    violations.push({
      unit: `svc-${s}.service`,
      comm: `svc-${s}`.slice(0, 15),
      direction: k % 4 === 0 ? 'server' : 'client',
      remote: { addr: `10.${(d >> 8) & 255}.${d & 255}.${k + 1}`, port: 5000 + (d % 100) },
      localPort: k % 4 === 0 ? 8000 + s : 0,
      verdict: k % 5 === 0 ? 'blocked' : 'reported',
      count: 1 + ((i + k * 17) % 97),
    });
  }
  return labSummary(tier, hostId, violations, now);
}
