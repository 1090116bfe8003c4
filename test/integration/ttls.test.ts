// Transparent TLS end to end: two hosts (namespaces joined by a veth), the real `sslwall agent`
// on each in active mode with a ttls member and the TTLS certificate flags, unmodified programs
// in the client agent's cgroup talking plaintext to real servers on the other host. Each works
// through TTLS, the link carries no plaintext, what is not in ttls.ports stays blocked, TLS
// clients are not wrapped twice, and without a terminator a wrapped connect fails fast.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type AgentEnv, AgentProc, agentEnv, sslwall, writeConfig } from '../../tools/lab/agent-proc.js';
import { type Ca, type Certs, type HostCert, makeCa, makeCerts, makeHostCert } from '../../tools/lab/certs.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import {
  curl,
  type MariadbPeer,
  mariadb,
  type NginxPeer,
  nginxUrl,
  type PostgresPeer,
  plainClient,
  psql,
  type RedisPeer,
  redisCli,
  startMariadb,
  startNginx,
  startPostgres,
  startRedis,
  startSink,
  startSmtp,
  swaks,
} from '../../tools/lab/peers.js';
import { BIN, type Proc, tail, waitFor } from '../../tools/lab/proc.js';

const TTLS_PORT = 15443;
const SINK_PORT = 9000;

describe('transparent TLS between two hosts in active mode', () => {
  let tb: Testbed;
  let ca: Ca;
  let certs: { client: HostCert; server: HostCert };
  let envs: { client: AgentEnv; server: AgentEnv };
  let agents: { client?: AgentProc; server?: AgentProc } = {};
  let nginx: NginxPeer;
  let pg: PostgresPeer;
  let db: MariadbPeer;
  let redis: RedisPeer;
  let bigSha: string;
  let peerCerts: Certs;

  const config = () => ({
    mode: 'active',
    bypass: { ports: [22], cidrs: [] },
    ttls: {
      ports: [80, 443, 25, 3306, 5432, 6379],
      cidrs: [`${tb.server.ipv4}/32`, `${tb.server.ipv6}/128`, `${tb.client.ipv4}/32`, `${tb.client.ipv6}/128`],
      port: TTLS_PORT,
    },
  });
  const ttlsArgs = (side: 'client' | 'server') => ['--ttls-cert', certs[side].cert, '--ttls-key', certs[side].key, '--ttls-ca', ca.caCert];
  const startAgent = async (side: 'client' | 'server') => {
    agents[side] = await AgentProc.start(envs[side], ttlsArgs(side));
    await agents[side]!.waitFor((l) => l.event === 'ttls_started', 10_000, 'ttls_started');
  };
  /** Run a client program as an application of the client host: inside the agent's cgroup. */
  const app = () => ({ cgroup: envs.client.cgroup, timeoutMs: 20_000 });
  const closed = (side: 'client' | 'server', dport: number) =>
    agents[side]!.waitFor((l) => l.event === 'ttls_closed' && l.role === side && l.dport === dport, 10_000, `ttls_closed (${side}) for port ${dport}`);

  async function capture<T>(name: string, fn: () => Promise<T>): Promise<{ result: T; bytes: Buffer; packets: string[] }> {
    const pcap = path.join(tb.dir, `${name}.pcap`);
    const dump: Proc = tb.spawn('client', `tcpdump-${name}`, BIN.tcpdump, ['-i', tb.client.ifname, '--immediate-mode', '-U', '-s', '0', '-w', pcap, 'tcp']);
    await waitFor('tcpdump to listen', () => fs.existsSync(dump.logFile) && fs.readFileSync(dump.logFile, 'utf8').includes('listening on'), {
      explain: () => tail(dump.logFile),
    });
    const result = await fn();
    await dump.stop('SIGINT');
    const r = await tb.execOk('client', BIN.tcpdump, ['-nn', '-r', pcap]);
    return { result, bytes: fs.readFileSync(pcap), packets: r.stdout.trim().split('\n').filter(Boolean) };
  }

  before(async () => {
    tb = await createTestbed('ttls');
    const dir = tb.tempDir('ttls-certs');
    ca = await makeCa(dir, 'fleet-ca');
    certs = {
      client: await makeHostCert(dir, ca, 'client', [tb.client.ipv4, tb.client.ipv6]),
      server: await makeHostCert(dir, ca, 'server', [tb.server.ipv4, tb.server.ipv6]),
    };
    peerCerts = await makeCerts(tb.tempDir('peer-certs'), { ips: [tb.server.ipv4, tb.server.ipv6] });
    nginx = await startNginx(tb, peerCerts, { bigFileBytes: 100 * 1024 * 1024, bigFileRandom: true });
    bigSha = crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(nginx.dir, 'www/big.bin')))
      .digest('hex');
    await startSmtp(tb, peerCerts, { ports: [25] });
    pg = await startPostgres(tb, peerCerts);
    db = await startMariadb(tb);
    redis = await startRedis(tb);
    await startSink(tb, { port: SINK_PORT });
    const cg2 = await tb.mountCgroup2();
    envs = { client: await agentEnv(tb, 'client', cg2), server: await agentEnv(tb, 'server', cg2) };
    for (const side of ['server', 'client'] as const) {
      writeConfig(envs[side], config());
      await startAgent(side);
    }
  });

  after(async () => {
    for (const side of ['client', 'server'] as const) {
      await agents[side]?.stop();
      if (envs?.[side]) await sslwall(envs[side], ['uninstall', '--bpffs', envs[side].bpffs]);
    }
    agents = {};
    await tb?.destroy();
  });

  test('curl to plain HTTP over IPv4 and IPv6 is wrapped; the link carries only TLS to ttls.port', async () => {
    const { result, bytes, packets } = await capture('http', async () => {
      const v4 = await curl(tb, nginxUrl(tb, nginx, { tls: false }), app());
      const v6 = await curl(tb, nginxUrl(tb, nginx, { tls: false, v6: true }), app());
      return { v4, v6 };
    });
    assert.deepEqual([result.v4.httpCode, result.v4.bytes], [200, nginx.smallBody.length], `IPv4; curl stderr: ${result.v4.stderr}`);
    assert.deepEqual([result.v6.httpCode, result.v6.bytes], [200, nginx.smallBody.length], `IPv6; curl stderr: ${result.v6.stderr}`);
    assert.ok(!bytes.includes('GET / HTTP/1.1'), 'the request must not appear on the link');
    assert.ok(!bytes.includes(nginx.smallBody.trim()), 'the response must not appear on the link');
    assert.deepEqual(
      packets.filter((p) => !p.includes(`.${TTLS_PORT}`)),
      [],
      'every packet on the link is to or from ttls.port',
    );
    const line = await closed('client', 80);
    assert.equal(line.result, 'ok');
    assert.ok([tb.server.ipv4, tb.server.ipv6].includes(String(line.daddr)), `original destination in ttls_closed: ${line.daddr}`);
    await closed('server', 80);
  });

  test('server-first and line protocols work through TTLS: swaks, psql, mariadb, redis-cli', async () => {
    const mail = await swaks(tb, { starttls: false, port: 25, ...app() });
    assert.equal(mail.code, 0, `swaks without STARTTLS: ${mail.stdout.slice(-500)}${mail.stderr}`);
    const p = await psql(tb, pg, { sslmode: 'disable', ...app() });
    assert.equal(p.code, 0, `psql sslmode=disable: ${p.stderr}`);
    assert.equal(p.stdout.trim(), '1');
    const m = await mariadb(tb, db, app());
    assert.equal(m.code, 0, `mariadb --skip-ssl: ${m.stderr}`);
    assert.equal(m.stdout.trim(), '1');
    const r = await redisCli(tb, redis, { ...app(), v6: true });
    assert.equal(r.stdout.trim(), 'PONG', `redis-cli PING over IPv6: ${r.stderr}`);
    for (const port of [25, 5432, 3306, 6379]) await closed('server', port);
  });

  test('the same kind of program to a port not in ttls.ports is blocked', async () => {
    const r = await plainClient(tb, { port: SINK_PORT, maxMs: 3000, ...app() });
    assert.ok(r.failed || !r.connected || r.linesSent === 0, `plaintext to port ${SINK_PORT} must not get through: ${JSON.stringify(r)}`);
    await agents.client!.waitFor((l) => l.event === 'violation' && l.dport === SINK_PORT && l.verdict === 'blocked', 5000, 'a blocked violation');
  });

  test('curl https:// to a port in ttls.ports keeps its own TLS and is not wrapped again', async () => {
    const { result, packets } = await capture('https', () => curl(tb, nginxUrl(tb, nginx, { tls: true }), { ...app(), cacert: peerCerts.caCert }));
    assert.deepEqual([result.httpCode, result.bytes], [200, nginx.smallBody.length], `over https; curl stderr: ${result.stderr}`);
    assert.ok(
      packets.some((p) => p.includes(`${tb.server.ipv4}.443`)),
      `the TLS client talks to port 443 itself: ${packets.slice(0, 5).join('\n')}`,
    );
    await agents.client!.waitFor((l) => l.event === 'ttls_failed' && l.reason === 'client_speaks_tls', 5000, 'the proxy stepping aside for a TLS client');
  });

  test('a 100 MiB transfer arrives byte-exact', async () => {
    const out = path.join(tb.dir, 'big.out');
    const r = await tb.exec('client', BIN.curl, ['-s', '-o', out, '--max-time', '120', nginxUrl(tb, nginx, { tls: false, path: nginx.bigPath })], {
      cgroup: envs.client.cgroup,
      timeoutMs: 130_000,
    });
    assert.equal(r.code, 0, `curl: ${r.stderr}`);
    const got = crypto.createHash('sha256').update(fs.readFileSync(out)).digest('hex');
    assert.equal(got, bigSha, 'sha256 of the received file');
    fs.rmSync(out);
  });

  test('sslwall flows shows wrapped connections as tls with their original destination', async () => {
    const hold = tb.spawn('client', 'redis-hold', BIN['redis-cli'], ['-h', tb.server.ipv4, '-p', String(redis.port), '-r', '100', '-i', '0.1', 'PING'], {
      cgroup: envs.client.cgroup,
    });
    try {
      await waitFor('the wrapped redis connection to show', async () => {
        const r = await sslwall(envs.client, ['flows', '--json', '--bpffs', envs.client.bpffs]);
        const flows = JSON.parse(r.stdout) as Array<{ daddr: string; dport: number; class: string; wrapped?: boolean }>;
        return flows.some((f) => f.wrapped && f.daddr === tb.server.ipv4 && f.dport === redis.port && f.class === 'tls');
      });
    } finally {
      await hold.stop();
    }
  });

  test('without a terminator on the server host a wrapped connection fails within 1 s and nothing leaks', async () => {
    await agents.server!.stop();
    try {
      const { result, bytes } = await capture('no-terminator', async () => {
        const started = Date.now();
        const r = await curl(tb, nginxUrl(tb, nginx, { tls: false }), app());
        return { r, ms: Date.now() - started };
      });
      assert.notEqual(result.r.code, 0, 'curl must fail');
      const ttlsLines = agents.client!.lines().filter((l) => String(l.event).startsWith('ttls'));
      assert.ok(
        result.ms < 1500,
        `failed after ${result.ms} ms (the handshake timeout is 1 s); curl: ${result.r.stderr}; client ttls lines: ${JSON.stringify(ttlsLines.slice(-4))}`,
      );
      assert.ok(!bytes.includes('GET / HTTP/1.1'), 'nothing of the request on the link');
    } finally {
      await startAgent('server');
    }
    let last = '';
    await waitFor(
      'a terminator that comes back to be used again',
      async () => {
        const r = await curl(tb, nginxUrl(tb, nginx, { tls: false }), { ...app(), maxTimeS: 3 });
        last = `${r.httpCode} ${r.stderr}`;
        return r.httpCode === 200;
      },
      {
        timeoutMs: 15_000,
        explain: () =>
          `last curl: ${last}; client: ${JSON.stringify(
            agents
              .client!.lines()
              .filter((l) => String(l.event).startsWith('ttls'))
              .slice(-3),
          )}`,
      },
    );
  });

  test('a config change applies within 5 s without breaking an open wrapped connection; in passive mode without a terminator a connection goes direct and is reported', async () => {
    // An open wrapped connection across the change: redis-cli PINGs every 100 ms on one connection.
    const hold = tb.spawn(
      'client',
      'redis-across-change',
      BIN['redis-cli'],
      ['-h', tb.server.ipv4, '-p', String(redis.port), '-r', '60', '-i', '0.1', 'PING'],
      {
        cgroup: envs.client.cgroup,
      },
    );
    const pongs = () => (fs.existsSync(hold.logFile) ? (fs.readFileSync(hold.logFile, 'utf8').match(/PONG/g)?.length ?? 0) : 0);
    try {
      await waitFor('the held connection to answer', () => pongs() > 2);
      const applied = () => agents.client!.lines().filter((l) => l.event === 'config_applied' && l.mode === 'passive').length;
      const t0 = Date.now();
      writeConfig(envs.client, { ...config(), mode: 'passive' });
      await waitFor('the client agent to apply passive mode', () => applied() > 0, { timeoutMs: 5000 });
      const applyMs = Date.now() - t0;
      const before = pongs();
      await waitFor('the held connection to go on answering after the change', () => pongs() > before + 3, { timeoutMs: 5000 });
      assert.ok(applyMs < 5000, `applied after ${applyMs} ms`);
    } finally {
      await hold.stop();
    }
    // The server host passive too (its filter would block the direct plaintext otherwise), then without its agent.
    writeConfig(envs.server, { ...config(), mode: 'passive' });
    await agents.server!.waitFor((l) => l.event === 'config_applied' && l.mode === 'passive', 5000, 'the server host passive');
    await agents.server!.stop();
    try {
      const r = await curl(tb, nginxUrl(tb, nginx, { tls: false }), app());
      assert.deepEqual([r.httpCode, r.bytes], [200, nginx.smallBody.length], `passive mode goes direct; curl stderr: ${r.stderr}`);
      await agents.client!.waitFor((l) => l.event === 'ttls_failed' && l.reason === 'terminator_unreachable', 5000, 'ttls_failed terminator_unreachable');
      await agents.client!.waitFor((l) => l.event === 'violation' && l.dport === 80 && l.verdict === 'reported', 5000, 'the direct plaintext reported');
    } finally {
      writeConfig(envs.server, config());
      await startAgent('server');
      writeConfig(envs.client, config());
      await agents.client!.waitFor((l) => l.event === 'config_applied' && l.mode === 'active' && l.previous_mode === 'passive', 5000, 'active again');
    }
  });
});
