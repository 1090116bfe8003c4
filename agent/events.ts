// Violations from the kernel ring buffer become log lines and, for blocked flows, a socket
// sweep: the destroy iterator aborts the local sockets so applications fail fast.
import type { Logger } from 'pino';
import { native, type RingBufferPoller } from '../native/index.js';
import { addrToString, classNames, decode, familyName, protoNames, verdictNames } from './codec.js';
import type { Datapath } from './datapath.js';
import { type SslwallEvent, SslwallVerdict } from './generated/shared.js';
import type { Metrics } from './metrics.js';

export interface ViolationLine {
  event: 'violation';
  verdict: string;
  class: string;
  proto: string;
  family: string;
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
  direction: 'egress' | 'ingress';
  /** Who opened the connection: this host, or a remote peer (counted apart, docs/agent.md). */
  client: 'local' | 'remote';
  pid?: number;
  comm?: string;
}

export function violationLine(e: SslwallEvent): ViolationLine {
  const line: ViolationLine = {
    event: 'violation',
    verdict: verdictNames[e.verdict] ?? String(e.verdict),
    class: classNames[e.cls] ?? String(e.cls),
    proto: protoNames[e.proto] ?? 'none',
    family: familyName(e.family),
    saddr: addrToString(e.saddr, e.family),
    sport: e.sport,
    daddr: addrToString(e.daddr, e.family),
    dport: e.dport,
    direction: e.egress ? 'egress' : 'ingress',
    client: e.client_local ? 'local' : 'remote',
  };
  if (e.pid) {
    line.pid = e.pid;
    line.comm = e.comm;
  }
  return line;
}

/** Abort the local sockets of blocked flows now. */
export function destroyBlocked(dp: Datapath, log: Logger, metrics: Metrics): void {
  try {
    const n = dp.destroyBlockedSockets();
    if (n > 0) {
      metrics.socketsDestroyed.inc(n);
      log.info({ event: 'sockets_destroyed', count: n }, 'aborted sockets of blocked flows');
    }
  } catch (err) {
    log.error({ event: 'socket_destroy_failed', err }, 'could not abort sockets of blocked flows');
  }
}

export function startEventPump(dp: Datapath, log: Logger, metrics: Metrics, extraFields: Record<string, unknown> = {}): RingBufferPoller {
  let sweepQueued = false;
  // Several blocked events in one burst need one sweep: coalesce to the next macrotask.
  const sweep = () => {
    if (sweepQueued) return;
    sweepQueued = true;
    setImmediate(() => {
      sweepQueued = false;
      destroyBlocked(dp, log, metrics);
    });
  };
  return native().ringBufferPoll(dp.maps.sslwall_events, (record) => {
    const e = decode<SslwallEvent>('sslwall_event', record);
    log.warn({ ...violationLine(e), ...extraFields }, 'plaintext flow');
    if (e.verdict === SslwallVerdict.SSLWALL_VERDICT_BLOCKED) sweep();
  });
}
