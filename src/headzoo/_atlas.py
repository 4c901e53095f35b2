"""The head atlas: every detector's scores for every head of one model, on one offline page.

``hz.build_atlas(model)`` runs the detectors (all pattern detectors share one forward pass),
records an example attention pattern of every head on a repeated-token probe, the keys each
head attends to most, and the tokens its OV circuit promotes and suppresses. ``atlas.write(dir)``
writes ``index.html`` (opens from ``file://``, no network: plotly and circuitsvis are copied
into ``assets/`` once), ``scores.parquet`` and ``meta.json``, each atomically.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import html
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

import numpy as np
import pandas as pd
import torch

from headzoo._detector import Detector, PatternDetector
from headzoo._errors import DetectorNotApplicableError, InvalidOptionError, InvalidTokensError, UnsupportedModelError
from headzoo._models import ModelInfo, library_versions, model_info
from headzoo._probes import RepeatedTokens
from headzoo._results import HeadScores, _normalise, _write_atomic
from headzoo._runner import read_patterns, run_detectors, select_detectors
from headzoo._tokens import as_prompts

__all__ = ["build_atlas", "HeadAtlas"]

_FORMAT = "headzoo.HeadAtlas/1"
_TOP_KEYS = 5
_TOP_OV = 5
_OV_SOURCES = 64


def _json_for_script(value: Any) -> str:
    """JSON to place inside ``<script>``: no ``</script>``, ``<!--`` or anything a browser parses
    as markup (``<``, ``>``, ``&`` and the JavaScript line separators are escaped)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """How each id reads: the tokenizer's decoding, or ``#id`` without a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [str(s) for s in tokenizer.batch_decode([[int(i)] for i in ids])]


def _units(selected: list[Detector]) -> list[list[Detector]]:
    """What is computed (and cached for a resume) together: every pattern detector shares one
    forward pass, every weight detector one vocabulary pass; other detectors run alone."""
    from headzoo._detector import WeightDetector

    pattern = [d for d in selected if isinstance(d, PatternDetector)]
    weights = [d for d in selected if isinstance(d, WeightDetector)]
    rest = [[d] for d in selected if not isinstance(d, (PatternDetector, WeightDetector))]
    return [u for u in (pattern, weights) if u] + rest


def _merge(parts: list[HeadScores]) -> HeadScores:
    frames = [p.to_frame() for p in parts]
    meta = parts[0].meta
    meta["detectors"] = {}
    meta["probes"] = {}
    skipped: dict[str, str] = {}
    details: dict[str, pd.DataFrame] = {}
    for p in parts:
        m = p.meta
        meta["detectors"].update(m["detectors"])
        for name in m["detectors"]:
            meta["probes"][name] = m["probe"]
        skipped.update(m.get("skipped_detectors", {}))
        details.update({name: p.details(name) for name in p.detectors if _has_details(p, name)})
    meta.pop("probe", None)
    if skipped:
        meta["skipped_detectors"] = skipped
    else:
        meta.pop("skipped_detectors", None)
    frame = pd.concat(frames, ignore_index=True)
    base = ["detector", "layer", "head", "score"]
    frame = frame[base + sorted(c for c in frame.columns if c not in base)]
    return HeadScores(frame, meta, details=details)


def _example_patterns(model: Any, info: ModelInfo, tokens: torch.Tensor) -> np.ndarray:
    """Every head's attention pattern on one prompt, ``[layer, head, query, key]`` float32.

    The runner's pattern pass: it stops after the last attention layer, so no logits are made.
    """
    out = np.zeros((info.n_layers, info.n_heads, len(tokens), len(tokens)), dtype=np.float32)

    def keep(layer: int, pattern: torch.Tensor) -> None:
        out[layer] = pattern[0].detach().float().cpu().numpy()

    with torch.no_grad():
        read_patterns(model, info, tokens[None].to(info.device), keep)
    return out


def _key_summary(pattern: np.ndarray, strings: list[str]) -> dict[str, Any]:
    """Where one head looks on the example: its top keys and its usual offset."""
    seq = pattern.shape[0]
    received = pattern.sum(0)  # total attention each key position receives
    order = np.argsort(-received, kind="stable")[:_TOP_KEYS]
    argmax = pattern.argmax(-1)
    offsets = np.arange(seq) - argmax
    queries = np.arange(1, seq)  # the first query can only look at itself
    to_bos = float((argmax[queries] == 0).mean()) if seq > 1 else 0.0
    values, counts = np.unique(offsets[queries][argmax[queries] != 0], return_counts=True) if seq > 1 else ([], [])
    common = None
    if len(values):
        i = int(np.argmax(counts))
        common = {"offset": int(values[i]), "share": float(counts[i] / len(queries))}
    return {
        "top_keys": [{"pos": int(k), "token": strings[k], "attention": round(float(received[k]) / seq, 4)} for k in order],
        "argmax_bos": round(to_bos, 4),
        "common_offset": common,
    }


def _ov_summary(model: Any, n_sources: int, seed: int) -> tuple[dict[tuple[int, int], dict[str, Any]], str | None]:
    """The strongest (source -> output) promotions and suppressions of every head's OV circuit."""
    from headzoo._circuits import WeightCircuits

    try:
        circuits = WeightCircuits(model)
        ext = circuits.ov_extremes(n_sources, seed, "mlp0")
    except (UnsupportedModelError, InvalidOptionError, AttributeError) as exc:
        return {}, f"OV circuits unavailable: {exc}"
    ids = ext["ids"].tolist()
    all_ids = sorted(set(ids) | set(ext["up_id"].reshape(-1).tolist()) | set(ext["down_id"].reshape(-1).tolist()))
    text = dict(zip(all_ids, _token_strings(model, all_ids)))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    n_layers, n_heads, _ = ext["up"].shape
    for layer in range(n_layers):
        for head in range(n_heads):
            up, down = ext["up"][layer, head], ext["down"][layer, head]
            ups = torch.argsort(-up, stable=True)[:_TOP_OV].tolist()
            downs = torch.argsort(down, stable=True)[:_TOP_OV].tolist()
            out[(layer, head)] = {
                "promotes": [{"source": text[ids[i]], "output": text[int(ext["up_id"][layer, head, i])],
                              "logit": round(float(up[i]), 3)} for i in ups],
                "suppresses": [{"source": text[ids[i]], "output": text[int(ext["down_id"][layer, head, i])],
                                "logit": round(float(down[i]), 3)} for i in downs],
            }
    return out, None


@final
class HeadAtlas:
    """Everything the atlas page shows about one model's heads. Build with :func:`build_atlas`.

    Attributes:
        scores: the :class:`HeadScores` of every detector run.
        heads: one dict per head: ``layer, head, labels`` (detectors over threshold),
            ``top_keys``, ``argmax_bos``, ``common_offset``, ``promotes``, ``suppresses``.
        example_tokens: the example prompt's token strings.
        example_patterns: ``[layer, head, query, key]`` attention on the example (uint8, /255).
        meta: model name and config hash, versions, detector options, probe seeds, date.
    """

    __slots__ = ("scores", "heads", "example_tokens", "example_patterns", "meta")

    def __init__(self, scores: HeadScores, heads: list[dict[str, Any]], example_tokens: list[str],
                 example_patterns: np.ndarray, meta: dict[str, Any]) -> None:
        self.scores = scores
        self.heads = heads
        self.example_tokens = example_tokens
        self.example_patterns = example_patterns
        self.meta = _normalise(meta)

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, labels`` and every detector's score as a column."""
        wide = self.scores.to_frame().pivot(index=["layer", "head"], columns="detector", values="score")
        wide.columns.name = None
        labels = pd.Series({(h["layer"], h["head"]): ", ".join(h["labels"]) for h in self.heads}, name="labels")
        labels.index.names = ["layer", "head"]
        return wide.join(labels, how="right").reset_index()

    def _payload(self) -> dict[str, Any]:
        n_layers, n_heads = self.scores.shape
        matrices = {}
        for name in self.scores.detectors:
            m = self.scores.matrix(name)
            matrices[name] = [[None if v != v else round(float(v), 4) for v in row] for row in m.to_numpy()]
        detector_meta = self.scores.meta["detectors"]
        return {
            "model": self.meta["model"],
            "detectors": [
                {"name": name, "threshold": detector_meta[name].get("threshold"), "kind": detector_meta[name].get("kind"),
                 "variant": detector_meta[name].get("variant"), "reference": detector_meta[name].get("reference")}
                for name in self.scores.detectors
            ],
            "scores": matrices,
            "heads": self.heads,
            "example": {
                "tokens": self.example_tokens,
                "patterns": base64.b64encode(self.example_patterns.tobytes()).decode("ascii"),
                "shape": list(self.example_patterns.shape),
            },
            "meta": {k: self.meta[k] for k in ("created", "versions", "model_config_hash", "skipped_detectors") if k in self.meta},
            "n_layers": n_layers,
            "n_heads": n_heads,
        }

    def html(self) -> str:
        """The page, referring to ``assets/plotly.min.js`` and ``assets/circuitsvis.js``."""
        data = _json_for_script(self._payload())
        title = html.escape(f"headzoo atlas: {self.meta['model'].get('name', 'model')}")
        return _PAGE.replace("__TITLE__", title).replace("__DATA__", data)

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.html``, ``scores.parquet``, ``meta.json`` and ``assets/`` to ``directory``.

        Every file is written to a temporary name and renamed, so a killed run never leaves a
        half-written file; the page is written last.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        assets = out / "assets"
        assets.mkdir(exist_ok=True)
        for name, source in _assets().items():
            target = assets / name
            if not target.exists() or target.stat().st_size != os.path.getsize(source):
                _write_atomic(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
        self.scores.save(out / "scores.parquet")
        meta = json.dumps(self.meta, indent=1, ensure_ascii=False, allow_nan=False)
        _write_atomic(out / "meta.json", lambda tmp: Path(tmp).write_text(meta, encoding="utf-8"))
        page = self.html()
        _write_atomic(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        return out

    def __repr__(self) -> str:
        n_layers, n_heads = self.scores.shape
        n_labelled = sum(1 for h in self.heads if h["labels"])
        return (f"HeadAtlas({self.meta['model'].get('name', 'model')}: {n_layers} x {n_heads} heads, "
                f"{len(self.scores.detectors)} detectors, {n_labelled} heads labelled)")

    def _repr_html_(self) -> str:
        """A table of the labelled heads (offline, no script); ``write()`` makes the full page."""
        rows = []
        for h in self.heads:
            if h["labels"]:
                rows.append(f"<tr><td>L{h['layer']}H{h['head']}</td><td>{html.escape(', '.join(h['labels']))}</td></tr>")
        body = "".join(rows) or "<tr><td colspan=2>no head passes a detector's threshold</td></tr>"
        return (f"<div><p>{html.escape(repr(self))}</p><table><thead><tr><th>head</th><th>labels</th></tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


def _assets() -> dict[str, str]:
    import circuitsvis
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    cv_js = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    for path in (plotly_js, cv_js):
        if not path.exists():
            raise FileNotFoundError(f"the atlas needs {path}, which this plotly/circuitsvis install lacks")
    return {"plotly.min.js": str(plotly_js), "circuitsvis.js": str(cv_js)}


def build_atlas(
    model: Any,
    detectors: Any = None,
    *,
    example: Any = None,
    seed: int = 0,
    ov_sources: int = _OV_SOURCES,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **options: Any,
) -> HeadAtlas:
    """Score every head with every detector and gather what the atlas page shows.

    Args:
        model: any TransformerLens model.
        detectors: as for :func:`hz.detect` (``None``: all registered).
        example: the prompt whose attention patterns the head cards show: text or token ids.
            ``None``: a repeated-random-token prompt (``[BOS] r r``, up to 20 tokens a half).
        seed: seeds the probes, the example and the OV token sample.
        ov_sources: source tokens sampled for each head's OV promotions and suppressions.
        cache_dir: where finished detectors are kept while building, so a killed build
            resumes without recomputing them (the command line uses ``DIR/.partial``).
        **options: passed to :func:`hz.detect` (probe and detector options).

    Returns:
        :class:`HeadAtlas`; ``atlas.write(directory)`` writes the page.
    """
    info = model_info(model)
    selected = select_detectors(detectors, dict(options, seed=seed))
    explicit = detectors is not None
    cache = Path(cache_dir) if cache_dir is not None else None
    parts: list[HeadScores] = []
    skipped: dict[str, str] = {}
    key = info.config_hash()
    for unit in _units(selected):
        names = [d.name for d in unit]
        tag = "+".join(names)
        stamp = json.dumps({"model": key, "options": [d.options() for d in unit], "seed": seed}, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{tag}|{stamp}".encode()).hexdigest()[:16]
        path = cache / f"{names[0]}-{digest}.parquet" if cache is not None else None
        if path is not None and path.exists():
            try:
                done = HeadScores.load(path)
                if done.meta.get("atlas_stamp") == stamp:
                    parts.append(done)
                    continue
            except Exception:  # a damaged cache file is recomputed, never trusted
                pass
        try:
            part = run_detectors(model, unit, tokens=None, cache=None, explicit=explicit, seed=seed, progress=progress,
                           **{k: v for k, v in options.items() if k in _unit_options(unit)})
        except DetectorNotApplicableError as exc:
            if explicit:
                raise
            skipped.update({n: str(exc) for n in names})
            continue
        meta = part.meta
        meta["atlas_stamp"] = stamp
        part = HeadScores(part.to_frame(), meta, details={n: part.details(n) for n in part.detectors if _has_details(part, n)})
        skipped.update(part.meta.get("skipped_detectors", {}))
        if path is not None:
            part.save(path)
        parts.append(part)
    if not parts:
        raise DetectorNotApplicableError(f"no selected detector applies to this model: {skipped}")
    scores = _merge(parts)
    ids = _example_ids(model, info, example, seed)
    strings = _token_strings(model, ids.tolist())
    patterns = _example_patterns(model, info, ids)
    ov, ov_note = _ov_summary(model, ov_sources, seed)
    labels = scores.labels()
    heads = []
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            mine = labels[(labels["layer"] == layer) & (labels["head"] == head)]
            heads.append({
                "layer": layer, "head": head, "labels": mine["detector"].tolist(),
                **_key_summary(patterns[layer, head], strings),
                **ov.get((layer, head), {"promotes": [], "suppresses": []}),
            })
    meta = {
        "format": _FORMAT,
        "model": info.config_dict(),
        "model_config_hash": key,
        "versions": library_versions(),
        "detectors": scores.meta["detectors"],
        "probes": scores.meta.get("probes", {}),
        "seed": seed,
        "example": {"source": "user" if example is not None else "repeated_random_tokens", "seed": seed, "length": len(ids)},
        "ov": {"n_sources": ov_sources, "seed": seed, "embedding": "mlp0", "note": ov_note},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    skipped.update(scores.meta.get("skipped_detectors", {}))
    if skipped:
        meta["skipped_detectors"] = skipped
    quantised = np.clip(np.rint(patterns * 255), 0, 255).astype(np.uint8)
    return HeadAtlas(scores, heads, strings, quantised, meta)


def _unit_options(unit: list[Detector]) -> set[str]:
    from headzoo._runner import PROBE_OPTIONS

    names = set(PROBE_OPTIONS) if any(isinstance(d, PatternDetector) for d in unit) else set()
    for d in unit:
        names |= {f.name for f in dataclasses.fields(d)}  # type: ignore[arg-type]
    return names - {"seed"}


def _has_details(scores: HeadScores, name: str) -> bool:
    try:
        scores.details(name)
    except KeyError:
        return False
    return True


def _example_ids(model: Any, info: ModelInfo, example: Any, seed: int) -> torch.Tensor:
    if example is None:
        probe = RepeatedTokens(n_prompts=1, seed=seed, half_len=None)
        half, _, _ = probe.resolve(info)
        probe = dataclasses.replace(probe, half_len=min(20, half))
        return next(iter(probe.batches(info)))[0]
    prompts = as_prompts(model, info, example, "example")
    if len(prompts) != 1:
        raise InvalidTokensError(f"example must be one prompt; got {len(prompts)}")
    if len(prompts[0]) > 128:
        raise InvalidTokensError(f"example has {len(prompts[0])} tokens; the atlas shows at most 128 (shorten it)")
    return prompts[0]


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2733; background: #f6f7f9; }
 header { background: #1d2733; color: #fff; padding: 14px 24px; }
 header h1 { margin: 0; font-size: 20px; }
 header p { margin: 4px 0 0; font-size: 13px; color: #c6d0dc; }
 main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(320px, 2fr); gap: 16px; padding: 16px 24px; }
 section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); padding: 12px 16px; margin-bottom: 16px; }
 h2 { font-size: 16px; margin: 4px 0 10px; }
 #heatmaps { display: flex; flex-wrap: wrap; gap: 8px; }
 .heatmap { width: 270px; height: 250px; }
 table { border-collapse: collapse; width: 100%; font-size: 13px; }
 th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e5e8ec; white-space: nowrap; }
 th { cursor: pointer; background: #eef1f4; position: sticky; top: 0; }
 th.sorted-asc::after { content: " \25B2"; } th.sorted-desc::after { content: " \25BC"; }
 tbody tr { cursor: pointer; } tbody tr:hover { background: #eef5ff; } tr.selected { background: #dbe9ff; }
 #table-wrap { max-height: 480px; overflow: auto; }
 #search { width: 100%; padding: 6px 8px; margin-bottom: 8px; font-size: 14px; box-sizing: border-box; }
 .label { display: inline-block; background: #e3ecfa; color: #1d4f91; border-radius: 10px; padding: 1px 8px; margin: 1px; font-size: 12px; }
 .tok { font-family: ui-monospace, Menlo, monospace; background: #f1f3f5; padding: 0 4px; border-radius: 3px; white-space: pre; }
 #card { position: sticky; top: 12px; }
 #card[hidden] { display: none; }
 .muted { color: #6b7785; font-size: 13px; }
 .pattern { min-height: 120px; }
</style>
</head>
<body>
<header><h1 id="title"></h1><p id="subtitle"></p></header>
<main>
 <div>
  <section><h2>Scores per detector (layer x head)</h2><p class="muted">Click a cell to open the head.</p><div id="heatmaps"></div></section>
  <section><h2>Heads</h2>
   <input id="search" type="search" placeholder="Search heads, e.g. induction or L2H3" aria-label="search heads">
   <div id="table-wrap"><table id="heads"><thead></thead><tbody></tbody></table></div>
  </section>
 </div>
 <div>
  <section id="card" hidden>
   <h2 id="card-title"></h2>
   <div id="card-labels"></div>
   <h3>Scores</h3><table id="card-scores"><tbody></tbody></table>
   <h3>Attention on the example prompt</h3><div id="card-pattern" class="pattern"></div>
   <h3>Keys it attends to most</h3><p id="card-offset" class="muted"></p><table id="card-keys"><tbody></tbody></table>
   <h3>OV circuit: promotes</h3><table id="card-promotes"><tbody></tbody></table>
   <h3>OV circuit: suppresses</h3><table id="card-suppresses"><tbody></tbody></table>
  </section>
  <section id="card-empty"><p class="muted">Select a head in a heatmap or the table to see its card.</p></section>
 </div>
</main>
<script id="atlas-data" type="application/json">__DATA__</script>
<script src="assets/plotly.min.js"></script>
<script src="assets/circuitsvis.js"></script>
<script>
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

  // overview heatmaps
  const maps = document.getElementById("heatmaps");
  data.detectors.forEach(d => {
    const div = el("div", undefined, "heatmap"); div.id = "heatmap-" + d.name; maps.appendChild(div);
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
    if (location.hash !== "#" + headName(h)) history.replaceState(null, "", "#" + headName(h));
  }
  const fromHash = data.heads.find(h => "#" + headName(h) === location.hash);
  if (fromHash) select(fromHash);
})();
</script>
</body>
</html>
"""
