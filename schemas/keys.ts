// The etcd key layout, the one place it is written down (docs/etcd.md lists the keys): what
// agents read and write (etcdKeys), and the engine's keys beside them (engineKeys).

/** The prefix every sslwall key lives under unless --etcd-prefix says otherwise. */
export const DEFAULT_ETCD_PREFIX = '/sslwall/';

/** The etcd key layout under a prefix (default DEFAULT_ETCD_PREFIX). */
export function etcdKeys(prefix = DEFAULT_ETCD_PREFIX) {
  const p = prefix.endsWith('/') ? prefix : `${prefix}/`;
  return {
    prefix: p,
    tierConfig: (tier: string) => `${p}tiers/${tier}/config`,
    hostOverride: (hostId: string) => `${p}hosts/${hostId}/override`,
    health: (tier: string, hostId: string) => `${p}health/${tier}/${hostId}`,
    healthPrefix: (tier: string) => `${p}health/${tier}/`,
    /** The agent's violation summary (schemas/summary.ts), under its health lease. */
    summary: (tier: string, hostId: string) => `${p}summary/${tier}/${hostId}`,
    summaryPrefix: `${p}summary/`,
  };
}

export function engineKeys(prefix = DEFAULT_ETCD_PREFIX) {
  const k = etcdKeys(prefix);
  return {
    ...k,
    history: (tier: string, version: number) => `${k.prefix}tiers/${tier}/history/${String(version).padStart(10, '0')}`,
    historyPrefix: (tier: string) => `${k.prefix}tiers/${tier}/history/`,
    rollout: (tier: string) => `${k.prefix}tiers/${tier}/rollout`,
    tiersPrefix: `${k.prefix}tiers/`,
    audit: (tier: string) => `${k.prefix}audit/${tier}/${new Date().toISOString()}-${Math.random().toString(36).slice(2, 8)}`,
    auditPrefix: (tier: string) => `${k.prefix}audit/${tier}/`,
    alerts: (tier: string) => `${k.prefix}alerts/${tier}/`,
    alert: (tier: string, fingerprint: string) => `${k.prefix}alerts/${tier}/${fingerprint}`,
    leader: `${k.prefix}engine/leader`,
    /** Tiers whose rollout the leader steps (value: the rollout id); a read per tick that does not grow with history. */
    rolloutIndex: (tier: string) => `${k.prefix}engine/rollouts/${tier}`,
    rolloutIndexPrefix: `${k.prefix}engine/rollouts/`,
    /** The highest override version written for a host, kept after the override is removed (rollout/store.ts). */
    overrideVersion: (hostId: string) => `${k.prefix}engine/override-versions/${hostId}`,
  };
}
export type EngineKeys = ReturnType<typeof engineKeys>;
