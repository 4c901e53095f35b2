"""Streaming heads: attention stays inside the sink and a recent window.

DuoAttention (Xiao et al. 2024) splits heads into retrieval heads, which need the whole
key-value cache, and streaming heads, which need only the first few tokens (the attention
sink) and the most recent ones; the streaming heads' caches can be cut to that window. The
paper learns a gate per head; this is the pattern proxy: the share of attention inside
``sink + recent`` on long inputs. A high score lists a head whose cache could be cut.

Scored on the ``long_repeated_tokens`` probe (``[BOS] r r`` as long as the context allows): an
induction or retrieval head looks half a prompt back and scores low, a local or sink head high.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class Streaming(hz.PositionalDetector):
    """Mean over queries ``q >= S + R`` of the attention on keys ``k < S`` (sink) or
    ``k > q - R`` (the ``R`` most recent keys, the query's own included).

    ``S, R`` are ``sink_size, recent_size``, scaled down for short prompts: the window may
    take at most a quarter of a prompt of ``seq`` positions (otherwise a head spreading its
    attention evenly would score high on short prompts). When ``sink_size + recent_size >
    seq // 4``: ``S = max(1, round(sink_size * (seq // 4) / (sink_size + recent_size)))``,
    ``R = max(1, seq // 4 - S)``. No warning: the sizes used are reported as the metrics
    ``sink_used`` and ``recent_used`` (means over prompts) and the rule in the metadata.
    Only queries ``q >= S + R`` are scored: they have keys outside the window.

    Metrics: ``score`` (in the window), ``sink`` and ``recent`` (its two parts).
    With ``measure="transformer_lens"`` the score is ``sum(A * P) / sum(A)`` over the whole
    prompt, ``P`` the window on the scored queries.

    Options:
        sink_size: first positions kept (DuoAttention keeps a few "sink" tokens).
        recent_size: most recent positions kept.
    """

    name = "streaming"
    description = "Attends only to the first few tokens (sink) and a recent window, so its cache could be cut."
    reference = (
        "Xiao et al. 2024, DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming "
        "Heads, arXiv 2410.10819"
    )
    variant = (
        "pattern proxy (DuoAttention learns gates): mean over queries q >= S+R of the attention on keys k < S "
        "or k > q-R; S, R = sink_size, recent_size scaled to at most a quarter of the prompt"
    )
    threshold = 0.9  # headzoo convention: a head whose cut cache keeps >= 90% of its attention
    stage = "expression preparation"
    probe = "long_repeated_tokens"

    sink_size: int = 4
    recent_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("sink_size", "recent_size"):
            if getattr(self, name) < 1:
                raise hz.InvalidOptionError(f"{self.name}: {name} must be >= 1; got {getattr(self, name)}")

    def window(self, seq: int) -> tuple[int, int]:
        """``(S, R)`` used on a prompt of ``seq`` positions."""
        budget = seq // 4
        total = self.sink_size + self.recent_size
        if total <= budget:
            return self.sink_size, self.recent_size
        sink = max(1, round(self.sink_size * budget / total))
        return sink, max(1, budget - sink)

    def _parts(self, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Sink and recent keys ``[query, key]`` of the scored queries."""
        sink, recent = self.window(seq)
        q = torch.arange(seq, device=device)[:, None]
        k = torch.arange(seq, device=device)[None, :]
        scored = q >= sink + recent
        return (k < sink) & scored, (k > q - recent) & (k <= q) & scored

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        sink, recent = self._parts(seq, device)
        return sink | recent

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match [batch, query, key]`` -> ``score``,
        ``sink``, ``recent``, ``sink_used``, ``recent_used`` as ``([batch, head], valid [batch])``."""
        batch, n_heads, seq, _ = pattern.shape
        score, valid = self._measure(pattern, match, self.exclude_bos, self.exclude_current_token)
        sink_keys, recent_keys = (part.expand(batch, seq, seq) & match for part in self._parts(seq, pattern.device))
        rows = match.any(-1)
        sink_share = self._share(pattern, sink_keys, rows)
        recent_share = self._share(pattern, recent_keys, rows)
        sink, recent = self.window(seq)
        used = {"sink_used": float(sink), "recent_used": float(recent)}
        out = {"score": (score, valid), "sink": (sink_share, valid), "recent": (recent_share, valid)}
        for metric, value in used.items():
            out[metric] = (torch.full((batch, n_heads), value, dtype=pattern.dtype, device=pattern.device), valid)
        return out

    def _share(self, pattern: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean over ``rows [batch, query]`` of the attention on ``keys [batch, query, key]``
        (excluded keys dropped and rows renormalised, as for the score) -> ``[batch, head]``."""
        seq = pattern.shape[-1]
        keep = self.key_mask(seq, pattern.device)
        attn = pattern * keep
        on = torch.einsum("bhqk,bqk->bhq", attn, (keys & keep).to(attn.dtype))
        on = on / attn.sum(-1).clamp_min(1e-12)
        return (on * rows[:, None]).sum(-1) / rows.sum(-1).clamp_min(1)[:, None].to(attn.dtype)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "window_rule": (
            "S, R = sink_size, recent_size when sink_size + recent_size <= seq // 4, else S = max(1, round("
            "sink_size * (seq // 4) / (sink_size + recent_size))), R = max(1, seq // 4 - S); the sizes used are "
            "the metrics sink_used and recent_used"
        )}
