"""The effective embedding equals block 0 written out by hand, on every architecture."""

from __future__ import annotations

import pytest
import torch

import headzoo as hz

from conftest import BACKENDS

ARCHS = {
    "no_norm": dict(normalization_type=None),
    "layernorm": dict(normalization_type="LN"),
    "rmsnorm_rotary": dict(normalization_type="RMS", positional_embedding_type="rotary"),
    "parallel": dict(normalization_type="LN", parallel_attn_mlp=True),
    "attn_only": dict(normalization_type="LN", attn_only=True),
    "grouped_query": dict(normalization_type="LN", n_key_value_heads=2),
    "gated_mlp": dict(normalization_type="RMS", gated_mlp=True, act_fn="silu"),
}


def random_model(backend: str, seed: int = 0, **extra):
    """A small model of the given class with every parameter random (LN weights included)."""
    cfg = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, d_mlp=64, act_fn="gelu")
    cfg.update(extra)
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**cfg))
    else:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def by_hand(model, ids: torch.Tensor, variant: str) -> torch.Tensor:
    """Block 0 written out from its modules: W_E (+ self-attention) + MLP0(LN(.))."""
    block = model.blocks[0]
    x = model.W_E.detach()[ids][None]
    attn = torch.zeros_like(x)
    if variant == "attn_mlp0":
        w_v, b_v = block.attn.W_V, block.attn.b_V
        if w_v.shape[0] != model.cfg.n_heads:  # grouped-query: query head h reads kv head h // g
            group = model.cfg.n_heads // w_v.shape[0]
            w_v, b_v = w_v.repeat_interleave(group, 0), b_v.repeat_interleave(group, 0)
        v = torch.einsum("bpd,hde->bphe", block.ln1(x), w_v) + b_v
        attn = torch.einsum("bphe,hed->bpd", v, block.attn.W_O) + block.attn.b_O
    if getattr(block, "mlp", None) is None:
        return (x + attn)[0]
    parallel = getattr(model.cfg, "parallel_attn_mlp", False) and backend_runs_parallel(model)
    mid = x if parallel else x + attn
    return (x + attn + block.mlp(block.ln2(mid)))[0]


def backend_runs_parallel(model) -> bool:
    # TransformerBridge.boot_native runs blocks sequentially even when the config says
    # parallel; HookedTransformer honours it. The effective embedding follows what the model
    # actually computes, so the hand-written reference must too.
    return type(model).__name__ == "HookedTransformer"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("variant", ["mlp0", "attn_mlp0"])
def test_matches_block_zero_by_hand(backend, arch, variant):
    model = random_model(backend, **ARCHS[arch])
    ids = torch.arange(50)
    with torch.no_grad():
        got = hz.effective_embedding(model, ids, variant=variant)
        want = by_hand(model, ids, variant)
    assert got.shape == (50, 32) and got.dtype == torch.float32
    assert (got - want).abs().max() < 1e-4, (arch, variant)


def test_mlp0_variant_is_the_papers_formula():
    """W_E + MLP0(LN2(W_E)) exactly, on a LayerNorm model."""
    model = random_model("bridge", normalization_type="LN")
    block = model.blocks[0]
    with torch.no_grad():
        w_e = model.W_E.detach()
        want = w_e + block.mlp(block.ln2(w_e[None]))[0]
        got = hz.effective_embedding(model)  # the whole vocabulary
    assert (got - want).abs().max() < 1e-4


def test_embed_variant_is_the_embedding():
    model = random_model("bridge", normalization_type="LN")
    got = hz.effective_embedding(model, [3, 1, 4], variant="embed")
    assert torch.allclose(got, model.W_E.detach()[[3, 1, 4]])


def test_attention_only_models_say_there_is_no_mlp0():
    model = random_model("bridge", normalization_type="LN", attn_only=True)
    meta = hz.embedding_metadata(model, "mlp0")
    assert meta["has_mlp0"] is False and "no MLP0" in meta["note"]
    assert torch.allclose(hz.effective_embedding(model, [1, 2]), model.W_E.detach()[[1, 2]])
    assert hz.embedding_metadata(random_model("bridge"), "mlp0")["has_mlp0"] is True


def test_batches_do_not_change_the_answer():
    model = random_model("bridge", normalization_type="LN")
    whole = hz.effective_embedding(model, torch.arange(50), batch_size=50)
    pieces = hz.effective_embedding(model, torch.arange(50), batch_size=7)
    assert torch.allclose(whole, pieces, rtol=1e-5, atol=1e-5)


def test_the_model_is_left_as_it_was():
    model = random_model("bridge", normalization_type="LN")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = {name: len(h._forward_hooks) for name, h in model.hook_dict.items()}
    hz.effective_embedding(model, [1, 2, 3], variant="attn_mlp0")
    with pytest.raises(hz.InvalidTokensError):
        hz.effective_embedding(model, [1, 999])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {name: len(h._forward_hooks) for name, h in model.hook_dict.items()} == hooks_before
    ids = torch.tensor([1, 2, 3])
    hz.effective_embedding(model, ids)
    assert ids.tolist() == [1, 2, 3]


def test_bad_inputs_raise_typed_errors():
    model = random_model("bridge")
    with pytest.raises(hz.InvalidOptionError, match="variant"):
        hz.effective_embedding(model, [1], variant="mlp1")
    with pytest.raises(hz.InvalidTokensError, match="vocabulary"):
        hz.effective_embedding(model, [-1])
    with pytest.raises(hz.InvalidTokensError, match="integer"):
        hz.effective_embedding(model, torch.tensor([1.0]))
    with pytest.raises(hz.InvalidOptionError, match="batch_size"):
        hz.effective_embedding(model, [1], batch_size=0)


def test_a_hugging_face_gpt2_block(hf_gpt2):
    """boot_transformers wraps HF's own modules: the embedding must match HF's block 0."""
    hf, path = hf_gpt2
    model = hz.load_model(str(path))
    with torch.no_grad():
        w_e = hf.transformer.wte.weight
        block = hf.transformer.h[0]
        want = w_e + block.mlp(block.ln_2(w_e))
        got = hz.effective_embedding(model)
    assert (got - want).abs().max() < 1e-4
