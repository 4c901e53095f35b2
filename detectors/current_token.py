"""Current-token heads: attend to their own position (a cheap extra)."""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class CurrentToken(hz.PositionalDetector):
    """Mean over queries ``q >= 1`` of the diagonal ``A[q, q]`` (query 0 has no choice)."""

    name = "current_token"
    stage = "in-context identification"
    description = "Attends from each token to itself."
    reference = "headzoo shared/DETECTORS.md section 7 (cheap extras)"
    variant = "mean over queries q>=1 of A[q, q]"
    threshold = 0.4

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        diag = torch.eye(seq, dtype=torch.bool, device=device)
        diag[0, 0] = False  # query 0 has no choice
        return diag
