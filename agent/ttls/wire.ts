// What the proxy and the terminator agree on (docs/ttls.md "On the wire").
//
// ALPN "h2": HTTP/2 over mutually authenticated TLS, one CONNECT stream (RFC 9113 8.5) per
// wrapped connection, `:authority` = the original destination "addr:port" (the terminator's own
// address), the original source in `sslwall-saddr` / `sslwall-sport` for the logs. HTTP/2 because
// it is the multiplexing protocol node ships (nghttp2): per-stream flow control, END_STREAM as a
// half-close, RST_STREAM as a reset, no library to add. Plain CONNECT, not extended CONNECT
// (`:protocol`): the stream is a TCP tunnel, which is exactly what CONNECT means.
//
// ALPN "sslwall-tcp/1": the fallback for a peer that does not multiplex: one TLS connection per
// wrapped connection, opened by one JSON line {"dport","saddr","sport"} from the client; then
// the bytes, a TLS close_notify + FIN as the half-close and a TCP RST as the reset.
import type http2 from 'node:http2';

export const ALPN_H2 = 'h2';
export const ALPN_RAW = 'sslwall-tcp/1';
export const HDR_SADDR = 'sslwall-saddr';
export const HDR_SPORT = 'sslwall-sport';
/** Set by the terminator on a non-200 answer: why the destination could not be reached. */
export const HDR_ERROR = 'sslwall-error';
export const RAW_HEADER_MAX = 512;

export interface RawHeader {
  dport: number;
  saddr: string;
  sport: number;
}

/** Limits of a pooled HTTP/2 session (docs/ttls.md "The pool"). */
export interface PoolLimits {
  /** Streams (wrapped connections) per TLS session before another session is opened. */
  maxStreams: number;
  /** A session without streams is closed after this long (one unref'd timer per idle session). */
  idleMs: number;
  /**
   * Per-stream flow-control window: what one stalled reader can hold in flight. The session
   * window is maxStreams times this, so stalled streams can never use it up and stall the others
   * (head-of-line blocking).
   */
  streamWindow: number;
}

export const DEFAULT_LIMITS: PoolLimits = { maxStreams: 64, idleMs: 60_000, streamWindow: 1 << 20 };

export function h2Settings(l: PoolLimits): http2.Settings {
  // 64 KiB frames: fewer frame headers and writes for bulk transfers; TLS records cap at 16 KiB anyway.
  return { initialWindowSize: l.streamWindow, maxFrameSize: 1 << 16, maxConcurrentStreams: Math.max(l.maxStreams, 1000), enablePush: false };
}

export function sessionWindow(l: PoolLimits): number {
  return Math.min(l.maxStreams * l.streamWindow, 2 ** 31 - 1);
}

/** nghttp2 counts buffered frames against this (MB); the default of 10 would refuse streams under load. */
export const MAX_SESSION_MEMORY_MB = 256;

/** "addr:port" with IPv6 in brackets, as :authority wants it. */
export function authority(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Strip the IPv4-mapped prefix a dual-stack socket reports ("::ffff:10.0.0.1"). */
export function plainAddress(a: string | undefined): string {
  if (!a) return '';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}
