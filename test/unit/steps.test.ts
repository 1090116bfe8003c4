// The rollout step machine (rollout/steps.ts): what the engine does next from a rollout state,
// the tier's health, the check results and the clock; and the operator's actions.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { afterChecks, nextStep, operatorAction, PhaseClock, rolledBack, type Step, type StepInputs, stageWritten, transitioned } from '../../rollout/steps.js';
import { SslwallError } from '../../schemas/errors.js';
import type { CheckResult, RolloutState } from '../../schemas/rollout.js';
import { agent, agents, hostsWhere, iso, rollout, T0 } from './rollout-fixtures.js';

const quiet: StepInputs = { agents: agents(3), now: T0 + 1000, lastCheckAt: 0, urgent: false, phaseElapsedMs: 1000 };
const pass = (name: string): CheckResult => ({ name, status: 'pass', detail: `${name} ok` });
const fail = (name: string): CheckResult => ({ name, status: 'fail', detail: `${name} bad` });
const unknown = (name: string): CheckResult => ({ name, status: 'inconclusive', detail: `${name} no data` });
const twoStages = [
  { mode: 'passive', percent: 100 },
  { mode: 'active', percent: 100 },
] as const;

function expectTransition(s: Step, action: string): Extract<Step, { do: 'transition' }> {
  assert.equal(s.do, 'transition', `expected a ${action} transition, got ${JSON.stringify(s)}`);
  const t = s as Extract<Step, { do: 'transition' }>;
  assert.equal(t.action, action);
  return t;
}

function expectRollback(s: Step, status: 'aborted' | 'undone'): Extract<Step, { do: 'rollback' }> {
  assert.equal(s.do, 'rollback', `expected a rollback, got ${JSON.stringify(s)}`);
  const r = s as Extract<Step, { do: 'rollback' }>;
  assert.equal(r.status, status);
  return r;
}

describe('nextStep: phases', () => {
  test('a rollout that is not running waits', () => {
    for (const status of ['paused', 'completed', 'aborted', 'undone'] as const) assert.deepEqual(nextStep(rollout({ status }), quiet), { do: 'wait' }, status);
  });

  test('the writing phase writes the stage', () => {
    assert.deepEqual(nextStep(rollout({ phase: 'writing', stageVersion: null }), quiet), { do: 'write' });
  });

  test('applying: the cohort applied the stage version -> baking from now', () => {
    const t = expectTransition(nextStep(rollout({ phase: 'applying' }), quiet), 'applied');
    assert.deepEqual(t.change, { phase: 'baking', phaseStartedAt: iso(T0 + 1000) });
    assert.equal(t.reason, '3 cohort agents applied version 7; baking for 60000 ms');
  });

  test('applying: an agent outside the cohort does not hold the stage back', () => {
    const [a, b] = hostsWhere('web-1', 50, true, 2);
    const [out] = hostsWhere('web-1', 50, false, 1);
    const state = rollout({ phase: 'applying', stages: [{ mode: 'active', percent: 50 }] });
    const t = expectTransition(nextStep(state, { ...quiet, agents: [agent(a!), agent(b!), agent(out!, { configVersion: 6 })] }), 'applied');
    assert.match(t.reason, /^2 cohort agents applied/);
  });

  test('applying: a cohort agent behind waits until the apply deadline, then the tier rolls back', () => {
    const state = rollout({ phase: 'applying', phaseStartedAt: iso(T0) });
    const lagging = [...agents(2), agent('h9', { configVersion: 6 })];
    assert.deepEqual(nextStep(state, { ...quiet, agents: lagging, phaseElapsedMs: 60_000 }), { do: 'wait' }, 'at the deadline it still waits');
    const r = expectRollback(nextStep(state, { ...quiet, agents: lagging, phaseElapsedMs: 60_001 }), 'aborted');
    assert.equal(r.reason, '1 of 3 cohort agents did not apply version 7 within 60000 ms');
    assert.equal(r.state, state);
  });

  test('applying: an agent with no version applied yet counts as behind', () => {
    const state = rollout({ phase: 'applying' });
    assert.deepEqual(nextStep(state, { ...quiet, agents: [agent('h0', { configVersion: null })] }), { do: 'wait' });
  });

  test('applying: no agent reports health -> waits until the apply deadline, then rolls back (never a pause)', () => {
    const state = rollout({ phase: 'applying', cohortAtWrite: 3 });
    assert.deepEqual(nextStep(state, { ...quiet, agents: [], phaseElapsedMs: 60_000 }), { do: 'wait' });
    const r = expectRollback(nextStep(state, { ...quiet, agents: [], phaseElapsedMs: 60_001 }), 'aborted');
    assert.equal(r.reason, 'no agent of the tier reports health; 3 of 3 cohort agents stopped reporting after the stage was written within 60000 ms');
  });

  test('applying: cohort agents that vanish after the stage write hold the stage back and roll it back at the deadline', () => {
    const state = rollout({ phase: 'applying', cohortAtWrite: 5 }, { maxMissingAgents: 1 });
    expectTransition(nextStep(state, { ...quiet, agents: agents(4) }), 'applied');
    assert.deepEqual(nextStep(state, { ...quiet, agents: agents(3) }), { do: 'wait' }, '2 of 5 gone, over maxMissingAgents 1: not applied');
    const r = expectRollback(nextStep(state, { ...quiet, agents: agents(3), phaseElapsedMs: 60_001 }), 'aborted');
    assert.equal(r.reason, '2 of 5 cohort agents stopped reporting after the stage was written within 60000 ms');
  });

  test('baking: checks run at the check interval, at once when urgent', () => {
    const state = rollout({}, { checkIntervalMs: 5000 });
    assert.deepEqual(nextStep(state, { ...quiet, lastCheckAt: 0 }), { do: 'check' }, 'never checked');
    assert.deepEqual(nextStep(state, { ...quiet, now: T0 + 9999, lastCheckAt: T0 + 5000 }), { do: 'wait' }, 'interval not over');
    assert.deepEqual(nextStep(state, { ...quiet, now: T0 + 10_000, lastCheckAt: T0 + 5000 }), { do: 'check' }, 'interval over');
    assert.deepEqual(nextStep(state, { ...quiet, now: T0 + 5001, lastCheckAt: T0 + 5000, urgent: true }), { do: 'check' }, 'urgent');
  });
});

describe('nextStep: alarms always win', () => {
  test('a firing alert rolls a running rollout back at once, in any phase', () => {
    for (const phase of ['writing', 'applying', 'baking'] as const) {
      const r = expectRollback(nextStep(rollout({ phase }), { ...quiet, firing: ['HighErrorRate'] }), 'aborted');
      assert.match(r.reason, /alert firing for the tier: HighErrorRate/, phase);
    }
  });

  test('a firing alert rolls a paused rollout back too', () => {
    expectRollback(nextStep(rollout({ status: 'paused' }), { ...quiet, firing: ['HighErrorRate'] }), 'aborted');
  });

  test('an alert wins over a pending promote', () => {
    const r = expectRollback(nextStep(rollout({ request: { action: 'promote', by: 'alice', reason: 'go' } }), { ...quiet, firing: ['X'] }), 'aborted');
    assert.equal(r.state.request, null);
  });

  test('a finished rollout ignores alerts', () => {
    for (const status of ['completed', 'aborted', 'undone'] as const)
      assert.deepEqual(nextStep(rollout({ status }), { ...quiet, firing: ['X'] }), { do: 'wait' }, status);
  });
});

describe('nextStep: operator requests', () => {
  const req = (action: 'promote' | 'abort' | 'undo') => ({ action, reason: 'because', by: 'alice' });

  test('promote waits while the stage is being written', () => {
    assert.deepEqual(nextStep(rollout({ phase: 'writing', stageVersion: null, stages: [...twoStages], request: req('promote') }), quiet), { do: 'write' });
  });

  test('promote of a running stage advances to the next stage and clears the request', () => {
    const t = expectTransition(nextStep(rollout({ phase: 'applying', stages: [...twoStages], request: req('promote') }), quiet), 'advanced');
    assert.equal(t.state.request, null);
    assert.deepEqual(t.change, { stage: 1, phase: 'writing', stageVersion: null, consecutiveFailures: 0, lastChecks: [] });
    assert.equal(t.reason, 'promoted by alice: because');
  });

  test('promote of a paused rollout resumes it at the next stage', () => {
    const t = expectTransition(nextStep(rollout({ status: 'paused', stages: [...twoStages], request: req('promote') }), quiet), 'advanced');
    assert.equal(transitioned(t, new Date(T0)).status, 'running');
  });

  test('promote of the last stage completes the rollout', () => {
    const t = expectTransition(nextStep(rollout({ request: req('promote') }), quiet), 'completed');
    assert.deepEqual(t.change, { status: 'completed', reason: 'promoted by alice: because' });
  });

  test('promote and abort of an ended rollout are ignored and cleared', () => {
    for (const action of ['promote', 'abort'] as const) {
      const t = expectTransition(nextStep(rollout({ status: 'completed', request: req(action) }), quiet), `${action}_ignored`);
      assert.equal(t.state.request, null);
      assert.deepEqual(t.change, {});
      assert.equal(t.reason, 'not running (completed)');
    }
  });

  test('abort rolls back a running or paused rollout', () => {
    for (const status of ['running', 'paused'] as const) {
      const r = expectRollback(nextStep(rollout({ status, request: req('abort') }), quiet), 'aborted');
      assert.equal(r.state.request, null);
      assert.equal(r.reason, 'aborted by alice: because');
    }
  });

  test('undo rolls back even a completed rollout', () => {
    const r = expectRollback(nextStep(rollout({ status: 'completed', request: req('undo') }), quiet), 'undone');
    assert.equal(r.reason, 'undone by alice: because');
  });
});

describe('afterChecks', () => {
  test('a failed check below the failure limit counts, above it rolls back with the results', () => {
    const results = [pass('agents'), fail('alerts')];
    const first = expectTransition(afterChecks(rollout({}, { failureLimit: 2 }), results, 1000), 'check_failed');
    assert.deepEqual(first.change, { consecutiveFailures: 1, lastChecks: results });
    assert.equal(first.reason, 'alerts: alerts bad');
    const r = expectRollback(afterChecks(rollout({ consecutiveFailures: 1 }, { failureLimit: 2 }), results, 2000), 'aborted');
    assert.equal(r.reason, 'check failed 2 times: alerts: alerts bad');
    assert.deepEqual(r.state.lastChecks, results);
  });

  test('a failure limit of 1 rolls back on the first failed check', () => {
    expectRollback(afterChecks(rollout({}, { failureLimit: 1 }), [fail('agents')], 0), 'aborted');
  });

  test('a failed check wins over missing data', () => {
    expectTransition(afterChecks(rollout(), [unknown('prom:errors'), fail('alerts')], 0), 'check_failed');
  });

  test('missing data pauses, never passes', () => {
    const results = [pass('agents'), unknown('prom:errors')];
    const t = expectTransition(afterChecks(rollout({}), results, 120_000), 'paused');
    assert.equal(t.reason, 'missing data: prom:errors: prom:errors no data');
    assert.deepEqual(t.state.lastChecks, results);
  });

  test('healthy at the end of the bake: the next stage, or completed after the last', () => {
    const results = [pass('agents')];
    const next = expectTransition(afterChecks(rollout({ stages: [...twoStages], consecutiveFailures: 1 }), results, 60_000), 'advanced');
    assert.equal(next.reason, 'bake ended healthy');
    assert.equal(next.change.stage, 1);
    assert.equal(next.state.consecutiveFailures, 0);
    const done = expectTransition(afterChecks(rollout({}), results, 60_000), 'completed');
    assert.deepEqual(done.change, { status: 'completed', reason: 'bake ended healthy' });
  });

  test('healthy during the bake: waits, or records the passing check when it changes something', () => {
    const results = [pass('agents'), pass('alerts')];
    assert.deepEqual(afterChecks(rollout({ lastChecks: results }), results, 59_999), { do: 'wait' });
    const afterFailure = expectTransition(afterChecks(rollout({ lastChecks: results, consecutiveFailures: 1 }), results, 1000), 'check_passed');
    assert.deepEqual(afterFailure.change, { consecutiveFailures: 0, lastChecks: results });
    expectTransition(afterChecks(rollout({ lastChecks: [pass('agents')] }), results, 1000), 'check_passed');
  });
});

describe('the states transitions write', () => {
  const at = new Date(T0 + 5000);

  test('a transition changes the state, stamps it and records an event; a passing check is no event', () => {
    const t = expectTransition(afterChecks(rollout({}), [fail('alerts')], 0), 'check_failed');
    const next = transitioned(t, at);
    assert.equal(next.consecutiveFailures, 1);
    assert.equal(next.updatedAt, iso(T0 + 5000));
    assert.deepEqual(next.events, [{ time: iso(T0 + 5000), action: 'check_failed', reason: 'alerts: alerts bad' }]);
    const passed = transitioned({ do: 'transition', state: rollout(), change: { consecutiveFailures: 0 }, action: 'check_passed', reason: 'checks pass' }, at);
    assert.deepEqual(passed.events, []);
  });

  test('the event list keeps the last 30 events', () => {
    const events = Array.from({ length: 30 }, (_, i) => ({ time: iso(T0), action: `e${i}`, reason: '' }));
    const next = transitioned({ do: 'transition', state: rollout({ events }), change: {}, action: 'paused', reason: 'r' }, at);
    assert.equal(next.events.length, 30);
    assert.equal(next.events[0]!.action, 'e1');
    assert.equal(next.events[29]!.action, 'paused');
  });

  test('a written stage is applying its version from now, failures reset', () => {
    const next = stageWritten(rollout({ phase: 'writing', stageVersion: null, consecutiveFailures: 1 }), 8, at, 4);
    assert.equal(next.phase, 'applying');
    assert.equal(next.cohortAtWrite, 4, 'the cohort reporting at the write is recorded');
    assert.equal(next.stageVersion, 8);
    assert.equal(next.phaseStartedAt, iso(T0 + 5000));
    assert.equal(next.consecutiveFailures, 0);
    assert.deepEqual(next.events.at(-1), { time: iso(T0 + 5000), action: 'stage_written', reason: 'active:100', version: 8 });
  });

  test('a rollback ends the rollout with the version it wrote', () => {
    const aborted = rolledBack({ do: 'rollback', state: rollout(), status: 'aborted', reason: 'r' }, 9, at);
    assert.equal(aborted.status, 'aborted');
    assert.deepEqual(aborted.events.at(-1), { time: iso(T0 + 5000), action: 'rolled_back', reason: 'r', version: 9 });
    assert.equal(rolledBack({ do: 'rollback', state: rollout(), status: 'undone', reason: 'r' }, 9, at).events.at(-1)!.action, 'undone');
  });
});

describe('operatorAction', () => {
  const at = new Date(T0 + 7000);
  const refused = (state: RolloutState, action: Parameters<typeof operatorAction>[1], message: string) =>
    assert.throws(
      () => operatorAction(state, action, 'why', 'bob', at),
      (err: unknown) => err instanceof SslwallError && err.code === 'SSLWALL_E_ROLLOUT_STATE' && err.message === message,
    );

  test('pause stops a running rollout at once', () => {
    const next = operatorAction(rollout(), 'pause', 'why', 'bob', at);
    assert.equal(next.status, 'paused');
    assert.equal(next.reason, 'paused by bob: why');
    assert.equal(next.updatedAt, iso(T0 + 7000));
    assert.deepEqual(next.events.at(-1), { time: iso(T0 + 7000), action: 'paused', reason: 'by bob: why' });
    refused(rollout({ status: 'paused' }), 'pause', 'rollout web-1 is paused, not running');
  });

  test('resume restarts the bake from now, failures forgotten', () => {
    const next = operatorAction(rollout({ status: 'paused', consecutiveFailures: 1 }), 'resume', 'why', 'bob', at);
    assert.equal(next.status, 'running');
    assert.equal(next.phaseStartedAt, iso(T0 + 7000));
    assert.equal(next.consecutiveFailures, 0);
    refused(rollout(), 'resume', 'rollout web-1 is running, not paused');
  });

  test('promote, abort and undo are recorded as a request for the leader', () => {
    for (const action of ['promote', 'abort', 'undo'] as const) {
      const next = operatorAction(rollout(), action, 'why', 'bob', at);
      assert.deepEqual(next.request, { action, reason: 'why', by: 'bob' });
      assert.equal(next.status, 'running', 'the status changes only when the leader acts');
    }
  });

  test('promote and abort need a live rollout; undo any but an undone one', () => {
    refused(rollout({ status: 'completed' }), 'promote', 'rollout web-1 is completed; promote needs a running or paused rollout');
    refused(rollout({ status: 'aborted' }), 'abort', 'rollout web-1 is aborted; abort needs a running or paused rollout');
    assert.equal(operatorAction(rollout({ status: 'completed' }), 'undo', 'why', 'bob', at).request?.action, 'undo');
    refused(rollout({ status: 'undone' }), 'undo', 'rollout web-1 is already undone');
  });
});

test('a healthy two-stage rollout goes write, apply, bake, advance, ..., completed', () => {
  let state = rollout({ phase: 'writing', stageVersion: null, stages: [...twoStages], phaseStartedAt: iso(T0) });
  let now = T0;
  let version = 6;
  const clock = new PhaseClock();
  const seen: string[] = [];
  for (let i = 0; i < 20 && state.status === 'running'; i++) {
    now += 20_000;
    const fleet = agents(3, { configVersion: version });
    const phaseElapsedMs = clock.elapsed('web', state, now - T0);
    let s = nextStep(state, { agents: fleet, now, lastCheckAt: 0, urgent: false, phaseElapsedMs });
    if (s.do === 'check') s = afterChecks(state, [pass('agents')], phaseElapsedMs);
    seen.push(s.do === 'transition' ? s.action : s.do);
    if (s.do === 'write') state = stageWritten(state, ++version, new Date(now), 3);
    else if (s.do === 'transition') state = transitioned(s, new Date(now));
    else assert.equal(s.do, 'wait', `unexpected ${JSON.stringify(s)}`);
  }
  // The bake counts from the leader's first sight of the baking phase (one tick after it wrote it):
  // an extra wait per stage, never a bake cut short.
  assert.deepEqual(seen, ['write', 'applied', 'check_passed', 'wait', 'wait', 'advanced', 'write', 'applied', 'check_passed', 'wait', 'wait', 'completed']);
  assert.equal(state.status, 'completed');
  assert.equal(state.stage, 1);
});

describe("PhaseClock: bake and deadlines by the leader's own monotonic clock", () => {
  test('a phase is measured from its first sight, whatever its wall-clock stamp says', () => {
    const clock = new PhaseClock();
    // Stamped an hour in the future by a replica whose clock runs ahead: no bake time is granted.
    const ahead = rollout({ phaseStartedAt: iso(T0 + 3_600_000) });
    assert.equal(clock.elapsed('web', ahead, 500), 0);
    assert.equal(clock.elapsed('web', ahead, 2500), 2000);
    // Stamped an hour ago by a replica whose clock runs behind: the deadline still comes.
    const behind = rollout({ phase: 'applying', phaseStartedAt: iso(T0 - 3_600_000) });
    assert.equal(clock.elapsed('other', behind, 1000), 0);
    const r = expectRollback(
      nextStep(behind, { ...quiet, agents: [agent('h0', { configVersion: 6 })], phaseElapsedMs: clock.elapsed('other', behind, 62_000) }),
      'aborted',
    );
    assert.match(r.reason, /did not apply version 7 within 60000 ms/);
  });

  test('a new phase, a resume (new stamp) or a lost leadership starts the count again', () => {
    const clock = new PhaseClock();
    const baking = rollout();
    clock.elapsed('web', baking, 0);
    assert.equal(clock.elapsed('web', baking, 10_000), 10_000);
    assert.equal(clock.elapsed('web', { ...baking, stage: 1 }, 11_000), 0, 'next stage');
    assert.equal(clock.elapsed('web', { ...baking, stage: 1, phaseStartedAt: iso(T0 + 1) }, 12_000), 0, 'resumed');
    assert.equal(clock.elapsed('web', { ...baking, stage: 1, phaseStartedAt: iso(T0 + 1) }, 13_000), 1000);
    clock.clear();
    assert.equal(clock.elapsed('web', { ...baking, stage: 1, phaseStartedAt: iso(T0 + 1) }, 14_000), 0, 'after leadership was lost');
  });

  test("a bake never ends before bakeMs of this leader's time", () => {
    const clock = new PhaseClock();
    const state = rollout({ phaseStartedAt: iso(T0 - 3_600_000), lastChecks: [pass('agents')] });
    clock.elapsed('web', state, 100);
    assert.deepEqual(afterChecks(state, [pass('agents')], clock.elapsed('web', state, 60_099)), { do: 'wait' });
    expectTransition(afterChecks(state, [pass('agents')], clock.elapsed('web', state, 60_100)), 'completed');
  });
});
