// The Alertmanager webhook receiver (POST /api/alerts, webhook format version 4). Alerts with a
// `tier` label are kept in etcd under alerts/<tier>/<fingerprint> (so every replica sees them)
// until resolved; a firing alert makes the leader check that tier at once.
import { z } from 'zod';
import type { Etcd3 } from 'etcd3';
import type { EngineKeys } from '../schemas/keys.js';

export const AlertmanagerPayloadSchema = z.object({
  version: z.string().optional(),
  status: z.string().optional(),
  alerts: z.array(
    z.object({
      status: z.enum(['firing', 'resolved']),
      labels: z.record(z.string(), z.string()),
      annotations: z.record(z.string(), z.string()).optional(),
      startsAt: z.string().optional(),
      endsAt: z.string().optional(),
      fingerprint: z.string().optional(),
    }),
  ),
});

export async function receiveAlerts(client: Etcd3, keys: EngineKeys, body: unknown): Promise<{ tiers: string[]; firing: number; resolved: number; ignored: number }> {
  const payload = AlertmanagerPayloadSchema.parse(body);
  const tiers = new Set<string>();
  let firing = 0, resolved = 0, ignored = 0;
  for (const a of payload.alerts) {
    const tier = a.labels.tier;
    if (!tier || !/^[A-Za-z0-9._-]{1,64}$/.test(tier)) {
      ignored++;
      continue;
    }
    const fingerprint = a.fingerprint ?? Buffer.from(JSON.stringify(Object.entries(a.labels).sort())).toString('base64url').slice(0, 40);
    const key = keys.alert(tier, fingerprint);
    if (a.status === 'firing') {
      await client.put(key).value(JSON.stringify({ alertname: a.labels.alertname ?? 'unnamed', fingerprint, startsAt: a.startsAt ?? new Date().toISOString(), endsAt: a.endsAt, labels: a.labels, annotations: a.annotations ?? {} }));
      firing++;
      tiers.add(tier);
    } else {
      await client.delete().key(key);
      resolved++;
    }
  }
  return { tiers: [...tiers], firing, resolved, ignored };
}
