"""The atlas (files, metadata, resume, atomic writes, size), figures and attention views."""

from __future__ import annotations

import dataclasses
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
    # one self-contained page: no assets/ folder beside it
    assert sorted(p.name for p in out.iterdir()) == ["examples.parquet", "index.html", "meta.json", "scores.parquet"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"]["name"] == "planted-demo" and len(meta["model_config_hash"]) == 16
    assert {"headzoo", "transformer-lens", "torch"} <= set(meta["versions"])
    assert meta["detectors"]["retrieval"]["options"]["answer_len"] == 4
    assert meta["probes"]["induction"]["seed"] == 0 and meta["seed"] == 0
    assert re.match(r"\d{4}-\d\d-\d\dT", meta["created"])
    loaded = hz.HeadScores.load(out / "scores.parquet")
    pd.testing.assert_frame_equal(loaded.to_frame(), demo_atlas.scores.to_frame())
    page = (out / "index.html").read_text()
    # every script is inline; nothing is fetched, from the network or from disk
    assert re.findall(r'<script src="([^"]+)"', page) == [] and "<link" not in page
    assert "http://" not in page.split("<script id=\"atlas-data\"")[0] and "https://" not in page.split("<script id=\"atlas-data\"")[0]
    data = json.loads(re.search(r'<script id="atlas-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert sorted(d["name"] for d in data["detectors"]) == sorted(demo_atlas.scores.detectors)
    # grouped by the survey's four stages, in their order
    ranks = [hz.STAGES.index(d["stage"]) for d in data["detectors"]]
    assert ranks == sorted(ranks) and all(d["stage"] in hz.STAGES for d in data["detectors"])
    assert len(data["heads"]) == 12 and data["example"]["shape"] == [3, 4, 41, 41]


def test_a_stale_assets_folder_is_left_alone(demo_atlas, tmp_path):
    """An atlas written before the page became one file left assets/ behind: writing over it
    neither needs nor touches it."""
    stale = tmp_path / "atlas" / "assets"
    stale.mkdir(parents=True)
    (stale / "plotly.min.js").write_text("old")
    out = demo_atlas.write(tmp_path / "atlas")
    assert (stale / "plotly.min.js").read_text() == "old"
    assert "assets/" not in (out / "index.html").read_text()


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
    real = _atlas.run_detectors

    def counting(model, unit, **kw):
        calls.append([d.name for d in unit])
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise _Killed  # killed while the second group runs
        return real(model, unit, **kw)

    monkeypatch.setattr(_atlas, "run_detectors", counting)
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


# -- the page as package data, its typed payload, escaping --------------------------------

PAYLOAD = re.compile(r'<script id="atlas-data" type="application/json">(.*?)</script>', re.DOTALL)


def _page_files() -> dict[str, str]:
    import importlib.resources

    folder = importlib.resources.files("headzoo").joinpath("_data/atlas")
    return {n: folder.joinpath(n).read_text(encoding="utf-8") for n in ("index.html", "atlas.css", "atlas.js")}


def test_page_is_package_data_inlined_into_one_file(demo_atlas):
    files = _page_files()
    for name in ("title", "css", "data", "js"):
        assert files["index.html"].count("{{headzoo:" + name + "}}") == 1
    page = demo_atlas.html()
    assert files["atlas.css"] in page and files["atlas.js"] in page  # inlined verbatim: opens from file://
    assert "{{headzoo:" not in page
    # the packaged files cannot end their own element early once inlined
    assert "</style" not in files["atlas.css"].lower()
    assert "</script" not in files["atlas.js"].lower() and "<!--" not in files["atlas.js"]
    payload = demo_atlas._payload()
    assert json.loads(PAYLOAD.search(page).group(1)) == json.loads(json.dumps(dataclasses.asdict(payload)))


def test_payload_is_typed_and_frozen(demo_atlas):
    payload = demo_atlas._payload()
    assert isinstance(payload, _atlas.AtlasPayload)
    assert isinstance(payload.model, _atlas.PageModel) and payload.model.name == "planted-demo"
    assert all(isinstance(d, _atlas.PageDetector) for d in payload.detectors)
    assert [d.name for d in payload.detectors] == _atlas._by_stage(demo_atlas.scores.detectors, demo_atlas.scores.meta["detectors"])
    head = next(h for h in payload.heads if (h.layer, h.head) == (0, 2))
    assert isinstance(head, _atlas.PageHead) and isinstance(head.top_keys[0], _atlas.PageKey)
    assert head.common_offset == _atlas.PageOffset(1, head.common_offset.share)
    assert isinstance(next(h for h in payload.heads if h.promotes).promotes[0], _atlas.PageOvPair)
    assert payload.example.shape == (3, 4, 41, 41) and payload.meta.weights_fingerprint == demo_atlas.meta["weights_fingerprint"]
    # a score the detector left out is null, every other is the score rounded to 4 decimals
    wide = demo_atlas.scores.matrix("induction").to_numpy()
    assert payload.scores["induction"][2][3] == round(float(wide[2, 3]), 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        payload.n_layers = 7  # type: ignore[misc]


HOSTILE = ["</script><script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "line\u2028sep\u2029x", "<!--", "&lt;b&gt;",
           "{{headzoo:js}}"]


def _relabelled(atlas, names):
    """``atlas`` with detector names, model name and example tokens replaced by ``names``."""
    rename = dict(zip(atlas.scores.detectors, names))
    frame = atlas.scores.to_frame()
    frame["detector"] = frame["detector"].map(lambda d: rename.get(d, d))
    meta = atlas.scores.meta
    meta["detectors"] = {rename.get(k, k): v for k, v in meta["detectors"].items()}
    scores = hz.HeadScores(frame, meta)
    heads = [dict(h, labels=[rename.get(x, x) for x in h["labels"]],
                  top_keys=[dict(k, token=names[i % len(names)]) for i, k in enumerate(h["top_keys"])],
                  promotes=[dict(p, source=names[0], output=names[1]) for p in h["promotes"]]) for h in atlas.heads]
    tokens = [names[i % len(names)] for i in range(len(atlas.example_tokens))]
    top_meta = dict(atlas.meta, model=dict(atlas.meta["model"], name=names[0] + names[2]))
    return _atlas.HeadAtlas(scores, heads, tokens, atlas.example_patterns, top_meta)


def test_every_string_in_the_page_is_escaped(demo_atlas):
    atlas = _relabelled(demo_atlas, HOSTILE)
    page = atlas.html()
    for word in HOSTILE:
        if any(c in word for c in "<>&"):
            assert word not in page, word
    data_text = PAYLOAD.search(page).group(1)
    assert "\u2028" not in data_text and "\u2029" not in data_text  # JavaScript line separators stay escaped
    assert page.count("</script>") == 2 and page.count("<script") == 2  # only the page's own: its data and its code
    assert page.count("<!--") == 0
    assert "<title>headzoo atlas: &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;line" in page
    # a name that looks like a placeholder is text, not a second copy of the script
    assert page.count(_page_files()["atlas.js"]) == 1
    data = json.loads(data_text)  # and the strings come back exactly
    assert set(HOSTILE[:len(data["detectors"])]) <= {d["name"] for d in data["detectors"]}  # unchanged, as data
    assert data["example"]["tokens"][:len(HOSTILE)] == HOSTILE
    assert data["model"]["name"] == HOSTILE[0] + HOSTILE[2]
    assert data["heads"][0]["promotes"][0]["source"] == HOSTILE[0]


def test_the_one_escaper(monkeypatch):
    from headzoo import _viz

    assert _viz.json_for_script is _atlas.json_for_script
    text = _atlas.json_for_script({"k</script>": ["\u2028", "<!--", "&"]})
    assert not set(text) & set("<>&\u2028\u2029") and json.loads(text) == {"k</script>": ["\u2028", "<!--", "&"]}


# -- non-finite numbers: a typed error that says where, never a JSON error -----------------


def test_non_finite_values_are_named(demo_atlas, tmp_path):
    with pytest.raises(hz.NonFiniteError, match=r"data\['a'\]\[1\]"):
        _atlas.json_for_script({"a": [1.0, float("nan")]})

    frame = demo_atlas.scores.to_frame()
    hit = (frame["detector"] == "induction") & (frame["layer"] == 1) & (frame["head"] == 2)
    frame.loc[hit, "score"] = float("inf")
    bad = _atlas.HeadAtlas(hz.HeadScores(frame, demo_atlas.scores.meta), demo_atlas.heads, demo_atlas.example_tokens,
                           demo_atlas.example_patterns, demo_atlas.meta)
    with pytest.raises(hz.NonFiniteError, match=r"'induction'.*L1H2 \(inf\)"):
        bad.html()
    with pytest.raises(hz.NonFiniteError, match="L1H2"):
        bad.write(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # checked before anything is written

    heads = [dict(h) for h in demo_atlas.heads]
    heads[5] = dict(heads[5], promotes=[dict(heads[5]["promotes"][0], logit=float("-inf"))])
    bad = _atlas.HeadAtlas(demo_atlas.scores, heads, demo_atlas.example_tokens, demo_atlas.example_patterns, demo_atlas.meta)
    with pytest.raises(hz.NonFiniteError, match=r"OV logit of head L1H1 \(promotes"):
        bad.html()

    meta = json.loads(json.dumps(demo_atlas.meta))
    meta["detectors"]["induction"]["options"]["weird"] = float("nan")
    bad = _atlas.HeadAtlas(demo_atlas.scores, demo_atlas.heads, demo_atlas.example_tokens, demo_atlas.example_patterns, meta)
    with pytest.raises(hz.NonFiniteError, match=r"meta\['detectors'\]\['induction'\]\['options'\]\['weird'\]"):
        bad.write(tmp_path / "bad")


def test_build_refuses_a_non_finite_score(demo, monkeypatch):
    real = _atlas.run_detectors

    def poisoned(model, unit, **kw):
        part = real(model, unit, **kw)
        frame = part.to_frame()
        frame.loc[(frame["detector"] == "previous_token") & (frame["layer"] == 0) & (frame["head"] == 3), "score"] = float("nan")
        return hz.HeadScores(frame, part.meta)

    monkeypatch.setattr(_atlas, "run_detectors", poisoned)
    with pytest.raises(hz.NonFiniteError, match=r"'previous_token'.*L0H3 \(nan\)"):
        hz.build_atlas(demo, "previous_token")


def test_build_refuses_non_finite_attention_and_names_the_head():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=48, previous_token=(0, 0), induction=(1, 1), seed=3)
    model = planted_model(spec)
    d_head = spec.d_head
    with torch.no_grad():
        model.blocks[1].attn.q.weight[d_head:2 * d_head] = float("nan")  # head 1 of the last layer
    # the weights are refused by name before anything runs ...
    with pytest.raises(hz.NonFiniteError, match=r"'blocks\.1\.attn\.q\.weight'"):
        hz.build_atlas(model, "previous_token")


def test_example_attention_that_overflows_names_the_head(monkeypatch):
    # ... and attention that is not finite on the example (an overflow in low precision, say)
    # is named by head even when every weight is finite.
    from headzoo import _atlas

    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=48, previous_token=(0, 0), induction=(1, 1), seed=3)
    model = planted_model(spec)
    real = _atlas.read_patterns

    def overflowing(model, info, tokens, reduce):
        def poisoned(layer, pattern):
            if layer == 1:
                pattern = pattern.clone()
                pattern[:, 1] = float("nan")
            reduce(layer, pattern)
        real(model, info, tokens, poisoned)

    monkeypatch.setattr(_atlas, "read_patterns", overflowing)
    with pytest.raises(hz.NonFiniteError, match=r"heads L1H1 on the example"):
        _atlas.example_patterns(model, hz.model_info(model), torch.arange(2, 12))


def test_plot_returns_a_figure_and_never_shows(demo_atlas, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(go.Figure, "show", lambda *a, **k: pytest.fail("plot() must not show"))
    fig = demo_atlas.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) == len(demo_atlas.scores.detectors)
    one = demo_atlas.plot("induction")
    assert len(one.data) == 1 and one.data[0].z[2][3] == demo_atlas.scores.matrix("induction").iloc[2, 3]


# -- the resume cache knows the weights ----------------------------------------------------

_TWIN = {"n_layers": 2, "n_heads": 2, "d_head": 16, "d_vocab": 40, "n_ctx": 48, "previous_token": (0, 0), "induction": (1, 1)}
_TWIN_DETECTORS = ["previous_token", "induction", "copying"]


def test_two_models_of_one_shape_never_share_a_cache_entry(tmp_path, monkeypatch):
    from headzoo._fingerprint import weights_fingerprint

    a, b = planted_model(PlantSpec(**_TWIN, seed=1)), planted_model(PlantSpec(**_TWIN, seed=2))
    assert _atlas.model_info(a).config_hash() == _atlas.model_info(b).config_hash()  # the same architecture
    fresh_a = hz.build_atlas(a, _TWIN_DETECTORS).scores.to_frame()
    fresh_b = hz.build_atlas(b, _TWIN_DETECTORS).scores.to_frame()
    assert not fresh_a["score"].equals(fresh_b["score"])  # otherwise this test could not fail

    calls: list[list[str]] = []
    real = _atlas.run_detectors

    def counting(model, unit, **kw):
        calls.append([d.name for d in unit])
        return real(model, unit, **kw)

    monkeypatch.setattr(_atlas, "run_detectors", counting)
    cache = tmp_path / "cache"
    hz.build_atlas(a, _TWIN_DETECTORS, cache_dir=cache)
    n_units = len(calls)
    assert n_units == 2  # the pattern detectors together, the weight detector alone
    calls.clear()
    from_b = hz.build_atlas(b, _TWIN_DETECTORS, cache_dir=cache)
    assert len(calls) == n_units  # nothing of a's was reused
    pd.testing.assert_frame_equal(from_b.scores.to_frame(), fresh_b)
    assert from_b.meta["weights_fingerprint"] == weights_fingerprint(b) != weights_fingerprint(a)
    assert len(list(cache.glob("*.parquet"))) == 2 * n_units
    calls.clear()
    again = hz.build_atlas(b, _TWIN_DETECTORS, cache_dir=cache)  # the same weights resume: no recomputation
    assert calls == []
    pd.testing.assert_frame_equal(again.scores.to_frame(), fresh_b)
    assert again.meta["weights_fingerprint"] == from_b.meta["weights_fingerprint"]


def test_cards_list_composition_partners(demo_atlas):
    """The planted induction head reads from the planted previous-token head (K-composition),
    and that head writes to it: first in both lists, on the card and in the page's data."""
    heads = {(h["layer"], h["head"]): h for h in demo_atlas.heads}
    reads = heads[(2, 3)]["reads_from"]
    assert (reads[0]["layer"], reads[0]["head"], reads[0]["kind"]) == (0, 2, "k")
    assert reads[0]["excess"] > 0 and reads[0]["score"] == pytest.approx(reads[0]["excess"] + demo_atlas.meta["composition"]["baseline"], abs=2e-4)
    writes = heads[(0, 2)]["writes_to"]
    assert (writes[0]["layer"], writes[0]["head"], writes[0]["kind"]) == (2, 3, "k")
    assert all(len(h["reads_from"]) <= 3 and len(h["writes_to"]) <= 3 for h in demo_atlas.heads)
    assert not any(h["reads_from"] for h in demo_atlas.heads if h["layer"] == 0)
    assert all(e["excess"] > 0 for h in demo_atlas.heads for e in h["reads_from"] + h["writes_to"])
    data = json.loads(PAYLOAD.search(demo_atlas.html()).group(1))
    card = next(h for h in data["heads"] if (h["layer"], h["head"]) == (2, 3))
    assert card["reads_from"][0] == {"layer": 0, "head": 2, "kind": "k", "score": reads[0]["score"], "excess": reads[0]["excess"]}
    assert data["meta"]["composition_note"] is None
    assert 'id="card-reads"' in demo_atlas.html() and 'id="card-writes"' in demo_atlas.html()


# -- issue 17: what each card explains (descriptions, contexts on text, importance, literature) --


def test_payload_has_every_new_field(demo_atlas):
    payload = demo_atlas._payload()
    table = hz.list_detectors().set_index("name")["description"]
    assert all(d.description == table[d.name] and d.description for d in payload.detectors)
    assert payload.examples == _atlas.PageExamplesInfo(
        corpus="headzoo's shipped text", n_tokens=demo_atlas.examples.meta["corpus"]["n_tokens"], k=5,
        activations={"attention": "max attention from the query to a non-BOS key",
                     "output_norm": "norm of the head's output at the query"})
    assert payload.downloads == ("scores.parquet", "meta.json", "examples.parquet")
    for head in payload.heads:
        assert head.examples and all(isinstance(e, _atlas.PageHeadExample) for e in head.examples)
        assert {e.activation for e in head.examples} == {"attention", "output_norm"}
        assert head.literature == () and set(head.importance) == {t.name for t in payload.importance.tasks}
    # planted-demo is in no paper: no literature, and the page is told why
    assert payload.agreement is None and "planted-demo" in payload.meta.skipped["literature"]
    data = json.loads(payload.to_json())
    assert {"examples", "importance", "agreement", "downloads"} <= set(data)
    assert {"examples", "importance", "literature"} <= set(data["heads"][0]) and "description" in data["detectors"][0]
    example = data["heads"][0]["examples"][0]
    assert list(example) == ["activation", "kind", "rank", "decile", "value", "context", "attended", "attended_token"]


def test_card_examples_are_the_head_examples_rows(demo_atlas):
    payload = demo_atlas._payload()
    ex = demo_atlas.examples
    assert ex.meta["k"] == 5 and len(ex.heads) == 12
    for card in payload.heads:
        rows = ex.for_head(card.layer, card.head)
        assert len(card.examples) == len(rows)  # every top row (5 per activation) and every decile
        assert sum(e.kind == "top" for e in card.examples) == 10
        for page, (_, row) in zip(card.examples, rows.iterrows(), strict=True):
            assert (page.activation, page.kind, page.rank) == (row["activation"], row["kind"], row["rank"])
            assert page.decile == (None if pd.isna(row["decile"]) else int(row["decile"]))
            assert page.value == pytest.approx(row["value"], rel=1e-3) and page.attended_token == row["attended_token"]
            # the query stays last; only the far left of a long context is cut, and the attended index follows it
            cut = max(0, len(row["context"]) - _atlas._PAGE_CONTEXT)
            assert list(page.context) == row["context"][cut:] and page.context[-1] == row["context"][-1]
            if pd.isna(row["attended"]) or row["attended"] < cut:
                assert page.attended is None
            else:
                assert page.context[page.attended] == row["context"][int(row["attended"])]


def test_examples_round_trip_and_parquet(demo_atlas, tmp_path):
    saved = hz.HeadAtlas.load(demo_atlas.save(tmp_path / "atlas.parquet"))
    pd.testing.assert_frame_equal(saved.examples.to_frame(), demo_atlas.examples.to_frame())
    assert saved.examples.meta == demo_atlas.examples.meta and saved.heads == demo_atlas.heads
    assert saved.meta["skipped"] == demo_atlas.meta["skipped"]
    assert saved._payload() == demo_atlas._payload()
    assert saved.scores.detectors == demo_atlas.scores.detectors  # the examples table is not taken for a detector's
    out = demo_atlas.write(tmp_path / "page")
    written = hz.HeadExamples.load(out / "examples.parquet")
    pd.testing.assert_frame_equal(written.to_frame(), demo_atlas.examples.to_frame())


def test_an_atlas_saved_before_issue_17_still_loads(demo_atlas, tmp_path):
    # no examples, no per-head importance or literature, no descriptions or skipped parts in meta
    heads = [{k: v for k, v in h.items() if k not in ("importance", "literature")} for h in demo_atlas.heads]
    meta = {k: v for k, v in demo_atlas.meta.items() if k not in ("descriptions", "skipped", "importance", "agreement")}
    old = _atlas.HeadAtlas(demo_atlas.scores, heads, demo_atlas.example_tokens, demo_atlas.example_patterns, meta)
    loaded = hz.HeadAtlas.load(old.save(tmp_path / "old.parquet"))
    assert loaded.examples is None
    payload = loaded._payload()
    assert payload.examples is None and payload.importance is None and payload.agreement is None
    assert payload.downloads == ("scores.parquet", "meta.json") and payload.meta.skipped == {}
    assert all(h.examples == () and h.importance == {} and h.literature == () for h in payload.heads)
    table = hz.list_detectors().set_index("name")["description"]
    assert all(d.description == table[d.name] for d in payload.detectors)  # from the registry
    out = loaded.write(tmp_path / "page")
    assert not (out / "examples.parquet").exists()


def test_examples_from_a_given_corpus_or_skipped_with_a_reason(demo, tmp_path, monkeypatch):
    words = "Monday Tuesday Wednesday Monday Tuesday Wednesday " * 6
    atlas = hz.build_atlas(demo, "previous_token", corpus=[words, words], examples_k=2, importance=False)
    assert atlas.examples.meta["corpus"]["source"] == "strings" and atlas.examples.meta["k"] == 2
    assert atlas._payload().examples.corpus == "a list of strings given in Python"
    off = hz.build_atlas(demo, "previous_token", examples=False, importance=False)
    assert off.examples is None and "examples=False" in off.meta["skipped"]["examples"]
    assert off._payload().examples is None and "examples.parquet" not in off._payload().downloads
    # a corpus that cannot be read fails before any detector runs, with its typed error
    monkeypatch.setattr(_atlas, "run_detectors", lambda *a, **k: pytest.fail("a detector ran before the corpus was read"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(hz.InvalidOptionError, match="no \\*.txt file"):
        hz.build_atlas(demo, corpus=tmp_path / "empty")
    with pytest.raises(hz.InvalidOptionError, match="examples_k"):
        hz.build_atlas(demo, examples_k=0)


def test_a_model_without_tokenizer_skips_examples_unless_a_corpus_is_given():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=48, previous_token=(0, 0), induction=None)
    model = cached_planted(spec, "bridge", False)
    atlas = hz.build_atlas(model, "previous_token", importance=False)
    assert atlas.examples is None and "no tokenizer" in atlas.meta["skipped"]["examples"]
    with pytest.raises(hz.UnsupportedTokenizerError):
        hz.build_atlas(model, "previous_token", corpus=["some text"], importance=False)


class _FakeImportance:
    """What build_atlas reads of an hz.HeadImportance: to_frame() and meta."""

    def __init__(self, rows, meta):
        self._rows, self.meta = rows, meta

    def to_frame(self):
        return pd.DataFrame(self._rows, columns=["task", "layer", "head", "effect", "method", "attribution"])


def _fake_importance(effect=0.5, method="exact"):
    rows = [("induction", 0, 1, effect, method, 0.4), ("induction", 1, 0, -0.01, "attribution", -0.01),
            ("ioi", 0, 1, 0.02, "attribution", 0.02)]
    meta = {"tasks": {"induction": {"description": "repeated random tokens", "metric": "loss", "baseline": 3.5},
                      "ioi": {"description": "indirect objects", "metric": "loss", "baseline": 2.0}},
            "skipped": {"succession": "no ordinal sequence tokenises"}, "ablation": "mean", "exact_top": 8}
    return _FakeImportance(rows, meta)


def test_importance_summary_reads_head_importance():
    effects, info = _atlas._importance_summary(_fake_importance())
    assert effects == {(0, 1): {"induction": {"effect": 0.5, "method": "exact"}, "ioi": {"effect": 0.02, "method": "attribution"}},
                       (1, 0): {"induction": {"effect": -0.01, "method": "attribution"}}}
    assert [t["name"] for t in info["tasks"]] == ["induction", "ioi"] and info["tasks"][0]["baseline"] == 3.5
    assert info["ablation"] == "mean" and info["exact_top"] == 8 and "mean-ablated" in info["note"]
    assert info["skipped"] == {"succession": "no ordinal sequence tokenises"}
    with pytest.raises(hz.NonFiniteError, match="'induction' importance of head L0H1"):
        _atlas._importance_summary(_fake_importance(effect=float("nan")))
    with pytest.raises(hz.InvalidOptionError, match="method 'guess'"):
        _atlas._importance_summary(_fake_importance(method="guess"))


def test_importance_on_the_cards_is_head_importance(demo_atlas, demo):
    imp = hz.head_importance(demo, seed=0, progress=False)
    frame = imp.to_frame()
    payload = demo_atlas._payload()
    cards = {(h.layer, h.head): h for h in payload.heads}
    assert len(frame) == len(imp.meta["tasks"]) * 12 and set(imp.meta["tasks"]) >= {"induction"}
    for task, layer, head, effect, method in zip(frame["task"], frame["layer"], frame["head"], frame["effect"], frame["method"]):
        got = cards[(layer, head)].importance[task]
        assert got.method == method and got.effect == pytest.approx(effect, rel=1e-3, abs=1e-9)  # 4 digits on the page
    info = payload.importance
    assert [t.name for t in info.tasks] == list(imp.meta["tasks"]) and info.ablation == "mean"
    assert info.exact_top == imp.meta["exact_top"] and info.skipped == imp.meta["skipped"]
    assert "ioi" in info.skipped  # the planted vocabulary has no names: said, not hidden
    assert all(t.baseline == pytest.approx(imp.meta["tasks"][t.name]["baseline"], rel=1e-3) for t in info.tasks)


def test_importance_reaches_the_cards_and_the_page(demo_atlas, tmp_path):
    effects, info = _atlas._importance_summary(_fake_importance())
    heads = [dict(h, importance=effects.get((h["layer"], h["head"]), {})) for h in demo_atlas.heads]
    atlas = _atlas.HeadAtlas(demo_atlas.scores, heads, demo_atlas.example_tokens, demo_atlas.example_patterns,
                             dict(demo_atlas.meta, importance=info), demo_atlas.examples)
    payload = hz.HeadAtlas.load(atlas.save(tmp_path / "a.parquet"))._payload()
    card = next(h for h in payload.heads if (h.layer, h.head) == (0, 1))
    assert card.importance == {"induction": _atlas.PageImportance(0.5, "exact"), "ioi": _atlas.PageImportance(0.02, "attribution")}
    assert payload.importance.tasks[1] == _atlas.PageTask("ioi", "indirect objects", "loss", 2.0)
    assert payload.importance.exact_top == 8 and payload.importance.skipped == {"succession": "no ordinal sequence tokenises"}
    data = json.loads(PAYLOAD.search(atlas.html()).group(1))
    assert data["heads"][1]["importance"]["induction"] == {"effect": 0.5, "method": "exact"}


def test_hostile_strings_in_corpus_contexts_are_inert(demo_atlas):
    frame = demo_atlas.examples.to_frame()
    frame["context"] = json.dumps(HOSTILE, ensure_ascii=False)
    frame["attended"] = 1
    frame["attended_token"] = HOSTILE[0]
    atlas = _atlas.HeadAtlas(demo_atlas.scores, demo_atlas.heads, demo_atlas.example_tokens, demo_atlas.example_patterns,
                             demo_atlas.meta, hz.HeadExamples(frame, demo_atlas.examples.meta))
    page = atlas.html()
    for word in HOSTILE:
        if any(c in word for c in "<>&"):
            assert word not in page, word
    data = json.loads(PAYLOAD.search(page).group(1))
    assert data["heads"][0]["examples"][0]["context"] == HOSTILE and data["heads"][0]["examples"][0]["attended_token"] == HOSTILE[0]


# -- a GPT-2-shaped model named "gpt2": the literature's labels, and the page's size -----------


@pytest.fixture(scope="module")
def gpt2_atlas():
    from _gpt2 import gpt2_shaped_model

    model = gpt2_shaped_model(model_name="gpt2", n_layers=12, n_heads=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hz.build_atlas(model, ["previous_token", "induction", "duplicate_token"], importance=False, progress=False)


def test_literature_on_the_cards_and_the_agreement_table(gpt2_atlas):
    published = hz.published_heads("gpt2")
    payload = gpt2_atlas._payload()
    cards = {(h.layer, h.head): h for h in payload.heads}
    for layer, head, paper_label, citation in zip(published["layer"], published["head"], published["paper_label"],
                                                 published["citation"]):
        assert _atlas.PageLiterature in {type(x) for x in cards[(layer, head)].literature}
        assert (paper_label, citation) in {(x.paper_label, x.citation) for x in cards[(layer, head)].literature}
    assert sum(len(h.literature) for h in payload.heads) == len(published)
    assert cards[(10, 7)].literature[0].label in {"negative_name_mover", "copy_suppression"}
    named = {(int(a), int(b)) for a, b in zip(published["layer"], published["head"])}
    assert all(h.literature == () for key, h in cards.items() if key not in named)

    expected = hz.literature_agreement(gpt2_atlas.scores, "gpt2")
    agreement = payload.agreement
    assert agreement.model == "gpt2" and "pretrained weights" in agreement.note and "not expected to agree" in agreement.note
    assert len(agreement.rows) == len(expected)
    for row, (_, want) in zip(agreement.rows, expected.iterrows(), strict=True):
        assert (row.layer, row.head, row.label, row.paper_label, row.citation, row.verified, row.headzoo_labels) == (
            want["layer"], want["head"], want["label"], want["paper_label"], want["citation"], want["verified"],
            want["headzoo_labels"])
        assert row.headzoo_score == (None if pd.isna(want["headzoo_score"]) else pytest.approx(want["headzoo_score"]))
        assert row.threshold == (None if pd.isna(want["threshold"]) else want["threshold"])
        assert row.agrees == (None if pd.isna(want["agrees"]) else bool(want["agrees"]))
    assert any(r.headzoo_score is not None for r in agreement.rows)  # the detectors that ran are scored
    assert "literature" not in gpt2_atlas.meta["skipped"]


def test_gpt2_sized_page_with_examples_stays_under_2_mb(gpt2_atlas):
    page = gpt2_atlas.html()
    size = len(page.encode("utf-8"))
    print(f"GPT-2-shaped 12 x 12 atlas page with examples: {size / 1e6:.2f} MB")
    assert all(h.examples for h in gpt2_atlas._payload().heads)
    assert size <= 2_000_000


def test_a_model_named_like_a_catalogued_one_but_smaller_gets_no_literature():
    from _gpt2 import gpt2_shaped_model

    model = gpt2_shaped_model(model_name="gpt2", n_layers=2, n_heads=4)
    atlas = hz.build_atlas(model, "previous_token", examples=False, importance=False)
    assert atlas.meta.get("agreement") is None and all(h["literature"] == [] for h in atlas.heads)
    assert "2 layers x 4 heads" in atlas.meta["skipped"]["literature"]
