"""When does each head type form in a zoo training run? The model card's "formation" table.

``hz.sweep`` scores every snapshot of a ``train_zoo.py --checkpoints N`` run with every detector
(no atlas pages; a detector that does not apply to a snapshot yet is skipped there), and ``hz.formation_steps`` finds, per head, the first snapshot from
which its score stays at or over the detector's threshold to the end of training. For each
detector the table gives the earliest such step over all heads, the head, its final score, and
the training loss on the task that head type serves at that snapshot (from the run's
``log.jsonl``), so a head's arrival can be read against the loss it brings down.

Run::

    python experiments/train_zoo.py --config small --checkpoints 24 --out /work/runs/zoo-small
    python experiments/zoo_formation.py /work/runs/zoo-small --out results/zoo-small-formation

Writes ``OUT/sweep/`` (the sweep), ``OUT/formation.csv`` (every head that passes) and
``OUT/formation.md`` (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import headzoo as hz
from headzoo._curriculum_v2 import DETECTOR_TASKS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_dynamics import read_log  # noqa: E402  (a sibling script: the one reader of train_zoo's log)

#: head types of the card, each with the curriculum-v2 task whose loss the table quotes
DETECTORS = {d: DETECTOR_TASKS[d] for d in (
    "previous_token", "induction", "duplicate_token", "successor", "successor_in_context", "retrieval",
    "name_mover", "s_inhibition", "copy_suppression", "negative_copying", "ngram_induction", "function_vector",
)}


def loss_at(log: pd.DataFrame, step: int, task: str) -> float:
    """The logged loss on ``task`` at the last log line at or before ``step`` (NaN if none)."""
    column = f"loss_{task}"
    if column not in log or log.empty:
        return float("nan")
    before = log[log["step"] <= step]
    return float(before[column].iloc[-1]) if len(before) else float("nan")


def table(formation: pd.DataFrame, log: pd.DataFrame, detectors: dict[str, str], last_step: int) -> pd.DataFrame:
    rows = []
    for det, task in detectors.items():
        part = formation[(formation["detector"] == det) & formation["step"].notna()]
        if part.empty:
            rows.append({"detector": det, "step": pd.NA, "head": "", "final_score": np.nan, "task": task,
                         "task_loss_then": np.nan, "task_loss_end": loss_at(log, last_step, task),
                         "heads_formed": 0})
            continue
        first = part.sort_values(["step", "final_score"], ascending=[True, False]).iloc[0]
        rows.append({"detector": det, "step": int(first["step"]), "head": f"L{first['layer']}H{first['head']}",
                     "final_score": float(first["final_score"]), "task": task,
                     "task_loss_then": loss_at(log, int(first["step"]), task),
                     "task_loss_end": loss_at(log, last_step, task), "heads_formed": len(part)})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| head type | forms at step | first head (final score) | heads over threshold at the end | "
             "task loss then -> at the end |", "| --- | --- | --- | --- | --- |"]
    for r in frame.itertuples():
        if pd.isna(r.step):
            lines.append(f"| {r.detector} | none stays over threshold | | 0 | {r.task}: {r.task_loss_end:.2f} at the end |")
        else:
            lines.append(f"| {r.detector} | {r.step} | {r.head} ({r.final_score:.2f}) | {r.heads_formed} | "
                         f"{r.task}: {r.task_loss_then:.2f} -> {r.task_loss_end:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="an OUT folder of train_zoo.py --checkpoints N")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    p.add_argument("--executor", default="serial", choices=["serial", "ray"])
    args = p.parse_args()
    unknown = sorted(set(args.detectors) - set(DETECTORS))
    if unknown:
        raise SystemExit(f"no task is on record for {unknown}; choose from {sorted(DETECTORS)}")
    snapshots = sorted((args.run / "checkpoints").glob("step-*"))
    if len(snapshots) < 2:
        raise SystemExit(f"{args.run}/checkpoints has {len(snapshots)} snapshots; train with --checkpoints N (N >= 2)")
    args.out.mkdir(parents=True, exist_ok=True)
    # every detector, so one that does not apply yet (an early snapshot solves no IOI prompt) is
    # skipped for that snapshot; named detectors would fail the snapshot's whole job instead
    result = hz.sweep(str(args.run / "checkpoints" / "step-*"), None, out=args.out / "sweep",
                      executor=args.executor, atlas=False, examples=False, importance=False)
    frame = result.to_frame()
    frame = frame[frame["detector"].isin(args.detectors)].reset_index(drop=True)
    formation = hz.formation_steps(frame)
    formation[formation["first_step"].notna()].to_csv(args.out / "formation.csv", index=False)
    log = read_log(args.run) if (args.run / "log.jsonl").is_file() else pd.DataFrame()
    last = int(frame["step"].max())
    out = table(formation, log, {d: DETECTORS[d] for d in args.detectors}, last)
    text = markdown(out)
    (args.out / "formation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
