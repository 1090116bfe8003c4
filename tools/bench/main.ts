// `npm run bench` / `sslwall bench`: the benchmark suite (docs/bench.md). Every figure comes with
// a baseline measured in the same run and their ratio. Progress goes to stderr; the figures to
// stdout, as a table or (--json) one JSON object per line:
//   {"bench":"tc_fastpath_ns","value":81.2,"unit":"ns/packet","baseline":34.1,"ratio":2.381}
// A bench that fails prints an error (in --json: the same keys, nulls, and "error") and the
// others still run; the exit status is then 1.

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { agentIdle, type Figure, hotSwap, hotSwapOptions, propagation } from './agent.js';
import { alarmBench } from './alarm.js';
import { dashboardBench } from './dashboard.js';
import { etcdProvision } from './etcd-auth.js';
import { fleet, fleetOptions } from './fleet.js';
import { connectRate, vethThroughput } from './net.js';
import { round } from './stats.js';
import { summaryBench } from './summary.js';
import { tcFastpath, tcFirstPacket } from './tc.js';
import { ttlsBench } from './ttls.js';
import type { Bench, BenchResult } from './types.js';

export const BENCHES: Bench[] = [
  tcFastpath,
  tcFirstPacket,
  vethThroughput,
  connectRate,
  propagation,
  hotSwap,
  agentIdle,
  fleet,
  alarmBench,
  dashboardBench,
  ttlsBench,
  etcdProvision,
  summaryBench,
];

const USAGE = `Usage: sslwall bench [--json] [--only NAME,...] [--list] [--fleet-agents N] [--fleet-health-spread MS]
                    [--hot-swap-mtu BYTES]
       npm run bench -- [same options]

Runs the benchmarks (docs/bench.md); each figure is printed with a baseline measured in the
same run. Needs root (BPF_PROG_TEST_RUN, network namespaces). Takes about 9 minutes, 3-4 of
them the fleet bench (--only to pick).

Options:
  --json              one JSON object per line on stdout: {"bench","value","unit","baseline","ratio"}
  --only LIST         comma-separated bench or figure names, e.g. --only tc_fastpath_ns,connect_rate
  --list              list the benches and exit
  --fleet-agents N    simulated agents in the fleet bench                      [10000]
  --fleet-health-spread MS
                      their --health-spread (0: health written at once)  [the agent's: 1000]
  --hot-swap-mtu BYTES
                      the hot_swap bed's veth MTU, 1280-65535                 [65535]
                      (1500 shows BBR's own dip every 10 s: docs/bench.md, hot_swap)
`;

interface Failure {
  bench: string;
  error: string;
}

export async function main(argv: string[]): Promise<number> {
  let values: {
    json?: boolean;
    only?: string;
    list?: boolean;
    help?: boolean;
    'fleet-agents'?: string;
    'fleet-health-spread'?: string;
    'hot-swap-mtu'?: string;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        json: { type: 'boolean' },
        only: { type: 'string' },
        list: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        'fleet-agents': { type: 'string' },
        'fleet-health-spread': { type: 'string' },
        'hot-swap-mtu': { type: 'string' },
      },
      allowPositionals: false,
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  // The numeric options: each an integer in a range, refused with the range (exit 2) otherwise.
  const numeric: Array<{ flag: 'fleet-agents' | 'fleet-health-spread' | 'hot-swap-mtu'; unit: string; min: number; max: number; set: (n: number) => void }> = [
    { flag: 'fleet-agents', unit: '', min: 10, max: 100_000, set: (n) => (fleetOptions.agents = n) },
    { flag: 'fleet-health-spread', unit: 'milliseconds, ', min: 0, max: 60_000, set: (n) => (fleetOptions.healthSpreadMs = n) },
    { flag: 'hot-swap-mtu', unit: 'bytes, ', min: 1280, max: 65_535, set: (n) => (hotSwapOptions.mtu = n) },
  ];
  for (const { flag, unit, min, max, set } of numeric) {
    const v = values[flag];
    if (v === undefined) continue;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      process.stderr.write(`bench: --${flag} ${v}: expected ${unit}an integer from ${min} to ${max}\n${USAGE}`);
      return 2;
    }
    set(n);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.list) {
    for (const b of BENCHES) process.stdout.write(`${b.name.padEnd(20)} ${b.summary}${b.produces.length > 1 ? ` [figures: ${b.produces.join(', ')}]` : ''}\n`);
    return 0;
  }

  let selected = BENCHES;
  let wanted: string[] | undefined;
  if (values.only !== undefined) {
    wanted = values.only
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const unknown = wanted.filter((w) => !BENCHES.some((b) => b.name === w || b.produces.includes(w)));
    if (unknown.length || wanted.length === 0) {
      process.stderr.write(
        `bench: unknown bench ${unknown.join(', ') || '(empty --only)'}; known: ${BENCHES.flatMap((b) => [b.name, ...b.produces.filter((p) => p !== b.name)]).join(', ')}\n`,
      );
      return 2;
    }
    selected = BENCHES.filter((b) => wanted!.includes(b.name) || b.produces.some((p) => wanted!.includes(p)));
  }

  const json = !!values.json;
  const results: BenchResult[] = [];
  const failures: Failure[] = [];
  const t0 = Date.now();
  for (const [i, b] of selected.entries()) {
    const started = Date.now();
    process.stderr.write(`bench [${i + 1}/${selected.length}] ${b.name}: ${b.summary}\n`);
    const ctx = { progress: (m: string) => process.stderr.write(`  ${b.name}: ${m}\n`) };
    try {
      let out = await b.run(ctx);
      // --only tc_flow_open_ns shows that figure, not its siblings.
      if (wanted && !wanted.includes(b.name)) out = out.filter((r) => wanted!.includes(r.bench));
      results.push(...out);
      if (json) for (const r of out) process.stdout.write(`${jsonLine(r)}\n`);
      process.stderr.write(`  ${b.name}: done in ${round((Date.now() - started) / 1000, 1)} s\n`);
    } catch (err) {
      const message = (err as Error).stack ?? String(err);
      failures.push({ bench: b.name, error: (err as Error).message ?? String(err) });
      process.stderr.write(`  ${b.name}: FAILED after ${round((Date.now() - started) / 1000, 1)} s: ${message}\n`);
      if (json) {
        for (const name of b.produces.filter((p) => !wanted || wanted.includes(b.name) || wanted.includes(p))) {
          process.stdout.write(
            `${JSON.stringify({ bench: name, value: null, unit: null, baseline: null, ratio: null, error: (err as Error).message ?? String(err) })}\n`,
          );
        }
      }
    }
  }
  process.stderr.write(`bench: ${results.length} figures, ${failures.length} failed, ${round((Date.now() - t0) / 1000, 1)} s\n`);
  if (!json) process.stdout.write(table(results, failures));
  return failures.length ? 1 : 0;
}

function jsonLine(r: BenchResult): string {
  return JSON.stringify({ bench: r.bench, value: r.value, unit: r.unit, baseline: r.baseline, ratio: r.ratio });
}

function targetText(r: BenchResult): string {
  // A goal on the value itself (ms, MB, a count), e.g. "≤ 100 ms".
  const vt = (r as Figure).valueTarget;
  if (vt) {
    const met = vt.op === '<=' ? r.value <= vt.value : r.value >= vt.value;
    return `${vt.op === '<=' ? '≤' : '≥'} ${vt.value} ${met ? 'met' : 'MISSED'}`;
  }
  if (!r.target) return '-';
  const met = r.target.op === '<=' ? r.ratio <= r.target.ratio : r.ratio >= r.target.ratio;
  return `${r.target.op === '<=' ? '≤' : '≥'} ${r.target.ratio}× ${met ? 'met' : 'MISSED'}`;
}

function table(results: BenchResult[], failures: Failure[]): string {
  const header = ['BENCH', 'VALUE', 'UNIT', 'BASELINE', 'RATIO', 'TARGET', 'WHAT IT MEANS'];
  const rows = results.map((r) => [r.bench, String(r.value), r.unit, String(r.baseline), `${r.ratio}×`, targetText(r), r.meaning]);
  for (const f of failures) rows.push([f.bench, 'ERROR', '', '', '', '', f.error.split('\n')[0]!]);
  const widths = header.map((_, i) => Math.max(...[header, ...rows].map((r) => [...r[i]!].length)));
  const right = new Set([1, 3, 4]);
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  const baselineNote = [
    'Baselines: tc_* = sslwall_empty on the same packet, same repeat; veth_throughput*/connect_rate = an identical test bed without any filter (median of 5 paired runs);',
    '  propagation_* = a bare etcd3 watcher on the same path; hot_swap_* = the same transfer before the swaps; agent_* = an idle node process;',
    '  fleet_propagation/fanout/rollback = one bare etcd3 watcher; fleet_change_cpu_ms_per_agent = a bare watcher receiving the change;',
    '  fleet_accept_cpu_ms = crypto.verify alone on the same document;',
    '  dead_agent_detect_ms = the lease TTL; reconnect_relists_per_agent = 1 re-read per agent.',
    '  alarm_to_rollback_e2e_ms = the same Prometheus + Alertmanager notifying a bare webhook receiver, same runs.',
    '  dashboard_api_ms_p99 = GET /healthz on the same engine, interleaved.',
    '  ttls_* = stunnel4 client -> stunnel4 server with the same certificates and data; ttls_connect_rate = TTLS without multiplexing; ttls_rss_1000_mb = the proxy before.',
    "  summary_bytes_* = the same agent's health document; summary_add_ns = building the same violation's log line fields and JSON.",
    'Targets in units (ms, MB, %, a count) apply to VALUE; targets with × apply to RATIO.',
  ].join('\n');
  return [line(header), ...rows.map(line), '', baselineNote, ''].join('\n');
}

// Run directly (`node dist/tools/bench/main.js`, what `npm run bench` does); `sslwall bench`
// imports main() instead.
function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
