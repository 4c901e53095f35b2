"""Every bad input gets a typed error that says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch

import headzoo as hz


def test_unknown_detector_suggests_and_lists(demo_model):
    with pytest.raises(hz.UnknownDetectorError) as info:
        hz.detect(demo_model, "inducton")
    msg = str(info.value)
    assert "Did you mean 'induction'" in msg
    for name in ("previous_token", "duplicate_token", "induction"):
        assert name in msg
    assert isinstance(info.value, KeyError)


def test_unknown_option_lists_valid_ones(demo_model):
    with pytest.raises(hz.InvalidOptionError, match="exclude_bos"):
        hz.detect(demo_model, "induction", exclude_boss=True)


def test_bad_option_value(demo_model):
    with pytest.raises(hz.InvalidOptionError, match="measure"):
        hz.detect(demo_model, "induction", measure="nope")
    with pytest.raises(hz.InvalidOptionError, match="n_prompts"):
        hz.detect(demo_model, "induction", n_prompts=0)


def test_tokens_longer_than_context(demo_model):
    with pytest.raises(hz.InvalidTokensError, match="context is 64"):
        hz.detect(demo_model, tokens=torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("tokens,match", [
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
    (torch.zeros(2, 5), "integer"),
    (torch.zeros(2, 5, dtype=torch.bool), "integer"),
    ([], "empty"),
    ([[1, 2], ["a", 3]], "prompt 1"),
    (torch.full((1, 5), 10_000), "vocabulary"),
    (torch.full((1, 5), -1), "vocabulary"),
    (torch.zeros(1, 2, 3, dtype=torch.long), "shape"),
    ("", "empty"),
    (3.5, "tokens must be"),
])
def test_bad_tokens(demo_model, tokens, match):
    with pytest.raises(hz.InvalidTokensError, match=match):
        hz.detect(demo_model, tokens=tokens)


def test_text_without_tokenizer():
    from headzoo.testing import planted_model

    model = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=10, n_ctx=16, previous_token=(0, 0), induction=(1, 1))
    with pytest.raises(hz.InvalidTokensError, match="no tokenizer"):
        hz.detect(model, tokens="hello world")


def test_cache_without_pattern_hooks_names_them(demo_model):
    tokens = torch.randint(2, 60, (1, 10))
    _, cache = demo_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post") or n == "blocks.0.attn.hook_pattern")
    with pytest.raises(hz.MissingHooksError) as info:
        hz.detect(demo_model, "previous_token", cache=cache, tokens=tokens)
    msg = str(info.value)
    assert "blocks.1.attn.hook_pattern" in msg and "blocks.2.attn.hook_pattern" in msg
    assert "names_filter" in msg


def test_cache_needs_tokens_for_token_detectors(demo_model):
    tokens = torch.randint(2, 60, (1, 10))
    _, cache = demo_model.run_with_cache(tokens)
    with pytest.raises(hz.InvalidTokensError, match="tokens=tokens"):
        hz.detect(demo_model, "induction", cache=cache)
    # position-only detectors do not need them
    assert len(hz.detect(demo_model, "previous_token", cache=cache).to_frame()) == 12
    with pytest.raises(hz.InvalidTokensError, match="shape"):
        hz.detect(demo_model, "induction", cache=cache, tokens=tokens[:, :5])


class _NotAModel:
    pass


def test_not_a_model():
    with pytest.raises(hz.UnsupportedModelError, match="not a TransformerLens model"):
        hz.detect(_NotAModel(), "induction")


def test_model_whose_patterns_cannot_be_read(demo_model):
    class NoPatterns:
        """A model-like object whose attention is fused: no hook_pattern anywhere."""

        cfg = demo_model.cfg
        hook_dict = {k: v for k, v in demo_model.hook_dict.items() if "hook_pattern" not in k}

        def run_with_hooks(self, *a, **k): ...
        def run_with_cache(self, *a, **k): ...
        def to_tokens(self, *a, **k): ...

    with pytest.raises(hz.UnsupportedModelError, match="cannot be read"):
        hz.detect(NoPatterns(), "induction")


def test_model_whose_pattern_hooks_never_fire(demo_model):
    import copy

    model = copy.deepcopy(demo_model)
    # Simulate a fused kernel: the hook points exist but the forward pass bypasses them.
    for layer in range(model.cfg.n_layers):
        hp = model.hook_dict[f"blocks.{layer}.attn.hook_pattern"]
        hp.register_forward_pre_hook(lambda m, args: None)
        hp.forward = lambda x: x
        hp.__call__ = None
    original = model.hook_dict
    fake = dict(original)
    import torch.nn as nn

    for layer in range(model.cfg.n_layers):
        fake[f"blocks.{layer}.attn.hook_pattern"] = nn.Identity()  # never called by the model

    class Wrapper:
        cfg = model.cfg
        hook_dict = fake
        tokenizer = model.tokenizer

        def __call__(self, tokens):
            return model(tokens)

        def parameters(self):
            return model.parameters()

        def run_with_hooks(self, *a, **k): ...
        def run_with_cache(self, *a, **k): ...
        def to_tokens(self, *a, **k): ...

    with pytest.raises(hz.UnsupportedModelError, match="never fired"):
        hz.detect(Wrapper(), "induction", n_prompts=1)


def test_duplicate_selection(demo_model):
    with pytest.raises(hz.InvalidOptionError, match="more than once"):
        hz.detect(demo_model, ["induction", "induction"])


@pytest.mark.slow
def test_unknown_model_name():
    with pytest.raises(hz.ModelNotFoundError, match="planted-demo"):
        hz.load_model("definitely-not-a-model-xyz")
