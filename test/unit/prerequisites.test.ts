// tools/setup installs every Debian package the lab's prerequisite list names
// (tools/lab/prerequisites.ts): a package forgotten there is what broke a fresh machine once.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { prerequisitePackages } from '../../tools/lab/prerequisites.js';

function setupPackages(): Set<string> {
  const setup = readFileSync(path.join(repoRoot, 'tools/setup'), 'utf8');
  const list = /^PACKAGES=\(\n([\s\S]*?)^\)/m.exec(setup);
  assert.ok(list, 'tools/setup has no PACKAGES=( … ) list');
  return new Set(
    list[1]!
      .split('\n')
      .map((l) => l.replace(/#.*/, ''))
      .join(' ')
      .split(/\s+/)
      .filter(Boolean),
  );
}

test('tools/setup installs every package the prerequisites name', () => {
  const installed = setupPackages();
  assert.deepEqual(
    prerequisitePackages().filter((p) => !installed.has(p)),
    [],
    'packages missing from tools/setup PACKAGES',
  );
});
