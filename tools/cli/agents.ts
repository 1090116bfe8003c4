// `sslwall agents`: the agents of a tier as the engine knows them, or one host in full
// (GET /api/tiers/:tier/agents, GET /api/hosts/:host/agent; docs/cli.md).
import type { AgentViewBody } from '../../schemas/api.js';
import { CLIENT_HELP, CLIENT_OPTIONS, engineClient, parse, usage } from './fleet.js';

const HELP = `Usage: sslwall agents (--tier T [--errors] [--behind] | --host H) [--json] [--engine URL]

Which agents run which version, and which refused a document. One line an agent:
host, version in force (and its etcd revision), mode, cohort, last error, counters, last seen.

  --tier T      every agent of tier T reporting health, sorted by host
    --errors    only those whose health reports an error (a refused document, a failed apply)
    --behind    only those not on the tier's head version
  --host H      one agent in full: every field of its health report
  --json        the API's answer as JSON (one object), for scripts

${CLIENT_HELP}
`;

export async function agentsCommand(args: string[]): Promise<number> {
  const { values: v } = parse(
    args,
    {
      tier: { type: 'string' },
      host: { type: 'string' },
      errors: { type: 'boolean' },
      behind: { type: 'boolean' },
      json: { type: 'boolean' },
      ...CLIENT_OPTIONS,
    },
    'agents',
  );
  if (v.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (!v.tier === !v.host) throw usage("agents needs --tier T (the tier's agents) or --host H (one agent in full); run sslwall agents --help");
  const engine = engineClient(v);
  if (v.host) {
    const a = await engine.agent(String(v.host));
    process.stdout.write(v.json ? `${JSON.stringify(a)}\n` : renderOne(a));
    return 0;
  }
  const r = await engine.agents(String(v.tier), { errors: Boolean(v.errors), behind: Boolean(v.behind) });
  if (v.json) {
    process.stdout.write(`${JSON.stringify(r)}\n`);
    return 0;
  }
  const filters = [v.errors ? 'with errors' : '', v.behind ? 'behind' : ''].filter(Boolean).join(' and ');
  const head = `tier ${r.tier}: head version ${r.headVersion ?? '-'}; ${r.agents.length}${filters ? ` ${filters}` : ''} of ${r.total} agents reporting\n`;
  process.stdout.write(head + (r.agents.length ? table(r.agents) : ''));
  return 0;
}

function table(agents: AgentViewBody[]): string {
  const rows = agents.map((a) => [
    a.hostId,
    `${a.configVersion ?? '-'}${a.behind ? ' (behind)' : ''}`,
    String(a.configRevision ?? '-'),
    a.mode,
    a.inCohort ? 'yes' : 'no',
    a.lastError ? `${a.lastError.code}@${a.lastError.revision ?? '-'} ${a.lastError.at}` : '-',
    `${a.counters.violationsReported}/${a.counters.violationsBlocked}`,
    ago(a.lastSeen),
  ]);
  const header = ['HOST', 'VERSION', 'REVISION', 'MODE', 'COHORT', 'LAST ERROR', 'REPORTED/BLOCKED', 'LAST SEEN'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}\n`;
  return line(header) + rows.map(line).join('');
}

function renderOne(a: AgentViewBody): string {
  const lines = [
    `host ${a.hostId} in tier ${a.tier} (agent ${a.agentVersion})`,
    `version ${a.configVersion ?? '-'}${a.behind ? ' — BEHIND the head' : ''}, revision ${a.configRevision ?? '-'}, override ${a.overrideVersion ?? '-'}`,
    `mode ${a.mode}, ${a.inCohort ? 'in' : 'not in'} the cohort (bucket ${a.bucket})`,
    `applied ${a.appliedAt ?? '-'}${a.applyLatencyMs !== null ? ` in ${a.applyLatencyMs.toFixed(1)} ms` : ''}`,
    `etcd ${a.etcd.connected ? 'connected' : 'DISCONNECTED'}, watch revision ${a.etcd.watchRevision ?? '-'}`,
    a.lastError ? `last error ${a.lastError.code} at revision ${a.lastError.revision ?? '-'}, ${a.lastError.at}: ${a.lastError.message}` : 'last error: none',
    `counters: ${Object.entries(a.counters)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ')}`,
    `features: ${Object.entries(a.features)
      .map(([k, f]) => `${k}=${f}`)
      .join(', ')}`,
    `last seen ${a.lastSeen} (${ago(a.lastSeen)}); report written ${a.updatedAt}`,
  ];
  return `${lines.join('\n')}\n`;
}

function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}
