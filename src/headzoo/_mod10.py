"""Mod-10 features of number-like tokens, and editing a successor head's input with them.

Gould, Ong, Ogden, Conmy (2023, "Successor Heads", arXiv 2312.09230) find that the effective
embeddings of number-like tokens ("7", " 17", "seven", "seventh", "July") share ten directions,
one per residue ``r = value % 10``: a linear probe reads the last digit off the embedding, and
the successor head's OV circuit acts on that part. Vector arithmetic shows it is causal: the
edit ``x - d_i + d_j`` turns "23" into "27" as the head reads it, so the head now predicts "28".
An edit of the units alone cannot carry ("29" -> "30" needs the tens), which is what a units
mechanism predicts, and those pairs are reported apart.

:func:`mod10_features` finds the ten directions three ways (class means, a logistic-regression
probe, a small sparse autoencoder), measures on held-out tokens how well they predict
``value % 10``, and does the same for other moduli, so mod 10's special place can be seen.
:func:`successor_editing` applies the edit to every number-like token and reads the head's
prediction from its weights (``W_EE[s] @ W_OV @ W_U`` over the task's tokens, as the
``successor`` detector does), beside a control edit by a random vector of the same norm.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from headzoo._circuits import WeightCircuits
from headzoo._embedding import EMBEDDING_VARIANTS, effective_embedding, embedding_metadata
from headzoo._errors import (
    DetectorNotApplicableError,
    EmptyResultError,
    InvalidOptionError,
    InvalidTokensError,
    UnsupportedModelError,
)
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str
from headzoo._models import has_weight, library_versions, model_info
from headzoo._ordinal import OrdinalTask, as_tasks, builtin_tasks, check_task_ids
from headzoo._results import colour
from headzoo._tokens import check_bool, check_int, token_strings

__all__ = ["METHODS", "Mod10Features", "SuccessorEditing", "mod10_features", "successor_editing"]

#: how the residue directions are found
METHODS: dict[str, str] = {
    "means": "direction r = mean of the residue-r tokens minus the mean of all tokens (training split); "
    "prediction = the nearest class mean",
    "probe": "multinomial logistic regression (L2, full-batch LBFGS) on the training split; direction r = "
    "class r's weight row centred across classes, unit-normalised, times the mean projection of the "
    "class-r tokens on it; prediction = the probe's argmax",
    "sae": "a sparse autoencoder (ReLU encoder, L1 penalty, unit-norm decoder rows) trained on the training "
    "split; for each residue the feature most active on it relative to the other residues; direction r = "
    "its decoder row times its mean activation on class r; prediction = argmax of the chosen features",
}
_FRAME = ["modulus", "method", "accuracy", "chance", "majority", "variance_explained", "variance_random",
          "n_tokens", "n_heldout", "n_classes"]
_FRAME_INTS = ("modulus", "n_tokens", "n_heldout", "n_classes")
_PROJ = [f"proj_{r}" for r in range(10)]
_PAIRS = ["task", "source", "source_id", "source_value", "source_index", "target_index", "edited", "edited_id",
          "expected", "expected_id", "predicted", "predicted_id", "success", "carry",
          "control_predicted", "control_predicted_id", "control_success"]
_PAIR_INTS = ("source_id", "source_value", "source_index", "target_index", "edited_id", "expected_id",
              "predicted_id", "control_predicted_id")
_PAIR_BOOLS = ("success", "carry", "control_success")
_UNEDITED = ["task", "source", "source_id", "expected", "expected_id", "predicted", "predicted_id", "success"]
#: a tie between two logits (relative to the largest |logit| of the row) is a miss, as in the
#: ``successor`` detector, so an unedited source scores exactly as the detector does
_TIE = 1e-5


# -- tokens ------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _collect(model: Any, tokens: Any, n_vocab: int, n_real: int) -> tuple[
        list[int], list[int], list[str], tuple[OrdinalTask, ...], pd.DataFrame]:
    """``(ids, values, task names, tasks, coverage)`` of the tokens to fit on, deduplicated
    (an id in several tasks keeps its first). ``tasks`` is empty for an ``{id: value}`` mapping
    whose values repeat (it is no ordinal sequence)."""
    skipped: dict[str, str] = {}
    if tokens is None:
        built, skipped = builtin_tasks(
            model, lists="numeric", who="mod10_features", n_vocab=n_real,
            instead="Pass them yourself: tokens={token_id: value, ...} or a list of hz.OrdinalTask with values.")
        tasks = tuple(built)
    elif isinstance(tokens, Mapping):
        if not tokens:
            raise InvalidOptionError("tokens is an empty mapping; give {token_id: value, ...} for at least 20 tokens")
        for key, value in tokens.items():
            if not _is_int(key):
                raise InvalidTokensError(f"tokens: the key {key!r} is not an integer token id; give {{token_id: value}}")
            if not _is_int(value):
                raise InvalidOptionError(
                    f"tokens: the value of token {key} is {value!r}; values must be integers (the token's "
                    "ordinal value, e.g. 7 for '7' or 3 for 'March')"
                )
        bad = sorted(int(k) for k in tokens if not 0 <= int(k) < n_vocab)
        if bad:
            raise InvalidTokensError(f"tokens hold ids {bad[:5]} outside the vocabulary [0, {n_vocab - 1}]")
        pairs = sorted(((int(v), int(k)) for k, v in tokens.items()))
        values = [v for v, _ in pairs]
        ids = [k for _, k in pairs]
        tasks = ()
        if len(set(values)) == len(values) and len(ids) >= 2:  # an ordinal sequence: editing can use it
            tasks = (OrdinalTask("tokens", tuple(ids), values=tuple(values)),)
        cover = pd.DataFrame({"task": ["tokens"], "n_tokens": [len(ids)], "n_used": [len(ids)], "note": [""]})
        return ids, values, ["tokens"] * len(ids), tasks, cover
    elif isinstance(tokens, OrdinalTask) or (
            isinstance(tokens, Sequence) and not isinstance(tokens, str) and tokens
            and all(isinstance(t, OrdinalTask) for t in tokens)):
        tasks = as_tasks(tokens)
        check_task_ids(tasks, n_vocab, "tokens")
    else:
        raise InvalidOptionError(
            "tokens must be None (the number-like lists of the model's tokenizer), a list of hz.OrdinalTask, "
            f"or a mapping {{token_id: value}}; got {type(tokens).__name__}"
        )
    ids, values, names, seen, rows = [], [], [], set(), []
    for task in tasks:
        used = 0
        for tid, value in zip(task.token_ids, task.index_values):
            if tid in seen:
                continue
            seen.add(tid)
            ids.append(int(tid))
            values.append(int(value))
            names.append(task.name)
            used += 1
        rows.append((task.name, len(task.token_ids), used, "" if used == len(task.token_ids)
                     else f"{len(task.token_ids) - used} tokens already in an earlier task"))
    rows += [(name, 0, 0, why) for name, why in skipped.items()]
    cover = pd.DataFrame(rows, columns=["task", "n_tokens", "n_used", "note"])
    return ids, values, names, tuple(tasks), cover


def _split(residues: np.ndarray, modulus: int, holdout: float, seed: int) -> np.ndarray:
    """Held-out mask ``[n]``: within each residue class (of at least two tokens) a seeded
    ``holdout`` share, at least one token and never all of them."""
    rng = np.random.default_rng([seed, modulus])
    held = np.zeros(len(residues), dtype=bool)
    for c in range(modulus):
        idx = np.flatnonzero(residues == c)
        if len(idx) < 2:
            continue
        k = min(max(int(round(holdout * len(idx))), 1), len(idx) - 1)
        held[idx[rng.permutation(len(idx))[:k]]] = True
    return held


# -- fitting -----------------------------------------------------------------------------------
def _orthonormal(d: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``[k, d_model]`` of the span of the rows of ``d``."""
    if d.numel() == 0:
        return d
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    keep = s > s.max() * 1e-6 * max(d.shape)
    return vh[keep]


def _variance_explained(x: torch.Tensor, d: torch.Tensor) -> float:
    """Share of ``sum ||x||^2`` (``x`` centred) that lies in the span of the rows of ``d``."""
    basis = _orthonormal(d)
    total = float((x.double() ** 2).sum())
    if total == 0 or basis.numel() == 0:
        return 0.0
    return float(((x.double() @ basis.T) ** 2).sum()) / total


def _fit_means(x: torch.Tensor, res: np.ndarray, train: np.ndarray, classes: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Directions ``[C, d]`` (class mean minus grand mean, training split) and the
    nearest-class-mean prediction (an index into ``classes``) for every token."""
    xt = x[torch.from_numpy(train)]
    grand = xt.mean(0)
    means = torch.stack([x[torch.from_numpy(train & (res == c))].mean(0) for c in classes])
    pred = torch.cdist(x, means).argmin(1).numpy()
    return means - grand, pred


def _fit_probe(x: torch.Tensor, res: np.ndarray, train: np.ndarray, classes: list[int], l2: float) -> tuple[torch.Tensor, np.ndarray]:
    """Multinomial logistic regression on the training split (inputs scaled to unit mean
    squared norm, so ``l2`` does not depend on the embedding's scale). Weights start at zero
    and LBFGS is deterministic, so the fit is reproducible."""
    scale = float(x.pow(2).sum(1).mean().sqrt()) or 1.0
    xs = (x / scale).double()
    sel = torch.from_numpy(train)
    lookup = {c: k for k, c in enumerate(classes)}
    y = torch.tensor([lookup[int(r)] for r in res[train]])
    w = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    xt = xs[sel]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.T + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[arg-type]
    w, b = w.detach(), b.detach()
    pred = (xs @ w.T + b).argmax(1).numpy()
    centred = w - w.mean(0, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-300)
    mean_proj = torch.stack([(x[torch.from_numpy(train & (res == c))].double() @ unit[k]).mean()
                             for k, c in enumerate(classes)])
    return (unit * mean_proj[:, None]).float(), pred


class _SAE:
    """A sparse autoencoder on inputs scaled by ``scale``: ``f = relu((x/scale - b_dec) @ w_enc
    + b_enc)``, ``x/scale ~ f @ w_dec + b_dec``, decoder rows of unit norm."""

    def __init__(self, w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor, scale: float) -> None:
        self.w_enc, self.b_enc, self.w_dec, self.b_dec, self.scale = w_enc, b_enc, w_dec, b_dec, scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x / self.scale - self.b_dec) @ self.w_enc + self.b_enc)

    def reconstruction_share(self, x: torch.Tensor) -> float:
        """``1 - ||x - x_hat||^2 / ||x - mean||^2`` (in the scaled units)."""
        xs = x / self.scale
        err = float(((self.encode(x) @ self.w_dec + self.b_dec - xs) ** 2).sum())
        total = float(((xs - xs.mean(0)) ** 2).sum())
        return 1.0 - err / total if total > 0 else 0.0


def _train_sae(x: torch.Tensor, size: int, l1: float, steps: int, seed: int, show: bool) -> _SAE:
    """Full-batch Adam on ``mean ||x - x_hat||^2 + l1 * mean sum f`` with the input scaled to
    unit mean squared norm. Decoder rows start as random unit vectors, the encoder as their
    transpose; decoder rows are put back on the unit sphere after every step, so the L1 penalty
    cannot be dodged by shrinking activations and growing the decoder."""
    g = torch.Generator().manual_seed(seed)
    scale = float(x.pow(2).sum(1).mean().sqrt()) or 1.0
    xs = (x / scale).float()
    n, d = xs.shape
    rows = torch.randn(size, d, generator=g)
    w_dec = (rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).clone()
    w_enc = w_dec.T.clone()
    b_enc = torch.zeros(size)
    b_dec = xs.mean(0).clone()
    params = [t.requires_grad_(True) for t in (w_enc, b_enc, w_dec, b_dec)]
    opt = torch.optim.Adam(params, lr=1e-2)
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="headzoo SAE", unit="step", disable=not show, leave=False):
            f = torch.relu((xs - b_dec) @ w_enc + b_enc)
            loss = ((f @ w_dec + b_dec - xs) ** 2).sum(1).mean() + l1 * f.sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _SAE(w_enc.detach(), b_enc.detach(), w_dec.detach(), b_dec.detach(), scale)


def _sae_select(acts: torch.Tensor, res: np.ndarray, train: np.ndarray, classes: list[int]) -> tuple[list[int], list[float], torch.Tensor]:
    """For each class, the feature whose mean training activation on it most exceeds its mean on
    the other classes, each feature used once (the most selective assignments are made first).

    Returns:
        ``(features, selectivity, mean activation of each chosen feature on its class)``.
    """
    sel = torch.from_numpy(train)
    a, r = acts[sel].double(), res[train]
    inside = torch.stack([a[torch.from_numpy(r == c)].mean(0) for c in classes])  # [C, k]
    outside = torch.stack([a[torch.from_numpy(r != c)].mean(0) if (r != c).any() else torch.zeros(a.shape[1], dtype=a.dtype)
                           for c in classes])
    gap = (inside - outside).clone()
    chosen: dict[int, int] = {}
    for _ in classes:  # greedy: the largest remaining gap fixes one class and one feature
        flat = int(gap.argmax())
        k, f = divmod(flat, gap.shape[1])
        chosen[k] = f
        gap[k, :] = -float("inf")
        gap[:, f] = -float("inf")
    feats = [chosen[k] for k in range(len(classes))]
    selectivity = [float(inside[k, f] - outside[k, f]) for k, f in enumerate(feats)]
    return feats, selectivity, torch.stack([inside[k, f] for k, f in enumerate(feats)])


def _fit(method: str, x: torch.Tensor, res: np.ndarray, train: np.ndarray, classes: list[int], probe_l2: float,
         sae: _SAE | None) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """One modulus: directions ``[C, d_model]`` (one per class in ``classes``), each token's
    predicted class (an index into ``classes``), and for the SAE the chosen features."""
    if method == "means":
        d, pred = _fit_means(x, res, train, classes)
        return d, pred, {}
    if method == "probe":
        d, pred = _fit_probe(x, res, train, classes, probe_l2)
        return d, pred, {}
    assert sae is not None
    acts = sae.encode(x)
    feats, selectivity, mean_act = _sae_select(acts, res, train, classes)
    d = (sae.w_dec[feats].double() * (mean_act * sae.scale)[:, None]).float()  # back to embedding units
    return d, acts[:, feats].argmax(1).numpy(), {"features": feats, "selectivity": selectivity}


def _check_options(method: Any, moduli: Any, holdout: Any, embedding: Any) -> tuple[int, ...]:
    if method not in METHODS:
        raise InvalidOptionError(f"method must be one of {list(METHODS)}; got {method!r}")
    if embedding not in EMBEDDING_VARIANTS:
        raise InvalidOptionError(f"embedding must be one of {list(EMBEDDING_VARIANTS)}; got {embedding!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.floating)) or not 0 < float(holdout) < 1:
        raise InvalidOptionError(f"holdout must be a share strictly between 0 and 1 (e.g. 0.2); got {holdout!r}")
    if isinstance(moduli, (str, bytes)) or not isinstance(moduli, (Sequence, np.ndarray)):
        raise InvalidOptionError(f"moduli must be a sequence of integers >= 2, e.g. (2, 5, 7, 10, 12); got {moduli!r}")
    out = []
    for m in moduli:
        if not _is_int(m) or m < 2:
            raise InvalidOptionError(f"moduli must be integers >= 2; got {m!r} in {moduli!r}")
        out.append(int(m))
    return tuple(sorted(set(out) | {10}))


# -- the features ----------------------------------------------------------------------------------
def mod10_features(
    model: Any,
    tokens: Any = None,
    method: str = "means",
    *,
    moduli: Sequence[int] = (2, 5, 7, 10, 12),
    embedding: str = "mlp0",
    holdout: float = 0.2,
    seed: int = 0,
    progress: bool | None = None,
    probe_l2: float = 1e-3,
    sae_size: int | None = None,
    sae_l1: float = 0.03,
    sae_steps: int = 600,
) -> Mod10Features:
    """The ten mod-10 directions of number-like tokens' effective embeddings, and how well they
    (and other moduli) predict a token's value on held-out tokens.

    Each token has a value (``"7"`` and ``" 17"``: 7 and 17, ``"March"``: 3); its residue is
    ``value % m``. The effective embeddings (``hz.effective_embedding(model, ids,
    variant=embedding)``, ``[n, d_model]``) are centred. For every modulus a seeded split,
    stratified by residue, holds out a ``holdout`` share of each class; directions and
    predictors are fitted on the rest, and accuracy is measured on the held-out tokens only
    (the SAE, which needs no labels, is trained once, on the training split of modulus 10;
    which feature stands for which residue is chosen on each modulus' own training split).
    Variance explained is measured on all tokens: it describes the embeddings, not a predictor.

    Args:
        model: any TransformerLens model.
        tokens: ``None``: :func:`hz.numeric_tasks` of the model's tokenizer (numbers 0-999 bare
            and with a space, number words, ordinals, days, months, their prefixes, Roman
            numerals: whatever is a single token). Or a list of :class:`hz.OrdinalTask` (values
            from ``task.index_values``), or a mapping ``{token_id: value}``. An id in several
            tasks is used once (its first task).
        method: ``"means"``, ``"probe"`` or ``"sae"`` (see :data:`METHODS`).
        moduli: the moduli to compare (10 is always included).
        embedding: the effective-embedding variant (``"mlp0"``, ``"attn_mlp0"``, ``"embed"``).
        holdout: the share of each residue class held out (at least one token per class of two
            or more tokens, never a whole class).
        seed: seeds the splits, the SAE and the random baseline directions.
        progress: a progress bar over the SAE's steps (``None``: only for large embeddings).
        probe_l2: the probe's L2 penalty (inputs scaled to unit mean squared norm).
        sae_size: the SAE's dictionary size. ``None``: ``min(4 * d_model, n_train // 6, 256)``
            and at least twice the largest modulus. A dictionary as large as the training set
            would memorise it: one feature per token costs less L1 than a shared tens feature
            plus a shared units feature, so the size stays well below the number of tokens;
            256 trains in seconds on the CPU for GPT-2's ~1500 number tokens.
        sae_l1: the SAE's L1 penalty on activations (inputs scaled to unit mean squared norm).
        sae_steps: full-batch Adam steps of the SAE.

    Returns:
        :class:`Mod10Features`: ``directions`` ``[10, d_model]`` float32 (in embedding units),
        ``probe_accuracy`` (held-out accuracy of ``value % 10``), ``variance_explained`` (share of
        the centred embeddings' variance in their span) beside ``variance_random`` (10 random
        directions), and one row per modulus in ``to_frame()``.

    Raises:
        DetectorNotApplicableError: ``tokens=None`` and the model has no tokenizer, or none of the
            number-like lists is made of its single tokens.
        InvalidOptionError: an unknown method or embedding variant, a bad holdout, modulus or
            option, or fewer than 2 tokens for some residue of 10.
        InvalidTokensError: token ids outside the vocabulary, or keys that are not ids.
    """
    moduli_t = _check_options(method, moduli, holdout, embedding)
    seed = check_int(seed, "seed", minimum=0)
    probe_l2 = _check_float(probe_l2, "probe_l2")
    sae_l1 = _check_float(sae_l1, "sae_l1")
    sae_steps = positive_int("sae_steps", sae_steps)
    if progress is not None:
        progress = check_bool(progress, "progress")
    info = model_info(model)
    user_size = None if sae_size is None else positive_int("sae_size", sae_size)
    ids, values, names, tasks, cover = _collect(model, tokens, info.d_vocab, info.n_real_tokens)
    vals = np.asarray(values, dtype=np.int64)
    res10 = vals % 10
    counts = np.bincount(res10, minlength=10)
    if counts.min() < 2:
        thin = [f"{r}: {int(c)}" for r, c in enumerate(counts) if c < 2]
        err = DetectorNotApplicableError if tokens is None else InvalidOptionError
        raise err(
            f"mod10_features needs at least 2 tokens for every residue of 10 (one to fit, one to hold out); "
            f"these residues have fewer ({', '.join(thin)}) among {len(ids)} tokens. Add tokens (e.g. the "
            "numbers 0-99) or other tasks."
        )
    x = effective_embedding(model, torch.tensor(ids), variant=embedding).float().cpu()
    x = x - x.mean(0, keepdim=True)
    show = progress if progress is not None else len(ids) * x.shape[1] > 5e5
    sae: _SAE | None = None
    extra: dict[str, Any] = {}
    rows: list[tuple[Any, ...]] = []
    held10 = _split(res10, 10, float(holdout), seed)
    if method == "sae":
        n_train = int((~held10).sum())
        size = user_size or max(2 * max(moduli_t), min(4 * info.d_model, n_train // 6, 256))
        if size < max(moduli_t):
            raise InvalidOptionError(f"sae_size must be at least the largest modulus ({max(moduli_t)}), one feature "
                                     f"per residue; got {size}")
        sae = _train_sae(x[torch.from_numpy(~held10)], size, sae_l1, sae_steps, seed, bool(show))
        acts = sae.encode(x)
        extra["sae"] = {
            "size": size, "l1": sae_l1, "steps": sae_steps, "trained_on": "the training split of modulus 10",
            "reconstruction_train": sae.reconstruction_share(x[torch.from_numpy(~held10)]),
            "reconstruction_heldout": sae.reconstruction_share(x[torch.from_numpy(held10)]),
            "l0": float((acts > 0).float().sum(1).mean()),
            "dead": int((acts.amax(0) <= 0).sum()),
        }
    result10: dict[str, Any] = {}
    for m in moduli_t:
        res = vals % m
        held = held10 if m == 10 else _split(res, m, float(holdout), seed)
        train = ~held
        classes = [c for c in range(m) if (train & (res == c)).any()]
        d, pred_k, chosen = _fit(method, x, res, train, classes, probe_l2, sae)
        if m == 10 and chosen:
            extra["sae"].update(chosen)
        pred = np.asarray(classes)[pred_k]
        n_held = int(held.sum())
        acc = float((pred[held] == res[held]).mean()) if n_held else float("nan")
        majority_class = int(np.bincount(res[train], minlength=m).argmax())
        majority = float((res[held] == majority_class).mean()) if n_held else float("nan")
        # the baseline's random directions depend on (seed, m) only, not on the other moduli asked for
        rand = torch.from_numpy(np.random.default_rng([seed, m, 1]).standard_normal((len(classes), x.shape[1])))
        rows.append((m, method, acc, 1.0 / m, majority, _variance_explained(x, d), _variance_explained(x, rand.float()),
                     len(ids), n_held, len(classes)))
        if m == 10:
            result10 = {"directions": d.float(), "pred": pred, "held": held, "train": train}
    frame = pd.DataFrame(rows, columns=_FRAME)
    d10 = cast(torch.Tensor, result10["directions"])
    unit = d10 / d10.norm(dim=1, keepdim=True).clamp_min(1e-30)
    proj = (x @ unit.T).numpy().astype(np.float64)
    strings = token_strings(model, ids)
    tok = pd.DataFrame({
        "token_id": np.asarray(ids, dtype=np.int64), "token": strings, "task": names,
        "value": vals, "residue": res10.astype(np.int64),
        "split": np.where(result10["held"], "heldout", "train"), "predicted": result10["pred"].astype(np.int64),
        **{f"proj_{r}": proj[:, r] for r in range(10)},
    })
    means, _ = _fit_means(x, res10, result10["train"], list(range(10)))
    cosines = torch.nn.functional.cosine_similarity(d10.double(), means.double(), dim=1)
    per_residue = []
    for r in range(10):
        mask = res10 == r
        h = mask & result10["held"]
        per_residue.append({
            "residue": r, "n_train": int((mask & result10["train"]).sum()), "n_heldout": int(h.sum()),
            "accuracy": float((result10["pred"][h] == r).mean()) if h.any() else float("nan"),
            "norm": float(d10[r].norm()), "cosine_with_means": float(cosines[r]),
        })
    if method == "sae":
        for r, item in enumerate(per_residue):
            item["feature"] = int(extra["sae"]["features"][r])
            item["selectivity"] = float(extra["sae"]["selectivity"][r])
    meta: dict[str, Any] = {
        "method": method,
        "method_definition": METHODS[method],
        "moduli": list(moduli_t),
        "holdout": float(holdout),
        "seed": seed,
        "probe_l2": probe_l2,
        "embedding": embedding_metadata(model, embedding),
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        **extra,
    }
    return Mod10Features(frame, meta, tokens=tok, directions=d10.numpy().astype(np.float32),
                         residues=pd.DataFrame(per_residue), coverage=cover, tasks=[t.to_dict() for t in tasks])


def _check_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value) or value < 0:
        raise InvalidOptionError(f"{name} must be a non-negative number; got {value!r}")
    return float(value)


def _task_from_dict(d: Mapping[str, Any]) -> OrdinalTask:
    return OrdinalTask(str(d["name"]), tuple(int(i) for i in d["token_ids"]), bool(d.get("cyclic", False)),
                       tuple(str(s) for s in d.get("items", ())), tuple(int(v) for v in d.get("values", ())))


@final
class Mod10Features(Result):
    """Ten residue directions of number-like tokens' effective embeddings, with their evidence.

    Build it with :func:`hz.mod10_features`. ``directions`` is ``[10, d_model]`` float32, row
    ``r`` the direction of ``value % 10 == r`` in embedding units; ``to_frame()`` has one row per
    modulus (``modulus, method, accuracy, chance, majority, variance_explained,
    variance_random, n_tokens, n_heldout, n_classes``); ``tokens()`` one row per token;
    ``residues()`` one row per residue of 10; ``coverage()`` the tokens each task gave.
    """

    __slots__ = ("_frame", "_meta", "_tokens", "_directions", "_residues", "_coverage", "_tasks")
    _FORMAT = "Mod10Features"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any], *, tokens: pd.DataFrame, directions: np.ndarray,
                 residues: pd.DataFrame, coverage: pd.DataFrame, tasks: list[dict[str, Any]]) -> None:
        missing = [c for c in _FRAME if c not in frame.columns]
        if missing:
            raise ValueError(f"Mod10Features needs columns {_FRAME}; missing {missing}")
        directions = np.asarray(directions, dtype=np.float32)
        if directions.ndim != 2 or directions.shape[0] != 10:
            raise ValueError(f"directions must be [10, d_model]; got {directions.shape}")
        frame = strings_as_str(frame)
        for col in frame.columns:
            if col in _FRAME_INTS:
                frame[col] = frame[col].astype("int64")
            elif col != "method":
                frame[col] = frame[col].astype("float64")
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)
        self._tokens = strings_as_str(tokens)
        self._directions = directions.copy()
        self._directions.flags.writeable = False
        self._residues = strings_as_str(residues)
        self._coverage = strings_as_str(coverage)
        self._tasks = normalise({"tasks": tasks})["tasks"]

    # -- access ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (method, options, embedding, model, SAE statistics)."""
        return json.loads(json.dumps(self._meta))

    @property
    def method(self) -> str:
        return str(self._meta["method"])

    @property
    def directions(self) -> Float[torch.Tensor, "10 d_model"]:
        """``[10, d_model]`` float32 (a copy): row ``r`` is residue ``r``'s direction."""
        return torch.tensor(self._directions)

    def _row(self, modulus: int) -> dict[str, Any]:
        rows = self._frame[self._frame["modulus"] == modulus]
        return cast(dict[str, Any], rows.iloc[0].to_dict())

    @property
    def probe_accuracy(self) -> float:
        """Held-out accuracy of predicting ``value % 10`` (chance 0.1)."""
        return float(self._row(10)["accuracy"])

    @property
    def variance_explained(self) -> float:
        """Share of the centred embeddings' variance in the span of the ten directions."""
        return float(self._row(10)["variance_explained"])

    @property
    def variance_random(self) -> float:
        """The same share for ten random (seeded) directions: the baseline."""
        return float(self._row(10)["variance_random"])

    @property
    def tasks(self) -> tuple[OrdinalTask, ...]:
        """The tasks the features were fitted on (empty for an ``{id: value}`` mapping whose
        values repeat); :func:`hz.successor_editing` uses them by default."""
        return tuple(_task_from_dict(t) for t in self._tasks)

    def to_frame(self) -> pd.DataFrame:
        """One row per modulus (a copy)."""
        return self._frame.copy()

    def tokens(self) -> pd.DataFrame:
        """One row per token: ``token_id, token, task, value, residue`` (``value % 10``),
        ``split`` (``"train"`` / ``"heldout"``), ``predicted`` (the method's residue) and
        ``proj_0..proj_9`` (the centred embedding's projection on each unit direction)."""
        return self._tokens.copy()

    def residues(self) -> pd.DataFrame:
        """One row per residue of 10: ``n_train, n_heldout, accuracy`` (held-out recall),
        ``norm`` of the direction, ``cosine_with_means`` (with the class-mean direction; the
        paper finds probe and SAE directions agree with it) and, for the SAE, the chosen
        ``feature`` and its ``selectivity``."""
        return self._residues.copy()

    def coverage(self) -> pd.DataFrame:
        """Tokens per task: ``task, n_tokens, n_used`` (after removing ids an earlier task
        holds) and ``note`` (why a list gave nothing)."""
        return self._coverage.copy()

    def edit(self, x: Float[torch.Tensor, "... d_model"], i: int, j: int) -> Float[torch.Tensor, "... d_model"]:
        """``x - directions[i] + directions[j]``: move ``x`` from residue ``i`` to ``j`` (a new
        tensor in ``x``'s dtype and device; ``x`` is not changed)."""
        i = check_int(i, "i", minimum=0)
        j = check_int(j, "j", minimum=0)
        if i > 9 or j > 9:
            raise InvalidOptionError(f"i and j are residues of 10, in 0..9; got i={i}, j={j}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InvalidOptionError(f"x must be a floating-point tensor [..., d_model]; got {type(x).__name__}")
        d = self._directions.shape[1]
        if x.ndim == 0 or x.shape[-1] != d:
            raise InvalidOptionError(f"x must have shape [..., {d}] (d_model of the features); got {tuple(x.shape)}")
        # both directions in x's precision before subtracting: float64 inputs get no float32 rounding
        d_i, d_j = (torch.tensor(self._directions[k]).to(device=x.device, dtype=x.dtype) for k in (i, j))
        return x - d_i + d_j

    # -- display --------------------------------------------------------------------------
    def _projection_rows(self, n: int) -> pd.DataFrame:
        """The tokens of the heatmap: the numbers 0..n-1 of the first numbers task when it has
        most of them, else an even sample across tasks."""
        tok = self._tokens
        for name in dict.fromkeys(tok["task"]):
            part = cast(pd.DataFrame, tok[(tok["task"] == name) & (tok["value"] < n)])
            if str(name).startswith("numbers") and len(part) >= n // 2:
                return part.sort_values("value", kind="stable")
        if len(tok) <= n:
            return tok
        pick = np.linspace(0, len(tok) - 1, n).round().astype(int)
        return tok.iloc[np.unique(pick)]

    def plot(self, kind: str = "projection", n: int = 100) -> Any:
        """A plotly ``Figure`` (returned, never shown).

        ``kind="projection"``: tokens (rows; the numbers 0..n-1 when present, else a sample
        across tasks) by residue direction (columns), coloured by the projection of the
        centred embedding on the unit direction, as in the paper's figure. ``kind="moduli"``:
        held-out accuracy and variance explained per modulus, against chance and random
        directions.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        name = str(self._meta.get("model", {}).get("name", "model"))
        if kind == "projection":
            n = positive_int("n", n)
            part = self._projection_rows(n)
            # plotly merges rows with equal labels: a string that two tokens share gets its id
            labels = [f"{t!r}" if (part["token"] == t).sum() == 1 else f"{t!r} #{i}"
                      for t, i in zip(part["token"], part["token_id"])]
            z = part[_PROJ].to_numpy()
            lim = float(np.abs(z).max()) if z.size else 1.0
            fig = go.Figure(go.Heatmap(
                z=z, x=[f"mod10 = {r}" for r in range(10)], y=labels, colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim,
                hovertemplate="%{y} on %{x}: %{z:.3f}<extra></extra>", colorbar={"title": "projection"},
            ))
            fig.update_yaxes(autorange="reversed", title_text="token")
            fig.update_xaxes(title_text="residue direction")
            fig.update_layout(title=html.escape(f"headzoo: mod-10 directions ({self.method}) of {name}"),
                              height=max(400, 9 * len(labels) + 160), width=640)
            return fig
        if kind == "moduli":
            f = self._frame
            mods = [str(m) for m in f["modulus"]]
            fig = make_subplots(rows=1, cols=2, subplot_titles=["held-out accuracy", "variance explained"])
            fig.add_trace(go.Bar(x=mods, y=f["accuracy"], name="accuracy", marker_color="#08306b"), row=1, col=1)
            fig.add_trace(go.Scatter(x=mods, y=f["chance"], name="chance (1/m)", mode="markers",
                                     marker={"symbol": "line-ew-open", "size": 22, "color": "#d62728"}), row=1, col=1)
            fig.add_trace(go.Scatter(x=mods, y=f["majority"], name="majority class", mode="markers",
                                     marker={"symbol": "x", "size": 9, "color": "#ff7f0e"}), row=1, col=1)
            fig.add_trace(go.Bar(x=mods, y=f["variance_explained"], name="m directions", marker_color="#2171b5"), row=1, col=2)
            fig.add_trace(go.Bar(x=mods, y=f["variance_random"], name="m random directions", marker_color="#bdbdbd"), row=1, col=2)
            fig.update_xaxes(title_text="modulus m", type="category")
            fig.update_yaxes(range=[0, 1])
            fig.update_layout(title=html.escape(f"headzoo: value mod m from the embeddings of {name} ({self.method})"),
                              barmode="group", height=420, width=900)
            return fig
        raise InvalidOptionError(f"kind must be 'projection' or 'moduli'; got {kind!r}")

    def __repr__(self) -> str:
        return (f"Mod10Features({self.method}, {int(self._frame['n_tokens'].iloc[0])} tokens, held-out accuracy "
                f"{self.probe_accuracy:.3f}, variance explained {self.variance_explained:.3f} vs {self.variance_random:.3f} random)")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the per-modulus table and the coverage."""
        esc = html.escape
        name = str(self._meta.get("model", {}).get("name", ""))
        head = "".join(f"<th>{esc(c)}</th>" for c in ("modulus", "accuracy", "chance", "majority",
                                                      "variance explained", "random", "tokens", "held out"))
        rows = "".join(
            f"<tr><td>{int(r['modulus'])}</td><td style='background:{colour(float(r['accuracy']), 0.0, 1.0)}'>"
            f"{float(r['accuracy']):.3f}</td><td>{float(r['chance']):.3f}</td><td>{float(r['majority']):.3f}</td>"
            f"<td>{float(r['variance_explained']):.3f}</td><td>{float(r['variance_random']):.3f}</td>"
            f"<td>{int(r['n_tokens'])}</td><td>{int(r['n_heldout'])}</td></tr>"
            for r in cast(list[dict[str, Any]], self._frame.to_dict("records"))
        )
        cover = ", ".join(f"{esc(str(t))}: {int(n)}" for t, n in zip(self._coverage["task"], self._coverage["n_used"]) if n)
        sae = self._meta.get("sae")
        note = "" if not sae else (
            f"<p>SAE: {int(sae['size'])} features, L0 {float(sae['l0']):.2f}, reconstruction {float(sae['reconstruction_train']):.3f} "
            f"(train) / {float(sae['reconstruction_heldout']):.3f} (held out), {int(sae['dead'])} dead</p>")
        return (f"<div style='font-family:sans-serif;font-size:12px'><b>Mod10Features</b> &middot; {esc(name)} "
                f"&middot; {esc(self.method)} &middot; {esc(str(self._meta['embedding']['variant']))}"
                f"<table style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>{note}"
                f"<p>tokens per task: {cover}</p></div>")

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta, tables={"tokens": self._tokens, "residues": self._residues,
                                                        "coverage": self._coverage},
                       arrays={"directions": np.array(self._directions)}, records={"tasks": self._tasks})

    @classmethod
    def _from_payload(cls, payload: Payload) -> Mod10Features:
        return cls(payload.frame, payload.meta, tokens=payload.tables["tokens"], directions=payload.arrays["directions"],
                   residues=payload.tables["residues"], coverage=payload.tables["coverage"],
                   tasks=payload.records["tasks"])


# -- editing ---------------------------------------------------------------------------------------
def _check_head(head: Any, n_layers: int, n_heads: int) -> tuple[int, int]:
    if isinstance(head, (str, bytes)) or not isinstance(head, (Sequence, np.ndarray, torch.Tensor)) or len(head) != 2:
        raise InvalidOptionError(f"head must be one (layer, head) pair, e.g. (9, 1); got {head!r}")
    items = head.tolist() if isinstance(head, (np.ndarray, torch.Tensor)) else list(head)
    layer, h = (check_int(v, f"head: {n} in {head!r}") for v, n in zip(items, ("layer", "head")))
    if not (0 <= layer < n_layers and 0 <= h < n_heads):
        raise InvalidOptionError(
            f"head {(layer, h)} is outside the model ({n_layers} layers x {n_heads} heads; both count from 0)"
        )
    return layer, h


def _hits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: the target column's logit beats every other by more than a tie."""
    best = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf")).amax(1)
    return best > others + _TIE * logits.abs().amax(1)


def successor_editing(
    model: Any,
    head: tuple[int, int],
    features: Mod10Features,
    tasks: Any = None,
    *,
    seed: int = 0,
) -> SuccessorEditing:
    """Edit each number-like token's residue by vector arithmetic and read what the head predicts.

    For each task, each source token ``s`` (value ``v``, residue ``i = v % 10``) and each ``j !=
    i``: the edited item is the task's item of value ``v - i + j`` and the expected output its
    successor (``task.successor``); pairs where either is missing are skipped. The head reads
    ``x' = features.edit(W_EE[s], i, j)`` (the effective embedding the features were fitted
    on); its prediction is the argmax of ``x' @ W_OV @ W_U`` over the task's tokens
    (:meth:`hz.WeightCircuits.ov_logits`: the head's LayerNorm and the final one's linear part
    included, as the ``successor`` detector scores). A success is the expected token's logit
    beating every other (a tie is a miss). ``carry`` marks pairs whose edited value ends in 9:
    the successor crosses into the next ten, which a units edit cannot express. The control
    edits the same source by ``x + r``, ``r`` random (seeded) with the norm of
    ``directions[j] - directions[i]``.

    Args:
        model: the model the features were fitted on (same ``d_model``).
        head: ``(layer, head)``.
        features: :class:`hz.Mod10Features` from :func:`hz.mod10_features`.
        tasks: ``None``: the tasks the features were fitted on. Else a list of
            :class:`hz.OrdinalTask` (or what :func:`hz.as_ordinal_tasks` accepts).
        seed: seeds the control's random directions.

    Returns:
        :class:`SuccessorEditing`: one row per (source, target residue) pair.

    Raises:
        InvalidOptionError: a bad head, features that are not :class:`hz.Mod10Features` or come
            from a model of another width, no tasks.
        InvalidTokensError: task ids outside the vocabulary.
        EmptyResultError: no task has an edit whose item and successor both exist.
    """
    if not isinstance(features, Mod10Features):
        raise InvalidOptionError(
            f"features must be hz.Mod10Features (from hz.mod10_features(model)); got {type(features).__name__}"
        )
    info = model_info(model)
    layer, h = _check_head(head, info.n_layers, info.n_heads)
    seed = check_int(seed, "seed", minimum=0)
    fmeta = features.meta
    d_feat = int(features._directions.shape[1])
    if d_feat != info.d_model:
        raise InvalidOptionError(
            f"the features were fitted on a model with d_model={d_feat} ({fmeta['model'].get('name')!s}); this model "
            f"has d_model={info.d_model}. Fit them on this model: hz.mod10_features(model)"
        )
    if tasks is None:
        chosen = features.tasks
        if not chosen:
            raise InvalidOptionError(
                "the features were fitted on {token_id: value} tokens whose values repeat, so they hold no ordinal "
                "task to edit; pass tasks=[hz.OrdinalTask(...), ...] (e.g. from hz.numeric_tasks(model.tokenizer))"
            )
    else:
        chosen = as_tasks(tasks)
    for name in ("W_U", "W_V", "W_O"):
        if not has_weight(model, name):
            raise UnsupportedModelError(f"{type(model).__name__} exposes no {name}; editing reads the head's OV circuit.")
    circuits = WeightCircuits(model)
    n_out = circuits.n_outputs
    check_task_ids(chosen, n_out, "tasks")
    variant = str(fmeta["embedding"]["variant"])
    directions = features.directions.double()
    union = sorted({t for task in chosen for t in task.token_ids})
    where = {t: k for k, t in enumerate(union)}
    w_ee = circuits.embedding(torch.tensor(union), variant).double().cpu()  # type: ignore[arg-type]
    strings = dict(zip(union, token_strings(model, union)))
    g = torch.Generator().manual_seed(seed)
    pair_rows: list[dict[str, Any]] = []
    plain_rows: list[dict[str, Any]] = []
    for task in chosen:
        ids = list(task.token_ids)
        by_value = dict(zip(task.index_values, ids))
        cols = torch.tensor(ids)
        col_of = {t: k for k, t in enumerate(ids)}
        # unedited: does the head map s to successor(s)?
        plain = [(s, e) for s, e in task.pairs()]
        if plain:
            xs = w_ee[[where[s] for s, _ in plain]]
            logits = circuits.ov_logits(layer, xs.float(), cols)[h].double().cpu()
            target = torch.tensor([col_of[e] for _, e in plain])
            ok = _hits(logits, target)
            arg = logits.argmax(1)
            for k, (s, e) in enumerate(plain):
                p = ids[int(arg[k])]
                plain_rows.append({"task": task.name, "source": strings[s], "source_id": s, "expected": strings[e],
                                   "expected_id": e, "predicted": strings[p], "predicted_id": p, "success": bool(ok[k])})
        edits = []
        for s, v in zip(ids, task.index_values):
            i = v % 10
            for j in range(10):
                if j == i:
                    continue
                edited = by_value.get(v - i + j)
                expected = task.successor(edited) if edited is not None else None
                if edited is None or expected is None:
                    continue
                edits.append((s, v, i, j, edited, expected))
        if not edits:
            continue
        src = w_ee[[where[s] for s, *_ in edits]]
        i_idx = torch.tensor([e[2] for e in edits])
        j_idx = torch.tensor([e[3] for e in edits])
        delta = directions[j_idx] - directions[i_idx]  # [P, d_model]
        x_edit = src - directions[i_idx] + directions[j_idx]  # features.edit, row by row
        r = torch.randn(len(edits), info.d_model, generator=g, dtype=torch.float64)
        x_ctrl = src + r / r.norm(dim=1, keepdim=True) * delta.norm(dim=1, keepdim=True)
        target = torch.tensor([col_of[e[5]] for e in edits])
        logits = circuits.ov_logits(layer, x_edit.float(), cols)[h].double().cpu()
        ctrl = circuits.ov_logits(layer, x_ctrl.float(), cols)[h].double().cpu()
        ok, ok_ctrl = _hits(logits, target), _hits(ctrl, target)
        arg, arg_ctrl = logits.argmax(1), ctrl.argmax(1)
        for k, (s, v, i, j, edited, expected) in enumerate(edits):
            p, pc = ids[int(arg[k])], ids[int(arg_ctrl[k])]
            pair_rows.append({
                "task": task.name, "source": strings[s], "source_id": s, "source_value": v, "source_index": i,
                "target_index": j, "edited": strings[edited], "edited_id": edited, "expected": strings[expected],
                "expected_id": expected, "predicted": strings[p], "predicted_id": p, "success": bool(ok[k]),
                "carry": (v - i + j) % 10 == 9, "control_predicted": strings[pc], "control_predicted_id": pc,
                "control_success": bool(ok_ctrl[k]),
            })
    if not pair_rows:
        raise EmptyResultError(
            f"no task has an edit whose item and successor are both single tokens ({[t.name for t in chosen]}); "
            "editing needs tasks with values that differ only in the last digit, such as the numbers 0-99"
        )
    frame = pd.DataFrame(pair_rows, columns=_PAIRS)
    unedited = pd.DataFrame(plain_rows, columns=_UNEDITED)
    meta = {
        "head": [layer, h],
        "seed": seed,
        "features": {k: fmeta.get(k) for k in ("method", "holdout", "seed", "model_config_hash")},
        "same_model": fmeta.get("model_config_hash") == info.config_hash(),
        "embedding": embedding_metadata(model, variant),
        "tasks": [{"name": t.name, "n_tokens": len(t.token_ids)} for t in chosen],
        "n_tokens": len(union),
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
    }
    return SuccessorEditing(frame, meta, unedited)


@final
class SuccessorEditing(Result):
    """What a successor head predicts after each mod-10 edit of its input.

    Build it with :func:`hz.successor_editing`. ``to_frame()`` has one row per (source token,
    target residue): ``task, source, source_id, source_value, source_index`` (``i``),
    ``target_index`` (``j``), ``edited, edited_id`` (the item of value ``v - i + j``),
    ``expected, expected_id`` (its successor), ``predicted, predicted_id``, ``success``,
    ``carry`` (the edited value ends in 9) and the random control's ``control_predicted,
    control_predicted_id, control_success``. ``summary()`` aggregates per task; ``unedited()``
    says whether the head maps each unedited source to its successor.
    """

    __slots__ = ("_frame", "_meta", "_unedited")
    _FORMAT = "SuccessorEditing"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any], unedited: pd.DataFrame) -> None:
        missing = [c for c in _PAIRS if c not in frame.columns]
        if missing:
            raise ValueError(f"SuccessorEditing needs columns {_PAIRS}; missing {missing}")
        frame = strings_as_str(frame)
        for col in _PAIR_INTS:
            frame[col] = frame[col].astype("int64")
        for col in _PAIR_BOOLS:
            frame[col] = frame[col].astype(bool)
        unedited = strings_as_str(unedited)
        for col in ("source_id", "expected_id", "predicted_id"):
            unedited[col] = unedited[col].astype("int64")
        unedited["success"] = unedited["success"].astype(bool)
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)
        self._unedited = unedited

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._meta))

    @property
    def head(self) -> tuple[int, int]:
        return cast(tuple[int, int], tuple(self._meta["head"]))

    def to_frame(self) -> pd.DataFrame:
        """One row per edit (a copy)."""
        return self._frame.copy()

    def unedited(self) -> pd.DataFrame:
        """One row per ``(s, successor(s))`` pair of the tasks, unedited: ``task, source,
        source_id, expected, expected_id, predicted, predicted_id, success``. Its per-task mean
        is the ``successor`` detector's per-task accuracy for this head."""
        return self._unedited.copy()

    def summary(self) -> pd.DataFrame:
        """One row per task with edits and ``"all"`` (every edit; its ``n_tokens`` counts the
        distinct tokens of all tasks, its ``chance`` is the mean over edits): ``n_tokens,
        n_pairs, n_carry, success``,
        ``success_no_carry``, ``success_carry``, ``control_success``, ``unedited`` (the head's
        accuracy on the task's own pairs) and ``chance`` (1 / the task's tokens)."""
        sizes = {t["name"]: int(t["n_tokens"]) for t in self._meta["tasks"]}
        f, u = self._frame, self._unedited
        rows = []

        def row(name: str, part: pd.DataFrame, plain: pd.DataFrame, chance: float, n_tokens: int) -> dict[str, Any]:
            carry = part["carry"].to_numpy()
            ok = part["success"].to_numpy()
            return {
                "task": name, "n_tokens": n_tokens, "n_pairs": len(part), "n_carry": int(carry.sum()),
                "success": float(ok.mean()) if len(part) else float("nan"),
                "success_no_carry": float(ok[~carry].mean()) if (~carry).any() else float("nan"),
                "success_carry": float(ok[carry].mean()) if carry.any() else float("nan"),
                "control_success": float(part["control_success"].to_numpy().mean()) if len(part) else float("nan"),
                "unedited": float(plain["success"].to_numpy().mean()) if len(plain) else float("nan"),
                "chance": chance,
            }

        for name, n in sizes.items():
            part = cast(pd.DataFrame, f[f["task"] == name])
            if len(part):
                rows.append(row(name, part, cast(pd.DataFrame, u[u["task"] == name]), 1.0 / n, n))
        chance_all = float(np.mean([1.0 / sizes[t] for t in f["task"]]))
        rows.append(row("all", f, u, chance_all, int(self._meta["n_tokens"])))
        return pd.DataFrame(rows)

    def matrix(self, column: str = "success") -> pd.DataFrame:
        """Source residue ``i`` (rows) x target residue ``j`` (columns): mean of ``column`` over
        the pairs of all tasks (NaN where there is none, e.g. the diagonal)."""
        if column not in ("success", "control_success", "carry"):
            raise InvalidOptionError(f"column must be 'success', 'control_success' or 'carry'; got {column!r}")
        table = self._frame.pivot_table(index="source_index", columns="target_index", values=column, aggfunc="mean")
        table = table.astype(float).reindex(index=range(10), columns=range(10))
        table.index.name, table.columns.name = "source_index", "target_index"
        return table

    def plot(self, kind: str = "heatmap") -> Any:
        """A plotly ``Figure`` (returned, never shown). ``kind="heatmap"``: success rate by
        source residue ``i`` (rows) and target residue ``j`` (columns), as in the paper;
        ``kind="tasks"``: per-task bars of success (with and without carry), the control, the
        unedited accuracy and chance."""
        import plotly.graph_objects as go

        layer, h = self.head
        name = str(self._meta.get("model", {}).get("name", "model"))
        if kind == "heatmap":
            table = self.matrix()
            fig = go.Figure(go.Heatmap(
                z=table.to_numpy(), x=[str(j) for j in table.columns], y=[str(i) for i in table.index],
                colorscale="Blues", zmin=0.0, zmax=1.0, colorbar={"title": "success"},
                hovertemplate="mod10 %{y} -> %{x}: %{z:.2f}<extra></extra>",
            ))
            fig.update_xaxes(title_text="target residue j", type="category")
            fig.update_yaxes(title_text="source residue i", type="category", autorange="reversed")
            fig.update_layout(title=html.escape(f"headzoo: successor editing of L{layer}H{h} in {name}"),
                              height=480, width=540)
            return fig
        if kind == "tasks":
            s = self.summary()
            fig = go.Figure()
            for col, colour_ in (("success", "#08306b"), ("success_no_carry", "#2171b5"),
                                 ("control_success", "#bdbdbd"), ("unedited", "#31a354")):
                fig.add_trace(go.Bar(x=list(s["task"]), y=s[col], name=col, marker_color=colour_))
            fig.add_trace(go.Scatter(x=list(s["task"]), y=s["chance"], name="chance", mode="markers",
                                     marker={"symbol": "line-ew-open", "size": 22, "color": "#d62728"}))
            fig.update_layout(title=html.escape(f"headzoo: successor editing of L{layer}H{h} in {name}"),
                              barmode="group", yaxis={"range": [0, 1]}, height=420, width=max(520, 90 * len(s)))
            return fig
        raise InvalidOptionError(f"kind must be 'heatmap' or 'tasks'; got {kind!r}")

    def __repr__(self) -> str:
        s = self.summary().iloc[-1]
        layer, h = self.head
        return (f"SuccessorEditing(L{layer}H{h}, {int(s['n_pairs'])} edits, success {s['success']:.3f}, "
                f"no carry {s['success_no_carry']:.3f}, control {s['control_success']:.3f})")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the per-task summary."""
        esc = html.escape
        layer, h = self.head
        s = self.summary()
        cols = ["n_pairs", "success", "success_no_carry", "control_success", "unedited", "chance"]
        head = "".join(f"<th>{esc(c)}</th>" for c in ["task", *cols])
        body = "".join(
            "<tr><td>" + esc(str(r["task"])) + "</td>" + "".join(
                f"<td>{int(r[c])}</td>" if c == "n_pairs" else
                f"<td style='background:{colour(float(r[c]), 0.0, 1.0)}'>{float(r[c]):.3f}</td>" for c in cols) + "</tr>"
            for r in cast(list[dict[str, Any]], s.to_dict("records"))
        )
        name = str(self._meta.get("model", {}).get("name", ""))
        return (f"<div style='font-family:sans-serif;font-size:12px'><b>SuccessorEditing</b> &middot; {esc(name)} "
                f"&middot; L{layer}H{h} &middot; features: {esc(str(self._meta['features']['method']))}"
                f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table></div>")

    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta, tables={"unedited": self._unedited})

    @classmethod
    def _from_payload(cls, payload: Payload) -> SuccessorEditing:
        return cls(payload.frame, payload.meta, payload.tables["unedited"])
