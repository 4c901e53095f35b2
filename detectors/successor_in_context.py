"""Successor heads in context: at the end of "If today is Monday, then tomorrow is", the head
attends to " Monday" and its direct effect on the logits raises " Tuesday".

Gould, Ong, Ogden, Conmy (2023), Successor Heads, arXiv 2312.09230. The paper finds successor
heads from their OV circuits (the ``successor`` detector) and checks that they act as such in
context. This detector scores that behaviour directly: on prompts where an ordinal item is
followed, a few tokens later, by a position that asks for its successor, a head's score is the
share of prompts where its direct logit attribution at the end, restricted to the task's tokens,
peaks at the successor. Attention to the item (and to a random token in its place, the control)
and the DLA margin are reported beside it. Published: Pythia-1.4B L12H0 (the paper's main head).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class SuccessorInContext(hz.Detector):
    """Share of succession prompts where the head's direct logit attribution at the end peaks at
    the item's successor among the task's tokens (a tie is a miss).

    Options:
        tasks: ``None`` (default): the built-in ordinal lists in the model's tokenizer, the
            ``" X"`` forms written into natural templates, the others into filler ids.
            Otherwise explicit tasks: token-id sequences, ``{name: ids}`` or
            :class:`hz.OrdinalTask` (prompts built from ids).
        n: number of prompts (spread evenly over the tasks).
        seed: seeds the prompts and their random-token controls.

    Metrics beside ``score``: ``attention`` (mean attention from the end to the item),
    ``attention_control`` (the same with a random token in the item's place) and
    ``dla_margin`` (mean successor logit minus the mean of the task's other tokens). Per task:
    ``scores.details("successor_in_context")``. Cost: two forward passes over ``n`` prompts.
    See :func:`hz.succession_in_context` for the weight-score comparison.
    """

    name = "successor_in_context"
    stage = "latent reasoning"
    kind = "in_context"
    description = "In context, it attends to an ordinal item and its direct logit effect raises the item's successor."
    reference = "Gould, Ong, Ogden, Conmy 2023, Successor Heads, arXiv 2312.09230"
    variant = (
        "n prompts '... X ... <end>' (templates for ' X' forms, filler ids otherwise); DLA of the head at <end> "
        "(z W_O through the final norm, / its scale, W_U) over the task's tokens; score = share of prompts where it "
        "peaks at successor(X)"
    )
    # headzoo's choice (the paper reports in-context accuracies, not a cut-off): a head whose
    # direct effect names the successor on most prompts. On the planted successor model the
    # successor head scores ~0.9 (numbers ending in 9 miss, by construction), every other head ~0.
    threshold = 0.5
    score_range = (0.0, 1.0)  # a share of prompts

    tasks: Any = None
    n: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1:
            raise hz.InvalidOptionError(f"successor_in_context: n must be an integer >= 1; got {self.n!r}")
        if self.tasks is not None:
            object.__setattr__(self, "tasks", hz.as_ordinal_tasks(self.tasks))  # a tuple: hashable, the caller's list untouched

    def options(self) -> dict[str, Any]:
        out = super().options()
        if self.tasks is not None:
            out["tasks"] = [t.to_dict() for t in self.tasks]
        return out

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        try:
            result = hz.succession_in_context(
                model, None if self.tasks is None else list(self.tasks), n=self.n, seed=self.seed,
                weight_scores=False, progress=progress,
            )
        except hz.DetectorNotApplicableError as exc:  # say which detector does not apply
            raise hz.DetectorNotApplicableError(f"successor_in_context: {exc}") from None
        info = hz.model_info(model)
        frame = result.to_frame()

        def matrix(column: str) -> torch.Tensor:
            out = torch.full((info.n_layers, info.n_heads), float("nan"), dtype=torch.float64)
            out[torch.as_tensor(frame["layer"].to_numpy().copy()), torch.as_tensor(frame["head"].to_numpy().copy())] = (
                torch.as_tensor(frame[column].to_numpy(dtype=float).copy(), dtype=torch.float64))
            return out

        metrics = {"score": matrix("in_context"), **{c: matrix(c) for c in ("attention", "attention_control", "dla_margin")}}
        meta = {k: v for k, v in result.meta.items() if k in ("n_prompts", "seed", "gap", "tasks", "skipped_tasks", "sources", "final_scale")}
        return hz.DetectorOutput(metrics, meta=meta, details=result.tasks())
