"""Command line: ``headzoo atlas [MODEL] --out DIR``, ``headzoo detect [MODEL]``, ``headzoo list``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headzoo", description="What does each attention head do?")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered detectors and bundled models")
    a = sub.add_parser("atlas", help="write a model's head atlas: index.html (opens offline), scores.parquet, meta.json")
    a.add_argument("model", nargs="?", default=None, help="bundled model name or Hugging Face id (default: the bundled default model, offline)")
    a.add_argument("--out", default="atlas", help="output folder (default: ./atlas)")
    a.add_argument("--detectors", nargs="+", default=None, metavar="NAME", help="detectors to run (default: all)")
    a.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    a.add_argument("--seed", type=int, default=0, help="probe and sample seed")
    d = sub.add_parser("detect", help="score every head of a model and print the top heads per detector")
    d.add_argument("model", nargs="?", default=None, help="bundled model name or Hugging Face id (default: the bundled default model, offline)")
    d.add_argument("--detectors", nargs="+", default=None, metavar="NAME", help="detectors to run (default: all)")
    d.add_argument("--top", type=int, default=3, help="heads to print per detector (default 3)")
    d.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    d.add_argument("--out", default=None, help="also save the scores to this .parquet file")
    d.add_argument("--seed", type=int, default=0, help="probe seed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import headzoo as hz

    try:
        if args.command == "list":
            with pd.option_context("display.max_colwidth", 70, "display.width", 160):
                print(hz.list_detectors()[["name", "kind", "threshold", "description"]].to_string(index=False))
                print()
                print(hz.list_models().to_string(index=False))
            return 0
        if args.command == "atlas":
            return _atlas(hz, args)
        model = hz.load_model(args.model, device=args.device)
        scores = hz.detect(model, args.detectors, seed=args.seed, progress=True)
        top = scores.top(args.top)
        print(f"Top {args.top} heads per detector on {scores.meta['model']['name']} "
              f"({scores.shape[0]} layers x {scores.shape[1]} heads):")
        cols = [c for c in ("detector", "layer", "head", "score") if c in top.columns]
        with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
            print(top[cols].to_string(index=False))
        if args.out:
            print(f"saved {scores.save(args.out)}")
        return 0
    except hz.HeadzooError as exc:
        print(f"headzoo: error: {exc}", file=sys.stderr)
        return 2


def _atlas(hz: object, args: argparse.Namespace) -> int:
    """Build and write the atlas; finished detectors are kept in ``OUT/.partial`` until the
    page is written, so a killed run resumes without recomputing them."""
    import shutil
    import time
    from pathlib import Path

    out = Path(args.out)
    partial = out / ".partial"
    start = time.perf_counter()
    print(f"headzoo atlas: loading {args.model or 'the bundled default model'}", file=sys.stderr)
    model = hz.load_model(args.model, device=args.device)  # type: ignore[attr-defined]
    resumed = len(list(partial.glob("*.parquet"))) if partial.exists() else 0
    if resumed:
        print(f"headzoo atlas: resuming, {resumed} finished detector group(s) found in {partial}", file=sys.stderr)
    atlas = hz.build_atlas(model, args.detectors, seed=args.seed, cache_dir=partial, progress=True)  # type: ignore[attr-defined]
    atlas.write(out)
    shutil.rmtree(partial, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    labelled = atlas.to_frame()
    labelled = labelled[labelled["labels"] != ""]
    print(f"{atlas!r}")
    with pd.option_context("display.width", 160):
        print(labelled[["layer", "head", "labels"]].to_string(index=False) if len(labelled) else "no head passes a threshold")
    print(f"wrote {out / 'index.html'} ({size / 2**20:.1f} MiB in {out}) in {time.perf_counter() - start:.1f} s; "
          f"open it in a browser (works offline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
