"""Copying and negative copying heads, read from the OV circuit.

A copying head raises the logit of the token it attends to: the copying half of induction
heads (Olsson et al. 2022) and IOI's name movers (Wang et al. 2022). A negative copying head
lowers it: negative name movers and copy suppression. For sampled tokens ``t`` the row
``W_EE[t] @ W_OV @ W_U`` ranks the whole vocabulary; the score is the share of tokens whose own
logit is among the top ``k`` (bottom ``k`` for negative copying). Name movers score above 95%,
an average head below 20% (Wang et al., with ``k = 5``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import headzoo as hz


@dataclasses.dataclass(frozen=True)
class _OVCopying(hz.WeightDetector):
    k: int = 5

    _direction = "above"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise hz.InvalidOptionError(f"{self.name}: k must be an integer >= 1; got {self.k!r}")

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        circuits = circuits if circuits is not None else hz.WeightCircuits(model, progress=progress)
        ranks = circuits.ov_ranks(self.n_tokens, self.seed, self.embedding)
        rank = ranks.above if self._direction == "above" else ranks.below
        k = hz.rank_cutoff(self.k, ranks.n_outputs)
        metrics = {"score": (rank < k).double().mean(-1), "rank0": (rank == 0).double().mean(-1)}
        meta = {
            "k": k,
            "sample": circuits.sample_metadata(self.n_tokens, self.seed),
            "embedding": hz.embedding_metadata(model, self.embedding),
        }
        return hz.DetectorOutput(metrics, meta=meta)


@hz.register
@dataclasses.dataclass(frozen=True)
class Copying(_OVCopying):
    """Share of sampled tokens whose own logit is in the top ``k`` (default 5) of
    ``W_EE[t] W_OV W_U`` over the vocabulary; ``rank0``: share where it is the maximum.
    Ties count against the head."""

    name = "copying"
    stage = "expression preparation"
    description = "Its OV circuit raises the logit of the token it attends to (name movers, induction)."
    reference = "Wang et al. 2022 (IOI name movers), arXiv 2211.00593; Olsson et al. 2022"
    variant = "own token in top k=5 of W_EE W_OV W_U over the vocabulary; share of sampled tokens"
    threshold = 0.5


@hz.register
@dataclasses.dataclass(frozen=True)
class NegativeCopying(_OVCopying):
    """Share of sampled tokens whose own logit is in the bottom ``k`` (default 5) of
    ``W_EE[t] W_OV W_U``; ``rank0``: share where it is the minimum. Ties count against."""

    name = "negative_copying"
    stage = "expression preparation"
    description = "Its OV circuit lowers the logit of the token it attends to (negative name movers)."
    reference = "Wang et al. 2022 (IOI negative name movers), arXiv 2211.00593"
    variant = "own token in bottom k=5 of W_EE W_OV W_U over the vocabulary; share of sampled tokens"
    threshold = 0.5
    _direction = "below"
