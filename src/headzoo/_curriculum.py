"""A synthetic curriculum that grows the head types headzoo detects, in a small word vocabulary.

Each training sequence interleaves segments of five kinds, each labelled so its loss can be
logged separately:

- ``induction``: a span of random words, later repeated (Olsson et al. 2022);
- ``ordinal``: a run of an ordinal list inside a sentence ("on Monday Tuesday Wednesday");
- ``retrieval``: key-value facts ("the code of the mill is amber") and, much later, a query that
  ends with the fact's lead-in, so the answer must be copied from far back;
- ``ioi``: indirect-object sentences ("When Mary and John went to the park , John gave a book to
  Mary"), the task of Wang et al. (2022);
- ``filler``: sentences from a small grammar.

Generation is seeded and streaming (no files); the vocabulary is fixed, so a word-level
tokenizer built from :data:`VOCABULARY` covers every token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from headzoo._ordinal import ORDINAL_LISTS

__all__ = ["VOCABULARY", "TASKS", "Curriculum", "vocabulary"]

TASKS = ("filler", "induction", "ordinal", "retrieval", "ioi")

_DET = ["the", "a", "every", "this", "that", "my", "our", "their"]
_ADJ = ["old", "new", "red", "green", "blue", "small", "large", "quiet", "bright", "dark", "warm", "cold",
        "happy", "tired", "busy", "strange", "silver", "golden", "wooden", "tall"]
_NOUN = ["mill", "river", "garden", "house", "tower", "bridge", "market", "forest", "school", "harbour",
         "village", "road", "window", "table", "letter", "book", "lamp", "door", "field", "station",
         "boat", "island", "valley", "kitchen", "library", "museum", "shop", "farm", "castle", "park"]
_VERB = ["saw", "found", "painted", "opened", "closed", "visited", "liked", "built", "carried", "cleaned",
         "watched", "sold", "bought", "moved", "fixed", "drew", "followed", "remembered", "left", "crossed"]
_PREP = ["near", "behind", "under", "above", "beside", "inside", "past", "across"]
_THINGS = ["book", "drink", "letter", "key", "flower", "coin", "map", "ring", "basket", "lamp"]
_PLACES = ["park", "store", "station", "market", "school", "river", "garden", "museum"]
_NAMES = ["Mary", "John", "Alice", "Bob", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Ivy", "Jack",
          "Kate", "Leo", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Umar", "Vera", "Will"]
_VALUES = ["amber", "cobalt", "ivory", "jade", "onyx", "pearl", "ruby", "topaz", "opal", "coral", "slate",
           "umber", "violet", "ochre", "teal", "scarlet", "indigo", "bronze", "crimson", "azure"]
_PUNCT = [".", ",", "?", ":"]
_GLUE = ["and", "went", "to", "gave", "when", "then", "on", "count", "code", "of", "is", "what", "was",
         "it", "later", "we", "read", "next", "after", "in", "letters", "months", "days", "steps"]
_ORDINAL = ["number_words", "ordinals", "days", "months", "letters"]
_NUMBERS = [str(i) for i in range(1, 41)]


def vocabulary() -> list[str]:
    """Every word the curriculum writes, deduplicated, in a fixed order."""
    words: list[str] = []
    for group in (_PUNCT, _DET, _ADJ, _NOUN, _VERB, _PREP, _THINGS, _PLACES, _NAMES, _VALUES, _GLUE, _NUMBERS,
                  *[list(ORDINAL_LISTS[name][0]) for name in _ORDINAL], [f"x{i}" for i in range(200)]):
        for w in group:
            if w not in words:
                words.append(w)
    return words


VOCABULARY: tuple[str, ...] = tuple(vocabulary())


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Seeded, streaming training sequences of ``n_ctx`` token ids with a task label per token.

    Attributes:
        n_ctx: tokens per sequence (position 0 is BOS).
        seed: seeds the stream.
        weights: relative frequency of the segment kinds (filler, induction, ordinal, retrieval, ioi).
        bos_id: the BOS id; word ids start at ``first_id`` (the word tokenizer's layout).
    """

    n_ctx: int = 128
    seed: int = 0
    weights: tuple[float, ...] = (0.25, 0.3, 0.15, 0.15, 0.15)
    bos_id: int = 0
    first_id: int = 2

    def __post_init__(self) -> None:
        if len(self.weights) != len(TASKS):
            raise ValueError(f"weights needs {len(TASKS)} values ({TASKS}); got {self.weights}")
        if self.n_ctx < 32:
            raise ValueError(f"n_ctx must be at least 32; got {self.n_ctx}")

    def _id(self, word: str) -> int:
        return self.first_id + _INDEX[word]

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One sequence: ``(ids, task labels)``; the label of position ``i`` is the task of
        predicting token ``i`` (so loss at position ``i - 1`` belongs to it)."""
        ids, tasks = [self.bos_id], [0]
        pending: list[tuple[list[str], list[str]]] = []  # retrieval queries still to ask
        p = np.asarray(self.weights) / np.sum(self.weights)
        while len(ids) < self.n_ctx:
            if pending and (rng.random() < 0.3 or len(ids) > self.n_ctx - 24):
                lead, answer = pending.pop(0)
                self._emit(ids, tasks, ["what", "was", *lead[:-1], "?", *lead], 0)
                self._emit(ids, tasks, answer, TASKS.index("retrieval"))
                continue
            kind = TASKS[int(rng.choice(len(TASKS), p=p))]
            if kind == "filler":
                self._emit(ids, tasks, self._sentence(rng), 0)
            elif kind == "induction":
                # mostly short spans, but also long ones (up to half the context), so induction
                # generalises to the repeated-random-token probe
                long = rng.random() < 0.3
                n = int(rng.integers(12, max(13, self.n_ctx // 2 - 4))) if long else int(rng.integers(4, 12))
                span = [VOCABULARY[i] for i in rng.choice(len(VOCABULARY), n, replace=False)]
                self._emit(ids, tasks, span, 0)
                if not long and rng.random() < 0.5:
                    self._emit(ids, tasks, self._sentence(rng), 0)
                self._emit(ids, tasks, span[:1], 0)
                self._emit(ids, tasks, span[1:], TASKS.index("induction"))
            elif kind == "ordinal":
                name = _ORDINAL[int(rng.integers(len(_ORDINAL)))]
                items = list(ORDINAL_LISTS[name][0])
                n = int(rng.integers(3, 7))
                start = int(rng.integers(0, len(items) - n + 1))
                intro = {"days": ["on"], "months": ["in"], "letters": ["letters"], "ordinals": ["the"]}.get(name, ["count"])
                self._emit(ids, tasks, intro + items[start : start + 1], 0)
                self._emit(ids, tasks, items[start + 1 : start + n], TASKS.index("ordinal"))
                self._emit(ids, tasks, ["."], 0)
            elif kind == "retrieval":
                noun = _NOUN[int(rng.integers(len(_NOUN)))]
                adj = _ADJ[int(rng.integers(len(_ADJ)))]
                value = [_VALUES[int(rng.integers(len(_VALUES)))]]
                lead = ["the", "code", "of", "the", adj, noun, "is"]
                self._emit(ids, tasks, lead + value + ["."], 0)
                pending.append((lead, value))
            else:  # ioi
                a, b = (str(x) for x in rng.choice(_NAMES, 2, replace=False))
                place = _PLACES[int(rng.integers(len(_PLACES)))]
                thing = _THINGS[int(rng.integers(len(_THINGS)))]
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                self._emit(ids, tasks, ["when", first, "and", second, "went", "to", "the", place, ",", b, "gave", "a", thing, "to"], 0)
                self._emit(ids, tasks, [a], TASKS.index("ioi"))
                self._emit(ids, tasks, ["."], 0)
        return ids[: self.n_ctx], tasks[: self.n_ctx]

    def _emit(self, ids: list[int], tasks: list[int], words: list[str], task: int) -> None:
        ids.extend(self._id(w) for w in words)
        tasks.extend([task] * len(words))

    def _sentence(self, rng: np.random.Generator) -> list[str]:
        pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
        words = [pick(_DET), pick(_ADJ), pick(_NOUN), pick(_VERB), pick(_DET), pick(_NOUN)]
        if rng.random() < 0.5:
            words += [pick(_PREP), pick(_DET), pick(_NOUN)]
        return words + ["."]

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless ``(ids [batch, n_ctx], tasks [batch, n_ctx])`` batches; batch ``k`` depends
        only on ``(seed, k)``, so a resumed run continues exactly where it stopped."""
        k = start
        while True:
            rng = np.random.default_rng([self.seed, k])
            rows = [self.sequence(rng) for _ in range(batch_size)]
            yield (torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]))
            k += 1


_INDEX = {w: i for i, w in enumerate(VOCABULARY)}
