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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import pandas as pd
import torch
from tqdm.auto import tqdm

from headzoo._baseline import add_z_scores, init_scheme, random_twin
from headzoo._circuits import WeightCircuits
from headzoo._detector import Detector, DetectorOutput, PatternDetector, WeightDetector
from headzoo._errors import (
    DetectorDefinitionError,
    DetectorNotApplicableError,
    EmptyResultError,
    InvalidCacheError,
    InvalidOptionError,
    InvalidScoresError,
    InvalidTokensError,
    MissingHooksError,
    NonFiniteError,
    UnsupportedModelError,
)
from headzoo._forward import check_finite, hook_name, run
from headzoo._models import ModelInfo, head_weights, library_versions, model_info
from headzoo._probes import PROBES, Probe, RepeatedTokens
from headzoo._registry import detector_class, registered_names
from headzoo._results import HeadScores
from headzoo._tokens import Padded, as_prompts, check_bool, check_int, pad_right

__all__ = ["detect", "run_detectors", "select_detectors", "read_patterns", "probe_options"]



def probe_options() -> set[str]:
    """Every option name some registered probe takes."""
    return {f.name for cls in PROBES.values() for f in dataclasses.fields(cast(Any, cls))}

_RUNNER_OPTIONS = {"progress", "baseline", "baseline_models"}


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
            lists; prompts of different lengths are batched with right padding, which is exact
            under causal attention, and pads are never scored). ``None``: each detector's probe.
        cache: the ``ActivationCache`` (or dict) of ``model.run_with_cache(tokens)``; pattern
            scores are then read from it without running the model. Needs ``tokens`` for
            detectors that compare token identities.
        **options: probe options (``n_prompts``, ``half_len``, ``batch_size``, ``seed``,
            ``prepend_bos``, and those of the other probes, see ``hz.list_detectors()["probe"]``),
            ``progress`` (bool), ``baseline`` (bool: also score ``baseline_models``, default 3,
            randomly initialised copies of the model and add ``baseline_mean``,
            ``baseline_std`` and ``z`` columns; see ``headzoo._baseline``), and detector options
            (e.g. ``measure``, ``exclude_bos``), applied to every selected detector that has them.

    Returns:
        :class:`HeadScores` with one row per (detector, layer, head).

    Raises:
        NonFiniteError: a parameter of the model holds NaN or infinity (named).
        InvalidCacheError: ``cache`` was not made by this model from these tokens, or holds
            something other than attention patterns.
        EmptyResultError: a detector you named could score no head on these prompts (with
            ``detectors=None`` it is skipped instead, with a warning, and listed in
            ``meta["skipped_detectors"]``).
        InvalidScoresError: a detector returned scores of the wrong shape.
    """
    return run_detectors(model, detectors, tokens=tokens, cache=cache, explicit=detectors is not None, **options)


def run_detectors(model: Any, detectors: Any, *, tokens: Any, cache: Any, explicit: bool, **options: Any) -> HeadScores:
    """:func:`detect`; with ``explicit=False`` a detector that does not apply is skipped (and
    reported) instead of raising, as when every registered detector runs."""
    info = model_info(model)
    check_finite(model)
    baseline = check_bool(options.pop("baseline", False), "baseline")
    n_null = check_int(options.pop("baseline_models", 3), "baseline_models", minimum=2)
    if baseline and cache is not None and tokens is None:
        raise InvalidOptionError(
            "baseline=True with a cache needs the tokens too: the random copies of the model are run on them "
            "(the cache belongs to this model only). Pass tokens=..., or drop baseline."
        )
    selected = select_detectors(detectors, options)
    chosen = list(selected)
    progress = options.get("progress")
    if progress is not None:
        check_bool(progress, "progress")
    metrics: dict[str, dict[str, torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    probes_used: dict[str, dict[str, Any]] = {}
    probe_of: dict[str, str] = {}

    def skip(det: Detector, exc: Exception) -> None:
        # Running every registered detector: one that cannot apply to this model (or these
        # tokens) is reported in the metadata, and warned about, not allowed to sink the rest.
        warnings.warn(f"headzoo skipped a detector. {exc}", stacklevel=3)
        skipped[det.name] = str(exc)
        selected.remove(det)

    patterned: list[PatternDetector] = []
    for det in list(selected):
        if isinstance(det, PatternDetector):
            try:
                bound = det.bind(model, info)
            except DetectorNotApplicableError as exc:
                if explicit:
                    raise
                skip(det, exc)
                continue
            if not isinstance(bound, type(det)):
                raise InvalidScoresError(f"{type(det).__name__}.bind must return a {type(det).__name__}; got {type(bound).__name__}")
            selected[selected.index(det)] = bound
            patterned.append(bound)

    for group, batches, source in _pattern_groups(model, info, patterned, tokens, cache, options, explicit, skip):
        scored_metrics, scored = _score_patterns(model, info, group, batches, source, progress)
        key = source.get("probe_name", source["kind"])
        probes_used[key] = {k: v for k, v in source.items() if k != "probe_name"}
        for det in group:
            probe_of[det.name] = key
            if not bool((scored[det.name] > 0).any()):
                exc = EmptyResultError(
                    f"{det.name}: no query in the {source.get('n_prompts', '?')} prompt(s) (lengths "
                    f"{source.get('lengths', '?')}) has a key this detector looks for ({det.description.rstrip('.')}), "
                    "so no head could be scored. Give longer prompts, or prompts with what the detector needs "
                    "(repeated tokens for induction and duplicate-token heads)."
                )
                if explicit:
                    raise exc
                skip(det, exc)
            else:
                metrics[det.name] = scored_metrics[det.name]
    if probes_used:
        source = probes_used.get("repeated_tokens", next(iter(probes_used.values())))
    else:
        source = {"kind": "weights"}
    circuits: WeightCircuits | None = None
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, pd.DataFrame] = {}
    for det in list(selected):
        if not isinstance(det, PatternDetector):
            # weight and causal detectors share one workspace (token samples, embeddings, and
            # measurements such as the name-mover sweep that several causal detectors build on)
            shares = isinstance(det, WeightDetector) or det.kind == "causal"
            if circuits is None and shares:
                circuits = WeightCircuits(model, progress=progress)
            try:
                output = det.compute(model, progress=progress, circuits=circuits if shares else None)
            except DetectorNotApplicableError as exc:
                if explicit:
                    raise
                skip(det, exc)
                continue
            if not isinstance(output, DetectorOutput):
                raise InvalidScoresError(f"{type(det).__name__}.compute must return hz.DetectorOutput; got {type(output).__name__}")
            _check_output(det, output.metrics, info, "compute()")
            metrics[det.name] = dict(output.metrics)
            if output.meta:
                results[det.name] = output.meta
            if output.details is not None:
                details[det.name] = output.details
        extra = det.weight_scores(model)
        _check_output(det, extra, info, "weight_scores()")
        metrics[det.name].update(extra)
    if not selected:
        raise DetectorNotApplicableError(f"no selected detector applies to this model: {skipped}")
    meta = {
        "format": "headzoo.HeadScores/1",
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        "detectors": {
            d.name: {
                **d.metadata(),
                **({"probe": probe_of[d.name]} if d.name in probe_of else {}),
                **({"result": results[d.name]} if d.name in results else {}),
            }
            for d in selected
        },
        "probe": source,
        "probes": probes_used,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if skipped:
        meta["skipped_detectors"] = skipped
    frame = _to_frame(metrics, selected)
    if baseline:
        frame, meta["baseline"] = _null_baseline(model, [d for d in chosen if d.name in metrics], tokens, n_null, frame, options)
    return HeadScores(frame, meta, details=details)


def _null_baseline(
    model: Any, detectors: list[Detector], tokens: Any, n_models: int, frame: pd.DataFrame, options: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score ``n_models`` randomly initialised copies of ``model`` with the same detectors,
    options and prompts, and add ``baseline_mean``, ``baseline_std`` and ``z`` to ``frame``."""
    nulls: list[pd.DataFrame] = []
    skipped: dict[str, str] = {}
    show = options.get("progress")
    for seed in tqdm(range(n_models), desc="headzoo baseline", unit="model", disable=not show, leave=False):
        twin = random_twin(model, seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a detector that cannot score a random model is recorded below
                null = run_detectors(twin, detectors, tokens=tokens, cache=None, explicit=False, **options)
        finally:
            del twin
        nulls.append(null.to_frame())
        skipped.update(null.meta.get("skipped_detectors", {}))
    meta = {
        "n_models": n_models,
        "seeds": list(range(n_models)),
        "init": init_scheme(model),
        "pooling": "per detector and layer, over heads and random models; z = (score - mean) / std",
        **({"not_scored_on_random_models": skipped} if skipped else {}),
    }
    return add_z_scores(frame, nulls), meta


def select_detectors(detectors: Any, options: dict[str, Any]) -> list[Detector]:
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
    known = probe_options() | _RUNNER_OPTIONS | set().union(*fields_of.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidOptionError(
            f"unknown option(s) {unknown} for detectors {names}. Valid options: {sorted(known)}."
        )
    selected = []
    for c in classes:
        mine = {k: v for k, v in options.items() if k in fields_of[c.name]}
        # dataclasses.fields above already required a dataclass, which the Detector ABC cannot say
        selected.append(dataclasses.replace(cast(Any, c), **mine) if isinstance(c, Detector) else c(**mine))
    return selected


def _pattern_groups(
    model: Any, info: ModelInfo, patterned: list[PatternDetector], tokens: Any, cache: Any,
    options: dict[str, Any], explicit: bool, skip: Any,
) -> Iterator[tuple[list[PatternDetector], Iterable[tuple[Padded, Any]], dict[str, Any]]]:
    """``(detectors, batches, source)`` per forward-pass group: the user's cache or tokens feed
    every pattern detector; otherwise detectors that name the same probe share its prompts."""
    if not patterned:
        return
    if cache is not None:
        batches, source = _cache_batches(model, info, cache, tokens, patterned)
        yield patterned, batches, source
        return
    if tokens is not None:
        batch_size = check_int(options.get("batch_size", RepeatedTokens.batch_size), "batch_size", minimum=1)
        token_batches, source = _user_batches(model, info, tokens, batch_size)
        yield patterned, ((t, None) for t in token_batches), source
        return
    by_probe: dict[str, list[PatternDetector]] = {}
    for det in patterned:
        by_probe.setdefault(det.probe, []).append(det)
    for name, group in by_probe.items():
        cls = PROBES.get(name)
        if cls is None:
            raise DetectorDefinitionError(
                f"{[d.name for d in group]} name the probe {name!r}, which is not registered; the probes are "
                f"{sorted(PROBES)}. Register it with headzoo._probes.register_probe."
            )
        fields = {f.name for f in dataclasses.fields(cast(Any, cls))}
        probe: Probe = cls(**{k: v for k, v in options.items() if k in fields})
        try:
            prompts = probe.prompts(model, info)
            source = probe.metadata(model, info)
        except DetectorNotApplicableError as exc:
            if explicit:
                raise
            for det in group:
                skip(det, DetectorNotApplicableError(f"{det.name}: its probe {name!r} cannot be built: {exc}"))
            continue
        if not prompts:
            raise EmptyResultError(f"the probe {name!r} produced no prompts for this model")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batches = [
            pad_right([prompts[i] for i in order[k : k + probe.batch_size]])
            for k in range(0, len(order), probe.batch_size)
        ]
        source = {**source, "probe_name": name, "n_prompts": len(prompts), "lengths": sorted({len(p) for p in prompts})}
        yield group, ((b, None) for b in batches), source


def _user_batches(model: Any, info: ModelInfo, tokens: Any, batch_size: int) -> tuple[list[Padded], dict]:
    """The user's prompts in batches of ``batch_size``: sorted by length so that a batch pads
    little, right-padded (exact under causal attention; pads are never scored)."""
    prompts = as_prompts(model, info, tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [pad_right([prompts[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)]
    lengths = sorted({len(p) for p in prompts})
    source = {"kind": "user_tokens", "n_prompts": len(prompts), "lengths": lengths, "batch_size": batch_size,
              "padding": "right" if any(b.ragged for b in batches) else "none"}
    return batches, source


#: a cached pattern row may miss 1 by this much (float32 softmax over long rows, saved caches)
_ROW_TOL = {torch.float32: 1e-3, torch.float64: 1e-6}
_LAYER0_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}


def _check_probabilities(layer: int, pattern: torch.Tensor) -> None:
    """Refuse a cached "pattern" that is not causal attention: rows of probabilities over keys
    at or before the query."""
    name = hook_name("pattern", layer)
    p = pattern.detach()
    if not bool(torch.isfinite(p).all()):
        raise NonFiniteError(f"the cache's {name} holds NaN or infinity; it cannot be attention. Recompute the cache.")
    tol = _ROW_TOL.get(p.dtype, 1e-2)
    seq = p.shape[-1]
    upper = torch.ones(seq, seq, dtype=torch.bool, device=p.device).triu(1)
    problems = []
    if float(p.min()) < -tol:
        problems.append(f"negative values (min {float(p.min()):.3g})")
    if bool((p.abs() * upper).amax() > tol):
        problems.append("attention to later positions")
    err = float((p.double().sum(-1) - 1).abs().max())
    if err > tol * max(1.0, seq / 64):
        problems.append(f"rows that do not sum to 1 (off by up to {err:.3g})")
    if problems:
        raise InvalidCacheError(
            f"the cache's {name} is not a causal attention pattern: it has {', '.join(problems)}. Pass the cache "
            "that model.run_with_cache(tokens) returned, unedited."
        )


def _cache_batches(model: Any, info: ModelInfo, cache: Any, tokens: Any, detectors: list[PatternDetector]) -> tuple[Any, dict]:
    names = [hook_name("pattern", layer) for layer in range(info.n_layers)]
    z_names = [hook_name("z", layer) for layer in range(info.n_layers)]
    wanted = names + (z_names if any(d.reads for d in detectors) else [])
    try:
        missing = [n for n in wanted if n not in cache]
    except TypeError:
        raise InvalidOptionError(f"cache must be an ActivationCache or dict; got {type(cache).__name__}") from None
    if missing:
        raise MissingHooksError(
            f"the cache lacks {len(missing)} hook(s) the pattern detectors need: {missing}. Make it "
            "with `_, cache = model.run_with_cache(tokens, names_filter=lambda name: "
            "name.endswith(('hook_pattern', 'hook_z')))` (or without names_filter to keep everything)."
        )

    def patterns(layer: int) -> torch.Tensor:
        p = cache[names[layer]]
        if not isinstance(p, torch.Tensor):
            raise InvalidCacheError(f"the cache's {names[layer]} is a {type(p).__name__}, not a tensor")
        return p if p.ndim == 4 else p.unsqueeze(0)

    def layer_acts(layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(wanted) == len(names):
            return patterns(layer), None
        z = cache[z_names[layer]]
        if not isinstance(z, torch.Tensor) or z.ndim not in (3, 4):
            raise InvalidCacheError(f"the cache's {z_names[layer]} is not a [batch, pos, head, d_head] tensor")
        if z.ndim == 3 and z.shape[-1] % info.n_heads == 0 and z.shape[-1] != info.d_head:
            z = z.unflatten(-1, (info.n_heads, -1))  # bridges cache it flattened: [batch, pos, head * d_head]
        z = z if z.ndim == 4 else z.unsqueeze(0)
        if tuple(z.shape[:3]) != (shape[0], shape[2], info.n_heads):
            raise InvalidCacheError(
                f"the cache's {z_names[layer]} has shape {tuple(z.shape)}; it must be [batch={shape[0]}, "
                f"pos={shape[2]}, head={info.n_heads}, d_head] like the patterns"
            )
        return patterns(layer), z

    shape = tuple(patterns(0).shape)
    for layer in range(info.n_layers):
        got = tuple(patterns(layer).shape)
        if len(got) != 4 or got[1] != info.n_heads or got[2] != got[3] or got != shape:
            raise InvalidCacheError(
                f"{names[layer]} in the cache has shape {tuple(cache[names[layer]].shape)}; this model needs "
                f"[batch, {info.n_heads}, pos, pos], the same in every layer (a cache of another model?)"
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
        prompts = as_prompts(model, info, tokens)
        if len({len(p) for p in prompts}) != 1:
            raise InvalidTokensError("with a cache, tokens must be one [batch, pos] block, as given to run_with_cache")
        ids = torch.stack(prompts)
        if (ids.shape[0], ids.shape[1]) != (shape[0], shape[2]):
            raise InvalidTokensError(
                f"tokens have shape {tuple(ids.shape)} but the cache holds patterns for "
                f"[batch={shape[0]}, pos={shape[2]}]; pass the tokens the cache was made from"
            )
        _check_cache_belongs(model, info, ids, patterns(0))
    source = {"kind": "user_cache", "n_prompts": int(shape[0]), "lengths": [int(shape[2])], "verified": tokens is not None}
    return iter([(pad_right(list(ids)), layer_acts)]), source


def _check_cache_belongs(model: Any, info: ModelInfo, ids: torch.Tensor, cached0: torch.Tensor) -> None:
    """Recompute layer 0's pattern for a few prompts (a fraction of one forward) and compare:
    a cache made from other tokens, or by another model, differs there."""
    n = min(4, ids.shape[0])
    got: dict[str, torch.Tensor] = {}
    name = hook_name("pattern", 0)
    with torch.no_grad():
        run(model, ids[:n].to(info.device), read={name: lambda p: got.__setitem__("p", p.detach())}, stop_after=name)
    mine, theirs = got["p"].double().cpu(), cached0[:n].detach().double().cpu()
    tol = _LAYER0_TOL.get(cached0.dtype, 1e-2)
    diff = float((mine - theirs).abs().max())
    if diff > tol:
        raise InvalidCacheError(
            f"the cache does not belong to these tokens and this model: layer 0's attention recomputed from the "
            f"tokens differs from the cached one by up to {diff:.3g}. Pass the tokens and the model the cache was "
            "made with: _, cache = model.run_with_cache(tokens)."
        )


def _groups(batch: Padded) -> list[tuple[torch.Tensor, int]]:
    """Rows of a padded batch that share a length: ``[(row indices, length)]``."""
    if not batch.ragged:
        return [(torch.arange(batch.ids.shape[0]), batch.ids.shape[1])]
    return [(torch.nonzero(batch.lengths == n).flatten(), int(n)) for n in torch.unique(batch.lengths).tolist()]


def _check_reduced(det: PatternDetector, metric: str, values: Any, valid: Any, batch: int, n_heads: int) -> None:
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (batch, n_heads):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InvalidScoresError(
            f"{det.name}.reduce returned {metric!r} values of shape {got}; it must be [batch={batch}, head={n_heads}]"
        )
    if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (batch,):
        got = tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__
        raise InvalidScoresError(f"{det.name}.reduce returned {metric!r} validity of shape {got}; it must be [batch={batch}]")


def _score_patterns(
    model: Any, info: ModelInfo, detectors: list[PatternDetector], batches: Iterable[tuple[Padded, Any]],
    source: dict, progress: bool | None,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Every detector's metrics ``[layer, head]`` (NaN where nothing was scored) and the number
    of prompts each layer's ``score`` counted, per detector ``[layer]``."""
    sums: dict[tuple[str, str], torch.Tensor] = {}
    counts: dict[tuple[str, str], torch.Tensor] = {}
    n_layers, n_heads = info.n_layers, info.n_heads

    needs_z = any(d.reads for d in detectors)
    grams: dict[int, torch.Tensor] = {}

    def out_norm(layer: int, z: torch.Tensor) -> torch.Tensor:
        """``[batch, head, query]`` norms of ``z @ W_O`` per head, through the ``d_head x d_head``
        Gram matrix ``W_O W_O^T`` so no ``[batch, head, query, d_model]`` tensor is formed."""
        if layer not in grams:
            w_o = head_weights(model, "O", layer).float()  # [head, d_head, d_model]
            grams[layer] = torch.einsum("hdm,hem->hde", w_o, w_o).to(z.device)
        zf = z.detach().float()
        if zf.ndim == 3:  # bridges hand the attention output before W_O flattened: [batch, pos, head * d_head]
            zf = zf.unflatten(-1, (n_heads, -1))
        return torch.einsum("bqhd,hde,bqhe->bhq", zf, grams[layer], zf).clamp_min(0).sqrt()

    def accumulate(
        layer: int, pattern: torch.Tensor, groups: list[tuple[torch.Tensor, int, dict[str, torch.Tensor]]],
        z: torch.Tensor | None = None,
    ) -> None:
        if pattern.ndim != 4 or pattern.shape[1] != n_heads or pattern.shape[-1] != pattern.shape[-2]:
            raise UnsupportedModelError(
                f"{hook_name('pattern', layer)} has shape {tuple(pattern.shape)}; headzoo needs "
                f"[batch, {n_heads}, pos, pos] attention patterns"
            )
        p = pattern.detach().float()
        norms = out_norm(layer, z) if needs_z and z is not None else None
        for rows, length, matches in groups:
            # pads sit after each row's real tokens: crop them away, so no detector ever sees one
            whole = length == p.shape[-1] and len(rows) == p.shape[0]
            part = p if whole else p[rows.to(p.device)][:, :, :length, :length]
            extras: dict[str, torch.Tensor] = {}
            if norms is not None:
                extras["out_norm"] = norms if whole else norms[rows.to(norms.device)][:, :, :length]
            for det in detectors:
                kwargs = {k: v for k, v in extras.items() if k in det.reads}
                for metric, (values, valid) in det.reduce(part, matches[det.name], **kwargs).items():
                    _check_reduced(det, metric, values, valid, part.shape[0], n_heads)
                    key = (det.name, metric)
                    if key not in sums:
                        sums[key] = torch.zeros(n_layers, n_heads, dtype=torch.float64)
                        counts[key] = torch.zeros(n_layers, dtype=torch.float64)
                    v = valid.to(device=values.device, dtype=torch.bool)
                    sums[key][layer] += (values.double() * v[:, None]).sum(0).cpu()
                    counts[key][layer] += v.sum().double().cpu()

    n_total = source.get("n_prompts")
    show = progress if progress is not None else bool(n_total and n_total > 8)
    bar = tqdm(total=n_total, desc="headzoo detect", unit="prompt", disable=not show, leave=False)
    device = torch.device(info.device)
    try:
        with torch.no_grad():
            for batch, cached in batches:
                ids_dev = batch.ids.to(device)
                groups = []
                for rows, length in _groups(batch):
                    sub = ids_dev[rows.to(device), :length]
                    groups.append((rows, length, {d.name: d.match(sub) for d in detectors}))
                if cached is not None:
                    for layer in range(n_layers):
                        pattern, z = cached(layer)
                        _check_probabilities(layer, pattern)
                        accumulate(layer, pattern.to(device), groups, None if z is None else z.to(device))
                else:
                    read_patterns(
                        model, info, ids_dev, lambda layer, p, z=None, groups=groups: accumulate(layer, p, groups, z),
                        with_z=needs_z,
                    )
                bar.update(batch.ids.shape[0])
    finally:
        bar.close()
    out: dict[str, dict[str, torch.Tensor]] = {d.name: {} for d in detectors}
    scored: dict[str, torch.Tensor] = {d.name: torch.zeros(n_layers, dtype=torch.float64) for d in detectors}
    for (name, metric), total in sums.items():
        n = counts[(name, metric)][:, None].expand_as(total)
        value = torch.where(n > 0, total / n.clamp_min(1), torch.nan)
        bad = (n > 0) & ~torch.isfinite(value)
        if bool(bad.any()):
            heads = [(int(a), int(b)) for a, b in torch.nonzero(bad).tolist()]
            raise NonFiniteError(
                f"{name}: the {metric!r} of head(s) {heads[:8]} (layer, head) is NaN or infinite: the model's "
                "attention overflowed or the detector divided by zero. Run in float32, or check the detector."
            )
        out[name][metric] = value
        if metric == "score":
            scored[name] = counts[(name, metric)]
    return out, scored


def read_patterns(model: Any, info: ModelInfo, tokens: torch.Tensor, reduce: Any, *, with_z: bool = False) -> None:
    """Run ``model`` on ``tokens``, handing each layer's pattern to ``reduce(layer, pattern)``
    (``reduce(layer, pattern, z)`` with ``with_z``: ``z`` is ``hook_z``, ``[batch, pos, head, d_head]``).

    The pass stops right after the last attention layer (with ``with_z``: at the unembedding's
    input); no logits are computed.
    """
    if not with_z:
        def hand(layer: int) -> Any:
            return lambda pattern: reduce(layer, pattern)

        names = {hook_name("pattern", layer): hand(layer) for layer in range(info.n_layers)}
        run(model, tokens, read=names, stop_after=hook_name("pattern", info.n_layers - 1))
        return
    # A layer's pattern and z arrive in either order (a HookedTransformer fires hook_pattern
    # first; some TransformerLens 3.x bridges apply it to the weights the attention module
    # returns, after hook_z): reduce when both are in.
    held: dict[int, dict[str, torch.Tensor]] = {}

    def keep(layer: int, kind: str) -> Any:
        def hold(act: torch.Tensor) -> None:
            got = held.setdefault(layer, {})
            got[kind] = act
            if len(got) == 2:
                del held[layer]
                reduce(layer, got["pattern"], got["z"])

        return hold

    names = {hook_name("pattern", layer): keep(layer, "pattern") for layer in range(info.n_layers)}
    names.update({hook_name("z", layer): keep(layer, "z") for layer in range(info.n_layers)})
    # no stop_after: which of the last layer's two hooks fires last depends on the model class,
    # so the pass runs to the unembedding's input (one more MLP, never the logits)
    run(model, tokens, read=names, logits=None)


def _check_output(det: Detector, metrics: dict[str, Any], info: ModelInfo, what: str) -> None:
    for metric, values in metrics.items():
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (info.n_layers, info.n_heads):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise InvalidScoresError(
                f"{det.name}.{what} returned {metric!r} of shape {got}; every metric must be "
                f"[n_layers={info.n_layers}, n_heads={info.n_heads}] (NaN marks a head not scored)"
            )
        if bool(torch.isinf(values).any()):
            raise NonFiniteError(f"{det.name}.{what} returned infinite {metric!r} values; use NaN for a head not scored")


def _to_frame(metrics: dict[str, dict[str, torch.Tensor]], detectors: list[Detector]) -> pd.DataFrame:
    frames = []
    for det in detectors:
        m = metrics.get(det.name, {})
        if "score" not in m:
            raise InvalidScoresError(f"detector {det.name} produced no 'score' metric")
        score = m["score"].double().cpu()
        layers, heads = torch.nonzero(~torch.isnan(score), as_tuple=True)
        df = pd.DataFrame({"detector": det.name, "layer": layers.numpy().astype("int64"), "head": heads.numpy().astype("int64")})
        for metric, values in m.items():
            df[metric] = values.double().cpu()[layers, heads].numpy()
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    base = ["detector", "layer", "head", "score"]
    return cast(pd.DataFrame, frame[base + sorted(c for c in frame.columns if c not in base)])
