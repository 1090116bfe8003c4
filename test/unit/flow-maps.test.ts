// Which flow map holds a flow and under which key (agent/flow-maps.ts): IPv4 flows in
// sslwall_flows4 under the 12-byte key, IPv6 flows in sslwall_flows under the full one, and back.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addrToBytes, encode } from '../../agent/codec.js';
import { decodeFlowKey, flowMapKey } from '../../agent/flow-maps.js';
import { Defines, type SslwallFlowKey } from '../../agent/generated/shared.js';

function full(lo: string, hi: string, portLo: number, portHi: number): SslwallFlowKey {
  const family = lo.includes(':') ? Defines.SSLWALL_FAMILY_IPV6 : Defines.SSLWALL_FAMILY_IPV4;
  return { addr_lo: addrToBytes(lo).bytes, addr_hi: addrToBytes(hi).bytes, port_lo: portLo, port_hi: portHi, family, pad: Buffer.alloc(3) };
}

test('an IPv4 flow goes to sslwall_flows4 under 12 bytes (addresses, then ports) and reads back as the full key', () => {
  const key = full('10.0.0.1', '10.0.0.2', 40000, 443);
  const { map, key: k4 } = flowMapKey(key);
  assert.equal(map, 'sslwall_flows4');
  assert.equal(k4.length, 12);
  assert.equal(k4.subarray(0, 8).toString('hex'), '0a0000010a000002');
  assert.deepEqual(decodeFlowKey(k4), decodeFlowKey(encode<SslwallFlowKey>('sslwall_flow_key', key)), 'the same full key as the 40-byte form');
  assert.deepEqual(flowMapKey(encode<SslwallFlowKey>('sslwall_flow_key', key)), { map, key: k4 }, 'an encoded full key maps the same');
});

test('an IPv6 flow stays in sslwall_flows under its full 40-byte key', () => {
  const key = full('fd00::1', 'fd00::2', 40000, 443);
  const { map, key: k } = flowMapKey(key);
  assert.equal(map, 'sslwall_flows');
  assert.equal(k.length, 40);
  const back = decodeFlowKey(k);
  assert.equal(back.family, Defines.SSLWALL_FAMILY_IPV6);
  assert.deepEqual([back.port_lo, back.port_hi], [40000, 443]);
  assert.ok(back.addr_hi.equals(addrToBytes('fd00::2').bytes));
});

test('a flow key of another size is refused with the size named', () => {
  assert.throws(() => decodeFlowKey(Buffer.alloc(16)), /a flow key of 16 bytes is neither IPv4's nor IPv6's/);
});
