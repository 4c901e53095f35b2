"""experiments/training_dynamics.py without a sweep: the numbers, the figure and the page from a
synthetic results frame (schema of Sweep.to_frame()) and training log whose answer is known by
construction: previous-token L0H1 forms at step 10, induction L1H0 at step 30, the loss on
induction tokens drops between them."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from conftest import experiment_script

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "training_dynamics.py"
STEPS = [0, 1, 3, 10, 30, 100]


@pytest.fixture(scope="module")
def td():
    return experiment_script(SCRIPT)


def _score(detector: str, layer: int, head: int, step: int) -> float:
    if (detector, layer, head) == ("previous_token", 0, 1):
        return 0.9 if step >= 10 else 0.1
    if (detector, layer, head) == ("induction", 1, 0):
        # crosses once early, falls back, then forms for good at step 30
        return {3: 0.5, 30: 0.7, 100: 0.8}.get(step, 0.05)
    if (detector, layer, head) == ("induction", 1, 1):
        return 0.3  # never over threshold
    return 0.02 * (layer + 1)


@pytest.fixture
def results() -> pd.DataFrame:
    rows = [{"series": "zoo-test", "model": f"zoo-test@step-{s}", "step": s, "detector": d, "layer": layer, "head": h,
             "score": _score(d, layer, h, s), "threshold": 0.4}
            for s in STEPS for d in ("induction", "previous_token", "duplicate_token") for layer in (0, 1) for h in (0, 1)]
    frame = pd.DataFrame(rows)
    frame["step"] = frame["step"].astype("Int64")
    frame["passes"] = frame["score"] >= frame["threshold"]
    return frame


@pytest.fixture
def log() -> pd.DataFrame:
    steps = list(range(0, 101, 5))
    # flat, then the induction loss drops between steps 20 and 40
    return pd.DataFrame({"step": steps, "loss": [4.0 if s < 20 else 3.0 if s > 40 else 3.5 for s in steps],
                         "loss_induction": [6.0 if s < 20 else 1.0 if s > 40 else 3.5 for s in steps]})


@pytest.fixture
def formation(results) -> pd.DataFrame:
    """What formation_steps (schema.md) gives for this frame, written out by hand."""
    rows = []
    for (d, layer, h), part in results.groupby(["detector", "layer", "head"]):
        ok = part.sort_values("step")["passes"].tolist()
        stays = next((STEPS[i] for i in range(len(ok)) if all(ok[i:])), None)
        first = next((STEPS[i] for i in range(len(ok)) if ok[i]), None)
        rows.append({"series": "zoo-test", "detector": d, "layer": layer, "head": h, "step": stays, "first_step": first,
                     "final_score": float(part[part["step"] == 100]["score"].iloc[0])})
    frame = pd.DataFrame(rows)
    frame[["step", "first_step"]] = frame[["step", "first_step"]].astype("Int64")
    return frame


def test_findings_name_the_heads_and_the_steps_they_form(td, results, log, formation):
    before = results.copy(), log.copy(), formation.copy()
    facts = td.findings(results, log, formation)
    ind, prev = facts["heads"]["induction"], facts["heads"]["previous_token"]
    assert (ind["label"], ind["step"], ind["first_step"], ind["step_before"]) == ("L1H0", 30, 3, 10)
    assert ind["final_score"] == pytest.approx(0.8) and ind["score_before"] == pytest.approx(0.05)
    assert (prev["label"], prev["step"], prev["first_step"]) == ("L0H1", 10, 10)
    assert facts["passing"] == {"induction": ["L1H0"], "previous_token": ["L0H1"], "duplicate_token": []}
    # the losses around the induction head's formation come from the log (step 10 -> 30)
    assert facts["at"]["induction"]["loss_induction"] == {"before": pytest.approx(6.0), "at": pytest.approx(3.5)}
    assert facts["loss"]["loss_induction"]["half_step"] == 20 and facts["loss"]["loss"]["last"] == 3.0
    for got, want in zip((results, log, formation), before):
        pd.testing.assert_frame_equal(got, want)  # inputs untouched


def test_no_head_formed_is_said_so(td, results, log, formation):
    late = formation.assign(step=pd.array([None] * len(formation), dtype="Int64"))
    facts = td.findings(results, log, late)
    assert facts["heads"]["induction"]["formed"] is False and facts["heads"]["induction"]["label"] == "L1H0"
    text = td.page(facts, config="test", figure_name="f.svg")
    assert "No induction head stays over threshold" in text and "forms at step" not in text


def test_the_figure_has_loss_above_scores_on_a_log_step_axis_with_formation_marks(td, results, log, formation):
    facts = td.findings(results, log, formation)
    fig = td.figure(results, log, facts)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    loss = [t for t in fig.data if t.yaxis == "y"]
    assert {t.name for t in loss} == {"training loss", "loss on induction tokens"}
    assert list(loss[0].x) == [s + 1 for s in log["step"]]
    scores = [t for t in fig.data if t.yaxis == "y2"]
    assert len(scores) == 2 * 4  # every head of both shown detectors
    shown = {t.name for t in scores if t.showlegend}
    assert shown == {"induction L1H0", "previous_token L0H1"}  # the heads over threshold at the end
    marks = sorted(s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1)
    assert sorted(set(marks)) == [11, 31] and len(marks) == 4  # step + 1 of each formation, on both rows


def test_the_svg_is_well_formed_and_labels_the_heads(td, results, log, formation):
    facts = td.findings(results, log, formation)
    results = results.assign(series="zoo<&>")  # every label is escaped
    facts["series"] = ["zoo<&>"]
    svg = td.figure_svg(results, log, facts)
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "Heads forming during training: zoo<&>" in texts
    assert {"induction L1H0", "previous_token L0H1"} <= set(texts)
    assert any("induction L1H0 forms (step 30)" == t for t in texts)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) >= 2 + 8  # two loss curves, eight head curves (plus legend swatches)


def test_the_page_quotes_the_numbers_and_runs_no_code(td, results, log, formation, tmp_path):
    facts = td.findings(results, log, formation)
    paths = td.write_outputs(results, log, facts, out=tmp_path / "out", docs=tmp_path / "docs", config="test")
    text = (tmp_path / "docs" / "training-dynamics.md").read_text()
    assert "**L1H0** forms at step **30**" in text and "first crossed at step 3" in text
    assert "**L0H1** forms at step **10**" in text and "half-way down by step 20" in text
    assert "previous-token head forms before the induction head" in text
    assert "```python" not in text  # tests/test_docs.py would run it, and it needs a training run
    figure = next(p for p in paths if p.name.startswith("training-dynamics.") and p.suffix in (".png", ".svg"))
    assert f"]({figure.name})" in text and figure.stat().st_size > 0
    back = td.read_results(tmp_path / "docs" / "data" / "training-dynamics-scores.csv")
    pd.testing.assert_frame_equal(back.reset_index(drop=True),
                                  results.sort_values(["series", "step", "detector", "layer", "head"]).reset_index(drop=True),
                                  check_exact=False, rtol=1e-6)
    assert math.isclose(pd.read_csv(tmp_path / "docs" / "data" / "training-dynamics-loss.csv")["loss_induction"].iloc[-1], 1.0)
    assert (tmp_path / "out" / "training-dynamics.html").stat().st_size > 0
