// Proves the etcd harness: a real etcd the etcd3 client can use, that keeps its data across
// kill + restart, compacts on demand, can be partitioned from a client by the fault proxy, and
// runs as a 3-member cluster that survives losing its leader. Nothing may be left running.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { Etcd3, type IOptions } from 'etcd3';
import { type EtcdCluster, type EtcdServer, etcdctl, freePort, requireEtcd, startEtcd, startEtcdCluster } from '../../tools/lab/etcd.js';
import { type FaultProxy, startFaultProxy } from '../../tools/lab/faultproxy.js';
import { pidAlive, waitFor } from '../../tools/lab/proc.js';

/** Every call gets a deadline, so a partition shows up as an error instead of a hang. */
function client(hosts: string[], deadlineMs = 2_000, extra: Partial<IOptions> = {}): Etcd3 {
  return new Etcd3({
    hosts,
    dialTimeout: deadlineMs,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + deadlineMs }),
    ...extra,
  });
}

/**
 * etcd processes (as `pgrep -x etcd` sees them, zombies included) that belong to this test: our
 * children, or any etcd using one of our temp dirs. Other etcd on the machine (a concurrent test
 * run) are not ours to judge.
 */
function ourEtcdProcesses(dirs: string[]): string[] {
  let pids: number[];
  try {
    pids = execFileSync('pgrep', ['-x', 'etcd'], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
  return pids.flatMap((pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      const ours = Number(ppid) === process.pid || dirs.some((d) => cmd.includes(d));
      return ours ? [`${pid} [${state}] ${cmd}`] : [];
    } catch {
      return []; // gone meanwhile
    }
  });
}

describe('etcd harness', () => {
  // Throws naming etcd-server / etcd-client when etcd is missing: this test must not skip.
  requireEtcd();
  const ours: number[] = [];
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  let etcd: EtcdServer;
  let cluster: EtcdCluster;

  describe('single member', () => {
    let kv: Etcd3;

    test('starts and serves the etcd3 client', async () => {
      const t0 = performance.now();
      etcd = await startEtcd();
      console.log(`etcd started in ${Math.round(performance.now() - t0)} ms at ${etcd.endpoint}`);
      cleanups.push(() => etcd.destroy());
      ours.push(etcd.member.pid!);
      kv = client(etcd.endpoints);
      cleanups.push(async () => kv.close());
      await kv.put('/sslwall/a').value('1');
      assert.equal(await kv.get('/sslwall/a').string(), '1');
      assert.equal(await etcd.get('/sslwall/a'), '1', 'etcdctl sees what etcd3 wrote');
      await etcd.put('/sslwall/b', '-2');
      assert.equal(await kv.get('/sslwall/b').string(), '-2');
    });

    test('kill + restart keeps the data and the endpoint', async () => {
      const pid = etcd.member.pid!;
      await etcd.kill();
      assert.equal(pidAlive(pid), false);
      await assert.rejects(etcd.get('/sslwall/a'), 'etcdctl fails while etcd is down');
      await etcd.restart();
      ours.push(etcd.member.pid!);
      assert.equal(await etcd.get('/sslwall/a'), '1');
      // The same client reconnects by itself once etcd is back (retry until its backoff allows).
      const deadline = Date.now() + 10_000;
      for (;;) {
        try {
          assert.equal(await kv.get('/sslwall/a').string(), '1');
          break;
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      await etcd.stop(); // graceful stop works too
      await etcd.restart();
      ours.push(etcd.member.pid!);
      assert.equal(await etcd.get('/sslwall/b'), '-2');
    });

    test('compact() makes old revisions unreadable', async () => {
      const old = (await kv.put('/sslwall/c').value('old').exec()).header.revision;
      await kv.put('/sslwall/c').value('new');
      assert.equal(await kv.get('/sslwall/c').revision(old).string(), 'old', 'readable before compaction');
      const rev = await etcd.compact();
      assert.ok(rev > Number(old), `compacted at ${rev}, after ${old}`);
      await assert.rejects(kv.get('/sslwall/c').revision(old).string(), /compacted/);
      assert.equal(await kv.get('/sslwall/c').string(), 'new');
    });

    test('fault proxy: passes gRPC, partitions within a bound, heals', async () => {
      const proxy: FaultProxy = await startFaultProxy({ host: '127.0.0.1', port: etcd.clientPort });
      cleanups.push(() => proxy.close());
      const viaProxy = client([proxy.url], 1_000);
      cleanups.push(async () => viaProxy.close());
      await viaProxy.put('/sslwall/p').value('through');
      assert.equal(await viaProxy.get('/sslwall/p').string(), 'through');
      assert.ok(proxy.connections() >= 1);

      proxy.setLatency(150);
      let t0 = performance.now();
      assert.equal(await viaProxy.get('/sslwall/p').string(), 'through');
      const slow = performance.now() - t0;
      assert.ok(slow >= 280, `a round trip takes two delayed chunks; took ${slow} ms`);
      proxy.setLatency(0);

      for (const mode of ['blackhole', 'reset'] as const) {
        proxy.partition(mode);
        t0 = performance.now();
        // etcd3 retries a failed call up to 3 times on its own: each with a 1 s deadline.
        await assert.rejects(viaProxy.get('/sslwall/p').string());
        const failedAfter = performance.now() - t0;
        assert.ok(failedAfter < 6_000, `${mode}: failed after ${Math.round(failedAfter)} ms`);
        proxy.heal();
        // grpc-js reconnects with backoff and etcd3's circuit breaker opens for 5 s after 3
        // failures: allow for both.
        t0 = performance.now();
        for (;;) {
          try {
            assert.equal(await viaProxy.get('/sslwall/p').string(), 'through');
            break;
          } catch (e) {
            if (performance.now() - t0 > 15_000) throw e;
            await new Promise((r) => setTimeout(r, 200));
          }
        }
        console.log(`${mode}: failed after ${Math.round(failedAfter)} ms, healed after ${Math.round(performance.now() - t0)} ms`);
      }
    });
  });

  describe('3-member cluster', () => {
    test('starts with a leader and survives losing it', async () => {
      const t0 = performance.now();
      cluster = await startEtcdCluster(3);
      console.log(`cluster started in ${Math.round(performance.now() - t0)} ms: ${cluster.endpoints.join(' ')}`);
      cleanups.push(() => cluster.destroy());
      ours.push(...cluster.members.map((m) => m.pid!));
      const kv = client(cluster.endpoints);
      cleanups.push(async () => kv.close());
      await kv.put('/sslwall/x').value('1');

      const leader = await cluster.leader();
      assert.ok(leader >= 0 && leader < 3);
      await cluster.kill(leader);
      assert.equal(cluster.liveEndpoints().length, 2);
      const t1 = performance.now();
      const next = await cluster.leader();
      console.log(`new leader m${next} after ${Math.round(performance.now() - t1)} ms`);
      assert.notEqual(next, leader);
      // The client still lists the dead endpoint; etcd3 retries the put on another host.
      await kv.put('/sslwall/x').value('2');
      assert.equal(await cluster.get('/sslwall/x'), '2');

      await cluster.restart(leader);
      ours.push(cluster.members[leader].pid!);
      // A serializable read answers from that member's own store: it caught up with the put.
      await waitFor('the restarted member to catch up', async () => {
        const r = await etcdctl([cluster.members[leader].endpoint], ['get', '--consistency=s', '--print-value-only', '/sslwall/x']);
        return r.stdout.trim() === '2';
      });
    });
  });

  test('freePort never hands out the same port twice in one process (an etcd needs two)', async () => {
    const ports: number[] = [];
    for (let i = 0; i < 300; i++) ports.push(await freePort());
    assert.equal(new Set(ports).size, ports.length);
  });

  test('a port the caller chose and another holds fails clearly, without a second try on other ports', async () => {
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const taken = (holder.address() as net.AddressInfo).port;
    try {
      await assert.rejects(startEtcd({ clientPort: taken }), /address already in use/);
    } finally {
      holder.close();
    }
  });

  test('destroy leaves nothing behind', async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await etcd.destroy(); // again: destroy is idempotent
    await cluster.destroy();
    const left = ourEtcdProcesses([etcd.dir, cluster.dir]);
    assert.equal(left.length, 0, `etcd processes of this test remain:\n${left.join('\n')}`);
    assert.equal(fs.existsSync(etcd.dir) || fs.existsSync(cluster.dir), false, 'temp dirs removed');
    for (const p of ours) assert.equal(pidAlive(p), false, `etcd pid ${p} is gone`);
    assert.ok(ours.length >= 6);
  });
});
