"""Built-in relations for relation heads, written in a model's own tokens.

MAPS (Elhelo and Geva 2025, arXiv 2412.11965) reads a head's OV circuit in vocabulary space
and asks, for a relation given as (source, target) pairs ("France" -> "Paris"), how often the
head raises the target when it attends to the source. A pair can only be read that way where
both words are single tokens, so each built-in list (package data under
``headzoo/_data/relations/``, one JSON file per relation, written for headzoo) is tokenised in
the forms ``" X"`` (leading space, as words appear inside a sentence) and ``"X"``, and keeps
the pairs whose source and target are single, ordinary, distinct tokens. How many survive
depends on the tokenizer; :func:`relation_survival` tabulates it.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from headzoo._errors import CorruptFileError, InvalidOptionError

__all__ = ["RelationList", "RelationPairs", "relation_lists", "relation_pairs", "relation_survival"]

#: the two spellings tried for every word: inside a sentence (leading space) and bare
_FORMS = (("space", " {}"), ("bare", "{}"))


@dataclass(frozen=True)
class RelationList:
    """A built-in relation as words.

    Attributes:
        name: the relation's name (``"country_capital"``).
        description: what maps to what, in one line.
        source: where the list comes from.
        pairs: ``(source word, target word)`` pairs, without leading spaces.
    """

    name: str
    description: str
    source: str
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RelationPairs:
    """A relation as token-id pairs of one tokenizer.

    Attributes:
        name: the relation's name.
        pairs: distinct ``(source id, target id)`` pairs, space form first, then the bare form.
        words: the text each pair was encoded from (with its leading space where it has one).
        n_listed: pairs in the word list.
        n_space: listed pairs whose ``" source"`` and ``" target"`` are single tokens.
        n_bare: listed pairs whose ``"source"`` and ``"target"`` are single tokens.
        n_collapsed: single-token pairs dropped because source and target became the same
            token (a lower-casing tokenizer on ``the -> The``), over both forms.
    """

    name: str
    pairs: tuple[tuple[int, int], ...]
    words: tuple[tuple[str, str], ...]
    n_listed: int
    n_space: int
    n_bare: int
    n_collapsed: int

    @property
    def n_pairs(self) -> int:
        """Distinct token-id pairs kept (both forms; a word tokenizer gives the same ids twice)."""
        return len(self.pairs)

    def counts(self) -> dict[str, Any]:
        """``{relation, listed, space, bare, collapsed, pairs}``: how much of the list survived."""
        return {"relation": self.name, "listed": self.n_listed, "space": self.n_space, "bare": self.n_bare,
                "collapsed": self.n_collapsed, "pairs": self.n_pairs}


@functools.cache
def _load_lists() -> tuple[RelationList, ...]:
    folder = importlib.resources.files("headzoo").joinpath("_data/relations")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            doc = json.loads(entry.read_text(encoding="utf-8"))
            pairs = tuple((str(a), str(b)) for a, b in doc["pairs"])
            out.append(RelationList(str(doc["name"]), str(doc["description"]), str(doc["source"]), pairs))
        except (KeyError, TypeError, ValueError) as exc:  # a broken install, not a user error
            raise CorruptFileError(f"the built-in relation list {entry.name} cannot be read ({exc}); reinstall headzoo") from exc
    return tuple(out)


def relation_lists() -> dict[str, RelationList]:
    """The built-in relations by name: ``antonyms``, ``capitalisation``, ``country_capital``,
    ``plural``, ``successor`` (a fresh dict each call; the lists themselves are immutable)."""
    return {r.name: r for r in _load_lists()}


def _check_names(relations: Any) -> list[str]:
    known = relation_lists()
    if relations is None:
        return list(known)
    names = [relations] if isinstance(relations, str) else relations
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise InvalidOptionError(
            f"relations must be a name or a list of names of built-in relations {sorted(known)}; got {relations!r}"
        )
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidOptionError(f"unknown relation(s) {unknown}; the built-in relations are {sorted(known)}")
    if not names:
        raise InvalidOptionError(f"relations=[] selects no relation; choose from {sorted(known)} or pass None for all")
    return list(dict.fromkeys(names))


def _encoder(tokenizer: Any, n_vocab: int | None) -> Any:
    """``text -> id`` when ``text`` is one ordinary token of ``tokenizer``, else ``None`` (memoised)."""
    banned = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        banned.add(int(unk))

    @functools.cache
    def single(text: str) -> int | None:
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except Exception:  # a tokenizer that cannot encode the text cannot express the word
            return None
        if len(ids) != 1:
            return None
        i = int(ids[0])
        return None if i in banned or (n_vocab is not None and i >= n_vocab) else i

    return single


def relation_pairs(
    tokenizer: Any, relations: str | Sequence[str] | None = None, *, n_vocab: int | None = None
) -> dict[str, RelationPairs]:
    """The built-in relations as single-token pairs of ``tokenizer``.

    Args:
        tokenizer: a Hugging Face tokenizer (anything with ``encode(text, add_special_tokens=False)``).
        relations: names of built-in relations (default: all, see :func:`relation_lists`).
        n_vocab: ids at or above it are not ordinary tokens of the model (padding rows).

    Returns:
        ``{name: RelationPairs}`` for every relation asked for, also those with no pair left
        (their counts say why).
    """
    names = _check_names(relations)
    if tokenizer is None:
        raise InvalidOptionError("relation_pairs needs a tokenizer; the model has none (pass token-id pairs instead)")
    single = _encoder(tokenizer, n_vocab)
    lists = relation_lists()
    out = {}
    for name in names:
        rel = lists[name]
        kept: dict[tuple[int, int], tuple[str, str]] = {}
        survived = {"space": 0, "bare": 0}
        collapsed = 0
        for form, pattern in _FORMS:
            for a, b in rel.pairs:
                texts = (pattern.format(a), pattern.format(b))
                s, t = single(texts[0]), single(texts[1])
                if s is None or t is None:
                    continue
                survived[form] += 1
                if s == t:
                    collapsed += 1
                    continue
                kept.setdefault((s, t), texts)
        out[name] = RelationPairs(
            name, tuple(kept), tuple(kept.values()), len(rel.pairs), survived["space"], survived["bare"], collapsed
        )
    return out


def relation_survival(
    tokenizer: Any, relations: str | Sequence[str] | None = None, *, n_vocab: int | None = None
) -> pd.DataFrame:
    """How many pairs of each built-in relation ``tokenizer`` can express as single tokens.

    Returns:
        One row per relation: ``relation, listed, space, bare, collapsed, pairs`` (``pairs``:
        distinct id pairs over both forms, what the ``relation`` detector scores).
    """
    rows = [r.counts() for r in relation_pairs(tokenizer, relations, n_vocab=n_vocab).values()]
    return pd.DataFrame(rows, columns=["relation", "listed", "space", "bare", "collapsed", "pairs"])
