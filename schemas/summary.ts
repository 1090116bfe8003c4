// The violation summary an agent publishes (summary/<tier>/<host>, docs/etcd.md): which local
// service made or accepted each plaintext connection, with whom, and how often — aggregated and
// bounded on the host, so the engine can answer a service owner's "is my traffic affected?" by
// service, destination and host without a write per violation. Shared by the agent (which
// builds it) and the engine (which reads every host's and serves the fleet's view).
import { z } from 'zod';
import { HostIdSchema, SCHEMA_VERSION, TierNameSchema } from './tier.js';

/** Entries kept per host: the most frequent; the rest are counted in `dropped`. */
export const SUMMARY_MAX_ENTRIES = 50;
/** The agent publishes at most this often, and only when something changed. */
export const SUMMARY_MIN_INTERVAL_MS = 30_000;

const time = z.string().max(40);

/** The local side of a violation: the service that made (client) or accepted (server) the connection. */
export const ServiceSchema = z.object({
  /** The systemd unit (`legacy-app.service`, `session-3.scope`), from the cgroup path; null outside one. */
  unit: z.string().max(256).nullable(),
  /** The cgroup v2 path below the root (`/system.slice/legacy-app.service`); null when not known. */
  cgroup: z.string().max(512).nullable(),
  /** The container id, when the cgroup is a container's (docker, containerd, cri-o, podman). */
  container: z.string().max(128).nullable(),
  /** Process name and id that opened the connection (clients); null when not known (servers, old flows). */
  comm: z.string().max(16).nullable(),
  pid: z.number().int().nullable(),
});

export const SummaryEntrySchema = z.object({
  service: ServiceSchema,
  /** client: the local service connected out (the host's own client); server: a remote peer connected in. */
  direction: z.enum(['client', 'server']),
  /** The other end. */
  remote: z.object({ addr: z.string().max(45), port: z.number().int().min(0).max(65535) }),
  /** The local port: the service's listening port (server), or 0 (client: ephemeral ports are not kept). */
  localPort: z.number().int().min(0).max(65535),
  /** reported: seen in passive mode (active mode would block it); blocked: stopped in active mode. */
  verdict: z.enum(['reported', 'blocked']),
  count: z.number().int().min(0),
  firstSeen: time,
  lastSeen: time,
});

export const SummarySchema = z.object({
  schema: z.literal(SCHEMA_VERSION),
  hostId: HostIdSchema,
  tier: TierNameSchema,
  /** When the agent started counting (its start). */
  since: time,
  updatedAt: time,
  entries: z.array(SummaryEntrySchema).max(SUMMARY_MAX_ENTRIES),
  /** Violations not in entries (beyond SUMMARY_MAX_ENTRIES distinct ones). */
  dropped: z.number().int().min(0),
});

export type Service = z.infer<typeof ServiceSchema>;
export type SummaryEntry = z.infer<typeof SummaryEntrySchema>;
export type Summary = z.infer<typeof SummarySchema>;
