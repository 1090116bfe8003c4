// The violation summary (agent/summary.ts, docs/etcd.md "Violation summary"): how large the
// document each agent keeps in etcd is, against the health document it already keeps there,
// at SUMMARY_MAX_ENTRIES entries, at a typical few, and at the worst case the byte cap bounds;
// and what aggregating costs the agent per violation, against what it already spends on each
// one (the violation log line's fields and their JSON). Pure computation: no kernel, no etcd.
import { performance } from 'node:perf_hooks';
import { nameOf } from '../../agent/cgroup-names.js';
import { decode, encode } from '../../agent/codec.js';
import { healthDocument } from '../../agent/etcd-source.js';
import { violationLine, violationOf } from '../../agent/events.js';
import type { SslwallEvent } from '../../agent/generated/shared.js';
import { SUMMARY_MAX_BYTES, SummaryBuilder, type Violation } from '../../agent/summary.js';
import { SUMMARY_MAX_ENTRIES } from '../../schemas/summary.js';
import type { Figure } from './agent.js';
import { median, round } from './stats.js';
import type { Bench } from './types.js';

const T0 = Date.parse('2026-12-01T10:00:00.000Z');
const HOST = 'web-0417.prod.example.net';

function typicalHealth(): string {
  return JSON.stringify(
    healthDocument({
      hostId: HOST,
      tier: 'web',
      agentVersion: '0.1.0',
      applied: null,
      applyLatencyMs: 3.2,
      appliedAt: new Date(T0).toISOString(),
      counters: { violationsReported: 1234, violationsBlocked: 0, remoteViolationsReported: 12, remoteViolationsBlocked: 0, flows: 842, evictions: 0 },
      connected: true,
      watchRevision: 123456,
      lastError: null,
      features: { tcAttach: 'tcx', lifecycle: 'tracepoint', sockDestroy: true },
      warnings: [],
    }),
  );
}

/** A service of a real fleet: a unit under system.slice, some in containers. */
function service(i: number): Violation['service'] {
  if (i % 5 === 4) {
    const id = (i * 2654435761).toString(16).padStart(8, '0').repeat(8).slice(0, 64);
    const p = `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${id.slice(0, 8)}_${id.slice(8, 12)}.slice/cri-containerd-${id}.scope`;
    return { ...nameOf(p), cgroup: p, comm: 'java', pid: 20000 + i };
  }
  const p = `/system.slice/legacy-app-${i}.service`;
  return { ...nameOf(p), cgroup: p, comm: `legacy-app-${i}`.slice(0, 15), pid: 1000 + i };
}

function violation(i: number, peer: number): Violation {
  return {
    service: service(i),
    direction: i % 3 === 2 ? 'server' : 'client',
    remote: {
      addr: peer % 4 === 3 ? `fd00:5157:${peer.toString(16)}::2` : `10.${(peer >> 16) & 255}.${(peer >> 8) & 255}.${peer & 255}`,
      port: i % 3 === 2 ? 0 : 8080,
    },
    localPort: i % 3 === 2 ? 5432 : 0,
    verdict: 'reported',
  };
}

function bytesWith(entries: number): number {
  const b = new SummaryBuilder(HOST, 'web', T0);
  for (let i = 0; i < entries; i++) for (let n = 0; n <= entries - i; n++) b.add(violation(i, i), T0 + n * 1000);
  return Buffer.byteLength(JSON.stringify(b.build(T0 + 3_600_000)));
}

function worstBytes(): number {
  const b = new SummaryBuilder(HOST, 'web', T0);
  for (let i = 0; i < 2 * SUMMARY_MAX_ENTRIES; i++) {
    b.add(
      {
        service: {
          unit: `${'u'.repeat(240)}-${i}.service`,
          cgroup: `/${'c'.repeat(600)}/${i}`,
          container: 'f'.repeat(128),
          comm: 'c'.repeat(15),
          pid: 4_000_000,
        },
        direction: 'client',
        remote: { addr: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.${i % 256}`, port: 65535 },
        localPort: 0,
        verdict: 'blocked',
      },
      T0 + i,
    );
  }
  return Buffer.byteLength(JSON.stringify(b.build(T0 + 1000)));
}

/** A stream of events as the ring buffer brings them: most from a few busy services and peers, some from many. */
function events(n: number): SslwallEvent[] {
  const out: SslwallEvent[] = [];
  let x = 1;
  for (let k = 0; k < n; k++) {
    x = (x * 1103515245 + 12345) >>> 0;
    const wide = x % 5 === 0; // one in five from a long tail of 2,000 peers: eviction churn
    const peer = wide ? x % 2000 : x % 20;
    const buf = encode<SslwallEvent>('sslwall_event', {
      ts_ns: 0n,
      type: 1,
      pid: 1000 + (peer % 7),
      saddr: Buffer.from([10, 0, 0, 1, ...new Array(12).fill(0)]),
      daddr: Buffer.from([10, 1, (peer >> 8) & 255, peer & 255, ...new Array(12).fill(0)]),
      sport: 40000 + (k % 20000),
      dport: 8080,
      family: 4,
      cls: 5,
      verdict: 1,
      egress: 1,
      client_local: 1,
      comm: `legacy-app-${peer % 7}`,
      cgroup_id: BigInt(1000 + (peer % 7)),
    });
    out.push(decode<SslwallEvent>('sslwall_event', buf));
  }
  return out;
}

export const summaryBench: Bench = {
  name: 'summary',
  produces: ['summary_bytes_full', 'summary_bytes_typical', 'summary_bytes_max', 'summary_add_ns'],
  summary: "the violation summary's size per agent (full, typical, worst) vs its health document, and its cost per violation",
  async run(ctx) {
    const health = Buffer.byteLength(typicalHealth());
    const full = bytesWith(SUMMARY_MAX_ENTRIES);
    const typical = bytesWith(5);
    const worst = worstBytes();
    ctx.progress(`health document ${health} B; summary ${typical} B with 5 entries, ${full} B with ${SUMMARY_MAX_ENTRIES}, ${worst} B worst case`);

    const evs = events(200_000);
    const names = [...new Set(evs.map((e) => e.cgroup_id))].map((id) => [id, nameOf(`/system.slice/legacy-app-${id}.service`)] as const);
    const cg = new Map(names);
    const rounds: Array<{ add: number; line: number }> = [];
    let sink = 0;
    for (let r = 0; r < 7; r++) {
      // Interleaved, so load on the machine falls on both alike.
      const b = new SummaryBuilder(HOST, 'web', T0);
      let t = performance.now();
      for (const [i, e] of evs.entries()) b.add(violationOf(e, cg.get(e.cgroup_id) ?? null), T0 + i);
      const add = ((performance.now() - t) * 1e6) / evs.length;
      t = performance.now();
      for (const e of evs) sink += JSON.stringify(violationLine(e, cg.get(e.cgroup_id) ?? null)).length;
      const line = ((performance.now() - t) * 1e6) / evs.length;
      rounds.push({ add, line });
      sink += b.tracked;
    }
    const add = median(rounds.map((x) => x.add));
    const line = median(rounds.map((x) => x.line));
    // Used, so the work it sums is not optimised away.
    if (sink === 0) throw new Error('summary bench: nothing was built');
    ctx.progress(
      `per violation: aggregate ${round(add, 1)} ns, log line fields + JSON ${round(line, 1)} ns (median of ${rounds.length} rounds of ${evs.length})`,
    );

    const figures: Figure[] = [
      {
        bench: 'summary_bytes_full',
        value: full,
        unit: 'bytes',
        baseline: health,
        ratio: round(full / health, 2),
        meaning: `the summary an agent keeps in etcd at ${SUMMARY_MAX_ENTRIES} entries, vs its health document`,
        valueTarget: { op: '<=', value: SUMMARY_MAX_BYTES },
      },
      {
        bench: 'summary_bytes_typical',
        value: typical,
        unit: 'bytes',
        baseline: health,
        ratio: round(typical / health, 2),
        meaning: 'the summary with 5 entries (a host with a few plaintext services), vs its health document',
      },
      {
        bench: 'summary_bytes_max',
        value: worst,
        unit: 'bytes',
        baseline: health,
        ratio: round(worst / health, 2),
        meaning: 'the summary with every string at its schema bound: the byte cap keeps it under 32 KiB',
        valueTarget: { op: '<=', value: SUMMARY_MAX_BYTES },
      },
      {
        bench: 'summary_add_ns',
        value: round(add, 1),
        unit: 'ns/violation',
        baseline: round(line, 1),
        ratio: round(add / line, 2),
        meaning: 'aggregating one violation into the summary, vs building its log line fields and JSON',
      },
    ];
    return figures;
  },
};
