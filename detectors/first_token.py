"""First-token (attention-sink) heads: park attention on position 0.

Sinks show up in most trained models (Xiao et al. 2023, Efficient Streaming Language Models
with Attention Sinks); a head with > 0.3 of its attention on position 0 over ~64 tokens is
usually "resting".
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class FirstToken(hz.PositionalDetector):
    """Mean over queries ``q >= 1`` of ``A[q, 0]``."""

    name = "first_token"
    stage = "in-context identification"
    description = "Attention sink: attends to the first position (usually BOS)."
    reference = "Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks, arXiv 2309.17453"
    variant = "mean over queries q>=1 of A[q, 0]"
    threshold = 0.3

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        first = torch.zeros(seq, seq, dtype=torch.bool, device=device)
        first[1:, 0] = True
        return first
