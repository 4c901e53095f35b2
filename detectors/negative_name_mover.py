"""Negative name mover heads (IOI): they attend to the indirect object like name movers but
write against it, lowering logit(IO).

Wang et al. (2022), arXiv 2211.00593: the same path patching of each head's direct path to the
logits that finds name movers (ABC outputs patched into the clean run, every other head frozen),
with the sign flipped: the score is the *rise* of ``logit(IO) - logit(S)`` as a share of the
clean difference. Their OV circuits are negative copying: the name's own token in the bottom 5.
GPT-2 small: 10.7, 11.10 (also copy suppression heads, McDougall et al. 2023).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class NegativeNameMover(hz.Detector):
    """Share of the clean logit difference *gained* when the head's direct path to the logits
    carries its output on ABC prompts: the name mover measurement (``hz.get_detector("name_mover")``,
    same options) with the sign flipped; ``copy_score``: names whose own token is in the bottom
    ``k`` of the OV circuit. Options as ``name_mover``.
    """

    name = "negative_name_mover"
    description = "At the end of an IOI sentence it attends to the indirect object and writes against its name."
    reference = "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild, arXiv 2211.00593"
    variant = (
        "path patching (noising, ABC corruption) of each head's direct path to the logits; score = rise of "
        "logit(IO) - logit(S) at END as a share of the clean difference (minus the name_mover score); OV: names "
        "in the bottom 5 of W_EE(mlp0) W_OV W_U"
    )
    threshold = 0.1  # headzoo's choice, the name_mover threshold mirrored
    kind = "causal"
    stage = "expression preparation"

    n_prompts: int = 32
    seed: int = 0
    k: int = 5
    max_exact_heads: int | None = None
    memory_mb: float = 512.0

    def __post_init__(self) -> None:
        super().__post_init__()
        hz.get_detector("name_mover", **self.options())  # the same options, checked the same way

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        nm = hz.get_detector("name_mover", **self.options()).compute(model, progress=progress, circuits=circuits)
        bottom = torch.tensor(nm.details["copy_score_bottom"].to_numpy()).view_as(nm.metrics["score"])
        metrics = {**nm.metrics, "score": -nm.metrics["score"], "copy_score": bottom}
        details = nm.details.assign(score=-nm.details["score"], copy_score=nm.details["copy_score_bottom"])
        return hz.DetectorOutput(metrics, {**nm.meta, "measured_by": "name_mover, sign flipped"}, details)
