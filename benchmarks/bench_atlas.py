"""Benchmark: the whole head atlas of a GPT-2-small-shaped model, beside the forward passes it needs.

What it measures
----------------
On a randomly initialised GPT-2-small-shaped Hugging Face model (12 x 12 heads, d_model 768,
n_ctx 1024, vocabulary 50257; built offline, loaded with ``TransformerBridge.boot_transformers``):

* ``atlas``: ``hz.build_atlas(model)`` with every registered detector, then ``atlas.write(dir)``;
  total wall time and the size of the folder on disk. A random model retrieves no needle, so
  the retrieval detector decodes every trial and is then skipped (reported in the metadata);
* ``forward passes``: plain ``model(tokens)`` calls over the same inputs the atlas must read at
  least once: the repeated-token probe (16 x 101 tokens), one prefill of every needle prompt
  (30 prompts, 255-1021 tokens) and the example prompt (41 tokens).

The difference is the work beyond reading the inputs once: decoding four tokens per needle,
the weight detectors' vocabulary passes, the OV summaries for the head cards and writing.

Run
---
::

    python benchmarks/bench_atlas.py            # GPT-2-small shape (a few minutes on 2 cores)
    python benchmarks/bench_atlas.py --small    # a tiny model, a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL  # noqa: E402
from bench_retrieval import _build  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny model (smoke run)")
    args = p.parse_args()

    import torch

    import headzoo as hz

    torch.set_grad_enabled(False)
    shape = SMALL if args.small else GPT2_SMALL
    with tempfile.TemporaryDirectory() as directory:
        model = _build(shape, directory)
        info = hz.model_info(model)
        # the inputs the atlas reads: probe, needle prompts, example
        probe = torch.cat(list(hz.RepeatedTokens().batches(info)))
        trials = hz.NeedleHaystack().build(model)
        start = time.perf_counter()
        model(probe)
        for i in range(0, len(trials), 4):
            group = [t for t in trials.tokens[i : i + 4]]
            for t in group:
                model(t[None])
        model(probe[:1, :41])
        forwards = time.perf_counter() - start

        out = Path(directory) / "atlas"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atlas = hz.build_atlas(model, progress=False)
        built = time.perf_counter() - start
        atlas.write(out)
        total = time.perf_counter() - start
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        assets = sum(f.stat().st_size for f in (out / "assets").iterdir())

    print(f"model: {shape} ({type(model).__name__})")
    print(f"atlas: {atlas!r}; skipped: {sorted(atlas.meta.get('skipped_detectors', {}))}")
    print()
    print("| run | time (s) | x forward passes |")
    print("| --- | --- | --- |")
    print(f"| forward passes over the atlas's inputs (probe, {len(trials)} needle prompts, example) | {forwards:.1f} | 1.00 |")
    print(f"| hz.build_atlas (all detectors, example, OV summaries) | {built:.1f} | {built / forwards:.2f} |")
    print(f"| hz.build_atlas + write | {total:.1f} | {total / forwards:.2f} |")
    print()
    print(f"size on disk: {size / 2**20:.2f} MiB ({assets / 2**20:.2f} MiB of it plotly.js and circuitsvis, "
          f"{(size - assets) / 2**20:.2f} MiB page and data)")


if __name__ == "__main__":
    main()
