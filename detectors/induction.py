"""Induction heads: attend to the token after an earlier copy of the current token, and copy it.

On ``[BOS] r r`` the stripe score is the mean over second-half queries of ``A[q, q-(n-1)]``
(Olsson et al. 2022). The copying half is reported as ``copying``: the OV eigenvalue ratio of
``W_E W_OV W_U``. Published: GPT-2 small 5.1, 5.5, 6.9, 7.2, 7.10 (and 5.8, 5.9 in IOI).
Threshold 0.4 on the stripe (ARENA convention, arbitrary).
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class Induction(hz.PatternDetector):
    """``P[q, k] = tok[k-1] == tok[q]`` for ``1 <= k < q``; attention on those keys averaged
    over queries that have one (exactly the stripe score on the probe).

    With ``measure="transformer_lens"`` the pattern is TransformerLens' own (which also allows
    ``k == q``) and the score is its ``sum(A * P) / sum(A)``; a perfect head then scores ~0.5.
    Extra metric ``copying``: :func:`hz.ov_copying_ratio` (+1 = pure copying OV circuit).
    """

    name = "induction"
    stage = "latent reasoning"
    description = "Attends to the token after an earlier copy of the current token (and copies it)."
    reference = "Olsson et al. 2022, In-context Learning and Induction Heads, arXiv 2209.11895"
    variant = "stripe: attention on k with tok[k-1]==tok[q], mean over queries with such k; copying: OV eigenvalue ratio"
    threshold = 0.4

    #: also report the OV copying score (costs one d_model x vocab x d_model product)
    copying: bool = True

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        after_copy = torch.zeros_like(tokens[:, :, None].expand(-1, -1, seq), dtype=torch.bool)
        after_copy[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
        # TransformerLens' pattern keeps k == q (a repeated bigram); the stripe does not.
        diagonal = 0 if self.measure == "transformer_lens" else -1
        return after_copy & torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(diagonal)

    def weight_scores(self, model: object) -> dict[str, torch.Tensor]:
        return {"copying": hz.ov_copying_ratio(model)} if self.copying else {}
