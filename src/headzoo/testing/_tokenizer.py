"""A word-level Hugging Face tokenizer built offline, saved, and loaded back like a hub one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["word_tokenizer"]


def word_tokenizer(
    words: Sequence[str],
    *,
    bos_token: str = "<bos>",
    unk_token: str = "<unk>",
    directory: str | os.PathLike[str] | None = None,
) -> Any:
    """A tokenizer whose ids are ``[bos_token, unk_token, *words]``, split on whitespace.

    It is saved in Hugging Face format and loaded back with ``AutoTokenizer.from_pretrained``,
    so a model built with it goes through the same tokenizer code path as a hub model
    (TransformerLens reloads tokenizers from their ``name_or_path``).

    Args:
        words: the vocabulary after the two special tokens; any strings without whitespace,
            including hostile ones such as ``"<script>"``.
        directory: where to save it. By default a folder under the system temp directory named
            by a hash of the vocabulary, reused across calls.

    Returns:
        A ``PreTrainedTokenizerFast``-compatible tokenizer with ``len(words) + 2`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab_list = [bos_token, unk_token, *words]
    if len(set(vocab_list)) != len(vocab_list):
        raise ValueError("word_tokenizer: words must be distinct and differ from the special tokens")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"word_tokenizer: words may not be empty or contain whitespace: {bad[:3]!r}")
    if directory is None:
        digest = hashlib.sha256(json.dumps(vocab_list).encode()).hexdigest()[:16]
        directory = Path(tempfile.gettempdir()) / "headzoo-tokenizers" / digest
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token=unk_token))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)  # joins tokens with spaces
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=bos_token, eos_token=bos_token, unk_token=unk_token,
            pad_token=bos_token,
        )
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent))
        tok.save_pretrained(staging)
        try:
            staging.rename(directory)
        except OSError:  # another process won the race; its copy is identical
            pass
    return AutoTokenizer.from_pretrained(str(directory))
