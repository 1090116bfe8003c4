#!/usr/bin/env node
// Checks, before any test runs, that this machine has every program, header and script module
// the build and the tests need (tools/lab/prerequisites.ts); prints each missing one with the
// Debian package that provides it and exits 1. Run by tools/setup at its end and by .ci/run.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const compiled = path.join(root, 'dist/tools/lab/prerequisites.js');
if (!existsSync(compiled)) {
  console.error(`check-prerequisites: ${compiled} is missing; run tools/setup (it builds the TypeScript)`);
  process.exit(2);
}
const { missingPrerequisites } = await import(pathToFileURL(compiled).href);
const missing = missingPrerequisites();
if (missing.length === 0) {
  console.log('check-prerequisites: every program, header and module the build and tests need is here');
  process.exit(0);
}
console.error(`check-prerequisites: ${missing.length} missing; the tests would fail without them:`);
for (const m of missing) console.error(`  ${m.what}: Debian package ${m.package}`);
console.error(`install them with: apt-get install --no-install-recommends ${[...new Set(missing.map((m) => m.package))].join(' ')}`);
console.error('(tools/setup installs every one; if it did not, add the package to its PACKAGES list)');
process.exit(1);
