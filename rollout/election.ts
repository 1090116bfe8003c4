// One engine replica leads. Leadership is a key created under a lease (create-if-absent); the
// leader's writes compare that key's mod revision (fencing: once the lease is gone, so is the
// key, and a deposed leader's transaction fails). Followers watch the key and campaign again
// when it disappears, so a replica takes over within the lease TTL. The leader watches its own key
// too: deleted (by hand, by a compaction of leases) or rewritten by anyone, it steps down at once
// rather than at lease loss, so it never goes on believing it leads.
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';
import type { Fence } from './store.js';

export class Leadership {
  private lease: Lease | null = null;
  private fenceRev: number | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private guard: { cancel(): Promise<void> } | null = null;
  /** Called when leadership ends, whatever the reason (the engine forgets what it measured as leader). */
  onLost: () => void = () => undefined;

  constructor(
    private readonly client: Etcd3,
    private readonly key: string,
    readonly id: string,
    private readonly log: Logger,
    private readonly ttlS = 5,
  ) {}

  get isLeader(): boolean {
    return this.fenceRev !== null;
  }

  fence(): Fence | null {
    return this.fenceRev === null ? null : { key: this.key, modRevision: this.fenceRev };
  }

  start(): void {
    void this.campaign();
  }

  async leader(): Promise<string | null> {
    return (await this.client.get(this.key).string()) ?? null;
  }

  private schedule(ms: number) {
    clearTimeout(this.timer);
    if (!this.stopped) this.timer = setTimeout(() => void this.campaign(), ms);
  }

  private watching: { cancel(): Promise<void> } | null = null;

  private stepDown(reason: string) {
    void this.guard?.cancel().catch(() => undefined);
    this.guard = null;
    if (this.fenceRev === null) return;
    this.fenceRev = null;
    this.log.warn({ event: 'leadership_lost', reason }, 'no longer the leader');
    this.onLost();
  }

  /** While leading: any change of the leader key (delete, or a put by anyone) ends leadership at once. */
  private async guardKey(lease: Lease, rev: number): Promise<void> {
    const w = await this.client
      .watch()
      .key(this.key)
      .startRevision(String(rev + 1))
      .create();
    if (this.fenceRev !== rev) {
      await w.cancel().catch(() => undefined);
      return;
    }
    this.guard = w;
    const lost = (why: string) => {
      if (this.fenceRev !== rev) return;
      this.stepDown(why);
      // Our lease may still live (the key was deleted or overwritten by someone): release it.
      if (this.lease === lease) this.lease = null;
      void lease.revoke().catch(() => undefined);
      this.schedule(200);
    };
    w.on('delete', () => lost('the leader key was deleted'));
    w.on('put', (kv) => lost(`the leader key was rewritten (to ${kv.value.toString().slice(0, 64)})`));
    // Without the watch this replica could miss a change: not knowing is not leading.
    w.on('error', (e) => lost(`the leader key watch failed: ${String(e)}`));
    w.on('disconnected', () => lost('the leader key watch disconnected'));
  }

  private async campaign(): Promise<void> {
    if (this.stopped || this.isLeader) return;
    try {
      const lease = this.client.lease(this.ttlS, { autoKeepAlive: true });
      lease.on('lost', (err) => {
        this.stepDown(`lease lost: ${err.message}`);
        if (this.lease === lease) this.lease = null;
        this.schedule(200);
      });
      const leaseId = await lease.grant();
      const res = await this.client.if(this.key, 'Create', '==', 0).then(this.client.put(this.key).value(this.id).lease(leaseId)).commit();
      if (res.succeeded) {
        this.lease = lease;
        const rev = Number(res.header.revision);
        this.fenceRev = rev;
        this.log.info({ event: 'leadership_won', id: this.id }, 'leading');
        await this.guardKey(lease, rev).catch((err) => {
          this.stepDown(`cannot watch the leader key: ${(err as Error).message}`);
          if (this.lease === lease) this.lease = null;
          void lease.revoke().catch(() => undefined);
          this.schedule(500);
        });
        return;
      }
      await lease.revoke().catch(() => undefined);
      // Someone leads: wait for the key to go (lease expiry or resignation), polling as a backstop.
      await this.watching?.cancel().catch(() => undefined);
      const w = await this.client.watch().key(this.key).create();
      this.watching = w;
      const done = () => {
        void w.cancel().catch(() => undefined);
        if (this.watching === w) this.watching = null;
        this.schedule(Math.random() * 100);
      };
      w.on('delete', done);
      w.on('error', done);
      w.on('disconnected', done);
      const still = await this.client.get(this.key).string();
      if (!still) done();
      // Backstop: a watch stuck on a dead etcd member hears nothing; try again every TTL.
      else this.schedule(this.ttlS * 1000);
    } catch (err) {
      this.log.warn({ event: 'campaign_failed', err: (err as Error).message }, 'could not campaign; retrying');
      this.schedule(500 + Math.random() * 500);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.watching?.cancel().catch(() => undefined);
    const lease = this.lease;
    this.stepDown('stopping');
    // Resign: revoking deletes the key, so a follower takes over at once instead of after the TTL.
    if (lease) await lease.revoke().catch(() => undefined);
  }
}
