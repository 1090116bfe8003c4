// `sslwall violations`: what the agents' violation summaries say, by service — a tier's services,
// or a search by unit, process name, host id or destination ("is my traffic affected?")
// (GET /api/tiers/:tier/services, GET /api/violations; docs/cli.md).
import type { ServicesBody, ViolationsBody } from '../../schemas/api.js';
import { CLIENT_HELP, CLIENT_OPTIONS, engineClient, parse, usage } from './fleet.js';

const HELP = `Usage: sslwall violations (--tier T | --search TEXT [--tier T]) [--limit N] [--offset N] [--json] [--engine URL]

Plaintext connections the agents saw, by the local service that made or accepted them.
Passive mode reports them (active mode would block them); active mode blocks them.

  --tier T         the tier's services, most violations first: hosts, reported, blocked,
                   top destinations, last seen
  --search TEXT    entries whose unit, process name, cgroup, host id or remote address
                   (ADDR or ADDR:PORT) contains TEXT, newest first; --tier narrows to one tier
  --limit N        rows of one page (at most 1000)                                  [100]
  --offset N       rows to skip (the next page)                                       [0]
  --json           the API's answer as JSON (one object), for scripts

${CLIENT_HELP}
`;

export async function violationsCommand(args: string[]): Promise<number> {
  const { values: v } = parse(
    args,
    {
      tier: { type: 'string' },
      search: { type: 'string' },
      limit: { type: 'string' },
      offset: { type: 'string' },
      json: { type: 'boolean' },
      ...CLIENT_OPTIONS,
    },
    'violations',
  );
  if (v.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (!v.tier && !v.search) throw usage('violations needs --tier T (its services) or --search TEXT (is my traffic affected?); run sslwall violations --help');
  const page = { limit: count(v.limit, '--limit'), offset: count(v.offset, '--offset') };
  const engine = engineClient(v);
  const tier = v.tier as string | undefined;
  if (v.search !== undefined) {
    const r = await engine.violations(String(v.search), { tier, ...page });
    process.stdout.write(v.json ? `${JSON.stringify(r)}\n` : renderSearch(r));
    return 0;
  }
  const r = await engine.services(String(tier), page);
  process.stdout.write(v.json ? `${JSON.stringify(r)}\n` : renderServices(r));
  return 0;
}

function count(value: unknown, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw usage(`${flag} ${String(value)}: give a whole number`);
  return n;
}

function renderSearch(r: ViolationsBody): string {
  if (r.total === 0) return `no plaintext connection seen for "${r.q}": nothing of it would be blocked\n`;
  let reported = 0;
  let blocked = 0;
  for (const e of r.entries) {
    if (e.verdict === 'blocked') blocked += e.count;
    else reported += e.count;
  }
  const hosts = new Set(r.entries.map((e) => e.hostId)).size;
  const head = `"${r.q}" is affected: ${r.total} entries on ${hosts} hosts; passive mode saw ${reported} plaintext connections (active mode would block them), active mode blocked ${blocked}${r.total > r.entries.length ? ` (rows ${r.offset + 1}-${r.offset + r.entries.length} of ${r.total})` : ''}\n`;
  const rows = r.entries.map((e) => [
    e.serviceName,
    e.hostId,
    e.tier,
    e.direction === 'client' ? 'out' : `in :${e.localPort}`,
    `${e.remote.addr}:${e.remote.port}`,
    e.verdict,
    String(e.count),
    e.lastSeen,
  ]);
  return head + table(['SERVICE', 'HOST', 'TIER', 'DIRECTION', 'REMOTE', 'VERDICT', 'COUNT', 'LAST SEEN'], rows);
}

function renderServices(r: ServicesBody): string {
  const head = `tier ${r.tier}: ${r.total} services with plaintext connections on ${r.hosts} reporting hosts\n`;
  const rows = r.services.map((s) => [
    s.service,
    String(s.hosts),
    String(s.reported),
    String(s.blocked),
    s.destinations.map((d) => `${d.addr}:${d.port}`).join(',') || '-',
    s.lastSeen,
  ]);
  return head + (rows.length ? table(['SERVICE', 'HOSTS', 'REPORTED', 'BLOCKED', 'TOP DESTINATIONS', 'LAST SEEN'], rows) : '');
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}\n`;
  return line(header) + rows.map(line).join('');
}
