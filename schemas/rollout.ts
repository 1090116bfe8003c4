// A staged rollout of one tier, as the engine keeps it in etcd (docs/rollout.md). Every
// transition is written in one transaction with the version it writes, so a new leader
// continues from here without skipping or repeating a stage.
import { z } from 'zod';

export const StageSchema = z.strictObject({ mode: z.enum(['passive', 'active']), percent: z.number().min(0).max(100) });

export const PromQuerySchema = z.strictObject({
  name: z.string().min(1),
  query: z.string().min(1),
  /** Fail when the value is above max (or below min). */
  max: z.number().optional(),
  min: z.number().optional(),
});

export const AnalysisSchema = z.strictObject({
  /** Blocked flows per minute, summed over the cohort, above which a check fails. */
  maxBlockedPerMinute: z.number().min(0).default(60),
  /** Cohort agents reporting an error above which a check fails. */
  maxErroringAgents: z.number().int().min(0).default(0),
  /** Consecutive failed checks that roll the tier back. */
  failureLimit: z.number().int().min(1).default(2),
  checkIntervalMs: z.number().int().min(200).default(5000),
  /** How long the cohort may take to report the stage's version applied. */
  applyDeadlineMs: z.number().int().min(1000).default(60000),
  /** Agents that stop reporting (health key gone) beyond which a check fails. */
  maxMissingAgents: z.number().int().min(0).default(0),
  prometheus: z.strictObject({ url: z.string().url(), queries: z.array(PromQuerySchema).min(1) }).optional(),
});

export const RolloutStatusSchema = z.enum(['running', 'paused', 'completed', 'aborted', 'undone']);

export const CheckResultSchema = z.object({
  name: z.string(),
  status: z.enum(['pass', 'fail', 'inconclusive']),
  detail: z.string(),
});

export const RolloutEventSchema = z.object({ time: z.string(), action: z.string(), reason: z.string(), version: z.number().int().optional() });

export const RolloutStateSchema = z.object({
  id: z.string(),
  tier: z.string(),
  status: RolloutStatusSchema,
  stages: z.array(StageSchema).min(1),
  stage: z.number().int().min(0),
  phase: z.enum(['writing', 'applying', 'baking']),
  /**
   * When the phase began, by the clock of the replica that wrote it: shown to people, and the
   * phase's identity; never compared with another clock (bake and deadlines are measured by the
   * leader's monotonic clock, rollout/steps.ts PhaseClock).
   */
  phaseStartedAt: z.string(),
  stageVersion: z.number().int().nullable(),
  bakeMs: z.number().int().min(0),
  otherwise: z.enum(['off', 'passive']),
  salt: z.string(),
  analysis: AnalysisSchema,
  baselineVersion: z.number().int(),
  consecutiveFailures: z.number().int().min(0),
  agentsAtStart: z.number().int().min(0),
  /**
   * Cohort agents reporting when the current stage was written (null before the first write):
   * cohort agents that stop reporting afterwards count against the stage (maxMissingAgents).
   */
  cohortAtWrite: z.number().int().min(0).nullable().default(null),
  lastChecks: z.array(CheckResultSchema),
  /** An operator's request the leader carries out on its next step. */
  request: z.object({ action: z.enum(['promote', 'abort', 'undo']), reason: z.string(), by: z.string() }).nullable(),
  reason: z.string(),
  startedBy: z.string(),
  startedAt: z.string(),
  updatedAt: z.string(),
  events: z.array(RolloutEventSchema),
});

export type Stage = z.infer<typeof StageSchema>;
export type Analysis = z.infer<typeof AnalysisSchema>;
export type RolloutState = z.infer<typeof RolloutStateSchema>;
export type CheckResult = z.infer<typeof CheckResultSchema>;

/** "passive:100,active:1,active:5" -> stages. */
export function parseStages(text: string): Stage[] {
  const stages = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const m = /^(passive|active):(\d+(?:\.\d+)?)$/.exec(s);
      if (!m) throw new Error(`stage "${s}": write MODE:PERCENT with MODE passive or active, e.g. active:5`);
      return StageSchema.parse({ mode: m[1], percent: Number(m[2]) });
    });
  if (stages.length === 0) throw new Error('no stages: e.g. --stages passive:100,active:1,active:5,active:25,active:100');
  return stages;
}

/** "10m", "90s", "1h30m", "500ms" -> milliseconds. */
export function parseDuration(text: string): number {
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let total = 0;
  let consumed = '';
  for (const m of text.matchAll(re)) {
    total += Number(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
    consumed += m[0];
  }
  if (!text || consumed !== text) throw new Error(`duration "${text}": write e.g. 10m, 90s, 1h30m, 500ms`);
  return Math.round(total);
}
