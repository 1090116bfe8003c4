// Which interfaces to attach to when none are named: those that carry the host's routes (main
// tables, IPv4 and IPv6), never lo. Interfaces named on the command line always win. Devices
// without Ethernet framing (WireGuard, tun, ipip) are chosen too: the classifier takes the
// network header's offset from the kernel (bpf/lib/parse.h), so it judges them like any other,
// and a WireGuard interface is where its inner plaintext is visible.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

export function routeInterfaces(): string[] {
  const devs = new Set<string>();
  for (const family of ['-4', '-6']) {
    try {
      const routes = JSON.parse(execFileSync('ip', ['-j', family, 'route', 'show', 'table', 'main'], { encoding: 'utf8' })) as Array<{ dev?: string }>;
      for (const r of routes) if (r.dev && r.dev !== 'lo') devs.add(r.dev);
    } catch {
      // No IPv6 (or no ip): the other family still counts.
    }
  }
  return [...devs].sort();
}

/** The machine id (systemd's /etc/machine-id), else the host name. */
export function defaultHostId(): string {
  try {
    const id = readFileSync('/etc/machine-id', 'utf8').trim();
    if (id) return id;
  } catch {
    // Not a systemd host.
  }
  return os.hostname();
}
