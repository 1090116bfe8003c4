// The lab's last resort: what tests, benches and `sslwall up` made is removed when the process
// ends without its own cleanup (a crash, a forgotten destroy(), Ctrl-C). A signal's default
// action skips 'exit' handlers, so SIGINT/SIGTERM/SIGHUP exit explicitly, which runs them;
// unless the program handles those signals itself (sslwall up stops its parts in order first).
const hooks: Array<() => void> = [];
let installed = false;
let callerOwnsSignals = false;

/** Run fn (synchronous: nothing asynchronous runs in 'exit') when the process exits. */
export function atExit(fn: () => void): void {
  hooks.push(fn);
  if (installed) return;
  installed = true;
  process.on('exit', () => {
    for (const h of hooks) h();
  });
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const) {
    process.on(sig, () => {
      if (!callerOwnsSignals) process.exit(code);
    });
  }
}

/** The program handles SIGINT/SIGTERM/SIGHUP itself and cleans up before it exits. */
export function callerHandlesSignals(): void {
  callerOwnsSignals = true;
}
