// The engine's HTTP API from the caller's side: a method per route (docs/rollout.md#http-api),
// requests typed and answers parsed with the schemas of schemas/api.ts. An error answer becomes
// an SslwallError with the engine's code; an engine that cannot be reached SSLWALL_E_ENGINE.
import type { z } from 'zod';
import * as api from '../schemas/api.js';
import { describeIssues } from '../schemas/config.js';
import { type ErrorCode, ErrorCodes, SslwallError } from '../schemas/errors.js';
import { RolloutStateSchema } from '../schemas/rollout.js';
import { VersionRecordSchema } from '../schemas/tier.js';

export interface EngineClientOptions {
  /** Sent as x-sslwall-user: the author of what this client writes. */
  user?: string;
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

  setOverride(host: string, body: z.input<typeof api.OverrideRequest>) {
    return this.call('PUT', `/api/hosts/${encodeURIComponent(host)}/override`, api.OverrideResponse, body);
  }

  clearOverride(host: string) {
    return this.call('DELETE', `/api/hosts/${encodeURIComponent(host)}/override`, api.OverrideRemovedResponse);
  }

  private async call<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.output<S>> {
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, {
        method,
        headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(this.opts.user ? { 'x-sslwall-user': this.opts.user } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.opts.timeoutMs ?? 15000),
      });
    } catch (err) {
      const why = (err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message;
      throw new SslwallError('SSLWALL_E_ENGINE', `cannot reach the engine at ${this.url}: ${why}; start one (sslwall engine) or pass --engine URL`, {
        cause: err,
      });
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new SslwallError(
        'SSLWALL_E_ENGINE',
        `the engine at ${this.url} answered ${method} ${path} with HTTP ${res.status} and no JSON: ${text.slice(0, 200)}; is --engine an sslwall engine?`,
      );
    }
    if (!res.ok) {
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
}

function tierPath(tier: string): string {
  return `/api/tiers/${encodeURIComponent(tier)}`;
}
