// What an attacker with write access to etcd (but not the engine's signing key) or one
// compromised agent can try, against a real etcd, the real agent (a process in a namespace of
// its own) and the engine's own store and health cache: a replayed old signed head (also across
// an agent restart), a tier document copied to another tier, an override copied to another host
// or written back after its removal, an invalid override beside a new tier version, key rotation under a running agent, a health body that
// claims another tier or host, an oversized health string, and a history record overwritten.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Etcd3 } from 'etcd3';
import pino from 'pino';
import { HealthCache } from '../../rollout/health-cache.js';
import { generateKeyPair, Signer } from '../../rollout/signing.js';
import { ConfigStore } from '../../rollout/store.js';
import { ConfigSchema } from '../../schemas/config.js';
import { SslwallError } from '../../schemas/errors.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { engineKeys } from '../../schemas/keys.js';
import { type Health, HealthSchema } from '../../schemas/tier.js';
import { type AgentEnv, AgentProc, agentEnv, kernelMode, type LogLine, sslwall } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { waitFor } from '../../tools/lab/proc.js';

const TIER = 'web';
const OTHER_TIER = 'db';
const HOST = 'host-0001';
const OTHER_HOST = 'host-0002';
const keys = engineKeys('/sslwall/');
const BASE = ConfigSchema.parse({ mode: 'off', bypass: { ports: [22] }, starttls: { smtp: [25] } });
const rollout = (mode: 'passive' | 'active') => ({ mode, percent: 100, otherwise: 'off' as const, salt: 'salt-a' });

describe('trust: signatures bound to their place and time, health trusted by its key', () => {
  let tb: Testbed;
  let etcd: EtcdServer;
  let client: Etcd3;
  let bridge: EtcdBridge;
  let env: AgentEnv;
  let agent: AgentProc | undefined;
  let agentKeys: string; // the folder the agent reads its verify keys from
  let oldKey: ReturnType<typeof generateKeyPair>;
  let newKey: ReturnType<typeof generateKeyPair>;
  let store: ConfigStore; // the engine's store, signing with the old key until the rotation
  let cache: HealthCache | undefined;

  before(async () => {
    tb = await createTestbed('trust');
    etcd = await startEtcd();
    client = createEtcdClient({ endpoints: etcd.endpoints });
    bridge = await EtcdBridge.start(tb, 'client', etcd.clientPort);
    env = await agentEnv(tb, 'client', await tb.mountCgroup2());
    oldKey = generateKeyPair(tb.tempDir('old-key'));
    newKey = generateKeyPair(tb.tempDir('new-key'));
    agentKeys = tb.tempDir('agent-keys');
    fs.copyFileSync(oldKey.verifyKey, path.join(agentKeys, 'old.pub'));
    store = new ConfigStore(client, keys, Signer.fromFile(oldKey.signingKey));
  });

  after(async () => {
    await cache?.stop();
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    client?.close();
    await etcd?.destroy();
    await tb?.destroy();
  });

  const startAgent = () => AgentProc.start({ ...env, configFile: '' }, ['--etcd', bridge.url, '--tier', TIER, '--host-id', HOST, '--verify-key', agentKeys]);

  // A refusal names the document's mod revision in its message (the line's revision is the snapshot's).
  const refusedAt = (modRevision: number) => (l: LogLine) => l.event === 'config_refused' && String(l.err).includes(`@${modRevision} `);
  const applied = (version: number) => (l: LogLine) => l.event === 'config_applied' && l.tierVersion === version;

  async function health(): Promise<Health> {
    let last: string | null = null;
    await waitFor('a health report', async () => {
      last = await client.get(keys.health(TIER, HOST)).string();
      return last !== null;
    });
    return HealthSchema.parse(JSON.parse(last!));
  }

  async function waitHealth(pred: (h: Health) => boolean, what: string): Promise<Health> {
    let last: Health | undefined;
    await waitFor(
      what,
      async () => {
        last = await health();
        return pred(last);
      },
      { timeoutMs: 8000, explain: () => JSON.stringify(last) },
    );
    return last!;
  }

  async function putRaw(key: string, value: string): Promise<number> {
    return Number((await client.put(key).value(value)).header.revision);
  }

  /** A refusal with its code, in the log and in health, and the kernel still on `mode`. */
  async function expectRefused(revision: number, code: string, mode: string, configVersion: number): Promise<LogLine> {
    const line = await agent!.waitFor(refusedAt(revision), 8000, `${code} at revision ${revision}`);
    assert.equal(line.code, code, `refusal code: ${String(line.err)}`);
    await waitHealth((h) => h.lastError?.code === code && h.lastError.message.includes(`@${revision} `), `health lastError ${code}@${revision}`);
    assert.equal(kernelMode(env.bpffs), mode, 'the config in force stays');
    assert.equal((await health()).configVersion, configVersion, 'health names the version in force');
    return line;
  }

  test('what the engine signs names its kind, its tier and its version; the agent applies it', async () => {
    await store.write(TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: 'v1' });
    const head = JSON.parse((await client.get(keys.tierConfig(TIER)).string())!) as Record<string, unknown>;
    assert.equal(head.kind, 'tier');
    assert.equal(head.tier, TIER);
    assert.equal(head.version, 1);
    assert.equal((head.signature as { keyId: string }).keyId, oldKey.keyId);
    agent = await startAgent();
    await agent.waitFor(applied(1), 8000, 'v1 applied');
    assert.equal(kernelMode(env.bpffs), 'passive');
  });

  test('a replayed old signed head is refused (SSLWALL_E_CONFIG_REPLAY), also after an agent restart; the same version again is fine', async () => {
    const v1 = await client.get(keys.tierConfig(TIER)).string();
    await store.write(TIER, { config: BASE, rollout: rollout('active') }, { author: 'test', message: 'v2' });
    await agent!.waitFor(applied(2), 8000, 'v2 applied');
    assert.equal(kernelMode(env.bpffs), 'active');
    const v2 = (await client.get(keys.tierConfig(TIER)).string())!;

    const replay = await putRaw(keys.tierConfig(TIER), v1!);
    const line = await expectRefused(replay, 'SSLWALL_E_CONFIG_REPLAY', 'active', 2);
    assert.match(String(line.err), /has version 1, older than version 2 this agent has applied/);

    // The restart reads the replayed head first thing: the highest version came back from the last good state.
    await agent!.stop();
    agent = await startAgent();
    await expectRefused(replay, 'SSLWALL_E_CONFIG_REPLAY', 'active', 2);

    const again = await putRaw(keys.tierConfig(TIER), v2);
    await agent.waitFor((l) => l.event === 'config_applied' && l.revision === again, 8000, 'v2 written again is accepted');
    await waitHealth((h) => h.lastError === null && h.configVersion === 2, 'no error once v2 is back');
  });

  test('a tier document copied to another tier is refused (SSLWALL_E_CONFIG_MISPLACED)', async () => {
    // Another tier's document, validly signed, with a higher version than web's: only its place gives it away.
    for (let i = 0; i < 3; i++) await store.write(OTHER_TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: `db ${i}` });
    const db = (await client.get(keys.tierConfig(OTHER_TIER)).string())!;
    assert.equal((JSON.parse(db) as { version: number }).version, 3);
    const copied = await putRaw(keys.tierConfig(TIER), db);
    const line = await expectRefused(copied, 'SSLWALL_E_CONFIG_MISPLACED', 'active', 2);
    assert.match(String(line.err), /was signed for tier db, not web/);
  });

  test("an override copied to another host, or written back after its removal, is refused; the host's own applies", async () => {
    await store.setOverride(OTHER_HOST, { mode: 'off', reason: 'maintenance of the other host' }, 'test');
    const theirs = (await client.get(keys.hostOverride(OTHER_HOST)).string())!;
    // The tier head is still db's copy: write web again so the override is judged on a good head.
    const v = await store.write(TIER, { config: BASE, rollout: rollout('active') }, { author: 'test', message: 'web again' });
    await agent!.waitFor(applied(v.version), 8000, `v${v.version} applied`);
    const copied = await putRaw(keys.hostOverride(HOST), theirs);
    const line = await expectRefused(copied, 'SSLWALL_E_CONFIG_MISPLACED', 'active', v.version);
    assert.match(String(line.err), /was signed for host host-0002, not host-0001/);

    const mine = await store.setOverride(HOST, { mode: 'passive', reason: 'test' }, 'test');
    await agent!.waitFor((l) => l.event === 'config_applied' && l.overrideVersion === mine!.version, 8000, 'own override applied');
    assert.equal(kernelMode(env.bpffs), 'passive');
    const mineRaw = (await client.get(keys.hostOverride(HOST)).string())!;
    await store.setOverride(HOST, null, 'test');
    await agent!.waitFor((l) => l.event === 'config_applied' && l.reason === 'override_delete', 8000, 'override removed');
    assert.equal(kernelMode(env.bpffs), 'active');
    // A new override after the removal has a higher version (the engine keeps the highest it wrote)...
    const next = await store.setOverride(HOST, { mode: 'passive', reason: 'again' }, 'test');
    assert.ok(next!.version > mine!.version, `override versions grow across removals: ${mine!.version} then ${next!.version}`);
    await agent!.waitFor((l) => l.event === 'config_applied' && l.overrideVersion === next!.version, 8000, 'new override applied');
    await store.setOverride(HOST, null, 'test');
    await agent!.waitFor((l) => l.event === 'config_applied' && l.reason === 'override_delete' && l.overrideVersion === null, 8000, 'removed');
    // ...and the old one written back is a replay, though no override is in force now.
    const replay = await putRaw(keys.hostOverride(HOST), mineRaw);
    await expectRefused(replay, 'SSLWALL_E_CONFIG_REPLAY', 'active', v.version);
    await client.delete().key(keys.hostOverride(HOST));
  });

  test('an invalid override never freezes the host: the next tier version still applies, the override in force stays, the refusal is reported', async () => {
    const mine = await store.setOverride(HOST, { mode: 'passive', reason: 'test' }, 'test');
    await agent!.waitFor((l) => l.event === 'config_applied' && l.overrideVersion === mine!.version, 8000, 'own override applied');
    const garbage = await putRaw(keys.hostOverride(HOST), '{"kind": "override", not json');
    await expectRefused(garbage, 'SSLWALL_E_CONFIG_INVALID', 'passive', (await health()).configVersion!);
    const v = await store.write(
      TIER,
      { config: { ...BASE, bypass: { ...BASE.bypass, ports: [22, 2222] } }, rollout: rollout('active') },
      { author: 'test', message: 'next' },
    );
    const line = await agent!.waitFor(applied(v.version), 8000, `v${v.version} applied beside the refused override`);
    assert.equal(line.overrideVersion, mine!.version, 'the override in force stays');
    assert.equal(kernelMode(env.bpffs), 'passive');
    const h = await waitHealth((x) => x.configVersion === v.version, `health on v${v.version}`);
    assert.equal(h.lastError?.code, 'SSLWALL_E_CONFIG_INVALID', 'the refused override is still reported');
    await client.delete().key(keys.hostOverride(HOST));
    await waitHealth((x) => x.overrideVersion === null && x.lastError === null, 'override removed, nothing refused');
    assert.equal(kernelMode(env.bpffs), 'active');
  });

  test('the signing key rotates under a running agent: the new key counts once the agent has it, the removed one is refused', async () => {
    const newStore = new ConfigStore(client, keys, Signer.fromFile(newKey.signingKey));
    // Step 1 skipped on purpose: signed by a key the agent does not have yet, refused.
    const early = await newStore.write(TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: 'too early' });
    const before = (await health()).configVersion!;
    await expectRefused(early.revision, 'SSLWALL_E_CONFIG_SIGNATURE', 'active', before);

    // 1. Add the new key to the agent (it reads the folder again at the next document).
    fs.copyFileSync(newKey.verifyKey, path.join(agentKeys, 'new.pub'));
    // 2. The engine signs with the new key.
    const v = await newStore.write(TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: 'new key' });
    await agent!.waitFor(applied(v.version), 8000, 'signed by the new key: applied');
    assert.equal(kernelMode(env.bpffs), 'passive');
    // 3. Remove the old key: a document it signed is refused from then on.
    fs.rmSync(path.join(agentKeys, 'old.pub'));
    const stale = await store.write(TIER, { config: BASE, rollout: rollout('active') }, { author: 'test', message: 'old key' });
    const line = await expectRefused(stale.revision, 'SSLWALL_E_CONFIG_SIGNATURE', 'passive', v.version);
    assert.match(String(line.err), new RegExp(`signed with key ${oldKey.keyId}, not with ${newKey.keyId}`));
    const after = await newStore.write(TIER, { config: BASE, rollout: rollout('active') }, { author: 'test', message: 'new key again' });
    await agent!.waitFor(applied(after.version), 8000, 'the new key goes on working');
    store = newStore;
  });

  test('health is trusted by its key: a body claiming another tier or host is dropped and counted; an oversized string is refused', async () => {
    const log = pino({ level: 'silent' });
    cache = new HealthCache(client, `${keys.prefix}health/`, log);
    cache.start();
    const real = await health();
    await waitFor('the real agent in the cache', () => cache!.tier(TIER).some((h) => h.hostId === HOST));
    const count = async (reason: string) => (await cache!.rejected.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;

    const liar = { ...real, hostId: 'liar-1' };
    await client.put(keys.health(TIER, 'liar-1')).value(JSON.stringify(liar));
    await waitFor('an honest report of liar-1 accepted', () => cache!.tier(TIER).some((h) => h.hostId === 'liar-1'));
    // A compromised agent speaks for another tier (steering db's rollout) and for another host.
    await client.put(keys.health(TIER, 'liar-1')).value(JSON.stringify({ ...liar, tier: OTHER_TIER }));
    await waitFor('a report naming another tier dropped', async () => (await count('misplaced')) === 1);
    assert.equal(cache.tier(OTHER_TIER).length, 0, 'db has no agent: the report does not count for it');
    assert.ok(!cache.tier(TIER).some((h) => h.hostId === 'liar-1'), 'and the liar counts as missing in web');
    await client.put(keys.health(TIER, 'liar-1')).value(JSON.stringify({ ...liar, hostId: HOST }));
    await waitFor('a report naming another host dropped', async () => (await count('misplaced')) === 2);
    assert.equal(cache.tier(TIER).find((h) => h.hostId === HOST)?.agentVersion, real.agentVersion, 'the real host keeps its own report');

    const huge = { ...liar, lastError: { code: 'SSLWALL_E_BPF', message: 'x'.repeat(1_000_000), revision: null, at: new Date().toISOString() } };
    assert.equal(HealthSchema.safeParse(huge).success, false, 'the schema bounds every string');
    await client.put(keys.health(TIER, 'liar-1')).value(JSON.stringify(huge));
    await waitFor('an oversized report dropped', async () => (await count('invalid')) === 1);
    await client.put(keys.health(TIER, 'liar-1')).value(JSON.stringify({ ...liar, agentVersion: 'v'.repeat(100) }));
    await waitFor('an oversized agentVersion dropped', async () => (await count('invalid')) === 2);
    assert.ok(!cache.tier(TIER).some((h) => h.hostId === 'liar-1'));
    await client.delete().key(keys.health(TIER, 'liar-1'));
  });

  test('a history record cannot be overwritten: a record written meanwhile makes the write fail, and nothing changes', async () => {
    const head = (await store.head(TIER))!;
    const next = head.doc.version + 1;
    const planted = JSON.stringify({ planted: true });
    // Someone writes the record of the next version between the store's reads and its transaction.
    const racing = new Proxy(client, {
      get(target, prop, receiver) {
        if (prop !== 'if') return Reflect.get(target, prop, receiver);
        return (...args: Parameters<Etcd3['if']>) => {
          const txn = target.if(...args);
          const commit = txn.commit.bind(txn);
          txn.commit = async () => {
            await target.put(keys.history(TIER, next)).value(planted);
            return commit();
          };
          return txn;
        };
      },
    });
    const raced = new ConfigStore(racing, keys, Signer.fromFile(newKey.signingKey));
    await assert.rejects(
      raced.write(TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: 'would overwrite' }),
      (e: unknown) => e instanceof SslwallError && e.code === 'SSLWALL_E_CONFLICT' && /history is write-once/.test(e.message),
    );
    assert.equal(await client.get(keys.history(TIER, next)).string(), planted, 'the existing record is untouched');
    assert.equal((await store.head(TIER))!.modRevision, head.modRevision, 'the head is untouched');
    await client.delete().key(keys.history(TIER, next));
  });

  test('a head written back with an older version does not make the engine reuse a version: history stays as written', async () => {
    const head = (await store.head(TIER))!;
    const records = await store.history(TIER);
    await client.put(keys.tierConfig(TIER)).value(JSON.stringify(records[0]!.document)); // version 1 again
    const rec = await store.write(TIER, { config: BASE, rollout: rollout('passive') }, { author: 'test', message: 'after the replay' });
    const newest = Math.max(head.doc.version, ...records.map((r) => r.version));
    assert.equal(rec.version, newest + 1, 'the version follows the history, not the replayed head');
    assert.deepEqual((await store.history(TIER)).slice(0, records.length), records, 'no record was rewritten');
    await agent!.waitFor(applied(rec.version), 8000, 'the agent takes the new version');
  });
});
