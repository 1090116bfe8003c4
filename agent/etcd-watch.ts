// Following the tier document and the host override in etcd. Read both keys at one revision R,
// watch them from R+1. When the stream breaks we resume from the last revision we saw (no read);
// when etcd cancels that watch because the revision was compacted while we were away, we read
// again at the current revision and watch from there: the latest version is never missed.
// We do the resuming ourselves, on a fresh etcd3 client, instead of leaving it to etcd3's watch
// manager: on reconnect it moves a watcher's start revision to the server's current one
// (skipping what it missed), and watchers cancelled while disconnected confuse its re-creation.
import { EventEmitter } from 'node:events';
import type { Etcd3, Watcher, IKeyValue } from 'etcd3';
import type { Logger } from 'pino';
import type CircuitBreaker from 'opossum';
import { breaker } from './etcd-client.js';
import { backoffMs } from '../schemas/etcd.js';

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

  private client: Etcd3;

  constructor(
    private readonly makeClient: () => Etcd3,
    private readonly tierKey: string,
    private readonly overrideKey: string,
    private readonly log: Logger,
  ) {
    super();
    this.client = makeClient();
    this.readBreaker = breaker('etcd_read', () => this.read());
  }

  start(): void {
    void this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.cancelWatchers();
    this.client.close();
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
    let last: Snapshot | null = null;
    while (!this.stopped) {
      try {
        let snap: Snapshot;
        if (last) {
          snap = last; // resume: watch from the revision after the last one seen
        } else {
          this.setState('reading');
          snap = await this.readBreaker.fire();
          this.emit('snapshot', { ...snap }, 'read');
        }
        const end = await this.watchFrom(snap, () => (attempt = 0));
        if (this.stopped) return;
        // A cancelled watch (compaction, or any server-side cancel) needs a fresh read.
        last = end.reason === 'disconnected' ? end.snapshot : null;
        this.log.warn({ event: 'etcd_watch_restart', reason: end.reason, resume_from: last ? last.revision + 1 : null }, last ? 'watch broken; resuming' : 'watch cancelled; reading again');
        if (last) this.reconnects++;
        if (end.reason === 'disconnected') {
          this.setState('disconnected');
          this.client.close();
          this.client = this.makeClient();
        }
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

  /** Watch both keys from snap.revision + 1; resolves when the watch is lost, with what was seen. */
  private async watchFrom(snap: Snapshot, onRunning: () => void): Promise<{ reason: string; snapshot: Snapshot }> {
    const start = String(snap.revision + 1);
    const current = { ...snap };
    // watcher(), not create(): listeners must be on before the stream answers, since a
    // compaction cancel can follow the "created" answer at once.
    const tw = this.client.watch().key(this.tierKey).startRevision(start).watcher();
    const ow = this.client.watch().key(this.overrideKey).startRevision(start).watcher();
    this.watchers = [tw, ow];
    return new Promise((resolve) => {
      let done = false;
      let connected = 0;
      const finish = (reason: string) => {
        if (done) return;
        done = true;
        void this.cancelWatchers().then(() => resolve({ reason, snapshot: { ...current } }));
      };
      const bind = (w: Watcher, which: 'tier' | 'override') => {
        w.on('connected', () => {
          if (++connected !== 2) return;
          // Only a watch that runs resets the backoff: a stream that drops at once keeps backing off.
          onRunning();
          this.setState('watching');
        });
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
        w.on('disconnected', () => finish('disconnected'));
        // Compaction (or any cancel) ends the watcher for good: read and watch again.
        w.on('error', (err) => finish(`cancelled: ${String((err as Error).message ?? err)}`));
      };
      bind(tw, 'tier');
      bind(ow, 'override');
      if (this.stopped) finish('stopped');
    });
  }

  private async cancelWatchers(): Promise<void> {
    const ws = this.watchers;
    this.watchers = [];
    // A cancel waits for the server's answer; with the stream gone there is none to wait for.
    await Promise.race([Promise.all(ws.map((w) => w.cancel().catch(() => undefined))), new Promise((r) => setTimeout(r, 500))]);
  }
}
