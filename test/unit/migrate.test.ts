// Converting a pinned map's entries from the layout they were written with to the new build's
// (agent/migrate.ts convert): fields are matched by name and kind, on synthetic layouts.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { layouts, type StructLayout } from '../../agent/generated/shared.js';
import { convert } from '../../agent/migrate.js';

// v1: { u32 a; u16 b; u8 tag[6]; u64 gone; }          (size 24)
const v1: StructLayout = {
  size: 24,
  fields: {
    a: { offset: 0, kind: 'uint', size: 4 },
    b: { offset: 4, kind: 'uint', size: 2 },
    tag: { offset: 6, kind: 'bytes', size: 6 },
    gone: { offset: 16, kind: 'uint', size: 8 },
  },
};
// v2: { u64 added; u16 b; u8 tag[8]; u32 a; char b_name[4] }: reordered, a field added, one
// dropped, an array grown.                             (size 28)
const v2: StructLayout = {
  size: 28,
  fields: {
    added: { offset: 0, kind: 'uint', size: 8 },
    b: { offset: 8, kind: 'uint', size: 2 },
    tag: { offset: 10, kind: 'bytes', size: 8 },
    a: { offset: 20, kind: 'uint', size: 4 },
    b_name: { offset: 24, kind: 'chars', size: 4 },
  },
};

function v1Entry(): Buffer {
  const b = Buffer.alloc(24, 0xee); // padding bytes are not fields: they must not travel
  b.writeUInt32LE(0xdeadbeef, 0);
  b.writeUInt16LE(0x1234, 4);
  Buffer.from([1, 2, 3, 4, 5, 6]).copy(b, 6);
  b.writeBigUInt64LE(99n, 16);
  return b;
}

test('fields move to their new offsets by name; new fields and padding are zero; dropped fields are gone', () => {
  const out = convert(v1Entry(), v1, v2);
  assert.equal(out.length, 28);
  assert.equal(out.readBigUInt64LE(0), 0n, 'added');
  assert.equal(out.readUInt16LE(8), 0x1234, 'b');
  assert.deepEqual([...out.subarray(10, 18)], [1, 2, 3, 4, 5, 6, 0, 0], 'tag grown: old bytes first, then zeros');
  assert.equal(out.readUInt32LE(20), 0xdeadbeef, 'a');
  assert.deepEqual([...out.subarray(24)], [0, 0, 0, 0], 'b_name');
  assert.equal(out.subarray(18, 20).readUInt16LE(0), 0, 'padding');
});

test('an integer widened keeps its value; one narrowed keeps its low bytes', () => {
  const narrow: StructLayout = { size: 4, fields: { n: { offset: 0, kind: 'uint', size: 4 } } };
  const wide: StructLayout = { size: 8, fields: { n: { offset: 0, kind: 'uint', size: 8 } } };
  const small = Buffer.alloc(4);
  small.writeUInt32LE(4_000_000_000);
  assert.equal(convert(small, narrow, wide).readBigUInt64LE(0), 4_000_000_000n);
  const big = Buffer.alloc(8);
  big.writeBigUInt64LE(0x1_0000_0007n);
  assert.equal(convert(big, wide, narrow).readUInt32LE(0), 7);
});

test('a field whose kind changed is not carried over', () => {
  const asBytes: StructLayout = { size: 4, fields: { x: { offset: 0, kind: 'bytes', size: 4 } } };
  const asUint: StructLayout = { size: 4, fields: { x: { offset: 0, kind: 'uint', size: 4 } } };
  assert.deepEqual([...convert(Buffer.from([1, 2, 3, 4]), asBytes, asUint)], [0, 0, 0, 0]);
});

test('an array that shrank keeps its first bytes', () => {
  const long: StructLayout = { size: 6, fields: { s: { offset: 0, kind: 'chars', size: 6 } } };
  const short: StructLayout = { size: 3, fields: { s: { offset: 0, kind: 'chars', size: 3 } } };
  assert.equal(convert(Buffer.from('abcdef'), long, short).toString(), 'abc');
});

test('the same layout converts to an identical entry (the built flow layouts, padding zeroed)', () => {
  for (const name of ['sslwall_flow_key', 'sslwall_flow']) {
    const l = layouts[name]!;
    const entry = Buffer.alloc(l.size);
    for (const [i, f] of Object.values(l.fields).entries()) entry.fill(i + 1, f.offset, f.offset + f.size);
    assert.deepEqual(convert(entry, l, l), entry, name);
  }
});
