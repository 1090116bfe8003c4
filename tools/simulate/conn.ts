// What the simulated agents of one worker process share: one etcd3 client (one gRPC connection:
// watchers multiplexed on a few watch streams), a bound on unary calls in flight, and a few lease
// keepalive streams for every agent's health lease. SimTransport puts that behind the agent's
// EtcdTransport seam (agent/etcd-client.ts): each simulated agent runs the agent's own watch,
// decision and health code over it.
import type { Etcd3, IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse, Namespace } from 'etcd3';
import { type EtcdTransport, readKeys, type WatchHandlers, watchKeys } from '../../agent/etcd-client.js';
import { backoffMs, createEtcdClient, type EtcdConnection, guardWatchManager } from '../../schemas/etcd.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A worker's burst of watch events is over after this long without one. */
const BURST_QUIET_MS = 200;
/** Health writes wait for the end of a burst at most this long (a steady stream of events never starves them). */
const BURST_MAX_WAIT_MS = 3000;

/** At most `max` calls in flight; the rest wait in FIFO order. */
export class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly max: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }

  get pending(): number {
    return this.waiting.length;
  }
}

/**
 * The process's etcd3 client. Watchers go on a few watch streams of that one client (etcd3 gives
 * each namespace object its own WatchManager, hence its own stream, over the same connection):
 * etcd3 attaches a stream's watchers one at a time, a round trip each, which for thousands of
 * watchers on one stream takes minutes on a busy machine.
 *
 * When a watch stream breaks, the first agent to notice renews the client (a fresh one, as the
 * real agent does after a disconnect: etcd3's WatchManager would re-create the old watchers from
 * the server's current revision); every agent then resumes on the new client from its own last
 * revision.
 */
export class SharedConn {
  client: Etcd3;
  private watchers: Namespace[];
  gen = 0;
  renewals = 0;
  private closed = false;
  /** When the latest watch event reached this worker (performance.now()). */
  private lastEventAt = -Infinity;
  private burstWaiters: Array<() => void> = [];
  private burstTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly conn: EtcdConnection,
    private readonly watchStreams: number,
  ) {
    this.client = createEtcdClient(conn);
    this.watchers = this.makeWatchers();
  }

  private makeWatchers(): Namespace[] {
    return Array.from({ length: Math.max(1, this.watchStreams) }, () => guardWatchManager(this.client.namespace('')));
  }

  /** Where agent number i creates its watchers. */
  watchOn(i: number): Namespace {
    return this.watchers[i % this.watchers.length]!;
  }

  /** A watch event reached one of this worker's agents. */
  noteEvent(): void {
    this.lastEventAt = performance.now();
  }

  /**
   * Resolves once this worker has received no watch event for BURST_QUIET_MS (at most
   * BURST_MAX_WAIT_MS from the first waiter). Health writes wait for it: on one machine, the
   * writes of the agents that applied first would take CPU (in this process, in etcd, in the
   * engine) from the agents still applying, which on real hosts each have a CPU of their own.
   */
  afterBurst(): Promise<void> {
    if (performance.now() - this.lastEventAt >= BURST_QUIET_MS || this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const until = performance.now() + BURST_MAX_WAIT_MS;
      this.burstWaiters.push(resolve);
      const settle = () => {
        this.burstTimer = undefined;
        const now = performance.now();
        const quietAt = this.lastEventAt + BURST_QUIET_MS;
        if (now < quietAt && now < until && !this.closed) {
          this.burstTimer = setTimeout(settle, Math.min(quietAt, until) - now);
          return;
        }
        const waiters = this.burstWaiters;
        this.burstWaiters = [];
        for (const w of waiters) w();
      };
      this.burstTimer ??= setTimeout(settle, BURST_QUIET_MS);
    });
  }

  renew(gen: number): void {
    if (gen !== this.gen || this.closed) return;
    const old = this.client;
    this.client = createEtcdClient(this.conn);
    this.watchers = this.makeWatchers();
    this.gen++;
    this.renewals++;
    // Let cancels and in-flight calls on the old client settle before closing it.
    setTimeout(() => old.close(), 2000).unref();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.burstTimer);
    for (const w of this.burstWaiters.splice(0)) w();
    this.client.close();
  }
}

type KeepAliveStream = IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>;

interface Shard {
  stream: KeepAliveStream | null;
  opening: boolean;
  attempt: number;
}

/**
 * Keeps every agent's lease alive, each refreshed every TTL/3 as etcd3's Lease does, over a few
 * LeaseKeepAlive streams shared by the agents (etcd3 opens one stream per lease). Not over one:
 * etcd answers a stream's keepalives one at a time, each after the writes in flight are applied
 * (and, for an expired lease, after its revocation), so under a burst of writes one stream
 * falls behind and leases expire. A response with TTL 0 means the lease is gone: its owner is told.
 */
export class LeaseKeeper {
  private readonly leases = new Map<string, { lost: () => void; next: number; shard: Shard }>();
  private readonly shards: Shard[];
  private nextShard = 0;
  private timer: NodeJS.Timeout;
  private stopped = false;
  streamRestarts = 0;
  sent = 0;
  received = 0;
  lost = 0;

  constructor(
    private readonly conn: SharedConn,
    private readonly ttlS: number,
    streams: number,
  ) {
    this.shards = Array.from({ length: Math.max(1, streams) }, () => ({ stream: null, opening: false, attempt: 0 }));
    this.timer = setInterval(() => this.tick(), 250);
  }

  /** Keep id alive; lost() when etcd answers that it is gone. */
  add(id: string, lost: () => void): void {
    const shard = this.shards[this.nextShard++ % this.shards.length]!;
    // First refresh a third of the TTL from now, jittered so the leases do not move in step.
    this.leases.set(id, { lost, next: Date.now() + (this.ttlS * 1000) / 3 - Math.random() * 1000, shard });
  }

  /** Stop refreshing (the lease then expires by its TTL, like a killed agent's). */
  remove(id: string): void {
    this.leases.delete(id);
  }

  get size(): number {
    return this.leases.size;
  }

  private tick(): void {
    if (this.stopped || this.leases.size === 0) return;
    for (const sh of this.shards) if (!sh.stream) void this.open(sh);
    const now = Date.now();
    const every = (this.ttlS * 1000) / 3;
    for (const [id, l] of this.leases) {
      // Whatever came due while its stream was down goes out once the stream is back.
      if (l.next > now || !l.shard.stream) continue;
      l.next = now + every;
      l.shard.stream.write({ ID: id });
      this.sent++;
    }
  }

  private async open(sh: Shard): Promise<void> {
    if (sh.opening || this.stopped) return;
    sh.opening = true;
    try {
      if (sh.attempt > 0) await sleep(backoffMs(sh.attempt));
      const s = await this.conn.client.leaseClient.leaseKeepAlive();
      if (this.stopped) {
        s.cancel();
        return;
      }
      let dead = false;
      const lost = () => {
        if (dead) return;
        dead = true;
        if (sh.stream === s) sh.stream = null;
        sh.attempt++;
        this.streamRestarts++;
        try {
          s.cancel();
        } catch {
          /* already gone */
        }
      };
      s.on('data', (res) => {
        sh.attempt = 0;
        this.received++;
        if (Number(res.TTL) > 0) return;
        this.lost++;
        const l = this.leases.get(String(res.ID));
        if (!l) return;
        this.leases.delete(String(res.ID));
        l.lost();
      });
      s.on('error', lost);
      s.on('end', lost);
      sh.stream = s;
    } catch {
      sh.attempt++;
    } finally {
      sh.opening = false;
    }
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    for (const sh of this.shards) {
      try {
        sh.stream?.cancel();
      } catch {
        /* gone */
      }
      sh.stream = null;
    }
  }
}

/** One simulated agent's EtcdTransport: the worker's shared client, streams and limiter. */
export class SimTransport implements EtcdTransport {
  private gen = 0;

  constructor(
    private readonly conn: SharedConn,
    private readonly limiter: Limiter,
    private readonly leases: LeaseKeeper,
    /** Position in the worker (spreads the agents over watch streams). */
    private readonly index: number,
  ) {}

  read(keys: string[]) {
    return this.limiter.run(() => readKeys(this.conn.client, keys));
  }

  watch(keys: string[], fromRevision: number, h: WatchHandlers) {
    this.gen = this.conn.gen;
    const conn = this.conn;
    return watchKeys(this.conn.watchOn(this.index), keys, fromRevision, {
      ...h,
      put: (i, kv) => {
        conn.noteEvent();
        h.put(i, kv);
      },
    });
  }

  /** The first agent to see the stream broken renews the shared client; the others resume on it. */
  renew(): void {
    this.conn.renew(this.gen);
  }

  async grantLease(ttlS: number, onLost: () => void): Promise<string> {
    const res = await this.limiter.run(() => this.conn.client.leaseClient.leaseGrant({ TTL: ttlS }));
    const id = String(res.ID);
    this.leases.add(id, onLost);
    return id;
  }

  releaseLease(id: string): void {
    this.leases.remove(id);
  }

  async revokeLease(id: string): Promise<void> {
    this.leases.remove(id);
    await this.limiter.run(() => this.conn.client.leaseClient.leaseRevoke({ ID: id }));
  }

  async put(key: string, value: string, leaseId: string): Promise<void> {
    await this.conn.afterBurst();
    await this.limiter.run(() => this.conn.client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), lease: leaseId }));
  }

  /** The shared client is the worker's to close. */
  close(): void {}
}
