"""Retrieval heads: while the model writes out a needle, the head's strongest attention sits on the
very token it is emitting, inside the needle.

Wu, Wang, Xiao, Peng, Fu (2024), Retrieval Head Mechanistically Explains Long-Context
Factuality, arXiv 2404.15574. The model decodes the needle-in-a-haystack probe greedily; at each
step it emits ``w``; a head whose argmax key ``j*`` of the emitting query lies in the needle's
answer span with ``token[j*] == w`` copy-pasted ``w``. Its score in a trial is the share of the
answer tokens it copy-pasted; the retrieval score is the mean over the trials the model got right
(answer recall above 50%). Threshold 0.1. Published: Llama-2-7B-80K 16.19 (0.94), 11.15 (0.92);
Mistral-7B-v0.2 18.0 (0.94); Qwen1.5-14B 12.2, 14.12 (~1.0). Fewer than 5% of heads qualify.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd

import headzoo as hz

_PROBE_FIELDS = tuple(f.name for f in dataclasses.fields(hz.NeedleHaystack))


@hz.register
@dataclasses.dataclass(frozen=True)
class Retrieval(hz.Detector):
    """Retrieval score: share of a needle's answer tokens the head copy-pasted while the model
    decoded them, averaged over the trials whose needle was retrieved.

    Options (the probe's are those of :class:`hz.NeedleHaystack`):
        lengths, depths, n_needles, answer_len, extra_tokens, question, filler, max_length,
            seed, prepend_bos: the needle-in-a-haystack probe.
        batch_size: trials per forward pass.
        min_recall: a trial counts when the share of answer tokens decoded is above this.
        use_kv_cache: decode with the model's key-value cache where it has one.

    Per-trial, per-head scores with the trial's layout and recall: ``scores.details("retrieval")``.
    A model that retrieves no needle raises :class:`hz.DetectorNotApplicableError` with its
    retrieval rate, instead of reporting all-zero scores.
    """

    name = "retrieval"
    stage = "in-context identification"
    description = "While the model copies a needle out of a long context, it attends to the token being copied."
    reference = "Wu, Wang, Xiao, Peng, Fu 2024, Retrieval Head Mechanistically Explains Long-Context Factuality, arXiv 2404.15574"
    variant = (
        "greedy decoding of a needle-in-a-haystack probe; +1/len(answer) for each answer token w the head's "
        "argmax key (last query) points at inside the answer span with token == w; mean over trials with recall > min_recall"
    )
    threshold = 0.1
    kind = "decoding"
    score_range = (0.0, 1.0)  # the share of answer tokens copied

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_needles: int = 2
    answer_len: int = 4
    extra_tokens: int = 0
    question: Literal["copy", "natural"] = "copy"
    filler: Literal["auto", "text", "random"] = "auto"
    max_length: int = 1024
    seed: int = 0
    prepend_bos: bool | None = None
    batch_size: int = 4
    min_recall: float = 0.5
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        probe = self.probe()  # checks the probe options now, not at the first forward
        object.__setattr__(self, "lengths", probe.lengths)
        object.__setattr__(self, "depths", probe.depths)
        if not isinstance(self.min_recall, (int, float)) or isinstance(self.min_recall, bool) or not 0 <= self.min_recall < 1:
            raise hz.InvalidOptionError(f"retrieval: min_recall must be a number in [0, 1); got {self.min_recall!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise hz.InvalidOptionError(f"retrieval: batch_size must be a positive integer; got {self.batch_size!r}")

    def probe(self) -> hz.NeedleHaystack:
        """The needle-in-a-haystack probe these options describe."""
        return hz.NeedleHaystack(**{f: getattr(self, f) for f in _PROBE_FIELDS})

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        trials = self.probe().build(model)
        run = hz.decode_needles(model, trials, batch_size=self.batch_size, use_kv_cache=self.use_kv_cache, progress=progress)
        score = run.head_scores(self.min_recall)
        per_trial = run.copy_scores()
        layout = run.frame(self.min_recall)
        n, n_layers, n_heads = per_trial.shape
        trial, layer, head = (a.reshape(-1) for a in np.indices((n, n_layers, n_heads)))
        details = pd.DataFrame({
            "trial": layout["trial"].to_numpy()[trial], "layer": layer, "head": head,
            "score": per_trial.numpy().reshape(-1),
        }).merge(
            layout[["trial", "length", "depth", "needle", "needle_start", "answer_start", "recall", "retrieved"]],
            on="trial",
        )
        retrieved = layout["retrieved"].to_numpy()
        meta = {
            "probe": {k: v for k, v in trials.meta.items()},
            "decoding": run.mode,
            "n_trials": len(layout),
            "n_retrieved": int(retrieved.sum()),
            "retrieval_rate": float(retrieved.mean()),
            "mean_recall": float(layout["recall"].mean()),
            "recall_by_length": {int(k): float(v) for k, v in layout.groupby("length")["recall"].mean().items()},
        }
        return hz.DetectorOutput({"score": score}, meta, details)
