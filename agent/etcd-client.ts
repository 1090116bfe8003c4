// The agent's etcd calls: the transport seam (what the watch and the health reporter ask of
// etcd) with its default implementation over etcd3 clients of the agent's own, and the one
// opossum breaker every unary call of an agent goes through. The fleet simulator implements the
// same seam over clients shared by many agents (tools/simulate/conn.ts): the watch, decision and
// health code above it is the same. docs/agent.md "Retries and breakers" says why each layer.

import { type Etcd3, EtcdLeaseInvalidError, type IKeyValue, type Lease, type Namespace } from 'etcd3';
import CircuitBreaker from 'opossum';
import { createEtcdClient, type EtcdConnection, explainDenied, isPermissionDenied } from '../schemas/etcd.js';

export interface KeyState {
  value: Buffer;
  modRevision: number;
}

export interface WatchHandlers {
  /** Every key's watcher is created on etcd. */
  connected(): void;
  put(index: number, kv: KeyState): void;
  delete(index: number, modRevision: number): void;
  /** The stream broke: resume from the last revision seen. */
  disconnected(): void;
  /** etcd cancelled a watcher (compaction, or any server-side cancel): read again. */
  cancelled(err: Error): void;
}

/** What an agent asks of etcd. Unary calls reject on failure; watch events come through handlers. */
export interface EtcdTransport {
  /** The keys at one revision (one read-only transaction). */
  read(keys: string[]): Promise<{ values: Array<KeyState | null>; revision: number }>;
  /** Watch the keys from fromRevision; the returned function cancels (bounded wait). */
  watch(keys: string[], fromRevision: number, h: WatchHandlers): () => Promise<void>;
  /** A watch stream broke: watch on a fresh connection next time (see agent/etcd-watch.ts). */
  renew(): void;
  /** Grant a lease and keep it alive until released or revoked; onLost when etcd says it is gone. */
  grantLease(ttlS: number, onLost: () => void): Promise<string>;
  /** Stop keeping it alive; it expires by its TTL (a killed agent's lease). */
  releaseLease(id: string): void;
  revokeLease(id: string): Promise<void>;
  put(key: string, value: string, leaseId: string): Promise<void>;
  close(): void;
}

/** etcd's answer "no such lease": the lease (and its keys) are gone already. */
export function isLeaseGone(err: unknown): boolean {
  return err instanceof EtcdLeaseInvalidError || /lease not found/i.test(String((err as Error)?.message));
}

/**
 * What an agent's etcd user lacks when etcd refuses it one of its keys, with the command that
 * provisions it (rollout/etcd-roles.ts); the keys name the tier and host.
 */
function missingGrant(keys: string[]): string {
  const tier = keys.map((k) => /tiers\/([^/]+)\/config$/.exec(k)?.[1] ?? /health\/([^/]+)\/[^/]+$/.exec(k)?.[1]).find(Boolean) ?? 'TIER';
  const host = keys.map((k) => /hosts\/([^/]+)\/override$/.exec(k)?.[1] ?? /health\/[^/]+\/([^/]+)$/.exec(k)?.[1]).find(Boolean) ?? 'HOST';
  return (
    `etcd user sslwall-host-${host} (its certificate's CN, or --etcd-user) with roles sslwall-tier-${tier} (read tiers/${tier}/config) ` +
    `and sslwall-host-${host} (read hosts/${host}/override, write health/${tier}/${host} and summary/${tier}/${host}); ` +
    `provision them with: sslwall etcd provision --etcd URL --tier ${tier} --host ${host} (as etcd's root)`
  );
}

async function denied<T>(call: Promise<T>, attempted: string, keys: string[]): Promise<T> {
  try {
    return await call;
  } catch (err) {
    throw explainDenied(err, attempted, missingGrant(keys));
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Both of the agent's keys at one revision, in one read-only transaction. */
export async function readKeys(client: Etcd3 | Namespace, keys: string[]): Promise<{ values: Array<KeyState | null>; revision: number }> {
  const r = await client.kv.txn({ compare: [], success: keys.map((k) => ({ request_range: { key: Buffer.from(k) } })), failure: [] });
  const ks = (kvs: IKeyValue[] | undefined): KeyState | null => (kvs?.[0] ? { value: kvs[0].value, modRevision: Number(kvs[0].mod_revision) } : null);
  return { values: keys.map((_, i) => ks(r.responses[i]?.response_range.kvs)), revision: Number(r.header.revision) };
}

/** One watcher per key on ns's watch stream, from fromRevision. */
export function watchKeys(ns: Etcd3 | Namespace, keys: string[], fromRevision: number, h: WatchHandlers): () => Promise<void> {
  const start = String(fromRevision);
  // watcher(), not create(): listeners must be on before the stream answers, since a
  // compaction cancel can follow the "created" answer at once.
  const ws = keys.map((k) => ns.watch().key(k).startRevision(start).watcher());
  let connected = 0;
  ws.forEach((w, i) => {
    w.on('connected', () => {
      if (++connected === ws.length) h.connected();
    });
    w.on('put', (kv) => h.put(i, { value: kv.value, modRevision: Number(kv.mod_revision) }));
    w.on('delete', (kv) => h.delete(i, Number(kv.mod_revision)));
    w.on('disconnected', () => h.disconnected());
    w.on('error', (err) => h.cancelled(err instanceof Error ? err : new Error(String(err))));
  });
  // A cancel waits for the server's answer (and, for a watcher still queued for creation, for
  // its creation); with the stream gone there is none to wait for: do not hold the agent up.
  return async () => {
    await Promise.race([Promise.all(ws.map((w) => w.cancel().catch(() => undefined))), sleep(500)]);
  };
}

/**
 * The real agent's transport: one etcd3 client for reads, leases and puts, and one for the
 * watch on a connection of its own (on a shared one its events arrived ~10 ms late: see
 * createEtcdClient), replaced after a broken watch stream (etcd3's WatchManager would re-create the old
 * watchers from the server's current revision, skipping what we missed). The health lease is
 * etcd3's Lease (its own keepalive stream, "lost" when etcd says it is gone).
 */
export class Etcd3Transport implements EtcdTransport {
  private readonly client: Etcd3;
  private watchClient: Etcd3;
  private readonly leases = new Map<string, Lease>();

  constructor(private readonly conn: EtcdConnection) {
    this.client = createEtcdClient(conn);
    this.watchClient = createEtcdClient(conn, { ownConnection: true });
  }

  read(keys: string[]) {
    return denied(readKeys(this.client, keys), `reading ${keys.join(' and ')}`, keys);
  }

  watch(keys: string[], fromRevision: number, h: WatchHandlers) {
    return watchKeys(this.watchClient, keys, fromRevision, h);
  }

  renew(): void {
    this.watchClient.close();
    this.watchClient = createEtcdClient(this.conn, { ownConnection: true });
  }

  async grantLease(ttlS: number, onLost: () => void): Promise<string> {
    const lease = this.client.lease(ttlS);
    let id: string;
    try {
      id = await lease.grant();
    } catch (err) {
      lease.release();
      throw err;
    }
    this.leases.set(id, lease);
    lease.on('lost', () => {
      this.leases.delete(id);
      onLost();
    });
    return id;
  }

  releaseLease(id: string): void {
    this.leases.get(id)?.release();
    this.leases.delete(id);
  }

  async revokeLease(id: string): Promise<void> {
    this.releaseLease(id);
    await this.client.leaseClient.leaseRevoke({ ID: id });
  }

  async put(key: string, value: string, leaseId: string): Promise<void> {
    await denied(this.client.put(key).value(value).lease(leaseId).exec(), `writing ${key}`, [key]);
  }

  close(): void {
    for (const l of this.leases.values()) l.release();
    this.leases.clear();
    this.watchClient.close();
    this.client.close();
  }
}

/** Runs one unary etcd call through the agent's breaker. */
export type Guard = <T>(call: () => Promise<T>) => Promise<T>;

/**
 * The agent's one breaker over its unary etcd calls (read, lease grant, health put): while etcd
 * fails, the read retries, lease re-grants and health ticks fail at once instead of each waiting
 * for a deadline, and one call probes after resetTimeout. No timeout of its own: every unary call
 * already has etcd3's 5 s deadline (schemas/etcd.ts). "Lease not found" and "permission denied"
 * are answers from a working etcd, not failures.
 */
export function etcdBreaker(): { breaker: CircuitBreaker<[() => Promise<unknown>], unknown>; guard: Guard } {
  const breaker = new CircuitBreaker((call: () => Promise<unknown>) => call(), {
    name: 'etcd',
    timeout: false,
    errorThresholdPercentage: 50,
    volumeThreshold: 3,
    resetTimeout: 3000,
    // Idle cost: opossum rotates its rolling window from a timer per bucket and emits a stats
    // snapshot (with latency percentiles) from another. The failure rate over the last 10 s in
    // two 5-s buckets opens the breaker as well; snapshots and percentiles nothing here reads.
    rollingCountTimeout: 10000,
    rollingCountBuckets: 2,
    enableSnapshots: false,
    rollingPercentilesEnabled: false,
    // A refusal for missing roles is an answer too; counted, it would open the breaker and
    // hide etcd's reason behind "breaker is open".
    errorFilter: (err: unknown) => isLeaseGone(err) || isPermissionDenied(err),
  });
  return { breaker, guard: <T>(call: () => Promise<T>) => breaker.fire(call) as Promise<T> };
}

export function breakerState(b: CircuitBreaker): 'closed' | 'open' | 'half_open' {
  return b.opened ? 'open' : b.halfOpen ? 'half_open' : 'closed';
}
