// The engine's etcd keys, beside the agents' (schemas/tier.ts etcdKeys). docs/etcd.md lists all.
import { etcdKeys } from '../schemas/tier.js';

export function engineKeys(prefix = '/sslwall/') {
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
  };
}
export type EngineKeys = ReturnType<typeof engineKeys>;
