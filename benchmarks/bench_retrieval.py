"""Benchmark: the retrieval detector's decoding beside plain key-value-cached decoding.

What it measures
----------------
On a randomly initialised GPT-2-small-shaped Hugging Face model (12 layers, 12 heads, d_model
768, n_ctx 1024, vocabulary 50257; built offline with a word-level tokenizer and loaded through
``TransformerBridge.boot_transformers``, so decoding uses the Hugging Face key-value cache):

* ``step``: one forward of one token with the key-value cache (a ``DynamicCache`` passed as
  ``past_key_values``), after a prompt of ``--step-context`` tokens; the mean of ``--steps``
  steps, plain and with headzoo's per-head argmax hooks on every layer;
* ``detector``: the retrieval detector's whole work on the default probe
  (``hz.NeedleHaystack()``: lengths 256, 512 and 1021, five depths, two needles each, four
  decoded tokens): building the trials, decoding them with the cache, the per-head copy scores.
  A random model retrieves no needle, so ``hz.detect`` itself would refuse it; the work timed
  is the same. Reported per decoded token, and as a multiple of one cached step;
* peak extra memory of the detector (peak RSS minus RSS before it) beside one plain forward of
  one batch of the longest prompts, and what storing every layer's full attention patterns for
  one batch, or for the whole probe, would take.

Run
---
::

    python benchmarks/bench_retrieval.py            # GPT-2-small shape (about 2 minutes on 2 cores)
    python benchmarks/bench_retrieval.py --small    # a tiny model, a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL, Shape, _peak_kib, _reset_peak, _rss_kib  # noqa: E402


def _build(shape: Shape, directory: str) -> Any:
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    from headzoo.testing import word_tokenizer

    os.environ["HF_HUB_OFFLINE"] = "1"
    config = GPT2Config(
        vocab_size=shape.d_vocab, n_positions=shape.n_ctx, n_embd=shape.d_model, n_layer=shape.n_layers,
        n_head=shape.n_heads, n_inner=shape.d_mlp, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    word_tokenizer([f"w{i}" for i in range(shape.d_vocab - 2)], directory=os.path.join(directory, "tok")).save_pretrained(directory)
    return TransformerBridge.boot_transformers(directory, device="cpu")


def _step_times(model: Any, context: int, steps: int) -> tuple[float, float]:
    """Mean seconds of one cached single-token forward: plain, and with the argmax hooks."""
    import torch

    import headzoo as hz
    from headzoo._decode import _step
    from headzoo._forward import open_kv_cache

    info = hz.model_info(model)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, info.d_vocab, (1, context), generator=g)
    last = torch.zeros(1, dtype=torch.long)

    out = []
    for record in (False, True):
        with torch.no_grad():
            kv, why = open_kv_cache(model, 1, torch.device("cpu"))
            assert kv is not None, why
            kv.forward(model, prompt)()
            kv.advance(prompt.shape[1])
            token = prompt[:, -1:]
            best = float("inf")
            for _ in range(3):  # best of three rounds, each the mean of `steps` steps
                start = time.perf_counter()
                for _ in range(steps):
                    if record:
                        _step(model, info, token, last, True, (), forward=kv.forward(model, token))
                    else:
                        kv.forward(model, token)()
                best = min(best, (time.perf_counter() - start) / steps)
        out.append(best)
    return out[0], out[1]


def _forward_peak_mib(model: Any, batch: int, length: int) -> float:
    """Peak extra memory of one plain forward over ``[batch, length]`` tokens."""
    import torch

    tokens = torch.randint(2, model.cfg.d_vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    before = _rss_kib()
    reset = _reset_peak()
    with torch.no_grad():
        model(tokens)
    return (_peak_kib(reset) - before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny model (smoke run)")
    p.add_argument("--steps", type=int, default=20, help="cached steps timed per round")
    p.add_argument("--step-context", type=int, default=512, help="prompt length before the timed steps")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()

    import torch

    import headzoo as hz

    torch.set_grad_enabled(False)
    shape = SMALL if args.small else GPT2_SMALL
    with tempfile.TemporaryDirectory() as directory:
        model = _build(shape, directory)
        info = hz.model_info(model)
        plain, hooked = _step_times(model, min(args.step_context, info.n_ctx // 2), args.steps)
        trials = hz.NeedleHaystack().build(model)
        forward_mib = _forward_peak_mib(model, args.batch_size, max(len(t) for t in trials.tokens))

        before = _rss_kib()
        reset = _reset_peak()
        start = time.perf_counter()
        trials = hz.NeedleHaystack().build(model)
        run = hz.decode_needles(model, trials, batch_size=args.batch_size, progress=False)
        run.copy_scores()
        elapsed = time.perf_counter() - start
        peak_mib = (_peak_kib(reset) - before) / 1024

    lengths = trials.meta["lengths"]
    decoded = len(trials) * trials.n_decode
    pattern_bytes = [info.n_layers * info.n_heads * n * n * 4 for n in (len(t) for t in trials.tokens)]
    batch_mib = max(pattern_bytes) * args.batch_size / 2**20
    all_mib = sum(pattern_bytes) / 2**20
    kept_kib = run.keys.numel() * run.keys.element_size() / 1024
    print(f"model: {shape} ({type(model).__name__}, {run.mode})")
    print(f"probe: {len(trials)} trials, lengths {lengths}, {trials.n_decode} decoded tokens each "
          f"({decoded} in all), batch size {args.batch_size}")
    print()
    print("| run | time | x one cached step |")
    print("| --- | --- | --- |")
    print(f"| one cached step, plain (context {min(args.step_context, info.n_ctx // 2)}) | {plain * 1e3:.1f} ms | 1.00 |")
    print(f"| one cached step, with the argmax hooks | {hooked * 1e3:.1f} ms | {hooked / plain:.2f} |")
    print(f"| retrieval detector, per decoded token (prompts included) | {elapsed / decoded * 1e3:.1f} ms | "
          f"{elapsed / decoded / plain:.1f} |")
    print(f"| retrieval detector, whole probe | {elapsed:.2f} s | |")
    print()
    print(f"peak extra memory of the detector: {peak_mib:.0f} MiB; kept per-head argmax keys: {kept_kib:.1f} KiB")
    print(f"one plain forward of a batch of {args.batch_size} at length {max(lengths)} (all logits): "
          f"{forward_mib:.0f} MiB peak extra")
    print(f"full float32 patterns of every layer: {batch_mib:.0f} MiB for one batch of {args.batch_size} at "
          f"length {max(lengths)}, {all_mib:.0f} MiB for the whole probe "
          f"(the detector's peak is {peak_mib / batch_mib:.0%} of one batch's patterns, {peak_mib / all_mib:.0%} of the probe's)")


if __name__ == "__main__":
    main()
