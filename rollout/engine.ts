// The rollout engine: staged rollouts per tier, advanced by the leader while the cohort is
// healthy and rolled back when a check fails beyond its limit. All state lives in etcd
// (schemas/rollout.ts); every transition is one fenced compare-and-swap transaction, written
// with the tier version it creates, so a new leader continues exactly where the old one was.
// A step captures the leader's fence once, when it begins, and every write of that step carries
// it: a step that began as leader never writes unfenced, and fails if leadership moved meanwhile.
// Tiers step independently (one step in flight per tier, a bounded number at once), so a tier
// whose checks wait on a slow Prometheus holds up no other tier.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { inCohort } from '../schemas/cohort.js';
import { SslwallError } from '../schemas/errors.js';
import { type EngineKeys, engineKeys } from '../schemas/keys.js';
import { AnalysisSchema, type RolloutState, RolloutStateSchema, type Stage } from '../schemas/rollout.js';
import { type AlertView, cohortOf, firingAlerts, promInstantQuery, runChecks } from './checks.js';
import { Leadership } from './election.js';
import { HealthCache } from './health-cache.js';
import type { Signer } from './signing.js';
import { afterChecks, nextStep, operatorAction, PhaseClock, rolledBack, type Step, stageWritten, transitioned } from './steps.js';
import { ConfigStore, type Fence, HISTORY_KEEP, type SideWrite } from './store.js';
import { SummaryCache } from './summary-cache.js';

export type TransitionListener = (tier: string, action: string, reason: string) => void;

/** An operator's action meets the leader's own write of the state at most this many times before the conflict is the operator's. */
const OPERATOR_ACTION_ATTEMPTS = 5;

export interface EngineOptions {
  client: Etcd3;
  prefix: string;
  signer: Signer;
  id: string;
  log: Logger;
  tickMs?: number;
  leaseTtlS?: number;
  promQuery?: (url: string, query: string) => Promise<number | null>;
  /** Tiers stepped at once (default 8); a tier still stepping is skipped, not queued. */
  maxConcurrentSteps?: number;
  /** History versions kept per tier (default HISTORY_KEEP); older ones are pruned by the leader. */
  historyKeep?: number;
  /** How often the leader prunes history, ms (default 60 s). */
  pruneIntervalMs?: number;
  /** Added to this replica's wall clock: tests give a replica a wrong clock (bake and deadlines must not care). */
  clockOffsetMs?: number;
  /** ms between samples of the per-service violation totals the dashboard charts (default 1 min). */
  seriesIntervalMs?: number;
}

export interface StartRequest {
  stages: Stage[];
  bakeMs: number;
  analysis?: unknown;
  otherwise?: 'off' | 'passive';
  by: string;
}

export class Engine {
  readonly keys: EngineKeys;
  readonly store: ConfigStore;
  readonly leadership: Leadership;
  readonly health: HealthCache;
  /** The agents' violation summaries, for the service owners' views (not used by the rollout loop). */
  readonly summaries: SummaryCache;
  readonly client: Etcd3;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  private listing = false;
  private again = false;
  private readonly inFlight = new Set<string>();
  private cursor = 0;
  private readonly phases = new PhaseClock();
  private readonly invalidHeads = new Map<string, number>();
  private readonly lastCheck = new Map<string, number>();
  private readonly blockedSample = new Map<string, { at: number; sum: number }>();
  private readonly urgent = new Set<string>();
  readonly counters = { steps: 0, advances: 0, rollbacks: 0, pauses: 0, checks: 0 };
  private readonly transitionListeners: TransitionListener[] = [];

  constructor(private readonly opts: EngineOptions) {
    this.client = opts.client;
    this.log = opts.log;
    this.keys = engineKeys(opts.prefix);
    this.leadership = new Leadership(this.client, this.keys.leader, opts.id, opts.log, opts.leaseTtlS ?? 5);
    this.store = new ConfigStore(this.client, this.keys, opts.signer);
    this.health = new HealthCache(this.client, `${this.keys.prefix}health/`, opts.log);
    this.summaries = new SummaryCache(this.client, `${this.keys.prefix}summary/`, opts.log, opts.seriesIntervalMs);
    // What this replica measured while leading is no use to the next leader, nor to itself later.
    this.leadership.onLost = () => {
      this.phases.clear();
      this.lastCheck.clear();
      this.blockedSample.clear();
    };
  }

  /** This replica's wall clock (stamps shown to people, alert end times); never used to measure a phase. */
  private wall(): number {
    return Date.now() + (this.opts.clockOffsetMs ?? 0);
  }

  /** Called after each transition the leader writes (a stage, a rollback, a state change): metrics, notifications. */
  onTransition(listener: TransitionListener): void {
    this.transitionListeners.push(listener);
  }

  private emitTransition(tier: string, action: string, reason: string): void {
    for (const l of this.transitionListeners) l(tier, action, reason);
  }

  start(): void {
    this.health.start();
    this.summaries.start();
    this.leadership.start();
    this.health.on('gone', (id: string) => {
      this.log.warn({ event: 'agent_gone', agent: id }, 'an agent stopped reporting');
      this.urgent.add(id.split('/')[0]!);
      this.kick();
    });
    this.timer = setInterval(() => this.kick(), this.opts.tickMs ?? 500);
    this.pruneTimer = setInterval(() => void this.pruneAll(), this.opts.pruneIntervalMs ?? 60_000);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.pruneTimer);
    await this.leadership.stop();
    await this.health.stop();
    await this.summaries.stop();
  }

  /** Step now (an alert arrived, an agent vanished): the leader does not wait for the interval. */
  kick(): void {
    if (!this.leadership.isLeader || !this.health.ready) return;
    // One listing at a time; a kick during one lists again right after, so none is lost.
    if (this.listing) {
      this.again = true;
      return;
    }
    this.listing = true;
    this.stepAll()
      .catch((err) => this.log.error({ event: 'engine_step_failed', err: (err as Error).message }, 'engine step failed'))
      .finally(() => {
        this.listing = false;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  urgentCheck(tier: string): void {
    this.urgent.add(tier);
    this.kick();
  }

  /**
   * An operator's config set or revert while a rollout runs (or is paused) would be overwritten
   * by the rollout's next stage, which writes the baseline's config: refuse it, saying what to do.
   * Otherwise the write goes ahead only if the rollout state is still what was read here, so a
   * rollout started meanwhile cannot slip in between.
   */
  async operatorEditGuard(tier: string): Promise<{ key: string; mod: number; what: string }> {
    const cur = await this.readState(tier);
    if (cur && (cur.state.status === 'running' || cur.state.status === 'paused')) {
      throw new SslwallError(
        'SSLWALL_E_ROLLOUT_STATE',
        `rollout ${cur.state.id} is ${cur.state.status} on tier ${tier}; its next stage would overwrite this change: wait for it to complete, or abort it (sslwall rollout abort --tier ${tier}), then write the config`,
      );
    }
    return { key: this.keys.rollout(tier), mod: cur?.mod ?? 0, what: `the rollout state of tier ${tier}` };
  }

  async readState(tier: string): Promise<{ state: RolloutState; mod: number } | null> {
    const r = await this.client.kv.range({ key: Buffer.from(this.keys.rollout(tier)) });
    const kv = r.kvs[0];
    return kv ? { state: RolloutStateSchema.parse(JSON.parse(kv.value.toString())), mod: Number(kv.mod_revision) } : null;
  }

  async alertsFor(tier: string): Promise<AlertView[]> {
    const all = await this.client.getAll().prefix(this.keys.alerts(tier)).strings();
    return Object.values(all).map((v) => JSON.parse(v) as AlertView);
  }

  /** Start a step for every indexed tier not already stepping, at most maxConcurrentSteps at once. */
  private async stepAll(): Promise<void> {
    // The index holds one key per tier with a rollout to step: this read does not grow with history.
    const keys = await this.client.getAll().prefix(this.keys.rolloutIndexPrefix).keys();
    const tiers = keys.map((k) => k.slice(this.keys.rolloutIndexPrefix.length));
    const max = this.opts.maxConcurrentSteps ?? 8;
    // Start where the last listing stopped, so that with more tiers than slots none waits forever.
    const start = tiers.length ? this.cursor % tiers.length : 0;
    for (let i = 0; i < tiers.length && this.inFlight.size < max; i++) {
      const tier = tiers[(start + i) % tiers.length]!;
      if (this.inFlight.has(tier)) continue;
      if (!this.leadership.isLeader) return;
      this.cursor = start + i + 1;
      this.inFlight.add(tier);
      void this.step(tier)
        .catch((err) => {
          const code = (err as SslwallError).code;
          this.log[code === 'SSLWALL_E_CONFLICT' || code === 'SSLWALL_E_NOT_LEADER' ? 'warn' : 'error'](
            { event: 'rollout_step_failed', tier, code, err: (err as Error).message },
            'rollout step failed; retrying',
          );
        })
        .finally(() => this.inFlight.delete(tier));
    }
  }

  /** One step of one tier's rollout; public for tests. */
  async step(tier: string): Promise<void> {
    // The fence this step began with, carried by each of its writes (never read again).
    const fence = this.leadership.fence();
    if (!fence) return;
    const cur = await this.readState(tier);
    if (!cur) return;
    const { state, mod } = cur;
    this.counters.steps++;
    const now = this.wall();
    const phaseElapsedMs = this.phases.elapsed(tier, state, performance.now());
    if (state.status !== 'running' && state.status !== 'paused' && !state.request) return this.unindex(tier, state, mod, fence);
    const agents = this.health.tier(tier);
    const alerts = state.status === 'running' || state.status === 'paused' ? await this.alertsFor(tier) : [];
    const firing = firingAlerts(alerts, now).map((a) => a.alertname);
    const lastCheckAt = this.lastCheck.get(tier) ?? 0;
    let next = nextStep(state, { agents, now, lastCheckAt, urgent: this.urgent.has(tier), firing, phaseElapsedMs });
    if (next.do === 'check') {
      this.urgent.delete(tier);
      this.lastCheck.set(tier, now);
      this.counters.checks++;
      const { results, blocked } = await runChecks({
        state,
        agents,
        alerts,
        previousBlocked: this.blockedSample.get(tier) ?? null,
        now,
        promQuery: this.opts.promQuery ?? promInstantQuery,
      });
      this.blockedSample.set(tier, blocked);
      // Checks may have taken long (a slow Prometheus): judge the bake by the time they ended.
      next = afterChecks(state, results, this.phases.elapsed(tier, state, performance.now()));
    }
    if (next.do === 'write') return this.writeStage(tier, state, mod, fence);
    if (next.do === 'rollback') return this.rollback(tier, next, mod, fence);
    if (next.do === 'transition') return this.transition(tier, next, mod, fence);
  }

  /** A rollout that ended leaves the index (an operator's undo puts it back); only if its state is still the one read. */
  private async unindex(tier: string, state: RolloutState, mod: number, fence: Fence): Promise<void> {
    const res = await this.client
      .if(this.keys.rollout(tier), 'Mod', '==', mod)
      .and(fence.key, 'Mod', '==', fence.modRevision)
      .then(this.client.delete().key(this.keys.rolloutIndex(tier)))
      .commit();
    if (res.succeeded) this.log.info({ event: 'rollout_unindexed', tier, rollout: state.id, status: state.status }, 'rollout ended; no longer stepped');
  }

  /** The tier's head revision to write over; an invalid head is reported (once per revision) and replaced. */
  private async headRevision(tier: string): Promise<number> {
    const h = await this.store.headState(tier);
    if (h.problem && this.invalidHeads.get(tier) !== h.modRevision) {
      this.invalidHeads.set(tier, h.modRevision);
      this.log.error(
        { event: 'head_invalid', tier, revision: h.modRevision, problem: h.problem },
        'the tier head is not a valid document; the rollout writes over it',
      );
    }
    return h.modRevision;
  }

  private async writeStage(tier: string, state: RolloutState, mod: number, fence: Fence): Promise<void> {
    const stage = state.stages[state.stage]!;
    const base = await this.store.version(tier, state.baselineVersion);
    const expectRevision = await this.headRevision(tier);
    const now = new Date(this.wall());
    // The cohort as it reports now: those of it that stop reporting later count against the stage.
    const cohort = cohortOf(state, this.health.tier(tier)).length;
    const rec = await this.store.write(
      tier,
      { config: base.document.config, rollout: { mode: stage.mode, percent: stage.percent, otherwise: state.otherwise, salt: state.salt } },
      {
        author: `engine:${this.opts.id}`,
        message: `rollout ${state.id} stage ${state.stage + 1}/${state.stages.length}: ${stage.mode}:${stage.percent}`,
        expectRevision,
        audit: { rollout: state.id, stage: state.stage },
        with: [this.stateWrite(tier, mod, (version) => stageWritten(state, version, now, cohort))],
        fence,
      },
    );
    this.log.info(
      { event: 'rollout_stage_written', tier, rollout: state.id, stage: state.stage, mode: stage.mode, percent: stage.percent, version: rec.version, cohort },
      'stage written',
    );
    this.emitTransition(tier, 'stage_written', `${stage.mode}:${stage.percent}`);
  }

  /** Back to the version the tier had before the rollout, as a new version, with the state change. */
  private async rollback(tier: string, step: Extract<Step, { do: 'rollback' }>, mod: number, fence: Fence): Promise<void> {
    const { state, status, reason } = step;
    this.counters.rollbacks++;
    const base = await this.store.version(tier, state.baselineVersion);
    const expectRevision = await this.headRevision(tier);
    const rec = await this.store.write(
      tier,
      { config: base.document.config, rollout: base.document.rollout },
      {
        author: `engine:${this.opts.id}`,
        message: `rollback of rollout ${state.id} to version ${state.baselineVersion}: ${reason}`,
        expectRevision,
        audit: { rollout: state.id, action: status === 'undone' ? 'undo' : 'rollback', reason },
        with: [this.stateWrite(tier, mod, (version) => rolledBack(step, version, new Date(this.wall())))],
        fence,
      },
    );
    this.log.warn(
      { event: 'rollout_rolled_back', tier, rollout: state.id, status, reason, version: rec.version, baseline: state.baselineVersion },
      'rolled back',
    );
    this.emitTransition(tier, 'rolled_back', reason);
  }

  private async transition(tier: string, step: Extract<Step, { do: 'transition' }>, mod: number, fence: Fence): Promise<void> {
    const { state, action, reason } = step;
    if (action === 'advanced' || action === 'completed') {
      this.counters.advances++;
      // The next stage is judged on its own: no check interval or blocked-flow sample carries over.
      this.lastCheck.delete(tier);
      this.blockedSample.delete(tier);
    }
    if (action === 'paused') this.counters.pauses++;
    const next = transitioned(step, new Date(this.wall()));
    await this.store.casPut(
      this.keys.rollout(tier),
      mod,
      JSON.stringify(next),
      { tier, entry: { actor: `engine:${this.opts.id}`, action: `rollout_${action}`, rollout: state.id, reason } },
      { fence },
    );
    this.log.info({ event: `rollout_${action}`, tier, rollout: state.id, stage: next.stage, status: next.status, reason }, action);
    this.emitTransition(tier, action, reason);
  }

  /**
   * The slow sweep over every tier (leader only): prune history beyond historyKeep (fenced),
   * keeping the head and the tier's rollout baseline; and put a live rollout missing from the
   * index back into it (one written by an engine from before the index), so it is stepped.
   */
  private async pruneAll(): Promise<void> {
    const fence = this.leadership.fence();
    if (!fence) return;
    try {
      for (const tier of await this.store.tiers()) {
        const ro = await this.readState(tier);
        if (ro && (ro.state.status === 'running' || ro.state.status === 'paused' || ro.state.request))
          await this.client.put(this.keys.rolloutIndex(tier)).value(ro.state.id);
        const n = await this.store.pruneHistory(tier, this.opts.historyKeep ?? HISTORY_KEEP, ro ? [ro.state.baselineVersion] : [], fence);
        if (n) this.log.info({ event: 'history_pruned', tier, pruned: n, keep: this.opts.historyKeep ?? HISTORY_KEEP }, 'old history pruned');
      }
    } catch (err) {
      this.log.warn({ event: 'history_prune_failed', code: (err as SslwallError).code, err: (err as Error).message }, 'history pruning failed; retrying later');
    }
  }

  /** Prune now (tests; the leader also does it every pruneIntervalMs). */
  async pruneNow(): Promise<void> {
    await this.pruneAll();
  }

  private stateWrite(tier: string, mod: number, make: (version: number) => RolloutState): SideWrite {
    return { key: this.keys.rollout(tier), expectMod: mod, value: (v) => JSON.stringify({ ...make(v), updatedAt: new Date(this.wall()).toISOString() }) };
  }

  // ---- operator actions (any replica: compare-and-swap on the state key) ----

  async startRollout(tier: string, req: StartRequest): Promise<RolloutState> {
    const head = await this.store.head(tier);
    if (!head) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no config yet; write one first: sslwall config set --tier ${tier} --file F`);
    const cur = await this.readState(tier);
    if (cur && (cur.state.status === 'running' || cur.state.status === 'paused')) {
      throw new SslwallError(
        'SSLWALL_E_ROLLOUT_STATE',
        `tier ${tier} already has a ${cur.state.status} rollout (${cur.state.id}); abort it or wait for it to end`,
      );
    }
    const now = new Date(this.wall()).toISOString();
    const id = `${tier}-${now.replace(/[-:.TZ]/g, '').slice(0, 14)}-${randomBytes(2).toString('hex')}`;
    const state: RolloutState = RolloutStateSchema.parse({
      id,
      tier,
      status: 'running',
      stages: req.stages,
      stage: 0,
      phase: 'writing',
      phaseStartedAt: now,
      stageVersion: null,
      bakeMs: req.bakeMs,
      otherwise: req.otherwise ?? 'passive',
      salt: `${id}`,
      analysis: AnalysisSchema.parse(req.analysis ?? {}),
      baselineVersion: head.doc.version,
      consecutiveFailures: 0,
      agentsAtStart: this.health.tier(tier).length,
      lastChecks: [],
      request: null,
      reason: `started by ${req.by}`,
      startedBy: req.by,
      startedAt: now,
      updatedAt: now,
      events: [{ time: now, action: 'started', reason: `by ${req.by}`, version: head.doc.version }],
    });
    await this.store.casPut(
      this.keys.rollout(tier),
      cur?.mod ?? 0,
      JSON.stringify(state),
      { tier, entry: { actor: req.by, action: 'rollout_started', rollout: id, stages: req.stages } },
      { also: [{ key: this.keys.rolloutIndex(tier), value: id }] },
    );
    this.log.info({ event: 'rollout_started', tier, rollout: id, stages: req.stages, by: req.by }, 'rollout started');
    this.kick();
    return state;
  }

  async act(tier: string, action: 'pause' | 'resume' | 'promote' | 'abort' | 'undo', reason: string, by: string): Promise<RolloutState> {
    // The leader steps a running rollout on its own (a stage written, a check recorded), so it may
    // write the state between this read and this write: the action is judged again on the state
    // as it is then, a few times, before the conflict reaches the operator (a pause right after a
    // start used to meet the leader's first stage write).
    for (let attempt = 1; ; attempt++) {
      const cur = await this.readState(tier);
      if (!cur) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no rollout; start one with: sslwall rollout start --tier ${tier} ...`);
      const { state, mod } = cur;
      const next = operatorAction(state, action, reason, by, new Date(this.wall()));
      try {
        // Back in the index: an undo of an ended rollout is the leader's to carry out.
        await this.store.casPut(
          this.keys.rollout(tier),
          mod,
          JSON.stringify(next),
          { tier, entry: { actor: by, action: `rollout_${action}_requested`, rollout: state.id, reason } },
          { also: [{ key: this.keys.rolloutIndex(tier), value: state.id }] },
        );
      } catch (err) {
        if (err instanceof SslwallError && err.code === 'SSLWALL_E_CONFLICT' && attempt < OPERATOR_ACTION_ATTEMPTS) continue;
        throw err;
      }
      this.log.info({ event: `rollout_${action}`, tier, rollout: state.id, by, reason, ...(attempt > 1 ? { attempts: attempt } : {}) }, action);
      this.kick();
      return next;
    }
  }

  /** Hosts that join the cohort at `percent` (with the running rollout's salt, or the head's), and which would block. */
  async preview(tier: string, percent: number) {
    const cur = await this.readState(tier);
    const head = await this.store.head(tier);
    const salt = cur && (cur.state.status === 'running' || cur.state.status === 'paused') ? cur.state.salt : head?.doc.rollout.salt;
    if (!salt) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no config`);
    const currentPercent =
      cur && cur.state.status !== 'undone' && cur.state.status !== 'aborted'
        ? cur.state.stages[cur.state.stage]!.percent
        : head?.doc.rollout.mode === 'active'
          ? head.doc.rollout.percent
          : 0;
    const joining = this.health
      .tier(tier)
      .filter(
        (h) =>
          inCohort(h.hostId, salt, percent) &&
          !(inCohort(h.hostId, salt, currentPercent) && (cur?.state.stages[cur.state.stage]?.mode ?? head?.doc.rollout.mode) === 'active'),
      )
      .map((h) => ({ hostId: h.hostId, mode: h.mode, violationsReported: h.counters.violationsReported, wouldBlock: h.counters.violationsReported > 0 }))
      .sort((a, b) => a.hostId.localeCompare(b.hostId));
    return { tier, percent, salt, currentPercent, joining, wouldBlock: joining.filter((j) => j.wouldBlock) };
  }
}
