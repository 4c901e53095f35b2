"""Validation study of a zoo model: task accuracy, every detector's scores, and the causal test
(ablate a detector's top-K heads vs K random heads; the drop on the matching task).

Run::

    python experiments/validate_zoo.py results/zoo-cpu/model --out results/zoo-cpu/validation
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import headzoo as hz
from headzoo._checkpoint import load_checkpoint
from headzoo._curriculum import TASKS, Curriculum

#: detector -> the curriculum task its heads should matter for
MATCHING = {"induction": "induction", "previous_token": "induction", "retrieval": "retrieval",
            "successor": "ordinal", "duplicate_token": "ioi", "copying": "ioi", "negative_copying": "ioi",
            "copy_suppression": "ioi"}


@torch.no_grad()
def task_metrics(model, ids: torch.Tensor, tasks: torch.Tensor) -> dict[str, dict[str, float]]:
    logits = model(ids)[:, :-1]
    target, labels = ids[:, 1:], tasks[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    hit = (logits.argmax(-1) == target).reshape(-1).float()
    out = {}
    for i, name in enumerate(TASKS):
        m = labels.reshape(-1) == i
        out[name] = {"loss": float(loss[m].mean()), "accuracy": float(hit[m].mean()), "n": int(m.sum())}
    return out


@torch.no_grad()
def repeated_tokens(model, seed: int = 0) -> dict[str, float]:
    info = hz.model_info(model)
    ids = torch.cat(list(hz.RepeatedTokens(n_prompts=32, seed=seed).batches(info)))
    half = (ids.shape[1] - 1) // 2
    logits = model(ids)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(ids.shape[0], -1)
    first, second = float(loss[:, 1:half].mean()), float(loss[:, half + 1:].mean())
    return {"loss_first_copy": first, "loss_second_copy": second, "ratio": second / first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(args.checkpoint)
    info = hz.model_info(model)
    ids, tasks = next(Curriculum(n_ctx=info.n_ctx, seed=10_000 + args.seed).batches(64))
    base = task_metrics(model, ids, tasks)
    rep = repeated_tokens(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = hz.detect(model)
    scores.save(out / "scores.parquet")
    rows = []
    rng = np.random.default_rng(args.seed)
    heads = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    for det, task in MATCHING.items():
        if det not in scores.detectors:
            continue
        top = scores.top(max(args.k), det)[["layer", "head"]].values.tolist()
        for k in args.k:
            chosen = [tuple(h) for h in top[:k]]
            others = [h for h in heads if h not in chosen]
            runs = [("top", 0, chosen)] + [("random", d, [others[i] for i in rng.choice(len(others), k, replace=False)])
                                           for d in range(args.draws)]
            for kind, draw, hs in runs:
                with hz.ablate(model, hs, "mean", reference_tokens=ids[:16]):
                    m = task_metrics(model, ids, tasks)[task]
                rows.append({"detector": det, "task": task, "k": k, "heads": kind, "draw": draw,
                             "masked": " ".join(f"L{a}H{b}" for a, b in hs),
                             "loss_increase": m["loss"] - base[task]["loss"],
                             "accuracy_drop": base[task]["accuracy"] - m["accuracy"]})
    table = pd.DataFrame(rows)
    table.to_csv(out / "ablation.csv", index=False)
    summary = table.groupby(["detector", "task", "k", "heads"])[["loss_increase", "accuracy_drop"]].mean().unstack("heads")
    (out / "tasks.json").write_text(json.dumps({"tasks": base, "repeated_tokens": rep}, indent=1))
    print(json.dumps({"tasks": base, "repeated_tokens": rep}, indent=1))
    print(scores.top(3)[["detector", "layer", "head", "score"]].to_string(index=False))
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(summary)


if __name__ == "__main__":
    main()
