// An `sslwall agent` running inside a test namespace, as a user would run it: the real command,
// its JSON log lines read back from its log file.
import fs from 'node:fs';
import path from 'node:path';
import { currentMode, type MapHandles } from '../../agent/apply.js';
import { closeMaps, expectedMaps } from '../../agent/datapath.js';
import { pinLayout, repoRoot } from '../../agent/paths.js';
import { native } from '../../native/index.js';
import type { Side, Testbed } from './netns.js';
import type { Proc } from './proc.js';
import { type RunResult, run } from './proc.js';

export const SSLWALL = path.join(repoRoot, 'bin/sslwall.js');
/** The agent's process environment as shipped: the systemd unit's EnvironmentFile. */
export const AGENT_ENV_FILE = path.join(repoRoot, 'bin/sslwall-agent.env');

/** AGENT_ENV_FILE's variables (systemd EnvironmentFile lines: KEY=VALUE, a value optionally in double quotes, # comments). */
export function shippedAgentEnv(file = AGENT_ENV_FILE): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  return env;
}

export interface LogLine {
  event?: string;
  level?: number;
  [k: string]: unknown;
}

export interface AgentEnv {
  tb: Testbed;
  side: Side;
  bpffs: string;
  cgroup: string;
  stateDir: string;
  configFile: string;
}

/** Folders an agent needs in a bed: its own bpffs and cgroup (removed by tb.destroy()). */
export async function agentEnv(tb: Testbed, side: Side, cgroup2: string): Promise<AgentEnv> {
  const dir = tb.tempDir(`agent-${side}`);
  return {
    tb,
    side,
    bpffs: await tb.mountBpffs(),
    cgroup: tb.cgroup(cgroup2, `agent-${side}`),
    stateDir: path.join(dir, 'state'),
    configFile: path.join(dir, 'config.json'),
  };
}

export function writeConfig(env: AgentEnv, doc: unknown): void {
  // Write + rename, as an editor or config manager would: the agent never reads a half file.
  const tmp = `${env.configFile}.tmp`;
  fs.writeFileSync(tmp, typeof doc === 'string' ? doc : JSON.stringify(doc));
  fs.renameSync(tmp, env.configFile);
}

let seq = 0;

export class AgentProc {
  private constructor(
    readonly env: AgentEnv,
    readonly proc: Proc,
  ) {}

  static async start(env: AgentEnv, extraArgs: string[] = [], procEnv?: NodeJS.ProcessEnv): Promise<AgentProc> {
    const args = [
      SSLWALL,
      'agent',
      ...(env.configFile ? ['--config-file', env.configFile] : []),
      '--iface',
      env.tb.host(env.side).ifname,
      '--bpffs',
      env.bpffs,
      '--cgroup',
      env.cgroup,
      '--state-dir',
      env.stateDir,
      ...extraArgs,
    ];
    // As the unit runs it (node flags, malloc tuning), unless the caller says otherwise.
    const proc = env.tb.spawn(env.side, `agent-${env.side}-${seq++}`, process.execPath, args, { env: { ...process.env, ...shippedAgentEnv(), ...procEnv } });
    const agent = new AgentProc(env, proc);
    await agent.waitFor((l) => l.event === 'agent_ready', 15000, 'agent_ready');
    return agent;
  }

  lines(): LogLine[] {
    if (!fs.existsSync(this.proc.logFile)) return [];
    return fs
      .readFileSync(this.proc.logFile, 'utf8')
      .split('\n')
      .flatMap((l) => {
        try {
          return l.startsWith('{') ? [JSON.parse(l) as LogLine] : [];
        } catch {
          return [];
        }
      });
  }

  violations(): LogLine[] {
    return this.lines().filter((l) => l.event === 'violation');
  }

  async waitFor(pred: (l: LogLine) => boolean, timeoutMs = 5000, what = 'a log line'): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines().find(pred);
      if (hit) return hit;
      if (Date.now() > deadline) {
        const text = fs.existsSync(this.proc.logFile) ? fs.readFileSync(this.proc.logFile, 'utf8').split('\n').slice(-25).join('\n') : '(no log)';
        throw new Error(`agent: expected ${what} within ${timeoutMs} ms; log tail:\n${text}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  hup(): void {
    process.kill(this.proc.pid, 'SIGHUP');
  }

  async stop(): Promise<void> {
    await this.proc.stop('SIGTERM', 5000);
  }

  /** SIGKILL, and wait until it is gone (the child is unref'd: poll, do not await its promise). */
  async kill9(): Promise<void> {
    this.proc.killNow();
    const deadline = Date.now() + 5000;
    while (this.proc.running && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }
}

/** The mode the kernel has in force, read from the maps an agent pinned under bpffs. */
export function kernelMode(bpffs: string): string {
  const pins = pinLayout(bpffs);
  const maps = Object.fromEntries(Object.keys(expectedMaps()).map((m) => [m, native().getPinned(pins.map(m), 'map')])) as MapHandles;
  try {
    return currentMode(maps);
  } finally {
    closeMaps(maps);
  }
}

/** Run an sslwall subcommand inside the agent's namespace. */
export function sslwall(env: AgentEnv, args: string[]): Promise<RunResult> {
  return env.tb.exec(env.side, process.execPath, [SSLWALL, ...args]);
}

export function runHost(args: string[]): Promise<RunResult> {
  return run(process.execPath, [SSLWALL, ...args]);
}
