// One source of truth: the TypeScript layouts and enums in agent/generated/shared.ts (as compiled
// into dist/, i.e. what the agent runs) must be what bpf/shared.h says and what the kernel
// created. Checked against BTF the generator never saw: a probe compiled here from the current
// shared.h, and the BTF of the maps the kernel created from the built objects. So an edit of
// shared.h without a rebuild, a stale object, or a hand edit of the generated file fails here.
// The BTF is read by this file's own small reader, not by tools/btf-layout.cjs (the generator's).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { expectedMaps } from '../../agent/datapath.js';
import * as generated from '../../agent/generated/shared.js';
import { bpfObjects, repoRoot } from '../../agent/paths.js';
import { ttlsMaps } from '../../agent/ttls-kernel.js';
import { BpfError, type BpfObject, type MapHandle, native } from '../../native/index.js';

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
  bitfield_size?: number;
}
interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  values?: Array<{ name: string; val: number }>;
}
interface Btf {
  types: BtfType[];
}
/** A struct as BTF lays it out: size, and each member's byte offset and size. */
interface Layout {
  size: number;
  fields: Record<string, { offset: number; size: number }>;
}

function btfDump(args: string[]): Btf {
  return JSON.parse(execFileSync('bpftool', ['btf', 'dump', ...args, '-j'], { maxBuffer: 64 << 20 }).toString()) as Btf;
}

function reader(btf: Btf) {
  const byId = new Map(btf.types.map((t) => [t.id, t]));
  const resolve = (id: number): BtfType => {
    let t = byId.get(id);
    while (t && ['TYPEDEF', 'VOLATILE', 'CONST', 'RESTRICT'].includes(t.kind)) t = byId.get(t.type_id!);
    if (!t) throw new Error(`BTF type ${id} is missing`);
    return t;
  };
  const sizeOf = (id: number): number => {
    const t = resolve(id);
    return t.kind === 'ARRAY' ? t.nr_elems! * sizeOf(t.type_id!) : t.size!;
  };
  const layout = (t: BtfType): Layout => {
    const fields: Layout['fields'] = {};
    for (const m of t.members!) {
      assert.ok(!m.bitfield_size, `${t.name}.${m.name} is a bitfield; shared.h forbids them`);
      fields[m.name] = { offset: m.bits_offset / 8, size: sizeOf(m.type_id) };
    }
    return { size: t.size!, fields };
  };
  return {
    resolve,
    struct(name: string): Layout {
      const t = btf.types.find((x) => x.kind === 'STRUCT' && x.name === name);
      assert.ok(t, `struct ${name} is not in this BTF`);
      return layout(t);
    },
    layoutOf: (id: number): { name: string; layout: Layout } | undefined => {
      const t = resolve(id);
      return t.kind === 'STRUCT' ? { name: t.name!, layout: layout(t) } : undefined;
    },
    enums: () => btf.types.filter((t) => t.kind === 'ENUM' && t.name?.startsWith('sslwall_')),
  };
}

/** What the compiled generated module encodes for a struct, in the same shape. */
function generatedLayout(name: string): Layout {
  const l = generated.layouts[name];
  assert.ok(l, `agent/generated/shared.ts has no layout for struct ${name}`);
  return { size: l.size, fields: Object.fromEntries(Object.entries(l.fields).map(([f, s]) => [f, { offset: s.offset, size: s.size }])) };
}

const pascal = (s: string) =>
  s
    .split('_')
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');
const header = fs.readFileSync(path.join(repoRoot, 'bpf/shared.h'), 'utf8');
const structNames = [...header.matchAll(/^struct (sslwall_\w+) \{/gm)].map((m) => m[1]!);
const enumNames = [...header.matchAll(/^enum (sslwall_\w+) \{/gm)].map((m) => m[1]!);

let probeDir: string;
let probe: ReturnType<typeof reader>;
before(() => {
  // One global of every struct and enum type makes clang emit all of them into BTF.
  probeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-layout-'));
  const src = path.join(probeDir, 'probe.c');
  fs.writeFileSync(
    src,
    [
      '#include "vmlinux.h"',
      '#include "shared.h"',
      ...structNames.map((s, i) => `struct ${s} probe_s${i};`),
      ...enumNames.map((e, i) => `enum ${e} probe_e${i};`),
      '',
    ].join('\n'),
  );
  const obj = path.join(probeDir, 'probe.o');
  execFileSync('clang', ['-g', '-O2', '-target', 'bpf', '-I', path.join(repoRoot, 'bpf'), '-I', path.join(repoRoot, 'bpf/include'), '-c', src, '-o', obj]);
  probe = reader(btfDump(['file', obj]));
});
after(() => fs.rmSync(probeDir, { recursive: true, force: true }));

test('the generated layouts are exactly the structs of shared.h, as clang lays them out now', () => {
  assert.deepEqual(Object.keys(generated.layouts).sort(), [...structNames].sort(), 'generated structs vs the structs shared.h defines');
  for (const name of structNames)
    assert.deepEqual(generatedLayout(name), probe.struct(name), `struct ${name}: generated layout vs BTF of the current shared.h`);
});

test('the generated enums carry the values shared.h gives them', () => {
  const enums = probe.enums();
  assert.deepEqual(enums.map((e) => e.name).sort(), [...enumNames].sort(), 'every enum of shared.h is in the probe');
  for (const e of enums) {
    const got = (generated as unknown as Record<string, Record<string, number> | undefined>)[pascal(e.name!)];
    assert.ok(got, `agent/generated/shared.ts has no ${pascal(e.name!)} for enum ${e.name}`);
    assert.deepEqual(got, Object.fromEntries(e.values!.map((v) => [v.name, v.val])), `enum ${e.name}: generated values vs BTF of the current shared.h`);
  }
});

const objects: BpfObject[] = [];
after(() => {
  for (const o of objects) o.close();
});

for (const [name, file] of Object.entries(bpfObjects)) {
  test(`the maps the kernel created from the ${name} object have the layouts the agent encodes`, () => {
    const obj = native().openObject(file);
    objects.push(obj);
    obj.load();
    let checkedStructs = 0;
    for (const [map, want] of Object.entries({ ...expectedMaps(), ...ttlsMaps() })) {
      if (want.keySize === 0) continue; // ring buffer: no key/value
      let handle: MapHandle;
      try {
        handle = obj.map(map);
      } catch (err) {
        if (err instanceof BpfError && err.op === 'bpf_object__find_map_by_name') continue; // not one of this object's maps
        throw err;
      }
      let info: ReturnType<ReturnType<typeof native>['mapInfo']>;
      try {
        info = native().mapInfo(handle);
      } finally {
        handle.close();
      }
      assert.equal(info.keySize, want.keySize, `${name}.${map} key size`);
      assert.equal(info.valueSize, want.valueSize, `${name}.${map} value size`);
      assert.ok(info.btfId > 0, `${name}.${map} was created without BTF`);
      // The kernel's copy of the object's BTF, as it holds it for this map.
      const kernel = reader(btfDump(['id', String(info.btfId)]));
      for (const [part, typeId] of [
        ['key', info.btfKeyTypeId],
        ['value', info.btfValueTypeId],
      ] as const) {
        const s = kernel.layoutOf(typeId);
        if (!s) continue; // a scalar: its size was checked above
        assert.deepEqual(generatedLayout(s.name), s.layout, `${name}.${map} ${part} (struct ${s.name}): generated layout vs the kernel's BTF`);
        checkedStructs++;
      }
    }
    if (name === 'ttls') assert.ok(checkedStructs >= 4, `expected the struct keys/values of the ttls maps to be checked, checked ${checkedStructs}`);
    if (name === 'classifier')
      assert.ok(checkedStructs >= 5, `expected the struct keys/values of the classifier's maps to be checked, checked ${checkedStructs}`);
  });
}
