// TTLS against stunnel4 with the same certificates and data, in the same run, on one test bed:
// a client and a server namespace joined by veth. Paths from the client namespace to node
// servers in the server namespace (a sink that answers with the byte count, an echo server):
//   direct  — plain TCP (reported for latency);
//   stunnel — stunnel4 client -> stunnel4 server (mutual TLS, one TLS connection per connection);
//   ttls    — the TTLS proxy -> terminator (lab ttls-node processes, pooled HTTP/2 streams);
//   ttls-1  — the same without multiplexing (one TLS handshake per connection), for connect_rate.
// Figures are medians of ROUNDS runs, paths interleaved per round.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { shippedAgentEnv } from '../lab/agent-proc.js';
import { makeCa, makeHostCert } from '../lab/certs.js';
import { createTestbed, type Testbed } from '../lab/netns.js';
import { BIN, type Proc, tail, waitFor } from '../lab/proc.js';
import { median, round } from './stats.js';
import type { Bench, BenchContext, BenchResult } from './types.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const TTLS_NODE = path.resolve(here, '../lab/ttls-node.js');
const ROUNDS = 3;
const SINK = 7001;
const ECHO = 7002;
const TPUT_BYTES = 256 * 1024 * 1024;

const SERVERS = `
const net = require('node:net');
net.createServer({ allowHalfOpen: true }, (s) => { let n = 0; s.on('data', (d) => n += d.length); s.on('end', () => s.end(String(n))); s.on('error', () => {}); }).listen(${SINK}, '::');
net.createServer((s) => { s.setNoDelay(true); s.pipe(s); s.on('error', () => {}); }).listen(${ECHO}, '::', () => console.log('listening'));
`;

// Load generator, run in the client namespace: node -e LOAD MODE HOST PORT LOCALADDR ARG ARG
const LOAD = `
const net = require('node:net');
const [mode, host, port, local, a1, a2] = process.argv.slice(1);
const conn = () => net.connect({ host, port: +port, localAddress: local, allowHalfOpen: true, noDelay: true });
const out = (o) => { process.stdout.write(JSON.stringify(o) + '\\n'); process.exit(0); };
if (mode === 'tput') {
  const total = +a1, streams = +a2, per = Math.floor(total / streams), chunk = Buffer.alloc(256 * 1024, 7);
  const t0 = process.hrtime.bigint(); let done = 0;
  for (let i = 0; i < streams; i++) {
    const c = conn(); let left = per, reply = '';
    const pump = () => { while (left > 0) { left -= chunk.length; if (!c.write(chunk)) return; } c.end(); };
    c.on('drain', pump); c.on('connect', pump); c.on('data', (d) => reply += d);
    c.on('end', () => { if (+reply < per - chunk.length) throw new Error('short ' + reply); if (++done === streams) out({ mbps: (per * streams / 1e6) / (Number(process.hrtime.bigint() - t0) / 1e9) }); });
  }
} else if (mode === 'lat') {
  const n = +a1, c = conn(), xs = []; let t;
  const one = () => { t = process.hrtime.bigint(); c.write('x'); };
  c.on('connect', () => one());
  c.on('data', () => { xs.push(Number(process.hrtime.bigint() - t) / 1000); if (xs.length < n) one(); else { xs.sort((a, b) => a - b); const w = xs.slice(Math.floor(n / 10)); out({ p50: w[Math.floor(w.length * 0.5)], p99: w[Math.floor(w.length * 0.99)] }); } });
} else if (mode === 'rate') {
  const ms = +a1, conc = +a2, stop = Date.now() + ms; let n = 0, errors = 0;
  const one = () => { if (Date.now() >= stop) { if (--conc2 === 0) out({ rate: n / (ms / 1000), errors }); return; }
    const c = conn(); c.on('connect', () => c.write('x')); c.on('data', () => c.end()); c.on('error', () => errors++); c.on('close', () => { n++; one(); }); };
  let conc2 = conc; for (let i = 0; i < conc; i++) one();
} else if (mode === 'hold') {
  const n = +a1; let up = 0; const keep = [];
  for (let i = 0; i < n; i++) { const c = conn(); keep.push(c); c.on('connect', () => c.write('x')); c.once('data', () => { if (++up === n) console.log(JSON.stringify({ held: n })); }); c.on('error', (e) => console.log(JSON.stringify({ error: e.code }))); }
  setTimeout(() => process.exit(0), 120000);
}
`;

interface Paths {
  tb: Testbed;
  ttlsClient: Proc;
}

function stunnelConf(dir: string, name: string, o: { client: boolean; cert: string; key: string; ca: string; services: [string, string][] }): string {
  const f = path.join(dir, `${name}.conf`);
  const lines = [
    'foreground = yes',
    `pid =`,
    'debug = 3',
    'socket = l:TCP_NODELAY=1',
    'socket = r:TCP_NODELAY=1',
    `cert = ${o.cert}`,
    `key = ${o.key}`,
    `CAfile = ${o.ca}`,
    'verifyChain = yes',
  ];
  if (o.client) lines.push('client = yes');
  for (const [accept, connect] of o.services) lines.push(`[${accept.replace(/\W/g, '_')}]`, `accept = ${accept}`, `connect = ${connect}`);
  fs.writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

async function load(tb: Testbed, args: string[], timeoutMs = 120_000): Promise<Record<string, number>> {
  const r = await tb.exec('client', process.execPath, ['-e', LOAD, ...args], { timeoutMs });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, number>;
  } catch {
    throw new Error(`load ${args.join(' ')} failed (exit ${r.code}): ${r.stdout.slice(-500)} ${r.stderr.slice(-1500)}`);
  }
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) / 1024;
}

async function setUp(ctx: BenchContext): Promise<Paths> {
  const tb = await createTestbed('bench-ttls');
  try {
    const dir = tb.tempDir('certs');
    const ca = await makeCa(dir, 'fleet-ca');
    const sc = await makeHostCert(dir, ca, 'server', [tb.server.ipv4, tb.server.ipv6]);
    const cc = await makeHostCert(dir, ca, 'client', [tb.client.ipv4, tb.client.ipv6]);
    const srv = tb.spawn('server', 'servers', process.execPath, ['-e', SERVERS]);
    await waitFor('bench servers', () => fs.existsSync(srv.logFile) && fs.readFileSync(srv.logFile, 'utf8').includes('listening'));
    const s4 = tb.server.ipv4;
    const sconf = stunnelConf(dir, 'stunnel-server', {
      client: false,
      cert: sc.cert,
      key: sc.key,
      ca: ca.caCert,
      services: [
        [`${s4}:16001`, `127.0.0.1:${SINK}`],
        [`${s4}:16002`, `127.0.0.1:${ECHO}`],
      ],
    });
    const cconf = stunnelConf(dir, 'stunnel-client', {
      client: true,
      cert: cc.cert,
      key: cc.key,
      ca: ca.caCert,
      services: [
        ['127.0.0.1:17001', `${s4}:16001`],
        ['127.0.0.1:17002', `${s4}:16002`],
      ],
    });
    tb.spawn('server', 'stunnel-server', BIN.stunnel4, [sconf]);
    tb.spawn('client', 'stunnel-client', BIN.stunnel4, [cconf]);
    const node = async (
      side: 'client' | 'server',
      name: string,
      port: number,
      proxyPort: number,
      extra: Record<string, unknown>,
      table: Record<string, unknown>,
    ) => {
      const tf = path.join(tb.dir, `${name}.json`);
      fs.writeFileSync(tf, JSON.stringify(table));
      const cert = side === 'client' ? cc : sc;
      const args = {
        certs: { cert: cert.cert, key: cert.key, ca: ca.caCert },
        config: { mode: 'active', ttls: { ports: [SINK, ECHO], cidrs: [`${s4}/32`], port } },
        proxyPort,
        table: tf,
        metricsPort: 19000 + (proxyPort % 1000),
        ...extra,
      };
      // The proxy and terminator run inside the agent in production: same node flags (--jitless...).
      const p = tb.spawn(side, name, process.execPath, [TTLS_NODE, JSON.stringify(args)], { env: { ...process.env, ...shippedAgentEnv() } });
      await waitFor(`${name} ready`, () => fs.existsSync(p.logFile) && fs.readFileSync(p.logFile, 'utf8').includes('ttls_node_ready'), {
        explain: () => tail(p.logFile),
      });
      return p;
    };
    const table = { '127.0.0.1': { address: s4, port: SINK }, '127.0.0.2': { address: s4, port: ECHO } };
    await node('server', 'ttls-server', 15443, 15011, {}, {});
    await node('server', 'ttls-server-1', 15445, 15012, { multiplex: false }, {});
    const ttlsClient = await node('client', 'ttls-client', 15443, 15001, { terminator: false }, table);
    await node('client', 'ttls-client-1', 15445, 15004, { terminator: false }, table);
    await waitFor('stunnel listening', async () => (await tb.exec('client', BIN.ss, ['-Hltn'])).stdout.includes('127.0.0.1:17002'));
    ctx.progress('servers, stunnel4 pair and TTLS pairs up');
    return { tb, ttlsClient };
  } catch (e) {
    await tb.destroy();
    throw e;
  }
}

export const ttlsBench: Bench = {
  name: 'ttls',
  produces: ['ttls_throughput', 'ttls_throughput_16', 'ttls_latency_p50_us', 'ttls_latency_p99_us', 'ttls_connect_rate', 'ttls_rss_1000_mb'],
  summary: `TTLS proxy+terminator vs stunnel4 (same certificates, same data), client ns -> server ns; medians of ${ROUNDS} interleaved runs`,
  async run(ctx: BenchContext): Promise<BenchResult[]> {
    const { tb, ttlsClient } = await setUp(ctx);
    try {
      const s: Record<string, number[]> = {};
      const add = (k: string, v: number) => {
        s[k] ??= [];
        s[k].push(v);
      };
      for (let r = 0; r < ROUNDS; r++) {
        for (const [label, port] of [
          ['ttls', 15001],
          ['stunnel', 17001],
        ] as const) {
          add(`${label}_tput`, (await load(tb, ['tput', '127.0.0.1', String(port), '127.0.0.1', String(TPUT_BYTES), '1'])).mbps!);
          add(`${label}_tput16`, (await load(tb, ['tput', '127.0.0.1', String(port), '127.0.0.1', String(TPUT_BYTES), '16'])).mbps!);
        }
        for (const [label, host, port, local] of [
          ['ttls', '127.0.0.1', 15001, '127.0.0.2'],
          ['stunnel', '127.0.0.1', 17002, '127.0.0.1'],
          ['direct', tb.server.ipv4, ECHO, tb.client.ipv4],
        ] as const) {
          const l = await load(tb, ['lat', host, String(port), local, '5000']);
          add(`${label}_p50`, l.p50!);
          add(`${label}_p99`, l.p99!);
        }
        for (const [label, port] of [
          ['ttls', 15001],
          ['ttls1', 15004],
        ] as const)
          add(`${label}_rate`, (await load(tb, ['rate', '127.0.0.1', String(port), '127.0.0.2', '3000', '32'])).rate!);
        ctx.progress(`round ${r + 1}: ${JSON.stringify(Object.fromEntries(Object.entries(s).map(([k, v]) => [k, round(v.at(-1)!, 1)])))}`);
      }
      const rss0 = rssMiB(ttlsClient.pid);
      const hold = tb.spawn('client', 'hold', process.execPath, ['-e', LOAD, 'hold', '127.0.0.1', '15001', '127.0.0.2', '1000']);
      await waitFor('1000 wrapped connections open', () => fs.existsSync(hold.logFile) && fs.readFileSync(hold.logFile, 'utf8').includes('"held"'), {
        timeoutMs: 60_000,
        explain: () => tail(hold.logFile),
      });
      const rss = rssMiB(ttlsClient.pid);
      await hold.stop();
      const m = (k: string) => round(median(s[k]!), 1);
      const fig = (bench: string, value: number, unit: string, baseline: number, meaning: string, target?: BenchResult['target']): BenchResult => ({
        bench,
        value,
        unit,
        baseline,
        ratio: round(value / baseline, 3),
        meaning,
        ...(target ? { target } : {}),
      });
      return [
        fig('ttls_throughput', m('ttls_tput'), 'MB/s', m('stunnel_tput'), 'one wrapped stream vs one stunnel4 connection, 256 MiB', { op: '>=', ratio: 1 }),
        fig('ttls_throughput_16', m('ttls_tput16'), 'MB/s', m('stunnel_tput16'), '16 parallel wrapped streams (one pooled session) vs 16 stunnel4 connections'),
        fig('ttls_latency_p50_us', m('ttls_p50'), 'us', m('stunnel_p50'), `1-byte echo round trip, median; direct TCP ${m('direct_p50')} us`),
        fig('ttls_latency_p99_us', m('ttls_p99'), 'us', m('stunnel_p99'), `1-byte echo round trip, p99; direct TCP ${m('direct_p99')} us`),
        fig('ttls_connect_rate', m('ttls_rate'), 'conn/s', m('ttls1_rate'), 'new wrapped connections/s, pooled vs one TLS handshake each', {
          op: '>=',
          ratio: 3,
        }),
        fig(
          'ttls_rss_1000_mb',
          round(rss, 1),
          'MB',
          round(rss0, 1),
          'proxy process RSS with 1,000 open wrapped connections (baseline: the same process before)',
        ),
      ];
    } finally {
      await tb.destroy();
    }
  },
};
