// Tier config versions in etcd. The head (the key agents watch) is written together with its
// history record and an audit entry in one transaction that compares the head's revision
// (compare-and-swap: a concurrent writer gets SSLWALL_E_CONFLICT) and, on the engine, the
// leader key (fencing: a deposed leader's write fails), and requires that the history record
// does not exist yet (history is write-once: create revision 0). Every document is validated
// with the shared zod schema and signed, naming its kind, its tier or host and its version,
// before it is written.
import type { Etcd3 } from 'etcd3';
import { z } from 'zod';
import { ConfigSchema, describeIssues } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';
import type { EngineKeys } from '../schemas/keys.js';
import {
  HostOverrideSchema,
  StoredTierDocumentSchema,
  type TierDocument,
  TierDocumentSchema,
  type VersionRecord,
  VersionRecordSchema,
} from '../schemas/tier.js';
import type { Signer } from './signing.js';

/** Another key written in the same transaction (compare-and-swap on its mod revision); its value may name the new version. */
export interface SideWrite {
  key: string;
  expectMod: number;
  value: (version: number) => string;
}

/** A condition added to every write: the engine's leader fencing. */
export interface Fence {
  key: string;
  modRevision: number;
}

export interface Head {
  doc: TierDocument;
  modRevision: number;
}

/** What a caller gives: the config and rollout fields; kind, tier, version and signature are the store's. */
export type DocumentInput = Pick<TierDocument, 'config' | 'rollout'>;

export function validateInput(input: unknown, where: string): DocumentInput {
  const r = z.strictObject({ config: ConfigSchema, rollout: TierDocumentSchema.shape.rollout }).safeParse(input);
  if (!r.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${where}: ${describeIssues(r.error)}`);
  return r.data;
}

export class ConfigStore {
  constructor(
    private readonly client: Etcd3,
    private readonly keys: EngineKeys,
    private readonly signer: Signer,
    private readonly fence: () => Fence | null = () => null,
  ) {}

  async head(tier: string): Promise<Head | null> {
    const r = await this.client.kv.range({ key: Buffer.from(this.keys.tierConfig(tier)) });
    const kv = r.kvs[0];
    if (!kv) return null;
    // A head without its place fields (written by hand, or before they existed) is still this
    // tier's head to the engine, which writes over it; agents refuse it as it is.
    const doc = StoredTierDocumentSchema.parse(JSON.parse(kv.value.toString()));
    return { doc: { ...doc, kind: doc.kind ?? 'tier', tier: doc.tier ?? tier }, modRevision: Number(kv.mod_revision) };
  }

  async history(tier: string): Promise<VersionRecord[]> {
    const all = await this.client.getAll().prefix(this.keys.historyPrefix(tier)).strings();
    return Object.keys(all)
      .sort()
      .map((k) => VersionRecordSchema.parse(JSON.parse(all[k]!)));
  }

  /** The newest version in the tier's history, from its key alone (keys are zero-padded: they sort as numbers); 0 when none. */
  private async newestVersion(tier: string): Promise<number> {
    const keys = await this.client.getAll().prefix(this.keys.historyPrefix(tier)).sort('Key', 'Descend').limit(1).keys();
    return keys.length ? Number(keys[0]!.slice(this.keys.historyPrefix(tier).length)) || 0 : 0;
  }

  async version(tier: string, version: number): Promise<VersionRecord> {
    const v = await this.client.get(this.keys.history(tier, version)).string();
    if (!v) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no version ${version}; see: sslwall config history --tier ${tier}`);
    return VersionRecordSchema.parse(JSON.parse(v));
  }

  async tiers(): Promise<string[]> {
    const keys = await this.client.getAll().prefix(this.keys.tiersPrefix).keys();
    return [...new Set(keys.map((k) => k.slice(this.keys.tiersPrefix.length).split('/')[0]!).filter(Boolean))].sort();
  }

  /**
   * Write a new version on top of the head. expectRevision: the head's mod revision the caller
   * based its change on (0 = the tier must not exist yet; undefined = the current head, read now).
   */
  async write(
    tier: string,
    input: DocumentInput,
    meta: {
      author: string;
      message: string;
      expectRevision?: number;
      audit?: Record<string, unknown>;
      with?: SideWrite[];
      /** Keys that must still be at these revisions (an operator's write: the rollout state it saw). */
      unchanged?: Array<{ key: string; mod: number; what: string }>;
    },
  ): Promise<VersionRecord & { revision: number }> {
    const valid = validateInput(input, `tier ${tier}`);
    const head = await this.head(tier);
    const base = meta.expectRevision ?? head?.modRevision ?? 0;
    if (head && head.modRevision !== base) throw conflict(tier, base, head.modRevision);
    if (!head && base !== 0) throw conflict(tier, base, 0);
    // Above the newest history record too: a head written back by someone else (replayed, older)
    // must not make the engine reuse a version, which history (write-once) would refuse anyway.
    const version = Math.max(head?.doc.version ?? 0, await this.newestVersion(tier)) + 1;
    const doc = this.signer.sign(TierDocumentSchema.parse({ ...valid, kind: 'tier', tier, version }));
    const record: VersionRecord = {
      version,
      author: meta.author,
      message: meta.message,
      time: new Date().toISOString(),
      replacedRevision: base,
      document: doc,
    };

    const headKey = this.keys.tierConfig(tier);
    const historyKey = this.keys.history(tier, version);
    let txn = this.client.if(headKey, 'Mod', '==', base).and(historyKey, 'Create', '==', 0);
    const fence = this.fence();
    if (fence) txn = txn.and(fence.key, 'Mod', '==', fence.modRevision);
    for (const w of meta.with ?? []) txn = txn.and(w.key, 'Mod', '==', w.expectMod);
    for (const u of meta.unchanged ?? []) txn = txn.and(u.key, 'Mod', '==', u.mod);
    const res = await txn
      .then(
        this.client.put(headKey).value(JSON.stringify(doc)),
        this.client.put(historyKey).value(JSON.stringify(record)),
        this.client
          .put(this.keys.audit(tier))
          .value(JSON.stringify({ time: record.time, actor: meta.author, action: 'config_write', version, message: meta.message, ...meta.audit })),
        ...(meta.with ?? []).map((w) => this.client.put(w.key).value(w.value(version))),
      )
      .commit();
    if (!res.succeeded) {
      if (fence) {
        const f = await this.client.kv.range({ key: Buffer.from(fence.key) });
        if (Number(f.kvs[0]?.mod_revision ?? 0) !== fence.modRevision)
          throw new SslwallError('SSLWALL_E_NOT_LEADER', 'this engine is no longer the leader; its write was refused (fencing)');
      }
      for (const u of meta.unchanged ?? []) {
        const r = await this.client.kv.range({ key: Buffer.from(u.key) });
        if (Number(r.kvs[0]?.mod_revision ?? 0) !== u.mod)
          throw new SslwallError('SSLWALL_E_CONFLICT', `${u.what} changed meanwhile; nothing was written: read it again and retry`);
      }
      const h = await this.client.kv.range({ key: Buffer.from(historyKey) });
      if (h.kvs.length)
        throw new SslwallError(
          'SSLWALL_E_CONFLICT',
          `tier ${tier} already has a history record of version ${version} (${historyKey}), written meanwhile, and history is write-once; nothing was written: retry`,
        );
      const now = await this.head(tier);
      throw conflict(tier, base, now?.modRevision ?? 0);
    }
    return { ...record, revision: Number(res.header.revision) };
  }

  /** A new version whose content is that of an old one. */
  async revert(
    tier: string,
    to: number,
    meta: { author: string; message?: string; expectRevision?: number; unchanged?: Array<{ key: string; mod: number; what: string }> },
  ): Promise<VersionRecord & { revision: number }> {
    const old = await this.version(tier, to);
    return this.write(
      tier,
      { config: old.document.config, rollout: old.document.rollout },
      {
        author: meta.author,
        message: meta.message ?? `revert to version ${to}`,
        expectRevision: meta.expectRevision,
        audit: { revertedTo: to },
        unchanged: meta.unchanged,
      },
    );
  }

  /** A fenced compare-and-swap of one key (the rollout state), with an audit entry. */
  async casPut(key: string, expectMod: number, value: string, audit: { tier: string; entry: Record<string, unknown> }): Promise<number> {
    let txn = this.client.if(key, 'Mod', '==', expectMod);
    const fence = this.fence();
    if (fence) txn = txn.and(fence.key, 'Mod', '==', fence.modRevision);
    const res = await txn
      .then(
        this.client.put(key).value(value),
        this.client.put(this.keys.audit(audit.tier)).value(JSON.stringify({ time: new Date().toISOString(), ...audit.entry })),
      )
      .commit();
    if (!res.succeeded) {
      if (fence) {
        const f = await this.client.kv.range({ key: Buffer.from(fence.key) });
        if (Number(f.kvs[0]?.mod_revision ?? 0) !== fence.modRevision)
          throw new SslwallError('SSLWALL_E_NOT_LEADER', 'this engine is no longer the leader; its write was refused (fencing)');
      }
      throw new SslwallError('SSLWALL_E_CONFLICT', `${key} changed meanwhile; read it again and retry`);
    }
    return Number(res.header.revision);
  }

  /** Write (signed) or remove a host's override of its tier; audited under the host's tier "hosts". */
  async setOverride(
    hostId: string,
    override: { mode?: 'off' | 'passive' | 'active'; config?: unknown; reason?: string } | null,
    by: string,
  ): Promise<{ version: number } | null> {
    const key = this.keys.hostOverride(hostId);
    const seqKey = this.keys.overrideVersion(hostId);
    const [cur, seq] = await Promise.all([this.client.kv.range({ key: Buffer.from(key) }), this.client.kv.range({ key: Buffer.from(seqKey) })]);
    const mod = Number(cur.kvs[0]?.mod_revision ?? 0);
    const seqMod = Number(seq.kvs[0]?.mod_revision ?? 0);
    // Agents refuse an override older than one they applied, also after its removal: the highest
    // version written is kept beside the override (seqKey), so it outlives the override.
    const prevVersion = Math.max(
      cur.kvs[0] ? ((JSON.parse(cur.kvs[0].value.toString()) as { version?: number }).version ?? 0) : 0,
      seq.kvs[0] ? Number(seq.kvs[0].value.toString()) || 0 : 0,
    );
    let txn = this.client.if(key, 'Mod', '==', mod).and(seqKey, 'Mod', '==', seqMod);
    const fence = this.fence();
    if (fence) txn = txn.and(fence.key, 'Mod', '==', fence.modRevision);
    const audit = this.client.put(this.keys.audit('_hosts')).value(
      JSON.stringify({
        time: new Date().toISOString(),
        actor: by,
        action: override ? 'override_set' : 'override_removed',
        host: hostId,
        reason: override?.reason,
      }),
    );
    if (!override) {
      const res = await txn.then(this.client.delete().key(key), audit).commit();
      if (!res.succeeded) throw new SslwallError('SSLWALL_E_CONFLICT', `the override of ${hostId} changed meanwhile; retry`);
      return null;
    }
    const parsed = HostOverrideSchema.safeParse({ ...override, kind: 'override', host: hostId, version: prevVersion + 1 });
    if (!parsed.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `override of ${hostId}: ${describeIssues(parsed.error)}`);
    const doc = this.signer.sign(parsed.data);
    const res = await txn.then(this.client.put(key).value(JSON.stringify(doc)), this.client.put(seqKey).value(String(parsed.data.version)), audit).commit();
    if (!res.succeeded) throw new SslwallError('SSLWALL_E_CONFLICT', `the override of ${hostId} changed meanwhile; retry`);
    return { version: parsed.data.version };
  }

  async audit(tier: string, limit = 50): Promise<Array<Record<string, unknown>>> {
    const all = await this.client.getAll().prefix(this.keys.auditPrefix(tier)).sort('Key', 'Descend').limit(limit).strings();
    return Object.keys(all)
      .sort()
      .map((k) => JSON.parse(all[k]!) as Record<string, unknown>);
  }
}

function conflict(tier: string, expected: number, actual: number): SslwallError {
  return new SslwallError(
    'SSLWALL_E_CONFLICT',
    `tier ${tier} changed meanwhile (expected head revision ${expected}, found ${actual}); read it again (sslwall config get --tier ${tier}) and retry`,
  );
}
