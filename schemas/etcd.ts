// How every sslwall part connects to etcd: one etcd3 client with TLS client credentials (and,
// with etcd's auth on, the certificate's CN as the user) or a user and password when given,
// etcd3's own per-member fault handling (cockatiel), the guard against a crash in its watch
// manager, the jittered backoff every reconnect loop uses, and etcd's "permission denied" turned
// into an error that says which grant is missing (docs/etcd.md "Access control").
import { readFileSync } from 'node:fs';
import { ConsecutiveBreaker, ConstantBackoff, circuitBreaker, ExponentialBackoff, handleWhen, type IBackoff, noop, retry } from 'cockatiel';
import { Etcd3, EtcdPermissionDeniedError, isRecoverableError, type Namespace } from 'etcd3';
import { SslwallError } from './errors.js';

export interface EtcdConnection {
  endpoints: string[];
  cacert?: string;
  cert?: string;
  key?: string;
  /** etcd user for password auth; without it, with etcd's auth on, the user is the client certificate's CN. */
  user?: string;
  /** File holding that user's password (surrounding whitespace ignored). */
  passwordFile?: string;
}

/**
 * ownConnection: a connection of the client's own. grpc-js otherwise shares one connection
 * (subchannel) between all clients of a process with the same target and options, so a second
 * client is not a second connection: the agent's watch then shares it with its unary calls and
 * lease keepalive, and its events arrived 10 ms later than a lone watcher's (docs/bench.md
 * "propagation"); and a client made afresh after a broken stream would reuse the old connection.
 */
export function createEtcdClient(conn: EtcdConnection, opts: { ownConnection?: boolean } = {}): Etcd3 {
  const client = newClient(conn, opts.ownConnection ?? false);
  guardWatchManager(client as unknown as Namespace);
  return client;
}

function newClient(conn: EtcdConnection, ownConnection: boolean): Etcd3 {
  const credentials = conn.cacert
    ? {
        rootCertificate: readFileSync(conn.cacert),
        ...(conn.cert ? { certChain: readFileSync(conn.cert) } : {}),
        ...(conn.key ? { privateKey: readFileSync(conn.key) } : {}),
      }
    : undefined;
  return new Etcd3({
    hosts: conn.endpoints,
    credentials,
    ...(conn.user ? { auth: { username: conn.user, password: readPassword(conn) } } : {}),
    dialTimeout: 3000,
    ...(ownConnection ? { grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } } : {}),
    // Unary calls get a deadline so a black-holed etcd fails the call instead of hanging it;
    // streams (watch, keepalive) stay open.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
    // Retries over time are the callers' (full-jitter backoffMs; the agent adds one opossum
    // breaker: docs/agent.md "Retries and breakers"). etcd3's per-host breaker stays, to steer
    // calls away from a dead member of a cluster, but half-opens after 1 s (not 5 s) so a
    // restarted single etcd is used again at once; a failed call tries the other members first.
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(2) }),
      global:
        conn.endpoints.length > 1 ? retry(handleWhen(isRecoverableError), { maxAttempts: conn.endpoints.length - 1, backoff: new ConstantBackoff(0) }) : noop,
      // For etcd3's own watch reconnect (the engine's watches; the agent resumes on a fresh
      // client instead). etcd3 takes the factory and calls next() itself; its typing says IBackoff.
      watchBackoff: new ExponentialBackoff({ initialDelay: 200, maxDelay: 3000 }) as unknown as IBackoff<unknown>,
    },
  });
}

function readPassword(conn: EtcdConnection): string {
  if (!conn.passwordFile) throw new SslwallError('SSLWALL_E_USAGE', `etcd user ${conn.user} needs --etcd-password-file FILE`);
  try {
    return readFileSync(conn.passwordFile, 'utf8').trim();
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read --etcd-password-file ${conn.passwordFile}: ${(err as Error).message}`, { cause: err });
  }
}

/** etcd refused the call for the credential's roles (auth on, grant missing). */
export function isPermissionDenied(err: unknown): boolean {
  return err instanceof EtcdPermissionDeniedError || /permission denied/i.test(String((err as Error)?.message));
}

/**
 * etcd's bare "permission denied" as SSLWALL_E_ETCD_DENIED, saying what was attempted and which
 * role grants it; any other error is returned unchanged.
 */
export function explainDenied(err: unknown, attempted: string, grant: string): unknown {
  if (!isPermissionDenied(err)) return err;
  return new SslwallError('SSLWALL_E_ETCD_DENIED', `etcd refused ${attempted}: permission denied; this credential needs ${grant}`, { cause: err });
}

interface WatchManagerInternals {
  watchers: Array<{ id: string | null }>;
  handleResponse(res: { watch_id: string }): void;
}

/**
 * etcd3's WatchManager throws "Failed to find watcher for IWatchResponse" (from a stream event
 * handler: the process dies) when a response names a watcher it no longer has. That happens when
 * our cancel crosses etcd's own cancel of the same watcher (compaction): etcd answers both. Drop
 * such responses instead; the watcher they name is already gone on both sides.
 */
export function guardWatchManager(ns: Namespace): Namespace {
  const wm = (ns as unknown as { watchManager: WatchManagerInternals }).watchManager;
  const handle = wm.handleResponse.bind(wm);
  wm.handleResponse = (res) => {
    if (wm.watchers.some((w) => w.id === res.watch_id)) handle(res);
  };
  return ns;
}

/** Full-jitter exponential backoff: a thousand agents do not come back in step. */
export function backoffMs(attempt: number, baseMs = 200, maxMs = 5000): number {
  return Math.random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 16));
}
