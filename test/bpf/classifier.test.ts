// The tc classifier, packet by packet, through BPF_PROG_TEST_RUN: every class, both families,
// each STARTTLS protocol's allowed and forbidden preambles, split records, TFO, malformed input.
// Each case: PKTGEN (packets.ts) -> SETUP (a config) -> CHECK (verdicts and the flow map).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import type { SelfProtection } from '../../agent/apply.js';
import { decode, encode, endpoints } from '../../agent/codec.js';
import { decodeFlowKey, FLOW_MAPS, flowMapKey } from '../../agent/flow-maps.js';
import type { SslwallFlow, SslwallFlowKey } from '../../agent/generated/shared.js';
import { native } from '../../native/index.js';
import { clientPort, DROP, Lab, PASS } from '../../tools/lab/bpf-lab.js';
import { ACK, Conversation, type Endpoint, packet, SYN, tlsAppData, tlsHello } from '../../tools/lab/packets.js';

const BASE = {
  bypass: { ports: [22, 179], cidrs: ['192.0.2.0/24', '2001:db8::/32'] },
  starttls: { smtp: [25, 587], imap: [143], pop3: [110], ftp: [21], postgres: [5432], mysql: [3306] },
  connect: { ports: [3128, 8080] },
};

const V4 = { client: '10.0.0.1', server: '10.0.0.2' };
const V6 = { client: 'fd00::1', server: 'fd00::2' };

let lab: Lab;
before(() => {
  lab = new Lab();
  lab.configure({ mode: 'passive', ...BASE });
});
after(() => lab?.close());

function conv(serverPort: number, fam = V4): Conversation {
  return new Conversation({ addr: fam.client, port: clientPort() }, { addr: fam.server, port: serverPort });
}

function expectFlow(c: Conversation, cls: string, verdict: string) {
  const f = lab.flow(c.client, c.server);
  assert.ok(f, `expected a flow ${c.client.addr}:${c.client.port} -> ${c.server.addr}:${c.server.port} in the map, saw none`);
  assert.equal(`${f.class}/${f.verdict}`, `${cls}/${verdict}`, `flow to port ${c.server.port}: expected ${cls}/${verdict}, saw ${f.class}/${f.verdict}`);
}

/** Client side of the host: client's packets leave (egress), server's arrive (ingress). */
function handshake(c: Conversation) {
  assert.equal(lab.egress(c.syn()), PASS);
  assert.equal(lab.ingress(c.synAck()), PASS);
}

/** A flow through its handshake and both hellos: decided tls (or starttls on such a port). */
function tlsFlow(serverPort: number): Conversation {
  const c = conv(serverPort);
  handshake(c);
  lab.egress(c.fromClient(tlsHello('client')));
  lab.ingress(c.fromServer(tlsHello('server')));
  return c;
}

function withMode<T>(mode: 'passive' | 'active', fn: () => T): T {
  return lab.withConfig({ mode, ...BASE }, fn);
}

for (const [name, fam] of [
  ['IPv4', V4],
  ['IPv6', V6],
] as const) {
  test(`${name}: ClientHello then ServerHello is tls, and later packets take the fast path`, () => {
    const c = conv(443, fam);
    handshake(c);
    assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
    expectFlow(c, 'tls', 'allowed');
    assert.equal(lab.egress(c.fromClient('not parsed any more: the flow is decided')), PASS);
    expectFlow(c, 'tls', 'allowed');
  });

  test(`${name}: a plaintext request is reported in passive mode and passes`, () => {
    const c = conv(80, fam);
    handshake(c);
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), PASS);
    expectFlow(c, 'plaintext', 'reported');
  });

  test(`${name}: in active mode the first plaintext packet and all that follow are dropped; RST passes`, () => {
    withMode('active', () => {
      const c = conv(80, fam);
      handshake(c);
      assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
      expectFlow(c, 'plaintext', 'blocked');
      assert.equal(lab.egress(c.fromClient('more')), DROP);
      assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), DROP, 'the server side of a blocked flow is dropped too');
      assert.equal(lab.egress(c.rstFromClient()), PASS, 'a RST of a blocked flow passes so the peer fails fast');
    });
  });

  test(`${name}: a server that speaks plaintext first is a violation`, () => {
    const c = conv(7000, fam);
    handshake(c);
    assert.equal(lab.ingress(c.fromServer('HELLO I AM A PLAINTEXT SERVER\r\n')), PASS);
    expectFlow(c, 'plaintext', 'reported');
  });

  test(`${name}: server host view (client arrives on ingress) classifies the same`, () => {
    const c = conv(443, fam);
    assert.equal(lab.ingress(c.syn()), PASS);
    assert.equal(lab.egress(c.synAck()), PASS);
    assert.equal(lab.ingress(c.fromClient(tlsHello('client'))), PASS);
    assert.equal(lab.egress(c.fromServer(tlsHello('server'))), PASS);
    expectFlow(c, 'tls', 'allowed');
    withMode('active', () => {
      const p = conv(80, fam);
      lab.ingress(p.syn());
      lab.egress(p.synAck());
      assert.equal(lab.ingress(p.fromClient('GET / HTTP/1.0\r\n\r\n')), DROP, 'the server host drops plaintext on ingress');
      expectFlow(p, 'plaintext', 'blocked');
    });
  });

  test(`${name}: TCP Fast Open: a ClientHello in the SYN is classified, and so is plaintext`, () => {
    const c = conv(443, fam);
    assert.equal(lab.egress(c.syn(tlsHello('client'))), PASS);
    assert.equal(lab.ingress(c.synAck()), PASS);
    assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
    expectFlow(c, 'tls', 'allowed');
    withMode('active', () => {
      const p = conv(80, fam);
      assert.equal(lab.egress(p.syn('GET / HTTP/1.1\r\n\r\n')), DROP, 'plaintext riding in the SYN is dropped with it');
      expectFlow(p, 'plaintext', 'blocked');
    });
  });

  test(`${name}: bypass by server port and by peer CIDR`, () => {
    const ssh = conv(22, fam);
    handshake(ssh);
    assert.equal(lab.ingress(ssh.fromServer('SSH-2.0-OpenSSH_9.2\r\n')), PASS);
    expectFlow(ssh, 'bypass', 'allowed');
    const peer = name === 'IPv4' ? '192.0.2.7' : '2001:db8::7';
    const c = new Conversation({ addr: fam.client, port: clientPort() }, { addr: peer, port: 80 });
    handshake(c);
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
    expectFlow(c, 'bypass', 'allowed');
  });
}

test('a TLS record header split over segments (1 + 2 + rest) is still TLS', () => {
  const c = conv(443);
  handshake(c);
  const hello = tlsHello('client');
  assert.equal(lab.egress(c.fromClient(hello.subarray(0, 1))), PASS);
  assert.equal(lab.egress(c.fromClient(hello.subarray(1, 3))), PASS);
  expectFlow(c, 'pending', 'allowed');
  assert.equal(lab.egress(c.fromClient(hello.subarray(3))), PASS);
  const sh = tlsHello('server');
  assert.equal(lab.ingress(c.fromServer(sh.subarray(0, 4))), PASS);
  assert.equal(lab.ingress(c.fromServer(sh.subarray(4))), PASS);
  expectFlow(c, 'tls', 'allowed');
});

test('plaintext trickled one byte a segment is caught on its first byte', () => {
  const c = conv(443);
  handshake(c);
  assert.equal(lab.egress(c.fromClient('G')), PASS);
  expectFlow(c, 'plaintext', 'reported');
});

test('a handshake record that is not a hello (wrong type byte) is not TLS', () => {
  const c = conv(443);
  handshake(c);
  const bogus = tlsHello('client');
  bogus[5] = 99;
  lab.egress(c.fromClient(bogus));
  expectFlow(c, 'plaintext', 'reported');
});

test('a retransmitted segment is not judged twice', () => {
  const c = conv(25);
  handshake(c);
  lab.ingress(c.fromServer('220 mx.test ESMTP\r\n'));
  lab.egress(c.fromClient('STARTTLS\r\n'));
  assert.equal(lab.egress(c.retransmitClient('STARTTLS\r\n')), PASS);
  expectFlow(c, 'pending', 'allowed');
});

// STARTTLS: each protocol's allowed negotiation, then a forbidden command.
const starttlsCases: Array<{ proto: string; port: number; server: string[]; client: string[]; forbidden: string }> = [
  {
    proto: 'smtp',
    port: 25,
    server: ['220 mx.test ESMTP\r\n', '250-mx.test\r\n250 STARTTLS\r\n', '220 2.0.0 Ready to start TLS\r\n'],
    client: ['EHLO client.test\r\n', 'STARTTLS\r\n'],
    forbidden: 'MAIL FROM:<a@b.test>\r\n',
  },
  {
    proto: 'smtp (587)',
    port: 587,
    server: ['220 mx.test ESMTP\r\n', '250 STARTTLS\r\n', '220 go ahead\r\n'],
    client: ['helo client\r\n', 'starttls\r\n'],
    forbidden: 'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n',
  },
  {
    proto: 'imap',
    port: 143,
    server: ['* OK IMAP4rev1 ready\r\n', '* CAPABILITY IMAP4rev1 STARTTLS\r\na1 OK done\r\n', 'a2 OK Begin TLS\r\n'],
    client: ['a1 CAPABILITY\r\n', 'a2 STARTTLS\r\n'],
    forbidden: 'a1 LOGIN alice secret\r\n',
  },
  {
    proto: 'pop3',
    port: 110,
    server: ['+OK POP3 ready\r\n', '+OK\r\nSTLS\r\n.\r\n', '+OK Begin TLS\r\n'],
    client: ['CAPA\r\n', 'STLS\r\n'],
    forbidden: 'USER alice\r\n',
  },
  {
    proto: 'ftp',
    port: 21,
    server: ['220 FTP ready\r\n', '211-Features:\r\n AUTH TLS\r\n211 End\r\n', '234 AUTH TLS OK\r\n'],
    client: ['FEAT\r\n', 'AUTH TLS\r\n'],
    forbidden: 'USER anonymous\r\n',
  },
];

for (const tc of starttlsCases) {
  test(`STARTTLS ${tc.proto}: greeting, allowed commands, upgrade, then TLS is starttls`, () => {
    const c = conv(tc.port);
    handshake(c);
    for (let i = 0; i < tc.client.length; i++) {
      assert.equal(lab.ingress(c.fromServer(tc.server[i]!)), PASS);
      assert.equal(lab.egress(c.fromClient(tc.client[i]!)), PASS);
      expectFlow(c, 'pending', 'allowed');
    }
    assert.equal(lab.ingress(c.fromServer(tc.server[tc.client.length]!)), PASS);
    assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
    assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
    expectFlow(c, 'starttls', 'allowed');
  });

  test(`STARTTLS ${tc.proto}: a forbidden command before TLS is a violation`, () => {
    const c = conv(tc.port);
    handshake(c);
    lab.ingress(c.fromServer(tc.server[0]!));
    lab.egress(c.fromClient(tc.forbidden));
    expectFlow(c, 'plaintext', 'reported');
  });

  test(`STARTTLS ${tc.proto}: plaintext after the upgrade command is a violation`, () => {
    const c = conv(tc.port);
    handshake(c);
    lab.ingress(c.fromServer(tc.server[0]!));
    lab.egress(c.fromClient(tc.client[tc.client.length - 1]!));
    lab.ingress(c.fromServer(tc.server[tc.client.length]!));
    lab.egress(c.fromClient(tc.client[0]!));
    expectFlow(c, 'plaintext', 'reported');
  });
}

// Where a command word ends: it must be followed by a space or the line end, inside the segment.
const wordEdges: Array<{ port: number; greeting: string; segment: string; allowed: boolean }> = [
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'QUIT\r\n', allowed: true },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'noop\n', allowed: true },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'STARTTLS\n', allowed: true },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'QUITX\r\n', allowed: false },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'QUI\r\n', allowed: false },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: 'STARTTL\n', allowed: false },
  { port: 25, greeting: '220 mx ESMTP\r\n', segment: '\n', allowed: false },
  { port: 143, greeting: '* OK ready\r\n', segment: 'a1 NOOP\r\n', allowed: true },
  { port: 143, greeting: '* OK ready\r\n', segment: 'a1 NOOPS\r\n', allowed: false },
  { port: 143, greeting: '* OK ready\r\n', segment: 'a1 NOO\n', allowed: false },
];

for (const tc of wordEdges) {
  test(`STARTTLS word edges: ${JSON.stringify(tc.segment)} on port ${tc.port} is ${tc.allowed ? 'allowed' : 'a violation'}`, () => {
    const c = conv(tc.port);
    handshake(c);
    lab.ingress(c.fromServer(tc.greeting));
    lab.egress(c.fromClient(tc.segment));
    if (tc.allowed) expectFlow(c, 'pending', 'allowed');
    else expectFlow(c, 'plaintext', 'reported');
  });
}

test('STARTTLS smtp: an allowed command smuggling a second one in the same segment is a violation', () => {
  const c = conv(25);
  handshake(c);
  lab.ingress(c.fromServer('220 mx ESMTP\r\n'));
  lab.egress(c.fromClient('EHLO x\r\nMAIL FROM:<a@b>\r\n'));
  expectFlow(c, 'plaintext', 'reported');
});

test('STARTTLS smtp: a server that never stops talking exhausts the budget', () => {
  const c = conv(25);
  handshake(c);
  let violated = false;
  for (let i = 0; i < 10 && !violated; i++) {
    lab.ingress(c.fromServer(`250-${'x'.repeat(1000)}\r\n`));
    violated = lab.flow(c.client, c.server)?.class === 'plaintext';
  }
  assert.ok(violated, 'expected the plaintext budget (4096 bytes) to run out within 10 KB');
});

test('STARTTLS smtp: a command the filter cannot read passes unjudged and counted (fail open), and judging goes on', () => {
  withMode('active', () => {
    const c = conv(25);
    handshake(c);
    lab.ingress(c.fromServer('220 mx ESMTP\r\n'));
    // The IPv4 total length claims 200 bytes more than the frame carries: the headers parse,
    // the payload read fails. Such a segment proves nothing; it must not be dropped.
    const short = c.fromClient('EHLO x\r\n');
    short.writeUInt16BE(short.readUInt16BE(14 + 2) + 200, 14 + 2);
    const before = lab.counters().truncated;
    assert.equal(lab.egress(short), PASS, 'an unreadable preamble segment passes even in active mode');
    assert.equal(lab.counters().truncated - before, 1n, 'the unread segment is counted in packets_truncated');
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.egress(c.retransmitClient('EHLO x\r\n')), PASS, 'its retransmission is judged: an allowed command');
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.egress(c.fromClient('MAIL FROM:<a@b.test>\r\n')), DROP, 'a readable forbidden command is still caught');
    expectFlow(c, 'plaintext', 'blocked');
  });
});

test('STARTTLS on a port not configured for it: the greeting is plaintext', () => {
  const c = conv(2525);
  handshake(c);
  lab.ingress(c.fromServer('220 mx ESMTP\r\n'));
  expectFlow(c, 'plaintext', 'reported');
});

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
test('postgres: SSLRequest, S, then TLS is starttls', () => {
  const c = conv(5432);
  handshake(c);
  assert.equal(lab.egress(c.fromClient(SSL_REQUEST)), PASS);
  assert.equal(lab.ingress(c.fromServer('S')), PASS);
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
  expectFlow(c, 'starttls', 'allowed');
});

test('postgres: a plaintext StartupMessage is a violation', () => {
  const c = conv(5432);
  handshake(c);
  const startup = Buffer.concat([Buffer.from([0, 0, 0, 0x25, 0, 3, 0, 0]), Buffer.from('user\0alice\0database\0db\0\0')]);
  lab.egress(c.fromClient(startup));
  expectFlow(c, 'plaintext', 'reported');
});

test('postgres: answer N (no SSL), then plaintext startup, is a violation', () => {
  const c = conv(5432);
  handshake(c);
  lab.egress(c.fromClient(SSL_REQUEST));
  lab.ingress(c.fromServer('N'));
  lab.egress(c.fromClient(Buffer.from([0, 0, 0, 9, 0, 3, 0, 0, 0])));
  expectFlow(c, 'plaintext', 'reported');
});

test('postgres: a server speaking first (client-first protocol) is a violation', () => {
  const c = conv(5432);
  handshake(c);
  lab.ingress(c.fromServer('E'));
  expectFlow(c, 'plaintext', 'reported');
});

function mysqlGreeting(): Buffer {
  const body = Buffer.concat([Buffer.from([10]), Buffer.from('8.0.36\0'), Buffer.alloc(40, 1)]);
  const hdr = Buffer.from([body.length, 0, 0, 0]);
  return Buffer.concat([hdr, body]);
}
function mysqlSslRequest(ssl: boolean): Buffer {
  const b = Buffer.alloc(36);
  b[0] = 32;
  b[3] = 1;
  b.writeUInt32LE(0x000aa285 | (ssl ? 0x800 : 0), 4);
  b.writeUInt32LE(16777216, 8);
  b[12] = 45;
  return b;
}
test('mysql: greeting, SSLRequest with CLIENT_SSL, then TLS is starttls', () => {
  const c = conv(3306);
  handshake(c);
  assert.equal(lab.ingress(c.fromServer(mysqlGreeting())), PASS);
  assert.equal(lab.egress(c.fromClient(mysqlSslRequest(true))), PASS);
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
  expectFlow(c, 'starttls', 'allowed');
});

test('mysql: a handshake response without CLIENT_SSL is a violation', () => {
  const c = conv(3306);
  handshake(c);
  lab.ingress(c.fromServer(mysqlGreeting()));
  const resp = Buffer.concat([mysqlSslRequest(false), Buffer.from('alice\0')]);
  resp[0] = resp.length - 4;
  lab.egress(c.fromClient(resp));
  expectFlow(c, 'plaintext', 'reported');
});

const CONNECT_REQ = 'CONNECT backend.test:443 HTTP/1.1\r\nHost: backend.test:443\r\nUser-Agent: curl/7.88\r\n\r\n';
test('HTTP CONNECT: request, 200, then TLS is connect', () => {
  const c = conv(3128);
  handshake(c);
  assert.equal(lab.egress(c.fromClient(CONNECT_REQ)), PASS);
  assert.equal(lab.ingress(c.fromServer('HTTP/1.1 200 Connection established\r\n\r\n')), PASS);
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
  expectFlow(c, 'connect', 'allowed');
});

test('HTTP CONNECT: plain proxying (GET http://...) is a violation', () => {
  const c = conv(8080);
  handshake(c);
  lab.egress(c.fromClient('GET http://backend.test/ HTTP/1.1\r\nHost: backend.test\r\n\r\n'));
  expectFlow(c, 'plaintext', 'reported');
});

test('HTTP CONNECT: plaintext after the tunnel opens is a violation', () => {
  const c = conv(3128);
  handshake(c);
  lab.egress(c.fromClient(CONNECT_REQ));
  lab.ingress(c.fromServer('HTTP/1.1 200 Connection established\r\n\r\n'));
  lab.egress(c.fromClient('GET / HTTP/1.1\r\nHost: backend.test\r\n\r\n'));
  expectFlow(c, 'plaintext', 'reported');
});

test('HTTP CONNECT: a request with plaintext riding after the headers is a violation', () => {
  const c = conv(3128);
  handshake(c);
  lab.egress(c.fromClient(`${CONNECT_REQ}GET / HTTP/1.1\r\n\r\n`));
  expectFlow(c, 'plaintext', 'reported');
});

test('a flow open before the agent (no SYN seen) is judged on its next payload, never blindly', () => {
  const tls = conv(443);
  assert.equal(lab.egress(tls.fromClient('', ACK)), PASS);
  assert.equal(lab.flow(tls.client, tls.server), undefined, 'a bare ACK of an unknown flow creates nothing');
  assert.equal(lab.ingress(tls.fromServer(tlsAppData())), PASS);
  expectFlow(tls, 'pending', 'allowed'); // one end alone cannot make a midstream flow tls
  assert.equal(lab.egress(tls.fromClient(tlsAppData())), PASS);
  expectFlow(tls, 'tls', 'allowed');
  withMode('active', () => {
    const plain = conv(8000);
    assert.equal(lab.egress(plain.fromClient('', ACK)), PASS);
    assert.equal(lab.egress(plain.fromClient('PING\r\n')), DROP);
    expectFlow(plain, 'plaintext', 'blocked');
  });
});

test('mode off: nothing is classified or dropped', () => {
  lab.withConfig({ mode: 'off', ...BASE }, () => {
    const c = conv(80);
    handshake(c);
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
    assert.equal(lab.flow(c.client, c.server), undefined);
  });
});

test('switching passive -> active blocks plaintext flows already reported', () => {
  const c = conv(80);
  handshake(c);
  lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n'));
  expectFlow(c, 'plaintext', 'reported');
  withMode('active', () => {
    expectFlow(c, 'plaintext', 'blocked');
    assert.equal(lab.egress(c.fromClient('more')), DROP);
  });
  expectFlow(c, 'plaintext', 'reported');
});

test('IPv6 extension headers (hop-by-hop, routing, destination options) are walked', () => {
  const client: Endpoint = { addr: V6.client, port: clientPort() };
  const server: Endpoint = { addr: V6.server, port: 80 };
  assert.equal(lab.egress(packet({ src: client, dst: server, flags: SYN, seq: 1, ext: [0, 43, 60] })), PASS);
  lab.egress(packet({ src: client, dst: server, seq: 2, ext: [0, 60], payload: 'GET / HTTP/1.1\r\n\r\n' }));
  const f = lab.flow(client, server);
  assert.equal(f?.class, 'plaintext', `expected plaintext behind extension headers, saw ${f?.class}`);
});

test('IPv6 non-first fragments and IPv4 non-first fragments pass and are counted', () => {
  const before = lab.counters().fragments;
  const a: Endpoint = { addr: V6.client, port: clientPort() };
  assert.equal(lab.egress(packet({ src: a, dst: { addr: V6.server, port: 80 }, ext: [44], fragOffset: 3, payload: 'x' })), PASS);
  const b: Endpoint = { addr: V4.client, port: clientPort() };
  assert.equal(lab.egress(packet({ src: b, dst: { addr: V4.server, port: 80 }, ipv4FragOffset: 3, payload: 'x' })), PASS);
  assert.equal(lab.counters().fragments - before, 2n);
});

test('truncated and garbage packets pass, are counted, and create no flow', () => {
  const before = lab.counters().truncated;
  const flowsBefore = lab.flows().length;
  const good = new Conversation({ addr: V4.client, port: clientPort() }, { addr: V4.server, port: 80 }).fromClient('GET / HTTP/1.1\r\n\r\n');
  // BPF_PROG_TEST_RUN itself refuses packets without a whole IPv4 header (EINVAL), as the
  // stack never hands tc such a packet; cuts start after it.
  const cases = [
    good.subarray(0, 14 + 20), // no TCP header at all
    good.subarray(0, 14 + 20 + 10), // TCP header cut
    (() => {
      const b = Buffer.from(good);
      b[14] = 0x4f;
      return b;
    })(), // IHL 60 > packet
    (() => {
      const b = Buffer.from(good);
      b[14 + 20 + 12] = 0xf0;
      return b;
    })(), // doff 60 > segment
    (() => {
      const b = Buffer.from(good);
      b.writeUInt16BE(10, 16);
      return b;
    })(), // tot_len < header
  ];
  for (const pkt of cases) assert.equal(lab.egress(pkt), PASS);
  assert.ok(lab.counters().truncated - before >= BigInt(cases.length), 'every malformed packet is counted as truncated');
  assert.equal(lab.flows().length, flowsBefore, 'no flow is created from a malformed packet');
  const garbage = Buffer.alloc(64, 0xff);
  assert.equal(lab.egress(garbage), PASS, 'an unknown ethertype passes');
});

test('property (passive): random printable text is plaintext/reported and passes; random bytes always pass', () => {
  fc.assert(
    fc.property(
      fc.string({
        unit: fc.constantFrom(...' \t\r\nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:/.-_<>@'.split('')),
        minLength: 1,
        maxLength: 300,
      }),
      fc.boolean(),
      (text, fromServer) => {
        const c = conv(443);
        handshake(c);
        const r = fromServer ? lab.ingress(c.fromServer(text)) : lab.egress(c.fromClient(text));
        const f = lab.flow(c.client, c.server);
        assert.equal(r, PASS, `passive mode passes the violating packet, saw verdict ${r}`);
        assert.equal(`${f?.class}/${f?.verdict}`, 'plaintext/reported', `text ${JSON.stringify(text)} from the ${fromServer ? 'server' : 'client'}`);
      },
    ),
    { numRuns: 300 },
  );
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 200 }),
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ minLength: 40, maxLength: 120 }),
      fc.boolean(),
      (bytes, flags, l3, v6) => {
        const c = conv(443);
        const r = lab.egress(packet({ src: c.client, dst: c.server, flags, payload: Buffer.from(bytes) }));
        // Random bytes after a valid Ethernet header: IP and TCP headers are garbage.
        const eth = Buffer.from([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, v6 ? 0x86 : 0x08, v6 ? 0xdd : 0x00]);
        const body = Buffer.from(l3);
        if (v6) body[0] = 0x60 | (body[0]! & 0x0f);
        else body[0] = 0x40 | Math.max(5, body[0]! & 0x0f);
        const raw = lab.egress(Buffer.concat([eth, body]));
        // The lab is in passive mode: nothing is ever dropped, whatever the bytes.
        assert.equal(r, PASS, `random payload with TCP flags 0x${flags.toString(16)}: expected pass, saw ${r}`);
        assert.equal(raw, PASS, `random ${v6 ? 'IPv6' : 'IPv4'} headers: expected pass, saw ${raw}`);
      },
    ),
    { numRuns: 300 },
  );
});

test('joining midway: a segment from the middle of a TLS record is not judged plaintext', () => {
  const c = conv(443);
  const midRecord = Buffer.alloc(1200);
  for (let i = 0; i < midRecord.length; i++) midRecord[i] = (i * 167 + 13) & 0xff; // binary, no record header
  withMode('active', () => {
    assert.equal(lab.egress(c.fromClient(midRecord)), PASS, 'binary data mid-record passes');
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.egress(c.fromClient(tlsAppData(100))), PASS);
    assert.equal(lab.ingress(c.fromServer(tlsAppData(100))), PASS);
    expectFlow(c, 'tls', 'allowed');
  });
});

test('a SYN on the 4-tuple of a decided flow starts a new flow that is judged again', () => {
  const client = { addr: V4.client, port: clientPort() };
  const server = { addr: V4.server, port: 443 };
  const first = new Conversation(client, server);
  handshake(first);
  lab.egress(first.fromClient(tlsHello('client')));
  lab.ingress(first.fromServer(tlsHello('server')));
  expectFlow(first, 'tls', 'allowed');
  withMode('active', () => {
    const again = new Conversation(client, server);
    handshake(again);
    expectFlow(again, 'pending', 'allowed');
    assert.equal(lab.egress(again.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP, 'plaintext on a reused 4-tuple is caught');
  });
});

test('a ServerHello before any ClientHello (a server speaking first on a TLS port) is a violation', () => {
  const c = conv(443);
  handshake(c);
  lab.ingress(c.fromServer(tlsHello('server')));
  expectFlow(c, 'plaintext', 'reported');
});

test('TLS from the first byte on a STARTTLS port is tls, not starttls', () => {
  const c = tlsFlow(5432);
  expectFlow(c, 'tls', 'allowed');
});

test('HTTP CONNECT: a client that sends its ClientHello before the 200 arrives is still connect', () => {
  const c = conv(3128);
  handshake(c);
  lab.egress(c.fromClient(CONNECT_REQ));
  lab.egress(c.fromClient(tlsHello('client')));
  assert.equal(lab.ingress(c.fromServer('HTTP/1.1 200 Connection established\r\n\r\n')), PASS);
  lab.ingress(c.fromServer(tlsHello('server')));
  expectFlow(c, 'connect', 'allowed');
});

test('a SYN that claims to come from the server side of a decided flow does not reset it', () => {
  const c = tlsFlow(443);
  expectFlow(c, 'tls', 'allowed');
  withMode('active', () => {
    // A forged SYN "from the server" (its address and port) arriving at the client host.
    assert.equal(lab.ingress(packet({ src: c.server, dst: c.client, flags: SYN, seq: 77 })), PASS);
    expectFlow(c, 'tls', 'allowed');
    assert.equal(lab.ingress(c.fromServer(tlsAppData(200))), PASS, 'the live TLS flow goes on');
  });
});

// The agent's own flows (agent/self.ts). BPF_PROG_TEST_RUN runs the program in the caller's
// context, so a SYN sent through it here is a SYN sent by this process: self_tgid = process.pid
// makes this process the agent; any other pid makes it "another process".
const ME = { tgid: process.pid, ports: [2379], localPorts: [] };
const SOMEONE_ELSE = { tgid: 1, ports: [2379], localPorts: [] };

function withSelf<T>(self: SelfProtection, fn: () => T): T {
  return lab.withConfig({ mode: 'active', ...BASE }, fn, self);
}

/** The full key (struct sslwall_flow_key) of a conversation's flow, from its flow map (it must be there). */
function flowKeyOf(c: Conversation): Buffer {
  for (const name of FLOW_MAPS) {
    for (const [k, v] of native().mapDump(lab.maps[name])) {
      const key = decodeFlowKey(k);
      const e = endpoints(key, decode<SslwallFlow>('sslwall_flow', v).client_is_lo === 1);
      if (e.sport === c.client.port && e.dport === c.server.port) return encode<SslwallFlowKey>('sslwall_flow_key', key);
    }
  }
  throw new Error(`no flow for port ${c.client.port} -> ${c.server.port}`);
}

function forgetFlow(c: Conversation): void {
  const { map, key } = flowMapKey(flowKeyOf(c));
  native().mapDelete(lab.maps[map], key);
}

test("active mode: the agent's own plaintext connection (its SYN sent by the agent's process) is bypassed", () => {
  withSelf(ME, () => {
    const c = conv(2379);
    handshake(c);
    expectFlow(c, 'bypass', 'allowed');
    assert.equal(lab.egress(c.fromClient('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')), PASS, "the agent's plaintext etcd request passes");
    assert.equal(lab.ingress(c.fromServer('plaintext answer')), PASS);
  });
});

test("active mode: the same plaintext connection from another process is blocked (the bypass is the agent's alone)", () => {
  withSelf(SOMEONE_ELSE, () => {
    const c = conv(2379);
    handshake(c);
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.egress(c.fromClient('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')), DROP);
    expectFlow(c, 'plaintext', 'blocked');
  });
});

test("the agent's connection to a port that is not its control plane's is judged (the TTLS proxy relaying an application)", () => {
  withSelf(ME, () => {
    const c = conv(80);
    handshake(c);
    expectFlow(c, 'pending', 'allowed');
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
  });
});

test("this host's SYN to a port that is not the control plane's is judged even if its tuple is listed as the agent's", () => {
  // The SYN skips the agent-flow lookup there (no entry can be on such a tuple: the agent seeds
  // and records only its control-plane and listener sockets), so a stray entry changes nothing.
  withSelf(ME, () => {
    const c = conv(80);
    const syn = c.syn();
    assert.equal(lab.egress(syn), PASS);
    native().mapUpdate(lab.maps.sslwall_self_flows, flowKeyOf(c), Buffer.from([1]));
    assert.equal(lab.egress(syn), PASS, 'the SYN again, its tuple now listed');
    expectFlow(c, 'pending', 'allowed');
    lab.ingress(c.synAck());
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
  });
});

test("the agent's SYN retransmitted from a timer (another task current) keeps its flow bypassed", () => {
  const c = conv(2379);
  const syn = c.syn();
  withSelf(ME, () => assert.equal(lab.egress(syn), PASS));
  withSelf(SOMEONE_ELSE, () => {
    assert.equal(lab.egress(syn), PASS, 'the retransmitted SYN');
    expectFlow(c, 'bypass', 'allowed');
    lab.ingress(c.synAck());
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
  });
});

test("another process's SYN retransmitted while the agent's process runs does not become the agent's", () => {
  const c = conv(2379);
  const syn = c.syn();
  withSelf(SOMEONE_ELSE, () => assert.equal(lab.egress(syn), PASS));
  withSelf(ME, () => {
    assert.equal(lab.egress(syn), PASS, 'the retransmitted SYN, sent while the agent is the current task');
    expectFlow(c, 'pending', 'allowed');
    lab.ingress(c.synAck());
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
  });
});

test("an agent flow evicted from the flows map is still the agent's: its next segment is not judged", () => {
  withSelf(ME, () => {
    const c = conv(2379);
    handshake(c);
    forgetFlow(c);
    assert.equal(lab.flow(c.client, c.server), undefined, 'evicted');
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
    expectFlow(c, 'bypass', 'allowed');
  });
});

test("the agent's metrics port is bypassed where this host is the server, and only there", () => {
  withSelf({ tgid: 1, ports: [], localPorts: [9464] }, () => {
    const scrape = conv(9464);
    assert.equal(lab.ingress(scrape.syn()), PASS);
    assert.equal(lab.egress(scrape.synAck()), PASS);
    assert.equal(lab.ingress(scrape.fromClient('GET /metrics HTTP/1.1\r\n\r\n')), PASS, 'a scrape of this host');
    expectFlow(scrape, 'bypass', 'allowed');
    const out = conv(9464);
    handshake(out);
    assert.equal(lab.egress(out.fromClient('GET /metrics HTTP/1.1\r\n\r\n')), DROP, "this host's client of port 9464 elsewhere");
  });
});

test("violations of remote clients (inbound to a port here) are counted apart from this host's clients'", () => {
  withSelf(SOMEONE_ELSE, () => {
    const before = lab.counters();
    const inbound = conv(7001);
    lab.ingress(inbound.syn());
    lab.egress(inbound.synAck());
    assert.equal(lab.ingress(inbound.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP, 'active mode blocks remote clients too');
    const outbound = conv(7001);
    handshake(outbound);
    assert.equal(lab.egress(outbound.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
    const after = lab.counters();
    const blocked = (c: typeof after) => c.byClass.find((x) => x.class === 'plaintext' && x.verdict === 'blocked')?.value ?? 0n;
    assert.equal(blocked(after) - blocked(before), 2n, 'both are in the totals');
    assert.equal(after.remoteBlocked - before.remoteBlocked, 1n, 'one of them was a remote client');
    assert.equal(after.remoteReported - before.remoteReported, 0n);
  });
});

// The egress fast path from the socket's mark in sslwall_sk_allowed (docs/dataplane.md, "Fast
// path"). BPF_PROG_TEST_RUN gives each call a stand-in socket that lives through its repeats: the
// first run of a call takes the flow map, and where the flow is remembered, the other runs read
// the mark. Every stand-in socket has hash 0, so all of them share slot 0: a mark left there by
// an earlier call's socket (a TLS flow) must not serve a later one (a new cookie), which the
// blocked and plaintext cases below would show as a pass. The last run's verdict is what the
// kernel reports.
function egressRepeat(pkt: Buffer, repeat = 5): number {
  return native().testRun(lab.egressProg, pkt, repeat).retval | 0;
}

test('egress socket mark: a decided TLS flow passes on every packet of a socket, and stays tls', () => {
  const c = tlsFlow(443);
  assert.equal(egressRepeat(c.fromClient(tlsAppData(1400))), PASS);
  expectFlow(c, 'tls', 'allowed');
});

test('egress socket mark: a blocked flow is never remembered, so every packet of its socket is dropped', () => {
  withMode('active', () => {
    const c = conv(80);
    handshake(c);
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
    assert.equal(egressRepeat(c.fromClient('more plaintext on the same socket')), DROP, 'the 5th packet of the socket should still be dropped');
    assert.equal(egressRepeat(c.rstFromClient()), PASS, 'its RST still passes');
    expectFlow(c, 'plaintext', 'blocked');
  });
});

test('egress socket mark: a plaintext flow reported in passive mode is dropped once the mode turns active', () => {
  const c = conv(80);
  handshake(c);
  assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
  assert.equal(egressRepeat(c.fromClient('reported, passes')), PASS);
  withMode('active', () => {
    expectFlow(c, 'plaintext', 'blocked');
    assert.equal(egressRepeat(c.fromClient('now blocked')), DROP, 'a socket that sent while passive must not keep passing');
  });
});

test('a SYN leaving on the tuple of a decided tls flow, repeated, opens a new flow that is judged afresh', () => {
  const c = tlsFlow(443);
  assert.equal(egressRepeat(c.fromClient(tlsAppData(100))), PASS);
  expectFlow(c, 'tls', 'allowed');
  // A socket here is new with each call, so the SYN of a remembered socket (connect() again
  // after connect(AF_UNSPEC)) is proved with real sockets: test/integration/dataplane-judge.test.ts.
  assert.equal(egressRepeat(c.syn()), PASS);
  expectFlow(c, 'pending', 'allowed');
  withMode('active', () => {
    assert.equal(lab.ingress(c.synAck()), PASS);
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP, 'plaintext on the new handshake is judged');
  });
});
