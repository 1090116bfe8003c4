// What one host enforces, from its tier document and its optional override.

import { cohortBucket } from '../schemas/cohort.js';
import type { Config } from '../schemas/config.js';
import type { HostOverride, TierDocument } from '../schemas/tier.js';

export interface Effective {
  config: Config;
  inCohort: boolean;
  bucket: number;
}

export function effectiveConfig(tier: TierDocument, override: HostOverride | null, hostId: string): Effective {
  const bucket = cohortBucket(hostId, tier.rollout.salt);
  const inCohort = bucket < Math.round(tier.rollout.percent * 100);
  const base = override?.config ?? tier.config;
  const mode = override?.mode ?? (inCohort ? tier.rollout.mode : tier.rollout.otherwise);
  return { config: { ...base, mode }, inCohort, bucket };
}
