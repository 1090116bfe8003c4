// The bypass cgroup: processes started by `sslwall exec` live in <cgroup2>/sslwall-bypass and
// the filter lets their sockets through (bpf_skb_ancestor_cgroup_id against its id).
import { existsSync, mkdirSync, readFileSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SslwallError } from '../schemas/errors.js';
import type { BypassCgroup } from './apply.js';

const CGROUP2_SUPER_MAGIC = 0x63677270;
export const BYPASS_CGROUP_NAME = 'sslwall-bypass';

/** The first cgroup2 mount of this process's mount namespace. */
export function defaultCgroup2Root(): string | null {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (post?.startsWith('cgroup2 ')) return pre!.split(' ')[4]!;
  }
  return null;
}

function resolveRoot(dir: string | undefined): string {
  const root = dir ?? defaultCgroup2Root();
  if (!root) {
    throw new SslwallError(
      'SSLWALL_E_CGROUP',
      'no cgroup v2 hierarchy is mounted; mount one (mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup DIR',
    );
  }
  let type: number;
  try {
    type = statfsSync(root).type;
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CGROUP', `--cgroup ${root} does not exist; pass a cgroup v2 folder`, { cause: err });
  }
  if (type !== CGROUP2_SUPER_MAGIC) {
    throw new SslwallError('SSLWALL_E_CGROUP', `${root} is not a cgroup v2 folder; mount one there with: mount -t cgroup2 none ${root}`);
  }
  return root;
}

/** Depth of a cgroup folder below the hierarchy root, which is what bpf_skb_ancestor_cgroup_id counts. */
function cgroupLevel(dir: string): number {
  // A folder inside a cgroup2 mount is a cgroup; walk up while the parent is on the same cgroup2 fs
  // and is not the mount's own root, which has a cgroup.procs but no cgroup.type.
  let level = 0;
  let cur = path.resolve(dir);
  while (existsSync(path.join(cur, 'cgroup.type'))) {
    level++;
    cur = path.dirname(cur);
  }
  return level;
}

export function ensureBypassCgroup(dir: string | undefined): BypassCgroup & { path: string } {
  const root = resolveRoot(dir);
  const p = path.join(root, BYPASS_CGROUP_NAME);
  mkdirSync(p, { recursive: true });
  // On cgroup2 the folder's inode number is the cgroup id the kernel reports.
  return { path: p, id: BigInt(statSync(p, { bigint: true }).ino), level: cgroupLevel(p) };
}

/** Move a process into the bypass cgroup (its children inherit it). */
export function joinBypassCgroup(dir: string | undefined, pid: number): string {
  const cg = ensureBypassCgroup(dir);
  try {
    writeFileSync(path.join(cg.path, 'cgroup.procs'), String(pid));
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CGROUP', `cannot move process ${pid} into ${cg.path}: ${(err as Error).message}; run as root`, { cause: err });
  }
  return cg.path;
}
