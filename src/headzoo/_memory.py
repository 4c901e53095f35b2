"""The memory model of an atlas: what each detector kind holds at its peak.

Beyond the model's own weights, a detector's memory is dominated by one tensor family per kind,
so its peak is a closed formula in the model's shape (layers ``L``, heads ``H``, ``d_model``
``D``, ``d_head``, ``d_mlp`` ``M``, vocabulary ``V``), the batch ``B``, the context ``C`` and
the bytes per element ``s`` of the model's dtype. :func:`peak_bytes` evaluates it and
:func:`memory_plan` tabulates it per detector; both run on a config or a ``meta``-device model
(no weights), so a plan for a model that does not fit anywhere here costs nothing.

- ``pattern``: the runner's hook reads one layer's pattern ``[B, H, C, C]`` at a time; that
  layer's attention holds its scores and pattern together, and the scorer a float32 copy:
  ``(2 s + 4) B H C^2``, plus the running activations ``s B C (2 D + M)``. Nothing else is kept
  across layers (per-head scores are ``[B, H]``).
- ``weights``: never ``V x V``. The vocabulary pass works in column blocks whose logits
  ``[H, n, block]`` fit ``chunk_bytes`` (24 MiB), on one layer's float32 weights at a time
  (``4 * 4 H D d_head``) and the block's readout ``4 D block``; the copying score multiplies
  ``W_U W_E`` once: float32 copies of both (``4 * 2 V D``) and ``4 D^2``. The larger of the two.
- ``decoding``, ``causal``, ``in_context``: forward passes with patching or generation: float32
  logits ``4 B C V`` (an upper bound: the kernel unembeds only the positions read), one
  activation per layer kept for patching ``s L B C D``, and one attention layer ``2 s B H C^2``.

The model's weights (``s`` times its parameter count, split across devices by a device map) come
on top; the formulas are per device only for a model on one device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch

from headzoo._errors import InvalidOptionError
from headzoo._models import ModelInfo

__all__ = ["Shape", "peak_bytes", "largest_elements", "memory_plan", "KINDS"]

#: the detector kinds the memory model knows, with the formula each follows
KINDS: dict[str, str] = {
    "pattern": "(2s+4)*B*H*C^2 + s*B*C*(2D+M)",
    "weights": "max(4*(2*V*D + D^2), chunk + 4*D*block + 16*H*D*d_head), block = chunk // (4*H*max(n, d_head))",
    "decoding": "4*B*C*V + s*L*B*C*D + 2s*B*H*C^2",
    "causal": "4*B*C*V + s*L*B*C*D + 2s*B*H*C^2",
    "in_context": "4*B*C*V + s*L*B*C*D + 2s*B*H*C^2",
}

#: the weight detectors' logit block budget (``WeightCircuits.chunk_bytes``'s default)
CHUNK_BYTES = 24 * 2**20
_DEFAULT_BATCH = 4  # the probes' batch size (RepeatedTokens.batch_size)
_DEFAULT_SAMPLE = 512  # WeightDetector.n_tokens


@dataclasses.dataclass(frozen=True)
class Shape:
    """The dimensions the memory model reads (from a model, its config or a ``ModelInfo``)."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    dtype: torch.dtype

    @classmethod
    def of(cls, obj: Any, dtype: torch.dtype | str | None = None) -> Shape:
        """The shape of a model (``meta`` too), a TransformerLens config, a dict of its fields
        or a :class:`ModelInfo`; ``dtype`` overrides the one recorded there."""
        cfg = getattr(obj, "cfg", obj)

        def get(key: str, default: Any = None) -> Any:
            return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)

        missing = [k for k in ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab") if get(k) is None]
        if missing:
            raise InvalidOptionError(
                f"memory_plan needs a model, a TransformerLens config or a dict with n_layers, n_heads, d_model, "
                f"d_head, n_ctx and d_vocab; {type(obj).__name__} lacks {', '.join(missing)}."
            )
        d_model = int(get("d_model"))
        attn_only = bool(get("attn_only", False))
        d_mlp = 0 if attn_only else int(get("d_mlp", None) or 4 * d_model)
        recorded = obj.dtype if isinstance(obj, ModelInfo) else get("dtype", None)
        return cls(
            n_layers=int(get("n_layers")), n_heads=int(get("n_heads")), d_model=d_model, d_head=int(get("d_head")),
            d_mlp=d_mlp, n_ctx=int(get("n_ctx")), d_vocab=int(get("d_vocab")),
            dtype=_dtype(dtype if dtype is not None else recorded),
        )


def _dtype(dtype: object) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        found = getattr(torch, dtype.strip().removeprefix("torch."), None)
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
    raise InvalidOptionError(f"dtype={dtype!r} is not a floating-point torch dtype (e.g. torch.bfloat16 or 'float32').")


def _kind(detector: Any) -> str:
    if isinstance(detector, str):
        if detector in KINDS:
            return detector
        from headzoo._registry import detector_class

        return str(detector_class(detector).kind)
    kind = getattr(detector, "kind", None)
    if kind not in KINDS:
        raise InvalidOptionError(f"no memory model for detector kind {kind!r}; known kinds: {sorted(KINDS)}.")
    return str(kind)


def _estimate(shape: Shape, kind: str, batch: int, n_ctx: int, n_sample: int = _DEFAULT_SAMPLE) -> tuple[int, int, str]:
    """``(peak bytes, largest tensor's elements, chunk)`` for one detector kind."""
    s = shape.dtype.itemsize
    B, C, H, D, L, V = batch, n_ctx, shape.n_heads, shape.d_model, shape.n_layers, shape.d_vocab
    if kind == "pattern":
        largest = B * H * C * C
        return (2 * s + 4) * largest + s * B * C * (2 * D + shape.d_mlp), largest, f"batch {B}, one layer"
    if kind == "weights":
        block = max(1, min(V, CHUNK_BYTES // (4 * H * max(n_sample, shape.d_head))))
        chunked = CHUNK_BYTES + 4 * D * block + 16 * H * D * shape.d_head
        copying = 4 * (2 * V * D + D * D)
        return max(chunked, copying), V * D, f"vocab blocks of {block} columns"
    largest = max(B * C * V, L * B * C * D, B * H * C * C)
    return 4 * B * C * V + s * L * B * C * D + 2 * s * B * H * C * C, largest, f"batch {B}"


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{name} must be a positive int; got {value!r}.")
    return value


def peak_bytes(info: Any, detector: Any, *, batch: int, n_ctx: int, dtype: torch.dtype | str | None = None) -> int:
    """Peak bytes (beyond the weights) one detector holds on a model of ``info``'s shape.

    Args:
        info: a :class:`ModelInfo`, a model (``meta`` too), a TransformerLens config or a dict.
        detector: a registered name, a detector, or a kind (``"pattern"``, ``"weights"``, ...).
        batch: prompts per forward pass ``B``; n_ctx: tokens per prompt ``C``.
        dtype: the model's dtype (default: the one ``info`` records, else float32).
    """
    shape = Shape.of(info, dtype)
    kind = _kind(detector)
    n_sample = int(getattr(detector, "n_tokens", _DEFAULT_SAMPLE)) if not isinstance(detector, str) else _DEFAULT_SAMPLE
    return _estimate(shape, kind, _check_positive(batch, "batch"), _check_positive(n_ctx, "n_ctx"), n_sample)[0]


def largest_elements(info: Any, detector: Any, *, batch: int, n_ctx: int) -> int:
    """Elements of the largest tensor the memory model says ``detector`` holds (for a pattern
    detector: the ``[B, H, C, C]`` pattern its hook receives)."""
    shape = Shape.of(info)
    return _estimate(shape, _kind(detector), _check_positive(batch, "batch"), _check_positive(n_ctx, "n_ctx"))[1]


def memory_plan(
    model_or_cfg: Any,
    detectors: str | Iterable[Any] | None = None,
    *,
    batch_size: int | None = None,
    n_ctx: int | None = None,
    dtype: torch.dtype | str | None = None,
) -> pd.DataFrame:
    """Each detector's peak memory on a model of this shape, without running anything.

    Works on a ``meta``-device model or a bare config, so a plan for a model too large for
    this machine is free. See the module docstring (and ``docs/large-models.md``) for the
    formulas; the model's own weights come on top.

    Args:
        model_or_cfg: a model, a TransformerLens config or a dict of its dimensions.
        detectors: names or detectors, or ``None`` for every registered one.
        batch_size: prompts per forward pass (default 4, the probes' default).
        n_ctx: tokens per prompt (default: the model's context, an upper bound).
        dtype: the dtype to plan for (default: the model's, else float32).

    Returns:
        DataFrame with columns ``detector, kind, peak_bytes, formula, chunk``, one row per detector.
    """
    from headzoo._registry import get_detector, registered_names

    shape = Shape.of(model_or_cfg, dtype)
    batch = _check_positive(batch_size if batch_size is not None else _DEFAULT_BATCH, "batch_size")
    ctx = _check_positive(n_ctx if n_ctx is not None else shape.n_ctx, "n_ctx")
    if detectors is None:
        chosen: list[Any] = list(registered_names())
    elif isinstance(detectors, str):
        chosen = [detectors]
    else:
        chosen = list(detectors)
    rows = []
    for det in chosen:
        obj = get_detector(det) if isinstance(det, str) else det
        kind = _kind(obj)
        n_sample = int(getattr(obj, "n_tokens", _DEFAULT_SAMPLE))
        peak, _, chunk = _estimate(shape, kind, batch, ctx, n_sample)
        rows.append({"detector": str(getattr(obj, "name", det)), "kind": kind, "peak_bytes": int(peak),
                     "formula": KINDS[kind], "chunk": chunk})
    return pd.DataFrame(rows, columns=["detector", "kind", "peak_bytes", "formula", "chunk"])
