"""The atlas in a real headless Chromium, opened from disk: no console errors, no network
requests, heatmaps rendered, a click opens a head's card, hostile token strings stay text.

Chromium is Debian's ``chromium`` package. When it is missing and the tests run as root on a
Debian-like system (as CI does), this module installs it with apt; elsewhere it skips with the
command to run. A screenshot is kept in ``tests/_artifacts/`` for people to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model, word_tokenizer

ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
HOSTILE = ["<script>alert(1)</script>", '"><svg/onload=alert(1)>', "<img/src=x/onerror=alert(1)>", "&amp;", "</script><script>alert(2)</script>"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env,
                       capture_output=True)
        path = shutil.which("chromium")
        if path:
            return path
    pytest.skip("the browser test needs Debian's chromium: sudo apt-get install chromium")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the [test] extra)")
    path = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, directory: Path):
    """Open the atlas from disk, recording console errors, page errors, requests and dialogs."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = {"console": [], "errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))

    def dialog(d):
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.goto((directory / "index.html").as_uri())
    page.wait_for_load_state("load")
    return page, seen


def _check_clean(seen) -> None:
    assert seen["console"] == [] and seen["errors"] == []
    outside = [u for u in seen["requests"] if not u.startswith("file://")]
    assert outside == [], f"network requests: {outside}"
    assert seen["dialogs"] == [], f"a script ran: {seen['dialogs']}"


@pytest.mark.slow
def test_atlas_opens_offline_renders_and_opens_a_card(browser, tmp_path):
    model = hz.load_model("planted-demo")
    atlas = hz.build_atlas(model)
    out = atlas.write(tmp_path / "atlas")
    page, seen = _open(browser, out)
    page.wait_for_selector("#heatmaps .heatmap .main-svg")
    n_maps = page.locator("#heatmaps .heatmap").count()
    assert n_maps == len(atlas.scores.detectors)
    assert page.locator("#heatmaps .heatmap .heatmaplayer image, #heatmaps .heatmap .hm").count() >= 1
    assert page.locator("#heads tbody tr").count() == 12
    # search, then sort by induction (descending): the planted induction head comes first
    page.fill("#search", "induction")
    assert page.locator("#heads tbody tr").count() >= 1
    page.fill("#search", "")
    page.click("#heads thead th[data-key='induction']")
    assert page.locator("#heads tbody tr").first.get_attribute("data-head") == "L2H3"
    page.locator("#heads tbody tr").first.click()
    page.wait_for_selector("#card:not([hidden])")
    assert "L2H3" in page.inner_text("#card-title")
    assert "induction" in page.inner_text("#card-labels")
    page.wait_for_selector("#card-pattern svg, #card-pattern canvas, #card-pattern table")
    assert page.locator("#card-promotes tbody tr").count() == 5
    # composition partners: the previous-token head first under "Reads from"; a click opens its card
    assert page.locator("#card-reads tbody tr").first.inner_text().startswith("L0H2")
    assert "K-composition" in page.locator("#card-reads tbody tr").first.inner_text()
    page.locator("#card-reads tbody tr td.head-link").first.click()
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L0H2')")
    assert page.locator("#card-writes tbody tr").first.inner_text().startswith("L2H3")
    assert "first layer" in page.inner_text("#card-reads")
    # a real mouse click on a heatmap cell opens that head: layer 1, head 1 of duplicate_token
    page.locator("#heatmap-duplicate_token").scroll_into_view_if_needed()
    area = page.locator("#heatmap-duplicate_token .nsewdrag").bounding_box()
    page.mouse.click(area["x"] + area["width"] * 1.5 / 4, area["y"] + area["height"] * 1.5 / 3)
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L1H1')")
    assert "duplicate_token" in page.inner_text("#card-labels")
    page.locator("#heads tbody tr[data-head='L2H3']").click()
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L2H3')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "atlas.png"), full_page=True)
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_hostile_token_strings_show_as_text_and_run_nothing(browser, tmp_path):
    words = HOSTILE + [f"w{i}" for i in range(40)]
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(words) + 2, n_ctx=64, previous_token=(0, 0), induction=(1, 1))
    model = planted_model(spec, tokenizer=word_tokenizer(words))
    ids = [2 + i for i in range(len(HOSTILE))] * 2  # the hostile tokens, repeated: the example prompt
    atlas = hz.build_atlas(model, ["previous_token", "induction", "copying"], example=ids)
    out = atlas.write(tmp_path / "atlas")
    source = (out / "index.html").read_text()
    for word in (w for w in HOSTILE if "<" in w):
        assert word not in source  # never raw in the page: the data is JSON with <, > and & escaped
    page, seen = _open(browser, out)
    page.wait_for_selector("#heatmaps .heatmap .main-svg")
    page.locator("#heads tbody tr").first.click()
    page.wait_for_selector("#card:not([hidden])")
    text = page.inner_text("#card")
    assert "<script>alert(1)</script>" in text and '"><svg/onload=alert(1)>' in text
    assert page.locator("#card script, #card svg[onload], #card img[onerror]").count() == 0
    page.wait_for_timeout(300)
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_hostile_detector_and_model_names_stay_text(browser, tmp_path):
    """Detector names reach ids, table headers, plotly titles and hover labels; the model name
    reaches the title. None of them may become markup or end a script."""
    from headzoo import _atlas

    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=44, n_ctx=64, previous_token=(0, 0), induction=(1, 1))
    built = hz.build_atlas(planted_model(spec), ["previous_token", "induction"])
    names = ['"><img src=x onerror=alert(1)>', "</script><script>alert(2)</script>\u2028{{headzoo:js}}"]
    rename = dict(zip(built.scores.detectors, names))
    frame = built.scores.to_frame()
    frame["detector"] = frame["detector"].map(rename)
    meta = built.scores.meta
    meta["detectors"] = {rename[k]: v for k, v in meta["detectors"].items()}
    heads = [dict(h, labels=[rename[x] for x in h["labels"]]) for h in built.heads]
    atlas = _atlas.HeadAtlas(hz.HeadScores(frame, meta), heads, built.example_tokens, built.example_patterns,
                             dict(built.meta, model=dict(built.meta["model"], name="<b>m</b>&amp;")))
    out = atlas.write(tmp_path / "atlas")
    page, seen = _open(browser, out)
    page.wait_for_selector("#heatmaps .heatmap .main-svg")
    assert page.inner_text("#title") == "headzoo atlas: <b>m</b>&amp;"
    assert page.title() == "headzoo atlas: <b>m</b>&amp;"
    headers = page.locator("#heads thead tr:last-child th").all_text_contents()
    assert headers[2:] == names  # previous_token, then induction: their stages' order
    assert page.locator("#heatmaps .heatmap").count() == 2
    page.locator("#heads tbody tr").first.click()
    page.wait_for_selector("#card:not([hidden])")
    assert all(n in page.text_content("#card-scores") for n in names)
    assert page.locator("img, svg[onload], b").count() == 0
    page.wait_for_timeout(300)
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_atlas_of_the_default_model(browser, tmp_path):
    """The trained default model's atlas (the README's screenshot): its top induction head's card."""
    atlas = hz.build_atlas(hz.load_model())
    out = atlas.write(tmp_path / "atlas")
    layer, head = (int(v) for v in atlas.scores.top(1, "induction")[["layer", "head"]].iloc[0])
    page, seen = _open(browser, out)
    page.wait_for_selector("#heatmaps .heatmap .main-svg")
    assert page.locator("#heatmaps .heatmap").count() == len(atlas.scores.detectors)
    page.locator(f"#heads tbody tr[data-head='L{layer}H{head}']").click()
    page.wait_for_function(f"document.getElementById('card-title').textContent.includes('L{layer}H{head}')")
    assert "induction" in page.inner_text("#card-labels")
    page.wait_for_selector("#card-pattern svg, #card-pattern canvas, #card-pattern table")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "atlas-default.png"), full_page=True)
    _check_clean(seen)
    page.close()
