"""The execution kernel and the defect classes of the hardening issue: every bad input gets a
typed error, ragged batches equal prompt-by-prompt runs, fallbacks are never silent."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo.testing import PlantSpec

from conftest import cached_planted

SPEC = PlantSpec(n_layers=2, n_heads=3, d_head=32, d_vocab=40, n_ctx=24,
                 previous_token=(0, 2), duplicate_token=(0, 1), induction=(1, 1), seed=5)


@pytest.fixture(scope="module")
def model():
    return cached_planted(SPEC, "bridge", True)


def _frame(scores):
    return scores.to_frame().sort_values(["detector", "layer", "head"]).reset_index(drop=True)


def _copy_with(model, name: str, value: float):
    """The same planted model rebuilt, with one entry of parameter ``name`` set to ``value``."""
    other = hz.testing.planted_model(SPEC, tokenizer=True)
    with torch.no_grad():
        other.state_dict()[name].view(-1)[3] = value  # state_dict tensors share the parameters' storage
    return other


# -- caches that do not belong ------------------------------------------------------------------


def test_a_cache_of_other_tokens_of_the_same_shape_is_refused(model):
    g = torch.Generator().manual_seed(3)
    tokens, other = torch.randint(2, 40, (2, 14), generator=g), torch.randint(2, 40, (2, 14), generator=g)
    _, cache = model.run_with_cache(other)
    with pytest.raises(hz.InvalidCacheError, match="does not belong"):
        hz.detect(model, "duplicate_token", tokens=tokens, cache=cache)


def test_a_cache_of_another_model_of_the_same_shape_is_refused(model):
    other = hz.testing.planted_model(dataclasses.replace(SPEC, seed=9), tokenizer=True)
    tokens = torch.randint(2, 40, (2, 14), generator=torch.Generator().manual_seed(4))
    _, cache = other.run_with_cache(tokens)
    with pytest.raises(hz.InvalidCacheError, match="layer 0"):
        hz.detect(model, "previous_token", tokens=tokens, cache=cache)


@pytest.mark.parametrize("make", [
    lambda p: torch.rand_like(p),                               # not normalised, not causal
    lambda p: p.flip(-1),                                       # looks ahead
    lambda p: torch.where(p > 0, -p, p),                        # negative
], ids=["random", "acausal", "negative"])
def test_patterns_that_are_not_attention_are_refused(model, make):
    tokens = torch.randint(2, 40, (2, 10), generator=torch.Generator().manual_seed(5))
    _, cache = model.run_with_cache(tokens)
    fake = {k: make(v) for k, v in cache.items() if k.endswith("hook_pattern")}
    with pytest.raises(hz.InvalidCacheError, match="not a causal attention pattern"):
        hz.detect(model, "previous_token", cache=fake)


def test_a_nan_pattern_in_a_cache_is_named(model):
    tokens = torch.randint(2, 40, (1, 10), generator=torch.Generator().manual_seed(6))
    _, cache = model.run_with_cache(tokens)
    fake = {k: v.clone() for k, v in cache.items() if k.endswith("hook_pattern")}
    fake["blocks.1.attn.hook_pattern"][0, 0, 3, 1] = float("nan")
    with pytest.raises(hz.NonFiniteError, match="blocks.1.attn.hook_pattern"):
        hz.detect(model, "previous_token", cache=fake)


def test_a_true_cache_still_scores_like_a_run(model):
    tokens = torch.randint(2, 40, (3, 12), generator=torch.Generator().manual_seed(7))
    _, cache = model.run_with_cache(tokens)
    a = _frame(hz.detect(model, ["previous_token", "induction"], tokens=tokens, cache=cache))
    b = _frame(hz.detect(model, ["previous_token", "induction"], tokens=tokens))
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)


# -- non-finite weights -------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["previous_token", "copying"])
def test_non_finite_weights_are_named_not_scored(model, detector):
    name = next(n for n in model.state_dict() if n.startswith("blocks.1.attn") and n.endswith("weight"))
    broken = _copy_with(model, name, float("nan"))
    with pytest.raises(hz.NonFiniteError, match=name.replace(".", r"\.")):
        hz.detect(broken, detector)


def test_non_finite_weights_stop_patching_decoding_and_the_embedding(model):
    name = next(n for n in model.state_dict() if n.startswith("blocks.0.attn") and n.endswith("weight"))
    broken = _copy_with(model, name, float("inf"))
    clean = torch.randint(2, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(hz.NonFiniteError):
        hz.patching.patch_heads(broken, clean, clean.flip(0), hz.patching.logit_diff(3, 4))
    with pytest.raises(hz.NonFiniteError):
        hz.effective_embedding(broken, torch.arange(5))
    trials = hz.NeedleHaystack(lengths=(16,), depths=(0.5,), n_needles=1, answer_len=2).build(model)
    with pytest.raises(hz.NonFiniteError):
        hz.decode_needles(broken, trials)


def test_the_finite_check_notices_an_in_place_edit(model):
    other = hz.testing.planted_model(SPEC, tokenizer=True)
    hz.detect(other, "previous_token")  # checked and remembered
    with torch.no_grad():
        next(iter(other.parameters())).view(-1)[0] = float("nan")
    with pytest.raises(hz.NonFiniteError):
        hz.detect(other, "previous_token")


# -- detectors that return the wrong shape ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _SquareReduce(hz.PositionalDetector):
    name = "square_reduce"
    description = "returns [head, head] instead of [batch, head]"

    def mask(self, seq, device):
        return torch.eye(seq, dtype=torch.bool, device=device)

    def reduce(self, pattern, match):
        n = pattern.shape[1]
        return {"score": (torch.zeros(n, n), torch.ones(n, dtype=torch.bool))}


@dataclasses.dataclass(frozen=True)
class _SquareCompute(hz.Detector):
    name = "square_compute"
    description = "returns [n_heads, n_heads] scores"
    kind = "custom"

    def compute(self, model, *, progress=None, circuits=None):
        n = model.cfg.n_heads
        return hz.DetectorOutput({"score": torch.zeros(n, n)})


@pytest.mark.parametrize("detector", [_SquareReduce(), _SquareCompute()], ids=["reduce", "compute"])
def test_scores_of_the_wrong_shape_are_refused(model, detector):
    with pytest.raises(hz.InvalidScoresError, match="must be"):
        hz.detect(model, detector)


# -- empty results ------------------------------------------------------------------------------


def test_a_detector_that_scores_nothing_says_why(model):
    no_repeats = torch.arange(2, 14)[None]
    with pytest.raises(hz.EmptyResultError, match="induction: no query"):
        hz.detect(model, "induction", tokens=no_repeats)
    with pytest.raises(hz.EmptyResultError, match="previous_token"):
        hz.detect(model, "previous_token", tokens=[[5]])


def test_running_every_detector_on_short_text_skips_the_empty_ones_and_says_so(model):
    from headzoo._runner import run_detectors  # what hz.detect(model) does for every registered detector

    with pytest.warns(UserWarning, match="skipped a detector"):
        scores = run_detectors(model, ["previous_token", "induction"], tokens=torch.arange(2, 14)[None], cache=None, explicit=False)
    assert "induction" in scores.meta["skipped_detectors"]
    assert scores.detectors == ["previous_token"]


# -- tokens and integer arguments ---------------------------------------------------------------


def test_text_longer_than_the_context_is_refused_like_ids(model):
    text = " ".join(f"tok{i % 30}" for i in range(40))  # 40 words (+ BOS) > n_ctx 24
    with pytest.raises(hz.InvalidTokensError, match="context is 24"):
        hz.detect(model, "previous_token", tokens=text)
    with pytest.raises(hz.InvalidTokensError, match="context is 24"):
        hz.detect(model, "previous_token", tokens=torch.randint(2, 40, (1, 30)))


@pytest.mark.parametrize("call", [
    lambda m, t: hz.patching.patch_heads(m, t, t.flip(0), hz.patching.logit_diff(3, 4), layers=[0.0]),
    lambda m, t: hz.patching.patch_heads(m, t, t.flip(0), hz.patching.logit_diff(3, 4), layers=[True]),
    lambda m, t: hz.ablate(m, heads=[(1.7, 2)]).__enter__(),
    lambda m, t: hz.ablate(m, heads=[(1, "2")]).__enter__(),
    lambda m, t: hz.ablate(m, heads=[(1, 2)], positions=[1.0]).__enter__(),
    lambda m, t: hz.detect(m, "induction", exclude_bos="no"),
    lambda m, t: hz.detect(m, "induction", measure="mul"),
    lambda m, t: hz.detect(m, "induction", n_prompts=2.0),
    lambda m, t: hz.detect(m, "induction", seed=1.5),
    lambda m, t: hz.detect(m, "induction", progress="yes"),
    lambda m, t: hz.effective_embedding(m, torch.arange(3), batch_size=2.0),
], ids=["layers-float", "layers-bool", "heads-float", "heads-str", "positions-float", "exclude_bos-str",
        "measure", "n_prompts-float", "seed-float", "progress-str", "batch_size-float"])
def test_floats_strings_and_bools_are_not_integers(model, call):
    tokens = torch.randint(2, 40, (2, 8), generator=torch.Generator().manual_seed(2))
    with pytest.raises((hz.InvalidOptionError, TypeError)):  # beartype (a TypeError) may get there first in the tests
        call(model, tokens)


# -- ragged batches -----------------------------------------------------------------------------


def _ragged(seed: int, lengths=(7, 12, 9, 16, 5, 12)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        half = torch.randint(2, 40, (n // 2,), generator=g)
        out.append(torch.cat([half, half, torch.randint(2, 40, (n % 2,), generator=g)]))
    return out


@pytest.mark.parametrize("options", [{}, {"exclude_bos": True, "exclude_current_token": True}, {"measure": "transformer_lens"}])
def test_ragged_batches_equal_prompt_by_prompt(model, options):
    prompts = _ragged(0)
    # with those exclusions the current-token and first-token heads have nothing left to score
    names = ["previous_token", "duplicate_token", "induction"] + ([] if options.get("exclude_bos") else ["current_token", "first_token"])
    batched = hz.detect(model, names, tokens=prompts, batch_size=4, **options)
    single = hz.detect(model, names, tokens=prompts, batch_size=1, **options)
    assert batched.meta["probe"]["padding"] == "right" and single.meta["probe"]["padding"] == "none"
    pd.testing.assert_frame_equal(_frame(batched), _frame(single), atol=1e-6, rtol=0)


def test_ragged_patching_equals_pair_by_pair(model):
    clean = _ragged(1, (6, 9, 7))
    corrupted = [torch.cat([c[:-1], torch.tensor([(int(c[-1]) + 3) % 38 + 2])]) for c in clean]
    correct = torch.tensor([int(c[len(c) // 2]) for c in clean])
    wrong = torch.tensor([int(c[1]) for c in clean])
    metric = hz.patching.logit_diff(correct, wrong, per_example=True)
    batched = hz.patching.patch_heads(model, clean, corrupted, metric, per_example=True)
    assert batched.meta["engine"]["lengths"] == [6, 9, 7]
    for i in range(3):
        one = hz.patching.patch_heads(model, clean[i][None], corrupted[i][None],
                                      hz.patching.logit_diff(correct[i : i + 1], wrong[i : i + 1], per_example=True), per_example=True)
        a = batched.per_example().query("example == @i")["effect"].to_numpy()
        b = one.per_example()["effect"].to_numpy()
        assert np.allclose(a, b, atol=1e-5)


def test_a_metric_that_reads_padding_is_refused(model):
    clean = _ragged(2, (6, 9))
    metric = lambda logits: logits[:, -1, 3].mean()  # noqa: E731 - reads the pad of the short row
    with pytest.raises(hz.InvalidOptionError, match="padding"):
        hz.patching.patch_heads(model, clean, clean, metric)


def test_ragged_decoding_equals_one_by_one(model):
    probe = hz.NeedleHaystack(lengths=(12, 17, 20), depths=(0.3, 0.8), n_needles=1, answer_len=2)
    trials = probe.build(model)
    together = hz.decode_needles(model, trials, use_kv_cache=False, batch_size=8)
    alone = hz.decode_needles(model, trials, use_kv_cache=False, batch_size=1)
    assert torch.equal(together.generated, alone.generated)
    assert torch.equal(together.keys, alone.keys)


# -- fallbacks are never silent -----------------------------------------------------------------


def test_a_model_without_a_cache_decodes_by_recompute_and_says_so(model):
    from headzoo import _forward

    _forward._warned.clear()
    trials = hz.NeedleHaystack(lengths=(16,), depths=(0.5,), n_needles=1, answer_len=2).build(model)
    with pytest.warns(_forward.HeadzooPerformanceWarning, match="full forward pass per token"):
        run = hz.decode_needles(model, trials, use_kv_cache=True)
    assert run.mode.startswith("recompute: no key-value cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", _forward.HeadzooPerformanceWarning)
        hz.decode_needles(model, trials, use_kv_cache=True)  # once per process, not per call


def test_a_hook_that_never_fires_is_diagnosed(model):
    from headzoo._forward import run

    with pytest.raises(hz.UnsupportedModelError, match="never fired"):
        run(model, read={"blocks.0.attn.hook_pattern": lambda p: None}, forward=lambda: torch.zeros(1, 1, 40))


def test_the_atlas_round_trips_with_its_checksum(model, tmp_path):
    atlas = hz.build_atlas(model, ["previous_token", "induction"])
    path = atlas.save(tmp_path / "atlas.parquet")
    again = hz.HeadAtlas.load(path)
    pd.testing.assert_frame_equal(again.to_frame(), atlas.to_frame())
    assert again.heads == atlas.heads and again.example_tokens == atlas.example_tokens
    assert (again.example_patterns == atlas.example_patterns).all() and again.meta == atlas.meta
    with pytest.raises(hz.CorruptFileError):
        hz.HeadScores.load(path)


def test_the_cache_keyword_follows_the_installed_transformers():
    """transformers 5.x takes ``cache=``, 4.x ``past_key_values=``: the kernel asks the model."""
    from headzoo._forward import _hf_cache_keyword

    class V5(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, attention_mask=None, **kwargs): ...

    class V4(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, attention_mask=None, **kwargs): ...

    class Bridge:
        def __init__(self, hf):
            self.original_model = hf

    assert _hf_cache_keyword(Bridge(V5())) == "cache"
    assert _hf_cache_keyword(Bridge(V4())) == "past_key_values"
    assert _hf_cache_keyword(object()) is None
