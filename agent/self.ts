// The agent never locks itself out: its own connections (etcd, metrics scrapes) are never judged,
// whatever the mode. The kernel knows the agent by its process id (an egress SYN sent in the
// agent's context to an etcd port opens a bypassed flow, remembered in sslwall_self_flows) and by
// its metrics port (bypassed where this host is the server). Not every connection of the agent
// process is its own: the TTLS proxy relays applications' bytes, and those are judged. Connections
// the filter never saw open (opened before attach, or while the mode was off) are found here, by
// their socket inodes, and seeded into the kernel before the mode can turn active.
// See docs/dataplane.md "The agent's own flows".
import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { HEALTH_WARNING_MAX, HEALTH_WARNINGS_MAX } from '../schemas/tier.js';
import type { SelfProtection } from './apply.js';
import type { Datapath } from './datapath.js';

/** Socket inodes of this process, from /proc/self/fd. */
function socketInodes(): Set<bigint> {
  const out = new Set<bigint>();
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed since the directory was read
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) out.add(BigInt(m[1]!));
  }
  return out;
}

/**
 * Inodes of this process's TCP sockets that are its own connections: to a control-plane port, or
 * accepted on a local bypass port. /proc/self/net/tcp{,6} (this network namespace) gives each
 * socket's ports (hex, host order) and inode; the kernel iterator builds the flow keys itself.
 */
export function ownSocketInodes(self: SelfProtection): bigint[] {
  const mine = socketInodes();
  const out: bigint[] = [];
  for (const file of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const inode = BigInt(f[9]!);
      const lport = Number.parseInt(f[1]!.split(':')[1]!, 16);
      const rport = Number.parseInt(f[2]!.split(':')[1]!, 16);
      if (mine.has(inode) && (self.ports.includes(rport) || self.localPorts.includes(lport))) out.push(inode);
    }
  }
  return out;
}

/** Seed the agent's open connections into the kernel as its flows; logs and returns the count. */
export function seedOwnFlows(dp: Datapath, self: SelfProtection, log: Logger, reason: string): number {
  const started = process.hrtime.bigint();
  const n = dp.seedOwnFlows(ownSocketInodes(self));
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

/** The server ports of etcd endpoint URLs (2379 when a URL names none). */
export function endpointPorts(urls: string[]): number[] {
  const ports = new Set<number>();
  for (const raw of urls) {
    try {
      ports.add(Number(new URL(raw).port) || 2379);
    } catch {
      // the etcd client reports a malformed endpoint itself
    }
  }
  return [...ports];
}

export function selfProtection(metricsAddr: string | undefined, etcdEndpoints: string[]): SelfProtection {
  // The BPF helper reports the process id of the initial pid namespace: the agent runs in the
  // host's (docs/agent.md), where process.pid is that id.
  return { tgid: process.pid, ports: endpointPorts(etcdEndpoints), localPorts: metricsAddr ? [metricsPort(metricsAddr)] : [] };
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
 * Plaintext control-plane URLs (not https://; the caller passes none when TLS is configured)
 * whose route leaves by a watched interface. The agent's own connections are bypassed, so they
 * are not blocked; but they cross the network unencrypted, which is what sslwall exists to stop:
 * a loud warning at start, and in health.
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
