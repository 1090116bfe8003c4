// `sslwall up`, the fleet of one: it comes up (etcd, engine, agent in a namespace), reports the
// agent in the engine, shows a violation for plaintext, and Ctrl-C removes all it made.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Proc } from '../../tools/lab/proc.js';
import { freePort } from '../../tools/lab/etcd.js';
import { SSLWALL } from '../../tools/lab/agent-proc.js';

test('sslwall up: starts, enforces passively, and cleans up on Ctrl-C', async () => {
  const port = await freePort();
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-up-test-'));
  const proc = Proc.start('up', process.execPath, [SSLWALL, 'up', '--listen', `127.0.0.1:${port}`], path.join(logDir, 'up.log'), { stopSignal: 'SIGINT' });
  const out = () => fs.readFileSync(proc.logFile, 'utf8');
  try {
    const deadline = Date.now() + 30000;
    while (!out().includes('ready. Try:')) {
      assert.ok(proc.running && Date.now() < deadline, `sslwall up did not become ready:\n${out()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const ns = /in netns (sslwall-up-[0-9a-f]+) /.exec(out())![1]!;
    const tiers = (await (await fetch(`http://127.0.0.1:${port}/api/tiers`)).json()) as Array<{ tier: string; agents: number }>;
    assert.deepEqual(tiers.map((t) => [t.tier, t.agents]), [['local', 1]]);
    execFileSync('nsenter', [`--net=/run/netns/${ns}`, 'curl', '-s', '--max-time', '3', 'http://10.203.0.2:8080/']);
    const until = Date.now() + 5000;
    while (!out().includes('"event":"violation"')) {
      assert.ok(Date.now() < until, `a violation line is shown:\n${out()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await proc.stop('SIGINT', 20000);
    assert.match(out(), /cleaned up\./);
    assert.equal(proc.exitCode, 0);
    const left = execFileSync('ip', ['netns', 'list']).toString();
    assert.ok(!left.includes(ns), `namespaces removed: ${left}`);
    assert.ok(!fs.readFileSync('/proc/mounts', 'utf8').includes('sslwall-up-'), 'bpffs and cgroup2 mounts removed');
  } finally {
    await proc.stop('SIGINT', 20000);
    fs.rmSync(logDir, { recursive: true, force: true });
  }
});
