// Canonical JSON and ed25519 signatures over tier documents (schemas/signing.ts, rollout/signing.ts).

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { Signer } from '../../rollout/signing.js';
import { SslwallError } from '../../schemas/errors.js';
import { canonicalJson, Verifier } from '../../schemas/signing.js';

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
  return { signer: new Signer(privateKey), verifier: new Verifier(publicKey) };
}

const doc = { version: 3, tier: 'web', config: { mode: 'active', ports: [25, 587] }, rollout: { percent: 5, salt: 'é' } };
const refusedWith = (message: RegExp) => (err: unknown) =>
  err instanceof SslwallError && err.code === 'SSLWALL_E_CONFIG_SIGNATURE' && message.test(err.message);

test('a signed document verifies, also after a JSON round trip with keys reordered', () => {
  const { signer, verifier } = keyPair();
  const signed = signer.sign(doc);
  assert.equal(signed.signature.keyId, signer.keyId);
  assert.equal(signer.keyId, verifier.keyId);
  verifier.check(signed, 'doc');
  const reordered = { signature: signed.signature, rollout: { salt: 'é', percent: 5 }, config: signed.config, tier: 'web', version: 3 };
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
    refusedWith(new RegExp(`^tier web is signed with key ${other.keyId}, not with ${verifier.keyId} \\(--verify-key\\)$`)),
  );
  // A signature made with another key but relabelled with ours is still refused.
  assert.throws(
    () => verifier.check({ ...other.sign(doc), signature: { ...other.sign(doc).signature, keyId: verifier.keyId } }, 'tier web'),
    refusedWith(/bad signature/),
  );
});
