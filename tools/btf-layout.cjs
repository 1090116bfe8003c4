// Struct layouts from BTF (bpftool btf dump -j output): offsets and sizes as the compiler laid
// them out. Shared by tools/gen-shared-types.mjs (build time, from the object file) and
// agent/migrate.ts (run time, from a pinned map's BTF, to read an older build's values).
// CommonJS so that both an ES module script and the agent (synchronously) can load it.
'use strict';

function index(btf) {
  return new Map(btf.types.map((t) => [t.id, t]));
}

function resolve(byId, id) {
  let t = byId.get(id);
  while (t && ['TYPEDEF', 'VOLATILE', 'CONST', 'RESTRICT'].includes(t.kind)) t = byId.get(t.type_id);
  return t;
}

/** A field's shape: a scalar of a width, a byte or char array, an array of scalars, a struct. */
function fieldShape(byId, typeId) {
  const t = resolve(byId, typeId);
  if (t.kind === 'INT' || t.kind === 'ENUM') return { kind: 'uint', size: t.size };
  if (t.kind === 'STRUCT') return { kind: 'struct', size: t.size, struct: t.name };
  if (t.kind === 'ARRAY') {
    let count = t.nr_elems;
    let elem = resolve(byId, t.type_id);
    while (elem.kind === 'ARRAY') {
      count *= elem.nr_elems;
      elem = resolve(byId, elem.type_id);
    }
    if (elem.kind === 'INT' && elem.size === 1) return { kind: elem.name === 'char' ? 'chars' : 'bytes', size: count };
    if (elem.kind === 'INT') return { kind: 'uints', size: count * elem.size, elemSize: elem.size, count };
  }
  throw new Error(`btf-layout: unsupported field type ${JSON.stringify(t)}`);
}

function structLayout(byId, t) {
  const fields = {};
  for (const m of t.members) {
    if (m.bitfield_size) throw new Error(`btf-layout: ${t.name}.${m.name} is a bitfield; shared.h forbids them`);
    fields[m.name] = { offset: m.bits_offset / 8, ...fieldShape(byId, m.type_id) };
  }
  return { size: t.size, fields };
}

/** Layouts of the named structs (each must be present). */
function layoutsByName(btf, names) {
  const byId = index(btf);
  const out = {};
  for (const name of names) {
    const t = btf.types.find((x) => x.kind === 'STRUCT' && x.name === name);
    if (!t) throw new Error(`btf-layout: struct ${name} is not in this BTF`);
    out[name] = structLayout(byId, t);
  }
  return out;
}

/** Layout of one type by id (a struct), with the name of the struct. */
function layoutOfType(btf, typeId) {
  const byId = index(btf);
  const t = resolve(byId, typeId);
  if (t?.kind !== 'STRUCT') throw new Error(`btf-layout: type ${typeId} is not a struct`);
  return { name: t.name, ...structLayout(byId, t) };
}

module.exports = { layoutsByName, layoutOfType };
