#!/usr/bin/env node
import { spawnSync } from 'node:child_process';
// Runs every compiled test file with node's test runner, one file at a time: kernel tests
// share the machine's BPF and network namespaces, and each file cleans up after itself.
// Usage: npm test [-- FILTER...]   (FILTER: substrings of test file paths)
//        npm run test:unit          (= --unit: only test/unit, which needs no root, addon, BPF or etcd)
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const dist = path.join(root, 'dist/test');
if (!existsSync(dist)) {
  console.error('run-tests: dist/test is missing; run tools/setup (npm run build)');
  process.exit(2);
}
const args = process.argv.slice(2);
const unitOnly = args[0] === '--unit';
if (!unitOnly && process.getuid?.() !== 0) {
  console.error('run-tests: the tests load BPF programs and create network namespaces: run them as root (or only the unit layer: npm run test:unit)');
  process.exit(2);
}

function walk(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.js') ? [p] : [];
  });
}

const filters = unitOnly ? args.slice(1) : args;
if (!unitOnly) {
  // Beds left by a run that died (SIGKILL, a crashed machine) go before this run makes its own.
  const { sweepStale } = await import(path.join(dist, '../tools/lab/netns.js'));
  const removed = sweepStale();
  if (removed.length) console.error(`run-tests: removed ${removed.length} namespace(s) left by dead runs: ${removed.join(' ')}`);
}
// Fast layers first: a broken classifier fails in seconds, before the integration suites run.
const order = ['unit', 'native', 'bpf', 'lib', 'integration', 'package'];
const files = walk(unitOnly ? path.join(dist, 'unit') : dist)
  // test/package builds the .deb and installs it into a new Debian root from Debian's mirror, for
  // minutes: only when a filter names it (npm run test:package).
  .filter((f) => !path.relative(dist, f).startsWith(`package${path.sep}`) || filters.some((s) => path.relative(root, f).includes(s)))
  // Filters match the path inside the checkout, so the checkout's own path (say /work/wt-unit) matches nothing.
  .filter((f) => filters.length === 0 || filters.some((s) => path.relative(root, f).includes(s)))
  .sort((a, b) => order.indexOf(path.relative(dist, a).split(path.sep)[0]) - order.indexOf(path.relative(dist, b).split(path.sep)[0]) || a.localeCompare(b));
if (files.length === 0) {
  console.error(`run-tests: no ${unitOnly ? 'unit ' : ''}test file matches ${filters.join(' ')}`);
  process.exit(2);
}
const r = spawnSync(process.execPath, ['--enable-source-maps', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
  stdio: 'inherit',
  cwd: root,
});
process.exit(r.status ?? 1);
