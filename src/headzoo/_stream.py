"""Streaming a text corpus through a model: reading it, cutting it into context windows, batching.

Analyses that read a head on free text (:func:`hz.successor_on_text`, :func:`hz.head_examples`)
share one way of doing it. The corpus (the text shipped with headzoo, a text file, a folder of
``*.txt`` files, a list of strings or a Hugging Face ``datasets`` dataset) is tokenised once into
documents of ids; documents are cut into windows of the model's context (its BOS first when the
model prepends one), and windows are stacked right-padded into ``[batch, pos]`` blocks of one
width, so a position's activations do not depend on how many windows share its batch. Only the
ids are held; what an analysis keeps of each batch is its own business.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from headzoo._errors import InvalidOptionError
from headzoo._tokens import warn_unknown_tokens
from headzoo._vocab import corpus_ids, corpus_text, encode_corpus, text_digest, unknown_share

__all__ = ["Window", "read_corpus", "truncate", "windows", "block", "rank_key", "heads_of_z"]


@dataclass(frozen=True)
class Window:
    """A run of consecutive ids of one document.

    Attributes:
        doc: the document's index.
        start: the document position of the window's first id.
        ids: the ids, at most one context long.
    """

    doc: int
    start: int
    ids: tuple[int, ...]


def _is_dataset(corpus: Any) -> bool:
    """A Hugging Face ``datasets`` object (checked by its module, so ``datasets`` is not imported)."""
    return type(corpus).__module__.split(".")[0] == "datasets"


def _load_saved_dataset(path: Path, who: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise InvalidOptionError(
            f"{who}: {str(path)!r} is a dataset saved with save_to_disk, and reading it needs the "
            "`datasets` package: pip install datasets"
        ) from None
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder: any of datasets' many error types
        raise InvalidOptionError(f"{who}: cannot load the saved dataset at {str(path)!r} ({exc})") from None


HUB_PREFIX = "hf:"
#: seeds the curriculum documents a curriculum-trained model reads by default; the zoo trains on
#: small seeds, so these documents are held out of its training stream
CURRICULUM_SEED = 1_000_003
CURRICULUM_DOCS = 64


def _curriculum_documents(tokenizer: Any) -> list[str] | None:
    """Held-out documents of headzoo's synthetic curriculum when ``tokenizer`` is one the bundled
    zoo models were trained with (it holds every word of curriculum v2's WordPiece vocabulary, or
    of curriculum v1's word vocabulary); ``None`` otherwise. English prose is mostly unknown words
    to such a model, so its default corpus is text from the distribution it was trained on."""
    from headzoo import _curriculum, _curriculum_v2

    vocab = tokenizer.get_vocab() if callable(getattr(tokenizer, "get_vocab", None)) else None
    if not isinstance(vocab, dict):
        return None
    rng = np.random.default_rng(CURRICULUM_SEED)
    if all(w in vocab for w in _curriculum_v2.vocabulary()):
        v2 = _curriculum_v2.CurriculumV2(n_ctx=128, seed=CURRICULUM_SEED)
        return [v2.text(rng) for _ in range(CURRICULUM_DOCS)]
    if not all(w in vocab for w in _curriculum.VOCABULARY):
        return None
    curriculum = _curriculum.Curriculum(n_ctx=128, seed=CURRICULUM_SEED)
    docs = []
    for _ in range(CURRICULUM_DOCS):
        ids, _tasks = curriculum.sequence(rng)
        docs.append(" ".join(_curriculum.VOCABULARY[i - curriculum.first_id] for i in ids if i >= curriculum.first_id))
    return docs


def _hub_dataset(spec: str, who: str) -> Any:
    """``"hf:NAME[:CONFIG][@SPLIT]"`` loaded with ``datasets.load_dataset(NAME, CONFIG,
    split=SPLIT, streaming=True)`` (split ``train`` by default): streamed, so only the rows read
    are downloaded. ``NAME`` is a hub name or a local folder of data files (read offline)."""
    body = spec[len(HUB_PREFIX):]
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise InvalidOptionError(
            f"{who}: {spec!r} names no dataset; write 'hf:NAME', 'hf:NAME:CONFIG' or 'hf:NAME@SPLIT' "
            "(e.g. 'hf:wikitext:wikitext-2-raw-v1@validation')"
        )
    try:
        import datasets
    except ImportError:
        raise InvalidOptionError(f"{who}: {spec!r} is a Hugging Face dataset, and reading it needs the `datasets` "
                                 "package: pip install datasets") from None
    try:
        return datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as exc:  # no network, an unknown name or split: datasets raises many types
        raise InvalidOptionError(
            f"{who}: cannot load the Hugging Face dataset {name!r} (config {config or None!r}, split "
            f"{split or 'train'!r}): {type(exc).__name__}: {exc}. Without a route to the hub, save the dataset "
            "with save_to_disk on a machine that has one and pass that folder as the corpus"
        ) from None


def _dataset_texts(data: Any, who: str) -> Iterator[str]:
    """The ``"text"`` column of a ``datasets.Dataset`` or ``IterableDataset``, row by row
    (nothing else is loaded)."""
    names = getattr(data, "column_names", None)
    if names is None and type(data).__name__ == "IterableDataset":  # streamed without declared features
        first = next(iter(data), None)
        names = sorted(first) if isinstance(first, dict) else []
    if isinstance(names, dict):  # a DatasetDict: one split must be chosen
        raise InvalidOptionError(
            f"{who}: the corpus is a DatasetDict with splits {sorted(names)}; pass one split, e.g. corpus=data['train']"
        )
    if not isinstance(names, list) or "text" not in names:
        raise InvalidOptionError(
            f"{who}: a dataset corpus needs a 'text' column; this one has {names!r} "
            "(rename it with dataset.rename_column(old, 'text'))"
        )
    for i, row in enumerate(data.select_columns(["text"])):
        text = row["text"]
        if not isinstance(text, str):
            raise InvalidOptionError(f"{who}: row {i} of the dataset's 'text' column is {type(text).__name__}, not a string")
        yield text


def read_corpus(
    tokenizer: Any, corpus: Any, *, who: str, min_tokens: int = 1, limit: int | None = None
) -> tuple[list[list[int]], dict[str, Any]]:
    """The corpus as token ids, one list per document, and how it was read.

    ``corpus``: ``None`` (the model's default text: for a model with the word tokenizer of
    headzoo's synthetic curriculum, :data:`CURRICULUM_DOCS` held-out curriculum documents, the
    distribution the bundled zoo models were trained on; otherwise the text shipped with
    headzoo), ``"shipped"`` (the text shipped with headzoo, one document); the path
    of a UTF-8 text file (one document); of a folder (each ``*.txt`` in it, sorted by name, one
    document each; a folder holding ``dataset_info.json`` is a dataset saved with
    ``save_to_disk``, read with ``datasets.load_from_disk``); ``"hf:NAME[:CONFIG][@SPLIT]"``, a
    Hugging Face dataset streamed with ``datasets.load_dataset`` (where the hub is reachable,
    or ``NAME`` a local folder of data files); a list of strings (one document each); or a
    ``datasets.Dataset`` / ``IterableDataset`` (its ``"text"`` column, one document per row). Text is
    tokenised by :func:`headzoo._vocab.encode_corpus` (paragraph by paragraph, no special tokens).

    With ``limit``, documents stop being read once ``limit`` ids are held, so a large dataset
    is not tokenised past what will be used; ``meta["complete"]`` says whether all was read.

    Returns:
        ``(docs, meta)``: ``docs`` a list of id lists; ``meta`` with ``source``, ``digest`` (of
        the text read), ``unknown_share``, ``n_docs`` and ``complete``.

    Raises:
        InvalidOptionError: an unreadable or empty corpus, a wrong type, a dataset without a
            ``"text"`` column, ``datasets`` missing for a saved or hub dataset, a hub dataset that cannot
            be loaded (no network, unknown name or split), or no document of at
            least ``min_tokens`` ids.
    """
    texts: Iterable[str]
    if isinstance(corpus, str) and corpus.startswith(HUB_PREFIX):
        texts, source = _dataset_texts(_hub_dataset(corpus, who), who), corpus
    elif corpus is None and (curriculum := _curriculum_documents(tokenizer)) is not None:
        texts, source = curriculum, "curriculum"
    elif corpus is None or isinstance(corpus, (str, os.PathLike)):
        path = None if corpus is None or corpus == "shipped" else Path(corpus).expanduser()
        if path is not None and path.is_dir():
            if (path / "dataset_info.json").is_file():
                texts, source = _dataset_texts(_load_saved_dataset(path, who), who), str(corpus)
            else:
                files = sorted(p for p in path.glob("*.txt") if p.is_file())
                if not files:
                    raise InvalidOptionError(
                        f"{who}: the folder {str(path)!r} holds no *.txt file (nor a dataset saved with save_to_disk)"
                    )
                texts, source = (corpus_text(f, what="corpus") for f in files), str(corpus)
        else:
            ids, digest, unknown = corpus_ids(tokenizer, corpus, what="corpus")
            docs = [ids[:limit] if limit is not None else ids]
            complete = limit is None or len(ids) <= limit
            source = "shipped" if path is None else str(corpus)
            if unknown:
                warn_unknown_tokens(tokenizer, [corpus_text(path, what="corpus")], [torch.tensor(ids)], f"{who}: the corpus")
            return _checked(docs, who, min_tokens), {
                "source": source, "digest": digest, "unknown_share": float(unknown), "n_docs": 1, "complete": complete}
    elif isinstance(corpus, (list, tuple)):
        if not corpus:
            raise InvalidOptionError("corpus is an empty list; give at least one non-empty string")
        bad = [i for i, t in enumerate(corpus) if not isinstance(t, str)]
        if bad:
            raise InvalidOptionError(
                f"corpus must be None, a path, a list of strings or a datasets.Dataset; item {bad[0]} is {type(corpus[bad[0]]).__name__}"
            )
        texts, source = corpus, "strings"
    elif _is_dataset(corpus):
        texts, source = _dataset_texts(corpus, who), "dataset"
    else:
        raise InvalidOptionError(
            "corpus must be None (the shipped text), the path of a text file, a folder of *.txt files or of a "
            f"saved dataset, 'hf:NAME' (a Hugging Face dataset), a list of strings, or a datasets.Dataset; got {type(corpus).__name__}"
        )
    docs, read, held, complete = [], [], 0, True
    for text in texts:
        if limit is not None and held >= limit:
            complete = False
            break
        docs.append([i for part in encode_corpus(tokenizer, text) for i in part])
        read.append(text)
        held += len(docs[-1])
    flat = [i for d in docs for i in d]
    warn_unknown_tokens(tokenizer, read, [torch.tensor(d, dtype=torch.long) for d in docs], f"{who}: the corpus")
    meta = {"source": source, "digest": text_digest("\x00".join(read)), "unknown_share": float(unknown_share(tokenizer, flat)),
            "n_docs": len(docs), "complete": complete}
    return _checked(docs, who, min_tokens), meta


def _checked(docs: list[list[int]], who: str, min_tokens: int) -> list[list[int]]:
    if not any(len(d) >= min_tokens for d in docs):
        need = {1: "a token", 2: "two or more tokens"}.get(min_tokens, f"{min_tokens} or more tokens")
        why = "" if min_tokens <= 1 else ", so no next token can be predicted"
        raise InvalidOptionError(f"corpus holds no document of {need}{why}; give more text")
    return docs


def truncate(docs: list[list[int]], max_tokens: int | None) -> list[list[int]]:
    """The first ``max_tokens`` ids of the corpus, documents in order (``None``: all of it)."""
    if max_tokens is None or sum(len(d) for d in docs) <= max_tokens:
        return docs
    left, cut = max_tokens, []
    for d in docs:
        cut.append(d[:left])
        left -= len(cut[-1])
    return cut


def windows(docs: Sequence[Sequence[int]], length: int, *, overlap: int = 0, min_tokens: int = 1) -> Iterator[Window]:
    """Consecutive windows of at most ``length`` ids of each document of at least
    ``min_tokens`` ids, each starting ``length - overlap`` ids after the previous one.

    ``overlap=0``: every id is in exactly one window. ``overlap=1``: every id but a
    document's last is in exactly one window together with its next id (for next-token
    losses); windows end once the last id is the next id of some window.
    """
    step = length - overlap
    if step < 1:
        raise ValueError(f"windows of {length} ids cannot overlap by {overlap}")
    for d, ids in enumerate(docs):
        if len(ids) < min_tokens:
            continue
        start = 0
        while start < len(ids) - overlap:
            yield Window(d, start, tuple(ids[start : start + length]))
            start += step


def block(chunk: Sequence[Window], width: int, bos: int | None, pad_id: int) -> Int[torch.Tensor, "batch width"]:
    """The windows as one right-padded ``[batch, width]`` block, ``bos`` first in every row when
    given. Right padding is exact under causal attention: no real query sees a pad."""
    out = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    for i, w in enumerate(chunk):
        row = ([bos] if bos is not None else []) + list(w.ids)
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def rank_key(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to 6 significant digits, for ranking. A different batch size changes the
    order of float sums (differences near 1e-7 relative); rounded, such values tie, and ties go
    to the earlier position, so what is kept does not depend on batching. Reported values are
    not rounded."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.floor(np.log10(np.abs(x)))
    scale = 10.0 ** (5 - np.where(np.isfinite(mag), mag, 0.0))
    return np.round(x * scale) / scale


def heads_of_z(z: torch.Tensor, n_heads: int) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``hook_z`` as ``[batch, pos, head, d_head]``: bridges hand a read hook the attention
    output before ``W_O`` flattened, ``[batch, pos, head * d_head]``."""
    return z.unflatten(-1, (n_heads, -1)) if z.ndim == 3 else z
