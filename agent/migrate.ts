// Carrying pinned state across agent releases. When a pinned map's key or value layout differs
// from the new build's (a field was added to struct sslwall_flow, say), its entries are read
// with the old layout — taken from the BTF the kernel keeps for the pinned map — and written
// into the new map field by field (same name, same kind: copied; new fields: zero; dropped
// fields: gone), as Cilium migrates its pinned maps. Maps without state worth keeping are
// simply recreated.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { type MapHandle, native } from '../native/index.js';
import type { StructLayout } from './generated/shared.js';
import { repoRoot } from './paths.js';

interface NamedLayout extends StructLayout {
  name: string;
}
const btfLayout = createRequire(import.meta.url)(path.join(repoRoot, 'tools/btf-layout.cjs')) as {
  layoutOfType(btf: unknown, typeId: number): NamedLayout;
  layoutsByName(btf: unknown, names: string[]): Record<string, StructLayout>;
};

/** Maps whose entries are state: migrated, not dropped, when their layout changes. */
export const MIGRATABLE = new Set(['sslwall_flows']);

/**
 * Maps an older build pinned whose entries this build keeps in a field of another map's value:
 * each entry is written into that field of the entry with the same key, then the old pin goes.
 * sslwall_owners became struct sslwall_flow's owner (one insert per connection instead of two).
 */
export const FOLDED = { sslwall_owners: { into: 'sslwall_flows', valueStruct: 'sslwall_flow', field: 'owner' } } as const;
export type FoldedMap = keyof typeof FOLDED;

export interface Captured {
  map: string;
  key: NamedLayout;
  value: NamedLayout;
  entries: Array<[Buffer, Buffer]>;
}

function btfDump(args: string[]): unknown {
  return JSON.parse(execFileSync('bpftool', ['btf', 'dump', ...args, '-j'], { maxBuffer: 256 << 20 }).toString());
}

/** Read a pinned map's entries and its layouts (from its own BTF) before it is replaced. */
export function capture(map: string, pinned: MapHandle): Captured {
  const info = native().mapInfo(pinned);
  if (!info.btfId || !info.btfKeyTypeId || !info.btfValueTypeId) throw new Error(`pinned map ${map} carries no BTF; its entries cannot be read`);
  const btf = btfDump(['id', String(info.btfId)]);
  return {
    map,
    key: btfLayout.layoutOfType(btf, info.btfKeyTypeId),
    value: btfLayout.layoutOfType(btf, info.btfValueTypeId),
    entries: native().mapDump(pinned),
  };
}

/** Copy fields by name from one layout to another. */
export function convert(buf: Buffer, from: StructLayout, to: StructLayout): Buffer {
  const out = Buffer.alloc(to.size);
  for (const [name, f] of Object.entries(to.fields)) {
    const old = from.fields[name];
    if (!old || old.kind !== f.kind) continue;
    buf.copy(out, f.offset, old.offset, old.offset + Math.min(old.size, f.size));
  }
  return out;
}

/**
 * Write the captured entries of a folded map into their field of `into`'s entries (same key,
 * after converting both layouts); entries whose flow is gone are dropped. Returns how many
 * were written.
 */
export function fold(c: Captured, objectFile: string, into: MapHandle): number {
  const spec = FOLDED[c.map as FoldedMap];
  if (!spec) throw new Error(`${c.map} is not a map this build folds into another`);
  const btf = btfDump(['file', objectFile]);
  const { [spec.valueStruct]: target } = btfLayout.layoutsByName(btf, [spec.valueStruct]);
  const field = target!.fields[spec.field];
  if (!field?.struct) throw new Error(`${spec.valueStruct}.${spec.field} is not a struct field`);
  const layouts = btfLayout.layoutsByName(btf, [c.key.name, field.struct]);
  let n = 0;
  for (const [k, v] of c.entries) {
    const key = convert(k, c.key, layouts[c.key.name]!);
    const value = native().mapLookup(into, key);
    if (!value) continue;
    convert(v, c.value, layouts[field.struct]!).copy(value, field.offset);
    try {
      native().mapUpdate(into, key, value);
      n++;
    } catch {
      // Evicted meanwhile (an LRU map): nothing to attribute.
    }
  }
  return n;
}

/** Write captured entries into the new map of an object file; returns how many made it. */
export function restore(c: Captured, objectFile: string, newMap: MapHandle): number {
  const btf = btfDump(['file', objectFile]);
  const layouts = btfLayout.layoutsByName(btf, [c.key.name, c.value.name]);
  let n = 0;
  for (const [k, v] of c.entries) {
    try {
      native().mapUpdate(newMap, convert(k, c.key, layouts[c.key.name]!), convert(v, c.value, layouts[c.value.name]!));
      n++;
    } catch {
      // The new map is smaller or the entry no longer fits: an LRU would have evicted it anyway.
    }
  }
  return n;
}
