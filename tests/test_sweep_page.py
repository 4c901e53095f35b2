"""The sweep's across-model analysis and its index page, on synthetic results with known answers.

The results are built by hand in the schema ``hz.sweep`` writes (issue 18): a series of six
checkpoints where one planted head crosses the induction threshold at step 1000 and stays, one
crosses at step 10, dips and stays from 1000, and a noisy head crosses and falls back; two plain
models of different shapes that share two head profiles (an induction-and-copying head and a
previous-token head) that must be matched; and a failed job. The page is checked as text (every
hostile string escaped, no external URL) and in a headless Chromium (see test_atlas_browser.py
for how Chromium is found or installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headzoo import EmptyResultError, InvalidOptionError
from headzoo._sweep_page import (
    RESULT_COLUMNS,
    formation_steps,
    match_heads,
    render_sweep_page,
    sweep_figure,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAYLOAD = re.compile(r'<script id="sweep-data" type="application/json">(.*?)</script>', re.S)
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
HOSTILE_DETECTOR = 'say "hi" </script><script>alert(2)</script>'
THRESHOLDS = {"previous_token": 0.4, "induction": 0.5, "copying": float("nan")}
STEPS = [0, 10, 100, 1000, 5000, 10000]
# induction scores over the checkpoints of the series' heads that matter
PLANTED = [0.05, 0.1, 0.2, 0.7, 0.8, 0.9]  # L1H1: crosses at 1000 and stays
DIPS = [0.1, 0.6, 0.3, 0.6, 0.7, 0.8]  # L1H0: first passes at 10, stays from 1000
NOISY = [0.1, 0.6, 0.3, 0.2, 0.55, 0.2]  # L0H1: crosses, falls back, never stays


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]


def _job(model: str) -> str:
    return f"{_slug(model)}-{hashlib.sha1(model.encode()).hexdigest()[:10]}"


def _rows(series, model, step, scores):
    """scores: {detector: {(layer, head): score}}"""
    out = []
    for det, heads in scores.items():
        thr = THRESHOLDS.get(det, 0.5)
        for (layer, head), s in heads.items():
            out.append({"job": _job(model), "series": series, "model": model, "step": step, "detector": det,
                        "layer": layer, "head": head, "score": float(s), "threshold": thr,
                        "passes": bool(s >= thr)})
    return out


def _low(rng, n_layers, n_heads):
    return {(la, h): float(rng.uniform(0.1, 0.3)) for la in range(n_layers) for h in range(n_heads)}


def sweep_frames(hostile: bool = False):
    """(results, jobs, meta) as hz.sweep would hand them to render_sweep_page."""
    rng = np.random.default_rng(0)
    rows = []
    for k, step in enumerate(STEPS):
        scores = {d: _low(rng, 2, 2) for d in THRESHOLDS}
        scores["induction"][(1, 1)] = PLANTED[k]
        scores["induction"][(1, 0)] = DIPS[k]
        scores["induction"][(0, 1)] = NOISY[k]
        scores["previous_token"][(0, 0)] = 0.1 + 0.1 * k  # crosses 0.4 at step 1000 (k=3)
        rows += _rows("run-a", f"run-a@step-{step:06d}", step, scores)
    plain_b = HOSTILE_MODEL if hostile else "plain-b"
    a = {d: _low(rng, 2, 3) for d in THRESHOLDS}  # 2 layers x 3 heads
    b = {d: _low(rng, 3, 2) for d in THRESHOLDS}  # 3 layers x 2 heads
    for scores, ind, prev in ((a, (1, 2), (0, 0)), (b, (2, 1), (0, 1))):
        scores["induction"][ind], scores["previous_token"][ind], scores["copying"][ind] = 0.9, 0.02, 0.8
        scores["induction"][prev], scores["previous_token"][prev], scores["copying"][prev] = 0.05, 0.9, 0.0
    rows += _rows("plain-a", "plain-a", None, a) + _rows(plain_b, plain_b, None, b)
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    if hostile:
        results["detector"] = results["detector"].replace("copying", HOSTILE_DETECTOR)
    results["step"] = results["step"].astype("Int64")
    results["job"] = results["job"].astype("category")  # as pd.read_parquet(OUT / "results") gives it
    models = list(dict.fromkeys(results["model"]))
    jobs = pd.DataFrame({
        "job": [_job(m) for m in models] + [_job("plain-c")],
        "series": [str(results.loc[results["model"] == m, "series"].iloc[0]) for m in models] + ["plain-c"],
        "model": models + ["plain-c"],
        "step": pd.array([*STEPS, None, None, None], dtype="Int64"),
        "source": [f"runs/a/checkpoints/step-{s:06d}" for s in STEPS] + ["plain-a", plain_b, "plain-c"],
        "revision": [None] * (len(models) + 1),
        "status": ["done"] * len(models) + ["failed"],
        "error": [None] * len(models) + ["ModelNotFoundError: no model named 'plain-c'; " + HOSTILE_MODEL],
        "seconds": [1.5 + i for i in range(len(models))] + [float("nan")],
        "atlas": [f"atlases/{_job(m)}/index.html" for m in models] + [None],
    })
    meta = {"detectors": list(THRESHOLDS) if not hostile else ["previous_token", "induction", HOSTILE_DETECTOR],
            "seed": 0, "options": {}, "executor": "serial", "versions": {"headzoo": "0.test", "torch": "2.x"},
            "created": "2026-12-01T09:00:00+00:00"}
    return results, jobs, meta


# -- formation ----------------------------------------------------------------------------
def test_formation_steps_finds_the_planted_steps():
    results, _, _ = sweep_frames()
    before = results.copy()
    out = formation_steps(results)
    pd.testing.assert_frame_equal(results, before)  # the caller's frame is left alone
    assert list(out.columns) == ["series", "detector", "layer", "head", "step", "first_step", "final_score"]
    assert str(out["step"].dtype) == "Int64" and str(out["first_step"].dtype) == "Int64"
    assert set(out["series"]) == {"run-a"}  # plain models have no steps
    ind = out[out["detector"] == "induction"].set_index(["layer", "head"])
    assert ind.loc[(1, 1), "step"] == 1000 and ind.loc[(1, 1), "first_step"] == 1000
    assert ind.loc[(1, 1), "final_score"] == pytest.approx(0.9)
    assert ind.loc[(1, 0), "step"] == 1000 and ind.loc[(1, 0), "first_step"] == 10
    assert pd.isna(ind.loc[(0, 1), "step"]) and ind.loc[(0, 1), "first_step"] == 10
    assert pd.isna(ind.loc[(0, 0), "step"]) and pd.isna(ind.loc[(0, 0), "first_step"])
    prev = out[out["detector"] == "previous_token"].set_index(["layer", "head"])
    assert prev.loc[(0, 0), "step"] == 1000
    # a detector without a threshold: no head ever passes
    assert out.loc[out["detector"] == "copying", "first_step"].isna().all()
    assert len(out) == 3 * 4


def test_formation_steps_reads_unsorted_rows_and_skips_single_step_series():
    results, _, _ = sweep_frames()
    shuffled = results.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(formation_steps(shuffled), formation_steps(results))
    one = results[results["step"].isin([pd.NA, 1000]) | results["step"].isna()]
    out = formation_steps(one)
    assert out.empty and list(out.columns)[:2] == ["series", "detector"]


def test_inputs_are_checked():
    results, jobs, meta = sweep_frames()
    with pytest.raises(InvalidOptionError, match=r"'score'"):
        formation_steps(results.drop(columns=["score"]))
    with pytest.raises(InvalidOptionError, match="threshold"):
        match_heads(results.drop(columns=["threshold", "step"]))
    with pytest.raises(EmptyResultError):
        formation_steps(results.iloc[:0])
    with pytest.raises(EmptyResultError):
        match_heads(results.iloc[:0])
    # not a DataFrame: the annotations say DataFrame (the test run's beartype refuses it first),
    # an unchecked caller gets the typed error from the shared validator
    from headzoo._sweep_page import _check_frame

    with pytest.raises(InvalidOptionError, match="DataFrame"):
        _check_frame(results.to_dict("records"), RESULT_COLUMNS, "results")
    with pytest.raises(InvalidOptionError, match="min_similarity"):
        match_heads(results, min_similarity=2.0)
    with pytest.raises(InvalidOptionError, match="two scores"):
        formation_steps(pd.concat([results, results.iloc[:1]]))
    with pytest.raises(InvalidOptionError, match="induction"):
        sweep_figure(results, "inductoin")  # the message suggests the right name
    with pytest.raises(InvalidOptionError, match="'atlas'"):
        render_sweep_page(results, jobs.drop(columns=["atlas"]), meta)
    bad = jobs.copy()
    bad.loc[0, "atlas"] = "javascript:alert(1)"
    with pytest.raises(InvalidOptionError, match="relative"):
        render_sweep_page(results, bad, meta)
    with pytest.raises(EmptyResultError):
        render_sweep_page(results.iloc[:0], jobs.iloc[:0], meta)


# -- matching -----------------------------------------------------------------------------
def test_match_heads_pairs_the_shared_profiles_across_shapes():
    results, _, _ = sweep_frames()
    before = results.copy()
    out = match_heads(results)
    pd.testing.assert_frame_equal(results, before)
    assert list(out.columns) == ["model_a", "layer_a", "head_a", "model_b", "layer_b", "head_b", "similarity",
                                 "shared_labels"]
    pair = out[(out["model_a"] == "plain-a") & (out["model_b"] == "plain-b")]
    found = {(r.layer_a, r.head_a, r.layer_b, r.head_b): r for r in pair.itertuples()}
    assert (1, 2, 2, 1) in found and (0, 0, 0, 1) in found
    assert found[(1, 2, 2, 1)].shared_labels == "induction"
    assert found[(0, 0, 0, 1)].shared_labels == "previous_token"
    assert found[(1, 2, 2, 1)].similarity > 0.9 and found[(0, 0, 0, 1)].similarity > 0.9
    # one-to-one within each model pair, and every kept pair over the floor
    for _, part in out.groupby(["model_a", "model_b"]):
        assert not part.duplicated(["layer_a", "head_a"]).any() and not part.duplicated(["layer_b", "head_b"]).any()
    assert (out["similarity"] >= 0.5).all()
    # a checkpoint series takes part with its last step only
    models = set(out["model_a"]) | set(out["model_b"])
    assert "run-a@step-010000" in models and "run-a@step-000000" not in models
    # model_a comes first in the sweep's order (series, step, model)
    assert set(zip(out["model_a"], out["model_b"])) <= {("plain-a", "plain-b"), ("plain-a", "run-a@step-010000"),
                                                        ("plain-b", "run-a@step-010000")}
    # a higher floor keeps fewer pairs, the planted ones among them
    strict = match_heads(results, min_similarity=0.95)
    assert len(strict) <= len(out) and {(1, 2, 2, 1), (0, 0, 0, 1)} <= {
        (r.layer_a, r.head_a, r.layer_b, r.head_b) for r in strict.itertuples() if r.model_b == "plain-b"}


def test_match_heads_needs_two_shared_detectors():
    results, _, _ = sweep_frames()
    one = results[(results["detector"] == "induction") | (results["model"] != "plain-b")]
    one = one[(one["detector"] != "previous_token") | (one["model"] != "plain-b")]
    one = one[(one["detector"] != "copying") | (one["model"] != "plain-b")]
    out = match_heads(one)
    assert "plain-b" not in set(out["model_a"]) | set(out["model_b"])


def test_greedy_matching_is_the_take_the_best_left_greedy():
    from headzoo._sweep_page import _greedy_pairs

    rng = np.random.default_rng(1)
    for _ in range(20):
        sim = rng.uniform(-1, 1, size=(int(rng.integers(1, 9)), int(rng.integers(1, 9))))
        expected, used_a, used_b = [], set(), set()
        for flat in np.argsort(-sim, axis=None, kind="stable"):
            i, j = np.unravel_index(flat, sim.shape)
            if sim[i, j] >= 0.2 and i not in used_a and j not in used_b:
                expected.append((int(i), int(j)))
                used_a.add(i)
                used_b.add(j)
        assert sorted(_greedy_pairs(sim.copy(), 0.2)) == sorted(expected)


# -- the figure ---------------------------------------------------------------------------
def test_sweep_figure_draws_one_line_per_head_and_panel():
    results, _, _ = sweep_frames()
    fig = sweep_figure(results, "induction")
    # the series (4 heads) and the plain models (2 x 3 and 3 x 2: heads L0H0..L2H1, 8 names)
    names = [t.name for t in fig.data]
    assert len(fig.data) == 4 + len({(la, h) for la in range(3) for h in range(3)} & ({(la, h) for la in range(2) for h in range(3)} | {(la, h) for la in range(3) for h in range(2)}))
    assert {"L0H0", "L0H1", "L1H0", "L1H1"} <= set(names)
    series = [t for t in fig.data if t.xaxis == "x"]
    assert len(series) == 4
    planted = next(t for t in series if t.name == "L1H1")
    assert list(planted.y) == pytest.approx(PLANTED)
    assert list(planted.x) == [s + 1 for s in STEPS]  # four decades: log axis of step + 1
    assert fig.layout.xaxis.type == "log" and "step + 1" in fig.layout.xaxis.title.text
    never = next(t for t in series if t.name == "L0H0")
    assert never.opacity < 1 and planted.opacity == 1
    # the threshold, dashed, in both panels
    dashed = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(dashed) == 2 and all(s.y0 == 0.5 for s in dashed)
    # legend: one entry per head name
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert len(shown) == len(set(shown)) == len(set(names))
    plain = [t for t in fig.data if t.xaxis == "x2"]
    assert fig.layout.xaxis2.type == "category" and all(list(t.x)[0] == "plain-a" for t in plain if len(t.x) == 2)


def test_sweep_figure_linear_axis_for_short_spans_and_escapes_names():
    results, _, _ = sweep_frames(hostile=True)
    short = results[results["step"].isna() | (results["step"] >= 1000)]
    fig = sweep_figure(short, "previous_token")
    assert fig.layout.xaxis.type == "linear" and fig.layout.xaxis.title.text == "step"
    xs = [x for t in fig.data if t.xaxis == "x2" for x in t.x]
    assert HOSTILE_MODEL not in xs and "&lt;img src=x onerror=alert(1)&gt;" in xs


# -- the page as text ---------------------------------------------------------------------
def _data(page: str) -> dict:
    return json.loads(PAYLOAD.search(page).group(1))


def test_page_is_self_contained_and_escapes_every_hostile_string():
    results, jobs, meta = sweep_frames(hostile=True)
    before = (results.copy(), jobs.copy())
    page = render_sweep_page(results, jobs, meta)
    pd.testing.assert_frame_equal(results, before[0])
    pd.testing.assert_frame_equal(jobs, before[1])
    assert HOSTILE_MODEL not in page and "<img" not in page
    assert "</script><script>alert(2)" not in page and page.count("</script>") == 2  # the page's own two
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) is None  # nothing from the network
    assert "<link" not in page and "plotly" not in page.lower() and "<noscript>" in page
    data = _data(page)
    assert HOSTILE_MODEL in [j["model"] for j in data["jobs"]]
    assert HOSTILE_DETECTOR in [d["name"] for d in data["detectors"]]
    assert [d["name"] for d in data["detectors"]] == meta["detectors"]  # the sweep's order


def test_page_payload_holds_the_known_answers():
    results, jobs, meta = sweep_frames()
    data = _data(render_sweep_page(results, jobs, meta))
    (series,) = data["series"]
    assert series["steps"] == STEPS and series["log_x"] and (series["n_layers"], series["n_heads"]) == (2, 2)
    curves = series["curves"]["induction"]
    assert curves["state"] == [0, 1, 2, 2]  # L0H0 never, L0H1 fell back, L1H0 and L1H1 pass at the end
    import base64

    codes = np.frombuffer(base64.b64decode(curves["values"]), dtype="<u2").reshape(len(STEPS), 4)
    decoded = curves["lo"] + codes[:, 3] * (curves["hi"] - curves["lo"]) / 65534
    assert decoded == pytest.approx(PLANTED, abs=1e-4)
    assert [r["model"] for r in data["rankings"]["induction"]] == ["plain-a", "plain-b"]
    assert data["rankings"]["induction"][0]["heads"][0] == [1, 2, 0.9, True]
    rows = {(r["detector"], r["layer"], r["head"]): r for r in data["formation"]}
    assert rows[("induction", 1, 1)]["step"] == 1000 and rows[("induction", 0, 1)]["step"] is None
    assert ("induction", 0, 0) not in rows  # never passes: not listed
    assert data["n_formation"] == len(data["formation"])
    assert {"model_a": "plain-a", "layer_a": 1, "head_a": 2, "model_b": "plain-b", "layer_b": 2, "head_b": 1}.items() <= \
        next(m for m in data["matches"] if m["layer_a"] == 1 and m["head_a"] == 2 and m["model_b"] == "plain-b").items()
    failed = next(j for j in data["jobs"] if j["status"] == "failed")
    assert failed["atlas"] is None and failed["error"].startswith("ModelNotFoundError")
    assert data["meta"]["executor"] == "serial" and data["meta"]["n_models"] == 9


def test_page_of_a_sweep_where_every_job_failed_shows_the_jobs():
    results, jobs, meta = sweep_frames()
    jobs = jobs.assign(status="failed", atlas=None, error="RuntimeError: out of memory")
    data = _data(render_sweep_page(results.iloc[:0], jobs, meta))
    assert data["detectors"] == [] and data["series"] == [] and len(data["jobs"]) == len(jobs)


def _big_series(n_steps=100, n_detectors=24, n_layers=10, n_heads=20):
    rng = np.random.default_rng(0)
    steps = np.unique(np.round(np.geomspace(10, 143000, n_steps - 1))).astype(int).tolist()
    steps = [0, *steps][:n_steps]
    n = n_layers * n_heads
    frame = pd.DataFrame({
        "series": "big", "step": np.repeat(steps, n_detectors * n),
        "detector": np.tile(np.repeat([f"detector_{d:02d}" for d in range(n_detectors)], n), len(steps)),
        "layer": np.tile(np.repeat(np.arange(n_layers), n_heads), len(steps) * n_detectors),
        "head": np.tile(np.arange(n_heads), len(steps) * n_detectors * n_layers),
        "score": rng.uniform(0, 1, len(steps) * n_detectors * n), "threshold": 0.9,
    })
    frame["model"] = "big@step-" + frame["step"].astype(str)
    frame["job"] = frame["model"]
    frame["passes"] = frame["score"] >= frame["threshold"]
    frame["step"] = frame["step"].astype("Int64")
    jobs = pd.DataFrame({"job": [f"big@step-{s}" for s in steps], "series": "big", "model": [f"big@step-{s}" for s in steps],
                         "step": pd.array(steps, dtype="Int64"), "source": "x", "revision": None, "status": "done",
                         "error": None, "seconds": 1.0, "atlas": [f"atlases/big_step-{s}/index.html" for s in steps]})
    return frame[list(RESULT_COLUMNS)], jobs


PAGE_BUDGET = 3 * 2**20  # bytes for 100 checkpoints x 24 detectors x 200 heads


def test_big_sweep_page_stays_small():
    results, jobs = _big_series()
    page = render_sweep_page(results, jobs, {"executor": "ray"})
    size = len(page.encode())
    print(f"\nsweep page, 100 checkpoints x 24 detectors x 200 heads: {size / 2**20:.2f} MiB")
    assert size < PAGE_BUDGET
    data = _data(page)
    assert len(data["series"][0]["steps"]) == 100 and len(data["series"][0]["curves"]) == 24
    assert len(data["formation"]) <= 2000 <= data["n_formation"]


# -- the page in a browser ----------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    from test_atlas_browser import _chromium

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the [test] extra)")
    path = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _write(tmp_path: Path, hostile: bool = False) -> tuple[Path, pd.DataFrame]:
    results, jobs, meta = sweep_frames(hostile)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "index.html").write_text(render_sweep_page(results, jobs, meta), encoding="utf-8")
    return out, jobs


def _open(browser, out: Path, width: int = 1440):
    from test_atlas_browser import _open as open_page

    page, seen = open_page(browser, out, width=width)
    page.wait_for_function("document.body.dataset.drawn === '1'", timeout=20_000)  # every chart drawn
    return page, seen


@pytest.mark.slow
def test_sweep_page_in_a_browser(browser, tmp_path):
    from test_atlas_browser import _check_clean, _no_horizontal_overflow

    out, jobs = _write(tmp_path)
    page, seen = _open(browser, out)
    _no_horizontal_overflow(page)
    assert page.inner_text("#title") == "headzoo sweep: 9 models, 1 checkpoint series"
    assert "executor: serial" in page.inner_text("#provenance")
    # one chart per detector for the series, one line per head, a threshold line where there is one
    assert page.locator("#detectors .detector").count() == 3
    assert page.locator("#detectors .chart").count() == 3
    assert page.locator("#detectors .chart svg path.head").count() == 3 * 4
    assert page.locator("#detectors .chart svg line.thr").count() == 2
    chart = page.locator("#det-1 .chart svg")  # induction
    assert chart.locator("path.head.final").count() == 2 and chart.locator("path.head.never").count() == 1
    d = chart.locator("path[data-head='L1H1']").get_attribute("d")
    assert d.startswith("M") and d.count("L") == len(STEPS) - 1
    # hovering the last checkpoint near the planted head's score shows it
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.97, box["y"] + box["height"] * 0.2)
    tip = page.locator("#tip")
    assert tip.is_visible() and "step 10000" in tip.inner_text() and re.search(r"L1H[01]", tip.inner_text())
    # the plain models: a ranking per detector, plain-a first, its best induction head first
    ranks = page.locator("#det-1 table.ranks tbody tr")
    assert ranks.count() == 2 and ranks.first.locator("td").nth(1).inner_text() == "L1H2 0.900"
    # formation table: the known rows
    rows = page.locator("#formation tbody tr").all_inner_texts()
    cells = [r.split("\t") for r in rows]
    assert ["run-a", "induction", "L1H1", "1000", "1000", "0.900"] in cells
    assert ["run-a", "induction", "L0H1", "", "10", "0.200"] in cells
    assert ["run-a", "previous_token", "L0H0", "1000", "1000", "0.600"] in cells
    # matched heads: the shared profiles
    matches = [r.split("\t") for r in page.locator("#matches tbody tr").all_inner_texts()]
    assert any(m[:5] == ["plain-a", "L1H2", "\u2194", "plain-b", "L2H1"] and m[6] == "induction" for m in matches)
    assert all(re.fullmatch(r"-?\d\.\d{3}", m[5]) for m in matches)  # similarity, 1.0 included
    assert any(m[:5] == ["plain-a", "L0H0", "\u2194", "plain-b", "L0H1"] and m[6] == "previous_token" for m in matches)
    # jobs: each finished job links its atlas by a relative path; the failed one shows its error
    hrefs = page.locator("#jobs a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs == jobs["atlas"].dropna().tolist() and len(hrefs) == len(jobs) - 1
    failed = page.locator("#jobs tbody tr.failed")
    assert failed.count() == 1 and "ModelNotFoundError" in failed.inner_text()
    assert failed.locator("a").count() == 0
    if os.environ.get("HEADZOO_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "sweep.png"), full_page=True)
    _check_clean(seen)
    page.close()
    page, seen = _open(browser, out, width=800)
    _no_horizontal_overflow(page)
    assert page.locator("#detectors .chart svg path.head").count() == 12
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_hostile_names_stay_text_in_the_browser(browser, tmp_path):
    from test_atlas_browser import _check_clean

    out, _ = _write(tmp_path, hostile=True)
    page, seen = _open(browser, out)
    assert HOSTILE_MODEL in page.inner_text("#jobs") and HOSTILE_MODEL in page.inner_text("#detectors")
    assert HOSTILE_DETECTOR in page.locator("#detectors h3").all_inner_texts()
    assert page.locator("img, [onerror], [onload]").count() == 0
    assert page.locator("script").count() == 2
    page.wait_for_timeout(200)
    _check_clean(seen)
    page.close()


@pytest.mark.slow
def test_big_sweep_page_opens_fast(browser, tmp_path):
    results, jobs = _big_series()
    out = tmp_path / "big"
    out.mkdir()
    t0 = time.perf_counter()
    (out / "index.html").write_text(render_sweep_page(results, jobs, {}), encoding="utf-8")
    build_s = time.perf_counter() - t0
    page, seen = _open(browser, out)
    ms, all_ms = page.evaluate("[Number(document.body.dataset.renderMs), Number(document.body.dataset.drawnMs)]")
    size = (out / "index.html").stat().st_size
    print(f"\nbig sweep page: {size / 2**20:.2f} MiB, built in {build_s:.1f} s, first paint {ms} ms, "
          f"every chart drawn at {all_ms} ms (navigation start)")
    assert page.locator("#detectors .chart svg path.head").count() == 24 * 200
    from test_atlas_browser import _check_clean

    _check_clean(seen)
    page.close()
