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
- with ``positions=``, logits are computed only where the metric reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from headzoo._errors import InvalidOptionError, InvalidTokensError, MissingHooksError, UnsupportedModelError
from headzoo._models import ModelInfo, model_info

__all__ = ["Site", "SITES", "run_patching", "Direction"]

Direction = Literal["denoise", "noise"]
Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Site:
    """What one kind of patch replaces.

    Attributes:
        name: the patch kind (``"z"``, ``"resid_pre"``, ...).
        hook: hook name template with ``{layer}``.
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


def _head_site(name: str, hook: str, by_pos: bool, kv: bool = False) -> Site:
    # keys and values of grouped-query models are indexed by key-value head, as in TransformerLens
    head = "kv_head" if kv else "head"
    return Site(name, hook, ("pos", head) if by_pos else (head,), ("pos", head))


SITES: dict[str, Callable[[bool], Site]] = {
    "z": lambda by_pos: _head_site("z", "blocks.{layer}.attn.hook_z", by_pos),
    "q": lambda by_pos: _head_site("q", "blocks.{layer}.attn.hook_q", by_pos),
    "k": lambda by_pos: _head_site("k", "blocks.{layer}.attn.hook_k", by_pos, kv=True),
    "v": lambda by_pos: _head_site("v", "blocks.{layer}.attn.hook_v", by_pos, kv=True),
    "pattern": lambda by_pos: Site(
        "pattern", "blocks.{layer}.attn.hook_pattern", ("head", "dest_pos") if by_pos else ("head",),
        ("head", "dest_pos", "src_pos"),
    ),
    "resid_pre": lambda by_pos: Site("resid_pre", "blocks.{layer}.hook_resid_pre", ("pos",), ("pos",)),
    "resid_mid": lambda by_pos: Site("resid_mid", "blocks.{layer}.hook_resid_mid", ("pos",), ("pos",)),
    "attn_out": lambda by_pos: Site("attn_out", "blocks.{layer}.hook_attn_out", ("pos",), ("pos",)),
    "mlp_out": lambda by_pos: Site("mlp_out", "blocks.{layer}.hook_mlp_out", ("pos",), ("pos",)),
}


#: tokens per forward beyond which a CPU gains nothing from sharing a forward between patches
_CPU_TOKENS = 1024


class _Stop(Exception):
    pass


def as_tokens(tokens: Any, info: ModelInfo, what: str) -> Int[torch.Tensor, "batch pos"]:
    """Validate a ``[batch, pos]`` block of token ids (a copy, never the caller's tensor)."""
    try:
        ids = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidTokensError(f"{what} must be integer token ids [batch, pos]; got {type(tokens).__name__}") from None
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InvalidTokensError(f"{what} must be integer token ids; got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.numel() == 0:
        raise InvalidTokensError(f"{what} must have shape [batch, pos] (or [pos]); got {tuple(ids.shape)}")
    if ids.shape[1] > info.n_ctx:
        raise InvalidTokensError(f"{what} has {ids.shape[1]} positions but the model's context is {info.n_ctx}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= info.d_vocab:
        raise InvalidTokensError(f"{what} holds ids in [{lo}, {hi}] but the vocabulary is [0, {info.d_vocab - 1}]")
    return ids.long().clone()


class _Runner:
    """Runs the model (or its blocks from one layer on), with logits only where they are read.

    ``from_layer`` runs ``blocks[L:]``, the final norm and the unembedding directly on a
    residual stream, which is what makes reusing the layers below a patch possible. It is
    used only after :meth:`verify` has checked, on the real inputs, that it reproduces the
    model's own forward pass; otherwise every patched run is a full forward.
    """

    def __init__(self, model: Any, info: ModelInfo) -> None:
        self.model, self.info = model, info
        self.read: list[int] | None = None  # positions whose logits the metric reads (None: all)

    # Hooks go through TransformerLens' own context manager: it applies a bridge's hook
    # conversions (hook_z is [batch, pos, head, d_head] there too) and removes exactly the
    # hooks it added, also when the run raises.
    def full(self, tokens: torch.Tensor, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
        with self.model.hooks(fwd_hooks=hooks):
            return self._logits(lambda: self.model(tokens))

    def from_layer(self, resid: torch.Tensor, layer: int, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
        def forward() -> torch.Tensor:
            x = resid
            for block in self.model.blocks[layer:]:
                x = block(x)
                if isinstance(x, tuple):  # Hugging Face blocks return (hidden_states, ...)
                    x = x[0]
            return self.model.unembed(_final_norm(self.model)(x))

        with self.model.hooks(fwd_hooks=hooks):
            return self._logits(forward)

    def _logits(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.read is None:
            return forward()
        # Catch the unembedding's input and unembed only the positions the metric reads; the
        # others are NaN, so a metric that read them would return NaN (and is checked for it).
        got: dict[str, torch.Tensor] = {}

        def grab(module: Any, args: Any) -> None:
            got["x"] = args[0]
            raise _Stop

        handle = self.model.unembed.register_forward_pre_hook(grab)
        try:
            forward()
        except _Stop:
            pass
        finally:
            handle.remove()
        return self.model.unembed(got["x"][:, self.read])

    def expand(self, logits: torch.Tensor, seq: int) -> torch.Tensor:
        """Logits as the metric expects them, ``[batch, pos, vocab]``: NaN where not computed."""
        if self.read is None:
            return logits
        out = torch.full((logits.shape[0], seq, logits.shape[-1]), float("nan"), dtype=logits.dtype, device=logits.device)
        out[:, self.read] = logits
        return out


def _final_norm(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    norm = getattr(model, "ln_final", None)
    return norm if norm is not None else (lambda x: x)


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


def _prepare(
    model: Any, clean_tokens: Any, corrupted_tokens: Any, direction: str, site: Site, layers: Sequence[int] | None
) -> tuple[ModelInfo, torch.Tensor, torch.Tensor, list[int], dict[int, str]]:
    """Checks shared by exact and attribution patching: tokens, direction, layers, hooks.

    Returns the model info, the receiving and donor tokens (on the model's device), the
    layers and each layer's hook name.
    """
    info = model_info(model)
    clean = as_tokens(clean_tokens, info, "clean_tokens")
    corrupted = as_tokens(corrupted_tokens, info, "corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise InvalidTokensError(
            f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} must have "
            "the same shape: each patch moves an activation between matching positions"
        )
    if direction not in ("denoise", "noise"):
        raise InvalidOptionError(f"direction must be 'denoise' or 'noise'; got {direction!r}")
    layers = list(range(info.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < info.n_layers]
    if bad or not layers:
        raise InvalidOptionError(f"layers {bad or layers} are out of range for a model with {info.n_layers} layers")
    hooks = {layer: site.hook.format(layer=layer) for layer in layers}
    missing = [h for h in hooks.values() if h not in model.hook_dict]
    if missing:
        raise MissingHooksError(
            f"{type(model).__name__} has no hook {missing[0]!r}, which {site.name!r} patching needs"
        )
    device = torch.device(info.device)
    receiver, donor = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return info, receiver.to(device), donor.to(device), layers, hooks


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
) -> dict[str, Any]:
    """Patch every index of ``site`` and evaluate ``metric``; the engine behind ``hz.patching``.

    Returns a dict with ``index`` (list of index tuples, ``layer`` first), ``values``
    (``[n_index]`` or ``[n_index, batch]`` float64), ``baseline`` (the metric on the unpatched
    run that receives the patches), ``source`` (on the run the patches come from) and what the
    engine did (``reused_layers``, ``patches_per_forward``, ``read_positions``).
    """
    if not callable(metric):
        raise InvalidOptionError(f"metric must be a function of the logits; got {type(metric).__name__}")
    if not memory_mb > 0:
        raise InvalidOptionError(f"memory_mb must be positive; got {memory_mb}")
    info, receiver, donor, layers, hooks = _prepare(model, clean_tokens, corrupted_tokens, direction, site, layers)
    batch, seq = receiver.shape
    explicit: list[int] | None = None
    if positions not in (None, "auto"):
        items = [positions] if isinstance(positions, int) else list(positions)  # type: ignore[arg-type]
        if not items or any(not isinstance(p, int) or not -seq <= p < seq for p in items):
            raise InvalidOptionError(f"positions must be 'auto', None or positions in [-{seq}, {seq}); got {positions!r}")
        explicit = sorted({p % seq for p in items})
    device = torch.device(info.device)
    run = _Runner(model, info)

    donor_acts: dict[int, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}

    def keep(store: dict[int, torch.Tensor], layer: int) -> Callable:
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[layer] = act.detach().clone()
        return hook

    resid_names = {layer: f"blocks.{layer}.hook_resid_pre" for layer in layers}
    can_reuse = all(name in model.hook_dict for name in resid_names.values())
    with torch.no_grad():
        # The donor run keeps only the activation being patched, at the patched layers.
        source = _evaluate(metric, run.full(donor, [(hooks[layer], keep(donor_acts, layer)) for layer in layers]), batch, per_example)
        base_logits = run.full(receiver, [(resid_names[layer], keep(resid, layer)) for layer in layers] if can_reuse else [])
        baseline = _evaluate(metric, base_logits, batch, per_example)
    if site.name == "pattern":
        # On TransformerLens 3.x bridges an edited hook_pattern never reaches the output, so
        # every patch would silently return the baseline: check that an edit shows.
        def flatten(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.full_like(pattern, 1.0 / pattern.shape[-1])

        with torch.no_grad():
            edited = run.full(receiver, [(hooks[layers[-1]], flatten)])
        if torch.equal(edited, base_logits):
            raise UnsupportedModelError(
                f"editing {hooks[layers[-1]]} does not change this {type(model).__name__}'s output "
                "(TransformerLens 3.x bridges compute attention without reading the hooked pattern), "
                "so pattern patching would only return the baseline. Use TransformerLens 4.x, a "
                "HookedTransformer, or patch 'z', 'q', 'k' or 'v' instead."
            )
    if explicit is not None:
        masked = torch.full_like(base_logits, float("nan"))
        masked[:, explicit] = base_logits[:, explicit]
        check = _evaluate(metric, masked, batch, per_example)
        if not torch.allclose(check, baseline, equal_nan=True):
            raise InvalidOptionError(
                f"the metric reads logits outside positions={positions!r} (with the others set to "
                "NaN it changes); widen positions or leave it to 'auto'"
            )
        run.read = explicit
    elif positions == "auto":
        run.read = _read_positions(metric, base_logits, baseline, per_example)
    reuse = False
    if can_reuse:
        # Use the block loop only where it reproduces the model's own forward on these inputs.
        with torch.no_grad():
            first = min(layers)
            again = run.expand(run.from_layer(resid[first], first, []), seq)
            want = run.expand(base_logits[:, run.read] if run.read is not None else base_logits, seq)
            reuse = bool(torch.allclose(again, want, rtol=1e-4, atol=1e-4, equal_nan=True))
    vocab_out = base_logits.shape[-1]
    del base_logits

    sizes = {"head": info.n_heads, "kv_head": info.n_kv_heads, "pos": seq, "dest_pos": seq, "src_pos": seq}
    per_layer = _product([range(sizes[a]) for a in site.axes])
    logit_positions = len(run.read) if run.read is not None else seq
    per_copy = 4 * batch * (seq * 6 * info.d_model + logit_positions * vocab_out)
    group = max(1, min(len(per_layer), int(memory_mb * 2**20 // per_copy)))
    if device.type == "cpu":
        # On a CPU, batching copies pays only while the forward is small: measured on a GPT-2
        # block, 96 x 64 tokens cost 1.5x as much per token as 8 x 64 (memory traffic).
        group = min(group, max(1, _CPU_TOKENS // (batch * seq)))
    index: list[tuple[int, ...]] = []
    values: list[torch.Tensor] = []
    show = progress if progress is not None else len(layers) * len(per_layer) > 64
    bar = tqdm(total=len(layers) * len(per_layer), desc=f"headzoo patch {site.name}", disable=not show, leave=False)
    try:
        with torch.no_grad():
            for layer in layers:
                donor_act = donor_acts[layer]
                for start in range(0, len(per_layer), group):
                    chunk = per_layer[start : start + group]
                    g = len(chunk)

                    def patch(act: torch.Tensor, hook: Any, chunk: list = chunk) -> torch.Tensor:
                        act = act.clone()
                        for j, idx in enumerate(chunk):
                            where = site.index(dict(zip(site.axes, idx)))
                            act[(slice(j * batch, (j + 1) * batch), *where)] = donor_act[(slice(None), *where)]
                        return act

                    if reuse:
                        inputs = resid[layer].repeat(g, *([1] * (resid[layer].ndim - 1)))
                        logits = run.from_layer(inputs, layer, [(hooks[layer], patch)])
                    else:
                        logits = run.full(receiver.repeat(g, 1), [(hooks[layer], patch)])
                    for j, idx in enumerate(chunk):
                        values.append(_evaluate(metric, run.expand(logits[j * batch : (j + 1) * batch], seq), batch, per_example))
                        index.append((layer, *idx))
                    del logits
                    bar.update(g)
    finally:
        bar.close()
    return {
        "index": index,
        "values": torch.stack(values),
        "baseline": baseline,
        "source": source,
        "reused_layers": reuse,
        "patches_per_forward": group,
        "read_positions": run.read,
    }


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
) -> dict[str, Any]:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every
    patch of ``site`` at once, ``metric(receiver) + grad . (donor_act - receiver_act)``, from
    one forward and one backward pass on the receiving run and one forward on the donor.

    Gradients are taken with ``torch.autograd.grad`` with respect to the activations only,
    so nothing is accumulated into the model's parameters' ``.grad``.
    """
    if site.layout not in (("pos", "head"), ("pos", "kv_head"), ("pos",)):
        raise InvalidOptionError(f"attribution patching supports head vectors and residual kinds, not {site.name!r}")
    info, receiver, donor, _, hooks = _prepare(model, clean_tokens, corrupted_tokens, direction, site, None)
    batch, seq = receiver.shape
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

    with torch.no_grad(), model.hooks(fwd_hooks=[(hooks[layer], keep(layer)) for layer in hooks]):
        source = _evaluate(metric, model(donor), batch, per_example)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(hooks[layer], leaf(layer)) for layer in hooks]):
        value = metric(model(receiver))
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
    return {"index": index, "values": torch.stack(values), "baseline": baseline, "source": source}
