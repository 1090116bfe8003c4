// Who may call the engine's API (docs/security.md): bearer tokens looked up in the users file
// by their SHA-256, a role per user, and the host-name and origin rules that keep browsers of
// other sites (CSRF) and rebound DNS names out. The users file is re-read when it changes; a
// bad new file is refused and the users already loaded stay.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { describeIssues } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';
import { type Role, RoleSchema, type User, UserNameSchema, UsersFileSchema } from '../schemas/users.js';

/** Who made a request: the name recorded as author in history, audit and rollout events. */
export interface Caller {
  name: string;
  /** null: the engine runs without --users (--insecure); the caller may do anything. */
  role: Role | null;
}

export function sha256Hex(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export function readUsersFile(file: string): User[] {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read the users file ${file}: ${(err as Error).message}`, { cause: err });
  }
  const r = UsersFileSchema.safeParse(raw);
  if (!r.success) throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `users file ${file}: ${describeIssues(r.error)}`);
  return r.data;
}

/** `sslwall token`: add a user with a new random token to FILE (made 0600 if missing); returns the token. */
export function addUser(file: string, name: string, role: string): string {
  const n = UserNameSchema.safeParse(name);
  if (!n.success) throw new SslwallError('SSLWALL_E_USAGE', `--name ${name}: ${describeIssues(n.error)}`);
  const r = RoleSchema.safeParse(role);
  if (!r.success) throw new SslwallError('SSLWALL_E_USAGE', `--role ${role}: use viewer, operator or alerts`);
  const users = fs.existsSync(file) ? readUsersFile(file) : [];
  if (users.some((u) => u.name === name)) throw new SslwallError('SSLWALL_E_USAGE', `user ${name} is already in ${file}; pick another name or remove it first`);
  // 32 random bytes: not guessable, and the hash needs no salt or slow KDF for a token this long.
  const token = randomBytes(32).toString('base64url');
  users.push({ name, role: r.data, token_sha256: sha256Hex(token) });
  // Written beside and renamed over, so a running engine never reads half a file.
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, `${JSON.stringify(users, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return token;
}

/** The users of --users FILE, re-read when the file changes (in place or renamed over). */
export class Users {
  private users: User[];
  private readonly onChange = () => this.reload();

  constructor(
    readonly file: string,
    private readonly log: Logger,
  ) {
    this.users = readUsersFile(file);
    // Polling the path's stat sees both an in-place write and a rename over it (an inotify watch
    // on the old inode would miss the rename); 1 s keeps a change well within 5 s.
    fs.watchFile(file, { interval: 1000, persistent: false }, this.onChange);
  }

  private reload(): void {
    try {
      this.users = readUsersFile(this.file);
      this.log.info({ event: 'users_reloaded', file: this.file, users: this.users.length }, 'users file re-read');
    } catch (err) {
      this.log.warn({ event: 'users_refused', file: this.file, err: (err as Error).message }, 'users file refused; the previous users stay');
    }
  }

  /** The user whose token this is; every user's hash is compared, in constant time, so timing tells nothing. */
  find(token: string): User | undefined {
    const h = Buffer.from(sha256Hex(token), 'hex');
    let found: User | undefined;
    for (const u of this.users) if (timingSafeEqual(h, Buffer.from(u.token_sha256, 'hex')) && !found) found = u;
    return found;
  }

  close(): void {
    fs.unwatchFile(this.file, this.onChange);
  }
}

/** The role a call needs: reads are for viewers and operators, alerts for the alerts role only, other writes for operators. */
export function roleNeeded(method: string, route: string): Role[] {
  if (route === '/api/alerts') return method === 'POST' ? ['alerts'] : [];
  if (method === 'GET' || method === 'HEAD') return ['viewer', 'operator'];
  return ['operator'];
}

/** The Authorization header's bearer token, or undefined. */
export function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
}

/** The names an engine answers to (Host) and the pages it takes browser requests from (Origin). */
export interface EngineNames {
  hosts: Set<string>;
  origins: Set<string>;
}

/**
 * The listen address and loopback names on the same port, in the engine's own scheme, and each
 * --public-url (whose scheme may differ: a load balancer may terminate TLS in front). Any other
 * Host is a rebound DNS name or a mistake; any other Origin another site.
 */
export function engineNames(listen: string, tls: boolean, publicUrls: string[]): EngineNames {
  const port = listen.slice(listen.lastIndexOf(':') + 1);
  const hosts = new Set([listen.toLowerCase(), `127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]);
  const origins = new Set([...hosts].map((h) => `${tls ? 'https' : 'http'}://${h}`));
  for (const u of publicUrls) {
    let url: URL;
    try {
      url = new URL(u);
    } catch {
      throw new SslwallError('SSLWALL_E_USAGE', `--public-url ${u} is not a URL; give e.g. https://engine.example:7070`);
    }
    hosts.add(url.host.toLowerCase());
    // A URL without a port names the scheme's default, which clients may also spell out in Host.
    if (!url.port) hosts.add(`${url.hostname.toLowerCase()}:${url.protocol === 'https:' ? 443 : 80}`);
    origins.add(url.origin.toLowerCase());
  }
  return { hosts, origins };
}

/** The listen host is loopback: nobody off this machine can reach it. */
export function isLoopback(listen: string): boolean {
  const host = listen
    .slice(0, listen.lastIndexOf(':'))
    .replace(/^\[|\]$/g, '')
    .toLowerCase();
  return host === '' || host === 'localhost' || host === '::1' || /^127\./.test(host);
}
