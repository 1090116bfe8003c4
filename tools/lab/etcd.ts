// etcd for tests: a single member or a 3-member cluster on 127.0.0.1, each member a Proc with its
// log in a temp dir, a single member optionally on HTTPS with client certificates required
// (where, once auth is on, a client's certificate CN is its user), controllable (stop, kill, restart on the same ports and data), compaction on
// demand. Every etcd started here is tracked and SIGKILLed when the test process exits, so nothing
// outlives a crashed test (the stop hook checks `pgrep -x etcd`).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { atExit } from './exit.js';
import { Proc, pidAlive, type RunResult, run, tail, waitFor } from './proc.js';

export const ETCD_BIN = '/usr/bin/etcd';
export const ETCDCTL_BIN = '/usr/bin/etcdctl';

/** Throw (never skip) when etcd is not installed, naming the Debian packages. */
export function requireEtcd(): void {
  const missing = [ETCD_BIN, ETCDCTL_BIN].filter((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length) {
    throw new Error(`missing prerequisites: ${missing.join(', ')} — install Debian package(s): etcd-server etcd-client`);
  }
}

/** Every port freePort() has handed out in this process. */
const handedOut = new Set<number>();

/**
 * A TCP port that was free a moment ago and that this process has not been given before: bind
 * port 0, read it, close. The kernel may give a just-closed port again at once, so two calls in a
 * row (an etcd's client and peer port) could otherwise return the same one.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await bindAnyPort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

function bindAnyPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Environment for etcd and etcdctl: v3 API, and no ETCD_* / ETCDCTL_* from the caller's shell,
 * which etcd would silently merge with our flags.
 */
function etcdEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^ETCD(CTL)?_/.test(k)) env[k] = v;
  env.ETCDCTL_API = '3';
  return env;
}

/** HTTPS for clients, client certificates required (etcd --client-cert-auth). */
export interface EtcdTls {
  caCert: string;
  /** The server's certificate and key (SAN 127.0.0.1). */
  cert: string;
  key: string;
  /** The certificate etcdctl uses (the lab's own calls: health, compaction, put/get); CN root once auth is on. */
  client: { cert: string; key: string };
}

function ctlTlsArgs(tls?: EtcdTls): string[] {
  return tls ? [`--cacert=${tls.caCert}`, `--cert=${tls.client.cert}`, `--key=${tls.client.key}`] : [];
}

/** etcdctl against the given endpoints; short timeouts so a dead member fails fast. */
export function etcdctl(endpoints: string[], args: string[], timeoutMs = 10_000, tls?: EtcdTls): Promise<RunResult> {
  return run(ETCDCTL_BIN, [`--endpoints=${endpoints.join(',')}`, '--dial-timeout=1s', '--command-timeout=3s', ...ctlTlsArgs(tls), ...args], {
    env: etcdEnv(),
    timeoutMs,
  });
}

/**
 * etcdctl prints member ids as bare uint64 JSON numbers, which JSON.parse rounds; quote every
 * long integer first so ids compare exactly.
 */
function parseJsonExact(text: string): Array<{ Status?: { header: { member_id: string; revision: number }; leader: string } }> {
  return JSON.parse(text.replace(/([:[,]\s*)(\d{16,})(?=\s*[,}\]])/g, '$1"$2"'));
}

interface EndpointStatus {
  memberId: string;
  leaderId: string;
  revision: number;
}

async function endpointStatus(endpoint: string, tls?: EtcdTls): Promise<EndpointStatus | undefined> {
  const r = await etcdctl([endpoint], ['endpoint', 'status', '-w', 'json'], 5_000, tls);
  if (r.code !== 0) return undefined;
  const s = parseJsonExact(r.stdout)[0]?.Status;
  if (!s) return undefined;
  return { memberId: String(s.header.member_id), leaderId: String(s.leader), revision: Number(s.header.revision) };
}

// ---- process tracking ----------------------------------------------------------------------

const live = new Set<Proc>();
const liveDirs = new Set<string>();
let exitHandlersInstalled = false;

function track(p: Proc): void {
  live.add(p);
  installExitHandlers();
}

/** A temp dir removed by destroy(), or at process exit if a test never got there. */
function makeTempDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  liveDirs.add(d);
  installExitHandlers();
  return d;
}

function removeTempDir(d: string): void {
  fs.rmSync(d, { recursive: true, force: true });
  liveDirs.delete(d);
}

function installExitHandlers(): void {
  if (exitHandlersInstalled) return;
  exitHandlersInstalled = true;
  // Last resort for a test that crashed or forgot destroy(): SIGKILL every etcd we started and
  // wait (briefly, synchronously: nothing async runs in 'exit') until it is gone.
  atExit(() => {
    for (const p of live) p.killNow();
    const deadline = Date.now() + 2000;
    while ([...live].some((p) => pidAlive(p.pid)) && Date.now() < deadline) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
    for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

/**
 * Wait until a process is gone and reaped (a zombie still shows in `pgrep -x etcd`), by polling:
 * Proc children are unref'd, so awaiting their exit promise would not keep the event loop alive,
 * and a timer does. p.running turns false once node has reaped the child and seen its 'exit'.
 */
async function waitGone(p: Proc, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (p.running || pidAlive(p.pid)) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

// ---- members ---------------------------------------------------------------------------------

/** One etcd process: its ports, data dir and log stay fixed across restarts. */
export class EtcdMember {
  private proc: Proc | undefined;
  readonly endpoint: string;
  readonly peerUrl: string;

  constructor(
    readonly name: string,
    readonly clientPort: number,
    readonly peerPort: number,
    readonly dataDir: string,
    readonly logFile: string,
    /** The --initial-cluster value; only read by etcd on the first start (empty data dir). */
    private readonly initialCluster: string,
    private readonly clusterToken: string,
    readonly tls?: EtcdTls,
  ) {
    this.endpoint = `${tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
    this.peerUrl = `http://127.0.0.1:${peerPort}`;
  }

  get running(): boolean {
    return this.proc !== undefined && pidAlive(this.proc.pid);
  }

  get pid(): number | undefined {
    return this.running ? this.proc!.pid : undefined;
  }

  /** Spawn etcd (no wait); start() on a running member is an error. */
  spawn(): void {
    if (this.running) throw new Error(`etcd ${this.name} is already running (pid ${this.proc!.pid})`);
    fs.appendFileSync(this.logFile, `\n==== start ${new Date().toISOString()}\n`);
    const args = [
      `--name=${this.name}`,
      `--data-dir=${this.dataDir}`,
      `--listen-client-urls=${this.endpoint}`,
      `--advertise-client-urls=${this.endpoint}`,
      `--listen-peer-urls=${this.peerUrl}`,
      `--initial-advertise-peer-urls=${this.peerUrl}`,
      `--initial-cluster=${this.initialCluster}`,
      `--initial-cluster-token=${this.clusterToken}`,
      '--initial-cluster-state=new',
      // Tests compact explicitly; a background compaction would make revisions vanish at random.
      '--auto-compaction-retention=0',
      // Fast elections: a killed leader is replaced in about a second instead of several.
      '--heartbeat-interval=50',
      '--election-timeout=500',
      '--logger=zap',
      '--log-outputs=stderr',
      ...(this.tls ? [`--cert-file=${this.tls.cert}`, `--key-file=${this.tls.key}`, `--trusted-ca-file=${this.tls.caCert}`, '--client-cert-auth'] : []),
    ];
    this.proc = Proc.start(`etcd-${this.name}`, ETCD_BIN, args, this.logFile, { env: etcdEnv() });
    track(this.proc);
  }

  /** Wait until this member answers `endpoint health` (which needs a leader in the cluster). */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    await waitFor(
      `etcd ${this.name} healthy at ${this.endpoint}`,
      async () => (await etcdctl([this.endpoint], ['endpoint', 'health'], 5_000, this.tls)).code === 0,
      {
        timeoutMs,
        intervalMs: 100,
        explain: () => tail(this.logFile),
        abortIf: () => (this.running ? undefined : `etcd ${this.name} exited (code ${this.proc?.exitCode}, signal ${this.proc?.exitSignal})`),
      },
    );
  }

  /** SIGTERM, SIGKILL after graceMs, and poll until the process is gone. */
  async stop(graceMs = 5_000): Promise<void> {
    await this.signalAndWait('SIGTERM', graceMs);
  }

  /** SIGKILL (a crash: no graceful shutdown) and poll until the process is gone. */
  async kill(): Promise<void> {
    await this.signalAndWait('SIGKILL', 0);
  }

  /** Start again on the same ports and data dir; wait until healthy. */
  async restart(timeoutMs = 20_000): Promise<void> {
    if (this.running) await this.stop();
    this.spawn();
    await this.waitHealthy(timeoutMs);
  }

  private async signalAndWait(sig: NodeJS.Signals, graceMs: number): Promise<void> {
    const p = this.proc;
    if (!p) return;
    if (pidAlive(p.pid)) {
      try {
        process.kill(p.pid, sig);
      } catch {
        /* exited meanwhile */
      }
      if (!(await waitGone(p, graceMs))) p.killNow();
      if (!(await waitGone(p, 5_000))) throw new Error(`etcd ${this.name} (pid ${p.pid}) survived SIGKILL`);
    }
    p.killNow(); // anything left in its process group
    live.delete(p);
  }
}

// ---- single server ---------------------------------------------------------------------------

export interface EtcdServer {
  /** The temp dir (data dir unless one was given, log), removed by destroy(). */
  dir: string;
  /** http://127.0.0.1:PORT (https:// with tls) */
  endpoint: string;
  endpoints: string[];
  dataDir: string;
  logFile: string;
  clientPort: number;
  peerPort: number;
  member: EtcdMember;
  stop(): Promise<void>;
  kill(): Promise<void>;
  restart(): Promise<void>;
  /** Compact to `revision` (default: the current one); waits for the physical compaction. */
  compact(revision?: number): Promise<number>;
  /** The current store revision. */
  revision(): Promise<number>;
  put(key: string, value: string): Promise<void>;
  /** The value, or undefined when the key does not exist. */
  get(key: string): Promise<string | undefined>;
  /** Kill and remove the temp dir; idempotent. */
  destroy(): Promise<void>;
}

export interface StartEtcdOptions {
  name?: string;
  /** Default: a fresh temp dir, removed by destroy(). A given dataDir is left in place. */
  dataDir?: string;
  clientPort?: number;
  peerPort?: number;
  tls?: EtcdTls;
}

async function currentRevision(endpoints: string[], tls?: EtcdTls): Promise<number> {
  for (const ep of endpoints) {
    const s = await endpointStatus(ep, tls);
    if (s) return s.revision;
  }
  throw new Error(`no etcd endpoint answered: ${endpoints.join(', ')}`);
}

async function compactAt(endpoints: string[], revision?: number, tls?: EtcdTls): Promise<number> {
  const rev = revision ?? (await currentRevision(endpoints, tls));
  await runOkCtl(endpoints, ['compact', String(rev), '--physical'], tls);
  return rev;
}

async function runOkCtl(endpoints: string[], args: string[], tls?: EtcdTls): Promise<RunResult> {
  const r = await etcdctl(endpoints, args, 10_000, tls);
  if (r.code !== 0) throw new Error(`etcdctl ${args.join(' ')} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim()}`);
  return r;
}

async function ctlPut(endpoints: string[], key: string, value: string, tls?: EtcdTls): Promise<void> {
  // After `--`, so a key or value starting with '-' is not taken for a flag.
  await runOkCtl(endpoints, ['put', '--', key, value], tls);
}

async function ctlGet(endpoints: string[], key: string, tls?: EtcdTls): Promise<string | undefined> {
  const r = await runOkCtl(endpoints, ['get', '--print-value-only', '--', key], tls);
  return r.stdout === '' ? undefined : r.stdout.replace(/\n$/, '');
}

/**
 * A port free when chosen can be taken before etcd binds it (another test process, or an
 * outgoing connection's ephemeral port): start again, on new ports, up to 3 times.
 */
async function retryOnTakenPort<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (e) {
      if (attempt === 3 || !/address already in use/.test(String(e))) throw e;
    }
  }
}

export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdServer> {
  requireEtcd();
  // Ports the caller chose are its to keep: no second try on others.
  if (opts.clientPort !== undefined || opts.peerPort !== undefined) return startEtcdOnce(opts);
  return retryOnTakenPort(() => startEtcdOnce(opts));
}

async function startEtcdOnce(opts: StartEtcdOptions): Promise<EtcdServer> {
  const name = opts.name ?? 'etcd0';
  const tmp = makeTempDir('sslwall-etcd-');
  const dataDir = opts.dataDir ?? path.join(tmp, 'data');
  const clientPort = opts.clientPort ?? (await freePort());
  const peerPort = opts.peerPort ?? (await freePort());
  const logFile = path.join(tmp, `${name}.log`);
  const m = new EtcdMember(name, clientPort, peerPort, dataDir, logFile, `${name}=http://127.0.0.1:${peerPort}`, `sslwall-${path.basename(tmp)}`, opts.tls);
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await m.kill();
    removeTempDir(tmp);
  };
  m.spawn();
  try {
    await m.waitHealthy(); // its error carries the log tail
  } catch (e) {
    await destroy();
    throw e;
  }
  const eps = [m.endpoint];
  return {
    dir: tmp,
    endpoint: m.endpoint,
    endpoints: eps,
    dataDir,
    logFile: m.logFile,
    clientPort,
    peerPort,
    member: m,
    stop: () => m.stop(),
    kill: () => m.kill(),
    restart: () => m.restart(),
    compact: (rev) => compactAt(eps, rev, opts.tls),
    revision: () => currentRevision(eps, opts.tls),
    put: (k, v) => ctlPut(eps, k, v, opts.tls),
    get: (k) => ctlGet(eps, k, opts.tls),
    destroy,
  };
}

// ---- cluster ---------------------------------------------------------------------------------

export interface EtcdCluster {
  /** The temp dir holding every member's data dir and log, removed by destroy(). */
  dir: string;
  members: EtcdMember[];
  /** Client URLs of every member, in member order. */
  endpoints: string[];
  /** Client URLs of the members running now. */
  liveEndpoints(): string[];
  /** Index of the leader, as the running members report it; waits up to timeoutMs for one. */
  leader(timeoutMs?: number): Promise<number>;
  kill(i: number): Promise<void>;
  stop(i: number): Promise<void>;
  restart(i: number): Promise<void>;
  compact(revision?: number): Promise<number>;
  put(key: string, value: string): Promise<void>;
  get(key: string): Promise<string | undefined>;
  destroy(): Promise<void>;
}

export async function startEtcdCluster(size = 3): Promise<EtcdCluster> {
  requireEtcd();
  return retryOnTakenPort(() => startEtcdClusterOnce(size));
}

async function startEtcdClusterOnce(size: number): Promise<EtcdCluster> {
  const tmp = makeTempDir('sslwall-etcd-cluster-');
  const ports: Array<[number, number]> = [];
  while (ports.length < size) ports.push([await freePort(), await freePort()]);
  const initialCluster = ports.map(([, p], i) => `m${i}=http://127.0.0.1:${p}`).join(',');
  const token = `sslwall-${path.basename(tmp)}`;
  const members = ports.map(([c, p], i) => new EtcdMember(`m${i}`, c, p, path.join(tmp, `m${i}.data`), path.join(tmp, `m${i}.log`), initialCluster, token));
  const endpoints = members.map((m) => m.endpoint);
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    await Promise.all(members.map((m) => m.kill()));
    removeTempDir(tmp);
  };
  const liveEndpoints = () => members.filter((m) => m.running).map((m) => m.endpoint);
  // All members must start together: none is healthy until a quorum has elected a leader.
  for (const m of members) m.spawn();
  try {
    await Promise.all(members.map((m) => m.waitHealthy(30_000)));
  } catch (e) {
    await destroy();
    throw e;
  }
  const member = (i: number) => {
    const m = members[i];
    if (!m) throw new Error(`no cluster member ${i} (size ${size})`);
    return m;
  };
  return {
    dir: tmp,
    members,
    endpoints,
    liveEndpoints,
    async leader(timeoutMs = 10_000) {
      let found = -1;
      await waitFor(
        'an etcd cluster leader',
        async () => {
          const st = await Promise.all(members.map((m) => (m.running ? endpointStatus(m.endpoint) : undefined)));
          found = st.findIndex((s) => s !== undefined && s.memberId === s.leaderId);
          return found >= 0;
        },
        { timeoutMs, intervalMs: 100, explain: () => members.map((m) => `--- ${m.name}\n${tail(m.logFile, 10)}`).join('\n') },
      );
      return found;
    },
    kill: (i) => member(i).kill(),
    stop: (i) => member(i).stop(),
    restart: (i) => member(i).restart(),
    compact: (rev) => compactAt(liveEndpoints(), rev),
    put: (k, v) => ctlPut(liveEndpoints(), k, v),
    get: (k) => ctlGet(liveEndpoints(), k),
    destroy,
  };
}
