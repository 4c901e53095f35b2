"""What a model's tokenizer says about each token id: word pieces, separators, frequencies.

Subword tokenizers mark word boundaries in their vocabulary, each in its own way: byte-level
BPE (GPT-2) writes the space before a word as a leading ``"Ġ"``, SentencePiece (Llama, T5) as a
leading ``"▁"``, and WordPiece (BERT) marks the *other* side, a ``"##"`` on every piece that
continues a word. Read once per tokenizer, these conventions give per-id tables that the
tokenizer-aware detectors (``subword_merge``, ``delimiter``, ``rare_token``) and the text probe
share. The convention is read from the tokenizer's own machinery (model type, pre-tokenizer,
decoder, normaliser), falling back to marker counts in the vocabulary; never from a model name.

Token frequencies are counts of a corpus tokenised by the same tokenizer: the text shipped
with headzoo (``headzoo/_data/text/shipped.txt``, about 24 KB of English written for headzoo) or
a UTF-8 text file the user names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import re
import unicodedata
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int

from headzoo._errors import InvalidOptionError, UnsupportedTokenizerError

__all__ = [
    "Convention",
    "VocabTables",
    "vocab_tables",
    "detect_convention",
    "shipped_text",
    "corpus_text",
    "encode_corpus",
    "corpus_ids",
    "token_counts",
    "log_frequency",
    "rarity",
    "unknown_share",
    "describe_counts",
    "text_digest",
    "MAX_UNKNOWN_SHARE",
]

Convention = Literal["byte_bpe", "sentencepiece", "wordpiece", "word"]

#: marker of each convention: where a word's first piece carries the space (BPE, SentencePiece)
#: or where a continuing piece carries the prefix (WordPiece)
_MARKERS = {"byte_bpe": "Ġ", "sentencepiece": "▁", "wordpiece": "##"}
#: share of the vocabulary that must carry a marker for the fallback to trust it
_MIN_MARKED = 0.05
#: above this share of unknown tokens a tokenizer cannot spell a corpus
MAX_UNKNOWN_SHARE = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class VocabTables:
    """Per-id facts about a tokenizer's vocabulary, sized to the model's ``d_vocab``.

    Ids the tokenizer does not have (embedding rows beyond its vocabulary) are False
    everywhere. Special tokens (BOS, ``[SEP]``, ``[CLS]``, ``<unk>``, ...) are never word
    pieces or separators here: they are listed in ``special`` only.

    Attributes:
        convention: ``"byte_bpe"``, ``"sentencepiece"``, ``"wordpiece"`` or ``"word"`` (whole
            words: no piece continues another).
        continues: ``[vocab]`` the piece is marked as continuing the previous piece's word: in
            BPE and SentencePiece, no space marker and a letter or digit first; in WordPiece,
            the ``##`` prefix. Never True for ``"word"`` tokenizers.
        joinable: ``[vocab]`` a continuing piece may attach to this one: pieces holding a
            letter or digit, and a bare space marker (``"Ġ"``/``"▁"`` alone, the start of a
            word whose first letters come in the next piece).
        word_start: ``[vocab]`` the piece can begin a word: joinable and not continuing.
        punctuation: ``[vocab]`` separators: pieces that, once the convention's markers and
            whitespace are stripped, hold only Unicode punctuation (P*) or symbols (S*), and
            pieces of whitespace that hold a line break. A bare space is no separator.
        bare_space: ``[vocab]`` the space marker alone (``"Ġ"``, ``"▁"``): part of a word only
            when a continuing piece follows it.
        special: ``[vocab]`` the tokenizer's special tokens.
        n_tokenizer: ``len(tokenizer)``.
    """

    convention: Convention
    continues: Bool[torch.Tensor, " vocab"]
    joinable: Bool[torch.Tensor, " vocab"]
    word_start: Bool[torch.Tensor, " vocab"]
    punctuation: Bool[torch.Tensor, " vocab"]
    bare_space: Bool[torch.Tensor, " vocab"]
    special: Bool[torch.Tensor, " vocab"]
    n_tokenizer: int

    def continuation(self, tokens: Int[torch.Tensor, "batch pos"]) -> Bool[torch.Tensor, "batch pos"]:
        """``C[b, q]``: the token at ``q`` continues the word of the token at ``q - 1``."""
        cont = self.continues.to(tokens.device)[tokens]
        joins = self.joinable.to(tokens.device)[tokens]
        out = torch.zeros_like(cont)
        out[:, 1:] = cont[:, 1:] & joins[:, :-1]
        return out

    def words(self, tokens: Int[torch.Tensor, "batch pos"]) -> tuple[Int[torch.Tensor, "batch pos"], Bool[torch.Tensor, "batch pos"]]:
        """``(word_id [batch, pos], in_word [batch, pos])``: positions with the same id belong
        to one word (ids count up along the prompt); ``in_word`` is False for separators,
        specials and other non-word tokens."""
        cont = self.continuation(tokens)
        word_id = torch.cumsum((~cont).long(), dim=1)
        bare = self.bare_space.to(tokens.device)[tokens]
        followed = torch.zeros_like(cont)
        followed[:, :-1] = cont[:, 1:]
        # a bare space marker belongs to the word its next piece continues, else to no word
        in_word = (self.joinable.to(tokens.device)[tokens] & (~bare | followed)) | cont
        return word_id, in_word


#: tables per tokenizer object, keyed by (len(tokenizer), d_vocab); dropped with the tokenizer
_TABLES: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], VocabTables]] = weakref.WeakKeyDictionary()


def _require(tokenizer: Any, who: str) -> None:
    if tokenizer is None:
        raise UnsupportedTokenizerError(
            f"{who} reads the model's tokenizer (word pieces, punctuation, frequencies), but the model has none. "
            "Build or load it with its tokenizer (e.g. planted_model(..., tokenizer=bpe_tokenizer()) or "
            "hz.load_model(name)), or pick a detector that does not need one."
        )
    if not hasattr(tokenizer, "convert_ids_to_tokens") or not callable(tokenizer):
        raise UnsupportedTokenizerError(
            f"{who} needs a Hugging Face tokenizer (with convert_ids_to_tokens and encoding by call); the model "
            f"holds a {type(tokenizer).__name__}."
        )


def vocab_tables(tokenizer: Any, d_vocab: int, *, who: str = "this detector") -> VocabTables:
    """The :class:`VocabTables` of ``tokenizer`` for a model with ``d_vocab`` embedding rows.

    Raises:
        UnsupportedTokenizerError: no tokenizer, or one whose convention cannot be read.
    """
    _require(tokenizer, who)
    key = (len(tokenizer), int(d_vocab))
    try:
        cached = _TABLES.setdefault(tokenizer, {})
    except TypeError:  # an object that refuses weak references: compute every time
        cached = {}
    if key not in cached:
        cached[key] = _build_tables(tokenizer, int(d_vocab), who)
    return cached[key]


def detect_convention(tokenizer: Any, *, who: str = "this detector") -> Convention:
    """Which word-boundary convention ``tokenizer`` follows.

    Read, in order, from the fast tokenizer's serialised pipeline: a ``WordLevel`` model is
    ``"word"``; a ``WordPiece`` model or decoder is ``"wordpiece"``; a ``ByteLevel``
    pre-tokenizer or decoder is ``"byte_bpe"``; a ``Metaspace`` pre-tokenizer or decoder, or a
    normaliser that writes ``"▁"`` for spaces, is ``"sentencepiece"``. Slow tokenizers (and
    pipelines that say nothing) fall back to the vocabulary: the marker carried by at least
    5% of the tokens (``"Ġ"``, ``"▁"`` as first character, ``"##"`` as prefix).

    Raises:
        UnsupportedTokenizerError: none of these applies (the reason names what was found).
    """
    _require(tokenizer, who)
    found = _from_pipeline(tokenizer)
    if found is not None:
        return found
    vocab = _vocab_strings(tokenizer)
    ordinary = [t for t in vocab if t]
    shares = {
        "byte_bpe": sum(t.startswith("Ġ") for t in ordinary) / max(1, len(ordinary)),
        "sentencepiece": sum(t.startswith("▁") for t in ordinary) / max(1, len(ordinary)),
        "wordpiece": sum(t.startswith("##") and len(t) > 2 for t in ordinary) / max(1, len(ordinary)),
    }
    best = max(shares, key=lambda k: shares[k])
    if shares[best] >= _MIN_MARKED:
        return best  # type: ignore[return-value]
    raise UnsupportedTokenizerError(
        f"{who} cannot tell how {type(tokenizer).__name__} marks word boundaries: its pipeline names no "
        "ByteLevel, Metaspace, WordPiece or WordLevel step, and under 5% of its vocabulary carries a marker "
        f"(leading 'Ġ' {shares['byte_bpe']:.1%}, leading '▁' {shares['sentencepiece']:.1%}, '##' prefix "
        f"{shares['wordpiece']:.1%}). Supported: byte-level BPE (GPT-2 style), SentencePiece (Llama/T5 style), "
        "WordPiece (BERT style) and whole-word vocabularies."
    )


def _pipeline(tokenizer: Any) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    try:
        return json.loads(backend.to_str())
    except (ValueError, TypeError, RuntimeError):
        return None


def _steps(node: Any) -> list[dict[str, Any]]:
    """Flatten a pipeline component (``Sequence`` steps included) into its steps."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("pretokenizers", "decoders", "normalizers", "processors"):
        for child in node.get(key) or []:
            out += _steps(child)
    return out


def _from_pipeline(tokenizer: Any) -> Convention | None:
    spec = _pipeline(tokenizer)
    if spec is None:
        return None
    model = (spec.get("model") or {}).get("type")
    pre = {s.get("type") for s in _steps(spec.get("pre_tokenizer"))}
    dec = {s.get("type") for s in _steps(spec.get("decoder"))}
    norm = _steps(spec.get("normalizer"))
    if model == "WordLevel":
        return "word"
    if model == "WordPiece" or "WordPiece" in dec:
        return "wordpiece"
    if "ByteLevel" in pre or "ByteLevel" in dec:
        return "byte_bpe"
    writes_marker = any(
        (s.get("type") == "Replace" and s.get("content") == "▁") or (s.get("type") == "Prepend" and s.get("prepend") == "▁")
        for s in norm
    )
    if "Metaspace" in pre or "Metaspace" in dec or writes_marker:
        return "sentencepiece"
    return None


def _vocab_strings(tokenizer: Any) -> list[str]:
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    return [t if isinstance(t, str) else "" for t in tokens]


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the printable stand-in -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _surface(token: str, convention: Convention) -> tuple[str, bool, bool]:
    """``(text, space_marked, continuing)`` of one vocabulary entry: the characters it stands
    for (markers removed, a space marker spelled ``" "``)."""
    if convention == "byte_bpe":
        table = _byte_decoder()
        if all(ch in table for ch in token):
            text = bytes(table[ch] for ch in token).decode("utf-8", errors="replace")
        else:  # an added token spelled in plain text
            text = token
        return text, text[:1].isspace() and text[:1] not in "\n\r", False
    if convention == "sentencepiece":
        byte = _BYTE_TOKEN.match(token)
        if byte:  # byte-fallback pieces: "<0x0A>" is a line break
            value = int(byte.group(1), 16)
            return (chr(value) if value < 128 else "\ufffd"), False, False
        text = token.replace("▁", " ")
        return text, token.startswith("▁"), False
    if convention == "wordpiece":
        if token.startswith("##") and len(token) > 2:
            return token[2:], False, True
        return token, False, False
    return token, False, False


def _is_separator(text: str) -> bool:
    core = text.strip()
    if not core:
        return "\n" in text or "\r" in text
    if "\ufffd" in core:  # an incomplete UTF-8 sequence: unknown, not punctuation
        return False
    return all(unicodedata.category(ch)[0] in "PS" or ch.isspace() for ch in core)


def _build_tables(tokenizer: Any, d_vocab: int, who: str) -> VocabTables:
    convention = detect_convention(tokenizer, who=who)
    vocab = _vocab_strings(tokenizer)
    special_ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special_ids |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    size = d_vocab
    continues = torch.zeros(size, dtype=torch.bool)
    joinable = torch.zeros(size, dtype=torch.bool)
    punctuation = torch.zeros(size, dtype=torch.bool)
    bare_spaces = torch.zeros(size, dtype=torch.bool)
    special = torch.zeros(size, dtype=torch.bool)
    for i, token in enumerate(vocab[:size]):
        if i in special_ids:
            special[i] = True
            continue
        if not token:
            continue
        text, space_marked, marked_continuing = _surface(token, convention)
        content = text.strip()
        alnum = any(ch.isalnum() for ch in content)
        if convention == "wordpiece":
            continues[i] = marked_continuing and alnum
        elif convention in ("byte_bpe", "sentencepiece"):
            continues[i] = not space_marked and content[:1].isalnum() and text[:1] == content[:1]
        bare_space = convention in ("byte_bpe", "sentencepiece") and text == " "
        joinable[i] = alnum or bare_space
        bare_spaces[i] = bare_space
        punctuation[i] = _is_separator(text)
    return VocabTables(
        convention=convention, continues=continues, joinable=joinable, word_start=joinable & ~continues,
        punctuation=punctuation, bare_space=bare_spaces, special=special, n_tokenizer=len(vocab),
    )


# -- corpora and token frequencies -------------------------------------------------------------

def shipped_text() -> str:
    """The English text shipped with headzoo (original prose written for it, about 24 KB)."""
    return importlib.resources.files("headzoo").joinpath("_data/text/shipped.txt").read_text(encoding="utf-8")


def corpus_text(source: str | os.PathLike[str] | None, *, what: str = "corpus") -> str:
    """``"shipped"`` or ``None``: the shipped text; otherwise the UTF-8 text file at that path.

    Raises:
        InvalidOptionError: the path is no readable UTF-8 text file, or it holds no text.
    """
    if source is None or source == "shipped":
        return shipped_text()
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidOptionError(f"{what} must be 'shipped' or the path of a UTF-8 text file; got {source!r}")
    path = Path(source).expanduser()
    if not path.is_file():
        raise InvalidOptionError(
            f"{what}={str(source)!r} is neither 'shipped' nor an existing file; give the path of a UTF-8 text file."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"{what}: cannot read {str(path)!r} as UTF-8 text ({exc}).") from None
    if not text.strip():
        raise InvalidOptionError(f"{what}: {str(path)!r} holds no text.")
    return text


def encode_corpus(tokenizer: Any, text: str) -> list[list[int]]:
    """``text`` tokenised paragraph by paragraph (blocks between blank lines, each keeping its
    line breaks), without special tokens: ``[[id, ...], ...]``.

    Paragraphs keep memory and time linear on a large corpus; the text probe and the
    frequency counts both read this one tokenisation.
    """
    blocks = [b for b in re.split(r"(?<=\n)(?=\n)", text) if b.strip()]
    if not blocks:
        return []
    encoded = tokenizer(blocks, add_special_tokens=False)["input_ids"]
    return [list(map(int, ids)) for ids in encoded if len(ids)]


def unknown_share(tokenizer: Any, ids: list[int]) -> float:
    """Share of ``ids`` that are the tokenizer's unknown token (0 when it has none)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not ids:
        return 0.0
    return sum(i == unk for i in ids) / len(ids)


#: tokenised corpora per tokenizer object, keyed by (len(tokenizer), text digest)
_CORPORA: weakref.WeakKeyDictionary[Any, dict[tuple[int, str], tuple[list[int], float]]] = weakref.WeakKeyDictionary()


def corpus_ids(tokenizer: Any, source: str | os.PathLike[str] | None, *, what: str = "corpus") -> tuple[list[int], str, float]:
    """``(ids, digest, unknown share)``: the corpus ``source`` (see :func:`corpus_text`)
    tokenised by ``tokenizer`` (:func:`encode_corpus`) as one flat list, a hash of its text,
    and the share of ids that are the unknown token. Cached per tokenizer and text."""
    text = corpus_text(source, what=what)
    digest = text_digest(text)
    key = (len(tokenizer), digest)
    try:
        cached = _CORPORA.setdefault(tokenizer, {})
    except TypeError:  # an object that refuses weak references: compute every time
        cached = {}
    if key not in cached:
        flat = [i for ids in encode_corpus(tokenizer, text) for i in ids]
        cached[key] = (flat, unknown_share(tokenizer, flat))
    flat, unknown = cached[key]
    return flat, digest, unknown


def token_counts(
    tokenizer: Any, source: str | os.PathLike[str] | None = "shipped", d_vocab: int | None = None
) -> Int[torch.Tensor, " vocab"]:
    """How often each id occurs in the corpus ``source`` (``"shipped"`` or a UTF-8 file's path)
    tokenised by ``tokenizer`` paragraph by paragraph without special tokens
    (:func:`encode_corpus`): ``[d_vocab]`` int64 (default ``len(tokenizer)``), 0 for ids never
    seen; ids beyond ``d_vocab`` are dropped."""
    size = len(tokenizer) if d_vocab is None else int(d_vocab)
    ids, _, _ = corpus_ids(tokenizer, source, what="frequency")
    flat = torch.tensor(ids, dtype=torch.long)
    flat = flat[(flat >= 0) & (flat < size)]
    return torch.bincount(flat, minlength=size)[:size]


def log_frequency(counts: Int[torch.Tensor, " vocab"]) -> Float[torch.Tensor, " vocab"]:
    """Add-one (Laplace) smoothed log frequency ``log((count + 1) / (total + vocab))``.

    Smoothing keeps unseen ids finite (they share the lowest frequency) and does not reorder
    ids: it is only needed where a frequency enters arithmetic (planted rarity features);
    the rare-token detector compares raw counts.
    """
    c = counts.double()
    return torch.log((c + 1) / (c.sum() + len(c)))


def rarity(counts: Int[torch.Tensor, " vocab"]) -> Float[torch.Tensor, " vocab"]:
    """``-log_frequency`` rescaled to ``[0, 1]`` (0 = the most frequent id, 1 = unseen ids)."""
    r = -log_frequency(counts)
    lo, hi = float(r.min()), float(r.max())
    return (r - lo) / (hi - lo) if hi > lo else torch.zeros_like(r)


def describe_counts(counts: Int[torch.Tensor, " vocab"]) -> dict[str, Any]:
    """JSON-ready summary of a frequency table."""
    return {"n_tokens_counted": int(counts.sum()), "n_ids_seen": int((counts > 0).sum()), "n_ids": int(len(counts))}


def text_digest(text: str) -> str:
    """A short hash of ``text`` (records which corpus was counted)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

