"""The execution kernel: the one place where headzoo runs a model.

Everything that runs a model (the detection runner, the greedy decoder, patching, ablation, the
effective embedding and the atlas) goes through these functions, so a TransformerLens or
transformers release that renames a hook or a keyword changes one function here:

- the hook-name table (:func:`hook_name`) and the required-hook check (:func:`require_hooks`);
- :func:`run`: a forward pass that hands chosen hook outputs to readers through plain torch
  hooks (TransformerLens' own hook registry, and any hook the user put there, is untouched),
  applies editing hooks through TransformerLens' context manager (which applies a bridge's
  hook conversions and removes exactly what it added), stops as soon as nothing after a hook
  is needed, and unembeds only the positions that are read;
- :func:`run_from_layer`: the blocks from one layer on, on a residual stream, for patching;
- :func:`run_suffix_from_layer`: the same on the positions after a shared prefix only, the
  prefix's attention inputs taken from a run that already computed them (:class:`Prefix`);
- the fused-attention diagnosis (a reader hook that never fired);
- :class:`KVCache`: key-value caching for ``HookedTransformer`` (its own cache) and for a
  ``TransformerBridge`` over transformers 4.x (``past_key_values=``) or 5.x (``cache=``), checked
  to have really advanced after each step; models with none are reported, never guessed;
- :func:`check_finite`: non-finite parameters are refused with the parameter's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch

from headzoo._errors import MissingHooksError, NonFiniteError, UnsupportedModelError

__all__ = [
    "HOOKS",
    "hook_name",
    "require_hooks",
    "run",
    "run_from_layer",
    "run_suffix_from_layer",
    "Prefix",
    "prefix_hooks",
    "first_difference",
    "KVCache",
    "open_kv_cache",
    "check_finite",
    "warn_once",
    "HeadzooPerformanceWarning",
]

#: where each activation lives; ``{layer}`` is filled in by :func:`hook_name`
HOOKS: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
}

_FUSED_HINT = (
    "(a fused attention kernel such as SDPA or flash attention skips it). Load the model with "
    "eager attention (attn_implementation='eager'), or for a TransformerBridge call "
    "enable_compatibility_mode()."
)


class HeadzooPerformanceWarning(UserWarning):
    """headzoo fell back to a slower way of computing the same numbers."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn about a slow fallback once per process and message (results also record it)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, HeadzooPerformanceWarning, stacklevel=3)


def hook_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of ``kind`` (a key of :data:`HOOKS`) at ``layer``."""
    try:
        template = HOOKS[kind]
    except KeyError:
        raise MissingHooksError(f"no activation kind {kind!r}; known kinds: {sorted(HOOKS)}") from None
    if "{layer}" in template:
        if layer is None:
            raise MissingHooksError(f"hook kind {kind!r} needs a layer")
        return template.format(layer=layer)
    return template


def require_hooks(model: Any, names: Iterable[str], purpose: str) -> None:
    """Raise :class:`MissingHooksError` naming the first hook ``model`` lacks for ``purpose``."""
    hooks = model.hook_dict
    missing = [n for n in names if n not in hooks]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MissingHooksError(
            f"{type(model).__name__} has no hook {missing[0]!r}{more}, which {purpose} needs. "
            "Use a HookedTransformer or TransformerBridge that exposes TransformerLens' standard hooks."
        )


class _Stop(Exception):
    """Raised from a hook once nothing after it is needed."""


Reader = Callable[[torch.Tensor], None]
EditHook = tuple[str, Callable[..., Any]]
Logits = str | Sequence[int] | torch.Tensor | None


def _unembed(model: Any) -> torch.nn.Module:
    unembed = getattr(model, "unembed", None)
    if not isinstance(unembed, torch.nn.Module):
        raise UnsupportedModelError(f"{type(model).__name__} has no `unembed` module to compute logits with")
    return unembed


def _select(x: torch.Tensor, logits: Logits) -> torch.Tensor:
    """The rows of the unembedding input ``x [batch, pos, d]`` that ``logits`` asks for."""
    if isinstance(logits, str):
        if logits == "last":
            return x[:, -1:]
        raise ValueError(f"unknown logits selector {logits!r}")
    if isinstance(logits, torch.Tensor):  # one position per row: [batch]
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, logits.to(x.device)][:, None]
    return x[:, list(logits)]  # type: ignore[arg-type]


def run(
    model: Any,
    tokens: torch.Tensor | None = None,
    *,
    read: Mapping[str, Reader] | None = None,
    edit: Sequence[EditHook] = (),
    stop_after: str | None = None,
    logits: Logits = "all",
    forward: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """Run ``model`` once and return the logits it was asked for.

    Args:
        tokens: ``[batch, pos]`` ids (on the model's device); ignored when ``forward`` is given.
        read: ``{hook name: fn(activation)}``; each is called with the hook's output. Every one
            must fire (unless the pass stops before it): one that does not is diagnosed as a
            fused attention kernel or a missing hook, never skipped silently.
        edit: TransformerLens ``(hook name, fn(activation, hook))`` hooks that may return a
            replacement.
        stop_after: a hook name; the pass stops once it and every reader have fired (no logits).
        logits: ``"all"`` (the model's own output, ``[batch, pos, vocab]``), ``None`` (stop at
            the unembedding's input: no logits, returns ``None``), ``"last"`` or a list of
            positions (``[batch, n, vocab]``), or a ``[batch]`` tensor of one position per row
            (``[batch, 1, vocab]``): only those rows are unembedded.
        forward: a zero-argument callable to run instead of ``model(tokens, **kwargs)``.
        **kwargs: keyword arguments for ``model(...)`` (attention masks, key-value caches).

    Returns:
        The logits asked for, or ``None``.
    """
    read = dict(read or {})
    require_hooks(model, list(read) + [name for name, _ in edit] + ([stop_after] if stop_after else []), "this computation")
    fired: set[str] = set()
    got: dict[str, torch.Tensor] = {}
    handles = []

    def reader(name: str, fn: Reader | None) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            fired.add(name)
            if fn is not None:
                fn(output)
            # Stop once stop_after and every reader have fired: a TransformerLens 3.x bridge fires
            # an attention block's hook_pattern after its hook_z, so "right after stop_after"
            # alone could end the pass before a reader of the same block.
            if stop_after in fired and fired.issuperset(read):
                raise _Stop

        return hook

    run_forward = forward if forward is not None else (lambda: model(tokens, **kwargs))
    stopped = False
    try:
        for name, fn in read.items():
            handles.append(model.hook_dict[name].register_forward_hook(reader(name, fn)))
        if stop_after is not None and stop_after not in read:
            handles.append(model.hook_dict[stop_after].register_forward_hook(reader(stop_after, None)))
        if stop_after is None and logits != "all":
            def grab(module: Any, args: Any) -> None:
                got["x"] = args[0]
                raise _Stop

            handles.append(_unembed(model).register_forward_pre_hook(grab))
        try:
            if edit:
                with model.hooks(fwd_hooks=list(edit)):
                    out = run_forward()
            else:
                out = run_forward()
        except _Stop:
            stopped, out = True, None
    finally:
        for h in handles:
            h.remove()
    silent = [n for n in read if n not in fired]
    if silent and not (stopped and stop_after is not None):  # a stop_after pass ends before later hooks
        raise UnsupportedModelError(f"hook {silent[0]!r} never fired during a forward pass " + _FUSED_HINT)
    if stop_after is not None:
        if stop_after not in fired:
            raise UnsupportedModelError(f"hook {stop_after!r} never fired during a forward pass " + _FUSED_HINT)
        return None
    if logits == "all":
        return _as_logits(out)
    if "x" not in got:
        if out is None:
            raise UnsupportedModelError(f"{type(model).__name__}'s unembedding never ran during a forward pass")
        # the model never went through its unembed module: select from the full logits
        full = _as_logits(out)
        return None if logits is None else _select(full, logits)
    if logits is None:
        return None
    return _unembed(model)(_select(got["x"], logits))


def _as_logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UnsupportedModelError(f"the model returned {type(out).__name__}, not logits")


def final_norm(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's final normalisation (identity when it has none)."""
    norm = getattr(model, "ln_final", None)
    return norm if norm is not None else (lambda x: x)


def run_from_layer(
    model: Any,
    resid: torch.Tensor,
    layer: int,
    *,
    edit: Sequence[EditHook] = (),
    logits: Logits = "all",
) -> torch.Tensor | None:
    """Run ``blocks[layer:]``, the final norm and the unembedding on ``resid`` ``[batch, pos, d]``.

    Callers must check once, on real inputs, that this reproduces the model's own forward pass
    (it does for HookedTransformer and for bridges whose blocks take the residual alone).
    """

    def forward() -> torch.Tensor:
        x = resid
        for block in model.blocks[layer:]:
            x = block(x)
            if isinstance(x, tuple):  # Hugging Face blocks return (hidden_states, ...)
                x = x[0]
        return _unembed(model)(final_norm(model)(x))

    return run(model, forward=forward, edit=edit, logits=logits)


# -- shared prefixes ------------------------------------------------------------------------


def _attention_input(model: Any, layer: int) -> str | None:
    """The hook whose output is block ``layer``'s attention input (its normalised residual
    stream): a bridge's ``attn.hook_in``, a HookedTransformer's ``ln1.hook_normalized``."""
    for name in (f"blocks.{layer}.attn.hook_in", f"blocks.{layer}.ln1.hook_normalized"):
        if name in model.hook_dict:
            return name
    return None


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """The first position where any row of ``a`` and ``b`` (``[batch, pos]`` ids) differ;
    ``pos`` when they are equal. Under causal attention every activation before it is the same
    in both runs."""
    diff = (a != b).any(0).nonzero()
    return int(diff[0]) if diff.numel() else int(a.shape[1])


@dataclasses.dataclass(frozen=True)
class Prefix:
    """The first ``length`` positions of a run, as later runs that share them need them.

    Attributes:
        length: the number of shared positions ``p``.
        hooks: ``{layer: hook name}`` of each block's attention input.
        attn_in: ``{layer: [batch, p, d_model]}`` each block's attention input at those
            positions (the only thing a later position reads from an earlier one).
    """

    length: int
    hooks: dict[int, str]
    attn_in: dict[int, torch.Tensor]


def prefix_hooks(model: Any, layers: Iterable[int], length: int) -> tuple[list[EditHook], Prefix] | None:
    """Hooks that, on a full forward pass, fill a :class:`Prefix` of ``length`` positions at
    ``layers``; ``None`` when the model exposes no attention-input hook there."""
    names = {layer: _attention_input(model, layer) for layer in layers}
    if any(name is None for name in names.values()):
        return None
    prefix = Prefix(length, cast("dict[int, str]", names), {})

    def keep(layer: int) -> Callable[..., None]:
        def hook(act: torch.Tensor, hook: Any) -> None:
            # a HookedTransformer normalises the same input three times (query, key, value)
            prefix.attn_in.setdefault(layer, act[:, :length].detach().clone())
        return hook

    return [(name, keep(layer)) for layer, name in prefix.hooks.items()], prefix


def run_suffix_from_layer(
    model: Any,
    resid: torch.Tensor,
    layer: int,
    prefix: Prefix,
    *,
    edit: Sequence[EditHook] = (),
    logits: Logits = "all",
) -> torch.Tensor | None:
    """Run ``blocks[layer:]`` on the positions after ``prefix``, ``resid``
    ``[n * batch, pos - p, d]`` (``n`` copies of the prefix's batch, one after the other).

    Under causal attention the only thing the later positions read from the first ``p`` is
    their attention input, so each attention gets the prefix's (taken from the run that
    computed it) in front of the suffix's, and its output is cut back to the suffix: the
    attention's own hooks (``q``, ``k``, ``v``, ``z``, ``pattern``) see every position, in the
    full run's coordinates; every hook outside it (``resid_pre``, ``attn_out``, ``mlp_out``,
    ...) and ``logits`` (positions counted from ``p``) see the suffix only. The key and value
    projections of the prefix are recomputed (two matrix products per prefix token, against
    twelve for a whole GPT-2 block); the MLPs, norms and unembedding run on the suffix alone.

    Callers must check once, on real inputs, that this reproduces the model's own forward.
    """
    p = prefix.length
    hooks: list[EditHook] = []
    for at in range(layer, len(model.blocks)):
        def widen(x: torch.Tensor, hook: Any, first: torch.Tensor = prefix.attn_in[at]) -> torch.Tensor:
            copies = x.shape[0] // first.shape[0]
            return torch.cat([first.repeat(copies, *([1] * (first.ndim - 1))) if copies > 1 else first, x], 1)

        def narrow(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return x[:, p:]

        # ours first: a caller's edit at attn_out then sees the suffix, like every residual hook
        hooks += [(prefix.hooks[at], widen), (hook_name("attn_out", at), narrow)]
    return run_from_layer(model, resid, layer, edit=[*hooks, *edit], logits=logits)


# -- key-value caches ----------------------------------------------------------------------


def _kv_class() -> Any:
    """TransformerLens' own key-value cache class (its module moved between releases)."""
    for module, name in (
        ("transformer_lens.cache.key_value_cache", "TransformerLensKeyValueCache"),
        ("transformer_lens.past_key_value_caching", "HookedTransformerKeyValueCache"),
    ):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _hf_cache_keyword(model: Any) -> str | None:
    """The keyword the Hugging Face model behind a bridge takes its cache by: ``cache``
    (transformers 5.x) or ``past_key_values`` (4.x); ``None`` when there is no such model."""
    hf = getattr(model, "original_model", None)
    if hf is None or not callable(getattr(hf, "forward", None)):
        return None
    params = inspect.signature(hf.forward).parameters
    for keyword in ("cache", "past_key_values"):
        if keyword in params:
            return keyword
    return None


class KVCache:
    """A key-value cache for one batch of sequences growing together.

    :meth:`forward` gives the forward pass to hand to :func:`run`; :meth:`advance` checks after
    each pass that the cache really grew by the tokens just run (a model that silently ignores
    a cache keyword would otherwise make every later step wrong).

    Attributes:
        kind: ``"HookedTransformer"`` or ``"Hugging Face"``.
        keyword: the keyword the cache is passed by (``past_kv_cache``, ``cache`` or
            ``past_key_values``).
    """

    def __init__(self, kind: str, cache: Any, keyword: str, length: Callable[[], int], extra: Mapping[str, Any]) -> None:
        self.kind, self.keyword = kind, keyword
        self._cache, self._length, self._extra = cache, length, dict(extra)
        self.seen = 0

    def forward(self, model: Any, ids: torch.Tensor) -> Callable[[], Any]:
        """The pass ``model(ids)`` through this cache, for :func:`run`'s ``forward``."""
        kwargs = {self.keyword: self._cache, **self._extra}
        if self.kind == "HookedTransformer":
            # An explicit all-ones mask: TransformerLens would otherwise mask every token whose id
            # is the pad id (often the BOS id) once a cache is in use, unlike a full forward.
            # HookedTransformer takes the mask of the new tokens only and extends it from the cache.
            kwargs["attention_mask"] = torch.ones_like(ids)

        def call() -> Any:
            handles = []
            if self.keyword == "cache":
                # transformers 5.x hands each attention layer `cache=`; TransformerLens bridges up
                # to 4.3 read only `past_key_values=` there and would leave the cache empty.
                for block in getattr(model, "blocks", []):
                    attn = getattr(block, "attn", None)
                    if isinstance(attn, torch.nn.Module):
                        handles.append(attn.register_forward_pre_hook(_cache_alias, with_kwargs=True))
            try:
                return model(ids, **kwargs)
            finally:
                for h in handles:
                    h.remove()

        return call

    def advance(self, n: int) -> bool:
        """Record that ``n`` tokens were run; False if the cache did not grow by ``n``."""
        self.seen += n
        return self._length() == self.seen


def _cache_alias(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


def open_kv_cache(model: Any, batch: int, device: torch.device) -> tuple[KVCache | None, str]:
    """A fresh key-value cache for ``model``, or ``(None, why not)``.

    ``HookedTransformer`` uses TransformerLens' own cache; a ``TransformerBridge`` over a
    Hugging Face model uses a ``DynamicCache`` we own (Hugging Face fills it in place, so a
    pass may stop at the unembedding and the cache is still complete), passed by the keyword
    the installed transformers takes. ``boot_native`` bridges have none.
    """
    if "past_kv_cache" in inspect.signature(model.forward).parameters:
        kv_class = _kv_class()
        if kv_class is None:
            return None, "TransformerLens offers no key-value cache class"
        cache = kv_class.init_cache(model.cfg, device, batch)
        entries = getattr(cache, "entries", None)

        def ht_length() -> int:
            if not entries:
                return 0
            past = getattr(entries[0], "past_keys", None)
            return int(past.shape[1]) if past is not None else 0

        return KVCache("HookedTransformer", cache, "past_kv_cache", ht_length, {}), ""
    keyword = _hf_cache_keyword(model)
    if keyword is None:
        return None, "the model has no Hugging Face model behind it to keep a key-value cache"
    try:
        from transformers import DynamicCache

        cache = DynamicCache()
    except (ImportError, TypeError) as exc:  # pragma: no cover - depends on transformers
        return None, f"transformers offers no DynamicCache ({exc})"
    return KVCache("Hugging Face", cache, keyword, lambda: int(cache.get_seq_length()), {"use_cache": True}), ""


# -- weights -------------------------------------------------------------------------------

_finite_checked: weakref.WeakKeyDictionary[Any, tuple] = weakref.WeakKeyDictionary()


def _signature(model: Any) -> tuple:
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())


def _readable_name(model: Any, name: str, param: torch.Tensor) -> str:
    """The parameter's ``state_dict`` name (a bridge's module path is much longer)."""
    try:
        for key, value in model.state_dict().items():
            if value.data_ptr() == param.data_ptr() and value.shape == param.shape:
                return key
    except (AttributeError, RuntimeError):
        pass
    return name


def check_finite(model: Any) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter holding NaN or infinity.

    Parameters on the meta device (offloaded to disk by a device map) are skipped.

    The answer is remembered per model until a parameter is replaced or written in place, so
    repeated calls cost a tuple comparison.
    """
    params = getattr(model, "named_parameters", None)
    if params is None:
        return
    sig = _signature(model)
    try:
        if _finite_checked.get(model) == sig:
            return
    except TypeError:  # not weak-referenceable
        pass
    for name, p in params():
        if p.device.type == "meta":
            # offloaded by a device map (accelerate keeps the weight on disk or in CPU memory and
            # materialises it only inside the layer's forward): nothing here to read
            continue
        if not bool(torch.isfinite(p.detach()).all()):
            bad = int((~torch.isfinite(p.detach())).sum())
            raise NonFiniteError(
                f"the model's parameter {_readable_name(model, name, p)!r} holds {bad} non-finite value(s) (NaN or "
                "infinity); every score computed from it would be meaningless. Reload or repair the weights."
            )
    try:
        _finite_checked[model] = sig
    except TypeError:
        pass
