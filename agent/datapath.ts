// Loading, pinning and adopting the kernel side. The maps are pinned under <bpffs>/maps and
// reused by every later load, so replacing programs (or restarting the agent) keeps flow state.
// Interfaces get tcx links pinned under <bpffs>/links; a restart updates the program behind
// an existing link instead of attaching a second filter.
import { existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { BpfError, type BpfObject, type LinkHandle, type MapHandle, native, type ProgHandle } from '../native/index.js';
import { SslwallError } from '../schemas/errors.js';
import { sizeOf, u32 } from './codec.js';
import { FLOW_MAPS, type FlowMaps } from './flow-maps.js';
import {
  type Captured,
  capture,
  copyLegacyFlows,
  FOLDED,
  type FoldedMap,
  fold,
  MIGRATABLE,
  type Placed,
  placer,
  restore,
  settleLegacyFlows,
  settleRestored,
} from './migrate.js';
import { assertBpffs, bpfObjects, pinLayout } from './paths.js';
import { roundTimes, type StepTimes, timed } from './timing.js';

/** The maps every object shares, with the sizes this build expects (from shared.h via BTF). */
export function expectedMaps() {
  return {
    sslwall_flows4: { keySize: sizeOf('sslwall_flow_key4'), valueSize: sizeOf('sslwall_flow') },
    sslwall_flows: { keySize: sizeOf('sslwall_flow_key'), valueSize: sizeOf('sslwall_flow') },
    sslwall_half_open: { keySize: sizeOf('sslwall_flow_key'), valueSize: sizeOf('sslwall_flow') },
    sslwall_self_flows: { keySize: sizeOf('sslwall_flow_key'), valueSize: 1 },
    sslwall_active_gen: { keySize: 4, valueSize: 4 },
    sslwall_config: { keySize: 4, valueSize: sizeOf('sslwall_config') },
    sslwall_port_roles: { keySize: 4, valueSize: 1 },
    sslwall_bypass_cidrs: { keySize: sizeOf('sslwall_cidr_key'), valueSize: 1 },
    sslwall_counters: { keySize: 4, valueSize: 8 },
    sslwall_events: { keySize: 0, valueSize: 0 },
  } as const;
}
export type SharedMap = keyof ReturnType<typeof expectedMaps>;

export type TcDirection = 'ingress' | 'egress';

/** cls_bpf handle and priority of the clsact fallback (kernels without tcx). */
export const CLSACT_HANDLE = 0x5357;
export const CLSACT_PRIORITY = 0x5357;

export interface Features {
  tcAttach: 'tcx' | 'clsact';
  lifecycle: 'tp_btf/inet_sock_set_state';
  socketDestroy: 'iter/tcp+bpf_sock_destroy';
  kprobes: boolean;
}

/** A handle on each shared map of a loaded object; the caller closes them (closeMaps). */
export function sharedMaps(obj: BpfObject): Record<SharedMap, MapHandle> {
  return Object.fromEntries(Object.keys(expectedMaps()).map((m) => [m, obj.map(m)])) as Record<SharedMap, MapHandle>;
}

/** A handle on each flow map of a loaded object; the caller closes them (closeMaps). */
function flowMapsOf(obj: BpfObject): FlowMaps {
  return Object.fromEntries(FLOW_MAPS.map((m) => [m, obj.map(m)])) as FlowMaps;
}

/** A layout migration of this start, for the settle once the new programs are attached. */
interface Migration {
  map: string;
  /** The replaced map, unpinned but open: the old programs write it until they are detached. */
  old: MapHandle;
  written: Map<string, Placed>;
  place: (k: Buffer, v: Buffer) => Placed;
}

export function closeMaps(maps: Partial<Record<SharedMap, MapHandle>>): void {
  for (const h of Object.values(maps)) h?.close();
}

export class Datapath {
  readonly pins;
  /** Owned by the Datapath: valid until close(). */
  readonly maps: Record<SharedMap, MapHandle>;
  features: Features;
  /** Pinned maps this load could not reuse (first start, or a layout change). */
  mapsReplaced = 0;
  /** IPv4 flows an older build kept in sslwall_flows, copied at load; settled once attached. */
  private legacyCopies = new Map<string, Buffer>();
  /** Layout migrations of this start, each with the old map open until the settle. */
  private migrations: Migration[] = [];
  private readonly iterLink: LinkHandle;
  private readonly seedLink: LinkHandle;
  private readonly registerLink: LinkHandle;
  private readonly selfInodes: MapHandle;
  private readonly progs: Record<TcDirection, ProgHandle>;
  private readonly classifier: BpfObject;
  private readonly lifecycle: BpfObject;

  private constructor(
    bpffs: string,
    classifier: BpfObject,
    lifecycle: BpfObject,
    iterLink: LinkHandle,
    seedLink: LinkHandle,
    registerLink: LinkHandle,
    features: Features,
  ) {
    this.pins = pinLayout(bpffs);
    this.classifier = classifier;
    this.lifecycle = lifecycle;
    this.iterLink = iterLink;
    this.seedLink = seedLink;
    this.registerLink = registerLink;
    this.selfInodes = lifecycle.map('sslwall_self_inodes');
    this.features = features;
    this.maps = sharedMaps(classifier);
    this.progs = { egress: classifier.prog('sslwall_classify_egress'), ingress: classifier.prog('sslwall_classify_ingress') };
  }

  /** Load both objects, reusing pinned maps, and (re)attach the lifecycle hook. */
  static load(bpffs: string, log: Logger): Datapath {
    assertBpffs(bpffs);
    const pins = pinLayout(bpffs);
    mkdirSync(pins.maps, { recursive: true });
    mkdirSync(pins.links, { recursive: true });
    const addon = native();

    const classifier = addon.openObject(bpfObjects.classifier);
    const captured: Captured[] = [];
    const migrations: Migration[] = [];
    const reused = reusePinnedMaps(classifier, pins, log, Object.keys(expectedMaps()), captured);
    // The verifier's time, in the log: most of a restart's CPU (docs/bench.md, hot_swap).
    const times: StepTimes = {};
    timed(times, 'classifier_ms', () => loadOrExplain(classifier, 'classifier'));
    for (const c of captured) {
      // An entry may go to another map than the one it came from (migrate.ts, restore).
      const opened = new Map<string, MapHandle>();
      const open = (name: string): MapHandle => {
        const map = opened.get(name) ?? classifier.map(name);
        opened.set(name, map);
        return map;
      };
      const place = placer(c, bpfObjects.classifier);
      let written: Map<string, Placed>;
      try {
        written = restore(c, place, open);
      } finally {
        for (const map of opened.values()) map.close();
      }
      log.info(
        { event: 'map_migrated', map: c.map, entries: c.entries.length, migrated: written.size, from: c.value.size, to: classifier.mapDef(c.map).valueSize },
        'pinned state migrated to the new layout',
      );
      if (c.source) migrations.push({ map: c.map, old: c.source, written, place });
    }
    foldRetiredMaps(classifier, pins, log);
    const legacyCopies = copyLegacy(classifier, log);
    for (const name of Object.keys(expectedMaps())) {
      if (reused.has(name)) continue;
      const map = classifier.map(name);
      try {
        addon.pin(map, pins.map(name));
      } finally {
        map.close();
      }
    }

    const lifecycle = addon.openObject(bpfObjects.lifecycle);
    lifecycle.setRodata('netns_ino', u32(statSync('/proc/self/ns/net').ino));
    reusePinnedMaps(lifecycle, pins, log, Object.keys(expectedMaps()));
    timed(times, 'lifecycle_ms', () => loadOrExplain(lifecycle, 'lifecycle'));

    // A tracing link cannot be updated in place: attach the new one, then swap the pin.
    const stateLink = lifecycle.attachTracing('sslwall_sock_state');
    if (existsSync(pins.lifecycleLink)) unlinkSync(pins.lifecycleLink);
    try {
      addon.pin(stateLink, pins.lifecycleLink);
    } finally {
      stateLink.close();
    }

    const iterLink = lifecycle.attachIter('sslwall_destroy_blocked');
    const seedLink = lifecycle.attachIter('sslwall_seed_self');
    const registerLink = lifecycle.attachIter('sslwall_register_open');
    const features: Features = {
      tcAttach: 'tcx',
      lifecycle: 'tp_btf/inet_sock_set_state',
      socketDestroy: 'iter/tcp+bpf_sock_destroy',
      kprobes: existsSync('/sys/kernel/debug/kprobes') || existsSync('/sys/kernel/tracing/kprobe_events'),
    };
    log.info({ event: 'datapath_loaded', bpffs, reused_maps: [...reused], features, load_ms: roundTimes(times) }, 'datapath loaded');
    const dp = new Datapath(bpffs, classifier, lifecycle, iterLink, seedLink, registerLink, features);
    dp.mapsReplaced = Object.keys(expectedMaps()).length - reused.size;
    dp.legacyCopies = legacyCopies;
    dp.migrations = migrations;
    return dp;
  }

  /**
   * Once the new programs run on every interface, what the old ones did since this start read
   * their maps is brought over: the flows of a migrated layout (migrate.ts, settleRestored), and
   * the IPv4 flows of an older build, which leave sslwall_flows for good (settleLegacyFlows).
   * A no-op on a start that replaced no program.
   */
  settle(log: Logger): void {
    for (const m of this.migrations.splice(0)) {
      const open = (name: string): MapHandle => this.maps[name as SharedMap];
      try {
        const r = settleRestored(m.old, m.written, m.place, open);
        log.info({ event: 'map_migration_settled', map: m.map, migrated: m.written.size, ...r }, 'what the old programs did during the start brought over');
      } finally {
        m.old.close();
      }
    }
    const { moved, dropped } = settleLegacyFlows(this.maps, this.legacyCopies);
    if (this.legacyCopies.size || moved)
      log.info({ event: 'legacy_flows_settled', copied: this.legacyCopies.size, moved, dropped }, 'IPv4 flows of the older build moved to sslwall_flows4');
    this.legacyCopies.clear();
  }

  /** The classifier program of one direction; owned by the Datapath. */
  prog(dir: TcDirection): ProgHandle {
    return this.progs[dir];
  }

  /** Attach (or adopt and update) the classifier on an interface of this network namespace. */
  attachInterface(iface: string, log: Logger): void {
    const addon = native();
    let ifindex: number;
    try {
      ifindex = addon.ifNameToIndex(iface);
    } catch (err) {
      throw new SslwallError('SSLWALL_E_IFACE', `interface ${iface} does not exist in this network namespace; list them with: ip -br link`, { cause: err });
    }
    for (const dir of ['ingress', 'egress'] as const) {
      const pin = this.pins.tcxLink(iface, dir);
      const prog = this.prog(dir);
      if (existsSync(pin)) {
        const link = addon.getPinned(pin, 'link');
        try {
          const info = addon.linkInfo(link);
          if (info.ifindex === undefined || info.ifindex === ifindex) {
            // Same program (same tag: same instructions after relocation)? Keep it running.
            // A replaced map (new layout) means the running program points at the old one: replace it.
            const same = this.mapsReplaced === 0 && addon.progInfo(prog).tag === progTag(info.progId);
            if (!same) addon.linkUpdate(link, prog);
            log.info(
              { event: 'filter_adopted', iface, dir, link_id: info.id, replaced: !same },
              same ? 'adopted pinned filter (same program)' : 'adopted pinned filter; program replaced',
            );
            continue;
          }
          // Same name, other interface (it was recreated): the old link is dead weight.
          addon.linkDetach(link);
        } finally {
          link.close();
        }
        unlinkSync(pin);
      }
      if (this.features.tcAttach === 'tcx') {
        try {
          const link = addon.tcxAttach(prog, ifindex, dir);
          try {
            addon.pin(link, pin);
          } finally {
            link.close();
          }
          log.info({ event: 'filter_attached', iface, dir, ifindex, via: 'tcx' }, 'filter attached');
          continue;
        } catch (err) {
          // Kernels before 6.6 have no tcx: EINVAL for the unknown attach type.
          if (!(err instanceof BpfError) || (err.errno !== 22 && err.errno !== 95)) throw err;
          this.features.tcAttach = 'clsact'; // reported in agent_ready and health
          log.warn({ event: 'tcx_unavailable', errno: err.errno }, 'no tcx links on this kernel; using clsact filters (uninstall needs --iface)');
        }
      }
      // clsact + cls_bpf at a fixed handle/priority: attaching again replaces in place, so a
      // restart never adds a second filter. Nothing to pin: the filter lives on the qdisc.
      addon.tcAttach(prog, ifindex, dir, CLSACT_HANDLE, CLSACT_PRIORITY);
      log.info({ event: 'filter_attached', iface, dir, ifindex, via: 'clsact' }, 'filter attached');
    }
  }

  /** Abort every local socket of a blocked flow; returns how many were destroyed. */
  destroyBlockedSockets(): number {
    const out = native().iterRun(this.iterLink).toString();
    return out ? out.trim().split('\n').length : 0;
  }

  /**
   * Mark the sockets with these inodes (the agent's own, agent/self.ts) as the agent's flows:
   * bypassed, whatever the mode. Returns how many flows were seeded.
   */
  seedOwnFlows(inodes: bigint[]): number {
    const addon = native();
    for (const [key] of addon.mapDump(this.selfInodes)) addon.mapDelete(this.selfInodes, key);
    for (const ino of inodes) {
      const key = Buffer.alloc(8);
      key.writeBigUInt64LE(ino);
      addon.mapUpdate(this.selfInodes, key, Buffer.from([1]));
    }
    const out = addon.iterRun(this.seedLink).toString();
    return out ? out.trim().split('\n').length : 0;
  }

  /**
   * Give every established connection of this namespace that the flow map does not know an
   * entry joined midway (agent/register.ts says when). Returns how many were registered.
   */
  registerOpenFlows(): number {
    const out = native().iterRun(this.registerLink).toString();
    return out ? out.trim().split('\n').length : 0;
  }

  close(): void {
    for (const m of this.migrations.splice(0)) m.old.close();
    this.iterLink.close();
    this.seedLink.close();
    this.registerLink.close();
    this.selfInodes.close();
    closeMaps(this.maps);
    for (const p of Object.values(this.progs)) p.close();
    this.lifecycle.close();
    this.classifier.close();
  }
}

/** The tag of the program behind a link, from the program id the link reports. */
function progTag(progId: number): string {
  const prog = native().progById(progId);
  try {
    return native().progInfo(prog).tag;
  } finally {
    prog.close();
  }
}

/** Copy an older build's IPv4 flows into sslwall_flows4 while its programs still run (migrate.ts). */
function copyLegacy(obj: BpfObject, log: Logger): Map<string, Buffer> {
  const maps = flowMapsOf(obj);
  try {
    const copied = copyLegacyFlows(maps);
    if (copied.size) log.info({ event: 'legacy_flows_copied', entries: copied.size }, 'IPv4 flows of an older build copied to sslwall_flows4');
    return copied;
  } finally {
    closeMaps(maps);
  }
}

/**
 * Pinned maps of an older build whose entries this build keeps inside another map (FOLDED):
 * written into it after the migration, then unpinned, so that an upgrade keeps them and leaves
 * no stale pin behind.
 */
function foldRetiredMaps(obj: BpfObject, pins: ReturnType<typeof pinLayout>, log: Logger): void {
  const addon = native();
  for (const [name, spec] of Object.entries(FOLDED) as Array<[FoldedMap, (typeof FOLDED)[FoldedMap]]>) {
    const pin = pins.map(name);
    if (!existsSync(pin)) continue;
    const old = addon.getPinned(pin, 'map');
    const into = flowMapsOf(obj);
    try {
      const c = capture(name, old);
      const n = fold(c, bpfObjects.classifier, (map) => into[map]);
      log.info(
        { event: 'map_folded', map: name, into: `${spec.into}.${spec.field}`, entries: c.entries.length, folded: n },
        'retired pinned map folded into its new place',
      );
    } catch (err) {
      // What it held is attribution only (owners of open flows): not worth refusing to start for.
      log.warn({ event: 'map_fold_failed', map: name, err }, 'a retired pinned map could not be folded; its entries are dropped');
    } finally {
      closeMaps(into);
      old.close();
    }
    unlinkSync(pin);
  }
}

/** Load, and say in the error what failed and where the verifier log is. */
export function loadOrExplain(obj: BpfObject, what: string): void {
  try {
    obj.load();
  } catch (err) {
    if (err instanceof BpfError) {
      err.message = `loading the ${what} programs failed (${err.message}); the verifier log is in the error's verifierLog. Is this kernel at least 6.6 with BTF?`;
    }
    throw err;
  }
}

/**
 * Reuse every pinned map of `names` that matches this object's definition. A map whose layout
 * changed is replaced; if it holds state (flows) and the caller takes `captured`, its entries
 * are captured first (the map kept open, for the settle) and migrated into the new map after
 * load. Shared with the lifecycle and ttls objects, which load after the classifier has pinned
 * its maps (agent/ttls-kernel.ts).
 */
export function reusePinnedMaps<N extends string>(
  obj: BpfObject,
  pins: ReturnType<typeof pinLayout>,
  log: Logger,
  names: readonly N[],
  captured?: Captured[],
): Set<N> {
  const addon = native();
  const reused = new Set<N>();
  for (const name of names) {
    const pin = pins.map(name);
    if (!existsSync(pin)) continue;
    const map = addon.getPinned(pin, 'map');
    let keepOpen = false;
    try {
      const info = addon.mapInfo(map);
      const want = obj.mapDef(name);
      if (info.type !== want.type || info.keySize !== want.keySize || info.valueSize !== want.valueSize || info.maxEntries !== want.maxEntries) {
        if (MIGRATABLE.has(name) && captured) {
          // Kept open past its unpinning: the old programs write it until the new ones are
          // attached, and the settle reads their last word from it (migrate.ts, settleRestored).
          captured.push({ ...capture(name, map), source: map });
          keepOpen = true;
        }
        log.warn(
          {
            event: 'map_layout_changed',
            map: name,
            pinned: { keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries },
            expected: want,
            migrating: MIGRATABLE.has(name) && captured !== undefined,
          },
          'pinned map has another layout; replacing it',
        );
        unlinkSync(pin);
        continue;
      }
      obj.reuseMap(name, map);
      reused.add(name);
    } finally {
      if (!keepOpen) map.close();
    }
  }
  return reused;
}

/** The tcx links on an interface index (of any namespace: ifindexes repeat across namespaces). */
export function tcxLinksOn(ifindex: number): Array<{ id: number; progId: number; attachType: number }> {
  const addon = native();
  const out: Array<{ id: number; progId: number; attachType: number }> = [];
  for (const id of addon.linkIds()) {
    let link: LinkHandle;
    try {
      link = addon.linkById(id);
    } catch {
      continue; // released meanwhile
    }
    try {
      const info = addon.linkInfo(link);
      if (info.ifindex === ifindex && info.attachType !== undefined) out.push({ id, progId: info.progId, attachType: info.attachType });
    } finally {
      link.close();
    }
  }
  return out;
}
