// What least privilege in etcd costs to provision (docs/etcd.md "Access control"): `sslwall etcd
// provision` of N new hosts against the lab etcd with auth on, per host, against the same number
// of auth-checked writes as plain puts at the same concurrency (each new host is 7 auth writes:
// role, 3 grants, user, 2 role grants), and a second run over the same hosts (nothing to do).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { provisionHosts, setupEtcdAuth } from '../../rollout/etcd-roles.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { startEtcd } from '../lab/etcd.js';
import { round } from './stats.js';
import type { Bench } from './types.js';

const OPTIONS = { hosts: 1000, concurrency: 32 };
const WRITES_PER_HOST = 7;

export const etcdProvision: Bench = {
  name: 'etcd_provision',
  produces: ['etcd_provision_host_ms', 'etcd_reprovision_host_ms', 'etcd_provision_one_more_ms'],
  summary: 'sslwall etcd provision of 1,000 hosts with auth on, vs as many plain puts',
  async run(ctx) {
    const { hosts: N, concurrency } = OPTIONS;
    const etcd = await startEtcd();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-bench-auth-'));
    const clients: Array<{ close(): void }> = [];
    try {
      const setup = createEtcdClient({ endpoints: etcd.endpoints });
      clients.push(setup);
      await setupEtcdAuth(setup, { rootPassword: 'bench-root' });
      const pw = path.join(dir, 'root.pw');
      fs.writeFileSync(pw, 'bench-root', { mode: 0o600 });
      const root = createEtcdClient({ endpoints: etcd.endpoints, user: 'root', passwordFile: pw });
      clients.push(root);
      const hosts = Array.from({ length: N }, (_, i) => ({ hostId: `h${i}`, tier: `t${i % 10}` }));
      // One host at a time (what `sslwall etcd provision --host H` does), on an empty etcd and
      // again once N hosts exist: etcd's cost per auth write grows with the users it holds.
      const oneMore = async (tag: string) => {
        const t0 = performance.now();
        for (let i = 0; i < 10; i++) await provisionHosts(root, [{ hostId: `${tag}-${i}`, tier: 't0' }]);
        return (performance.now() - t0) / 10;
      };
      const oneFirst = await oneMore('first');

      let t = performance.now();
      const first = await provisionHosts(root, hosts, { concurrency });
      const provisionMs = performance.now() - t;
      ctx.progress(`${N} hosts provisioned in ${round(provisionMs / 1000, 1)} s (${first.roles} roles, ${first.users} users, ${first.grants} grants)`);
      t = performance.now();
      await provisionHosts(root, hosts, { concurrency });
      const againMs = performance.now() - t;
      ctx.progress(`the same ${N} hosts again (nothing to do) in ${round(againMs / 1000, 1)} s`);
      const oneLast = await oneMore('last');
      ctx.progress(`one more host: ${round(oneFirst, 1)} ms on an empty etcd, ${round(oneLast, 1)} ms with ${N} hosts`);

      const queue = Array.from({ length: N * WRITES_PER_HOST }, (_, i) => `/bench/put/${i}`);
      t = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          for (let key = queue.shift(); key; key = queue.shift()) await root.put(key).value('x').exec();
        }),
      );
      const putsMs = performance.now() - t;
      ctx.progress(`${N * WRITES_PER_HOST} plain puts in ${round(putsMs / 1000, 1)} s`);
      const perHost = provisionMs / N;
      const base = putsMs / N;
      return [
        {
          bench: 'etcd_provision_host_ms',
          value: round(perHost, 3),
          unit: 'ms/host',
          baseline: round(base, 3),
          ratio: round(perHost / base, 3),
          meaning: `a new host (role, user, grants) in a bulk of ${N} vs ${WRITES_PER_HOST} plain puts; grows with the bulk (docs/etcd.md)`,
        },
        {
          bench: 'etcd_reprovision_host_ms',
          value: round(againMs / N, 3),
          unit: 'ms/host',
          baseline: round(base, 3),
          ratio: round(againMs / N / base, 3),
          meaning: `running provision again over hosts that exist (reads only) vs ${WRITES_PER_HOST} plain puts`,
        },
        {
          bench: 'etcd_provision_one_more_ms',
          value: round(oneLast, 1),
          unit: 'ms/host',
          baseline: round(oneFirst, 1),
          ratio: round(oneLast / oneFirst, 3),
          meaning: `one host provisioned alone once ${N} exist, vs on an empty etcd (grows with the users etcd holds)`,
        },
      ];
    } finally {
      for (const c of clients) c.close();
      await etcd.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
};
