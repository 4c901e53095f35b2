"""Command line: ``headzoo atlas [MODEL] --out DIR [--corpus PATH]``, ``headzoo detect [MODEL]``, ``headzoo list``,
``headzoo compare A B --out DIR``, ``headzoo sweep MODEL... --out DIR``.

A user's mistake (a bad argument, an unknown model or detector, a device this machine lacks, an
output path that is a file or cannot be written) ends with one line ``headzoo: error: ...`` on
stderr and exit status 2, never a traceback; only headzoo's own bugs show one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (with where to find help) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"headzoo: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="headzoo", description="What does each attention head do?")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered detectors and bundled models")
    a = sub.add_parser("atlas", help="write a model's head atlas: index.html (opens offline), scores.parquet, meta.json")
    a.add_argument("model", nargs="?", default=None, help="bundled model name or Hugging Face id (default: the bundled default model, offline)")
    a.add_argument("--out", default="atlas", help="output folder (default: ./atlas)")
    a.add_argument("--detectors", nargs="+", default=None, metavar="NAME", help="detectors to run (default: all)")
    a.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    a.add_argument("--dtype", default=None, help="floating-point dtype, e.g. float32 (default), float16 or bfloat16")
    a.add_argument("--seed", type=_non_negative, default=0, help="probe and sample seed")
    a.add_argument("--corpus", default=None, metavar="PATH",
                   help="text for each head's top contexts: a UTF-8 text file, a folder of *.txt files, a dataset "
                        "saved with datasets' save_to_disk, or hf:NAME[:CONFIG][@SPLIT] (a Hugging Face dataset, "
                        "where the hub is reachable); default: the text shipped with headzoo")
    a.add_argument("--no-examples", action="store_true", help="skip each head's contexts on text")
    a.add_argument("--no-importance", action="store_true", help="skip each head's ablation effect on the task battery")
    d = sub.add_parser("detect", help="score every head of a model and print the top heads per detector")
    d.add_argument("model", nargs="?", default=None, help="bundled model name or Hugging Face id (default: the bundled default model, offline)")
    d.add_argument("--detectors", nargs="+", default=None, metavar="NAME", help="detectors to run (default: all)")
    d.add_argument("--top", type=_positive, default=3, help="heads to print per detector (default 3)")
    d.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    d.add_argument("--dtype", default=None, help="floating-point dtype, e.g. float32 (default), float16 or bfloat16")
    d.add_argument("--out", default=None, help="also save the scores to this .parquet file")
    d.add_argument("--seed", type=_non_negative, default=0, help="probe seed")
    c = sub.add_parser("compare", help="compare two atlas folders head by head: comparison.parquet, correlations.csv, compare.html")
    c.add_argument("a", help="an atlas folder (written by `headzoo atlas --out DIR`)")
    c.add_argument("b", help="the atlas folder to compare it with")
    c.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    s = sub.add_parser("sweep", help="build the atlas of many models or training checkpoints (in-process or on Ray) "
                                     "into one Parquet dataset: results/, jobs/, atlases/, index.html, sweep.json")
    s.add_argument("models", nargs="+", metavar="MODEL",
                   help="bundled name, Hugging Face id, folder, SOURCE@REVISION (hub revision or subfolder; a glob "
                        "such as 'runs/zoo/checkpoints@step*' for a folder), or a glob of checkpoint folders (quote it)")
    s.add_argument("--out", required=True, help="the sweep folder; run the same command again to resume")
    s.add_argument("--detectors", nargs="+", default=None, metavar="NAME", help="detectors to run (default: all)")
    s.add_argument("--executor", choices=("serial", "ray"), default=None,
                   help="where jobs run (default: Ray when installed, else in this process)")
    s.add_argument("--workers", type=_positive, default=None, help="jobs side by side on a local Ray instance (default: one per core)")
    s.add_argument("--address", default=None, help="an existing Ray cluster, e.g. ray://host:10001 or auto")
    s.add_argument("--seed", type=_non_negative, default=0, help="probe and sample seed")
    s.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    s.add_argument("--dtype", default=None, help="floating-point dtype, e.g. float32 (default), float16 or bfloat16")
    s.add_argument("--no-examples", action="store_true", help="skip each head's contexts on text")
    s.add_argument("--no-importance", action="store_true", help="skip each head's ablation effect on the task battery")
    s.add_argument("--no-atlas", action="store_true", help="keep only the scores, not each model's atlas folder")
    return p


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


class UsageError(Exception):
    """A mistake on the command line that headzoo's own checks cannot see (a path, mostly)."""


def _fail(message: str) -> int:
    print(f"headzoo: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for every user error, one line on stderr)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # the parser has printed the error; --help exits 0
        return exc.code if isinstance(exc.code, int) else 2
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
        if args.command == "compare":
            return _compare(hz, args)
        if args.command == "sweep":
            return _sweep(hz, args)
        return _detect(hz, args)
    except (hz.HeadzooError, UsageError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # the file system refused: a full disk, a read-only or vanished folder
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}. Check the path and its permissions, or choose another --out.")
    except KeyboardInterrupt:
        again = "; run the same command again to resume" if args.command in ("atlas", "sweep") else ""
        print(f"headzoo: interrupted{again}", file=sys.stderr)
        return 130


def _check_out_folder(folder: Path, given: str) -> None:
    """Refuse an output folder that is a file or cannot be written, before any model is loaded.

    ``given`` is the ``--out`` argument as typed, for the message."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = f"--out {given} is" if existing == Path(given) else f"--out {given}: {existing} is"
        raise UsageError(f"{where} a file, not a folder. Choose a path in a folder (missing folders are created).")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".headzoo-write-test-")
    except OSError as exc:
        raise UsageError(
            f"--out {given}: cannot write in {existing} ({exc.strerror or exc}). Choose a folder you can write to."
        ) from None
    os.close(fd)
    os.unlink(probe)


def _detect(hz: Any, args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'scores.parquet'}.")
        _check_out_folder(out.parent, args.out)
    model = hz.load_model(args.model, device=args.device, dtype=args.dtype)
    scores = hz.detect(model, args.detectors, seed=args.seed, progress=True)
    top = scores.top(args.top)
    print(f"Top {args.top} heads per detector on {scores.meta['model']['name']} "
          f"({scores.shape[0]} layers x {scores.shape[1]} heads):")
    cols = [c for c in ("detector", "layer", "head", "score") if c in top.columns]
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(top[cols].to_string(index=False))
    if out is not None:
        print(f"saved {scores.save(out)}")
    return 0


def _atlas(hz: Any, args: argparse.Namespace) -> int:
    """Build and write the atlas; finished detectors are kept in ``OUT/.partial`` until the
    page is written, so a killed run resumes without recomputing them."""
    import shutil
    import time

    out = Path(args.out)
    _check_out_folder(out, args.out)
    if args.corpus is not None:
        if args.no_examples:
            raise UsageError("--corpus is read only for the examples; drop --no-examples or --corpus.")
        from headzoo._stream import HUB_PREFIX

        # a path that is not there fails before minutes of loading and scoring
        if not args.corpus.startswith(HUB_PREFIX) and not Path(args.corpus).expanduser().exists():
            raise UsageError(f"--corpus {args.corpus}: no such file or folder. Give a UTF-8 text file, a folder of "
                             "*.txt files or a dataset saved with save_to_disk.")
    partial = out / ".partial"
    start = time.perf_counter()
    print(f"headzoo atlas: loading {args.model or 'the bundled default model'}", file=sys.stderr)
    model = hz.load_model(args.model, device=args.device, dtype=args.dtype)
    resumed = len(list(partial.glob("*.parquet"))) if partial.exists() else 0
    if resumed:
        print(f"headzoo atlas: resuming, {resumed} finished detector group(s) found in {partial}", file=sys.stderr)
    atlas = hz.build_atlas(model, args.detectors, seed=args.seed, cache_dir=partial, progress=True, corpus=args.corpus,
                           examples=not args.no_examples, importance=not args.no_importance)
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


def _compare(hz: Any, args: argparse.Namespace) -> int:
    """Compare two atlas folders and write the comparison to ``--out``."""
    out = Path(args.out)
    _check_out_folder(out, args.out)
    comparison = hz.compare_atlases(args.a, args.b)
    comparison.write(out)
    print(f"{comparison!r}")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(comparison.correlations().to_string(index=False))
    print(f"wrote {out / 'compare.html'}, {out / 'comparison.parquet'} and {out / 'correlations.csv'}")
    return 0


def _sweep(hz: Any, args: argparse.Namespace) -> int:
    """Run the sweep; exit 0 when every job is done, 1 when some failed (each named with its error)."""
    import warnings

    out = Path(args.out)
    _check_out_folder(out, args.out)
    if args.executor == "serial" and (args.workers is not None or args.address is not None):
        raise UsageError("--workers and --address are Ray settings; drop them or use --executor ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the summary below names the failures
        result = hz.sweep(args.models, args.detectors, out=out, executor=args.executor, workers=args.workers,
                          address=args.address, seed=args.seed, device=args.device, dtype=args.dtype,
                          atlas=not args.no_atlas, examples=not args.no_examples,
                          importance=not args.no_importance, progress=True)
    counts = result.jobs["status"].value_counts()
    done, failed = int(counts.get("done", 0)), int(counts.get("failed", 0))
    print(f"headzoo sweep: {done} of {len(result.jobs)} jobs done, {failed} failed "
          f"({result.meta['executor']['name']} executor); results in {out / 'results'}")
    for row in result.errors().itertuples():
        print(f"  failed: {row.model}: {row.error}")
    if (out / "index.html").exists():
        print(f"wrote {out / 'index.html'}; open it in a browser (works offline)")
    if failed:
        print(f"headzoo sweep: {failed} job(s) failed; see {out / 'jobs'}/<JOB>.json for the tracebacks. Running the "
              "same command again retries them and skips the finished ones.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
