// The Debian package as a new user meets it: tools/package builds it from this checkout, apt
// installs it into a brand-new Debian 12 root with every dependency from Debian (no nodejs
// package), and there the command, its man pages, its completion, the example config and the
// systemd units work; the agent it ships loads its BPF programs and reports a plaintext flow
// between two namespaces made in that root; removing and purging leave nothing of it behind.
// Minutes long and it downloads from Debian's mirror: `npm run test:package`, not `npm test`.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { BIN, run, runOk, waitFor } from '../../tools/lab/proc.js';
import { DebianRoot } from './debian-root.js';

const version = (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
let root: DebianRoot | undefined;
let deb = '';

before(async () => {
  if (process.getuid?.() !== 0) throw new Error('the package test makes a chroot and mounts: run it as root');
  const built = await runOk('bash', [path.join(repoRoot, 'tools/package')], { timeoutMs: 600_000 });
  deb = built.stdout.trim().split('\n').at(-1) ?? '';
  assert.equal(path.basename(deb), `sslwall_${version}_amd64.deb`, `tools/package should print the .deb's path last; printed:\n${built.stdout}`);
  root = await DebianRoot.create();
  fs.copyFileSync(deb, path.join(root.dir, 'tmp', path.basename(deb)));
});

after(async () => {
  await root?.destroy();
});

test('lintian finds nothing the package does not explain in its overrides', async () => {
  const l = await run(BIN.lintian, ['--no-tag-display-limit', deb], { timeoutMs: 600_000 });
  const tags = l.stdout.split('\n').filter((line) => /^[EWX]: /.test(line));
  assert.deepEqual(tags, [], `lintian tags (fix them, or override one with its reason in tools/packaging/lintian-overrides):\n${l.stdout}${l.stderr}`);
});

test('apt installs the package on a fresh Debian 12 with only Debian dependencies', async () => {
  const r = root!;
  assert.notEqual((await r.sh('command -v node')).code, 0, 'the fresh root must have no node of its own');
  await r.shOk('apt-get update -qq', 300_000);
  const inst = await r.shOk(`apt-get install -y --no-install-recommends /tmp/${path.basename(deb)}`, 600_000);
  // Every package apt fetched came from the root's sources, which are Debian's alone; the base
  // already holds some dependencies (iproute2 brings libbpf1), so check each one is now there.
  const fetched = [...inst.stdout.matchAll(/^Get:\d+ (\S+)/gm)].map((m) => m[1]!);
  assert.ok(fetched.length >= 2, `apt should have fetched the package's missing dependencies (bpftool) too:\n${inst.stdout}`);
  for (const from of fetched) assert.match(from, /^(http:\/\/deb\.debian\.org\/|https?:\/\/[^ ]*debian|\/tmp\/sslwall_)/, `fetched from ${from}`);
  const depends = (await runOk('dpkg-deb', ['-f', deb, 'Depends'])).stdout.split(',').map((d) => d.trim().split(' ')[0]!);
  assert.ok(depends.includes('libbpf1') && depends.includes('bpftool'), `Depends: ${depends.join(', ')}`);
  for (const d of depends) assert.equal((await r.sh(`dpkg -s ${d} | grep -q '^Status: install ok installed'`)).code, 0, `${d} should be installed`);
  assert.notEqual((await r.sh('dpkg -s nodejs')).code, 0, 'no nodejs package may be installed: the package ships its runtime');
  const conffiles = fs.readFileSync(path.join(r.dir, 'var/lib/dpkg/info/sslwall.conffiles'), 'utf8');
  for (const f of ['/etc/default/sslwall-agent', '/etc/default/sslwall-engine', '/etc/sslwall/config.json.example']) assert.match(conffiles, new RegExp(f));
  assert.match((await r.shOk('getent passwd sslwall')).stdout, /^sslwall:/, 'postinst makes the engine user');
  assert.equal((await r.shOk('stat -c %a /var/lib/sslwall')).stdout.trim(), '700');
});

test('the command runs: --version, --help, check of the shipped example', async () => {
  const r = root!;
  assert.equal((await r.shOk('sslwall --version')).stdout.trim(), version);
  assert.match((await r.shOk('sslwall --help')).stdout, /^Commands:\n {2}agent /m);
  assert.match((await r.shOk('sslwall agent --help')).stdout, /--config-file FILE/);
  const check = await r.shOk('sslwall check --config-file /etc/sslwall/config.json.example');
  assert.equal((JSON.parse(check.stdout) as { mode: string }).mode, 'passive');
});

test('man pages render and bash completion completes commands, subcommands and flags', async () => {
  const r = root!;
  await r.shOk('apt-get install -y -qq --no-install-recommends man-db', 300_000);
  const top = (await r.shOk('MANWIDTH=100 man -P cat sslwall')).stdout;
  assert.match(top, /SSLWALL\(1\)/);
  assert.match(top, /sslwall-agent\(1\)/, 'the main page points at the per-command pages');
  assert.match((await r.shOk('MANWIDTH=100 man -P cat sslwall-agent')).stdout, /--config-file FILE/);
  assert.match((await r.shOk('MANWIDTH=100 man -P cat sslwall-rollout')).stdout, /promote/);
  const complete = async (words: string[]) =>
    (
      await r.shOk(
        `bash -c '. /usr/share/bash-completion/completions/sslwall; COMP_WORDS=(${words.map((w) => `"${w}"`).join(' ')}); COMP_CWORD=${words.length - 1}; _sslwall; echo "\${COMPREPLY[*]}"'`,
      )
    ).stdout.trim();
  assert.equal(await complete(['sslwall', 'unin']), 'uninstall');
  assert.match(await complete(['sslwall', 'rollout', '']), /\bpromote\b/);
  assert.equal(await complete(['sslwall', 'agent', '--config-f']), '--config-file');
  assert.match(await complete(['sslwall', 'check', '--config-file', '/etc/sslwall/con']), /config\.json\.example/);
});

test('the systemd units pass systemd-analyze verify', async () => {
  const r = root!;
  await r.shOk('apt-get install -y -qq --no-install-recommends systemd', 600_000);
  const v = await r.sh('systemd-analyze verify /lib/systemd/system/sslwall-agent.service /lib/systemd/system/sslwall-engine.service');
  assert.equal(v.code, 0, `systemd-analyze verify failed:\n${v.stdout}${v.stderr}`);
  assert.equal(v.stderr.trim(), '', `systemd-analyze verify should say nothing about the units; said:\n${v.stderr}`);
  const unit = fs.readFileSync(path.join(r.dir, 'lib/systemd/system/sslwall-agent.service'), 'utf8');
  assert.match(unit, /^ExecStart=\/usr\/bin\/sslwall agent \$SSLWALL_AGENT_ARGS$/m);
  // The agent's node flags and malloc tuning: a required EnvironmentFile, so it must be there.
  assert.match(unit, /^EnvironmentFile=\/usr\/lib\/sslwall\/bin\/sslwall-agent\.env$/m);
  assert.match(fs.readFileSync(path.join(r.dir, 'usr/lib/sslwall/bin/sslwall-agent.env'), 'utf8'), /^NODE_OPTIONS="[^"]*--jitless/m);
  assert.ok(!fs.existsSync(path.join(r.dir, 'etc/systemd/system/multi-user.target.wants/sslwall-agent.service')), 'installing enables nothing');
});

test('the installed agent loads its BPF programs in the root and reports a plaintext flow', async () => {
  const r = root!;
  const id = randomBytes(3).toString('hex');
  const [nsA, nsB] = [`sslwpkg-a-${id}`, `sslwpkg-b-${id}`];
  // bpffs outside /sys: `ip netns exec` remounts /sys, which would hide a bpffs mounted there.
  const bpffs = `/run/sslwall-pkg-bpffs-${id}`;
  const log = path.join(r.dir, 'tmp/agent.log');
  await r.shOk(
    [
      `ip netns add ${nsA}`,
      `ip netns add ${nsB}`,
      `ip link add va-${id} netns ${nsA} type veth peer name vb-${id} netns ${nsB}`,
      `ip -n ${nsA} addr add 198.18.7.1/24 dev va-${id}`,
      `ip -n ${nsB} addr add 198.18.7.2/24 dev vb-${id}`,
      `ip -n ${nsA} link set va-${id} up`,
      `ip -n ${nsB} link set vb-${id} up`,
      `ip -n ${nsA} link set lo up`,
      `ip -n ${nsB} link set lo up`,
      `mkdir -p ${bpffs} && mount -t bpf bpf ${bpffs}`,
    ].join(' && '),
  );
  try {
    await r.shOk(
      `ip netns exec ${nsB} python3 -m http.server --bind 198.18.7.2 8080 >/tmp/http.log 2>&1 & ` +
        `ip netns exec ${nsA} sslwall agent --config-file /etc/sslwall/config.json.example --iface va-${id} --bpffs ${bpffs} --state-dir /tmp/agent-state >/tmp/agent.log 2>&1 &`,
    );
    const logText = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '');
    await waitFor('the packaged agent to be ready', () => /"event":"agent_ready"/.test(logText()), {
      timeoutMs: 60_000,
      explain: () => logText().slice(-3000),
    });
    await waitFor('the HTTP peer to listen', async () => (await r.sh(`ip netns exec ${nsA} curl -s -o /dev/null http://198.18.7.2:8080/`)).code === 0, {
      timeoutMs: 30_000,
    });
    await waitFor('a violation line for the plaintext HTTP flow', () => /"event":"violation".*"dport":8080|"dport":8080.*"event":"violation"/.test(logText()), {
      timeoutMs: 15_000,
      explain: () => logText().slice(-3000),
    });
    // A flow kept open (half a request, then silence) is what `sslwall flows` lists.
    await r.shOk(
      `ip netns exec ${nsA} python3 -c "import socket, time; s = socket.create_connection(('198.18.7.2', 8080)); s.send(b'GET /open HTTP/1.1\\r\\n'); time.sleep(60)" >/dev/null 2>&1 &`,
    );
    let flows = '';
    await waitFor(
      'sslwall flows to list the open plaintext flow',
      async () => {
        flows = (await r.shOk(`sslwall flows --json --bpffs ${bpffs}`)).stdout;
        return /"class":"plaintext"/.test(flows);
      },
      { timeoutMs: 15_000, explain: () => flows },
    );
  } finally {
    // Stop the agent and the peer (the only processes in the namespaces), then detach and unpin.
    await r.sh(
      `for ns in ${nsA} ${nsB}; do ip netns pids $ns | xargs -r kill; done; sleep 1; for ns in ${nsA} ${nsB}; do ip netns pids $ns | xargs -r kill -9; done`,
    );
    const un = await r.sh(`sslwall uninstall --bpffs ${bpffs} && umount ${bpffs} && rmdir ${bpffs}; ip netns del ${nsA}; ip netns del ${nsB}`);
    assert.equal(un.code, 0, `cleanup in the root failed:\n${un.stdout}${un.stderr}`);
  }
});

test('reinstalling, removing and purging: conffiles kept until purge, nothing of the package left', async () => {
  const r = root!;
  await r.shOk(`dpkg -i /tmp/${path.basename(deb)}`, 300_000);
  fs.appendFileSync(path.join(r.dir, 'etc/default/sslwall-agent'), '# edited by the operator\n');
  await r.shOk('apt-get remove -y sslwall', 300_000);
  assert.ok(!fs.existsSync(path.join(r.dir, 'usr/bin/sslwall')), 'remove takes the command away');
  assert.ok(!fs.existsSync(path.join(r.dir, 'usr/lib/sslwall')), 'remove takes /usr/lib/sslwall away');
  assert.match(fs.readFileSync(path.join(r.dir, 'etc/default/sslwall-agent'), 'utf8'), /edited by the operator/, 'remove keeps edited conffiles');
  await r.shOk('apt-get purge -y sslwall', 300_000);
  for (const f of ['etc/default/sslwall-agent', 'etc/sslwall', 'var/lib/sslwall']) assert.ok(!fs.existsSync(path.join(r.dir, f)), `purge removes /${f}`);
});
