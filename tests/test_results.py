"""HeadScores: tidy frame, matrix, top, plot, save/load round trip, offline HTML."""

from __future__ import annotations

import pandas as pd
import pytest

import headzoo as hz


@pytest.fixture(scope="module")
def scores():
    from conftest import cached_planted
    from headzoo.testing import PlantSpec

    spec = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64,
                     previous_token=(0, 1), duplicate_token=(1, 2), induction=(2, 0), seed=11)
    names = ["current_token", "duplicate_token", "first_token", "induction", "previous_token"]
    return hz.detect(cached_planted(spec, "bridge", True), names, n_prompts=4, seed=3)


def test_frame_is_tidy(scores):
    frame = scores.to_frame()
    assert list(frame.columns[:4]) == ["detector", "layer", "head", "score"]
    assert frame["layer"].dtype == "int64" and frame["head"].dtype == "int64"
    assert not frame.duplicated(["detector", "layer", "head"]).any()
    assert len(frame) == 5 * 12
    assert frame["score"].between(0, 1).all()
    frame.loc[0, "score"] = -5  # a copy: the result is unchanged
    assert scores.to_frame().loc[0, "score"] != -5


def test_matrix_and_top(scores):
    m = scores.matrix("induction")
    assert m.shape == (3, 4) and m.index.name == "layer" and m.columns.name == "head"
    assert m.loc[2, 0] == scores.to_frame().query("detector == 'induction' and layer == 2 and head == 0")["score"].item()
    top = scores.top(2)
    assert len(top) == 2 * len(scores.detectors)
    assert top.groupby("detector")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    assert scores.top(1, "previous_token")[["layer", "head"]].values.tolist() == [[0, 1]]
    with pytest.raises(hz.UnknownDetectorError):
        scores.matrix("nope")
    with pytest.raises(KeyError, match="copying"):
        scores.matrix("previous_token", "copying")
    assert scores.matrix("induction", "copying").loc[2, 0] == pytest.approx(1.0)


def test_labels_use_thresholds(scores):
    labels = scores.labels()
    found = {(r.detector, r.layer, r.head) for r in labels.itertuples()}
    assert {("previous_token", 0, 1), ("duplicate_token", 1, 2), ("induction", 2, 0)} <= found


def test_plot_returns_a_figure(scores):
    import plotly.graph_objects as go

    fig = scores.plot("induction")
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    assert fig.data[0].z.shape == (3, 4)
    assert len(scores.plot().data) == len(scores.detectors)


def test_save_load_round_trips_exactly(scores, tmp_path):
    path = scores.save(tmp_path / "s.parquet")
    back = hz.HeadScores.load(path)
    pd.testing.assert_frame_equal(scores.to_frame(), back.to_frame(), check_exact=True)
    assert back.meta == scores.meta
    meta = back.meta
    assert meta["probe"]["seed"] == 3 and meta["probe"]["n_prompts"] == 4
    assert meta["detectors"]["induction"]["options"]["measure"] == "match"
    assert meta["model"]["n_layers"] == 3 and meta["model_config_hash"]
    assert "transformer-lens" in meta["versions"] and "torch" in meta["versions"]
    with pytest.raises(ValueError, match="not a headzoo"):
        pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "x.parquet")
        hz.HeadScores.load(tmp_path / "x.parquet")


def test_html_is_offline_and_escaped(scores):
    page = scores._repr_html_()
    assert "<script" not in page and "http" not in page
    assert "induction" in page
    hostile = hz.HeadScores(
        scores.to_frame().assign(detector=lambda f: f["detector"].replace("induction", "<script>alert(1)</script>")),
        scores.meta,
    )
    page = hostile._repr_html_()
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "HeadScores(" in repr(scores)
