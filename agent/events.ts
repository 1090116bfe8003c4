// Violations from the kernel ring buffer become log lines and, for blocked flows, a socket
// sweep: the destroy iterator aborts the local sockets so applications fail fast.
import type { Logger } from 'pino';
import { native, type RingBufferPoller } from '../native/index.js';
import type { CgroupName, CgroupNames } from './cgroup-names.js';
import { addrToString, classNames, decode, familyName, protoNames, verdictNames } from './codec.js';
import type { Datapath } from './datapath.js';
import { type SslwallEvent, SslwallVerdict } from './generated/shared.js';
import type { Metrics } from './metrics.js';
import type { Violation } from './summary.js';

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
  /** The local socket's cgroup (below the hierarchy root), its systemd unit and container, when known. */
  cgroup?: string;
  unit?: string;
  container?: string;
  /** The cgroup id when it could not be named (gone already, or no cgroup2 mount). */
  cgroup_id?: string;
}

export function violationLine(e: SslwallEvent, cg: CgroupName | null = null): ViolationLine {
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
  if (cg) {
    line.cgroup = cg.path;
    if (cg.unit) line.unit = cg.unit;
    if (cg.container) line.container = cg.container;
  } else if (e.cgroup_id) line.cgroup_id = String(e.cgroup_id);
  return line;
}

/**
 * A violation as the summary counts it, from the local service's side. A server's remote client
 * port is ephemeral: not kept, or every connection would be an entry of its own.
 */
export function violationOf(e: SslwallEvent, cg: CgroupName | null): Violation {
  const local = e.client_local === 1;
  return {
    service: {
      unit: cg?.unit ?? null,
      cgroup: cg?.path ?? null,
      container: cg?.container ?? null,
      comm: e.pid ? e.comm : null,
      pid: e.pid || null,
    },
    direction: local ? 'client' : 'server',
    remote: local ? { addr: addrToString(e.daddr, e.family), port: e.dport } : { addr: addrToString(e.saddr, e.family), port: 0 },
    localPort: local ? 0 : e.dport,
    verdict: e.verdict === SslwallVerdict.SSLWALL_VERDICT_BLOCKED ? 'blocked' : 'reported',
  };
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

export interface EventSinks {
  /** Log lines' extra fields (tier, host). */
  fields?: Record<string, unknown>;
  /** Names the cgroup of each violation's local socket. */
  names?: CgroupNames | null;
  /** Each violation, for the summary (etcd mode). */
  onViolation?: (v: Violation, atMs: number) => void;
}

export function startEventPump(dp: Datapath, log: Logger, metrics: Metrics, sinks: EventSinks = {}): RingBufferPoller {
  const extraFields = sinks.fields ?? {};
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
    const cg = sinks.names?.resolve(e.cgroup_id) ?? null;
    log.warn({ ...violationLine(e, cg), ...extraFields }, 'plaintext flow');
    sinks.onViolation?.(violationOf(e, cg), Date.now());
    if (e.verdict === SslwallVerdict.SSLWALL_VERDICT_BLOCKED) sweep();
  });
}
