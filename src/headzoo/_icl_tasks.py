"""Synthetic in-context-learning tasks, built for a model's own tokenizer, and their prompts.

Function vectors (Todd et al. 2024, arXiv 2310.15213) are found with in-context tasks: a prompt
shows ``n`` input-output pairs of one task and ends with a query input, and the model must
produce the query's output. headzoo ships tasks that need no data set (successor, capitalise,
first letter) and takes users' own with :meth:`ICLTask.from_pairs`. A pair is usable only where
its input and its output are each one token for the tokenizer (tried with a leading space
first, as they follow another token in a prompt, then bare); coverage is reported per task.

Prompts are built from token ids, not text: ``[BOS] x1 y1 SEP x2 y2 SEP ... xq``, the answer
being ``yq``. ``SEP`` is ``"\\n"`` where that is one token for the tokenizer (``"auto"``), a
user's one-token string, or nothing (a whole-word tokenizer that splits on whitespace has no
newline token).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int

from headzoo._errors import InvalidOptionError, UnsupportedTokenizerError
from headzoo._ordinal import ORDINAL_LISTS

__all__ = ["ICLTask", "ICL_TASKS", "icl_tasks", "separator_id", "ICLPrompts", "build_prompts"]

#: common lowercase words (nouns and adjectives) for the word-level built-ins
_WORDS = (
    "apple", "river", "stone", "cloud", "house", "water", "paper", "music", "table", "green", "light", "night",
    "world", "money", "horse", "garden", "window", "doctor", "summer", "winter", "orange", "silver", "forest",
    "bridge", "market", "planet", "number", "letter", "family", "school", "island", "animal", "mountain", "ocean",
    "train", "plant", "chair", "phone", "story", "power", "dream", "heart", "field", "glass", "voice", "bread",
    "cat", "dog", "sun", "moon", "tree", "book", "bird", "fish", "king", "queen", "city", "road", "door", "ship",
)


def _successor_pairs() -> tuple[tuple[str, str], ...]:
    """Consecutive items of the ordinal lists: numbers 0-30, number words, letters (both
    cases), weekdays and months (these two wrap around)."""
    lists: list[tuple[tuple[str, ...], bool]] = [
        (tuple(str(i) for i in range(0, 31)), False),
        ORDINAL_LISTS["number_words"],
        ORDINAL_LISTS["letters"],
        (tuple(c.lower() for c in ORDINAL_LISTS["letters"][0]), False),
        ORDINAL_LISTS["days"],
        ORDINAL_LISTS["months"],
    ]
    out: list[tuple[str, str]] = []
    for items, cyclic in lists:
        out.extend(zip(items[:-1], items[1:]))
        if cyclic:
            out.append((items[-1], items[0]))
    return tuple(out)


#: name -> (what the task asks, candidate (input, output) pairs)
ICL_TASKS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "successor": ("the next item of an ordinal list (numbers, letters, weekdays, months)", _successor_pairs()),
    "capitalize": ("the same word capitalised", tuple((w, w.capitalize()) for w in _WORDS)),
    "first_letter": ("the word's first letter", tuple((w, w[0]) for w in _WORDS)),
}

Pair = tuple[str, str] | tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ICLTask:
    """An in-context task: (input, output) pairs that each prompt samples from.

    Attributes:
        name: the task's name, reported with its effects.
        pairs: ``(input, output)`` strings (or token ids); once bound, only the usable ones.
        ids: ``(input id, output id)`` per kept pair for the tokenizer the task was bound to;
            empty while unbound.
        candidates: pairs before the tokenizer filter (``coverage = len(ids) / candidates``).
        description: what the task asks.
    """

    name: str
    pairs: tuple[Pair, ...]
    ids: tuple[tuple[int, int], ...] = ()
    candidates: int = 0
    description: str = ""

    @classmethod
    def from_pairs(cls, name: str, pairs: Sequence[Pair], description: str = "") -> ICLTask:
        """A user's task from ``[(input, output), ...]``: strings (kept where both are single
        tokens for the model's tokenizer) or integer token ids (for models without one).

        Raises:
            InvalidOptionError: an empty name, fewer than two pairs, or a pair that is not two
                strings / two ids.
        """
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"ICLTask needs a non-empty name string; got {name!r}")
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise InvalidOptionError(f"task {name!r}: pairs must be a list of (input, output) pairs; got {type(pairs).__name__}")
        out: list[Pair] = []
        for p in pairs:
            if not (isinstance(p, (tuple, list)) and len(p) == 2):
                raise InvalidOptionError(f"task {name!r}: each pair must be (input, output); got {p!r}")
            a, b = p
            if isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip():
                out.append((a, b))
            elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (a, b)):
                out.append((int(a), int(b)))
            else:
                raise InvalidOptionError(
                    f"task {name!r}: a pair must be two non-blank strings or two non-negative token ids; got {p!r}"
                )
        if len(out) < 2:
            raise InvalidOptionError(f"task {name!r} needs at least two pairs (a prompt shows some and asks another); got {len(out)}")
        return cls(name, tuple(out), (), len(out), description)

    @property
    def bound(self) -> bool:
        """Whether :attr:`ids` were resolved for a tokenizer."""
        return bool(self.ids)

    @property
    def coverage(self) -> float:
        """Share of the candidate pairs that survived the tokenizer filter (NaN while unbound)."""
        return len(self.ids) / self.candidates if self.bound and self.candidates else math.nan

    def bind(self, model_or_tokenizer: Any) -> ICLTask:
        """This task with the pairs that are single tokens for ``model_or_tokenizer`` and their ids.

        Inputs and outputs are tried as ``" x"`` first (in a prompt they follow another token),
        then as ``"x"``. A pair whose output is its input's token, or whose input repeats an
        earlier pair's, is left out (the prompt could not tell the task apart from copying, or
        the answer would be ambiguous). Token-id pairs are kept where both ids are in the
        vocabulary. The result may hold no pair: check :attr:`ids`.
        """
        tokenizer, n_vocab = _tokenizer_of(model_or_tokenizer)
        banned = _banned(tokenizer)
        ids: list[tuple[int, int]] = []
        kept: list[Pair] = []
        seen: set[int] = set()
        for a, b in self.pairs:
            if isinstance(a, int):
                pair = (a, int(b)) if n_vocab is None or max(a, int(b)) < n_vocab else None
            elif tokenizer is None:
                raise UnsupportedTokenizerError(
                    f"task {self.name!r} is given as strings but the model has no tokenizer; give token-id pairs "
                    "(ICLTask.from_pairs(name, [(input_id, output_id), ...])) or load the model with its tokenizer"
                )
            else:
                x, y = _one_token(tokenizer, a, banned, n_vocab), _one_token(tokenizer, b, banned, n_vocab)
                pair = None if x is None or y is None else (x, y)
            if pair is None or pair[0] == pair[1] or pair[0] in seen:
                continue
            seen.add(pair[0])
            ids.append(pair)
            kept.append((a, b))  # type: ignore[arg-type]
        return dataclasses.replace(self, pairs=tuple(kept), ids=tuple(ids), candidates=len(self.pairs))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_pairs": len(self.ids) if self.bound else len(self.pairs),
                "candidates": self.candidates, "coverage": None if not self.bound else self.coverage}

    def __repr__(self) -> str:
        state = f"{len(self.ids)}/{self.candidates} pairs usable" if self.bound else f"{len(self.pairs)} pairs, unbound"
        return f"ICLTask({self.name!r}, {state})"


def _tokenizer_of(obj: Any) -> tuple[Any, int | None]:
    """``(tokenizer or None, vocabulary size or None)`` of a model or a tokenizer."""
    cfg = getattr(obj, "cfg", None)
    if cfg is not None:  # a TransformerLens model
        return getattr(obj, "tokenizer", None), int(cfg.d_vocab)
    if obj is None:
        return None, None
    if not callable(getattr(obj, "encode", None)):
        raise InvalidOptionError(f"expected a TransformerLens model or a Hugging Face tokenizer; got {type(obj).__name__}")
    return obj, None


def _banned(tokenizer: Any) -> set[int]:
    if tokenizer is None:
        return set()
    banned = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        banned.add(int(unk))
    return banned


def _one_token(tokenizer: Any, text: str, banned: set[int], n_vocab: int | None) -> int | None:
    """The id of ``" text"`` or else ``"text"`` when that is one ordinary token."""
    for form in (" " + text, text):
        try:
            ids = tokenizer.encode(form, add_special_tokens=False)
        except Exception:  # a tokenizer that cannot encode the text cannot express it
            continue
        if len(ids) == 1 and int(ids[0]) not in banned and (n_vocab is None or int(ids[0]) < n_vocab):
            return int(ids[0])
    return None


def icl_tasks(model_or_tokenizer: Any, names: Any = None, *, min_pairs: int = 4) -> list[ICLTask]:
    """In-context tasks bound to a model's tokenizer (see :meth:`ICLTask.bind`).

    Args:
        model_or_tokenizer: a TransformerLens model or a Hugging Face tokenizer.
        names: ``None`` for every built-in task (:data:`ICL_TASKS`) that keeps ``min_pairs``
            pairs; or a list of built-in names and :class:`ICLTask` objects (user tasks), each of
            which must keep ``min_pairs``.
        min_pairs: pairs a task needs to be kept.

    Returns:
        The bound tasks; each has ``coverage`` (kept / candidate pairs).

    Raises:
        UnsupportedTokenizerError: a named task keeps fewer than ``min_pairs`` pairs, or (with
            ``names=None``) no built-in task does; the message gives each task's coverage.
        InvalidOptionError: an unknown name, or ``min_pairs`` below 2.
    """
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, int) or min_pairs < 2:
        raise InvalidOptionError(f"min_pairs must be an integer >= 2; got {min_pairs!r}")
    explicit = names is not None
    wanted = _as_tasks(names)
    tokenizer, _ = _tokenizer_of(model_or_tokenizer)
    if tokenizer is None and any(isinstance(t.pairs[0][0], str) for t in wanted):
        string_tasks = [t.name for t in wanted if isinstance(t.pairs[0][0], str)]
        raise UnsupportedTokenizerError(
            f"the in-context tasks {string_tasks} are spelled as text but the model has no tokenizer. Load the "
            "model with its tokenizer, or give token-id tasks: hz.ICLTask.from_pairs(name, [(input_id, output_id), ...])"
        )
    bound = [t.bind(model_or_tokenizer) for t in wanted]
    ok = [t for t in bound if len(t.ids) >= min_pairs]
    short = [t for t in bound if len(t.ids) < min_pairs]
    coverage = ", ".join(f"{t.name}: {len(t.ids)}/{t.candidates}" for t in bound)
    if (explicit and short) or not ok:
        which = short if explicit else bound
        raise UnsupportedTokenizerError(
            f"in-context task(s) {[t.name for t in which]} keep fewer than {min_pairs} pairs whose input and output are "
            f"single tokens for this tokenizer (usable/candidate pairs: {coverage}). Give tasks of your own with "
            "hz.ICLTask.from_pairs(name, [(input, output), ...]) spelled in words the tokenizer has."
        )
    return ok


def _as_tasks(names: Any) -> list[ICLTask]:
    if names is None:
        return [ICLTask(n, pairs, (), len(pairs), desc) for n, (desc, pairs) in ICL_TASKS.items()]
    items = [names] if isinstance(names, (str, ICLTask)) else names
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidOptionError(
            f"tasks must be None, a built-in task name {sorted(ICL_TASKS)}, an hz.ICLTask, or a non-empty list of them; got {names!r}"
        )
    out: list[ICLTask] = []
    for item in items:
        if isinstance(item, ICLTask):
            out.append(item)
        elif isinstance(item, str) and item in ICL_TASKS:
            desc, pairs = ICL_TASKS[item]
            out.append(ICLTask(item, pairs, (), len(pairs), desc))
        else:
            import difflib

            near = difflib.get_close_matches(str(item), list(ICL_TASKS), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise InvalidOptionError(
                f"unknown in-context task {item!r}.{hint} Built-in tasks: {sorted(ICL_TASKS)}; or pass "
                "hz.ICLTask.from_pairs(name, pairs)."
            )
    task_names = [t.name for t in out]
    if len(set(task_names)) != len(task_names):
        raise InvalidOptionError(f"task names must be distinct; got {task_names}")
    return out


def separator_id(tokenizer: Any, separator: str) -> int | None:
    """The token between a prompt's pairs: ``"auto"`` is ``"\\n"`` where that is one token (else
    none), ``""`` is none, any other string must be one token.

    Raises:
        UnsupportedTokenizerError: an explicit separator that is not one token (or no tokenizer).
    """
    if separator == "":
        return None
    if tokenizer is None:
        if separator == "auto":
            return None
        raise UnsupportedTokenizerError(f"separator={separator!r} needs a tokenizer; the model has none (use separator='')")
    text = "\n" if separator == "auto" else separator
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode it has no such token
        ids = []
    if len(ids) == 1 and int(ids[0]) not in _banned(tokenizer):
        return int(ids[0])
    if separator == "auto":
        return None
    raise UnsupportedTokenizerError(
        f"separator={separator!r} is {len(ids)} tokens for this tokenizer, not one; pick a one-token separator or '' for none"
    )


@dataclasses.dataclass(frozen=True)
class ICLPrompts:
    """One task's clean and corrupted prompt blocks.

    Attributes:
        clean: ``[n, pos]`` prompts ``[BOS] x1 y1 SEP ... xq`` with the task's true pairs.
        corrupted: ``[n, pos]`` other prompts of the same task whose shot outputs are deranged
            (each shot shows another shot's output: the labels are shuffled, Todd et al.'s
            corruption), the query unchanged.
        clean_answer, answer: ``[n]`` the query's correct output in ``clean`` / ``corrupted``.
    """

    clean: Int[torch.Tensor, "n pos"]
    clean_answer: Int[torch.Tensor, " n"]
    corrupted: Int[torch.Tensor, "n pos"]
    answer: Int[torch.Tensor, " n"]


def _derangement(n: int, g: torch.Generator) -> list[int]:
    """A uniformly drawn permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    while True:
        perm = torch.randperm(n, generator=g).tolist()
        if all(p != i for i, p in enumerate(perm)):
            return perm


def build_prompts(
    task: ICLTask, n_prompts: int, n_shots: int, seed: int, *, bos: int | None, sep: int | None
) -> ICLPrompts:
    """``n_prompts`` clean and ``n_prompts`` corrupted prompts of a bound ``task``.

    Each prompt draws ``n_shots + 1`` distinct pairs (the last is the query) from a generator
    seeded by ``seed`` and the task's name, so a task's prompts do not depend on which other
    tasks run. Clean and corrupted prompts are drawn independently, as in Todd et al.
    """
    if isinstance(n_shots, bool) or not isinstance(n_shots, int) or n_shots < 2:
        raise InvalidOptionError(f"n_shots must be an integer >= 2 (shuffling one shot's label changes nothing); got {n_shots!r}")
    if not task.bound:
        raise InvalidOptionError(f"task {task.name!r} is not bound to a tokenizer; use hz.icl_tasks(model, [task])")
    if len(task.ids) < n_shots + 1:
        raise UnsupportedTokenizerError(
            f"task {task.name!r} has {len(task.ids)} usable pairs; a prompt of n_shots={n_shots} needs {n_shots + 1} "
            "distinct ones. Lower n_shots or give the task more pairs."
        )
    # a stable per-task stream: the sum of the name's bytes times a large prime, plus the seed
    g = torch.Generator().manual_seed(seed * 1_000_003 + sum(task.name.encode()) * 7919)
    pairs = torch.tensor(task.ids, dtype=torch.long)

    def block(corrupt: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows, answers = [], []
        for _ in range(n_prompts):
            chosen = pairs[torch.randperm(len(pairs), generator=g)[: n_shots + 1]]
            xs, ys = chosen[:-1, 0].tolist(), chosen[:-1, 1].tolist()
            if corrupt:
                ys = [ys[j] for j in _derangement(n_shots, g)]
            row = [] if bos is None else [bos]
            for x, y in zip(xs, ys):
                row += [x, y] + ([] if sep is None else [sep])
            rows.append(row + [int(chosen[-1, 0])])
            answers.append(int(chosen[-1, 1]))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(answers, dtype=torch.long)

    clean, clean_answer = block(False)
    corrupted, answer = block(True)
    return ICLPrompts(clean, clean_answer, corrupted, answer)

