// `sslwall agent`: load the data plane, apply a config, attach to interfaces, and keep
// following the config source (a file, or the tier's keys in etcd). On SIGTERM/SIGINT the agent
// exits and the pinned programs stay, enforcing the last config; the next start adopts them.

import type { Server } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';
import { applyConfig, type BypassCgroup, claimSelf, currentMode } from './apply.js';
import { ensureBypassCgroup } from './cgroup.js';
import { CgroupNames } from './cgroup-names.js';
import { readConfigFile, watchConfigFile } from './config-file.js';
import { Datapath } from './datapath.js';
import { EtcdAgentSource, type EtcdSourceOptions } from './etcd-source.js';
import { destroyBlocked, type EventSinks, startEventPump } from './events.js';
import { routeInterfaces } from './interfaces.js';
import { createMetrics, serveMetrics } from './metrics.js';
import { registerOnSwitch, registerOpenFlows } from './register.js';
import { plaintextControlWarnings, seedOwnFlows, selfProtection } from './self.js';
import { type AppliedMeta, loadLastGood, metaFields, saveLastGood } from './state.js';
import { AGENT_VERSION, type AgentStatus } from './status.js';
import { roundTimes, type StepTimes, timed } from './timing.js';
import type { CertFiles } from './ttls/index.js';
import type { AgentTtls } from './ttls-agent.js';

/** From agent_ready to the start-up garbage collection: the first health write and TTLS's start are done by then. */
const STARTUP_GC_DELAY_MS = 10_000;

export type SourceOptions = { kind: 'file'; configFile: string } | ({ kind: 'etcd' } & EtcdSourceOptions);

export interface AgentOptions {
  source: SourceOptions;
  ifaces: string[];
  bpffs: string;
  cgroup?: string;
  stateDir: string;
  metricsAddr?: string;
  /** --ttls-cert/--ttls-key/--ttls-ca: wrap the connections the config's ttls member selects. */
  ttls?: CertFiles;
}

export async function runAgent(opts: AgentOptions, log: Logger): Promise<void> {
  const lastGood = loadLastGood(opts.stateDir);
  let initial: { config: Config; meta: AppliedMeta } | null = null;
  if (opts.source.kind === 'file') {
    try {
      initial = { config: readConfigFile(opts.source.configFile), meta: fileMeta() };
    } catch (err) {
      if (!lastGood) throw err;
      log.error(
        { event: 'config_refused', code: (err as SslwallError).code, err: (err as Error).message },
        'config file refused; enforcing the last good config',
      );
      initial = lastGood;
    }
  } else if (lastGood) {
    // Enforce at once what we enforced before; etcd may be away for a while.
    log.info({ event: 'last_good_loaded', saved_at: lastGood.savedAt, meta: metaFields(lastGood.meta) }, 'enforcing the last good config until etcd answers');
    initial = lastGood;
  }

  const dp = Datapath.load(opts.bpffs, log);
  const self = selfProtection(opts.metricsAddr, opts.source.kind === 'etcd' ? opts.source.conn.endpoints : []);
  claimSelf(dp.maps, self);
  // Programs pinned by an earlier agent may be enforcing already: mark what this process has
  // open before anything else connects (agent/self.ts).
  seedOwnFlows(dp, self, log, 'load');
  let bypass: (BypassCgroup & { path: string }) | null = null;
  try {
    bypass = ensureBypassCgroup(opts.cgroup);
  } catch (err) {
    if (opts.cgroup) throw err;
    log.warn({ event: 'bypass_cgroup_unavailable', err: (err as Error).message }, 'sslwall exec bypass is off');
  }

  const metrics = createMetrics(dp);
  // Loaded only when asked for: an agent that wraps nothing carries no TLS, HTTP/2 or pool code.
  const ttls: AgentTtls | null = opts.ttls
    ? (await import('./ttls-agent.js')).AgentTtls.load({ bpffs: opts.bpffs, bypass, certs: opts.ttls, registry: metrics.registry, log })
    : null;
  const status: AgentStatus = { applied: null, appliedAt: null, applyLatencyMs: null, lastError: null };

  /** The kernel has it: a failure to save it is an error to see, not a refusal of the config. */
  const remember = (config: Config, meta: AppliedMeta): void => {
    try {
      saveLastGood(opts.stateDir, config, meta);
    } catch (err) {
      log.error(
        { event: 'last_good_not_saved', state_dir: opts.stateDir, err: (err as Error).message },
        'config in force but not saved; a restart without etcd would enforce an older one: check --state-dir',
      );
    }
  };

  let swept = false;
  let reconciled = false;
  /** Apply a validated config to the kernel and remember it as the last good one. */
  const apply = (config: Config, meta: AppliedMeta, reason: string, decided: StepTimes = {}, receivedAt?: number): void => {
    const before = currentMode(dp.maps);
    const started = process.hrtime.bigint();
    const times: StepTimes = { ...decided };
    // Connections opened while the mode was off have no flow yet: seed them before the mode turns
    // on. With the filter on, it saw each of them open (the SYN rule, agent/self.ts), so the walk
    // of the kernel's whole TCP hash (some 25 ms, most of a config change) is skipped.
    if (before === 'off' && config.mode !== 'off') timed(times, 'seed_ms', () => seedOwnFlows(dp, self, log, 'apply'));
    // The first apply of this process also reconciles with the mode kept: an earlier agent may
    // have stopped between its generation flip and its walk of the flows.
    const flipped = applyConfig(dp.maps, config, bypass, self, times, !reconciled);
    reconciled = true;
    const inForceAt = performance.timeOrigin + performance.now();
    registerOnSwitch(dp, before, config.mode, log, reason);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    timed(times, 'save_ms', () => remember(config, meta));
    status.applied = { config, meta };
    status.appliedAt = new Date().toISOString();
    status.applyLatencyMs = ms;
    metrics.configApplied.inc({ result: 'ok' });
    metrics.applyLatency.observe(ms / 1000);
    metrics.configVersion.set(meta.tierVersion ?? 0);
    // The sweep walks the kernel's whole TCP hash (tens of ms): needed when this config blocked
    // flows (their verdict flipped), and once per process for what an earlier agent left blocked;
    // flows blocked later are swept by the event pump as their events come.
    if (config.mode === 'active' && (flipped > 0 || !swept)) {
      timed(times, 'sweep_ms', () => destroyBlocked(dp, log, metrics));
      swept = true;
    }
    log.info(
      {
        event: 'config_applied',
        reason,
        mode: config.mode,
        previous_mode: before,
        verdicts_changed: flipped,
        apply_ms: ms,
        steps: roundTimes(times),
        ...(receivedAt !== undefined ? { received_at: receivedAt, in_force_at: inForceAt } : {}),
        ...metaFields(meta),
      },
      'config applied',
    );
    if (ttls) void ttls.apply(config);
    else if (config.ttls)
      log.warn(
        { event: 'ttls_unavailable', reason: 'no --ttls-cert/--ttls-key/--ttls-ca' },
        'the config asks for transparent TLS; this agent has no certificates, so nothing is wrapped',
      );
  };
  const keep = (config: Config, meta: AppliedMeta, reason: string): void => {
    // Nothing changes in the kernel; the version in force (last good, health) moves on.
    remember(config, meta);
    status.applied = { config, meta };
    metrics.configVersion.set(meta.tierVersion ?? 0);
    log.info({ event: 'config_applied', reason, mode: config.mode, kernel_unchanged: true, ...metaFields(meta) }, 'config applied (no kernel change)');
  };
  const refuse = (err: unknown, reason: string, revision: number | null): void => {
    const code = (err as SslwallError).code ?? 'SSLWALL_E_INTERNAL';
    status.lastError = { code, message: (err as Error).message, revision, at: new Date().toISOString() };
    metrics.configApplied.inc({ result: 'invalid' });
    log.error({ event: 'config_refused', reason, code, revision, err: (err as Error).message }, 'config refused; the previous config stays in force');
  };

  if (initial) apply(initial.config, initial.meta, 'start');
  const ifaces = opts.ifaces.length ? opts.ifaces : routeInterfaces();
  if (ifaces.length === 0) throw new SslwallError('SSLWALL_E_IFACE', 'no --iface given and no interface carries a route; name the interfaces with --iface');
  for (const iface of ifaces) dp.attachInterface(iface, log);
  dp.settle(log);
  // The filter did not see the SYNs of connections opened before it was attached.
  seedOwnFlows(dp, self, log, 'attach');
  if (currentMode(dp.maps) !== 'off') registerOpenFlows(dp, log, 'attach');

  let server: Server | undefined;
  if (opts.metricsAddr) server = await serveMetrics(opts.metricsAddr, metrics, log);

  let stopSource: () => Promise<void>;
  let eventFields: Record<string, unknown> = {};
  const sinks: EventSinks = { names: CgroupNames.open(opts.cgroup) };
  if (!sinks.names!.root)
    log.warn(
      { event: 'cgroup_names_unavailable', cgroup: opts.cgroup ?? null },
      'no cgroup v2 hierarchy: violations name their process, not their unit or cgroup',
    );
  if (opts.source.kind === 'file') {
    const file = opts.source.configFile;
    const reload = (reason: string) => {
      try {
        const next = readConfigFile(file);
        if (JSON.stringify(next) === JSON.stringify(status.applied?.config)) return;
        apply(next, fileMeta(), reason);
      } catch (err) {
        refuse(err, reason, null);
      }
    };
    const watcher = watchConfigFile(file, () => reload('file_changed'));
    const onHup = () => reload('sighup');
    process.on('SIGHUP', onHup);
    stopSource = async () => {
      watcher.close();
      process.off('SIGHUP', onHup);
    };
  } else {
    const src = opts.source;
    eventFields = { tier: src.tier, host_id: src.hostId };
    const warnings = await plaintextControlWarnings(src.conn.cacert ? [] : src.conn.endpoints, ifaces, log);
    const etcd = new EtcdAgentSource(src, dp, status, { apply, keep, refuse }, metrics, log, AGENT_VERSION, () => warnings);
    etcd.start();
    sinks.onViolation = (v, atMs) => etcd.violation(v, atMs);
    // SIGHUP would kill the process by default; in etcd mode there is no file to re-read.
    const onHup = () => log.info({ event: 'sighup_ignored' }, 'SIGHUP: etcd mode follows the watch; nothing to re-read');
    process.on('SIGHUP', onHup);
    stopSource = async () => {
      process.off('SIGHUP', onHup);
      await etcd.stop();
    };
  }
  const poller = startEventPump(dp, log, metrics, { ...sinks, fields: eventFields });

  log.info(
    { event: 'agent_ready', ifaces, mode: status.applied?.config.mode ?? 'unset', bpffs: opts.bpffs, features: dp.features, ...eventFields },
    'agent ready',
  );
  // Start-up leaves garbage (module compilation, BPF loading, the first config and health write)
  // that V8 collects only when the old space next grows, which an idle agent may never do: half
  // the runs kept ~6 MB of it for good. Collect it once the start has settled. gc() exists when
  // node runs with --expose-gc, as the unit starts it (bin/sslwall-agent.env).
  const gc = (globalThis as { gc?: () => void }).gc;
  const settled = gc
    ? setTimeout(() => {
        const before = process.memoryUsage();
        const t = performance.now();
        gc();
        const gcMs = Math.round((performance.now() - t) * 10) / 10;
        const after = process.memoryUsage();
        const mb = (n: number) => Math.round((n / 2 ** 20) * 10) / 10;
        log.info(
          { event: 'startup_gc', gc_ms: gcMs, heap_used_mb: [mb(before.heapUsed), mb(after.heapUsed)], rss_mb: [mb(before.rss), mb(after.rss)] },
          'start-up garbage collected',
        );
      }, STARTUP_GC_DELAY_MS).unref()
    : undefined;

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ event: 'agent_stopping', signal }, 'stopping; pinned programs stay and keep enforcing');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  clearTimeout(settled);
  await stopSource();
  await ttls?.stop();
  poller.close();
  server?.close();
  dp.close();
}

function fileMeta(): AppliedMeta {
  return { source: 'file', tierVersion: null, revision: null, overrideVersion: null, inCohort: true, bucket: 0 };
}
