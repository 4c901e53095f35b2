"""The one token validator: what headzoo accepts as prompts, and how it batches them.

Every public function that takes tokens (detection, patching, ablation references, decoding,
the effective embedding, the atlas example) goes through here, so "what is a valid prompt" is
answered once: integer ids inside the vocabulary, at most ``n_ctx`` positions (text is held to
the same bound after tokenising, never silently truncated), never empty, and always copied so
that nothing the caller holds is written. Ragged prompts are padded on the right: with causal
attention a real position never sees a later one, so right padding leaves every real
activation exactly as in a prompt-by-prompt run, for every model class, with no mask needed.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from headzoo._errors import InvalidOptionError, InvalidTokensError
from headzoo._models import ModelInfo

__all__ = [
    "UnknownTokenWarning",
    "warn_unknown_tokens",
    "check_ids",
    "as_prompts",
    "as_block",
    "ordinary_ids",
    "token_strings",
    "Padded",
    "pad_right",
    "check_int",
    "check_bool",
    "check_heads",
]


class UnknownTokenWarning(UserWarning):
    """Text became the tokenizer's unknown token (``<unk>``): those positions are scored as one
    token that carries none of the words' identity. Raised as a warning, once per call."""


_PACKAGE = str(Path(__file__).resolve().parent)


def _user_stacklevel(frame: Any) -> int:
    """The ``stacklevel`` that points a warning at the first frame outside headzoo (the wrappers
    of runtime type checkers around headzoo's functions, and generated ``<...>`` code, count
    as inside)."""

    def inside(frame: Any) -> bool:
        name = str(frame.f_globals.get("__name__", ""))
        return (frame.f_code.co_filename.startswith("<") or name.split(".")[0] in _WRAPPERS
                or str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE))

    level = 1  # ``frame``: the function that calls warnings.warn
    while frame is not None and inside(frame):
        frame, level = frame.f_back, level + 1
    return level


_WRAPPERS = {"headzoo", "jaxtyping", "beartype", "typeguard"}


def warn_unknown_tokens(tokenizer: Any, texts: Sequence[str], prompts: Sequence[torch.Tensor], what: str) -> int:
    """Warn (:class:`UnknownTokenWarning`, once for all ``texts``) when ``prompts``, the ids
    ``texts`` became, hold the tokenizer's unknown token; return how many they hold.

    A tokenizer whose unknown id doubles as its BOS, EOS or pad id (GPT-2's byte-level BPE:
    ``<|endoftext|>``) is not checked: that id marks something else there, and such
    tokenizers spell every string.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    specials = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    if not isinstance(unk, int) or unk in specials:
        return 0
    counts = [int((p == unk).sum()) for p in prompts]
    total = sum(counts)
    if not total:
        return 0
    words: list[str] = []
    for text, count in zip(texts, counts):
        if not count:
            continue
        for word in dict.fromkeys(text.split()):
            # which words: each one tokenised alone (only on this rare path)
            if len(words) < 8 and unk in tokenizer.encode(word, add_special_tokens=False):
                words.append(word)
    shown = ", ".join(repr(w) for w in words) + (", ..." if len(words) == 8 else "")
    n_texts = sum(1 for c in counts if c)
    warnings.warn(
        f"{what}: {total} token{'s' if total != 1 else ''} in {n_texts} of {len(texts)} text"
        f"{'s' if len(texts) != 1 else ''} became the tokenizer's unknown token "
        f"{getattr(tokenizer, 'unk_token', None)!r} (id {unk})" + (f", from {shown}" if words else "")
        + ". Each is scored as that one token, which carries none of the word's identity. To avoid it, "
        "write those words the way the tokenizer's vocabulary has them (or drop them), or pass token ids, "
        "or use a model whose tokenizer covers the text (a byte-level BPE such as GPT-2's has no unknown token).",
        UnknownTokenWarning,
        stacklevel=_user_stacklevel(sys._getframe()),
    )
    return total


def check_ids(ids: torch.Tensor, info: ModelInfo, what: str) -> None:
    """Raise :class:`InvalidTokensError` unless ``ids`` is a ``[pos]`` / ``[batch, pos]`` integer
    tensor of in-vocabulary ids that fits the context."""
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise InvalidTokensError(f"{what} must be integer token ids; got dtype {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise InvalidTokensError(f"{what} must have shape [pos] or [batch, pos]; got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InvalidTokensError(f"{what} is empty; give at least one token per prompt")
    if ids.shape[-1] > info.n_ctx:
        raise InvalidTokensError(
            f"{what} has {ids.shape[-1]} positions but the model's context is {info.n_ctx}; "
            f"truncate or split the prompts to at most {info.n_ctx} tokens"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= info.d_vocab:
        raise InvalidTokensError(f"{what} holds ids in [{lo}, {hi}] but the vocabulary is [0, {info.d_vocab - 1}]")


def _is_text(tokens: Any) -> bool:
    return isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and len(tokens) > 0 and all(isinstance(t, str) for t in tokens)
    )


def _to_tensor(row: Any, what: str) -> torch.Tensor:
    try:
        if isinstance(row, (torch.Tensor, np.ndarray)):
            return torch.as_tensor(row)
        if isinstance(row, (list, tuple)) and any(isinstance(x, bool) for x in row):
            raise TypeError("booleans are not token ids")
        return torch.tensor(row)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidTokensError(f"{what} is not a list of integer ids: {exc}") from None


def as_prompts(model: Any, info: ModelInfo, tokens: Any, what: str = "tokens") -> list[Int[torch.Tensor, " pos"]]:
    """The user's tokens as a list of 1-D ``long`` id tensors on the CPU (copies).

    Accepts a string or list of strings (needs the model's tokenizer; the model's own
    ``to_tokens`` adds its BOS), a ``[pos]`` / ``[batch, pos]`` tensor or array, or a (possibly
    ragged) list of id lists.
    """
    if _is_text(tokens):
        if getattr(model, "tokenizer", None) is None:
            raise InvalidTokensError(f"{what}: text was given but the model has no tokenizer; pass token ids instead")
        texts = [tokens] if isinstance(tokens, str) else list(tokens)
        if any(not t for t in texts):
            raise InvalidTokensError(f"{what}: an empty string was given; every prompt needs text")
        prompts = []
        for i, text in enumerate(texts):
            # to_tokens truncates to the context by default: tokenise in full and refuse
            # instead, exactly as over-long ids are refused.
            try:
                ids = model.to_tokens(text, truncate=False)[0]
            except TypeError:
                ids = model.to_tokens(text)[0]
            if ids.shape[0] > info.n_ctx:
                raise InvalidTokensError(
                    f"{what}: text {i} is {ids.shape[0]} tokens long but the model's context is {info.n_ctx}; "
                    f"shorten or split it to at most {info.n_ctx} tokens"
                )
            prompts.append(ids.detach().cpu().long().clone())
        warn_unknown_tokens(model.tokenizer, texts, prompts, what)
    elif isinstance(tokens, (torch.Tensor, np.ndarray)):
        ids = torch.as_tensor(tokens)
        check_ids(ids, info, what)
        prompts = [row.clone() for row in ids.reshape(-1, ids.shape[-1]).detach().cpu().long()]
    elif isinstance(tokens, (list, tuple)):
        if not tokens:
            raise InvalidTokensError(f"{what} is empty; give at least one prompt")
        nested = isinstance(tokens[0], (list, tuple, torch.Tensor, np.ndarray))
        rows = tokens if nested else [tokens]
        prompts = []
        for i, row in enumerate(rows):
            label = f"prompt {i}" if nested else what
            ids = _to_tensor(row, label)
            if ids.ndim != 1:
                raise InvalidTokensError(f"{label} must be a flat list of ids; got shape {tuple(ids.shape)}")
            check_ids(ids, info, label)
            prompts.append(ids.detach().cpu().long().clone())
    else:
        raise InvalidTokensError(f"{what} must be text, a list of texts, or integer ids; got {type(tokens).__name__}")
    for i, p in enumerate(prompts):
        check_ids(p, info, f"prompt {i}")
    return prompts


def as_block(tokens: Any, info: ModelInfo, what: str) -> Int[torch.Tensor, "batch pos"]:
    """Validate a rectangular ``[batch, pos]`` block of ids (``[pos]`` becomes one row); a copy."""
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], (list, tuple)):
        if len({len(r) for r in tokens}) > 1:
            raise InvalidTokensError(f"{what} is ragged (rows of lengths {sorted({len(r) for r in tokens})}); give one [batch, pos] block")
    if _is_text(tokens):
        raise InvalidTokensError(f"{what} must be token ids [batch, pos]; got text (tokenise it with model.to_tokens)")
    try:
        ids = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidTokensError(f"{what} must be integer token ids [batch, pos]; got {type(tokens).__name__}") from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise InvalidTokensError(f"{what} must have shape [batch, pos] (or [pos]); got {tuple(ids.shape)}")
    check_ids(ids, info, what)
    return ids.detach().long().clone()


def ordinary_ids(info: ModelInfo) -> Int[torch.Tensor, " n"]:
    """The ids a probe may draw: real rows of the embedding that are no tokenizer special."""
    ids = torch.arange(info.n_real_tokens)
    if info.special_token_ids:
        ids = ids[~torch.isin(ids, torch.tensor(info.special_token_ids))]
    return ids


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """How each id reads: the tokenizer's decoding, or ``#id`` without a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [f"#{int(i)}" for i in ids]
    return [str(s) for s in tokenizer.batch_decode([[int(i)] for i in ids])]


@dataclass(frozen=True)
class Padded:
    """Prompts of different lengths as one right-padded block.

    Attributes:
        ids: ``[batch, max_len]``; positions at or after a row's length hold ``pad_id``.
        lengths: ``[batch]`` real lengths.
    """

    ids: Int[torch.Tensor, "batch pos"]
    lengths: Int[torch.Tensor, " batch"]

    @property
    def ragged(self) -> bool:
        return bool((self.lengths != self.ids.shape[1]).any())


def pad_right(prompts: Sequence[torch.Tensor], pad_id: int = 0) -> Padded:
    """Stack 1-D prompts into a right-padded ``[batch, max_len]`` block.

    Right padding is exact under causal attention: no real query sees a pad key, and absolute
    positions of real tokens are unchanged, so every real activation equals the unpadded run's.
    """
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    out = torch.full((len(prompts), int(lengths.max())), int(pad_id), dtype=torch.long)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return Padded(out, lengths)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; floats (even 2.0), bools and strings are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidOptionError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise InvalidOptionError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a real ``bool`` (``"no"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidOptionError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def check_heads(heads: Any, n_layers: int, n_heads: int, name: str = "heads") -> list[tuple[int, int]]:
    """``(layer, head)`` pairs of integers inside the model, in the order given, without repeats."""
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence | np.ndarray | torch.Tensor):
        raise InvalidOptionError(f"{name} must be a list of (layer, head) pairs; got {heads!r}")
    pairs = []
    for item in heads.tolist() if isinstance(heads, (np.ndarray, torch.Tensor)) else heads:
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidOptionError(f"{name} must be a list of (layer, head) pairs; got the item {item!r}")
        pairs.append((check_int(item[0], f"{name}: layer in {item!r}"), check_int(item[1], f"{name}: head in {item!r}")))
    if not pairs:
        raise InvalidOptionError(f"{name} is empty; give at least one (layer, head) pair")
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise InvalidOptionError(f"{name} {bad} are outside the model ({n_layers} layers x {n_heads} heads; both count from 0)")
    return list(dict.fromkeys(pairs))
