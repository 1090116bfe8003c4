// The Alertmanager webhook receiver (POST /api/alerts, webhook format version 4) and the alerts
// the engine holds. An alert with a `tier` label is kept in etcd under alerts/<tier>/<key> (so
// every replica sees it) until resolved, and under a lease: Alertmanager repeats a firing alert
// every repeat_interval, and each repeat puts it again under a fresh lease, so an alert whose
// "resolved" never arrives (Alertmanager gone, the notification lost) expires instead of blocking
// every rollout of the tier for ever. The key is the SHA-256 of the whole sorted label set, which
// is what makes an alert itself: Alertmanager's fingerprint is whatever the sender says, and two
// alerts sent with one fingerprint must not overwrite each other.
import { createHash } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import type { AlertmanagerPayload, AlertsResult, StoredAlert, TierAlerts } from '../schemas/api.js';
import { StoredAlertSchema, TierName } from '../schemas/api.js';
import { SslwallError } from '../schemas/errors.js';
import type { EngineKeys } from '../schemas/keys.js';

/** The alert's key: hex SHA-256 over its labels sorted by name (JSON of [name, value] pairs). */
export function alertKey(labels: Record<string, string>): string {
  const sorted = Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(JSON.stringify(sorted)).digest('hex');
}

/** Store (firing, under a new lease of ttlS seconds) or delete (resolved) each alert of a webhook call. */
export async function receiveAlerts(client: Etcd3, keys: EngineKeys, payload: AlertmanagerPayload, ttlS: number): Promise<AlertsResult> {
  const tiers = new Set<string>();
  let firing = 0,
    resolved = 0,
    ignored = 0;
  for (const a of payload.alerts) {
    const tier = a.labels.tier;
    if (!tier || !TierName.safeParse(tier).success) {
      ignored++;
      continue;
    }
    const key = Buffer.from(keys.alert(tier, alertKey(a.labels)));
    if (a.status === 'resolved') {
      await client.kv.deleteRange({ key });
      resolved++;
      continue;
    }
    const value: StoredAlert = {
      alertname: a.labels.alertname ?? 'unnamed',
      fingerprint: a.fingerprint,
      startsAt: a.startsAt ?? new Date().toISOString(),
      endsAt: a.endsAt,
      labels: a.labels,
      annotations: a.annotations ?? {},
      receivedAt: new Date().toISOString(),
    };
    // A fresh lease each time rather than a keep-alive of the old one: the put and its expiry are
    // one request, and the old lease (revoked once the key has moved) holds nothing any more.
    const old = (await client.kv.range({ key })).kvs[0]?.lease;
    const { ID } = await client.leaseClient.leaseGrant({ TTL: ttlS, ID: 0 });
    await client.kv.put({ key, value: Buffer.from(JSON.stringify(value)), lease: ID });
    if (old && old !== '0') await client.leaseClient.leaseRevoke({ ID: old }).catch(() => undefined);
    firing++;
    tiers.add(tier);
  }
  return { tiers: [...tiers], firing, resolved, ignored };
}

/** The alerts the engine holds for a tier, with their key and the seconds their lease has left. */
export async function listAlerts(client: Etcd3, keys: EngineKeys, tier: string): Promise<TierAlerts> {
  const prefix = keys.alerts(tier);
  const r = await client.getAll().prefix(prefix).exec();
  const out: TierAlerts = [];
  for (const kv of r.kvs) {
    const stored = StoredAlertSchema.safeParse(safeJson(kv.value.toString()));
    // Written by an older engine, or by hand: shown with what can be read, never hidden.
    const alert = stored.success ? stored.data : { alertname: 'unreadable', startsAt: '', labels: {}, annotations: {}, receivedAt: '' };
    let expiresInS = -1;
    if (kv.lease && kv.lease !== '0') expiresInS = Number((await client.leaseClient.leaseTimeToLive({ ID: kv.lease, keys: false })).TTL);
    out.push({ ...alert, key: kv.key.toString().slice(prefix.length), expiresInS });
  }
  return out;
}

/** Delete one alert (by key) or all of a tier's, with an audit entry naming who did it, in one transaction. */
export async function clearAlerts(client: Etcd3, keys: EngineKeys, tier: string, by: string, key?: string): Promise<string[]> {
  const prefix = keys.alerts(tier);
  const held = (await client.getAll().prefix(prefix).keys()).map((k) => k.slice(prefix.length));
  const cleared = key === undefined ? held : held.filter((k) => k === key);
  if (key !== undefined && cleared.length === 0)
    throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} holds no alert ${key}; list them with: sslwall rollout alerts --tier ${tier}`);
  const entry = { time: new Date().toISOString(), actor: by, action: 'alerts_cleared', alerts: cleared };
  await client.kv.txn({
    compare: [],
    success: [
      ...cleared.map((k) => ({ request_delete_range: { key: Buffer.from(keys.alert(tier, k)) } })),
      { request_put: { key: Buffer.from(keys.audit(tier)), value: Buffer.from(JSON.stringify(entry)) } },
    ],
    failure: [],
  });
  return cleared;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
