// Following the tier document and the host override in etcd. Read both keys at one revision R,
// watch them from R+1; etcd3 resumes a broken stream from the last revision it saw. When etcd
// cancels the watch (the revision was compacted while we were away) we read again at the
// current revision and watch from there: the latest version is never missed.
import { EventEmitter } from 'node:events';
import type { Etcd3, Watcher, IKeyValue } from 'etcd3';
import type { Logger } from 'pino';
import type CircuitBreaker from 'opossum';
import { breaker, backoffMs } from './etcd-client.js';

export interface KeyState {
  value: Buffer;
  modRevision: number;
}

export interface Snapshot {
  tier: KeyState | null;
  override: KeyState | null;
  /** Highest revision seen on the watch (or the read). */
  revision: number;
}

export type WatchState = 'reading' | 'watching' | 'disconnected' | 'backoff' | 'stopped';

export declare interface TierWatch {
  on(event: 'snapshot', fn: (s: Snapshot, reason: string) => void): this;
  on(event: 'state', fn: (s: WatchState) => void): this;
}

export class TierWatch extends EventEmitter {
  readonly readBreaker: CircuitBreaker<[], Snapshot>;
  state: WatchState = 'reading';
  private stopped = false;
  private watchers: Watcher[] = [];
  private wake: (() => void) | null = null;
  reconnects = 0;
  reads = 0;

  constructor(
    private readonly client: Etcd3,
    private readonly tierKey: string,
    private readonly overrideKey: string,
    private readonly log: Logger,
  ) {
    super();
    this.readBreaker = breaker('etcd_read', () => this.read());
  }

  start(): void {
    void this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.cancelWatchers();
    this.setState('stopped');
  }

  private setState(s: WatchState) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  private async read(): Promise<Snapshot> {
    const t = await this.client.kv.range({ key: Buffer.from(this.tierKey) });
    const revision = Number(t.header.revision);
    const o = await this.client.kv.range({ key: Buffer.from(this.overrideKey), revision });
    const kv = (kvs: IKeyValue[]): KeyState | null => (kvs[0] ? { value: kvs[0].value, modRevision: Number(kvs[0].mod_revision) } : null);
    this.reads++;
    return { tier: kv(t.kvs), override: kv(o.kvs), revision };
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      try {
        this.setState('reading');
        const snap = await this.readBreaker.fire();
        attempt = 0;
        this.emit('snapshot', { ...snap }, 'read');
        const reason = await this.watchFrom(snap);
        if (this.stopped) return;
        this.log.warn({ event: 'etcd_watch_restart', reason }, 'watch ended; reading again');
      } catch (err) {
        if (this.stopped) return;
        this.log.warn({ event: 'etcd_unreachable', err: (err as Error).message, attempt }, 'etcd read failed; retrying');
      }
      this.setState('backoff');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoffMs(attempt++));
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  /** Watch both keys from snap.revision + 1; resolves with the reason when the watch is lost. */
  private async watchFrom(snap: Snapshot): Promise<string> {
    const start = String(snap.revision + 1);
    const current = { ...snap };
    const [tw, ow] = await Promise.all([
      this.client.watch().key(this.tierKey).startRevision(start).create(),
      this.client.watch().key(this.overrideKey).startRevision(start).create(),
    ]);
    this.watchers = [tw, ow];
    this.setState('watching');
    return new Promise<string>((resolve) => {
      let done = false;
      const finish = (reason: string) => {
        if (done) return;
        done = true;
        void this.cancelWatchers().then(() => resolve(reason));
      };
      const bind = (w: Watcher, which: 'tier' | 'override') => {
        w.on('put', (kv) => {
          current[which] = { value: kv.value, modRevision: Number(kv.mod_revision) };
          current.revision = Math.max(current.revision, Number(kv.mod_revision));
          this.emit('snapshot', { ...current }, `${which}_put`);
        });
        w.on('delete', (kv) => {
          current[which] = null;
          current.revision = Math.max(current.revision, Number(kv.mod_revision));
          this.emit('snapshot', { ...current }, `${which}_delete`);
        });
        w.on('disconnected', () => this.setState('disconnected'));
        w.on('connected', () => {
          if (this.state === 'disconnected') this.reconnects++;
          this.setState('watching');
        });
        // Compaction (or any cancel) ends the watcher for good: read and watch again.
        w.on('error', (err) => finish(String((err as Error).message ?? err)));
      };
      bind(tw, 'tier');
      bind(ow, 'override');
      if (this.stopped) finish('stopped');
    });
  }

  private async cancelWatchers(): Promise<void> {
    const ws = this.watchers;
    this.watchers = [];
    await Promise.all(ws.map((w) => w.cancel().catch(() => undefined)));
  }
}
