// Typed surface of the native addon (native/src/*.cc): one function per libbpf operation, nothing
// more. Policy (what to pin where, when to replace) lives in agent/; this file only loads the addon
// and turns its errors into BpfError.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** A libbpf/kernel failure: the operation, the errno and, for loads, the verifier log. */
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

export interface ProgInfo { id: number; name: string; tag: string; type: number }
export interface LinkInfo { id: number; progId: number; type: number; ifindex?: number; attachType?: number }
export interface TestRunResult { retval: number; durationNs: number; dataOut: Buffer }

/** An opened (and, after load(), loaded) BPF object; owns its bpf_object. */
export interface BpfObject {
  /** Set a `const volatile` global in .rodata before load (value bytes are copied at its BTF offset). */
  setRodata(name: string, value: Buffer): void;
  /** Make map `name` use an existing map fd instead of creating one (adopting pinned state). */
  reuseMap(name: string, fd: number): void;
  /** Disable autoload of a program (e.g. a hook this kernel lacks). */
  setAutoload(progName: string, autoload: boolean): void;
  /** Load into the kernel; throws BpfError with the verifier log on rejection. */
  load(): void;
  progFd(name: string): number;
  mapFd(name: string): number;
  /** The map as this object defines it: type, key/value size, max entries. */
  mapDef(name: string): { type: number; keySize: number; valueSize: number; maxEntries: number };
  progNames(): string[];
  mapNames(): string[];
  /** Attach a tracing program by its section (tp_btf/, raw_tp/, tracepoint/, iter/ ...); returns an owned link fd. */
  attachTracing(progName: string): number;
  /** Attach an iter/ program; returns a link fd. */
  attachIter(progName: string): number;
  /** Attach a cgroup program (connect4, sock_ops, ...) to the cgroup folder fd with a link. */
  attachCgroup(progName: string, cgroupFd: number): number;
  close(): void;
}

export interface RingBufferPoller {
  /** Stop the polling thread; no callback runs after this returns. */
  close(): void;
}

export interface NativeAddon {
  openObject(file: string): BpfObject;
  /** bpf_obj_pin; the fd stays owned by the caller. */
  pin(fd: number, file: string): void;
  /** bpf_obj_get; returns a new fd the caller must close. */
  getPinned(file: string): number;
  closeFd(fd: number): void;
  /** Duplicate an fd (so a pinned object outlives the owning BpfObject). */
  dupFd(fd: number): number;
  progInfo(fd: number): ProgInfo;
  linkInfo(fd: number): LinkInfo;
  /** Every BPF link id on the system (all namespaces). */
  linkIds(): number[];
  /** A new fd for a program id; the caller closes it. */
  progFdById(id: number): number;
  /** A new fd for a link id; the caller closes it. */
  linkFdById(id: number): number;
  mapInfo(fd: number): { id: number; type: number; keySize: number; valueSize: number; maxEntries: number; name: string; btfId: number; btfKeyTypeId: number; btfValueTypeId: number };
  /** Number of possible CPUs (value size multiplier for per-CPU maps). */
  numPossibleCpus(): number;

  mapLookup(fd: number, key: Buffer): Buffer | null;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags?: number): void;
  mapDelete(fd: number, key: Buffer): boolean;
  /** Every [key, value] of a map (get_next_key + lookup), for hash/LRU/array maps. */
  mapDump(fd: number): Array<[Buffer, Buffer]>;
  /** bpf_map_update_batch: keys and values are concatenated fixed-size records. */
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number): void;

  /** tcx link (kernel ≥ 6.6): attach prog to ifindex; direction 'ingress' | 'egress'; returns link fd. */
  tcxAttach(progFd: number, ifindex: number, direction: 'ingress' | 'egress'): number;
  /** Classic clsact + cls_bpf (bpf_tc_hook_create/bpf_tc_attach) for kernels without tcx. Replaces in place when handle/priority match. */
  tcAttach(progFd: number, ifindex: number, direction: 'ingress' | 'egress', handle: number, priority: number): void;
  tcDetach(ifindex: number, direction: 'ingress' | 'egress', handle: number, priority: number): void;
  /** bpf_link_update: swap the program behind a link in place. */
  linkUpdate(linkFd: number, progFd: number): void;
  /** bpf_link_detach. */
  linkDetach(linkFd: number): void;
  /** Create an iterator from an iter link and read it to EOF; returns what the program wrote. */
  iterRun(linkFd: number): Buffer;

  /** Poll a BPF_MAP_TYPE_RINGBUF on a native thread; each record is handed to cb on the JS thread. */
  ringBufferPoll(mapFd: number, cb: (record: Buffer) => void): RingBufferPoller;

  testRun(progFd: number, data: Buffer, repeat: number): TestRunResult;
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
    try {
      return wrapErrors(require(file) as NativeAddon);
    } catch (err) {
      errors.push(`  ${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  const e = new Error(
    `native addon not found or not loadable; run tools/setup (or npm run build:native). Tried:\n${errors.join('\n')}`,
  );
  (e as Error & { code: string }).code = 'SSLWALL_E_NATIVE_MISSING';
  throw e;
}

// The C++ side throws plain Errors carrying op/errno/verifierLog properties; give them a class.
function toBpfError(err: unknown): unknown {
  const e = err as Error & { op?: string; errno?: number; verifierLog?: string };
  if (e && typeof e === 'object' && typeof e.op === 'string') {
    return new BpfError(e.message, e.op, e.errno ?? 0, e.verifierLog);
  }
  return err;
}

function wrapFn<T extends (...args: never[]) => unknown>(fn: T, self: unknown): T {
  return ((...args: never[]) => {
    try {
      const out = fn.apply(self, args);
      if (out && typeof out === 'object' && !Buffer.isBuffer(out) && !Array.isArray(out) && 'load' in (out as object)) {
        return wrapObject(out as BpfObject);
      }
      return out;
    } catch (err) {
      throw toBpfError(err);
    }
  }) as T;
}

function wrapObject(obj: BpfObject): BpfObject {
  return new Proxy(obj, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? wrapFn(v as (...a: never[]) => unknown, target) : v;
    },
  });
}

function wrapErrors(addon: NativeAddon): NativeAddon {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(addon)) out[k] = typeof v === 'function' ? wrapFn(v as (...a: never[]) => unknown, addon) : v;
  return out as unknown as NativeAddon;
}

let cached: NativeAddon | undefined;
/** The addon, loaded on first use so commands that never touch BPF (--help, config checks) work without it. */
export function native(): NativeAddon {
  cached ??= loadAddon();
  return cached;
}
