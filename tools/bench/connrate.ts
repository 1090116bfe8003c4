// Standalone helper of the connect_rate benchmark, run inside a test namespace with nsenter:
//
//   node dist/tools/bench/connrate.js server HOST PORT
//     accepts connections and closes each one when the client does; prints "listening" once ready.
//   node dist/tools/bench/connrate.js client HOST PORT DURATION_MS CONCURRENCY [WARMUP_MS]
//     keeps CONCURRENCY connections in flight: each one connects, closes (FIN) and waits for
//     the server's FIN; counts completed connections during DURATION_MS after a warm-up and
//     prints one JSON line {connections, errors, seconds, rate, firstError}.
//
// Nothing is sent on the connections: a connect+close cycle is the flow lifecycle the agent
// pays for on every connection (the SYN inserts a flow, the close tracepoint removes it).
import net from 'node:net';

function serve(host: string, port: number): void {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.resume();
    s.on('end', () => s.end());
  });
  server.on('error', (e) => {
    process.stderr.write(`connrate server: ${e.message}\n`);
    process.exit(1);
  });
  server.listen({ host, port, backlog: 4096 }, () => process.stdout.write('listening\n'));
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
}

function client(host: string, port: number, durationMs: number, concurrency: number, warmupMs: number): void {
  const t0 = performance.now();
  const countFrom = t0 + warmupMs;
  const stopAt = countFrom + durationMs;
  let connections = 0;
  let errors = 0;
  let firstError: string | undefined;
  let inFlight = 0;
  let finished = false;

  const finish = () => {
    if (finished) return;
    finished = true;
    const seconds = durationMs / 1000;
    process.stdout.write(`${JSON.stringify({ connections, errors, seconds, rate: connections / seconds, firstError })}\n`, () => process.exit(0));
  };

  const one = () => {
    const now = performance.now();
    if (now >= stopAt) {
      if (inFlight === 0) finish();
      return;
    }
    inFlight++;
    const counted = now >= countFrom;
    let failed = false;
    const s = net.connect({ host, port });
    s.on('connect', () => s.end());
    s.on('error', (e: NodeJS.ErrnoException) => {
      failed = true;
      if (counted) errors++;
      firstError ??= e.code ?? e.message;
    });
    s.resume();
    s.on('close', () => {
      inFlight--;
      // Count a connection whose whole cycle ended inside the window.
      if (!failed && counted && performance.now() <= stopAt) connections++;
      one();
    });
  };
  for (let i = 0; i < concurrency; i++) one();
  // A wedged connection must not hang the benchmark.
  setTimeout(finish, warmupMs + durationMs + 10_000).unref();
}

const [mode, host, portArg, durationArg, concArg, warmArg] = process.argv.slice(2);
if (mode === 'server' && host && portArg) {
  serve(host, Number(portArg));
} else if (mode === 'client' && host && portArg && durationArg && concArg) {
  client(host, Number(portArg), Number(durationArg), Number(concArg), Number(warmArg ?? 300));
} else {
  process.stderr.write('usage: connrate.js server HOST PORT | client HOST PORT DURATION_MS CONCURRENCY [WARMUP_MS]\n');
  process.exit(2);
}
