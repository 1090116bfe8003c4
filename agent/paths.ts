// Where things live: the built BPF objects (found from this file, in dist/ or not) and the
// layout of pins under the agent's bpffs folder.
import { existsSync, mkdirSync, statfsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SslwallError } from '../schemas/errors.js';

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`sslwall: cannot find the package root above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
}

export const repoRoot = findRepoRoot();
/** SSLWALL_BPF_DIR points the agent at another build's objects (upgrade drills, tests). */
const objectDir = process.env.SSLWALL_BPF_DIR ?? path.join(repoRoot, 'bpf/build');
export const bpfObjects = {
  classifier: path.join(objectDir, 'classifier.bpf.o'),
  lifecycle: path.join(objectDir, 'lifecycle.bpf.o'),
  ttls: path.join(objectDir, 'ttls.bpf.o'),
};

export const DEFAULT_BPFFS = '/sys/fs/bpf/sslwall';
export const DEFAULT_STATE_DIR = '/var/lib/sslwall';

/** Pin paths under one agent's bpffs folder. */
export function pinLayout(bpffs: string) {
  return {
    root: bpffs,
    maps: path.join(bpffs, 'maps'),
    links: path.join(bpffs, 'links'),
    map: (name: string) => path.join(bpffs, 'maps', name),
    tcxLink: (iface: string, dir: 'ingress' | 'egress') => path.join(bpffs, 'links', `tcx_${iface}_${dir}`),
    lifecycleLink: path.join(bpffs, 'links', 'sock_state'),
    /** The transparent-TLS programs' cgroup links (agent/ttls-kernel.ts). */
    ttlsLink: (prog: 'connect4' | 'connect6' | 'sockops') => path.join(bpffs, 'links', `ttls_${prog}`),
  };
}

const BPF_FS_MAGIC = 0xcafe4a11;

/** Pins only outlive the agent on a BPF filesystem; say how to get one otherwise. */
export function assertBpffs(dir: string): void {
  // /sys/fs/bpf/sslwall on a host whose /sys/fs/bpf is mounted: make the folder.
  if (!existsSync(dir) && existsSync(path.dirname(dir))) {
    try {
      if (statfsSync(path.dirname(dir)).type === BPF_FS_MAGIC) mkdirSync(dir);
    } catch {
      // Reported below.
    }
  }
  let type: number;
  try {
    type = statfsSync(dir).type;
  } catch (err) {
    throw new SslwallError('SSLWALL_E_BPFFS', `cannot stat --bpffs ${dir}: create it on a BPF filesystem (mkdir -p ${dir}; mount -t bpf bpf ${dir})`, {
      cause: err,
    });
  }
  if (type !== BPF_FS_MAGIC) {
    throw new SslwallError('SSLWALL_E_BPFFS', `${dir} is not on a BPF filesystem; mount one: mount -t bpf bpf ${dir} (or use a folder under /sys/fs/bpf)`);
  }
}
