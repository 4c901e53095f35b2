"""Delimiter heads: attention parked on separators and punctuation.

Clark et al. 2019 (What Does BERT Look At?, arXiv 1906.04341) found BERT heads that put most
of their attention on ``[SEP]`` and on periods and commas, far beyond those tokens' share of
the input, and read much of it as a no-op resting place. A head attending uniformly already
gives separators their share, so the score is the excess: attention on separator keys minus
what a uniform causal pattern gives them. Separators come from the model's tokenizer
(``hz.vocab_tables``): tokens of only punctuation, symbols or line breaks once the
convention's word markers are stripped. The first position is never a separator key, so an
attention sink (which parks on position 0, usually BOS) scores below zero, not high.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class Delimiter(hz.PatternDetector):
    """``score = mass - key_share`` per prompt, averaged over prompts.

    - ``mass``: for each query ``q >= 1`` with a separator among keys ``1..q``, the attention
      on those separator keys; mean over such queries (the ``"match"`` measure).
    - ``key_share``: the same number for a uniform causal pattern: the separators' share of
      the keys ``0..q`` (with ``exclude_bos`` / ``exclude_current_token``, of the keys left).

    So a uniform head scores 0, a head on separators only scores ``1 - key_share`` (about 0.9
    on English text), and a sink head scores ``-key_share``. With ``measure="transformer_lens"``
    both numbers are TransformerLens' whole-prompt ratio ``sum(A * P) / sum(A)`` instead.

    Short prompts: separators come in runs (``."``, ``),``, a full stop and a line break) and,
    in prompts of a dozen words, mostly near the end, so a query right after a run finds the
    previous token a separator more often than the keys' share says. Measured on 16-token
    prompts, a previous-token head scores up to about 0.2; on the default 128 tokens, under 0.05.

    Options:
        special_tokens: also count the tokenizer's special tokens (``[SEP]``, ``[CLS]``,
            ``</s>``, ...) as separators, as Clark et al. did for ``[SEP]``. Off by default:
            a BOS token repeated mid-text would otherwise make sinks look like delimiter heads.
            Position 0 never counts either way.

    Raises (from ``bind``):
        hz.UnsupportedTokenizerError: the model has no tokenizer, its convention cannot be
            read, or its vocabulary has no separator token.
    """

    name = "delimiter"
    stage = "in-context identification"
    probe = "text"
    description = "Parks attention on punctuation and separators, beyond their share of the keys."
    reference = "Clark et al. 2019, What Does BERT Look At? An Analysis of BERT's Attention, arXiv 1906.04341"
    variant = (
        "excess mass: attention on separator keys k in 1..q (punctuation/symbol/line-break tokens of the "
        "tokenizer) minus their share of the keys 0..q (a uniform causal pattern's mass), mean over queries "
        "with a separator key; also mass and key_share"
    )
    # Ours, not the paper's: a head whose separator mass beats their share by 0.3 (e.g. 0.4 of
    # its attention where separators are a tenth of the keys). Planted delimiter heads score
    # about 0.9 on the shipped text; planted heads of other types stay under 0.25 (the highest:
    # rare-token heads, since rare tokens include rare punctuation).
    threshold = 0.3
    score_range = (-1.0, 1.0)

    special_tokens: bool = False

    def bind(self, model: Any, info: Any) -> Delimiter:
        tables = hz.vocab_tables(getattr(model, "tokenizer", None), info.d_vocab, who=self.name)
        separators = tables.punctuation | tables.special if self.special_tokens else tables.punctuation
        if not bool(separators.any()):
            raise hz.UnsupportedTokenizerError(
                f"{self.name}: the model's tokenizer ({tables.convention}) has no token made only of punctuation, "
                "symbols or line breaks, so there is no separator to attend to"
                + ("" if self.special_tokens else "; special_tokens=True would count its special tokens")
                + "."
            )
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "_separators", separators)
        return bound

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        separators = getattr(self, "_separators", None)
        if separators is None:
            raise hz.DetectorNotApplicableError(
                f"{self.name} reads the model's tokenizer: bind it first, det = det.bind(model, hz.model_info(model)) "
                "(hz.detect does this)."
            )
        seq = tokens.shape[1]
        keys = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril()
        keys[:, 0] = False  # the first position is where sinks rest, whatever token it holds
        return separators.to(tokens.device)[tokens][:, None, :] & keys

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match [batch, query, key]``."""
        mass, valid = self._measure(pattern, match, self.exclude_bos, self.exclude_current_token)
        batch, _, seq, _ = pattern.shape
        causal = torch.ones(seq, seq, dtype=pattern.dtype, device=pattern.device).tril()
        uniform = (causal / causal.sum(-1, keepdim=True)).expand(batch, 1, seq, seq)
        share, _ = self._measure(uniform, match, self.exclude_bos, self.exclude_current_token)
        share = share.expand_as(mass)
        return {"score": (mass - share, valid), "mass": (mass, valid), "key_share": (share, valid)}
