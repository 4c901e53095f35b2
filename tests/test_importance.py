"""hz.head_importance: ground truth on a planted model, agreement with a hand-made TransformerLens
mean ablation, the attribution ranking, the bundled model, skipped tasks and typed errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import headzoo as hz
from headzoo.testing import PlantSpec

from conftest import cached_planted

SPEC = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64,
                 previous_token=(0, 1), duplicate_token=(1, 2), induction=(2, 0), seed=11)
INDUCTION = (2, 0)
_CACHE: dict[str, hz.HeadImportance] = {}


def _model(tokenizer: bool = True):
    return cached_planted(SPEC, "bridge", tokenizer)


def _induction() -> hz.HeadImportance:
    """The induction task on the planted model, exact for 3 heads (made once, read-only)."""
    if "induction" not in _CACHE:
        _CACHE["induction"] = hz.head_importance(_model(), "induction", exact_top=3, n_prompts=8, seed=1)
    return _CACHE["induction"]


def _second_half_loss(model, tokens: torch.Tensor, half: int, bos: int, hooks=()) -> float:
    """Mean next-token loss over the second half, straight from TransformerLens."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    at = torch.arange(bos + half, bos + 2 * half - 1)
    logp = logits[:, at].float().log_softmax(-1)
    return float(-logp.gather(-1, tokens[:, at + 1][..., None]).mean())


def _induction_tokens(imp: hz.HeadImportance) -> tuple[torch.Tensor, int, int]:
    task = imp.meta["tasks"]["induction"]
    probe = hz.RepeatedTokens(n_prompts=task["n_prompts"], half_len=task["half_len"], batch_size=task["n_prompts"],
                              seed=imp.meta["seed"])
    tokens = next(iter(probe.batches(hz.model_info(_model()))))
    return tokens, task["half_len"], int(task["prepend_bos"])


def test_the_planted_induction_head_matters_most_to_induction():
    imp = _induction()
    frame = imp.to_frame()
    assert list(frame.columns) == ["task", "layer", "head", "effect", "method", "attribution"]
    assert len(frame) == SPEC.n_layers * SPEC.n_heads and imp.tasks == ["induction"]
    top = imp.top(1, "induction").iloc[0]
    assert (top["layer"], top["head"]) == INDUCTION and top["method"] == "exact"
    # far above every head but the previous-token head it reads from (K-composition)
    others = frame[~frame.apply(lambda r: (r["layer"], r["head"]) in (INDUCTION, SPEC.previous_token), axis=1)]
    assert top["effect"] > 0.5 and top["effect"] > 20 * others["effect"].abs().max(), imp.top(5)
    assert (frame["method"] == "exact").sum() == 3 and imp.meta["exact_top"] == 3
    assert imp.meta["ablation"] == "mean" and imp.meta["skipped"] == {}
    assert imp.matrix("induction").shape == (SPEC.n_layers, SPEC.n_heads)


def test_exact_effect_equals_a_hand_made_mean_ablation():
    imp = _induction()
    model = _model()
    tokens, half, bos = _induction_tokens(imp)
    base = _second_half_loss(model, tokens, half, bos)
    assert imp.meta["tasks"]["induction"]["baseline"] == pytest.approx(base, abs=1e-4)
    _, cache = model.run_with_cache(tokens)
    exact = imp.to_frame().query("method == 'exact'")
    assert len(exact) == 3
    for row in exact.itertuples():
        layer, head = int(row.layer), int(row.head)
        mean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head].mean((0, 1))

        def ablate(z, hook, head=head, mean=mean):
            z = z.clone()
            z[:, :, head] = mean
            return z

        by_hand = _second_half_loss(model, tokens, half, bos, [(f"blocks.{layer}.attn.hook_z", ablate)]) - base
        assert row.effect == pytest.approx(by_hand, abs=1e-4), (layer, head)
        # and the package's own mean ablation, over the same prompts, agrees
        with hz.ablate(model, [(layer, head)], "mean", reference_tokens=tokens):
            engine = _second_half_loss(model, tokens, half, bos) - base
        assert row.effect == pytest.approx(engine, abs=1e-4)


def test_attribution_ranks_the_exact_top_head_in_its_top_three():
    imp = _induction()
    frame = imp.to_frame()
    best = frame.sort_values("effect", ascending=False).iloc[0]
    ranked = frame.assign(size=frame["attribution"].abs()).sort_values("size", ascending=False)
    top3 = list(zip(ranked["layer"].iloc[:3], ranked["head"].iloc[:3]))
    assert (best["layer"], best["head"]) in top3


def test_hooks_removed_and_model_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hz.head_importance(model, "induction", exact_top=1, n_prompts=2)
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_a_model_without_tokenizer_skips_the_text_tasks():
    imp = hz.head_importance(_model(tokenizer=False), exact_top=1, n_prompts=4)
    assert set(imp.meta["skipped"]) == {"ioi", "succession"}
    assert all(isinstance(v, str) and v for v in imp.meta["skipped"].values())
    assert imp.tasks == ["induction", "retrieval"]
    assert set(imp.meta["tasks"]) == {"induction", "retrieval"}
    assert all(np.isfinite(imp.meta["tasks"][t]["baseline"]) for t in imp.tasks)
    with pytest.raises(hz.InvalidOptionError, match="skipped"):
        imp.matrix("ioi")
    with pytest.raises(hz.DetectorNotApplicableError, match="no importance task applies"):
        hz.head_importance(_model(tokenizer=False), ["ioi", "succession"], n_prompts=2)


def test_the_bundled_model_gives_finite_effects():
    model = hz.load_model()
    start = time.perf_counter()
    imp = hz.head_importance(model, exact_top=2, n_prompts=4, progress=False)
    seconds = time.perf_counter() - start
    print(f"head_importance on the bundled model (n_prompts=4, exact_top=2): {seconds:.1f} s")
    frame = imp.to_frame()
    assert np.isfinite(frame[["effect", "attribution"]].to_numpy()).all()
    assert set(imp.tasks) | set(imp.meta["skipped"]) == {"induction", "ioi", "succession", "retrieval"}
    assert "induction" in imp.tasks
    for task in imp.tasks:
        info = imp.meta["tasks"][task]
        assert info["description"] and info["metric"] and np.isfinite(info["baseline"])
        assert (frame[frame["task"] == task]["method"] == "exact").sum() == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": ["induction", "nope"]}, r"unknown importance task.*'induction', 'ioi', 'succession', 'retrieval'"),
    ({"tasks": []}, "non-empty"),
    ({"exact_top": -1}, "exact_top must be >= 0"),
    ({"n_prompts": 0}, "n_prompts must be a positive integer"),
])
def test_bad_options_are_typed_errors(kwargs, match):
    with pytest.raises(hz.InvalidOptionError, match=match):
        hz.head_importance(_model(), **kwargs)


def test_result_accessors():
    imp = _induction()
    with pytest.raises(hz.InvalidOptionError, match="unknown task"):
        imp.matrix("nope")
    with pytest.raises(hz.InvalidOptionError, match="column"):
        imp.matrix("induction", "score")
    table = imp.matrix("induction", "attribution")
    frame = imp.to_frame().set_index(["layer", "head"])
    assert table.loc[1, 2] == frame.loc[(1, 2), "attribution"]
    assert len(imp.top(2)) == 2 and "HeadImportance(induction" in repr(imp)


def test_exact_effects_do_not_depend_on_how_the_forwards_are_run(monkeypatch):
    """Several heads per batched forward restarted at the ablated layer (the default here), one
    head per forward, and full forwards from the tokens all agree, with non-default options
    travelling with every forward."""
    from headzoo import _importance

    model = _model()
    args = (model, ["induction", "retrieval"])
    shared = hz.head_importance(*args, exact_top=5, n_prompts=3, seed=4)
    assert all(shared.meta["tasks"][t]["restarted_at_layer"] is True for t in shared.tasks)
    monkeypatch.setattr(_importance, "_TOKEN_BUDGET", 1)
    alone = hz.head_importance(*args, exact_top=5, n_prompts=3, seed=4)
    monkeypatch.setattr(_importance, "_restarts", lambda *a: False)
    full = hz.head_importance(*args, exact_top=5, n_prompts=3, seed=4)
    assert full.meta["tasks"]["induction"]["restarted_at_layer"] is False
    a = shared.to_frame()
    assert (a["method"] == "exact").sum() == 10
    for other in (alone, full):
        b = other.to_frame()
        assert (a["method"] == b["method"]).all()
        assert np.allclose(a["effect"], b["effect"], atol=1e-5) and np.allclose(a["attribution"], b["attribution"], atol=1e-6)
    assert shared.meta["seed"] == 4 and shared.meta["tasks"]["induction"]["n_prompts"] == 3


def test_a_tiny_context_skips_what_does_not_fit():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=64, d_vocab=12, n_ctx=16, seed=4, previous_token=(0, 0), induction=(1, 1))
    imp = hz.head_importance(cached_planted(spec, "bridge", False), exact_top=4, n_prompts=4)
    assert "induction" in imp.tasks and set(imp.tasks) | set(imp.meta["skipped"]) == {"induction", "ioi", "succession", "retrieval"}
    assert np.isfinite(imp.to_frame()["effect"]).all()
    best = imp.top(1, "induction").iloc[0]
    assert (best["layer"], best["head"]) in {(1, 1), (0, 0)}
