"""Benchmark: headzoo's ``hz.detect`` against TransformerLens' ``detect_head`` on the same probes.

What it measures
----------------
On a randomly initialised GPT-2-small-shaped ``TransformerBridge`` (12 layers, 12 heads,
d_model 768, d_head 64, d_mlp 3072, n_ctx 1024, vocab 50257, LayerNorm, gelu; built offline
with a word-level tokenizer) it scores the three head types both libraries share
(previous-token, duplicate-token, induction) on the same repeated-random-token prompts:

* headzoo: one ``hz.detect(model, [all three], n_prompts=N, half_len=H, batch_size=B)`` call,
  i.e. headzoo's default measure on its own probe (``[BOS] r r``, ``1 + 2H`` tokens).
* TransformerLens: ``detect_head(model, texts, <head>, error_measure="mul")`` once per head type,
  as a user would call it, where ``texts`` are the same prompts rendered as text without the BOS
  (``detect_head`` prepends it again, so it sees exactly the same ids). It runs one
  ``run_with_cache`` per prompt per head type (3 * N cached forward passes).

Each side runs in a fresh subprocess so that its peak memory is its own. Inside the worker the
model is built, one tiny untimed warm-up call absorbs lazy imports and first-call costs, and
then the timed call runs. Reported per side:

* time: ``time.perf_counter`` around the detection call(s) only (no model build, no warm-up);
  with ``--repeats R`` the best of R runs.
* peak extra memory: peak RSS during the timed run(s) minus the RSS just before them. The
  kernel's peak-RSS mark is reset first (``/proc/self/clear_refs``) so that the model build and
  the warm-up cannot set the peak; where that is not possible it falls back to
  ``ru_maxrss`` and says so (the figure is then an upper bound).

As a numbers check, the TransformerLens worker also runs
``hz.detect(..., tokens=texts, measure="transformer_lens")`` on the same texts (after its
measurements are taken) and reports the largest absolute difference from ``detect_head``'s
scores over all heads and the three head types (expected < 1e-4).

The targets (headzoo >= 5x faster, <= 1/3 of the peak extra memory) are reported, not asserted:
wall-clock numbers depend on the machine.

Run
---
::

    python benchmarks/bench_detect.py                 # full GPT-2-small shape, N=16, H=50, B=8
    python benchmarks/bench_detect.py --small         # tiny 2-layer model, a smoke run
    python benchmarks/bench_detect.py --n-prompts 32 --half-len 100 --batch-size 16 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

# Names headzoo uses -> names TransformerLens' detect_head uses.
HEAD_TYPES: dict[str, str] = {
    "previous_token": "previous_token_head",
    "duplicate_token": "duplicate_token_head",
    "induction": "induction_head",
}

TARGET_SPEEDUP = 5.0
TARGET_MEMORY_FRACTION = 1 / 3


@dataclass(frozen=True)
class Shape:
    """The model shape to benchmark on."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int


GPT2_SMALL = Shape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257)
SMALL = Shape(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=256, n_ctx=256, d_vocab=1002)


# --------------------------------------------------------------------------------------------
# Worker side: runs in a fresh process, builds the model, measures one side, prints one JSON line.
# --------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kib() -> int:
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss
    import resource

    # No /proc: the best available stand-in is the peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; True if it worked.

    Without this the peak would still hold the model build's transient high-water mark, which
    for a 124M-parameter model can exceed everything the detection itself allocates.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    # Allow for a few pages of drift between the two reads.
    return hwm is not None and rss is not None and hwm - rss < 1024


def _peak_kib(reset_ok: bool) -> int:
    if reset_ok:
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _build_model(shape: Shape) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from headzoo.testing import word_tokenizer

    # ids: 0 = <bos>, 1 = <unk>, 2.. = words; saved once under the temp dir and reused.
    tok = word_tokenizer([f"w{i}" for i in range(shape.d_vocab - 2)])
    cfg = TransformerBridgeConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_ctx=shape.n_ctx, d_head=shape.d_head,
        n_heads=shape.n_heads, d_vocab=shape.d_vocab, d_mlp=shape.d_mlp, act_fn="gelu",
        normalization_type="LN", seed=0,
    )
    model = TransformerBridge.boot_native(cfg, tokenizer=tok)
    model.eval()
    return model


def _probe_texts(model: Any, n_prompts: int, half_len: int, batch_size: int, seed: int) -> list[str]:
    """headzoo's probe prompts as text without the BOS, which ``to_tokens`` prepends again."""
    import torch

    import headzoo as hz

    probe = hz.RepeatedTokens(n_prompts=n_prompts, half_len=half_len, batch_size=batch_size, seed=seed)
    ids = torch.cat(list(probe.batches(hz.model_info(model))))
    texts = [" ".join(model.tokenizer.convert_ids_to_tokens(row[1:].tolist())) for row in ids]
    # The whole comparison rests on both sides seeing the same ids; check it once.
    assert torch.equal(model.to_tokens(texts[0])[0].cpu(), ids[0]), "texts do not round-trip to the probe ids"
    return texts


def _run_headzoo(model: Any, args: argparse.Namespace) -> None:
    import headzoo as hz

    hz.detect(model, list(HEAD_TYPES), n_prompts=args.n_prompts, half_len=args.half_len,
              batch_size=args.batch_size, seed=args.seed, progress=False)


def _run_tl(model: Any, texts: list[str]) -> dict[str, Any]:
    from transformer_lens.head_detector import detect_head

    return {name: detect_head(model, texts, tl_name, error_measure="mul") for name, tl_name in HEAD_TYPES.items()}


def worker(args: argparse.Namespace) -> None:
    import torch

    import headzoo as hz
    from transformer_lens.head_detector import detect_head

    torch.manual_seed(0)
    model = _build_model(SMALL if args.small else GPT2_SMALL)
    rss_after_build = _rss_kib()

    # Untimed warm-up: a tiny call through the same code path, so lazy imports, tokenizer
    # caches and first-call allocator set-up are not billed to the timed run.
    if args.worker == "headzoo":
        hz.detect(model, list(HEAD_TYPES), n_prompts=1, half_len=4, batch_size=1, seed=123, progress=False)
        texts: list[str] = []
    else:
        texts = _probe_texts(model, args.n_prompts, args.half_len, args.batch_size, args.seed)
        for tl_name in HEAD_TYPES.values():
            detect_head(model, " ".join(texts[0].split()[:8]), tl_name, error_measure="mul")

    gc.collect()
    rss_before = _rss_kib()
    reset_ok = _reset_peak()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if args.worker == "headzoo":
            _run_headzoo(model, args)
        else:
            theirs = _run_tl(model, texts)
        times.append(time.perf_counter() - start)
    peak = _peak_kib(reset_ok)

    result: dict[str, Any] = {
        "side": args.worker,
        "time_s": min(times),
        "times_s": times,
        "rss_after_build_mib": rss_after_build / 1024,
        "rss_before_mib": rss_before / 1024,
        "peak_mib": peak / 1024,
        "peak_extra_mib": (peak - rss_before) / 1024,
        "peak_reset": reset_ok,
        "threads": torch.get_num_threads(),
    }

    if args.worker == "tl":
        # Numbers check, after the measurements: headzoo's transformer_lens measure on the same
        # texts must reproduce detect_head's scores.
        ours = hz.detect(model, list(HEAD_TYPES), tokens=texts, measure="transformer_lens",
                         batch_size=args.batch_size, progress=False)
        diffs = {
            name: float((torch.tensor(ours.matrix(name).to_numpy()) - theirs[name].double()).abs().max())
            for name in HEAD_TYPES
        }
        result["max_abs_diff"] = diffs
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Parent side: runs the two workers and prints the comparison.
# --------------------------------------------------------------------------------------------


def _spawn(side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side,
           "--n-prompts", str(args.n_prompts), "--half-len", str(args.half_len),
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--seed", str(args.seed)]
    if args.small:
        cmd.append("--small")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {side!r} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformer-lens", "headzoo"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--half-len", type=int, default=50, help="tokens per half; sequence is 1 + 2 * half_len")
    parser.add_argument("--batch-size", type=int, default=4, help="headzoo prompts per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="tiny 2-layer model, for a smoke run")
    parser.add_argument("--worker", choices=["headzoo", "tl"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    shape = SMALL if args.small else GPT2_SMALL
    if min(args.n_prompts, args.batch_size, args.repeats) < 1:
        parser.error("--n-prompts, --batch-size and --repeats must be >= 1")
    # detect_head asserts seq_len < n_ctx (strictly), so leave one position spare.
    if not 2 <= args.half_len or 1 + 2 * args.half_len >= shape.n_ctx:
        parser.error(f"--half-len must be >= 2 and 1 + 2 * half_len < n_ctx = {shape.n_ctx}")

    if args.worker:
        worker(args)
        return

    import torch

    versions = _versions()
    print("headzoo vs TransformerLens detect_head: previous_token, duplicate_token, induction")
    print(f"machine: torch {versions['torch']}, transformer-lens {versions['transformer-lens']}, "
          f"headzoo {versions['headzoo']}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, python {sys.version.split()[0]}")
    print(f"model: random TransformerBridge {asdict(shape)} ({'--small' if args.small else 'GPT-2-small shape'})")
    print(f"probe: {args.n_prompts} prompts x {1 + 2 * args.half_len} tokens ([BOS] r r, half_len {args.half_len}), "
          f"headzoo batch_size {args.batch_size}, seed {args.seed}, repeats {args.repeats}")
    print(f"  headzoo: 1 hz.detect call, {-(-args.n_prompts // args.batch_size)} batched forward(s) stopped after the last pattern,"
          " plus induction's weight-only OV copying score (which detect_head does not compute)")
    print(f"  TL:      3 detect_head calls, {3 * args.n_prompts} run_with_cache forwards")
    print()

    hz_res = _spawn("headzoo", args)
    tl_res = _spawn("tl", args)

    rows = [("headzoo", hz_res), ("TransformerLens", tl_res)]
    print(f"{'side':<16} {'time (s)':>10} {'peak extra (MiB)':>17} {'RSS model (MiB)':>16} {'threads':>8}")
    for label, r in rows:
        print(f"{label:<16} {r['time_s']:>10.3f} {r['peak_extra_mib']:>17.1f} {r['rss_after_build_mib']:>16.1f} {r['threads']:>8}")
    if args.repeats > 1:
        for label, r in rows:
            print(f"  {label} all times: " + ", ".join(f"{t:.3f}" for t in r["times_s"]))
    if not (hz_res["peak_reset"] and tl_res["peak_reset"]):
        print("note: peak RSS could not be reset after the model build; peak extra memory is ru_maxrss-based "
              "and may include the build's transient peak")
    print()

    speedup = tl_res["time_s"] / hz_res["time_s"] if hz_res["time_s"] > 0 else float("inf")
    # Guard against a zero/negative TL figure (RSS noise) rather than dividing by it.
    mem_frac = hz_res["peak_extra_mib"] / tl_res["peak_extra_mib"] if tl_res["peak_extra_mib"] > 0 else float("nan")

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"speed:  TL time / headzoo time     = {speedup:6.2f}x   (target >= {TARGET_SPEEDUP:g}x: {met(speedup >= TARGET_SPEEDUP)})")
    print(f"memory: headzoo peak / TL peak     = {mem_frac:6.3f}    (target <= {TARGET_MEMORY_FRACTION:.3f}: "
          f"{met(mem_frac <= TARGET_MEMORY_FRACTION)})")
    diffs = tl_res["max_abs_diff"]
    worst = max(diffs.values())
    print("numbers: max |hz.detect(measure='transformer_lens') - detect_head| on the same texts: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
          + f"  (max {worst:.2e}, {'< 1e-4 ok' if worst < 1e-4 else 'EXCEEDS 1e-4'})")


if __name__ == "__main__":
    main()
