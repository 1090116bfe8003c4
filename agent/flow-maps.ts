// Which flow map holds a flow, and under which key: IPv4 flows in sslwall_flows4 (12-byte key),
// IPv6 flows in sslwall_flows (the full key), as bpf/lib/maps.h explains. A module of its own,
// with nothing but the codec beneath it, so that every reader and writer of flows can use it.
import type { MapHandle } from '../native/index.js';
import { decode, encode, sizeOf } from './codec.js';
import { Defines, type SslwallFlowKey, type SslwallFlowKey4 } from './generated/shared.js';

/**
 * The flow maps: IPv4 flows under a 12-byte key (struct sslwall_flow_key4), IPv6 flows under the
 * full one (struct sslwall_flow_key), as bpf/lib/maps.h explains; builds before sslwall_flows4
 * kept both families in sslwall_flows. Everything that reads or writes flows goes through these
 * names and the two functions below.
 */
export const FLOW_MAP_KEYS = { sslwall_flows4: 'sslwall_flow_key4', sslwall_flows: 'sslwall_flow_key' } as const;
export type FlowMap = keyof typeof FLOW_MAP_KEYS;
export const FLOW_MAPS = Object.keys(FLOW_MAP_KEYS) as FlowMap[];
export type FlowMaps = Record<FlowMap, MapHandle>;

/**
 * The full key of a flow-map entry, whichever map it came from: an IPv4 key (12 bytes) is
 * widened as the filter keys IPv4 elsewhere (each address in the first 4 of its 16 bytes). Told
 * apart by size, so a map pinned by another build reads right too.
 */
export function decodeFlowKey(k: Buffer): SslwallFlowKey {
  if (k.length === sizeOf('sslwall_flow_key')) return decode<SslwallFlowKey>('sslwall_flow_key', k);
  if (k.length !== sizeOf('sslwall_flow_key4')) throw new Error(`a flow key of ${k.length} bytes is neither IPv4's nor IPv6's`);
  const k4 = decode<SslwallFlowKey4>('sslwall_flow_key4', k);
  const wide = (a: Buffer) => Buffer.concat([a, Buffer.alloc(12)]);
  return {
    addr_lo: wide(k4.addr_lo),
    addr_hi: wide(k4.addr_hi),
    port_lo: k4.port_lo,
    port_hi: k4.port_hi,
    family: Defines.SSLWALL_FAMILY_IPV4,
    pad: Buffer.alloc(3),
  };
}

/** The flow map that holds a flow of this full key (encoded or not), and its key there. */
export function flowMapKey(key: SslwallFlowKey | Buffer): { map: FlowMap; key: Buffer } {
  const k = Buffer.isBuffer(key) ? decode<SslwallFlowKey>('sslwall_flow_key', key) : key;
  if (k.family !== Defines.SSLWALL_FAMILY_IPV4) return { map: 'sslwall_flows', key: Buffer.isBuffer(key) ? key : encode('sslwall_flow_key', k) };
  return {
    map: 'sslwall_flows4',
    key: encode<SslwallFlowKey4>('sslwall_flow_key4', {
      addr_lo: k.addr_lo.subarray(0, 4),
      addr_hi: k.addr_hi.subarray(0, 4),
      port_lo: k.port_lo,
      port_hi: k.port_hi,
    }),
  };
}
