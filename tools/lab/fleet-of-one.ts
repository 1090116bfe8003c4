// The fleet of one (`sslwall up`): a local etcd (Debian's binary, data in a temp folder) unless
// one is given, a signing key pair, the engine with its dashboard, and two hosts (network
// namespaces of their own joined by a veth pair, never this machine's own interfaces) each with an
// agent in passive mode and transparent TLS between them, all made with the lab the tests use.
// Runs until a signal; then removes everything it made, also when its stdout is gone (`npm start
// | tee log`: Ctrl-C ends tee first, and writing to its pipe fails).

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { addUser } from '../../rollout/auth.js';
import { type RunningEngine, startEngine } from '../../rollout/main.js';
import { generateKeyPair } from '../../rollout/signing.js';
import { DEFAULT_TTLS_PORT } from '../../schemas/config.js';
import { SslwallError } from '../../schemas/errors.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { type AgentEnv, AgentProc, agentEnv, SSLWALL, sslwall } from './agent-proc.js';
import { makeCa, makeHostCert } from './certs.js';
import { type EtcdServer, startEtcd } from './etcd.js';
import { EtcdBridge } from './etcd-bridge.js';
import { callerHandlesSignals } from './exit.js';
import { createTestbed, type Testbed } from './netns.js';
import { BIN, waitFor } from './proc.js';

export interface FleetOfOneOptions {
  /** An etcd on 127.0.0.1 to use instead of starting one. */
  etcd?: string;
  /** HOST:PORT of the engine's API and dashboard. */
  listen: string;
  tier: string;
}

/** Runs until SIGINT/SIGTERM/SIGHUP (exit status 0) or until the agent exits (1). */
export async function runFleetOfOne(opts: FleetOfOneOptions, log: Logger): Promise<number> {
  const { tier, listen } = opts;

  // A closed stdout (EPIPE) must not stop the cleanup: from then on, say nothing.
  let stdoutOpen = true;
  process.stdout.on('error', () => {
    stdoutOpen = false;
  });
  const say = (s: string) => {
    if (stdoutOpen) process.stdout.write(`${s}\n`);
  };

  // Signals are ours from the start: Ctrl-C during start-up cleans up what was made so far.
  let interrupted = false;
  let wake: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const onSignal = () => {
    interrupted = true;
    wake();
  };
  callerHandlesSignals();
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  const step = () => {
    if (interrupted) throw new Interrupted();
  };

  let bed: Testbed | undefined;
  let etcd: EtcdServer | undefined;
  let engine: RunningEngine | undefined;
  const envs: AgentEnv[] = [];
  const agents: AgentProc[] = [];
  try {
    bed = await createTestbed('up');
    step();
    let etcdUrl = opts.etcd;
    if (!etcdUrl) {
      etcd = await startEtcd({ name: 'up' });
      etcdUrl = etcd.endpoint;
      say(`etcd:      ${etcdUrl} (data in ${etcd.dataDir})`);
    } else {
      await waitForEtcd(etcdUrl);
    }
    step();

    const keys = generateKeyPair(path.join(bed.dir, 'keys'));
    const { client, server } = bed;
    // The peer host's plaintext HTTP: 8080 is wrapped in TLS (ttls.ports), 8081 is not.
    const WRAPPED = 8080;
    const PLAIN = 8081;
    // One operator, whose token the suggested commands carry; the file goes with the testbed.
    const users = path.join(bed.dir, 'users.json');
    const token = addUser(users, 'up', 'operator');
    engine = await startEngine(
      { etcd: { endpoints: [etcdUrl] }, signingKey: keys.signingKey, id: `up-${bed.id}`, listen, users },
      log.child({ component: 'engine' }),
    );
    if (!(await engine.engine.store.head(tier))) {
      await engine.engine.store.write(
        tier,
        {
          config: {
            mode: 'passive',
            bypass: { ports: [22], cidrs: [] },
            starttls: { smtp: [25, 587], imap: [], pop3: [], ftp: [], postgres: [5432], mysql: [] },
            connect: { ports: [3128] },
            ttls: { ports: [WRAPPED], cidrs: [`${server.ipv4}/32`, `${server.ipv6}/128`], port: DEFAULT_TTLS_PORT },
          },
          rollout: { mode: 'passive', percent: 100, otherwise: 'off', salt: randomBytes(4).toString('hex') },
        },
        { author: 'sslwall up', message: 'first config' },
      );
    }
    say(`engine:    http://${listen}  (dashboard, API, /metrics); signing key ${keys.signingKey}; users ${users}`);
    say(`token:     ${token}  (operator "up"; the dashboard asks for it)`);
    step();

    // Listening before "ready" is printed: the first curl must find them.
    const http = bed.spawn('server', 'peer-http', process.execPath, [
      '-e',
      `const h = require('http'); for (const p of [${WRAPPED}, ${PLAIN}]) h.createServer((q, r) => r.end('hello from the plaintext peer on port ' + p + '\\n')).listen(p, '${server.ipv4}');`,
    ]);
    await waitFor(
      'the plaintext peer',
      async () => (await bed!.exec('server', BIN.ss, ['-Hltn', `( sport = :${WRAPPED} or sport = :${PLAIN} )`])).stdout.trim().split('\n').length === 2,
      { timeoutMs: 10_000, abortIf: () => (http.running ? undefined : `it exited; see ${http.logFile}`) },
    );
    step();

    // Transparent TLS: a fleet CA and a certificate per host, its addresses as IP SANs.
    const certDir = bed.tempDir('ttls-certs');
    const ca = await makeCa(certDir, 'sslwall-up-ca');
    const hostCerts = {
      client: await makeHostCert(certDir, ca, 'client', [client.ipv4, client.ipv6]),
      server: await makeHostCert(certDir, ca, 'server', [server.ipv4, server.ipv6]),
    };
    step();

    // An agent on each host, following the tier in etcd over the lab's unix-socket bridge.
    const cg2 = await bed.mountCgroup2();
    for (const side of ['client', 'server'] as const) {
      const bridge = await EtcdBridge.start(bed, side, Number(new URL(etcdUrl).port || 2379));
      const env = await agentEnv(bed, side, cg2);
      envs.push(env);
      const cert = hostCerts[side];
      const a = await AgentProc.start({ ...env, configFile: '' }, [
        '--etcd',
        bridge.url,
        '--tier',
        tier,
        '--host-id',
        `up-${bed.id}-${side}`,
        '--verify-key',
        keys.verifyKey,
        '--ttls-cert',
        cert.cert,
        '--ttls-key',
        cert.key,
        '--ttls-ca',
        ca.caCert,
      ]);
      agents.push(a);
      await a.waitFor((l) => l.event === 'ttls_started', 10_000, 'ttls_started');
      step();
    }
    const [agent, peerAgent] = agents as [AgentProc, AgentProc];
    const clientEnv = envs[0]!;
    const stopEcho = [echoAgentLines(agent, 'agent', say), echoAgentLines(peerAgent, 'peer ', say)];
    const inHost = `nsenter --net=/run/netns/${client.ns}`;
    const inApps = (cmd: string) => `${inHost} sh -c 'echo $$ > ${clientEnv.cgroup}/cgroup.procs && exec ${cmd}'`;
    say(`agent:     passive, tier ${tier}, on ${client.ifname} in netns ${client.ns} (peer ${server.ns} at ${server.ipv4})`);
    say(`peer:      a second agent in netns ${server.ns}: its terminator takes wrapped connections on port ${DEFAULT_TTLS_PORT}`);
    say(`ttls:      processes in cgroup ${clientEnv.cgroup} connecting to ${server.ipv4}:${WRAPPED} are wrapped in TLS`);
    say('');
    say('ready. Try:');
    say(`  ${inApps(`curl -s http://${server.ipv4}:${WRAPPED}/`)}   # wrapped: "ttls_closed" lines, no violation`);
    say(`  ${inHost} curl -s http://${server.ipv4}:${PLAIN}/      # plaintext: a violation line appears here`);
    say(`  ${inHost} ${process.execPath} ${SSLWALL} flows --bpffs ${clientEnv.bpffs}`);
    const withToken = `SSLWALL_TOKEN=${token} ${SSLWALL}`;
    say(`  ${withToken} config get --tier ${tier} --engine http://${listen}`);
    say(`  ${withToken} rollout start --tier ${tier} --stages active:100 --bake 30s --engine http://${listen}`);
    say(`  ${withToken} rollout watch --tier ${tier} --engine http://${listen}`);
    say(`  open http://${listen}/ for the dashboard`);
    say('Ctrl-C to stop and remove everything.');
    const agentExited = waitFor('an agent to exit', () => agents.some((a) => !a.proc.running), { timeoutMs: 2 ** 31 - 1, intervalMs: 500 });
    await Promise.race([stopped, agentExited]);
    for (const stop of stopEcho) stop();
    if (!interrupted) log.error({ event: 'agent_exited', logs: agents.map((a) => a.proc.logFile) }, 'an agent exited; stopping');
    return interrupted ? 0 : 1;
  } catch (err) {
    if (err instanceof Interrupted) return 0;
    log.error({ event: 'up_failed', err: (err as Error).message }, 'sslwall up failed; cleaning up');
    throw err;
  } finally {
    say('stopping…');
    const problems: string[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
      }
    };
    // The agent leaves its programs pinned on purpose; here they go with it.
    for (const a of agents) await attempt('stop an agent', () => a.stop());
    for (const env of envs) await attempt('uninstall', () => sslwall(env, ['uninstall', '--bpffs', env.bpffs]));
    if (engine) await attempt('stop the engine', () => engine!.stop());
    if (bed) await attempt('remove the namespaces', () => bed!.destroy());
    if (etcd) await attempt('stop etcd', () => etcd!.destroy());
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
    for (const p of problems) log.error({ event: 'cleanup_problem', problem: p }, 'cleanup');
    say(problems.length ? `cleaned up, with ${problems.length} problem(s) (logged on stderr).` : 'cleaned up.');
  }
}

class Interrupted extends Error {}

/** Wait until an etcd given with --etcd answers. */
async function waitForEtcd(url: string): Promise<void> {
  const probe = createEtcdClient({ endpoints: [url] });
  try {
    await waitFor(
      `etcd at ${url}`,
      async () => {
        try {
          await probe.get('health-probe').string();
          return true;
        } catch {
          return false;
        }
      },
      { timeoutMs: 10_000 },
    );
  } catch (err) {
    throw new SslwallError('SSLWALL_E_ETCD', `etcd at ${url} does not answer: ${(err as Error).message}; start it or leave out --etcd`);
  } finally {
    probe.close();
  }
}

/** Show an agent's violation, config and TTLS lines as they come; returns the stop function. */
function echoAgentLines(agent: AgentProc, who: string, say: (s: string) => void): () => void {
  let offset = 0;
  const timer = setInterval(() => {
    let text: string;
    try {
      const buf = fs.readFileSync(agent.proc.logFile);
      text = buf.subarray(offset).toString();
      const end = text.lastIndexOf('\n') + 1;
      offset += Buffer.byteLength(text.slice(0, end));
      text = text.slice(0, end);
    } catch {
      return;
    }
    for (const line of text.split('\n')) {
      if (/"event":"(violation|config_applied|config_refused|ttls_closed|ttls_failed)"/.test(line)) say(`${who}: ${line}`);
    }
  }, 200);
  return () => clearInterval(timer);
}
