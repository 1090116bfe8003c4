// Smoke test of the integration harness itself, with no sslwall involved: every peer starts in
// the server namespace, every client helper succeeds against it (TLS and plaintext alike), IPv6
// works, and destroy() leaves no namespace, mount or process behind.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { type Certs, makeCerts } from '../../tools/lab/certs.js';
import { createTestbed, listNamespaces, pidsInNetns, type Testbed } from '../../tools/lab/netns.js';
import {
  curl,
  type IperfPeer,
  iperfClient,
  type NginxPeer,
  nginxUrl,
  type PostgresPeer,
  plainClient,
  psql,
  requireAllPeers,
  type SinkPeer,
  type SmtpPeer,
  type SquidPeer,
  type SshdPeer,
  squidProxyUrl,
  ssh,
  startIperf,
  startNginx,
  startPostgres,
  startSink,
  startSmtp,
  startSquid,
  startSshd,
  swaks,
  tfoCounters,
} from '../../tools/lab/peers.js';
import { pidAlive, type RunResult } from '../../tools/lab/proc.js';

/** A failed client shows its exit status and output, not just "false !== true". */
function assertOk(what: string, r: RunResult): void {
  assert.equal(r.code, 0, `${what}: expected exit 0, got ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

describe('integration harness', () => {
  let tb: Testbed;
  let certs: Certs;
  let nginx: NginxPeer;
  let pg: PostgresPeer;
  let smtp: SmtpPeer;
  let squid: SquidPeer;
  let sshd: SshdPeer;
  let sink: SinkPeer;
  let iperf: IperfPeer;

  before(async () => {
    // Throws naming the Debian package when something is missing: this test must not skip.
    requireAllPeers();
    tb = await createTestbed('harness');
    certs = await makeCerts(tb.tempDir('certs'), { ips: [tb.server.ipv4, tb.server.ipv6], dnsNames: ['server.test'] });
    [nginx, pg, smtp, squid, sshd, sink, iperf] = await Promise.all([
      startNginx(tb, certs, { bigFileBytes: 20 * 1024 * 1024 }),
      startPostgres(tb, certs),
      startSmtp(tb, certs),
      startSquid(tb),
      startSshd(tb),
      startSink(tb),
      startIperf(tb),
    ]);
  });

  // Safety net if a test above threw before the last test ran; destroy() is idempotent.
  after(async () => {
    await tb?.destroy();
  });

  test('namespaces exist with the expected addresses and TFO enabled', async () => {
    assert.deepEqual(
      listNamespaces()
        .filter((n) => n.startsWith(tb.prefix))
        .sort(),
      [tb.client.ns, tb.server.ns].sort(),
    );
    const addrs = await tb.execOk('client', 'ip', ['-brief', 'addr', 'show', 'dev', tb.client.ifname]);
    assert.match(addrs.stdout, new RegExp(`${tb.client.ipv4.replaceAll('.', '\\.')}/24`));
    assert.match(addrs.stdout, new RegExp(`${tb.client.ipv6}/64`));
    for (const side of ['client', 'server'] as const) {
      const r = await tb.execOk(side, '/usr/sbin/sysctl', ['-n', 'net.ipv4.tcp_fastopen']);
      assert.equal(r.stdout.trim(), '3', `tcp_fastopen in ${side} namespace`);
    }
  });

  test('nginx serves HTTPS and plain HTTP over IPv4 and IPv6', async () => {
    for (const v6 of [false, true]) {
      for (const tls of [true, false]) {
        const r = await curl(tb, nginxUrl(tb, nginx, { tls, v6 }), { cacert: certs.caCert });
        assertOk(`curl ${tls ? 'https' : 'http'} v6=${v6}`, r);
        assert.equal(r.httpCode, 200);
        assert.equal(r.bytes, nginx.smallBody.length);
      }
    }
    const big = await curl(tb, nginxUrl(tb, nginx, { tls: true, path: nginx.bigPath }), { cacert: certs.caCert });
    assertOk('curl big file', big);
    assert.equal(big.bytes, nginx.bigBytes);
  });

  test('curl --tcp-fastopen puts data in the SYN (plain and TLS, IPv4 and IPv6)', async () => {
    for (const v6 of [false, true]) {
      for (const tls of [false, true]) {
        // The first connection fetches the TFO cookie (per destination), the second uses it.
        const before = await tfoCounters(tb, 'client');
        for (let i = 0; i < 2; i++) {
          const r = await curl(tb, nginxUrl(tb, nginx, { tls, v6 }), { tfo: true, cacert: certs.caCert });
          assertOk(`curl --tcp-fastopen tls=${tls} v6=${v6}`, r);
          assert.equal(r.httpCode, 200);
        }
        const after = await tfoCounters(tb, 'client');
        assert.ok(after.active > before.active, `tls=${tls} v6=${v6}: no TFO connection, counters ${JSON.stringify(after.all)}`);
      }
    }
    const server = await tfoCounters(tb, 'server');
    assert.ok(server.passive >= 4, `expected ≥4 TFO connections accepted by nginx, counters ${JSON.stringify(server.all)}`);
  });

  test('psql connects with sslmode=require and sslmode=disable', async () => {
    for (const sslmode of ['require', 'disable'] as const) {
      const r = await psql(tb, pg, { sslmode });
      assertOk(`psql sslmode=${sslmode}`, r);
      assert.equal(r.stdout.trim(), '1');
    }
    const ssl = await psql(tb, pg, { sslmode: 'require', sql: 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' });
    assert.equal(ssl.stdout.trim(), 't', 'sslmode=require must really use TLS');
    assertOk('psql over IPv6', await psql(tb, pg, { sslmode: 'require', v6: true }));
  });

  test('swaks sends mail with STARTTLS and in plaintext', async () => {
    const tlsRun = await swaks(tb, { starttls: true });
    assertOk('swaks --tls', tlsRun);
    assert.match(tlsRun.stdout, /STARTTLS/);
    assertOk('swaks plain', await swaks(tb, { starttls: false }));
    assertOk('swaks --tls port 587 over IPv6', await swaks(tb, { starttls: true, port: 587, v6: true }));
    assert.match(fs.readFileSync(smtp.logFile, 'utf8'), /tls=True/);
    assert.match(fs.readFileSync(smtp.logFile, 'utf8'), /tls=False/);
  });

  test('curl through squid: CONNECT to https and plain proxying of http', async () => {
    const connect = await curl(tb, nginxUrl(tb, nginx, { tls: true }), { proxy: squidProxyUrl(tb, squid), cacert: certs.caCert });
    assertOk('curl via CONNECT', connect);
    assert.equal(connect.httpCode, 200);
    const plain = await curl(tb, nginxUrl(tb, nginx, { tls: false }), { proxy: squidProxyUrl(tb, squid) });
    assertOk('curl via plain proxy', plain);
    assert.equal(plain.httpCode, 200);
    assert.match(fs.readFileSync(`${squid.dir}/access.log`, 'utf8'), /CONNECT/);
  });

  test('ssh logs in and runs a command', async () => {
    const r = await ssh(tb, sshd, { command: 'echo ok' });
    assertOk('ssh', r);
    assert.equal(r.stdout.trim(), 'ok');
    assertOk('ssh over IPv6', await ssh(tb, sshd, { v6: true }));
  });

  test('plaintext client stays connected to the sink and the sink counts its bytes', async () => {
    const r = await plainClient(tb, { port: sink.port, maxMs: 1000 });
    assert.equal(r.code, 0, `plain client: ${r.stdout} ${r.stderr}`);
    assert.equal(r.failed, false);
    assert.ok(r.linesSent >= 9, `expected ~10 lines in 1 s, sent ${r.linesSent}`);
    // The last lines may still be in flight when the client exits: wait for the first, within 2 s.
    const deadline = Date.now() + 2000;
    while (sink.bytes() === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    assert.ok(sink.bytes() > 0, 'sink received nothing within 2 s of the client exiting');
    const r6 = await plainClient(tb, { port: sink.port, maxMs: 300, v6: true });
    assert.equal(r6.failed, false, `plain client over IPv6: ${r6.stdout}`);
  });

  test('iperf3 measures throughput both ways', async () => {
    const up = await iperfClient(tb, iperf, { durationS: 1 });
    assert.ok(up.bitsPerSecond > 1e8, `expected >100 Mbit/s on veth, got ${up.bitsPerSecond}`);
    const down = await iperfClient(tb, iperf, { durationS: 1, reverse: true });
    assert.ok(down.bitsPerSecond > 1e8, `reverse: got ${down.bitsPerSecond}`);
  });

  test('destroy() removes namespaces, mounts, cgroups and every process', async () => {
    const bpffs = await tb.mountBpffs();
    const cg2 = await tb.mountCgroup2();
    const cg = tb.cgroup(tb.cgroup(cg2, 'outer'), 'inner');
    const inCgroup = tb.spawn('client', 'sleeper', '/bin/sleep', ['600'], { cgroup: cg });
    const inodes = [...tb.netnsInodes().values()];
    const pids = tb.processes.map((p) => p.pid);
    assert.ok(inCgroup.running);

    await tb.destroy();
    await tb.destroy(); // idempotent

    assert.deepEqual(
      listNamespaces().filter((n) => n.startsWith(tb.prefix)),
      [],
      'namespaces left behind',
    );
    assert.deepEqual(pids.filter(pidAlive), [], 'spawned processes still alive');
    for (const ino of inodes) assert.deepEqual(pidsInNetns(ino), [], 'processes still in a deleted namespace');
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
    assert.ok(!mounts.includes(bpffs) && !mounts.includes(cg2), 'bpffs/cgroup2 still mounted');
    assert.ok(!fs.existsSync(bpffs) && !fs.existsSync(tb.dir), 'temp dirs left behind');
  });
});
