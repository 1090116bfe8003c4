// One end alone trying to smuggle plaintext past the real agent in active mode, in namespaces:
// a fake ClientHello header in front of plaintext, plaintext after a well-formed hello record
// before the server answered, jumbo segments; and an interface without Ethernet framing (a real
// tun device, carried over UDP between the namespaces by socat) classified like any other.
// The sink on the server side counts what actually arrived: that, not the filter's own map, is
// what the rules promise.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type AgentEnv, AgentProc, agentEnv, sslwall, writeConfig } from '../../tools/lab/agent-proc.js';
import { type Certs, makeCerts } from '../../tools/lab/certs.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { type SinkPeer, startSink } from '../../tools/lab/peers.js';
import { BIN, requireBins, waitFor } from '../../tools/lab/proc.js';

const SINK_PORT = 9000;
const TUN_PLAIN_PORT = 9101;
const TUN_TLS_PORT = 9443;
const VETH_TLS_PORT = 9444;

interface FlowView {
  saddr: string;
  daddr: string;
  dport: number;
  class: string;
  verdict: string;
}

/**
 * Connect from the client namespace and write each chunk after its delay; report whether the
 * connection broke. Plain node, so the bytes on the wire are exactly the chunks given.
 */
const SENDER = `
const net = require('node:net');
const [host, port, plan] = process.argv.slice(1);
let error = '';
const s = net.connect({ host, port: Number(port) });
s.on('error', (e) => { error = e.code || e.message; });
s.on('connect', async () => {
  for (const step of JSON.parse(plan)) {
    await new Promise((r) => setTimeout(r, step.delayMs));
    if (!s.destroyed) s.write(Buffer.from(step.hex, 'hex'));
  }
  setTimeout(() => { console.log(JSON.stringify({ connected: true, error })); s.destroy(); process.exit(0); }, 1500);
});
setTimeout(() => { console.log(JSON.stringify({ connected: false, error })); process.exit(0); }, 10000);
`;

/**
 * A client that sends, before its first real bytes, one raw segment of its own connection that
 * the server's stack discards: a ClientHello 100000 bytes behind the stream (outside the
 * window). It opens an AF_PACKET socket on the interface first, connects, reads its own SYN
 * (ISN, MACs) and the SYN-ACK from the wire, injects the segment with correct checksums, then
 * writes the plaintext on the real socket. Prints what happened as JSON.
 */
const INJECTOR = `
import json, socket, struct, sys, time
ifname, host, port, hello_hex, plain = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].encode()
# ETH_P_ALL: only such sockets see this host's outgoing packets (its own SYN).
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sniff.bind((ifname, 0))
sniff.settimeout(5)
c = socket.socket()
c.setblocking(False)
try:
    c.connect((host, port))
except BlockingIOError:
    pass
me = c.getsockname()[1]
syn = synack = None
while syn is None or synack is None:
    f = sniff.recv(2048)
    ip = f[14:]
    if f[12:14] != b'\\x08\\x00' or ip[9] != 6:
        continue
    ihl = (ip[0] & 15) * 4
    tcp = ip[ihl:]
    sport, dport, seq = struct.unpack('!HHI', tcp[:8])
    flags = tcp[13]
    if sport == me and dport == port and flags & 0x12 == 0x02:
        syn = (f, seq)
    if sport == port and dport == me and flags & 0x12 == 0x12:
        synack = seq
c.setblocking(True)
frame, isn = syn
def csum(b):
    if len(b) % 2:
        b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
src, dst = frame[26:30], frame[30:34]
payload = bytes.fromhex(hello_hex)
tcp = struct.pack('!HHIIBBHHH', me, port, (isn + 1 - 100000) & 0xffffffff, (synack + 1) & 0xffffffff, 5 << 4, 0x18, 65535, 0, 0) + payload
tcp = tcp[:16] + struct.pack('!H', csum(src + dst + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
iph = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
iph = iph[:10] + struct.pack('!H', csum(iph)) + iph[12:]
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
out.bind((ifname, 0))
out.send(frame[:14] + iph + tcp)
time.sleep(0.2)
error = ''
try:
    c.sendall(plain)
    c.settimeout(1.5)
    c.recv(1)
except socket.timeout:
    pass
except OSError as e:
    error = e.__class__.__name__
print(json.dumps({'isn': isn, 'error': error}))
`;

/**
 * One socket, two connections: TLS to the TLS port (the flow is decided tls and the socket is
 * remembered as allowed in its storage), then connect(AF_UNSPEC), which disconnects a TCP socket
 * and lets it connect again, to the sink, where it writes plaintext. Prints what happened as JSON.
 */
const RECONNECT = `
import ctypes, json, socket, ssl, struct, sys, time
host, tls_port, plain_port, plain = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for attempt in range(50):  # the listener may still be starting
    try:
        raw = socket.create_connection((host, tls_port))
        break
    except ConnectionRefusedError:
        time.sleep(0.1)
t = ctx.wrap_socket(raw)
for _ in range(20):
    t.sendall(b'tls application data ' * 50)
time.sleep(0.3)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=t.detach())
libc = ctypes.CDLL(None, use_errno=True)
unspec = struct.pack('=H14x', socket.AF_UNSPEC)
if libc.connect(s.fileno(), unspec, len(unspec)) != 0:
    sys.exit('connect(AF_UNSPEC) failed: errno %d' % ctypes.get_errno())
error = ''
try:
    s.connect((host, plain_port))
    s.sendall(plain)
    s.settimeout(1.5)
    s.recv(1)
except socket.timeout:
    pass
except OSError as e:
    error = e.__class__.__name__
print(json.dumps({'error': error}))
`;

/** A hello record header as a client writes it: record, handshake header, legacy_version 3.3. */
function helloHeader(recordLen: number): Buffer {
  const b = Buffer.alloc(11);
  b[0] = 22;
  b.writeUInt16BE(0x0301, 1);
  b.writeUInt16BE(recordLen, 3);
  b[5] = 1;
  b.writeUIntBE(recordLen - 4, 6, 3);
  b.writeUInt16BE(0x0303, 9);
  return b;
}

describe('one end alone cannot smuggle plaintext; non-Ethernet interfaces are judged', () => {
  let tb: Testbed;
  let certs: Certs;
  let env: AgentEnv;
  let agent: AgentProc | undefined;
  let sink: SinkPeer;
  let tunClient: string;
  let tunServer: string;
  let tunDir: string;

  before(async () => {
    requireBins(['socat', 'ip', 'openssl']);
    tb = await createTestbed('dataplane-judge');
    const s = tb.subnet;
    tunClient = `10.202.${s}.1`;
    tunServer = `10.202.${s}.2`;
    certs = await makeCerts(tb.tempDir('certs'), { ips: [tunServer], dnsNames: ['server.test'] });
    // Jumbo frames on the veth pair: a 9000-byte MTU lets a segment far past 1500 bytes through.
    for (const h of [tb.client, tb.server]) await tb.execOk(h.ns, BIN.ip, ['link', 'set', h.ifname, 'mtu', '9000']);
    // A tun device in each namespace, joined by socat over UDP on the veth: packets on the tun
    // start with the IP header (no link header), as on WireGuard or ipip.
    const tun = `${tb.prefix}t`;
    for (const [side, self, peer, addr] of [
      ['client', tb.client.ipv4, tb.server.ipv4, tunClient],
      ['server', tb.server.ipv4, tb.client.ipv4, tunServer],
    ] as const) {
      tb.spawn(side, `tun-${side}`, BIN.socat, [
        `UDP4-DATAGRAM:${peer}:7001,bind=${self}:7001`,
        `TUN:${addr}/24,tun-type=tun,iff-no-pi,iff-up,tun-name=${tun}`,
      ]);
    }
    for (const side of ['client', 'server'] as const) {
      await waitFor(`the tun device in the ${side} namespace`, async () => (await tb.exec(side, BIN.ip, ['link', 'show', tun])).code === 0, {
        timeoutMs: 5000,
      });
      await tb.execOk(side, BIN.ip, ['link', 'set', tun, 'mtu', '1400']);
    }
    tunDir = tb.tempDir('tun-peers');
    tb.spawn('server', 'tun-plain', BIN.socat, [
      '-u',
      `TCP4-LISTEN:${TUN_PLAIN_PORT},bind=${tunServer},reuseaddr,fork`,
      `OPEN:${path.join(tunDir, 'plain')},creat,append`,
    ]);
    tb.spawn('server', 'tun-tls', BIN.socat, [
      '-u',
      `OPENSSL-LISTEN:${TUN_TLS_PORT},bind=${tunServer},reuseaddr,fork,cert=${certs.cert},key=${certs.key},verify=0`,
      `OPEN:${path.join(tunDir, 'tls')},creat,append`,
    ]);
    tb.spawn('server', 'veth-tls', BIN.socat, [
      '-u',
      `OPENSSL-LISTEN:${VETH_TLS_PORT},bind=${tb.server.ipv4},reuseaddr,fork,cert=${certs.cert},key=${certs.key},verify=0`,
      `OPEN:${path.join(tunDir, 'veth-tls')},creat,append`,
    ]);
    sink = await startSink(tb, { port: SINK_PORT });
    const cgroup2 = await tb.mountCgroup2();
    env = await agentEnv(tb, 'client', cgroup2);
    writeConfig(env, { mode: 'active' });
    agent = await AgentProc.start(env, ['--iface', tun]);
  });

  after(async () => {
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    await tb?.destroy();
  });

  async function send(host: string, port: number, chunks: Array<{ data: Buffer; delayMs?: number }>) {
    const plan = JSON.stringify(chunks.map((c) => ({ hex: c.data.toString('hex'), delayMs: c.delayMs ?? 0 })));
    const r = await tb.exec('client', process.execPath, ['-e', SENDER, host, String(port), plan], { timeoutMs: 15000 });
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { connected: boolean; error: string };
  }

  async function flows(): Promise<FlowView[]> {
    return JSON.parse((await sslwall(env, ['flows', '--json', '--bpffs', env.bpffs])).stdout) as FlowView[];
  }

  async function flowTo(daddr: string, dport: number, want: string) {
    let seen: FlowView[] = [];
    await waitFor(
      `a ${want} flow to ${daddr}:${dport}`,
      async () => {
        seen = (await flows()).filter((f) => f.daddr === daddr && f.dport === dport);
        return seen.some((f) => `${f.class}/${f.verdict}` === want);
      },
      { timeoutMs: 5000, explain: () => `sslwall flows showed: ${JSON.stringify(seen)}` },
    );
  }

  /** A blocked connection is destroyed by the agent and its entry goes with it: its violation line stays. */
  async function blocked(daddr: string, dport: number) {
    await agent!.waitFor(
      (l) => l.event === 'violation' && l.daddr === daddr && l.dport === dport && l.verdict === 'blocked',
      5000,
      `a blocked violation to ${daddr}:${dport}`,
    );
  }

  async function sinkGrowth(fn: () => Promise<unknown>): Promise<number> {
    const before = sink.bytes();
    await fn();
    await new Promise((r) => setTimeout(r, 300));
    return sink.bytes() - before;
  }

  test('a fake 6-byte ClientHello header in front of 60 KB of plaintext: nothing reaches the server', async () => {
    const fake = Buffer.from([22, 3, 1, 0x40, 0x00, 1]);
    const plain = Buffer.from('POST /exfiltrate HTTP/1.1\r\n\r\n'.padEnd(60_000, 'secret '));
    const got = await sinkGrowth(() => send(tb.server.ipv4, SINK_PORT, [{ data: Buffer.concat([fake, plain]) }]));
    assert.equal(got, 0, `the server received ${got} bytes (the old judge let up to 60 KB through)`);
    await blocked(tb.server.ipv4, SINK_PORT);
  });

  test('a well-formed hello record, then plaintext before any server answer: the server gets the record and not a byte more', async () => {
    const recordLen = 200;
    const record = Buffer.concat([helloHeader(recordLen), Buffer.alloc(recordLen - 6, 0x42)]);
    const plain = Buffer.from('GET /secret HTTP/1.1\r\n\r\n'.repeat(500));
    const got = await sinkGrowth(() => send(tb.server.ipv4, SINK_PORT, [{ data: record }, { data: plain, delayMs: 300 }]));
    assert.equal(record.length, 5 + recordLen);
    assert.ok(got <= record.length, `the server received ${got} bytes, expected at most the ${record.length} bytes of the declared record`);
    await blocked(tb.server.ipv4, SINK_PORT);
  });

  test('a raw segment the server discards (a ClientHello outside its window) does not stand in for the real first bytes', async () => {
    const record = Buffer.concat([helloHeader(200), Buffer.alloc(194, 0x42)]);
    const plain = 'GET /after-a-fake-hello HTTP/1.1\r\n\r\n'.repeat(100);
    let out = '';
    const got = await sinkGrowth(async () => {
      const r = await tb.exec('client', BIN.python3, ['-c', INJECTOR, tb.client.ifname, tb.server.ipv4, String(SINK_PORT), record.toString('hex'), plain], {
        timeoutMs: 15000,
      });
      out = `${r.stdout} ${r.stderr}`;
      assert.equal(r.code, 0, `the injector failed: ${out}`);
    });
    assert.equal(got, 0, `the server received ${got} bytes of plaintext after the injected hello (${out})`);
    await blocked(tb.server.ipv4, SINK_PORT);
  });

  test('a socket remembered as allowed (a tls flow) that disconnects and connects again is judged afresh: its plaintext never arrives', async () => {
    let out = '';
    const got = await sinkGrowth(async () => {
      const r = await tb.exec(
        'client',
        BIN.python3,
        ['-c', RECONNECT, tb.server.ipv4, String(VETH_TLS_PORT), String(SINK_PORT), 'GET /after-tls HTTP/1.1\r\n\r\n'],
        {
          timeoutMs: 15000,
        },
      );
      out = `${r.stdout} ${r.stderr}`;
      assert.equal(r.code, 0, `the reconnecting client failed: ${out}`);
    });
    assert.ok(fs.statSync(path.join(tunDir, 'veth-tls')).size > 0, 'the TLS connection should have carried its data');
    assert.equal(got, 0, `the server received ${got} bytes of plaintext on the reconnected socket (${out})`);
    await blocked(tb.server.ipv4, SINK_PORT);
  });

  test('jumbo frames: an 8 KB plaintext segment on a 9000-byte MTU is judged and dropped', async () => {
    const got = await sinkGrowth(() => send(tb.server.ipv6, SINK_PORT, [{ data: Buffer.from('PUT /x HTTP/1.1\r\n\r\n'.padEnd(8000, 'y')) }]));
    assert.equal(got, 0, `the server received ${got} bytes`);
    await blocked(tb.server.ipv6, SINK_PORT);
  });

  test('a tun interface (no Ethernet header): plaintext is blocked, TLS passes, both shown by sslwall flows', async () => {
    const plainFile = path.join(tunDir, 'plain');
    const r = await send(tunServer, TUN_PLAIN_PORT, [{ data: Buffer.from('GET / HTTP/1.1\r\nHost: tun\r\n\r\n') }]);
    assert.ok(r.connected, `the TCP handshake over the tun should work (error ${r.error})`);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(fs.existsSync(plainFile) ? fs.statSync(plainFile).size : 0, 0, 'plaintext over the tun reached the server');
    await blocked(tunServer, TUN_PLAIN_PORT);

    // Held open for a while, so `sslwall flows` shows it before the close removes its entry.
    const tls = tb.exec('client', '/bin/sh', ['-c', `(printf 'hello over tls'; sleep 3) | ${BIN.socat} -u - OPENSSL:${tunServer}:${TUN_TLS_PORT},verify=0`], {
      timeoutMs: 15000,
    });
    await waitFor('the TLS payload at the server', () => fs.existsSync(path.join(tunDir, 'tls')) && fs.statSync(path.join(tunDir, 'tls')).size > 0, {
      timeoutMs: 5000,
    });
    await flowTo(tunServer, TUN_TLS_PORT, 'tls/allowed');
    const done = await tls;
    assert.equal(done.code, 0, `TLS over the tun failed: ${done.stderr}`);
  });
});
