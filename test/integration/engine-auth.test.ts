// Who may call the engine (docs/security.md), tried against a real engine over real etcd: no
// token, unknown token, each role outside its rights, a forged author, a cross-site form post, a
// rebound DNS name, HTTPS with a private CA (and an unknown one), the users file changing under
// a running engine, and an exposed address without TLS.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { addUser, sha256Hex } from '../../rollout/auth.js';
import { runHost } from '../../tools/lab/agent-proc.js';
import { makeCa, makeCerts } from '../../tools/lab/certs.js';
import { type EtcdServer, freePort, startEtcd } from '../../tools/lab/etcd.js';
import { EngineProc, type Keys, makeKeys } from '../../tools/lab/fleet.js';

const BASE = { mode: 'passive', bypass: { ports: [22] } };

interface Answer {
  status: number;
  body: { code?: string; message?: string } & Record<string, unknown>;
}

/** A raw request (node:http, so Host and Origin can be anything a browser or attacker sends). */
function call(
  url: string,
  method: string,
  p: string,
  opts: { token?: string; body?: unknown; type?: string | null; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const text = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const headers: Record<string, string> = {
    ...(opts.type === null ? {} : { 'content-type': opts.type ?? 'application/json' }),
    ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
    ...(text === undefined ? {} : { 'content-length': String(Buffer.byteLength(text)) }),
    ...opts.headers,
  };
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${p}`, { method, headers }, (res) => {
      let data = '';
      res.on('data', (c: Buffer) => (data += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data ? JSON.parse(data) : {} }));
    });
    req.on('error', reject);
    req.end(text);
  });
}

async function until(what: string, fn: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  while (!(await fn())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`expected ${what} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return Date.now() - t0;
}

describe('engine API authentication and authorisation', () => {
  let etcd: EtcdServer;
  let keys: Keys;
  let engine: EngineProc;
  let logDir: string;
  let usersFile: string;
  const tok: Record<'operator' | 'viewer' | 'alerts', string> = { operator: '', viewer: '', alerts: '' };

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-auth-test-'));
    usersFile = path.join(logDir, 'users.json');
    tok.operator = addUser(usersFile, 'alice', 'operator');
    tok.viewer = addUser(usersFile, 'victor', 'viewer');
    tok.alerts = addUser(usersFile, 'alertmanager', 'alerts');
    etcd = await startEtcd();
    keys = makeKeys();
    // As behind a load balancer that terminates TLS: the public name is https, the engine http.
    engine = await EngineProc.start(etcd.endpoints, keys, 'auth', logDir, { users: usersFile, extra: ['--public-url', 'https://engine.example'] });
  });

  after(async () => {
    await engine?.stop();
    await etcd?.stop();
    if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  test('no token or an unknown one: 401; /healthz, /metrics and the dashboard page need none', async () => {
    for (const [method, p] of [
      ['GET', '/api/tiers'],
      ['PUT', '/api/tiers/web/config'],
      ['POST', '/api/alerts'],
    ] as const) {
      const body = method === 'GET' ? undefined : {};
      const none = await call(engine.url, method, p, { body });
      assert.deepEqual([none.status, none.body.code], [401, 'SSLWALL_E_UNAUTHENTICATED'], `${method} ${p} without a token`);
      const unknown = await call(engine.url, method, p, { body, token: 'not-a-token' });
      assert.deepEqual([unknown.status, unknown.body.code], [401, 'SSLWALL_E_UNAUTHENTICATED'], `${method} ${p} with an unknown token`);
    }
    assert.equal((await call(engine.url, 'GET', '/healthz')).status, 200);
    const metrics = await fetch(`${engine.url}/metrics`);
    assert.equal(metrics.status, 200);
    await metrics.text();
    const page = await fetch(`${engine.url}/`);
    assert.equal(page.status, 200, 'the page shell loads; it asks for a token before fetching data');
    assert.match(await page.text(), /dashboard\.js/);
  });

  test('operator writes; the author is the credential name even with a forged header or body field', async () => {
    const forged = { 'x-sslwall-user': 'mallory' };
    const put = await call(engine.url, 'PUT', '/api/tiers/web/config', {
      token: tok.operator,
      headers: forged,
      body: { document: BASE, message: 'first', author: 'mallory' },
    });
    assert.equal(put.status, 201, JSON.stringify(put.body));
    assert.equal(put.body.author, 'alice');
    const hist = await call(engine.url, 'GET', '/api/tiers/web/history', { token: tok.viewer, type: null });
    assert.deepEqual(
      (hist.body as unknown as Array<{ author: string }>).map((r) => r.author),
      ['alice'],
    );
    const start = await call(engine.url, 'POST', '/api/tiers/web/rollout', {
      token: tok.operator,
      headers: forged,
      body: { stages: 'passive:100', bake: '1h', by: 'mallory' },
    });
    assert.equal(start.status, 201, JSON.stringify(start.body));
    assert.equal(start.body.startedBy, 'alice');
    const pause = await call(engine.url, 'POST', '/api/tiers/web/rollout/pause', { token: tok.operator, headers: forged, body: { reason: 'look' } });
    assert.equal(pause.status, 200, JSON.stringify(pause.body));
    const ovr = await call(engine.url, 'PUT', '/api/hosts/h1/override', { token: tok.operator, headers: forged, body: { mode: 'off', reason: 'maint' } });
    assert.equal(ovr.status, 201, JSON.stringify(ovr.body));
    const audit = await call(engine.url, 'GET', '/api/tiers/web/audit', { token: tok.viewer, type: null });
    const actors = new Set((audit.body as unknown as Array<{ actor?: string }>).map((a) => a.actor));
    assert.ok(actors.has('alice') && !actors.has('mallory'), `audit actors: ${[...actors].join(', ')}`);
    const abort = await call(engine.url, 'POST', '/api/tiers/web/rollout/abort', { token: tok.operator, body: { reason: 'done' } });
    assert.equal(abort.status, 200, JSON.stringify(abort.body));
    assert.doesNotMatch(engine.log(), /"(author|by|actor)":"mallory"/, 'mallory is recorded nowhere');
  });

  test('viewer reads but may not write; alerts may only post alerts, and nobody else may', async () => {
    const read = await call(engine.url, 'GET', '/api/tiers', { token: tok.viewer, type: null });
    assert.equal(read.status, 200);
    for (const [token, method, p, body] of [
      [tok.viewer, 'PUT', '/api/tiers/web/config', { document: BASE }],
      [tok.viewer, 'POST', '/api/tiers/web/rollout/pause', {}],
      [tok.viewer, 'DELETE', '/api/hosts/h1/override', undefined],
      [tok.viewer, 'POST', '/api/alerts', { alerts: [] }],
      [tok.operator, 'POST', '/api/alerts', { alerts: [] }],
      [tok.alerts, 'GET', '/api/tiers', undefined],
      [tok.alerts, 'GET', '/api/tiers/web/config', undefined],
      [tok.alerts, 'PUT', '/api/tiers/web/config', { document: BASE }],
    ] as const) {
      const r = await call(engine.url, method, p, { token, body });
      assert.deepEqual([r.status, r.body.code], [403, 'SSLWALL_E_FORBIDDEN'], `${method} ${p}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.message!, /may not/);
    }
    const alert = await call(engine.url, 'POST', '/api/alerts', { token: tok.alerts, body: { alerts: [] } });
    assert.equal(alert.status, 200, JSON.stringify(alert.body));
  });

  test('a cross-site text/plain form post is refused and writes nothing; the dashboard origin works', async () => {
    const before = await call(engine.url, 'GET', '/api/tiers/csrf/config', { token: tok.viewer, type: null });
    assert.equal(before.status, 404);
    const form = JSON.stringify({ document: BASE, message: 'csrf' });
    for (const token of [undefined, tok.operator]) {
      const r = await call(engine.url, 'PUT', '/api/tiers/csrf/config', { token, type: 'text/plain', body: form, headers: { origin: 'http://evil.example' } });
      assert.ok([403, 415].includes(r.status), `cross-site form post refused, got ${r.status} ${JSON.stringify(r.body)}`);
      const start = await call(engine.url, 'POST', '/api/tiers/web/rollout', {
        token,
        type: 'text/plain',
        body: JSON.stringify({ stages: 'active:100' }),
        headers: { origin: 'http://evil.example' },
      });
      assert.ok([403, 415].includes(start.status), `cross-site rollout start refused, got ${start.status}`);
    }
    // Even with the right origin and a token, a write must be JSON.
    const plain = await call(engine.url, 'PUT', '/api/tiers/csrf/config', { token: tok.operator, type: 'text/plain', body: form });
    assert.equal(plain.status, 415);
    const evilJson = await call(engine.url, 'PUT', '/api/tiers/csrf/config', { token: tok.operator, body: form, headers: { origin: 'http://evil.example' } });
    assert.deepEqual([evilJson.status, evilJson.body.code], [403, 'SSLWALL_E_FORBIDDEN']);
    const after = await call(engine.url, 'GET', '/api/tiers/csrf/config', { token: tok.viewer, type: null });
    assert.equal(after.status, 404, 'nothing was written');
    const rollout = await call(engine.url, 'GET', '/api/tiers/web/rollout', { token: tok.viewer, type: null });
    assert.notEqual(rollout.body.status, 'running', 'no rollout was started');
    const sameOrigin = await call(engine.url, 'GET', '/api/tiers', { token: tok.viewer, type: null, headers: { origin: engine.url } });
    assert.equal(sameOrigin.status, 200, 'the dashboard (same origin) is let in');
  });

  test('a Host that is not one of the engine names (DNS rebinding) gets 403; --public-url names work', async () => {
    const port = new URL(engine.url).port;
    const r = await call(engine.url, 'GET', '/api/tiers', { token: tok.viewer, type: null, headers: { host: `evil.example:${port}` } });
    assert.deepEqual([r.status, r.body.code], [403, 'SSLWALL_E_FORBIDDEN']);
    assert.match(r.body.message!, /Host evil\.example:\d+ is not one of this engine's names/);
    const local = await call(engine.url, 'GET', '/api/tiers', { token: tok.viewer, type: null, headers: { host: `localhost:${port}` } });
    assert.equal(local.status, 200);
    const viaPublic = { host: 'engine.example', origin: 'https://engine.example' };
    const pub = await call(engine.url, 'GET', '/api/tiers', { token: tok.viewer, type: null, headers: viaPublic });
    assert.equal(pub.status, 200, `the --public-url name and its origin: ${JSON.stringify(pub.body)}`);
    const otherScheme = await call(engine.url, 'GET', '/api/tiers', {
      token: tok.viewer,
      type: null,
      headers: { ...viaPublic, origin: 'http://engine.example' },
    });
    assert.deepEqual([otherScheme.status, otherScheme.body.code], [403, 'SSLWALL_E_FORBIDDEN'], 'http://engine.example is another origin');
  });

  test('the users file is re-read within 5 s (rename and in place); a bad file is refused and the users stay', async () => {
    const bob = addUser(usersFile, 'bob', 'viewer'); // renamed over the old file
    const tookMs = await until(
      'the new user to be let in',
      async () => (await call(engine.url, 'GET', '/api/tiers', { token: bob, type: null })).status === 200,
      5000,
    );
    fs.writeFileSync(usersFile, '[{"name": "broken"'); // in place, not JSON
    await until('the bad users file to be refused', async () => engine.log().includes('"event":"users_refused"'), 5000);
    assert.equal((await call(engine.url, 'GET', '/api/tiers', { token: bob, type: null })).status, 200, 'previous users stay');
    // In place again, valid: only carol (operator) now.
    const carol = 'carol-token-0123456789';
    fs.writeFileSync(usersFile, JSON.stringify([{ name: 'carol', role: 'operator', token_sha256: sha256Hex(carol) }]));
    await until(
      'bob to be gone after the in-place rewrite',
      async () => (await call(engine.url, 'GET', '/api/tiers', { token: bob, type: null })).status === 401,
      5000,
    );
    assert.equal((await call(engine.url, 'GET', '/api/tiers', { token: carol, type: null })).status, 200);
    console.log(`users file change seen after ${tookMs} ms`);
  });
});

describe('engine API over HTTPS, and exposure rules', () => {
  test('HTTPS with --engine-ca works; the CLI refuses an engine whose CA it does not know', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-auth-tls-'));
    const etcd = await startEtcd();
    const keys = makeKeys();
    let engine: EngineProc | undefined;
    try {
      const certs = await makeCerts(path.join(dir, 'certs'), { ips: ['127.0.0.1'], dnsNames: ['localhost'] });
      const other = await makeCa(path.join(dir, 'other'), 'other-ca');
      engine = await EngineProc.start(etcd.endpoints, keys, 'tls', dir, { tls: { cert: certs.cert, key: certs.key, ca: certs.caCert } });
      assert.match(engine.url, /^https:\/\//);
      const cfg = path.join(dir, 'c.json');
      fs.writeFileSync(cfg, JSON.stringify(BASE));
      const auth = ['--engine', engine.url, '--token-file', engine.tokenFile];
      const set = await runHost(['config', 'set', '--tier', 'web', '--file', cfg, ...auth, '--engine-ca', certs.caCert]);
      assert.equal(set.code, 0, set.stderr);
      const get = await runHost(['config', 'get', '--tier', 'web', '--json', ...auth, '--engine-ca', certs.caCert]);
      assert.equal(get.code, 0, get.stderr);
      assert.equal(JSON.parse(get.stdout).version, 1);
      for (const ca of [['--engine-ca', other.caCert], []]) {
        const bad = await runHost(['config', 'get', '--tier', 'web', ...auth, ...ca]);
        assert.equal(bad.code, 1, `an unknown CA (${ca.join(' ') || 'system CAs'}) is refused`);
        assert.match(bad.stderr, /SSLWALL_E_ENGINE: cannot reach the engine at https:.*certificate.*--engine-ca FILE/);
      }
    } finally {
      await engine?.stop();
      await etcd.stop();
      fs.rmSync(keys.dir, { recursive: true, force: true });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a non-loopback address without TLS, or no --users, is refused (exit 2) unless --insecure', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-auth-exp-'));
    const keys = makeKeys();
    try {
      const users = path.join(dir, 'users.json');
      addUser(users, 'alice', 'operator');
      const port = await freePort();
      const common = ['engine', '--etcd', 'http://127.0.0.1:1', '--signing-key', keys.signingKey];
      const exposed = await runHost([...common, '--users', users, '--listen', `0.0.0.0:${port}`]);
      assert.equal(exposed.code, 2, exposed.stderr);
      assert.match(
        exposed.stderr,
        /SSLWALL_E_USAGE: --listen 0\.0\.0\.0:\d+ is not a loopback address: serve it over HTTPS \(--tls-cert FILE --tls-key FILE\), or pass --insecure/,
      );
      const noUsers = await runHost([...common, '--listen', `127.0.0.1:${port}`]);
      assert.equal(noUsers.code, 2, noUsers.stderr);
      assert.match(noUsers.stderr, /SSLWALL_E_USAGE: engine needs --users FILE/);
    } finally {
      fs.rmSync(keys.dir, { recursive: true, force: true });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
