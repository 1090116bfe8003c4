// The checks a baking stage runs (rollout/checks.ts), on health, alerts and query values given here.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type CheckInputs, DETAIL_MAX, runChecks } from '../../rollout/checks.js';
import type { CheckResult } from '../../schemas/rollout.js';
import { HealthSchema } from '../../schemas/tier.js';
import { agent, agents, hostsWhere, iso, rollout, T0 } from './rollout-fixtures.js';

/** Health counters with n blocked violations, `remote` of them from remote peers. */
function counts(n: number, remote = 0) {
  return { violationsReported: 0, violationsBlocked: n, remoteViolationsReported: 0, remoteViolationsBlocked: remote, flows: 0, evictions: 0 };
}

const noProm: CheckInputs['promQuery'] = async () => {
  throw new Error('no PromQL query is configured in this test');
};

async function check(input: Partial<CheckInputs>): Promise<{ results: CheckResult[]; blocked: { at: number; sum: number } }> {
  return runChecks({ state: rollout(), agents: agents(3), alerts: [], previousBlocked: null, now: T0 + 10_000, promQuery: noProm, ...input });
}

async function result(name: string, input: Partial<CheckInputs>): Promise<CheckResult> {
  const { results } = await check(input);
  const r = results.find((c) => c.name === name);
  assert.ok(r, `no ${name} check among ${results.map((c) => c.name).join(', ')}`);
  return r;
}

test('all well: every check passes', async () => {
  const { results } = await check({});
  assert.deepEqual(
    results.map((r) => [r.name, r.status]),
    [
      ['agents', 'pass'],
      ['blocked_rate', 'pass'],
      ['alerts', 'pass'],
    ],
  );
  assert.equal(results[0]!.detail, '3 cohort agents on version 7, 3 agents reporting');
});

test('agents: no agent reporting fails (counts toward the failure limit: a rollback, never a pause that waits forever)', async () => {
  assert.deepEqual(await result('agents', { agents: [], state: rollout({ cohortAtWrite: 3 }) }), {
    name: 'agents',
    status: 'fail',
    detail: 'no agent of this tier reports health (3 cohort agents at the stage write)',
  });
});

test('agents: cohort agents that vanish after the stage write fail beyond maxMissingAgents', async () => {
  const state = rollout({ cohortAtWrite: 5 }, { maxMissingAgents: 1 });
  assert.equal((await result('agents', { state, agents: agents(4) })).status, 'pass');
  const r = await result('agents', { state, agents: agents(3) });
  assert.equal(r.status, 'fail');
  assert.match(r.detail, /2 cohort agents stopped reporting after the stage was written \(3 of 5\)/);
});

test('agents: a cohort agent that has not applied the stage version fails', async () => {
  const r = await result('agents', { agents: [agent('h0'), agent('h1', { configVersion: 6 })] });
  assert.equal(r.status, 'fail');
  assert.equal(r.detail, '1 cohort agents have not applied version 7 (e.g. h1)');
});

test('agents: agents outside the cohort may lag and err', async () => {
  const state = rollout({ stages: [{ mode: 'active', percent: 30 }] });
  const [inside] = hostsWhere(state.salt, 30, true, 1);
  const outside = hostsWhere(state.salt, 30, false, 2);
  const err = { code: 'SSLWALL_E_BPF', message: 'x', revision: null, at: iso(T0) };
  const r = await result('agents', { state, agents: [agent(inside!), agent(outside[0]!, { configVersion: 3 }), agent(outside[1]!, { lastError: err })] });
  assert.equal(r.status, 'pass', r.detail);
  assert.equal(r.detail, '1 cohort agents on version 7, 3 agents reporting');
});

test('agents: erroring cohort agents fail beyond maxErroringAgents', async () => {
  const err = { code: 'SSLWALL_E_BPF', message: 'map full', revision: null, at: iso(T0) };
  const two = [agent('h0', { lastError: err }), agent('h1', { lastError: err }), agent('h2')];
  assert.equal((await result('agents', { agents: two, state: rollout({}, { maxErroringAgents: 2 }) })).status, 'pass');
  const r = await result('agents', { agents: two, state: rollout({}, { maxErroringAgents: 1 }) });
  assert.equal(r.status, 'fail');
  assert.equal(r.detail, '2 cohort agents report errors (e.g. h0: SSLWALL_E_BPF)');
});

test('agents: agents gone since the start fail beyond maxMissingAgents', async () => {
  assert.equal((await result('agents', { state: rollout({ agentsAtStart: 4 }, { maxMissingAgents: 1 }) })).status, 'pass');
  const r = await result('agents', { state: rollout({ agentsAtStart: 5 }, { maxMissingAgents: 1 }) });
  assert.equal(r.status, 'fail');
  assert.equal(r.detail, '2 agents stopped reporting (3 of 5)');
});

test('agents: every problem is named in one failure', async () => {
  const r = await result('agents', { state: rollout({ agentsAtStart: 3 }), agents: [agent('h0', { configVersion: 6 })] });
  assert.equal(r.detail, '1 cohort agents have not applied version 7 (e.g. h0); 2 agents stopped reporting (1 of 3)');
});

test('blocked_rate: the first sample passes and is returned for the next check', async () => {
  const { results, blocked } = await check({ agents: agents(2, { counters: counts(50) }) });
  assert.deepEqual(results[1], {
    name: 'blocked_rate',
    status: 'pass',
    detail: "first sample: 100 blocked flows of the cohort's own clients so far (0 from remote peers not counted)",
  });
  assert.deepEqual(blocked, { at: T0 + 10_000, sum: 100 });
});

test('blocked_rate: blocked flows per minute in the cohort against maxBlockedPerMinute', async () => {
  const counters = (n: number) => ({ counters: counts(n) });
  // 30 s since the last sample: 20 more blocked flows is 40 a minute.
  const input = { agents: agents(2, counters(60)), previousBlocked: { at: T0 - 20_000, sum: 100 }, now: T0 + 10_000 };
  const ok = await result('blocked_rate', { ...input, state: rollout({}, { maxBlockedPerMinute: 40 }) });
  assert.deepEqual(ok, {
    name: 'blocked_rate',
    status: 'pass',
    detail: "40.0 blocked flows/min of the cohort's own clients (max 40; 0 blocked from remote peers not counted)",
  });
  assert.equal((await result('blocked_rate', { ...input, state: rollout({}, { maxBlockedPerMinute: 39 }) })).status, 'fail');
});

test('blocked_rate: a counter that went down (an agent restarted) is no negative rate', async () => {
  const r = await result('blocked_rate', { agents: agents(1), previousBlocked: { at: T0, sum: 500 } });
  assert.equal(r.detail, "0.0 blocked flows/min of the cohort's own clients (max 60; 0 blocked from remote peers not counted)");
});

test("blocked_rate: violations of remote peers on the cohort's listening ports are not counted against it", async () => {
  // 30 s since the last sample of 100 own-client blocks; each of 2 agents now has 1030 blocked,
  // 960 of them from remote peers (a scanner): 140 own-client blocks, 40 more, 80 a minute.
  const input = { agents: agents(2, { counters: counts(1030, 960) }), previousBlocked: { at: T0 - 20_000, sum: 100 }, now: T0 + 10_000 };
  const { results, blocked } = await check({ ...input, state: rollout({}, { maxBlockedPerMinute: 80 }) });
  assert.deepEqual(results[1], {
    name: 'blocked_rate',
    status: 'pass',
    detail: "80.0 blocked flows/min of the cohort's own clients (max 80; 1920 blocked from remote peers not counted)",
  });
  assert.deepEqual(blocked, { at: T0 + 10_000, sum: 140 }, 'the sum carried to the next check is of own clients only');
  assert.equal((await result('blocked_rate', { ...input, state: rollout({}, { maxBlockedPerMinute: 79 }) })).status, 'fail', 'own clients still count');
});

test('blocked_rate: health from an agent that predates the remote counters parses with them at 0', () => {
  const { remoteViolationsReported, remoteViolationsBlocked, ...older } = agent('h0').counters;
  const h = HealthSchema.parse({ ...agent('h0'), counters: older, warnings: undefined });
  assert.equal(remoteViolationsReported + remoteViolationsBlocked, 0);
  assert.deepEqual([h.counters.remoteViolationsReported, h.counters.remoteViolationsBlocked, h.warnings], [0, 0, []]);
});

test('alerts: firing alerts fail, resolved ones do not', async () => {
  const now = T0 + 10_000;
  const alerts = [
    { alertname: 'NoEnd', fingerprint: 'a', startsAt: iso(T0) },
    { alertname: 'ZeroEnd', fingerprint: 'b', startsAt: iso(T0), endsAt: '0001-01-01T00:00:00Z' },
    { alertname: 'EndsLater', fingerprint: 'c', startsAt: iso(T0), endsAt: iso(now + 1) },
    { alertname: 'Resolved', fingerprint: 'd', startsAt: iso(T0), endsAt: iso(now) },
  ];
  assert.deepEqual(await result('alerts', { alerts, now }), { name: 'alerts', status: 'fail', detail: 'alerts firing: NoEnd, ZeroEnd, EndsLater' });
  assert.deepEqual(await result('alerts', { alerts: alerts.slice(3), now }), { name: 'alerts', status: 'pass', detail: 'no alert firing for the tier' });
});

test('prometheus: each query is held to its min and max, missing data is inconclusive', async () => {
  const queries = [
    { name: 'errors', query: 'err_rate', max: 0.01 },
    { name: 'latency', query: 'p99', min: 0.1, max: 0.5 },
    { name: 'floor', query: 'up', min: 1 },
  ];
  const state = rollout({}, { prometheus: { url: 'http://prom.invalid:9090', queries } });
  const run = async (values: Record<string, number | null | Error>) => {
    const asked: string[] = [];
    const { results } = await check({
      state,
      promQuery: async (url, q) => {
        asked.push(`${url} ${q}`);
        const v = values[q]!;
        if (v instanceof Error) throw v;
        return v;
      },
    });
    assert.deepEqual(asked, ['http://prom.invalid:9090 err_rate', 'http://prom.invalid:9090 p99', 'http://prom.invalid:9090 up']);
    return results.filter((r) => r.name.startsWith('prom:'));
  };

  assert.deepEqual(
    await run({ err_rate: 0.01, p99: 0.1, up: 1 }),
    [
      { name: 'prom:errors', status: 'pass', detail: 'err_rate = 0.01' },
      { name: 'prom:latency', status: 'pass', detail: 'p99 = 0.1' },
      { name: 'prom:floor', status: 'pass', detail: 'up = 1' },
    ],
    'values on the bounds pass',
  );
  assert.deepEqual(await run({ err_rate: 0.02, p99: 0.05, up: 0 }), [
    { name: 'prom:errors', status: 'fail', detail: 'err_rate = 0.02 (allowed -inf..0.01)' },
    { name: 'prom:latency', status: 'fail', detail: 'p99 = 0.05 (allowed 0.1..0.5)' },
    { name: 'prom:floor', status: 'fail', detail: 'up = 0 (allowed 1..+inf)' },
  ]);
  assert.deepEqual(await run({ err_rate: null, p99: Number.NaN, up: new Error('HTTP 503') }), [
    { name: 'prom:errors', status: 'inconclusive', detail: 'no data for err_rate' },
    { name: 'prom:latency', status: 'inconclusive', detail: 'no data for p99' },
    { name: 'prom:floor', status: 'inconclusive', detail: 'query failed: HTTP 503' },
  ]);
});

test('a check detail is capped: what agents and alerts name cannot grow the stored state without bound', async () => {
  const alerts = Array.from({ length: 200 }, (_, i) => ({ alertname: `Alert${i}_${'x'.repeat(60)}`, fingerprint: `f${i}`, startsAt: iso(0) }));
  const r = await result('alerts', { alerts });
  assert.equal(r.status, 'fail');
  assert.equal(r.detail.length, DETAIL_MAX);
  assert.ok(r.detail.endsWith('…'), r.detail.slice(-20));
});
