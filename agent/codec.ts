// Encoding and decoding of the structs in bpf/shared.h, driven by the layouts generated from
// the object's BTF (agent/generated/shared.ts). Nothing here knows an offset by heart.
import net from 'node:net';
import { Defines, layouts, SslwallClass, type SslwallFlowKey, SslwallProto, SslwallVerdict, type StructLayout } from './generated/shared.js';

export function decode<T>(structName: string, buf: Buffer): T {
  const layout = layoutOf(structName);
  const out: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(layout.fields)) {
    const at = f.offset;
    switch (f.kind) {
      case 'uint':
        out[name] = f.size === 8 ? buf.readBigUInt64LE(at) : buf.readUIntLE(at, f.size);
        break;
      case 'bytes':
        out[name] = Buffer.from(buf.subarray(at, at + f.size));
        break;
      case 'chars': {
        const raw = buf.subarray(at, at + f.size);
        const nul = raw.indexOf(0);
        out[name] = raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8');
        break;
      }
      case 'uints':
        out[name] = Array.from({ length: f.count! }, (_, i) => buf.readUIntLE(at + i * f.elemSize!, f.elemSize!));
        break;
      case 'struct':
        out[name] = decode(f.struct!, buf.subarray(at, at + f.size));
        break;
    }
  }
  return out as T;
}

export function encode<T extends object>(structName: string, value: Partial<T>): Buffer {
  const layout = layoutOf(structName);
  const buf = Buffer.alloc(layout.size);
  for (const [name, f] of Object.entries(layout.fields)) {
    const v = (value as Record<string, unknown>)[name];
    if (v === undefined) continue;
    const at = f.offset;
    switch (f.kind) {
      case 'uint':
        if (f.size === 8) buf.writeBigUInt64LE(BigInt(v as bigint | number), at);
        else buf.writeUIntLE(Number(v), at, f.size);
        break;
      case 'bytes':
        (v as Buffer).copy(buf, at, 0, f.size);
        break;
      case 'chars':
        buf.write(String(v).slice(0, f.size - 1), at, 'utf8');
        break;
      case 'uints':
        for (const [i, n] of (v as number[]).entries()) buf.writeUIntLE(n, at + i * f.elemSize!, f.elemSize!);
        break;
      case 'struct':
        encode(f.struct!, v as object).copy(buf, at);
        break;
    }
  }
  return buf;
}

/** A u32 map key or value, little-endian as the kernel's on this host. */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

export function sizeOf(structName: string): number {
  return layoutOf(structName).size;
}

/** Where a one-byte field of a struct sits: for code that reads or patches that byte alone. */
export function byteOffset(structName: string, field: string): number {
  const f = layoutOf(structName).fields[field];
  if (f?.kind !== 'uint' || f.size !== 1) throw new Error(`${structName}.${field} is not a one-byte field`);
  return f.offset;
}

function layoutOf(name: string): StructLayout {
  const l = layouts[name];
  if (!l) throw new Error(`no layout for struct ${name} in agent/generated/shared.ts`);
  return l;
}

export type Family = 'ipv4' | 'ipv6';

export function familyName(family: number): Family {
  return family === Defines.SSLWALL_FAMILY_IPV6 ? 'ipv6' : 'ipv4';
}

/** Address bytes as text: 4 leading bytes for IPv4, 16 for IPv6 (compressed form). */
export function addrToString(bytes: Buffer, family: number): string {
  if (family !== Defines.SSLWALL_FAMILY_IPV6) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1,
    bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** Address text to the 16 bytes the maps use (IPv4 in the first 4). */
export function addrToBytes(addr: string): { family: number; bytes: Buffer } {
  const bytes = Buffer.alloc(16);
  if (net.isIPv4(addr)) {
    for (const [i, o] of addr.split('.').entries()) bytes[i] = Number(o);
    return { family: Defines.SSLWALL_FAMILY_IPV4, bytes };
  }
  if (!net.isIPv6(addr)) throw new Error(`not an IP address: ${addr}`);
  // Expand "a::b" and a trailing dotted quad ("::ffff:192.0.2.1") into 8 groups.
  let text = addr;
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (quad) {
    const o = quad[1]!.split('.').map(Number);
    text = `${text.slice(0, quad.index) + ((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  for (const [i, g] of groups.entries()) bytes.writeUInt16BE(parseInt(g, 16), i * 2);
  return { family: Defines.SSLWALL_FAMILY_IPV6, bytes };
}

export const classNames: Record<number, string> = {
  [SslwallClass.SSLWALL_CLASS_PENDING]: 'pending',
  [SslwallClass.SSLWALL_CLASS_TLS]: 'tls',
  [SslwallClass.SSLWALL_CLASS_STARTTLS]: 'starttls',
  [SslwallClass.SSLWALL_CLASS_CONNECT]: 'connect',
  [SslwallClass.SSLWALL_CLASS_BYPASS]: 'bypass',
  [SslwallClass.SSLWALL_CLASS_PLAINTEXT]: 'plaintext',
  [SslwallClass.SSLWALL_CLASS_MIDSTREAM_UNKNOWN]: 'midstream_unknown',
};

export const verdictNames: Record<number, string> = {
  [SslwallVerdict.SSLWALL_VERDICT_ALLOWED]: 'allowed',
  [SslwallVerdict.SSLWALL_VERDICT_REPORTED]: 'reported',
  [SslwallVerdict.SSLWALL_VERDICT_BLOCKED]: 'blocked',
};

export const protoNames: Record<number, string> = {
  [SslwallProto.SSLWALL_PROTO_NONE]: 'none',
  [SslwallProto.SSLWALL_PROTO_SMTP]: 'smtp',
  [SslwallProto.SSLWALL_PROTO_IMAP]: 'imap',
  [SslwallProto.SSLWALL_PROTO_POP3]: 'pop3',
  [SslwallProto.SSLWALL_PROTO_FTP]: 'ftp',
  [SslwallProto.SSLWALL_PROTO_POSTGRES]: 'postgres',
  [SslwallProto.SSLWALL_PROTO_MYSQL]: 'mysql',
  [SslwallProto.SSLWALL_PROTO_CONNECT]: 'connect',
};

/** Client and server endpoints of a flow key, given which side is the client. */
export function endpoints(key: SslwallFlowKey, clientIsLo: boolean) {
  const lo = { addr: addrToString(key.addr_lo, key.family), port: key.port_lo };
  const hi = { addr: addrToString(key.addr_hi, key.family), port: key.port_hi };
  const [s, d] = clientIsLo ? [lo, hi] : [hi, lo];
  return { family: familyName(key.family), saddr: s.addr, sport: s.port, daddr: d.addr, dport: d.port };
}
