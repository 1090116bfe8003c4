// alarm_to_rollback_e2e_ms: errors raised in a rollout's cohort -> every agent of the tier back on
// the pre-rollout config, through a real Prometheus (1 s scrapes and rule evaluation) and a real
// Alertmanager posting to the engine (tools/lab/prometheus.ts startAlarmFleet: two agents with
// BPF in the kernel, etcd, the engine). Baseline, in the same runs: the same Alertmanager's
// notification of the same alert reaching a bare HTTP receiver, i.e. the time Prometheus and
// Alertmanager take by themselves; the ratio is what the engine and the agents add on top.
// Medians of RUNS runs; each waits until the previous alert has resolved (the engine holds none),
// since Alertmanager would not notify a still-firing alert again before repeat_interval.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { waitFor } from '../lab/proc.js';
import { startAlarmFleet } from '../lab/prometheus.js';
import type { Figure } from './agent.js';
import { median, round } from './stats.js';
import type { Bench, BenchContext } from './types.js';

const RUNS = 5;

/** An HTTP server taking Alertmanager's webhook calls; firing() resolves at the first firing one after `since`. */
async function bareReceiver(): Promise<{ url: string; firingAfter(since: number, timeoutMs: number): Promise<number>; close(): Promise<void> }> {
  const firings: number[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const at = Date.now();
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { status?: string };
      if (body.status === 'firing') firings.push(at);
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    async firingAfter(since, timeoutMs) {
      await waitFor('the bare receiver notified', () => firings.some((t) => t >= since), { timeoutMs });
      return firings.find((t) => t >= since)!;
    },
    close: () => new Promise((r) => server.close(() => r())),
  };
}

export const alarmBench: Bench = {
  name: 'alarm_e2e',
  produces: ['alarm_to_rollback_e2e_ms'],
  summary: 'errors in a cohort -> every agent rolled back, via real Prometheus + Alertmanager (baseline: Alertmanager -> a bare webhook)',
  async run(ctx: BenchContext): Promise<Figure[]> {
    const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-bench-alarm-'));
    const receiver = await bareReceiver();
    try {
      const fleet = await startAlarmFleet('bench-alarm', logDir, [{ name: 'bare', url: receiver.url }]);
      try {
        const e2e: number[] = [];
        const base: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          await waitFor(
            'the previous alert resolved',
            async () => (await fleet.engine.api<unknown[]>('GET', `/api/tiers/${fleet.tier}/alerts`)).body.length === 0,
            { timeoutMs: 60000 },
          );
          const active = await fleet.rolloutActive();
          const raised = Date.now();
          await fleet.raiseErrors();
          const [back, notified] = await Promise.all([fleet.rolledBackAt(active), receiver.firingAfter(raised, 20000)]);
          e2e.push(back - raised);
          base.push(notified - raised);
          ctx.progress(`run ${i + 1}/${RUNS}: rolled back in ${back - raised} ms; the bare receiver notified after ${notified - raised} ms`);
        }
        const v = median(e2e);
        const b = median(base);
        return [
          {
            bench: 'alarm_to_rollback_e2e_ms',
            value: round(v, 0),
            unit: 'ms',
            baseline: round(b, 0),
            ratio: round(v / b, 2),
            valueTarget: { op: '<=', value: 5000 },
            meaning: 'plaintext blocked in the cohort -> every agent back on the pre-rollout config (Prometheus, Alertmanager, engine, etcd, agents)',
          },
        ];
      } finally {
        await fleet.destroy();
      }
    } finally {
      await receiver.close();
      fs.rmSync(logDir, { recursive: true, force: true });
    }
  },
};
