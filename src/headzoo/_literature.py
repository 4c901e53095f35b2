"""What the papers called a head: a catalogue of published heads, and how headzoo's scores agree.

Circuit papers name heads of public models by layer and head: the IOI circuit of GPT-2 small
(Wang et al. 2022, arXiv 2211.00593), its copy-suppression head 10.7 (McDougall et al. 2023,
arXiv 2310.04625), the retrieval heads of long-context models (Wu et al. 2024, arXiv
2404.15574). The catalogue ships as package data (``headzoo/_data/literature/heads.csv``, its
README gives every source), one row per claim with its citation, keyed by the model's Hugging
Face name; :func:`literature_agreement` sets a model's scores beside it.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
from typing import Any, cast

import pandas as pd

from headzoo._errors import CorruptFileError, EmptyResultError, InvalidOptionError
from headzoo._registry import list_detectors
from headzoo._results import HeadScores

__all__ = ["published_heads", "literature_agreement", "normalise_model_name", "parse_catalogue", "NO_DETECTOR"]

#: the ``label`` of a catalogued head whose role no headzoo detector measures
NO_DETECTOR = "none"

_COLUMNS = ["model", "layer", "head", "label", "paper_label", "citation", "source", "verified", "note"]
_TEXT = ["model", "label", "paper_label", "citation", "source", "note"]
_REQUIRED = ["model", "label", "paper_label", "citation", "source"]
#: names that TransformerLens and people use for the same weights as a catalogued name
_ALIASES = {"gpt2-small": "gpt2"}
_AGREEMENT = ["model", "layer", "head", "label", "paper_label", "citation", "verified",
              "headzoo_score", "threshold", "agrees", "headzoo_labels"]


def normalise_model_name(name: str) -> str:
    """The key a model name is matched by: lower case, without an organisation prefix or a
    path (``"EleutherAI/pythia-1.4b"`` -> ``"pythia-1.4b"``), with aliases resolved
    (``"gpt2-small"`` -> ``"gpt2"``).

    Raises:
        InvalidOptionError: ``name`` is not a non-empty string.
    """
    if not isinstance(name, str) or not name.strip("/ \t\n"):
        raise InvalidOptionError(f"a model name must be a non-empty string such as 'gpt2'; got {name!r}")
    key = name.strip().rstrip("/").rsplit("/", 1)[-1].strip().lower()
    return _ALIASES.get(key, key)


@functools.cache
def _catalogue() -> pd.DataFrame:
    """The parsed and checked CSV (cached: callers get copies)."""
    path = importlib.resources.files("headzoo").joinpath("_data/literature/heads.csv")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"the literature catalogue headzoo/_data/literature/heads.csv cannot be read ({exc}); "
                               "reinstall headzoo") from exc
    return parse_catalogue(text)


def parse_catalogue(text: str) -> pd.DataFrame:
    """Parse and check the catalogue's CSV text (see the README beside it for the columns).

    Raises:
        CorruptFileError: it is not CSV with exactly the catalogue's columns, a required text
            is empty, a layer or head is not a non-negative integer, or ``verified`` is not
            ``true``/``false``.
    """
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except ValueError as exc:
        raise CorruptFileError(f"headzoo/_data/literature/heads.csv is not valid CSV ({exc}); reinstall headzoo") from exc
    if list(frame.columns) != _COLUMNS:
        raise CorruptFileError(f"headzoo/_data/literature/heads.csv must have the columns {_COLUMNS}; "
                               f"it has {list(frame.columns)}. Reinstall headzoo or fix the file")
    bad: list[str] = []
    for col in _REQUIRED:
        empty = frame.index[frame[col].str.strip() == ""].tolist()
        bad += [f"row {i + 2}: empty {col}" for i in empty]
    for col in ("layer", "head"):
        not_int = frame.index[~frame[col].str.fullmatch(r"\d+")].tolist()
        bad += [f"row {i + 2}: {col} {frame.at[i, col]!r} is not a non-negative integer" for i in not_int]
    verified = cast(pd.Series, frame["verified"])
    not_bool = frame.index[~verified.isin(["true", "false"]).to_numpy()].tolist()
    bad += [f"row {i + 2}: verified {frame.at[i, 'verified']!r} is not true or false" for i in not_bool]
    if bad:
        raise CorruptFileError("headzoo/_data/literature/heads.csv is malformed: " + "; ".join(bad[:5])
                               + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    frame["layer"] = frame["layer"].astype("int64")
    frame["head"] = frame["head"].astype("int64")
    frame["verified"] = frame["verified"] == "true"
    frame["_key"] = frame["model"].map(normalise_model_name)
    return frame


def _model_name(model: Any) -> str:
    """The name of ``model``: a string as given, else its config's ``model_name`` or ``name_or_path``."""
    if isinstance(model, str):
        return model
    if isinstance(model, HeadScores):
        name = model.meta.get("model", {}).get("name")
        if isinstance(name, str) and name:
            return name
        raise InvalidOptionError("these scores record no model name; pass model='gpt2' (the catalogued name) as well")
    cfg = getattr(model, "cfg", None)
    for owner, attr in ((cfg, "model_name"), (cfg, "name_or_path"), (model, "name_or_path")):
        name = getattr(owner, attr, None) if owner is not None else None
        if isinstance(name, str) and name.strip():
            return name
    raise InvalidOptionError(
        f"model must be a model name (e.g. 'gpt2') or a TransformerLens model whose cfg.model_name names it; "
        f"got {type(model).__name__}, which has neither"
    )


def published_heads(model: Any = None) -> pd.DataFrame:
    """Heads that papers named, with their citations.

    Args:
        model: ``None`` for the whole catalogue; a model name (``"gpt2"``, ``"gpt2-small"``,
            ``"EleutherAI/pythia-1.4b"``, ``"pythia-1.4b"``: case and organisation prefix do not
            matter), a TransformerLens model (its ``cfg.model_name``) or an :class:`hz.HeadScores`
            (the model name it records) for that model's rows.

    Returns:
        One row per catalogued claim, columns ``model, layer, head, label, paper_label,
        citation, source, verified, note`` (``layer`` and ``head`` int64, ``verified`` bool,
        the rest str). ``label`` is a headzoo detector name, or ``"none"`` where no detector
        measures that role. Empty (same columns) when the model is not catalogued.

    Raises:
        InvalidOptionError: ``model`` is neither a name nor a model with a name.
    """
    table = _catalogue()
    if model is not None:
        key = normalise_model_name(_model_name(model))
        table = cast(pd.DataFrame, table[table["_key"] == key])
    return table.drop(columns="_key").reset_index(drop=True)


def literature_agreement(scores: HeadScores, model: Any = None) -> pd.DataFrame:
    """Published labels beside headzoo's scores, one row per catalogued head of the model.

    Args:
        scores: the model's :class:`hz.HeadScores` (from :func:`hz.detect`).
        model: the catalogued name (or a model) to compare with; by default the model name
            recorded in ``scores`` (``cfg.model_name`` of the model scored).

    Returns:
        Columns ``model, layer, head, label, paper_label, citation, verified`` (from the
        catalogue), ``headzoo_score`` (that head's score from the detector named by ``label``;
        NaN when that detector was not run or did not score the head), ``threshold`` (the
        detector's threshold; NaN without one), ``agrees`` (nullable boolean: score >=
        threshold; NA where either is missing) and ``headzoo_labels`` (the detectors whose
        threshold this head passes in ``scores.labels()``, comma-separated in run order; ""
        for none).

    Raises:
        InvalidOptionError: ``scores`` is not a HeadScores; or the model's shape cannot hold a
            catalogued head (the model is named like a catalogued one but is not it).
        EmptyResultError: the catalogue has no head of that model.
    """
    if not isinstance(scores, HeadScores):
        raise InvalidOptionError(f"scores must be an hz.HeadScores (from hz.detect); got {type(scores).__name__}")
    name = _model_name(scores if model is None else model)
    rows = published_heads(name)
    if rows.empty:
        known = sorted(set(published_heads()["model"]))
        raise EmptyResultError(
            f"the literature catalogue has no head of a model named {name!r} (matched as "
            f"{normalise_model_name(name)!r}); catalogued models: {known}. Pass model='<one of those>' "
            "if these scores are of one of them under another name"
        )
    n_layers, n_heads = scores.shape
    if n_layers and n_heads:
        outside = rows[(rows["layer"] >= n_layers) | (rows["head"] >= n_heads)]
        if not outside.empty:
            first = outside.iloc[0]
            raise InvalidOptionError(
                f"the scores are of a model with {n_layers} layers x {n_heads} heads, but the catalogue's "
                f"{name!r} has head {int(first['layer'])}.{int(first['head'])} ({len(outside)} of {len(rows)} "
                "catalogued heads lie outside): the model is named like a catalogued one but is not it. "
                "Pass model= with its real name, or give it a cfg.model_name of its own"
            )
    frame = scores.to_frame()
    run = set(scores.detectors)
    over = scores.labels()
    passed: dict[tuple[int, int], list[str]] = {}
    for det, layer, head in zip(over["detector"], over["layer"], over["head"], strict=True):
        passed.setdefault((int(layer), int(head)), []).append(str(det))
    lookup = {(str(d), int(la), int(h)): float(s)
              for d, la, h, s in zip(frame["detector"], frame["layer"], frame["head"], frame["score"], strict=True)}
    thresholds = _thresholds(scores)
    out = rows[["model", "layer", "head", "label", "paper_label", "citation", "verified"]].copy()
    values, limits, agrees = [], [], []
    for label, layer, head in zip(out["label"], out["layer"], out["head"], strict=True):
        score = lookup.get((label, int(layer), int(head)), math.nan) if label in run else math.nan
        limit = thresholds.get(label, math.nan)
        values.append(score)
        limits.append(limit)
        agrees.append(pd.NA if math.isnan(score) or math.isnan(limit) else bool(score >= limit))
    out["headzoo_score"] = pd.Series(values, index=out.index, dtype="float64")
    out["threshold"] = pd.Series(limits, index=out.index, dtype="float64")
    out["agrees"] = pd.Series(agrees, index=out.index, dtype="boolean")
    out["headzoo_labels"] = [", ".join(passed.get((int(la), int(h)), [])) for la, h in zip(out["layer"], out["head"], strict=True)]
    return cast(pd.DataFrame, out[_AGREEMENT]).reset_index(drop=True)


def _thresholds(scores: HeadScores) -> dict[str, float]:
    """Threshold per detector: the one recorded in ``scores`` for detectors that were run, the
    registry's for the rest (so a row says what its detector would need even when not run)."""
    table = list_detectors()
    out = {str(n): float(t) for n, t in zip(table["name"], table["threshold"], strict=True) if t is not None and t == t}
    meta = scores.meta.get("detectors", {})
    for det in scores.detectors:
        thr = meta.get(det, {}).get("threshold") if isinstance(meta.get(det), dict) else None
        if thr is not None:
            out[det] = float(thr)
        else:
            out.pop(det, None)
    return out
