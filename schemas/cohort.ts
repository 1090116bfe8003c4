// Which hosts of a tier are in the enforced cohort. Deterministic and reproducible by any tool:
//   bucket = first 4 bytes (big-endian) of SHA-256(salt + "\n" + hostId), mod 10000
//   in cohort  <=>  bucket < round(percent * 100)
// Raising the percentage only adds hosts (a bucket below the old bound is below the new one);
// changing the salt reshuffles everybody. Test vectors: docs/etcd.md.
import { createHash } from 'node:crypto';

export const BUCKETS = 10000;

export function cohortBucket(hostId: string, salt: string): number {
  return createHash('sha256').update(`${salt}\n${hostId}`).digest().readUInt32BE(0) % BUCKETS;
}

export function inCohort(hostId: string, salt: string, percent: number): boolean {
  return cohortBucket(hostId, salt) < Math.round(percent * 100);
}
