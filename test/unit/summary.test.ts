// The violation summary builder (agent/summary.ts): aggregation by service and peer, first and
// last seen, the bounds (entries, working set, bytes), eviction of the least frequent and the
// dropped count; every document it builds is one the engine's schema accepts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { SummaryBuilder, type Violation } from '../../agent/summary.js';
import { SUMMARY_MAX_ENTRIES, type Summary, SummarySchema } from '../../schemas/summary.js';

const T0 = Date.parse('2026-12-01T10:00:00.000Z');

function client(unit: string, addr: string, port: number, over: Partial<Violation> = {}): Violation {
  return {
    service: { unit, cgroup: `/system.slice/${unit}`, container: null, comm: 'legacy-app', pid: 4242 },
    direction: 'client',
    remote: { addr, port },
    localPort: 0,
    verdict: 'reported',
    ...over,
  };
}

const counted = (s: Summary) => s.entries.reduce((n, e) => n + e.count, 0) + s.dropped;

test('violations of one service to one peer aggregate into one entry with count, first and last seen', () => {
  const b = new SummaryBuilder('host-1', 'web', T0);
  b.add(client('legacy-app.service', '10.0.0.2', 80), T0 + 1000);
  const restarted = client('legacy-app.service', '10.0.0.2', 80);
  restarted.service.pid = 5000;
  b.add(restarted, T0 + 5000);
  b.add(client('legacy-app.service', '10.0.0.2', 443), T0 + 2000);
  b.add(client('legacy-app.service', '10.0.0.2', 80, { verdict: 'blocked' }), T0 + 3000);
  const s = SummarySchema.parse(b.build(T0 + 6000));
  assert.equal(s.entries.length, 3, 'port and verdict (mode) are part of the key');
  const e = s.entries[0]!;
  assert.equal(e.count, 2);
  assert.equal(e.firstSeen, '2026-12-01T10:00:01.000Z');
  assert.equal(e.lastSeen, '2026-12-01T10:00:05.000Z');
  assert.equal(e.service.pid, 5000, 'a restarted process is the same service; the latest pid is shown');
  assert.equal(s.since, '2026-12-01T10:00:00.000Z');
  assert.equal(s.updatedAt, '2026-12-01T10:00:06.000Z');
  assert.equal(s.dropped, 0);
});

test("a server's entries keep its listening port and not the remote client's ephemeral port", () => {
  const b = new SummaryBuilder('host-1', 'web', T0);
  const server = (port: number): Violation => ({
    service: { unit: 'legacy-db.service', cgroup: '/system.slice/legacy-db.service', container: null, comm: null, pid: null },
    direction: 'server',
    remote: { addr: '10.0.0.9', port },
    localPort: 5433,
    verdict: 'reported',
  });
  // What the agent passes: the remote port of a server-side violation is not kept (agent/events.ts).
  for (let i = 0; i < 20; i++) b.add(server(0), T0 + i);
  const s = b.build(T0 + 100);
  assert.equal(s.entries.length, 1);
  assert.deepEqual({ dir: s.entries[0]!.direction, local: s.entries[0]!.localPort, count: s.entries[0]!.count }, { dir: 'server', local: 5433, count: 20 });
});

test('at most SUMMARY_MAX_ENTRIES are published, the most frequent first; the rest is counted in dropped', () => {
  const b = new SummaryBuilder('host-1', 'web', T0);
  // Peer i gets i+1 violations: the top 50 are peers 149..100.
  for (let i = 0; i < 150; i++) for (let n = 0; n <= i; n++) b.add(client('app.service', `10.0.${i >> 8}.${i & 255}`, 80), T0 + n);
  const s = SummarySchema.parse(b.build(T0 + 1000));
  assert.equal(s.entries.length, SUMMARY_MAX_ENTRIES);
  assert.deepEqual(
    s.entries.map((e) => e.count),
    Array.from({ length: 50 }, (_, k) => 150 - k),
  );
  assert.equal(counted(s), (150 * 151) / 2, 'every violation is in an entry or in dropped');
});

test('a full working set evicts the least frequent entry (the oldest of equals) and counts it in dropped', () => {
  const b = new SummaryBuilder('host-1', 'web', T0, { maxEntries: 2, workingEntries: 3, maxBytes: 32 * 1024 });
  const peer = (n: number) => client('app.service', `10.0.0.${n}`, 80);
  for (let k = 0; k < 5; k++) b.add(peer(1), T0 + k);
  for (let k = 0; k < 3; k++) b.add(peer(2), T0 + 10 + k);
  b.add(peer(3), T0 + 20); // count 1, older
  b.add(peer(4), T0 + 30); // evicts peer 3 (count 1, older than nothing else with count 1)
  assert.equal(b.tracked, 3, 'the working set stays bounded');
  b.add(peer(5), T0 + 40); // evicts peer 4, now the least frequent
  const s = b.build(T0 + 50);
  assert.deepEqual(
    s.entries.map((e) => [e.remote.addr, e.count]),
    [
      ['10.0.0.1', 5],
      ['10.0.0.2', 3],
    ],
  );
  assert.equal(s.dropped, 3, 'peers 3 and 4 (evicted) and peer 5 (tracked, not in the top 2)');
  // Peer 3 comes back: it counts again from one.
  b.add(peer(3), T0 + 60);
  assert.equal(counted(b.build(T0 + 70)), 5 + 3 + 4);
});

test('the serialized summary stays under its byte cap, cutting the least frequent entries', () => {
  const long = `/kubepods.slice/${'x'.repeat(600)}/app.service`;
  const b = new SummaryBuilder('host-1', 'web', T0);
  for (let i = 0; i < 60; i++) {
    const v = client('u'.repeat(300), `fd00:5157:1234:5678:9abc:def0:1234:${i.toString(16)}`, 65000 + i, {
      service: { unit: 'u'.repeat(300), cgroup: long, container: 'c'.repeat(200), comm: 'a-very-long-command-name', pid: 1 },
    });
    for (let n = 0; n <= i; n++) b.add(v, T0 + n);
  }
  const s = b.build(T0 + 100);
  const bytes = Buffer.byteLength(JSON.stringify(s));
  assert.ok(bytes <= 32 * 1024, `serialized summary is ${bytes} bytes, over 32 KiB`);
  assert.ok(s.entries.length < SUMMARY_MAX_ENTRIES && s.entries.length > 10, `entries: ${s.entries.length}`);
  assert.equal(s.entries[0]!.count, 60, 'the most frequent survive the cut');
  const e = SummarySchema.parse(s).entries[0]!;
  assert.equal(e.service.cgroup!.length, 512, 'a long cgroup path keeps its tail');
  assert.ok(e.service.cgroup!.endsWith('/app.service'));
  assert.equal(counted(s), (60 * 61) / 2);
});

test('property: any sequence of violations builds a valid summary that accounts for every one of them', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ peer: fc.integer({ min: 0, max: 400 }), unit: fc.constantFrom('a.service', 'b.scope', 'c.service'), blocked: fc.boolean() }), {
        maxLength: 2000,
      }),
      (vs) => {
        const b = new SummaryBuilder('host-1', 'web', T0);
        for (const [i, v] of vs.entries())
          b.add(client(v.unit, `10.1.${v.peer >> 8}.${v.peer & 255}`, 80, { verdict: v.blocked ? 'blocked' : 'reported' }), T0 + i);
        const s = SummarySchema.parse(b.build(T0 + vs.length));
        assert.equal(counted(s), vs.length);
        assert.ok(b.tracked <= 4 * SUMMARY_MAX_ENTRIES);
        for (let i = 1; i < s.entries.length; i++) assert.ok(s.entries[i - 1]!.count >= s.entries[i]!.count, 'most frequent first');
        for (const e of s.entries) assert.ok(e.firstSeen <= e.lastSeen);
      },
    ),
    { numRuns: 50 },
  );
});
