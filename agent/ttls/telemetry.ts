// The TTLS events and counters of issue E (docs/ttls.md "Events and metrics"): one
// `ttls_closed` line per wrapped connection at close, `ttls_failed` for one that could not be
// wrapped, and three counters on the registry the agent passes in. Byte counts are those of the
// original connection on both sides: `sent` flowed from the original client to the original
// server, `received` the other way, so the two sides' lines of one connection agree.

import type { Logger } from 'pino';
import client from 'prom-client';

export type Role = 'client' | 'server';
export type Result = 'ok' | 'reset' | 'refused' | 'error';

/** The original connection, as the application made it. */
export interface Original {
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
}

export interface Telemetry {
  log: Logger;
  closed(role: Role, o: Original, r: { sent: number; received: number; ms: number; result: Result; extra?: Record<string, unknown> }): void;
  failed(role: Role, o: Partial<Original>, reason: string, err?: unknown): void;
  handshake(role: Role): void;
}

export function createTelemetry(log: Logger, registry: client.Registry): Telemetry {
  // Re-registering on a second start (tests, a restart of the TTLS part) reuses the counters.
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
    (registry.getSingleMetric(name) as client.Counter<L> | undefined) ?? new client.Counter({ name, help, labelNames, registers: [registry] });
  const connections = counter('sslwall_ttls_connections_total', 'Wrapped connections closed, by side and result', ['role', 'result'] as const);
  const bytes = counter('sslwall_ttls_bytes_total', 'Application bytes carried through TTLS: sent = original client to server', ['role', 'direction'] as const);
  const handshakes = counter('sslwall_ttls_handshakes_total', 'Mutually authenticated TLS handshakes completed', ['role'] as const);
  return {
    log,
    closed(role, o, r) {
      connections.inc({ role, result: r.result });
      if (r.sent) bytes.inc({ role, direction: 'sent' }, r.sent);
      if (r.received) bytes.inc({ role, direction: 'received' }, r.received);
      log.info({
        event: 'ttls_closed',
        role,
        ...o,
        bytes_sent: r.sent,
        bytes_received: r.received,
        duration_ms: Math.round(r.ms),
        result: r.result,
        ...r.extra,
      });
    },
    failed(role, o, reason, err) {
      log.warn({ event: 'ttls_failed', role, ...o, reason, err: err === undefined ? undefined : ((err as Error).message ?? String(err)) });
    },
    handshake(role) {
      handshakes.inc({ role });
    },
  };
}
