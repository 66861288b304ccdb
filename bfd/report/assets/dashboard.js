// BFD dashboard: draws the JSON a page embeds (see bfd/report/dashboard.py) with plotly.js.
// Every string from the store is put into the document as text (textContent, setAttribute)
// and into plotly, whose labels accept a little HTML, only through `pt`, which escapes it.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("bfd-data").textContent);
  const app = document.getElementById("app");
  const PAGE = document.body.dataset.page;
  const UP = PAGE === "run" ? "../" : "";
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const BLOCK = { f_pp: "#D55E00", f_pc: "#E69F00", f_cp: "#009E73", f_cc: "#0072B2" };
  const BLOCK_LABEL = {
    f_pp: "pp  query pos · key pos", f_pc: "pc  query pos · key content",
    f_cp: "cp  query content · key pos", f_cc: "cc  query content · key content",
  };
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
    "#000000", "#F0E442"];
  // no "dot": a dotted line is a reference (a chance level), never a run
  const DASHES = ["solid", "dash", "dashdot", "longdash"];
  // No "Share chart..." button: plotly.js offers by default to upload a figure to Plotly
  // Cloud, and no page sends anything off this machine (trial 28). The mode bar keeps the
  // buttons a reader uses (download, zoom, pan, reset): each is a tab stop.
  const CONFIG = { displaylogo: false, responsive: true, toImageButtonOptions: { format: "svg" },
    showSendToCloud: false,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines",
      "hoverClosestCartesian", "hoverCompareCartesian"] };
  // Relative quantities (residuals, shares) below float64 resolution (eps 2.2e-16) are drawn
  // at this floor on a log axis: a 0 or a denormal would stretch the axis to 1e-300 (as in
  // bfd plot, bfd/report/layout.py).
  const LOG_FLOOR = 1e-17;

  // plotly.js's Viridis, the share scale of the head maps, here to know each cell's colour
  const VIRIDIS = [[0, "#440154"], [0.0627, "#48186a"], [0.1255, "#472d7b"], [0.1882, "#424086"],
    [0.251, "#3b528b"], [0.3137, "#33638d"], [0.3765, "#2c728e"], [0.4392, "#26828e"], [0.502, "#21918c"],
    [0.5647, "#1fa088"], [0.6275, "#28ae80"], [0.6902, "#3fbc73"], [0.7529, "#5ec962"], [0.8157, "#84d44b"],
    [0.8784, "#addc30"], [0.9412, "#d8e219"], [1, "#fde725"]];

  // --- helpers ------------------------------------------------------------------------------
  function pt(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }
  function safeHref(url) {
    return typeof url === "string" && /^(https?:|file:)/i.test(url) ? url : null;
  }
  function hexRgb(c) {
    return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  }
  // the colour of v on a colour scale [[stop, "#rrggbb"], ...], as plotly interpolates (in RGB)
  function scaleRgb(scale, v) {
    const x = Math.min(1, Math.max(0, v));
    const j = Math.max(1, scale.findIndex(([s]) => s >= x));
    const [s0, c0] = scale[j - 1], [s1, c1] = scale[j];
    const f = s1 > s0 ? (x - s0) / (s1 - s0) : 0;
    const a = hexRgb(c0), b = hexRgb(c1);
    return a.map((u, i) => u + f * (b[i] - u));
  }
  // black or white text, whichever contrasts more with a fill (WCAG relative luminance: at
  // least 4.58:1 either way)
  function inkOn(rgb) {
    const lin = rgb.map((u) => { const c = u / 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; });
    const lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
    return (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000" : "#fff";
  }
  function rowsOf(cols) {
    const names = Object.keys(cols || {});
    const n = names.length ? cols[names[0]].length : 0;
    const out = [];
    for (let i = 0; i < n; i++) {
      const r = {};
      for (const c of names) r[c] = cols[c][i];
      out.push(r);
    }
    return out;
  }
  function groupBy(rows, key) {
    const m = new Map();
    for (const r of rows) {
      const k = key(r);
      if (!m.has(k)) m.set(k, []);
      m.get(k).push(r);
    }
    return m;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      const a = Math.abs(v);
      return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4);
    }
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v)) return v.slice(0, 16).replace("T", " ");
    return String(v);
  }
  // An audit's step as the Series page reads it: a time_step (bfd/tasks/audits.py: an audit
  // with no step of its own is at its start, in Unix seconds) as its date and time (UTC), any
  // other step (a checkpoint's) as a number; null when the run has no audit.
  function isTimeStep(r) {
    return typeof r.step === "number" && typeof r.started_at === "string" &&
      Math.floor(Date.parse(r.started_at) / 1000) === r.step;
  }
  function stepText(r) {
    if (r.step === null || r.step === undefined) return null;
    return isTimeStep(r) ? new Date(r.step * 1000).toISOString().slice(0, 16).replace("T", " ")
      : String(r.step);
  }
  // the file name of a run's weights (a path or a URL: its last part)
  function fileName(w) {
    return w === null || w === undefined ? null : String(w).split(/[\\/]/).filter((p) => p).pop() || String(w);
  }
  // a run in a legend or a choice: its series and step, else (never audited) its run id
  function runName(r) {
    const s = stepText(r);
    return r.series + " · " + (s === null ? r.run_id : "step " + s);
  }
  // A download is opened in a spreadsheet: a text cell beginning with = + - @ (or a tab or
  // carriage return) would be read as a formula there, so it gets a leading ' (OWASP's
  // advice); numbers are written as they are.
  function csvText(rows, keys) {
    const cell = (v) => {
      let s = v === null || v === undefined ? "" : String(v);
      if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
      return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    };
    return [keys.map(cell).join(",")].concat(rows.map((r) => keys.map((k) => cell(r[k])).join(",")))
      .join("\n") + "\n";
  }
  // a name as part of a downloaded file's name: letters, digits, _ . - kept, every other run
  // of characters one _ (a series is model@path), at most 100 characters
  function fileStem(name) {
    const stem = String(name).replace(/[^A-Za-z0-9_.-]+/g, "_").replace(/^[_.]+|_+$/g, "").slice(0, 100);
    return stem || "series";
  }
  function download(name, text) {
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  function numericKeys(rows, skip) {
    const keys = rows.length ? Object.keys(rows[0]) : [];
    return keys.filter((k) => !skip.includes(k) && rows.some((r) => typeof r[k] === "number"));
  }
  // A table with a CSV download of all its rows (the page shows at most `limit`).
  function dataTable(id, caption, rows, columns, opts) {
    opts = opts || {};
    const limit = opts.limit || 500;
    const cols = columns || (rows.length ? Object.keys(rows[0]).map((k) => ({ key: k })) : []);
    const head = h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c.label || c.key)));
    const body = h("tbody", {});
    for (const r of rows.slice(0, limit)) {
      const tr = h("tr", { "data-key": opts.rowKey ? opts.rowKey(r) : null,
        class: opts.rowClass ? opts.rowClass(r) : null });
      for (const c of cols) {
        const v = c.render ? c.render(r) : fmt(r[c.key]);
        const isText = !(typeof r[c.key] === "number") || c.render;
        tr.append(h("td", { class: isText ? "text" : null,
          title: c.title ? c.title(r) : isText ? fmt(r[c.key]) : null }, v));
      }
      body.append(tr);
    }
    const keys = cols.filter((c) => !c.noCsv).map((c) => c.key);
    const allKeys = opts.csvKeys || keys;
    const table = h("table", { id: id },
      h("caption", {}, caption), h("thead", {}, head), body);
    const button = h("button", { type: "button", class: "download",
      onclick: () => download((opts.filename || id) + ".csv", csvText(rows, allKeys)) },
    `Download ${caption} as CSV (${rows.length} rows)`);
    const more = rows.length > limit
      ? h("p", { class: "note" }, `showing ${limit} of ${rows.length} rows; the CSV has all`) : null;
    return h("div", {}, h("div", { class: "table-wrap" }, table), more, button);
  }
  function plotDiv(id, label, cls) {
    return h("div", { id: id, class: "plot " + (cls || ""), role: "img", "aria-label": label });
  }
  // A plot of counts (every y a whole number: heads of a type, layers, flags) with no y axis
  // of its own: whole-number ticks (plotly would tick 16.5) and, where every count is 0, an
  // axis from 0 (plotly spans -1..1).
  function countAxis(traces) {
    if (traces.some((t) => t.type === "heatmap" || (t.yaxis && t.yaxis !== "y") || t.error_y)) return null;
    const ys = traces.flatMap((t) => Array.from(t.y || [])).filter((v) => v !== null && v !== undefined);
    if (!ys.length || !ys.every(Number.isInteger)) return null;
    const lo = Math.min(...ys), hi = Math.max(...ys);
    let step = 1;
    for (let k = 0; (hi - lo) / step > 6; k++) step = [2, 5, 10][k % 3] * 10 ** Math.floor(k / 3);
    const axis = { tick0: 0, dtick: step, tickformat: "d" };
    if (lo === 0 && hi === 0) axis.range = [-0.1, 1];
    return axis;
  }
  function draw(div, traces, layout) {
    // a y axis left to plotly: counts as above, other values as plain decimals (plotly's
    // default writes a share of 0.0006 as "600µ")
    // (automargin: a long tick label, 0.0008905, widens the margin instead of losing its
    // first digit past the plot's edge)
    if (!layout.yaxis) layout = Object.assign({}, layout, { yaxis: countAxis(traces) || { tickformat: "~g", automargin: true } });
    const base = {
      margin: { l: 60, r: 20, t: 40, b: 50 }, font: { size: 12 }, hovermode: "closest",
      legend: { orientation: "h", y: -0.22, x: 0 }, paper_bgcolor: "#fff",
    };
    const full = Object.assign(base, layout);
    // left, clear of the mode bar on the right
    if (full.title) full.title = Object.assign({ x: 0.01, xanchor: "left" }, full.title);
    // responsive plots fill their box, so the box takes the figure's height
    div.style.height = (full.height || 400) + "px";
    return Plotly.react(div, traces, full, CONFIG).then((gd) => {
      // the drawing's tick numbers and shapes are no text to read out: the container is an
      // image with a label (plotDiv); its mode bar stays reachable
      for (const svg of div.querySelectorAll(".main-svg")) svg.setAttribute("aria-hidden", "true");
      // a mode bar button's icon is no image of its own: the button says what it does (trial
      // 32: 54 unnamed images on the Series page); plotly's text-measuring svg neither
      for (const svg of div.querySelectorAll(".modebar-btn svg")) svg.setAttribute("aria-hidden", "true");
      const tester = document.getElementById("js-plotly-tester");
      if (tester) tester.setAttribute("aria-hidden", "true");
      return gd;
    });
  }
  // Printing: every figure at the paper's width (they were cut at the window's), relaid
  // out when the page is printed and back after; the tables print whole (dashboard.css).
  // (print media's change and beforeprint both announce one printing: laid out once)
  const PRINT_WIDTH = 680;
  let fitted = null;
  function fitPlots(width) {
    if (width === fitted) return;
    fitted = width;
    for (const d of document.querySelectorAll(".js-plotly-plot")) {
      const to = width ? Math.min(width, d.getBoundingClientRect().width || width) : null;
      // a figure whose drawing depends on its width (the head map's labels) is drawn again
      if (d.bfdFit && to) d.bfdFit(to);
      else if (d.bfdFit) Plotly.relayout(d, { width: null, autosize: true }).then(() => d.bfdFit(null));
      else Plotly.relayout(d, to ? { width: to } : { width: null, autosize: true });
    }
  }
  // the same when the window's width changes (a phone turned): plotly resizes a figure, its
  // width-dependent drawing is redone once the resizing stops
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (fitted) return;
      for (const d of document.querySelectorAll(".js-plotly-plot")) if (d.bfdFit) d.bfdFit(null);
    }, 250);
  });
  const printing = window.matchMedia("print");
  printing.addEventListener("change", (e) => fitPlots(e.matches ? PRINT_WIDTH : null));
  window.addEventListener("beforeprint", () => fitPlots(PRINT_WIDTH));
  window.addEventListener("afterprint", () => fitPlots(null));
  // Traces for a log axis: y below LOG_FLOOR drawn at it, the stored value in the hover
  // (customdata); with a dotted line at the floor, named, when a value was raised to it.
  function logTraces(traces) {
    const x = traces.flatMap((t) => t.x);
    let low = false;
    const out = traces.map((t) => {
      low = low || t.y.some((v) => v !== null && v < LOG_FLOOR);
      return Object.assign({}, t, { customdata: t.y,
        y: t.y.map((v) => (v === null ? null : Math.max(v, LOG_FLOOR))) });
    });
    if (low) out.push({ x: [Math.min(...x), Math.max(...x)], y: [LOG_FLOOR, LOG_FLOOR], mode: "lines",
      name: pt(`< ${LOG_FLOOR.toExponential()}: drawn at ${LOG_FLOOR.toExponential()}`),
      line: { color: "#888", dash: "dot", width: 1 }, hoverinfo: "skip" });
    return out;
  }
  // A log axis of `values` that is `px` pixels long, ticked so that its labels never run
  // into each other: plotly's own ticks on a range under a decade or two label every digit
  // (0.01 printed over 2 3 4 ... 9). The densest of: every digit, 1-2-5 or 1-3 a decade, each
  // decade, every 2nd, 5th, 10th ... decade, whose closest two ticks are MIN_TICK_GAP px
  // apart; where that leaves fewer than 3 ticks (a range of a decade or less), evenly spaced
  // round values (0.005, 0.01, 0.015) if they give more. Labels as plain decimals, or 1e-8
  // beyond 1e-4 .. 1e5; the range is set to the values', padded for the markers.
  const MIN_TICK_GAP = 20;
  // The indices of n columns to label, about `most` of them at most: every k-th from the
  // first (k the smallest stride that fits), and the last.
  const HEAT_TICKS = 24;
  function tickEvery(n, most) {
    const k = Math.max(1, Math.ceil(n / most));
    const out = [];
    for (let i = 0; i < n; i += k) out.push(i);
    if (n && out[out.length - 1] !== n - 1) {
      if (n - 1 - out[out.length - 1] < k / 2) out.pop();  // no two labels side by side
      out.push(n - 1);
    }
    return out;
  }
  function logAxis(values, px) {
    const vs = values.filter((v) => typeof v === "number" && v > 0 && Number.isFinite(v));
    if (!vs.length) return { type: "log" };
    const lo = Math.log10(Math.min(...vs)), hi = Math.log10(Math.max(...vs));
    const pad = Math.max(0.05 * (hi - lo), 0.05), r0 = lo - pad, r1 = hi + pad;
    const perDecade = px / (r1 - r0);
    const clean = (v) => Number(v.toPrecision(12));
    const fits = (ts) => ts.length >= 2 && ts.every((t, i) => !i ||
      (Math.log10(t) - Math.log10(ts[i - 1])) * perDecade >= MIN_TICK_GAP);
    const inRange = (t) => Math.log10(t) >= r0 && Math.log10(t) <= r1;
    const decades = [];
    for (let k = Math.floor(r0); k <= Math.ceil(r1); k++) decades.push(k);
    const sets = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 5], [1, 3]].map((ms) =>
      decades.flatMap((k) => ms.map((m) => clean(m * 10 ** k))).filter(inRange));
    for (let stride = 1, j = 0; stride <= decades.length; stride = [1, 2, 5][++j % 3] * 10 ** Math.floor(j / 3)) {
      sets.push(decades.filter((k) => k % stride === 0).map((k) => clean(10 ** k)).filter(inRange));
    }
    let best = sets.filter(fits).reduce((x, t) => (t.length > x.length ? t : x), []);
    if (best.length < 3) {
      const a = 10 ** r0, b = 10 ** r1;
      for (let e = Math.floor(Math.log10(b - a)) - 2; e <= Math.ceil(Math.log10(b - a)); e++) {
        for (const m of [1, 2, 5]) {
          const step = m * 10 ** e;
          const ts = [];
          for (let t = Math.ceil(a / step) * step; t <= b && ts.length < 50; t += step) ts.push(clean(t));
          if (ts.length > best.length && fits(ts)) best = ts;
        }
      }
    }
    const label = (v) => (v < 1e-4 || v >= 1e5 ? v.toExponential().replace("e+", "e") : String(v));
    return best.length ? { type: "log", range: [r0, r1], tickmode: "array", tickvals: best,
      ticktext: best.map(label) } : { type: "log", range: [r0, r1] };
  }
  // Layer rows (in layer order) with a gap row between two stored layers that are not next to
  // each other (a run of `--layers 0,5`): a line is not drawn across layers that were not
  // stored. A gap row sits halfway (layer, rel_depth) and reads null for every other column.
  function withGaps(rows) {
    const out = [];
    rows.forEach((r, i) => {
      const p = rows[i - 1];
      if (i > 0 && r.layer - p.layer > 1) {
        const at = { gap: true, layer: (p.layer + r.layer) / 2, rel_depth: (p.rel_depth + r.rel_depth) / 2 };
        out.push(new Proxy(at, { get: (t, k) => (k in t ? t[k] : null) }));
      }
      out.push(r);
    });
    return out;
  }
  function section(title, ...kids) {
    return h("section", { "aria-label": title }, h("h2", {}, title), kids);
  }
  function select(id, label, options, value, onchange) {
    const s = h("select", { id: id, onchange: (e) => onchange(e.target.value) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
    return h("label", {}, label + " ", s);
  }
  function runLink(r, text) {
    // a shortened id is read out, and shown on hover, whole (links of one series' runs
    // would all read "test_vit-…" otherwise)
    const short = text && text !== r.run_id;
    return h("a", { href: UP + "runs/" + encodeURIComponent(r.page), "aria-label": short ? "run " + r.run_id : null,
      title: short ? r.run_id : null }, text || r.run_id);
  }
  // An audit's flag count, or "not compared" where its drift check compared nothing (its
  // drift_note says why): a 0 there is no pass; or "— (first audit)" for the first audit of
  // a series (its row names no audit compared with, prev_audit_id NULL, and flags nothing:
  // nothing to compare with, as bfd audit's "drift: first audit of this series").
  const FIRST_AUDIT = "— (first audit)";
  // whether the audit's drift check compared nothing (its drift_note says why)
  const notCompared = (r) => r.drift_note !== null && r.drift_note !== undefined;
  function firstAudit(r) {
    return r.audit_id !== null && r.audit_id !== undefined && "prev_audit_id" in r &&
      r.prev_audit_id === null && r.n_flagged === 0 && !notCompared(r);
  }
  function flagged(r) {
    return notCompared(r) ? "not compared" : firstAudit(r) ? FIRST_AUDIT : fmt(r.n_flagged);
  }
  // a flag count's hover: what "not compared" and "first audit" mean
  function flaggedTitle(r) {
    return notCompared(r) ? "drift not compared: " + r.drift_note
      : firstAudit(r) ? "first audit of this series, nothing to compare with" : fmt(r.n_flagged);
  }
  // a row with flagged drift (a count above 0 of a complete audit that compared): tinted
  function hasFlags(r) {
    return typeof r.n_flagged === "number" && r.n_flagged > 0 && !notCompared(r) &&
      (r.audit_status === undefined || r.audit_status === "complete");
  }
  // a hash shown short (12 characters), whole on hover and in the CSV
  const HASH = 12;
  const shortHash = (v) => (typeof v === "string" && v.length > HASH + 1 ? v.slice(0, HASH) + "…" : fmt(v));
  const hashCol = (key, label) => ({ key: key, label: label, render: (r) => shortHash(r[key]),
    title: (r) => fmt(r[key]) });
  function empty(text, id) { return h("p", { class: "empty", id: id || null }, text); }
  const RUNS = rowsOf(D.runs);
  const RUN_BY_ID = new Map(RUNS.map((r) => [r.run_id, r]));
  const SERIES = [...new Set(RUNS.map((r) => r.series))];
  // The run_shapes row of each complete run (series and compare pages): what run_pairs
  // compares of a run (model, shape, prefix option, images, img_size and method). pairOf(a, b)
  // is run_pairs' row of the ordered pair (run_a = a, run_b = b), its same_model and note
  // (two models, other prefix options, other images, another img_size), same_method and
  // method_note (other method versions), derived from the
  // two rows as bfd/queries/_run_pairs.sql does (SQL's NULLs kept: a comparison with NULL is
  // NULL, a string joined with NULL is NULL); null when either run is not complete
  // (run_pairs has no such pair).
  // The pages embed one row a run, not one a pair of runs.
  const SHAPES = new Map(rowsOf(D.shapes).map((r) => [r.run_id, r]));
  const isNull = (v) => v === null || v === undefined;
  function pairOf(a, b) {
    const x = SHAPES.get(a), y = SHAPES.get(b);
    if (!x || !y) return null;
    const eq = (u, v) => (isNull(u) || isNull(v) ? null : u === v);
    const known = (v) => (v === null ? true : v);  // coalesce(..., true)
    const sameArch = eq(x.architecture, y.architecture);
    // arch AND depth AND heads AND width: false if any is false, else NULL if arch is NULL
    const sameShape = known(eq(x.depth, y.depth)) && known(eq(x.num_heads, y.num_heads)) &&
      known(eq(x.width, y.width));
    const sameModel = sameArch === false || !sameShape ? false : sameArch;
    const otherName = sameArch === null ? null : !sameArch;
    const cat = (...parts) => (parts.some(isNull) ? null : parts.join(""));
    const models = otherName === true ? cat("run_a is of ", x.model, ", run_b of ", y.model)
      : sameModel === false ? cat("run_a is of ", x.model, " of ", x.shape, ", run_b of ", y.shape)
        : null;
    const parts = [
      cat(models, ": two models, so layer l of one is not layer l of the other ",
        "(compare_models aligns relative depth)"),
      eq(x.prefix, y.prefix) === false ? cat("run_a was decomposed with prefix ", x.prefix,
        ", run_b with prefix ", y.prefix, ": shares over other positions") : null,
      eq(x.images_sha256, y.images_sha256) === false ? cat("run_a saw images ", x.images,
        ", run_b ", y.images, ": other images, whose shares change with the images, not only with the model")
        : null,
      eq(x.img_size, y.img_size) === false ? cat("run_a was at img_size ", x.img_size,
        ", run_b at ", y.img_size, ": another patch grid, shares over other positions") : null,
    ].filter((p) => !isNull(p));
    // run_pairs' same_method and method_note: the runs' results of other method versions
    // (runs.method), whose head shares' intervals are of two estimators
    const sameMethod = eq(x.method, y.method);
    const older = x.method < y.method ? ["run_a", a] : ["run_b", b];
    const methodNote = sameMethod === false ? cat("run_a was decomposed by method ", x.method,
      ", run_b by method ", y.method, ": head shares' intervals of two estimators",
      Math.min(x.method, y.method) === 1 ? " (method 1's standard errors off by up to 28 %)" : "",
      ", not compared; bfd decompose ", older[1], " decomposes ", older[0],
      " again by the installed method") : null;
    return { same_model: sameModel, note: parts.join("; ") || null, same_method: sameMethod,
      method_note: methodNote };
  }
  // the alpha-beta plot's marker of a mode type: fixed, so that a symbol means one type on
  // every layer and run (bfd plot draws the same); another type (none stored today) a star
  const MODE_SYMBOLS = { pp: "circle", pc: "diamond", cp: "triangle-up", cc: "square", undefined: "x" };
  const MODE_ORDER = ["pp", "pc", "cp", "cc", "undefined"];
  const modeSymbol = (t) => (Object.prototype.hasOwnProperty.call(MODE_SYMBOLS, t) ? MODE_SYMBOLS[t] : "star");
  // the overview's marker of a series (its lines take a colour a run)
  const SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"];
  const seriesSymbol = (s) => SYMBOLS[SERIES.indexOf(s) % SYMBOLS.length];
  // the head counts by type (bfd/report/data.py HEAD_COUNTS: run_summary's, or those the
  // series' latest audit kept): which heads exchange position, which content, at a glance
  const HEAD_TYPES = [["pp", "position-position"], ["cp", "content-position"],
    ["cc", "content-content"], ["undefined", "undefined (zero or non-finite energies)"]];
  function headColumns() {
    return HEAD_TYPES.map(([t, name]) => ({ key: "n_heads_" + t, label: t + " heads",
      title: (r) => (typeof r["n_heads_" + t] === "number" ? `${r["n_heads_" + t]} ${name} heads of ${fmt(r.n_heads)}`
        : "no head counts (no complete run)") }));
  }
  // the runs table: what a person scans first (run, series, step, flagged or not compared,
  // heads by type) on the left, identities and paths after
  function runColumns() {
    return [
      { key: "run_id", label: "run", render: (r) => runLink(r) },
      { key: "series", label: "series" },
      { key: "step", render: (r) => fmt(stepText(r)) },
      { key: "n_flagged", label: "flagged", render: flagged, title: flaggedTitle },
      ...headColumns(),
      { key: "audit_status", label: "audit" }, { key: "model" },
      { key: "n_decoded", label: "images decoded" }, { key: "n_skipped", label: "skipped" },
      { key: "weights" }, hashCol("weights_sha256", "weights sha256"),
      { key: "created_at", label: "created" }, { key: "status" },
      { key: "results_path", label: "results", render: (r) =>
        safeHref(r.results_url) ? h("a", { href: r.results_url }, r.results_path) : fmt(r.results_path) },
      { key: "flow_run_id", label: "Prefect flow run", render: (r) =>
        safeHref(r.flow_run_url) ? h("a", { href: r.flow_run_url }, r.flow_run_id) : fmt(r.flow_run_id) },
    ];
  }
  function layersByRun() {
    return groupBy(rowsOf(D.layers), (r) => r.run_id);
  }

  // --- overview -----------------------------------------------------------------------------
  function overview() {
    if (!RUNS.length) {
      app.append(empty("No runs yet: the store holds no run. A first run there: bfd audit --demo " +
        "(a random-init vit_tiny on the embedded sample images, scikit-image's photographs), then bfd dashboard.", "no-runs"));
      return;
    }
    const byRun = layersByRun();
    // every series of an audit or of a never-audited run (a run audited in several series is
    // in each), with its latest member's run (bfd/report/data.py series_list)
    // (a series whose runs are all damaged too: its audits of runs the catalog left out are
    // counted, n_damaged, and their runs named, damaged_runs; such a run's columns unknown)
    const series = rowsOf(D.series_list).map((s) => {
      const latest = RUN_BY_ID.get(s.latest_run) || { run_id: s.latest_run, page: s.latest_page };
      return { series: s.series, model: latest.model, weights: latest.weights,
        weights_sha256: latest.weights_sha256, images: latest.images,
        images_sha256: latest.images_sha256, n_decoded: latest.n_decoded, n_runs: s.n_runs,
        n_audits: s.n_audits, n_damaged: s.n_damaged, damaged_runs: s.damaged_runs,
        n_audits_flagged: s.n_audits_flagged, last_flagged_audit: s.last_flagged_audit,
        last_flagged_step: s.last_flagged_step, last_flagged_at: s.last_flagged_at,
        latest_run: latest.run_id, page: latest.page,
        created_at: latest.created_at, audit_id: s.audit_id, audit_status: s.audit_status,
        finished_at: s.finished_at, n_flagged: s.n_flagged, drift_note: s.drift_note,
        step: s.step, started_at: s.started_at, prev_audit_id: s.prev_audit_id,
        n_heads: s.n_heads, n_heads_pp: s.n_heads_pp, n_heads_cp: s.n_heads_cp,
        n_heads_cc: s.n_heads_cc, n_heads_undefined: s.n_heads_undefined };
    });
    // "2 of 6 audits: runs c-100, c-200 damaged ...", or "–" for a series with none
    const damagedNote = (r) => {
      const runs = r.damaged_runs || [];
      if (!r.n_damaged || !runs.length) return "–";
      const one = runs.length === 1;
      return `${r.n_damaged} of ${r.n_audits} audits of ` + (one ? `run ${runs[0]}, damaged (a table file fails its check)`
        : `runs ${runs.join(", ")}, damaged (table files fail their check)`) +
        ": left out of SQL; the Series page shows the figures each audit kept; " +
        `bfd verify ${one ? runs[0] : "RUN"} names the repair`;
    };
    // the audits of a series that flagged drift, whichever is latest, and the last of them:
    // a flag stays in sight after the next audit passes ("2 of 15 · last step 15")
    const everFlagged = (r) => (!r.n_audits_flagged ? (r.n_audits ? "0 of " + r.n_audits : "–")
      : `${r.n_audits_flagged} of ${r.n_audits} · last ` + (r.last_flagged_step === null ||
        r.last_flagged_step === undefined ? "audit " + r.last_flagged_audit
        : "step " + stepText({ step: r.last_flagged_step, started_at: r.last_flagged_at })));
    app.append(section("Series",
      h("p", { class: "note" }, D.has_audits ? "A series is the `series` of the audits table."
        : "No audits recorded yet: a series is a model with its weights."),
      // what a person scans first on the left: the series, its latest audit's step and flags
      // (or not compared, first audit); hashes short (whole on hover and in the CSV)
      dataTable("series-table", "series", series, [
        // its name opens its Series page (trial 28: the Overview had no link to it)
        { key: "series", render: (r) => h("a", { href: "series.html?series=" + encodeURIComponent(r.series) }, r.series) },
        { key: "step", label: "latest step", render: (r) => fmt(stepText(r)) },
        { key: "n_flagged", label: "flagged", render: flagged, title: flaggedTitle },
        { key: "n_audits_flagged", label: "audits flagged", render: everFlagged,
          title: (r) => (r.n_audits_flagged ? everFlagged(r) + " (audit " + r.last_flagged_audit + ")" : everFlagged(r)) },
        ...headColumns(),
        { key: "drift_note", label: "drift note" },
        { key: "latest_run", label: "latest run", render: (r) => runLink({ page: r.page, run_id: r.latest_run }) },
        { key: "n_runs", label: "runs" }, { key: "n_audits", label: "audits" },
        { key: "n_decoded", label: "images decoded" },
        { key: "damaged_runs", label: "damaged", render: damagedNote, title: damagedNote },
        { key: "model" }, { key: "weights" }, hashCol("weights_sha256", "weights sha256"),
        { key: "images", label: "image set" }, hashCol("images_sha256", "images sha256"),
        { key: "created_at", label: "created" }, { key: "audit_id", label: "latest audit" },
        { key: "audit_status", label: "audit status" }, { key: "finished_at", label: "finished" },
      ], { rowClass: (r) => (r.n_damaged ? "damaged-run" : hasFlags(r) ? "flagged" : null) })));
    const chosen = new Set(series.map((s) => s.latest_run).filter((id) => byRun.has(id)));
    const plot = plotDiv("depth-plot", "Positional share frac_pos and position-position share f_pp " +
      "against relative depth for the selected runs, chance-corrected (frac_pos_adj, f_pp_adj) or raw, " +
      "a colour a run, each named with its N; raw: thin grey dotted lines, chance level of frac_pos", "tall");
    // the shares drawn: chance-corrected (frac_pos_adj, f_pp_adj: their expectation does not
    // depend on N, docs/method.md) where any run has them, else raw (frac_pos, f_pp: they fall
    // with the images decoded N, so runs of other N are not comparable)
    const BASES = {
      adj: { pos: "frac_pos_adj", pp: "f_pp_adj", label: "chance-corrected (frac_pos_adj, f_pp_adj)" },
      raw: { pos: "frac_pos", pp: "f_pp", label: "raw (frac_pos, f_pp)" },
    };
    const hasAdj = (id) => (byRun.get(id) || []).some((l) => typeof l.frac_pos_adj === "number");
    const view = { basis: [...chosen].some(hasAdj) ? "adj" : "raw" };
    const nOf = (r) => (typeof r.n_decoded === "number" ? r.n_decoded : "?");
    const basisNote = h("p", { class: "note", id: "depth-basis-note" });
    const runCols = [{ key: "show", label: "show", noCsv: true, render: (r) => h("input", {
      type: "checkbox", class: "run-toggle", "data-run": r.run_id, checked: chosen.has(r.run_id),
      disabled: !byRun.has(r.run_id), "aria-label": "show run " + r.run_id,
      onchange: (e) => { e.target.checked ? chosen.add(r.run_id) : chosen.delete(r.run_id); redraw(); },
    }) }].concat(runColumns());
    app.append(section("Depth profiles", h("p", { class: "note" },
      "Tick runs in the table below to overlay them, a colour a run (named by series, step and N, the " +
      "images it decoded). Top: frac_pos at attn_in; bottom: energy-weighted f_pp of each layer. " +
      "Chance-corrected shares (frac_pos_adj, f_pp_adj) have an expectation that does not depend on N, " +
      "so runs of other N compare; raw shares fall with N, and their chance level frac_pos_chance " +
      "(what the noise of pos alone gives) is drawn as a thin grey dotted line, one a run. " +
      "Click a point to find its run in the table."),
    h("div", { class: "controls" }, select("depth-basis", "shares", Object.entries(BASES)
      .map(([k, b]) => [k, b.label]), view.basis, (v) => { view.basis = v; redraw(); })), basisNote, plot));
    app.append(section("Runs", dataTable("runs-table", "runs", RUNS, runCols,
      { rowKey: (r) => r.run_id, csvKeys: Object.keys(D.runs), rowClass: (r) => (hasFlags(r) ? "flagged" : null) })));
    function redraw() {
      const traces = [];
      const chance = [];
      // a colour a ticked run (in the table's order), solid; past eight runs the colours
      // repeat and the dash tells them apart; the marker tells the series
      const ticked = RUNS.filter((r) => chosen.has(r.run_id));
      const B = BASES[view.basis], adj = view.basis === "adj";
      // runs without the chance-corrected shares (decomposed before they were stored) are
      // not drawn on that basis, and said; runs of other N on the raw basis are said too
      const without = adj ? ticked.filter((r) => byRun.has(r.run_id) && !hasAdj(r.run_id)) : [];
      const ns = [...new Set(ticked.filter((r) => byRun.has(r.run_id)).map(nOf))];
      // runs decomposed with other --prefix options: shares over other positions (the
      // prefix tokens counted or not), named in the legend and said, as Compare's note
      const prefixOf = (r) => r.prefix || "exclude";
      const mixed = new Set(ticked.filter((r) => byRun.has(r.run_id)).map(prefixOf)).size > 1;
      const included = ticked.filter((r) => byRun.has(r.run_id) && prefixOf(r) === "include");
      const prefixSaid = mixed ? " Runs decomposed with --prefix include (" +
        included.map((r) => runName(r)).join(", ") + ") have shares over other positions, their " +
        "prefix tokens counted: their heights do not compare with the others'." : "";
      basisNote.className = without.length || (!adj && ns.length > 1) || mixed ? "note warn" : "note";
      basisNote.textContent = ((without.length
        ? `Not drawn, no chance-corrected shares (decomposed before they were stored; choose raw to see them): ${
          without.map((r) => r.run_id).join(", ")}.`
        : !adj && ns.length > 1 ? `The ticked runs decoded different numbers of images (N = ${ns.join(", ")}): ` +
          "raw shares fall with N, so their heights do not compare across N; choose chance-corrected."
          : "") + prefixSaid).trim();
      ticked.filter((r) => !without.includes(r)).forEach((r, i) => {
        const rows = withGaps(byRun.get(r.run_id) || []);
        const line = { color: PALETTE[i % PALETTE.length],
          dash: DASHES[Math.floor(i / PALETTE.length) % DASHES.length], width: 2 };
        const marker = { symbol: seriesSymbol(r.series), size: 7 };
        const name = pt(`${runName(r)}${mixed && prefixOf(r) === "include" ? " · prefix include" : ""} · N ${nOf(r)}`);
        const x = rows.map((l) => l.rel_depth);
        const text = rows.map((l) => pt(`${runName(r)} (${r.run_id}) layer ${l.layer}, N ${nOf(r)}`));
        traces.push({ x: x, y: rows.map((l) => l[B.pos]), name: name, legendgroup: r.run_id,
          mode: "lines+markers", line: line, marker: marker, text: text, customdata: rows.map(() => r.run_id),
          hovertemplate: `%{text}<br>rel. depth %{x:.2f}<br>${B.pos} %{y:.4f}<extra></extra>` });
        traces.push({ x: x, y: rows.map((l) => l[B.pp]), name: name, legendgroup: r.run_id,
          showlegend: false, mode: "lines+markers", line: line, marker: marker, yaxis: "y2", text: text,
          customdata: rows.map(() => r.run_id),
          hovertemplate: `%{text}<br>rel. depth %{x:.2f}<br>${B.pp} %{y:.4f}<extra></extra>` });
        // the chance level of the raw share: thin, grey, dotted (no run's line is), one
        // legend entry for all (the corrected shares' is 0)
        if (!adj && rows.some((l) => l.frac_pos_chance != null)) {
          chance.push({ x: x, y: rows.map((l) => l.frac_pos_chance), mode: "lines",
            name: "chance level frac_pos_chance", legendgroup: "chance", showlegend: !chance.length,
            text: rows.map((l) => pt(`${runName(r)} layer ${l.layer}`)),
            hovertemplate: "%{text}<br>chance level %{y:.4f}<extra></extra>",
            line: { color: "#888", dash: "dot", width: 1 }, meta: "chance" });
        }
      });
      traces.push(...chance);
      draw(plot, traces, {
        annotations: traces.length ? [] : [{ text: without.length
          ? "no chance-corrected shares in the runs ticked: choose raw shares above"
          : "no complete run ticked: tick runs in the table below",
          showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
        xaxis: { title: { text: "relative depth  layer / (depth − 1)" }, range: [-0.02, 1.02], anchor: "y2" },
        // shares as plain decimals (plotly's default writes 0.0006 as "600µ")
        yaxis: { title: { text: `${B.pos} (attn_in)` }, domain: [0.55, 1], rangemode: "tozero", tickformat: "~g" },
        yaxis2: { title: { text: `${B.pp} of the layer` }, domain: [0, 0.45], rangemode: "tozero", tickformat: "~g" },
        height: DEPTH_BOX.t + DEPTH_BOX.plot + DEPTH_BOX.below + legendPx,
        margin: { l: 60, r: 20, t: DEPTH_BOX.t, b: DEPTH_BOX.below + legendPx },
        legend: { orientation: "h", x: 0, y: -DEPTH_BOX.axis / DEPTH_BOX.plot, yanchor: "top",
          maxheight: LEGEND_MAX },
      });
    }
    // The legend under the x axis title, the figure as tall as the panels (a fixed plot area)
    // plus its legend: plotly's own bottom legend (a share of the plot's height below it)
    // grows into the axis title and shrinks the panels as runs are ticked (20 long names at
    // 1366 px: a legend over the title, panels 90 px high). After each drawing (and a resize,
    // which rewraps the legend) the legend's height is measured and the figure grows or shrinks
    // to it; past LEGEND_MAX px the legend scrolls in its own box.
    const DEPTH_BOX = { t: 40, plot: 470, axis: 62, below: 72 };
    const LEGEND_MAX = 420;
    let legendPx = 0, fitting = false;
    function fitLegend() {
      const fl = plot._fullLayout;
      const px = fl && fl.showlegend && fl.legend ? Math.ceil(Math.min(fl.legend._height || 0, LEGEND_MAX)) : 0;
      if (fitting || Math.abs(px - legendPx) <= 1) return;
      legendPx = px;
      fitting = true;
      const height = DEPTH_BOX.t + DEPTH_BOX.plot + DEPTH_BOX.below + legendPx;
      plot.style.height = height + "px";
      Plotly.relayout(plot, { height: height, "margin.b": DEPTH_BOX.below + legendPx })
        .finally(() => { fitting = false; });
    }
    redraw();
    fitLegend();
    plot.on("plotly_afterplot", fitLegend);
    plot.on("plotly_click", (ev) => {
      const id = ev.points[0].customdata;
      for (const tr of document.querySelectorAll("#runs-table tbody tr")) {
        tr.classList.toggle("selected", tr.dataset.key === id);
        if (tr.dataset.key === id) tr.scrollIntoView({ block: "nearest" });
      }
    });
  }

  // --- run ----------------------------------------------------------------------------------
  // a run's prefix tokens (class, distillation, register) and what its --prefix option made
  // of them: left out of the positions, or each one more position
  function prefixTokens(run) {
    const n = run.prefix_tokens;
    if (typeof n !== "number") return null;
    if (n === 0) return "0 (the model has none)";
    return `${n} (class, distillation or register): ` +
      (run.prefix === "include" ? "each one more position" : "left out of the positions");
  }
  // bfd audit's warning of a run whose N is too small for its intervals' target width
  // (docs/method.md): the widest 95 % interval of its main shares against ci_target
  function intervalNote(layers) {
    const finite = (k) => layers.map((l) => l[k]).filter((v) => typeof v === "number" && Number.isFinite(v));
    const hw = finite("ci_halfwidth"), target = finite("ci_target"), need = finite("n_images_for_target");
    if (!hw.length || !target.length || Math.max(...hw) <= target[0]) return null;
    const n = finite("n_images");
    return "With N=" + (n.length ? n[0] : "?") + " images the 95 % intervals of the main shares reach ±" +
      Math.max(...hw).toFixed(3) + ", wider than the target ±" + target[0] + (need.length ? "; about " +
      Math.round(Math.max(...need)) + " images would reach it" : "") + ": read the shares and head " +
      "types below as estimates within about that.";
  }
  // bfd audit's warning of a run whose check against the model failed (docs/checks.md): its
  // largest model_logit_residual / model_attn_residual above the limit, with its layer
  function modelCheckNote(layers, limit) {
    if (typeof limit !== "number") return null;
    const said = [];
    for (const k of ["model_logit_residual", "model_attn_residual"]) {
      const failed = layers.filter((l) => typeof l[k] === "number" && !(l[k] <= limit));
      if (!failed.length) continue;
      const worst = failed.reduce((a, b) => (b[k] > a[k] ? b : a));
      said.push(`${k} ${Number(worst[k]).toPrecision(3)} at attn_in layer ${worst.layer} ` +
        `(${failed.length} layer(s) above ${limit})`);
    }
    if (!said.length) return null;
    return "This run fails the check against the model: " + said.join("; ") + ". A correct " +
      "decomposition gives about 1e-6, so its logits are not the model's x M xᵀ and its shares " +
      "may be wrong (docs/checks.md).";
  }
  function runPage() {
    const run = D.run;
    const layers = rowsOf(D.layers);
    const heads = rowsOf(D.heads);
    const modes = rowsOf(D.modes);
    const meta = [
      ["series", run.series], ["model", run.model], ["weights", run.weights],
      ["weights sha256", run.weights_sha256], ["image set", run.images],
      ["images sha256", run.images_sha256], ["images requested", run.n_images], ["skipped", run.n_skipped],
      ["images decoded", run.n_decoded],
      // the positions its shares are over: include counts the prefix tokens as positions
      ["prefix option", run.prefix],
      // how many tokens that option is about, and what it made of them
      ["prefix tokens", prefixTokens(run)],
      // a stats-only run (bfd audit --no-store-activations) kept none: "not stored"
      ["activations", run.activations],
      ["patch grid", run.grid_h === null ? null : `${run.grid_h} × ${run.grid_w}`],
      ["created", run.created_at], ["status", run.status], ["audit", run.audit_id],
      ["audit step", stepText(run)], ["trigger", run.trigger], ["audit status", run.audit_status],
      ["flagged drift", flagged(run)], ["drift note", run.drift_note],
    ];
    // the layers the run stored: a run of --layers 0,5,11 holds those of its model's depth
    const storedIds = [...new Set(layers.map((l) => l.layer).concat(heads.map((x) => x.layer)))]
      .sort((a, b) => a - b);
    if (storedIds.length) {
      const of = typeof run.depth === "number" ? run.depth : null;
      meta.splice(meta.findIndex(([k]) => k === "patch grid") + 1, 0, ["layers stored",
        of !== null && storedIds.length < of ? `${storedIds.join(", ")} of ${of} (the others not stored: --layers)`
          : of !== null && storedIds.length === of ? `all ${of}` : storedIds.join(", ")]);
    }
    const dl = h("table", { id: "run-meta" }, h("caption", {}, "run"), h("tbody", {},
      meta.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "text" }, fmt(v)))),
      // a file:// link opens from a page read from disk only: served over http (bfd
      // dashboard --serve) the browser refuses it, so the path is shown as text to copy
      h("tr", {}, h("th", { scope: "row" }, "results"), h("td", { class: "text", id: "results-cell" },
        safeHref(run.results_url) && !(/^file:/.test(run.results_url) && /^https?:$/.test(location.protocol))
          ? h("a", { href: run.results_url, id: "results-link" }, run.results_path)
          : fmt(run.results_path))),
      h("tr", {}, h("th", { scope: "row" }, "Prefect flow run"), h("td", { class: "text" },
        safeHref(run.flow_run_url) ? h("a", { href: run.flow_run_url }, run.flow_run_id)
          : fmt(run.flow_run_id)))));
    app.append(dl);
    // every audit of the run, in whatever series: a rollback or an unchanged checkpoint is
    // audited at several steps of one run, which the table above names the latest of
    const audits = rowsOf(D.audits || {});
    if (audits.length) {
      app.append(section("Audits of this run", h("p", { class: "note" }, audits.length === 1
        ? "Audited once." : `Audited ${audits.length} times, the first started first: the same results ` +
          "at each step (a run is computed once and reused by every audit of the same request)."),
      dataTable("run-audits", "audits of this run", audits, [
        { key: "series", render: (r) => h("a", { href: "../series.html?series=" + encodeURIComponent(r.series) }, r.series) },
        { key: "step", render: (r) => fmt(stepText(r)) },
        { key: "n_flagged", label: "flagged", render: flagged, title: flaggedTitle },
        { key: "started_at", label: "started" }, { key: "status" },
        { key: "drift_note", label: "drift note" }, { key: "audit_id", label: "audit" },
        { key: "prev_audit_id", label: "compared with" }],
      { filename: fileStem(run.run_id) + "-audits" })));
    }
    const failedCheck = modelCheckNote(layers, D.model_check_limit);
    if (failedCheck) app.append(h("p", { class: "damaged", role: "alert", id: "model-check-note" }, failedCheck));
    const tooWide = intervalNote(layers);
    if (tooWide) app.append(h("p", { class: "note", id: "interval-note" }, tooWide));
    if (!layers.length && !heads.length) { app.append(empty("This run stored no layer or head rows.")); return; }
    const layerIds = storedIds;
    const headIds = [...new Set(heads.map((x) => x.head))].sort((a, b) => a - b);
    const state = { layer: layerIds[0], head: headIds.length ? headIds[0] : null };
    const layerSel = select("layer-select", "layer", layerIds.map((l) => [String(l), String(l)]),
      String(state.layer), (v) => { state.layer = Number(v); refresh(); });
    const headSel = select("head-select", "head", headIds.map((x) => [String(x), String(x)]),
      String(state.head), (v) => { state.head = Number(v); refresh(); });
    app.append(h("div", { class: "controls" }, layerSel, headSel,
      h("span", { class: "note" }, "or click a layer or a head in the figures")));
    function choose(layer, head) {
      state.layer = layer;
      if (head !== undefined && head !== null) state.head = head;
      document.getElementById("layer-select").value = String(state.layer);
      document.getElementById("head-select").value = String(state.head);
      refresh();
    }
    // Shares per layer.
    const shares = plotDiv("shares-plot", "Stacked shares of query-key logit energy f_pp, f_pc, f_cp, f_cc per layer");
    const headmap = plotDiv("headmap-plot", "Layer by head maps: the head type of each head " +
      "(position-position, content-position, content-content; categorical colours with a legend), " +
      "then one panel per block f_pp, f_pc, f_cp, f_cc, colour the head's share; every value on hover", "tall");
    app.append(section("Energy shares and heads", h("div", { class: "grid wide" }, shares, headmap)));
    const blocks = Object.keys(BLOCK);
    draw(shares, blocks.map((b) => ({
      type: "bar", name: pt(BLOCK_LABEL[b]), x: layers.map((l) => l.layer), y: layers.map((l) => l[b]),
      // a layer wide at most: plotly sizes bars by the closest two, 5 layers for layers 0 and 5
      width: 0.8, marker: { color: BLOCK[b] }, hovertemplate: `layer %{x}<br>${b} %{y:.4f}<extra></extra>`,
    })), { barmode: "stack", xaxis: { title: { text: "layer" }, dtick: 1, range: layers.length
      ? [Math.min(...layers.map((l) => l.layer)) - 0.5, Math.max(...layers.map((l) => l.layer)) + 0.5] : undefined },
      yaxis: { title: { text: "share of logit energy" }, range: [0, 1] }, height: 360,
      // the legend in the blocks' order pp, pc, cp, cc (plotly reverses a stack's by default)
      legend: { orientation: "h", y: -0.22, x: 0, traceorder: "normal" } });
    shares.on("plotly_click", (ev) => choose(ev.points[0].x));
    const maxLayer = Math.max(...layerIds), maxHead = headIds.length ? Math.max(...headIds) : 0;
    const cell = new Map(heads.map((x) => [x.layer + ":" + x.head, x]));
    // Panels: the head type (docs/method.md: the argmax of f_pp, f_pc + f_cp and f_cc), then
    // the four blocks in the tables' order pp, pc, cp, cc.
    const TYPES = [["position-position", "pp", BLOCK.f_pp, "p"], ["content-position", "pc+cp", "#CC79A7", "x"],
      ["content-content", "cc", BLOCK.f_cc, "c"]];
    const OTHER_TYPE = ["undefined", "–", "#BBBBBB", "–"];
    const typeOf = (x) => TYPES.findIndex(([t]) => t === x.head_type);
    const panels = ["head_type"].concat(blocks);
    const n = panels.length, wide = 1 / n;
    const hoverOf = (x, l, k, b) => (x ? `layer ${l} head ${k}<br>type ${pt(fmt(x.head_type))}` +
      (b === "head_type" ? "" : `<br>${b} ${fmt(x[b])}`) + `<br>pp ${fmt(x.f_pp)} · pc ${fmt(x.f_pc)}` +
      ` · cp ${fmt(x.f_cp)} · cc ${fmt(x.f_cc)}<br>eff_rank ${fmt(x.eff_rank)}`
      : layerIds.includes(l) ? `layer ${l} head ${k}: no row` : `layer ${l}: not stored by this run`);
    const mapHeight = Math.min(990, 250 + 26 * (maxLayer + 1)), mapMargin = { l: 50, r: 20, t: 60, b: 120 };
    const rowPx = (mapHeight - mapMargin.t - mapMargin.b) / (maxLayer + 1);
    // Drawn for a width (the page's, or the paper's when printed: fitPlots), since what fits
    // in a cell depends on it: a type's name in the type panel, its letter where the name
    // does not fit (a type is never colour alone: trial 28), nothing under 8 px; a share's
    // value while "0.27" fits (two close shares differ in print, not only in hue); each
    // label black or white, whichever contrasts more with its cell (at least 4.6:1, WCAG AA)
    function drawHeadMap(width, fixed) {
      const panelPx = (width - mapMargin.l - mapMargin.r) * (wide - 0.03);
      const cellPx = panelPx / (maxHead + 1);
      // (at 11 px: "pc+cp" about 30 px wide, "0.27" 22, a letter 6)
      const typeText = rowPx < 11 || cellPx < 8 ? null : cellPx >= 32 ? 1 : 3;
      const numbers = cellPx >= 24 && rowPx >= 13;
      const mapTraces = [], labelTraces = [];
      panels.forEach((b, i) => {
        const z = [], text = [], lx = [], ly = [], label = [], ink = [];
        for (let l = 0; l <= maxLayer; l++) {
          z.push([]); text.push([]);
          for (let k = 0; k <= maxHead; k++) {
            const x = cell.get(l + ":" + k);
            const t = x ? typeOf(x) : -1;
            z[l].push(!x ? null : b !== "head_type" ? x[b] : t < 0 ? TYPES.length : t);
            text[l].push(hoverOf(x, l, k, b));
            if (!x) continue;
            const fill = b === "head_type" ? hexRgb((TYPES[t] || OTHER_TYPE)[2])
              : typeof x[b] === "number" ? scaleRgb(VIRIDIS, x[b]) : null;
            const word = b === "head_type" ? (typeText ? (TYPES[t] || OTHER_TYPE)[typeText] : null)
              : numbers ? (typeof x[b] === "number" ? x[b].toFixed(2) : "–") : null;
            if (word === null || !fill) continue;
            lx.push(k); ly.push(l); label.push(word); ink.push(inkOn(fill));
          }
        }
        const ax = i ? String(i + 1) : "";
        const common = { type: "heatmap", z: z, customdata: text,
          hovertemplate: "%{customdata}<extra></extra>",
          xaxis: "x" + ax, yaxis: "y" + ax, name: b, xgap: 1, ygap: 1, showlegend: false };
        if (b === "head_type") {
          // a colour a type: value j in [j - 0.5, j + 0.5] of a stepped scale
          const colours = TYPES.map((t) => t[2]).concat([OTHER_TYPE[2]]), m = colours.length;
          mapTraces.push(Object.assign(common, { showscale: false, zmin: -0.5, zmax: m - 0.5,
            colorscale: colours.flatMap((c, j) => [[j / m, c], [(j + 1) / m, c]]) }));
        } else {
          mapTraces.push(Object.assign(common, { coloraxis: "coloraxis" }));
        }
        // the labels over the cells (a heatmap's own text takes one colour for all)
        if (label.length) {
          labelTraces.push({ type: "scatter", mode: "text", x: lx, y: ly, text: label, name: "labels " + b,
            textfont: { size: 11, color: ink }, xaxis: "x" + ax, yaxis: "y" + ax, hoverinfo: "skip",
            showlegend: false });
        }
      });
      // the head types' legend: a square of each type's colour (types no head has too), and
      // the letter that stands for it in cells too narrow for its name
      const present = heads.some((x) => typeOf(x) < 0) ? TYPES.concat([OTHER_TYPE]) : TYPES;
      for (const type of present) {
        const [t, short, colour] = type;
        const letter = typeText === 3 && type[3] !== short ? ` (${type[3]})` : "";
        mapTraces.push({ type: "scatter", mode: "markers", x: [null], y: [null], name: pt(`${short}${letter}: ${t}`),
          marker: { symbol: "square", size: 12, color: colour }, hoverinfo: "skip", showlegend: true,
          legendgroup: "types" });
      }
      // the head types' legend below the panels' "head" axis titles, clear of them: the plot
      // area is the height less the margins; the legend starts 64 px under it
      const mapLayout = { coloraxis: { colorscale: VIRIDIS, cmin: 0, cmax: 1,
        colorbar: { title: { text: "share" }, thickness: 12 } }, height: mapHeight,
      annotations: [], margin: mapMargin,
      legend: { orientation: "h", x: 0, y: -64 / (mapHeight - mapMargin.t - mapMargin.b), yanchor: "top",
        title: { text: "head type:", side: "left" } } };
      panels.forEach((b, i) => {
        const ax = i ? String(i + 1) : "";
        // no zero lines: through the empty rows of layers not stored they would read as data;
        // the ranges the cells' (the labels' text would pad them)
        mapLayout["xaxis" + ax] = { domain: [i * wide + 0.01, (i + 1) * wide - 0.02], title: { text: "head" },
          dtick: 1, anchor: "y" + ax, zeroline: false, range: [-0.5, maxHead + 0.5] };
        mapLayout["yaxis" + ax] = { range: [maxLayer + 0.5, -0.5], dtick: 1, anchor: "x" + ax, zeroline: false,
          title: i ? undefined : { text: "layer" }, showticklabels: i === 0 };
        // black text, the block's colour in a square before it (the colours on white are
        // 2.3-3.9:1); the block's short name where the long one would meet its neighbour's
        const name = b === "head_type" ? "head type" : panelPx >= 150 ? pt(BLOCK_LABEL[b]) : b.slice(2);
        const title = b === "head_type" ? name : `<span style="color:${BLOCK[b]}">■</span> ${name}`;
        mapLayout.annotations.push({ text: title, x: (i + 0.5) * wide - 0.005, y: 1.01, xref: "paper",
          yref: "paper", xanchor: "center", yanchor: "bottom", showarrow: false,
          font: { size: 11, color: "#000" } });
      });
      // a width given (printing) is the figure's; else it fills its box (responsive)
      return draw(headmap, mapTraces.concat(labelTraces), Object.assign(mapLayout, fixed ? { width: width } : { autosize: true }));
    }
    headmap.bfdFit = (width) => drawHeadMap(width || headmap.getBoundingClientRect().width || 1000, !!width);
    headmap.bfdFit(null);
    headmap.on("plotly_click", (ev) => choose(ev.points[0].y, ev.points[0].x));
    // Mode spectra.
    const spectrum = plotDiv("spectrum-plot", "Singular values sigma and per-mode energies of the selected head");
    const effrank = plotDiv("effrank-plot", "Effective rank of every head per layer");
    app.append(section("Mode spectra", h("div", { class: "grid" }, spectrum, effrank)));
    draw(effrank, [{ x: heads.map((x) => x.layer), y: heads.map((x) => x.eff_rank), mode: "markers",
      name: "heads", marker: { color: "#0072B2", opacity: 0.6 }, customdata: heads.map((x) => x.head),
      hovertemplate: "layer %{x} head %{customdata}<br>eff_rank %{y:.3f}<extra></extra>" },
    { x: withGaps(layerIds.map((l) => ({ layer: l }))).map((r) => r.layer),
      y: withGaps(layerIds.map((l) => ({ layer: l }))).map((r) => { if (r.gap) return null;
        const v = heads.filter((x) => x.layer === r.layer && x.eff_rank !== null);
        return v.length ? v.reduce((s, x) => s + x.eff_rank, 0) / v.length : null; }),
    mode: "lines", name: "layer mean", line: { color: "#000" } }],
    { xaxis: { title: { text: "layer" }, dtick: 1 }, yaxis: { title: { text: "eff_rank" } }, height: 360 });
    effrank.on("plotly_click", (ev) => choose(ev.points[0].x, ev.points[0].customdata));
    // alpha vs beta.
    const ab = plotDiv("alphabeta-plot", "Query-side positional loading alpha against key-side beta for every " +
      "mode of the selected layer, coloured by energy, symbol by mode type", "tall");
    const posDiv = plotDiv("pos-plot", "First principal components of the positional factor on the patch grid");
    app.append(section("Modes: alpha vs beta", ab), section("Positional factor on the patch grid", posDiv));
    // Preservation vs enrichment, validation.
    const pres = plotDiv("preservation-plot", "Positional preservation (frac_pos at resid, pos_embed cosine) " +
      "against content enrichment (frac_content at attn_in) by layer");
    const resid = plotDiv("residual-plot", "Identity residuals and the check against the model " +
      "per layer, log scale, with the check's limit");
    const split = plotDiv("splithalf-plot", "Split-half correlation of the positional factor per layer");
    const shuffle = plotDiv("shuffle-plot", "Shuffle control: frac_pos after shuffling tokens against its chance level");
    app.append(section("Positional preservation vs content enrichment", pres),
      section("Validation", h("div", { class: "grid" }, resid, split, shuffle)));
    const LG = withGaps(layers);  // lines break across layers not stored
    const L = LG.map((l) => l.layer);
    const line = (key, name, color, dash, extra) => Object.assign({ x: L, y: LG.map((l) => l[key]),
      name: pt(name), mode: "lines+markers", line: { color: color, dash: dash || "solid" },
      hovertemplate: `layer %{x}<br>${key} %{y:.4~g}<extra></extra>` }, extra || {});
    draw(pres, [line("frac_pos_resid", "positional preservation: frac_pos at resid", "#D55E00"),
      line("pos_embed_cos_resid", "pos_embed cosine at resid", "#CC79A7", "dot"),
      line("frac_pos", "frac_pos at attn_in", "#E69F00", "dash"),
      line("frac_content", "content enrichment: frac_content at attn_in", "#0072B2")],
    { xaxis: { title: { text: "layer" }, dtick: 1 }, yaxis: { title: { text: "share" }, range: [0, 1.02] }, height: 380 });
    const abs = (key) => LG.map((l) => (l[key] === null ? null : Math.abs(l[key])));
    // the check against the model (docs/checks.md) beside the identities, with its limit: a
    // point above the dashed line is a failed check
    const residKeys = ["ss_identity_residual", "ortho_residual", "logit_residual",
      "model_logit_residual", "model_attn_residual"];
    const limit = D.model_check_limit;
    const checked = residKeys.slice(3).some((k) => abs(k).some((v) => v !== null));
    const residTraces = logTraces(residKeys.filter((k, i) => i < 3 || abs(k).some((v) => v !== null))
      .map((k) => ({ x: L, y: abs(k), name: k, mode: "lines+markers",
        line: { color: PALETTE[residKeys.indexOf(k)] },
        hovertemplate: `layer %{x}<br>|${k}| %{customdata:.3~g}<extra></extra>` })));
    const shown = L.filter((v) => v !== null);
    if (checked && typeof limit === "number") residTraces.push({ x: [Math.min(...shown),
      Math.max(...shown)], y: [limit, limit], mode: "lines", name: `check limit ${limit}`,
      line: { color: "#000", dash: "dash", width: 1 }, hoverinfo: "skip" });
    draw(resid, residTraces,
    { title: { text: "residual checks", font: { size: 13 } },
      yaxis: { type: "log", title: { text: "|relative residual|" }, exponentformat: "e" },
      xaxis: { title: { text: "layer" }, dtick: 1 } });
    draw(split, [line("pos_split_half_r", "split-half r of pos", "#009E73")],
      { title: { text: "split-half reliability of pos", font: { size: 13 } },
        yaxis: { range: [0, 1.02], title: { text: "correlation" } }, xaxis: { title: { text: "layer" }, dtick: 1 } });
    // the shuffle control's expectation per layer: (1 − frac_img) / N, N the images kept
    const kept = run.n_decoded;
    const stored = (t) => Object.assign(t, { hovertemplate: t.hovertemplate.replace("%{y:", "%{customdata:") });
    const shuffled = logTraces([stored(line("shuffle_frac_pos", "frac_pos after shuffling", "#0072B2")),
      stored(line("frac_pos", "frac_pos", "#E69F00", "dash")),
      { x: L, y: LG.map((l) => (l.frac_img === null ? null : (1 - l.frac_img) / kept)), mode: "lines",
        name: "chance (1 − frac_img)/N", line: { color: "#000", dash: "dot" } }]);
    // every tick labelled whole (plotly's own wrote 2 3 4 ... 0.1 2 3 4, the last 4 being 0.4)
    draw(shuffle, shuffled, { title: { text: "shuffle control", font: { size: 13 } },
      yaxis: Object.assign(logAxis(shuffled.flatMap((t) => t.y), 300), { title: { text: "frac_pos" } }),
      xaxis: { title: { text: "layer" }, dtick: 1 } });
    app.append(section("Tables",
      dataTable("layers-table", "layers", layers, null, { filename: run.run_id + "-layers" }),
      dataTable("heads-table", "heads", heads, null, { filename: run.run_id + "-heads",
        rowKey: (x) => x.layer + ":" + x.head }),
      dataTable("modes-table", "modes", modes, null, { filename: run.run_id + "-modes", limit: 200 })));
    function refresh() {
      const sel = modes.filter((m) => m.layer === state.layer && m.head === state.head);
      const energy = (m) => [m.e_pp, m.e_pc, m.e_cp, m.e_cc].reduce((s, v) => s + (v || 0), 0);
      const tr = blocks.map((b) => ({ type: "bar", x: sel.map((m) => m.mode), y: sel.map((m) => m["e" + b.slice(1)]),
        name: pt(BLOCK_LABEL[b]), marker: { color: BLOCK[b] }, yaxis: "y2",
        hovertemplate: `mode %{x}<br>e${b.slice(1)} %{y:.4~g}<extra></extra>` }));
      tr.unshift({ x: sel.map((m) => m.mode), y: sel.map((m) => m.sigma), mode: "lines+markers", name: "sigma",
        line: { color: "#000" }, hovertemplate: "mode %{x}<br>sigma %{y:.4~g}<extra></extra>" });
      draw(spectrum, sel.length ? tr : [], { barmode: "stack", height: 420,
        legend: { orientation: "h", y: -0.22, x: 0, traceorder: "normal" },
        title: { text: `layer ${state.layer}, head ${state.head}` + (sel.length ? "" : ": no modes stored") },
        // the plot area (height less margins and the legend's rows) times the domain
        xaxis: { title: { text: "mode" }, anchor: "y2" }, yaxis: Object.assign(logAxis(sel.map((m) => m.sigma),
          (420 - 90 - 60) * 0.45), { domain: [0.55, 1], title: { text: "sigma" } }),
        yaxis2: { domain: [0, 0.45], title: { text: "mode energy" } } });
      // a mode without alpha and beta (sigma 0: a pruned head's) or energy is not drawn: its
      // place would mean nothing, and log10 of 0 stretched the colour scale to -300
      const inLayer = modes.filter((m) => m.layer === state.layer && typeof m.alpha === "number" &&
        typeof m.beta === "number" && energy(m) > 0);
      // one symbol a mode type, the same on every layer (as bfd plot: bfd/report/plots.py)
      const types = [...new Set(inLayer.map((m) => m.mode_type))]
        .sort((x, y) => MODE_ORDER.indexOf(x) - MODE_ORDER.indexOf(y));
      const abTraces = types.map((t) => {
        const ms = inLayer.filter((m) => m.mode_type === t);
        return { x: ms.map((m) => m.alpha), y: ms.map((m) => m.beta), mode: "markers", name: pt(`mode type ${fmt(t)}`),
          marker: { symbol: modeSymbol(t), size: ms.map((m) => (m.head === state.head ? 10 : 7)),
            color: ms.map((m) => Math.log10(Math.max(energy(m), 1e-300))), coloraxis: "coloraxis",
            line: { width: ms.map((m) => (m.head === state.head ? 1.5 : 0)), color: "#000" } },
          text: ms.map((m) => `head ${m.head} mode ${m.mode}<br>type ${pt(fmt(m.mode_type))}<br>sigma ${fmt(m.sigma)}` +
            `<br>energy ${fmt(energy(m))}`),
          hovertemplate: "%{text}<br>alpha %{x:.3f}, beta %{y:.3f}<extra></extra>" };
      });
      abTraces.push({ x: [0.5, 0.5, null, 0, 1], y: [0, 1, null, 0.5, 0.5], mode: "lines", hoverinfo: "skip",
        name: "1/2: positional side boundary", line: { color: "#777", dash: "dot", width: 1 } });
      draw(ab, abTraces, { title: { text: `layer ${state.layer}: every head's modes (head ${state.head} outlined)` },
        xaxis: { title: { text: "alpha (query side positional)" }, range: [-0.02, 1.02], constrain: "domain" },
        yaxis: { title: { text: "beta (key side positional)" }, range: [-0.02, 1.02], scaleanchor: "x",
          constrain: "domain" },
        coloraxis: { colorscale: "Viridis", colorbar: { title: { text: "log10 energy" }, thickness: 12 } },
        height: 520 });
      drawPos();
      for (const row of document.querySelectorAll("#heads-table tbody tr")) {
        row.classList.toggle("selected", row.dataset.key === state.layer + ":" + state.head);
      }
      Plotly.relayout(headmap, { shapes: panels.map((b, i) => ({ type: "rect", xref: "x" + (i ? i + 1 : ""),
        yref: "y" + (i ? i + 1 : ""), x0: state.head - 0.5, x1: state.head + 0.5, y0: state.layer - 0.5,
        y1: state.layer + 0.5, line: { color: "#000", width: 3 } })) });
    }
    function drawPos() {
      const pos = D.pos;
      const i = pos ? pos.layers.indexOf(state.layer) : -1;
      if (i < 0) {
        draw(posDiv, [], { height: 200, annotations: [{ text: pos ? `no positional factor for layer ${state.layer}`
          : "no positional factor stored: the run's results Dataset was not found", showarrow: false,
        xref: "paper", yref: "paper", x: 0.5, y: 0.5 }], xaxis: { visible: false }, yaxis: { visible: false } });
        return;
      }
      const pcs = pos.pcs[i], n = pcs.length, traces = [], layout = { height: 360, annotations: [] };
      pcs.forEach((z, j) => {
        const ax = j ? String(j + 1) : "";
        const lim = Math.max(...z.flat().map(Math.abs)) || 1;
        traces.push({ type: "heatmap", z: z, zmin: -lim, zmax: lim, colorscale: "RdBu", showscale: false,
          xaxis: "x" + ax, yaxis: "y" + ax, hovertemplate: `PC${j + 1}<br>row %{y} col %{x}<br>%{z:.4~g}<extra></extra>` });
        layout["xaxis" + ax] = { domain: [j / n + 0.02, (j + 1) / n - 0.02], anchor: "y" + ax, title: { text: "col" },
          constrain: "domain", dtick: 1 };
        layout["yaxis" + ax] = { autorange: "reversed", anchor: "x" + ax, scaleanchor: "x" + ax, constrain: "domain",
          dtick: 1, title: j ? undefined : { text: "row" } };
        layout.annotations.push({ text: `PC${j + 1} (${(100 * pos.explained[i][j]).toFixed(1)}% of pos)`, x: (j + 0.5) / n,
          y: 1.01, xref: "paper", yref: "paper", xanchor: "center", yanchor: "bottom", showarrow: false });
      });
      draw(posDiv, traces, layout);
    }
    refresh();
  }

  // --- series -------------------------------------------------------------------------------
  function seriesPage() {
    if (!D.has_audits) {
      app.append(empty("No audits recorded yet: the catalog has no audits. Each series below is a " +
        "model with its weights, its runs ordered by creation time.", "no-audits"));
    }
    const metrics = rowsOf(D.metrics);
    if (!metrics.length) { app.append(empty("No complete runs yet.")); return; }
    const names = [...new Set(metrics.map((m) => m.series))];
    const drift = rowsOf(D.drift);
    const changes = rowsOf(D.head_type_changes);
    // each flagged drift's mark: the audit and the plot whose figure it concerns, with what
    // was flagged (bfd/report/data.py drift_marks)
    const driftMarks = rowsOf(D.drift_marks);
    const hasStep = metrics.some((m) => m.step !== null && m.step !== undefined);
    // the series of the latest audit (bfd/report/data.py latest_series), else the first
    const state = { series: names.includes(D.latest_series) ? D.latest_series : names[0],
      x: hasStep ? "step" : "time" };
    // series.html?series=NAME opens on that series (as compare.html?a=&b= on two runs); a
    // name that is no series of this store is said above the plots, the default shown
    const askedSeries = new URLSearchParams(window.location.search).get("series");
    if (askedSeries !== null && askedSeries !== "") {
      if (names.includes(askedSeries)) state.series = askedSeries;
      else {
        app.append(h("p", { class: "note warn", id: "series-url-note" }, `the series of the address ` +
          `(series=${askedSeries}) is not a series of this store: showing ${state.series} instead.`));
      }
    }
    // choosing a series puts it in the address, so that the address links to what is shown
    // (a browser that refuses it, as some do for file:// pages, keeps the old address)
    function remember(name) {
      const url = new URL(window.location.href);
      url.searchParams.set("series", name);
      try { window.history.replaceState(null, "", url.href); } catch (e) { /* address kept */ }
    }
    const skip = ["step", "n_flagged"];
    // run_summary figures audits do not keep (bfd/report/data.py figures_not_kept): missing
    // for an audit's point, whose run may have been decomposed again since; plotted even
    // where every point of the store lacks them, to say so
    const notKept = D.not_kept || [];
    const numeric = numericKeys(metrics, skip);
    const keys = Object.keys(metrics[0]).filter((k) => (numeric.includes(k) || notKept.includes(k)) &&
      !/_(lo|hi)$/.test(k));
    // the heatmap's metrics: the columns of its layer rows but run and layer, in their order
    // (bfd/report/dashboard.py SERIES_LAYER_METRICS, the one list)
    const LAYER_METRICS = Object.keys(D.layers || {}).filter((k) => k !== "run_id" && k !== "layer");
    const layersOf = layersByRun();
    const layerState = { metric: LAYER_METRICS[0], mode: "value" };
    const heat = plotDiv("layer-heatmap", "A per-layer metric of each audit's run, layer against audit " +
      "step, or its change against the audit it was compared with", "tall");
    const layerControls = h("div", { class: "controls" },
      select("layer-metric-select", "metric", LAYER_METRICS.map((k) => [k, k + (k === "frac_pos" ? " (attn_in)" : "")]),
        layerState.metric, (v) => { layerState.metric = v; drawLayers(); }),
      select("layer-mode-select", "show", [["value", "value"], ["delta", "change against the audit compared with"],
        ["since", "change since the first audit of the same model and inputs"]],
        layerState.mode, (v) => { layerState.mode = v; drawLayers(); }));
    let layerMembers = [], layerGone = [];
    const layersNote = h("p", { class: "note", id: "layers-redone" });
    const controls = h("div", { class: "controls" },
      select("series-select", "series", names.map((s) => [s, s]), state.series,
        (v) => { state.series = v; remember(v); redraw(); }),
      select("x-select", "against", (hasStep ? [["step", "audit step"]] : []).concat([["time", "audit time"]]),
        state.x, (v) => { state.x = v; redraw(); }),
      // past the plots' mode bars to the flags, for a keyboard (trial 32: about 165 Tabs)
      h("a", { href: "#drift-flags", id: "to-drift-flags" }, "Go to the drift flags"));
    const grid = h("div", { class: "grid", id: "metric-grid" });
    // the checkpoint files of the series that audit-checkpoints left out (no run, no audit,
    // no point: bfd/report/data.py left_out_rows): a line naming each, and a dotted line at
    // its step on every plot
    const leftOut = rowsOf(D.left_out);
    const leftOutLine = h("p", { class: "note warn", id: "left-out", hidden: true });
    // the plots with no value in the series (and no drift flagged on them): one line
    const emptyLine = h("p", { class: "note", id: "empty-plots" });
    // the audits with flagged drift that no plot drawn marks (all of it on metrics with no
    // run-level plot: frac_img*, frac_int*): a line each, so that the plots do not read as clean
    const unmarkedLine = h("div", { id: "unmarked-drift" });
    const tables = h("div", {});
    app.append(controls, leftOutLine, section("Every metric", h("p", { class: "note" },
      "One point per complete audit of the series, at its step, with the figures it saw. Orange crosses: " +
      "audits whose drift check flagged what this plot shows (a head_type change: the counts of the " +
      "types the heads changed from and to); hover one for the metric, rows, layers, heads and largest " +
      "|delta|, click it to compare the audit with the one it was compared with. " +
      "The line breaks between consecutive " +
      "points whose runs are of two models (run_pairs.same_model false), and before an audit whose figures " +
      "are of other inputs than its previous audit's (other images, decoded N, layers or positions: " +
      "comparable no). A dashed line joins an audit to the audit its drift was compared with where that " +
      "is not the point drawn before it: the audits between were skipped as not comparable with it " +
      "(another model, images, N, ...) or were audited after it (a re-audit of an earlier step); hover " +
      "the point to see which. An open grey circle: an audit whose drift check compared nothing (its drift_note " +
      "says why): its 0 flagged means not checked, not no drift. An open red circle, no line into it or " +
      "out of it: an audit of a damaged run (left out of SQL: bfd verify RUN), the figures it kept, " +
      "compared with nothing. Steps that are all Unix " +
      "seconds (an audit's default step, its start time) are drawn as dates. Click a point to open its run. " +
      "Audits do not keep " + (notKept.join(", ") || "every figure") + ": an audit's point has " +
      "none of them (its run's current ones may come from a later decomposition; its run page " +
      "shows them). In the table, figures audit: what the audit kept; run: the run's current " +
      "figures (a run never audited). Plots with no value in the series are listed in one line " +
      "below the grid, unless drift of their figure was flagged; so are the audits whose flags no plot " +
      "marks (flags on frac_img*, frac_int*: no plot of theirs)."), grid, emptyLine, unmarkedLine),
    section("Layers against step", h("p", { class: "note" },
      "A per-layer metric (frac_pos at attn_in, frac_pos_resid, energy-weighted f_pp, f_pc, f_cp, f_cc of the " +
      "layer), a column per audit of the series, from its run's current layer rows (audits keep no per-layer " +
      "figures). Change: the value less that of the audit it was compared with (the previous comparable " +
      "audit, as its drift), or since the first audit of the same model and inputs (a slow drift, summed), on a scale centred on 0, none where the lines above do not join the two (two " +
      "models, not comparable, not compared, a damaged run) nor where either run did not store the layer."), layerControls, heat,
      layersNote),
    tables);
    // Each plot's cell, sized by the grid: a plot drawn while its cell is the grid's only
    // item (auto-fit) would take the whole row; a later change of the cell redraws it.
    const sized = new ResizeObserver((entries) => {
      for (const e of entries) if (e.target._fullLayout) Plotly.Plots.resize(e.target);
    });
    // what a drift mark says: the metrics flagged, how many rows, which layers and heads, the
    // largest |delta| and where (and a head-count plot's type changes)
    function markText(mark, m) {
      const layers = mark.layers || [], heads = mark.heads || [];
      const few = (xs) => (xs.length > 12 ? xs.slice(0, 12).join(", ") + ", …" : xs.join(", "));
      return pt("drift flagged at audit " + mark.audit_id + (m && m.step !== null && m.step !== undefined
        ? " (step " + stepText(m) + ")" : "") + ": " + mark.metrics.join(", ") + " in " + mark.n_rows +
        (mark.n_rows === 1 ? " row" : " rows") + (layers.length ? ", " + (layers.length === 1 ? "layer " : "layers ") +
        few(layers) : "") + (heads.length ? "; " + (heads.length === 1 ? "head " : "heads ") + few(heads) +
        " (layer.head)" : "")) + "<br>" + pt("largest |delta| " + fmt(mark.max_abs_delta) +
        (mark.largest ? ": " + mark.largest : "")) +
        ((mark.types || []).length ? "<br>" + pt(mark.types.join("; ")) : "");
    }
    // an id shown short in a table cell (the whole id on hover)
    const shortId = (v) => (typeof v === "string" && v.length > 16 ? v.slice(0, 9) + "…" + v.slice(-5) : fmt(v));
    function runCell(runId) {
      const run = RUN_BY_ID.get(runId);
      return run ? runLink(run, shortId(runId)) : shortId(runId);
    }
    // the line breaks between consecutive points whose runs are of two models
    // (run_pairs.same_model false)
    const twoModels = (a, b) => pairOf(a, b)?.same_model === false;
    // an audit whose drift check compared nothing (its drift_note says why): its n_flagged is
    // no pass; and one whose figures are of other inputs than its previous audit's
    // (audit_history's comparable false: other layers too): no line from that audit to it
    function notCompared(m) {
      return !m.gap && m.audit_id !== null && m.audit_id !== undefined &&
        m.drift_note !== null && m.drift_note !== undefined;
    }
    const otherInputs = (m) => !m.gap && (m.comparable === false || notCompared(m));
    // an audit of a run the catalog left out (damaged: bfd/report/data.py series_data): the
    // figures it kept, its comparisons unknown; no line into it or out of it
    const damaged = (m) => !m.gap && m.damaged === true;
    // an audit whose run was decomposed again since with other options that change figures
    // (a later --prefix include: series_data's redecomposed): its run's current layer rows
    // and head types are not what it saw
    const redone = (m) => !m.gap && m.redecomposed === true;
    // a point's place, first in its hover (HTML, escaped): its step, the weights' file (a
    // checkpoint), the images it decoded and its flags; its run and audit on the next line
    const placeText = (m) => {
      const said = [m.step !== null && m.step !== undefined ? "step " + stepText(m) : null,
        typeof m.weights === "string" && m.weights ? m.weights.split("/").pop() : null,
        typeof m.n_decoded === "number" ? "N " + m.n_decoded : null,
        notCompared(m) ? "drift not compared" : typeof m.n_flagged === "number" ? m.n_flagged + " flagged"
          : null].filter(Boolean);
      return said.length ? pt(said.join(" · ")) + "<br>" : "";
    };
    const redoneNote = (members) => {
      const steps = members.filter(redone).map((m) => stepText(m) ?? m.audit_id);
      return steps.length ? " Not shown: the audit" + (steps.length > 1 ? "s at steps " : " at step ") +
        steps.join(", ") + (steps.length > 1 ? ", whose runs were" : ", whose run was") + " decomposed again " +
        "since with other options that change figures (--prefix, --control-seed, ...): its current layer rows " +
        "and head types are not what the audit saw, nor any change against it." : "";
    };
    // the point the i-th point of a series is compared with: the audit its drift was compared
    // with (prev_audit_id: the latest earlier audit comparable with it, so not the point
    // before it when the audits between were of another model, images, N, ...), else (a run
    // never audited, an audit naming none) the point before it; -1 for the first
    function refOf(members, i) {
      const id = members[i].prev_audit_id;
      const j = id === null || id === undefined ? -1 : members.findIndex((m) => m.audit_id === id);
      return j >= 0 && j < i ? j : i - 1;
    }
    // the one rule of no line and no layer delta from point j to point i: runs of two models,
    // an audit not comparable with its previous one or whose drift was not compared, an audit
    // of a damaged run on either side
    const linkBroken = (members, j, i) => twoModels(members[j].run_id, members[i].run_id) ||
      otherInputs(members[i]) || damaged(members[i]) || damaged(members[j]);
    // the first point before the i-th of the same model over the same inputs (run_pairs: one
    // model, no note: images, img_size and prefix option; the same decoded N), neither
    // damaged nor decomposed again since: what a change "since the first audit" is against;
    // -1 when none
    const baseOf = (members, i) => members.findIndex((b, j) => {
      if (j >= i || damaged(b) || damaged(members[i]) || redone(b) || redone(members[i])) return false;
      const pair = pairOf(b.run_id, members[i].run_id);
      return pair !== null && pair.same_model === true && isNull(pair.note) &&
        b.n_decoded === members[i].n_decoded;
    });
    // the points between the i-th point and the one it was compared with (its refOf)
    const betweenOf = (members, i) => (i > 0 ? members.slice(refOf(members, i) + 1, i) : []);
    // of those, the audits made after the i-th point's had finished (a re-audit of an earlier
    // step): not there to compare with, so not skipped (bfd.tasks.audits.skipped_audits)
    const finished = (m) => Date.parse(m.finished_at);
    const laterOf = (members, i) => betweenOf(members, i).filter((m) =>
      finished(m) > finished(members[i]));
    // the audits the i-th point's comparison skipped as not comparable with it
    const skippedOf = (members, i) => betweenOf(members, i).filter((m) =>
      !(finished(m) > finished(members[i])));
    // a break before the i-th point of the line: no link from the point before it, or the
    // point is compared with an earlier one (joined to it by a dashed line instead)
    // the audits between the i-th point and the one it was compared with are all re-audits of
    // that one's run made after the i-th (a week audited again later: one run, its figures):
    // the point before it holds the very figures it was compared with, so the line joins them
    const reauditsOnly = (members, i) => {
      const between = betweenOf(members, i), ref = members[refOf(members, i)];
      return between.length > 0 && between.every((m) => m.run_id === ref.run_id &&
        finished(m) > finished(members[i]) && !redone(m) && !damaged(m));
    };
    const breaksBefore = (members, i) => i > 0 && ((betweenOf(members, i).length > 0 &&
      !reauditsOnly(members, i)) || linkBroken(members, i - 1, i));
    // what a point compared with an earlier point than the one before it says: which audit,
    // the audits skipped as not comparable with it, and those audited after it ("" for any
    // other point)
    function comparedText(members, i) {
      const skipped = skippedOf(members, i), later = laterOf(members, i);
      if (!(skipped.length + later.length) || linkBroken(members, refOf(members, i), i)) return "";
      const ref = members[refOf(members, i)];
      const ids = (ms) => ms.map((m) => m.audit_id + (m.step !== null && m.step !== undefined
        ? " (step " + stepText(m) + ")" : "")).join(", ");
      return " · compared with audit " + ref.audit_id + (ref.step !== null && ref.step !== undefined
        ? " (step " + stepText(ref) + ")" : "") + (skipped.length ? ", skipping " + skipped.length +
        (skipped.length === 1 ? " audit" : " audits") + " not comparable: " +
        skipped.map((m) => m.audit_id).join(", ") : "") + (later.length ? "; " + ids(later) +
        (later.length === 1 ? " was" : " were") + " audited after it (not there to compare with)" : "");
    }
    // Layer x step heatmap: each audit's run's current layer rows (bfd/report/data.py
    // layer_rows: audits keep no per-layer figures), a column per audit of the series; delta:
    // the change against the audit it was compared with (refOf: the previous comparable
    // audit), none where no line joins the two (linkBroken)
    function drawLayers() {
      const members = layerMembers, k = layerState.metric, mode = layerState.mode;
      // a change: against the audit compared with (delta), or against the series' first
      // audit comparable with it (since), the change summed over every audit between
      const delta = mode !== "value", since = mode === "since";
      layersNote.textContent = redoneNote(members).trim();
      const byLayer = members.map((m) => new Map(redone(m) ? []
        : (layersOf.get(m.run_id) || []).map((l) => [l.layer, l[k]])));
      // a row a layer from the first to the last layer any audit's run stored, the layers
      // between that none stored included as empty rows (a run of --layers 0,5,11: three
      // rows of values and empty ones between, never a band stretched over its neighbours)
      const stored = [...new Set(byLayer.flatMap((b) => [...b.keys()]))].sort((a, b) => a - b);
      const ids = stored.length ? Array.from({ length: stored[stored.length - 1] - stored[0] + 1 },
        (_, i) => stored[0] + i) : [];
      const subset = stored.length < ids.length;
      const num = (v) => (typeof v === "number" ? v : null);
      const value = (i, l) => num(byLayer[i].get(l));
      const bases = members.map((_, i) => (since ? baseOf(members, i) : -1));
      const z = ids.map((l) => members.map((m, i) => {
        if (!delta) return value(i, l);
        if (since) {
          const a = bases[i] >= 0 ? value(bases[i], l) : null, b = value(i, l);
          return a === null || b === null ? null : b - a;
        }
        const j = refOf(members, i);
        const a = i > 0 ? value(j, l) : null, b = value(i, l);
        return i === 0 || linkBroken(members, j, i) || a === null || b === null ? null : b - a;
      }));
      const why = (i) => {
        if (i === 0) return "first audit of the series";
        if (since) return bases[i] < 0 ? "no earlier audit of the same model and inputs (it is the first)"
          : "layer not stored in both";
        const j = refOf(members, i);
        return redone(members[i]) || redone(members[j]) ? "a run decomposed again since with other options"
          : damaged(members[i]) || damaged(members[j]) ? "an audit of a damaged run"
          : twoModels(members[j].run_id, members[i].run_id) ? "runs of two models"
            : notCompared(members[i]) ? "drift not compared: " + members[i].drift_note
              : otherInputs(members[i]) ? "other inputs than the previous audit's (comparable no)" : "layer not stored in both";
      };
      const text = ids.map((l, r) => members.map((m, i) => pt(m.run_id + (m.audit_id ? " · audit " + m.audit_id : "") +
        (z[r][i] !== null ? (since ? " · since audit " + members[bases[i]].audit_id + (members[bases[i]].step !== null &&
          members[bases[i]].step !== undefined ? " (step " + stepText(members[bases[i]]) + ")" : "")
          : delta ? comparedText(members, i) : "") : damaged(m) ? " · run damaged: no layer rows"
          : redone(m) ? " · its run was decomposed again since with other options: its current layer rows are not this audit's"
          : !stored.includes(l) ? " · layer not stored by any run of this series"
            : delta ? " · no delta: " + why(i) : " · layer not stored"))));
      const steps = members.map((m) => stepText(m) ?? fmt(m.created_at));
      // a left-out checkpoint (no audit, no column) between the columns of the audits either
      // side of its step (the columns are in step order), named on hover of its label
      const goneAt = layerGone.filter((r) => typeof r.step === "number" &&
        !members.some((m) => m.step === r.step)).map((r) => {
        const next = members.findIndex((m) => typeof m.step === "number" && m.step > r.step);
        return [r, (next === -1 ? members.length : next) - 0.5];
      });
      const goneShapes = goneAt.map(([, x]) => ({ type: "line", xref: "x", yref: "paper", x0: x, x1: x,
        y0: 0, y1: 1, line: { color: "#b00020", dash: "dot", width: 2 } }));
      const goneLabels = goneAt.map(([r, x]) => ({ x: x, y: 1, xref: "x", yref: "paper", yanchor: "bottom",
        showarrow: false, text: "left out", font: { size: 10, color: "#b00020" },
        hovertext: pt(`${r.file} (step ${r.step}) left out by audit-checkpoints: ${r.why || r.reason}`) }));
      draw(heat, ids.length ? [{ type: "heatmap", x: members.map((_, i) => i), y: ids, z: z, text: text,
        customdata: ids.map(() => steps), colorscale: delta ? "RdBu" : "Viridis", zmid: delta ? 0 : undefined,
        hoverongaps: true, colorbar: { title: { text: since ? "Δ " + k + " since first" : delta ? "Δ " + k : k }, thickness: 12 },
        hovertemplate: `layer %{y}<br>step %{customdata}<br>${delta ? "Δ " : ""}${k} %{z:.4~g}<br>%{text}<extra></extra>` }] : [],
      // at most about HEAT_TICKS step labels: one per column printed 374 labels over each
      // other (trial 32); the hover names each column's step
      { xaxis: { title: { text: "audit (step)" }, tickvals: tickEvery(members.length, HEAT_TICKS),
        ticktext: tickEvery(members.length, HEAT_TICKS).map((i) => pt(steps[i])), zeroline: false },
        yaxis: { title: { text: subset ? "layer (stored: " + stored.join(", ") + ")" : "layer" }, dtick: 1,
          autorange: "reversed", zeroline: false },
        height: Math.min(700, 180 + 22 * Math.max(ids.length, 1)),
        shapes: ids.length ? goneShapes : [],
        annotations: ids.length ? goneLabels : [{ text: "no layer rows of this series' runs", showarrow: false,
          xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] });
    }
    // the audits table: what identifies an audit and its drift check first, then the figures
    function auditColumns(members) {
      const lead = ["audit_id", "step", "run_id", "damaged", "started_at", "n_flagged", "comparable", "drift_note", "figures"];
      const all = Object.keys(members[0] || D.metrics);
      return lead.filter((c) => all.includes(c)).concat(all.filter((c) => !lead.includes(c))).map((c) =>
        c === "n_flagged" ? { key: c, label: "n_flagged", render: flagged, title: flaggedTitle }
          : c === "step" ? { key: c, render: (m) => fmt(stepText(m)) } : { key: c });
    }
    // the flagged drift and head-type change tables: what changed first, then where (ids
    // shortened, whole on hover; runs linked to their pages); the page's series and each
    // row's flagged (always true) are in the CSV only
    const idCol = (key, label) => ({ key: key, label: label, render: (r) => shortId(r[key]) });
    const runCol = (key, label) => ({ key: key, label: label, render: (r) => runCell(r[key]) });
    // a row's step as every page reads it (stepText of its audit's point: a time step as its
    // date), its stored step where its audit is no point
    function stepCol(pointOf) {
      return { key: "step", render: (r) => { const m = pointOf(r.audit_id); return fmt(m ? stepText(m) : r.step); } };
    }
    function driftColumns(rows, pointOf, compareOf) {
      const all = Object.keys(rows[0] || D.drift || {});
      // a head_type row's before and after are the types its audit compared (type_before,
      // type_after; the stored before and after are NULL), where it kept them
      const typed = (c) => (r) => (r.metric === "head_type" && !isNull(r["type_" + c]) ? r["type_" + c] : fmt(r[c]));
      const lead = ["metric", "layer", "head", "before", "after", "delta", "threshold", "step"]
        .filter((c) => all.includes(c)).map((c) => (c === "step" ? stepCol(pointOf)
          : c === "before" || c === "after" ? { key: c, render: typed(c), title: typed(c) } : { key: c }));
      // the drift cross's click as a link a keyboard reaches (trial 28): Compare on the audit
      // and the one it was compared with
      const compare = { key: "compare", noCsv: true, render: (r) => {
        const m = pointOf(r.audit_id), href = m ? compareOf(m) : "";
        return href ? h("a", { href: href }, "compare") : "";
      } };
      return lead.concat([idCol("audit_id", "audit"), idCol("prev_audit_id", "previous audit"),
        runCol("run_id", "run")].filter((c) => all.includes(c.key)), [compare]);
    }
    function changeColumns(pointOf) {
      return [{ key: "layer" }, { key: "head" }, { key: "before", label: "type before" },
        { key: "after", label: "type after" }, stepCol(pointOf), idCol("audit_id", "audit"),
        idCol("prev_audit_id", "previous audit"), runCol("run_id", "run"),
        runCol("prev_run_id", "previous run")];
    }
    function redraw() {
      // the window's title names the series shown (a tab, a bookmark, a screen reader)
      document.title = `${state.series} · Series · BFD dashboard`;
      const members = metrics.filter((m) => m.series === state.series);
      // the drift and head-type change tables, newest audit first (the series' order: step,
      // start time, audit id, reversed), so that the rows a long table leaves out (past 500)
      // are the oldest; within an audit, their embedded order (drift: as bfd query drift,
      // the largest |delta| first, bfd/report/data.py series_data)
      const at = new Map(members.map((m, i) => [m.audit_id, i]));
      const pointOf = (id) => (at.has(id) ? members[at.get(id)] : null);
      const newestFirst = (rows) => rows.map((r, i) => [r, i]).sort(([a, i], [b, j]) =>
        (at.get(b.audit_id) ?? -1) - (at.get(a.audit_id) ?? -1) || i - j).map(([r]) => r);
      const flagged = newestFirst(drift.filter((d) => d.series === state.series));
      const seriesChanges = newestFirst(changes.filter((c) => c.series === state.series))
        .map((c) => Object.assign({}, c, { step: pointOf(c.audit_id)?.step ?? null }));
      const marks = driftMarks.filter((d) => d.series === state.series);
      // a gap (no figure) between consecutive points whose runs are of two models, before
      // an audit whose drift was not compared with its previous audit's (audit_history), and
      // either side of an audit of a damaged run
      const lines = [];
      members.forEach((m, i) => {
        if (breaksBefore(members, i)) lines.push({ gap: true, x: m });
        lines.push(m);
      });
      // steps that are all time steps (isTimeStep: an audit's default step, its start time)
      // are drawn as dates, as every page shows them; other steps as plain integers
      const stepped = members.filter((m) => typeof m.step === "number");
      const unixSteps = state.x === "step" && stepped.length > 0 && stepped.every(isTimeStep);
      // against audit time: when the audit started (a run never audited: its creation), not
      // when its run was computed: an audit that reused an earlier week's run (a rollback)
      // is drawn, and its flags marked, at its own time, not on that week's point
      const xOf = (m) => {
        const v = state.x === "time" ? (m.started_at || m.created_at) : m[state.x];
        return unixSteps && typeof v === "number" ? new Date(v * 1000).toISOString() : v;
      };
      // x tick labels 10 px lower than plotly puts them: the first one, centred on a tick at
      // the plot's left edge (a date reaches 30 px left of it), ran into the lowest y label
      // titled as the "against" select says (trial 32: the plots' axes had no title)
      const xaxis = Object.assign({ ticklabelstandoff: 10, title: { text: state.x === "step"
        ? (unixSteps ? "audit step (its time)" : "audit step") : "audit time", font: { size: 11 } } },
        state.x !== "step" ? {} : unixSteps ? { type: "date" } : { tickformat: "d" });
      // one x value (a single audit): a day either side of a date, a step either side of a
      // step (plotly would span a millisecond, ticks like 07:16:28.999)
      const xs = [...new Set(members.map(xOf).filter((v) => v !== null && v !== undefined))];
      if (xs.length === 1) {
        const v = xs[0];
        if (typeof v === "number" && !unixSteps) {
          Object.assign(xaxis, { range: [v - 1, v + 1], dtick: 1 });
        } else if (!Number.isNaN(Date.parse(v))) {
          const t = Date.parse(v), day = 864e5;
          Object.assign(xaxis, { type: "date", range: [new Date(t - day).toISOString(), new Date(t + day).toISOString()] });
        }
      }
      const gone = leftOut.filter((r) => r.series === state.series);
      leftOutLine.hidden = !gone.length;
      leftOutLine.replaceChildren(...(gone.length ? [`${gone.length} checkpoint${gone.length === 1 ? "" : "s"} ` +
        "left out: " + gone.map((r) => `${r.file} (${r.step === null || r.step === undefined ? "no step in its name"
          : "step " + r.step}): ${r.why || r.reason}`).join("; ") + ". Not audited (no run, no point): the line " +
        "joins the audits either side" + (state.x === "step" ? "; a dotted red line marks " +
          (gone.length === 1 ? "its step" : "their steps") + " on each plot" : "") +
        "; on the layers heatmap, a dotted red line between the audits either side" +
        " (bfd sql \"SELECT * FROM checkpoints_left_out\")."] : []));
      // a dotted red line at each left-out checkpoint's step (against step only)
      const goneShapes = state.x !== "step" ? [] : gone.filter((r) => typeof r.step === "number").map((r) => {
        const v = unixSteps ? new Date(r.step * 1000).toISOString() : r.step;
        return { type: "line", xref: "x", yref: "paper", x0: v, x1: v, y0: 0, y1: 1,
          line: { color: "#b00020", dash: "dot", width: 1.5 } };
      });
      layerMembers = members;
      layerGone = gone;
      drawLayers();
      // a share (0 to 1: f_*, frac_*) that moves by less than MIN_SHARE_SPAN over the series is
      // drawn on an axis that wide around its middle: a change of 2e-6 filled the plot's height
      // as a large swing would, 25 000 times below the drift threshold
      const MIN_SHARE_SPAN = 0.01;
      const shareAxis = (k, rows) => {
        if (!/^(mean_)?f_|^frac_/.test(k)) return {};
        const ys = rows.flatMap((m) => [m[k], m[k + "_lo"], m[k + "_hi"]]).filter((v) => typeof v === "number");
        if (!ys.length) return {};
        const lo = Math.min(...ys), hi = Math.max(...ys);
        if (hi - lo >= MIN_SHARE_SPAN) return {};
        const mid = (lo + hi) / 2;
        return { yaxis: { tickformat: "~g", automargin: true,
          range: [mid - MIN_SHARE_SPAN / 2, mid + MIN_SHARE_SPAN / 2] } };
      };
      // the Compare page of a flagged audit (B) and the audit it was compared with (A): by
      // series and steps where both have one of their own, else by run
      const compareOf = (m) => {
        const ref = members[refOf(members, members.indexOf(m))];
        if (!ref) return "";
        const q = typeof ref.step === "number" && typeof m.step === "number" && ref.step !== m.step
          ? `series=${encodeURIComponent(state.series)}&step_a=${ref.step}&step_b=${m.step}`
          : `a=${encodeURIComponent(ref.run_id)}&b=${encodeURIComponent(m.run_id)}`;
        return "compare.html?" + q;
      };
      const rows = lines.map((m) => (m.gap ? { gap: true, step: m.x.step, started_at: m.x.started_at,
        created_at: m.x.created_at } : m));
      for (const old of grid.children) sized.unobserve(old);
      // a plot with no value in the series and no drift flagged on it: listed in one line
      const hasValue = (k) => rows.some((m) => typeof m[k] === "number");
      const marked = (k) => marks.some((d) => d.plot === k);
      const blank = keys.filter((k) => !hasValue(k) && !marked(k));
      const unkept = blank.filter((k) => notKept.includes(k) && rows.some((m) => m.figures === "audit"));
      const novalue = blank.filter((k) => !unkept.includes(k));
      emptyLine.replaceChildren(...(blank.length ? [(blank.length === 1 ? "1 plot" : blank.length + " plots") +
        " with no value in this series, not drawn: " +
        [unkept.length ? "not kept by the audits (see each run's page): " + unkept.join(", ") : null,
          novalue.length ? "no value: " + novalue.join(", ") : null].filter(Boolean).join("; ") + "."] : []));
      const drawn = keys.filter((k) => !blank.includes(k));
      // the flagged rows no drawn plot marks, per audit: of an audit with a mark, too (trial
      // 32: one f_cc cross stood for 32 flags, the 31 of per-layer metrics said nowhere)
      const covered = new Map();
      for (const d of marks.filter((d) => drawn.includes(d.plot))) {
        if (!covered.has(d.audit_id)) covered.set(d.audit_id, new Set());
        for (const metric of d.metrics) covered.get(d.audit_id).add(metric);
      }
      const unmarked = [...groupBy(flagged.filter((d) => !(covered.get(d.audit_id) || new Set()).has(d.metric)),
        (d) => d.audit_id)];
      const UNMARKED_SHOWN = 10;
      unmarkedLine.replaceChildren(...unmarked.slice(0, UNMARKED_SHOWN).map(([id, rows]) => {
        const m = pointOf(id), step = m ? stepText(m) : rows[0].step;
        const metricNames = [...new Set(rows.map((d) => d.metric))].sort();
        return h("p", { class: "note warn" }, `audit ${id}` + (step === null || step === undefined ? ""
          : ` at step ${step}`) + `: ${rows.length} flagged ${rows.length === 1 ? "value" : "values"} on ` +
          `metrics not plotted here (${metricNames.join(", ")}): see the flagged drift table.`);
      }).concat(unmarked.length > UNMARKED_SHOWN ? [h("p", { class: "note warn" },
        `and ${unmarked.length - UNMARKED_SHOWN} more audits with flags no plot marks: see the flagged drift table.`)] : []));
      // every cell first, at its height, then the plots: each is drawn at its cell's width
      const divs = drawn.map((k) => {
        const div = plotDiv("metric-" + k, `${k} against audit ${state.x} for the chosen series`, "small");
        div.style.height = "260px";
        return div;
      });
      grid.replaceChildren(...divs);
      drawn.forEach((k, i) => {
        const div = divs[i];
        const x = rows.map(xOf);
        const err = rows.some((m) => typeof m[k + "_lo"] === "number") ? { type: "data", symmetric: false,
          array: rows.map((m) => (m[k + "_hi"] ?? m[k]) - m[k]), arrayminus: rows.map((m) => m[k] - (m[k + "_lo"] ?? m[k])) } : undefined;
        // a cross per audit whose flagged drift concerns this plot's figure (drift_marks);
        // one on an audit with no value here is said in the plot instead
        const mine = marks.filter((d) => d.plot === k);
        const markOf = (m) => (m.audit_id === null || m.audit_id === undefined ? undefined
          : mine.find((d) => d.audit_id === m.audit_id));
        const hit = rows.filter((m) => typeof m[k] === "number" && markOf(m));
        // a dashed line from the audit a point was compared with to the point, where that is
        // an earlier point than the one before it (the audits between not comparable with it)
        const links = members.map((m, i) => [members[refOf(members, i)], m, i])
          .filter(([, m, i]) => comparedText(members, i) && !reauditsOnly(members, i) && typeof m[k] === "number" &&
            typeof members[refOf(members, i)][k] === "number").map(([a, b]) => [a, b]);
        const unplaced = mine.filter((d) => !rows.some((m) => m.audit_id === d.audit_id && typeof m[k] === "number"));
        const none = !hasValue(k);
        const missing = [none ? (notKept.includes(k) && rows.some((m) => m.figures === "audit")
          ? "not kept by the audits: see each run's page" : "no value") : null]
          .concat(unplaced.map((d) => {
            const at = rows.find((m) => m.audit_id === d.audit_id);
            return "drift of " + pt(d.metrics.join(", ")) + " flagged at audit " + pt(d.audit_id) +
              (at && at.step !== null && at.step !== undefined ? " (step " + stepText(at) + ")" : "") +
              (none ? "" : ": no value kept");
          })).filter(Boolean).join("<br>") || null;
        draw(div, [{ x: x, y: rows.map((m) => (m.gap ? null : m[k])), mode: "lines+markers", name: k, error_y: err,
          customdata: rows.map((m) => m.page || ""),
          text: rows.map((m) => (m.gap ? "" : placeText(m) + pt(m.run_id + (m.audit_id ? " · audit " + m.audit_id : "") +
            (damaged(m) ? " · run damaged (a table file fails its check; bfd verify " + m.run_id +
              "): left out of SQL, the figures its audit kept, not compared"
              : notCompared(m) ? " · drift not compared: " + m.drift_note
                : otherInputs(m) ? " · figures of other inputs than its previous audit's (comparable no)"
                  : comparedText(members, members.indexOf(m)))))),
          marker: { symbol: rows.map((m) => (damaged(m) || notCompared(m) ? "circle-open" : "circle")),
            color: rows.map((m) => (damaged(m) ? "#b00020" : notCompared(m) ? "#777" : "#0072B2")),
            size: rows.map((m) => (damaged(m) || notCompared(m) ? 10 : 6)) },
          line: { color: "#0072B2" }, hovertemplate: `%{text}<br>${k} %{y:.4~g}<extra></extra>` },
        { x: hit.map(xOf), y: hit.map((m) => m[k]), mode: "markers", name: "drift flagged",
          marker: { symbol: "x", size: 12, color: "#D55E00" }, customdata: hit.map(compareOf),
          text: hit.map((m) => markText(markOf(m), m) + pt(comparedText(members, members.indexOf(m)))),
          hovertemplate: "%{text}<extra></extra>" }].concat(links.length ? [
        { x: links.flatMap(([a, b]) => [xOf(a), xOf(b), null]),
          y: links.flatMap(([a, b]) => [a[k], b[k], null]), mode: "lines", name: "compared with",
          line: { color: "#0072B2", dash: "dash", width: 1.5 }, hoverinfo: "skip" }] : []),
        Object.assign({ title: { text: k, font: { size: 13 }, x: 0.02, xanchor: "left" }, showlegend: false, height: 260, xaxis: xaxis,
          shapes: goneShapes,
          margin: { l: 55, r: 10, t: 35, b: 55 }, annotations: missing ? [{ text: missing, showarrow: false,
            xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] : [] }, shareAxis(k, rows)));
        // a point opens its run's page; a drift cross the Compare page of the audit and the
        // audit it was compared with
        div.on("plotly_click", (ev) => {
          const to = ev.points[0].customdata;
          if (to) window.location.href = to.startsWith("compare.html?") ? to : "runs/" + encodeURIComponent(to);
        });
        sized.observe(div);
      });
      tables.replaceChildren(
        Object.assign(section("Drift flags", h("p", { class: "note" },
          "Newest audit first; within an audit, the largest |delta| first (as bfd query drift)."),
          D.has_audits ? dataTable("drift-table", "flagged drift", flagged,
            driftColumns(flagged, pointOf, compareOf), { csvKeys: Object.keys(D.drift || {}),
              filename: fileStem(state.series) + "-drift" })
            : empty("No audits recorded yet.")), { id: "drift-flags", tabIndex: -1 }),
        section("Head-type changes against the audit compared with", h("p", { class: "note", id: "changes-note" },
          "Newest audit first." + redoneNote(members)),
          dataTable("changes-table", "head-type changes", seriesChanges,
            changeColumns(pointOf), { csvKeys: Object.keys(D.head_type_changes || {}).concat(["step"]),
              filename: fileStem(state.series) + "-head-type-changes" })),
        section("Audits of the series", dataTable("series-runs", "audits of the series", members,
          auditColumns(members), { csvKeys: Object.keys(D.metrics), filename: fileStem(state.series) + "-audits",
            rowClass: (m) => (damaged(m) ? "damaged-run" : notCompared(m) ? "not-compared" : null) })));
    }
    redraw();
  }

  // --- compare ------------------------------------------------------------------------------
  // a number in a hover: four significant digits, as a plain decimal where JS writes one
  function num(v) {
    return typeof v === "number" && Number.isFinite(v) ? String(Number(v.toPrecision(4))) : "–";
  }
  // a value and its 95 % interval where both ends are numbers: "0.4 [0.38, 0.42]"
  function withInterval(v, lo, hi) {
    return num(v) + (typeof lo === "number" && typeof hi === "number" ? ` [${num(lo)}, ${num(hi)}]` : "");
  }
  // The head shares the Compare page compares per head (bfd/report/data.py HEAD_SHARES).
  const HEAD_SHARES = ["f_pp", "f_pc", "f_cp", "f_cc"];
  // compare_runs' rows of level head for one share (bfd/queries/compare_runs.sql), from the
  // two runs' head rows (runs/<run>.heads.js): every head of either run (a full outer join
  // on layer and head), value_a and value_b the chance-corrected twin (`_adj`) when both
  // runs hold corrected shares (`basis` "adjusted"), else the raw share (`basis` "raw");
  // delta = b - a, its interval delta ± sqrt(hw_a² + hw_b²) (hw: a run's (hi - lo) / 2; none
  // where either lacks one, nor for raw shares of other N: `intervals` false), significant
  // when it excludes 0 (null without one). Layer, then head order.
  function headDeltas(A, B, share, basis, intervals = true) {
    const m = basis === "raw" ? share : share + "_adj";
    const key = (r) => r.layer + ":" + r.head;
    const byA = new Map(A.map((r) => [key(r), r])), byB = new Map(B.map((r) => [key(r), r]));
    const value = (r) => (r && typeof r[m] === "number" ? r[m] : null);
    const hw = (r) => (r && typeof r[m + "_lo"] === "number" && typeof r[m + "_hi"] === "number"
      ? (r[m + "_hi"] - r[m + "_lo"]) / 2 : null);
    const keys = [...new Map([...A, ...B].map((r) => [key(r), [r.layer, r.head]])).values()]
      .sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    return keys.map(([layer, head]) => {
      const a = byA.get(layer + ":" + head), b = byB.get(layer + ":" + head);
      const va = value(a), vb = value(b), ha = hw(a), hb = hw(b);
      const d = va === null || vb === null ? null : vb - va;
      const w = !intervals || ha === null || hb === null ? null : Math.sqrt(ha * ha + hb * hb);
      return { layer: layer, head: head, metric: m, head_type_a: a ? a.head_type : null,
        head_type_b: b ? b.head_type : null, value_a: va, value_b: vb,
        value_a_lo: a ? a[m + "_lo"] ?? null : null, value_a_hi: a ? a[m + "_hi"] ?? null : null,
        value_b_lo: b ? b[m + "_lo"] ?? null : null, value_b_hi: b ? b[m + "_hi"] ?? null : null,
        delta: d, delta_lo: d === null || w === null ? null : d - w,
        delta_hi: d === null || w === null ? null : d + w,
        significant: d === null || w === null || Number.isNaN(w) ? null : (d - w > 0 || d + w < 0) };
    });
  }
  // head_type_changes' rows (bfd/queries/head_type_changes.sql): the heads both runs hold
  // whose stored head_type differs (IS DISTINCT FROM), with both runs' raw shares.
  function headTypeChanges(A, B) {
    const byB = new Map(B.map((r) => [r.layer + ":" + r.head, r]));
    const out = [];
    for (const a of A) {
      const b = byB.get(a.layer + ":" + a.head);
      if (!b || (a.head_type ?? null) === (b.head_type ?? null)) continue;
      const row = { layer: a.layer, head: a.head, head_type_a: a.head_type ?? null, head_type_b: b.head_type ?? null };
      for (const s of HEAD_SHARES) { row[s + "_a"] = a[s] ?? null; row[s + "_b"] = b[s] ?? null; }
      out.push(row);
    }
    return out.sort((x, y) => x.layer - y.layer || x.head - y.head);
  }

  function comparePage() {
    const byRun = layersByRun();
    const runs = RUNS.filter((r) => byRun.has(r.run_id));
    if (runs.length < 1) { app.append(empty("No complete runs to compare yet.")); return; }
    const all = rowsOf(D.layers);
    // the per-layer figures: not the layer's coordinates, the intervals' ends (drawn as error
    // bars), nor what is the same in every layer of a run (its images, the model's heads, the
    // interval target: NOT_FIGURES)
    const NOT_FIGURES = ["layer", "depth", "rel_depth", "n_images", "n_heads", "ci_target"];
    const keys = numericKeys(all, NOT_FIGURES).filter((k) => !/_(lo|hi)$/.test(k));
    const when = (r) => Date.parse(r.started_at || r.created_at) || 0;
    // The choices: one per point of the Series page (bfd/report/data.py compare_choices: each
    // complete audit of a run, in its series at its step; a run never audited in its
    // model · weights series), so every audit of a run audited several times is offered.
    // A run's own choice, whose value is its run id (compare.html?a=RUN_ID), is its latest
    // audit's (the run's series and step on every other page), else its latest point; its
    // other audits' values are "audit:" and the audit id. Every choice of a run shows the
    // run's figures: the audit names where it was audited.
    const choices = rowsOf(D.choices).filter((c) => byRun.has(c.run_id)).map((c) => Object.assign({}, c));
    const ofRun = groupBy(choices, (c) => c.run_id);
    for (const r of runs) {
      if (!ofRun.has(r.run_id)) {  // no complete audit in any series: the run itself
        const c = { run_id: r.run_id, series: r.series, step: null, started_at: null, audit_id: null };
        choices.push(c);
        ofRun.set(r.run_id, [c]);
      }
      const mine = ofRun.get(r.run_id);
      const own = mine.find((c) => c.audit_id !== null && c.audit_id === r.audit_id) ||
        mine.reduce((x, c) => ((Date.parse(c.started_at) || 0) >= (Date.parse(x.started_at) || 0) ? c : x), mine[0]);
      own.key = r.run_id;
    }
    for (const c of choices) if (!c.key) c.key = "audit:" + c.audit_id;
    const bySeries = (x, y) => (x.series < y.series ? -1 : x.series > y.series ? 1 : 0) ||
      (x.step ?? 0) - (y.step ?? 0) || (Date.parse(x.started_at) || 0) - (Date.parse(y.started_at) || 0);
    choices.sort(bySeries);
    const CHOICE = new Map(choices.map((c) => [c.key, c]));
    // a choice in its select: series, step (as the Series page), the weights' file name and
    // the run id; in notes and hovers: series · step (run id)
    const label = (c) => [c.series, stepText(c) === null ? null : "step " + stepText(c),
      fileName(RUN_BY_ID.get(c.run_id).weights), c.run_id].filter((p) => p !== null).join(" · ");
    const shortName = (c) => `${c.series} · ${stepText(c) === null ? c.run_id : "step " + stepText(c)} (${c.run_id})`;
    // opens on the series audited last (the run whose latest audit started last, else the
    // run created last), its latest run in series order (step, then start time: the
    // overview's latest member) as B against the run before it in that order as A
    const last = runs.reduce((x, r) => (when(r) >= when(x) ? r : x), runs[0]);
    const mates = runs.filter((r) => r.series === last.series)
      .sort((x, y) => (x.step ?? 0) - (y.step ?? 0) || when(x) - when(y));
    const latest = mates[mates.length - 1];
    // a series of one run (a zoo of models audited once each): A is the newest other run
    // (by its latest audit's start, else its creation), first among those run_pairs has no
    // note for with B (one model, prefix option, images, img_size), then among those of
    // the same model, then any; one run alone in the store is compared with itself
    const others = runs.filter((r) => r.run_id !== latest.run_id)
      .sort((x, y) => when(y) - when(x) || (x.run_id < y.run_id ? 1 : -1));
    const rank = (r) => {
      const p = pairOf(r.run_id, latest.run_id);
      return !p ? 2 : p.same_model === true && p.note === null ? 0 : p.same_model === true ? 1 : 2;
    };
    const fallback = others.length ? others.reduce((x, r) => (rank(r) < rank(x) ? r : x), others[0]) : latest;
    const before = mates[mates.length - 2] || fallback;
    const state = { a: before.run_id, b: latest.run_id, metric: "frac_pos", share: "f_pp" };
    // The address chooses: compare.html?a=RUN_ID&b=RUN_ID (a run's own choice), or an audit
    // by its series and step: series_a=NAME&step_a=S (series=NAME for both sides; step=S is
    // step_b, with A the point before it in its series, of another run, unless A is named;
    // series=NAME alone: its latest point as B, the one before as A; a side's series without
    // its step: that series' latest point). A run id wins over a side's series and step.
    // What is not in the store is said above the plots, that side left as the default; a
    // step that is no audit of a series of the store falls back inside that series (B its
    // latest point, A the point before B), and a step whose checkpoint audit-checkpoints left
    // out (bfd/report/data.py left_out_rows) is said to be that file.
    const asked = new URLSearchParams(window.location.search);
    const given = (k) => { const v = asked.get(k); return v === null || v === "" ? null : v; };
    const unknown = [];
    const inSeries = (name) => choices.filter((c) => c.series === name);
    const leftOut = rowsOf(D.left_out || {});
    const fellBack = {};  // side -> the series whose step was no audit
    const pick = (side) => {
      const id = given(side);
      if (id !== null) {
        if (byRun.has(id)) return id;
        unknown.push(`run ${side.toUpperCase()} of the address (${side}=${id}) is not a complete run of this store`);
        return null;
      }
      const seriesKey = given("series_" + side) !== null ? "series_" + side : "series";
      const name = given(seriesKey);
      const stepKey = given("step_" + side) !== null || side === "a" ? "step_" + side : "step";
      const step = given(stepKey);
      if (name === null) {
        if (step !== null) unknown.push(`${stepKey}=${step} of the address names no series (series=NAME)`);
        return null;
      }
      const members = inSeries(name);
      if (!members.length) {
        unknown.push(`the series of the address (${seriesKey}=${name}) is not a series of this store`);
        return null;
      }
      // no step: B the series' latest point, and A too where the address gives A a series
      // of its own (series_a, or series while B has series_b); else A is left to B's
      const own = side === "b" || seriesKey === "series_a" || given("series_b") !== null;
      if (step === null) return own ? members[members.length - 1].key : null;
      const at = members.filter((c) => String(c.step) === step);
      if (!at.length) {
        const lo = leftOut.find((r) => r.series === name && r.step !== null && String(r.step) === step);
        unknown.push(lo ? `step ${step} of the address (${stepKey}=${step}) is ${lo.file}, left out by audit-checkpoints: ` +
          `${lo.why}; no audit of series ${name} there`
          : `the step of the address (${stepKey}=${step}) is no audit of series ${name}`);
        fellBack[side] = name;
        return null;
      }
      return at[at.length - 1].key;  // the latest audit at that step
    };
    const askA = pick("a"), askB = pick("b");
    if (askA !== null) state.a = askA;
    if (askB !== null) state.b = askB;
    // B's step no audit of its series: B that series' latest point (not another series')
    if (askB === null && fellBack.b) state.b = inSeries(fellBack.b).at(-1).key;
    const keyB = askB !== null ? askB : fellBack.b ? state.b : null;
    const named = (side) => given(side) !== null || given("step_" + side) !== null || given("series_" + side) !== null;
    if (keyB !== null && askA === null && (!named("a") || fellBack.a === CHOICE.get(keyB).series) && given("b") === null) {
      // B named by series and step: A the point before it in its series (a run id: below),
      // else, B its first point of a run, the point after it (said so)
      const cb = CHOICE.get(keyB), members = inSeries(cb.series);
      const i = members.findIndex((c) => c.key === keyB);
      const prior = members.slice(0, i).filter((c) => c.run_id !== cb.run_id);
      const after = members.slice(i + 1).filter((c) => c.run_id !== cb.run_id);
      if (prior.length) state.a = prior[prior.length - 1].key;
      else if (after.length) {
        state.a = after[0].key;
        unknown.push(`series ${cb.series} has no audit of another run before step ${stepText(cb)}`);
      }
    } else if (askA === null && fellBack.a) {
      // A's step no audit of its series: that series' latest point of another run than B's
      const members = inSeries(fellBack.a).filter((c) => c.run_id !== CHOICE.get(state.b).run_id);
      if (members.length) state.a = members[members.length - 1].key;
    }
    const runOf = (key) => CHOICE.get(key).run_id;
    // one run named: the other side the default pair's run that is not it
    if (askA !== null && askB === null && runOf(state.b) === runOf(askA)) state.b = before.run_id;
    if (keyB !== null && askA === null && runOf(state.a) === runOf(keyB)) {
      state.a = latest.run_id !== runOf(keyB) ? latest.run_id : before.run_id;
    }
    if (unknown.length) {
      app.append(h("p", { class: "note warn", id: "compare-url-note" }, [...new Set(unknown)].join("; ") +
        `: showing ${runOf(state.a)} as A and ${runOf(state.b)} as B instead.`));
    }
    // choosing puts the choices in the address (series and step where that names the
    // choice, else the run id), so that it links to what is shown (a browser that refuses
    // it, as some do for file:// pages, keeps the old address)
    function remember() {
      const url = new URL(window.location.href);
      for (const k of ["a", "b", "series", "series_a", "series_b", "step", "step_a", "step_b"]) url.searchParams.delete(k);
      const byStep = (c) => {  // the choice its series and step give back
        if (c.audit_id === null || c.step === null) return false;
        const at = inSeries(c.series).filter((x) => x.step === c.step);
        return at[at.length - 1] === c;
      };
      const ca = CHOICE.get(state.a), cb = CHOICE.get(state.b);
      const both = byStep(ca) && byStep(cb) && ca.series === cb.series;
      if (both) url.searchParams.set("series", ca.series);
      for (const [side, c] of [["a", ca], ["b", cb]]) {
        if (!byStep(c)) url.searchParams.set(side, c.run_id);
        else {
          if (!both) url.searchParams.set("series_" + side, c.series);
          url.searchParams.set("step_" + side, String(c.step));
        }
      }
      try { window.history.replaceState(null, "", url.href); } catch (e) { /* address kept */ }
    }
    const opts = choices.map((c) => [c.key, label(c)]);
    const choose = (side) => (v) => { state[side] = v; remember(); redraw(); };
    app.append(h("div", { class: "controls" },
      select("run-a", "run A", opts, state.a, choose("a")),
      select("run-b", "run B", opts, state.b, choose("b")),
      select("metric-select", "metric", keys.map((k) => [k, k]), state.metric, (v) => { state.metric = v; redraw(); })));
    // the runs' names in full above the plots (the legend says A and B only: a long
    // series name cut at the figure's edge took the run id with it)
    const names = h("div", { id: "compare-names" });
    const prof = plotDiv("compare-plot", "The chosen metric per layer for runs A and B");
    const delta = plotDiv("delta-plot", "Per-layer difference B minus A of the chosen metric, with intervals where stored");
    const notes = h("div", { id: "compare-notes" });
    const tableBox = h("div", {});
    const headBox = h("div", { id: "compare-heads" });
    app.append(notes, names, section("Profiles", h("div", { class: "grid" }, prof, delta)), tableBox, headBox);
    // the images a run decomposed (decoded ones), the N its shares depend on
    // (NULL when the run does not say: two such runs are on one basis, as compare_runs)
    const decoded = (id) => {
      const r = RUN_BY_ID.get(id);
      return typeof r.n_decoded === "number" ? r.n_decoded : null;
    };
    const COLOUR = { A: "#0072B2", B: "#D55E00" };
    // the same as text on white, at least 4.5:1 (#D55E00 is 3.9:1: trial 28)
    const INK = { A: "#0072B2", B: "#B54F00" };
    // a Compare CSV's name (<run A>-vs-<run B>-<what>.csv, safe for a file) and the columns
    // that identify its pair, as compare_runs' (run_a, run_b, basis, n_images_a, n_images_b)
    const pairStem = (a, b) => fileStem(a) + "-vs-" + fileStem(b);
    const pairColumns = (a, b, basis, nA, nB) => ({ run_a: a, run_b: b, basis: basis, n_images_a: nA, n_images_b: nB });
    function redraw() {
      const ca = CHOICE.get(state.a), cb = CHOICE.get(state.b);
      const idA = ca.run_id, idB = cb.run_id;
      const A = byRun.get(idA), B = byRun.get(idB);
      // basis as compare_runs: the chance-corrected twin (*_adj) whenever both runs hold
      // corrected shares, whatever their N: a raw share's expectation holds a chance level
      // (frac_pos_chance ≈ frac_int/(N − 1)) that moves with N and with the image/interaction
      // split, so raw deltas count its change as a change of the model. Raw when a run holds
      // none (decomposed before they were stored) or the metric has no twin; then, when the
      // runs' N differ, without intervals, its deltas including the chance level's change
      const nA = decoded(idA), nB = decoded(idB), sameN = nA === nB;
      const corrected = [A, B].every((rows) => rows.some((l) => typeof l.frac_pos_adj === "number"));
      const twin = /_adj$/.test(state.metric) ? state.metric : state.metric + "_adj";
      const hasTwin = keys.includes(twin);
      const basis = corrected && hasTwin ? "adjusted" : (sameN ? "raw" : "none");
      const k = basis === "adjusted" ? twin : state.metric;
      const noteLines = [];
      const withoutAdj = [["A", A], ["B", B]].filter(([, rows]) => !rows.some((l) => typeof l.frac_pos_adj === "number"))
        .map(([side]) => `run ${side}`).join(" and ");
      if (basis === "adjusted") {
        noteLines.push(h("p", { class: "note", id: "compare-basis" },
          (sameN ? `Runs A and B decoded N = ${nA} images each, yet a raw share's expectation `
            : `Runs A and B decoded different numbers of images (N = ${nA} and ${nB}): a raw share's expectation `)
          + "holds a chance level (frac_pos_chance ≈ frac_int/(N − 1)) that moves with N and with the model's "
          + `image/interaction split, so they are compared on the adjusted basis, ${k} (chance-corrected), as compare_runs does.`));
      } else if (basis === "none") {
        noteLines.push(h("p", { class: "note warn", id: "compare-basis" },
          `Runs A and B decoded different numbers of images (N = ${nA} and ${nB}) and `
          + (hasTwin && withoutAdj ? `${withoutAdj} holds no chance-corrected shares (decomposed before they were stored)`
            : `${k} has no chance-corrected twin`)
          + ": its deltas include the chance level's change with N, and are shown without intervals or significance."));
      } else if (hasTwin && withoutAdj) {
        noteLines.push(h("p", { class: "note warn", id: "compare-basis" },
          `${withoutAdj[0].toUpperCase() + withoutAdj.slice(1)} holds no chance-corrected shares (decomposed before they were stored): `
          + `compared on the raw ${k}, as compare_runs does; its deltas include any change of the chance level `
          + "(frac_pos_chance ≈ frac_int/(N − 1)) with the model's image/interaction split."));
      }
      // the pair's run_pairs note (two models, other prefix options, images or img_size),
      // when it has one
      const pn = pairOf(idA, idB)?.note;
      if (pn) noteLines.push(h("p", { class: "note warn", id: "compare-pair-note" }, pn));
      // and its method_note: the runs were decomposed by other methods (the heads below
      // then have no intervals, as compare_runs' head rows)
      const mn = pairOf(idA, idB)?.method_note;
      if (mn) noteLines.push(h("p", { class: "note warn", id: "compare-method-note" }, mn));
      // one run compared with itself (two of its audits too): no delta to show (not a
      // delta of 0 ± an interval)
      const same = idA === idB;
      if (same) {
        noteLines.push(h("p", { class: "note warn", id: "compare-same" }, `Runs A and B are one run, ` +
          `${shortName(ca)}: nothing to compare; choose another run as A or B.`));
      }
      notes.replaceChildren(...noteLines);
      const nameOf = { A: `${label(ca)} · N ${fmt(nA)}`, B: `${label(cb)} · N ${fmt(nB)}` };
      names.replaceChildren(...["A", "B"].map((side) => h("p", { class: "run-name", "data-side": side },
        h("b", { style: "color:" + INK[side] }, side), " ", nameOf[side])));
      // the models' depth (layer_summary.depth: runs.depth), not the number of layers each
      // run stored (a run may hold a subset of its model's layers: --layers)
      const depthOf = (rows) => rows.length ? rows[0].depth : null;
      const sameDepth = depthOf(A) !== null && depthOf(A) === depthOf(B);
      const xk = sameDepth ? "layer" : "rel_depth";
      const band = (rows) => rows.some((l) => typeof l[k + "_lo"] === "number");
      const err = (rows) => band(rows) ? { type: "data", symmetric: false, array: rows.map((l) => l[k + "_hi"] - l[k]),
        arrayminus: rows.map((l) => l[k] - l[k + "_lo"]) } : undefined;
      const where = (l) => `layer ${l.layer}` + (sameDepth ? "" : ` (relative depth ${num(l.rel_depth)})`);
      // a point's hover: its run (side, series · step, run id), N, layer, value [lo, hi]
      const tr = (rows, side, c, n) => ({ x: rows.map((l) => l[xk]), y: rows.map((l) => l[k]), error_y: err(rows),
        name: side, mode: "lines+markers", line: { color: COLOUR[side] },
        customdata: rows.map((l) => (l.gap ? "" : `${side}: ${pt(shortName(c))}<br>N ${fmt(n)} · ${where(l)}<br>` +
          `${k} ${withInterval(l[k], l[k + "_lo"], l[k + "_hi"])}`)),
        hovertemplate: "%{customdata}<extra></extra>" });
      draw(prof, same ? [tr(withGaps(A), "A", ca, nA)]
        : [tr(withGaps(A), "A", ca, nA), tr(withGaps(B), "B", cb, nB)],
        { xaxis: { title: { text: sameDepth ? "layer" : "relative depth" }, dtick: sameDepth ? 1 : undefined },
          yaxis: { title: { text: k }, tickformat: "~g" }, height: 400 });
      if (same) {
        draw(delta, [], { height: 400, xaxis: { visible: false }, yaxis: { visible: false },
          annotations: [{ text: "A = B: one run compared with itself, no delta", showarrow: false,
            xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] });
        tableBox.replaceChildren();
        headBox.replaceChildren();
        headPair = null;
        headTicket++;  // a pair still loading is drawn no more
        return;
      }
      // B at A's layers: the same layer when depths agree (none where B did not store it),
      // else linear in relative depth between B's stored layers around it: none outside
      // B's first and last stored layer (no extrapolation). B is in layer order.
      const at = (x) => {
        if (sameDepth) return B.find((l) => l.layer === x.layer) || {};
        const i = B.findIndex((l) => l.rel_depth >= x.rel_depth);
        if (i < 0) return {};  // past B's last stored layer
        if (B[i].rel_depth === x.rel_depth) return { [k]: B[i][k] };
        if (i === 0) return {};  // before B's first stored layer
        const lo = B[i - 1], hi = B[i], t = (x.rel_depth - lo.rel_depth) / (hi.rel_depth - lo.rel_depth);
        return { [k]: lo[k] === null || hi[k] === null ? null : lo[k] + t * (hi[k] - lo[k]) };
      };
      // each run's interval half-width (hi - lo) / 2; the delta's interval is
      // delta ± sqrt(hw_A² + hw_B²), significant when it excludes 0 (as compare_runs)
      const hw = (l) => (typeof l[k + "_lo"] === "number" && typeof l[k + "_hi"] === "number"
        ? (l[k + "_hi"] - l[k + "_lo"]) / 2 : null);
      const rows = A.map((l) => {
        const b = at(l);
        const d = l[k] === null || b[k] === null || b[k] === undefined ? null : b[k] - l[k];
        const hwA = hw(l), hwB = sameDepth ? hw(b) : null;
        const w = basis !== "none" && d !== null && hwA !== null && hwB !== null ? Math.sqrt(hwA * hwA + hwB * hwB) : null;
        return { layer: l.layer, rel_depth: l.rel_depth, a: l[k], b: b[k] ?? null, delta: d,
          delta_lo: w === null ? null : d - w, delta_hi: w === null ? null : d + w,
          significant: w === null ? null : (d - w > 0 || d + w < 0) };
      });
      const yesNo = (r) => (r.significant === null ? "–" : r.significant ? "yes" : "no");
      const withBand = rows.some((r) => r.delta_lo !== null);
      // a bar's hover: the layer, the delta [lo, hi] and its verdict, each run's value and N
      const barText = (r) => `layer ${r.layer}<br>Δ ${k} (B − A) ${withInterval(r.delta, r.delta_lo, r.delta_hi)}` +
        (r.significant === null ? "" : `<br>significant: ${yesNo(r)}`) +
        `<br>A: ${pt(shortName(ca))}, N ${fmt(nA)}: ${num(r.a)}<br>B: ${pt(shortName(cb))}, N ${fmt(nB)}: ${num(r.b)}`;
      draw(delta, [{ type: "bar", x: rows.map((r) => r.layer), y: rows.map((r) => r.delta), name: "B − A", width: 0.8,
        marker: { color: rows.map((r) => (r.delta >= 0 ? COLOUR.B : COLOUR.A)) },
        error_y: withBand ? { type: "data", symmetric: false, array: rows.map((r) => r.delta_hi - r.delta),
          arrayminus: rows.map((r) => r.delta - r.delta_lo) } : undefined,
        customdata: rows.map(barText), hovertemplate: "%{customdata}<extra></extra>" }],
      { xaxis: { title: { text: "layer of A" }, dtick: 1 }, yaxis: { title: { text: `Δ ${k} (B − A)` }, tickformat: "~g" }, height: 400,
        title: { text: basis === "none" ? `N differ (${nA}, ${nB}): no intervals, deltas include the chance level's change`
          : withBand ? "intervals: Δ ± √(hw_A² + hw_B²)" : (sameDepth ? "no intervals stored"
          : "depths differ: B interpolated on relative depth"), font: { size: 12 } } });
      const cols = ["layer", "rel_depth", "a", "b", "delta", "delta_lo", "delta_hi"].map((c) => ({ key: c }))
        .concat([{ key: "significant", render: yesNo }]);
      // the CSV says which pair it is of (compare_runs' identifying columns): a file that
      // leaves the browser keeps its runs, basis and N
      const ident = pairColumns(idA, idB, basis === "none" ? "raw" : basis, nA, nB);
      tableBox.replaceChildren(section("Per-layer deltas", dataTable("delta-table",
        `${k}: B − A per layer (basis ${basis === "none" ? "raw, N differ" : basis})`,
        rows.map((r) => Object.assign({}, ident, { metric: k }, r)), cols,
        { filename: pairStem(idA, idB) + "-" + k, csvKeys: Object.keys(ident).concat(["metric"], cols.map((c) => c.key)) })));
      drawHeads({ a: idA, b: idB, ca: ca, cb: cb, nA: nA, nB: nB, basis: corrected ? "adjusted" : "raw" });
    }
    // --- heads: each run's head rows from runs/<run>.heads.js (bfd/report/dashboard.py
    // heads_name), loaded for the runs chosen only: the page embeds no run's heads
    window.BFD_HEADS = window.BFD_HEADS || {};
    const loading = new Map();
    function headsOf(id) {
      if (!loading.has(id)) {
        loading.set(id, new Promise((resolve) => {
          const r = RUN_BY_ID.get(id);
          const done = () => resolve(window.BFD_HEADS[id] ? rowsOf(window.BFD_HEADS[id]) : null);
          document.head.append(h("script", { src: UP + "runs/" + encodeURIComponent(r.page.replace(/\.html$/, ".heads.js")),
            onload: done, onerror: () => resolve(null) }));
        }));
      }
      return loading.get(id);
    }
    let headTicket = 0, headPair = null;
    function drawHeads(ctx) {
      // the same two runs on the same basis (another layer metric chosen): as drawn
      const pair = [ctx.a, ctx.b, ctx.basis].join(" ");
      if (pair === headPair) return;
      headPair = pair;
      const ticket = ++headTicket;
      headBox.removeAttribute("data-ready");
      headBox.replaceChildren(section("Heads", h("p", { class: "note", id: "heads-status" },
        "reading the heads of runs A and B …")));
      Promise.all([headsOf(ctx.a), headsOf(ctx.b)]).then(([HA, HB]) => {
        if (ticket === headTicket) showHeads(ctx, HA, HB);  // else another pair chosen since
      });
    }
    // the Heads section of the pair, drawn; data-ready (the two run ids) once it is
    function showHeads(ctx, HA, HB) {
      const missing = [["A", ctx.a, HA], ["B", ctx.b, HB]].filter(([, , rows]) => rows === null);
      if (missing.length) {
        headBox.replaceChildren(section("Heads", h("p", { class: "note warn", id: "heads-status" }, missing.map(([side, id]) =>
          `the heads of run ${side} (${id}) could not be read (runs/${RUN_BY_ID.get(id).page.replace(/\.html$/, ".heads.js")}); ` +
          "bfd dashboard writes them again").join("; "))));
        headBox.setAttribute("data-ready", ctx.a + " " + ctx.b);
        return;
      }
      const m = ctx.basis === "raw" ? state.share : state.share + "_adj";
      const ident = pairColumns(ctx.a, ctx.b, ctx.basis, ctx.nA, ctx.nB);
      // runs of other methods: a head share's interval is of another estimator in each, so
      // no interval of the deltas (compare_runs' head rows)
      const otherMethods = pairOf(ctx.a, ctx.b)?.same_method === false;
      const rows = headDeltas(HA, HB, state.share, ctx.basis,
        (ctx.basis === "adjusted" || ctx.nA === ctx.nB) && !otherMethods).map((r) => Object.assign({}, ident, r));
      // head_type_changes' shares are the raw ones, whatever the N
      const changes = headTypeChanges(HA, HB).map((r) => Object.assign({}, ident, { basis: "raw" }, r));
      const nText = ctx.nA === ctx.nB ? `both runs decoded N = ${fmt(ctx.nA)}` : `N = ${fmt(ctx.nA)} and ${fmt(ctx.nB)}`;
      const lines = [h("p", { class: "note" + (ctx.basis === "raw" ? " warn" : ""), id: "heads-basis" }, ctx.basis === "raw"
        ? `Per head, the raw share ${m} (${nText}; a run holds no chance-corrected shares), as compare_runs' head rows: ` +
          "its deltas include any change of the chance level with N and the image/interaction split" +
          (ctx.nA === ctx.nB ? "." : ", so no intervals.")
        : `Per head, the chance-corrected share ${m} (${nText}), as compare_runs' head rows.`)];
      // heads are paired by index: head k of two independent inits or trainings of one
      // architecture are unrelated (heads are exchangeable)
      lines.push(h("p", { class: "note", id: "heads-index" }, "Heads are paired by index (layer, head): right for " +
        "checkpoints of one training run or fine-tunes of one model; across two seeds or independent trainings " +
        "head k of one is unrelated to head k of the other. Shares only: a head whose logit energy grew or shrank " +
        "while keeping its mix shows no delta (bfd query head_energy_changes)."));
      // two models (run_pairs' same_model false): compare_runs pairs heads by their layer
      // index, while the per-layer plot above aligns relative depth when depths differ
      if (pairOf(ctx.a, ctx.b)?.same_model === false) {
        lines.push(h("p", { class: "note warn", id: "heads-layers" }, "Runs A and B are of two models: each head " +
          "is compared by its layer index, layer l of A against layer l of B, not aligned by depth, as compare_runs " +
          "(the per-layer plot above aligns relative depth when the depths differ)."));
      }
      if (otherMethods) {
        lines.push(h("p", { class: "note warn", id: "heads-methods" }, "Runs A and B were decomposed by other " +
          "methods (run_pairs' method_note above): their head shares' intervals are of two estimators, so the " +
          "per-head deltas have no interval nor significance, as compare_runs' head rows."));
      }
      const noValue = [["A", ctx.a, HA], ["B", ctx.b, HB]].filter(([, , H]) => H.length && H.every((r) => typeof r[m] !== "number"));
      if (noValue.length) {
        lines.push(h("p", { class: "note warn", id: "heads-missing" }, noValue.map(([side, id]) => `run ${side} (${id})`).join(" and ") +
          ` holds no ${m} (decomposed before it was stored): no per-head deltas on this basis.`));
      }
      const nSig = rows.filter((r) => r.significant === true).length;
      // heads that one run holds and the other not (two models of other head counts): no
      // delta, said and marked on the heatmap
      const keyOf = (r) => r.layer + ":" + r.head;
      const inA = new Set(HA.map(keyOf)), inB = new Set(HB.map(keyOf));
      const oneSide = rows.filter((r) => inA.has(keyOf(r)) !== inB.has(keyOf(r)));
      const onlyIn = (r) => (inA.has(keyOf(r)) ? "A" : "B");
      const nOnly = (side) => oneSide.filter((r) => onlyIn(r) === side).length;
      lines.push(h("p", { class: "note", id: "heads-summary" }, `${changes.length} head(s) changed type from A to B; ` +
        `${rows.filter((r) => r.delta !== null).length} of ${rows.length} head(s) with a delta of ${m}` +
        (oneSide.length ? ` (${nOnly("A")} head(s) of run A only, ${nOnly("B")} of run B only: no delta, marked ×)` : "") +
        (rows.some((r) => r.significant !== null) ? `, ${nSig} of them with an interval excluding 0.`
          : otherMethods ? " (no intervals: other methods)." : " (no intervals stored).")));
      const layersH = [...new Set(rows.map((r) => r.layer))].sort((x, y) => x - y);
      const headsH = [...new Set(rows.map((r) => r.head))].sort((x, y) => x - y);
      const cell = new Map(rows.map((r) => [r.layer + ":" + r.head, r]));
      const type = (t) => t ?? "–";
      const cellText = (r) => `layer ${r.layer} head ${r.head}<br>Δ ${m} (B − A) ${withInterval(r.delta, r.delta_lo, r.delta_hi)}` +
        (r.significant === null ? "" : `<br>significant: ${r.significant ? "yes" : "no"}`) +
        `<br>A: ${withInterval(r.value_a, r.value_a_lo, r.value_a_hi)} · ${pt(type(r.head_type_a))} (N ${fmt(ctx.nA)})` +
        `<br>B: ${withInterval(r.value_b, r.value_b_lo, r.value_b_hi)} · ${pt(type(r.head_type_b))} (N ${fmt(ctx.nB)})`;
      const z = layersH.map((l) => headsH.map((hd) => cell.get(l + ":" + hd)?.delta ?? null));
      const text = layersH.map((l) => headsH.map((hd) => (cell.has(l + ":" + hd) ? cellText(cell.get(l + ":" + hd)) : "")));
      const onlyText = (r) => `layer ${r.layer} head ${r.head}<br>a head of run ${onlyIn(r)} only: run ` +
        `${onlyIn(r) === "A" ? "B" : "A"} has no head ${r.head} in layer ${r.layer}, so no delta`;
      const lim = Math.max(1e-12, ...rows.map((r) => Math.abs(r.delta ?? 0)));
      const traces = [{ type: "heatmap", x: headsH, y: layersH, z: z, customdata: text, zmin: -lim, zmax: lim, zmid: 0,
        colorscale: "RdBu", colorbar: { title: { text: `Δ ${m}` }, thickness: 12 }, showlegend: false,
        hovertemplate: "%{customdata}<extra></extra>", name: `Δ ${m}` }];
      if (oneSide.length) {
        traces.push({ type: "scatter", mode: "markers", x: oneSide.map((r) => r.head), y: oneSide.map((r) => r.layer),
          name: "head of one run only", marker: { symbol: "x-thin-open", size: 10, color: "#777", line: { width: 1.5 } },
          customdata: oneSide.map(onlyText), hovertemplate: "%{customdata}<extra></extra>" });
      }
      if (changes.length) {
        traces.push({ type: "scatter", mode: "markers", x: changes.map((c) => c.head), y: changes.map((c) => c.layer),
          name: "head type changed", marker: { symbol: "circle-open", size: 16, color: "#000", line: { width: 2 } },
          customdata: changes.map((c) => `layer ${c.layer} head ${c.head}<br>type changed: ${pt(type(c.head_type_a))} → ${pt(type(c.head_type_b))}`),
          hovertemplate: "%{customdata}<extra></extra>" });
      }
      const heat = plotDiv("head-delta-plot", `Per-head difference B minus A of ${m}, layer against head, ` +
        "heads whose type changed circled");
      const shareSelect = select("head-share-select", "head share", HEAD_SHARES.map((s) => [s, s]), state.share,
        (v) => { state.share = v; showHeads(ctx, HA, HB); });
      const ordered = rows.slice().sort((x, y) => (y.delta === null ? -1 : Math.abs(y.delta)) - (x.delta === null ? -1 : Math.abs(x.delta)) ||
        x.layer - y.layer || x.head - y.head);
      const yesNo = (r) => (r.significant === null ? "–" : r.significant ? "yes" : "no");
      const dCols = ["layer", "head"].map((c) => ({ key: c })).concat([
        { key: "head_type_a", label: "type A" }, { key: "head_type_b", label: "type B" },
        { key: "value_a", label: "A" }, { key: "value_b", label: "B" }, { key: "delta" },
        { key: "delta_lo" }, { key: "delta_hi" }, { key: "significant", render: yesNo }]);
      const cCols = ["layer", "head", "head_type_a", "head_type_b"].map((c) => ({ key: c }))
        .concat(HEAD_SHARES.flatMap((s) => [{ key: s + "_a" }, { key: s + "_b" }]));
      const out = section("Heads", h("div", { class: "controls" }, shareSelect), ...lines, heat,
        dataTable("head-delta-table", `${m}: B − A per head, largest |Δ| first (basis ${ctx.basis})`, ordered, dCols,
          { filename: pairStem(ctx.a, ctx.b) + "-heads-" + m, csvKeys: Object.keys(ident).concat(["layer", "head", "metric",
            "head_type_a", "head_type_b", "value_a", "value_b", "delta", "delta_lo", "delta_hi", "significant"]) }),
        changes.length ? dataTable("head-type-table", "head-type changes A → B", changes, cCols,
          { filename: pairStem(ctx.a, ctx.b) + "-head-type-changes", csvKeys: Object.keys(ident).concat(cCols.map((c) => c.key)) })
          : empty("No head changed type from A to B (of the heads both runs hold).", "no-head-type-changes"));
      headBox.replaceChildren(out);  // in the document first: plotly measures the plot's box
      draw(heat, traces, { height: Math.max(300, 34 * layersH.length + 140),
        xaxis: { title: { text: "head" }, dtick: 1 }, yaxis: { title: { text: "layer" }, dtick: 1, autorange: "reversed" },
        legend: { orientation: "h", y: -0.25, x: 0 }, showlegend: changes.length > 0 });
      headBox.setAttribute("data-ready", ctx.a + " " + ctx.b);
    }
    redraw();
  }

  const pages = { overview: overview, run: runPage, series: seriesPage, compare: comparePage };
  (pages[PAGE] || overview)();
  if (D.generated) app.append(h("p", { class: "note" }, "generated " + D.generated));
})();
