// A whole BPF map scanned for the few entries a caller wants: read in the kernel's batches
// (native mapLookupBatch: two buffers of fixed-size records), each entry tested through views
// of those buffers, and only the kept ones copied into buffers of their own. An agent start
// scans the flow maps twice (an older build's IPv4 flows, then the verdicts of plaintext flows);
// mapDump would make two buffers and an array of every entry (~0.4 s for 65,536 flows, against
// ~30 ms this way; docs/dataplane.md).
import { type MapHandle, native } from '../native/index.js';

/** The entries for which keep(key, value) holds; the views it is given are valid during the call only. */
export function entriesWhere(map: MapHandle, keep: (key: Buffer, value: Buffer) => boolean): Array<[Buffer, Buffer]> {
  const { keys, values, count, keySize, valueSize } = native().mapLookupBatch(map);
  const out: Array<[Buffer, Buffer]> = [];
  for (let i = 0; i < count; i++) {
    const key = keys.subarray(i * keySize, (i + 1) * keySize);
    const value = values.subarray(i * valueSize, (i + 1) * valueSize);
    if (keep(key, value)) out.push([Buffer.from(key), Buffer.from(value)]);
  }
  return out;
}
