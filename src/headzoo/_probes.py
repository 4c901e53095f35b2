"""Probes: token batches that make a head type show itself.

The repeated-random-token probe (Olsson et al. 2022; Elhage et al. 2021) is ``[BOS] r r``:
``n`` tokens drawn without replacement, then the same tokens again. A duplicate-token head
attends from the second copy of a token to the first; an induction head attends to the token
*after* the first copy; a previous-token head attends one step back everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int

from headzoo._errors import InvalidOptionError
from headzoo._models import ModelInfo
from headzoo._tokens import check_bool, check_int, ordinary_ids

__all__ = ["RepeatedTokens"]


@dataclass(frozen=True)
class RepeatedTokens:
    """The repeated-random-token probe.

    Attributes:
        n_prompts: number of prompts.
        half_len: tokens per half; ``None`` means ``min(50, (n_ctx - bos) // 2, n_ordinary_tokens)``.
        batch_size: prompts per forward pass (4 is as fast as larger batches on CPU and keeps
            activation memory small; raise it on a GPU).
        seed: seeds the token draws (the generator is private; global RNG is untouched).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
    """

    n_prompts: int = 16
    half_len: int | None = None
    batch_size: int = 4
    seed: int = 0
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        for name in ("n_prompts", "batch_size"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed")
        if self.half_len is not None:
            check_int(self.half_len, "half_len", minimum=2)
        if self.prepend_bos is not None:
            check_bool(self.prepend_bos, "prepend_bos")

    def resolve(self, info: ModelInfo) -> tuple[int, bool, torch.Tensor]:
        """``(half_len, bos, candidate_ids)`` for ``info``'s model, checked to fit."""
        bos = info.prepend_bos if self.prepend_bos is None else self.prepend_bos
        if bos and info.bos_token_id is None:
            raise InvalidOptionError("prepend_bos=True but the model has no tokenizer with a BOS token")
        candidates = ordinary_ids(info)
        room = (info.n_ctx - int(bos)) // 2
        half = self.half_len if self.half_len is not None else min(50, room, len(candidates))
        if half > room:
            raise InvalidOptionError(
                f"half_len={half} needs {2 * half + int(bos)} positions but the model's context "
                f"is {info.n_ctx}; use half_len <= {room}."
            )
        if half > len(candidates):
            raise InvalidOptionError(
                f"half_len={half} exceeds the {len(candidates)} ordinary tokens available to draw "
                f"without replacement; use half_len <= {len(candidates)}."
            )
        if half < 2:
            raise InvalidOptionError(
                f"the model cannot hold a repeated-token probe (context {info.n_ctx}, "
                f"{len(candidates)} ordinary tokens); it needs room for two copies of 2 tokens."
            )
        return half, bool(bos), candidates

    def batches(self, info: ModelInfo) -> Iterator[Int[torch.Tensor, "batch pos"]]:
        """Yield token batches ``[batch, bos + 2 * half_len]`` on the CPU."""
        half, bos, candidates = self.resolve(info)
        g = torch.Generator().manual_seed(self.seed)
        # All prompts are drawn up front, in order, so they do not depend on batch_size;
        # one permutation per prompt keeps the transient memory at one vocabulary-sized row.
        picks = torch.stack([torch.randperm(len(candidates), generator=g)[:half] for _ in range(self.n_prompts)])
        first = candidates[picks]
        parts = [first, first]
        if bos:
            assert info.bos_token_id is not None  # resolve() refuses bos without a BOS token
            parts.insert(0, torch.full((self.n_prompts, 1), info.bos_token_id, dtype=torch.long))
        tokens = torch.cat(parts, dim=1)
        yield from tokens.split(self.batch_size)

    def n_batches(self) -> int:
        return math.ceil(self.n_prompts / self.batch_size)

    def metadata(self, info: ModelInfo) -> dict[str, Any]:
        half, bos, candidates = self.resolve(info)
        return {"kind": "repeated_random_tokens", **asdict(self), "half_len": half, "prepend_bos": bos,
                "n_candidate_tokens": int(len(candidates))}
