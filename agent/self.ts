// The agent never locks itself out: its own connections (etcd, TTLS, metrics scrapes) are never
// judged, whatever the mode. The kernel knows the agent by its process id (an egress SYN sent in
// the agent's context opens a bypassed flow, remembered in sslwall_self_flows) and by its metrics
// port (bypassed where this host is the server). Connections the filter never saw open (opened
// before attach, or while the mode was off) are found here, by their socket inodes, and seeded
// into the kernel before the mode can turn active. See docs/dataplane.md "The agent's own flows".
import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { HEALTH_WARNING_MAX, HEALTH_WARNINGS_MAX } from '../schemas/tier.js';
import type { SelfProtection } from './apply.js';
import type { Datapath } from './datapath.js';

/** The agent's own TCP-or-other socket inodes, from /proc/self/fd (the kernel filters TCP). */
export function ownSocketInodes(): bigint[] {
  const out: bigint[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed since the directory was read
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) out.push(BigInt(m[1]!));
  }
  return out;
}

/** Seed the agent's open connections into the kernel as its flows; logs and returns the count. */
export function seedOwnFlows(dp: Datapath, log: Logger, reason: string): number {
  const started = process.hrtime.bigint();
  const n = dp.seedOwnFlows(ownSocketInodes());
  log.debug(
    { event: 'own_flows_seeded', reason, flows: n, ms: Number(process.hrtime.bigint() - started) / 1e6 },
    "the agent's own connections marked as bypassed",
  );
  return n;
}

/** The port of a --metrics-addr (HOST:PORT, [v6]:PORT). */
export function metricsPort(addr: string): number {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

export function selfProtection(metricsAddr: string | undefined): SelfProtection {
  // The BPF helper reports the process id of the initial pid namespace: the agent runs in the
  // host's (docs/agent.md), where process.pid is that id.
  return { tgid: process.pid, localPorts: metricsAddr ? [metricsPort(metricsAddr)] : [] };
}

const execFileP = promisify(execFile);

/** The interface the route to `addr` leaves by, from `ip route get` (null: no route, or no ip). */
async function routeDev(addr: string): Promise<string | null> {
  try {
    const { stdout } = await execFileP('ip', ['-j', 'route', 'get', addr], { timeout: 2000 });
    return (JSON.parse(stdout) as Array<{ dev?: string }>)[0]?.dev ?? null;
  } catch {
    return null;
  }
}

/**
 * Plaintext control-plane URLs (not https://; the caller passes none when TLS is configured) whose route leaves by a watched interface. The agent's
 * own connections are bypassed, so they are not blocked; but they cross the network unencrypted,
 * which is what sslwall exists to stop: a loud warning at start, and in health.
 */
export async function plaintextControlWarnings(urls: string[], watched: string[], log: Logger): Promise<string[]> {
  const warnings: string[] = [];
  for (const raw of urls) {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      continue; // the etcd client reports a malformed endpoint itself
    }
    if (url.protocol === 'https:') continue;
    const host = url.hostname.replace(/^\[|\]$/g, '');
    let addr = host;
    if (!net.isIP(host)) {
      try {
        addr = (await lookup(host)).address;
      } catch {
        continue; // unresolvable now: the etcd client will say so
      }
    }
    const dev = await routeDev(addr);
    if (!dev || !watched.includes(dev)) continue;
    const text = `plaintext etcd endpoint ${url.origin} is reached via watched interface ${dev}: use https:// (its connections are exempt from blocking, but unencrypted)`;
    log.warn({ event: 'plaintext_control_plane', endpoint: url.origin, addr, iface: dev }, text);
    if (warnings.length < HEALTH_WARNINGS_MAX) warnings.push(text.slice(0, HEALTH_WARNING_MAX));
  }
  return warnings;
}
