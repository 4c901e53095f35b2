"""Sweeps: the same atlas for many models or training checkpoints, gathered in one Parquet dataset.

Induction heads form in a sudden phase change early in training (Olsson et al. 2022, "In-context
learning and induction heads", arXiv 2209.11895); seeing when each kind of head forms, and which
heads of different models do the same job, needs every detector run on every checkpoint with the
same probes and seeds. :func:`sweep` does that as one job per model or checkpoint (load, then
:func:`hz.build_atlas`), in-process (``executor="serial"``) or as Ray tasks on a local or remote
cluster, and writes the scores as one hive-partitioned Parquet dataset beside each model's atlas.
A job's id hashes everything that changes its result, so a rerun skips finished jobs and a
changed option makes new ones.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import numbers
import os
import random
import re
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast, final

import numpy as np
import pandas as pd

from headzoo._errors import CorruptFileError, InvalidOptionError
from headzoo._io import Payload, Result, positive_int, write_atomic
from headzoo._models import library_versions
from headzoo._sweep_models import SweepModel, expand_models
from headzoo._tokens import check_bool

__all__ = ["sweep", "Sweep", "RESULT_COLUMNS", "JOB_COLUMNS"]

RESULT_COLUMNS = ["job", "series", "model", "step", "detector", "layer", "head", "score", "threshold", "passes"]
JOB_COLUMNS = ["job", "series", "model", "step", "source", "revision", "status", "error", "seconds", "atlas"]
_SORT = ["series", "step", "model", "detector", "layer", "head"]
_EXECUTORS = ("serial", "ray")
_FORMAT_TAG = "headzoo.sweep/1"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_RAY_HINT = 'install it with `pip install "headzoo[ray]"`, or pass executor="serial" to run the jobs in this process'


# -- jobs ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything one job needs, picklable so a Ray worker on another machine can run it."""

    id: str
    entry: SweepModel
    detectors: Any  # what the user gave (names, detector instances or None), for build_atlas
    seed: int
    options: dict[str, Any]
    atlas: bool
    examples: bool
    importance: bool
    device: str | None
    dtype: str | None
    threads: int
    partial: str  # build_atlas's resume cache while the job runs (OUT/.partial/<JOB>)


def _slug(label: str) -> str:
    return (_SLUG.sub("_", label).strip("_") or "model")[:60]


def _canonical(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples as lists), for job ids and sweep.json.

    Raises:
        InvalidOptionError: a value JSON cannot hold exactly (an object, a tensor, a set).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise InvalidOptionError(f"{where} must have string keys; got {list(value)!r:.80}")
        return {k: _canonical(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidOptionError(
        f"{where} is a {type(value).__name__}, which a sweep cannot record or hash into a job id; pass options as "
        "numbers, strings, booleans, None and lists or dicts of them"
    )


def _digest(payload: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _results_frame(job: _Job, scores: Any) -> pd.DataFrame:
    """The job's rows of the results dataset (RESULT_COLUMNS, sorted) from its HeadScores."""
    tidy = scores.to_frame()
    thresholds = {d: scores.threshold(d) for d in scores.detectors}
    e = job.entry
    frame = pd.DataFrame({
        "job": job.id,
        "series": e.series_name,
        "model": e.model,
        "step": pd.array([e.step] * len(tidy), dtype="Int64"),
        "detector": tidy["detector"].to_numpy(),
        "layer": tidy["layer"].to_numpy(),
        "head": tidy["head"].to_numpy(),
        "score": tidy["score"].to_numpy(),
    })
    frame["threshold"] = [math.nan if thresholds[d] is None else float(thresholds[d]) for d in frame["detector"]]
    frame["passes"] = frame["score"].to_numpy() >= frame["threshold"].to_numpy()  # NaN threshold: False
    return _results_dtypes(frame)


def _results_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a copy) with RESULT_COLUMNS in order, schema dtypes, sorted, index reset."""
    frame = cast(pd.DataFrame, frame[RESULT_COLUMNS]).copy()
    for col in ("job", "series", "model", "detector"):
        frame[col] = frame[col].astype(str)
    frame["step"] = frame["step"].astype("Int64")
    for col in ("layer", "head"):
        frame[col] = frame[col].astype("int64")
    for col in ("score", "threshold"):
        frame[col] = frame[col].astype("float64")
    frame["passes"] = frame["passes"].astype(bool)
    return frame.sort_values(_SORT, kind="stable").reset_index(drop=True)


def run_job(job: _Job, gpu: bool = False) -> dict[str, Any]:
    """Run one job: load the model, build its atlas, return what the driver writes.

    The same code runs in both executors, and it writes nothing under ``OUT`` but build_atlas's
    resume cache (skipped where that folder cannot be made, as on a cluster without a shared
    file system): the driver writes the results, so the workers need no access to ``OUT``.

    Returns:
        ``{"status": "done" | "failed", "frame": DataFrame | None, "files": {relative path:
        bytes}, "seconds", "error" ("TypeName: message"), "traceback", "started_at",
        "finished_at"}``. Exceptions are caught and reported; KeyboardInterrupt propagates.
    """
    import torch

    from headzoo._atlas import build_atlas

    started, t0 = _now(), time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)  # jobs side by side must not oversubscribe the cores
    outcome: dict[str, Any] = {"frame": None, "files": {}, "error": None, "traceback": None}
    try:
        # every source of randomness a loader or detector might read starts from the seed,
        # so the serial and Ray executors compute bit-identical scores
        torch.manual_seed(job.seed)
        random.seed(job.seed)
        np.random.seed(job.seed % 2**32)
        device = job.device if job.device is not None else ("cuda" if gpu else None)
        model = job.entry.load(device, job.dtype)
        cache: Path | None = Path(job.partial)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            cache = None
        atlas = build_atlas(model, job.detectors, seed=job.seed, examples=job.examples, importance=job.importance,
                            cache_dir=cache, progress=False, **job.options)
        outcome["frame"] = _results_frame(job, atlas.scores)
        if job.atlas:
            with tempfile.TemporaryDirectory(prefix="headzoo-sweep-") as tmp:
                atlas.write(tmp)
                outcome["files"] = {p.relative_to(tmp).as_posix(): p.read_bytes()
                                    for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
        outcome["status"] = "done"
    except Exception as exc:  # a failing model is reported, never fatal to the sweep
        outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        torch.set_num_threads(threads)
    outcome.update(seconds=time.perf_counter() - t0, started_at=started, finished_at=_now())
    return outcome


def _ray_task(job: _Job) -> dict[str, Any]:
    import ray

    return run_job(job, gpu=bool(ray.get_gpu_ids()))


# -- executors ----------------------------------------------------------------------------------
def _serial(jobs: list[_Job]) -> Iterator[tuple[_Job, dict[str, Any]]]:
    for job in jobs:
        yield job, run_job(job)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidOptionError(f'executor="ray" needs Ray, which is not installed: {_RAY_HINT}') from None
    return ray


def _ray_available() -> bool:
    try:
        _import_ray()
    except InvalidOptionError:
        return False
    return True


def _ray(jobs: list[_Job], *, workers: int | None, address: str | None, threads: int, gpus: int | float | None,
         info: dict[str, Any]) -> Iterator[tuple[_Job, dict[str, Any]]]:
    """Run ``jobs`` as Ray tasks, yielding each as it finishes. Starts (and at the end shuts
    down) a local Ray instance of ``workers`` jobs side by side unless Ray is already running or
    ``address`` names a cluster. ``info`` receives what ran (CPUs, GPUs per job)."""
    ray = _import_ray()
    started, t0 = False, time.perf_counter()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            # each job holds `threads` CPUs, so `workers` jobs run side by side
            kwargs["num_cpus"] = (workers or os.cpu_count() or 1) * threads
        ray.init(address=address, **kwargs)
        started = True
    waiting: list[Any] = []
    try:
        resources = ray.cluster_resources()
        if gpus is None:  # a GPU per job wherever the cluster has them
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        info.update(init_seconds=time.perf_counter() - t0, cluster_cpus=float(resources.get("CPU", 0)), cluster_gpus=float(resources.get("GPU", 0)),
                    gpus_per_job=gpus, ray_version=str(ray.__version__))
        task = ray.remote(_ray_task).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
        refs = {task.remote(job): job for job in jobs}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the worker died (out of memory, killed): report, go on
                    outcome = {"status": "failed", "frame": None, "files": {}, "seconds": math.nan,
                               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                               "started_at": None, "finished_at": _now()}
                yield refs[ref], outcome
    finally:
        for ref in waiting:  # interrupted: finished jobs are written, the rest stop
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


# -- the sweep folder ----------------------------------------------------------------------------
def _part_path(out: Path, job: str) -> Path:
    return out / "results" / f"job={job}" / "part-0.parquet"


def _job_record(job: _Job) -> dict[str, Any]:
    e = job.entry
    return {"job": job.id, "series": e.series_name, "model": e.model, "step": e.step,
            "source": e.source if e.source is not None else "callable", "revision": e.revision}


def _write_outcome(out: Path, job: _Job, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Write a finished job: atlas files, then its results part, then its status record last
    (the record is what marks it done, so a crash in between reruns the job)."""
    record = {**_job_record(job), "status": outcome["status"], "error": outcome["error"],
              "traceback": outcome["traceback"], "seconds": outcome["seconds"], "atlas": None,
              "started_at": outcome["started_at"], "finished_at": outcome["finished_at"], "identity": job.entry.identity()}
    if outcome["status"] == "done":
        folder = out / "atlases" / job.id
        for rel, data in outcome["files"].items():
            write_atomic(folder / rel, lambda tmp, data=data: Path(tmp).write_bytes(data))
        if "index.html" in outcome["files"]:
            record["atlas"] = f"atlases/{job.id}/index.html"
        # the partition folder holds the job id; a `job` column in the file would clash with it
        frame = cast(pd.DataFrame, outcome["frame"]).drop(columns="job")
        write_atomic(_part_path(out, job.id), lambda tmp: frame.to_parquet(tmp, index=False))
    text = json.dumps(record, indent=1, allow_nan=True, default=str)
    write_atomic(out / "jobs" / f"{job.id}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if outcome["status"] == "done":
        shutil.rmtree(job.partial, ignore_errors=True)
    return record


def _read_record(out: Path, job: str) -> dict[str, Any] | None:
    try:
        record = json.loads((out / "jobs" / f"{job}.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # absent or damaged (never half-written: writes are atomic): the job runs again
    return record if isinstance(record, dict) else None


def _is_done(out: Path, job: str) -> bool:
    record = _read_record(out, job)
    return record is not None and record.get("status") == "done" and _part_path(out, job).is_file()


def _read_folder(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, str]]:
    """``(results, jobs, meta, tracebacks)`` of the sweep folder ``out``.

    Raises:
        CorruptFileError: no readable sweep.json, or a finished job's results part is unreadable.
    """
    try:
        meta = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{out} is not a sweep folder: its sweep.json cannot be read ({exc}); "
                               "give the --out folder of hz.sweep / `headzoo sweep`") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_TAG or not isinstance(meta.get("jobs"), list):
        raise CorruptFileError(f"{out / 'sweep.json'} is not a headzoo sweep's metadata (format {_FORMAT_TAG!r})")
    rows, parts, tracebacks = [], [], {}
    for entry in meta["jobs"]:
        record = _read_record(out, entry["job"])
        status = record.get("status", "pending") if record is not None else "pending"
        done = status == "done" and _part_path(out, entry["job"]).is_file()
        if status == "done" and not done:
            status = "pending"
        rows.append({**{k: entry.get(k) for k in ("job", "series", "model", "step", "source", "revision")},
                     "status": status,
                     "error": record.get("error") if record is not None and status == "failed" else None,
                     "seconds": record.get("seconds") if record is not None and status != "pending" else None,
                     "atlas": record.get("atlas") if done and record is not None else None})
        if status == "failed" and record is not None and record.get("traceback"):
            tracebacks[entry["job"]] = str(record["traceback"])
        if done:
            path = _part_path(out, entry["job"])
            try:
                part = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise CorruptFileError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it and its "
                                       f"jobs/{entry['job']}.json and run the sweep again to recompute it") from None
            part.insert(0, "job", entry["job"])
            parts.append(part)
    results = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in RESULT_COLUMNS})
    return _results_dtypes(results), _jobs_dtypes(pd.DataFrame(rows, columns=JOB_COLUMNS)), meta, tracebacks


# pandas 3 has a string dtype ("str") whose missing value is NaN; before it, text columns are
# object columns, where astype("str") would turn a missing value into the text "None"
_TEXT: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def _optional_text(column: pd.Series) -> pd.Series:
    """``column`` as text with its missing values still missing (not the string ``"None"``)."""
    values = [v if isinstance(v, str) else None if pd.isna(v) else str(v) for v in column.astype(object)]
    return pd.Series(values, index=column.index, dtype=_TEXT)


def _jobs_dtypes(jobs: pd.DataFrame) -> pd.DataFrame:
    jobs = cast(pd.DataFrame, jobs[JOB_COLUMNS]).copy()
    for col in ("job", "series", "model", "source", "status"):
        jobs[col] = jobs[col].astype(str)
    for col in ("revision", "error", "atlas"):
        jobs[col] = _optional_text(cast(pd.Series, jobs[col]))
    jobs["step"] = jobs["step"].astype("Int64")
    jobs["seconds"] = pd.Series(pd.to_numeric(jobs["seconds"], errors="coerce"), index=jobs.index, dtype="float64")
    return jobs.reset_index(drop=True)


# -- checks --------------------------------------------------------------------------------------
def _check_out(out: Any) -> Path:
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidOptionError(f"out must be a folder path (str or os.PathLike); got {type(out).__name__} {out!r:.80}")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InvalidOptionError(f"out={str(path)!r} is a file; give a folder for the sweep's results")
    return path


def _check_executor(executor: Any, address: Any) -> str:
    if executor is None:
        return "ray" if (address is not None or _ray_available()) else "serial"
    if executor not in _EXECUTORS:
        raise InvalidOptionError(f"executor must be 'serial', 'ray' or None (Ray when installed); got {executor!r}")
    if executor == "ray":
        _import_ray()
    return str(executor)


# -- the entry point -------------------------------------------------------------------------------
def sweep(
    models: Any,
    detectors: Any = None,
    *,
    out: str | os.PathLike[str],
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    gpus_per_job: int | float | None = None,
    threads_per_job: int = 1,
    seed: int = 0,
    atlas: bool = True,
    examples: bool = True,
    importance: bool = True,
    device: Any = None,
    dtype: Any = None,
    retry_failed: bool = True,
    progress: bool | None = None,
    **options: Any,
) -> Sweep:
    """Build the atlas of every model or checkpoint in ``models`` and gather the scores.

    Args:
        models: what :func:`headzoo._sweep_models.expand_models` accepts: bundled names, hub
            ids, folders, ``"SOURCE@REVISION"``, globs of checkpoint folders, ``hz.SweepModel``
            entries, or a list of them. Not modified.
        detectors: as for :func:`hz.build_atlas` (``None``: all registered).
        out: the sweep folder: ``results/job=<JOB>/part-0.parquet`` (one per finished job;
            ``pandas.read_parquet(out / "results")`` reads them all, with ``job`` as a
            categorical), ``jobs/<JOB>.json`` (each job's status, error and traceback),
            ``atlases/<JOB>/`` (with ``atlas=True``), ``index.html`` and ``sweep.json``.
        executor: ``"serial"`` (in this process), ``"ray"``, or ``None``: Ray when it is
            installed (or ``address`` is given), else serial. Both give identical results.
        workers: jobs side by side on the local Ray instance this starts (default: one per
            core); ignored when Ray is already running or ``address`` is given.
        address: a Ray cluster to run on (``"ray://host:10001"``, ``"auto"``); its workers need
            headzoo installed, not access to ``out`` (results come back to this process).
        gpus_per_job: GPUs each Ray task asks for (default: 1 when the cluster has GPUs, else
            0); a job given a GPU loads its model onto ``"cuda"``.
        threads_per_job: torch threads (and Ray CPUs) per job.
        seed: seeds the probes, samples and model loaders of every job.
        atlas: write each model's atlas folder (the scores are computed the same way either way).
        examples, importance: as for :func:`hz.build_atlas` (off: much faster jobs).
        device, dtype: passed to :func:`hz.load_model`.
        retry_failed: rerun jobs that failed in an earlier run of the same sweep.
            (A rerun with other options makes other jobs; the earlier jobs' files stay in
            ``out`` but are not part of this sweep's :class:`Sweep` or sweep.json.)
        progress: show a progress bar over jobs (default: when more than one job runs).
        **options: passed to :func:`hz.build_atlas` / :func:`hz.detect` (JSON-able values).

    Returns:
        :class:`Sweep` over every job of this sweep. A job whose status record says done and
        whose results part exists is not run again; a job that fails is recorded with its
        error (``Sweep.errors()``), a warning says how many failed, and the others go on.

    Raises:
        InvalidOptionError: bad arguments (checked before any model is loaded), or
            ``executor="ray"`` without Ray installed.
        ModelNotFoundError: a model path or glob that matches nothing.
        UnknownDetectorError: an unknown detector name.
    """
    from headzoo._detector import Detector
    from headzoo._runner import select_detectors

    out_dir = _check_out(out)
    entries = expand_models(models)
    workers = None if workers is None else positive_int("workers", workers)
    threads_per_job = positive_int("threads_per_job", threads_per_job)
    if address is not None and not isinstance(address, str):
        raise InvalidOptionError(f"address must be a Ray address string such as 'ray://host:10001'; got {address!r}")
    if executor == "serial" and (address is not None or workers is not None):
        raise InvalidOptionError("workers and address are Ray settings; drop them or use executor='ray'")
    if gpus_per_job is not None and (not isinstance(gpus_per_job, numbers.Real) or isinstance(gpus_per_job, bool)
                                     or not 0 <= float(gpus_per_job) or math.isnan(float(gpus_per_job))):
        raise InvalidOptionError(f"gpus_per_job must be a number >= 0 or None; got {gpus_per_job!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InvalidOptionError(f"seed must be a non-negative integer; got {seed!r}")
    flags = {name: check_bool(value, name) for name, value in
             (("atlas", atlas), ("examples", examples), ("importance", importance), ("retry_failed", retry_failed))}
    if progress is not None:
        check_bool(progress, "progress")
    for name, value in (("device", device), ("dtype", dtype)):
        if value is not None and not isinstance(value, str) and type(value).__module__ != "torch":
            raise InvalidOptionError(f"{name} must be a string such as 'cpu' / 'float16' or a torch {name}; got {value!r}")
    clean_options = _canonical(options, "options")
    if detectors is not None and not isinstance(detectors, (str, Detector)):
        detectors = list(detectors)  # an iterator would be spent by the check below, before the jobs read it
    selected = select_detectors(detectors, dict(options, seed=seed))  # unknown names and options fail here
    chosen = _check_executor(executor, address)
    spec = {"detectors": [[d.name, _canonical(d.options(), d.name)] for d in selected], "seed": int(seed),
            "options": clean_options, "atlas": flags["atlas"], "examples": flags["examples"],
            "importance": flags["importance"], "device": None if device is None else str(device),
            "dtype": None if dtype is None else str(dtype)}
    jobs: list[_Job] = []
    for entry in entries:
        jid = f"{_slug(entry.model)}-{_digest({'model': entry.identity(), **spec})}"
        jobs.append(_Job(jid, entry, detectors, int(seed), dict(options), flags["atlas"], flags["examples"],
                         flags["importance"], spec["device"], spec["dtype"], threads_per_job,
                         str(out_dir / ".partial" / jid)))
    meta: dict[str, Any] = {
        "format": _FORMAT_TAG, "detectors": [d.name for d in selected], "seed": int(seed), "options": clean_options,
        "flags": {k: v for k, v in flags.items() if k != "retry_failed"}, "device": spec["device"],
        "dtype": spec["dtype"], "executor": {"name": chosen, "workers": workers, "address": address,
                                             "threads_per_job": threads_per_job, "gpus_per_job": gpus_per_job},
        "versions": library_versions(), "created": _now(), "finished": None,
        "jobs": [_job_record(j) for j in jobs],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_meta(out_dir, meta)
    todo = []
    for job in jobs:
        if _is_done(out_dir, job.id):
            continue
        record = _read_record(out_dir, job.id)
        if record is not None and record.get("status") == "failed" and not flags["retry_failed"]:
            continue
        todo.append(job)
    meta["executor"]["skipped_done"] = len(jobs) - len(todo)
    show = progress if progress is not None else len(todo) > 1
    if gpus_per_job is None and spec["device"] is not None and spec["device"].startswith("cpu"):
        gpus_per_job = 0  # asked for the CPU: holding a GPU per job would only block other work
    runner = _serial(todo) if chosen == "serial" or not todo else _ray(
        todo, workers=workers, address=address, threads=threads_per_job, gpus=gpus_per_job, info=meta["executor"])
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc="headzoo sweep", unit="job", disable=not show) as bar:
        for job, outcome in runner:
            _write_outcome(out_dir, job, outcome)
            bar.set_postfix_str(f"{job.entry.model}: {outcome['status']}", refresh=False)
            bar.update(1)
    meta["executor"]["seconds"] = time.perf_counter() - t0
    try:
        (out_dir / ".partial").rmdir()  # only when empty: an interrupted job's cache stays for its resume
    except OSError:
        pass
    meta["finished"] = _now()
    _write_meta(out_dir, meta)
    result = Sweep.open(out_dir)
    _write_page(out_dir, result)
    failed = result.jobs[result.jobs["status"] == "failed"]
    if len(failed):
        names = ", ".join(str(m) for m in list(failed["model"])[:5]) + (" ..." if len(failed) > 5 else "")
        warnings.warn(f"{len(failed)} of {len(result.jobs)} sweep jobs failed ({names}); see sweep.errors() for "
                      f"their errors, or {out_dir / 'jobs'}/<JOB>.json", RuntimeWarning, stacklevel=2)
    return result


def _write_meta(out: Path, meta: Mapping[str, Any]) -> None:
    text = json.dumps(meta, indent=1, default=str)
    write_atomic(out / "sweep.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_page(out: Path, result: Sweep) -> None:
    from headzoo._sweep_page import render_sweep_page

    page = render_sweep_page(result.to_frame(), result.jobs, result.meta)
    write_atomic(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


# -- the result --------------------------------------------------------------------------------
@final
@dataclasses.dataclass(frozen=True, eq=False)
class Sweep(Result):
    """The scores of every model of a sweep, and each job's status. Build it with
    :func:`hz.sweep` or read a sweep folder back with :meth:`Sweep.open`; do not subclass.

    Attributes:
        frame: the results, one row per (model, detector, layer, head): ``job, series, model,
            step`` (Int64, missing for a plain model), ``detector, layer, head, score,
            threshold`` (NaN when the detector has none), ``passes``; sorted by ``series,
            step, model, detector, layer, head``.
        jobs: one row per job, run or not: ``job, series, model, step, source, revision,
            status`` (``done``, ``failed`` or ``pending``), ``error``, ``seconds``, ``atlas``
            (the atlas page's path relative to the sweep folder).
        meta: sweep.json: detectors, seed, options, executor, versions, dates, the job list.
        tracebacks: job id -> the traceback of its failure.
    """

    _FORMAT = "Sweep"

    frame: pd.DataFrame
    jobs: pd.DataFrame
    meta: dict[str, Any]
    tracebacks: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        import copy

        if not isinstance(self.frame, pd.DataFrame) or not isinstance(self.jobs, pd.DataFrame) \
                or not isinstance(self.meta, dict) or not isinstance(self.tracebacks, dict):
            raise InvalidOptionError("Sweep needs a results frame, a jobs frame and a metadata dict; build it with hz.sweep")
        for name, frame, cols in (("results", self.frame, RESULT_COLUMNS), ("jobs", self.jobs, JOB_COLUMNS)):
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise InvalidOptionError(f"the Sweep's {name} frame needs columns {cols}; missing {missing}")
        # own copies with the schema's dtypes: the caller's frames and dict are left alone
        object.__setattr__(self, "frame", _results_dtypes(self.frame))
        object.__setattr__(self, "jobs", _jobs_dtypes(self.jobs))
        object.__setattr__(self, "meta", copy.deepcopy(self.meta))
        object.__setattr__(self, "tracebacks", dict(self.tracebacks))

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Sweep:
        """Read the sweep folder ``folder`` (hz.sweep's ``out``) back, finished or not.

        Raises:
            InvalidOptionError: not a path, or no such folder.
            CorruptFileError: the folder has no readable sweep.json, or a results part is damaged.
        """
        path = _check_out(folder)
        if not path.is_dir():
            raise InvalidOptionError(f"{path} does not exist; give the folder hz.sweep(out=...) wrote")
        results, jobs, meta, tracebacks = _read_folder(path)
        return cls(results, jobs, {**meta, "folder": str(path)}, tracebacks)

    @property
    def detectors(self) -> list[str]:
        """The detectors the sweep ran."""
        return [str(d) for d in self.meta.get("detectors", list(dict.fromkeys(self.frame["detector"])))]

    def to_frame(self) -> pd.DataFrame:
        """The results (a copy): the columns and order of the Parquet dataset."""
        return self.frame.copy()

    def errors(self) -> pd.DataFrame:
        """The failed jobs: ``job, model, source, error, traceback``."""
        failed = cast(pd.DataFrame, self.jobs[self.jobs["status"] == "failed"])
        out = cast(pd.DataFrame, failed[["job", "model", "source", "error"]]).reset_index(drop=True)
        out["traceback"] = [self.tracebacks.get(j) for j in out["job"]]
        return out

    def plot(self, detector: str | None = None) -> Any:
        """Score against training step (or model) per head for ``detector`` (default: the
        first detector), as a plotly ``Figure`` (returned, never shown)."""
        if detector is None:
            if not self.detectors:
                raise InvalidOptionError("the sweep ran no detector, so there is nothing to plot")
            detector = self.detectors[0]
        if detector not in self.detectors:
            raise InvalidOptionError(f"unknown detector {detector!r}; this sweep ran {self.detectors}")
        from headzoo._sweep_page import sweep_figure

        return sweep_figure(self.to_frame(), detector)

    def _counts(self) -> dict[str, int]:
        statuses = [str(s) for s in self.jobs["status"]]
        return {s: statuses.count(s) for s in ("done", "failed", "pending")}

    def __repr__(self) -> str:
        c = self._counts()
        return (f"Sweep({len(self.jobs)} jobs: {c['done']} done, {c['failed']} failed, {c['pending']} pending; "
                f"{len(self.detectors)} detectors, {len(self.frame)} scores)")

    def _repr_html_(self) -> str:
        """The job table (offline, no script, every string escaped)."""
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(str(r['model']))}</td><td>{'' if r['step'] is None else int(r['step'])}</td>"
            f"<td>{esc(str(r['status']))}</td><td>{esc(r['error']) if isinstance(r['error'], str) else ''}</td></tr>"
            for r in self.jobs.astype(object).where(self.jobs.notna(), None).to_dict("records"))
        return (f"<div style='font-family:sans-serif;font-size:12px'><p>{esc(repr(self))}</p><table><thead><tr>"
                f"<th>model</th><th>step</th><th>status</th><th>error</th></tr></thead><tbody>{rows}</tbody></table></div>")

    def _to_payload(self) -> Payload:
        return Payload(self.frame, self.meta, tables={"jobs": self.jobs}, records={"tracebacks": self.tracebacks})

    @classmethod
    def _from_payload(cls, payload: Payload) -> Sweep:
        return cls(payload.frame, payload.tables["jobs"], payload.meta, dict(payload.records["tracebacks"]))
