// `sslwall etcd setup|provision`: etcd's users and roles for the engine and the agents (the work
// is rollout/etcd-roles.ts; this file parses and prints).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type HostSpec, provisionHosts, setupEtcdAuth } from '../../rollout/etcd-roles.js';
import { SslwallError } from '../../schemas/errors.js';
import { createEtcdClient, explainDenied } from '../../schemas/etcd.js';
import { ETCD_OPTIONS, etcdFlags } from './etcd-options.js';

export const ETCD_HELP = `Usage: sslwall etcd <setup|provision> --etcd URL[,URL...] [admin credentials] [options]

  setup       create etcd's root user, the engine's role and user (sslwall-engine), and turn
              etcd's auth on. Run once per etcd cluster; again changes nothing
  provision   create each host's user and role, and its tier's role:
                --tier T --host H [--host H2 ...]    hosts of one tier
                --hosts-file FILE                    one "HOST TIER" a line (# comments;
                                                     with --tier, a line may be HOST alone)
              what exists already is kept; a host given with another tier is moved

A host's user is sslwall-host-<HOST> with the roles sslwall-tier-<TIER> (read
tiers/<TIER>/config) and sslwall-host-<HOST> (read hosts/<HOST>/override, write
health/<TIER>/<HOST> and summary/<TIER>/<HOST>). With etcd's --client-cert-auth the user is the CN of the certificate a
client connects with: give the agent a certificate with CN sslwall-host-<HOST> (the engine:
CN sslwall-engine; these commands: CN root). docs/etcd.md "Access control".

Admin credentials (root, once auth is on):
  --etcd-cacert FILE --etcd-cert FILE --etcd-key FILE   a certificate with CN root
  --etcd-user root --etcd-password-file FILE            or root's password
Options:
  --etcd-prefix P             key prefix the grants cover                     [/sslwall/]
  --root-password-file FILE   setup: give root this password (default: none; root logs in by
                              certificate only)
  --engine-password-file FILE setup: give sslwall-engine this password (engines that connect
                              with --etcd-user instead of a certificate)
  --concurrency N             provision: hosts at once                               [32]
  --json                      print what was created as JSON
`;

const OPTIONS = {
  ...ETCD_OPTIONS,
  'root-password-file': { type: 'string' },
  'engine-password-file': { type: 'string' },
  tier: { type: 'string' },
  host: { type: 'string', multiple: true },
  'hosts-file': { type: 'string' },
  concurrency: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function usage(message: string): SslwallError {
  return new SslwallError('SSLWALL_E_USAGE', message);
}

function readFile(file: string, flag: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read ${flag} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** The hosts from --tier/--host and --hosts-file. */
function hostList(tier: string | undefined, hosts: string[], file: string | undefined): HostSpec[] {
  const out: HostSpec[] = [];
  if (hosts.length && !tier) throw usage('--host needs --tier T (the tier of the hosts given with --host)');
  for (const hostId of hosts) out.push({ tier: tier!, hostId });
  if (file) {
    readFile(file, '--hosts-file')
      .split('\n')
      .forEach((line, i) => {
        const words = line.replace(/#.*/, '').trim().split(/\s+/).filter(Boolean);
        if (!words.length) return;
        const t = words[1] ?? tier;
        if (!t || words.length > 2)
          throw usage(`--hosts-file ${file} line ${i + 1}: expected "HOST TIER"${tier ? ' or "HOST"' : ''}, got ${JSON.stringify(line)}`);
        out.push({ hostId: words[0]!, tier: t });
      });
  }
  if (!out.length) throw usage('provision needs hosts: --tier T --host H [--host H2 ...], or --hosts-file FILE');
  return out;
}

export async function etcdCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args[0]?.startsWith('-') || !args.length ? ['help', ...args] : args;
  let v: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values: v } = parseArgs({ args: rest, options: OPTIONS, allowPositionals: false, strict: true }));
  } catch (err) {
    throw usage(`${(err as Error).message}; run sslwall etcd --help`);
  }
  if (sub === 'help' || v.help) {
    process.stdout.write(ETCD_HELP);
    return v.help ? 0 : 2;
  }
  if (sub !== 'setup' && sub !== 'provision') throw usage(`unknown etcd command '${sub}'; run sslwall etcd --help`);
  const s = (k: string) => v[k] as string | undefined;
  const { conn, prefix } = etcdFlags(v, `etcd ${sub}`);
  const concurrency = s('concurrency') === undefined ? 32 : Number(s('concurrency'));
  if (!Number.isInteger(concurrency) || concurrency < 1) throw usage('--concurrency N: a whole number of at least 1');
  const hosts = sub === 'provision' ? hostList(s('tier'), (v.host as string[] | undefined) ?? [], s('hosts-file')) : [];
  // Root is made without a password unless given one: with neither a certificate nor a password
  // login here, auth on would leave nobody able to log in as root.
  if (sub === 'setup' && !conn.cert && !conn.user && !s('root-password-file'))
    throw usage('setup without a client certificate (CN root) needs --root-password-file FILE: root would have no way to log in once auth is on');
  const pw = (flag: string) => (s(flag) ? readFile(s(flag)!, `--${flag}`).trim() : undefined);
  const client = createEtcdClient(conn);
  const started = Date.now();
  try {
    const r =
      sub === 'setup'
        ? await setupEtcdAuth(client, { prefix, rootPassword: pw('root-password-file'), enginePassword: pw('engine-password-file') })
        : await provisionHosts(client, hosts, { prefix, concurrency });
    const ms = Date.now() - started;
    if (v.json) process.stdout.write(`${JSON.stringify({ ...r, ms })}\n`);
    else
      process.stdout.write(
        `${sub === 'setup' ? 'auth on; ' : `${hosts.length} host(s); `}created ${r.roles} role(s), ${r.users} user(s), ${r.grants} grant(s); revoked ${r.revoked} (${ms} ms)\n`,
      );
    return 0;
  } catch (err) {
    throw explainDenied(err, `etcd ${sub}`, 'the root role: connect as root (a certificate with CN root, or --etcd-user root)');
  } finally {
    client.close();
  }
}
