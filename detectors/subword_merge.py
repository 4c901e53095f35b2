"""Subword-merge heads: a word's later pieces attend to its earlier pieces.

A subword tokenizer splits rare words into pieces ("un", "imagin", "ably"); a model has to
put them back together. Correia et al. 2019 (Adaptively Sparse Transformers, EMNLP) found
heads that attend from a word's pieces to its other pieces, and Ferrando and Voita 2024
(Information Flow Routes, arXiv 2403.00824) trace routes where the last piece of a word
gathers its earlier pieces in the lower layers. Which tokens continue a word is read from the
model's tokenizer (``hz.vocab_tables``: GPT-2's "Ġ", SentencePiece's "▁", WordPiece's "##").

A previous-token head also attends from every continuation piece to an earlier piece of its
word, so that alone cannot be the score. The score is a contrast: attention to earlier pieces
of the same word on continuation queries, minus the attention to the previous token on
word-start queries. A subword-merge head attends back only inside words (high minus low); a
previous-token head does it everywhere (high minus high: about 0). Each term is taken in
excess of what a uniform causal pattern gives it (a continuation piece has one or more earlier
pieces, a word start one previous token), so a head that spreads its attention evenly scores
0 even in short contexts, where a few keys hold much of every row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class SubwordMerge(hz.PatternDetector):
    """``score = (merge - previous_on_word_starts) - chance`` per prompt, averaged over prompts.

    - ``merge``: for each continuation query (a piece the tokenizer marks as continuing the
      word of the token before it), the attention on the earlier pieces of its word; mean over
      such queries.
    - ``previous_on_word_starts``: for each word-start query ``q >= 2`` (a word's first piece),
      the attention on ``q - 1``; mean over such queries.
    - ``chance``: ``merge - previous_on_word_starts`` of a uniform causal pattern on the same
      prompt (``j / (q + 1)`` against ``1 / (q + 1)`` per row; small unless prompts are short).

    A subword-merge head scores about ``1 - chance``, a previous-token head ``-chance``, a
    uniform head 0. The bound is ``(-2, 2)``; real scores stay within ``(-1, 1)``.

    The word that holds position 0 is never scored (that is where sinks rest). With
    ``exclude_bos`` / ``exclude_current_token`` each row is renormalised without key 0 / the
    diagonal first; with ``measure="transformer_lens"`` each term is TransformerLens' ratio
    ``sum(A * P) / sum(A)`` over that term's queries.

    ``match(tokens)[b, q, k]`` marks the query's word so far: keys ``k <= q`` in the same word,
    the query itself included (a word start's row holds its diagonal only; a non-word token's
    row is empty).

    Raises (from ``bind``):
        hz.UnsupportedTokenizerError: the model has no tokenizer, its convention cannot be
            read, or it is a whole-word vocabulary (no token continues another).
    """

    name = "subword_merge"
    stage = "in-context identification"
    probe = "text"
    description = "Attends from a word's continuation pieces to its earlier pieces (and not to the previous token elsewhere)."
    reference = (
        "Correia et al. 2019, Adaptively Sparse Transformers, EMNLP; Ferrando and Voita 2024, Information Flow "
        "Routes: Automatically Interpreting Language Models at Scale, arXiv 2403.00824"
    )
    variant = (
        "contrast: attention to earlier pieces of the same word on continuation queries minus attention to q-1 "
        "on word-start queries q>=2, less the same contrast for a uniform causal pattern; words from the "
        "tokenizer's markers (Ġ / ▁ / ##); also merge, previous_on_word_starts, chance"
    )
    # Ours: the papers rank heads without a cut-off. 0.3 is the excess of in-word attention
    # over the head's previous-token habit that we call a subword-merge head; planted heads
    # score 0.8-0.95 on the shipped text, previous-token heads 0 or a little below.
    threshold = 0.3
    score_range = (-2.0, 2.0)  # a difference of two shares, less a difference of two chances

    def bind(self, model: Any, info: Any) -> SubwordMerge:
        tables = hz.vocab_tables(getattr(model, "tokenizer", None), info.d_vocab, who=self.name)
        if tables.convention == "word" or not bool(tables.continues.any()):
            raise hz.UnsupportedTokenizerError(
                f"{self.name}: the model's tokenizer is a whole-word vocabulary ({tables.convention}): no token "
                "continues another token's word, so there are no word pieces to merge. Use a model with a "
                "subword tokenizer (byte-level BPE, SentencePiece or WordPiece)."
            )
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "_tables", tables)
        return bound

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        tables = getattr(self, "_tables", None)
        if tables is None:
            raise hz.DetectorNotApplicableError(
                f"{self.name} reads the model's tokenizer: bind it first, det = det.bind(model, hz.model_info(model)) "
                "(hz.detect does this)."
            )
        word, in_word = tables.words(tokens)
        in_word = in_word & (word != word[:, :1])  # the first position's word is never scored
        seq = tokens.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril()
        return (word[:, :, None] == word[:, None, :]) & in_word[:, :, None] & in_word[:, None, :] & causal

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match [batch, query, key]`` (see :meth:`match`)."""
        seq = pattern.shape[-1]
        eye = torch.eye(seq, dtype=torch.bool, device=match.device)
        size = match.sum(-1)  # [batch, query]: the word so far, the query included
        continuing = size >= 2
        starts = (size == 1) & match.diagonal(dim1=1, dim2=2)
        starts[:, :2] = False  # q - 1 must be a real token, not the first position
        earlier = match & ~eye
        previous = starts[:, :, None] & torch.ones(seq - 1, dtype=torch.bool, device=match.device).diag(-1)
        merge, valid_merge = self._term(pattern, earlier, continuing)
        prev, valid_prev = self._term(pattern, previous, starts)
        causal = torch.ones(seq, seq, dtype=pattern.dtype, device=pattern.device).tril()
        uniform = (causal / causal.sum(-1, keepdim=True)).expand(pattern.shape[0], 1, seq, seq)
        chance = (self._term(uniform, earlier, continuing)[0] - self._term(uniform, previous, starts)[0]).expand_as(merge)
        valid = valid_merge & valid_prev
        return {
            "score": (merge - prev - chance, valid), "merge": (merge, valid), "previous_on_word_starts": (prev, valid),
            "chance": (chance, valid),
        }

    def _term(
        self, pattern: torch.Tensor, hits: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention on ``hits [batch, query, key]`` over the queries ``rows [batch, query]``:
        ``([batch, head], valid [batch])``, by this detector's measure and exclusions."""
        seq = pattern.shape[-1]
        keep = self.key_mask(seq, pattern.device)
        attn = pattern * keep  # a new tensor: the caller's pattern is never written
        on = torch.einsum("bhqk,bqk->bhq", attn, (hits & keep).to(attn.dtype))
        total = attn.sum(-1)
        w = rows[:, None, :].to(attn.dtype)
        if self.measure == "transformer_lens":
            value = (on * w).sum(-1) / (total * w).sum(-1).clamp_min(torch.finfo(attn.dtype).tiny)
        else:
            if self.exclude_bos or self.exclude_current_token:
                on = on / total.clamp_min(1e-12)
            value = (on * w).sum(-1) / w.sum(-1).clamp_min(1)
        return value, rows.any(-1)
