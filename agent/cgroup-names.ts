// Which service a cgroup id names. The kernel reports the cgroup v2 id of a violation's local
// socket (bpf_skb_cgroup_id); on cgroup v2 that id is the inode number of the cgroup's folder, so
// the path is found by walking the cgroup2 mount. The walk is what costs (a stat per cgroup), so
// its results are cached and a miss walks again at most once per minWalkIntervalMs: a burst of
// violations from a cgroup created a moment ago costs one walk, and one from a cgroup already
// gone (a transient unit that exited) costs nothing more than the rate allows.
import { type Dirent, readdirSync, statfsSync, statSync } from 'node:fs';
import path from 'node:path';
import { defaultCgroup2Root } from './cgroup.js';

const CGROUP2_SUPER_MAGIC = 0x63677270;

export interface CgroupName {
  /** Below the hierarchy's root: "/system.slice/legacy-app.service" ("/" for the root). */
  path: string;
  unit: string | null;
  container: string | null;
}

export interface CgroupNamesOptions {
  /** Cached ids at most; a walk keeps the first ones it finds (and always the one asked for). */
  maxEntries: number;
  minWalkIntervalMs: number;
  /** Folders one walk visits at most (a host with more cgroups resolves fewer of them). */
  maxWalk: number;
}

export const DEFAULT_CGROUP_NAMES: CgroupNamesOptions = { maxEntries: 10_000, minWalkIntervalMs: 1000, maxWalk: 100_000 };

/** The systemd unit a cgroup path is in: its last .service or .scope component, else a .slice leaf. */
export function unitOf(cgroupPath: string): string | null {
  const parts = cgroupPath.split('/').filter(Boolean);
  for (let i = parts.length - 1; i >= 0; i--) if (/\.(service|scope)$/.test(parts[i]!)) return parts[i]!;
  const leaf = parts.at(-1);
  return leaf?.endsWith('.slice') ? leaf : null;
}

// systemd-driver runtimes name a container's scope after it; crio-conmon-<id>.scope is the
// monitor, not the container, and does not match (its id follows "conmon-").
const SCOPE_CONTAINER = /^(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{12,64})\.scope$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** The container id, when the path is a container's cgroup (or a cgroup inside one). */
export function containerOf(cgroupPath: string): string | null {
  const parts = cgroupPath.split('/').filter(Boolean);
  for (let i = parts.length - 1; i >= 0; i--) {
    const m = SCOPE_CONTAINER.exec(parts[i]!);
    if (m) return m[1]!;
    // cgroupfs driver: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>.
    if (HEX64.test(parts[i]!) && parts.slice(0, i).some((p) => p === 'docker' || p.startsWith('kubepods'))) return parts[i]!;
  }
  return null;
}

export function nameOf(cgroupPath: string): CgroupName {
  return { path: cgroupPath, unit: unitOf(cgroupPath), container: containerOf(cgroupPath) };
}

/** The root of the cgroup2 mount a folder is in (a cgroup has cgroup.type; the mount's root has not). */
export function cgroup2MountRoot(dir: string): string | null {
  let cur = path.resolve(dir);
  try {
    if (statfsSync(cur).type !== CGROUP2_SUPER_MAGIC) return null;
  } catch {
    return null;
  }
  for (;;) {
    const up = path.dirname(cur);
    if (up === cur) return cur;
    try {
      statSync(path.join(cur, 'cgroup.type'));
    } catch {
      return cur;
    }
    cur = up;
  }
}

export class CgroupNames {
  walks = 0;
  private cache = new Map<bigint, string>();
  private lastWalk = -Infinity;

  /** root: a folder of a cgroup2 mount (--cgroup), or null: no names (ids stay unresolved). */
  static open(dir: string | undefined, opts: CgroupNamesOptions = DEFAULT_CGROUP_NAMES): CgroupNames {
    const given = dir ?? defaultCgroup2Root();
    return new CgroupNames(given ? cgroup2MountRoot(given) : null, opts);
  }

  constructor(
    readonly root: string | null,
    private readonly opts: CgroupNamesOptions = DEFAULT_CGROUP_NAMES,
  ) {}

  /** The cgroup an id names, or null (0, no cgroup2 mount, gone, or a walk was too recent). */
  resolve(id: bigint): CgroupName | null {
    if (id === 0n || !this.root) return null;
    let p = this.cache.get(id);
    if (p === undefined && Date.now() - this.lastWalk >= this.opts.minWalkIntervalMs) {
      this.walk(id);
      p = this.cache.get(id);
    }
    return p === undefined ? null : nameOf(p);
  }

  private walk(want: bigint): void {
    this.walks++;
    this.lastWalk = Date.now();
    const root = this.root!;
    const found = new Map<bigint, string>();
    const stack: string[] = [''];
    let visited = 0;
    while (stack.length && visited < this.opts.maxWalk) {
      const rel = stack.pop()!;
      visited++;
      let ino: bigint;
      let entries: Dirent[];
      try {
        ino = statSync(path.join(root, rel), { bigint: true }).ino;
        entries = readdirSync(path.join(root, rel), { withFileTypes: true });
      } catch {
        continue; // removed while walking
      }
      if (found.size < this.opts.maxEntries || ino === want) found.set(ino, rel === '' ? '/' : `/${rel}`);
      for (const e of entries) if (e.isDirectory()) stack.push(rel === '' ? e.name : `${rel}/${e.name}`);
    }
    this.cache = found;
  }
}
