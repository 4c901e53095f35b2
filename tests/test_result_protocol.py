"""Every result type follows one protocol: ``to_frame()``, ``plot()`` returning a figure, offline
escaped ``_repr_html_``, and ``save``/``load`` round-tripping exactly through a checksummed file
that refuses damaged, truncated, foreign and other-type files with a typed error naming the file."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo._io import _MARK, Result

from conftest import cached_planted
from headzoo.testing import PlantSpec

SPEC = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64,
                 previous_token=(0, 1), duplicate_token=(1, 2), induction=(2, 0), seed=11)
KINDS = ["HeadScores", "HeadEffects", "MaskingCurve", "NeedleRun", "NeedleRun-masked", "CompositionScores", "HeadGraph", "HeadImportance", "AtlasComparison",
         "Sweep"]
# A hostile string: markup, and the checksum's own marker with 64 hex digits, which must not
# be mistaken for the checksum field when it sits in a saved result.
HOSTILE = "<script>alert(1)</script>" + _MARK.decode() + "ab" * 32
_BUILT: dict[str, object] = {}


def _model():
    return cached_planted(SPEC, "bridge", True)


def _probe() -> hz.NeedleHaystack:
    return hz.NeedleHaystack(lengths=(30,), depths=(0.25, 0.75), n_needles=1, answer_len=3)


def build(kind: str):
    """A small real result of each kind, made once per test session (read-only in the tests)."""
    if kind in _BUILT:
        return _BUILT[kind]
    model = _model()
    if kind == "HeadScores":
        scores = hz.detect(model, ["induction", "previous_token"], n_prompts=2, seed=3)
        details = pd.DataFrame({"layer": [2, 2], "head": [0, 1], "task": ["days", "months"], "accuracy": [1.0, 0.5]})
        out = hz.HeadScores(scores.to_frame(), scores.meta, details={"induction": details})
    elif kind == "HeadEffects":
        g = torch.Generator().manual_seed(0)
        r = torch.randint(2, SPEC.d_vocab, (3, 5), generator=g)
        bos = torch.zeros(3, 1, dtype=torch.long)
        clean = torch.cat([bos, r, r], 1)
        corrupted = torch.cat([bos, torch.randint(2, SPEC.d_vocab, (3, 5), generator=g), r], 1)
        metric = hz.patching.logit_diff(r[:, 2], r[:, 2] + 1, pos=7, per_example=True)
        out = hz.patching.patch_heads(model, clean, corrupted, metric, per_example=True)
    elif kind == "MaskingCurve":
        out = hz.retrieval_masking(model, k=1, n_random=1, methods="zero", probe=_probe(), progress=False)
    elif kind == "NeedleRun":
        out = hz.decode_needles(model, _probe().build(model))
    elif kind == "NeedleRun-masked":
        out = hz.decode_needles(model, _probe().build(model), mask_heads=[(2, 0)], mask_method="zero")
    elif kind == "CompositionScores":
        out = hz.composition_scores(model, n_random=8)
    elif kind == "HeadGraph":
        out = hz.head_graph(model, composition=build("CompositionScores"), top_k=4)
    elif kind == "HeadImportance":
        out = hz.head_importance(model, ["induction", "retrieval"], exact_top=2, n_prompts=3, progress=False)
    elif kind == "AtlasComparison":
        atlas = hz.build_atlas(model, ["induction", "previous_token"], n_prompts=2, progress=False)
        out = hz.compare_atlases(atlas, atlas)
    elif kind == "Sweep":
        import functools
        import tempfile

        from headzoo.testing import planted_model

        models = [hz.SweepModel(name, None, loader=functools.partial(planted_model, SPEC, name=name))
                  for name in ("planted-a", HOSTILE)]
        out = hz.sweep(models, ["induction", "previous_token"], out=tempfile.mkdtemp(prefix="headzoo-sweep-"),
                       executor="serial", examples=False, importance=False, n_prompts=2, progress=False)
    _BUILT[kind] = out
    return out


@pytest.fixture(params=KINDS)
def result(request):
    return build(request.param)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # values, dtypes, column order


def assert_same(a, b) -> None:
    """Everything a result holds is equal (frames exactly, with dtypes; tensors with dtypes)."""
    assert type(a) is type(b)
    if isinstance(a, hz.NeedleRun):
        assert len(a.trials) == len(b.trials) and a.trials.n_decode == b.trials.n_decode
        for x, y in [*zip(a.trials.tokens, b.trials.tokens), *zip(a.trials.answers, b.trials.answers)]:
            assert x.dtype == y.dtype and torch.equal(x, y)
        _frames_equal(a.trials.frame, b.trials.frame)
        assert a.trials.meta == b.trials.meta
        assert [type(v) for v in a.trials.meta.values()] == [type(v) for v in b.trials.meta.values()]  # tuples stay tuples
        assert a.generated.dtype == b.generated.dtype and torch.equal(a.generated, b.generated)
        assert (a.keys is None) == (b.keys is None)
        if a.keys is not None:
            assert a.keys.dtype == b.keys.dtype == torch.int32 and torch.equal(a.keys, b.keys)
        assert a.mode == b.mode and a.masked == b.masked
    else:
        assert a.meta == b.meta
    if isinstance(a, hz.HeadScores):
        assert a._details.keys() == b._details.keys()
        for name in a._details:
            _frames_equal(a.details(name), b.details(name))
    if isinstance(a, hz.HeadEffects):
        _frames_equal(a.per_example(), b.per_example())
    if isinstance(a, hz.Sweep):
        _frames_equal(a.jobs, b.jobs)
    _frames_equal(a.to_frame(), b.to_frame())


def other_kind(result) -> type:
    return hz.HeadEffects if isinstance(result, hz.HeadScores) else hz.HeadScores


# -- the protocol ---------------------------------------------------------------------------
def test_every_result_type_shares_one_save_and_load():
    for cls in (hz.HeadScores, hz.HeadEffects, hz.MaskingCurve, hz.NeedleRun, hz.CompositionScores, hz.HeadGraph,
                hz.HeadImportance, hz.AtlasComparison, hz.Sweep):
        assert issubclass(cls, Result) and cls._FORMAT == cls.__name__
        assert cls.save is Result.save and cls.load.__func__ is Result.load.__func__


def test_round_trip_is_exact(result, tmp_path):
    path = result.save(tmp_path / "sub" / "r.parquet")
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    back = type(result).load(path)
    assert_same(result, back)
    again = type(result).load(back.save(tmp_path / "again.parquet"))  # and a second generation
    assert_same(result, again)
    frame = pd.read_parquet(path)  # any Parquet reader opens the tidy frame
    assert list(frame.columns) == list(result.to_frame().columns) and len(frame) == len(result.to_frame())


def test_every_bit_flip_is_caught(result, tmp_path):
    """A dense sample of single-bit flips over the whole file, and every bit of the checksum
    field, the Parquet magic and footer length: each load raises CorruptFileError naming the
    file (the checksum covers every byte), or, were a flip harmless, returns an equal result."""
    raw = result.save(tmp_path / "r.parquet").read_bytes()
    n_bits = 8 * len(raw)
    at = raw.rindex(_MARK)
    special = [*range(32), *range(8 * at, 8 * (at + len(_MARK) + 64)), *range(n_bits - 64, n_bits)]
    positions = sorted(set(range(0, n_bits, max(1, n_bits // 500))) | set(special))
    assert len(positions) >= 400
    target = tmp_path / "flipped.parquet"
    caught = 0
    for bit in positions:
        damaged = bytearray(raw)
        damaged[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(damaged))
        try:
            back = type(result).load(target)
        except hz.CorruptFileError as exc:
            assert str(target) in str(exc) and exc.path == target
            caught += 1
        else:
            assert_same(result, back)
    assert caught == len(positions)  # by construction no flip gets through, harmless or not


def test_damaged_files_name_themselves(result, tmp_path):
    raw = result.save(tmp_path / "r.parquet").read_bytes()
    cls = type(result)
    for name, data, match in [
        ("empty", b"", "not a complete Parquet"),
        ("head", raw[: len(raw) // 2], "not a complete Parquet"),
        ("last-byte", raw[:-1], "not a complete Parquet"),
        ("no-footer", raw[:4] + raw[-8:], "footer length"),
        ("text", b"layer,head,score\n0,1,0.5\n", "not a headzoo result file"),
    ]:
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(data)
        with pytest.raises(hz.CorruptFileError, match=match) as info:
            cls.load(path)
        assert str(path) in str(info.value)
    edited = bytearray(raw)
    edited[len(raw) // 3] ^= 0xFF
    (tmp_path / "edited.parquet").write_bytes(bytes(edited))
    with pytest.raises(hz.CorruptFileError, match="does not match the SHA-256 checksum"):
        cls.load(tmp_path / "edited.parquet")


def test_a_file_of_another_type_names_the_type_that_loads_it(result, tmp_path):
    path = result.save(tmp_path / "r.parquet")
    wrong = other_kind(result)
    mine = type(result).__name__
    with pytest.raises(hz.CorruptFileError, match=rf"is a {mine} file, not a {wrong.__name__} file: load it with hz\.{mine}\.load"):
        wrong.load(path)


def test_a_parquet_file_not_from_headzoo_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    pd.DataFrame({"detector": ["induction"], "layer": [0], "head": [1], "score": [0.5]}).to_parquet(path)
    for cls in (hz.HeadScores, hz.HeadEffects, hz.MaskingCurve, hz.NeedleRun):
        with pytest.raises(hz.CorruptFileError, match="not a headzoo result file.*pandas.read_parquet") as info:
            cls.load(path)
        assert str(path) in str(info.value)


def test_a_missing_file_is_not_called_damaged(tmp_path):
    with pytest.raises(FileNotFoundError):
        hz.HeadScores.load(tmp_path / "missing.parquet")


def test_plot_returns_a_figure_and_never_shows_it(result, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(go.Figure, "show", lambda *a, **k: pytest.fail("plot() must not show the figure"))
    fig = result.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1


def hostile(result):
    """The same result with a hostile string wherever the type shows a name."""
    if isinstance(result, hz.HeadScores):
        frame = result.to_frame().assign(detector=lambda f: f["detector"].replace("induction", HOSTILE))
        meta = result.meta
        meta["model"]["name"] = HOSTILE
        meta["detectors"][HOSTILE] = meta["detectors"].pop("induction")
        return hz.HeadScores(frame, meta, details={HOSTILE: result.details("induction")})
    if isinstance(result, hz.HeadEffects):
        return hz.HeadEffects(result.to_frame(), {**result.meta, "kind": HOSTILE, "direction": HOSTILE}, result._examples)
    if isinstance(result, hz.CompositionScores):
        return hz.CompositionScores(result.to_frame(), {**result.meta, "model": {**result.meta["model"], "name": HOSTILE}})
    if isinstance(result, hz.HeadGraph):
        frame = result.to_frame().assign(evidence=HOSTILE)
        return hz.HeadGraph(frame, {**result.meta, "model": {**result.meta["model"], "name": HOSTILE}})
    if isinstance(result, hz.HeadImportance):
        meta = {**result.meta, "model": {**result.meta["model"], "name": HOSTILE}}
        meta["tasks"] = {HOSTILE if k == "induction" else k: v for k, v in meta["tasks"].items()}
        return hz.HeadImportance(result.frame.assign(task=result.frame["task"].replace("induction", HOSTILE)), meta)
    if isinstance(result, hz.AtlasComparison):
        meta = {**result.meta, "a": {**result.meta["a"], "name": HOSTILE}, "b": {**result.meta["b"], "name": HOSTILE}}
        return hz.AtlasComparison(result.frame.assign(detector=result.frame["detector"].replace("induction", HOSTILE)), meta)
    if isinstance(result, hz.MaskingCurve):
        meta = {**result.meta, "model": {**result.meta["model"], "name": HOSTILE}}
        return hz.MaskingCurve(result.frame.assign(method=HOSTILE), meta)
    if isinstance(result, hz.Sweep):
        return result  # one of its models is already named HOSTILE
    masked = {"heads": [[2, 0]], "method": HOSTILE}
    return dataclasses.replace(result, mode=HOSTILE, masked=masked)


def test_html_is_offline_and_escapes_hostile_strings(result, tmp_path):
    page = result._repr_html_()
    assert "<script" not in page and "http" not in page and "<iframe" not in page
    bad = hostile(result)
    page = bad._repr_html_()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # plotly renders titles as HTML; serialise as-is (fig.to_json() would escape "<" itself),
    # with arrays as lists since older plotly keeps numpy arrays in to_plotly_json()
    raw = json.dumps(bad.plot().to_plotly_json(), default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    assert "<script>alert(1)" not in raw
    assert_same(bad, type(bad).load(bad.save(tmp_path / "hostile.parquet")))  # the marker in a name is harmless


def test_to_frame_is_a_copy(result):
    frame = result.to_frame()
    frame.iloc[0, 0] = frame.iloc[1, 0]
    frame["extra"] = 1
    assert "extra" not in result.to_frame().columns


# -- what a save refuses, and atomic writes ---------------------------------------------------
def test_a_failed_save_leaves_the_old_file_alone(tmp_path):
    curve = build("MaskingCurve")
    path = curve.save(tmp_path / "c.parquet")
    before = path.read_bytes()
    bad = hz.MaskingCurve(curve.frame, {**curve.meta, "seed": np.int64(3)})
    with pytest.raises(hz.InvalidOptionError, match="int64.*cannot store exactly"):
        bad.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]
    with pytest.raises(hz.InvalidOptionError, match="keys must be strings"):
        hz.MaskingCurve(curve.frame, {**curve.meta, "by_k": {1: 0.5}}).save(tmp_path / "d.parquet")


def test_a_column_name_that_could_forge_the_checksum_is_refused(tmp_path):
    scores = build("HeadScores")
    forged = hz.HeadScores(scores.to_frame().assign(**{HOSTILE: 0.0}), scores.meta)
    with pytest.raises(hz.InvalidOptionError, match="column names"):
        forged.save(tmp_path / "f.parquet")
    assert not list(tmp_path.iterdir())


def test_results_do_not_keep_the_callers_objects():
    curve = build("MaskingCurve")
    frame, meta = curve.to_frame(), curve.meta | {"note": ["x"]}
    made = hz.MaskingCurve(frame, meta)
    frame.loc[0, "accuracy"] = -1.0
    meta["note"].append("y")
    assert made.frame.loc[0, "accuracy"] != -1.0 and made.meta["note"] == ["x"]


# -- files saved before checksums existed -------------------------------------------------------
def _legacy_scores_file(scores: hz.HeadScores, path) -> None:
    """Written exactly as headzoo 0.1 wrote HeadScores (no checksum, no format tag)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = {b"headzoo": json.dumps(scores.meta).encode()}
    for name in scores._details:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(scores.details(name), preserve_index=False), sink)
        extra[f"headzoo_details/{name}".encode()] = sink.getvalue().to_pybytes()
    table = pa.Table.from_pandas(scores.to_frame(), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **extra}), path)


def _legacy_effects_file(effects: hz.HeadEffects, path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = {b"headzoo": json.dumps(effects.meta).encode(), b"headzoo_examples": json.dumps(effects._examples.tolist()).encode()}
    table = pa.Table.from_pandas(effects.to_frame(), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **extra}), path)


@pytest.mark.parametrize("kind", ["HeadScores", "HeadEffects"])
def test_a_pre_checksum_file_says_how_to_resave_it(kind, tmp_path):
    result = build(kind)
    path = tmp_path / "old.parquet"
    (_legacy_scores_file if kind == "HeadScores" else _legacy_effects_file)(result, path)
    cls = type(result)
    with pytest.raises(hz.CorruptFileError, match=rf"before result files carried a checksum.*hz\.{kind}\.load\(.*unchecked=True\)\.save"):
        cls.load(path)
    with pytest.raises(hz.CorruptFileError, match=rf"is a {kind} file saved before.*hz\.{kind}\.load"):
        other_kind(result).load(path, unchecked=True)
    old = cls.load(path, unchecked=True)
    assert_same(result, old)
    old.save(path)  # re-saved: now with a checksum, and loads without the escape hatch
    assert_same(result, cls.load(path))


# -- HeadScores: options and empty detectors -----------------------------------------------------
@pytest.mark.parametrize("value", [-1, 0, 1.5, 2.0, True, False, np.bool_(True), "3", None])
def test_positive_integers_are_real_integers(value):
    # (the tests run headzoo under beartype, which stops a float before the method sees it;
    # without beartype, this is the check the methods make)
    from headzoo._io import positive_int

    with pytest.raises(hz.InvalidOptionError, match="k must be a positive integer"):
        positive_int("k", value)
    assert positive_int("k", np.int64(3)) == 3 and type(positive_int("k", np.int64(3))) is int


@pytest.mark.parametrize("k", [-1, 0, True])
def test_top_refuses_k_that_is_not_a_positive_integer(k):
    scores = build("HeadScores")
    with pytest.raises(hz.InvalidOptionError, match="k must be a positive integer"):
        scores.top(k)
    with pytest.raises(hz.InvalidOptionError, match="k must be a positive integer"):
        scores.plot_top(k)
    effects = build("HeadEffects")
    with pytest.raises(hz.InvalidOptionError, match="k must be a positive integer"):
        effects.top(k)


def test_top_counts_and_its_other_options():
    scores = build("HeadScores")
    assert len(scores.top(2)) == 2 * len(scores.detectors)
    assert len(scores.top(100, "induction")) == 12  # every head, none dropped
    with pytest.raises(hz.InvalidOptionError, match="metric"):
        scores.top(2, metric="nope")
    with pytest.raises(hz.InvalidOptionError, match="by must be"):
        build("HeadEffects").top(2, by="size")


@pytest.mark.parametrize("cols", [0, -2, True])
def test_plot_refuses_cols_that_are_not_positive_integers(cols):
    with pytest.raises(hz.InvalidOptionError, match="cols must be a positive integer"):
        build("HeadScores").plot(cols=cols)


def test_a_detector_that_scored_no_head_says_so():
    scores = build("HeadScores")
    frame = scores.to_frame()
    empty = hz.HeadScores(frame[frame["detector"] != "induction"], scores.meta)
    assert empty.detectors == ["previous_token"]
    for call in (lambda: empty.matrix("induction"), lambda: empty.top(1, "induction"), lambda: empty.plot("induction")):
        with pytest.raises(hz.EmptyResultError, match="'induction' was run but scored no head.*too short"):
            call()
    assert empty.threshold("induction") == scores.threshold("induction")
    with pytest.raises(hz.UnknownDetectorError, match="Did you mean 'induction'"):
        empty.matrix("inductionn")


def test_needle_run_frame_is_to_frame():
    run = build("NeedleRun")
    _frames_equal(run.frame(), run.to_frame())
    _frames_equal(run.frame(0.9), run.to_frame(0.9))
    assert {"recall", "retrieved", "answer", "generated"} <= set(run.to_frame().columns)
    assert "NeedleRun(" in repr(run) and "tensor" not in repr(run)
