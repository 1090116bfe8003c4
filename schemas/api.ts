// The rollout engine's HTTP API (docs/rollout.md#http-api): every request and response body,
// path parameter and query. The engine parses requests with these at its boundary and encodes
// its answers with them; rollout/client.ts parses the answers with the same schemas.
import { z } from 'zod';
import { ConfigSchema } from './config.js';
import { AnalysisSchema, RolloutStateSchema } from './rollout.js';
import { SummaryEntrySchema } from './summary.js';
import { HealthSchema, TierDocumentSchema, VersionRecordSchema } from './tier.js';

/** Every error answer: a stable code (schemas/errors.ts) and a message that says what to do. */
export const ErrorBodySchema = z.object({ code: z.string(), message: z.string() });

// ---- path parameters and queries ----

export const TierName = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'a tier is 1-64 of A-Z a-z 0-9 . _ -');
export const HostId = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'a host id is 1-128 of A-Z a-z 0-9 . _ : -');
export const RolloutAction = z.enum(['pause', 'resume', 'promote', 'abort', 'undo']);
export type RolloutAction = z.infer<typeof RolloutAction>;

export const TierParams = z.object({ tier: TierName });
export const HostParams = z.object({ host: HostId });
export const ActionParams = z.object({ tier: TierName, action: RolloutAction });
export const ConfigQuery = z.object({ version: z.coerce.number().int().min(1).optional() });
/** A page of history: the `limit` newest versions below `before` (the oldest version of the previous page), oldest first. */
export const HistoryQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  before: z.coerce.number().int().min(1).optional(),
});
export const AuditQuery = z.object({ limit: z.coerce.number().int().min(1).max(10000).default(50) });
export const PreviewQuery = z.object({ percent: z.coerce.number().min(0).max(100) });
/** The bounds of the service owners' answers (docs/dashboard.md): a page of results at most this long. */
export const VIOLATION_LIMITS = { page: 1000, series: 20, query: 256 } as const;
/** A query flag: present (?errors, ?errors=true, ?errors=1) or absent. */
const flag = z
  .enum(['', 'true', '1', 'false', '0'])
  .optional()
  .transform((v) => v !== undefined && v !== 'false' && v !== '0');
export const AgentsQuery = z.object({
  /** Only agents whose health reports an error. */
  errors: flag,
  /** Only agents not on the tier's head version. */
  behind: flag,
  /** Only agents whose host id contains this. */
  host: z.string().max(128).optional(),
  /** A page of the (filtered) agents; without a limit, all of them (what `sslwall agents` prints). */
  limit: z.coerce.number().int().min(1).max(VIOLATION_LIMITS.page).optional(),
  offset: z.coerce.number().int().min(0).default(0),
});

const SearchText = z.string().trim().min(1, 'give something to search for').max(VIOLATION_LIMITS.query);
/** GET /api/tiers/:tier/services: a page of the tier's services, most violations first. */
export const ServicesQuery = z.object({
  limit: z.coerce.number().int().min(1).max(VIOLATION_LIMITS.page).default(100),
  offset: z.coerce.number().int().min(0).default(0),
});
/** GET /api/violations: entries whose service, host or destination contains q. */
export const ViolationsQuery = ServicesQuery.extend({ q: SearchText, tier: TierName.optional() });
/** GET /api/violations/series: the sampled totals of the services whose name contains q. */
export const SeriesQuery = z.object({ q: SearchText, tier: TierName.optional(), max: z.coerce.number().int().min(1).max(VIOLATION_LIMITS.series).default(10) });

// ---- request bodies ----

export const PutConfigRequest = z.object({
  /** {"config":…,"rollout":…}, or a bare agent config (the engine completes the rollout fields). */
  document: z.record(z.string(), z.unknown()),
  message: z.string().optional(),
  /** The head's mod revision this change is based on (compare-and-swap); 0: the tier must be new. */
  expectRevision: z.number().int().min(0).optional(),
});

export const RevertRequest = z.object({ to: z.number().int().min(1), message: z.string().optional(), expectRevision: z.number().int().min(0).optional() });

export const OverrideRequest = z.object({
  mode: z.enum(['off', 'passive', 'active']).optional(),
  config: ConfigSchema.optional(),
  reason: z.string().max(500).optional(),
});

export const StartRolloutRequest = z.object({
  /** "passive:100,active:5" (schemas/rollout.ts parseStages). */
  stages: z.string(),
  /** "10m", "90s" (parseDuration). */
  bake: z.string().default('10m'),
  analysis: AnalysisSchema.optional(),
  otherwise: z.enum(['off', 'passive']).optional(),
});

/** pause, resume, promote, abort, undo; a bare POST without a body is allowed. */
export const ActionRequest = z.object({ reason: z.string().optional() }).default({});

/**
 * Bounds of one webhook call: what an alerts token may make the engine store. Alertmanager sends
 * one group per call (a handful of alerts); a label set is a few short strings.
 */
export const ALERT_LIMITS = { alerts: 100, labels: 32, nameChars: 128, valueChars: 1024, annotationChars: 4096 } as const;

const LabelSet = z
  .record(z.string().min(1).max(ALERT_LIMITS.nameChars), z.string().max(ALERT_LIMITS.valueChars))
  .refine((l) => Object.keys(l).length <= ALERT_LIMITS.labels, `at most ${ALERT_LIMITS.labels} labels`);

/** Alertmanager's webhook, format version 4 (fields the engine does not use are let through). */
export const AlertmanagerPayloadSchema = z.object({
  version: z.string().optional(),
  status: z.string().optional(),
  alerts: z
    .array(
      z.object({
        status: z.enum(['firing', 'resolved']),
        labels: LabelSet,
        annotations: z
          .record(z.string().max(ALERT_LIMITS.nameChars), z.string().max(ALERT_LIMITS.annotationChars))
          .refine((l) => Object.keys(l).length <= ALERT_LIMITS.labels, `at most ${ALERT_LIMITS.labels} annotations`)
          .optional(),
        startsAt: z.string().max(64).optional(),
        endsAt: z.string().max(64).optional(),
        fingerprint: z.string().max(64).optional(),
      }),
    )
    .max(ALERT_LIMITS.alerts, `at most ${ALERT_LIMITS.alerts} alerts in one call`),
});

/** DELETE /api/tiers/:tier/alerts: all of the tier's alerts, or the one of ?key=. */
export const AlertKey = z.string().regex(/^[0-9a-f]{64}$/, 'an alert key is the 64 hex digits `sslwall rollout alerts` shows');
export const ClearAlertsQuery = z.object({ key: AlertKey.optional() });

/** An alert the engine holds (etcd alerts/<tier>/<key>, under a lease). */
export const StoredAlertSchema = z.object({
  alertname: z.string(),
  /** Alertmanager's fingerprint, as sent: for finding the alert there, never as the key. */
  fingerprint: z.string().optional(),
  startsAt: z.string(),
  endsAt: z.string().optional(),
  labels: z.record(z.string(), z.string()),
  annotations: z.record(z.string(), z.string()).default({}),
  /** When the engine last received it firing. */
  receivedAt: z.string(),
});

// ---- response bodies ----

export const HealthzResponse = z.object({ ok: z.literal(true), leader: z.boolean() });
export const LeaderResponse = z.object({ id: z.string(), leader: z.string().nullable(), isLeader: z.boolean() });
export const AlertsResponse = z.object({ tiers: z.array(z.string()), firing: z.number().int(), resolved: z.number().int(), ignored: z.number().int() });
/** GET /api/tiers/:tier/alerts: each alert with its key and the seconds its lease has left. */
export const TierAlertsResponse = z.array(StoredAlertSchema.extend({ key: z.string(), expiresInS: z.number().int() }));
export const ClearAlertsResponse = z.object({ cleared: z.array(z.string()) });

/** The rollout state with live figures from agent health (what `rollout status` shows). */
export const RolloutView = RolloutStateSchema.extend({
  live: z.object({
    agents: z.number().int(),
    cohort: z.number().int(),
    applied: z.number().int(),
    bakeLeftMs: z.number().nullable(),
    leader: z.boolean(),
  }),
});

export const TiersResponse = z.array(
  z.object({
    tier: z.string(),
    version: z.number().int().nullable(),
    rollout: RolloutView.nullable(),
    agents: z.number().int(),
    /** The head's rollout fields: the mode of the cohort and its percentage (null: no valid head). */
    mode: z.enum(['passive', 'active']).nullable(),
    percent: z.number().nullable(),
    /** Why the head is not a valid document (SSLWALL_E_HEAD_INVALID); absent when it is. */
    headProblem: z.string().optional(),
  }),
);
/** The head document plus its mod revision (for expectRevision). */
export const HeadResponse = TierDocumentSchema.extend({ revision: z.number().int() });
/** A version written: its record plus the etcd revision of the write. */
export const WrittenResponse = VersionRecordSchema.extend({ revision: z.number().int() });
export const HistoryResponse = z.array(VersionRecordSchema);
export const AuditResponse = z.array(z.record(z.string(), z.unknown()));
export const OverrideResponse = z.object({ version: z.number().int() });
export const OverrideRemovedResponse = z.object({ removed: z.string() });

const PreviewHost = z.object({ hostId: z.string(), mode: z.enum(['off', 'passive', 'active']), violationsReported: z.number(), wouldBlock: z.boolean() });
/** One service of a tier (or of a preview's joining hosts): what its hosts' agents saw, summed. */
export const ServiceTotalsSchema = z.object({
  /** serviceName(): the unit, else the container, process name or cgroup. */
  service: z.string(),
  unit: z.string().nullable(),
  comm: z.string().nullable(),
  hosts: z.number().int(),
  /** Violations seen in passive mode (active mode would block them). */
  reported: z.number().int(),
  /** Connections stopped in active mode. */
  blocked: z.number().int(),
  lastSeen: z.string(),
  /** The most frequent remote ends. */
  destinations: z.array(z.object({ addr: z.string(), port: z.number().int(), count: z.number().int() })),
});
export const PreviewResponse = z.object({
  tier: z.string(),
  percent: z.number(),
  salt: z.string(),
  currentPercent: z.number(),
  joining: z.array(PreviewHost),
  wouldBlock: z.array(PreviewHost),
  /** The joining hosts' violations by service: what the bump would block, and for whom. */
  services: z.array(ServiceTotalsSchema),
});
export const ServicesResponse = z.object({
  tier: z.string(),
  /** Hosts of the tier with a summary. */
  hosts: z.number().int(),
  /** Services before the page. */
  total: z.number().int(),
  services: z.array(ServiceTotalsSchema),
});
/** One summary entry found by a search, with the host and tier whose agent reported it. */
export const ViolationHit = SummaryEntrySchema.extend({ tier: z.string(), hostId: z.string(), serviceName: z.string() });
export const ViolationsResponse = z.object({
  q: z.string(),
  /** Matching entries before the page. */
  total: z.number().int(),
  offset: z.number().int(),
  entries: z.array(ViolationHit),
});
export const SeriesResponse = z.object({
  q: z.string(),
  /** ms between samples. */
  intervalMs: z.number().int(),
  series: z.array(
    z.object({
      tier: z.string(),
      service: z.string(),
      /** Totals summed over the tier's hosts at each sample (counts since each agent started). */
      points: z.array(z.object({ t: z.number(), reported: z.number().int(), blocked: z.number().int() })),
    }),
  ),
});

/**
 * One agent as the engine knows it: its health report, when the engine last heard from it, and
 * whether it is behind the tier's head version.
 */
export const AgentView = HealthSchema.extend({
  /** When the engine last received this agent's report (its own clock; `updatedAt` is the agent's). */
  lastSeen: z.string(),
  /** Not on the tier's head version (null configVersion included). */
  behind: z.boolean(),
});
export const AgentsResponse = z.object({
  tier: z.string(),
  /** The tier's head version (null: the tier has no config). */
  headVersion: z.number().int().nullable(),
  /** Agents of the tier reporting health, before the filters. */
  total: z.number().int(),
  agents: z.array(AgentView),
});
/** GET /api/tiers/:tier/agents: the list with how many passed the filters, before the page. */
export const AgentsPageResponse = AgentsResponse.extend({ matched: z.number().int() });

export type AgentViewBody = z.infer<typeof AgentView>;
export type AgentsBody = z.infer<typeof AgentsResponse>;
export type AlertmanagerPayload = z.infer<typeof AlertmanagerPayloadSchema>;
export type AlertsResult = z.infer<typeof AlertsResponse>;
export type StoredAlert = z.infer<typeof StoredAlertSchema>;
export type TierAlerts = z.infer<typeof TierAlertsResponse>;
export type RolloutViewBody = z.infer<typeof RolloutView>;
export type PreviewBody = z.infer<typeof PreviewResponse>;
export type ServicesBody = z.infer<typeof ServicesResponse>;
export type ViolationsBody = z.infer<typeof ViolationsResponse>;
export type SeriesBody = z.infer<typeof SeriesResponse>;
