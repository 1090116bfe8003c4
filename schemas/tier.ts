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

export const TierDocumentSchema = z.strictObject({
  schema: z.literal(SCHEMA_VERSION).default(SCHEMA_VERSION),
  signature: SignatureSchema.optional(),
  version: z.number().int().min(0),
  /** The agent config; its `mode` is replaced by the rollout's decision for each host. */
  config: ConfigSchema,
  rollout: RolloutSchema,
});

/** A host's exception to its tier: a mode it must run, or a whole config, or both. */
export const HostOverrideSchema = z
  .strictObject({
    schema: z.literal(SCHEMA_VERSION).default(SCHEMA_VERSION),
    signature: SignatureSchema.optional(),
    version: z.number().int().min(0).default(0),
    mode: z.enum(['off', 'passive', 'active']).optional(),
    config: ConfigSchema.optional(),
    reason: z.string().max(500).optional(),
  })
  .refine((o) => o.mode !== undefined || o.config !== undefined, { message: 'an override needs a mode or a config' });

export const HealthSchema = z.object({
  schema: z.literal(SCHEMA_VERSION),
  hostId: z.string(),
  tier: z.string(),
  agentVersion: z.string(),
  /** Tier document version in force (null: none applied yet). */
  configVersion: z.number().int().nullable(),
  /** etcd revision of that document (mod revision). */
  configRevision: z.number().int().nullable(),
  overrideVersion: z.number().int().nullable(),
  mode: z.enum(['off', 'passive', 'active']),
  inCohort: z.boolean(),
  bucket: z.number().int(),
  applyLatencyMs: z.number().nullable(),
  appliedAt: z.string().nullable(),
  counters: z.object({
    violationsReported: z.number(),
    violationsBlocked: z.number(),
    flows: z.number(),
    evictions: z.number(),
  }),
  etcd: z.object({ connected: z.boolean(), watchRevision: z.number().int().nullable() }),
  lastError: z.object({ code: z.string(), message: z.string(), revision: z.number().int().nullable(), at: z.string() }).nullable(),
  features: z.record(z.string(), z.union([z.string(), z.boolean()])),
  updatedAt: z.string(),
});

/** One version in a tier's history (tiers/<tier>/history/<version>): what was written, by whom and why. */
export const VersionRecordSchema = z.object({
  version: z.number().int(),
  author: z.string(),
  message: z.string(),
  time: z.string(),
  /** mod revision of the head this version replaced (0: the first version). */
  replacedRevision: z.number().int(),
  document: TierDocumentSchema,
});

export type Rollout = z.infer<typeof RolloutSchema>;
export type TierDocument = z.infer<typeof TierDocumentSchema>;
export type HostOverride = z.infer<typeof HostOverrideSchema>;
export type Health = z.infer<typeof HealthSchema>;
export type VersionRecord = z.infer<typeof VersionRecordSchema>;
