// The agent's process environment has one source, bin/sslwall-agent.env: the systemd unit reads
// it, the lab starts agents (tests, benches, `sslwall up`) with it, and node accepts it.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { AGENT_ENV_FILE, shippedAgentEnv } from '../../tools/lab/agent-proc.js';

const unit = fs.readFileSync(path.join(repoRoot, 'tools/sslwall-agent.service'), 'utf8');

test('the agent unit reads bin/sslwall-agent.env, then /etc/default/sslwall-agent, and sets no node or malloc variable of its own', () => {
  const files = [...unit.matchAll(/^EnvironmentFile=(.*)$/gm)].map((m) => m[1]);
  assert.deepEqual(
    files,
    ['/opt/sslwall/bin/sslwall-agent.env', '-/etc/default/sslwall-agent'],
    'the shipped file first (required), the operator overrides after',
  );
  const own = [...unit.matchAll(/^Environment=([A-Z_]+)=/gm)].map((m) => m[1]);
  assert.deepEqual(own, ['SSLWALL_AGENT_ARGS'], `the unit's own Environment= lines should carry only the flags variable; saw ${own.join(', ')}`);
});

test('bin/sslwall-agent.env parses to NODE_OPTIONS and the malloc tuning the bench and tests start the agent with', () => {
  const env = shippedAgentEnv();
  assert.match(env.NODE_OPTIONS ?? '', /--max-semi-space-size=1/);
  assert.match(env.NODE_OPTIONS ?? '', /--jitless/);
  assert.equal(env.MALLOC_ARENA_MAX, '2');
  // Quotes are systemd's syntax, not part of the value.
  assert.ok(!Object.values(env).some((v) => v.includes('"')), `no quotes in the values: ${JSON.stringify(env)}`);
  assert.ok(!fs.readFileSync(AGENT_ENV_FILE, 'utf8').includes('\r'), 'plain LF lines');
});

test('node starts with the shipped environment: every NODE_OPTIONS flag is one node allows there', () => {
  const r = spawnSync(process.execPath, ['-e', '0'], {
    env: { ...process.env, ...shippedAgentEnv() },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `node refused the shipped environment: ${r.stderr}`);
  // --jitless turns WebAssembly off and V8 says so once at start; anything else is a refusal.
  const other = r.stderr.split('\n').filter((l) => l && !/disabling flag --expose_wasm/.test(l));
  assert.deepEqual(other, [], 'node said nothing else about the flags');
});
