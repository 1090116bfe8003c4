// Rollout notifications end to end: a real engine (sslwall engine --notify-url) with simulated
// agents on a real etcd posts each transition of a rollout, then its rollback, to a webhook
// receiver (a real HTTP server standing in for the chat service), filtered by severity.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Notification } from '../../rollout/notify.js';
import { runHost } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EngineProc, type Keys, makeKeys, SimProc } from '../../tools/lab/fleet.js';
import { waitFor } from '../../tools/lab/proc.js';

const tier = 'web';

describe('rollout notifications to a webhook', () => {
  let etcd: EtcdServer;
  let keys: Keys;
  let logDir: string;
  let receiver: http.Server;
  let hook: string;
  const received: Notification[] = [];
  const engines: EngineProc[] = [];
  let sim: SimProc | undefined;

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-notify-test-'));
    receiver = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        received.push(JSON.parse(body) as Notification);
        res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/services/T000/B000/xyz`;
    etcd = await startEtcd();
    keys = makeKeys();
  });

  after(async () => {
    await sim?.stop();
    for (const e of engines) await e.stop();
    await etcd?.destroy();
    receiver?.close();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  test('each transition at or above the severity is posted, in order; a rollback is critical', async () => {
    const engine = await EngineProc.start(etcd.endpoints, keys, 'n', logDir, { extra: ['--notify-url', hook, '--notify-severity', 'info'] });
    engines.push(engine);
    const put = await engine.api('PUT', `/api/tiers/${tier}/config`, { document: { mode: 'passive', bypass: { ports: [22] } }, message: 'first' });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    sim = await SimProc.start(etcd.endpoints, tier, 5, keys, logDir);
    await sim.waitStats((s) => s.applied['1'] === 5, 15000, 'agents on version 1');

    const start = await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'passive:100', bake: '1s', analysis: { checkIntervalMs: 250 } });
    assert.equal(start.status, 201, JSON.stringify(start.body));
    await waitFor('completed posted', async () => received.some((m) => m.sslwall.action === 'completed'), { timeoutMs: 20000 });
    const actions = received.map((m) => m.sslwall.action);
    assert.deepEqual(actions, ['stage_written', 'applied', 'completed'], JSON.stringify(received));
    assert.ok(
      received.every((m) => m.sslwall.tier === tier && m.sslwall.severity === 'info' && m.text.includes(`sslwall tier *${tier}*`)),
      JSON.stringify(received[0]),
    );

    received.length = 0;
    await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:100', bake: '60s', analysis: { checkIntervalMs: 250 } });
    await waitFor('baking', async () => (await engine.api<{ phase: string }>('GET', `/api/tiers/${tier}/rollout`)).body.phase === 'baking', {
      timeoutMs: 20000,
    });
    await engine.api('POST', `/api/tiers/${tier}/rollout/abort`, { reason: 'stop it' });
    await waitFor('rolled_back posted', async () => received.some((m) => m.sslwall.action === 'rolled_back'), { timeoutMs: 20000 });
    const rb = received.find((m) => m.sslwall.action === 'rolled_back')!;
    assert.equal(rb.sslwall.severity, 'critical');
    assert.match(rb.text, /^🚨 sslwall tier \*web\*: rolled back — aborted by test: stop it$/);
    await engine.stop();
    engines.pop();
  });

  test('--notify-severity critical posts rollbacks only; a bad severity is a usage error', async () => {
    received.length = 0;
    const engine = await EngineProc.start(etcd.endpoints, keys, 'c', logDir, { extra: ['--notify-url', hook, '--notify-severity', 'critical'] });
    engines.push(engine);
    await engine.api('POST', `/api/tiers/${tier}/rollout`, { stages: 'active:100', bake: '60s', analysis: { checkIntervalMs: 250 } });
    await waitFor('baking', async () => (await engine.api<{ phase: string }>('GET', `/api/tiers/${tier}/rollout`)).body.phase === 'baking', {
      timeoutMs: 20000,
    });
    await engine.api('POST', `/api/tiers/${tier}/rollout/abort`, { reason: 'again' });
    await waitFor('rolled_back posted', async () => received.some((m) => m.sslwall.action === 'rolled_back'), { timeoutMs: 20000 });
    assert.deepEqual(
      received.map((m) => m.sslwall.action),
      ['rolled_back'],
    );
    const metrics = await (await fetch(`${engine.url}/metrics`)).text();
    assert.match(metrics, /sslwall_engine_notifications_total\{result="sent"\} 1/);
    const bad = await runHost([
      'engine',
      '--etcd',
      etcd.endpoints[0]!,
      '--signing-key',
      keys.signingKey,
      '--insecure',
      '--notify-url',
      hook,
      '--notify-severity',
      'loud',
    ]);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /--notify-severity must be one of info, warning, critical/);
  });
});
