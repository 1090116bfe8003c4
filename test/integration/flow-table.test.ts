// The flow table against a real kernel, with the agent on a server host: connections opened
// while the mode was off are registered when it turns passive (before their next packet); a
// bounded flood of 100,000 spoofed SYNs leaves no entry in the flow table and evicts none of the
// idle long-lived flows (TLS and plaintext, local and behind this host), which keep their class
// and verdict; forged SYNs on live flows' 4-tuples (and a spray of every source port) reset
// nothing; a RST removes a flow. One more namespace sits behind the server host ("app"), routed
// through it: flows whose sockets live there are the ones no socket event of this host reports.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type FlowRecord, readCounters } from '../../agent/flows.js';
import { pinLayout, repoRoot } from '../../agent/paths.js';
import { type MapHandle, native } from '../../native/index.js';
import { type AgentEnv, AgentProc, agentEnv, sslwall, writeConfig } from '../../tools/lab/agent-proc.js';
import { type Certs, makeCerts } from '../../tools/lab/certs.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { BIN, type Proc, runOk } from '../../tools/lab/proc.js';

const LOCAL = { tls: 9443, plain: 9080 };
const APP = { tls: 8443, plain: 8080 };
const FLOOD = 100_000;
const SYNS = path.join(repoRoot, 'test/integration/fixtures/syns.py');
const PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'flow-table-peer.js');

function config(mode: 'off' | 'passive' | 'active') {
  return { mode, bypass: { ports: [22], cidrs: [] } };
}

function jsonLines(p: Proc): Array<Record<string, unknown>> {
  if (!fs.existsSync(p.logFile)) return [];
  return fs
    .readFileSync(p.logFile, 'utf8')
    .split('\n')
    .flatMap((l) => {
      try {
        return l.startsWith('{') ? [JSON.parse(l) as Record<string, unknown>] : [];
      } catch {
        return [];
      }
    });
}

async function until<T>(fn: () => T | undefined | Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`expected ${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('flow table hygiene on a server host', () => {
  let tb: Testbed;
  let certs: Certs;
  let env: AgentEnv;
  let agent: AgentProc | undefined;
  let appNs: string;
  let appIp: string;
  let clients: Proc;
  let clients2: Proc;
  let localServer: Proc;
  let localServerCgroup: string;
  let appServer: Proc;
  const lport = new Map<string, number>();

  async function flows(): Promise<FlowRecord[]> {
    return JSON.parse((await sslwall(env, ['flows', '--json', '--bpffs', env.bpffs, '--cgroup', env.cgroup])).stdout) as FlowRecord[];
  }

  /** The flow of a named client connection, from `sslwall flows`. */
  async function flowOf(name: string): Promise<FlowRecord | undefined> {
    const port = lport.get(name);
    assert.ok(port, `connection ${name} never opened`);
    return (await flows()).find((f) => f.sport === port || f.dport === port);
  }

  async function setMode(mode: 'off' | 'passive' | 'active') {
    const n = agent!.lines().filter((l) => l.event === 'config_applied').length;
    writeConfig(env, config(mode));
    await agent!.waitFor(() => agent!.lines().filter((l) => l.event === 'config_applied').length > n, 10000, `config_applied (${mode})`);
  }

  async function poke(p: Proc) {
    const n = jsonLines(p).filter((l) => l.event === 'poked').length;
    process.kill(p.pid, 'SIGUSR1');
    await until(() => jsonLines(p).filter((l) => l.event === 'poked').length > n || undefined, 5000, 'the poke');
  }

  /** Bytes each server peer received from a client port. */
  function received(server: Proc, port: number): number {
    return jsonLines(server)
      .filter((l) => l.event === 'data' && l.rport === port)
      .reduce((s, l) => s + (l.bytes as number), 0);
  }

  before(async () => {
    tb = await createTestbed('flow-table');
    certs = await makeCerts(tb.tempDir('certs'), { ips: [tb.server.ipv4], dnsNames: ['server.test'] });
    const cgroup2 = await tb.mountCgroup2();

    // The app namespace, routed through the server host: client -> server (forwarding) -> app.
    appNs = await tb.addNamespace('a');
    appIp = `10.202.${tb.subnet}.2`;
    const fwdIf = `${tb.prefix}f`;
    await runOk(BIN.ip, ['link', 'add', fwdIf, 'netns', tb.server.ns, 'type', 'veth', 'peer', 'name', appNs, 'netns', appNs]);
    const ipn = (ns: string, ...a: string[]) => runOk(BIN.ip, ['-n', ns, ...a]);
    await ipn(tb.server.ns, 'addr', 'add', `10.202.${tb.subnet}.1/24`, 'dev', fwdIf);
    await ipn(tb.server.ns, 'link', 'set', fwdIf, 'up');
    await ipn(appNs, 'addr', 'add', `${appIp}/24`, 'dev', appNs);
    await ipn(appNs, 'link', 'set', appNs, 'up');
    await ipn(appNs, 'route', 'add', 'default', 'via', `10.202.${tb.subnet}.1`);
    await ipn(tb.client.ns, 'route', 'add', `10.202.${tb.subnet}.0/24`, 'via', tb.server.ipv4);
    // The flood's spoofed sources: the server answers them towards the client host, which drops the answers.
    await ipn(tb.server.ns, 'route', 'add', '10.203.0.0/16', 'via', tb.client.ipv4);
    await tb.execOk(tb.server.ns, '/usr/sbin/sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);

    // In a cgroup of its own, so that its registered flows can be seen to name it.
    localServerCgroup = tb.cgroup(cgroup2, 'local-server');
    localServer = tb.spawn('server', 'local-server', process.execPath, [PEER, 'server', certs.cert, certs.key, String(LOCAL.tls), String(LOCAL.plain)], {
      cgroup: localServerCgroup,
    });
    appServer = tb.spawn(appNs, 'app-server', process.execPath, [PEER, 'server', certs.cert, certs.key, String(APP.tls), String(APP.plain)]);
    for (const s of [localServer, appServer]) await until(() => jsonLines(s).some((l) => l.event === 'listening') || undefined, 10000, `${s.name} listening`);

    env = await agentEnv(tb, 'server', cgroup2);
    writeConfig(env, config('off'));
    agent = await AgentProc.start(env);
  });

  after(async () => {
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    await tb?.destroy();
  });

  test('connections opened while the mode was off are registered when it turns passive, before their next packet', async () => {
    clients = tb.spawn('client', 'clients', process.execPath, [
      PEER,
      'client',
      certs.caCert,
      `ltls=tls@${tb.server.ipv4}:${LOCAL.tls}`,
      `lplain=plain@${tb.server.ipv4}:${LOCAL.plain}`,
      `ftls=tls@${appIp}:${APP.tls}`,
      `fplain=plain@${appIp}:${APP.plain}`,
    ]);
    await until(() => (jsonLines(clients).filter((l) => l.event === 'open').length === 4 ? true : undefined), 10000, 'four connections open');
    for (const l of jsonLines(clients).filter((l) => l.event === 'open')) lport.set(l.name as string, l.lport as number);
    assert.deepEqual(await flows(), [], 'mode off: the filter keeps no state');

    await setMode('passive');
    const reg = await agent!.waitFor((l) => l.event === 'open_flows_registered', 5000, 'open_flows_registered');
    assert.equal(reg.flows, 2, 'the two connections with a socket on this host (the app ones have none here)');
    for (const name of ['ltls', 'lplain']) {
      const f = await flowOf(name);
      assert.equal(f?.class, 'pending', `${name} is known (joined midway) before it sends: ${JSON.stringify(f)}`);
      // Its owner is the local server's socket, named by cgroup (no pid: the opener is not known).
      assert.equal(f?.cgroup, `/${path.basename(localServerCgroup)}`, `${name} names the server's cgroup: ${JSON.stringify(f)}`);
    }
    await poke(clients);
    for (const [name, cls] of [
      ['ltls', 'tls'],
      ['lplain', 'plaintext'],
      ['ftls', 'tls'],
      ['fplain', 'plaintext'],
    ] as const) {
      await until(async () => ((await flowOf(name))?.class === cls ? true : undefined), 5000, `${name} classified ${cls}`);
    }
  });

  test('a new handshake in active mode is promoted to the flow table, local and behind this host', async () => {
    await setMode('active');
    // The local plaintext connection's socket is here: the agent aborts it, and its flow goes.
    await until(async () => ((await flowOf('lplain')) === undefined ? true : undefined), 5000, 'the local blocked flow removed with its socket');
    assert.equal((await flowOf('fplain'))?.verdict, 'blocked', 'the app plaintext flow is blocked; its socket is out of reach');
    const fresh = tb.spawn(
      'client',
      'clients-2',
      process.execPath,
      [PEER, 'client', certs.caCert, `ntls=tls@${tb.server.ipv4}:${LOCAL.tls}`, `nftls=tls@${appIp}:${APP.tls}`],
      {
        env: { ...process.env, RESET_NAME: resetFile() },
      },
    );
    await until(() => (jsonLines(fresh).filter((l) => l.event === 'open').length === 2 ? true : undefined), 10000, 'two new TLS connections');
    for (const l of jsonLines(fresh).filter((l) => l.event === 'open')) lport.set(l.name as string, l.lport as number);
    for (const name of ['ntls', 'nftls']) assert.equal((await flowOf(name))?.class, 'tls', `${name} is in the flow table as tls`);
    clients2 = fresh;
  });

  test('100,000 spoofed SYNs leave no entry in the flow table and evict none of the idle flows', async () => {
    const before = await flows();
    const counters0 = datapathCounters();
    const started = Date.now();
    const r = await tb.execOk('client', BIN.python3, [SYNS, 'flood', tb.server.ipv4, String(FLOOD), String(LOCAL.tls)], { timeoutMs: 120000 });
    const sent = JSON.parse(r.stdout) as { sent: number; seconds: number };
    const after = await flows();
    const counters1 = datapathCounters();
    const halfOpen = withMap('sslwall_half_open', (m) => native().mapDump(m).length);
    console.log(
      `# flood: ${sent.sent} SYNs in ${sent.seconds} s (test ${Date.now() - started} ms); flows table ${before.length} -> ${after.length} entries; ` +
        `half-open entries ${halfOpen}; half-open created +${counters1.halfOpenCreated - counters0.halfOpenCreated}`,
    );
    assert.equal(sent.sent, FLOOD);
    assert.deepEqual(
      after.filter((f) => f.saddr.startsWith('10.203.') || f.daddr.startsWith('10.203.')),
      [],
      'no flow of the flood in the table',
    );
    assert.equal(after.length, before.length, 'the flow table holds what it held before');
    for (const [name, cls, verdict] of [
      ['ltls', 'tls', 'allowed'],
      ['ftls', 'tls', 'allowed'],
      ['fplain', 'plaintext', 'blocked'],
      ['ntls', 'tls', 'allowed'],
      ['nftls', 'tls', 'allowed'],
    ] as const) {
      const f = await flowOf(name);
      assert.equal(`${f?.class}/${f?.verdict}`, `${cls}/${verdict}`, `${name} after the flood`);
    }
    // Still working, and the plaintext one still blocked.
    const sentBefore = {
      ltls: received(localServer, lport.get('ltls')!),
      ftls: received(appServer, lport.get('ftls')!),
      fplain: received(appServer, lport.get('fplain')!),
    };
    await poke(clients);
    await until(
      () => (received(localServer, lport.get('ltls')!) > sentBefore.ltls && received(appServer, lport.get('ftls')!) > sentBefore.ftls ? true : undefined),
      5000,
      'the TLS connections carry data after the flood',
    );
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(received(appServer, lport.get('fplain')!), sentBefore.fplain, 'no plaintext byte reached the app server');
  });

  test('forged SYNs on live flows, and a spray of every source port of the client, reset nothing', async () => {
    const before = await flows();
    for (const [name, dst, dport] of [
      ['ltls', tb.server.ipv4, LOCAL.tls],
      ['ftls', appIp, APP.tls],
    ] as const) {
      await tb.execOk('client', BIN.python3, [SYNS, 'forge', tb.client.ipv4, dst, String(dport), String(lport.get(name))]);
    }
    const spray = JSON.parse(
      (await tb.execOk('client', BIN.python3, [SYNS, 'forge', tb.client.ipv4, appIp, String(APP.tls), 'spray'], { timeoutMs: 120000 })).stdout,
    ) as { sent: number; seconds: number };
    console.log(`# spray: ${spray.sent} forged SYNs in ${spray.seconds} s`);
    for (const name of ['ltls', 'ftls', 'ntls', 'nftls']) assert.equal((await flowOf(name))?.class, 'tls', `${name} is still tls`);
    assert.equal((await flows()).length, before.length, 'no flow created or removed');
    const was = received(appServer, lport.get('ftls')!);
    await poke(clients);
    await until(() => (received(appServer, lport.get('ftls')!) > was ? true : undefined), 5000, 'the TLS flow behind this host still carries data');
  });

  test('a RST removes the flow', async () => {
    fs.writeFileSync(resetFile(), 'ntls');
    assert.ok(await flowOf('ntls'));
    const n = jsonLines(clients2).filter((l) => l.event === 'reset').length;
    process.kill(clients2.pid, 'SIGUSR2');
    await until(() => (jsonLines(clients2).filter((l) => l.event === 'reset').length > n ? true : undefined), 5000, 'the reset');
    await until(async () => ((await flowOf('ntls')) === undefined ? true : undefined), 5000, 'the reset flow gone from the table');
  });

  /** Which connection the second client resets on SIGUSR2. */
  function resetFile(): string {
    return path.join(tb.dir, 'reset-name');
  }

  function withMap<T>(name: string, fn: (m: MapHandle) => T): T {
    const m = native().getPinned(pinLayout(env.bpffs).map(name), 'map');
    try {
      return fn(m);
    } finally {
      m.close();
    }
  }

  function datapathCounters() {
    return withMap('sslwall_counters', readCounters);
  }
});
