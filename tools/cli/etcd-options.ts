// The etcd connection flags that `sslwall agent`, `sslwall engine` and `sslwall etcd` share: one
// option table and one reading of it, so that the three commands accept and refuse the same
// combinations with the same words (each command's --help says them in its own context).
import type { ParseArgsConfig } from 'node:util';
import { SslwallError } from '../../schemas/errors.js';
import type { EtcdConnection } from '../../schemas/etcd.js';
import { DEFAULT_ETCD_PREFIX } from '../../schemas/keys.js';

export const ETCD_OPTIONS = {
  etcd: { type: 'string' },
  'etcd-prefix': { type: 'string' },
  'etcd-cacert': { type: 'string' },
  'etcd-cert': { type: 'string' },
  'etcd-key': { type: 'string' },
  'etcd-user': { type: 'string' },
  'etcd-password-file': { type: 'string' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

export interface EtcdFlags {
  conn: EtcdConnection;
  prefix: string;
}

function usage(message: string): SslwallError {
  return new SslwallError('SSLWALL_E_USAGE', message);
}

/**
 * The connection the flags describe. `command` names the caller in the one message that needs it
 * ("engine needs --etcd URL[,URL...]"). Refused, before anything connects: no endpoint; a client
 * certificate without its key or the key without its certificate; either without --etcd-cacert
 * (without a CA the client would dial with the system's roots and never present the certificate,
 * and etcd's refusal would not say why); a user without a password file.
 */
export function etcdFlags(values: Readonly<Record<string, unknown>>, command: string): EtcdFlags {
  const s = (k: keyof typeof ETCD_OPTIONS) => {
    const v = values[k];
    return typeof v === 'string' ? v : undefined;
  };
  const endpoints = (s('etcd') ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  if (!endpoints.length) throw usage(`${command} needs --etcd URL[,URL...]`);
  const [cacert, cert, key] = [s('etcd-cacert'), s('etcd-cert'), s('etcd-key')];
  if (!cert !== !key)
    throw usage(`--etcd-cert and --etcd-key go together (the client certificate and its key); ${cert ? '--etcd-key' : '--etcd-cert'} is missing`);
  if (cert && !cacert) throw usage('--etcd-cert/--etcd-key need --etcd-cacert (client certificates are for https:// endpoints)');
  const user = s('etcd-user');
  if (user && !s('etcd-password-file')) throw usage('--etcd-user needs --etcd-password-file FILE');
  if (!user && s('etcd-password-file')) throw usage('--etcd-password-file needs --etcd-user NAME (whose password it holds)');
  return {
    conn: { endpoints, cacert, cert, key, user, passwordFile: s('etcd-password-file') },
    prefix: s('etcd-prefix') ?? DEFAULT_ETCD_PREFIX,
  };
}
