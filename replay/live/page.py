"""The live page (`--live HOST:PORT`): one self-contained HTML document (inline CSS and
script, no font or library from anywhere) that polls `/live.json` every second and draws the
run so far: figures at the top, then latency and TTFT percentiles (the last 10 s, exact from
HdrHistograms), sent rate, in flight and failures over time. When the run ends it links the
final report. The data is the metrics endpoint's (one observer feeds both)."""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loadtape live</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#1b1f24}
h1{font-size:20px;margin:0 0 8px} .kpis{display:flex;flex-wrap:wrap;gap:18px;margin:8px 0 14px}
.kpi b{display:block;font-size:20px} .kpi span{color:#555;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:14px} .plot{border:1px solid #eee;padding:6px}
.plot h2{font-size:13px;margin:0 0 4px;font-weight:600} svg{display:block}
.legend{font-size:11px;color:#555} #state{font-size:13px;color:#555}
.done{color:#116329;font-weight:600}
</style></head>
<body>
<h1>loadtape live</h1>
<div id="state">waiting for the first figures</div>
<div class="kpis" id="kpis"></div>
<div class="plots" id="plots"></div>
<script>
"use strict";
const PLOTS = [
  {id: "latency", title: "latency, last 10 s (ms)", lines: [
    ["latency_p50_ms", "p50", "#1f77b4", ""], ["latency_p99_ms", "p99", "#1f77b4", "5,3"]]},
  {id: "ttft", title: "TTFT, last 10 s (ms)", lines: [
    ["ttft_p50_ms", "p50", "#d62728", ""], ["ttft_p99_ms", "p99", "#d62728", "5,3"]]},
  {id: "rate", title: "sent vs scheduled (req/s)", lines: [
    ["rate", "sent", "#2ca02c", ""], ["scheduled_rate", "scheduled", "#2ca02c", "5,3"]]},
  {id: "inflight", title: "in flight", lines: [["in_flight", "in flight", "#ff7f0e", ""]]},
  {id: "behind", title: "behind schedule (s)", lines: [["behind_s", "behind", "#8c564b", ""]]},
  {id: "failed", title: "failed (total)", lines: [["failed", "failed", "#9467bd", ""]]},
];
const W = 420, H = 170, PAD = 34;
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function setup() {
  const root = document.getElementById("plots");
  for (const p of PLOTS) {
    const box = document.createElement("div");
    box.className = "plot";
    const h = document.createElement("h2");
    h.textContent = p.title;
    box.appendChild(h);
    const svg = el("svg", {width: W, height: H, id: "svg-" + p.id, "data-points": "0"});
    box.appendChild(svg);
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.textContent = p.lines.map(l => l[1]).join(" / ");
    box.appendChild(legend);
    root.appendChild(box);
  }
}

function draw(p, points) {
  const svg = document.getElementById("svg-" + p.id);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const xs = points.map(q => q.t);
  const x0 = xs.length ? xs[0] : 0, x1 = xs.length ? Math.max(xs[xs.length - 1], x0 + 1) : 1;
  let top = 0;
  for (const [key] of p.lines) {
    for (const q of points) if (q[key] != null) top = Math.max(top, q[key]);
  }
  top = top > 0 ? top * 1.1 : 1;
  const sx = t => PAD + (t - x0) / (x1 - x0) * (W - PAD - 8);
  const sy = v => H - 20 - v / top * (H - 30);
  el("line", {x1: PAD, y1: H - 20, x2: W - 8, y2: H - 20, stroke: "#999"}, svg);
  el("line", {x1: PAD, y1: 10, x2: PAD, y2: H - 20, stroke: "#999"}, svg);
  const lab = (x, y, s, anchor) => {
    const t = el("text", {x: x, y: y, "font-size": 10, fill: "#555", "text-anchor": anchor}, svg);
    t.textContent = s;
  };
  lab(PAD - 4, 14, top >= 100 ? top.toFixed(0) : top.toPrecision(3), "end");
  lab(PAD - 4, H - 20, "0", "end");
  lab(PAD, H - 6, x0.toFixed(0) + " s", "start");
  lab(W - 8, H - 6, x1.toFixed(0) + " s", "end");
  let n = 0;
  for (const [key, , color, dash] of p.lines) {
    const pts = points.filter(q => q[key] != null)
      .map(q => sx(q.t).toFixed(1) + "," + sy(q[key]).toFixed(1));
    n = Math.max(n, pts.length);
    if (pts.length) el("polyline", {points: pts.join(" "), fill: "none", stroke: color,
                                     "stroke-width": 1.5, "stroke-dasharray": dash}, svg);
  }
  svg.setAttribute("data-points", String(n));
}

function fix(v) {
  return v == null ? "-" : (v >= 100 ? v.toFixed(0) : v.toFixed(1));
}

function kpis(doc) {
  const last = doc.points.length ? doc.points[doc.points.length - 1] : null;
  const box = document.getElementById("kpis");
  box.textContent = "";
  if (!last) return;
  const items = [
    ["sent", last.sent + (doc.planned != null ? " / " + doc.planned : "")],
    ["ok", last.ok], ["failed", last.failed], ["in flight", last.in_flight],
    ["req/s", last.rate.toFixed(1)], ["latency p99 ms", fix(last.latency_p99_ms)],
    ["TTFT p99 ms", fix(last.ttft_p99_ms)], ["behind s", fix(last.behind_s)],
    ["elapsed s", last.t.toFixed(1)],
  ];
  for (const [name, value] of items) {
    const d = document.createElement("div");
    d.className = "kpi";
    const b = document.createElement("b");
    b.textContent = String(value);
    const s = document.createElement("span");
    s.textContent = name;
    d.appendChild(b); d.appendChild(s); box.appendChild(d);
  }
}

let stopped = false;
async function tick() {
  if (stopped) return;
  try {
    const r = await fetch("live.json", {cache: "no-store"});
    const doc = await r.json();
    kpis(doc);
    for (const p of PLOTS) draw(p, doc.points);
    const state = document.getElementById("state");
    const stage = Object.entries(doc.stage).map(([k, v]) => k + " " + v).join(", ");
    if (doc.finished) {
      state.textContent = "";
      const s = document.createElement("span");
      s.className = "done";
      s.textContent = "run finished" + (stage ? " (" + stage + ")" : "");
      state.appendChild(s);
      if (doc.report) {
        const a = document.createElement("a");
        a.href = doc.report; a.id = "report"; a.textContent = " - the final report";
        state.appendChild(a);
      }
      stopped = true;
      return;
    }
    state.textContent = "running" + (stage ? " (" + stage + ")" : "") + ", updated every second";
  } catch (e) {
    document.getElementById("state").textContent = "the run is not answering (it may have ended)";
    stopped = true;
    return;
  }
  setTimeout(tick, 1000);
}
setup();
tick();
</script>
</body></html>
"""
