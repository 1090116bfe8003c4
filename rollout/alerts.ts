// The Alertmanager webhook receiver (POST /api/alerts, webhook format version 4). Alerts with a
// `tier` label are kept in etcd under alerts/<tier>/<fingerprint> (so every replica sees them)
// until resolved; a firing alert makes the leader check that tier at once.
import type { Etcd3 } from 'etcd3';
import type { AlertmanagerPayload, AlertsResult } from '../schemas/api.js';
import type { EngineKeys } from '../schemas/keys.js';

/** Store or clear each alert of a webhook call (already parsed at the API's boundary). */
export async function receiveAlerts(client: Etcd3, keys: EngineKeys, payload: AlertmanagerPayload): Promise<AlertsResult> {
  const tiers = new Set<string>();
  let firing = 0,
    resolved = 0,
    ignored = 0;
  for (const a of payload.alerts) {
    const tier = a.labels.tier;
    if (!tier || !/^[A-Za-z0-9._-]{1,64}$/.test(tier)) {
      ignored++;
      continue;
    }
    const fingerprint =
      a.fingerprint ??
      Buffer.from(JSON.stringify(Object.entries(a.labels).sort()))
        .toString('base64url')
        .slice(0, 40);
    const key = keys.alert(tier, fingerprint);
    if (a.status === 'firing') {
      await client.put(key).value(
        JSON.stringify({
          alertname: a.labels.alertname ?? 'unnamed',
          fingerprint,
          startsAt: a.startsAt ?? new Date().toISOString(),
          endsAt: a.endsAt,
          labels: a.labels,
          annotations: a.annotations ?? {},
        }),
      );
      firing++;
      tiers.add(tier);
    } else {
      await client.delete().key(key);
      resolved++;
    }
  }
  return { tiers: [...tiers], firing, resolved, ignored };
}
