// Transparent TLS, kernel side (bpf/ttls.bpf.c): load the ttls object with its maps pinned beside
// the classifier's (reused on restart), attach its connect4/connect6/sockops programs to the
// agent's cgroup folder as pinned links (adopted and updated in place on restart), write its
// config, and answer the proxy's questions: where was this accepted socket going
// (originalDestination), and this destination speaks TLS itself (markSpeaksTls).
import { existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import type { Logger } from 'pino';
import { BpfError, type BpfObject, type MapHandle, native } from '../native/index.js';
import type { TtlsConfig } from '../schemas/config.js';
import type { BypassCgroup } from './apply.js';
import { addrToBytes, addrToString, decode, encode, sizeOf, u32 } from './codec.js';
import { loadOrExplain, reusePinnedMaps } from './datapath.js';
import { type FlowRecord, readWrappedFlows } from './flows.js';
import { Defines, type SslwallCidrKey, type SslwallTtlsAddr, type SslwallTtlsConfig, SslwallTtlsCounter, type SslwallTtlsOrig } from './generated/shared.js';
import { assertBpffs, bpfObjects, pinLayout } from './paths.js';

/** The ttls object's maps with the sizes this build expects (from shared.h via BTF). */
export function ttlsMaps() {
  return {
    sslwall_ttls_active_gen: { keySize: 4, valueSize: 4 },
    sslwall_ttls_config: { keySize: 4, valueSize: sizeOf('sslwall_ttls_config') },
    sslwall_ttls_ports: { keySize: 4, valueSize: 1 },
    sslwall_ttls_cidrs: { keySize: sizeOf('sslwall_cidr_key'), valueSize: 1 },
    sslwall_ttls_speaks_tls: { keySize: sizeOf('sslwall_ttls_addr'), valueSize: 1 },
    sslwall_ttls_by_cookie: { keySize: 8, valueSize: sizeOf('sslwall_ttls_orig') },
    sslwall_ttls_by_local: { keySize: sizeOf('sslwall_ttls_addr'), valueSize: sizeOf('sslwall_ttls_orig') },
    sslwall_ttls_counters: { keySize: 4, valueSize: 8 },
  } as const;
}
export type TtlsMap = keyof ReturnType<typeof ttlsMaps>;

/** Attached in this order: sockops first, so no connect() is redirected before its entry can be filed for the proxy. */
const PROGS = [
  ['sockops', 'sslwall_ttls_sockops'],
  ['connect4', 'sslwall_ttls_connect4'],
  ['connect6', 'sslwall_ttls_connect6'],
] as const;

/** What the ttls programs enforce: the config's ttls member (undefined: wrap nothing) and who never gets wrapped. */
export interface TtlsSettings {
  ttls: TtlsConfig | undefined;
  /** The local proxy's port, on 127.0.0.1 and ::1. */
  proxyPort: number;
  /** The agent's process id: its own connects (the proxy's, onward) are never redirected. */
  agentTgid: number;
  bypassCgroup: BypassCgroup | null;
}

export interface Destination {
  address: string;
  port: number;
}

export type TtlsCounters = Record<'redirected' | 'rememberFailed' | 'tlsDirect' | 'publishFailed' | 'closed', bigint>;

const PORTS = 65536;

export class TtlsKernel {
  readonly maps: Record<TtlsMap, MapHandle>;
  /** Pinned maps this load could not reuse (first start, or a layout change). */
  readonly mapsReplaced: number;
  private readonly pins;
  /** What this process last wrote into each generation's ports: an apply writes only what differs. */
  private readonly writtenPorts: Array<Buffer | null> = [null, null];

  private constructor(bpffs: string, maps: Record<TtlsMap, MapHandle>, mapsReplaced: number) {
    this.pins = pinLayout(bpffs);
    this.maps = maps;
    this.mapsReplaced = mapsReplaced;
  }

  /**
   * Load the ttls object (reusing its pinned maps) and attach it to cgroupDir, or, when links are
   * already pinned there, swap the new programs in behind them. Nothing is wrapped until apply()
   * enables it: a fresh config map reads as disabled, and a reused one keeps what the last agent
   * wrote until this one applies its own.
   */
  static load(bpffs: string, cgroupDir: string, log: Logger): TtlsKernel {
    assertBpffs(bpffs);
    const pins = pinLayout(bpffs);
    mkdirSync(pins.maps, { recursive: true });
    mkdirSync(pins.links, { recursive: true });
    const addon = native();
    const obj = addon.openObject(bpfObjects.ttls);
    try {
      // A replaced ttls map loses its state: open wrapped connections become unknown to the proxy.
      const reused = reusePinnedMaps(obj, pins, log, Object.keys(ttlsMaps()) as TtlsMap[]);
      loadOrExplain(obj, 'ttls');
      const maps = Object.fromEntries(Object.keys(ttlsMaps()).map((m) => [m, obj.map(m)])) as Record<TtlsMap, MapHandle>;
      for (const name of Object.keys(ttlsMaps()) as TtlsMap[]) if (!reused.has(name)) addon.pin(maps[name], pins.map(name));
      const cgroupId = BigInt(statSync(cgroupDir, { bigint: true }).ino);
      for (const [what, prog] of PROGS) attachOrAdopt(obj, prog, cgroupDir, cgroupId, pins.ttlsLink(what), log);
      log.info({ event: 'ttls_loaded', bpffs, cgroup: cgroupDir, reused_maps: [...reused] }, 'transparent TLS programs attached');
      return new TtlsKernel(bpffs, maps, Object.keys(ttlsMaps()).length - reused.size);
    } finally {
      // The links and pins hold the programs; the map handles above have fds of their own.
      obj.close();
    }
  }

  /**
   * Write settings into the inactive generation (config slot, ports, CIDRs), then make it the
   * one in force with a single u32 write: a connect() sees the old set or the new, never a mix
   * (a port of the new config with the CIDRs of the old would wrap a destination nobody asked
   * for). Open wrapped connections are untouched: their entries live in other maps.
   */
  apply(s: TtlsSettings): void {
    const addon = native();
    const next = (this.activeGen() ^ 1) as 0 | 1;
    addon.mapUpdate(
      this.maps.sslwall_ttls_config,
      u32(next),
      encode<SslwallTtlsConfig>('sslwall_ttls_config', {
        enabled: s.ttls ? 1 : 0,
        agent_tgid: s.agentTgid,
        bypass_cgroup_id: s.bypassCgroup?.id ?? 0n,
        bypass_cgroup_level: s.bypassCgroup?.level ?? 0,
        proxy_port: s.proxyPort,
      }),
    );
    const ports = Buffer.alloc(PORTS);
    for (const p of s.ttls?.ports ?? []) ports[p] = 1;
    this.writePorts(next, ports);
    this.writeCidrs(next, s.ttls?.cidrs ?? []);
    addon.mapUpdate(this.maps.sslwall_ttls_active_gen, u32(0), u32(next));
  }

  /** Where the client behind an accepted proxy socket was going: look it up by that socket's remote address and port. */
  originalDestination(remoteAddress: string, remotePort: number): Destination | null {
    return lookupOriginal(this.maps.sslwall_ttls_by_local, remoteAddress, remotePort);
  }

  /** This destination speaks TLS itself: connect() to it goes direct from now on (other ports of the host stay wrapped). */
  markSpeaksTls(address: string, port: number): void {
    native().mapUpdate(this.maps.sslwall_ttls_speaks_tls, endpointKey(address, port), Buffer.from([1]));
  }

  /** The wrapped connections open now, for `sslwall flows`. */
  wrappedFlows(): FlowRecord[] {
    return readWrappedFlows(this.maps.sslwall_ttls_by_local);
  }

  counters(): TtlsCounters {
    const read = (idx: number): bigint => {
      const v = native().mapLookup(this.maps.sslwall_ttls_counters, u32(idx));
      let sum = 0n;
      if (v) for (let off = 0; off + 8 <= v.length; off += 8) sum += v.readBigUInt64LE(off);
      return sum;
    };
    const c = SslwallTtlsCounter;
    return {
      redirected: read(c.SSLWALL_TTLS_CNT_REDIRECTED),
      rememberFailed: read(c.SSLWALL_TTLS_CNT_REMEMBER_FAILED),
      tlsDirect: read(c.SSLWALL_TTLS_CNT_TLS_DIRECT),
      publishFailed: read(c.SSLWALL_TTLS_CNT_PUBLISH_FAILED),
      closed: read(c.SSLWALL_TTLS_CNT_CLOSED),
    };
  }

  /** Detach the three links and remove their pins (the maps stay pinned; `sslwall uninstall` removes everything). */
  detach(): void {
    for (const [what] of PROGS) {
      const pin = this.pins.ttlsLink(what);
      if (!existsSync(pin)) continue;
      const link = native().getPinned(pin, 'link');
      try {
        native().linkDetach(link);
      } finally {
        link.close();
      }
      unlinkSync(pin);
    }
  }

  /** Close this process's map handles; the pinned links and maps keep wrapping (as the classifier keeps filtering). */
  close(): void {
    for (const h of Object.values(this.maps)) h.close();
  }

  private activeGen(): number {
    const v = native().mapLookup(this.maps.sslwall_ttls_active_gen, u32(0));
    return v ? v.readUInt32LE(0) & 1 : 0;
  }

  private writePorts(gen: number, ports: Buffer): void {
    const before = this.writtenPorts[gen];
    const changed: number[] = [];
    for (let p = 0; p < PORTS; p++) if (!before || before[p] !== ports[p]) changed.push(p);
    if (changed.length) {
      const keys = Buffer.alloc(changed.length * 4);
      const values = Buffer.alloc(changed.length);
      changed.forEach((p, i) => {
        keys.writeUInt32LE((gen << 16) | p, i * 4);
        values[i] = ports[p]!;
      });
      native().mapUpdateBatch(this.maps.sslwall_ttls_ports, keys, values, changed.length);
    }
    this.writtenPorts[gen] = ports;
  }

  private writeCidrs(gen: number, cidrs: string[]): void {
    const addon = native();
    const map = this.maps.sslwall_ttls_cidrs;
    for (const [key] of addon.mapDump(map)) {
      if (decode<SslwallCidrKey>('sslwall_cidr_key', key).gen === gen) addon.mapDelete(map, key);
    }
    for (const cidr of cidrs) {
      const [addr, bits] = cidr.split('/');
      const { family, bytes } = addrToBytes(addr!);
      const len = bits === undefined ? (family === Defines.SSLWALL_FAMILY_IPV4 ? 32 : 128) : Number(bits);
      addon.mapUpdate(map, encode<SslwallCidrKey>('sslwall_cidr_key', { prefixlen: 16 + len, gen, family, addr: bytes }), Buffer.from([1]));
    }
  }
}

/** originalDestination on a handle of the sslwall_ttls_by_local map (a process that did not load the object opens the pin). */
export function lookupOriginal(byLocal: MapHandle, remoteAddress: string, remotePort: number): Destination | null {
  const v = native().mapLookup(byLocal, endpointKey(remoteAddress, remotePort));
  if (!v) return null;
  const { dst } = decode<SslwallTtlsOrig>('sslwall_ttls_orig', v);
  return { address: addrToString(dst.addr, dst.family), port: dst.port };
}

/** The key the programs file an endpoint under: IPv4-mapped IPv6 folded to IPv4, as they fold it. */
export function endpointKey(address: string, port: number): Buffer {
  let { family, bytes } = addrToBytes(address);
  if (family === Defines.SSLWALL_FAMILY_IPV6 && bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    family = Defines.SSLWALL_FAMILY_IPV4;
    bytes = Buffer.concat([bytes.subarray(12), Buffer.alloc(12)]);
  }
  return encode<SslwallTtlsAddr>('sslwall_ttls_addr', { addr: bytes, port, family });
}

/** Attach prog to the cgroup as a pinned link, or swap it in behind the link already pinned there. */
function attachOrAdopt(obj: BpfObject, prog: string, cgroupDir: string, cgroupId: bigint, pin: string, log: Logger): void {
  const addon = native();
  if (existsSync(pin)) {
    const link = addon.getPinned(pin, 'link');
    try {
      if (addon.linkInfo(link).cgroupId === cgroupId) {
        const p = obj.prog(prog);
        try {
          addon.linkUpdate(link, p);
        } finally {
          p.close();
        }
        log.info({ event: 'ttls_link_adopted', prog, cgroup: cgroupDir }, 'adopted pinned ttls link; program replaced');
        return;
      }
      // Pinned for another cgroup (--cgroup changed, or the folder was recreated): it goes.
      addon.linkDetach(link);
    } catch (err) {
      // A link whose cgroup was removed is already detached: dropping its pin is all that is left.
      if (!(err instanceof BpfError)) throw err;
    } finally {
      link.close();
    }
    unlinkSync(pin);
  }
  const link = obj.attachCgroup(prog, cgroupDir);
  try {
    addon.pin(link, pin);
  } finally {
    link.close();
  }
  log.info({ event: 'ttls_link_attached', prog, cgroup: cgroupDir }, 'ttls program attached');
}
