"""Validation study of a zoo model: task accuracies, every detector's scores, and the causal test
(ablate a detector's top-K heads and K random other heads; the loss increase on the task that
needs that head type).

Run::

    python experiments/validate_zoo.py src/headzoo/_data/zoo/zoo-small --out results/zoo-small-validation
    python experiments/validate_zoo.py results/zoo-cpu/model --out results/zoo-cpu/validation   # curriculum v1

Writes ``scores.parquet`` (every detector, every head), ``ablation.csv`` (one row per detector,
K, method and draw), ``summary.csv`` (top vs the mean of the random draws), ``tasks.json``
(task accuracies on a held-out curriculum batch, IOI on headzoo's built-in templates, which the
v2 curriculum holds out of training, and the repeated-token loss ratio) and ``table.md`` (the
table of ``docs/zoo.md``). Every number is printed too.
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
from headzoo import _curriculum, _curriculum_v2
from headzoo._checkpoint import load_checkpoint

#: detector -> the task (curriculum label) its heads should matter for, per curriculum. The
#: pattern heads of text (delimiter, subword merge, ...) have no task of their own: their row
#: reports the loss on all other tokens ("filler").
MATCHING_V2 = _curriculum_v2.DETECTOR_TASKS
MATCHING_V1 = {"induction": "induction", "previous_token": "induction", "retrieval": "retrieval",
               "successor": "ordinal", "duplicate_token": "ioi", "copying": "ioi", "negative_copying": "ioi",
               "copy_suppression": "ioi"}


def curriculum_of(model) -> str:
    """Which curriculum wrote the model's vocabulary: ``"v2"`` or ``"v1"`` (exits otherwise)."""
    tokens = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))[2:]
    for version, module in (("v2", _curriculum_v2), ("v1", _curriculum)):
        if tuple(tokens) == tuple(module.vocabulary()):
            return version
    raise SystemExit("this model's tokenizer is neither curriculum's vocabulary: validate_zoo checks zoo models "
                     "trained by experiments/train_zoo.py with this version of headzoo")


@torch.no_grad()
def task_metrics(model, ids: torch.Tensor, tasks: torch.Tensor, names: tuple[str, ...],
                 batch: int = 64) -> dict[str, dict[str, float]]:
    """Per task: mean next-token loss and greedy accuracy on the tokens labelled with it."""
    losses, hits = [], []
    for i in range(0, len(ids), batch):
        logits = model(ids[i : i + batch])[:, :-1]
        target = ids[i : i + batch, 1:]
        losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                        reduction="none"))
        hits.append((logits.argmax(-1) == target).reshape(-1).float())
    loss, hit, labels = torch.cat(losses), torch.cat(hits), tasks[:, 1:].reshape(-1)
    out = {}
    for i, name in enumerate(names):
        m = labels == i
        if m.any():
            out[name] = {"loss": float(loss[m].mean()), "accuracy": float(hit[m].mean()), "n": int(m.sum())}
    return out


@torch.no_grad()
def ioi_held_out(model, n: int = 256) -> dict[str, float] | None:
    """IOI on headzoo's built-in templates: share of prompts where logit(IO) > logit(S), share
    where IO is the top token, mean logit difference (None when the tokenizer cannot spell them)."""
    try:
        prompts = hz.ioi_prompts(model, n=n, seed=1)
    except hz.HeadzooError:
        return None
    logits = model(prompts.clean)
    diffs = prompts.logit_diffs(logits)
    rows = torch.arange(len(prompts))
    top = logits[rows, prompts.end_pos].argmax(-1)
    return {"logit_diff_positive": float((diffs > 0).float().mean()), "io_top1": float((top == prompts.io).float().mean()),
            "mean_logit_diff": float(diffs.mean()), "n": len(prompts), "templates": prompts.coverage["templates_kept"]}


@torch.no_grad()
def repeated_tokens(model, seed: int = 0) -> dict[str, float]:
    info = hz.model_info(model)
    ids = torch.cat(list(hz.RepeatedTokens(n_prompts=32, seed=seed).batches(info)))
    half = (ids.shape[1] - 1) // 2
    logits = model(ids)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(ids.shape[0], -1)
    first, second = float(loss[:, 1:half].mean()), float(loss[:, half + 1:].mean())
    return {"loss_first_copy": first, "loss_second_copy": second, "ratio": second / first}


def ablation_study(model, scores, matching: dict[str, str], ids, tasks, names, base, *, ks, draws, methods,
                   seed) -> pd.DataFrame:
    info = hz.model_info(model)
    heads = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    ref = ids[: min(64, len(ids))]
    rows = []
    todo = [d for d in scores.detectors]
    from tqdm.auto import tqdm

    for det in tqdm(todo, desc="ablations"):
        task = matching.get(det, "filler")
        if task not in base:
            continue
        top = scores.top(max(ks), det)[["layer", "head"]].values.tolist()
        rng = np.random.default_rng([seed, sum(map(ord, det))])
        for k in ks:
            chosen = [tuple(h) for h in top[:k]]
            others = [h for h in heads if h not in chosen]
            draws_k = [[others[i] for i in rng.choice(len(others), k, replace=False)] for _ in range(draws)]
            runs = [("top", 0, chosen)] + [("random", d + 1, hs) for d, hs in enumerate(draws_k)]
            for method in methods:
                for kind, draw, hs in runs:
                    with hz.ablate(model, hs, method, reference_tokens=ref, seed=draw):
                        m = task_metrics(model, ids, tasks, names)[task]
                    rows.append({"detector": det, "task": task, "k": k, "method": method, "heads": kind, "draw": draw,
                                 "ablated": " ".join(f"L{a}H{b}" for a, b in hs),
                                 "loss_increase": m["loss"] - base[task]["loss"],
                                 "accuracy_drop": base[task]["accuracy"] - m["accuracy"]})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, scores) -> pd.DataFrame:
    thresholds = hz.list_detectors().set_index("name")["threshold"]
    rows = []
    for (det, task, k, method), g in table.groupby(["detector", "task", "k", "method"], sort=False):
        top = g[g["heads"] == "top"]
        rand = g[g["heads"] == "random"]
        t, r = float(top["loss_increase"].mean()), float(rand["loss_increase"].mean())
        best = scores.top(1, det).iloc[0]
        rows.append({"detector": det, "task": task, "k": k, "method": method, "top_heads": top["ablated"].iloc[0],
                     "top_score": float(best["score"]), "threshold": float(thresholds.get(det, np.nan)),
                     "top_increase": t, "random_increase": r, "random_draws": len(rand),
                     "ratio": t / r if r > 1e-6 else float("inf") if t > 1e-6 else float("nan")})
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, scores) -> str:
    """One row per detector: its top head and score, the task, K=1 mean and resample ablation."""
    lines = ["| detector | top head (score, threshold) | task | K=1 mean: top vs random | K=1 resample: top vs random | "
             "K=2 mean: top vs random |", "| --- | --- | --- | --- | --- | --- |"]

    def cell(det: str, k: int, method: str) -> str:
        row = summary[(summary["detector"] == det) & (summary["k"] == k) & (summary["method"] == method)]
        if row.empty:
            return "-"
        r = row.iloc[0]
        ratio = "" if not np.isfinite(r["ratio"]) or r["random_increase"] < 0.005 else f" ({r['ratio']:.1f}x)"
        return f"{r['top_increase']:+.2f} vs {r['random_increase']:+.2f}{ratio}"

    for det in dict.fromkeys(summary["detector"]):
        r = summary[summary["detector"] == det].iloc[0]
        over = "over" if r["top_score"] >= r["threshold"] else "under"
        head = r["top_heads"].split()[0]
        lines.append(f"| {det} | {head} ({r['top_score']:.2f}, {over} {r['threshold']:.2f}) | {r['task']} | "
                     f"{cell(det, 1, 'mean')} | {cell(det, 1, 'resample')} | {cell(det, 2, 'mean')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=["mean", "resample"])
    p.add_argument("--n", type=int, default=256, help="held-out curriculum sequences")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = load_checkpoint(args.checkpoint)
    info = hz.model_info(model)
    version = curriculum_of(model)
    module = _curriculum_v2 if version == "v2" else _curriculum
    klass = _curriculum_v2.CurriculumV2 if version == "v2" else _curriculum.Curriculum
    names = module.TASKS
    matching = MATCHING_V2 if version == "v2" else MATCHING_V1
    ids, tasks = next(klass(n_ctx=info.n_ctx, seed=10_000 + args.seed).batches(args.n))
    base = task_metrics(model, ids, tasks, names)
    facts = {"curriculum": version, "tasks": base, "ioi_held_out_templates": ioi_held_out(model),
             "repeated_tokens": repeated_tokens(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = hz.detect(model, progress=False)  # detectors the model gives nothing to score are skipped
    facts["skipped_detectors"] = {k: str(v) for k, v in dict(scores.meta.get("skipped_detectors") or {}).items()}
    scores.save(out / "scores.parquet")
    table = ablation_study(model, scores, matching, ids, tasks, names, base, ks=args.k, draws=args.draws,
                           methods=args.methods, seed=args.seed)
    table.to_csv(out / "ablation.csv", index=False)
    summary = summarise(table, scores)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "tasks.json").write_text(json.dumps(facts, indent=1))
    (out / "table.md").write_text(markdown(summary, scores))
    print(json.dumps(facts, indent=1))
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(summary.to_string(index=False))
    print(markdown(summary, scores))


if __name__ == "__main__":
    main()
