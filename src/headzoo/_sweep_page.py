"""Across-model analysis of a sweep, and the sweep's index page.

A sweep scores every head of many models, or of one model's training checkpoints. Over
checkpoints, :func:`formation_steps` finds when each head becomes what a detector looks for:
the step from which its score stays at or over the detector's threshold, as induction and
previous-token heads form at the loss drop (Olsson et al. 2022, "In-context Learning and
Induction Heads"). Across models, :func:`match_heads` pairs heads that do the same jobs: each
head is described by its profile of detector scores (standardised per detector over the heads
of both models), and heads are matched one-to-one by the cosine similarity of their profiles,
so models of different shapes can be compared.

:func:`render_sweep_page` writes the page (package data in ``headzoo/_data/sweep/``, filled by
:func:`headzoo._atlas.render_page` with the JSON of one typed :class:`SweepPayload`): per detector
score against step for every head of each checkpoint series (drawn as SVG on the page), the top
heads of each plain model, the formation and matched-heads tables and the jobs with links to
each model's atlas. :func:`sweep_figure` draws the same curves as a plotly figure.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import re
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pandas as pd

from headzoo._errors import EmptyResultError, InvalidOptionError, did_you_mean

__all__ = ["formation_steps", "match_heads", "sweep_figure", "render_sweep_page", "SweepPayload"]

RESULT_COLUMNS = ("job", "series", "model", "step", "detector", "layer", "head", "score", "threshold", "passes")
JOB_COLUMNS = ("job", "series", "model", "step", "source", "revision", "status", "error", "seconds", "atlas")
_KEYS = ["series", "detector", "layer", "head"]
_FORMATION_COLUMNS = ["series", "detector", "layer", "head", "step", "first_step", "final_score"]
_MATCH_COLUMNS = ["model_a", "layer_a", "head_a", "model_b", "layer_b", "head_b", "similarity", "shared_labels"]
_LOG_DECADES = 2.0  # steps spanning more than this many decades get a log axis
_TOP_HEADS = 8  # heads per plain model and detector the page ranks
_PAGE_FORMATION_ROWS = 2000  # rows of each table the page carries at most (the frames have all)
_PAGE_MATCH_ROWS = 1000
_MISSING = 65535  # the uint16 code of a head a detector did not score at a step
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


# -- validation ---------------------------------------------------------------------------
def _check_frame(frame: Any, columns: tuple[str, ...] | list[str], what: str, *, allow_empty: bool = False) -> pd.DataFrame:
    """``frame`` (a copy: the caller's frame is never changed) when it is a DataFrame with
    ``columns``.

    Raises:
        InvalidOptionError: not a DataFrame, or columns missing (named).
        EmptyResultError: no rows (unless ``allow_empty``).
    """
    if not isinstance(frame, pd.DataFrame):
        raise InvalidOptionError(f"{what} must be a pandas DataFrame (a sweep's Sweep.to_frame()); got {type(frame).__name__}")
    if not len(frame) and allow_empty:
        return frame.copy()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidOptionError(
            f"{what} lacks the column(s) {missing}; it needs {list(columns)} as hz.sweep writes them "
            "(read the results with Sweep.to_frame() or pd.read_parquet(OUT / 'results'))"
        )
    if not len(frame):
        raise EmptyResultError(f"{what} has no rows: no job of the sweep finished. See the jobs' errors (Sweep.jobs).")
    return frame.copy()


def _results(results: Any, columns: tuple[str, ...] = RESULT_COLUMNS[1:9]) -> pd.DataFrame:
    """The results as the analysis reads them: strings as ``str`` (hive's ``job`` partition comes
    back categorical), ``step`` nullable Int64, and ``passes`` recomputed as ``score >=
    threshold`` (False where there is no threshold)."""
    frame = _check_frame(results, columns, "results")
    for col in ("series", "model", "detector"):
        frame[col] = frame[col].astype(str)
    frame["step"] = frame["step"].astype("Int64")
    frame["layer"] = frame["layer"].astype("int64")
    frame["head"] = frame["head"].astype("int64")
    frame["score"] = frame["score"].astype("float64")
    frame["threshold"] = frame["threshold"].astype("float64")
    if not np.isfinite(frame["score"].to_numpy()).all():
        bad = frame[~np.isfinite(frame["score"].to_numpy())].iloc[0]
        raise InvalidOptionError(f"results hold a non-finite score ({bad['score']}) for {bad['model']} "
                                 f"{bad['detector']} L{bad['layer']}H{bad['head']}; drop or recompute it")
    frame["passes"] = (frame["score"] >= frame["threshold"]).fillna(False).astype(bool)
    dup = frame.duplicated(["model", "detector", "layer", "head"])
    if dup.any():
        bad = frame[dup].iloc[0]
        raise InvalidOptionError(f"results hold two scores for {bad['model']} {bad['detector']} L{bad['layer']}H{bad['head']}; "
                                 "each model must appear once (give each checkpoint its own label)")
    return frame


def _stepped(frame: pd.DataFrame) -> list[str]:
    """Series with at least two distinct checkpoint steps, in order of first appearance."""
    steps = cast(pd.Series, cast(pd.DataFrame, frame[frame["step"].notna()]).groupby("series", sort=False)["step"].nunique())
    return [str(s) for s, n in zip(steps.index, steps.to_numpy(), strict=True) if int(n) >= 2]


def _model_order(frame: pd.DataFrame) -> list[str]:
    """Models in the schema's order: by series, then step (plain models last within a series), then label."""
    firsts = cast(pd.DataFrame, frame.drop_duplicates("model")[["series", "step", "model"]])
    ordered = firsts.sort_values(by=["series", "step", "model"], na_position="last", kind="stable")
    return [str(m) for m in ordered["model"]]


# -- formation ----------------------------------------------------------------------------
def formation_steps(results: pd.DataFrame) -> pd.DataFrame:
    """When each head of a checkpoint series becomes what each detector looks for.

    Only series with at least two checkpoint steps take part; plain models (no step) do not.
    For each head the checkpoints where it was scored are read in step order, and a head
    passes at a checkpoint when its score is at or over the detector's threshold.

    Args:
        results: a sweep's results (columns of ``Sweep.to_frame()``: at least ``series, model,
            step, detector, layer, head, score, threshold``). Not modified.

    Returns:
        One row per (series, detector, layer, head), sorted that way: ``step`` (Int64) is the
        first checkpoint from which the head passes at every later checkpoint through the last
        (it "stays above threshold"; ``<NA>`` when it fails at the last checkpoint);
        ``first_step`` (Int64) the first checkpoint where it passes at all (``<NA>`` if never;
        a head that crosses and falls back has a ``first_step`` but no ``step``);
        ``final_score`` (float) its score at the last checkpoint. Detectors without a threshold
        never pass. An empty frame (with these columns) when no series has two steps.

    Raises:
        InvalidOptionError: not a DataFrame, columns missing (named), a non-finite score, or
            two rows for the same model and head.
        EmptyResultError: ``results`` has no rows.
    """
    frame = _results(results)
    series = _stepped(frame)
    part = cast(pd.DataFrame, frame[frame["series"].isin(series) & frame["step"].notna()])
    if part.empty:
        return _formation_frame(pd.DataFrame(columns=_FORMATION_COLUMNS))
    # last checkpoint first: a cumulative "all passed so far" marks the checkpoints from which
    # the head stays over threshold through the end
    part = part.sort_values([*_KEYS, "step"], ascending=[True, True, True, True, False], kind="stable")
    groups = part.groupby(_KEYS, sort=True)
    stays = part["passes"].astype("int8").groupby([part[k] for k in _KEYS]).cummin().astype(bool)
    out = cast(pd.Series, groups["score"].first()).to_frame("final_score")
    out["step"] = cast(pd.DataFrame, part[stays]).groupby(_KEYS)["step"].min()
    out["first_step"] = cast(pd.DataFrame, part[part["passes"]]).groupby(_KEYS)["step"].min()
    return _formation_frame(out.reset_index())


def _formation_frame(out: pd.DataFrame) -> pd.DataFrame:
    out = cast(pd.DataFrame, out.reindex(columns=_FORMATION_COLUMNS))
    out = out.astype({"series": str, "detector": str, "layer": "int64", "head": "int64", "step": "Int64",
                      "first_step": "Int64", "final_score": "float64"})
    return out.sort_values(_KEYS, kind="stable").reset_index(drop=True)


# -- matching -----------------------------------------------------------------------------
def _final_models(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the models heads are matched between: every plain model, and for each series
    with checkpoints only its last step."""
    stepped = frame["step"].notna()
    last = frame[stepped].groupby("series")["step"].transform("max")
    keep = ~stepped
    keep[stepped] = frame.loc[stepped, "step"] == last
    return cast(pd.DataFrame, frame[keep])


def _greedy_pairs(sim: np.ndarray, floor: float) -> list[tuple[int, int]]:
    """One-to-one pairs of rows and columns of ``sim`` [n_a, n_b], as the greedy "take the most
    similar pair left" matching picks them, keeping pairs >= ``floor``.

    Done in rounds: a pair that is the best left in both its row and its column is one greedy
    would take (nothing more similar competes for either head), so each round takes all of them
    at once. Ties go to the lower index, as in a stable sort.
    """
    sim = np.where(sim >= floor, sim, -np.inf)
    pairs: list[tuple[int, int]] = []
    while np.isfinite(sim).any():
        best_col = sim.argmax(axis=1)
        best_row = sim.argmax(axis=0)
        rows = np.arange(sim.shape[0])
        mutual = (best_row[best_col] == rows) & np.isfinite(sim[rows, best_col])
        for i in np.nonzero(mutual)[0]:
            j = int(best_col[i])
            pairs.append((int(i), j))
            sim[i, :] = -np.inf
            sim[:, j] = -np.inf
    return pairs


def match_heads(results: pd.DataFrame, *, min_similarity: float = 0.5) -> pd.DataFrame:
    """Heads that do the same jobs in different models, matched by their detector-score profiles.

    Each pair of models is compared (for a checkpoint series only its last step; pairs sharing
    fewer than two detectors are skipped). Over the detectors both ran, each detector's scores
    are standardised across all heads of the two models (mean 0, standard deviation 1; a
    detector that gives every head the same score adds nothing), so a head's profile says which
    detectors it stands out on. Profiles are compared by cosine similarity and heads are paired
    one-to-one, most similar first (greedy), keeping pairs with similarity >= ``min_similarity``.
    The models may differ in shape (layers x heads).

    Args:
        results: a sweep's results (``Sweep.to_frame()``'s columns). Not modified.
        min_similarity: the least cosine similarity a matched pair has, in [-1, 1].

    Returns:
        ``model_a, layer_a, head_a, model_b, layer_b, head_b, similarity, shared_labels``:
        ``model_a`` comes before ``model_b`` in the sweep's order (series, step, model);
        ``shared_labels`` lists the detectors both heads pass, sorted, joined by ``", "``.
        Rows by model pair, then most similar first.

    Raises:
        InvalidOptionError: not a DataFrame, columns missing (named), bad ``min_similarity``.
        EmptyResultError: ``results`` has no rows.
    """
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) or not -1 <= min_similarity <= 1:
        raise InvalidOptionError(f"min_similarity must be a number in [-1, 1] (a cosine similarity); got {min_similarity!r}")
    frame = _final_models(_results(results))
    order = [m for m in _model_order(frame)]
    per_model: dict[str, _Profiles] = {}
    for model, part in frame.groupby("model", sort=False):
        # score and pass per head x detector, as arrays: a 100-model sweep compares 4950 pairs
        table = cast(pd.DataFrame, part.pivot(index=["layer", "head"], columns="detector", values=["score", "passes"]))
        dets = [str(d) for d in cast(pd.DataFrame, table["score"]).columns]
        per_model[str(model)] = _Profiles(
            {d: k for k, d in enumerate(dets)},
            cast(pd.DataFrame, table["score"]).to_numpy(dtype=float),
            cast(pd.DataFrame, table["passes"]).fillna(False).to_numpy(dtype=bool),
            np.array([list(ix) for ix in table.index], dtype=np.int64).reshape(-1, 2))
    parts: list[pd.DataFrame] = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            part = _match_pair(a, per_model[a], b, per_model[b], float(min_similarity))
            if part is not None:
                parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_MATCH_COLUMNS)
    return out.astype({"model_a": str, "layer_a": "int64", "head_a": "int64", "model_b": str, "layer_b": "int64",
                       "head_b": "int64", "similarity": "float64", "shared_labels": str})


@dataclasses.dataclass(frozen=True, slots=True)
class _Profiles:
    """One model's heads as :func:`match_heads` reads them: ``column[detector]`` indexes the
    columns of ``scores`` and ``passes`` [head, detector]; ``heads`` [head, 2] is (layer, head)."""

    column: dict[str, int]
    scores: np.ndarray
    passes: np.ndarray
    heads: np.ndarray


def _match_pair(a: str, pa: _Profiles, b: str, pb: _Profiles, floor: float) -> pd.DataFrame | None:
    """The matched heads of models ``a`` and ``b`` (most similar first), or ``None`` when they
    share fewer than two detectors."""
    dets = sorted(set(pa.column) & set(pb.column))
    if len(dets) < 2:
        return None
    ca, cb = [pa.column[d] for d in dets], [pb.column[d] for d in dets]
    sa, sb = pa.scores[:, ca], pb.scores[:, cb]
    both = np.vstack([sa, sb])
    mean = np.nanmean(both, axis=0)
    std = np.nanstd(both, axis=0)
    std = np.where(std > 0, std, np.inf)  # a constant detector standardises to 0 everywhere
    # a head a detector did not score sits at the mean: it says nothing either way
    za = np.nan_to_num((sa - mean) / std)
    zb = np.nan_to_num((sb - mean) / std)
    na = np.linalg.norm(za, axis=1, keepdims=True)
    nb = np.linalg.norm(zb, axis=1, keepdims=True)
    # einsum, not a BLAS matmul: the matrices are small and BLAS threads fighting over a busy
    # machine's cores made each pair ~5x slower
    sim = np.einsum("ik,jk->ij", za / np.where(na > 0, na, 1), zb / np.where(nb > 0, nb, 1))
    pairs = _greedy_pairs(sim.copy(), floor)
    if not pairs:
        return None
    i = np.array([p[0] for p in pairs], dtype=np.int64)
    j = np.array([p[1] for p in pairs], dtype=np.int64)
    both_pass = pa.passes[i][:, ca] & pb.passes[j][:, cb]
    names = np.array(dets, dtype=object)
    out = pd.DataFrame({
        "model_a": a, "layer_a": pa.heads[i, 0], "head_a": pa.heads[i, 1],
        "model_b": b, "layer_b": pb.heads[j, 0], "head_b": pb.heads[j, 1],
        "similarity": np.clip(sim[i, j], -1.0, 1.0),
        "shared_labels": [", ".join(names[row]) for row in both_pass],
    })
    return out.sort_values("similarity", ascending=False, kind="stable")


# -- the figure ---------------------------------------------------------------------------
def _log_x(steps: Any) -> bool:
    """Steps spanning more than two decades (counting step 0 as 1) get a log axis of step + 1."""
    s = np.asarray(steps, dtype=float)
    return bool(len(s)) and math.log10((s.max() + 1) / (s.min() + 1)) > _LOG_DECADES


def sweep_figure(results: pd.DataFrame, detector: str) -> Any:
    """One detector's score for every head across a sweep, as a plotly ``Figure`` (returned,
    never shown).

    One panel per checkpoint series (score against training step; when the steps span more
    than two decades the axis is logarithmic and shows ``step + 1``, so step 0 keeps its place)
    and one panel for the plain models (score against model, in the sweep's order). One line
    per head, named ``L{layer}H{head}`` (one legend entry per name, shared by the panels); the
    detector's threshold is a dashed line; heads that never reach it in a panel are dimmed.

    Raises:
        InvalidOptionError: not a DataFrame, columns missing, or ``detector`` not in the results
            (the message lists those that are).
        EmptyResultError: ``results`` has no rows.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from headzoo._figures import as_figure

    frame = _results(results)
    names = sorted(set(frame["detector"]))
    if not isinstance(detector, str) or detector not in names:
        raise InvalidOptionError(f"no results for detector {detector!r}.{did_you_mean(str(detector), names)} "
                                 f"The results hold: {', '.join(names)}")
    part = cast(pd.DataFrame, frame[frame["detector"] == detector])
    stepped = _stepped(part)
    panels: list[tuple[str, pd.DataFrame]] = [(s, cast(pd.DataFrame, part[(part["series"] == s) & part["step"].notna()]))
                                              for s in stepped]
    plain = cast(pd.DataFrame, part[~(part["series"].isin(stepped) & part["step"].notna())])
    if len(plain):
        panels.append(("", plain))
    titles = [html.escape(f"series {s}") if s else "models" for s, _ in panels]
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=titles, vertical_spacing=0.12 if len(panels) > 1 else 0.08)
    thr = part["threshold"].dropna()
    threshold = float(thr.iloc[0]) if len(thr) else None
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    heads = sorted(set(zip(part["layer"], part["head"])))
    colour = {h: palette[k % len(palette)] for k, h in enumerate(heads)}
    shown: set[str] = set()
    for row, (series, sub) in enumerate(panels, start=1):
        if series:
            log = _log_x(sub["step"].dropna())
            sub = sub.sort_values("step")
            x_of = (lambda s, log=log: (s["step"].astype(float) + 1) if log else s["step"].astype(float))  # noqa: E731
            fig.update_xaxes(type="log" if log else "linear", title_text="step + 1 (log scale)" if log else "step", row=row, col=1)
        else:
            order = {m: k for k, m in enumerate(_model_order(frame))}
            sub = sub.assign(_o=[order[str(m)] for m in sub["model"]]).sort_values("_o")
            x_of = (lambda s: s["model"].map(html.escape))  # noqa: E731
            fig.update_xaxes(type="category", title_text="model", row=row, col=1)
        for key, line in sub.groupby(["layer", "head"], sort=True):
            layer, head = cast(tuple[int, int], key)
            name = f"L{layer}H{head}"
            ever = bool(line["passes"].any())
            fig.add_trace(go.Scatter(
                x=list(x_of(line)), y=line["score"].tolist(), mode="lines+markers", name=name, legendgroup=name,
                showlegend=name not in shown, opacity=1.0 if ever else 0.25,
                line={"color": colour[(layer, head)] if ever else "#9aa4ae", "width": 2 if ever else 1},
                marker={"size": 5}, hovertemplate=f"{name}<br>%{{x}}: %{{y:.4f}}<extra></extra>",
            ), row=row, col=1)
            shown.add(name)
        if threshold is not None:
            fig.add_hline(y=threshold, line_dash="dash", line_color="#444", row=row, col=1,  # pyright: ignore[reportArgumentType]
                          annotation_text=f"threshold {threshold:g}", annotation_position="top left")
        fig.update_yaxes(title_text="score", row=row, col=1)
    fig.update_layout(title=html.escape(f"headzoo sweep: {detector}"), height=max(360, 320 * len(panels) + 80),
                      legend_title_text="head")
    return as_figure(fig)


# -- the page's data, typed ---------------------------------------------------------------
# Field order is the JSON's key order. Every string reaches the page through to_json() (i.e.
# json_for_script), and sweep.js shows it with textContent and attribute setters only.


@dataclasses.dataclass(frozen=True, slots=True)
class SweepDetector:
    """A detector as the page explains it."""

    name: str
    threshold: float | None
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class SweepCurves:
    """One detector's scores over one series' checkpoints. ``values`` is the base64 of uint16
    ``[step, layer * n_heads + head]`` (little-endian): the score is ``lo + v * (hi - lo) / 65534``,
    65535 where the head was not scored; ``state`` per head: 2 passes at the last checkpoint,
    1 passed at some checkpoint only, 0 never passed."""

    lo: float
    hi: float
    values: str
    state: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SweepSeries:
    """A series of checkpoints (at least two steps): its models in step order and its curves
    per detector (``curves[detector]``). ``log_x``: the steps span more than two decades, so the
    page plots step + 1 on a log axis."""

    name: str
    models: tuple[str, ...]
    steps: tuple[int, ...]
    n_layers: int
    n_heads: int
    log_x: bool
    curves: Mapping[str, SweepCurves]


@dataclasses.dataclass(frozen=True, slots=True)
class SweepRanking:
    """A plain model's top heads for one detector: ``(layer, head, score, passes)``, best first."""

    model: str
    heads: tuple[tuple[int, int, float, bool], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SweepFormation:
    """A row of :func:`formation_steps` (steps ``None`` where ``<NA>``)."""

    series: str
    detector: str
    layer: int
    head: int
    step: int | None
    first_step: int | None
    final_score: float


@dataclasses.dataclass(frozen=True, slots=True)
class SweepMatch:
    """A row of :func:`match_heads`."""

    model_a: str
    layer_a: int
    head_a: int
    model_b: str
    layer_b: int
    head_b: int
    similarity: float
    shared_labels: str


@dataclasses.dataclass(frozen=True, slots=True)
class SweepJob:
    """A row of the jobs table: ``atlas`` is the model's atlas page relative to the sweep's folder."""

    job: str
    series: str
    model: str
    step: int | None
    source: str
    status: str
    seconds: float | None
    atlas: str | None
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class SweepMeta:
    """The header: when, how, with what."""

    created: str | None
    executor: str | None
    seed: int | None
    versions: Mapping[str, str]
    n_models: int
    n_series: int  # series with at least two checkpoint steps


@dataclasses.dataclass(frozen=True, slots=True)
class SweepPayload:
    """Everything ``sweep.js`` reads. ``rankings[detector]`` covers the plain models (and series
    with one checkpoint); ``formation`` and ``matches`` are capped at ``n_formation`` /
    ``n_matches`` rows of the full tables (which the page says)."""

    meta: SweepMeta
    detectors: tuple[SweepDetector, ...]
    series: tuple[SweepSeries, ...]
    rankings: Mapping[str, tuple[SweepRanking, ...]]
    formation: tuple[SweepFormation, ...]
    n_formation: int
    matches: tuple[SweepMatch, ...]
    n_matches: int
    jobs: tuple[SweepJob, ...]

    def to_json(self) -> str:
        """The payload as JSON that is safe inside ``<script>``."""
        from headzoo._atlas import json_for_script

        return json_for_script(dataclasses.asdict(self))


def _int_or_none(v: Any) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def _float_or_none(v: Any) -> float | None:
    if v is None or pd.isna(v):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _str_or_none(v: Any) -> str | None:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _curves(part: pd.DataFrame, steps: list[int], n_layers: int, n_heads: int) -> SweepCurves:
    """One detector over one series, quantised to uint16 per detector range (2 bytes a score:
    a 100-checkpoint, 200-head, 24-detector sweep stays ~1.3 MB of base64)."""
    scores = part["score"].to_numpy(dtype=float)
    lo, hi = float(scores.min()), float(scores.max())
    span = hi - lo if hi > lo else 1.0
    codes = np.full((len(steps), n_layers * n_heads), _MISSING, dtype="<u2")
    where = {s: k for k, s in enumerate(steps)}
    r = np.array([where[int(s)] for s in part["step"]], dtype=np.int64)
    c = part["layer"].to_numpy(dtype=np.int64) * n_heads + part["head"].to_numpy(dtype=np.int64)
    codes[r, c] = np.rint((scores - lo) / span * (_MISSING - 1)).astype("<u2")
    passes = np.zeros((len(steps), n_layers * n_heads), dtype=bool)
    passes[r, c] = part["passes"].to_numpy(dtype=bool)
    # a head's last scored checkpoint decides "passes at the end"
    scored = codes != _MISSING
    final_row = np.where(scored.any(axis=0), len(steps) - 1 - np.argmax(scored[::-1], axis=0), 0)
    last = passes[final_row, np.arange(n_layers * n_heads)]
    state = np.where(last, 2, np.where(passes.any(axis=0), 1, 0))
    return SweepCurves(lo, hi, base64.b64encode(codes.tobytes()).decode("ascii"), tuple(int(x) for x in state))


def _atlas_link(job: str, value: Any) -> str | None:
    """The job's atlas path as a relative link, refusing what would leave the sweep's folder."""
    path = _str_or_none(value)
    if path is None or path == "":
        return None
    if _SCHEME.match(path) or path.startswith(("/", "\\")) or ".." in path.replace("\\", "/").split("/"):
        raise InvalidOptionError(f"job {job!r} has atlas {path!r}; it must be a path relative to the sweep's folder "
                                 "(e.g. 'atlases/<job>/index.html'), with no scheme, no leading '/' and no '..'")
    return path


def _detectors(frame: pd.DataFrame, meta: Mapping[str, Any]) -> tuple[SweepDetector, ...]:
    names = list(dict.fromkeys(frame["detector"])) if len(frame) else []
    declared = meta.get("detectors")
    if isinstance(declared, (list, tuple)):  # the sweep's order, then any others
        names = [str(n) for n in declared if str(n) in names] + [n for n in names if n not in {str(d) for d in declared}]
    described: dict[str, str] = {}
    if isinstance(declared, Mapping):
        described = {str(k): str(v.get("description", "")) for k, v in declared.items() if isinstance(v, Mapping)}
    try:  # the registry's one line on each (names it does not know get none)
        from headzoo._registry import list_detectors

        table = list_detectors()
        described = {**dict(zip(table["name"].astype(str), table["description"].astype(str))), **described}
    except Exception:  # a broken plugin must not stop the page; descriptions are a courtesy
        pass
    out = []
    for name in names:
        thr = frame.loc[frame["detector"] == name, "threshold"].dropna()
        out.append(SweepDetector(name, float(thr.iloc[0]) if len(thr) else None, described.get(name, "")))
    return tuple(out)


def sweep_payload(results: pd.DataFrame, jobs: pd.DataFrame, meta: Mapping[str, Any]) -> SweepPayload:
    """The typed data of the sweep page (see :func:`render_sweep_page`)."""
    if not isinstance(meta, Mapping):
        raise InvalidOptionError(f"meta must be a mapping (the sweep's sweep.json); got {type(meta).__name__}")
    jobs = _check_frame(jobs, [c for c in JOB_COLUMNS if c not in ("source", "revision")], "jobs", allow_empty=True)
    if isinstance(results, pd.DataFrame) and not len(results):
        if not len(jobs):
            raise EmptyResultError("the sweep has no results and no jobs: nothing to show; run hz.sweep(models, out=...) first")
        frame = pd.DataFrame(columns=list(RESULT_COLUMNS))
    else:
        frame = _results(results)
    stepped = _stepped(frame) if len(frame) else []
    series_out = []
    for name in stepped:
        part = cast(pd.DataFrame, frame[(frame["series"] == name) & frame["step"].notna()])
        firsts = part.drop_duplicates("step").sort_values("step")
        steps = [int(s) for s in firsts["step"]]
        n_layers = int(part["layer"].to_numpy().max()) + 1
        n_heads = int(part["head"].to_numpy().max()) + 1
        curves = {str(d): _curves(cast(pd.DataFrame, sub), steps, n_layers, n_heads)
                  for d, sub in part.groupby("detector", sort=False)}
        series_out.append(SweepSeries(name, tuple(str(m) for m in firsts["model"]), tuple(steps), n_layers, n_heads,
                                      _log_x(steps), curves))
    plain = cast(pd.DataFrame, frame[~(frame["series"].isin(stepped) & frame["step"].notna())]) if len(frame) else frame
    rankings: dict[str, tuple[SweepRanking, ...]] = {}
    if len(plain):
        order = {m: k for k, m in enumerate(_model_order(frame))}
        top = plain.sort_values(["score", "layer", "head"], ascending=[False, True, True], kind="stable")
        top = top.groupby(["detector", "model"], sort=False).head(_TOP_HEADS)
        for det, sub in top.groupby("detector", sort=False):
            ranks = []
            for model, rows in sorted(sub.groupby("model", sort=False), key=lambda kv: order[str(kv[0])]):
                ranks.append(SweepRanking(str(model), tuple(
                    (int(la), int(h), round(float(s), 4), bool(p))
                    for la, h, s, p in zip(rows["layer"], rows["head"], rows["score"], rows["passes"], strict=True))))
            rankings[str(det)] = tuple(ranks)
    formation: tuple[SweepFormation, ...] = ()
    n_formation = 0
    matches: tuple[SweepMatch, ...] = ()
    n_matches = 0
    if len(frame):
        form = formation_steps(frame)
        form = cast(pd.DataFrame, form[form["first_step"].notna()])  # heads that never pass are not news
        n_formation = len(form)
        form = form.sort_values(["series", "detector", "step", "first_step", "layer", "head"], na_position="last",
                                kind="stable").head(_PAGE_FORMATION_ROWS)
        formation = tuple(SweepFormation(str(r["series"]), str(r["detector"]), int(r["layer"]), int(r["head"]),
                                         _int_or_none(r["step"]), _int_or_none(r["first_step"]),
                                         round(float(r["final_score"]), 4)) for r in form.to_dict("records"))
        found = match_heads(frame)
        n_matches = len(found)
        # heads that share a label first, then the most similar
        found = found.assign(_l=found["shared_labels"] != "").sort_values(["_l", "similarity"], ascending=[False, False],
                                                                          kind="stable").head(_PAGE_MATCH_ROWS)
        matches = tuple(SweepMatch(str(r["model_a"]), int(r["layer_a"]), int(r["head_a"]), str(r["model_b"]),
                                   int(r["layer_b"]), int(r["head_b"]), round(float(r["similarity"]), 4),
                                   str(r["shared_labels"])) for r in found.to_dict("records"))
    job_rows = tuple(
        SweepJob(str(r["job"]), str(r["series"]), str(r["model"]), _int_or_none(r["step"]),
                 "" if _str_or_none(r.get("source")) is None else str(r.get("source")), str(r["status"]),
                 _float_or_none(r["seconds"]), _atlas_link(str(r["job"]), r["atlas"]), _str_or_none(r["error"]))
        for r in jobs.to_dict("records"))
    versions = meta.get("versions")
    seed = meta.get("seed")
    models = set(frame["model"]) | set(jobs["model"].astype(str)) if len(jobs) else set(frame["model"])
    return SweepPayload(
        meta=SweepMeta(_str_or_none(meta.get("created")), _str_or_none(meta.get("executor")),
                       int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None,
                       {str(k): str(v) for k, v in versions.items()} if isinstance(versions, Mapping) else {},
                       len(models), len(stepped)),
        detectors=_detectors(frame, meta),
        series=tuple(series_out),
        rankings=rankings,
        formation=formation, n_formation=n_formation,
        matches=matches, n_matches=n_matches,
        jobs=job_rows,
    )


def render_sweep_page(results: pd.DataFrame, jobs: pd.DataFrame, meta: Mapping[str, Any]) -> str:
    """The sweep's ``index.html``: one self-contained page (no network, no plotting library; its
    charts are drawn as SVG by its own script) with, per detector, score against step for every
    head of each checkpoint series and the top heads of each plain model; the heads' formation
    steps (:func:`formation_steps`), the heads matched across models (:func:`match_heads`) and
    the jobs, each linking its model's atlas.

    Args:
        results: the sweep's results (``Sweep.to_frame()``); may be empty when every job failed,
            then the page shows the jobs and their errors.
        jobs: the jobs frame (``Sweep.jobs``); ``atlas`` paths relative to the sweep's folder.
        meta: the sweep's ``sweep.json`` (``created``, ``executor``, ``seed``, ``versions``,
            ``detectors`` are shown when present).

    Raises:
        InvalidOptionError: a frame that is not a DataFrame or lacks columns (named), an atlas
            path that is not relative, ``meta`` not a mapping.
        EmptyResultError: no results and no jobs.
    """
    from headzoo._atlas import render_page

    payload = sweep_payload(results, jobs, meta)
    title = f"headzoo sweep: {payload.meta.n_models} model{'s' if payload.meta.n_models != 1 else ''}"
    return render_page("sweep", ("sweep.html", "sweep.css", "sweep.js"), title, payload.to_json())
