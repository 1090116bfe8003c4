// Least privilege in etcd, with etcd's auth on: `sslwall etcd setup` and `sslwall etcd provision`
// make the engine's and two hosts' users (client-certificate CNs) and roles; the real engine and
// two real agents in two tiers work end to end with them; then each credential tries, directly
// with etcd3, what its role must not allow, and etcd itself refuses it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Etcd3, EtcdPermissionDeniedError } from 'etcd3';
import { etcdNames } from '../../rollout/etcd-roles.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { engineKeys } from '../../schemas/keys.js';
import { type AgentEnv, AgentProc, agentEnv, runHost, sslwall } from '../../tools/lab/agent-proc.js';
import { makeCerts, makeHostCert } from '../../tools/lab/certs.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { EngineProc, type Keys, makeKeys } from '../../tools/lab/fleet.js';
import { createTestbed, type Side, type Testbed } from '../../tools/lab/netns.js';

const k = engineKeys();
const BASE = { mode: 'passive', bypass: { ports: [22] } };
const HOSTS = [
  { side: 'client' as Side, hostId: 'a1', tier: 'alpha' },
  { side: 'server' as Side, hostId: 'b1', tier: 'beta' },
];

describe('etcd with auth on: every credential holds only its grants', () => {
  let tb: Testbed;
  let etcd: EtcdServer;
  let keys: Keys;
  let engine: EngineProc | undefined;
  const agents: AgentProc[] = [];
  const envs: AgentEnv[] = [];
  const clients: Etcd3[] = [];
  let ca: string;
  let enginePw: string;
  const cert: Record<string, { cert: string; key: string }> = {};
  const as = (name: string) => {
    const c = createEtcdClient({ endpoints: [etcd.endpoint], cacert: ca, ...cert[name]! });
    clients.push(c);
    return c;
  };
  const admin = () => ['--etcd', etcd.endpoint, '--etcd-cacert', ca, '--etcd-cert', cert.root!.cert, '--etcd-key', cert.root!.key];
  const cli = async (args: string[]) => {
    const r = await runHost(args);
    assert.equal(r.code, 0, `sslwall ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  };
  const refused = async (what: string, call: () => Promise<unknown>) => {
    await assert.rejects(call, (err: unknown) => {
      assert.ok(err instanceof EtcdPermissionDeniedError, `${what}: expected etcd's permission denied, got ${String(err)}`);
      return true;
    });
  };

  before(async () => {
    tb = await createTestbed('etcd-auth');
    const certs = await makeCerts(tb.tempDir('certs'), { ips: ['127.0.0.1'] });
    ca = certs.caCert;
    const names = [etcdNames.root, etcdNames.engine, ...HOSTS.map((h) => etcdNames.hostUser(h.hostId)), etcdNames.hostUser('c1'), 'nobody'];
    for (const n of names) cert[n] = await makeHostCert(path.join(certs.dir, 'clients'), certs, n, []);
    etcd = await startEtcd({ tls: { caCert: ca, cert: certs.cert, key: certs.key, client: cert.root! } });
    keys = makeKeys();
    enginePw = path.join(tb.tempDir('pw'), 'engine.pw');
  });

  after(async () => {
    for (const a of agents) await a.stop();
    for (const env of envs) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    await engine?.stop();
    for (const c of clients) c.close();
    await etcd?.destroy();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    await tb?.destroy();
  });

  test('setup and provision are one command each, and running them again changes nothing', async () => {
    fs.writeFileSync(enginePw, 'engine-secret\n', { mode: 0o600 });
    assert.match(await cli(['etcd', 'setup', ...admin(), '--engine-password-file', enginePw]), /^auth on; created 2 role\(s\), 2 user\(s\)/);
    const hostsFile = path.join(tb.tempDir('hosts'), 'hosts.txt');
    fs.writeFileSync(hostsFile, '# host tier\nb1 beta\n');
    const first = JSON.parse(await cli(['etcd', 'provision', ...admin(), '--tier', 'alpha', '--host', 'a1', '--hosts-file', hostsFile, '--json']));
    // Two tier roles; per host a role with 3 grants and a user holding 2 roles.
    assert.deepEqual({ ...first, ms: 0 }, { roles: 4, users: 2, grants: 2 + 2 * 5, revoked: 0, hosts: 2, ms: 0 });
    const again = JSON.parse(await cli(['etcd', 'provision', ...admin(), '--tier', 'alpha', '--host', 'a1', '--hosts-file', hostsFile, '--json']));
    assert.deepEqual({ ...again, ms: 0 }, { roles: 0, users: 0, grants: 0, revoked: 0, hosts: 2, ms: 0 });
    // A host moved to another tier loses the old tier's role and its health and summary grants.
    await cli(['etcd', 'provision', ...admin(), '--tier', 'alpha', '--host', 'm1']);
    const moved = JSON.parse(await cli(['etcd', 'provision', ...admin(), '--tier', 'beta', '--host', 'm1', '--json']));
    assert.deepEqual({ roles: moved.roles, users: moved.users, grants: moved.grants, revoked: moved.revoked }, { roles: 0, users: 0, grants: 3, revoked: 3 });
    const roles = (await as(etcdNames.root).user(etcdNames.hostUser('m1')).roles()).map((r) => r.name).sort();
    assert.deepEqual(roles, [etcdNames.hostRole('m1'), etcdNames.tierRole('beta')]);
    assert.match(await cli(['etcd', 'setup', ...admin()]), /created 0 role\(s\), 0 user\(s\), 0 grant\(s\); revoked 0/);
  });

  test('the engine and two agents in two tiers work with only their grants', async () => {
    const tls = ['--etcd-cacert', ca, '--etcd-cert', cert[etcdNames.engine]!.cert, '--etcd-key', cert[etcdNames.engine]!.key];
    const e = await EngineProc.start([etcd.endpoint], keys, 'auth', tb.tempDir('engine'), { extra: tls });
    engine = e;
    for (const h of HOSTS) {
      const put = await e.api('PUT', `/api/tiers/${h.tier}/config`, { document: BASE, message: `${h.tier} first` });
      assert.equal(put.status, 201, `engine wrote ${h.tier}'s config: ${JSON.stringify(put.body)}`);
    }
    const ov = await e.api('PUT', '/api/hosts/b1/override', { mode: 'off', reason: 'etcd auth test' });
    assert.equal(ov.status, 201, `engine wrote b1's override: ${JSON.stringify(ov.body)}`);
    const cgroup2 = await tb.mountCgroup2();
    for (const h of HOSTS) {
      const env = await agentEnv(tb, h.side, cgroup2);
      envs.push(env);
      const bridge = await EtcdBridge.start(tb, h.side, etcd.clientPort);
      const c = cert[etcdNames.hostUser(h.hostId)]!;
      const agent = await AgentProc.start({ ...env, configFile: '' }, [
        ...['--etcd', bridge.url.replace('http://', 'https://'), '--tier', h.tier, '--host-id', h.hostId, '--verify-key', keys.verifyKey],
        ...['--etcd-cacert', ca, '--etcd-cert', c.cert, '--etcd-key', c.key],
      ]);
      agents.push(agent);
      const applied = await agent.waitFor((l) => l.event === 'config_applied' && l.tierVersion === 1, 15000, `${h.hostId} applies ${h.tier} v1`);
      assert.equal(applied.mode, h.hostId === 'b1' ? 'off' : 'passive', `${h.hostId} applies its tier and its own override`);
    }
    const deadline = Date.now() + 15000;
    for (;;) {
      const tiers = await e.api<Array<{ tier: string; agents: number }>>('GET', '/api/tiers');
      if (HOSTS.every((h) => tiers.body.find((t) => t.tier === h.tier)?.agents === 1)) break;
      assert.ok(Date.now() < deadline, `engine sees each agent's health under its tier: ${JSON.stringify(tiers.body)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // A rollout: the engine writes its state and a new version; a1 follows it.
    const ro = await e.api('POST', '/api/tiers/alpha/rollout', { stages: 'passive:100', bake: '1s' });
    assert.equal(ro.status, 201, `engine started a rollout: ${JSON.stringify(ro.body)}`);
    await agents[0]!.waitFor((l) => l.event === 'config_applied' && Number(l.tierVersion) >= 2, 15000, "a1 applies the rollout's stage");
    assert.equal(agents.flatMap((a) => a.lines().filter((l) => l.event === 'etcd_denied' || l.event === 'health_put_denied')).length, 0, 'no refusals');
  });

  test("an agent's credential reads its two keys, writes its health, and nothing else", async () => {
    const a1 = as(etcdNames.hostUser('a1'));
    assert.ok(await a1.get(k.tierConfig('alpha')).string(), 'reads its tier document');
    assert.equal(await a1.get(k.hostOverride('a1')).string(), null, 'reads its own (absent) override');
    const lease = a1.lease(10);
    await lease.put(k.health('alpha', 'a1')).value('{}');
    await lease.put(k.summary('alpha', 'a1')).value('{}');
    await lease.revoke();
    await refused("read another tier's document", () => a1.get(k.tierConfig('beta')).string());
    await refused("read another host's override", () => a1.get(k.hostOverride('b1')).string());
    await refused("read its tier's history", () => a1.getAll().prefix(k.historyPrefix('alpha')).keys());
    await refused("read its tier's rollout state", () => a1.get(k.rollout('alpha')).string());
    await refused('list the tiers', () => a1.getAll().prefix(k.tiersPrefix).keys());
    await refused("read another host's health", () => a1.get(k.health('beta', 'b1')).string());
    await refused('write its own tier document', () => a1.put(k.tierConfig('alpha')).value('{}').exec());
    await refused('write an override (its own)', () => a1.put(k.hostOverride('a1')).value('{}').exec());
    await refused("write another host's health", () => a1.put(k.health('beta', 'b1')).value('{}').exec());
    await refused("write another host's summary", () => a1.put(k.summary('alpha', 'b1')).value('{}').exec());
    await refused('write a health key for another host of its tier', () => a1.put(k.health('alpha', 'b1')).value('{}').exec());
    await refused('delete its tier document', () => a1.delete().key(k.tierConfig('alpha')).exec());
    await refused('write the leader key', () => a1.put(k.leader).value('a1').exec());
    await refused('write an alert', () => a1.put(k.alert('alpha', 'x')).value('{}').exec());
  });

  test("the engine's credential writes what it owns and cannot write health", async () => {
    const e = as(etcdNames.engine);
    assert.ok((await e.getAll().prefix(k.historyPrefix('alpha')).keys()).length >= 1, 'reads history');
    assert.ok((await e.getAll().prefix(k.healthPrefix('beta')).keys()).length >= 1, 'reads health');
    await e.put(k.alert('alpha', 'etcd-auth-test')).value('{}').exec();
    await e.delete().key(k.alert('alpha', 'etcd-auth-test')).exec();
    await refused("write an agent's health", () => e.put(k.health('alpha', 'a1')).value('{}').exec());
    await refused("write an agent's summary", () => e.put(k.summary('alpha', 'a1')).value('{}').exec());
    await refused('write outside the prefix', () => e.put('/other/key').value('x').exec());
    await refused('manage users', () => e.user('sneaky').create('pw'));
    // The same user by password (a client whose certificate's CN is no user: the token wins).
    const byPw = createEtcdClient({ endpoints: [etcd.endpoint], cacert: ca, ...cert.nobody!, user: etcdNames.engine, passwordFile: enginePw });
    clients.push(byPw);
    assert.ok((await byPw.getAll().prefix(k.historyPrefix('alpha')).keys()).length >= 1, 'the engine user by password reads history');
    await refused("the engine user by password writes an agent's health", () => byPw.put(k.health('alpha', 'a1')).value('{}').exec());
    const badPw = path.join(path.dirname(enginePw), 'wrong.pw');
    fs.writeFileSync(badPw, 'wrong');
    const wrong = createEtcdClient({ endpoints: [etcd.endpoint], cacert: ca, ...cert.nobody!, user: etcdNames.engine, passwordFile: badPw });
    clients.push(wrong);
    await assert.rejects(wrong.get(k.tierConfig('alpha')).string(), /authentication failed/i, 'a wrong password is refused');
  });

  test('a client without a known user is refused; without a certificate it cannot connect', async () => {
    await refused('a certificate whose CN is no etcd user', () => as('nobody').get(k.tierConfig('alpha')).string());
    const noCert = createEtcdClient({ endpoints: [etcd.endpoint], cacert: ca });
    clients.push(noCert);
    await assert.rejects(noCert.get(k.tierConfig('alpha')).string(), 'a client without a certificate is refused');
  });

  test('an unprovisioned agent logs SSLWALL_E_ETCD_DENIED with the command that provisions it', async () => {
    // In a1's place (its namespace and pins), a1 stopped: a host whose user was never provisioned.
    const env = envs[0]!;
    await agents[0]!.stop();
    const bridge = await EtcdBridge.start(tb, env.side, etcd.clientPort);
    const c = cert[etcdNames.hostUser('c1')]!;
    const agent = await AgentProc.start({ ...env, configFile: '', stateDir: path.join(tb.tempDir('c1'), 'state') }, [
      ...['--etcd', bridge.url.replace('http://', 'https://'), '--tier', 'alpha', '--host-id', 'c1', '--verify-key', keys.verifyKey],
      ...['--etcd-cacert', ca, '--etcd-cert', c.cert, '--etcd-key', c.key],
    ]);
    agents.push(agent);
    const line = await agent.waitFor((l) => l.event === 'etcd_denied', 15000, 'etcd_denied');
    assert.equal(line.code, 'SSLWALL_E_ETCD_DENIED');
    assert.match(String(line.err), /sslwall-tier-alpha .*sslwall-host-c1 .*sslwall etcd provision --etcd URL --tier alpha --host c1/);
  });
});
