"""Hugging Face tokenizers built offline (a word-level one, and byte-level BPE, SentencePiece-style
and WordPiece ones trained on the shipped text), saved, and loaded back like hub ones."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bpe_tokenizer", "sentencepiece_tokenizer", "word_tokenizer", "wordpiece_tokenizer"]


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
        _save_once(tok, directory)
    return AutoTokenizer.from_pretrained(str(directory))


# -- subword tokenizers trained offline on the shipped text -----------------------------------

#: bump when the training recipe changes, so cached tokenizers of an older recipe are not reused
_RECIPE = 2


def bpe_tokenizer(vocab_size: int = 512, *, directory: str | os.PathLike[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (GPT-2 convention: a leading ``"Ġ"`` marks a space) trained on
    headzoo's shipped English text.

    Special token: ``<|endoftext|>`` (id 0), used as BOS, EOS and pad, as GPT-2 does. The 256
    byte symbols are always in the vocabulary, so ``vocab_size`` must be at least 300.

    Args:
        vocab_size: target vocabulary size (special token included). Training stops earlier if
            the text runs out of merges; ``len(tokenizer)`` is the size you get.
        directory: where to save it; by default a folder under the system temp directory named
            by a hash of the kind, size, text and ``tokenizers`` version, reused across calls.

    Returns:
        A ``PreTrainedTokenizerFast`` loaded back with ``AutoTokenizer.from_pretrained``.
        Training is deterministic: the same arguments give the same vocabulary.
    """
    return _subword_tokenizer("bpe", vocab_size, directory, minimum=300)


def sentencepiece_tokenizer(vocab_size: int = 512, *, directory: str | os.PathLike[str] | None = None) -> Any:
    """A SentencePiece-style BPE tokenizer (Llama convention: ``"▁"`` replaces the space before
    a word, and the first word of a text gets one too) trained on headzoo's shipped text.

    Special tokens: ``<unk>`` (0), ``<s>`` (1, BOS), ``</s>`` (2, EOS and pad). Characters of the
    text form the base alphabet, so ``vocab_size`` must be at least 150.

    Args and returns as :func:`bpe_tokenizer`.
    """
    return _subword_tokenizer("sentencepiece", vocab_size, directory, minimum=150)


def wordpiece_tokenizer(vocab_size: int = 512, *, directory: str | os.PathLike[str] | None = None) -> Any:
    """A WordPiece tokenizer (BERT convention: ``"##"`` marks a piece that continues a word;
    punctuation is split off; text is lower-cased) trained on headzoo's shipped text.

    Special tokens: ``[PAD]`` (0), ``[UNK]`` (1), ``[CLS]`` (2, used as BOS), ``[SEP]`` (3, EOS),
    ``[MASK]`` (4). Characters of the text and their ``##`` forms make the base alphabet, so
    ``vocab_size`` must be at least 200.

    Args and returns as :func:`bpe_tokenizer`.
    """
    return _subword_tokenizer("wordpiece", vocab_size, directory, minimum=200)


def _save_once(tok: Any, directory: Path) -> None:
    """Save ``tok`` to ``directory`` atomically: into a staging folder, then renamed, so a
    concurrent build never sees half a tokenizer (the loser of a race keeps the winner's copy,
    which is identical)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent))
    tok.save_pretrained(staging)
    try:
        staging.rename(directory)
    except OSError:
        pass


def _shipped_text() -> str:
    import importlib.resources

    return importlib.resources.files("headzoo").joinpath("_data/text/shipped.txt").read_text(encoding="utf-8")


def _subword_tokenizer(kind: str, vocab_size: int, directory: str | os.PathLike[str] | None, *, minimum: int) -> Any:
    import tokenizers
    from transformers import AutoTokenizer

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"{kind}_tokenizer: vocab_size must be an integer >= {minimum}; got {vocab_size!r}")
    text = _shipped_text()
    if directory is None:
        key = json.dumps([_RECIPE, kind, vocab_size, hashlib.sha256(text.encode()).hexdigest(), tokenizers.__version__])
        directory = Path(tempfile.gettempdir()) / "headzoo-tokenizers" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        tok = _train(kind, vocab_size, text)
        _save_once(tok, directory)
    return AutoTokenizer.from_pretrained(str(directory))


def _train(kind: str, vocab_size: int, text: str) -> Any:
    """Train a ``kind`` tokenizer on ``text`` (one paragraph per training line)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # one training line per paragraph (blocks between blank lines, line breaks kept), as
    # headzoo._vocab.encode_corpus tokenises a corpus, so a line break is an ordinary symbol
    lines = [b for b in re.split(r"(?<=\n)(?=\n)", text) if b.strip()]
    if kind == "bpe":
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        core.train_from_iterator(lines, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        )
    if kind == "sentencepiece":
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
        core.train_from_iterator(lines, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        )
    # WordPieceTrainer breaks ties between equally frequent merges in hash-map order, so two runs
    # can differ. Plain BPE training is deterministic: train it on the same lower-cased, BERT-split
    # words with "▁" marking each word's first piece, then spell the vocabulary the WordPiece way
    # ("▁abc" -> "abc", a non-initial "abc" -> "##abc"), ids in merge order.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer = normalizer
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    pieces = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]) if t not in specials]
    chars = sorted({c for t in pieces for c in t.removeprefix("▁")})
    spelled = dict.fromkeys([*chars, *(f"##{c}" for c in chars)])  # every character, either side of a word
    for t in pieces:
        if t != "▁":
            spelled[t[1:] if t.startswith("▁") else f"##{t}"] = None
    words = list(spelled)[: max(vocab_size - len(specials), 2 * len(chars))]  # the latest merges go first
    core = Tokenizer(models.WordPiece({w: i for i, w in enumerate([*specials, *words])}, unk_token="[UNK]"))
    core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", core.token_to_id("[CLS]")), ("[SEP]", core.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]", cls_token="[CLS]",
        unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
    )
