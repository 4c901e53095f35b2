"""The effective embedding: a token as block 0 leaves it, with position removed.

Circuit analyses that read heads from their weights need the token's representation as later
layers see it. In GPT-2-like models the raw embedding ``W_E`` is a poor stand-in: MLP0 acts
as an extended embedding (McDougall et al. 2023, arXiv 2310.04625; Gould et al. 2023,
arXiv 2312.09230), so papers use ``W_EE = W_E + MLP0(LN2(W_E))``. Some add layer-0 attention
as pure self-attention too.

headzoo computes every variant by running the model's own block 0 on one-token sequences with
the positional embedding zeroed, so it is right for any architecture TransformerLens runs:
sequential or parallel attention and MLP, LayerNorm, RMSNorm or none, gated MLPs, scaled
embeddings, grouped-query attention, attention-only models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float

from headzoo._errors import InvalidOptionError, InvalidTokensError, MissingHooksError
from headzoo._forward import check_finite, run
from headzoo._models import model_info
from headzoo._tokens import check_int

__all__ = ["EmbeddingVariant", "effective_embedding", "embedding_metadata", "EMBEDDING_VARIANTS"]

EmbeddingVariant = Literal["mlp0", "attn_mlp0", "embed"]

#: what each variant is, in words (also recorded in result metadata)
EMBEDDING_VARIANTS: dict[str, str] = {
    "mlp0": "W_E + MLP0(LN(W_E)): block 0 with its attention output zeroed and no position "
    "(McDougall et al. 2023; the default)",
    "attn_mlp0": "block 0 in full on a one-token sequence without position: W_E, plus layer-0 "
    "attention as pure self-attention, plus MLP0",
    "embed": "the token embedding alone, as the model reads it (hook_embed)",
}


def _has_mlp0(model: Any) -> bool:
    cfg = model.cfg
    if getattr(cfg, "attn_only", False):
        return False
    block = model.blocks[0]
    return getattr(block, "mlp", None) is not None


def embedding_metadata(model: Any, variant: EmbeddingVariant | str) -> dict[str, Any]:
    """What a result records about the effective embedding it used."""
    _check_variant(variant)
    has_mlp0 = _has_mlp0(model)
    meta: dict[str, Any] = {
        "variant": variant,
        "definition": EMBEDDING_VARIANTS[variant],
        "has_mlp0": has_mlp0,
        "parallel_attn_mlp": bool(getattr(model.cfg, "parallel_attn_mlp", False)),
    }
    if not has_mlp0 and variant != "embed":
        meta["note"] = (
            "attention-only model: there is no MLP0, so the mlp0 variant equals W_E"
            if variant == "mlp0"
            else "attention-only model: there is no MLP0; W_E plus layer-0 self-attention"
        )
    return meta


def _check_variant(variant: str) -> None:
    if variant not in EMBEDDING_VARIANTS:
        raise InvalidOptionError(
            f"unknown effective-embedding variant {variant!r}; choose one of {list(EMBEDDING_VARIANTS)}"
        )


def effective_embedding(
    model: Any,
    tokens: torch.Tensor | Sequence[int] | None = None,
    *,
    variant: EmbeddingVariant | str = "mlp0",
    batch_size: int = 4096,
) -> Float[torch.Tensor, "n d_model"]:
    """The effective embedding of ``tokens`` (all of the vocabulary when ``None``).

    Args:
        model: any TransformerLens model.
        tokens: token ids ``[n]``. For a large vocabulary pass the subset you need: the whole
            vocabulary costs one block-0 forward per token.
        variant: ``"mlp0"`` (default): ``W_E + MLP0(LN(W_E))``, block 0 with its attention
            output zeroed; for parallel-attention models the MLP reads the same normalised
            embedding the attention does. ``"attn_mlp0"``: block 0 in full on a one-token
            sequence, so layer-0 attention is pure self-attention. ``"embed"``: the embedding
            alone. On attention-only models ``"mlp0"`` is the embedding (there is no MLP0);
            :func:`embedding_metadata` says so.
        batch_size: tokens per block-0 forward.

    Returns:
        ``[n, d_model]`` float32 tensor on the model's device. Positional embeddings are left
        out (zeroed; rotary models have none to remove at position 0).

    Raises:
        MissingHooksError: the model lacks the hooks needed to run block 0 this way.
        InvalidTokensError: ids outside the vocabulary.
    """
    _check_variant(variant)
    info = model_info(model)
    check_finite(model)
    if tokens is None:
        ids = torch.arange(info.d_vocab)
    else:
        ids = torch.as_tensor(tokens)
        if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise InvalidTokensError(f"tokens must be a 1-D tensor of integer ids; got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= info.d_vocab):
            raise InvalidTokensError(
                f"tokens hold ids in [{int(ids.min())}, {int(ids.max())}] but the vocabulary is [0, {info.d_vocab - 1}]"
            )
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    hooks = model.hook_dict
    read = "hook_embed" if variant == "embed" else "blocks.0.hook_resid_post"
    needed = [read] + (["blocks.0.hook_attn_out"] if variant == "mlp0" else [])
    missing = [n for n in needed if n not in hooks]
    if missing:
        raise MissingHooksError(
            f"{type(model).__name__} has no hook(s) {missing}, which the {variant!r} effective "
            "embedding reads; use a TransformerLens model that exposes them."
        )
    standard_pos = getattr(model.cfg, "positional_embedding_type", "standard") in ("standard", "shortformer")
    if standard_pos and "hook_pos_embed" not in hooks and variant != "embed":
        raise MissingHooksError(
            "the model adds learned positional embeddings but has no hook_pos_embed to remove them with"
        )
    device = torch.device(info.device)
    out = torch.empty(ids.numel(), info.d_model, dtype=torch.float32, device=device)
    got: dict[str, torch.Tensor] = {}

    def zero(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(x)

    edit = ([("hook_pos_embed", zero)] if "hook_pos_embed" in hooks else []) + (
        [("blocks.0.hook_attn_out", zero)] if variant == "mlp0" else [])
    with torch.no_grad():
        for start in range(0, ids.numel(), batch_size):
            chunk = ids[start : start + batch_size].to(device)
            # the pass stops at the hook read: nothing after block 0 runs
            run(model, chunk[:, None], read={read: lambda x: got.__setitem__("x", x)}, edit=edit, stop_after=read)
            out[start : start + chunk.numel()] = got["x"][:, 0].float()
    return out
