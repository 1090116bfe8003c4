// Tier config versions in etcd. The head (the key agents watch) is written together with its
// history record and an audit entry in one transaction that compares the head's revision
// (compare-and-swap: a concurrent writer gets SSLWALL_E_CONFLICT) and, on the engine, the
// leader key (fencing: a leader step's writes carry the fence the step began with, so a deposed
// leader's write fails; operators' writes, which any replica takes, are compare-and-swap only), and requires that the history record
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
import { prefixEnd } from './agent-reports.js';
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

/** The head key as it is: a valid document, one that does not parse (problem), or none (revision 0). */
export interface HeadState {
  head: Head | null;
  modRevision: number;
  problem: string | null;
}

/** History versions kept per tier by default (docs/rollout.md "Retention"). */
export const HISTORY_KEEP = 100;
/** etcd refuses a transaction of more than 128 operations (--max-txn-ops): prune in batches below it. */
const PRUNE_BATCH = 100;

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
  ) {}

  /** The tier's head; SSLWALL_E_HEAD_INVALID when the key holds something that is not a tier document. */
  async head(tier: string): Promise<Head | null> {
    const h = await this.headState(tier);
    if (h.problem)
      throw new SslwallError(
        'SSLWALL_E_HEAD_INVALID',
        `the head of tier ${tier} (revision ${h.modRevision}) is not a valid document: ${h.problem}; replace it: sslwall config set --tier ${tier} --file F, or sslwall config revert --tier ${tier} --to V`,
      );
    return h.head;
  }

  /**
   * The head without judging it: an invalid head (written by hand, by an older engine, corrupted)
   * must not make every write to the tier fail, or no operator and no rollback could replace it.
   */
  async headState(tier: string): Promise<HeadState> {
    const r = await this.client.kv.range({ key: Buffer.from(this.keys.tierConfig(tier)) });
    const kv = r.kvs[0];
    if (!kv) return { head: null, modRevision: 0, problem: null };
    const modRevision = Number(kv.mod_revision);
    let json: unknown;
    try {
      json = JSON.parse(kv.value.toString());
    } catch {
      return { head: null, modRevision, problem: 'not JSON' };
    }
    const parsed = StoredTierDocumentSchema.safeParse(json);
    if (!parsed.success) return { head: null, modRevision, problem: describeIssues(parsed.error).slice(0, 500) };
    // A head without its place fields (written by hand, or before they existed) is still this
    // tier's head to the engine, which writes over it; agents refuse it as it is.
    const doc = parsed.data;
    return { head: { doc: { ...doc, kind: doc.kind ?? 'tier', tier: doc.tier ?? tier }, modRevision }, modRevision, problem: null };
  }

  /**
   * A page of the tier's history, oldest first: the `limit` newest versions below `before`
   * (all when undefined). One ranged read of at most `limit` keys, whatever the history's length.
   */
  async history(tier: string, opts: { limit?: number; before?: number } = {}): Promise<VersionRecord[]> {
    const prefix = this.keys.historyPrefix(tier);
    const end = opts.before !== undefined ? Buffer.from(this.keys.history(tier, opts.before)) : prefixEnd(prefix);
    const r = await this.client.kv.range({
      key: Buffer.from(prefix),
      range_end: end,
      limit: opts.limit ?? HISTORY_KEEP,
      sort_order: 'Descend',
      sort_target: 'Key',
    });
    return r.kvs.map((kv) => VersionRecordSchema.parse(JSON.parse(kv.value.toString()))).reverse();
  }

  /**
   * Delete the tier's oldest history records beyond the newest `keep`, never the head's version
   * nor `protect` (the baseline of the tier's rollout, which a rollback or undo writes back).
   * Leader only: each batch is one transaction fenced by the leader key. Returns how many went.
   */
  async pruneHistory(tier: string, keep: number, protect: number[], fence: Fence): Promise<number> {
    const prefix = this.keys.historyPrefix(tier);
    const count = await this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix), count_only: true });
    const excess = Number(count.count) - keep;
    if (excess <= 0) return 0;
    const head = await this.headState(tier);
    const keepVersions = new Set([...protect, head.head?.doc.version ?? -1]);
    const oldest = await this.client.kv.range({
      key: Buffer.from(prefix),
      range_end: prefixEnd(prefix),
      limit: excess,
      keys_only: true,
      sort_order: 'Ascend',
      sort_target: 'Key',
    });
    const doomed = oldest.kvs.map((kv) => kv.key.toString()).filter((k) => !keepVersions.has(Number(k.slice(prefix.length))));
    let pruned = 0;
    for (let i = 0; i < doomed.length; i += PRUNE_BATCH) {
      const batch = doomed.slice(i, i + PRUNE_BATCH);
      const res = await this.client
        .if(fence.key, 'Mod', '==', fence.modRevision)
        .then(...batch.map((k) => this.client.delete().key(k)))
        .commit();
      if (!res.succeeded) throw new SslwallError('SSLWALL_E_NOT_LEADER', 'this engine is no longer the leader; its history pruning was refused (fencing)');
      pruned += batch.length;
    }
    return pruned;
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

  /** Every tier, in key pages: skips over each tier's history (bounded by retention) instead of reading it. */
  async tiers(): Promise<string[]> {
    const prefix = this.keys.tiersPrefix;
    const end = prefixEnd(prefix);
    const out: string[] = [];
    let from = Buffer.from(prefix);
    for (;;) {
      const r = await this.client.kv.range({ key: from, range_end: end, limit: 1, keys_only: true });
      const kv = r.kvs[0];
      if (!kv) return out;
      const tier = kv.key.toString().slice(prefix.length).split('/')[0]!;
      out.push(tier);
      // The next tier begins after every key of this one: tiers/<tier>0 ('0' follows '/').
      from = Buffer.from(`${prefix}${tier}0`);
    }
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
      /** The leader key as the leader's step began: a deposed leader's write fails (leader writes only). */
      fence?: Fence;
    },
  ): Promise<VersionRecord & { revision: number }> {
    const valid = validateInput(input, `tier ${tier}`);
    // An invalid head is replaced like a valid one: compare-and-swap on its revision.
    const { head, modRevision: headRevision } = await this.headState(tier);
    const base = meta.expectRevision ?? headRevision;
    if (headRevision !== base) throw conflict(tier, base, headRevision);
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
    const fence = meta.fence;
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
      if (fence) await this.refuseIfFenced(fence);
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
      throw conflict(tier, base, (await this.headState(tier)).modRevision);
    }
    return { ...record, revision: Number(res.header.revision) };
  }

  /** After a refused transaction: if the fence moved (another engine leads now), say so, not "conflict". */
  private async refuseIfFenced(fence: Fence): Promise<void> {
    const f = await this.client.kv.range({ key: Buffer.from(fence.key) });
    if (Number(f.kvs[0]?.mod_revision ?? 0) !== fence.modRevision)
      throw new SslwallError('SSLWALL_E_NOT_LEADER', 'this engine is no longer the leader; its write was refused (fencing)');
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

  /**
   * A compare-and-swap of one key (the rollout state), with an audit entry, other keys put with it
   * (`also`: the rollout index) and, for the leader's writes, its fence.
   */
  async casPut(
    key: string,
    expectMod: number,
    value: string,
    audit: { tier: string; entry: Record<string, unknown> },
    opts: { fence?: Fence; also?: Array<{ key: string; value: string }> } = {},
  ): Promise<number> {
    let txn = this.client.if(key, 'Mod', '==', expectMod);
    const fence = opts.fence;
    if (fence) txn = txn.and(fence.key, 'Mod', '==', fence.modRevision);
    const res = await txn
      .then(
        this.client.put(key).value(value),
        ...(opts.also ?? []).map((p) => this.client.put(p.key).value(p.value)),
        this.client.put(this.keys.audit(audit.tier)).value(JSON.stringify({ time: new Date().toISOString(), ...audit.entry })),
      )
      .commit();
    if (!res.succeeded) {
      if (fence) await this.refuseIfFenced(fence);
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
    const txn = this.client.if(key, 'Mod', '==', mod).and(seqKey, 'Mod', '==', seqMod);
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
