// The checks run while a stage bakes. Each answers pass, fail or inconclusive; missing data is
// inconclusive (the rollout pauses), never a pass.

import { inCohort } from '../schemas/cohort.js';
import type { Analysis, CheckResult, RolloutState } from '../schemas/rollout.js';
import type { Health } from '../schemas/tier.js';

export interface AlertView {
  alertname: string;
  fingerprint: string;
  startsAt: string;
  endsAt?: string;
}

export interface CheckInputs {
  state: RolloutState;
  agents: Health[];
  alerts: AlertView[];
  /** Sum of own-client blocked violations (violationsBlocked - remoteViolationsBlocked) over cohort agents at the previous check, and when. */
  previousBlocked: { at: number; sum: number } | null;
  now: number;
  promQuery: (url: string, query: string) => Promise<number | null>;
}

/**
 * A check's detail is stored in the rollout state (every check, every step) and names parts of
 * agents' reports; capped, so that what agents report cannot make the state's transaction larger
 * than etcd takes (1.5 MiB by default).
 */
export const DETAIL_MAX = 500;

function capped(r: CheckResult): CheckResult {
  return r.detail.length > DETAIL_MAX ? { ...r, detail: `${r.detail.slice(0, DETAIL_MAX - 1)}…` } : r;
}

export function cohortOf(state: RolloutState, agents: Health[]): Health[] {
  const stage = state.stages[state.stage]!;
  return agents.filter((a) => inCohort(a.hostId, state.salt, stage.percent));
}

/** The alerts still firing at `now`: no end, Alertmanager's zero time, or an end still ahead. */
export function firingAlerts(alerts: AlertView[], now: number): AlertView[] {
  return alerts.filter((al) => !al.endsAt || al.endsAt.startsWith('0001') || Date.parse(al.endsAt) > now);
}

export async function runChecks(input: CheckInputs): Promise<{ results: CheckResult[]; blocked: { at: number; sum: number } }> {
  const { state, agents, now } = input;
  const a: Analysis = state.analysis;
  const cohort = cohortOf(state, agents);
  const results: CheckResult[] = [];

  // 1. The cohort applied this stage's version and is not erroring; nobody disappeared. Agents
  // that vanish count against the stage, the tier's (since the start) or the cohort's (since the
  // stage was written), and an empty tier fails: it can only end in a rollback, never a pause
  // that waits for agents forever.
  const missingTier = Math.max(0, state.agentsAtStart - agents.length);
  const missingCohort = Math.max(0, (state.cohortAtWrite ?? 0) - cohort.length);
  if (agents.length === 0) {
    results.push({
      name: 'agents',
      status: 'fail',
      detail: `no agent of this tier reports health (${state.cohortAtWrite ?? 0} cohort agents at the stage write)`,
    });
  } else {
    const behind = cohort.filter((h) => (h.configVersion ?? -1) < (state.stageVersion ?? 0));
    const erroring = cohort.filter((h) => h.lastError !== null);
    const problems: string[] = [];
    if (behind.length)
      problems.push(
        `${behind.length} cohort agents have not applied version ${state.stageVersion} (e.g. ${behind
          .slice(0, 3)
          .map((h) => h.hostId)
          .join(', ')})`,
      );
    if (erroring.length > a.maxErroringAgents)
      problems.push(`${erroring.length} cohort agents report errors (e.g. ${erroring[0]!.hostId}: ${erroring[0]!.lastError!.code})`);
    if (missingTier > a.maxMissingAgents) problems.push(`${missingTier} agents stopped reporting (${agents.length} of ${state.agentsAtStart})`);
    else if (missingCohort > a.maxMissingAgents)
      problems.push(`${missingCohort} cohort agents stopped reporting after the stage was written (${cohort.length} of ${state.cohortAtWrite})`);
    results.push(
      problems.length
        ? { name: 'agents', status: 'fail', detail: problems.join('; ') }
        : { name: 'agents', status: 'pass', detail: `${cohort.length} cohort agents on version ${state.stageVersion}, ${agents.length} agents reporting` },
    );
  }

  // 2. Blocked flows per minute of the cohort's own clients. A remote peer's plaintext connection
  // to a port of a cohort host (a scanner, a stray client) is blocked too, but it says nothing
  // about whether the enforcement breaks the cohort's own traffic: it is left out.
  const sum = cohort.reduce((s, h) => s + Math.max(0, h.counters.violationsBlocked - h.counters.remoteViolationsBlocked), 0);
  const remote = cohort.reduce((s, h) => s + h.counters.remoteViolationsBlocked, 0);
  const blocked = { at: now, sum };
  if (input.previousBlocked && now > input.previousBlocked.at) {
    const perMin = (Math.max(0, sum - input.previousBlocked.sum) * 60000) / (now - input.previousBlocked.at);
    results.push({
      name: 'blocked_rate',
      status: perMin > a.maxBlockedPerMinute ? 'fail' : 'pass',
      detail: `${perMin.toFixed(1)} blocked flows/min of the cohort's own clients (max ${a.maxBlockedPerMinute}; ${remote} blocked from remote peers not counted)`,
    });
  } else {
    results.push({
      name: 'blocked_rate',
      status: 'pass',
      detail: `first sample: ${sum} blocked flows of the cohort's own clients so far (${remote} from remote peers not counted)`,
    });
  }

  // 3. Alertmanager alerts firing for the tier.
  const firing = firingAlerts(input.alerts, now);
  results.push(
    firing.length
      ? { name: 'alerts', status: 'fail', detail: `alerts firing: ${firing.map((f) => f.alertname).join(', ')}` }
      : { name: 'alerts', status: 'pass', detail: 'no alert firing for the tier' },
  );

  // 4. PromQL thresholds.
  for (const q of a.prometheus?.queries ?? []) {
    let value: number | null;
    try {
      value = await input.promQuery(a.prometheus!.url, q.query);
    } catch (err) {
      results.push({ name: `prom:${q.name}`, status: 'inconclusive', detail: `query failed: ${(err as Error).message}` });
      continue;
    }
    if (value === null || Number.isNaN(value)) {
      results.push({ name: `prom:${q.name}`, status: 'inconclusive', detail: `no data for ${q.query}` });
    } else if ((q.max !== undefined && value > q.max) || (q.min !== undefined && value < q.min)) {
      results.push({ name: `prom:${q.name}`, status: 'fail', detail: `${q.query} = ${value} (allowed ${q.min ?? '-inf'}..${q.max ?? '+inf'})` });
    } else {
      results.push({ name: `prom:${q.name}`, status: 'pass', detail: `${q.query} = ${value}` });
    }
  }
  return { results: results.map(capped), blocked };
}

/** The Prometheus HTTP API: an instant query's first sample, or null when the vector is empty. */
export async function promInstantQuery(url: string, query: string): Promise<number | null> {
  const res = await fetch(`${url.replace(/\/$/, '')}/api/v1/query?query=${encodeURIComponent(query)}`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  const body = (await res.json()) as { status: string; data?: { resultType: string; result: Array<{ value: [number, string] }> | [number, string] } };
  if (body.status !== 'success' || !body.data) throw new Error(`status ${body.status}`);
  if (body.data.resultType === 'scalar') return Number((body.data.result as [number, string])[1]);
  const r = body.data.result as Array<{ value: [number, string] }>;
  return r.length ? Number(r[0]!.value[1]) : null;
}
