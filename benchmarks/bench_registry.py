"""Benchmark: ``hz.detect`` with every registered detector, against the forward passes it needs.

What it measures
----------------
On a randomly initialised GPT-2-small-shaped ``TransformerBridge`` (12 layers x 12 heads,
d_model 768, n_ctx 1024, vocabulary 50257) with the real GPT-2 tokenizer (built offline from the
vendored ``tests/data/gpt2`` files, so the tokenizer-aware detectors run too):

* ``all pattern``: one ``hz.detect(model, <every pattern detector>)`` call. The runner groups
  the detectors by the probe they name and runs one forward pass per probe batch for each group.
* ``forwards``: the forward passes that call needs and nothing else: every batch of every probe
  the pattern detectors name, built exactly as the runner builds them, run through
  ``model(batch)`` with no hooks (a full forward, logits included).
* ``truncated forwards``: the same batches run only as far as the runner runs them (to the last
  layer's attention pattern, through headzoo's kernel, no readers): the floor. The ratio of
  ``all pattern`` to it is the cost of scoring every pattern detector on top of the passes.
* ``one by one``: each pattern detector in its own ``hz.detect`` call; the sum over detectors
  is what the scores would cost if each detector ran its own passes.
* ``weights``: one ``hz.detect`` call with every weight-read detector (they share one
  workspace of effective embeddings and vocabulary passes).

It also counts the model's forward passes (a hook on the embedding) during ``all pattern`` and
checks the count equals the number of probe batches: no detector adds a pass of its own.
``retrieval`` decodes a needle-in-a-haystack probe and is benchmarked by ``bench_retrieval.py``.

Each run happens in a fresh subprocess, so its peak memory is its own: peak RSS during the
timed call minus the RSS just before it (after an untimed warm-up on a tiny probe). With
``--device cuda`` the peak is ``torch.cuda.max_memory_allocated`` instead. Times are
``time.perf_counter`` around the call, best of ``--repeats``. Numbers are printed, not asserted.

Run
---
::

    python benchmarks/bench_registry.py            # GPT-2-small shape, default probes
    python benchmarks/bench_registry.py --small    # a 2-layer smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import GPT2_SMALL, SMALL, Shape, _peak_kib, _reset_peak, _rss_kib  # noqa: E402

GPT2_FILES = Path(__file__).resolve().parents[1] / "tests" / "data" / "gpt2"


def _tokenizer() -> Any:
    """The real GPT-2 tokenizer from the vendored files (the tests' offline loader)."""
    sys.path.insert(0, str(GPT2_FILES.parents[1]))
    from _gpt2 import gpt2_tokenizer

    return gpt2_tokenizer()


def _build(shape: Shape, device: str) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    tok = _tokenizer()
    vocab = max(shape.d_vocab, len(tok))
    cfg = TransformerBridgeConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_ctx=shape.n_ctx, d_head=shape.d_head,
        n_heads=shape.n_heads, d_vocab=vocab, d_mlp=shape.d_mlp, act_fn="gelu", normalization_type="LN", seed=0,
    )
    model = TransformerBridge.boot_native(cfg, tokenizer=tok)  # pyright: ignore[reportAttributeAccessIssue]
    return model.to(device).eval()


def _names(kind: str) -> list[str]:
    import headzoo as hz

    table = hz.list_detectors()
    table = table[(table["source"] == "builtin") & (table["kind"] == kind) & (table["name"] != "retrieval")]
    return sorted(table["name"])


def _probe_batches(model: Any, names: list[str], options: dict[str, Any]) -> list[Any]:
    """Every batch the runner would run for ``names``: the same probes, prompts and padding."""
    import headzoo as hz
    from headzoo._probes import PROBES
    from headzoo._registry import detector_class
    from headzoo._tokens import pad_right

    info = hz.model_info(model)
    batches = []
    for probe_name in sorted({detector_class(n).probe for n in names}):
        cls = PROBES[probe_name]
        fields = {f.name for f in cls.__dataclass_fields__.values()}  # type: ignore[attr-defined]
        probe = cls(**{k: v for k, v in options.items() if k in fields})
        prompts = probe.prompts(model, info)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for k in range(0, len(order), probe.batch_size):
            batches.append(pad_right([prompts[i] for i in order[k : k + probe.batch_size]]).ids.to(info.device))
    return batches


def worker(args: argparse.Namespace) -> None:
    import torch

    import headzoo as hz

    torch.manual_seed(0)
    model = _build(SMALL if args.small else GPT2_SMALL, args.device)
    pattern, weights = _names("pattern"), _names("weights")
    options: dict[str, Any] = {"progress": False}
    if args.n_prompts:
        options["n_prompts"] = args.n_prompts
    probe_options = {k: v for k, v in options.items() if k != "progress"}
    # untimed warm-up through the same code paths
    hz.detect(model, pattern, n_prompts=1, progress=False)
    if args.worker == "weights":
        hz.detect(model, weights[:1], n_tokens=8, progress=False)
    batches = _probe_batches(model, pattern, probe_options) if args.worker in ("forwards", "truncated") else []
    from headzoo._forward import hook_name
    from headzoo._forward import run as run_kernel

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def run() -> Any:
        if args.worker == "all":
            return hz.detect(model, pattern, **options)
        if args.worker == "forwards":
            with torch.no_grad():
                for b in batches:
                    model(b)
            return None
        if args.worker == "truncated":
            last = hook_name("pattern", model.cfg.n_layers - 1)
            with torch.no_grad():
                for b in batches:
                    run_kernel(model, b, stop_after=last)
            return None
        if args.worker == "weights":
            return hz.detect(model, weights, **options)
        per = {}
        for name in pattern:
            start = time.perf_counter()
            hz.detect(model, name, **options)
            sync()
            per[name] = time.perf_counter() - start
        return per

    rss_before = _rss_kib()
    reset_ok = _reset_peak()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    calls: list[int] = []
    name = "hook_embed" if "hook_embed" in model.hook_dict else "embed.hook_out"
    handle = model.hook_dict[name].register_forward_hook(lambda *a: calls.append(1))
    times, out = [], None
    for _ in range(args.repeats):
        calls.clear()
        sync()
        start = time.perf_counter()
        out = run()
        sync()
        times.append(time.perf_counter() - start)
    handle.remove()
    peak = (_peak_kib(reset_ok) - rss_before) / 1024
    if args.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    result: dict[str, Any] = {"worker": args.worker, "time_s": min(times), "peak_extra_mib": peak, "forward_passes": len(calls)}
    if args.worker == "all":
        result["probes"] = {k: {"n_prompts": v.get("n_prompts"), "lengths": v.get("lengths")} for k, v in out.meta["probes"].items()}
        result["n_batches"] = len(_probe_batches(model, pattern, probe_options))
        result["detectors"] = pattern
    if args.worker == "each":
        result["per_detector_s"] = out
    if args.worker == "weights":
        result["detectors"] = weights
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--repeats", str(args.repeats),
           "--device", args.device, *(["--small"] if args.small else []),
           *(["--n-prompts", str(args.n_prompts)] if args.n_prompts else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {side!r} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer model, for a smoke run")
    parser.add_argument("--n-prompts", type=int, default=0, help="prompts per probe (default: each probe's own)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=["all", "forwards", "truncated", "each", "weights"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    import torch

    shape = SMALL if args.small else GPT2_SMALL
    print(f"hz.detect with every registered detector vs the forward passes it needs; model {shape} on {args.device}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    res = {side: _spawn(side, args) for side in ("all", "forwards", "truncated", "each", "weights")}
    a, f, t, e, w = res["all"], res["forwards"], res["truncated"], res["each"], res["weights"]
    print(f"pattern detectors ({len(a['detectors'])}): {', '.join(a['detectors'])}")
    for name, p in a["probes"].items():
        print(f"  probe {name}: {p['n_prompts']} prompts, lengths {p['lengths']}")
    print(f"forward passes during hz.detect: {a['forward_passes']} (probe batches: {a['n_batches']})")
    print()
    print(f"{'run':<38} {'time (s)':>9} {'x truncated':>12} {'peak extra (MiB)':>17}")
    rows = [("forwards (model(batch), no hooks)", f), ("truncated forwards (to last pattern)", t),
            ("hz.detect, all pattern detectors", a),
            ("hz.detect, one call per detector", e), ("hz.detect, all weight detectors", w)]
    for label, r in rows:
        print(f"{label:<38} {r['time_s']:>9.2f} {r['time_s'] / t['time_s']:>12.2f} {r['peak_extra_mib']:>17.1f}")
    print()
    print("one call per detector:")
    for name, secs in sorted(e["per_detector_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {secs:>8.2f} s")
    ok = a["forward_passes"] == a["n_batches"]
    print(f"\nno detector adds a forward pass of its own: {'yes' if ok else 'NO'} "
          f"({a['forward_passes']} passes for {a['n_batches']} probe batches)")
    print(f"sharing: one call {a['time_s']:.2f} s vs {e['time_s']:.2f} s one by one "
          f"({e['time_s'] / a['time_s']:.1f}x); hz.detect / truncated forwards {a['time_s'] / t['time_s']:.2f}x, "
          f"/ full forwards {a['time_s'] / f['time_s']:.2f}x")


if __name__ == "__main__":
    main()
