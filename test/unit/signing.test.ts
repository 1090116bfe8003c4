// Canonical JSON and ed25519 signatures over tier documents and overrides (schemas/signing.ts,
// rollout/signing.ts), and the verify key set: several keys, folders of *.pub, rotation.

import assert from 'node:assert/strict';
import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { generateKeyPair, Signer } from '../../rollout/signing.js';
import { SslwallError } from '../../schemas/errors.js';
import { canonicalJson, signedBytes, Verifier } from '../../schemas/signing.js';

test('canonical JSON sorts keys at every level and has no whitespace', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [3, { z: 0, y: 1 }], c: null } }), '{"a":{"c":null,"d":[3,{"y":1,"z":0}]},"b":1}');
  assert.equal(canonicalJson({ B: 1, a: 2, _: 3, '10': 4, '9': 5 }), '{"10":4,"9":5,"B":1,"_":3,"a":2}', 'keys compare by UTF-16 code units, not numerically');
});

test('canonical JSON drops undefined fields but keeps null and array holes as JSON does', () => {
  assert.equal(canonicalJson({ a: undefined, b: null, c: [undefined, 1] }), '{"b":null,"c":[null,1]}');
  assert.equal(canonicalJson({ a: undefined }), '{}');
});

test("canonical JSON of scalars, empty containers and unicode is JSON.stringify's", () => {
  for (const v of [0, -1.5, 1e21, true, false, null, 'x', '', 'é€😀', 'line\nbreak "quoted" \\', [], {}])
    assert.equal(canonicalJson(v), JSON.stringify(v), JSON.stringify(v));
  assert.equal(canonicalJson({ é: 1, e: 2, '😀': 3 }), '{"e":2,"é":1,"😀":3}');
});

test('property: canonical JSON parses back to the value and ignores key order', () => {
  fc.assert(
    fc.property(fc.jsonValue(), (v) => {
      const text = canonicalJson(v);
      assert.deepEqual(JSON.parse(text), JSON.parse(JSON.stringify(v)));
      const shuffled = JSON.parse(text, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).reverse()) : x));
      assert.equal(canonicalJson(shuffled), text);
    }),
  );
});

function keyPair() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { signer: new Signer(privateKey), verifier: new Verifier([publicKey]), publicKey };
}

const doc = { kind: 'tier' as const, version: 3, tier: 'web', config: { mode: 'active', ports: [25, 587] }, rollout: { percent: 5, salt: 'é' } };
const refusedWith = (message: RegExp) => (err: unknown) =>
  err instanceof SslwallError && err.code === 'SSLWALL_E_CONFIG_SIGNATURE' && message.test(err.message);

test('a signed document verifies, also after a JSON round trip with keys reordered', () => {
  const { signer, verifier } = keyPair();
  const signed = signer.sign(doc);
  assert.equal(signed.signature.keyId, signer.keyId);
  assert.deepEqual(verifier.keyIds, [signer.keyId]);
  verifier.check(signed, 'doc');
  const reordered = { signature: signed.signature, rollout: { salt: 'é', percent: 5 }, config: signed.config, tier: 'web', version: 3, kind: 'tier' };
  verifier.check(JSON.parse(JSON.stringify(reordered)), 'doc');
});

test('signing again replaces the old signature rather than signing it', () => {
  const { signer, verifier } = keyPair();
  const twice = signer.sign(signer.sign(doc));
  verifier.check(twice, 'doc');
  assert.deepEqual(twice, signer.sign(doc));
});

test('any change after signing is detected', () => {
  const { signer, verifier } = keyPair();
  const signed = signer.sign(doc);
  const tampered = [
    { ...signed, version: 4 },
    { ...signed, version: 2 },
    { ...signed, tier: 'db' },
    { ...signed, kind: 'override' },
    { ...signed, config: { ...signed.config, mode: 'off' } },
    { ...signed, config: { ...signed.config, ports: [25] } },
    { ...signed, extra: true },
    { ...signed, signature: { ...signed.signature, value: Buffer.from('x'.repeat(64)).toString('base64') } },
  ];
  for (const t of tampered)
    assert.throws(
      () => verifier.check(t, 'tier web'),
      refusedWith(/^tier web has a bad signature \(key [0-9a-f]{16}\); it was altered after signing$/),
      JSON.stringify(t),
    );
});

test('unsigned documents and other keys are refused', () => {
  const { verifier } = keyPair();
  const other = keyPair().signer;
  assert.throws(() => verifier.check(doc, 'tier web'), refusedWith(/^tier web is not signed; only documents written by the rollout engine are accepted$/));
  assert.throws(() => verifier.check(null, 'tier web'), refusedWith(/is not signed/));
  assert.throws(
    () => verifier.check(other.sign(doc), 'tier web'),
    refusedWith(new RegExp(`^tier web is signed with key ${other.keyId}, not with ${verifier.keyIds[0]} \\(--verify-key\\); add the engine's new verify key`)),
  );
  // A signature made with another key but relabelled with ours is still refused.
  assert.throws(
    () => verifier.check({ ...other.sign(doc), signature: { ...other.sign(doc).signature, keyId: verifier.keyIds[0] } }, 'tier web'),
    refusedWith(/bad signature/),
  );
});

test('the signed bytes are a domain prefix and the canonical JSON without the signature', () => {
  const { signer, publicKey } = keyPair();
  const signed = signer.sign(doc);
  assert.equal(signedBytes(signed).toString(), `sslwall-document-v1\n${canonicalJson(doc)}`);
  assert.ok(verify(null, signedBytes(doc), publicKey, Buffer.from(signed.signature.value, 'base64')));
  assert.ok(!verify(null, Buffer.from(canonicalJson(doc)), publicKey, Buffer.from(signed.signature.value, 'base64')), 'not a signature over the bare JSON');
});

test('a verifier holds several keys: documents signed by any of them verify', () => {
  const a = keyPair();
  const b = keyPair();
  const both = new Verifier([a.publicKey, b.publicKey]);
  both.check(a.signer.sign(doc), 'doc');
  both.check(b.signer.sign(doc), 'doc');
  assert.deepEqual(both.keyIds, [a.signer.keyId, b.signer.keyId].sort());
});

test('a folder of *.pub keys is followed: a key added counts at once, a key removed is refused from then on', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sslwall-keys-'));
  try {
    const old = generateKeyPair(path.join(dir, 'old'));
    const next = generateKeyPair(path.join(dir, 'next'));
    const keys = path.join(dir, 'agent-keys');
    generateKeyPair(keys); // keys/verify.pub: a third key, and keys/signing.key, which is not read
    rmSync(path.join(keys, 'verify.pub'));
    writeFileSync(path.join(keys, 'old.pub'), readFileSync(old.verifyKey, 'utf8'));
    writeFileSync(path.join(keys, 'README'), 'not a key');
    const v = Verifier.fromSources([keys]);
    assert.deepEqual(v.keyIds, [old.keyId]);
    const byOld = Signer.fromFile(old.signingKey).sign(doc);
    const byNext = Signer.fromFile(next.signingKey).sign(doc);
    v.check(byOld, 'doc');
    assert.throws(() => v.check(byNext, 'doc'), refusedWith(/is signed with key/));
    writeFileSync(path.join(keys, 'next.pub'), readFileSync(next.verifyKey, 'utf8'));
    v.check(byNext, 'doc');
    v.check(byOld, 'doc');
    rmSync(path.join(keys, 'old.pub'));
    v.check(byNext, 'doc');
    assert.throws(() => v.check(byOld, 'doc'), refusedWith(new RegExp(`is signed with key ${old.keyId}, not with ${next.keyId}`)));
    rmSync(path.join(keys, 'next.pub'));
    assert.throws(
      () => v.check(byNext, 'doc'),
      (e: unknown) => e instanceof SslwallError && e.code === 'SSLWALL_E_SIGNING_KEY' && /no verify key/.test(e.message),
      'an emptied folder refuses everything, loudly',
    );
    assert.throws(
      () => Verifier.fromSources([path.join(dir, 'missing')]),
      (e: unknown) => e instanceof SslwallError && e.code === 'SSLWALL_E_SIGNING_KEY',
    );
    assert.throws(
      () => Verifier.fromSources([path.join(keys, 'README')]),
      (e: unknown) => e instanceof SslwallError && e.code === 'SSLWALL_E_SIGNING_KEY',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
