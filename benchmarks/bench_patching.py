"""Benchmark: headzoo's head patching against TransformerLens' on a GPT-2-small-shaped model.

On a randomly initialised GPT-2-small-shaped ``TransformerBridge`` (12 layers x 12 heads,
d_model 768, vocabulary 50257; built offline), with clean and corrupted batches of 8 prompts of
64 tokens (the corrupted ones differ in a quarter of their positions) and a logit difference
at the last position, it times, in one process and one after the other:

* TransformerLens: ``run_with_cache(clean)`` then
  ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)``;
* headzoo: ``hz.patching.patch_heads(model, clean, corrupted, metric)``, defaults (it finds
  that the metric reads only the last position and unembeds only that one);
* headzoo with ``positions=None``: logits at every position, as TransformerLens computes them
  (the layer reuse and batching alone);

* headzoo ``hz.patching.attribution_patch_heads``: the gradient estimate of all 144 patches
  from one backward pass;

and prints the times, the ratios, the largest difference from TransformerLens' [12, 12]
result, and attribution's speed-up over exact patching with its rank correlation to it.
The target (headzoo at least 2x faster, identical numbers) is reported, not asserted.

    python benchmarks/bench_patching.py            # GPT-2-small shape
    python benchmarks/bench_patching.py --small    # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs per side")
    args = parser.parse_args()

    import torch
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    import headzoo as hz

    shape = SMALL if args.small else GPT2_SMALL
    cfg = TransformerBridgeConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_ctx=shape.n_ctx, d_head=shape.d_head,
        n_heads=shape.n_heads, d_vocab=shape.d_vocab, d_mlp=shape.d_mlp, act_fn="gelu",
        normalization_type="LN", seed=0,
    )
    model = TransformerBridge.boot_native(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, shape.d_vocab, (args.batch, args.seq), generator=g)
    corrupted = clean.clone()
    flip = torch.rand(args.batch, args.seq, generator=g) < 0.25
    corrupted[flip] = torch.randint(0, shape.d_vocab, (int(flip.sum()),), generator=g)
    # a logit difference at the last position between two fixed tokens per prompt (random
    # weights have no task; what matters is that the metric depends on the patched inputs)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])

    def tl() -> torch.Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(clean)
            return get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)

    def headzoo() -> torch.Tensor:
        effects = hz.patching.patch_heads(model, clean, corrupted, metric, progress=False)
        return torch.tensor(effects.matrix().to_numpy())

    def headzoo_last() -> torch.Tensor:
        effects = hz.patching.patch_heads(model, clean, corrupted, metric, positions=None, progress=False)
        return torch.tensor(effects.matrix().to_numpy())

    with torch.no_grad():
        model(clean[:1, :4])  # warm-up
    times = {}
    results = {}
    def attribution() -> torch.Tensor:
        effects = hz.patching.attribution_patch_heads(model, clean, corrupted, metric)
        return torch.tensor(effects.matrix().to_numpy())

    for name, fn in [("transformer_lens", tl), ("headzoo", headzoo), ("headzoo_last", headzoo_last), ("attribution", attribution)]:
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = fn()
            best = min(best, time.perf_counter() - start)
        times[name] = best
    ref = results["transformer_lens"].double().cpu()
    print(f"model: {shape.n_layers} layers x {shape.n_heads} heads, vocabulary {shape.d_vocab}; batch {args.batch} x {args.seq} tokens")
    print(f"TransformerLens get_act_patch_attn_head_out_all_pos: {times['transformer_lens']:.2f} s")
    for name, label in [("headzoo", "patch_heads"), ("headzoo_last", "patch_heads(positions=None)")]:
        diff = (results[name].double() - ref).abs().max().item()
        print(f"headzoo {label:<27}{times[name]:7.2f} s  speed-up {times['transformer_lens'] / times[name]:.2f}x "
              f"(target >= 2x)  max |difference| {diff:.2e}")
    exact, approx = results["headzoo"].flatten(), results["attribution"].flatten()
    rank = lambda t: t.argsort().argsort().double()  # noqa: E731
    rho = torch.corrcoef(torch.stack([rank(exact), rank(approx)]))[0, 1].item()
    print(f"headzoo attribution_patch_heads     {times['attribution']:7.2f} s  "
          f"{times['headzoo'] / times['attribution']:.1f}x faster than headzoo's exact patching, "
          f"{times['transformer_lens'] / times['attribution']:.1f}x than TransformerLens' (target >= 30x); "
          f"Spearman rank correlation with exact {rho:.3f}")


if __name__ == "__main__":
    main()
