// The native addon against a real kernel: a small fixture object (fixtures/minimal.bpf.c) loaded,
// test-run, pinned, polled, iterated, attached with tcx/tc on a veth inside a netns made here and
// to a cgroup made here, and the handles it returns checked to own their fds. Needs root with BPF. Every mount, netns,
// handle and object is released in a finally, and the mount and netns are checked gone.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BpfError, type BpfObject, type LinkHandle, type LinkInfo, type MapHandle, type NativeAddon, native } from '../../native/index.js';

const { EACCES, EBADF, EBUSY, EEXIST, EINVAL, ENODEV, ENOENT } = os.constants.errno;
const here = path.dirname(fileURLToPath(import.meta.url));
// Compiled into dist/test/native/; the fixture sources stay in test/native/fixtures/.
const root = findRoot(here);
const fixtures = path.join(root, 'test/native/fixtures');
const objFile = path.join(fixtures, 'minimal.bpf.o');
const rejectedFile = path.join(fixtures, 'rejected.bpf.o');
// What a child process imports to get the same addon this file uses.
const nativeUrl = new URL('../../native/index.js', import.meta.url).href;

let n: NativeAddon;

before(() => {
  const make = spawnSync('make', ['-C', fixtures], { encoding: 'utf8' });
  assert.equal(make.status, 0, `make -C ${fixtures} failed:\n${make.stdout}${make.stderr}`);
  n = native();
});

function findRoot(dir: string): string {
  for (let d = dir; d !== path.dirname(d); d = path.dirname(d)) {
    if (existsSync(path.join(d, 'package.json'))) return d;
  }
  throw new Error(`no package.json above ${dir}`);
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const u64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
// A zeroed 64-byte frame: enough for the skb test run (it needs at least an Ethernet header).
const packet = () => Buffer.alloc(64);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(done: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

type Own = <H extends { close(): void }>(h: H) => H;

/**
 * Opens the fixture, lets `setup` act before load, loads, runs `fn`, closes whatever happens: the
 * object and every handle `fn` passed through `own`.
 */
async function withObject<T>(fn: (o: BpfObject, own: Own) => T | Promise<T>, setup?: (o: BpfObject) => void): Promise<T> {
  const o = n.openObject(objFile);
  const owned: Array<{ close(): void }> = [];
  try {
    setup?.(o);
    o.load();
    return await fn(o, (h) => {
      owned.push(h);
      return h;
    });
  } finally {
    for (const h of owned) h.close();
    o.close();
  }
}

/** What the kernel says fd is in this process, or null if it is not open. */
function fdTarget(fd: number): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return null;
  }
}

/** The number of possible CPUs, as libbpf counts them (ranges in /sys/devices/system/cpu/possible). */
function possibleCpus(): number {
  return readFileSync('/sys/devices/system/cpu/possible', 'utf8')
    .trim()
    .split(',')
    .reduce((sum, r) => {
      const [lo, hi] = r.split('-').map(Number);
      return sum + (hi === undefined ? 1 : hi - lo! + 1);
    }, 0);
}

function isBpfError(op: string, errno: number) {
  return (e: unknown) => {
    assert.ok(e instanceof BpfError, `expected a BpfError, got ${String(e)}`);
    assert.equal(e.op, op, `op of: ${e.message}`);
    assert.equal(e.errno, errno, `errno of: ${e.message}`);
    return true;
  };
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs an ES module script in a child node (optionally via nsenter) and returns its stdout. */
function runChild(script: string, opts: { netns?: string; timeoutMs: number; nodeFlags?: string[] }): string {
  const nodeArgs = [...(opts.nodeFlags ?? []), '--input-type=module', '-e', script];
  const [cmd, args] = opts.netns ? ['nsenter', [`--net=/run/netns/${opts.netns}`, '--', process.execPath, ...nodeArgs]] : [process.execPath, nodeArgs];
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs });
  assert.equal(r.signal, null, `child killed by ${r.signal} (still running after ${opts.timeoutMs} ms?)\n${r.stderr}`);
  assert.equal(r.status, 0, `child exited ${r.status}:\n${r.stderr}`);
  return r.stdout;
}

test('setRodata before load sets the value the program reads', async () => {
  const plain = await withObject((o, own) => n.testRun(own(o.prog('test_tc')), packet(), 1));
  assert.equal(plain.retval, 0, 'answer defaults to 0');

  const set = await withObject(
    (o, own) => n.testRun(own(o.prog('test_tc')), packet(), 10),
    (o) => o.setRodata('answer', u32(42)),
  );
  assert.equal(set.retval, 42);
  assert.ok(set.durationNs >= 0);
  assert.equal(set.dataOut.length, 64, 'the unmodified packet comes back');
});

test('setRodata rejects an unknown name, a wrong size and a loaded object', async () => {
  const o = n.openObject(objFile);
  try {
    assert.throws(() => o.setRodata('no_such_var', u32(1)), isBpfError('setRodata', ENOENT));
    assert.throws(() => o.setRodata('answer', u64(1)), isBpfError('setRodata', EINVAL));
    o.load();
    assert.throws(() => o.setRodata('answer', u32(1)), isBpfError('setRodata', EBUSY));
  } finally {
    o.close();
  }
});

test('a verifier rejection throws BpfError carrying the verifier log', () => {
  const o = n.openObject(rejectedFile);
  try {
    assert.throws(
      () => o.load(),
      (e) => {
        assert.ok(e instanceof BpfError, `expected a BpfError, got ${String(e)}`);
        assert.equal(e.op, 'bpf_object__load');
        assert.equal(e.errno, EACCES, e.message);
        assert.match(e.verifierLog ?? '', /invalid access to packet/, 'the log holds the verifier reason');
        return true;
      },
    );
  } finally {
    o.close();
  }
});

test('the addon throws BpfError itself: its class, code, op and errno, with no wrapper in between', async () => {
  await withObject((o) => {
    let caught: unknown;
    try {
      o.map('nope');
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof BpfError, `expected a BpfError, got ${String(caught)}`);
    assert.equal(Object.getPrototypeOf(caught), BpfError.prototype, 'constructed as BpfError, not a subclass or proxy');
    assert.deepEqual(
      { name: caught.name, code: caught.code, op: caught.op, errno: caught.errno, verifierLog: caught.verifierLog },
      { name: 'BpfError', code: 'SSLWALL_E_BPF', op: 'bpf_object__find_map_by_name', errno: ENOENT, verifierLog: undefined },
    );
    assert.match(caught.message, /^bpf_object__find_map_by_name\(nope\): No such file or directory$/);
    assert.throws(() => o.prog('nope'), isBpfError('bpf_object__find_program_by_name', ENOENT));
  });
});

test('a handle owns its fd: close() closes it, and a closed handle is refused with a clear error', async () => {
  await withObject((o) => {
    const map = o.map('arr');
    const fd = map.fd;
    assert.equal(map.kind, 'map');
    assert.equal(fdTarget(fd), 'anon_inode:bpf-map', `fd ${fd} of ${String(map)}`);
    n.mapUpdate(map, u32(0), u64(1));
    map.close();
    assert.equal(fdTarget(fd), null, `fd ${fd} is still open after close()`);
    assert.equal(map.closed, true);
    assert.equal(map.fd, -1);
    map.close(); // idempotent
    assert.throws(
      () => n.mapLookup(map, u32(0)),
      (e) => isBpfError('bpf_map_lookup_elem', EBADF)(e) && /map handle map arr is closed/.test((e as Error).message),
    );
    const prog = o.prog('test_tc');
    prog.close();
    assert.throws(() => n.testRun(prog, packet(), 1), isBpfError('bpf_prog_test_run_opts', EBADF));
    assert.throws(() => n.pin(prog, '/sys/fs/bpf/never'), isBpfError('bpf_obj_pin', EBADF));
  });
});

test('closing a handle leaves the object and other handles on the same map working', async () => {
  await withObject((o, own) => {
    const a = o.map('arr');
    const b = own(o.map('arr'));
    assert.notEqual(a.fd, b.fd, 'each handle has an fd of its own');
    a.close();
    n.mapUpdate(b, u32(1), u64(5));
    assert.deepEqual(n.mapLookup(own(o.map('arr')), u32(1)), u64(5));
  });
});

test('a map handle is refused where a program is expected, and a bare fd number anywhere', async () => {
  await withObject((o, own) => {
    const map = own(o.map('arr'));
    const prog = own(o.prog('test_tc'));
    // The @ts-expect-error lines are the type-level check: tsc fails the build if they compile.
    // @ts-expect-error a MapHandle is not a ProgHandle
    assert.throws(() => n.testRun(map, packet(), 1), { name: 'TypeError', message: 'prog must be a prog handle, got a map handle' });
    // @ts-expect-error a ProgHandle is not a MapHandle
    assert.throws(() => n.mapLookup(prog, u32(0)), { name: 'TypeError', message: 'map must be a map handle, got a prog handle' });
    // @ts-expect-error a MapHandle is not a LinkHandle
    assert.throws(() => n.linkUpdate(map, prog), { name: 'TypeError', message: 'link must be a link handle, got a map handle' });
    // @ts-expect-error fd numbers are not accepted
    assert.throws(() => n.mapLookup(map.fd, u32(0)), { name: 'TypeError', message: /must be a handle from the addon, not a bare fd/ });
    assert.equal(n.progInfo(prog).name, 'test_tc', 'the right kind still works');
  });
});

test('a handle dropped without close() is closed by its finalizer', () => {
  const script = `
    import { native } from ${JSON.stringify(nativeUrl)};
    import { readlinkSync } from 'node:fs';
    const n = native();
    const o = n.openObject(${JSON.stringify(objFile)});
    o.load();
    let fd = (() => o.map('arr').fd)();
    const open = () => { try { return readlinkSync('/proc/self/fd/' + fd); } catch { return null; } };
    const before = open();
    for (let i = 0; i < 50 && open() !== null; i++) {
      globalThis.gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    console.log(JSON.stringify({ before, after: open() }));
    o.close();
  `;
  const r = JSON.parse(runChild(script, { timeoutMs: 10_000, nodeFlags: ['--expose-gc'] })) as { before: string; after: string | null };
  assert.deepEqual(r, { before: 'anon_inode:bpf-map', after: null });
});

test('map lookup, update, delete, dump and batch update on an LRU hash', async () => {
  await withObject((o, own) => {
    const map = own(o.map('lru'));
    assert.equal(n.mapLookup(map, u32(1)), null, 'missing key');
    n.mapUpdate(map, u32(1), u64(100));
    assert.deepEqual(n.mapLookup(map, u32(1)), u64(100));
    assert.throws(() => n.mapUpdate(map, u32(1), u64(5), 1 /* BPF_NOEXIST */), isBpfError('bpf_map_update_elem', EEXIST));
    assert.throws(() => n.mapLookup(map, u64(1)), isBpfError('bpf_map_lookup_elem', EINVAL));
    assert.equal(n.mapDelete(map, u32(1)), true);
    assert.equal(n.mapDelete(map, u32(1)), false, 'deleting a missing key');
    assert.equal(n.mapCount(map), 0, 'an empty map counts 0');

    n.mapUpdateBatch(map, Buffer.concat([u32(10), u32(11), u32(12)]), Buffer.concat([u64(1), u64(2), u64(3)]), 3);
    assert.equal(n.mapCount(map), 3, 'mapCount counts what the batch update wrote');
    const dump = n.mapDump(map).map(([k, v]) => [k.readUInt32LE(), Number(v.readBigUInt64LE())]);
    assert.deepEqual(
      dump.sort((a, b) => a[0] - b[0]),
      [
        [10, 1],
        [11, 2],
        [12, 3],
      ],
    );
    assert.throws(() => n.mapUpdateBatch(map, u32(1), u64(1), 2), isBpfError('bpf_map_update_batch', EINVAL));

    const { id, btfId, btfKeyTypeId, btfValueTypeId, ...shape } = n.mapInfo(map);
    assert.ok(id > 0);
    assert.ok(btfId > 0 && btfKeyTypeId > 0 && btfValueTypeId > 0, 'a libbpf-created map carries the BTF of its key and value');
    assert.deepEqual(shape, { type: 9 /* BPF_MAP_TYPE_LRU_HASH */, keySize: 4, valueSize: 8, maxEntries: 64, name: 'lru' });
  });
});

test('a hash map of more entries than one batch: mapDump and mapLookupBatch give each once', async () => {
  await withObject((o, own) => {
    const map = own(o.map('big'));
    const N = 9000;
    const keys = Buffer.alloc(4 * N);
    const values = Buffer.alloc(8 * N);
    for (let i = 0; i < N; i++) {
      keys.writeUInt32LE(i * 7 + 1, 4 * i);
      values.writeBigUInt64LE(BigInt(i) * 1000n, 8 * i);
    }
    n.mapUpdateBatch(map, keys, values, N);
    const want = new Map(Array.from({ length: N }, (_, i) => [i * 7 + 1, BigInt(i) * 1000n]));

    const dump = n.mapDump(map);
    assert.equal(dump.length, N);
    assert.equal(new Set(dump.map(([k]) => k.readUInt32LE())).size, N, 'no key twice');
    for (const [k, v] of dump) assert.equal(v.readBigUInt64LE(), want.get(k.readUInt32LE()));

    const b = n.mapLookupBatch(map);
    assert.deepEqual({ count: b.count, keySize: b.keySize, valueSize: b.valueSize }, { count: N, keySize: 4, valueSize: 8 });
    assert.equal(b.keys.length, 4 * N);
    assert.equal(b.values.length, 8 * N);
    const seen = new Set<number>();
    for (let i = 0; i < b.count; i++) {
      const k = b.keys.readUInt32LE(4 * i);
      seen.add(k);
      assert.equal(b.values.readBigUInt64LE(8 * i), want.get(k));
    }
    assert.equal(seen.size, N);
    assert.equal(n.mapLookupBatch(own(o.map('lru'))).count, 0, 'an empty map: no records');
  });
});

test('mapLookupBatch: per-CPU values as mapLookup sizes them; a map without batch lookups refused', async () => {
  await withObject((o, own) => {
    const pcpu = own(o.map('pcpu'));
    const b = n.mapLookupBatch(pcpu);
    assert.equal(b.count, 2, 'every slot of the array');
    assert.equal(b.valueSize, 8 * possibleCpus());
    assert.throws(() => n.mapLookupBatch(own(o.map('events'))), isBpfError('bpf_map_lookup_batch', 95 /* EOPNOTSUPP */));
  });
});

test('an array map dumps every slot', async () => {
  await withObject((o, own) => {
    const map = own(o.map('arr'));
    n.mapUpdate(map, u32(2), u64(7));
    const dump = n.mapDump(map).map(([k, v]) => [k.readUInt32LE(), Number(v.readBigUInt64LE())]);
    assert.deepEqual(dump, [
      [0, 0],
      [1, 0],
      [2, 7],
      [3, 0],
    ]);
  });
});

test('per-CPU values are one 8-byte-aligned slot per possible CPU', async () => {
  await withObject((o, own) => {
    const map = own(o.map('pcpu'));
    const cpus = possibleCpus();
    assert.ok(cpus >= 1);
    assert.equal(n.mapInfo(map).valueSize, 4, 'the declared value is a __u32');
    assert.equal(n.mapLookup(map, u32(0))?.length, 8 * cpus);
    const value = Buffer.alloc(8 * cpus);
    for (let cpu = 0; cpu < cpus; cpu++) value.writeUInt32LE(cpu + 1, cpu * 8);
    n.mapUpdate(map, u32(1), value);
    assert.deepEqual(n.mapLookup(map, u32(1)), value);
    assert.throws(() => n.mapUpdate(map, u32(1), u32(1)), isBpfError('bpf_map_update_elem', EINVAL));
  });
});

test("reuseMap makes a second object share the first one's map", async () => {
  await withObject(async (first, own) => {
    const shared = own(first.map('lru'));
    n.mapUpdate(shared, u32(7), u64(70));
    await withObject(
      (second, own2) => {
        const lru = own2(second.map('lru'));
        assert.equal(n.mapInfo(lru).id, n.mapInfo(shared).id);
        assert.deepEqual(n.mapLookup(lru, u32(7)), u64(70));
      },
      (second) => second.reuseMap('lru', shared),
    );
  });
});

test('pinned programs and maps reopen as the same kernel objects on a bpffs, checked for kind', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sslwall-bpffs-'));
  sh('mount', ['-t', 'bpf', 'bpf', dir]);
  const handles: Array<{ close(): void }> = [];
  try {
    const kept = await withObject((o, own) => {
      n.pin(own(o.prog('test_tc')), path.join(dir, 'prog'));
      n.pin(own(o.map('arr')), path.join(dir, 'map'));
      const h = o.prog('test_tc');
      handles.push(h);
      return h;
    });
    // The object is closed: only the pins (and the handle kept) hold the program and map.
    const prog = n.getPinned(path.join(dir, 'prog'), 'prog');
    handles.push(prog);
    const map = n.getPinned(path.join(dir, 'map'), 'map');
    handles.push(map);
    const pinned = n.progInfo(prog);
    const held = n.progInfo(kept);
    assert.equal(pinned.id, held.id);
    assert.match(pinned.tag, /^[0-9a-f]{16}$/);
    assert.equal(pinned.tag, held.tag);
    assert.equal(pinned.name, 'test_tc');
    assert.equal(pinned.type, 3 /* BPF_PROG_TYPE_SCHED_CLS */);
    assert.equal(n.testRun(kept, packet(), 1).retval, 0, 'a program handle works after its object is closed');
    n.mapUpdate(map, u32(3), u64(9));
    assert.deepEqual(n.mapLookup(map, u32(3)), u64(9));
    assert.throws(() => n.getPinned(path.join(dir, 'absent'), 'map'), isBpfError('bpf_obj_get', ENOENT));
    assert.throws(() => n.getPinned(path.join(dir, 'prog'), 'map'), isBpfError('bpf_obj_get', EINVAL));
    assert.throws(() => n.getPinned(path.join(dir, 'map'), 'link'), isBpfError('bpf_obj_get', EINVAL));
  } finally {
    for (const h of handles) h.close();
    sh('umount', [dir]);
    rmdirSync(dir);
  }
  assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(dir), `${dir} is still mounted`);
});

test('the ring buffer poller hands each record to JS, and none after close()', async () => {
  await withObject(
    async (o, own) => {
      const prog = own(o.prog('test_tc'));
      const events = o.map('events');
      const records: Buffer[] = [];
      const poller = n.ringBufferPoll(events, (r) => records.push(r));
      // The poller holds its own fd: closing the handle it was given does not stop it.
      events.close();
      try {
        n.testRun(prog, packet(), 3);
        await waitFor(() => records.length >= 3, 5000, '3 ring buffer records');
        assert.equal(records.length, 3);
        for (const r of records) assert.deepEqual([r.readUInt32LE(0), r.readUInt32LE(4)], [5, 64]);
      } finally {
        poller.close();
      }
      n.testRun(prog, packet(), 2);
      await sleep(300);
      assert.equal(records.length, 3, 'records arrived after close()');
      poller.close(); // idempotent
    },
    (o) => o.setRodata('answer', u32(5)),
  );
});

test('closing the poller from its own callback stops delivery at once', async () => {
  await withObject(async (o, own) => {
    let seen = 0;
    const poller = n.ringBufferPoll(own(o.map('events')), () => {
      seen++;
      poller.close();
    });
    n.testRun(own(o.prog('test_tc')), packet(), 5);
    await waitFor(() => seen > 0, 5000, 'the first record');
    await sleep(300);
    assert.equal(seen, 1);
  });
});

/** Context switches of this process's threads named name (their /proc comm), summed. */
function threadSwitches(name: string): { threads: number; switches: number } {
  let threads = 0;
  let switches = 0;
  for (const task of readdirSync('/proc/self/task')) {
    try {
      if (readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() !== name) continue;
      const status = readFileSync(`/proc/self/task/${task}/status`, 'utf8');
      threads++;
      for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) switches += Number(m[1]);
    } catch {
      /* thread gone */
    }
  }
  return { threads, switches };
}

test('an idle poller sleeps until a record comes, and close() stops it at once', async () => {
  await withObject(async (o, own) => {
    const records: Buffer[] = [];
    const poller = n.ringBufferPoll(own(o.map('events')), (r) => records.push(r));
    let closeMs = Number.NaN;
    try {
      await sleep(100); // the thread is started and asleep
      const before = threadSwitches('sslwall-ringbuf');
      assert.equal(before.threads, 1, 'one poller thread, named sslwall-ringbuf');
      await sleep(1000);
      const idle = threadSwitches('sslwall-ringbuf');
      // A timed poll (100 ms, as before) woke it ~10 times in that second.
      assert.ok(idle.switches - before.switches <= 1, `the idle poller woke ${idle.switches - before.switches} times in 1 s`);
      n.testRun(own(o.prog('test_tc')), packet(), 1);
      await waitFor(() => records.length === 1, 5000, 'the record');
      assert.ok(threadSwitches('sslwall-ringbuf').switches > idle.switches, 'the record woke the poller');
    } finally {
      const t = performance.now();
      poller.close();
      closeMs = performance.now() - t;
    }
    assert.ok(closeMs < 50, `close() took ${closeMs.toFixed(1)} ms: the thread should wake on the stop signal, not a timeout`);
    assert.equal(threadSwitches('sslwall-ringbuf').threads, 0, 'the poller thread is gone after close()');
  });
});

test('an open poller delivers with nothing else holding the event loop, and a closed one lets the process exit', () => {
  const script = `
    import { native } from ${JSON.stringify(nativeUrl)};
    const n = native();
    const o = n.openObject(${JSON.stringify(objFile)});
    o.load();
    const events = o.map('events');
    const prog = o.prog('test_tc');
    const p = n.ringBufferPoll(events, (r) => {
      console.log('record len=' + r.readUInt32LE(4));
      p.close();
      events.close();
      prog.close();
      o.close();
    });
    n.testRun(prog, Buffer.alloc(64), 1);
  `;
  assert.equal(runChild(script, { timeoutMs: 10_000 }).trim(), 'record len=64');
});

test('an iter link outlives its object and each iterRun is a fresh pass over TCP sockets', async () => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  let link: LinkHandle | undefined;
  try {
    link = await withObject((o) => o.attachIter('test_iter_tcp'));
    assert.equal(link.kind, 'link');
    assert.equal(fdTarget(link.fd), 'anon_inode:bpf_link');
    assert.equal(n.linkInfo(link).type, 4 /* BPF_LINK_TYPE_ITER */);
    for (let pass = 0; pass < 2; pass++) {
      const text = n.iterRun(link).toString();
      assert.match(text, new RegExp(`^family=2 state=10 port=${port}$`, 'm'), `pass ${pass}: no line for the listener:\n${text}`);
    }
  } finally {
    link?.close();
    await new Promise((resolve) => server.close(resolve));
  }
});

test('a tracing link keeps counting after its object is closed, until its handle is closed', async () => {
  let link: LinkHandle | undefined;
  let hits: MapHandle | undefined;
  try {
    [link, hits] = await withObject((o) => [o.attachTracing('test_newtask'), o.map('hits')] as const);
    assert.equal(n.linkInfo(link).type, 1 /* BPF_LINK_TYPE_RAW_TRACEPOINT: what tp_btf attaches as */);
    const count = () => Number(n.mapLookup(hits!, u32(0))!.readBigUInt64LE());
    const before = count();
    spawnSync('true');
    assert.ok(count() > before, 'test_newtask did not run for a new process');
    link.close();
    const detached = count();
    spawnSync('true');
    assert.equal(count(), detached, 'test_newtask still ran after its link handle was closed');
  } finally {
    link?.close();
    hits?.close();
  }
});

test('ifNameToIndex resolves loopback and throws for a missing interface', () => {
  assert.equal(n.ifNameToIndex('lo'), 1);
  assert.throws(() => n.ifNameToIndex('sslwall-none0'), isBpfError('if_nametoindex', ENODEV));
});

// tcx and classic tc run inside a netns of our own, on a veth pair that exists only there: the
// host's interfaces are never touched. Attaching needs the caller inside the netns, so a child node
// does the work under nsenter and reports what the kernel says as JSON.
let netnsSeq = 0;

/** Runs `fn` with a fresh netns holding a veth pair sw0/sw1; deletes the netns and checks it is gone. */
function withNetns<T>(fn: (netns: string) => T): T {
  const netns = `sslwall-native-${process.pid}-${netnsSeq++}`;
  sh('ip', ['netns', 'add', netns]);
  try {
    sh('ip', ['-n', netns, 'link', 'add', 'sw0', 'type', 'veth', 'peer', 'name', 'sw1']);
    sh('ip', ['-n', netns, 'link', 'set', 'sw0', 'up']);
    sh('ip', ['-n', netns, 'link', 'set', 'sw1', 'up']);
    return fn(netns);
  } finally {
    sh('ip', ['netns', 'del', netns]);
    assert.ok(!existsSync(`/run/netns/${netns}`), `netns ${netns} still exists`);
  }
}

/** What every netns child reports before its own fields. */
interface ChildBase {
  ifindex: number;
  mainId: number;
  altId: number;
}

const childPrelude = `
  import { native } from ${JSON.stringify(nativeUrl)};
  import { execFileSync } from 'node:child_process';
  const n = native();
  const o = n.openObject(${JSON.stringify(objFile)});
  o.load();
  const main = o.prog('test_tc');
  const alt = o.prog('test_tc_alt');
  const ifindex = n.ifNameToIndex('sw0');
  const out = { ifindex, mainId: n.progInfo(main).id, altId: n.progInfo(alt).id };
`;

test('tcx: attach both directions, swap the program with linkUpdate, detach', { timeout: 60_000 }, () => {
  const script = `${childPrelude}
    const ingress = n.tcxAttach(main, ifindex, 'ingress');
    const egress = n.tcxAttach(main, ifindex, 'egress');
    try {
      out.ingress = n.linkInfo(ingress);
      out.egress = n.linkInfo(egress);
      n.linkUpdate(ingress, alt);
      out.updated = n.linkInfo(ingress);
      n.linkDetach(ingress);
      out.detached = n.linkInfo(ingress);
    } finally {
      ingress.close();
      egress.close();
      main.close();
      alt.close();
      o.close();
    }
    console.log(JSON.stringify(out));
  `;
  type Report = ChildBase & Record<'ingress' | 'egress' | 'updated' | 'detached', LinkInfo>;
  const r = withNetns((netns) => JSON.parse(runChild(script, { netns, timeoutMs: 30_000 })) as Report);
  const tcx = 11; // BPF_LINK_TYPE_TCX
  assert.deepEqual(
    { type: r.ingress.type, progId: r.ingress.progId, ifindex: r.ingress.ifindex, attachType: r.ingress.attachType },
    { type: tcx, progId: r.mainId, ifindex: r.ifindex, attachType: 46 },
  );
  assert.equal(r.egress.attachType, 47);
  assert.equal(r.updated.progId, r.altId, 'linkUpdate put test_tc_alt behind the link');
  assert.equal(r.updated.id, r.ingress.id, 'the same link');
  assert.equal(r.detached.ifindex, 0, 'a detached tcx link reports no device');
});

test('classic tc: clsact attach, replace in place by handle/priority, detach', { timeout: 60_000 }, () => {
  const script = `${childPrelude}
    const show = () => execFileSync('tc', ['filter', 'show', 'dev', 'sw0', 'egress'], { encoding: 'utf8' });
    try {
      n.tcAttach(main, ifindex, 'egress', 1, 1);
      out.first = show();
      n.tcAttach(alt, ifindex, 'egress', 1, 1);
      out.replaced = show();
      n.tcDetach(ifindex, 'egress', 1, 1);
      out.detached = show();
      try { n.tcDetach(ifindex, 'egress', 1, 1); } catch (e) { out.again = { op: e.op, errno: e.errno }; }
    } finally {
      main.close();
      alt.close();
      o.close();
    }
    console.log(JSON.stringify(out));
  `;
  type Report = ChildBase & Record<'first' | 'replaced' | 'detached', string> & { again?: { op: string; errno: number } };
  const r = withNetns((netns) => JSON.parse(runChild(script, { netns, timeoutMs: 30_000 })) as Report);
  const hasProg = (text: string, id: number) => new RegExp(`\\bid ${id}\\b`).test(text);
  assert.ok(hasProg(r.first, r.mainId), `test_tc (id ${r.mainId}) not on sw0 egress:\n${r.first}`);
  assert.ok(hasProg(r.replaced, r.altId) && !hasProg(r.replaced, r.mainId), `not replaced in place:\n${r.replaced}`);
  assert.equal(r.detached.trim(), '', 'filter left after tcDetach');
  assert.equal(r.again?.op, 'bpf_tc_detach', 'detaching twice fails');
});

test('cgroup link: attach to a cgroup, pinned it outlives its handle and object, detach leaves the cgroup bare', { timeout: 60_000 }, async () => {
  const mount = mkdtempSync(path.join(os.tmpdir(), 'sslwall-cgroup2-'));
  const bpffs = mkdtempSync(path.join(os.tmpdir(), 'sslwall-bpffs-'));
  sh('mount', ['-t', 'cgroup2', 'none', mount]);
  sh('mount', ['-t', 'bpf', 'bpf', bpffs]);
  // The machine's one cgroup2 tree: a name of our own, removed in finally.
  const cg = path.join(mount, `sslwall-native-${process.pid}`);
  mkdirSync(cg);
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  // A connect() from a process inside the cgroup (bash's /dev/tcp), and one from outside it.
  const connectInside = () => sh('/bin/sh', ['-c', `echo $$ > "${cg}/cgroup.procs" && exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port}'`]);
  const connectOutside = () => sh('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
  const handles: Array<{ close(): void }> = [];
  try {
    const [link, connects] = await withObject((o) => [o.attachCgroup('test_connect4', cg), o.map('connects')] as const);
    handles.push(link, connects);
    const count = () => Number(n.mapLookup(connects, u32(0))!.readBigUInt64LE());
    const info: LinkInfo = n.linkInfo(link);
    assert.equal(info.type, 3 /* BPF_LINK_TYPE_CGROUP */);
    assert.equal(info.cgroupId, statSync(cg, { bigint: true }).ino, 'cgroupId is the folder inode');
    assert.equal(info.attachType, 10 /* BPF_CGROUP_INET4_CONNECT */);

    connectInside();
    assert.equal(count(), 1, 'a connect() inside the cgroup runs the program');
    connectOutside();
    assert.equal(count(), 1, 'a connect() outside the cgroup does not');

    n.pin(link, path.join(bpffs, 'link'));
    link.close();
    connectInside();
    assert.equal(count(), 2, 'the pinned link stays attached after its handle and object are closed');

    const pinned = n.getPinned(path.join(bpffs, 'link'), 'link');
    handles.push(pinned);
    n.linkDetach(pinned);
    unlinkSync(path.join(bpffs, 'link'));
    connectInside();
    assert.equal(count(), 2, 'a detached link no longer runs');
    assert.equal(sh('bpftool', ['cgroup', 'show', cg]).trim(), '', 'the cgroup has no program left');

    await assert.rejects(
      withObject((o) => o.attachCgroup('test_connect4', path.join(mount, 'absent'))),
      isBpfError('open', ENOENT),
    );
  } finally {
    for (const h of handles) h.close();
    await new Promise((resolve) => server.close(resolve));
    rmdirSync(cg);
    sh('umount', [bpffs]);
    sh('umount', [mount]);
    rmdirSync(bpffs);
    rmdirSync(mount);
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  assert.ok(!mounts.includes(mount) && !mounts.includes(bpffs), 'a mount of this test is still there');
});
