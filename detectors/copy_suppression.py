"""Copy-suppression heads: attend to the tokens the model predicts, and push their logits down.

McDougall, Conmy, Rushing, McGrath, Nanda (2023), Copy Suppression, arXiv 2310.04625. Two
weight-based halves, both reported:

- OV (negative copying): in ``W_EE[t] @ W_OV @ W_U`` the token's own logit is among the ``k``
  lowest of the vocabulary (GPT-2 small 10.7: 84.7%).
- QK: with a predicted token's unembedding as the query and effective embeddings as keys, the
  head attends most to that same token (10.7: 95.7%). The baseline with the effective embedding
  on the query side is reported beside it (low for copy suppression, high for duplicate-token
  heads).

Published: GPT-2 small 10.7, 11.10; GPT-2 medium 22.14, 23.3; Pythia-410m 19.15.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class CopySuppression(hz.WeightDetector):
    """``score = min(ov, qk)``: a head must show both halves.

    Metrics: ``ov`` (share of sampled tokens whose own logit ranks among the ``k`` lowest of
    the vocabulary), ``qk`` (share whose unembedding, as query, ranks its own token's effective
    embedding among the top ``k`` of the sampled keys), ``qk_baseline`` (the same with the
    effective embedding as the query), ``ov_rank0`` and ``qk_rank0`` (rank 0 shares).
    A tie counts against the head, so a flat OV or QK circuit scores 0.

    Options:
        k: rank cut-off (paper: 10), shrunk to ``n // 20`` for small candidate sets.
        n_tokens, seed, embedding: see :class:`hz.WeightDetector`.
    """

    name = "copy_suppression"
    stage = "expression preparation"
    description = "Attends to tokens the model predicts and lowers their logits (negative copying)."
    reference = "McDougall et al. 2023, Copy Suppression, arXiv 2310.04625"
    variant = "min(OV: own logit in bottom k of W_EE W_OV W_U; QK: W_U query ranks own W_EE key top k); k=10"
    threshold = 0.5

    k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise hz.InvalidOptionError(f"copy_suppression: k must be an integer >= 1; got {self.k!r}")

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        circuits = circuits if circuits is not None else hz.WeightCircuits(model, progress=progress)
        ov_ranks = circuits.ov_ranks(self.n_tokens, self.seed, self.embedding)
        qk = circuits.qk_ranks(self.n_tokens, self.seed, self.embedding, "unembed")
        base = circuits.qk_ranks(self.n_tokens, self.seed, self.embedding, "embed")
        k_ov = hz.rank_cutoff(self.k, ov_ranks.n_outputs)
        k_qk = hz.rank_cutoff(self.k, qk.shape[-1])
        share = lambda hit: hit.double().mean(-1)  # noqa: E731
        ov = share(ov_ranks.below < k_ov)
        qk_score = share(qk < k_qk)
        metrics = {
            "score": torch.minimum(ov, qk_score),
            "ov": ov,
            "qk": qk_score,
            "qk_baseline": share(base < k_qk),
            "ov_rank0": share(ov_ranks.below == 0),
            "qk_rank0": share(qk == 0),
        }
        meta = {
            "k_ov": k_ov,
            "k_qk": k_qk,
            "sample": circuits.sample_metadata(self.n_tokens, self.seed),
            "qk_keys": "the sampled tokens' effective embeddings",
            "embedding": hz.embedding_metadata(model, self.embedding),
        }
        return hz.DetectorOutput(metrics, meta=meta)
