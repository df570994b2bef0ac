// The mesh dashboard: read-only, served by meshd on admin.http, data from /ui/api/*,
// refreshed by polling. No requests leave this origin.
"use strict";

const REFRESH_MS = 3000;
const main = document.getElementById("main");
let timer = null;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function api(path) {
  const r = await fetch("/ui/api/" + path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function pct(x) { return x == null ? "–" : (x * 100).toFixed(x >= 0.9995 ? 0 : 1) + "%"; }
function ms(x) { return x == null ? "–" : (x === Infinity || x > 1e9 ? "> 60 s" : (x >= 1000 ? (x / 1000).toFixed(1) + " s" : x + " ms")); }
function rate(x) { return x >= 10 ? x.toFixed(0) : x.toFixed(1); }
function health(e) {
  if (e.destination_down && e.requests > 0) return "bad";
  if (e.success_rate == null) return "ok";
  return e.success_rate >= 0.99 ? "ok" : e.success_rate >= 0.95 ? "warn" : "bad";
}

function stamp() {
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

// ---- overview ----
async function overview() {
  const [status, members, services, traffic, routes, policies] = await Promise.all(
    [api("status"), api("members"), api("services"), api("traffic"), api("routes"), api("policies")]);
  // Members that do not hold a document's current revision yet (lagging nodes).
  const catchups = await Promise.all([...routes.map(d => ["routes", d]), ...policies.map(d => ["policies", d])].map(
    ([kind, d]) => api(`${kind}/${encodeURIComponent(d.name)}/catchup?revision=${encodeURIComponent(d.id ?? d.revision)}`)
      .then(c => [kind, d, c]).catch(() => null)));
  document.getElementById("node").textContent = status.node;
  const warnings = [];
  if (status.cert_warning) warnings.push(["bad", "Certificate: " + status.cert_warning]);
  if (status.store && status.store.health && status.store.health !== "ok") warnings.push(["bad", "Store: " + JSON.stringify(status.store.health)]);
  for (const m of members) {
    if (m.state !== "alive") warnings.push([m.state === "suspect" ? "" : "bad", `Member ${m.name} is ${m.state}`]);
    if (m.clock_offset_ms != null && Math.abs(m.clock_offset_ms) > 1000) warnings.push(["", `Clock of ${m.name} is ${m.clock_offset_ms} ms off this node's`]);
  }
  for (const n of traffic.missing || []) warnings.push(["", `Node ${n} did not send its traffic summary (lagging or unreachable)`]);
  for (const [kind, d, c] of catchups.filter(Boolean)) {
    const behind = [...(c.lagging || []), ...(c.unreachable || [])];
    if (behind.length) warnings.push(["", `${kind === "routes" ? "Route" : "Policy"} ${d.name}: revision ${d.id ?? d.revision} not yet held by ${behind.join(", ")}`]);
  }
  for (const s of services) {
    const up = s.instances.filter(i => i.healthy).length;
    if (up === 0) warnings.push(["bad", `Service ${s.name} has no healthy instance`]);
  }
  const byDest = {};
  for (const e of traffic.edges) {
    const d = byDest[e.destination] ||= { rps: 0, requests: 0, errors: 0 };
    d.rps += e.rps; d.requests += e.requests; d.errors += e.errors;
  }
  main.innerHTML = `
    <h1>Overview</h1>
    <div id="warnings">${warnings.length ? warnings.map(([c, w]) => `<div class="warning ${c}">${esc(w)}</div>`).join("") : '<p class="ok">No warnings.</p>'}</div>
    <div class="cards">
      <div class="card"><h2>Members (${members.length})</h2>
        <table id="members"><tr><th>Name</th><th>State</th><th>Address</th><th class="num">Clock</th></tr>
        ${members.map(m => `<tr data-member="${esc(m.name)}"><td>${esc(m.name)}</td><td class="state-${esc(m.state)}">${esc(m.state)}</td><td>${esc(m.addr)}</td><td class="num">${m.clock_offset_ms == null ? "–" : esc(m.clock_offset_ms) + " ms"}</td></tr>`).join("")}
        </table></div>
      <div class="card"><h2>Services (${services.length})</h2>
        <table id="services"><tr><th>Service</th><th>Healthy</th><th class="num">Req/s</th><th class="num">Success</th></tr>
        ${services.map(s => {
          const up = s.instances.filter(i => i.healthy).length, t = byDest[s.name];
          return `<tr data-service="${esc(s.name)}"><td><a href="#/service/${encodeURIComponent(s.name)}">${esc(s.name)}</a></td>
            <td class="${up ? "ok" : "bad"}">${up} / ${s.instances.length}</td>
            <td class="num">${t ? rate(t.rps) : "–"}</td><td class="num">${t && t.requests ? pct(1 - t.errors / t.requests) : "–"}</td></tr>`;
        }).join("")}
        </table></div>
    </div>`;
}

// ---- topology ----
function layout(edges) {
  const names = new Map();
  for (const e of edges) {
    if (!names.has(e.source)) names.set(e.source, { client: e.source_is_node });
    if (!names.has(e.destination)) names.set(e.destination, { client: false });
  }
  // Columns by depth from the nodes nothing calls.
  const depth = new Map();
  const incoming = new Set(edges.filter(e => e.source !== e.destination).map(e => e.destination));
  let frontier = [...names.keys()].filter(n => !incoming.has(n));
  if (!frontier.length) frontier = [...names.keys()].slice(0, 1);
  frontier.forEach(n => depth.set(n, 0));
  for (let d = 0; frontier.length && d < 50; d++) {
    const next = [];
    for (const e of edges) if (frontier.includes(e.source) && !depth.has(e.destination)) { depth.set(e.destination, d + 1); next.push(e.destination); }
    frontier = next;
  }
  for (const n of names.keys()) if (!depth.has(n)) depth.set(n, 0);
  const columns = [];
  for (const [n, d] of depth) (columns[d] ||= []).push(n);
  const pos = new Map();
  const width = 1200, height = 620;
  columns.forEach((col, c) => {
    col.sort();
    col.forEach((n, i) => pos.set(n, { x: 110 + c * ((width - 220) / Math.max(1, columns.length - 1)), y: (i + 1) * height / (col.length + 1) }));
  });
  return { names, pos };
}

function graphSvg(traffic) {
  const edges = traffic.edges;
  if (!edges.length) return '<text x="40" y="60" class="muted">No traffic in the last half minute.</text>';
  const { names, pos } = layout(edges);
  let out = '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#777"/></marker></defs>';
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    const x1 = a.x + 70, y1 = a.y, x2 = b.x - 72, y2 = b.y;
    const mx = (x1 + x2) / 2;
    const label = `${rate(e.rps)} rps · ${pct(e.success_rate)} · p99 ${ms(e.p99_ms)}` + (e.retries ? ` · ${rate(e.retries / traffic.window_secs)} retries/s` : "");
    out += `<g class="edge ${health(e)}" data-source="${esc(e.source)}" data-destination="${esc(e.destination)}" data-rps="${e.rps}" data-success="${e.success_rate ?? ""}">
      <title>${esc(e.source)} → ${esc(e.destination)} (${esc(e.protocol)}): ${e.requests} calls, ${e.errors} failed, ${e.retries} retries in ${traffic.window_secs.toFixed(0)} s</title>
      <path d="M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}" marker-end="url(#arrow)"/>
      <text x="${mx}" y="${(y1 + y2) / 2 - 6}" text-anchor="middle">${esc(label)}</text></g>`;
  }
  for (const [n, info] of names) {
    const p = pos.get(n);
    const text = info.client ? `<text x="0" y="5" text-anchor="middle">${esc(n)}</text>`
      : `<a href="#/service/${encodeURIComponent(n)}"><text x="0" y="5" text-anchor="middle">${esc(n)}</text></a>`;
    out += `<g class="node${info.client ? " client" : ""}" data-name="${esc(n)}" transform="translate(${p.x},${p.y})"><rect x="-70" y="-18" width="140" height="36"/>${text}</g>`;
  }
  return out;
}

async function graph() {
  const traffic = await api("traffic");
  let svg = document.getElementById("graph");
  if (!svg) {
    main.innerHTML = `<h1>Topology</h1>
      <p class="legend muted"><span class="ok">■ ≥ 99% success</span><span class="warn">■ ≥ 95%</span><span class="bad">■ lower, or a destination node down</span>
      Dashed: a node calling as itself. Rates over the last <b id="window"></b> s.</p>
      <svg id="graph" viewBox="0 0 1200 640" preserveAspectRatio="xMidYMid meet"></svg>
      <p class="muted" id="answered"></p>`;
    svg = document.getElementById("graph");
  }
  svg.innerHTML = graphSvg(traffic);
  document.getElementById("window").textContent = traffic.window_secs.toFixed(0);
  document.getElementById("answered").textContent = "Summaries from " + traffic.answered.join(", ") +
    (traffic.missing.length ? "; no answer from " + traffic.missing.join(", ") : "");
}

// ---- a service ----
// A line diff of two texts, showing the changed lines with three lines of context.
function diff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const ops = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { ops.push([" ", x[i]]); i++; j++; }
    else if (j < m && (i >= n || lcs[i][j + 1] > lcs[i + 1][j])) { ops.push(["+", y[j]]); j++; }
    else { ops.push(["-", x[i]]); i++; }
  }
  const near = ops.map((_, k) => ops.slice(Math.max(0, k - 3), k + 4).some(o => o[0] !== " "));
  if (!near.includes(true)) return '<span class="muted">The two revisions have the same content.</span>';
  let out = "", skipped = false;
  ops.forEach(([op, line], k) => {
    if (!near[k]) { skipped = true; return; }
    if (skipped) { out += '<span class="muted">…</span>\n'; skipped = false; }
    if (op === "+") out += `<span class="add">+ ${esc(line)}</span>`;
    else if (op === "-") out += `<span class="del">- ${esc(line)}</span>`;
    else out += "  " + esc(line) + "\n";
  });
  return out;
}

async function service(name) {
  const enc = encodeURIComponent(name);
  const [services, traffic, paths, routes, policies] = await Promise.all(
    [api("services"), api("traffic"), api("traffic/paths/" + enc), api("routes"), api("policies")]);
  const s = services.find(x => x.name === name);
  // From the lists: asking for a document that does not exist would be a 404.
  const route = routes.find(d => d.service === name) || null;
  const history = route ? await api("routes/" + encodeURIComponent(route.name) + "/history") : [];
  const policy = policies.find(d => d.service === name) || null;
  const callers = traffic.edges.filter(e => e.destination === name);
  const callees = traffic.edges.filter(e => e.source === name);
  const edgeRows = list => list.map(e => `<tr><td>${esc(e.source)}</td><td>${esc(e.destination)}</td><td class="num">${rate(e.rps)}</td><td class="num ${health(e)}">${pct(e.success_rate)}</td><td class="num">${ms(e.p50_ms)}</td><td class="num">${ms(e.p99_ms)}</td><td class="num">${rate(e.retries / traffic.window_secs)}</td></tr>`).join("");
  const keep = document.getElementById("revA") ? [document.getElementById("revA").value, document.getElementById("revB").value] : null;
  main.innerHTML = `<h1>Service ${esc(name)}</h1>
    <div class="cards">
    <div class="card"><h2>Instances</h2>${s ? `<p class="muted">Virtual IP ${esc(s.vip ?? "–")}</p>
      <table><tr><th>Node</th><th>Address</th><th>Labels</th><th>Health</th></tr>
      ${s.instances.map(i => `<tr><td>${esc(i.node)}</td><td>${esc(i.addr)}:${esc(i.port)}</td><td>${esc(Object.entries(i.labels || {}).map(([k, v]) => k + "=" + v).join(", "))}</td><td class="${i.healthy ? "ok" : "bad"}">${i.healthy ? "healthy" : "unhealthy"}</td></tr>`).join("")}</table>` : '<p class="muted">Not in the catalog.</p>'}
      ${route && route.spec.subsets ? `<h2>Subsets</h2><table><tr><th>Subset</th><th>Labels</th></tr>${Object.entries(route.spec.subsets).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(Object.entries(v).map(([a, b]) => a + "=" + b).join(", "))}</td></tr>`).join("")}</table>` : ""}
    </div>
    <div class="card"><h2>Traffic (last ${traffic.window_secs.toFixed(0)} s)</h2>
      <table><tr><th>From</th><th>To</th><th class="num">Req/s</th><th class="num">Success</th><th class="num">p50</th><th class="num">p99</th><th class="num">Retries/s</th></tr>${edgeRows(callers)}${edgeRows(callees)}</table>
      <h2>Top paths by error rate</h2>
      <table id="paths"><tr><th>Path</th><th class="num">Requests</th><th class="num">Errors</th></tr>
      ${paths.map(p => `<tr><td>${esc(p.path)}</td><td class="num">${p.requests}</td><td class="num ${p.errors ? "bad" : ""}">${p.errors}</td></tr>`).join("") || '<tr><td colspan="3" class="muted">No HTTP requests seen.</td></tr>'}</table>
    </div>
    <div class="card"><h2>Route</h2>${route ? `<p>Revision ${esc(route.id ?? route.revision)}, applied ${esc(route.applied_at)} at ${esc(route.origin)}</p><pre>${esc(JSON.stringify(route.spec, null, 2))}</pre>
      <h2>Revisions</h2><table><tr><th>Id</th><th>Applied</th><th>At</th><th></th></tr>${history.map(h => `<tr><td>${esc(h.id ?? h.revision)}</td><td>${esc(h.applied_at)}</td><td>${esc(h.origin)}</td><td class="muted">${h.superseded_by ? "superseded by " + esc(h.superseded_by) : ""}</td></tr>`).join("")}</table>
      ${history.length > 1 ? `<p>Diff <select id="revA">${history.map(h => `<option>${esc(h.id ?? h.revision)}</option>`).join("")}</select> → <select id="revB">${history.map(h => `<option>${esc(h.id ?? h.revision)}</option>`).join("")}</select></p><pre class="diff" id="diff"></pre>` : ""}`
      : '<p class="muted">No route: calls are spread over every healthy instance.</p>'}</div>
    <div class="card"><h2>Policy</h2>${policy ? `<p>Revision ${esc(policy.id ?? policy.revision)}, applied ${esc(policy.applied_at)}</p><pre>${esc(JSON.stringify(policy.spec, null, 2))}</pre>` : '<p class="muted">No policy: the mesh default applies.</p>'}</div>
    </div>`;
  const a = document.getElementById("revA"), b = document.getElementById("revB");
  if (a && b) {
    const ids = history.map(h => String(h.id ?? h.revision));
    a.value = keep && ids.includes(keep[0]) ? keep[0] : ids[Math.max(0, ids.length - 2)];
    b.value = keep && ids.includes(keep[1]) ? keep[1] : ids[ids.length - 1];
    const show = async () => {
      const [ra, rb] = await Promise.all([a.value, b.value].map(id => api(`routes/${encodeURIComponent(route.name)}?revision=${encodeURIComponent(id)}`)));
      document.getElementById("diff").innerHTML = diff(JSON.stringify(ra.spec, null, 2), JSON.stringify(rb.spec, null, 2));
    };
    a.onchange = b.onchange = show;
    await show();
  }
}

// ---- lists ----
async function documents(kind) {
  const docs = await api(kind);
  const title = kind === "routes" ? "Routes" : "Policies";
  main.innerHTML = `<h1>${title}</h1><div class="card"><table id="${kind}"><tr><th>Service</th><th>Revision</th><th>Applied</th><th>At</th></tr>
    ${docs.map(d => `<tr><td><a href="#/service/${encodeURIComponent(d.service)}">${esc(d.service)}</a></td><td>${esc(d.id ?? d.revision)}</td><td>${esc(d.applied_at)}</td><td>${esc(d.origin)}</td></tr>`).join("") || `<tr><td colspan="4" class="muted">No ${kind}.</td></tr>`}
    </table></div>`;
}

// ---- the router ----
async function render() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, arg] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === (page || "overview"));
  try {
    if (page === "graph") await graph();
    else if (page === "service" && arg) await service(decodeURIComponent(arg));
    else if (page === "routes" || page === "policies") await documents(page);
    else await overview();
    stamp();
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach meshd: " + e.message;
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => { await render(); schedule(); }, REFRESH_MS);
}

window.addEventListener("hashchange", () => { const g = document.getElementById("graph"); if (g) g.remove(); render().then(schedule); });
api("status").then(s => { document.getElementById("node").textContent = "node " + s.node; }).catch(() => {});
render().then(schedule);
