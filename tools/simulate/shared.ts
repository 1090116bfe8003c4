// What the simulator's parent and its worker processes share: the options, the IPC messages,
// host ids, and which hosts are picked to fail or to die (deterministic, so a test or an
// engine can tell which hosts to expect in trouble).
import { createHash } from 'node:crypto';
import type { EtcdConnection } from '../../schemas/etcd.js';

export interface SimOptions {
  conn: EtcdConnection;
  tier: string;
  agents: number;
  /** Share of agents (0-100) whose kernel apply fails (SSLWALL_E_BPF). */
  errorPercent: number;
  /** Failing agents fail only for tier versions >= this one (0: every version). */
  errorFromVersion: number;
  /** Share of agents (0-100) that die after dieAfterS seconds (lease left to expire). */
  diePercent: number;
  dieAfterS: number;
  processes: number;
  /** --verify-key files and folders; empty: unsigned documents accepted (--insecure-unsigned). */
  verifyKeys: string[];
  prefix: string;
  hostPrefix: string;
  statsIntervalMs: number;
  /** Unary etcd calls (lease grants, reads, health puts, revokes) in flight per process. */
  concurrency: number;
  /** Minimum time between two health writes of one agent. */
  healthMinIntervalMs: number;
  /** The agent's --health-spread: the most a health write waits after its reason; undefined: the agent's default. */
  healthSpreadMs?: number;
  /**
   * No agents: `agents` bare watchers of the tier key on the same watch streams, doing nothing with
   * what arrives but note when (etcd's fan-out on its own; versions are keyed by mod revision).
   */
  bareWatch: boolean;
}

/** Parent -> worker. */
export type ToWorker = { type: 'init'; opts: SimOptions; first: number; count: number; startedAt: number } | { type: 'stats'; seq: number } | { type: 'stop' };

export interface VersionStats {
  /** Epoch ms when an agent of this worker first parsed a valid document with this version. */
  firstSeen: number;
  /** Epoch ms of the latest apply of this version by an agent of this worker. */
  lastApplied: number | null;
  /** Epoch ms when the latest health write reporting this version completed. */
  lastReported: number | null;
}

/**
 * The fleet's counts: what each worker reports of its agents, and what the parent's stats line
 * sums (one type; tools/lab and tools/bench read the same).
 */
export interface FleetCounts {
  agents: number;
  started: number;
  alive: number;
  connected: number;
  /** Alive agents per configVersion in force ("none": nothing applied yet). */
  applied: Record<string, number>;
  /** Alive agents reporting a lastError. */
  errors: number;
  errorCodes: Record<string, number>;
  relists: number;
  reconnects: number;
  leaseRegrants: number;
  healthWrites: number;
  healthWriteErrors: number;
  /** CPU time (user + system) the worker processes used since they started, ms. */
  cpuMs: number;
}

/** A worker's counts and when its agents saw, applied and reported each version. */
export interface WorkerStats extends FleetCounts {
  versions: Record<string, VersionStats>;
}

/** One line of `sslwall simulate`'s stdout: the workers' counts summed, and propagation times. */
export interface StatsLine extends FleetCounts {
  /** ms since the simulator's launch. */
  t: number;
  workers: number;
  /** From first sight of a version to its last apply. */
  lastChangeAppliedMs: Record<string, number>;
  /** From first sight of a version to the last health write reporting it. */
  lastChangeReportedMs: Record<string, number>;
}

/** Worker -> parent. */
export type FromWorker =
  | { type: 'ready' }
  | { type: 'started'; count: number; ms: number }
  | { type: 'stats'; seq: number; stats: WorkerStats }
  | { type: 'stopped'; revoked: number }
  | { type: 'fatal'; message: string };

export function hostId(prefix: string, i: number): string {
  return `${prefix}${String(i).padStart(5, '0')}`;
}

/**
 * Whether a host is picked for a simulated fault: SHA-256("sslwall-simulate/" + kind + "\n" +
 * hostId), first 4 bytes big-endian, mod 10000, below round(percent * 100). Independent of the
 * rollout cohort (another hash input) and of the other kind.
 */
export function simPicked(kind: 'error' | 'die', host: string, percent: number): boolean {
  if (percent <= 0) return false;
  const b = createHash('sha256').update(`sslwall-simulate/${kind}\n${host}`).digest().readUInt32BE(0) % 10000;
  return b < Math.round(percent * 100);
}

/** Contiguous slices of [0, n) for p processes, as even as possible. */
export function slices(n: number, p: number): Array<{ first: number; count: number }> {
  const out: Array<{ first: number; count: number }> = [];
  let first = 0;
  for (let i = 0; i < p; i++) {
    const count = Math.floor(n / p) + (i < n % p ? 1 : 0);
    if (count > 0) out.push({ first, count });
    first += count;
  }
  return out;
}
