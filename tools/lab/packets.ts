// Packet builder for classifier tests (the PKTGEN step): Ethernet + IPv4/IPv6 (optional
// extension headers) + TCP with flags, sequence number and payload. Checksums are left zero:
// the classifier does not verify them, and BPF_PROG_TEST_RUN does not either.
import net from 'node:net';

export const SYN = 0x02,
  ACK = 0x10,
  PSH = 0x08,
  RST = 0x04,
  FIN = 0x01;

export interface Endpoint {
  addr: string;
  port: number;
}

export interface PacketSpec {
  src: Endpoint;
  dst: Endpoint;
  flags?: number;
  seq?: number;
  /** Acknowledgment number (default 1). */
  ack?: number;
  payload?: Buffer | string;
  /** IPv6 only: extension headers before TCP, by next-header number (0 hop-by-hop, 43 routing, 60 dest opts, 44 fragment). */
  ext?: number[];
  /** IPv6 fragment header offset in 8-byte units (with ext containing 44). */
  fragOffset?: number;
  /** IPv4 fragment offset in 8-byte units. */
  ipv4FragOffset?: number;
  /** The more-fragments flag (IPv4 MF, or M in the IPv6 fragment header). */
  moreFragments?: boolean;
  /** IPv4 total length / IPv6 payload length as written (0: BIG TCP, a jumbogram); default: the true length. */
  ipLength?: number;
  /** Bytes of each IPv6 extension header (a multiple of 8, default 8; the fragment header is always 8). */
  extLen?: number;
}

function ipv6Bytes(addr: string): Buffer {
  const out = Buffer.alloc(16);
  const [head, tail] = addr.includes('::') ? addr.split('::') : [addr, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  for (const [i, g] of groups.entries()) out.writeUInt16BE(parseInt(g || '0', 16), i * 2);
  return out;
}

function ipv4Bytes(addr: string): Buffer {
  return Buffer.from(addr.split('.').map(Number));
}

export function tcpHeader(spec: PacketSpec, payloadLen: number): Buffer {
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(spec.src.port, 0);
  tcp.writeUInt16BE(spec.dst.port, 2);
  tcp.writeUInt32BE((spec.seq ?? 1000) >>> 0, 4);
  tcp.writeUInt32BE((spec.ack ?? 1) >>> 0, 8);
  tcp[12] = 5 << 4;
  tcp[13] = spec.flags ?? ACK | PSH;
  tcp.writeUInt16BE(65535, 14);
  void payloadLen;
  return tcp;
}

export function packet(spec: PacketSpec): Buffer {
  const payload = typeof spec.payload === 'string' ? Buffer.from(spec.payload, 'latin1') : (spec.payload ?? Buffer.alloc(0));
  const tcp = Buffer.concat([tcpHeader(spec, payload.length), payload]);
  const v6 = net.isIPv6(spec.src.addr);
  const eth = Buffer.alloc(14);
  eth.set([2, 0, 0, 0, 0, 2], 0);
  eth.set([2, 0, 0, 0, 0, 1], 6);
  eth.writeUInt16BE(v6 ? 0x86dd : 0x0800, 12);
  if (!v6) {
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(spec.ipLength ?? 20 + tcp.length, 2);
    ip.writeUInt16BE(((spec.ipv4FragOffset ?? 0) & 0x1fff) | (spec.moreFragments ? 0x2000 : 0), 6);
    ip[8] = 64;
    ip[9] = 6;
    ipv4Bytes(spec.src.addr).copy(ip, 12);
    ipv4Bytes(spec.dst.addr).copy(ip, 16);
    return Buffer.concat([eth, ip, tcp]);
  }
  const exts: Buffer[] = [];
  const chain = [...(spec.ext ?? []), 6];
  for (let i = 0; i < chain.length - 1; i++) {
    const e = Buffer.alloc(chain[i] === 44 ? 8 : (spec.extLen ?? 8));
    e[0] = chain[i + 1]!;
    if (chain[i] === 44) e.writeUInt16BE((((spec.fragOffset ?? 0) << 3) & 0xfff8) | (spec.moreFragments ? 1 : 0), 2);
    else e[1] = e.length / 8 - 1;
    exts.push(e);
  }
  const extBuf = Buffer.concat(exts);
  const ip6 = Buffer.alloc(40);
  ip6[0] = 0x60;
  ip6.writeUInt16BE(spec.ipLength ?? extBuf.length + tcp.length, 4);
  ip6[6] = chain[0]!;
  ip6[7] = 64;
  ipv6Bytes(spec.src.addr).copy(ip6, 8);
  ipv6Bytes(spec.dst.addr).copy(ip6, 24);
  return Buffer.concat([eth, ip6, extBuf, tcp]);
}

/**
 * A TLS handshake record holding one hello: record header, handshake header (type, 24-bit
 * length filling the record) and legacy_version 3.3, then filler: what the classifier judges
 * of a hello. hsLen overrides the handshake length (a header that does not fit its record).
 */
export function tlsHello(type: 'client' | 'server', bodyLen = 200, version = 0x0301, hsLen = bodyLen - 4): Buffer {
  const b = Buffer.alloc(5 + bodyLen);
  b[0] = 22;
  b.writeUInt16BE(version, 1);
  b.writeUInt16BE(bodyLen, 3);
  b[5] = type === 'client' ? 1 : 2;
  b.writeUIntBE(hsLen, 6, 3);
  b.writeUInt16BE(0x0303, 9);
  return b;
}

export function tlsAppData(len = 64): Buffer {
  const b = Buffer.alloc(5 + len, 0xab);
  b[0] = 23;
  b.writeUInt16BE(0x0303, 1);
  b.writeUInt16BE(len, 3);
  return b;
}

/** A conversation on one flow: tracks sequence numbers per direction the way a TCP stack would. */
export class Conversation {
  private cseq = 1000;
  private sseq = 5000;
  constructor(
    readonly client: Endpoint,
    readonly server: Endpoint,
  ) {}

  syn(payload?: Buffer | string): Buffer {
    const p = packet({ src: this.client, dst: this.server, flags: SYN, seq: this.cseq, payload });
    this.cseq += 1 + (payload ? Buffer.from(payload).length : 0);
    return p;
  }
  synAck(): Buffer {
    const p = packet({ src: this.server, dst: this.client, flags: SYN | ACK, seq: this.sseq, ack: this.cseq });
    this.sseq += 1;
    return p;
  }
  /** The client's ACK that completes the handshake (acknowledges the SYN-ACK). */
  ackFromClient(): Buffer {
    return packet({ src: this.client, dst: this.server, flags: ACK, seq: this.cseq, ack: this.sseq });
  }
  fromClient(payload: Buffer | string, flags = ACK | PSH): Buffer {
    const p = packet({ src: this.client, dst: this.server, flags, seq: this.cseq, ack: this.sseq, payload });
    this.cseq += Buffer.from(payload).length;
    return p;
  }
  fromServer(payload: Buffer | string, flags = ACK | PSH): Buffer {
    const p = packet({ src: this.server, dst: this.client, flags, seq: this.sseq, ack: this.cseq, payload });
    this.sseq += Buffer.from(payload).length;
    return p;
  }
  /** Next sequence number of each side (what its stack would send next). */
  get clientSeq(): number {
    return this.cseq;
  }
  get serverSeq(): number {
    return this.sseq;
  }
  /** A client segment at any sequence number, leaving the conversation's own as it was. */
  clientAt(seq: number, payload: Buffer | string): Buffer {
    return packet({ src: this.client, dst: this.server, flags: ACK | PSH, seq, payload });
  }
  serverAt(seq: number, payload: Buffer | string): Buffer {
    return packet({ src: this.server, dst: this.client, flags: ACK | PSH, seq, payload });
  }
  /** The last client segment again, same sequence number. */
  retransmitClient(payload: Buffer | string): Buffer {
    return packet({ src: this.client, dst: this.server, flags: ACK | PSH, seq: this.cseq - Buffer.from(payload).length, ack: this.sseq, payload });
  }
  rstFromClient(): Buffer {
    return packet({ src: this.client, dst: this.server, flags: RST | ACK, seq: this.cseq });
  }
}
