// Writing a validated config into the kernel maps. The filter reads a config slot, the port
// roles and the bypass CIDRs of one generation; we fill the inactive generation completely and
// then flip sslwall_active_gen with one u32 write, so the filter never sees a half-written
// config. Flow state is untouched, except the verdicts of plaintext flows, which follow the mode.
import { BpfError, type MapHandle, native } from '../native/index.js';
import type { Config, StarttlsProtocol } from '../schemas/config.js';
import { StarttlsProtocols } from '../schemas/config.js';
import { addrToBytes, byteOffset, decode, encode, u32 } from './codec.js';
import type { SharedMap } from './datapath.js';
import { FLOW_MAPS } from './flow-maps.js';
import { type SslwallCidrKey, SslwallClass, type SslwallConfig, SslwallMode, SslwallPortRoleBits, SslwallProto, SslwallVerdict } from './generated/shared.js';
import { entriesWhere } from './map-scan.js';
import { type StepTimes, timed } from './timing.js';

/** The pinned (or freshly created) shared maps, by name; whoever opened them closes them. */
export type MapHandles = Record<SharedMap, MapHandle>;

/** Plaintext bytes a STARTTLS or CONNECT preamble may use before TLS must start. */
export const NEGOTIATION_BUDGET = 4096;
const PORTS = 65536;

export interface BypassCgroup {
  id: bigint;
  level: number;
}

/** What the kernel must know to never judge the agent's own connections (agent/self.ts). */
export interface SelfProtection {
  /** The agent's process id: its egress SYNs to `ports` open bypassed flows. */
  tgid: number;
  /** Server ports of the agent's control plane (etcd endpoints). */
  ports: number[];
  /** Ports the agent listens on (metrics): bypassed only where this host is the server. */
  localPorts: number[];
}

const modeValue = {
  off: SslwallMode.SSLWALL_MODE_OFF,
  passive: SslwallMode.SSLWALL_MODE_PASSIVE,
  active: SslwallMode.SSLWALL_MODE_ACTIVE,
} as const;

const protoValue: Record<StarttlsProtocol, number> = {
  smtp: SslwallProto.SSLWALL_PROTO_SMTP,
  imap: SslwallProto.SSLWALL_PROTO_IMAP,
  pop3: SslwallProto.SSLWALL_PROTO_POP3,
  ftp: SslwallProto.SSLWALL_PROTO_FTP,
  postgres: SslwallProto.SSLWALL_PROTO_POSTGRES,
  mysql: SslwallProto.SSLWALL_PROTO_MYSQL,
};

export function portRoles(config: Config, self: Pick<SelfProtection, 'ports' | 'localPorts'> = { ports: [], localPorts: [] }): Buffer {
  const roles = Buffer.alloc(PORTS);
  for (const p of StarttlsProtocols) for (const port of config.starttls[p]) roles[port] = protoValue[p];
  for (const port of config.connect.ports) roles[port] = SslwallProto.SSLWALL_PROTO_CONNECT;
  for (const port of config.bypass.ports) roles[port] |= SslwallPortRoleBits.SSLWALL_ROLE_BYPASS;
  for (const port of self.ports) roles[port] |= SslwallPortRoleBits.SSLWALL_ROLE_SELF;
  for (const port of self.localPorts) roles[port] |= SslwallPortRoleBits.SSLWALL_ROLE_LOCAL_BYPASS;
  return roles;
}

export function activeGen(maps: MapHandles): number {
  const v = native().mapLookup(maps.sslwall_active_gen, u32(0));
  return v ? v.readUInt32LE(0) & 1 : 0;
}

export function currentMode(maps: MapHandles): Config['mode'] {
  const gen = activeGen(maps);
  const raw = native().mapLookup(maps.sslwall_config, u32(gen));
  const mode = raw ? raw.readUInt32LE(0) : 0;
  return (Object.entries(modeValue).find(([, v]) => v === mode)?.[0] ?? 'off') as Config['mode'];
}

/**
 * Name this process as the agent in the config in force, before it connects anywhere: programs
 * pinned by an earlier agent may be enforcing, and they know only that agent's process id.
 */
export function claimSelf(maps: MapHandles, self: SelfProtection): void {
  const addon = native();
  const gen = activeGen(maps);
  const raw = addon.mapLookup(maps.sslwall_config, u32(gen));
  if (!raw) return;
  const cfg = decode<SslwallConfig>('sslwall_config', raw);
  if (cfg.self_tgid === self.tgid) return;
  // In place: only self_tgid changes, so a packet reading the slot meanwhile sees either agent.
  addon.mapUpdate(maps.sslwall_config, u32(gen), encode('sslwall_config', { ...cfg, self_tgid: self.tgid }));
}

/**
 * Apply a config; returns the number of plaintext flows whose verdict changed with the mode.
 * times (optional) gets each step's milliseconds; `flip_ms` ends when the new config is in force.
 * The flows' verdicts are reconciled only when the mode changes, or when `reconcile` says so
 * (the first apply of a process: an earlier agent may have stopped between flip and walk). With
 * the mode kept, every plaintext flow already carries its verdict, since the filter writes the
 * mode in force when it decides one; the walk copies every flow of the map into JavaScript
 * (470 ms p50 per change with 20,000 flows in the hot_swap bench), which a change of ports or
 * CIDRs would pay for nothing.
 */
export function applyConfig(
  maps: MapHandles,
  config: Config,
  bypassCgroup: BypassCgroup | null,
  self: SelfProtection | null = null,
  times?: StepTimes,
  reconcile = false,
): number {
  const addon = native();
  const next = activeGen(maps) ^ 1;
  const modeChanged = currentMode(maps) !== config.mode;

  timed(times, 'slot_ms', () =>
    addon.mapUpdate(
      maps.sslwall_config,
      u32(next),
      encode('sslwall_config', {
        mode: modeValue[config.mode],
        negotiation_budget: NEGOTIATION_BUDGET,
        bypass_cgroup_id: bypassCgroup?.id ?? 0n,
        bypass_cgroup_level: bypassCgroup?.level ?? 0,
        self_tgid: self?.tgid ?? 0,
      }),
    ),
  );
  timed(times, 'roles_ms', () => writePortRoles(maps, next, portRoles(config, self ?? undefined)));
  timed(times, 'cidrs_ms', () => writeCidrs(maps, next, config.bypass.cidrs));
  timed(times, 'flip_ms', () => addon.mapUpdate(maps.sslwall_active_gen, u32(0), u32(next)));
  if (!modeChanged && !reconcile) return 0;
  return timed(times, 'verdicts_ms', () => reconcileVerdicts(maps, config.mode));
}

// What this process last wrote into each generation of the port roles: the next write into that
// generation touches only the ports that differ (a full write of 65,536 entries costs ~18 ms).
const writtenRoles = new WeakMap<MapHandles, Array<Buffer | null>>();

// The agent runs in V8's interpreter (--jitless, bin/sslwall-agent.env), where a byte loop over
// 65,536 ports took ~1.5 ms of every config change: chunks compared natively skip unchanged ones.
const ROLE_CHUNK = 512;

/** The ports whose role differs from what was last written (every port when nothing was). */
export function changedPorts(before: Buffer | null, roles: Buffer): number[] {
  const ports: number[] = [];
  for (let at = 0; at < PORTS; at += ROLE_CHUNK) {
    if (before?.subarray(at, at + ROLE_CHUNK).equals(roles.subarray(at, at + ROLE_CHUNK))) continue;
    for (let port = at; port < at + ROLE_CHUNK; port++) if (!before || before[port] !== roles[port]) ports.push(port);
  }
  return ports;
}

function writePortRoles(maps: MapHandles, gen: number, roles: Buffer): void {
  const known = writtenRoles.get(maps) ?? [null, null];
  const ports = changedPorts(known[gen] ?? null, roles);
  if (ports.length) {
    const keys = Buffer.alloc(ports.length * 4);
    const values = Buffer.alloc(ports.length);
    ports.forEach((port, i) => {
      keys.writeUInt32LE((gen << 16) | port, i * 4);
      values[i] = roles[port]!;
    });
    native().mapUpdateBatch(maps.sslwall_port_roles, keys, values, ports.length);
  }
  known[gen] = Buffer.from(roles);
  writtenRoles.set(maps, known);
}

function writeCidrs(maps: MapHandles, gen: number, cidrs: string[]): void {
  const addon = native();
  const map = maps.sslwall_bypass_cidrs;
  for (const [key] of addon.mapDump(map)) {
    if (decode<SslwallCidrKey>('sslwall_cidr_key', key).gen === gen) addon.mapDelete(map, key);
  }
  for (const cidr of cidrs) {
    const [addr, bits] = cidr.split('/');
    const { family, bytes } = addrToBytes(addr!);
    const len = bits === undefined ? (family === 4 ? 32 : 128) : Number(bits);
    const key = encode<SslwallCidrKey>('sslwall_cidr_key', { prefixlen: 16 + len, gen, family, addr: bytes });
    addon.mapUpdate(map, key, Buffer.from([1]));
  }
}

/** The plaintext entries of a flow map: every agent start walks the flows (20,000 in the hot_swap bench), most of them tls. */
function plaintextFlows(map: MapHandle): Array<[Buffer, Buffer]> {
  const clsAt = byteOffset('sslwall_flow', 'cls');
  return entriesWhere(map, (_, value) => value[clsAt] === SslwallClass.SSLWALL_CLASS_PLAINTEXT);
}

/**
 * Plaintext flows carry the verdict of the mode in force; rewrite them when it changes. Only the
 * class and verdict bytes are read and only the verdict byte changes: a full decode and encode
 * of every flow (its owner's comm, its header buffers) was most of the walk's ~470 ms at 20,000
 * flows, paid at every mode change and every agent start (docs/dataplane.md, "Switching modes").
 */
export function reconcileVerdicts(
  maps: MapHandles,
  mode: Config['mode'],
  /** The walk's snapshot of a flow map (a test passes an older one). */
  dump: (map: MapHandle) => Array<[Buffer, Buffer]> = plaintextFlows,
): number {
  const addon = native();
  const want =
    mode === 'active'
      ? SslwallVerdict.SSLWALL_VERDICT_BLOCKED
      : mode === 'passive'
        ? SslwallVerdict.SSLWALL_VERDICT_REPORTED
        : SslwallVerdict.SSLWALL_VERDICT_ALLOWED;
  const clsAt = byteOffset('sslwall_flow', 'cls');
  const verdictAt = byteOffset('sslwall_flow', 'verdict');
  let changed = 0;
  for (const name of FLOW_MAPS) {
    const map = maps[name];
    for (const [key, value] of dump(map)) {
      if (value[clsAt] !== SslwallClass.SSLWALL_CLASS_PLAINTEXT || value[verdictAt] === want) continue;
      // The dump is a snapshot: by now the connection may have closed and its 4-tuple carry a new
      // one (a new flow, judged under the mode just flipped in). Written back only if the entry is
      // still byte for byte the one dumped (the filter never writes a decided flow), so the window
      // where a new connection could be overwritten shrinks from the whole walk to one lookup.
      const now = addon.mapLookup(map, key);
      if (!now?.equals(value)) continue;
      now[verdictAt] = want;
      try {
        addon.mapUpdate(map, key, now, 2 /* BPF_EXIST */);
        changed++;
      } catch (err) {
        if (!(err instanceof BpfError) || err.errno !== 2 /* ENOENT: closed meanwhile */) throw err;
      }
    }
  }
  return changed;
}
