// Carries one wrapped connection between two legs (an accepted or outgoing TCP socket, an HTTP/2
// stream, a per-connection TLS socket) with TCP's semantics: a FIN one way half-closes
// (END_STREAM on HTTP/2), the other way keeps flowing; a reset on one leg becomes a reset on
// the other (TCP RST <-> RST_STREAM with an error code; RFC 9113 8.5 names CONNECT_ERROR, node lets us
// send INTERNAL_ERROR without a preceding END_STREAM, see streamLeg); back-pressure
// comes from pipe(): a leg whose writes are not drained stops the other leg's reads, so at most
// a socket buffer and a flow-control window are held per direction.
import http2 from 'node:http2';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Result } from './telemetry.js';

export interface Leg {
  duplex: Duplex;
  /** Abort the leg as its transport says "reset". */
  reset(): void;
  /** After 'close': did the leg end normally (both directions finished, no reset)? */
  closedCleanly(): boolean;
  /** Calls fn when the leg's reading side ended with a FIN / END_STREAM, not a reset. */
  onCleanEnd(fn: () => void): void;
}

const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_HTTP2_STREAM_ERROR']);

export function socketLeg(s: net.Socket, raw: net.Socket = s): Leg {
  return {
    duplex: s,
    reset() {
      // resetAndDestroy() needs the TCP handle itself: a TLS socket resets through its raw socket.
      if (!raw.destroyed) raw.resetAndDestroy();
      else if (!s.destroyed) s.destroy();
    },
    closedCleanly: () => s.readableEnded && s.writableFinished,
    // The proxy may see the FIN before relaying starts (a client that writes and shuts down at once).
    onCleanEnd: (fn) => (s.readableEnded ? process.nextTick(fn) : s.once('end', fn)),
  };
}

export function streamLeg(st: http2.Http2Stream): Leg {
  return {
    duplex: st,
    reset() {
      // destroy(err) and not close(CONNECT_ERROR): close() ends the writable side first, and the
      // END_STREAM it sends can reach the peer before the RST_STREAM, which would then see a clean
      // half-close. destroy(err) sends RST_STREAM(INTERNAL_ERROR) alone.
      if (!st.destroyed) st.destroy(new Error('wrapped connection reset'));
    },
    closedCleanly: () => st.rstCode === undefined || st.rstCode === http2.constants.NGHTTP2_NO_ERROR,
    // A received RST_STREAM also ends the readable side; rstCode is known a moment later.
    onCleanEnd: (fn) => {
      const check = () =>
        setImmediate(() => {
          if (st.rstCode === undefined || st.rstCode === http2.constants.NGHTTP2_NO_ERROR) fn();
        });
      if (st.readableEnded) check();
      else st.once('end', check);
    },
  };
}

export interface RelayDone {
  /** Bytes from leg a to leg b (a faces the original client). */
  sent: number;
  received: number;
  result: Result;
  ms: number;
}

export interface Relay {
  /** Start moving bytes (lifecycle listeners are on from creation). */
  start(): void;
  /** Stop watching the legs without touching them (the proxy found the client speaks TLS itself). */
  abandon(): void;
  /** Set the result before the legs close, e.g. 'refused' when the terminator could not connect. */
  fail(result: Result): void;
}

export function relay(a: Leg, b: Leg, done: (d: RelayDone) => void, t0 = performance.now()): Relay {
  let sent = 0;
  let received = 0;
  let result: Result | undefined;
  let closed = 0;
  let abandoned = false;
  const onError = (other: Leg) => (e: NodeJS.ErrnoException) => {
    result ??= RESET_CODES.has(e.code ?? '') ? 'reset' : 'error';
    other.reset();
  };
  const onClose = (self: Leg, other: Leg) => () => {
    if (!self.closedCleanly()) {
      result ??= 'reset';
      other.reset();
    }
    if (++closed === 2 && !abandoned) done({ sent, received, result: result ?? 'ok', ms: performance.now() - t0 });
  };
  const listeners: [Duplex, string, Parameters<Duplex['off']>[1]][] = [
    [a.duplex, 'error', onError(b)],
    [b.duplex, 'error', onError(a)],
    [a.duplex, 'close', onClose(a, b)],
    [b.duplex, 'close', onClose(b, a)],
  ];
  for (const [d, ev, fn] of listeners) d.on(ev, fn);
  return {
    start() {
      a.duplex.on('data', (c: Buffer) => (sent += c.length));
      b.duplex.on('data', (c: Buffer) => (received += c.length));
      a.duplex.pipe(b.duplex, { end: false });
      b.duplex.pipe(a.duplex, { end: false });
      a.onCleanEnd(() => b.duplex.end());
      b.onCleanEnd(() => a.duplex.end());
    },
    abandon() {
      abandoned = true;
      for (const [d, ev, fn] of listeners) d.off(ev, fn);
    },
    fail(r) {
      result ??= r;
    },
  };
}
