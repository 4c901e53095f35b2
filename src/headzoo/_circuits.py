"""Weight-based circuit scores, computed on small factors (no ``vocab x vocab`` matrix)."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float

from headzoo._errors import UnsupportedModelError
from headzoo._models import head_weights, model_info

__all__ = ["ov_copying_ratio"]


def ov_copying_ratio(model: Any) -> Float[torch.Tensor, "layer head"]:
    """Olsson et al.'s copying score: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of
    ``W_E @ W_V[l,h] @ W_O[l,h] @ W_U``, in ``[-1, 1]``; +1 is a pure copying head.

    The non-zero eigenvalues of ``(W_E W_V)(W_O W_U)`` equal those of the ``d_head x d_head``
    matrix ``W_O (W_U W_E) W_V``, so only a ``d_model x d_model`` product touches the
    vocabulary. Raw embeddings are used (no LayerNorm, no MLP0), as in the paper.
    A head whose OV circuit is (numerically) zero scores 0.

    Returns:
        ``[layer, head]`` float64 tensor on the CPU.
    """
    w_e = getattr(model, "W_E", None)
    w_u = getattr(model, "W_U", None)
    if w_e is None or w_u is None:
        raise UnsupportedModelError(f"{type(model).__name__} exposes no W_E/W_U; copying scores need them.")
    info = model_info(model)
    out = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
    with torch.no_grad():
        ue = w_u.detach().float() @ w_e.detach().float()  # [d_model, d_model]
        for layer in range(info.n_layers):  # one layer at a time keeps the peak small
            w_v = head_weights(model, "V", layer).float().to(ue.device)  # [head, d_model, d_head]
            w_o = head_weights(model, "O", layer).float().to(ue.device)  # [head, d_head, d_model]
            small = ((w_o @ ue) @ w_v).double()  # [head, d_head, d_head]
            eig = torch.linalg.eigvals(small)
            total = eig.abs().sum(-1)
            scale = small.abs().amax(dim=(-1, -2)) * small.shape[-1]
            flat = total <= 1e-9 * scale.clamp_min(1e-300)  # a (numerically) zero OV circuit
            ratio = eig.sum(-1).real / total.clamp_min(1e-300)
            out[layer] = torch.where(flat, torch.zeros_like(ratio), ratio).cpu()
    return out
