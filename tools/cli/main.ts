// The `sslwall` command: one executable, a subcommand per job. Usage errors exit 2.

import { spawn } from 'node:child_process';
import os from 'node:os';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import pino from 'pino';
import { type AgentOptions, runAgent } from '../../agent/agent.js';
import { joinBypassCgroup } from '../../agent/cgroup.js';
import { CgroupNames } from '../../agent/cgroup-names.js';
import { readConfigFile } from '../../agent/config-file.js';
import { readPinnedFlows } from '../../agent/flows.js';
import { HEALTH_SPREAD_MS } from '../../agent/health.js';
import { defaultHostId } from '../../agent/interfaces.js';
import { DEFAULT_BPFFS, DEFAULT_STATE_DIR } from '../../agent/paths.js';
import { uninstall } from '../../agent/uninstall.js';
import { exitCodeFor, SslwallError } from '../../schemas/errors.js';
import { Verifier } from '../../schemas/signing.js';
import { ETCD_OPTIONS, etcdFlags } from './etcd-options.js';

const VERSION = '0.1.0';

const HELP = `sslwall ${VERSION} — find and stop TCP traffic that is not TLS

Usage: sslwall <command> [options]

Commands:
  agent       run the host agent: load the filter, apply a config, report or block plaintext
  flows       list the open flows the filter knows and their class
  exec        run a command whose connections are bypassed
  check       validate a config file and print it normalised
  uninstall   remove every filter, link and pin the agent made
  engine      run a rollout engine replica (API, dashboard, rollout loop)
  config      set, get, diff and revert tier config versions (through the engine)
  rollout     start, watch and steer staged rollouts (through the engine)
  agents      the agents of a tier: version, mode, cohort, errors, last seen (through the engine)
  violations  plaintext connections by service, host and destination: is my traffic affected?
  etcd        set up etcd's auth and provision hosts' users and roles (least privilege)
  keygen      make the ed25519 key pair that signs tier documents
  token       add a user to the engine's users file and print its new token
  simulate    run N simulated agents against etcd (tests, benchmarks)
  up          the fleet of one: etcd, engine and an agent in a namespace of its own
  bench       run the benchmarks (same as npm run bench)

Run 'sslwall <command> --help' for a command's options. Docs: docs/cli.md.
`;

const COMMANDS: Record<string, { help: string; options: ParseArgsConfig['options']; run: (v: Values, rest: string[]) => Promise<number> }> = {
  agent: {
    help: `Usage: sslwall agent (--config-file FILE | --etcd URL[,URL...] --tier TIER) [options]

Runs in the foreground and attaches to the interfaces of the network namespace it runs in. Logs
are pino JSON lines on stdout; each violation is a line with "event":"violation".

Config source, one of:
  --config-file FILE      a config document (JSON, docs/config.md), re-read when it changes and on
                          SIGHUP; an invalid file is refused and the previous config stays
  --etcd URL[,URL...]     etcd endpoints; the agent watches its tier's document and its own
                          override, and reports health under a lease (docs/etcd.md)
    --tier TIER           the tier this host belongs to                      (required with --etcd)
    --host-id ID          this host's id                                     [/etc/machine-id]
    --etcd-prefix P       key prefix                                         [/sslwall/]
    --etcd-cacert FILE    CA bundle for https:// endpoints
    --etcd-cert FILE      client certificate (mutual TLS)
    --etcd-key FILE       client key; with etcd's auth on, the certificate's CN is the etcd
                          user (sslwall-host-<ID>: sslwall etcd provision)
    --etcd-user NAME      etcd user for password auth instead...
    --etcd-password-file FILE  ...and the file holding its password
    --verify-key FILE|DIR the engine's ed25519 public key (verify.pub), or a folder whose *.pub
                          files are all accepted (re-read when they change); repeat for more.
                          Documents not signed by one of them are refused like invalid ones
    --insecure-unsigned   accept unsigned documents (tests, labs); required without --verify-key
    --health-spread MS    each health write but the first waits a random time up to MS, so a
                          tier's reports of a change do not reach etcd all at once (0-60000)
                                                                                 [${HEALTH_SPREAD_MS}]

Options:
  --iface IF              interface to attach to; repeat for more  [interfaces carrying routes, not lo]
  --bpffs DIR             where pins live, on a BPF filesystem    [${DEFAULT_BPFFS}]
  --cgroup DIR            cgroup v2 folder: 'sslwall exec' bypass, and where transparent TLS
                          wraps connect() calls                         [first cgroup2 mount]
  --state-dir DIR         last good config is kept here               [${DEFAULT_STATE_DIR}]
  --metrics-addr H:P      serve Prometheus /metrics on this address; scrapes of
                          this port here are never judged                     [off]
  --log-level LEVEL       trace, debug, info, warn, error                      [info]

Transparent TLS (docs/ttls.md), all three or none; with them and a "ttls" config member the
agent wraps the selected connections and runs this host's terminator:
  --ttls-cert FILE        this host's certificate (PEM; its addresses as IP SANs)
  --ttls-key FILE         its private key (PEM)
  --ttls-ca FILE          the fleet CA (PEM); certificates are re-read when the files change

SIGTERM/SIGINT: exits; the programs stay pinned and enforcing, and a restart adopts them.
`,
    options: {
      'config-file': { type: 'string' },
      ...ETCD_OPTIONS,
      tier: { type: 'string' },
      'host-id': { type: 'string' },
      'verify-key': { type: 'string', multiple: true },
      'insecure-unsigned': { type: 'boolean' },
      'health-spread': { type: 'string' },
      iface: { type: 'string', multiple: true },
      bpffs: { type: 'string' },
      cgroup: { type: 'string' },
      'state-dir': { type: 'string' },
      'metrics-addr': { type: 'string' },
      'ttls-cert': { type: 'string' },
      'ttls-key': { type: 'string' },
      'ttls-ca': { type: 'string' },
      'log-level': { type: 'string' },
    },
    async run(v) {
      const configFile = str(v['config-file']);
      const etcd = str(v.etcd);
      if (!configFile === !etcd) throw usage('agent needs exactly one config source: --config-file FILE, or --etcd URL --tier TIER');
      let source: AgentOptions['source'];
      if (configFile) {
        // A file agent reads no etcd: flags that only the etcd source reads would be ignored.
        const etcdOnly = [...Object.keys(ETCD_OPTIONS), 'tier', 'host-id', 'verify-key', 'insecure-unsigned', 'health-spread'].filter(
          (k) => v[k] !== undefined,
        );
        if (etcdOnly.length)
          throw usage(
            `${etcdOnly.map((k) => `--${k}`).join(', ')}: only with --etcd; an agent with --config-file reads no etcd (drop them, or use --etcd instead)`,
          );
        source = { kind: 'file', configFile };
      } else {
        const tier = str(v.tier);
        if (!tier) throw usage('--etcd needs --tier TIER (the tier this host belongs to)');
        if (!/^[A-Za-z0-9._-]{1,64}$/.test(tier)) throw usage(`--tier ${tier}: use letters, digits, . _ - (at most 64)`);
        const { conn, prefix } = etcdFlags(v, 'agent');
        const verifyKeys = (v['verify-key'] as string[] | undefined) ?? [];
        if (!verifyKeys.length && !v['insecure-unsigned']) {
          throw usage("--etcd needs --verify-key FILE (the engine's verify.pub), or --insecure-unsigned to accept unsigned documents");
        }
        if (verifyKeys.length) Verifier.fromSources(verifyKeys); // fail now, not at the first document
        const spread = str(v['health-spread']);
        // At most 60 s: a stage's cohort has applyDeadlineMs (60 s by default) to report its version.
        if (spread !== undefined && !(/^\d{1,5}$/.test(spread) && Number(spread) <= 60_000))
          throw usage(`--health-spread ${spread}: expected milliseconds, an integer from 0 to 60000`);
        source = {
          kind: 'etcd',
          verifyKeys,
          tier,
          hostId: str(v['host-id']) ?? defaultHostId(),
          prefix,
          conn,
          healthSpreadMs: spread === undefined ? undefined : Number(spread),
        };
      }
      const ttlsFiles = [str(v['ttls-cert']), str(v['ttls-key']), str(v['ttls-ca'])];
      if (ttlsFiles.some(Boolean) && !ttlsFiles.every(Boolean))
        throw usage('transparent TLS needs all three of --ttls-cert FILE --ttls-key FILE --ttls-ca FILE');
      const [cert, key, ca] = ttlsFiles as string[];
      // No pid in the base: a violation line's pid is the offending process's, not the agent's.
      const log = pino({ level: str(v['log-level']) ?? 'info', base: { component: 'agent', agent_pid: process.pid } });
      await runAgent(
        {
          source,
          ifaces: (v.iface as string[] | undefined) ?? [],
          bpffs: str(v.bpffs) ?? DEFAULT_BPFFS,
          cgroup: str(v.cgroup),
          stateDir: str(v['state-dir']) ?? DEFAULT_STATE_DIR,
          metricsAddr: str(v['metrics-addr']),
          ttls: cert ? { cert, key: key!, ca: ca! } : undefined,
        },
        log,
      );
      return 0;
    },
  },
  flows: {
    help: `Usage: sslwall flows [--json] [--bpffs DIR] [--cgroup DIR]

Lists the open flows in the filter's flow map: family, client (s) and server (d) endpoints,
class (tls, starttls, connect, bypass, plaintext, pending) and verdict (allowed, reported, blocked).
Connections carried by transparent TLS show as class tls, "(wrapped)" ("wrapped": true in JSON),
from the client's socket to the destination it asked for. UNIT is the local service's systemd
unit (or cgroup) where the filter saw the flow open ("pid", "comm", "unit", "cgroup" in JSON).

Options:
  --json        a JSON array, one object per flow
  --bpffs DIR   the agent's pin folder                          [${DEFAULT_BPFFS}]
  --cgroup DIR  a folder of the cgroup v2 hierarchy, to name units [the first cgroup2 mount]
`,
    options: { json: { type: 'boolean' }, bpffs: { type: 'string' }, cgroup: { type: 'string' } },
    async run(v) {
      const flows = readPinnedFlows(str(v.bpffs) ?? DEFAULT_BPFFS, CgroupNames.open(str(v.cgroup)));
      const out = flows.map(({ proto: _proto, ...rest }) => rest);
      if (v.json) {
        process.stdout.write(`${JSON.stringify(out)}\n`);
      } else {
        process.stdout.write(
          table(
            out.map((f) => [
              f.family,
              `${f.saddr}:${f.sport}`,
              `${f.daddr}:${f.dport}`,
              f.wrapped ? `${f.class} (wrapped)` : f.class,
              f.verdict,
              f.unit ?? f.cgroup ?? f.comm ?? '-',
            ]),
            ['FAMILY', 'SOURCE', 'DESTINATION', 'CLASS', 'VERDICT', 'UNIT'],
          ),
        );
      }
      return 0;
    },
  },
  exec: {
    help: `Usage: sslwall exec [--cgroup DIR] -- CMD [ARGS...]

Runs CMD in the bypass cgroup (<cgroup2>/sslwall-bypass): the filter lets its connections
through unclassified. For approved tools only; the agent must know the same --cgroup.

Options:
  --cgroup DIR   cgroup v2 folder the agent uses                 [first cgroup2 mount]
`,
    options: { cgroup: { type: 'string' } },
    async run(v, rest) {
      if (rest.length === 0) throw usage('exec needs a command after --, e.g. sslwall exec -- curl http://example.test/');
      joinBypassCgroup(str(v.cgroup), process.pid);
      const child = spawn(rest[0]!, rest.slice(1), { stdio: 'inherit' });
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig));
      return await new Promise<number>((resolve) => {
        child.on('error', (err) => {
          process.stderr.write(`sslwall exec: cannot run ${rest[0]}: ${err.message}\n`);
          resolve(127);
        });
        child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 15) : 1)));
      });
    },
  },
  check: {
    help: `Usage: sslwall check --config-file FILE

Validates a config document; prints it with defaults filled in, or the fields that are wrong (exit 2).
`,
    options: { 'config-file': { type: 'string' } },
    async run(v) {
      const file = str(v['config-file']);
      if (!file) throw usage('check needs --config-file FILE');
      process.stdout.write(`${JSON.stringify(readConfigFile(file), null, 2)}\n`);
      return 0;
    },
  },
  uninstall: {
    help: `Usage: sslwall uninstall [--bpffs DIR] [--iface IF ...] [--json]

Detaches every filter and hook the agent pinned under DIR and removes the pins. Stop the agent
first (a running agent would attach again on its next start, not before). On kernels without
tcx links the filters sit on clsact qdiscs: name the interfaces with --iface to remove them.

Options:
  --bpffs DIR   the agent's pin folder                          [${DEFAULT_BPFFS}]
  --iface IF    also remove clsact fallback filters from IF; repeat for more
  --json        print what was removed as JSON
`,
    options: { bpffs: { type: 'string' }, iface: { type: 'string', multiple: true }, json: { type: 'boolean' } },
    async run(v) {
      const bpffs = str(v.bpffs) ?? DEFAULT_BPFFS;
      const removed = uninstall(bpffs, (v.iface as string[] | undefined) ?? []);
      if (v.json) process.stdout.write(`${JSON.stringify({ removed })}\n`);
      else process.stdout.write(removed.length ? `removed:\n  ${removed.join('\n  ')}\n` : `nothing pinned under ${bpffs}\n`);
      return 0;
    },
  },
  token: {
    help: `Usage: sslwall token --users FILE --name NAME --role viewer|operator|alerts

Adds user NAME with a new random token to the engine's users file (made, mode 0600, if missing)
and prints the token alone on one line. It is shown this once: the file keeps only its SHA-256.
A running engine picks the change up within 5 s. Roles (docs/security.md):
  viewer     reads (GET) the API and the dashboard
  operator   also writes configs, overrides and rollout actions
  alerts     only POST /api/alerts (Alertmanager's webhook)
`,
    options: { users: { type: 'string' }, name: { type: 'string' }, role: { type: 'string' } },
    async run(v) {
      const [file, name, role] = [str(v.users), str(v.name), str(v.role)];
      if (!file || !name || !role) throw usage('token needs --users FILE --name NAME --role viewer|operator|alerts');
      const { addUser } = await import('../../rollout/auth.js');
      process.stdout.write(`${addUser(file, name, role)}\n`);
      return 0;
    },
  },
};

// Commands with their own parsing (subcommand groups), loaded only when used: a long-running
// `sslwall agent` keeps in memory only the modules it runs (the engine's client, its API
// schemas and the rollout code would be ~1 MB of heap for nothing; docs/bench.md agent_rss_mb).
const GROUPS: Record<string, (args: string[]) => Promise<number>> = {
  engine: async (args) => (await import('./fleet.js')).engineCommand(args),
  keygen: async (args) => (await import('./fleet.js')).keygenCommand(args),
  etcd: async (args) => ((await import(modulePath('./etcd.js'))) as { etcdCommand(a: string[]): Promise<number> }).etcdCommand(args),
  config: async (args) => (await import('./fleet.js')).configCommand(args),
  rollout: async (args) => (await import('./fleet.js')).rolloutCommand(args),
  agents: async (args) => (await import('./agents.js')).agentsCommand(args),
  violations: async (args) => (await import('./violations.js')).violationsCommand(args),
  simulate: async (args) => ((await import(modulePath('../simulate/main.js'))) as { main(a: string[]): Promise<number> }).main(args),
  bench: async (args) => ((await import(modulePath('../bench/main.js'))) as { main(a: string[]): Promise<number> }).main(args),
  up: async (args) => ((await import(modulePath('./up.js'))) as { upCommand(a: string[]): Promise<number> }).upCommand(args),
};

function modulePath(rel: string): string {
  return new URL(rel, import.meta.url).href;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function usage(message: string): SslwallError {
  return new SslwallError('SSLWALL_E_USAGE', message);
}

function table(rows: string[][], header: string[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  return `${all
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(HELP);
    return name ? 0 : 2;
  }
  if (name === '--version' || name === '-V') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const group = GROUPS[name];
  if (group) return group(args);
  const cmd = COMMANDS[name];
  if (!cmd) throw usage(`unknown command '${name}'; run sslwall --help`);
  if (args.includes('--help') || args.includes('-h')) {
    const dd = args.indexOf('--');
    const helpAt = args.findIndex((a) => a === '--help' || a === '-h');
    if (dd < 0 || helpAt < dd) {
      process.stdout.write(cmd.help);
      return 0;
    }
  }
  const dd = args.indexOf('--');
  const own = name === 'exec' && dd >= 0 ? args.slice(0, dd) : args;
  const rest = name === 'exec' && dd >= 0 ? args.slice(dd + 1) : [];
  let values: Values;
  try {
    ({ values } = parseArgs({ args: own, options: cmd.options, allowPositionals: false, strict: name !== 'bench' }));
  } catch (err) {
    throw usage(`${(err as Error).message}; run sslwall ${name} --help`);
  }
  return cmd.run(values, rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const code = (err as SslwallError).code ?? 'SSLWALL_E_INTERNAL';
    process.stderr.write(`sslwall: ${code}: ${(err as Error).message}\n`);
    const log = (err as { verifierLog?: string }).verifierLog;
    if (log && process.env.SSLWALL_DEBUG) process.stderr.write(`${log}\n`);
    process.exitCode = exitCodeFor(err);
  },
);
