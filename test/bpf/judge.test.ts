// The classifier against one end that tries to smuggle plaintext, and against input framed so
// the parser would look away: fake or inconsistent ClientHello headers, client bytes past the
// hello before the server answers, segments the receiver discards (out of order, behind the
// stream, rewritten retransmissions), midstream flows without TLS framing, fragments, long IPv6
// header chains, length fields of 0. BPF_PROG_TEST_RUN, as in classifier.test.ts: PKTGEN
// (packets.ts) -> SETUP (a config) -> CHECK (verdicts, the flow map, the counters).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { clientPort, DROP, Lab, PASS } from '../../tools/lab/bpf-lab.js';
import { Conversation, type Endpoint, packet, SYN, tlsAppData, tlsHello } from '../../tools/lab/packets.js';

const BASE = { bypass: { ports: [22], cidrs: [] }, starttls: { smtp: [25] }, connect: { ports: [3128] } };
const V4 = { client: '10.0.0.1', server: '10.0.0.2' };
const V6 = { client: 'fd00::1', server: 'fd00::2' };
const HTTP = 'GET /secret HTTP/1.1\r\nHost: x\r\n\r\n';

let lab: Lab;
before(() => {
  lab = new Lab();
  lab.configure({ mode: 'active', ...BASE });
});
after(() => lab?.close());

function conv(serverPort = 443, fam = V4): Conversation {
  return new Conversation({ addr: fam.client, port: clientPort() }, { addr: fam.server, port: serverPort });
}

function handshake(c: Conversation) {
  assert.equal(lab.egress(c.syn()), PASS);
  assert.equal(lab.ingress(c.synAck()), PASS);
}

function expectFlow(c: Conversation, want: string) {
  const f = lab.flow(c.client, c.server);
  assert.equal(f ? `${f.class}/${f.verdict}` : 'none', want, `flow to port ${c.server.port}: expected ${want}`);
}

function withMode<T>(mode: 'passive' | 'active', fn: () => T): T {
  return lab.withConfig({ mode, ...BASE }, fn);
}

/** The 6 bytes the old judge took for a ClientHello: record type, version, length, handshake type. */
function fakeHelloHeader(recordLen = 16384): Buffer {
  return Buffer.from([22, 3, 1, recordLen >> 8, recordLen & 0xff, 1]);
}

test('a fake 6-byte ClientHello header followed by plaintext is a violation on its first segment', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.fromClient(Buffer.concat([fakeHelloHeader(), Buffer.from(HTTP)]))), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('the fake header alone, then plaintext in the next segments: caught once the handshake header is known', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.fromClient(fakeHelloHeader())), PASS, '6 bytes consistent so far: undecided');
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.fromClient(HTTP)), DROP, 'the handshake length is plaintext bytes that do not fit the record');
  expectFlow(c, 'plaintext/blocked');
});

for (const [what, hello] of [
  ['a handshake length longer than its record', tlsHello('client', 200, 0x0301, 500)],
  ['a handshake length shorter than any ClientHello', tlsHello('client', 200, 0x0301, 10)],
  ['a record longer than 2^14 bytes', tlsHello('client', 16385).subarray(0, 300)],
  ['a record too short for a ClientHello', tlsHello('client', 30)],
  [
    'a legacy_version that is not 3.x',
    (() => {
      const b = tlsHello('client');
      b.writeUInt16BE(0x0203, 9);
      return b;
    })(),
  ],
  ['a ServerHello type where a ClientHello belongs', tlsHello('server')],
] as const) {
  test(`a ClientHello header with ${what} is a violation`, () => {
    const c = conv();
    handshake(c);
    assert.equal(lab.egress(c.fromClient(hello)), DROP);
    expectFlow(c, 'plaintext/blocked');
  });
}

test('a ServerHello whose handshake length does not fit its record is a violation', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsHello('server', 100, 0x0303, 400))), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('a ClientHello split over segments at every header boundary (3 + 3 + 3 + 2 + rest) is still tls', () => {
  const c = conv();
  handshake(c);
  const hello = tlsHello('client', 300);
  for (const [from, to] of [
    [0, 3],
    [3, 6],
    [6, 9],
    [9, 11],
    [11, hello.length],
  ] as const) {
    assert.equal(lab.egress(c.fromClient(hello.subarray(from, to))), PASS, `bytes ${from}-${to}`);
    expectFlow(c, 'pending/allowed');
  }
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
  expectFlow(c, 'tls/allowed');
});

test('a split header whose handshake length arrives inconsistent is caught on that segment', () => {
  const c = conv();
  handshake(c);
  const hello = tlsHello('client', 300, 0x0301, 2000);
  assert.equal(lab.egress(c.fromClient(hello.subarray(0, 7))), PASS);
  assert.equal(lab.egress(c.fromClient(hello.subarray(7))), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('before the server answers, the client may send its declared record and not one byte more', () => {
  const c = conv();
  handshake(c);
  const hello = tlsHello('client', 1000);
  assert.equal(lab.egress(c.fromClient(hello.subarray(0, 600))), PASS);
  assert.equal(lab.egress(c.fromClient(hello.subarray(600))), PASS, 'the rest of the declared record');
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.fromClient('x')), DROP, 'one byte past the record before any ServerHello');
  expectFlow(c, 'plaintext/blocked');
});

test('plaintext riding in the same segment as a well-formed ClientHello record is a violation', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.fromClient(Buffer.concat([tlsHello('client', 100), Buffer.from(HTTP)]))), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('TLS 1.3 0-RTT (application data before the ServerHello) is refused as well: documented', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.fromClient(tlsHello('client', 512))), PASS);
  assert.equal(lab.egress(c.fromClient(tlsAppData(64))), DROP);
});

test('after the ServerHello the client sends freely (the flow is decided, fast path)', () => {
  const c = conv();
  handshake(c);
  lab.egress(c.fromClient(tlsHello('client', 512)));
  lab.ingress(c.fromServer(tlsHello('server', 90)));
  expectFlow(c, 'tls/allowed');
  assert.equal(lab.egress(c.fromClient(tlsAppData(1400))), PASS);
});

test('a segment behind the stream (before the ISN) is not taken as its first bytes', () => {
  const c = conv();
  handshake(c);
  const start = c.clientSeq;
  assert.equal(lab.egress(c.clientAt(start - 5000, tlsHello('client'))), PASS, 'the receiver discards it; so do we');
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.fromClient(HTTP)), DROP, 'the real first bytes are judged');
  expectFlow(c, 'plaintext/blocked');
});

test('a segment ahead of the stream is not taken as its first bytes, and does not move the expected sequence', () => {
  const before = lab.counters().outOfOrder;
  const c = conv();
  handshake(c);
  const start = c.clientSeq;
  assert.equal(lab.egress(c.clientAt(start + 50, tlsHello('client'))), PASS, 'out of order, within what a hello may hold');
  assert.equal(lab.counters().outOfOrder - before, 1n);
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.fromClient(HTTP)), DROP, 'the bytes at the ISN decide');
});

test('client bytes far ahead (past what any hello may hold) before the server answers are a violation', () => {
  const c = conv();
  handshake(c);
  assert.equal(lab.egress(c.clientAt(c.clientSeq + 100_000, HTTP)), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('out-of-order client bytes past the declared record are a violation, even before the gap fills', () => {
  const c = conv();
  handshake(c);
  const hello = tlsHello('client', 200);
  assert.equal(lab.egress(c.fromClient(hello.subarray(0, 100))), PASS);
  assert.equal(lab.egress(c.clientAt(c.clientSeq + hello.length, HTTP)), DROP, 'after the record, ahead of the gap');
  expectFlow(c, 'plaintext/blocked');
});

test('a rewritten retransmission (the first copy was one the receiver discarded) is a violation', () => {
  const c = conv();
  handshake(c);
  const start = c.clientSeq;
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS, 'e.g. sent with a bad checksum: the receiver drops it');
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.clientAt(start, HTTP)), DROP, 'the bytes the receiver keeps, at the same sequence number');
  expectFlow(c, 'plaintext/blocked');
});

test('a faithful retransmission of the hello passes and the flow is still judged normally', () => {
  const c = conv();
  handshake(c);
  const start = c.clientSeq;
  const hello = tlsHello('client');
  assert.equal(lab.egress(c.fromClient(hello)), PASS);
  assert.equal(lab.egress(c.retransmitClient(hello)), PASS);
  assert.equal(lab.egress(c.clientAt(start, hello.subarray(0, 20))), PASS, 'a shorter copy of the same first bytes');
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
  expectFlow(c, 'tls/allowed');
});

test('a segment overlapping judged bytes is judged on its new bytes', () => {
  const c = conv();
  handshake(c);
  const hello = tlsHello('client', 100);
  const start = c.clientSeq;
  assert.equal(lab.egress(c.fromClient(hello.subarray(0, 50))), PASS);
  // The same 50 bytes again, then the rest of the record and plaintext past it.
  const tail = Buffer.concat([hello, Buffer.from(HTTP)]);
  assert.equal(lab.egress(c.clientAt(start, tail)), DROP, 'its new bytes pass the record');
  expectFlow(c, 'plaintext/blocked');
});

test('a second SYN-ACK with another ISN does not move the server stream', () => {
  const c = conv();
  handshake(c);
  lab.egress(c.fromClient(tlsHello('client')));
  const forged = packet({ src: c.server, dst: c.client, flags: SYN | 0x10, seq: c.serverSeq + 10_000 });
  assert.equal(lab.ingress(forged), PASS);
  assert.equal(lab.ingress(c.fromServer('HTTP/1.1 200 OK\r\n\r\nplaintext')), DROP, 'the server bytes at its real ISN are judged');
});

test('midstream: TLS framing from one end alone does not make a flow tls', () => {
  const c = conv(8443);
  assert.equal(lab.ingress(c.fromServer(tlsAppData(200))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsAppData(200))), PASS);
  expectFlow(c, 'pending/allowed');
  assert.equal(lab.egress(c.fromClient(tlsAppData(100))), PASS);
  expectFlow(c, 'tls/allowed');
});

test('midstream: a flow that never shows TLS framing is midstream_unknown, counted, never tls', () => {
  const c = conv(9443);
  const binary = Buffer.alloc(1400);
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 131 + 7) & 0xff || 1;
  const before = lab.counters().byClass.find((x) => x.class === 'midstream_unknown')?.value ?? 0n;
  let n = 0;
  while (lab.flow(c.client, c.server)?.class !== 'midstream_unknown' && n < 100) {
    assert.equal(lab.egress(c.fromClient(binary)), PASS, 'binary (maybe mid-record) is never blocked blindly');
    n++;
  }
  expectFlow(c, 'midstream_unknown/allowed');
  assert.ok(n * binary.length >= 60000, `decided after ${n * binary.length} bytes, expected the pending budget (60000) first`);
  const after = lab.counters().byClass.find((x) => x.class === 'midstream_unknown')?.value ?? 0n;
  assert.equal(after - before, 1n, 'counted once as midstream_unknown/allowed');
});

test('midstream: text from either end is still a violation', () => {
  const c = conv(9444);
  assert.equal(lab.ingress(c.fromServer(tlsAppData(200))), PASS);
  assert.equal(lab.egress(c.fromClient('USER admin PASS hunter2 and some more text\r\n')), DROP);
  expectFlow(c, 'plaintext/blocked');
});

// Parser policies (docs/dataplane.md): TCP fragments and over-long IPv6 chains are dropped in
// active mode, passed and counted in passive mode; length fields of 0 are read from the packet.

function frag(fam: typeof V4 | typeof V6, offset: number, more: boolean, payload = ''): Buffer {
  const src: Endpoint = { addr: fam.client, port: clientPort() };
  const dst: Endpoint = { addr: fam.server, port: 80 };
  return fam === V4
    ? packet({ src, dst, ipv4FragOffset: offset, moreFragments: more, payload })
    : packet({ src, dst, ext: [44], fragOffset: offset, moreFragments: more, payload });
}

for (const [name, fam] of [
  ['IPv4', V4],
  ['IPv6', V6],
] as const) {
  test(`${name} fragments of TCP (a first one with no payload, a later one): dropped in active mode, passed in passive, counted`, () => {
    const c0 = lab.counters();
    assert.equal(lab.egress(frag(fam, 0, true)), DROP, 'first fragment: a TCP header, its payload cut off');
    assert.equal(lab.egress(frag(fam, 3, false, HTTP)), DROP, 'later fragment: plaintext without a TCP header');
    withMode('passive', () => {
      assert.equal(lab.egress(frag(fam, 0, true)), PASS);
      assert.equal(lab.ingress(frag(fam, 3, true, HTTP)), PASS);
    });
    const c1 = lab.counters();
    assert.equal(c1.fragments - c0.fragments, 4n);
    assert.equal(c1.parseDropped - c0.parseDropped, 2n);
  });
}

test('fragments of other protocols (UDP) are not ours: they pass in active mode', () => {
  const v4 = frag(V4, 3, false, 'dns answer part');
  v4[14 + 9] = 17;
  assert.equal(lab.egress(v4), PASS);
  const v6 = frag(V6, 3, false, 'dns answer part');
  v6[14 + 40] = 17; // the fragment header's next header
  assert.equal(lab.egress(v6), PASS);
});

test('an IPv6 chain longer than the parser walks (7 headers, or 512 bytes of one) is dropped in active mode, passed and counted in passive', () => {
  const c0 = lab.counters();
  const mk = (ext: number[], extLen?: number) =>
    packet({ src: { addr: V6.client, port: clientPort() }, dst: { addr: V6.server, port: 80 }, ext, extLen, payload: HTTP });
  assert.equal(lab.egress(mk([0, 60, 60, 60, 60, 60, 60])), DROP);
  assert.equal(lab.egress(mk([60], 512)), DROP);
  withMode('passive', () => assert.equal(lab.egress(mk([0, 60, 60, 60, 60, 60, 60])), PASS));
  const c1 = lab.counters();
  assert.equal(c1.extHdrLimit - c0.extHdrLimit, 3n);
  assert.equal(c1.parseDropped - c0.parseDropped, 2n);
});

test('an IPv6 chain within the walk (6 headers, AH among them) reaches TCP and is judged', () => {
  const c = conv(80, V6);
  const pkt = packet({ src: c.client, dst: c.server, ext: [0, 51, 60, 60, 60, 60], payload: HTTP });
  assert.equal(lab.egress(pkt), DROP);
  expectFlow(c, 'plaintext/blocked');
});

test('BIG TCP: a length field of 0 (IPv4 total length, IPv6 payload length) is read from the packet and judged', () => {
  for (const fam of [V4, V6]) {
    const c = conv(80, fam);
    handshake(c);
    const pkt = packet({ src: c.client, dst: c.server, seq: c.clientSeq, payload: HTTP, ipLength: 0 });
    assert.equal(lab.egress(pkt), DROP, `${fam === V4 ? 'IPv4' : 'IPv6'} length 0 with plaintext`);
    expectFlow(c, 'plaintext/blocked');
  }
});

test('a payload past a 1500-byte MTU (a jumbo frame) is judged like any other', () => {
  const c = conv(80);
  handshake(c);
  const big = `POST /upload HTTP/1.1\r\n\r\n${'a'.repeat(3000)}`;
  assert.equal(lab.egress(c.fromClient(big)), DROP);
  expectFlow(c, 'plaintext/blocked');
});
