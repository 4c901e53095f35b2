"""The head graph: which heads feed which, from weights (composition) and from path patching.

Composition scores (Elhage et al. 2021) say which later heads *could* read what a head writes;
path patching (Wang et al. 2022) says which paths *carry* a behaviour on given prompts. Either
gives directed edges sender -> receiver between heads (and into an MLP or the logits); the graph
keeps the strongest, draws layers as columns, and answers "what does this head read from, and
what does it write to?" for one head.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple, cast, final

import numpy as np
import pandas as pd

from headzoo._composition import KINDS, CompositionScores, check_kinds, composition_scores
from headzoo._effects import HeadEffects
from headzoo._errors import InvalidOptionError
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str
from headzoo._models import model_info

__all__ = ["HeadGraph", "HeadEdges", "head_graph"]

_COLUMNS = ["source_layer", "source_head", "target_layer", "target_head", "target", "kind", "weight", "evidence"]
_NULLABLE = ("target_layer", "target_head")  # NA for the logits (and the head of an MLP)
_LABEL = re.compile(r"^L(\d+)H(\d+)\.([qkv])$|^MLP(\d+)$|^logits$")
_COLOURS = {"q": "#e6550d", "k": "#3182bd", "v": "#31a354", "mlp": "#756bb1", "logits": "#636363"}


class HeadEdges(NamedTuple):
    """One head's edges: ``reads_from`` (edges into it, strongest first) and ``writes_to``
    (edges out of it), each a frame with :meth:`HeadGraph.to_frame`'s columns."""

    reads_from: pd.DataFrame
    writes_to: pd.DataFrame


def _composition_edges(scores: CompositionScores, kinds: tuple[str, ...], top_k: int | None) -> pd.DataFrame:
    """The ``top_k`` pairs of each kind by excess over the random baseline (by score without
    one), only those above it."""
    frame = scores.to_frame()
    by = "excess" if "excess" in frame.columns else "score"
    parts = []
    for kind in kinds:
        part = cast(pd.DataFrame, frame[(frame["kind"] == kind) & (frame[by] > 0)])
        part = part.sort_values(by, ascending=False, kind="stable")
        parts.append(part if top_k is None else part.head(top_k))
    chosen = pd.concat(parts, ignore_index=True) if parts else frame.head(0)
    return pd.DataFrame({
        "source_layer": chosen["sender_layer"], "source_head": chosen["sender_head"],
        "target_layer": chosen["receiver_layer"], "target_head": chosen["receiver_head"],
        "target": [f"L{a}H{b}" for a, b in zip(chosen["receiver_layer"], chosen["receiver_head"])],
        "kind": chosen["kind"], "weight": chosen[by], "evidence": "composition",
    })


def _path_edges(effects: HeadEffects, top_k: int | None) -> pd.DataFrame:
    """Edges sender -> each receiver of a :func:`hz.patching.path_patch_heads` result,
    weighted by ``|effect - baseline|``; several receivers patched together share the weight."""
    meta = effects.meta
    frame = effects.to_frame()
    receivers = meta.get("receivers")
    if meta.get("kind") != "path" or not {"layer", "head"} <= set(frame.columns) or receivers is None:
        raise InvalidOptionError(
            "path_effects must come from hz.patching.path_patch_heads (one row per sender head, "
            f"meta['receivers'] naming the receivers); got a HeadEffects of kind {meta.get('kind')!r} "
            f"with columns {list(frame.columns)}"
        )
    targets = []
    for label in [receivers] if isinstance(receivers, str) else receivers:
        found = _LABEL.match(str(label))
        if found is None:
            raise InvalidOptionError(f"cannot read the receiver {label!r} of path_effects (expected 'L<l>H<h>.q|k|v', 'MLP<l>' or 'logits')")
        if found.group(1) is not None:
            targets.append((int(found.group(1)), int(found.group(2)), f"L{found.group(1)}H{found.group(2)}", found.group(3)))
        elif found.group(4) is not None:
            targets.append((int(found.group(4)), None, f"MLP{found.group(4)}", "mlp"))
        else:
            targets.append((None, None, "logits", "logits"))
    weight = np.abs(frame["effect"].to_numpy(dtype=np.float64) - float(meta["baseline"]))
    order = [i for i in np.argsort(-weight, kind="stable")[:top_k] if weight[i] > 0]  # no change: no path
    layers, heads = frame["layer"].to_numpy(), frame["head"].to_numpy()
    evidence = "path_patching" if len(targets) == 1 else f"path_patching (jointly into {len(targets)} receivers)"
    rows = [(int(layers[i]), int(heads[i]), t_layer, t_head, label, kind, float(weight[i]), evidence)
            for i in order for t_layer, t_head, label, kind in targets]
    return pd.DataFrame(rows, columns=_COLUMNS)


def head_graph(
    model: Any = None,
    *,
    composition: CompositionScores | None = None,
    path_effects: HeadEffects | Iterable[HeadEffects] | None = None,
    top_k: int | None = 10,
    kinds: str | Iterable[str] = KINDS,
) -> HeadGraph:
    """Directed edges between heads from composition scores and/or path patching.

    - Composition: the ``top_k`` strongest pairs of each kind in ``kinds``, weighted by their
      excess over the random baseline (pairs at or below it are left out). Computed with
      :func:`hz.composition_scores` when ``composition`` is not given and no ``path_effects``
      are either.
    - Path patching: each ``hz.patching.path_patch_heads`` result adds edges from its ``top_k``
      sender heads (largest ``|effect - baseline|``, leaving out senders that change nothing)
      to each of its receivers (a head's query, key or value, an MLP, or the logits).

    Weights of the two kinds of evidence are on different scales (a score above random, a
    change of the metric); ``evidence`` says which, and the plot scales each on its own.

    Args:
        model: the model (needed to compute composition scores, and to size the graph).
        composition: precomputed :class:`CompositionScores` of the same model.
        path_effects: one or several :class:`HeadEffects` from ``path_patch_heads``.
        top_k: edges kept per kind (composition) and per path-patching result; ``None``: all.
        kinds: composition kinds to draw edges for.

    Raises:
        InvalidOptionError: nothing to build from, a wrong type, or effects that are not from
            ``path_patch_heads``.
        UnsupportedModelError: ``model`` is not a TransformerLens model.
    """
    kinds_t = check_kinds(kinds, name="kinds")
    if top_k is not None:
        top_k = positive_int("top_k", top_k)
    if composition is not None and not isinstance(composition, CompositionScores):
        raise InvalidOptionError(f"composition must be hz.CompositionScores (hz.composition_scores(model)); got {type(composition).__name__}")
    effects: list[HeadEffects] = []
    if path_effects is not None:
        effects = [path_effects] if isinstance(path_effects, HeadEffects) else list(path_effects)
        bad = [type(e).__name__ for e in effects if not isinstance(e, HeadEffects)]
        if bad or not effects:
            raise InvalidOptionError(f"path_effects must be hz.HeadEffects from hz.patching.path_patch_heads (or a list of them); got {bad or 'an empty list'}")
    if model is None and composition is None and not effects:
        raise InvalidOptionError("head_graph needs a model, composition scores or path effects to draw edges from")
    if model is not None:
        info = model_info(model)
        shape = {"n_layers": info.n_layers, "n_heads": info.n_heads, "name": info.name}
        if composition is None and not effects:
            composition = composition_scores(model, kinds_t)
    else:
        source = composition.meta["model"] if composition is not None else effects[0].meta.get("model", {})
        if "n_layers" not in source:
            raise InvalidOptionError("these path effects do not record the model's shape; pass model= too")
        shape = {"n_layers": int(source["n_layers"]), "n_heads": int(source["n_heads"]), "name": str(source.get("name", "model"))}
    parts = []
    meta: dict[str, Any] = {"model": shape, "top_k": top_k, "kinds": list(kinds_t), "evidence": []}
    if composition is not None:
        model_shape = composition.meta.get("model", {})
        if (model_shape.get("n_layers"), model_shape.get("n_heads")) != (shape["n_layers"], shape["n_heads"]):
            raise InvalidOptionError(f"composition scores are of a {model_shape.get('n_layers')} x {model_shape.get('n_heads')} model, "
                                     f"not this {shape['n_layers']} x {shape['n_heads']} one")
        missing = [k for k in kinds_t if k not in composition.kinds]
        if missing:
            raise InvalidOptionError(f"composition has no {missing} scores (it has {composition.kinds}); compute them or pass kinds=")
        parts.append(_composition_edges(composition, kinds_t, top_k))
        meta["evidence"].append({"kind": "composition", "baseline": composition.meta.get("baseline")})
    for e in effects:
        parts.append(_path_edges(e, top_k))
        meta["evidence"].append({"kind": "path_patching", "receivers": e.meta["receivers"], "baseline": e.meta["baseline"],
                                 "direction": e.meta.get("direction")})
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_COLUMNS)
    return HeadGraph(frame, meta)


@final
class HeadGraph(Result):
    """Directed, weighted edges between heads (and into MLPs or the logits).

    Build it with :func:`hz.head_graph`. ``to_frame()``: ``source_layer, source_head,
    target_layer, target_head`` (nullable: NA for the logits, and ``target_head`` for an MLP),
    ``target`` (``"L2H0"``, ``"MLP3"``, ``"logits"``), ``kind`` (``q``/``k``/``v`` for the
    receiver's input, ``mlp``, ``logits``), ``weight`` and ``evidence`` (``composition`` or
    ``path_patching``).
    """

    __slots__ = ("_frame", "_meta")
    _FORMAT = "HeadGraph"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"HeadGraph needs columns {_COLUMNS}; missing {missing}")
        frame = strings_as_str(cast(pd.DataFrame, frame[_COLUMNS]))
        for col in ("source_layer", "source_head"):
            frame[col] = frame[col].astype("int64")
        for col in _NULLABLE:
            frame[col] = frame[col].astype("Int64")
        frame["weight"] = frame["weight"].astype("float64")
        for col in ("target", "kind", "evidence"):
            frame[col] = frame[col].astype(str)
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (model shape, ``top_k``, what each piece of evidence was)."""
        return json.loads(json.dumps(self._meta))

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per edge."""
        return self._frame.copy()

    def edges_of(self, layer: int, head: int) -> HeadEdges:
        """``(reads_from, writes_to)`` of head ``(layer, head)``, each strongest first."""
        f = self._frame
        into = f[(f["target_layer"] == layer).fillna(False) & (f["target_head"] == head).fillna(False)]
        out = f[(f["source_layer"] == layer) & (f["source_head"] == head)]

        def ranked(part: pd.DataFrame) -> pd.DataFrame:
            return part.sort_values("weight", ascending=False, kind="stable").reset_index(drop=True)

        return HeadEdges(ranked(cast(pd.DataFrame, into)), ranked(cast(pd.DataFrame, out)))

    # -- display --------------------------------------------------------------------------
    def _position(self, layer: Any, head: Any, target: str) -> tuple[float, float]:
        n_layers, n_heads = int(self._meta["model"]["n_layers"]), int(self._meta["model"]["n_heads"])
        if target == "logits":
            return float(n_layers), (n_heads - 1) / 2
        if target.startswith("MLP"):
            return int(layer) + 0.5, -1.0
        return float(layer), float(head)

    def plot(self) -> Any:
        """Layers as columns, heads as nodes, edges with width by weight (scaled within each
        kind of evidence) and colour by kind; a plotly ``Figure`` (returned, never shown)."""
        import plotly.graph_objects as go

        n_layers, n_heads = int(self._meta["model"]["n_layers"]), int(self._meta["model"]["n_heads"])
        fig = go.Figure()
        f = self._frame
        scale = {ev: float(np.nanmax(g["weight"].to_numpy())) or 1.0 for ev, g in f.groupby("evidence")} if len(f) else {}
        shown: set[str] = set()
        for row in f.itertuples(index=False):
            r = cast(Any, row)
            x0, y0 = float(r.source_layer), float(r.source_head)
            x1, y1 = self._position(r.target_layer, r.target_head, r.target)
            width = 0.5 + 7.5 * float(r.weight) / scale[r.evidence]
            label = html.escape(f"{r.kind} ({r.evidence})")  # plotly renders legend names as HTML
            fig.add_trace(go.Scatter(
                x=[x0, x1], y=[y0, y1], mode="lines", line={"width": width, "color": _COLOURS.get(r.kind, "#999"),
                                                             "dash": "solid" if r.evidence == "composition" else "dot"},
                opacity=0.7, name=label, legendgroup=label, showlegend=label not in shown,
                hovertemplate=html.escape(f"L{r.source_layer}H{r.source_head} -> {r.target} ({r.kind}, {r.evidence})")
                + f"<br>weight {float(r.weight):.4f}<extra></extra>",
            ))
            shown.add(label)
        xs = [float(layer) for layer in range(n_layers) for _ in range(n_heads)]
        ys = [float(head) for _ in range(n_layers) for head in range(n_heads)]
        names = [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
        extra = sorted(set(f["target"]) - set(names))
        for t in extra:
            match = f[f["target"] == t].iloc[0]
            x, y = self._position(match["target_layer"], match["target_head"], t)
            xs.append(x)
            ys.append(y)
            names.append(t)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=[html.escape(n) for n in names], textposition="top center",
                                 textfont={"size": 9}, marker={"size": 12, "color": "#fdfdfd", "line": {"width": 1, "color": "#333"}},
                                 hovertemplate="%{text}<extra></extra>", showlegend=False))
        fig.update_xaxes(title_text="layer", dtick=1, zeroline=False)
        fig.update_yaxes(title_text="head", dtick=1, autorange="reversed", zeroline=False)
        fig.update_layout(title=html.escape(f"headzoo: head graph of {self._meta['model'].get('name', 'model')}"),
                          height=max(360, 40 * n_heads + 160), width=max(480, 110 * (n_layers + 1) + 200), plot_bgcolor="white")
        return fig

    def __repr__(self) -> str:
        kinds = sorted(set(self._frame["evidence"]))
        return f"HeadGraph({len(self._frame)} edges from {', '.join(kinds) or 'nothing'})"

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the strongest edges."""
        top = self._frame.sort_values("weight", ascending=False, kind="stable").head(10)
        rows = "".join(
            f"<tr><td>L{int(sl)}H{int(sh)}</td><td>&rarr;</td><td>{html.escape(str(t))}</td><td>{html.escape(str(k))}</td>"
            f"<td>{float(w):.4g}</td><td>{html.escape(str(ev))}</td></tr>"
            for sl, sh, t, k, w, ev in zip(top["source_layer"], top["source_head"], top["target"], top["kind"],
                                           top["weight"], top["evidence"])
        )
        name = html.escape(str(self._meta.get("model", {}).get("name", "")))
        return (f"<div style='font-family:sans-serif;font-size:12px'><p>{html.escape(repr(self))} &middot; {name}</p>"
                f"<table><thead><tr><th>from</th><th></th><th>to</th><th>kind</th><th>weight</th><th>evidence</th></tr></thead>"
                f"<tbody>{rows}</tbody></table></div>")

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadGraph:
        return cls(payload.frame, payload.meta)
