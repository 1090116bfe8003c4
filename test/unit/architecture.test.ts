// The architecture check (tools/check-deps.mjs, .dependency-cruiser.cjs) passes on the tree and
// refuses each kind of import it exists to refuse: run on a copy of the sources with one such
// import added, it names the rule and the import.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, cpSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';

const FOLDERS = ['agent', 'rollout', 'schemas', 'native', 'tools', 'test'];

function checkDeps(cwd: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'tools/check-deps.mjs')], { cwd, encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

/** A copy of the TypeScript sources (no build output), with `line` appended to `file`. */
function treeWith(file: string, line: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sslwall-deps-'));
  for (const f of FOLDERS)
    cpSync(path.join(repoRoot, f), path.join(dir, f), {
      recursive: true,
      filter: (src) => !/\/(build|node_modules)(\/|$)/.test(src) && !/\.(o|node)$/.test(src),
    });
  for (const f of ['tsconfig.json', '.dependency-cruiser.cjs', 'package.json']) cpSync(path.join(repoRoot, f), path.join(dir, f));
  symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'));
  appendFileSync(path.join(dir, file), `\n${line}\n`);
  return dir;
}

test('the dependency check passes on the tree', () => {
  const r = checkDeps(repoRoot);
  assert.equal(r.status, 0, `expected no violations, got:\n${r.out}`);
});

const refused: Array<{ rule: string; file: string; line: string; edge: string }> = [
  { rule: 'rollout-not-to-agent', file: 'rollout/store.ts', line: "import '../agent/status.js';", edge: 'rollout/store.ts → agent/status.ts' },
  { rule: 'agent-not-to-rollout', file: 'agent/health.ts', line: "import '../rollout/signing.js';", edge: 'agent/health.ts → rollout/signing.ts' },
  {
    rule: 'only-tests-import-test',
    file: 'tools/cli/main.ts',
    line: "import '../../test/unit/cohort.test.js';",
    edge: 'tools/cli/main.ts → test/unit/cohort.test.ts',
  },
  { rule: 'native-not-to-agent', file: 'native/index.ts', line: "import '../agent/paths.js';", edge: 'native/index.ts → agent/paths.ts' },
  { rule: 'schemas-is-a-leaf', file: 'schemas/keys.ts', line: "import '../agent/paths.js';", edge: 'schemas/keys.ts → agent/paths.ts' },
  { rule: 'no-cycles', file: 'schemas/errors.ts', line: "import './keys.js';\nimport './errors.js';", edge: 'schemas/errors.ts' },
];

for (const c of refused) {
  test(`the dependency check refuses ${c.edge.includes('→') ? c.edge : `a cycle through ${c.edge}`} (${c.rule})`, () => {
    const dir = treeWith(c.file, c.line);
    try {
      const r = checkDeps(dir);
      assert.notEqual(r.status, 0, `expected the check to fail, it passed:\n${r.out}`);
      assert.match(r.out, new RegExp(`${c.rule}: ${c.edge.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), `expected "${c.rule}: ${c.edge}" in:\n${r.out}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
