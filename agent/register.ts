// Connections older than enforcement: the classifier creates a flow only from a packet, so a
// connection opened while the mode was off (the classifier keeps no state then) or before the
// filter was attached would stay unknown until it next sends. An idle database pool connection
// may not send for minutes: the preview and the bake would not count it. When the mode leaves
// off, and after attaching, the kernel's socket table is walked (iter/tcp, this namespace's
// sockets) and each established connection the flow map lacks gets an entry joined midway,
// judged by its next payload.
import type { Logger } from 'pino';
import type { Config } from '../schemas/config.js';
import type { Datapath } from './datapath.js';

/** Register the open connections if this change turns enforcement on; returns how many. */
export function registerOnSwitch(dp: Datapath, before: Config['mode'], after: Config['mode'], log: Logger, reason: string): number {
  if (after === 'off' || before !== 'off') return 0;
  return registerOpenFlows(dp, log, reason);
}

export function registerOpenFlows(dp: Datapath, log: Logger, reason: string): number {
  const started = process.hrtime.bigint();
  const n = dp.registerOpenFlows();
  log.info(
    { event: 'open_flows_registered', reason, flows: n, ms: Number(process.hrtime.bigint() - started) / 1e6 },
    'connections open before enforcement registered as joined midway',
  );
  return n;
}
