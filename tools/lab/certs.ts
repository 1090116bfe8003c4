// A throwaway CA and one server certificate for the test servers, made with the openssl CLI
// (the same tool an operator would use, and no npm dependency). EC P-256: fast to generate and
// accepted by nginx, postgres, aiosmtpd, curl and swaks alike.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BIN, requireBins, runOk } from './proc.js';

export interface Certs {
  dir: string;
  caCert: string;
  caKey: string;
  /** Server certificate (leaf only; clients trust caCert). */
  cert: string;
  key: string;
  /** Leaf followed by the CA, for servers that should send the whole chain. */
  chain: string;
}

export interface CertOptions {
  /** IP SANs, e.g. the server's IPv4 and IPv6 addresses. */
  ips: string[];
  /** DNS SANs; the first is also the subject CN. Default ["server.test"]. */
  dnsNames?: string[];
  days?: number;
}

/** Make a CA and a server cert/key (SAN: the given IPs and DNS names) in `dir`. */
export async function makeCerts(dir: string, opts: CertOptions): Promise<Certs> {
  requireBins(['openssl']);
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string) => path.join(dir, n);
  const dns = opts.dnsNames ?? ['server.test'];
  const days = String(opts.days ?? 2);
  const ossl = (...args: string[]) => runOk(BIN.openssl, args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

  await ossl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.crt'),
    '-days',
    days,
    '-subj',
    '/CN=sslwall test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  await ossl('req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', `/CN=${dns[0]}`);
  const san = [...opts.ips.map((ip) => `IP:${ip}`), ...dns.map((d) => `DNS:${d}`)].join(',');
  fs.writeFileSync(
    f('server.ext'),
    `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`,
  );
  await ossl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.crt'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.crt'),
    '-days',
    days,
    '-extfile',
    f('server.ext'),
  );
  fs.writeFileSync(f('chain.crt'), fs.readFileSync(f('server.crt'), 'utf8') + fs.readFileSync(f('ca.crt'), 'utf8'));
  for (const k of ['ca.key', 'server.key']) fs.chmodSync(f(k), 0o600);
  return { dir, caCert: f('ca.crt'), caKey: f('ca.key'), cert: f('server.crt'), key: f('server.key'), chain: f('chain.crt') };
}

/**
 * A copy of the server key and cert that `user` owns with mode 0600 — postgres refuses a key
 * readable by others, and a server that drops privileges must still read it.
 */
export function copyKeyPairFor(certs: Certs, dir: string, uid: number, gid: number): { cert: string; key: string } {
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  fs.copyFileSync(certs.chain, cert);
  fs.copyFileSync(certs.key, key);
  for (const p of [cert, key]) {
    fs.chownSync(p, uid, gid);
    fs.chmodSync(p, 0o600);
  }
  return { cert, key };
}

export interface Ca {
  caCert: string;
  caKey: string;
}

/** A CA of its own in `dir` (e.g. a second fleet CA whose certificates another fleet refuses). */
export async function makeCa(dir: string, name: string, days = 2): Promise<Ca> {
  requireBins(['openssl']);
  fs.mkdirSync(dir, { recursive: true });
  const caCert = path.join(dir, `${name}.crt`);
  const caKey = path.join(dir, `${name}.key`);
  await runOk(
    BIN.openssl,
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      caKey,
      '-out',
      caCert,
      '-days',
      String(days),
      '-subj',
      `/CN=${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    { cwd: dir },
  );
  fs.chmodSync(caKey, 0o600);
  return { caCert, caKey };
}

export interface HostCert {
  cert: string;
  key: string;
  /** Serial number as node's X509Certificate reports it (upper-case hex). */
  serial: string;
}

/**
 * A host certificate as TTLS uses it: one certificate for both ends of the mutual TLS (serverAuth
 * and clientAuth), its addresses as IP SANs. Files <name>.crt/.key in `dir`; an existing pair of
 * that name is overwritten (written beside and renamed over, as a rotation tool would).
 */
export async function makeHostCert(dir: string, ca: Ca, name: string, ips: string[], days = 2): Promise<HostCert> {
  requireBins(['openssl']);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(dir, `.${name}-`));
  const f = (n: string) => path.join(tmp, n);
  try {
    await runOk(
      BIN.openssl,
      ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('host.key'), '-out', f('host.csr'), '-subj', `/CN=${name}`],
      { cwd: tmp },
    );
    const san = ips.length ? `subjectAltName=${ips.map((ip) => `IP:${ip}`).join(',')}\n` : '';
    fs.writeFileSync(
      f('host.ext'),
      `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n${san}`,
    );
    await runOk(
      BIN.openssl,
      [
        'x509',
        '-req',
        '-in',
        f('host.csr'),
        '-CA',
        ca.caCert,
        '-CAkey',
        ca.caKey,
        '-set_serial',
        `0x${crypto.randomBytes(8).toString('hex')}`,
        '-out',
        f('host.crt'),
        '-days',
        String(days),
        '-extfile',
        f('host.ext'),
      ],
      { cwd: tmp },
    );
    fs.chmodSync(f('host.key'), 0o600);
    const cert = path.join(dir, `${name}.crt`);
    const key = path.join(dir, `${name}.key`);
    fs.renameSync(f('host.key'), key);
    fs.renameSync(f('host.crt'), cert);
    return { cert, key, serial: new crypto.X509Certificate(fs.readFileSync(cert)).serialNumber };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
