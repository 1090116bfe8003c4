// The fleet simulator (`sslwall simulate`, tools/simulate/) on a real etcd: 200 agents in 2 worker
// processes report health under leases; signed versions propagate, cohorts match agent/cohort.ts,
// unsigned documents are refused, a share of agents fails to apply, the watch resumes after a
// partition and reads again after a compaction, a share of agents dies and its keys expire, and
// SIGTERM leaves no health key and no worker behind.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Etcd3 } from 'etcd3';
import { generateKeyPair, Signer } from '../../rollout/signing.js';
import { cohortBucket, inCohort } from '../../schemas/cohort.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { type Health, HealthSchema } from '../../schemas/tier.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { type FaultProxy, startFaultProxy } from '../../tools/lab/faultproxy.js';
import { pidAlive, waitFor } from '../../tools/lab/proc.js';
import { hostId, simPicked } from '../../tools/simulate/shared.js';

const TIER = 'sim';
const N = 200;
const SALT = 'salt-sim';
const keys = etcdKeys('/sslwall/');
const MAIN = fileURLToPath(new URL('../../tools/simulate/main.js', import.meta.url));
const hosts = Array.from({ length: N }, (_, i) => hostId('t-', i));

function tierDoc(version: number, percent: number, bypassPorts: number[] = [22]) {
  return {
    kind: 'tier' as const,
    tier: TIER,
    version,
    config: { mode: 'off' as const, bypass: { ports: bypassPorts }, starttls: { smtp: [25] } },
    rollout: { mode: 'active' as const, percent, otherwise: 'passive' as const, salt: SALT },
  };
}

/** A running simulator: its stdout stats lines, stderr, and the worker pids it logged. */
class Sim {
  // biome-ignore lint/suspicious/noExplicitAny: the simulator's stats lines, read field by field by each test
  readonly lines: Array<Record<string, any>> = [];
  stderr = '';
  private exit: Promise<number | null>;
  constructor(readonly proc: ChildProcess) {
    let buf = '';
    proc.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        this.lines.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    });
    proc.stderr!.on('data', (b: Buffer) => (this.stderr += b.toString()));
    this.exit = new Promise((r) => proc.on('exit', (code) => r(code)));
  }
  static start(args: string[]): Sim {
    return new Sim(spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  }
  // biome-ignore lint/suspicious/noExplicitAny: as above
  get last(): Record<string, any> | undefined {
    return this.lines[this.lines.length - 1];
  }
  workerPids(): number[] {
    return [...new Set([...this.stderr.matchAll(/worker (\d+)/g)].map((m) => Number(m[1])))];
  }
  async stop(): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 30_000);
    const code = await this.exit;
    clearTimeout(t);
    return code;
  }
  kill(): void {
    for (const pid of this.workerPids()) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}

describe('sslwall simulate', () => {
  let etcd: EtcdServer;
  let proxy: FaultProxy;
  let client: Etcd3;
  let dir: string;
  let signer: Signer;
  let keysDir: string; // the agents' --verify-key folder: rotated under the running fleet
  let sim: Sim | undefined;
  const sims: Sim[] = [];

  before(async () => {
    etcd = await startEtcd();
    proxy = await startFaultProxy({ host: '127.0.0.1', port: etcd.clientPort });
    client = createEtcdClient({ endpoints: etcd.endpoints });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-sim-'));
    const kp = generateKeyPair(dir);
    signer = Signer.fromFile(kp.signingKey);
    keysDir = path.join(dir, 'agent-keys');
    fs.mkdirSync(keysDir);
    fs.copyFileSync(kp.verifyKey, path.join(keysDir, 'old.pub'));
  });

  after(async () => {
    for (const s of sims) {
      await s.stop().catch(() => undefined);
      s.kill();
    }
    client?.close();
    await proxy?.close();
    await etcd?.destroy();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  async function putSigned(doc: ReturnType<typeof tierDoc>, by = signer): Promise<number> {
    const r = await client.put(keys.tierConfig(TIER)).value(JSON.stringify(by.sign(doc)));
    return Number(r.header.revision);
  }

  async function health(): Promise<Map<string, Health>> {
    const all = await client.getAll().prefix(keys.healthPrefix(TIER)).strings();
    const out = new Map<string, Health>();
    for (const [k, v] of Object.entries(all)) {
      const h = HealthSchema.parse(JSON.parse(v));
      assert.equal(k, keys.health(TIER, h.hostId));
      out.set(h.hostId, h);
    }
    return out;
  }

  /** Wait until every listed host's health satisfies pred; returns the last read. */
  async function waitHealth(
    what: string,
    pred: (h: Health | undefined, host: string) => boolean,
    timeoutMs = 20_000,
    of = hosts,
  ): Promise<Map<string, Health>> {
    let last = new Map<string, Health>();
    await waitFor(
      what,
      async () => {
        last = await health();
        return of.every((h) => pred(last.get(h), h));
      },
      {
        timeoutMs,
        intervalMs: 250,
        explain: () => {
          const bad = of.filter((h) => !pred(last.get(h), h));
          return `${bad.length} host(s) not there, e.g. ${bad[0]}: ${JSON.stringify(last.get(bad[0]!) ?? null)}\nlast stats: ${JSON.stringify(sim?.last)}\nstderr: ${sim?.stderr.slice(-2000)}`;
        },
      },
    );
    return last;
  }

  const failing = hosts.filter((h) => simPicked('error', h, 10));
  const healthy = hosts.filter((h) => !failing.includes(h));

  test('200 agents in 2 processes report the signed version, with the exact health shape and the cohort of agent/cohort.ts', async () => {
    assert.ok(failing.length > 5 && failing.length < 40, `about 10% picked to fail: ${failing.length}`);
    await putSigned(tierDoc(1, 30));
    sim = Sim.start([
      '--etcd',
      proxy.url,
      '--tier',
      TIER,
      '--agents',
      String(N),
      '--processes',
      '2',
      '--verify-key',
      keysDir,
      '--host-prefix',
      't-',
      '--error-percent',
      '10',
      '--error-from-version',
      '2',
      '--stats-interval',
      '250',
    ]);
    sims.push(sim);
    const hs = await waitHealth('all 200 agents on version 1', (h) => h?.configVersion === 1);
    const shape = Object.keys(HealthSchema.shape).sort();
    for (const host of hosts) {
      const h = hs.get(host)!;
      assert.deepEqual(Object.keys(h).sort(), shape, 'exactly the fields of HealthSchema');
      assert.equal(h.inCohort, inCohort(host, SALT, 30), `${host} cohort`);
      assert.equal(h.bucket, cohortBucket(host, SALT));
      assert.equal(h.mode, h.inCohort ? 'active' : 'passive');
      assert.equal(h.lastError, null);
      assert.equal(h.tier, TIER);
    }
    assert.ok([...hs.values()].some((h) => h.inCohort) && [...hs.values()].some((h) => !h.inCohort));
    await waitFor('a stats line with every agent applied and watching', () => sim!.last?.applied?.['1'] === N && sim!.last?.connected === N, {
      timeoutMs: 10_000,
    });
    const line = sim.last!;
    assert.equal(line.agents, N);
    assert.equal(line.alive, N);
    assert.equal(line.errors, 0);
    assert.equal(typeof line.lastChangeAppliedMs['1'], 'number');
    assert.equal(sim.workerPids().length, 2);
  });

  test('a new version reaches every agent; the ~10% picked to fail keep the old one with SSLWALL_E_BPF', async () => {
    const rev = await putSigned(tierDoc(2, 60, [22, 2222]));
    await waitHealth('version 2 applied, or refused with SSLWALL_E_BPF', (h, host) =>
      failing.includes(host)
        ? h?.lastError?.code === 'SSLWALL_E_BPF' && h.configVersion === 1 && h.lastError.revision === rev
        : h?.configVersion === 2 && h.lastError === null,
    );
    const hs = await health();
    for (const host of healthy) assert.equal(hs.get(host)!.inCohort, inCohort(host, SALT, 60));
    await waitFor('stats: errors counted', () => sim!.last?.errors === failing.length && sim!.last?.applied?.['2'] === healthy.length, { timeoutMs: 5000 });
    assert.deepEqual(sim!.last!.errorCodes, { SSLWALL_E_BPF: failing.length });
    assert.equal(typeof sim!.last!.lastChangeAppliedMs['2'], 'number');
    // Back to version 1's config and percent as version 3: nothing to change in the failing agents'
    // kernel,
    // so they take it too (as the real agent does when the config in force is unchanged).
    await putSigned(tierDoc(3, 30));
    await waitHealth('version 3 everywhere', (h) => h?.configVersion === 3 && h.lastError === null);
  });

  test('an unsigned document is refused by every agent: SSLWALL_E_CONFIG_SIGNATURE, version unchanged', async () => {
    const r = await client.put(keys.tierConfig(TIER)).value(JSON.stringify(tierDoc(4, 100)));
    const rev = Number(r.header.revision);
    await waitHealth(
      'unsigned version 4 refused',
      (h) => h?.configVersion === 3 && h.lastError?.code === 'SSLWALL_E_CONFIG_SIGNATURE' && h.lastError.revision === rev,
    );
  });

  test('after a partition the watches resume; after a compaction they read again (relists)', async () => {
    // A short break, no compaction: resumed from the last revision, nothing read again.
    proxy.partition('reset');
    await waitFor('every agent to see the break', () => sim!.last?.connected === 0, { timeoutMs: 10_000, explain: () => JSON.stringify(sim!.last) });
    await putSigned(tierDoc(5, 30));
    proxy.heal();
    await waitHealth('version 5 after the break', (h) => h?.configVersion === 5 && h.lastError === null);
    await waitFor('reconnects counted', () => (sim!.last?.reconnects ?? 0) >= N, { timeoutMs: 5000 });
    assert.equal(sim!.last!.relists, 0);
    // Now the revisions missed during the break are compacted away: every agent reads again.
    proxy.partition('reset');
    await waitFor('every agent to see the break', () => sim!.last?.connected === 0, { timeoutMs: 10_000, explain: () => JSON.stringify(sim!.last) });
    await putSigned(tierDoc(6, 30));
    await putSigned(tierDoc(7, 30));
    await etcd.compact();
    proxy.heal();
    await waitHealth('version 7 after the compaction', (h) => h?.configVersion === 7);
    await waitFor('every agent relisted once', () => sim!.last?.relists === N && sim!.last?.connected === N, {
      timeoutMs: 10_000,
      explain: () => JSON.stringify(sim!.last),
    });
  });

  test('the signing key rotates under the running fleet: new key added, used, old key removed', async () => {
    const next = generateKeyPair(path.join(dir, 'next'));
    const nextSigner = Signer.fromFile(next.signingKey);
    fs.copyFileSync(next.verifyKey, path.join(keysDir, 'next.pub'));
    await putSigned(tierDoc(8, 30), nextSigner);
    await waitHealth('version 8, signed by the new key, everywhere', (h) => h?.configVersion === 8 && h.lastError === null);
    fs.rmSync(path.join(keysDir, 'old.pub'));
    const rev = await putSigned(tierDoc(9, 30));
    await waitHealth(
      'version 9, signed by the removed key, refused everywhere',
      (h) => h?.configVersion === 8 && h.lastError?.code === 'SSLWALL_E_CONFIG_SIGNATURE' && h.lastError.revision === rev,
    );
    await putSigned(tierDoc(10, 30), nextSigner);
    await waitHealth('version 10 everywhere', (h) => h?.configVersion === 10 && h.lastError === null);
  });

  test('SIGTERM: every lease revoked (no health key left), workers gone, exit 0', async () => {
    const pids = sim!.workerPids();
    assert.equal(await sim!.stop(), 0);
    // Revoked, not expired: every key is gone the moment the simulator has exited (a key left
    // by a revoke that did not land would stay for the whole TTL).
    assert.deepEqual([...(await health()).keys()], [], 'no health key outlives a clean stop');
    assert.match(
      sim!.stderr,
      new RegExp(`stopped, ${N / 2} lease\\(s\\) revoked[\\s\\S]*stopped, ${N / 2} lease\\(s\\) revoked`),
      'every worker revoked every lease',
    );
    const leases = await client.leaseClient.leaseLeases();
    assert.deepEqual(leases.leases, [], 'no lease left in etcd');
    for (const pid of pids) assert.equal(pidAlive(pid), false, `worker ${pid} still running`);
    sim = undefined;
  });

  test('--die-percent 10 --die-after 5: those agents stop renewing and their keys expire by TTL; the rest stay', async () => {
    await client.put(keys.tierConfig(TIER)).value(JSON.stringify(tierDoc(8, 50)));
    const dying = hosts.filter((h) => simPicked('die', h, 10));
    const living = hosts.filter((h) => !dying.includes(h));
    assert.ok(dying.length > 5 && dying.length < 40, `about 10% picked to die: ${dying.length}`);
    const t0 = Date.now();
    sim = Sim.start([
      '--etcd',
      etcd.endpoint,
      '--tier',
      TIER,
      '--agents',
      String(N),
      '--processes',
      '2',
      '--insecure-unsigned',
      '--host-prefix',
      't-',
      '--die-percent',
      '10',
      '--die-after',
      '5',
      '--stats-interval',
      '250',
    ]);
    sims.push(sim);
    // Poll from the start: when each dying host's key was last seen (some may die before their
    // first write lands; a write in flight at death still lands and then expires).
    const lastSeen = new Map<string, number>();
    await waitHealth(
      'the living up and the dying gone',
      (h, host) => {
        if (dying.includes(host)) {
          if (h) lastSeen.set(host, Date.now());
          return h === undefined && Date.now() > t0 + 5000;
        }
        return h?.configVersion === 8;
      },
      20_000,
    );
    // 5 s, not less: under load 200 agents may take seconds to write their first health key.
    const diedAt = t0 + 5000;
    const gone = Date.now() - diedAt;
    assert.ok(gone <= 13_000, `every dying agent's key gone ${gone} ms after they died (TTL 10 s)`);
    const seenAfterDeath = [...lastSeen.values()].filter((t) => t > diedAt + 4000);
    assert.ok(seenAfterDeath.length > 0, 'keys outlive their agents by seconds: expired by TTL, not revoked');
    await waitFor('stats: alive excludes the dead', () => sim!.last?.alive === living.length, { timeoutMs: 5000 });
    const pids = sim.workerPids();
    assert.equal(await sim.stop(), 0);
    assert.deepEqual(await health(), new Map());
    for (const pid of pids) assert.equal(pidAlive(pid), false);
    sim = undefined;
  });
});
