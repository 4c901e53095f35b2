"""IOI prompts for any tokenizer (hz.ioi_prompts), the planted IOI circuit
(headzoo.testing.ioi_model) and the four IOI causal detectors."""

from __future__ import annotations

import functools

import pytest
import torch
from _gpt2 import gpt2_tokenizer

import headzoo as hz
from headzoo.testing import word_tokenizer

# -- prompts ------------------------------------------------------------------------------------


def test_gpt2_keeps_every_builtin_name_and_template():
    tok = gpt2_tokenizer()
    p = hz.ioi_prompts(tok, n=40, seed=3)
    c = p.coverage
    assert (c["names_listed"], c["names_kept"], c["templates_listed"], c["templates_kept"]) == (100, 100, 16, 16)
    assert p.prepend_bos and len(p) == 40
    assert set(p.order) == {"ABBA", "BABA"}


def test_positions_hold_the_names_and_end_is_the_last_token():
    tok = gpt2_tokenizer()
    p = hz.ioi_prompts(tok, n=32, seed=0)
    rows = torch.arange(len(p))
    assert torch.equal(p.clean[rows, p.io_pos], p.io)
    assert torch.equal(p.clean[rows, p.s1_pos], p.s)
    assert torch.equal(p.clean[rows, p.s2_pos], p.s)
    assert torch.equal(p.end_pos, p.lengths - 1)
    assert (p.s1_pos < p.s2_pos).all() and (p.io_pos < p.s2_pos).all()
    abba = torch.tensor([o == "ABBA" for o in p.order])
    assert ((p.io_pos < p.s1_pos) == abba).all()
    for i in range(len(p)):  # the ids are the tokenizer's own reading of the sentence
        ids = tok.encode(p.texts[i], add_special_tokens=False)
        assert p.clean[i, 1 : p.lengths[i]].tolist() == ids
        assert tok.decode(p.clean[i, p.end_pos[i]]) == " to"
        assert tok.decode(p.io[i]).startswith(" ") and tok.decode(p.io[i]).strip() in p.texts[i]
        assert (p.clean[i, p.lengths[i]:] == p.pad_id).all()


def test_corrupted_prompts_differ_exactly_at_the_three_names():
    p = hz.ioi_prompts(gpt2_tokenizer(), n=32, seed=1)
    for i in range(len(p)):
        n = int(p.lengths[i])
        differ = (p.clean[i, :n] != p.corrupted[i, :n]).nonzero().flatten().tolist()
        assert differ == sorted([int(p.io_pos[i]), int(p.s1_pos[i]), int(p.s2_pos[i])])
        io, s1, s2 = (int(p.corrupted[i, int(q[i])]) for q in (p.io_pos, p.s1_pos, p.s2_pos))
        assert [io, s1, s2] == p.abc[i].tolist()
        assert len({io, s1, s2, int(p.io[i]), int(p.s[i])}) == 5  # ABC: three new, distinct names


def test_seed_makes_the_same_prompts_and_other_seeds_differ():
    tok = gpt2_tokenizer()
    a, b, c = hz.ioi_prompts(tok, n=16, seed=5), hz.ioi_prompts(tok, n=16, seed=5), hz.ioi_prompts(tok, n=16, seed=6)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted) and a.texts == b.texts
    assert a.texts != c.texts


def test_prepend_bos_false_shifts_every_position():
    tok = gpt2_tokenizer()
    a, b = hz.ioi_prompts(tok, n=8, seed=2), hz.ioi_prompts(tok, n=8, seed=2, prepend_bos=False)
    assert not b.prepend_bos and torch.equal(a.io_pos - 1, b.io_pos) and torch.equal(a.lengths - 1, b.lengths)


def test_logit_diff_reads_each_rows_own_end():
    p = hz.ioi_prompts(gpt2_tokenizer(), n=6, seed=0)
    logits = torch.randn(len(p), p.clean.shape[1], 50257)
    rows = torch.arange(len(p))
    want = logits[rows, p.end_pos, p.io] - logits[rows, p.end_pos, p.s]
    assert torch.allclose(p.logit_diffs(logits), want)
    from headzoo._patching import _lengths

    with _lengths(p.lengths):  # how hz.patching runs the metric on ragged prompts
        assert torch.allclose(p.logit_diff(per_example=True)(logits), want)
        assert torch.allclose(p.logit_diff()(logits), want.mean())


def test_user_names_and_templates():
    tok = gpt2_tokenizer()
    p = hz.ioi_prompts(tok, n=10, names=["Mary", "John", "Alice", "Bob", "Carol", "Xqzvwyk"],
                       templates=["Then {S} and {IO} had lunch, and {S} gave a cake to"])
    assert p.coverage["names_kept"] == 5 and p.coverage["names_not_one_token"] == ["Xqzvwyk"]
    assert p.templates == ("Then {S} and {IO} had lunch, and {S} gave a cake to",)
    assert set(p.order) == {"BABA"}


def test_word_tokenizer_spelling_the_lists_works():
    lists = hz._ioi.ioi_lists()
    words = sorted({w for t in lists["templates"] for p in lists["places"] for o in lists["objects"]
                    for w in t.replace("{PLACE}", p).replace("{OBJECT}", o).replace("{IO}", "").replace("{S}", "").split()})
    tok = word_tokenizer([*lists["names"][:8], *words])
    p = hz.ioi_prompts(tok, n=12)
    assert p.coverage["names_kept"] == 8 and p.coverage["templates_kept"] == 16
    rows = torch.arange(len(p))
    assert torch.equal(p.clean[rows, p.io_pos], p.io)


def test_a_tokenizer_without_names_is_refused_saying_what_is_missing():
    tok = word_tokenizer([f"tok{i}" for i in range(20)])
    with pytest.raises(hz.UnsupportedTokenizerError, match=r"spells only 0 of 100 names"):
        hz.ioi_prompts(tok)
    names_only = word_tokenizer(["Mary", "John", "Alice", "Emma", "Paul", "Mark"])
    with pytest.raises(hz.UnsupportedTokenizerError, match=r"none of the 16 IOI templates"):
        hz.ioi_prompts(names_only)
    with pytest.raises(hz.UnsupportedTokenizerError, match="no tokenizer"):
        hz.ioi_prompts(hz.testing.planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=16))
    with pytest.raises(hz.UnsupportedTokenizerError, match="got None"):
        hz.ioi_prompts(None)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be >= 1"),
    (dict(n=2.0), "n must be an integer"),
    (dict(seed="a"), "seed must be an integer"),
    (dict(prepend_bos="yes"), "prepend_bos must be True or False"),
    (dict(names="Mary"), "names must be a list"),
    (dict(templates=["When {IO} and {S} went out, {IO} gave a drink to"]), "{IO} once and {S} twice"),
    (dict(templates=["{IO} and {S} went out, {S} gave a drink to"]), "must start with a word"),
    (dict(templates=["When {IO} and {S} went to {TOWN}, {S} gave a drink to"]), "placeholder other than"),
])
def test_bad_options_are_refused(kwargs, match):
    # beartype (a TypeError) may stop a wrongly typed argument first in the tests; without it,
    # the function's own check gives the typed error
    with pytest.raises((hz.InvalidOptionError, TypeError)) as info:
        hz.ioi_prompts(gpt2_tokenizer(), **kwargs)
    if isinstance(info.value, hz.InvalidOptionError):
        assert info.match(match)


def test_wrong_types_get_a_typed_error_without_beartype():
    from headzoo._ioi import ioi_prompts

    raw = getattr(ioi_prompts, "__wrapped__", ioi_prompts)  # the undecorated function
    for kwargs, match in [(dict(n=2.0), "n must be an integer"), (dict(prepend_bos="yes"), "prepend_bos must be")]:
        with pytest.raises(hz.InvalidOptionError, match=match):
            raw(gpt2_tokenizer(), **kwargs)


def test_the_users_lists_are_not_mutated():
    names = ["Mary", "John", "Alice", "Bob", "Carol"]
    templates = ["Then {S} and {IO} had lunch, and {S} gave a cake to"]
    before = (list(names), list(templates))
    hz.ioi_prompts(gpt2_tokenizer(), n=3, names=names, templates=templates)
    assert (names, templates) == before


# -- the planted IOI circuit ---------------------------------------------------------------------

from headzoo.testing import IOI_ROLES, ioi_model, ioi_placements  # noqa: E402


@functools.lru_cache(maxsize=8)
def planted_ioi(seed: int, n_layers: int = 4, n_heads: int = 4, backend: str = "bridge"):
    """``(model, placements, prompts)``; read-only in the tests, so one build serves many."""
    model = ioi_model(seed=seed, n_layers=n_layers, n_heads=n_heads, backend=backend)
    return model, ioi_placements(n_layers, n_heads, seed), hz.ioi_prompts(model, n=24, seed=seed)


def test_placements_respect_the_circuits_order():
    for seed in range(20):
        pl = ioi_placements(6, 3, seed)
        layer = {r: h[0] for r, h in pl.items()}
        assert list(pl) == list(IOI_ROLES) and len(set(pl.values())) == 5
        assert layer["duplicate_token"] < layer["s_inhibition"] < layer["name_mover"] < layer["backup_name_mover"]
        assert layer["s_inhibition"] < layer["negative_name_mover"]
    with pytest.raises(ValueError, match="4 layers"):
        ioi_placements(3, 4, 0)
    bad = dict(ioi_placements(4, 4, 0), s_inhibition=(3, 0))
    with pytest.raises(ValueError, match="reads forward"):
        ioi_model(placements=bad)


@pytest.mark.parametrize("seed, n_layers", [(0, 4), (1, 5), (2, 6)])
def test_planted_model_solves_ioi_and_its_backup_takes_over(seed, n_layers):
    model, pl, p = planted_ioi(seed, n_layers)
    assert p.coverage["templates_kept"] == 16 and p.coverage["names_kept"] == 12
    with torch.no_grad():
        clean = p.logit_diffs(model(p.clean))
        abc = p.logit_diffs(model(p.corrupted))
        ablate = lambda heads: hz.ablate(model, heads, method="mean", reference_tokens=p.corrupted)  # noqa: E731
        with ablate([pl["name_mover"]]):
            no_nm = p.logit_diffs(model(p.clean))
        with ablate([pl["name_mover"], pl["backup_name_mover"]]):
            no_nm_backup = p.logit_diffs(model(p.clean))
        with ablate([pl["s_inhibition"]]):
            no_sinh = p.logit_diffs(model(p.clean))
    assert (clean > 0).float().mean() == 1 and clean.mean() > 2
    assert abc.abs().mean() < 0.3  # no name is favoured on ABC prompts
    assert 0.3 < no_nm.mean() < clean.mean() - 1  # the backup makes up for part of the name mover
    assert no_nm_backup.mean() < 0  # without both, the repeated name wins
    assert no_sinh.mean() < clean.mean() - 1


def test_planted_model_is_the_same_in_both_model_classes(backend):
    a, _, p = planted_ioi(0)
    b = ioi_model(seed=0, backend=backend)
    with torch.no_grad():
        assert torch.allclose(a(p.clean), b(p.clean), atol=1e-4)


# -- the detectors -------------------------------------------------------------------------------

IOI_DETECTORS = ["name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition"]
#: which planted role each detector must rank first
PLANTED_ROLE = {"name_mover": "name_mover", "negative_name_mover": "negative_name_mover",
                "backup_name_mover": "backup_name_mover", "s_inhibition": "s_inhibition"}

def test_detectors_are_registered_causal_with_their_stage():
    table = hz.list_detectors().set_index("name")
    for name in IOI_DETECTORS:
        assert table.loc[name, "kind"] == "causal"
        assert "2211.00593" in table.loc[name, "reference"]
    assert table.loc["s_inhibition", "stage"] == "latent reasoning"
    assert {table.loc[n, "stage"] for n in IOI_DETECTORS[:3]} == {"expression preparation"}


@pytest.mark.parametrize("name", IOI_DETECTORS)
@pytest.mark.parametrize("options, match", [
    (dict(n_prompts=0), "n_prompts must be an integer >= 1"),
    (dict(k=0), "k must be an integer >= 1"),
    (dict(max_exact_heads=0), "max_exact_heads must be None"),
    (dict(memory_mb=-1.0), "memory_mb must be a positive number"),
])
def test_bad_options_are_refused_by_every_ioi_detector(name, options, match):
    with pytest.raises(hz.InvalidOptionError, match=match):
        hz.get_detector(name, **options)


def test_n_name_movers_is_checked():
    for name in ("backup_name_mover", "s_inhibition"):
        with pytest.raises(hz.InvalidOptionError, match="n_name_movers must be an integer >= 1"):
            hz.get_detector(name, n_name_movers=0)


@pytest.mark.parametrize("name", IOI_DETECTORS)
def test_refused_with_a_typed_error_when_the_tokenizer_cannot_spell_names(name):
    model = hz.testing.planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=24, tokenizer=True)
    with pytest.raises(hz.UnsupportedTokenizerError, match="names"):
        hz.detect(model, name)


def test_skipped_with_the_reason_on_a_word_model_that_cannot_spell_the_templates():
    """A word-level vocabulary with names but none of the templates' words (curriculum v1's, which
    the first zoo model used): every IOI detector is skipped with the reason, the rest run."""
    from headzoo._curriculum import VOCABULARY

    tok = hz.testing.word_tokenizer(list(VOCABULARY))
    model = hz.testing.planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=len(tok), n_ctx=128, tokenizer=tok)
    with pytest.warns(UserWarning, match="skipped a detector"):
        scores = _detect_all_light(model)
    skipped = scores.meta["skipped_detectors"]
    for name in IOI_DETECTORS:
        assert "IOI templates" in skipped[name] or "names" in skipped[name]
    assert set(IOI_DETECTORS).isdisjoint(set(scores.to_frame()["detector"]))


def _detect_all_light(model):
    """hz.detect with every detector, as the atlas runs them, but with the slow decoding one left out."""
    names = [n for n in hz.list_detectors()["name"] if n != "retrieval"]
    from headzoo._runner import run_detectors  # hz.detect(model)'s own path: skip what does not apply

    return run_detectors(model, names, tokens=None, cache=None, explicit=False)


@pytest.mark.parametrize("seed, n_layers", [(0, 4), (1, 5), (2, 6)])
def test_each_detector_ranks_its_planted_head_first_with_a_margin(seed, n_layers):
    model, pl, _ = planted_ioi(seed, n_layers)
    scores = hz.detect(model, IOI_DETECTORS, n_prompts=16, progress=False)
    for name in IOI_DETECTORS:
        top = scores.top(2, name)
        assert tuple(top[["layer", "head"]].values[0]) == pl[PLANTED_ROLE[name]], name
        first, second = top["score"].tolist()
        assert first > 0.3 and first - second > 0.25, (name, first, second)
    frame = scores.details("name_mover").set_index(["layer", "head"])
    nm = frame.loc[pl["name_mover"]]
    assert nm["attn_io"] > 0.9 and nm["attn_s"] < 0.05 and nm["copy_score"] == 1.0
    neg = scores.details("negative_name_mover").set_index(["layer", "head"]).loc[pl["negative_name_mover"]]
    assert neg["copy_score"] == 1.0  # its OV circuit puts each name at the bottom
    meta = {name: scores.meta["detectors"][name]["result"] for name in IOI_DETECTORS}
    assert meta["backup_name_mover"]["name_movers"][0] == list(pl["name_mover"])
    assert meta["s_inhibition"]["receivers"][0] == [*pl["name_mover"], "q"]
    assert meta["name_mover"]["cost"]["forward_passes"] >= model.cfg.n_layers * model.cfg.n_heads


def test_attribution_picks_the_heads_to_patch_exactly_and_reports_agreement():
    model, pl, _ = planted_ioi(0)
    scores = hz.detect(model, "name_mover", n_prompts=16, max_exact_heads=4, progress=False)
    frame = scores.to_frame()
    assert len(frame) == 4 and tuple(scores.top(1, "name_mover")[["layer", "head"]].values[0]) == pl["name_mover"]
    agreement = scores.meta["detectors"]["name_mover"]["result"]["attribution_agreement"]
    assert agreement["n_heads"] == 4 and agreement["same_sign"] >= 0.5


def test_one_detect_call_runs_the_name_mover_sweep_once(monkeypatch):
    """The negative and backup name-mover and S-inhibition detectors read the name-mover
    measurement; in one hz.detect call it is computed once and each reads its own copy."""
    import sys

    model, pl, _ = planted_ioi(0)
    module = sys.modules[type(hz.get_detector("name_mover")).__module__]
    calls = []
    original = module.direct_drops
    monkeypatch.setattr(module, "direct_drops", lambda *a, **k: calls.append(1) or original(*a, **k))
    scores = hz.detect(model, IOI_DETECTORS, n_prompts=8, progress=False)
    assert len(calls) == 1
    nm = scores.to_frame().query("detector == 'name_mover'").set_index(["layer", "head"])["score"]
    neg = scores.to_frame().query("detector == 'negative_name_mover'").set_index(["layer", "head"])["score"]
    assert (nm + neg).abs().max() < 1e-12  # the same measurement, sign flipped, each its own copy
    hz.detect(model, ["name_mover"], n_prompts=8, progress=False)
    assert len(calls) == 2  # a new call measures again (the model may have changed in between)
