"""Model loading and the structural protocol, on local objects (no hub)."""

from __future__ import annotations

import pytest
import torch

import headzoo as hz
from headzoo._models import head_weights

from conftest import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_demo_loads_offline_and_has_its_planted_heads(backend, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hz.load_model("planted-demo", backend=backend)
    assert isinstance(model, hz.TransformerLensModel)
    info = hz.model_info(model)
    assert info.name == "planted-demo" and info.bos_token_id == 0
    top = hz.detect(model, ["previous_token", "duplicate_token", "induction"], n_prompts=4).top(1)
    assert {(r.detector, r.layer, r.head) for r in top.itertuples()} == {
        ("previous_token", 0, 2), ("duplicate_token", 1, 1), ("induction", 2, 3)}


def test_list_models_marks_the_default():
    table = hz.list_models()
    assert table.loc[table["default"], "name"].tolist() == ["zoo-small"]
    assert {"zoo-small", "zoo-medium", "planted-demo"} <= set(table["name"])


def test_a_hugging_face_model_from_a_local_directory(hf_gpt2):
    """The hub code path (boot_transformers) on a checkpoint and tokenizer saved by the test."""
    hf, path = hf_gpt2
    model = hz.load_model(str(path))
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4
    frame = hz.detect(model, ["previous_token", "induction"], n_prompts=2).to_frame()
    assert len(frame) == 2 * 2 * 4 and frame["score"].between(0, 1).all()


def test_grouped_query_weights_map_query_heads_to_kv_heads():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, n_key_value_heads=2,
                                  d_vocab=10, act_fn="gelu", d_mlp=16, seed=0)
    model = TransformerBridge.boot_native(cfg)
    w_k = head_weights(model, "K")
    assert w_k.shape == (1, 4, 16, 4)
    raw = model.W_K.detach()
    if raw.shape[1] == 2:  # stored per key-value head: head h reads kv head h // 2
        for h in range(4):
            assert torch.equal(w_k[0, h], raw[0, h // 2])
    scores = hz.detect(model, "previous_token", n_prompts=2, half_len=3).to_frame()
    assert len(scores) == 4
