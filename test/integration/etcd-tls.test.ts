// The agent talks to an etcd that requires TLS with client certificates (--etcd-cacert,
// --etcd-cert, --etcd-key); without a client certificate etcd refuses the connection.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createEtcdClient } from '../../schemas/etcd.js';
import { etcdKeys } from '../../schemas/keys.js';
import { type AgentEnv, AgentProc, agentEnv, sslwall } from '../../tools/lab/agent-proc.js';
import { type Certs, makeCerts, makeHostCert } from '../../tools/lab/certs.js';
import { freePort } from '../../tools/lab/etcd.js';
import { EtcdBridge } from '../../tools/lab/etcd-bridge.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';
import { Proc } from '../../tools/lab/proc.js';

describe('agent on an etcd with mutual TLS', () => {
  let tb: Testbed;
  let certs: Certs;
  let etcd: Proc;
  let port: number;
  let env: AgentEnv;
  let agent: AgentProc | undefined;
  let client: ReturnType<typeof createEtcdClient>;
  const clientCert = () => ({ cert: path.join(certs.dir, 'client.crt'), key: path.join(certs.dir, 'client.key') });

  before(async () => {
    tb = await createTestbed('etcd-tls');
    certs = await makeCerts(tb.tempDir('certs'), { ips: ['127.0.0.1'] });
    // A client certificate of the same CA (makeHostCert's carries clientAuth): client.crt/.key.
    await makeHostCert(certs.dir, certs, 'client', []);
    port = await freePort();
    const peer = await freePort();
    const data = tb.tempDir('etcd-data');
    etcd = Proc.start(
      'etcd-tls',
      '/usr/bin/etcd',
      [
        '--name',
        'tls',
        '--data-dir',
        data,
        '--listen-client-urls',
        `https://127.0.0.1:${port}`,
        '--advertise-client-urls',
        `https://127.0.0.1:${port}`,
        '--listen-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-cluster',
        `tls=http://127.0.0.1:${peer}`,
        '--cert-file',
        certs.cert,
        '--key-file',
        certs.key,
        '--trusted-ca-file',
        certs.caCert,
        '--client-cert-auth',
      ],
      path.join(data, '..', 'etcd.log'),
    );
    client = createEtcdClient({ endpoints: [`https://127.0.0.1:${port}`], cacert: certs.caCert, ...clientCert() });
    const deadline = Date.now() + 15000;
    for (;;) {
      try {
        await client.put(etcdKeys().tierConfig('tls')).value(
          JSON.stringify({
            kind: 'tier',
            tier: 'tls',
            version: 1,
            config: { mode: 'passive' },
            rollout: { mode: 'active', percent: 100, otherwise: 'off', salt: 's' },
          }),
        );
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`etcd with TLS did not come up: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    env = await agentEnv(tb, 'client', await tb.mountCgroup2());
  });

  after(async () => {
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    client?.close();
    await etcd?.stop('SIGTERM', 5000);
    await tb?.destroy();
  });

  test('with the client certificate the agent follows the tier over TLS', async () => {
    const bridge = await EtcdBridge.start(tb, 'client', port);
    const url = bridge.url.replace('http://', 'https://');
    agent = await AgentProc.start({ ...env, configFile: '' }, [
      '--etcd',
      url,
      '--tier',
      'tls',
      '--host-id',
      'tls-host',
      '--insecure-unsigned',
      '--etcd-cacert',
      certs.caCert,
      '--etcd-cert',
      clientCert().cert,
      '--etcd-key',
      clientCert().key,
    ]);
    const line = await agent.waitFor((l) => l.event === 'config_applied' && l.tierVersion === 1, 10000, 'config applied over TLS');
    assert.equal(line.mode, 'active');
  });

  test('without a client certificate etcd refuses the connection', async () => {
    const noCert = createEtcdClient({ endpoints: [`https://127.0.0.1:${port}`], cacert: certs.caCert });
    try {
      await assert.rejects(noCert.get('x').string(), 'a client without a certificate is refused');
    } finally {
      noCert.close();
    }
  });
});
