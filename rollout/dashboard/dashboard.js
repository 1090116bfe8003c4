// The dashboard (docs/dashboard.md): preact components written with htm (tagged templates, no
// build step), charts by uPlot; all served by the engine from node_modules. Four views, each
// polling its API every few seconds: tiers (mode, cohort, stage, checks, timeline), services
// ("is my traffic affected?" by service, host or destination, over time), the preview of a
// percentage bump, and the agents. Every call carries a viewer token, asked for once and kept in
// sessionStorage: it lasts as long as the tab, is not shared with other tabs, and is not written
// to disk like localStorage.
import htm from 'htm';
import { h, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';

const html = htm.bind(h);
const TOKEN_KEY = 'sslwall-token';
const POLL_MS = 3000;
/** Agents asked for at once: a tier may have thousands; the filters narrow them. */
const AGENTS_SHOWN = 300;
const VIEWS = [
  ['tiers', 'Tiers'],
  ['services', 'Services'],
  ['preview', 'Preview'],
  ['agents', 'Agents'],
];

/** Told when the engine refuses the token, so the page asks for another. */
let onUnauthorized = () => {};

async function api(path) {
  const r = await fetch(path, { headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ''}` } });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) onUnauthorized();
  if (!r.ok) throw new Error(`${body.code ?? `HTTP ${r.status}`}: ${body.message ?? ''}`);
  return body;
}

function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '' && v !== false) q.set(k, v === true ? '' : String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Calls load() now and every POLL_MS while the view shows it; a new key starts over. */
function usePoll(load, key) {
  const [state, setState] = useState({ data: null, error: null, at: null });
  useEffect(() => {
    if (key === null) {
      setState({ data: null, error: null, at: null });
      return undefined;
    }
    let stopped = false;
    let timer;
    const run = async () => {
      try {
        const data = await load();
        if (!stopped) setState({ data, error: null, at: new Date() });
      } catch (err) {
        if (!stopped) setState((s) => ({ ...s, error: err }));
      }
      if (!stopped) timer = setTimeout(run, POLL_MS);
    };
    run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [key]);
  return state;
}

const time = (iso) => (iso ? iso.replace('T', ' ').slice(0, 19) : '-');
const n = (x) => (x ?? 0).toLocaleString('en-US');

function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function ErrorLine({ error }) {
  return error ? html`<div class="error" role="alert">${String(error.message ?? error)}</div>` : null;
}

function TierSelect({ tiers, value, onChange, all }) {
  return html`<label>Tier <select value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
    ${all ? html`<option value="">all tiers</option>` : null}
    ${(tiers ?? []).map((t) => html`<option value=${t.tier}>${t.tier}</option>`)}
  </select></label>`;
}

// ---- tiers ----

/** The mode and percentage in force: the running stage's, else the head document's. */
function inForce(t) {
  const r = t.rollout;
  if (r && (r.status === 'running' || r.status === 'paused')) return r.stages[r.stage];
  return { mode: t.mode ?? '-', percent: t.percent };
}

function statusClass(status) {
  return status === 'aborted' || status === 'undone' ? 'bad' : status === 'paused' ? 'warn' : 'ok';
}

function TiersView({ tiers }) {
  const [selected, setSelected] = useState(null);
  const list = tiers.data ?? [];
  const cur = list.find((t) => t.tier === selected) ?? list[0];
  return html`<section>
      <h2>Tiers</h2>
      <${ErrorLine} error=${tiers.error} />
      <table id="tiers-table">
        <thead><tr><th>tier</th><th class="num">version</th><th>mode</th><th class="num">cohort</th><th>rollout</th><th>stage</th><th class="num">applied / cohort</th><th class="num">agents</th><th>checks</th></tr></thead>
        <tbody>
          ${list.map((t) => {
            const r = t.rollout;
            const f = inForce(t);
            return html`<tr class=${`clickable ${cur && cur.tier === t.tier ? 'selected' : ''}`} data-tier=${t.tier} onClick=${() => setSelected(t.tier)}>
              <td>${t.tier}${t.headProblem ? html` <span class="pill bad" title=${t.headProblem}>head invalid</span>` : null}</td>
              <td class="num">${t.version ?? '-'}</td>
              <td>${f.mode}</td>
              <td class="num">${f.percent === null || f.percent === undefined ? '-' : `${f.percent}%`}</td>
              <td>${r ? html`<span class=${`pill ${statusClass(r.status)}`}>${r.status}</span>` : html`<span class="muted">none</span>`}</td>
              <td>${r ? `${r.stage + 1}/${r.stages.length} ${r.phase}${r.live.bakeLeftMs !== null ? `, ${Math.round(r.live.bakeLeftMs / 1000)} s left` : ''}` : '-'}</td>
              <td class="num">${r ? `${r.live.applied} / ${r.live.cohort}` : '-'}</td>
              <td class="num">${t.agents}</td>
              <td>${r ? r.lastChecks.map((c) => html`<span class=${`pill ${c.status === 'pass' ? 'ok' : c.status === 'fail' ? 'bad' : 'warn'}`} title=${c.detail}>${c.name}</span> `) : '-'}</td>
            </tr>`;
          })}
        </tbody>
      </table>
      ${list.length === 0 && !tiers.error ? html`<p class="muted">No tier has a config yet.</p>` : null}
    </section>
    ${cur?.rollout ? html`<${RolloutDetail} r=${cur.rollout} />` : null}`;
}

function RolloutDetail({ r }) {
  return html`<div class="grid">
    <section>
      <h2>Rollout of ${r.tier}: stages</h2>
      <table>
        <thead><tr><th>#</th><th>mode</th><th class="num">percent</th><th></th></tr></thead>
        <tbody>${r.stages.map((s, i) => html`<tr class=${i === r.stage ? 'selected' : ''}><td>${i + 1}</td><td>${s.mode}</td><td class="num">${s.percent}%</td><td>${i < r.stage ? 'done' : i === r.stage ? r.status : ''}</td></tr>`)}</tbody>
      </table>
      <h3>Checks</h3>
      ${r.lastChecks.length ? html`<ul>${r.lastChecks.map((c) => html`<li><b class=${c.status === 'pass' ? 'ok' : c.status === 'fail' ? 'bad' : 'warn'}>${c.status}</b> ${c.name}: ${c.detail}</li>`)}</ul>` : html`<p class="muted">No check has run in this stage yet.</p>`}
    </section>
    <section>
      <h2>Timeline</h2>
      <ol class="timeline" id="timeline">${[...r.events].reverse().map((e) => html`<li><time>${time(e.time)}</time><b>${e.action}</b>${e.version ? ` v${e.version}` : ''}: ${e.reason}</li>`)}</ol>
    </section>
  </div>`;
}

// ---- services ----

function Chart({ series }) {
  const ref = useRef(null);
  useEffect(() => {
    if (!ref.current || !series.length) return undefined;
    // The series share their sample times (rollout/summary-cache.ts); summed, they answer for the search.
    const xs = series[0].points.map((p) => p.t / 1000);
    const sum = (k) => xs.map((_, i) => series.reduce((a, s) => a + (s.points[i]?.[k] ?? 0), 0));
    const plot = new uPlot(
      {
        width: ref.current.clientWidth,
        height: 220,
        series: [{}, { label: 'reported (passive)', stroke: '#b54708', width: 2 }, { label: 'blocked (active)', stroke: '#b42318', width: 2 }],
        axes: [{}, { label: 'connections' }],
      },
      [xs, sum('reported'), sum('blocked')],
      ref.current,
    );
    return () => plot.destroy();
  }, [series]);
  return html`<div class="chart" ref=${ref}></div>`;
}

function answer(q, hits) {
  const entries = hits.entries;
  const reported = entries.filter((e) => e.verdict === 'reported').reduce((a, e) => a + e.count, 0);
  const blocked = entries.filter((e) => e.verdict === 'blocked').reduce((a, e) => a + e.count, 0);
  const hosts = new Set(entries.map((e) => e.hostId)).size;
  const services = new Set(entries.map((e) => e.serviceName)).size;
  if (!entries.length) return html`<div class="answer ok" id="answer">No plaintext connection seen for <b>${q}</b>: nothing of it would be blocked.</div>`;
  return html`<div class="answer bad" id="answer">
    <b>Yes, traffic of ${q} is affected.</b> ${n(hits.total)} ${hits.total === 1 ? 'entry' : 'entries'} on ${hosts} ${hosts === 1 ? 'host' : 'hosts'}, ${services} ${services === 1 ? 'service' : 'services'}:
    passive mode saw <b>${n(reported)}</b> plaintext connections (active mode would block them);
    active mode blocked <b>${n(blocked)}</b>.${hits.total > entries.length ? ` (Totals of the first ${entries.length}.)` : ''}
  </div>`;
}

function ServicesView({ tiers, initialQ }) {
  const [tier, setTier] = useState('');
  const [text, setText] = useState(initialQ);
  const [q, setQ] = useState(initialQ);
  const search = usePoll(
    async () => {
      const [hits, series] = await Promise.all([api(`/api/violations${qs({ q, tier, limit: 500 })}`), api(`/api/violations/series${qs({ q, tier })}`)]);
      return { hits, series };
    },
    q ? `${q}\n${tier}` : null,
  );
  const list = usePoll(() => api(`/api/tiers/${encodeURIComponent(tier)}/services${qs({ limit: 100 })}`), !q && tier ? tier : null);
  const go = (value) => {
    setText(value);
    setQ(value.trim());
    location.hash = value.trim() ? `#services?q=${encodeURIComponent(value.trim())}` : '#services';
  };
  return html`<section>
      <h2>Is my traffic affected?</h2>
      <form class="bar" onSubmit=${(e) => {
        e.preventDefault();
        go(text);
      }}>
        <input type="search" name="q" placeholder="unit, process name, host id or destination address" value=${text} onInput=${(e) => setText(e.currentTarget.value)} />
        <${TierSelect} tiers=${tiers.data} value=${tier} onChange=${setTier} all=${true} />
        <button class="act" type="submit">search</button>
        <span class="muted">Leave the search empty and pick a tier to list its services.</span>
      </form>
      <${ErrorLine} error=${search.error ?? list.error} />
      ${q && search.data ? answer(q, search.data.hits) : null}
      ${q && search.data?.series.series.length ? html`<h3>Over time (totals since each agent started, sampled every ${Math.round(search.data.series.intervalMs / 1000)} s)</h3><${Chart} series=${search.data.series.series} />` : null}
      ${q && search.data?.hits.entries.length ? html`<${Hits} hits=${search.data.hits} />` : null}
      ${!q && list.data ? html`<${ServiceList} body=${list.data} onPick=${go} />` : null}
    </section>`;
}

function Hits({ hits }) {
  return html`<h3>Connections (${n(hits.total)}${hits.total > hits.entries.length ? `, first ${hits.entries.length}` : ''})</h3>
    <table id="hits">
      <thead><tr><th>service</th><th>host</th><th>tier</th><th>direction</th><th>remote</th><th>verdict</th><th class="num">count</th><th>first seen</th><th>last seen</th></tr></thead>
      <tbody>${hits.entries.slice(0, 200).map(
        (e) => html`<tr>
          <td title=${e.service.cgroup ?? ''}>${e.serviceName}${e.service.comm && e.service.comm !== e.serviceName ? html` <span class="muted">(${e.service.comm}${e.service.pid ? ` ${e.service.pid}` : ''})</span>` : null}</td>
          <td>${e.hostId}</td><td>${e.tier}</td>
          <td>${e.direction === 'client' ? 'out (client)' : `in (server :${e.localPort})`}</td>
          <td>${e.remote.addr}:${e.remote.port}</td>
          <td class=${e.verdict === 'blocked' ? 'bad' : 'warn'}>${e.verdict === 'blocked' ? 'blocked' : 'reported: would be blocked'}</td>
          <td class="num">${n(e.count)}</td><td>${time(e.firstSeen)}</td><td>${time(e.lastSeen)}</td>
        </tr>`,
      )}</tbody>
    </table>`;
}

function ServiceList({ body, onPick }) {
  return html`<h3>Services of ${body.tier}: ${n(body.total)} with plaintext connections on ${n(body.hosts)} reporting hosts</h3>
    <table id="services">
      <thead><tr><th>service</th><th class="num">hosts</th><th class="num">reported</th><th class="num">blocked</th><th>top destinations</th><th>last seen</th></tr></thead>
      <tbody>${body.services.map(
        (s) => html`<tr class="clickable" onClick=${() => onPick(s.service)}>
          <td>${s.service}</td><td class="num">${n(s.hosts)}</td><td class="num warn">${n(s.reported)}</td><td class="num bad">${n(s.blocked)}</td>
          <td>${s.destinations.map((d) => `${d.addr}:${d.port} (${n(d.count)})`).join(', ')}</td><td>${time(s.lastSeen)}</td>
        </tr>`,
      )}</tbody>
    </table>`;
}

// ---- preview ----

function PreviewView({ tiers }) {
  const [tier, setTier] = useState('');
  const [percent, setPercent] = useState('100');
  const [asked, setAsked] = useState(null);
  const t = tier || tiers.data?.[0]?.tier || '';
  const p = usePoll(
    () => api(`/api/tiers/${encodeURIComponent(asked.tier)}/preview${qs({ percent: asked.percent })}`),
    asked ? `${asked.tier}\n${asked.percent}` : null,
  );
  return html`<section>
    <h2>Preview a percentage bump</h2>
    <form class="bar" onSubmit=${(e) => {
      e.preventDefault();
      setAsked({ tier: t, percent: Number(percent) });
    }}>
      <${TierSelect} tiers=${tiers.data} value=${t} onChange=${setTier} />
      <label>to <input type="number" name="percent" min="0" max="100" step="any" value=${percent} onInput=${(e) => setPercent(e.currentTarget.value)} /> % active</label>
      <button class="act" type="submit">preview</button>
    </form>
    <${ErrorLine} error=${p.error} />
    ${p.data ? html`<${PreviewBody} p=${p.data} />` : null}
  </section>`;
}

function PreviewBody({ p }) {
  const bad = p.wouldBlock.length > 0 || p.services.length > 0;
  // One line: htm drops the whitespace of a line break next to an expression.
  return html`<div class="answer ${bad ? 'bad' : 'ok'}" id="preview-answer">At ${p.percent}% active (the current stage's cohort: ${p.currentPercent}%), ${n(p.joining.length)} hosts of <b>${p.tier}</b> start enforcing; <b>${n(p.wouldBlock.length)}</b> of them reported plaintext in passive mode and would block it${p.services.length ? `, for ${p.services.length} services (below)` : ''}.</div>
    <div class="grid">
      <div>
        <h3>By service</h3>
        <table id="preview-services">
          <thead><tr><th>service</th><th class="num">hosts</th><th class="num">would block</th><th>top destinations</th></tr></thead>
          <tbody>${p.services.map((s) => html`<tr><td>${s.service}</td><td class="num">${n(s.hosts)}</td><td class="num bad">${n(s.reported)}</td><td>${s.destinations.map((d) => `${d.addr}:${d.port}`).join(', ')}</td></tr>`)}</tbody>
        </table>
      </div>
      <div>
        <h3>By host (${n(p.joining.length)} joining${p.joining.length > 200 ? ', first 200' : ''})</h3>
        <table id="preview-hosts">
          <thead><tr><th>host</th><th>mode now</th><th class="num">reported</th><th>would block</th></tr></thead>
          <tbody>${p.joining.slice(0, 200).map((j) => html`<tr><td>${j.hostId}</td><td>${j.mode}</td><td class="num">${n(j.violationsReported)}</td><td class=${j.wouldBlock ? 'bad' : 'ok'}>${j.wouldBlock ? 'yes' : 'no'}</td></tr>`)}</tbody>
        </table>
      </div>
    </div>`;
}

// ---- agents ----

function AgentsView({ tiers }) {
  const [tier, setTier] = useState('');
  const [errors, setErrors] = useState(false);
  const [behind, setBehind] = useState(false);
  const [host, setHost] = useState('');
  const t = tier || tiers.data?.[0]?.tier || '';
  const a = usePoll(
    () => api(`/api/tiers/${encodeURIComponent(t)}/agents${qs({ errors, behind, host, limit: AGENTS_SHOWN })}`),
    t ? `${t}\n${errors}\n${behind}\n${host}` : null,
  );
  const shown = a.data?.agents ?? [];
  return html`<section>
    <h2>Agents</h2>
    <div class="bar">
      <${TierSelect} tiers=${tiers.data} value=${t} onChange=${setTier} />
      <label><input type="checkbox" name="errors" checked=${errors} onChange=${(e) => setErrors(e.currentTarget.checked)} /> with errors</label>
      <label><input type="checkbox" name="behind" checked=${behind} onChange=${(e) => setBehind(e.currentTarget.checked)} /> behind the head</label>
      <input type="search" name="host" placeholder="host id contains" value=${host} onInput=${(e) => setHost(e.currentTarget.value)} />
      ${a.data ? html`<span class="muted" id="agents-count">${n(a.data.matched)} of ${n(a.data.total)} agents; head version ${a.data.headVersion ?? '-'}</span>` : null}
    </div>
    <${ErrorLine} error=${a.error} />
    <table id="agents">
      <thead><tr><th>host</th><th>version</th><th>mode</th><th>cohort</th><th>last error</th><th class="num">reported / blocked</th><th>last seen</th></tr></thead>
      <tbody>${shown.map(
        (x) => html`<tr>
          <td>${x.hostId}</td>
          <td class=${x.behind ? 'warn' : ''}>${x.configVersion ?? '-'}${x.behind ? ' (behind)' : ''}</td>
          <td>${x.mode}</td><td>${x.inCohort ? 'yes' : 'no'}</td>
          <td class=${x.lastError ? 'bad' : ''} title=${x.lastError?.message ?? ''}>${x.lastError ? `${x.lastError.code} ${time(x.lastError.at)}` : '-'}</td>
          <td class="num">${n(x.counters.violationsReported)} / ${n(x.counters.violationsBlocked)}</td>
          <td>${ago(x.lastSeen)}</td>
        </tr>`,
      )}</tbody>
    </table>
    ${a.data && a.data.matched > shown.length ? html`<p class="muted">First ${shown.length} shown; narrow with the filters.</p>` : null}
  </section>`;
}

// ---- the page ----

function Login({ onToken }) {
  const [text, setText] = useState('');
  return html`<section class="login">
    <h2>sslwall engine token</h2>
    <p>A viewer token is enough (<code>sslwall token --users FILE --name N --role viewer</code>). It is kept for this tab only.</p>
    <form onSubmit=${(e) => {
      e.preventDefault();
      if (text.trim()) onToken(text.trim());
    }}>
      <input type="password" name="token" autocomplete="off" value=${text} onInput=${(e) => setText(e.currentTarget.value)} />
      <button class="act" type="submit">open the dashboard</button>
    </form>
  </section>`;
}

function route() {
  const [view, query] = location.hash.slice(1).split('?');
  return { view: VIEWS.some(([v]) => v === view) ? view : 'tiers', q: new URLSearchParams(query ?? '').get('q') ?? '' };
}

function App() {
  const [token, setToken] = useState(sessionStorage.getItem(TOKEN_KEY));
  const [where, setWhere] = useState(route());
  useEffect(() => {
    const onHash = () => setWhere(route());
    window.addEventListener('hashchange', onHash);
    onUnauthorized = () => {
      sessionStorage.removeItem(TOKEN_KEY);
      setToken(null);
    };
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  const tiers = usePoll(() => api('/api/tiers'), token);
  if (!token)
    return html`<${Login} onToken=${(t) => {
      sessionStorage.setItem(TOKEN_KEY, t);
      setToken(t);
    }} />`;
  const View = { tiers: TiersView, services: ServicesView, preview: PreviewView, agents: AgentsView }[where.view];
  return html`<header>
      <h1>sslwall</h1>
      <nav>${VIEWS.map(([v, label]) => html`<button type="button" aria-current=${where.view === v ? 'page' : undefined} onClick=${() => (location.hash = `#${v}`)}>${label}</button>`)}</nav>
      <span class="status" id="updated">${tiers.at ? `live, updated ${tiers.at.toLocaleTimeString('en-GB')}` : 'loading…'}</span>
      <button type="button" class="act" onClick=${() => onUnauthorized()}>forget token</button>
    </header>
    <main><${View} tiers=${tiers} initialQ=${where.q} /></main>`;
}

render(html`<${App} />`, document.getElementById('app'));
