// The cohort: fixed vectors other tools can reproduce (docs/etcd.md), and monotonicity.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { effectiveConfig } from '../../agent/effective.js';
import { cohortBucket, inCohort } from '../../schemas/cohort.js';
import { TierDocumentSchema } from '../../schemas/tier.js';

// bucket = SHA-256(salt + "\n" + hostId)[0..4] big-endian mod 10000 — the same table is in docs/etcd.md.
export const VECTORS: Array<[string, string, number]> = [
  ['host-0001', 'salt-a', 3186],
  ['host-0002', 'salt-a', 6676],
  ['web-17.prod', '2026-11-rollout', 4257],
  ['db-3', '2026-11-rollout', 5450],
  ['4c1f7e2a9b8d4e6f8a0b1c2d3e4f5a6b', 'x', 7287],
];

test('fixed test vectors', () => {
  for (const [host, salt, bucket] of VECTORS) assert.equal(cohortBucket(host, salt), bucket, `${host}/${salt}`);
  assert.equal(inCohort('host-0001', 'salt-a', 31.86), false, 'bucket 3186 is not below 3186');
  assert.equal(inCohort('host-0001', 'salt-a', 31.87), true);
  assert.equal(inCohort('host-0001', 'salt-a', 0), false, '0 % takes nobody');
  assert.equal(inCohort('host-0001', 'salt-a', 100), true, '100 % takes everybody');
});

test('property: raising the percentage only adds hosts', () => {
  fc.assert(
    fc.property(
      fc.string({ minLength: 1, maxLength: 40 }),
      fc.string({ minLength: 1, maxLength: 20 }),
      fc.integer({ min: 0, max: 10000 }),
      fc.integer({ min: 0, max: 10000 }),
      (host, salt, a, b) => {
        const [lo, hi] = a < b ? [a / 100, b / 100] : [b / 100, a / 100];
        return !inCohort(host, salt, lo) || inCohort(host, salt, hi);
      },
    ),
    { numRuns: 2000 },
  );
});

test('the cohort share of 10,000 hosts is close to the percentage', () => {
  const hosts = Array.from({ length: 10000 }, (_, i) => `host-${i}`);
  for (const p of [1, 5, 25, 50]) {
    const n = hosts.filter((h) => inCohort(h, 'salt', p)).length;
    assert.ok(Math.abs(n - p * 100) < p * 100 * 0.2 + 30, `${p} %: ${n} hosts`);
  }
});

test('effective config: cohort hosts run rollout.mode, others rollout.otherwise; an override wins', () => {
  const tier = TierDocumentSchema.parse({
    kind: 'tier',
    tier: 'web',
    version: 3,
    config: { mode: 'off', bypass: { ports: [22] } },
    rollout: { mode: 'active', percent: 31.87, otherwise: 'passive', salt: 'salt-a' },
  });
  assert.equal(effectiveConfig(tier, null, 'host-0001').config.mode, 'active');
  assert.equal(effectiveConfig(tier, null, 'host-0002').config.mode, 'passive');
  assert.deepEqual(effectiveConfig(tier, null, 'host-0001').config.bypass.ports, [22]);
  assert.equal(effectiveConfig(tier, { schema: 1, kind: 'override', host: 'host-0001', version: 1, mode: 'off' }, 'host-0001').config.mode, 'off');
});
