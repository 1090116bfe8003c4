// ed25519 signatures over tier documents. The signed bytes are the canonical JSON of the
// document without its `signature` field (keys sorted at every level, no whitespace), so the
// engine and every agent compute the same bytes from the same parsed document.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { SslwallError } from '../agent/errors.js';

export interface Signature {
  keyId: string;
  value: string; // base64
}

export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function keyId(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

export class Signer {
  readonly keyId: string;
  constructor(private readonly privateKey: KeyObject) {
    this.keyId = keyId(createPublicKey(privateKey));
  }
  static fromFile(file: string): Signer {
    try {
      return new Signer(createPrivateKey(readFileSync(file)));
    } catch (err) {
      throw new SslwallError('SSLWALL_E_SIGNING_KEY', `cannot read the ed25519 signing key ${file}: ${(err as Error).message}; make one with: sslwall keygen --out DIR`, { cause: err });
    }
  }
  /** The document with its signature field set. */
  sign<T extends object>(doc: T): T & { signature: Signature } {
    const { signature: _drop, ...body } = doc as T & { signature?: Signature };
    const value = sign(null, Buffer.from(canonicalJson(body)), this.privateKey).toString('base64');
    return { ...(body as T), signature: { keyId: this.keyId, value } };
  }
}

export class Verifier {
  readonly keyId: string;
  constructor(private readonly publicKey: KeyObject) {
    this.keyId = keyId(publicKey);
  }
  static fromFile(file: string): Verifier {
    try {
      return new Verifier(createPublicKey(readFileSync(file)));
    } catch (err) {
      throw new SslwallError('SSLWALL_E_SIGNING_KEY', `cannot read the ed25519 verify key ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  /** Throws SSLWALL_E_CONFIG_SIGNATURE unless raw (a parsed JSON object) carries a valid signature of ours. */
  check(raw: unknown, where: string): void {
    const doc = raw as { signature?: Partial<Signature> } | null;
    const sig = doc && typeof doc === 'object' ? doc.signature : undefined;
    if (!sig || typeof sig.value !== 'string') throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} is not signed; only documents written by the rollout engine are accepted`);
    if (sig.keyId !== this.keyId) throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} is signed with key ${sig.keyId}, not with ${this.keyId} (--verify-key)`);
    const { signature: _drop, ...body } = doc as Record<string, unknown>;
    if (!verify(null, Buffer.from(canonicalJson(body)), this.publicKey, Buffer.from(sig.value, 'base64'))) {
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} has a bad signature (key ${sig.keyId}); it was altered after signing`);
    }
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
