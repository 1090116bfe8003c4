// The entry point the agent calls: starts the terminator (on ttls.port) and the proxy (on
// loopback) for a config with a `ttls` member, applies config changes without breaking open
// wrapped connections, and stops the listeners. Nothing here runs a timer while no connection is
// wrapped: listeners and file watches wait in the kernel; a pooled session's idle timer exists
// only while that session is idle.
import type net from 'node:net';
import type { Logger } from 'pino';
import type client from 'prom-client';
import type { Config } from '../../schemas/config.js';
import type { TtlsCerts } from './certs.js';
import { Pool } from './pool.js';
import { type Destination, TtlsProxy } from './proxy.js';
import { createTelemetry } from './telemetry.js';
import { Terminator } from './terminator.js';
import { DEFAULT_LIMITS, type PoolLimits } from './wire.js';

/** Where the proxy listens on loopback unless told otherwise (the kernel side redirects here). */
export const DEFAULT_PROXY_PORT = 15001;

export interface TtlsOptions {
  /** The whole agent config: `ttls` for the port, `mode` for what an unwrappable connection does. */
  config: Config & { ttls: NonNullable<Config['ttls']> };
  certs: TtlsCerts;
  log: Logger;
  registry: client.Registry;
  originalDestination(socket: net.Socket): Destination | null;
  onTlsDestination(address: string, port: number): void;
  proxyPort?: number;
  proxyHosts?: string[];
  /** Default "::" (all addresses). */
  terminatorHost?: string;
  /** Run the terminator (default true); false for a host that only wraps outgoing connections. */
  terminator?: boolean;
  /** Offer HTTP/2 multiplexing on the terminator (default true). */
  multiplex?: boolean;
  limits?: Partial<PoolLimits>;
  /** A terminator that does not complete the TLS handshake in this long counts as absent. Default 1000. */
  connectTimeoutMs?: number;
}

export interface Ttls {
  update(config: TtlsOptions['config']): Promise<void>;
  stop(): void;
  proxyAddresses(): net.AddressInfo[];
  /** undefined without a terminator. */
  terminatorPort(): number | undefined;
  /** Pooled TLS sessions open now. */
  poolSize(): number;
}

export async function startTtls(opts: TtlsOptions): Promise<Ttls> {
  let config = opts.config;
  const log = opts.log.child({ component: 'ttls' });
  const tel = createTelemetry(log, opts.registry);
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const pool = new Pool(opts.certs, tel, limits, opts.connectTimeoutMs ?? 1000);
  const onCerts = () => pool.drainAll();
  opts.certs.on('change', onCerts);
  const terminator =
    opts.terminator === false
      ? undefined
      : new Terminator({ port: config.ttls.port, certs: opts.certs, tel, host: opts.terminatorHost, multiplex: opts.multiplex, limits });
  const proxy = new TtlsProxy({
    hosts: opts.proxyHosts,
    port: opts.proxyPort ?? DEFAULT_PROXY_PORT,
    pool,
    tel,
    remotePort: () => config.ttls.port,
    mode: () => config.mode,
    originalDestination: opts.originalDestination,
    onTlsDestination: opts.onTlsDestination,
  });
  try {
    await terminator?.listen();
    await proxy.listen();
  } catch (e) {
    terminator?.close();
    proxy.close();
    opts.certs.off('change', onCerts);
    throw e;
  }
  log.info({ event: 'ttls_started', port: config.ttls.port, proxy: proxy.addresses().map((a) => `${a.address}:${a.port}`) });
  return {
    async update(next) {
      config = next;
      await terminator?.setPort(next.ttls.port);
      proxy.forgetTlsDestinations();
    },
    stop() {
      opts.certs.off('change', onCerts);
      proxy.close();
      terminator?.close();
      log.info({ event: 'ttls_stopped' });
    },
    proxyAddresses: () => proxy.addresses(),
    terminatorPort: () => terminator?.port,
    poolSize: () => pool.size,
  };
}

export { type CertFiles, type CertSet, readCertSet, TtlsCerts } from './certs.js';
export type { Destination } from './proxy.js';
