"""What headzoo needs from a model, typed as a structural protocol.

headzoo works with any TransformerLens model: ``HookedTransformer`` (TransformerLens 3.x) and
``TransformerBridge`` (3.x and 4.x, ``boot_native`` models included). Nothing here names a
concrete class; the protocol and :func:`model_info` describe and check the surface we use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from headzoo._errors import UnsupportedModelError

__all__ = [
    "TransformerLensModel",
    "ModelInfo",
    "model_info",
    "pattern_hook",
    "head_weights",
    "library_versions",
]


@runtime_checkable
class TransformerLensModel(Protocol):
    """The surface of a TransformerLens model that headzoo relies on.

    Both ``HookedTransformer`` and ``TransformerBridge`` satisfy it structurally.
    """

    @property
    def cfg(self) -> Any: ...

    @property
    def hook_dict(self) -> dict[str, Any]: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> Any: ...


def pattern_hook(layer: int) -> str:
    """Name of the hook holding layer ``layer``'s attention pattern ``[batch, head, query, key]``."""
    return f"blocks.{layer}.attn.hook_pattern"


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model that probes, detectors and results need.

    Attributes:
        n_layers, n_heads, d_model, d_head, n_ctx, d_vocab: as in the model's config.
        n_kv_heads: key/value heads (equals ``n_heads`` unless grouped-query attention).
        prepend_bos: whether the model's own tokenisation prepends a BOS token.
        bos_token_id: the BOS id when the model has a tokenizer with one, else ``None``.
        special_token_ids: ids a probe must never sample (tokenizer specials).
        n_real_tokens: ids ``>= n_real_tokens`` are padding rows of the embedding, never sampled.
        model_class: the class name, for metadata only.
        name: the model's name when its config records one.
        device, dtype: where and in what precision the weights live.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    d_vocab: int
    prepend_bos: bool
    bos_token_id: int | None
    special_token_ids: tuple[int, ...]
    n_real_tokens: int
    model_class: str
    name: str
    device: str
    dtype: str

    def config_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the architecture (for result metadata)."""
        return asdict(self)

    def config_hash(self) -> str:
        """Short stable hash of the architecture, excluding device and dtype."""
        d = self.config_dict()
        d.pop("device")
        d.pop("dtype")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_REQUIRED_CFG = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab")


def model_info(model: Any) -> ModelInfo:
    """Describe ``model`` and check that headzoo can read its attention patterns.

    Raises:
        UnsupportedModelError: the object is not a TransformerLens model, or its attention
            patterns are not exposed as ``blocks.{layer}.attn.hook_pattern`` hooks.
    """
    if isinstance(model, type):
        raise UnsupportedModelError(
            f"Got the class {model.__name__}, not a model. Pass an instance, "
            "for example hz.load_model() or TransformerBridge.boot_native(cfg)."
        )
    cfg = getattr(model, "cfg", None)
    missing = [f for f in _REQUIRED_CFG if getattr(cfg, f, None) is None]
    if cfg is None or missing:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a TransformerLens model: it has no `cfg` with "
            f"{', '.join(missing or _REQUIRED_CFG)}. headzoo works with HookedTransformer and "
            "TransformerBridge; wrap a Hugging Face model with TransformerBridge.boot_transformers."
        )
    if not isinstance(model, TransformerLensModel):
        lacking = [
            m
            for m in ("hook_dict", "run_with_hooks", "run_with_cache", "to_tokens")
            if not hasattr(model, m)
        ]
        raise UnsupportedModelError(
            f"{type(model).__name__} lacks {', '.join(lacking)}, which headzoo needs to run "
            "hooks. Use a HookedTransformer or TransformerBridge."
        )
    hooks = model.hook_dict
    absent = [pattern_hook(layer) for layer in range(cfg.n_layers) if pattern_hook(layer) not in hooks]
    if absent:
        raise UnsupportedModelError(
            f"The attention patterns of this model cannot be read: it has no hook named "
            f"{absent[0]!r}" + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else "")
            + ". Pattern detectors need blocks.{layer}.attn.hook_pattern. For a "
            "TransformerBridge whose attention is fused (SDPA/flash), load it with eager "
            "attention or call enable_compatibility_mode()."
        )
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    specials: tuple[int, ...] = ()
    n_real = int(cfg.d_vocab)
    if tokenizer is not None:
        specials = tuple(sorted(int(i) for i in getattr(tokenizer, "all_special_ids", []) or []))
        try:
            n_real = min(n_real, len(tokenizer))
        except TypeError:
            pass
    prepend = bool(getattr(cfg, "default_prepend_bos", True)) and bos is not None
    try:
        param = next(iter(model.parameters()))  # type: ignore[attr-defined]
        device, dtype = str(param.device), str(param.dtype).removeprefix("torch.")
    except (AttributeError, StopIteration):
        device, dtype = str(getattr(cfg, "device", "cpu")), str(getattr(cfg, "dtype", "float32"))
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(cfg.d_vocab),
        prepend_bos=prepend,
        bos_token_id=None if bos is None else int(bos),
        special_token_ids=specials,
        n_real_tokens=n_real,
        model_class=type(model).__name__,
        name=str(getattr(cfg, "model_name", None) or type(model).__name__),
        device=device,
        dtype=dtype,
    )


WeightName = Literal["Q", "K", "V", "O"]


def head_weights(model: Any, which: WeightName, layer: int | None = None) -> torch.Tensor:
    """Per-query-head weights of one layer or stacked over all layers.

    Returns ``W_Q/W_K/W_V`` as ``[layer, head, d_model, d_head]`` and ``W_O`` as
    ``[layer, head, d_head, d_model]`` (without the leading ``layer`` axis when ``layer`` is
    given; that path reads only that layer's weights, keeping memory flat). For grouped-query
    models the key/value weights are expanded so query head ``h`` reads key-value head
    ``h // (n_heads // n_kv_heads)``.
    """
    n_heads = int(model.cfg.n_heads)  # not model_info(): this runs once per layer in loops
    w = None
    if layer is not None:
        blocks = getattr(model, "blocks", None)
        attn = getattr(blocks[layer], "attn", None) if blocks is not None else None
        w = getattr(attn, f"W_{which}", None)
    if w is None:
        w = getattr(model, f"W_{which}", None)
        if w is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} exposes no W_{which}; weight-based scores need "
                "TransformerLens' weight properties (W_Q, W_K, W_V, W_O, W_E, W_U)."
            )
        if layer is not None:
            w = w[layer]
    w = w.detach()
    head_axis = 0 if layer is not None else 1
    if which in ("K", "V") and w.shape[head_axis] != n_heads:
        w = w.repeat_interleave(n_heads // w.shape[head_axis], dim=head_axis)
    return w


def library_versions() -> dict[str, str]:
    """Versions of headzoo and the libraries whose behaviour a result depends on."""
    out = {}
    for dist in ("headzoo", "transformer-lens", "torch", "transformers", "pandas", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
