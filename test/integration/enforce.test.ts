// The agent against real peers in two network namespaces, as an operator would run it: passive
// reports plaintext and lets it through, active drops it and the application fails fast, while
// TLS, STARTTLS, CONNECT, bypassed and exec'd traffic passes. IPv4 and IPv6.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { tcxLinksOn } from '../../agent/datapath.js';
import { native } from '../../native/index.js';
import { type AgentEnv, AgentProc, agentEnv, type LogLine, sslwall, writeConfig } from '../../tools/lab/agent-proc.js';
import { type Certs, makeCerts } from '../../tools/lab/certs.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import {
  curl,
  type NginxPeer,
  nginxUrl,
  type PostgresPeer,
  plainClient,
  psql,
  requireAllPeers,
  type SinkPeer,
  type SquidPeer,
  type SshdPeer,
  squidProxyUrl,
  ssh,
  startNginx,
  startPostgres,
  startSink,
  startSmtp,
  startSquid,
  startSshd,
  swaks,
} from '../../tools/lab/peers.js';

const SINK_PORT = 9000;
const METRICS = '127.0.0.1:9464';

function config(mode: 'passive' | 'active') {
  return {
    mode,
    bypass: { ports: [22], cidrs: [] },
    starttls: { smtp: [25, 587], postgres: [5432] },
    connect: { ports: [3128] },
  };
}

/** Program ids behind the tcx links pinned under an agent's bpffs. */
function pinnedTcxProgIds(bpffs: string): number[] {
  const dir = `${bpffs}/links`;
  return fs
    .readdirSync(dir)
    .filter((f) => f.startsWith('tcx_'))
    .map((f) => {
      const link = native().getPinned(`${dir}/${f}`, 'link');
      try {
        return native().linkInfo(link).progId;
      } finally {
        link.close();
      }
    });
}

describe('agent enforcement with real peers', () => {
  let tb: Testbed;
  let certs: Certs;
  let nginx: NginxPeer;
  let pg: PostgresPeer;
  let squid: SquidPeer;
  let sshd: SshdPeer;
  let sink: SinkPeer;
  let cgroup2: string;
  let clientEnv: AgentEnv;
  let agent: AgentProc | undefined;

  before(async () => {
    requireAllPeers();
    tb = await createTestbed('enforce');
    certs = await makeCerts(tb.tempDir('certs'), { ips: [tb.server.ipv4, tb.server.ipv6], dnsNames: ['server.test'] });
    cgroup2 = await tb.mountCgroup2();
    [nginx, pg, , squid, sshd, sink] = await Promise.all([
      startNginx(tb, certs, { bigFileBytes: 64 * 1024 * 1024 }),
      startPostgres(tb, certs),
      startSmtp(tb, certs),
      startSquid(tb),
      startSshd(tb),
      startSink(tb, { port: SINK_PORT }),
    ]);
    clientEnv = await agentEnv(tb, 'client', cgroup2);
    writeConfig(clientEnv, config('passive'));
    agent = await AgentProc.start(clientEnv, ['--metrics-addr', METRICS]);
  });

  after(async () => {
    await agent?.stop();
    if (clientEnv) await sslwall(clientEnv, ['uninstall', '--bpffs', clientEnv.bpffs]);
    await tb?.destroy();
  });

  async function setMode(mode: 'passive' | 'active') {
    const before = agent!.lines().filter((l) => l.event === 'config_applied').length;
    writeConfig(clientEnv, config(mode));
    await agent!.waitFor(() => agent!.lines().filter((l) => l.event === 'config_applied').length > before, 5000, `config_applied (${mode})`);
  }

  /**
   * The violations logged since index `since`, once a plain HTTP marker request sent now has been
   * logged too: the filter's events reach the agent through one ring buffer, in order, so a
   * violation of anything sent before the marker would be in the log by then.
   */
  async function violationsBeforeMarker(since: number): Promise<LogLine[]> {
    const isMarker = (l: LogLine) => l.dport === 80 && l.comm === 'curl';
    await curl(tb, nginxUrl(tb, nginx, { tls: false }), { maxTimeS: 5 });
    await agent!.waitFor(() => agent!.violations().slice(since).some(isMarker), 3000, 'the violation of the plain HTTP marker request');
    return agent!
      .violations()
      .slice(since)
      .filter((l) => !isMarker(l));
  }

  /** Poll `sslwall flows --json` until `pred` holds for the flows, or throw after timeoutMs. */
  async function waitForFlows(pred: (flows: Array<{ dport: number; class: string }>) => boolean, timeoutMs: number, what: string) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const flows = JSON.parse((await sslwall(clientEnv, ['flows', '--json', '--bpffs', clientEnv.bpffs])).stdout) as Array<{ dport: number; class: string }>;
      if (pred(flows)) return flows;
      if (Date.now() > deadline) throw new Error(`expected ${what} within ${timeoutMs} ms; flows: ${JSON.stringify(flows)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  test('passive: plain HTTP is reported with endpoints and the process, and still works', async () => {
    const r = await curl(tb, nginxUrl(tb, nginx, { tls: false }));
    assert.equal(r.httpCode, 200, `plain curl must still work in passive mode: ${r.stderr}`);
    const v = await agent!.waitFor((l) => l.event === 'violation' && l.dport === 80, 3000, 'a violation for port 80');
    assert.equal(v.verdict, 'reported');
    assert.equal(v.saddr, tb.client.ipv4);
    assert.equal(v.daddr, tb.server.ipv4);
    assert.equal(v.comm, 'curl');
    assert.ok(typeof v.pid === 'number' && v.pid > 0);
  });

  test('passive: TLS (IPv4, IPv6, and with TCP Fast Open) is not reported', async () => {
    const before = agent!.violations().length;
    for (const v6 of [false, true]) {
      for (const tfo of [false, true]) {
        const r = await curl(tb, nginxUrl(tb, nginx, { tls: true, v6 }), { cacert: certs.caCert, tfo });
        assert.equal(r.httpCode, 200, `TLS curl (v6=${v6}, tfo=${tfo}): ${r.stderr}`);
      }
    }
    assert.deepEqual(await violationsBeforeMarker(before), [], 'no violation for TLS traffic');
  });

  test('passive: IPv6 plaintext is reported', async () => {
    const r = await curl(tb, nginxUrl(tb, nginx, { tls: false, v6: true }));
    assert.equal(r.httpCode, 200);
    const v = await agent!.waitFor((l) => l.event === 'violation' && l.family === 'ipv6' && l.dport === 80, 3000, 'an IPv6 violation');
    assert.equal(v.daddr, tb.server.ipv6);
  });

  test('a closed connection leaves the flow map', async () => {
    const r = await curl(tb, nginxUrl(tb, nginx, { tls: true }), { cacert: certs.caCert });
    assert.equal(r.httpCode, 200);
    await waitForFlows((flows) => !flows.some((f) => f.dport === 443), 3000, 'finished TLS flows gone from the map');
  });

  test('sslwall flows --json lists open flows with their class', async () => {
    const r = await sslwall(clientEnv, ['flows', '--json', '--bpffs', clientEnv.bpffs]);
    assert.equal(r.code, 0, r.stderr);
    const flows = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
    assert.ok(Array.isArray(flows));
    for (const f of flows) {
      for (const k of ['family', 'saddr', 'sport', 'daddr', 'dport', 'class', 'verdict']) assert.ok(k in f, `flow has ${k}: ${JSON.stringify(f)}`);
    }
  });

  test('active: STARTTLS (postgres, SMTP), CONNECT, ssh bypass and TLS keep working', async () => {
    await setMode('active');
    try {
      const before = agent!.violations().length;
      const pgr = await psql(tb, pg, { sslmode: 'require' });
      assert.equal(pgr.code, 0, `psql sslmode=require: ${pgr.stderr}`);
      const sw = await swaks(tb, { starttls: true });
      assert.equal(sw.code, 0, `swaks --tls: ${sw.stderr}${sw.stdout.slice(-500)}`);
      const c = await curl(tb, nginxUrl(tb, nginx, { tls: true }), { cacert: certs.caCert, proxy: squidProxyUrl(tb, squid) });
      assert.equal(c.httpCode, 200, `curl through squid CONNECT: ${c.stderr}`);
      const s = await ssh(tb, sshd, { command: 'true' });
      assert.equal(s.code, 0, `ssh (bypassed port 22): ${s.stderr}`);
      const t = await curl(tb, nginxUrl(tb, nginx, { tls: true, v6: true }), { cacert: certs.caCert, tfo: true });
      assert.equal(t.httpCode, 200, `TLS over IPv6 with TFO: ${t.stderr}`);
      assert.deepEqual(await violationsBeforeMarker(before), [], 'allowed traffic raised no violation');
    } finally {
      await setMode('passive');
    }
  });

  test('active: plaintext fails within 1 s, the sink receives 0 bytes, the violation says blocked', async () => {
    await setMode('active');
    try {
      const bytesBefore = sink.bytes();
      const r = await plainClient(tb, { port: SINK_PORT, maxMs: 5000 });
      assert.ok(r.connected && r.failed, `the plaintext client must fail: ${JSON.stringify(r)}`);
      assert.ok(r.elapsedMs < 1000, `the plaintext client must fail within 1 s, took ${r.elapsedMs} ms`);
      assert.equal(sink.bytes() - bytesBefore, 0, 'not one payload byte reaches the sink');
      const v = await agent!.waitFor((l) => l.event === 'violation' && l.dport === SINK_PORT && l.verdict === 'blocked', 3000, 'a blocked violation');
      assert.equal(v.comm, 'node');
      for (const [what, res] of [
        ['psql sslmode=disable', await psql(tb, pg, { sslmode: 'disable' })],
        ['swaks without STARTTLS', await swaks(tb, { starttls: false })],
        ['plain proxying through squid', await curl(tb, nginxUrl(tb, nginx, { tls: false }), { proxy: squidProxyUrl(tb, squid), maxTimeS: 5 })],
        ['plain HTTP over IPv6', await curl(tb, nginxUrl(tb, nginx, { tls: false, v6: true }), { maxTimeS: 5 })],
      ] as const) {
        assert.notEqual(res.code, 0, `${what} must fail in active mode`);
        assert.ok(res.ms < 3000, `${what} must fail fast, took ${res.ms} ms`);
      }
    } finally {
      await setMode('passive');
    }
  });

  test('active: a command under sslwall exec is bypassed', async () => {
    await setMode('active');
    try {
      const r = await tb.exec('client', process.execPath, [
        (await import('../../tools/lab/agent-proc.js')).SSLWALL,
        'exec',
        '--cgroup',
        clientEnv.cgroup,
        '--',
        'curl',
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '--max-time',
        '5',
        nginxUrl(tb, nginx, { tls: false }),
      ]);
      assert.equal(r.stdout.trim(), '200', `plain curl under sslwall exec must pass: ${r.stderr}`);
    } finally {
      await setMode('passive');
    }
  });

  test('hot swap passive -> active during a long TLS transfer: the transfer completes', async () => {
    const transfer = curl(tb, nginxUrl(tb, nginx, { tls: true, path: '/big.bin' }), { cacert: certs.caCert, args: ['--limit-rate', '20M'], maxTimeS: 30 });
    // Swap only once the transfer's flow is classified: then the swap lands mid-transfer.
    await waitForFlows((flows) => flows.some((f) => f.dport === 443 && f.class === 'tls'), 5000, 'the TLS transfer classified in the flow map');
    await setMode('active');
    try {
      const r = await transfer;
      assert.equal(r.httpCode, 200, `the TLS transfer must complete across the swap: ${r.stderr}`);
      assert.equal(r.bytes, 64 * 1024 * 1024);
    } finally {
      await setMode('passive');
    }
  });

  test('an invalid config is refused with an error line and the previous one stays in force', async () => {
    writeConfig(clientEnv, { mode: 'enforce', bypass: { ports: [70000] } });
    const line = await agent!.waitFor((l) => l.event === 'config_refused', 5000, 'config_refused');
    assert.equal(line.code, 'SSLWALL_E_CONFIG_INVALID');
    assert.match(String(line.err), /mode/);
    assert.match(String(line.err), /bypass\.ports\[0\]/);
    const r = await curl(tb, nginxUrl(tb, nginx, { tls: false }));
    assert.equal(r.httpCode, 200, 'passive mode is still in force');
    writeConfig(clientEnv, config('passive'));
  });

  test('server host enforcing on ingress: the plaintext client fails within 1 s, the sink gets 0 bytes', async () => {
    const serverEnv = await agentEnv(tb, 'server', cgroup2);
    writeConfig(serverEnv, config('active'));
    const serverAgent = await AgentProc.start(serverEnv);
    try {
      const bytesBefore = sink.bytes();
      const r = await plainClient(tb, { port: SINK_PORT, maxMs: 5000 });
      assert.ok(r.connected && r.failed, `the plaintext client must fail: ${JSON.stringify(r)}`);
      assert.ok(r.elapsedMs < 1000, `failure within 1 s, took ${r.elapsedMs} ms`);
      assert.equal(sink.bytes() - bytesBefore, 0);
      const tls = await curl(tb, nginxUrl(tb, nginx, { tls: true }), { cacert: certs.caCert });
      assert.equal(tls.httpCode, 200, 'TLS still passes the server host');
    } finally {
      await serverAgent.stop();
      await sslwall(serverEnv, ['uninstall', '--bpffs', serverEnv.bpffs]);
    }
  });

  test('SIGKILL while active: still enforced; a restart adopts the filter without a duplicate', async () => {
    await setMode('active');
    const before = pinnedTcxProgIds(clientEnv.bpffs);
    await agent!.kill9();
    const bytesBefore = sink.bytes();
    const r = await plainClient(tb, { port: SINK_PORT, maxMs: 1500 });
    assert.equal(sink.bytes() - bytesBefore, 0, 'with the agent dead, plaintext is still dropped');
    assert.ok(r.connected, 'the connection itself opens (only payload is judged)');
    agent = await AgentProc.start(clientEnv, ['--metrics-addr', METRICS]);
    const adopted = agent.lines().filter((l) => l.event === 'filter_adopted');
    assert.equal(adopted.length, 2, 'ingress and egress filters are adopted, not attached again');
    assert.deepEqual(
      adopted.map((l) => l.replaced),
      [false, false],
      'an identical program (same tag) is left running, not replaced',
    );
    // Not /sys/class/net: nsenter --net keeps the host's sysfs; ask netlink inside the namespace.
    const ifindex = (JSON.parse((await tb.exec('client', 'ip', ['-j', 'link', 'show', 'dev', tb.client.ifname])).stdout) as Array<{ ifindex: number }>)[0]!
      .ifindex;
    // Ours = running the programs of either load (other namespaces may reuse the ifindex).
    const ours = new Set([...before, ...pinnedTcxProgIds(clientEnv.bpffs)]);
    const tcx = tcxLinksOn(ifindex).filter((l) => ours.has(l.progId));
    assert.equal(tcx.length, 2, `exactly one ingress and one egress link on the interface, saw ${JSON.stringify(tcx)}`);
    const again = await plainClient(tb, { port: SINK_PORT, maxMs: 5000 });
    assert.ok(again.failed && again.elapsedMs < 1000, `after adoption the client fails fast again: ${JSON.stringify(again)}`);
    await setMode('passive');
  });

  test('/metrics counts flows by class and verdict', async () => {
    const r = await tb.exec('client', 'curl', ['-s', `http://${METRICS}/metrics`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /sslwall_flows_total\{class="plaintext",verdict="reported"\} [1-9]/);
    assert.match(r.stdout, /sslwall_flows_total\{class="tls",verdict="allowed"\} [1-9]/);
    assert.match(r.stdout, /sslwall_flows_total\{class="bypass",verdict="allowed"\} [1-9]/);
    assert.match(r.stdout, /process_resident_memory_bytes/);
  });

  test('uninstall removes every pin and filter; the interface is left bare', async () => {
    const progIdsBeforeUninstall = pinnedTcxProgIds(clientEnv.bpffs);
    await agent!.stop();
    agent = undefined;
    const r = await sslwall(clientEnv, ['uninstall', '--bpffs', clientEnv.bpffs, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const removed = (JSON.parse(r.stdout) as { removed: string[] }).removed;
    assert.ok(
      removed.some((p) => p.includes('tcx_')),
      `tcx links were removed: ${removed.join(', ')}`,
    );
    // maps.debug and progs.debug are the kernel's own (bpf_preload) files at a bpffs root.
    assert.deepEqual(
      fs.readdirSync(clientEnv.bpffs).filter((f) => !f.endsWith('.debug')),
      [],
      'nothing is left pinned',
    );
    const ifindex = (JSON.parse((await tb.exec('client', 'ip', ['-j', 'link', 'show', 'dev', tb.client.ifname])).stdout) as Array<{ ifindex: number }>)[0]!
      .ifindex;
    const ours = new Set(progIdsBeforeUninstall);
    assert.deepEqual(
      tcxLinksOn(ifindex).filter((l) => ours.has(l.progId)),
      [],
      'no filter of ours is left on the interface',
    );
    const plain = await curl(tb, nginxUrl(tb, nginx, { tls: false }));
    assert.equal(plain.httpCode, 200);
  });
});
