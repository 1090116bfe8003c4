// A real Prometheus and Alertmanager (Debian's binaries) for the alarm end-to-end test and bench:
// Prometheus scrapes the given targets every second and evaluates one alert rule every second;
// Alertmanager sends each alert at once (group_wait 0s, group_interval 1s) to every webhook
// receiver given, with a bearer token from a file (http_config.authorization, as docs/rollout.md
// shows an operator). Both listen on free loopback ports with data in a temp dir, are tracked
// like the lab's etcd, and are killed at exit if destroy() never ran. The configs are written as
// JSON, which both read as the YAML it is a subset of. startAlarmFleet puts it all together with
// agents and an engine, for the test and the bench alike.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type AgentEnv, AgentProc, agentEnv, sslwall } from './agent-proc.js';
import { type EtcdServer, freePort, startEtcd } from './etcd.js';
import { EtcdBridge } from './etcd-bridge.js';
import { atExit } from './exit.js';
import { EngineProc, type Keys, makeKeys } from './fleet.js';
import { createTestbed, type Side, type Testbed } from './netns.js';
import { plainClient, startSink } from './peers.js';
import { BIN, Proc, pidAlive, requireBins, tail, waitFor } from './proc.js';

const BLOCKED = 'sslwall_flows_total{verdict="blocked"}';
/**
 * The rule of the test and bench: a tier's agents blocked plaintext flows in the last 10 s. A
 * counter series is born at its first blocked flow, and increase() needs two samples, so a series
 * that was not there 10 s ago counts too.
 */
export const BLOCKING_RULE = `sum by (tier) ((increase(${BLOCKED}[10s]) > 0) or (${BLOCKED} unless ${BLOCKED} offset 10s)) > 0`;

export interface AlertRule {
  name: string;
  /** PromQL; a result row fires (with its labels). */
  expr: string;
  /** How long expr must hold before the alert fires. */
  for: string;
  labels?: Record<string, string>;
}

export interface WebhookReceiver {
  name: string;
  url: string;
  /** A file holding the bearer token Alertmanager sends (role alerts for the engine). */
  credentialsFile?: string;
}

export interface AlarmLabOptions {
  /** host:port of each /metrics target, with labels Prometheus adds to its series (tier). */
  targets: Array<{ address: string; labels: Record<string, string> }>;
  rule: AlertRule;
  /** Every alert goes to each of these (a route per receiver, continue: true). */
  receivers: WebhookReceiver[];
  /** Alertmanager's repeat_interval; the engine's --alert-ttl must be longer. */
  repeatInterval?: string;
}

export interface AlarmLab {
  prometheusUrl: string;
  alertmanagerUrl: string;
  dir: string;
  destroy(): Promise<void>;
}

const live = new Set<Proc>();
const liveDirs = new Set<string>();
let exitHook = false;

function track(p: Proc, dir: string): void {
  live.add(p);
  liveDirs.add(dir);
  if (exitHook) return;
  exitHook = true;
  atExit(() => {
    for (const q of live) q.killNow();
    const deadline = Date.now() + 2000;
    while ([...live].some((q) => pidAlive(q.pid)) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

async function ready(what: string, url: string, proc: Proc): Promise<void> {
  await waitFor(
    `${what} ready at ${url}`,
    async () => {
      if (!proc.running) throw new Error(`${what} exited:\n${tail(proc.logFile)}`);
      try {
        return (await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) })).ok;
      } catch {
        return false;
      }
    },
    { timeoutMs: 20000 },
  );
}

/** Alertmanager's config: one route per receiver, all matched, alerts sent at once. */
export function alertmanagerConfig(receivers: WebhookReceiver[], repeatInterval = '1h'): unknown {
  if (!receivers.length) throw new Error('alertmanagerConfig: give at least one receiver');
  return {
    route: {
      receiver: receivers[0]!.name,
      // Each alert a group of its own: one alert's notification never waits for another's.
      group_by: ['...'],
      group_wait: '0s',
      group_interval: '1s',
      repeat_interval: repeatInterval,
      routes: receivers.map((r) => ({ receiver: r.name, continue: true })),
    },
    receivers: receivers.map((r) => ({
      name: r.name,
      webhook_configs: [
        {
          url: r.url,
          send_resolved: true,
          ...(r.credentialsFile ? { http_config: { authorization: { type: 'Bearer', credentials_file: r.credentialsFile } } } : {}),
        },
      ],
    })),
  };
}

export async function startAlarmLab(opts: AlarmLabOptions): Promise<AlarmLab> {
  requireBins(['prometheus', 'alertmanager']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-alarm-'));
  liveDirs.add(dir);
  const procs: Proc[] = [];
  const destroy = async () => {
    for (const p of procs) {
      await p.stop('SIGTERM', 5000);
      live.delete(p);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    liveDirs.delete(dir);
  };
  try {
    const [amPort, promPort] = [await freePort(), await freePort()];
    const alertmanagerUrl = `http://127.0.0.1:${amPort}`;
    const prometheusUrl = `http://127.0.0.1:${promPort}`;

    const amConfig = path.join(dir, 'alertmanager.yml');
    fs.writeFileSync(amConfig, JSON.stringify(alertmanagerConfig(opts.receivers, opts.repeatInterval), null, 2));
    const am = Proc.start(
      'alertmanager',
      BIN.alertmanager,
      [
        `--config.file=${amConfig}`,
        `--storage.path=${path.join(dir, 'am-data')}`,
        `--web.listen-address=127.0.0.1:${amPort}`,
        // No cluster: it would listen on 0.0.0.0:9094 and gossip for peers.
        '--cluster.listen-address=',
      ],
      path.join(dir, 'alertmanager.log'),
    );
    procs.push(am);
    track(am, dir);

    const rules = path.join(dir, 'rules.yml');
    fs.writeFileSync(
      rules,
      JSON.stringify({
        groups: [
          { name: 'sslwall', interval: '1s', rules: [{ alert: opts.rule.name, expr: opts.rule.expr, for: opts.rule.for, labels: opts.rule.labels ?? {} }] },
        ],
      }),
    );
    const promConfig = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(
      promConfig,
      JSON.stringify(
        {
          global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
          rule_files: [rules],
          alerting: { alertmanagers: [{ static_configs: [{ targets: [`127.0.0.1:${amPort}`] }] }] },
          scrape_configs: [{ job_name: 'sslwall', static_configs: opts.targets.map((t) => ({ targets: [t.address], labels: t.labels })) }],
        },
        null,
        2,
      ),
    );
    const prom = Proc.start(
      'prometheus',
      BIN.prometheus,
      [`--config.file=${promConfig}`, `--storage.tsdb.path=${path.join(dir, 'prom-data')}`, `--web.listen-address=127.0.0.1:${promPort}`],
      path.join(dir, 'prometheus.log'),
    );
    procs.push(prom);
    track(prom, dir);

    await ready('alertmanager', alertmanagerUrl, am);
    await ready('prometheus', prometheusUrl, prom);
    return { prometheusUrl, alertmanagerUrl, dir, destroy };
  } catch (err) {
    await destroy();
    throw err;
  }
}

/**
 * A port on 127.0.0.1 inside a test namespace, reachable from the host's loopback (Prometheus
 * scraping an agent's /metrics): socat in the namespace forwards a unix socket to the port, socat
 * on the host listens and forwards to the socket. Both stop with the bed.
 */
export async function exposeToHost(tb: Testbed, side: Side, port: number): Promise<string> {
  const dir = tb.tempDir(`expose-${side}-${port}`);
  const sock = path.join(dir, 'port.sock');
  tb.spawn(side, `expose-${port}`, BIN.socat, [`UNIX-LISTEN:${sock},fork,mode=600`, `TCP:127.0.0.1:${port}`]);
  await waitFor('the exposed socket', () => fs.existsSync(sock), { timeoutMs: 5000 });
  const hostPort = await freePort();
  const host = Proc.start(
    'expose-host',
    BIN.socat,
    [`TCP-LISTEN:${hostPort},bind=127.0.0.1,fork,reuseaddr`, `UNIX-CONNECT:${sock}`],
    path.join(dir, 'host.log'),
  );
  // Outside the bed's namespaces, so the bed's own sweep would miss it.
  atExit(() => host.killNow());
  tb.onDestroy(() => host.stop('SIGTERM', 2000));
  return `127.0.0.1:${hostPort}`;
}

export interface AlarmFleet {
  tb: Testbed;
  etcd: EtcdServer;
  keys: Keys;
  engine: EngineProc;
  agents: Array<{ side: Side; env: AgentEnv; agent: AgentProc }>;
  lab: AlarmLab;
  tier: string;
  /** Start a rollout to active:100 (only the alarm can roll it back) and wait until both agents run it; its tier version. */
  rolloutActive(): Promise<number>;
  /** Errors in the cohort: a plaintext connection from the client side, blocked by the active agents. */
  raiseErrors(): Promise<void>;
  /** When (ms since the epoch) every agent applied a tier version above `version`. */
  rolledBackAt(version: number, timeoutMs?: number): Promise<number>;
  destroy(): Promise<void>;
}

export const ALARM_RULE_NAME = 'SslwallBlockingPlaintext';
const SINK_PORT = 9000;
const METRICS_PORT = 9464;
const BASE = { mode: 'passive', bypass: { ports: [22] }, starttls: { smtp: [25] } };

/**
 * The whole alarm path, as an operator runs it: two agents (one per side of a test bed, BPF in
 * the kernel) on a real etcd under a real engine, Prometheus scraping their /metrics with the
 * BLOCKING_RULE, Alertmanager posting to the engine with the alerts user's token, and to each of
 * `extraReceivers` (the bench's bare receiver). Everything is removed by destroy(), also when
 * the start fails.
 */
export async function startAlarmFleet(label: string, logDir: string, extraReceivers: WebhookReceiver[] = []): Promise<AlarmFleet> {
  const tier = 'alarm';
  const made: Array<() => Promise<void>> = [];
  const destroy = async () => {
    for (const f of made.reverse()) await f().catch(() => undefined);
  };
  try {
    const tb = await createTestbed(label);
    made.push(() => tb.destroy());
    const etcd = await startEtcd();
    made.push(() => etcd.destroy());
    const keys = makeKeys();
    made.push(async () => fs.rmSync(keys.dir, { recursive: true, force: true }));
    const engine = await EngineProc.start(etcd.endpoints, keys, 'a', logDir, { extra: ['--alert-ttl', '1h'] });
    made.push(() => engine.stop());
    const put = await engine.api('PUT', `/api/tiers/${tier}/config`, { document: BASE, message: 'before the rollout' });
    if (put.status !== 201) throw new Error(`config set: ${JSON.stringify(put.body)}`);
    const cgroup2 = await tb.mountCgroup2();
    const agents: AlarmFleet['agents'] = [];
    const targets: AlarmLabOptions['targets'] = [];
    for (const side of ['client', 'server'] as const) {
      const bridge = await EtcdBridge.start(tb, side, etcd.clientPort);
      const env = await agentEnv(tb, side, cgroup2);
      const agent = await AgentProc.start({ ...env, configFile: '' }, [
        ...['--etcd', bridge.url, '--tier', tier, '--host-id', `alarm-${side}`, '--verify-key', keys.verifyKey],
        ...['--metrics-addr', `127.0.0.1:${METRICS_PORT}`],
      ]);
      made.push(async () => {
        await agent.stop();
        await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
      });
      agents.push({ side, env, agent });
      targets.push({ address: await exposeToHost(tb, side, METRICS_PORT), labels: { tier, host: `alarm-${side}` } });
    }
    const sink = await startSink(tb, { port: SINK_PORT });
    made.push(() => sink.stop());
    const lab = await startAlarmLab({
      targets,
      rule: { name: ALARM_RULE_NAME, expr: BLOCKING_RULE, for: '0s', labels: { severity: 'page' } },
      // EngineProc wrote the alerts user's token there.
      receivers: [...extraReceivers, { name: 'engine', url: `${engine.url}/api/alerts`, credentialsFile: path.join(logDir, 'token-alerts') }],
      repeatInterval: '1m',
    });
    made.push(() => lab.destroy());
    await waitFor('Prometheus scraping both agents', async () => {
      const r = (await (await fetch(`${lab.prometheusUrl}/api/v1/query?query=${encodeURIComponent('sum(up)')}`)).json()) as {
        data: { result: Array<{ value: [number, string] }> };
      };
      return r.data.result[0]?.value[1] === String(agents.length);
    });
    const appliedAbove = (a: AgentProc, version: number, mode?: string) =>
      a.lines().find((l) => l.event === 'config_applied' && (l.tierVersion as number) > version && (mode === undefined || l.mode === mode));
    return {
      tb,
      etcd,
      keys,
      engine,
      agents,
      lab,
      tier,
      async rolloutActive() {
        const head = (await engine.api<{ version: number }>('GET', `/api/tiers/${tier}/config`)).body.version;
        const r = await engine.api('POST', `/api/tiers/${tier}/rollout`, {
          stages: 'active:100',
          bake: '10m',
          // Only the alarm may roll back: the engine's own blocked-flows check is out of the way.
          analysis: { maxBlockedPerMinute: 1e9, checkIntervalMs: 60000 },
        });
        if (r.status !== 201) throw new Error(`rollout start: ${JSON.stringify(r.body)}`);
        let active = 0;
        await waitFor(
          'both agents active under the rollout',
          () => {
            const v = agents.map((a) => appliedAbove(a.agent, head, 'active')?.tierVersion as number | undefined);
            if (v.some((x) => x === undefined)) return false;
            active = Math.max(...(v as number[]));
            return true;
          },
          { timeoutMs: 20000 },
        );
        return active;
      },
      async raiseErrors() {
        const c = await plainClient(tb, { port: SINK_PORT, maxMs: 2000 });
        if (!c.failed) throw new Error(`the plaintext connection was not blocked in active mode: ${JSON.stringify(c)}`);
      },
      async rolledBackAt(version, timeoutMs = 20000) {
        const at = new Map<Side, number>();
        await waitFor(
          'every agent back on the config before the rollout',
          () => {
            for (const a of agents) {
              const l = appliedAbove(a.agent, version);
              if (l) at.set(a.side, l.time as number);
            }
            return at.size === agents.length;
          },
          { timeoutMs },
        );
        return Math.max(...at.values());
      },
      destroy,
    };
  } catch (err) {
    await destroy();
    throw err;
  }
}
