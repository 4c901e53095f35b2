"""Build a TransformerLens model of either class from one canonical state dict.

The canonical format is HookedTransformer's parameter naming (``blocks.0.attn.W_Q`` as
``[head, d_model, d_head]`` and so on). ``HookedTransformer`` loads it as it is;
``TransformerBridge.boot_native`` models store ``nn.Linear`` weights, so the same numbers are
reshaped into that layout. Planted test models and the shipped zoo go through here, which is
what makes "same weights, either class" a one-line switch.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import torch

from headzoo._errors import InvalidOptionError, UnsupportedModelError

__all__ = ["Backend", "available_backends", "check_backend", "build_model", "from_bridge_state_dict", "to_bridge_state_dict"]

Backend = Literal["bridge", "hooked"]

_CONFIG_KEYS = (
    "n_layers",
    "d_model",
    "n_ctx",
    "d_head",
    "n_heads",
    "d_vocab",
    "d_mlp",
    "act_fn",
    "normalization_type",
    "attn_only",
    "positional_embedding_type",
    "n_key_value_heads",
    "default_prepend_bos",
)


def available_backends() -> tuple[Backend, ...]:
    """The model classes the installed TransformerLens offers (``hooked`` only on 3.x)."""
    tl = importlib.import_module("transformer_lens")
    try:
        has_hooked = hasattr(tl, "HookedTransformer")
    except ImportError:  # TransformerLens 4.x raises a migration pointer instead
        has_hooked = False
    return ("bridge", "hooked") if has_hooked else ("bridge",)


def check_backend(backend: object) -> None:
    """Refuse an unknown backend (:class:`InvalidOptionError`) or one this TransformerLens lacks
    (:class:`UnsupportedModelError`)."""
    if backend not in ("bridge", "hooked"):
        raise InvalidOptionError(f"backend={backend!r} is not one of 'bridge' (TransformerBridge) or 'hooked' (HookedTransformer).")
    if backend not in available_backends():
        raise UnsupportedModelError(
            "backend='hooked' needs HookedTransformer, which TransformerLens 4.x removed. "
            "Use backend='bridge', or install transformer-lens<4."
        )


def to_bridge_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Convert canonical (HookedTransformer) parameters to ``boot_native`` bridge keys."""
    h, dh, d = config["n_heads"], config["d_head"], config["d_model"]
    out: dict[str, torch.Tensor] = {}
    renames = {"embed.W_E": "embed.weight", "pos_embed.W_pos": "pos_embed.weight"}
    for key, value in state_dict.items():
        if key in renames:
            out[renames[key]] = value
        elif key == "unembed.W_U":
            out["unembed.weight"] = value.T.contiguous()
        elif key == "unembed.b_U":
            out["unembed.bias"] = value
        elif key.endswith((".w", ".b")) and (".ln" in key or key.startswith("ln_final.")):
            out[key[:-2] + (".weight" if key.endswith(".w") else ".bias")] = value
        elif ".attn." in key:
            prefix, name = key.rsplit(".", 1)
            letter = name.lstrip("_")[-1]
            if name.lstrip("_").startswith("W_") and letter in "QKV":
                n = value.shape[0]
                out[f"{prefix}.{letter.lower()}.weight"] = (
                    value.permute(0, 2, 1).reshape(n * dh, d).contiguous()
                )
            elif name.lstrip("_").startswith("b_") and letter in "QKV":
                out[f"{prefix}.{letter.lower()}.bias"] = value.reshape(-1).contiguous()
            elif name == "W_O":
                out[f"{prefix}.o.weight"] = value.reshape(h * dh, d).T.contiguous()
            elif name == "b_O":
                out[f"{prefix}.o.bias"] = value
        elif ".mlp." in key:
            prefix, name = key.rsplit(".", 1)
            target = {"W_in": "in.weight", "b_in": "in.bias", "W_out": "out.weight", "b_out": "out.bias"}
            if name in target:
                out[f"{prefix}.{target[name]}"] = value.T.contiguous() if name.startswith("W") else value
    return out


def from_bridge_state_dict(
    bridge_state: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_bridge_state_dict`: ``boot_native`` keys to canonical names."""
    h, dh, d = config["n_heads"], config["d_head"], config["d_model"]
    out: dict[str, torch.Tensor] = {}
    for key, value in bridge_state.items():
        value = value.detach().cpu()
        if key == "embed.weight":
            out["embed.W_E"] = value
        elif key == "pos_embed.weight":
            out["pos_embed.W_pos"] = value
        elif key == "unembed.weight":
            out["unembed.W_U"] = value.T.contiguous()
        elif key == "unembed.bias":
            out["unembed.b_U"] = value
        elif key.endswith((".weight", ".bias")) and (".ln" in key or key.startswith("ln_final.")):
            out[key.rsplit(".", 1)[0] + (".w" if key.endswith(".weight") else ".b")] = value
        elif ".attn." in key:
            prefix, letter, kind = key.rsplit(".", 2)
            if letter in ("q", "k", "v"):
                n = value.shape[0] // dh
                if kind == "weight":
                    out[f"{prefix}.W_{letter.upper()}"] = value.reshape(n, dh, d).permute(0, 2, 1).contiguous()
                else:
                    out[f"{prefix}.b_{letter.upper()}"] = value.reshape(n, dh).contiguous()
            elif letter == "o":
                if kind == "weight":
                    out[f"{prefix}.W_O"] = value.T.reshape(h, dh, d).contiguous()
                else:
                    out[f"{prefix}.b_O"] = value
        elif ".mlp." in key:
            prefix, which, kind = key.rsplit(".", 2)
            name = {("in", "weight"): "W_in", ("in", "bias"): "b_in", ("out", "weight"): "W_out", ("out", "bias"): "b_out"}.get((which, kind))
            if name is not None:
                out[f"{prefix}.{name}"] = value.T.contiguous() if name.startswith("W") else value
    return out


def build_model(
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    backend: Backend = "bridge",
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
) -> Any:
    """Instantiate ``config`` as the chosen class and load ``state_dict`` (canonical names).

    Args:
        config: HookedTransformerConfig-style fields (n_layers, d_model, ...).
        state_dict: canonical parameters; every parameter of the model must be present.
        backend: ``"bridge"`` (TransformerBridge.boot_native, TransformerLens 3.x and 4.x) or
            ``"hooked"`` (HookedTransformer, TransformerLens 3.x only).
        tokenizer: optional Hugging Face tokenizer.
        name: the model name recorded in its config (and in every result's metadata).
    """
    cfg = {k: config[k] for k in _CONFIG_KEYS if k in config}
    check_backend(backend)
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        extra = {"model_name": name} if name else {}
        # TransformerLens 4.x stubs resolve this removed name to TransformerBridge; it runs only on 3.x
        model = HookedTransformer(HookedTransformerConfig(**cfg, **extra), tokenizer=tokenizer)  # pyright: ignore[reportCallIssue, reportArgumentType]
        result = model.load_state_dict(state_dict, strict=False)
        # Only the causal-mask buffers may be left to their defaults.
        missing = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
        if missing or result.unexpected_keys:
            raise UnsupportedModelError(
                f"state dict does not fit the config: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
    else:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        # boot_native is attached with setattr by transformer_lens.model_bridge.sources.native
        model = TransformerBridge.boot_native(  # pyright: ignore[reportAttributeAccessIssue]
            TransformerBridgeConfig(**cfg), tokenizer=tokenizer, model_name=name or "native"
        )
        model.load_state_dict(to_bridge_state_dict(state_dict, cfg), strict=True)
    if device is not None:
        model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model
