// The host's TTLS certificate, key and the fleet CA (--ttls-cert/--ttls-key/--ttls-ca), re-read
// when a file changes so certificates rotate without a restart. The directories are watched
// (inotify, no timer while nothing changes) rather than the files: tools that rotate by writing
// a new file and renaming it over the old one replace the inode a file watch would be holding.
// A new set that does not load (unparsable, key not matching the certificate, certificate not
// issued by the CA) is refused with a log line and the previous set stays in force.

import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { SslwallError } from '../../schemas/errors.js';

export interface CertFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface CertSet {
  cert: string;
  key: string;
  ca: string;
  /** For tls.connect (client side): holds the CA too, so the server's chain is checked against it. */
  context: tls.SecureContext;
  /** Serial number of the host certificate (hex, as openssl prints it), for logs and tests. */
  serial: string;
  /** IP SANs of the host certificate. */
  ips: string[];
}

/** Changes are collected for this long before the files are read: writers touch them one by one. */
const DEBOUNCE_MS = 200;

/** Read and check one set of files; throws SSLWALL_E_TTLS_CERT saying which file and why. */
export function readCertSet(files: CertFiles): CertSet {
  const read = (what: keyof CertFiles) => {
    try {
      return fs.readFileSync(files[what], 'utf8');
    } catch (e) {
      throw new SslwallError('SSLWALL_E_TTLS_CERT', `cannot read --ttls-${what} ${files[what]}: ${(e as Error).message}`, { cause: e });
    }
  };
  const [cert, key, ca] = [read('cert'), read('key'), read('ca')];
  let leaf: X509Certificate;
  let caCert: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (e) {
    throw new SslwallError('SSLWALL_E_TTLS_CERT', `--ttls-cert ${files.cert} is not a PEM certificate: ${(e as Error).message}`, { cause: e });
  }
  try {
    caCert = new X509Certificate(ca);
  } catch (e) {
    throw new SslwallError('SSLWALL_E_TTLS_CERT', `--ttls-ca ${files.ca} is not a PEM certificate: ${(e as Error).message}`, { cause: e });
  }
  if (!leaf.checkIssued(caCert) || !leaf.verify(caCert.publicKey)) {
    throw new SslwallError(
      'SSLWALL_E_TTLS_CERT',
      `--ttls-cert ${files.cert} (${leaf.subject}) is not issued by the CA in --ttls-ca ${files.ca} (${caCert.subject}); peers would refuse it`,
    );
  }
  let context: tls.SecureContext;
  try {
    // Also checks that the key belongs to the certificate ("key values mismatch").
    context = tls.createSecureContext({ cert, key, ca });
  } catch (e) {
    throw new SslwallError('SSLWALL_E_TTLS_CERT', `--ttls-key ${files.key} does not load with --ttls-cert ${files.cert}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const ips = (leaf.subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('IP Address:'))
    .map((s) => s.slice('IP Address:'.length));
  return { cert, key, ca, context, serial: leaf.serialNumber, ips };
}

/** The current certificate set; 'change' fires after a new set loaded. */
export class TtlsCerts extends EventEmitter<{ change: [CertSet] }> {
  private set: CertSet;
  private timer: NodeJS.Timeout | undefined;
  private readonly watchers: fs.FSWatcher[];

  /** Loads the files (throws SSLWALL_E_TTLS_CERT if the first set is bad) and watches them. */
  constructor(
    readonly files: CertFiles,
    private readonly log: Logger,
  ) {
    super();
    this.set = readCertSet(files);
    const names = new Map<string, Set<string>>();
    for (const f of Object.values(files)) {
      const dir = path.dirname(path.resolve(f));
      names.set(dir, (names.get(dir) ?? new Set()).add(path.basename(f)));
    }
    this.watchers = [...names].map(([dir, base]) =>
      fs.watch(dir, { persistent: false }, (_type, name) => {
        // name is null on some filesystems: then any change in the folder counts.
        if (name !== null && !base.has(name.toString())) return;
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.reload(), DEBOUNCE_MS);
        this.timer.unref();
      }),
    );
  }

  get current(): CertSet {
    return this.set;
  }

  close(): void {
    clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
  }

  private reload(): void {
    this.timer = undefined;
    let next: CertSet;
    try {
      next = readCertSet(this.files);
    } catch (e) {
      this.log.error(
        { event: 'ttls_cert_refused', code: (e as SslwallError).code, err: (e as Error).message, serial: this.set.serial },
        'new TTLS certificate files refused; the previous ones stay in force',
      );
      return;
    }
    const cur = this.set;
    if (next.cert === cur.cert && next.key === cur.key && next.ca === cur.ca) return;
    this.log.info({ event: 'ttls_cert_loaded', serial: next.serial, previous: cur.serial, ips: next.ips });
    this.set = next;
    this.emit('change', next);
  }
}
