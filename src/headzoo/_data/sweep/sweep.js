/* The sweep page script. headzoo._sweep_page inlines it into sweep.html, so the page is one file
 * that opens from file:// with no network and no library: its line charts are drawn here as SVG.
 * It reads the JSON in #sweep-data, a SweepPayload (see headzoo/_sweep_page.py): meta, detectors
 * [{name, threshold, description}], series [{name, models, steps, n_layers, n_heads, log_x,
 * curves {detector: {lo, hi, values (base64 uint16 [step, layer * n_heads + head], 65535 = not
 * scored), state [per head: 2 passes at the end, 1 passed for a while, 0 never]}}}], rankings
 * {detector: [{model, heads [[layer, head, score, passes]]}]}, formation, matches, jobs.
 *
 * Every string from the data reaches the page through textContent or setAttribute, never
 * innerHTML: model and detector names are arbitrary text and must stay inert. When the first
 * drawing is done the script sets document.body.dataset.rendered = "1" (and renderMs); charts are
 * drawn top first in short slices, and document.body.dataset.drawn = "1" (and drawnMs) says all are. */
"use strict";
(function () {
  try { draw(); } catch (err) {
    const box = document.getElementById("page-error");
    box.textContent = "The sweep page could not be drawn: " + (err && err.message ? err.message : String(err)) +
      ". The data is in results/, jobs/ and sweep.json next to this page.";
    box.hidden = false;
    throw err;
  }

  function draw() {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = id => document.getElementById(id);
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; };
  const svgEl = (tag, attrs) => { const e = document.createElementNS(SVG, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  const fmt = v => (v === null || v === undefined) ? "" : Math.abs(v) < 0.0005 ? "0.000" : Number(v).toFixed(3);
  const headName = (l, h) => "L" + l + "H" + h;
  const plural = (n, w) => n + " " + w + (n === 1 ? "" : "s");
  const data = JSON.parse($("sweep-data").textContent);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#3b5bdb"];
  const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  // -- header ------------------------------------------------------------------------------------
  const m = data.meta;
  $("title").textContent = "headzoo sweep: " + plural(m.n_models, "model") + (m.n_series ? ", " + m.n_series + " checkpoint series" : "");
  $("subtitle").textContent = "Detectors: " + (data.detectors.map(d => d.name).join(", ") || "none finished");
  const prov = [];
  if (m.executor) prov.push("executor: " + m.executor);
  if (m.created) prov.push("created: " + m.created);
  if (m.seed !== null && m.seed !== undefined) prov.push("seed: " + m.seed);
  Object.keys(m.versions).forEach(k => prov.push(k + " " + m.versions[k]));
  $("provenance").textContent = prov.join(" \u00b7 ");

  // -- decoding ----------------------------------------------------------------------------------
  function decode(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if (LITTLE) return new Uint16Array(bytes.buffer);
    const out = new Uint16Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
    return out;
  }

  // -- a line chart of one detector over one series ----------------------------------------------
  const W = 440, H = 230, ML = 42, MR = 10, MT = 10, MB = 34;
  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1, raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(x => x * mag).find(x => span / x <= n) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.abs(v) < 1e-12 ? 0 : v);
    return out;
  }
  function chart(series, det) {
    const c = series.curves[det.name];
    const box = el("div", null, "chart");
    box.dataset.series = series.name;
    box.appendChild(el("h4", series.name));
    const codes = decode(c.values);
    const nh = series.n_layers * series.n_heads, steps = series.steps;
    const span = (c.hi - c.lo) / 65534;
    const value = (s, k) => { const v = codes[s * nh + k]; return v === 65535 ? null : c.lo + v * span; };
    const thr = det.threshold;
    let y0 = Math.min(c.lo, thr === null ? c.lo : thr), y1 = Math.max(c.hi, thr === null ? c.hi : thr);
    if (y0 >= 0 && y1 <= 1) { y0 = 0; y1 = 1; }
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const log = series.log_x;
    const xv = s => log ? Math.log10(s + 1) : s;
    const x0 = xv(steps[0]), x1 = xv(steps[steps.length - 1]);
    const X = s => ML + (W - ML - MR) * (x1 > x0 ? (xv(s) - x0) / (x1 - x0) : 0.5);
    const Y = v => MT + (H - MT - MB) * (1 - (v - y0) / (y1 - y0));
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img" });
    svg.setAttribute("aria-label", det.name + " score against " + (log ? "step + 1 (log scale)" : "step") + ", series " + series.name);
    niceTicks(y0, y1, 4).forEach(v => {
      svg.appendChild(svgEl("line", { x1: ML, x2: W - MR, y1: Y(v), y2: Y(v), class: "grid" }));
      const t = svgEl("text", { x: ML - 4, y: Y(v) + 3, "text-anchor": "end" }); t.textContent = fmt(v).replace(/0+$/, "").replace(/\.$/, ""); svg.appendChild(t);
    });
    let xt;
    if (log) { xt = []; for (let p = Math.ceil(x0); p <= x1 + 1e-9; p++) xt.push(Math.pow(10, p) - 1); if (xt.length < 2) xt = [steps[0], steps[steps.length - 1]]; }
    else xt = niceTicks(steps[0], steps[steps.length - 1], 5);
    xt.forEach(s => {
      const t = svgEl("text", { x: X(s), y: H - MB + 13, "text-anchor": "middle" }); t.textContent = log ? String(s + 1) : String(s); svg.appendChild(t);
    });
    svg.appendChild(svgEl("line", { x1: ML, x2: W - MR, y1: H - MB, y2: H - MB, class: "axis" }));
    svg.appendChild(svgEl("line", { x1: ML, x2: ML, y1: MT, y2: H - MB, class: "axis" }));
    const xl = svgEl("text", { x: (ML + W - MR) / 2, y: H - 4, "text-anchor": "middle" });
    xl.textContent = log ? "step + 1 (log scale)" : "step"; svg.appendChild(xl);
    if (thr !== null) svg.appendChild(svgEl("line", { x1: ML, x2: W - MR, y1: Y(thr), y2: Y(thr), class: "thr" }));
    // faint heads first, so the heads that form are drawn on top
    const order = [];
    for (let k = 0; k < nh; k++) order.push(k);
    order.sort((a, b) => c.state[a] - c.state[b] || a - b);
    const paths = new Map(), legend = [];
    let colour = 0;
    order.forEach(k => {
      let d = "";
      for (let s = 0; s < steps.length; s++) {
        const v = value(s, k);
        if (v === null) continue;
        d += (d ? "L" : "M") + X(steps[s]).toFixed(1) + " " + Y(v).toFixed(1);
      }
      if (!d) return;
      const name = headName(Math.floor(k / series.n_heads), k % series.n_heads);
      const st = c.state[k];
      const p = svgEl("path", { d: d, class: "head " + (st === 2 ? "final" : st === 1 ? "once" : "never") });
      p.dataset.head = name;
      if (st === 2) { const col = PALETTE[colour++ % PALETTE.length]; p.setAttribute("stroke", col); legend.push([name, col]); }
      const title = svgEl("title", {}); title.textContent = name; p.appendChild(title);
      svg.appendChild(p);
      paths.set(k, p);
    });
    const cursor = svgEl("line", { y1: MT, y2: H - MB, class: "cursor", visibility: "hidden" });
    svg.appendChild(cursor);
    box.appendChild(svg);
    const leg = el("div", null, "legend");
    if (legend.length) {
      legend.slice(0, 12).forEach(([name, col]) => { const s = el("span"); const i = el("i"); i.style.background = col; s.appendChild(i); s.appendChild(document.createTextNode(name)); leg.appendChild(s); });
      if (legend.length > 12) leg.appendChild(el("span", "and " + (legend.length - 12) + " more"));
      leg.appendChild(el("span", "pass at step " + steps[steps.length - 1]));
    } else leg.appendChild(el("span", thr === null ? "no threshold" : "no head passes at the last checkpoint"));
    box.appendChild(leg);
    // hover: the checkpoint nearest the pointer, then the head whose line is nearest there
    let hot = null;
    const tip = $("tip");
    svg.addEventListener("mousemove", ev => {
      const pt = svg.createSVGPoint(); pt.x = ev.clientX; pt.y = ev.clientY;
      const ctm = svg.getScreenCTM(); if (!ctm) return;
      const q = pt.matrixTransform(ctm.inverse());
      let s = 0;
      for (let i = 1; i < steps.length; i++) if (Math.abs(X(steps[i]) - q.x) < Math.abs(X(steps[s]) - q.x)) s = i;
      let best = -1, dist = Infinity;
      paths.forEach((p, k) => { const v = value(s, k); if (v !== null && Math.abs(Y(v) - q.y) < dist) { dist = Math.abs(Y(v) - q.y); best = k; } });
      if (best < 0) return;
      if (hot) hot.classList.remove("hot");
      hot = paths.get(best); hot.classList.add("hot"); svg.appendChild(hot); svg.appendChild(cursor);
      cursor.setAttribute("x1", X(steps[s])); cursor.setAttribute("x2", X(steps[s])); cursor.setAttribute("visibility", "visible");
      tip.textContent = hot.dataset.head + " \u00b7 step " + steps[s] + " (" + series.models[s] + "): " + fmt(value(s, best));
      tip.hidden = false;
      tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 4) + "px";
      tip.style.top = (ev.clientY + 14) + "px";
    });
    svg.addEventListener("mouseleave", () => { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); if (hot) hot.classList.remove("hot"); hot = null; });
    return box;
  }

  // -- plain models: top heads per model -----------------------------------------------------------
  function ranking(rows) {
    const k = Math.max(0, ...rows.map(r => r.heads.length));
    const table = el("table", null, "ranks");
    const thead = el("thead"), tr = el("tr");
    tr.appendChild(el("th", "model"));
    for (let i = 1; i <= k; i++) tr.appendChild(el("th", "#" + i));
    thead.appendChild(tr); table.appendChild(thead);
    const tbody = el("tbody");
    rows.forEach(r => {
      const row = el("tr");
      row.appendChild(el("td", r.model));
      r.heads.forEach(h => row.appendChild(el("td", headName(h[0], h[1]) + " " + fmt(h[2]), "num" + (h[3] ? " pass" : ""))));
      tbody.appendChild(row);
    });
    table.appendChild(tbody);
    const wrap = el("div", null, "wrap"); wrap.appendChild(table);
    return wrap;
  }

  // Charts are drawn in document order, a slice of ~25 ms at a time: the top of the page shows at
  // once and stays responsive while a big sweep's later charts are drawn (body[data-drawn] = "1" when all are).
  const tasks = [];
  const dets = $("detectors");
  if (!data.detectors.length) dets.appendChild(el("p", "No job finished, so there are no scores to show; the jobs table says why.", "muted"));
  data.detectors.forEach((d, i) => {
    const sec = el("div", null, "detector");
    sec.id = "det-" + i;
    sec.appendChild(el("h3", d.name));
    sec.appendChild(el("p", (d.description ? d.description + " " : "") + "Threshold: " + (d.threshold === null ? "none" : d.threshold) + ".", "explain"));
    const mult = el("div", null, "multiples");
    data.series.forEach(s => { if (s.curves[d.name]) tasks.push(() => mult.appendChild(chart(s, d))); });
    if (data.series.some(s => s.curves[d.name])) sec.appendChild(mult);
    const ranks = data.rankings[d.name];
    if (ranks && ranks.length) {
      sec.appendChild(el("p", "Top heads of each model (score; bold at or over the threshold):", "explain"));
      const slot = el("div");
      sec.appendChild(slot);
      tasks.push(() => slot.appendChild(ranking(ranks)));
    }
    dets.appendChild(sec);
  });
  function pump() {
    const t0 = performance.now();
    while (tasks.length && performance.now() - t0 < 25) tasks.shift()();
    if (tasks.length) setTimeout(pump, 0);
    else { document.body.dataset.drawnMs = String(Math.round(performance.now())); document.body.dataset.drawn = "1"; }
  }

  // -- tables ------------------------------------------------------------------------------------
  function fill(id, columns, rows, rowClass) {
    const table = $(id), head = el("tr");
    columns.forEach(c => head.appendChild(el("th", c[0])));
    table.tHead.appendChild(head);
    const body = table.tBodies[0];
    rows.forEach(r => {
      const tr = el("tr");
      if (rowClass) tr.className = rowClass(r);
      columns.forEach(c => { const td = c[1](r); tr.appendChild(td instanceof Node ? td : el("td", td)); });
      body.appendChild(tr);
    });
  }
  // digits: decimals for a measured number (JSON writes 1.0 as 1, so integers cannot be told apart by value)
  const num = (v, digits) => el("td", v === null || v === undefined ? "" : digits === undefined ? String(v) : Number(v).toFixed(digits), "num");

  $("formation-note").textContent = !data.series.length ? "No series with two or more checkpoint steps in this sweep."
    : data.n_formation === 0 ? "No head passes a threshold at any checkpoint."
    : data.formation.length === data.n_formation ? plural(data.n_formation, "head") + " pass a threshold at some checkpoint."
    : "Showing " + data.formation.length + " of " + data.n_formation + " rows; hz.formation_steps(sweep.to_frame()) gives them all.";
  fill("formation", [["series", r => r.series], ["detector", r => r.detector], ["head", r => headName(r.layer, r.head)],
    ["stays from step", r => num(r.step)], ["first passes at step", r => num(r.first_step)], ["final score", r => num(r.final_score, 3)]],
    data.formation);

  $("matches-note").textContent = data.n_matches === 0 ? "No heads matched (models compared need two shared detectors and similar profiles)."
    : data.matches.length === data.n_matches ? plural(data.n_matches, "matched pair") + "."
    : "Showing " + data.matches.length + " of " + data.n_matches + " pairs (heads sharing a label first, then the most similar); hz.match_heads(sweep.to_frame()) gives them all.";
  fill("matches", [["model a", r => r.model_a], ["head a", r => headName(r.layer_a, r.head_a)], ["", () => "\u2194"],
    ["model b", r => r.model_b], ["head b", r => headName(r.layer_b, r.head_b)], ["similarity", r => num(r.similarity, 3)],
    ["shared labels", r => r.shared_labels]], data.matches);

  const count = s => data.jobs.filter(j => j.status === s).length;
  $("jobs-note").textContent = plural(data.jobs.length, "job") + ": " + count("done") + " done, " + count("failed") + " failed, " + count("pending") + " pending.";
  fill("jobs", [["model", j => j.model], ["series", j => j.series], ["step", j => num(j.step)],
    ["status", j => el("td", j.status, "status-" + j.status)], ["seconds", j => num(j.seconds, 1)],
    ["atlas", j => {
      const td = el("td");
      if (j.atlas && !/^[A-Za-z][A-Za-z0-9+.-]*:/.test(j.atlas)) {  // relative paths only: never a javascript: link
        const a = el("a", "atlas");
        a.setAttribute("href", j.atlas.split("/").map(encodeURIComponent).join("/"));
        td.appendChild(a);
      }
      return td;
    }],
    ["error", j => el("td", j.error || "", j.error ? "err" : "")]], data.jobs, j => j.status === "failed" ? "failed" : "");

  pump();
  requestAnimationFrame(() => setTimeout(() => {
    document.body.dataset.renderMs = String(Math.round(performance.now()));
    document.body.dataset.rendered = "1";
  }, 0));
  }
})();
