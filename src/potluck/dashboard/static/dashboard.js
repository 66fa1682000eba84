// potluck dashboard: the runs list, a run's live charts, its ledger. Read-only; no build step.
// Views are chosen by the URL's hash (#/, #/run/ID, #/ledger/ID), so moving between them
// never reloads the page. Charts are uPlot (vendored in static/, MIT licence).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { view: null, runId: null, source: null, charts: [], records: [], run: null, runsTimer: null,
                compare: null, compareTicket: 0, selected: new Set() };
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${url}: ${response.status}`);
  return body;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : cell;
    tr.appendChild(td);
  }
  return tr;
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? value.toLocaleString() : value.toPrecision(4);
}

function ago(seconds) {
  if (!seconds) return "—";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function showError(message) {
  const box = $("#error");
  box.hidden = !message;
  box.textContent = message || "";
}

function setLive(mode) {
  const labels = { live: "live", lost: "reconnecting…", off: "" };
  $("#live-state").dataset.state = mode;
  $("#live-state").textContent = labels[mode];
}

// -- charts ------------------------------------------------------------------------------

function makeChart(target, title, seriesLabels, data, extra) {
  const series = [{ label: "round" }].concat(seriesLabels.map((label, i) => ({
    label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true, points: { show: true, size: 5 },
  })));
  const opts = Object.assign({ title, width: 520, height: 240, scales: { x: { time: false } }, series,
                               axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, {}] }, extra || {});
  target.textContent = "";
  const chart = new uPlot(opts, data, target);
  target.dataset.rounds = String(data[0].length);
  return chart;
}

// One chart per figure of the run: each metric the task reports (primary first), held-out and
// the nodes' validation; round time; nodes sampled, aggregated, not aggregated; bytes up; ε.
function runFigures(records, run) {
  const names = [];
  const primary = records.length ? records[records.length - 1].metric : null;
  for (const r of records) for (const k of Object.keys(r.metrics || {}).concat(Object.keys(r.federated_metrics || {})))
    if (!names.includes(k)) names.push(k);
  names.sort((a, b) => (b === primary) - (a === primary));
  const figures = names.map((name) => ({
    id: name === primary ? "primary" : `metric-${name}`, title: name === primary ? `${name} (primary)` : name,
    labels: ["held-out", "nodes' validation"],
    values: (r) => [r.metrics?.[name] ?? null, r.federated_metrics?.[name] ?? null],
  }));
  figures.push({ id: "seconds", title: "round time (s)", labels: ["seconds"], values: (r) => [r.seconds] });
  figures.push({ id: "nodes", title: "nodes per round", labels: ["sampled", "aggregated", "not aggregated"],
                 values: (r) => [r.sampled, r.num_nodes, Object.values(r.failures || {}).reduce((a, b) => a + b, 0)] });
  figures.push({ id: "bytes", title: "bytes up per round (bytes down: not recorded)", labels: ["bytes up"],
                 values: (r) => [r.bytes_up] });
  const budget = run && run.privacy ? run.privacy.epsilon_budget : null;
  if (budget || records.some((r) => r.extras && r.extras.epsilon !== undefined)) {
    figures.push({ id: "epsilon", title: "privacy spent ε", labels: budget ? ["ε spent", "ε budget"] : ["ε spent"],
                   values: (r) => budget ? [r.extras?.epsilon ?? null, budget] : [r.extras?.epsilon ?? null] });
  }
  return figures;
}

function figureData(figure, records) {
  const data = [records.map((r) => r.round)];
  figure.labels.forEach(() => data.push([]));
  for (const r of records) figure.values(r).forEach((v, i) => data[i + 1].push(v === undefined ? null : v));
  return data;
}

function drawRun() {
  const records = state.records;
  const figures = runFigures(records, state.run);
  const box = $("#charts");
  const ids = figures.map((f) => f.id).join(",");
  if (box.dataset.figures !== ids) {  // a new metric appeared: lay the charts out again
    for (const c of state.charts) c.chart.destroy();
    box.textContent = "";
    state.charts = figures.map((f) => {
      const target = el("div", null, { id: `chart-${f.id}`, class: "chart" });
      box.appendChild(target);
      return { figure: f, target, chart: makeChart(target, f.title, f.labels, figureData(f, records)) };
    });
    box.dataset.figures = ids;
  } else {
    state.charts.forEach((c, i) => {
      c.figure = figures[i];
      c.chart.setData(figureData(c.figure, records));
      c.target.dataset.rounds = String(records.length);
    });
  }
  drawFailures(records);
  drawSummary(state.run ? state.run.summary : null);
}

function drawFailures(records) {
  const body = $("#failures tbody");
  body.textContent = "";
  const causes = records.flatMap((r) => (r.failure_causes || []).map((f) => ({ round: r.round, ...f })));
  for (const f of causes.reverse().slice(0, 200)) body.appendChild(row([f.round, f.attempt, f.node_id, f.kind, f.cause]));
  if (!causes.length) body.appendChild(row(["", "", "", "", "none: every sampled node's update was aggregated"]));
}

function drawSummary(s) {
  if (!s) return;
  const best = s.best ? `best ${s.metric} ${fmt(s.best.value)} in round ${s.best.round} ` +
    `(${s.higher_is_better ? "higher" : "lower"} is better)` : "no evaluated round yet";
  $("#run-summary").textContent = `${s.id} — ${s.status}; task ${s.task ?? "?"}, strategy ${s.strategy ?? "?"}; ` +
    `round ${s.rounds}${s.planned ? " of " + s.planned : ""}; ${best}; last change ${ago(s.updated)}`;
  $("#run-problems").textContent = (s.problems || []).join("; ");
}

// -- views -------------------------------------------------------------------------------

function leave() {
  if (state.source) { state.source.close(); state.source = null; }
  clearInterval(state.runsTimer);
  for (const c of state.charts) c.chart.destroy();
  state.charts = [];
  $("#charts").dataset.figures = "";
  setLive("off");
}

function show(view, runId) {
  for (const name of ["runs", "run", "ledger"]) $(`#${name}-view`).hidden = name !== view;
  const nav = $("#nav");
  nav.textContent = "";
  nav.appendChild(el("a", "runs", { href: "#/", class: view === "runs" ? "current" : "" }));
  if (runId) {
    nav.appendChild(el("a", `run ${runId}`, { href: `#/run/${encodeURIComponent(runId)}`, class: view === "run" ? "current" : "" }));
    nav.appendChild(el("a", "ledger", { href: `#/ledger/${encodeURIComponent(runId)}`, class: view === "ledger" ? "current" : "" }));
  }
}

async function runsView() {
  show("runs");
  const refresh = async () => {
    try { drawRuns((await getJSON("api/runs")).runs); showError(""); } catch (e) { showError(e.message); }
  };
  await refresh();
  state.runsTimer = setInterval(refresh, 5000);
}

function drawRuns(runs) {
  const body = $("#runs-table tbody");
  body.textContent = "";
  for (const r of runs) {
    const box = el("input", null, { type: "checkbox", "data-run": r.id });
    box.checked = state.selected.has(r.id);
    box.addEventListener("change", () => { box.checked ? state.selected.add(r.id) : state.selected.delete(r.id); drawCompare(); });
    const link = el("a", r.id, { href: `#/run/${encodeURIComponent(r.id)}`, title: r.path });
    const status = el("span", r.status, { class: `status-${r.status}` });
    const best = r.best ? `${fmt(r.best.value)} (round ${r.best.round})` : "—";
    const rounds = r.planned ? `${r.rounds} / ${r.planned}` : r.rounds;
    const ledger = el("a", "ledger", { href: `#/ledger/${encodeURIComponent(r.id)}` });
    body.appendChild(row([box, link, status, r.task, r.strategy, rounds, r.metric ? `${r.metric} ${r.higher_is_better ? "↑" : "↓"}` : "—",
                          best, fmt(r.latest), ago(r.updated), ledger]));
  }
  if (!runs.length) body.appendChild(row(["", "no run directories yet", "", "", "", "", "", "", "", "", ""]));
}

async function drawCompare() {
  const ticket = ++state.compareTicket;  // a newer selection wins over a slower, older fetch
  const ids = [...state.selected];
  const runs = await Promise.all(ids.map((id) => getJSON(`api/runs/${encodeURIComponent(id)}`)));
  if (ticket !== state.compareTicket) return;
  const target = $("#compare-chart");
  if (state.compare) { state.compare.destroy(); state.compare = null; }
  target.textContent = ids.length ? "" : "tick runs above to overlay their curves";
  target.dataset.rounds = "0";
  if (!ids.length) return;
  const select = $("#compare-metric");
  const names = [...new Set(runs.flatMap((r) => r.records.flatMap((x) => Object.keys(x.metrics || {}))))];
  const wanted = names.includes(select.value) ? select.value : (runs[0].summary.metric || names[0]);
  select.textContent = "";
  for (const n of names) select.appendChild(el("option", n, n === wanted ? { selected: "" } : {}));
  const tables = runs.map((r) => [r.records.map((x) => x.round), r.records.map((x) => x.metrics?.[wanted] ?? null)]);
  state.compare = makeChart(target, `${wanted}, held-out`, ids, uPlot.join(tables));
}

async function runView(runId) {
  show("run", runId);
  try {
    state.run = await getJSON(`api/runs/${encodeURIComponent(runId)}`);
    state.records = state.run.records;
    showError("");
  } catch (e) { showError(e.message); return; }
  drawRun();
  follow(runId, state.run.offset);
}

// The live stream: a record event per committed round, appended without reloading.
function follow(runId, offset) {
  const source = new EventSource(`api/runs/${encodeURIComponent(runId)}/stream?offset=${offset}`);
  state.source = source;
  source.onopen = () => setLive("live");
  source.onerror = () => setLive("lost");
  source.addEventListener("record", (event) => {
    const record = JSON.parse(event.data);
    const last = state.records.length ? state.records[state.records.length - 1].round : -1;
    if (record.round <= last) return;  // already drawn (a reconnect replays from the first offset)
    state.records.push(record);
    drawRun();
  });
  source.addEventListener("summary", (event) => { state.run.summary = JSON.parse(event.data); drawSummary(state.run.summary); });
  source.addEventListener("problem", (event) => showError(JSON.parse(event.data).message));
  source.addEventListener("reset", () => { leave(); runView(runId); });  // metrics.jsonl was rewritten
}

async function ledgerView(runId) {
  show("ledger", runId);
  const verdict = $("#ledger-verdict");
  verdict.textContent = "verifying…";
  verdict.className = "";
  let view;
  try { view = await getJSON(`api/runs/${encodeURIComponent(runId)}/ledger`); showError(""); }
  catch (e) { showError(e.message); return; }
  $("#ledger-table tbody").textContent = "";
  $("#ledger-notes").textContent = "";
  $("#ledger-entry").textContent = "";
  if (!view.present) { verdict.textContent = view.message; return; }
  verdict.className = view.ok ? "ok" : "bad";
  verdict.dataset.ok = String(view.ok);
  verdict.dataset.firstBad = view.first_bad && view.first_bad.entry !== null ? String(view.first_bad.entry) : "";
  verdict.textContent = view.ok ? `The ledger verifies: entries 0 to ${view.entries.length - 1}, head ${view.head}`
    : `The ledger does not verify. First bad entry: ${view.first_bad.entry === null ? "the file" : "entry " + view.first_bad.entry}` +
      ` — ${view.first_bad.message} (${view.problem_count} problem${view.problem_count === 1 ? "" : "s"} in all)`;
  for (const note of view.notes) $("#ledger-notes").appendChild(el("li", note));
  for (const e of view.entries) drawEntryRow(runId, e);
}

function drawEntryRow(runId, e) {
  const short = (h) => el("span", h ? `${h.slice(0, 12)}…` : "—", { title: h || "" });
  const eps = e.privacy ? e.privacy.epsilon : null;
  const tr = row([e.index, e.parsed ? e.kind : "not a JSON object", e.time, short(e.hash), short(e.prev), short(e.signature),
                  e.contributions_count, e.absent ? e.absent.length : null, eps === null || eps === undefined ? "" : fmt(eps),
                  e.problems.join("; ")]);
  tr.className = `entry${e.problems.length ? " bad-entry" : ""}`;
  tr.dataset.entry = String(e.index);
  [3, 4, 5].forEach((i) => tr.children[i].classList.add("hash"));
  if (e.parsed) tr.addEventListener("click", () => showEntry(runId, e.index));
  $("#ledger-table tbody").appendChild(tr);
}

async function showEntry(runId, index) {
  const box = $("#ledger-entry");
  try {
    const entry = await getJSON(`api/runs/${encodeURIComponent(runId)}/ledger/${index}`);
    box.textContent = "";
    box.appendChild(el("h2", `Entry ${index}: ${entry.contributions.length} contributions`));
    const table = el("table");
    table.appendChild(row(["node", "examples", "update digest", "node key", "node signature"]));
    for (const c of entry.contributions) table.appendChild(row([c.node, c.weight, c.update, c.key, c.signature]));
    box.appendChild(table);
    const { contributions, ...header } = entry;
    box.appendChild(el("pre", JSON.stringify(header, null, 2)));
  } catch (e) { showError(e.message); }
}

function route() {
  leave();
  const [, view, id] = (location.hash || "#/").split("/");
  const runId = id ? decodeURIComponent(id) : null;
  if (view === "run" && runId) runView(runId);
  else if (view === "ledger" && runId) ledgerView(runId);
  else runsView();
}

$("#ledger-refresh").addEventListener("click", () => ledgerView(decodeURIComponent(location.hash.split("/")[2])));
$("#compare-metric").addEventListener("change", drawCompare);
window.addEventListener("hashchange", route);
window.__dashboardLoadedAt = Date.now();  // tests check the page was not reloaded
window.potluckDashboard = state;  // and read the charts' data
route();
