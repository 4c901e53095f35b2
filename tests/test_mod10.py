"""Mod-10 features (hz.mod10_features) and successor editing (hz.successor_editing).

Ground truth: ``headzoo.testing.successor_model`` embeds number ``n`` as a tens code plus a units
code ``U[n % 10]`` (plus noise), and its successor head maps ``U[k]`` to ``U[k + 1]`` without a
carry. So the ten directions are known (the centred units codes), the held-out accuracy must be
~1 for mod 10 and near chance for mod 7, a units edit must work except where it needs a carry,
and the unedited head must score exactly what the ``successor`` detector scores.
"""

from __future__ import annotations

import functools
import html

import numpy as np
import pandas as pd
import pytest
import torch
from _gpt2 import gpt2_shaped_model, gpt2_tokenizer

import headzoo as hz
from headzoo.testing import planted_model, successor_model, successor_placements, word_tokenizer

# (seed, n_layers, n_heads, tens_dim, units_dim, noise, n_numbers): placements drawn from the seed
SETTINGS = [
    (0, 2, 4, 10, 10, 0.0, 100),
    (2, 2, 5, 12, 16, 0.2, 60),
    (5, 2, 3, 5, 11, 0.2, 80),
    (6, 3, 2, 10, 10, 0.2, 150),
]
METHODS = ["means", "probe", "sae"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The probe's LBFGS and the SAE's Adam loop run many small products; on a shared 2-core
    machine torch's two threads contend and those loops run up to ~40x slower than on one
    thread. Only speed changes; the setting is restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def planted(setting: tuple) -> tuple:
    """``(model, successor head, setting)``: read-only, shared by the tests."""
    seed, n_layers, n_heads, tens_dim, units_dim, noise, n_numbers = setting
    place = successor_placements(n_layers, n_heads, seed)
    model = successor_model(n_layers=n_layers, n_heads=n_heads, tens_dim=tens_dim, units_dim=units_dim, noise=noise,
                            n_numbers=n_numbers, seed=seed, **place)
    return model, place["successor"]


@functools.cache
def fitted(setting: tuple, method: str) -> hz.Mod10Features:
    return hz.mod10_features(planted(setting)[0], method=method, progress=False)


def true_units(model, tens_dim: int, units_dim: int) -> torch.Tensor:
    """``[10, d_model]``: the centred units codes where the embedding holds them (the ``UNIT``
    block after ``TEN``), read off the unembedding, which holds each number's clean codes."""
    ids = [model.tokenizer.convert_tokens_to_ids(str(r)) for r in range(10)]
    w_u = model.W_U.detach()
    out_rows = (w_u.abs().sum(1) > 0).nonzero().flatten()  # the OUT block: tens rows, then units rows
    codes = w_u[out_rows[tens_dim:]][:, ids].T  # [10, units_dim]
    true = torch.zeros(10, model.cfg.d_model)
    true[:, tens_dim : tens_dim + units_dim] = codes - codes.mean(0)
    return true


# -- ground truth ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"seed{s[0]}")
def test_directions_are_recovered_and_mod_10_is_special(setting, method):
    model, _ = planted(setting)
    feats = fitted(setting, method)
    frame = feats.to_frame().set_index("modulus")
    assert list(frame.index) == [2, 5, 7, 10, 12] and (frame["method"] == method).all()
    assert feats.directions.shape == (10, model.cfg.d_model) and feats.directions.dtype == torch.float32
    assert feats.probe_accuracy >= 0.95 and feats.probe_accuracy == frame.loc[10, "accuracy"]
    # 7 is coprime to 10: the units code says nothing about n % 7 (tens and units are independent codes)
    assert frame.loc[7, "accuracy"] <= 0.4 < 0.95 <= frame.loc[10, "accuracy"]
    assert frame.loc[10, "chance"] == pytest.approx(0.1) and frame.loc[7, "chance"] == pytest.approx(1 / 7)
    assert feats.variance_explained > 2 * feats.variance_random > 0
    res = feats.residues()
    if method == "means":
        cos = torch.nn.functional.cosine_similarity(feats.directions, true_units(model, setting[3], setting[4]), dim=1)
        assert cos.min() >= 0.9, cos
        assert np.allclose(res["cosine_with_means"], 1.0)
    else:  # the paper: probe and SAE directions agree with the class means
        assert res["cosine_with_means"].min() >= 0.8
    if method == "sae":
        sae = feats.meta["sae"]
        # sparse: about a tens and a units feature per number, plus a few that share the noise
        assert sae["reconstruction_train"] > 0.8 and 1.5 <= sae["l0"] <= sae["size"] / 2
        assert len(set(res["feature"])) == 10 and (res["selectivity"] > 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"seed{s[0]}")
def test_editing_moves_the_successor_except_across_a_carry(setting, method):
    model, head = planted(setting)
    edit = hz.successor_editing(model, head, fitted(setting, method))
    frame, summary = edit.to_frame(), edit.summary().set_index("task")
    assert list(summary.index) == ["numbers", "all"]
    row = summary.loc["all"]
    assert row["success_no_carry"] >= 0.9
    assert row["success_carry"] <= 0.05  # a units edit cannot reach x9 + 1 = (x+1)0
    assert row["control_success"] <= row["chance"] + 0.02
    assert row["n_pairs"] == len(frame) and row["n_carry"] == int(frame["carry"].sum()) > 0
    assert 0.8 <= row["success"] <= 0.95  # reported overall: the carries pull it below the no-carry rate
    # where the units edit lands on x9 the head raises 10 * (x9 // 10), as planted
    carry = frame[frame["carry"] & ~frame["success"]]
    assert (carry["predicted"].astype(int) == carry["edited"].astype(int) // 10 * 10).mean() >= 0.9
    ok = frame[~frame["carry"]]
    assert (ok["expected"].astype(int) == ok["source_value"] - ok["source_index"] + ok["target_index"] + 1).all()


@pytest.mark.parametrize("setting", SETTINGS[:2], ids=lambda s: f"seed{s[0]}")
def test_the_unedited_head_scores_what_the_successor_detector_scores(setting):
    model, head = planted(setting)
    feats = fitted(setting, "means")
    edit = hz.successor_editing(model, head, feats)
    details = hz.detect(model, "successor", tasks=list(feats.tasks)).details("successor")
    for layer, h in [head, (0, 0)]:
        mine = details[(details["layer"] == layer) & (details["head"] == h)].set_index("task")["accuracy"]
        other = hz.successor_editing(model, (layer, h), feats).unedited()
        assert other.groupby("task")["success"].mean().to_dict() == pytest.approx(mine.to_dict(), abs=1e-12)
    n = setting[-1]  # numbers 0..n-1: of the n - 1 pairs, those from x9 need a carry, which the head lacks
    assert edit.summary().set_index("task").loc["numbers", "unedited"] == pytest.approx(1 - (n // 10 - 1) / (n - 1))


def test_an_edit_is_the_head_s_ov_circuit_on_the_edited_embedding_computed_by_hand():
    setting = SETTINGS[1]
    model, (layer, h) = planted(setting)
    feats = fitted(setting, "probe")
    frame = hz.successor_editing(model, (layer, h), feats).to_frame()
    task = feats.tasks[0]
    ids = torch.tensor(task.token_ids)
    w_ee = hz.effective_embedding(model, ids)
    # the model has no LayerNorm: the OV circuit is x @ W_V @ W_O @ W_U, nothing else
    ov = model.W_V[layer, h].detach() @ model.W_O[layer, h].detach() @ model.W_U.detach()[:, ids]
    pick = frame.sample(25, random_state=0)
    for _, r in pick.iterrows():
        x = w_ee[task.token_ids.index(int(r["source_id"]))]
        x_edit = x - feats.directions[int(r["source_index"])] + feats.directions[int(r["target_index"])]
        assert int(ids[(x_edit @ ov).argmax()]) == int(r["predicted_id"])
    unedited = hz.successor_editing(model, (layer, h), feats).unedited()
    for _, r in unedited.head(20).iterrows():
        assert int(ids[(w_ee[task.token_ids.index(int(r["source_id"]))] @ ov).argmax()]) == int(r["predicted_id"])
    circuits = hz.WeightCircuits(model)  # and what WeightCircuits says for the unedited tokens
    logits = circuits.ov_logits(layer, w_ee, ids)[h]
    assert torch.allclose(logits, w_ee @ ov, atol=1e-4)


def test_tokens_frame_projections_and_split():
    setting = SETTINGS[0]
    model, _ = planted(setting)
    feats = fitted(setting, "means")
    tok = feats.tokens()
    assert list(tok.columns) == ["token_id", "token", "task", "value", "residue", "split", "predicted",
                                 *[f"proj_{r}" for r in range(10)]]
    assert (tok["token"] == tok["value"].astype(str)).all() and (tok["residue"] == tok["value"] % 10).all()
    held = tok[tok["split"] == "heldout"]
    assert set(tok["split"]) == {"train", "heldout"} and len(held) == 20  # 20% of each residue's ten numbers
    assert (held.groupby("residue").size() == 2).all()
    assert (held["predicted"] == held["residue"]).mean() == feats.probe_accuracy
    x = hz.effective_embedding(model, torch.tensor(tok["token_id"].to_numpy()))
    x = x - x.mean(0)
    unit = feats.directions / feats.directions.norm(dim=1, keepdim=True)
    assert np.allclose(tok[[f"proj_{r}" for r in range(10)]].to_numpy(), (x @ unit.T).numpy(), atol=1e-5)
    # each number projects most on its own residue's direction, as in the paper's figure
    assert (tok[[f"proj_{r}" for r in range(10)]].to_numpy().argmax(1) == tok["residue"].to_numpy()).all()


def test_seeded_and_the_same_tokens_in_any_form_give_the_same_features():
    model, _ = planted(SETTINGS[0])
    task = hz.numeric_tasks(model.tokenizer)[0][0]
    mapping = dict(zip(task.token_ids, task.index_values))
    kept = dict(mapping)
    a = hz.mod10_features(model, task, method="probe")
    b = hz.mod10_features(model, mapping, method="probe")
    c = hz.mod10_features(model, [task, hz.OrdinalTask("again", task.token_ids[:30], values=task.values[:30])],
                          method="probe")
    assert mapping == kept  # not mutated
    assert torch.equal(a.directions, b.directions) and torch.equal(a.directions, c.directions)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    cover = c.coverage().set_index("task")
    assert cover.loc["again", "n_tokens"] == 30 and cover.loc["again", "n_used"] == 0  # ids kept once, first task
    assert len(c.tokens()) == 100
    other = hz.mod10_features(model, task, method="probe", seed=1)
    assert not other.tokens()["split"].equals(a.tokens()["split"])


def test_a_mapping_with_repeated_values_needs_explicit_tasks_to_edit():
    model, head = planted(SETTINGS[0])
    task = hz.numeric_tasks(model.tokenizer)[0][0]
    fake_twin = {**dict(zip(task.token_ids[:50], task.values[:50])), **{t: v - 50 for t, v in
                                                                          zip(task.token_ids[50:], task.values[50:])}}
    feats = hz.mod10_features(model, fake_twin)
    assert feats.tasks == () and feats.probe_accuracy >= 0.95
    with pytest.raises(hz.InvalidOptionError, match="tasks="):
        hz.successor_editing(model, head, feats)
    edit = hz.successor_editing(model, head, feats, tasks=[task])
    assert edit.summary().set_index("task").loc["all", "success_no_carry"] >= 0.9


def test_sparse_classes_of_other_moduli_do_not_break_anything():
    model, _ = planted(SETTINGS[0])
    tok = model.tokenizer
    mapping = {tok.convert_tokens_to_ids(str(n)): n for n in range(20)}  # two per residue of 10; 1 for some of 12
    for method in METHODS:
        feats = hz.mod10_features(model, mapping, method, moduli=(7, 12, 16), progress=False)
        frame = feats.to_frame().set_index("modulus")
        assert list(frame.index) == [7, 10, 12, 16]
        assert frame.loc[16, "n_classes"] == 16  # 16..19 -> 0..3: every class has a training token
        assert np.isfinite(frame[["accuracy", "majority", "variance_explained"]].to_numpy()).all()
        assert (feats.residues()["n_heldout"] == 1).all()


# -- a real tokenizer -----------------------------------------------------------------------
def test_gpt2_tokenizer_coverage_and_a_random_gpt2_shaped_model():
    model = gpt2_shaped_model(0, d_model=32, n_heads=4)
    feats = hz.mod10_features(model, method="sae", sae_steps=50, progress=False)
    cover = feats.coverage().set_index("task")
    expected = hz.task_coverage(gpt2_tokenizer(), lists="numeric", n_vocab=50257)
    expected = expected[expected["task"] != ""].set_index("task")
    assert (cover.loc[expected.index, "n_tokens"] == expected["n_kept"]).all()
    assert cover.loc["numbers", "n_tokens"] > 500 and cover.loc["numbers_space", "n_tokens"] > 300
    assert {"months", "days_space", "roman_numerals"} <= set(cover.index)
    assert len(feats.tokens()) == cover["n_used"].sum() and feats.tokens()["token_id"].is_unique
    frame = feats.to_frame()
    assert np.isfinite(frame[["accuracy", "chance", "majority", "variance_explained", "variance_random"]].to_numpy()).all()
    assert (frame["n_classes"] == frame["modulus"]).all()
    numbers = feats.tokens()
    numbers = numbers[numbers["task"] == "numbers_space"]
    assert (numbers["token"].str.strip().astype(int) == numbers["value"]).all()
    words = [t for t in feats.tasks if t.name == "months"][0]
    edit = hz.successor_editing(model, (1, 2), feats, tasks=[words, feats.tasks[0]])
    summary = edit.summary().set_index("task")
    assert list(summary.index) == ["months", "numbers", "all"]
    assert summary.loc["months", "chance"] == pytest.approx(1 / 12)
    months = edit.to_frame()
    months = months[months["task"] == "months"]
    assert set(months["edited"]) <= set(words.items)  # no month 0, no month 13: those edits are skipped
    assert len(months) == sum(1 for v in range(1, 13) for j in range(10) if j != v % 10 and 1 <= v - v % 10 + j <= 12)


# -- the result types -----------------------------------------------------------------------
def test_edit_is_vector_arithmetic_and_changes_nothing_it_is_given():
    feats = fitted(SETTINGS[0], "means")
    d = feats.directions
    x = torch.randn(3, 2, d.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = feats.edit(x, 3, 7)
    assert torch.equal(x, before) and out.dtype == torch.float64 and out.shape == x.shape
    assert torch.equal(out, x - d[3].double() + d[7].double())
    out.add_(1.0)
    assert torch.equal(feats.directions, d)
    edit = raw(hz.Mod10Features.edit)  # the function's own checks, as a user without beartype meets them
    for i, j, value, match in [(10, 0, x, "0..9"), (0, -1, x, ">= 0"), (1.0, 2, x, "integer"),
                               (1, 2, x[..., :5], r"\[\.\.\., "), (1, 2, x.long(), "floating")]:
        with pytest.raises(hz.InvalidOptionError, match=match):
            edit(feats, value, i, j)


def test_nothing_the_user_passed_is_mutated():
    setting = SETTINGS[1]
    model, head = planted(setting)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    task = hz.numeric_tasks(model.tokenizer)[0][0]
    tasks = [task]
    feats = hz.mod10_features(model, tasks, method="sae", progress=False)
    directions = feats.directions
    hz.successor_editing(model, head, feats, tasks=tasks)
    assert tasks == [task] and torch.equal(feats.directions, directions)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_exactly(method, tmp_path):
    setting = SETTINGS[0]
    model, head = planted(setting)
    feats = fitted(setting, method)
    back = hz.Mod10Features.load(feats.save(tmp_path / "f.parquet"))
    assert torch.equal(back.directions, feats.directions) and back.meta == feats.meta
    for get in ("to_frame", "tokens", "residues", "coverage"):
        pd.testing.assert_frame_equal(getattr(back, get)(), getattr(feats, get)(), check_exact=True)
    assert back.tasks == feats.tasks and back.method == method
    edit = hz.successor_editing(model, head, back)
    pd.testing.assert_frame_equal(edit.to_frame(), hz.successor_editing(model, head, feats).to_frame())
    again = hz.SuccessorEditing.load(edit.save(tmp_path / "e.parquet"))
    pd.testing.assert_frame_equal(again.to_frame(), edit.to_frame(), check_exact=True)
    pd.testing.assert_frame_equal(again.unedited(), edit.unedited(), check_exact=True)
    pd.testing.assert_frame_equal(again.summary(), edit.summary(), check_exact=True)
    assert again.meta == edit.meta and again.head == head
    with pytest.raises(hz.CorruptFileError, match="is a Mod10Features file"):
        hz.SuccessorEditing.load(tmp_path / "f.parquet")


def test_plots_and_html_are_offline_and_escaped(monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(go.Figure, "show", lambda *a, **k: pytest.fail("plot() must not show the figure"))
    hostile = "<script>alert(1)</script>"
    numbers = [str(n) for n in range(40)]
    vocab = word_tokenizer([*numbers, hostile, *(f"w{k}" for k in range(17))])
    model = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=60, tokenizer=vocab)
    tok = model.tokenizer
    task = hz.OrdinalTask(hostile, tuple(tok.convert_tokens_to_ids(n) for n in numbers), values=tuple(range(40)))
    extra = {tok.convert_tokens_to_ids(hostile): 40}
    feats = hz.mod10_features(model, [task, hz.OrdinalTask("x", tuple(extra), values=tuple(extra.values()))])
    edit = hz.successor_editing(model, (1, 0), feats)
    for result, kinds in ((feats, ("projection", "moduli")), (edit, ("heatmap", "tasks"))):
        for kind in kinds:
            fig = result.plot(kind)
            assert isinstance(fig, go.Figure) and len(fig.data) >= 1
        page = result._repr_html_()
        assert "<script" not in page and html.escape(hostile) in page
        with pytest.raises(hz.InvalidOptionError, match="kind"):
            result.plot("nope")
    proj = feats.plot("projection")
    assert list(proj.data[0].y[:3]) == ["'0'", "'1'", "'2'"] and proj.data[0].z.shape == (41, 10)
    assert edit.matrix().shape == (10, 10) and np.isnan(np.diag(edit.matrix().to_numpy())).all()
    assert "Mod10Features(means" in repr(feats) and "SuccessorEditing(L1H0" in repr(edit)


# -- bad input ------------------------------------------------------------------------------
def raw(fn):
    """``fn`` without the test suite's beartype wrapper (which stops wrongly typed arguments
    with its own TypeError first), to test the typed errors users get."""
    return getattr(fn, "__wrapped__", fn)


def test_bad_input_raises_typed_errors_that_say_what_to_do():
    mod10, editing = raw(hz.mod10_features), raw(hz.successor_editing)
    model, head = planted(SETTINGS[0])
    tok = model.tokenizer
    feats = fitted(SETTINGS[0], "means")
    numbers = {tok.convert_tokens_to_ids(str(n)): n for n in range(100)}
    cases = [
        (lambda: mod10(model, method="pca"), hz.InvalidOptionError, "method must be one of"),
        (lambda: mod10(model, embedding="raw"), hz.InvalidOptionError, "embedding must be one of"),
        (lambda: mod10(model, holdout=1.0), hz.InvalidOptionError, "holdout"),
        (lambda: mod10(model, holdout=True), hz.InvalidOptionError, "holdout"),
        (lambda: mod10(model, moduli=(1, 7)), hz.InvalidOptionError, ">= 2"),
        (lambda: mod10(model, moduli="7"), hz.InvalidOptionError, "moduli"),
        (lambda: mod10(model, seed=1.5), hz.InvalidOptionError, "seed"),
        (lambda: mod10(model, sae_size=0), hz.InvalidOptionError, "sae_size"),
        (lambda: mod10(model, method="sae", sae_size=8), hz.InvalidOptionError, "largest modulus"),
        (lambda: mod10(model, {**numbers, 10_000: 3}), hz.InvalidTokensError, "outside the vocabulary"),
        (lambda: mod10(model, {"7": 7}), hz.InvalidTokensError, "not an integer token id"),
        (lambda: mod10(model, {5: 2.5}), hz.InvalidOptionError, "values must be integers"),
        (lambda: mod10(model, [hz.OrdinalTask("t", (3, 99999))]), hz.InvalidTokensError, "outside"),
        (lambda: mod10(model, {k: v for k, v in numbers.items() if v < 15}), hz.InvalidOptionError,
         r"at least 2 tokens for every residue of 10.*5: 1"),
        (lambda: mod10(model, [[1, 2, 3]]), hz.InvalidOptionError, "tokens must be"),
        (lambda: mod10(model, {}), hz.InvalidOptionError, "empty"),
        (lambda: editing(model, (2, 0), feats), hz.InvalidOptionError, "outside the model"),
        (lambda: editing(model, (0, -1), feats), hz.InvalidOptionError, "outside the model"),
        (lambda: editing(model, 3, feats), hz.InvalidOptionError, r"one \(layer, head\) pair"),
        (lambda: editing(model, [(0, 1), (1, 1)], feats), hz.InvalidOptionError, "integer"),
        (lambda: editing(model, head, feats.to_frame()), hz.InvalidOptionError, "hz.Mod10Features"),
        (lambda: editing(model, head, feats, tasks=[hz.OrdinalTask("t", (2, 99999))]),
         hz.InvalidTokensError, "outside the vocabulary"),
        (lambda: editing(model, head, feats, tasks=[hz.OrdinalTask("t", (2, 3), values=(0, 5))]),
         hz.EmptyResultError, "no task has an edit"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    other, _ = planted(SETTINGS[1])  # another width
    with pytest.raises(hz.InvalidOptionError, match=r"d_model=\d+.*Fit them on this model"):
        editing(other, (0, 0), feats)


def test_a_model_without_a_tokenizer_or_numbers_is_not_applicable():
    bare = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=40)
    with pytest.raises(hz.DetectorNotApplicableError, match=r"no tokenizer.*tokens=\{token_id: value"):
        hz.mod10_features(bare)
    words = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=40, tokenizer=True)
    with pytest.raises(hz.DetectorNotApplicableError, match="none of the built-in number-like lists"):
        hz.mod10_features(words)
    few = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=40,
                        tokenizer=word_tokenizer([str(n) for n in range(12)] + [f"w{k}" for k in range(26)]))
    with pytest.raises(hz.DetectorNotApplicableError, match="at least 2 tokens for every residue"):
        hz.mod10_features(few)
    feats = hz.mod10_features(bare, {k: k for k in range(2, 40)})  # explicit ids need no tokenizer
    assert feats.tokens()["token"].iloc[0] == "#2"
