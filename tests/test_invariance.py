"""Options travel with the work; nothing the user passes in is changed; hooks are cleaned up."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import headzoo as hz

from conftest import cached_planted

OPTS = dict(exclude_bos=True, exclude_current_token=True, seed=7, half_len=9)


def _frame(scores):
    return scores.to_frame().sort_values(["detector", "layer", "head"]).reset_index(drop=True)


def test_batch_size_does_not_change_probe_scores(demo_model):
    a = _frame(hz.detect(demo_model, n_prompts=6, batch_size=6, **OPTS))
    b = _frame(hz.detect(demo_model, n_prompts=6, batch_size=1, **OPTS))
    c = _frame(hz.detect(demo_model, n_prompts=6, batch_size=4, **OPTS))
    pd.testing.assert_frame_equal(a, b, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(a, c, atol=1e-6, rtol=0)


def test_batched_equals_mean_of_single_prompts_with_options(demo_model):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 66, (n,), generator=g) for n in (12, 12, 12, 12)]
    prompts = [torch.cat([p[:6], p[:6]]) for p in prompts]  # give every prompt repeats
    batched = hz.detect(demo_model, tokens=torch.stack(prompts), batch_size=3, **{k: OPTS[k] for k in ("exclude_bos", "exclude_current_token")})
    singles = [hz.detect(demo_model, tokens=p, exclude_bos=True, exclude_current_token=True) for p in prompts]
    mean = pd.concat([_frame(s) for s in singles]).groupby(["detector", "layer", "head"], as_index=False).mean(numeric_only=True)
    ours = _frame(batched)
    pd.testing.assert_frame_equal(ours[mean.columns], mean[mean.columns], atol=1e-6, rtol=0, check_dtype=False)


def test_ragged_prompts_score_prompt_by_prompt(demo_model):
    prompts = [[5, 6, 7, 5, 6, 7], [9, 10, 11, 12, 9, 10, 11, 12, 13]]
    ragged = _frame(hz.detect(demo_model, "induction", tokens=prompts))
    singles = [_frame(hz.detect(demo_model, "induction", tokens=p)) for p in prompts]
    mean = (singles[0]["score"] + singles[1]["score"]) / 2
    assert (ragged["score"] - mean).abs().max() < 1e-6


def test_cache_and_tokens_are_left_unchanged(demo_model):
    tokens = torch.randint(2, 66, (3, 20), generator=torch.Generator().manual_seed(1))
    tokens_before = tokens.clone()
    _, cache = demo_model.run_with_cache(tokens)
    before = {k: v.clone() for k, v in cache.items()}
    from_cache = hz.detect(demo_model, tokens=tokens, cache=cache, exclude_bos=True, exclude_current_token=True)
    assert torch.equal(tokens, tokens_before)
    for k, v in cache.items():
        assert torch.equal(v, before[k]), k
    from_run = hz.detect(demo_model, tokens=tokens, exclude_bos=True, exclude_current_token=True)
    pd.testing.assert_frame_equal(_frame(from_cache), _frame(from_run), atol=1e-5, rtol=0)


def test_cache_without_batch_dim(demo_model):
    tokens = torch.randint(2, 66, (1, 16), generator=torch.Generator().manual_seed(2))
    _, cache = demo_model.run_with_cache(tokens, remove_batch_dim=True)
    a = _frame(hz.detect(demo_model, "induction", tokens=tokens, cache=cache))
    b = _frame(hz.detect(demo_model, "induction", tokens=tokens))
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)


def test_hooks_are_removed_and_user_hooks_survive(demo_model):
    seen = []
    name = "blocks.0.attn.hook_pattern"
    demo_model.add_hook(name, lambda x, hook: seen.append(1))
    try:
        counts = {n: len(hp._forward_hooks) for n, hp in demo_model.hook_dict.items()}
        hz.detect(demo_model, n_prompts=2)
        assert {n: len(hp._forward_hooks) for n, hp in demo_model.hook_dict.items()} == counts
        assert seen, "the user's own hook must still run during detection"
        with pytest.raises(hz.InvalidTokensError):
            hz.detect(demo_model, tokens=torch.zeros(1, 500, dtype=torch.long))
        assert {n: len(hp._forward_hooks) for n, hp in demo_model.hook_dict.items()} == counts
    finally:
        demo_model.reset_hooks()


def test_hooks_are_removed_when_a_detector_raises(demo_model):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Broken(hz.PatternDetector):
        name = "broken_for_test"
        description = "raises"

        def match(self, tokens):
            raise RuntimeError("boom")

    counts = {n: len(hp._forward_hooks) for n, hp in demo_model.hook_dict.items()}
    with pytest.raises(RuntimeError, match="boom"):
        hz.detect(demo_model, [Broken()], n_prompts=2)
    assert {n: len(hp._forward_hooks) for n, hp in demo_model.hook_dict.items()} == counts


def test_low_precision_models_give_the_same_ranking(demo_spec):
    from headzoo.testing import planted_model

    full = hz.detect(cached_planted(demo_spec), ["previous_token", "induction"], n_prompts=4)
    half = hz.detect(planted_model(demo_spec, dtype=torch.bfloat16), ["previous_token", "induction"], n_prompts=4)
    for name in ("previous_token", "induction"):
        a, b = full.top(1, name).iloc[0], half.top(1, name).iloc[0]
        assert (a["layer"], a["head"]) == (b["layer"], b["head"])
        assert abs(a["score"] - b["score"]) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(demo_spec):
    from headzoo.testing import planted_model

    cpu = _frame(hz.detect(cached_planted(demo_spec), n_prompts=4))
    gpu = _frame(hz.detect(planted_model(demo_spec, device="cuda"), n_prompts=4))
    pd.testing.assert_frame_equal(cpu, gpu, atol=1e-4, rtol=0)


def test_probe_is_seeded_and_well_formed(demo_model):
    info = hz.model_info(demo_model)
    probe = hz.RepeatedTokens(n_prompts=5, half_len=10, seed=3)
    a, b = torch.cat(list(probe.batches(info))), torch.cat(list(probe.batches(info)))
    assert torch.equal(a, b)
    assert a.shape == (5, 21) and (a[:, 0] == info.bos_token_id).all()
    assert torch.equal(a[:, 1:11], a[:, 11:])
    specials = torch.tensor(info.special_token_ids)
    assert not torch.isin(a[:, 1:], specials).any()
    assert all(len(set(row[1:11].tolist())) == 10 for row in a)  # drawn without replacement
    other = torch.cat(list(hz.RepeatedTokens(n_prompts=5, half_len=10, seed=4).batches(info)))
    assert not torch.equal(a, other)
