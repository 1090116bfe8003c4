// The rollout engine against real etcd and a simulated fleet (real watches, leases, signature
// checks and cohort code): versions and CAS, signatures, stage advance, rollback on an alert and
// on a PromQL threshold, pause on missing data, agents that stop reporting, promote/abort/undo,
// and a leader killed mid-rollout (engine replica and etcd member) without skipping or repeating
// a stage.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EngineClient } from '../../rollout/client.js';
import type { AgentsBody } from '../../schemas/api.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import type { RolloutState } from '../../schemas/rollout.js';
import { runHost } from '../../tools/lab/agent-proc.js';
import { type EtcdCluster, type EtcdServer, startEtcd, startEtcdCluster } from '../../tools/lab/etcd.js';
import { EngineProc, fakePrometheus, type Keys, makeKeys, SimProc } from '../../tools/lab/fleet.js';
import { waitForValue } from '../../tools/lab/proc.js';

const BASE = { mode: 'passive', bypass: { ports: [22] }, starttls: { smtp: [25] } };
type View = RolloutState & { live: { agents: number; cohort: number; applied: number } };

async function rolloutStatus(e: EngineProc, tier: string, pred: (s: View) => boolean, what: string, timeoutMs = 30000): Promise<View> {
  let last: View | undefined;
  try {
    return await waitForValue(
      what,
      async () => {
        const r = await e.api<View>('GET', `/api/tiers/${tier}/rollout`);
        last = r.body;
        return r.status === 200 && pred(r.body) ? r.body : undefined;
      },
      timeoutMs,
    );
  } catch (err) {
    const problems = e
      .log()
      .split('\n')
      .filter((l) => /"level":(40|50)/.test(l))
      .slice(-8)
      .join('\n');
    throw new Error(
      `${(err as Error).message}; last state: ${JSON.stringify(last && { status: last.status, stage: last.stage, phase: last.phase, reason: last.reason, checks: last.lastChecks, live: last.live })}\nengine warnings:\n${problems}`,
    );
  }
}

describe('rollout engine on one etcd', () => {
  let etcd: EtcdServer;
  let keys: Keys;
  let engine: EngineProc;
  let sim: SimProc;
  let logDir: string;
  const tier = 'web';

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-engine-test-'));
    etcd = await startEtcd();
    keys = makeKeys();
    engine = await EngineProc.start(etcd.endpoints, keys, 'a', logDir);
    const put = await engine.api('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'first' });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    sim = await SimProc.start(etcd.endpoints, tier, 50, keys, logDir);
  });

  after(async () => {
    await sim?.stop();
    await engine?.stop();
    await etcd?.destroy();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  async function head(): Promise<{ version: number; config: unknown; rollout: { mode: string; percent: number } }> {
    return (await engine.api<{ version: number; config: unknown; rollout: { mode: string; percent: number } }>('GET', `/api/tiers/${tier}/config`)).body;
  }

  async function allApplied(version: number) {
    await sim.waitStats((s) => s.applied[String(version)] === 50, 15000, `all 50 agents on version ${version}`);
  }

  test('versions are kept with author and message; a stale compare-and-swap is refused', async () => {
    const h = (await engine.api<{ version: number; revision: number }>('GET', `/api/tiers/${tier}/config`)).body;
    const ok = await engine.api<{ version: number }>('PUT', `/api/tiers/${tier}/config`, {
      document: { ...BASE, bypass: { ports: [22, 179] } },
      message: 'add BGP',
      expectRevision: h.revision,
    });
    assert.equal(ok.status, 201);
    const stale = await engine.api<{ code: string; message: string }>('PUT', `/api/tiers/${tier}/config`, {
      document: BASE,
      message: 'stale',
      expectRevision: h.revision,
    });
    assert.equal(stale.status, 409);
    assert.equal(stale.body.code, 'SSLWALL_E_CONFLICT');
    const hist = (await engine.api<Array<{ version: number; author: string; message: string }>>('GET', `/api/tiers/${tier}/history`)).body;
    assert.deepEqual(
      hist.map((r) => [r.version, r.message]),
      [
        [1, 'first'],
        [2, 'add BGP'],
      ],
    );
    const diff = await runHost(['config', 'diff', '--tier', tier, '1', '2', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(diff.code, 0, diff.stderr);
    assert.match(diff.stdout, /config\.bypass\.ports: \[22\] -> \[22,179\]/);
    const rev = await runHost(['config', 'revert', '--tier', tier, '--to', '1', '--engine', engine.url, '--token-file', engine.tokenFile, '--json']);
    assert.equal(rev.code, 0, rev.stderr);
    const v3 = await head();
    assert.equal(v3.version, 3);
    assert.deepEqual((v3.config as { bypass: { ports: number[] } }).bypass.ports, [22]);
    await allApplied(3);
    const invalid = await engine.api<{ code: string; message: string }>('PUT', `/api/tiers/${tier}/config`, { document: { mode: 'enforce' } });
    assert.equal(invalid.status, 400);
    assert.equal(invalid.body.code, 'SSLWALL_E_CONFIG_INVALID');
  });

  test("every error answers {code, message} with the status of its code; the client throws it with the engine's code", async () => {
    const cases: Array<[string, string, unknown, number, string, RegExp]> = [
      ['GET', '/api/nope', undefined, 404, 'SSLWALL_E_NOT_FOUND', /no route GET \/api\/nope/],
      ['GET', '/api/tiers/bad%20tier/config', undefined, 400, 'SSLWALL_E_USAGE', /params: tier:/],
      ['GET', `/api/tiers/${tier}/preview?percent=101`, undefined, 400, 'SSLWALL_E_USAGE', /querystring: percent:/],
      ['POST', `/api/tiers/${tier}/rollout/frobnicate`, {}, 400, 'SSLWALL_E_USAGE', /params: action:/],
      ['POST', `/api/tiers/${tier}/revert`, {}, 400, 'SSLWALL_E_CONFIG_INVALID', /request body: to:/],
      ['PUT', `/api/tiers/${tier}/config`, { documen: BASE }, 400, 'SSLWALL_E_CONFIG_INVALID', /request body: document:/],
      ['POST', '/api/alerts', { alerts: [{ status: 'burning' }] }, 400, 'SSLWALL_E_CONFIG_INVALID', /alerts\[0\]\.status/],
      ['POST', `/api/tiers/${tier}/rollout`, { stages: 'active:x' }, 400, 'SSLWALL_E_USAGE', /stage "active:x"/],
      ['GET', '/api/tiers/none/rollout', undefined, 404, 'SSLWALL_E_NOT_FOUND', /tier none has no rollout/],
    ];
    for (const [method, p, body, status, code, message] of cases) {
      const r = await engine.api<{ code: string; message: string }>(method, p, body);
      assert.deepEqual([r.status, r.body.code, Object.keys(r.body).sort()], [status, code, ['code', 'message']], `${method} ${p}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.message, message, `${method} ${p}`);
    }
    const client = new EngineClient(engine.url, { token: engine.token });
    await assert.rejects(client.version(tier, 999), (e: { code?: string; name?: string }) => e.name === 'SslwallError' && e.code === 'SSLWALL_E_NOT_FOUND');
    assert.equal((await client.head(tier)).version, (await client.history(tier)).at(-1)!.version, 'the client parses the head and the history');
  });

  test('the dashboard page, its script and its libraries are served (rollout/dashboard, node_modules)', async () => {
    const page = await fetch(`${engine.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    const html = await page.text();
    assert.match(html, /<script type="module" src="\.\/dashboard\.js">/);
    const js = await fetch(`${engine.url}/dashboard.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type') ?? '', /javascript/);
    const text = await js.text();
    assert.match(text, /\/api\/tiers/);
    assert.match(text, /Is my traffic affected\?/);
    for (const lib of ['preact.mjs', 'preact-hooks.mjs', 'htm.mjs', 'uplot.mjs']) {
      const r = await fetch(`${engine.url}/vendor/${lib}`);
      assert.equal(r.status, 200, lib);
      assert.match(r.headers.get('content-type') ?? '', /javascript/, lib);
    }
  });

  test('preview (tier in passive mode) lists the hosts joining at a percentage and which would block', async () => {
    const r = await runHost(['rollout', 'preview', '--tier', tier, '--percent', '30', '--engine', engine.url, '--token-file', engine.tokenFile, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const p = JSON.parse(r.stdout) as { joining: Array<{ hostId: string }>; wouldBlock: unknown[] };
    assert.ok(p.joining.length > 5 && p.joining.length < 30, `about 30 % of 50 hosts join: ${r.stdout.slice(0, 400)}`);
  });

  test('a host override written through the engine is signed, followed by that host only, and removable', async () => {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    const health = async (host: string) =>
      JSON.parse((await client.get(etcdKeys().health(tier, host)).string()) ?? 'null') as { mode: string; overrideVersion: number | null } | null;
    try {
      const set = await runHost([
        'config',
        'override',
        '--host',
        'sim-00003',
        '--mode',
        'off',
        '--reason',
        'maintenance',
        '--engine',
        engine.url,
        '--token-file',
        engine.tokenFile,
        '--json',
      ]);
      assert.equal(set.code, 0, set.stderr);
      await waitForValue('sim-00003 off under its override', async () => (await health('sim-00003'))?.mode === 'off', 10000);
      assert.equal((await health('sim-00003'))!.overrideVersion, 1);
      assert.equal((await health('sim-00004'))!.mode, 'passive', 'other hosts follow the tier');
      const clear = await runHost(['config', 'override', '--host', 'sim-00003', '--clear', '--engine', engine.url, '--token-file', engine.tokenFile]);
      assert.equal(clear.code, 0, clear.stderr);
      await waitForValue('sim-00003 back to its tier', async () => (await health('sim-00003'))?.mode === 'passive', 10000);
    } finally {
      client.close();
    }
  });

  test('agents refuse a document that is not signed by the engine; `sslwall agents` lists who refused and who is behind', async () => {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    try {
      const doc = { schema: 1, version: 40, config: { ...BASE, mode: 'active' }, rollout: { mode: 'active', percent: 100, otherwise: 'off', salt: 'x' } };
      await client.put(etcdKeys().tierConfig(tier)).value(JSON.stringify(doc));
      await sim.waitStats((s) => s.errors === 50, 15000, 'all agents refusing the unsigned document');
      assert.equal((await sim.waitStats(() => true, 1000, 'stats')).applied['40'] ?? 0, 0);
      // Which agents refused, and which are behind the head: the agents list answers both.
      const auth = ['--engine', engine.url, '--token-file', engine.tokenFile];
      const listed = await waitForValue('50 agents listed with their error', async () => {
        const r = await runHost(['agents', '--tier', tier, '--errors', '--behind', '--json', ...auth]);
        assert.equal(r.code, 0, r.stderr);
        const body = JSON.parse(r.stdout) as AgentsBody;
        return body.agents.length === 50 ? body : undefined;
      });
      assert.equal(listed.headVersion, 40);
      assert.equal(listed.total, 50);
      assert.ok(
        listed.agents.every((a) => a.behind && a.lastError?.code === 'SSLWALL_E_CONFIG_SIGNATURE' && a.configVersion! < 40),
        JSON.stringify(listed.agents[0]),
      );
      const text = await runHost(['agents', '--tier', tier, '--errors', ...auth]);
      assert.match(text.stdout, /^tier web: head version 40; 50 with errors of 50 agents reporting\nHOST +VERSION +REVISION +MODE +COHORT +LAST ERROR/);
      assert.match(text.stdout, /\nsim-00000 +\d+ \(behind\) +\d+ +passive +(yes|no) +SSLWALL_E_CONFIG_SIGNATURE@\d+ /);
      const one = await runHost(['agents', '--host', 'sim-00007', ...auth]);
      assert.equal(one.code, 0, one.stderr);
      assert.match(one.stdout, /^host sim-00007 in tier web/);
      assert.match(one.stdout, /BEHIND the head/);
      assert.match(one.stdout, /last error SSLWALL_E_CONFIG_SIGNATURE at revision \d+, .*: .*not signed/);
      const unknown = await runHost(['agents', '--host', 'no-such-host', ...auth]);
      assert.equal(unknown.code, 1);
      assert.match(unknown.stderr, /SSLWALL_E_NOT_FOUND.*no agent with host id no-such-host/);
      // Put the signed head back (a new signed version on top).
      const put = await engine.api('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'restore after tampering' });
      assert.equal(put.status, 201, JSON.stringify(put.body));
      await sim.waitStats((s) => s.errors === 0, 15000, 'agents healthy again');
      await waitForValue('no agent listed with an error or behind', async () => {
        const r = await runHost(['agents', '--tier', tier, '--errors', '--json', ...auth]);
        const body = JSON.parse(r.stdout) as AgentsBody;
        return body.agents.length === 0 && body.total === 50;
      });
    } finally {
      client.close();
    }
  });

  test('a rollout advances stage by stage after each healthy bake and completes', async () => {
    const start = await engine.api<RolloutState>('POST', `/api/tiers/${tier}/rollout`, {
      stages: 'passive:100,active:50,active:100',
      bake: '1s',
      analysis: { checkIntervalMs: 250 },
    });
    assert.equal(start.status, 201, JSON.stringify(start.body));
    const done = await rolloutStatus(engine, tier, (s) => s.status === 'completed', 'the rollout to complete', 45000);
    const written = done.events.filter((e) => e.action === 'stage_written').map((e) => e.reason);
    assert.deepEqual(written, ['passive:100', 'active:50', 'active:100'], 'each stage written exactly once, in order');
    const h = await head();
    assert.deepEqual({ mode: h.rollout.mode, percent: h.rollout.percent }, { mode: 'active', percent: 100 });
    await allApplied(h.version);
    const status = await runHost(['rollout', 'status', '--tier', tier, '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.match(status.stdout, /COMPLETED/);
  });

  test('an Alertmanager alert for the tier rolls it back to the version before the rollout', async () => {
    const before = await head();
    await engine.api('POST', `/api/tiers/${tier}/rollout`, {
      stages: 'active:10,active:100',
      bake: '60s',
      analysis: { checkIntervalMs: 250, failureLimit: 1 },
    });
    await rolloutStatus(engine, tier, (s) => s.phase === 'baking', 'baking');
    const alert = {
      version: '4',
      status: 'firing',
      alerts: [{ status: 'firing', labels: { alertname: 'HighErrorRate', tier, severity: 'page' }, startsAt: new Date().toISOString(), fingerprint: 'abc123' }],
    };
    const r = await engine.api<{ firing: number }>('POST', '/api/alerts', alert);
    assert.equal(r.body.firing, 1);
    const s = await rolloutStatus(engine, tier, (x) => x.status === 'aborted', 'rollback after the alert', 15000);
    assert.match(s.reason, /HighErrorRate/);
    const after = await head();
    assert.deepEqual(
      { config: after.config, rollout: after.rollout },
      { config: before.config, rollout: before.rollout },
      'the tier is back to its pre-rollout content',
    );
    await allApplied(after.version);
    await engine.api('POST', '/api/alerts', { alerts: [{ ...alert.alerts[0], status: 'resolved' }] });
  });

  test('an alert rolls a paused rollout back too: an alarm always wins', async () => {
    const before = await head();
    await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:10,active:100', bake: '60s', analysis: { checkIntervalMs: 250 } });
    await rolloutStatus(engine, tier, (s) => s.phase === 'baking', 'baking');
    await engine.api('POST', `/api/tiers/${tier}/rollout/pause`, { reason: 'looking at something' });
    await rolloutStatus(engine, tier, (s) => s.status === 'paused', 'paused');
    const alert = { labels: { alertname: 'PausedButBurning', tier }, startsAt: new Date().toISOString(), fingerprint: 'paused1' };
    const sent = Date.now();
    await engine.api('POST', '/api/alerts', { version: '4', status: 'firing', alerts: [{ ...alert, status: 'firing' }] });
    const s = await rolloutStatus(engine, tier, (x) => x.status === 'aborted', 'rollback of the paused rollout after the alert', 5000);
    assert.match(s.reason, /PausedButBurning/);
    assert.ok(Date.now() - sent < 2000 + 500, `rolled back ${Date.now() - sent} ms after the alert reached the engine (bound: 2 s, plus this test's polling)`);
    const after = await head();
    assert.deepEqual({ config: after.config, rollout: after.rollout }, { config: before.config, rollout: before.rollout }, 'back to the pre-rollout content');
    await allApplied(after.version);
    await engine.api('POST', '/api/alerts', { alerts: [{ ...alert, status: 'resolved' }] });
  });

  test('a PromQL threshold crossing rolls back; missing PromQL data pauses', async () => {
    const prom = await fakePrometheus();
    try {
      const analysis = {
        checkIntervalMs: 250,
        failureLimit: 2,
        prometheus: { url: prom.url, queries: [{ name: 'error_ratio', query: 'sum(rate(errors[1m]))', max: 0.05 }] },
      };
      prom.set(null);
      await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:20,active:100', bake: '2s', analysis });
      const paused = await rolloutStatus(engine, tier, (s) => s.status === 'paused', 'a pause on missing data');
      assert.match(paused.reason, /missing data/);
      prom.set(0.5);
      const resumed = await engine.api('POST', `/api/tiers/${tier}/rollout/resume`, { reason: 'prometheus back' });
      assert.equal(resumed.status, 200);
      const s = await rolloutStatus(engine, tier, (x) => x.status === 'aborted', 'rollback on the PromQL threshold');
      assert.match(s.reason, /error_ratio/);
    } finally {
      await prom.close();
    }
  });

  test('promote skips the bake, abort rolls back, undo reverts a completed rollout', async () => {
    const before = await head();
    await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:5,active:50,active:100', bake: '60s', analysis: { checkIntervalMs: 250 } });
    await rolloutStatus(engine, tier, (s) => s.phase === 'baking' && s.stage === 0, 'stage 1 baking');
    const p = await runHost(['rollout', 'promote', '--tier', tier, '--reason', 'looks fine', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(p.code, 0, p.stderr);
    await rolloutStatus(engine, tier, (s) => s.stage === 1 && s.phase === 'baking', 'stage 2 baking after promote');
    // An operator's config set or revert now would be overwritten by the next stage: refused, saying what to do.
    const edit = await engine.api<{ code: string; message: string }>('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'during the rollout' });
    assert.equal(edit.status, 409, JSON.stringify(edit.body));
    assert.equal(edit.body.code, 'SSLWALL_E_ROLLOUT_STATE');
    assert.match(edit.body.message, /abort it \(sslwall rollout abort --tier/);
    const revert = await engine.api<{ code: string }>('POST', `/api/tiers/${tier}/revert`, { to: before.version });
    assert.deepEqual([revert.status, revert.body.code], [409, 'SSLWALL_E_ROLLOUT_STATE']);
    const a = await runHost(['rollout', 'abort', '--tier', tier, '--reason', 'changed my mind', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(a.code, 0, a.stderr);
    const aborted = await rolloutStatus(engine, tier, (s) => s.status === 'aborted', 'aborted');
    assert.match(aborted.reason, /changed my mind/);
    assert.deepEqual((await head()).rollout, before.rollout);
    // Once the rollout has ended, operators write again.
    const after = await engine.api<{ version: number }>('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'after the rollout' });
    assert.equal(after.status, 201, JSON.stringify(after.body));

    await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:100', bake: '500ms', analysis: { checkIntervalMs: 200 } });
    await rolloutStatus(engine, tier, (s) => s.status === 'completed', 'completed');
    assert.equal((await head()).rollout.mode, 'active');
    const u = await runHost(['rollout', 'undo', '--tier', tier, '--reason', 'roll back the change', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(u.code, 0, u.stderr);
    await rolloutStatus(engine, tier, (s) => s.status === 'undone', 'undone');
    assert.deepEqual((await head()).rollout, before.rollout);
  });

  test('agents that stop reporting fail the check and roll the tier back', async () => {
    const dying = await SimProc.start(etcd.endpoints, 'db', 20, keys, logDir, ['--die-percent', '25', '--die-after', '4', '--host-prefix', 'db-']);
    try {
      const put = await engine.api('PUT', '/api/tiers/db/config', { document: BASE, message: 'db tier' });
      assert.equal(put.status, 201);
      await dying.waitStats((s) => s.applied['1'] === 20, 15000, 'db agents on version 1');
      await engine.api('POST', '/api/tiers/db/rollout', { stages: 'active:100', bake: '60s', analysis: { checkIntervalMs: 250, failureLimit: 1 } });
      const s = await rolloutStatus(engine, 'db', (x) => x.status === 'aborted', 'rollback when agents vanish', 30000);
      assert.match(s.reason, /stopped reporting/);
    } finally {
      await dying.stop();
    }
  });
});

describe('leader failover mid-rollout: 3-member etcd, 2 engine replicas', () => {
  let cluster: EtcdCluster;
  let keys: Keys;
  let engines: EngineProc[] = [];
  let sim: SimProc;
  let logDir: string;
  const tier = 'edge';

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-failover-'));
    cluster = await startEtcdCluster(3);
    keys = makeKeys();
    engines = [await EngineProc.start(cluster.endpoints, keys, 'r1', logDir), await EngineProc.start(cluster.endpoints, keys, 'r2', logDir)];
    const put = await engines[0]!.api('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'first' });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    sim = await SimProc.start(cluster.endpoints, tier, 30, keys, logDir, ['--host-prefix', 'edge-']);
  });

  after(async () => {
    await sim?.stop();
    for (const e of engines) await e.stop();
    await cluster?.destroy();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  test('the rollout continues on the other replica: every stage written exactly once', async () => {
    const leader = await waitForValue('a leader', async () => {
      for (const e of engines) if (await e.isLeader()) return e;
      return undefined;
    });
    const follower = engines.find((e) => e !== leader)!;
    const start = await follower.api('POST', `/api/tiers/${tier}/rollout`, {
      stages: 'passive:100,active:20,active:60,active:100',
      bake: '1500ms',
      analysis: { checkIntervalMs: 250 },
    });
    assert.equal(start.status, 201, JSON.stringify(start.body));
    await rolloutStatus(follower, tier, (s) => s.stage === 1 && s.phase === 'baking', 'stage 2 baking');
    await leader.kill9();
    await cluster.kill(await cluster.leader());
    const killedAt = Date.now();
    const done = await rolloutStatus(follower, tier, (s) => s.status === 'completed', 'completion after failover', 60000);
    if (process.env.SSLWALL_TEST_VERBOSE) console.error(JSON.stringify({ killedAt: new Date(killedAt).toISOString(), events: done.events }, null, 1));
    const written = done.events.filter((e) => e.action === 'stage_written').map((e) => e.reason);
    assert.deepEqual(written, ['passive:100', 'active:20', 'active:60', 'active:100']);
    // The first call after losing an etcd member may fail over to another endpoint: retry briefly.
    const hist = await waitForValue(
      'the version history',
      async () => {
        const r = await follower.api<Array<{ message: string }>>('GET', `/api/tiers/${tier}/history`);
        return r.status === 200 ? r.body : undefined;
      },
      15000,
    );
    const stageWrites = hist.filter((h) => h.message.startsWith(`rollout ${done.id} stage`));
    assert.equal(stageWrites.length, 4, `one version per stage: ${hist.map((h) => h.message).join(' | ')}`);
    await waitForValue('the surviving replica to lead', async () => follower.isLeader(), 15000);
  });
});
