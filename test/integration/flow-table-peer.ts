// Run inside a test namespace by flow-table.test.ts: long-lived, mostly idle connections.
//   server CERT KEY TLS_PORT PLAIN_PORT   a TLS and a plain TCP listener; logs each connection's
//                                         received bytes (the TLS one answers each write) ({"event":"data","port":P,"rport":R,"bytes":N})
//   client CA NAME=tls|plain@HOST:PORT... opens every connection (TLS ones complete the handshake),
//                                         logs {"event":"open","name":N,"lport":P}, then on each SIGUSR1
//                                         writes one payload on each: a TLS record (tls) or a line of
//                                         text (plain). Logs {"event":"closed","name":N} when one ends.
// Log lines are JSON on stdout (the spawning test reads the log file).
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

const say = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);
const [role, ...args] = process.argv.slice(2) as [string, ...string[]];

if (role === 'server') {
  const [cert, key, tlsPort, plainPort] = args as [string, string, string, string];
  // The TLS server answers each write: a flow joined midway is tls only once both directions
  // showed TLS records.
  const track = (port: number, reply: boolean) => (s: net.Socket) => {
    s.on('data', (b) => {
      say({ event: 'data', port, rport: s.remotePort, bytes: b.length });
      if (reply) s.write('ok\n');
    });
    s.on('error', () => {});
  };
  tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, track(Number(tlsPort), true)).listen(Number(tlsPort), '0.0.0.0');
  net.createServer(track(Number(plainPort), false)).listen(Number(plainPort), '0.0.0.0', () => say({ event: 'listening' }));
} else {
  const [ca, ...specs] = args as [string, ...string[]];
  const conns = new Map<string, { sock: net.Socket; raw: net.Socket; kind: string }>();
  let pokes = 0;
  for (const spec of specs) {
    const m = /^(\w[\w-]*)=(tls|plain)@([\d.]+):(\d+)$/.exec(spec);
    if (!m) throw new Error(`bad connection spec ${spec}`);
    const [, name, kind, host, port] = m as unknown as [string, string, string, string, string];
    // TLS over a TCP socket of our own: a TLSSocket cannot be reset, its TCP socket can.
    const raw = net.connect(Number(port), host);
    const sock =
      kind === 'tls'
        ? tls.connect({ socket: raw, ca: fs.readFileSync(ca), checkServerIdentity: () => undefined }, () => say({ event: 'open', name, lport: raw.localPort }))
        : raw.once('connect', () => say({ event: 'open', name, lport: raw.localPort }));
    sock.on('error', (err) => say({ event: 'error', name, err: err.message }));
    sock.on('close', () => say({ event: 'closed', name }));
    conns.set(name, { sock, raw, kind });
  }
  process.on('SIGUSR1', () => {
    pokes++;
    for (const [name, { sock, kind }] of conns) {
      if (sock.destroyed) continue;
      sock.write(kind === 'tls' ? `tls poke ${pokes} from ${name}\n` : `plaintext poke ${pokes} from ${name}: readable text\n`);
    }
    say({ event: 'poked', n: pokes });
  });
  // RST instead of FIN: SIGUSR2 resets the connection named in the file RESET_NAME points at.
  process.on('SIGUSR2', () => {
    const name = fs.readFileSync(process.env.RESET_NAME ?? '/dev/null', 'utf8').trim();
    conns.get(name)?.raw.resetAndDestroy();
    say({ event: 'reset', name });
  });
}
