// What the simulated agents of one worker process share: one etcd3 client (one gRPC connection:
// watchers multiplexed on its watch stream), a bound on unary calls in flight, and one lease
// keepalive stream for every agent's health lease.
import type { Etcd3, IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse } from 'etcd3';
import { createEtcdClient, backoffMs, type EtcdConnection } from '../../agent/etcd-client.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

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
 * The process's etcd3 client. When the watch stream breaks, the first agent to notice renews it
 * (a fresh client, as the real agent does after a disconnect: etcd3's WatchManager would
 * re-create the old watchers from the server's current revision); every agent then resumes on
 * the new client from its own last revision.
 */
export class SharedConn {
  client: Etcd3;
  gen = 0;
  renewals = 0;
  private closed = false;

  constructor(private readonly conn: EtcdConnection) {
    this.client = createEtcdClient(conn);
  }

  renew(gen: number): void {
    if (gen !== this.gen || this.closed) return;
    const old = this.client;
    this.client = createEtcdClient(this.conn);
    this.gen++;
    this.renewals++;
    // Let cancels and in-flight calls on the old client settle before closing it.
    setTimeout(() => old.close(), 2000).unref();
  }

  close(): void {
    this.closed = true;
    this.client.close();
  }
}

export interface LeaseOwner {
  /** The lease expired or etcd forgot it: grant a new one and write the health key again. */
  leaseLost(id: string): void;
}

/**
 * Keeps every agent's lease alive over ONE LeaseKeepAlive stream, each lease refreshed every
 * TTL/3 (what etcd3's Lease does, but etcd3 opens a stream per lease). A response with TTL 0
 * means the lease is gone: its owner is told.
 */
export class LeaseKeeper {
  private readonly leases = new Map<string, { owner: LeaseOwner; next: number }>();
  private stream: IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse> | null = null;
  private opening = false;
  private attempt = 0;
  private timer: NodeJS.Timeout;
  private stopped = false;
  streamRestarts = 0;
  sent = 0;
  received = 0;
  lost = 0;

  constructor(
    private readonly conn: SharedConn,
    private readonly ttlS: number,
  ) {
    this.timer = setInterval(() => this.tick(), 250);
  }

  add(id: string, owner: LeaseOwner): void {
    // First refresh a third of the TTL from now, jittered so the leases do not move in step.
    this.leases.set(id, { owner, next: Date.now() + (this.ttlS * 1000) / 3 - Math.random() * 1000 });
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
    if (!this.stream) {
      void this.open();
      return;
    }
    const now = Date.now();
    const every = (this.ttlS * 1000) / 3;
    for (const [id, l] of this.leases) {
      if (l.next > now) continue;
      l.next = now + every;
      this.stream.write({ ID: id });
      this.sent++;
    }
  }

  private async open(): Promise<void> {
    if (this.opening || this.stopped) return;
    this.opening = true;
    try {
      if (this.attempt > 0) await sleep(backoffMs(this.attempt));
      const s = await this.conn.client.leaseClient.leaseKeepAlive();
      if (this.stopped) {
        s.cancel();
        return;
      }
      let dead = false;
      const lost = () => {
        if (dead) return;
        dead = true;
        if (this.stream === s) this.stream = null;
        this.attempt++;
        this.streamRestarts++;
        try {
          s.cancel();
        } catch {
          /* already gone */
        }
      };
      s.on('data', (res) => {
        this.attempt = 0;
        this.received++;
        if (Number(res.TTL) > 0) return;
        this.lost++;
        const l = this.leases.get(String(res.ID));
        if (!l) return;
        this.leases.delete(String(res.ID));
        l.owner.leaseLost(String(res.ID));
      });
      s.on('error', lost);
      s.on('end', lost);
      this.stream = s;
      // Whatever came due while there was no stream goes out at the next tick.
    } catch {
      this.attempt++;
    } finally {
      this.opening = false;
    }
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    try {
      this.stream?.cancel();
    } catch {
      /* gone */
    }
    this.stream = null;
  }
}
