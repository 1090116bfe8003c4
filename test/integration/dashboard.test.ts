// The dashboard as a service owner uses it: Debian's Chromium, headless, driven by playwright-core,
// against a real engine on a real etcd with a simulated fleet (tools/lab/fleet.ts) whose
// violation summaries are written into etcd as the agents publish them (tools/lab/summaries.ts:
// a stand-in for the agent's own summary publishing until both are merged). It logs in with a
// viewer token and checks the tier view, the service search for a service that made plaintext
// connections in passive mode (its answer, chart and rows), the preview by service and host, and
// the agents list with a filter, at 1366x768, with no console error and no failed request.
// Screenshots go to a temporary folder, or to docs/img/ (which docs/dashboard.md shows) with
// SSLWALL_SCREENSHOTS=docs: a test run does not change the checkout unless asked to.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type Browser, chromium, type Locator, type Page } from 'playwright-core';
import { addUser } from '../../rollout/auth.js';
import { EngineClient } from '../../rollout/client.js';
import { createEtcdClient } from '../../schemas/etcd.js';
import { runHost } from '../../tools/lab/agent-proc.js';
import { type EtcdServer, startEtcd } from '../../tools/lab/etcd.js';
import { EngineProc, type Keys, makeKeys, SimProc } from '../../tools/lab/fleet.js';
import { PROGRAMS } from '../../tools/lab/prerequisites.js';
import { waitForValue } from '../../tools/lab/proc.js';
import { type LabViolation, labSummary, writeSummaries } from '../../tools/lab/summaries.js';
import { hostId } from '../../tools/simulate/shared.js';

const CHROMIUM = PROGRAMS.chromium.path;
const IMG =
  process.env.SSLWALL_SCREENSHOTS === 'docs'
    ? path.resolve(import.meta.dirname, '../../../docs/img')
    : fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-dashboard-img-'));
const TIER = 'web';
const AGENTS = 12;
/** The service whose owner asks: it talks plaintext to a database from four hosts, in passive mode. */
const SERVICE = 'legacy-billing.service';

let etcd: EtcdServer;
let keys: Keys;
let engine: EngineProc;
let sim: SimProc;
let browser: Browser;
let logDir: string;
let viewer: string;
const problems: string[] = [];

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (tools/setup)`);
  logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sslwall-dashboard-'));
  etcd = await startEtcd();
  keys = makeKeys();
  // Samples every second, so that the chart has a line within the test.
  engine = await EngineProc.start(etcd.endpoints, keys, 'a', logDir, { extra: ['--series-interval', '1s'] });
  viewer = addUser(engine.users, 'owner', 'viewer');
  const put = await engine.api('PUT', `/api/tiers/${TIER}/config`, { document: { mode: 'passive', bypass: { ports: [22] } }, message: 'first' });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  sim = await SimProc.start(etcd.endpoints, TIER, AGENTS, keys, logDir);
  const started = await engine.api('POST', `/api/tiers/${TIER}/rollout`, { stages: 'passive:100,active:25,active:100', bake: '1h' });
  assert.equal(started.status, 201, JSON.stringify(started.body));
  await writeFleetSummaries(1);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  fs.mkdirSync(IMG, { recursive: true });
});

after(async () => {
  await browser?.close();
  await sim?.stop();
  await engine?.stop();
  await etcd?.destroy();
  if (keys) fs.rmSync(keys.dir, { recursive: true, force: true });
  if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  if (process.env.SSLWALL_SCREENSHOTS !== 'docs') fs.rmSync(IMG, { recursive: true, force: true });
});

/** Every host has a summary; four run the billing service, which grows by `round` connections each time. */
async function writeFleetSummaries(round: number): Promise<void> {
  const client = createEtcdClient({ endpoints: etcd.endpoints });
  try {
    const docs = Array.from({ length: AGENTS }, (_, i) => {
      const h = hostId('sim-', i);
      const v: LabViolation[] = [
        { unit: 'sshd.service', comm: 'sshd', direction: 'server', remote: { addr: '10.9.0.7', port: 51000 }, localPort: 2222, count: 1 },
      ];
      if (i % 3 === 0)
        v.push({
          unit: SERVICE,
          comm: 'billing',
          direction: 'client',
          remote: { addr: '10.20.0.5', port: 5432 },
          localPort: 0,
          count: 10 * round + i,
        });
      return labSummary(TIER, h, v);
    });
    await writeSummaries(client, '/sslwall/', docs);
  } finally {
    client.close();
  }
}

/** The text as the page shows it, cells apart (not the DOM's textContent, which runs cells together). */
function shown(l: Locator): Promise<string> {
  // biome-ignore lint/performance/useDomNodeTextContent: playwright's Locator.innerText, the rendered text, is what is asserted.
  return l.innerText();
}

/** A page that records every console error, page error, failed request and error answer. */
async function openPage(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  return page;
}

test('the API answers a viewer: services, the search, the series, the preview by service', async () => {
  const c = new EngineClient(engine.url, { token: viewer });
  await waitForValue('the viewer token is loaded', () => c.tiers().then(() => true));
  const services = await waitForValue('the summaries are read', async () => {
    const s = await c.services(TIER);
    return s.hosts === AGENTS && s;
  });
  assert.deepEqual(
    services.services.map((s) => [s.service, s.hosts]),
    [
      [SERVICE, 4],
      ['sshd.service', AGENTS],
    ],
  );
  assert.equal(services.services[0]!.reported, 4 * 10 + 0 + 3 + 6 + 9);
  // A new summary replaces the host's old one in the totals; a summary gone takes its entries
  // away; one whose body names another host than its key is dropped and counted.
  const etcdClient = createEtcdClient({ endpoints: etcd.endpoints });
  try {
    await writeFleetSummaries(2);
    await waitForValue('the totals of round 2', async () => (await c.services(TIER)).services[0]!.reported === 4 * 20 + 18);
    await etcdClient.delete().key(`/sslwall/summary/${TIER}/${hostId('sim-', 0)}`);
    await waitForValue('a host gone from the totals', async () => {
      const s = (await c.services(TIER)).services.find((x) => x.service === SERVICE);
      return s?.hosts === 3 && s.reported === 3 * 20 + 18;
    });
    await etcdClient.put(`/sslwall/summary/${TIER}/${hostId('sim-', 1)}`).value(JSON.stringify(labSummary(TIER, hostId('sim-', 0), [])));
    await waitForValue('the misplaced summary counted', async () =>
      /sslwall_engine_summary_rejected_total\{reason="misplaced"\} 1/.test(await (await fetch(`${engine.url}/metrics`)).text()),
    );
  } finally {
    etcdClient.close();
  }
  await writeFleetSummaries(1);
  await waitForValue('every host back', async () => (await c.services(TIER)).hosts === AGENTS);
  const hits = await c.violations('billing');
  assert.equal(hits.total, 4, JSON.stringify(hits));
  assert.ok(hits.entries.every((e) => e.serviceName === SERVICE && e.verdict === 'reported' && e.remote.port === 5432));
  assert.equal((await c.violations('10.20.0.5:5432', { tier: TIER, limit: 2 })).entries.length, 2, 'a destination search, paged');
  assert.equal((await c.violations(hostId('sim-', 3))).total, 2, 'a host search: its billing and sshd entries');
  const series = await waitForValue('a sample of the billing service', async () => {
    const s = await c.violationSeries(SERVICE);
    return s.series[0]?.points.some((p) => p.reported > 0) && s;
  });
  assert.equal(series.intervalMs, 1000);
  const preview = await c.preview(TIER, 100);
  assert.equal(preview.joining.length, AGENTS);
  assert.equal(preview.services.find((s) => s.service === SERVICE)?.hosts, 4, JSON.stringify(preview.services));
  // The same answer in a terminal: sslwall violations.
  const tokenFile = path.join(logDir, 'viewer-token');
  fs.writeFileSync(tokenFile, `${viewer}\n`, { mode: 0o600 });
  const cli = await runHost(['violations', '--search', 'billing', '--engine', engine.url, '--token-file', tokenFile]);
  assert.equal(cli.code, 0, cli.stderr);
  assert.match(cli.stdout, /^"billing" is affected: 4 entries on 4 hosts; passive mode saw \d+ plaintext connections/);
  assert.match(cli.stdout, /legacy-billing\.service +sim-\d+ +web +out +10\.20\.0\.5:5432 +reported/);
  const list = await runHost(['violations', '--tier', TIER, '--json', '--engine', engine.url, '--token-file', tokenFile]);
  assert.equal(list.code, 0, list.stderr);
  assert.equal((JSON.parse(list.stdout) as { total: number }).total, 2);
  const refused = await fetch(`${engine.url}/api/violations?q=billing`);
  assert.equal(refused.status, 401, 'the search needs a token');
  const page = await fetch(`${engine.url}/`);
  assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self' 'sha256-[A-Za-z0-9+/=]+'; style-src 'self'/);
});

test('the dashboard in Chromium: tiers, service search, preview, agents; no console error', async () => {
  const page = await openPage();
  try {
    await useDashboard(page);
  } catch (err) {
    // What the browser said is most often why a step timed out.
    throw new Error(`${(err as Error).message}\nthe browser saw:\n${problems.join('\n')}`, { cause: err });
  } finally {
    await page.close();
  }
  assert.deepEqual(problems, [], `the browser saw:\n${problems.join('\n')}`);
});

async function useDashboard(page: Page): Promise<void> {
  await page.goto(`${engine.url}/`);
  await page.fill('input[name=token]', viewer);
  await page.click('text=open the dashboard');

  // Tiers: mode, cohort percentage, stage, checks, and the rollout's timeline.
  const row = page.locator(`#tiers-table tr[data-tier=${TIER}]`);
  await row.waitFor();
  await waitForValue('the first stage baking with its checks', async () => /passive\s*100%.*1\/3 baking.*blocked_rate/s.test(await shown(row)));
  assert.match(await shown(page.locator('#timeline')), /start/);
  await page.screenshot({ path: path.join(IMG, 'dashboard-tiers.png') });

  // Services: "is my traffic affected?" for the billing service, seen in passive mode.
  await page.click('nav >> text=Services');
  await page.fill('input[name=q]', 'legacy-billing');
  await page.click('form button[type=submit]');
  const ans = page.locator('#answer');
  await ans.waitFor();
  assert.match(
    await shown(ans),
    /Yes, traffic of legacy-billing is affected\. 4 entries on 4 hosts, 1 service: passive mode saw \d+ plaintext connections \(active mode would block them\); active mode blocked 0/,
  );
  assert.equal(await page.locator('#hits tbody tr').count(), 4);
  assert.match(await shown(page.locator('#hits tbody')), /legacy-billing\.service.*sim-00000.*10\.20\.0\.5:5432.*reported: would be blocked/s);
  // Live: more connections arrive; the answer and the chart follow without a reload.
  const before = await shown(ans);
  await writeFleetSummaries(5);
  await waitForValue('the answer to update live', async () => (await shown(ans)) !== before, 15000);
  await page.locator('.uplot canvas').waitFor();
  await page.screenshot({ path: path.join(IMG, 'dashboard-services.png') });

  // Preview: going to 100 % active, by service and by host.
  await page.click('nav >> text=Preview');
  await page.fill('input[name=percent]', '100');
  await page.click('form button[type=submit]');
  const pa = page.locator('#preview-answer');
  await pa.waitFor();
  assert.match(
    await shown(pa),
    new RegExp(
      `At 100% active .*, ${AGENTS} hosts of ${TIER} start enforcing; \\d+ of them reported plaintext in passive mode and would block it, for 2 services`,
    ),
  );
  assert.match(await shown(page.locator('#preview-services')), /legacy-billing\.service\s+4\s/);
  assert.equal(await page.locator('#preview-hosts tbody tr').count(), AGENTS);
  await page.screenshot({ path: path.join(IMG, 'dashboard-preview.png') });

  // Agents: all of the tier, then the "with errors" filter (none).
  await page.click('nav >> text=Agents');
  await waitForValue('the agents list', async () => (await page.locator('#agents tbody tr').count()) === AGENTS);
  assert.match(await shown(page.locator('#agents-count')), new RegExp(`${AGENTS} of ${AGENTS} agents`));
  await page.fill('input[name=host]', 'sim-0000');
  await waitForValue('the host filter', async () => (await page.locator('#agents tbody tr').count()) === 10);
  await page.screenshot({ path: path.join(IMG, 'dashboard-agents.png') });
  await page.check('input[name=errors]');
  await waitForValue('the errors filter', async () => /^0 of 12 agents/.test(await shown(page.locator('#agents-count'))));

  // Nothing fits a laptop screen badly: no sideways scroll.
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'the page is wider than 1366 px');
}
