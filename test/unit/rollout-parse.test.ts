// Stage lists and durations as an operator writes them (schemas/rollout.ts).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDuration, parseStages } from '../../schemas/rollout.js';

test('stages: MODE:PERCENT lists, spaces and empty entries ignored', () => {
  assert.deepEqual(parseStages('passive:100,active:1,active:5'), [
    { mode: 'passive', percent: 100 },
    { mode: 'active', percent: 1 },
    { mode: 'active', percent: 5 },
  ]);
  assert.deepEqual(parseStages(' active:0.5 , ,active:100,'), [
    { mode: 'active', percent: 0.5 },
    { mode: 'active', percent: 100 },
  ]);
  assert.deepEqual(parseStages('active:0'), [{ mode: 'active', percent: 0 }]);
});

test('stages: a malformed stage is refused, naming it and the form to write', () => {
  for (const bad of ['active', 'active:', 'off:5', 'ACTIVE:5', 'active:-1', 'active:5%', 'active: 5', 'active:1e2']) {
    assert.throws(
      () => parseStages(`passive:100,${bad}`),
      { message: `stage "${bad.trim()}": write MODE:PERCENT with MODE passive or active, e.g. active:5` },
      bad,
    );
  }
});

test('stages: a percentage above 100 is refused', () => {
  assert.throws(() => parseStages('active:101'), /expected number to be <=100/);
});

test('stages: an empty list is refused with an example', () => {
  for (const empty of ['', ' ', ',,']) {
    assert.throws(() => parseStages(empty), { message: 'no stages: e.g. --stages passive:100,active:1,active:5,active:25,active:100' }, JSON.stringify(empty));
  }
});

test('durations: units ms, s, m, h, combined and fractional', () => {
  const cases: Array<[string, number]> = [
    ['500ms', 500],
    ['90s', 90_000],
    ['10m', 600_000],
    ['2h', 7_200_000],
    ['1h30m', 5_400_000],
    ['1m30s250ms', 90_250],
    ['1.5s', 1500],
    ['0.25m', 15_000],
    ['0s', 0],
    ['1.0004ms', 1],
  ];
  for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
});

test('durations: anything else is refused with examples', () => {
  for (const bad of ['', '10', 'm', '10 m', ' 10m', '10m ', '10min', '1d', '-5s', 'ten minutes', '10m5']) {
    assert.throws(() => parseDuration(bad), { message: `duration "${bad}": write e.g. 10m, 90s, 1h30m, 500ms` }, JSON.stringify(bad));
  }
});
