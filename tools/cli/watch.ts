// `sslwall rollout watch`: on a terminal, the rollout redrawn in place every second with a
// progress bar per stage; otherwise (a pipe, a CI log) one plain line each time something
// changes, ending when the rollout does.
import type { RolloutViewBody } from '../../schemas/api.js';

const BAR = 20;

function bar(fraction: number): string {
  const full = Math.round(Math.max(0, Math.min(1, fraction)) * BAR);
  return `[${'#'.repeat(full)}${'.'.repeat(BAR - full)}]`;
}

/** The share of the current stage done: agents applied while applying, bake time while baking. */
function stageProgress(s: RolloutViewBody): { fraction: number; what: string } {
  if (s.phase === 'writing') return { fraction: 0, what: 'writing the stage' };
  if (s.phase === 'applying')
    return { fraction: s.live.cohort ? s.live.applied / s.live.cohort : 0, what: `applying: ${s.live.applied}/${s.live.cohort} agents` };
  const left = s.live.bakeLeftMs ?? 0;
  const fraction = s.bakeMs ? 1 - left / s.bakeMs : 1;
  return { fraction, what: `baking: ${Math.ceil(left / 1000)} s left, ${s.live.applied}/${s.live.cohort} agents on v${s.stageVersion ?? '-'}` };
}

/** The terminal view: a header, a bar per stage, the last checks and events. */
export function renderWatch(s: RolloutViewBody, now = new Date()): string {
  const ended = s.status !== 'running' && s.status !== 'paused';
  const lines = [`rollout ${s.id} on tier ${s.tier}: ${s.status.toUpperCase()}${s.reason ? ` — ${s.reason}` : ''}`, ''];
  s.stages.forEach((st, i) => {
    const name = `${i + 1}. ${st.mode}:${st.percent}%`.padEnd(16);
    let line: string;
    if (i < s.stage || (i === s.stage && s.status === 'completed')) line = `${name} ${bar(1)} done`;
    else if (i === s.stage && !ended) {
      const p = stageProgress(s);
      line = `${name} ${bar(p.fraction)} ${p.what}${s.status === 'paused' ? ' (PAUSED)' : ''}`;
    } else if (i === s.stage) line = `${name} ${bar(0)} ${s.status}`;
    else line = `${name} ${bar(0)}`;
    lines.push(line);
  });
  lines.push('', 'checks:');
  lines.push(...(s.lastChecks.length ? s.lastChecks.map((c) => `  ${c.status.padEnd(12)} ${c.name}: ${c.detail}`) : ['  (none yet)']));
  lines.push('recent events:', ...s.events.slice(-5).map((e) => `  ${e.time}  ${e.action}: ${e.reason}`));
  lines.push('', `${now.toISOString()}  ${s.live.agents} agents reporting   Ctrl-C to leave`);
  return `${lines.join('\n')}\n`;
}

/** The plain line for a log: what a change looks like when it is not redrawn (no countdown, so a line per change). */
export function watchLine(s: RolloutViewBody): string {
  const st = s.stages[s.stage]!;
  const head = `${s.status} stage ${s.stage + 1}/${s.stages.length} ${st.mode}:${st.percent}%`;
  if (s.status !== 'running' && s.status !== 'paused') return `${head}: ${s.reason}`;
  if (s.phase === 'baking') return `${head} baking: ${s.live.applied}/${s.live.cohort} agents on v${s.stageVersion ?? '-'}`;
  return `${head} ${stageProgress(s).what}`;
}

/** Follow a rollout until Ctrl-C (terminal) or its end (otherwise). */
export async function watchRollout(fetch: () => Promise<RolloutViewBody>, out: NodeJS.WriteStream, intervalMs = 1000): Promise<void> {
  const tty = out.isTTY === true;
  let stop = false;
  const onInt = () => {
    stop = true;
  };
  process.once('SIGINT', onInt);
  let lastLine = '';
  try {
    // Hide the cursor while redrawing; shown again on the way out.
    if (tty) out.write('\x1b[?25l');
    while (!stop) {
      const s = await fetch();
      if (tty) out.write(`\x1b[H\x1b[J${renderWatch(s)}`);
      else {
        const line = watchLine(s);
        if (line !== lastLine) out.write(`${new Date().toISOString()} ${line}\n`);
        lastLine = line;
      }
      if (!tty && s.status !== 'running' && s.status !== 'paused') break;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  } finally {
    process.off('SIGINT', onInt);
    if (tty) out.write('\x1b[?25h');
  }
}
