"""Composition scores: how much a later head reads what an earlier head writes, from the weights.

Elhage et al. (2021, "A Mathematical Framework for Transformer Circuits") measure how strongly
head ``r`` composes with an earlier head ``s`` by how much of the receiver's input matrix is fed
by the sender's output matrix: ``||W_OV^s W_X^r||_F / (||W_OV^s||_F ||W_X^r||_F)``, with
``W_X^r`` the receiver's QK circuit on its query side (Q-composition), on its key side
(K-composition), or its OV circuit (V-composition). An induction head K-composes with a
previous-token head: its keys read what that head wrote. The score of two random matrices of
the same shapes is not zero, so scores are read against that baseline ("above random").

All products stay factored (``d_model x d_head`` times ``d_head x d_model``): a score is the norm
of a ``d_head x d_head`` matrix once both sides are whitened by their small Gram matrices, and
every sender of a layer meets every receiver of a later layer in one matrix product.
"""

from __future__ import annotations

import difflib
import html
import json
from collections.abc import Iterable
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from headzoo._circuits import norm_linear_part
from headzoo._errors import InvalidOptionError, UnsupportedModelError
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str
from headzoo._models import has_weight, head_weights, library_versions, model_info
from headzoo._results import colour

__all__ = ["CompositionScores", "composition_scores", "KINDS"]

#: composition kinds: the receiver's query side, key side, or value (OV) circuit
KINDS = ("q", "k", "v")
_NAMES = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}
_COLUMNS = ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind", "score"]
_INTS = ("sender_layer", "sender_head", "receiver_layer", "receiver_head")


def check_kinds(kind: Any, *, name: str = "kind") -> tuple[str, ...]:
    """``kind`` as a tuple of distinct kinds in ``KINDS`` order (``"Q"`` is ``"q"``).

    Raises:
        InvalidOptionError: not one of ``"q"``, ``"k"``, ``"v"`` or a non-empty collection of
            them (a string such as ``"qk"`` is refused, not split into letters).
    """
    items = [kind] if isinstance(kind, str) else kind
    if not isinstance(items, Iterable) or isinstance(items, (bytes, dict)):
        raise InvalidOptionError(f"{name} must be 'q', 'k', 'v' or a tuple of them; got {kind!r}")
    out = []
    for item in items:
        low = item.lower() if isinstance(item, str) else item
        if low not in KINDS:
            hint = ""
            if isinstance(item, str) and len(item) > 1 and set(item.lower()) <= set(KINDS):
                hint = f" (for several kinds pass a tuple, e.g. {tuple(item.lower())!r})"
            elif isinstance(item, str):
                close = difflib.get_close_matches(item.lower(), [*KINDS, *(f"{k}-composition" for k in KINDS)], n=1)
                hint = f" (did you mean {close[0][0]!r}?)" if close else ""
            raise InvalidOptionError(
                f"{name} {item!r} is not a composition kind; use 'q' (the receiver's queries read the "
                f"sender), 'k' (its keys) or 'v' (its values){hint}"
            )
        out.append(low)
    if not out:
        raise InvalidOptionError(f"{name} is empty; pass 'q', 'k', 'v' or a tuple of them")
    return tuple(k for k in KINDS if k in out)


# -- the factored circuits ------------------------------------------------------------------
# A sender's OV circuit is A B (A = W_V: [d_model, e], B = W_O: [e, d_model], e = d_head) and a
# receiver's matrix is P Q, so ||A B P Q||_F^2 = tr(G M H M^T) with M = B P ([e, e]) and the small
# Gram matrices G = A^T A, H = Q Q^T: only B and P meet across d_model, in one product per pair
# of layers. (No eigen- or Cholesky decomposition: the Gram matrices are often singular, and
# batched LAPACK calls are slow on busy CPUs.)
Factor = tuple[torch.Tensor, torch.Tensor]  # (B [h, e, d] with G [h, e, e]) or (P [h, d, e] with H [h, e, e])


def _sender(a: Float[torch.Tensor, "h d e"], b: Float[torch.Tensor, "h e d"]) -> Factor:
    """``(B, G = A^T A)`` of the circuits ``A @ B``."""
    return b.float(), (a.double().transpose(1, 2) @ a.double())


def _receiver(p: Float[torch.Tensor, "h d e"], q: Float[torch.Tensor, "h e d"]) -> Factor:
    """``(P, H = Q Q^T)`` of the circuits ``P @ Q``."""
    return p.float(), (q.double() @ q.double().transpose(1, 2))


def _layer_factors(model: Any, layer: int, centre_writes: bool, device: torch.device) -> tuple[dict[str, Factor], Factor]:
    """One layer's factors: ``({kind: receiver factor}, sender factor)``, with its ``ln1``
    folded into the reading weights and, when ``centre_writes``, its ``W_O`` centred."""
    d = int(model.cfg.d_model)
    block = model.blocks[layer] if getattr(model, "blocks", None) is not None else None
    centres, weight = norm_linear_part(getattr(block, "ln1", None), d, device)
    weight = weight.float().to(device)

    def read(which: str) -> torch.Tensor:  # [head, d_model, d_head]: LN weight folded, centred
        w = head_weights(model, which, layer).float().to(device) * weight[None, :, None]  # type: ignore[arg-type]
        return w - w.mean(1, keepdim=True) if centres else w

    w_q, w_k, w_v = read("Q"), read("K"), read("V")
    w_o = head_weights(model, "O", layer).float().to(device)  # [head, d_head, d_model]
    if centre_writes:
        w_o = w_o - w_o.mean(2, keepdim=True)
    receivers = {
        "q": _receiver(w_q, w_k.transpose(1, 2)),  # W_QK = W_Q W_K^T, read on the query side
        "k": _receiver(w_k, w_q.transpose(1, 2)),  # W_QK^T: read on the key side
        "v": _receiver(w_v, w_o),  # W_OV = W_V W_O
    }
    return receivers, _sender(w_v, w_o)


def _pair_scores(sender: Factor, receiver: Factor) -> Float[torch.Tensor, "hs hr"]:
    """Scores of ``hs`` sender circuits against ``hr`` receiver circuits: one
    ``[hs e, d] @ [d, hr e]`` product and ``e x e`` contractions. A pair with a zero circuit
    (nothing to compose) scores 0."""
    b, g = sender
    p, h = receiver
    hs, e, d = b.shape
    hr = p.shape[0]
    m = (b.reshape(hs * e, d) @ p.permute(1, 0, 2).reshape(d, hr * e)).view(hs, e, hr, e).double()  # M = B P
    gm = torch.einsum("sab,sbrc->sarc", g, m)
    mh = torch.einsum("sarc,rcd->sard", m, h)
    sq = (gm * mh).sum((1, 3)).clamp_min(0.0)  # tr(G M H M^T)
    s_norm = (g * (b.double() @ b.double().transpose(1, 2))).sum((1, 2)).clamp_min(0.0).sqrt()  # ||A B||
    r_norm = ((p.double().transpose(1, 2) @ p.double()) * h).sum((1, 2)).clamp_min(0.0).sqrt()  # ||P Q||
    denom = s_norm[:, None] * r_norm[None, :]
    return torch.where(denom > 0, sq.sqrt() / denom.clamp_min(1e-300), torch.zeros_like(sq))


def random_baseline(d_model: int, d_head: int, n_random: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of the score of ``n_random`` pairs of random factored
    matrices ``(A B, P Q)`` with Gaussian ``A, P: [d_model, d_head]`` and ``B, Q: [d_head,
    d_model]`` (the shapes of every head's OV and QK circuits), seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    shape_l, shape_r = (n_random, d_model, d_head), (n_random, d_head, d_model)
    a, b = torch.randn(shape_l, generator=g, dtype=torch.float64), torch.randn(shape_r, generator=g, dtype=torch.float64)
    p, q = torch.randn(shape_l, generator=g, dtype=torch.float64), torch.randn(shape_r, generator=g, dtype=torch.float64)
    (b, g_), (p, h) = _sender(a, b), _receiver(p, q)
    m = b.double() @ p.double()  # [n, e, e]: draw i's sender meets draw i's receiver only
    sq = ((g_ @ m) * (m @ h)).sum((1, 2))
    s_norm = (g_ * (b.double() @ b.double().transpose(1, 2))).sum((1, 2))
    r_norm = ((p.double().transpose(1, 2) @ p.double()) * h).sum((1, 2))
    scores = sq.sqrt() / (s_norm * r_norm).sqrt()
    return float(scores.mean()), float(scores.std()) if n_random > 1 else 0.0


def composition_scores(
    model: Any,
    kind: str | Iterable[str] = KINDS,
    *,
    baseline: bool = True,
    n_random: int = 200,
    seed: int = 0,
    progress: bool | None = None,
) -> CompositionScores:
    """Q-, K- and V-composition scores of every head with every head of an earlier layer.

    ``score = ||W_OV^s @ W_X^r||_F / (||W_OV^s||_F ||W_X^r||_F)`` (Elhage et al. 2021) in
    TransformerLens' row-vector convention (``x @ W``): ``W_OV = W_V W_O``, and ``W_X^r`` is
    ``W_QK = W_Q W_K^T`` (Q: the sender writes what the receiver's queries read), ``W_QK^T``
    (K: its keys) or ``W_OV`` (V: its values). These are the matrices of
    ``TransformerBridge.all_composition_scores("Q" | "K" | "V")``, which agrees with this to
    float precision on the same weights.

    LayerNorm is folded as TransformerLens' ``fold_ln`` + ``center_writing_weights`` do (and
    the paper assumes): each layer's ``ln1`` weight is folded into its ``W_Q``, ``W_K`` and
    ``W_V``; when ``ln1`` centres (LayerNorm, not RMSNorm), those reading weights are centred
    over ``d_model`` and the sender's ``W_O`` is centred too (a centred stream is what the
    next layer reads). Its ``1 / scale`` factor and biases do not enter (a positive scalar
    cancels in the ratio; biases are not matrices). The model is read, never modified.

    Grouped-query models: ``W_K`` and ``W_V`` of query head ``h`` are those of its key-value
    head ``h // (n_heads // n_kv_heads)``; rows name query heads.

    Args:
        model: any TransformerLens model (its ``W_Q, W_K, W_V, W_O`` per layer).
        kind: ``"q"``, ``"k"``, ``"v"`` or a tuple of them (case-insensitive).
        baseline: also score ``n_random`` pairs of random Gaussian factored matrices of the
            same shapes; the frame then has ``baseline`` (their mean) and ``excess``
            (``score - baseline``), "composition above random".
        n_random: random pairs for the baseline.
        seed: seeds the baseline's random matrices.
        progress: a progress bar over sender layers (``None``: only for models of 24+ layers).

    Returns:
        :class:`CompositionScores`, one row per (sender, receiver in a later layer, kind).
        Cost: one ``[n_heads d_head, d_model] @ [d_model, kinds n_heads d_head]`` product per
        pair of layers; no ``d_model x d_model`` matrix is formed.

    Raises:
        UnsupportedModelError: not a TransformerLens model, or it lacks the weight properties.
        InvalidOptionError: an unknown kind, or ``n_random`` / ``seed`` of the wrong type.
    """
    kinds = check_kinds(kind)
    info = model_info(model)
    if baseline:
        n_random = positive_int("n_random", n_random)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidOptionError(f"seed must be an integer; got {seed!r}")
    if not isinstance(baseline, bool):
        raise InvalidOptionError(f"baseline must be True or False; got {baseline!r}")
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        if not has_weight(model, name):
            raise UnsupportedModelError(
                f"{type(model).__name__} exposes no {name}; composition scores read TransformerLens' "
                "weight properties (W_Q, W_K, W_V, W_O)."
            )
    device = torch.device(info.device)
    n_layers, n_heads = info.n_layers, info.n_heads
    with torch.no_grad():
        factors = []
        centred: list[bool] = []
        for layer in range(n_layers):
            block = model.blocks[layer] if getattr(model, "blocks", None) is not None else None
            centred.append(norm_linear_part(getattr(block, "ln1", None), info.d_model, device)[0])
        for layer in range(n_layers):
            # a head's writes are centred when the next layer's normalisation centres what it reads
            writes_centred = centred[min(layer + 1, n_layers - 1)]
            factors.append(_layer_factors(model, layer, writes_centred, device))
        rows: list[np.ndarray] = []
        s, r = np.meshgrid(np.arange(n_heads), np.arange(n_heads), indexing="ij")  # sender, receiver head
        show = progress if progress is not None else n_layers >= 24
        for ls in tqdm(range(n_layers - 1), desc="headzoo composition", unit="layer", disable=not show, leave=False):
            sender = factors[ls][1]
            for lr in range(ls + 1, n_layers):
                stacked = [factors[lr][0][k] for k in kinds]  # every kind's receivers in one product
                receivers = (torch.cat([f[0] for f in stacked]), torch.cat([f[1] for f in stacked]))
                scores = _pair_scores(sender, receivers).view(n_heads, len(kinds), n_heads).cpu().numpy()
                for ki in range(len(kinds)):
                    rows.append(np.stack([np.full(s.size, ls), s.ravel(), np.full(s.size, lr), r.ravel(),
                                          np.full(s.size, ki), scores[:, ki, :].ravel()], 1))
    table = np.concatenate(rows) if rows else np.zeros((0, 6))
    frame = pd.DataFrame({
        "sender_layer": table[:, 0].astype(np.int64), "sender_head": table[:, 1].astype(np.int64),
        "receiver_layer": table[:, 2].astype(np.int64), "receiver_head": table[:, 3].astype(np.int64),
        "kind": pd.Series([kinds[int(i)] for i in table[:, 4]], dtype=object), "score": table[:, 5].astype(np.float64),
    })
    frame = frame.sort_values(["kind", "sender_layer", "sender_head", "receiver_layer", "receiver_head"],
                              key=lambda c: c.map(KINDS.index) if c.name == "kind" else c, kind="stable")
    meta: dict[str, Any] = {
        "kinds": list(kinds),
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "folded": {"ln_weight": True, "centred": [bool(c) for c in centred]},
        "versions": library_versions(),
    }
    if baseline:
        mean, std = random_baseline(info.d_model, info.d_head, n_random, int(seed))
        frame["baseline"] = mean
        frame["excess"] = frame["score"] - mean
        meta.update({"baseline": mean, "baseline_std": std, "n_random": n_random, "seed": int(seed)})
    return CompositionScores(frame, meta)


@final
class CompositionScores(Result):
    """Composition scores of every (sender, later receiver) head pair, per kind.

    Build it with :func:`hz.composition_scores`. ``to_frame()`` has one row per pair and kind:
    ``sender_layer, sender_head, receiver_layer, receiver_head, kind`` (``"q"``, ``"k"``,
    ``"v"``), ``score`` in ``[0, 1]``, and with a baseline ``baseline`` (the mean score of
    random matrices of the same shapes) and ``excess`` (``score - baseline``).
    """

    __slots__ = ("_frame", "_meta")
    _FORMAT = "CompositionScores"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"CompositionScores needs columns {_COLUMNS}; missing {missing}")
        frame = strings_as_str(frame)
        for col in frame.columns:
            if col in _INTS:
                frame[col] = frame[col].astype("int64")
            elif col != "kind":
                frame[col] = frame[col].astype("float64")
        frame["kind"] = frame["kind"].astype(str)
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)

    # -- access ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (kinds, model, folding, baseline and its spread)."""
        return json.loads(json.dumps(self._meta))

    @property
    def kinds(self) -> list[str]:
        """The kinds scored, in ``q, k, v`` order."""
        present = set(self._frame["kind"])
        return [k for k in KINDS if k in present] or [k for k in self._meta.get("kinds", []) if k in KINDS]

    @property
    def has_baseline(self) -> bool:
        return "excess" in self._frame.columns

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per (sender, receiver, kind)."""
        return self._frame.copy()

    def _kind(self, kind: str) -> str:
        (k,) = check_kinds(kind)
        if k not in self.kinds:
            raise InvalidOptionError(f"kind {k!r} was not computed; these scores have {self.kinds}")
        return k

    def top(self, k: int = 10, kind: str | None = None) -> pd.DataFrame:
        """The ``k`` highest-scoring pairs of one kind (or of all kinds), best first."""
        k = positive_int("k", k)
        frame = self._frame if kind is None else self._frame[self._frame["kind"] == self._kind(kind)]
        order = cast(pd.Series, frame["score"]).sort_values(ascending=False, kind="stable").index
        return frame.loc[order[:k]].reset_index(drop=True)

    def matrix(self, kind: str, column: str = "score") -> pd.DataFrame:
        """Senders x receivers (labels ``L{layer}H{head}``) for one kind; pairs that are not
        scored (receiver not in a later layer) are NaN."""
        k = self._kind(kind)
        if column not in self._frame.columns or column in (*_INTS, "kind"):
            raise InvalidOptionError(f"column must be one of {[c for c in self._frame.columns if c not in (*_INTS, 'kind')]}; got {column!r}")
        info = self._meta.get("model", {})
        n_layers, n_heads = int(info.get("n_layers", 0)), int(info.get("n_heads", 0))
        labels = [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
        part = self._frame[self._frame["kind"] == k]
        out = pd.DataFrame(np.nan, index=pd.Index(labels[: max(0, len(labels) - n_heads)], name="sender"),
                           columns=pd.Index(labels[n_heads:], name="receiver"))
        senders = [f"L{a}H{b}" for a, b in zip(part["sender_layer"], part["sender_head"])]
        receivers = [f"L{a}H{b}" for a, b in zip(part["receiver_layer"], part["receiver_head"])]
        for s, r, v in zip(senders, receivers, part[column]):
            out.loc[s, r] = v
        return out

    def edges_into(self, layer: int, head: int, kind: str | None = None) -> pd.DataFrame:
        """Rows whose receiver is ``(layer, head)``, strongest first."""
        part = cast(pd.DataFrame, self._frame[(self._frame["receiver_layer"] == layer) & (self._frame["receiver_head"] == head)])
        if kind is not None:
            part = cast(pd.DataFrame, part[part["kind"] == self._kind(kind)])
        return part.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    # -- display --------------------------------------------------------------------------
    def plot(self, kind: str | None = None, column: str = "score") -> Any:
        """Heatmaps of senders (rows) x receivers (columns), one panel per kind (or just
        ``kind``), as a plotly ``Figure`` (returned, never shown). Colour is ``score`` (or
        ``column``, e.g. ``"excess"``); pairs that cannot compose are blank."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        kinds = self.kinds if kind is None else [self._kind(kind)]
        if not kinds:
            raise InvalidOptionError("these scores hold no kind to plot")
        fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[_NAMES[k] for k in kinds], horizontal_spacing=0.08)
        for i, k in enumerate(kinds, start=1):
            table = self.matrix(k, column)
            fig.add_trace(go.Heatmap(
                z=table.to_numpy(), x=list(table.columns), y=list(table.index), colorscale="Blues",
                coloraxis="coloraxis", hovertemplate=f"%{{y}} -> %{{x}}<br>{column} %{{z:.4f}}<extra>{k}</extra>",
            ), row=1, col=i)
            fig.update_xaxes(title_text="receiver", row=1, col=i)
            fig.update_yaxes(title_text="sender" if i == 1 else "", autorange="reversed", row=1, col=i)
        name = str(self._meta.get("model", {}).get("name", "model"))
        base = f" (random baseline {self._meta['baseline']:.3f})" if "baseline" in self._meta else ""
        fig.update_layout(title=html.escape(f"headzoo: composition scores of {name}{base}"),
                          coloraxis={"colorscale": "Blues", "colorbar": {"title": column}},
                          height=max(360, 14 * len(self.matrix(kinds[0]).index) + 200), width=max(480, 420 * len(kinds)))
        return fig

    def __repr__(self) -> str:
        base = f", baseline {self._meta['baseline']:.3f}" if "baseline" in self._meta else ""
        return f"CompositionScores({'/'.join(self.kinds)}, {len(self._frame)} pairs{base})"

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the strongest pairs of each kind."""
        esc = html.escape
        name = str(self._meta.get("model", {}).get("name", ""))
        parts = [f"<div style='font-family:sans-serif;font-size:12px'><b>CompositionScores</b> &middot; {esc(name)}"]
        if "baseline" in self._meta:
            parts.append(f" &middot; random baseline {self._meta['baseline']:.4g} (sd {self._meta['baseline_std']:.2g})")
        hi = float(self._frame["score"].to_numpy().max()) if len(self._frame) else 1.0
        for k in self.kinds:
            top = self.top(5, k)
            rows = "".join(
                f"<tr><td>L{int(sl)}H{int(sh)}</td><td>&rarr;</td><td>L{int(rl)}H{int(rh)}</td>"
                f"<td style='background:{colour(float(v), 0.0, hi)}'>{float(v):.4f}</td></tr>"
                for sl, sh, rl, rh, v in zip(top["sender_layer"], top["sender_head"], top["receiver_layer"],
                                             top["receiver_head"], top["score"])
            )
            parts.append(f"<p><b>{esc(_NAMES[k])}</b></p><table style='border-collapse:collapse'>{rows}</table>")
        parts.append("</div>")
        return "".join(parts)

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> CompositionScores:
        return cls(payload.frame, payload.meta)
