"""Ground truth first: every pattern detector ranks its planted head first, clearly."""

from __future__ import annotations

import pytest

import headzoo as hz
from headzoo.testing import PlantSpec, random_placements

from conftest import BACKENDS, cached_planted

PLANTED_DETECTORS = ["previous_token", "duplicate_token", "induction"]

CASES = [
    # (n_layers, n_heads, d_head, d_vocab, n_ctx, seed)
    (2, 4, 32, 64, 64, 0),
    (3, 4, 32, 500, 128, 1),
    (4, 3, 16, 20, 32, 2),   # tiny vocabulary, short context, narrow heads
    (3, 8, 32, 1000, 256, 3),
    (2, 2, 64, 12, 16, 4),   # vocabulary smaller than the probe wants
]


@pytest.mark.parametrize("n_layers,n_heads,d_head,d_vocab,n_ctx,seed", CASES)
def test_each_detector_ranks_its_planted_head_first(n_layers, n_heads, d_head, d_vocab, n_ctx, seed):
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32)
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab,
                     n_ctx=n_ctx, seed=seed, **placements)
    scores = hz.detect(cached_planted(spec), PLANTED_DETECTORS, n_prompts=8)
    for name in placements:
        ranked = scores.top(n_layers * n_heads, name)
        first, second = ranked.iloc[0], ranked.iloc[1]
        assert (first["layer"], first["head"]) == placements[name], (name, ranked.head(3))
        assert first["score"] > 0.8, (name, first["score"])
        # a clear margin: the runner-up is far below
        assert first["score"] - second["score"] > 0.5, (name, ranked.head(3))


def test_unplanted_heads_stay_low(demo_model, demo_spec):
    scores = hz.detect(demo_model, PLANTED_DETECTORS).to_frame()
    for name, head in demo_spec.planted.items():
        rest = scores[(scores["detector"] == name) & ~((scores["layer"] == head[0]) & (scores["head"] == head[1]))]
        assert rest["score"].max() < 0.2, (name, rest.nlargest(3, "score"))


def test_induction_copying_score_marks_the_planted_copier(demo_model, demo_spec):
    frame = hz.detect(demo_model, "induction").to_frame().set_index(["layer", "head"])
    planted = demo_spec.planted["induction"]
    assert frame.loc[planted, "copying"] == pytest.approx(1.0, abs=1e-6)
    others = frame.drop(index=[planted])["copying"]
    assert others.abs().max() < 0.9


@pytest.mark.skipif("hooked" not in BACKENDS, reason="HookedTransformer needs transformer-lens<4")
def test_same_weights_same_scores_in_both_classes(demo_spec):
    bridge = hz.detect(cached_planted(demo_spec, "bridge"), n_prompts=6, batch_size=3).to_frame()
    hooked = hz.detect(cached_planted(demo_spec, "hooked"), n_prompts=6, batch_size=3).to_frame()
    assert bridge[["detector", "layer", "head"]].equals(hooked[["detector", "layer", "head"]])
    diff = (bridge.drop(columns=["detector"]) - hooked.drop(columns=["detector"])).abs().max().max()
    assert diff < 1e-5


def test_planted_models_are_identical_across_classes_at_the_logits(demo_spec):
    if "hooked" not in BACKENDS:
        pytest.skip("HookedTransformer needs transformer-lens<4")
    import torch

    tokens = torch.randint(0, demo_spec.d_vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    a = cached_planted(demo_spec, "bridge")(tokens)
    b = cached_planted(demo_spec, "hooked")(tokens)
    assert (a - b).abs().max() < 1e-4


def test_plant_spec_rejects_impossible_placements():
    with pytest.raises(ValueError, match="earlier layer"):
        PlantSpec(previous_token=(1, 0), induction=(1, 1))
    with pytest.raises(ValueError, match="outside"):
        PlantSpec(n_layers=2, previous_token=(0, 9))
    with pytest.raises(ValueError, match="d_head >= 32"):
        PlantSpec(d_head=16, duplicate_token=(0, 1))
    with pytest.raises(ValueError, match="distinct"):
        PlantSpec(previous_token=(0, 0), induction=(1, 0), duplicate_token=(0, 0))
