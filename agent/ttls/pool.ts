// Pooled, mutually authenticated TLS sessions from this host to each remote terminator, keyed by
// the terminator's address and port. A wrapped connection takes a stream on a session with room
// (fewer than maxStreams streams, counting ones still being opened), or opens a session; streams
// are reserved before the handshake ends, so N connections arriving together cost one
// handshake. A session with no stream closes after idleMs (an unref'd timer that exists only
// while the session is idle); a rotated certificate drains every session (no new streams, closed
// when its last stream ends) so new connections use the new certificate. Where the terminator
// does not select h2 by ALPN, the TLS connection serves that one wrapped connection alone.
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { TtlsCerts } from './certs.js';
import type { Telemetry } from './telemetry.js';
import { ALPN_H2, ALPN_RAW, authority, h2Settings, MAX_SESSION_MEMORY_MB, type PoolLimits, sessionWindow } from './wire.js';

/** A TLS connection that does not multiplex: the caller owns it. */
export interface RawTls {
  tls: tls.TLSSocket;
  raw: net.Socket;
}

export type Channel = { kind: 'h2'; session: PooledSession } | { kind: 'raw'; conn: RawTls };

/** Why a dial failed, for ttls_failed. */
export class DialError extends Error {
  constructor(
    readonly reason: 'terminator_unreachable' | 'server_certificate' | 'tls_handshake',
    override readonly cause: Error,
  ) {
    super(`${reason}: ${cause.message}`);
  }
}

const CERT_ERROR = /CERT|SIGNATURE|ALTNAME|ISSUER|SELF_SIGNED|UNABLE_TO_VERIFY/;

export class PooledSession {
  h2?: http2.ClientHttp2Session;
  /** Streams open or promised to a waiting connection. */
  reserved = 0;
  draining = false;
  /** A non-multiplexing connection serves the first waiter only. */
  claimed = false;
  private idle?: NodeJS.Timeout;
  readonly ready: Promise<Channel>;

  constructor(
    private readonly pool: Pool,
    readonly key: string,
    address: string,
    port: number,
  ) {
    this.ready = pool.dial(address, port).then(
      (conn): Channel => {
        if (conn.tls.alpnProtocol !== ALPN_H2) {
          this.pool.forget(this);
          return { kind: 'raw', conn };
        }
        const h2 = http2.connect(`https://${authority(address, port)}`, {
          createConnection: () => conn.tls,
          settings: h2Settings(pool.limits),
          maxSessionMemory: MAX_SESSION_MEMORY_MB,
        });
        h2.on('error', () => {});
        h2.once('connect', () => h2.setLocalWindowSize(sessionWindow(pool.limits)));
        h2.once('close', () => this.pool.forget(this));
        h2.once('goaway', () => this.pool.forget(this));
        // The sockets are half-open capable (a wrapped connection's FIN is a stream's END_STREAM,
        // not the session's), so a terminator that went away leaves this session in CLOSE-WAIT,
        // looking alive: a stream opened on it would wait forever. Its end is the session's end.
        conn.tls.once('end', () => {
          this.pool.forget(this);
          h2.destroy();
        });
        this.h2 = h2;
        return { kind: 'h2', session: this };
      },
      (e) => {
        this.pool.forget(this);
        throw e;
      },
    );
  }

  /** A stream was promised; cancel a pending idle close. */
  take(): void {
    this.reserved++;
    clearTimeout(this.idle);
    this.idle = undefined;
  }

  /** A stream ended (or a promise was not used). */
  release(): void {
    if (--this.reserved > 0 || !this.h2) return;
    if (this.draining) {
      this.h2.close();
      return;
    }
    this.idle = setTimeout(() => {
      this.pool.forget(this);
      this.h2?.close();
    }, this.pool.limits.idleMs);
    this.idle.unref();
  }

  drain(): void {
    this.draining = true;
    this.pool.forget(this);
    if (this.reserved === 0 && this.h2) {
      clearTimeout(this.idle);
      this.h2.close();
    }
  }
}

export class Pool {
  private readonly sessions = new Map<string, PooledSession[]>();

  constructor(
    private readonly certs: TtlsCerts,
    private readonly tel: Telemetry,
    readonly limits: PoolLimits,
    private readonly connectTimeoutMs: number,
  ) {}

  /**
   * A channel to the terminator at address:port: a reserved stream on a pooled session, or a
   * TLS connection of its own. For 'h2' the caller must call session.release() when its stream ends.
   */
  async acquire(address: string, port: number): Promise<Channel> {
    const key = authority(address, port);
    for (;;) {
      const list = this.sessions.get(key) ?? [];
      let s = list.find((x) => !x.draining && x.reserved < this.limits.maxStreams && (!x.h2 || (!x.h2.closed && !x.h2.destroyed)));
      if (!s) {
        s = new PooledSession(this, key, address, port);
        list.push(s);
        this.sessions.set(key, list);
      }
      s.take();
      let ch: Channel;
      try {
        ch = await s.ready;
      } catch (e) {
        s.reserved--;
        throw e;
      }
      if (ch.kind === 'h2') return ch;
      // Only the first waiter gets a non-multiplexing connection; the others dial their own.
      if (!s.claimed) {
        s.claimed = true;
        return ch;
      }
    }
  }

  /** Remove a session from the pool (it keeps serving the streams it has). */
  forget(s: PooledSession): void {
    const list = this.sessions.get(s.key);
    if (!list) return;
    const i = list.indexOf(s);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.sessions.delete(s.key);
  }

  /** New certificates: sessions made with the old ones take no new streams. */
  drainAll(): void {
    for (const list of [...this.sessions.values()]) for (const s of [...list]) s.drain();
  }

  get size(): number {
    let n = 0;
    for (const l of this.sessions.values()) n += l.length;
    return n;
  }

  /** Open a mutually authenticated TLS connection that checks the server's certificate carries `address`. */
  dial(address: string, port: number): Promise<RawTls> {
    return new Promise((resolve, reject) => {
      const raw = net.connect({ host: address, port, noDelay: true, allowHalfOpen: true });
      raw.setKeepAlive(true, 30_000);
      // No servername: SNI may not carry an IP address, and without it node checks the
      // certificate against `host` — the destination address must be one of its IP SANs.
      const t = tls.connect({
        socket: raw,
        host: address,
        secureContext: this.certs.current.context,
        ALPNProtocols: [ALPN_H2, ALPN_RAW],
        rejectUnauthorized: true,
        allowHalfOpen: true,
      } as tls.ConnectionOptions);
      const timer = setTimeout(
        () =>
          raw.destroy(Object.assign(new Error(`no TLS handshake with ${authority(address, port)} within ${this.connectTimeoutMs} ms`), { code: 'ETIMEDOUT' })),
        this.connectTimeoutMs,
      );
      const fail = (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        raw.destroy();
        const reason = CERT_ERROR.test(e.code ?? '') ? 'server_certificate' : e.code && /^E[A-Z]+$/.test(e.code) ? 'terminator_unreachable' : 'tls_handshake';
        reject(new DialError(reason, e));
      };
      t.once('error', fail);
      raw.once('error', fail);
      t.once('secureConnect', () => {
        clearTimeout(timer);
        t.off('error', fail);
        raw.off('error', fail);
        t.on('error', () => {});
        raw.on('error', () => {});
        this.tel.handshake('client');
        resolve({ tls: t, raw });
      });
    });
  }
}
