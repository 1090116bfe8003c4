// `npm run -s bench:compare-tc -- DIR DIR...`: two or more builds of the classifier timed side by
// side in one process, on tc_first_packet_ns's workload (each flow's SYN, then its ClientHello,
// `repeat = 1`), for changes of a few ns. Separate runs of the bench drift by about +-10 ns from
// one process to the next (the empty program too), more than such a change; here every build
// runs the same packet in turn (the order alternating per flow), with an empty-program run
// beside, on maps created afresh each round. Each figure is the median over the rounds of each
// round's mean. docs/bench.md, tc_first_packet_ns.
//
// A DIR is a folder of built objects (classifier.bpf.o and bench-baseline.bpf.o): bpf/build, or
// a patched copy built with make. A build before sslwall_flows4 (one flow map) runs too.

import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { applyConfig, type MapHandles } from '../../agent/apply.js';
import { expectedMaps } from '../../agent/datapath.js';
import { type BpfObject, type MapHandle, native, type ProgHandle } from '../../native/index.js';
import { ConfigSchema } from '../../schemas/config.js';
import { mean, median, round } from './stats.js';
import { firstPacketFlow, TC_CONFIG } from './tc.js';

const USAGE = `Usage: npm run -s bench:compare-tc -- [--rounds N] [--flows N] [--json] DIR DIR...

Times two or more builds of the classifier in one process, on the first-packet bench's workload
(each flow's SYN, then its ClientHello, one run per call), every build on the same packet in turn.
DIR: a folder with classifier.bpf.o and bench-baseline.bpf.o (bpf/build, or a patched copy).
Needs root. Prints, per build, the median over rounds of the mean ns per ClientHello and per SYN.

Options:
  --rounds N   rounds, each on fresh maps                                   [9]
  --flows N    flows per round (distinct client ports; at most 60000)       [5000]
  --json       one JSON object per build on stdout
`;

export interface BuildTimes {
  dir: string;
  clientHelloNs: number;
  synNs: number;
  /** Each round's mean, ClientHello and SYN. */
  rounds: Array<{ clientHelloNs: number; synNs: number }>;
}

interface Loaded {
  obj: BpfObject;
  maps: Map<string, MapHandle>;
  egress: ProgHandle;
}

function load(dir: string): Loaded {
  const obj = native().openObject(path.join(dir, 'classifier.bpf.o'));
  const maps = new Map<string, MapHandle>();
  try {
    obj.load();
    for (const name of Object.keys(expectedMaps())) {
      try {
        maps.set(name, obj.map(name));
      } catch {
        // Not in this build (an older one: sslwall_flows4 is the one map then).
      }
    }
    const handles = Object.fromEntries(maps) as MapHandles;
    handles.sslwall_flows4 ??= handles.sslwall_flows;
    applyConfig(handles, ConfigSchema.parse(TC_CONFIG), null, null);
    return { obj, maps, egress: obj.prog('sslwall_classify_egress') };
  } catch (err) {
    for (const m of maps.values()) m.close();
    obj.close();
    throw err;
  }
}

function unload(l: Loaded): void {
  l.egress.close();
  for (const m of l.maps.values()) m.close();
  l.obj.close();
}

export function compareBuilds(
  dirs: string[],
  opts: { rounds: number; flows: number },
  progress: (m: string) => void = () => {},
): { builds: BuildTimes[]; emptyNs: number } {
  const addon = native();
  const baseline = addon.openObject(path.join(dirs[0]!, 'bench-baseline.bpf.o'));
  baseline.load();
  const empty = baseline.prog('sslwall_empty');
  const perRound = dirs.map(() => [] as Array<{ clientHelloNs: number; synNs: number }>);
  const emptyRounds: number[] = [];
  try {
    for (let r = 0; r < opts.rounds; r++) {
      const builds = dirs.map(load);
      try {
        const ch = dirs.map(() => [] as number[]);
        const syn = dirs.map(() => [] as number[]);
        const e: number[] = [];
        const order = dirs.map((_, i) => i);
        for (let i = 0; i < opts.flows; i++) {
          const { syn: s, hello } = firstPacketFlow(i);
          const turn = (i + r) % 2 ? order : [...order].reverse();
          for (const b of turn) syn[b]!.push(addon.testRun(builds[b]!.egress, s, 1).durationNs);
          e.push(addon.testRun(empty, hello, 1).durationNs);
          for (const b of turn) ch[b]!.push(addon.testRun(builds[b]!.egress, hello, 1).durationNs);
        }
        for (const b of order) perRound[b]!.push({ clientHelloNs: mean(ch[b]!), synNs: mean(syn[b]!) });
        emptyRounds.push(mean(e));
        progress(
          `round ${r + 1}/${opts.rounds}: ${dirs.map((d, b) => `${d}: ClientHello ${round(mean(ch[b]!), 1)} ns, SYN ${round(mean(syn[b]!), 1)} ns`).join(' | ')} | empty ${round(mean(e), 1)} ns`,
        );
      } finally {
        for (const b of builds) unload(b);
      }
    }
  } finally {
    empty.close();
    baseline.close();
  }
  return {
    builds: dirs.map((dir, b) => ({
      dir,
      clientHelloNs: round(median(perRound[b]!.map((x) => x.clientHelloNs)), 1),
      synNs: round(median(perRound[b]!.map((x) => x.synNs)), 1),
      rounds: perRound[b]!,
    })),
    emptyNs: round(median(emptyRounds), 1),
  };
}

export function main(argv: string[]): number {
  let parsed: { values: { rounds?: string; flows?: string; json?: boolean; help?: boolean }; positionals: string[] };
  try {
    parsed = parseArgs({
      args: argv,
      options: { rounds: { type: 'string' }, flows: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    process.stderr.write(`bench:compare-tc: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const int = (v: string | undefined, dflt: number, max: number, what: string): number => {
    const n = v === undefined ? dflt : Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`--${what} ${v}: expected an integer from 1 to ${max}`);
    return n;
  };
  let rounds: number;
  let flows: number;
  try {
    rounds = int(values.rounds, 9, 100, 'rounds');
    flows = int(values.flows, 5000, 60_000, 'flows');
    if (positionals.length < 2) throw new Error('name at least two build folders to compare');
    for (const dir of positionals) {
      for (const f of ['classifier.bpf.o', 'bench-baseline.bpf.o']) {
        if (!existsSync(path.join(dir, f)))
          throw new Error(`${dir} has no ${f}: give a folder of built objects (bpf/build, or make -C a patched copy of bpf/)`);
      }
    }
  } catch (err) {
    process.stderr.write(`bench:compare-tc: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { builds, emptyNs } = compareBuilds(positionals, { rounds, flows }, (m) => process.stderr.write(`  ${m}\n`));
  for (const b of builds) {
    if (values.json) process.stdout.write(`${JSON.stringify({ dir: b.dir, client_hello_ns: b.clientHelloNs, syn_ns: b.synNs, empty_ns: emptyNs })}\n`);
    else
      process.stdout.write(
        `${b.dir}: ClientHello ${b.clientHelloNs} ns (${round(b.clientHelloNs / emptyNs, 3)}x empty), SYN ${b.synNs} ns (${round(b.synNs / emptyNs, 3)}x)\n`,
      );
  }
  if (!values.json) process.stdout.write(`empty program: ${emptyNs} ns (median of ${rounds} rounds of ${flows} flows)\n`);
  return 0;
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
