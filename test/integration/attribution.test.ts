// Violations attributed to the local service, end to end in the real kernel with a real etcd: a
// plaintext client started in its own systemd-style cgroup (…/system.slice/legacy-app.service)
// and a plaintext server in another (…/system.slice/legacy-db.service) accepting a remote client
// are named by unit and cgroup in the violation log line, in `sslwall flows` and in the summary
// the agent publishes to summary/<tier>/<host>; the summary is published soon after the first
// violation, then not more often than SUMMARY_MIN_INTERVAL_MS and only when something changed;
// a real engine reading that summary answers the search for the unit in its API and in the
// dashboard, in headless Chromium.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Etcd3, Watcher } from 'etcd3';
import { type Browser, chromium } from 'playwright-core';
import { addUser } from '../../rollout/auth.js';
import { EngineClient } from '../../rollout/client.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { SUMMARY_MIN_INTERVAL_MS, type Summary, type SummaryEntry, SummarySchema } from '../../schemas/summary.js';
import { type AgentEnv, AgentProc, agentEnv, sslwall } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { EngineProc, makeKeys } from '../../tools/lab/fleet.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { plainClient, startSink } from '../../tools/lab/peers.js';
import { PROGRAMS } from '../../tools/lab/prerequisites.js';
import { BIN, waitFor, waitForValue } from '../../tools/lab/proc.js';

const TIER = 'web';
const HOST = 'host-attrib';
const keys = etcdKeys('/sslwall/');
const SINK_PORT = 9000;
const DB_PORT = 5433;
/** The agent publishes its first summary 1 s after the first violation; load on a shared machine adds to it. */
const FIRST_PUBLISH_MS = 10_000;

const tierDoc = JSON.stringify({
  kind: 'tier',
  tier: TIER,
  version: 1,
  config: { mode: 'off', bypass: { ports: [22] } },
  rollout: { mode: 'passive', percent: 100, otherwise: 'off', salt: 'attrib' },
});

describe('violations attributed to the local service', () => {
  let tb: Testbed;
  let etcd: EtcdServer;
  let client: Etcd3;
  let bridge: EtcdBridge;
  let env: AgentEnv;
  let cgroup2: string;
  let agent: AgentProc | undefined;
  let watcher: Watcher | undefined;
  /** Every write of the summary key, as the test's watch saw it. */
  const writes: Array<{ at: number; doc: Summary }> = [];
  let appCgroup: string;
  let dbCgroup: string;
  const rel = (dir: string) => `/${path.relative(cgroup2, dir)}`;

  before(async () => {
    tb = await createTestbed('attribution');
    etcd = await startEtcd();
    client = createEtcdClient({ endpoints: etcd.endpoints });
    bridge = await EtcdBridge.start(tb, 'client', etcd.clientPort);
    cgroup2 = await tb.mountCgroup2();
    env = await agentEnv(tb, 'client', cgroup2);
    await startSink(tb, { port: SINK_PORT });
    // Named like systemd's units, below a cgroup of this bed's (removed with it by tb.destroy()).
    const services = tb.cgroup(cgroup2, 'services');
    appCgroup = path.join(services, 'system.slice', 'legacy-app.service');
    dbCgroup = path.join(services, 'system.slice', 'legacy-db.service');
    fs.mkdirSync(appCgroup, { recursive: true });
    fs.mkdirSync(dbCgroup, { recursive: true });
    await client.put(keys.tierConfig(TIER)).value(tierDoc);
    watcher = await client.watch().key(keys.summary(TIER, HOST)).create();
    watcher.on('put', (kv) => writes.push({ at: Date.now(), doc: SummarySchema.parse(JSON.parse(kv.value.toString())) }));
    agent = await AgentProc.start({ ...env, configFile: '' }, ['--etcd', bridge.url, '--tier', TIER, '--host-id', HOST, '--insecure-unsigned']);
    await agent.waitFor((l) => l.event === 'config_applied' && l.mode === 'passive', 10_000, 'passive config applied');
  });

  after(async () => {
    await watcher?.cancel();
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    client?.close();
    await etcd?.destroy();
    await tb?.destroy();
  });

  async function waitWrites(n: number, timeoutMs: number): Promise<Summary> {
    await waitFor(`summary write #${n}`, () => writes.length >= n, {
      timeoutMs,
      explain: () => `writes so far: ${JSON.stringify(writes)}; agent log tail: ${JSON.stringify(agent!.lines().slice(-5))}`,
    });
    return writes[n - 1]!.doc;
  }

  const find = (s: Summary, unit: string): SummaryEntry | undefined => s.entries.find((e) => e.service.unit === unit);

  let firstViolationAt = 0;

  test('a plaintext client in legacy-app.service is named by unit and cgroup in the log line, in sslwall flows and in the summary', async () => {
    const started = plainClient(tb, { port: SINK_PORT, cgroup: appCgroup, maxMs: 4000 });
    const line = await agent!.waitFor((l) => l.event === 'violation' && l.dport === SINK_PORT, 5000, 'the violation of legacy-app');
    firstViolationAt = Date.now();
    assert.equal(line.unit, 'legacy-app.service', `log line: ${JSON.stringify(line)}`);
    assert.equal(line.cgroup, rel(appCgroup));
    assert.equal(line.client, 'local');
    assert.equal(line.comm, 'node');

    // While the connection is open, `sslwall flows` names its unit (the owner the filter recorded at the SYN).
    let flows: Array<{ dport: number; unit?: string; cgroup?: string; comm?: string }> = [];
    await waitFor(
      'the flow to the sink with its unit',
      async () => {
        flows = JSON.parse((await sslwall(env, ['flows', '--json', '--bpffs', env.bpffs, '--cgroup', env.cgroup])).stdout);
        return flows.some((f) => f.dport === SINK_PORT && f.unit === 'legacy-app.service');
      },
      { timeoutMs: 3000, explain: () => JSON.stringify(flows) },
    );
    const table = (await sslwall(env, ['flows', '--bpffs', env.bpffs, '--cgroup', env.cgroup])).stdout;
    assert.match(table, /UNIT/);
    assert.match(table, /legacy-app\.service/);
    await started;

    const s = await waitWrites(1, FIRST_PUBLISH_MS);
    const e = find(s, 'legacy-app.service');
    assert.ok(e, `summary entries: ${JSON.stringify(s.entries)}`);
    assert.deepEqual(
      { ...e, firstSeen: undefined, lastSeen: undefined, count: undefined, service: { ...e.service, pid: undefined } },
      {
        service: { unit: 'legacy-app.service', cgroup: rel(appCgroup), container: null, comm: 'node', pid: undefined },
        direction: 'client',
        remote: { addr: tb.server.ipv4, port: SINK_PORT },
        localPort: 0,
        verdict: 'reported',
        count: undefined,
        firstSeen: undefined,
        lastSeen: undefined,
      },
    );
    assert.equal(e.service.pid, line.pid);
    assert.ok(e.count >= 1);
    assert.equal(s.hostId, HOST);
    assert.equal(s.tier, TIER);
    assert.equal(s.dropped, 0);
  });

  test('a local plaintext server in legacy-db.service accepting a remote client is attributed as server with its listening port', async () => {
    tb.spawn('client', 'legacy-db', BIN.socat, ['-u', `TCP4-LISTEN:${DB_PORT},bind=${tb.client.ipv4},reuseaddr,fork`, 'OPEN:/dev/null'], {
      cgroup: dbCgroup,
    });
    await waitFor('legacy-db listening', async () => (await tb.exec('client', BIN.ss, ['-Hltn', `sport = :${DB_PORT}`])).stdout.includes(`:${DB_PORT}`), {
      timeoutMs: 5000,
    });
    const remote = `const s = require('net').connect(${DB_PORT}, '${tb.client.ipv4}', () => { s.write('SELECT 1;\\n'); setTimeout(() => s.end(), 300); }); s.on('error', (e) => { console.error(e.message); process.exit(1); });`;
    const r = await tb.exec('server', process.execPath, ['-e', remote], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, `the remote client could not talk to legacy-db: ${r.stderr}`);
    const line = await agent!.waitFor((l) => l.event === 'violation' && l.dport === DB_PORT, 5000, 'the violation at legacy-db');
    assert.equal(line.client, 'remote');
    assert.equal(line.unit, 'legacy-db.service', `log line: ${JSON.stringify(line)}`);
    assert.equal(line.cgroup, rel(dbCgroup));

    // Counted at once, published no sooner than SUMMARY_MIN_INTERVAL_MS after the first write.
    const s = await waitWrites(2, SUMMARY_MIN_INTERVAL_MS + FIRST_PUBLISH_MS);
    const e = find(s, 'legacy-db.service');
    assert.ok(e, `summary entries: ${JSON.stringify(s.entries)}`);
    assert.equal(e.direction, 'server');
    assert.equal(e.localPort, DB_PORT);
    assert.deepEqual(e.remote, { addr: tb.server.ipv4, port: 0 }, "the remote client's ephemeral port is not kept");
    assert.equal(e.service.cgroup, rel(dbCgroup));
    assert.equal(e.service.comm, null, 'a SYN-ACK is sent from softirq: no process');
    assert.ok(find(s, 'legacy-app.service'), 'the earlier entry stays');
    const gap = writes[1]!.at - writes[0]!.at;
    assert.ok(gap >= SUMMARY_MIN_INTERVAL_MS - 500, `two summary writes ${gap} ms apart; at most one every ${SUMMARY_MIN_INTERVAL_MS} ms`);
    assert.ok(writes[0]!.at - firstViolationAt <= FIRST_PUBLISH_MS, 'the first summary came soon after the first violation');
  });

  test("the engine's API and the dashboard in Chromium answer for legacy-app.service from the agent's own summary", async () => {
    const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-attribution-engine-'));
    const engineKeys = makeKeys();
    let engine: EngineProc | undefined;
    let browser: Browser | undefined;
    try {
      engine = await EngineProc.start(etcd.endpoints, engineKeys, 'attribution', logDir);
      const viewer = addUser(engine.users, 'owner', 'viewer');
      const c = new EngineClient(engine.url, { token: viewer });
      const hits = await waitForValue('the engine holds the summary', async () => {
        const r = await c.violations('legacy-app');
        return r.entries.length > 0 && r;
      });
      const hit = hits.entries.find((e) => e.hostId === HOST && e.service.unit === 'legacy-app.service');
      assert.ok(hit, JSON.stringify(hits.entries));
      assert.deepEqual([hit.tier, hit.direction, hit.verdict, hit.service.cgroup], [TIER, 'client', 'reported', rel(appCgroup)]);
      assert.deepEqual(hit.remote, { addr: tb.server.ipv4, port: SINK_PORT });

      browser = await chromium.launch({ executablePath: PROGRAMS.chromium.path, headless: true });
      const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
      const problems: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(m.text());
      });
      page.on('pageerror', (e) => problems.push(e.message));
      await page.goto(`${engine.url}/`);
      await page.fill('input[name=token]', viewer);
      await page.click('text=open the dashboard');
      await page.click('nav >> text=Services');
      await page.fill('input[name=q]', 'legacy-app');
      await page.click('form button[type=submit]');
      await page.locator('#answer').waitFor();
      // biome-ignore lint/performance/useDomNodeTextContent: the rendered text is what a service owner reads.
      assert.match(await page.locator('#answer').innerText(), /Yes, traffic of legacy-app is affected/);
      // biome-ignore lint/performance/useDomNodeTextContent: as above.
      const rows = await page.locator('#hits tbody').innerText();
      assert.match(rows, new RegExp(`legacy-app\\.service[\\s\\S]*${HOST}[\\s\\S]*${tb.server.ipv4.replaceAll('.', '\\.')}:${SINK_PORT}`));
      assert.deepEqual(problems, [], 'no console or page error');
    } finally {
      await browser?.close();
      await engine?.stop();
      fs.rmSync(engineKeys.dir, { recursive: true, force: true });
      fs.rmSync(logDir, { recursive: true, force: true });
    }
  });

  test('with no new violation the summary is not written again, and it goes with the lease when the agent stops', async () => {
    await new Promise((r) => setTimeout(r, SUMMARY_MIN_INTERVAL_MS + 3000 - (Date.now() - writes[1]!.at)));
    assert.equal(writes.length, 2, `nothing changed, yet the summary was written again: ${JSON.stringify(writes.slice(2))}`);
    const health = await client.get(keys.health(TIER, HOST)).string();
    assert.ok(health, 'the health key (same lease) is there');
    await agent!.stop();
    agent = undefined;
    assert.equal(await client.get(keys.summary(TIER, HOST)).string(), null, 'a clean stop revokes the lease: the summary key is gone');
  });
});
