"""The text probe: natural English, tokenised by the model's own tokenizer.

Head types defined by what tokens *are* (a continuation piece of a split word, a comma, a rare
word) only show on real text: random tokens have no words, punctuation or frequency profile.
The probe cuts prompts of ``text_len`` tokens out of a corpus tokenised by the model's
tokenizer (the English text shipped with headzoo, or a UTF-8 file the user names), each prompt
starting at the first piece of a word, at start points drawn from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, ClassVar

import torch
from jaxtyping import Int

from headzoo._errors import InvalidOptionError, UnsupportedTokenizerError
from headzoo._models import ModelInfo
from headzoo._probes import Probe, register_probe
from headzoo._tokens import check_bool, check_int
from headzoo._vocab import MAX_UNKNOWN_SHARE, corpus_ids, vocab_tables

__all__ = ["TextProbe"]

#: default prompt length cap: long enough for dozens of words and separators per prompt, short
#: enough that the probe costs about as much as the repeated-token one
_DEFAULT_LEN = 128


@register_probe
@dataclasses.dataclass(frozen=True)
class TextProbe(Probe):
    """Chunks of English text, tokenised by the model's tokenizer.

    Attributes:
        n_prompts: number of prompts.
        text_len: tokens per prompt, BOS included; ``None`` means ``min(n_ctx, 128)``.
        batch_size: prompts per forward pass.
        seed: seeds the start points (a private generator; global RNG untouched).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
        corpus: ``None`` (or ``"shipped"``) for the shipped text, else the path of a UTF-8 text
            file. Either is tokenised paragraph by paragraph without special tokens.

    Raises (from :meth:`prompts`):
        UnsupportedTokenizerError: the model has no tokenizer, its tokenizer spells more than
            half of the corpus as unknown tokens, or it yields ids beyond the model's embedding.
        InvalidOptionError: ``text_len`` longer than the context, or a corpus too short for it.
    """

    name: ClassVar[str] = "text"

    n_prompts: int = 16
    text_len: int | None = None
    batch_size: int = 4
    seed: int = 0
    prepend_bos: bool | None = None
    corpus: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_prompts", "batch_size"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed")
        if self.text_len is not None:
            check_int(self.text_len, "text_len", minimum=2)
        if self.prepend_bos is not None:
            check_bool(self.prepend_bos, "prepend_bos")
        if self.corpus is not None and not isinstance(self.corpus, str):
            if isinstance(self.corpus, os.PathLike):
                object.__setattr__(self, "corpus", os.fspath(self.corpus))
            else:
                raise InvalidOptionError(f"corpus must be None, 'shipped' or the path of a UTF-8 text file; got {self.corpus!r}")

    def resolve(self, model: Any, info: ModelInfo) -> tuple[int, bool, list[int], str]:
        """``(text_len, bos, corpus ids, corpus digest)`` for ``model``, checked to fit."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise UnsupportedTokenizerError(
                "the text probe tokenises English text with the model's tokenizer, and the model has none; "
                "pass token ids with hz.detect(model, ..., tokens=ids), or give the model its tokenizer."
            )
        bos = info.prepend_bos if self.prepend_bos is None else self.prepend_bos
        if bos and info.bos_token_id is None:
            raise InvalidOptionError("prepend_bos=True but the model has no tokenizer with a BOS token")
        length = self.text_len if self.text_len is not None else min(info.n_ctx, _DEFAULT_LEN)
        if length > info.n_ctx:
            raise InvalidOptionError(f"text_len={length} exceeds the model's context of {info.n_ctx}; use text_len <= {info.n_ctx}.")
        if length - int(bos) < 1:
            raise InvalidOptionError(f"text_len={length} leaves no room for text after the BOS token; use text_len >= 2.")
        ids, digest, unknown = corpus_ids(tokenizer, self.corpus, what="corpus")
        where = "the shipped text" if self.corpus in (None, "shipped") else repr(self.corpus)
        if unknown > MAX_UNKNOWN_SHARE:
            raise UnsupportedTokenizerError(
                f"the model's tokenizer spells {unknown:.0%} of {where} as its unknown token, so the text probe "
                "would be mostly unknown tokens; pass corpus=<path of a text in its vocabulary>, or your own tokens."
            )
        if ids and max(ids) >= info.d_vocab:
            raise UnsupportedTokenizerError(
                f"the model's tokenizer yields id {max(ids)} but the model embeds only {info.d_vocab} ids; "
                "this tokenizer does not belong to this model."
            )
        if len(ids) < length - int(bos):
            raise InvalidOptionError(
                f"{where} is {len(ids)} tokens long with this tokenizer, shorter than one prompt of "
                f"text_len={length}{' (BOS included)' if bos else ''}; use a smaller text_len or a longer corpus."
            )
        return length, bool(bos), ids, digest

    def _starts(self, model: Any, info: ModelInfo, ids: list[int], body: int) -> list[int]:
        """Start points: word-initial pieces with a full prompt after them, drawn from ``seed``."""
        stream = torch.tensor(ids, dtype=torch.long)
        last = len(ids) - body  # the last start that leaves room for a full prompt
        try:
            tables = vocab_tables(model.tokenizer, info.d_vocab, who="the text probe")
            # a word's first piece: never mid-word (the word's earlier pieces would be cut off),
            # and never a separator, so the first text position is no more often punctuation
            # than any other (a head fixed on it must not look like a delimiter head)
            ok = tables.word_start.to(stream.device)[stream] & ~tables.continuation(stream[None])[0]
        except UnsupportedTokenizerError:  # a convention we cannot read: every start will do
            ok = torch.ones(len(ids), dtype=torch.bool)
        candidates = torch.nonzero(ok[: last + 1]).flatten()
        if len(candidates) == 0:
            candidates = torch.arange(last + 1)
        g = torch.Generator().manual_seed(self.seed)
        # Draw without replacement while distinct starts last, then again: prompts are drawn up
        # front, in order, so they do not depend on batch_size.
        picks: list[int] = []
        while len(picks) < self.n_prompts:
            perm = torch.randperm(len(candidates), generator=g)[: self.n_prompts - len(picks)]
            picks += candidates[perm].tolist()
        return picks

    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        """``n_prompts`` prompts ``[text_len]`` on the CPU: ``[BOS] + text`` (or text only)."""
        length, bos, ids, _ = self.resolve(model, info)
        body = length - int(bos)
        stream = torch.tensor(ids, dtype=torch.long)
        out = []
        for start in self._starts(model, info, ids, body):
            chunk = stream[start : start + body]
            if bos:
                assert info.bos_token_id is not None  # resolve() refuses bos without a BOS token
                chunk = torch.cat([torch.tensor([info.bos_token_id]), chunk])
            out.append(chunk.clone())
        return out

    def n_batches(self) -> int:
        return math.ceil(self.n_prompts / self.batch_size)

    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        length, bos, ids, digest = self.resolve(model, info)
        return {
            "kind": self.name, **dataclasses.asdict(self), "corpus": self.corpus or "shipped",
            "text_len": length, "prepend_bos": bos, "corpus_sha256": digest, "n_corpus_tokens": len(ids),
            "starts": self._starts(model, info, ids, length - int(bos)),
        }
