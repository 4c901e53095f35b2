/* The head atlas page script. headzoo._atlas inlines it into index.html, so the page opens from
 * file:// with no network. It reads the JSON in the #atlas-data element, an AtlasPayload (see
 * headzoo/_atlas.py): model, detectors [{name, threshold, kind, variant, reference, stage}] in the survey's
 * stage order, scores
 * {detector: [layer][head] score or null}, heads [{layer, head, labels, top_keys, argmax_bos,
 * common_offset, promotes, suppresses}], example {tokens, patterns (base64 uint8), shape}, meta,
 * n_layers, n_heads. Every string it shows goes through textContent (or esc() for plotly labels). */
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("atlas-data").textContent);
  const dets = data.detectors.map(d => d.name);
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
  const headName = h => "L" + h.layer + "H" + h.head;
  const esc = s => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const score = (d, h) => { const row = data.scores[d][h.layer]; return row ? row[h.head] : null; };
  const fmt = v => (v === null || v === undefined) ? "" : Number(v).toFixed(3);
  const BLUES = [[0, "#f7fbff"], [0.25, "#c6dbef"], [0.5, "#6baed6"], [0.75, "#2171b5"], [1, "#08306b"]];

  document.getElementById("title").textContent = "headzoo atlas: " + (data.model.name || "model");
  document.getElementById("subtitle").textContent = data.n_layers + " layers x " + data.n_heads + " heads, d_model " +
    data.model.d_model + ", vocabulary " + data.model.d_vocab + " - " + dets.length + " detectors - headzoo " +
    (data.meta.versions || {}).headzoo + ", created " + data.meta.created;

  // overview heatmaps, grouped by the survey's four stages (the payload arrives in stage order)
  const maps = document.getElementById("heatmaps");
  const stageOf = d => d.stage || "unstaged";
  let group = null;
  data.detectors.forEach(d => {
    if (!group || group.dataset.stage !== stageOf(d)) {
      const sec = el("div", undefined, "stage"); sec.dataset.stage = stageOf(d);
      sec.appendChild(el("h3", stageOf(d)));
      group = el("div", undefined, "stage-maps"); group.dataset.stage = stageOf(d);
      sec.appendChild(group); maps.appendChild(sec);
    }
    const div = el("div", undefined, "heatmap"); div.id = "heatmap-" + d.name; group.appendChild(div);
    const thr = d.threshold === null ? "none" : d.threshold;
    Plotly.newPlot(div, [{
      type: "heatmap", z: data.scores[d.name], colorscale: BLUES, zmin: 0, zmax: 1, showscale: false,
      hovertemplate: esc(d.name) + "<br>L%{y}H%{x}<br>score %{z:.3f}<br>threshold " + esc(thr) + "<extra></extra>",
    }], {
      title: { text: esc(d.name), font: { size: 13 } }, margin: { l: 40, r: 10, t: 30, b: 35 },
      xaxis: { title: { text: "head" }, dtick: 1 }, yaxis: { title: { text: "layer" }, autorange: "reversed", dtick: 1 },
    }, { displayModeBar: false, responsive: true });
    div.on("plotly_click", ev => { const p = ev.points[0]; select(data.heads.find(h => h.layer === p.y && h.head === p.x)); });
  });

  // heads table: search and sort
  const thead = document.querySelector("#heads thead"), tbody = document.querySelector("#heads tbody");
  const cols = [{ key: "head", label: "head" }, { key: "labels", label: "labels" }].concat(dets.map(d => ({ key: d, label: d })));
  const sr = el("tr", undefined, "stages"); sr.appendChild(el("th")); sr.appendChild(el("th"));
  data.detectors.forEach((d, i) => {
    if (i > 0 && stageOf(data.detectors[i - 1]) === stageOf(d)) { sr.lastChild.colSpan += 1; return; }
    const th = el("th", stageOf(d)); th.colSpan = 1; sr.appendChild(th);
  });
  thead.appendChild(sr);
  const hr = el("tr"); cols.forEach(c => { const th = el("th", c.label); th.dataset.key = c.key; hr.appendChild(th); }); thead.appendChild(hr);
  const rows = data.heads.map(h => {
    const tr = el("tr"); tr.dataset.head = headName(h);
    tr.appendChild(el("td", headName(h)));
    const lab = el("td"); h.labels.forEach(l => lab.appendChild(el("span", l, "label"))); tr.appendChild(lab);
    dets.forEach(d => tr.appendChild(el("td", fmt(score(d, h)))));
    tr.addEventListener("click", () => select(h));
    return { h: h, tr: tr, text: (headName(h) + " " + h.labels.join(" ")).toLowerCase() };
  });
  let sortKey = "head", sortDir = 1;
  function sortValue(r, key) {
    if (key === "head") return r.h.layer * 100000 + r.h.head;
    if (key === "labels") return r.h.labels.join(",");
    const v = score(key, r.h); return v === null ? -Infinity : v;
  }
  function render() {
    const q = document.getElementById("search").value.trim().toLowerCase();
    const shown = rows.filter(r => !q || r.text.includes(q));
    shown.sort((a, b) => { const x = sortValue(a, sortKey), y = sortValue(b, sortKey); return (x < y ? -1 : x > y ? 1 : 0) * sortDir; });
    tbody.replaceChildren(...shown.map(r => r.tr));
    thead.querySelectorAll("th").forEach(th => th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "");
  }
  thead.addEventListener("click", ev => {
    const key = ev.target.dataset.key; if (!key) return;
    if (key === sortKey) sortDir = -sortDir; else { sortKey = key; sortDir = key === "head" || key === "labels" ? 1 : -1; }
    render();
  });
  document.getElementById("search").addEventListener("input", render);
  render();

  // head card
  const raw = atob(data.example.patterns); const shape = data.example.shape; const seq = shape[2];
  function pattern(h) {
    const base = (h.layer * shape[1] + h.head) * seq * seq; const out = [];
    for (let q = 0; q < seq; q++) { const row = []; for (let k = 0; k < seq; k++) row.push(raw.charCodeAt(base + q * seq + k) / 255); out.push(row); }
    return out;
  }
  function fill(id, rows) { const body = document.querySelector("#" + id + " tbody"); body.replaceChildren(...rows); }
  function tokCell(s) { const td = el("td"); td.appendChild(el("span", s, "tok")); return td; }
  function select(h) {
    if (!h) return;
    rows.forEach(r => r.tr.classList.toggle("selected", r.h === h));
    document.getElementById("card").hidden = false; document.getElementById("card-empty").hidden = true;
    document.getElementById("card-title").textContent = "Head " + headName(h) + " (layer " + h.layer + ", head " + h.head + ")";
    const labels = document.getElementById("card-labels"); labels.replaceChildren();
    if (h.labels.length) h.labels.forEach(l => labels.appendChild(el("span", l, "label")));
    else labels.appendChild(el("span", "no detector over its threshold", "muted"));
    fill("card-scores", data.detectors.map(d => {
      const tr = el("tr"); tr.appendChild(el("td", d.name)); tr.appendChild(el("td", fmt(score(d.name, h))));
      tr.appendChild(el("td", d.threshold === null ? "" : "threshold " + d.threshold, "muted")); return tr;
    }));
    const box = document.getElementById("card-pattern"); box.replaceChildren(); const target = el("div"); target.id = "cv-" + headName(h); box.appendChild(target);
    const attn = pattern(h);
    if (window.CircuitsVis) {
      CircuitsVis.render(target.id, CircuitsVis.AttentionPattern, { tokens: data.example.tokens, attention: attn, maxValue: 1, minValue: 0 });
    } else {
      Plotly.newPlot(target, [{ type: "heatmap", z: attn, colorscale: BLUES, zmin: 0, zmax: 1 }], { margin: { t: 10 } }, { displayModeBar: false });
    }
    const off = h.common_offset;
    document.getElementById("card-offset").textContent = "argmax on position 0 for " + Math.round(100 * h.argmax_bos) + "% of queries" +
      (off ? "; most common other offset " + off.offset + " (" + Math.round(100 * off.share) + "% of queries)" : "");
    fill("card-keys", h.top_keys.map(k => { const tr = el("tr"); tr.appendChild(el("td", "pos " + k.pos)); tr.appendChild(tokCell(k.token)); tr.appendChild(el("td", fmt(k.attention))); return tr; }));
    const ov = key => h[key].length ? h[key].map(p => { const tr = el("tr"); tr.appendChild(tokCell(p.source)); tr.appendChild(el("td", "\u2192")); tr.appendChild(tokCell(p.output)); tr.appendChild(el("td", fmt(p.logit))); return tr; })
      : [(() => { const tr = el("tr"); tr.appendChild(el("td", "not computed for this model", "muted")); return tr; })()];
    fill("card-promotes", ov("promotes")); fill("card-suppresses", ov("suppresses"));
    const KIND = { q: "Q-composition", k: "K-composition", v: "V-composition" };
    const edges = (key, none) => h[key].length ? h[key].map(e => {
      const tr = el("tr"); const other = data.heads.find(o => o.layer === e.layer && o.head === e.head);
      const link = el("td", headName(e), "head-link"); if (other) link.addEventListener("click", () => select(other));
      tr.appendChild(link); tr.appendChild(el("td", KIND[e.kind] || e.kind)); tr.appendChild(el("td", fmt(e.score)));
      tr.appendChild(el("td", "+" + fmt(e.excess) + " over random", "muted")); return tr;
    }) : [(() => { const tr = el("tr"); tr.appendChild(el("td", none, "muted")); return tr; })()];
    const noComp = data.meta.composition_note || "no head composes with it above the random baseline";
    fill("card-reads", edges("reads_from", h.layer === 0 ? "nothing: it is in the first layer" : noComp));
    fill("card-writes", edges("writes_to", h.layer === data.n_layers - 1 ? "nothing: it is in the last layer" : noComp));
    successorCard(h);
    if (location.hash !== "#" + headName(h)) history.replaceState(null, "", "#" + headName(h));
  }
  // a successor head's per-task accuracies, editing success and the model's mod-10 figure
  function successorCard(h) {
    const box = document.getElementById("card-successor"); const s = h.successor;
    box.hidden = !s; if (!s) return;
    const pct = v => (v === null || v === undefined) ? "" : Math.round(100 * v) + "%";
    document.getElementById("card-successor-editing").textContent = "editing success " + pct(s.editing) + " of " + s.n_pairs +
      " edits" + (s.editing_no_carry === null ? "" : " (" + pct(s.editing_no_carry) + " where the successor stays in the same ten)") +
      "; random-direction control " + pct(s.control);
    fill("card-successor-tasks", s.tasks.map(t => { const tr = el("tr"); tr.appendChild(el("td", t.task)); tr.appendChild(el("td", pct(t.accuracy))); tr.appendChild(el("td", pct(t.editing))); return tr; }));
    const fig = document.getElementById("card-mod10"); fig.replaceChildren(); const m = data.mod10;
    const summary = document.getElementById("card-mod10-summary");
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
  const fromHash = data.heads.find(h => "#" + headName(h) === location.hash);
  if (fromHash) select(fromHash);
})();
