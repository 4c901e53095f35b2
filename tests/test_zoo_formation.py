"""experiments/zoo_formation.py: the model card's "when does each head type form" table, from a
synthetic formation frame whose answer is known and end to end on a tiny training run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import experiment_script

import headzoo as hz

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "zoo_formation.py"


@pytest.fixture(scope="module")
def zf():
    return experiment_script(SCRIPT)


def test_the_table_takes_the_earliest_head_that_stays_and_the_task_loss_then(zf):
    formation = pd.DataFrame({
        "series": ["s"] * 4, "detector": ["induction", "induction", "induction", "previous_token"],
        "layer": [1, 1, 2, 0], "head": [0, 1, 0, 2],
        "step": pd.array([300, 100, pd.NA, 30], dtype="Int64"),
        "first_step": pd.array([300, 50, 10, 30], dtype="Int64"), "final_score": [0.9, 0.6, 0.1, 0.8],
    })
    log = pd.DataFrame({"step": [0, 50, 100, 200, 400], "loss_induction": [7.0, 6.5, 3.0, 1.0, 0.5]})
    out = zf.table(formation, log, {"induction": "induction", "previous_token": "induction", "successor": "successor"}, 400)
    ind = out.set_index("detector").loc["induction"]
    assert (ind["step"], ind["head"], ind["heads_formed"]) == (100, "L1H1", 2)  # L2H0 crossed but fell back
    assert (ind["task_loss_then"], ind["task_loss_end"]) == (3.0, 0.5)
    prev = out.set_index("detector").loc["previous_token"]
    assert (prev["step"], prev["head"], prev["task_loss_then"]) == (30, "L0H2", 7.0)
    succ = out.set_index("detector").loc["successor"]
    assert pd.isna(succ["step"]) and succ["heads_formed"] == 0  # no loss column for it: NaN, not an error
    text = zf.markdown(out)
    assert "| induction | 100 | L1H1 (0.60) | 2 | induction: 3.00 -> 0.50 |" in text
    assert "| successor | none stays over threshold |" in text


def test_end_to_end_on_a_tiny_run_agrees_with_formation_steps(tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, str(REPO / "experiments" / "train_zoo.py"), "--config", "tiny", "--steps", "12",
             "--log-every", "1", "--save-every", "4", "--checkpoints", "4", "--out", str(run)]
    subprocess.run(train, check=True, capture_output=True)
    out = tmp_path / "formation"
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--out", str(out), "--detectors", "previous_token",
                           "induction"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "formation.md").read_text() in done.stdout
    assert (out / "formation.md").read_text().count("\n") == 2 + 2  # header, rule, one row per detector
    frame = hz.Sweep.open(out / "sweep").to_frame()
    frame = frame[frame["detector"].isin(["previous_token", "induction"])]
    assert sorted(frame["step"].unique()) == sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    expected = hz.formation_steps(frame)
    expected = expected[expected["first_step"].notna()].reset_index(drop=True)
    written = pd.read_csv(out / "formation.csv")
    assert len(written) == len(expected)


def test_a_run_without_snapshots_or_with_an_unknown_detector_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "0 snapshots" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "o"), "--detectors", "nope"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "'nope'" in done.stderr
