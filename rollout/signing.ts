// The engine's side of signatures: the signing key and the key pair `sslwall keygen` makes.
// What is signed, and how it is checked, is in schemas/signing.ts.
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SslwallError } from '../schemas/errors.js';
import { keyId, type Signature, signedBytes } from '../schemas/signing.js';

export class Signer {
  readonly keyId: string;
  constructor(private readonly privateKey: KeyObject) {
    this.keyId = keyId(createPublicKey(privateKey));
  }
  static fromFile(file: string): Signer {
    try {
      return new Signer(createPrivateKey(readFileSync(file)));
    } catch (err) {
      throw new SslwallError(
        'SSLWALL_E_SIGNING_KEY',
        `cannot read the ed25519 signing key ${file}: ${(err as Error).message}; make one with: sslwall keygen --out DIR`,
        { cause: err },
      );
    }
  }
  /** The document with its signature field set; it must name its kind and version (and its tier or host: the schema checks). */
  sign<const T extends { kind: 'tier' | 'override'; version: number }>(doc: T): T & { signature: Signature } {
    const { signature: _drop, ...body } = doc as T & { signature?: Signature };
    const value = sign(null, signedBytes(body), this.privateKey).toString('base64');
    return { ...(body as T), signature: { keyId: this.keyId, value } };
  }
}

/** A new key pair: DIR/signing.key (PKCS#8, 0600) for the engine, DIR/verify.pub (SPKI) for agents. */
export function generateKeyPair(dir: string): { signingKey: string; verifyKey: string; keyId: string } {
  mkdirSync(dir, { recursive: true });
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const signingKey = path.join(dir, 'signing.key');
  const verifyKey = path.join(dir, 'verify.pub');
  writeFileSync(signingKey, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  writeFileSync(verifyKey, publicKey.export({ type: 'spki', format: 'pem' }));
  return { signingKey, verifyKey, keyId: keyId(publicKey) };
}
