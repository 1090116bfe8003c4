// Flow table hygiene, packet by packet through BPF_PROG_TEST_RUN: which packets create state and
// where (an arriving SYN none, the host's SYN-ACK a half-open entry, the host's SYN a flow), what
// removes it (a RST of a handshake), what can never reset a decided flow (an arriving SYN), and
// that the LRU's evictions are counted. The promotion from half-open to established needs a real
// socket and is proved in test/integration/flow-table.test.ts.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { reconcileVerdicts } from '../../agent/apply.js';
import { addrToBytes, decode, encode } from '../../agent/codec.js';
import { decodeFlowKey, flowMapKey } from '../../agent/flow-maps.js';
import { flowTableStats } from '../../agent/flows.js';
import { Defines, SslwallClass, type SslwallFlow, type SslwallFlowKey } from '../../agent/generated/shared.js';
import { capture, copyLegacyFlows, placer, restore, settleLegacyFlows, settleRestored } from '../../agent/migrate.js';
import { bpfObjects } from '../../agent/paths.js';
import { native } from '../../native/index.js';
import { DROP, Lab, PASS } from '../../tools/lab/bpf-lab.js';
import { ACK, Conversation, packet, RST, SYN, tlsHello } from '../../tools/lab/packets.js';

const SERVER = { addr: '10.1.0.2', port: 443 };
const CONFIG = { bypass: { ports: [22] } };

let lab: Lab;
before(() => {
  lab = new Lab();
  lab.configure({ mode: 'passive', ...CONFIG });
});
after(() => lab?.close());

let nextPort = 30000;
function conv(server = SERVER, client = '10.1.0.1'): Conversation {
  return new Conversation({ addr: client, port: nextPort++ }, server);
}

function withMode<T>(mode: 'passive' | 'active', fn: () => T): T {
  return lab.withConfig({ mode, ...CONFIG }, fn);
}

function state(c: Conversation): string {
  const f = lab.flow(c.client, c.server);
  return f ? `${f.halfOpen ? 'half-open' : 'flow'} ${f.class}/${f.verdict}` : 'none';
}

/** This host is the server: the client's packets arrive, ours leave; the ClientHello's ACK completes the handshake. */
function inboundTls(c: Conversation): void {
  assert.equal(lab.ingress(c.syn()), PASS);
  assert.equal(lab.egress(c.synAck()), PASS);
  assert.equal(lab.ingress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.egress(c.fromServer(tlsHello('server'))), PASS);
}

/** This host is the client: its SYN leaves and creates the flow in the flows map. */
function outboundTls(c: Conversation): void {
  assert.equal(lab.egress(c.syn()), PASS);
  assert.equal(lab.ingress(c.synAck()), PASS);
  assert.equal(lab.egress(c.fromClient(tlsHello('client'))), PASS);
  assert.equal(lab.ingress(c.fromServer(tlsHello('server'))), PASS);
}

test('an arriving SYN without data creates no state: 1000 spoofed sources, scan of closed ports', () => {
  const before = lab.counters();
  const entries = lab.flows().length;
  for (let i = 0; i < 1000; i++) {
    const src = { addr: `10.2.${i >> 8}.${i & 255}`, port: 1024 + i };
    assert.equal(lab.ingress(packet({ src, dst: { addr: SERVER.addr, port: 1 + (i % 200) }, flags: SYN, seq: i })), PASS);
  }
  const now = lab.counters();
  assert.equal(lab.flows().length, entries, 'no entry in flows or half_open for the SYNs');
  assert.equal(now.flowsCreated - before.flowsCreated, 0n);
  assert.equal(now.halfOpenCreated - before.halfOpenCreated, 0n);
});

test("the host's SYN-ACK opens a half-open entry; the client's ACK of it (and only that) makes it a flow", () => {
  const before = lab.counters();
  const c = conv();
  lab.ingress(c.syn());
  assert.equal(state(c), 'none', 'the SYN alone');
  lab.egress(c.synAck());
  assert.equal(state(c), 'half-open pending/allowed');
  assert.equal(lab.egress(c.synAck()), PASS, 'a retransmitted SYN-ACK');
  assert.equal(state(c), 'half-open pending/allowed');
  // A blind ACK (a spoofer never saw the SYN-ACK, so guesses its sequence number) does nothing.
  assert.equal(lab.ingress(packet({ src: c.client, dst: c.server, flags: ACK, seq: 1001, ack: 4242 })), PASS);
  assert.equal(state(c), 'half-open pending/allowed', 'an ACK of the wrong sequence number');
  assert.equal(lab.ingress(c.ackFromClient()), PASS);
  assert.equal(state(c), 'flow pending/allowed', 'the handshake completed');
  lab.ingress(c.fromClient(tlsHello('client')));
  lab.egress(c.fromServer(tlsHello('server')));
  assert.equal(state(c), 'flow tls/allowed');
  const now = lab.counters();
  assert.equal(now.halfOpenCreated - before.halfOpenCreated, 1n);
  assert.equal(now.halfOpenPromoted - before.halfOpenPromoted, 1n);
  assert.equal(now.flowsCreated - before.flowsCreated, 1n);
});

test('data riding on the ACK that completes the handshake is judged, and the flow promoted', () => {
  withMode('active', () => {
    const c = conv({ addr: SERVER.addr, port: 80 });
    lab.ingress(c.syn());
    lab.egress(c.synAck());
    assert.equal(lab.ingress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
    assert.equal(state(c), 'flow plaintext/blocked');
  });
});

test("the host's SYN-ACK on a decided flow's tuple ends that flow; the new handshake starts fresh", () => {
  const c = conv();
  inboundTls(c);
  assert.equal(state(c), 'flow tls/allowed');
  const before = lab.counters();
  const again = new Conversation(c.client, c.server);
  lab.ingress(again.syn());
  assert.equal(state(c), 'flow tls/allowed', 'the arriving SYN changed nothing');
  lab.egress(again.synAck());
  assert.equal(state(c), 'half-open pending/allowed', 'the host answered: the old connection is over');
  lab.ingress(again.ackFromClient());
  assert.equal(state(c), 'flow pending/allowed');
  const now = lab.counters();
  assert.equal(now.flowsClosed - before.flowsClosed, 1n);
  assert.equal(now.flowsCreated - before.flowsCreated, 1n);
});

test('the answers to a SYN flood on an open port fill half_open only: established flows stay', () => {
  const idle = conv();
  inboundTls(idle);
  const flowsBefore = native().mapDump(lab.maps.sslwall_flows4).length;
  const max = lab.obj.mapDef('sslwall_half_open').maxEntries;
  for (let i = 0; i < max + 2000; i++) {
    const spoofed = { addr: `10.5.${(i >> 8) & 255}.${i & 255}`, port: 1024 + (i >> 16) };
    lab.ingress(packet({ src: spoofed, dst: SERVER, flags: SYN, seq: i }));
    lab.egress(packet({ src: SERVER, dst: spoofed, flags: SYN | ACK, seq: i * 7, ack: i + 1 }));
  }
  assert.ok(flowsBefore > 0, 'the idle IPv4 flow is in the IPv4 flow map');
  assert.equal(native().mapDump(lab.maps.sslwall_flows4).length, flowsBefore, 'no flow created or evicted by the flood');
  assert.equal(state(idle), 'flow tls/allowed');
  assert.ok(lab.halfOpen().length <= max);
});

test('a half-open handshake is removed by a RST from either side (SYN scanner, refused handshake)', () => {
  const scan = conv();
  lab.ingress(scan.syn());
  lab.egress(scan.synAck());
  assert.equal(lab.ingress(scan.rstFromClient()), PASS);
  assert.equal(state(scan), 'none', "the scanner's RST");
  const refused = conv();
  lab.ingress(refused.syn());
  lab.egress(refused.synAck());
  assert.equal(lab.egress(packet({ src: refused.server, dst: refused.client, flags: RST, seq: 1 })), PASS);
  assert.equal(state(refused), 'none', "this host's RST");
});

test('a RST never removes an established flow: the kernel checks it and closes the socket', () => {
  const c = conv();
  outboundTls(c);
  assert.equal(lab.ingress(packet({ src: c.server, dst: c.client, flags: RST, seq: 12345 })), PASS);
  assert.equal(state(c), 'flow tls/allowed');
});

test('TCP Fast Open: data in an arriving SYN is judged (half-open), plaintext in it dropped in active mode', () => {
  const c = conv();
  assert.equal(lab.ingress(c.syn(tlsHello('client'))), PASS);
  assert.equal(state(c), 'half-open pending/allowed');
  lab.egress(c.synAck());
  lab.egress(c.fromServer(tlsHello('server')));
  assert.equal(state(c), 'half-open tls/allowed', 'the SYN-ACK kept what the SYN taught');
  lab.ingress(c.ackFromClient());
  assert.equal(state(c), 'flow tls/allowed');
  withMode('active', () => {
    const p = conv({ addr: SERVER.addr, port: 80 });
    assert.equal(lab.ingress(p.syn('GET / HTTP/1.1\r\n\r\n')), DROP);
    assert.equal(state(p), 'half-open plaintext/blocked');
  });
});

test('a forged SYN on a decided flow (this host the client) leaves it decided, with or without data', () => {
  const c = conv();
  outboundTls(c);
  // From the server's endpoint, and from the client's (a spoofed copy arriving from outside).
  assert.equal(lab.ingress(packet({ src: c.server, dst: c.client, flags: SYN, seq: 7 })), PASS);
  assert.equal(lab.ingress(packet({ src: c.client, dst: c.server, flags: SYN, seq: 7 })), PASS);
  assert.equal(lab.ingress(packet({ src: c.server, dst: c.client, flags: SYN, seq: 7, payload: 'GET / HTTP/1.1\r\n\r\n' })), PASS);
  assert.equal(state(c), 'flow tls/allowed');
});

test('a spray of SYNs over every source port of a client address resets none of its TLS flows', () => {
  const client = '10.3.0.9';
  const live = [conv(SERVER, client), conv(SERVER, client), conv(SERVER, client)];
  for (const c of live) inboundTls(c);
  const before = lab.counters();
  for (let port = 1024; port < 65536; port += 7) lab.ingress(packet({ src: { addr: client, port }, dst: SERVER, flags: SYN, seq: port }));
  for (const c of live) lab.ingress(c.syn());
  for (const c of live) assert.equal(state(c), 'flow tls/allowed', `flow from port ${c.client.port}`);
  const now = lab.counters();
  assert.equal(now.halfOpenCreated - before.halfOpenCreated, 0n, 'no state for the spray');
  // And they still pass data.
  for (const c of live) assert.equal(lab.ingress(c.fromClient('\x17\x03\x03\x00\x10 encrypted bytes...')), PASS);
});

test('a forged SYN on a blocked flow passes (the kernel answers it), the flow stays blocked', () => {
  withMode('active', () => {
    const c = conv({ addr: SERVER.addr, port: 80 });
    lab.egress(c.syn());
    lab.ingress(c.synAck());
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP);
    assert.equal(lab.ingress(packet({ src: c.server, dst: c.client, flags: SYN, seq: 3 })), PASS);
    assert.equal(state(c), 'flow plaintext/blocked');
    assert.equal(lab.egress(c.fromClient('more')), DROP);
  });
});

test("this host's own SYN on a decided flow's 4-tuple starts a new flow, counted as a close and a create", () => {
  const c = conv();
  outboundTls(c);
  const before = lab.counters();
  const again = new Conversation(c.client, c.server);
  assert.equal(lab.egress(again.syn()), PASS);
  assert.equal(state(c), 'flow pending/allowed');
  const now = lab.counters();
  assert.equal(now.flowsCreated - before.flowsCreated, 1n);
  assert.equal(now.flowsClosed - before.flowsClosed, 1n);
});

test("a mode change's verdict walk leaves a connection alone that took its 4-tuple after the walk's snapshot", () => {
  const old = conv();
  const fresh = new Conversation(old.client, old.server);
  let snapshot: Array<[Buffer, Buffer]> = [];
  withMode('passive', () => {
    assert.equal(lab.egress(old.syn()), PASS);
    lab.ingress(old.synAck());
    assert.equal(lab.egress(old.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
    assert.equal(state(old), 'flow plaintext/reported');
    snapshot = native().mapDump(lab.maps.sslwall_flows4);
    // The old connection is gone, and a new one from the same port opens on the same tuple.
    assert.equal(lab.egress(fresh.syn()), PASS);
    assert.equal(state(fresh), 'flow pending/allowed');
  });
  withMode('active', () => {
    // The walk as the mode switch runs it, but from the snapshot taken before the new connection.
    assert.equal(
      reconcileVerdicts(lab.maps, 'active', (map) => (map === lab.maps.sslwall_flows4 ? snapshot : native().mapDump(map))),
      0,
    );
    assert.equal(state(fresh), 'flow pending/allowed', 'not overwritten with the old plaintext flow');
    lab.ingress(fresh.synAck());
    assert.equal(lab.egress(fresh.fromClient(tlsHello('client'))), PASS);
    assert.equal(lab.ingress(fresh.fromServer(tlsHello('server'))), PASS);
    assert.equal(state(fresh), 'flow tls/allowed');
  });
});

test("a mode change's verdict walk rewrites a plaintext flow that is still the one it dumped", () => {
  const c = conv();
  withMode('passive', () => {
    assert.equal(lab.egress(c.syn()), PASS);
    lab.ingress(c.synAck());
    assert.equal(lab.egress(c.fromClient('GET / HTTP/1.1\r\n\r\n')), PASS);
  });
  withMode('active', () => {
    assert.equal(state(c), 'flow plaintext/blocked');
    assert.equal(lab.egress(c.fromClient('more')), DROP);
  });
});

test('a full flows map evicts and the eviction count sees it (created - closed - live)', () => {
  // A map of its own so the other cases' flows do not count.
  const fresh = new Lab();
  try {
    fresh.configure({ mode: 'passive' });
    const max = fresh.obj.mapDef('sslwall_flows4').maxEntries;
    const started = process.hrtime.bigint();
    const n = max + 4096;
    for (let i = 0; i < n; i++) {
      const src = { addr: `10.4.${(i >> 16) & 255}.${(i >> 8) & 255}`, port: 1024 + (i & 255) };
      fresh.egress(packet({ src, dst: SERVER, flags: SYN, seq: i }));
    }
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const { live, evicted } = flowTableStats(fresh.maps.sslwall_counters, fresh.maps);
    const c = fresh.counters();
    console.log(`# ${n} outbound SYNs into a ${max}-entry flows map in ${Math.round(ms)} ms: ${live} live, ${evicted} evicted`);
    assert.equal(c.flowsCreated, BigInt(n), 'every SYN inserted');
    assert.equal(c.insertFailed, 0n);
    assert.ok(live <= max && live > max - 4096, `live entries ${live} should be just under ${max}`);
    assert.equal(evicted, n - live, 'every entry not live was evicted');
  } finally {
    fresh.close();
  }
});

test('IPv4 flows live in sslwall_flows4 under a 12-byte key, IPv6 flows in sslwall_flows under the full key; each is judged and found there', () => {
  const v4 = conv();
  const v6 = conv({ addr: 'fd00:1::2', port: 443 }, 'fd00:1::1');
  const plain6 = conv({ addr: 'fd00:1::2', port: 80 }, 'fd00:1::1');
  const before = { v4: native().mapDump(lab.maps.sslwall_flows4).length, v6: native().mapDump(lab.maps.sslwall_flows).length };
  outboundTls(v4);
  outboundTls(v6);
  withMode('active', () => {
    assert.equal(lab.egress(plain6.syn()), PASS);
    lab.ingress(plain6.synAck());
    assert.equal(lab.egress(plain6.fromClient('GET / HTTP/1.1\r\n\r\n')), DROP, 'IPv6 plaintext is judged in its own map');
    assert.equal(lab.ingress(plain6.fromServer('HTTP/1.1 200 OK\r\n\r\n')), DROP);
    assert.equal(state(plain6), 'flow plaintext/blocked');
  });
  const v4Map = native().mapDump(lab.maps.sslwall_flows4);
  const v6Map = native().mapDump(lab.maps.sslwall_flows);
  assert.equal(v4Map.length - before.v4, 1, 'one IPv4 flow more in sslwall_flows4');
  assert.equal(v6Map.length - before.v6, 2, 'two IPv6 flows more in sslwall_flows');
  assert.ok(
    v4Map.every(([k]) => k.length === 12),
    'IPv4 keys are 12 bytes',
  );
  assert.ok(
    v6Map.every(([k]) => k.length === 40 && decodeFlowKey(k).family === Defines.SSLWALL_FAMILY_IPV6),
    'only IPv6 flows, under 40-byte keys, in sslwall_flows',
  );
  assert.equal(state(v4), 'flow tls/allowed');
  assert.equal(state(v6), 'flow tls/allowed');
  assert.equal(state(plain6), 'flow plaintext/reported', 'the walk back to passive found it in the IPv6 map');
  // The agent's codec gives back the flow's endpoints from either key.
  const shown = lab.flows().filter((f) => [v4.client.port, v6.client.port].includes(f.sport));
  assert.deepEqual(shown.map((f) => `${f.family} ${f.saddr}:${f.sport} -> ${f.daddr}:${f.dport} ${f.class}`).sort(), [
    `ipv4 ${v4.client.addr}:${v4.client.port} -> ${v4.server.addr}:443 tls`,
    `ipv6 ${v6.client.addr}:${v6.client.port} -> ${v6.server.addr}:443 tls`,
  ]);
});

/** The full (40-byte) key of an IPv4 flow from lo:port to hi:443, as builds with one flow map kept it. */
function ipv4FullKey(lo: string, hi: string, port: number): Buffer {
  return encode<SslwallFlowKey>('sslwall_flow_key', {
    addr_lo: addrToBytes(lo).bytes,
    addr_hi: addrToBytes(hi).bytes,
    port_lo: port,
    port_hi: 443,
    family: Defines.SSLWALL_FAMILY_IPV4,
  });
}

/** A flow entry of one class; first_seen_ns tells connections apart. */
function flowValue(cls: number, seen: bigint): Buffer {
  return encode<SslwallFlow>('sslwall_flow', { first_seen_ns: seen, cls, client_is_lo: 1 });
}

test("an older build's IPv4 flows move to sslwall_flows4: copied, then settled against what each program did meanwhile", () => {
  // The maps of a fresh classifier stand in for an upgrade's: sslwall_flows with IPv4 entries
  // under the full key, as a build with one flow map left them.
  const fresh = new Lab();
  try {
    const m = { sslwall_flows4: fresh.maps.sslwall_flows4, sslwall_flows: fresh.maps.sslwall_flows };
    const key = (port: number) => ipv4FullKey('10.9.0.1', '10.9.0.2', port);
    const flow = flowValue;
    const PENDING = SslwallClass.SSLWALL_CLASS_PENDING;
    const TLS = SslwallClass.SSLWALL_CLASS_TLS;
    const in4 = (port: number) => native().mapLookup(m.sslwall_flows4, flowMapKey(key(port)).key);
    const v6 = encode<SslwallFlowKey>('sslwall_flow_key', {
      addr_lo: addrToBytes('fd00:9::1').bytes,
      addr_hi: addrToBytes('fd00:9::2').bytes,
      port_lo: 5000,
      port_hi: 443,
      family: Defines.SSLWALL_FAMILY_IPV6,
    });
    native().mapUpdate(m.sslwall_flows, v6, flow(TLS, 6n));
    for (const port of [1, 2, 3, 4]) native().mapUpdate(m.sslwall_flows, key(port), flow(PENDING, BigInt(port)));
    // Port 5: a start of this build that died before its settle already copied it, and the new
    // programs judged it since (same connection: same first_seen_ns). Port 6: left in
    // sslwall_flows4 before a downgrade, then the older build saw a new connection there.
    native().mapUpdate(m.sslwall_flows, key(5), flow(PENDING, 5n));
    native().mapUpdate(m.sslwall_flows4, flowMapKey(key(5)).key, flow(TLS, 5n));
    native().mapUpdate(m.sslwall_flows, key(6), flow(PENDING, 66n));
    native().mapUpdate(m.sslwall_flows4, flowMapKey(key(6)).key, flow(TLS, 6n));

    const copied = copyLegacyFlows(m);
    assert.equal(copied.size, 5, 'ports 1-4 and 6 copied; port 5 left as the new programs judged it');
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(5)!).cls, TLS);
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(6)!).first_seen_ns, 66n, "the older build's connection replaces the stale one");

    // Meanwhile: the old programs decide port 1 and see port 7 open; the old close hook removes
    // port 2; the new programs judge port 3 (tls) and the new close hook removes port 4's copy.
    native().mapUpdate(m.sslwall_flows, key(1), flow(TLS, 1n));
    native().mapUpdate(m.sslwall_flows, key(7), flow(PENDING, 7n));
    native().mapDelete(m.sslwall_flows, key(2));
    native().mapUpdate(m.sslwall_flows4, flowMapKey(key(3)).key, flow(TLS, 3n));
    native().mapDelete(m.sslwall_flows4, flowMapKey(key(4)).key);

    const settled = settleLegacyFlows(m, copied);
    assert.deepEqual(settled, { moved: 6, dropped: 1 });
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(1)!).cls, TLS, "the old programs' later word, on a copy nobody touched since");
    assert.equal(in4(2), null, 'closed under the old programs: its copy goes too');
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(3)!).cls, TLS, "the new programs' judgement stands");
    assert.equal(in4(4), null, 'closed under the new programs: not brought back');
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(5)!).cls, TLS);
    assert.equal(decode<SslwallFlow>('sslwall_flow', in4(7)!).first_seen_ns, 7n, 'opened after the copy: moved');
    const left = native().mapDump(m.sslwall_flows);
    assert.deepEqual(
      left.map(([k]) => decodeFlowKey(k).family),
      [Defines.SSLWALL_FAMILY_IPV6],
      'only the IPv6 flow is left in sslwall_flows',
    );
    assert.deepEqual(settleLegacyFlows(m, new Map()), { moved: 0, dropped: 0 }, 'a second settle has nothing to do');
  } finally {
    fresh.close();
  }
});

test('a layout migration is settled against what each program did while the new ones loaded', () => {
  // Two fresh classifiers stand in for a restart that replaced the flow map: the old programs'
  // map (captured, then written by them while the new programs are verified) and the new one.
  const old = new Lab();
  const fresh = new Lab();
  try {
    const key = (port: number) => flowMapKey(ipv4FullKey('10.9.1.1', '10.9.1.2', port)).key;
    const flow = flowValue;
    const PENDING = SslwallClass.SSLWALL_CLASS_PENDING;
    const TLS = SslwallClass.SSLWALL_CLASS_TLS;
    const oldMap = old.maps.sslwall_flows4;
    const newMap = fresh.maps.sslwall_flows4;
    const inNew = (port: number) => {
      const v = native().mapLookup(newMap, key(port));
      return v ? decode<SslwallFlow>('sslwall_flow', v) : null;
    };
    for (const port of [1, 2, 3, 4]) native().mapUpdate(oldMap, key(port), flow(PENDING, BigInt(port)));

    const c = capture('sslwall_flows4', oldMap);
    const place = placer(c, bpfObjects.classifier);
    const open = (name: string) => {
      assert.equal(name, 'sslwall_flows4', 'IPv4 flows stay in their map');
      return newMap;
    };
    const written = restore(c, place, open);
    assert.equal(written.size, 4);

    // While the new programs load: the old ones decide port 1, the old close hook removes port 2,
    // ports 7 and 8 open; the new programs judge port 3 and open port 8 themselves, and the new
    // close hook removes port 4's copy.
    native().mapUpdate(oldMap, key(1), flow(TLS, 1n));
    native().mapDelete(oldMap, key(2));
    native().mapUpdate(oldMap, key(7), flow(PENDING, 7n));
    native().mapUpdate(oldMap, key(8), flow(PENDING, 8n));
    native().mapUpdate(newMap, key(3), flow(TLS, 3n));
    native().mapUpdate(newMap, key(8), flow(TLS, 88n));
    native().mapDelete(newMap, key(4));

    assert.deepEqual(settleRestored(oldMap, written, place, open), { updated: 1, added: 1, dropped: 1 });
    assert.equal(inNew(1)?.cls, TLS, "the old programs' later word, on a copy nobody touched since");
    assert.equal(inNew(2), null, 'closed under the old programs: its copy goes too (no phantom connection in sslwall flows)');
    assert.equal(inNew(3)?.cls, TLS, "the new programs' judgement stands");
    assert.equal(inNew(4), null, 'closed under the new programs: not brought back');
    assert.equal(inNew(7)?.first_seen_ns, 7n, 'opened while the new programs loaded: added');
    assert.equal(inNew(8)?.first_seen_ns, 88n, 'opened by the new programs too: theirs stands');
    assert.deepEqual(settleRestored(oldMap, written, place, open), { updated: 0, added: 0, dropped: 0 }, 'a second settle has nothing to do');
  } finally {
    fresh.close();
    old.close();
  }
});
