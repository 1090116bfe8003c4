// One source of truth: the TypeScript layouts are generated from bpf/shared.h through the
// object's BTF; check the generated file is current and that the kernel agrees on the sizes.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, test } from 'node:test';
import { expectedMaps } from '../../agent/datapath.js';
import { bpfObjects, repoRoot } from '../../agent/paths.js';
import { BpfError, type MapHandle, native } from '../../native/index.js';

test('agent/generated/shared.ts is what the generator makes from the current object', () => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'tools/gen-shared-types.mjs'), '--check'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `generated layouts are stale: ${r.stderr}`);
});

const objects: Array<{ close(): void }> = [];
after(() => objects.forEach((o) => o.close()));

for (const [name, file] of Object.entries(bpfObjects)) {
  test(`the ${name} object's maps have the key and value sizes the agent encodes`, () => {
    const obj = native().openObject(file);
    objects.push(obj);
    obj.load();
    for (const [map, want] of Object.entries(expectedMaps())) {
      if (want.keySize === 0) continue; // ring buffer: no key/value
      let handle: MapHandle;
      try {
        handle = obj.map(map);
      } catch (err) {
        if (err instanceof BpfError && err.op === 'bpf_object__find_map_by_name') continue; // not one of this object's maps
        throw err;
      }
      try {
        const info = native().mapInfo(handle);
        assert.equal(info.keySize, want.keySize, `${name}.${map} key size`);
        assert.equal(info.valueSize, want.valueSize, `${name}.${map} value size`);
      } finally {
        handle.close();
      }
    }
  });
}
