// The fleet of one (`sslwall up`): a local etcd (Debian's binary, data in a temp folder) unless
// one is given, a signing key pair, the engine with its dashboard, and an agent in passive mode
// on a veth pair between two network namespaces of its own (never on this machine's own
// interfaces), all made with the lab the tests use. Runs until a signal; then removes everything
// it made, also when its stdout is gone (`npm start | tee log`: Ctrl-C ends tee first, and
// writing to its pipe fails).

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type RunningEngine, startEngine } from '../../rollout/main.js';
import { generateKeyPair } from '../../rollout/signing.js';
import { SslwallError } from '../../schemas/errors.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { type AgentEnv, AgentProc, agentEnv, SSLWALL, sslwall } from './agent-proc.js';
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
  let env: AgentEnv | undefined;
  let agent: AgentProc | undefined;
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
    engine = await startEngine({ etcd: { endpoints: [etcdUrl] }, signingKey: keys.signingKey, id: `up-${bed.id}`, listen }, log.child({ component: 'engine' }));
    if (!(await engine.engine.store.head(tier))) {
      await engine.engine.store.write(
        tier,
        {
          config: {
            mode: 'passive',
            bypass: { ports: [22], cidrs: [] },
            starttls: { smtp: [25, 587], imap: [], pop3: [], ftp: [], postgres: [5432], mysql: [] },
            connect: { ports: [3128] },
          },
          rollout: { mode: 'passive', percent: 100, otherwise: 'off', salt: randomBytes(4).toString('hex') },
        },
        { author: 'sslwall up', message: 'first config' },
      );
    }
    say(`engine:    http://${listen}  (dashboard, API, /metrics); signing key ${keys.signingKey}`);
    step();

    // The peer: plaintext HTTP on 8080, listening before "ready" is printed (the first curl must find it).
    const peer = bed.server.ipv4;
    const http = bed.spawn('server', 'peer-http', process.execPath, [
      '-e',
      `require('http').createServer((q, r) => r.end('hello from the plaintext peer\\n')).listen(8080, '${peer}')`,
    ]);
    await waitFor('the plaintext peer', async () => (await bed!.exec('server', BIN.ss, ['-Hltn', 'sport = :8080'])).stdout.trim() !== '', {
      timeoutMs: 10_000,
      abortIf: () => (http.running ? undefined : `it exited; see ${http.logFile}`),
    });
    step();

    // The agent, in the client namespace; etcd reaches it over the lab's unix-socket bridge.
    const bridge = await EtcdBridge.start(bed, 'client', Number(new URL(etcdUrl).port || 2379));
    env = await agentEnv(bed, 'client', await bed.mountCgroup2());
    agent = await AgentProc.start({ ...env, configFile: '' }, [
      '--etcd',
      bridge.url,
      '--tier',
      tier,
      '--host-id',
      `up-${bed.id}`,
      '--verify-key',
      keys.verifyKey,
    ]);
    step();
    const stopEcho = echoAgentLines(agent, say);
    const nsenter = `nsenter --net=/run/netns/${bed.client.ns}`;
    say(`agent:     passive, tier ${tier}, on ${bed.client.ifname} in netns ${bed.client.ns} (peer ${bed.server.ns} at ${peer})`);
    say('');
    say('ready. Try:');
    say(`  ${nsenter} curl -s http://${peer}:8080/      # plaintext: a violation line appears here`);
    say(`  ${nsenter} ${process.execPath} ${SSLWALL} flows --bpffs ${env.bpffs}`);
    say(`  ${SSLWALL} config get --tier ${tier} --engine http://${listen}`);
    say(`  ${SSLWALL} rollout start --tier ${tier} --stages active:100 --bake 30s --engine http://${listen}`);
    say(`  ${SSLWALL} rollout watch --tier ${tier} --engine http://${listen}`);
    say(`  open http://${listen}/ for the dashboard`);
    say('Ctrl-C to stop and remove everything.');
    const agentExited = waitFor('the agent to exit', () => !agent!.proc.running, { timeoutMs: 2 ** 31 - 1, intervalMs: 500 });
    await Promise.race([stopped, agentExited]);
    stopEcho();
    if (!interrupted) log.error({ event: 'agent_exited', log: agent.proc.logFile }, 'the agent exited; stopping');
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
    if (agent) await attempt('stop the agent', () => agent!.stop());
    if (env) await attempt('uninstall', () => sslwall(env!, ['uninstall', '--bpffs', env!.bpffs]));
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

/** Show the agent's violation and config lines as they come; returns the stop function. */
function echoAgentLines(agent: AgentProc, say: (s: string) => void): () => void {
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
      if (line.includes('"event":"violation"') || line.includes('"config_applied"') || line.includes('"config_refused"')) say(`agent: ${line}`);
    }
  }, 200);
  return () => clearInterval(timer);
}
