// The shipped Grafana dashboard (tools/ops/grafana/sslwall.json): every query is PromQL that
// promtool parses, names only metrics sslwall exports (or Prometheus's own), and the panels tile
// the 24-column grid without overlapping.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../agent/paths.js';
import { BIN } from '../../tools/lab/prerequisites.js';
import { requireBins } from '../../tools/lab/proc.js';

interface Panel {
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Array<{ expr: string }>;
}
const dashboard = JSON.parse(fs.readFileSync(path.join(repoRoot, 'tools/ops/grafana/sslwall.json'), 'utf8')) as { uid: string; panels: Panel[] };

/** Metric names the agent and the engine register, read from their sources. */
function exportedMetrics(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of fs.readFileSync(p, 'utf8').matchAll(/['"](sslwall_[a-z_]+)['"]/g)) names.add(m[1]!);
    }
  };
  walk(path.join(repoRoot, 'agent'));
  walk(path.join(repoRoot, 'rollout'));
  return names;
}

test('every panel query is PromQL promtool parses', () => {
  requireBins(['promtool']);
  const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  assert.ok(exprs.length >= 20, `${exprs.length} queries`);
  // As recording rules, with the dashboard's variables as Grafana would fill them in.
  const rules = exprs.map((e, i) => `      - record: panel_${i}\n        expr: ${JSON.stringify(e.replaceAll('$tier', '.*'))}`).join('\n');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-grafana-'));
  try {
    fs.writeFileSync(path.join(dir, 'panels.yml'), `groups:\n  - name: panels\n    rules:\n${rules}\n`);
    const out = execFileSync(BIN.promtool, ['check', 'rules', path.join(dir, 'panels.yml')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.match(out, new RegExp(`SUCCESS: ${exprs.length} rules found`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the queries name only metrics sslwall exports, and Prometheus and prom-client defaults', () => {
  const ours = exportedMetrics();
  const used = new Set(
    dashboard.panels.flatMap((p) => (p.targets ?? []).flatMap((t) => [...t.expr.matchAll(/\b(sslwall_[a-z_]+?)(?:_bucket)?\{/g)].map((m) => m[1]!))),
  );
  assert.ok(used.size >= 10, [...used].join(', '));
  assert.deepEqual(
    [...used].filter((n) => !ours.has(n)),
    [],
    'metrics the dashboard queries but nothing exports',
  );
});

test('panels tile the 24-column grid without overlapping', () => {
  const taken = new Set<string>();
  for (const p of dashboard.panels) {
    const g = p.gridPos;
    assert.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24, `${p.title}: x ${g.x} w ${g.w}`);
    for (let x = g.x; x < g.x + g.w; x++)
      for (let y = g.y; y < g.y + g.h; y++) {
        assert.ok(!taken.has(`${x},${y}`), `${p.title} overlaps another panel at ${x},${y}`);
        taken.add(`${x},${y}`);
      }
  }
});
