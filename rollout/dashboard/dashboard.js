// The dashboard's script (index.html): the tiers table from /api/tiers every 2 s, and the
// "is my traffic affected?" lookup from /api/tiers/T/preview?percent=100. Every call carries a
// viewer token (docs/security.md), asked for once and kept in sessionStorage: it lasts as long
// as the tab and is not shared with other tabs or written to disk like localStorage.
const TOKEN_KEY = 'sslwall-token';
function askToken() {
  const t = (window.prompt('sslwall engine token (a viewer token is enough: sslwall token --role viewer)') || '').trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  return t;
}
async function j(u) {
  // Without a token nothing is fetched (and the 2 s refresh does not keep prompting): the
  // "token" button asks again.
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (!t) throw new Error('no token given; press "token" to enter one');
  const r = await fetch(u, { headers: { authorization: `Bearer ${t}` } });
  // An unknown or revoked token: forget it; the "token" button asks for another.
  if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
  if (!r.ok) {
    const e = await r.json().catch(() => ({}));
    throw new Error(`${r.status} ${e.code || ''}: ${e.message || ''}`);
  }
  return r.json();
}
function showError(err) {
  document.getElementById('tiers').textContent = String(err.message || err);
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}
async function refresh() {
  const tiers = await j('/api/tiers');
  let h =
    '<table><tr><th>tier</th><th>version</th><th>agents</th><th>rollout</th><th>stage</th><th>applied / cohort</th><th>bake left</th><th>last event</th></tr>';
  for (const t of tiers) {
    const r = t.rollout;
    const st = r ? r.stages[r.stage] : null;
    const ev = r ? r.events[r.events.length - 1] : null;
    h +=
      '<tr><td>' +
      esc(t.tier) +
      '</td><td>' +
      esc(t.version) +
      '</td><td>' +
      t.agents +
      '</td><td class="' +
      (r && r.status === 'aborted' ? 'bad' : 'ok') +
      '">' +
      (r ? esc(r.status) : '-') +
      '</td><td>' +
      (st ? esc(`${st.mode}:${st.percent}% (${r.stage + 1}/${r.stages.length})`) : '-') +
      '</td><td>' +
      (r ? `${r.live.applied} / ${r.live.cohort}` : '-') +
      '</td><td>' +
      (r && r.live.bakeLeftMs != null ? `${Math.round(r.live.bakeLeftMs / 1000)} s` : '-') +
      '</td><td>' +
      (ev ? esc(`${ev.action}: ${ev.reason}`) : '-') +
      '</td></tr>';
  }
  document.getElementById('tiers').innerHTML = `${h}</table>`;
}
async function look() {
  const tier = document.getElementById('tier').value.trim(),
    host = document.getElementById('host').value.trim();
  if (!tier) return;
  const p = await j(`/api/tiers/${encodeURIComponent(tier)}/preview?percent=100`);
  const rows = (p.joining || []).filter((x) => !host || x.hostId === host);
  let h =
    '<p>Hosts of <b>' +
    esc(tier) +
    '</b> not yet enforcing: ' +
    rows.length +
    '; with plaintext traffic seen in passive mode (would be blocked): <b class="bad">' +
    rows.filter((x) => x.wouldBlock).length +
    '</b></p>';
  h +=
    '<table><tr><th>host</th><th>mode</th><th>plaintext flows reported</th><th>would block</th></tr>' +
    rows
      .slice(0, 200)
      .map(
        (x) =>
          '<tr><td>' +
          esc(x.hostId) +
          '</td><td>' +
          esc(x.mode) +
          '</td><td>' +
          x.violationsReported +
          '</td><td class="' +
          (x.wouldBlock ? 'bad' : 'ok') +
          '">' +
          (x.wouldBlock ? 'yes' : 'no') +
          '</td></tr>',
      )
      .join('') +
    '</table>';
  document.getElementById('lookup').innerHTML = h;
}
document.getElementById('look').addEventListener('click', () => look().catch(showError));
document.getElementById('token').addEventListener('click', () => {
  askToken();
  refresh().catch(showError);
});
if (!sessionStorage.getItem(TOKEN_KEY)) askToken();
refresh().catch(showError);
setInterval(() => refresh().catch(showError), 2000);
