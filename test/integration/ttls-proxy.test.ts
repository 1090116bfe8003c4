// The TTLS proxy and terminator (agent/ttls) as processes in two network namespaces, with real
// peers (nginx, aiosmtpd, node servers) and real clients (curl, swaks, node): the test connects
// to the client host's proxy listener as a redirected application would, and the proxy's
// static original-destination table (keyed by the loopback source address the client binds to)
// names the real server. The kernel side (bpf/ttls.bpf.c) is not part of this test.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Ca, type HostCert, makeCa, makeCerts, makeHostCert } from '../../tools/lab/certs.js';
import { createTestbed, type Side, type Testbed } from '../../tools/lab/netns.js';
import { type NginxPeer, startNginx, startSmtp } from '../../tools/lab/peers.js';
import { BIN, type Proc, requireBins, tail, waitFor } from '../../tools/lab/proc.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const TTLS_NODE = path.resolve(here, '../../tools/lab/ttls-node.js');
const NODE = process.execPath;
const TEST_SERVER_PORT = 7000;

interface LogLine {
  event?: string;
  [k: string]: unknown;
}

class TtlsNode {
  constructor(
    readonly proc: Proc,
    readonly table: string,
    readonly side: Side,
    readonly metricsPort: number,
    readonly proxyPort: number,
  ) {}

  lines(): LogLine[] {
    return fs
      .readFileSync(this.proc.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
  }

  events(name: string): LogLine[] {
    return this.lines().filter((l) => l.event === name);
  }

  route(src: string, address: string, port: number): void {
    const t = JSON.parse(fs.readFileSync(this.table, 'utf8')) as Record<string, unknown>;
    t[src] = { address, port };
    fs.writeFileSync(this.table, JSON.stringify(t));
  }
}

async function startNode(
  tb: Testbed,
  side: Side,
  name: string,
  o: {
    cert: HostCert;
    ca: string;
    port: number;
    proxyPort: number;
    metricsPort: number;
    multiplex?: boolean;
    terminator?: boolean;
    mode?: 'active' | 'passive';
  },
): Promise<TtlsNode> {
  const table = path.join(tb.dir, `${name}-table.json`);
  fs.writeFileSync(table, '{}');
  const args = {
    certs: { cert: o.cert.cert, key: o.cert.key, ca: o.ca },
    config: {
      mode: o.mode ?? 'active',
      ttls: { ports: [80, 25, 443, TEST_SERVER_PORT], cidrs: [`${tb.server.ipv4}/32`, `${tb.server.ipv6}/128`], port: o.port },
    },
    proxyPort: o.proxyPort,
    table,
    metricsPort: o.metricsPort,
    multiplex: o.multiplex,
    terminator: o.terminator,
  };
  const proc = tb.spawn(side, name, NODE, ['--enable-source-maps', TTLS_NODE, JSON.stringify(args)]);
  const node = new TtlsNode(proc, table, side, o.metricsPort, o.proxyPort);
  await waitFor(`${name} ready`, () => node.events('ttls_node_ready').length > 0, {
    explain: () => tail(proc.logFile),
    abortIf: () => (proc.running ? undefined : `${name} exited`),
  });
  return node;
}

// A server for the cases no stock program shows directly; one port, the first line picks the case.
const TEST_SERVER = `
const net = require('node:net');
const log = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', (e) => log({ event: 'server_error', code: e.code }));
  let mode, buf = '', total = 0;
  s.on('data', (d) => {
    if (mode === 'echo') return void s.write(d);
    if (mode === 'count') return void (total += d.length);
    buf += d;
    const nl = buf.indexOf('\\n');
    if (nl < 0) return;
    mode = buf.slice(0, nl);
    const rest = buf.slice(nl + 1);
    if (mode === 'echo') { s.write('ready\\n'); if (rest) s.write(rest); }
    else if (mode === 'count') total += rest.length;
    else if (mode === 'reset') s.resetAndDestroy();
    else if (mode === 'hold') s.write('ready\\n');
    else if (mode === 'flood') {
      const chunk = Buffer.alloc(64 * 1024, 120); let written = 0;
      const pump = () => { while (s.write(chunk)) written += chunk.length; written += chunk.length; };
      s.on('drain', pump); pump();
      const t = setInterval(() => log({ event: 'flood', written }), 500); s.on('close', () => clearInterval(t));
    }
  });
  s.on('end', () => { if (mode === 'count') s.end('got ' + total + '\\n'); else s.end(); });
  s.on('close', (hadError) => log({ event: 'server_close', mode, hadError }));
}).listen(${TEST_SERVER_PORT}, '::', () => log({ event: 'listening' }));
`;

/** Run a node client script in the client namespace; it prints one JSON line. */
async function nodeClient(tb: Testbed, code: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
  const r = await tb.exec('client', NODE, ['-e', code], { timeoutMs });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error(`node client printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
}

/** Client code prelude: connect to the proxy from a given loopback source. */
const connectTo = (proxyPort: number, src: string) =>
  `const net = require('node:net'); const c = net.connect({ host: '127.0.0.1', port: ${proxyPort}, localAddress: '${src}', allowHalfOpen: true }); c.on('error', (e) => { out({ error: e.code }); }); const out = (o) => { process.stdout.write(JSON.stringify(o) + '\\n'); process.exit(0); };`;

async function metric(tb: Testbed, node: TtlsNode, name: string, labels: string): Promise<number> {
  const r = await tb.execOk(node.side, BIN.curl, ['-sS', `http://127.0.0.1:${node.metricsPort}/metrics`]);
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

describe('TTLS proxy and terminator between two hosts', () => {
  let tb: Testbed;
  let ca: Ca;
  let certDir: string;
  let srvCert: HostCert;
  let cliCert: HostCert;
  let nginx: NginxPeer;
  let server: TtlsNode;
  let client: TtlsNode;
  let testServer: Proc;
  let bigSha: string;
  let idle: Promise<Record<string, unknown>>;
  const P = 15001;

  const curlVia = (src: string, urlPath = '/', extra: string[] = []) =>
    tb.exec('client', BIN.curl, [
      '-sS',
      '-g',
      '--max-time',
      '20',
      '--interface',
      src,
      ...extra,
      `http://${src.includes(':') ? `[${src}]` : '127.0.0.1'}:${P}${urlPath}`,
    ]);

  before(async () => {
    requireBins(['curl', 'tcpdump', 'swaks', 'nginx', 'openssl']);
    tb = await createTestbed('ttls-proxy');
    certDir = tb.tempDir('ttls-certs');
    ca = await makeCa(certDir, 'fleet-ca');
    srvCert = await makeHostCert(certDir, ca, 'server', [tb.server.ipv4, tb.server.ipv6]);
    cliCert = await makeHostCert(certDir, ca, 'client', [tb.client.ipv4, tb.client.ipv6]);
    const peerCerts = await makeCerts(tb.tempDir('peer-certs'), { ips: [tb.server.ipv4, tb.server.ipv6] });
    nginx = await startNginx(tb, peerCerts, { bigFileBytes: 100 * 1024 * 1024, bigFileRandom: true });
    bigSha = crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(nginx.dir, 'www/big.bin')))
      .digest('hex');
    await startSmtp(tb, peerCerts, { ports: [25] });
    testServer = tb.spawn('server', 'test-server', NODE, ['-e', TEST_SERVER]);
    await waitFor('test server', () => fs.existsSync(testServer.logFile) && fs.readFileSync(testServer.logFile, 'utf8').includes('listening'));
    server = await startNode(tb, 'server', 'ttls-server', { cert: srvCert, ca: ca.caCert, port: 15443, proxyPort: 15011, metricsPort: 19464 });
    client = await startNode(tb, 'client', 'ttls-client', { cert: cliCert, ca: ca.caCert, port: 15443, proxyPort: P, metricsPort: 19464 });
    const s4 = tb.server.ipv4;
    client.route('127.0.0.1', s4, 80);
    client.route('::1', tb.server.ipv6, 80);
    client.route('127.0.0.2', s4, 25);
    client.route('127.0.0.3', s4, TEST_SERVER_PORT);
    client.route('127.0.0.4', s4, 443);
    client.route('127.0.0.5', tb.server.ipv6, TEST_SERVER_PORT);
    // Started first, checked last: a wrapped connection idle for 30 s still carries bytes.
    idle = nodeClient(
      tb,
      `${connectTo(P, '127.0.0.5')} c.write('echo\\n'); let got = ''; c.on('data', (d) => { got += d;
      if (got === 'ready\\n') setTimeout(() => c.write('after-idle'), 30000); if (got.endsWith('after-idle')) out({ got }); });`,
      60_000,
    );
  });

  after(async () => {
    await tb?.destroy();
  });

  test('curl to plain HTTP over IPv4 and IPv6, and the link carries only TLS to ttls.port', async () => {
    const pcap = path.join(tb.dir, 'http.pcap');
    const dump = tb.spawn('client', 'tcpdump', BIN.tcpdump, ['-i', tb.client.ifname, '--immediate-mode', '-U', '-s', '0', '-w', pcap, 'tcp']);
    await waitFor('tcpdump to listen', () => fs.existsSync(dump.logFile) && fs.readFileSync(dump.logFile, 'utf8').includes('listening on'), {
      explain: () => tail(dump.logFile),
    });
    const v4 = await curlVia('127.0.0.1');
    assert.equal(v4.stdout, nginx.smallBody, `IPv4 body; stderr ${v4.stderr}`);
    const v6 = await curlVia('::1');
    assert.equal(v6.stdout, nginx.smallBody, `IPv6 body; stderr ${v6.stderr}`);
    await new Promise((r) => setTimeout(r, 500));
    await dump.stop('SIGINT');
    const bytes = fs.readFileSync(pcap);
    assert.ok(!bytes.includes(nginx.smallBody.trim()), 'the response body must not appear on the link');
    assert.ok(!bytes.includes('GET / HTTP/1.1'), 'the request must not appear on the link');
    const r = await tb.execOk('client', BIN.tcpdump, ['-nn', '-r', pcap]);
    const pkts = r.stdout.trim().split('\n').filter(Boolean);
    assert.ok(pkts.length > 4, `captured packets: ${pkts.length}`);
    const other = pkts.filter((l) => !l.includes('.15443'));
    assert.deepEqual(other, [], 'every packet on the link is to or from ttls.port');
    await waitFor('server-side ttls_closed for the v6 request', () => server.events('ttls_closed').some((l) => l.daddr === tb.server.ipv6 && l.dport === 80));
    const cl = client.events('ttls_closed').find((l) => l.daddr === tb.server.ipv4 && l.dport === 80)!;
    assert.equal(cl.role, 'client');
    assert.equal(cl.result, 'ok');
    assert.equal(cl.saddr, '127.0.0.1');
    for (const k of ['sport', 'bytes_sent', 'bytes_received', 'duration_ms']) assert.equal(typeof cl[k], 'number', k);
  });

  test('server-first SMTP (swaks, no STARTTLS) through the pair', async () => {
    const r = await tb.exec('client', BIN.swaks, [
      '--to',
      'a@b.test',
      '--from',
      'c@d.test',
      '--server',
      '127.0.0.1',
      '--port',
      String(P),
      '--local-interface',
      '127.0.0.2',
      '--timeout',
      '10',
      '--h-Subject',
      'ttls',
    ]);
    assert.equal(r.code, 0, `swaks: ${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /Connected to .*\n<- {2}220 /, 'the server greeted first');
    assert.match(r.stdout, /\n<- {2}250 OK\n -> QUIT/, 'the message was accepted');
  });

  test('a 100 MiB transfer arrives byte-exact', async () => {
    const r = await tb.exec('client', '/bin/sh', ['-c', `${BIN.curl} -sS --max-time 120 --interface 127.0.0.1 http://127.0.0.1:${P}/big.bin | sha256sum`], {
      timeoutMs: 130_000,
    });
    assert.equal(r.stdout.split(' ')[0], bigSha, r.stderr);
  });

  test('pooling: 10 parallel connections share one TLS session', async () => {
    const hs0 = await metric(tb, client, 'sslwall_ttls_handshakes_total', 'role="client"');
    const conns0 = await metric(tb, client, 'sslwall_ttls_connections_total', 'role="client",result="ok"');
    const rs = await Promise.all(Array.from({ length: 10 }, () => curlVia('127.0.0.1')));
    for (const r of rs) assert.equal(r.stdout, nginx.smallBody, r.stderr);
    await waitFor(
      '10 more ok connections',
      async () => (await metric(tb, client, 'sslwall_ttls_connections_total', 'role="client",result="ok"')) >= conns0 + 10,
    );
    const hs = (await metric(tb, client, 'sslwall_ttls_handshakes_total', 'role="client"')) - hs0;
    assert.ok(hs <= 1, `handshakes for 10 connections: ${hs} (expected at most 1: the pool's session may already be open)`);
  });

  test('half-close: the client shuts down writing and still gets the answer', async () => {
    const r = await nodeClient(
      tb,
      `${connectTo(P, '127.0.0.3')} c.end('count\\n' + 'x'.repeat(100000)); let got = ''; c.on('data', (d) => got += d); c.on('end', () => out({ got }));`,
    );
    assert.equal(r.got, 'got 100000\n');
  });

  test('a reset reaches the other side, both ways', async () => {
    const fromServer = await nodeClient(tb, `${connectTo(P, '127.0.0.3')} c.write('reset\\n'); c.on('end', () => out({ end: true }));`);
    assert.equal(
      fromServer.error,
      'ECONNRESET',
      `the client sees the server's reset: ${JSON.stringify(fromServer)} ${JSON.stringify(client.events('ttls_closed').slice(-2))}`,
    );
    const before = fs.readFileSync(testServer.logFile, 'utf8').split('\n').length;
    const fromClient = await nodeClient(
      tb,
      `${connectTo(P, '127.0.0.3')} c.write('hold\\n'); c.on('data', () => { c.resetAndDestroy(); setTimeout(() => out({ reset: true }), 100); });`,
    );
    assert.equal(fromClient.reset, true);
    await waitFor(
      'the server to see the client reset',
      () =>
        fs
          .readFileSync(testServer.logFile, 'utf8')
          .split('\n')
          .slice(before - 1)
          .some((l) => l.includes('"mode":"hold","hadError":true')),
      {
        explain: () => tail(testServer.logFile),
      },
    );
    await waitFor('ttls_closed with result reset', () => client.events('ttls_closed').filter((l) => l.result === 'reset').length >= 2);
  });

  test('a reader that stops reading slows the writer; the proxy memory stays bounded', async () => {
    const rss0 = rssKiB(client.proc.pid);
    const start = fs.readFileSync(testServer.logFile, 'utf8').length;
    const r = await nodeClient(tb, `${connectTo(P, '127.0.0.3')} c.write('flood\\n'); c.pause(); setTimeout(() => out({ ok: true }), 6000);`);
    assert.equal(r.ok, true);
    const floods = fs
      .readFileSync(testServer.logFile, 'utf8')
      .slice(start)
      .split('\n')
      .filter((l) => l.includes('"flood"'))
      .map((l) => (JSON.parse(l) as { written: number }).written);
    assert.ok(floods.length >= 8, `flood reports: ${floods.length}`);
    const last = floods.at(-2)!;
    const mid = floods[Math.floor(floods.length / 2)]!;
    assert.ok(last < 64 * 1024 * 1024, `the writer got ${last} bytes out with nobody reading (expected < 64 MiB)`);
    assert.ok(last - mid < 1024 * 1024, `the writer kept going: ${mid} → ${last} bytes`);
    const grew = rssKiB(client.proc.pid) - rss0;
    assert.ok(grew < 64 * 1024, `proxy RSS grew by ${grew} KiB`);
  });

  test('a client that sends a ClientHello first goes direct, and the destination is reported', async () => {
    const r = await tb.exec('client', BIN.curl, ['-sS', '-k', '--max-time', '20', '--interface', '127.0.0.4', `https://127.0.0.1:${P}/`]);
    assert.equal(r.stdout, nginx.smallBody, r.stderr);
    await waitFor('tls_destination', () => client.events('tls_destination').some((l) => l.address === tb.server.ipv4 && l.port === 443));
    assert.ok(
      client.events('ttls_failed').some((l) => l.reason === 'client_speaks_tls' && l.dport === 443),
      JSON.stringify(client.events('ttls_failed')),
    );
    const again = await tb.exec('client', BIN.curl, ['-sS', '-k', '--max-time', '20', '--interface', '127.0.0.4', `https://127.0.0.1:${P}/`]);
    assert.equal(again.stdout, nginx.smallBody, again.stderr);
  });

  test('a client certificate from another CA is refused and logged', async () => {
    const other = await makeCa(tb.tempDir('other-ca'), 'other-ca');
    const rogue = await makeHostCert(certDir, other, 'rogue', [tb.client.ipv4]);
    // Its CA file names its own CA first (so it loads) and trusts the fleet CA for the server.
    const bundle = path.join(certDir, 'rogue-ca.crt');
    fs.writeFileSync(bundle, fs.readFileSync(other.caCert, 'utf8') + fs.readFileSync(ca.caCert, 'utf8'));
    const rn = await startNode(tb, 'client', 'ttls-rogue', { cert: rogue, ca: bundle, port: 15443, proxyPort: 15002, metricsPort: 19465, terminator: false });
    rn.route('127.0.0.1', tb.server.ipv4, 80);
    const r = await tb.exec('client', BIN.curl, ['-sS', '--max-time', '10', `http://127.0.0.1:15002/`]);
    assert.notEqual(r.stdout, nginx.smallBody, 'nothing may come through');
    await waitFor('the terminator to log the refusal', () => server.events('ttls_failed').some((l) => l.reason === 'client_certificate'), {
      explain: () => tail(server.proc.logFile),
    });
    // TLS 1.3: the client's handshake completes before the server checks its certificate, so the
    // proxy learns of the refusal on its first stream.
    await waitFor('the proxy to log the failure', () => rn.events('ttls_failed').length > 0 || rn.events('ttls_closed').some((l) => l.result !== 'ok'), {
      explain: () => tail(rn.proc.logFile),
    });
    await rn.proc.stop();
  });

  test('a server certificate without the destination address is refused', async () => {
    const noIp = await makeHostCert(certDir, ca, 'no-ip', ['192.0.2.1']);
    const bad = await startNode(tb, 'server', 'ttls-badserver', { cert: noIp, ca: ca.caCert, port: 15444, proxyPort: 15012, metricsPort: 19466 });
    const cn = await startNode(tb, 'client', 'ttls-tobad', {
      cert: cliCert,
      ca: ca.caCert,
      port: 15444,
      proxyPort: 15003,
      metricsPort: 19467,
      terminator: false,
    });
    cn.route('127.0.0.1', tb.server.ipv4, 80);
    const t0 = Date.now();
    const r = await tb.exec('client', BIN.curl, ['-sS', '--max-time', '10', `http://127.0.0.1:15003/`]);
    assert.notEqual(r.stdout, nginx.smallBody);
    assert.ok(Date.now() - t0 < 3000, `the application failed fast (${Date.now() - t0} ms)`);
    await waitFor('server_certificate failure', () => cn.events('ttls_failed').some((l) => l.reason === 'server_certificate'), {
      explain: () => tail(cn.proc.logFile),
    });
    await Promise.all([bad.proc.stop(), cn.proc.stop()]);
  });

  test('a terminator without multiplexing gets one TLS connection per wrapped connection', async () => {
    const nm = await startNode(tb, 'server', 'ttls-nomux', {
      cert: srvCert,
      ca: ca.caCert,
      port: 15445,
      proxyPort: 15013,
      metricsPort: 19468,
      multiplex: false,
    });
    const cn = await startNode(tb, 'client', 'ttls-tonomux', {
      cert: cliCert,
      ca: ca.caCert,
      port: 15445,
      proxyPort: 15004,
      metricsPort: 19469,
      terminator: false,
    });
    cn.route('127.0.0.1', tb.server.ipv4, 80);
    cn.route('127.0.0.2', tb.server.ipv4, 25);
    const rs = await Promise.all([1, 2, 3].map(() => tb.exec('client', BIN.curl, ['-sS', '--max-time', '10', `http://127.0.0.1:15004/`])));
    for (const r of rs) assert.equal(r.stdout, nginx.smallBody, r.stderr);
    const sw = await tb.exec('client', BIN.swaks, [
      '--to',
      'a@b.test',
      '--from',
      'c@d.test',
      '--server',
      '127.0.0.1',
      '--port',
      '15004',
      '--local-interface',
      '127.0.0.2',
      '--timeout',
      '10',
    ]);
    assert.equal(sw.code, 0, sw.stdout);
    assert.equal(await metric(tb, cn, 'sslwall_ttls_handshakes_total', 'role="client"'), 4);
    await Promise.all([nm.proc.stop(), cn.proc.stop()]);
  });

  test('certificate rotation: a bad file is refused, open connections survive, new ones use the new certificates', async () => {
    const open = nodeClient(
      tb,
      `${connectTo(P, '127.0.0.3')} c.write('echo\\n'); let got = '';
      c.on('data', (d) => { got += d; if (got === 'ready\\n') { process.stderr.write('open\\n'); setTimeout(() => c.write('still-here'), 4000); } if (got.endsWith('still-here')) out({ got }); });`,
    );
    await new Promise((r) => setTimeout(r, 800));
    fs.writeFileSync(srvCert.cert, 'not a certificate\n');
    await waitFor('ttls_cert_refused on the server', () => server.events('ttls_cert_refused').length > 0, { explain: () => tail(server.proc.logFile) });
    const s2 = await makeHostCert(certDir, ca, 'server', [tb.server.ipv4, tb.server.ipv6]);
    const c2 = await makeHostCert(certDir, ca, 'client', [tb.client.ipv4, tb.client.ipv6]);
    await waitFor(
      'both sides to load the new certificates',
      () => server.events('ttls_cert_loaded').some((l) => l.serial === s2.serial) && client.events('ttls_cert_loaded').some((l) => l.serial === c2.serial),
    );
    assert.equal((await open).got, 'ready\nstill-here', 'the connection opened before the rotation still works');
    const r = await curlVia('127.0.0.1');
    assert.equal(r.stdout, nginx.smallBody, r.stderr);
    await waitFor(
      'ttls_closed lines naming the new certificates',
      () => client.events('ttls_closed').some((l) => l.peer_serial === s2.serial) && server.events('ttls_closed').some((l) => l.peer_serial === c2.serial),
      {
        explain: () => JSON.stringify({ c: client.events('ttls_closed').slice(-2), s: server.events('ttls_closed').slice(-2), want: [s2.serial, c2.serial] }),
      },
    );
  });

  test('a wrapped connection idle for 30 s still works', async () => {
    assert.deepEqual(await idle, { got: 'ready\nafter-idle' });
  });
});
