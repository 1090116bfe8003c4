// `sslwall up`: parses its flags and runs the fleet of one (tools/lab/fleet-of-one.ts): a local
// etcd, the engine with its dashboard, and a passive agent in network namespaces of its own.
import { parseArgs } from 'node:util';
import pino from 'pino';
import { SslwallError } from '../../schemas/errors.js';
import { runFleetOfOne } from '../lab/fleet-of-one.js';

const HELP = `Usage: sslwall up [--etcd URL] [--listen HOST:PORT] [--tier TIER]

The fleet of one, to try sslwall on a single machine: starts a local etcd (unless --etcd), makes
a signing key pair, runs the engine (API, dashboard, /metrics) and an agent in passive mode on a
veth pair inside network namespaces of its own, with a plaintext HTTP peer to poke at.
Prints what to try next. Ctrl-C stops everything and removes what it made. npm start runs it.

Options:
  --etcd URL          use this etcd (on 127.0.0.1) instead of starting one
  --listen HOST:PORT  engine API and dashboard                      [127.0.0.1:7070]
  --tier TIER         the tier of the local agent                            [local]
`;

export async function upCommand(argv: string[]): Promise<number> {
  let v: { etcd?: string; listen?: string; tier?: string; help?: boolean };
  try {
    ({ values: v } = parseArgs({
      args: argv,
      options: { etcd: { type: 'string' }, listen: { type: 'string' }, tier: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_USAGE', `${(err as Error).message}; run sslwall up --help`);
  }
  if (v.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (process.getuid?.() !== 0) throw new SslwallError('SSLWALL_E_USAGE', 'sslwall up creates network namespaces and loads BPF programs: run it as root');
  const log = pino({ base: { component: 'up' } }, pino.destination(2));
  return runFleetOfOne({ etcd: v.etcd, listen: v.listen ?? '127.0.0.1:7070', tier: v.tier ?? 'local' }, log);
}
