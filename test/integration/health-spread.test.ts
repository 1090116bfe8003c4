// The health reporter of agent/health.ts on a real etcd (Debian's binary, started by the test):
// its first write goes at once, and every later one waits a random time up to spreadMs after the
// nudge that asked for it (so a tier's reports of a change do not reach etcd together); spreadMs 0
// writes at once.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { Etcd3Transport, etcdBreaker } from '../../agent/etcd-client.js';
import { healthDocument } from '../../agent/etcd-source.js';
import { DEFAULT_HEALTH, HealthReporter } from '../../agent/health.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { HealthSchema } from '../../schemas/tier.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';

const keys = etcdKeys('/sslwall/');
const quiet = pino({ level: 'silent' });

/** A host's health document, its violation count standing for whatever changed. */
function healthOf(host: string, violations: number) {
  return healthDocument({
    hostId: host,
    tier: 'web',
    agentVersion: 'test',
    applied: null,
    applyLatencyMs: null,
    appliedAt: null,
    counters: { violationsReported: violations, violationsBlocked: 0, remoteViolationsReported: 0, remoteViolationsBlocked: 0, flows: 0, evictions: 0 },
    connected: true,
    watchRevision: 1,
    lastError: null,
    features: {},
    warnings: [],
  });
}

/** Nudges `rounds` times, each after the previous write landed; the delay from nudge to landed write, ms. */
async function nudgeDelays(etcd: EtcdServer, host: string, spreadMs: number, rounds: number): Promise<{ first: number; later: number[] }> {
  const transport = new Etcd3Transport({ endpoints: etcd.endpoints });
  const { breaker, guard } = etcdBreaker();
  let landed: (() => void) | null = null;
  let changes = 0;
  const reporter = new HealthReporter(transport, guard, keys.health('web', host), quiet, { ...DEFAULT_HEALTH, spreadMs }, () => landed?.());
  const doc = () => healthOf(host, changes);
  const timeOne = async (): Promise<number> => {
    const done = new Promise<void>((r) => (landed = r));
    const t0 = performance.now();
    changes++;
    reporter.nudge();
    await done;
    return performance.now() - t0;
  };
  try {
    reporter.start(doc);
    await reporter.whenLeased;
    const first = await timeOne();
    const later: number[] = [];
    for (let i = 0; i < rounds; i++) later.push(await timeOne());
    return { first, later };
  } finally {
    await reporter.stop(true);
    breaker.shutdown();
    transport.close();
  }
}

describe('health writes spread over time', () => {
  let etcd: EtcdServer;
  before(async () => {
    etcd = await startEtcd();
  });
  after(async () => {
    await etcd?.destroy();
  });

  test('the first write goes at once; each later one waits a random time up to spreadMs', async () => {
    const spreadMs = 600;
    const { first, later } = await nudgeDelays(etcd, 'spread-1', spreadMs, 16);
    assert.ok(first < 300, `the first write took ${first.toFixed(0)} ms: it must not wait for the spread`);
    const text = later.map((d) => d.toFixed(0)).join(', ');
    // Up to spreadMs, plus a put's round trip on a loaded 2-CPU machine.
    for (const d of later) assert.ok(d <= spreadMs + 400, `a write waited ${d.toFixed(0)} ms, more than the spread of ${spreadMs} ms allows (${text})`);
    // Drawn at random over the whole spread: 16 uniform draws all within 200 ms of each other has a chance under 1e-5.
    const range = Math.max(...later) - Math.min(...later);
    assert.ok(range > 200, `the writes' delays are not spread (${text})`);
  });

  test('spreadMs 0: every write at once', async () => {
    const { first, later } = await nudgeDelays(etcd, 'spread-0', 0, 8);
    for (const d of [first, ...later]) assert.ok(d < 300, `a write waited ${d.toFixed(0)} ms with no spread (${later.map((x) => x.toFixed(0)).join(', ')})`);
  });

  test('reasons within the spread make one write, of the document as it is when written', async () => {
    const transport = new Etcd3Transport({ endpoints: etcd.endpoints });
    const { breaker, guard } = etcdBreaker();
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    let n = 0;
    let landed!: () => void;
    let wrote = new Promise<void>((r) => (landed = r));
    const reporter = new HealthReporter(transport, guard, keys.health('web', 'spread-doc'), quiet, { ...DEFAULT_HEALTH, spreadMs: 300 }, () => landed());
    const doc = () => healthOf('spread-doc', n);
    try {
      reporter.start(doc);
      await reporter.whenLeased;
      reporter.nudge();
      await wrote;
      wrote = new Promise<void>((r) => (landed = r));
      // Three reasons within the spread become one write, made with the latest facts.
      n = 3;
      for (let i = 0; i < 3; i++) reporter.nudge();
      await wrote;
      const stored = HealthSchema.parse(JSON.parse((await client.get(keys.health('web', 'spread-doc')).string())!));
      assert.equal(stored.counters.violationsReported, 3);
      assert.equal(reporter.writes, 2);
    } finally {
      await reporter.stop(true);
      breaker.shutdown();
      transport.close();
      client.close();
    }
  });
});
