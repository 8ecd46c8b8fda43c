#include "dashboard.hpp"

namespace troupe::node {

namespace {

// The page reads only the JSON API (same origin), so it shows what troupectl shows. Every
// value from the API is inserted as text (textContent / createElementNS), never as markup.
constexpr const char* kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Troupe</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d232b; --dim:#6a7480; --line:#e2e6ea;
          --up:#2f9e44; --joining:#1c7ed6; --leaving:#f08c00; --exiting:#f08c00; --down:#e03131; --removed:#868e96; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; background: var(--bg); color: var(--ink); }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; background: #1d232b; color: #fff; }
  header h1 { margin: 0; font-size: 18px; letter-spacing: .5px; }
  header .meta { color: #aeb7c2; font-size: 13px; }
  header .meta b { color: #fff; font-weight: 600; }
  main { padding: 20px 24px; display: grid; gap: 20px; grid-template-columns: minmax(420px, 1fr) minmax(420px, 1fr); }
  @media (max-width: 960px) { main { grid-template-columns: 1fr; } }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
  h2 { margin: 0 0 12px; font-size: 15px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--dim); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
  td.addr { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; color: var(--dim);
            max-width: 180px; overflow: hidden; text-overflow: ellipsis; }
  .pill { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
  .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; vertical-align: middle; }
  .tag { font-size: 11px; color: var(--dim); border: 1px solid var(--line); border-radius: 4px; padding: 0 4px; margin-left: 6px; }
  .type { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 14px; }
  .type h3 { margin: 0 0 6px; font-size: 14px; }
  .legend div { margin: 2px 0; }
  .legend .n { font-variant-numeric: tabular-nums; color: var(--dim); margin-left: 6px; }
  #error { display: none; margin: 12px 24px 0; padding: 8px 12px; border-radius: 6px; background: #fff0f0; color: #c92a2a; border: 1px solid #ffc9c9; }
  .empty { color: var(--dim); }
</style>
</head>
<body>
<header><h1>Troupe</h1><span class="meta">node <b id="self">…</b> · leader <b id="leader">…</b> · <span id="counts"></span> · updated <span id="updated">never</span></span></header>
<div id="error"></div>
<main>
  <section><h2>Members</h2>
    <table><thead><tr><th>Name</th><th>Status</th><th>Reachability</th><th>Age (#1 oldest)</th><th>Remoting</th></tr></thead>
    <tbody id="members"><tr><td colspan="5" class="empty">loading…</td></tr></tbody></table>
  </section>
  <section><h2>Shards</h2><div id="shards"><span class="empty">loading…</span></div></section>
</main>
<script>
"use strict";
const palette = ["#1c7ed6","#2f9e44","#f08c00","#ae3ec9","#0c8599","#e8590c","#5c940d","#d6336c","#3b5bdb","#9c36b5"];
const colorOf = new Map();
function color(name) {
  if (!colorOf.has(name)) colorOf.set(name, palette[colorOf.size % palette.length]);
  return colorOf.get(name);
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}
async function getJson(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
// A region address names its node's remoting endpoint: the member whose remoting address starts it.
function ownerName(region, members) {
  if (!region) return null;
  for (const m of members) if (m.remoting && region.startsWith(m.remoting)) return m.name;
  return region;
}
function drawMembers(members) {
  const body = document.getElementById("members");
  body.replaceChildren();
  members.sort((a, b) => (a.up_order || 1e9) - (b.up_order || 1e9) || a.name.localeCompare(b.name));
  for (const m of members) {
    const tr = el("tr");
    const name = el("td");
    const dot = el("span", undefined, "dot"); dot.style.background = color(m.name);
    name.append(dot, el("span", m.name));
    if (m.self) name.append(el("span", "this node", "tag"));
    if (m.leader) name.append(el("span", "leader", "tag"));
    if (m.degraded) name.append(el("span", "degraded", "tag"));
    const st = el("td"); const pill = el("span", m.status, "pill");
    pill.style.background = getComputedStyle(document.documentElement).getPropertyValue("--" + m.status) || "#868e96";
    st.append(pill);
    const reach = el("td", m.liveness);
    reach.style.color = m.liveness === "alive" ? "#2f9e44" : m.liveness === "suspect" ? "#f08c00" : "#e03131";
    const addr = el("td", m.remoting, "addr"); addr.title = m.remoting;
    tr.append(name, st, reach, el("td", m.up_order ? "#" + m.up_order : "–"), addr);
    body.append(tr);
  }
  const self = members.find(m => m.self), leader = members.find(m => m.leader);
  document.getElementById("self").textContent = self ? self.name : "?";
  document.getElementById("leader").textContent = leader ? leader.name : "none";
  const up = members.filter(m => m.status === "up").length;
  document.getElementById("counts").textContent = members.length + " members, " + up + " up";
}
function ring(type, info, members) {
  const size = 168, r = 70, c = size / 2, w = 22;
  const s = svg("svg", {width: size, height: size, viewBox: "0 0 " + size + " " + size, role: "img"});
  s.append(svg("circle", {cx: c, cy: c, r: r, fill: "none", stroke: "#e9ecef", "stroke-width": w}));
  const n = info.num_shards;
  // Consecutive shards with one owner form one arc.
  const owners = new Array(n).fill(null);
  for (const sh of info.shards) owners[sh.shard] = ownerName(sh.region, members);
  let start = 0;
  for (let i = 1; i <= n; i++) {
    if (i < n && owners[i] === owners[start]) continue;
    if (owners[start] !== null) {
      const a0 = 2 * Math.PI * start / n - Math.PI / 2, a1 = 2 * Math.PI * i / n - Math.PI / 2 - (n > 1 ? 0.0001 : 0);
      const large = (i - start) * 2 > n ? 1 : 0;
      const d = n === i - start
        ? `M ${c} ${c - r} A ${r} ${r} 0 1 1 ${c - 0.01} ${c - r}`
        : `M ${c + r * Math.cos(a0)} ${c + r * Math.sin(a0)} A ${r} ${r} 0 ${large} 1 ${c + r * Math.cos(a1)} ${c + r * Math.sin(a1)}`;
      s.append(svg("path", {d: d, fill: "none", stroke: color(owners[start]), "stroke-width": w}));
    }
    start = i;
  }
  const label = svg("text", {x: c, y: c + 5, "text-anchor": "middle", "font-size": 14, fill: "#1d232b"});
  label.textContent = n + " shards";
  s.append(label);
  return s;
}
function drawShards(shards, members) {
  const box = document.getElementById("shards");
  box.replaceChildren();
  const types = Object.keys(shards);
  if (types.length === 0) { box.append(el("span", "no entity types on this node", "empty")); return; }
  for (const type of types) {
    const info = shards[type];
    const row = el("div", undefined, "type");
    row.append(ring(type, info, members));
    const legend = el("div", undefined, "legend");
    legend.append(el("h3", type));
    const counts = new Map();
    for (const sh of info.shards) {
      const o = ownerName(sh.region, members);
      if (o) counts.set(o, (counts.get(o) || 0) + 1);
    }
    for (const [name, k] of [...counts].sort()) {
      const line = el("div"); const dot = el("span", undefined, "dot"); dot.style.background = color(name);
      line.append(dot, el("span", name), el("span", k + " shards", "n"));
      legend.append(line);
    }
    const moving = info.shards.filter(s => s.moving).length;
    if (info.unallocated) legend.append(el("div", info.unallocated + " without a home", "n"));
    if (moving) legend.append(el("div", moving + " moving", "n"));
    row.append(legend);
    box.append(row);
  }
}
async function refresh() {
  const err = document.getElementById("error");
  try {
    const members = await getJson("/api/v1/members");
    drawMembers(members);
    let shards = {};
    try { shards = await getJson("/api/v1/shards"); } catch (e) { /* a node without sharding */ }
    drawShards(shards, members);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    err.style.display = "none";
  } catch (e) {
    err.textContent = "cannot reach the node's admin API: " + e.message;
    err.style.display = "block";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
)PAGE";

}  // namespace

const std::string& dashboard_page() {
  static const std::string page(kPage);
  return page;
}

}  // namespace troupe::node
