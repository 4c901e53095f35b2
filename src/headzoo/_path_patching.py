"""Path patching: does a head's output matter *through one route* into the rest of the model?

Activation patching replaces an activation everywhere it is read. Path patching (Wang et al.
2022, IOI, arXiv 2211.00593; Goldowsky-Dill et al. 2023, arXiv 2304.05969) replaces it only on
the way into chosen *receivers*, the queries, keys or values of later heads, a later MLP, or
the logits:

1. run the receiving input (corrupted when denoising) with the *senders'* outputs taken from
   the donor run and every other head's output frozen at the receiving run's own value, so the
   senders' change travels only through the residual stream (and through the MLPs, which are
   recomputed unless ``freeze_mlps=True``, the strict direct path); record what the receivers
   read there;
2. run the receiving input again with only the receivers' inputs replaced by those records,
   everything else computed normally, and measure the metric.

With ``"logits"`` as the receiver step 1 alone gives the answer (the direct effect through the
residual stream). headzoo runs both steps from the first layer that can change (the receiving
run's residual stream is reused below it) and only on the positions after the first one where
clean and corrupted differ (the same prefix engine as exact patching), shares one forward
between several sender groups, and computes logits only where the metric reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from headzoo._errors import InvalidOptionError
from headzoo._forward import first_difference, hook_name, prefix_hooks, require_hooks, warn_once
from headzoo._models import ModelInfo
from headzoo._patching import (
    SITES,
    Direction,
    Metric,
    PatchResult,
    _check_no_pad_reads,
    _evaluate_rows,
    _Runner,
    explicit_positions,
    plan_patching,
    read_positions,
)
from headzoo._tokens import check_int

__all__ = ["Receiver", "parse_receivers", "parse_groups", "run_path_patching", "reachable_senders"]

Head = tuple[int, int]
InputKind = Literal["q", "k", "v", "mlp", "logits"]


@dataclasses.dataclass(frozen=True)
class Receiver:
    """One input that patched paths end in.

    Attributes:
        kind: ``"q"``, ``"k"``, ``"v"`` (a head's query, key or value input), ``"mlp"`` (an
            MLP's input) or ``"logits"`` (the unembedding's input).
        layer: the receiving layer (``n_layers`` for the logits).
        head: the query head named by the user (``None`` for an MLP or the logits).
        index: the head axis index in the activation: ``head`` for queries, its key-value
            head for keys and values of grouped-query models.
    """

    kind: InputKind
    layer: int
    head: int | None = None
    index: int | None = None

    @property
    def hook(self) -> str:
        return hook_name("mlp_out" if self.kind == "mlp" else self.kind, self.layer)

    def label(self) -> str:
        if self.kind == "logits":
            return "logits"
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        return f"L{self.layer}H{self.head}.{self.kind}"


def parse_receivers(receivers: Any, info: ModelInfo, has_mlps: bool) -> list[Receiver]:
    """``"logits"`` or a list of ``(layer, head, "q"|"k"|"v")`` / ``(layer, "mlp")`` as
    :class:`Receiver` objects (duplicates dropped; a key or value receiver names a query
    head and lands on its key-value head)."""
    if isinstance(receivers, str):
        if receivers != "logits":
            raise InvalidOptionError(
                f"receivers must be 'logits' or a list of (layer, head, 'q'|'k'|'v') and (layer, 'mlp'); got {receivers!r}"
            )
        return [Receiver("logits", info.n_layers)]
    if not isinstance(receivers, (list, tuple)) or not receivers:
        raise InvalidOptionError(
            "receivers must be 'logits' or a non-empty list of (layer, head, 'q'|'k'|'v') and (layer, 'mlp'); "
            f"got {receivers!r}"
        )
    group = info.n_heads // info.n_kv_heads
    out: list[Receiver] = []
    for item in receivers:
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise InvalidOptionError(
                f"each receiver is (layer, head, 'q'|'k'|'v') or (layer, 'mlp'); got {item!r}. "
                "Pass receivers='logits' (not in a list) for the direct path to the output."
            )
        layer = check_int(item[0], "receiver layer")
        if not 0 <= layer < info.n_layers:
            raise InvalidOptionError(f"receiver {tuple(item)!r}: layer {layer} is outside a model with {info.n_layers} layers")
        if len(item) == 2:
            if item[1] != "mlp":
                raise InvalidOptionError(f"a two-item receiver must be (layer, 'mlp'); got {tuple(item)!r}")
            if not has_mlps:
                raise InvalidOptionError(f"receiver {tuple(item)!r}: this model has no MLPs (attn_only)")
            rec = Receiver("mlp", layer)
        else:
            head, kind = check_int(item[1], "receiver head"), item[2]
            if kind not in ("q", "k", "v"):
                raise InvalidOptionError(f"receiver {tuple(item)!r}: the input must be 'q', 'k' or 'v'; got {kind!r}")
            if not 0 <= head < info.n_heads:
                raise InvalidOptionError(f"receiver {tuple(item)!r}: head {head} is outside a layer of {info.n_heads} heads")
            rec = Receiver(kind, layer, head, head if kind == "q" else head // group)
        if rec.kind in ("k", "v") and any(r.kind == rec.kind and r.layer == rec.layer and r.index == rec.index for r in out):
            continue  # two query heads of one key-value group share the same key/value input
        if rec not in out:
            out.append(rec)
    return out


def parse_groups(senders: Any, info: ModelInfo) -> list[list[Head]]:
    """``[(layer, head), ...]`` (one group) or a list of such lists, checked."""
    def is_head(x: Any) -> bool:
        return isinstance(x, (list, tuple)) and len(x) == 2 and all(not isinstance(v, (list, tuple, str)) for v in x)

    if not isinstance(senders, (list, tuple)) or not senders:
        raise InvalidOptionError(f"senders must be a non-empty list of (layer, head) pairs (or a list of such lists); got {senders!r}")
    raw = [senders] if all(is_head(x) for x in senders) else list(senders)
    groups: list[list[Head]] = []
    for group in raw:
        if not isinstance(group, (list, tuple)) or not group or not all(is_head(x) for x in group):
            raise InvalidOptionError(
                f"senders must be (layer, head) pairs, or lists of them (one list per group patched together); got {group!r}"
            )
        heads: list[Head] = []
        for layer, head in group:
            layer, head = check_int(layer, "sender layer"), check_int(head, "sender head")
            if not (0 <= layer < info.n_layers and 0 <= head < info.n_heads):
                raise InvalidOptionError(f"sender {(layer, head)} is outside a model with {info.n_layers} layers of {info.n_heads} heads")
            if (layer, head) not in heads:
                heads.append((layer, head))
        groups.append(heads)
    return groups


def reachable_senders(receivers: list[Receiver], info: ModelInfo) -> list[Head]:
    """Every head whose output can reach at least one receiver (a layer below it)."""
    top = max(r.layer for r in receivers)
    return [(layer, head) for layer in range(min(top, info.n_layers)) for head in range(info.n_heads)]


def run_path_patching(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    groups: list[list[Head]],
    receivers: Any,
    *,
    freeze_mlps: bool = False,
    direction: Direction = "denoise",
    per_example: bool = False,
    positions: Sequence[int] | int | str | None = "auto",
    memory_mb: float = 512.0,
    progress: bool | None = None,
) -> tuple[PatchResult, list[Receiver]]:
    """Path-patch each group of senders into ``receivers``; the engine behind
    ``hz.patching.path_patch`` and ``path_patch_heads``.

    Returns:
        The :class:`PatchResult` (index ``(group,)`` per group) and the parsed receivers.
    """
    if not callable(metric):
        raise InvalidOptionError(f"metric must be a function of the logits; got {type(metric).__name__}")
    if not isinstance(freeze_mlps, bool):
        raise InvalidOptionError(f"freeze_mlps must be True or False; got {freeze_mlps!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not memory_mb > 0:
        raise InvalidOptionError(f"memory_mb must be a positive number; got {memory_mb!r}")
    plan = plan_patching(model, clean_tokens, corrupted_tokens, direction, SITES["z"](False), None)
    info = plan.info
    has_mlps = not bool(getattr(model.cfg, "attn_only", False))
    recs = parse_receivers(receivers, info, has_mlps)
    batch, seq = plan.shape
    explicit = explicit_positions(positions, seq)  # checked before any forward pass
    n_layers = info.n_layers
    to_logits = recs[0].kind == "logits"
    # layers whose heads are frozen: everything a sender's change can pass through before the
    # last receiver reads it (every layer when the receiver is the logits)
    # (an MLP reads its own layer's attention output too, so that layer's heads are frozen as well)
    last = n_layers if to_logits else max(r.layer + (r.kind == "mlp") for r in recs)
    z_hooks = {layer: hook_name("z", layer) for layer in range(n_layers)}
    mlp_hooks = {layer: hook_name("mlp_out", layer) for layer in range(n_layers)} if has_mlps else {}
    resid_hooks = {layer: hook_name("resid_pre", layer) for layer in range(n_layers)}
    require_hooks(model, [*z_hooks.values(), *(mlp_hooks.values() if freeze_mlps else []), *(r.hook for r in recs if r.kind != "logits")],
                  "path patching")
    can_restart = all(name in model.hook_dict for name in resid_hooks.values())

    donor_z: dict[int, torch.Tensor] = {}
    frozen_z: dict[int, torch.Tensor] = {}
    frozen_mlp: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}
    sender_layers = sorted({layer for group in groups for layer, _ in group})

    def keep(store: dict[int, torch.Tensor], layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[layer] = act.detach().clone()
        return hook

    runner = _Runner(model)
    # positions before p0 are the same in every run: patched runs compute the suffix only
    p0 = first_difference(plan.receiver, plan.donor)
    capture = prefix_hooks(model, range(n_layers), p0) if can_restart and 0 < p0 < seq else None
    with torch.no_grad():
        source = _evaluate_rows(metric, runner.full(plan.donor, [(z_hooks[layer], keep(donor_z, layer)) for layer in sender_layers]),
                                plan, per_example)
        keeps = [(z_hooks[layer], keep(frozen_z, layer)) for layer in range(min(last, n_layers))]
        if freeze_mlps:
            keeps += [(mlp_hooks[layer], keep(frozen_mlp, layer)) for layer in range(min(last, n_layers))]
        if can_restart:
            keeps += [(resid_hooks[layer], keep(resid, layer)) for layer in range(n_layers)]
        if capture is not None:
            keeps += capture[0]
        base_logits = runner.full(plan.receiver, keeps)
        baseline = _evaluate_rows(metric, base_logits, plan, per_example)
        _check_no_pad_reads(metric, base_logits, plan, baseline, per_example)
    runner.read = read_positions(metric, base_logits, baseline, plan, per_example, positions, explicit)
    restart = False
    first = min([*(layer for group in groups for layer, _ in group), *(r.layer for r in recs if r.kind != "logits")], default=0)
    first = min(first, n_layers - 1)
    if can_restart:
        with torch.no_grad():
            again = runner.expand(runner.from_layer(resid[first], first, []), seq)
            want = runner.expand(base_logits[:, runner.read] if runner.read is not None else base_logits, seq)
            restart = bool(torch.allclose(again, want, rtol=1e-4, atol=1e-4, equal_nan=True))
    if not restart:
        warn_once(f"headzoo path patching reruns every layer of this {type(model).__name__}: restarting at a layer did not "
                  "reproduce its forward pass. The numbers are the same, only slower.")
    why = runner.share_prefix(capture, restart, resid, first, base_logits, seq, p0)
    vocab = base_logits.shape[-1]
    del base_logits

    logit_positions = len(runner.read) if runner.read is not None else seq
    suffix = seq - runner.shift
    per_copy = 4 * batch * (suffix * (8 + 3 * len(recs)) * info.d_model + 2 * runner.shift * info.d_model
                            + logit_positions * vocab)
    size = max(1, min(len(groups), int(memory_mb * 2**20 // per_copy)))
    if torch.device(info.device).type == "cpu":
        size = min(size, max(1, 1024 // (batch * suffix)))  # see _patching: big CPU batches cost more per token
    order = sorted(range(len(groups)), key=lambda i: min(layer for layer, _ in groups[i]))
    values: dict[int, torch.Tensor] = {}
    show = progress if progress is not None else len(groups) > 64
    bar = tqdm(total=len(groups), desc="headzoo path patch", disable=not show, leave=False)
    try:
        with torch.no_grad():
            for start in range(0, len(order), size):
                chunk = [groups[i] for i in order[start : start + size]]
                logits = _patched_chunk(
                    model, runner, plan, chunk, recs, donor_z, frozen_z, frozen_mlp, resid, z_hooks, mlp_hooks,
                    freeze_mlps=freeze_mlps, restart=restart, last=last,
                )
                for j, i in enumerate(order[start : start + size]):
                    values[i] = _evaluate_rows(metric, runner.expand(logits[j * batch : (j + 1) * batch], seq), plan, per_example)
                bar.update(len(chunk))
                del logits
    finally:
        bar.close()
    engine: dict[str, Any] = {"reused_layers": restart, "groups_per_forward": size, "read_positions": runner.read,
                              "prefix_reused": runner.shift, "first_difference": p0}
    if why:
        engine["prefix_not_reused"] = why
    if plan.lengths is not None:
        engine["lengths"] = plan.lengths.tolist()
    result = PatchResult([(i,) for i in range(len(groups))], torch.stack([values[i] for i in range(len(groups))]),
                         baseline, source, engine)
    return result, recs


def _patched_chunk(
    model: Any, runner: _Runner, plan: Any, chunk: list[list[Head]], recs: list[Receiver],
    donor_z: dict[int, torch.Tensor], frozen_z: dict[int, torch.Tensor], frozen_mlp: dict[int, torch.Tensor],
    resid: dict[int, torch.Tensor], z_hooks: dict[int, str], mlp_hooks: dict[int, str], *,
    freeze_mlps: bool, restart: bool, last: int,
) -> torch.Tensor:
    """The two path-patching steps for ``len(chunk)`` sender groups sharing one batch: returns
    the logits ``[len(chunk) * batch, read, vocab]``."""
    batch = plan.shape[0]
    g = len(chunk)
    n_layers = plan.info.n_layers
    start = min(layer for group in chunk for layer, _ in group)
    rows = lambda j: slice(j * batch, (j + 1) * batch)  # noqa: E731
    mlp_receivers = {r.layer for r in recs if r.kind == "mlp"}

    def freeze_z(layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            out = frozen_z[layer].repeat(g, *([1] * (act.ndim - 1))).to(act.dtype)
            for j, group in enumerate(chunk):
                for sl, sh in group:
                    if sl == layer:
                        out[rows(j), :, sh] = donor_z[layer][:, :, sh].to(act.dtype)
            return out
        return hook

    def freeze_mlp(layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            # an MLP's output is outside the attention: with a shared prefix it holds the suffix only
            return frozen_mlp[layer][:, runner.shift :].repeat(g, *([1] * (act.ndim - 1))).to(act.dtype)
        return hook

    # step 1: senders patched, every other head frozen (and the MLPs too with freeze_mlps)
    edits: list[tuple[str, Callable]] = [(z_hooks[layer], freeze_z(layer)) for layer in range(start, min(last, n_layers))]
    if freeze_mlps:
        edits += [(mlp_hooks[layer], freeze_mlp(layer)) for layer in range(start, min(last, n_layers)) if layer not in mlp_receivers]
    if recs[0].kind == "logits":
        return _forward_from(runner, plan, resid, start, g, edits, restart)
    recorded: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> None:
            recorded[name] = act.detach().clone()
        return hook

    # a receiver below every sender of the chunk reads what it always read: nothing to patch
    recs = [r for r in recs if r.layer >= start]
    if not recs:
        return _forward_from(runner, plan, resid, n_layers - 1, g, [], restart)
    # the receivers' inputs as the patched senders leave them; nothing after the last receiver matters
    hooks = {r.hook for r in recs}
    runner_read, runner.read = runner.read, [0]
    try:
        _forward_from(runner, plan, resid, start, g, edits + [(name, record(name)) for name in sorted(hooks)], restart)
    finally:
        runner.read = runner_read

    # step 2: only the receivers' inputs replaced, everything else computed as usual
    def replace(name: str, layer_recs: list[Receiver]) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            new = recorded[name].to(act.dtype)
            for r in layer_recs:
                if r.kind == "mlp":
                    act = new.clone()
                else:
                    act[:, :, r.index] = new[:, :, r.index]
            return act
        return hook

    patches = [(name, replace(name, [r for r in recs if r.hook == name])) for name in sorted(hooks)]
    first = min(r.layer for r in recs)
    return _forward_from(runner, plan, resid, first, g, patches, restart)


def _forward_from(runner: _Runner, plan: Any, resid: dict[int, torch.Tensor], layer: int, g: int,
                  edits: list[tuple[str, Callable]], restart: bool) -> torch.Tensor:
    """The receiving run repeated ``g`` times, from ``layer`` on (or from the tokens)."""
    if restart:
        return runner.restart(resid[layer], layer, g, edits)
    return runner.full(plan.receiver.repeat(g, 1), edits)
