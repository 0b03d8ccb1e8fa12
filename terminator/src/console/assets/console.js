// The console page: polls /console/data every second and redraws.
// No framework and no chart library: a few tables and canvas line charts
// are less code than vendoring either, and nothing loads from elsewhere.
"use strict";

// Errors are kept where a person (the footer) and a test (WebDriver reads
// window.consoleErrors) both see them.
window.consoleErrors = [];
window.consoleUpdates = 0;
function noteError(msg) {
  window.consoleErrors.push(String(msg));
  const el = document.getElementById("errors");
  if (el) el.textContent = "page error: " + msg;
}
window.addEventListener("error", (e) => noteError(e.message || e.type));
window.addEventListener("unhandledrejection", (e) => noteError(e.reason));

const POLL_MS = 1000;
const COLORS = { p50: "#6cb6ff", p99: "#f69d50", target: "#e5534b", grid: "#2a323c", text: "#7b8794" };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c));
  return e;
}

function num(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number(v).toFixed(digits === undefined ? 1 : digits);
}

function card(label, value, cls) {
  return el("div", { class: "card" }, el("div", { class: "v " + (cls || "") }, value), el("div", { class: "k" }, label));
}

function renderProcess(d) {
  const p = d.process, e = p.errors_per_s;
  const box = document.getElementById("process");
  box.replaceChildren(
    card("requests/s", num(p.requests_per_s)),
    card("in flight / max", p.in_flight + " / " + p.max_in_flight),
    card("connections", String(p.connections)),
    card("4xx/s", num(e["4xx"]), e["4xx"] > 0 ? "bad" : ""),
    card("5xx/s", num(e["5xx"]), e["5xx"] > 0 ? "bad" : ""),
    card("503 shed/s", num(e["503_shed"]), e["503_shed"] > 0 ? "bad" : ""),
    card("503 no instance/s", num(e["503_no_instance"]), e["503_no_instance"] > 0 ? "bad" : ""),
    card("504/s", num(e["504"]), e["504"] > 0 ? "bad" : ""),
  );
  document.getElementById("window").textContent = "(p50/p99 over the last " + d.window_s + " s)";
}

function renderRoutes(d) {
  const body = document.querySelector("#routes tbody");
  body.replaceChildren(...d.routes.map((r) => {
    const e = r.errors_per_s;
    const tr = el("tr", { class: r.over_target ? "over" : "", "data-route": r.route },
      el("td", { class: "route" }, r.route), el("td", {}, r.service),
      el("td", { class: "n rate" }, num(r.requests_per_s)),
      el("td", { class: "n" }, num(r.p50_ms, 2)), el("td", { class: "n p99" }, num(r.p99_ms, 2)),
      el("td", { class: "n" }, num(r.target_ms, 0)),
      el("td", { class: "n" }, num(e["4xx"])), el("td", { class: "n" }, num(e["5xx"])),
      el("td", { class: "n" }, num(e["503_shed"])), el("td", { class: "n" }, num(e["504"])));
    return tr;
  }));
}

// One canvas per route, kept across updates (keyed by route).
const charts = new Map();
function chartFor(route) {
  let c = charts.get(route);
  if (!c) {
    const canvas = el("canvas");
    const title = el("div", { class: "title" }, el("span", {}, route),
      el("span", { class: "legend" }, el("span", { class: "p50" }, "— p50"),
        el("span", { class: "p99" }, "— p99"), el("span", { class: "t" }, "-- target")));
    const box = el("div", { class: "chart" }, title, canvas);
    document.getElementById("charts").append(box);
    c = { box, canvas };
    charts.set(route, c);
  }
  return c;
}

function drawChart(r) {
  const { canvas } = chartFor(r.route);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (w === 0 || h === 0) return;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pts = r.history;
  const left = 40, right = 6, top = 6, bottom = 16;
  const span = 60000;
  const t1 = pts.length ? pts[pts.length - 1].t_ms : Date.now(), t0 = t1 - span;
  let ymax = r.target_ms * 1.25;
  for (const p of pts) ymax = Math.max(ymax, p.p99_ms || 0);
  ymax = niceCeil(ymax);
  const x = (t) => left + ((t - t0) / span) * (w - left - right);
  const y = (v) => top + (1 - v / ymax) * (h - top - bottom);
  g.font = "10px system-ui, sans-serif";
  g.fillStyle = COLORS.text;
  g.strokeStyle = COLORS.grid;
  g.lineWidth = 1;
  // niceCeil's maxima (1, 2, 2.5, 5 × 10^n) all divide into 5 round steps.
  for (let i = 0; i <= 5; i++) {
    const v = (ymax * i) / 5, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.fillText(num(v, v < 10 ? 1 : 0) + " ms", 2, yy + 3);
  }
  g.fillText("-60 s", left, h - 3);
  g.fillText("now", w - right - 20, h - 3);
  g.setLineDash([5, 4]);
  g.strokeStyle = COLORS.target;
  g.beginPath(); g.moveTo(left, y(r.target_ms)); g.lineTo(w - right, y(r.target_ms)); g.stroke();
  g.setLineDash([]);
  for (const [key, color] of [["p50_ms", COLORS.p50], ["p99_ms", COLORS.p99]]) {
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false;
    for (const p of pts) {
      if (p[key] === null || p.t_ms < t0) { pen = false; continue; }
      const px = x(p.t_ms), py = y(Math.min(p[key], ymax));
      if (pen) g.lineTo(px, py); else g.moveTo(px, py);
      pen = true;
    }
    g.stroke();
  }
}

function niceCeil(v) {
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v) return m * e;
  return 10 * e;
}

function renderCharts(d) {
  const live = new Set(d.routes.map((r) => r.route));
  for (const [route, c] of charts) if (!live.has(route)) { c.box.remove(); charts.delete(route); }
  for (const r of d.routes) drawChart(r);
}

function renderServices(d) {
  const box = document.getElementById("services");
  box.replaceChildren(...d.services.map((s) => {
    const a = s.admission;
    // An instance stands out when its p99 is twice the service's best
    // instance's, or over the target of the routes it serves.
    const p99s = s.instances.map((i) => i.p99_ms).filter((v) => v !== null);
    const best = p99s.length > 1 ? Math.min(...p99s) : null;
    const targets = d.routes.filter((r) => r.service === s.service).map((r) => r.target_ms);
    const target = targets.length ? Math.min(...targets) : Infinity;
    const slow = (v) => v !== null && ((best !== null && v >= 2 * best) || v > target);
    const rows = s.instances.map((i) => el("tr", { "data-endpoint": i.endpoint },
      el("td", {}, i.endpoint), el("td", {}, i.version || "–"),
      el("td", { class: "conn " + (i.connected ? "up" : "down") }, i.connected ? "connected" : "disconnected"),
      el("td", { class: "n" }, String(i.outstanding)), el("td", { class: "n" }, num(i.calls_per_s)),
      el("td", { class: "n" }, num(i.p50_ms, 2)),
      el("td", { class: "n" + (slow(i.p99_ms) ? " over" : "") }, num(i.p99_ms, 2))));
    const table = el("table", { class: "instances" },
      el("thead", {}, el("tr", {}, el("th", {}, "instance"), el("th", {}, "version"), el("th", {}, "state"),
        el("th", { class: "n" }, "outstanding"), el("th", { class: "n" }, "calls/s"),
        el("th", { class: "n" }, "p50 ms"), el("th", { class: "n" }, "p99 ms"))),
      el("tbody", {}, ...rows));
    const meta = "admission limit " + a.limit + ", in flight " + a.in_flight + ", shed " + num(a.shed_per_s) +
      "/s · pending " + s.pending + " · retries " + num(s.retries_per_s) + "/s (" + s.retries_total +
      " total) · retry budget refusals " + num(s.retry_budget_refusals_per_s) + "/s (" +
      s.retry_budget_refusals_total + " total) · timeouts " + num(s.timeouts_per_s) + "/s" +
      (s.weights ? " · weights " + Object.entries(s.weights).map(([v, w]) => v + "=" + w).join(" ") : "") +
      (s.ghost ? " · ghost " + s.ghost.version + " at " + num(s.ghost.fraction * 100) + "%: " +
        (s.ghost.matched || 0) + " matched, " + (s.ghost.mismatched || 0) + " mismatched, " +
        ((s.ghost.failed || 0) + (s.ghost.timeouts || 0)) + " failed, " + (s.ghost.skipped || 0) + " skipped" : "");
    return el("div", { class: "service", "data-service": s.service }, el("h3", {}, s.service),
      el("div", { class: "meta" }, meta), table);
  }));
}

// Every terminator's histograms merged (etcd only): routes by their
// metric names (`root` for /), as /stats/histograms names them.
function renderFleet(d) {
  const box = document.getElementById("fleet");
  if (!d.fleet) { box.hidden = true; return; }
  box.hidden = false;
  const m = d.fleet.members;
  const down = m.filter((x) => !x.ok);
  document.getElementById("fleet-members").textContent = "(" + m.length + " terminators" +
    (down.length ? ", not answering: " + down.map((x) => x.admin).join(", ") : "") + ")";
  document.querySelector("#fleet-routes tbody").replaceChildren(...d.fleet.routes.map((r) =>
    el("tr", { class: r.over_target ? "over" : "", "data-fleet-route": r.route },
      el("td", {}, r.route), el("td", { class: "n rate" }, num(r.requests_per_s)),
      el("td", { class: "n" }, num(r.p50_ms, 2)), el("td", { class: "n p99" }, num(r.p99_ms, 2)),
      el("td", { class: "n" }, String(r.window_requests)))));
}

function render(d) {
  renderProcess(d);
  renderRoutes(d);
  renderCharts(d);
  renderFleet(d);
  renderServices(d);
  window.consoleUpdates += 1;
  window.consoleData = d;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/console/data", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    render(d);
    status.textContent = "live · " + new Date(d.time_ms).toLocaleTimeString();
    status.className = "status live";
  } catch (e) {
    // The terminator is unreachable or restarting: say so, keep polling.
    status.textContent = "no data: " + e.message;
    status.className = "status down";
  }
  setTimeout(poll, POLL_MS);
}

poll();
