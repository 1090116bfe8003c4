// dashboard_api_ms_p99: what the engine takes to answer the dashboard's calls (the tiers, a page
// of agents, the tier's services, a search and its series) with 10,000 agents' health reports and
// full violation summaries (SUMMARY_MAX_ENTRIES entries each, tools/lab/summaries.ts) in its
// caches. Baseline, interleaved on the same engine and connection: GET /healthz, i.e. what
// HTTP, auth-free routing and the client cost by themselves.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { type Health, HealthSchema, SCHEMA_VERSION } from '../../schemas/tier.js';
import { startEtcd } from '../lab/etcd.js';
import { EngineProc, makeKeys } from '../lab/fleet.js';
import { fleetSummary, writeSummaries } from '../lab/summaries.js';
import { hostId } from '../simulate/shared.js';
import type { Figure } from './agent.js';
import { quantile, round } from './stats.js';
import type { Bench, BenchContext } from './types.js';

export const dashboardOptions = { agents: 10_000, rounds: 60 };
const TIER = 'web';

function health(host: string, i: number): Health {
  const at = new Date().toISOString();
  return HealthSchema.parse({
    schema: SCHEMA_VERSION,
    hostId: host,
    tier: TIER,
    agentVersion: 'bench',
    configVersion: 1,
    configRevision: 2,
    overrideVersion: null,
    mode: 'passive',
    inCohort: true,
    bucket: i % 10000,
    applyLatencyMs: 3,
    appliedAt: at,
    counters: { violationsReported: i % 7, violationsBlocked: 0, flows: 100, evictions: 0 },
    etcd: { connected: true, watchRevision: 2 },
    lastError: null,
    features: { simulated: true },
    updatedAt: at,
  });
}

export const dashboardBench: Bench = {
  name: 'dashboard_api',
  produces: ['dashboard_api_ms_p99'],
  summary: "the engine serving the dashboard's data with 10,000 agents' health and full summaries (baseline: /healthz on the same engine)",
  async run(ctx: BenchContext): Promise<Figure[]> {
    const n = dashboardOptions.agents;
    const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-bench-dashboard-'));
    const etcd = await startEtcd();
    const keys = makeKeys();
    let engine: EngineProc | undefined;
    try {
      engine = await EngineProc.start(etcd.endpoints, keys, 'bench', logDir);
      const put = await engine.api('PUT', `/api/tiers/${TIER}/config`, { document: { mode: 'passive' }, message: 'bench' });
      if (put.status !== 201) throw new Error(`config not written: ${JSON.stringify(put.body)}`);
      const client = createEtcdClient({ endpoints: etcd.endpoints });
      const t0 = Date.now();
      try {
        const k = etcdKeys('/sslwall/');
        const hosts = Array.from({ length: n }, (_, i) => hostId('sim-', i));
        let next = 0;
        await Promise.all(
          Array.from({ length: 64 }, async () => {
            while (next < hosts.length) {
              const i = next++;
              await client.put(k.health(TIER, hosts[i]!)).value(JSON.stringify(health(hosts[i]!, i)));
            }
          }),
        );
        const docs = hosts.map((h, i) => fleetSummary(TIER, h, i));
        const bytes = docs.reduce((a, d) => a + JSON.stringify(d).length, 0);
        await writeSummaries(client, '/sslwall/', docs);
        ctx.progress(`${n} health reports and summaries (${round(bytes / n / 1024, 1)} KiB each) written in ${round((Date.now() - t0) / 1000, 1)} s`);
      } finally {
        client.close();
      }
      const e = engine;
      const get = async (p: string): Promise<number> => {
        const started = performance.now();
        const r = await fetch(`${e.url}${p}`, { headers: { authorization: `Bearer ${e.token}` } });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`GET ${p}: HTTP ${r.status}`);
        return performance.now() - started;
      };
      const deadline = Date.now() + 120_000;
      for (;;) {
        const r = await e.api<{ hosts: number }>('GET', `/api/tiers/${TIER}/services?limit=1`);
        const agents = await e.api<{ total: number }>('GET', `/api/tiers/${TIER}/agents?limit=1`);
        if (r.body.hosts === n && agents.body.total === n) break;
        if (Date.now() > deadline) throw new Error(`the engine holds ${r.body.hosts} summaries and ${agents.body.total} health reports of ${n} after 120 s`);
        await new Promise((res) => setTimeout(res, 500));
      }
      // One refresh of each view, as the dashboard asks (docs/dashboard.md).
      const calls = [
        '/api/tiers',
        `/api/tiers/${TIER}/agents?limit=300`,
        `/api/tiers/${TIER}/services?limit=100`,
        '/api/violations?q=svc-42.service&limit=500',
        '/api/violations/series?q=svc-42.service',
      ];
      const dash: number[] = [];
      const base: number[] = [];
      const byCall = new Map<string, number[]>(calls.map((c) => [c, []]));
      for (let round_ = -3; round_ < dashboardOptions.rounds; round_++) {
        for (const c of calls) {
          const b = await get('/healthz');
          const d = await get(c);
          // The first rounds warm the JIT and the connection.
          if (round_ >= 0) {
            base.push(b);
            dash.push(d);
            byCall.get(c)!.push(d);
          }
        }
        // Spaced so that the tier's service list (recomputed at most once a second) is rebuilt during the run.
        await new Promise((res) => setTimeout(res, 100));
      }
      for (const [c, xs] of byCall) ctx.progress(`  ${c}: median ${round(quantile(xs, 0.5), 1)} ms, p99 ${round(quantile(xs, 0.99), 1)} ms`);
      const v = quantile(dash, 0.99);
      const b = quantile(base, 0.99);
      ctx.progress(`dashboard calls: median ${round(quantile(dash, 0.5), 1)} ms, p99 ${round(v, 1)} ms of ${dash.length}; /healthz p99 ${round(b, 2)} ms`);
      return [
        {
          bench: 'dashboard_api_ms_p99',
          value: round(v, 1),
          unit: 'ms',
          baseline: round(b, 2),
          ratio: round(v / b, 1),
          valueTarget: { op: '<=', value: 250 },
          meaning: `p99 of the dashboard's calls (tiers, agents page, services, search, series) with ${n} agents' health and full summaries`,
        },
      ];
    } finally {
      await engine?.stop();
      await etcd.destroy();
      fs.rmSync(keys.dir, { recursive: true, force: true });
      fs.rmSync(logDir, { recursive: true, force: true });
    }
  },
};
