// The agent's etcd side: turn watch snapshots into applied configs (validated, cohort decided,
// override merged) and keep the health key current. A document that fails validation is
// refused with its revision and reported in health; the last good config stays in force.
import type { Logger } from 'pino';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient, type EtcdConnection } from '../schemas/etcd.js';
import { breakerState } from './etcd-client.js';
import { TierWatch, type Snapshot, type KeyState } from './etcd-watch.js';
import { HealthReporter } from './health.js';
import { effectiveConfig } from './effective.js';
import { readCounters } from './flows.js';
import { native } from '../native/index.js';
import { SslwallError } from '../schemas/errors.js';
import { describeIssues, type Config } from '../schemas/config.js';
import { TierDocumentSchema, HostOverrideSchema, SCHEMA_VERSION, type Health, type TierDocument, type HostOverride } from '../schemas/tier.js';
import { etcdKeys } from '../schemas/keys.js';
import type { Datapath } from './datapath.js';
import type { AgentStatus } from './status.js';
import type { AppliedMeta } from './state.js';
import type { Metrics } from './metrics.js';
import { cohortBucket } from '../schemas/cohort.js';
import type { ZodType } from 'zod';
import { Verifier } from '../schemas/signing.js';

export interface EtcdSourceOptions {
  conn: EtcdConnection;
  /** null: unsigned documents accepted (--insecure-unsigned). */
  verifyKey: string | null;
  prefix: string;
  tier: string;
  hostId: string;
}

interface Handlers {
  apply(config: Config, meta: AppliedMeta, reason: string): void;
  /** A new version whose effective config is the one in force: remember it, touch nothing. */
  keep(config: Config, meta: AppliedMeta, reason: string): void;
  refuse(err: unknown, reason: string, revision: number | null): void;
}

/** Parse one etcd value with a schema (after its signature, when a verifier is given); errors name the key, revision and field. */
export function parseDocument<T>(schema: ZodType<T>, kv: KeyState, key: string, verifier: Verifier | null): T {
  let doc: unknown;
  try {
    doc = JSON.parse(kv.value.toString('utf8'));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${key}@${kv.modRevision} is not valid JSON: ${(err as Error).message}`);
  }
  verifier?.check(doc, `${key}@${kv.modRevision}`);
  const r = schema.safeParse(doc);
  if (!r.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${key}@${kv.modRevision} is invalid: ${describeIssues(r.error)}`);
  return r.data;
}

/** What a snapshot asks of an agent: nothing (no tier document), a refusal, or a config to enforce. */
export type Decision =
  | { kind: 'none' }
  | { kind: 'refused'; err: unknown }
  | { kind: 'config'; config: Config; meta: AppliedMeta; tierVersion: number };

/** Validate (and verify) a snapshot's documents and decide this host's effective config. */
export function decide(s: Snapshot, keys: { tier: string; override: string }, verifier: Verifier | null, hostId: string): Decision {
  if (!s.tier) return { kind: 'none' };
  let tier: TierDocument;
  let override: HostOverride | null = null;
  try {
    tier = parseDocument(TierDocumentSchema, s.tier, keys.tier, verifier);
    if (s.override) override = parseDocument(HostOverrideSchema, s.override, keys.override, verifier);
  } catch (err) {
    return { kind: 'refused', err };
  }
  const eff = effectiveConfig(tier, override, hostId);
  return {
    kind: 'config',
    config: eff.config,
    tierVersion: tier.version,
    meta: { source: 'etcd', tierVersion: tier.version, revision: s.tier.modRevision, overrideVersion: override?.version ?? null, inCohort: eff.inCohort, bucket: eff.bucket },
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
    lastError: a.lastError,
    features: a.features,
    updatedAt: new Date().toISOString(),
  };
}

export class EtcdAgentSource {
  private readonly client: Etcd3;
  private readonly watch: TierWatch;
  private readonly health: HealthReporter;
  private readonly keys;
  private connected = false;
  private watchRevision: number | null = null;
  private liveFlows = { at: 0, count: 0 };
  private readonly verifier: Verifier | null;

  constructor(
    private readonly opts: EtcdSourceOptions,
    private readonly dp: Datapath,
    private readonly status: AgentStatus,
    private readonly handlers: Handlers,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly version: string,
  ) {
    this.keys = etcdKeys(opts.prefix);
    this.verifier = opts.verifyKey ? Verifier.fromFile(opts.verifyKey) : null;
    this.client = createEtcdClient(opts.conn);
    this.watch = new TierWatch(() => createEtcdClient(opts.conn), this.keys.tierConfig(opts.tier), this.keys.hostOverride(opts.hostId), log);
    this.health = new HealthReporter(this.client, this.keys.health(opts.tier, opts.hostId), log);
    metrics.watchBreakerState(() => breakerState(this.watch.readBreaker));
    metrics.healthBreakerState(() => breakerState(this.health.putBreaker));
  }

  start(): void {
    this.watch.on('snapshot', (s, reason) => this.onSnapshot(s, reason));
    this.watch.on('state', (state) => {
      const wasConnected = this.connected;
      this.connected = state === 'watching';
      this.metrics.watchState.set({ state }, 1);
      for (const other of ['reading', 'watching', 'disconnected', 'backoff', 'stopped']) if (other !== state) this.metrics.watchState.set({ state: other }, 0);
      if (this.connected && !wasConnected) this.log.info({ event: 'etcd_connected', revision: this.watchRevision }, 'watching etcd');
      if (!this.connected && wasConnected) this.log.warn({ event: 'etcd_disconnected', state }, 'lost etcd; enforcing the config in force');
    });
    this.watch.start();
    this.health.start(() => this.healthDoc());
  }

  async stop(): Promise<void> {
    await this.watch.stop();
    await this.health.stop(true);
    this.client.close();
  }

  private onSnapshot(s: Snapshot, reason: string): void {
    this.watchRevision = s.revision;
    this.connected = true;
    const d = decide(s, { tier: this.keys.tierConfig(this.opts.tier), override: this.keys.hostOverride(this.opts.hostId) }, this.verifier, this.opts.hostId);
    if (d.kind === 'none') {
      this.log.warn({ event: 'tier_missing', tier: this.opts.tier, key: this.keys.tierConfig(this.opts.tier), revision: s.revision }, 'no document for this tier; the config in force stays');
      return;
    }
    if (d.kind === 'refused') {
      this.handlers.refuse(d.err, reason, s.revision);
      this.health.nudge(() => this.healthDoc());
      return;
    }
    this.status.lastError = null;
    if (JSON.stringify(d.config) === JSON.stringify(this.status.applied?.config)) {
      this.handlers.keep(d.config, d.meta, reason);
    } else {
      try {
        this.handlers.apply(d.config, d.meta, reason);
      } catch (err) {
        this.handlers.refuse(err, reason, s.revision);
      }
    }
    this.health.nudge(() => this.healthDoc());
  }

  healthDoc(): Health {
    const c = readCounters(this.dp.maps.sslwall_counters);
    const by = (cls: string, verdict: string) => Number(c.byClass.find((x) => x.class === cls && x.verdict === verdict)?.value ?? 0n);
    // Counting live flows walks the map: do it at most every 30 s (idle CPU matters).
    if (Date.now() - this.liveFlows.at > 30000) this.liveFlows = { at: Date.now(), count: native().mapDump(this.dp.maps.sslwall_flows).length };
    const created = Number(c.flowsCreated), closed = Number(c.flowsClosed);
    return healthDocument({
      hostId: this.opts.hostId,
      tier: this.opts.tier,
      agentVersion: this.version,
      applied: this.status.applied,
      applyLatencyMs: this.status.applyLatencyMs,
      appliedAt: this.status.appliedAt,
      counters: {
        violationsReported: by('plaintext', 'reported'),
        violationsBlocked: by('plaintext', 'blocked'),
        flows: this.liveFlows.count,
        evictions: Math.max(0, created - closed - this.liveFlows.count),
      },
      connected: this.connected,
      watchRevision: this.watchRevision,
      lastError: this.status.lastError,
      features: { ...this.dp.features },
    });
  }
}
