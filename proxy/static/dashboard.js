// The proxy dashboard: one EventSource on /events, a table row per replica, four uPlot charts
// with the events marked on the time axis. Every snapshot is the whole proxy (all workers summed
// by worker 0, proxy/events.py); the page only draws what it is sent.
"use strict";

const MAX_POINTS = 900; // 15 minutes at one snapshot a second, as the server's ring
const CLASSES = ["2xx", "3xx", "4xx", "5xx", "failed"];
const CLASS_COLOURS = { "2xx": "#2e7d32", "3xx": "#1565c0", "4xx": "#f9a825", "5xx": "#c62828", failed: "#6a1b9a" };
const PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#5d4037", "#ad1457", "#9e9d24", "#37474f"];
const EVENT_COLOURS = {
  joined: "#2e7d32", left: "#c62828", ejected: "#ef6c00", back: "#2e7d32", health_down: "#c62828",
  health_up: "#2e7d32", drained: "#546e7a", undrained: "#546e7a", leaving: "#8d6e63", policy: "#1565c0",
};
const TOKEN_KEY = "asgilab-proxy-admin-token";

const data = { t: [], classes: {}, conns: [], inflight: [], p50: {}, p99: {} };
CLASSES.forEach((c) => (data.classes[c] = []));
let events = [];
let colourOf = {};
let charts = {};
let chartKey = "";
let latest = null;
let pending = false;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const notice = (text) => ($("notice").textContent = text || "");

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function colour(addr) {
  if (!(addr in colourOf)) colourOf[addr] = PALETTE[Object.keys(colourOf).length % PALETTE.length];
  return colourOf[addr];
}

// -- data ---------------------------------------------------------------------------------------
function push(snap) {
  const n = data.t.length;
  data.t.push(snap.t);
  CLASSES.forEach((c) => data.classes[c].push(snap.classes[c]));
  data.conns.push(snap.connections);
  data.inflight.push(snap.in_flight);
  const seen = new Set();
  for (const r of snap.replicas) {
    seen.add(r.addr);
    for (const key of ["p50", "p99"]) {
      if (!data[key][r.addr]) data[key][r.addr] = new Array(n).fill(null);
      data[key][r.addr].push(r[key + "_ms"]);
    }
  }
  for (const key of ["p50", "p99"])
    for (const addr in data[key]) if (!seen.has(addr)) data[key][addr].push(null);
  for (const ev of snap.events) events.push(ev);
  if (data.t.length > MAX_POINTS) {
    const drop = data.t.length - MAX_POINTS;
    data.t.splice(0, drop);
    CLASSES.forEach((c) => data.classes[c].splice(0, drop));
    data.conns.splice(0, drop);
    data.inflight.splice(0, drop);
    for (const key of ["p50", "p99"])
      for (const addr in data[key]) {
        data[key][addr].splice(0, drop);
        if (data[key][addr].every((v) => v === null)) delete data[key][addr];
      }
    events = events.filter((ev) => ev.t >= data.t[0]);
  }
  latest = snap;
}

// -- charts -------------------------------------------------------------------------------------
function eventMarkers() {
  return {
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          const { top, height } = u.bbox;
          ctx.save();
          ctx.font = 10 * devicePixelRatio + "px sans-serif";
          for (const ev of events) {
            const x = Math.round(u.valToPos(ev.t, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = ctx.fillStyle = EVENT_COLOURS[ev.kind] || "#444";
            ctx.setLineDash([4, 3]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.fillText(ev.kind.replace("_", " "), x + 3, top + 10 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

function width(el) {
  return Math.max(300, el.clientWidth || 600);
}

function makeChart(id, series, values) {
  const el = $(id);
  el.innerHTML = "";
  const opts = {
    width: width(el),
    height: 220,
    series: [{}, ...series],
    axes: [{}, { size: 60 }],
    scales: { x: { time: true } },
    legend: { live: true },
    plugins: [eventMarkers()],
  };
  return new uPlot(opts, values, el);
}

function replicaSeries(key) {
  const addrs = Object.keys(data[key]).sort();
  return {
    addrs,
    series: addrs.map((a) => ({ label: a, stroke: colour(a), width: 1.5, spanGaps: false })),
    values: [data.t, ...addrs.map((a) => data[key][a])],
  };
}

function draw() {
  pending = false;
  if (!window.uPlot || !data.t.length) return;
  const p50 = replicaSeries("p50");
  const p99 = replicaSeries("p99");
  const key = p50.addrs.join(",") + "|" + p99.addrs.join(",");
  const rpsValues = [data.t, ...CLASSES.map((c) => data.classes[c])];
  const connValues = [data.t, data.conns, data.inflight];
  if (key !== chartKey) {
    // The set of replicas changed: build the charts again (uPlot series are fixed per chart).
    Object.values(charts).forEach((c) => c.destroy());
    charts = {
      rps: makeChart("chart-rps", CLASSES.map((c) => ({ label: c, stroke: CLASS_COLOURS[c], width: 1.5 })), rpsValues),
      conns: makeChart(
        "chart-conns",
        [
          { label: "connections", stroke: "#1565c0", width: 1.5 },
          { label: "in flight", stroke: "#ef6c00", width: 1.5 },
        ],
        connValues,
      ),
      p50: makeChart("chart-p50", p50.series, p50.values),
      p99: makeChart("chart-p99", p99.series, p99.values),
    };
    chartKey = key;
  } else {
    charts.rps.setData(rpsValues);
    charts.conns.setData(connValues);
    charts.p50.setData(p50.values);
    charts.p99.setData(p99.values);
  }
}

function schedule() {
  if (!pending) {
    pending = true;
    requestAnimationFrame(draw);
  }
}

// -- table and header ---------------------------------------------------------------------------
function cell(v, digits = 0) {
  return `<td class="${v === 0 ? "zero" : ""}">${num(v, digits)}</td>`;
}

function renderTable(snap) {
  const now = snap.t;
  const rows = snap.replicas.map((r) => {
    const state = r.state + (r.state_workers < snap.workers ? ` (${r.state_workers}/${snap.workers} workers)` : "");
    const action = r.drained ? "undrain" : "drain";
    return (
      `<tr class="${esc(r.state)}" data-addr="${esc(r.addr)}" data-state="${esc(r.state)}">` +
      `<td>${esc(r.addr)}</td><td class="state">${esc(state)} · ${duration(now - r.since)}</td>` +
      cell(r.in_flight) + cell(r.rps, 1) + `<td>${r.share === null ? "–" : (100 * r.share).toFixed(1) + "%"}</td>` +
      cell(r.responses["2xx"]) + cell(r.responses["3xx"]) + cell(r.responses["4xx"]) + cell(r.responses["5xx"]) +
      cell(r.responses.failed) +
      cell(r.errors.connect) + cell(r.errors.timeout) + cell(r.errors.reset) + cell(r.errors["5xx"]) +
      cell(r.retries) + cell(r.ejections) + cell(r.connections_opened) +
      `<td>${r.reuse_ratio === null ? "–" : (100 * r.reuse_ratio).toFixed(1) + "%"}</td>` +
      cell(r.p50_ms, 2) + cell(r.p99_ms, 2) + cell(r.ewma_ms, 2) +
      `<td><button data-action="${action}" data-addr="${esc(r.addr)}">${action}</button></td></tr>`
    );
  });
  $("replicas").tBodies[0].innerHTML = rows.join("");
  $("t-rps").textContent = num(snap.rps, 1);
  $("t-conns").textContent = num(snap.connections);
  $("t-inflight").textContent = num(snap.in_flight);
  $("t-queued").textContent = num(snap.queued);
  $("t-p50").textContent = num(snap.p50_ms, 2);
  $("t-p99").textContent = num(snap.p99_ms, 2);
  $("t-workers").textContent = snap.workers > 1 ? `${snap.reporting}/${snap.workers} workers reporting` : "";
  const select = $("policy");
  if (document.activeElement !== select && snap.policy !== "mixed") select.value = snap.policy;
}

function renderEvents() {
  const items = events.slice(-100).reverse().map((ev) => {
    const when = new Date(ev.t * 1000).toLocaleTimeString();
    return `<li class="${esc(ev.kind)}">${when} ${esc(ev.text)}</li>`;
  });
  $("events").innerHTML = items.join("");
}

// -- actions ------------------------------------------------------------------------------------
let tokenRequired = false; // GET /auth: the proxy has PROXY_ADMIN_TOKEN set

function askToken() {
  const entered = window.prompt("Admin token (PROXY_ADMIN_TOKEN); kept for this tab only");
  if (entered) sessionStorage.setItem(TOKEN_KEY, entered.trim());
  return !!entered;
}

async function admin(method, path, body) {
  // Asked once, before the first write that needs it; a wrong token (401) asks once more.
  if (tokenRequired && !sessionStorage.getItem(TOKEN_KEY) && !askToken()) return null;
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const resp = await fetch(path, { method, headers, body });
    if (resp.status === 401 && attempt === 0) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (!askToken()) return resp;
      continue;
    }
    if (resp.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    return resp;
  }
}

async function act(action, addr) {
  notice("");
  const resp = await admin("POST", `/upstreams/${encodeURIComponent(addr)}/${action}`);
  if (!resp) return notice(`${action} ${addr}: no token given`);
  const text = await resp.text();
  if (!resp.ok) notice(`${action} ${addr}: ${resp.status} ${text.trim()}`);
}

async function loadPolicies() {
  const resp = await fetch("/policy");
  const doc = await resp.json();
  $("policy").innerHTML = doc.policies.map((p) => `<option>${esc(p)}</option>`).join("");
  $("policy").value = doc.policy;
}

$("policy").addEventListener("change", async (e) => {
  notice("");
  const resp = await admin("PUT", "/policy?workers=all", e.target.value);
  if (resp && !resp.ok) notice(`policy: ${resp.status} ${(await resp.text()).trim()}`);
  e.target.blur();
});

$("replicas").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-action]");
  if (button) act(button.dataset.action, button.dataset.addr);
});

window.addEventListener("resize", () => {
  for (const id in charts) charts[id].setSize({ width: width($("chart-" + id)), height: 220 });
});

// -- the stream ---------------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/events");
  source.onopen = () => {
    $("conn").textContent = "live";
    $("conn").className = "conn live";
  };
  source.onerror = () => {
    // EventSource reconnects by itself (retry: 1000); the replayed history then starts over.
    $("conn").textContent = "reconnecting…";
    $("conn").className = "conn down";
    data.t.length = 0;
    CLASSES.forEach((c) => (data.classes[c].length = 0));
    data.conns.length = data.inflight.length = 0;
    data.p50 = {};
    data.p99 = {};
    events = [];
  };
  source.onmessage = (msg) => {
    const snap = JSON.parse(msg.data);
    push(snap);
    renderTable(snap);
    renderEvents();
    schedule();
  };
}

loadPolicies().catch((e) => notice("policy list: " + e));
fetch("/auth")
  .then((r) => r.json())
  .then((doc) => (tokenRequired = doc.token_required))
  .catch((e) => notice("auth: " + e));
connect();
