// Transparent TLS, kernel side, in the real kernel: the ttls object loaded and attached by the
// agent's own code (agent/ttls-kernel.ts) to a cgroup of a test bed, a stand-in proxy on the
// client namespace's loopback (tools/lab/ttls-probe.ts, which looks up the original destination
// with the agent's lookup), a plain server in the server namespace. Each case connects from a
// process inside the cgroup and reads who answered: "proxy <original destination>" or
// "direct <port>". Cleanup (links, pins, cgroups, namespaces) runs in after() whatever happened.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { BypassCgroup } from '../../agent/apply.js';
import { ensureBypassCgroup } from '../../agent/cgroup.js';
import { pinLayout } from '../../agent/paths.js';
import { TtlsKernel, type TtlsSettings } from '../../agent/ttls-kernel.js';
import { uninstall } from '../../agent/uninstall.js';
import { native } from '../../native/index.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import type { Proc } from '../../tools/lab/proc.js';

const PROBE = fileURLToPath(new URL('../../tools/lab/ttls-probe.js', import.meta.url));
const PROXY_PORT = 15001;
const WRAPPED = 8080;
const UNLISTED = 8081;
const log = pino({ level: 'silent' });

async function until(done: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Spawned processes are unref'd: poll, so a timer keeps the event loop alive while waiting. */
function exited(p: Proc): Promise<void> {
  return until(() => !p.running, 15_000, `${p.name} to exit`);
}

async function ready(p: Proc): Promise<void> {
  const text = () => (fs.existsSync(p.logFile) ? fs.readFileSync(p.logFile, 'utf8') : '');
  await until(() => text().includes('ready') || !p.running, 20_000, `${p.name} to listen`);
  assert.ok(p.running, `${p.name} exited:\n${text()}`);
}

describe('ttls kernel side: connect() redirect, original destination, exclusions, cleanup', () => {
  let tb: Testbed;
  let bpffs: string;
  let cg: string;
  let bypass: BypassCgroup & { path: string };
  let kernel: TtlsKernel | undefined;
  let settings: TtlsSettings;

  const connect = async (host: string, port: number, cgroup = cg): Promise<string> =>
    (await tb.execOk('client', process.execPath, [PROBE, 'connect', host, String(port)], { cgroup })).stdout.trim();
  const entries = () => ({
    byCookie: native().mapDump(kernel!.maps.sslwall_ttls_by_cookie).length,
    byLocal: native().mapDump(kernel!.maps.sslwall_ttls_by_local).length,
  });
  const noEntries = () => until(() => entries().byCookie === 0 && entries().byLocal === 0, 5_000, `the ttls maps to empty (now ${JSON.stringify(entries())})`);

  before(async () => {
    tb = await createTestbed('ttlsk');
    bpffs = await tb.mountBpffs();
    cg = tb.cgroup(await tb.mountCgroup2(), 'ttls');
    bypass = ensureBypassCgroup(cg);
    kernel = TtlsKernel.load(bpffs, cg, log);
    // The stand-in proxy opens the pinned map: after the load.
    await Promise.all([
      ready(tb.spawn('server', 'serve', process.execPath, [PROBE, 'serve', String(WRAPPED), String(UNLISTED)])),
      ready(tb.spawn('client', 'proxy', process.execPath, [PROBE, 'proxy', String(PROXY_PORT), bpffs])),
    ]);
    settings = {
      ttls: { ports: [WRAPPED, 3306], cidrs: [`${tb.server.ipv4}/32`, `${tb.server.ipv6}/128`], port: 15443 },
      proxyPort: PROXY_PORT,
      agentTgid: process.pid,
      bypassCgroup: bypass,
    };
    kernel.apply(settings);
  });

  after(async () => {
    try {
      kernel?.detach();
    } finally {
      kernel?.close();
      await tb?.destroy();
    }
  });

  test('IPv4: a connect() to a wrapped address and port lands on the proxy, which finds the original destination', async () => {
    assert.equal(await connect(tb.server.ipv4, WRAPPED), `proxy ${tb.server.ipv4} ${WRAPPED}`);
  });

  test('IPv6: the same to [::1] on the proxy port', async () => {
    assert.equal(await connect(tb.server.ipv6, WRAPPED), `proxy ${tb.server.ipv6} ${WRAPPED}`);
  });

  test('IPv4-mapped IPv6: matched as IPv4, sent to ::ffff:127.0.0.1 (the IPv4 listener)', async () => {
    assert.equal(await connect(`::ffff:${tb.server.ipv4}`, WRAPPED), `proxy ${tb.server.ipv4} ${WRAPPED}`);
  });

  test('entries are gone once the connections close: no map dump left, one close counted per redirect', async () => {
    await noEntries();
    const c = kernel!.counters();
    assert.equal(c.redirected, 3n, `redirected: ${JSON.stringify(c, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
    assert.equal(c.closed, 3n);
    assert.equal(c.rememberFailed + c.publishFailed, 0n);
  });

  test('a port not in ttls.ports goes direct', async () => {
    assert.equal(await connect(tb.server.ipv4, UNLISTED), `direct ${UNLISTED}`);
    assert.equal(await connect(tb.server.ipv6, UNLISTED), `direct ${UNLISTED}`);
  });

  test('an address outside ttls.cidrs goes direct', async () => {
    kernel!.apply({ ...settings, ttls: { ...settings.ttls!, cidrs: ['198.51.100.0/24', '2001:db8:ffff::/64'] } });
    try {
      assert.equal(await connect(tb.server.ipv4, WRAPPED), `direct ${WRAPPED}`);
      assert.equal(await connect(tb.server.ipv6, WRAPPED), `direct ${WRAPPED}`);
    } finally {
      kernel!.apply(settings);
    }
    assert.equal(await connect(tb.server.ipv4, WRAPPED), `proxy ${tb.server.ipv4} ${WRAPPED}`, 'wrapped again after the config came back');
  });

  test('a process under the sslwall-bypass child cgroup goes direct', async () => {
    assert.equal(await connect(tb.server.ipv4, WRAPPED, bypass.path), `direct ${WRAPPED}`);
    assert.equal(await connect(tb.server.ipv6, WRAPPED, bypass.path), `direct ${WRAPPED}`);
  });

  test("the agent's own process (its tgid in the config) goes direct", async () => {
    const go = path.join(tb.tempDir('go'), 'go');
    const p = tb.spawn('client', 'as-agent', process.execPath, [PROBE, 'connect', tb.server.ipv4, String(WRAPPED), '--go', go], { cgroup: cg });
    kernel!.apply({ ...settings, agentTgid: p.pid });
    try {
      fs.writeFileSync(go, '');
      await exited(p);
      assert.equal(fs.readFileSync(p.logFile, 'utf8').trim(), `direct ${WRAPPED}`);
    } finally {
      kernel!.apply(settings);
    }
  });

  test('a destination marked as speaking TLS goes direct; other ports and addresses stay wrapped', async () => {
    const before = kernel!.counters().tlsDirect;
    kernel!.markSpeaksTls(tb.server.ipv4, WRAPPED);
    try {
      assert.equal(await connect(tb.server.ipv4, WRAPPED), `direct ${WRAPPED}`);
      assert.equal(await connect(`::ffff:${tb.server.ipv4}`, WRAPPED), `direct ${WRAPPED}`, 'the mapped form is the same destination');
      assert.equal(await connect(tb.server.ipv6, WRAPPED), `proxy ${tb.server.ipv6} ${WRAPPED}`);
      assert.equal(kernel!.counters().tlsDirect - before, 2n);
    } finally {
      for (const [k] of native().mapDump(kernel!.maps.sslwall_ttls_speaks_tls)) native().mapDelete(kernel!.maps.sslwall_ttls_speaks_tls, k);
    }
  });

  test('an open wrapped connection shows in wrappedFlows as class tls to its original destination', async () => {
    const hold = path.join(tb.tempDir('hold'), 'hold');
    const p = tb.spawn('client', 'held', process.execPath, [PROBE, 'connect', tb.server.ipv6, String(WRAPPED), '--hold', hold], { cgroup: cg });
    try {
      await until(() => kernel!.wrappedFlows().length === 1, 10_000, 'the held connection to be established');
      const [f] = kernel!.wrappedFlows();
      assert.deepEqual(
        { ...f, sport: 0 },
        { family: 'ipv6', saddr: '::1', sport: 0, daddr: tb.server.ipv6, dport: WRAPPED, class: 'tls', verdict: 'allowed', proto: 'none', wrapped: true },
      );
    } finally {
      fs.writeFileSync(hold, '');
      await exited(p);
    }
    await noEntries();
  });

  test('disabling ttls (no member) stops new redirects and leaves an open wrapped connection working', async () => {
    const hold = path.join(tb.tempDir('hold'), 'hold');
    const p = tb.spawn('client', 'held-through-disable', process.execPath, [PROBE, 'connect', tb.server.ipv4, String(WRAPPED), '--hold', hold], { cgroup: cg });
    try {
      await until(() => entries().byLocal === 1, 10_000, 'the held connection to be established');
      kernel!.apply({ ...settings, ttls: undefined });
      assert.equal(await connect(tb.server.ipv4, WRAPPED), `direct ${WRAPPED}`);
      assert.equal(await connect(tb.server.ipv6, WRAPPED), `direct ${WRAPPED}`);
      assert.equal(entries().byLocal, 1, 'the open connection keeps its entry');
      fs.writeFileSync(hold, '');
      await exited(p);
      assert.deepEqual(fs.readFileSync(p.logFile, 'utf8').trim().split('\n'), [`proxy ${tb.server.ipv4} ${WRAPPED}`, 'echo ping']);
    } finally {
      fs.writeFileSync(hold, '');
      kernel!.apply(settings);
    }
    await noEntries();
  });

  test('a restart adopts the pinned links and maps: same links, program swapped in, still wrapping', async () => {
    const pins = pinLayout(bpffs);
    const linkIds = () =>
      (['connect4', 'connect6', 'sockops'] as const).map((w) => {
        const l = native().getPinned(pins.ttlsLink(w), 'link');
        try {
          return native().linkInfo(l).id;
        } finally {
          l.close();
        }
      });
    const ids = linkIds();
    const again = TtlsKernel.load(bpffs, cg, log);
    try {
      assert.equal(again.mapsReplaced, 0, 'every pinned map reused');
      assert.deepEqual(linkIds(), ids, 'the same links, updated in place');
      assert.equal(await connect(tb.server.ipv4, WRAPPED), `proxy ${tb.server.ipv4} ${WRAPPED}`, 'the config written before the restart still holds');
    } finally {
      again.close();
    }
  });

  test('detaching leaves the cgroup bare and connects go direct', async () => {
    kernel!.detach();
    assert.equal(execFileSync('bpftool', ['cgroup', 'show', cg], { encoding: 'utf8' }).trim(), '', 'programs left on the cgroup');
    assert.equal(await connect(tb.server.ipv4, WRAPPED), `direct ${WRAPPED}`);
    assert.ok(!fs.readdirSync(pinLayout(bpffs).links).some((f) => f.startsWith('ttls_')), 'ttls link pins left');
  });

  test('sslwall uninstall detaches the ttls links it finds pinned and removes the ttls map pins', async () => {
    const again = TtlsKernel.load(bpffs, cg, log);
    again.close();
    assert.notEqual(execFileSync('bpftool', ['cgroup', 'show', cg], { encoding: 'utf8' }).trim(), '', 'attached again');
    const removed = uninstall(bpffs, []);
    assert.ok(
      removed.some((p) => p.endsWith('/links/ttls_sockops')) && removed.some((p) => p.endsWith('/maps/sslwall_ttls_by_local')),
      `removed: ${removed.join(', ')}`,
    );
    assert.equal(execFileSync('bpftool', ['cgroup', 'show', cg], { encoding: 'utf8' }).trim(), '', 'programs left on the cgroup');
    assert.equal(await connect(tb.server.ipv4, WRAPPED), `direct ${WRAPPED}`);
  });
});
