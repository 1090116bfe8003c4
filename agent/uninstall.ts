// `sslwall uninstall`: detach every link the agent pinned and remove its pins, and the classic
// clsact filters it may have put on named interfaces (kernels without tcx). The agent should be
// stopped first: a running one attaches again at its next start, not before.
import { existsSync, readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { native } from '../native/index.js';
import { CLSACT_HANDLE, CLSACT_PRIORITY } from './datapath.js';
import { pinLayout } from './paths.js';

/** What was removed, one entry per pin or filter. */
export function uninstall(bpffs: string, ifaces: string[]): string[] {
  const pins = pinLayout(bpffs);
  const removed: string[] = [];
  if (existsSync(pins.links)) {
    for (const f of readdirSync(pins.links)) {
      const p = `${pins.links}/${f}`;
      const link = native().getPinned(p, 'link');
      try {
        native().linkDetach(link);
      } catch {
        // Already detached (interface gone): removing the pin is all that is left.
      } finally {
        link.close();
      }
      unlinkSync(p);
      removed.push(p);
    }
    rmdirSync(pins.links);
  }
  if (existsSync(pins.maps)) {
    for (const f of readdirSync(pins.maps)) {
      unlinkSync(`${pins.maps}/${f}`);
      removed.push(`${pins.maps}/${f}`);
    }
    rmdirSync(pins.maps);
  }
  for (const iface of ifaces) {
    for (const dir of ['ingress', 'egress'] as const) {
      try {
        native().tcDetach(native().ifNameToIndex(iface), dir, CLSACT_HANDLE, CLSACT_PRIORITY);
        removed.push(`clsact ${dir} filter on ${iface}`);
      } catch {
        // No fallback filter there: tcx was used, or it is already gone.
      }
    }
  }
  return removed;
}
