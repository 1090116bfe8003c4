// Everything the tests, benchmarks and `sslwall up` need from the machine, with the Debian
// package that provides it: the one list tools/setup installs from (a unit test keeps the two in
// step) and `tools/check-prerequisites` checks before CI runs a single test, so a missing
// package is one clear line at the start, not a failure deep in the run.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

interface Program {
  path: string;
  package: string;
}

/** The programs the lab starts, by the name the lab uses (Debian locations). */
export const PROGRAMS = {
  ip: { path: '/usr/sbin/ip', package: 'iproute2' },
  ss: { path: '/usr/bin/ss', package: 'iproute2' },
  nstat: { path: '/usr/bin/nstat', package: 'iproute2' },
  nsenter: { path: '/usr/bin/nsenter', package: 'util-linux' },
  setpriv: { path: '/usr/bin/setpriv', package: 'util-linux' },
  mount: { path: '/usr/bin/mount', package: 'mount' },
  umount: { path: '/usr/bin/umount', package: 'mount' },
  openssl: { path: '/usr/bin/openssl', package: 'openssl' },
  nginx: { path: '/usr/sbin/nginx', package: 'nginx-light' },
  squid: { path: '/usr/sbin/squid', package: 'squid' },
  sshd: { path: '/usr/sbin/sshd', package: 'openssh-server' },
  ssh: { path: '/usr/bin/ssh', package: 'openssh-client' },
  'ssh-keygen': { path: '/usr/bin/ssh-keygen', package: 'openssh-client' },
  curl: { path: '/usr/bin/curl', package: 'curl' },
  iperf3: { path: '/usr/bin/iperf3', package: 'iperf3' },
  swaks: { path: '/usr/bin/swaks', package: 'swaks' },
  socat: { path: '/usr/bin/socat', package: 'socat' },
  psql: { path: '/usr/bin/psql', package: 'postgresql-client-15' },
  postgres: { path: '/usr/lib/postgresql/15/bin/postgres', package: 'postgresql-15' },
  initdb: { path: '/usr/lib/postgresql/15/bin/initdb', package: 'postgresql-15' },
  // Debian's python3, not a pyenv shim: aiosmtpd comes from the python3-aiosmtpd package.
  stunnel4: { path: '/usr/bin/stunnel4', package: 'stunnel4' },
  tcpdump: { path: '/usr/bin/tcpdump', package: 'tcpdump' },
  mariadbd: { path: '/usr/sbin/mariadbd', package: 'mariadb-server' },
  'mariadb-install-db': { path: '/usr/bin/mariadb-install-db', package: 'mariadb-server' },
  mariadb: { path: '/usr/bin/mariadb', package: 'mariadb-client' },
  'redis-server': { path: '/usr/bin/redis-server', package: 'redis-server' },
  'redis-cli': { path: '/usr/bin/redis-cli', package: 'redis-tools' },
  python3: { path: '/usr/bin/python3', package: 'python3' },
  perl: { path: '/usr/bin/perl', package: 'perl' },
  etcd: { path: '/usr/bin/etcd', package: 'etcd-server' },
  etcdctl: { path: '/usr/bin/etcdctl', package: 'etcd-client' },
  // The alarm end-to-end test and bench (tools/lab/prometheus.ts).
  prometheus: { path: '/usr/bin/prometheus', package: 'prometheus' },
  // Checks and unit-tests the shipped alert rules and the Grafana dashboard's queries.
  promtool: { path: '/usr/bin/promtool', package: 'prometheus' },
  alertmanager: { path: '/usr/bin/prometheus-alertmanager', package: 'prometheus-alertmanager' },
  // The dashboard's browser tests (test/integration/dashboard.test.ts), driven by playwright-core.
  chromium: { path: '/usr/bin/chromium', package: 'chromium' },
  // Building the BPF objects and the addon (tools/setup, and the native tests' fixture object).
  clang: { path: '/usr/bin/clang', package: 'clang' },
  'llvm-strip': { path: '/usr/bin/llvm-strip', package: 'llvm' },
  bpftool: { path: '/usr/sbin/bpftool', package: 'bpftool' },
  make: { path: '/usr/bin/make', package: 'make' },
  'g++': { path: '/usr/bin/g++', package: 'g++' },
  'pkg-config': { path: '/usr/bin/pkg-config', package: 'pkg-config' },
  // tools/package and test/package: the .deb's man pages, Depends and stripped binaries, the new
  // Debian root it is installed into, and lintian's verdict on it.
  help2man: { path: '/usr/bin/help2man', package: 'help2man' },
  'dpkg-shlibdeps': { path: '/usr/bin/dpkg-shlibdeps', package: 'dpkg-dev' },
  strip: { path: '/usr/bin/strip', package: 'binutils' },
  debootstrap: { path: '/usr/sbin/debootstrap', package: 'debootstrap' },
  lintian: { path: '/usr/bin/lintian', package: 'lintian' },
} as const satisfies Record<string, Program>;

export type ProgramName = keyof typeof PROGRAMS;

/** Absolute paths of the programs, by name. */
export const BIN = Object.fromEntries(Object.entries(PROGRAMS).map(([k, v]) => [k, v.path])) as { [K in ProgramName]: (typeof PROGRAMS)[K]['path'] };

/** Script-language modules the test peers load, which Debian packages separately. */
export const MODULES = [
  { lang: 'python3', module: 'aiosmtpd', package: 'python3-aiosmtpd', for: 'the SMTP peer (STARTTLS tests)' },
  { lang: 'perl', module: 'Net::SSLeay', package: 'libnet-ssleay-perl', for: 'swaks --tls' },
  // swaks only Recommends it, and setup installs without Recommends: swaks over IPv6 needs it.
  { lang: 'perl', module: 'IO::Socket::INET6', package: 'libio-socket-inet6-perl', for: 'swaks over IPv6' },
] as const;

/** Header files the build needs, by the package that ships them. */
export const HEADERS = [
  { path: '/usr/include/bpf/libbpf.h', package: 'libbpf-dev' },
  { path: '/usr/include/libelf.h', package: 'libelf-dev' },
  { path: '/usr/include/zlib.h', package: 'zlib1g-dev' },
] as const;

export interface Missing {
  what: string;
  package: string;
}

function executable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function moduleLoads(lang: 'python3' | 'perl', module: string): boolean {
  const args = lang === 'perl' ? [`-M${module}`, '-e', '1'] : ['-c', `import ${module}`];
  try {
    execFileSync(PROGRAMS[lang].path, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Every prerequisite this machine lacks. */
export function missingPrerequisites(): Missing[] {
  const missing: Missing[] = [];
  for (const [name, p] of Object.entries(PROGRAMS)) if (!executable(p.path)) missing.push({ what: `${name} (${p.path})`, package: p.package });
  for (const h of HEADERS) if (!fs.existsSync(h.path)) missing.push({ what: h.path, package: h.package });
  for (const m of MODULES) if (!moduleLoads(m.lang, m.module)) missing.push({ what: `${m.lang} module ${m.module}, for ${m.for}`, package: m.package });
  return missing;
}

/** Every Debian package the list names (tools/setup must install each). */
export function prerequisitePackages(): string[] {
  return [...new Set([...Object.values(PROGRAMS).map((p) => p.package), ...HEADERS.map((h) => h.package), ...MODULES.map((m) => m.package)])].sort();
}
