"""Shared fixtures. headzoo is imported with jaxtyping + beartype runtime checks, so every
annotated tensor shape in the engine is checked while the tests run."""

from __future__ import annotations

import functools
import warnings

import pytest
from jaxtyping import install_import_hook

warnings.filterwarnings("ignore", category=DeprecationWarning)

with install_import_hook("headzoo", "beartype.beartype"):
    import headzoo  # noqa: F401
    import headzoo.testing  # noqa: F401

from headzoo._backends import available_backends  # noqa: E402
from headzoo.testing import PlantSpec, planted_model  # noqa: E402

BACKENDS = available_backends()


def experiment_script(path):
    """Import a script of ``experiments/`` (not a package) as a module, for testing its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=32)
def cached_planted(spec: PlantSpec, backend: str = "bridge", tokenizer: bool = False):
    """Planted models are read-only in the tests, so one build serves many tests."""
    return planted_model(spec, backend=backend, tokenizer=tokenizer or None)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def demo_spec() -> PlantSpec:
    return PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64,
                     previous_token=(0, 1), duplicate_token=(1, 2), induction=(2, 0), seed=11)


@pytest.fixture
def demo_model(demo_spec: PlantSpec):
    return cached_planted(demo_spec, "bridge", True)


@pytest.fixture
def hf_gpt2(tmp_path, monkeypatch):
    """A tiny random Hugging Face GPT-2 and a word tokenizer saved to disk: ``(hf_model, path)``.

    Loading it goes through the hub code path (``boot_transformers``) with the hub offline.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from headzoo.testing import word_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    word_tokenizer([f"w{i}" for i in range(62)]).save_pretrained(tmp_path)
    return hf, tmp_path
