"""Benchmark: headzoo's head patching against TransformerLens', on two model shapes and two
kinds of corruption.

Models (randomly initialised ``TransformerBridge.boot_native`` models, built offline):

* the GPT-2-small shape: 12 layers x 12 heads, d_model 768, vocabulary 50257;
* a 6-layer, 8-head, 256-wide model with the same vocabulary.

Corruptions of clean batches of 8 prompts of 64 random tokens:

* ``random flip``: a quarter of all positions get a new token (so clean and corrupted differ
  from position 0 or 1 on: nothing is shared);
* ``IOI-like``: like the indirect-object task's name swap, two positions get a new token, one
  in the middle (the repeated name) and the last one (the token the prediction is read after):
  clean and corrupted share their first half.

The metric is a logit difference at the last position. For each model and corruption it times,
in one process and one after the other:

* TransformerLens: ``run_with_cache(clean)`` then
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)``;
* headzoo: ``hz.patching.patch_heads(model, clean, corrupted, metric)``, defaults (it restarts
  each patched run at the patched layer, unembeds only the position the metric reads, and on
  the IOI-like corruption runs only the positions after the shared prefix);

and, on the random flip, also headzoo with ``positions=None`` (logits at every position, as
TransformerLens computes them) and ``hz.patching.attribution_patch_heads``. It prints the times
(best of ``--repeats``), the speed-ups over TransformerLens (target: >= 3x), the peak extra
memory of each run (peak RSS minus RSS before it) and the largest difference from
TransformerLens' ``[layer, head]`` result, which must be below 1e-4 (asserted).

    python benchmarks/bench_patching.py             # both shapes, batch 8 x 64 (minutes on 2 cores)
    python benchmarks/bench_patching.py --quick     # both shapes, batch 2 x 64
    python benchmarks/bench_patching.py --small     # a 2-layer smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL, Shape, _peak_kib, _reset_peak, _rss_kib  # noqa: E402

MID = Shape(n_layers=6, n_heads=8, d_model=256, d_head=32, d_mlp=1024, n_ctx=1024, d_vocab=50257)

TOLERANCE = 1e-4


def build(shape: Shape) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_ctx=shape.n_ctx, d_head=shape.d_head,
        n_heads=shape.n_heads, d_vocab=shape.d_vocab, d_mlp=shape.d_mlp, act_fn="gelu",
        normalization_type="LN", seed=0,
    )
    return TransformerBridge.boot_native(cfg).eval()


def corruptions(clean: Any, vocab: int, seed: int = 0) -> dict[str, Any]:
    """``{name: corrupted}`` for the two corruptions described in the module docstring."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batch, seq = clean.shape
    flipped = clean.clone()
    flip = torch.rand(batch, seq, generator=g) < 0.25
    flipped[flip] = torch.randint(0, vocab, (int(flip.sum()),), generator=g)
    ioi = clean.clone()
    for pos in (seq // 2, seq - 1):
        ioi[:, pos] = (clean[:, pos] + torch.randint(1, vocab, (batch,), generator=g)) % vocab
    return {"random flip": flipped, "IOI-like": ioi}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """``(result, best seconds, peak extra MiB)`` of ``repeats`` calls; the peak is NaN when
    the kernel's peak-RSS mark could not be reset (the fallback, the process's lifetime peak,
    would report the model build's transient memory instead)."""
    import gc

    best, peak = float("inf"), 0.0
    result = None
    for _ in range(repeats):
        gc.collect()
        reset = any(_reset_peak() for _ in range(5))
        before = _rss_kib()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, (_peak_kib(reset) - before) / 1024) if reset else float("nan")
    return result, best, peak


def bench(shape: Shape, name: str, batch: int, seq: int, repeats: int, extras: bool, only: str = "both") -> list[dict[str, Any]]:
    import torch
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    import headzoo as hz

    model = build(shape)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, shape.d_vocab, (batch, seq), generator=g)
    # a logit difference at the last position between two fixed tokens per prompt (random
    # weights have no task; what matters is that the metric depends on the patched inputs)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    with torch.no_grad():
        model(clean[:1, :4])  # warm-up
    rows = []
    for corruption, corrupted in corruptions(clean, shape.d_vocab).items():
        if only not in ("both", corruption):
            continue
        def tl(corrupted: Any = corrupted) -> Any:
            with torch.no_grad():
                _, cache = model.run_with_cache(clean)
                return get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric).double()

        def headzoo(corrupted: Any = corrupted, **options: Any) -> Any:
            return hz.patching.patch_heads(model, clean, corrupted, metric, progress=False, **options)

        runs = [("TransformerLens get_act_patch_attn_head_out_all_pos", tl), ("headzoo patch_heads", headzoo)]
        if extras and corruption == "random flip":
            runs += [("headzoo patch_heads(positions=None)", lambda: headzoo(positions=None)),
                     ("headzoo attribution_patch_heads", lambda c=corrupted: hz.patching.attribution_patch_heads(model, clean, c, metric))]
        reference = exact = None
        for label, fn in runs:
            result, seconds, peak = timed(fn, repeats)
            row: dict[str, Any] = {"model": name, "corruption": corruption, "run": label, "time_s": seconds, "peak_mib": peak}
            if reference is None:
                reference = result
            else:
                matrix = torch.tensor(result.matrix().to_numpy()).double()
                row["max_diff"] = (matrix - reference).abs().max().item()
                row["engine"] = result.meta.get("engine", {})
                if "attribution" in label:
                    assert exact is not None
                    rank = lambda t: t.argsort().argsort().double()  # noqa: E731
                    row["spearman"] = torch.corrcoef(torch.stack([rank(exact.flatten()), rank(matrix.flatten())]))[0, 1].item()
                else:
                    assert row["max_diff"] < TOLERANCE, (label, corruption, row["max_diff"])
                    exact = matrix if exact is None else exact
                row["matrix"] = matrix
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer smoke run")
    parser.add_argument("--quick", action="store_true", help="batch 2 instead of 8, no extra rows")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs per side")
    parser.add_argument("--shape", choices=["gpt2-small", "6x8x256", "both"], default="both")
    parser.add_argument("--corruption", choices=["random flip", "IOI-like", "both"], default="both")
    args = parser.parse_args()
    batch = args.batch or (2 if args.quick else 8)
    if args.small:
        shapes = [("2-layer smoke model", SMALL)]
    else:
        shapes = [s for s in [("GPT-2-small shape (12 x 12, d 768)", GPT2_SMALL), ("6 x 8, d 256", MID)]
                  if args.shape == "both" or (s[1] is GPT2_SMALL) == (args.shape == "gpt2-small")]
    import torch

    print(f"batch {batch} x {args.seq} tokens, vocabulary 50257 (smoke: {SMALL.d_vocab}); {torch.get_num_threads()} threads; "
          f"best of {args.repeats}")
    for name, shape in shapes:
        rows = bench(shape, name, batch, args.seq, args.repeats, extras=not args.quick, only=args.corruption)
        print(f"\n{name}: {shape.n_layers} layers x {shape.n_heads} heads, d_model {shape.d_model}")
        tl_time: dict[str, float] = {}
        for row in rows:
            if "max_diff" not in row:
                tl_time[row["corruption"]] = row["time_s"]
                extra = ""
            else:
                extra = f"  speed-up {tl_time[row['corruption']] / row['time_s']:5.2f}x"
                if "spearman" in row:
                    extra += f"  Spearman with exact {row['spearman']:.3f}"
                else:
                    extra += f" (target >= 3x)  max |difference| {row['max_diff']:.1e}"
                engine = row["engine"]
                if engine.get("prefix_reused"):
                    extra += f"  prefix reused: {engine['prefix_reused']} positions"
            print(f"  {row['corruption']:<12} {row['run']:<53}{row['time_s']:8.2f} s  peak {row['peak_mib']:7.1f} MiB{extra}")


if __name__ == "__main__":
    main()
