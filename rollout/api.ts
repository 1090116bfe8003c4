// The engine's HTTP API (JSON), Prometheus /metrics and the dashboard. Any replica answers;
// writes are compare-and-swap in etcd, so it does not matter which one takes them.
import http from 'node:http';
import client from 'prom-client';
import type { Logger } from 'pino';
import { randomBytes } from 'node:crypto';
import type { Engine } from './engine.js';
import { receiveAlerts } from './alerts.js';
import { validateInput, type DocumentInput } from './store.js';
import { SslwallError } from '../schemas/errors.js';
import { ConfigSchema } from '../schemas/config.js';
import { parseStages, parseDuration, type RolloutState } from '../schemas/rollout.js';
import { cohortOf } from './checks.js';
import { dashboardHtml } from './dashboard.js';

const STATUS_FOR: Record<string, number> = {
  SSLWALL_E_CONFIG_INVALID: 400,
  SSLWALL_E_USAGE: 400,
  SSLWALL_E_NOT_FOUND: 404,
  SSLWALL_E_CONFLICT: 409,
  SSLWALL_E_ROLLOUT_STATE: 409,
  SSLWALL_E_NOT_LEADER: 503,
};

export function createMetrics(engine: Engine) {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });
  new client.Gauge({
    name: 'sslwall_engine_leader',
    help: '1 when this replica leads',
    registers: [registry],
    collect() {
      this.set(engine.leadership.isLeader ? 1 : 0);
    },
  });
  new client.Gauge({
    name: 'sslwall_engine_agents',
    help: 'Agents reporting health, by tier',
    labelNames: ['tier'] as const,
    registers: [registry],
    collect() {
      this.reset();
      const by = new Map<string, number>();
      for (const h of engine.health.agents.values()) by.set(h.tier, (by.get(h.tier) ?? 0) + 1);
      for (const [tier, n] of by) this.set({ tier }, n);
    },
  });
  const transitions = new client.Counter({ name: 'sslwall_engine_rollout_transitions_total', help: 'Rollout transitions by action', labelNames: ['tier', 'action'] as const, registers: [registry] });
  const alerts = new client.Counter({ name: 'sslwall_engine_alerts_received_total', help: 'Alertmanager alerts received', labelNames: ['status'] as const, registers: [registry] });
  engine.onTransition = (tier, action) => transitions.inc({ tier, action });
  return { registry, alerts };
}

async function body(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 4 << 20) throw new SslwallError('SSLWALL_E_USAGE', 'request body over 4 MiB');
    chunks.push(c as Buffer);
  }
  if (!size) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString());
  } catch {
    throw new SslwallError('SSLWALL_E_CONFIG_INVALID', 'request body is not JSON');
  }
}

/** What `rollout status` shows: the stored state plus live numbers from agent health. */
export function rolloutView(engine: Engine, state: RolloutState) {
  const agents = engine.health.tier(state.tier);
  const cohort = cohortOf(state, agents);
  const applied = cohort.filter((h) => (h.configVersion ?? -1) >= (state.stageVersion ?? Infinity)).length;
  const bakeLeftMs = state.phase === 'baking' && state.status === 'running' ? Math.max(0, state.bakeMs - (Date.now() - Date.parse(state.phaseStartedAt))) : null;
  return { ...state, live: { agents: agents.length, cohort: cohort.length, applied, bakeLeftMs, leader: engine.leadership.isLeader } };
}

export function startApi(engine: Engine, listen: string, log: Logger): Promise<http.Server> {
  const metrics = createMetrics(engine);
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const send = (status: number, value: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value, null, 1) + '\n');
    };
    try {
      const parts = url.pathname.split('/').filter(Boolean);
      const by = String(req.headers['x-sslwall-user'] ?? 'api');
      if (req.method === 'GET' && url.pathname === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(dashboardHtml());
        return;
      }
      if (req.method === 'GET' && url.pathname === '/metrics') {
        res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(await metrics.registry.metrics());
        return;
      }
      if (req.method === 'GET' && url.pathname === '/healthz') return send(200, { ok: true, leader: engine.leadership.isLeader });
      if (req.method === 'GET' && url.pathname === '/api/leader') return send(200, { id: engine.leadership.id, leader: await engine.leadership.leader(), isLeader: engine.leadership.isLeader });
      if (req.method === 'POST' && url.pathname === '/api/alerts') {
        const r = await receiveAlerts(engine.client, engine.keys, await body(req));
        metrics.alerts.inc({ status: 'firing' }, r.firing);
        metrics.alerts.inc({ status: 'resolved' }, r.resolved);
        log.warn({ event: 'alerts_received', ...r }, 'alerts received');
        for (const t of r.tiers) engine.urgentCheck(t);
        return send(200, r);
      }
      const host = /^\/api\/hosts\/([A-Za-z0-9._:-]{1,128})\/override$/.exec(url.pathname)?.[1];
      if (host && req.method === 'PUT') {
        const b = (await body(req)) as { mode?: 'off' | 'passive' | 'active'; config?: unknown; reason?: string };
        const r = await engine.store.setOverride(host, { mode: b.mode, config: b.config, reason: b.reason }, by);
        log.info({ event: 'override_set', host, by, mode: b.mode, reason: b.reason }, 'host override set');
        return send(201, r);
      }
      if (host && req.method === 'DELETE') {
        await engine.store.setOverride(host, null, by);
        log.info({ event: 'override_removed', host, by }, 'host override removed');
        return send(200, { removed: host });
      }
      if (req.method === 'GET' && url.pathname === '/api/tiers') {
        const tiers = await engine.store.tiers();
        const out = [];
        for (const tier of tiers) {
          const head = await engine.store.head(tier);
          const ro = await engine.readState(tier);
          out.push({ tier, version: head?.doc.version ?? null, rollout: ro ? rolloutView(engine, ro.state) : null, agents: engine.health.tier(tier).length });
        }
        return send(200, out);
      }
      if (parts[0] === 'api' && parts[1] === 'tiers' && parts[2]) {
        const tier = parts[2];
        if (!/^[A-Za-z0-9._-]{1,64}$/.test(tier)) throw new SslwallError('SSLWALL_E_USAGE', `bad tier name ${tier}`);
        const rest = parts.slice(3).join('/');
        if (req.method === 'GET' && rest === 'config') {
          const v = url.searchParams.get('version');
          if (v) return send(200, await engine.store.version(tier, Number(v)));
          const head = await engine.store.head(tier);
          if (!head) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no config`);
          return send(200, { ...head.doc, revision: head.modRevision });
        }
        if (req.method === 'PUT' && rest === 'config') {
          const b = (await body(req)) as { document?: unknown; message?: string; author?: string; expectRevision?: number };
          const input = await completeInput(engine, tier, b.document);
          const rec = await engine.store.write(tier, input, { author: b.author ?? by, message: b.message ?? 'config set', expectRevision: b.expectRevision });
          log.info({ event: 'config_written', tier, version: rec.version, author: rec.author, message: rec.message }, 'config written');
          return send(201, rec);
        }
        if (req.method === 'GET' && rest === 'history') return send(200, await engine.store.history(tier));
        if (req.method === 'GET' && rest === 'audit') return send(200, await engine.store.audit(tier, Number(url.searchParams.get('limit') ?? 50)));
        if (req.method === 'POST' && rest === 'revert') {
          const b = (await body(req)) as { to?: number; message?: string; expectRevision?: number };
          if (typeof b.to !== 'number') throw new SslwallError('SSLWALL_E_USAGE', 'revert needs {"to": VERSION}');
          return send(201, await engine.store.revert(tier, b.to, { author: by, message: b.message, expectRevision: b.expectRevision }));
        }
        if (req.method === 'GET' && rest === 'rollout') {
          const ro = await engine.readState(tier);
          if (!ro) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no rollout`);
          return send(200, rolloutView(engine, ro.state));
        }
        if (req.method === 'POST' && rest === 'rollout') {
          const b = (await body(req)) as { stages?: string; bake?: string; analysis?: unknown; otherwise?: 'off' | 'passive' };
          let stages, bakeMs;
          try {
            stages = parseStages(b.stages ?? '');
            bakeMs = parseDuration(b.bake ?? '10m');
          } catch (err) {
            throw new SslwallError('SSLWALL_E_USAGE', (err as Error).message);
          }
          return send(201, await engine.startRollout(tier, { stages, bakeMs, analysis: b.analysis, otherwise: b.otherwise, by }));
        }
        const action = /^rollout\/(pause|resume|promote|abort|undo)$/.exec(rest)?.[1] as 'pause' | 'resume' | 'promote' | 'abort' | 'undo' | undefined;
        if (req.method === 'POST' && action) {
          const b = (await body(req)) as { reason?: string };
          return send(200, await engine.act(tier, action, b.reason ?? 'no reason given', by));
        }
        if (req.method === 'GET' && rest === 'preview') {
          const p = Number(url.searchParams.get('percent'));
          if (!(p >= 0 && p <= 100)) throw new SslwallError('SSLWALL_E_USAGE', 'preview needs ?percent=0..100');
          return send(200, await engine.preview(tier, p));
        }
      }
      send(404, { code: 'SSLWALL_E_NOT_FOUND', message: `no route ${req.method} ${url.pathname}; see docs/rollout.md` });
    } catch (err) {
      const code = (err as SslwallError).code ?? 'SSLWALL_E_INTERNAL';
      const status = STATUS_FOR[code] ?? ((err as Error).name === 'ZodError' ? 400 : 500);
      if (status >= 500) log.error({ event: 'api_error', code, err: (err as Error).message }, 'api error');
      send(status, { code: (err as Error).name === 'ZodError' ? 'SSLWALL_E_CONFIG_INVALID' : code, message: (err as Error).message });
    }
  });
  const idx = listen.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(listen.slice(idx + 1)), listen.slice(0, idx).replace(/^\[|\]$/g, '') || '127.0.0.1', () => resolve(server));
  });
}

/** A posted document: either {config, rollout}, or only an agent config (the rollout fields then come from the head, or start all-off for a new tier). */
async function completeInput(engine: Engine, tier: string, doc: unknown): Promise<DocumentInput> {
  if (doc && typeof doc === 'object' && 'config' in doc) return validateInput(doc, `tier ${tier}`);
  const config = ConfigSchema.safeParse(doc);
  if (!config.success) return validateInput({ config: doc, rollout: undefined }, `tier ${tier}`);
  const head = await engine.store.head(tier);
  const rollout = head?.doc.rollout ?? { mode: config.data.mode === 'active' ? 'active' : 'passive', percent: config.data.mode === 'off' ? 0 : 100, otherwise: 'off', salt: randomBytes(6).toString('hex') };
  return validateInput({ config: config.data, rollout }, `tier ${tier}`);
}
