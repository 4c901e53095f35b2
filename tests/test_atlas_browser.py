"""The atlas in a real headless Chromium, opened from disk: one self-contained file, no console
errors, no network request, every detector explained beside its heatmap with a colour scale,
cells over threshold marked, head cards with text evidence, importance and partners, no
horizontal scrolling at 800 and 1440 px, hostile token strings inert.

Two real atlases are checked: the bundled default model's (4 x 4 heads) and a GPT-2-shaped
model's (12 x 12 heads, GPT-2's vocabulary and tokenizer, named ``gpt2`` so the literature
catalogue matches). Page size and render time (navigation start to the page's
``document.body.dataset.rendered`` flag) are printed and written to
``tests/_artifacts/atlas_metrics.json``; the screenshots in ``docs/`` are taken here.

Chromium is Debian's ``chromium`` package. When it is missing and the tests run as root on a
Debian-like system (as CI does), this module installs it with apt; elsewhere it skips with the
command to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model, word_tokenizer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
DOCS = ROOT / "docs"
HOSTILE = ["<script>alert(1)</script>", '"><svg/onload=alert(1)>', "<img/src=x/onerror=alert(1)>", "&amp;", "</script><script>alert(2)</script>"]
PAYLOAD = re.compile(r'<script id="atlas-data" type="application/json">(.*?)</script>', re.S)
RENDER_BUDGET_MS = 1000  # the budget for a 12 x 12 model's page
SIZE_BUDGET = 2 * 2**20  # bytes, the budget for a GPT-2-small-shaped page with examples
METRICS: dict[str, dict] = {}


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
    if METRICS:  # after the module's last browser test: what the issue asks to be reported
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "atlas_metrics.json").write_text(json.dumps(METRICS, indent=1))
        print("\natlas metrics:", json.dumps(METRICS))


def _site(atlas, directory: Path) -> tuple[Path, dict]:
    out = atlas.write(directory)
    return out, json.loads(PAYLOAD.search((out / "index.html").read_text(encoding="utf-8")).group(1))


@pytest.fixture(scope="module")
def default_site(tmp_path_factory):
    """The bundled default model's atlas, examples from the corpus shipped with headzoo."""
    t0 = time.perf_counter()
    atlas = hz.build_atlas(hz.load_model())
    METRICS.setdefault("default", {})["build_s"] = round(time.perf_counter() - t0, 1)
    return _site(atlas, tmp_path_factory.mktemp("default") / "atlas")


@pytest.fixture(scope="module")
def gpt2_site(tmp_path_factory):
    """A GPT-2-shaped model's atlas (12 x 12 heads, GPT-2 vocabulary; random weights)."""
    from _gpt2 import gpt2_shaped_model

    t0 = time.perf_counter()
    model = gpt2_shaped_model(model_name="gpt2", n_layers=12, n_heads=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atlas = hz.build_atlas(model)
    METRICS.setdefault("gpt2", {})["build_s"] = round(time.perf_counter() - t0, 1)
    return _site(atlas, tmp_path_factory.mktemp("gpt2") / "atlas")


def _open(browser, directory: Path, width: int = 1440, height: int = 1000, hash: str = ""):
    """Open the atlas from disk, recording console errors, page errors, requests and dialogs;
    return when its script has drawn the page."""
    page = browser.new_page(viewport={"width": width, "height": height})
    seen = {"console": [], "errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))

    def dialog(d):
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.goto((directory / "index.html").as_uri() + hash)
    page.wait_for_function("document.body.dataset.rendered === '1'", timeout=20_000)
    return page, seen


def _check_clean(seen) -> None:
    assert seen["console"] == [] and seen["errors"] == [], (seen["console"], seen["errors"])
    outside = [u for u in seen["requests"] if not u.startswith("file://")]
    assert outside == [], f"network requests: {outside}"
    # the page itself is the only file it loads: nothing from assets/ or anywhere else
    assert len(seen["requests"]) == 1, seen["requests"]
    assert seen["dialogs"] == [], f"a script ran: {seen['dialogs']}"


def _no_horizontal_overflow(page) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page scrolls sideways: {width} px of content in a {inner} px window"


def _open_card(page, name: str) -> None:
    page.evaluate("name => { location.hash = name; }", name)
    page.wait_for_function("name => document.getElementById('card-title').textContent.includes(' ' + name + ' ')", arg=name)


def _shown(token: str) -> str:
    """A token as the page prints it: a newline or tab is one visible glyph."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def _words(text: str) -> str:
    return " ".join(text.split())


def _over(data) -> int:
    """Cells at or over their detector's threshold, counted from the page's data."""
    n = 0
    for d in data["detectors"]:
        if d["threshold"] is None:
            continue
        n += sum(1 for row in data["scores"][d["name"]] for v in row if v is not None and v >= d["threshold"])
    return n


def _render_ms(browser, out: Path, tries: int = 3) -> int:
    """Best of ``tries`` fresh loads: navigation start to the page's rendered flag (a loaded
    two-core machine adds noise the page is not responsible for)."""
    best = None
    for _ in range(tries):
        page, _seen = _open(browser, out)
        ms = int(page.evaluate("Number(document.body.dataset.renderMs)"))
        page.close()
        best = ms if best is None else min(best, ms)
    return best


def _check_overview(page, data) -> None:
    """Every detector explained in place, with a heatmap and a colour scale; over-threshold cells
    marked; the heads table, downloads and the optional sections present or explained."""
    n = len(data["detectors"])
    assert page.locator("#heatmaps .heatmap").count() == n
    assert page.locator("#heatmaps .heatmap svg.hm").count() == n
    assert page.locator("#heatmaps .heatmap svg.legend").count() == n  # a colour scale per heatmap
    n_thresholds = sum(d["threshold"] is not None for d in data["detectors"])
    assert page.locator("#heatmaps .heatmap svg.legend line").count() == n_thresholds  # the threshold on its scale
    for d in data["detectors"]:
        box = page.locator(f"#heatmaps .heatmap >> nth={data['detectors'].index(d)}")
        assert box.locator("h4").inner_text() == d["name"]
        explain = box.locator(".explain")
        assert explain.is_visible()
        text = _words(explain.inner_text())
        for part in ("description", "variant", "reference", "stage"):
            if d.get(part):
                assert _words(d[part]) in text, (d["name"], part)
        shown = re.search(r"threshold: (\S+)", text).group(1)
        assert shown == "none" if d["threshold"] is None else float(shown) == d["threshold"]
    assert page.locator("#heatmaps rect.cell.over").count() == _over(data)
    assert page.locator("#heatmaps rect.cell").count() == n * data["n_layers"] * data["n_heads"]
    title = page.locator("#heatmaps rect.cell title").first.text_content()
    assert title.startswith("L0H0 - ") and data["detectors"][0]["name"] in title
    assert page.locator("#heads tbody tr").count() == data["n_layers"] * data["n_heads"]
    # downloads: a link per file the atlas wrote beside the page
    hrefs = page.locator("#downloads a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert {"scores.parquet", "meta.json"} <= set(hrefs) and set(hrefs) == set(data["downloads"])
    if data.get("importance"):
        assert page.locator("#importance svg.hm").count() == len(data["importance"]["tasks"])
        assert page.locator("#importance svg.legend").count() == len(data["importance"]["tasks"])
    else:
        assert "not computed" in page.inner_text("#importance")
    if data.get("agreement") and data["agreement"]["rows"]:
        assert page.locator("#agreement-table tbody tr").count() == len(data["agreement"]["rows"])
    else:
        assert page.inner_text("#agreement").strip()


def _check_card(page, data, head: dict) -> None:
    """One head's card: labels, scores, importance, partners as links, text evidence with the
    attended and query tokens marked, the attention view."""
    name = f"L{head['layer']}H{head['head']}"
    _open_card(page, name)
    card = page.locator("#card")
    assert card.is_visible()
    assert page.locator("#card-scores tbody tr").count() == len(data["detectors"])
    # importance: a row per task, or a line saying why there is none
    if head.get("importance"):
        assert page.locator("#card-importance-table tr").count() == len(head["importance"]) + 1
    else:
        assert page.locator("#card-importance .muted").count() == 1
    # partners: links that open the other head's card
    for key, box in (("reads_from", "#card-reads"), ("writes_to", "#card-writes")):
        links = page.locator(f"{box} a.head-link").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert links == [f"#L{e['layer']}H{e['head']}" for e in head[key]]
        if not head[key]:
            assert page.locator(f"{box} td.muted").count() == 1
    # on text: every top context shown, its attended token highlighted and its query marked
    examples = head.get("examples") or []
    top = [e for e in examples if e["kind"] == "top"]
    assert page.locator("#card-text .ctx-list.top li").count() == len(top)
    assert page.locator("#card-text .ctx-list.top li span.query").count() == len(top)
    order = list((data.get("examples") or {}).get("activations", {}))
    order += [a for a in dict.fromkeys(e["activation"] for e in examples) if a not in order]
    expected = [_shown(e["context"][e["attended"]]) for a in order
                for e in sorted((x for x in top if x["activation"] == a), key=lambda x: x["rank"]) if e["attended"] is not None]
    assert page.locator("#card-text .ctx-list.top li mark.attended").all_text_contents() == expected
    if data.get("examples"):
        assert top, f"{name} has no text examples although the atlas read a corpus"
    else:  # no corpus read: the card says why
        assert page.locator("#card-text .muted").count() == 1
    page.wait_for_selector("#card-pattern svg")
    assert page.locator("#card-pattern svg text").count() == 2 * data["example"]["shape"][2]  # a label per query and key


@pytest.mark.slow
@pytest.mark.parametrize("which", ["default", "gpt2"])
def test_atlas_page_in_a_browser(browser, request, which):
    out, data = request.getfixturevalue(f"{which}_site")
    files = sorted(p.name for p in out.iterdir())
    assert "assets" not in files and "index.html" in files  # one self-contained page
    source = (out / "index.html").read_text(encoding="utf-8")
    assert "<script src" not in source and "<link" not in source and "plotly" not in source.lower()
    assert "<noscript>" in source
    size = (out / "index.html").stat().st_size
    render_ms = _render_ms(browser, out)
    METRICS.setdefault(which, {}).update(page_bytes=size, page_mib=round(size / 2**20, 3), render_ms=render_ms,
                                         heads=len(data["heads"]), detectors=len(data["detectors"]))
    print(f"\n{which} atlas: index.html {size / 2**20:.2f} MiB, rendered in {render_ms} ms (best of 3)")

    page, seen = _open(browser, out, 1440)
    _no_horizontal_overflow(page)
    _check_overview(page, data)
    heads = data["heads"]
    if len(heads) <= 16:
        sample = heads
    else:  # twelve heads spread over the model, the first and the last among them
        sample = [heads[round(i * (len(heads) - 1) / 11)] for i in range(12)]
    for head in sample:
        _check_card(page, data, head)
        _no_horizontal_overflow(page)
    # a partner link opens that head's card
    head = next(h for h in heads if h["writes_to"])
    _open_card(page, f"L{head['layer']}H{head['head']}")
    target = head["writes_to"][0]
    page.locator("#card-writes a.head-link").first.click()
    page.wait_for_function("t => document.getElementById('card-title').textContent.includes(t)",
                           arg=f" L{target['layer']}H{target['head']} ")
    # a heatmap cell opens its head on a click, and on Enter
    last = f"L{data['n_layers'] - 1}H{data['n_heads'] - 1}"
    page.locator(f"#heatmaps .heatmap >> nth=0 >> rect[data-head='{last}']").click()
    page.wait_for_function("t => document.getElementById('card-title').textContent.includes(t)", arg=f" {last} ")
    page.locator("#heatmaps .heatmap >> nth=0 >> rect[data-head='L0H1']").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('card-title').textContent.includes(' L0H1 ')")
    assert page.locator("#heatmaps rect.sel").count() == len(data["detectors"])  # the open head, marked on every map
    # the card's sections in the order the issue lists them, for the screenshot: the most labelled head
    best = max(heads, key=lambda h: (len(h["labels"]), -h["layer"]))
    _open_card(page, f"L{best['layer']}H{best['head']}")
    page.evaluate("document.querySelectorAll('#card-text details').forEach(d => { d.open = true; })")
    _no_horizontal_overflow(page)
    # the screenshot shows the card from its importance down (partners, then the text evidence)
    page.evaluate("""() => { document.activeElement.blur(); const card = document.getElementById('card');
                             card.scrollTop = document.getElementById('card-importance').offsetTop - 40; }""")
    DOCS.mkdir(exist_ok=True)
    if which == "default":
        page.screenshot(path=str(DOCS / "atlas.png"))
    else:
        page.screenshot(path=str(DOCS / "atlas-gpt2.png"))
    _check_clean(seen)
    page.close()

    # 800 px: no sideways scrolling, the card opens over the page and closes again
    page, seen = _open(browser, out, 800, hash=f"#L{best['layer']}H{best['head']}")
    assert page.locator("#card").is_visible()
    _no_horizontal_overflow(page)
    page.click("#card-close")
    assert not page.locator("#card").is_visible()
    _no_horizontal_overflow(page)
    if which == "default":
        page.screenshot(path=str(DOCS / "atlas-800.png"))
    page.click("#nav a[href='#sec-heads']")
    page.wait_for_function("document.getElementById('sec-heads').getBoundingClientRect().top < 120")
    _check_clean(seen)
    page.close()

    if which == "gpt2":
        assert render_ms < RENDER_BUDGET_MS, f"the page took {render_ms} ms to draw"
        assert size <= SIZE_BUDGET, f"index.html is {size / 2**20:.2f} MiB"


@pytest.mark.slow
def test_planted_heads_on_the_page(browser, tmp_path):
    """The planted demo model: sorting, search, a planted head's card and its composition partner."""
    model = hz.load_model("planted-demo")
    atlas = hz.build_atlas(model)
    out = atlas.write(tmp_path / "atlas")
    page, seen = _open(browser, out)
    assert page.locator("#heatmaps .heatmap").count() == len(atlas.scores.detectors)
    assert page.locator("#heads tbody tr").count() == 12
    # search, then sort by induction (descending): the planted induction head comes first
    page.fill("#search", "induction")
    assert 1 <= page.locator("#heads tbody tr").count() < 12
    page.fill("#search", "")
    page.click("#heads thead th[data-key='induction']")
    assert page.locator("#heads tbody tr").first.get_attribute("data-head") == "L2H3"
    page.locator("#heads tbody tr").first.click()
    page.wait_for_selector("#card:not([hidden])")
    assert "L2H3" in page.inner_text("#card-title") and page.evaluate("location.hash") == "#L2H3"
    assert "induction" in page.inner_text("#card-labels")
    assert page.locator("#heatmap-induction rect.over[data-head='L2H3']").count() == 1
    assert page.locator("#card-promotes tbody tr").count() == 5
    # composition partners: the previous-token head first under "Reads from"; its link opens its card
    assert page.locator("#card-reads tbody tr").first.inner_text().startswith("L0H2")
    assert "K-composition" in page.locator("#card-reads tbody tr").first.inner_text()
    page.locator("#card-reads a.head-link").first.click()
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L0H2')")
    assert page.locator("#card-writes tbody tr").first.inner_text().startswith("L2H3")
    assert "first layer" in page.inner_text("#card-reads")
    # a real mouse click on a heatmap cell opens that head: layer 1, head 1 of duplicate_token
    page.locator("#heatmap-duplicate_token rect[data-head='L1H1']").click()
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L1H1')")
    assert "duplicate_token" in page.inner_text("#card-labels")
    page.go_back()  # every card is a history entry
    page.wait_for_function("document.getElementById('card-title').textContent.includes('L0H2')")
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_hostile_token_strings_show_as_text_and_run_nothing(browser, tmp_path):
    words = HOSTILE + [f"w{i}" for i in range(40)]
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(words) + 2, n_ctx=64, previous_token=(0, 0), induction=(1, 1))
    model = planted_model(spec, tokenizer=word_tokenizer(words))
    ids = [2 + i for i in range(len(HOSTILE))] * 2  # the hostile tokens, repeated: the example prompt
    # a corpus made of them too, so they reach the cards' text contexts and highlighted tokens
    corpus = [" ".join(HOSTILE[(i + j) % len(HOSTILE)] if j % 3 else f"w{(i * 7 + j) % 40}" for j in range(60)) for i in range(6)]
    atlas = hz.build_atlas(model, ["previous_token", "induction", "copying"], example=ids, corpus=corpus)
    out = atlas.write(tmp_path / "atlas")
    source = (out / "index.html").read_text()
    for word in (w for w in HOSTILE if "<" in w):
        assert word not in source  # never raw in the page: the data is JSON with <, > and & escaped
    data = json.loads(PAYLOAD.search(source).group(1))
    assert any(w in e["context"] for h in data["heads"] for e in h["examples"] for w in HOSTILE)
    page, seen = _open(browser, out)
    seen_marks: set[str] = set()
    for h in data["heads"]:
        _open_card(page, f"L{h['layer']}H{h['head']}")
        text = page.inner_text("#card")
        assert "<script>alert(1)</script>" in text and '"><svg/onload=alert(1)>' in text
        seen_marks |= set(page.locator("#card-text mark.attended").all_text_contents())
        assert page.locator("#card-text .ctx-list li").count() >= 1
    assert seen_marks & set(HOSTILE), seen_marks  # a hostile string was highlighted, as text
    assert page.locator("script").count() == 2  # the page's own: its data and its code
    assert page.locator("svg[onload], img, [onerror]").count() == 0
    page.wait_for_timeout(300)
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_hostile_detector_and_model_names_stay_text(browser, tmp_path):
    """Detector names reach ids, table headers, heatmap titles and tooltips; the model name
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
    assert page.inner_text("#title") == "headzoo atlas: <b>m</b>&amp;"
    assert page.title() == "headzoo atlas: <b>m</b>&amp;"
    headers = page.locator("#heads thead tr:last-child th").all_text_contents()
    assert headers[2:] == names  # previous_token, then induction: their stages' order
    assert page.locator("#heatmaps .heatmap").count() == 2
    assert page.locator("#heatmaps .heatmap h4").all_text_contents() == names
    assert names[0] in page.locator("#heatmaps rect.cell title").first.text_content()
    page.locator("#heads tbody tr").first.click()
    page.wait_for_selector("#card:not([hidden])")
    assert all(n in page.text_content("#card-scores") for n in names)
    assert page.locator("img, svg[onload], b").count() == 0
    page.wait_for_timeout(300)
    _check_clean(seen)
    page.close()
