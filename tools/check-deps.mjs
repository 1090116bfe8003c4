#!/usr/bin/env node
// The architecture check: every import between sslwall's parts against the rules in
// .dependency-cruiser.cjs (docs/architecture.md). Run by `npm test` before any test; exits 1 on
// a violation, naming the rule and the import.
// Usage: node tools/check-deps.mjs [--graph]
//   --graph: the parts and the imports between them, as Graphviz dot (pipe to `dot -Tsvg`), or
//   --graph=text: one `from → to` line per import between modules
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const SOURCE_FOLDERS = ['agent', 'rollout', 'schemas', 'native', 'tools', 'test'];
const graphArg = process.argv.find((a) => a.startsWith('--graph'));
const graph = graphArg ? (graphArg === '--graph=text' ? 'text' : 'archi') : null;
const bin = path.join(root, 'node_modules/.bin/depcruise');
const args = [
  ...SOURCE_FOLDERS,
  '--config',
  '.dependency-cruiser.cjs',
  ...(graph ? ['--output-type', graph, '--include-only', `^(${SOURCE_FOLDERS.join('|')})/`] : []),
];
const r = spawnSync(bin, args, { cwd: process.cwd(), stdio: 'inherit' });
if (r.error) {
  console.error(`check-deps: cannot run ${bin}: ${r.error.message}; run tools/setup`);
  process.exit(2);
}
process.exit(r.status ?? 1);
