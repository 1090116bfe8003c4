// `sslwall rollout watch` rendering (tools/cli/watch.ts): a bar per stage with the current
// stage's progress; on a terminal redrawn in place, elsewhere a plain line per change.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RolloutViewBody } from '../../schemas/api.js';
import { renderWatch, watchLine, watchRollout } from '../../tools/cli/watch.js';
import { rollout, T0 } from './rollout-fixtures.js';

const stages = [
  { mode: 'passive' as const, percent: 100 },
  { mode: 'active' as const, percent: 5 },
  { mode: 'active' as const, percent: 100 },
];
const view = (change: Partial<RolloutViewBody>, live: Partial<RolloutViewBody['live']> = {}): RolloutViewBody => ({
  ...rollout({ stages, stage: 1 }),
  live: { agents: 40, cohort: 4, applied: 4, bakeLeftMs: 15_000, leader: true, ...live },
  ...change,
});

test('the current stage shows its bake, done stages are full, later ones empty', () => {
  const text = renderWatch(view({}), new Date(T0));
  assert.match(text, /^rollout web-1 on tier web: RUNNING — started by test\n/);
  assert.match(text, /\n1\. passive:100% +\[#{20}\] done\n/);
  // 60 s bake, 15 s left: three quarters done.
  assert.match(text, /\n2\. active:5% +\[#{15}\.{5}\] baking: 15 s left, 4\/4 agents on v7\n/);
  assert.match(text, /\n3\. active:100% +\[\.{20}\]\n/);
});

test('applying shows agents applied; paused and ended rollouts say so', () => {
  assert.match(renderWatch(view({ phase: 'applying' }, { applied: 1 })), /2\. active:5% +\[#{5}\.{15}\] applying: 1\/4 agents/);
  assert.match(renderWatch(view({ status: 'paused', reason: 'missing data' })), /PAUSED — missing data[\s\S]*\(PAUSED\)/);
  const done = renderWatch(view({ status: 'completed', stage: 2, reason: 'bake ended healthy' }));
  assert.equal(done.match(/\[#{20}\] done/g)?.length, 3);
  assert.match(renderWatch(view({ status: 'aborted', reason: 'alert firing' })), /2\. active:5% +\[\.{20}\] aborted/);
});

test('on a terminal each frame is drawn in place; elsewhere only changes are printed, until the end', async () => {
  const frames = [view({}, { bakeLeftMs: 20_000 }), view({}, { bakeLeftMs: 19_000 }), view({ status: 'completed', stage: 2, reason: 'bake ended healthy' })];
  const written: string[] = [];
  const out = (isTTY: boolean) => ({ isTTY, write: (s: string) => written.push(s) }) as unknown as NodeJS.WriteStream;
  let i = 0;
  await watchRollout(async () => frames[Math.min(i++, frames.length - 1)]!, out(false), 1);
  // The second frame differs only in the countdown: no line for it.
  assert.equal(written.length, 2, written.join(''));
  assert.match(written[0]!, /running stage 2\/3 active:5% baking: 4\/4 agents on v7\n$/);
  assert.match(written[1]!, /completed stage 3\/3 active:100%: bake ended healthy\n$/);
  assert.equal(watchLine(frames[2]!), 'completed stage 3/3 active:100%: bake ended healthy');

  written.length = 0;
  i = 0;
  const tty = watchRollout(async () => frames[Math.min(i++, 1)]!, out(true), 1);
  await new Promise((r) => setTimeout(r, 30));
  process.emit('SIGINT');
  await tty;
  assert.equal(written[0], '\x1b[?25l', 'cursor hidden');
  assert.ok(
    written.slice(1, -1).every((f) => f.startsWith('\x1b[H\x1b[J')),
    'each frame redrawn from the top',
  );
  assert.equal(written.at(-1), '\x1b[?25h', 'cursor shown again');
});
