"""Benchmark: prompts of different lengths, batched with right padding vs one prompt at a time.

``hz.detect(model, tokens=prompts)`` with prompts of many lengths used to group prompts by exact
length, so a corpus of distinct lengths ran prompt by prompt. The execution kernel now sorts the
prompts by length, right-pads each batch (exact under causal attention: a real query never sees
a later pad, and positions are unchanged) and crops the pads away before any detector sees a
pattern. This benchmark times both on the same prompts and the same model, in one process, and
prints the ratio and the largest score difference (expected 0 up to float rounding). It does the
same for ``hz.patching.patch_heads`` on prompt pairs of different lengths.

Run::

    python benchmarks/bench_ragged.py            # 4-layer model, 48 prompts of 24..192 tokens
    python benchmarks/bench_ragged.py --small    # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_detect import SMALL, Shape, _build_model  # noqa: E402

MEDIUM = Shape(n_layers=4, n_heads=8, d_model=256, d_head=32, d_mlp=1024, n_ctx=256, d_vocab=5002)


def _prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    out = []
    for length in lengths:
        half = torch.randint(2, vocab, (length // 2,), generator=g)
        out.append(torch.cat([half, half, torch.randint(2, vocab, (length % 2,), generator=g)]))
    return out


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()  # results come back to the CPU (pandas), so the GPU has finished here
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny 2-layer model, few prompts")
    p.add_argument("--n-prompts", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (cuda: GPT-2-small shape, longer prompts)")
    args = p.parse_args(argv)
    import headzoo as hz

    from bench_detect import GPT2_SMALL

    shape = SMALL if args.small else GPT2_SMALL if args.device != "cpu" else MEDIUM
    n = 12 if args.small else args.n_prompts
    model = _build_model(shape).to(args.device)
    longest = 512 if args.device != "cpu" else 192
    prompts = _prompts(n, 24, min(longest, shape.n_ctx), shape.d_vocab, seed=0)
    names = ["previous_token", "duplicate_token", "induction"]
    hz.detect(model, names, tokens=prompts[:2])  # warm-up: lazy imports, first-call costs

    t_pad, padded = _best(lambda: hz.detect(model, names, tokens=prompts, batch_size=args.batch_size, progress=False), args.repeats)
    t_one, single = _best(lambda: hz.detect(model, names, tokens=prompts, batch_size=1, progress=False), args.repeats)
    a = padded.to_frame().sort_values(["detector", "layer", "head"])["score"].to_numpy()
    b = single.to_frame().sort_values(["detector", "layer", "head"])["score"].to_numpy()
    print(f"model {shape}, {n} prompts of {min(map(len, prompts))}..{max(map(len, prompts))} tokens")
    print(f"detect  padded batches of {args.batch_size}: {t_pad:7.2f} s   one by one: {t_one:7.2f} s   "
          f"speed-up {t_one / t_pad:.2f}x   max |diff| {abs(a - b).max():.2e}")

    pairs = prompts[: max(4, n // 6)]
    corrupted = [torch.cat([c[:-1], torch.tensor([2])]) for c in pairs]
    metric = hz.patching.logit_diff(torch.tensor([int(c[0]) for c in pairs]), 2, per_example=True)
    t_pp, together = _best(lambda: hz.patching.patch_heads(model, pairs, corrupted, metric, per_example=True, progress=False), 1)

    def one_by_one() -> list:
        out = []
        for i, (c, k) in enumerate(zip(pairs, corrupted)):
            m = hz.patching.logit_diff(torch.tensor([int(c[0])]), 2, per_example=True)
            out.append(hz.patching.patch_heads(model, c[None], k[None], m, per_example=True, progress=False))
        return out

    t_p1, singles = _best(one_by_one, 1)
    ex = together.per_example()
    diff = max(abs(ex[ex["example"] == i]["effect"].to_numpy() - s.per_example()["effect"].to_numpy()).max()
               for i, s in enumerate(singles))
    print(f"patch_heads  {len(pairs)} ragged pairs batched: {t_pp:7.2f} s   pair by pair: {t_p1:7.2f} s   "
          f"speed-up {t_p1 / t_pp:.2f}x   max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
