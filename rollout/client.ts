// The engine's HTTP API from the caller's side: a method per route (docs/rollout.md#http-api),
// requests typed and answers parsed with the schemas of schemas/api.ts. An error answer becomes
// an SslwallError with the engine's code; an engine that cannot be reached SSLWALL_E_ENGINE.
// Requests go through node:http/node:https rather than fetch: a private CA (--engine-ca) is the
// plain `ca` option there, while Node 20's fetch would need an undici Agent from the undici
// package (not a dependency; Node's bundled copy cannot be imported).
import http from 'node:http';
import https from 'node:https';
import type { z } from 'zod';
import * as api from '../schemas/api.js';
import { describeIssues } from '../schemas/config.js';
import { type ErrorCode, ErrorCodes, SslwallError } from '../schemas/errors.js';
import { RolloutStateSchema } from '../schemas/rollout.js';
import { VersionRecordSchema } from '../schemas/tier.js';

export interface EngineClientOptions {
  /** Sent as Authorization: Bearer; the engine records its user's name as the author. */
  token?: string;
  /** PEM CA certificates that issued the engine's certificate (https:// only). */
  ca?: string;
  timeoutMs?: number;
}

export class EngineClient {
  readonly url: string;

  constructor(
    url: string,
    private readonly opts: EngineClientOptions = {},
  ) {
    this.url = url.replace(/\/$/, '');
  }

  healthz() {
    return this.call('GET', '/healthz', api.HealthzResponse);
  }

  leader() {
    return this.call('GET', '/api/leader', api.LeaderResponse);
  }

  alerts(payload: z.input<typeof api.AlertmanagerPayloadSchema>) {
    return this.call('POST', '/api/alerts', api.AlertsResponse, payload);
  }

  /** The alerts the engine holds for a tier (what holds its rollouts back). */
  tierAlerts(tier: string) {
    return this.call('GET', `${tierPath(tier)}/alerts`, api.TierAlertsResponse);
  }

  /** Clear the tier's alerts, or the one of that key (audited under the token's user). */
  clearAlerts(tier: string, key?: string) {
    return this.call('DELETE', `${tierPath(tier)}/alerts${key === undefined ? '' : `?key=${encodeURIComponent(key)}`}`, api.ClearAlertsResponse);
  }

  tiers() {
    return this.call('GET', '/api/tiers', api.TiersResponse);
  }

  /** The head document and its revision (for expectRevision). */
  head(tier: string) {
    return this.call('GET', `${tierPath(tier)}/config`, api.HeadResponse);
  }

  version(tier: string, version: number) {
    return this.call('GET', `${tierPath(tier)}/config?version=${version}`, VersionRecordSchema);
  }

  putConfig(tier: string, body: z.input<typeof api.PutConfigRequest>) {
    return this.call('PUT', `${tierPath(tier)}/config`, api.WrittenResponse, body);
  }

  history(tier: string) {
    return this.call('GET', `${tierPath(tier)}/history`, api.HistoryResponse);
  }

  audit(tier: string, limit?: number) {
    return this.call('GET', `${tierPath(tier)}/audit${limit === undefined ? '' : `?limit=${limit}`}`, api.AuditResponse);
  }

  revert(tier: string, body: z.input<typeof api.RevertRequest>) {
    return this.call('POST', `${tierPath(tier)}/revert`, api.WrittenResponse, body);
  }

  rollout(tier: string) {
    return this.call('GET', `${tierPath(tier)}/rollout`, api.RolloutView);
  }

  startRollout(tier: string, body: z.input<typeof api.StartRolloutRequest>) {
    return this.call('POST', `${tierPath(tier)}/rollout`, RolloutStateSchema, body);
  }

  act(tier: string, action: api.RolloutAction, reason?: string) {
    return this.call('POST', `${tierPath(tier)}/rollout/${action}`, RolloutStateSchema, { reason });
  }

  preview(tier: string, percent: number) {
    return this.call('GET', `${tierPath(tier)}/preview?percent=${percent}`, api.PreviewResponse);
  }

  /** The tier's services with the violations their hosts' agents saw (a page, most first). */
  services(tier: string, page: { limit?: number; offset?: number } = {}) {
    return this.call('GET', `${tierPath(tier)}/services${query(page)}`, api.ServicesResponse);
  }

  /** Summary entries whose service, host or destination contains q: "is my traffic affected?". */
  violations(q: string, opts: { tier?: string; limit?: number; offset?: number } = {}) {
    return this.call('GET', `/api/violations${query({ q, ...opts })}`, api.ViolationsResponse);
  }

  /** The sampled totals over time of the services whose name contains q. */
  violationSeries(q: string, opts: { tier?: string; max?: number } = {}) {
    return this.call('GET', `/api/violations/series${query({ q, ...opts })}`, api.SeriesResponse);
  }

  agents(tier: string, filter: { errors?: boolean; behind?: boolean; host?: string; limit?: number; offset?: number } = {}) {
    const { errors, behind, ...page } = filter;
    const flags = [errors ? 'errors' : '', behind ? 'behind' : ''].filter(Boolean).join('&');
    const rest = query(page).slice(1);
    const q = [flags, rest].filter(Boolean).join('&');
    return this.call('GET', `${tierPath(tier)}/agents${q ? `?${q}` : ''}`, api.AgentsPageResponse);
  }

  agent(host: string) {
    return this.call('GET', `/api/hosts/${encodeURIComponent(host)}/agent`, api.AgentView);
  }

  setOverride(host: string, body: z.input<typeof api.OverrideRequest>) {
    return this.call('PUT', `/api/hosts/${encodeURIComponent(host)}/override`, api.OverrideResponse, body);
  }

  clearOverride(host: string) {
    return this.call('DELETE', `/api/hosts/${encodeURIComponent(host)}/override`, api.OverrideRemovedResponse);
  }

  private async call<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>> {
    let res: { status: number; text: string };
    try {
      res = await this.request(method, path, body);
    } catch (err) {
      const e = err as Error & { code?: string };
      const tls = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(e.code ?? '');
      throw new SslwallError(
        'SSLWALL_E_ENGINE',
        `cannot reach the engine at ${this.url}: ${e.message}; ${tls ? "pass the CA that issued the engine's certificate with --engine-ca FILE" : 'start one (sslwall engine) or pass --engine URL'}`,
        { cause: err },
      );
    }
    const text = res.text;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new SslwallError(
        'SSLWALL_E_ENGINE',
        `the engine at ${this.url} answered ${method} ${path} with HTTP ${res.status} and no JSON: ${text.slice(0, 200)}; is --engine an sslwall engine?`,
      );
    }
    if (res.status >= 400) {
      const e = api.ErrorBodySchema.safeParse(json);
      if (!e.success)
        throw new SslwallError('SSLWALL_E_ENGINE', `the engine at ${this.url} answered ${method} ${path} with HTTP ${res.status}: ${text.slice(0, 200)}`);
      throw new SslwallError(e.data.code in ErrorCodes ? (e.data.code as ErrorCode) : 'SSLWALL_E_ENGINE', e.data.message);
    }
    const r = schema.safeParse(json);
    if (!r.success)
      throw new SslwallError(
        'SSLWALL_E_ENGINE',
        `the engine at ${this.url} answered ${method} ${path} with a body this client does not understand (${describeIssues(r.error)}); is it the same sslwall version?`,
      );
    return r.data;
  }

  private request(method: string, path: string, body: unknown): Promise<{ status: number; text: string }> {
    const url = new URL(`${this.url}${path}`);
    const timeoutMs = this.opts.timeoutMs ?? 15000;
    const headers: Record<string, string> = {
      // The engine takes writes only as JSON (a cross-site form cannot send it without a preflight).
      ...(method === 'GET' ? {} : { 'content-type': 'application/json' }),
      ...(this.opts.token ? { authorization: `Bearer ${this.opts.token}` } : {}),
    };
    return new Promise((resolve, reject) => {
      const opts = { method, headers, timeout: timeoutMs };
      const onRes = (res: http.IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      };
      const req = url.protocol === 'https:' ? https.request(url, { ...opts, ca: this.opts.ca }, onRes) : http.request(url, opts, onRes);
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }
}

/** ?a=1&b=x of the defined values, or ''. */
function query(params: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

function tierPath(tier: string): string {
  return `/api/tiers/${encodeURIComponent(tier)}`;
}
