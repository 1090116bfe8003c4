// Rollout notifications (rollout/notify.ts) to a webhook receiver on a real HTTP server: the
// severity filter, Slack-compatible bodies in order, a retry after a 500, no retry after a 404,
// and a full queue dropping the oldest.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { type Notification, Notifier } from '../../rollout/notify.js';

let server: http.Server;
let url: string;
const received: Notification[] = [];
/** Status codes to answer the next requests with (then 200). */
const answers: number[] = [];

before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const status = answers.shift() ?? 200;
      if (status === 200) {
        assert.equal(req.headers['content-type'], 'application/json');
        received.push(JSON.parse(body) as Notification);
      }
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
});
after(() => server.close());

const log = pino({ level: 'silent' });
const count = async (n: Notifier, result: string) => (await n.sent.get()).values.find((v) => v.labels.result === result)?.value ?? 0;

test('only transitions at or above the severity are sent, in order, as Slack-compatible JSON', async () => {
  received.length = 0;
  const n = new Notifier({ url, minSeverity: 'warning', link: 'https://engine.example/' }, log);
  n.notify('web', 'stage_written', 'active:5');
  n.notify('web', 'check_failed', 'blocked_rate: 12 blocked flows/min');
  n.notify('web', 'check_passed', 'checks pass');
  n.notify('web', 'rolled_back', 'alert firing for the tier: SslwallBlockedFlowsSpike');
  await n.flush();
  assert.deepEqual(
    received.map((m) => [m.sslwall.action, m.sslwall.severity]),
    [
      ['check_failed', 'warning'],
      ['rolled_back', 'critical'],
    ],
  );
  assert.equal(received[1]!.text, '🚨 sslwall tier *web*: rolled back — alert firing for the tier: SslwallBlockedFlowsSpike (https://engine.example/)');
  assert.equal(received[1]!.sslwall.tier, 'web');
  assert.equal(await count(n, 'sent'), 2);
});

test('a 500 is tried again; a 404 is not, and is counted as failed', async () => {
  received.length = 0;
  const n = new Notifier({ url, minSeverity: 'info', attempts: 3 }, log);
  answers.push(500, 503);
  n.notify('db', 'paused', 'missing data');
  await n.flush();
  assert.equal(received.length, 1, 'delivered at the third attempt');
  answers.push(404);
  n.notify('db', 'advanced', 'bake ended healthy');
  await n.flush();
  assert.equal(received.length, 1, 'a 404 is not retried');
  assert.equal(answers.length, 0);
  assert.deepEqual([await count(n, 'sent'), await count(n, 'failed')], [1, 1]);
});

test('an unreachable receiver never holds up the caller; a full queue drops the oldest', async () => {
  const n = new Notifier({ url: 'http://127.0.0.1:9/nobody', minSeverity: 'info', attempts: 1, timeoutMs: 500, queueMax: 3 }, log);
  const t0 = performance.now();
  for (let i = 0; i < 10; i++) n.notify('web', 'advanced', `stage ${i}`);
  assert.ok(performance.now() - t0 < 50, 'notify returns at once');
  await n.flush();
  // The first went out at once (failed); of the nine queued behind it, six were dropped.
  assert.deepEqual([await count(n, 'failed'), await count(n, 'dropped')], [4, 6]);
});
