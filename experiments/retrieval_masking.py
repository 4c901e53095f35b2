"""The retrieval-head paper's central figure for any model: needle retrieval accuracy with the
top-K retrieval heads masked, beside K random other heads (Wu et al. 2024, figure 6).

Run::

    python experiments/retrieval_masking.py                      # the bundled default model
    python experiments/retrieval_masking.py --planted            # a planted induction model
    python experiments/retrieval_masking.py gpt2 --k 1 5 10 20   # a hub model (needs the hub or a cache)

Writes ``masking.csv`` (the tidy table), ``masking.html`` (the figure, opens offline) and
``retrieval.parquet`` (the retrieval scores) to ``--out``, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default=None, help="bundled model name or Hugging Face id (default: the bundled default)")
    p.add_argument("--planted", action="store_true", help="a 4 x 3 planted model that retrieves by induction (L2H1)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="numbers of heads to mask (default 1, 2, 4, ... up to half)")
    p.add_argument("--n-random", type=int, default=5, help="random draws of K heads per K")
    p.add_argument("--methods", nargs="+", default=["uniform", "zero"], choices=["uniform", "zero"])
    p.add_argument("--n-needles", type=int, default=2, help="needles per (length, depth) cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/retrieval_masking", help="output folder")
    args = p.parse_args()

    if args.planted:
        spec = PlantSpec(n_layers=4, n_heads=3, d_head=32, d_vocab=200, n_ctx=128,
                         previous_token=(0, 2), duplicate_token=(1, 0), induction=(2, 1), seed=args.seed)
        model = planted_model(spec, tokenizer=True, name="planted-retrieval")
    else:
        model = hz.load_model(args.model)
    probe = hz.NeedleHaystack(n_needles=args.n_needles, seed=args.seed)
    scores = hz.detect(model, "retrieval", n_needles=args.n_needles, seed=args.seed, progress=True)
    curve = hz.retrieval_masking(model, k=args.k, methods=args.methods, n_random=args.n_random, scores=scores,
                                 probe=probe, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve.to_frame().to_csv(out / "masking.csv", index=False)
    curve.plot().write_html(out / "masking.html", include_plotlyjs=True)
    scores.save(out / "retrieval.parquet")
    (out / "meta.json").write_text(json.dumps({k: v for k, v in curve.meta.items() if k != "retrieval_scores"}, indent=1, default=str))
    print(scores.top(5, "retrieval")[["layer", "head", "score"]].to_string(index=False))
    print()
    print(curve.summary().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nwrote {out}/masking.csv, masking.html, retrieval.parquet, meta.json")


if __name__ == "__main__":
    main()
