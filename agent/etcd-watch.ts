// Following the tier document and the host override in etcd. Read both keys at one revision R,
// watch them from R+1. When the stream breaks we resume from the last revision we saw (no read),
// on a fresh connection; when etcd cancels that watch because the revision was compacted while
// we were away, we read again at the current revision and watch from there: the latest version
// is never missed. We do the resuming ourselves instead of leaving it to etcd3's watch manager:
// on reconnect it moves a watcher's start revision to the server's current one (skipping what it
// missed), and watchers cancelled while disconnected confuse its re-creation. The etcd calls go
// through an EtcdTransport (agent/etcd-client.ts), so the simulator runs this same loop.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { backoffMs, isPermissionDenied } from '../schemas/etcd.js';
import type { EtcdTransport, Guard, KeyState } from './etcd-client.js';

export type { KeyState } from './etcd-client.js';

export interface Snapshot {
  tier: KeyState | null;
  override: KeyState | null;
  /** Highest revision seen on the watch (or the read). */
  revision: number;
  /** Epoch ms (sub-ms) when the watch event that made this snapshot reached this process's JavaScript. */
  receivedAt?: number;
}

export type WatchState = 'reading' | 'watching' | 'disconnected' | 'backoff' | 'stopped';

export class TierWatch extends EventEmitter<{ snapshot: [s: Snapshot, reason: string]; state: [s: WatchState] }> {
  state: WatchState = 'reading';
  private stopped = false;
  private cancelWatch: (() => Promise<void>) | null = null;
  private endWatch: ((reason: string) => void) | null = null;
  private wake: (() => void) | null = null;
  /** Watches resumed after a broken stream. */
  reconnects = 0;
  /** Reads of both keys (the first, and one after each cancelled watch). */
  reads = 0;

  constructor(
    private readonly transport: EtcdTransport,
    private readonly guard: Guard,
    private readonly tierKey: string,
    private readonly overrideKey: string,
    private readonly log: Logger,
  ) {
    super();
  }

  start(): void {
    void this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.endWatch?.('stopped');
    await this.cancelWatchers();
    this.setState('stopped');
  }

  private setState(s: WatchState) {
    if (this.state === s || (this.stopped && s !== 'stopped')) return;
    this.state = s;
    this.emit('state', s);
  }

  private async read(): Promise<Snapshot> {
    const r = await this.guard(() => this.transport.read([this.tierKey, this.overrideKey]));
    this.reads++;
    return { tier: r.values[0] ?? null, override: r.values[1] ?? null, revision: r.revision };
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
          snap = await this.read();
          if (this.stopped) return;
          this.emit('snapshot', { ...snap }, 'read');
        }
        const end = await this.watchFrom(snap);
        if (this.stopped) return;
        // Back off afresh only after a watch that got going: while etcd is away, a resume that
        // never connects keeps growing the delay (instead of retrying every ~100 ms).
        if (end.watched) attempt = 0;
        // A cancelled watch (compaction, or any server-side cancel) needs a fresh read.
        last = end.reason === 'disconnected' ? end.snapshot : null;
        this.log.warn(
          { event: 'etcd_watch_restart', reason: end.reason, resume_from: last ? last.revision + 1 : null },
          last ? 'watch broken; resuming' : 'watch cancelled; reading again',
        );
        if (last) {
          this.reconnects++;
          this.setState('disconnected');
          this.transport.renew();
        }
      } catch (err) {
        if (this.stopped) return;
        if (isPermissionDenied(err))
          this.log.error({ event: 'etcd_denied', code: 'SSLWALL_E_ETCD_DENIED', err: (err as Error).message, attempt }, 'etcd refused the read; retrying');
        else this.log.warn({ event: 'etcd_unreachable', err: (err as Error).message, attempt }, 'etcd read failed; retrying');
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
  private watchFrom(snap: Snapshot): Promise<{ reason: string; snapshot: Snapshot; watched: boolean }> {
    const current = { ...snap };
    const which = ['tier', 'override'] as const;
    return new Promise((resolve) => {
      let done = false;
      let watched = false;
      const finish = (reason: string) => {
        if (done) return;
        done = true;
        this.endWatch = null;
        void this.cancelWatchers().then(() => resolve({ reason, snapshot: { ...current }, watched }));
      };
      this.endWatch = finish;
      this.cancelWatch = this.transport.watch([this.tierKey, this.overrideKey], snap.revision + 1, {
        connected: () => {
          if (done) return;
          watched = true;
          this.setState('watching');
        },
        put: (i, kv) => {
          if (done) return;
          current[which[i]!] = kv;
          current.revision = Math.max(current.revision, kv.modRevision);
          this.emit('snapshot', { ...current, receivedAt: performance.timeOrigin + performance.now() }, `${which[i]}_put`);
        },
        delete: (i, modRevision) => {
          if (done) return;
          current[which[i]!] = null;
          current.revision = Math.max(current.revision, modRevision);
          this.emit('snapshot', { ...current }, `${which[i]}_delete`);
        },
        disconnected: () => finish('disconnected'),
        cancelled: (err) => finish(`cancelled: ${err.message}`),
      });
      if (this.stopped) finish('stopped');
    });
  }

  private async cancelWatchers(): Promise<void> {
    const cancel = this.cancelWatch;
    this.cancelWatch = null;
    await cancel?.();
  }
}
