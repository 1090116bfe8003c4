// Carrying pinned state across agent releases. When a pinned map's key or value layout differs
// from the new build's (a field was added to struct sslwall_flow, say), its entries are read
// with the old layout — taken from the BTF the kernel keeps for the pinned map — and written
// into the new map field by field (same name, same kind: copied; new fields: zero; dropped
// fields: gone), as Cilium migrates its pinned maps. Maps without state worth keeping are
// simply recreated.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { BpfError, type MapHandle, native } from '../native/index.js';
import { FLOW_MAP_KEYS, type FlowMap, type FlowMaps, flowMapKey } from './flow-maps.js';
import { Defines, layouts, type StructLayout } from './generated/shared.js';
import { entriesWhere } from './map-scan.js';
import { repoRoot } from './paths.js';

interface NamedLayout extends StructLayout {
  name: string;
}
const btfLayout = createRequire(import.meta.url)(path.join(repoRoot, 'tools/btf-layout.cjs')) as {
  layoutOfType(btf: unknown, typeId: number): NamedLayout;
  layoutsByName(btf: unknown, names: string[]): Record<string, StructLayout>;
};

/** Maps whose entries are state: migrated, not dropped, when their layout changes. */
export const MIGRATABLE = new Set(['sslwall_flows4', 'sslwall_flows']);

/**
 * Maps an older build pinned whose entries this build keeps in a field of another map's value:
 * each entry is written into that field of the entry with the same key, then the old pin goes.
 * sslwall_owners became struct sslwall_flow's owner (one insert per connection instead of two);
 * `into` names the map of those builds: each owner now goes to its flow's map by family.
 */
export const FOLDED = { sslwall_owners: { into: 'sslwall_flows', valueStruct: 'sslwall_flow', field: 'owner' } } as const;
export type FoldedMap = keyof typeof FOLDED;

export interface Captured {
  map: string;
  key: NamedLayout;
  value: NamedLayout;
  entries: Array<[Buffer, Buffer]>;
  /** The captured map itself, where its caller keeps it open for a settle (datapath.ts). */
  source?: MapHandle;
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
export function fold(c: Captured, objectFile: string, into: (map: FlowMap) => MapHandle): number {
  const spec = FOLDED[c.map as FoldedMap];
  if (!spec) throw new Error(`${c.map} is not a map this build folds into another`);
  const btf = btfDump(['file', objectFile]);
  const { [spec.valueStruct]: target } = btfLayout.layoutsByName(btf, [spec.valueStruct]);
  const field = target!.fields[spec.field];
  if (!field?.struct) throw new Error(`${spec.valueStruct}.${spec.field} is not a struct field`);
  const layouts = btfLayout.layoutsByName(btf, [c.key.name, field.struct]);
  let n = 0;
  for (const [k, v] of c.entries) {
    // The retired map was keyed by the full flow key; the flow is in its family's map.
    const { map, key } = flowMapKey(convert(k, c.key, layouts[c.key.name]!));
    const value = native().mapLookup(into(map), key);
    if (!value) continue;
    convert(v, c.value, layouts[field.struct]!).copy(value, field.offset);
    try {
      native().mapUpdate(into(map), key, value);
      n++;
    } catch {
      // Evicted meanwhile (an LRU map): nothing to attribute.
    }
  }
  return n;
}

/** Where one entry of a migrated map goes in the new maps, converted to their layouts. */
export interface Placed {
  map: string;
  key: Buffer;
  value: Buffer;
}

/**
 * How the entries of a captured map are placed in the new maps of an object file: each into its
 * own map, except the entries of a flow map keyed by the full key (sslwall_flows: in builds before
 * sslwall_flows4 it held both families), which go to their family's flow map under that map's key.
 */
export function placer(c: Captured, objectFile: string): (k: Buffer, v: Buffer) => Placed {
  const btf = btfDump(['file', objectFile]);
  const layouts = btfLayout.layoutsByName(btf, [c.key.name, c.value.name]);
  const byFamily = c.map in FLOW_MAP_KEYS && c.key.name === 'sslwall_flow_key';
  return (k, v) => {
    const key = convert(k, c.key, layouts[c.key.name]!);
    const to = byFamily ? flowMapKey(key) : { map: c.map, key };
    return { map: to.map, key: to.key, value: convert(v, c.value, layouts[c.value.name]!) };
  };
}

/**
 * Write captured entries into the new maps (`open` gives one by name). Returns what was written,
 * by the captured key (hex), for the settle.
 */
export function restore(c: Captured, place: (k: Buffer, v: Buffer) => Placed, open: (map: string) => MapHandle): Map<string, Placed> {
  const written = new Map<string, Placed>();
  for (const [k, v] of c.entries) {
    const to = place(k, v);
    try {
      native().mapUpdate(open(to.map), to.key, to.value);
      written.set(k.toString('hex'), to);
    } catch {
      // The new map is smaller or the entry no longer fits: an LRU would have evicted it anyway.
    }
  }
  return written;
}

/**
 * A restore is made from entries read before the new programs were loaded, and the old programs
 * go on writing the old map until the new ones are attached (the verifier alone takes ~0.5-2 s
 * of that). Once they are, the old map (`old`, unpinned but kept open for this) is final, and
 * what the old programs did meanwhile is brought over, with the rule the legacy move uses: a
 * copy the new programs have not touched takes the old programs' last word (a flow judged in
 * the window); one they touched, or closed, is theirs; the copy of a flow the old programs
 * closed goes (else it would stay, a connection `sslwall flows` shows that no longer exists,
 * until the LRU evicts it); a flow opened in the window is added if the new programs have not
 * opened it themselves.
 */
export function settleRestored(
  old: MapHandle,
  written: Map<string, Placed>,
  place: (k: Buffer, v: Buffer) => Placed,
  open: (map: string) => MapHandle,
): { updated: number; added: number; dropped: number } {
  const addon = native();
  const now = new Map(addon.mapDump(old).map(([k, v]) => [k.toString('hex'), v]));
  const r = { updated: 0, added: 0, dropped: 0 };
  for (const [hex, w] of written) {
    if (now.has(hex) || !addon.mapLookup(open(w.map), w.key)?.equals(w.value)) continue;
    if (ignoreGone(() => addon.mapDelete(open(w.map), w.key))) r.dropped++;
  }
  for (const [hex, v] of now) {
    const to = place(Buffer.from(hex, 'hex'), v);
    const prev = written.get(hex);
    const cur = addon.mapLookup(open(to.map), to.key);
    if (prev === undefined && !cur) {
      if (ignoreGone(() => addon.mapUpdate(open(to.map), to.key, to.value, 1 /* BPF_NOEXIST: opened in the window */))) r.added++;
    } else if (prev !== undefined && cur?.equals(prev.value) && !to.value.equals(prev.value)) {
      if (ignoreGone(() => addon.mapUpdate(open(to.map), to.key, to.value, 2 /* BPF_EXIST */))) r.updated++;
    }
  }
  return r;
}

/**
 * Run a map write the programs may race; false when it was refused with ENOENT or EEXIST (the
 * filter or the close hook got there first; theirs stands).
 */
function ignoreGone(fn: () => void): boolean {
  try {
    fn();
    return true;
  } catch (err) {
    if (!(err instanceof BpfError) || (err.errno !== 2 && err.errno !== 17)) throw err;
    return false;
  }
}

/**
 * Builds before sslwall_flows4 kept their IPv4 flows in sslwall_flows, which this build keeps
 * for IPv6 (and reuses, pinned: an older build finds it again on a downgrade). Those entries
 * move over in two steps around the moment the new programs take over. copyLegacyFlows, right
 * after the load, while the old programs still run (and write sslwall_flows): each IPv4 entry
 * is copied into sslwall_flows4, so that no flow open before the upgrade meets the new programs
 * unknown (they would judge it as joined midway). settleLegacyFlows, once the new programs
 * run: what the old ones changed since is brought over (an entry the new programs have not
 * touched since its copy takes the old programs' last word; one they have touched, or closed,
 * is theirs), copies of flows the old programs closed meanwhile go, and every IPv4 entry leaves
 * sslwall_flows. The counters need nothing: only the filter counts, and a move neither creates
 * nor closes a flow. Returns the copies (key in sslwall_flows4, hex -> value) for the settle.
 */
export function copyLegacyFlows(maps: FlowMaps): Map<string, Buffer> {
  const addon = native();
  const copied = new Map<string, Buffer>();
  const seenAt = layouts.sslwall_flow!.fields.first_seen_ns!.offset;
  for (const [k, v] of legacyIpv4(maps)) {
    const { key } = flowMapKey(k);
    // An entry already there for the same connection (same first_seen_ns) was copied by a start
    // of this build that died before its settle, and the new programs may have judged it
    // further since: it stands. One of another connection was left before a downgrade: the
    // older build's entry is the newer truth.
    const there = addon.mapLookup(maps.sslwall_flows4, key);
    if (there && there.readBigUInt64LE(seenAt) === v.readBigUInt64LE(seenAt)) continue;
    addon.mapUpdate(maps.sslwall_flows4, key, v);
    copied.set(key.toString('hex'), v);
  }
  return copied;
}

export function settleLegacyFlows(maps: FlowMaps, copied: Map<string, Buffer>): { moved: number; dropped: number } {
  const addon = native();
  const legacy = new Map(legacyIpv4(maps).map(([k, v]) => [flowMapKey(k).key.toString('hex'), { k, v }]));
  let moved = 0;
  let dropped = 0;
  for (const [hex, prev] of copied) {
    if (legacy.has(hex)) continue;
    // Closed under the old programs after its copy: the copy, untouched since, goes too.
    const key = Buffer.from(hex, 'hex');
    if (addon.mapLookup(maps.sslwall_flows4, key)?.equals(prev)) {
      ignoreGone(() => addon.mapDelete(maps.sslwall_flows4, key));
      dropped++;
    }
  }
  for (const [hex, { k, v }] of legacy) {
    const key = Buffer.from(hex, 'hex');
    const prev = copied.get(hex);
    const now = addon.mapLookup(maps.sslwall_flows4, key);
    if (prev === undefined && !now) ignoreGone(() => addon.mapUpdate(maps.sslwall_flows4, key, v, 1 /* BPF_NOEXIST: opened after the copy */));
    else if (prev !== undefined && now?.equals(prev) && !v.equals(prev)) ignoreGone(() => addon.mapUpdate(maps.sslwall_flows4, key, v, 2 /* BPF_EXIST */));
    ignoreGone(() => addon.mapDelete(maps.sslwall_flows, k));
    moved++;
  }
  return { moved, dropped };
}

function legacyIpv4(maps: FlowMaps): Array<[Buffer, Buffer]> {
  // At every start, over an sslwall_flows that on a busy host holds tens of thousands of IPv6 flows.
  const family = layouts.sslwall_flow_key!.fields.family!.offset;
  return entriesWhere(maps.sslwall_flows, (key) => key[family] === Defines.SSLWALL_FAMILY_IPV4);
}
