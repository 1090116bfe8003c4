// A brand-new Debian 12 root to install the package into, made the way ../shared/tools/fresh-machine-ci
// makes its fresh machine: its cached base image (debootstrap minbase plus a few tools, no Node)
// when this machine has one, else debootstrap itself; this machine's Debian apt sources only (no
// third-party repository, so every dependency comes from Debian); /proc, /sys, /dev mounted.
// destroy() kills the processes whose root is in it, unmounts everything under it and deletes it.
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from '../../tools/lab/proc.js';

/** SSLWALL_PACKAGE_TEST_BASE=debootstrap skips the cached image (to test that path). */
const BASE_IMAGE = process.env.SSLWALL_PACKAGE_TEST_BASE ?? '/var/cache/fresh-machine-ci/bookworm-base.tar';
/** What the base image adds to minbase and the test uses: the HTTP peer, its client, https to apt. */
const BASE_PACKAGES = ['ca-certificates', 'python3', 'curl'];
const DEBIAN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** "URI SUITE COMPONENTS" of this machine's Debian bookworm entries, one-line and deb822 files. */
export function debianAptEntries(): string[] {
  const entries: string[] = [];
  const dir = '/etc/apt/sources.list.d';
  const files = ['/etc/apt/sources.list', ...(fs.existsSync(dir) ? fs.readdirSync(dir).map((f) => path.join(dir, f)) : [])];
  for (const f of files) {
    if (!fs.existsSync(f)) continue;
    const text = fs.readFileSync(f, 'utf8');
    if (f.endsWith('.list')) {
      for (const line of text.split('\n')) {
        const words = line
          .replace(/#.*/, '')
          .replace(/\[[^\]]*\]/, '')
          .trim()
          .split(/\s+/);
        if (words[0] === 'deb' && words.length >= 4) entries.push(words.slice(1).join(' '));
      }
    } else if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k: string) => stanza.match(new RegExp(`^${k}:[ \\t]*(.*)$`, 'mi'))?.[1]?.trim() ?? '';
        if (!/\bdeb\b/.test(field('Types')) || field('Enabled') === 'no') continue;
        const uri = field('URIs').split(/\s+/)[0];
        for (const suite of field('Suites').split(/\s+/)) entries.push(`${uri} ${suite} ${field('Components')}`);
      }
    }
  }
  return entries.filter((e) => /^\S+ bookworm(-updates|-security)? main\b/.test(e));
}

export class DebianRoot {
  private constructor(readonly dir: string) {}

  /** Unpacks (or debootstraps) a new root under /var/tmp and mounts what programs expect. */
  static async create(): Promise<DebianRoot> {
    const entries = debianAptEntries();
    const mirror = entries.find((e) => e.split(' ')[1] === 'bookworm')?.split(' ')[0];
    if (!mirror) throw new Error("no Debian bookworm entry in this machine's apt sources: cannot make a Debian 12 root");
    const dir = fs.mkdtempSync('/var/tmp/sslwall-package-test.');
    // mktemp's 0700 on / would lock every non-root user (_apt) out of the root.
    fs.chmodSync(dir, 0o755);
    const root = new DebianRoot(dir);
    try {
      const fromImage = fs.existsSync(BASE_IMAGE);
      if (fromImage) {
        await runOk('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', BASE_IMAGE, '-C', dir], { timeoutMs: 300_000 });
      } else {
        await runOk('debootstrap', ['--variant=minbase', 'bookworm', dir, mirror], { timeoutMs: 900_000 });
      }
      fs.writeFileSync(path.join(dir, 'etc/apt/sources.list'), entries.map((e) => `deb ${e}\n`).join(''));
      for (const f of fs.readdirSync(path.join(dir, 'etc/apt/sources.list.d'))) fs.rmSync(path.join(dir, 'etc/apt/sources.list.d', f));
      // This machine's apt settings that no package owns (a proxy, a mirror's auth), as
      // fresh-machine-ci lays them; and no daemon starts when its package is installed.
      for (const sub of ['apt.conf.d', 'auth.conf.d']) {
        const from = path.join('/etc/apt', sub);
        if (!fs.existsSync(from)) continue;
        for (const f of fs.readdirSync(from)) {
          const p = path.join(from, f);
          if (fs.statSync(p).isFile() && (await run('dpkg', ['-S', p])).code !== 0) {
            fs.mkdirSync(path.join(dir, 'etc/apt', sub), { recursive: true });
            fs.copyFileSync(p, path.join(dir, 'etc/apt', sub, f));
          }
        }
      }
      fs.writeFileSync(path.join(dir, 'usr/sbin/policy-rc.d'), '#!/bin/sh\nexit 101\n', { mode: 0o755 });
      fs.copyFileSync('/etc/resolv.conf', path.join(dir, 'etc/resolv.conf'));
      fs.copyFileSync('/etc/hosts', path.join(dir, 'etc/hosts'));
      // / a mount point of its own: `ip netns exec` runs mount --make-rslave / inside.
      await runOk('mount', ['--bind', '--make-private', dir, dir]);
      await runOk('mount', ['-t', 'proc', 'proc', path.join(dir, 'proc')]);
      await runOk('mount', ['-t', 'sysfs', 'sysfs', path.join(dir, 'sys')]);
      await runOk('mount', ['--bind', '--make-private', '/dev', path.join(dir, 'dev')]);
      await runOk('mount', ['--bind', '--make-private', '/dev/pts', path.join(dir, 'dev/pts')]);
      await runOk('mount', ['-t', 'tmpfs', '-o', 'mode=1777,nosuid,nodev', 'shm', path.join(dir, 'dev/shm')]);
      if (!fromImage) await root.shOk(`apt-get update -qq && apt-get install -y -qq --no-install-recommends ${BASE_PACKAGES.join(' ')}`, 600_000);
      const cas = '/usr/local/share/ca-certificates';
      if (fs.existsSync(cas) && fs.readdirSync(cas).length) {
        fs.cpSync(cas, path.join(dir, cas), { recursive: true });
        await root.shOk('update-ca-certificates');
      }
    } catch (err) {
      await root.destroy();
      throw err;
    }
    return root;
  }

  /** Runs a shell command inside the root, with Debian's PATH and an empty environment. */
  sh(script: string, timeoutMs = 120_000) {
    return run(
      'chroot',
      [this.dir, '/usr/bin/env', '-i', `PATH=${DEBIAN_PATH}`, 'HOME=/root', 'LANG=C.UTF-8', 'DEBIAN_FRONTEND=noninteractive', 'sh', '-c', script],
      {
        timeoutMs,
      },
    );
  }

  /** Like sh(), but throws with the script and its output unless it exits 0. */
  async shOk(script: string, timeoutMs = 120_000) {
    const r = await this.sh(script, timeoutMs);
    if (r.code !== 0)
      throw new Error(`in the Debian root, exit ${r.code ?? r.signal}: ${script}\nstdout: ${r.stdout.slice(-3000)}\nstderr: ${r.stderr.slice(-3000)}`);
    return r;
  }

  /** The mount points at or under this root, deepest last. */
  mounts(): string[] {
    return fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
      .filter((m): m is string => !!m && (m === this.dir || m.startsWith(`${this.dir}/`)));
  }

  /** The pids of processes whose root is this one (they were all started by the test). */
  pids(): number[] {
    return fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          const r = fs.readlinkSync(`/proc/${p}/root`);
          return r === this.dir || r.startsWith(`${this.dir}/`);
        } catch {
          return false;
        }
      })
      .map(Number);
  }

  /** Kills what runs in the root, unmounts everything under it (netns files too) and deletes it. */
  async destroy(): Promise<void> {
    for (let i = 0; i < 10 && this.pids().length; i++) {
      for (const pid of this.pids()) {
        try {
          process.kill(pid, i < 5 ? 'SIGTERM' : 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    for (const m of this.mounts().reverse()) await run('umount', [m]).then((r) => (r.code === 0 ? r : run('umount', ['-l', m])));
    const left = this.mounts();
    if (left.length) throw new Error(`still mounted under ${this.dir}, left in place: ${left.join(' ')}`);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
