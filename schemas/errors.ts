// Errors the user sees carry a stable code (listed in docs/errors.md; a test keeps the two in
// step), a message that says what to do, and the cause.

export const ErrorCodes = {
  SSLWALL_E_USAGE: 'The command line is wrong; see --help.',
  SSLWALL_E_CONFIG_INVALID: 'A config document failed validation; the previous config stays in force.',
  SSLWALL_E_CONFIG_SIGNATURE: 'A document in etcd is unsigned or badly signed; the previous config stays in force.',
  SSLWALL_E_CONFIG_MISPLACED:
    "A signed document sits under another tier's or host's key than the one it was signed for (copied); it is refused and the previous config stays in force.",
  SSLWALL_E_CONFIG_REPLAY:
    'A signed document is older than one this agent has already applied (replayed); it is refused and the previous config stays in force.',
  SSLWALL_E_SIGNING_KEY: 'The ed25519 signing or verify key could not be read.',
  SSLWALL_E_CONFLICT: 'Someone else changed the tier document first (compare-and-swap failed); read it again and retry.',
  SSLWALL_E_NOT_LEADER: 'This engine replica is not the leader (or lost leadership); the write was refused.',
  SSLWALL_E_HEAD_INVALID: "A tier's head in etcd is not a valid tier document; write a new version over it (config set or revert).",
  SSLWALL_E_TOO_LARGE: 'The request body is over the engine API limit.',
  SSLWALL_E_NOT_FOUND: 'The tier, version or rollout asked for does not exist.',
  SSLWALL_E_ROLLOUT_STATE: 'The rollout is not in a state that allows this action.',
  SSLWALL_E_ETCD: 'etcd could not be reached or refused the request.',
  SSLWALL_E_ETCD_DENIED:
    "etcd (auth on) refused a read or write for this credential's roles; the message names the grant and the `sslwall etcd` command that provisions it.",
  SSLWALL_E_UNAUTHENTICATED: 'The engine API needs a bearer token it knows (Authorization: Bearer TOKEN; $SSLWALL_TOKEN or --token-file).',
  SSLWALL_E_FORBIDDEN: "The caller's role may not do this, or the request came from another site or under a host name the engine does not answer to.",
  SSLWALL_E_ENGINE: 'The engine API could not be reached or answered with an error.',
  SSLWALL_E_CONFIG_READ: 'The config file could not be read.',
  SSLWALL_E_BPF: 'A BPF operation failed (load, attach, map access); the message has the verifier log.',
  SSLWALL_E_BPFFS: 'The --bpffs folder is not on a BPF filesystem.',
  SSLWALL_E_NATIVE_MISSING: 'The native addon is not built.',
  SSLWALL_E_IFACE: 'A named interface does not exist in this network namespace.',
  SSLWALL_E_CGROUP: 'The cgroup v2 folder for bypassed processes is missing or unusable.',
  SSLWALL_E_NOT_INSTALLED: 'No pinned sslwall state was found under --bpffs.',
  SSLWALL_E_INTERNAL: 'A bug: please report it with the log line.',
  SSLWALL_E_TTLS_CERT: 'A TTLS certificate, key or CA file could not be read or does not fit the others; a running agent keeps the previous ones.',
  SSLWALL_E_KERNEL_FEATURE: 'The kernel lacks a feature sslwall needs.',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class SslwallError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SslwallError';
  }
}

/** Exit codes: 2 for anything the user must fix in what they gave us, 1 for the rest. */
export function exitCodeFor(err: unknown): number {
  const code = (err as { code?: string })?.code;
  return code === 'SSLWALL_E_USAGE' || code === 'SSLWALL_E_CONFIG_INVALID' || code === 'SSLWALL_E_CONFIG_READ' ? 2 : 1;
}
