// The client side of TTLS: a loopback listener (v4 and v6) for the connections the kernel
// redirected. For each one it asks where the application meant to go, opens a stream to the
// terminator on that host at once (server-first protocols must get their greeting), and relays.
// If the application's first bytes are a TLS ClientHello sent before the server spoke, the
// connection is already encrypted: the stream is cancelled and the bytes go directly to the
// original destination (the agent's own sockets are never redirected), and the kernel side is
// told to leave that address:port alone from then on.
import http2 from 'node:http2';
import net from 'node:net';
import type { Mode } from '../../schemas/config.js';
import { DialError, type Pool, type PooledSession } from './pool.js';
import { type Leg, type Relay, relay, socketLeg, streamLeg } from './relay.js';
import type { Original, Telemetry } from './telemetry.js';
import { authority, HDR_ERROR, HDR_SADDR, HDR_SPORT, plainAddress } from './wire.js';

export interface Destination {
  address: string;
  port: number;
}

export interface ProxyOptions {
  /** Loopback addresses to listen on; default 127.0.0.1 and ::1. */
  hosts?: string[];
  port: number;
  pool: Pool;
  tel: Telemetry;
  /** Where terminators listen (ttls.port), read per connection so a config change applies at once. */
  remotePort(): number;
  /** passive: a connection that cannot be wrapped goes direct; active: it is reset. */
  mode(): Mode;
  originalDestination(socket: net.Socket): Destination | null;
  onTlsDestination(address: string, port: number): void;
}

/** A TLS record header of type handshake (22), version 3.x, and a ClientHello (1) as first message. */
export function isClientHello(b: Buffer): boolean {
  return b[0] === 0x16 && (b.length < 2 || b[1] === 0x03) && (b.length < 6 || b[5] === 0x01);
}

export class TtlsProxy {
  private readonly servers: net.Server[] = [];
  /** Destinations seen speaking TLS: direct even before the kernel side skips them. */
  private readonly tlsDestinations = new Set<string>();

  constructor(private readonly opts: ProxyOptions) {}

  async listen(): Promise<void> {
    for (const host of this.opts.hosts ?? ['127.0.0.1', '::1']) {
      const s = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.onConnection(c));
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen({ host, port: this.opts.port, ipv6Only: host.includes(':'), backlog: 4096 }, () => {
          s.off('error', reject);
          resolve();
        });
      });
      this.servers.push(s);
    }
  }

  /** Bound addresses (port 0 in the options picks one). */
  addresses(): net.AddressInfo[] {
    return this.servers.map((s) => s.address() as net.AddressInfo);
  }

  close(): void {
    for (const s of this.servers.splice(0)) s.close();
  }

  /** The kernel side's table changed: forget what was learnt, it holds the truth now. */
  forgetTlsDestinations(): void {
    this.tlsDestinations.clear();
  }

  private onConnection(app: net.Socket): void {
    const t0 = performance.now();
    const { tel } = this.opts;
    app.on('error', () => {});
    app.setNoDelay(true);
    const src = { saddr: plainAddress(app.remoteAddress), sport: app.remotePort ?? 0 };
    const od = this.opts.originalDestination(app);
    if (!od) {
      tel.failed('client', src, 'no_original_destination');
      app.resetAndDestroy();
      return;
    }
    const o: Original = { ...src, daddr: plainAddress(od.address), dport: od.port };
    if (this.tlsDestinations.has(authority(o.daddr, o.dport))) {
      direct(app, o);
      return;
    }

    // Until the first bytes (either way) show who speaks first, nothing is relayed.
    let decided = false;
    let hello = false;
    let remote: { leg: Leg; cancel(): void } | undefined;
    let rel: Relay | undefined;
    let started = false;
    const maybeStart = () => {
      if (!decided || !rel || hello || started) return;
      started = true;
      rel.start();
    };
    const onFirst = (c: Buffer) => {
      app.pause();
      app.unshift(c);
      decided = true;
      if (isClientHello(c)) {
        hello = true;
        rel?.abandon();
        remote?.cancel();
        this.tlsDestinations.add(authority(o.daddr, o.dport));
        this.opts.onTlsDestination(o.daddr, o.dport);
        tel.failed('client', o, 'client_speaks_tls');
        direct(app, o);
        return;
      }
      maybeStart();
    };
    const onEnd = () => {
      decided = true;
      maybeStart();
    };
    app.once('data', onFirst);
    app.once('end', onEnd);
    app.resume();
    const serverSpoke = (leg: Leg) => {
      leg.duplex.once('data', (c: Buffer) => {
        // Already relaying: pipe() has this chunk too.
        if (decided) return;
        leg.duplex.pause();
        leg.duplex.unshift(c);
        decided = true;
        app.off('data', onFirst);
        app.pause();
        maybeStart();
      });
    };

    this.opts.pool.acquire(o.daddr, this.opts.remotePort()).then(
      (ch) => {
        if (ch.kind === 'h2') {
          const session: PooledSession = ch.session;
          if (hello || app.destroyed) {
            session.release();
            if (!hello) tel.closed('client', o, { sent: 0, received: 0, ms: performance.now() - t0, result: 'reset' });
            return;
          }
          let st: http2.ClientHttp2Stream;
          try {
            st = session.h2!.request(
              { ':method': 'CONNECT', ':authority': authority(o.daddr, o.dport), [HDR_SADDR]: o.saddr, [HDR_SPORT]: String(o.sport) },
              { endStream: false },
            );
          } catch (e) {
            // The session closed between the pool's choice and the request (the terminator dropped it).
            session.release();
            tel.failed('client', o, 'session_closed', e);
            tel.closed('client', o, { sent: 0, received: 0, ms: performance.now() - t0, result: 'error' });
            app.resetAndDestroy();
            return;
          }
          st.on('error', () => {});
          let answered = false;
          st.once('close', () => {
            // A terminator that refused this host's certificate closes the session without answering.
            if (!answered) tel.failed('client', o, 'no_answer_from_terminator', st.rstCode === undefined ? undefined : `RST_STREAM ${st.rstCode}`);
          });
          st.once('close', () => session.release());
          const leg = streamLeg(st);
          remote = { leg, cancel: () => st.close(http2.constants.NGHTTP2_CANCEL) };
          rel = relay(
            socketLeg(app),
            leg,
            (r) =>
              tel.closed('client', o, {
                ...r,
                extra: {
                  peer_serial: (session.h2?.socket as { getPeerCertificate?: () => { serialNumber?: string } } | undefined)?.getPeerCertificate?.()
                    ?.serialNumber,
                },
              }),
            t0,
          );
          st.once('response', (h) => {
            answered = true;
            if (h[':status'] === 200) return;
            rel!.fail('refused');
            tel.failed('client', o, 'destination_unreachable', h[HDR_ERROR]);
            app.resetAndDestroy();
          });
          serverSpoke(leg);
        } else {
          const { tls: t, raw } = ch.conn;
          if (hello || app.destroyed) {
            raw.destroy();
            return;
          }
          t.write(`${JSON.stringify({ dport: o.dport, saddr: o.saddr, sport: o.sport })}\n`);
          const leg = socketLeg(t, raw);
          remote = { leg, cancel: () => raw.destroy() };
          const serial = t.getPeerCertificate()?.serialNumber;
          rel = relay(socketLeg(app), leg, (r) => tel.closed('client', o, { ...r, extra: { peer_serial: serial, multiplexed: false } }), t0);
          serverSpoke(leg);
        }
        maybeStart();
      },
      (e: unknown) => {
        if (hello) return;
        const reason = e instanceof DialError ? e.reason : 'error';
        const cause = e instanceof DialError ? e.cause : e;
        if (this.opts.mode() === 'passive') {
          tel.failed('client', { ...o }, reason, cause);
          app.off('data', onFirst);
          app.off('end', onEnd);
          direct(app, o);
          return;
        }
        tel.failed('client', o, reason, cause);
        tel.closed('client', o, { sent: 0, received: 0, ms: performance.now() - t0, result: reason === 'terminator_unreachable' ? 'refused' : 'error' });
        app.resetAndDestroy();
      },
    );
  }
}

/** Carry the connection to its original destination unwrapped (its bytes are TLS, or passive mode). */
function direct(app: net.Socket, o: Original): void {
  const d = net.connect({ host: o.daddr, port: o.dport, allowHalfOpen: true, noDelay: true });
  relay(socketLeg(app), socketLeg(d), () => {}).start();
}
