"""Detector base classes.

A detector is a small declared object: a name, a description, a reference, the variant of
the published definition it implements, its options as (frozen dataclass) fields, and one
scoring function. Pattern detectors do not run the model themselves: they say which
query-key pairs count (:meth:`PatternDetector.match`) and the runner feeds every selected
pattern detector from one shared forward pass, reducing each attention pattern to per-head
sums as it is produced.
"""

from __future__ import annotations

import abc
import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from headzoo._errors import InvalidOptionError

__all__ = ["STAGES", "Stage", "Detector", "PatternDetector", "PositionalDetector", "WeightDetector", "DetectorOutput", "Measure", "Metrics"]

Measure = Literal["match", "transformer_lens"]

Stage = Literal["knowledge recalling", "in-context identification", "latent reasoning", "expression preparation"]

#: The four stages of the survey's framework (Zheng et al. 2024, Attention Heads of Large
#: Language Models, arXiv 2409.03752), in the order a model goes through them: recall what it
#: knows, identify structure in the context, reason over it, prepare the output.
STAGES: tuple[Stage, ...] = typing.get_args(Stage)

#: Extra per-layer activations a pattern detector may ask for (see ``PatternDetector.reads``).
READS = ("out_norm",)

#: metric name -> (per-prompt values ``[batch, head]``, which prompts count ``[batch]``)
Metrics = dict[str, tuple[Float[torch.Tensor, "batch head"], Bool[torch.Tensor, " batch"]]]


class Detector(abc.ABC):
    """Abstract base of every detector. Subclasses are frozen dataclasses.

    Class attributes to declare (plain assignments, not dataclass fields):
        name: registry name, ``snake_case``.
        description: one line saying what a high score means.
        reference: paper or source of the definition.
        variant: which variant of the definition is implemented.
        threshold: conventional "this head is one" threshold on ``score``, or ``None``.
        kind: ``"pattern"`` (scored from attention patterns) or ``"weights"`` (from weights).
        stage: which of the survey's four stages (:data:`STAGES`) the head type serves.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    reference: ClassVar[str] = ""
    variant: ClassVar[str] = ""
    threshold: ClassVar[float | None] = None
    #: ``(low, high)`` every score lies in, checked by ``headzoo.testing.check_detector``
    score_range: ClassVar[tuple[float, float] | None] = None
    kind: ClassVar[str]
    stage: ClassVar[Stage | None] = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in hints and not _fits(hints[f.name], value):
                raise InvalidOptionError(
                    f"{self.name}: option {f.name}={value!r} ({type(value).__name__}) is not {_describe(hints[f.name])}."
                )

    def options(self) -> dict[str, Any]:
        """The detector's options and their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def metadata(self) -> dict[str, Any]:
        """What a result records about the detector that produced it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "stage": self.stage,
            "variant": self.variant,
            "reference": self.reference,
            "threshold": self.threshold,
            "options": self.options(),
        }

    def weight_scores(self, model: Any) -> dict[str, Float[torch.Tensor, "layer head"]]:
        """Extra per-head metrics computed from the weights (none by default)."""
        return {}

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> DetectorOutput:
        """Score every head without the shared pattern pass (for non-pattern detectors).

        Args:
            circuits: the :class:`~headzoo._circuits.WeightCircuits` workspace that every weight
                detector of one ``hz.detect`` call shares (a fresh one when ``None``).

        Returns:
            :class:`DetectorOutput` with ``metrics["score"]`` at least; NaN marks a head not scored.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")


def _fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of the declared option type: ``True`` is no int, ``1.7`` no int,
    ``"no"`` no bool. Types this check does not know are accepted."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


@dataclasses.dataclass(frozen=True)
class DetectorOutput:
    """What a non-pattern detector's :meth:`Detector.compute` returns.

    Attributes:
        metrics: ``{metric: [layer, head]}``, ``"score"`` required; NaN = head not scored.
        meta: extra metadata for the result (sample sizes, skipped tasks, ...), JSON-ready.
        details: an optional tidy frame with ``layer`` and ``head`` columns (for example a
            per-task accuracy), available as ``HeadScores.details(name)``.
    """

    metrics: dict[str, Float[torch.Tensor, "layer head"]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: Any = None

    def __post_init__(self) -> None:
        if "score" not in self.metrics:
            raise ValueError(f"DetectorOutput needs a 'score' metric; got {sorted(self.metrics)}")


def key_mask(seq: int, device: torch.device, exclude_bos: bool, exclude_current_token: bool) -> Bool[torch.Tensor, "query key"]:
    """``[query, key]``: True where a key counts under the ``exclude_bos`` (key 0 dropped) and
    ``exclude_current_token`` (diagonal dropped) options every pattern detector has."""
    keep = torch.ones(seq, seq, dtype=torch.bool, device=device)
    if exclude_bos:
        keep[:, 0] = False
    if exclude_current_token:
        keep.fill_diagonal_(False)
    return keep


@dataclasses.dataclass(frozen=True)
class PatternDetector(Detector):
    """A detector scored from attention patterns ``A[batch, head, query, key]``.

    Subclasses implement :meth:`match`: which key positions a query "should" attend to.

    Options:
        measure: ``"match"`` (default): for each query with at least one matching key, the
            attention on matching keys; mean over such queries, then over prompts. On the
            repeated-token probe this is exactly the stripe score of the papers.
            ``"transformer_lens"``: TransformerLens ``detect_head``'s ``"mul"`` measure,
            ``sum(A * P) / sum(A)`` over the whole prompt (a perfect induction head scores ~0.5).
        exclude_bos: ignore key position 0 and renormalise each row over the other keys.
        exclude_current_token: ignore the diagonal likewise.
    """

    measure: Measure = "match"
    exclude_bos: bool = False
    exclude_current_token: bool = False

    kind = "pattern"
    score_range = (0.0, 1.0)  # a share of attention, whichever measure
    #: whether :meth:`match` reads token identities (False: positions only)
    needs_tokens: ClassVar[bool] = True
    #: the probe (a key of ``headzoo._probes.PROBES``) scored when the user gives no tokens;
    #: every detector naming the same probe shares its prompts and its forward passes
    probe: ClassVar[str] = "repeated_tokens"
    #: extra activations :meth:`reduce` receives as keywords, from :data:`READS`:
    #: ``"out_norm"``: ``[batch, head, query]``, the norm of each head's output ``z @ W_O``
    reads: ClassVar[tuple[str, ...]] = ()

    def key_mask(self, seq: int, device: torch.device) -> Bool[torch.Tensor, "query key"]:
        """The keys this detector's ``exclude_bos`` / ``exclude_current_token`` leave ``[query, key]``."""
        return key_mask(seq, device, self.exclude_bos, self.exclude_current_token)

    def bind(self, model: Any, info: Any) -> PatternDetector:
        """This detector ready for ``model``: called once per ``hz.detect`` before :meth:`match`.

        The default returns ``self``. A detector that needs tables derived from the model (its
        tokenizer's word starts, punctuation, token frequencies) returns a copy carrying them
        (``new = dataclasses.replace(self); object.__setattr__(new, "_table", t)``) and raises
        :class:`~headzoo.UnsupportedTokenizerError` when the model's tokenizer cannot serve.
        """
        return self

    @abc.abstractmethod
    def match(self, tokens: Int[torch.Tensor, "batch pos"]) -> Bool[torch.Tensor, "batch query key"]:
        """``P[b, q, k]`` is True where query ``q`` should attend to key ``k`` (``k <= q``)."""

    def reduce(
        self,
        pattern: Float[torch.Tensor, "batch head query key"],
        match: Bool[torch.Tensor, "batch query key"],
    ) -> Metrics:
        """Reduce one layer's patterns to per-prompt, per-head metrics (``score`` at least).

        Detectors that declare :attr:`reads` receive those activations as keywords too.
        """
        return {"score": self._measure(pattern, match, self.exclude_bos, self.exclude_current_token)}

    def _measure(
        self,
        pattern: Float[torch.Tensor, "batch head query key"],
        match: Bool[torch.Tensor, "batch query key"],
        exclude_bos: bool,
        exclude_current_token: bool,
    ) -> tuple[Float[torch.Tensor, "batch head"], Bool[torch.Tensor, " batch"]]:
        keep = key_mask(pattern.shape[-1], pattern.device, exclude_bos, exclude_current_token)
        masked = exclude_bos or exclude_current_token
        attn = pattern * keep if masked else pattern  # never writes into the caller's tensor
        hits = match & keep
        # einsum contracts over keys without materialising a [batch, head, q, k] product
        on_match = torch.einsum("bhqk,bqk->bhq", attn, hits.to(attn.dtype))
        if self.measure == "transformer_lens":
            total = attn.sum((-1, -2))
            score = on_match.sum(-1) / total.clamp_min(torch.finfo(attn.dtype).tiny)
            return score, torch.ones(score.shape[0], dtype=torch.bool, device=score.device)
        if masked:
            on_match = on_match / attn.sum(-1).clamp_min(1e-12)
        rows = hits.any(-1)  # [batch, query]: queries that have something to attend to
        n_rows = rows.sum(-1)  # [batch]
        score = (on_match * rows[:, None]).sum(-1) / n_rows.clamp_min(1)[:, None]
        return score, n_rows > 0


@dataclasses.dataclass(frozen=True)
class PositionalDetector(PatternDetector):
    """A pattern detector whose matching keys depend on positions only, not on token ids.

    Subclasses implement :meth:`mask`; the same ``[query, key]`` mask serves every prompt, and
    with a user's cache no tokens are needed.
    """

    needs_tokens: ClassVar[bool] = False

    @abc.abstractmethod
    def mask(self, seq: int, device: torch.device) -> Bool[torch.Tensor, "query key"]:
        """``M[q, k]`` is True where query ``q`` should attend to key ``k`` (``k <= q``)."""

    def match(self, tokens: Int[torch.Tensor, "batch pos"]) -> Bool[torch.Tensor, "batch query key"]:
        batch, seq = tokens.shape
        return self.mask(seq, tokens.device).expand(batch, seq, seq)


@dataclasses.dataclass(frozen=True)
class WeightDetector(Detector):
    """A detector scored from the weights alone (no forward pass over a probe).

    Subclasses implement :meth:`Detector.compute`; the workspace it receives shares the token
    sample, the effective embedding and vocabulary passes with every other weight detector of
    the same ``hz.detect`` call.

    Options:
        n_tokens: source tokens sampled from the vocabulary (all of it when smaller).
        seed: seeds the sample.
        embedding: effective-embedding variant, see :func:`hz.effective_embedding`.
    """

    n_tokens: int = 512
    seed: int = 0
    embedding: Literal["mlp0", "attn_mlp0", "embed"] = "mlp0"

    kind = "weights"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.n_tokens, int) or isinstance(self.n_tokens, bool) or self.n_tokens < 2:
            raise InvalidOptionError(f"{self.name}: n_tokens must be an integer >= 2; got {self.n_tokens!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidOptionError(f"{self.name}: seed must be an integer; got {self.seed!r}")
