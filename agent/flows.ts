// Reading the flows map (and the connections transparent TLS wrapped) for `sslwall flows`, and the
// counters for metrics.
import { existsSync } from 'node:fs';
import { type MapHandle, native } from '../native/index.js';
import { SslwallError } from '../schemas/errors.js';
import type { CgroupNames } from './cgroup-names.js';
import { addrToString, classNames, decode, endpoints, type Family, familyName, protoNames, verdictNames } from './codec.js';
import { decodeFlowKey, FLOW_MAPS, type FlowMaps } from './flow-maps.js';
import { SslwallClass, SslwallCounter, type SslwallFlow, type SslwallTtlsAddr, type SslwallTtlsOrig, SslwallVerdict } from './generated/shared.js';
import { pinLayout } from './paths.js';

export interface FlowRecord {
  family: Family;
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
  class: string;
  verdict: string;
  proto: string;
  /** Carried by transparent TLS: s is the client's socket (on loopback, to the proxy), d where it asked to go. */
  wrapped?: true;
  /** The local side, when the filter recorded it (a SYN or SYN-ACK it saw): process (clients) and systemd unit or cgroup. */
  pid?: number;
  comm?: string;
  unit?: string;
  cgroup?: string;
}

/** The flows in the map an agent pinned under bpffs (`sslwall flows`), with their owners named through `names`. */
export function readPinnedFlows(bpffs: string, names: CgroupNames | null = null): FlowRecord[] {
  const pins = pinLayout(bpffs);
  const pin = pins.map('sslwall_flows');
  if (!existsSync(pin)) throw new SslwallError('SSLWALL_E_NOT_INSTALLED', `no flow map pinned at ${pin}; is the agent running with --bpffs ${bpffs}?`);
  const flows: FlowRecord[] = [];
  // An agent of a build before sslwall_flows4 has none pinned: its one map holds both families.
  for (const name of FLOW_MAPS) {
    if (!existsSync(pins.map(name))) continue;
    const map = native().getPinned(pins.map(name), 'map');
    try {
      flows.push(...readFlowMap(map, names));
    } finally {
      map.close();
    }
  }
  const wrapped = pins.map('sslwall_ttls_by_local');
  if (!existsSync(wrapped)) return flows; // transparent TLS never loaded here
  const ttls = native().getPinned(wrapped, 'map');
  try {
    return [...flows, ...readWrappedFlows(ttls)];
  } finally {
    ttls.close();
  }
}

/** The connections transparent TLS wrapped, from its map of established ones: class tls, to the original destination. */
export function readWrappedFlows(byLocal: MapHandle): FlowRecord[] {
  return native()
    .mapDump(byLocal)
    .map(([k, v]) => {
      const local = decode<SslwallTtlsAddr>('sslwall_ttls_addr', k);
      const { dst } = decode<SslwallTtlsOrig>('sslwall_ttls_orig', v);
      return {
        family: familyName(dst.family),
        saddr: addrToString(local.addr, local.family),
        sport: local.port,
        daddr: addrToString(dst.addr, dst.family),
        dport: dst.port,
        class: classNames[SslwallClass.SSLWALL_CLASS_TLS]!,
        verdict: verdictNames[SslwallVerdict.SSLWALL_VERDICT_ALLOWED]!,
        proto: 'none',
        wrapped: true as const,
      };
    });
}

/** The flows of both flow maps. */
export function readFlows(flows: FlowMaps, names: CgroupNames | null = null): FlowRecord[] {
  return FLOW_MAPS.flatMap((m) => readFlowMap(flows[m], names));
}

/** The entries of one map of flows (either flow map, or half_open). */
export function readFlowMap(flows: MapHandle, names: CgroupNames | null = null): FlowRecord[] {
  return native()
    .mapDump(flows)
    .map(([k, v]) => {
      const key = decodeFlowKey(k);
      const flow = decode<SslwallFlow>('sslwall_flow', v);
      const rec: FlowRecord = {
        ...endpoints(key, flow.client_is_lo === 1),
        class: classNames[flow.cls] ?? `unknown(${flow.cls})`,
        verdict: verdictNames[flow.verdict] ?? `unknown(${flow.verdict})`,
        proto: protoNames[flow.proto] ?? 'none',
      };
      // No owner (pid 0, cgroup 0) for a flow seen midway: nothing is added.
      const o = flow.owner;
      if (o.pid) Object.assign(rec, { pid: o.pid, comm: o.comm });
      const cg = o.cgroup_id ? names?.resolve(o.cgroup_id) : undefined;
      if (cg) {
        rec.cgroup = cg.path;
        if (cg.unit) rec.unit = cg.unit;
      }
      return rec;
    });
}

export interface Counters {
  flowsCreated: bigint;
  flowsClosed: bigint;
  insertFailed: bigint;
  truncated: bigint;
  dropped: bigint;
  eventsLost: bigint;
  fragments: bigint;
  noConfig: bigint;
  /** Violations whose client was the remote side (also in byClass). */
  remoteReported: bigint;
  remoteBlocked: bigint;
  selfInsertFailed: bigint;
  /** IPv6 header chains longer than the parser walks; of those and the fragments, dropped (active mode). */
  extHdrLimit: bigint;
  parseDropped: bigint;
  /** Segments of undecided flows ahead of the next expected byte, passed unjudged. */
  outOfOrder: bigint;
  /** Inbound handshakes answered (kept apart until established) and those established. */
  halfOpenCreated: bigint;
  halfOpenPromoted: bigint;
  byClass: Array<{ class: string; verdict: string; value: bigint }>;
}

/** Sum the per-CPU counters. */
export function readCounters(counters: MapHandle): Counters {
  const addon = native();
  const read = (idx: number): bigint => {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(idx);
    const v = addon.mapLookup(counters, key);
    let sum = 0n;
    if (v) for (let off = 0; off + 8 <= v.length; off += 8) sum += v.readBigUInt64LE(off);
    return sum;
  };
  const byClass: Counters['byClass'] = [];
  for (let cls = 0; cls < SslwallClass.SSLWALL_CLASS_COUNT; cls++) {
    for (let verdict = 0; verdict < SslwallVerdict.SSLWALL_VERDICT_COUNT; verdict++) {
      const value = read(SslwallCounter.SSLWALL_CNT_CLASS_BASE + cls * SslwallVerdict.SSLWALL_VERDICT_COUNT + verdict);
      if (value > 0n) byClass.push({ class: classNames[cls]!, verdict: verdictNames[verdict]!, value });
    }
  }
  return {
    flowsCreated: read(SslwallCounter.SSLWALL_CNT_FLOWS_CREATED),
    flowsClosed: read(SslwallCounter.SSLWALL_CNT_FLOWS_CLOSED),
    insertFailed: read(SslwallCounter.SSLWALL_CNT_FLOW_INSERT_FAILED),
    truncated: read(SslwallCounter.SSLWALL_CNT_PKT_TRUNCATED),
    dropped: read(SslwallCounter.SSLWALL_CNT_PKT_DROPPED),
    eventsLost: read(SslwallCounter.SSLWALL_CNT_EVENTS_LOST),
    fragments: read(SslwallCounter.SSLWALL_CNT_FRAGMENTS),
    noConfig: read(SslwallCounter.SSLWALL_CNT_NO_CONFIG),
    remoteReported: read(SslwallCounter.SSLWALL_CNT_REMOTE_REPORTED),
    remoteBlocked: read(SslwallCounter.SSLWALL_CNT_REMOTE_BLOCKED),
    selfInsertFailed: read(SslwallCounter.SSLWALL_CNT_SELF_INSERT_FAILED),
    extHdrLimit: read(SslwallCounter.SSLWALL_CNT_EXT_HDR_LIMIT),
    parseDropped: read(SslwallCounter.SSLWALL_CNT_PARSE_DROPPED),
    outOfOrder: read(SslwallCounter.SSLWALL_CNT_OUT_OF_ORDER),
    halfOpenCreated: read(SslwallCounter.SSLWALL_CNT_HALF_OPEN_CREATED),
    halfOpenPromoted: read(SslwallCounter.SSLWALL_CNT_HALF_OPEN_PROMOTED),
    byClass,
  };
}

/**
 * Live entries of the flow maps, and the flows the LRU evicted to make room: every insert of a
 * new key counts as created and every delete (or replacement) as closed, so evicted = created -
 * closed - live. The walk that counts live entries takes a while and flows open and close
 * meanwhile: created is read before it and closed after, so the figure is a lower bound that
 * never reports an eviction that did not happen. Walks the maps: callers cache.
 */
export function flowTableStats(counters: MapHandle, flows: FlowMaps): { live: number; evicted: number } {
  const created = readCounters(counters).flowsCreated;
  const live = FLOW_MAPS.reduce((n, m) => n + native().mapCount(flows[m]), 0);
  const closed = readCounters(counters).flowsClosed;
  return { live, evicted: Math.max(0, Number(created - closed) - live) };
}
