"""Benchmark: atlases of models that need device maps and bfloat16, against the memory plan.

What it measures
----------------
Two model shapes with random weights: **GPT-2-small** (12 layers x 12 heads, d_model 768,
n_ctx 1024, vocabulary 50257) and **1B** (16 layers x 32 heads, d_model 2048, d_mlp 8192,
n_ctx 2048, vocabulary 50304; 1.0e9 parameters).

* Always: ``hz.memory_plan`` of each shape on a ``meta``-device ``TransformerBridge`` (no
  weights are allocated), in bfloat16, printed per detector.
* On CUDA (when ``torch.cuda.is_available()``): each shape is saved as a Hugging Face GPT-2
  folder (random weights, the vendored GPT-2 tokenizer), loaded with
  ``hz.load_model(path, device_map="auto", dtype="bfloat16")`` (split across every visible GPU),
  and ``hz.build_atlas`` runs per detector group (pattern and weight detectors: the ones that
  need no tokenizer-specific task; examples, importance and literature off), recording wall
  time and ``torch.cuda.max_memory_allocated`` over all devices minus the weights' memory, beside
  the plan's peak for the group.
* On CPU: the GPT-2-small shape only, float32, a few pattern detectors at batch 1 and a short
  context: the largest tensor the runner's pattern hook receives (elements) against the plan's
  ``largest_elements``, and the wall time.

Run
---
::

    python benchmarks/bench_large.py            # CPU part (and the GPU part when CUDA exists)
    python benchmarks/bench_large.py --cpu      # CPU part only
    python benchmarks/bench_large.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the vendored GPT-2 tokenizer (offline)

SHAPES: dict[str, dict[str, int]] = {
    "gpt2-small": dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_vocab=50257, d_mlp=3072),
    "1b": dict(n_layers=16, d_model=2048, n_ctx=2048, d_head=64, n_heads=32, d_vocab=50304, d_mlp=8192),
}
GROUPS = {
    "pattern": ["previous_token", "duplicate_token", "induction", "first_token", "current_token"],
    "weights": ["copying", "copy_suppression", "negative_copying"],
}
CPU_DETECTORS = ["previous_token", "induction"]


def meta_model(dims: dict[str, int]) -> Any:
    """A ``TransformerBridge`` of this shape on the meta device: config only, no memory."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    with torch.device("meta"):
        return TransformerBridge.boot_native(  # pyright: ignore[reportAttributeAccessIssue]
            TransformerBridgeConfig(**dims, act_fn="gelu_new", normalization_type="LN"))


def plan_on_meta(batch: int, n_ctx: int | None) -> dict[str, Any]:
    import headzoo as hz

    out = {}
    for name, dims in SHAPES.items():
        model = meta_model(dims)
        n_params = sum(p.numel() for p in model.parameters())
        plan = hz.memory_plan(model, [d for g in GROUPS.values() for d in g], batch_size=batch, n_ctx=n_ctx, dtype="bfloat16")
        print(f"\n== memory plan, {name} ({n_params / 1e9:.2f}e9 parameters, bfloat16 weights "
              f"{2 * n_params / 2**30:.2f} GiB), batch {batch}, n_ctx {n_ctx or dims['n_ctx']} (meta device)")
        print(plan.assign(peak_MiB=(plan["peak_bytes"] / 2**20).round(1))[["detector", "kind", "peak_MiB", "chunk"]].to_string(index=False))
        out[name] = {"n_params": n_params, "plan": plan.to_dict("records")}
    return out


def cpu_run(half_len: int) -> list[dict[str, Any]]:
    """GPT-2-small shape on CPU: the pattern the hook sees against the plan, per detector."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    import headzoo as hz
    from headzoo._memory import largest_elements
    from headzoo._models import model_info, pattern_hook
    from headzoo._probes import RepeatedTokens

    torch.manual_seed(0)
    model = TransformerBridge.boot_native(  # pyright: ignore[reportAttributeAccessIssue]
        TransformerBridgeConfig(**SHAPES["gpt2-small"], act_fn="gelu_new", normalization_type="LN"))
    info = model_info(model)
    _, bos, _ = RepeatedTokens(half_len=half_len).resolve(info)
    n_ctx = 2 * half_len + int(bos)
    rows = []
    print(f"\n== CPU run, gpt2-small shape, float32, batch 1, n_ctx {n_ctx}")
    for det in CPU_DETECTORS:
        seen: list[int] = []
        handles = [model.hook_dict[pattern_hook(i)].register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.numel()))
                   for i in range(info.n_layers)]
        try:
            start = time.perf_counter()
            hz.detect(model, det, n_prompts=1, batch_size=1, half_len=half_len, progress=False)
            seconds = time.perf_counter() - start
        finally:
            for h in handles:
                h.remove()
        planned = largest_elements(info, det, batch=1, n_ctx=n_ctx)
        rows.append({"detector": det, "measured_elements": max(seen), "planned_elements": planned, "seconds": round(seconds, 2)})
        print(f"{det:16s} largest hooked tensor {max(seen):>10,d} elements, planned {planned:>10,d}, {seconds:.2f} s")
    return rows


def gpu_run(name: str, folder: str) -> list[dict[str, Any]]:
    """``name``'s shape as a HF folder, loaded with ``device_map='auto'`` in bfloat16; an atlas
    per detector group with time and peak CUDA memory beyond the weights."""
    from _gpt2 import gpt2_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    import headzoo as hz

    dims = SHAPES[name]
    config = GPT2Config(n_layer=dims["n_layers"], n_head=dims["n_heads"], n_embd=dims["d_model"],
                        n_positions=dims["n_ctx"], vocab_size=dims["d_vocab"], n_inner=dims["d_mlp"])
    path = os.path.join(folder, name)
    GPT2LMHeadModel(config).to(torch.bfloat16).save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    model = hz.load_model(path, device_map="auto", dtype="bfloat16")
    devices = range(torch.cuda.device_count())
    weights = sum(torch.cuda.memory_allocated(d) for d in devices)
    rows = []
    print(f"\n== GPU run, {name}, bfloat16, device_map='auto' over {len(devices)} GPU(s), weights {weights / 2**30:.2f} GiB")
    for group, detectors in GROUPS.items():
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        torch.cuda.synchronize()
        start = time.perf_counter()
        hz.build_atlas(model, detectors, examples=False, importance=False, literature=False, progress=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = sum(torch.cuda.max_memory_allocated(d) for d in devices) - weights
        planned = int(hz.memory_plan(model, detectors)["peak_bytes"].max())
        rows.append({"model": name, "group": group, "seconds": round(seconds, 2), "peak_bytes": int(peak), "planned_bytes": planned})
        print(f"{group:8s} {seconds:8.2f} s   peak beyond weights {peak / 2**20:9.1f} MiB   planned {planned / 2**20:9.1f} MiB")
    del model
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU part only, even when CUDA is available")
    parser.add_argument("--half-len", type=int, default=32, help="CPU run: tokens per half of the repeated prompt")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    result["plan"] = plan_on_meta(batch=1, n_ctx=None)
    result["cpu"] = cpu_run(args.half_len)
    if torch.cuda.is_available() and not args.cpu:
        with tempfile.TemporaryDirectory() as folder:
            result["gpu"] = [row for name in SHAPES for row in gpu_run(name, folder)]
    else:
        print("\nno CUDA device: the GPU figures (time and peak memory of an atlas in bfloat16 with "
              "device_map='auto') need a GPU; run this script there.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
