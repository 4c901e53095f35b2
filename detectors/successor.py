"""Successor heads: the OV circuit maps an ordinal token to the next one ("Monday" -> "Tuesday").

Gould, Ong, Ogden, Conmy (2023), Successor Heads, arXiv 2312.09230. For each task token ``t``
the head's direct effect on the logits, ``W_EE[t] @ W_OV @ W_U``, restricted to that task's own
tokens, must peak at ``successor(t)``; the succession score is the hit rate over all pairs.
Published: Pythia-1.4B L12H0; GPT-2 small 9.1 (recalled, unverified). Threshold 0.4 is what
replications use (the paper's own is not confirmed).

Beside the score, the detector runs the paper's mod-10 analysis once (:func:`hz.mod10_features`,
class means over the model's number-like tokens) and edits by vector arithmetic through the
heads over threshold (:func:`hz.successor_editing`; the best head when none is), so a successor
head's atlas card shows its per-task accuracies, the mod-10 figure and the editing success.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class Successor(hz.WeightDetector):
    """Succession score: share of ``(t, successor(t))`` pairs where the head's OV logits over
    the task's tokens peak at the successor (a tie with another token is a miss).

    Options:
        tasks: ``None`` (default): the built-in ordinal lists (numbers, number words, ordinals,
            days, months and their prefixes, letters, Roman numerals; forms ``"X"`` and
            ``" X"``) expressed in the model's tokenizer. Otherwise explicit tasks: token-id
            sequences, ``{name: ids}``, or :class:`hz.OrdinalTask` (which can be cyclic).
        analysis: also run the mod-10 analysis and editing (default ``True``); what it found,
            or why it could not run, is in ``meta["detectors"]["successor"]["result"]["analysis"]``.
        n_tokens, seed: unused (every task token is scored).

    Per-task accuracy: ``scores.details("successor")``; tasks a tokenizer cannot express are
    listed in ``scores.meta["detectors"]["successor"]["result"]["skipped_tasks"]``.
    """

    name = "successor"
    stage = "latent reasoning"
    description = "Its OV circuit maps an ordinal token to its successor (Monday -> Tuesday)."
    reference = "Gould, Ong, Ogden, Conmy 2023, Successor Heads, arXiv 2312.09230"
    variant = "argmax of W_EE[t] W_OV W_U over the task's tokens == successor(t); hit rate over pairs"
    score_range = (0.0, 1.0)  # a hit rate over ordinal tokens
    threshold = 0.4

    tasks: Any = None
    analysis: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tasks is not None:
            object.__setattr__(self, "tasks", hz.as_ordinal_tasks(self.tasks))

    def options(self) -> dict[str, Any]:
        out = super().options()
        if self.tasks is not None:
            out["tasks"] = [t.to_dict() for t in self.tasks]
        return out

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        circuits = circuits if circuits is not None else hz.WeightCircuits(model, progress=progress)
        info = circuits.info
        skipped: dict[str, str] = {}
        if self.tasks is None:
            tokenizer = getattr(model, "tokenizer", None)
            tasks, skipped = hz.ordinal_tasks(tokenizer, n_vocab=circuits.n_outputs)
            if tokenizer is None:
                raise hz.DetectorNotApplicableError(
                    "successor: the model has no tokenizer, so the built-in ordinal lists cannot be "
                    "written in its tokens. Pass explicit sequences instead: "
                    "hz.detect(model, 'successor', tasks=[[id1, id2, id3, ...], ...])."
                )
            if not tasks:
                raise hz.DetectorNotApplicableError(
                    "successor: none of the built-in ordinal lists can be written as single tokens "
                    f"of this model's tokenizer ({'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:4])}"
                    f"{'; ...' if len(skipped) > 4 else ''}). Pass explicit sequences instead: "
                    "hz.detect(model, 'successor', tasks=[[id1, id2, id3, ...], ...])."
                )
        else:
            tasks = list(self.tasks)
            for task in tasks:
                bad = [t for t in task.token_ids if not 0 <= t < info.d_vocab]
                if bad:
                    raise hz.InvalidTokensError(
                        f"successor task {task.name!r} holds ids {bad[:5]} outside the vocabulary [0, {info.d_vocab - 1}]"
                    )
        union = torch.tensor(sorted({t for task in tasks for t in task.token_ids}))
        where = {int(t): i for i, t in enumerate(union.tolist())}
        x = circuits.embedding(union, self.embedding)
        hits = torch.zeros(len(tasks), info.n_layers, info.n_heads, dtype=torch.float64)
        with torch.no_grad():
            for layer in range(info.n_layers):
                logits = circuits.ov_logits(layer, x, union)  # [head, |union|, |union|]
                for i, task in enumerate(tasks):
                    cols = torch.tensor([where[t] for t in task.token_ids])
                    pairs = task.pairs()
                    rows = torch.tensor([where[a] for a, _ in pairs])
                    target = torch.tensor([task.token_ids.index(b) for _, b in pairs])
                    sub = logits[:, rows][:, :, cols]  # [head, pair, task token]
                    best = sub.gather(-1, target[None, :, None].expand(sub.shape[0], -1, 1)).squeeze(-1)
                    others = sub.scatter(-1, target[None, :, None].expand(sub.shape[0], -1, 1), float("-inf")).amax(-1)
                    tol = 1e-5 * sub.abs().amax(-1)  # a tie, a flat row included, is a miss
                    hits[i, layer] = (best > others + tol).double().sum(-1).cpu()
        n_pairs = torch.tensor([len(t.pairs()) for t in tasks], dtype=torch.float64)
        score = hits.sum(0) / n_pairs.sum()
        rows = []
        for i, task in enumerate(tasks):
            acc = hits[i] / n_pairs[i]
            for layer in range(info.n_layers):
                for head in range(info.n_heads):
                    rows.append((layer, head, task.name, float(acc[layer, head]), int(n_pairs[i])))
        details = pd.DataFrame(rows, columns=["layer", "head", "task", "accuracy", "n_pairs"])
        meta = {
            "tasks": [{"name": t.name, "n_tokens": len(t.token_ids), "n_pairs": len(t.pairs()), "cyclic": t.cyclic, "items": list(t.items)} for t in tasks],
            "skipped_tasks": skipped,
            "n_pairs": int(n_pairs.sum()),
            "embedding": hz.embedding_metadata(model, self.embedding),
        }
        if self.analysis:
            meta["analysis"] = successor_analysis(model, score, self.threshold, self.embedding,
                                                  tasks=None if self.tasks is None else tasks)
        return hz.DetectorOutput({"score": score}, meta=meta, details=details)


#: heads over threshold that are edited (the best first); the rest are left to hz.successor_editing
_MAX_EDITED = 3
#: tokens the mod-10 figure shows (rows)
_FIGURE_TOKENS = 30


def _plain(value: Any) -> Any:
    """A JSON-able scalar: numpy numbers as Python ones, NaN (nothing to measure) as ``None``."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def successor_analysis(model: Any, score: torch.Tensor, threshold: float, embedding: str, *, tasks: Any) -> dict[str, Any]:
    """The mod-10 features of the model's number-like tokens (class means) and the editing
    success of the best heads: what the atlas card of a successor head shows.

    Returns a JSON-able dict: ``mod10`` (accuracy and variance explained per modulus, the
    figure's tokens and projections), ``heads`` (per edited head: success, success without
    carries, the random-direction control, chance, per task) and ``note`` when it could not run.
    """
    flat = score.flatten()
    n_heads = score.shape[1]
    order = [int(i) for i in flat.argsort(descending=True, stable=True)]
    chosen = [i for i in order[:_MAX_EDITED] if float(flat[i]) >= threshold] or order[:1]
    heads = [(i // n_heads, i % n_heads) for i in chosen]
    try:
        features = hz.mod10_features(model, tokens=tasks, method="means", embedding=embedding)
    except (hz.DetectorNotApplicableError, hz.InvalidOptionError, hz.InvalidTokensError) as exc:
        return {"note": f"no mod-10 analysis: {exc}", "heads": []}
    summary = features.to_frame()
    tokens = features.tokens()
    numbers = tokens[tokens["task"].astype(str).str.startswith("numbers")].sort_values(["value", "task"], kind="stable")
    shown = (numbers if len(numbers) >= 10 else tokens).drop_duplicates("value").head(_FIGURE_TOKENS)
    proj = [f"proj_{r}" for r in range(10)]
    mod10 = {
        "method": features.method,
        "probe_accuracy": float(features.probe_accuracy),
        "variance_explained": float(features.variance_explained),
        "moduli": [{"modulus": int(m), "accuracy": float(a), "chance": float(c)}
                   for m, a, c in zip(summary["modulus"], summary["accuracy"], summary["chance"])],
        "n_tokens": int(len(tokens)),
        "figure": {"tokens": [str(t) for t in shown["token"]], "values": [int(v) for v in shown["value"]],
                   "projections": [[round(float(x), 4) for x in row] for row in shown[proj].to_numpy()]},
    }
    out: list[dict[str, Any]] = []
    for layer, head in heads:
        editing = hz.successor_editing(model, (layer, head), features)
        frame = editing.to_frame()
        if not len(frame):
            continue
        plain = frame[~frame["carry"]]
        out.append({
            "layer": layer, "head": head, "n_pairs": int(len(frame)),
            "success": float(frame["success"].mean()),
            "success_no_carry": float(plain["success"].mean()) if len(plain) else None,
            "control_success": float(frame["control_success"].mean()),
            "tasks": [{k: _plain(v) for k, v in row.items()} for row in editing.summary().to_dict("records")],
        })
    return {"mod10": mod10, "heads": out}
