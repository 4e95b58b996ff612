// The status page's script: asks /status once a second, keeps the last minutes of samples, and
// draws the tables and the SVG charts. It only reads; every text is set with textContent, never
// parsed as HTML. Numbers are written to data-value attributes as they came, so that tests (and
// anyone curious) can compare them with /metrics.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83",
  "#bc4c00", "#57606a", "#2da44e", "#6639ba", "#d1242f"];
const REFRESH_MS = 1000;

const state = { history: [], last: null, spanMs: 600000, draws: 0 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// The same formats as `top` (hubroute_view::format).
function count(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  if (a >= 1e10) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e7) return (v / 1e6).toFixed(2) + "M";
  return v.toFixed(0);
}
function rate(v) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) < 10 && v !== 0) return v.toFixed(1);
  return count(v);
}
function seconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 0.001) return (s * 1e6).toFixed(0) + "µs";
  if (s < 1) return (s * 1e3).toFixed(0) + "ms";
  if (s < 60) return s.toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

// A column: header, how to read the row, how to show it, and a class.
function col(header, field, read, show, cls) {
  return { header, field, read, show, cls: cls || "" };
}

function extraColumns(rows) {
  const names = [];
  for (const row of rows) for (const e of row.extra) if (!names.includes(e.name)) names.push(e.name);
  return names.map((name) => col(name, "extra:" + name, (r) => {
    const e = r.extra.find((x) => x.name === name);
    return e ? e.value : null;
  }, count));
}

function fillTable(table, columns, rows, rowName, decorate) {
  const head = el("thead");
  const tr = el("tr");
  for (const c of columns) tr.appendChild(el("th", c.cls, c.header));
  head.appendChild(tr);
  const body = el("tbody");
  for (const row of rows) {
    const line = el("tr");
    line.dataset.name = rowName(row);
    for (const c of columns) {
      const value = c.read(row);
      const cell = el("td", c.cls, c.show(value, row));
      cell.dataset.field = c.field;
      if (typeof value === "number") cell.dataset.value = String(value);
      else if (typeof value === "string") cell.dataset.value = value;
      if (decorate) decorate(c, value, cell, line, row);
      line.appendChild(cell);
    }
    body.appendChild(line);
  }
  table.replaceChildren(head, body);
}

const HEALTH_KNOWN = ["healthy", "degraded", "unhealthy", "dead", "unknown"];

function render(status) {
  const hub = [];
  if (status.hub_name) hub.push("hub " + status.hub_name);
  if (status.event_hub) hub.push("event hub " + status.event_hub);
  document.getElementById("hub").textContent = hub.join(" · ");

  const lag = status.partitions.filter((p) => p.lag_events !== null)
    .reduce((sum, p) => (sum === null ? 0 : sum) + p.lag_events, null);
  const facts = [
    ["routed", count(status.events_routed.total), "events_routed", status.events_routed.total],
    ["routed/s", rate(status.events_routed.per_second), "events_routed_per_second", status.events_routed.per_second],
    ["lag (events)", count(lag), "lag_events", lag],
    ["fallback", count(status.fallback_matched.total), "fallback_matched", status.fallback_matched.total],
    ["reconnects", count(status.reconnects), "reconnects", status.reconnects],
  ];
  const totals = document.getElementById("totals");
  totals.replaceChildren(...facts.map(([label, shown, field, value]) => {
    const box = el("div", "fact");
    box.dataset.field = field;
    if (value !== null && value !== undefined) box.dataset.value = String(value);
    box.append(el("b", null, shown), el("span", null, label));
    return box;
  }));

  const routeColumns = [
    col("route", "name", (r) => r.name, (v, r) => (r.enabled === false ? v + " (disabled)" : v), "name"),
    col("endpoint", "endpoint", (r) => r.endpoint, (v) => v || "", "text"),
    col("matched/s", "matched_per_second", (r) => r.matched.per_second, rate),
    col("undefined/s", "undefined_per_second", (r) => r.undefined.per_second, rate),
    col("matched", "matched", (r) => r.matched.total, count),
    col("undefined", "undefined", (r) => r.undefined.total, count),
  ].concat(extraColumns(status.routes));
  fillTable(document.getElementById("routes"), routeColumns, status.routes, (r) => r.name,
    (c, v, cell, line, row) => { if (row.enabled === false) line.className = "disabled"; });

  const endpointColumns = [
    col("endpoint", "name", (e) => e.name, (v) => v, "name"),
    col("type", "type", (e) => e.kind, (v) => v || "", "text"),
    col("health", "health", (e) => e.health, (v) => v || "unknown", "text"),
    col("delivered/s", "delivered_per_second", (e) => e.delivered.per_second, rate),
    col("delivered", "delivered", (e) => e.delivered.total, count),
    col("failed", "failed", (e) => e.failed.total, count),
    col("dead-lettered", "dead_lettered", (e) => e.dead_lettered.total, count),
    col("parked", "parked", (e) => e.parked.total, count),
    col("queue", "queue_depth", (e) => e.queue_depth, count),
    col("p50", "p50_seconds", (e) => e.p50_seconds, seconds),
    col("p99", "p99_seconds", (e) => e.p99_seconds, seconds),
  ].concat(extraColumns(status.endpoints));
  fillTable(document.getElementById("endpoints"), endpointColumns, status.endpoints, (e) => e.name,
    (c, v, cell) => {
      if (c.field === "health") {
        const health = v || "unknown";
        cell.replaceChildren(el("span", "health health-" +
          (HEALTH_KNOWN.includes(health) ? health : "other"), health));
      }
      if ((c.field === "failed" || c.field === "dead_lettered") && v > 0) cell.classList.add("alert");
      // Parked rows are replayed once the endpoint is back: a warning, not an alarm.
      if (c.field === "parked" && v > 0) cell.classList.add("warn");
    });

  const partitionColumns = [
    col("partition", "name", (p) => p.id, (v) => v, "name"),
    col("events/s", "events_per_second", (p) => p.events.per_second, rate),
    col("events", "events", (p) => p.events.total, count),
    col("lag", "lag_events", (p) => p.lag_events, count),
    col("lag time", "lag_seconds", (p) => p.lag_seconds, seconds),
    col("checkpoint", "checkpoint", (p) => p.checkpoint, count),
    col("in flight", "uncommitted_batches", (p) => p.uncommitted_batches, count),
  ].concat(extraColumns(status.partitions));
  fillTable(document.getElementById("partitions"), partitionColumns, status.partitions, (p) => p.id);

  const other = document.getElementById("other-section");
  other.hidden = status.other.length === 0;
  fillTable(document.getElementById("other"), [
    col("series", "name", (o) => o.series, (v) => v, "text"),
    col("value", "value", (o) => o.value, count),
    col("/s", "per_second", (o) => o.per_second, (v) => (v === null ? "" : rate(v))),
  ], status.other, (o) => o.series);
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// One chart: a line per series over the last `spanMs`, a zero baseline and the maximum.
function drawChart(figure, key, now) {
  const width = 600, height = 200, left = 52, right = 8, top = 10, bottom = 22;
  const names = [];
  for (const sample of state.history) {
    for (const name of Object.keys(sample[key] || {})) if (!names.includes(name)) names.push(name);
  }
  names.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  let max = 0;
  for (const sample of state.history) {
    for (const v of Object.values(sample[key] || {})) max = Math.max(max, v);
  }
  max = max > 0 ? niceCeiling(max) : 1;
  // From the first sample (at least a minute) up to the whole history, so that a young service
  // does not draw in the last pixels.
  const first = state.history.length > 0 ? state.history[0].t : now;
  const span = Math.min(state.spanMs, Math.max(60000, now - first));
  const start = now - span;
  const x = (t) => left + ((t - start) / span) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const chart = figure.querySelector("svg");
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    nodes.push(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    nodes.push(svg("text", { class: "axis", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, count(value)));
  }
  const ago = span >= 120000 ? Math.round(span / 60000) + " min" : Math.round(span / 1000) + " s";
  nodes.push(svg("text", { class: "axis", x: left, y: height - 6 }, "−" + ago));
  nodes.push(svg("text", { class: "axis", x: width - right, y: height - 6, "text-anchor": "end" }, "now"));
  let points = 0;
  const legend = figure.querySelector(".legend");
  const items = [];
  names.forEach((name, index) => {
    const colour = PALETTE[index % PALETTE.length];
    let d = "";
    let pen = false;
    let latest = null;
    for (const sample of state.history) {
      const v = (sample[key] || {})[name];
      if (v === undefined || sample.t < start) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(sample.t).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
      points += 1;
      latest = v;
    }
    const path = svg("path", { class: "series", d, stroke: colour });
    path.dataset.name = name;
    nodes.push(path);
    const item = el("li");
    const swatch = el("i");
    swatch.style.background = colour;
    item.append(swatch, document.createTextNode(
      (key.startsWith("lag") ? "partition " + name + ": " + count(latest) : name + ": " + rate(latest) + "/s")));
    item.dataset.name = name;
    items.push(item);
  });
  chart.replaceChildren(...nodes);
  legend.replaceChildren(...items);
  chart.dataset.points = String(points);
  chart.dataset.series = String(names.length);
}

function niceCeiling(v) {
  const power = Math.pow(10, Math.floor(Math.log10(v)));
  for (const step of [1, 2, 2.5, 5, 10]) if (v <= step * power) return step * power;
  return 10 * power;
}

function drawCharts() {
  const now = state.last !== null ? state.last : Date.now();
  for (const figure of document.querySelectorAll(".chart")) drawChart(figure, figure.dataset.series, now);
  state.draws += 1;
  document.body.dataset.draws = String(state.draws);
}

function setConnection(ok, problem) {
  const node = document.getElementById("connection");
  const line = document.getElementById("problem");
  node.className = "state " + (ok ? "connected" : "disconnected");
  node.textContent = ok ? "● live" : "disconnected, retrying";
  line.hidden = ok;
  line.textContent = ok ? "" : "Cannot reach this service (" + problem + "); showing the last data and retrying every second.";
  document.body.classList.toggle("stale", !ok);
}

async function refresh() {
  const url = state.last === null ? "/status" : "/status?since=" + state.last;
  try {
    const response = await fetch(url, { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    state.spanMs = data.history_seconds * 1000;
    document.getElementById("span").textContent = String(Math.round(data.history_seconds / 60));
    for (const sample of data.history) state.history.push(sample);
    if (state.history.length > 0) state.last = state.history[state.history.length - 1].t;
    const cutoff = (state.last !== null ? state.last : Date.now()) - state.spanMs;
    state.history = state.history.filter((s) => s.t >= cutoff);
    setConnection(true);
    if (data.status) render(data.status);
    drawCharts();
  } catch (error) {
    setConnection(false, error.message);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
