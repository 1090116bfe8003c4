// Rollout states and agent health built in memory for the step machine and checks tests.

import { inCohort } from '../../schemas/cohort.js';
import { AnalysisSchema, type RolloutState, RolloutStateSchema } from '../../schemas/rollout.js';
import { type Health, HealthSchema, SCHEMA_VERSION } from '../../schemas/tier.js';

export const T0 = Date.parse('2025-01-01T00:00:00.000Z');
export const iso = (ms: number) => new Date(ms).toISOString();

/** A running rollout of tier web at stage 0 (active:100 unless stages say otherwise), baking since T0. */
export function rollout(change: Partial<RolloutState> = {}, analysis: unknown = {}): RolloutState {
  return RolloutStateSchema.parse({
    id: 'web-1',
    tier: 'web',
    status: 'running',
    stages: [{ mode: 'active', percent: 100 }],
    stage: 0,
    phase: 'baking',
    phaseStartedAt: iso(T0),
    stageVersion: 7,
    bakeMs: 60_000,
    otherwise: 'passive',
    salt: 'web-1',
    analysis: AnalysisSchema.parse(analysis),
    baselineVersion: 6,
    consecutiveFailures: 0,
    agentsAtStart: 0,
    lastChecks: [],
    request: null,
    reason: 'started by test',
    startedBy: 'test',
    startedAt: iso(T0),
    updatedAt: iso(T0),
    events: [],
    ...change,
  });
}

/** A healthy agent of tier web on config version 7. */
export function agent(hostId: string, change: Partial<Health> = {}): Health {
  return HealthSchema.parse({
    schema: SCHEMA_VERSION,
    hostId,
    tier: 'web',
    agentVersion: '0.1.0',
    configVersion: 7,
    configRevision: 70,
    overrideVersion: null,
    mode: 'active',
    inCohort: true,
    bucket: 0,
    applyLatencyMs: 5,
    appliedAt: iso(T0),
    counters: { violationsReported: 0, violationsBlocked: 0, flows: 0, evictions: 0 },
    etcd: { connected: true, watchRevision: 70 },
    lastError: null,
    features: {},
    updatedAt: iso(T0),
    ...change,
  });
}

export function agents(n: number, change: Partial<Health> = {}): Health[] {
  return Array.from({ length: n }, (_, i) => agent(`h${i}`, change));
}

/** The first host ids h0, h1, ... that are (in = true) or are not in the cohort at percent. */
export function hostsWhere(salt: string, percent: number, isIn: boolean, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < n; i++) if (inCohort(`h${i}`, salt, percent) === isIn) out.push(`h${i}`);
  return out;
}
