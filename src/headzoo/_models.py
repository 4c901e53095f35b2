"""What headzoo needs from a model, typed as a structural protocol.

headzoo works with any TransformerLens model: ``HookedTransformer`` (TransformerLens 3.x) and
``TransformerBridge`` (3.x and 4.x, ``boot_native`` models included). Nothing here names a
concrete class; the protocol and :func:`model_info` describe and check the surface we use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
from collections.abc import Iterator
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
    "model_weight",
    "has_weight",
    "materialized",
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
    blocks = getattr(model, "blocks", None)
    if layer is None and blocks is not None and _split(model):
        # A model split by a device map: stacking over layers would meet weights on several
        # devices (or offloaded to disk); read layer by layer onto the first layer's device.
        per_layer = [head_weights(model, which, i) for i in range(len(blocks))]
        return torch.stack([w.to(per_layer[0].device) for w in per_layer])
    if layer is not None and blocks is not None:
        attn = getattr(blocks[layer], "attn", None)
        if attn is not None:
            with materialized(blocks[layer]):
                w = getattr(attn, f"W_{which}", None)
                # a copy: the offloaded weight goes back to the meta device on leaving
                w = w.detach().clone() if w is not None and _offloaded(blocks[layer]) else w
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


def _offloaded(module: torch.nn.Module) -> bool:
    """Whether a device map offloaded some of ``module``'s weights (they sit on ``meta``)."""
    return any(p.device.type == "meta" for p in module.parameters())


def _split(model: Any) -> bool:
    """Whether ``model``'s weights live on more than one device (a device map, offloading)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return False
    return len({p.device for p in params()}) > 1


@contextlib.contextmanager
def materialized(module: Any) -> Iterator[None]:
    """Inside the block, ``module``'s weights offloaded by a device map are in memory.

    accelerate (which Hugging Face device maps use) keeps offloaded weights on the ``meta``
    device and loads them only inside each submodule's forward; reading ``W_Q``/``W_U`` outside
    a forward pass needs the same loading. One module at a time (a layer, the unembedding), so
    the whole model is never materialised at once. A no-op for ordinary models.
    """
    if not isinstance(module, torch.nn.Module) or not _offloaded(module):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for sub in module.modules():
            if has_offloaded_params(sub):
                stack.enter_context(align_module_device(sub))
        yield


def has_weight(model: Any, name: str) -> bool:
    """Whether ``model`` exposes the weight property ``name`` (``"W_Q"``, ``"W_U"``, ...),
    looked up on the class first: reading a stacked property would gather every layer's
    weights (and fail on those a device map offloaded)."""
    return getattr(type(model), name, None) is not None or getattr(model, name, None) is not None


_WEIGHT_OWNER = {"W_U": "unembed", "W_E": "embed", "W_pos": "pos_embed"}


def model_weight(model: Any, name: Literal["W_U", "W_E", "W_pos"]) -> torch.Tensor | None:
    """``model.W_U`` (``[d_model, d_vocab]``), ``W_E`` (``[d_vocab, d_model]``) or ``W_pos``,
    detached, also when a device map offloaded it; ``None`` when the model exposes none."""
    owner = getattr(model, _WEIGHT_OWNER[name], None)
    with materialized(owner):
        w = getattr(model, name, None)
        if w is None:
            return None
        return w.detach().clone() if isinstance(owner, torch.nn.Module) and _offloaded(owner) else w.detach()


def library_versions() -> dict[str, str]:
    """Versions of headzoo and the libraries whose behaviour a result depends on."""
    out = {}
    for dist in ("headzoo", "transformer-lens", "torch", "transformers", "pandas", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
