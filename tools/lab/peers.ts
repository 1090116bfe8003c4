// Real Debian servers in the server namespace and the clients that talk to them from the client
// namespace: the traffic sslwall must classify (TLS, STARTTLS, HTTP CONNECT, SSH, plaintext,
// TCP Fast Open). Each start*() returns once the server listens on every address it was asked
// to, or throws with the tail of its log. Servers run under Testbed.spawn(), so destroy() stops
// any a test forgot.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Certs, copyKeyPairFor } from './certs.js';
import type { ExecOptions, Testbed } from './netns.js';
import { BIN, fixture, type Proc, type RunResult, requireBins, requireModule, runOk, tail, waitFor } from './proc.js';

/** A running server. */
export interface Peer {
  name: string;
  /** Its directory (config, data, log) inside the testbed dir. */
  dir: string;
  procs: Proc[];
  logFile: string;
  stop(): Promise<void>;
}

/** Options every client helper takes. */
export interface ClientOptions {
  /** Talk to the server's IPv6 address instead of IPv4. */
  v6?: boolean;
  /** Run the client inside this cgroup (e.g. one with sslwall's connect hooks attached). */
  cgroup?: string;
  timeoutMs?: number;
}

/** The server's address in URL/host form: "10.201.X.2" or "[fd00:5157:X::2]". */
export function serverHost(tb: Testbed, v6 = false): string {
  return v6 ? `[${tb.server.ipv6}]` : tb.server.ipv4;
}

function serverAddr(tb: Testbed, v6 = false): string {
  return v6 ? tb.server.ipv6 : tb.server.ipv4;
}

function execOpts(o: ClientOptions): ExecOptions {
  return { cgroup: o.cgroup, timeoutMs: o.timeoutMs ?? 30_000 };
}

/**
 * Wait until every [address, port] is in LISTEN state in the server namespace, on a socket owned
 * by one of `procs` (their process groups) — not by a leftover server of an earlier test. Asks
 * `ss` rather than connecting, so readiness checks add no flows for the agent under test.
 */
async function waitListening(tb: Testbed, name: string, procs: Proc[], logFile: string, addrs: [string, number][], timeoutMs = 15_000): Promise<void> {
  const want = addrs.map(([a, p]) => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`));
  const groups = new Set(procs.map((p) => p.pid));
  let foreign = '';
  await waitFor(
    `${name} to listen on ${want.join(', ')}`,
    async () => {
      const r = await tb.exec('server', BIN.ss, ['-Hltnp']);
      const ours = new Set<string>();
      for (const line of r.stdout.split('\n')) {
        const local = line.trim().split(/\s+/)[3];
        if (!local || !want.includes(local)) continue;
        const pids = [...line.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
        if (pids.some((pid) => groups.has(processGroup(pid)))) ours.add(local);
        else foreign = `${local} is held by another process: ${line.trim()}`;
      }
      return want.every((w) => ours.has(w));
    },
    {
      timeoutMs,
      explain: () => `${foreign}\n--- ${logFile} (tail) ---\n${tail(logFile)}`,
      abortIf: () => {
        const dead = procs.find((p) => !p.running);
        return dead && `${dead.name} exited (code ${dead.exitCode}, signal ${dead.exitSignal}) before listening`;
      },
    },
  );
}

function processGroup(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return -1;
  }
}

function peer(name: string, dir: string, procs: Proc[], logFile: string): Peer {
  const stop = async () => {
    await Promise.all(procs.map((p) => p.stop()));
  };
  return { name, dir, procs, logFile, stop };
}

// ---------------------------------------------------------------------------------------------
// nginx: HTTPS (443) and plain HTTP (80) on both addresses, with TCP Fast Open on every listener.

export interface NginxOptions {
  httpPort?: number;
  httpsPort?: number;
  /** Size of /big.bin for long transfers. Default 200 MiB. */
  bigFileBytes?: number;
  /** Fill /big.bin with random bytes instead of a sparse (all-zero) file; slower to create. */
  bigFileRandom?: boolean;
}

export interface NginxPeer extends Peer {
  httpPort: number;
  httpsPort: number;
  /** Body of "/" (and "/index.html"). */
  smallBody: string;
  bigPath: '/big.bin';
  bigBytes: number;
}

export async function startNginx(tb: Testbed, certs: Certs, opts: NginxOptions = {}): Promise<NginxPeer> {
  requireBins(['nginx', 'ss']);
  const httpPort = opts.httpPort ?? 80;
  const httpsPort = opts.httpsPort ?? 443;
  const bigBytes = opts.bigFileBytes ?? 200 * 1024 * 1024;
  const dir = tb.tempDir('nginx');
  const www = path.join(dir, 'www');
  fs.mkdirSync(www);
  const smallBody = 'hello from sslwall test nginx\n';
  fs.writeFileSync(path.join(www, 'index.html'), smallBody);
  writeBigFile(path.join(www, 'big.bin'), bigBytes, opts.bigFileRandom ?? false);
  for (const t of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(dir, `tmp-${t}`));

  const v4 = tb.server.ipv4;
  const v6 = `[${tb.server.ipv6}]`;
  const conf = `
daemon off;
user root;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/tmp-client_body;
  proxy_temp_path ${dir}/tmp-proxy;
  fastcgi_temp_path ${dir}/tmp-fastcgi;
  uwsgi_temp_path ${dir}/tmp-uwsgi;
  scgi_temp_path ${dir}/tmp-scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen ${v4}:${httpsPort} ssl fastopen=16;
    listen ${v6}:${httpsPort} ssl fastopen=16;
    listen ${v4}:${httpPort} fastopen=16;
    listen ${v6}:${httpPort} fastopen=16;
    server_name server.test;
    ssl_certificate ${certs.chain};
    ssl_certificate_key ${certs.key};
    root ${www};
  }
}
`;
  const confFile = path.join(dir, 'nginx.conf');
  fs.writeFileSync(confFile, conf);
  const logFile = path.join(dir, 'nginx.log');
  // -e: nginx opens its error log before reading the config; keep even that one in our dir.
  const proc = tb.spawn('server', 'nginx', BIN.nginx, ['-p', dir, '-e', `${dir}/error.log`, '-c', confFile], {
    logFile,
    stopSignal: 'SIGTERM',
  });
  const errorLog = path.join(dir, 'error.log');
  await waitListening(tb, 'nginx', [proc], errorLog, [
    [tb.server.ipv4, httpsPort],
    [tb.server.ipv6, httpsPort],
    [tb.server.ipv4, httpPort],
    [tb.server.ipv6, httpPort],
  ]).catch((e: Error) => {
    throw new Error(`${e.message}\n--- ${logFile} ---\n${tail(logFile)}`);
  });
  return { ...peer('nginx', dir, [proc], errorLog), httpPort, httpsPort, smallBody, bigPath: '/big.bin', bigBytes };
}

function writeBigFile(file: string, bytes: number, random: boolean): void {
  if (!random) {
    // Sparse: instant to create and costs no disk; the bytes on the wire are zeros.
    fs.writeFileSync(file, '');
    fs.truncateSync(file, bytes);
    return;
  }
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(1 << 20);
    for (let left = bytes; left > 0; left -= chunk.length) {
      crypto.randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, left));
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** URL of an nginx resource: TLS (https, nginx.httpsPort) or plain (http, nginx.httpPort). */
export function nginxUrl(tb: Testbed, nginx: NginxPeer, o: { tls: boolean; v6?: boolean; path?: string }): string {
  const port = o.tls ? nginx.httpsPort : nginx.httpPort;
  return `${o.tls ? 'https' : 'http'}://${serverHost(tb, o.v6)}:${port}${o.path ?? '/'}`;
}

// ---------------------------------------------------------------------------------------------
// curl: plain, TLS, TCP Fast Open, through a proxy.

export interface CurlOptions extends ClientOptions {
  /** --tcp-fastopen: the request rides in the SYN once the client holds a TFO cookie. */
  tfo?: boolean;
  /** --proxy URL (HTTP proxy; https:// targets go through CONNECT). */
  proxy?: string;
  /** CA to trust (the testbed CA); without it https:// fails verification. */
  cacert?: string;
  /** Abort the transfer after this many seconds (--max-time). Default 20. */
  maxTimeS?: number;
  /** Extra arguments, e.g. ['--limit-rate', '1M']. */
  args?: string[];
}

export interface CurlResult extends RunResult {
  /** HTTP status of the (last) response, 0 when none. */
  httpCode: number;
  /** Body bytes received. */
  bytes: number;
}

/** Fetch `url` with curl from the client namespace; the body is discarded. */
export async function curl(tb: Testbed, url: string, o: CurlOptions = {}): Promise<CurlResult> {
  requireBins(['curl']);
  const args = ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', '--max-time', String(o.maxTimeS ?? 20)];
  if (o.tfo) args.push('--tcp-fastopen');
  if (o.proxy) args.push('--proxy', o.proxy);
  if (o.cacert) args.push('--cacert', o.cacert);
  args.push(...(o.args ?? []), url);
  const r = await tb.exec('client', BIN.curl, args, execOpts({ ...o, timeoutMs: o.timeoutMs ?? ((o.maxTimeS ?? 20) + 10) * 1000 }));
  const [code, size] = r.stdout.trim().split(' ');
  return { ...r, httpCode: Number(code) || 0, bytes: Number(size) || 0 };
}

export interface TfoCounters {
  /** Connections this namespace opened with data in the SYN that the peer accepted. */
  active: number;
  /** Connections this namespace accepted with data in the SYN. */
  passive: number;
  /** All TcpExtTCPFastOpen* counters as nstat names them. */
  all: Record<string, number>;
}

/** TCP Fast Open counters of one namespace (nstat, absolute values, history untouched). */
export async function tfoCounters(tb: Testbed, side: 'client' | 'server'): Promise<TfoCounters> {
  requireBins(['nstat']);
  const r = await tb.execOk(side, BIN.nstat, ['-asz', 'TcpExtTCPFastOpen*']);
  const all: Record<string, number> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^(TcpExtTCPFastOpen\w+)\s+(\d+)/.exec(line);
    if (m) all[m[1]] = Number(m[2]);
  }
  return { active: all.TcpExtTCPFastOpenActive ?? 0, passive: all.TcpExtTCPFastOpenPassive ?? 0, all };
}

// ---------------------------------------------------------------------------------------------
// postgres 15: TLS negotiated in-protocol (SSLRequest), the other STARTTLS-like case.

export interface PostgresPeer extends Peer {
  port: number;
}

export async function startPostgres(tb: Testbed, certs: Certs, opts: { port?: number } = {}): Promise<PostgresPeer> {
  requireBins(['postgres', 'initdb', 'ss']);
  const port = opts.port ?? 5432;
  const dir = tb.tempDir('postgres');
  const { uid, gid } = osUser('postgres', 'postgresql-15');
  fs.chownSync(dir, uid, gid);
  const data = path.join(dir, 'data');
  await runOk(
    BIN.setpriv,
    [`--reuid=${uid}`, `--regid=${gid}`, '--init-groups', '--', BIN.initdb, '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'],
    { cwd: dir },
  );
  const { cert, key } = copyKeyPairFor(certs, dir, uid, gid);
  fs.appendFileSync(
    path.join(data, 'postgresql.conf'),
    `
listen_addresses = '${tb.server.ipv4},${tb.server.ipv6}'
port = ${port}
unix_socket_directories = '${dir}'
ssl = on
ssl_cert_file = '${cert}'
ssl_key_file = '${key}'
fsync = off
log_connections = on
`,
  );
  // hostssl before host only documents intent; "host" matches TLS and plaintext alike.
  fs.writeFileSync(
    path.join(data, 'pg_hba.conf'),
    `local all all trust
hostssl all all 0.0.0.0/0 trust
host all all 0.0.0.0/0 trust
hostssl all all ::/0 trust
host all all ::/0 trust
`,
  );
  const logFile = path.join(dir, 'postgres.log');
  // SIGINT is postgres' "fast" shutdown: it does not wait for clients to disconnect.
  const proc = tb.spawn('server', 'postgres', BIN.postgres, ['-D', data], { user: 'postgres', logFile, stopSignal: 'SIGINT' });
  await waitListening(tb, 'postgres', [proc], logFile, [
    [tb.server.ipv4, port],
    [tb.server.ipv6, port],
  ]);
  // Listening comes before recovery ends; until then connections are refused with "starting up".
  await waitFor('postgres to accept connections', () => fs.readFileSync(logFile, 'utf8').includes('ready to accept connections'), {
    explain: () => tail(logFile),
  });
  return { ...peer('postgres', dir, [proc], logFile), port };
}

/** `psql -c SQL` from the client namespace with the given sslmode; exit 0 means it worked. */
export async function psql(tb: Testbed, pg: PostgresPeer, o: ClientOptions & { sslmode: 'require' | 'disable'; sql?: string }): Promise<RunResult> {
  requireBins(['psql']);
  const conn = `host=${serverAddr(tb, o.v6)} port=${pg.port} user=postgres dbname=postgres sslmode=${o.sslmode} connect_timeout=10`;
  // -X: ignore any ~/.psqlrc of the machine; -At: bare output ("1").
  return tb.exec('client', BIN.psql, ['-X', '-At', '-d', conn, '-c', o.sql ?? 'select 1'], execOpts(o));
}

// ---------------------------------------------------------------------------------------------
// MariaDB (server-first: it greets before the client speaks), client `mariadb --skip-ssl`.

export interface MariadbPeer extends Peer {
  port: number;
}

export async function startMariadb(tb: Testbed, opts: { port?: number } = {}): Promise<MariadbPeer> {
  requireBins(['mariadbd', 'mariadb-install-db', 'ss']);
  const port = opts.port ?? 3306;
  const dir = tb.tempDir('mariadb');
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'mariadb.log');
  await runOk(BIN['mariadb-install-db'], ['--no-defaults', `--datadir=${data}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], {
    cwd: dir,
  });
  // No grant tables: any client may connect, which is all these tests need of a database.
  const proc = tb.spawn(
    'server',
    'mariadb',
    BIN.mariadbd,
    [
      '--no-defaults',
      `--datadir=${data}`,
      '--user=root',
      `--socket=${path.join(dir, 'mysqld.sock')}`,
      `--port=${port}`,
      `--bind-address=${tb.server.ipv4},${tb.server.ipv6}`,
      '--skip-grant-tables',
      '--skip-name-resolve',
      `--log-error=${logFile}`,
      `--pid-file=${path.join(dir, 'mysqld.pid')}`,
    ],
    { logFile: path.join(dir, 'stdout.log') },
  );
  await waitListening(tb, 'mariadb', [proc], logFile, [
    [tb.server.ipv4, port],
    [tb.server.ipv6, port],
  ]);
  return { ...peer('mariadb', dir, [proc], logFile), port };
}

/** `mariadb --skip-ssl -e SQL` from the client namespace; exit 0 and "1" on stdout mean it worked. */
export async function mariadb(tb: Testbed, db: MariadbPeer, o: ClientOptions & { sql?: string } = {}): Promise<RunResult> {
  requireBins(['mariadb']);
  return tb.exec(
    'client',
    BIN.mariadb,
    [
      '--no-defaults',
      '--skip-ssl',
      '-h',
      serverAddr(tb, o.v6),
      '-P',
      String(db.port),
      '-u',
      'root',
      '-N',
      '-B',
      '--connect-timeout=10',
      '-e',
      o.sql ?? 'select 1',
    ],
    execOpts(o),
  );
}

// ---------------------------------------------------------------------------------------------
// Redis: a line protocol with no TLS of its own here, client `redis-cli`.

export interface RedisPeer extends Peer {
  port: number;
}

export async function startRedis(tb: Testbed, opts: { port?: number } = {}): Promise<RedisPeer> {
  requireBins(['redis-server', 'ss']);
  const port = opts.port ?? 6379;
  const dir = tb.tempDir('redis');
  const logFile = path.join(dir, 'redis.log');
  const proc = tb.spawn(
    'server',
    'redis',
    BIN['redis-server'],
    [
      '--port',
      String(port),
      '--bind',
      tb.server.ipv4,
      tb.server.ipv6,
      '--protected-mode',
      'no',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--logfile',
      logFile,
    ],
    { logFile: path.join(dir, 'stdout.log') },
  );
  await waitListening(tb, 'redis', [proc], logFile, [
    [tb.server.ipv4, port],
    [tb.server.ipv6, port],
  ]);
  return { ...peer('redis', dir, [proc], logFile), port };
}

/** `redis-cli` with one command from the client namespace (default PING: stdout "PONG"). */
export async function redisCli(tb: Testbed, r: RedisPeer, o: ClientOptions & { args?: string[] } = {}): Promise<RunResult> {
  requireBins(['redis-cli']);
  return tb.exec('client', BIN['redis-cli'], ['-h', serverAddr(tb, o.v6), '-p', String(r.port), ...(o.args ?? ['PING'])], execOpts(o));
}

// ---------------------------------------------------------------------------------------------
// SMTP with STARTTLS (aiosmtpd) on 25 and 587, client swaks.

export interface SmtpPeer extends Peer {
  ports: number[];
}

export async function startSmtp(tb: Testbed, certs: Certs, opts: { ports?: number[] } = {}): Promise<SmtpPeer> {
  requireModule('python3', 'aiosmtpd');
  requireBins(['ss']);
  const ports = opts.ports ?? [25, 587];
  const dir = tb.tempDir('smtp');
  const listens: [string, number][] = ports.flatMap((p): [string, number][] => [
    [tb.server.ipv4, p],
    [tb.server.ipv6, p],
  ]);
  const args = [fixture('smtpd.py'), '--cert', certs.chain, '--key', certs.key];
  for (const [a, p] of listens) args.push('--listen', a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);
  const logFile = path.join(dir, 'smtpd.log');
  const proc = tb.spawn('server', 'smtpd', BIN.python3, ['-u', ...args], { logFile });
  await waitListening(tb, 'smtpd', [proc], logFile, listens);
  return { ...peer('smtpd', dir, [proc], logFile), ports };
}

/**
 * Send one message with swaks from the client namespace: STARTTLS when `starttls`, plaintext
 * otherwise. Certificate verification is off (swaks' default without --tls-verify).
 */
export async function swaks(tb: Testbed, o: ClientOptions & { starttls: boolean; port?: number }): Promise<RunResult> {
  requireBins(['swaks']);
  if (o.starttls) requireModule('perl', 'Net::SSLeay');
  if (o.v6) requireModule('perl', 'IO::Socket::INET6');
  const args = [
    '--to',
    'a@b.test',
    '--from',
    'c@d.test',
    '--helo',
    'client.test',
    '--server',
    serverAddr(tb, o.v6),
    '--port',
    String(o.port ?? 25),
    '--timeout',
    '10',
    '--h-Subject',
    'sslwall test',
  ];
  if (o.starttls) args.push('--tls');
  return tb.exec('client', BIN.swaks, args, execOpts(o));
}

// ---------------------------------------------------------------------------------------------
// squid: forward proxy; https:// targets go through HTTP CONNECT.

export interface SquidPeer extends Peer {
  port: number;
}

export async function startSquid(tb: Testbed, opts: { port?: number } = {}): Promise<SquidPeer> {
  requireBins(['squid', 'ss']);
  const port = opts.port ?? 3128;
  const dir = tb.tempDir('squid');
  // squid refuses to run as root: it drops to the proxy user, which must own its files.
  const { uid, gid } = osUser('proxy', 'squid');
  fs.chownSync(dir, uid, gid);
  const conf = `
http_port ${tb.server.ipv4}:${port}
http_port [${tb.server.ipv6}]:${port}
cache_effective_user proxy
pid_filename ${dir}/squid.pid
cache_log ${dir}/cache.log
access_log stdio:${dir}/access.log
cache_store_log none
cache deny all
cache_mem 8 MB
coredump_dir ${dir}
netdb_filename none
pinger_enable off
dns_nameservers 127.0.0.1
# squid still needs about 2 s to exit after SIGTERM; without this it waits 30 s.
shutdown_lifetime 0 seconds
acl testnet src 10.201.0.0/16 fd00:5157::/32
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow testnet
http_access deny all
`;
  const confFile = path.join(dir, 'squid.conf');
  fs.writeFileSync(confFile, conf);
  const logFile = path.join(dir, 'squid.log');
  // -N: foreground, no daemon; -d 1: also log to stderr (our log file).
  const proc = tb.spawn('server', 'squid', BIN.squid, ['-N', '-d', '1', '-f', confFile], { logFile });
  await waitListening(
    tb,
    'squid',
    [proc],
    logFile,
    [
      [tb.server.ipv4, port],
      [tb.server.ipv6, port],
    ],
    30_000,
  ).catch((e: Error) => {
    throw new Error(`${e.message}\n--- cache.log ---\n${tail(path.join(dir, 'cache.log'))}`);
  });
  return { ...peer('squid', dir, [proc], logFile), port };
}

/** Proxy URL for curl's --proxy. */
export function squidProxyUrl(tb: Testbed, squid: SquidPeer, v6 = false): string {
  return `http://${serverHost(tb, v6)}:${squid.port}`;
}

// ---------------------------------------------------------------------------------------------
// sshd: a protocol that is encrypted but not TLS (bypass by port in sslwall's config).

export interface SshdPeer extends Peer {
  port: number;
  /** Private key the client uses (its public half is in authorized_keys). */
  clientKey: string;
}

export async function startSshd(tb: Testbed, opts: { port?: number } = {}): Promise<SshdPeer> {
  requireBins(['sshd', 'ssh-keygen', 'ss']);
  const port = opts.port ?? 22;
  const dir = tb.tempDir('sshd');
  const hostKey = path.join(dir, 'host_ed25519');
  const clientKey = path.join(dir, 'client_ed25519');
  await runOk(BIN['ssh-keygen'], ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  await runOk(BIN['ssh-keygen'], ['-q', '-t', 'ed25519', '-N', '', '-f', clientKey]);
  fs.copyFileSync(`${clientKey}.pub`, path.join(dir, 'authorized_keys'));
  // sshd insists on its privilege-separation directory; Debian's service unit creates it at
  // boot, and a machine without systemd may not have it.
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const conf = `
Port ${port}
ListenAddress ${tb.server.ipv4}
ListenAddress ${tb.server.ipv6}
HostKey ${hostKey}
PidFile ${dir}/sshd.pid
AuthorizedKeysFile ${dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
`;
  const confFile = path.join(dir, 'sshd_config');
  fs.writeFileSync(confFile, conf);
  const logFile = path.join(dir, 'sshd.log');
  // -D: no daemon; -e: log to stderr (our log file). sshd needs its absolute path to re-exec.
  const proc = tb.spawn('server', 'sshd', BIN.sshd, ['-D', '-e', '-f', confFile], { logFile });
  await waitListening(tb, 'sshd', [proc], logFile, [
    [tb.server.ipv4, port],
    [tb.server.ipv6, port],
  ]);
  return { ...peer('sshd', dir, [proc], logFile), port, clientKey };
}

/** Log in with the client key and run `command` (default `true`): a full SSH session. */
export async function ssh(tb: Testbed, sshd: SshdPeer, o: ClientOptions & { command?: string } = {}): Promise<RunResult> {
  requireBins(['ssh']);
  return tb.exec(
    'client',
    BIN.ssh,
    [
      '-F',
      '/dev/null',
      '-i',
      sshd.clientKey,
      '-p',
      String(sshd.port),
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      'UserKnownHostsFile=/dev/null',
      '-o',
      'BatchMode=yes',
      '-o',
      'ConnectTimeout=10',
      '-o',
      'LogLevel=ERROR',
      `root@${serverAddr(tb, o.v6)}`,
      o.command ?? 'true',
    ],
    execOpts(o),
  );
}

// ---------------------------------------------------------------------------------------------
// Plaintext: a byte-counting sink and a client that keeps sending until its connection fails.

export interface SinkPeer extends Peer {
  port: number;
  /** Bytes received so far, over all connections and both address families. */
  bytes(): number;
}

/** socat on both addresses, appending everything it receives to one file (its size = count). */
export async function startSink(tb: Testbed, opts: { port?: number } = {}): Promise<SinkPeer> {
  requireBins(['socat', 'ss']);
  const port = opts.port ?? 9000;
  const dir = tb.tempDir('sink');
  const data = path.join(dir, 'received');
  fs.writeFileSync(data, '');
  const logFile = path.join(dir, 'sink.log');
  const out = `OPEN:${data},creat,append`;
  const procs = [
    tb.spawn('server', 'sink4', BIN.socat, ['-u', `TCP4-LISTEN:${port},bind=${tb.server.ipv4},reuseaddr,fork`, out], { logFile }),
    tb.spawn('server', 'sink6', BIN.socat, ['-u', `TCP6-LISTEN:${port},bind=[${tb.server.ipv6}],reuseaddr,fork`, out], { logFile }),
  ];
  await waitListening(tb, 'sink', procs, logFile, [
    [tb.server.ipv4, port],
    [tb.server.ipv6, port],
  ]);
  return { ...peer('sink', dir, procs, logFile), port, bytes: () => fs.statSync(data).size };
}

export interface PlainClientResult extends RunResult {
  connected: boolean;
  /** The connection broke (reset, aborted, closed) before maxMs. */
  failed: boolean;
  /** From the first line sent to the failure (or to maxMs when it did not fail). */
  elapsedMs: number;
  linesSent: number;
  /** errno code of the failure, e.g. ECONNABORTED, ECONNRESET, or "closed". */
  error?: string;
}

/**
 * Connect to host:port from the client namespace and send a line every intervalMs for up to
 * maxMs; report whether and how fast the connection failed (for "in active mode a plaintext
 * client fails within 1 s").
 */
export async function plainClient(
  tb: Testbed,
  o: ClientOptions & { port: number; host?: string; maxMs?: number; intervalMs?: number },
): Promise<PlainClientResult> {
  const maxMs = o.maxMs ?? 5000;
  const host = o.host ?? serverAddr(tb, o.v6);
  const r = await tb.exec(
    'client',
    process.execPath,
    [fixture('plain-client.mjs'), host, String(o.port), String(maxMs), String(o.intervalMs ?? 100)],
    execOpts({ ...o, timeoutMs: o.timeoutMs ?? maxMs + 10_000 }),
  );
  let report: Partial<PlainClientResult> = {};
  try {
    report = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Partial<PlainClientResult>;
  } catch {
    throw new Error(`plain-client printed no report (exit ${r.code}): ${r.stdout} ${r.stderr}`);
  }
  return {
    ...r,
    connected: !!report.connected,
    failed: !!report.failed,
    elapsedMs: report.elapsedMs ?? 0,
    linesSent: report.linesSent ?? 0,
    error: report.error,
  };
}

// ---------------------------------------------------------------------------------------------
// iperf3: throughput, for the "costs nothing measurable" checks.

export interface IperfPeer extends Peer {
  port: number;
  /** Address the server is bound to (one family per server). */
  address: string;
}

/** iperf3 server bound to the server's IPv4 (or, with v6, IPv6) address. One test at a time. */
export async function startIperf(tb: Testbed, opts: { port?: number; v6?: boolean } = {}): Promise<IperfPeer> {
  requireBins(['iperf3', 'ss']);
  const port = opts.port ?? 5201;
  const address = serverAddr(tb, opts.v6);
  const dir = tb.tempDir('iperf3');
  const logFile = path.join(dir, 'iperf3.log');
  const proc = tb.spawn('server', 'iperf3', BIN.iperf3, ['-s', '-B', address, '-p', String(port)], { logFile });
  await waitListening(tb, 'iperf3', [proc], logFile, [[address, port]]);
  return { ...peer('iperf3', dir, [proc], logFile), port, address };
}

export interface IperfResult extends RunResult {
  /** Receiver-side throughput (end.sum_received.bits_per_second). */
  bitsPerSecond: number;
  sentBytes: number;
  receivedBytes: number;
  /** The whole --json report. */
  json: unknown;
}

/** Run an iperf3 test from the client namespace; reverse = server sends. Throws if iperf3 fails. */
export async function iperfClient(
  tb: Testbed,
  server: IperfPeer,
  o: ClientOptions & { durationS?: number; reverse?: boolean; args?: string[] } = {},
): Promise<IperfResult> {
  requireBins(['iperf3']);
  const durationS = o.durationS ?? 3;
  const args = ['-c', server.address, '-p', String(server.port), '-t', String(durationS), '--json', ...(o.args ?? [])];
  if (o.reverse) args.push('-R');
  const r = await tb.exec('client', BIN.iperf3, args, execOpts({ ...o, timeoutMs: o.timeoutMs ?? (durationS + 20) * 1000 }));
  let json: { end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { bytes: number } }; error?: string };
  try {
    json = JSON.parse(r.stdout) as typeof json;
  } catch {
    throw new Error(`iperf3 printed no JSON (exit ${r.code}): ${r.stderr || r.stdout}`);
  }
  if (r.code !== 0 || !json.end?.sum_received) {
    throw new Error(`iperf3 failed (exit ${r.code}): ${json.error ?? r.stderr}\nserver log:\n${tail(server.logFile)}`);
  }
  return {
    ...r,
    bitsPerSecond: json.end.sum_received.bits_per_second,
    receivedBytes: json.end.sum_received.bytes,
    sentBytes: json.end.sum_sent?.bytes ?? 0,
    json,
  };
}

// ---------------------------------------------------------------------------------------------

/** uid/gid of a system user a Debian package creates; fails naming the package. */
function osUser(name: string, pkg: string): { uid: number; gid: number } {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`system user ${name} missing — install Debian package: ${pkg}`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

/** Everything the full set of peers needs, checked at once so a test fails with one message. */
export function requireAllPeers(): void {
  requireBins(['nginx', 'postgres', 'initdb', 'psql', 'squid', 'sshd', 'ssh', 'ssh-keygen', 'curl', 'iperf3', 'swaks', 'socat', 'ss', 'nstat', 'openssl']);
  requireModule('python3', 'aiosmtpd');
  if (os.userInfo().uid !== 0) throw new Error('the peers need root');
}
