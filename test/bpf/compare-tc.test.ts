// tools/bench/compare-tc.ts: builds of the classifier timed side by side in one process. Run on
// this build twice (the tool's own figures are docs/bench.md's); what is checked is that every
// build gets its rounds on the real kernel and that bad arguments are refused.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { bpfObjects } from '../../agent/paths.js';
import { compareBuilds, main } from '../../tools/bench/compare-tc.js';

const BUILD = path.dirname(bpfObjects.classifier);

test('two builds are timed round by round on the same packets, SYN and ClientHello each', () => {
  const lines: string[] = [];
  const { builds, emptyNs } = compareBuilds([BUILD, BUILD], { rounds: 2, flows: 300 }, (m) => lines.push(m));
  assert.equal(builds.length, 2);
  assert.equal(lines.length, 2, 'one progress line a round');
  assert.ok(emptyNs > 0);
  for (const b of builds) {
    assert.equal(b.rounds.length, 2);
    assert.ok(b.clientHelloNs > emptyNs, `a ClientHello costs more than the empty program: ${b.clientHelloNs} vs ${emptyNs}`);
    assert.ok(b.synNs > b.clientHelloNs, `a SYN (an insert) costs more than a ClientHello (a lookup): ${b.synNs} vs ${b.clientHelloNs}`);
  }
});

test('a folder without built objects, one folder, or a bad count is refused with exit status 2', () => {
  const write = process.stderr.write;
  const err: string[] = [];
  process.stderr.write = ((s: string) => err.push(s) > 0) as typeof process.stderr.write;
  try {
    assert.equal(main(['/nonexistent', BUILD]), 2);
    assert.equal(main([BUILD]), 2);
    assert.equal(main(['--rounds', '0', BUILD, BUILD]), 2);
  } finally {
    process.stderr.write = write;
  }
  assert.match(err.join(''), /\/nonexistent has no classifier\.bpf\.o/);
  assert.match(err.join(''), /name at least two build folders/);
  assert.match(err.join(''), /--rounds 0: expected an integer from 1 to 100/);
});
