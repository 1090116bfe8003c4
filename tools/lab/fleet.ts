// Test fleet: engine replicas and a simulated agent fleet as processes, as an operator runs them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { addUser } from '../../rollout/auth.js';
import { EngineClient } from '../../rollout/client.js';
import { generateKeyPair } from '../../rollout/signing.js';
import type { StatsLine } from '../simulate/shared.js';
import { SSLWALL } from './agent-proc.js';
import { freePort } from './etcd.js';
import { Proc } from './proc.js';

export interface Keys {
  dir: string;
  signingKey: string;
  verifyKey: string;
}

export function makeKeys(): Keys {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-keys-'));
  return { dir, ...generateKeyPair(dir) };
}

export interface EngineProcOptions {
  /** A users file to use; default: a new one in logDir with the operator "test" and the alerts user "alertmanager". */
  users?: string;
  /** HTTPS: the engine's certificate and key, and the CA the client trusts. */
  tls?: { cert: string; key: string; ca: string };
  /** More `sslwall engine` flags. */
  extra?: string[];
}

export class EngineProc {
  private constructor(
    readonly url: string,
    readonly proc: Proc,
    readonly id: string,
    /** The users file the engine reads. */
    readonly users: string,
    /** An operator's token (the default users file), or '' with opts.users. */
    readonly token: string,
    /** The alerts user's token, what Alertmanager would send (default users file only). */
    readonly alertsToken: string,
    /** The same token in a file, for the CLI's --token-file. */
    readonly tokenFile: string,
  ) {}

  static async start(endpoints: string[], keys: Keys, id: string, logDir: string, opts: EngineProcOptions = {}): Promise<EngineProc> {
    const port = await freePort();
    // Replicas of one test share logDir, and so one users file with the same two users.
    const users = opts.users ?? path.join(logDir, 'users.json');
    const tokenFile = path.join(logDir, 'token');
    const alertsFile = path.join(logDir, 'token-alerts');
    if (!opts.users && !fs.existsSync(tokenFile)) {
      fs.writeFileSync(tokenFile, `${addUser(users, 'test', 'operator')}\n`, { mode: 0o600 });
      fs.writeFileSync(alertsFile, `${addUser(users, 'alertmanager', 'alerts')}\n`, { mode: 0o600 });
    }
    const [token, alertsToken] = opts.users ? ['', ''] : [tokenFile, alertsFile].map((f) => fs.readFileSync(f, 'utf8').trim());
    const tls = opts.tls ? ['--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key] : [];
    const proc = Proc.start(
      `engine-${id}`,
      process.execPath,
      [
        SSLWALL,
        'engine',
        '--etcd',
        endpoints.join(','),
        '--signing-key',
        keys.signingKey,
        '--users',
        users,
        '--listen',
        `127.0.0.1:${port}`,
        '--id',
        id,
        '--lease-ttl',
        '2',
        ...tls,
        ...(opts.extra ?? []),
      ],
      path.join(logDir, `engine-${id}.log`),
    );
    const e = new EngineProc(`${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`, proc, id, users, token!, alertsToken!, tokenFile);
    const probe = new EngineClient(e.url, { ca: opts.tls ? fs.readFileSync(opts.tls.ca, 'utf8') : undefined, timeoutMs: 2000 });
    const deadline = Date.now() + 15000;
    for (;;) {
      try {
        await probe.healthz();
        return e;
      } catch {
        // not up yet
      }
      if (!proc.running || Date.now() > deadline)
        throw new Error(`engine ${id} did not start:\n${fs.existsSync(proc.logFile) ? fs.readFileSync(proc.logFile, 'utf8').slice(-2000) : ''}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A call as the operator, or for POST /api/alerts as Alertmanager (the only role allowed to). */
  async api<T = unknown>(method: string, p: string, body?: unknown): Promise<{ status: number; body: T }> {
    const token = method === 'POST' && p === '/api/alerts' ? this.alertsToken : this.token;
    const r = await fetch(`${this.url}${p}`, {
      method,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: r.status, body: (await r.json()) as T };
  }

  async isLeader(): Promise<boolean> {
    try {
      return (await this.api<{ isLeader: boolean }>('GET', '/api/leader')).body.isLeader;
    } catch {
      return false;
    }
  }

  log(): string {
    return fs.existsSync(this.proc.logFile) ? fs.readFileSync(this.proc.logFile, 'utf8') : '';
  }

  async stop(): Promise<void> {
    await this.proc.stop('SIGTERM', 5000);
  }

  async kill9(): Promise<void> {
    this.proc.killNow();
    while (this.proc.running) await new Promise((r) => setTimeout(r, 20));
  }
}

export class SimProc {
  private constructor(readonly proc: Proc) {}

  static async start(endpoints: string[], tier: string, agents: number, keys: Keys | null, logDir: string, extra: string[] = []): Promise<SimProc> {
    const args = [
      SSLWALL,
      'simulate',
      '--etcd',
      endpoints.join(','),
      '--tier',
      tier,
      '--agents',
      String(agents),
      '--stats-interval',
      '250',
      ...(keys ? ['--verify-key', keys.verifyKey] : ['--insecure-unsigned']),
      ...extra,
    ];
    const proc = Proc.start(`sim-${tier}`, process.execPath, args, path.join(logDir, `sim-${tier}-${Date.now()}.log`));
    const s = new SimProc(proc);
    await s.waitStats((st) => st.alive === agents, 30000, `${agents} simulated agents alive`);
    return s;
  }

  stats(): StatsLine | null {
    if (!fs.existsSync(this.proc.logFile)) return null;
    const lines = fs
      .readFileSync(this.proc.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{"t"'));
    return lines.length ? (JSON.parse(lines[lines.length - 1]!) as StatsLine) : null;
  }

  async waitStats(pred: (s: StatsLine) => boolean, timeoutMs: number, what: string): Promise<StatsLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.stats();
      if (s && pred(s)) return s;
      if (Date.now() > deadline || !this.proc.running)
        throw new Error(
          `simulator: expected ${what} within ${timeoutMs} ms; last stats ${JSON.stringify(s)}\n${fs.existsSync(this.proc.logFile) ? fs.readFileSync(this.proc.logFile, 'utf8').slice(-1500) : ''}`,
        );
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    await this.proc.stop('SIGTERM', 10000);
  }
}

/** A tiny stand-in for Prometheus's HTTP API (/api/v1/query), answering what the test sets. */
export async function fakePrometheus(): Promise<{ url: string; set(value: number | null): void; close(): Promise<void> }> {
  const http = await import('node:http');
  let value: number | null = 0;
  const server = http.createServer((_req, res) => {
    const result = value === null ? [] : [{ metric: {}, value: [Date.now() / 1000, String(value)] }];
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result } }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, set: (v) => (value = v), close: () => new Promise((r) => server.close(() => r())) };
}
