"""headzoo checkpoints: safetensors weights, a JSON config and a Hugging Face tokenizer.

A checkpoint folder holds ``model.safetensors`` (TransformerLens' canonical parameter names),
``config.json`` (``format``, the architecture, the weights' SHA-256, how it was trained) and the
tokenizer files. Loading never unpickles anything: safetensors is plain tensors, the config is
JSON, and the weights' hash is checked before they are read, so a damaged or foreign folder is
refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast

import torch

from headzoo._backends import Backend, build_model
from headzoo._errors import HeadzooError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT"]

FORMAT = "headzoo.checkpoint/1"
_ARCH = {"n_layers": int, "d_model": int, "n_heads": int, "d_head": int, "d_mlp": int, "n_ctx": int, "d_vocab": int,
         "act_fn": str, "normalization_type": str, "positional_embedding_type": str}


class CheckpointError(HeadzooError, ValueError):
    """A checkpoint folder that is damaged, incomplete, or not a headzoo checkpoint."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(directory: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                    tokenizer: Any, **info: Any) -> Path:
    """Write a checkpoint folder (weights, config with their hash and ``info``, tokenizer)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in sorted(state_dict.items())}, out / "model.safetensors")
    tokenizer.save_pretrained(out)
    meta = {"format": FORMAT, "architecture": config, "sha256": _sha256(out / "model.safetensors"), **info}
    (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_checkpoint(directory: str | os.PathLike[str], *, backend: Backend = "bridge", device: Any = None,
                    dtype: Any = None, name: str | None = None) -> Any:
    """Load a checkpoint folder into the chosen model class, offline.

    Raises:
        CheckpointError: the folder lacks a file, its config is not a headzoo checkpoint's, the
            weights do not match their recorded hash, or they do not fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(directory)
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a complete headzoo checkpoint: it lacks {missing}")
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder} is not a headzoo checkpoint (config.json format {meta.get('format') if isinstance(meta, dict) else None!r}, "
            f"expected {FORMAT!r}); load Hugging Face models with hz.load_model('<hub id or path>')"
        )
    arch = meta.get("architecture")
    bad = [k for k, t in _ARCH.items() if not isinstance(arch, dict) or not isinstance(arch.get(k), t)]
    if bad:
        raise CheckpointError(f"{folder / 'config.json'} has no valid architecture fields {bad}")
    arch = cast("dict[str, Any]", arch)  # `bad` is empty, so arch is a dict with every field
    digest = _sha256(folder / "model.safetensors")
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"{folder / 'model.safetensors'} does not match the hash in its config.json "
            f"({digest[:12]} != {str(meta.get('sha256'))[:12]}): the weights are damaged or were replaced"
        )
    try:
        state = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder / 'model.safetensors'} cannot be read: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != arch["d_vocab"]:
        raise CheckpointError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {arch['d_vocab']}")
    try:
        return build_model(arch, state, backend=backend, tokenizer=tokenizer, device=device, dtype=dtype,
                           name=name or meta.get("name", folder.name))
    except (RuntimeError, HeadzooError) as exc:
        if isinstance(exc, HeadzooError) and "HookedTransformer" in str(exc):
            raise
        raise CheckpointError(f"the weights in {folder} do not fit its architecture: {exc}") from None
