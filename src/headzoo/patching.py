"""Activation patching, ``hz.patching``: which activations carry the difference between inputs?

Run the model on a *clean* input and a *corrupted* one that differ in one key detail, then rerun
one input with a single activation taken from the other run and measure the output with a
metric. *Denoising* (the default, TransformerLens' convention) patches clean activations into
the corrupted run: what restores the answer is sufficient for it. *Noising* patches corrupted
activations into the clean run: what breaks the answer is necessary for it (Meng et al. 2022;
Wang et al. 2022; Heimersheim and Nanda 2024, "How to use and interpret activation patching").

Every function returns :class:`hz.HeadEffects` whose ``effect`` is the metric on the patched
run, exactly what ``transformer_lens.patching``'s matching function returns (tested to 1e-4),
computed faster: patched runs restart at the patched layer from the receiving run's residual
stream, and several patches share one forward pass.

A metric is any function of the logits ``[batch, pos, vocab]`` returning a scalar tensor, or,
with ``per_example=True``, a ``[batch]`` tensor (the result then carries standard errors and
bootstrap intervals). The helpers below build common ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from headzoo._effects import HeadEffects
from headzoo._errors import InvalidOptionError
from headzoo._models import library_versions, model_info
from headzoo._patching import SITES, Direction, PatchResult, current_lengths, run_attribution, run_patching
from headzoo._path_patching import parse_groups, parse_receivers, reachable_senders, run_path_patching
from headzoo._tokens import pad_right

__all__ = [
    "patch",
    "attribution_patch",
    "attribution_patch_heads",
    "patch_heads",
    "patch_qkv",
    "patch_pattern",
    "patch_residual",
    "patch_attn_out",
    "patch_mlp_out",
    "path_patch",
    "path_patch_heads",
    "logit_diff",
    "prob",
    "log_prob",
    "loss",
    "kl_from",
    "current_lengths",
    "KINDS",
]

#: patch kinds and what they replace
KINDS = {
    "z": "each head's output (hook_z) [layer, head(, pos)]",
    "q": "each head's queries [layer, head(, pos)]",
    "k": "each key-value head's keys [layer, kv_head(, pos)]",
    "v": "each key-value head's values [layer, kv_head(, pos)]",
    "pattern": "each head's attention pattern [layer, head(, dest_pos)]",
    "resid_pre": "the residual stream entering each block [layer, pos]",
    "resid_mid": "the residual stream between attention and MLP [layer, pos]",
    "attn_out": "each layer's attention output [layer, pos]",
    "mlp_out": "each layer's MLP output [layer, pos]",
}


def patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    kind: str = "z",
    by_pos: bool = False,
    direction: Direction = "denoise",
    per_example: bool = False,
    positions: int | Sequence[int] | str | None = "auto",
    layers: Sequence[int] | None = None,
    memory_mb: float = 512.0,
    progress: bool | None = None,
) -> HeadEffects:
    """Patch every index of one kind of activation, one at a time; the metric for each.

    Args:
        model: any TransformerLens model.
        clean_tokens, corrupted_tokens: ``[batch, pos]`` token ids of the same shape, or lists of
            prompts of different lengths (row ``i`` of each as long as the other): those run
            batched, right-padded, and the metric helpers read each row's own last position.
        metric: ``metric(logits) -> scalar`` (``[batch]`` with ``per_example=True``).
        kind: what to patch, one of :data:`KINDS`.
        by_pos: patch each position separately (head kinds; always for residual kinds).
        direction: ``"denoise"`` (clean into the corrupted run) or ``"noise"`` (corrupted into
            the clean run).
        positions: where to compute logits. ``"auto"`` (default): the positions the metric
            reads, found from its gradient on the unpatched run and checked by rerunning it
            with every other position set to NaN (all positions when that cannot be shown,
            e.g. for a non-differentiable metric). A list: only those (an error if the metric
            reads others). ``None``: all. The metric always receives ``[batch, pos, vocab]``;
            positions not computed hold NaN.
        layers: patch only these layers.
        memory_mb: budget for the patched copies that share one forward pass (on a CPU,
            copies also stop being added once a forward holds about 1024 tokens: beyond
            that, batching costs more per token than it saves).

    Returns:
        :class:`hz.HeadEffects`; ``meta["baseline"]`` is the metric on the unpatched receiving
        run and ``meta["source"]`` on the run the patches come from.
    """
    if kind not in SITES:
        raise InvalidOptionError(f"unknown patch kind {kind!r}; choose one of {list(KINDS)}")
    site = SITES[kind](by_pos)
    out = run_patching(
        model, clean_tokens, corrupted_tokens, metric, site, direction=direction, per_example=per_example,
        positions=positions, layers=layers, memory_mb=memory_mb, progress=progress,
    )
    return _effects(model, out, site, kind, by_pos, direction, per_example, positions, method="exact")


def _effects(model: Any, out: PatchResult, site: Any, kind: str, by_pos: bool, direction: str, per_example: bool,
             positions: Any, method: str, axes: tuple[str, ...] | None = None, **extra: Any) -> HeadEffects:
    info = model_info(model)
    reduce = (lambda t: float(t.mean())) if per_example else (lambda t: float(t))
    meta = {
        "format": "headzoo.HeadEffects/1",
        "kind": kind,
        "by_pos": by_pos or (site is not None and tuple(site.axes)[-1:] == ("pos",)),
        "direction": direction,
        "baseline": reduce(out.baseline),
        "source": reduce(out.source),
        "per_example": per_example,
        "positions": positions if positions is None or isinstance(positions, str) else ([positions] if isinstance(positions, int) else list(positions)),
        "model": info.config_dict(),
        "versions": library_versions(),
        "method": method,
        "engine": out.engine,
        **extra,
    }
    if axes == ("group",):  # path patching of sender groups: one row per group, no layer axis
        return HeadEffects.from_values(out.index, (), out.values.numpy(), meta, columns=("group",))
    return HeadEffects.from_values(out.index, axes if axes is not None else tuple(site.axes) if site is not None else (), out.values.numpy(), meta)


def attribution_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    kind: str = "z",
    by_pos: bool = False,
    direction: Direction = "denoise",
    per_example: bool = False,
) -> HeadEffects:
    """Attribution patching: the gradient estimate of every patch of ``kind`` at once.

    ``effect = metric(receiver) + grad . (donor - receiver)`` summed over the patched
    activation (Nanda 2023, "Attribution patching"; Syed et al. 2023): one forward and one
    backward pass on the receiving run and one forward on the donor, instead of one forward per
    patch. It is a linear approximation: trust its ranking of large effects more than its
    values, and check the heads that matter with :func:`patch`. Kinds: head vectors (``z``,
    ``q``, ``k``, ``v``) and residual kinds; the metric must be differentiable.
    """
    if kind not in SITES or kind == "pattern":
        raise InvalidOptionError(f"attribution patching supports {[k for k in KINDS if k != 'pattern']}; got {kind!r}")
    site = SITES[kind](by_pos)
    out = run_attribution(model, clean_tokens, corrupted_tokens, metric, site, direction=direction, per_example=per_example)
    return _effects(model, out, site, kind, by_pos, direction, per_example, None, method="attribution")


def attribution_patch_heads(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, *, by_pos: bool = False, **options: Any
) -> HeadEffects:
    """Attribution patching of every head's output (``z``) in one backward pass; see
    :func:`attribution_patch`. Compare with :func:`patch_heads` (exact)."""
    return attribution_patch(model, clean_tokens, corrupted_tokens, metric, kind="z", by_pos=by_pos, **options)


def patch_heads(model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, *, by_pos: bool = False, **options: Any) -> HeadEffects:
    """Patch each head's output (``hook_z``), over all positions or (``by_pos``) one at a time.

    Equals ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` (``by_pos``:
    ``..._by_pos``). See :func:`patch` for the options.
    """
    return patch(model, clean_tokens, corrupted_tokens, metric, kind="z", by_pos=by_pos, **options)


def patch_qkv(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, *, which: Literal["q", "k", "v"] = "q",
    by_pos: bool = False, **options: Any,
) -> HeadEffects:
    """Patch each head's queries, keys or values (keys and values per key-value head)."""
    if which not in ("q", "k", "v"):
        raise InvalidOptionError(f"which must be 'q', 'k' or 'v'; got {which!r}")
    return patch(model, clean_tokens, corrupted_tokens, metric, kind=which, by_pos=by_pos, **options)


def patch_pattern(model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, *, by_pos: bool = False, **options: Any) -> HeadEffects:
    """Patch each head's attention pattern (``by_pos``: one destination row at a time)."""
    return patch(model, clean_tokens, corrupted_tokens, metric, kind="pattern", by_pos=by_pos, **options)


def patch_residual(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, *,
    where: Literal["resid_pre", "resid_mid"] = "resid_pre", **options: Any,
) -> HeadEffects:
    """Patch the residual stream at each (layer, position)."""
    if where not in ("resid_pre", "resid_mid"):
        raise InvalidOptionError(f"where must be 'resid_pre' or 'resid_mid'; got {where!r}")
    return patch(model, clean_tokens, corrupted_tokens, metric, kind=where, **options)


def patch_attn_out(model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, **options: Any) -> HeadEffects:
    """Patch each layer's attention output at each position."""
    return patch(model, clean_tokens, corrupted_tokens, metric, kind="attn_out", **options)


def patch_mlp_out(model: Any, clean_tokens: Any, corrupted_tokens: Any, metric: Callable, **options: Any) -> HeadEffects:
    """Patch each layer's MLP output at each position."""
    return patch(model, clean_tokens, corrupted_tokens, metric, kind="mlp_out", **options)


def path_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    senders: Sequence[tuple[int, int]] | Sequence[Sequence[tuple[int, int]]],
    receivers: str | Sequence[tuple[Any, ...]] = "logits",
    freeze_mlps: bool = False,
    direction: Direction = "denoise",
    per_example: bool = False,
    positions: int | Sequence[int] | str | None = "auto",
    memory_mb: float = 512.0,
    progress: bool | None = None,
) -> HeadEffects:
    """Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023): the senders' outputs from
    the donor run reach only the receivers' chosen inputs.

    With ``direction="denoise"`` (default) the senders' clean outputs are patched into the
    corrupted run while every other head stays frozen at its corrupted output; MLPs are
    recomputed (the convention of Wang et al. and the ARENA exercises) unless
    ``freeze_mlps=True`` (frozen at their corrupted outputs: the strict direct path). The
    receivers' inputs from that run are then patched into a fresh corrupted run, and the metric
    is read there. ``direction="noise"`` swaps the runs (corrupted outputs into the clean run,
    others frozen at their clean outputs: the IOI paper's setting).

    Args:
        senders: ``[(layer, head), ...]`` patched together, or a list of such lists: one result
            row per group, the groups sharing forward passes.
        receivers: ``"logits"`` (the direct path to the output), or a list of
            ``(layer, head, "q"|"k"|"v")`` (a head's query, key or value input; for
            grouped-query models a key or value receiver names a query head and patches its
            key-value head, shared by its group) and ``(layer, "mlp")`` (an MLP's input).
        freeze_mlps, direction, per_example, positions, memory_mb, progress: as above and as
            in :func:`patch`.

    Returns:
        :class:`hz.HeadEffects` with columns ``group`` and ``effect`` (the metric on the patched
        run); ``meta["senders"]`` lists each group's heads, ``meta["receivers"]`` the receivers.
        A group whose heads sit at or above every receiver has no path to them: its effect is
        the baseline.
    """
    info = model_info(model)
    groups = parse_groups(senders, info)
    out, recs = run_path_patching(
        model, clean_tokens, corrupted_tokens, metric, groups, receivers, freeze_mlps=freeze_mlps, direction=direction,
        per_example=per_example, positions=positions, memory_mb=memory_mb, progress=progress,
    )
    return _effects(model, out, None, "path", False, direction, per_example, positions, method="exact", axes=("group",),
                    senders=[[list(h) for h in g] for g in groups], receivers=[r.label() for r in recs], freeze_mlps=freeze_mlps)


def path_patch_heads(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    receivers: str | Sequence[tuple[Any, ...]] = "logits",
    senders: Sequence[tuple[int, int]] | None = None,
    freeze_mlps: bool = False,
    direction: Direction = "denoise",
    per_example: bool = False,
    positions: int | Sequence[int] | str | None = "auto",
    memory_mb: float = 512.0,
    progress: bool | None = None,
) -> HeadEffects:
    """Path-patch each sender head alone into ``receivers`` (see :func:`path_patch`).

    Args:
        senders: the heads to sweep; ``None``: every head below the last receiver (every head
            for ``"logits"``).

    Returns:
        :class:`hz.HeadEffects` with columns ``layer``, ``head``, ``effect``, one row per sender.
    """
    info = model_info(model)
    has_mlps = not bool(getattr(model.cfg, "attn_only", False))
    recs = parse_receivers(receivers, info, has_mlps)
    if senders is None:
        heads = reachable_senders(recs, info)
    else:
        groups = parse_groups(senders, info)
        if len(groups) != 1:
            raise InvalidOptionError("path_patch_heads sweeps single heads: pass senders=[(layer, head), ...]; "
                                     "for groups patched together use path_patch")
        heads = groups[0]
    if not heads:
        raise InvalidOptionError(f"no head sits below the receivers {[r.label() for r in recs]}, so no path reaches them")
    out, recs = run_path_patching(
        model, clean_tokens, corrupted_tokens, metric, [[h] for h in heads], receivers, freeze_mlps=freeze_mlps,
        direction=direction, per_example=per_example, positions=positions, memory_mb=memory_mb, progress=progress,
    )
    out = dataclasses.replace(out, index=[tuple(h) for h in heads])
    return _effects(model, out, None, "path", False, direction, per_example, positions, method="exact", axes=("head",),
                    receivers=[r.label() for r in recs], freeze_mlps=freeze_mlps)


# -- metrics ------------------------------------------------------------------------------------


def _answers(ids: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(ids)
    if t.is_floating_point() or t.ndim > 1:
        raise InvalidOptionError(f"{name} must be a token id or a [batch] tensor of ids; got {ids!r}")
    return t.long()


def _at(logits: torch.Tensor, pos: int) -> torch.Tensor:
    """``logits[:, pos]``; on right-padded prompts of different lengths a negative ``pos``
    counts from each row's own end (``-1``: its last real token)."""
    if logits.ndim != 3:
        return logits
    lengths = current_lengths()
    if lengths is None or pos >= 0 or len(lengths) != logits.shape[0]:
        return logits[:, pos]
    where = lengths.to(logits.device) + pos
    if bool((where < 0).any()):
        raise InvalidOptionError(f"pos={pos} lies before the start of a prompt of length {int(lengths.min())}")
    return logits[torch.arange(logits.shape[0], device=logits.device), where]


def _finish(values: torch.Tensor, per_example: bool) -> torch.Tensor:
    return values if per_example else values.mean()


def logit_diff(correct: Any, wrong: Any, *, pos: int = -1, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logit[correct] - logit[wrong]`` at position ``pos`` (ids: one, or one per example)."""
    c, w = _answers(correct, "correct"), _answers(wrong, "wrong")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = _at(logits, pos)
        rows = torch.arange(last.shape[0], device=last.device)
        return _finish(last[rows, c.to(last.device)] - last[rows, w.to(last.device)], per_example)

    return metric


def _answer_score(answer: Any, pos: int, per_example: bool, score: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    a = _answers(answer, "answer")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = score(_at(logits, pos).float())
        return _finish(last[torch.arange(last.shape[0], device=last.device), a.to(last.device)], per_example)

    return metric


def prob(answer: Any, *, pos: int = -1, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The probability of ``answer`` at position ``pos``."""
    return _answer_score(answer, pos, per_example, lambda x: x.softmax(-1))


def log_prob(answer: Any, *, pos: int = -1, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The log-probability of ``answer`` at position ``pos``."""
    return _answer_score(answer, pos, per_example, lambda x: x.log_softmax(-1))


def loss(tokens: Any, *, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mean next-token cross-entropy of ``tokens`` ``[batch, pos]`` under the logits."""
    if isinstance(tokens, (list, tuple)) and tokens and len({len(r) for r in tokens}) > 1:
        ids = pad_right([torch.as_tensor(r).long() for r in tokens]).ids
    else:
        ids = torch.as_tensor(tokens).long()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        logp = logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None].to(logp.device)).squeeze(-1)
        lengths = current_lengths()
        if lengths is None or len(lengths) != nll.shape[0]:
            return _finish(nll.mean(-1), per_example)
        # right-padded rows: only predictions of real next tokens count
        real = torch.arange(nll.shape[1], device=nll.device)[None, :] < (lengths.to(nll.device) - 1)[:, None]
        per_row = torch.where(real, nll, 0.0).sum(-1) / real.sum(-1).clamp_min(1)
        return _finish(per_row, per_example)

    return metric


def kl_from(reference_logits: torch.Tensor, *, pos: int = -1, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``KL(reference || patched)`` of the next-token distributions at ``pos`` (e.g. from the
    clean run's logits: how far a patch moves the output away from it)."""
    ref = _at(reference_logits.detach(), pos).float().log_softmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        cur = _at(logits, pos).float().log_softmax(-1)
        r = ref.to(cur.device)
        return _finish((r.exp() * (r - cur)).sum(-1), per_example)

    return metric
