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
import { runHost } from '../../tools/lab/agent-proc.js';
import { EngineProc } from '../../tools/lab/fleet.js';
import { waitFor } from '../../tools/lab/proc.js';
import { ALARM_RULE_NAME, type AlarmFleet, startAlarmFleet } from '../../tools/lab/prometheus.js';

interface Alert {
  key: string;
  alertname: string;
  labels: Record<string, string>;
  expiresInS: number;
}

describe('alarm end to end: Prometheus and Alertmanager roll the tier back', () => {
  let fleet: AlarmFleet;
  let engine: EngineProc;
  let logDir: string;
  let TIER: string;

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-alarm-test-'));
    fleet = await startAlarmFleet('alarm', logDir);
    engine = fleet.engine;
    TIER = fleet.tier;
  });

  after(async () => {
    await fleet?.destroy();
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  test('errors raised in the cohort: every agent of the tier is back on the pre-rollout config within 5 s', async () => {
    const active = await fleet.rolloutActive();
    const raised = Date.now();
    await fleet.raiseErrors();
    const ms = (await fleet.rolledBackAt(active)) - raised;
    console.log(`alarm_to_rollback_e2e_ms=${ms} (errors raised -> every agent applied the rolled-back config)`);
    const head = (await engine.api<{ version: number; config: { mode: string } }>('GET', `/api/tiers/${TIER}/config`)).body;
    assert.equal(head.config.mode, 'passive', 'the rolled-back head has the pre-rollout mode');
    const ro = (await engine.api<{ status: string; reason: string }>('GET', `/api/tiers/${TIER}/rollout`)).body;
    assert.equal(ro.status, 'aborted');
    assert.match(ro.reason, new RegExp(ALARM_RULE_NAME));
    for (const a of fleet.agents)
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
    const a = alerts.find((x) => x.alertname === ALARM_RULE_NAME);
    assert.ok(a, `the firing alert is held: ${list.stdout}`);
    assert.deepEqual(a.labels, { alertname: ALARM_RULE_NAME, severity: 'page', tier: TIER });
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
    const short = await EngineProc.start(fleet.etcd.endpoints, fleet.keys, 'short-ttl', logDir, { extra: ['--alert-ttl', '2s'] });
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
