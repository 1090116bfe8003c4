// The shipped Prometheus alert rules (tools/ops/prometheus/sslwall.rules.yml) are valid and do
// what their unit tests say (sslwall.rules.test.yml), checked by Debian's promtool.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { BIN } from '../../tools/lab/prerequisites.js';
import { requireBins } from '../../tools/lab/proc.js';

const dir = path.join(repoRoot, 'tools/ops/prometheus');

function promtool(args: string[]): string {
  requireBins(['promtool']);
  try {
    return execFileSync(BIN.promtool, args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    assert.fail(`promtool ${args.join(' ')} failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

test('promtool check rules: the alert rules are valid', () => {
  assert.match(promtool(['check', 'rules', 'sslwall.rules.yml']), /SUCCESS: 11 rules found/);
});

test('promtool test rules: each alert fires when it should, with its routing labels, and not before', () => {
  assert.match(promtool(['test', 'rules', 'sslwall.rules.test.yml']), /SUCCESS/);
});
