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
from typing import TYPE_CHECKING, Any, cast

import torch

from headzoo._errors import DetectorNotApplicableError, InvalidOptionError, InvalidTokensError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OrdinalTask", "ORDINAL_LISTS", "NUMERIC_LISTS", "ordinal_tasks", "numeric_tasks", "task_coverage", "as_tasks"]

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

#: name -> (items in order, cyclic, value of the first item): the number-like lists the mod-10
#: analysis reads (Gould et al. 2023 use numbers 0-500 with and without a space, plus the other
#: ordinal tasks). Every single-token item is kept, gaps included, each with its value.
NUMERIC_LISTS: dict[str, tuple[tuple[str, ...], bool, int]] = {
    "numbers": (tuple(str(i) for i in range(1000)), False, 0),
    "number_words": (("zero", *_NUMBER_WORDS), False, 0),
    "ordinals": (tuple(_ORDINALS), False, 1),
    "days": (tuple(_DAYS), True, 1),
    "day_prefixes": (tuple(d[:3] for d in _DAYS), True, 1),
    "months": (tuple(_MONTHS), True, 1),
    "month_prefixes": (tuple(m[:3] for m in _MONTHS), True, 1),
    "roman_numerals": (tuple(_ROMAN), False, 1),
}

_FORMS = {"bare": "{}", "space": " {}"}


def _first_value(items: Sequence[str]) -> int:
    """Digit strings are their own value; any other list counts from 1 (January = 1)."""
    return int(items[0]) if items and all(i.isdigit() for i in items) else 1


@dataclass(frozen=True)
class OrdinalTask:
    """An ordered sequence of single tokens: each token's successor is the next one.

    Attributes:
        name: task name, reported with its accuracy.
        token_ids: the sequence, at least two distinct ids.
        cyclic: the last token's successor is the first (days, months).
        items: the text of each token, where known (empty for explicit id sequences).
        values: each token's ordinal value (``"7"`` is 7, ``"March"`` is 3), increasing; empty
            means ``0, 1, 2, ...``. A task may have gaps (a number that is not one token):
            a token's successor is the token whose value is one more.
    """

    name: str
    token_ids: tuple[int, ...]
    cyclic: bool = False
    items: tuple[str, ...] = ()
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.values:
            if len(self.values) != len(self.token_ids):
                raise InvalidOptionError(
                    f"task {self.name!r} has {len(self.token_ids)} tokens but {len(self.values)} values; give one value per token"
                )
            if any(b <= a for a, b in zip(self.values, self.values[1:])):
                raise InvalidOptionError(f"task {self.name!r}: values must increase strictly along the tokens; got {self.values}")

    @property
    def index_values(self) -> tuple[int, ...]:
        """Each token's value: ``values``, or ``0, 1, 2, ...`` when none were given."""
        return self.values if self.values else tuple(range(len(self.token_ids)))

    def pairs(self) -> list[tuple[int, int]]:
        """``(token, successor)`` pairs: tokens whose values differ by one (consecutive tokens
        when no values were given), wrapping from the last to the first for cyclic tasks."""
        ids, vals = self.token_ids, self.index_values
        by_value = dict(zip(vals, ids))
        out = [(t, by_value[v + 1]) for t, v in zip(ids, vals) if v + 1 in by_value]
        if self.cyclic and len(ids) > 2:
            out.append((ids[-1], ids[0]))
        return out

    def successor(self, token_id: int) -> int | None:
        """The id of ``token_id``'s successor in this task, or ``None`` (last item, gap, absent)."""
        return dict(self.pairs()).get(int(token_id))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "token_ids": list(self.token_ids), "cyclic": self.cyclic, "items": list(self.items)}
        if self.values:
            out["values"] = list(self.values)
        return out


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
    merged. Each task carries its items' values (``"7"`` is 7, ``"March"`` is 3).

    Returns:
        ``(tasks, skipped)``: the usable tasks (name ``"<list>"`` or ``"<list>_space"``) and,
        for every list/form that yielded no pair, why.
    """
    lists = {name: (items, cyclic, _first_value(items)) for name, (items, cyclic) in ORDINAL_LISTS.items()}
    tasks, skipped, _ = _build(tokenizer, lists, n_vocab=n_vocab, keep="run")
    return tasks, skipped


def numeric_tasks(tokenizer: Any, *, n_vocab: int | None = None) -> tuple[list[OrdinalTask], dict[str, str]]:
    """The number-like lists of :data:`NUMERIC_LISTS` (numbers 0-999, number words, ordinals,
    days, months and their prefixes, Roman numerals) for ``tokenizer``, in both forms.

    Unlike :func:`ordinal_tasks`, every single-token item is kept, gaps included (GPT-2 writes
    ``" 1000"`` as two tokens but ``" 999"`` as one), each with its value, so a mod-10 analysis
    sees all of them; :meth:`OrdinalTask.pairs` pairs only items whose values differ by one.

    Returns:
        ``(tasks, skipped)`` as :func:`ordinal_tasks` gives them.
    """
    tasks, skipped, _ = _build(tokenizer, NUMERIC_LISTS, n_vocab=n_vocab, keep="all")
    return tasks, skipped


def task_coverage(tokenizer: Any, *, lists: str = "ordinal", n_vocab: int | None = None) -> pd.DataFrame:
    """How much of each built-in list ``tokenizer`` can express as single tokens.

    Args:
        lists: ``"ordinal"`` (:data:`ORDINAL_LISTS`, what the ``successor`` detector scores) or
            ``"numeric"`` (:data:`NUMERIC_LISTS`, what :func:`hz.mod10_features` reads).

    Returns:
        One row per list and form: ``list, form`` (``"bare"`` or ``"space"``), ``task`` (the
        task's name, or ``""`` when skipped), ``n_items``, ``n_single`` (items that are one
        ordinary token), ``n_kept`` (tokens in the task), ``n_pairs`` and ``note`` (why a form
        was skipped).
    """
    import pandas as pd

    if lists == "ordinal":
        table = {name: (items, cyclic, _first_value(items)) for name, (items, cyclic) in ORDINAL_LISTS.items()}
        keep = "run"
    elif lists == "numeric":
        table, keep = NUMERIC_LISTS, "all"
    else:
        raise InvalidOptionError(f"lists must be 'ordinal' or 'numeric'; got {lists!r}")
    _, _, rows = _build(tokenizer, table, n_vocab=n_vocab, keep=keep)
    return pd.DataFrame(rows, columns=["list", "form", "task", "n_items", "n_single", "n_kept", "n_pairs", "note"])


def _build(
    tokenizer: Any, lists: Mapping[str, tuple[tuple[str, ...], bool, int]], *, n_vocab: int | None, keep: str,
) -> tuple[list[OrdinalTask], dict[str, str], list[tuple[Any, ...]]]:
    """Tasks, skipped forms and coverage rows for ``lists``; ``keep="run"`` keeps the longest
    run of consecutive expressible items, ``keep="all"`` every expressible item."""
    rows: list[tuple[Any, ...]] = []
    if tokenizer is None:
        for name, (items, _, _) in lists.items():
            rows += [(name, form, "", len(items), 0, 0, 0, "the model has no tokenizer") for form in _FORMS]
        return [], {name: "the model has no tokenizer" for name in lists}, rows
    banned = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        banned.add(int(unk))
    tasks: list[OrdinalTask] = []
    skipped: dict[str, str] = {}
    seen: dict[tuple[int, ...], str] = {}
    for list_name, (items, cyclic, first) in lists.items():
        for form, pattern in _FORMS.items():
            name = list_name if form == "bare" else f"{list_name}_{form}"
            ids = [_single_token(tokenizer, pattern.format(item), banned) for item in items]
            ids = [i if i is not None and (n_vocab is None or i < n_vocab) else None for i in ids]
            n_single = sum(i is not None for i in ids)
            if keep == "run":  # the longest run of consecutive expressible items: pairs are true successors
                best: tuple[int, int] = (0, 0)
                start = 0
                for j in range(len(ids) + 1):
                    if j == len(ids) or ids[j] is None:
                        if j - start > best[1] - best[0]:
                            best = (start, j)
                        start = j + 1
                where = list(range(best[0], best[1]))
            else:
                where = [j for j, i in enumerate(ids) if i is not None]
            run = [ids[j] for j in where]
            note = ""
            task: OrdinalTask | None = None
            if len(set(run)) != len(run):  # a tokenizer that merges items (e.g. lower-casing)
                note = "the tokenizer maps different items to the same token"
            elif len(run) < 2 or (keep == "all" and not OrdinalTask("t", tuple(run), values=tuple(first + j for j in where)).pairs()):  # type: ignore[arg-type]
                note = (
                    f"only {n_single} of {len(items)} items are single tokens in the form "
                    f"{pattern.format('X')!r}, and no two of them are consecutive"
                )
            else:
                key = cast("tuple[int, ...]", tuple(run))  # ids that are not None
                if key in seen:
                    note = f"same tokens as {seen[key]}"
                else:
                    seen[key] = name
                    whole = len(run) == len(items)
                    task = OrdinalTask(name, key, cyclic and whole, tuple(items[j] for j in where),
                                       tuple(first + j for j in where))
                    tasks.append(task)
            if note:
                skipped[name] = note
            rows.append((list_name, form, name if task else "", len(items), n_single,
                         len(task.token_ids) if task else 0, len(task.pairs()) if task else 0, note))
    return tasks, skipped, rows


def builtin_tasks(model: Any, *, lists: str, who: str, n_vocab: int | None, instead: str) -> tuple[list[OrdinalTask], dict[str, str]]:
    """The built-in ``lists`` (``"ordinal"`` or ``"numeric"``) in ``model``'s tokenizer, for a
    function named ``who``; ``instead`` says what the user can pass when there are none.

    Raises:
        DetectorNotApplicableError: the model has no tokenizer, or no list is expressible.
    """
    kind = "ordinal" if lists == "ordinal" else "number-like"
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise DetectorNotApplicableError(
            f"{who}: the model has no tokenizer, so the built-in {kind} lists cannot be written in its tokens. {instead}"
        )
    build = ordinal_tasks if lists == "ordinal" else numeric_tasks
    found, skipped = build(tokenizer, n_vocab=n_vocab)
    if not found:
        shown = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
        raise DetectorNotApplicableError(
            f"{who}: none of the built-in {kind} lists can be written as single tokens of this model's tokenizer "
            f"({shown}; ...). {instead}"
        )
    return found, skipped


def check_task_ids(tasks: Sequence[OrdinalTask], n_vocab: int, who: str) -> None:
    """Refuse tasks holding ids outside ``[0, n_vocab)`` (:class:`InvalidTokensError`)."""
    for task in tasks:
        bad = [t for t in task.token_ids if not 0 <= t < n_vocab]
        if bad:
            raise InvalidTokensError(
                f"{who}: task {task.name!r} holds ids {bad[:5]} outside the vocabulary [0, {n_vocab - 1}]; "
                "build tasks with the model's own tokenizer (hz.ordinal_tasks or hz.numeric_tasks)"
            )


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
