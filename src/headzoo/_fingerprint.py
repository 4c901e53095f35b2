"""A fingerprint of a model's weights (and tokenizer): what a cached result was computed from.

Two models of the same architecture share a config hash but not their scores, so anything that
reuses earlier work (the atlas' resume cache) keys it on the weights themselves. The fingerprint
is a SHA-256 over every entry of ``model.state_dict()`` sorted by name (name, dtype, shape and the
raw bytes, one tensor at a time, moved to the CPU one at a time, so nothing is concatenated or
copied wholesale) and over the tokenizer's identity: scores of text probes depend on it too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from headzoo._errors import UnsupportedModelError

__all__ = ["weights_fingerprint"]

#: hex digits kept: 64 bits is plenty to tell apart the models one cache ever sees
_DIGITS = 16
#: tensors are hashed in slices of at most this many bytes, so a CUDA tensor never needs more
#: than one slice of host memory at once
_CHUNK = 1 << 26


def weights_fingerprint(model: Any) -> str:
    """A stable hex digest of ``model``'s parameters, buffers and tokenizer.

    Equal for the same weights (in the same dtype) whatever their device or the order the
    state dict lists them in; different as soon as one value, shape, dtype or name differs, or
    the tokenizer's vocabulary does. Costs one read of the weights: about half a second for
    GPT-2 small (124M parameters, float32) on one CPU core.

    Raises:
        UnsupportedModelError: ``model`` has no ``state_dict()``, or a weight has no data to
            read (a ``meta``-device tensor: load the weights first).
    """
    state = getattr(model, "state_dict", None)
    if not callable(state):
        raise UnsupportedModelError(
            f"Cannot fingerprint a {type(model).__name__}: it has no state_dict(). Pass a TransformerLens model."
        )
    digest = hashlib.sha256(b"headzoo.weights/1\0")
    tensors: Mapping[str, Any] = model.state_dict()
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):  # extra state a module chose to save
            digest.update(f"{name}\0extra\0{_extra_state(tensor)}\0".encode())
            continue
        if tensor.is_meta:
            raise UnsupportedModelError(
                f"Cannot fingerprint the model: its weight {name!r} is on the 'meta' device and has no "
                "values. Load the weights (e.g. model.to_empty(...) and load_state_dict) first."
            )
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        _update_with_tensor(digest, tensor)
    digest.update(b"tokenizer\0" + _tokenizer_identity(getattr(model, "tokenizer", None)).encode())
    return digest.hexdigest()[:_DIGITS]


def _update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed the tensor's bytes, in row-major order, to ``digest`` a slice at a time."""
    flat = tensor.detach()
    if flat.layout != torch.strided:  # sparse weights: their dense values are what the model computes with
        flat = flat.to_dense()
    flat = flat.reshape(-1)
    if flat.numel() == 0:
        return
    step = max(1, _CHUNK // flat.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step].to("cpu").contiguous()
        # a byte view: works for every dtype (bfloat16 and float8 have no numpy equivalent)
        digest.update(part.view(torch.uint8).numpy().data)


def _extra_state(value: Any) -> str:
    """A module's non-tensor extra state as stable text: its JSON when it has one, else only its
    type (a ``repr`` may hold a memory address, which would change the fingerprint every run)."""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _tokenizer_identity(tokenizer: Any) -> str:
    """What the tokenizer maps text to and ids from: its size and a hash of its definition.

    A fast (``tokenizers``) tokenizer is hashed through its JSON definition (vocabulary, merges,
    normaliser, pre-tokeniser), canonicalised by sorting keys; any other through its vocabulary
    in id order. ``"none"`` when the model has no tokenizer.
    """
    if tokenizer is None:
        return "none"
    try:
        size = len(tokenizer)
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition: Any = None
    if backend is not None and callable(getattr(backend, "to_str", None)):
        definition = json.loads(backend.to_str())
    elif callable(getattr(tokenizer, "get_vocab", None)):
        vocab = tokenizer.get_vocab()
        definition = sorted(((int(i), str(t)) for t, i in vocab.items()))
    else:
        definition = type(tokenizer).__name__  # nothing readable: at least tell kinds apart
    specials = {
        key: getattr(tokenizer, key, None)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    }
    text = json.dumps({"size": size, "definition": definition, "specials": specials}, sort_keys=True,
                      ensure_ascii=False, default=str)
    return f"{size}:{hashlib.sha256(text.encode()).hexdigest()}"
