// What every benchmark returns and what the runner hands it.

/** One figure: a measurement and the baseline measured in the same run. */
export interface BenchResult {
  bench: string;
  value: number;
  unit: string;
  baseline: number;
  /** value / baseline (for throughput and rates: with / without). */
  ratio: number;
  /** The goal, e.g. { op: '<=', ratio: 1.3 }; printed next to the figure, never asserted. */
  target?: { op: '<=' | '>='; ratio: number };
  /** One short sentence for the table's "what it means" column. */
  meaning: string;
}

export interface BenchContext {
  /** Progress for humans, on stderr, prefixed with the bench name. */
  progress(message: string): void;
}

export interface Bench {
  /** Name used by --only. */
  name: string;
  /** Names of the figures it produces (also accepted by --only). */
  produces: string[];
  /** One line for --list. */
  summary: string;
  run(ctx: BenchContext): Promise<BenchResult[]>;
}
