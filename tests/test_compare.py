"""hz.compare_atlases and `headzoo compare`: an atlas against itself, a planted model against the
same model with its induction head switched off, the files written, and bad inputs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import headzoo as hz
from headzoo._backends import build_model
from headzoo._cli import main
from headzoo.testing import PlantSpec, planted_state_dict

SPEC = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64,
                 previous_token=(0, 1), duplicate_token=(1, 2), induction=(2, 0), seed=11)
DETECTORS = ["previous_token", "duplicate_token", "induction"]
HOSTILE = "<img src=x onerror=alert(1)>"


def _atlas(state: dict, name: str) -> hz.HeadAtlas:
    model = build_model(SPEC.config(), state, backend="bridge", name=name)
    return hz.build_atlas(model, DETECTORS, progress=False)


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    """``(a, b, folder_a, folder_b)``: the planted model's atlas, and the same model's with the
    induction head's query and key weights zeroed (its attention turns uniform)."""
    state = planted_state_dict(SPEC)
    a = _atlas(state, "planted")
    broken = {k: v.clone() for k, v in state.items()}
    layer, head = SPEC.induction
    for name in ("W_Q", "W_K", "b_Q", "b_K"):
        key = f"blocks.{layer}.attn.{name}"
        if key in broken:
            broken[key][head] = 0.0
    b = _atlas(broken, HOSTILE)
    root = tmp_path_factory.mktemp("atlases")
    return a, b, a.write(root / "a"), b.write(root / "b")


def test_an_atlas_against_itself_agrees_everywhere(atlases):
    a, _, folder_a, _ = atlases
    for other in (a, folder_a):
        cmp = hz.compare_atlases(a, other)
        corr = cmp.correlations()
        assert list(corr["detector"]) == DETECTORS
        assert (corr["spearman"] == 1.0).all() and (corr["top_overlap"] == 1.0).all() and (corr["crossed"] == 0).all()
        assert cmp.moved().empty
        frame = cmp.to_frame()
        assert list(frame.columns) == ["detector", "layer", "head", "score_a", "score_b", "delta", "rank_a", "rank_b",
                                       "over_a", "over_b"]
        assert len(frame) == len(DETECTORS) * SPEC.n_layers * SPEC.n_heads
        assert (frame["delta"] == 0).all() and (frame["rank_a"] == frame["rank_b"]).all()


def test_switching_off_the_induction_head_moves_it(atlases):
    a, b, _, _ = atlases
    cmp = hz.compare_atlases(a, b)
    corr = cmp.correlations().set_index("detector")
    # the previous-token head does not depend on the induction head: it keeps its place
    assert corr.loc["previous_token", "top_overlap"] == 1.0 and corr.loc["previous_token", "crossed"] == 0
    # (the other rankings shift a little: the induction head's own pattern changed too)
    assert corr["spearman"].idxmin() == "induction" and corr.loc["induction", "spearman"] < 0.9, corr
    assert corr.loc["induction", "top_overlap"] == 0.0 and corr.loc["induction", "crossed"] == 1
    moved = cmp.moved()
    row = moved[(moved["detector"] == "induction") & (moved["layer"] == SPEC.induction[0])
                & (moved["head"] == SPEC.induction[1])]
    assert len(row) == 1 and row.iloc[0]["crossed"] == "down" and row.iloc[0]["rank_a"] == 1
    assert row.iloc[0]["rank_b"] > 1 and row.iloc[0]["score_b"] < row.iloc[0]["score_a"] - 0.5


def test_write_makes_an_offline_page_with_every_string_escaped(atlases, tmp_path):
    a, b, _, _ = atlases
    cmp = hz.compare_atlases(a, b)
    out = cmp.write(tmp_path / "cmp")
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "comparison.parquet", "correlations.csv"]
    back = hz.AtlasComparison.load(out / "comparison.parquet")
    pd.testing.assert_frame_equal(back.to_frame(), cmp.to_frame())
    assert back.meta == cmp.meta
    csv = pd.read_csv(out / "correlations.csv")
    assert list(csv["detector"]) == DETECTORS
    assert np.allclose(csv["spearman"], cmp.correlations()["spearman"], equal_nan=True)
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "http://" not in page and "https://" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    data = json.loads(re.search(r'<script id="compare-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["b"] == HOSTILE and {r["detector"] for r in data["correlations"]} == set(DETECTORS)
    assert "innerHTML" not in page
    html_repr = cmp._repr_html_()
    assert HOSTILE not in html_repr and "<script" not in html_repr


def test_detectors_of_one_atlas_only_are_listed_and_skipped(atlases):
    a, _, _, _ = atlases
    fewer = hz.HeadAtlas(hz.HeadScores(a.scores.to_frame().query("detector != 'duplicate_token'"), a.scores.meta),
                         a.heads, a.example_tokens, a.example_patterns, a.meta)
    cmp = hz.compare_atlases(a, fewer)
    assert cmp.detectors == ["previous_token", "induction"]
    assert cmp.meta["only_a"] == ["duplicate_token"] and cmp.meta["only_b"] == []


def test_bad_inputs_are_typed_errors(atlases, tmp_path):
    a, _, folder_a, _ = atlases
    with pytest.raises(hz.InvalidOptionError, match="does not exist"):
        hz.compare_atlases(a, tmp_path / "nowhere")
    with pytest.raises(hz.InvalidOptionError, match="must be an hz.HeadAtlas"):
        hz.compare_atlases(a, 3)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(hz.InvalidOptionError, match="is a file"):
        hz.compare_atlases(a, tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hz.CorruptFileError, match=r"empty is not an atlas folder: it has no scores\.parquet and no meta\.json"):
        hz.compare_atlases(a, tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(folder_a, broken)
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(hz.CorruptFileError, match="meta.json is not valid JSON"):
        hz.compare_atlases(a, broken)
    other = PlantSpec(n_layers=2, n_heads=4, d_head=32, d_vocab=66, n_ctx=64, previous_token=(0, 1), induction=(1, 0), seed=1)
    small = hz.build_atlas(build_model(other.config(), planted_state_dict(other), backend="bridge"), ["induction"], progress=False)
    with pytest.raises(hz.InvalidOptionError, match="different shapes.*3 layers x 4 heads.*2 x 4"):
        hz.compare_atlases(a, small)
    cmp = hz.compare_atlases(a, a)
    with pytest.raises(hz.InvalidOptionError, match="ranks must be a positive integer"):
        cmp.moved(0)


def test_cli_writes_the_files_and_exits_0(atlases, tmp_path, capsys):
    _, _, folder_a, folder_b = atlases
    out = tmp_path / "cmp"
    assert main(["compare", str(folder_a), str(folder_b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AtlasComparison(" in printed and "induction" in printed and "compare.html" in printed
    assert {p.name for p in out.iterdir()} == {"compare.html", "comparison.parquet", "correlations.csv"}


@pytest.mark.parametrize("which, expected", [
    ("missing", "does not exist"),
    ("empty", "is not an atlas folder"),
    ("out-file", "is a file, not a folder"),
])
def test_cli_bad_inputs_exit_2_with_one_line(atlases, tmp_path, capsys, which, expected):
    _, _, folder_a, _ = atlases
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken").write_text("x")
    b = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}.get(which, folder_a)
    out = tmp_path / ("taken" if which == "out-file" else "cmp")
    assert main(["compare", str(folder_a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("headzoo: error: ") and expected in err, err


def test_the_page_renders_offline_in_chromium_with_hostile_names_inert(atlases, tmp_path):
    """compare.html in headless Chromium: no request beyond the file, no error, no dialog from the
    hostile model name (shown as text), tables and heatmaps filled, no horizontal scroll at 800 px."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the [test] extra)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("the browser test needs Debian's chromium: sudo apt-get install chromium")
    a, b, _, _ = atlases
    out = hz.compare_atlases(a, b).write(tmp_path / "cmp")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            for width in (800, 1440):
                page = browser.new_page(viewport={"width": width, "height": 900})
                seen: dict[str, list] = {"errors": [], "requests": [], "dialogs": []}
                page.on("console", lambda m, seen=seen: seen["errors"].append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, seen=seen: seen["errors"].append(str(e)))
                page.on("request", lambda r, seen=seen: seen["requests"].append(r.url))
                page.on("dialog", lambda d, seen=seen: (seen["dialogs"].append(d.message), d.dismiss()))
                page.goto((out / "compare.html").as_uri())
                page.wait_for_load_state("load")
                assert seen["errors"] == [] and seen["dialogs"] == []
                assert seen["requests"] == [(out / "compare.html").as_uri()]
                assert HOSTILE in page.inner_text("#title") and page.locator("img").count() == 0
                assert page.locator("#correlations tbody tr").count() == len(DETECTORS)
                assert page.locator("#moved tbody tr").count() >= 1
                assert page.locator("#deltas .cell").count() == len(DETECTORS) * SPEC.n_layers * SPEC.n_heads
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                page.close()
        finally:
            browser.close()
