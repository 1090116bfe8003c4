// A two-host test bed: a client and a server network namespace joined by a veth pair, plus the
// bpffs and cgroup2 mounts an agent under test needs. Everything it creates is tracked and removed
// by destroy(), by a process 'exit'/signal handler when a test crashes, and by sweepStale() for
// leftovers of runs that were SIGKILLed. (DESIGN.md "Safety rules": tc and cgroup programs only
// ever touch what a test created itself.)
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { atExit } from './exit.js';
import { BIN, Proc, pidAlive, type RunOptions, type RunResult, requireBins, run, runOk } from './proc.js';

export type Side = 'client' | 'server';

export interface Host {
  /** Network namespace name, e.g. "sw-3fa9c1-c"; /run/netns/<ns>. */
  ns: string;
  /** The veth end inside this namespace (same name as the namespace; ≤ 15 chars). */
  ifname: string;
  ipv4: string;
  ipv6: string;
}

export interface ExecOptions extends RunOptions {
  /** Run as this OS user (setpriv, after entering the namespace). */
  user?: string;
  /** Put the process into this cgroup (a directory of a cgroup2 mount) before it execs. */
  cgroup?: string;
}

export interface SpawnOptions {
  user?: string;
  cgroup?: string;
  env?: NodeJS.ProcessEnv;
  /** Default: <testbed dir>/logs/<name>.log */
  logFile?: string;
  /** Signal for a graceful stop (default SIGTERM). */
  stopSignal?: NodeJS.Signals;
}

/** Where each test bed records its owner pid and what it created, for sweepStale(). */
const REGISTRY_DIR = '/run/sslwall-test';
const PREFIX = 'sw-';

interface OwnerRecord {
  id: string;
  pid: number;
  startTime: string;
  label: string;
  namespaces: string[];
  mounts: string[];
  cgroupPrefix: string;
  dir: string;
}

const live = new Set<Testbed>();
const usedSubnets = new Set<number>();

export class Testbed {
  readonly id: string;
  /** Every namespace, veth and cgroup of this bed starts with this, e.g. "sw-3fa9c1-". */
  readonly prefix: string;
  readonly subnet: number;
  readonly client: Host;
  readonly server: Host;
  /** Temp dir for configs, logs and data; removed by destroy(). */
  readonly dir: string;

  private readonly procs: Proc[] = [];
  private readonly mounts: { dir: string; kind: 'bpf' | 'cgroup2' }[] = [];
  private readonly hooks: (() => void | Promise<void>)[] = [];
  private readonly inodes = new Map<string, number>();
  private readonly extraNs: string[] = [];
  private destroyed = false;

  /** Use createTestbed(). */
  constructor(readonly label: string) {
    this.id = crypto.randomBytes(3).toString('hex');
    this.prefix = `${PREFIX}${this.id}-`;
    this.subnet = pickSubnet();
    const host = (suffix: string, last: number): Host => ({
      ns: `${this.prefix}${suffix}`,
      ifname: `${this.prefix}${suffix}`,
      ipv4: `10.201.${this.subnet}.${last}`,
      ipv6: `fd00:5157:${this.subnet}::${last}`,
    });
    this.client = host('c', 1);
    this.server = host('s', 2);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}${label.replace(/[^\w.-]/g, '_')}-`));
    // Servers that drop privileges (postgres, squid) must be able to reach their subdirs.
    fs.chmodSync(this.dir, 0o755);
  }

  host(side: Side): Host {
    return side === 'client' ? this.client : this.server;
  }

  /** Namespace names of both hosts, and of any a test added (addNamespace). */
  get namespaces(): string[] {
    return [this.client.ns, this.server.ns, ...this.extraNs];
  }

  /**
   * One more namespace of this bed (its name: prefix + suffix), with lo up and nothing else: the
   * test wires it. Recorded like the hosts' own, so destroy() and sweepStale() remove it.
   */
  async addNamespace(suffix: string): Promise<string> {
    this.assertAlive();
    const ns = `${this.prefix}${suffix}`;
    this.extraNs.push(ns);
    this.register();
    await runOk(BIN.ip, ['netns', 'add', ns]);
    this.inodes.set(ns, fs.statSync(`/run/netns/${ns}`).ino);
    await runOk(BIN.ip, ['-n', ns, 'link', 'set', 'lo', 'up']);
    return ns;
  }

  /** A fresh subdirectory of the bed's temp dir (mode 0755). */
  tempDir(name: string): string {
    const d = fs.mkdtempSync(path.join(this.dir, `${name}-`));
    fs.chmodSync(d, 0o755);
    return d;
  }

  /**
   * Argument vector that runs cmd inside a namespace. nsenter --net and not `ip netns exec`:
   * the latter also unshares the mount namespace (and remounts /sys), so bpffs pins and cgroup2
   * mounts made by the process would not be the host's.
   */
  wrap(side: Side | string, cmd: string, args: string[], opts: { user?: string; cgroup?: string } = {}): [string, string[]] {
    const ns = this.resolveNs(side);
    let argv = [cmd, ...args];
    if (opts.user) argv = [BIN.setpriv, `--reuid=${opts.user}`, `--regid=${opts.user}`, '--init-groups', '--', ...argv];
    if (opts.cgroup) {
      // Join the cgroup first (needs root), then exec — so the very first connect() is hooked.
      argv = ['/bin/sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', opts.cgroup, ...argv];
    }
    return [BIN.nsenter, [`--net=/run/netns/${ns}`, '--', ...argv]];
  }

  /** Run a command to completion inside a namespace; never throws for a non-zero exit. */
  exec(side: Side | string, cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<RunResult> {
    const [c, a] = this.wrap(side, cmd, args, opts);
    return run(c, a, opts);
  }

  /** exec() that throws with stderr unless the command exits 0. */
  execOk(side: Side | string, cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<RunResult> {
    const [c, a] = this.wrap(side, cmd, args, opts);
    return runOk(c, a, opts);
  }

  /** Start a long-running process inside a namespace; it is stopped by destroy() if still running. */
  spawn(side: Side | string, name: string, cmd: string, args: string[] = [], opts: SpawnOptions = {}): Proc {
    this.assertAlive();
    const [c, a] = this.wrap(side, cmd, args, opts);
    const log = opts.logFile ?? path.join(this.dir, 'logs', `${name}.log`);
    const p = Proc.start(name, c, a, log, { env: opts.env, stopSignal: opts.stopSignal });
    this.procs.push(p);
    return p;
  }

  /** Processes started by spawn() (running or not). */
  get processes(): readonly Proc[] {
    return this.procs;
  }

  /** Run fn on destroy(), before processes are stopped (latest registered runs first). */
  onDestroy(fn: () => void | Promise<void>): void {
    this.hooks.push(fn);
  }

  /** A temp dir with a bpffs of its own mounted; its pins vanish when destroy() unmounts it. */
  async mountBpffs(): Promise<string> {
    this.assertAlive();
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}bpffs-`));
    this.mounts.push({ dir: d, kind: 'bpf' });
    this.register();
    await runOk(BIN.mount, ['-t', 'bpf', 'bpf', d]);
    return d;
  }

  /**
   * A temp dir with the cgroup2 hierarchy mounted. It is the machine's one unified hierarchy
   * (every mount shows the same tree),
   * so create cgroups with cgroup() (named with this bed's prefix): destroy() removes those and
   * only those — another test process may be using the same hierarchy at the same time.
   */
  async mountCgroup2(): Promise<string> {
    this.assertAlive();
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `${this.prefix}cgroup2-`));
    this.mounts.push({ dir: d, kind: 'cgroup2' });
    this.register();
    await runOk(BIN.mount, ['-t', 'cgroup2', 'none', d]);
    return d;
  }

  /** Create (mkdir) a cgroup "<prefix><name>" under `parent` (a cgroup2 mount or a cgroup in it). */
  cgroup(parent: string, name: string): string {
    const d = path.join(parent, `${this.prefix}${name}`);
    fs.mkdirSync(d);
    return d;
  }

  /** Inode of each namespace (to find surviving processes after the names are gone). */
  netnsInodes(): Map<string, number> {
    return new Map(this.inodes);
  }

  /** Create namespaces, veth, addresses. Use createTestbed(). */
  async setUp(): Promise<void> {
    live.add(this);
    installExitHandlers();
    this.register();
    const { client: c, server: s } = this;
    for (const h of [c, s]) {
      await runOk(BIN.ip, ['netns', 'add', h.ns]);
      this.inodes.set(h.ns, fs.statSync(`/run/netns/${h.ns}`).ino);
    }
    // Create both veth ends directly inside their namespaces: nothing appears on the host.
    await runOk(BIN.ip, ['link', 'add', c.ifname, 'netns', c.ns, 'type', 'veth', 'peer', 'name', s.ifname, 'netns', s.ns]);
    for (const h of [c, s]) {
      const ipn = (...a: string[]) => runOk(BIN.ip, ['-n', h.ns, ...a]);
      await ipn('link', 'set', 'lo', 'up');
      await ipn('addr', 'add', `${h.ipv4}/24`, 'dev', h.ifname);
      // nodad: the address is usable at once instead of "tentative" for a second or two.
      await ipn('-6', 'addr', 'add', `${h.ipv6}/64`, 'dev', h.ifname, 'nodad');
      await ipn('link', 'set', h.ifname, 'up');
      // TCP Fast Open is per namespace: 3 = client and server side, so TFO tests need no setup.
      await this.execOk(h.ns, '/usr/sbin/sysctl', ['-q', '-w', 'net.ipv4.tcp_fastopen=3']);
    }
  }

  /**
   * Stop everything and remove every namespace, mount, cgroup and file of this bed. Idempotent;
   * collects errors and throws them together at the end, after cleaning up all it could.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    const errors: string[] = [];
    for (const fn of this.hooks.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        errors.push(`onDestroy hook: ${(e as Error).message}`);
      }
    }
    await Promise.all(this.procs.map((p) => p.stop().catch((e: Error) => errors.push(`stop ${p.name}: ${e.message}`))));
    errors.push(...this.cleanupSync());
    live.delete(this);
    if (errors.length) throw new Error(`testbed ${this.prefix} cleanup problems:\n${errors.join('\n')}`);
  }

  /**
   * The synchronous part of cleanup, also used from the process 'exit' handler (where nothing
   * asynchronous runs any more). Returns the problems it met instead of throwing.
   */
  cleanupSync(): string[] {
    this.destroyed = true;
    const errors: string[] = [];
    const attempt = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message}`);
      }
    };
    for (const p of this.procs) p.killNow();
    // Whatever still runs in our namespaces was started there by a test (a forked child, a
    // daemonised server): deleting a namespace's name does not stop its processes.
    for (const ns of this.namespaces) attempt(`kill processes in ${ns}`, () => killNamespacePids(ns));
    // bpffs first: unmounting drops the pins (and pinned links) that hold our cgroups; then
    // our cgroups, then the cgroup2 views.
    const bpf = this.mounts.filter((m) => m.kind === 'bpf');
    const cg2 = this.mounts.filter((m) => m.kind === 'cgroup2');
    for (const m of bpf) attempt(`unmount ${m.dir}`, () => unmountAndRemove(m.dir));
    if (cg2[0]) attempt(`remove cgroups under ${cg2[0].dir}`, () => removeCgroups(cg2[0].dir, this.prefix));
    for (const m of cg2) attempt(`unmount ${m.dir}`, () => unmountAndRemove(m.dir));
    this.mounts.length = 0;
    for (const ns of this.namespaces) attempt(`delete netns ${ns}`, () => deleteNamespace(ns));
    usedSubnets.delete(this.subnet);
    attempt(`remove ${this.dir}`, () => fs.rmSync(this.dir, { recursive: true, force: true }));
    attempt('remove owner record', () => fs.rmSync(ownerFile(this.id), { force: true }));
    live.delete(this);
    return errors;
  }

  private resolveNs(side: Side | string): string {
    if (side === 'client') return this.client.ns;
    if (side === 'server') return this.server.ns;
    return side;
  }

  private assertAlive(): void {
    if (this.destroyed) throw new Error(`testbed ${this.prefix} is already destroyed`);
  }

  /** Write the owner record sweepStale() reads; rewritten whenever something is added. */
  private register(): void {
    fs.mkdirSync(REGISTRY_DIR, { recursive: true });
    const rec: OwnerRecord = {
      id: this.id,
      pid: process.pid,
      startTime: procStartTime(process.pid),
      label: this.label,
      namespaces: this.namespaces,
      mounts: this.mounts.map((m) => m.dir),
      cgroupPrefix: this.prefix,
      dir: this.dir,
    };
    fs.writeFileSync(ownerFile(this.id), JSON.stringify(rec));
  }
}

/** Create a client/server namespace pair joined by veth; see Testbed. `label` names the temp dir. */
export async function createTestbed(label = 'test'): Promise<Testbed> {
  requireBins(['ip', 'nsenter', 'setpriv', 'mount']);
  if (process.getuid?.() !== 0) throw new Error('the integration harness needs root (network namespaces, mounts)');
  const tb = new Testbed(label);
  try {
    await tb.setUp();
  } catch (e) {
    await tb.destroy().catch(() => {});
    throw e;
  }
  return tb;
}

/**
 * Remove namespaces named "sw-*" (and the mounts, cgroups and temp dirs recorded with them) left
 * by runs that died without cleaning up. Beds whose owner process is still alive are left alone,
 * so it is safe while other test processes run. Returns the namespaces it removed.
 */
export function sweepStale(): string[] {
  const removed: string[] = [];
  const owned = new Set<string>();
  for (const rec of readOwnerRecords()) {
    if (pidAlive(rec.pid) && procStartTime(rec.pid) === rec.startTime) {
      for (const n of rec.namespaces) owned.add(n);
      continue;
    }
    for (const m of rec.mounts) {
      if (mountType(m) === 'cgroup2') tryQuietly(() => removeCgroups(m, rec.cgroupPrefix));
      tryQuietly(() => unmountAndRemove(m));
    }
    tryQuietly(() => fs.rmSync(rec.dir, { recursive: true, force: true }));
    for (const ns of rec.namespaces) {
      if (fs.existsSync(`/run/netns/${ns}`)) {
        tryQuietly(() => killNamespacePids(ns));
        tryQuietly(() => deleteNamespace(ns));
        removed.push(ns);
      }
    }
    tryQuietly(() => fs.rmSync(ownerFile(rec.id), { force: true }));
  }
  // Namespaces with no record at all (made by hand, or a record already lost) are stale too.
  for (const ns of listNamespaces()) {
    if (!ns.startsWith(PREFIX) || owned.has(ns) || removed.includes(ns)) continue;
    tryQuietly(() => killNamespacePids(ns));
    tryQuietly(() => deleteNamespace(ns));
    removed.push(ns);
  }
  return removed;
}

/** Names in /run/netns (what `ip netns list` shows). */
export function listNamespaces(): string[] {
  try {
    return fs.readdirSync('/run/netns');
  } catch {
    return [];
  }
}

/** Pids whose network namespace has the given inode (works after the namespace's name is gone). */
export function pidsInNetns(inode: number): number[] {
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.statSync(`/proc/${e}/ns/net`).ino === inode && pidAlive(Number(e))) pids.push(Number(e));
    } catch {
      /* exited meanwhile, or a kernel thread */
    }
  }
  return pids;
}

function killNamespacePids(ns: string): void {
  if (!fs.existsSync(`/run/netns/${ns}`)) return;
  const out = execFileSync(BIN.ip, ['netns', 'pids', ns], { encoding: 'utf8' });
  for (const pid of out.split(/\s+/).filter(Boolean).map(Number)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function deleteNamespace(ns: string): void {
  if (!fs.existsSync(`/run/netns/${ns}`)) return;
  execFileSync(BIN.ip, ['netns', 'del', ns], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Remove the cgroups named with `prefix` anywhere under a cgroup2 mount, deepest first. Their
 * processes are moved to the root cgroup first (rmdir of a populated cgroup fails with EBUSY);
 * moving, not killing, because a test may have put the test runner itself there.
 */
function removeCgroups(mount: string, prefix: string): void {
  const ours: string[] = [];
  const walk = (d: string, inside: boolean) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const p = path.join(d, e.name);
      const mine = inside || e.name.startsWith(prefix);
      if (mine) ours.push(p);
      walk(p, mine);
    }
  };
  walk(mount, false);
  ours.sort((a, b) => b.split('/').length - a.split('/').length);
  for (const cg of ours) {
    for (let attempt = 0; ; attempt++) {
      for (const pid of fs.readFileSync(path.join(cg, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        tryQuietly(() => fs.writeFileSync(path.join(mount, 'cgroup.procs'), pid));
      }
      try {
        fs.rmdirSync(cg);
        break;
      } catch (e) {
        // A process that just exited can keep the cgroup busy for a moment.
        if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || attempt >= 50) throw e;
        sleepSync(20);
      }
    }
  }
}

function unmountAndRemove(dir: string): void {
  if (mountType(dir)) execFileSync(BIN.umount, [dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    fs.rmdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Filesystem type mounted at dir ('bpf', 'cgroup2', ...), or undefined if none. */
function mountType(dir: string): string | undefined {
  for (const l of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, where, type] = l.split(' ');
    if (where === dir) return type;
  }
  return undefined;
}

function pickSubnet(): number {
  for (;;) {
    const x = 1 + crypto.randomInt(254);
    if (!usedSubnets.has(x)) {
      usedSubnets.add(x);
      return x;
    }
  }
}

function ownerFile(id: string): string {
  return path.join(REGISTRY_DIR, `${id}.json`);
}

function readOwnerRecords(): OwnerRecord[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(REGISTRY_DIR).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  const recs: OwnerRecord[] = [];
  for (const n of names) {
    try {
      recs.push(JSON.parse(fs.readFileSync(path.join(REGISTRY_DIR, n), 'utf8')) as OwnerRecord);
    } catch {
      /* half-written or foreign file: skip */
    }
  }
  return recs;
}

/** Field 22 of /proc/PID/stat: distinguishes a live owner from a recycled pid. */
function procStartTime(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

function tryQuietly(fn: () => void): void {
  try {
    fn();
  } catch {
    /* best effort: sweeping must go on */
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

let exitHandlerInstalled = false;

/** Clean up live beds when the process ends without destroy(): a crash, Ctrl-C, a kill. */
function installExitHandlers(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  atExit(() => {
    for (const tb of [...live]) {
      const errs = tb.cleanupSync();
      if (errs.length) process.stderr.write(`sslwall lab: cleanup of ${tb.prefix}: ${errs.join('; ')}\n`);
    }
  });
}
