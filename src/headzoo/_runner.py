"""The detection runner.

Every selected pattern detector is fed from ONE forward pass per batch. A forward hook on each
``hook_pattern`` reduces the layer's attention pattern to per-prompt, per-head numbers for all
detectors and lets the pattern go, so memory does not grow with the number of detectors or
layers, and nothing is cached. The pass stops as soon as the last layer's pattern is reduced
(the final MLP and the unembedding are never computed). With a user's ``cache`` the same
reductions read the cached patterns and the model is not run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from headzoo._circuits import WeightCircuits
from headzoo._detector import Detector, DetectorOutput, PatternDetector, WeightDetector
from headzoo._errors import (
    DetectorNotApplicableError,
    InvalidOptionError,
    InvalidTokensError,
    MissingHooksError,
    UnsupportedModelError,
)
from headzoo._models import ModelInfo, library_versions, model_info, pattern_hook
from headzoo._probes import RepeatedTokens
from headzoo._registry import detector_class, registered_names
from headzoo._results import HeadScores

__all__ = ["detect"]

_PROBE_OPTIONS = {f.name for f in dataclasses.fields(RepeatedTokens)}
_RUNNER_OPTIONS = {"progress"}


class _StopForward(Exception):
    """Raised from the last pattern hook: nothing after it is needed."""


def detect(
    model: Any,
    detectors: str | Detector | Sequence[str | Detector] | None = None,
    *,
    tokens: Any = None,
    cache: Any = None,
    **options: Any,
) -> HeadScores:
    """Score every head of ``model`` with the chosen detectors.

    Args:
        model: any TransformerLens model (HookedTransformer or TransformerBridge).
        detectors: a name, a detector instance, a list of them, or ``None`` for all registered.
        tokens: the user's text to score on: a string, a list of strings (needs the model's
            tokenizer), or token ids ``[pos]`` / ``[batch, pos]`` (tensor, array or nested
            lists; ragged lists are scored prompt by prompt). ``None``: each detector's probe.
        cache: the ``ActivationCache`` (or dict) of ``model.run_with_cache(tokens)``; pattern
            scores are then read from it without running the model. Needs ``tokens`` for
            detectors that compare token identities.
        **options: probe options (``n_prompts``, ``half_len``, ``batch_size``, ``seed``,
            ``prepend_bos``), ``progress`` (bool), and detector options (e.g. ``measure``,
            ``exclude_bos``), applied to every selected detector that has them.

    Returns:
        :class:`HeadScores` with one row per (detector, layer, head).
    """
    return _detect(model, detectors, tokens=tokens, cache=cache, explicit=detectors is not None, **options)


def _detect(model: Any, detectors: Any, *, tokens: Any, cache: Any, explicit: bool, **options: Any) -> HeadScores:
    """:func:`detect`; with ``explicit=False`` a detector that does not apply is skipped (and
    reported) instead of raising, as when every registered detector runs."""
    info = model_info(model)
    selected = _select(detectors, options)
    probe = RepeatedTokens(**{k: v for k, v in options.items() if k in _PROBE_OPTIONS})
    progress = options.get("progress")
    patterned = [d for d in selected if isinstance(d, PatternDetector)]
    metrics: dict[str, dict[str, torch.Tensor]] = {}
    if patterned:
        if cache is not None:
            batches, source = _cache_batches(model, info, cache, tokens, patterned)
        elif tokens is not None:
            token_batches, source = _user_batches(model, info, tokens, probe.batch_size)
            batches = ((t, None) for t in token_batches)
        else:
            batches, source = ((t, None) for t in probe.batches(info)), probe.metadata(info)
        metrics.update(_score_patterns(model, info, patterned, batches, source, progress))
    else:
        source = {"kind": "weights"}
    circuits: WeightCircuits | None = None
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, pd.DataFrame] = {}
    skipped: dict[str, str] = {}
    for det in list(selected):
        if not isinstance(det, PatternDetector):
            if circuits is None and isinstance(det, WeightDetector):
                circuits = WeightCircuits(model, progress=progress)
            try:
                output = det.compute(model, progress=progress, circuits=circuits if isinstance(det, WeightDetector) else None)
            except DetectorNotApplicableError as exc:
                if explicit:
                    raise
                # Running every registered detector: one that cannot apply to this model is
                # reported in the metadata (and warned about), not allowed to sink the rest.
                warnings.warn(f"headzoo skipped a detector. {exc}", stacklevel=2)
                skipped[det.name] = str(exc)
                selected.remove(det)
                continue
            if not isinstance(output, DetectorOutput):
                raise TypeError(f"{type(det).__name__}.compute must return hz.DetectorOutput; got {type(output).__name__}")
            metrics[det.name] = dict(output.metrics)
            if output.meta:
                results[det.name] = output.meta
            if output.details is not None:
                details[det.name] = output.details
        metrics[det.name].update(det.weight_scores(model))
    if not selected:
        raise DetectorNotApplicableError(f"no selected detector applies to this model: {skipped}")
    meta = {
        "format": "headzoo.HeadScores/1",
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        "detectors": {d.name: {**d.metadata(), **({"result": results[d.name]} if d.name in results else {})} for d in selected},
        "probe": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if skipped:
        meta["skipped_detectors"] = skipped
    return HeadScores(_to_frame(metrics, selected), meta, details=details)


def _select(detectors: Any, options: dict[str, Any]) -> list[Detector]:
    if detectors is None:
        items: list[Any] = registered_names()
    elif isinstance(detectors, (str, Detector)):
        items = [detectors]
    elif isinstance(detectors, Iterable):
        items = list(detectors)
    else:
        raise InvalidOptionError(
            f"detectors must be a name, a detector, a list of them, or None; got {type(detectors).__name__}"
        )
    if not items:
        raise InvalidOptionError("no detectors selected; pass None for all, or see hz.list_detectors()")
    classes = []
    for item in items:
        if isinstance(item, Detector):
            classes.append(item)
        elif isinstance(item, str):
            classes.append(detector_class(item))
        else:
            raise InvalidOptionError(f"detectors must be names or detector instances; got {item!r}")
    names = [c.name for c in classes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidOptionError(f"detector(s) {dupes} selected more than once")
    fields_of = {c.name: {f.name for f in dataclasses.fields(c)} for c in classes}  # type: ignore[arg-type]
    known = _PROBE_OPTIONS | _RUNNER_OPTIONS | set().union(*fields_of.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {unknown} for detectors {names}. Valid options: {sorted(known)}."
        )
    selected = []
    for c in classes:
        mine = {k: v for k, v in options.items() if k in fields_of[c.name]}
        selected.append(dataclasses.replace(c, **mine) if isinstance(c, Detector) else c(**mine))
    return selected


def _check_ids(ids: torch.Tensor, info: ModelInfo, what: str) -> None:
    if ids.dtype in (torch.bool,) or ids.is_floating_point() or ids.is_complex():
        raise InvalidTokensError(f"{what} must be integer token ids; got dtype {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise InvalidTokensError(f"{what} must have shape [pos] or [batch, pos]; got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InvalidTokensError(f"{what} is empty; give at least one token per prompt")
    if ids.shape[-1] > info.n_ctx:
        raise InvalidTokensError(
            f"{what} has {ids.shape[-1]} positions but the model's context is {info.n_ctx}; "
            f"truncate or split the prompts to at most {info.n_ctx} tokens"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= info.d_vocab:
        raise InvalidTokensError(
            f"{what} holds ids in [{lo}, {hi}] but the vocabulary is [0, {info.d_vocab - 1}]"
        )


def _user_prompts(model: Any, info: ModelInfo, tokens: Any) -> list[torch.Tensor]:
    """The user's tokens as a list of 1-D id tensors (never views the caller could see written)."""
    if isinstance(tokens, str) or (
        isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens)
    ):
        if getattr(model, "tokenizer", None) is None:
            raise InvalidTokensError(
                "text was given but the model has no tokenizer; pass token ids instead"
            )
        texts = [tokens] if isinstance(tokens, str) else list(tokens)
        if any(not t for t in texts):
            raise InvalidTokensError("an empty string was given; every prompt needs text")
        prompts = [model.to_tokens(t)[0].cpu() for t in texts]
    elif isinstance(tokens, torch.Tensor) or isinstance(tokens, np.ndarray):
        ids = torch.as_tensor(tokens)
        _check_ids(ids, info, "tokens")
        prompts = list(ids.reshape(-1, ids.shape[-1]).cpu())
    elif isinstance(tokens, (list, tuple)):
        if not tokens:
            raise InvalidTokensError("tokens is empty; give at least one prompt")
        rows = tokens if isinstance(tokens[0], (list, tuple, torch.Tensor, np.ndarray)) else [tokens]
        prompts = []
        for i, row in enumerate(rows):
            try:
                ids = torch.as_tensor(row) if isinstance(row, (torch.Tensor, np.ndarray)) else torch.tensor(row)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InvalidTokensError(f"prompt {i} is not a list of integer ids: {exc}") from None
            _check_ids(ids, info, f"prompt {i}")
            if ids.ndim != 1:
                raise InvalidTokensError(f"prompt {i} must be a flat list of ids; got shape {tuple(ids.shape)}")
            prompts.append(ids.cpu())
    else:
        raise InvalidTokensError(
            f"tokens must be text, a list of texts, or integer ids; got {type(tokens).__name__}"
        )
    for i, p in enumerate(prompts):
        _check_ids(p, info, f"prompt {i}")
    return [p.long() for p in prompts]


def _user_batches(model: Any, info: ModelInfo, tokens: Any, batch_size: int) -> tuple[list[torch.Tensor], dict]:
    prompts = _user_prompts(model, info, tokens)
    by_len: dict[int, list[torch.Tensor]] = {}
    for p in prompts:
        by_len.setdefault(len(p), []).append(p)
    batches = [torch.stack(group[i : i + batch_size]) for group in by_len.values() for i in range(0, len(group), batch_size)]
    source = {"kind": "user_tokens", "n_prompts": len(prompts), "lengths": sorted(by_len), "batch_size": batch_size}
    return batches, source


def _cache_batches(model: Any, info: ModelInfo, cache: Any, tokens: Any, detectors: list[PatternDetector]) -> tuple[Any, dict]:
    names = [pattern_hook(layer) for layer in range(info.n_layers)]
    try:
        missing = [n for n in names if n not in cache]
    except TypeError:
        raise InvalidOptionError(f"cache must be an ActivationCache or dict; got {type(cache).__name__}") from None
    if missing:
        raise MissingHooksError(
            f"the cache lacks {len(missing)} hook(s) the pattern detectors need: {missing}. Make it "
            "with `_, cache = model.run_with_cache(tokens, names_filter=lambda name: "
            "name.endswith('hook_pattern'))` (or without names_filter to keep everything)."
        )
    first = cache[names[0]]
    shape = tuple(first.shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[1] != info.n_heads or shape[2] != shape[3]:
        raise MissingHooksError(
            f"{names[0]} in the cache has shape {tuple(first.shape)}; expected [batch, {info.n_heads}, pos, pos]"
        )
    needs = [d.name for d in detectors if d.needs_tokens]
    if tokens is None:
        if needs:
            raise InvalidTokensError(
                f"{needs} compare token identities, so with a cache they also need the tokens the "
                "cache was made from: hz.detect(model, ..., tokens=tokens, cache=cache)"
            )
        ids = torch.zeros(shape[0], shape[2], dtype=torch.long)
    else:
        prompts = _user_prompts(model, info, tokens)
        if len({len(p) for p in prompts}) != 1:
            raise InvalidTokensError("with a cache, tokens must be one [batch, pos] block, as given to run_with_cache")
        ids = torch.stack(prompts)
        if (ids.shape[0], ids.shape[1]) != (shape[0], shape[2]):
            raise InvalidTokensError(
                f"tokens have shape {tuple(ids.shape)} but the cache holds patterns for "
                f"[batch={shape[0]}, pos={shape[2]}]; pass the tokens the cache was made from"
            )

    def patterns(layer: int) -> torch.Tensor:
        p = cache[names[layer]]
        return p if p.ndim == 4 else p.unsqueeze(0)

    source = {"kind": "user_cache", "n_prompts": int(shape[0]), "lengths": [int(shape[2])]}
    return iter([(ids, patterns)]), source


def _score_patterns(
    model: Any, info: ModelInfo, detectors: list[PatternDetector], batches: Iterable[tuple[Int[torch.Tensor, "b p"], Any]],
    source: dict, progress: bool | None,
) -> dict[str, dict[str, torch.Tensor]]:
    sums: dict[tuple[str, str], torch.Tensor] = {}
    counts: dict[tuple[str, str], torch.Tensor] = {}
    n_layers, n_heads = info.n_layers, info.n_heads

    def accumulate(layer: int, pattern: torch.Tensor, matches: dict[str, torch.Tensor]) -> None:
        if pattern.ndim != 4 or pattern.shape[1] != n_heads or pattern.shape[-1] != pattern.shape[-2]:
            raise UnsupportedModelError(
                f"{pattern_hook(layer)} has shape {tuple(pattern.shape)}; headzoo needs "
                f"[batch, {n_heads}, pos, pos] attention patterns"
            )
        p = pattern.detach().float()
        for det in detectors:
            for metric, (values, valid) in det.reduce(p, matches[det.name]).items():
                key = (det.name, metric)
                if key not in sums:
                    sums[key] = torch.zeros(n_layers, n_heads, dtype=torch.float64)
                    counts[key] = torch.zeros(n_layers, dtype=torch.float64)
                v = valid.to(values.device)
                sums[key][layer] += (values.double() * v[:, None]).sum(0).cpu()
                counts[key][layer] += v.sum().double().cpu()

    n_total = source.get("n_prompts")
    show = progress if progress is not None else bool(n_total and n_total > 8)
    bar = tqdm(total=n_total, desc="headzoo detect", unit="prompt", disable=not show, leave=False)
    device = torch.device(info.device)
    try:
        with torch.no_grad():
            for ids, cached in batches:
                ids_dev = ids.to(device)
                matches = {d.name: d.match(ids_dev) for d in detectors}
                if cached is not None:
                    for layer in range(n_layers):
                        accumulate(layer, cached(layer).to(device), matches)
                else:
                    _forward_with_reducers(model, info, ids_dev, lambda layer, p: accumulate(layer, p, matches))
                bar.update(ids.shape[0])
    finally:
        bar.close()
    out: dict[str, dict[str, torch.Tensor]] = {d.name: {} for d in detectors}
    for (name, metric), total in sums.items():
        n = counts[(name, metric)][:, None].expand_as(total)
        out[name][metric] = torch.where(n > 0, total / n.clamp_min(1), torch.nan)
    return out


def _forward_with_reducers(model: Any, info: ModelInfo, tokens: torch.Tensor, reduce: Any) -> None:
    """Run ``model`` on ``tokens``, handing each layer's pattern to ``reduce(layer, pattern)``."""
    fired: set[int] = set()
    handles = []
    last = info.n_layers - 1

    def make(layer: int) -> Any:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            fired.add(layer)
            reduce(layer, output)
            if layer == last:
                raise _StopForward

        return hook

    try:
        # Plain torch hooks on the HookPoints: TransformerLens' own hook registry (and any
        # hooks the user added there) is left exactly as it was.
        for layer in range(info.n_layers):
            handles.append(model.hook_dict[pattern_hook(layer)].register_forward_hook(make(layer)))
        try:
            model(tokens)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    if len(fired) != info.n_layers:
        silent = [pattern_hook(layer) for layer in range(info.n_layers) if layer not in fired]
        raise UnsupportedModelError(
            f"The attention patterns of this model cannot be read: {silent} never fired during a "
            "forward pass (a fused attention kernel skips them). Load the model with eager "
            "attention, or for a TransformerBridge call enable_compatibility_mode()."
        )


def _to_frame(metrics: dict[str, dict[str, torch.Tensor]], detectors: list[Detector]) -> pd.DataFrame:
    frames = []
    for det in detectors:
        m = metrics.get(det.name, {})
        if "score" not in m:
            raise RuntimeError(f"detector {det.name} produced no 'score'")
        score = m["score"].double().cpu()
        layers, heads = torch.nonzero(~torch.isnan(score), as_tuple=True)
        df = pd.DataFrame({"detector": det.name, "layer": layers.numpy().astype("int64"), "head": heads.numpy().astype("int64")})
        for metric, values in m.items():
            df[metric] = values.double().cpu()[layers, heads].numpy()
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    base = ["detector", "layer", "head", "score"]
    return frame[base + sorted(c for c in frame.columns if c not in base)]
