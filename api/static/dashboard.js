// finpulse dashboard: top entities by negative share, a series chart per entity, a live alert feed.
// Plain ES module, no framework, no build step. Every piece of data reaches the DOM as text
// (textContent / text nodes, never innerHTML), and every URL is relative to the page, so the page
// also works behind a path prefix.

const REFRESH_MS = 5000; // entities table and chart
const MAX_ALERTS = 200; // alerts kept in the feed
const FETCH_TIMEOUT_MS = 10000;
const MAX_CHART_POINTS = 120; // coarser steps beyond this, so bars stay wide enough to see

// What the series endpoint accepts (seconds); a step must be whole buckets and divide the window.
const SERIES_WINDOWS = { "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400, "7d": 604800 };
const STEPS = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400 };

const state = {
  kind: "ticker", // entities table: ticker | topic
  window: "1h", // 15m | 1h | 1d
  minCount: 3, // entities with fewer events in the window are left out of the table
  rows: 0,
  windowInfo: null,
  selected: null, // {kind, name}: the chart's entity
  series: null, // last series response, normalised
  chart: null,
  chartKey: null,
  chartRange: null, // [start, end] epoch seconds of the series shown
  chartSeq: 0, // the newest series request: older replies are dropped
  baseStep: null, // seconds: the finest step the series endpoint chose (whole buckets), learned from a reply
  alerts: new Map(), // id -> alert
  fresh: new Set(), // ids that arrived over the stream (highlighted once)
  live: "connecting",
  errors: [], // failed requests, newest last (also shown on the page)
  loaded: { entities: false, alerts: false },
};

// ---------------------------------------------------------------- helpers

const $ = (sel) => document.querySelector(sel);

/** An element with attributes and children; strings become text nodes (never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** A URL relative to the page (works behind a prefix), with the non-empty query parameters. */
function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url;
}

async function getJSON(path, params) {
  const url = apiUrl(path, params);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const resp = await fetch(url, { signal: ctl.signal, headers: { Accept: "application/json" } });
    if (!resp.ok) {
      // The API's errors are {error, detail: [{loc, msg}]}.
      let reason = resp.statusText;
      try {
        const body = await resp.json();
        const msgs = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).filter(Boolean) : [];
        reason = [body.error, ...msgs].filter(Boolean).join(": ") || reason;
      } catch {
        /* not JSON: the status says enough */
      }
      const err = new Error(`${resp.status} ${reason}`);
      err.status = resp.status;
      throw err;
    }
    return await resp.json();
  } finally {
    clearTimeout(timer);
  }
}

function noteError(where, err, box) {
  const msg = `${where}: ${err && err.message ? err.message : String(err)}`;
  state.errors.push(msg);
  if (state.errors.length > 50) state.errors.shift();
  if (box) {
    box.textContent = msg;
    box.hidden = false;
  }
}

function clearError(box) {
  box.hidden = true;
  box.textContent = "";
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const pct = (v, digits = 1) => (num(v) === null ? "–" : `${(v * 100).toFixed(digits)}%`);
const signed = (v) => (num(v) === null ? "–" : `${v >= 0 ? "+" : ""}${v.toFixed(2)}`);

/** Epoch seconds from seconds or milliseconds (anything past 1e11 is taken as milliseconds). */
function toSeconds(v) {
  if (num(v) === null) return null;
  return v > 1e11 ? v / 1000 : v;
}

/** "2014-05-01 13:05" in UTC from epoch seconds. */
function fmtTime(sec) {
  if (sec === null) return "–";
  return new Date(sec * 1000).toISOString().slice(0, 16).replace("T", " ");
}

/** "15 min", "1 h", "1 d" from seconds. */
function fmtDuration(sec) {
  if (sec === null) return "?";
  if (sec % 86400 === 0) return `${sec / 86400} d`;
  if (sec % 3600 === 0) return `${sec / 3600} h`;
  if (sec % 60 === 0) return `${sec / 60} min`;
  return `${sec} s`;
}

/** "2014-05-01 13:05–13:20 UTC" (the date once when both ends share it). */
function fmtRange(startSec, endSec) {
  const a = fmtTime(startSec);
  const b = fmtTime(endSec);
  return a.slice(0, 10) === b.slice(0, 10) ? `${a}–${b.slice(11)} UTC` : `${a} – ${b} UTC`;
}

// ---------------------------------------------------------------- entities table

/** An entity row of GET v1/entities (EntityStats in the OpenAPI document). */
function normEntity(e) {
  return {
    kind: e.kind,
    name: String(e.name),
    count: num(e.count) ?? 0,
    neg: num(e.neg) ?? 0,
    neu: num(e.neu) ?? 0,
    pos: num(e.pos) ?? 0,
    negShare: num(e.neg_share) ?? 0,
    meanScore: num(e.mean_score),
  };
}

async function refreshEntities() {
  const box = $("#entities-error");
  try {
    const body = await getJSON("v1/entities", {
      kind: state.kind,
      sort: "neg_share",
      window: state.window,
      min_count: state.minCount,
      limit: 25,
    });
    const [start, end] = [toSeconds(body.window_start), toSeconds(body.window_end)];
    state.windowInfo = start === null || end === null ? null : { start, end };
    renderEntities((body.entities ?? []).map(normEntity));
    clearError(box);
    state.loaded.entities = true;
  } catch (err) {
    noteError("entities", err, box);
  }
}

function renderEntities(rows) {
  const tbody = $("#entities tbody");
  const frag = document.createDocumentFragment();
  for (const r of rows) {
    const selected = state.selected && state.selected.kind === r.kind && state.selected.name === r.name;
    const tr = el(
      "tr",
      { tabindex: 0, "data-kind": r.kind, "data-entity": r.name, "aria-selected": selected ? "true" : "false" },
      el("td", { class: "name", title: r.name, text: r.name }),
      el("td", { class: "num", text: r.count.toLocaleString() }),
      el(
        "td",
        {},
        el(
          "div",
          { class: "share" },
          el("div", { class: "bar" }, el("span", { style: `width:${Math.round(r.negShare * 100)}%` })),
          el("span", { text: pct(r.negShare) }),
        ),
      ),
      el(
        "td",
        { class: "num" },
        el("span", { class: "neg", text: r.neg }),
        " · ",
        el("span", { text: r.neu }),
        " · ",
        el("span", { class: "pos", text: r.pos }),
      ),
      el("td", { class: `num ${r.meanScore < 0 ? "neg" : "pos"}`, text: signed(r.meanScore) }),
    );
    const pick = () => select(r.kind, r.name);
    tr.addEventListener("click", pick);
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        pick();
      }
    });
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
  state.rows = rows.length;
  $("#entities").dataset.rows = String(rows.length);
  $("#entities-empty").hidden = rows.length > 0;
  const w = state.windowInfo;
  $("#entities-window").textContent = w ? `window ${fmtRange(w.start, w.end)}` : "";
  // The chart follows the table (its top row) until somebody picks an entity.
  const follow = !state.selected || (state.selected.auto && state.selected.kind !== state.kind);
  if (follow && rows.length) select(rows[0].kind, rows[0].name, { auto: true });
}

// ---------------------------------------------------------------- chart

/** A point of GET v1/entities/{kind}/{name}/series (SeriesPoint): start in epoch ms. */
function normBucket(p) {
  const count = num(p.count) ?? 0;
  return { t: toSeconds(p.start), count, negShare: count ? num(p.neg_share) : null };
}

/** Alert markers for the chart's entity: window ends (epoch seconds) and severities. */
function markersFor(sel) {
  if (!sel) return [];
  const out = [];
  for (const a of state.alerts.values()) {
    if (a.entity_kind === sel.kind && a.entity === sel.name) {
      out.push({ t: toSeconds(a.window_end), severity: a.severity, id: a.id });
    }
  }
  return out;
}

/** uPlot draw hook: a dashed line and a triangle at each alert window end inside the x range. */
function drawMarkers(u) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
  const dpr = window.devicePixelRatio || 1;
  let shown = 0;
  ctx.save();
  for (const m of markersFor(state.selected)) {
    if (m.t === null || m.t < xmin || m.t > xmax) continue;
    shown += 1;
    const x = Math.round(u.valToPos(m.t, "x", true));
    const color = m.severity === "critical" ? "#e5534b" : "#d9a03f";
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1.5 * dpr;
    ctx.setLineDash([4 * dpr, 3 * dpr]);
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + height);
    ctx.stroke();
    ctx.setLineDash([]);
    const s = 6 * dpr;
    ctx.beginPath();
    ctx.moveTo(x - s, top);
    ctx.lineTo(x + s, top);
    ctx.lineTo(x, top + s * 1.5);
    ctx.closePath();
    ctx.fill();
  }
  ctx.restore();
  $("#chart").dataset.markers = String(shown);
}

function chartSize() {
  const box = $("#chart");
  return { width: Math.max(320, box.clientWidth), height: 300 };
}

function makeChart(data) {
  const uPlot = window.uPlot;
  const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8, 24] }) : undefined;
  const opts = {
    ...chartSize(),
    // Axis ticks in UTC, like every other time on the page.
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    cursor: { drag: { x: true, y: false } },
    scales: {
      // The series' own window, also when it holds one point (uPlot would otherwise invent years).
      x: { time: true, range: (_u, min, max) => state.chartRange ?? [min, max] },
      count: { range: (_u, _min, max) => [0, Math.max(1, max)] },
      share: { range: [0, 1] },
    },
    series: [
      { label: "step (UTC)", value: (_u, v) => (v === null ? "–" : fmtTime(v)) },
      {
        label: "events",
        scale: "count",
        stroke: "#5b8def",
        fill: "rgba(91,141,239,0.35)",
        paths: bars,
        points: { show: false },
        value: (_u, v) => (v === null ? "–" : String(v)),
      },
      {
        label: "negative share",
        scale: "share",
        stroke: "#e5534b",
        width: 2,
        spanGaps: false,
        points: { show: true, size: 5 },
        value: (_u, v) => pct(v),
      },
    ],
    axes: [
      { stroke: "#8593a3", grid: { stroke: "#2a3441" }, ticks: { stroke: "#2a3441" } },
      { scale: "count", stroke: "#5b8def", grid: { stroke: "#2a3441" }, ticks: { stroke: "#2a3441" } },
      {
        scale: "share",
        side: 1,
        stroke: "#e5534b",
        grid: { show: false },
        values: (_u, vals) => vals.map((v) => `${Math.round(v * 100)}%`),
      },
    ],
    hooks: { draw: [drawMarkers] },
  };
  const box = $("#chart");
  box.replaceChildren();
  return new uPlot(opts, data, box);
}

/**
 * Series window and step for the table's window: the finest step that keeps at most
 * MAX_CHART_POINTS bars, and a series window of at least one step (15m on hourly buckets: 1h).
 * Until the finest step is known, the API picks.
 */
function seriesQuery() {
  const base = state.baseStep;
  if (!base) return { window: state.window };
  const windows = Object.entries(SERIES_WINDOWS).filter(([, w]) => w >= SERIES_WINDOWS[state.window] && w % base === 0);
  if (!windows.length) return { window: state.window };
  const [name, w] = windows[0];
  const steps = Object.entries(STEPS).filter(([, st]) => st % base === 0 && w % st === 0);
  const fit = steps.find(([, st]) => w / st <= MAX_CHART_POINTS) ?? steps[steps.length - 1];
  return fit ? { window: name, step: fit[0] } : { window: name };
}

async function refreshChart() {
  const sel = state.selected;
  if (!sel) return;
  const box = $("#chart-error");
  const seq = ++state.chartSeq;
  const path = `v1/entities/${encodeURIComponent(sel.kind)}/${encodeURIComponent(sel.name)}/series`;
  try {
    if (!state.baseStep) {
      // Once per page: the finest step over a day (every bucket size that divides a day has one)
      // is the bucket size as far as steps go; the API has no other way to say it.
      const probe = await getJSON(path, { window: "1d" });
      if (num(probe.step_seconds)) state.baseStep = probe.step_seconds;
    }
    const body = await getJSON(path, seriesQuery());
    if (seq !== state.chartSeq) return; // a newer request (other entity, window or step) is under way
    const [ws, we] = [toSeconds(body.window_start), toSeconds(body.window_end)];
    state.chartRange = ws !== null && we !== null ? [ws, we] : null;
    const buckets = (body.points ?? []).map(normBucket);
    buckets.sort((a, b) => a.t - b.t);
    state.series = buckets;
    const data = [buckets.map((b) => b.t), buckets.map((b) => b.count), buckets.map((b) => b.negShare)];
    const key = `${sel.kind}\u0000${sel.name}\u0000${state.window}\u0000${num(body.step_seconds)}`;
    if (state.chart && state.chartKey === key) state.chart.setData(data);
    else {
      if (state.chart) state.chart.destroy();
      state.chart = makeChart(data);
      state.chartKey = key;
    }
    const points = buckets.filter((b) => b.count > 0).length;
    $("#chart").dataset.points = String(points);
    const events = buckets.reduce((n, b) => n + b.count, 0);
    $("#chart-note").textContent = buckets.length
      ? `${events.toLocaleString()} events in ${points} of ${buckets.length} steps of ` +
        `${fmtDuration(num(body.step_seconds))}, ${fmtRange(buckets[0].t, buckets[buckets.length - 1].t)} ` +
        "(step starts); dashed lines: alert window ends"
      : "No buckets in this window.";
    clearError(box);
  } catch (err) {
    if (seq !== state.chartSeq) return;
    if (err.status === 404) {
      // Not a fault: nothing counted for that name (yet).
      if (state.chart) state.chart.destroy();
      state.chart = null;
      state.chartKey = null;
      $("#chart").replaceChildren();
      $("#chart").dataset.points = "0";
      $("#chart-note").textContent = `No events for ${sel.kind} ${sel.name} yet.`;
      clearError(box);
      return;
    }
    noteError("series", err, box);
  }
}

/** Show ``name`` of ``kind`` in the chart (``auto``: chosen by the page, not by the user). */
function select(kind, name, { auto = false } = {}) {
  name = String(name).trim();
  if (!name) return;
  if (kind === "ticker") name = name.replace(/^\$/, "").toUpperCase();
  const same = state.selected && state.selected.kind === kind && state.selected.name === name;
  if (same) {
    // Picked by hand what the page had picked: it stays now, whatever the table's top row becomes.
    if (!auto && state.selected.auto) {
      state.selected.auto = false;
      writeHash();
    }
    return;
  }
  state.selected = { kind, name, auto };
  $("#chart-entity").textContent = `${kind} ${name}`;
  $("#pick-kind").value = kind;
  if (!auto) {
    $("#pick-name").value = name;
    writeHash();
  }
  for (const tr of document.querySelectorAll("#entities tbody tr")) {
    const on = tr.dataset.kind === kind && tr.dataset.entity === name;
    tr.setAttribute("aria-selected", on ? "true" : "false");
  }
  $("#chart").dataset.points = "0";
  refreshChart();
}

// ---------------------------------------------------------------- alerts

/** Newest window end first, then newest raised (the order of GET v1/alerts). */
function newestFirst(a, b) {
  const wa = num(a.window_end) ?? 0;
  const wb = num(b.window_end) ?? 0;
  if (wa !== wb) return wb - wa;
  const ra = String(a.raised_at ?? "");
  const rb = String(b.raised_at ?? "");
  return ra === rb ? 0 : ra < rb ? 1 : -1;
}

function addAlerts(list, { fresh = false } = {}) {
  let added = 0;
  for (const a of list) {
    if (!a || typeof a.id !== "string" || state.alerts.has(a.id)) continue;
    state.alerts.set(a.id, a);
    if (fresh) state.fresh.add(a.id);
    added += 1;
  }
  if (!added) return;
  // Keep the newest MAX_ALERTS.
  const sorted = [...state.alerts.values()].sort(newestFirst);
  for (const old of sorted.slice(MAX_ALERTS)) state.alerts.delete(old.id);
  renderAlerts(sorted.slice(0, MAX_ALERTS));
  if (state.chart) state.chart.redraw(false, false); // new markers
}

function renderAlert(a) {
  const start = toSeconds(a.window_start);
  const end = toSeconds(a.window_end);
  const examples = Array.isArray(a.examples) && a.examples.length ? a.examples : null;
  const ids = Array.isArray(a.example_event_ids) ? a.example_event_ids : [];
  const exampleItems = examples
    ? examples.map((x) =>
        x && x.text ? el("li", { text: x.text, title: `event ${x.id}` }) : el("li", { class: "id", text: x && x.id }),
      )
    : ids.map((id) => el("li", { class: "id", text: id }));
  const topics = Array.isArray(a.top_topics) ? a.top_topics : [];
  const li = el(
    "li",
    {
      class: `alert${state.fresh.has(a.id) ? " fresh" : ""}`,
      "data-alert-id": a.id,
      "data-entity": a.entity,
      "data-kind": a.entity_kind,
      "data-severity": a.severity,
    },
    el(
      "div",
      { class: "alert-head" },
      el("span", { class: "sev", text: a.severity }),
      el("span", { class: "kind", text: a.entity_kind }),
      el("button", {
        type: "button",
        class: "alert-entity",
        text: a.entity,
        title: "show in the chart",
        onclick: () => select(a.entity_kind, a.entity),
      }),
      el("span", { class: "muted small", text: fmtRange(start, end) }),
    ),
    el(
      "div",
      { class: "alert-meta" },
      "negative ",
      el("b", { text: pct(a.observed_share, 0) }),
      " vs baseline ",
      el("b", { text: pct(a.baseline_share, 0) }),
      ` · ${a.negative ?? "?"} of ${a.count ?? "?"} events`,
      num(a.z) !== null ? ` · z ${a.z.toFixed(1)}` : "",
    ),
    topics.length
      ? el(
          "div",
          { class: "alert-meta" },
          `negative by topic: ${topics.map((t) => `${t.topic} (${t.negative})`).join(", ")}`,
        )
      : null,
    exampleItems.length ? el("ul", { class: "examples" }, ...exampleItems) : null,
  );
  return li;
}

function renderAlerts(sorted) {
  const ol = $("#alerts");
  ol.replaceChildren(...sorted.map(renderAlert));
  state.fresh.clear();
  ol.dataset.count = String(sorted.length);
  $("#alerts-empty").hidden = sorted.length > 0;
  $("#alerts-count").textContent = sorted.length ? `(${sorted.length})` : "";
}

async function seedAlerts() {
  const box = $("#alerts-error");
  try {
    addAlerts((await getJSON("v1/alerts", { limit: 100 })).alerts ?? []);
    clearError(box);
    state.loaded.alerts = true;
  } catch (err) {
    noteError("alerts", err, box);
  }
}

function setLive(s) {
  state.live = s;
  const pill = $("#live");
  pill.dataset.state = s;
  pill.textContent = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[s] ?? s;
}

function openStream() {
  const es = new EventSource(apiUrl("v1/alerts/stream"));
  const onAlert = (ev) => {
    try {
      addAlerts([JSON.parse(ev.data)], { fresh: true });
    } catch (err) {
      noteError("alert stream", err, $("#alerts-error"));
    }
  };
  es.addEventListener("alert", onAlert);
  es.addEventListener("open", () => {
    setLive("live");
    // Whatever was raised between the first fetch and this connection (and after a reconnect).
    seedAlerts();
  });
  es.addEventListener("error", () => setLive(es.readyState === EventSource.CLOSED ? "closed" : "reconnecting"));
  return es;
}

// ---------------------------------------------------------------- wiring

function setKind(kind) {
  state.kind = kind;
  for (const b of document.querySelectorAll(".seg button[data-kind]")) {
    b.setAttribute("aria-pressed", b.dataset.kind === kind ? "true" : "false");
  }
}

function setMinCount(n) {
  state.minCount = n;
  const sel = $("#min-count");
  if (![...sel.options].some((o) => o.value === String(n))) sel.append(el("option", { value: n, text: `≥ ${n}` }));
  sel.value = String(n);
}

function setWindow(w) {
  state.window = w;
  for (const b of document.querySelectorAll(".seg button[data-window]")) {
    b.setAttribute("aria-pressed", b.dataset.window === w ? "true" : "false");
  }
}

/** The view in the address (``#window=1d&kind=topic&ticker=AAPL``), so a reload or a shared link keeps it. */
function writeHash() {
  const p = new URLSearchParams();
  if (state.window !== "1h") p.set("window", state.window);
  if (state.kind !== "ticker") p.set("kind", state.kind);
  if (state.minCount !== 3) p.set("min", String(state.minCount));
  if (state.selected && !state.selected.auto) p.set(state.selected.kind, state.selected.name);
  const hash = p.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
}

/** The view from the address: window, table kind and the chart's entity (``ticker=`` or ``topic=``). */
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const w = p.get("window");
  if (w && document.querySelector(`.seg button[data-window="${CSS.escape(w)}"]`)) setWindow(w);
  const min = Number(p.get("min"));
  if (Number.isInteger(min) && min >= 1 && min <= 1_000_000) setMinCount(min);
  const k = p.get("kind");
  if (k === "ticker" || k === "topic") setKind(k);
  for (const kind of ["ticker", "topic"]) {
    const name = p.get(kind);
    if (name) select(kind, name);
  }
}

function wire() {
  for (const b of document.querySelectorAll(".seg button[data-kind]")) {
    b.addEventListener("click", () => {
      setKind(b.dataset.kind);
      writeHash();
      refreshEntities();
    });
  }
  for (const b of document.querySelectorAll(".seg button[data-window]")) {
    b.addEventListener("click", () => {
      setWindow(b.dataset.window);
      writeHash();
      refreshEntities();
      refreshChart();
    });
  }
  $("#min-count").addEventListener("change", (ev) => {
    setMinCount(Number(ev.target.value));
    writeHash();
    refreshEntities();
  });
  $("#pick").addEventListener("submit", (ev) => {
    ev.preventDefault();
    select($("#pick-kind").value, $("#pick-name").value);
  });
  if (window.ResizeObserver) {
    new ResizeObserver(() => {
      if (state.chart) state.chart.setSize(chartSize());
    }).observe($("#chart"));
  }
  const tick = () => {
    $("#clock").textContent = `${new Date().toISOString().slice(11, 19)} UTC`;
  };
  tick();
  setInterval(tick, 1000);
}

async function loop() {
  await Promise.all([refreshEntities(), state.selected ? refreshChart() : null]);
  setTimeout(loop, REFRESH_MS);
}

// A small, stable hook for tests and for people poking at the console.
window.finpulse = {
  ready: () => state.loaded.entities && state.loaded.alerts,
  entityRows: () => state.rows,
  chartEntity: () => (state.selected ? `${state.selected.kind}:${state.selected.name}` : null),
  chartPoints: () => Number($("#chart").dataset.points || 0),
  alertMarkers: () => Number($("#chart").dataset.markers || 0),
  alertsShown: () => [...document.querySelectorAll("#alerts [data-alert-id]")].map((n) => n.dataset.alertId),
  live: () => state.live,
  errors: () => [...state.errors],
  window: () => state.window,
  select: (kind, name) => select(kind, name),
};

// Uncaught errors are kept too (the test hook reports them; the browser console shows them as well).
window.addEventListener("error", (ev) => noteError("script", ev.error ?? ev.message));
window.addEventListener("unhandledrejection", (ev) => noteError("script", ev.reason));

function main() {
  if (!window.uPlot) throw new Error("uPlot did not load (static/vendor/uPlot.iife.min.js)");
  wire();
  readHash();
  window.addEventListener("hashchange", () => {
    readHash();
    refreshEntities();
    refreshChart();
  });
  seedAlerts().then(openStream);
  loop();
}

main();
