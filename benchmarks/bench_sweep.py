"""Benchmark: wall time of a sweep against the executor, the number of Ray workers and of models.

What it measures
----------------
The same sweep (``hz.sweep``: one atlas job per model, the three pattern detectors
``previous_token, induction, duplicate_token``, the atlas's corpus examples and importance off)
over N planted models (3 layers x 4 heads, d_head 32, vocabulary 64; a different seed each),
for N in ``--models`` (default 2 and 4), run by:

* ``serial``: every job in this process, one after another;
* ``ray w=1`` and ``ray w=2``: a local Ray instance started for the sweep with 1 or 2 workers
  (one CPU and one torch thread per job), shut down after it.

Each run writes to a fresh folder, so nothing is resumed. The wall time includes everything a
user waits for: for Ray, starting the instance, its worker processes importing headzoo and
torch, shipping jobs and results, and the shutdown; for serial, nothing of that. A serial
warm-up sweep (untimed) first loads the libraries into this process, so serial's numbers are
of a warm process, as in a notebook. The table also gives the sum of the jobs' own times (model
load and atlas, as each job measured it) and how long starting Ray took. ``ray/serial`` is the ratio of wall times: above 1, Ray's
overhead outweighs its parallelism at that size.

Run
---
::

    python benchmarks/bench_sweep.py                 # N = 2 and 4 (about 3 minutes on 2 cores)
    python benchmarks/bench_sweep.py --models 2 8
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

DETECTORS = ["previous_token", "induction", "duplicate_token"]


def _models(n: int) -> list:
    import headzoo as hz
    from headzoo.testing import PlantSpec, planted_model

    return [hz.SweepModel(f"planted-{i}", None, loader=functools.partial(
        planted_model, PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=64, n_ctx=64, previous_token=(0, 1),
                                 induction=(2, 0), duplicate_token=(1, 2), seed=100 + i), name=f"planted-{i}"))
            for i in range(n)]


def _time(models: list, out: Path, **kwargs) -> tuple[float, object]:
    import headzoo as hz

    start = time.perf_counter()
    result = hz.sweep(models, DETECTORS, out=out, examples=False, importance=False, progress=False, **kwargs)
    return time.perf_counter() - start, result


def _job_seconds(result: object) -> float:
    """Seconds the jobs themselves took (load and atlas), summed: the work, without the executor."""
    return float(result.jobs["seconds"].sum())  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, nargs="+", default=[2, 4], help="numbers of models to sweep")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    try:  # the across-model page comes from headzoo._sweep_page; a stand-in where it is absent
        import headzoo._sweep_page  # noqa: F401
    except ImportError:
        stub = types.ModuleType("headzoo._sweep_page")
        stub.render_sweep_page = lambda results, jobs, meta: "<html></html>"  # type: ignore[attr-defined]
        sys.modules["headzoo._sweep_page"] = stub
    import pandas as pd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _time(_models(1), Path(tmp) / "warm-up", executor="serial")
        for n in args.models:
            models = _models(n)
            serial_s, serial = _time(models, Path(tmp) / f"serial-{n}", executor="serial")
            rows.append({"models": n, "executor": "serial", "workers": "-", "wall (s)": serial_s, "ray/serial": 1.0,
                         "jobs (s)": _job_seconds(serial), "ray start (s)": 0.0, "equal to serial": True})
            for workers in (1, 2):
                wall, ray = _time(models, Path(tmp) / f"ray-{n}-{workers}", executor="ray", workers=workers)
                same = ray.to_frame().equals(serial.to_frame())  # type: ignore[attr-defined]
                rows.append({"models": n, "executor": "ray", "workers": workers, "wall (s)": wall,
                             "ray/serial": wall / serial_s, "jobs (s)": _job_seconds(ray),
                             "ray start (s)": ray.meta["executor"]["init_seconds"],  # type: ignore[attr-defined]
                             "equal to serial": same})
            print(pd.DataFrame(rows[-3:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print()
    print("| models | executor | workers | wall (s) | ray/serial | sum of job times (s) | Ray start (s) | results equal serial's |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in table.itertuples(index=False):
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]:.1f} | {'yes' if r[7] else 'NO'} |")


if __name__ == "__main__":
    main()
