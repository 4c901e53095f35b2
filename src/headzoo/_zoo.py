"""Models headzoo can hand out: the bundled zoo (offline) and Hugging Face models by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from headzoo._backends import Backend
from headzoo._errors import ModelNotFoundError, did_you_mean

__all__ = ["load_model", "list_models", "DEFAULT_MODEL"]

DEFAULT_MODEL = "zoo-small"


@dataclass(frozen=True)
class _ZooEntry:
    name: str
    description: str
    build: Callable[..., Any]


def _demo_words() -> tuple[list[str], tuple[tuple[int, ...], ...]]:
    """The demo vocabulary (256 words) and the id sequences its successor head advances."""
    from headzoo._ordinal import ORDINAL_LISTS

    chained = ["days", "months", "number_words", "ordinals", "letters"]
    words: list[str] = []
    for name in chained:
        words += [w for w in ORDINAL_LISTS[name][0] if w not in words]
    words += [f"tok{i}" for i in range(256 - len(words))]
    first = 2  # ids 0 and 1 are <bos> and <unk>
    seqs = tuple(tuple(first + words.index(w) for w in ORDINAL_LISTS[name][0]) for name in chained)
    return words, seqs


def _planted_demo(backend: Backend, device: Any, dtype: Any) -> Any:
    from headzoo.testing import PlantSpec, planted_model, word_tokenizer

    words, seqs = _demo_words()
    spec = PlantSpec(
        n_layers=3, n_heads=4, d_head=32, d_vocab=258, n_ctx=128,
        previous_token=(0, 2), duplicate_token=(1, 1), induction=(2, 3),
        successor=(1, 3), copy_suppression=(2, 0), successor_sequences=seqs, seed=2026,
    )
    return planted_model(
        spec, backend=backend, tokenizer=word_tokenizer(words), device=device, dtype=dtype, name="planted-demo"
    )


def _bundled(name: str) -> Callable[..., Any]:
    def build(backend: Backend, device: Any, dtype: Any) -> Any:
        import importlib.resources

        from headzoo._checkpoint import load_checkpoint

        folder = importlib.resources.files("headzoo").joinpath(f"_data/zoo/{name}")
        return load_checkpoint(str(folder), backend=backend, device=device, dtype=dtype, name=name)

    return build


_ZOO: dict[str, _ZooEntry] = {
    "zoo-small": _ZooEntry(
        "zoo-small",
        "4 layers x 4 heads, d_model 128, with MLPs; trained here (20 min on 2 CPU cores) on headzoo's synthetic "
        "curriculum: induction L3H3, retrieval L3H3/L3H2, previous-token L2H0 (experiments/train_zoo.py).",
        _bundled("zoo-small"),
    ),
    "planted-demo": _ZooEntry(
        "planted-demo",
        "3 layers x 4 heads, weights constructed by hand: previous-token L0H2, duplicate-token "
        "L1H1, induction L2H3 (K-composition with L0H2, a copying OV circuit), successor L1H3 "
        "(days, months, number words, ordinals, letters), copy-suppression L2H0; word tokenizer of 256 words "
        "(ordinal words, letters, tok0...).",
        _planted_demo,
    ),
}


def list_models() -> pd.DataFrame:
    """The bundled models: ``name, description, default``."""
    return pd.DataFrame(
        [{"name": e.name, "description": e.description, "default": e.name == DEFAULT_MODEL} for e in _ZOO.values()]
    )


def load_model(
    name: str | None = None,
    *,
    backend: Backend = "bridge",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """A ready model: the bundled default, a zoo model by short name, or a Hugging Face model.

    Args:
        name: ``None`` for the default bundled model (offline); a name from
            :func:`list_models` (offline); otherwise a Hugging Face model id or local directory,
            loaded with ``TransformerBridge.boot_transformers`` (or
            ``HookedTransformer.from_pretrained`` for ``backend="hooked"``), which needs the hub
            or a local cache.
        backend: ``"bridge"`` (TransformerBridge) or ``"hooked"`` (HookedTransformer, 3.x only).

    Raises:
        ModelNotFoundError: the name is not bundled and could not be loaded from the hub/cache.
    """
    name = DEFAULT_MODEL if name is None else name
    if name in _ZOO:
        return _ZOO[name].build(backend, device, dtype)
    try:
        if backend == "hooked":
            from headzoo._backends import available_backends

            if "hooked" not in available_backends():
                from headzoo._errors import UnsupportedModelError

                raise UnsupportedModelError("backend='hooked' needs transformer-lens<4; use backend='bridge'.")
            from transformer_lens import HookedTransformer

            kwargs = {"device": device} if device is not None else {}
            model = HookedTransformer.from_pretrained(name, dtype=dtype or torch.float32, **kwargs)
        else:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        if isinstance(exc, ImportError) and "hooked" not in str(exc):
            raise
        raise ModelNotFoundError(
            f"{name!r} is not a bundled model{did_you_mean(name, _ZOO)} and could not be loaded "
            f"from the Hugging Face hub or a local cache/path ({type(exc).__name__}: {exc}). "
            f"Bundled models: {', '.join(_ZOO)}. For hub models, connect to the hub once or "
            "point HF_HOME at a cache that has the model."
        ) from exc
    model.eval()
    return model
