/* The runs service's page: plain JavaScript, no build step, no network but this service.

Views (hash routes): #/ the runs table, #/runs/<id> one run, #/compare/<id>,<id>,... and #/new.
Every API call sends the key (X-Api-Key) kept in sessionStorage; a 401 asks for it again. Server-sent
events are read with fetch() and the body's stream reader (EventSource cannot send a header).
For tests and benchmarks: window.shapingCharts holds the uPlot instances on screen, window.shapingTrace
records when each live train.progress point reached a chart (Date.now()). */
"use strict";

(() => {
  const KEY_STORE = "shaping.apiKey";
  const TABLE_POLL_MS = 5000; // the table also refreshes on each run event of GET /events
  const RUN_POLL_MS = 3000; // a run's status, heartbeat and log tail while it is not finished
  const LOG_TAIL = 200;
  const CHART_H = 180;
  const ENDED = new Set(["succeeded", "failed", "cancelled"]);
  const END_EVENTS = new Set(["run.succeeded", "run.failed", "run.cancelled"]);
  const STATUS_ORDER = { running: 0, queued: 1, succeeded: 2, failed: 3, cancelled: 4 };
  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000];
  const COLORS = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#4338ca"];

  const state = {
    key: sessionStorage.getItem(KEY_STORE) || "",
    runs: [],
    loaded: false,
    selected: new Set(),
    sort: { col: "submitted", dir: -1 },
    filter: "",
    live: new Map(), // run id -> {stage, step}: from GET /events, shown under a running run's status
    view: null,
    authWaiting: false,
  };
  window.shapingState = state;
  window.shapingCharts = {};
  window.shapingTrace = [];

  // --- helpers ------------------------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = encodeURIComponent;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** An element: h("td", {className: "n", title: "x"}, child, "text", ...). Text is never parsed as HTML. */
  function h(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "className" || k === "textContent" || k === "htmlFor" || k === "value" || k === "checked" || k === "type" || k === "disabled") node[k] = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function parseTime(text) {
    if (!text) return NaN;
    return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
  }

  function ago(text) {
    const t = parseTime(text);
    if (Number.isNaN(t)) return "—";
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function when(text) {
    const t = parseTime(text);
    if (Number.isNaN(t)) return "—";
    return new Date(t).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const hh = Math.floor(s / 3600);
    const mm = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  }

  function fmt(value, digits = 4) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(2);
    return value.toFixed(digits);
  }

  function bytes(n) {
    if (typeof n !== "number") return "—";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  /** {"a": {"b": 1}} -> {"a.b": 1}; lists kept whole. */
  function flatten(obj, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = v;
    }
    return out;
  }

  let flashTimer = null;
  function flash(text) {
    const node = $("#flash");
    node.textContent = text;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { node.textContent = ""; }, 10000);
  }

  // --- the API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super(body.message || `HTTP ${status}`);
      this.status = status;
      this.code = body.code || `http_${status}`;
    }
  }

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (state.key) headers.set("X-Api-Key", state.key);
    const init = { method: opts.method || "GET", headers, signal: opts.signal, cache: "no-store" };
    if (opts.json !== undefined) {
      headers.set("Content-Type", "application/json");
      init.body = JSON.stringify(opts.json);
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      const body = await res.json().catch(() => ({}));
      askKey(state.key ? `The service refused that key (${body.code || "401"}): enter the right one.` : "This service needs its API key.");
      throw new ApiError(401, body);
    }
    if (!res.ok) {
      const body = await res.json().catch(() => ({ message: `${res.status} ${res.statusText}` }));
      throw new ApiError(res.status, body);
    }
    return opts.raw ? res : res.json();
  }

  /** Server-sent events over fetch: calls onEvent({event, id, data}) per event until the stream ends. */
  async function readSSE(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? "" : line.slice(colon + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "data") data.push(v);
          else if (field === "event") event = v;
          else if (field === "id") id = v;
        }
        if (data.length) onEvent({ event, id, data: data.join("\n") });
      }
    }
  }

  /** Follows an SSE route; `again()` says whether to reconnect once it ends or breaks (backing off). */
  async function follow(path, onEvent, signal, { again = () => false, onOpen, onClose } = {}) {
    let delay = 1000;
    while (!signal.aborted) {
      try {
        const res = await api(path, { raw: true, signal, headers: { Accept: "text/event-stream" } });
        if (onOpen) onOpen();
        delay = 1000;
        await readSSE(res.body, onEvent);
      } catch (err) {
        if (signal.aborted || err.status === 401 || err.status === 404) break;
      } finally {
        if (onClose) onClose();
      }
      if (signal.aborted || !again()) break;
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  // --- the key ------------------------------------------------------------------------------------
  function askKey(message) {
    state.authWaiting = true;
    stopGlobal();
    const dialog = $("#login");
    $("#login-message").textContent = message || "";
    $("#login-key").value = "";
    if (!dialog.open) dialog.showModal();
    $("#login-key").focus();
  }

  $("#login").addEventListener("cancel", (e) => e.preventDefault()); // Escape: the page is useless without it
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("#login-key").value.trim();
    if (!key) {
      $("#login-message").textContent = "Enter the key.";
      return;
    }
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $("#login").close();
    state.authWaiting = false;
    boot();
  });
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    state.key = "";
    askKey("Key forgotten: enter it to go on.");
  });

  // --- the events of every run (GET /events): keeps the table current -----------------------------
  let globalCtl = null;
  function startGlobal() {
    if (globalCtl) return;
    globalCtl = new AbortController();
    const live = $("#live");
    follow("/events", onGlobalEvent, globalCtl.signal, {
      again: () => true,
      onOpen: () => { live.textContent = "live"; live.classList.add("on"); },
      onClose: () => { live.textContent = "offline"; live.classList.remove("on"); },
    });
  }
  function stopGlobal() {
    if (globalCtl) globalCtl.abort();
    globalCtl = null;
  }

  let refreshTimer = null;
  function onGlobalEvent(message) {
    let ev;
    try { ev = JSON.parse(message.data); } catch { return; }
    const live = state.live.get(ev.run) || {};
    if (ev.type === "stage.started") live.stage = ev.data.stage;
    if (ev.type === "train.progress") live.step = ev.data.step;
    if (END_EVENTS.has(ev.type)) live.stage = null;
    state.live.set(ev.run, live);
    if (ev.type === "train.progress") {
      if (state.view === "runs") scheduleTable();
    } else if (state.view === "runs") {
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(refreshRuns, 300);
    }
  }

  let tableTimer = null;
  function scheduleTable() {
    if (tableTimer) return;
    tableTimer = setTimeout(() => { tableTimer = null; renderTable(); }, 100);
  }

  // --- the runs table -----------------------------------------------------------------------------
  const evalOf = (r) => (r.metrics && r.metrics["eval/metrics.json"]) || null;

  function columns() {
    const cols = [
      { id: "sel", label: "Select", sortable: false },
      { id: "id", label: "Run", key: (r) => r.id },
      { id: "status", label: "Status", key: (r) => STATUS_ORDER[r.status] ?? 9 },
      { id: "submitted", label: "Submitted", key: (r) => r.submitted_at || "" },
      { id: "overrides", label: "Changed params", key: (r) => (r.overrides || []).join(" ") },
      { id: "base_loss", label: "Base loss", num: (r) => evalOf(r)?.base?.loss, better: "low" },
      { id: "teacher_loss", label: "Teacher loss", num: (r) => evalOf(r)?.teacher?.loss, better: "low" },
      { id: "tuned_loss", label: "Tuned loss", num: (r) => evalOf(r)?.tuned?.loss, better: "low" },
      { id: "gap_closed", label: "Gap closed", num: (r) => evalOf(r)?.gap_closed, better: "high", digits: 3 },
      { id: "eos_tuned", label: "EOS rate (tuned)", num: (r) => evalOf(r)?.samples?.tuned?.eos_rate, better: "high", digits: 2 },
    ];
    const criteria = new Set();
    for (const run of state.runs) {
      for (const [name, figures] of Object.entries(evalOf(run)?.judge?.tuned || {})) {
        if (figures && typeof figures === "object" && typeof figures.mean === "number") criteria.add(name);
      }
    }
    for (const name of [...criteria].sort()) {
      cols.push({ id: `judge:${name}`, label: `Judge ${name} (tuned)`, num: (r) => evalOf(r)?.judge?.tuned?.[name]?.mean, better: "high", digits: 2 });
    }
    for (const col of cols) if (col.num && !col.key) col.key = col.num;
    return cols;
  }

  let shownColumns = "";
  const rows = new Map(); // run id -> <tr>

  function visibleRuns(cols) {
    const needle = state.filter.trim().toLowerCase();
    let list = state.runs.filter((r) => !needle || [r.id, r.status, r.stage || "", ...(r.overrides || [])].join(" ").toLowerCase().includes(needle));
    const col = cols.find((c) => c.id === state.sort.col);
    if (col) {
      const dir = state.sort.dir;
      list = list
        .map((r, i) => ({ r, i, k: col.key(r) }))
        .sort((a, b) => {
          const am = a.k === undefined || a.k === null || a.k === "";
          const bm = b.k === undefined || b.k === null || b.k === "";
          if (am !== bm) return am ? 1 : -1; // missing values last, either way
          if (!am && a.k !== b.k) return (a.k < b.k ? -1 : 1) * dir;
          return a.i - b.i;
        })
        .map((x) => x.r);
    }
    return list;
  }

  function renderHeader(cols) {
    const tr = $("#runs-table thead tr");
    tr.replaceChildren(...cols.map((col) => {
      const th = h("th", { scope: "col", className: `${col.num ? "n" : ""} ${col.id === "sel" ? "sel" : ""}`, "data-col": col.id });
      if (col.sortable === false) {
        th.append(h("span", { className: "sr" }, col.label));
      } else {
        th.append(h("button", { type: "button", className: "sort", onclick: () => sortBy(col.id) }, col.label));
      }
      return th;
    }));
  }

  function sortBy(id) {
    state.sort = state.sort.col === id ? { col: id, dir: -state.sort.dir } : { col: id, dir: 1 };
    renderTable();
  }

  function cellContent(col, run, best) {
    // [signature, () => children]: a cell is rebuilt only when its signature changes (no flicker, focus kept)
    switch (col.id) {
      case "id":
        return [run.id, () => [h("a", { href: `#/runs/${enc(run.id)}` }, run.id)]];
      case "status": {
        const live = state.live.get(run.id) || {};
        const stage = run.status === "running" ? live.stage || run.stage : null;
        const sub = run.status === "running" ? [stage, live.step !== undefined && stage === "train" ? `step ${live.step}` : null].filter(Boolean).join(" · ") : run.status === "failed" ? run.reason || "" : "";
        return [`${run.status}|${sub}`, () => [h("span", { className: `badge ${run.status}` }, run.status), h("span", { className: "sub", title: sub }, sub.length > 40 ? `${sub.slice(0, 40)}…` : sub)]];
      }
      case "submitted":
        return [run.submitted_at || "", () => [run.submitted_at ? h("time", { datetime: run.submitted_at }, when(run.submitted_at)) : "—"]];
      case "overrides": {
        const list = run.overrides || [];
        return [list.join("\n"), () => (list.length ? list.map((o) => h("code", {}, o)) : [h("span", { className: "hint" }, run.overrides ? "none" : "(queued by hand)")])];
      }
      default: {
        const v = col.num(run);
        const isBest = typeof v === "number" && best.get(col.id) === v;
        return [`${v}|${isBest}`, () => [fmt(v, col.digits ?? 4), isBest ? h("span", { className: "sr" }, " (best)") : null]];
      }
    }
  }

  function renderTable() {
    const cols = columns();
    const signature = cols.map((c) => c.id).join("|");
    if (signature !== shownColumns) {
      shownColumns = signature;
      renderHeader(cols);
      for (const tr of rows.values()) tr.remove();
      rows.clear();
    }
    for (const th of document.querySelectorAll("#runs-table thead th")) {
      const sorted = th.dataset.col === state.sort.col;
      if (sorted) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    const list = visibleRuns(cols);
    // the best value of each metric column among the rows shown (two values at least)
    const best = new Map();
    for (const col of cols.filter((c) => c.better)) {
      const values = list.map(col.num).filter((v) => typeof v === "number" && Number.isFinite(v));
      if (values.length >= 2 && new Set(values).size > 1) best.set(col.id, col.better === "low" ? Math.min(...values) : Math.max(...values));
    }
    const tbody = $("#runs-table tbody");
    const keep = new Set(list.map((r) => r.id));
    for (const [id, tr] of rows) {
      if (!keep.has(id)) { tr.remove(); rows.delete(id); }
    }
    for (const run of list) {
      let tr = rows.get(run.id);
      if (!tr) {
        tr = h("tr", { "data-id": run.id });
        for (const col of cols) {
          const td = h(col.id === "id" ? "th" : "td", { className: `${col.id === "sel" ? "sel" : col.id} ${col.num ? "n" : ""}`, "data-col": col.id });
          if (col.id === "id") td.setAttribute("scope", "row");
          if (col.id === "sel") {
            td.append(h("input", {
              type: "checkbox",
              "aria-label": `Select ${run.id} to compare`,
              onchange: (e) => {
                if (e.target.checked) state.selected.add(run.id);
                else state.selected.delete(run.id);
                updateCompare();
              },
            }));
          }
          tr.append(td);
        }
        rows.set(run.id, tr);
      }
      for (const [i, col] of cols.entries()) {
        const td = tr.children[i];
        if (col.id === "sel") {
          td.firstChild.checked = state.selected.has(run.id);
          continue;
        }
        const [sig, build] = cellContent(col, run, best);
        if (td.dataset.sig !== sig) {
          td.dataset.sig = sig;
          td.replaceChildren(...build().filter((c) => c !== null && c !== undefined));
          if (col.better) td.classList.toggle("best", sig.endsWith("|true"));
        }
      }
    }
    // order: only move rows when it changed (moving a row would take the focus off its checkbox)
    const current = [...tbody.children];
    if (current.length !== list.length || list.some((r, i) => current[i] !== rows.get(r.id))) {
      tbody.replaceChildren(...list.map((r) => rows.get(r.id)));
    }
    const empty = $("#runs-empty");
    if (!state.loaded) empty.textContent = "Loading…";
    else if (!state.runs.length) empty.replaceChildren("No runs yet: ", h("a", { href: "#/new" }, "queue one"), ".");
    else if (!list.length) empty.textContent = "No run matches the filter.";
    empty.hidden = state.loaded && list.length > 0;
    if (state.loaded && !performance.getEntriesByName("shaping:table").length) performance.mark("shaping:table");
    for (const id of [...state.selected]) if (!state.runs.some((r) => r.id === id)) state.selected.delete(id);
    updateCompare();
  }

  function updateCompare() {
    const button = $("#compare-btn");
    button.disabled = state.selected.size < 2;
    button.textContent = `Compare selected (${state.selected.size})`;
  }

  $("#compare-btn").addEventListener("click", () => {
    const ids = state.runs.map((r) => r.id).filter((id) => state.selected.has(id)).reverse(); // oldest first
    if (ids.length >= 2) location.hash = `#/compare/${ids.map(enc).join(",")}`;
  });
  $("#runs-filter").addEventListener("input", (e) => {
    state.filter = e.target.value;
    renderTable();
  });

  let refreshing = null;
  let refreshAgain = false;
  async function refreshRuns() {
    if (refreshing) { refreshAgain = true; return refreshing; }
    refreshing = (async () => {
      try {
        const answer = await api("/runs?full=true");
        state.runs = answer.runs;
        state.loaded = true;
        for (const run of state.runs) if (ENDED.has(run.status)) state.live.delete(run.id);
        if (state.view === "runs") renderTable();
      } finally {
        refreshing = null;
      }
      if (refreshAgain) { refreshAgain = false; return refreshRuns(); }
    })();
    return refreshing;
  }

  /** Calls `fn` (async) every `ms` after the previous call has finished, so a slow answer (GET
  /runs?full=true runs `dvc exp show`) never stacks requests; returns a stop function. */
  function every(ms, fn) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      try { await fn(); } catch { /* shown where it matters */ }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
    return () => { stopped = true; clearTimeout(timer); };
  }

  // a hidden tab's timers are throttled (to once a minute after five minutes): refresh when it shows again
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.view === "runs" && !state.authWaiting) refreshRuns().catch(() => {});
  });

  const runsView = {
    stop: null,
    enter() {
      renderTable();
      refreshRuns().catch(() => {});
      this.stop = every(TABLE_POLL_MS, () => (!document.hidden && !state.authWaiting ? refreshRuns() : null));
    },
    leave() { this.stop(); },
  };

  // --- charts -------------------------------------------------------------------------------------
  function makeChart(node, series, { name, yLabel } = {}) {
    node.replaceChildren();
    const opts = {
      width: Math.max(240, node.clientWidth || 320),
      height: CHART_H,
      scales: { x: { time: false } },
      // steps are whole numbers: no 0.5 ticks on the x axis
      axes: [
        { label: "step", labelSize: 18, size: 36, incrs: STEP_INCRS },
        { size: 64, label: yLabel, labelSize: yLabel ? 18 : 0, values: (u, splits) => splits.map(tick) },
      ],
      series: [{ label: "step" }, ...series.map((s, i) => ({ label: s, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { size: 5 } }))],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    const chart = new uPlot(opts, [[], ...series.map(() => [])], node);
    const resize = new ResizeObserver(() => {
      const width = Math.max(240, node.clientWidth);
      if (Math.abs(width - chart.width) > 2) chart.setSize({ width, height: CHART_H });
    });
    resize.observe(node);
    chart.shapingResize = resize;
    if (name) window.shapingCharts[name] = chart;
    return chart;
  }

  /** A y-axis tick: small values (a learning rate) in exponent form, others without float noise. */
  function tick(v) {
    if (v === null || v === undefined) return "";
    if (v !== 0 && Math.abs(v) < 1e-2) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  function dropChart(name) {
    const chart = window.shapingCharts[name];
    if (!chart) return;
    chart.shapingResize.disconnect();
    chart.destroy();
    delete window.shapingCharts[name];
  }

  /** uPlot's aligned data from {step: value} maps: [steps, values of map 1, values of map 2, ...]. */
  function aligned(maps) {
    const steps = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    return [steps, ...maps.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))];
  }

  // --- one run ------------------------------------------------------------------------------------
  const METRICS = ["loss", "learning_rate", "tokens_per_second"];
  const runView = {
    id: null,
    ctl: null,
    stopPoll: null,
    beat: null,
    run: null,
    series: null,
    progress: [], // [{t, step}] of train.progress events with their times, for the ETA
    step: null,
    stage: null,
    heartbeat: null,
    ended: false,
    flushQueued: false,
    drawnSteps: [], // {step, derived (the event's time)} of train.progress events not yet drawn

    enter(id) {
      this.id = id;
      this.ctl = new AbortController();
      this.run = null;
      this.series = Object.fromEntries(METRICS.map((m) => [m, new Map()]));
      this.progress = [];
      this.step = null;
      this.stage = null;
      this.heartbeat = null;
      this.ended = false;
      this.drawnSteps = [];
      $("#run-title").textContent = id;
      for (const sel of ["#run-stage", "#run-heartbeat", "#run-submitted", "#run-overrides", "#run-reason"]) $(sel).textContent = "—";
      $("#run-status").textContent = "…";
      $("#run-status").className = "badge";
      $("#run-error").textContent = "";
      $("#run-log").textContent = "";
      $("#run-artifacts tbody").replaceChildren();
      $("#run-artifacts-empty").hidden = false;
      $("#run-metrics tbody").replaceChildren();
      $("#run-metrics-all tbody").replaceChildren();
      $("#run-metrics").hidden = true;
      $("#run-metrics-empty").hidden = false;
      for (const m of METRICS) makeChart($(`#chart-${m}`), [m], { name: m });
      this.renderProgress();
      const signal = this.ctl.signal;
      this.load().then(() => {
        if (signal.aborted) return;
        this.loadMetrics();
        this.loadLogs();
        if (this.run?.status === "succeeded") this.loadArtifacts();
        follow(`/runs/${enc(id)}/events`, (m) => this.onEvent(m), signal, { again: () => !this.ended });
      });
      this.stopPoll = every(RUN_POLL_MS, () => (this.ended || state.authWaiting || document.hidden ? null : Promise.all([this.load(), this.loadLogs()])));
      this.beat = setInterval(() => this.renderHeartbeat(), 1000);
    },

    leave() {
      this.ctl.abort();
      this.stopPoll();
      clearInterval(this.beat);
      for (const m of METRICS) dropChart(m);
    },

    async load() {
      const signal = this.ctl.signal;
      try {
        const run = await api(`/runs/${enc(this.id)}`, { signal });
        if (signal.aborted) return;
        const was = this.run?.status;
        this.run = run;
        if (run.heartbeat && (!this.heartbeat || parseTime(run.heartbeat.time) >= parseTime(this.heartbeat.time))) this.heartbeat = run.heartbeat;
        this.stage = run.status === "running" ? run.stage || this.stage : null;
        if (ENDED.has(run.status) && !this.ended) this.finish();
        else if (was && was !== run.status) this.loadLogs();
        this.renderRun();
      } catch (err) {
        if (!signal.aborted && err.status !== 401) $("#run-error").textContent = err.status === 404 ? `No run ${this.id}.` : `Could not read the run: ${err.message}`;
        if (err.status === 404) this.ended = true;
      }
    },

    finish() {
      this.ended = true;
      this.stage = null;
      this.loadLogs();
      this.loadMetrics();
      if (this.run?.status === "succeeded") this.loadArtifacts();
    },

    async loadMetrics() {
      try {
        const { history } = await api(`/runs/${enc(this.id)}/metrics`, { signal: this.ctl.signal });
        for (const m of ["loss", "learning_rate"]) for (const p of history[m] || []) this.series[m].set(p.step, p.value);
        const steps = (history.loss || []).map((p) => p.step);
        if (steps.length) this.step = Math.max(this.step ?? 0, ...steps);
        this.flushCharts();
      } catch { /* shown by load() */ }
    },

    async loadLogs() {
      try {
        const { lines } = await api(`/runs/${enc(this.id)}/logs?tail=${LOG_TAIL}`, { signal: this.ctl.signal });
        const pre = $("#run-log");
        const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
        const text = lines.map((l) => l.split("\r").filter(Boolean).pop() || "").join("\n");
        if (pre.textContent !== text) {
          pre.textContent = text || "(no output yet)";
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        }
      } catch { /* shown by load() */ }
    },

    async loadArtifacts() {
      try {
        const { artifacts } = await api(`/runs/${enc(this.id)}/artifacts`, { signal: this.ctl.signal });
        const id = this.id;
        $("#run-artifacts tbody").replaceChildren(...artifacts.map((a) => h("tr", {},
          h("td", {}, h("code", {}, a.path)),
          h("td", {}, a.kind === "dir" ? `folder (${a.nfiles ?? "?"} files)` : "file"),
          h("td", { className: "n" }, bytes(a.size)),
          h("td", {}, h("code", { title: a.md5 || "" }, (a.md5 || "—").slice(0, 10))),
          h("td", {}, a.stage || "—"),
          h("td", {}, h("button", { type: "button", className: "link", "data-path": a.path, onclick: (e) => download(id, a.path, a.kind, e.target) }, a.kind === "dir" ? "Download .tar" : "Download", h("span", { className: "sr" }, ` ${a.path}`))),
        )));
        $("#run-artifacts-empty").hidden = artifacts.length > 0;
        if (!artifacts.length) $("#run-artifacts-empty").textContent = "No outputs recorded.";
      } catch (err) {
        $("#run-artifacts-empty").textContent = `Artifacts: ${err.message}`;
      }
    },

    onEvent(message) {
      let ev;
      try { ev = JSON.parse(message.data); } catch { return; }
      const d = ev.data || {};
      if (["run.started", "stage.started", "stage.completed", "checkpoint.saved", "train.progress"].includes(ev.type)) {
        if (!this.heartbeat || parseTime(ev.time) >= parseTime(this.heartbeat.time)) this.heartbeat = { time: ev.time, type: ev.type, data: d };
      }
      if (ev.type === "stage.started" && !this.ended) this.stage = d.stage;
      if (ev.type === "train.progress") {
        if (typeof d.loss === "number") this.series.loss.set(d.step, d.loss);
        if (typeof d.learning_rate === "number") this.series.learning_rate.set(d.step, d.learning_rate);
        if (typeof d.tokens_per_second === "number") this.series.tokens_per_second.set(d.step, d.tokens_per_second);
        this.step = Math.max(this.step ?? 0, d.step);
        const t = parseTime(ev.time);
        if (!Number.isNaN(t)) this.progress.push({ t, step: d.step });
        this.drawnSteps.push({ step: d.step, derived: ev.time });
        this.flushCharts();
      }
      if (END_EVENTS.has(ev.type)) {
        this.load();
      }
      this.renderRun();
    },

    flushCharts() {
      // once per chunk of the stream (a microtask: not throttled like a timer in a background tab)
      if (this.flushQueued) return;
      this.flushQueued = true;
      queueMicrotask(() => {
        this.flushQueued = false;
        for (const m of METRICS) {
          const chart = window.shapingCharts[m];
          if (chart) chart.setData(aligned([this.series[m]]));
        }
        const now = Date.now(); // each live step's point is on the chart now (bench/web_page.py reads this)
        for (const p of this.drawnSteps.splice(0)) window.shapingTrace.push({ run: this.id, ...p, t: now, hidden: document.hidden });
        this.renderProgress();
      });
    },

    maxSteps() {
      const fromParams = this.run?.params?.["params.yaml"]?.train?.max_steps;
      if (typeof fromParams === "number" && fromParams > 0) return fromParams;
      for (const o of this.run?.overrides || []) {
        const m = /^\+{0,2}train\.max_steps=(\d+)$/.exec(o.trim());
        if (m && Number(m[1]) > 0) return Number(m[1]);
      }
      return null;
    },

    renderProgress() {
      const bar = $("#run-progress");
      const text = $("#run-progress-text");
      const status = this.run?.status;
      const max = this.maxSteps();
      const step = this.step;
      if (status === "succeeded") {
        bar.max = 1;
        bar.value = 1;
        text.textContent = step !== null ? `done (last logged step ${step}${max ? ` of ${max}` : ""})` : "done";
        return;
      }
      if (step === null) {
        bar.max = 1;
        bar.value = 0;
        text.textContent = status === "running" ? `no training step yet${this.stage ? ` (${this.stage})` : ""}` : status === "queued" ? "queued" : "—";
        return;
      }
      if (!max) {
        if (ENDED.has(status)) { bar.max = 1; bar.value = 0; } else bar.removeAttribute("value"); // indeterminate
        text.textContent = `step ${step} (max steps unknown)`;
        return;
      }
      bar.max = max;
      bar.value = Math.min(step, max);
      const pct = Math.round((100 * Math.min(step, max)) / max);
      let eta = "ETA —";
      const recent = this.progress.slice(-12);
      if (!ENDED.has(status) && recent.length >= 2) {
        const first = recent[0];
        const last = recent[recent.length - 1];
        if (last.t > first.t && last.step > first.step) {
          const perMs = (last.step - first.step) / (last.t - first.t);
          eta = `ETA ${duration((max - step) / perMs)}`;
        }
      }
      text.textContent = ENDED.has(status) ? `${status} at step ${step} / ${max} (${pct}%)` : `step ${step} / ${max} (${pct}%) · ${eta}`;
    },

    renderHeartbeat() {
      const beat = this.heartbeat;
      if (!beat) { $("#run-heartbeat").textContent = "—"; return; }
      const what = beat.type === "train.progress" ? `step ${beat.data?.step}` : beat.type === "stage.started" || beat.type === "stage.completed" ? `${beat.type} ${beat.data?.stage}` : beat.type;
      $("#run-heartbeat").textContent = `${ago(beat.time)} (${what})`;
    },

    renderRun() {
      const run = this.run;
      if (!run) return;
      const badge = $("#run-status");
      badge.textContent = run.status;
      badge.className = `badge ${run.status}`;
      $("#run-stage").textContent = this.stage || (run.status === "running" ? "starting" : "—");
      $("#run-submitted").textContent = when(run.submitted_at);
      $("#run-overrides").replaceChildren(...((run.overrides || []).length ? run.overrides.map((o) => h("code", {}, o, " ")) : [run.overrides ? "none" : "(queued by hand)"]));
      $("#run-reason").textContent = run.reason || "—";
      $("#run-cancel").disabled = !["queued", "running"].includes(run.status);
      $("#run-retry").disabled = !["failed", "cancelled"].includes(run.status) || !run.overrides;
      this.renderHeartbeat();
      this.renderProgress();
      const metrics = run.metrics || {};
      const body = $("#run-metrics tbody");
      if (Object.keys(metrics).length && !body.children.length) {
        const ev = metrics["eval/metrics.json"] || {};
        const models = ["base", "teacher", "tuned"].filter((m) => ev[m] && typeof ev[m] === "object");
        const out = models.map((m) => h("tr", {},
          h("th", { scope: "row" }, m),
          h("td", { className: "n", "data-metric": `${m}.loss` }, fmt(ev[m].loss)),
          h("td", { className: "n" }, fmt(ev[m].perplexity, 3)),
          h("td", { className: "n" }, fmt(ev.samples?.[m]?.eos_rate, 2)),
          h("td", { className: "n" }, fmt(ev.samples?.[m]?.mean_tokens, 1)),
        ));
        out.push(h("tr", {}, h("th", { scope: "row" }, "gap closed"), h("td", { className: "n", "data-metric": "gap_closed" }, fmt(ev.gap_closed, 3)), h("td", { colspan: 3 })));
        for (const [criterion, figures] of Object.entries(ev.judge?.tuned || {})) {
          if (figures && typeof figures.mean === "number") out.push(h("tr", {}, h("th", { scope: "row" }, `judge ${criterion} (tuned)`), h("td", { className: "n" }, fmt(figures.mean, 2)), h("td", { colspan: 3 })));
        }
        body.replaceChildren(...out);
        $("#run-metrics").hidden = false;
        $("#run-metrics-empty").hidden = true;
        const all = [];
        for (const [file, values] of Object.entries(metrics)) {
          all.push(h("tr", {}, h("th", { colspan: 2, scope: "colgroup" }, h("code", {}, file))));
          for (const [k, v] of Object.entries(flatten(values))) {
            if (typeof v === "number") all.push(h("tr", {}, h("td", {}, k), h("td", { className: "n" }, fmt(v))));
          }
        }
        $("#run-metrics-all tbody").replaceChildren(...all);
      }
    },
  };

  async function download(runId, path, kind, button) {
    button.disabled = true;
    try {
      const res = await api(`/runs/${enc(runId)}/artifacts/${path.split("/").map(enc).join("/")}`, { raw: true });
      const blob = await res.blob();
      const named = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "");
      const name = named ? named[1] : path.split("/").pop() + (kind === "dir" ? ".tar" : "");
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      if (err.status !== 401) $("#run-error").textContent = `Download of ${path} failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  $("#run-cancel").addEventListener("click", async (e) => {
    const id = runView.id;
    e.target.disabled = true;
    try {
      await api(`/runs/${enc(id)}/cancel`, { method: "POST" });
      flash(`Cancelled ${id}.`);
      await runView.load();
    } catch (err) {
      if (err.status !== 401) $("#run-error").textContent = err.message;
      e.target.disabled = false;
    }
  });
  $("#run-retry").addEventListener("click", async (e) => {
    e.target.disabled = true;
    try {
      const run = await api(`/runs/${enc(runView.id)}/retry`, { method: "POST", json: {} });
      flash(`Queued ${run.id}, a retry of ${runView.id}.`);
      location.hash = `#/runs/${enc(run.id)}`;
    } catch (err) {
      if (err.status !== 401) $("#run-error").textContent = err.message;
      e.target.disabled = false;
    }
  });

  // --- compare ------------------------------------------------------------------------------------
  const compareView = {
    ctl: null,
    enter(ids) {
      this.ctl = new AbortController();
      const signal = this.ctl.signal;
      $("#compare-title").textContent = `Compare ${ids.join(", ")}`;
      $("#compare-error").textContent = ids.length < 2 ? "Pick two runs or more in the table." : "";
      for (const sel of ["#compare-metrics", "#compare-params"]) {
        $(`${sel} thead`).replaceChildren();
        $(`${sel} tbody`).replaceChildren();
      }
      $("#compare-params-empty").textContent = "Loading…";
      $("#compare-samples").replaceChildren(h("p", { className: "empty" }, "Loading…"));
      const chart = makeChart($("#chart-compare"), ids, { name: "compare", yLabel: "loss" });
      // one GET /runs?full=true (one `dvc exp show` for all) rather than one GET /runs/{id} per run
      const runs = api("/runs?full=true", { signal })
        .then((answer) => ids.map((id) => answer.runs.find((r) => r.id === id) || { id, status: "unknown", error: "no such run" }))
        .catch((err) => ids.map((id) => ({ id, status: "unknown", error: err.message })));
      Promise.all(ids.map((id) => api(`/runs/${enc(id)}/metrics`, { signal }).catch(() => ({ history: {} })))).then((answers) => {
        if (signal.aborted) return;
        chart.setData(aligned(answers.map((a) => new Map((a.history.loss || []).map((p) => [p.step, p.value])))));
      });
      runs.then((found) => {
        if (signal.aborted) return;
        const missing = found.filter((r) => r.error);
        if (missing.length) $("#compare-error").textContent = missing.map((r) => `${r.id}: ${r.error}`).join("\n");
        this.renderMetrics(found);
        this.renderParams(found);
        this.loadSamples(found, signal);
      });
    },
    leave() {
      this.ctl.abort();
      dropChart("compare");
    },

    renderMetrics(runs) {
      const cols = columns().filter((c) => c.num);
      $("#compare-metrics thead").replaceChildren(h("tr", {}, h("th", { scope: "col" }, "Metric"), ...runs.map((r) => h("th", { scope: "col", className: "n" }, r.id))));
      $("#compare-metrics tbody").replaceChildren(...[
        h("tr", {}, h("th", { scope: "row" }, "Status"), ...runs.map((r) => h("td", { className: "n" }, h("span", { className: `badge ${r.status}` }, r.status)))),
        ...cols.map((col) => {
          const values = runs.map((r) => col.num(r));
          const nums = values.filter((v) => typeof v === "number");
          const best = nums.length >= 2 && new Set(nums).size > 1 ? (col.better === "low" ? Math.min(...nums) : Math.max(...nums)) : null;
          return h("tr", {}, h("th", { scope: "row" }, col.label), ...values.map((v) => h("td", { className: `n ${v === best ? "best" : ""}` }, fmt(v, col.digits ?? 4))));
        }),
      ]);
    },

    renderParams(runs) {
      const flat = runs.map((r) => flatten(r.params?.["params.yaml"] || {}));
      const without = runs.filter((r, i) => !Object.keys(flat[i]).length).map((r) => r.id);
      const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
      const differ = keys.filter((k) => new Set(flat.map((f) => JSON.stringify(f[k]))).size > 1);
      $("#compare-params thead").replaceChildren(h("tr", {}, h("th", { scope: "col" }, "Param"), ...runs.map((r) => h("th", { scope: "col" }, r.id))));
      $("#compare-params tbody").replaceChildren(...differ.map((k) => h("tr", { "data-param": k }, h("th", { scope: "row" }, h("code", {}, k)), ...flat.map((f) => h("td", {}, f[k] === undefined ? "—" : JSON.stringify(f[k]))))));
      const notes = [];
      if (without.length) notes.push(`No params for ${without.join(", ")} (a run's params are read once it has succeeded).`);
      if (!differ.length) notes.push("No param differs.");
      else notes.push(`${differ.length} of ${keys.length} params differ.`);
      $("#compare-params-empty").textContent = notes.join(" ");
    },

    async loadSamples(runs, signal) {
      const found = await Promise.all(runs.map(async (r) => {
        if (r.status !== "succeeded") return null;
        try {
          const res = await api(`/runs/${enc(r.id)}/artifacts/eval/samples.jsonl`, { raw: true, signal });
          return (await res.text()).split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
        } catch {
          return null;
        }
      }));
      if (signal.aborted) return;
      const prompts = new Map(); // prompt id -> {prompt, reference, base: [[run, text, finish]], tuned: [...]}
      found.forEach((samples, i) => {
        for (const row of samples || []) {
          const entry = prompts.get(row.id) || { prompt: row.prompt, reference: row.reference, base: [], tuned: [] };
          entry.base.push([runs[i].id, row.base, row.base_finish]);
          entry.tuned.push([runs[i].id, row.tuned, row.tuned_finish]);
          prompts.set(row.id, entry);
        }
      });
      const out = $("#compare-samples");
      if (!prompts.size) {
        out.replaceChildren(h("p", { className: "empty" }, "No samples: eval/samples.jsonl is read from succeeded runs."));
        return;
      }
      const card = (title, text, finish) => h("div", { className: "sample" }, h("h5", {}, title, finish ? ` · ${finish}` : ""), text ? h("p", {}, text) : h("p", { className: "hint" }, "(empty reply)"));
      out.replaceChildren(...[...prompts].map(([id, e]) => {
        const sameBase = new Set(e.base.map((b) => b[1])).size === 1;
        const cards = [
          ...(sameBase ? [card("base", e.base[0][1], e.base[0][2])] : e.base.map(([run, text, finish]) => card(`base (${run})`, text, finish))),
          card("teacher (held-out reference)", e.reference),
          ...e.tuned.map(([run, text, finish]) => card(`tuned: ${run}`, text, finish)),
        ];
        return h("article", { className: "samples-prompt", "data-prompt": id }, h("h4", {}, e.prompt, " ", h("span", { className: "hint" }, `(${id})`)), h("div", { className: "samples-grid" }, cards));
      }));
    },
  };

  // --- new run ------------------------------------------------------------------------------------
  const newView = {
    groups: null,
    async enter() {
      if (this.groups) return;
      const box = $("#new-groups");
      box.replaceChildren(h("p", { className: "empty" }, "Loading conf/'s groups…"));
      try {
        this.groups = (await api("/config")).groups;
      } catch (err) {
        if (err.status !== 401) box.replaceChildren(h("p", { className: "error" }, `Could not read the config groups: ${err.message}`));
        return;
      }
      box.replaceChildren(...Object.entries(this.groups).map(([name, g]) => {
        const options = g.default === null || g.default === undefined ? [h("option", { value: "" }, "(none)")] : [];
        for (const o of g.options) options.push(h("option", { value: o }, o + (o === g.default ? " (default)" : "")));
        const select = h("select", { id: `group-${name}`, name }, options);
        select.value = g.default ?? "";
        return h("div", {}, h("label", { htmlFor: `group-${name}` }, name), select);
      }));
    },
    leave() {},
    overrides() {
      const out = [];
      for (const [name, g] of Object.entries(this.groups || {})) {
        const value = $(`#group-${CSS.escape(name)}`).value;
        const dflt = g.default ?? "";
        if (value !== dflt) out.push(value ? `${dflt ? "" : "+"}${name}=${value}` : `~${name}`);
      }
      return out.concat($("#new-overrides").value.split("\n").map((l) => l.trim()).filter(Boolean));
    },
  };

  function fieldError(which, message) {
    const input = $(`#new-${which}`);
    $(`#new-${which}-error`).textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  $("#new-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("#new-submit");
    fieldError("overrides", "");
    fieldError("name", "");
    const name = $("#new-name").value.trim();
    const body = { overrides: newView.overrides() };
    if (name) body.name = name;
    button.disabled = true;
    button.textContent = "Queuing…";
    try {
      const run = await api("/runs", { method: "POST", json: body });
      $("#new-overrides").value = "";
      $("#new-name").value = "";
      flash(`Queued ${run.id}.`);
      location.hash = "#/";
      refreshRuns().catch(() => {});
    } catch (err) {
      if (err.status === 401) return;
      if (["invalid_name", "name_taken"].includes(err.code)) {
        fieldError("name", err.message);
        $("#new-name").focus();
      } else {
        fieldError("overrides", err.message);
        $("#new-overrides").focus();
      }
    } finally {
      button.disabled = false;
      button.textContent = "Queue run";
    }
  });

  // --- routing ------------------------------------------------------------------------------------
  const VIEWS = { runs: runsView, run: runView, compare: compareView, new: newView };
  let current = null;

  function route(focus = false) {
    if (state.authWaiting) return;
    const hash = location.hash.replace(/^#\/?/, "");
    const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
    let name = "runs";
    let arg = null;
    if (parts[0] === "runs" && parts[1]) { name = "run"; arg = parts[1]; }
    else if (parts[0] === "compare" && parts[1]) { name = "compare"; arg = parts[1].split(",").filter(Boolean); }
    else if (parts[0] === "new") name = "new";
    if (current) current.leave();
    state.view = name;
    current = VIEWS[name];
    for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
    $("#nav-runs").toggleAttribute("aria-current", name === "runs");
    $("#nav-new").toggleAttribute("aria-current", name === "new");
    if (name === "runs") $("#nav-runs").setAttribute("aria-current", "page");
    if (name === "new") $("#nav-new").setAttribute("aria-current", "page");
    document.title = `${name === "run" ? arg : name === "compare" ? "compare" : name === "new" ? "new run" : "runs"} · shaping runs`;
    current.enter(arg);
    if (focus) $("#main").focus({ preventScroll: false });
  }
  window.addEventListener("hashchange", () => route(true));

  async function boot() {
    try {
      await refreshRuns();
    } catch (err) {
      if (err.status !== 401) flash(`The service does not answer: ${err.message}`);
      if (err.status === 401) return;
    }
    startGlobal();
    route();
  }

  boot();
})();
