"""N-gram (statistical) induction heads: attend to what followed the same last n tokens before.

A plain induction head matches one token: from ``x`` it attends to whatever followed ``x``
earlier. Transformers trained on in-context n-gram languages (Akyurek et al. 2024, In-Context
Language Learning; Edelman et al. 2024, The Evolution of Statistical Induction Heads) grow
heads that match the last ``n - 1`` tokens *and* the current one, attending to the token after
an earlier occurrence of the whole n-gram: the in-context n-gram prediction. The two differ
only where ``x`` followed several contexts before, so this detector scores exactly those
queries, on the ``ngram`` probe built for it.
"""

from __future__ import annotations

import dataclasses

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class NGramInduction(hz.PatternDetector):
    """Attention on the n-gram continuation keys, where they differ from the 1-gram ones.

    For query ``q`` the 1-gram continuation keys are ``U(q) = {k < q : tok[k-1] == tok[q]}``
    (the plain induction keys) and the n-gram keys ``N(q) = {k in U(q) : tok[k-1-j] ==
    tok[q-j] for j < n}``. A query is scored when both ``N(q)`` and ``U(q) - N(q)`` are
    non-empty: the n-gram and the 1-gram predictions differ there. Metrics per prompt:

    - ``score``: mean over scored queries of the attention on ``N(q)``;
    - ``onegram``: the same on the 1-gram-only keys ``U(q) - N(q)``;
    - ``selectivity``: ``score / (score + onegram)`` (0 when both are 0). A plain induction
      head spreads over all of ``U(q)``, so on the default probe (3 distractors) it scores
      about 1/4 with selectivity about 1/4; an n-gram head scores near 1 with selectivity near 1.

    :meth:`match` returns ``U``; :meth:`reduce` derives ``N`` from it, because
    ``k in N(q)`` exactly when ``k - j in U(q - j)`` for every ``j < n``.

    Options:
        n: the n-gram order (2: the previous token and the current one must both match). The
            default probe serves ``n <= 4`` (its ``context_len`` + 1); for a larger ``n`` pass
            ``context_len=n - 1`` too, or no query of the probe can be scored.
    """

    name = "ngram_induction"
    description = "Attends to the token after an earlier occurrence of the last n tokens, not just the last one."
    reference = (
        "Akyurek et al. 2024, In-Context Language Learning: Architectures and Algorithms, arXiv 2401.12973; "
        "Edelman et al. 2024, The Evolution of Statistical Induction Heads, arXiv 2402.11004"
    )
    variant = (
        "attention on keys k with tok[k-1-j]==tok[q-j] for all j<n, mean over queries that also have 1-gram-only "
        "continuation keys (tok[k-1]==tok[q] only); metrics onegram and selectivity"
    )
    # headzoo convention: half the attention on the n-gram answer, twice the ~1/4 a plain
    # induction head reaches on the default ngram probe (no published threshold)
    threshold = 0.5
    stage = "latent reasoning"
    probe = "ngram"

    n: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 2:
            raise hz.InvalidOptionError(
                f"{self.name}: n must be >= 2; got {self.n} (n=1 is a plain induction head: use 'induction')"
            )

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        """``U[b, q, k]``: ``tok[k-1] == tok[q]`` for ``1 <= k < q`` (the 1-gram continuation keys)."""
        seq = tokens.shape[1]
        after = torch.zeros(tokens.shape[0], seq, seq, dtype=torch.bool, device=tokens.device)
        after[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
        return after & torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(-1)

    def split(self, match: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, U - N)`` on the scored queries only, each ``[batch, query, key]``, from ``U``."""
        ngram = match.clone()
        for j in range(1, self.n):
            back = torch.zeros_like(match)
            back[:, j:, j:] = match[:, :-j, :-j]  # back[q, k] = U[q - j, k - j]
            ngram &= back
        onegram = match & ~ngram
        scored = (ngram.any(-1) & onegram.any(-1))[:, :, None]
        return ngram & scored, onegram & scored

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match`` = ``U [batch, query, key]`` ->
        ``score``, ``onegram``, ``selectivity`` as ``([batch, head], valid [batch])``."""
        ngram, onegram = self.split(match)
        score, valid = self._measure(pattern, ngram, self.exclude_bos, self.exclude_current_token)
        other, _ = self._measure(pattern, onegram, self.exclude_bos, self.exclude_current_token)
        both = score + other
        selectivity = torch.where(both > 0, score / both.clamp_min(1e-12), torch.zeros_like(both))
        return {"score": (score, valid), "onegram": (other, valid), "selectivity": (selectivity, valid)}
