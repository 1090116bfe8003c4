// What an agent makes of a snapshot (agent/etcd-source.ts decide): a document signed for another
// tier or host is misplaced, one older than the highest applied a replay; the highest versions
// move on with every accepted snapshot and the override's outlives the override.

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { type Decision, decide, highestApplied } from '../../agent/etcd-source.js';
import type { Snapshot } from '../../agent/etcd-watch.js';
import { Signer } from '../../rollout/signing.js';
import { etcdKeys } from '../../schemas/keys.js';
import { Verifier } from '../../schemas/signing.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const signer = new Signer(privateKey);
const verifier = new Verifier([publicKey]);
const k = etcdKeys();
const keys = { tier: k.tierConfig('web'), override: k.hostOverride('host-1') };
const place = { tier: 'web', hostId: 'host-1' };
const none = { tier: null, override: null };

const tierDoc = (tier: string, version: number) =>
  signer.sign({
    kind: 'tier',
    tier,
    version,
    config: { mode: 'off', bypass: { ports: [22] } },
    rollout: { mode: 'active', percent: 100, otherwise: 'off', salt: 's' },
  });
const override = (host: string, version: number) => signer.sign({ kind: 'override', host, version, mode: 'passive' });
const kv = (doc: object, modRevision = 10) => ({ value: Buffer.from(JSON.stringify(doc)), modRevision });
const snap = (tier: object, over?: object): Snapshot => ({ tier: kv(tier), override: over ? kv(over, 11) : null, revision: 12 });

/** A refusal: of the whole snapshot, or of one document while the other still applies. */
function refused(d: Decision, code: string, message: RegExp): void {
  assert.notEqual(d.kind, 'none');
  const err = (d.kind === 'refused' ? d.err : (d as Extract<Decision, { kind: 'config' }>).refusals[0]) as { code: string; message: string };
  assert.ok(err, 'a refusal');
  assert.equal(err.code, code, err.message);
  assert.match(err.message, message);
}

const config = (d: Decision) => {
  assert.equal(d.kind, 'config');
  return d as Extract<Decision, { kind: 'config' }>;
};

test('a tier document signed for another tier is misplaced, whatever its version', () => {
  refused(decide(snap(tierDoc('db', 99)), keys, verifier, place, none), 'SSLWALL_E_CONFIG_MISPLACED', /tiers\/web\/config@10 was signed for tier db, not web/);
});

test("an override signed for another host is misplaced; the host's own is applied", () => {
  refused(
    decide(snap(tierDoc('web', 1), override('host-2', 5)), keys, verifier, place, none),
    'SSLWALL_E_CONFIG_MISPLACED',
    /hosts\/host-1\/override@11 was signed for host host-2, not host-1/,
  );
  const d = decide(snap(tierDoc('web', 1), override('host-1', 5)), keys, verifier, place, none);
  assert.equal(d.kind, 'config');
});

test('a version below the highest applied is a replay; the same version is fine; without a verifier the checks still hold', () => {
  for (const v of [verifier, null]) {
    refused(decide(snap(tierDoc('web', 3)), keys, v, place, { tier: 4, override: null }), 'SSLWALL_E_CONFIG_REPLAY', /has version 3, older than version 4/);
    assert.equal(decide(snap(tierDoc('web', 4)), keys, v, place, { tier: 4, override: null }).kind, 'config');
    refused(decide(snap(tierDoc('db', 4)), keys, v, place, none), 'SSLWALL_E_CONFIG_MISPLACED', /signed for tier db/);
  }
  refused(
    decide(snap(tierDoc('web', 4), override('host-1', 6)), keys, verifier, place, { tier: 4, override: 7 }),
    'SSLWALL_E_CONFIG_REPLAY',
    /version 6, older than version 7/,
  );
});

test('the highest versions move on with each accepted snapshot and the override one outlives the override', () => {
  const d1 = decide(snap(tierDoc('web', 2), override('host-1', 40)), keys, verifier, place, none);
  assert.equal(d1.kind, 'config');
  const m1 = (d1 as Extract<Decision, { kind: 'config' }>).meta;
  assert.deepEqual([m1.highestTierVersion, m1.highestOverrideVersion], [2, 40]);
  const d2 = decide(snap(tierDoc('web', 3)), keys, verifier, place, highestApplied(m1));
  const m2 = (d2 as Extract<Decision, { kind: 'config' }>).meta;
  assert.deepEqual([m2.tierVersion, m2.overrideVersion, m2.highestTierVersion, m2.highestOverrideVersion], [3, null, 3, 40]);
  assert.deepEqual(highestApplied(m2), { tier: 3, override: 40 });
  refused(decide(snap(tierDoc('web', 3), override('host-1', 40 - 1)), keys, verifier, place, highestApplied(m2)), 'SSLWALL_E_CONFIG_REPLAY', /override/);
});

test('the highest from a last good file written before they were kept is the version in force; a file source has none', () => {
  const meta = { source: 'etcd' as const, tierVersion: 5, revision: 9, overrideVersion: 2, inCohort: true, bucket: 0 };
  assert.deepEqual(highestApplied(meta), { tier: 5, override: 2 });
  assert.deepEqual(highestApplied({ ...meta, source: 'file' }), none);
  assert.deepEqual(highestApplied(undefined), none);
});

test('each document is judged on its own: a refused override leaves the one in force under the new tier document', () => {
  const first = config(decide(snap(tierDoc('web', 1), override('host-1', 5)), keys, verifier, place, none));
  assert.equal(first.config.mode, 'passive');
  const inForce = first.meta.documents!;
  // The override is replaced by one copied from another host; the tier document moves on.
  const d = config(decide(snap(tierDoc('web', 2), override('host-2', 9)), keys, verifier, place, highestApplied(first.meta), inForce));
  assert.equal(d.tierVersion, 2);
  assert.deepEqual([d.meta.tierVersion, d.meta.overrideVersion, d.config.mode], [2, 5, 'passive']);
  refused(d, 'SSLWALL_E_CONFIG_MISPLACED', /hosts\/host-1\/override@11 was signed for host host-2/);
  // Without one in force (a host that never had an override), the tier document applies alone.
  const alone = config(decide(snap(tierDoc('web', 2), override('host-2', 9)), keys, verifier, place, none));
  assert.deepEqual([alone.meta.overrideVersion, alone.config.mode], [null, 'active']);
  assert.equal(alone.refusals.length, 1);
});

test('a refused tier document leaves the one in force under a new override; with none in force the snapshot is refused', () => {
  const first = config(decide(snap(tierDoc('web', 3)), keys, verifier, place, none));
  assert.equal(first.config.mode, 'active');
  const garbage = { ...tierDoc('web', 4), version: 'four' };
  const d = config(decide(snap(garbage, override('host-1', 6)), keys, verifier, place, highestApplied(first.meta), first.meta.documents!));
  assert.deepEqual([d.meta.tierVersion, d.meta.revision, d.meta.overrideVersion, d.config.mode], [3, 10, 6, 'passive']);
  assert.equal(d.refusals.length, 1);
  assert.equal((d.refusals[0] as { code: string }).code, 'SSLWALL_E_CONFIG_SIGNATURE');
  // Both refused: the config in force stays, both are reported.
  const both = config(decide(snap(garbage, override('host-2', 7)), keys, verifier, place, highestApplied(d.meta), d.meta.documents!));
  assert.deepEqual([both.meta.tierVersion, both.meta.overrideVersion, both.config.mode], [3, 6, 'passive']);
  assert.equal(both.refusals.length, 2);
  refused(decide(snap(garbage), keys, verifier, place, none), 'SSLWALL_E_CONFIG_SIGNATURE', /tiers\/web\/config@10/);
});
