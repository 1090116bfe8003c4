// The engine's HTTP API (JSON, fastify), Prometheus /metrics and the dashboard. Any replica
// answers; writes are compare-and-swap in etcd, so it does not matter which one takes them.
// Every body, parameter and query is a zod schema of schemas/api.ts, parsed here at the boundary;
// every error answers {code, message} with the status of its code (STATUS_FOR). Every request
// but /healthz and /metrics passes the host, origin, token and role checks of auth.ts first
// (docs/security.md); the caller's name is the author of what it writes.

import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifySchemaCompiler } from 'fastify';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { serializerCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import client from 'prom-client';
import { z } from 'zod';
import * as api from '../schemas/api.js';
import { ConfigSchema, describeIssues } from '../schemas/config.js';
import { type ErrorCode, SslwallError } from '../schemas/errors.js';
import { parseDuration, parseStages, type RolloutState, RolloutStateSchema } from '../schemas/rollout.js';
import { agentView, tierAgents } from './agents.js';
import { clearAlerts, listAlerts, receiveAlerts } from './alerts.js';
import { bearer, type Caller, type EngineNames, roleNeeded, type Users } from './auth.js';
import { cohortOf } from './checks.js';
import type { Engine } from './engine.js';
import { type DocumentInput, validateInput } from './store.js';
import { serviceName } from './summary-cache.js';

const STATUS_FOR: Partial<Record<ErrorCode, number>> = {
  SSLWALL_E_CONFIG_INVALID: 400,
  SSLWALL_E_USAGE: 400,
  SSLWALL_E_UNAUTHENTICATED: 401,
  SSLWALL_E_FORBIDDEN: 403,
  SSLWALL_E_NOT_FOUND: 404,
  SSLWALL_E_CONFLICT: 409,
  SSLWALL_E_ROLLOUT_STATE: 409,
  SSLWALL_E_HEAD_INVALID: 409,
  SSLWALL_E_TOO_LARGE: 413,
  SSLWALL_E_NOT_LEADER: 503,
};

/**
 * What one client may hold of the engine: bodies (a tier document is a few KiB; etcd takes 1.5 MiB
 * per request), connections, and how long a slow or idle client keeps a socket. Node's own
 * defaults let a client hold a socket open for 5 minutes and open as many as it likes.
 */
export interface ApiLimits {
  bodyLimit: number;
  /** Open sockets at once; more are refused at accept (server.maxConnections). */
  maxConnections: number;
  /** ms a socket may sit idle before it is closed (also covers a client that never sends). */
  connectionTimeoutMs: number;
  /** ms a whole request (headers and body) may take to arrive. */
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxRequestsPerSocket: number;
}

export const API_LIMITS: ApiLimits = {
  bodyLimit: 1 << 20,
  maxConnections: 512,
  connectionTimeoutMs: 60_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxRequestsPerSocket: 1000,
};

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller;
  }
}

/** How the API lets callers in (rollout/auth.ts). */
export interface ApiSecurity {
  /** null: no --users (only with --insecure); every caller may do anything, as "anonymous". */
  users: Users | null;
  /** The Host and Origin values this engine answers to (engineNames). */
  names: EngineNames;
  /** PEM certificate and key: serve HTTPS. */
  tls?: { cert: string; key: string };
  /** Defaults: API_LIMITS. */
  limits?: Partial<ApiLimits>;
}

/** What the API does besides letting callers in. */
export interface ApiOptions {
  /** The lease of a stored firing alert, renewed by each repeat (longer than Alertmanager's repeat_interval). */
  alertTtlS: number;
  /** More metrics to serve on /metrics (the notifier's). */
  metrics?: client.Metric[];
}

// Open to anyone: liveness and scrapes (no tier data), and the dashboard's page and script, which
// hold no data and ask for a token before they fetch any (a browser cannot send one to load a page).
const OPEN = new Set(['/healthz', '/metrics']);
const DASHBOARD_FILES = ['index.html', 'dashboard.js', 'dashboard.css'];
/**
 * The dashboard's libraries, served from node_modules as their packages ship them (no bundler):
 * URL → package and file. index.html's import map names the modules.
 */
const VENDOR: Record<string, [pkg: string, file: string]> = {
  '/vendor/preact.mjs': ['preact', 'dist/preact.mjs'],
  '/vendor/preact-hooks.mjs': ['preact', 'hooks/dist/hooks.mjs'],
  '/vendor/htm.mjs': ['htm', 'dist/htm.module.js'],
  '/vendor/uplot.mjs': ['uplot', 'dist/uPlot.esm.js'],
  '/vendor/uplot.css': ['uplot', 'dist/uPlot.min.css'],
};
const PAGE = new Set(['/', ...DASHBOARD_FILES.map((f) => `/${f}`), ...Object.keys(VENDOR)]);

export function createMetrics(engine: Engine, extra: client.Metric[] = []) {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });
  // Health bodies dropped because they disagree with their key (or are invalid): a misbehaving agent shows here.
  registry.registerMetric(engine.health.rejected);
  registry.registerMetric(engine.summaries.rejected);
  for (const m of extra) registry.registerMetric(m);
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
  const transitions = new client.Counter({
    name: 'sslwall_engine_rollout_transitions_total',
    help: 'Rollout transitions by action',
    labelNames: ['tier', 'action'] as const,
    registers: [registry],
  });
  const alerts = new client.Counter({
    name: 'sslwall_engine_alerts_received_total',
    help: 'Alertmanager alerts received',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  engine.onTransition((tier, action) => transitions.inc({ tier, action }));
  return { registry, alerts };
}

/** What `rollout status` shows: the stored state plus live numbers from agent health. */
export function rolloutView(engine: Engine, state: RolloutState): api.RolloutViewBody {
  const agents = engine.health.tier(state.tier);
  const cohort = cohortOf(state, agents);
  const applied = cohort.filter((h) => (h.configVersion ?? -1) >= (state.stageVersion ?? Infinity)).length;
  const bakeLeftMs =
    state.phase === 'baking' && state.status === 'running' ? Math.max(0, state.bakeMs - (Date.now() - Date.parse(state.phaseStartedAt))) : null;
  return { ...state, live: { agents: agents.length, cohort: cohort.length, applied, bakeLeftMs, leader: engine.leadership.isLeader } };
}

/**
 * Requests are parsed with their zod schema; a bad body is an invalid document
 * (SSLWALL_E_CONFIG_INVALID), a bad path parameter or query a wrong call (SSLWALL_E_USAGE). The
 * message names each bad field.
 */
const validatorCompiler: FastifySchemaCompiler<z.ZodType> =
  ({ schema, httpPart }) =>
  (data) => {
    // fastify hands a missing body over as null; the schema's own default applies to "missing".
    const r = schema.safeParse(data === null ? undefined : data);
    if (r.success) return { value: r.data };
    const body = httpPart === 'body';
    return {
      error: new SslwallError(body ? 'SSLWALL_E_CONFIG_INVALID' : 'SSLWALL_E_USAGE', `${body ? 'request body' : httpPart}: ${describeIssues(r.error)}`),
    };
  };

/** The one error mapping: whatever a route throws becomes a status and {code, message}. */
function errorReply(err: FastifyError | SslwallError | Error, bodyLimit: number): { status: number; body: z.infer<typeof api.ErrorBodySchema> } {
  if (err instanceof SslwallError) return { status: STATUS_FOR[err.code] ?? 500, body: { code: err.code, message: err.message } };
  // Documents read back from etcd or built by the engine (a rollout's analysis) failed their schema.
  if (err instanceof z.ZodError) return { status: 400, body: { code: 'SSLWALL_E_CONFIG_INVALID', message: describeIssues(err) } };
  const f = err as FastifyError;
  if (f.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return { status: 413, body: { code: 'SSLWALL_E_TOO_LARGE', message: `request body over ${bodyLimit} bytes` } };
  if (f.code === 'FST_ERR_RESPONSE_SERIALIZATION') {
    return {
      status: 500,
      body: {
        code: 'SSLWALL_E_INTERNAL',
        message: `the engine's answer does not match its schema: ${err.cause instanceof z.ZodError ? describeIssues(err.cause) : err.message}`,
      },
    };
  }
  // Other fastify refusals of the request itself (a malformed URL, an unsupported method).
  if (f.statusCode && f.statusCode < 500) return { status: 400, body: { code: 'SSLWALL_E_USAGE', message: err.message } };
  // etcd failures and bugs.
  return { status: 500, body: { code: 'SSLWALL_E_INTERNAL', message: err.message } };
}

/** The dashboard's files: tsc copies no HTML to dist/, so look beside this module, then in the source tree. */
function dashboardDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'dashboard'), path.resolve(here, '../../rollout/dashboard')];
  const found = candidates.find((c) => fs.existsSync(path.join(c, 'index.html')));
  if (!found) throw new SslwallError('SSLWALL_E_INTERNAL', `the dashboard (index.html) is missing; looked in ${candidates.join(', ')}`);
  return found;
}

/** A package's folder: node_modules beside or above this module (dist/rollout or the source tree). */
function packageDir(pkg: string): string {
  const tried: string[] = [];
  for (let dir = path.dirname(fileURLToPath(import.meta.url)); ; dir = path.dirname(dir)) {
    const c = path.join(dir, 'node_modules', pkg);
    tried.push(c);
    if (fs.existsSync(path.join(c, 'package.json'))) return c;
    if (path.dirname(dir) === dir)
      throw new SslwallError('SSLWALL_E_INTERNAL', `the dashboard's library ${pkg} is missing (npm ci); looked in ${tried.join(', ')}`);
  }
}

/**
 * The page's Content-Security-Policy: scripts and styles only from the engine itself, plus the one
 * inline script the page has (its import map, allowed by hash); requests only to the engine
 * (same origin, which the Origin check enforces on the server side too); never framed.
 */
function contentSecurityPolicy(indexHtml: string): string {
  const map = /<script type="importmap">([\s\S]*?)<\/script>/.exec(indexHtml);
  const hash = map ? ` 'sha256-${createHash('sha256').update(map[1]!).digest('base64')}'` : '';
  return `default-src 'none'; script-src 'self'${hash}; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
}

export async function buildApi(engine: Engine, log: Logger, sec: ApiSecurity, opts: ApiOptions): Promise<FastifyInstance> {
  const metrics = createMetrics(engine, opts.metrics);
  // fastify's own request log would be a line per request; the engine logs events (api_error, config_written).
  // An HTTPS server answers the same routes; its instance type differs only in the server class.
  const lim = { ...API_LIMITS, ...sec.limits };
  const serverOptions = {
    logger: false,
    bodyLimit: lim.bodyLimit,
    connectionTimeout: lim.connectionTimeoutMs,
    requestTimeout: lim.requestTimeoutMs,
    keepAliveTimeout: lim.keepAliveTimeoutMs,
    maxRequestsPerSocket: lim.maxRequestsPerSocket,
  } as const;
  const base = (sec.tls ? Fastify({ ...serverOptions, https: sec.tls }) : Fastify(serverOptions)) as FastifyInstance;
  base.server.maxConnections = lim.maxConnections;
  const app = base.withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.decorateRequest('caller', null as unknown as Caller);

  app.addHook('onRequest', async (req, reply) => {
    const route = req.url.split('?')[0]!;
    if (OPEN.has(route)) return;
    // DNS rebinding: a page of evil.example whose name now resolves to this engine sends Host evil.example.
    const host = (req.headers.host ?? '').toLowerCase();
    if (!sec.names.hosts.has(host))
      throw new SslwallError(
        'SSLWALL_E_FORBIDDEN',
        `Host ${host || '(none)'} is not one of this engine's names (${[...sec.names.hosts].join(', ')}); call it by one of those or add the name with --public-url`,
      );
    // CSRF: a browser names the page that made a request in Origin; only the dashboard's own
    // (under the listen address or a --public-url) is let in.
    const origin = req.headers.origin;
    if (origin !== undefined && !sec.names.origins.has(origin.toLowerCase()))
      throw new SslwallError('SSLWALL_E_FORBIDDEN', `Origin ${origin} is another site; the API takes browser requests only from its own dashboard`);
    if (PAGE.has(route)) return;
    if (sec.users) {
      const token = bearer(req.headers.authorization);
      if (!token)
        throw new SslwallError('SSLWALL_E_UNAUTHENTICATED', 'no bearer token: send Authorization: Bearer TOKEN ($SSLWALL_TOKEN or --token-file FILE)');
      const user = sec.users.find(token);
      if (!user)
        throw new SslwallError(
          'SSLWALL_E_UNAUTHENTICATED',
          'this token is not known to the engine; make one with: sslwall token --users FILE --name N --role R',
        );
      const need = roleNeeded(req.method, route);
      if (!need.includes(user.role))
        throw new SslwallError(
          'SSLWALL_E_FORBIDDEN',
          `user ${user.name} (${user.role}) may not ${req.method} ${route}; ${need.length ? `it needs the ${need.join(' or ')} role` : 'nobody may'}`,
        );
      req.caller = { name: user.name, role: user.role };
    } else {
      req.caller = { name: 'anonymous', role: null };
    }
    // A form post from another site (text/plain, urlencoded) is a "simple" request that skips the
    // CORS preflight; requiring JSON for writes takes that path away as well.
    if (req.method !== 'GET' && req.method !== 'HEAD' && !/^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '')) {
      return reply.code(415).send({ code: 'SSLWALL_E_USAGE', message: `${req.method} ${route} needs Content-Type: application/json` });
    }
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, text, done) => {
    if (text === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text as string));
    } catch {
      done(new SslwallError('SSLWALL_E_CONFIG_INVALID', 'request body is not JSON'), undefined);
    }
  });

  app.setErrorHandler((err: FastifyError | SslwallError | Error, req, reply) => {
    const { status, body } = errorReply(err, lim.bodyLimit);
    if (status >= 500) log.error({ event: 'api_error', code: body.code, route: `${req.method} ${req.url}`, err: err.message }, 'api error');
    else if (body.code === 'SSLWALL_E_HEAD_INVALID')
      log.warn({ event: 'head_invalid', route: `${req.method} ${req.url}`, err: body.message }, 'tier head invalid');
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ code: 'SSLWALL_E_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}; see docs/rollout.md` }),
  );

  // GET / (index.html), its script and style; routes made once from the folder's files. The
  // libraries under /vendor/ by sendFile from their package folders.
  const dashboard = dashboardDir();
  const csp = contentSecurityPolicy(fs.readFileSync(path.join(dashboard, 'index.html'), 'utf8'));
  await app.register(fastifyStatic, { root: dashboard, wildcard: false });
  for (const [url, [pkg, file]] of Object.entries(VENDOR)) {
    const root = packageDir(pkg);
    app.get(url, (_req, reply) => reply.sendFile(file, root));
  }
  app.addHook('onSend', async (req, reply) => {
    if (!PAGE.has(req.url.split('?')[0]!)) return;
    reply.header('content-security-policy', csp);
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
  });

  // The author is the credential's name, never anything the request says about itself.
  const by = (req: { caller: Caller }) => req.caller.name;

  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.get('/healthz', { schema: { response: { 200: api.HealthzResponse } } }, async () => ({ ok: true as const, leader: engine.leadership.isLeader }));
  app.get('/api/leader', { schema: { response: { 200: api.LeaderResponse } } }, async () => ({
    id: engine.leadership.id,
    leader: await engine.leadership.leader(),
    isLeader: engine.leadership.isLeader,
  }));

  app.post('/api/alerts', { schema: { body: api.AlertmanagerPayloadSchema, response: { 200: api.AlertsResponse } } }, async (req) => {
    const r = await receiveAlerts(engine.client, engine.keys, req.body, opts.alertTtlS);
    metrics.alerts.inc({ status: 'firing' }, r.firing);
    metrics.alerts.inc({ status: 'resolved' }, r.resolved);
    log.warn({ event: 'alerts_received', ...r }, 'alerts received');
    for (const t of r.tiers) engine.urgentCheck(t);
    return r;
  });
  app.get('/api/tiers/:tier/alerts', { schema: { params: api.TierParams, response: { 200: api.TierAlertsResponse } } }, async (req) =>
    listAlerts(engine.client, engine.keys, req.params.tier),
  );
  app.delete(
    '/api/tiers/:tier/alerts',
    { schema: { params: api.TierParams, querystring: api.ClearAlertsQuery, response: { 200: api.ClearAlertsResponse } } },
    async (req) => {
      const { tier } = req.params;
      const cleared = await clearAlerts(engine.client, engine.keys, tier, by(req), req.query.key);
      log.warn({ event: 'alerts_cleared', tier, by: by(req), alerts: cleared }, 'alerts cleared by hand');
      return { cleared };
    },
  );

  app.put(
    '/api/hosts/:host/override',
    { schema: { params: api.HostParams, body: api.OverrideRequest, response: { 201: api.OverrideResponse } } },
    async (req, reply) => {
      const { host } = req.params;
      const b = req.body;
      const r = await engine.store.setOverride(host, { mode: b.mode, config: b.config, reason: b.reason }, by(req));
      log.info({ event: 'override_set', host, by: by(req), mode: b.mode, reason: b.reason }, 'host override set');
      return reply.code(201).send(r!);
    },
  );
  app.delete('/api/hosts/:host/override', { schema: { params: api.HostParams, response: { 200: api.OverrideRemovedResponse } } }, async (req) => {
    const { host } = req.params;
    await engine.store.setOverride(host, null, by(req));
    log.info({ event: 'override_removed', host, by: by(req) }, 'host override removed');
    return { removed: host };
  });

  app.get('/api/tiers', { schema: { response: { 200: api.TiersResponse } } }, async () => {
    const out: z.infer<typeof api.TiersResponse> = [];
    for (const tier of await engine.store.tiers()) {
      const h = await engine.store.headState(tier);
      const ro = await engine.readState(tier);
      out.push({
        tier,
        version: h.head?.doc.version ?? null,
        rollout: ro ? rolloutView(engine, ro.state) : null,
        agents: engine.health.tier(tier).length,
        mode: h.head?.doc.rollout.mode ?? null,
        percent: h.head?.doc.rollout.percent ?? null,
        ...(h.problem ? { headProblem: h.problem } : {}),
      });
    }
    return out;
  });

  app.get(
    '/api/tiers/:tier/config',
    { schema: { params: api.TierParams, querystring: api.ConfigQuery, response: { 200: z.union([api.HeadResponse, api.HistoryResponse.element]) } } },
    async (req) => {
      const { tier } = req.params;
      if (req.query.version !== undefined) return engine.store.version(tier, req.query.version);
      const head = await engine.store.head(tier);
      if (!head) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no config`);
      return { ...head.doc, revision: head.modRevision };
    },
  );
  app.put(
    '/api/tiers/:tier/config',
    { schema: { params: api.TierParams, body: api.PutConfigRequest, response: { 201: api.WrittenResponse } } },
    async (req, reply) => {
      const { tier } = req.params;
      const b = req.body;
      const input = await completeInput(engine, tier, b.document);
      const guard = await engine.operatorEditGuard(tier);
      const rec = await engine.store.write(tier, input, {
        author: by(req),
        message: b.message ?? 'config set',
        expectRevision: b.expectRevision,
        unchanged: [guard],
      });
      log.info({ event: 'config_written', tier, version: rec.version, author: rec.author, message: rec.message }, 'config written');
      return reply.code(201).send(rec);
    },
  );
  app.get(
    '/api/tiers/:tier/history',
    { schema: { params: api.TierParams, querystring: api.HistoryQuery, response: { 200: api.HistoryResponse } } },
    async (req) => engine.store.history(req.params.tier, req.query),
  );
  app.get('/api/tiers/:tier/audit', { schema: { params: api.TierParams, querystring: api.AuditQuery, response: { 200: api.AuditResponse } } }, async (req) =>
    engine.store.audit(req.params.tier, req.query.limit),
  );
  app.post(
    '/api/tiers/:tier/revert',
    { schema: { params: api.TierParams, body: api.RevertRequest, response: { 201: api.WrittenResponse } } },
    async (req, reply) => {
      const b = req.body;
      const guard = await engine.operatorEditGuard(req.params.tier);
      return reply
        .code(201)
        .send(await engine.store.revert(req.params.tier, b.to, { author: by(req), message: b.message, expectRevision: b.expectRevision, unchanged: [guard] }));
    },
  );

  app.get('/api/tiers/:tier/rollout', { schema: { params: api.TierParams, response: { 200: api.RolloutView } } }, async (req) => {
    const { tier } = req.params;
    const ro = await engine.readState(tier);
    if (!ro) throw new SslwallError('SSLWALL_E_NOT_FOUND', `tier ${tier} has no rollout`);
    return rolloutView(engine, ro.state);
  });
  app.post(
    '/api/tiers/:tier/rollout',
    { schema: { params: api.TierParams, body: api.StartRolloutRequest, response: { 201: RolloutStateSchema } } },
    async (req, reply) => {
      const b = req.body;
      let stages: ReturnType<typeof parseStages>;
      let bakeMs: number;
      try {
        stages = parseStages(b.stages);
        bakeMs = parseDuration(b.bake);
      } catch (err) {
        throw new SslwallError('SSLWALL_E_USAGE', (err as Error).message);
      }
      return reply.code(201).send(await engine.startRollout(req.params.tier, { stages, bakeMs, analysis: b.analysis, otherwise: b.otherwise, by: by(req) }));
    },
  );
  app.post(
    '/api/tiers/:tier/rollout/:action',
    { schema: { params: api.ActionParams, body: api.ActionRequest, response: { 200: RolloutStateSchema } } },
    async (req) => engine.act(req.params.tier, req.params.action, req.body.reason ?? 'no reason given', by(req)),
  );
  app.get(
    '/api/tiers/:tier/agents',
    { schema: { params: api.TierParams, querystring: api.AgentsQuery, response: { 200: api.AgentsPageResponse } } },
    async (req) => {
      const { tier } = req.params;
      const head = await engine.store.head(tier);
      return tierAgents(engine.health, tier, head?.doc.version ?? null, req.query);
    },
  );
  app.get('/api/hosts/:host/agent', { schema: { params: api.HostParams, response: { 200: api.AgentView } } }, async (req) => {
    const { host } = req.params;
    // The newest report, should a moved host still have one under its old tier.
    const h = engine.health.host(host).sort((a, b) => b.updatedAt.localeCompare(a.updatedAt))[0];
    if (!h) throw new SslwallError('SSLWALL_E_NOT_FOUND', `no agent with host id ${host} reports health; list a tier's agents with: sslwall agents --tier T`);
    const head = await engine.store.head(h.tier);
    return agentView(engine.health, h, head?.doc.version ?? null);
  });
  app.get(
    '/api/tiers/:tier/preview',
    { schema: { params: api.TierParams, querystring: api.PreviewQuery, response: { 200: api.PreviewResponse } } },
    async (req) => {
      const p = await engine.preview(req.params.tier, req.query.percent);
      return {
        ...p,
        services: engine.summaries
          .servicesOf(
            p.tier,
            p.joining.map((j) => j.hostId),
          )
          .slice(0, 100),
      };
    },
  );

  // The service owners' view (docs/dashboard.md): what the agents' summaries say, by service.
  app.get(
    '/api/tiers/:tier/services',
    { schema: { params: api.TierParams, querystring: api.ServicesQuery, response: { 200: api.ServicesResponse } } },
    async (req) => {
      const { tier } = req.params;
      const { hosts, services } = engine.summaries.services(tier);
      return { tier, hosts, total: services.length, services: services.slice(req.query.offset, req.query.offset + req.query.limit) };
    },
  );
  app.get('/api/violations', { schema: { querystring: api.ViolationsQuery, response: { 200: api.ViolationsResponse } } }, async (req) => {
    const { q, tier, limit, offset } = req.query;
    const r = engine.summaries.search(q, { tier, limit, offset });
    return {
      q,
      total: r.total,
      offset,
      entries: r.page.map((m) => ({ ...m.entry, tier: m.tier, hostId: m.hostId, serviceName: serviceName(m.entry.service) })),
    };
  });
  app.get('/api/violations/series', { schema: { querystring: api.SeriesQuery, response: { 200: api.SeriesResponse } } }, async (req) => {
    const { q, tier, max } = req.query;
    return { q, intervalMs: engine.summaries.sampleMs, series: engine.summaries.seriesFor(q, { tier, max }) };
  });

  return app;
}

/** The API on HOST:PORT (an IPv6 host in brackets); resolves once it listens. */
export async function startApi(engine: Engine, listen: string, log: Logger, sec: ApiSecurity, opts: ApiOptions): Promise<FastifyInstance> {
  const app = await buildApi(engine, log, sec, opts);
  const idx = listen.lastIndexOf(':');
  await app.listen({ port: Number(listen.slice(idx + 1)), host: listen.slice(0, idx).replace(/^\[|\]$/g, '') || '127.0.0.1' });
  return app;
}

/** A posted document: either {config, rollout}, or only an agent config (the rollout fields then come from the head, or start all-off for a new tier). */
async function completeInput(engine: Engine, tier: string, doc: Record<string, unknown>): Promise<DocumentInput> {
  if ('config' in doc) return validateInput(doc, `tier ${tier}`);
  const config = ConfigSchema.safeParse(doc);
  if (!config.success) return validateInput({ config: doc, rollout: undefined }, `tier ${tier}`);
  // Over an invalid head (SSLWALL_E_HEAD_INVALID) the rollout fields start as for a new tier: the
  // broken head has none to keep, and refusing would leave no way to replace it with a bare config.
  const rollout = (await engine.store.headState(tier)).head?.doc.rollout ?? {
    mode: config.data.mode === 'active' ? 'active' : 'passive',
    percent: config.data.mode === 'off' ? 0 : 100,
    otherwise: 'off',
    salt: randomBytes(6).toString('hex'),
  };
  return validateInput({ config: config.data, rollout }, `tier ${tier}`);
}
