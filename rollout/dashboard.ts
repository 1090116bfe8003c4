// The dashboard: one page, no build step. A service owner looks up a tier (and a host) and sees
// whether their traffic is affected: mode, cohort, violations, the rollout's stage and events.
export function dashboardHtml(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sslwall</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}.bad{color:#b00}.ok{color:#070}
.muted{color:#777}input{font:inherit;padding:.2em}
</style></head><body>
<h1>sslwall — rollouts</h1>
<p class="muted">Refreshes every 2 s. Data from <code>/api/tiers</code>.</p>
<div id="tiers">loading…</div>
<h2>Is my traffic affected?</h2>
<p>Tier <input id="tier" placeholder="web"> host <input id="host" placeholder="host id (optional)"> <button onclick="look()">look up</button></p>
<div id="lookup"></div>
<script>
async function j(u){const r=await fetch(u);return r.json();}
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
async function refresh(){
  const tiers=await j('/api/tiers');
  let h='<table><tr><th>tier</th><th>version</th><th>agents</th><th>rollout</th><th>stage</th><th>applied / cohort</th><th>bake left</th><th>last event</th></tr>';
  for(const t of tiers){const r=t.rollout;const st=r?r.stages[r.stage]:null;const ev=r?r.events[r.events.length-1]:null;
    h+='<tr><td>'+esc(t.tier)+'</td><td>'+esc(t.version)+'</td><td>'+t.agents+'</td><td class="'+(r&&(r.status==='aborted')?'bad':'ok')+'">'+(r?esc(r.status):'-')+'</td><td>'+(st?esc(st.mode+':'+st.percent+'% ('+(r.stage+1)+'/'+r.stages.length+')'):'-')+'</td><td>'+(r?r.live.applied+' / '+r.live.cohort:'-')+'</td><td>'+(r&&r.live.bakeLeftMs!=null?Math.round(r.live.bakeLeftMs/1000)+' s':'-')+'</td><td>'+(ev?esc(ev.action+': '+ev.reason):'-')+'</td></tr>';}
  document.getElementById('tiers').innerHTML=h+'</table>';
}
async function look(){
  const tier=document.getElementById('tier').value.trim(), host=document.getElementById('host').value.trim();
  if(!tier)return;
  const r=await fetch('/api/tiers/'+encodeURIComponent(tier)+'/preview?percent=100');const p=await r.json();
  const rows=(p.joining||[]).filter(x=>!host||x.hostId===host);
  let h='<p>Hosts of <b>'+esc(tier)+'</b> not yet enforcing: '+rows.length+'; with plaintext traffic seen in passive mode (would be blocked): <b class="bad">'+rows.filter(x=>x.wouldBlock).length+'</b></p>';
  h+='<table><tr><th>host</th><th>mode</th><th>plaintext flows reported</th><th>would block</th></tr>'+rows.slice(0,200).map(x=>'<tr><td>'+esc(x.hostId)+'</td><td>'+esc(x.mode)+'</td><td>'+x.violationsReported+'</td><td class="'+(x.wouldBlock?'bad':'ok')+'">'+(x.wouldBlock?'yes':'no')+'</td></tr>').join('')+'</table>';
  document.getElementById('lookup').innerHTML=h;
}
refresh();setInterval(refresh,2000);
</script></body></html>`;
}
