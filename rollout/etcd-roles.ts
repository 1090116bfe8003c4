// Least privilege in etcd: the roles and users that let each agent read its tier's document and
// its own override and write only its own health key, and the engine write what it owns. Made
// through etcd3's auth API (the same calls etcdctl makes), idempotently: running a command again
// creates what is missing and revokes what no longer fits (a host moved to another tier), nothing
// else. docs/etcd.md "Access control" lists every grant and why.
import { type Etcd3, EtcdRoleExistsError, EtcdUserExistsError, type IPermissionRequest, Range } from 'etcd3';
import { SslwallError } from '../schemas/errors.js';
import { DEFAULT_ETCD_PREFIX, etcdKeys } from '../schemas/keys.js';

/** Role and user names. A user is the CN of the certificate it connects with (etcd --client-cert-auth). */
export const etcdNames = {
  root: 'root',
  engine: 'sslwall-engine',
  tierRole: (tier: string) => `sslwall-tier-${tier}`,
  hostRole: (hostId: string) => `sslwall-host-${hostId}`,
  hostUser: (hostId: string) => `sslwall-host-${hostId}`,
};

// The same characters the agent accepts for --tier; a host id ends up in key names and a CN.
const NAME = /^[A-Za-z0-9._-]{1,64}$/;

export interface HostSpec {
  tier: string;
  hostId: string;
}

type Perm = IPermissionRequest & { range: Range };

const perm = (permission: Perm['permission'], range: Range): Perm => ({ permission, range });
const exact = (key: string) => new Range(key);
const permId = (p: { permission: string; range: Range }) => `${p.permission}|${p.range.start.toString('hex')}|${p.range.end.toString('hex')}`;

/** The engine's grants: everything it writes, and what only agents write (health, summaries) read-only. */
export function enginePermissions(prefix = DEFAULT_ETCD_PREFIX): Perm[] {
  const p = etcdKeys(prefix).prefix;
  return [
    ...['tiers/', 'hosts/', 'engine/', 'audit/', 'alerts/'].map((d) => perm('Readwrite', Range.prefix(`${p}${d}`))),
    perm('Read', Range.prefix(`${p}health/`)),
    perm('Read', Range.prefix(`${p}summary/`)),
  ];
}

/** A tier's agents read its head document only: not its history, not its rollout state. */
export function tierPermissions(tier: string, prefix = DEFAULT_ETCD_PREFIX): Perm[] {
  return [perm('Read', exact(etcdKeys(prefix).tierConfig(tier)))];
}

/** A host reads its own override and writes its own health and summary keys (one lease), exactly those keys. */
export function hostPermissions(h: HostSpec, prefix = DEFAULT_ETCD_PREFIX): Perm[] {
  const k = etcdKeys(prefix);
  return [
    perm('Read', exact(k.hostOverride(h.hostId))),
    perm('Readwrite', exact(k.health(h.tier, h.hostId))),
    perm('Readwrite', exact(k.summary(h.tier, h.hostId))),
  ];
}

export interface Changes {
  roles: number;
  users: number;
  grants: number;
  revoked: number;
}

const none = (): Changes => ({ roles: 0, users: 0, grants: 0, revoked: 0 });
const add = (a: Changes, b: Changes) => {
  a.roles += b.roles;
  a.users += b.users;
  a.grants += b.grants;
  a.revoked += b.revoked;
};

async function ensureRole(client: Etcd3, name: string, want: Perm[], c: Changes): Promise<void> {
  const role = client.role(name);
  let have: Array<{ permission: string; range: Range }> = [];
  try {
    await role.create();
    c.roles++;
  } catch (err) {
    if (!(err instanceof EtcdRoleExistsError)) throw err;
    have = await role.permissions();
  }
  const wantIds = new Set(want.map(permId));
  const haveIds = new Set(have.map(permId));
  for (const p of have) {
    if (wantIds.has(permId(p))) continue;
    await role.revoke({ permission: p.permission as Perm['permission'], range: p.range });
    c.revoked++;
  }
  for (const p of want) {
    if (haveIds.has(permId(p))) continue;
    await role.grant(p);
    c.grants++;
  }
}

/**
 * A user with exactly these roles (among those matching `ours`; roles an operator added by hand
 * are left alone). No password unless given: with --client-cert-auth its certificate's CN is the
 * login, and a password would be one more secret to hand out per host.
 */
async function ensureUser(client: Etcd3, name: string, roles: string[], ours: (role: string) => boolean, c: Changes, password?: string): Promise<void> {
  const user = client.user(name);
  let have: string[] = [];
  try {
    await client.auth.userAdd({ name, password: password ?? '', options: { no_password: password === undefined } });
    c.users++;
  } catch (err) {
    if (!(err instanceof EtcdUserExistsError)) throw err;
    have = (await user.roles()).map((r) => r.name);
    if (password !== undefined) await user.setPassword(password);
  }
  for (const r of have) {
    if (roles.includes(r) || !ours(r)) continue;
    await user.removeRole(r);
    c.revoked++;
  }
  for (const r of roles) {
    if (have.includes(r)) continue;
    await user.addRole(r);
    c.grants++;
  }
}

export interface SetupOptions {
  prefix?: string;
  /** Root's password; without one root logs in only by a certificate with CN root. */
  rootPassword?: string;
  /** The engine user's password, for engines that use --etcd-user instead of a certificate. */
  enginePassword?: string;
}

/**
 * Root (with etcd's root role), the engine's role and user, then auth on. On an etcd whose auth
 * is on already, the client must be root; running it again changes nothing.
 */
export async function setupEtcdAuth(client: Etcd3, opts: SetupOptions = {}): Promise<Changes> {
  const c = none();
  try {
    await client.role('root').create();
    c.roles++;
  } catch (err) {
    if (!(err instanceof EtcdRoleExistsError)) throw err;
  }
  await ensureUser(client, etcdNames.root, ['root'], () => false, c, opts.rootPassword);
  await ensureRole(client, etcdNames.engine, enginePermissions(opts.prefix), c);
  await ensureUser(client, etcdNames.engine, [etcdNames.engine], (r) => r.startsWith('sslwall-'), c, opts.enginePassword);
  await client.auth.authEnable({});
  return c;
}

export interface ProvisionOptions {
  prefix?: string;
  /** Hosts provisioned at once (each is a handful of sequential auth calls). */
  concurrency?: number;
}

/**
 * Each host's role and user, and each tier's role: `sslwall-host-<id>` (user and role) holds
 * `sslwall-tier-<tier>` and `sslwall-host-<id>`. A host given again with another tier loses the
 * old tier's role and health grant.
 */
export async function provisionHosts(client: Etcd3, hosts: HostSpec[], opts: ProvisionOptions = {}): Promise<Changes & { hosts: number }> {
  for (const h of hosts) {
    if (!NAME.test(h.tier)) throw new SslwallError('SSLWALL_E_USAGE', `tier ${JSON.stringify(h.tier)}: use letters, digits, . _ - (at most 64)`);
    if (!NAME.test(h.hostId)) throw new SslwallError('SSLWALL_E_USAGE', `host ${JSON.stringify(h.hostId)}: use letters, digits, . _ - (at most 64)`);
  }
  const byHost = new Map(hosts.map((h) => [h.hostId, h]));
  if (byHost.size !== hosts.length) throw new SslwallError('SSLWALL_E_USAGE', 'a host is listed twice; give each host once, with its tier');
  const total = none();
  for (const tier of new Set(hosts.map((h) => h.tier))) await ensureRole(client, etcdNames.tierRole(tier), tierPermissions(tier, opts.prefix), total);
  // Roles first, then users: etcd rebuilds its permission cache of every user (with its roles)
  // on each auth change, so a write costs in proportion to the users that exist. Roles made
  // while their users do not exist yet cost little; interleaved, every write pays for them all.
  const pool = async (work: (h: HostSpec, c: Changes) => Promise<void>) => {
    const queue = [...byHost.values()];
    const worker = async () => {
      for (let h = queue.shift(); h; h = queue.shift()) {
        const c = none();
        await work(h, c);
        add(total, c);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? 32, queue.length)) }, worker));
  };
  await pool((h, c) => ensureRole(client, etcdNames.hostRole(h.hostId), hostPermissions(h, opts.prefix), c));
  await pool((h, c) => {
    const ours = (r: string) => r.startsWith('sslwall-tier-') || r === etcdNames.hostRole(h.hostId);
    return ensureUser(client, etcdNames.hostUser(h.hostId), [etcdNames.tierRole(h.tier), etcdNames.hostRole(h.hostId)], ours, c);
  });
  return { ...total, hosts: byHost.size };
}
