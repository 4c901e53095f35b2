"""Null baselines: the same scores on randomly initialised copies of the model.

A score means little without chance: on a 16-token context a random head puts 0.47 of its
attention on the previous token, and a weight score over a small vocabulary has a floor of
its own. ``hz.detect(..., baseline=True)`` therefore also scores ``baseline_models`` copies of
the model with the same architecture, tokenizer and hooks but fresh weights drawn with the
initialisation scheme TransformerLens uses (GPT-2 style: every weight matrix normal with
standard deviation ``cfg.initializer_range``, biases zero, normalisation gains one), each from
its own seed, and reports for every head ``z = (score - mean) / std`` against the random
heads of the same layer, pooled over heads and models (heads of one layer are exchangeable
at initialisation; layers are not quite, since the residual stream grows with depth).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd
import torch

__all__ = ["random_twin", "init_scheme", "add_z_scores"]


def init_scheme(model: Any) -> dict[str, Any]:
    """The initialisation :func:`random_twin` draws from, as recorded in result metadata."""
    cfg = model.cfg
    std = float(getattr(cfg, "initializer_range", -1.0) or -1.0)
    if not std > 0:
        std = 0.8 / math.sqrt(int(cfg.d_model))  # TransformerLens' default for initializer_range
    return {"scheme": "gpt2", "weights": f"normal(0, {std:.6g})", "std": std, "biases": "zeros",
            "normalisation_gains": "ones"}


def _is_gain(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    owner = name.rsplit(".", 2)[-2] if name.count(".") else ""
    return leaf in ("w", "weight") and any(k in owner.lower() for k in ("ln", "norm"))


@torch.no_grad()
def random_twin(model: Any, seed: int) -> Any:
    """A copy of ``model`` with freshly initialised weights (see :func:`init_scheme`).

    The copy keeps the architecture, the tokenizer and the hook points; ``model`` itself is
    not touched. Parameters are drawn in the order ``named_parameters`` lists them from a
    private generator seeded with ``seed``, so the same seed gives the same copy.
    """
    std = init_scheme(model)["std"]
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(int(seed))
    for name, param in twin.named_parameters():
        if param.ndim >= 2:
            values = torch.randn(param.shape, generator=g, dtype=torch.float32) * std
        elif _is_gain(name):
            values = torch.ones(param.shape)
        else:
            values = torch.zeros(param.shape)
        param.copy_(values.to(device=param.device, dtype=param.dtype))
    twin.eval()
    return twin


def add_z_scores(frame: pd.DataFrame, nulls: list[pd.DataFrame]) -> pd.DataFrame:
    """``frame`` with ``baseline_mean``, ``baseline_std`` and ``z`` columns.

    Args:
        frame: tidy scores of the model (``detector, layer, head, score, ...``).
        nulls: the same detectors' tidy scores on each random copy.

    The null of head ``(l, h)`` of a detector is every score that detector gave a head of
    layer ``l`` in any copy; when that layer's spread is zero (a constant score), the spread
    of all layers is used instead, and ``z`` is NaN only where no null score exists.
    """
    null = pd.concat(nulls, ignore_index=True) if nulls else pd.DataFrame(columns=["detector", "layer", "score"])
    null = null[["detector", "layer", "score"]].dropna()
    per_layer = null.groupby(["detector", "layer"])["score"].agg(["mean", "std"])
    overall = null.groupby("detector")["score"].agg(["mean", "std"])
    out = frame.copy()
    means, stds = [], []
    for det, layer in zip(out["detector"], out["layer"], strict=True):
        key = (det, int(layer))
        if key in per_layer.index:
            mean, std = per_layer.loc[key, "mean"], per_layer.loc[key, "std"]
        else:
            mean, std = math.nan, math.nan
        if not (std > 1e-12) and det in overall.index:
            std = overall.loc[det, "std"]
        means.append(float(mean))
        stds.append(float(std) if std > 1e-12 else math.nan)
    out["baseline_mean"] = means
    out["baseline_std"] = stds
    out["z"] = (out["score"] - out["baseline_mean"]) / out["baseline_std"]
    return out
