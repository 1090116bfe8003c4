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
