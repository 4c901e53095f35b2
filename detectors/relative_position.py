"""Relative-position (positional) heads: the argmax key sits at a fixed offset from the query.

Voita et al. (2019) call a head positional when, on at least 90% of tokens, its largest
attention weight goes to the same relative position (in their encoders: the previous or the
next token). In a causal model the offset ``d`` looks back: ``d = 1`` is a previous-token head,
``d = 0`` a current-token head, and any other fixed ``d`` is a head that reads ``d`` tokens back.

Scored on the ``random_tokens`` probe, where no token repeats: on ``[BOS] r r`` an induction
head's argmax sits at the fixed offset ``n - 1`` on the second half (and a duplicate-token
head's at ``n``), which an argmax-offset score cannot tell from a positional head.
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class RelativePosition(hz.PositionalDetector):
    """Share of queries whose argmax key sits at the head's modal offset.

    Per prompt and head: for every scored query ``q`` take ``k* = argmax_k A[q, k]`` and its
    offset ``q - k*``; the modal offset ``d`` among offsets ``0..D`` (ties: the smaller) gives

    - ``score``: the share of scored queries with ``q - k* == d`` (Voita et al.: >= 0.9);
    - ``offset``: ``d`` (averaged over prompts: an integer when the head keeps one offset on
      every prompt, which a positional head does);
    - ``attention``: the mean of ``A[q, q - d]`` over the scored queries.

    ``D = min(max_offset, (seq - 1) // 2)`` for a prompt of ``seq`` positions, and the scored
    queries are ``q > D``, so every offset ``0..D`` points at a real key and at least half of
    the queries count. An argmax outside ``0..D`` is a miss. That includes the first position
    (BOS, the usual attention sink): a sink head's argmax sits at offset ``q``, which changes
    with every query, so it is not positional. With ``exclude_bos`` the argmax is taken over
    keys ``>= 1`` instead (a head that parks spare attention on BOS then shows its other
    pattern); with ``exclude_current_token`` over keys ``< q`` (offset 0 cannot win).

    Options:
        max_offset: the largest offset looked for.
    """

    name = "relative_position"
    description = "Its strongest attention goes a fixed number of positions back (the offset)."
    reference = "Voita et al. 2019, Analyzing Multi-Head Self-Attention, arXiv 1905.09418"
    variant = (
        "share of queries q > D whose argmax key is at the modal offset d in 0..D (D = min(max_offset, "
        "(seq-1)//2)), per prompt; metrics offset (d) and attention (mean A[q, q-d]); an argmax on the "
        "sink or beyond D is a miss"
    )
    threshold = 0.9  # Voita et al. 2019: positional if the same relative position is the argmax on >= 90% of tokens
    stage = "in-context identification"
    probe = "random_tokens"

    max_offset: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_offset < 1:
            raise hz.InvalidOptionError(f"{self.name}: max_offset must be >= 1; got {self.max_offset}")
        if self.measure != "match":
            raise hz.InvalidOptionError(
                f"{self.name}: measure={self.measure!r} does not apply: this score counts argmax keys, not a share "
                "of attention mass. Leave measure='match' (the 'attention' metric gives the attention at the offset)."
            )

    def band(self, seq: int) -> int:
        """``D``: the largest offset scored in a prompt of ``seq`` positions."""
        return min(self.max_offset, (seq - 1) // 2)

    def mask(self, seq: int, device: torch.device) -> torch.Tensor:
        """``M[q, k]``: ``q - D <= k <= q`` for the scored queries ``q > D`` (empty rows elsewhere)."""
        d = self.band(seq)
        q = torch.arange(seq, device=device)[:, None]
        k = torch.arange(seq, device=device)[None, :]
        # prompts under 3 positions leave no offset >= 1 to look for: nothing is scored
        return (k <= q) & (k >= q - d) & (q > d) & (d >= 1)

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match [batch, query, key]`` (the band) ->
        ``score``, ``offset``, ``attention``, each ``([batch, head], valid [batch])``."""
        batch, n_heads, seq, _ = pattern.shape
        d_max = max(self.band(seq), 0)
        scored = match.any(-1)  # [batch, query]
        n_rows = scored.sum(-1)  # [batch]
        valid = n_rows > 0
        keep = self.key_mask(seq, pattern.device)
        # excluded keys can never win the argmax (rows always keep a key: scored queries have q > D >= 1)
        arg = pattern.masked_fill(~keep, -1.0).argmax(-1)  # [batch, head, query]
        offset = torch.arange(seq, device=pattern.device) - arg
        hit = (offset <= d_max) & scored[:, None, :]
        counts = torch.zeros(batch, n_heads, d_max + 1, dtype=pattern.dtype, device=pattern.device)
        counts.scatter_add_(-1, offset.clamp(0, d_max), hit.to(pattern.dtype))
        mode = counts.argmax(-1)  # [batch, head]; the first (smallest) offset on ties
        denom = n_rows.clamp_min(1).to(pattern.dtype)[:, None]
        share = counts.gather(-1, mode[..., None])[..., 0] / denom
        # attention at the modal offset: A[q, q - mode] for every scored query
        q_idx = torch.arange(seq, device=pattern.device)
        keys = (q_idx[None, None, :] - mode[..., None]).clamp_min(0)  # [batch, head, query]
        at = pattern.gather(-1, keys[..., None])[..., 0]
        attention = (at * scored[:, None, :]).sum(-1) / denom
        return {"score": (share, valid), "offset": (mode.to(pattern.dtype), valid), "attention": (attention, valid)}
