"""How clearly does each detector find its planted head?

For many seeds, build a planted model with random sizes and random head placements (the
previous-token, induction and duplicate-token heads, and with ``--weights`` also a copying, a
successor and a copy-suppression head), run the detectors, and record the planted head's rank,
its score, and the best other head's score. ``copying`` has two planted heads (the copying head
and the induction head, whose OV circuit copies): both must lead, and the margin is the second
one's. Prints one row per (seed, detector) and a summary.

    python experiments/planted_margins.py --seeds 20
    python experiments/planted_margins.py --seeds 20 --weights
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model, random_placements

DETECTORS = ["previous_token", "duplicate_token", "induction"]
WEIGHT_DETECTORS = {  # detector -> the planted roles it must put first
    "successor": ["successor"], "copy_suppression": ["copy_suppression"],
    "negative_copying": ["copy_suppression"], "copying": ["copying", "induction"],
}


def run(seeds: int, backend: str, weights: bool = False) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(10_000 + seed)
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
        n_layers, n_heads = pick([2, 3, 4, 6]), pick([2, 4, 8, 12])
        if weights and n_layers * n_heads < 6:
            n_heads = 4  # room for six planted heads
        d_head, d_vocab, n_ctx = pick([16, 32, 64]), pick([12, 50, 300, 2000]), pick([16, 32, 128, 256])
        # narrow heads cannot hold a planted duplicate-token head (PlantSpec refuses it)
        placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32, weights=weights)
        spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx,
                         seed=seed, **placements)
        model = planted_model(spec, backend=backend)
        targets = {name: [name] for name in DETECTORS if name in placements}
        scores = hz.detect(model, list(targets), n_prompts=8, progress=False)
        frame = scores.to_frame()
        if weights:
            targets.update(WEIGHT_DETECTORS)
            frame = pd.concat([frame, hz.detect(model, list(WEIGHT_DETECTORS), tasks=list(spec.sequences), progress=False).to_frame()])
        for name, roles in targets.items():
            part = frame[frame["detector"] == name].sort_values("score", ascending=False).reset_index(drop=True)
            is_planted = pd.Series(False, index=part.index)
            for role in roles:
                is_planted |= (part["layer"] == placements[role][0]) & (part["head"] == placements[role][1])
            rows.append({
                "seed": seed, "shape": f"{n_layers}x{n_heads} dh{d_head} V{d_vocab} ctx{n_ctx}",
                "detector": name, "rank": int(part.index[is_planted].max()) + 1 - (len(roles) - 1),
                "planted": float(part.loc[is_planted, "score"].min()), "best_other": float(part.loc[~is_planted, "score"].max()),
            })
    out = pd.DataFrame(rows)
    out["margin"] = out["planted"] - out["best_other"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--backend", default="bridge", choices=["bridge", "hooked"])
    parser.add_argument("--weights", action="store_true", help="also plant and score the weight-read heads")
    args = parser.parse_args()
    table = run(args.seeds, args.backend, args.weights)
    with pd.option_context("display.width", 160, "display.max_rows", 500, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print()
        summary = table.groupby("detector").agg(
            recovered=("rank", lambda r: f"{(r == 1).sum()}/{len(r)}"),
            min_planted=("planted", "min"), max_other=("best_other", "max"), min_margin=("margin", "min"),
        )
        print(summary.to_string())


if __name__ == "__main__":
    main()
