"""Activation patching: which activations carry the difference between two inputs?

Run the model on a *clean* input (it gives the right answer) and a *corrupted* one (it does
not), then rerun the corrupted input with one activation replaced by its clean value and measure
how far the output moves back (Meng et al. 2022, ROME; Wang et al. 2022, IOI). That is
*denoising*, TransformerLens' convention; *noising* patches corrupted activations into the
clean run instead. An activation that restores the answer on its own is sufficient for it.

headzoo computes exactly what ``transformer_lens.patching`` does, but by design cheaper:

- a patch at layer ``L`` cannot change anything below ``L``, so every patched run restarts
  from the corrupted run's residual stream entering block ``L`` (``start_at_layer``) instead of
  recomputing the layers below (where the model class supports it);
- several patched runs share one forward: the corrupted batch is repeated once per patch and
  each copy gets its own patch, up to a memory budget;
- only the activation being patched is kept from the clean run, not a full cache;
- with ``positions=``, logits are computed only where the metric reads them;
- positions before the first one where clean and corrupted differ are the same in every run
  (attention is causal), so patched runs compute only the positions after them, reading the
  earlier ones' attention inputs from the receiving run (prefix reuse; where the model allows).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from headzoo._errors import InvalidOptionError, InvalidTokensError, UnsupportedModelError
from headzoo._forward import (
    HOOKS,
    Prefix,
    check_finite,
    first_difference,
    hook_name,
    prefix_hooks,
    require_hooks,
    run,
    run_from_layer,
    run_suffix_from_layer,
    warn_once,
)
from headzoo._models import ModelInfo, model_info
from headzoo._tokens import as_block, as_prompts, check_int, pad_right

__all__ = ["Site", "SITES", "PatchPlan", "PatchResult", "plan_patching", "run_patching", "run_attribution",
           "Direction", "current_lengths"]

Direction = Literal["denoise", "noise"]
Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Site:
    """What one kind of patch replaces.

    Attributes:
        name: the patch kind (``"z"``, ``"resid_pre"``, ...).
        hook: the activation kind, a key of the kernel's hook table (``"z"``, ``"resid_pre"``, ...).
        axes: the index axes after ``layer``: from ``"head"``, ``"kv_head"``, ``"pos"``,
            ``"dest_pos"``, ``"src_pos"``.
        layout: where those axes sit in the activation (after batch): e.g. ``("pos", "head")``
            for ``hook_z`` ``[batch, pos, head, d_head]``, ``("head", "dest_pos", "src_pos")``
            for patterns.
    """

    name: str
    hook: str
    axes: tuple[str, ...]
    layout: tuple[str, ...]

    def index(self, axes_values: dict[str, int]) -> tuple[Any, ...]:
        """The activation index (after batch) that a patch at ``axes_values`` replaces."""
        return tuple(axes_values.get(axis, slice(None)) for axis in self.layout)


    def hook_at(self, layer: int) -> str:
        return hook_name(self.hook, layer)


def _head_site(name: str, by_pos: bool, kv: bool = False) -> Site:
    # keys and values of grouped-query models are indexed by key-value head, as in TransformerLens
    head = "kv_head" if kv else "head"
    return Site(name, name, ("pos", head) if by_pos else (head,), ("pos", head))


#: what each patch kind replaces: one entry per kind (where is the kernel's hook table)
SITES: dict[str, Callable[[bool], Site]] = {
    "z": lambda by_pos: _head_site("z", by_pos),
    "q": lambda by_pos: _head_site("q", by_pos),
    "k": lambda by_pos: _head_site("k", by_pos, kv=True),
    "v": lambda by_pos: _head_site("v", by_pos, kv=True),
    "pattern": lambda by_pos: Site(
        "pattern", "pattern", ("head", "dest_pos") if by_pos else ("head",), ("head", "dest_pos", "src_pos"),
    ),
    **{kind: (lambda by_pos, kind=kind: Site(kind, kind, ("pos",), ("pos",)))
       for kind in ("resid_pre", "resid_mid", "attn_out", "mlp_out")},
}
assert all(kind in HOOKS for kind in SITES)


#: tokens per forward beyond which a CPU gains nothing from sharing a forward between patches
_CPU_TOKENS = 1024

_LENGTHS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("headzoo_lengths", default=None)


def current_lengths() -> torch.Tensor | None:
    """The real length of each row ``[batch]`` while a metric runs on right-padded prompts of
    different lengths (``None`` when the prompts were one block): the metric helpers of
    ``hz.patching`` read each row's own last position from it."""
    return _LENGTHS.get()


@contextlib.contextmanager
def _lengths(lengths: torch.Tensor | None) -> Iterator[None]:
    token = _LENGTHS.set(lengths)
    try:
        yield
    finally:
        _LENGTHS.reset(token)


def _pairs(model: Any, clean_tokens: Any, corrupted_tokens: Any, info: ModelInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Clean and corrupted prompts as two ``[batch, pos]`` blocks, right-padded when the rows
    have different lengths (each clean row must match its corrupted row), and the lengths
    (``None`` for one rectangular block)."""
    ragged = all(
        isinstance(t, (list, tuple)) and t and isinstance(t[0], (list, tuple, torch.Tensor)) and len({len(r) for r in t}) > 1
        for t in (clean_tokens, corrupted_tokens)
    )
    if not ragged:
        clean = as_block(clean_tokens, info, "clean_tokens")
        corrupted = as_block(corrupted_tokens, info, "corrupted_tokens")
        if clean.shape != corrupted.shape:
            raise InvalidTokensError(
                f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} must have "
                "the same shape: each patch moves an activation between matching positions"
            )
        return clean, corrupted, None
    clean_rows = as_prompts(model, info, clean_tokens, "clean_tokens")
    corrupted_rows = as_prompts(model, info, corrupted_tokens, "corrupted_tokens")
    if len(clean_rows) != len(corrupted_rows) or any(len(a) != len(b) for a, b in zip(clean_rows, corrupted_rows)):
        raise InvalidTokensError(
            "clean_tokens and corrupted_tokens must pair up row by row with equal lengths (clean lengths "
            f"{[len(r) for r in clean_rows]}, corrupted {[len(r) for r in corrupted_rows]}): each patch moves an "
            "activation between matching positions"
        )
    clean = pad_right(clean_rows)
    return clean.ids, pad_right(corrupted_rows).ids, clean.lengths


class _Runner:
    """Runs the model (or its blocks from one layer on) through the kernel, with logits only
    where the metric reads them.

    ``from_layer`` is used only after the plan has checked, on the real inputs, that it
    reproduces the model's own forward pass; otherwise every patched run is a full forward.
    """

    def __init__(self, model: Any, read: list[int] | None = None) -> None:
        self.model = model
        self.read = read  # positions whose logits the metric reads (None: all)
        # set by share_prefix once a suffix-only run has been checked on the real inputs
        self.prefix: Prefix | None = None
        self.prefix_logits: torch.Tensor | None = None

    @property
    def shift(self) -> int:
        """How many leading positions hooks outside the attention do not see (the shared prefix)."""
        return self.prefix.length if self.prefix is not None else 0

    def restart(self, resid: torch.Tensor, layer: int, copies: int, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
        """The receiving run from ``layer`` on, ``copies`` times one after the other; ``resid``
        ``[batch, pos, d]`` is its residual stream entering that layer. Only the positions after
        the shared prefix run when one is set (hooks outside the attention then see those only).
        Same layout as :meth:`from_layer`."""
        if self.prefix is None or self.prefix_logits is None:
            return self.from_layer(resid.repeat(copies, *([1] * (resid.ndim - 1))), layer, hooks)
        return self.suffix(resid[:, self.shift :].repeat(copies, 1, 1), layer, hooks, self.prefix, self.prefix_logits)

    def share_prefix(self, capture: tuple[list, Prefix] | None, restarts: bool, resid: dict[int, torch.Tensor],
                     first: int, base_logits: torch.Tensor, seq: int, p0: int) -> str:
        """Set the prefix to reuse, after checking that the suffix-only run from ``first``
        reproduces the model's own forward (``base_logits``) on these inputs; return why not
        (``""`` when it is set). Needs :attr:`read` settled and a working layer restart."""
        self.prefix = self.prefix_logits = None
        if p0 == 0 or p0 >= seq:
            return "clean and corrupted differ at position 0" if p0 == 0 else "clean and corrupted are the same"
        if not restarts:
            return "the layer restart does not reproduce this model's forward"
        if capture is None:
            return "the model has no attention-input hook to read the prefix from"
        prefix = capture[1]
        p = prefix.length
        if self.read is not None and not any(q >= p for q in self.read):
            return f"the metric reads only positions before the first difference ({p})"
        early = base_logits[:, [q for q in self.read if q < p] if self.read is not None else slice(0, p)]
        want = self.expand(base_logits[:, self.read] if self.read is not None else base_logits, seq)
        try:
            with torch.no_grad():
                again = self.expand(self.suffix(resid[first][:, p:], first, [], prefix, early), seq)
        except (RuntimeError, ValueError, IndexError, TypeError, UnsupportedModelError) as exc:
            # e.g. an attention that cannot take a longer input than its block
            return f"running the suffix alone failed on this model ({type(exc).__name__})"
        if not torch.allclose(again, want, rtol=1e-4, atol=1e-4, equal_nan=True):
            return "running the suffix alone did not reproduce this model's forward"
        self.prefix, self.prefix_logits = prefix, early
        return ""

    def full(self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
        out = run(self.model, tokens, edit=hooks, logits="all" if self.read is None else self.read)
        assert out is not None
        return out

    def from_layer(self, resid: torch.Tensor, layer: int, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
        out = run_from_layer(self.model, resid, layer, edit=hooks, logits="all" if self.read is None else self.read)
        assert out is not None
        return out

    def suffix(self, resid: torch.Tensor, layer: int, hooks: list[tuple[str, Callable]], prefix: Prefix,
               prefix_logits: torch.Tensor) -> torch.Tensor:
        """Like :meth:`from_layer` on ``resid`` ``[n * batch, pos - p, d]``, the positions after
        ``prefix``; the logits read inside the prefix are the unpatched run's, ``prefix_logits``
        ``[batch, p or the read positions before p, vocab]``. Same layout as :meth:`from_layer`."""
        p, copies = prefix.length, resid.shape[0] // prefix_logits.shape[0]
        late = None if self.read is None else [q - p for q in self.read if q >= p]
        out = run_suffix_from_layer(self.model, resid, layer, prefix, edit=hooks, logits="all" if late is None else late)
        assert out is not None
        if prefix_logits.shape[1] == 0:
            return out
        return torch.cat([prefix_logits.repeat(copies, 1, 1), out], 1)  # the read positions are ascending

    def expand(self, logits: torch.Tensor, seq: int) -> torch.Tensor:
        """Logits as the metric expects them, ``[batch, pos, vocab]``: NaN where not computed."""
        if self.read is None:
            return logits
        out = torch.full((logits.shape[0], seq, logits.shape[-1]), float("nan"), dtype=logits.dtype, device=logits.device)
        out[:, self.read] = logits
        return out


def _read_positions(metric: Metric, logits: torch.Tensor, value: torch.Tensor, per_example: bool) -> list[int] | None:
    """Positions whose logits ``metric`` reads, or ``None`` when that cannot be established.

    The gradient of the metric says which positions it depends on; the answer is accepted only
    if the metric gives the same value with every other position set to NaN.
    """
    leaf = logits.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = metric(leaf)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return None
            (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    except RuntimeError:
        return None
    if grad is None:
        return None
    read = grad.abs().sum((0, 2)).nonzero().flatten().tolist()
    if not read or len(read) == logits.shape[1]:
        return None
    masked = torch.full_like(logits, float("nan"))
    masked[:, read] = logits[:, read]
    with torch.no_grad():
        again = torch.as_tensor(metric(masked)).detach().double().cpu()
    return read if torch.equal(again, value) else None


def _evaluate(metric: Metric, logits: torch.Tensor, batch: int, per_example: bool, name: str = "metric") -> torch.Tensor:
    out = metric(logits)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    if per_example:
        if out.ndim != 1 or out.shape[0] != batch:
            raise InvalidOptionError(
                f"{name} must return one value per example, a [batch={batch}] tensor, with "
                f"per_example=True; got shape {tuple(out.shape)}"
            )
    elif out.ndim != 0:
        raise InvalidOptionError(
            f"{name} must return a scalar tensor; got shape {tuple(out.shape)}. Reduce it (e.g. "
            ".mean()) or pass per_example=True to keep one value per example"
        )
    return out.detach().double().cpu()


@dataclasses.dataclass(frozen=True)
class PatchPlan:
    """What a patching run will do, settled before any patched forward.

    Attributes:
        site: what is patched.
        layers: the patched layers; ``hooks[layer]`` their hook names.
        receiver, donor: ``[batch, pos]`` ids on the model's device: the run that receives the
            patches (corrupted when denoising) and the run they come from.
        lengths: ``[batch]`` real lengths when the rows were right-padded, else ``None``.
        indices: every index of one layer's activation that is patched (after ``layer``).
    """

    site: Site
    info: ModelInfo
    layers: list[int]
    hooks: dict[int, str]
    receiver: Int[torch.Tensor, "batch pos"]
    donor: Int[torch.Tensor, "batch pos"]
    lengths: Int[torch.Tensor, " batch"] | None
    indices: list[tuple[int, ...]]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.receiver.shape[0]), int(self.receiver.shape[1]))


@dataclasses.dataclass(frozen=True)
class PatchResult:
    """What a patching run measured.

    Attributes:
        index: one ``(layer, *site axes)`` tuple per patch.
        values: ``[n_patch]`` (or ``[n_patch, batch]`` per example) float64 metric values.
        baseline: the metric on the unpatched receiving run; ``source`` on the donor run.
        engine: what the engine did (``reused_layers``, ``patches_per_forward``,
            ``read_positions``, ``lengths``).
    """

    index: list[tuple[int, ...]]
    values: torch.Tensor
    baseline: torch.Tensor
    source: torch.Tensor
    engine: dict[str, Any]


def plan_patching(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, direction: str, site: Site, layers: Sequence[int] | None
) -> PatchPlan:
    """Checks shared by exact and attribution patching: tokens, direction, layers, hooks."""
    info = model_info(model)
    check_finite(model)
    clean, corrupted, lengths = _pairs(model, clean_tokens, corrupted_tokens, info)
    if direction not in ("denoise", "noise"):
        raise InvalidOptionError(f"direction must be 'denoise' or 'noise'; got {direction!r}")
    if layers is None:
        chosen = list(range(info.n_layers))
    else:
        if isinstance(layers, (int, str)) or not isinstance(layers, Sequence):
            raise InvalidOptionError(f"layers must be a list of layer indices; got {layers!r}")
        chosen = [check_int(x, "layers") for x in layers]
    bad = [x for x in chosen if not 0 <= x < info.n_layers]
    if bad or not chosen:
        raise InvalidOptionError(f"layers {bad or chosen} are out of range for a model with {info.n_layers} layers")
    hooks = {layer: site.hook_at(layer) for layer in chosen}
    require_hooks(model, hooks.values(), f"{site.name!r} patching")
    device = torch.device(info.device)
    receiver, donor = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    seq = receiver.shape[1]
    sizes = {"head": info.n_heads, "kv_head": info.n_kv_heads, "pos": seq, "dest_pos": seq, "src_pos": seq}
    return PatchPlan(site, info, chosen, hooks, receiver.to(device), donor.to(device), lengths,
                     _product([range(sizes[a]) for a in site.axes]))


def _evaluate_rows(metric: Metric, logits: torch.Tensor, plan: PatchPlan, per_example: bool, name: str = "metric") -> torch.Tensor:
    with _lengths(plan.lengths):
        return _evaluate(metric, logits, plan.shape[0], per_example, name)


def _check_no_pad_reads(metric: Metric, logits: torch.Tensor, plan: PatchPlan, baseline: torch.Tensor, per_example: bool) -> None:
    """With right-padded rows, a metric that reads a pad position would measure nothing real:
    with every pad logit set to NaN it must give the same value."""
    if plan.lengths is None:
        return
    masked = logits.clone()
    pads = torch.arange(logits.shape[1], device=logits.device)[None, :] >= plan.lengths.to(logits.device)[:, None]
    masked[pads] = float("nan")
    again = _evaluate_rows(metric, masked, plan, per_example)
    if not torch.allclose(again, baseline, equal_nan=True):
        raise InvalidOptionError(
            "the metric reads logits at padding positions (the prompts have lengths "
            f"{plan.lengths.tolist()}): read each row's own last position, as hz.patching's metric helpers do "
            "with pos=-1 (hz.patching.current_lengths() gives the lengths inside a metric)"
        )


def explicit_positions(positions: Any, seq: int) -> list[int] | None:
    """The ``positions=`` option as sorted positions in ``[0, seq)``; ``None`` for ``"auto"``
    and ``None`` (checked before any forward pass)."""
    if positions in (None, "auto"):
        return None
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items or any(isinstance(p, bool) or not isinstance(p, int) or not -seq <= p < seq for p in items):
        raise InvalidOptionError(f"positions must be 'auto', None or positions in [-{seq}, {seq}); got {positions!r}")
    return sorted({p % seq for p in cast("list[int]", items)})  # every item passed the int check above


def read_positions(metric: Metric, base_logits: torch.Tensor, baseline: torch.Tensor, plan: PatchPlan,
                   per_example: bool, positions: Any, explicit: list[int] | None) -> list[int] | None:
    """The positions whose logits patched runs compute (``None``: all): ``explicit`` once the
    unpatched run shows the metric reads nothing else, or, for ``"auto"``, the positions its
    gradient depends on (:func:`_read_positions`)."""
    if explicit is not None:
        masked = torch.full_like(base_logits, float("nan"))
        masked[:, explicit] = base_logits[:, explicit]
        check = _evaluate_rows(metric, masked, plan, per_example)
        if not torch.allclose(check, baseline, equal_nan=True):
            raise InvalidOptionError(
                f"the metric reads logits outside positions={positions!r} (with the others set to "
                "NaN it changes); widen positions or leave it to 'auto'"
            )
        return explicit
    if positions == "auto":
        with _lengths(plan.lengths):
            return _read_positions(metric, base_logits, baseline, per_example)
    return None


def run_patching(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    site: Site,
    *,
    direction: Direction = "denoise",
    per_example: bool = False,
    positions: Sequence[int] | int | str | None = "auto",
    layers: Sequence[int] | None = None,
    memory_mb: float = 512.0,
    progress: bool | None = None,
) -> PatchResult:
    """Patch every index of ``site`` and evaluate ``metric``; the engine behind ``hz.patching``."""
    if not callable(metric):
        raise InvalidOptionError(f"metric must be a function of the logits; got {type(metric).__name__}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not memory_mb > 0:
        raise InvalidOptionError(f"memory_mb must be a positive number; got {memory_mb!r}")
    plan = plan_patching(model, clean_tokens, corrupted_tokens, direction, site, layers)
    info, hooks, receiver, donor = plan.info, plan.hooks, plan.receiver, plan.donor
    batch, seq = plan.shape
    explicit = explicit_positions(positions, seq)
    device = torch.device(info.device)
    run = _Runner(model)

    donor_acts: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}

    def keep(store: dict[int, torch.Tensor], layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[layer] = act.detach().clone()
        return hook

    resid_names = {layer: hook_name("resid_pre", layer) for layer in plan.layers}
    can_reuse = all(name in model.hook_dict for name in resid_names.values())
    first = min(plan.layers)
    # Positions before p0 are the same in the donor, receiving and every patched run.
    p0 = first_difference(receiver, donor)
    capture = prefix_hooks(model, range(first, info.n_layers), p0) if can_reuse and 0 < p0 < seq else None
    with torch.no_grad():
        # The donor run keeps only the activation being patched, at the patched layers.
        source = _evaluate_rows(metric, run.full(donor, [(hooks[layer], keep(donor_acts, layer)) for layer in plan.layers]), plan, per_example)
        base_hooks = [(resid_names[layer], keep(resid, layer)) for layer in plan.layers] if can_reuse else []
        base_logits = run.full(receiver, base_hooks + (capture[0] if capture is not None else []))
        baseline = _evaluate_rows(metric, base_logits, plan, per_example)
        _check_no_pad_reads(metric, base_logits, plan, baseline, per_example)
    if site.name == "pattern":
        # On TransformerLens 3.x bridges an edited hook_pattern never reaches the output, so
        # every patch would silently return the baseline: check that an edit shows.
        def flatten(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.full_like(pattern, 1.0 / pattern.shape[-1])

        with torch.no_grad():
            edited = run.full(receiver, [(hooks[plan.layers[-1]], flatten)])
        if torch.equal(edited, base_logits):
            raise UnsupportedModelError(
                f"editing {hooks[plan.layers[-1]]} does not change this {type(model).__name__}'s output "
                "(TransformerLens 3.x bridges compute attention without reading the hooked pattern), "
                "so pattern patching would only return the baseline. Use TransformerLens 4.x, a "
                "HookedTransformer, or patch 'z', 'q', 'k' or 'v' instead."
            )
    run.read = read_positions(metric, base_logits, baseline, plan, per_example, positions, explicit)
    reuse = False
    want = run.expand(base_logits[:, run.read] if run.read is not None else base_logits, seq)
    if can_reuse:
        # Use the block loop only where it reproduces the model's own forward on these inputs.
        with torch.no_grad():
            again = run.expand(run.from_layer(resid[first], first, []), seq)
            reuse = bool(torch.allclose(again, want, rtol=1e-4, atol=1e-4, equal_nan=True))
    if not reuse:
        warn_once(f"headzoo patching reruns every layer of this {type(model).__name__} for each patch: restarting "
                  "at the patched layer did not reproduce its forward pass. The numbers are the same, only slower; "
                  "the result's meta['engine']['reused_layers'] records it.")
    why = run.share_prefix(capture, reuse, resid, first, base_logits, seq, p0)
    p = run.shift
    vocab_out = base_logits.shape[-1]
    del base_logits

    per_layer = plan.indices
    # Patches at residual-stream positions inside the prefix write the receiving run's own
    # values (donor and receiver agree there), so each gives the unpatched run: the baseline.
    in_prefix = [idx for idx in per_layer if _outside_attention(site) and "pos" in site.axes
                 and idx[site.axes.index("pos")] < p]
    skipped = set(in_prefix)
    todo = [idx for idx in per_layer if idx not in skipped]
    logit_positions = len(run.read) if run.read is not None else seq
    suffix = seq - p
    attn_prefix = 2 * p if p else 0  # the prefix's keys and values, recomputed in each attention
    per_copy = 4 * batch * (suffix * 6 * info.d_model + attn_prefix * info.d_model + logit_positions * vocab_out)
    group = max(1, min(len(todo) or 1, int(memory_mb * 2**20 // per_copy)))
    if device.type == "cpu":
        # On a CPU, batching copies pays only while the forward is small: measured on a GPT-2
        # block, 96 x 64 tokens cost 1.5x as much per token as 8 x 64 (memory traffic).
        group = min(group, max(1, _CPU_TOKENS // (batch * suffix)))
    index: list[tuple[int, ...]] = []
    values: list[torch.Tensor] = []
    show = progress if progress is not None else len(plan.layers) * len(per_layer) > 64
    bar = tqdm(total=len(plan.layers) * len(per_layer), desc=f"headzoo patch {site.name}", disable=not show, leave=False)
    # hooks outside the attention see only the suffix when the prefix is reused
    shift = p if _outside_attention(site) else 0
    try:
        with torch.no_grad():
            for layer in plan.layers:
                donor_act = donor_acts[layer]
                got: dict[tuple[int, ...], torch.Tensor] = {}
                for start in range(0, len(todo), group):
                    chunk = todo[start : start + group]
                    g = len(chunk)

                    def patch(act: torch.Tensor, hook: Any, chunk: list = chunk, donor_act: torch.Tensor = donor_act) -> torch.Tensor:
                        act = act.clone()
                        for j, idx in enumerate(chunk):
                            at = dict(zip(site.axes, idx))
                            src = site.index(at)  # the donor's activation has every position
                            if not shift:
                                dst = src
                            elif "pos" in at:  # a position after the prefix (those inside were skipped)
                                dst = site.index({**at, "pos": at["pos"] - shift})
                            else:  # every position: the suffix's
                                dst, src = src, tuple(slice(shift, None) if axis == "pos" else i for axis, i in zip(site.layout, src))
                            act[(slice(j * batch, (j + 1) * batch), *dst)] = donor_act[(slice(None), *src)]
                        return act

                    if reuse:
                        logits = run.restart(resid[layer], layer, g, [(hooks[layer], patch)])
                    else:
                        logits = run.full(receiver.repeat(g, 1), [(hooks[layer], patch)])
                    for j, idx in enumerate(chunk):
                        got[idx] = _evaluate_rows(metric, run.expand(logits[j * batch : (j + 1) * batch], seq), plan, per_example)
                    del logits
                    bar.update(g)
                for idx in per_layer:
                    values.append(got[idx] if idx in got else baseline)
                    index.append((layer, *idx))
                bar.update(len(per_layer) - len(todo))
    finally:
        bar.close()
    engine: dict[str, Any] = {"reused_layers": reuse, "patches_per_forward": group, "read_positions": run.read,
                              "prefix_reused": p, "first_difference": p0}
    if why:
        engine["prefix_not_reused"] = why
    if in_prefix:
        engine["prefix_patches_baseline"] = len(in_prefix) * len(plan.layers)
    if plan.lengths is not None:
        engine["lengths"] = plan.lengths.tolist()
    return PatchResult(index, torch.stack(values), baseline, source, engine)


#: the patch kinds computed inside the attention, where a reused prefix keeps every position
_INSIDE_ATTENTION = ("q", "k", "v", "z", "pattern")


def _outside_attention(site: Site) -> bool:
    return site.hook not in _INSIDE_ATTENTION


def _product(ranges: list[range]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for r in ranges:
        out = [t + (i,) for t in out for i in r]
    return out


def run_attribution(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    site: Site,
    *,
    direction: Direction = "denoise",
    per_example: bool = False,
) -> PatchResult:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every
    patch of ``site`` at once, ``metric(receiver) + grad . (donor_act - receiver_act)``, from
    one forward and one backward pass on the receiving run and one forward on the donor.

    Gradients are taken with ``torch.autograd.grad`` with respect to the activations only,
    so nothing is accumulated into the model's parameters' ``.grad``.
    """
    if site.layout not in (("pos", "head"), ("pos", "kv_head"), ("pos",)):
        raise InvalidOptionError(f"attribution patching supports head vectors and residual kinds, not {site.name!r}")
    plan = plan_patching(model, clean_tokens, corrupted_tokens, direction, site, None)
    hooks, receiver, donor = plan.hooks, plan.receiver, plan.donor
    batch, seq = plan.shape
    donor_acts: dict[int, torch.Tensor] = {}
    leaves: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> None:
            donor_acts[layer] = act.detach().clone()
        return hook

    def leaf(layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            # a fresh leaf: the gradient reaches it even when the parameters are frozen
            leaves[layer] = act.detach().clone().requires_grad_(True)
            return leaves[layer]
        return hook

    with torch.no_grad():
        donor_logits = run(model, donor, edit=[(hooks[layer], keep(layer)) for layer in hooks])
        assert donor_logits is not None
        source = _evaluate_rows(metric, donor_logits, plan, per_example)
    with torch.enable_grad():
        receiver_logits = run(model, receiver, edit=[(hooks[layer], leaf(layer)) for layer in hooks])
        assert receiver_logits is not None
        with _lengths(plan.lengths):
            value = metric(receiver_logits)
        out = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if per_example and (out.ndim != 1 or out.shape[0] != batch):
            raise InvalidOptionError(f"metric must return a [batch={batch}] tensor with per_example=True; got {tuple(out.shape)}")
        if not per_example and out.ndim != 0:
            raise InvalidOptionError(
                f"metric must return a scalar tensor; got shape {tuple(out.shape)} (or pass per_example=True)"
            )
        if not out.requires_grad:
            raise InvalidOptionError("attribution patching needs a metric differentiable in the logits")
        layers = sorted(leaves)
        grads = torch.autograd.grad(out.sum(), [leaves[layer] for layer in layers], allow_unused=True)
    baseline = out.detach().double().cpu()
    with torch.no_grad():
        _check_no_pad_reads(metric, receiver_logits.detach(), plan, baseline, per_example)
    index: list[tuple[int, ...]] = []
    values: list[torch.Tensor] = []
    by_pos = "pos" in site.axes
    for layer, grad in zip(layers, grads):
        diff = donor_acts[layer] - leaves[layer].detach()
        contrib = torch.zeros_like(diff) if grad is None else grad * diff  # [batch, pos, (head,) d]
        contrib = contrib.sum(-1)  # [batch, pos, head] or, for the residual kinds, [batch, pos]
        if not by_pos:
            contrib = contrib.sum(1)  # [batch, head]
        contrib = contrib.double().cpu()
        for idx in _product([range(n) for n in contrib.shape[1:]]):
            delta = contrib[(slice(None), *idx)]  # [batch]: each example's first-order change
            values.append(baseline + delta if per_example else baseline + delta.sum())
            index.append((layer, *idx))
    engine: dict[str, Any] = {} if plan.lengths is None else {"lengths": plan.lengths.tolist()}
    return PatchResult(index, torch.stack(values), baseline, source, engine)
