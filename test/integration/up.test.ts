// `sslwall up`, the fleet of one: it comes up (etcd, engine, agent in a namespace), reports the
// agent in the engine, shows a violation for plaintext, and Ctrl-C removes all it made, also when
// its stdout was closed first (`npm start | tee log`, where Ctrl-C ends tee too).
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { SSLWALL } from '../../tools/lab/agent-proc.js';
import { freePort } from '../../tools/lab/etcd.js';
import { Proc, waitFor } from '../../tools/lab/proc.js';

interface UpBed {
  ns: string;
  peer: string;
  /** The client host's cgroup whose connections to the peer's port 8080 are wrapped. */
  cgroup: string;
  /** What the run made that must be gone afterwards: the bed's prefix (namespaces, mounts, temp dir). */
  prefix: string;
}

function parseReady(out: string): UpBed {
  const m = /in netns (\S+) \(peer \S+ at (\S+)\)/.exec(out);
  assert.ok(m, `sslwall up names its namespace and peer:\n${out}`);
  const cg = /processes in cgroup (\S+) connecting/.exec(out);
  assert.ok(cg, `sslwall up names the cgroup whose connections are wrapped:\n${out}`);
  return { ns: m[1]!, peer: m[2]!, cgroup: cg[1]!, prefix: m[1]!.replace(/c$/, '') };
}

function assertAllGone(bed: UpBed): void {
  const left = execFileSync('ip', ['netns', 'list']).toString();
  assert.ok(!left.includes(bed.prefix), `namespaces ${bed.prefix}* removed; left: ${left}`);
  const mounts = fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((l) => l.includes(bed.prefix));
  assert.deepEqual(mounts, [], 'bpffs and cgroup2 mounts removed');
  const temp = fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith(bed.prefix));
  assert.deepEqual(temp, [], 'temp folder removed');
}

test('sslwall up: starts, enforces passively, and cleans up on Ctrl-C', async () => {
  const port = await freePort();
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-up-test-'));
  const proc = Proc.start('up', process.execPath, [SSLWALL, 'up', '--listen', `127.0.0.1:${port}`], path.join(logDir, 'up.log'), { stopSignal: 'SIGINT' });
  const out = () => fs.readFileSync(proc.logFile, 'utf8');
  try {
    await waitFor('sslwall up to print "ready. Try:"', () => out().includes('ready. Try:'), {
      timeoutMs: 60_000,
      abortIf: () => (proc.running ? undefined : 'it exited'),
      explain: out,
    });
    const bed = parseReady(out());
    const token = /SSLWALL_TOKEN=(\S+) \S+ config get --tier local/.exec(out())?.[1];
    assert.ok(token, `sslwall up suggests commands carrying an operator token:\n${out()}`);
    assert.equal((await fetch(`http://127.0.0.1:${port}/api/tiers`)).status, 401, 'the API wants the token');
    const tiers = (await (await fetch(`http://127.0.0.1:${port}/api/tiers`, { headers: { authorization: `Bearer ${token}` } })).json()) as Array<{
      tier: string;
      agents: number;
    }>;
    assert.deepEqual(
      tiers.map((t) => [t.tier, t.agents]),
      [['local', 2]],
    );
    // An application of the client host (in its cgroup) to the wrapped port: carried in TLS.
    const wrapped = execFileSync('nsenter', [
      `--net=/run/netns/${bed.ns}`,
      'sh',
      '-c',
      `echo $$ > ${bed.cgroup}/cgroup.procs && exec curl -s --max-time 3 http://${bed.peer}:8080/`,
    ]).toString();
    assert.match(wrapped, /hello from the plaintext peer on port 8080/);
    await waitFor(
      'the wrapped request shown as ttls_closed on both hosts',
      () => /agent: .*"ttls_closed"/.test(out()) && /peer : .*"ttls_closed"/.test(out()),
      {
        timeoutMs: 10_000,
        explain: out,
      },
    );
    assert.doesNotMatch(out(), /"event":"violation"/, 'the wrapped request is no violation');
    execFileSync('nsenter', [`--net=/run/netns/${bed.ns}`, 'curl', '-s', '--max-time', '3', `http://${bed.peer}:8081/`]);
    await waitFor('a violation line shown for the port that is not wrapped', () => out().includes('"event":"violation"'), { timeoutMs: 10_000, explain: out });
    await proc.stop('SIGINT', 30_000);
    assert.match(out(), /cleaned up\.\n/);
    assert.equal(proc.exitCode, 0);
    assertAllGone(bed);
  } finally {
    await proc.stop('SIGINT', 30_000);
    fs.rmSync(logDir, { recursive: true, force: true });
  }
});

test('sslwall up: Ctrl-C cleans up even after its stdout was closed', async () => {
  const port = await freePort();
  const child = spawn(process.execPath, [SSLWALL, 'up', '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await waitFor('sslwall up to print "ready. Try:"', () => out.includes('ready. Try:'), {
      timeoutMs: 60_000,
      abortIf: () => (child.exitCode === null ? undefined : 'it exited'),
      explain: () => out + err,
    });
    const bed = parseReady(out);
    // The reader goes away, as tee does on Ctrl-C: the next write to stdout fails with EPIPE.
    child.stdout.destroy();
    child.kill('SIGINT');
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000))]);
    assert.equal(code, 0, `expected exit 0 after Ctrl-C, got ${code}; stderr:\n${err.slice(-3000)}`);
    assert.doesNotMatch(err, /EPIPE|cleanup_problem/, 'no EPIPE crash and no cleanup problem');
    assertAllGone(bed);
  } finally {
    if (child.exitCode === null) {
      child.kill('SIGINT');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000))]);
    }
  }
});
