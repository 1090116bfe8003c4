// The config document of the agent (docs/config.md). Every config type in TypeScript is
// z.infer of a schema here; documents are parsed once, at the boundary (file, etcd, HTTP).

import net from 'node:net';
import { z } from 'zod';

const Port = z.number().int().min(1).max(65535);
const PortList = z.array(Port).max(1024);

/** "192.0.2.0/24" or "2001:db8::/32"; a bare address means a single host. */
export const Cidr = z.string().superRefine((value, ctx) => {
  const [addr, bits, extra] = value.split('/');
  const family = net.isIP(addr ?? '');
  const max = family === 4 ? 32 : 128;
  if (!family || extra !== undefined || (bits !== undefined && !/^\d{1,3}$/.test(bits)) || Number(bits ?? max) > max) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not an IPv4 or IPv6 CIDR such as 192.0.2.0/24 or 2001:db8::/32` });
  }
});

/** Where every host's TTLS terminator listens unless the config says otherwise (docs/ttls.md). */
export const DEFAULT_TTLS_PORT = 15443;

/**
 * Transparent TLS (docs/ttls.md): connect() calls from processes under the agent's cgroup to an
 * address in `cidrs` on a port in `ports` are carried inside mutually authenticated TLS to the
 * terminator on the destination host, which listens on `port`.
 */
export const TtlsSchema = z
  .strictObject({
    ports: PortList.min(1, 'list at least one port to wrap'),
    cidrs: z.array(Cidr).min(1, 'list at least one destination CIDR').max(4000),
    port: Port.default(DEFAULT_TTLS_PORT),
  })
  .superRefine((t, ctx) => {
    const i = t.ports.indexOf(t.port);
    if (i >= 0)
      ctx.addIssue({
        code: 'custom',
        path: ['ports', i],
        message: `port ${t.port} is ttls.port, where terminators listen; wrapping it would send the proxy's own TLS into the proxy`,
      });
  });
export type TtlsConfig = z.infer<typeof TtlsSchema>;

export const StarttlsProtocols = ['smtp', 'imap', 'pop3', 'ftp', 'postgres', 'mysql'] as const;
export type StarttlsProtocol = (typeof StarttlsProtocols)[number];

export const ConfigSchema = z
  .strictObject({
    mode: z.enum(['off', 'passive', 'active']),
    bypass: z.strictObject({ ports: PortList.default([]), cidrs: z.array(Cidr).max(4000).default([]) }).default({ ports: [], cidrs: [] }),
    starttls: z
      .strictObject({
        smtp: PortList.default([]),
        imap: PortList.default([]),
        pop3: PortList.default([]),
        ftp: PortList.default([]),
        postgres: PortList.default([]),
        mysql: PortList.default([]),
      })
      .default({ smtp: [], imap: [], pop3: [], ftp: [], postgres: [], mysql: [] }),
    connect: z.strictObject({ ports: PortList.default([]) }).default({ ports: [] }),
    ttls: TtlsSchema.optional(),
  })
  .superRefine((cfg, ctx) => {
    // One port, one negotiation: the filter keeps one protocol per server port.
    const owner = new Map<number, string>();
    const lists: Array<[string, number[]]> = [
      ...StarttlsProtocols.map((p) => [`starttls.${p}`, cfg.starttls[p]] as [string, number[]]),
      ['connect.ports', cfg.connect.ports],
    ];
    for (const [name, ports] of lists) {
      ports.forEach((port, i) => {
        const prev = owner.get(port);
        if (prev && prev !== name) {
          ctx.addIssue({
            code: 'custom',
            path: name.split('.').concat(String(i)),
            message: `port ${port} is already in ${prev}; a port can allow one negotiation only`,
          });
        }
        owner.set(port, name);
      });
    }
  });

export type Config = z.infer<typeof ConfigSchema>;
export type Mode = Config['mode'];

/** Readable one-line-per-issue text naming each bad field, e.g. `bypass.ports[1]: ...`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const path = i.path
        .map((p) => (typeof p === 'number' || /^\d+$/.test(String(p)) ? `[${String(p)}]` : `.${String(p)}`))
        .join('')
        .replace(/^\./, '');
      return `${path || '(document)'}: ${i.message}`;
    })
    .join('; ');
}
