"""Head importance: how much a task's loss rises when one head is switched off.

A head's *effect* on a task is the increase of the task's mean loss when the head's output
``z`` (``hook_z``, the attention-weighted values before the output matrix) is *mean-ablated*:
replaced, at every position, by its mean over the task's own prompts and real (unpadded)
positions. Mean ablation keeps the head's constant contribution and removes only what depends
on the input (Wang et al. 2022, IOI).

Ablating every head exactly costs one forward pass per head and task. Attribution patching
(Nanda 2023; Syed et al. 2023) estimates all of them at once from one forward and one backward
pass: ``grad_z(loss) . (mean - z)``, summed over prompts and positions. headzoo ranks every
head by that estimate, then measures the exact effect of the ``exact_top`` heads with the
largest ``|estimate|`` per task with real ablated forwards (several heads share one batched
forward: the prompts are repeated once per head, each copy with its own head ablated).
The estimate is first order: it misses heads whose effect passes through a saturated attention
softmax downstream (a previous-token head that sets an induction head's keys can look
unimportant to it), which is why the top of the ranking is measured, not estimated; rows keep
both numbers and say which ``effect`` is.

The tasks are built for the model's own tokenizer from headzoo's probes: ``induction``
(repeated random tokens; needs no tokenizer), ``ioi`` (:func:`hz.ioi_prompts`),
``succession`` (:func:`hz.succession_prompts`) and ``retrieval`` (the needle probe,
:class:`hz.NeedleHaystack`). A task that does not apply to a model is skipped, with the reason
recorded in ``meta["skipped"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from headzoo._errors import DetectorNotApplicableError, InvalidOptionError
from headzoo._forward import check_finite, hook_name, require_hooks, run, run_from_layer
from headzoo._io import Payload, Result, positive_int, strings_as_str
from headzoo._models import ModelInfo, library_versions, model_info
from headzoo._results import colour
from headzoo._tokens import check_bool, check_int, ordinary_ids

__all__ = ["head_importance", "HeadImportance", "IMPORTANCE_TASKS"]

_COLUMNS = ["task", "layer", "head", "effect", "method", "attribution"]
# logits kept per forward (copies x prompts x read positions x vocabulary) before the exact
# ablations are split over several forwards: about 256 MB of float32
_LOGIT_BUDGET = 1 << 26
# tokens per forward beyond which a CPU gains nothing from sharing a forward between heads
_TOKEN_BUDGET = 4096
_INDUCTION_HALF = 24  # tokens per half of an induction prompt (fewer when the context is short)
_RETRIEVAL_LENGTH = 128  # needle prompt length cap: long enough to retrieve, cheap on a CPU


@dataclasses.dataclass(frozen=True)
class _Task:
    """One task's prompts and what its loss reads.

    Attributes:
        tokens: ``[n, pos]`` ids, right-padded where the prompts differ in length.
        mask: ``[n, pos]`` True at real positions (the mean ablation averages over those).
        at: ``[n, t]`` the positions whose next-token prediction the loss reads.
        target: ``[n, t]`` the id each of those positions should predict.
        weight: ``[n, t]`` 1 where ``(at, target)`` is a real term of the loss, 0 for filler.
    """

    name: str
    description: str
    metric: str
    tokens: Int[torch.Tensor, "n pos"]
    mask: Bool[torch.Tensor, "n pos"]
    at: Int[torch.Tensor, "n t"]
    target: Int[torch.Tensor, "n t"]
    weight: Float[torch.Tensor, "n t"]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def read(self) -> list[int]:
        """Positions whose logits the loss reads, ascending."""
        return sorted({int(p) for p, w in zip(self.at.flatten().tolist(), self.weight.flatten().tolist()) if w > 0})


def _rows(lengths: torch.Tensor, width: int) -> Bool[torch.Tensor, "n pos"]:
    """``[n, pos]`` True at each row's real positions."""
    return torch.arange(width)[None, :] < lengths[:, None]


def _induction(model: Any, info: ModelInfo, n: int, seed: int) -> _Task:
    from headzoo._probes import RepeatedTokens

    bos = int(info.prepend_bos)
    half = min(_INDUCTION_HALF, (info.n_ctx - bos) // 2, len(ordinary_ids(info)))
    if half < 3:
        raise DetectorNotApplicableError(
            f"the model cannot hold a repeated-token prompt with a second half to predict (context {info.n_ctx}, "
            f"{len(ordinary_ids(info))} ordinary tokens)"
        )
    probe = RepeatedTokens(n_prompts=n, half_len=half, batch_size=n, seed=seed)
    tokens = next(iter(probe.batches(info)))  # [n, bos + 2 * half]
    # every position of the second half but its last predicts the next repeated token
    at = torch.arange(bos + half, bos + 2 * half - 1)[None, :].repeat(n, 1)
    return _Task(
        "induction", "repeated random tokens: the second half repeats the first, so an induction head can "
        "predict it", f"mean next-token loss over the second half ({half - 1} predictions per prompt)",
        tokens, torch.ones_like(tokens, dtype=torch.bool), at, tokens.gather(1, at + 1), torch.ones(at.shape),
        {"half_len": half, "prepend_bos": bool(bos)},
    )


def _ioi(model: Any, info: ModelInfo, n: int, seed: int) -> _Task:
    from headzoo._ioi import ioi_prompts

    prompts = ioi_prompts(model, n, seed=seed)
    if prompts.clean.shape[1] > info.n_ctx:
        raise DetectorNotApplicableError(f"IOI prompts have up to {prompts.clean.shape[1]} tokens, more than the model's "
                                         f"context ({info.n_ctx})")
    return _Task(
        "ioi", "indirect-object identification (Wang et al. 2022): 'When Mary and John went to the store, "
        "John gave a drink to' -> ' Mary'", "mean loss of the indirect object's name at the last position",
        prompts.clean, _rows(prompts.lengths, prompts.clean.shape[1]), prompts.end_pos[:, None],
        prompts.io[:, None], torch.ones(n, 1),
        {"templates": len(prompts.templates), "names": len(prompts.names)},
    )


def _succession(model: Any, info: ModelInfo, n: int, seed: int) -> _Task:
    from headzoo._succession import succession_prompts

    try:
        prompts = succession_prompts(model, n=n, seed=seed)
    except InvalidOptionError as exc:  # the default gap needs more context than the model has
        raise DetectorNotApplicableError(f"succession prompts do not fit this model: {exc}") from None
    return _Task(
        "succession", "an ordinal item (Monday, 3, March, ...) and, a few tokens later, a position that should "
        "name its successor (Gould et al. 2023)", "mean loss of the successor at the last position",
        prompts.tokens, prompts.mask, prompts.end_pos[:, None], prompts.answer[:, None], torch.ones(n, 1),
        {"tasks": sorted({t.name for t in prompts.tasks})},
    )


def _retrieval(model: Any, info: ModelInfo, n: int, seed: int) -> _Task:
    from headzoo._needle import NeedleHaystack

    probe = NeedleHaystack(n_needles=max(1, math.ceil(n / 5)), max_length=_RETRIEVAL_LENGTH, seed=seed)
    trials = probe.build(model)
    longest = max(trials.meta["lengths"])
    keep = [i for i, length in enumerate(trials.frame["length"].tolist()) if length == longest][:n]
    # the answer is teacher-forced: the prompt, then every answer token but the last
    rows = [torch.cat([trials.tokens[i], trials.answers[i][:-1]]) for i in keep]
    tokens = torch.stack(rows)
    answer_len = len(trials.answers[keep[0]])
    at = torch.arange(longest - 1, longest - 1 + answer_len)[None, :].repeat(len(keep), 1)
    return _Task(
        "retrieval", "needle in a haystack (Wu et al. 2024): a needle sentence hidden in filler, and at the end "
        "its lead-in again, so the model should copy the needle's answer", f"mean loss of the {answer_len} "
        "needle answer tokens (teacher-forced)",
        tokens, torch.ones_like(tokens, dtype=torch.bool), at, torch.stack([trials.answers[i] for i in keep]),
        torch.ones(at.shape), {"length": longest, "filler": trials.meta["filler"], "answer_len": answer_len},
    )


#: the task battery: name -> builder ``(model, info, n_prompts, seed) -> task``
IMPORTANCE_TASKS: dict[str, Callable[[Any, ModelInfo, int, int], _Task]] = {
    "induction": _induction,
    "ioi": _ioi,
    "succession": _succession,
    "retrieval": _retrieval,
}


def _loss(logits: torch.Tensor, task: _Task, read: list[int], copies: int) -> torch.Tensor:
    """The task's mean loss per copy, ``[copies]``, from logits ``[copies * n, len(read), vocab]``
    of ``copies`` stacked copies of the prompts."""
    n = task.tokens.shape[0]
    col = {p: i for i, p in enumerate(read)}
    # filler terms (weight 0) point at the first read position; their weight removes them
    idx = torch.tensor([[col.get(int(p), 0) for p in row] for row in task.at.tolist()], device=logits.device)
    logp = logits.float().log_softmax(-1).view(copies, n, len(read), -1)
    rows = torch.arange(n, device=logits.device)[:, None]
    taken = logp[:, rows, idx, task.target.to(logits.device)]  # [copies, n, t]
    w = task.weight.to(logits.device)
    return -(taken * w).sum((1, 2)) / w.sum()


def _nothing(act: torch.Tensor) -> None:
    return None


@dataclasses.dataclass
class _Clean:
    """What the clean forward and backward pass of one task leave behind.

    Attributes:
        baseline: the task's mean loss.
        means: ``[layer, head, d_head]`` each head's mean ``z`` over real positions.
        scores: ``[layer, head]`` the attribution estimate of each head's effect.
        logits: ``[n, len(read), vocab]`` the clean logits the loss read.
        resid: ``{layer: [n, pos, d_model]}`` the residual stream entering each block, where
            the model has the hook (to restart an ablated run at the ablated layer).
    """

    baseline: float
    means: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    resid: dict[int, torch.Tensor]


def _attribute(model: Any, info: ModelInfo, task: _Task) -> _Clean:
    """One forward and one backward pass on the task's prompts: the loss, each head's mean
    ``z`` over real positions, and the first-order change of the mean loss when that mean
    replaces ``z`` everywhere (``grad . (mean - z)`` summed over prompts, positions, ``d_head``)."""
    names = [hook_name("z", layer) for layer in range(info.n_layers)]
    leaves: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}

    def leaf(layer: int) -> Callable:
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            # a fresh leaf: the gradient reaches it even when the parameters are frozen
            leaves[layer] = z.detach().clone().requires_grad_(True)
            return leaves[layer]
        return hook

    def keep(layer: int) -> Callable:
        def hook(x: torch.Tensor) -> None:
            resid[layer] = x.detach().clone()
        return hook

    starts = {hook_name("resid_pre", layer): keep(layer) for layer in range(1, info.n_layers)}
    starts = starts if all(name in model.hook_dict for name in starts) else {}
    tokens = task.tokens.to(info.device)
    read = task.read
    with torch.enable_grad():
        # the no-op readers of hook_z make the kernel diagnose a hook that never fires (fused attention)
        logits = run(model, tokens, read={**{name: _nothing for name in names}, **starts},
                     edit=[(names[layer], leaf(layer)) for layer in range(info.n_layers)], logits=read)
        assert logits is not None
        loss = _loss(logits, task, read, 1)[0]
        grads = torch.autograd.grad(loss, [leaves[layer] for layer in range(info.n_layers)], allow_unused=True)
    mask = task.mask.to(info.device)[:, :, None, None].to(leaves[0].dtype)  # [n, pos, 1, 1]
    means, scores = [], []
    for layer, grad in enumerate(grads):
        z = leaves[layer].detach()  # [n, pos, head, d_head]
        mean = (z * mask).sum((0, 1)) / mask.sum()  # [head, d_head]
        means.append(mean)
        if grad is None:  # a head the loss does not depend on
            scores.append(torch.zeros(info.n_heads, dtype=torch.float64))
        else:
            scores.append((grad * (mean - z) * mask).sum((0, 1, 3)).double().cpu())
    return _Clean(float(loss.detach()), torch.stack(means), torch.stack(scores), logits.detach(), resid)


def _restarts(model: Any, clean: _Clean, read: list[int]) -> bool:
    """Whether running the blocks from a layer on reproduces the model's own forward on these
    inputs (checked from the earliest stored layer, as the patching engine does)."""
    if not clean.resid:
        return False
    first = min(clean.resid)
    with torch.no_grad():
        again = run_from_layer(model, clean.resid[first], first, logits=read)
    return again is not None and bool(torch.allclose(again, clean.logits, rtol=1e-4, atol=1e-4))


def _exact(model: Any, info: ModelInfo, task: _Task, clean: _Clean, heads: list[tuple[int, int]],
           bar: Any) -> tuple[dict[tuple[int, int], float], bool]:
    """The exact effect of mean-ablating each of ``heads`` alone: one copy of the prompts per
    head, several copies per forward. An ablation at layer ``L`` changes nothing below ``L``,
    so where the model allows, each forward starts from the clean residual stream entering the
    lowest ablated layer of its copies. Returns the effects and whether that restart was used."""
    n, seq = task.tokens.shape
    read = task.read
    per_copy = max(n * len(read) * info.d_vocab, 1)
    group = max(1, min(_LOGIT_BUDGET // per_copy, max(1, _TOKEN_BUDGET // (n * seq))))
    tokens = task.tokens.to(info.device)
    restart = _restarts(model, clean, read)
    heads = sorted(heads)  # copies of nearby layers share a forward, so a restart skips more
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(heads), group):
        chunk = heads[start : start + group]
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for j, (layer, head) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((j, head))

        def make(todo: list[tuple[int, int]], layer: int) -> Callable:
            def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
                z = z.clone()
                for j, head in todo:
                    z[j * n : (j + 1) * n, :, head] = clean.means[layer, head].to(z.dtype)
                return z
            return hook

        edit = [(hook_name("z", layer), make(todo, layer)) for layer, todo in by_layer.items()]
        low = min(by_layer)
        with torch.no_grad():
            if restart and low in clean.resid:
                logits = run_from_layer(model, clean.resid[low].repeat(len(chunk), 1, 1), low, edit=edit, logits=read)
            else:
                logits = run(model, tokens.repeat(len(chunk), 1), edit=edit, logits=read)
            assert logits is not None
            losses = _loss(logits, task, read, len(chunk)).double().cpu()
        for head, value in zip(chunk, losses.tolist()):
            out[head] = value - clean.baseline
        bar.update(len(chunk))
    return out, restart


def _check_tasks(tasks: Any) -> list[str]:
    names = list(IMPORTANCE_TASKS)
    if tasks is None:
        return names
    chosen = [tasks] if isinstance(tasks, str) else tasks
    if not isinstance(chosen, Sequence) or not chosen or not all(isinstance(t, str) for t in chosen):
        raise InvalidOptionError(f"tasks must be None, a task name or a non-empty list of them, from {names}; got {tasks!r}")
    unknown = [t for t in chosen if t not in IMPORTANCE_TASKS]
    if unknown:
        raise InvalidOptionError(f"unknown importance task(s) {unknown}; the tasks are {names}")
    return list(dict.fromkeys(chosen))


def head_importance(
    model: Any,
    tasks: str | Sequence[str] | None = None,
    *,
    exact_top: int = 8,
    n_prompts: int = 32,
    seed: int = 0,
    progress: bool | None = None,
) -> HeadImportance:
    """How much each head matters to a battery of tasks: the rise of each task's mean loss when
    the head's output ``z`` is mean-ablated (replaced by its mean over the task's own prompts
    and real positions).

    Every head is ranked by attribution patching (one forward and one backward pass per task:
    ``grad_z(loss) . (mean - z)`` summed over prompts, positions and ``d_head``); the
    ``exact_top`` heads with the largest ``|estimate|`` per task are then ablated for real.

    Args:
        model: a TransformerLens model.
        tasks: ``None`` for every task that applies to the model, or names from
            ``"induction"``, ``"ioi"``, ``"succession"``, ``"retrieval"``. A chosen task that
            does not apply is skipped too, with its reason in ``meta["skipped"]``.
        exact_top: heads per task whose effect is measured exactly (0: attribution only);
            capped at the number of heads.
        n_prompts: prompts per task.
        seed: seeds every task's prompts.
        progress: a progress bar over tasks and exact forwards (``None``: only for more than
            8 steps).

    Returns:
        :class:`HeadImportance`: one row per (task, layer, head).

    Raises:
        InvalidOptionError: an unknown task, ``exact_top`` not an integer >= 0, ``n_prompts``
            not a positive integer, or a bad ``seed``/``progress``.
        DetectorNotApplicableError: no chosen task applies to the model (the message gives
            each task's reason).
    """
    info = model_info(model)
    names = _check_tasks(tasks)
    exact_top = check_int(exact_top, "exact_top", minimum=0)
    n_prompts = positive_int("n_prompts", n_prompts)
    seed = check_int(seed, "seed")
    if progress is not None:
        progress = check_bool(progress, "progress")
    require_hooks(model, [hook_name("z", layer) for layer in range(info.n_layers)], "head importance")
    check_finite(model)
    total = info.n_layers * info.n_heads
    n_exact = min(exact_top, total)
    built: list[_Task] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            built.append(IMPORTANCE_TASKS[name](model, info, n_prompts, seed))
        except DetectorNotApplicableError as exc:  # UnsupportedTokenizerError included
            skipped[name] = f"{type(exc).__name__}: {exc}"
    if not built:
        raise DetectorNotApplicableError(
            "no importance task applies to this model: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    steps = len(built) * (1 + n_exact)
    show = progress if progress is not None else steps > 8
    rows: list[dict[str, Any]] = []
    task_meta: dict[str, Any] = {}
    start = time.perf_counter()
    with tqdm(total=steps, desc="headzoo importance", unit="pass", disable=not show, leave=False) as bar:
        for task in built:
            clean = _attribute(model, info, task)
            baseline, scores = clean.baseline, clean.scores
            bar.update(1)
            flat = scores.reshape(-1)
            # largest |estimate| first; ties in (layer, head) order, so the choice is deterministic
            order = sorted(range(total), key=lambda i: (-abs(float(flat[i])), i))
            chosen = [(i // info.n_heads, i % info.n_heads) for i in order[:n_exact]]
            exact, restarted = _exact(model, info, task, clean, chosen, bar) if chosen else ({}, False)
            for layer in range(info.n_layers):
                for head in range(info.n_heads):
                    est = float(scores[layer, head])
                    got = exact.get((layer, head))
                    rows.append({"task": task.name, "layer": layer, "head": head,
                                 "effect": est if got is None else got,
                                 "method": "attribution" if got is None else "exact", "attribution": est})
            task_meta[task.name] = {
                "description": task.description, "metric": task.metric, "baseline": baseline,
                "n_prompts": int(task.tokens.shape[0]), "positions": int(task.tokens.shape[1]), **task.extra,
                "restarted_at_layer": restarted,
            }
    meta = {
        "model": info.config_dict(),
        "tasks": task_meta,
        "skipped": skipped,
        "ablation": "mean",
        "ablation_site": "hook_z",
        "mean_over": "the task's own prompts and real (unpadded) positions",
        "exact_top": n_exact,
        "n_prompts": n_prompts,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
        "versions": library_versions(),
    }
    return HeadImportance(pd.DataFrame(rows, columns=_COLUMNS), meta)


@final
@dataclasses.dataclass(frozen=True, eq=False)
class HeadImportance(Result):
    """The effect of mean-ablating each head on each task of a battery.

    Build it with :func:`hz.head_importance`; do not subclass.

    Attributes:
        frame: one row per (task, layer, head): ``task, layer, head, effect`` (the rise of the
            task's mean loss with the head mean-ablated: measured where ``method == "exact"``,
            else the attribution estimate), ``method`` (``"exact"`` | ``"attribution"``) and
            ``attribution`` (the estimate, for every head).
        meta: ``tasks`` (per task: ``description``, ``metric``, ``baseline`` = the clean mean
            loss, prompt count), ``skipped`` (task -> reason), ``ablation`` (``"mean"``),
            ``exact_top``, the model, the seed and library versions.
    """

    _FORMAT = "HeadImportance"

    frame: pd.DataFrame
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.frame, pd.DataFrame) or not isinstance(self.meta, dict):
            raise InvalidOptionError("HeadImportance needs a DataFrame and a metadata dict; build it with hz.head_importance")
        missing = [c for c in _COLUMNS if c not in self.frame.columns]
        if missing:
            raise InvalidOptionError(f"HeadImportance needs columns {_COLUMNS}; missing {missing}")
        frame = strings_as_str(cast(pd.DataFrame, self.frame[_COLUMNS]))
        frame["layer"] = frame["layer"].astype("int64")
        frame["head"] = frame["head"].astype("int64")
        for col in ("effect", "attribution"):
            frame[col] = frame[col].astype("float64")
        # own copies (the caller's frame and dict are left alone), strings as Parquet gives them back
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "meta", copy.deepcopy(self.meta))

    @property
    def tasks(self) -> list[str]:
        """The tasks measured, in the order they ran."""
        return list(dict.fromkeys(self.frame["task"]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)`` of the model."""
        model = self.meta.get("model", {})
        return int(model.get("n_layers", 0)), int(model.get("n_heads", 0))

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (a copy): ``task, layer, head, effect, method, attribution``."""
        return self.frame.copy()

    def _check(self, task: str) -> pd.DataFrame:
        if task in self.tasks:
            return cast(pd.DataFrame, self.frame[self.frame["task"] == task])
        why = self.meta.get("skipped", {}).get(task) if isinstance(task, str) else None
        if why is not None:
            raise InvalidOptionError(f"task {task!r} was skipped for this model ({why}); measured: {self.tasks}")
        raise InvalidOptionError(f"unknown task {task!r}; measured: {self.tasks}")

    def matrix(self, task: str, column: str = "effect") -> pd.DataFrame:
        """``layer x head`` table of ``column`` (``"effect"`` or ``"attribution"``) for ``task``."""
        if column not in ("effect", "attribution"):
            raise InvalidOptionError(f"column must be 'effect' or 'attribution'; got {column!r}")
        rows = self._check(task)
        n_layers, n_heads = self.shape
        table = rows.pivot(index="layer", columns="head", values=column)
        table = table.reindex(index=range(n_layers), columns=range(n_heads))
        table.index.name, table.columns.name = "layer", "head"
        return table

    def top(self, k: int = 5, task: str | None = None) -> pd.DataFrame:
        """The ``k`` heads with the largest effect on each task (or on one), largest first."""
        k = positive_int("k", k)
        frame = self.frame if task is None else self._check(task)
        ordered = frame.sort_values(["effect", "layer", "head"], ascending=[False, True, True], kind="stable")
        out = ordered.groupby("task", sort=False).head(k)
        order = {name: i for i, name in enumerate(self.tasks)}
        return out.sort_values("task", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)

    def _as_scores(self) -> Any:
        from headzoo._results import HeadScores

        frame = self.frame.rename(columns={"task": "detector"}).assign(score=self.frame["effect"])
        return HeadScores(cast(pd.DataFrame, frame[["detector", "layer", "head", "score", "effect", "attribution"]]),
                          {"model": self.meta.get("model", {})})

    def plot(self, task: str | None = None, column: str = "effect") -> Any:
        """Layer x head heatmap of ``column`` per task, as a plotly ``Figure`` (returned, never
        shown); drawn by the same code as :meth:`hz.HeadScores.plot`."""
        if task is not None:
            self._check(task)
        if column not in ("effect", "attribution"):
            raise InvalidOptionError(f"column must be 'effect' or 'attribution'; got {column!r}")
        fig = self._as_scores().plot(task, column)
        fig.update_layout(title=html.escape(f"headzoo: head importance (loss rise, mean ablation) of "
                                            f"{self.meta.get('model', {}).get('name', 'model')}"))
        return fig

    def __repr__(self) -> str:
        n_layers, n_heads = self.shape
        skipped = self.meta.get("skipped", {})
        return (f"HeadImportance({', '.join(self.tasks)} x {n_layers} layers x {n_heads} heads, exact top "
                f"{self.meta.get('exact_top')}" + (f"; skipped {', '.join(skipped)}" if skipped else "") + ")")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): per task, a heatmap grid of effects and the top heads."""
        esc = html.escape
        parts = ["<div class='headzoo-importance' style='font-family:sans-serif;font-size:12px'>",
                 f"<b>HeadImportance</b> &middot; {esc(str(self.meta.get('model', {}).get('name', '')))} &middot; "
                 "loss rise with the head mean-ablated"]
        for task in self.tasks:
            table = self.matrix(task)
            values = table.to_numpy(dtype=float)
            hi = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
            cells = []
            for layer in table.index:
                row = "".join(
                    f"<td title='L{layer}H{head}: {v:.4f}' style='width:14px;height:14px;"
                    f"background:{colour(max(v, 0.0), 0.0, hi or 1.0)}'></td>"
                    for head, v in zip(table.columns, table.loc[layer].to_numpy())
                )
                cells.append(f"<tr><th style='font-weight:normal;padding-right:4px'>{layer}</th>{row}</tr>")
            top = self.top(3, task)
            best = ", ".join(f"L{r['layer']}H{r['head']} ({r['effect']:+.3f}, {r['method']})" for _, r in top.iterrows())
            info = self.meta.get("tasks", {}).get(task, {})
            parts.append(
                "<div style='display:inline-block;vertical-align:top;margin:8px 16px 8px 0'>"
                f"<div><b>{esc(task)}</b> (baseline loss {float(info.get('baseline', float('nan'))):.3f})</div>"
                f"<table style='border-collapse:collapse'>{''.join(cells)}</table>"
                f"<div>top: {esc(best)}</div></div>"
            )
        for task, why in self.meta.get("skipped", {}).items():
            parts.append(f"<div>skipped {esc(str(task))}: {esc(str(why))}</div>")
        parts.append("</div>")
        return "".join(parts)

    def _to_payload(self) -> Payload:
        return Payload(self.frame, self.meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadImportance:
        return cls(payload.frame, payload.meta)
