// A TCP proxy between a client (the agent, an etcd3 client) and a server (etcd) that can fake
// network faults: a partition that black-holes or resets connections, and added latency. It
// forwards bytes untouched, so gRPC over HTTP/2 passes through as if direct while healthy.
import net from 'node:net';
import { freePort } from './etcd.js';

/**
 * 'blackhole': new connections are accepted and never forwarded, like packets dropped on the way
 *   (the client only notices through its own timeouts or keepalives).
 * 'reset': new connections are reset at once, like a host that refuses them.
 */
export type PartitionMode = 'blackhole' | 'reset';

export interface FaultProxy {
  port: number;
  /** http://127.0.0.1:PORT, for an etcd client's hosts. */
  url: string;
  /** Connections currently forwarded (upstream pairs) plus black-holed ones. */
  connections(): number;
  /** Cut every open connection and treat new ones according to `mode` (default black-hole). */
  partition(mode?: PartitionMode): void;
  /** Forward again; black-holed connections are reset (they never reached the server). */
  heal(): void;
  /** Delay every chunk, both ways, by `ms` (0: none). Order within a connection is kept. */
  setLatency(ms: number): void;
  close(): Promise<void>;
}

export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  let mode: 'pass' | PartitionMode = 'pass';
  let latencyMs = 0;
  const pairs = new Set<[net.Socket, net.Socket]>();
  const holes = new Set<net.Socket>();

  /** Copy src to dst, each chunk delayed to now+latency but never before the previous one. */
  function forward(src: net.Socket, dst: net.Socket): void {
    const queue: Array<{ at: number; buf: Buffer }> = [];
    let lastAt = 0;
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const pump = () => {
      timer = undefined;
      while (queue.length && queue[0].at <= Date.now()) dst.write(queue.shift()!.buf);
      if (queue.length) timer = setTimeout(pump, queue[0].at - Date.now());
      else if (ended) dst.end();
    };
    src.on('data', (buf: Buffer) => {
      if (latencyMs === 0 && queue.length === 0) {
        // The fast path keeps backpressure, so bulk transfers do not pile up in memory.
        if (!dst.write(buf)) {
          src.pause();
          dst.once('drain', () => src.resume());
        }
        return;
      }
      lastAt = Math.max(lastAt, Date.now() + latencyMs);
      queue.push({ at: lastAt, buf });
      timer ??= setTimeout(pump, lastAt - Date.now());
    });
    // Half-close passes through (after the delayed data), as HTTP/2 GOAWAY + FIN would.
    src.on('end', () => {
      ended = true;
      if (!queue.length) dst.end();
    });
    src.on('close', () => {
      if (timer) clearTimeout(timer);
    });
  }

  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    client.setNoDelay(true);
    if (mode === 'reset') {
      client.resetAndDestroy();
      return;
    }
    if (mode === 'blackhole') {
      // Read and discard, so the client's writes succeed and nothing hints at the partition.
      holes.add(client);
      client.on('data', () => {});
      client.on('error', () => {});
      client.on('close', () => holes.delete(client));
      return;
    }
    const upstream = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    upstream.setNoDelay(true);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of pair) {
      s.on('error', drop);
      s.on('close', drop);
    }
    forward(client, upstream);
    forward(upstream, client);
  });
  server.on('error', () => {}); // per-connection errors are handled on the sockets

  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  // The proxy must not keep a finished test alive; close() is still expected.
  server.unref();

  const resetAll = () => {
    for (const [c, u] of pairs) {
      c.resetAndDestroy();
      u.destroy();
    }
    pairs.clear();
    for (const h of holes) h.resetAndDestroy();
    holes.clear();
  };

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    connections: () => pairs.size + holes.size,
    partition(m: PartitionMode = 'blackhole') {
      mode = m;
      // Open connections die too: a partition does not spare established streams (watches).
      for (const [c, u] of pairs) {
        c.destroy();
        u.destroy();
      }
      pairs.clear();
    },
    heal() {
      mode = 'pass';
      // A black-holed connection has no upstream and the server never saw its handshake: it
      // could never carry anything, so end it and let the client reconnect.
      for (const h of holes) h.resetAndDestroy();
      holes.clear();
    },
    setLatency(ms: number) {
      latencyMs = Math.max(0, ms);
    },
    close() {
      resetAll();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
