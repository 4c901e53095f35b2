"""Probes: token batches that make a head type show itself.

Every pattern detector names the probe it is scored on when the user gives no tokens
(``PatternDetector.probe``); the runner builds each named probe once per ``hz.detect`` call
and runs one forward pass per batch for all the detectors that share it. A probe is a frozen
dataclass whose fields are its options (``n_prompts``, ``batch_size``, ``seed`` and
``prepend_bos`` mean the same everywhere), registered in :data:`PROBES` under its name.

The repeated-random-token probe (Olsson et al. 2022; Elhage et al. 2021) is ``[BOS] r r``:
``n`` tokens drawn without replacement, then the same tokens again. A duplicate-token head
attends from the second copy of a token to the first; an induction head attends to the token
*after* the first copy; a previous-token head attends one step back everywhere.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Int

from headzoo._errors import InvalidOptionError
from headzoo._models import ModelInfo
from headzoo._tokens import check_bool, check_int, ordinary_ids

__all__ = ["PROBES", "Probe", "RepeatedTokens", "register_probe"]


class Probe(abc.ABC):
    """Abstract base of every probe (subclasses are frozen dataclasses; fields are options).

    Class attributes:
        name: the key detectors use in ``PatternDetector.probe``.
    """

    name: ClassVar[str]
    n_prompts: int
    batch_size: int

    @abc.abstractmethod
    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        """Every prompt, on the CPU (lengths may differ; the runner batches and pads them).

        Raises:
            DetectorNotApplicableError: the model cannot hold this probe (says why).
        """

    @abc.abstractmethod
    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        """JSON-ready description of the prompts, with ``"kind"`` set to :attr:`name`."""


#: probe name -> class; :func:`register_probe` adds to it
PROBES: dict[str, type[Probe]] = {}


def register_probe(cls: type[Probe]) -> type[Probe]:
    """Class decorator: make a probe available to detectors under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Probe)) or not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"register_probe expects a Probe subclass with a `name`; got {cls!r}")
    existing = PROBES.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"a probe named {cls.name!r} is already registered ({existing.__qualname__})")
    PROBES[cls.name] = cls
    return cls


@register_probe
@dataclass(frozen=True)
class RepeatedTokens(Probe):
    """The repeated-random-token probe.

    Attributes:
        n_prompts: number of prompts.
        half_len: tokens per half; ``None`` means ``min(50, (n_ctx - bos) // 2, n_ordinary_tokens)``.
        batch_size: prompts per forward pass (4 is as fast as larger batches on CPU and keeps
            activation memory small; raise it on a GPU).
        seed: seeds the token draws (the generator is private; global RNG is untouched).
        prepend_bos: put the model's BOS first; ``None`` follows the model.
    """

    name: ClassVar[str] = "repeated_tokens"

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

    def prompts(self, model: Any, info: ModelInfo) -> list[Int[torch.Tensor, " pos"]]:
        return [row for batch in self.batches(info) for row in batch]

    def metadata(self, model: Any, info: ModelInfo) -> dict[str, Any]:
        half, bos, candidates = self.resolve(info)
        return {"kind": "repeated_random_tokens", **asdict(self), "half_len": half, "prepend_bos": bos,
                "n_candidate_tokens": int(len(candidates))}
