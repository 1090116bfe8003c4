// The engine's bounds and its fencing, in process against real etcd and a simulated fleet (the
// agents' real watch and health code): cohort agents that vanish after a stage write roll it
// back; a replica whose wall clock is wrong neither ends a bake early nor misses a deadline; a
// tier whose Prometheus never answers holds up no other tier's alert rollback; a leader whose key
// changes steps down and its old fence writes nothing; an invalid head is reported and replaced;
// history is paged and pruned to its retention; an oversized body gets 413.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { startApi } from '../../rollout/api.js';
import { Engine, type EngineOptions } from '../../rollout/engine.js';
import { Signer } from '../../rollout/signing.js';
import { validateInput } from '../../rollout/store.js';
import { SslwallError } from '../../schemas/errors.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import type { RolloutState } from '../../schemas/rollout.js';
import { type EtcdServer, freePort, startEtcd } from '../../tools/lab/etcd.js';
import { type Keys, makeKeys, SimProc } from '../../tools/lab/fleet.js';
import { waitForValue } from '../../tools/lab/proc.js';

const BASE = validateInput({ config: { mode: 'passive' }, rollout: { mode: 'passive', percent: 100, otherwise: 'off', salt: 's1' } }, 'test');
const HOUR = 3_600_000;

describe('engine bounds and fencing (in process, real etcd)', () => {
  let etcd: EtcdServer;
  let keys: Keys;
  let logDir: string;
  const engines: Engine[] = [];
  const clients: Array<ReturnType<typeof createEtcdClient>> = [];
  const sims: SimProc[] = [];
  const apis: FastifyInstance[] = [];

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-engine-scale-'));
    etcd = await startEtcd();
    keys = makeKeys();
  });

  after(async () => {
    for (const a of apis) await a.close();
    for (const s of sims) await s.stop();
    for (const e of engines) await e.stop().catch(() => undefined);
    for (const c of clients) c.close();
    await etcd?.destroy();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  /** An engine replica in this process; its log goes to logDir/engine-<id>.log. */
  async function replica(id: string, opts: Partial<EngineOptions> = {}): Promise<Engine> {
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    clients.push(client);
    const log = pino({ level: 'info', base: { replica: id } }, pino.destination({ dest: path.join(logDir, `engine-${id}.log`), sync: true }));
    const e = new Engine({ client, prefix: '/sslwall/', signer: Signer.fromFile(keys.signingKey), id, log, leaseTtlS: 2, ...opts });
    engines.push(e);
    e.start();
    return e;
  }

  async function leading(e: Engine): Promise<void> {
    await waitForValue(`replica ${e.leadership.id} to lead`, async () => e.leadership.isLeader && e.health.ready, 15000);
  }

  async function state(e: Engine, tier: string): Promise<RolloutState | null> {
    return (await e.readState(tier))?.state ?? null;
  }

  async function waitState(e: Engine, tier: string, pred: (s: RolloutState) => boolean, what: string, timeoutMs = 30000): Promise<RolloutState> {
    let last: RolloutState | null = null;
    try {
      return await waitForValue(
        what,
        async () => {
          last = await state(e, tier);
          return last && pred(last) ? last : undefined;
        },
        timeoutMs,
      );
    } catch (err) {
      const s = last as RolloutState | null;
      throw new Error(`${(err as Error).message}; last state: ${JSON.stringify(s && { status: s.status, stage: s.stage, phase: s.phase, reason: s.reason })}`);
    }
  }

  async function tierWithAgents(e: Engine, tier: string, n: number): Promise<SimProc> {
    await e.store.write(tier, BASE, { author: 'test', message: 'first' });
    const sim = await SimProc.start(etcd.endpoints, tier, n, keys, logDir, ['--host-prefix', `${tier}-`]);
    sims.push(sim);
    await waitForValue(`${n} agents of ${tier} in the engine's health cache`, async () => e.health.tier(tier).length === n, 20000);
    return sim;
  }

  async function stopSim(sim: SimProc): Promise<void> {
    await sim.stop();
    sims.splice(sims.indexOf(sim), 1);
  }

  test('cohort agents vanishing after a stage write -> rollback', async () => {
    const e = await replica('vanish');
    await leading(e);
    const sim = await tierWithAgents(e, 'van', 8);
    await e.startRollout('van', {
      stages: [{ mode: 'active', percent: 100 }],
      bakeMs: 60_000,
      analysis: { checkIntervalMs: 250, applyDeadlineMs: 2000, failureLimit: 2 },
      by: 'test',
    });
    const written = await waitState(e, 'van', (s) => s.phase !== 'writing', 'the stage written');
    assert.equal(written.cohortAtWrite, 8, 'the cohort at the stage write is recorded');
    await stopSim(sim);
    const s = await waitState(e, 'van', (x) => x.status === 'aborted', 'a rollback after the cohort vanished', 20000);
    assert.match(s.reason, /no agent of (the|this) tier reports health|stopped reporting/);
    const head = await e.store.head('van');
    assert.deepEqual(head!.doc.rollout, BASE.rollout, 'the tier is back to its pre-rollout content');
    await e.stop();
  });

  test('a replica with a skewed clock neither ends a bake early nor misses an apply deadline', async (t) => {
    const a = await replica('clock-right');
    await leading(a);
    const sim = await tierWithAgents(a, 'skew', 4);
    await a.startRollout('skew', { stages: [{ mode: 'passive', percent: 100 }], bakeMs: 3000, analysis: { checkIntervalMs: 200 }, by: 'test' });
    await waitState(a, 'skew', (s) => s.phase === 'baking', 'baking on the replica with the right clock');
    // Hand over to a replica whose clock runs an hour ahead: by wall clocks the bake ended long ago.
    await a.stop();
    const ahead = await replica('clock-ahead', { clockOffsetMs: HOUR });
    await leading(ahead);
    const tookOver = Date.now();
    const done = await waitState(ahead, 'skew', (s) => s.status === 'completed', 'completion on the replica an hour ahead', 20000);
    const baked = Date.now() - tookOver;
    t.diagnostic(`bake 3000 ms, completed ${baked} ms after the replica an hour ahead took over`);
    assert.ok(baked >= 3000, `the new leader baked ${baked} ms of its own time before completing (bake 3000 ms): not cut short`);
    assert.equal(done.events.at(-1)!.action, 'completed');

    // An apply deadline on a replica whose clock runs an hour behind: by wall clocks it is hours away.
    await stopSim(sim);
    await waitForValue('the agents gone from the health cache', async () => ahead.health.tier('skew').length === 0, 15000);
    await ahead.startRollout('skew', {
      stages: [{ mode: 'active', percent: 100 }],
      bakeMs: 60_000,
      analysis: { checkIntervalMs: 200, applyDeadlineMs: 2000 },
      by: 'test',
    });
    await waitState(ahead, 'skew', (s) => s.phase === 'applying', 'the stage written, applying');
    await ahead.stop();
    const behind = await replica('clock-behind', { clockOffsetMs: -HOUR });
    await leading(behind);
    const behindLeads = Date.now();
    const s = await waitState(behind, 'skew', (x) => x.status === 'aborted', 'the deadline reached on the replica an hour behind', 15000);
    t.diagnostic(`apply deadline 2000 ms, rolled back ${Date.now() - behindLeads} ms after the replica an hour behind took over`);
    assert.match(s.reason, /within 2000 ms/);
    const [last] = await behind.store.history('skew', { limit: 1 });
    assert.equal(last!.author, 'engine:clock-behind', 'the rollback was written by the replica with the slow clock');
    await behind.stop();
  });

  test("a tier whose Prometheus never answers holds up no other tier's alert rollback", async (t) => {
    // A broken peer: accepts the query and never answers.
    const hung = new Set<http.ServerResponse>();
    const prom = http.createServer((_req, res) => void hung.add(res));
    await new Promise<void>((r) => prom.listen(0, '127.0.0.1', () => r()));
    const promUrl = `http://127.0.0.1:${(prom.address() as { port: number }).port}`;
    try {
      const e = await replica('isolation');
      await leading(e);
      const port = await freePort();
      const names = { hosts: new Set([`127.0.0.1:${port}`]), origins: new Set([`http://127.0.0.1:${port}`]) };
      const api = await startApi(e, `127.0.0.1:${port}`, pino({ level: 'silent' }), { users: null, names }, { alertTtlS: 3600 });
      apis.push(api);
      await tierWithAgents(e, 'slowprom', 3);
      await tierWithAgents(e, 'fast', 3);
      await e.startRollout('slowprom', {
        stages: [{ mode: 'passive', percent: 100 }],
        bakeMs: 60_000,
        analysis: { checkIntervalMs: 200, prometheus: { url: promUrl, queries: [{ name: 'errors', query: 'up', max: 1 }] } },
        by: 'test',
      });
      await e.startRollout('fast', { stages: [{ mode: 'active', percent: 100 }], bakeMs: 60_000, analysis: { checkIntervalMs: 200 }, by: 'test' });
      await waitState(e, 'fast', (s) => s.phase === 'baking', 'fast baking');
      await waitState(e, 'slowprom', (s) => s.phase === 'baking', 'slowprom baking');
      await waitForValue('a query waiting on the hung Prometheus', async () => hung.size > 0, 10000);
      const sent = Date.now();
      const r = await fetch(`http://127.0.0.1:${port}/api/alerts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          alerts: [{ status: 'firing', labels: { alertname: 'FastBurning', tier: 'fast' }, startsAt: new Date().toISOString(), fingerprint: 'f1' }],
        }),
      });
      assert.equal(r.status, 200, await r.text());
      const s = await waitState(e, 'fast', (x) => x.status === 'aborted', 'the fast tier rolled back', 5000);
      const took = Date.now() - sent;
      t.diagnostic(`alert to rollback of the other tier: ${took} ms while a check waited on the hung Prometheus`);
      assert.match(s.reason, /FastBurning/);
      assert.ok(took < 2000, `the fast tier rolled back ${took} ms after its alert while the other tier's check hung (bound 2000 ms)`);
      assert.equal((await state(e, 'slowprom'))!.status, 'running', 'the hung tier is still waiting on its check');

      // Limits: an oversized body is refused with 413 in the API's usual error shape.
      const big = await fetch(`http://127.0.0.1:${port}/api/tiers/fast/config`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ document: { mode: 'passive', pad: 'x'.repeat(2 << 20) } }),
      });
      assert.equal(big.status, 413);
      const body = (await big.json()) as { code: string; message: string };
      assert.deepEqual(Object.keys(body).sort(), ['code', 'message']);
      assert.equal(body.code, 'SSLWALL_E_TOO_LARGE');
      assert.equal(api.server.maxConnections, 512, 'the server bounds its connections');
      await e.stop();
    } finally {
      for (const res of hung) res.destroy();
      await new Promise((r) => prom.close(() => r(undefined)));
    }
  });

  test('a leader whose key is deleted steps down at once, and a write with the old fence is refused', async (t) => {
    const e = await replica('fenced');
    await leading(e);
    const fence = e.leadership.fence()!;
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    clients.push(client);
    const deleted = Date.now();
    await client.delete().key(e.keys.leader);
    await waitForValue('the replica to step down', async () => !e.leadership.isLeader, 2000);
    t.diagnostic(`stepped down ${Date.now() - deleted} ms after the leader key was deleted`);
    assert.ok(Date.now() - deleted < 1000, `stepped down ${Date.now() - deleted} ms after its key was deleted (not at lease loss)`);
    await assert.rejects(
      e.store.write('fenced', BASE, { author: 'engine:fenced', message: 'stale', fence }),
      (err: unknown) => err instanceof SslwallError && err.code === 'SSLWALL_E_NOT_LEADER',
    );
    assert.equal(await e.store.headState('fenced').then((h) => h.modRevision), 0, 'nothing was written');
    await e.stop();
  });

  test('an invalid head is reported and replaced by a rollback or an operator write', async () => {
    const e = await replica('heads');
    await leading(e);
    await tierWithAgents(e, 'broken', 3);
    await e.startRollout('broken', { stages: [{ mode: 'active', percent: 100 }], bakeMs: 60_000, analysis: { checkIntervalMs: 200 }, by: 'test' });
    await waitState(e, 'broken', (s) => s.phase === 'baking', 'baking');
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    clients.push(client);
    await client.put(e.keys.tierConfig('broken')).value('{"not":"a tier document"');
    await assert.rejects(e.store.head('broken'), (err: unknown) => err instanceof SslwallError && err.code === 'SSLWALL_E_HEAD_INVALID');
    await e.act('broken', 'abort', 'head corrupted', 'test');
    const s = await waitState(e, 'broken', (x) => x.status === 'aborted', 'the rollback written over the invalid head', 10000);
    assert.match(s.reason, /head corrupted/);
    assert.deepEqual((await e.store.head('broken'))!.doc.rollout, BASE.rollout);
    assert.match(fs.readFileSync(path.join(logDir, 'engine-heads.log'), 'utf8'), /"event":"head_invalid"/);
    // And by an operator's write, once no rollout runs.
    await client.put(e.keys.tierConfig('broken')).value('[]');
    const rec = await e.store.write('broken', BASE, { author: 'test', message: 'replace the broken head' });
    assert.equal((await e.store.head('broken'))!.doc.version, rec.version);
    await e.stop();
  });

  test('history is paged, and pruned to its retention keeping the head and the rollout baseline', async () => {
    const e = await replica('history', { historyKeep: 5 });
    await leading(e);
    await e.store.write('hist', BASE, { author: 'test', message: 'v1' });
    await e.store.write('hist', BASE, { author: 'test', message: 'v2' });
    await e.startRollout('hist', {
      stages: [{ mode: 'passive', percent: 100 }],
      bakeMs: 0,
      analysis: { checkIntervalMs: 200, applyDeadlineMs: 1000 },
      by: 'test',
    });
    const done = await waitState(e, 'hist', (s) => s.status !== 'running', 'the rollout to end', 20000);
    assert.equal(done.baselineVersion, 2);
    for (let i = 0; i < 10; i++) await e.store.write('hist', BASE, { author: 'test', message: `more ${i}` });
    const head = (await e.store.head('hist'))!.doc.version;
    const page = await e.store.history('hist', { limit: 3 });
    assert.deepEqual(
      page.map((r) => r.version),
      [head - 2, head - 1, head],
      'the newest page, oldest first',
    );
    const older = await e.store.history('hist', { limit: 3, before: page[0]!.version });
    assert.deepEqual(
      older.map((r) => r.version),
      [head - 5, head - 4, head - 3],
    );
    await e.pruneNow();
    const kept = (await e.store.history('hist', { limit: 100 })).map((r) => r.version);
    assert.deepEqual(kept, [2, head - 4, head - 3, head - 2, head - 1, head], 'the newest 5 and the rollout baseline (2)');
    await e.stop();
  });
  test("an operator's action that meets another write of the rollout state is judged again on it; a conflict that keeps coming is the operator's", async () => {
    // Not started: nothing steps this rollout but the test, which writes the state between the
    // action's read and its write, as the leader's own step does.
    const client = createEtcdClient({ endpoints: etcd.endpoints });
    clients.push(client);
    const e = new Engine({ client, prefix: '/sslwall/', signer: Signer.fromFile(keys.signingKey), id: 'act', log: pino({ level: 'silent' }) });
    await e.store.write('act', BASE, { author: 'test', message: 'first' });
    await e.startRollout('act', { stages: [{ mode: 'passive', percent: 100 }], bakeMs: 3_600_000, by: 'test' });
    const casPut = e.store.casPut.bind(e.store);
    let interleaved = 0;
    let interfere = 2;
    e.store.casPut = async (key, mod, value, audit, opts) => {
      if (interfere > 0) {
        interfere--;
        interleaved++;
        await client.put(key).value((await client.get(key).string())!); // the same state, a newer revision
      }
      return casPut(key, mod, value, audit, opts);
    };
    const paused = await e.act('act', 'pause', 'look', 'alice');
    assert.equal(interleaved, 2, 'two writes came between a read and its write');
    assert.equal(paused.status, 'paused');
    assert.equal((await e.readState('act'))?.state.status, 'paused', 'the pause is what etcd holds');
    interfere = Number.POSITIVE_INFINITY;
    await assert.rejects(e.act('act', 'resume', 'go on', 'alice'), (err: unknown) => err instanceof SslwallError && err.code === 'SSLWALL_E_CONFLICT');
    assert.equal((await e.readState('act'))?.state.status, 'paused', 'a refused action wrote nothing');
  });
});
