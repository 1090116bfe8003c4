// `sslwall up`: the fleet of one. A local etcd (Debian's binary, data in a temp folder) unless
// --etcd is given, a signing key pair, the engine with its dashboard, and an agent in passive
// mode on a veth pair between two network namespaces of its own (never on this machine's own
// interfaces). Prints what to try next; Ctrl-C removes everything it made.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { createEtcdClient } from '../../schemas/etcd.js';
import { startEngine } from '../../rollout/main.js';
import { generateKeyPair } from '../../rollout/signing.js';
import { SslwallError } from '../../schemas/errors.js';
import { repoRoot } from '../../agent/paths.js';

const HELP = `Usage: sslwall up [--etcd URL] [--listen HOST:PORT] [--tier TIER]

The fleet of one, to try sslwall on a single machine: starts a local etcd (unless --etcd), makes
a signing key pair, runs the engine (API, dashboard, /metrics) and an agent in passive mode on a
veth pair inside network namespaces of its own, with a plaintext HTTP peer to poke at.
Prints what to try next. Ctrl-C stops everything and removes what it made. npm start runs it.

Options:
  --etcd URL          use this etcd (on 127.0.0.1) instead of starting one
  --listen HOST:PORT  engine API and dashboard                      [127.0.0.1:7070]
  --tier TIER         the tier of the local agent                            [local]
`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: 'pipe' });
}

export async function upCommand(argv: string[]): Promise<number> {
  let v: { etcd?: string; listen?: string; tier?: string; help?: boolean };
  try {
    ({ values: v } = parseArgs({ args: argv, options: { etcd: { type: 'string' }, listen: { type: 'string' }, tier: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_USAGE', `${(err as Error).message}; run sslwall up --help`);
  }
  if (v.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (process.getuid?.() !== 0) throw new SslwallError('SSLWALL_E_USAGE', 'sslwall up creates network namespaces and loads BPF programs: run it as root');
  const tier = v.tier ?? 'local';
  const listen = v.listen ?? '127.0.0.1:7070';
  const id = randomBytes(2).toString('hex');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-up-'));
  const nsAgent = `sslwall-up-${id}`;
  const nsPeer = `sslwall-up-${id}-peer`;
  const children: ChildProcess[] = [];
  const cleanups: Array<() => void | Promise<void>> = [];
  const log = pino({ base: { component: 'up' } }, pino.destination(2));
  const say = (s: string) => process.stdout.write(s + '\n');

  const cleanup = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {
        // Best effort: carry on removing the rest.
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  const start = (name: string, cmd: string, args: string[], out: 'inherit' | 'log' = 'log'): ChildProcess => {
    const logFd = fs.openSync(path.join(dir, `${name}.log`), 'a');
    const child = spawn(cmd, args, { stdio: ['ignore', out === 'inherit' ? 'pipe' : logFd, logFd] });
    children.push(child);
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => setTimeout(r, 100));
        for (let i = 0; i < 50 && child.exitCode === null && child.signalCode === null; i++) await new Promise((r) => setTimeout(r, 100));
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    });
    return child;
  };

  try {
    // etcd
    let etcdUrl = v.etcd;
    if (!etcdUrl) {
      const [cp, pp] = [await freePort(), await freePort()];
      etcdUrl = `http://127.0.0.1:${cp}`;
      start('etcd', 'etcd', ['--name', 'up', '--data-dir', path.join(dir, 'etcd'), '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl, '--listen-peer-urls', `http://127.0.0.1:${pp}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${pp}`, '--initial-cluster', `up=http://127.0.0.1:${pp}`]);
      say(`etcd:      ${etcdUrl} (data in ${dir}/etcd)`);
    }
    // A fresh etcd takes a moment; the engine starts once it answers.
    const probe = createEtcdClient({ endpoints: [etcdUrl] });
    try {
      for (let i = 0; ; i++) {
        try {
          await probe.get('health-probe').string();
          break;
        } catch (err) {
          if (i > 100) throw new SslwallError('SSLWALL_E_ETCD', `etcd at ${etcdUrl} does not answer: ${(err as Error).message}; see ${dir}/etcd.log`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } finally {
      probe.close();
    }

    // keys, engine, first config
    const keys = generateKeyPair(path.join(dir, 'keys'));
    const { engine, stop: stopEngine } = await startEngine({ etcd: { endpoints: [etcdUrl] }, signingKey: keys.signingKey, id: `up-${id}`, listen }, log.child({ component: 'engine' }));
    cleanups.push(stopEngine);
    if (!(await engine.store.head(tier))) {
      await engine.store.write(tier, { config: { mode: 'passive', bypass: { ports: [22], cidrs: [] }, starttls: { smtp: [25, 587], imap: [], pop3: [], ftp: [], postgres: [5432], mysql: [] }, connect: { ports: [3128] } }, rollout: { mode: 'passive', percent: 100, otherwise: 'off', salt: randomBytes(4).toString('hex') } }, { author: 'sslwall up', message: 'first config' });
    }
    say(`engine:    http://${listen}  (dashboard, API, /metrics); signing key ${keys.signingKey}`);

    // namespaces: the agent's host and a peer, joined by a veth pair
    for (const ns of [nsAgent, nsPeer]) {
      sh('ip', ['netns', 'add', ns]);
      cleanups.push(() => sh('ip', ['netns', 'del', ns]));
    }
    sh('ip', ['-n', nsAgent, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1', 'netns', nsPeer]);
    const addrs: Array<[string, string, string]> = [[nsAgent, 'up0', '10.203.0.1/24'], [nsPeer, 'up1', '10.203.0.2/24']];
    for (const [ns, dev, addr] of addrs) {
      sh('ip', ['-n', ns, 'addr', 'add', addr, 'dev', dev]);
      sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    // bpffs and cgroup2 of our own, in this mount namespace (pins outlive the agent process)
    const bpffs = path.join(dir, 'bpffs');
    const cg2 = path.join(dir, 'cgroup2');
    fs.mkdirSync(bpffs);
    fs.mkdirSync(cg2);
    sh('mount', ['-t', 'bpf', 'bpf', bpffs]);
    cleanups.push(() => sh('umount', [bpffs]));
    sh('mount', ['-t', 'cgroup2', 'none', cg2]);
    cleanups.push(() => sh('umount', [cg2]));
    const cgroup = path.join(cg2, `sslwall-up-${id}`);
    fs.mkdirSync(cgroup);
    cleanups.push(() => {
      const bypass = path.join(cgroup, 'sslwall-bypass');
      if (fs.existsSync(bypass)) fs.rmdirSync(bypass);
      fs.rmdirSync(cgroup);
    });

    // etcd reaches into the namespace over a unix socket (namespaces do not isolate the filesystem)
    const sock = path.join(dir, 'etcd.sock');
    const etcdPort = new URL(etcdUrl).port || '2379';
    start('bridge-host', 'socat', [`UNIX-LISTEN:${sock},fork,mode=600`, `TCP:127.0.0.1:${etcdPort}`]);
    start('bridge-ns', 'nsenter', [`--net=/run/netns/${nsAgent}`, 'socat', 'TCP-LISTEN:2379,bind=127.0.0.1,fork,reuseaddr', `UNIX-CONNECT:${sock}`]);
    // peers: plaintext HTTP on 8080 and a plaintext sink on 9000
    start('peer-http', 'nsenter', [`--net=/run/netns/${nsPeer}`, process.execPath, '-e', "require('http').createServer((q, r) => r.end('hello from the plaintext peer\\n')).listen(8080, '10.203.0.2')"]);
    for (let i = 0; ; i++) {
      // Listening before we say "ready": the first curl must find it.
      const listening = execFileSync('nsenter', [`--net=/run/netns/${nsPeer}`, 'ss', '-Hltn', 'sport = :8080']).toString().trim() !== '';
      if (listening) break;
      if (i > 100) throw new SslwallError('SSLWALL_E_INTERNAL', `the plaintext peer did not start; see ${dir}/peer-http.log`);
      await new Promise((r) => setTimeout(r, 50));
    }

    // the agent
    const agent = start('agent', 'nsenter', [`--net=/run/netns/${nsAgent}`, process.execPath, path.join(repoRoot, 'bin/sslwall.js'), 'agent', '--etcd', 'http://127.0.0.1:2379', '--tier', tier, '--host-id', `up-${id}`, '--verify-key', keys.verifyKey, '--iface', 'up0', '--bpffs', bpffs, '--cgroup', cgroup, '--state-dir', path.join(dir, 'state')], 'inherit');
    cleanups.splice(cleanups.length - 1, 0, () => {
      try {
        execFileSync('nsenter', [`--net=/run/netns/${nsAgent}`, process.execPath, path.join(repoRoot, 'bin/sslwall.js'), 'uninstall', '--bpffs', bpffs], { stdio: 'pipe' });
      } catch {
        // Already gone.
      }
    });
    let ready = false;
    agent.stdout!.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line.trim()) continue;
        if (line.includes('"agent_ready"')) ready = true;
        if (line.includes('"event":"violation"') || line.includes('"config_applied"') || line.includes('"config_refused"')) say(`agent: ${line}`);
      }
    });
    for (let i = 0; !ready; i++) {
      if (agent.exitCode !== null || i > 150) throw new SslwallError('SSLWALL_E_INTERNAL', `the agent did not start; see ${dir}/agent.log`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const me = path.join(repoRoot, 'bin/sslwall.js');
    say(`agent:     passive, tier ${tier}, on up0 in netns ${nsAgent} (peer ${nsPeer} at 10.203.0.2)`);
    say('');
    say('ready. Try:');
    say(`  ip netns exec ${nsAgent} curl -s http://10.203.0.2:8080/      # plaintext: a violation line appears here`);
    say(`  ip netns exec ${nsAgent} ${process.execPath} ${me} flows --bpffs ${bpffs}`);
    say(`  ${me} config get --tier ${tier} --engine http://${listen}`);
    say(`  ${me} rollout start --tier ${tier} --stages active:100 --bake 30s --engine http://${listen}`);
    say(`  ${me} rollout watch --tier ${tier} --engine http://${listen}`);
    say(`  open http://${listen}/ for the dashboard`);
    say('Ctrl-C to stop and remove everything.');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
      agent.once('exit', () => resolve());
    });
    say('stopping…');
    return 0;
  } catch (err) {
    log.error({ event: 'up_failed', err: (err as Error).message }, 'sslwall up failed; cleaning up');
    throw err;
  } finally {
    await cleanup();
    say('cleaned up.');
  }
}
