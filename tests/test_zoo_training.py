"""The curriculum, the training script's reproducibility, and checkpoint loading (WIP, issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import headzoo as hz
from headzoo._backends import available_backends, from_bridge_state_dict
from headzoo._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from headzoo._curriculum import TASKS, VOCABULARY, Curriculum
from headzoo.testing import word_tokenizer

REPO = Path(__file__).resolve().parents[1]


def test_curriculum_is_seeded_streaming_and_labelled():
    a = next(Curriculum(seed=3).batches(4, start=7))
    b = next(Curriculum(seed=3).batches(4, start=7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ids, tasks = next(Curriculum(seed=0).batches(64))
    assert ids.shape == (64, 128) and int(ids.max()) < len(VOCABULARY) + 2 and (ids[:, 0] == 0).all()
    assert set(tasks.unique().tolist()) == set(range(len(TASKS)))
    # an induction-labelled token repeats the token after an earlier copy of its predecessor
    for row_ids, row_tasks in zip(ids[:8], tasks[:8]):
        for i in (row_tasks == TASKS.index("induction")).nonzero().flatten().tolist():
            prev = row_ids[i - 1]
            earlier = (row_ids[: i - 1] == prev).nonzero().flatten()
            assert any(row_ids[j + 1] == row_ids[i] for j in earlier.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tiny", "tiny2"])  # curriculum v1 and v2
def test_training_is_reproducible(tmp_path, config):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        subprocess.run([sys.executable, str(REPO / "experiments" / "train_zoo.py"), "--config", config, "--out", str(out),
                        "--steps", "12", "--log-every", "1"], check=True, capture_output=True)
        runs.append([json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()])
    assert runs[0] == runs[1] and len(runs[0]) == 12


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_loss_curve(tmp_path):
    script = [sys.executable, str(REPO / "experiments" / "train_zoo.py"), "--config", "tiny", "--steps", "12",
              "--log-every", "1", "--save-every", "4"]
    subprocess.run([*script, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    subprocess.run([*script, "--out", str(tmp_path / "split"), "--stop-after", "8"], check=True, capture_output=True)
    subprocess.run([*script, "--out", str(tmp_path / "split")], check=True, capture_output=True)
    whole = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    split = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in split] == list(range(12))
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], rel=1e-5)


def _tiny_checkpoint(tmp_path) -> Path:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=2, d_model=64, n_ctx=64, d_head=32, n_heads=2, d_vocab=len(VOCABULARY) + 2, d_mlp=256,
               act_fn="gelu", normalization_type="LN", positional_embedding_type="standard")
    torch.manual_seed(0)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    return save_checkpoint(tmp_path / "ckpt", from_bridge_state_dict(model.state_dict(), cfg), cfg,
                           word_tokenizer(list(VOCABULARY)), name="zoo-test")


@pytest.mark.parametrize("backend", available_backends())
def test_checkpoint_loads_offline_into_either_class(tmp_path, backend):
    folder = _tiny_checkpoint(tmp_path)
    a = load_checkpoint(folder, backend=backend)
    b = load_checkpoint(folder, backend="bridge")
    x = torch.randint(0, len(VOCABULARY) + 2, (2, 16))
    torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-4)
    assert a.tokenizer.convert_ids_to_tokens([2])[0] == VOCABULARY[0]
    assert hz.model_info(a).name == "zoo-test"


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path):
    folder = _tiny_checkpoint(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load_checkpoint(folder)
    config = json.loads((folder / "config.json").read_text())
    config["format"] = "something-else/1"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a headzoo checkpoint"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(folder)


# -- train_zoo --checkpoints: log-spaced snapshots as headzoo checkpoint folders -----------------
SNAPSHOT_RUN = ["--config", "tiny", "--steps", "12", "--log-every", "1", "--save-every", "4", "--checkpoints", "5"]


def _train(out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, str(REPO / "experiments" / "train_zoo.py"), *SNAPSHOT_RUN, "--out", str(out), *extra],
                   check=True, capture_output=True)


def _snapshots(out: Path) -> dict[int, dict]:
    """step -> config.json of each snapshot folder of a run."""
    return {int(f.name.removeprefix("step-")): json.loads((f / "config.json").read_text())
            for f in sorted((out / "checkpoints").iterdir())}


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snapshots") / "whole"
    _train(out)
    return out


@pytest.mark.slow
def test_snapshots_are_step_0_and_log_spaced_to_the_last_step(snapshot_run):
    import math

    snaps = _snapshots(snapshot_run)
    steps = sorted(snaps)
    assert steps[0] == 0 and steps[-1] == 12 and len(steps) == 5
    assert all(snaps[s]["step"] == s for s in steps)  # the folder name and the recorded step agree
    # evenly spaced in log(1 + step), up to rounding to whole steps: dense early, sparse late
    ideal = [math.log1p(12) * i / 4 for i in range(5)]
    assert all(abs(math.log1p(s) - x) < math.log1p(s + 1) - math.log1p(s) for s, x in zip(steps, ideal))
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]


@pytest.mark.slow
def test_each_snapshot_loads_and_the_last_is_the_exported_model(snapshot_run):
    snaps = _snapshots(snapshot_run)
    x = torch.randint(0, len(VOCABULARY) + 2, (2, 16))
    outputs = {}
    for step in snaps:
        model = hz.load_model(snapshot_run / "checkpoints" / f"step-{step:06d}")
        assert model.cfg.model_name == f"zoo-tiny@step-{step}"
        outputs[step] = model(x).detach()
    final = hz.load_model(snapshot_run / "model")
    assert final.cfg.model_name == "zoo-tiny"
    assert snaps[12]["sha256"] == json.loads((snapshot_run / "model" / "config.json").read_text())["sha256"]
    torch.testing.assert_close(outputs[12], final(x).detach(), atol=0, rtol=0)
    assert not torch.allclose(outputs[0], outputs[12], atol=1e-3)  # the snapshots are not all one model


@pytest.mark.slow
def test_a_killed_and_resumed_run_writes_the_same_snapshots(snapshot_run, tmp_path):
    split = tmp_path / "split"
    _train(split, "--stop-after", "8")
    assert sorted(_snapshots(split)) == [0, 1, 3, 6]  # killed before the last one
    _train(split)
    whole, resumed = _snapshots(snapshot_run), _snapshots(split)
    assert sorted(resumed) == sorted(whole)
    assert {s: c["sha256"] for s, c in resumed.items()} == {s: c["sha256"] for s, c in whole.items()}
    assert not (split / "checkpoints" / "step-000012.tmp").exists()


@pytest.mark.slow
def test_a_curriculum_v2_model_loads_and_validate_zoo_reports_every_detector(tmp_path):
    """tiny2 trains on curriculum v2; its export carries the WordPiece tokenizer, loads into both
    classes, and the validation study writes its table with a row per scored detector."""
    from headzoo._curriculum_v2 import vocabulary

    run = tmp_path / "run"
    subprocess.run([sys.executable, str(REPO / "experiments" / "train_zoo.py"), "--config", "tiny2", "--out", str(run),
                    "--steps", "6"], check=True, capture_output=True)
    for backend in available_backends():
        model = hz.load_model(str(run / "model"), backend=backend)
        assert model.cfg.d_vocab == len(vocabulary()) + 2
        assert model.tokenizer.tokenize("Karen's tamsin") == ["Karen", "'", "s", "tam", "##sin"]
    out = tmp_path / "validation"
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "validate_zoo.py"), str(run / "model"), "--out",
                           str(out), "--n", "16", "--draws", "2", "--k", "1", "--methods", "mean"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads((out / "tasks.json").read_text())
    assert facts["curriculum"] == "v2" and facts["ioi_held_out_templates"]["templates"] == 16
    summary = __import__("pandas").read_csv(out / "summary.csv")
    scored = set(__import__("pandas").read_parquet(out / "scores.parquet")["detector"])
    assert set(summary["detector"]) == scored and len(scored) >= 15
    assert (summary["random_draws"] == 2).all()
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(scored)
