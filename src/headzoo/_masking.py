"""The masking experiment of the retrieval-head paper: mask the top-K retrieval heads, or K
random other heads, while the model decodes needles, and watch retrieval accuracy.

Wu et al. (2024, arXiv 2404.15574, figure 6) find that masking the few retrieval heads breaks
needle-in-a-haystack retrieval while masking as many random heads barely matters: the causal
evidence that the score finds the heads that do the copying. Masking here means uniform
attention at every query that emits a token (the paper's), or zeroing the head's output there.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, final

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headzoo._errors import InvalidOptionError
from headzoo._forward import hook_name
from headzoo._io import Payload, Result, strings_as_str
from headzoo._models import library_versions, model_info
from headzoo._needle import NeedleHaystack, decode_needles
from headzoo._tokens import check_heads

__all__ = ["retrieval_masking", "MaskingCurve"]


@final
@dataclasses.dataclass(frozen=True, eq=False)
class MaskingCurve(Result):
    """Needle-retrieval accuracy with the top-K retrieval heads masked, beside K random heads.

    Attributes:
        frame: one row per run: ``method, k, heads ("none" | "top" | "random"), draw, accuracy
            (mean answer recall), retrieved (share of trials above min_recall), masked`` (the
            heads, as ``"L2H3 L0H1"``).
        meta: model, probe, the scores used to rank heads, seeds and decoding mode.
    """

    _FORMAT = "MaskingCurve"

    frame: pd.DataFrame
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        # Own copies (the caller's frame and dict are left alone), strings as Parquet gives them
        # back, so save/load round-trips exactly.
        if not isinstance(self.frame, pd.DataFrame) or not isinstance(self.meta, dict):
            raise InvalidOptionError("MaskingCurve needs a DataFrame and a metadata dict; build it with hz.retrieval_masking")
        object.__setattr__(self, "frame", strings_as_str(self.frame))
        object.__setattr__(self, "meta", copy.deepcopy(self.meta))

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (a copy)."""
        return self.frame.copy()

    def summary(self) -> pd.DataFrame:
        """Mean, spread and count of ``accuracy`` per ``method, heads, k`` (over random draws)."""
        g = self.frame.groupby(["method", "heads", "k"])["accuracy"]
        out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
        out["std"] = out["std"].fillna(0.0)
        return out

    def plot(self) -> Any:
        """Accuracy against K, top heads beside random heads (mean and min-max band), one panel
        per masking method, as a plotly ``Figure`` (returned, never shown)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        summary = self.summary()
        methods = list(dict.fromkeys(self.frame["method"]))
        fig = make_subplots(rows=1, cols=len(methods), subplot_titles=[html.escape(f"{m} masking") for m in methods],
                            shared_yaxes=True, horizontal_spacing=0.06)
        colours = {"top": "#c0392b", "random": "#2c7fb8"}
        for col, method in enumerate(methods, start=1):
            # a boolean mask selects rows, so these stay frames (the stubs allow a Series too)
            part = cast(pd.DataFrame, summary[summary["method"] == method])
            base = cast(pd.DataFrame, part[part["heads"] == "none"])
            for kind in ("top", "random"):
                rows = pd.concat([base, cast(pd.DataFrame, part[part["heads"] == kind])]).sort_values("k")
                label = "top-K retrieval heads" if kind == "top" else "K random other heads"
                if kind == "random" and len(rows):
                    fig.add_trace(go.Scatter(
                        x=list(rows["k"]) + list(rows["k"])[::-1], y=list(rows["max"]) + list(rows["min"])[::-1],
                        fill="toself", fillcolor="rgba(44,127,184,0.15)", line={"width": 0}, hoverinfo="skip",
                        showlegend=False, legendgroup=kind,
                    ), row=1, col=col)
                fig.add_trace(go.Scatter(
                    x=rows["k"], y=rows["mean"], mode="lines+markers", name=label, legendgroup=kind,
                    showlegend=col == 1, line={"color": colours[kind]},
                    hovertemplate=f"{label}<br>K %{{x}}<br>accuracy %{{y:.3f}}<extra>{html.escape(method)}</extra>",
                ), row=1, col=col)
            fig.update_xaxes(title_text="K heads masked", row=1, col=col)
        fig.update_yaxes(title_text="needle retrieval accuracy", range=[-0.02, 1.02], row=1, col=1)
        fig.update_layout(title=html.escape(f"headzoo: masking retrieval heads of {self.meta.get('model', {}).get('name', 'model')}"),
                          height=420, width=max(480, 420 * len(methods)))
        return fig

    def __repr__(self) -> str:
        # plain ints and strs: numpy 2 scalars print as np.int64(1) inside a list
        ks = sorted(int(k) for k in self.frame["k"].unique() if k > 0)
        methods = [str(m) for m in dict.fromkeys(self.frame["method"])]
        return f"MaskingCurve(methods {methods}, K {ks}, {int(self.meta['n_random'])} random draws)"

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): what was masked and the accuracy table."""
        table = self.summary().to_html(index=False, float_format=lambda x: f"{x:.3f}", escape=True)
        return f"<div><p>{html.escape(repr(self))}</p>{table}</div>"

    def _to_payload(self) -> Payload:
        return Payload(self.frame, self.meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> MaskingCurve:
        return cls(payload.frame, payload.meta)


def decode_mask_hooks(model: Any, heads: Any, method: str, prompt_len: int) -> list[tuple[str, Callable[..., Any]]]:
    """Hooks that mask ``heads`` at every query that emits a token (position ``prompt_len - 1``
    and after) during ONE decode whose passes run the positions in order: the whole prompt,
    then one token per pass (key-value cache), or a single full pass (a fresh set per pass).

    ``"zero"`` zeroes the heads' outputs ``z`` there. ``"uniform"`` sets them to the mean of
    the values at every visible key, which is what uniform attention outputs; the hooks keep a
    running sum of each masked head's values ``[batch, kv_head, d_head]`` across passes, so a
    one-token pass needs only its own value, not the whole prefix. The numbers equal
    :func:`hz.ablation_hooks` with ``positions=slice(prompt_len - 1, None)`` on full forwards.
    """
    info = model_info(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in check_heads(heads, info.n_layers, info.n_heads):
        by_layer.setdefault(layer, []).append(head)
    first = prompt_len - 1
    seen: dict[int, int] = dict.fromkeys(by_layer, 0)  # positions each layer has run so far
    total: dict[int, torch.Tensor] = {}  # running sum of values up to the last position run
    new_v: dict[int, torch.Tensor] = {}

    def keep_v(layer: int) -> Callable[..., None]:
        def hook(v: torch.Tensor, hook: Any) -> None:
            new_v[layer] = v  # [batch, pos, kv_head, d_head] of this pass's positions
        return hook

    def mask(layer: int) -> Callable[..., torch.Tensor]:
        hs = by_layer[layer]

        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            start, n = seen[layer], z.shape[1]
            seen[layer] = start + n
            value: torch.Tensor | float = 0.0
            if method == "uniform":
                v = new_v.pop(layer)
                running = v.cumsum(1)
                if layer in total:
                    running = running + total[layer][:, None]
                total[layer] = running[:, -1]
                counts = torch.arange(start + 1, start + n + 1, device=v.device, dtype=v.dtype)[None, :, None, None]
                group = info.n_heads // v.shape[2]
                value = (running / counts)[:, :, [h // group for h in hs]]
            local = torch.arange(max(first - start, 0), n, device=z.device)  # emitting queries of this pass
            if not len(local):
                return z
            z = z.clone()
            rows = local[:, None]
            cols = torch.tensor(hs, device=z.device)[None, :]
            z[:, rows, cols] = value[:, local].to(z.dtype) if isinstance(value, torch.Tensor) else value
            return z
        return hook

    hooks = [(hook_name("z", layer), mask(layer)) for layer in by_layer]
    if method == "uniform":
        hooks = [(hook_name("v", layer), keep_v(layer)) for layer in by_layer] + hooks
    return hooks


def _ranking(scores: Any, n_layers: int, n_heads: int) -> tuple[torch.Tensor, str]:
    """Retrieval scores ``[layer, head]`` from a HeadScores, a frame or a tensor."""
    from headzoo._results import HeadScores

    if isinstance(scores, HeadScores):
        if "retrieval" not in scores.detectors:
            raise InvalidOptionError(
                f"scores has no 'retrieval' detector (it has {scores.detectors}); pass "
                "hz.detect(model, 'retrieval') or leave scores=None"
            )
        matrix = torch.tensor(scores.matrix("retrieval").to_numpy(dtype=float))
        source = "HeadScores"
    else:
        try:
            matrix = torch.as_tensor(np.asarray(scores, dtype=float))
        except (TypeError, ValueError):
            raise InvalidOptionError(f"scores must be hz.HeadScores or a [layer, head] array; got {type(scores).__name__}") from None
        source = "array"
    if tuple(matrix.shape) != (n_layers, n_heads):
        raise InvalidOptionError(f"scores has shape {tuple(matrix.shape)}; the model has {n_layers} layers x {n_heads} heads")
    return torch.nan_to_num(matrix.double(), nan=-np.inf), source


def _cost(trials: Any, batch_size: int, n_runs: int, *, cached: bool) -> str:
    """The work of ``n_runs`` masked decodes of ``trials``, in words: decode steps and passes."""
    lengths: dict[int, int] = {}
    for t in trials.tokens:
        lengths[len(t)] = lengths.get(len(t), 0) + 1
    batches = sum(-(-n // batch_size) for n in lengths.values())  # trials of one length share a batch
    steps = n_runs * len(trials.tokens) * trials.n_decode
    passes = n_runs * batches * trials.n_decode
    how = ("the prompt once, then one token per pass (key-value cache)" if cached
           else "a full forward over the prompt per token (this model has no key-value cache)")
    return (f"{n_runs} masked runs x {len(trials.tokens)} trials x {trials.n_decode} tokens = {steps} decode steps "
            f"in {passes} forward passes of up to {batch_size} trials, {how}")


def retrieval_masking(
    model: Any,
    *,
    k: int | Sequence[int] | None = None,
    methods: Sequence[str] = ("uniform", "zero"),
    n_random: int = 5,
    scores: Any = None,
    probe: NeedleHaystack | None = None,
    min_recall: float = 0.5,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool | None = None,
) -> MaskingCurve:
    """Mask the top-K retrieval heads and K random other heads while decoding needles.

    Args:
        k: the numbers of heads to mask. ``None``: 1, 2, 4, ... up to half the heads (and half
            the heads itself).
        methods: ``"uniform"`` (the paper's masking: uniform attention) and/or ``"zero"``.
        n_random: random draws of K heads per K, from the heads outside the top K.
        scores: how to rank heads: ``hz.HeadScores`` holding ``retrieval`` or a ``[layer, head]``
            array. ``None``: scored here, on the same trials the accuracy is measured on.
        probe: the needle probe (default ``hz.NeedleHaystack()``).
        min_recall: a trial counts as retrieved when its answer recall is above this.
        seed: seeds the random draws.
        progress: a progress bar (``None``: when there are more than 8 runs). Unless it is
            ``False``, the expected cost is printed (to stderr) before the first masked run, and
            a time estimate after it.

    Cost: ``len(methods) * len(k) * (1 + n_random)`` masked decodes of every trial, plus one
    unmasked. Each decode runs ``n_decode`` (the probe's answer length) steps per trial: one
    one-token pass per step with a key-value cache (masking included: the masked heads keep a
    running sum of their values), a full forward over the prompt per step without one (the
    default model, a ``boot_native`` bridge, has none). On the default model with
    ``k=[1, 2, 4]`` and the defaults that is 36 masked decodes; budget them with ``n_random``,
    ``methods`` and a smaller ``probe`` (fewer ``lengths``, ``depths`` or ``n_needles``).

    Returns:
        :class:`MaskingCurve`; its ``k = 0`` rows are the unmasked model.
    """
    info = model_info(model)
    total = info.n_layers * info.n_heads
    probe = NeedleHaystack() if probe is None else probe
    if not isinstance(probe, NeedleHaystack):
        raise InvalidOptionError(f"probe must be hz.NeedleHaystack; got {type(probe).__name__}")
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    bad = [m for m in methods if m not in ("uniform", "zero")]
    if not methods or bad:
        raise InvalidOptionError(f"methods must be a non-empty list of 'uniform' and 'zero'; got {methods!r}")
    if not isinstance(n_random, int) or isinstance(n_random, bool) or n_random < 1:
        raise InvalidOptionError(f"n_random must be a positive integer; got {n_random!r}")
    if k is None:
        ks = [2**i for i in range(total.bit_length()) if 2**i <= total // 2]
        if total // 2 >= 1 and total // 2 not in ks:
            ks.append(total // 2)
    else:
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or any(not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x < 1 for x in ks):
            raise InvalidOptionError(f"k must be positive integers; got {k!r}")
        ks = sorted({int(x) for x in ks})
    too_big = [x for x in ks if 2 * x > total]
    if too_big or not ks:
        raise InvalidOptionError(
            f"k {too_big or ks} leaves too few other heads to draw K random ones from: the model has {total} "
            f"heads, so K can be at most {total // 2}"
        )
    trials = probe.build(model)
    base = decode_needles(model, trials, batch_size=batch_size, progress=False)
    if scores is None:
        ranking, source = base.head_scores(min_recall), "scored on the same trials"
    else:
        ranking, source = _ranking(scores, info.n_layers, info.n_heads)
    flat = ranking.reshape(-1)
    # highest first; ties in (layer, head) order, so the ranking is deterministic
    order = sorted(range(total), key=lambda i: (-float(flat[i]), i))
    heads_of = [(i // info.n_heads, i % info.n_heads) for i in range(total)]
    g = torch.Generator().manual_seed(seed)
    plan: list[tuple[str, int, str, int, list[tuple[int, int]]]] = []
    for x in ks:
        top = [heads_of[i] for i in order[:x]]
        others = torch.tensor(order[x:])
        draws = [sorted(heads_of[int(i)] for i in others[torch.randperm(len(others), generator=g)[:x]]) for _ in range(n_random)]
        for method in methods:
            plan.append((method, x, "top", 0, top))
            plan.extend((method, x, "random", d, heads) for d, heads in enumerate(draws))
    rows = [{"method": m, "k": 0, "heads": "none", "draw": 0, "accuracy": float(base.recall.mean()),
             "retrieved": float(base.retrieved(min_recall).mean()), "masked": ""} for m in methods]
    show = progress if progress is not None else len(plan) > 8
    cost = _cost(trials, batch_size, len(plan), cached=base.mode.startswith("kv_cache"))
    if progress is not False:
        # said before the first masked decode: this can run for minutes
        print(f"headzoo masking: {cost}", file=sys.stderr, flush=True)
    masked_mode = ""
    started = time.perf_counter()
    for i, (method, x, kind, draw, heads) in enumerate(
            tqdm(plan, desc="headzoo masking", unit="run", disable=not show, leave=False)):
        run = decode_needles(model, trials, batch_size=batch_size, mask_heads=heads,
                             mask_method=cast(Literal["uniform", "zero"], method), progress=False)  # checked above
        masked_mode = masked_mode or run.mode
        if i == 0 and progress is not False and len(plan) > 1:
            first = time.perf_counter() - started
            print(f"headzoo masking: the first of {len(plan)} runs took {first:.1f} s; about "
                  f"{first * (len(plan) - 1):.0f} s to go", file=sys.stderr, flush=True)
        rows.append({
            "method": method, "k": x, "heads": kind, "draw": draw, "accuracy": float(run.recall.mean()),
            "retrieved": float(run.retrieved(min_recall).mean()), "masked": " ".join(f"L{a}H{b}" for a, b in heads),
        })
    frame = pd.DataFrame(rows).sort_values(["method", "k", "heads", "draw"], kind="stable", ignore_index=True)
    meta = {
        "model": info.config_dict(),
        "probe": trials.meta,
        "ranking": source,
        "top_heads": [list(heads_of[i]) for i in order[: max(ks)]],
        "retrieval_scores": [[float(v) for v in row] for row in ranking.tolist()],
        "k": ks,
        "methods": methods,
        "n_random": n_random,
        "seed": seed,
        "min_recall": min_recall,
        "decoding": {"unmasked": base.mode, "masked": masked_mode},
        "versions": library_versions(),
    }
    return MaskingCurve(frame, meta)
