"""Successor heads in context and on free text.

Gould, Ong, Ogden, Conmy (2023, "Successor Heads", arXiv 2312.09230) find successor heads from
the weights (the ``successor`` detector: ``W_EE[t] W_OV W_U`` peaks at ``successor(t)``) and then
check that they do the same in context: on prompts where an ordinal item appears and, a few
tokens later, the last position should name its successor ("The meeting is on Monday. The next
meeting is on" -> " Tuesday"), a successor head attends from the end to the item, and its direct
logit attribution (DLA: its output at the end, through the final norm, read by the unembedding)
raises the successor among the task's tokens. The same prompts with a random token in the
item's place are the control: attention that stays on that slot is about position, not
ordinality.

On free text the paper finds successor heads polysemantic: their largest direct effects are
often not increments at all (copying, acronyms, ...), yet ablating them costs the most loss
where succession is involved. :func:`successor_on_text` measures both, streaming a corpus in
windows of the model's context.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from headzoo._circuits import norm_linear_part, output_columns
from headzoo._errors import (
    DetectorNotApplicableError,
    EmptyResultError,
    InvalidOptionError,
    UnsupportedTokenizerError,
)
from headzoo._forward import check_finite, final_norm, hook_name, require_hooks, run
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str
from headzoo._models import ModelInfo, head_weights, library_versions, model_info, model_weight
from headzoo._ordinal import OrdinalTask, as_tasks, builtin_tasks, check_task_ids, numeric_tasks, ordinal_tasks
from headzoo._results import colour
from headzoo._stream import Window, heads_of_z, rank_key, read_corpus, truncate
from headzoo._stream import block as stack_windows
from headzoo._stream import windows as corpus_windows
from headzoo._tokens import check_bool, check_heads, check_int, ordinary_ids, token_strings

__all__ = [
    "SuccessionPrompts",
    "succession_prompts",
    "SuccessionInContext",
    "succession_in_context",
    "SuccessorTextEffects",
    "successor_on_text",
    "CATEGORIES",
]

#: templates per built-in list, for its ``" X"`` form: ``{X}`` is the item (with its space); the
#: last position asks for the item's successor, a few tokens after it
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "days": (
        "If today is{X}, then tomorrow is",
        "The meeting is on{X}. The next meeting is on",
        "We arrived on{X} and left the day after, on",
    ),
    "months": (
        "If this month is{X}, then next month is",
        "The course starts in{X} and ends one month later, in",
        "The first fair was in{X} and the second a month after, in",
    ),
    "numbers": (
        "The page number is{X}. The next page number is",
        "She was{X} years old last year, so this year she is",
        "We counted{X} sheep, then one more, which made",
    ),
    "number_words": (
        "There were{X} birds on the wire. One more landed, and then there were",
        "I have{X} apples. If I get one more, I will have",
    ),
    "ordinals": (
        "He finished{X} in the race and his brother finished",
        "This is the{X} attempt, and the next one will be the",
    ),
    "letters": (
        "After the letter{X} comes the letter",
        "The row after row{X} is row",
    ),
    "roman_numerals": (
        "After chapter{X} comes chapter",
        "Volume{X} is followed by volume",
    ),
}
_TEMPLATES["day_prefixes"] = _TEMPLATES["days"]
_TEMPLATES["month_prefixes"] = _TEMPLATES["months"]
_SLOT = "{X}"
#: tokens a template must leave between the item and the end
_MIN_AFTER = 2

#: categories of a text position, by what the head promotes from the token it attends to
CATEGORIES = ("successor", "copy", "other")


# -- tasks ----------------------------------------------------------------------------------

def _resolve_tasks(model: Any, info: ModelInfo, tasks: Any, who: str) -> tuple[tuple[OrdinalTask, ...], dict[str, str], bool]:
    """``(tasks, skipped, built_in)``: the user's tasks checked against the vocabulary, or the
    built-in ordinal lists in the model's tokenizer."""
    if tasks is None:
        found, skipped = builtin_tasks(
            model, lists="ordinal", who=who, n_vocab=output_columns(model, info),
            instead="Pass explicit sequences instead: tasks=[[id1, id2, id3, ...], ...] (or hz.OrdinalTask objects).")
        return tuple(found), skipped, True
    out = as_tasks(tasks)
    check_task_ids(out, info.d_vocab, who)
    for task in out:
        if not task.pairs():
            raise InvalidOptionError(f"{who}: task {task.name!r} has no (token, successor) pair; its values leave no two one apart")
    return out, {}, False


def _builtin_ids(model: Any, info: ModelInfo) -> set[int]:
    """Every id of a built-in ordinal or number-like list in the model's tokenizer (none
    without one): filler and control tokens avoid them, so no other ordinal item sits in a
    prompt."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return set()
    n_out = output_columns(model, info)
    found = ordinal_tasks(tokenizer, n_vocab=n_out)[0] + numeric_tasks(tokenizer, n_vocab=n_out)[0]
    return {t for task in found for t in task.token_ids}


def _template_family(task: OrdinalTask, built_in: bool) -> tuple[str, ...]:
    """The templates of a built-in list's ``" X"`` form (none for other tasks)."""
    if not (built_in and task.name.endswith("_space") and task.items):
        return ()
    return _TEMPLATES.get(task.name.removesuffix("_space"), ())


# -- prompts --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuccessionPrompts:
    """Prompts where an ordinal item appears and the last position asks for its successor.

    Rows differ in length; the blocks are right-padded with ``pad_id`` (exact under causal
    attention: no real position sees a pad) and :attr:`mask` marks the real positions.

    Attributes:
        tokens: ``[n, pos]`` ids, right-padded.
        control: ``[n, pos]`` the same prompts with the item replaced by a random ordinary
            token that belongs to no ordinal task (the random-token control).
        lengths: ``[n]`` real length of each row.
        item_pos: ``[n]`` position of the item.
        end_pos: ``[n]`` the last real position, where the successor should be predicted.
        item: ``[n]`` the item's id.
        answer: ``[n]`` its successor's id.
        control_item: ``[n]`` the id that replaces the item in :attr:`control`.
        task: per prompt, the name of its task.
        source: per prompt, ``"template"`` (a natural sentence) or ``"ids"`` (filler ids).
        tasks: the tasks the prompts were drawn from.
        skipped_tasks: built-in lists the tokenizer cannot express, and why.
        prepend_bos: whether position 0 is the model's BOS.
        pad_id, seed, gap: as built.
    """

    tokens: Int[torch.Tensor, "n pos"]
    control: Int[torch.Tensor, "n pos"]
    lengths: Int[torch.Tensor, " n"]
    item_pos: Int[torch.Tensor, " n"]
    end_pos: Int[torch.Tensor, " n"]
    item: Int[torch.Tensor, " n"]
    answer: Int[torch.Tensor, " n"]
    control_item: Int[torch.Tensor, " n"]
    task: tuple[str, ...]
    source: tuple[str, ...]
    tasks: tuple[OrdinalTask, ...]
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    prepend_bos: bool = False
    pad_id: int = 0
    seed: int = 0
    gap: tuple[int, int] = (3, 8)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def mask(self) -> Bool[torch.Tensor, "n pos"]:
        """``[n, pos]`` True at real positions, False at padding."""
        return torch.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: ``task, source, item, answer, control_item, item_pos, end_pos, length``."""
        return pd.DataFrame({
            "task": list(self.task), "source": list(self.source),
            "item": self.item.numpy().astype(np.int64), "answer": self.answer.numpy().astype(np.int64),
            "control_item": self.control_item.numpy().astype(np.int64),
            "item_pos": self.item_pos.numpy().astype(np.int64), "end_pos": self.end_pos.numpy().astype(np.int64),
            "length": self.lengths.numpy().astype(np.int64),
        })


def _check_gap(gap: Any) -> tuple[int, int]:
    if isinstance(gap, (str, bytes)) or not isinstance(gap, Sequence) or len(gap) != 2:
        raise InvalidOptionError(f"gap must be a (low, high) pair of integers; got {gap!r}")
    low, high = check_int(gap[0], "gap: low", minimum=1), check_int(gap[1], "gap: high", minimum=1)
    if low > high:
        raise InvalidOptionError(f"gap must be (low, high) with low <= high; got {tuple(gap)}")
    return low, high


def _fit_gap(info: ModelInfo) -> tuple[int, int]:
    """The default ``(3, 8)`` gap, narrowed until an id prompt fits the model's context."""
    n_bos = int(info.prepend_bos)
    high = min(8, (info.n_ctx - n_bos - 1) // 2)
    if high < 1:
        raise DetectorNotApplicableError(
            f"the model's context ({info.n_ctx} tokens) has no room for an item, a gap and an end position"
        )
    return min(3, high), high


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def succession_prompts(
    model: Any, tasks: Any = None, *, n: int = 64, seed: int = 0, gap: tuple[int, int] = (3, 8),
) -> SuccessionPrompts:
    """Prompts in which an ordinal item appears and, a few tokens later, the last position
    should name its successor.

    With the model's tokenizer and the built-in tasks (:func:`hz.ordinal_tasks`), the ``" X"``
    form of each list is written into natural templates ("If today is Monday, then tomorrow
    is" -> " Tuesday"); a template is used for an item only where tokenising the sentence gives
    the item as exactly one token at a known position, followed by at least two more. Every
    other prompt (bare-form tasks, explicit id tasks, templates that do not tokenise cleanly)
    is built from ids: the model's BOS if it prepends one, 1 to ``gap[1]`` random filler ids,
    the item, and ``gap[0]`` to ``gap[1]`` filler ids; the end is the last of them. Filler and
    control tokens are ordinary ids that belong to no task (nor to any built-in ordinal list).

    Args:
        model: a TransformerLens model (its tokenizer is used when it has one).
        tasks: ``None`` (the built-in ordinal lists in the model's tokenizer) or explicit
            tasks: token-id sequences, ``{name: ids}`` or :class:`hz.OrdinalTask` objects.
        n: number of prompts, spread evenly over the tasks; items are drawn at random among
            each task's tokens that have a successor.
        seed: seeds every draw.
        gap: ``(low, high)`` filler tokens between the item and the end of an id prompt.

    Raises:
        DetectorNotApplicableError: no explicit tasks and no tokenizer (or none of the built-in
            lists fits it).
        InvalidTokensError: a task holds ids outside the vocabulary.
        InvalidOptionError: ``n < 1``, a bad ``gap`` or ``seed``, or prompts longer than the
            context.
        DetectorNotApplicableError: every ordinary token belongs to a task, so nothing is left
            to fill prompts with.
    """
    info = model_info(model)
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed")
    gap = _check_gap(gap)
    resolved, skipped, built_in = _resolve_tasks(model, info, tasks, "succession_prompts")
    bos = info.bos_token_id if info.prepend_bos else None
    n_bos = int(bos is not None)
    if n_bos + 2 * gap[1] + 1 > info.n_ctx:
        raise InvalidOptionError(
            f"gap={gap} makes prompts of up to {n_bos + 2 * gap[1] + 1} tokens, longer than the model's context "
            f"({info.n_ctx}); choose a smaller gap"
        )
    banned = {t for task in resolved for t in task.token_ids} | _builtin_ids(model, info)
    pool = ordinary_ids(info)
    pool = pool[(pool < output_columns(model, info)) & ~torch.isin(pool, torch.tensor(sorted(banned), dtype=torch.long))]
    if len(pool) == 0:
        raise DetectorNotApplicableError(
            "every ordinary token of the model belongs to an ordinal task, so there is no "
            "filler token to build prompts or controls with; pass fewer tasks"
        )
    tokenizer = getattr(model, "tokenizer", None)
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    g = torch.Generator().manual_seed(seed)
    cache: dict[tuple[str, int], tuple[list[int], int] | None] = {}

    def templated(task: OrdinalTask, j: int, family: tuple[str, ...], start: int) -> tuple[list[int], int] | None:
        """The ids of item ``j`` of ``task`` in the first template (from ``start`` on) that
        tokenises cleanly, and the item's position; ``None`` when none does."""
        item_id = task.token_ids[j]
        for k in range(len(family)):
            template = family[(start + k) % len(family)]
            key = (template, item_id)
            if key not in cache:
                before, after = template.split(_SLOT)
                item_text = " " + task.items[j]
                pre = _encode(tokenizer, before)
                with_item = _encode(tokenizer, before + item_text)
                full = _encode(tokenizer, before + item_text + after)
                clean = (with_item == [*pre, item_id] and full[: len(with_item)] == with_item
                         and len(full) - len(with_item) >= _MIN_AFTER and (unk is None or unk not in full)
                         and n_bos + len(full) <= info.n_ctx)
                cache[key] = (([bos] if bos is not None else []) + full, n_bos + len(pre)) if clean else None
            if cache[key] is not None:
                return cache[key]
        return None

    def draw(k: int, high: int | None = None) -> int:
        """A random integer in ``[k, high]`` (``[0, k)`` without ``high``)."""
        if high is None:
            return int(torch.randint(0, k, (1,), generator=g))
        return int(torch.randint(k, high + 1, (1,), generator=g))

    rows: list[list[int]] = []
    item_pos, items, answers, names, sources = [], [], [], [], []
    order = torch.randperm(len(resolved), generator=g).tolist()
    for i in range(n):
        task = resolved[order[i % len(resolved)]]
        pairs = task.pairs()
        item, answer = pairs[draw(len(pairs))]
        family = _template_family(task, built_in)
        got = templated(task, task.token_ids.index(item), family, draw(len(family))) if family and tokenizer is not None else None
        if got is not None:
            ids, at = got
            sources.append("template")
        else:
            before = pool[torch.randint(0, len(pool), (draw(1, gap[1]),), generator=g)].tolist()
            after = pool[torch.randint(0, len(pool), (draw(gap[0], gap[1]),), generator=g)].tolist()
            ids = ([bos] if bos is not None else []) + before + [item] + after
            at = n_bos + len(before)
            sources.append("ids")
        rows.append(list(ids))
        item_pos.append(at)
        items.append(item)
        answers.append(answer)
        names.append(task.name)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    pad_id = int(bos) if bos is not None else int(pool[0])
    tokens = torch.full((n, int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    pos = torch.tensor(item_pos, dtype=torch.long)
    control_item = pool[torch.randint(0, len(pool), (n,), generator=g)]
    control = tokens.clone()
    control[torch.arange(n), pos] = control_item
    return SuccessionPrompts(
        tokens=tokens, control=control, lengths=lengths, item_pos=pos, end_pos=lengths - 1,
        item=torch.tensor(items, dtype=torch.long), answer=torch.tensor(answers, dtype=torch.long),
        control_item=control_item.clone(), task=tuple(names), source=tuple(sources), tasks=resolved,
        skipped_tasks=dict(skipped), prepend_bos=bos is not None, pad_id=pad_id, seed=seed, gap=gap,
    )


# -- reading heads at chosen positions --------------------------------------------------------

_SCALE_HOOK = "ln_final.hook_scale"


def _final_scale_reader(model: Any, store: dict[str, torch.Tensor], take: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, Callable[[torch.Tensor], None]], str]:
    """Read hooks that leave the final norm's ``1 / scale`` factor's ``scale`` in
    ``store["scale"]`` (at the positions ``take`` picks from a ``[batch, pos, ...]``
    activation), and how it is found.

    TransformerLens' ``ln_final.hook_scale`` where the model has it (LayerNorm, RMSNorm);
    otherwise from the norm's input and output, ``|w * C(x)| / |y - norm(0)|`` (1 for a model
    without a final norm, whose output is its input).
    """
    hooks = model.hook_dict
    if _SCALE_HOOK in hooks:
        def scale(act: torch.Tensor) -> None:
            v = take(act).detach().float()  # TransformerLens keeps a trailing axis of size 1
            store["scale"] = v[..., 0] if v.ndim > 1 and v.shape[-1] == 1 else v
        return {_SCALE_HOOK: scale}, _SCALE_HOOK
    if "ln_final.hook_in" in hooks and "ln_final.hook_out" in hooks:
        def keep(name: str) -> Callable[[torch.Tensor], None]:
            def hook(act: torch.Tensor) -> None:
                store[name] = take(act).detach().float()
            return hook
        return {"ln_final.hook_in": keep("norm_in"), "ln_final.hook_out": keep("norm_out")}, "ratio of ln_final's input and output"
    return {}, "no final norm"


@torch.no_grad()
def _scale_from(model: Any, store: dict[str, torch.Tensor], d_model: int, device: torch.device, n: int) -> Float[torch.Tensor, " n"]:
    """The final norm's scale per read position, ``[n]``."""
    if "scale" in store:
        return store["scale"]
    if "norm_in" not in store:
        return torch.ones(n, device=device)
    centres, weight = norm_linear_part(getattr(model, "ln_final", None), d_model, device)
    x, y = store["norm_in"], store["norm_out"]
    if centres:
        x = x - x.mean(-1, keepdim=True)
    zero = final_norm(model)(torch.zeros(1, 1, d_model, device=device, dtype=y.dtype)).reshape(-1).float()
    num = (weight * x).norm(dim=-1)
    den = (y - zero).norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(num))


@torch.no_grad()
def _readout(model: Any, d_model: int, device: torch.device, cols: torch.Tensor | slice) -> Float[torch.Tensor, "d_model c"]:
    """``C diag(w) W_U[:, cols]``: what the final norm's linear part and the unembedding make of
    a ``1 / scale``-divided residual vector (``C`` centres when the norm does)."""
    centres, weight = norm_linear_part(getattr(model, "ln_final", None), d_model, device)
    w_u = cast(torch.Tensor, model_weight(model, "W_U"))[:, cols].float().to(device) * weight[:, None]
    return w_u - w_u.mean(0, keepdim=True) if centres else w_u


# -- succession in context --------------------------------------------------------------------

def succession_in_context(
    model: Any,
    tasks: Any = None,
    *,
    n: int = 64,
    seed: int = 0,
    weight_scores: bool = True,
    progress: bool | None = None,
) -> SuccessionInContext:
    """How every head behaves on succession prompts: attention to the item, and whether its
    direct logit attribution at the end peaks at the item's successor.

    Builds :func:`succession_prompts` (``n``, ``seed``, the default gap narrowed to fit a short
    context) and runs one forward pass on them and
    one on their random-token controls through the execution kernel, keeping only each head's
    attention row at the end position, its ``hook_z`` there and the final norm's scale there.
    A head's DLA at the end is ``z @ W_O[l, h]``, through the final norm's linear part (centred
    for LayerNorm, times its weight) and divided by its scale at that position, as
    TransformerLens' ``cache.apply_ln_to_stack`` does (it leaves the weight to be folded into
    ``W_U``), then ``@ W_U`` restricted to the prompt's task tokens.

    Per head:

    - ``in_context``: share of prompts where that DLA peaks at the successor (a tie is a miss);
    - ``dla_margin``: mean of (successor logit minus the mean of the task's other tokens);
    - ``attention`` / ``attention_control``: mean attention from the end to the item / to the
      random token in its place;
    - ``weight_score``: the ``successor`` detector's score on the same tasks (NaN when
      ``weight_scores=False``).

    ``meta["agreement"]`` compares the weight and in-context scores over heads: Spearman rank
    correlation, whether the top head is the same, and the top-3 overlap.

    Raises:
        DetectorNotApplicableError, InvalidTokensError, InvalidOptionError: as
            :func:`succession_prompts` raises them.
        UnsupportedModelError: the model lacks the hooks or weights this reads.
    """
    info = model_info(model)
    weight_scores = check_bool(weight_scores, "weight_scores")
    if progress is not None:
        progress = check_bool(progress, "progress")
    check_finite(model)
    prompts = succession_prompts(model, tasks, n=n, seed=seed, gap=_fit_gap(info))
    device = torch.device(info.device)
    L, H = info.n_layers, info.n_heads
    n = len(prompts)
    rows = torch.arange(n, device=device)
    end = prompts.end_pos.to(device)
    item_pos = prompts.item_pos.to(device)
    names = {layer: (hook_name("pattern", layer), hook_name("z", layer)) for layer in range(L)}
    require_hooks(model, [h for pair in names.values() for h in pair], "succession_in_context")

    def at_end(act: torch.Tensor) -> torch.Tensor:  # [batch, pos, ...] -> [n, ...]
        return act[rows, end]

    how = "no final norm"

    def forward(tokens: torch.Tensor, with_z: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One pass: ``([n, layer, head] attention from the end to the item's slot, [n, layer,
        head, d_head] hook_z at the end (zeros unless with_z), the final norm's reads)``."""
        nonlocal how
        att = torch.zeros(n, L, H, device=device)
        z = torch.zeros(n, L, H, info.d_head, device=device)
        store: dict[str, torch.Tensor] = {}
        read: dict[str, Callable[[torch.Tensor], None]] = {}
        for layer, (p_name, z_name) in names.items():
            def pattern(act: torch.Tensor, layer: int = layer) -> None:
                att[:, layer] = act[rows, :, end, item_pos].float()  # [batch, head, q, k] -> [n, head]
            read[p_name] = pattern
            if with_z:
                def keep_z(act: torch.Tensor, layer: int = layer) -> None:
                    z[:, layer] = heads_of_z(act, H)[rows, end].float()  # [batch, pos, head, d_head] -> [n, head, d_head]
                read[z_name] = keep_z
        if with_z:
            extra, how = _final_scale_reader(model, store, at_end)
            read.update(extra)
        run(model, tokens.to(device), read=read, logits=None)
        return att, z, store

    show = bool(progress)
    with torch.no_grad():
        bar = tqdm(total=2, desc="headzoo succession", unit="pass", disable=not show, leave=False)
        att, z, store = forward(prompts.tokens, True)
        bar.update()
        att_ctrl, _, _ = forward(prompts.control, False)
        bar.update()
        bar.close()
        scale = _scale_from(model, store, info.d_model, device, n)  # [n]
        union = sorted({t for task in prompts.tasks for t in task.token_ids})
        where = {t: i for i, t in enumerate(union)}
        readout = _readout(model, info.d_model, device, torch.tensor(union, device=device))  # [d_model, U]
        dla = torch.zeros(n, L, H, len(union), device=device)
        for layer in range(L):
            w_o = head_weights(model, "O", layer).float().to(device)  # [head, d_head, d_model]
            out = torch.einsum("nhe,hed->nhd", z[:, layer], w_o) / scale[:, None, None]
            dla[:, layer] = out @ readout
        hit = torch.zeros(n, L, H, dtype=torch.bool)
        margin = torch.zeros(n, L, H, dtype=torch.float64)
        for task in prompts.tasks:
            sel = [i for i, name in enumerate(prompts.task) if name == task.name]
            if not sel:
                continue
            cols = torch.tensor([where[t] for t in task.token_ids], device=device)
            target = torch.tensor([task.token_ids.index(int(prompts.answer[i])) for i in sel], device=device)
            sub = dla[torch.tensor(sel, device=device)][..., cols].double()  # [m, L, H, |task|]
            idx = target[:, None, None, None].expand(-1, L, H, 1)
            best = sub.gather(-1, idx).squeeze(-1)
            others = sub.scatter(-1, idx, float("-inf")).amax(-1)
            tol = 1e-5 * sub.abs().amax(-1)  # a tie, a flat row included, is a miss
            hit[sel] = (best > others + tol).cpu()
            margin[sel] = (best - (sub.sum(-1) - best) / (len(cols) - 1)).cpu()
    att_np, ctrl_np = att.double().cpu().numpy(), att_ctrl.double().cpu().numpy()
    hit_np, margin_np = hit.numpy(), margin.numpy()
    layer_idx, head_idx = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    frame = pd.DataFrame({
        "layer": layer_idx.ravel().astype(np.int64), "head": head_idx.ravel().astype(np.int64),
        "in_context": hit_np.mean(0).ravel().astype(np.float64), "dla_margin": margin_np.mean(0).ravel(),
        "attention": att_np.mean(0).ravel(), "attention_control": ctrl_np.mean(0).ravel(),
        "weight_score": np.full(L * H, np.nan),
    })
    weight_meta: dict[str, Any] = {}
    if weight_scores:
        from headzoo._runner import detect  # the runner imports the registry, which imports detectors

        # the score only: the detector's mod-10 analysis and editing are not needed here
        scores = detect(model, "successor", tasks=list(prompts.tasks), analysis=False, progress=progress)
        ws = scores.to_frame()
        ws = ws[ws["detector"] == "successor"]
        by_head = {(int(a), int(b)): float(v) for a, b, v in zip(ws["layer"], ws["head"], ws["score"])}
        frame["weight_score"] = [by_head.get((int(a), int(b)), np.nan) for a, b in zip(frame["layer"], frame["head"])]
        weight_meta = scores.meta["detectors"]["successor"].get("result", {})
    per_task = []
    for task in prompts.tasks:
        sel = [i for i, name in enumerate(prompts.task) if name == task.name]
        if not sel:
            continue
        per_task.append(pd.DataFrame({
            "layer": layer_idx.ravel().astype(np.int64), "head": head_idx.ravel().astype(np.int64), "task": task.name,
            "in_context": hit_np[sel].mean(0).ravel().astype(np.float64), "dla_margin": margin_np[sel].mean(0).ravel(),
            "attention": att_np[sel].mean(0).ravel(), "attention_control": ctrl_np[sel].mean(0).ravel(),
            "n_prompts": np.full(L * H, len(sel), dtype=np.int64),
        }))
    counts = {t.name: sum(1 for name in prompts.task if name == t.name) for t in prompts.tasks}
    meta: dict[str, Any] = {
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        "n_prompts": n,
        "seed": prompts.seed,
        "gap": list(prompts.gap),
        "tasks": [{"name": t.name, "n_prompts": counts[t.name], "n_tokens": len(t.token_ids), "cyclic": t.cyclic,
                   "items": list(t.items)} for t in prompts.tasks],
        "skipped_tasks": prompts.skipped_tasks,
        "sources": {s: prompts.source.count(s) for s in ("template", "ids")},
        "final_scale": how,
        "weight_scores": weight_scores,
        "weight_result": {k: v for k, v in weight_meta.items() if k in ("n_pairs", "skipped_tasks")},
        "agreement": _agreement(frame) if weight_scores else None,
    }
    return SuccessionInContext(
        frame, meta, tasks=pd.concat(per_task, ignore_index=True), prompts=prompts.to_frame(),
        arrays={"hit": hit_np, "margin": margin_np, "attention": att_np, "attention_control": ctrl_np},
    )


def _order(values: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Head indices best first: by ``values``, then ``tiebreak``, then index (deterministic)."""
    return np.lexsort((np.arange(len(values)), -np.nan_to_num(tiebreak, nan=-np.inf), -np.nan_to_num(values, nan=-np.inf)))


def _agreement(frame: pd.DataFrame) -> dict[str, Any]:
    """Spearman rank correlation over heads of the weight and in-context scores, whether the top
    head is the same, and the top-3 overlap (ties in the in-context score broken by the DLA
    margin, ties in the weight score by the in-context score)."""
    w = frame["weight_score"].to_numpy(dtype=float)
    c = frame["in_context"].to_numpy(dtype=float)
    m = frame["dla_margin"].to_numpy(dtype=float)
    ok = ~np.isnan(w)
    rank = lambda v: pd.Series(v).rank().to_numpy()  # noqa: E731  (average ranks for ties)
    rho = None
    if ok.sum() > 2 and w[ok].std() > 0 and c[ok].std() > 0:
        rho = float(np.corrcoef(rank(w[ok]), rank(c[ok]))[0, 1])
    by_weight, by_context = _order(w, c), _order(c, m)
    k = min(3, len(frame))
    label = lambda i: [int(frame["layer"].iloc[i]), int(frame["head"].iloc[i])]  # noqa: E731
    return {
        "spearman": rho,
        "top_weight": label(by_weight[0]),
        "top_in_context": label(by_context[0]),
        "same_top": bool(by_weight[0] == by_context[0]),
        "top_k": k,
        "top_k_overlap": len(set(by_weight[:k].tolist()) & set(by_context[:k].tolist())) / k,
    }


_IC_COLUMNS = ["layer", "head", "in_context", "dla_margin", "attention", "attention_control", "weight_score"]


@final
class SuccessionInContext(Result):
    """Per head: succession in context against the weight-based succession score.

    Build it with :func:`hz.succession_in_context`. ``to_frame()``: one row per head,
    ``layer, head, in_context, dla_margin, attention, attention_control, weight_score``.
    :meth:`tasks` breaks it down per task; :meth:`prompts` lists the prompts; :attr:`arrays`
    holds the per-prompt values ``[n, layer, head]`` (``hit``, ``margin``, ``attention``,
    ``attention_control``).
    """

    __slots__ = ("_frame", "_meta", "_tasks", "_prompts", "_arrays")
    _FORMAT = "SuccessionInContext"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any], *, tasks: pd.DataFrame, prompts: pd.DataFrame,
                 arrays: dict[str, np.ndarray]) -> None:
        missing = [c for c in _IC_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"SuccessionInContext needs columns {_IC_COLUMNS}; missing {missing}")
        frame = strings_as_str(frame)
        for col in frame.columns:
            frame[col] = frame[col].astype("int64" if col in ("layer", "head") else "float64")
        self._frame = frame
        self._meta = normalise(meta)
        self._tasks = strings_as_str(tasks)
        self._prompts = strings_as_str(prompts)
        self._arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (tasks, prompt sources, agreement, model)."""
        return json.loads(json.dumps(self._meta))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the per-prompt values ``[n, layer, head]``."""
        return {k: v.copy() for k, v in self._arrays.items()}

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per head."""
        return self._frame.copy()

    def tasks(self) -> pd.DataFrame:
        """Per task and head: ``in_context, dla_margin, attention, attention_control, n_prompts``."""
        return self._tasks.copy()

    def prompts(self) -> pd.DataFrame:
        """One row per prompt (see :meth:`SuccessionPrompts.to_frame`)."""
        return self._prompts.copy()

    def top(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` heads with the highest in-context score (ties: larger DLA margin first)."""
        k = positive_int("k", k)
        order = _order(self._frame["in_context"].to_numpy(float), self._frame["dla_margin"].to_numpy(float))
        return self._frame.iloc[order[:k]].reset_index(drop=True)

    def plot(self) -> Any:
        """Weight score (x) against in-context score (y), one labelled point per head
        (``L{layer}H{head}``); without weight scores, attention to the item on x. A plotly
        ``Figure``, returned, never shown."""
        import plotly.graph_objects as go

        f = self._frame
        has_weight = bool(f["weight_score"].notna().any())
        x = f["weight_score"] if has_weight else f["attention"]
        labels = [f"L{a}H{b}" for a, b in zip(f["layer"], f["head"])]
        fig = go.Figure(go.Scatter(
            x=x, y=f["in_context"], mode="markers+text", text=labels, textposition="top center",
            marker={"color": f["attention"], "colorscale": "Blues", "showscale": True, "colorbar": {"title": "attention"},
                    "line": {"width": 1, "color": "#333"}},
            customdata=np.stack([f["dla_margin"], f["attention_control"]], 1),
            hovertemplate="%{text}<br>x %{x:.3f}<br>in context %{y:.3f}<br>DLA margin %{customdata[0]:.3f}"
                          "<br>attention (control) %{customdata[1]:.3f}<extra></extra>",
        ))
        name = str(self._meta.get("model", {}).get("name", "model"))
        fig.update_layout(
            title=html.escape(f"headzoo: successor heads of {name}, weights vs in context"),
            xaxis_title="successor weight score" if has_weight else "attention to the item",
            yaxis_title="in-context succession score", width=640, height=520,
        )
        return fig

    def __repr__(self) -> str:
        top = self.top(1).to_dict("records")[0]
        return (f"SuccessionInContext({self._meta.get('n_prompts')} prompts, {len(self._meta.get('tasks', []))} tasks; "
                f"top L{int(top['layer'])}H{int(top['head'])} in_context {float(top['in_context']):.3f})")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the top heads and the agreement."""
        esc = html.escape
        name = str(self._meta.get("model", {}).get("name", ""))
        tasks = ", ".join(f"{esc(str(t['name']))} ({int(t['n_prompts'])})" for t in self._meta.get("tasks", []))
        parts = [f"<div style='font-family:sans-serif;font-size:12px'><b>SuccessionInContext</b> &middot; {esc(name)}"
                 f" &middot; {int(self._meta.get('n_prompts', 0))} prompts &middot; tasks: {tasks}"]
        agree = self._meta.get("agreement")
        if agree:
            rho = agree.get("spearman")
            parts.append(f"<p>weights vs context: Spearman {'n/a' if rho is None else f'{rho:.3f}'}, same top head: "
                         f"{esc(str(agree.get('same_top')))}, top-{int(agree['top_k'])} overlap {agree['top_k_overlap']:.2f}</p>")
        cols = ["in_context", "dla_margin", "attention", "attention_control", "weight_score"]
        head = "".join(f"<th>{esc(c)}</th>" for c in ["head", *cols])
        body = []
        for r in self.top(8).to_dict("records"):
            cells = "".join(
                f"<td style='background:{colour(float(r[c]), 0.0, 1.0) if c in ('in_context', 'attention', 'weight_score') else '#ffffff'}'>"
                f"{'' if r[c] != r[c] else f'{float(r[c]):.3f}'}</td>" for c in cols)
            body.append(f"<tr><td>L{int(r['layer'])}H{int(r['head'])}</td>{cells}</tr>")
        parts.append(f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}</table></div>")
        return "".join(parts)

    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta, tables={"tasks": self._tasks, "prompts": self._prompts}, arrays=self._arrays)

    @classmethod
    def _from_payload(cls, payload: Payload) -> SuccessionInContext:
        return cls(payload.frame, payload.meta, tasks=payload.tables["tasks"], prompts=payload.tables["prompts"],
                   arrays=dict(payload.arrays))


# -- successor heads on text ------------------------------------------------------------------

def _successor_map(model: Any, info: ModelInfo, tasks: Any) -> tuple[dict[int, set[int]], list[str]]:
    """``{id: ids of its successors}`` over the built-in ordinal and number-like lists of the
    tokenizer plus ``tasks``, and the names of the tasks used."""
    found: list[OrdinalTask] = []
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        n_out = output_columns(model, info)
        found += ordinal_tasks(tokenizer, n_vocab=n_out)[0] + numeric_tasks(tokenizer, n_vocab=n_out)[0]
    if tasks is not None:
        found += list(_resolve_tasks(model, info, tasks, "successor_on_text")[0])
    succ: dict[int, set[int]] = {}
    for task in found:
        for a, b in task.pairs():
            succ.setdefault(int(a), set()).add(int(b))
    return succ, [t.name for t in found]


def successor_on_text(
    model: Any,
    head: Any,
    corpus: Any = None,
    *,
    k: int = 50,
    tasks: Any = None,
    ablation: str = "mean",
    batch_size: int = 8,
    max_tokens: int | None = 20_000,
    seed: int = 0,
    progress: bool | None = None,
) -> SuccessorTextEffects:
    """What one head does on free text: its largest direct effects, what they promote, and the
    loss its ablation costs, overall and where succession is involved.

    The corpus is streamed in windows of the model's context (BOS first when the model
    prepends one; consecutive windows overlap by one token so every token but a document's
    last is scored once, with the context of its own window), ``batch_size`` windows per
    forward pass; activation memory does not grow with the corpus (only its token ids and the
    ``k`` best positions so far are held). At every scored position:

    - ``contribution``: the head's direct logit attribution there (``z @ W_O``, through the
      final norm's linear part, divided by its scale, ``@ W_U``), centred over the
      vocabulary: its largest entry; ``promoted`` is that token;
    - ``attended``: the key the head attends to most (``None`` when it is the BOS);
    - ``loss_increase``: the next token's loss with the head ablated
      (:func:`hz.ablation_hooks`, ``method=ablation``; ``"mean"`` and ``"resample"`` take up to
      16 corpus windows as reference tokens) minus without.

    The ``k`` positions of largest contribution are kept, each with a category:
    ``"successor"`` when the promoted token is a successor of the attended token (in a
    built-in ordinal or number-like list, or in ``tasks``), ``"copy"`` when it is the attended
    token itself, else ``"other"``. "Other" includes what the paper calls acronym-like
    behaviour (promoting a word's next letter or piece) and anything not an exact list item.
    Over all positions the mean loss increase is also kept, and over "succession examples":
    positions whose next token is the successor of an ordinal token earlier in the window.

    Args:
        head: ``(layer, head)``.
        corpus: ``None`` (the text shipped with headzoo), a UTF-8 text file's path, a list
            of strings (one document each; windows never cross documents), or, as for
            :func:`hz.head_examples`, a folder of ``*.txt`` files, a saved or loaded
            ``datasets.Dataset`` with a ``"text"`` column.
        k: positions kept.
        tasks: extra ordinal tasks (token-id sequences, ``{name: ids}``, ``hz.OrdinalTask``).
        ablation: ``"mean"``, ``"zero"``, ``"resample"`` or ``"uniform"``. Resampling draws from
            the reference windows anew for every batch, so only it depends on ``batch_size``.
        batch_size: windows per forward pass (speed and memory only).
        max_tokens: read at most this many corpus tokens (``None``: all).
        seed: seeds the resample ablation.
        progress: a progress bar over batches (``None``: only for more than 20 batches).

    Raises:
        InvalidOptionError: a bad head, ``k``, ``batch_size``, ``max_tokens``, ablation or
            corpus (empty, unreadable, no two tokens).
        UnsupportedTokenizerError: the model has no tokenizer to read the corpus with.
        InvalidTokensError: ``tasks`` hold ids outside the vocabulary.
    """
    from headzoo._ablation import ablation_hooks

    info = model_info(model)
    if isinstance(head, (str, bytes)) or not isinstance(head, Sequence) or len(head) != 2 or any(
            isinstance(x, (Sequence, np.ndarray, torch.Tensor)) for x in head):
        raise InvalidOptionError(f"head must be one (layer, head) pair of integers, e.g. (9, 1); got {head!r}")
    ((layer, h),) = check_heads([tuple(head)], info.n_layers, info.n_heads, "head")
    k = positive_int("k", k)
    batch_size = positive_int("batch_size", batch_size)
    if max_tokens is not None:
        max_tokens = positive_int("max_tokens", max_tokens)
    seed = check_int(seed, "seed")
    if progress is not None:
        progress = check_bool(progress, "progress")
    if ablation not in ("zero", "mean", "resample", "uniform"):
        raise InvalidOptionError(f"ablation must be 'mean', 'zero', 'resample' or 'uniform'; got {ablation!r}")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedTokenizerError(
            "successor_on_text reads text, and the model has no tokenizer to read it with; load the model with its tokenizer"
        )
    check_finite(model)
    docs, corpus_meta = read_corpus(tokenizer, corpus, who="successor_on_text", min_tokens=2)
    del corpus_meta["complete"]  # the whole corpus is read: its size is reported
    total = sum(len(d) for d in docs)
    docs = truncate(docs, max_tokens)
    n_read = sum(len(d) for d in docs)
    if sum(len(d) >= 2 for d in docs) == 0:
        raise InvalidOptionError(f"max_tokens={max_tokens} leaves no document of two or more tokens; raise it")
    succ, task_names = _successor_map(model, info, tasks)
    bos = info.bos_token_id if info.prepend_bos else None
    n_bos = int(bos is not None)
    length = info.n_ctx - n_bos
    if length < 2:
        raise InvalidOptionError(f"the model's context ({info.n_ctx}) leaves no room for a token and its successor")
    windows = list(corpus_windows(docs, length, overlap=1, min_tokens=2))
    width = n_bos + max(len(w.ids) for w in windows)  # one block width: batching changes nothing
    pad_id = int(bos) if bos is not None else 0
    device = torch.device(info.device)

    def block(chunk: Sequence[Window]) -> torch.Tensor:
        return stack_windows(chunk, width, bos, pad_id)

    hooks: list[Any] = []
    reference = None
    if ablation in ("mean", "resample"):
        full = [w for w in windows if n_bos + len(w.ids) == width]
        picks = np.unique(np.linspace(0, len(full) - 1, num=min(16, len(full))).round().astype(int))
        reference = block([full[i] for i in picks])
    with torch.no_grad():
        hooks = ablation_hooks(model, [(layer, h)], ablation, reference_tokens=reference, seed=seed)
    z_name, p_name = hook_name("z", layer), hook_name("pattern", layer)
    require_hooks(model, [z_name, p_name], "successor_on_text")
    w_o = head_weights(model, "O", layer)[h].float().to(device)  # [d_head, d_model]
    n_out = output_columns(model, info)
    readout = _readout(model, info.d_model, device, slice(0, n_out))  # [d_model, vocab]
    readout_mean = readout.mean(1)  # centring over the vocabulary: x @ mean(W_U) is the row mean
    rows_per_chunk = max(1, (8 * 2**20) // max(1, n_out))
    strings: dict[int, str] = {}

    def text(ids: Sequence[int]) -> list[str]:
        missing = sorted({int(i) for i in ids if int(i) not in strings})
        if missing:
            strings.update(zip(missing, token_strings(model, missing)))
        return [strings[int(i)] for i in ids]

    top: dict[str, np.ndarray] = {}
    sums = {"all": [0.0, 0.0, 0], "succession": [0.0, 0.0, 0]}  # loss increase, contribution, count
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    show = progress if progress is not None else len(batches) > 20
    for chunk in tqdm(batches, desc="headzoo successor text", unit="batch", disable=not show, leave=False):
        tokens = block(chunk).to(device)
        got: dict[str, torch.Tensor] = {}

        def keep_z(act: torch.Tensor, got: dict[str, torch.Tensor] = got) -> None:
            got["z"] = heads_of_z(act, info.n_heads)[:, :, h].detach().float()  # [batch, pos, d_head]

        def keep_pattern(act: torch.Tensor, got: dict[str, torch.Tensor] = got) -> None:
            got["attended"] = act[:, h].argmax(-1)  # [batch, query]: the key attended most

        scale_reads, _ = _final_scale_reader(model, got, lambda act: act)
        with torch.no_grad():
            logits = run(model, tokens, read={z_name: keep_z, p_name: keep_pattern, **scale_reads}, logits="all")
            assert logits is not None
            clean = _next_token_loss(logits, tokens)
            del logits
            ablated_logits = run(model, tokens, edit=hooks, logits="all")
            assert ablated_logits is not None
            ablated = _next_token_loss(ablated_logits, tokens)
            del ablated_logits
            b, p = tokens.shape
            scale = _scale_from(model, {k_: v.reshape(b * p, *v.shape[2:]) for k_, v in got.items() if k_ in ("scale", "norm_in", "norm_out")},
                                info.d_model, device, b * p)
            x = (got["z"].reshape(b * p, -1) @ w_o) / scale[:, None]  # [b * pos, d_model]
            contribution = torch.empty(b * p, device=device)
            promoted = torch.empty(b * p, dtype=torch.long, device=device)
            for s in range(0, b * p, rows_per_chunk):
                part = x[s : s + rows_per_chunk]
                best = (part @ readout).max(-1)
                contribution[s : s + rows_per_chunk] = best.values - part @ readout_mean
                promoted[s : s + rows_per_chunk] = best.indices
        contribution, promoted = contribution.view(b, p).cpu(), promoted.view(b, p).cpu()
        attended = got["attended"].cpu()
        increase = (ablated - clean).cpu()  # [b, pos - 1]: at query q, the loss of token q + 1
        ids = tokens.cpu()
        cand: dict[str, list[Any]] = {c: [] for c in _CANDIDATE}
        for i, w in enumerate(chunk):
            real = n_bos + len(w.ids)
            expected: set[int] = set()  # successors of the ordinal tokens seen so far in the window
            for q in range(n_bos, real - 1):
                expected |= succ.get(int(ids[i, q]), set())
                is_succ = int(ids[i, q + 1]) in expected
                inc, con = float(increase[i, q]), float(contribution[i, q])
                for key in ("all", "succession") if is_succ else ("all",):
                    sums[key][0] += inc
                    sums[key][1] += con
                    sums[key][2] += 1
                a = int(attended[i, q])
                values = (con, w.doc, w.start + q - n_bos, int(ids[i, q]), w.start + a - n_bos if a >= n_bos else -1,
                          int(ids[i, a]), int(promoted[i, q]), inc, int(ids[i, q + 1]), is_succ)
                for c, v in zip(_CANDIDATE, values):
                    cand[c].append(v)
        merged = {c: np.concatenate([top[c], np.asarray(cand[c], dtype=dt)]) if top else np.asarray(cand[c], dtype=dt)
                  for c, dt in _CANDIDATE.items()}
        # best first; ties (to float noise) by document and position, so what is kept and its
        # order do not depend on batching
        order = np.lexsort((merged["pos"], merged["doc"], -rank_key(merged["contribution"])))[:k]
        top = {c: v[order] for c, v in merged.items()}
    if not top or len(top["doc"]) == 0:
        raise EmptyResultError("successor_on_text scored no position; give a longer corpus")
    rows = []
    for j in range(len(top["doc"])):
        d, pos = int(top["doc"][j]), int(top["pos"][j])
        doc = docs[d]
        att_pos = int(top["attended"][j])
        a_id, pr, tok = int(top["attended_id"][j]), int(top["promoted"][j]), int(top["token_id"][j])
        category = "successor" if pr in succ.get(a_id, set()) else "copy" if pr == a_id else "other"
        context = tokenizer.decode(doc[max(0, pos - 10) : pos]) if pos > 0 else ""
        tok_s, att_s, pr_s, next_s = text([tok, a_id, pr, int(top["next_id"][j])])
        rows.append({
            "doc": d, "pos": pos, "context": str(context), "token": tok_s, "token_id": tok,
            "attended": att_pos if att_pos >= 0 else None, "attended_id": a_id, "attended_token": att_s,
            "promoted": pr, "promoted_token": pr_s, "contribution": float(top["contribution"][j]), "category": category,
            "loss_increase": float(top["loss_increase"][j]), "next_token": next_s, "succession": bool(top["succession"][j]),
        })
    frame = pd.DataFrame(rows)
    meta: dict[str, Any] = {
        "head": [layer, h],
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        "corpus": {**corpus_meta, "n_tokens": n_read, "n_tokens_in_corpus": total, "truncated": n_read < total},
        "ablation": ablation,
        "seed": seed,
        "k": k,
        "batch_size": batch_size,
        "window": length,
        "n_windows": len(windows),
        "tasks": sorted(set(task_names)),
        "positions": {
            "all": {"count": int(sums["all"][2]), "mean_loss_increase": _mean(sums["all"][0], sums["all"][2]),
                    "mean_contribution": _mean(sums["all"][1], sums["all"][2])},
            "succession": {"count": int(sums["succession"][2]),
                           "mean_loss_increase": _mean(sums["succession"][0], sums["succession"][2]),
                           "mean_contribution": _mean(sums["succession"][1], sums["succession"][2])},
        },
    }
    return SuccessorTextEffects(frame, meta)


#: what is kept of every scored position until the top k are known, and its dtype
_CANDIDATE: dict[str, Any] = {
    "contribution": np.float64, "doc": np.int64, "pos": np.int64, "token_id": np.int64, "attended": np.int64,
    "attended_id": np.int64, "promoted": np.int64, "loss_increase": np.float64, "next_id": np.int64, "succession": bool,
}


def _mean(total: float, count: int) -> float:
    return total / count if count else math.nan


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> Float[torch.Tensor, "batch pos_1"]:
    """``[batch, pos - 1]`` cross-entropy of token ``q + 1`` under the logits at ``q``."""
    lp = logits[:, :-1].float().log_softmax(-1)
    return -lp.gather(-1, tokens[:, 1:, None].to(lp.device)).squeeze(-1)


_TEXT_COLUMNS = ["doc", "pos", "context", "token", "attended", "attended_token", "promoted", "promoted_token",
                 "contribution", "category", "loss_increase"]
_TEXT_INTS = ("doc", "pos", "token_id", "attended_id", "promoted")


@final
class SuccessorTextEffects(Result):
    """One head's largest direct effects on text, their categories, and its ablation's cost.

    Build it with :func:`hz.successor_on_text`. ``to_frame()``: the top positions by
    contribution, ``doc, pos, context, token, attended, attended_token, promoted,
    promoted_token, contribution, category, loss_increase`` (also ``token_id``,
    ``attended_id``, ``next_token`` and ``succession``: whether the next token is the
    successor of an ordinal token earlier in the window). ``attended`` is missing where the
    head attends to the BOS. :meth:`summary` aggregates per category and over the corpus.
    """

    __slots__ = ("_frame", "_meta")
    _FORMAT = "SuccessorTextEffects"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
        missing = [c for c in _TEXT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"SuccessorTextEffects needs columns {_TEXT_COLUMNS}; missing {missing}")
        frame = strings_as_str(frame)
        for col in _TEXT_INTS:
            if col in frame.columns:
                frame[col] = frame[col].astype("int64")
        frame["attended"] = frame["attended"].astype("Int64")  # missing where the head attends to the BOS
        for col in ("contribution", "loss_increase"):
            frame[col] = frame[col].astype("float64")
        if "succession" in frame.columns:
            frame["succession"] = frame["succession"].astype(bool)
        for col in ("context", "token", "attended_token", "promoted_token", "category", "next_token"):
            if col in frame.columns:
                frame[col] = frame[col].astype(str)
        self._frame = frame
        self._meta = normalise(meta)

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (head, corpus, ablation, corpus-wide means)."""
        return json.loads(json.dumps(self._meta))

    @property
    def head(self) -> tuple[int, int]:
        layer, head = self._meta["head"]
        return int(layer), int(head)

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: the kept positions, largest contribution first."""
        return self._frame.copy()

    def summary(self) -> pd.DataFrame:
        """Per category of the kept positions (``scope`` ``"top-k"``), then over every scored
        position and over the succession examples (``scope`` ``"corpus"``): ``count``,
        ``share`` (of the kept positions / of all scored positions), ``mean_contribution``,
        ``mean_loss_increase``."""
        f = self._frame
        rows = []
        category = f["category"].to_numpy()
        contribution, increase = f["contribution"].to_numpy(float), f["loss_increase"].to_numpy(float)
        for cat in CATEGORIES:
            sel = category == cat
            n = int(sel.sum())
            rows.append({"group": cat, "scope": "top-k", "count": n, "share": n / len(f) if len(f) else math.nan,
                         "mean_contribution": float(contribution[sel].mean()) if n else math.nan,
                         "mean_loss_increase": float(increase[sel].mean()) if n else math.nan})
        positions = self._meta["positions"]
        n_all = int(positions["all"]["count"])
        for group, key in (("all positions", "all"), ("succession examples", "succession")):
            p = positions[key]
            rows.append({"group": group, "scope": "corpus", "count": int(p["count"]),
                         "share": int(p["count"]) / n_all if n_all else math.nan,
                         "mean_contribution": _num(p["mean_contribution"]), "mean_loss_increase": _num(p["mean_loss_increase"])})
        out = pd.DataFrame(rows, columns=["group", "scope", "count", "share", "mean_contribution", "mean_loss_increase"])
        out["count"] = out["count"].astype("int64")
        return out

    def plot(self) -> Any:
        """Two panels: how many kept positions fall in each category, and the mean loss
        increase of each category, of all positions and of the succession examples. A plotly
        ``Figure``, returned, never shown."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        s = self.summary()
        top, corpus = s[s["scope"] == "top-k"], s
        fig = make_subplots(rows=1, cols=2, subplot_titles=["categories of the top positions", "mean loss increase when ablated"])
        fig.add_trace(go.Bar(x=list(top["group"]), y=list(top["count"]), marker_color="#08306b", name="count"), row=1, col=1)
        fig.add_trace(go.Bar(x=list(corpus["group"]), y=list(corpus["mean_loss_increase"]), marker_color="#6baed6",
                             name="loss increase"), row=1, col=2)
        layer, head = self.head
        name = str(self._meta.get("model", {}).get("name", "model"))
        fig.update_layout(title=html.escape(f"headzoo: L{layer}H{head} of {name} on text ({self._meta['ablation']} ablation)"),
                          showlegend=False, width=900, height=420)
        return fig

    def __repr__(self) -> str:
        layer, head = self.head
        categories = self._frame["category"].tolist()
        shown = ", ".join(f"{c} {categories.count(c)}" for c in CATEGORIES)
        return f"SuccessorTextEffects(L{layer}H{head}, top {len(self._frame)}: {shown})"

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the summary and the top positions, every token
        string escaped."""
        esc = html.escape

        def show(s: Any) -> str:
            return esc(str(s)).replace("\n", "&#8629;")

        layer, head = self.head
        name = str(self._meta.get("model", {}).get("name", ""))
        parts = [f"<div style='font-family:sans-serif;font-size:12px'><b>SuccessorTextEffects</b> &middot; "
                 f"L{layer}H{head} of {esc(name)} &middot; {esc(str(self._meta['ablation']))} ablation &middot; "
                 f"{int(self._meta['corpus']['n_tokens'])} tokens"]
        s = self.summary()
        srows = "".join(
            f"<tr><td>{esc(str(r['group']))}</td><td>{int(r['count'])}</td><td>{_fmt(r['share'])}</td>"
            f"<td>{_fmt(r['mean_contribution'])}</td><td>{_fmt(r['mean_loss_increase'])}</td></tr>" for r in s.to_dict("records"))
        parts.append("<table style='border-collapse:collapse'><tr><th>group</th><th>count</th><th>share</th>"
                     f"<th>mean contribution</th><th>mean loss increase</th></tr>{srows}</table>")
        hi = float(self._frame["contribution"].to_numpy(float).max()) if len(self._frame) else 1.0
        trows = "".join(
            f"<tr><td>{show(r['context'])}<b>{show(r['token'])}</b></td><td>{show(r['attended_token'])}</td>"
            f"<td>{show(r['promoted_token'])}</td><td style='background:{colour(float(r['contribution']), 0.0, hi)}'>"
            f"{float(r['contribution']):.3f}</td><td>{esc(str(r['category']))}</td><td>{_fmt(r['loss_increase'])}</td></tr>"
            for r in self._frame.head(10).to_dict("records"))
        parts.append("<table style='border-collapse:collapse'><tr><th>context</th><th>attended</th><th>promoted</th>"
                     f"<th>contribution</th><th>category</th><th>loss increase</th></tr>{trows}</table></div>")
        return "".join(parts)

    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> SuccessorTextEffects:
        return cls(payload.frame, payload.meta)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _fmt(value: Any) -> str:
    v = float(value)
    return "n/a" if v != v else f"{v:.3f}"
