"""The atlas (files, metadata, resume, atomic writes, size), figures and attention views."""

from __future__ import annotations

import json
import re
import warnings

import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo import _atlas
from headzoo._cli import main
from headzoo.testing import PlantSpec, planted_model, word_tokenizer

from conftest import cached_planted


@pytest.fixture(scope="module")
def demo():
    return hz.load_model("planted-demo")


@pytest.fixture(scope="module")
def demo_atlas(demo):
    return hz.build_atlas(demo)


def test_atlas_files_and_metadata(demo_atlas, tmp_path):
    out = demo_atlas.write(tmp_path / "atlas")
    assert sorted(p.name for p in out.iterdir()) == ["assets", "index.html", "meta.json", "scores.parquet"]
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["circuitsvis.js", "plotly.min.js"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["name"] == "planted-demo" and len(meta["model_config_hash"]) == 16
    assert {"headzoo", "transformer-lens", "torch"} <= set(meta["versions"])
    assert meta["detectors"]["retrieval"]["options"]["answer_len"] == 4
    assert meta["probes"]["induction"]["seed"] == 0 and meta["seed"] == 0
    assert re.match(r"\d{4}-\d\d-\d\dT", meta["created"])
    loaded = hz.HeadScores.load(out / "scores.parquet")
    pd.testing.assert_frame_equal(loaded.to_frame(), demo_atlas.scores.to_frame())
    page = (out / "index.html").read_text()
    # every script is local and appears once; nothing is fetched from the network
    assert re.findall(r'<script src="([^"]+)"', page) == ["assets/plotly.min.js", "assets/circuitsvis.js"]
    assert "http://" not in page.split("<script id=\"atlas-data\"")[0] and "https://" not in page.split("<script id=\"atlas-data\"")[0]
    data = json.loads(re.search(r'<script id="atlas-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert [d["name"] for d in data["detectors"]] == demo_atlas.scores.detectors
    assert len(data["heads"]) == 12 and data["example"]["shape"] == [3, 4, 41, 41]


def test_atlas_labels_and_cards(demo_atlas):
    heads = {(h["layer"], h["head"]): h for h in demo_atlas.heads}
    assert {"induction", "retrieval"} <= set(heads[(2, 3)]["labels"])
    assert "previous_token" in heads[(0, 2)]["labels"]
    assert heads[(0, 2)]["common_offset"]["offset"] == 1  # a previous-token head looks one back
    assert [p["source"] == p["output"] for p in heads[(2, 3)]["promotes"]] == [True] * 5  # it copies
    frame = demo_atlas.to_frame()
    assert list(frame.columns[:2]) == ["layer", "head"] and "labels" in frame.columns and len(frame) == 12
    assert "L2H3" in demo_atlas._repr_html_() and "HeadAtlas(" in repr(demo_atlas)
    pattern = demo_atlas.example_patterns[0, 2].astype(float) / 255
    assert abs(pattern[5, 4] - 1) < 0.02


class _Killed(BaseException):
    """Stands in for SIGKILL / Ctrl-C (pytest handles a real KeyboardInterrupt itself)."""


@pytest.mark.slow
def test_a_killed_build_resumes_without_recomputing(demo, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    killed = []
    real = _atlas._detect

    def counting(model, unit, **kw):
        calls.append([d.name for d in unit])
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise _Killed  # killed while the second group runs
        return real(model, unit, **kw)

    monkeypatch.setattr(_atlas, "_detect", counting)
    out = tmp_path / "atlas"
    with pytest.raises(_Killed):
        main(["atlas", "--out", str(out)])
    assert not (out / "index.html").exists()  # no half-written page
    assert len(list((out / ".partial").glob("*.parquet"))) == 1
    first = calls[0]
    calls.clear()
    assert main(["atlas", "--out", str(out)]) == 0
    assert first not in calls and len(calls) >= 1  # the finished group was not recomputed
    assert (out / "index.html").exists() and not (out / ".partial").exists()
    assert not [p for p in out.rglob("*.tmp")]


def test_write_is_atomic(demo_atlas, tmp_path, monkeypatch):
    out = demo_atlas.write(tmp_path / "atlas")
    before = (out / "index.html").read_text()
    monkeypatch.setattr(type(demo_atlas), "html", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        demo_atlas.write(out)
    assert (out / "index.html").read_text() == before  # the old page is intact
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.slow
def test_atlas_of_a_12_by_12_model_stays_under_15_mb(tmp_path):
    spec = PlantSpec(n_layers=12, n_heads=12, d_head=32, d_vocab=2000, n_ctx=128, previous_token=(3, 4), induction=(7, 1), seed=1)
    model = planted_model(spec, tokenizer=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atlas = hz.build_atlas(model)
    out = atlas.write(tmp_path / "atlas")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"12 x 12 atlas: {size / 2**20:.2f} MiB")
    assert size < 15 * 2**20
    assert {"induction"} <= set(next(h for h in atlas.heads if (h["layer"], h["head"]) == (7, 1))["labels"])


@pytest.mark.slow
def test_detector_that_cannot_apply_is_skipped_not_fatal(tmp_path):
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=48, previous_token=(0, 0), induction=None)
    model = cached_planted(spec, "bridge", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atlas = hz.build_atlas(model)
    assert "retrieval" not in atlas.scores.detectors and "retrieval" in atlas.meta["skipped_detectors"]
    with pytest.raises(hz.DetectorNotApplicableError):
        hz.build_atlas(model, ["previous_token", "retrieval"])


def test_atlas_needs_one_short_example(demo):
    with pytest.raises(hz.InvalidTokensError, match="one prompt"):
        hz.build_atlas(demo, "previous_token", example=[[2, 3], [4, 5]])
    atlas = hz.build_atlas(demo, "previous_token", example="Monday Tuesday Monday Tuesday")
    assert atlas.example_tokens[:3] == ["<bos>", "Monday", "Tuesday"]


def test_figures_are_returned_not_shown(demo_atlas, demo):
    scores = demo_atlas.scores
    grid = scores.plot()
    assert len(grid.data) == len(scores.detectors)
    assert "threshold" in grid.data[0].hovertemplate and "head L" in grid.data[0].hovertemplate
    bars = scores.plot_top(3)
    assert len(bars.data) == len(scores.detectors) and list(bars.data[0].x)[0].startswith("L")
    clean = torch.tensor([[0, 5, 6, 7, 5, 6]])
    corrupted = torch.tensor([[0, 8, 9, 10, 5, 6]])
    metric = hz.patching.logit_diff([7], [9], pos=-1)
    per_pos = hz.patching.patch_heads(demo, clean, corrupted, metric, by_pos=True)
    fig = per_pos.plot()
    assert fig.data[0].y[0] == "L0H0" and len(fig.data[0].x) == 6
    assert len(per_pos.plot_top(4).data[0].x) == 4


def test_attention_view_is_offline_and_escapes_tokens():
    words = ["<script>alert(1)</script>", "</script><script>alert(2)</script>"] + [f"w{i}" for i in range(20)]
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(words) + 2, n_ctx=32, previous_token=(0, 1), induction=(1, 0))
    model = planted_model(spec, tokenizer=word_tokenizer(words))
    view = hz.attention_view(model, [(1, 0), (0, 1)], tokens=[0, 2, 3, 4, 2, 3, 4])
    assert view.patterns.shape == (2, 7, 7) and view.heads == [(1, 0), (0, 1)]
    page = view._repr_html_()
    assert "alert(1)</script>" not in page and "</script><script>alert(2)" not in page
    assert "unpkg.com" not in page and "CircuitsVis.render" in page
    assert "AttentionView(2 heads" in repr(view)
    with pytest.raises(hz.InvalidOptionError):
        hz.attention_view(model, [(5, 0)])
