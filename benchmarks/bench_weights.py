"""Benchmark: the weight-based detectors on a GPT-2-small-shaped model, beside one forward pass.

What it measures
----------------
On a randomly initialised GPT-2-small-shaped ``TransformerBridge`` (12 layers, 12 heads,
d_model 768, d_head 64, d_mlp 3072, n_ctx 1024, vocabulary 50257, LayerNorm; built offline
with a word-level tokenizer whose first words are the ordinal lists, so the built-in successor
tasks can be written in it), each of these runs in a fresh subprocess:

* ``forward``: one forward pass of ``model(tokens)`` over headzoo's default probe
  (``hz.RepeatedTokens()``: 16 prompts of ``[BOS] r r``, 101 tokens each), as one batch;
* ``successor``: ``hz.detect(model, "successor")`` (built-in ordinal tasks);
* ``copy_suppression``: ``hz.detect(model, "copy_suppression")`` (512 sampled tokens, every
  OV row ranked over the whole vocabulary);
* ``weights_all``: the four weight detectors in one call (``successor``, ``copy_suppression``,
  ``copying``, ``negative_copying``), which share the sample and the vocabulary pass.

Reported per run: wall time of the call (after an untimed warm-up on a tiny input; best of
``--repeats``) and peak extra memory (peak RSS during the call minus RSS just before it, with
the kernel's peak mark reset first; see ``bench_detect.py``). The memory a full float32
``vocab x vocab`` matrix would need (50257^2 * 4 bytes = 10.1 GB) is printed beside it.

Run
---
::

    python benchmarks/bench_weights.py              # GPT-2-small shape
    python benchmarks/bench_weights.py --small      # a tiny model, a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL, Shape, _peak_kib, _reset_peak, _rss_kib  # noqa: E402

RUNS = ["forward", "successor", "copy_suppression", "weights_all"]
WEIGHT_DETECTORS = ["successor", "copy_suppression", "copying", "negative_copying"]


def _build(shape: Shape) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    import headzoo as hz
    from headzoo.testing import word_tokenizer

    words: list[str] = []
    for items, _ in hz.ORDINAL_LISTS.values():
        words += [w for w in items if w not in words]
    words += [f"w{i}" for i in range(shape.d_vocab - 2 - len(words))]
    cfg = TransformerBridgeConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_ctx=shape.n_ctx, d_head=shape.d_head,
        n_heads=shape.n_heads, d_vocab=shape.d_vocab, d_mlp=shape.d_mlp, act_fn="gelu",
        normalization_type="LN", seed=0,
    )
    return TransformerBridge.boot_native(cfg, tokenizer=word_tokenizer(words)).eval()


def worker(args: argparse.Namespace) -> None:
    import torch

    import headzoo as hz

    model = _build(SMALL if args.small else GPT2_SMALL)
    info = hz.model_info(model)
    tokens = torch.cat(list(hz.RepeatedTokens().batches(info)))
    if args.worker == "forward":
        def call() -> None:
            with torch.no_grad():
                model(tokens)
        with torch.no_grad():
            model(tokens[:1, :8])  # warm-up
    else:
        names = WEIGHT_DETECTORS if args.worker == "weights_all" else [args.worker]

        def call() -> None:
            hz.detect(model, names, progress=False)
        hz.detect(model, names, n_tokens=4, progress=False)  # warm-up: 4 sampled tokens
    gc.collect()
    best = float("inf")
    peak_extra = 0
    for _ in range(args.repeats):
        rss0 = _rss_kib()
        ok = _reset_peak()
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        peak_extra = max(peak_extra, _peak_kib(ok) - rss0)
        gc.collect()
    print(json.dumps({"run": args.worker, "seconds": best, "peak_extra_mib": peak_extra / 1024,
                      "tokens": list(tokens.shape), "peak_exact": ok}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny model (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs")
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shape = SMALL if args.small else GPT2_SMALL
    results = {}
    for run in RUNS:
        cmd = [sys.executable, __file__, "--worker", run, "--repeats", str(args.repeats)] + (["--small"] if args.small else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[run] = json.loads(out.stdout.strip().splitlines()[-1])
    full = shape.d_vocab**2 * 4 / 2**20
    print(f"model: {shape.n_layers} layers x {shape.n_heads} heads, d_model {shape.d_model}, vocabulary {shape.d_vocab}")
    print(f"{'run':<18}{'time (s)':>10}{'x forward':>11}{'peak extra (MiB)':>18}")
    fwd = results["forward"]["seconds"]
    for run in RUNS:
        r = results[run]
        print(f"{run:<18}{r['seconds']:>10.2f}{r['seconds'] / fwd:>11.2f}{r['peak_extra_mib']:>18.1f}")
    print(f"forward = one pass over the default probe {results['forward']['tokens']} (batch x tokens)")
    print(f"a float32 vocab x vocab matrix would need {full:,.0f} MiB; the largest weight-detector "
          f"peak is {max(results[r]['peak_extra_mib'] for r in RUNS[1:]) / full:.4f} of that")


if __name__ == "__main__":
    main()
