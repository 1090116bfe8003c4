// Process helpers for the integration harness: run a command to completion, run a long-lived one
// with its output in a log file, stop it (its whole process group) and wait for it, poll for a
// condition. Namespace-aware wrappers live in netns.ts; this file knows nothing about namespaces.
import { type ChildProcess, spawn as nodeSpawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

export interface RunOptions {
  input?: string | Buffer;
  /** Kill (SIGKILL) after this long; the result then has signal 'SIGKILL'. Default 60 s. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Run a command to completion. Never throws for a non-zero exit: the caller decides. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = nodeSpawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: 'pipe' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        ms: performance.now() - start,
      });
    });
    // A child that exits before reading its stdin makes the write fail with EPIPE; that is the
    // child's business and shows in its exit code, not an error of ours.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** Like run(), but throws (with the command, exit status and stderr) unless it exits 0. */
export async function runOk(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `command failed (exit ${r.code ?? r.signal}): ${[cmd, ...args].join(' ')}\n` + `stderr: ${r.stderr.trim()}\nstdout: ${r.stdout.trim().slice(-2000)}`,
    );
  }
  return r;
}

/** Last `lines` lines of a file, or a note that it is missing (used in timeout messages). */
export function tail(file: string, lines = 30): string {
  try {
    return fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .slice(-lines - 1)
      .join('\n');
  } catch {
    return `(no ${file})`;
  }
}

/**
 * A long-running process with stdout+stderr appended to a log file. It is started in its own
 * process group so stop() also reaches the children it forks (nginx workers, postgres
 * backends, socat's per-connection forks).
 */
export class Proc {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitCode: number | null = null;
  exitSignal: NodeJS.Signals | null = null;
  private done = false;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
    /** The signal that asks this program for a graceful shutdown (postgres: SIGINT = fast). */
    readonly stopSignal: NodeJS.Signals,
  ) {
    this.exited = new Promise((resolve) => {
      const settle = (code: number | null, signal: NodeJS.Signals | null) => {
        this.done = true;
        this.exitCode = code;
        this.exitSignal = signal;
        resolve({ code, signal });
      };
      child.on('exit', settle);
      child.on('error', (e) => {
        fs.appendFileSync(logFile, `\nspawn error: ${e.message}\n`);
        settle(null, null);
      });
    });
  }

  static start(name: string, cmd: string, args: string[], logFile: string, opts: { env?: NodeJS.ProcessEnv; stopSignal?: NodeJS.Signals } = {}): Proc {
    fs.mkdirSync(path.dirname(logFile), { recursive: true });
    const fd = fs.openSync(logFile, 'a');
    try {
      // detached: a process group of its own, so stop() reaches the children it forks.
      const child = nodeSpawn(cmd, args, { stdio: ['ignore', fd, fd], detached: true, env: opts.env ?? process.env });
      // Servers must not keep a finished test process alive; destroy() stops them.
      child.unref();
      return new Proc(name, child, logFile, opts.stopSignal ?? 'SIGTERM');
    } finally {
      fs.closeSync(fd);
    }
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return !this.done && this.child.pid !== undefined;
  }

  /**
   * Graceful stop through the leader (a server shuts down its own workers), SIGKILL to the whole
   * group after graceMs, and SIGKILL to whatever is left in the group once the leader is gone
   * (socat's per-connection forks, a worker that ignored the signal).
   */
  async stop(signal: NodeJS.Signals = this.stopSignal, graceMs = 3000): Promise<void> {
    if (this.running) {
      try {
        process.kill(this.pid, signal);
      } catch {
        /* exited meanwhile */
      }
      const timer = setTimeout(() => signalGroup(this.pid, 'SIGKILL'), graceMs);
      // Poll rather than await the exit promise alone: the child is unref'd, so once the timer
      // has fired nothing else would keep the event loop alive until it is reaped.
      while (this.running) await Promise.race([this.exited, new Promise((r) => setTimeout(r, 50))]);
      clearTimeout(timer);
    }
    signalGroup(this.pid, 'SIGKILL');
  }

  /** Synchronous last-resort kill, for the process 'exit' handler. */
  killNow(): void {
    if (this.child.pid !== undefined) signalGroup(this.child.pid, 'SIGKILL');
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(-pid, sig);
  } catch {
    /* the group is empty */
  }
}

/** True while a pid exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state letter follows the parenthesised command name, which may itself contain spaces.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Poll `check` every `intervalMs` until it returns true; on timeout throw an error whose message
 * is `what` plus whatever `explain()` returns (typically the tail of the server's log).
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean> | boolean,
  opts: { timeoutMs?: number; intervalMs?: number; explain?: () => string; abortIf?: () => string | undefined } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  for (;;) {
    if (await check()) return;
    // A server that already died will never become ready: say so at once instead of waiting.
    const abort = opts.abortIf?.();
    if (abort) throw new Error(`${what}: ${abort}\n${opts.explain?.() ?? ''}`);
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${opts.timeoutMs ?? 15_000} ms waiting for ${what}\n${opts.explain?.() ?? ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/**
 * Poll `fn` until it returns a truthy value, and return it; a throw counts as "not yet", and on
 * timeout the error names the last one.
 */
export async function waitForValue<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 30_000): Promise<T> {
  let value: T | undefined;
  let last: unknown;
  await waitFor(
    what,
    async () => {
      try {
        const v = await fn();
        if (v) value = v;
        return Boolean(v);
      } catch (err) {
        last = err;
        return false;
      }
    },
    { timeoutMs, explain: () => (last ? `(last error: ${String(last)})` : '') },
  );
  return value as T;
}

/** Where each prerequisite comes from, so a missing one fails with the package to install. */
export { BIN } from './prerequisites.js';

import { BIN, MODULES, moduleLoads, PROGRAMS } from './prerequisites.js';

export type BinName = keyof typeof BIN;

/**
 * Throw one error listing every missing prerequisite with its Debian package, so a test fails
 * loudly with the fix instead of skipping.
 */
export function requireBins(names: BinName[]): void {
  const missing = names.filter((n) => !isExecutable(BIN[n]));
  if (missing.length) {
    const pkgs = [...new Set(missing.map((n) => PROGRAMS[n].package))];
    throw new Error(`missing prerequisites: ${missing.map((n) => BIN[n]).join(', ')} — install Debian package(s): ${pkgs.join(' ')}`);
  }
}

/** A script-language module from Debian's packages (prerequisites.ts MODULES), checked by loading it. */
export function requireModule(lang: 'python3' | 'perl', module: (typeof MODULES)[number]['module']): void {
  requireBins([lang]);
  const m = MODULES.find((x) => x.lang === lang && x.module === module)!;
  if (!moduleLoads(lang, module)) throw new Error(`missing ${lang} module ${module} (${m.for}) — install Debian package: ${m.package}`);
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Path of a file in tools/lab/fixtures. Tests run from dist/, where tsc copies no fixtures, so
 * look beside this module first and then in the source tree.
 */
export function fixture(name: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'fixtures', name), path.resolve(here, '../../../tools/lab/fixtures', name)];
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) throw new Error(`fixture ${name} not found; looked in ${candidates.join(', ')}`);
  return found;
}
