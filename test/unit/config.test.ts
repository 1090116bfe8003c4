// The config document's schema: the fixed interface scripts depend on (docs/config.md).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseConfigText } from '../../agent/config-file.js';
import { ConfigSchema, describeIssues } from '../../schemas/config.js';

const FULL = {
  mode: 'active',
  bypass: { ports: [22, 179], cidrs: ['192.0.2.0/24', '2001:db8::/32'] },
  starttls: { smtp: [25, 587], imap: [143], pop3: [110], ftp: [21], postgres: [5432], mysql: [3306] },
  connect: { ports: [3128, 8080] },
};

test('the full example document of the issue is valid and round-trips unchanged', () => {
  assert.deepEqual(ConfigSchema.parse(FULL), FULL);
});

test('a document with only a mode gets empty lists for everything else', () => {
  const c = ConfigSchema.parse({ mode: 'passive' });
  assert.deepEqual(c.bypass, { ports: [], cidrs: [] });
  assert.deepEqual(c.connect, { ports: [] });
  assert.deepEqual(c.starttls.smtp, []);
});

for (const [name, doc, field] of [
  ['unknown mode', { mode: 'enforce' }, 'mode'],
  ['missing mode', {}, 'mode'],
  ['port above 65535', { mode: 'off', bypass: { ports: [70000] } }, 'bypass.ports[0]'],
  ['port 0', { mode: 'off', connect: { ports: [0] } }, 'connect.ports[0]'],
  ['fractional port', { mode: 'off', starttls: { smtp: [25.5] } }, 'starttls.smtp[0]'],
  ['unknown top-level field', { mode: 'off', modes: 'x' }, '(document)'],
  ['unknown protocol', { mode: 'off', starttls: { xmpp: [5222] } }, 'starttls'],
  ['bad CIDR', { mode: 'off', bypass: { cidrs: ['10.0.0.0/33'] } }, 'bypass.cidrs[0]'],
  ['not an address', { mode: 'off', bypass: { cidrs: ['example.com/24'] } }, 'bypass.cidrs[0]'],
  ['a port in two negotiations', { mode: 'off', starttls: { smtp: [25] }, connect: { ports: [25] } }, 'connect.ports[0]'],
] as const) {
  test(`refused: ${name}, naming the field ${field}`, () => {
    const r = ConfigSchema.safeParse(doc);
    assert.equal(r.success, false, `${name} must be refused`);
    const text = describeIssues(r.error!);
    assert.ok(text.includes(field), `the error must name ${field}: ${text}`);
  });
}

test('a file that is not JSON is refused with SSLWALL_E_CONFIG_INVALID', () => {
  assert.throws(
    () => parseConfigText('{mode: passive', 'f.json'),
    (e: Error & { code?: string }) => e.code === 'SSLWALL_E_CONFIG_INVALID' && /f\.json is not valid JSON/.test(e.message),
  );
});
