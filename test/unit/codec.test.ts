// Address conversions between text and the 16-byte map form.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { addrToBytes, addrToString } from '../../agent/codec.js';

test('IPv4 and IPv6 addresses round-trip through the map form', () => {
  for (const a of ['10.201.3.1', '0.0.0.0', '255.255.255.255', 'fd00:5157:3::1', '2001:db8::', '::1', '::', 'fe80::1:2:3:4', '1:2:3:4:5:6:7:8']) {
    const { family, bytes } = addrToBytes(a);
    assert.equal(addrToString(bytes, family), a);
  }
});

test('an IPv4-mapped address keeps its dotted quad bytes', () => {
  const { bytes } = addrToBytes('::ffff:192.0.2.1');
  assert.deepEqual([...bytes.subarray(10)], [0xff, 0xff, 192, 0, 2, 1]);
});

test('property: any IPv6 address round-trips (compressed text is canonical)', () => {
  fc.assert(
    fc.property(fc.ipV6(), (a) => {
      const { family, bytes } = addrToBytes(a);
      const back = addrToString(bytes, family);
      return addrToBytes(back).bytes.equals(bytes);
    }),
  );
});
