"""A conformance suite for detectors: the rules every detector must keep, checked on real models.

Like scikit-learn's ``check_estimator``, :func:`check_detector` is what a plugin author runs on
their own detector, and what headzoo's tests run over every registered one. It checks the
contract the runner, the results and the atlas already rely on (the one addition is optional: a
class may declare ``score_range = (low, high)``, and its scores must then lie inside): the declared fields, a ``[n_layers, n_heads]`` score (on two model shapes, so a transposed
answer cannot pass), finite numbers, scores that do not depend on batching, no mutation of the
model, the tokens or the detector, no hooks left behind (also when a forward pass fails), the
metadata a result records, and determinism. The first broken rule raises
:class:`hz.ConformanceError`, whose message starts with the rule's name and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import re
import tempfile
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch

from headzoo._circuits import WeightCircuits
from headzoo._detector import Detector, DetectorOutput, PatternDetector, WeightDetector
from headzoo._errors import (
    ConformanceError,
    DetectorNotApplicableError,
    HeadzooError,
    InvalidOptionError,
    UnsupportedTokenizerError,
)
from headzoo._models import model_info
from headzoo._probes import PROBES
from headzoo._registry import (
    _REGISTRY,
    detector_class,
    list_detectors,
    registered_names,
)
from headzoo._results import HeadScores
from headzoo._runner import detect

__all__ = ["RULES", "ConformanceReport", "RuleResult", "check_detector"]

#: every rule, in the order it is checked
RULES: tuple[str, ...] = (
    "declared_fields",
    "score_shape",
    "scores_finite",
    "batch_size_invariance",
    "no_mutation",
    "hooks_removed",
    "metadata_contract",
    "determinism",
)

_DECLARED = ("name", "description", "reference", "variant", "threshold", "kind")
_META_KEYS = ("name", "kind", "variant", "reference", "threshold", "options")
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_PROBE_FIELDS = {f.name for cls in PROBES.values() for f in dataclasses.fields(cast(Any, cls))}
#: probe options of the conformance runs: few prompts (fast), more than one batch's worth
_PROBE_DEFAULTS = {"n_prompts": 4, "batch_size": 4}
_ATOL = 1e-6

#: a word vocabulary with one ordinal list (the days, as successor heads need) and filler words;
#: 14 words + BOS + UNK = 16 ids = d_head // 2, so the planted token codes are exactly orthogonal
#: and the model builds in well under a second
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WORDS = (*_DAYS, "apple", "river", "stone", "cloud", "ember", "maple", "tiger")
#: (n_layers, n_heads) of the default models: not square, and transposes of each other
_SHAPES = ((2, 3), (3, 2))


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """One rule's outcome: ``status`` is ``"passed"`` or ``"skipped"`` (with the reason)."""

    rule: str
    status: Literal["passed", "skipped"]
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ConformanceReport:
    """What :func:`check_detector` checked. A broken rule raises instead of being reported.

    Attributes:
        detector: the detector's name.
        results: one :class:`RuleResult` per rule, in :data:`RULES` order.
        models: the models the detector ran on, as ``"name (n_layers x n_heads)"``.
    """

    detector: str
    results: tuple[RuleResult, ...]
    models: tuple[str, ...]

    @property
    def passed(self) -> list[str]:
        """Names of the rules that were checked and held."""
        return [r.rule for r in self.results if r.status == "passed"]

    @property
    def skipped(self) -> dict[str, str]:
        """``{rule: reason}`` for the rules that could not apply or were not asked for."""
        return {r.rule: r.detail for r in self.results if r.status == "skipped"}

    def to_frame(self) -> pd.DataFrame:
        """One row per rule: ``rule, status, detail``."""
        return pd.DataFrame([dataclasses.asdict(r) for r in self.results], columns=["rule", "status", "detail"])

    def __repr__(self) -> str:
        head = (f"ConformanceReport({self.detector!r}: {len(self.passed)} passed, {len(self.skipped)} skipped; "
                f"models: {', '.join(self.models)})")
        lines = [head]
        for r in self.results:
            lines.append(f"  {r.status:7s} {r.rule}" + (f": {r.detail}" if r.detail else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(r.rule)}</td><td>{esc(r.status)}</td><td>{esc(r.detail)}</td></tr>" for r in self.results
        )
        return (
            f"<div><b>{esc(self.detector)}</b>: {len(self.passed)} rules passed, {len(self.skipped)} skipped "
            f"(models: {esc(', '.join(self.models))})<table><tr><th>rule</th><th>status</th><th>detail</th></tr>"
            f"{rows}</table></div>"
        )


class _InjectedFailure(RuntimeError):
    """Raised from inside a forward pass by the ``hooks_removed`` check."""


def _fail(rule: str, message: str) -> typing.NoReturn:
    raise ConformanceError(f"{rule}: {message}")


# -- the default models ----------------------------------------------------------------------

_MODELS: dict[tuple[Any, ...], tuple[Any, dict[str, str], dict[str, tuple[Any, ...]]]] = {}


def _warm_up(model: Any) -> None:
    """One short forward pass. A TransformerBridge wires its own capture hooks on the first
    forward and keeps them; after this, any hook that appears is one a detector left."""
    info = model_info(model)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long, device=info.device))


def _default_model(n_layers: int, n_heads: int, tokenizer: Literal["word", "bpe"] = "word") -> Any:
    """A planted model with previous-token and induction heads and a word tokenizer that spells
    the days of the week (so the built-in ordinal lists apply).

    Built once per shape and reused; :func:`check_detector` drops it again if a detector
    changed its weights or left hooks on it. (No planted successor head: it writes into the
    subspace the unembedding reads and would drown the induction head's copying, which the
    retrieval detector needs to see needles retrieved.)

    With ``tokenizer="bpe"`` the model reads a byte-level BPE tokenizer trained on the shipped
    text instead (``headzoo.testing.bpe_tokenizer(300)``): the default for tokenizer-aware
    detectors that cannot use a whole-word vocabulary (their ``bind`` raises
    ``hz.UnsupportedTokenizerError`` on the word model).
    """
    key: tuple[Any, ...] = (n_layers, n_heads) if tokenizer == "word" else (n_layers, n_heads, tokenizer)
    if key not in _MODELS:
        from headzoo.testing._planted import PlantSpec, planted_model
        from headzoo.testing._tokenizer import word_tokenizer

        spec = PlantSpec(
            n_layers=n_layers, n_heads=n_heads, d_head=32, d_vocab=len(_WORDS) + 2, n_ctx=32,
            previous_token=(0, 0), induction=(1, 1), seed=0,
        )
        if tokenizer == "word":
            model = planted_model(spec, tokenizer=word_tokenizer(list(_WORDS)), name=f"conformance-{n_layers}x{n_heads}")
        else:
            from headzoo.testing._tokenizer import bpe_tokenizer

            tok = bpe_tokenizer(300)
            spec = dataclasses.replace(spec, d_vocab=len(tok))
            model = planted_model(spec, tokenizer=tok, name=f"conformance-{tokenizer}-{n_layers}x{n_heads}")
        _warm_up(model)
        _MODELS[key] = (model, _model_digest(model), _hook_state(model, with_global=False))
    return _MODELS[key][0]


def _release_default_models() -> None:
    """Forget cached default models a detector changed, so the next check starts clean."""
    for key, (model, digest, hooks) in list(_MODELS.items()):
        if _model_digest(model) != digest or _hook_state(model, with_global=False) != hooks:
            del _MODELS[key]


# -- snapshots -------------------------------------------------------------------------------

def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach()
    if t.is_meta:
        return f"meta{tuple(t.shape)}"
    flat = t.cpu().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return f"{t.dtype}{tuple(t.shape)}{t.device}{t.requires_grad}" + hashlib.blake2b(data, digest_size=16).hexdigest()


def _model_digest(model: Any) -> dict[str, str]:
    """``{name: digest}`` of every parameter and buffer (bytes, dtype, shape, device, grad flag)."""
    out = {f"param {n}": _tensor_digest(p) for n, p in model.named_parameters()}
    out.update({f"buffer {n}": _tensor_digest(b) for n, b in model.named_buffers()})
    out["training"] = str(model.training)
    return out


def _detector_state(det: Detector) -> dict[str, str]:
    state = {k: repr(v) for k, v in getattr(det, "__dict__", {}).items()}
    for f in dataclasses.fields(det):  # type: ignore[arg-type]
        state.setdefault(f.name, repr(getattr(det, f.name, None)))
    return state


_TORCH_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hook_state(model: Any, *, with_global: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every hook on the model: torch hooks on each module, TransformerLens' own registries.

    Returns only the places that hold hooks, so an unhooked model gives ``{}``.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for name, module in model.named_modules():
        for attr in _TORCH_HOOKS:
            keys = tuple(getattr(module, attr, {}) or ())
            if keys:
                out[f"{name or '<model>'} {attr.strip('_').replace('_', ' ')}"] = keys
        for attr in ("fwd_hooks", "bwd_hooks"):  # TransformerLens HookPoint.add_hook
            hooks = getattr(module, attr, None)
            if isinstance(hooks, list) and hooks:
                out[f"{name} TransformerLens {attr}"] = tuple(id(h) for h in hooks)
    if with_global:
        from torch.nn.modules import module as torch_module

        for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks"):
            keys = tuple(getattr(torch_module, attr, {}) or ())
            if keys:
                out[f"torch global {attr.strip('_').replace('_', ' ')}"] = keys
    return out


def _hook_diff(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    diffs = []
    for place in sorted(set(before) | set(after)):
        b, a = before.get(place, ()), after.get(place, ())
        added, removed = [k for k in a if k not in b], [k for k in b if k not in a]
        if added:
            diffs.append(f"{len(added)} left on {place}")
        if removed:
            diffs.append(f"{len(removed)} of the user's removed from {place}")
    return diffs


class _Guard:
    """Checks after every run that the model and detector are unchanged and no hooks remain."""

    def __init__(self, det: Detector, models: Sequence[Any], checks: set[str]) -> None:
        self.det, self.models, self.checks = det, list(models), checks
        self.digests = [_model_digest(m) for m in self.models]
        self.hooks = [_hook_state(m) for m in self.models]
        self.state = _detector_state(det)

    def check(self, what: str) -> None:
        if "no_mutation" in self.checks:
            for i, model in enumerate(self.models):
                now = _model_digest(model)
                changed = [k for k in self.digests[i] if now.get(k) != self.digests[i][k]]
                changed += [k for k in now if k not in self.digests[i]]
                if changed:
                    _fail("no_mutation", (
                        f"after {what}, the model changed: {', '.join(changed[:5])}"
                        f"{' ...' if len(changed) > 5 else ''}. A detector must never write into the model "
                        "(weights, buffers, requires_grad, train/eval mode): compute on copies, e.g. "
                        "`w = model.W_Q.detach().clone()`, and never call .train() or in-place ops on parameters."
                    ))
            now_state = _detector_state(self.det)
            if now_state != self.state:
                keys = sorted(k for k in set(now_state) | set(self.state) if now_state.get(k) != self.state.get(k))
                _fail("no_mutation", (
                    f"after {what}, the detector instance changed ({', '.join(keys)}: "
                    f"{self.state.get(keys[0])} -> {now_state.get(keys[0])}). Detectors are frozen: "
                    "keep no state on the instance (no object.__setattr__ outside __post_init__); "
                    "return what you computed instead."
                ))
        if "hooks_removed" in self.checks:
            for i, model in enumerate(self.models):
                diffs = _hook_diff(self.hooks[i], _hook_state(model))
                if diffs:
                    _fail("hooks_removed", (
                        f"after {what}, hooks were not cleaned up: {'; '.join(diffs[:5])}. Remove every "
                        "hook you add, also when the forward pass raises: keep the handles of "
                        "register_forward_hook and call handle.remove() in a `finally:` block, or use "
                        "`with model.hooks(fwd_hooks=...)`; never remove hooks you did not add."
                    ))


# -- helpers ---------------------------------------------------------------------------------

def _strict_json(value: Any) -> str | None:
    """``None`` when ``value`` is JSON-ready, else why not."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _shape(x: Any) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _describe(model: Any) -> str:
    info = model_info(model)
    return f"{info.name or info.model_class} ({info.n_layers} x {info.n_heads})"


def _heads(frame: Any, limit: int = 3) -> list[list[int]]:
    """The first ``limit`` (layer, head) pairs of ``frame``, for messages."""
    return frame[["layer", "head"]].to_numpy()[:limit].tolist()


def _frame_of(scores: HeadScores, name: str) -> pd.DataFrame:
    frame = scores.to_frame()
    return typing.cast(pd.DataFrame, frame.loc[frame["detector"] == name]).reset_index(drop=True)


def _compare_frames(a: pd.DataFrame, b: pd.DataFrame, atol: float) -> str | None:
    """``None`` when both hold the same heads and metrics (to ``atol``), else the first difference."""
    key = ["layer", "head"]
    heads_a = set(map(tuple, a[key].to_numpy().tolist()))
    heads_b = set(map(tuple, b[key].to_numpy().tolist()))
    if heads_a != heads_b:
        return f"scored heads differ: {sorted(heads_a ^ heads_b)[:5]}"
    if set(a.columns) != set(b.columns):
        return f"metrics differ: {sorted(set(a.columns) ^ set(b.columns))}"
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    for col in a.columns:
        if col in ("detector", "layer", "head"):
            continue
        x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
        same_nan = np.isnan(x) == np.isnan(y)
        close = np.isclose(x, y, rtol=0.0, atol=atol, equal_nan=True) if atol else (x == y) | (np.isnan(x) & np.isnan(y))
        bad = ~(same_nan & close)
        if bad.any():
            i = int(np.argmax(bad))
            return (f"{col} of layer {a['layer'][i]} head {a['head'][i]}: {x[i]!r} vs {y[i]!r} "
                    f"(max difference {np.nanmax(np.abs(x - y)):.3g})")
    return None


def _non_default(det: Detector) -> tuple[Detector | None, dict[str, Any]]:
    """The detector with every bool option flipped and every Literal option moved to another
    allowed value (each change kept only if the detector accepts it)."""
    hints = typing.get_type_hints(type(det))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(det):  # type: ignore[arg-type]
        if not f.init:
            continue
        current = getattr(det, f.name)
        hint = hints.get(f.name)
        if isinstance(current, bool):
            candidate: Any = not current
        elif typing.get_origin(hint) is Literal:
            others = [v for v in typing.get_args(hint) if v != current]
            if not others:
                continue
            candidate = others[0]
        else:
            continue
        try:
            dataclasses.replace(det, **changes, **{f.name: candidate})  # type: ignore[type-var]
        except (HeadzooError, TypeError, ValueError):
            continue
        changes[f.name] = candidate
    if not changes:
        return None, {}
    return dataclasses.replace(det, **changes), changes  # type: ignore[type-var]


def _probe_tokens(model: Any, probe: dict[str, Any], name: str = "repeated_tokens") -> torch.Tensor:
    """The first batch ``[batch, pos]`` of the named probe (prompts cut to the shortest one)."""
    info = model_info(model)
    cls = PROBES[name]
    fields = {f.name for f in dataclasses.fields(cast(Any, cls))}
    inst = cls(**{k: v for k, v in probe.items() if k in fields})
    prompts = inst.prompts(model, info)[: inst.batch_size]
    n = min(len(p) for p in prompts)
    return torch.stack([p[:n] for p in prompts])


def _random_patterns(batch: int, n_heads: int, seq: int, seed: int) -> torch.Tensor:
    """Causal attention patterns ``[batch, head, query, key]`` (rows sum to one)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n_heads, seq, seq, generator=g)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


# -- the rules -------------------------------------------------------------------------------

def _check_declared(cls: type) -> None:
    """The class half of ``declared_fields`` (it also constructs the default instance)."""
    rule = "declared_fields"
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        _fail(rule, f"{cls!r} is not a subclass of hz.Detector; subclass hz.PatternDetector, "
                    "hz.PositionalDetector, hz.WeightDetector or hz.Detector.")
    label = cls.__qualname__
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__dataclass_fields__" not in cls.__dict__:
        _fail(rule, f"{label} must itself be decorated with @dataclasses.dataclass(frozen=True), so its "
                    "options are declared fields and an instance cannot be changed.")
    if getattr(cls, "__abstractmethods__", None):
        _fail(rule, f"{label} does not implement {sorted(cls.__abstractmethods__)}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for attr in _DECLARED:
        if attr in fields:
            _fail(rule, f"{label}.{attr} is a dataclass field (an option); declare it as a plain class "
                        f"attribute without a type annotation: `{attr} = ...`.")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _SNAKE.match(name):
        _fail(rule, f"{label}.name must be a snake_case string such as 'skip_one'; got {name!r}.")
    description = getattr(cls, "description", None)
    if not isinstance(description, str) or not description.strip():
        _fail(rule, f"{name}: declare `description`, one line saying what a high score means; got {description!r}.")
    for attr in ("reference", "variant"):
        value = getattr(cls, attr, None)
        if not isinstance(value, str):
            _fail(rule, f"{name}: `{attr}` must be a string; got {type(value).__name__} {value!r}.")
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        _fail(rule, f"{name}: declare `kind`, a non-empty string such as 'decoding'; got {kind!r}.")
    expected = "pattern" if issubclass(cls, PatternDetector) else "weights" if issubclass(cls, WeightDetector) else None
    if expected is not None and kind != expected:
        _fail(rule, f"{name}: kind is {kind!r} but a {'PatternDetector' if expected == 'pattern' else 'WeightDetector'} "
                    f"is of kind {expected!r}; remove the `kind = ...` line.")
    if expected is None and kind in ("pattern", "weights"):
        _fail(rule, f"{name}: kind {kind!r} belongs to {'hz.PatternDetector' if kind == 'pattern' else 'hz.WeightDetector'}; "
                    "subclass it, or name your detector's own kind (e.g. 'decoding').")
    threshold = getattr(cls, "threshold", None)
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
    ):
        _fail(rule, f"{name}: threshold must be None or a finite number; got {threshold!r}.")
    score_range = getattr(cls, "score_range", None)
    if score_range is not None:
        ok = (isinstance(score_range, tuple) and len(score_range) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in score_range)
              and score_range[0] < score_range[1])
        if not ok:
            _fail(rule, f"{name}: score_range must be a (low, high) tuple of finite numbers with low < high; got {score_range!r}.")
    if issubclass(cls, PatternDetector) and not isinstance(getattr(cls, "needs_tokens", None), bool):
        _fail(rule, f"{name}: needs_tokens must be True or False; got {getattr(cls, 'needs_tokens', None)!r}.")
    for f in fields.values():
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(rule, f"{name}: option {f.name!r} has no default; every option needs one, so that "
                        f"hz.detect(model, {name!r}) works without arguments.")
    try:
        a, b = cls(), cls()
    except Exception as exc:
        _fail(rule, f"{name}: {label}() raised {type(exc).__name__}: {exc}. A detector must construct "
                    "with no arguments (every option has a valid default).")
    _check_instance(a, "the default instance")
    if a != b or hash(a) != hash(b):
        _fail(rule, f"{name}: {label}() == {label}() must hold, with equal hashes.")


def _check_instance(inst: Detector, label: str) -> None:
    """The instance half of ``declared_fields``: no hidden state, JSON-ready, hashable."""
    rule, name = "declared_fields", type(inst).name
    fields = {f.name for f in dataclasses.fields(inst)}  # type: ignore[arg-type]
    extra = sorted(set(getattr(inst, "__dict__", {})) - fields)
    if extra:
        _fail(rule, f"{name}: {label} holds attributes that are not dataclass fields: {extra}. "
                    "Declare every option as a field with a default; keep no other state on the instance.")
    for what, call in (("options()", inst.options), ("metadata()", inst.metadata)):
        try:
            value = call()
        except Exception as exc:
            _fail(rule, f"{name}: {what} of {label} raised {type(exc).__name__}: {exc}.")
        problem = _strict_json(value)
        if problem is not None:
            _fail(rule, f"{name}: {what} of {label} is not JSON-serialisable ({problem}); results save "
                        "it as JSON. Override options() to return plain values (see detectors/successor.py).")
    try:
        twin = dataclasses.replace(inst)  # type: ignore[type-var]
        same_hash = hash(twin) == hash(inst)
    except Exception as exc:
        _fail(rule, f"{name}: {label} cannot be copied and hashed ({type(exc).__name__}: {exc}); "
                    "use hashable option values (tuples, not lists or dicts) and keep eq=True, frozen=True.")
    if twin != inst or not same_hash:
        _fail(rule, f"{name}: two instances with equal options must compare equal and hash equal; "
                    "do not override __eq__ or __hash__.")


def _check_direct(rule_checks: set[str], det: Detector, model: Any, probe: dict[str, Any], guard: _Guard) -> Any:
    """Call the detector's own functions on ``model`` and check their shapes and numbers.

    Returns the :class:`DetectorOutput` of a non-pattern detector's ``compute`` (``None`` for
    pattern detectors, whose score only exists once the runner has averaged ``reduce``).
    """
    info = model_info(model)
    L, H = info.n_layers, info.n_heads
    where = f"on {_describe(model)}"
    name = det.name
    direct = None
    shape_on = "score_shape" in rule_checks
    if isinstance(det, PatternDetector):
        try:
            det = det.bind(model, info)
        except Exception as exc:
            _fail("score_shape", f"{name}.bind(model, info) raised {type(exc).__name__}: {exc} {where}.")
        tokens = _probe_tokens(model, probe, det.probe).to(info.device)
        batch, seq = tokens.shape
        before = tokens.clone()
        try:
            match = det.match(tokens)
        except Exception as exc:
            _fail("score_shape", f"{name}.match(tokens [{batch}, {seq}]) raised {type(exc).__name__}: {exc}.")
        if "no_mutation" in rule_checks and not torch.equal(tokens, before):
            _fail("no_mutation", f"{name}.match() wrote into the tokens it was given; build new tensors instead "
                                 "(e.g. `tokens.clone()` before changing anything).")
        if shape_on:
            if not isinstance(match, torch.Tensor) or match.dtype != torch.bool or tuple(match.shape) != (batch, seq, seq):
                got = f"{_shape(match)} {getattr(match, 'dtype', '')}".strip()
                _fail("score_shape", f"{name}.match(tokens [{batch}, {seq}]) must return a bool tensor "
                                     f"[batch, query, key] = [{batch}, {seq}, {seq}]; got {got}.")
            above = torch.ones(seq, seq, dtype=torch.bool, device=match.device).triu(1)
            if (match & above).any():
                q, k = (int(i) for i in torch.nonzero(match & above)[0, 1:])
                _fail("score_shape", f"{name}.match() marks key {k} for query {q}, above the diagonal: a causal "
                                     "head cannot attend to later keys. Only mark keys k <= q (e.g. `& "
                                     "torch.ones(seq, seq, dtype=torch.bool).tril()`).")
        pattern = _random_patterns(batch, H, seq, seed=1).to(info.device)
        pattern_before = pattern.clone()
        match_before = match.clone() if isinstance(match, torch.Tensor) else match
        extras = {}
        if "out_norm" in det.reads:
            extras["out_norm"] = torch.rand(batch, H, seq, generator=torch.Generator().manual_seed(2)).to(info.device)
        try:
            metrics = det.reduce(pattern, match, **extras)
        except Exception as exc:
            _fail("score_shape", f"{name}.reduce(pattern [{batch}, {H}, {seq}, {seq}], match) raised "
                                 f"{type(exc).__name__}: {exc}.")
        changed_match = isinstance(match, torch.Tensor) and not torch.equal(match, match_before)
        if "no_mutation" in rule_checks and (changed_match or not torch.equal(pattern, pattern_before)):
            _fail("no_mutation", f"{name}.reduce() wrote into the pattern or match it was given; the runner "
                                 "hands the same pattern to every detector. Never use in-place ops on them.")
        if shape_on:
            if not isinstance(metrics, dict) or "score" not in metrics:
                _fail("score_shape", f"{name}.reduce() must return a dict with a 'score' entry "
                                     f"({{metric: (values [batch, head], valid [batch])}}); got {type(metrics).__name__} "
                                     f"{sorted(metrics) if isinstance(metrics, dict) else ''}.")
            for metric, pair in metrics.items():
                if not (isinstance(pair, tuple) and len(pair) == 2):
                    _fail("score_shape", f"{name}.reduce()[{metric!r}] must be a (values [batch, head], valid [batch]) "
                                         f"pair; got {type(pair).__name__}.")
                values, valid = pair
                if not isinstance(values, torch.Tensor) or tuple(values.shape) != (batch, H) or not values.is_floating_point():
                    _fail("score_shape", f"{name}.reduce()[{metric!r}] values must be a float tensor [batch, head] "
                                         f"= [{batch}, {H}] {where}; got {_shape(values)}. Reduce over queries and keys "
                                         "only, keeping the batch and head axes.")
                if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (batch,):
                    _fail("score_shape", f"{name}.reduce()[{metric!r}] validity must be a bool tensor [batch] = "
                                         f"[{batch}]; got {_shape(valid)} {getattr(valid, 'dtype', '')}.")
        if "scores_finite" in rule_checks and isinstance(metrics, dict):
            for metric, (values, _valid) in metrics.items():
                if isinstance(values, torch.Tensor) and not torch.isfinite(values).all():
                    _fail("scores_finite", f"{name}.reduce()[{metric!r}] holds non-finite values {where} "
                                           f"({values[~torch.isfinite(values)][:3].tolist()}). Every value must be "
                                           "finite, also for prompts marked invalid (the runner multiplies by the "
                                           "validity, and NaN * 0 is NaN): clamp denominators, e.g. "
                                           "`.clamp_min(1e-12)`, and return valid=False for prompts with nothing to score.")
        guard.check(f"{name}.match() and reduce() {where}")
    else:
        circuits = WeightCircuits(model, progress=False) if isinstance(det, WeightDetector) else None
        try:
            output = det.compute(model, progress=False, circuits=circuits)
        except DetectorNotApplicableError as exc:
            _fail("score_shape", f"{name} does not apply to the conformance model {_describe(model)}: {exc} "
                                 "Pass check_detector(..., model=[...]) models it applies to, or options that make it apply.")
        except Exception as exc:
            _fail("score_shape", f"{name}.compute() {where} raised {type(exc).__name__}: {exc}.")
        guard.check(f"{name}.compute() {where}")
        if not isinstance(output, DetectorOutput):
            _fail("score_shape", f"{name}.compute() must return hz.DetectorOutput; got {type(output).__name__}.")
        for metric, values in output.metrics.items():
            if shape_on and (not isinstance(values, torch.Tensor) or tuple(values.shape) != (L, H) or not values.is_floating_point()):
                _fail("score_shape", f"{name}.compute() returned metrics[{metric!r}] of shape {_shape(values)} "
                                     f"{where}; it must be a float tensor [n_layers, n_heads] = [{L}, {H}] (index "
                                     "as [layer, head], e.g. torch.zeros(info.n_layers, info.n_heads)).")
            if "scores_finite" in rule_checks and isinstance(values, torch.Tensor) and torch.isinf(values).any():
                _fail("scores_finite", f"{name}.compute() returned metrics[{metric!r}] with infinite values {where}. "
                                       "Scores must be finite; NaN marks only a head that was not scored.")
        if shape_on and output.details is not None:
            details = output.details
            if not isinstance(details, pd.DataFrame) or not {"layer", "head"} <= set(details.columns):
                _fail("score_shape", f"{name}.compute() details must be a DataFrame with layer and head columns; "
                                     f"got {type(details).__name__}.")
            bad = details[(details["layer"] < 0) | (details["layer"] >= L) | (details["head"] < 0) | (details["head"] >= H)]
            if len(bad):
                _fail("score_shape", f"{name}.compute() details name heads outside the model ({L} x {H}): "
                                     f"{_heads(bad)}.")
        direct = output
        score = output.metrics.get("score")
        if "scores_finite" in rule_checks and isinstance(score, torch.Tensor) and torch.isnan(score).all():
            _fail("scores_finite", f"{name}.compute() scored no head {where} (every score is NaN). NaN marks a head "
                                   "not scored; a detector that cannot score a model should raise "
                                   "hz.DetectorNotApplicableError saying why.")
    try:
        extra = det.weight_scores(model)
    except Exception as exc:
        _fail("score_shape", f"{name}.weight_scores(model) {where} raised {type(exc).__name__}: {exc}.")
    guard.check(f"{name}.weight_scores() {where}")
    if not isinstance(extra, dict):
        _fail("score_shape", f"{name}.weight_scores() must return a dict {{metric: [layer, head]}}; got {type(extra).__name__}.")
    for metric, values in extra.items():
        if shape_on and (not isinstance(values, torch.Tensor) or tuple(values.shape) != (L, H)):
            _fail("score_shape", f"{name}.weight_scores()[{metric!r}] has shape {_shape(values)} {where}; it must be "
                                 f"[n_layers, n_heads] = [{L}, {H}].")
        if "scores_finite" in rule_checks and isinstance(values, torch.Tensor) and torch.isinf(values).any():
            _fail("scores_finite", f"{name}.weight_scores()[{metric!r}] holds infinite values {where}.")
    return direct


def _run_detect(rule: str, det: Detector, model: Any, guard: _Guard, what: str, **probe: Any) -> HeadScores:
    try:
        scores = detect(model, det, progress=False, **probe)
    except ConformanceError:
        raise
    except DetectorNotApplicableError as exc:
        _fail(rule, f"{det.name} does not apply to the conformance model {_describe(model)}: {exc} Pass "
                    "check_detector(..., model=[...]) models it applies to, or options that make it apply.")
    except Exception as exc:
        _fail(rule, f"hz.detect(model, {det.name}){' ' + what if what else ''} on {_describe(model)} raised "
                    f"{type(exc).__name__}: {exc}")
    guard.check(f"hz.detect{' ' + what if what else ''} on {_describe(model)}")
    return scores


def _check_frame_shape(det: Detector, scores: HeadScores, model: Any) -> None:
    info = model_info(model)
    frame = _frame_of(scores, det.name)
    bad = frame[(frame["layer"] < 0) | (frame["layer"] >= info.n_layers) | (frame["head"] < 0) | (frame["head"] >= info.n_heads)]
    if len(bad):
        _fail("score_shape", f"hz.detect(model, {det.name}) on {_describe(model)} scored heads outside the model: "
                             f"{_heads(bad)}; scores must be [n_layers, n_heads].")
    if frame.empty:
        _fail("score_shape", f"hz.detect(model, {det.name}) on {_describe(model)} scored no head at all. NaN marks only "
                             "heads not scored; raise hz.DetectorNotApplicableError when nothing can be scored.")


def _check_frame_finite(det: Detector, scores: HeadScores, model: Any, direct: Any) -> None:
    rule = "scores_finite"
    frame = _frame_of(scores, det.name)
    where = f"on {_describe(model)}"
    for col in frame.columns:
        if col in ("detector", "layer", "head"):
            continue
        values = frame[col].to_numpy(dtype=float)
        if np.isinf(values).any() or (col == "score" and np.isnan(values).any()):
            _fail(rule, f"hz.detect(model, {det.name}) {where} gave non-finite {col!r} values; every scored value must "
                        "be finite (NaN only marks a head that is not scored, and such heads are left out).")
    score_range = getattr(type(det), "score_range", None)
    if score_range is not None:
        lo, hi = score_range
        s = frame["score"].to_numpy(dtype=float)
        out = (s < lo - _ATOL) | (s > hi + _ATOL)
        if out.any():
            _fail(rule, f"{det.name} declares score_range {score_range} but scored {s[out][:3].tolist()} {where}.")
    score = direct.metrics.get("score") if isinstance(direct, DetectorOutput) else None
    if isinstance(score, torch.Tensor):
        scored = {(int(layer), int(head)) for layer, head in torch.nonzero(~torch.isnan(score.double().cpu())).tolist()}
        shown = set(map(tuple, frame[["layer", "head"]].to_numpy().tolist()))
        if scored != shown:
            _fail(rule, f"{det.name}.compute() scored heads {sorted(scored ^ shown)[:5]} differently from hz.detect "
                        f"{where}: a head NaN in the score must be absent from to_frame(), every other present. "
                        "(Scores that change between calls also cause this: see the determinism rule.)")


def _check_batching(det: Detector, model: Any, probe: dict[str, Any], guard: _Guard, base: HeadScores) -> str:
    """Returns what was compared (or raises)."""
    rule = "batch_size_invariance"
    name = det.name
    if isinstance(det, PatternDetector):
        if probe["n_prompts"] < 2:
            return "skipped: n_prompts < 2, so there is nothing to batch"
        big = max(2, probe["batch_size"]) if probe["batch_size"] > 1 else probe["n_prompts"]
        variant, changes = _non_default(det)
        tried = [(det, {})] + ([(variant, changes)] if variant is not None else [])
        for d, opts in tried:
            with_opts = f" with {', '.join(f'{k}={v!r}' for k, v in opts.items())}" if opts else ""
            one = _run_detect(rule, d, model, guard, f"with batch_size=1{with_opts}", **{**probe, "batch_size": 1})
            many = _run_detect(rule, d, model, guard, f"with batch_size={big}{with_opts}", **{**probe, "batch_size": big})
            diff = _compare_frames(_frame_of(one, name), _frame_of(many, name), _ATOL)
            if diff is not None:
                _fail(rule, f"hz.detect{with_opts} gives different scores with batch_size=1 and batch_size={big} "
                            f"(n_prompts={probe['n_prompts']}): {diff}. reduce() must return per-prompt values "
                            "[batch, head] that depend only on each prompt's own pattern (no means over the batch), "
                            "and every option must apply the same way in every batch.")
        return f"batch_size 1 vs {big}" + (f", also with {changes}" if changes else "")
    fields = {f.name for f in dataclasses.fields(det)}  # type: ignore[arg-type]
    if "batch_size" not in fields:
        return f"skipped: {name} has no batch_size option and does not score prompts in batches"
    current = det.batch_size  # type: ignore[attr-defined]
    other = current if isinstance(current, int) and current > 1 else 3
    try:
        single, multi = dataclasses.replace(det, batch_size=1), dataclasses.replace(det, batch_size=other)  # type: ignore[type-var]
    except Exception as exc:
        _fail(rule, f"{name} does not accept batch_size=1 or {other} ({type(exc).__name__}: {exc}).")
    one = _run_detect(rule, single, model, guard, "with batch_size=1")
    many = base if other == current else _run_detect(rule, multi, model, guard, f"with batch_size={other}")
    diff = _compare_frames(_frame_of(one, name), _frame_of(many, name), _ATOL)
    if diff is not None:
        _fail(rule, f"{name} gives different scores with batch_size=1 and batch_size={other}: {diff}. Score each "
                    "prompt on its own (pad and mask ragged batches) so batching only changes speed.")
    return f"batch_size 1 vs {other}"


def _count_hook_calls(model: Any, fire_from: int | None = None) -> tuple[list[int], list[Any]]:
    """Torch forward hooks on every TransformerLens hook point that count calls, and with
    ``fire_from`` raise :class:`_InjectedFailure` from that call on. Returns (counter, handles)."""
    counter = [0]
    seen: set[int] = set()
    handles = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        counter[0] += 1
        if fire_from is not None and counter[0] >= fire_from:
            raise _InjectedFailure("injected by check_detector (hooks_removed) in the middle of a forward pass")

    for point in model.hook_dict.values():
        if id(point) not in seen:
            seen.add(id(point))
            handles.append(point.register_forward_hook(hook))
    return counter, handles


def _check_failure_cleanup(det: Detector, model: Any, guard: _Guard, probe: dict[str, Any], n_calls: int) -> str:
    rule = "hooks_removed"
    if n_calls == 0:
        return "no hook point fired while the detector ran, so there is no forward pass to interrupt"
    fire_from = max(1, n_calls // 2)
    counter, handles = [0], []
    raised: BaseException | None = None
    try:
        counter, handles = _count_hook_calls(model, fire_from)
        detect(model, det, progress=False, **(probe if isinstance(det, PatternDetector) else {}))
    except Exception as exc:  # the injected failure, or what the detector made of it
        raised = exc
    finally:
        for h in handles:
            h.remove()
    guard.check(f"a failure injected into hook point call {fire_from} of {n_calls} on {_describe(model)}")
    if counter[0] >= fire_from and raised is None:
        _fail(rule, f"{det.name} swallowed an exception raised inside the model's forward pass (injected at hook "
                    f"point call {fire_from}). Let errors propagate; clean up in `finally:` instead of catching.")
    return f"clean after normal runs and after a failure injected at hook point call {fire_from} of {n_calls}"


def _check_metadata(det: Detector, scores: HeadScores, outputs: list[Any]) -> str:
    rule = "metadata_contract"
    name = det.name
    for output in outputs:
        if isinstance(output, DetectorOutput):
            problem = _strict_json(output.meta)
            if problem is not None:
                _fail(rule, f"{name}.compute() returned DetectorOutput.meta that is not JSON-ready ({problem}); "
                            "results store it as JSON (it would be saved as a string). Convert tensors and "
                            "arrays with .tolist(), numbers with float()/int().")
    declared = det.metadata()
    missing = [k for k in _META_KEYS if k not in declared]
    if missing:
        _fail(rule, f"{name}.metadata() lacks {missing}; call super().metadata() and add to it.")
    cls = type(det)
    for key in ("name", "kind", "variant", "reference", "threshold"):
        if declared[key] != getattr(cls, key):
            _fail(rule, f"{name}.metadata()[{key!r}] is {declared[key]!r} but the class declares {getattr(cls, key)!r}; "
                        "metadata() must report the declared attributes.")
    option_names = sorted(f.name for f in dataclasses.fields(det) if f.init)  # type: ignore[arg-type]
    if not isinstance(declared["options"], dict) or sorted(declared["options"]) != option_names:
        got = sorted(declared["options"]) if isinstance(declared["options"], dict) else declared["options"]
        _fail(rule, f"{name}.metadata()['options'] lists {got} but the options (dataclass fields) are "
                    f"{option_names}; options() must report every option.")
    meta = scores.meta
    recorded = meta.get("detectors", {}).get(name)
    if not isinstance(recorded, dict):
        _fail(rule, f"the result's meta['detectors'] has no entry {name!r}.")
    expected = json.loads(json.dumps(declared))
    for key in _META_KEYS:
        if recorded.get(key) != expected[key]:
            _fail(rule, f"meta['detectors'][{name!r}][{key!r}] is {recorded.get(key)!r} but the detector reports "
                        f"{expected[key]!r}; return JSON-ready values from options()/metadata().")
    frame = scores.to_frame()
    if not {"detector", "layer", "head", "score"} <= set(frame.columns):
        _fail(rule, f"to_frame() lacks columns {sorted({'detector', 'layer', 'head', 'score'} - set(frame.columns))}.")
    for col in ("layer", "head"):
        if str(frame[col].dtype) != "int64":
            _fail(rule, f"to_frame()[{col!r}] has dtype {frame[col].dtype}; it must be int64.")
    mine = _frame_of(scores, name)
    if not pd.api.types.is_float_dtype(mine["score"]):
        _fail(rule, f"to_frame()['score'] has dtype {mine['score'].dtype}; it must be float.")
    if set(frame["detector"]) != {name}:
        _fail(rule, f"to_frame()['detector'] holds {sorted(set(frame['detector']))}; every row must name {name!r}.")
    dupes = mine[mine.duplicated(["layer", "head"], keep=False)]
    if len(dupes):
        _fail(rule, f"to_frame() has duplicate (layer, head) rows for {name}: {_heads(dupes)}.")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = scores.save(Path(tmp) / "scores.parquet")
            back = HeadScores.load(path)
        except Exception as exc:
            _fail(rule, f"the result of {name} cannot be saved and loaded ({type(exc).__name__}: {exc}); keep "
                        "DetectorOutput.meta JSON-ready and details a plain DataFrame of numbers and strings.")
        diff = _compare_frames(_frame_of(back, name), _frame_of(scores, name), 0.0)
        if diff is not None or back.meta["detectors"][name] != meta["detectors"][name]:
            _fail(rule, f"the result of {name} changes in a save/load round trip: {diff or 'metadata differs'}.")
    notes = []
    if name in registered_names() and _REGISTRY.get(name) is cls:
        row = list_detectors().set_index("name").loc[name]
        for col in ("description", "kind", "reference"):
            if not isinstance(row[col], str) or not row[col].strip():
                _fail(rule, f"hz.list_detectors() shows an empty {col!r} for {name}; declare `{col} = ...` "
                            "(reference: the paper or source of the definition).")
        notes.append("list_detectors row checked")
    else:
        notes.append("not registered, so no list_detectors row to check")
    return "; ".join(notes)


# -- entry point -----------------------------------------------------------------------------

def _resolve(detector: Any, options: dict[str, Any]) -> tuple[type, Detector | None, dict[str, Any], dict[str, Any]]:
    """``(class, instance given or None, detector options, probe options)``."""
    if isinstance(detector, str):
        cls: type = detector_class(detector)
        given = None
    elif isinstance(detector, Detector):
        cls, given = type(detector), detector
    elif isinstance(detector, type):
        cls, given = detector, None
    else:
        raise InvalidOptionError(
            f"check_detector expects a detector class, instance or registered name; got {type(detector).__name__} {detector!r}"
        )
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - fields - _PROBE_FIELDS)
    if unknown:
        raise InvalidOptionError(
            f"check_detector: unknown option(s) {unknown}; valid are the detector's options {sorted(fields)} and the "
            f"probe's {sorted(_PROBE_FIELDS)}."
        )
    det_opts = {k: v for k, v in options.items() if k in fields}
    probe = {**_PROBE_DEFAULTS, **{k: v for k, v in options.items() if k in _PROBE_FIELDS and k not in fields}}
    return cls, given, det_opts, probe


def _models(model: Any, det: Detector | None = None) -> tuple[list[Any], bool]:
    if model is None:
        models = [_default_model(*shape) for shape in _SHAPES]
        if isinstance(det, PatternDetector):
            try:
                det.bind(models[0], model_info(models[0]))
            except UnsupportedTokenizerError:  # e.g. subword_merge: a whole-word vocabulary has no pieces
                models = [_default_model(*shape, tokenizer="bpe") for shape in _SHAPES]
            except Exception:  # not this function's rule: score_shape reports it
                pass
        return models, True
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise InvalidOptionError("check_detector: model=[] holds no model; pass a model, a list of models, or None.")
    for m in models:
        model_info(m)  # a typed error for anything that is not a TransformerLens model
        _warm_up(m)
    return models, False


def check_detector(
    detector: type | Detector | str,
    *,
    model: Any = None,
    options: Mapping[str, Any] | None = None,
    checks: Sequence[str] | None = None,
) -> ConformanceReport:
    """Check that a detector keeps every rule the runner, results and atlas rely on.

    The rules, checked in this order (:data:`RULES`):

    - ``declared_fields``: a frozen dataclass subclass of ``hz.Detector``; ``name`` snake_case,
      ``description`` non-empty, ``kind`` declared (and matching the base class),
      ``reference``/``variant`` strings, ``threshold`` None or finite; every option a field with
      a default; ``cls()`` works; ``options()``/``metadata()`` JSON-ready; equal instances hash equal.
    - ``score_shape``: ``compute`` (or, for pattern detectors, ``match`` -> bool
      ``[batch, query, key]`` with no key after its query, and ``reduce`` -> ``[batch, head]``
      values with ``[batch]`` validity) and ``hz.detect`` give ``[n_layers, n_heads]`` on every
      model; ``weight_scores`` too.
    - ``scores_finite``: no infinities; NaN only as "head not scored", and such heads absent
      from ``to_frame()``; scores inside ``score_range`` when the class declares one.
    - ``batch_size_invariance``: batch size 1 and a larger one agree to 1e-6 (pattern detectors:
      the probe's ``batch_size``, also with non-default options; others: their ``batch_size``).
    - ``no_mutation``: the model's parameters and buffers, the tokens, patterns and matches
      passed in, and the detector instance are unchanged after every call.
    - ``hooks_removed``: no hook left on any module or TransformerLens hook point after every
      call, also when the forward pass raises in the middle (a failure is injected).
    - ``metadata_contract``: ``meta["detectors"][name]`` records name, kind, variant, reference,
      threshold and options as declared; the ``hz.list_detectors()`` row (when registered) has a
      description, kind and reference; ``to_frame()`` has int64 layer/head, float score, the
      detector's name and no duplicate heads; the result survives ``save``/``load``.
    - ``determinism``: two runs with the same options give identical scores.

    The model, the detector and the hooks are checked after every call, so a mutation or a
    leftover hook is reported at the call that caused it, before later rules run.

    Args:
        detector: a detector class, an instance, or a registered name.
        model: a TransformerLens model, or a list of them. ``None`` (default): two small planted
            models (2 x 3 and 3 x 2 heads with previous-token and induction heads, and a word
            tokenizer that spells the days of the week), so a transposed score cannot pass. A
            pattern detector whose ``bind`` refuses that tokenizer (``hz.UnsupportedTokenizerError``)
            gets the same two models with a byte-level BPE tokenizer instead.
        options: the detector's options (e.g. ``{"n_tokens": 64}``) and probe options for pattern
            detectors (``n_prompts``, ``half_len``, ``batch_size``, ``seed``, ``prepend_bos``;
            default ``n_prompts=4, batch_size=4``).
        checks: rule names to check (default: all). Rules left out are reported as skipped.

    Returns:
        :class:`ConformanceReport`: each rule, passed or skipped with the reason.

    Raises:
        hz.ConformanceError: the first broken rule; the message starts with the rule's name.
        hz.InvalidOptionError: unknown options or rule names.
        hz.UnknownDetectorError: an unknown name.
    """
    if checks is None:
        wanted = set(RULES)
    else:
        if isinstance(checks, str):
            checks = [checks]
        unknown = sorted(set(checks) - set(RULES))
        if unknown:
            raise InvalidOptionError(f"check_detector: unknown rule(s) {unknown}; the rules are {list(RULES)}.")
        wanted = set(checks)
    if options is not None and not isinstance(options, Mapping):
        raise InvalidOptionError(f"check_detector: options must be a dict; got {type(options).__name__}")
    cls, given, det_opts, probe = _resolve(detector, dict(options or {}))
    outcome: dict[str, RuleResult] = {}

    def done(rule: str, detail: str = "") -> None:
        if rule not in wanted:
            outcome[rule] = RuleResult(rule, "skipped", "not in checks")
        elif detail.startswith("skipped: "):
            outcome[rule] = RuleResult(rule, "skipped", detail.removeprefix("skipped: "))
        else:
            outcome[rule] = RuleResult(rule, "passed", detail)

    if "declared_fields" in wanted:
        _check_declared(cls)
    try:
        det = dataclasses.replace(given, **det_opts) if given is not None else cls(**det_opts)  # type: ignore[type-var]
    except Exception as exc:
        raise InvalidOptionError(f"check_detector: {cls.__qualname__} rejects options {det_opts}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(det, Detector):
        _fail("declared_fields", f"{det!r} is not an hz.Detector.")
    if "declared_fields" in wanted and (given is not None or det_opts):
        _check_instance(det, "the instance checked")
    done("declared_fields", "frozen dataclass; name, description, kind, reference, variant, threshold; options hashable and JSON-ready")
    models, default = _models(model, det)
    described = tuple(_describe(m) for m in models)
    try:
        guard = _Guard(det, models, wanted)
        if wanted - {"declared_fields"}:
            runs: list[tuple[Any, HeadScores, Any]] = []
            for m in models:
                direct = _check_direct(wanted, det, m, probe, guard)
                scores = _run_detect("score_shape", det, m, guard, "", **(probe if isinstance(det, PatternDetector) else {}))
                if "score_shape" in wanted:
                    _check_frame_shape(det, scores, m)
                runs.append((m, scores, direct))
            shapes = {(model_info(m).n_layers, model_info(m).n_heads) for m in models}
            square = all(a == b for a, b in shapes)
            done("score_shape", f"[n_layers, n_heads] on {', '.join(described)}"
                 + (" (only square models given: a transposed score would not show)" if square else ""))
            if "scores_finite" in wanted:
                for m, scores, direct in runs:
                    _check_frame_finite(det, scores, m, direct)
            declared_range = getattr(type(det), "score_range", None)
            done("scores_finite", "finite; NaN heads absent from to_frame()"
                 + (f"; within score_range {declared_range}" if declared_range is not None else ""))
            first, base, _ = runs[0]
            pattern_probe = probe if isinstance(det, PatternDetector) else {}
            detail = _check_batching(det, first, probe, guard, base) if "batch_size_invariance" in wanted else ""
            done("batch_size_invariance", detail)
            if isinstance(det, PatternDetector) and "no_mutation" in wanted:
                tokens = _probe_tokens(first, probe, det.probe)
                before = tokens.clone()
                _run_detect("no_mutation", det, first, guard, "on the user's tokens", tokens=tokens)
                if not torch.equal(tokens, before):
                    _fail("no_mutation", "hz.detect(model, tokens=tokens) changed the tokens passed in.")
            guard.check("every run")
            done("no_mutation", "model parameters and buffers, tokens, patterns and the detector unchanged")
            # the determinism rerun doubles as the count of hook-point calls for the injected failure
            again, counter = None, [0]
            if wanted & {"hooks_removed", "determinism"}:
                counter, handles = _count_hook_calls(first) if "hooks_removed" in wanted else ([0], [])
                try:
                    again = detect(first, det, progress=False, **pattern_probe)
                except Exception as exc:
                    _fail("determinism", f"a second hz.detect(model, {det.name}) raised {type(exc).__name__}: {exc}")
                finally:
                    for h in handles:
                        h.remove()
                guard.check(f"a second hz.detect on {described[0]}")
            detail = _check_failure_cleanup(det, first, guard, probe, counter[0]) if "hooks_removed" in wanted else ""
            done("hooks_removed", detail)
            detail = _check_metadata(det, base, [d for _, _, d in runs]) if "metadata_contract" in wanted else ""
            done("metadata_contract", detail)
            if "determinism" in wanted and again is not None:
                diff = _compare_frames(_frame_of(base, det.name), _frame_of(again, det.name), 0.0)
                if diff is not None:
                    _fail("determinism", f"two runs of {det.name} with the same options on {described[0]} differ: {diff}. "
                                         "Draw randomness from a torch.Generator seeded by an option (e.g. `seed`), "
                                         "never from the global RNG, and avoid order-dependent reductions.")
            done("determinism", "two runs identical")
        else:
            for rule in RULES[1:]:
                done(rule)
    finally:
        if default:
            _release_default_models()
    return ConformanceReport(det.name, tuple(outcome[r] for r in RULES), described)

