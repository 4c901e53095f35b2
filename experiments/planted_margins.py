"""How clearly does each pattern detector find its planted head?

For many seeds, build a planted model with random sizes and random head placements, run the
three planted-head detectors on the default probe, and record the planted head's rank, its
score, and the best other head's score. Prints one row per (seed, detector) and a summary.

    python experiments/planted_margins.py --seeds 20
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model, random_placements

DETECTORS = ["previous_token", "duplicate_token", "induction"]


def run(seeds: int, backend: str) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(10_000 + seed)
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
        n_layers, n_heads = pick([2, 3, 4, 6]), pick([2, 4, 8, 12])
        d_head, d_vocab, n_ctx = pick([16, 32, 64]), pick([12, 50, 300, 2000]), pick([16, 32, 128, 256])
        # narrow heads cannot hold a planted duplicate-token head (PlantSpec refuses it)
        placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32)
        spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx,
                         seed=seed, **placements)
        scores = hz.detect(planted_model(spec, backend=backend), DETECTORS, n_prompts=8, progress=False)
        frame = scores.to_frame()
        for name in placements:
            part = frame[frame["detector"] == name].sort_values("score", ascending=False).reset_index(drop=True)
            is_planted = (part["layer"] == placements[name][0]) & (part["head"] == placements[name][1])
            planted_score = float(part.loc[is_planted, "score"].iloc[0])
            rows.append({
                "seed": seed, "shape": f"{n_layers}x{n_heads} dh{d_head} V{d_vocab} ctx{n_ctx}",
                "detector": name, "rank": int(is_planted.idxmax()) + 1,
                "planted": planted_score, "best_other": float(part.loc[~is_planted, "score"].max()),
            })
    out = pd.DataFrame(rows)
    out["margin"] = out["planted"] - out["best_other"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--backend", default="bridge", choices=["bridge", "hooked"])
    args = parser.parse_args()
    table = run(args.seeds, args.backend)
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
