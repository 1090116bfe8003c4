// The fleet commands: `sslwall engine`, `sslwall keygen`, and the `config` and `rollout` groups,
// which talk to an engine's HTTP API (--engine URL; docs/cli.md).

import { readFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import pino from 'pino';
import type { z } from 'zod';
import { EngineClient } from '../../rollout/client.js';
import { generateKeyPair } from '../../rollout/signing.js';
import type { RolloutViewBody } from '../../schemas/api.js';
import { describeIssues } from '../../schemas/config.js';
import { SslwallError } from '../../schemas/errors.js';
import { AnalysisSchema, parseDuration } from '../../schemas/rollout.js';
import { ETCD_OPTIONS, etcdFlags } from './etcd-options.js';
import { watchRollout } from './watch.js';

export const DEFAULT_ENGINE = 'http://127.0.0.1:7070';

export function usage(message: string): SslwallError {
  return new SslwallError('SSLWALL_E_USAGE', message);
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw usage(`${flag} ${text}: give a whole number of at least 1`);
  return n;
}

type Opts = NonNullable<Parameters<typeof parseArgs>[0]>['options'];
export function parse(args: string[], options: Opts, where: string): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (err) {
    throw usage(`${(err as Error).message}; run sslwall ${where} --help`);
  }
}

export const ENGINE_HELP = `Usage: sslwall engine --etcd URL[,URL...] --signing-key FILE --users FILE [--listen HOST:PORT] [options]

Runs a rollout engine replica: the HTTP API and dashboard, Prometheus /metrics, and the rollout
loop. Several replicas may run; one leads (etcd election), the others serve the API and take over
within the lease TTL. Every document is validated and signed (ed25519) before it is written.
Every API call needs a bearer token of a user in --users (docs/security.md).

Options:
  --etcd URL[,URL...]   etcd endpoints                                           (required)
  --signing-key FILE    ed25519 private key (sslwall keygen)                      (required)
  --users FILE          users and roles (sslwall token); re-read when it changes  (required)
  --listen HOST:PORT    API, dashboard and /metrics                     [127.0.0.1:7070]
  --tls-cert FILE       serve the API over HTTPS with this certificate (PEM)...
  --tls-key FILE        ...and its key; required to listen on a non-loopback address
  --public-url URL      a URL the API is reached under (its host is accepted in Host and
                        Origin); repeat for more
  --insecure            allow no --users (anyone may do anything), or plain HTTP on a
                        non-loopback address
  --etcd-prefix P       key prefix                                            [/sslwall/]
  --etcd-cacert/--etcd-cert/--etcd-key FILE   TLS to etcd; with etcd's auth on, the
                        certificate's CN is the etcd user (sslwall-engine: sslwall etcd setup)
  --etcd-user NAME --etcd-password-file FILE   or password auth to etcd
  --id ID               this replica's name in the election            [hostname-pid]
  --lease-ttl S         leader lease TTL in seconds                                 [5]
  --history-keep N      config versions kept per tier; older ones are pruned     [100]
  --alert-ttl DURATION  how long a firing alert is kept unless Alertmanager sends it
                        again; make it longer than Alertmanager's repeat_interval   [5h]
  --notify-url URL      post rollout transitions to this chat webhook (Slack-compatible
                        JSON: {"text": ...}); only the leader sends
  --notify-severity S   info (every stage), warning (also failed checks, pauses) or
                        critical (rollbacks only): send transitions of S and above [warning]
  --series-interval DURATION  how often the dashboard's per-service violation totals
                        are sampled (24 h of samples at 1m are kept)                [1m]
  --log-level LEVEL                                                              [info]
`;

export async function engineCommand(args: string[]): Promise<number> {
  const { values: v } = parse(
    args,
    {
      ...ETCD_OPTIONS,
      'signing-key': { type: 'string' },
      users: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'public-url': { type: 'string', multiple: true },
      insecure: { type: 'boolean' },
      listen: { type: 'string' },
      id: { type: 'string' },
      'lease-ttl': { type: 'string' },
      'history-keep': { type: 'string' },
      'alert-ttl': { type: 'string' },
      'notify-url': { type: 'string' },
      'notify-severity': { type: 'string' },
      'series-interval': { type: 'string' },
      'log-level': { type: 'string' },
    },
    'engine',
  );
  if (v.help) {
    process.stdout.write(ENGINE_HELP);
    return 0;
  }
  const { conn, prefix } = etcdFlags(v, 'engine');
  if (!v['signing-key']) throw usage('engine needs --signing-key FILE (make one with: sslwall keygen --out DIR)');
  let alertTtlMs: number | undefined;
  try {
    alertTtlMs = v['alert-ttl'] === undefined ? undefined : parseDuration(String(v['alert-ttl']));
  } catch (err) {
    throw usage(`--alert-ttl: ${(err as Error).message}`);
  }
  // An etcd lease counts whole seconds.
  let seriesIntervalMs: number | undefined;
  try {
    seriesIntervalMs = v['series-interval'] === undefined ? undefined : parseDuration(String(v['series-interval']));
  } catch (err) {
    throw usage(`--series-interval: ${(err as Error).message}`);
  }
  if (seriesIntervalMs !== undefined && seriesIntervalMs < 1000) throw usage('--series-interval must be at least 1s');
  if (alertTtlMs !== undefined && alertTtlMs < 1000) throw usage('--alert-ttl must be at least 1s (and longer than repeat_interval)');
  const id = (v.id as string | undefined) ?? `${os.hostname()}-${process.pid}`;
  const log = pino({ level: (v['log-level'] as string | undefined) ?? 'info', base: { component: 'engine', replica: id } });
  // Loaded here, not at the top: fastify and the engine are not needed by the other commands.
  const { runEngine } = await import('../../rollout/main.js');
  const { SEVERITIES } = await import('../../rollout/notify.js');
  const severity = (v['notify-severity'] as string | undefined) ?? 'warning';
  if (!(SEVERITIES as readonly string[]).includes(severity)) throw usage(`--notify-severity must be one of ${SEVERITIES.join(', ')}`);
  if (v['notify-severity'] && !v['notify-url']) throw usage('--notify-severity needs --notify-url URL');
  await runEngine(
    {
      etcd: conn,
      signingKey: String(v['signing-key']),
      id,
      listen: (v.listen as string | undefined) ?? '127.0.0.1:7070',
      prefix,
      leaseTtlS: v['lease-ttl'] === undefined ? undefined : Number(v['lease-ttl']),
      historyKeep: v['history-keep'] === undefined ? undefined : positiveInt(String(v['history-keep']), '--history-keep'),
      users: v.users as string | undefined,
      tlsCert: v['tls-cert'] as string | undefined,
      tlsKey: v['tls-key'] as string | undefined,
      publicUrls: (v['public-url'] as unknown as string[] | undefined) ?? [],
      insecure: v.insecure === true,
      alertTtlS: alertTtlMs === undefined ? undefined : Math.ceil(alertTtlMs / 1000),
      seriesIntervalMs,
      notify: v['notify-url'] ? { url: String(v['notify-url']), minSeverity: severity as (typeof SEVERITIES)[number] } : undefined,
    },
    log,
  );
  return 0;
}

export async function keygenCommand(args: string[]): Promise<number> {
  const { values: v } = parse(args, { out: { type: 'string' }, json: { type: 'boolean' } }, 'keygen');
  if (v.help) {
    process.stdout.write(
      'Usage: sslwall keygen --out DIR [--json]\n\nWrites DIR/signing.key (for the engine, mode 0600) and DIR/verify.pub (for agents: --verify-key).\n',
    );
    return 0;
  }
  if (!v.out) throw usage('keygen needs --out DIR');
  const r = generateKeyPair(String(v.out));
  process.stdout.write(v.json ? `${JSON.stringify(r)}\n` : `signing key: ${r.signingKey}\nverify key:  ${r.verifyKey}\nkey id:      ${r.keyId}\n`);
  return 0;
}

export const CLIENT_OPTIONS = {
  engine: { type: 'string' },
  'engine-ca': { type: 'string' },
  'token-file': { type: 'string' },
} as const;

export const CLIENT_HELP = `  --engine URL         the engine's API (http:// or https://)    [$SSLWALL_ENGINE or ${DEFAULT_ENGINE}]
  --engine-ca FILE     CA certificates (PEM) that issued an https:// engine's certificate
  --token-file FILE    the bearer token (surrounding whitespace ignored)        [$SSLWALL_TOKEN]`;

/** The engine's client from --engine, --engine-ca and the token ($SSLWALL_TOKEN, or --token-file, which wins). */
export function engineClient(v: Record<string, unknown>): EngineClient {
  const read = (file: string, what: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const tokenFile = v['token-file'] as string | undefined;
  const token = (tokenFile ? read(tokenFile, '--token-file') : (process.env.SSLWALL_TOKEN ?? '')).trim();
  const ca = v['engine-ca'] as string | undefined;
  return new EngineClient((v.engine as string | undefined) ?? process.env.SSLWALL_ENGINE ?? DEFAULT_ENGINE, {
    token: token || undefined,
    ca: ca ? read(ca, '--engine-ca') : undefined,
  });
}

const CONFIG_HELP = `Usage: sslwall config <set|get|history|diff|revert|override> [options] [--engine URL]

  set --tier T --file F [--message M] [--expect-revision R]
        write a new version (F: an agent config, or {"config":…,"rollout":…}); validated and
        signed by the engine; compare-and-swap on the head (R, or the head read now)
  get --tier T [--version N] [--json]      the head (or version N)
  history --tier T [--json]                every version: author, message, time
  diff --tier T A B                        what changed from version A to B
  revert --tier T --to N [--message M]     a new version with the content of version N
  override --host H (--mode M | --file F | --clear) [--reason R]
                                           a host's exception to its tier (signed like tier
                                           documents): a mode it must run, or a whole config

${CLIENT_HELP}
`;

const ROLLOUT_HELP = `Usage: sslwall rollout <command> --tier T [options] [--engine URL]

  start --tier T --stages passive:100,active:1,active:5,active:25,active:100 --bake 10m
        [--analysis FILE] [--otherwise off|passive]
  status --tier T [--json]       stage, agents applied / in cohort, bake left, checks, events
  watch --tier T                 a progress bar per stage, redrawn every second on a terminal
                                 (Ctrl-C to leave); elsewhere a line per change, until the end
  pause|resume|promote|abort|undo --tier T [--reason R]
  preview --tier T --percent P [--json]   hosts that would join the cohort at P and which of them
                                          would now block traffic (passive-mode violations)
  alerts --tier T [--json]       the alerts the engine holds for the tier (they roll back and
                                 hold rollouts): key, name, labels, since, lease left
  alerts --tier T --clear [KEY]  forget them all, or the one of KEY (operator; audited); one
                                 still firing comes back at Alertmanager's next repeat

${CLIENT_HELP}
`;

export async function configCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args[0]?.startsWith('-') ? ['help', ...args] : args;
  const { values: v, positionals } = parse(
    rest,
    {
      tier: { type: 'string' },
      file: { type: 'string' },
      message: { type: 'string' },
      version: { type: 'string' },
      json: { type: 'boolean' },
      to: { type: 'string' },
      'expect-revision': { type: 'string' },
      host: { type: 'string' },
      mode: { type: 'string' },
      clear: { type: 'boolean' },
      reason: { type: 'string' },
      ...CLIENT_OPTIONS,
    },
    `config ${sub ?? ''}`,
  );
  if (!sub || v.help || sub === 'help' || sub.startsWith('-')) {
    process.stdout.write(CONFIG_HELP);
    return sub ? 0 : 2;
  }
  const engine = engineClient(v);
  const out = (x: unknown, text: string) => process.stdout.write(v.json ? `${JSON.stringify(x)}\n` : text);
  if (sub === 'override') {
    const host = v.host as string | undefined;
    if (!host) throw usage('config override needs --host H');
    if (v.clear) {
      out(await engine.clearOverride(host), `host ${host}: override removed; it follows its tier again\n`);
      return 0;
    }
    let config: unknown;
    if (v.file) {
      try {
        config = JSON.parse(readFileSync(String(v.file), 'utf8'));
      } catch (err) {
        throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read ${v.file}: ${(err as Error).message}`);
      }
    }
    if (!v.mode && !config) throw usage('config override needs --mode off|passive|active, --file F, or --clear');
    // The engine validates mode and config and names the bad field.
    const r = await engine.setOverride(host, {
      mode: v.mode as 'off' | 'passive' | 'active' | undefined,
      config: config as never,
      reason: v.reason as string | undefined,
    });
    out(r, `host ${host}: override version ${r.version} written\n`);
    return 0;
  }
  const tier = v.tier as string | undefined;
  if (!tier) throw usage(`config ${sub} needs --tier T`);
  switch (sub) {
    case 'set': {
      if (!v.file) throw usage('config set needs --file F');
      let doc: Record<string, unknown>;
      try {
        doc = JSON.parse(readFileSync(String(v.file), 'utf8'));
      } catch (err) {
        throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read ${v.file}: ${(err as Error).message}`);
      }
      const rec = await engine.putConfig(tier, {
        document: doc,
        message: (v.message as string | undefined) ?? `set from ${v.file}`,
        expectRevision: v['expect-revision'] === undefined ? undefined : Number(v['expect-revision']),
      });
      out(rec, `tier ${tier}: version ${rec.version} written\n`);
      return 0;
    }
    case 'get': {
      const doc = v.version ? await engine.version(tier, Number(v.version)) : await engine.head(tier);
      process.stdout.write(`${JSON.stringify(doc, null, v.json ? undefined : 2)}\n`);
      return 0;
    }
    case 'history': {
      const h = await engine.history(tier);
      out(h, `${h.map((r) => `${String(r.version).padStart(4)}  ${r.time}  ${r.author.padEnd(20)}  ${r.message}`).join('\n')}\n`);
      return 0;
    }
    case 'diff': {
      const [a, b] = positionals.map(Number);
      if (!(a! > 0 && b! > 0)) throw usage('config diff needs two versions: sslwall config diff --tier T A B');
      const [ra, rb] = await Promise.all([engine.version(tier, a!), engine.version(tier, b!)]);
      const changes = diffJson(strip(ra!.document), strip(rb!.document));
      out(
        changes,
        changes.length
          ? `${changes.map((c) => `${c.path}: ${JSON.stringify(c.from)} -> ${JSON.stringify(c.to)}`).join('\n')}\n`
          : `versions ${a} and ${b} have the same content\n`,
      );
      return 0;
    }
    case 'revert': {
      if (!v.to) throw usage('config revert needs --to N');
      const rec = await engine.revert(tier, { to: Number(v.to), message: v.message as string | undefined });
      out(rec, `tier ${tier}: version ${rec.version} written with the content of version ${v.to}\n`);
      return 0;
    }
  }
  throw usage(`unknown config command '${sub}'; run sslwall config --help`);
}

function strip(doc: Record<string, unknown>) {
  const { signature: _s, version: _v, ...rest } = doc;
  return rest;
}

export function diffJson(a: unknown, b: unknown, path = ''): Array<{ path: string; from: unknown; to: unknown }> {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => diffJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], path ? `${path}.${k}` : k));
  }
  return [{ path: path || '(document)', from: a, to: b }];
}

export async function rolloutCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args[0]?.startsWith('-') ? ['help', ...args] : args;
  const { values: v, positionals } = parse(
    rest,
    {
      tier: { type: 'string' },
      clear: { type: 'boolean' },
      stages: { type: 'string' },
      bake: { type: 'string' },
      analysis: { type: 'string' },
      otherwise: { type: 'string' },
      json: { type: 'boolean' },
      reason: { type: 'string' },
      percent: { type: 'string' },
      ...CLIENT_OPTIONS,
    },
    `rollout ${sub ?? ''}`,
  );
  if (!sub || v.help || sub === 'help' || sub.startsWith('-')) {
    process.stdout.write(ROLLOUT_HELP);
    return sub ? 0 : 2;
  }
  const engine = engineClient(v);
  const tier = v.tier as string | undefined;
  if (!tier) throw usage(`rollout ${sub} needs --tier T`);
  switch (sub) {
    case 'start': {
      if (!v.stages) throw usage('rollout start needs --stages, e.g. passive:100,active:1,active:5,active:25,active:100');
      let analysis: z.input<typeof AnalysisSchema> | undefined;
      if (v.analysis) {
        let raw: unknown;
        try {
          raw = JSON.parse(readFileSync(String(v.analysis), 'utf8'));
        } catch (err) {
          throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read the analysis file ${v.analysis}: ${(err as Error).message}`);
        }
        const parsed = AnalysisSchema.safeParse(raw);
        if (!parsed.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${v.analysis}: ${describeIssues(parsed.error)}`);
        analysis = parsed.data;
      }
      const s = await engine.startRollout(tier, {
        stages: String(v.stages),
        bake: (v.bake as string | undefined) ?? '10m',
        analysis,
        otherwise: v.otherwise as 'off' | 'passive' | undefined,
      });
      process.stdout.write(
        v.json ? `${JSON.stringify(s)}\n` : `rollout ${s.id} started on tier ${tier}; follow it with: sslwall rollout watch --tier ${tier}\n`,
      );
      return 0;
    }
    case 'status': {
      const s = await engine.rollout(tier);
      process.stdout.write(v.json ? `${JSON.stringify(s)}\n` : renderStatus(s));
      return 0;
    }
    case 'watch': {
      await watchRollout(() => engine.rollout(tier), process.stdout);
      return 0;
    }
    case 'pause':
    case 'resume':
    case 'promote':
    case 'abort':
    case 'undo': {
      const s = await engine.act(tier, sub, (v.reason as string | undefined) ?? `${sub} from the command line`);
      process.stdout.write(v.json ? `${JSON.stringify(s)}\n` : `rollout ${s.id}: ${sub} accepted (status ${s.status})\n`);
      return 0;
    }
    case 'preview': {
      const p = Number(v.percent);
      if (!(p >= 0 && p <= 100)) throw usage('rollout preview needs --percent 0..100');
      const r = await engine.preview(tier, p);
      process.stdout.write(
        v.json
          ? `${JSON.stringify(r)}\n`
          : `${r.joining.length} hosts join the cohort at ${p} %; ${r.wouldBlock.length} of them would now block traffic:\n` +
              r.joining.map((j) => `  ${j.hostId}${j.wouldBlock ? `  WOULD BLOCK (${j.violationsReported} plaintext flows seen)` : ''}`).join('\n') +
              '\n',
      );
      return 0;
    }
    case 'alerts': {
      if (positionals.length > (v.clear ? 1 : 0)) throw usage('rollout alerts takes a KEY only after --clear');
      if (v.clear) {
        const r = await engine.clearAlerts(tier, positionals[0]);
        process.stdout.write(
          v.json ? `${JSON.stringify(r)}\n` : `cleared ${r.cleared.length} alerts of tier ${tier}${r.cleared.map((k) => `\n  ${k}`).join('')}\n`,
        );
        return 0;
      }
      const alerts = await engine.tierAlerts(tier);
      if (v.json) process.stdout.write(`${JSON.stringify(alerts)}\n`);
      else if (!alerts.length) process.stdout.write(`no alert held for tier ${tier}\n`);
      else
        process.stdout.write(
          `${alerts
            .map((a) => {
              const labels = Object.entries(a.labels)
                .map(([k, val]) => `${k}=${val}`)
                .join(' ');
              return `${a.key}\n  ${a.alertname}  since ${a.startsAt}  expires in ${a.expiresInS < 0 ? 'never' : `${a.expiresInS} s`}\n  ${labels}`;
            })
            .join('\n')}\n`,
        );
      return 0;
    }
  }
  throw usage(`unknown rollout command '${sub}'; run sslwall rollout --help`);
}

function renderStatus(s: RolloutViewBody): string {
  const st = s.stages[s.stage]!;
  const lines = [
    `rollout ${s.id} on tier ${s.tier}: ${s.status.toUpperCase()}${s.reason ? ` (${s.reason})` : ''}`,
    `stage ${s.stage + 1}/${s.stages.length}: ${st.mode}:${st.percent}%  phase ${s.phase}  version ${s.stageVersion ?? '-'}`,
    `agents: ${s.live.applied} applied / ${s.live.cohort} in cohort / ${s.live.agents} reporting${s.live.bakeLeftMs !== null ? `   bake left: ${Math.ceil(s.live.bakeLeftMs / 1000)} s` : ''}`,
    'checks:',
    ...(s.lastChecks.length ? s.lastChecks.map((c) => `  ${c.status.padEnd(12)} ${c.name}: ${c.detail}`) : ['  (none yet)']),
    'recent events:',
    ...s.events.slice(-8).map((e) => `  ${e.time}  ${e.action}: ${e.reason}`),
  ];
  return `${lines.join('\n')}\n`;
}
