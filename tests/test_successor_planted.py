"""The planted tens + units successor model behaves as its docstring says, on random settings."""

from __future__ import annotations

import pytest
import torch

import headzoo as hz
from headzoo.testing import successor_model, successor_placements

SETTINGS = [  # (seed, n_layers, n_heads, tens_dim, units_dim, noise, n_numbers)
    (0, 2, 4, 10, 10, 0.0, 100),
    (1, 3, 3, 6, 12, 0.15, 120),
    (2, 2, 5, 12, 16, 0.2, 60),
]


@pytest.mark.parametrize("seed,n_layers,n_heads,tens_dim,units_dim,noise,n_numbers", SETTINGS)
def test_the_successor_detector_finds_the_planted_head_and_not_the_copier(seed, n_layers, n_heads, tens_dim, units_dim,
                                                                         noise, n_numbers):
    place = successor_placements(n_layers, n_heads, seed, copying=True)
    model = successor_model(n_layers=n_layers, n_heads=n_heads, tens_dim=tens_dim, units_dim=units_dim, noise=noise,
                            n_numbers=n_numbers, seed=seed, **place)
    scores = hz.detect(model, "successor")
    top = scores.top(1, "successor")
    assert (int(top["layer"][0]), int(top["head"][0])) == place["successor"]
    matrix = scores.matrix("successor")
    # every pair but the x9 -> (x+1)0 carries is a hit: a units increment cannot carry
    task = hz.ordinal_tasks(model.tokenizer)[0][0]
    carries = sum(1 for a, _ in task.pairs() if int(model.tokenizer.decode([a])) % 10 == 9)
    assert float(matrix.loc[place["successor"]]) == pytest.approx(1 - carries / len(task.pairs()), abs=0.02)
    assert float(matrix.loc[place["copying"]]) < 0.05
    others = matrix.to_numpy().copy()
    others[place["successor"]] = 0.0
    assert others.max() < 0.1


def test_in_context_the_head_attends_to_the_number_and_raises_its_successor():
    model = successor_model(successor=(1, 2), noise=0.1, seed=3)
    tok = model.tokenizer
    for n in (23, 40, 71):
        ids = torch.tensor([tok(f"f1 f2 {n} f3 f4 f5 f6")["input_ids"]])
        logits, cache = model.run_with_cache(ids)
        assert float(cache["blocks.1.attn.hook_pattern"][0, 2, -1, 3]) > 0.99
        assert tok.decode([int(logits[0, -1].argmax())]) == str(n + 1)


def test_without_a_number_in_context_the_head_rests_on_bos():
    model = successor_model(successor=(0, 1))
    ids = torch.tensor([model.tokenizer("f1 f2 f3")["input_ids"]])
    _, cache = model.run_with_cache(ids)
    assert float(cache["blocks.0.attn.hook_pattern"][0, 1, -1, 0]) > 0.99


def test_the_same_arguments_give_the_same_weights_and_bad_ones_are_refused():
    a, b = successor_model(seed=5, noise=0.2), successor_model(seed=5, noise=0.2)
    assert torch.equal(a.W_E, b.W_E) and torch.equal(a.W_O, b.W_O)
    with pytest.raises(ValueError, match="outside"):
        successor_model(successor=(2, 0))
    with pytest.raises(ValueError, match="differ"):
        successor_model(successor=(1, 1), copying=(1, 1))
    with pytest.raises(ValueError, match="n_numbers"):
        successor_model(n_numbers=10)


def test_the_detector_runs_the_mod10_analysis_and_edits_through_the_planted_head():
    place = successor_placements(3, 3, 11, copying=True)
    model = successor_model(n_layers=3, n_heads=3, noise=0.15, seed=11, **place)
    result = hz.detect(model, "successor").meta["detectors"]["successor"]["result"]
    analysis = result["analysis"]
    acc = {m["modulus"]: m["accuracy"] for m in analysis["mod10"]["moduli"]}
    assert acc[10] >= 0.95 and acc[7] < 0.5
    head = analysis["heads"][0]
    assert (head["layer"], head["head"]) == place["successor"]
    assert head["success_no_carry"] >= 0.9 and head["control_success"] <= 0.1
    figure = analysis["mod10"]["figure"]
    assert figure["tokens"][:3] == ["0", "1", "2"] and len(figure["projections"][0]) == 10
    off = hz.detect(model, "successor", analysis=False).meta["detectors"]["successor"]["result"]
    assert "analysis" not in off


def test_without_number_tokens_the_analysis_says_why_and_the_score_stands():
    model = successor_model(seed=2)
    days = hz.ORDINAL_LISTS["days"][0]
    tasks = [hz.OrdinalTask("days", tuple(range(2, 9)), cyclic=True, items=tuple(days))]  # 7 ids: too few per residue
    result = hz.detect(model, "successor", tasks=tasks).meta["detectors"]["successor"]["result"]
    assert "no mod-10 analysis" in result["analysis"]["note"] and result["analysis"]["heads"] == []
    assert result["tasks"][0]["name"] == "days"


def test_the_atlas_card_of_the_planted_head_shows_the_analysis():
    model = successor_model(successor=(1, 3), noise=0.1, seed=4)
    payload = hz.build_atlas(model, ["successor"])._payload()
    cards = {(h.layer, h.head): h.successor for h in payload.heads}
    card = cards[(1, 3)]
    assert card is not None and card.editing_no_carry == pytest.approx(1.0) and card.control < 0.1
    assert [t.task for t in card.tasks] == ["numbers"] and card.tasks[0].accuracy > 0.85
    assert sum(c is not None for c in cards.values()) == 1  # only the head over threshold is analysed
    assert payload.mod10 is not None and dict((m, a) for m, a, _ in payload.mod10.moduli)[10] == 1.0
