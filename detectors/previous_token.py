"""Previous-token heads: each position attends to the one before it.

They feed induction heads (the key side of K-composition; Elhage et al. 2021). Published:
GPT-2 small 4.11 (near perfect) and 2.2. Threshold 0.4 is the ARENA convention (arbitrary).
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class PreviousToken(hz.PositionalDetector):
    """Mean over prompts and queries ``q >= 1`` of ``A[q, q-1]``.

    Also reports ``score_exclude_bos``: the same with key 0 ignored and rows renormalised,
    so heads that park spare attention on BOS are not understated (queries ``q >= 2``).
    """

    name = "previous_token"
    stage = "in-context identification"
    description = "Attends from each token to the token right before it."
    reference = "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits"
    variant = "mean over queries q>=1 of A[q, q-1]; plus score_exclude_bos"
    threshold = 0.4

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        return torch.ones(seq - 1, dtype=torch.bool, device=device).diag(-1)

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        out = super().reduce(pattern, match)
        out["score_exclude_bos"] = self._measure(pattern, match, True, self.exclude_current_token)
        return out
