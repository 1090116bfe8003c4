// Where the time of one config change goes, step by step (parse, signature, validation, each
// kernel write), for the config_applied line: the propagation bench prints the breakdown from it
// (docs/bench.md). Milliseconds, keyed by step name.
export type StepTimes = Record<string, number>;

/** Run f, adding its duration to times[step] when times is given. */
export function timed<T>(times: StepTimes | undefined, step: string, f: () => T): T {
  if (!times) return f();
  const t0 = performance.now();
  try {
    return f();
  } finally {
    times[step] = (times[step] ?? 0) + (performance.now() - t0);
  }
}

/** The times rounded to µs, for a log line. */
export function roundTimes(times: StepTimes): StepTimes {
  return Object.fromEntries(Object.entries(times).map(([k, v]) => [k, Math.round(v * 1000) / 1000]));
}
