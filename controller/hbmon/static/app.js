/* hbmon dashboard: plain JS, no build step, no external resources.
 *
 * Data: /api/v1/peers?include=health every `dashboard_refresh` seconds (numbers, RTT
 * samples), live transitions through the SSE stream /api/v1/events (states change at once,
 * resumed with Last-Event-ID after a reconnect), /api/v1/rtt once to seed the sparklines.
 * Rendering: the DOM is rebuilt only when the set or order of visible peers changes;
 * otherwise each tile is patched in place, so thousands of peers stay cheap.
 */
"use strict";

const STATES = ["DOWN", "DEGRADED", "UNKNOWN", "ADMIN_DOWN", "UP"]; // worst first
const SEVERITY = Object.fromEntries(STATES.map((s, i) => [s, i]));
const LABEL = { UP: "up", DEGRADED: "degraded", DOWN: "down", UNKNOWN: "unknown", ADMIN_DOWN: "admin down" };
const css = getComputedStyle(document.documentElement);
const COLOR = {
  UP: css.getPropertyValue("--up").trim(),
  DEGRADED: css.getPropertyValue("--degraded").trim(),
  DOWN: css.getPropertyValue("--down").trim(),
  UNKNOWN: css.getPropertyValue("--unknown").trim(),
  ADMIN_DOWN: css.getPropertyValue("--admin").trim(),
};
const DOTS_ABOVE = 300; // "auto" view switches to dots beyond this many visible peers
const MAX_SAMPLES = 120;
const MAX_LOG = 400;

const $ = (id) => document.getElementById(id);
const ui = {
  chips: $("state-chips"), conn: $("conn"), search: $("search"), groupBy: $("group-by"),
  sort: $("sort"), density: $("density"), count: $("visible-count"), updated: $("updated"),
  grid: $("grid"), detail: $("detail"), switches: $("switches"), log: $("event-log"),
  eventCount: $("event-count"), tooltip: $("tooltip"), dialog: $("token-dialog"),
  tokenForm: $("token-form"), tokenInput: $("token-input"),
};

const st = {
  peers: new Map(),      // name -> row from /api/v1/peers?include=health
  rtt: new Map(),        // name -> [µs | null], oldest first
  show: new Set(STATES), // state filter
  search: "", groupBy: "group", sort: "name", density: "auto",
  selected: null, collapsed: new Set(),
  lastEventId: 0, events: 0,
  layoutKey: "", tiles: new Map(), tileSig: new Map(),
  refreshMs: 2000, token: sessionStorage.getItem("hbmon-token") || null,
  renderQueued: false, refreshTimer: null,
};
window.hbmon = st; // handy in the browser console (and for the headless test)

// ---- API ------------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (st.token) h.Authorization = "Bearer " + st.token;
  return h;
}

async function askToken() {
  if (ui.dialog.open) return new Promise((r) => ui.dialog.addEventListener("close", r, { once: true }));
  ui.dialog.showModal();
  await new Promise((r) => ui.dialog.addEventListener("close", r, { once: true }));
  st.token = ui.tokenInput.value.trim() || null;
  if (st.token) sessionStorage.setItem("hbmon-token", st.token);
}

async function api(path) {
  for (;;) {
    const resp = await fetch(path, { headers: headers(), cache: "no-store" });
    if (resp.status === 401) { await askToken(); continue; }
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return resp.json();
  }
}

// ---- formatting -----------------------------------------------------------------------

function fmtRtt(us) {
  if (us == null || us === 0) return "–";
  if (us < 1000) return `${us} µs`;
  if (us < 100000) return `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;
  return `${Math.round(us / 1000)} ms`;
}
const fmtLoss = (r) => (r == null ? "–" : r === 0 ? "0%" : r < 0.001 ? "<0.1%" : `${(r * 100).toFixed(r < 0.1 ? 1 : 0)}%`);
const pad = (n) => String(n).padStart(2, "0");
function fmtTime(sec) {
  const d = new Date(sec * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtAgo(sec) {
  if (!sec) return "never";
  const s = Math.max(0, Date.now() / 1000 - sec);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ---- sparklines -----------------------------------------------------------------------

function drawSpark(canvas, samples, color) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const vals = samples.filter((v) => v != null);
  if (!vals.length) return;
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < hi * 0.1) { const mid = (hi + lo) / 2; lo = mid * 0.9; hi = mid * 1.1 + 1; }
  const n = Math.max(samples.length, 2);
  const x = (i) => (i / (n - 1)) * (w - 2 * dpr) + dpr;
  const y = (v) => h - dpr - ((v - lo) / (hi - lo)) * (h - 2 * dpr);
  ctx.lineWidth = 1.4 * dpr;
  ctx.strokeStyle = color;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let pen = false;
  samples.forEach((v, i) => {
    if (v == null) { pen = false; return; }
    if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
    pen = true;
  });
  ctx.stroke();
  // gaps (no response in that interval) as faint red ticks along the bottom
  ctx.fillStyle = COLOR.DOWN + "88";
  samples.forEach((v, i) => { if (v == null) ctx.fillRect(x(i) - dpr, h - 2 * dpr, 2 * dpr, 2 * dpr); });
  const last = samples[samples.length - 1];
  if (last != null) {
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(x(samples.length - 1), y(last), 2 * dpr, 0, Math.PI * 2);
    ctx.fill();
  }
}

// ---- data -----------------------------------------------------------------------------

function ingest(rows, { sample }) {
  const next = new Map();
  for (const row of rows) {
    const prev = st.peers.get(row.name);
    if (sample && row.health) {
      const ring = st.rtt.get(row.name) || [];
      // a BFD session has no RTT: no samples (an empty sparkline, not a flat zero)
      const answering = (row.state === "UP" || row.state === "DEGRADED") && row.health.rx_count > 0 && row.kind !== "bfd";
      ring.push(answering ? row.health.rtt_last_us : null);
      if (ring.length > MAX_SAMPLES) ring.splice(0, ring.length - MAX_SAMPLES);
      st.rtt.set(row.name, ring);
    }
    // A transition from the stream may be newer than this read: keep the newer one.
    if (prev && prev.since > row.since) { row.state = prev.state; row.since = prev.since; row.reason = prev.reason; }
    next.set(row.name, row);
  }
  for (const name of st.rtt.keys()) if (!next.has(name)) st.rtt.delete(name);
  st.peers = next;
}

async function refresh() {
  clearTimeout(st.refreshTimer);
  try {
    const [peers, switches] = await Promise.all([
      api("/api/v1/peers?include=health"), api("/api/v1/switches"),
    ]);
    ingest(peers.peers, { sample: true });
    renderSwitches(switches.switches);
    ui.updated.textContent = `updated ${fmtTime(Date.now() / 1000)}`;
    scheduleRender();
  } catch (err) {
    ui.updated.textContent = `refresh failed: ${err.message}`;
  } finally {
    st.refreshTimer = setTimeout(refresh, st.refreshMs);
  }
}

// ---- rendering ------------------------------------------------------------------------

function scheduleRender() {
  if (st.renderQueued) return;
  st.renderQueued = true;
  requestAnimationFrame(() => { st.renderQueued = false; render(); });
}

function visiblePeers() {
  const q = st.search.toLowerCase();
  const out = [];
  for (const p of st.peers.values()) {
    if (!st.show.has(p.state || "UNKNOWN")) continue;
    if (q && !(p.name.toLowerCase().includes(q) || p.address.includes(q)
      || (p.group || "").toLowerCase().includes(q) || p.switch.toLowerCase().includes(q))) continue;
    out.push(p);
  }
  const by = {
    name: (a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }),
    severity: (a, b) => SEVERITY[a.state] - SEVERITY[b.state] || by.name(a, b),
    rtt: (a, b) => ((b.health?.rtt_last_us) || 0) - ((a.health?.rtt_last_us) || 0) || by.name(a, b),
    loss: (a, b) => ((b.health?.loss_ratio) || 0) - ((a.health?.loss_ratio) || 0) || by.name(a, b),
  };
  out.sort(by[st.sort]);
  return out;
}

function groupKey(p) {
  if (st.groupBy === "group") return p.group || "(no group)";
  if (st.groupBy === "switch") return p.switch;
  if (st.groupBy === "state") return p.state;
  return "all peers";
}

function groupsOf(list) {
  const groups = new Map();
  for (const p of list) {
    const k = groupKey(p);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(p);
  }
  const keys = [...groups.keys()];
  if (st.groupBy === "state") keys.sort((a, b) => SEVERITY[a] - SEVERITY[b]);
  else keys.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  return keys.map((k) => [k, groups.get(k)]);
}

function counts(list) {
  const c = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const p of list) c[p.state || "UNKNOWN"]++;
  return c;
}

function renderChips() {
  const c = counts(st.peers.values());
  const html = [`<span class="chip total"><span class="n">${st.peers.size}</span> peers</span>`];
  for (const s of ["UP", "DEGRADED", "DOWN", "UNKNOWN", "ADMIN_DOWN"]) {
    html.push(`<button class="chip${st.show.has(s) ? "" : " off"}" data-state="${s}" title="Show/hide ${LABEL[s]}">`
      + `<span class="sw" style="background:${COLOR[s]}"></span><span class="n" data-count="${s}">${c[s]}</span> ${LABEL[s]}</button>`);
  }
  const next = html.join("");
  if (ui.chips.innerHTML !== next) ui.chips.innerHTML = next;
}

function groupHead(key, members) {
  const c = counts(members);
  const total = members.length;
  const bar = STATES.filter((s) => c[s]).map((s) => `<span style="width:${(c[s] / total) * 100}%;background:${COLOR[s]}"></span>`).join("");
  const bad = c.DOWN ? `<span class="bad">${c.DOWN} down</span>` : "";
  const deg = c.DEGRADED ? `<span style="color:var(--degraded)">${c.DEGRADED} degraded</span>` : "";
  return `<span class="caret">▾</span><span class="name">${esc(key)}</span><span class="num">${total}</span>`
    + `<span class="bar">${bar}</span>${bad}${deg}`;
}

function tileSig(p, dots) {
  const h = p.health || {};
  const b = h.bfd ? `|${h.bfd.state}|${h.bfd.remote_state}|${h.bfd.tx_interval_us}` : "";
  return dots ? `${p.state}` : `${p.state}|${h.rtt_last_us}|${h.loss_ratio}|${h.rx_count}${b}`;
}

function makeTile(p, dots) {
  const el = document.createElement("div");
  el.dataset.name = p.name;
  if (dots) {
    el.className = "dot-tile";
  } else {
    el.className = "tile";
    // a BFD session (docs/bfd.md) shows its RFC 5880 state and negotiated interval where a
    // heartbeat peer shows RTT and loss
    const bfd = p.kind === "bfd";
    el.innerHTML = `<div class="top"><span class="name"></span>${bfd ? '<span class="kind" title="BFD session (RFC 5880)">BFD</span>' : ""}<span class="st"></span></div>`
      + (bfd ? `<div class="meta"><span>BFD <b class="rtt"></b></span><span>tx <b class="loss"></b></span></div><canvas></canvas>`
        : `<div class="meta"><span>RTT <b class="rtt"></b></span><span>loss <b class="loss"></b></span></div><canvas></canvas>`);
    el.querySelector(".name").textContent = p.name;
  }
  return el;
}

function patchTile(el, p, dots, force) {
  const sig = tileSig(p, dots);
  if (!force && st.tileSig.get(p.name) === sig) return;
  st.tileSig.set(p.name, sig);
  const state = p.state || "UNKNOWN";
  const base = dots ? "dot-tile" : "tile";
  el.className = `${base} s-${state}${st.selected === p.name ? " sel" : ""}${el.classList.contains("flash") ? " flash" : ""}`;
  el.dataset.state = state;
  el.setAttribute("aria-label", `${p.name}: ${LABEL[state]}`);
  if (dots) return;
  const h = p.health || {};
  el.querySelector(".st").textContent = state === "ADMIN_DOWN" ? "ADMIN" : state;
  if (p.kind === "bfd") {
    const b = h.bfd || {};
    el.querySelector(".rtt").textContent = `${b.state ?? "–"}/${b.remote_state ?? "–"}`;
    el.querySelector(".loss").textContent = b.tx_interval_us ? `${b.tx_interval_us / 1000} ms` : "–";
  } else {
    el.querySelector(".rtt").textContent = state === "DOWN" ? "–" : fmtRtt(h.rtt_last_us);
    el.querySelector(".loss").textContent = fmtLoss(h.loss_ratio);
  }
  drawSpark(el.querySelector("canvas"), st.rtt.get(p.name) || [], COLOR[state]);
}

function render() {
  renderChips();
  const list = visiblePeers();
  const dots = st.density === "dots" || (st.density === "auto" && list.length > DOTS_ABOVE);
  const groups = groupsOf(list);
  ui.count.textContent = list.length === st.peers.size ? `${list.length} shown` : `${list.length} of ${st.peers.size} shown`;
  const key = `${dots}|${st.groupBy}|` + groups.map(([k, m]) => k + ":" + m.map((p) => p.name).join(",")).join(";");
  if (key !== st.layoutKey) {
    st.layoutKey = key;
    st.tiles.clear();
    st.tileSig.clear();
    const frag = document.createDocumentFragment();
    if (!list.length) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = st.peers.size ? "No peer matches the filters." : "No peers yet. Add some with `hbmon peers add` or POST /api/v1/peers.";
      frag.appendChild(empty);
    }
    for (const [gk, members] of groups) {
      const sec = document.createElement("section");
      sec.className = "group" + (st.collapsed.has(gk) ? " collapsed" : "");
      sec.dataset.group = gk;
      const head = document.createElement("div");
      head.className = "group-head";
      sec.appendChild(head);
      const tiles = document.createElement("div");
      tiles.className = "tiles" + (dots ? " dots" : "");
      for (const p of members) {
        const el = makeTile(p, dots);
        st.tiles.set(p.name, el);
        tiles.appendChild(el);
      }
      sec.appendChild(tiles);
      frag.appendChild(sec);
    }
    ui.grid.replaceChildren(frag);
  }
  // group headers and tiles are patched in place
  const byGroup = new Map(groups);
  for (const sec of ui.grid.querySelectorAll("section.group")) {
    const members = byGroup.get(sec.dataset.group) || [];
    const html = groupHead(sec.dataset.group, members);
    const head = sec.firstElementChild;
    if (head.innerHTML !== html) head.innerHTML = html;
  }
  const collapsedGroups = new Set([...ui.grid.querySelectorAll("section.group.collapsed")].map((s) => s.dataset.group));
  for (const p of list) {
    if (collapsedGroups.has(groupKey(p))) continue;
    const el = st.tiles.get(p.name);
    if (el) patchTile(el, p, dots, false);
  }
  if (st.selected) renderDetail(false);
  document.body.dataset.ready = "1";
}

function renderSwitches(switches) {
  ui.switches.innerHTML = switches.map((s) => `<li class="${s.connected ? "ok" : ""}" data-switch="${esc(s.name)}" data-connected="${s.connected}">`
    + `<span class="dot"></span><span class="name">${esc(s.name)}</span><span class="badge b-info">${esc(s.kind)}</span>`
    + `<span class="info" title="${esc(s.last_error || "")}">${s.peers} peers · `
    + `${s.connected ? "polled " + fmtAgo(s.last_poll) : `<span style="color:var(--down)">${esc(s.last_error || "disconnected")}</span>`}</span></li>`).join("")
    || `<li class="muted">no switches</li>`;
}

// ---- detail panel ---------------------------------------------------------------------

async function select(name) {
  st.selected = name;
  for (const el of ui.grid.querySelectorAll(".sel")) el.classList.remove("sel");
  const el = st.tiles.get(name);
  if (el) el.classList.add("sel");
  renderDetail(true);
}

function bfdDetail(b) {
  if (!b) return "";
  const ms = (us) => (us ? `${us / 1000} ms` : "–");
  return `<dl class="bfd"><dt>BFD</dt><dd>${esc(b.state)} (diag ${b.diag})</dd>`
    + `<dt>remote</dt><dd>${esc(b.remote_state ?? "–")}${b.remote_diag ? ` (diag ${b.remote_diag})` : ""}</dd>`
    + `<dt>disc</dt><dd>${b.local_discriminator ?? "–"}</dd><dt>remote disc</dt><dd>${b.remote_discriminator ?? "–"}</dd>`
    + `<dt>tx</dt><dd>${ms(b.tx_interval_us)}${b.poll ? " (poll)" : ""}</dd><dt>detect</dt><dd>${ms(b.detect_time_us)}</dd></dl>`;
}

async function renderDetail(fetchHistory) {
  const p = st.peers.get(st.selected);
  if (!p) { ui.detail.hidden = true; st.selected = null; return; }
  const h = p.health || {};
  ui.detail.hidden = false;
  let hist = ui.detail.querySelector(".history");
  const histHtml = hist ? hist.innerHTML : "";
  ui.detail.innerHTML = `<h3><span class="badge b-${p.state}">${LABEL[p.state]}</span>${esc(p.name)}`
    + `<button class="close" title="Close">✕</button></h3>`
    + `<div class="muted">${esc(p.address)} · ${esc(p.switch)}${p.group ? " · " + esc(p.group) : ""} · slot ${p.index ?? "–"} · ${p.kind === "bfd" ? "BFD session" : "id " + p.peer_id}</div>`
    + bfdDetail(h.bfd)
    + `<dl><dt>since</dt><dd>${fmtAgo(p.since)}</dd><dt>reason</dt><dd>${esc(p.reason || "")}</dd>`
    + `<dt>${p.state === "DOWN" ? "last RTT" : "RTT"}</dt><dd>${fmtRtt(h.rtt_last_us)}</dd><dt>avg</dt><dd>${fmtRtt(h.rtt_avg_us)}</dd>`
    + `<dt>min</dt><dd>${fmtRtt(h.rtt_min_us)}</dd><dt>max</dt><dd>${fmtRtt(h.rtt_max_us)}</dd>`
    + `<dt>rx</dt><dd>${h.rx_count ?? "–"}</dd><dt>tx</dt><dd>${h.tx_count ?? "–"}</dd>`
    + `<dt>missed</dt><dd>${h.miss_count ?? "–"}</dd><dt>dup</dt><dd>${h.dup_count ?? "–"}</dd>`
    + `<dt>loss</dt><dd>${fmtLoss(h.loss_ratio)}</dd><dt>status</dt><dd>${["healthy", "degraded", "draining"][h.reported_status] ?? h.reported_status ?? "–"}</dd></dl>`
    + `<canvas></canvas><div class="caption"><span>RTT, last ${(st.rtt.get(p.name) || []).length} samples</span><span class="range"></span></div>`
    + `<ol class="event-log history">${histHtml}</ol>`;
  ui.detail.querySelector(".close").onclick = () => {
    st.selected = null; ui.detail.hidden = true;
    for (const el of ui.grid.querySelectorAll(".sel")) el.classList.remove("sel");
  };
  const samples = st.rtt.get(p.name) || [];
  drawSpark(ui.detail.querySelector("canvas"), samples, COLOR[p.state]);
  const vals = samples.filter((v) => v != null);
  if (vals.length) ui.detail.querySelector(".range").textContent = `${fmtRtt(Math.min(...vals))} – ${fmtRtt(Math.max(...vals))}`;
  if (fetchHistory) {
    try {
      const page = await api(`/api/v1/peers/${encodeURIComponent(p.name)}/history?limit=8`);
      hist = ui.detail.querySelector(".history");
      if (hist && st.selected === p.name) hist.innerHTML = page.events.map((e) => logItem(e, false)).join("");
    } catch (err) { /* the peer may just have been removed */ }
  }
}

// ---- events ---------------------------------------------------------------------------

function logItem(e, fresh) {
  let what;
  if (e.kind === "transition") {
    what = `<span class="peer" data-peer="${esc(e.peer)}">${esc(e.peer)}</span> `
      + `<span class="badge b-${e.old_state}">${esc(e.old_state)}</span> → <span class="badge b-${e.new_state}">${esc(e.new_state)}</span>`;
  } else if (e.kind === "switch") {
    what = `switch <b>${esc(e.switch)}</b> <span class="badge b-info">${esc(e.reason)}</span>`;
  } else {
    const verb = { peer_added: "added", peer_removed: "removed", peer_updated: "changed" }[e.kind] || e.kind;
    what = `<span class="peer" data-peer="${esc(e.peer)}">${esc(e.peer)}</span> <span class="badge b-info">${verb}</span>`;
  }
  const why = e.kind === "transition" && e.reason ? `<span class="why">${esc(e.reason)}</span>` : "";
  return `<li class="${fresh ? "new" : ""}" data-event-id="${e.id}"><span class="t">${fmtTime(e.time)}</span><span class="what">${what}</span>${why}</li>`;
}

function addToLog(events, fresh) {
  if (!events.length) return;
  ui.log.insertAdjacentHTML("afterbegin", events.map((e) => logItem(e, fresh)).reverse().join(""));
  while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
  st.events += events.length;
  ui.eventCount.textContent = `(${st.events})`;
}

let refreshSoon = null;
function onEvent(e) {
  if (e.id <= st.lastEventId) return;
  st.lastEventId = e.id;
  addToLog([e], true);
  if (e.kind === "transition" && st.peers.has(e.peer)) {
    const p = st.peers.get(e.peer);
    p.state = e.new_state; p.since = e.time; p.reason = e.reason;
    const el = st.tiles.get(e.peer);
    if (el) { el.classList.remove("flash"); void el.offsetWidth; el.classList.add("flash"); }
    scheduleRender();
  } else if (e.kind !== "transition") {
    clearTimeout(refreshSoon);
    refreshSoon = setTimeout(refresh, 250);
  }
}

function setConn(kind, text) {
  ui.conn.className = "conn " + kind;
  ui.conn.querySelector(".label").textContent = text;
}

async function stream() {
  let backoff = 500;
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (st.lastEventId) h["Last-Event-ID"] = String(st.lastEventId);
      const resp = await fetch("/api/v1/events", { headers: h, cache: "no-store" });
      if (resp.status === 401) { await askToken(); continue; }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      setConn("live", "live");
      backoff = 500;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = [];
          for (const line of frame.split("\n")) {
            if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) {
            try { onEvent(JSON.parse(data.join("\n"))); } catch (err) { console.warn("bad event", err); }
          }
        }
      }
      setConn("down", "reconnecting");
    } catch (err) {
      setConn("down", "reconnecting");
    }
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

// ---- interaction ----------------------------------------------------------------------

ui.chips.addEventListener("click", (ev) => {
  const chip = ev.target.closest("button[data-state]");
  if (!chip) return;
  const s = chip.dataset.state;
  if (ev.shiftKey || ev.altKey) { st.show = new Set([s]); }
  else if (st.show.has(s)) st.show.delete(s); else st.show.add(s);
  if (!st.show.size) st.show = new Set(STATES);
  scheduleRender();
});
let searchTimer = null;
ui.search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { st.search = ui.search.value.trim(); scheduleRender(); }, 120);
});
for (const [el, key] of [[ui.groupBy, "groupBy"], [ui.sort, "sort"], [ui.density, "density"]]) {
  el.addEventListener("change", () => { st[key] = el.value; localStorage.setItem("hbmon-" + key, el.value); scheduleRender(); });
  const saved = localStorage.getItem("hbmon-" + key);
  if (saved && [...el.options].some((o) => o.value === saved)) { el.value = saved; st[key] = saved; }
}
ui.grid.addEventListener("click", (ev) => {
  const head = ev.target.closest(".group-head");
  if (head) {
    const sec = head.parentElement;
    const g = sec.dataset.group;
    if (st.collapsed.has(g)) st.collapsed.delete(g); else st.collapsed.add(g);
    sec.classList.toggle("collapsed");
    st.tileSig.clear();
    scheduleRender();
    return;
  }
  const tile = ev.target.closest("[data-name]");
  if (tile) select(tile.dataset.name);
});
ui.log.addEventListener("click", (ev) => {
  const peer = ev.target.closest("[data-peer]");
  if (peer && st.peers.has(peer.dataset.peer)) select(peer.dataset.peer);
});
ui.grid.addEventListener("mousemove", (ev) => {
  const tile = ev.target.closest("[data-name]");
  if (!tile) { ui.tooltip.hidden = true; return; }
  const p = st.peers.get(tile.dataset.name);
  if (!p) return;
  const h = p.health || {};
  ui.tooltip.innerHTML = `<b>${esc(p.name)}</b> <span class="badge b-${p.state}">${LABEL[p.state]}</span><br>`
    + `<span class="muted">${esc(p.address)} · ${esc(p.switch)}${p.group ? " · " + esc(p.group) : ""}</span><br>`
    + `${p.state === "DOWN" ? "last RTT" : "RTT"} ${fmtRtt(h.rtt_last_us)} · loss ${fmtLoss(h.loss_ratio)} · since ${fmtAgo(p.since)}`;
  ui.tooltip.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - ui.tooltip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - ui.tooltip.offsetHeight - 8);
  ui.tooltip.style.left = x + "px";
  ui.tooltip.style.top = y + "px";
});
ui.grid.addEventListener("mouseleave", () => { ui.tooltip.hidden = true; });
document.addEventListener("keydown", (ev) => {
  if (ev.key === "/" && document.activeElement !== ui.search) { ev.preventDefault(); ui.search.focus(); }
  if (ev.key === "Escape") { ui.search.value = ""; st.search = ""; scheduleRender(); }
});

// ---- start ----------------------------------------------------------------------------

async function start() {
  try {
    const info = await api("/api/v1/info");
    st.refreshMs = Math.max(500, (info.dashboard_refresh || 2) * 1000);
    const [peers, rtt, history] = await Promise.all([
      api("/api/v1/peers?include=health"), api("/api/v1/rtt"), api("/api/v1/events/history?limit=100"),
    ]);
    for (const [name, samples] of Object.entries(rtt.peers)) st.rtt.set(name, samples.slice(-MAX_SAMPLES));
    ingest(peers.peers, { sample: false });
    addToLog(history.events.slice().reverse(), false);
    if (history.events.length) st.lastEventId = history.events[0].id;
  } catch (err) {
    ui.updated.textContent = `load failed: ${err.message}`;
  }
  render();
  refresh();
  stream();
}
start();
