"""``HeadEffects``: the tidy result of patching and ablation."""

from __future__ import annotations

import html
import json
import math
from typing import Any, cast, final

import numpy as np
import pandas as pd

from headzoo._errors import InvalidOptionError
from headzoo._io import Payload, Result, normalise, positive_int
from headzoo._results import colour

__all__ = ["HeadEffects"]

_INDEX = ("layer", "head", "kv_head", "pos", "dest_pos", "src_pos", "group")


@final
class HeadEffects(Result):
    """Effects of patching (or ablating) activations, one row per patched index.

    ``to_frame()`` has the index columns of the patch (``layer`` first, then ``head``,
    ``pos``, ... as the patch kind has them) and ``effect``: the metric on the patched run,
    TransformerLens' convention, so it compares directly with ``transformer_lens.patching``.
    When the metric returns one value per example, ``effect`` is their mean and ``stderr``,
    ``ci_low`` and ``ci_high`` (a seeded 95% bootstrap interval) come with it, and the
    per-example values are kept (:meth:`per_example`).

    ``meta["baseline"]`` is the metric on the unpatched run that received the patches and
    ``meta["source"]`` on the run they came from; :meth:`normalized` maps effects to
    ``(effect - baseline) / (source - baseline)`` (0 = no change, 1 = fully restored).
    """

    __slots__ = ("_frame", "_meta", "_examples")
    _FORMAT = "HeadEffects"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any], examples: np.ndarray | None = None) -> None:
        if "effect" not in frame.columns or not ({"layer", "group"} & set(frame.columns)):
            raise ValueError("HeadEffects needs an effect column and a layer (or, for sender groups, a group) column")
        frame = frame.reset_index(drop=True).copy()
        for col in frame.columns:
            frame[col] = frame[col].astype("int64" if col in _INDEX else "float64")
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)
        if examples is not None:
            examples = np.array(examples, dtype=np.float64)  # a copy: the caller keeps theirs
            if examples.ndim != 2 or examples.shape[0] != len(frame):
                raise ValueError(f"per-example values must be [rows={len(frame)}, batch]; got {examples.shape}")
        self._examples = examples

    @classmethod
    def from_values(
        cls, index: list[tuple[int, ...]], axes: tuple[str, ...], values: Any, meta: dict[str, Any], *, seed: int = 0,
        columns: tuple[str, ...] | None = None,
    ) -> HeadEffects:
        """Build from index tuples (``layer`` first, then ``axes``; or named by ``columns``)
        and ``[n]`` or ``[n, batch]`` values."""
        values = np.asarray(values, dtype=np.float64)
        frame = pd.DataFrame(index, columns=list(columns) if columns is not None else ["layer", *axes])
        examples = None
        if values.ndim == 2:
            examples = values
            n = values.shape[1]
            frame["effect"] = values.mean(1)
            frame["stderr"] = values.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.nan
            rng = np.random.default_rng(seed)
            picks = rng.integers(0, n, size=(1000, n))
            boots = values[:, picks].mean(-1)  # [rows, 1000]
            frame["ci_low"], frame["ci_high"] = np.quantile(boots, 0.025, axis=1), np.quantile(boots, 0.975, axis=1)
        else:
            frame["effect"] = values
        return cls(frame, meta, examples)

    # -- access ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (kind, direction, baseline and source metric, options)."""
        return json.loads(json.dumps(self._meta))

    @property
    def index_columns(self) -> list[str]:
        return [c for c in self._frame.columns if c in _INDEX]

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: index columns, ``effect`` (and ``stderr``, ``ci_low``, ``ci_high``)."""
        return self._frame.copy()

    def per_example(self) -> pd.DataFrame:
        """Long frame of per-example effects: index columns, ``example``, ``effect``."""
        if self._examples is None:
            raise ValueError("the metric returned one value per run, not per example; pass per_example=True")
        idx = self._frame[self.index_columns]
        n = self._examples.shape[1]
        out = idx.loc[idx.index.repeat(n)].reset_index(drop=True)
        out["example"] = np.tile(np.arange(n), len(idx))
        out["effect"] = self._examples.reshape(-1)
        return out

    def normalized(self) -> pd.Series:
        """``(effect - baseline) / (source - baseline)``: 0 = unchanged, 1 = fully moved."""
        base, source = self._meta["baseline"], self._meta["source"]
        gap = source - base
        if gap == 0:
            raise ZeroDivisionError("the metric is the same on both runs, so there is nothing to normalise by")
        return (self._frame["effect"] - base) / gap

    def matrix(self, column: str = "effect") -> pd.DataFrame:
        """``layer x head`` (or ``layer x pos``) table, averaging any other index axis."""
        if "layer" not in self._frame.columns:
            raise ValueError("these effects are per sender group (path_patch), not per layer: read to_frame() or plot()")
        other = [c for c in self.index_columns if c != "layer"]
        if not other:
            raise ValueError("effects have no axis besides layer")
        col = "head" if "head" in other else other[0]
        means = cast(pd.Series, self._frame.groupby(["layer", col])[column].mean())
        return means.unstack(col)

    def top(self, k: int = 5, *, by: str = "abs") -> pd.DataFrame:
        """The ``k`` rows that moved the metric most: the largest ``|change|`` (``by="abs"``)
        or the largest ``effect`` (``by="effect"``).

        The frame has :meth:`to_frame`'s columns plus ``change = effect - baseline``, next to
        ``effect``: ``by="abs"`` sorts by its size, so the order reads off that column (a raw
        effect on either side of the baseline would look unsorted).

        Raises:
            InvalidOptionError: ``k`` is not a positive integer or ``by`` is neither.
        """
        k = positive_int("k", k)
        if by not in ("abs", "effect"):
            raise InvalidOptionError(f"by must be 'abs' or 'effect'; got {by!r}")
        effect = cast(pd.Series, self._frame["effect"])
        change = effect - float(self._meta["baseline"])
        key = change.abs() if by == "abs" else effect
        out = self._frame.copy()
        out.insert(list(out.columns).index("effect") + 1, "change", change)
        return out.loc[key.sort_values(ascending=False, kind="stable").index[:k]].reset_index(drop=True)

    # -- display --------------------------------------------------------------------------
    def plot(self, column: str = "effect") -> Any:
        """Heatmap of the effects as a plotly ``Figure`` (returned, never shown): ``layer x
        head`` or ``layer x pos``; effects per head and position get one row per head."""
        import plotly.graph_objects as go

        idx = self.index_columns
        if "layer" not in idx:  # sender groups of path patching: one bar per group
            return self.plot_top(len(self._frame), by="effect")
        if "head" in idx and "pos" in idx:
            frame = cast(pd.Series, self._frame.groupby(["layer", "head", "pos"])[column].mean()).unstack("pos")
            table = frame.copy()
            table.index = [f"L{a}H{b}" for a, b in cast(pd.MultiIndex, frame.index)]
            table.columns.name, ylabel, ytick = "pos", "head", None
        else:
            table = self.matrix(column)
            ylabel, ytick = "layer", 1
        base = self._meta.get("baseline", 0.0)
        spread = float(np.nanmax(np.abs(table.to_numpy() - base))) or 1.0
        fig = go.Figure(go.Heatmap(
            z=table.to_numpy(), x=list(table.columns), y=list(table.index), colorscale="RdBu", zmid=base,
            zmin=base - spread, zmax=base + spread, colorbar={"title": column},
            hovertemplate=f"{ylabel} %{{y}}, {table.columns.name} %{{x}}<br>{column} %{{z:.4f}}<extra></extra>",
        ))
        fig.update_xaxes(title_text=str(table.columns.name), dtick=1)
        fig.update_yaxes(title_text=ylabel, autorange="reversed", dtick=ytick)
        fig.update_layout(title=html.escape(f"headzoo: {self._meta.get('kind', '')} patching ({self._meta.get('direction', '')})"),
                          height=max(320, 18 * len(table) + 160))
        return fig

    def plot_top(self, k: int = 10, *, by: str = "abs") -> Any:
        """Bar chart of the ``k`` largest effects (:meth:`top`), with confidence intervals when
        the effects were measured per example; a plotly ``Figure`` (returned, never shown)."""
        import plotly.graph_objects as go

        top = self.top(k, by=by)
        # ``L3H3``: read per column (a row of mixed columns comes back as floats: ``L3.0 H3.0``)
        labels = ["".join(f"{c[0].upper()}{int(top[c].iloc[i])}" for c in self.index_columns) for i in range(len(top))]
        error = None
        if {"ci_low", "ci_high"} <= set(top.columns):
            error = {"type": "data", "symmetric": False, "array": top["ci_high"] - top["effect"],
                     "arrayminus": top["effect"] - top["ci_low"]}
        fig = go.Figure(go.Bar(x=labels, y=top["effect"], error_y=error, marker_color="#2171b5",
                               customdata=top["change"],
                               hovertemplate="%{x}<br>effect %{y:.4f}<br>change %{customdata:+.4f}<extra></extra>"))
        fig.add_hline(y=self._meta.get("baseline", 0.0), line_dash="dash", line_color="#888")
        fig.update_layout(title=html.escape(f"headzoo: top {k} {self._meta.get('kind', '')} patches"), yaxis_title="effect", height=420)
        return fig

    def __repr__(self) -> str:
        return f"HeadEffects({self._meta.get('kind', '?')}, {len(self._frame)} patches, baseline {self._meta.get('baseline')})"

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): a colour grid of :meth:`matrix` and the top rows."""
        esc = html.escape
        try:
            table = self.matrix()
        except ValueError:
            table = None
        base = float(self._meta.get("baseline", 0.0))
        parts = [f"<div style='font-family:sans-serif;font-size:12px'><b>HeadEffects</b> &middot; "
                 f"{esc(str(self._meta.get('kind', '')))} &middot; {esc(str(self._meta.get('direction', '')))} "
                 f"&middot; baseline {base:.4g}"]
        if table is not None:
            values = table.to_numpy()
            spread = float(np.nanmax(np.abs(values - base))) or 1.0
            rows = []
            for layer, row in zip(table.index, values):
                cells = "".join(
                    f"<td title='L{layer} {esc(str(table.columns.name))} {c}: {v:.4g}' style='width:14px;height:14px;"
                    f"background:{colour(abs(v - base), 0.0, spread)}'></td>" for c, v in zip(table.columns, row)
                )
                rows.append(f"<tr><th style='font-weight:normal'>{layer}</th>{cells}</tr>")
            parts.append(f"<table style='border-collapse:collapse'>{''.join(rows)}</table>")
        parts.append(self.top(5).to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        parts.append("</div>")
        return "".join(parts)

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        arrays = {} if self._examples is None else {"examples": self._examples}
        return Payload(self._frame, self._meta, arrays=arrays)

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadEffects:
        return cls(payload.frame, payload.meta, payload.arrays.get("examples"))
