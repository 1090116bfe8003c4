// The alarm path end to end, with nothing stood in for: two real agents (BPF in the kernel, in
// namespaces of their own) on a real etcd, a real engine, a real Prometheus scraping the agents'
// /metrics and a real Alertmanager posting to the engine with an alerts token. A rollout turns
// the tier active; plaintext traffic is then blocked, the blocked-flows counter grows, the alert
// fires, and every agent of the tier must be back on the pre-rollout config within 5 s of the
// traffic. Also: alerts expire with their lease, are listed and cleared (audited), and a webhook
// call without the alerts token is refused and stores nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { addUser } from '../../rollout/auth.js';
import { type AgentEnv, AgentProc, agentEnv, runHost, sslwall } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { EngineProc, type Keys, makeKeys } from '../../tools/lab/fleet.js';
import { createTestbed, type Side, type Testbed } from '../../tools/lab/netns.js';
import { plainClient, type SinkPeer, startSink } from '../../tools/lab/peers.js';
import { waitFor } from '../../tools/lab/proc.js';
import { type AlarmLab, BLOCKING_RULE, exposeToHost, startAlarmLab } from '../../tools/lab/prometheus.js';

const TIER = 'alarm';
const SINK_PORT = 9000;
const METRICS_PORT = 9464;
const BASE = { mode: 'passive', bypass: { ports: [22] }, starttls: { smtp: [25] } };

interface Alert {
  key: string;
  alertname: string;
  labels: Record<string, string>;
  expiresInS: number;
}

describe('alarm end to end: Prometheus and Alertmanager roll the tier back', () => {
  let tb: Testbed;
  let etcd: EtcdServer;
  let keys: Keys;
  let engine: EngineProc;
  let sink: SinkPeer;
  let lab: AlarmLab;
  let logDir: string;
  const agents: Array<{ side: Side; env: AgentEnv; agent: AgentProc }> = [];

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-alarm-test-'));
    tb = await createTestbed('alarm');
    etcd = await startEtcd();
    keys = makeKeys();
    engine = await EngineProc.start(etcd.endpoints, keys, 'a', logDir, { extra: ['--alert-ttl', '1h'] });
    const put = await engine.api('PUT', `/api/tiers/${TIER}/config`, { document: BASE, message: 'before the rollout' });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    const cgroup2 = await tb.mountCgroup2();
    const targets: Array<{ address: string; labels: Record<string, string> }> = [];
    for (const side of ['client', 'server'] as const) {
      const bridge = await EtcdBridge.start(tb, side, etcd.clientPort);
      const env = await agentEnv(tb, side, cgroup2);
      const agent = await AgentProc.start({ ...env, configFile: '' }, [
        '--etcd',
        bridge.url,
        '--tier',
        TIER,
        '--host-id',
        `alarm-${side}`,
        '--verify-key',
        keys.verifyKey,
        '--metrics-addr',
        `127.0.0.1:${METRICS_PORT}`,
      ]);
      agents.push({ side, env, agent });
      targets.push({ address: await exposeToHost(tb, side, METRICS_PORT), labels: { tier: TIER, host: `alarm-${side}` } });
    }
    sink = await startSink(tb, { port: SINK_PORT });
    const alertsTokenFile = path.join(logDir, 'token-alerts');
    lab = await startAlarmLab({
      targets,
      rule: { name: 'SslwallBlockingPlaintext', expr: BLOCKING_RULE, for: '0s', labels: { severity: 'page' } },
      receivers: [{ name: 'engine', url: `${engine.url}/api/alerts`, credentialsFile: alertsTokenFile }],
      repeatInterval: '1m',
    });
  });

  after(async () => {
    for (const a of agents) {
      await a.agent.stop();
      await sslwall(a.env, ['uninstall', '--bpffs', a.env.bpffs]);
    }
    await lab?.destroy();
    await sink?.stop();
    await engine?.stop();
    await etcd?.destroy();
    await tb?.destroy();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  test('errors raised in the cohort: every agent of the tier is back on the pre-rollout config within 5 s', async () => {
    const started = await engine.api<{ id: string }>('POST', `/api/tiers/${TIER}/rollout`, {
      stages: 'active:100',
      bake: '10m',
      // Only the alarm may roll back here: the engine's own blocked-flows check is out of the way.
      analysis: { maxBlockedPerMinute: 1e9, checkIntervalMs: 60000 },
    });
    assert.equal(started.status, 201, JSON.stringify(started.body));
    let active = 0;
    await waitFor(
      'both agents active under the rollout',
      () => {
        const v = agents.map((a) => a.agent.lines().find((l) => l.event === 'config_applied' && l.mode === 'active')?.tierVersion as number | undefined);
        if (v.some((x) => x === undefined)) return false;
        active = Math.max(...(v as number[]));
        return true;
      },
      { timeoutMs: 20000 },
    );
    // Prometheus must have scraped both agents before the errors, or the first scrape decides the time.
    await waitFor('Prometheus scraping both agents', async () => {
      const r = (await (await fetch(`${lab.prometheusUrl}/api/v1/query?query=${encodeURIComponent('sum(up)')}`)).json()) as {
        data: { result: Array<{ value: [number, string] }> };
      };
      return r.data.result[0]?.value[1] === '2';
    });

    const raised = Date.now();
    const client = await plainClient(tb, { port: SINK_PORT, maxMs: 2000 });
    assert.ok(client.failed, `the plaintext connection was not blocked in active mode: ${JSON.stringify(client)}`);
    const back = new Map<Side, number>();
    await waitFor(
      'every agent back on the config before the rollout',
      () => {
        for (const a of agents) {
          const l = a.agent.lines().find((x) => x.event === 'config_applied' && (x.tierVersion as number) > active);
          if (l) back.set(a.side, l.time as number);
        }
        return back.size === agents.length;
      },
      { timeoutMs: 20000 },
    );
    const ms = Math.max(...back.values()) - raised;
    console.log(`alarm_to_rollback_e2e_ms=${ms} (errors raised -> every agent applied the rolled-back config)`);
    const head = (await engine.api<{ version: number; config: { mode: string } }>('GET', `/api/tiers/${TIER}/config`)).body;
    assert.equal(head.config.mode, 'passive', 'the rolled-back head has the pre-rollout mode');
    const ro = (await engine.api<{ status: string; reason: string }>('GET', `/api/tiers/${TIER}/rollout`)).body;
    assert.equal(ro.status, 'aborted');
    assert.match(ro.reason, /SslwallBlockingPlaintext/);
    for (const a of agents)
      assert.equal(
        a.agent
          .lines()
          .filter((l) => l.event === 'config_applied')
          .at(-1)?.mode,
        'passive',
      );
    assert.ok(ms <= 5000, `errors raised to every agent back: ${ms} ms (bound 5 s)`);
  });

  test('the engine lists the alert with its whole label set and lease; an operator clears it, audited', async () => {
    const list = await runHost(['rollout', 'alerts', '--tier', TIER, '--json', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(list.code, 0, list.stderr);
    const alerts = JSON.parse(list.stdout) as Alert[];
    const a = alerts.find((x) => x.alertname === 'SslwallBlockingPlaintext');
    assert.ok(a, `the firing alert is held: ${list.stdout}`);
    assert.deepEqual(a.labels, { alertname: 'SslwallBlockingPlaintext', severity: 'page', tier: TIER });
    assert.match(a.key, /^[0-9a-f]{64}$/);
    assert.ok(a.expiresInS > 3500 && a.expiresInS <= 3600, `lease left ${a.expiresInS} s of --alert-ttl 1h`);
    const text = await runHost(['rollout', 'alerts', '--tier', TIER, '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.match(
      text.stdout,
      new RegExp(`${a.key}\\n  SslwallBlockingPlaintext  since .*  expires in \\d+ s\\n  alertname=SslwallBlockingPlaintext severity=page tier=${TIER}`),
    );
    const clear = await runHost(['rollout', 'alerts', '--tier', TIER, '--clear', a.key, '--json', '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.equal(clear.code, 0, clear.stderr);
    assert.deepEqual(JSON.parse(clear.stdout), { cleared: [a.key] });
    const audit = (await engine.api<Array<{ action: string; actor: string; alerts: string[] }>>('GET', `/api/tiers/${TIER}/audit`)).body;
    assert.deepEqual(
      audit.filter((e) => e.action === 'alerts_cleared').map((e) => [e.actor, e.alerts]),
      [['test', [a.key]]],
    );
    const again = await runHost(['rollout', 'alerts', '--tier', TIER, '--clear', a.key, '--engine', engine.url, '--token-file', engine.tokenFile]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /SSLWALL_E_NOT_FOUND/);
  });

  test('a firing alert expires with its lease unless repeated; a repeat renews it; resolved deletes it', async () => {
    // A replica of its own with a 2 s TTL, on the same etcd.
    const short = await EngineProc.start(etcd.endpoints, keys, 'short-ttl', logDir, { extra: ['--alert-ttl', '2s'] });
    try {
      const alert = (status: string) => ({
        version: '4',
        alerts: [{ status, labels: { alertname: 'Brief', tier: 'ttl', severity: 'page' }, fingerprint: 'f1' }],
      });
      const held = async () => (await short.api<Alert[]>('GET', '/api/tiers/ttl/alerts')).body;
      assert.equal((await short.api('POST', '/api/alerts', alert('firing'))).status, 200);
      const first = await held();
      assert.equal(first.length, 1);
      assert.ok(first[0]!.expiresInS <= 2 && first[0]!.expiresInS >= 0, `lease left ${first[0]!.expiresInS}`);
      await new Promise((r) => setTimeout(r, 1200));
      assert.equal((await short.api('POST', '/api/alerts', alert('firing'))).status, 200);
      await new Promise((r) => setTimeout(r, 1200));
      assert.equal((await held()).length, 1, 'the repeat renewed the lease: still held 2.4 s after the first');
      await waitFor('the alert gone with its lease', async () => (await held()).length === 0, { timeoutMs: 6000 });
      // Same alertname and fingerprint, another label: another alert, not an overwrite.
      await short.api('POST', '/api/alerts', alert('firing'));
      await short.api('POST', '/api/alerts', {
        alerts: [{ status: 'firing', labels: { alertname: 'Brief', tier: 'ttl', severity: 'ticket' }, fingerprint: 'f1' }],
      });
      assert.equal((await held()).length, 2);
      await short.api('POST', '/api/alerts', alert('resolved'));
      assert.deepEqual(
        (await held()).map((a) => a.labels.severity),
        ['ticket'],
      );
      const tooMany = await short.api<{ code: string }>('POST', '/api/alerts', {
        alerts: Array.from({ length: 101 }, (_, i) => ({ status: 'firing', labels: { alertname: `A${i}`, tier: 'ttl' } })),
      });
      assert.equal(tooMany.status, 400);
      assert.equal(tooMany.body.code, 'SSLWALL_E_CONFIG_INVALID');
      const cleared = await short.api<{ cleared: string[] }>('DELETE', '/api/tiers/ttl/alerts');
      assert.equal(cleared.body.cleared.length, 1);
      assert.deepEqual(await held(), []);
    } finally {
      await short.stop();
    }
  });

  test('an alert posted without the alerts token is refused (401; a viewer 403) and stores nothing', async () => {
    const viewer = addUser(engine.users, 'viewer', 'viewer');
    const fake = { alerts: [{ status: 'firing', labels: { alertname: 'Fake', tier: TIER } }] };
    const post = (token?: string) =>
      fetch(`${engine.url}/api/alerts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify(fake),
      });
    assert.equal((await post()).status, 401);
    assert.equal((await post('not-a-token')).status, 401);
    // The users file is re-read within about a second.
    await waitFor('the viewer known', async () => (await post(viewer)).status === 403, { timeoutMs: 5000 });
    const op = await post(engine.token);
    assert.equal(op.status, 403);
    const held = (await engine.api<Alert[]>('GET', `/api/tiers/${TIER}/alerts`)).body;
    assert.deepEqual(
      held.filter((a) => a.alertname === 'Fake'),
      [],
    );
  });
});
