"""Function-vector heads: heads whose mean output at the last token of in-context prompts
carries the task, so that patching it into a prompt with shuffled labels restores the answer.

Todd, Li, Sen Sharma, Mueller, Wallace, Bau (2024), Function Vectors in Large Language Models,
arXiv 2310.15213. For each task, a head's mean last-token output over clean in-context prompts
is patched into prompts whose shown labels are shuffled; the rise in the probability of the
correct answer is the head's causal indirect effect (CIE), and its score the mean CIE over
tasks (the paper's average indirect effect). The paper's function vector sums the outputs of
the top 10 heads of GPT-J (layers 8-15, e.g. 9.14, 10.11, 12.10 and 8.1); a few heads carry
most of the effect, the rest sit near 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class FunctionVector(hz.Detector):
    """Mean causal indirect effect over in-context tasks of patching the head's clean mean
    last-token output into shuffled-label prompts.

    Options:
        tasks: built-in task names (``hz.ICL_TASKS``) or ``hz.ICLTask`` objects (your own,
            ``hz.ICLTask.from_pairs``); ``None``: every built-in task the tokenizer can spell.
        n_prompts: clean prompts per task for the means, and as many shuffled ones for the effect.
        n_shots: input-output pairs shown per prompt (``>= 2``).
        seed: seeds the prompts.
        separator: token between pairs: ``"auto"`` (a newline where it is one token, else
            none), ``""`` (none) or a one-token string.
        batch_size: heads patched per forward pass; only speed depends on it.
        max_exact_heads: with more heads than this, every head is first ranked by attribution
            patching (one forward and one backward pass per task) and only the top
            ``max_exact_heads`` get the exact CIE; the others are not scored (NaN), their
            estimate is in the ``attribution`` metric. ``None``: all exact.
        min_clean_accuracy: tasks the model answers (top-1) on fewer than this share of clean
            prompts are left out (listed in ``meta["left_out_tasks"]``); with none left the
            detector does not apply (:class:`hz.DetectorNotApplicableError`, skipped with that
            reason when it was not named).

    Cost: per task two forward passes over ``n_prompts`` prompts (clean, shuffled), plus one
    restarted at the patched layer per ``batch_size`` heads over ``batch_size * n_prompts``
    rows; recorded in ``meta["cost"]``. Per-task CIEs: ``scores.details("function_vector")``.
    """

    name = "function_vector"
    stage = "latent reasoning"
    kind = "causal"
    description = "Its mean last-token output on in-context prompts restores the task when patched into shuffled-label prompts."
    reference = "Todd, Li, Sen Sharma, Mueller, Wallace, Bau 2024, Function Vectors in Large Language Models, arXiv 2310.15213"
    variant = (
        "per task: mean hook_z at the last token over n_prompts clean prompts [BOS] x1 y1 SEP ... xq; patched one head "
        "at a time into n_prompts other prompts whose shot labels are deranged; CIE = rise in p(answer); score = mean "
        "CIE over tasks (attribution-ranked top max_exact_heads when the model has more heads)"
    )
    # headzoo's choice: the paper ranks heads by their mean CIE and keeps the top 10 rather than
    # thresholding it. 0.02 = the head alone raises p(answer) by two points on average over
    # tasks; every other head of the planted circuit stays below 0.01, its own head near 0.95.
    threshold = 0.02
    score_range = (-1.0, 1.0)  # a difference of two probabilities

    tasks: tuple[Any, ...] | None = None
    n_prompts: int = 12
    n_shots: int = 5
    seed: int = 0
    separator: str = "auto"
    batch_size: int = 16
    max_exact_heads: int | None = 256
    min_clean_accuracy: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        for opt, low in (("n_prompts", 1), ("n_shots", 2), ("batch_size", 1)):
            value = getattr(self, opt)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise hz.InvalidOptionError(f"function_vector: {opt} must be an integer >= {low}; got {value!r}")
        if not 0 <= self.min_clean_accuracy <= 1:
            raise hz.InvalidOptionError(f"function_vector: min_clean_accuracy must be in [0, 1]; got {self.min_clean_accuracy!r}")
        m = self.max_exact_heads
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise hz.InvalidOptionError(f"function_vector: max_exact_heads must be a positive integer or None; got {m!r}")
        if self.tasks is not None:
            items = (self.tasks,) if isinstance(self.tasks, (str, hz.ICLTask)) else self.tasks
            if not isinstance(items, (tuple, list)) or not items or not all(isinstance(t, (str, hz.ICLTask)) for t in items):
                raise hz.InvalidOptionError(
                    "function_vector: tasks must be None or a non-empty tuple of built-in task names "
                    f"{sorted(hz.ICL_TASKS)} and hz.ICLTask objects; got {self.tasks!r}"
                )
            object.__setattr__(self, "tasks", tuple(items))  # hashable, and a list given stays the caller's

    def options(self) -> dict[str, Any]:
        out = super().options()
        if self.tasks is not None:  # JSON-ready: a user's task by its name and pairs
            out["tasks"] = [t if isinstance(t, str) else {"name": t.name, "pairs": [list(p) for p in t.pairs]} for t in self.tasks]
        return out

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        info = hz.model_info(model)
        n_layers, n_heads = info.n_layers, info.n_heads
        every = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        common = dict(tasks=None if self.tasks is None else list(self.tasks), n_prompts=self.n_prompts,
                      n_shots=self.n_shots, seed=self.seed, separator=self.separator, progress=progress,
                      min_clean_accuracy=self.min_clean_accuracy)
        ranked = self.max_exact_heads is not None and len(every) > self.max_exact_heads
        attribution: dict[str, hz.HeadEffects] = {}
        exact_heads = every
        if ranked:
            attribution = hz.function_vector_effects(model, heads=every, method="attribution", **common)
            estimate = np.mean([_cie(e) for e in attribution.values()], axis=0)  # [n_layers * n_heads]
            order = np.argsort(-estimate, kind="stable")[: self.max_exact_heads]
            exact_heads = sorted(every[i] for i in order)
        exact = hz.function_vector_effects(model, heads=exact_heads, batch_size=self.batch_size, **common)

        score = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        rows = []
        for task, eff in exact.items():
            frame = eff.to_frame()
            frame["cie"] = frame["effect"] - eff.meta["baseline"]
            frame.insert(0, "task", task)
            frame["method"] = "exact"
            if ranked:
                frame["attribution"] = _attribution_at(attribution[task], frame)
            rows.append(frame)
        details = pd.concat(rows, ignore_index=True)
        mean_cie = details.groupby(["layer", "head"])["cie"].mean()
        for (layer, head), value in mean_cie.items():  # type: ignore[misc]
            score[int(layer), int(head)] = float(value)
        metrics = {"score": score}
        per_task = {task: {k: eff.meta[k] for k in ("baseline", "source", "clean_accuracy", "shuffled_accuracy", "task", "cost")}
                    for task, eff in exact.items()}
        cost = {k: sum(eff.meta["cost"][k] for eff in [*exact.values(), *attribution.values()])
                for k in ("forward_passes", "backward_passes", "prompt_rows")}
        meta: dict[str, Any] = {
            "tasks": per_task, "n_tasks": len(exact), "left_out_tasks": next(iter(exact.values())).meta["left_out_tasks"], "exact_heads": len(exact_heads), "cost": cost,
            "separator": next(iter(exact.values())).meta["separator"],
            "reused_layers": all(eff.meta["engine"].get("reused_layers", False) for eff in exact.values()),
        }
        if ranked:
            estimate_t = torch.tensor(estimate, dtype=torch.float64).view(n_layers, n_heads)
            metrics["attribution"] = estimate_t
            meta["attribution"] = _agreement(score, estimate_t, exact_heads)
        return hz.DetectorOutput(metrics, meta, details)


def _cie(effects: hz.HeadEffects) -> np.ndarray:
    """``[rows]`` effect minus the unpatched baseline."""
    return effects.to_frame()["effect"].to_numpy() - effects.meta["baseline"]


def _attribution_at(effects: hz.HeadEffects, frame: pd.DataFrame) -> np.ndarray:
    """The attribution estimate of the CIE at the heads of ``frame``."""
    est = effects.to_frame().set_index(["layer", "head"])["effect"] - effects.meta["baseline"]
    return est.loc[list(zip(frame["layer"], frame["head"]))].to_numpy()


def _agreement(exact: torch.Tensor, estimate: torch.Tensor, heads: list[tuple[int, int]]) -> dict[str, Any]:
    """Spearman rank correlation and top-k overlap of exact and attribution CIE on the heads
    done both ways."""
    x = np.array([float(exact[h]) for h in heads])
    y = np.array([float(estimate[h]) for h in heads])
    rank = lambda v: pd.Series(v).rank().to_numpy()  # noqa: E731  (average ranks for ties)
    rho = float(np.corrcoef(rank(x), rank(y))[0, 1]) if len(heads) > 2 and x.std() > 0 and y.std() > 0 else None
    k = max(1, min(10, len(heads) // 2))
    top_x = set(np.argsort(-x, kind="stable")[:k].tolist())
    top_y = set(np.argsort(-y, kind="stable")[:k].tolist())
    return {"heads_compared": len(heads), "spearman": rho, "top_k": k, "top_k_overlap": len(top_x & top_y) / k}
