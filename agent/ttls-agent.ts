// Transparent TLS in the agent: the kernel side (agent/ttls-kernel.ts: connect() redirects in the
// agent's cgroup) and the proxy and terminator (agent/ttls/), following the config in force.
// Wrapping runs while the config has a `ttls` member and its mode is passive or active; without
// the certificate flags nothing is ever wrapped and no ttls program is loaded.
import path from 'node:path';
import type { Logger } from 'pino';
import type client from 'prom-client';
import type { Config } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';
import type { BypassCgroup } from './apply.js';
import { type CertFiles, DEFAULT_PROXY_PORT, startTtls, type Ttls, TtlsCerts } from './ttls/index.js';
import { TtlsKernel } from './ttls-kernel.js';

type Wrapping = Config & { ttls: NonNullable<Config['ttls']> };

function wraps(config: Config): config is Wrapping {
  return config.ttls !== undefined && config.mode !== 'off';
}

export class AgentTtls {
  private ttls: Ttls | null = null;
  private starting: Promise<void> = Promise.resolve();
  private mode: Config['mode'] = 'off';

  private constructor(
    private readonly kernel: TtlsKernel,
    private readonly certs: TtlsCerts,
    private readonly bypass: BypassCgroup & { path: string },
    private readonly registry: client.Registry,
    private readonly log: Logger,
  ) {}

  /** Load and attach the kernel side to the agent's cgroup folder (the bypass cgroup's parent); read the certificates. */
  static load(opts: { bpffs: string; bypass: (BypassCgroup & { path: string }) | null; certs: CertFiles; registry: client.Registry; log: Logger }): AgentTtls {
    if (!opts.bypass) {
      throw new SslwallError(
        'SSLWALL_E_CGROUP',
        'transparent TLS (--ttls-cert) redirects connect() in a cgroup v2 folder: mount cgroup2 or pass --cgroup DIR (the processes to wrap live under it)',
      );
    }
    const certs = new TtlsCerts(opts.certs, opts.log.child({ component: 'ttls' }));
    const kernel = TtlsKernel.load(opts.bpffs, path.dirname(opts.bypass.path), opts.log);
    return new AgentTtls(kernel, certs, opts.bypass, opts.registry, opts.log);
  }

  /** Follow a config now in force: start, update or stop wrapping. Serialised: one at a time. */
  apply(config: Config): Promise<void> {
    this.starting = this.starting
      .then(() => this.applyNow(config))
      .catch((err: Error) => {
        this.log.error({ event: 'ttls_failed', reason: 'apply', err: err.message }, 'transparent TLS could not follow the config; connections are not wrapped');
        this.disable();
      });
    return this.starting;
  }

  private async applyNow(config: Config): Promise<void> {
    this.mode = config.mode;
    if (!wraps(config)) {
      this.disable();
      this.ttls?.stop();
      this.ttls = null;
      return;
    }
    if (this.ttls) await this.ttls.update(config);
    else {
      this.ttls = await startTtls({
        config,
        certs: this.certs,
        log: this.log,
        registry: this.registry,
        proxyPort: DEFAULT_PROXY_PORT,
        originalDestination: (socket) => this.kernel.originalDestination(socket.remoteAddress ?? '', socket.remotePort ?? 0),
        onTlsDestination: (address, port) => this.kernel.markSpeaksTls(address, port),
      });
    }
    // The proxy listens before the kernel sends anything its way.
    this.kernel.apply({ ttls: config.ttls, proxyPort: DEFAULT_PROXY_PORT, agentTgid: process.pid, bypassCgroup: this.bypass });
  }

  private disable(): void {
    this.kernel.apply({ ttls: undefined, proxyPort: DEFAULT_PROXY_PORT, agentTgid: process.pid, bypassCgroup: this.bypass });
  }

  /**
   * The agent is stopping. Passive mode: new connections go direct again (nothing may break in
   * passive mode). Active mode: the redirect stays, so a new wrapped connect() fails at once
   * (nothing listens on the proxy port) instead of leaking plaintext; the next agent takes over.
   * Open wrapped connections end with this process either way.
   */
  async stop(): Promise<void> {
    await this.starting;
    if (this.mode !== 'active') this.disable();
    this.ttls?.stop();
    this.ttls = null;
    this.certs.close();
    this.kernel.close();
  }

  get wrappedFlows() {
    return this.kernel.wrappedFlows();
  }
}
