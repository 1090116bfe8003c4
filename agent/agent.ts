// `sslwall agent`: load the data plane, apply the config, attach to interfaces, and keep
// following the config file. On SIGTERM/SIGINT the agent exits and the pinned programs stay,
// enforcing the last config; the next start adopts them.
import type { Logger } from 'pino';
import type { Server } from 'node:http';
import { Datapath } from './datapath.js';
import { applyConfig, currentMode, type BypassCgroup } from './apply.js';
import { readConfigFile, watchConfigFile } from './config-file.js';
import { saveLastGood, loadLastGood } from './state.js';
import { ensureBypassCgroup } from './cgroup.js';
import { createMetrics, serveMetrics } from './metrics.js';
import { startEventPump, destroyBlocked } from './events.js';
import { SslwallError } from './errors.js';
import type { Config } from '../schemas/config.js';

export interface AgentOptions {
  configFile: string;
  ifaces: string[];
  bpffs: string;
  cgroup?: string;
  stateDir: string;
  metricsAddr?: string;
}

export async function runAgent(opts: AgentOptions, log: Logger): Promise<void> {
  let config: Config;
  try {
    config = readConfigFile(opts.configFile);
  } catch (err) {
    const lastGood = loadLastGood(opts.stateDir);
    if (!lastGood) throw err;
    log.error({ event: 'config_refused', code: (err as SslwallError).code, err: (err as Error).message }, 'config file refused; enforcing the last good config');
    config = lastGood;
  }

  const dp = Datapath.load(opts.bpffs, log);
  let bypass: BypassCgroup | null = null;
  try {
    bypass = ensureBypassCgroup(opts.cgroup);
  } catch (err) {
    if (opts.cgroup) throw err;
    log.warn({ event: 'bypass_cgroup_unavailable', err: (err as Error).message }, 'sslwall exec bypass is off');
  }

  const metrics = createMetrics(dp);
  const apply = (next: Config, reason: string) => {
    const before = currentMode(dp.maps);
    const started = process.hrtime.bigint();
    const flipped = applyConfig(dp.maps, next, bypass);
    saveLastGood(opts.stateDir, next);
    metrics.configApplied.inc({ result: 'ok' });
    log.info({ event: 'config_applied', reason, mode: next.mode, previous_mode: before, verdicts_changed: flipped, apply_ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'config applied');
    if (next.mode === 'active') destroyBlocked(dp, log, metrics);
  };
  apply(config, 'start');
  for (const iface of opts.ifaces) dp.attachInterface(iface, log);

  const poller = startEventPump(dp, log, metrics);
  let server: Server | undefined;
  if (opts.metricsAddr) server = await serveMetrics(opts.metricsAddr, metrics, log);

  const reload = (reason: string) => {
    try {
      const next = readConfigFile(opts.configFile);
      if (JSON.stringify(next) === JSON.stringify(config)) return;
      apply(next, reason);
      config = next;
    } catch (err) {
      metrics.configApplied.inc({ result: 'invalid' });
      log.error({ event: 'config_refused', reason, code: (err as SslwallError).code ?? 'SSLWALL_E_BPF', err: (err as Error).message }, 'config refused; the previous config stays in force');
    }
  };
  const watcher = watchConfigFile(opts.configFile, () => reload('file_changed'));
  process.on('SIGHUP', () => reload('sighup'));

  log.info({ event: 'agent_ready', ifaces: opts.ifaces, mode: config.mode, bpffs: opts.bpffs, features: dp.features }, 'agent ready');

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ event: 'agent_stopping', signal }, 'stopping; pinned programs stay and keep enforcing');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  watcher.close();
  poller.close();
  server?.close();
  dp.close();
}
