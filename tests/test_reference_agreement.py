"""Agreement with TransformerLens' detect_head on the same tokens, to 1e-4, on every head."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.head_detector import detect_head

import headzoo as hz

TL_NAMES = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head", "induction": "induction_head"}


def _texts(model, n_prompts=4, seed=3):
    """Repeated-token probes rendered as text, so detect_head tokenizes them to the same ids."""
    info = hz.model_info(model)
    batches = hz.RepeatedTokens(n_prompts=n_prompts, half_len=12, seed=seed, prepend_bos=False).batches(info)
    ids = torch.cat(list(batches))
    texts = [" ".join(model.tokenizer.convert_ids_to_tokens(row.tolist())) for row in ids]
    return texts, ids


@pytest.mark.parametrize("name", list(TL_NAMES))
@pytest.mark.parametrize("exclude_bos,exclude_current_token", [(False, False), (True, False), (True, True)])
def test_transformer_lens_measure_matches_detect_head(demo_model, name, exclude_bos, exclude_current_token):
    texts, _ = _texts(demo_model)
    ours = hz.detect(demo_model, name, tokens=texts, measure="transformer_lens",
                     exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
    theirs = detect_head(demo_model, texts, TL_NAMES[name], exclude_bos=exclude_bos,
                         exclude_current_token=exclude_current_token, error_measure="mul")
    ours_matrix = torch.tensor(ours.matrix(name).to_numpy())
    assert ours_matrix.shape == theirs.shape
    assert torch.allclose(ours_matrix, theirs.double(), atol=1e-4), (ours_matrix - theirs).abs().max()


def test_transformer_lens_measure_from_a_users_cache(demo_model):
    texts, _ = _texts(demo_model, n_prompts=1)
    tokens = demo_model.to_tokens(texts[0])
    _, cache = demo_model.run_with_cache(tokens)
    ours = hz.detect(demo_model, "induction", tokens=tokens, cache=cache, measure="transformer_lens")
    theirs = detect_head(demo_model, texts[0], "induction_head", error_measure="mul")
    assert torch.allclose(torch.tensor(ours.matrix("induction").to_numpy()), theirs.double(), atol=1e-4)


def test_stripe_score_is_the_published_definition(demo_model):
    """The default measure equals mean over second-half queries of A[q, q-(n-1)] and A[q, q-n]."""
    probe = hz.RepeatedTokens(n_prompts=4, half_len=20, seed=5)
    info = hz.model_info(demo_model)
    tokens = torch.cat(list(probe.batches(info)))
    _, cache = demo_model.run_with_cache(tokens)
    scores = hz.detect(demo_model, ["induction", "duplicate_token", "previous_token"], tokens=tokens)
    n, start = 20, 1 + 20  # BOS, then the first copy
    for layer in range(info.n_layers):
        a = cache[f"blocks.{layer}.attn.hook_pattern"]
        q = torch.arange(start, start + n)
        induction = a[:, :, q, q - (n - 1)].mean((0, 2))
        duplicate = a[:, :, q, q - n].mean((0, 2))
        q_all = torch.arange(1, tokens.shape[1])
        previous = a[:, :, q_all, q_all - 1].mean((0, 2))
        for name, expected in (("induction", induction), ("duplicate_token", duplicate), ("previous_token", previous)):
            got = torch.tensor(scores.matrix(name).loc[layer].to_numpy())
            assert torch.allclose(got, expected.double(), atol=1e-5), (name, layer)
