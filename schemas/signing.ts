// ed25519 signatures over the documents the engine writes to etcd (tier documents, host
// overrides). The signed bytes are a fixed prefix and the canonical JSON of the document without
// its `signature` field (keys sorted at every level, no whitespace), so the engine and every
// agent compute the same bytes from the same parsed document. The body names its kind, its tier
// or host, and its version, so a signature vouches for where and when a document belongs, not
// only for its content (the agent checks those: agent/etcd-source.ts). The engine signs
// (rollout/signing.ts); agents and tools verify, here, against a set of keys so that keys rotate
// without a flag day (docs/etcd.md, "Rotating the signing key").
import { createHash, createPublicKey, type KeyObject, verify } from 'node:crypto';
import { readdirSync, readFileSync, type Stats, statSync } from 'node:fs';
import path from 'node:path';
import { SslwallError } from './errors.js';

export interface Signature {
  keyId: string;
  value: string; // base64
}

export function canonicalJson(value: unknown): string {
  return canonical(value, undefined);
}

// Loops and a plain sort rather than entries/filter/map/join: every agent canonicalizes every
// document it verifies, so this is on the per-change path. Object.keys().sort() orders by UTF-16
// code units, as a < b does.
function canonical(value: unknown, skip: string | undefined): string {
  if (Array.isArray(value)) {
    let out = '[';
    for (let i = 0; i < value.length; i++) {
      // undefined in an array is null, as in JSON.stringify and so in the document an agent parses.
      const v: unknown = value[i];
      out += (i ? ',' : '') + (v === undefined ? 'null' : canonical(v, undefined));
    }
    return `${out}]`;
  }
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).sort();
    let out = '{';
    for (const k of keys) {
      const v = obj[k];
      if (v === undefined || k === skip) continue;
      out += `${out.length > 1 ? ',' : ''}${JSON.stringify(k)}:${canonical(v, undefined)}`;
    }
    return `${out}}`;
  }
  return JSON.stringify(value);
}

/** Domain separation: these bytes are never a valid signature over anything else the key might sign. */
const SIGNED_PREFIX = 'sslwall-document-v1\n';

/** The bytes an ed25519 signature covers: the prefix and the canonical JSON of the document without `signature`. */
export function signedBytes(doc: object): Buffer {
  return Buffer.from(SIGNED_PREFIX + canonical(doc, 'signature'));
}

export function keyId(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

function readKey(file: string): KeyObject {
  try {
    return createPublicKey(readFileSync(file));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_SIGNING_KEY', `cannot read the ed25519 verify key ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The key files a --verify-key source names (the file itself, or every *.pub file in a folder),
 * each with what it looks like now. A file source is stat'ed once: this runs on every check.
 */
function keyFiles(source: string): Array<{ file: string; st: Stats | undefined }> {
  let st: Stats;
  try {
    st = statSync(source);
  } catch (err) {
    throw new SslwallError('SSLWALL_E_SIGNING_KEY', `cannot read the verify key ${source}: ${(err as Error).message}`, { cause: err });
  }
  if (!st.isDirectory()) return [{ file: source, st }];
  return readdirSync(source)
    .filter((f) => f.endsWith('.pub'))
    .sort()
    .map((f) => {
      const file = path.join(source, f);
      return { file, st: statSync(file, { throwIfNoEntry: false }) };
    });
}

/** Checks signatures against a set of keys by key id; built from files and folders, it follows them as they change. */
export class Verifier {
  private keys = new Map<string, KeyObject>();
  /** What the key files looked like when read (names, sizes, mtimes): re-read only when it changes. */
  private seen = '';

  constructor(
    publicKeys: KeyObject[],
    private readonly sources: string[] = [],
  ) {
    for (const k of publicKeys) this.keys.set(keyId(k), k);
  }

  /** Files or folders (every *.pub in it) of verify keys; at least one key must be found. */
  static fromSources(sources: string[]): Verifier {
    const v = new Verifier([], sources);
    v.refresh();
    return v;
  }

  static fromFile(file: string): Verifier {
    return Verifier.fromSources([file]);
  }

  get keyIds(): string[] {
    return [...this.keys.keys()].sort();
  }

  /** Re-read the key files when any was added, removed or changed: a key added to (or removed from) a folder counts from the next document on. */
  private refresh(): void {
    if (this.sources.length === 0) return;
    const files = this.sources.flatMap(keyFiles);
    let seen = '';
    for (const { file, st } of files) seen += `${file}:${st?.size}:${st?.mtimeMs}\n`;
    if (seen === this.seen) return;
    if (files.length === 0)
      throw new SslwallError('SSLWALL_E_SIGNING_KEY', `no verify key (*.pub) found in ${this.sources.join(', ')}; every document would be refused`);
    const keys = new Map<string, KeyObject>();
    for (const { file } of files) {
      const k = readKey(file);
      keys.set(keyId(k), k);
    }
    this.keys = keys;
    this.seen = seen;
  }

  /** Throws SSLWALL_E_CONFIG_SIGNATURE unless raw (a parsed JSON object) carries a valid signature by one of our keys. */
  check(raw: unknown, where: string): void {
    const doc = raw as { signature?: Partial<Signature> } | null;
    const sig = doc && typeof doc === 'object' ? doc.signature : undefined;
    if (!sig || typeof sig.value !== 'string')
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} is not signed; only documents written by the rollout engine are accepted`);
    this.refresh();
    const key = typeof sig.keyId === 'string' ? this.keys.get(sig.keyId) : undefined;
    if (!key)
      throw new SslwallError(
        'SSLWALL_E_CONFIG_SIGNATURE',
        `${where} is signed with key ${sig.keyId}, not with ${this.keyIds.join(' or ')} (--verify-key); add the engine's new verify key to this agent`,
      );
    if (!verify(null, signedBytes(doc as object), key, Buffer.from(sig.value, 'base64'))) {
      throw new SslwallError('SSLWALL_E_CONFIG_SIGNATURE', `${where} has a bad signature (key ${sig.keyId}); it was altered after signing`);
    }
  }
}
