// What the engine does next with a rollout, decided from the rollout state, the tier's health,
// the check results and the clock alone — no etcd, no timers — so every transition of the step
// machine is unit-tested (test/unit/steps.test.ts). rollout/engine.ts reads the inputs, runs the
// checks when asked to and carries the decision out in one fenced transaction.

import { SslwallError } from '../schemas/errors.js';
import type { CheckResult, RolloutState } from '../schemas/rollout.js';
import type { Health } from '../schemas/tier.js';
import { cohortOf } from './checks.js';

const MAX_EVENTS = 30;

export type Step =
  /** Nothing to do on this tick. */
  | { do: 'wait' }
  /** Write the current stage's config as a new tier version (stageWritten gives the next state). */
  | { do: 'write' }
  /** Baking and a check is due: run the checks, then decide with afterChecks. */
  | { do: 'check' }
  /** Change the state key only; `state` is the state to change (it may carry the latest check results). */
  | { do: 'transition'; state: RolloutState; change: Partial<RolloutState>; action: string; reason: string }
  /** Write the baseline config back as a new version, with the state ending as `status`. */
  | { do: 'rollback'; state: RolloutState; status: 'aborted' | 'undone'; reason: string };

export interface StepInputs {
  /** Health of the tier's agents, as the health cache has it now. */
  agents: Health[];
  now: number;
  /** When this leader last ran the checks for the tier (0: never). */
  lastCheckAt: number;
  /** An alert arrived or an agent vanished: check now rather than at the interval. */
  urgent: boolean;
  /** Names of the alerts firing for the tier now. */
  firing?: string[];
  /** How long this leader has seen the rollout in its current phase (PhaseClock), by its monotonic clock. */
  phaseElapsedMs: number;
}

/** The step for a rollout read from etcd, before any check runs. */
export function nextStep(state: RolloutState, { agents, now, lastCheckAt, urgent, firing = [], phaseElapsedMs }: StepInputs): Step {
  // An alarm always wins: a firing alert rolls a running or paused rollout back at once, whatever
  // its phase, a pending request or the failure limit (that limit is for metric checks).
  if ((state.status === 'running' || state.status === 'paused') && firing.length > 0) {
    return { do: 'rollback', state: { ...state, request: null }, status: 'aborted', reason: `alert firing for the tier: ${firing.join(', ')}` };
  }
  // A promote waits until the current stage is written: promoting an unwritten stage would skip it.
  if (state.request && !(state.request.action === 'promote' && state.phase === 'writing')) return requestStep(state);
  if (state.status !== 'running') return { do: 'wait' };
  if (state.phase === 'writing') return { do: 'write' };

  if (state.phase === 'applying') {
    const cohort = cohortOf(state, agents);
    const applied = cohort.filter((h) => (h.configVersion ?? -1) >= (state.stageVersion ?? 0));
    // Cohort agents that were there when the stage was written and no longer report count as not
    // applied: they must not make "applied" true, nor an empty tier pause the rollout forever.
    const vanished = Math.max(0, (state.cohortAtWrite ?? 0) - cohort.length);
    if (agents.length > 0 && applied.length === cohort.length && vanished <= state.analysis.maxMissingAgents) {
      return transition(
        state,
        { phase: 'baking', phaseStartedAt: new Date(now).toISOString() },
        'applied',
        `${applied.length} cohort agents applied version ${state.stageVersion}; baking for ${state.bakeMs} ms`,
      );
    }
    if (phaseElapsedMs > state.analysis.applyDeadlineMs) {
      const problems: string[] = [];
      if (agents.length === 0) problems.push('no agent of the tier reports health');
      if (applied.length < cohort.length)
        problems.push(`${cohort.length - applied.length} of ${cohort.length} cohort agents did not apply version ${state.stageVersion}`);
      if (vanished > 0) problems.push(`${vanished} of ${state.cohortAtWrite} cohort agents stopped reporting after the stage was written`);
      return { do: 'rollback', state, status: 'aborted', reason: `${problems.join('; ')} within ${state.analysis.applyDeadlineMs} ms` };
    }
    return { do: 'wait' };
  }

  // baking
  if (!urgent && now - lastCheckAt < state.analysis.checkIntervalMs) return { do: 'wait' };
  return { do: 'check' };
}

/** The step once the baking stage's checks have run, `phaseElapsedMs` into the bake (PhaseClock). */
export function afterChecks(state: RolloutState, results: CheckResult[], phaseElapsedMs: number): Step {
  const failed = results.filter((r) => r.status === 'fail');
  const unknown = results.filter((r) => r.status === 'inconclusive');
  if (failed.length) {
    const failures = state.consecutiveFailures + 1;
    const reason = failed.map((f) => `${f.name}: ${f.detail}`).join('; ');
    if (failures >= state.analysis.failureLimit)
      return { do: 'rollback', state: { ...state, lastChecks: results }, status: 'aborted', reason: `check failed ${failures} times: ${reason}` };
    return transition(state, { consecutiveFailures: failures, lastChecks: results }, 'check_failed', reason);
  }
  if (unknown.length) return pause({ ...state, lastChecks: results }, `missing data: ${unknown.map((u) => `${u.name}: ${u.detail}`).join('; ')}`);
  if (phaseElapsedMs >= state.bakeMs) return advance({ ...state, lastChecks: results, consecutiveFailures: 0 }, 'bake ended healthy');
  if (state.consecutiveFailures !== 0 || JSON.stringify(state.lastChecks.map((c) => c.status)) !== JSON.stringify(results.map((c) => c.status))) {
    return transition(state, { consecutiveFailures: 0, lastChecks: results }, 'check_passed', 'checks pass');
  }
  return { do: 'wait' };
}

/** Carry out an operator's request (promote, abort, undo) that act() recorded in the state. */
function requestStep(state: RolloutState): Step {
  const req = state.request!;
  const cleared = { ...state, request: null };
  const live = state.status === 'running' || state.status === 'paused';
  if (req.action === 'promote') {
    if (!live) return transition(cleared, {}, 'promote_ignored', `not running (${state.status})`);
    return advance({ ...cleared, status: 'running' }, `promoted by ${req.by}: ${req.reason}`);
  }
  if (req.action === 'abort') {
    if (!live) return transition(cleared, {}, 'abort_ignored', `not running (${state.status})`);
    return { do: 'rollback', state: cleared, status: 'aborted', reason: `aborted by ${req.by}: ${req.reason}` };
  }
  return { do: 'rollback', state: cleared, status: 'undone', reason: `undone by ${req.by}: ${req.reason}` };
}

/** The next stage, or the end of the rollout after the last one. */
function advance(state: RolloutState, reason: string): Step {
  if (state.stage + 1 >= state.stages.length) return transition(state, { status: 'completed', reason }, 'completed', reason);
  return transition(state, { stage: state.stage + 1, phase: 'writing', stageVersion: null, consecutiveFailures: 0, lastChecks: [] }, 'advanced', reason);
}

function pause(state: RolloutState, reason: string): Step {
  return transition(state, { status: 'paused', reason }, 'paused', reason);
}

function transition(state: RolloutState, change: Partial<RolloutState>, action: string, reason: string): Step {
  return { do: 'transition', state, change, action, reason };
}

/** The state a transition step writes. A passing check that changes nothing but the results is not an event. */
export function transitioned(s: Extract<Step, { do: 'transition' }>, at: Date): RolloutState {
  const next: RolloutState = { ...s.state, ...s.change, updatedAt: at.toISOString() };
  if (s.action !== 'check_passed') next.events = addEvent(s.state, s.action, s.reason, undefined, at);
  return next;
}

/** The state written with the stage's config, as version `version`, with `cohort` agents of the stage reporting: the cohort now applies it. */
export function stageWritten(state: RolloutState, version: number, at: Date, cohort: number): RolloutState {
  const stage = state.stages[state.stage]!;
  return {
    ...state,
    phase: 'applying',
    stageVersion: version,
    cohortAtWrite: cohort,
    phaseStartedAt: at.toISOString(),
    consecutiveFailures: 0,
    events: addEvent(state, 'stage_written', `${stage.mode}:${stage.percent}`, version, at),
  };
}

/** The state written with the baseline config, as version `version`. */
export function rolledBack(s: Extract<Step, { do: 'rollback' }>, version: number, at: Date): RolloutState {
  return { ...s.state, status: s.status, reason: s.reason, events: addEvent(s.state, s.status === 'undone' ? 'undone' : 'rolled_back', s.reason, version, at) };
}

/**
 * An operator's action on the state (any replica may take it): pause and resume change the
 * status at once; promote, abort and undo are recorded as a request the leader carries out.
 * Throws SSLWALL_E_ROLLOUT_STATE when the rollout is in no state for the action.
 */
export function operatorAction(
  state: RolloutState,
  action: 'pause' | 'resume' | 'promote' | 'abort' | 'undo',
  reason: string,
  by: string,
  at: Date,
): RolloutState {
  let next: RolloutState;
  if (action === 'pause') {
    if (state.status !== 'running') throw new SslwallError('SSLWALL_E_ROLLOUT_STATE', `rollout ${state.id} is ${state.status}, not running`);
    next = { ...state, status: 'paused', reason: `paused by ${by}: ${reason}`, events: addEvent(state, 'paused', `by ${by}: ${reason}`, undefined, at) };
  } else if (action === 'resume') {
    if (state.status !== 'paused') throw new SslwallError('SSLWALL_E_ROLLOUT_STATE', `rollout ${state.id} is ${state.status}, not paused`);
    // The bake starts over: health seen before the pause does not count.
    next = {
      ...state,
      status: 'running',
      phaseStartedAt: at.toISOString(),
      consecutiveFailures: 0,
      reason: `resumed by ${by}: ${reason}`,
      events: addEvent(state, 'resumed', `by ${by}: ${reason}`, undefined, at),
    };
  } else {
    if (action !== 'undo' && state.status !== 'running' && state.status !== 'paused')
      throw new SslwallError('SSLWALL_E_ROLLOUT_STATE', `rollout ${state.id} is ${state.status}; ${action} needs a running or paused rollout`);
    if (action === 'undo' && state.status === 'undone') throw new SslwallError('SSLWALL_E_ROLLOUT_STATE', `rollout ${state.id} is already undone`);
    next = { ...state, request: { action, reason, by } };
  }
  next.updatedAt = at.toISOString();
  return next;
}

/**
 * How long the leader has seen each tier's rollout in its current phase, by its own monotonic
 * clock (performance.now(), never stepped by NTP or a wrong wall clock). Wall-clock stamps written
 * by one replica and compared with another's Date.now() would end a bake early on a replica whose
 * clock runs ahead and never reach a deadline on one whose clock runs behind. etcd has no clock to
 * read, and its lease TTLs count in whole seconds (too coarse for sub-second bakes), so the
 * leader measures itself and hands over conservatively: a replica that takes over, or sees a phase
 * it did not see begin, starts counting from its first sight. A bake then never ends early; a
 * deadline is late by at most the takeover time (lease TTL plus a tick), never missed.
 */
export class PhaseClock {
  private readonly seen = new Map<string, { phase: string; since: number }>();

  /** Elapsed ms in the state's phase at monotonic time `mono`; 0 at the first sight of a phase. */
  elapsed(tier: string, state: RolloutState, mono: number): number {
    // phaseStartedAt is part of the identity only: a resume restarts the bake with a new stamp.
    const phase = `${state.id}|${state.status}|${state.stage}|${state.phase}|${state.phaseStartedAt}`;
    const cur = this.seen.get(tier);
    if (cur?.phase === phase) return Math.max(0, mono - cur.since);
    this.seen.set(tier, { phase, since: mono });
    return 0;
  }

  /** Forget every phase (leadership lost: whoever leads next may have moved on meanwhile). */
  clear(): void {
    this.seen.clear();
  }
}

/** The state's event list with one more event, keeping the last MAX_EVENTS. */
function addEvent(state: RolloutState, action: string, reason: string, version: number | undefined, at: Date): RolloutState['events'] {
  return [...state.events, { time: at.toISOString(), action, reason, ...(version !== undefined ? { version } : {}) }].slice(-MAX_EVENTS);
}
