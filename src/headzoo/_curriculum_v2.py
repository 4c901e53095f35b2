"""Curriculum v2: synthetic training text in which each head type headzoo detects is necessary.

The first curriculum (:mod:`headzoo._curriculum`) grew induction, previous-token and retrieval
heads, and nothing else: its ordinal runs are bigrams an MLP can learn, nothing needed to know
whether a token had been seen before, and its one IOI template could be memorised. Here every
segment kind is a task that a head of one type solves and that no bigram, and no single
template, can:

``induction``
    a span of words (short, or up to half the context) later repeated (Olsson et al. 2022);
``ngram``
    an in-context n-gram language: a random order-2 transition table over six words, drawn per
    segment, so the next word depends on the last two *as seen earlier in this segment*
    (the n-gram heads of Akyurek et al. 2024);
``successor``
    an item of an ordinal list, then several tokens later a cue whose answer is the item's
    successor ("The meeting is on Monday . ... the next one is on" -> Tuesday), over numbers,
    number words, ordinals, days, months, letters and Roman numerals (Gould et al. 2023);
``ordinal``
    short contiguous runs of those lists (the original task, kept small);
``seen``
    every word of a list followed by ``new`` or ``seen``: whether the word occurred earlier in
    the list, which only a duplicate-token head can tell;
``ioi``
    indirect-object sentences in many frames, both name orders (ABBA, BABA), 100 names
    (Wang et al. 2022); the frames of headzoo's built-in IOI probe templates are held out, so
    the probes test a learned task, not a memorised template;
``except``
    four of a closed group of five words in random order, then "but not" -> the fifth: the
    answer is the one member *absent* from the context, so the model must predict against the
    tokens it sees (the calibration against naive copying that McDougall et al. 2023 give as
    the reason copy-suppression heads exist);
``icl``
    in-context tasks given as (x, y) demonstrations then x -> y (successor, predecessor,
    capitalise, lower-case, first letter, copy), with and without separators (the function
    vectors of Todd et al. 2024);
``retrieval``
    a fact ("the code of the old mill is amber .") and, much later, a question that ends with
    the fact's lead-in;
``filler``
    sentences from a small grammar with capitals, commas, quotes and brackets, and invented
    names spelled in several word pieces, so delimiter, subword-merge and sink heads have a
    reason to form.

The tokenizer (:func:`tokenizer`) is WordPiece (BERT convention: ``##`` marks a piece that
continues a word) over whole words for everything the curriculum and headzoo's built-in probes
write, plus syllables and single characters as pieces, so any ASCII text tokenises without an
unknown token: the shipped probe text, the IOI templates, the needle-in-a-haystack sentences.
A word-level tokenizer could not: it maps an unseen word to ``<unk>`` and has no subwords.

Generation is seeded and streaming (no files). Batch ``k`` depends only on ``(seed, k)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import re
import string
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from headzoo._ordinal import ORDINAL_LISTS

__all__ = ["TASKS", "CurriculumV2", "vocabulary", "tokenizer", "held_out_ioi_templates", "ioi_frames"]

TASKS = ("filler", "induction", "ngram", "successor", "ordinal", "seen", "ioi", "except", "icl", "retrieval")

#: detector -> the task (a label of :data:`TASKS`) whose tokens need a head of that type. The
#: pattern heads of text (delimiter, subword merge, ...) have no task of their own.
DETECTOR_TASKS = {
    "induction": "induction", "previous_token": "induction", "ngram_induction": "ngram",
    "retrieval": "retrieval", "successor": "successor", "successor_in_context": "successor",
    "duplicate_token": "seen", "name_mover": "ioi", "s_inhibition": "ioi", "backup_name_mover": "ioi",
    "negative_name_mover": "ioi", "copy_suppression": "except", "negative_copying": "except",
    "copying": "induction", "function_vector": "icl", "relation": "icl",
}

BOS, UNK = "<bos>", "<unk>"
_T = TypeVar("_T")

# -- word lists -----------------------------------------------------------------------------------
_DET = ["the", "a", "every", "this", "that", "my", "our", "their", "one", "some"]
_ADJ = ["old", "new", "red", "green", "blue", "small", "large", "quiet", "bright", "dark", "warm", "cold",
        "happy", "tired", "busy", "strange", "silver", "golden", "wooden", "tall", "long", "short", "empty", "full"]
_NOUN = ["mill", "river", "garden", "house", "tower", "bridge", "market", "forest", "school", "harbour",
         "village", "road", "window", "table", "letter", "book", "lamp", "door", "field", "station",
         "boat", "island", "valley", "kitchen", "library", "museum", "shop", "farm", "castle", "park",
         "teacher", "doctor", "farmer", "child", "captain", "baker", "horse", "dog", "cat", "bird"]
_VERB = ["saw", "found", "painted", "opened", "closed", "visited", "liked", "built", "carried", "cleaned",
         "watched", "sold", "bought", "moved", "fixed", "drew", "followed", "remembered", "left", "crossed"]
_PREP = ["near", "behind", "under", "above", "beside", "inside", "past", "across", "with", "without"]
_CONJ = ["and", "but", "so", "because", "while", "although", "then"]
_SAID = ["said", "asked", "replied", "wrote", "called"]
_VALUES = ["amber", "cobalt", "ivory", "jade", "onyx", "pearl", "ruby", "topaz", "opal", "coral", "slate",
           "umber", "violet", "ochre", "teal", "scarlet", "indigo", "bronze", "crimson", "azure"]
#: closed groups of five for the "except" task (learned in the weights: each word belongs to one)
_GROUPS = [["amber", "jade", "onyx", "pearl", "ruby"], ["cobalt", "ivory", "topaz", "opal", "coral"],
           ["apple", "pear", "plum", "peach", "cherry"], ["oak", "pine", "birch", "maple", "willow"],
           ["violin", "flute", "drum", "harp", "piano"], ["wolf", "fox", "bear", "deer", "hare"],
           ["north", "south", "east", "west", "centre"], ["copper", "iron", "tin", "zinc", "lead"]]
_SYLLABLES = ["ka", "lo", "mi", "ren", "dor", "vel", "tam", "sin", "bru", "gal", "per", "qu", "zan", "tor",
              "fi", "mel", "os", "ul", "rik", "an", "bel", "cor", "dun", "esk", "hal", "jor", "nim", "pra"]
_MARKERS = ["new", "seen"]

# IOI frames written for the curriculum; none is the frame of a built-in probe template
# ({A} and {B} are the two people in either order; {S} is the one who acts again)
_IOI_INTROS = [
    "{A} and {B} were sitting in the {PLACE} .",
    "As {A} and {B} walked into the {PLACE} ,",
    "{A} met {B} at the {PLACE} , and",
    "In the {PLACE} , {A} and {B} talked for an hour .",
    "Once {A} and {B} had found the {PLACE} ,",
    "{A} and {B} spent the morning at the {PLACE} , and",
    "Last week {A} and {B} visited the {PLACE} .",
    "Both {A} and {B} liked the {PLACE} , so",
    "{A} , {B} and a dog ran to the {PLACE} .",
    "Inside the {PLACE} , {A} waited for {B} .",
    "{A} and {B} left the {PLACE} together .",
    "It was late when {A} and {B} reached the {PLACE} , and",
]
_IOI_ACTIONS = [
    "{S} gave the {OBJECT} to",
    "{S} showed a {OBJECT} to",
    "then {S} lent the {OBJECT} to",
    "{S} sold a {OBJECT} to",
    "{S} read a {OBJECT} to",
    "later {S} handed the {OBJECT} back to",
    "{S} wanted to give a {OBJECT} to",
    "{S} quietly passed the {OBJECT} to",
    "{S} said goodbye to",
    "{S} smiled at",
    "{S} waved to",
    "{S} made a {OBJECT} for",
]
_SUCCESSOR_FRAMES = [
    (["The", "meeting", "is", "on"], ["the", "next", "one", "is", "on"]),
    (["We", "reached", "page"], ["and", "then", "turned", "to", "page"]),
    (["The", "train", "came", "in"], ["and", "the", "one", "after", "came", "in"]),
    (["My", "ticket", "says"], [",", "so", "yours", "says"]),
    (["First", "there", "was"], [",", "and", "after", "that", "came"]),
    (["It", "is", "now"], [".", "Soon", "it", "will", "be"]),
    (["The", "list", "stopped", "at"], [";", "the", "item", "after", "it", "is"]),
]
_SUCCESSOR_LISTS = ["numbers", "number_words", "ordinals", "days", "months", "letters", "roman_numerals"]
_ICL_WORDS = ["apple", "river", "stone", "cloud", "house", "water", "paper", "music", "table", "green", "light",
              "night", "world", "money", "horse", "garden", "window", "doctor", "summer", "winter", "orange",
              "silver", "forest", "bridge", "market", "planet", "number", "letter", "family", "school", "island",
              "animal", "mountain", "ocean", "train", "plant", "chair", "phone", "story", "power", "dream", "heart",
              "field", "glass", "voice", "bread", "cat", "dog", "sun", "moon", "tree", "book", "bird", "fish",
              "king", "queen", "city", "road", "door", "ship"]
_ICL_SEPARATORS: list[list[str]] = [[], [":"], ["-", ">"], ["="]]
_ICL_TASKS = ("successor", "predecessor", "capitalize", "lowercase", "first_letter", "copy")


@functools.cache
def _ioi_data() -> dict[str, Any]:
    folder = importlib.resources.files("headzoo").joinpath("_data/ioi")
    names = json.loads(folder.joinpath("names.json").read_text(encoding="utf-8"))["names"]
    doc = json.loads(folder.joinpath("templates.json").read_text(encoding="utf-8"))
    return {"names": list(names), "templates": list(doc["templates"]), "places": list(doc["places"]),
            "objects": list(doc["objects"])}


def held_out_ioi_templates() -> list[str]:
    """headzoo's built-in IOI probe templates: never generated by the curriculum."""
    return list(_ioi_data()["templates"])


def ioi_frames() -> list[tuple[str, str]]:
    """Every (intro, action) frame the curriculum's IOI sentences are written in."""
    return [(i, a) for i in _IOI_INTROS for a in _IOI_ACTIONS]


def _words_of(text: str) -> list[str]:
    """``text`` split as BERT's pre-tokenizer splits it: runs of word characters, and each
    punctuation character alone."""
    return re.findall(r"\w+|[^\w\s]", text)


@functools.cache
def _probe_words() -> list[str]:
    """Words headzoo's built-in probes write, so each is one token in the zoo tokenizer: the IOI
    lists and templates, the successor and in-context task lists, and the relation data."""
    from headzoo._icl_tasks import ICL_TASKS
    from headzoo._succession import _TEMPLATES

    words: list[str] = []
    data = _ioi_data()
    words += data["names"] + data["places"] + data["objects"]
    for t in data["templates"]:
        words += _words_of(re.sub(r"\{\w+\}", " ", t))
    for items, _ in ORDINAL_LISTS.values():
        words += [w for w in items if not (w.isdigit() and int(w) > 100)]
    for family in _TEMPLATES.values():
        for t in family:
            words += _words_of(t.replace("{X}", " "))
    for _, pairs in ICL_TASKS.values():
        for x, y in pairs:
            words += [x, y]
    folder = importlib.resources.files("headzoo").joinpath("_data/relations")
    for name in ("antonyms", "plural", "capitalisation", "country_capital", "successor"):
        for x, y in json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8"))["pairs"]:
            words += [*_words_of(x), *_words_of(y)]
    return words


@functools.cache
def _whole_words() -> tuple[str, ...]:
    """The vocabulary's word-initial entries (no ``##`` continuation pieces)."""
    return tuple(w for w in vocabulary() if not w.startswith("##"))


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """The tokenizer's vocabulary after ``<bos>`` and ``<unk>``: whole words first (curriculum
    and probes), then syllables and characters as word-initial pieces and as ``##`` pieces."""
    out: list[str] = []
    seen: set[str] = set()

    def add(ws: Sequence[str]) -> None:
        for w in ws:
            if w and w not in seen and not any(c.isspace() for c in w):
                seen.add(w)
                out.append(w)

    add(list(".,?:;!'\"()-=>"))
    add(_DET + _ADJ + _NOUN + _VERB + _PREP + _CONJ + _SAID + _VALUES + _MARKERS)
    add([w for g in _GROUPS for w in g])
    add([w.capitalize() for w in _DET + _CONJ])
    frames = [*_IOI_INTROS, *_IOI_ACTIONS] + [" ".join(a + b) for a, b in _SUCCESSOR_FRAMES]
    glue = ["what", "was", "is", "code", "of", "?", "but", "not", "words", "list", "count", "on", "in", "to",
            "The", "code", "Q", "says", "He", "She", "They", "It", "There", "quote", "later", "next"]
    add(glue)
    for f in frames:
        add(_words_of(re.sub(r"\{\w+\}", " ", f)))
    add(_ICL_WORDS + [w.capitalize() for w in _ICL_WORDS])
    add(_probe_words())
    add([str(i) for i in range(101)])
    add(list(string.ascii_letters + string.digits))
    add(_SYLLABLES)
    add(["##" + s for s in _SYLLABLES])
    add(["##" + c for c in string.ascii_letters + string.digits])
    add(list(string.punctuation))
    # Latin-1 letters and symbols and common typography, so real text has no unknown token
    extra = [chr(c) for c in range(0xA1, 0x100) if not chr(c).isspace() and chr(c) != "\xad"] + list("—–‘’“”…€‽")
    add(extra)
    add(["##" + c for c in extra])
    return tuple(out)


def tokenizer(*, directory: str | os.PathLike[str] | None = None) -> Any:
    """The zoo v2 tokenizer: WordPiece over :func:`vocabulary`, ids ``[<bos>, <unk>, *words]``.

    Saved in Hugging Face format and loaded back with ``AutoTokenizer.from_pretrained``, like a
    hub tokenizer. By default it goes to a folder under the system temp directory named by a
    hash of the vocabulary, reused across calls.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = [BOS, UNK, *vocabulary()]
    if directory is None:
        digest = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
        directory = Path(tempfile.gettempdir()) / "headzoo-tokenizers" / f"zoo-v2-{digest}"
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        core = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token=UNK, max_input_chars_per_word=100))
        core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        core.decoder = decoders.WordPiece(prefix="##")
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS, unk_token=UNK, pad_token=BOS)
        tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent if directory.parent.exists() else None))
        tok.save_pretrained(tmp)
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.replace(directory)
        except OSError:  # another process saved it first
            pass
    return AutoTokenizer.from_pretrained(str(directory))


class _Pieces:
    """Words to ids the way the WordPiece tokenizer spells them (greedy longest match first),
    cached per word; equal to the tokenizer's own encoding (tested)."""

    def __init__(self, first_id: int = 2) -> None:
        self.index = {w: first_id + i for i, w in enumerate(vocabulary())}
        self.unk = first_id - 1
        self.cache: dict[str, list[int]] = {}

    def __call__(self, word: str) -> list[int]:
        got = self.cache.get(word)
        if got is None:
            got = self.cache[word] = self._spell(word)
        return got

    def _spell(self, word: str) -> list[int]:
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.index:
                    out.append(self.index[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return out


@dataclasses.dataclass(frozen=True)
class CurriculumV2:
    """Seeded, streaming training sequences of ``n_ctx`` token ids with a task label per token.

    Attributes:
        n_ctx: tokens per sequence (position 0 is BOS).
        seed: seeds the stream.
        weights: relative frequency of each segment kind, in :data:`TASKS` order.
        bos_id: the BOS id; word ids start at ``first_id`` (the tokenizer's layout).
    """

    n_ctx: int = 128
    seed: int = 0
    weights: tuple[float, ...] = (0.10, 0.13, 0.07, 0.13, 0.04, 0.09, 0.14, 0.08, 0.10, 0.12)
    bos_id: int = 0
    first_id: int = 2

    def __post_init__(self) -> None:
        if len(self.weights) != len(TASKS):
            raise ValueError(f"weights needs {len(TASKS)} values ({TASKS}); got {self.weights}")
        if self.n_ctx < 48:
            raise ValueError(f"n_ctx must be at least 48; got {self.n_ctx}")

    @functools.cached_property
    def _pieces(self) -> _Pieces:
        return _Pieces(self.first_id)

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One sequence: ``(ids, task labels)``; the label of position ``i`` is the task of
        predicting token ``i`` (so the loss at position ``i - 1`` belongs to it)."""
        ids, tasks = [self.bos_id], [0]
        pending: list[tuple[list[str], list[str]]] = []  # retrieval questions still to ask
        p = np.asarray(self.weights) / np.sum(self.weights)
        while len(ids) < self.n_ctx:
            if pending and (rng.random() < 0.25 or len(ids) > self.n_ctx - 24):
                lead, answer = pending.pop(0)
                self._emit(ids, tasks, ["what", "was", *lead[:-1], "?", *lead], 0)
                self._emit(ids, tasks, answer, TASKS.index("retrieval"))
                self._emit(ids, tasks, ["."], 0)
                continue
            kind = TASKS[int(rng.choice(len(TASKS), p=p))]
            if kind == "retrieval":
                lead, value = self._fact(rng)
                self._emit(ids, tasks, lead + value + ["."], 0)
                pending.append((lead, value))
                continue
            for words, label in getattr(self, "_" + kind)(rng):
                self._emit(ids, tasks, words, TASKS.index(label) if label else 0)
        return ids[: self.n_ctx], tasks[: self.n_ctx]

    def text(self, rng: np.random.Generator) -> str:
        """One sequence as text (without BOS), for reading and for tokenizer checks."""
        words = [BOS, UNK, *vocabulary()]
        out: list[str] = []
        for i in self.sequence(rng)[0][1:]:
            w = words[i]
            if w.startswith("##") and out:
                out[-1] += w[2:]
            else:
                out.append(w)
        return " ".join(out)

    def _emit(self, ids: list[int], tasks: list[int], words: Sequence[str], task: int) -> None:
        for w in words:
            pieces = self._pieces(w)
            ids.extend(pieces)
            tasks.extend([task] * len(pieces))

    # -- segment kinds: each returns [(words, label or None), ...] ------------------------------
    @staticmethod
    def _pick(rng: np.random.Generator, xs: Sequence[_T]) -> _T:
        return xs[int(rng.integers(len(xs)))]

    def _invented(self, rng: np.random.Generator) -> str:
        """A made-up word of 2-3 syllables, spelled in several pieces (never a vocabulary word,
        such as "Karen" = "ka" + "ren")."""
        while True:
            n = int(rng.integers(2, 4))
            word = "".join(self._pick(rng, _SYLLABLES) for _ in range(n))
            word = word.capitalize() if rng.random() < 0.5 else word
            if word not in self._pieces.index and word.capitalize() not in self._pieces.index and word.lower() not in self._pieces.index:
                return word

    def _sentence(self, rng: np.random.Generator) -> list[str]:
        pick = functools.partial(self._pick, rng)
        subject = [pick(_DET), pick(_ADJ), pick(_NOUN)] if rng.random() < 0.7 else [self._invented(rng).capitalize()]
        words = subject + [pick(_VERB), pick(_DET), pick(_NOUN)]
        r = rng.random()
        if r < 0.3:
            words += [pick(_PREP), pick(_DET), pick(_NOUN)]
        elif r < 0.45:
            words += [",", pick(_CONJ), pick(_DET), pick(_NOUN), pick(_VERB), "it"]
        elif r < 0.55:
            words += ["(", pick(_ADJ), self._invented(rng), ")"]
        elif r < 0.65:
            words += [",", pick(_SAID), self._invented(rng).capitalize()]
        words[0] = words[0][:1].upper() + words[0][1:]
        if rng.random() < 0.1:  # a quoted sentence
            return ['"', *words, '"', ",", pick(_SAID), self._invented(rng).capitalize(), "."]
        return words + ["."]

    def _filler(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        return [(self._sentence(rng), "filler") for _ in range(int(rng.integers(1, 3)))]

    def _random_words(self, rng: np.random.Generator, n: int) -> list[str]:
        """n distinct words: whole vocabulary words, about one in ten an invented multi-piece word."""
        pool = _whole_words()
        words = [pool[i] if rng.random() > 0.1 else self._invented(rng) for i in rng.choice(len(pool), n, replace=False)]
        while len(set(words)) < n:  # an invented word that happens to repeat another
            words = list(dict.fromkeys(words)) + [pool[int(rng.integers(len(pool)))]]
        return words

    def _induction(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        long = rng.random() < 0.3
        n = int(rng.integers(12, max(13, self.n_ctx // 4))) if long else int(rng.integers(4, 12))
        span = self._random_words(rng, n)
        out: list[tuple[list[str], str | None]] = [(span, None)]
        if not long and rng.random() < 0.5:
            out.append((self._sentence(rng), "filler"))
        return out + [(span[:1], None), (span[1:], "induction")]

    def _ngram(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        alphabet = self._random_words(rng, 6)
        table = rng.integers(0, len(alphabet), size=(len(alphabet), len(alphabet)))
        for x in range(len(alphabet)):  # no context that repeats one word for ever
            if table[x, x] == x:
                table[x, x] = (x + 1 + int(rng.integers(len(alphabet) - 1))) % len(alphabet)
        a, b = (int(x) for x in rng.integers(0, len(alphabet), 2))
        seq = [a, b]
        for _ in range(int(rng.integers(20, 36))):
            seq.append(int(table[seq[-2], seq[-1]]))
        words = [alphabet[i] for i in seq]
        # the first occurrences of each context cannot be predicted; label only the rest
        out: list[tuple[list[str], str | None]] = [(words[:2], None)]
        seen: set[tuple[int, int]] = set()
        for i in range(2, len(seq)):
            ctx = (seq[i - 2], seq[i - 1])
            out.append(([words[i]], "ngram" if ctx in seen else None))
            seen.add(ctx)
        return out

    def _successor(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        name = self._pick(rng, _SUCCESSOR_LISTS)
        items, cyclic = ORDINAL_LISTS[name]
        items = items[:100] if name == "numbers" else items
        i = int(rng.integers(len(items) if cyclic else len(items) - 1))
        item, nxt = items[i], items[(i + 1) % len(items)]
        lead, cue = _SUCCESSOR_FRAMES[int(rng.integers(len(_SUCCESSOR_FRAMES)))]
        out: list[tuple[list[str], str | None]] = [(lead + [item], None)]
        if rng.random() < 0.6:  # put the item several tokens back, beyond any bigram
            out.append((self._sentence(rng), "filler"))
        return out + [(cue, None), ([nxt], "successor"), (["."], None)]

    def _ordinal(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        name = self._pick(rng, _SUCCESSOR_LISTS)
        items = list(ORDINAL_LISTS[name][0])[:60]
        n = int(rng.integers(3, 6))
        start = int(rng.integers(0, len(items) - n + 1))
        return [(["count", items[start]], None), (items[start + 1 : start + n], "ordinal"), (["."], None)]

    def _seen(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        pool = self._random_words(rng, int(rng.integers(5, 10)))
        out: list[tuple[list[str], str | None]] = [(["words", ":"], None)]
        past: set[str] = set()
        for _ in range(int(rng.integers(6, 14))):
            w = self._pick(rng, pool)
            out += [([w], None), (["seen" if w in past else "new"], "seen")]
            past.add(w)
        return out + [(["."], None)]

    def _ioi(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        data = _ioi_data()
        io, s = (str(x) for x in rng.choice(data["names"], 2, replace=False))
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        intro, action = self._pick(rng, _IOI_INTROS), self._pick(rng, _IOI_ACTIONS)
        fill = {"A": a, "B": b, "S": s, "PLACE": self._pick(rng, data["places"] + _NOUN[:20]),
                "OBJECT": self._pick(rng, data["objects"] + _ICL_WORDS[:20])}
        words = _words_of(re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], f"{intro} {action}"))
        if words[-1] not in ("to", "at", "for"):
            raise AssertionError(words)
        return [(words, None), ([io], "ioi"), (["."], None)]

    def _except(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        group = list(_GROUPS[int(rng.integers(len(_GROUPS)))])
        order = [group[i] for i in rng.permutation(len(group))]
        shown, missing = order[:-1], order[-1]
        listed: list[str] = []
        for w in shown[:-1]:
            listed += [w, ","]
        listed += ["and", shown[-1]]
        lead = self._pick(rng, [["We", "have"], ["The", "box", "holds"], ["She", "named"], ["They", "saw"]])
        return [(lead + listed + ["but", "not"], None), ([missing], "except"), (["."], None)]

    def _icl(self, rng: np.random.Generator) -> list[tuple[list[str], str | None]]:
        task = self._pick(rng, _ICL_TASKS)
        pairs = _icl_pairs(task)
        chosen = [pairs[i] for i in rng.choice(len(pairs), int(rng.integers(4, 7)), replace=False)]
        sep = _ICL_SEPARATORS[int(rng.integers(len(_ICL_SEPARATORS)))]
        out: list[tuple[list[str], str | None]] = []
        for k, (x, y) in enumerate(chosen):
            out.append(([x, *sep], None))
            # the first demonstration cannot be known; the rest can, from the task the others show
            out.append(([y], "icl" if k >= 2 else None))
            out.append(([","] if sep else [], None))
        return out + [(["."], None)]

    def _fact(self, rng: np.random.Generator) -> tuple[list[str], list[str]]:
        noun, adj = self._pick(rng, _NOUN), self._pick(rng, _ADJ)
        return ["the", "code", "of", "the", adj, noun, "is"], [self._pick(rng, _VALUES)]

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless ``(ids [batch, n_ctx], tasks [batch, n_ctx])`` batches; batch ``k`` depends
        only on ``(seed, k)``, so a resumed run continues exactly where it stopped."""
        k = start
        while True:
            rng = np.random.default_rng([self.seed, k])
            rows = [self.sequence(rng) for _ in range(batch_size)]
            yield (torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]))
            k += 1


@functools.cache
def _icl_pairs(task: str) -> list[tuple[str, str]]:
    if task in ("successor", "predecessor"):
        pairs: list[tuple[str, str]] = []
        for name in ("numbers", "number_words", "days", "months", "letters"):
            items, cyclic = ORDINAL_LISTS[name]
            items = items[:30] if name == "numbers" else items
            nxt = list(zip(items[:-1], items[1:])) + ([(items[-1], items[0])] if cyclic else [])
            pairs += nxt if task == "successor" else [(y, x) for x, y in nxt]
        return pairs
    fn: dict[str, Callable[[str], str]] = {"capitalize": str.capitalize, "lowercase": str.lower,
                                           "first_letter": lambda w: w[0], "copy": lambda w: w}
    return [(w.capitalize(), w) if task == "lowercase" else (w, fn[task](w)) for w in _ICL_WORDS]
