"""Result types: one tidy frame plus metadata, plotted and rendered on demand, saved with a checksum."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any, cast, final

import pandas as pd

from headzoo._errors import EmptyResultError, InvalidOptionError, UnknownDetectorError
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str

__all__ = ["HeadScores"]

_BASE = ["detector", "layer", "head", "score"]


def colour(value: float, lo: float, hi: float) -> str:
    if value != value:  # NaN
        return "#eeeeee"
    t = 0.0 if hi <= lo else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    # white -> deep blue
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


@final
class HeadScores(Result):
    """Per-head scores from one or more detectors, with the metadata to reproduce them.

    Build it with :func:`hz.detect`; do not subclass. ``to_frame()`` has one row per
    (detector, layer, head) and columns ``detector, layer, head, score`` plus any extra
    metrics a detector reports (NaN for detectors that do not report them).
    """

    __slots__ = ("_frame", "_meta", "_details")
    _FORMAT = "HeadScores"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any], details: dict[str, pd.DataFrame] | None = None) -> None:
        missing = [c for c in _BASE if c not in frame.columns]
        if missing:
            raise ValueError(f"HeadScores needs columns {_BASE}; missing {missing}")
        frame = frame.reset_index(drop=True).copy()
        frame["detector"] = frame["detector"].astype(str)
        frame["layer"] = frame["layer"].astype("int64")
        frame["head"] = frame["head"].astype("int64")
        for col in frame.columns:
            if col not in ("detector", "layer", "head"):
                frame[col] = frame[col].astype("float64")
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)
        self._details: dict[str, pd.DataFrame] = {}
        for name, table in (details or {}).items():
            if not isinstance(table, pd.DataFrame) or not {"layer", "head"} <= set(table.columns):
                raise ValueError(f"details of {name!r} must be a DataFrame with layer and head columns")
            table = strings_as_str(table)
            table["layer"] = table["layer"].astype("int64")
            table["head"] = table["head"].astype("int64")
            self._details[str(name)] = table

    # -- access ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata: model config, detector options, probe, library versions."""
        return json.loads(json.dumps(self._meta))

    @property
    def detectors(self) -> list[str]:
        """Detector names, in the order they were run."""
        return list(dict.fromkeys(self._frame["detector"]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` of the model scored."""
        model = self._meta.get("model", {})
        return int(model.get("n_layers", 0)), int(model.get("n_heads", 0))

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per scored (detector, layer, head)."""
        return self._frame.copy()

    def details(self, detector: str) -> pd.DataFrame:
        """A detector's tidy per-head breakdown (e.g. ``successor``: accuracy per task).

        Raises:
            KeyError: the detector reports no details (the message lists those that do).
        """
        self._check(detector)
        if detector not in self._details:
            raise KeyError(f"{detector} reports no details; detectors with details: {sorted(self._details)}")
        return self._details[detector].copy()

    def _check(self, detector: str) -> pd.DataFrame:
        """The rows of ``detector``.

        Raises:
            UnknownDetectorError: ``detector`` was not run.
            EmptyResultError: it was run but scored no head.
        """
        if detector in self.detectors:
            return cast(pd.DataFrame, self._frame[self._frame["detector"] == detector])
        run = self._meta.get("detectors", {})
        if isinstance(detector, str) and detector in run:
            result = run[detector].get("result") if isinstance(run[detector], dict) else None
            raise EmptyResultError(
                f"{detector!r} was run but scored no head: every head's score was undefined, so there is no "
                "row to show. A detector scores nothing when its probe gives it nothing to measure, e.g. "
                "prompts too short for it, or without the repeated tokens or pairs it looks for"
                + (f" (its result: {json.dumps(result)})" if result else "")
                + ". Rerun with longer or more prompts, or with tokens that have what it needs."
            )
        raise UnknownDetectorError(detector, list(dict.fromkeys([*self.detectors, *run])))

    def matrix(self, detector: str, metric: str = "score") -> pd.DataFrame:
        """``layer x head`` table of ``metric`` for ``detector`` (NaN where a head was not scored)."""
        rows = self._check(detector)
        if metric not in rows.columns or cast(pd.Series, rows[metric]).isna().all():
            have = [c for c in rows.columns
                    if c not in ("detector", "layer", "head") and cast(pd.Series, rows[c]).notna().any()]
            raise KeyError(f"{detector} has no metric {metric!r}; it has {have}")
        n_layers, n_heads = self.shape
        table = rows.pivot(index="layer", columns="head", values=metric)
        table = table.reindex(index=range(n_layers), columns=range(n_heads))
        table.index.name, table.columns.name = "layer", "head"
        return table

    def top(self, k: int = 5, detector: str | None = None, metric: str = "score") -> pd.DataFrame:
        """The ``k`` highest-scoring heads of each detector (or of one), best first.

        Raises:
            InvalidOptionError: ``k`` is not a positive integer, or ``metric`` is not a column.
        """
        k = positive_int("k", k)
        if metric not in self._frame.columns or metric in ("detector", "layer", "head"):
            have = [c for c in self._frame.columns if c not in ("detector", "layer", "head")]
            raise InvalidOptionError(f"metric must be one of {have}; got {metric!r}")
        if detector is not None:
            self._check(detector)
        frame = self._frame if detector is None else cast(pd.DataFrame, self._frame[self._frame["detector"] == detector])
        frame = frame.dropna(subset=[metric])
        ordered = frame.sort_values(["detector", metric, "layer", "head"], ascending=[True, False, True, True], kind="stable")
        out = ordered.groupby("detector", sort=False).head(k)
        order = {name: i for i, name in enumerate(self.detectors)}
        out = out.sort_values("detector", key=lambda s: s.map(order), kind="stable")
        return out.reset_index(drop=True)

    def threshold(self, detector: str) -> float | None:
        """The conventional threshold of ``detector`` (``None`` when it has none)."""
        if detector not in self._meta.get("detectors", {}):
            self._check(detector)
        return self._meta.get("detectors", {}).get(detector, {}).get("threshold")

    def labels(self) -> pd.DataFrame:
        """Heads whose score passes their detector's threshold: ``detector, layer, head, score``."""
        parts = []
        for det in self.detectors:
            thr = self.threshold(det)
            if thr is not None:
                rows = self._check(det)
                parts.append(rows[rows["score"] >= thr][_BASE])
        if not parts:
            return pd.DataFrame(columns=_BASE)
        return pd.concat(parts, ignore_index=True)

    # -- display --------------------------------------------------------------------------
    def plot(self, detector: str | None = None, metric: str = "score", *, cols: int = 4) -> Any:
        """Layer x head heatmap per detector, in a grid of ``cols`` columns, as a plotly
        ``Figure`` (returned, never shown). Hover shows the head, its value and the threshold."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = [detector] if detector is not None else self.detectors
        for name in names:
            self._check(name)
        cols = positive_int("cols", cols)
        n_cols = min(cols, len(names))
        n_rows = -(-len(names) // n_cols)
        fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[html.escape(n) for n in names],
                            horizontal_spacing=0.05, vertical_spacing=min(0.12, 0.5 / n_rows))
        for i, name in enumerate(names):
            row, col = i // n_cols + 1, i % n_cols + 1
            table = self.matrix(name, metric)
            thr = self.threshold(name)
            fig.add_trace(
                go.Heatmap(
                    z=table.to_numpy(), x=list(table.columns), y=list(table.index),
                    coloraxis="coloraxis",
                    hovertemplate=f"{html.escape(name)}<br>head L%{{y}}H%{{x}}<br>{html.escape(metric)} %{{z:.3f}}"
                    + (f"<br>threshold {thr}" if thr is not None else "<br>no threshold") + "<extra></extra>",
                ),
                row=row, col=col,
            )
            fig.update_xaxes(title_text="head" if row == n_rows else None, row=row, col=col, dtick=1)
            fig.update_yaxes(title_text="layer" if col == 1 else None, row=row, col=col, autorange="reversed", dtick=1)
        values = self._frame.loc[self._frame["detector"].isin(names), metric].dropna()
        lo = min(0.0, float(values.min())) if len(values) else 0.0
        hi = max(1.0, float(values.max())) if len(values) else 1.0
        fig.update_layout(
            coloraxis={"colorscale": "Blues", "cmin": lo, "cmax": hi, "colorbar": {"title": metric}},
            title=f"headzoo: {html.escape(str(self._meta.get('model', {}).get('name', 'model')))}",
            height=n_rows * max(260, 28 * self.shape[0] + 110) + 60, width=max(450, 300 * n_cols),
        )
        return fig

    def plot_top(self, k: int = 10, detector: str | None = None, metric: str = "score") -> Any:
        """Bar chart of the ``k`` highest-scoring heads of each detector (one panel each), with
        the detector's threshold as a dashed line; a plotly ``Figure`` (returned, never shown)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        top = self.top(k, detector, metric)
        names = [detector] if detector is not None else self.detectors
        fig = make_subplots(rows=len(names), cols=1, subplot_titles=[html.escape(n) for n in names],
                            vertical_spacing=min(0.08, 0.5 / len(names)))
        for i, name in enumerate(names, start=1):
            rows = top[top["detector"] == name]
            labels = [f"L{a}H{b}" for a, b in zip(rows["layer"], rows["head"])]
            fig.add_trace(go.Bar(x=labels, y=rows[metric], marker_color="#2171b5", showlegend=False,
                                 hovertemplate="%{x}<br>" + html.escape(metric) + " %{y:.3f}<extra>" + html.escape(name) + "</extra>"),
                          row=i, col=1)
            thr = self.threshold(name)
            if thr is not None:
                # plotly infers row/col as str from their "all" default; it takes subplot numbers too
                fig.add_hline(y=thr, line_dash="dash", line_color="#c0392b", row=i, col=1)  # pyright: ignore[reportArgumentType]
            fig.update_yaxes(title_text=metric, row=i, col=1)
        fig.update_layout(title=f"headzoo: top {k} heads", height=220 * len(names) + 80, width=640)
        return fig

    def __repr__(self) -> str:
        n_layers, n_heads = self.shape
        return (
            f"HeadScores({len(self.detectors)} detectors x {n_layers} layers x {n_heads} heads: "
            f"{', '.join(self.detectors)})"
        )

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts, no network): per detector, a heatmap grid and top heads."""
        esc = html.escape
        n_layers, n_heads = self.shape
        model = self._meta.get("model", {})
        parts = [
            "<div class='headzoo-scores' style='font-family:sans-serif;font-size:12px'>",
            f"<b>HeadScores</b> &middot; {esc(str(model.get('name', '')))} &middot; "
            f"{n_layers} layers &times; {n_heads} heads &middot; probe: "
            f"{esc(str(self._meta.get('probe', {}).get('kind', '')))}",
        ]
        for det in self.detectors:
            table = self.matrix(det)
            thr = self.threshold(det)
            cells = []
            for layer in table.index:
                row = "".join(
                    f"<td title='L{layer}H{head}: {v:.3f}' style='width:14px;height:14px;"
                    f"background:{colour(v, 0.0, 1.0)}'></td>"
                    for head, v in zip(table.columns, table.loc[layer].to_numpy())
                )
                cells.append(f"<tr><th style='font-weight:normal;padding-right:4px'>{layer}</th>{row}</tr>")
            top = self.top(5, det)
            best = ", ".join(f"L{r.layer}H{r.head} ({r.score:.2f})" for r in cast("Iterable[Any]", top.itertuples()))
            parts.append(
                "<div style='display:inline-block;vertical-align:top;margin:8px 16px 8px 0'>"
                f"<div><b>{esc(det)}</b>" + (f" (threshold {thr:g})" if thr is not None else "") + "</div>"
                f"<table style='border-collapse:collapse'>{''.join(cells)}</table>"
                f"<div>top: {esc(best)}</div></div>"
            )
        parts.append("</div>")
        return "".join(parts)

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta, tables={f"details/{name}": t for name, t in self._details.items()})

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadScores:
        details = {name.removeprefix("details/"): t for name, t in payload.tables.items() if name.startswith("details/")}
        return cls(payload.frame, payload.meta, details=details)
