// Starting and stopping one engine replica: the etcd client, the Engine, its HTTP API. `sslwall
// engine` runs it until SIGTERM/SIGINT (runEngine); `sslwall up` starts it beside its other
// parts and stops it with them (startEngine).
import fs from 'node:fs';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { SslwallError } from '../schemas/errors.js';
import { createEtcdClient, type EtcdConnection } from '../schemas/etcd.js';
import { DEFAULT_ETCD_PREFIX } from '../schemas/keys.js';
import { type ApiLimits, startApi } from './api.js';
import { engineNames, isLoopback, Users } from './auth.js';
import { Engine } from './engine.js';
import { Notifier, type Severity } from './notify.js';
import { Signer } from './signing.js';

export interface EngineRunOptions {
  etcd: EtcdConnection;
  /** ed25519 private key file (sslwall keygen). */
  signingKey: string;
  id: string;
  /** HOST:PORT of the API, dashboard and /metrics. */
  listen: string;
  prefix?: string;
  leaseTtlS?: number;
  /** The users file (docs/security.md); required unless insecure. */
  users?: string;
  /** PEM files: serve the API over HTTPS. */
  tlsCert?: string;
  tlsKey?: string;
  /** URLs the API is reached under besides the listen address (Host and Origin checks). */
  publicUrls?: string[];
  /** Allow running without --users, or on a non-loopback address without TLS. */
  insecure?: boolean;
  /** Body, connection and timeout limits of the API (defaults: API_LIMITS in api.ts). */
  apiLimits?: Partial<ApiLimits>;
  /** History versions kept per tier (default HISTORY_KEEP in store.ts; docs/rollout.md "Retention"). */
  historyKeep?: number;
  /** Seconds a firing alert is kept unless Alertmanager repeats it (--alert-ttl; default 5 h). */
  alertTtlS?: number;
  /** Rollout notifications to a chat webhook (--notify-url, --notify-severity). */
  notify?: { url: string; minSeverity: Severity };
  /** ms between samples of the per-service violation totals (--series-interval; default 1 min). */
  seriesIntervalMs?: number;
}

export interface RunningEngine {
  engine: Engine;
  api: FastifyInstance;
  /** Close the API, resign leadership, close the etcd client. */
  stop(): Promise<void>;
}

/** The refusals that need no etcd: a reachable API without TLS or users, half a TLS pair, unreadable files. */
function checkExposure(opts: EngineRunOptions): { cert: string; key: string } | undefined {
  if (!opts.tlsCert !== !opts.tlsKey) throw new SslwallError('SSLWALL_E_USAGE', '--tls-cert and --tls-key go together');
  if (!opts.insecure) {
    if (!opts.users)
      throw new SslwallError(
        'SSLWALL_E_USAGE',
        'engine needs --users FILE (make one with: sslwall token --users FILE --name N --role operator), or --insecure',
      );
    if (!opts.tlsCert && !isLoopback(opts.listen))
      throw new SslwallError(
        'SSLWALL_E_USAGE',
        `--listen ${opts.listen} is not a loopback address: serve it over HTTPS (--tls-cert FILE --tls-key FILE), or pass --insecure to send tokens in clear text`,
      );
  }
  if (!opts.tlsCert) return undefined;
  const read = (f: string, flag: string) => {
    try {
      return fs.readFileSync(f, 'utf8');
    } catch (err) {
      throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read ${flag} ${f}: ${(err as Error).message}`, { cause: err });
    }
  };
  return { cert: read(opts.tlsCert, '--tls-cert'), key: read(opts.tlsKey!, '--tls-key') };
}

export async function startEngine(opts: EngineRunOptions, log: Logger): Promise<RunningEngine> {
  const tls = checkExposure(opts);
  const names = engineNames(opts.listen, tls !== undefined, opts.publicUrls ?? []);
  const signer = Signer.fromFile(opts.signingKey);
  const users = opts.users ? new Users(opts.users, log.child({ component: 'auth' })) : null;
  if (!users) log.warn({ event: 'engine_insecure' }, 'no --users: every caller may do anything, as "anonymous"');
  const client = createEtcdClient(opts.etcd);
  const engine = new Engine({
    client,
    prefix: opts.prefix ?? DEFAULT_ETCD_PREFIX,
    signer,
    id: opts.id,
    log,
    leaseTtlS: opts.leaseTtlS ?? 5,
    historyKeep: opts.historyKeep,
    seriesIntervalMs: opts.seriesIntervalMs,
  });
  const notifier = opts.notify ? new Notifier({ ...opts.notify, link: opts.publicUrls?.[0] }, log.child({ component: 'notify' })) : null;
  if (notifier) engine.onTransition((tier, action, reason) => notifier.notify(tier, action, reason));
  let api: FastifyInstance;
  try {
    api = await startApi(
      engine,
      opts.listen,
      log,
      { users, names, tls, limits: opts.apiLimits },
      { alertTtlS: opts.alertTtlS ?? 5 * 3600, metrics: notifier ? [notifier.sent] : [] },
    );
  } catch (err) {
    users?.close();
    client.close();
    throw err;
  }
  engine.start();
  const url = `${tls ? 'https' : 'http'}://${opts.listen}`;
  log.info({ event: 'engine_ready', listen: opts.listen, url, id: opts.id, users: opts.users ?? null }, `engine listening on ${url}`);
  return {
    engine,
    api,
    async stop() {
      log.info({ event: 'engine_stopping' }, 'stopping; resigning leadership');
      await api.close();
      users?.close();
      await engine.stop();
      // The last transitions' messages get a moment to go out; a dead webhook does not hold the stop.
      if (notifier) await Promise.race([notifier.flush(), new Promise((r) => setTimeout(r, 2000).unref())]);
      client.close();
    },
  };
}

/** `sslwall engine`: runs until SIGTERM or SIGINT, then stops cleanly (a follower takes over at once). */
export async function runEngine(opts: EngineRunOptions, log: Logger): Promise<void> {
  const running = await startEngine(opts, log);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  await running.stop();
}
