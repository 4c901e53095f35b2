"""Duplicate-token heads: attend from a token to its earlier occurrences.

On the repeated-token probe ``[BOS] r r`` the score is the mean over second-half queries of
attention to the earlier copy (the diagonal at offset ``-n``). Published: GPT-2 small 0.1,
0.10, 3.0 (Wang et al. 2022, the IOI paper).
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class DuplicateToken(hz.PatternDetector):
    """``P[q, k] = tok[k] == tok[q]`` for ``k < q``; attention on earlier copies, averaged over
    queries that have one (the stripe at offset ``-n`` on the probe)."""

    name = "duplicate_token"
    stage = "in-context identification"
    description = "Attends from a token to earlier occurrences of the same token."
    reference = "Wang et al. 2022, Interpretability in the Wild (IOI), arXiv 2211.00593"
    variant = "attention on earlier copies of the query token, mean over queries with a copy"
    threshold = 0.4

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        earlier = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(-1)
        return (tokens[:, :, None] == tokens[:, None, :]) & earlier
