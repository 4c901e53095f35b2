"""Every head type at once: one planted model holds a head of each pattern type, and each
detector finds its own head and none of the others (the cross-type false-positive check)."""

from __future__ import annotations

import pytest

import headzoo as hz
from headzoo.testing import PlantSpec, bpe_tokenizer, features_from_tokenizer, planted_model, random_placements

from conftest import BACKENDS

NEW = ["dormant", "relative_position", "subword_merge", "delimiter", "streaming", "ngram_induction", "rare_token", "relation"]
PATTERN = ["previous_token", "induction", "first_token", "dormant", "relative_position", "subword_merge", "delimiter",
           "streaming", "ngram_induction", "rare_token"]


def test_the_registry_holds_the_survey_types_with_everything_declared():
    table = hz.list_detectors().set_index("name")
    builtin = table[table["source"] == "builtin"]
    assert len(builtin) >= 18 and set(NEW) <= set(builtin.index)
    for name, row in builtin.iterrows():
        assert row["stage"] in hz.STAGES, name
        assert row["reference"] and row["variant"] and row["description"], name
        assert row["threshold"] is not None and row["threshold"] == row["threshold"], name  # a number, not NaN


def _everything(seed: int, n_layers: int = 4, n_heads: int = 4):
    tok = bpe_tokenizer(400)
    placements = random_placements(
        n_layers, n_heads, seed, duplicate_token=False, sink=True, dormant=True, subword_merge=True, delimiter=True,
        rare_token=True, relative_position=True, ngram_induction=True,
    )
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=32, d_vocab=len(tok), n_ctx=96, relative_offset=2,
                     token_features=features_from_tokenizer(tok), seed=seed, **placements)
    return spec, tok, placements


@pytest.mark.parametrize("seed", [0, 1])
def test_each_detector_finds_its_own_head_among_every_type(seed):
    spec, tok, at = _everything(seed)
    threshold = {n: hz.get_detector(n).threshold for n in PATTERN}
    for backend in BACKENDS:
        model = planted_model(spec, backend=backend, tokenizer=tok)
        frame = hz.detect(model, PATTERN, n_prompts=8).to_frame().set_index(["detector", "layer", "head"])

        def score(name, role):
            return float(frame.loc[(name, *at[role]), "score"])

        def top(name, ignore=()):
            part = frame.loc[name]["score"].drop(index=[at[r] for r in ignore]).sort_values(ascending=False)
            return part.index[0], float(part.iloc[0]), float(part.iloc[1])

        # an n-gram induction head is also an induction head on [BOS] r r (the two tokens before
        # an earlier copy match too); the converse is what ngram_induction must refuse
        for name, role, ignore in [("previous_token", "previous_token", ()), ("induction", "induction", ("ngram_induction",)),
                                   ("dormant", "dormant", ()), ("subword_merge", "subword_merge", ()),
                                   ("delimiter", "delimiter", ()), ("ngram_induction", "ngram_induction", ()),
                                   ("rare_token", "rare_token", ())]:
            head, first, second = top(name, ignore)
            assert head == at[role], (backend, name, head, at[role], frame.loc[name].nlargest(3, "score"))
            assert first > threshold[name] and first - second > 0.3, (backend, name, first, second)
        # heads of other types stay under each detector's threshold
        assert score("dormant", "sink") < threshold["dormant"]           # a writing sink is not dormant
        assert score("delimiter", "sink") < threshold["delimiter"]       # a sink is not a delimiter head
        assert score("ngram_induction", "induction") < threshold["ngram_induction"]  # nor induction n-gram induction
        assert score("subword_merge", "previous_token") < threshold["subword_merge"]
        assert score("rare_token", "sink") < threshold["rare_token"]
        # positional: the previous-token head is offset 1, the planted relative head offset 2
        rel = frame.loc["relative_position"]
        assert rel.loc[at["previous_token"], "offset"] == 1 and rel.loc[at["previous_token"], "score"] > threshold["relative_position"]
        assert rel.loc[at["relative_position"], "offset"] == 2 and rel.loc[at["relative_position"], "score"] > threshold["relative_position"]
        for role in ("induction", "ngram_induction", "sink", "delimiter", "rare_token"):
            assert rel.loc[at[role], "score"] < threshold["relative_position"], role
        # streaming: sinks and local heads can lose their far keys; induction-like heads cannot
        for role in ("sink", "dormant", "previous_token", "relative_position"):
            assert score("streaming", role) > threshold["streaming"], role
        for role in ("induction", "ngram_induction"):
            assert score("streaming", role) < threshold["streaming"], role


def test_every_pattern_detector_shares_its_probe_and_adds_no_forward_pass():
    spec, tok, at = _everything(0)
    model = planted_model(spec, tokenizer=tok)
    name = "hook_embed" if "hook_embed" in model.hook_dict else "embed.hook_out"
    calls = []
    handle = model.hook_dict[name].register_forward_hook(lambda *a: calls.append(1))
    try:
        scores = hz.detect(model, PATTERN, n_prompts=6, batch_size=3)
    finally:
        handle.remove()
    probes = scores.meta["probes"]
    assert len(probes) < len(PATTERN)  # detectors share probes
    expected = sum(-(-p["n_prompts"] // 3) for p in probes.values())
    assert len(calls) == expected, (len(calls), probes.keys())
    by_probe = {}
    for det in PATTERN:
        by_probe.setdefault(scores.meta["detectors"][det]["probe"], []).append(det)
    assert set(by_probe) == set(probes)
    assert len(by_probe["repeated_tokens"]) >= 3


def test_null_baseline_covers_the_new_detectors():
    spec, tok, at = _everything(1)
    model = planted_model(spec, tokenizer=tok)
    scores = hz.detect(model, ["dormant", "delimiter", "relative_position"], n_prompts=4, baseline=True, baseline_models=2)
    frame = scores.to_frame().set_index(["detector", "layer", "head"])
    assert frame["z"].notna().all()
    assert frame.loc["delimiter", "z"].idxmax() == at["delimiter"]
