// The agent's etcd side: turn watch snapshots into applied configs (validated, cohort decided,
// override merged) and keep the health key current. A document that fails validation is
// refused with its revision and reported in health; the last good config stays in force.
// EtcdFollower is all of it but the kernel step and the counters: the real agent
// (EtcdAgentSource) applies to the maps and counts from them, a simulated one
// (tools/simulate/agent.ts) records the version and can fail on purpose.
import type { Logger } from 'pino';
import type { ZodType } from 'zod';
import { cohortBucket } from '../schemas/cohort.js';
import { type Config, describeIssues } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';
import type { EtcdConnection } from '../schemas/etcd.js';
import { etcdKeys } from '../schemas/keys.js';
import { Verifier } from '../schemas/signing.js';
import {
  HEALTH_MESSAGE_MAX,
  type Health,
  type HostOverride,
  HostOverrideSchema,
  SCHEMA_VERSION,
  type TierDocument,
  TierDocumentSchema,
} from '../schemas/tier.js';
import type { Datapath } from './datapath.js';
import { effectiveConfig } from './effective.js';
import { breakerState, Etcd3Transport, type EtcdTransport, etcdBreaker } from './etcd-client.js';
import { type KeyState, type Snapshot, TierWatch, type WatchState } from './etcd-watch.js';
import { flowTableStats, readCounters } from './flows.js';
import { DEFAULT_HEALTH, type HealthOptions, HealthReporter } from './health.js';
import type { Metrics } from './metrics.js';
import type { AppliedDocuments, AppliedMeta } from './state.js';
import type { AgentStatus } from './status.js';
import { SummaryBuilder, type Violation } from './summary.js';
import { DEFAULT_SUMMARY_PUBLISH, SummaryPublisher, type SummaryPublishOptions } from './summary-publisher.js';
import { type StepTimes, timed } from './timing.js';

export interface EtcdSourceOptions {
  conn: EtcdConnection;
  /** --verify-key files and folders; empty: unsigned documents accepted (--insecure-unsigned). */
  verifyKeys: string[];
  prefix: string;
  tier: string;
  hostId: string;
  /** --health-spread: the most a health write waits after its reason (HealthOptions.spreadMs). */
  healthSpreadMs?: number;
}

/** The kernel step: what differs between a real agent and a simulated one. */
export interface Handlers {
  /**
   * times: what deciding took so far (parse, signature, validation, cohort); receivedAt: epoch ms
   * when the watch event came in. Both for the log line (the propagation bench's breakdown).
   */
  apply(config: Config, meta: AppliedMeta, reason: string, times?: StepTimes, receivedAt?: number): void;
  /** A new version whose effective config is the one in force: remember it, touch nothing. */
  keep(config: Config, meta: AppliedMeta, reason: string): void;
  refuse(err: unknown, reason: string, revision: number | null): void;
}

/** Parse one etcd value with a schema (after its signature, when a verifier is given); errors name the key, revision and field. */
export function parseDocument<T>(schema: ZodType<T>, kv: KeyState, key: string, verifier: Verifier | null, times?: StepTimes): T {
  let doc: unknown;
  try {
    doc = timed(times, 'parse_ms', () => JSON.parse(kv.value.toString('utf8')));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${key}@${kv.modRevision} is not valid JSON: ${(err as Error).message}`);
  }
  if (verifier) timed(times, 'verify_ms', () => verifier.check(doc, `${key}@${kv.modRevision}`));
  const r = timed(times, 'validate_ms', () => schema.safeParse(doc));
  if (!r.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${key}@${kv.modRevision} is invalid: ${describeIssues(r.error)}`);
  return r.data;
}

/**
 * What a snapshot asks of an agent: nothing (no tier document), a refusal (no good tier document
 * to build on), or a config to enforce, with the refusals of the documents it could not take.
 */
export type Decision =
  | { kind: 'none' }
  | { kind: 'refused'; err: unknown }
  | { kind: 'config'; config: Config; meta: AppliedMeta; tierVersion: number; refusals: unknown[] };

/** The highest versions applied so far: from the meta of the config in force (also the last good one after a restart). */
export function highestApplied(meta: AppliedMeta | undefined): { tier: number | null; override: number | null } {
  if (meta?.source !== 'etcd') return { tier: null, override: null };
  return { tier: meta.highestTierVersion ?? meta.tierVersion, override: meta.highestOverrideVersion ?? meta.overrideVersion };
}

/** A document's signed place and version against the key it was read from and what was applied before. */
function checkPlace(where: string, signedFor: string, mine: string, what: 'tier' | 'host', version: number, highest: number | null): void {
  if (signedFor !== mine) {
    const from = what === 'tier' ? "another tier's key" : "another host's override";
    throw new SslwallError('SSLWALL_E_CONFIG_MISPLACED', `${where} was signed for ${what} ${signedFor}, not ${mine}; it was copied from ${from}`);
  }
  if (highest !== null && version < highest)
    throw new SslwallError(
      'SSLWALL_E_CONFIG_REPLAY',
      `${where} has version ${version}, older than version ${highest} this agent has applied; an old document was written back (replay)`,
    );
}

type Judged<T> = { ok: true; doc: T } | { ok: false; err: unknown };

function judge<T>(f: () => T): Judged<T> {
  try {
    return { ok: true, doc: f() };
  } catch (err) {
    return { ok: false, err };
  }
}

/**
 * Validate (and verify) a snapshot's documents and decide this host's effective config. A
 * document signed for another tier or host is misplaced, one older than the highest version
 * applied (`highest`) a replay: both refused.
 *
 * The tier document and the override are judged each on its own, so that one bad document
 * never freezes the host on the other's old version: a refused override leaves the override in
 * force (`inForce`, none if there was none) under the new tier document, and a refused tier
 * document leaves the tier document in force under the new override. Only when no good tier
 * document is known at all is the whole snapshot refused.
 */
export function decide(
  s: Snapshot,
  keys: { tier: string; override: string },
  verifier: Verifier | null,
  place: { tier: string; hostId: string },
  highest: { tier: number | null; override: number | null },
  inForce: AppliedDocuments | null = null,
  times?: StepTimes,
): Decision {
  if (!s.tier) return { kind: 'none' };
  const sTier = s.tier;
  const judgedTier = judge(() => {
    const doc = parseDocument(TierDocumentSchema, sTier, keys.tier, verifier, times);
    checkPlace(`${keys.tier}@${sTier.modRevision}`, doc.tier, place.tier, 'tier', doc.version, highest.tier);
    return { doc, revision: sTier.modRevision };
  });
  const sOverride = s.override;
  const judgedOverride: Judged<HostOverride | null> = sOverride
    ? judge(() => {
        const doc = parseDocument(HostOverrideSchema, sOverride, keys.override, verifier, times);
        checkPlace(`${keys.override}@${sOverride.modRevision}`, doc.host, place.hostId, 'host', doc.version, highest.override);
        return doc;
      })
    : { ok: true, doc: null };
  const refusals: unknown[] = [];
  let tier: { doc: TierDocument; revision: number };
  if (judgedTier.ok) tier = judgedTier.doc;
  else if (inForce) {
    refusals.push(judgedTier.err);
    tier = { doc: inForce.tier, revision: inForce.tierRevision };
  } else return { kind: 'refused', err: judgedTier.err };
  let override: HostOverride | null;
  if (judgedOverride.ok) override = judgedOverride.doc;
  else {
    refusals.push(judgedOverride.err);
    override = inForce?.override ?? null;
  }

  const eff = timed(times, 'cohort_ms', () => effectiveConfig(tier.doc, override, place.hostId));
  // The override's highest outlives the override: an old one written back after a removal is a replay too.
  const highestOverride = override ? Math.max(highest.override ?? 0, override.version) : highest.override;
  return {
    kind: 'config',
    config: eff.config,
    tierVersion: tier.doc.version,
    refusals,
    meta: {
      source: 'etcd',
      tierVersion: tier.doc.version,
      revision: tier.revision,
      overrideVersion: override?.version ?? null,
      inCohort: eff.inCohort,
      bucket: eff.bucket,
      highestTierVersion: Math.max(highest.tier ?? 0, tier.doc.version),
      ...(highestOverride !== null ? { highestOverrideVersion: highestOverride } : {}),
      documents: { tier: tier.doc, tierRevision: tier.revision, override },
    },
  };
}

/** The health document, from what an agent (or a simulated one) knows; one shape for both. */
export function healthDocument(a: {
  hostId: string;
  tier: string;
  agentVersion: string;
  applied: { config: Config; meta: AppliedMeta } | null;
  applyLatencyMs: number | null;
  appliedAt: string | null;
  counters: Health['counters'];
  connected: boolean;
  watchRevision: number | null;
  lastError: Health['lastError'];
  features: Health['features'];
  warnings: string[];
}): Health {
  return {
    schema: SCHEMA_VERSION,
    hostId: a.hostId,
    tier: a.tier,
    agentVersion: a.agentVersion,
    configVersion: a.applied?.meta.tierVersion ?? null,
    configRevision: a.applied?.meta.revision ?? null,
    overrideVersion: a.applied?.meta.overrideVersion ?? null,
    mode: a.applied?.config.mode ?? 'off',
    inCohort: a.applied?.meta.inCohort ?? false,
    bucket: a.applied?.meta.bucket ?? cohortBucket(a.hostId, ''),
    applyLatencyMs: a.applyLatencyMs,
    appliedAt: a.appliedAt,
    counters: a.counters,
    etcd: { connected: a.connected, watchRevision: a.watchRevision },
    // Bounded as HealthSchema wants: a long validation message must not make the report unreadable.
    lastError: a.lastError && { ...a.lastError, message: a.lastError.message.slice(0, HEALTH_MESSAGE_MAX) },
    features: a.features,
    warnings: a.warnings,
    updatedAt: new Date().toISOString(),
  };
}

export interface FollowerOptions {
  keys: ReturnType<typeof etcdKeys>;
  tier: string;
  hostId: string;
  verifier: Verifier | null;
  agentVersion: string;
  health?: HealthOptions;
  /** The violation summary, published under the health lease; none: nothing published (a simulated agent may leave it out). */
  summary?: { builder: SummaryBuilder; publish?: SummaryPublishOptions };
}

/** Where the health document's counters and features come from (the kernel's maps, or simulated). */
export interface HostFacts {
  counters(): Health['counters'];
  features(): Health['features'];
  /** Loud problems for the operator (plaintext etcd on a watched interface); none when absent. */
  warnings?(): string[];
}

/** Snapshots -> decisions -> apply/keep/refuse, and the health key: the same for real and simulated agents. */
export class EtcdFollower {
  readonly watch: TierWatch;
  readonly health: HealthReporter;
  readonly summary: SummaryPublisher | null;
  readonly breaker;
  connected = false;
  watchRevision: number | null = null;
  private readonly tierKey: string;
  private readonly overrideKey: string;

  constructor(
    transport: EtcdTransport,
    private readonly opts: FollowerOptions,
    private readonly status: AgentStatus,
    private readonly handlers: Handlers,
    private readonly host: HostFacts,
    private readonly log: Logger,
    /** A valid tier document with this version was decided (the simulator times propagation with it). */
    private readonly onDecided: (tierVersion: number) => void = () => undefined,
    onHealthWritten?: (doc: Health) => void,
  ) {
    this.tierKey = opts.keys.tierConfig(opts.tier);
    this.overrideKey = opts.keys.hostOverride(opts.hostId);
    const { breaker, guard } = etcdBreaker();
    this.breaker = breaker;
    this.watch = new TierWatch(transport, guard, this.tierKey, this.overrideKey, log);
    this.health = new HealthReporter(transport, guard, opts.keys.health(opts.tier, opts.hostId), log, opts.health ?? DEFAULT_HEALTH, onHealthWritten);
    this.summary = opts.summary
      ? new SummaryPublisher(
          transport,
          guard,
          opts.keys.summary(opts.tier, opts.hostId),
          opts.summary.builder,
          this.health,
          log,
          opts.summary.publish ?? DEFAULT_SUMMARY_PUBLISH,
        )
      : null;
  }

  /** A violation seen here: counted in the summary, which is published later (never one write per violation). */
  violation(v: Violation, atMs: number): void {
    if (!this.summary) return;
    this.opts.summary!.builder.add(v, atMs);
    this.summary.notify();
  }

  start(): void {
    this.watch.on('snapshot', (s, reason) => this.onSnapshot(s, reason));
    this.watch.on('state', (state) => this.onState(state));
    this.watch.start();
    this.health.start(() => this.healthDoc());
  }

  /** revoke false: as a killed agent (simulated), the lease is left to expire. True when the lease was revoked. */
  async stop(revoke = true): Promise<boolean> {
    await this.watch.stop();
    // Before the lease goes: a summary write after the revoke would fail, or land under a new lease.
    await this.summary?.stop();
    const revoked = await this.health.stop(revoke);
    this.breaker.shutdown();
    return revoked;
  }

  private onState(state: WatchState): void {
    const wasConnected = this.connected;
    this.connected = state === 'watching';
    if (this.connected && !wasConnected) {
      this.log.info({ event: 'etcd_connected', revision: this.watchRevision }, 'watching etcd');
      // Back on etcd after a break: tell the engine.
      if (this.status.applied) this.health.nudge();
    }
    if (!this.connected && wasConnected) this.log.warn({ event: 'etcd_disconnected', state }, 'lost etcd; enforcing the config in force');
  }

  private onSnapshot(s: Snapshot, reason: string): void {
    this.watchRevision = s.revision;
    this.connected = true;
    const times: StepTimes = {};
    const d = decide(
      s,
      { tier: this.tierKey, override: this.overrideKey },
      this.opts.verifier,
      { tier: this.opts.tier, hostId: this.opts.hostId },
      highestApplied(this.status.applied?.meta),
      this.status.applied?.meta.documents ?? null,
      times,
    );
    if (d.kind === 'none') {
      this.log.warn(
        { event: 'tier_missing', tier: this.opts.tier, key: this.tierKey, revision: s.revision },
        'no document for this tier; the config in force stays',
      );
      this.health.nudge();
      return;
    }
    if (d.kind === 'refused') {
      this.handlers.refuse(d.err, reason, s.revision);
      this.health.nudge();
      return;
    }
    this.onDecided(d.tierVersion);
    this.status.lastError = null;
    if (JSON.stringify(d.config) === JSON.stringify(this.status.applied?.config)) {
      this.handlers.keep(d.config, d.meta, reason);
    } else {
      try {
        this.handlers.apply(d.config, d.meta, reason, times, s.receivedAt);
      } catch (err) {
        this.handlers.refuse(err, reason, s.revision);
      }
    }
    // After the apply, so that the refused document is what health reports as lastError.
    for (const err of d.refusals) this.handlers.refuse(err, reason, s.revision);
    this.health.nudge();
  }

  healthDoc(): Health {
    return healthDocument({
      hostId: this.opts.hostId,
      tier: this.opts.tier,
      agentVersion: this.opts.agentVersion,
      applied: this.status.applied,
      applyLatencyMs: this.status.applyLatencyMs,
      appliedAt: this.status.appliedAt,
      counters: this.host.counters(),
      connected: this.connected,
      watchRevision: this.watchRevision,
      lastError: this.status.lastError,
      features: this.host.features(),
      warnings: this.host.warnings?.() ?? [],
    });
  }
}

/** The real agent's etcd source: the follower over its own etcd3 clients, the kernel maps behind. */
export class EtcdAgentSource {
  private readonly transport: Etcd3Transport;
  private readonly follower: EtcdFollower;
  private liveFlows = { at: 0, live: 0, evicted: 0 };

  constructor(
    opts: EtcdSourceOptions,
    private readonly dp: Datapath,
    status: AgentStatus,
    handlers: Handlers,
    private readonly metrics: Metrics,
    log: Logger,
    version: string,
    warnings: () => string[],
  ) {
    this.transport = new Etcd3Transport(opts.conn);
    const followerOpts = {
      keys: etcdKeys(opts.prefix),
      tier: opts.tier,
      hostId: opts.hostId,
      verifier: opts.verifyKeys.length ? Verifier.fromSources(opts.verifyKeys) : null,
      agentVersion: version,
      health: { ...DEFAULT_HEALTH, spreadMs: opts.healthSpreadMs ?? DEFAULT_HEALTH.spreadMs },
      summary: { builder: new SummaryBuilder(opts.hostId, opts.tier, Date.now()) },
    };
    this.follower = new EtcdFollower(
      this.transport,
      followerOpts,
      status,
      handlers,
      { counters: () => this.counters(), features: () => ({ ...dp.features }), warnings },
      log,
    );
    const f = this.follower;
    metrics.etcdBreakerState(() => breakerState(f.breaker));
  }

  start(): void {
    this.follower.watch.on('state', (state) => {
      this.metrics.watchState.set({ state }, 1);
      for (const other of ['reading', 'watching', 'disconnected', 'backoff', 'stopped']) if (other !== state) this.metrics.watchState.set({ state: other }, 0);
    });
    this.follower.start();
  }

  async stop(): Promise<void> {
    await this.follower.stop(true);
    this.transport.close();
  }

  violation(v: Violation, atMs: number): void {
    this.follower.violation(v, atMs);
  }

  private counters(): Health['counters'] {
    const c = readCounters(this.dp.maps.sslwall_counters);
    const by = (cls: string, verdict: string) => Number(c.byClass.find((x) => x.class === cls && x.verdict === verdict)?.value ?? 0n);
    // Counting live flows walks the map: do it at most every 30 s (idle CPU matters).
    if (Date.now() - this.liveFlows.at > 30000) this.liveFlows = { at: Date.now(), ...flowTableStats(this.dp.maps.sslwall_counters, this.dp.maps) };
    return {
      violationsReported: by('plaintext', 'reported'),
      violationsBlocked: by('plaintext', 'blocked'),
      remoteViolationsReported: Number(c.remoteReported),
      remoteViolationsBlocked: Number(c.remoteBlocked),
      midstreamUnknown: by('midstream_unknown', 'allowed'),
      flows: this.liveFlows.live,
      evictions: this.liveFlows.evicted,
    };
  }
}
