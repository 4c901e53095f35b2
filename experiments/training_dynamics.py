"""Training dynamics: when do the zoo's induction and previous-token heads form, and does it
coincide with the drop in the loss on the induction task? (Olsson et al. 2022, "In-context
learning and induction heads": induction heads form in a phase change visible as a bump in the
loss curve.) A sweep scores every head of every training snapshot; the figure puts the loss
curves above the head scores on one log-step axis.

Run, on a finished ``train_zoo.py --checkpoints N`` run::

    python experiments/train_zoo.py --config cpu --checkpoints 32 --out /work/runs/zoo-cpu
    python experiments/training_dynamics.py --run /work/runs/zoo-cpu --out results/training-dynamics

``hz.sweep`` scores ``RUN/checkpoints/step-*`` into ``--out`` (its results dataset and page).
The script then writes, under ``--docs`` (default: the repository's ``docs/``), the page
``training-dynamics.md`` with the numbers of this run, the figure ``training-dynamics.png``
(plotly static export, needs kaleido) or else ``training-dynamics.svg`` (drawn here, no extra
dependency), and the data behind both in ``docs/data/training-dynamics-scores.csv`` and
``docs/data/training-dynamics-loss.csv``; the interactive figure goes to
``--out/training-dynamics.html``. ``--results CSV`` redraws from a saved scores table without
sweeping again. The numbers the page quotes are printed.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DETECTORS = ("induction", "previous_token", "duplicate_token")
#: the two head types whose formation the figure marks, with their colours
SHOWN = {"induction": "#d62728", "previous_token": "#1f77b4"}
LOSSES = {"loss": ("training loss", "#444444"), "loss_induction": ("loss on induction tokens", "#ff7f0e")}
SCORE_COLUMNS = ["series", "model", "step", "detector", "layer", "head", "score", "threshold", "passes"]


def read_log(run: Path) -> pd.DataFrame:
    """``RUN/log.jsonl`` as a frame: ``step, loss, loss_<task>...`` sorted by step, one row per
    step (a resumed run may log a step twice; the later line wins)."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: --run must be an OUT folder of experiments/train_zoo.py")
    log = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return log.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def sweep_checkpoints(run: Path, out: Path, detectors: list[str], executor: str | None, workers: int | None) -> pd.DataFrame:
    """Score every snapshot of the run with hz.sweep (no atlases: scores are all the figure needs)."""
    import headzoo as hz

    pattern = run / "checkpoints" / "step-*"
    if not any(run.glob("checkpoints/step-*")):
        raise SystemExit(f"no snapshots match {pattern}: train with experiments/train_zoo.py --checkpoints N")
    sweep = hz.sweep(str(pattern), detectors, out=out, executor=executor, workers=workers, seed=0,  # pyright: ignore[reportAttributeAccessIssue]
                     atlas=False, examples=False, importance=False)
    return sweep.to_frame()


def _top_head(formation: pd.DataFrame, detector: str) -> dict[str, Any] | None:
    """The detector's head that ends highest among those that formed (stay over threshold to the
    end); if none formed, the one that ends highest, marked ``formed: False``."""
    rows = formation[formation["detector"] == detector]
    if rows.empty:
        return None
    formed = rows[rows["step"].notna()]
    pick = (formed if not formed.empty else rows).sort_values("final_score", ascending=False, kind="stable").iloc[0]
    return {"detector": detector, "layer": int(pick["layer"]), "head": int(pick["head"]),
            "label": f"L{int(pick['layer'])}H{int(pick['head'])}", "formed": not formed.empty,
            "step": None if pd.isna(pick["step"]) else int(pick["step"]),
            "first_step": None if pd.isna(pick["first_step"]) else int(pick["first_step"]),
            "final_score": float(pick["final_score"])}


def _loss_at(log: pd.DataFrame, column: str, step: float) -> float:
    """The logged loss at ``step``, read off the curve between logged steps."""
    part = log[["step", column]].dropna()
    return float(np.interp(step, part["step"].to_numpy(float), part[column].to_numpy(float)))


def findings(results: pd.DataFrame, log: pd.DataFrame, formation: pd.DataFrame) -> dict[str, Any]:
    """The numbers the page quotes, from the sweep's results, the training log and
    ``formation_steps(results)``. Nothing here is typed in by hand.

    Returns a dict: ``series, steps`` (the snapshot steps), ``heads`` ({detector: top head or
    None}, see :func:`_top_head`, plus ``score_before``: its score at the snapshot before it
    formed), ``passing`` ({detector: labels of the heads over threshold at the last step}),
    ``loss`` (first, last, and the induction loss's half-way step: the first logged step where
    it is below the mean of its first and last values) and ``at`` ({detector: the losses at
    the snapshot before the head formed and at the one where it did}).
    """
    steps = sorted(int(s) for s in results["step"].dropna().unique())
    last = results[results["step"] == steps[-1]]
    out: dict[str, Any] = {"series": sorted(map(str, results["series"].unique())), "steps": steps, "heads": {},
                           "passing": {}, "at": {}}
    for detector in results["detector"].unique():
        rows = last[(last["detector"] == detector) & last["passes"]].sort_values("score", ascending=False)
        out["passing"][str(detector)] = [f"L{int(r.layer)}H{int(r.head)}" for r in rows.itertuples()]
    for detector in SHOWN:
        top = _top_head(formation, detector)
        if top is not None and top["step"] is not None:
            before = max([s for s in steps if s < top["step"]], default=top["step"])
            row = results[(results["detector"] == detector) & (results["layer"] == top["layer"])
                          & (results["head"] == top["head"]) & (results["step"] == before)]
            top["step_before"] = before
            top["score_before"] = float(row["score"].iloc[0]) if len(row) else math.nan
            out["at"][detector] = {column: {"before": _loss_at(log, column, before), "at": _loss_at(log, column, top["step"])}
                                   for column in LOSSES if column in log}
        out["heads"][detector] = top
    loss = {column: {"first": float(log[column].dropna().iloc[0]), "last": float(log[column].dropna().iloc[-1])}
            for column in LOSSES if column in log}
    if "loss_induction" in loss:
        half = (loss["loss_induction"]["first"] + loss["loss_induction"]["last"]) / 2
        below = log[log["loss_induction"] <= half]["step"]
        loss["loss_induction"]["half_step"] = int(below.iloc[0]) if len(below) else None
    out["loss"] = loss
    return out


def _score_curves(results: pd.DataFrame, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """One curve per (shown detector, head): x = step + 1, y = score, highlighted when the head
    ends over threshold; highlighted curves last, so they are drawn on top."""
    passing = facts["passing"]
    curves = []
    for detector in SHOWN:
        part = results[results["detector"] == detector].sort_values("step")
        for (layer, head), rows in part.groupby(["layer", "head"], sort=True):
            label = f"L{int(layer)}H{int(head)}"  # pyright: ignore[reportArgumentType]
            curves.append({"detector": detector, "label": label, "name": f"{detector} {label}",
                           "highlight": label in passing.get(detector, []),
                           "x": (rows["step"].to_numpy(float) + 1).tolist(), "y": rows["score"].to_numpy(float).tolist()})
    return sorted(curves, key=lambda c: c["highlight"])


def _marks(facts: dict[str, Any]) -> list[tuple[float, str, str]]:
    """(step + 1, text, colour) of each shown detector's top head that formed."""
    return [(top["step"] + 1, f"{detector} {top['label']} forms (step {top['step']})", SHOWN[detector])
            for detector, top in facts["heads"].items() if top and top["step"] is not None]


def _threshold(results: pd.DataFrame) -> float | None:
    values = results[results["detector"].isin(list(SHOWN))]["threshold"].dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def figure(results: pd.DataFrame, log: pd.DataFrame, facts: dict[str, Any]) -> Any:
    """The plotly figure: top, the training loss and the induction-task loss; bottom, the
    induction and previous-token score of every head (those ending over threshold in colour);
    x = step + 1 on a log axis shared by both rows; dashed marks where the top heads form."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("loss", "head scores (coloured: over threshold at the last step)"))
    for column, (name, colour) in LOSSES.items():
        if column in log:
            part = log[["step", column]].dropna()
            fig.add_trace(go.Scatter(x=part["step"] + 1, y=part[column], name=name, mode="lines",
                                     line=dict(color=colour, width=2)), row=1, col=1)
    for c in _score_curves(results, facts):
        dash = "solid" if c["detector"] == "induction" else "dot"
        line = dict(color=SHOWN[c["detector"]], width=2.5, dash=dash) if c["highlight"] else dict(color="#bbbbbb", width=1, dash=dash)
        fig.add_trace(go.Scatter(x=c["x"], y=c["y"], name=c["name"], mode="lines+markers" if c["highlight"] else "lines",
                                 line=line, marker=dict(size=4), showlegend=c["highlight"],
                                 legendgroup=c["detector"] if not c["highlight"] else None,
                                 hovertemplate=f"{html.escape(c['name'])}<br>step+1 %{{x}}<br>score %{{y:.3f}}<extra></extra>"),
                      row=2, col=1)
    threshold = _threshold(results)
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="#888888", dash="dash", width=1), row=2, col=1,  # pyright: ignore[reportArgumentType]
                      annotation_text=f"threshold {threshold:g}", annotation_position="bottom right")
    for x, text, colour in _marks(facts):
        fig.add_vline(x=x, line=dict(color=colour, dash="dash", width=1.5), row="all", col=1)  # pyright: ignore[reportArgumentType]
        fig.add_annotation(x=math.log10(x), y=1.0, xref="x2", yref="y2 domain", text=html.escape(text), showarrow=False,
                           xanchor="left", yanchor="top", font=dict(color=colour, size=11), textangle=-90)
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_xaxes(type="log", title_text="training step + 1", row=2, col=1)
    fig.update_yaxes(title_text="cross-entropy (nats)", row=1, col=1)
    fig.update_yaxes(title_text="score", range=[0, 1.02], row=2, col=1)
    fig.update_layout(height=720, width=960, template="plotly_white", title=f"Heads forming during training: {', '.join(facts['series'])}")
    return fig


def figure_svg(results: pd.DataFrame, log: pd.DataFrame, facts: dict[str, Any], *, width: int = 900, height: int = 640) -> str:
    """The same figure as a small self-contained SVG (for when plotly cannot export a PNG)."""
    left, right, top, gap, bottom = 70, 270, 40, 50, 50
    panel_h = (height - top - gap - bottom) / 2
    xs = [x for c in _score_curves(results, facts) for x in c["x"]] + (log["step"] + 1).tolist()
    lo, hi = math.floor(math.log10(max(min(xs), 1))), math.ceil(math.log10(max(xs)))
    hi = max(hi, lo + 1)

    def px(x: float) -> float:
        return left + (math.log10(max(x, 1)) - lo) / (hi - lo) * (width - left - right)

    def py(y: float, panel: int) -> float:
        y0, y1 = ranges[panel]
        base = top + panel * (panel_h + gap)
        return base + panel_h - (min(max(y, y0), y1) - y0) / (y1 - y0) * panel_h

    def text(x: float, y: float, s: str, **attrs: Any) -> str:
        extra = " ".join(f'{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in attrs.items())
        return f'<text x="{x:.1f}" y="{y:.1f}" {extra}>{html.escape(s)}</text>'

    def polyline(points: list[tuple[float, float]], colour: str, w: float, dash: str = "") -> str:
        d = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
        return f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{w}"{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>'

    losses = [c for c in LOSSES if c in log]
    loss_max = max(float(log[c].max()) for c in losses) if losses else 1.0
    ranges = [(0.0, math.ceil(loss_max)), (0.0, 1.0)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
             text(left, 22, f"Heads forming during training: {', '.join(facts['series'])}", font_size=15, font_weight="bold")]
    for panel, (y0, y1) in enumerate(ranges):
        base = top + panel * (panel_h + gap)
        parts.append(f'<rect x="{left}" y="{base:.1f}" width="{width - left - right}" height="{panel_h:.1f}" fill="none" stroke="#999"/>')
        for k in range(5):
            y = y0 + (y1 - y0) * k / 4
            parts.append(text(left - 6, py(y, panel) + 4, f"{y:g}", text_anchor="end"))
        for e in range(lo, hi + 1):
            parts.append(f'<line x1="{px(10**e):.1f}" x2="{px(10**e):.1f}" y1="{base:.1f}" y2="{base + panel_h:.1f}" stroke="#eee"/>')
            if panel == 1:
                parts.append(text(px(10**e), base + panel_h + 16, f"{10**e:g}", text_anchor="middle"))
        parts.append(text(18, base + panel_h / 2, "loss (nats)" if panel == 0 else "score", text_anchor="middle",
                          transform=f"rotate(-90 18 {base + panel_h / 2:.1f})"))
    parts.append(text(left + (width - left - right) / 2, height - 10, "training step + 1 (log scale)", text_anchor="middle"))
    legend: list[tuple[str, str, str]] = []
    for column in losses:
        name, colour = LOSSES[column]
        part = log[["step", column]].dropna()
        parts.append(polyline([(px(s + 1), py(v, 0)) for s, v in zip(part["step"], part[column])], colour, 2))
        legend.append((name, colour, ""))
    threshold = _threshold(results)
    if threshold is not None:
        y = py(threshold, 1)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" stroke-dasharray="5 4"/>')
        parts.append(text(width - right - 4, y - 4, f"threshold {threshold:g}", text_anchor="end", fill="#666"))
    for c in _score_curves(results, facts):
        dash = "" if c["detector"] == "induction" else "2 3"
        colour, w = (SHOWN[c["detector"]], 2.5) if c["highlight"] else ("#c8c8c8", 1)
        parts.append(polyline([(px(x), py(y, 1)) for x, y in zip(c["x"], c["y"])], colour, w, dash))
        if c["highlight"]:
            legend.append((c["name"], colour, dash))
    legend.append(("other heads", "#c8c8c8", ""))
    for x, label, colour in _marks(facts):
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + 2 * panel_h + gap:.1f}" stroke="{colour}" '
                     'stroke-dasharray="6 4" stroke-width="1.5"/>')
        legend.append((label, colour, "6 4"))
    for i, (label, colour, dash) in enumerate(legend):
        y = top + 8 + 18 * i
        parts.append(polyline([(width - right + 12, y), (width - right + 36, y)], colour, 2.5, dash))
        parts.append(text(width - right + 40, y + 4, label, font_size=11))  # right margin fits ~40 characters
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


PAGE = """# Training dynamics: watching heads form

Induction heads form in a sudden phase change early in training, visible as a drop in the loss on
tokens that can be predicted by copying from earlier in the context (Olsson et al. 2022,
[In-context learning and induction heads](https://arxiv.org/abs/2209.11895)). headzoo can watch it
happen: `experiments/train_zoo.py --checkpoints N` keeps log-spaced snapshots of a training run,
and `hz.sweep` scores every head of every snapshot.

```bash
{train_command}
python experiments/training_dynamics.py --run runs/{series} --out results/training-dynamics
```

![{alt}]({figure})

*Top: the training loss and the loss on induction tokens. Bottom: the induction score (solid) and
previous-token score (dotted) of every head of {series} at each of its {n_steps} snapshots (steps
{first_step} to {last_step}); heads over the threshold at the last step are in colour. Dashed
vertical lines: the steps at which `formation_steps` says the top heads form (the first snapshot
from which the score stays over threshold to the end). The x axis is step + 1 on a log scale.*

## What the run shows

{findings}

The scores behind the figure are in [`data/training-dynamics-scores.csv`](data/training-dynamics-scores.csv)
(one row per snapshot, detector and head, as `Sweep.to_frame()` gives them) and the loss curve in
[`data/training-dynamics-loss.csv`](data/training-dynamics-loss.csv); the script prints every number
quoted here. In Python, the same analysis is (not run by the docs tests: it needs a finished training run):

```
sweep = hz.sweep("runs/{series}/checkpoints/step-*", ["induction", "previous_token"], out="sweep",
                 atlas=False, examples=False, importance=False)
from headzoo._sweep_page import formation_steps
formation_steps(sweep.to_frame())   # per head: step (formed), first_step, final_score
```
"""


def _head_sentence(detector: str, top: dict[str, Any] | None, at: dict[str, Any]) -> str:
    name = detector.replace("_", "-")
    if top is None:
        return f"- No {name} scores were recorded."
    if top["step"] is None:
        return (f"- No {name} head stays over threshold to the end; the highest at the last step is {top['label']} "
                f"({top['final_score']:.2f}).")
    s = (f"- The {name} head **{top['label']}** forms at step **{top['step']}**: its score goes from "
         f"{top['score_before']:.2f} at step {top['step_before']} to over threshold and ends at {top['final_score']:.2f}")
    if top["first_step"] is not None and top["first_step"] != top["step"]:
        s += f" (it first crossed at step {top['first_step']} and fell back)"
    s += "."
    if "loss_induction" in at:
        li = at["loss_induction"]
        s += (f" Over the same snapshots the induction-token loss goes from {li['before']:.2f} to {li['at']:.2f} nats"
              f" and the training loss from {at['loss']['before']:.2f} to {at['loss']['at']:.2f}.")
    return s


def page(facts: dict[str, Any], *, config: str, figure_name: str, train_command: str | None = None) -> str:
    """The markdown page, every number taken from ``facts`` (see :func:`findings`)."""
    lines = [_head_sentence(d, facts["heads"].get(d), facts["at"].get(d, {})) for d in SHOWN]
    loss = facts["loss"]
    if "loss_induction" in loss:
        li = loss["loss_induction"]
        half = f"by step {li['half_step']}" if li.get("half_step") is not None else "not within the run"
        lines.append(f"- The induction-token loss falls from {li['first']:.2f} nats at the start to {li['last']:.2f} at the end; "
                     f"it is half-way down {half}. The training loss goes from {loss['loss']['first']:.2f} to "
                     f"{loss['loss']['last']:.2f}.")
    for detector, heads in facts["passing"].items():
        lines.append(f"- Over the {detector} threshold at the last step: {', '.join(heads) if heads else 'no head'}.")
    ind, prev = facts["heads"].get("induction"), facts["heads"].get("previous_token")
    if ind and prev and ind["step"] is not None and prev["step"] is not None:
        order = "before" if prev["step"] < ind["step"] else "at the same snapshot as" if prev["step"] == ind["step"] else "after"
        lines.append(f"- The previous-token head forms {order} the induction head, "
                     "as the two-head induction circuit (a previous-token head feeding the induction head's keys) predicts"
                     + ("." if order != "after" else " only if it is not the one the induction head reads from."))
    steps = facts["steps"]
    series = facts["series"][0] if facts["series"] else "the run"
    train_command = train_command or f"python experiments/train_zoo.py --config {config} --checkpoints {len(steps)} --out runs/{series}"
    return PAGE.format(config=config, train_command=train_command, n_steps=len(steps), series=series, first_step=steps[0], last_step=steps[-1],
                       figure=figure_name, alt=f"loss and head scores of {series} over training", findings="\n".join(lines))


def write_outputs(results: pd.DataFrame, log: pd.DataFrame, facts: dict[str, Any], *, out: Path, docs: Path,
                  config: str, train_command: str | None = None) -> list[Path]:
    """Write the figure (PNG if plotly can export one, else SVG), the interactive HTML, the
    data CSVs and the page; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    (docs / "data").mkdir(parents=True, exist_ok=True)
    fig = figure(results, log, facts)
    written = [out / "training-dynamics.html"]
    fig.write_html(written[0], include_plotlyjs=True)  # opens offline
    try:
        fig.write_image(docs / "training-dynamics.png", scale=1)
        figure_name = "training-dynamics.png"
    except (ImportError, ValueError, RuntimeError):  # no kaleido (or no browser for it): draw the SVG ourselves
        (docs / "training-dynamics.svg").write_text(figure_svg(results, log, facts))
        figure_name = "training-dynamics.svg"
    written.append(docs / figure_name)
    scores = results[[c for c in SCORE_COLUMNS if c in results]].sort_values(["series", "step", "detector", "layer", "head"])
    scores.to_csv(docs / "data" / "training-dynamics-scores.csv", index=False, float_format="%.6g")
    log.to_csv(docs / "data" / "training-dynamics-loss.csv", index=False, float_format="%.6g")
    (docs / "training-dynamics.md").write_text(page(facts, config=config, figure_name=figure_name, train_command=train_command))
    return [*written, docs / "data" / "training-dynamics-scores.csv", docs / "data" / "training-dynamics-loss.csv",
            docs / "training-dynamics.md"]


def read_results(path: Path) -> pd.DataFrame:
    """A scores table written by this script (``docs/data/training-dynamics-scores.csv``)."""
    frame = pd.read_csv(path)
    frame["step"] = frame["step"].astype("Int64")
    frame["passes"] = frame["passes"].astype(bool)
    return frame


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("/work/runs/zoo-cpu"), help="an OUT folder of train_zoo.py --checkpoints N")
    p.add_argument("--out", type=Path, default=Path("results/training-dynamics"), help="the sweep's folder")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="where the page, figure and data go")
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), help="detectors to sweep (retrieval costs more)")
    p.add_argument("--executor", default=None, choices=["serial", "ray"], help="default: hz.sweep's choice")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--train-command", default=None,
                   help="the train_zoo.py command that made --run, quoted on the page (default: one inferred from the snapshots)")
    p.add_argument("--results", type=Path, default=None, help="redraw from this scores CSV instead of sweeping")
    args = p.parse_args()

    from headzoo._sweep_page import formation_steps  # pyright: ignore[reportMissingImports]

    log = read_log(args.run)
    results = read_results(args.results) if args.results else sweep_checkpoints(args.run, args.out, args.detectors, args.executor, args.workers)
    formation = formation_steps(results)
    facts = findings(results, log, formation)
    config = next(iter(sorted(results["series"].astype(str).unique())), "zoo-cpu").removeprefix("zoo-")
    paths = write_outputs(results, log, facts, out=args.out, docs=args.docs, config=config,
                          train_command=args.train_command)
    print(json.dumps(facts, indent=1, default=str))
    shown = formation[formation["detector"].isin(list(SHOWN)) & formation["step"].notna()]
    print(shown.sort_values(["detector", "final_score"], ascending=[True, False]).to_string(index=False))
    print("wrote", *map(str, paths), sep="\n  ")


if __name__ == "__main__":
    main()
