// Prometheus metrics (prom-client). Kernel counters are read at scrape time, so a scrape
// always sees the kernel's current totals and no timer runs between scrapes.
import http from 'node:http';
import type { Logger } from 'pino';
import client from 'prom-client';
import type { Datapath } from './datapath.js';
import { flowTableStats, readCounters } from './flows.js';

export function createMetrics(dp: Datapath) {
  const registry = new client.Registry();
  // The event-loop delay monitor samples every 10 ms by default: 100 wake-ups a second on an
  // otherwise idle agent. Once a second is plenty for a daemon.
  client.collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });

  // Counter with values set from the kernel's totals: inc() by the delta since the last scrape.
  const seen = new Map<string, bigint>();
  const flows = new client.Counter({
    name: 'sslwall_flows_total',
    help: 'TCP flows classified, by class and verdict (from the kernel counters)',
    labelNames: ['class', 'verdict'] as const,
    registers: [registry],
    collect() {
      for (const { class: cls, verdict, value } of readCounters(dp.maps.sslwall_counters).byClass) {
        const k = `${cls}/${verdict}`;
        const delta = value - (seen.get(k) ?? 0n);
        if (delta > 0n) flows.inc({ class: cls, verdict }, Number(delta));
        seen.set(k, value);
      }
    },
  });
  // Counting live flows walks the map: at most every 30 s, however often Prometheus scrapes.
  let table = { at: 0, live: 0, evicted: 0 };
  const kernel = new client.Gauge({
    name: 'sslwall_datapath_counter',
    help: 'Kernel datapath counters: flows created/closed/evicted/live, inbound handshakes answered/established, packets dropped/truncated, events lost',
    labelNames: ['counter'] as const,
    registers: [registry],
    collect() {
      const c = readCounters(dp.maps.sslwall_counters);
      if (Date.now() - table.at > 30000) table = { at: Date.now(), ...flowTableStats(dp.maps.sslwall_counters, dp.maps) };
      kernel.set({ counter: 'flows_live' }, table.live);
      kernel.set({ counter: 'flows_evicted' }, table.evicted);
      kernel.set({ counter: 'half_open_created' }, Number(c.halfOpenCreated));
      kernel.set({ counter: 'half_open_promoted' }, Number(c.halfOpenPromoted));
      kernel.set({ counter: 'flows_created' }, Number(c.flowsCreated));
      kernel.set({ counter: 'flows_closed' }, Number(c.flowsClosed));
      kernel.set({ counter: 'flow_insert_failed' }, Number(c.insertFailed));
      kernel.set({ counter: 'packets_dropped' }, Number(c.dropped));
      kernel.set({ counter: 'packets_truncated' }, Number(c.truncated));
      kernel.set({ counter: 'fragments' }, Number(c.fragments));
      kernel.set({ counter: 'ext_header_limit' }, Number(c.extHdrLimit));
      kernel.set({ counter: 'parse_dropped' }, Number(c.parseDropped));
      kernel.set({ counter: 'out_of_order' }, Number(c.outOfOrder));
      kernel.set({ counter: 'events_lost' }, Number(c.eventsLost));
      kernel.set({ counter: 'no_config' }, Number(c.noConfig));
      kernel.set({ counter: 'self_insert_failed' }, Number(c.selfInsertFailed));
    },
  });
  const remoteSeen = new Map<string, bigint>();
  const remote = new client.Counter({
    name: 'sslwall_remote_violations_total',
    help: 'Violations whose client was a remote peer connecting to a port of this host (also in sslwall_flows_total{class="plaintext"}); the rollout judges a cohort by its own clients',
    labelNames: ['verdict'] as const,
    registers: [registry],
    collect() {
      const c = readCounters(dp.maps.sslwall_counters);
      for (const [verdict, value] of [
        ['reported', c.remoteReported],
        ['blocked', c.remoteBlocked],
      ] as const) {
        const delta = value - (remoteSeen.get(verdict) ?? 0n);
        if (delta > 0n) remote.inc({ verdict }, Number(delta));
        remoteSeen.set(verdict, value);
      }
    },
  });
  const configApplied = new client.Counter({
    name: 'sslwall_config_applied_total',
    help: 'Config documents applied (result=ok) or refused (result=invalid)',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const socketsDestroyed = new client.Counter({
    name: 'sslwall_sockets_destroyed_total',
    help: 'Local sockets of blocked flows aborted by the agent',
    registers: [registry],
  });
  const applyLatency = new client.Histogram({
    name: 'sslwall_apply_seconds',
    help: 'Time to write a config into the kernel maps',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  });
  const configVersion = new client.Gauge({
    name: 'sslwall_config_version',
    help: 'Version of the tier document in force (0 for a config file)',
    registers: [registry],
  });
  const watchState = new client.Gauge({
    name: 'sslwall_etcd_watch_state',
    help: 'State of the etcd watch (1 for the current state)',
    labelNames: ['state'] as const,
    registers: [registry],
  });
  let breakerState: (() => string) | null = null;
  const breakers = new client.Gauge({
    name: 'sslwall_etcd_breaker_open',
    help: "The circuit breaker around the agent's etcd calls: 1 open, 0.5 half open, 0 closed",
    labelNames: ['breaker'] as const,
    registers: [registry],
    collect() {
      if (breakerState) breakers.set({ breaker: 'etcd' }, { open: 1, half_open: 0.5, closed: 0 }[breakerState()] ?? 0);
    },
  });
  return {
    registry,
    configApplied,
    socketsDestroyed,
    applyLatency,
    configVersion,
    watchState,
    etcdBreakerState: (fn: () => string) => (breakerState = fn),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

export async function serveMetrics(addr: string, metrics: Metrics, log: Logger): Promise<http.Server> {
  const idx = addr.lastIndexOf(':');
  const host = addr.slice(0, idx).replace(/^\[|\]$/g, '') || '127.0.0.1';
  const port = Number(addr.slice(idx + 1));
  const server = http.createServer(async (req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end('try /metrics\n');
      return;
    }
    try {
      const body = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body);
    } catch (err) {
      log.error({ event: 'metrics_error', err }, 'metrics collection failed');
      res.writeHead(500).end(String(err));
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  log.info({ event: 'metrics_listening', addr }, 'metrics listening');
  return server;
}
