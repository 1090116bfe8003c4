// Naming the cgroup of a violation's local socket (agent/cgroup-names.ts): the systemd unit and
// container id a path names, and the id-to-path walk with its cache, rate limit and bound.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { CgroupNames, containerOf, unitOf } from '../../agent/cgroup-names.js';

test('the unit is the last .service or .scope component, else a .slice leaf', () => {
  const cases: Array<[string, string | null]> = [
    ['/system.slice/legacy-app.service', 'legacy-app.service'],
    ['/user.slice/user-1000.slice/session-3.scope', 'session-3.scope'],
    ['/system.slice/nginx.service/worker', 'nginx.service'],
    ['/system.slice/docker-0123456789ab.scope', 'docker-0123456789ab.scope'],
    ['/machine.slice', 'machine.slice'],
    ['/sw-1-app/system.slice/legacy-app.service', 'legacy-app.service'],
    ['/', null],
    ['/docker/0123', null],
  ];
  for (const [p, want] of cases) assert.equal(unitOf(p), want, p);
});

test('the container id comes from the runtimes’ scope names and from cgroupfs-driver paths', () => {
  const id = 'a'.repeat(12) + 'b'.repeat(52);
  const cases: Array<[string, string | null]> = [
    [`/system.slice/docker-${id}.scope`, id],
    [`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-${id}.scope`, id],
    [`/kubepods.slice/kubepods-pod1.slice/crio-${id}.scope`, id],
    [`/kubepods.slice/kubepods-pod1.slice/crio-conmon-${id}.scope`, null],
    [`/machine.slice/libpod-${id}.scope/container`, id],
    [`/docker/${id}`, id],
    [`/kubepods/burstable/pod1234/${id}`, id],
    [`/system.slice/${id}`, null],
    ['/system.slice/legacy-app.service', null],
  ];
  for (const [p, want] of cases) assert.equal(containerOf(p), want, p);
});

function tree(dirs: string[]): { root: string; ino: (rel: string) => bigint; done: () => void } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-cgnames-'));
  for (const d of dirs) fs.mkdirSync(path.join(root, d), { recursive: true });
  return {
    root,
    ino: (rel) => fs.statSync(path.join(root, rel), { bigint: true }).ino,
    done: () => fs.rmSync(root, { recursive: true, force: true }),
  };
}

test('an id resolves to its folder’s path by its inode number, with the unit; a walk fills the cache', () => {
  const t = tree(['system.slice/legacy-app.service', 'system.slice/docker-0123456789ab.scope', 'user.slice']);
  try {
    const names = new CgroupNames(t.root, { maxEntries: 100, minWalkIntervalMs: 60_000, maxWalk: 1000 });
    assert.deepEqual(names.resolve(t.ino('system.slice/legacy-app.service')), {
      path: '/system.slice/legacy-app.service',
      unit: 'legacy-app.service',
      container: null,
    });
    assert.equal(names.resolve(t.ino('system.slice/docker-0123456789ab.scope'))?.container, '0123456789ab');
    assert.equal(names.resolve(t.ino(''))?.path, '/');
    assert.equal(names.walks, 1, 'the first walk found them all');
    assert.equal(names.resolve(0n), null, 'id 0 is "unknown"');
  } finally {
    t.done();
  }
});

test('a miss walks again at most once per interval; a cgroup created meanwhile is found after it', async () => {
  const t = tree(['a.service']);
  try {
    const names = new CgroupNames(t.root, { maxEntries: 100, minWalkIntervalMs: 200, maxWalk: 1000 });
    assert.ok(names.resolve(t.ino('a.service')));
    fs.mkdirSync(path.join(t.root, 'b.service'));
    const b = t.ino('b.service');
    assert.equal(names.resolve(b), null, 'within the interval: not walked again');
    assert.equal(names.resolve(b), null);
    assert.equal(names.walks, 1);
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(names.resolve(b)?.unit, 'b.service');
    assert.equal(names.walks, 2);
  } finally {
    t.done();
  }
});

test('the cache is bounded, and the id asked for is kept even past the bound', () => {
  const t = tree(Array.from({ length: 50 }, (_, i) => `s${i}.service`));
  try {
    const names = new CgroupNames(t.root, { maxEntries: 5, minWalkIntervalMs: 0, maxWalk: 1000 });
    for (let i = 0; i < 50; i++) assert.equal(names.resolve(t.ino(`s${i}.service`))?.unit, `s${i}.service`);
    assert.ok(names.walks > 1, 'a cache of 5 cannot hold 50 cgroups: later ones walk again');
  } finally {
    t.done();
  }
});
