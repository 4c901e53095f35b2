/* The head atlas page script. headzoo._atlas inlines it into index.html, so the page is one file
 * that opens from file:// with no network and no library: heatmaps, colour scales and attention
 * views are drawn here as SVG. It reads the JSON in the #atlas-data element, an AtlasPayload (see
 * headzoo/_atlas.py): model, detectors [{name, threshold, kind, variant, reference, stage,
 * description?}] in the survey's stage order, scores {detector: [layer][head] score or null},
 * heads [{layer, head, labels, top_keys, argmax_bos, common_offset, promotes, suppresses,
 * reads_from, writes_to, successor?, examples?, importance?, literature?}], example {tokens,
 * patterns (base64 uint8 [layer, head, query, key] / 255), shape}, meta, n_layers, n_heads, mod10,
 * and optionally examples, importance, agreement, downloads. Optional parts are drawn when present,
 * with a line saying why when absent.
 *
 * Every string from the data reaches the page through textContent or createTextNode, never
 * innerHTML: token strings are arbitrary text and must stay inert. Head cards are built when
 * opened, so a 12 x 12 model's page draws in well under a second. When the first drawing is done
 * the script sets document.body.dataset.rendered = "1" (and renderMs, since navigation start). */
"use strict";
(function () {
  // a failure says so on the page (and still reaches the console) instead of leaving it blank
  try { draw(); } catch (err) {
    const box = document.getElementById("page-error");
    box.textContent = "The atlas could not be drawn: " + (err && err.message ? err.message : String(err)) +
      ". The data is in scores.parquet and meta.json next to this page.";
    box.hidden = false;
    throw err;
  }

  function draw() {
  const SVG = "http://www.w3.org/2000/svg";
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = text; if (cls) e.className = cls; return e; };
  const svgEl = (tag, attrs) => { const e = document.createElementNS(SVG, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  const $ = id => document.getElementById(id);
  const headName = h => "L" + h.layer + "H" + h.head;
  const fmt = v => (v === null || v === undefined) ? "" : Math.abs(v) < 0.0005 ? "0.000" : Number(v).toFixed(3);  // never "-0.000"
  const pct = v => (v === null || v === undefined) ? "" : Math.round(100 * v) + "%";
  const muted = text => el("p", text, "muted");
  // one "term: value" line of an explanation (a div per pair keeps each on its own line, also as text)
  const pair = (dl, k, v) => { if (v === null || v === undefined || v === "") return; const d = el("div"); d.appendChild(el("dt", k + ": ")); d.appendChild(el("dd", String(v))); dl.appendChild(d); };
  const shown = s => String(s).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");  // a newline token stays one visible glyph

  const data = JSON.parse($("atlas-data").textContent);
  const dets = data.detectors;
  const heads = data.heads;
  const byName = new Map(heads.map(h => [headName(h), h]));
  // why an optional part (examples, importance, literature) is absent, as the build recorded it
  const why = (part, fallback) => { const s = (data.meta.skipped || {})[part]; return s ? fallback + ": " + s : fallback + "."; };
  const score = (d, h) => { const rows = data.scores[d]; const row = rows ? rows[h.layer] : null; return row ? row[h.head] : null; };
  const over = (v, thr) => v !== null && v !== undefined && thr !== null && thr !== undefined && v >= thr;

  // -- colour scales ---------------------------------------------------------------------------
  const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  const REDS = [[255, 255, 255], [252, 187, 161], [239, 59, 44], [103, 0, 13]];
  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t)); const x = t * (stops.length - 1); const i = Math.min(stops.length - 2, Math.floor(x)); const f = x - i;
    const c = stops[i].map((a, j) => Math.round(a + (stops[i + 1][j] - a) * f));
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }
  /* A scale for one map: 0..1 when every value lies there (most scores are shares), else the data's
   * range with the threshold in it; values on both sides of 0 get a diverging scale centred on 0. */
  function scaleFor(values, thr) {
    const vs = values.filter(v => v !== null && v !== undefined && isFinite(v));
    let lo = Math.min(0, ...vs), hi = Math.max(0, ...vs);
    if (lo > -5e-4 && hi <= 1) { lo = 0; hi = 1; }  // a share; rounding noise below 0 is not a sign
    if (thr !== null && thr !== undefined) { lo = Math.min(lo, thr); hi = Math.max(hi, thr); }
    if (lo < 0 && hi > 0) { const m = Math.max(-lo, hi); lo = -m; hi = m; }
    if (hi <= lo) hi = lo + 1;
    const diverging = lo < 0;
    const colour = v => {
      if (!diverging) return ramp(BLUES, (v - lo) / (hi - lo));
      return v >= 0 ? ramp([[255, 255, 255]].concat(BLUES.slice(1)), v / hi) : ramp(REDS, v / lo);
    };
    return { lo: lo, hi: hi, diverging: diverging, colour: colour };
  }
  let gradients = 0;
  function legend(scale, thr, what) {
    const W = 180, x0 = 4, x1 = W - 4, id = "grad" + (gradients++);
    const svg = svgEl("svg", { "class": "legend", viewBox: "0 0 " + W + " 44", width: W, height: 44, role: "img" });
    svg.setAttribute("aria-label", "colour scale of " + what + ": " + fmt(scale.lo) + " to " + fmt(scale.hi) +
      (thr === null || thr === undefined ? "" : ", threshold " + thr));
    const grad = svgEl("linearGradient", { id: id, x1: "0", x2: "1", y1: "0", y2: "0" });
    for (let i = 0; i <= 10; i++) {
      const v = scale.lo + (scale.hi - scale.lo) * i / 10;
      grad.appendChild(svgEl("stop", { offset: (i * 10) + "%", "stop-color": scale.colour(v) }));
    }
    const defs = svgEl("defs", {}); defs.appendChild(grad); svg.appendChild(defs);
    svg.appendChild(svgEl("rect", { x: x0, y: 15, width: x1 - x0, height: 11, fill: "url(#" + id + ")", stroke: "#9aa5b1", "stroke-width": 0.5 }));
    const label = (x, y, text, anchor) => { const t = svgEl("text", { x: x, y: y, "text-anchor": anchor }); t.textContent = text; svg.appendChild(t); };
    label(x0, 40, fmt(scale.lo), "start"); label(x1, 40, fmt(scale.hi), "end");
    if (scale.diverging) label((x0 + x1) / 2, 40, "0", "middle");
    if (thr !== null && thr !== undefined) {
      const x = x0 + (x1 - x0) * (thr - scale.lo) / (scale.hi - scale.lo);
      svg.appendChild(svgEl("line", { x1: x, x2: x, y1: 12, y2: 29, stroke: "#f28e2b", "stroke-width": 2.5 }));
      label(Math.max(x0 + 42, Math.min(x1 - 42, x)), 10, "threshold " + thr, "middle");
    }
    return svg;
  }

  /* A layer x head heatmap. rows[layer][head] is a number or null; tip(h, v) its tooltip. Cells are
   * <rect class="cell" data-head="L2H3"> with a <title>; clicks and Enter are handled once, on
   * #main. Cells at or over thr get an outline, drawn last so no neighbour covers it. */
  const cellsOf = new Map();
  function heatmap(rows, thr, scale, tip, what) {
    const L = data.n_layers, H = data.n_heads, C = 20, ml = 22, mt = 14;
    const svg = svgEl("svg", { "class": "hm", viewBox: "0 0 " + (ml + H * C + 2) + " " + (mt + L * C + 2), role: "group" });
    svg.setAttribute("aria-label", what + ": layers 0 to " + (L - 1) + " down, heads 0 to " + (H - 1) + " across");
    const step = H > 16 ? Math.ceil(H / 12) : 1, lstep = L > 16 ? Math.ceil(L / 12) : 1;
    for (let h = 0; h < H; h += step) { const t = svgEl("text", { x: ml + h * C + C / 2, y: mt - 4, "text-anchor": "middle" }); t.textContent = String(h); svg.appendChild(t); }
    for (let l = 0; l < L; l += lstep) { const t = svgEl("text", { x: ml - 4, y: mt + l * C + C / 2 + 3, "text-anchor": "end" }); t.textContent = String(l); svg.appendChild(t); }
    const corner = svgEl("text", { x: 1, y: mt - 4 }); corner.textContent = "L\\H"; svg.appendChild(corner);
    const late = [];
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const v = rows && rows[l] ? rows[l][h] : null; const name = "L" + l + "H" + h;
        const isOver = over(v, thr);
        const r = svgEl("rect", { x: ml + h * C, y: mt + l * C, width: C, height: C, tabindex: "0", role: "button",
          "class": "cell" + (v === null || v === undefined ? " none" : "") + (isOver ? " over" : "") });
        r.dataset.head = name;
        if (v !== null && v !== undefined) r.setAttribute("fill", scale.colour(v));
        const t = svgEl("title", {}); t.textContent = tip(l, h, v, isOver); r.appendChild(t);
        if (isOver) late.push(r); else svg.appendChild(r);
        if (!cellsOf.has(name)) cellsOf.set(name, []);
        cellsOf.get(name).push(r);
      }
    }
    late.forEach(r => svg.appendChild(r));
    return svg;
  }

  /* A map's heatmap and legend, at most a little over their natural size (a 4 x 4 model's map
   * stays small), with its explanation beside them where there is room, else below. */
  function mapBody(svg, leg, text) {
    const w = Math.min(240, Math.round(svg.viewBox.baseVal.width * 1.3));
    const figure = el("div", undefined, "map-fig"); figure.style.width = Math.max(w, 150) + "px";
    svg.style.maxWidth = w + "px"; figure.appendChild(svg); figure.appendChild(leg);
    const body = el("div", undefined, "map-body"); body.appendChild(figure); body.appendChild(text);
    return body;
  }

  // -- header ----------------------------------------------------------------------------------
  const versions = data.meta.versions || {};
  $("title").textContent = "headzoo atlas: " + (data.model.name || "model");
  $("subtitle").textContent = data.n_layers + " layers x " + data.n_heads + " heads, d_model " + data.model.d_model +
    ", vocabulary " + data.model.d_vocab + " - " + dets.length + " detectors - headzoo " + (versions.headzoo || "?") +
    ", created " + (data.meta.created || "?");

  // -- detector heatmaps with their explanations, grouped by stage ----------------------------
  const stageOf = d => d.stage || "unstaged";
  function explain(d) {
    const dl = el("dl", undefined, "explain");
    dl.appendChild(d.description ? el("p", d.description, "desc") : el("p", "(no description stored in this atlas)", "desc muted"));
    const item = (k, v) => pair(dl, k, v);
    item("threshold", d.threshold === null ? "none (never labels a head)" : d.threshold);
    item("variant", d.variant); item("paper", d.reference); item("stage", stageOf(d)); item("kind", d.kind);
    return dl;
  }
  (function drawDetectors() {
    const box = $("heatmaps"); let group = null;
    dets.forEach(d => {
      if (!group || group.dataset.stage !== stageOf(d)) {
        const sec = el("div", undefined, "stage"); sec.appendChild(el("h3", stageOf(d)));
        group = el("div", undefined, "maps"); group.dataset.stage = stageOf(d); sec.appendChild(group); box.appendChild(sec);
      }
      const fig = el("figure", undefined, "map heatmap"); fig.id = "heatmap-" + d.name; fig.style.margin = "0";
      fig.appendChild(el("h4", d.name));
      const rows = data.scores[d.name] || [];
      const scale = scaleFor([].concat(...rows), d.threshold);
      fig.appendChild(mapBody(heatmap(rows, d.threshold, scale, (l, h, v, o) => "L" + l + "H" + h + " - " + d.name + ": " +
        (v === null || v === undefined ? "not scored" : fmt(v) + (d.threshold === null ? "" : o ? " (at or over threshold " + d.threshold + ")" : " (threshold " + d.threshold + ")")), d.name),
        legend(scale, d.threshold, d.name), explain(d)));
      group.appendChild(fig);
    });
    const skipped = data.meta.skipped_detectors || {}; const names = Object.keys(skipped);
    if (names.length) {
      const det = el("details"); det.appendChild(el("summary", names.length + " detector(s) did not apply to this model and are not shown: why"));
      const ul = el("ul", undefined, "muted"); names.forEach(n => { const li = el("li"); li.appendChild(el("strong", n)); li.appendChild(document.createTextNode(": " + skipped[n])); ul.appendChild(li); });
      det.appendChild(ul); $("skipped").appendChild(det);
    }
  })();

  // -- heads table: search and sort ------------------------------------------------------------
  const thead = document.querySelector("#heads thead"), tbody = document.querySelector("#heads tbody");
  const sr = el("tr", undefined, "stages"); sr.appendChild(el("th")); sr.appendChild(el("th"));
  dets.forEach((d, i) => {
    if (i > 0 && stageOf(dets[i - 1]) === stageOf(d)) { sr.lastChild.colSpan += 1; return; }
    const th = el("th", stageOf(d)); th.colSpan = 1; sr.appendChild(th);
  });
  thead.appendChild(sr);
  const hr = el("tr");
  [{ key: "head", label: "head" }, { key: "labels", label: "labels" }].concat(dets.map(d => ({ key: d.name, label: d.name })))
    .forEach(c => { const th = el("th", c.label); th.dataset.key = c.key; th.tabIndex = 0; hr.appendChild(th); });
  thead.appendChild(hr);
  const rows = heads.map(h => {
    const tr = el("tr"); tr.dataset.head = headName(h);
    tr.appendChild(el("td", headName(h)));
    const lab = el("td"); h.labels.forEach(l => lab.appendChild(el("span", l, "label"))); tr.appendChild(lab);
    dets.forEach(d => { const v = score(d.name, h); tr.appendChild(el("td", fmt(v), over(v, d.threshold) ? "over" : undefined)); });
    return { h: h, tr: tr, text: (headName(h) + " " + h.labels.join(" ")).toLowerCase() };
  });
  let sortKey = "head", sortDir = 1;
  function sortValue(r, key) {
    if (key === "head") return r.h.layer * 100000 + r.h.head;
    if (key === "labels") return r.h.labels.join(",");
    const v = score(key, r.h); return v === null ? -Infinity : v;
  }
  function renderTable() {
    const q = $("search").value.trim().toLowerCase();
    const list = rows.filter(r => !q || r.text.includes(q));
    list.sort((a, b) => { const x = sortValue(a, sortKey), y = sortValue(b, sortKey); return (x < y ? -1 : x > y ? 1 : 0) * sortDir; });
    tbody.replaceChildren(...list.map(r => r.tr));
    thead.querySelectorAll("th").forEach(th => th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "");
  }
  function sortBy(key) {
    if (key === sortKey) sortDir = -sortDir; else { sortKey = key; sortDir = key === "head" || key === "labels" ? 1 : -1; }
    renderTable();
  }
  thead.addEventListener("click", ev => { const key = ev.target.dataset.key; if (key) sortBy(key); });
  thead.addEventListener("keydown", ev => { const key = ev.target.dataset.key; if (key && ev.key === "Enter") sortBy(key); });
  tbody.addEventListener("click", ev => { const tr = ev.target.closest("tr"); if (tr) open(tr.dataset.head); });
  $("search").addEventListener("input", renderTable);
  renderTable();

  // -- importance ------------------------------------------------------------------------------
  (function drawImportance() {
    const box = $("importance"); const imp = data.importance;
    if (!imp) { box.appendChild(muted(why("importance", "Importance was not computed for this atlas"))); return; }
    box.appendChild(muted("The change in each task's metric when the head is ablated (" + (imp.ablation || "?") + " ablation), ranked by attribution patching; the top " +
      (imp.exact_top === null || imp.exact_top === undefined ? "?" : imp.exact_top) + " heads measured exactly. Red: removing the head helps the task." + (imp.note ? " " + imp.note : "")));
    const skipped = imp.skipped || {};
    const skipText = Array.isArray(skipped) ? skipped.map(String) : Object.keys(skipped).map(k => k + ": " + skipped[k]);
    if (skipText.length) box.appendChild(muted("Tasks not run: " + skipText.join("; ")));
    if (!imp.tasks || !imp.tasks.length) { box.appendChild(muted("No task applied to this model's tokenizer.")); return; }
    const maps = el("div", undefined, "maps"); box.appendChild(maps);
    imp.tasks.forEach(t => {
      const rows = []; for (let l = 0; l < data.n_layers; l++) rows.push(new Array(data.n_heads).fill(null));
      heads.forEach(h => { const e = (h.importance || {})[t.name]; if (e) rows[h.layer][h.head] = e.effect; });
      const fig = el("figure", undefined, "map importance-map"); fig.style.margin = "0"; fig.id = "importance-" + t.name;
      fig.appendChild(el("h4", t.name));
      const scale = scaleFor([].concat(...rows), null);
      const map = heatmap(rows, null, scale, (l, h, v) => {
        const e = (byName.get("L" + l + "H" + h) || {}).importance; const x = e ? e[t.name] : null;
        return "L" + l + "H" + h + " - ablating it on " + t.name + ": " + (x ? fmt(x.effect) + " (" + x.method + ")" : "not computed");
      }, t.name + " importance");
      const dl = el("dl", undefined, "explain");
      fig.appendChild(mapBody(map, legend(scale, null, t.name + " effect"), dl));
      if (t.description) dl.appendChild(el("p", t.description, "desc"));
      pair(dl, "metric", t.metric); pair(dl, "clean baseline", t.baseline === null || t.baseline === undefined ? null : fmt(t.baseline));
      maps.appendChild(fig);
    });
  })();

  // -- literature agreement --------------------------------------------------------------------
  (function drawAgreement() {
    const box = $("agreement"); const ag = data.agreement;
    if (!ag) { box.appendChild(muted(why("literature", "No published labels to compare with for a model named \u201c" + (data.model.name || "model") + "\u201d"))); return; }
    if (ag.note) box.appendChild(muted(ag.note));
    if (!ag.rows || !ag.rows.length) { box.appendChild(muted("The catalogue lists no heads of this model.")); return; }
    const wrap = el("div", undefined, "scroll-x"); const t = el("table"); t.id = "agreement-table";
    const hr = el("tr"); ["head", "paper called it", "citation", "verified", "headzoo detector", "score", "threshold", "agrees", "headzoo labels"].forEach(c => hr.appendChild(el("th", c)));
    const th = el("thead"); th.appendChild(hr); t.appendChild(th); const tb = el("tbody");
    ag.rows.forEach(r => {
      const tr = el("tr"); const name = "L" + r.layer + "H" + r.head;
      tr.appendChild(linkCell(name)); tr.appendChild(el("td", r.paper_label)); tr.appendChild(el("td", r.citation));
      tr.appendChild(el("td", r.verified ? "yes" : "no")); tr.appendChild(el("td", r.label));
      tr.appendChild(el("td", fmt(r.headzoo_score))); tr.appendChild(el("td", r.threshold === null || r.threshold === undefined ? "" : String(r.threshold)));
      tr.appendChild(r.agrees === true ? el("td", "yes", "yes") : r.agrees === false ? el("td", "no", "no") : el("td", "\u2014"));
      tr.appendChild(el("td", Array.isArray(r.headzoo_labels) ? r.headzoo_labels.join(", ") : (r.headzoo_labels || "")));
      tb.appendChild(tr);
    });
    t.appendChild(tb); wrap.appendChild(t); box.appendChild(wrap);
  })();

  // -- about and downloads ---------------------------------------------------------------------
  (function drawAbout() {
    const box = $("about"); const m = data.model; const meta = data.meta;
    const dl = el("dl", undefined, "explain");
    const item = (k, v) => pair(dl, k, v);
    item("model", (m.name || "model") + (m.model_class ? " (" + m.model_class + ")" : ""));
    item("shape", m.n_layers + " layers, " + m.n_heads + " heads of d_head " + m.d_head + ", d_model " + m.d_model + ", context " + m.n_ctx + ", vocabulary " + m.d_vocab);
    item("weights fingerprint", meta.weights_fingerprint); item("config hash", meta.model_config_hash); item("created", meta.created);
    item("versions", Object.keys(versions).map(k => k + " " + versions[k]).join(", "));
    item("example prompt", data.example.tokens.length + " tokens; each card shows the head's attention on it");
    const ex = data.examples;
    if (ex) {
      item("text examples", (ex.n_tokens === undefined ? "?" : ex.n_tokens) + " tokens of " + (ex.corpus || "a corpus") + "; top " + ex.k + " contexts per head and activation, and a decile sample");
      const acts = ex.activations || {}; Object.keys(acts).forEach(a => item("activation " + a, acts[a]));
    } else {
      item("text examples", (data.meta.skipped || {}).examples || "none in this atlas (headzoo atlas --corpus PATH adds them)");
    }
    box.appendChild(dl);
    const down = $("downloads");
    if (!data.downloads || !data.downloads.length) { down.appendChild(muted("This atlas lists no files to download; write() puts scores.parquet and meta.json beside this page.")); return; }
    const ul = el("ul");
    data.downloads.forEach(f => { const li = el("li"); const a = el("a", f); a.href = encodeURI(f); a.setAttribute("download", ""); li.appendChild(a); ul.appendChild(li); });
    down.appendChild(ul); down.appendChild(muted("Files beside this page; a copy of index.html alone still shows everything above."));
  })();

  // -- head card, built when opened ------------------------------------------------------------
  let raw = null; const shape = data.example.shape; const seq = shape[2];
  function linkCell(name) {
    const td = el("td", undefined, "head-link"); const a = el("a", name, "head-link"); a.href = "#" + name; td.appendChild(a); return td;
  }
  function fill(id, trs) { document.querySelector("#" + id + " tbody").replaceChildren(...trs); }
  function tokCell(s) { const td = el("td"); td.appendChild(el("span", shown(s), "tok")); return td; }
  function noneRow(text) { const tr = el("tr"); tr.appendChild(el("td", text, "muted")); return tr; }

  function patternView(h) {
    if (raw === null) raw = atob(data.example.patterns);
    const toks = data.example.tokens, n = seq, C = 10, M = 62;
    const base = (h.layer * shape[1] + h.head) * n * n;
    const W = M + n * C + 2;
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + W, width: W, height: W, role: "img" });
    svg.setAttribute("aria-label", "attention of " + headName(h) + " on the example prompt, queries down, keys across");
    const cut = s => { s = shown(s); return s.length > 9 ? s.slice(0, 8) + "\u2026" : s; };
    for (let i = 0; i < n; i++) {
      const a = svgEl("text", { x: M - 3, y: M + i * C + C - 2, "text-anchor": "end" }); a.textContent = cut(toks[i]); svg.appendChild(a);
      const b = svgEl("text", { x: 0, y: 0, "text-anchor": "start", transform: "translate(" + (M + i * C + C - 2) + "," + (M - 3) + ") rotate(-90)" });
      b.textContent = cut(toks[i]); svg.appendChild(b);
    }
    svg.appendChild(svgEl("rect", { x: M, y: M, width: n * C, height: n * C, fill: "#fff", stroke: "#d0d5db" }));
    for (let q = 0; q < n; q++) {
      for (let k = 0; k <= q; k++) {
        const v = raw.charCodeAt(base + q * n + k) / 255; if (v < 0.02) continue;
        const r = svgEl("rect", { x: M + k * C, y: M + q * C, width: C, height: C, fill: ramp(BLUES, v) });
        const t = svgEl("title", {}); t.textContent = "query " + q + " " + shown(toks[q]) + " \u2192 key " + k + " " + shown(toks[k]) + ": " + v.toFixed(2);
        r.appendChild(t); svg.appendChild(r);
      }
    }
    const wrap = el("div", undefined, "scroll-x"); wrap.appendChild(svg); return wrap;
  }

  function context(ex) {
    const li = el("li"); li.appendChild(el("span", (ex.kind === "decile" ? "d" + ex.decile + " " : "#" + ex.rank + " ") + fmt(ex.value), "val"));
    const last = ex.context.length - 1;
    ex.context.forEach((tok, i) => {
      let node = el("span", shown(tok), "t");  // one box per token: word-level vocabularies have no spaces of their own
      if (i === ex.attended) { const m = el("mark", undefined, "attended"); m.title = "attended token (position " + i + " of the context)"; m.appendChild(node); node = m; }
      if (i === last) { const q = el("span", undefined, "query"); q.title = "query token"; q.appendChild(node); node = q; }
      li.appendChild(node);
    });
    return li;
  }
  function onText(h) {
    const box = $("card-text"); box.replaceChildren();
    if (!data.examples) { box.appendChild(muted(why("examples", "No text examples in this atlas (headzoo atlas --corpus PATH adds them)"))); return; }
    const exs = h.examples || [];
    if (!exs.length) { box.appendChild(muted("No context of the corpus activates this head (it may not have been read).")); return; }
    box.appendChild(muted("Contexts of " + (data.examples.corpus || "the corpus") + " where it is most active; the query token is underlined, the token it attends to most is highlighted."));
    const acts = Object.keys(data.examples.activations || {});
    exs.forEach(e => { if (!acts.includes(e.activation)) acts.push(e.activation); });
    acts.forEach(a => {
      const mine = exs.filter(e => e.activation === a); if (!mine.length) return;
      const div = el("div", undefined, "activation"); div.dataset.activation = a;
      div.appendChild(el("h4", a === "attention" ? "By attention" : a === "output_norm" ? "By output norm" : a));
      const what = (data.examples.activations || {})[a]; if (what) div.appendChild(muted(what));
      const top = el("ol", undefined, "ctx-list top"); mine.filter(e => e.kind === "top").sort((x, y) => x.rank - y.rank).forEach(e => top.appendChild(context(e)));
      div.appendChild(top);
      const dec = mine.filter(e => e.kind === "decile").sort((x, y) => x.decile - y.decile);
      if (dec.length) {
        const d = el("details"); d.appendChild(el("summary", "decile sample: one context from each tenth of its activations, lowest first (" + dec.length + ")"));
        const ol = el("ol", undefined, "ctx-list decile"); dec.forEach(e => ol.appendChild(context(e))); d.appendChild(ol); div.appendChild(d);
      }
      box.appendChild(div);
    });
  }
  function importanceCard(h) {
    const box = $("card-importance"); box.replaceChildren();
    if (!data.importance) { box.appendChild(muted(why("importance", "Importance was not computed for this atlas"))); return; }
    const imp = h.importance || {}; const tasks = Object.keys(imp);
    if (!tasks.length) { box.appendChild(muted("Not computed for this head (no task of the battery applies).")); return; }
    let hi = 0; heads.forEach(o => Object.values(o.importance || {}).forEach(e => { hi = Math.max(hi, Math.abs(e.effect)); }));
    const t = el("table"); t.id = "card-importance-table";
    const hr = el("tr"); ["task", "effect of ablating it", "", "method"].forEach(c => hr.appendChild(el("th", c))); t.appendChild(hr);
    tasks.forEach(k => {
      const e = imp[k]; const tr = el("tr"); tr.appendChild(el("td", k)); tr.appendChild(el("td", fmt(e.effect)));
      const bar = el("span", undefined, "bar" + (e.effect < 0 ? " neg" : "")); bar.style.width = (hi > 0 ? Math.round(80 * Math.abs(e.effect) / hi) : 0) + "px";
      const td = el("td"); td.appendChild(bar); tr.appendChild(td); tr.appendChild(el("td", e.method)); t.appendChild(tr);
    });
    box.appendChild(t);
  }
  function literatureCard(h) {
    const box = $("card-literature"); box.replaceChildren();
    const lit = h.literature || [];
    if (lit.length) {
      const p = el("div", undefined, "literature"); p.appendChild(el("h3", "What the papers called it"));
      const ul = el("ul");
      lit.forEach(x => {
        const li = el("li"); li.appendChild(el("strong", "\u201c" + x.paper_label + "\u201d"));
        li.appendChild(document.createTextNode((x.label && x.label !== "none" ? " (headzoo: " + x.label + ")" : "") + " - " + x.citation + (x.verified ? ", verified" : ", not verified") + (x.note ? ". " + x.note : "")));
        ul.appendChild(li);
      });
      p.appendChild(ul); box.appendChild(p);
    } else if (data.agreement) {
      box.appendChild(muted("The papers catalogued for this model do not name this head."));
    } else {
      box.appendChild(muted(why("literature", "No published heads are catalogued for this model")));
    }
  }

  let current = null;
  function select(h) {
    if (!h) return;
    current = h; const name = headName(h);
    rows.forEach(r => r.tr.classList.toggle("selected", r.h === h));
    document.querySelectorAll("rect.sel").forEach(r => r.classList.remove("sel"));
    (cellsOf.get(name) || []).forEach(r => r.classList.add("sel"));
    $("card").hidden = false; $("card-empty").hidden = true;
    $("card-title").textContent = "Head " + name + " (layer " + h.layer + ", head " + h.head + ")";
    const labels = $("card-labels"); labels.replaceChildren();
    if (h.labels.length) h.labels.forEach(l => labels.appendChild(el("span", l, "label")));
    else labels.appendChild(el("span", "no detector over its threshold", "muted"));
    literatureCard(h);
    fill("card-scores", dets.map(d => {
      const v = score(d.name, h); const tr = el("tr"); tr.appendChild(el("td", d.name)); tr.appendChild(el("td", fmt(v)));
      tr.appendChild(el("td", d.threshold === null ? "" : "threshold " + d.threshold, "muted"));
      tr.appendChild(over(v, d.threshold) ? el("td", "over", "yes") : el("td")); return tr;
    }));
    importanceCard(h);
    const KIND = { q: "Q-composition", k: "K-composition", v: "V-composition" };
    const edges = (key, none) => (h[key] || []).length ? h[key].map(e => {
      const tr = el("tr"); tr.appendChild(linkCell(headName(e))); tr.appendChild(el("td", KIND[e.kind] || e.kind));
      tr.appendChild(el("td", fmt(e.score))); tr.appendChild(el("td", "+" + fmt(e.excess) + " over random", "muted")); return tr;
    }) : [noneRow(none)];
    const noComp = data.meta.composition_note || "no head composes with it above the random baseline";
    fill("card-reads", edges("reads_from", h.layer === 0 ? "nothing: it is in the first layer" : noComp));
    fill("card-writes", edges("writes_to", h.layer === data.n_layers - 1 ? "nothing: it is in the last layer" : noComp));
    onText(h);
    $("card-pattern").replaceChildren(patternView(h));
    const off = h.common_offset;
    $("card-offset").textContent = "argmax on position 0 for " + Math.round(100 * h.argmax_bos) + "% of queries" +
      (off ? "; most common other offset " + off.offset + " (" + Math.round(100 * off.share) + "% of queries)" : "");
    fill("card-keys", h.top_keys.map(k => { const tr = el("tr"); tr.appendChild(el("td", "pos " + k.pos)); tr.appendChild(tokCell(k.token)); tr.appendChild(el("td", fmt(k.attention))); return tr; }));
    const ov = key => h[key].length ? h[key].map(p => { const tr = el("tr"); tr.appendChild(tokCell(p.source)); tr.appendChild(el("td", "\u2192")); tr.appendChild(tokCell(p.output)); tr.appendChild(el("td", fmt(p.logit))); return tr; })
      : [noneRow("not computed for this model")];
    fill("card-promotes", ov("promotes")); fill("card-suppresses", ov("suppresses"));
    successorCard(h);
    $("card").scrollTop = 0;
    const col = $("col-card").firstElementChild; if (col) col.scrollTop = 0;
  }
  // a successor head's per-task accuracies, editing success and the model's mod-10 figure
  function successorCard(h) {
    const box = $("card-successor"); const s = h.successor;
    box.hidden = !s; if (!s) return;
    $("card-successor-editing").textContent = "editing success " + pct(s.editing) + " of " + s.n_pairs +
      " edits" + (s.editing_no_carry === null ? "" : " (" + pct(s.editing_no_carry) + " where the successor stays in the same ten)") +
      "; random-direction control " + pct(s.control);
    fill("card-successor-tasks", s.tasks.map(t => { const tr = el("tr"); tr.appendChild(el("td", t.task)); tr.appendChild(el("td", pct(t.accuracy))); tr.appendChild(el("td", pct(t.editing))); return tr; }));
    const fig = $("card-mod10"); fig.replaceChildren(); const m = data.mod10;
    const summary = $("card-mod10-summary");
    if (!m) { summary.textContent = "not computed for this model (it needs number-like tokens in its tokenizer)"; return; }
    summary.textContent = "held-out accuracy of predicting the residue from the effective embedding, by modulus: " +
      m.moduli.map(x => "mod " + x[0] + " " + pct(x[1]) + " (chance " + pct(x[2]) + ")").join(", ") +
      "; the ten directions explain " + pct(m.variance_explained) + " of the variance. Below: each token's projection on each digit's direction.";
    let hi = 0; m.projections.forEach(r => r.forEach(v => { hi = Math.max(hi, Math.abs(v)); }));
    const t = el("table"); const head = el("tr"); head.appendChild(el("td", "token"));
    for (let r = 0; r < 10; r++) head.appendChild(el("td", String(r))); t.appendChild(head);
    m.tokens.forEach((tok, i) => {
      const tr = el("tr"); tr.appendChild(tokCell(tok));
      m.projections[i].forEach(v => {
        const td = el("td", v.toFixed(2)); const a = hi > 0 ? Math.abs(v) / hi : 0;
        td.style.background = v >= 0 ? "rgba(33,113,181," + a.toFixed(3) + ")" : "rgba(203,24,29," + a.toFixed(3) + ")";
        if (a > 0.6) td.style.color = "#fff"; tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    fig.appendChild(t);
  }
  function close() {
    current = null; $("card").hidden = true; $("card-empty").hidden = false;
    rows.forEach(r => r.tr.classList.remove("selected"));
    document.querySelectorAll("rect.sel").forEach(r => r.classList.remove("sel"));
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  }
  /* Every way of opening a card goes through the URL hash (#L2H3), so links, the back button and
   * a shared link all open the same card. */
  function open(name) {
    if (!byName.has(name)) return;
    if (location.hash === "#" + name) { if (current !== byName.get(name)) select(byName.get(name)); }
    else location.hash = name;
  }
  function fromHash() { const h = byName.get(location.hash.slice(1)); if (h) select(h); }
  window.addEventListener("hashchange", fromHash);
  $("card-close").addEventListener("click", close);
  document.addEventListener("keydown", ev => { if (ev.key === "Escape" && current) close(); });
  $("main").addEventListener("click", ev => { const r = ev.target.closest("rect.cell"); if (r) open(r.dataset.head); });
  $("main").addEventListener("keydown", ev => {
    const r = ev.target.closest && ev.target.closest("rect.cell");
    if (r && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); open(r.dataset.head); }
  });
  fromHash();
  // "rendered" once the first frame is laid out and painted, not merely built
  requestAnimationFrame(() => setTimeout(() => {
    document.body.dataset.renderMs = String(Math.round(performance.now()));
    document.body.dataset.rendered = "1";
  }, 0));
  }
})();
