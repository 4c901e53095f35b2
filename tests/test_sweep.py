"""hz.sweep: one atlas job per model or checkpoint, serial or on Ray, gathered in one Parquet
dataset; resumable; a broken model is reported and skipped.

The models are tiny planted models and checkpoint folders written here, with three cheap
pattern detectors and the atlas's examples and importance off, so each job takes about a second.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pandas as pd
import pytest

import headzoo as hz
from headzoo._checkpoint import load_checkpoint, save_checkpoint
from headzoo._cli import main
from headzoo._sweep import JOB_COLUMNS, RESULT_COLUMNS
from headzoo._sweep_models import expand_models
from headzoo.testing import PlantSpec, planted_model, word_tokenizer

DETECTORS = ["previous_token", "induction", "duplicate_token"]
FAST = dict(examples=False, importance=False)
SPECS = {
    "alpha": PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=32, previous_token=(0, 1), induction=(1, 0), seed=1),
    "beta": PlantSpec(n_layers=2, n_heads=3, d_head=16, d_vocab=40, n_ctx=32, previous_token=(0, 0), induction=(1, 2), seed=2),
    "gamma": PlantSpec(n_layers=3, n_heads=2, d_head=32, d_vocab=40, n_ctx=32, previous_token=(1, 1), duplicate_token=(0, 0),
                       induction=(2, 0), seed=3),
}
SRC = str(Path(hz.__file__).resolve().parents[1])


def _broken_loader(message: str):
    raise RuntimeError(message)


def planted_entries() -> list[hz.SweepModel]:
    return [hz.SweepModel(name, None, loader=functools.partial(planted_model, spec, name=name))
            for name, spec in SPECS.items()]


def _loads_checkpoint_folders() -> bool:
    import inspect

    # hz.load_model reads headzoo checkpoint folders once the models helper's change is merged
    return "revision" in inspect.signature(hz.load_model).parameters


def _run_folder(root: Path, steps=(0, 10, 200), name: str = "tinyrun") -> Path:
    """A training run's checkpoint folders ``root/checkpoints/step-XXXXXX`` (random weights per step)."""
    import torch
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from headzoo._backends import from_bridge_state_dict

    cfg = dict(n_layers=2, d_model=32, n_ctx=32, d_head=16, n_heads=2, d_vocab=32, d_mlp=64, act_fn="gelu",
               normalization_type="LN", positional_embedding_type="standard")
    for step in steps:
        torch.manual_seed(step)
        model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
        save_checkpoint(root / "checkpoints" / f"step-{step:06d}", from_bridge_state_dict(model.state_dict(), cfg), cfg,
                        word_tokenizer([f"w{i}" for i in range(30)]), name=name, step=step)
    return root


def _as_loaders(entries: list[hz.SweepModel]) -> list[hz.SweepModel]:
    # the same entries, loaded by headzoo._checkpoint directly (hz.load_model learns folders in another branch)
    return [dataclasses.replace(e, source=None, loader=functools.partial(load_checkpoint, e.source)) for e in entries]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    run = _run_folder(root / "run")
    ckpts = _as_loaders(expand_models(str(run / "checkpoints" / "step-*")))
    # a damaged checkpoint (weights missing), loaded by a function Ray workers can import
    (root / "garbage").mkdir()
    (root / "garbage" / "config.json").write_text('{"format": "headzoo.checkpoint/1"}')
    broken = hz.SweepModel("broken", None, loader=functools.partial(load_checkpoint, root / "garbage"))
    models = planted_entries() + ckpts + [broken]
    return types.SimpleNamespace(root=root, run=run, models=models)


@pytest.fixture(scope="module")
def serial(workspace):
    given = list(workspace.models)
    with pytest.warns(RuntimeWarning, match=r"1 of 7 sweep jobs failed \(broken\)"):
        result = hz.sweep(workspace.models, DETECTORS, out=workspace.root / "serial", executor="serial", **FAST)
    assert workspace.models == given  # the list given is not modified
    return result


# -- models ---------------------------------------------------------------------------------------
def test_expand_models_reads_steps_and_series_from_checkpoint_folders(tmp_path):
    run = _run_folder(tmp_path / "zoo", steps=(0, 10))
    by_glob = expand_models(str(run / "checkpoints" / "step-*"))
    assert [(e.model, e.step, e.series) for e in by_glob] == [("tinyrun@step-000000", 0, "tinyrun"),
                                                             ("tinyrun@step-000010", 10, "tinyrun")]
    by_revision = expand_models(f"{run / 'checkpoints'}@step-*1*")
    assert [(e.model, e.step, e.revision, e.source) for e in by_revision] == [
        ("tinyrun@step-000010", 10, "step-000010", str(run / "checkpoints"))]
    # a folder without a config's step: the step comes from its name
    plain = tmp_path / "other" / "ckpt_step_42"
    plain.mkdir(parents=True)
    assert [(e.model, e.step, e.series) for e in expand_models(plain)] == [("other@ckpt_step_42", 42, "other")]
    (tmp_path / "other" / "final").mkdir()
    assert [(e.model, e.source, e.revision, e.step) for e in expand_models(f"{tmp_path / 'other'}@final")] == [
        ("other@final", str(tmp_path / "other"), "final", None)]
    hub = expand_models(["EleutherAI/pythia-70m@step1000", "planted-demo"])
    assert [(e.model, e.source, e.revision, e.step, e.series) for e in hub] == [
        ("pythia-70m@step1000", "EleutherAI/pythia-70m", "step1000", 1000, "EleutherAI/pythia-70m"),
        ("planted-demo", "planted-demo", None, None, None)]


def test_expand_models_makes_labels_unique_and_refuses_duplicates(tmp_path):
    for parent in ("a", "b"):
        (tmp_path / parent / "model").mkdir(parents=True)
    labels = [e.model for e in expand_models([tmp_path / "a" / "model", tmp_path / "b" / "model"])]
    assert labels == ["model", "model#2"]
    with pytest.raises(hz.InvalidOptionError, match="same model is given twice"):
        expand_models([tmp_path / "a" / "model", str(tmp_path / "a" / "model")])


@pytest.mark.parametrize("models, error, message", [
    ([], hz.InvalidOptionError, "models is empty"),
    (3, hz.InvalidOptionError, "models must be"),
    ([3.5], hz.InvalidOptionError, "a sweep model must be"),
    ("/no/such/dir/step-*", hz.ModelNotFoundError, "matches no folder"),
    ("./no/such/folder", hz.ModelNotFoundError, "does not exist"),
    ("zoo-smal", hz.ModelNotFoundError, "Did you mean 'zoo-small'"),
    ("EleutherAI/pythia-70m@step*", hz.InvalidOptionError, "only for a local folder"),
    ("planted-demo@v1", hz.InvalidOptionError, "no revisions"),
])
def test_expand_models_refuses_bad_inputs(models, error, message):
    with pytest.raises(error, match=message):
        expand_models(models)


def test_sweep_model_checks_its_fields():
    with pytest.raises(hz.InvalidOptionError, match="exactly one of source"):
        hz.SweepModel("x", "zoo-small", loader=lambda: None)
    with pytest.raises(hz.InvalidOptionError, match="step must be"):
        hz.SweepModel("x", "zoo-small", step=-1)


# -- the sweep ------------------------------------------------------------------------------------
def test_serial_sweep_writes_the_dataset_schema(serial, workspace):
    out = workspace.root / "serial"
    frame = serial.to_frame()
    assert list(frame.columns) == RESULT_COLUMNS
    text = ("job", "series", "model", "detector")  # "str" on pandas 3, object columns of str before it
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in text)
    assert {c: str(t) for c, t in frame.dtypes.items() if c not in text} == {
        "step": "Int64", "layer": "int64", "head": "int64", "score": "float64", "threshold": "float64", "passes": "bool"}
    assert frame.equals(frame.sort_values(["series", "step", "model", "detector", "layer", "head"]).reset_index(drop=True))
    # every head of every finished model, once per detector
    shapes = {"alpha": 4, "beta": 6, "gamma": 6, "tinyrun@step-000000": 4, "tinyrun@step-000010": 4, "tinyrun@step-000200": 4}
    assert frame.groupby("model").size().to_dict() == {m: n * len(DETECTORS) for m, n in shapes.items()}
    steps = frame.drop_duplicates("model").set_index("model")["step"]
    assert steps["tinyrun@step-000200"] == 200 and pd.isna(steps["alpha"])
    assert set(frame.loc[frame["model"].str.startswith("tinyrun"), "series"]) == {"tinyrun"}
    assert (frame["passes"] == (frame["score"] >= frame["threshold"])).all()
    # the planted heads are found where they were planted
    alpha = frame[(frame["model"] == "alpha") & frame["passes"]]
    assert {(d, la, h) for d, la, h in zip(alpha["detector"], alpha["layer"], alpha["head"])} >= {
        ("previous_token", 0, 1), ("induction", 1, 0)}
    # the files: hive-partitioned parts pandas reads as one table, job records, atlases, meta
    direct = pd.read_parquet(out / "results")
    direct["job"] = direct["job"].astype(str)
    direct = direct[RESULT_COLUMNS].sort_values(["series", "step", "model", "detector", "layer", "head"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(direct, frame, check_exact=True)
    jobs = serial.jobs
    assert list(jobs.columns) == JOB_COLUMNS and len(jobs) == 7
    for row in jobs[jobs["status"] == "done"].itertuples():
        assert (out / row.atlas).is_file() and (out / "atlases" / row.job / "scores.parquet").is_file()
        assert json.loads((out / "jobs" / f"{row.job}.json").read_text())["status"] == "done"
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["detectors"] == DETECTORS and meta["executor"]["name"] == "serial" and len(meta["jobs"]) == 7
    assert (out / "index.html").is_file() and not (out / ".partial").exists()


def test_a_broken_model_is_reported_and_the_others_finish(serial):
    errors = serial.errors()
    assert errors["model"].tolist() == ["broken"]
    assert errors["error"].iloc[0].startswith("CheckpointError: ")
    assert "is not a complete headzoo checkpoint: it lacks ['model.safetensors'" in errors["error"].iloc[0]
    assert "load_checkpoint" in errors["traceback"].iloc[0]
    assert serial.jobs.set_index("model")["status"].drop("broken").eq("done").all()
    assert "broken" not in set(serial.to_frame()["model"])


def test_sweep_round_trips_and_opens_from_its_folder(serial, workspace, tmp_path):
    path = serial.save(tmp_path / "sweep.parquet")
    back = hz.Sweep.load(path)
    pd.testing.assert_frame_equal(back.to_frame(), serial.to_frame(), check_exact=True)
    pd.testing.assert_frame_equal(back.jobs, serial.jobs, check_exact=True)
    assert back.meta == serial.meta and back.tracebacks == serial.tracebacks
    opened = hz.Sweep.open(workspace.root / "serial")
    pd.testing.assert_frame_equal(opened.to_frame(), serial.to_frame(), check_exact=True)
    assert "broken" in serial._repr_html_() and "7 jobs: 6 done, 1 failed" in repr(serial)


def test_html_escapes_model_names_and_errors_and_a_damaged_file_is_refused(serial, tmp_path):
    hostile = "<script>alert(1)</script>"
    jobs = serial.jobs.assign(model=hostile, error=hostile)
    page = hz.Sweep(serial.to_frame().assign(model=hostile), jobs, serial.meta)._repr_html_()
    assert "<script" not in page and "&lt;script&gt;" in page
    path = serial.save(tmp_path / "s.parquet")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(hz.CorruptFileError, match="checksum"):
        hz.Sweep.load(path)
    with pytest.raises(hz.CorruptFileError, match="sweep.json"):
        hz.Sweep.open(tmp_path)


def test_plot_checks_the_detector_and_delegates_to_the_page_module(serial):
    with pytest.raises(hz.InvalidOptionError, match="unknown detector 'copying'"):
        serial.plot("copying")
    assert type(serial.plot()).__name__ == "Figure"


@pytest.mark.slow
def test_ray_with_two_workers_equals_serial_exactly(serial, workspace):
    pytest.importorskip("ray")
    with pytest.warns(RuntimeWarning, match="1 of 7"):
        ray = hz.sweep(workspace.models, DETECTORS, out=workspace.root / "ray", executor="ray", workers=2, **FAST)
    assert ray.meta["executor"]["name"] == "ray" and ray.meta["executor"]["cluster_cpus"] == 2
    pd.testing.assert_frame_equal(ray.to_frame(), serial.to_frame(), check_exact=True)
    pd.testing.assert_frame_equal(ray.jobs.drop(columns="seconds"), serial.jobs.drop(columns="seconds"))
    assert ray.errors()["error"].tolist() == serial.errors()["error"].tolist()


@pytest.mark.slow
@pytest.mark.skipif(not _loads_checkpoint_folders(), reason="hz.load_model reads checkpoint folders once merged")
def test_sweep_over_a_glob_of_checkpoint_folders_loads_them_with_load_model(workspace, serial):
    result = hz.sweep(str(workspace.run / "checkpoints" / "step-*"), DETECTORS, out=workspace.root / "glob",
                      executor="serial", **FAST)
    mine = serial.to_frame()
    mine = mine[mine["series"] == "tinyrun"].drop(columns="job").reset_index(drop=True)
    pd.testing.assert_frame_equal(result.to_frame().drop(columns="job"), mine, check_exact=True)


_KILLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import headzoo as hz
    from test_sweep import DETECTORS, FAST, planted_entries
    hz.sweep(planted_entries(), DETECTORS, out={out!r}, executor="serial", progress=False, **FAST)
""")


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_recomputing_finished_jobs(serial, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED.format(tests=str(Path(__file__).parent), out=str(out))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not list((out / "jobs").glob("*.json")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate()
    finished = sorted(p.stem for p in (out / "jobs").glob("*.json"))
    assert 1 <= len(finished) < len(SPECS), err.decode()[-2000:]
    before = {j: ((out / "jobs" / f"{j}.json").read_text(),
                  (out / "results" / f"job={j}" / "part-0.parquet").stat().st_mtime_ns) for j in finished}
    resumed = hz.sweep(planted_entries(), DETECTORS, out=out, executor="serial", **FAST)
    assert resumed.meta["executor"]["skipped_done"] == len(finished)
    after = {j: ((out / "jobs" / f"{j}.json").read_text(),
                 (out / "results" / f"job={j}" / "part-0.parquet").stat().st_mtime_ns) for j in finished}
    assert after == before  # finished jobs were neither rerun nor rewritten
    assert (resumed.jobs["status"] == "done").all()
    whole = serial.to_frame()
    whole = whole[whole["model"].isin(list(SPECS))].reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed.to_frame(), whole, check_exact=True)


def test_changed_options_make_new_jobs_and_a_rerun_skips_done_ones(tmp_path):
    import torch

    entry = planted_entries()[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = hz.sweep(entry, iter(["previous_token"]), out=tmp_path, executor="serial", atlas=False, **FAST)
        assert torch.get_num_threads() == 2  # the job ran with threads_per_job=1, then gave the threads back
    finally:
        torch.set_num_threads(threads)
    assert set(first.to_frame()["detector"]) == {"previous_token"}
    again = hz.sweep(entry, ["previous_token"], out=tmp_path, executor="serial", atlas=False, **FAST)
    assert again.meta["executor"]["skipped_done"] == 1 and again.jobs["job"].tolist() == first.jobs["job"].tolist()
    reseeded = hz.sweep(entry, ["previous_token"], out=tmp_path, executor="serial", atlas=False, seed=1, **FAST)
    assert reseeded.meta["executor"]["skipped_done"] == 0
    assert reseeded.jobs["job"].tolist() != first.jobs["job"].tolist()
    assert first.jobs["atlas"].isna().all() and not (tmp_path / "atlases").exists()


def test_failed_jobs_are_retried_unless_told_not_to(tmp_path):
    broken = [hz.SweepModel("broken", None, loader=functools.partial(_broken_loader, "no"))]
    with pytest.warns(RuntimeWarning):
        hz.sweep(broken, ["previous_token"], out=tmp_path, executor="serial", **FAST)
    record = (tmp_path / "jobs").glob("*.json").__next__()
    stamp = record.stat().st_mtime_ns
    with pytest.warns(RuntimeWarning):
        hz.sweep(broken, ["previous_token"], out=tmp_path, executor="serial", retry_failed=False, **FAST)
    assert record.stat().st_mtime_ns == stamp
    with pytest.warns(RuntimeWarning):
        hz.sweep(broken, ["previous_token"], out=tmp_path, executor="serial", **FAST)
    assert record.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("kwargs, message", [
    (dict(executor="dask"), "executor must be"),
    (dict(executor="ray", workers=0), "workers must be a positive integer"),
    (dict(executor="serial", workers=2), "Ray settings"),
    (dict(threads_per_job=0), "threads_per_job"),
    (dict(seed=-1), "seed must be"),
    (dict(gpus_per_job=-1), "gpus_per_job"),
    (dict(batch_size=object()), "options"),
    (dict(no_such_option=1), "unknown option"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, message):
    calls = []
    entry = [hz.SweepModel("x", None, loader=lambda: calls.append(1))]
    with pytest.raises(hz.InvalidOptionError, match=message):
        hz.sweep(entry, ["previous_token"], out=tmp_path / "o", **kwargs)
    assert not calls and not (tmp_path / "o").exists()


def test_unknown_detector_and_out_file_are_refused(tmp_path):
    entry = planted_entries()[:1]
    with pytest.raises(hz.UnknownDetectorError):
        hz.sweep(entry, ["previos_token"], out=tmp_path / "o")
    (tmp_path / "file").write_text("x")
    with pytest.raises(hz.InvalidOptionError, match="is a file"):
        hz.sweep(entry, out=tmp_path / "file")


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(hz.InvalidOptionError, match=r'pip install "headzoo\[ray\]"'):
        hz.sweep(planted_entries()[:1], ["previous_token"], out=tmp_path, executor="ray")
    # without Ray, the default executor is the serial one
    result = hz.sweep(planted_entries()[:1], ["previous_token"], out=tmp_path, atlas=False, **FAST)
    assert result.meta["executor"]["name"] == "serial"


# -- command line -----------------------------------------------------------------------------
def test_cli_sweep_exits_1_and_names_a_failed_model(tmp_path, capsys):
    corrupt = tmp_path / "corrupt" / "step-000005"
    corrupt.mkdir(parents=True)
    (corrupt / "config.json").write_text('{"format": "headzoo.checkpoint/1", "step": 5}')
    out = tmp_path / "out"
    code = main(["sweep", "planted-demo", str(corrupt), "--out", str(out), "--executor", "serial", "--detectors",
                 "previous_token", "--no-examples", "--no-importance", "--no-atlas"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "1 of 2 jobs done, 1 failed" in captured.out and "failed: corrupt@step-000005:" in captured.out
    assert "retries them" in captured.err
    assert hz.Sweep.open(out).jobs.set_index("model").loc["planted-demo", "status"] == "done"


def test_cli_sweep_usage_errors_exit_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nothing" / "step-*"), "--out", str(tmp_path / "o")]) == 2
    assert "matches no folder" in capsys.readouterr().err
    assert main(["sweep", "planted-demo", "--out", str(tmp_path / "o"), "--executor", "serial", "--workers", "2"]) == 2
    assert "Ray settings" in capsys.readouterr().err
    assert main(["sweep", "planted-demo"]) == 2  # --out is required
