"""weights_fingerprint: equal for the same weights and tokenizer, different otherwise, streamed."""

from __future__ import annotations

import hashlib

import pytest
import torch

import headzoo as hz
from headzoo import _fingerprint
from headzoo._fingerprint import weights_fingerprint
from headzoo.testing import PlantSpec, planted_model, word_tokenizer

from conftest import cached_planted

SPEC = {"n_layers": 2, "n_heads": 2, "d_head": 16, "d_vocab": 40, "n_ctx": 48, "previous_token": (0, 0), "induction": (1, 1)}


class _Pair(torch.nn.Module):
    """Two weights registered in a chosen order, plus an optional tokenizer."""

    def __init__(self, first: str, second: str, tokenizer=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        values = {"alpha": torch.randn(3, 5), "beta": torch.randn(7)}
        for name in (first, second):
            setattr(self, name, torch.nn.Parameter(values[name].clone()))
        self.tokenizer = tokenizer


def test_the_same_weights_give_the_same_fingerprint_and_different_seeds_do_not():
    a1, a2 = cached_planted(PlantSpec(**SPEC, seed=1)), planted_model(PlantSpec(**SPEC, seed=1))
    b = cached_planted(PlantSpec(**SPEC, seed=2))
    assert a1 is not a2 and weights_fingerprint(a1) == weights_fingerprint(a2)
    assert weights_fingerprint(a1) != weights_fingerprint(b)
    assert len(weights_fingerprint(a1)) == 16 and int(weights_fingerprint(a1), 16) >= 0


def test_one_changed_value_changes_it_and_nothing_is_mutated():
    model = _Pair("alpha", "beta")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original = weights_fingerprint(model)
    weight = model.alpha
    with torch.no_grad():
        old = weight[2, 4].item()
        weight[2, 4] = torch.nextafter(torch.tensor(old), torch.tensor(float("inf")))  # one ulp
        changed = weights_fingerprint(model)
        weight[2, 4] = old
    assert changed != original and weights_fingerprint(model) == original
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_order_of_the_state_dict_does_not_matter_names_do():
    ab, ba = _Pair("alpha", "beta"), _Pair("beta", "alpha")
    assert list(ab.state_dict()) != list(ba.state_dict())
    assert weights_fingerprint(ab) == weights_fingerprint(ba)
    renamed = _Pair("alpha", "beta")
    renamed.gamma = renamed.beta
    del renamed.beta
    assert weights_fingerprint(renamed) != weights_fingerprint(ab)


def test_dtype_and_shape_count_layout_and_device_do_not():
    model = _Pair("alpha", "beta")
    reference = weights_fingerprint(model)
    as_double = _Pair("alpha", "beta").double()
    assert weights_fingerprint(as_double) != reference
    assert len(weights_fingerprint(_Pair("alpha", "beta").bfloat16())) == 16  # no numpy dtype needed
    reshaped = _Pair("alpha", "beta")
    reshaped.alpha = torch.nn.Parameter(model.alpha.detach().reshape(5, 3).clone())
    assert weights_fingerprint(reshaped) != reference  # same bytes, other shape
    transposed = _Pair("alpha", "beta")  # the same values held in a column-major tensor
    transposed.alpha = torch.nn.Parameter(model.alpha.detach().t().contiguous().t())
    assert not transposed.alpha.is_contiguous() and weights_fingerprint(transposed) == reference
    if torch.cuda.is_available():
        assert weights_fingerprint(_Pair("alpha", "beta").cuda()) == reference


def test_streaming_in_slices_hashes_the_same_bytes(monkeypatch):
    model = cached_planted(PlantSpec(**SPEC, seed=1))
    whole = weights_fingerprint(model)
    assert max(v.numel() for v in model.state_dict().values()) > 1000
    monkeypatch.setattr(_fingerprint, "_CHUNK", 256)  # 64 float32 a slice: most tensors take many
    assert weights_fingerprint(model) == whole


def test_the_format_is_stable():
    """The digest of a one-buffer module, computed here from the documented format; a change to
    the format would silently orphan every cache and atlas fingerprint, so it must be deliberate."""
    module = torch.nn.Module()
    module.register_buffer("x", torch.arange(6, dtype=torch.float32))
    expected = hashlib.sha256(b"headzoo.weights/1\0" + b"x\0torch.float32\0(6,)\0"
                              + torch.arange(6, dtype=torch.float32).numpy().tobytes() + b"tokenizer\0none")
    assert weights_fingerprint(module) == expected.hexdigest()[:16]


def test_the_tokenizer_is_part_of_the_identity():
    words = [f"w{i}" for i in range(38)]
    one = _Pair("alpha", "beta", tokenizer=word_tokenizer(words))  # Hugging Face fast tokenizers
    same = _Pair("alpha", "beta", tokenizer=word_tokenizer(words))
    other = _Pair("alpha", "beta", tokenizer=word_tokenizer(words[::-1]))
    ab = _Pair("alpha", "beta")
    assert weights_fingerprint(one) == weights_fingerprint(same)
    assert len({weights_fingerprint(one), weights_fingerprint(other), weights_fingerprint(ab)}) == 3
    model = cached_planted(PlantSpec(**SPEC, seed=1), "bridge", True)  # a model's own tokenizer counts too
    assert weights_fingerprint(model) != weights_fingerprint(cached_planted(PlantSpec(**SPEC, seed=1)))
    with_vocab = _Pair("alpha", "beta", tokenizer=_VocabOnly({"a": 0, "b": 1}))
    other_vocab = _Pair("alpha", "beta", tokenizer=_VocabOnly({"a": 1, "b": 0}))
    assert len({weights_fingerprint(ab), weights_fingerprint(with_vocab), weights_fingerprint(other_vocab)}) == 3


class _VocabOnly:
    """A tokenizer without a ``tokenizers`` backend: identified through its vocabulary."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_models_that_cannot_be_read_are_refused():
    with pytest.raises(hz.UnsupportedModelError, match="state_dict"):
        weights_fingerprint(object())
    with torch.device("meta"):
        ghost = torch.nn.Linear(3, 4)
    with pytest.raises(hz.UnsupportedModelError, match="'bias'.*meta"):
        weights_fingerprint(ghost)


class _WithExtra(torch.nn.Module):
    """A module that saves non-tensor extra state in its state dict."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.w = torch.nn.Parameter(torch.ones(2))

    def get_extra_state(self):
        return {"k": self.k, "object": object()} if self.k < 0 else {"k": self.k}

    def set_extra_state(self, state) -> None:
        self.k = state["k"]


def test_extra_state_counts_and_stays_stable():
    assert weights_fingerprint(_WithExtra(1)) == weights_fingerprint(_WithExtra(1))
    assert weights_fingerprint(_WithExtra(1)) != weights_fingerprint(_WithExtra(2))
    # state that has no JSON form is identified by its type, never by a repr with an address
    assert weights_fingerprint(_WithExtra(-1)) == weights_fingerprint(_WithExtra(-1))
