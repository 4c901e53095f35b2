"""Benchmark: a path-patching sweep against one activation-patching sweep on the same shapes.

Path patching (Wang et al. 2022, IOI; Goldowsky-Dill et al. 2023) asks how much of a sender
head's effect travels through a chosen set of receivers: the sender's clean output is patched
into the corrupted run with every other head frozen, and only the receivers (here three heads'
queries in the last third of the layers) read the changed residual stream. A sweep over every
sender head costs, per sender, one run to the receivers' layer and one from there on, against
one run per head for ``hz.patching.patch_heads``: the target is a path-patching sweep within 3x
of one ``patch_heads`` sweep.

On the models and the IOI-like corruption of ``bench_patching.py`` (clean and corrupted share
their first half; the metric is a logit difference at the last position), it times, one after
the other in one process:

* ``hz.patching.patch_heads(model, clean, corrupted, metric)``;
* ``hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=[...])`` with every
  head that can reach a receiver as a sender;

and prints both times (best of ``--repeats``), their ratio, the peak extra memory of each and
what the engine reused (``meta["engine"]``).

    python benchmarks/bench_path_patching.py            # both shapes, batch 8 x 64
    python benchmarks/bench_path_patching.py --quick    # both shapes, batch 2 x 64
    python benchmarks/bench_path_patching.py --small    # a 2-layer smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_detect import GPT2_SMALL, SMALL, Shape  # noqa: E402
from bench_patching import MID, build, corruptions, timed  # noqa: E402


def receivers(shape: Shape) -> list[tuple[int, int, str]]:
    """Three heads' queries in the last third of the layers."""
    first = shape.n_layers - max(1, shape.n_layers // 3)
    layers = [first + i % (shape.n_layers - first) for i in range(3)]
    return [(layer, (i * 5) % shape.n_heads, "q") for i, layer in enumerate(layers)]


def bench(shape: Shape, name: str, batch: int, seq: int, repeats: int) -> None:
    import torch

    import headzoo as hz

    model = build(shape)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, shape.d_vocab, (batch, seq), generator=g)
    corrupted = corruptions(clean, shape.d_vocab)["IOI-like"]
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    with torch.no_grad():
        model(clean[:1, :4])  # warm-up
    wanted = receivers(shape)
    sweep, sweep_s, sweep_mib = timed(lambda: hz.patching.patch_heads(model, clean, corrupted, metric, progress=False), repeats)
    path, path_s, path_mib = timed(
        lambda: hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=wanted, progress=False), repeats
    )
    n_senders = len(path.to_frame())
    print(f"\n{name}: {shape.n_layers} layers x {shape.n_heads} heads, d_model {shape.d_model}; receivers {wanted}")
    print(f"  patch_heads                   {sweep_s:8.2f} s  peak {sweep_mib:7.1f} MiB  ({len(sweep.to_frame())} heads)  "
          f"engine {_engine(sweep)}")
    print(f"  path_patch_heads              {path_s:8.2f} s  peak {path_mib:7.1f} MiB  ({n_senders} senders)  "
          f"engine {_engine(path)}")
    print(f"  ratio path / patch_heads      {path_s / sweep_s:8.2f}x  (target <= 3x)")


def _engine(effects: Any) -> dict[str, Any]:
    engine = dict(effects.meta.get("engine", {}))
    engine.pop("read_positions", None)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer smoke run")
    parser.add_argument("--quick", action="store_true", help="batch 2 instead of 8")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs per side")
    parser.add_argument("--shape", choices=["gpt2-small", "6x8x256", "both"], default="both")
    args = parser.parse_args()
    batch = args.batch or (2 if args.quick else 8)
    if args.small:
        shapes = [("2-layer smoke model", SMALL)]
    else:
        shapes = [s for s in [("GPT-2-small shape (12 x 12, d 768)", GPT2_SMALL), ("6 x 8, d 256", MID)]
                  if args.shape == "both" or (s[1] is GPT2_SMALL) == (args.shape == "gpt2-small")]
    print(f"batch {batch} x {args.seq} tokens, IOI-like corruption (shared first half); best of {args.repeats}")
    for name, shape in shapes:
        bench(shape, name, batch, args.seq, args.repeats)


if __name__ == "__main__":
    main()
