// The agent never locks itself out: in active mode its own plaintext connections (etcd reached
// through the watched veth) are never blocked nor destroyed, including one opened before the
// filter was attached; the same connection from another process is blocked; metrics scrapes of
// the agent work; a plaintext control plane is a loud warning; violations of remote clients are
// counted apart in health. Real kernel, real etcd, in namespaces this test creates.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { type Health, HealthSchema } from '../../schemas/tier.js';
import { type AgentEnv, AgentProc, agentEnv, kernelMode, type LogLine, sslwall } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, freePort, startEtcd } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { plainClient, type SinkPeer, startSink } from '../../tools/lab/peers.js';
import { BIN, fixture, waitFor } from '../../tools/lab/proc.js';

const TIER = 'web';
const HOST = 'host-0001';
const keys = etcdKeys('/sslwall/');
const METRICS_PORT = 9464;
const REMOTE_PORT = 7001;

function tierDoc(version: number, mode: 'passive' | 'active') {
  // bypass.ports changes with the version, so each version is a real kernel change.
  return JSON.stringify({
    kind: 'tier',
    tier: TIER,
    version,
    config: { mode: 'off', bypass: { ports: [22, 10000 + version] } },
    rollout: { mode, percent: 100, otherwise: 'passive', salt: 'salt-a' },
  });
}

/** Established TCP sockets of `pid` to addr:port in a namespace: their local ports. */
async function socketsOf(tb: Testbed, pid: number, addr: string, port: number): Promise<number[]> {
  const r = await tb.execOk('client', BIN.ss, ['-Htnp', 'state', 'established', 'dst', `${addr}:${port}`]);
  return r.stdout
    .split('\n')
    .filter((l) => l.includes(`pid=${pid},`))
    .map((l) => Number(/:(\d+)\s+\S+:\d+\s/.exec(l)?.[1]));
}

describe('the agent never locks itself out', () => {
  let tb: Testbed;
  let etcd: EtcdServer;
  let client: Etcd3;
  let env: AgentEnv;
  let agent: AgentProc | undefined;
  let etcdPort: number;

  before(async () => {
    tb = await createTestbed('self');
    etcd = await startEtcd();
    client = createEtcdClient({ endpoints: etcd.endpoints });
    // etcd is reached from the agent's namespace through the veth: the server namespace
    // forwards its address to a bridge to the host's etcd.
    const bridge = await EtcdBridge.start(tb, 'server', etcd.clientPort);
    etcdPort = await freePort();
    tb.spawn('server', 'etcd-on-veth', BIN.socat, [
      `TCP4-LISTEN:${etcdPort},bind=${tb.server.ipv4},reuseaddr,fork`,
      `TCP:127.0.0.1:${new URL(bridge.url).port}`,
    ]);
    await waitFor(
      'etcd forwarded on the veth',
      async () => (await tb.exec('server', BIN.ss, ['-Htln', `sport = :${etcdPort}`])).stdout.includes(`:${etcdPort}`),
      {
        timeoutMs: 5000,
      },
    );
    // A plaintext listener on the agent's host, for remote clients to violate.
    tb.spawn('client', 'listener', BIN.socat, ['-u', `TCP4-LISTEN:${REMOTE_PORT},bind=${tb.client.ipv4},reuseaddr,fork`, 'OPEN:/dev/null']);
    env = await agentEnv(tb, 'client', await tb.mountCgroup2());
    await client.put(keys.tierConfig(TIER)).value(tierDoc(1, 'active'));
    agent = await AgentProc.start({ ...env, configFile: '' }, [
      '--etcd',
      `http://${tb.server.ipv4}:${etcdPort}`,
      '--tier',
      TIER,
      '--host-id',
      HOST,
      '--insecure-unsigned',
      '--metrics-addr',
      `${tb.client.ipv4}:${METRICS_PORT}`,
    ]);
    await agent.waitFor(applied(1), 8000, 'config v1 applied');
  });

  after(async () => {
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    client?.close();
    await etcd?.destroy();
    await tb?.destroy();
  });

  function applied(version: number): (l: LogLine) => boolean {
    return (l) => l.event === 'config_applied' && l.tierVersion === version;
  }

  async function health(pred: (h: Health) => boolean, what: string, timeoutMs = 12_000): Promise<Health> {
    let last: Health | null = null;
    await waitFor(
      what,
      async () => {
        const v = await client.get(keys.health(TIER, HOST)).string();
        last = v ? HealthSchema.parse(JSON.parse(v)) : null;
        return !!last && pred(last);
      },
      { timeoutMs, intervalMs: 200, explain: () => `last health: ${JSON.stringify(last)}` },
    );
    return last!;
  }

  const agentEtcdSockets = () => socketsOf(tb, agent!.proc.pid, tb.server.ipv4, etcdPort);

  test('plaintext etcd on a watched interface is a loud warning at start and in health', async () => {
    const line = await agent!.waitFor((l) => l.event === 'plaintext_control_plane', 1000, 'the plaintext_control_plane warning');
    assert.equal(line.level, 40, 'a pino warn');
    assert.equal(line.iface, tb.client.ifname);
    const h = await health((x) => x.warnings.length > 0, 'a warning in health');
    assert.match(h.warnings[0]!, new RegExp(`plaintext etcd endpoint http://${tb.server.ipv4.replace(/\./g, '\\.')}:${etcdPort} .* ${tb.client.ifname}`));
  });

  test('an agent in active mode over plaintext etcd on its watched interface still receives the next config within a second', async (t) => {
    assert.equal(kernelMode(env.bpffs), 'active');
    const before = await agentEtcdSockets();
    assert.ok(before.length > 0, "the agent's etcd connection is established");
    // Let the connection carry traffic in active mode (keepalives, the lease) before the next version.
    await new Promise((r) => setTimeout(r, 1500));
    const t0 = Date.now();
    await client.put(keys.tierConfig(TIER)).value(tierDoc(2, 'active'));
    const line = await agent!.waitFor(applied(2), 5000, 'config v2 applied');
    const ms = Number(line.time) - t0;
    t.diagnostic(`config v2 applied ${ms} ms after the put`);
    assert.ok(ms < 1000, `the next config must arrive within a second; took ${ms} ms`);
    assert.deepEqual(await agentEtcdSockets(), before, "the agent's etcd connection is the same one: never destroyed");
    const flows = JSON.parse((await sslwall(env, ['flows', '--json', '--bpffs', env.bpffs])).stdout) as Array<{ dport: number; sport: number; class: string }>;
    const own = flows.filter((f) => f.dport === etcdPort || f.sport === etcdPort);
    assert.ok(own.length > 0 && own.every((f) => f.class === 'bypass'), `the agent's etcd flows are bypassed: ${JSON.stringify(own)}`);
  });

  test('another process in the same namespace making the same plaintext connection is blocked', async () => {
    const before = await agentEtcdSockets();
    const r = await plainClient(tb, { port: etcdPort, host: tb.server.ipv4, maxMs: 3000 });
    assert.ok(r.connected && r.failed, `the other process's plaintext connection must be blocked and fail: ${JSON.stringify(r)}`);
    const v = await agent!.waitFor((l) => l.event === 'violation' && l.dport === etcdPort, 3000, 'the violation of the other process');
    assert.equal(v.verdict, 'blocked');
    assert.equal(v.client, 'local');
    assert.notEqual(v.pid, agent!.proc.pid);
    await agent!.waitFor((l) => l.event === 'sockets_destroyed', 3000, 'the destroy sweep');
    assert.deepEqual(await agentEtcdSockets(), before, "the sweep left the agent's own connection alone");
    const t0 = Date.now();
    await client.put(keys.tierConfig(TIER)).value(tierDoc(3, 'active'));
    const line = await agent!.waitFor(applied(3), 5000, 'config v3 applied');
    assert.ok(Number(line.time) - t0 < 1000, `config v3 took ${Number(line.time) - t0} ms`);
  });

  test('a metrics scrape of the agent over the watched interface works in active mode', async () => {
    const r = await tb.exec('server', BIN.curl, [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--max-time',
      '5',
      `http://${tb.client.ipv4}:${METRICS_PORT}/metrics`,
    ]);
    assert.equal(r.stdout.trim(), '200', `scrape from the server namespace: ${r.stderr}`);
    assert.equal(agent!.violations().filter((l) => l.dport === METRICS_PORT).length, 0, 'a scrape is no violation');
  });

  test("violations of remote clients on this host's listening port are counted apart in health", async () => {
    const h0 = await health(() => true, 'a health report');
    const r = await tb.exec('server', process.execPath, [fixture('plain-client.mjs'), tb.client.ipv4, String(REMOTE_PORT), '2000', '100']);
    assert.match(r.stdout, /"failed":true/, `a remote plaintext client is blocked in active mode too: ${r.stdout}`);
    const v = await agent!.waitFor((l) => l.event === 'violation' && l.dport === REMOTE_PORT, 3000, 'the remote violation');
    assert.equal(v.client, 'remote');
    assert.equal(v.direction, 'ingress');
    const h = await health((x) => x.counters.remoteViolationsBlocked > h0.counters.remoteViolationsBlocked, 'the remote violation in health');
    assert.ok(h.counters.violationsBlocked >= h.counters.remoteViolationsBlocked + 1, `totals include both sides: ${JSON.stringify(h.counters)}`);
    assert.equal(h.counters.remoteViolationsBlocked, 1);
  });
});

describe('a connection the agent opened before its filter was attached', () => {
  let tb: Testbed;
  let sink: SinkPeer;
  let env: AgentEnv;

  before(async () => {
    tb = await createTestbed('self-pre');
    sink = await startSink(tb, { port: 9000 });
    env = await agentEnv(tb, 'client', await tb.mountCgroup2());
  });

  after(async () => {
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    await tb?.destroy();
  });

  test('is seeded as its own and is neither blocked nor destroyed in active mode', async (t) => {
    const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'self-preattach-child.js');
    const r = await tb.exec('client', process.execPath, [child, env.bpffs, tb.client.ifname, tb.server.ipv4, String(sink.port)], { timeoutMs: 30_000 });
    const report = JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as {
      seeded: number[];
      seedMs: number[];
      destroyed: number;
      linesSent: number;
      error: string | null;
    };
    assert.equal(r.code, 0, `child failed: ${r.stderr}`);
    t.diagnostic(`seeding took ${report.seedMs.map((m) => m.toFixed(2)).join(', ')} ms (load, apply, attach)`);
    assert.ok(report.seeded[2]! >= 1, `the connection was seeded at attach: ${JSON.stringify(report)}`);
    assert.equal(report.destroyed, 0, 'nothing destroyed');
    assert.equal(report.error, null);
    const sent =
      'opened before the filter was attached\n'.length + Array.from({ length: 20 }, (_, i) => `plaintext line ${i}\n`.length).reduce((a, b) => a + b, 0);
    await waitFor('every byte at the sink', () => sink.bytes() === sent, { timeoutMs: 5000, explain: () => `sink has ${sink.bytes()} of ${sent} bytes` });
  });
});
