// The sslwall command as a user meets it: help, usage errors, config errors with exit codes.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { runHost } from '../../tools/lab/agent-proc.js';
import { freePort } from '../../tools/lab/etcd.js';

test('sslwall --help lists the commands; each command has --help', async () => {
  const r = await runHost(['--help']);
  assert.equal(r.code, 0);
  for (const c of ['agent', 'flows', 'exec', 'uninstall', 'bench']) assert.match(r.stdout, new RegExp(`^  ${c} `, 'm'));
  for (const c of ['agent', 'flows', 'exec', 'uninstall', 'check']) {
    const h = await runHost([c, '--help']);
    assert.equal(h.code, 0, `${c} --help`);
    assert.match(h.stdout, new RegExp(`Usage: sslwall ${c}`));
  }
});

test('usage errors exit 2 and say what to do', async () => {
  const unknown = await runHost(['frobnicate']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /SSLWALL_E_USAGE: unknown command 'frobnicate'; run sslwall --help/);
  const noSource = await runHost(['agent', '--iface', 'does-not-exist0']);
  assert.equal(noSource.code, 2);
  assert.match(noSource.stderr, /--config-file FILE, or --etcd URL --tier TIER/);
  const noTier = await runHost(['agent', '--etcd', 'http://127.0.0.1:1']);
  assert.equal(noTier.code, 2);
  assert.match(noTier.stderr, /--tier/);
  const badSpread = await runHost(['agent', '--etcd', 'http://127.0.0.1:1', '--tier', 'web', '--insecure-unsigned', '--health-spread', '90000']);
  assert.equal(badSpread.code, 2);
  assert.match(badSpread.stderr, /--health-spread 90000: expected milliseconds, an integer from 0 to 60000/);
  const badFlag = await runHost(['flows', '--jsn']);
  assert.equal(badFlag.code, 2);
  assert.match(badFlag.stderr, /run sslwall flows --help/);
});

test('the etcd flags: the agent, the engine and sslwall etcd refuse the same combinations, before connecting', async () => {
  // Port 1: nothing listens; a command that got past its checks would fail on the connection
  // instead (another exit code and message), so each refusal below is the check's.
  const etcd = ['--etcd', 'https://127.0.0.1:1'];
  const commands: [string, string[]][] = [
    ['agent', ['agent', ...etcd, '--tier', 'web', '--insecure-unsigned']],
    ['engine', ['engine', ...etcd, '--signing-key', '/nonexistent/signing.key']],
    ['etcd setup', ['etcd', 'setup', ...etcd]],
  ];
  const refusals: [string[], RegExp][] = [
    [['--etcd-cert', 'c.pem', '--etcd-key', 'k.pem'], /--etcd-cert\/--etcd-key need --etcd-cacert/],
    [['--etcd-cacert', 'ca.pem', '--etcd-cert', 'c.pem'], /--etcd-cert and --etcd-key go together .*; --etcd-key is missing/],
    [['--etcd-cacert', 'ca.pem', '--etcd-key', 'k.pem'], /--etcd-cert and --etcd-key go together .*; --etcd-cert is missing/],
    [['--etcd-user', 'root'], /--etcd-user needs --etcd-password-file FILE/],
    [['--etcd-password-file', 'pw'], /--etcd-password-file needs --etcd-user NAME/],
  ];
  for (const [name, args] of commands) {
    for (const [extra, message] of refusals) {
      const r = await runHost([...args, ...extra]);
      assert.equal(r.code, 2, `${name} ${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, `${name} ${extra.join(' ')}`);
    }
    const none = await runHost([...args.filter((a) => !etcd.includes(a)), '--etcd', ' , ']);
    assert.equal(none.code, 2, `${name} with an empty --etcd`);
    assert.match(none.stderr, new RegExp(`${name} needs --etcd URL\\[,URL\\.\\.\\.\\]`));
  }
});

test('an agent with --config-file refuses the flags only the etcd source reads, instead of ignoring them', async () => {
  const r = await runHost(['agent', '--config-file', '/nonexistent/config.json', '--etcd-cacert', 'ca.pem', '--tier', 'web']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--etcd-cacert, --tier: only with --etcd; an agent with --config-file reads no etcd/);
});

test('an invalid config file: exit 2, naming the field', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-cli-'));
  try {
    const f = path.join(dir, 'c.json');
    fs.writeFileSync(f, JSON.stringify({ mode: 'passive', bypass: { ports: [22, 99999] } }));
    const r = await runHost(['check', '--config-file', f]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /SSLWALL_E_CONFIG_INVALID: .*bypass\.ports\[1\]/);
    const a = await runHost(['agent', '--config-file', f, '--iface', 'does-not-exist0', '--state-dir', dir]);
    assert.equal(a.code, 2, 'the agent refuses to start on an invalid config with no last good one');
    fs.writeFileSync(f, JSON.stringify({ mode: 'passive' }));
    const ok = await runHost(['check', '--config-file', f]);
    assert.equal(ok.code, 0);
    assert.deepEqual(JSON.parse(ok.stdout).bypass, { ports: [], cidrs: [] });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a --bpffs folder that is not a BPF filesystem is refused with how to mount one', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-cli-'));
  try {
    const f = path.join(dir, 'c.json');
    fs.writeFileSync(f, JSON.stringify({ mode: 'passive' }));
    const r = await runHost(['agent', '--config-file', f, '--iface', 'does-not-exist0', '--bpffs', dir, '--state-dir', dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /SSLWALL_E_BPFFS: .* is not on a BPF filesystem; mount one: mount -t bpf bpf/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an engine that cannot be reached: SSLWALL_E_ENGINE, saying what to do', async () => {
  const port = await freePort();
  const r = await runHost(['rollout', 'status', '--tier', 'web', '--engine', `http://127.0.0.1:${port}`]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(
      `SSLWALL_E_ENGINE: cannot reach the engine at http://127.0.0.1:${port}: connect ECONNREFUSED .*; start one \\(sslwall engine\\) or pass --engine URL`,
    ),
  );
});

test('sslwall token: adds a user to a new 0600 users file and prints only its token, once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-cli-'));
  try {
    const f = path.join(dir, 'users.json');
    const a = await runHost(['token', '--users', f, '--name', 'alice', '--role', 'operator']);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /^[A-Za-z0-9_-]{43}\n$/, 'the token alone on one line');
    assert.equal(fs.statSync(f).mode & 0o777, 0o600);
    const b = await runHost(['token', '--users', f, '--name', 'am', '--role', 'alerts']);
    assert.equal(b.code, 0, b.stderr);
    const users = JSON.parse(fs.readFileSync(f, 'utf8')) as Array<{ name: string; role: string; token_sha256: string }>;
    assert.deepEqual(
      users.map((u) => [u.name, u.role]),
      [
        ['alice', 'operator'],
        ['am', 'alerts'],
      ],
    );
    assert.equal(users[0]!.token_sha256, createHash('sha256').update(a.stdout.trim()).digest('hex'), 'only the hash is kept');
    assert.ok(!fs.readFileSync(f, 'utf8').includes(a.stdout.trim()), 'the token itself is not in the file');
    const again = await runHost(['token', '--users', f, '--name', 'alice', '--role', 'viewer']);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /SSLWALL_E_USAGE: user alice is already in/);
    const badRole = await runHost(['token', '--users', f, '--name', 'bob', '--role', 'admin']);
    assert.equal(badRole.code, 2);
    assert.match(badRole.stderr, /--role admin: use viewer, operator or alerts/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
