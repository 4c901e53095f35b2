"""Ordinal sequences for successor heads, built for a model's own tokenizer.

Gould et al. (2023, arXiv 2312.09230) probe successor heads with ordinal lists: numbers,
number words, ordinals, days, months (and their prefixes), letters and Roman numerals. A pair
``(t, successor(t))`` can only be tested where both are single tokens, so each list is
tokenised in the forms ``"X"`` and ``" X"``, and a task keeps the items that are single,
distinct, non-special tokens. Lists a tokenizer cannot express are reported, never dropped
silently. Models without a natural-language tokenizer take explicit token-id sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from headzoo._errors import InvalidOptionError, InvalidTokensError

__all__ = ["OrdinalTask", "ORDINAL_LISTS", "ordinal_tasks", "as_tasks"]

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_ROMAN = "I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX XX".split()

#: name -> (items in order, cyclic): the lists of Gould et al. (2023)
ORDINAL_LISTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "numbers": (tuple(str(i) for i in range(1, 201)), False),
    "number_words": (tuple(_NUMBER_WORDS), False),
    "ordinals": (tuple(_ORDINALS), False),
    "days": (tuple(_DAYS), True),
    "day_prefixes": (tuple(d[:3] for d in _DAYS), True),
    "months": (tuple(_MONTHS), True),
    "month_prefixes": (tuple(m[:3] for m in _MONTHS), True),
    "letters": (tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)), False),
    "roman_numerals": (tuple(_ROMAN), False),
}

_FORMS = {"bare": "{}", "space": " {}"}


@dataclass(frozen=True)
class OrdinalTask:
    """An ordered sequence of single tokens: each token's successor is the next one.

    Attributes:
        name: task name, reported with its accuracy.
        token_ids: the sequence, at least two distinct ids.
        cyclic: the last token's successor is the first (days, months).
        items: the text of each token, where known (empty for explicit id sequences).
    """

    name: str
    token_ids: tuple[int, ...]
    cyclic: bool = False
    items: tuple[str, ...] = ()

    def pairs(self) -> list[tuple[int, int]]:
        """``(token, successor)`` pairs, wrapping around for cyclic tasks."""
        ids = self.token_ids
        out = list(zip(ids[:-1], ids[1:]))
        if self.cyclic and len(ids) > 2:
            out.append((ids[-1], ids[0]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "token_ids": list(self.token_ids), "cyclic": self.cyclic, "items": list(self.items)}


def _single_token(tokenizer: Any, text: str, banned: set[int]) -> int | None:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode the text cannot express the item
        return None
    if len(ids) != 1 or int(ids[0]) in banned:
        return None
    return int(ids[0])


def ordinal_tasks(tokenizer: Any, *, n_vocab: int | None = None) -> tuple[list[OrdinalTask], dict[str, str]]:
    """The built-in ordinal lists, as single-token tasks for ``tokenizer``.

    Every list is tried in the forms ``"X"`` and ``" X"``. Within a form, items that are not
    a single, non-special, in-vocabulary token are left out (and the sequence bridges over
    them only where they are missing at the ends: a gap in the middle splits the list, so a
    pair is always two consecutive items). Forms that give the same ids as another form are
    merged.

    Returns:
        ``(tasks, skipped)``: the usable tasks (name ``"<list>"`` or ``"<list>_space"``) and,
        for every list/form that yielded no pair, why.
    """
    if tokenizer is None:
        return [], {name: "the model has no tokenizer" for name in ORDINAL_LISTS}
    banned = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        banned.add(int(unk))
    tasks: list[OrdinalTask] = []
    skipped: dict[str, str] = {}
    seen: dict[tuple[int, ...], str] = {}
    for list_name, (items, cyclic) in ORDINAL_LISTS.items():
        for form, pattern in _FORMS.items():
            name = list_name if form == "bare" else f"{list_name}_{form}"
            ids = [_single_token(tokenizer, pattern.format(item), banned) for item in items]
            ids = [i if i is not None and (n_vocab is None or i < n_vocab) else None for i in ids]
            # keep the longest run of consecutive expressible items, so pairs are true successors
            best: tuple[int, int] = (0, 0)
            start = 0
            for j in range(len(ids) + 1):
                if j == len(ids) or ids[j] is None:
                    if j - start > best[1] - best[0]:
                        best = (start, j)
                    start = j + 1
            run = ids[best[0] : best[1]]
            run_items = items[best[0] : best[1]]
            if len(set(run)) != len(run):  # a tokenizer that merges items (e.g. lower-casing)
                skipped[name] = "the tokenizer maps different items to the same token"
                continue
            if len(run) < 2:
                n_single = sum(i is not None for i in ids)
                skipped[name] = (
                    f"only {n_single} of {len(items)} items are single tokens in the form "
                    f"{pattern.format('X')!r}, and no two of them are consecutive"
                )
                continue
            key = cast("tuple[int, ...]", tuple(run))  # a run of consecutive ids that are not None
            if key in seen:
                skipped[name] = f"same tokens as {seen[key]}"
                continue
            seen[key] = name
            whole = len(run) == len(items)
            tasks.append(OrdinalTask(name, key, cyclic and whole, tuple(run_items)))  # type: ignore[arg-type]
    return tasks, skipped


def as_tasks(tasks: Any) -> tuple[OrdinalTask, ...]:
    """Normalise a user's explicit tasks: OrdinalTasks, id sequences, or ``{name: ids}``."""
    if isinstance(tasks, (OrdinalTask, str)) or not isinstance(tasks, (Sequence, Mapping, torch.Tensor)):
        if isinstance(tasks, OrdinalTask):
            return (tasks,)
        raise InvalidOptionError(
            "tasks must be a list of token-id sequences, a {name: token ids} mapping, or a list "
            f"of hz.OrdinalTask; got {type(tasks).__name__}"
        )
    items = list(tasks.items()) if isinstance(tasks, Mapping) else [(None, t) for t in tasks]
    if not items:
        raise InvalidOptionError("tasks is empty; give at least one sequence of two or more token ids")
    out = []
    for i, (name, task) in enumerate(items):
        if isinstance(task, OrdinalTask):
            out.append(task)
            continue
        try:
            ids = torch.as_tensor(task)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidTokensError(f"task {name or i} is not a sequence of integer token ids: {task!r}") from None
        if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise InvalidTokensError(f"task {name or i} must be a flat sequence of integer token ids; got {task!r}")
        seq = tuple(int(t) for t in ids)
        if len(seq) < 2:
            raise InvalidTokensError(f"task {name or i} needs at least two token ids to have a successor; got {seq}")
        if len(set(seq)) != len(seq):
            raise InvalidTokensError(f"task {name or i} repeats a token id, so its successor is ambiguous: {seq}")
        out.append(OrdinalTask(str(name) if name is not None else f"task{i}", seq))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"task names must be distinct; got {names}")
    return tuple(out)
