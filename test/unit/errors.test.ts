// Every error code the code can raise is documented in docs/errors.md, and nothing else is.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { ErrorCodes } from '../../schemas/errors.js';

test('docs/errors.md lists exactly the codes of schemas/errors.ts', () => {
  const doc = readFileSync(path.join(repoRoot, 'docs/errors.md'), 'utf8');
  const documented = new Set([...doc.matchAll(/^\|\s*`(SSLWALL_E_[A-Z_]+)`/gm)].map((m) => m[1]));
  const known = new Set(Object.keys(ErrorCodes));
  assert.deepEqual(
    [...known].filter((c) => !documented.has(c)),
    [],
    'codes missing from docs/errors.md',
  );
  assert.deepEqual(
    [...documented].filter((c) => !known.has(c!)),
    [],
    'codes in docs/errors.md that the code does not define',
  );
});
