"""Dormant heads: attention parked on the first token, and almost nothing written.

Many heads of trained models put most of their attention on the first token (an attention
sink) and, because that token's value is tiny, add almost nothing to the residual stream: on
that input the head is a no-op. Guo et al. 2024 (Active-Dormant Attention Heads, arXiv
2410.13835) show such heads switch between active and dormant with the input; Sandoval-Segura
et al. 2025 (arXiv 2504.03889) find that scores built on the head's output norm catch inactive
heads that sink-attention scores miss. This detector needs both: a sink *and* a small output.
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class Dormant(hz.PositionalDetector):
    """``score = sink_share * max(0, 1 - norm_ratio)`` per prompt, averaged over prompts.

    - ``sink_share``: mean over queries ``q >= 1`` of ``A[q, 0]`` (the first-token score);
    - ``norm_ratio``: the head's mean output norm ``||z_q W_O||`` over the same queries,
      divided by the mean of that over all heads of its layer (the layer-relative output
      norm of Sandoval-Segura et al.); a head writing as much as its layer's average has 1,
      a silent head 0.

    A sink head that still writes (a "resting" head with a large value on the first token)
    scores 0; a silent head that attends elsewhere scores 0. Both numbers are reported
    beside the score. Limitation, by construction: a layer whose heads are *all* dormant has
    ratios near 1 and scores low; read ``out_norm`` (absolute) for that case.
    """

    name = "dormant"
    stage = "in-context identification"
    description = "Parks its attention on the first token and writes almost nothing: a no-op on this input."
    reference = (
        "Guo et al. 2024, Active-Dormant Attention Heads, arXiv 2410.13835; Sandoval-Segura et al. 2025, "
        "Identifying and Evaluating Inactive Heads in Pretrained LLMs, arXiv 2504.03889"
    )
    variant = (
        "sink_share * max(0, 1 - norm_ratio); sink_share = mean over q>=1 of A[q, 0]; norm_ratio = mean "
        "||z W_O|| over q>=1 relative to the layer's mean over heads"
    )
    # Half of the attention on the sink and at most half of the layer's typical output: a
    # convention of ours (the papers threshold the two numbers separately, per model).
    threshold = 0.5
    reads = ("out_norm",)

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        first = torch.zeros(seq, seq, dtype=torch.bool, device=device)
        first[1:, 0] = True
        return first

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor, out_norm: torch.Tensor | None = None) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``out_norm [batch, head, query]``."""
        if out_norm is None:
            raise hz.MissingHooksError("dormant needs each head's output norm (reads=('out_norm',)); run it through hz.detect")
        sink, valid = self._measure(pattern, match, self.exclude_bos, self.exclude_current_token)
        norm = out_norm[:, :, 1:].mean(-1)  # [batch, head]: queries q >= 1, as the sink share
        layer_mean = norm.mean(-1, keepdim=True)
        ratio = norm / layer_mean.clamp_min(torch.finfo(norm.dtype).tiny)
        score = sink * (1 - ratio).clamp_min(0)
        return {
            "score": (score, valid),
            "sink_share": (sink, valid),
            "norm_ratio": (ratio, valid),
            "out_norm": (norm, valid),
        }
