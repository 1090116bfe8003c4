// Stand-ins for the transparent-TLS kernel tests (test/integration/ttls-kernel.test.ts), run inside
// a test bed's namespaces:
//   serve PORT...            a server: answers every connection with "direct PORT\n" and closes
//   proxy PORT BPFFS         the local proxy: on 127.0.0.1 and ::1, answers "proxy ADDR PORT\n" with
//                            the original destination the agent's lookup finds for the accepted
//                            socket ("proxy none" if none), then echoes what it receives
//   connect HOST PORT [--go FILE] [--hold FILE]
//                            a client: waits for FILE (--go) before connecting, prints the first
//                            line it receives ("error CODE" on failure); with --hold, keeps the
//                            connection open until FILE exists, then sends "ping" and prints the echo
import fs from 'node:fs';
import net from 'node:net';
import { pinLayout } from '../../agent/paths.js';
import { lookupOriginal } from '../../agent/ttls-kernel.js';
import { native } from '../../native/index.js';

const [mode, ...args] = process.argv.slice(2);

async function untilExists(file: string): Promise<void> {
  while (!fs.existsSync(file)) await new Promise((r) => setTimeout(r, 20));
}

function firstLine(sock: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.off('data', onData);
      resolve(buf.slice(0, nl));
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.once('end', () => resolve(buf || 'eof'));
  });
}

function listen(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => server.once('error', reject).listen({ port, host, ipv6Only: host === '::1' }, resolve));
}

async function main(): Promise<void> {
  if (mode === 'serve') {
    for (const port of args.map(Number)) {
      await listen(
        net.createServer((s) => s.end(`direct ${port}\n`)),
        port,
        '::',
      );
    }
    console.log('ready');
  } else if (mode === 'proxy') {
    const [port, bpffs] = [Number(args[0]), args[1]!];
    const byLocal = native().getPinned(pinLayout(bpffs).map('sslwall_ttls_by_local'), 'map');
    const onConn = (s: net.Socket) => {
      const orig = lookupOriginal(byLocal, s.remoteAddress!, s.remotePort!);
      s.write(orig ? `proxy ${orig.address} ${orig.port}\n` : 'proxy none\n');
      s.on('data', (d) => s.write(d));
      s.on('end', () => s.end());
      s.on('error', () => s.destroy());
    };
    await listen(net.createServer(onConn), port, '127.0.0.1');
    await listen(net.createServer(onConn), port, '::1');
    console.log('ready');
  } else if (mode === 'connect') {
    const [host, port] = [args[0]!, Number(args[1])];
    const opt = (name: string) => {
      const i = args.indexOf(name);
      return i < 0 ? undefined : args[i + 1];
    };
    const go = opt('--go');
    const hold = opt('--hold');
    if (go) await untilExists(go);
    const sock = net.connect({ host, port });
    try {
      console.log(await firstLine(sock));
      if (hold) {
        await untilExists(hold);
        sock.write('ping\n');
        console.log(`echo ${await firstLine(sock)}`);
      }
    } catch (err) {
      console.log(`error ${(err as NodeJS.ErrnoException).code}`);
    }
    sock.end();
    sock.destroySoon();
  } else {
    console.error('usage: ttls-probe serve PORT... | proxy PORT BPFFS | connect HOST PORT [--go FILE] [--hold FILE]');
    process.exit(2);
  }
}

await main();
