// Documents in etcd (docs/etcd.md): the tier document the engine writes and every agent of the
// tier watches, the optional per-host override, and the agent's health report. Shared by the
// agent and the rollout engine; `schema` lets a later release migrate.
import { z } from 'zod';
import { ConfigSchema } from './config.js';

export const SCHEMA_VERSION = 1;

export const RolloutSchema = z.strictObject({
  /** Mode of hosts in the cohort. */
  mode: z.enum(['passive', 'active']),
  /** Share of the tier's hosts in the cohort, 0-100, in steps of 0.01. */
  percent: z.number().min(0).max(100),
  /** Mode of the hosts outside the cohort. */
  otherwise: z.enum(['off', 'passive']),
  /** Hashed with the host id to place hosts in buckets; keep it across stages of one rollout. */
  salt: z.string().min(1).max(128),
});

/** ed25519 signature of the engine over the rest of the document (rollout/signing.ts). */
export const SignatureSchema = z.strictObject({ keyId: z.string(), value: z.string() });

/** A tier name (also an etcd key segment). */
export const TierNameSchema = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'letters, digits, . _ - (at most 64)');
/** A host id (also an etcd key segment): /etc/machine-id, a hostname, or what --host-id gives. */
export const HostIdSchema = z.string().min(1).max(253);

// kind and tier (or host) are part of what is signed, so a document copied to another key is
// refused as misplaced rather than taken for that key's own (docs/etcd.md, "What is signed").
export const TierDocumentSchema = z.strictObject({
  schema: z.literal(SCHEMA_VERSION).default(SCHEMA_VERSION),
  signature: SignatureSchema.optional(),
  kind: z.literal('tier'),
  tier: TierNameSchema,
  version: z.number().int().min(0),
  /** The agent config; its `mode` is replaced by the rollout's decision for each host. */
  config: ConfigSchema,
  rollout: RolloutSchema,
});

/**
 * A tier document as the engine reads it back (the head, history records): the place fields may
 * be missing from documents written before they existed, or by hand. The engine writes over such
 * a head; agents never accept one (they parse with TierDocumentSchema).
 */
export const StoredTierDocumentSchema = TierDocumentSchema.partial({ kind: true, tier: true });

/** A host's exception to its tier: a mode it must run, or a whole config, or both. */
export const HostOverrideSchema = z
  .strictObject({
    schema: z.literal(SCHEMA_VERSION).default(SCHEMA_VERSION),
    signature: SignatureSchema.optional(),
    kind: z.literal('override'),
    host: HostIdSchema,
    /** Grows with every override the engine writes for the host, also across removals (docs/etcd.md). */
    version: z.number().int().min(0),
    mode: z.enum(['off', 'passive', 'active']).optional(),
    config: ConfigSchema.optional(),
    reason: z.string().max(500).optional(),
  })
  .refine((o) => o.mode !== undefined || o.config !== undefined, { message: 'an override needs a mode or a config' });

// Every string is bounded: the engine keeps these documents in memory and copies parts of them
// into the checks it stores, so no agent may make either large (docs/security-signatures.md).
const short = z.string().max(64);
export const HEALTH_MESSAGE_MAX = 1000;
/** Warnings in a health report (plaintext control plane, agent/self.ts): at most 8, each bounded. */
export const HEALTH_WARNINGS_MAX = 8;
export const HEALTH_WARNING_MAX = 200;
const time = z.string().max(40);

export const HealthSchema = z.object({
  schema: z.literal(SCHEMA_VERSION),
  hostId: HostIdSchema,
  tier: TierNameSchema,
  agentVersion: short,
  /** Tier document version in force (null: none applied yet). */
  configVersion: z.number().int().nullable(),
  /** etcd revision of that document (mod revision). */
  configRevision: z.number().int().nullable(),
  overrideVersion: z.number().int().nullable(),
  mode: z.enum(['off', 'passive', 'active']),
  inCohort: z.boolean(),
  bucket: z.number().int(),
  applyLatencyMs: z.number().nullable(),
  appliedAt: time.nullable(),
  counters: z.object({
    violationsReported: z.number(),
    violationsBlocked: z.number(),
    /** Of those, violations whose client was a remote peer (connecting to a port here); 0 from older agents. */
    remoteViolationsReported: z.number().default(0),
    remoteViolationsBlocked: z.number().default(0),
    /** Flows joined midway that never showed TLS framing in both directions (allowed, not tls); absent from older agents. */
    midstreamUnknown: z.number().optional(),
    flows: z.number(),
    evictions: z.number(),
  }),
  etcd: z.object({ connected: z.boolean(), watchRevision: z.number().int().nullable() }),
  lastError: z.object({ code: short, message: z.string().max(HEALTH_MESSAGE_MAX), revision: z.number().int().nullable(), at: time }).nullable(),
  features: z.record(short, z.union([z.string().max(256), z.boolean()])).refine((f) => Object.keys(f).length <= 64, { message: 'at most 64 features' }),
  /** Problems the agent cannot fix itself but an operator should (none from older agents). */
  warnings: z.array(z.string().max(HEALTH_WARNING_MAX)).max(HEALTH_WARNINGS_MAX).default([]),
  updatedAt: time,
});

/** One version in a tier's history (tiers/<tier>/history/<version>): what was written, by whom and why. */
export const VersionRecordSchema = z.object({
  version: z.number().int(),
  author: z.string(),
  message: z.string(),
  time: z.string(),
  /** mod revision of the head this version replaced (0: the first version). */
  replacedRevision: z.number().int(),
  document: StoredTierDocumentSchema,
});

export type Rollout = z.infer<typeof RolloutSchema>;
export type TierDocument = z.infer<typeof TierDocumentSchema>;
export type StoredTierDocument = z.infer<typeof StoredTierDocumentSchema>;
export type HostOverride = z.infer<typeof HostOverrideSchema>;
export type Health = z.infer<typeof HealthSchema>;
export type VersionRecord = z.infer<typeof VersionRecordSchema>;
