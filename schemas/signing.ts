// ed25519 signatures over tier documents. The signed bytes are the canonical JSON of the
// document without its `signature` field (keys sorted at every level, no whitespace), so the
// engine and every agent compute the same bytes from the same parsed document. The engine signs
// (rollout/signing.ts); agents and tools verify, here.
import { createHash, createPublicKey, type KeyObject, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SslwallError } from './errors.js';

export interface Signature {
  keyId: string;
  value: string; // base64
}

export function canonicalJson(value: unknown): string {
  // undefined in an array is null, as in JSON.stringify and so in the document an agent parses.
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function keyId(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
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
    if (!sig || typeof sig.value !== 'string')
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} is not signed; only documents written by the rollout engine are accepted`);
    if (sig.keyId !== this.keyId)
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} is signed with key ${sig.keyId}, not with ${this.keyId} (--verify-key)`);
    const { signature: _drop, ...body } = doc as Record<string, unknown>;
    if (!verify(null, Buffer.from(canonicalJson(body)), this.publicKey, Buffer.from(sig.value, 'base64'))) {
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} has a bad signature (key ${sig.keyId}); it was altered after signing`);
    }
  }
}
