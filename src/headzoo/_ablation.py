"""Head ablation: run the model as if some heads were switched off.

Knocking out a head and watching a task degrade is the simplest causal test of what the head
does (Wang et al. 2022; Olsson et al. 2022). How a head is "switched off" matters:

- ``zero``: its output ``z`` is zeroed (the output bias of the layer stays);
- ``mean``: ``z`` is replaced by its mean over reference tokens the caller gives, which keeps
  the head's constant contribution and removes only what depends on the input;
- ``resample``: ``z`` is taken from another example (of the same batch, or of reference
  tokens), so the head carries realistic but unrelated information;
- ``uniform``: the head attends uniformly to every key it may see (its output becomes the
  running mean of its values), which is how the retrieval-head paper masks heads (Wu et al.
  2024). Causal attention is assumed: every query sees the keys up to itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch

from headzoo._errors import InvalidOptionError, InvalidTokensError
from headzoo._forward import hook_name, require_hooks, run
from headzoo._models import model_info
from headzoo._tokens import as_block, check_heads, check_int

__all__ = ["ablate", "ablation_hooks", "AblationMethod"]

AblationMethod = Literal["zero", "mean", "resample", "uniform"]
_METHODS = ("zero", "mean", "resample", "uniform")


def _by_layer(heads: Any, n_layers: int, n_heads: int) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in check_heads(heads, n_layers, n_heads):
        by_layer.setdefault(layer, []).append(head)
    return by_layer


def _check_positions(positions: Any) -> Callable[[int, torch.device], torch.Tensor | None]:
    """``positions`` as ``(n_positions, device) -> index tensor`` (``None``: every position)."""
    if positions is None:
        return lambda n, device: None
    if isinstance(positions, slice):
        return lambda n, device: torch.arange(n, device=device)[positions]
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        items = [int(positions)]
    else:
        ok = isinstance(positions, (list, tuple)) and len(positions) > 0 and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in positions)
        if not ok:
            raise InvalidOptionError(
                f"positions must be None, an index, a slice or a non-empty list of integer indices; got {positions!r}"
            )
        items = [int(p) for p in cast("Sequence[Any]", positions)]  # `ok` checked it is a list or tuple

    def pick(n: int, device: torch.device) -> torch.Tensor:
        bad = [p for p in items if not -n <= p < n]
        if bad:
            raise InvalidOptionError(f"positions {bad} are outside the {n} positions of this forward pass")
        return torch.tensor([p % n for p in items], device=device)

    return pick


def ablation_hooks(
    model: Any,
    heads: Any,
    method: AblationMethod | str = "zero",
    *,
    reference_tokens: Any = None,
    seed: int = 0,
    positions: Any = None,
) -> list[tuple[str, Callable]]:
    """The hooks that ablate ``heads``, as ``[(hook_name, fn)]`` for ``run_with_hooks`` or
    ``model.hooks(fwd_hooks=...)``.

    Args:
        heads: ``(layer, head)`` pairs (query heads).
        method: ``"zero"``, ``"mean"`` (needs ``reference_tokens``), ``"resample"`` (from other
            examples of the batch, or from ``reference_tokens`` when given) or ``"uniform"``.
        reference_tokens: ``[batch, pos]`` ids: the distribution ``mean`` averages over and
            ``resample`` draws from.
        seed: seeds which example ``resample`` takes each example's activations from.
        positions: the query positions to ablate: ``None`` for all, an index, a ``slice``
            (``slice(n - 1, None)``: the last position of an ``n``-token prompt and every
            token generated after it), or a list of indices. Other positions run unchanged.
    """
    info = model_info(model)
    where = _check_positions(positions)
    if method not in _METHODS:
        raise InvalidOptionError(f"method must be one of {list(_METHODS)}; got {method!r}")
    by_layer = _by_layer(heads, info.n_layers, info.n_heads)
    seed = check_int(seed, "seed")
    names = {layer: hook_name("z", layer) for layer in by_layer}
    values = {layer: hook_name("v", layer) for layer in by_layer}
    require_hooks(model, list(names.values()) + (list(values.values()) if method == "uniform" else []), f"{method!r} ablation")
    reference: dict[int, torch.Tensor] = {}
    if method == "mean" and reference_tokens is None:
        raise InvalidOptionError("method='mean' needs reference_tokens: the tokens whose mean activation replaces the head's")
    if reference_tokens is not None and method in ("mean", "resample"):
        ref = as_block(reference_tokens, info, "reference_tokens")

        def keep(layer: int) -> Callable:
            def hook(z: torch.Tensor, hook: Any) -> None:
                reference[layer] = z.detach().clone()
            return hook

        with torch.no_grad():
            run(model, ref.to(info.device), edit=[(names[layer], keep(layer)) for layer in by_layer], logits=None)
    generator = torch.Generator().manual_seed(seed)

    def make(layer: int) -> Callable:
        hs = by_layer[layer]

        def put(z: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
            """``z`` with heads ``hs`` set to ``value`` ``[batch, pos, head, d_head]`` at the chosen positions."""
            z = z.clone()
            pos = where(z.shape[1], z.device)
            if pos is None:
                z[:, :, hs] = value.to(z.dtype) if isinstance(value, torch.Tensor) else value
            else:
                if isinstance(value, torch.Tensor) and value.ndim == 4:
                    value = value[:, pos]
                z[:, pos[:, None], torch.tensor(hs, device=z.device)[None, :]] = (
                    value.to(z.dtype) if isinstance(value, torch.Tensor) else value)
            return z

        def zero(z: torch.Tensor, hook: Any) -> torch.Tensor:
            return put(z, 0.0)

        def mean(z: torch.Tensor, hook: Any) -> torch.Tensor:
            return put(z, reference[layer][:, :, hs].mean((0, 1)))

        def resample(z: torch.Tensor, hook: Any) -> torch.Tensor:
            if layer in reference:
                src = reference[layer]
                if src.shape[1] != z.shape[1]:
                    raise InvalidTokensError(
                        f"resample ablation: reference_tokens have {src.shape[1]} positions but the run has {z.shape[1]}"
                    )
                rows = torch.randint(0, src.shape[0], (z.shape[0],), generator=generator)
                return put(z, src[rows.to(src.device)][:, :, hs])
            else:
                n = z.shape[0]
                if n < 2:
                    raise InvalidTokensError(
                        "resample ablation draws from other examples of the batch, and this batch has one; "
                        "pass reference_tokens or a larger batch"
                    )
                # a random permutation without fixed points: every example gets another's activation
                shift = int(torch.randint(1, n, (1,), generator=generator))
                perm = torch.randperm(n, generator=generator)
                source = perm.roll(shift)[perm.argsort()]
                return put(z, z[source.to(z.device)][:, :, hs])

        def uniform(z: torch.Tensor, hook: Any) -> torch.Tensor:
            # Uniform attention over the keys a query may see makes z the running mean of the
            # values. Computing it from v (kept by the hook below) works on every model class,
            # including bridges where edits to hook_pattern do not reach the output.
            v = seen_v.pop(layer)  # [batch, pos, kv_head, d_head]
            group = info.n_heads // v.shape[2]
            counts = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)[None, :, None, None]
            running = v.cumsum(1) / counts
            return put(z, running[:, :, [h // group for h in hs]])

        return {"zero": zero, "mean": mean, "resample": resample, "uniform": uniform}[method]

    seen_v: dict[int, torch.Tensor] = {}

    def keep_v(layer: int) -> Callable:
        def hook(v: torch.Tensor, hook: Any) -> None:
            seen_v[layer] = v
        return hook

    hooks = [(names[layer], make(layer)) for layer in by_layer]
    if method == "uniform":
        hooks = [(values[layer], keep_v(layer)) for layer in by_layer] + hooks
    return hooks


@contextlib.contextmanager
def ablate(
    model: Any,
    heads: Any,
    method: AblationMethod | str = "zero",
    *,
    reference_tokens: Any = None,
    seed: int = 0,
    positions: Any = None,
) -> Iterator[Any]:
    """Every forward pass inside the ``with`` block runs with ``heads`` ablated.

    Example::

        with hz.ablate(model, heads=[(2, 3)], method="zero"):
            logits = model(tokens)

    The hooks are TransformerLens hooks added for the block only: they are removed on exit,
    also when the body raises, and hooks the caller added before are left alone. See
    :func:`ablation_hooks` for the methods and options; it returns the same hooks as a list.
    """
    hooks = ablation_hooks(model, heads, method, reference_tokens=reference_tokens, seed=seed, positions=positions)
    with model.hooks(fwd_hooks=hooks):
        yield model

