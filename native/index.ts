// Typed surface of the native addon (native/src/*.cc): one function per libbpf operation, nothing
// more. Policy (what to pin where, when to replace) lives in agent/; this file only loads the addon
// and gives it the BpfError class it throws.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A libbpf/kernel failure: the operation, the errno and, for loads, the verifier log. The addon
 * constructs and throws this class itself (registered at load), so what JS catches is the error
 * the C++ side made.
 */
export class BpfError extends Error {
  readonly code = 'SSLWALL_E_BPF';
  constructor(
    message: string,
    readonly op: string,
    readonly errno: number,
    readonly verifierLog?: string,
  ) {
    super(message);
    this.name = 'BpfError';
  }
}

export type FdKind = 'map' | 'prog' | 'link';

/**
 * An owned BPF fd. close() closes it (idempotent); a handle dropped unclosed is closed by its
 * finalizer, which for an unpinned link detaches it. After close() every operation given the
 * handle throws BpfError with errno EBADF. Operations check the kind at run time too (TypeError).
 */
export interface FdHandle<K extends FdKind> {
  /** What this handle holds; the literal type keeps a map handle out of program parameters. */
  readonly kind: K;
  /** The fd number, for logs and diagnostics only (-1 once closed): operations take the handle. */
  readonly fd: number;
  readonly closed: boolean;
  close(): void;
}
export type MapHandle = FdHandle<'map'>;
export type ProgHandle = FdHandle<'prog'>;
export type LinkHandle = FdHandle<'link'>;
interface HandleOf {
  map: MapHandle;
  prog: ProgHandle;
  link: LinkHandle;
}

export interface ProgInfo {
  id: number;
  name: string;
  tag: string;
  type: number;
}
/** ifindex for tcx links; cgroupId (the cgroup folder's inode) for cgroup links; attachType for both. */
export interface LinkInfo {
  id: number;
  progId: number;
  type: number;
  ifindex?: number;
  cgroupId?: bigint;
  attachType?: number;
}
export interface MapInfo {
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  name: string;
  btfId: number;
  btfKeyTypeId: number;
  btfValueTypeId: number;
}
export interface TestRunResult {
  retval: number;
  durationNs: number;
  dataOut: Buffer;
}

/** An opened (and, after load(), loaded) BPF object; owns its bpf_object. */
export interface BpfObject {
  /** Set a `const volatile` global in .rodata before load (value bytes are copied at its BTF offset). */
  setRodata(name: string, value: Buffer): void;
  /** Make map `name` use an existing map instead of creating one (adopting pinned state); the handle stays the caller's. */
  reuseMap(name: string, map: MapHandle): void;
  /** Load into the kernel; throws BpfError with the verifier log on rejection. */
  load(): void;
  /** A new handle (its own fd) on a loaded program: valid after this object is closed; the caller closes it. */
  prog(name: string): ProgHandle;
  /** A new handle (its own fd) on one of this object's maps; the caller closes it. */
  map(name: string): MapHandle;
  /** The map as this object defines it: type, key/value size, max entries. */
  mapDef(name: string): { type: number; keySize: number; valueSize: number; maxEntries: number };
  /** Attach a tracing program by its section (tp_btf/, raw_tp/, tracepoint/ ...). */
  attachTracing(progName: string): LinkHandle;
  /** Attach an iter/ program. */
  attachIter(progName: string): LinkHandle;
  /** Attach a cgroup program (cgroup/connect4, sockops, ...) to a cgroup v2 folder as a link, with the attach type its section names. */
  attachCgroup(progName: string, cgroupDir: string): LinkHandle;
  close(): void;
}

export interface RingBufferPoller {
  /** Stop the polling thread; no callback runs after this returns. */
  close(): void;
}

export interface NativeAddon {
  openObject(file: string): BpfObject;
  /** bpf_obj_pin; the handle stays owned by the caller. */
  pin(handle: FdHandle<FdKind>, file: string): void;
  /** bpf_obj_get, checked to be a pinned `kind` (BpfError EINVAL if not); the caller closes it. */
  getPinned<K extends FdKind>(file: string, kind: K): HandleOf[K];
  progInfo(prog: ProgHandle): ProgInfo;
  linkInfo(link: LinkHandle): LinkInfo;
  mapInfo(map: MapHandle): MapInfo;
  /** Every BPF link id on the system (all namespaces). */
  linkIds(): number[];
  /** A handle on a program by id; the caller closes it. */
  progById(id: number): ProgHandle;
  /** A handle on a link by id; the caller closes it. */
  linkById(id: number): LinkHandle;

  mapLookup(map: MapHandle, key: Buffer): Buffer | null;
  mapUpdate(map: MapHandle, key: Buffer, value: Buffer, flags?: number): void;
  mapDelete(map: MapHandle, key: Buffer): boolean;
  /** Every [key, value] of a map: batched lookups for hash and array maps, else get_next_key + lookup. */
  mapDump(map: MapHandle): Array<[Buffer, Buffer]>;
  /** How many entries the map holds (batched lookups in the addon; nothing copied into JS). */
  mapCount(map: MapHandle): number;
  /**
   * Every entry by bpf_map_lookup_batch, as two buffers of fixed-size records (entry i: keys at
   * i * keySize, values at i * valueSize), for scans that keep few entries. Hash and array maps;
   * BpfError EOPNOTSUPP where the kernel has no batch lookup for the map (mapDump works there).
   */
  mapLookupBatch(map: MapHandle): { keys: Buffer; values: Buffer; count: number; keySize: number; valueSize: number };
  /** bpf_map_update_batch: keys and values are concatenated fixed-size records. */
  mapUpdateBatch(map: MapHandle, keys: Buffer, values: Buffer, count: number): void;

  /** tcx link (kernel ≥ 6.6): attach prog to ifindex in one direction. */
  tcxAttach(prog: ProgHandle, ifindex: number, direction: 'ingress' | 'egress'): LinkHandle;
  /** Classic clsact + cls_bpf (bpf_tc_hook_create/bpf_tc_attach) for kernels without tcx. Replaces in place when handle/priority match. */
  tcAttach(prog: ProgHandle, ifindex: number, direction: 'ingress' | 'egress', handle: number, priority: number): void;
  tcDetach(ifindex: number, direction: 'ingress' | 'egress', handle: number, priority: number): void;
  /** bpf_link_update: swap the program behind a link in place. */
  linkUpdate(link: LinkHandle, prog: ProgHandle): void;
  /** bpf_link_detach. */
  linkDetach(link: LinkHandle): void;
  /** Create an iterator from an iter link and read it to EOF; returns what the program wrote. */
  iterRun(link: LinkHandle): Buffer;

  /** Poll a BPF_MAP_TYPE_RINGBUF on a native thread; each record is handed to cb on the JS thread. The poller keeps its own fd on the map. */
  ringBufferPoll(map: MapHandle, cb: (record: Buffer) => void): RingBufferPoller;

  testRun(prog: ProgHandle, data: Buffer, repeat: number): TestRunResult;
  ifNameToIndex(name: string): number;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/native/index.js and native/index.ts both sit two levels below the repo root or one.
const candidates = [
  path.resolve(here, 'build/Release/sslwall_native.node'),
  path.resolve(here, '../../native/build/Release/sslwall_native.node'),
  path.resolve(here, '../native/build/Release/sslwall_native.node'),
];

function loadAddon(): NativeAddon {
  const require = createRequire(import.meta.url);
  const errors: string[] = [];
  for (const file of candidates) {
    let binding: NativeAddon & { setErrorClass(cls: typeof BpfError): void };
    try {
      binding = require(file);
    } catch (err) {
      errors.push(`  ${file}: ${(err as Error).message.split('\n')[0]}`);
      continue;
    }
    binding.setErrorClass(BpfError);
    return binding;
  }
  const e = new Error(`native addon not found or not loadable; run tools/setup (or npm run build:native). Tried:\n${errors.join('\n')}`);
  (e as Error & { code: string }).code = 'SSLWALL_E_NATIVE_MISSING';
  throw e;
}

let cached: NativeAddon | undefined;
/** The addon, loaded on first use so commands that never touch BPF (--help, config checks) work without it. */
export function native(): NativeAddon {
  cached ??= loadAddon();
  return cached;
}
