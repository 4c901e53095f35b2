"""Probes for positional, streaming and n-gram induction heads.

- ``random_tokens``: distinct random tokens (no token twice in a prompt). Heads that look for
  an earlier copy (duplicate-token, induction) find none, so the only fixed-offset heads left
  are the positional ones (Voita et al. 2019): this is where ``relative_position`` scores argmax
  offsets. On ``[BOS] r r`` an induction head's argmax sits at the fixed offset ``n - 1`` on the
  second half and would pass for a positional head.
- ``long_repeated_tokens``: ``[BOS] r r`` as long as the context allows (``long_len``), so the
  repeated half lies far back: retrieval and induction heads must look far, while local and
  sink heads stay near, which is what DuoAttention's streaming heads do (Xiao et al. 2024).
- ``ngram``: episodes where a token ``x`` follows ``m`` different contexts, each time followed
  by a different token, and then one of those contexts comes back. A 1-gram (plain induction)
  head spreads over the ``m`` tokens that once followed ``x``; an n-gram induction head
  (Akyurek et al. 2024; Edelman et al. 2024) picks the one whose context matches.

Every probe draws only ordinary ids (:func:`headzoo._tokens.ordinary_ids`) from a private
generator seeded by ``seed``, puts the model's BOS first when ``prepend_bos`` says so, shortens
its prompts to fit short contexts and small vocabularies, and refuses a model that cannot hold
it at all with :class:`~headzoo.DetectorNotApplicableError` giving the numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Int

from headzoo._errors import DetectorNotApplicableError, InvalidOptionError
from headzoo._models import ModelInfo
from headzoo._probes import Probe, register_probe
from headzoo._tokens import check_bool, check_int, ordinary_ids

__all__ = ["RandomTokens", "LongRepeatedTokens", "NGramTokens"]


def _check_shared(probe: Any) -> None:
    """The options every probe shares: ``n_prompts``, ``batch_size``, ``seed``, ``prepend_bos``."""
    for name in ("n_prompts", "batch_size"):
        check_int(getattr(probe, name), name, minimum=1)
    check_int(probe.seed, "seed")
    if probe.prepend_bos is not None:
        check_bool(probe.prepend_bos, "prepend_bos")


def _bos(probe: Any, info: ModelInfo) -> bool:
    """Whether prompts start with BOS (as :class:`headzoo._probes.RepeatedTokens` decides)."""
    bos = info.prepend_bos if probe.prepend_bos is None else probe.prepend_bos
    if bos and info.bos_token_id is None:
        raise InvalidOptionError("prepend_bos=True but the model has no tokenizer with a BOS token")
    return bool(bos)


def _with_bos(body: torch.Tensor, bos: bool, info: ModelInfo) -> list[torch.Tensor]:
    """``[n_prompts, len]`` bodies as 1-D prompts, BOS first when asked."""
    if bos:
        assert info.bos_token_id is not None  # _bos() refuses BOS without a BOS id
        body = torch.cat([torch.full((body.shape[0], 1), info.bos_token_id, dtype=torch.long), body], dim=1)
    return list(body.long().unbind(0))


@register_probe
@dataclass(frozen=True)
class RandomTokens(Probe):
    """Random tokens, none repeated within a prompt: ``[BOS] t_1 ... t_L``.

    Attributes:
        n_prompts: number of prompts.
        seq_len: random tokens per prompt (BOS not counted). ``None``:
            ``min(128, n_ctx - bos, n_ordinary_tokens)``; at least 4 are needed.
        batch_size: prompts per forward pass.
        seed: seeds the draws (a private generator; the global RNG is untouched).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
    """

    name: ClassVar[str] = "random_tokens"
    #: fewest random tokens a prompt may hold (a query needs a few keys behind it)
    min_len: ClassVar[int] = 4

    n_prompts: int = 16
    seq_len: int | None = None
    batch_size: int = 4
    seed: int = 0
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        _check_shared(self)
        if self.seq_len is not None:
            check_int(self.seq_len, "seq_len", minimum=self.min_len)

    def resolve(self, info: ModelInfo) -> tuple[int, bool, torch.Tensor]:
        """``(seq_len, bos, candidate_ids)`` for ``info``'s model, checked to fit."""
        bos = _bos(self, info)
        candidates = ordinary_ids(info)
        room = info.n_ctx - int(bos)
        if min(room, len(candidates)) < self.min_len:
            raise DetectorNotApplicableError(
                f"the random_tokens probe needs {self.min_len} distinct ordinary tokens and {self.min_len + int(bos)} "
                f"positions; the model has {len(candidates)} ordinary tokens and a context of {info.n_ctx}."
            )
        if self.seq_len is None:
            return min(128, room, len(candidates)), bos, candidates
        if self.seq_len > room:
            raise InvalidOptionError(
                f"seq_len={self.seq_len} needs {self.seq_len + int(bos)} positions but the model's context is "
                f"{info.n_ctx}; use seq_len <= {room}."
            )
        if self.seq_len > len(candidates):
            raise InvalidOptionError(
                f"seq_len={self.seq_len} exceeds the {len(candidates)} ordinary tokens available to draw without "
                f"repeats; use seq_len <= {len(candidates)}."
            )
        return self.seq_len, bos, candidates

    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        """``n_prompts`` prompts of ``bos + seq_len`` ids on the CPU."""
        length, bos, candidates = self.resolve(info)
        g = torch.Generator().manual_seed(self.seed)
        # one permutation per prompt, in order: the prompts do not depend on batch_size
        picks = torch.stack([torch.randperm(len(candidates), generator=g)[:length] for _ in range(self.n_prompts)])
        return _with_bos(candidates[picks], bos, info)

    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        length, bos, candidates = self.resolve(info)
        return {"kind": self.name, **asdict(self), "seq_len": length, "prepend_bos": bos,
                "n_candidate_tokens": int(len(candidates))}


@register_probe
@dataclass(frozen=True)
class LongRepeatedTokens(Probe):
    """``[BOS] r r`` as long as the context allows: ``r`` is ``half_len`` distinct random tokens.

    ``half_len = min((long_len - bos) // 2, n_ordinary_tokens)``, so a token's earlier copy lies
    ``half_len`` positions back: far outside a streaming head's recent window.

    Attributes:
        n_prompts: number of prompts.
        long_len: the longest prompt (BOS included). ``None``: ``min(n_ctx, 512)``.
        batch_size: prompts per forward pass.
        seed: seeds the draws (a private generator).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
    """

    name: ClassVar[str] = "long_repeated_tokens"
    #: fewest tokens per half (shorter prompts leave no far keys to avoid)
    min_half: ClassVar[int] = 4

    n_prompts: int = 16
    long_len: int | None = None
    batch_size: int = 4
    seed: int = 0
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        _check_shared(self)
        if self.long_len is not None:
            check_int(self.long_len, "long_len", minimum=2 * self.min_half)

    def resolve(self, info: ModelInfo) -> tuple[int, bool, torch.Tensor]:
        """``(half_len, bos, candidate_ids)`` for ``info``'s model, checked to fit."""
        bos = _bos(self, info)
        candidates = ordinary_ids(info)
        if self.long_len is not None and self.long_len > info.n_ctx:
            raise InvalidOptionError(f"long_len={self.long_len} exceeds the model's context {info.n_ctx}; "
                                     f"use long_len <= {info.n_ctx}.")
        cap = self.long_len if self.long_len is not None else min(info.n_ctx, 512)
        half = min((cap - int(bos)) // 2, len(candidates))
        if half < self.min_half:
            raise DetectorNotApplicableError(
                f"the long_repeated_tokens probe needs two copies of {self.min_half} distinct ordinary tokens "
                f"({2 * self.min_half + int(bos)} positions); the model has {len(candidates)} ordinary tokens and "
                f"room for {cap} positions (context {info.n_ctx})."
            )
        return half, bos, candidates

    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        """``n_prompts`` prompts of ``bos + 2 * half_len`` ids on the CPU."""
        half, bos, candidates = self.resolve(info)
        g = torch.Generator().manual_seed(self.seed)
        picks = torch.stack([torch.randperm(len(candidates), generator=g)[:half] for _ in range(self.n_prompts)])
        first = candidates[picks]
        return _with_bos(torch.cat([first, first], dim=1), bos, info)

    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        half, bos, candidates = self.resolve(info)
        return {"kind": self.name, **asdict(self), "long_len": int(bos) + 2 * half, "half_len": half,
                "prepend_bos": bos, "n_candidate_tokens": int(len(candidates))}


@register_probe
@dataclass(frozen=True)
class NGramTokens(Probe):
    """Episodes where 1-gram and n-gram continuations differ.

    One episode, with a key token ``x``, ``m = n_distractors + 1`` contexts ``c_i`` of
    ``context_len`` tokens each and ``m`` continuations ``y_i``::

        c_s1 x y_s1   c_s2 x y_s2   ...   c_sm x y_sm   c_j x y_j

    (``s`` a random order of the ``m`` segments, ``j`` one of them at random). At the last
    ``x`` (the scored query) ``x`` occurred ``m`` times before; only segment ``j``'s occurrence
    follows the same context, and it sits at a random rank among the ``m``, so neither the
    most recent nor the first copy is systematically the answer. The last context tokens of
    the ``m`` contexts are distinct, so the match is unique for every ``n`` from 2 to
    ``context_len + 1``; the continuations are distinct, so the 1-gram and the n-gram answers
    differ. A prompt is ``[BOS]`` and as many episodes as fit; each episode has its own ``x``,
    and no ``x`` appears anywhere else in the prompt.

    Attributes:
        n_prompts: number of prompts.
        ngram_len: the longest prompt (BOS included). ``None``: ``min(n_ctx, 256)``.
        context_len: tokens per context. ``None``: 3 (one probe serves n = 2, 3, 4), fewer
            when one episode does not fit otherwise (down to 1).
        n_distractors: earlier occurrences of ``x`` that follow another context. ``None``: 3
            (a 1-gram head then puts about 1/4 of its attention on the n-gram answer), fewer
            when the context or vocabulary is too small (down to 2).
        batch_size: prompts per forward pass.
        seed: seeds the draws (a private generator).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
    """

    name: ClassVar[str] = "ngram"
    default_context: ClassVar[int] = 3
    default_distractors: ClassVar[int] = 3
    min_distractors: ClassVar[int] = 2

    n_prompts: int = 16
    ngram_len: int | None = None
    context_len: int | None = None
    n_distractors: int | None = None
    batch_size: int = 4
    seed: int = 0
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        _check_shared(self)
        if self.ngram_len is not None:
            check_int(self.ngram_len, "ngram_len", minimum=2)
        if self.context_len is not None:
            check_int(self.context_len, "context_len", minimum=1)
        if self.n_distractors is not None:
            check_int(self.n_distractors, "n_distractors", minimum=1)

    def resolve(self, info: ModelInfo) -> dict[str, Any]:
        """``{bos, context_len, n_distractors, n_episodes, length, candidates}`` for ``info``'s
        model, checked to fit (``length`` counts BOS)."""
        bos = _bos(self, info)
        candidates = ordinary_ids(info)
        if self.ngram_len is not None and self.ngram_len > info.n_ctx:
            raise InvalidOptionError(f"ngram_len={self.ngram_len} exceeds the model's context {info.n_ctx}; "
                                     f"use ngram_len <= {info.n_ctx}.")
        room = (self.ngram_len if self.ngram_len is not None else min(info.n_ctx, 256)) - int(bos)
        n_vocab = len(candidates)

        def episode(c: int, d: int) -> int:  # tokens in one episode with d distractors
            return (d + 2) * (c + 2)

        # an episode needs x plus d + 1 distinct last-context tokens that are not x
        vocab_d = n_vocab - 2
        if self.n_distractors is not None:
            d = self.n_distractors
            if d > vocab_d:
                raise InvalidOptionError(
                    f"n_distractors={d} needs {d + 2} distinct ordinary tokens; the model has {n_vocab}. "
                    f"Use n_distractors <= {max(vocab_d, 0)}."
                )
        else:
            d = min(self.default_distractors, vocab_d)
        if self.context_len is not None:
            c = self.context_len
            if episode(c, d) > room:
                raise InvalidOptionError(
                    f"context_len={c} with {d} distractors needs {episode(c, d)} positions per episode, but the "
                    f"prompt has room for {room} (context {info.n_ctx}, prepend_bos={bos}); lower context_len."
                )
        else:
            c = self.default_context
            while c > 1 and episode(c, d) > room:
                c -= 1
        if self.n_distractors is None:
            while d > self.min_distractors and episode(c, d) > room:
                d -= 1
        if d < self.min_distractors or episode(c, d) > room:
            raise DetectorNotApplicableError(
                f"the ngram probe needs {self.min_distractors + 2} distinct ordinary tokens and "
                f"{episode(1, self.min_distractors) + int(bos)} positions (an episode with {self.min_distractors} "
                f"distractors and 1-token contexts); the model has {n_vocab} ordinary tokens and room for "
                f"{room + int(bos)} positions (context {info.n_ctx})."
            )
        # every episode's x is kept out of the rest of the prompt, so the others draw from what is left
        n_episodes = max(1, min(room // episode(c, d), n_vocab - (d + 1)))
        return {"bos": bos, "context_len": c, "n_distractors": d, "n_episodes": n_episodes,
                "length": int(bos) + n_episodes * episode(c, d), "candidates": candidates}

    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        """``n_prompts`` prompts of equal length on the CPU."""
        r = self.resolve(info)
        g = torch.Generator().manual_seed(self.seed)
        bodies = torch.stack([self._body(r, g) for _ in range(self.n_prompts)])
        return _with_bos(bodies, r["bos"], info)

    @staticmethod
    def _body(r: dict[str, Any], g: torch.Generator) -> torch.Tensor:
        """One prompt without BOS, ``[n_episodes * (m + 1) * (context_len + 2)]``."""
        candidates, c, m = r["candidates"], r["context_len"], r["n_distractors"] + 1
        perm = torch.randperm(len(candidates), generator=g)
        keys, pool = perm[: r["n_episodes"]], perm[r["n_episodes"]:]
        parts = []
        for x in keys.tolist():
            last = pool[torch.randperm(len(pool), generator=g)[:m]]  # distinct last-context tokens
            follow = pool[torch.randperm(len(pool), generator=g)[:m]]  # distinct continuations
            early = pool[torch.randint(len(pool), (m, c - 1), generator=g)]  # the rest of each context
            contexts = torch.cat([early, last[:, None]], dim=1)  # [m, c]
            segments = torch.cat([contexts, torch.full((m, 1), x), follow[:, None]], dim=1)  # [m, c + 2]
            order = torch.randperm(m, generator=g)
            j = int(torch.randint(m, (1,), generator=g))
            parts += [segments[order].flatten(), segments[j]]
        return candidates[torch.cat(parts)]

    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        r = self.resolve(info)
        return {"kind": self.name, **asdict(self), "ngram_len": r["length"], "context_len": r["context_len"],
                "n_distractors": r["n_distractors"], "n_episodes": r["n_episodes"], "prepend_bos": r["bos"],
                "n_candidate_tokens": int(len(r["candidates"]))}
