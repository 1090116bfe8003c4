// The server side of TTLS: listens on ttls.port on every address of the host (one dual-stack
// socket on "::"), requires a client certificate chaining to the fleet CA, and for each wrapped
// connection connects at once to the original destination port on the address the client
// reached it on — one of this host's own addresses — without waiting for client bytes, so
// server-first protocols (SMTP, MySQL, FTP, POP3, IMAP) greet as usual.
//
// Source address: the server application sees a connection from this host to itself, i.e. from
// the destination address (the kernel picks the destination as source on a local route), not the
// original client's address. The original client is in the `ttls_closed` line (saddr, sport).
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import type { CertSet, TtlsCerts } from './certs.js';
import { relay, socketLeg, streamLeg } from './relay.js';
import type { Original, Telemetry } from './telemetry.js';
import {
  ALPN_H2,
  ALPN_RAW,
  DEFAULT_LIMITS,
  HDR_ERROR,
  HDR_SADDR,
  HDR_SPORT,
  h2Settings,
  MAX_SESSION_MEMORY_MB,
  type PoolLimits,
  plainAddress,
  RAW_HEADER_MAX,
  type RawHeader,
  sessionWindow,
} from './wire.js';

export interface TerminatorOptions {
  port: number;
  certs: TtlsCerts;
  tel: Telemetry;
  /** Default "::" (every v4 and v6 address). */
  host?: string;
  /** Offer HTTP/2 multiplexing (default true); false offers only the per-connection protocol. */
  multiplex?: boolean;
  limits?: PoolLimits;
}

function secureOptions(c: CertSet): tls.SecureContextOptions {
  return { cert: c.cert, key: c.key, ca: c.ca };
}

export class Terminator {
  private server: tls.Server;
  private readonly h2: http2.Http2Server;
  private readonly limits: PoolLimits;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private readonly onCerts = (c: CertSet) => this.server.setSecureContext(secureOptions(c));
  port: number;

  constructor(private readonly opts: TerminatorOptions) {
    this.port = opts.port;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    // A plain (not secure) Http2Server fed the TLS sockets this server authenticated: it lets one
    // TLS listener offer both ALPN protocols.
    this.h2 = http2.createServer({ settings: h2Settings(this.limits), maxSessionMemory: MAX_SESSION_MEMORY_MB });
    this.h2.on('session', (s) => {
      this.sessions.add(s);
      s.once('close', () => this.sessions.delete(s));
      s.on('error', () => {});
      s.once('connect', () => s.setLocalWindowSize(sessionWindow(this.limits)));
    });
    this.h2.on('stream', (st, headers) => this.onStream(st, headers));
    this.server = this.makeServer();
    opts.certs.on('change', this.onCerts);
  }

  private makeServer(): tls.Server {
    const server = tls.createServer({
      ...secureOptions(this.opts.certs.current),
      requestCert: true,
      // Checked in onSecure instead: node reports a refused client certificate only as "socket
      // hang up", and the log must say why.
      rejectUnauthorized: false,
      ALPNProtocols: this.opts.multiplex === false ? [ALPN_RAW] : [ALPN_H2, ALPN_RAW],
      allowHalfOpen: true,
    });
    server.on('secureConnection', (s) => this.onSecure(s));
    server.on('tlsClientError', (err: NodeJS.ErrnoException, s) => {
      this.opts.tel.failed('server', { saddr: plainAddress(s.remoteAddress), daddr: plainAddress(s.localAddress), dport: this.port }, 'tls_handshake', err);
    });
    return server;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.opts.host ?? '::', port: this.port, ipv6Only: false }, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** Move to another port: a new listener; connections accepted by the old one go on. */
  async setPort(port: number): Promise<void> {
    if (port === this.port) return;
    const old = this.server;
    this.port = port;
    this.server = this.makeServer();
    await this.listen();
    old.close();
  }

  /**
   * Stop accepting: the listener closes, and every session gets a GOAWAY, so clients open no new
   * stream on it (their next connection finds no terminator at once); streams already open go on.
   */
  close(): void {
    this.opts.certs.off('change', this.onCerts);
    this.server.close();
    for (const s of this.sessions) s.close();
  }

  private onSecure(s: tls.TLSSocket): void {
    s.on('error', () => {});
    if (!s.authorized) {
      const cert = s.getPeerCertificate();
      this.opts.tel.failed(
        'server',
        { saddr: plainAddress(s.remoteAddress), daddr: plainAddress(s.localAddress), dport: this.port },
        'client_certificate',
        new Error(
          `${s.authorizationError ?? 'no client certificate'}${cert?.subject ? ` (subject ${JSON.stringify(cert.subject)}, issuer ${JSON.stringify(cert.issuer)})` : ''}`,
        ),
      );
      s.destroy();
      return;
    }
    this.opts.tel.handshake('server');
    s.setKeepAlive(true, 30_000);
    s.setNoDelay(true);
    if (s.alpnProtocol === ALPN_H2) this.h2.emit('connection', s);
    else this.onRaw(s);
  }

  private peerSerial(s: tls.TLSSocket): string | undefined {
    return s.getPeerCertificate()?.serialNumber;
  }

  /** Connect to the original destination on this host; `onConnect` runs once it answers. */
  private dial(daddr: string, dport: number, onError: (e: NodeJS.ErrnoException) => void, onConnect: (d: net.Socket) => void): net.Socket {
    const d = net.connect({ host: daddr, port: dport, allowHalfOpen: true, noDelay: true });
    const early = (e: NodeJS.ErrnoException) => onError(e);
    d.once('error', early);
    d.once('connect', () => {
      d.off('error', early);
      onConnect(d);
    });
    return d;
  }

  private onStream(st: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const t0 = performance.now();
    const { tel } = this.opts;
    const sock = st.session?.socket as tls.TLSSocket | undefined;
    const daddr = plainAddress(sock?.localAddress);
    let dport = 0;
    let host = '';
    try {
      const u = new URL(`tcp://${headers[':authority'] ?? ''}`);
      dport = Number(u.port);
      host = plainAddress(u.hostname.replace(/^\[|\]$/g, ''));
    } catch {
      /* refused below */
    }
    const o: Original = { saddr: String(headers[HDR_SADDR] ?? ''), sport: Number(headers[HDR_SPORT] ?? 0), daddr, dport };
    st.on('error', () => {});
    // Only this host's own address, and never the terminator itself: no relaying elsewhere.
    if (headers[':method'] !== 'CONNECT' || host !== daddr || !(dport > 0 && dport < 65536) || dport === this.port) {
      st.respond({ ':status': 400, [HDR_ERROR]: 'bad_request' }, { endStream: true });
      tel.failed('server', o, 'bad_request');
      tel.closed('server', o, { sent: 0, received: 0, ms: performance.now() - t0, result: 'refused' });
      return;
    }
    const extra = { peer: plainAddress(sock?.remoteAddress), peer_serial: sock && this.peerSerial(sock) };
    const d = this.dial(
      daddr,
      dport,
      (e) => {
        if (!st.closed) st.respond({ ':status': 502, [HDR_ERROR]: e.code ?? 'error' }, { endStream: true });
        tel.closed('server', o, { sent: 0, received: 0, ms: performance.now() - t0, result: e.code === 'ECONNREFUSED' ? 'refused' : 'error', extra });
      },
      (dest) => {
        if (st.closed || st.destroyed) {
          dest.resetAndDestroy();
          tel.closed('server', o, { sent: 0, received: 0, ms: performance.now() - t0, result: 'reset', extra });
          return;
        }
        st.respond({ ':status': 200 });
        relay(streamLeg(st), socketLeg(dest), (r) => tel.closed('server', o, { ...r, extra }), t0).start();
      },
    );
    // The client gave up before the destination answered.
    st.once('close', () => {
      if (d.connecting) d.destroy();
    });
  }

  private onRaw(s: tls.TLSSocket): void {
    const t0 = performance.now();
    const { tel } = this.opts;
    const raw = (s as unknown as { _parent?: net.Socket })._parent ?? s;
    const daddr = plainAddress(s.localAddress);
    const extra = { peer: plainAddress(s.remoteAddress), peer_serial: this.peerSerial(s) };
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const nl = buf.indexOf(10);
      if (nl < 0 && buf.length < RAW_HEADER_MAX) return;
      s.off('data', onData);
      s.pause();
      let h: RawHeader;
      try {
        if (nl < 0) throw new Error('header too long');
        h = JSON.parse(buf.subarray(0, nl).toString()) as RawHeader;
        if (!(Number.isInteger(h.dport) && h.dport > 0 && h.dport < 65536) || h.dport === this.port) throw new Error('bad port');
      } catch (e) {
        tel.failed('server', { daddr }, 'bad_request', e);
        socketLeg(s, raw).reset();
        return;
      }
      const o: Original = { saddr: String(h.saddr ?? ''), sport: Number(h.sport ?? 0), daddr, dport: h.dport };
      if (buf.length > nl + 1) s.unshift(buf.subarray(nl + 1));
      this.dial(
        daddr,
        h.dport,
        (e) => {
          socketLeg(s, raw).reset();
          tel.closed('server', o, { sent: 0, received: 0, ms: performance.now() - t0, result: e.code === 'ECONNREFUSED' ? 'refused' : 'error', extra });
        },
        (dest) => {
          relay(socketLeg(s, raw), socketLeg(dest), (r) => tel.closed('server', o, { ...r, extra }), t0).start();
        },
      );
    };
    s.on('data', onData);
  }
}
