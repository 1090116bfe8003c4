// Port roles as the filter reads them (agent/apply.ts): one byte per port, the negotiation the
// port allows in the low bits and the bypass bit on top; and the ports a new config changes.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { changedPorts, portRoles } from '../../agent/apply.js';
import { SslwallPortRoleBits, SslwallProto } from '../../agent/generated/shared.js';
import { ConfigSchema } from '../../schemas/config.js';

const { SSLWALL_ROLE_BYPASS: BYPASS, SSLWALL_ROLE_PROTO_MASK: MASK } = SslwallPortRoleBits;
const config = (c: object) => ConfigSchema.parse({ mode: 'active', ...c });

function roleMap(roles: Buffer): Record<number, number> {
  const out: Record<number, number> = {};
  roles.forEach((r, port) => {
    if (r) out[port] = r;
  });
  return out;
}

test('every port has a byte; a config without ports gives none a role', () => {
  const roles = portRoles(config({}));
  assert.equal(roles.length, 65536);
  assert.deepEqual(roleMap(roles), {});
});

test('each STARTTLS protocol and CONNECT mark their ports, bypass adds its bit', () => {
  const roles = portRoles(
    config({
      starttls: { smtp: [25, 587], imap: [143], pop3: [110], ftp: [21], postgres: [5432], mysql: [3306] },
      connect: { ports: [3128, 8080] },
      bypass: { ports: [22, 587, 8080, 65535] },
    }),
  );
  assert.deepEqual(roleMap(roles), {
    21: SslwallProto.SSLWALL_PROTO_FTP,
    22: BYPASS,
    25: SslwallProto.SSLWALL_PROTO_SMTP,
    110: SslwallProto.SSLWALL_PROTO_POP3,
    143: SslwallProto.SSLWALL_PROTO_IMAP,
    587: SslwallProto.SSLWALL_PROTO_SMTP | BYPASS,
    3128: SslwallProto.SSLWALL_PROTO_CONNECT,
    3306: SslwallProto.SSLWALL_PROTO_MYSQL,
    5432: SslwallProto.SSLWALL_PROTO_POSTGRES,
    8080: SslwallProto.SSLWALL_PROTO_CONNECT | BYPASS,
    65535: BYPASS,
  });
  assert.equal(roles[587]! & MASK, SslwallProto.SSLWALL_PROTO_SMTP, 'the bypass bit leaves the protocol readable');
});

test('changed ports: all on the first write, then only those whose role differs', () => {
  const a = portRoles(config({ starttls: { smtp: [25] }, bypass: { ports: [22] } }));
  assert.equal(changedPorts(null, a).length, 65536);
  assert.deepEqual(changedPorts(a, a), []);
  const b = portRoles(config({ starttls: { smtp: [25], imap: [143] }, bypass: { ports: [22, 25] } }));
  assert.deepEqual(changedPorts(a, b), [25, 143], 'smtp 25 gained bypass, 143 is new');
  assert.deepEqual(changedPorts(b, a), [25, 143], 'and back');
  const c = portRoles(config({ connect: { ports: [25] } }));
  assert.deepEqual(changedPorts(a, c), [22, 25], 'bypass dropped from 22, 25 moved from smtp to connect');
});
