// One TTLS host for the lab (tests and benches): the real proxy and terminator of agent/ttls,
// started from one JSON argument, without the kernel side. The original destination of an
// accepted connection comes from a table file keyed by the connection's loopback source address
// (a client picks its destination by binding to 127.0.0.2, 127.0.0.3, … or ::1); the file is read
// per connection so a test can add entries while the node runs.
//
//   node dist/tools/lab/ttls-node.js '{"certs":{"cert","key","ca"},"config":{...},"proxyPort":N,
//     "table":"FILE","metricsPort":N,"multiplex":true,"limits":{...}}'
//
// Logs (pino, one JSON line each) go to stdout; "ttls_node_ready" once both listeners are up;
// onTlsDestination calls are logged as "tls_destination". GET /metrics on 127.0.0.1:metricsPort.
import fs from 'node:fs';
import http from 'node:http';
import { pino } from 'pino';
import client from 'prom-client';
import { type Destination, startTtls, TtlsCerts } from '../../agent/ttls/index.js';
import type { PoolLimits } from '../../agent/ttls/wire.js';
import { ConfigSchema } from '../../schemas/config.js';

export interface TtlsNodeArgs {
  certs: { cert: string; key: string; ca: string };
  config: unknown;
  proxyPort: number;
  /** JSON file: { "<loopback source address>": { "address": "...", "port": N } } */
  table: string;
  metricsPort: number;
  multiplex?: boolean;
  /** Run the terminator too (default true). */
  terminator?: boolean;
  limits?: Partial<PoolLimits>;
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2] ?? '') as TtlsNodeArgs;
  const log = pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
  const config = ConfigSchema.parse(args.config);
  if (!config.ttls) throw new Error('ttls-node: the config has no ttls member');
  const registry = new client.Registry();
  const certs = new TtlsCerts(args.certs, log);
  const ttls = await startTtls({
    config: { ...config, ttls: config.ttls },
    certs,
    log,
    registry,
    proxyPort: args.proxyPort,
    multiplex: args.multiplex,
    terminator: args.terminator,
    limits: args.limits,
    originalDestination(socket): Destination | null {
      const table = JSON.parse(fs.readFileSync(args.table, 'utf8')) as Record<string, Destination>;
      const src = (socket.remoteAddress ?? '').replace(/^::ffff:(?=\d)/, '');
      return table[src] ?? null;
    },
    onTlsDestination(address, port) {
      log.info({ event: 'tls_destination', address, port });
    },
  });
  const metrics = http.createServer(async (_req, res) => {
    res.setHeader('content-type', registry.contentType);
    res.end(await registry.metrics());
  });
  await new Promise<void>((r) => metrics.listen(args.metricsPort, '127.0.0.1', r));
  log.info({ event: 'ttls_node_ready', proxy: ttls.proxyAddresses(), port: ttls.terminatorPort(), pid: process.pid });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      ttls.stop();
      certs.close();
      metrics.close();
      process.exit(0);
    });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`ttls-node: ${e.stack ?? e.message}\n`);
  process.exit(1);
});
