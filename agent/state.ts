// Last known good config on disk: written atomically (write, fsync, rename) after every apply,
// read at start when the configured source is unusable.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../schemas/config.js';
import type { HostOverride, TierDocument } from '../schemas/tier.js';
import { parseConfigText } from './config-file.js';

export function lastGoodPath(stateDir: string): string {
  return path.join(stateDir, 'last-good.json');
}

/** Where an applied config came from: enough to report it in health after a restart. */
export interface AppliedMeta {
  source: 'file' | 'etcd';
  tierVersion: number | null;
  revision: number | null;
  overrideVersion: number | null;
  inCohort: boolean;
  bucket: number;
  /**
   * The highest tier document and override versions applied so far (absent: none, or a file
   * written before they were kept). Kept here, with the last good config, so that an agent
   * refuses a replayed older document also after a restart; the override's survives the
   * override's removal.
   */
  highestTierVersion?: number;
  highestOverrideVersion?: number;
  /**
   * The documents the config was made of (etcd source), kept so that a later invalid tier
   * document or override is refused on its own while the other still applies, also after a
   * restart (agent/etcd-source.ts decide).
   */
  documents?: AppliedDocuments;
}

export interface AppliedDocuments {
  tier: TierDocument;
  /** etcd mod revision of that tier document. */
  tierRevision: number;
  override: HostOverride | null;
}

/** The meta as log fields: the documents are long and already logged when they arrive. */
export function metaFields({ documents: _documents, ...fields }: AppliedMeta): Omit<AppliedMeta, 'documents'> {
  return fields;
}

export interface LastGood {
  config: Config;
  meta: AppliedMeta;
  savedAt: string;
}

export function saveLastGood(stateDir: string, config: Config, meta: AppliedMeta): void {
  mkdirSync(stateDir, { recursive: true });
  const file = lastGoodPath(stateDir);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify({ savedAt: new Date().toISOString(), meta, config }, null, 2)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  // The rename is durable only once the folder entry is on disk too.
  const dirFd = openSync(stateDir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

/** The last good config, or null when there is none or it is unreadable (then nothing is trusted). */
export function loadLastGood(stateDir: string): LastGood | null {
  const file = lastGoodPath(stateDir);
  if (!existsSync(file)) return null;
  try {
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { config: unknown; meta: AppliedMeta; savedAt: string };
    return { config: parseConfigText(JSON.stringify(doc.config), file), meta: doc.meta, savedAt: doc.savedAt };
  } catch {
    return null;
  }
}
