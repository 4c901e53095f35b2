"""Comparing two atlases: do the same heads do the same jobs in two models?

The retrieval-head paper (Wu et al. 2024, arXiv 2404.15574) reports that the heads that
retrieve survive fine-tuning and context extension: a model's derivatives keep the retrieval
heads of their base model. :func:`compare_atlases` puts that question to every detector at
once. Per detector it ranks the heads of each atlas by score and reports the Spearman rank
correlation of the two rankings and the overlap of their top heads (as many as pass the
detector's threshold in either atlas), and lists the heads that crossed a threshold or moved
far in rank. The two atlases must come from models of the same shape (layers x heads).
"""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import math
import os
from pathlib import Path
from typing import Any, cast, final

import numpy as np
import pandas as pd

from headzoo._errors import CorruptFileError, InvalidOptionError
from headzoo._io import Payload, Result, positive_int, strings_as_str, write_atomic
from headzoo._results import HeadScores

__all__ = ["compare_atlases", "AtlasComparison"]

_COLUMNS = ["detector", "layer", "head", "score_a", "score_b", "delta", "rank_a", "rank_b", "over_a", "over_b"]
_MOVED_RANKS = 5  # default rank change that counts as moved


def _corrupt(path: Path, why: str) -> CorruptFileError:
    err = CorruptFileError(f"{path} {why}")
    err.path = path  # type: ignore[attr-defined]
    return err


def _side(value: Any, which: str) -> tuple[HeadScores, dict[str, Any]]:
    """The scores of one atlas and what to call it: ``(scores, {"name", "source"})``.

    Raises:
        InvalidOptionError: not an atlas nor a folder, or the folder does not exist.
        CorruptFileError: the folder is not one ``atlas.write()`` wrote (a file is missing or
            unreadable); the message names the path.
    """
    from headzoo._atlas import HeadAtlas

    if isinstance(value, HeadAtlas):
        return value.scores, {"name": str(value.meta.get("model", {}).get("name", "model")), "source": "HeadAtlas"}
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidOptionError(
            f"{which} must be an hz.HeadAtlas or the folder atlas.write() wrote; got {type(value).__name__}"
        )
    folder = Path(value)
    if not folder.exists():
        raise InvalidOptionError(f"{which}: {folder} does not exist; give the folder atlas.write() or "
                                 "`headzoo atlas --out DIR` wrote")
    if not folder.is_dir():
        raise InvalidOptionError(f"{which}: {folder} is a file, not an atlas folder; give the folder atlas.write() or "
                                 "`headzoo atlas --out DIR` wrote (it holds scores.parquet and meta.json)")
    missing = [n for n in ("scores.parquet", "meta.json") if not (folder / n).is_file()]
    if missing:
        raise _corrupt(folder, f"is not an atlas folder: it has no {' and no '.join(missing)}. Write one with "
                               "atlas.write(DIR) or `headzoo atlas --out DIR`")
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(folder / "meta.json", f"is not valid JSON ({exc}); write the atlas again") from None
    if not isinstance(meta, dict):
        raise _corrupt(folder / "meta.json", "does not hold an atlas's metadata (a JSON object); write the atlas again")
    scores = HeadScores.load(folder / "scores.parquet")
    name = meta.get("model", {}).get("name") if isinstance(meta.get("model"), dict) else None
    return scores, {"name": str(name or scores.meta.get("model", {}).get("name", "model")), "source": str(folder)}


def _ranks(scores: np.ndarray, layer: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score; ties in (layer, head) order, so ranks are distinct and stable."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), int(layer[i]), int(head[i])))
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties). Identical scores agree perfectly
    (1.0) even when constant; otherwise a constant side has no correlation (NaN)."""
    if len(a) == 0:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_atlases(a: Any, b: Any) -> AtlasComparison:
    """Compare two atlases head by head, detector by detector.

    Args:
        a, b: ``hz.HeadAtlas`` objects or the folders ``atlas.write()`` (or ``headzoo atlas
            --out DIR``) wrote, holding ``scores.parquet`` and ``meta.json``.

    Returns:
        :class:`AtlasComparison`: one row per head and detector run in both.

    Raises:
        InvalidOptionError: not an atlas or a folder; the models differ in shape; the atlases
            share no detector.
        CorruptFileError: a folder lacks ``scores.parquet`` or ``meta.json`` or holds a damaged
            one (the message names the path).
    """
    scores_a, side_a = _side(a, "a")
    scores_b, side_b = _side(b, "b")
    if scores_a.shape != scores_b.shape:
        raise InvalidOptionError(
            f"the atlases come from models of different shapes: a ({side_a['name']}) has {scores_a.shape[0]} layers x "
            f"{scores_a.shape[1]} heads, b ({side_b['name']}) has {scores_b.shape[0]} x {scores_b.shape[1]}; heads "
            "can only be compared between models with the same layers and heads"
        )
    common = [d for d in scores_a.detectors if d in scores_b.detectors]
    only_a = [d for d in scores_a.detectors if d not in common]
    only_b = [d for d in scores_b.detectors if d not in common]
    if not common:
        raise InvalidOptionError(f"the atlases share no detector (a ran {scores_a.detectors}, b ran {scores_b.detectors}); "
                                 "build both with the same detectors")
    fa, fb = scores_a.to_frame(), scores_b.to_frame()
    parts, thresholds, unpaired = [], {}, {}
    for det in common:
        left = cast(pd.DataFrame, fa[fa["detector"] == det])[["layer", "head", "score"]]
        right = cast(pd.DataFrame, fb[fb["detector"] == det])[["layer", "head", "score"]]
        both = left.merge(right, on=["layer", "head"], suffixes=("_a", "_b")).sort_values(["layer", "head"])
        both = both.reset_index(drop=True)
        unpaired[det] = int(len(left) + len(right) - 2 * len(both))
        thr_a, thr_b = scores_a.threshold(det), scores_b.threshold(det)
        thresholds[det] = {"a": thr_a, "b": thr_b}
        both.insert(0, "detector", det)
        both["delta"] = both["score_b"] - both["score_a"]
        where = (both["layer"].to_numpy(), both["head"].to_numpy())
        both["rank_a"] = _ranks(both["score_a"].to_numpy(), *where)
        both["rank_b"] = _ranks(both["score_b"].to_numpy(), *where)
        both["over_a"] = (both["score_a"] >= thr_a) if thr_a is not None else False
        both["over_b"] = (both["score_b"] >= thr_b) if thr_b is not None else False
        parts.append(both)
    frame = cast(pd.DataFrame, pd.concat(parts, ignore_index=True)[_COLUMNS])
    meta = {
        "a": side_a, "b": side_b,
        "shape": list(scores_a.shape),
        "detectors": common, "only_a": only_a, "only_b": only_b,
        "thresholds": thresholds,
        "unpaired_heads": unpaired,
        "model_a": scores_a.meta.get("model", {}), "model_b": scores_b.meta.get("model", {}),
    }
    return AtlasComparison(frame, meta)


@final
@dataclasses.dataclass(frozen=True, eq=False)
class AtlasComparison(Result):
    """Two atlases side by side. Build it with :func:`hz.compare_atlases`; do not subclass.

    Attributes:
        frame: one row per (detector, layer, head) scored in both: ``score_a, score_b, delta``
            (``b - a``), ``rank_a, rank_b`` (1 = the detector's highest score in that atlas;
            ties in (layer, head) order) and ``over_a, over_b`` (the score passes the
            detector's threshold; False for detectors without one).
        meta: what each side is (``a``, ``b``: name and source), the detectors compared and
            those run in only one atlas (``only_a``, ``only_b``), the thresholds and the shape.
    """

    _FORMAT = "AtlasComparison"

    frame: pd.DataFrame
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.frame, pd.DataFrame) or not isinstance(self.meta, dict):
            raise InvalidOptionError("AtlasComparison needs a DataFrame and a metadata dict; build it with hz.compare_atlases")
        missing = [c for c in _COLUMNS if c not in self.frame.columns]
        if missing:
            raise InvalidOptionError(f"AtlasComparison needs columns {_COLUMNS}; missing {missing}")
        frame = strings_as_str(cast(pd.DataFrame, self.frame[_COLUMNS]))
        for col in ("layer", "head", "rank_a", "rank_b"):
            frame[col] = frame[col].astype("int64")
        for col in ("score_a", "score_b", "delta"):
            frame[col] = frame[col].astype("float64")
        for col in ("over_a", "over_b"):
            frame[col] = frame[col].astype(bool)
        # own copies: the caller's frame and dict are left alone
        object.__setattr__(self, "frame", frame)
        object.__setattr__(self, "meta", copy.deepcopy(self.meta))

    @property
    def detectors(self) -> list[str]:
        """The detectors run in both atlases, in ``a``'s order."""
        return list(dict.fromkeys(self.frame["detector"]))

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (a copy)."""
        return self.frame.copy()

    def correlations(self) -> pd.DataFrame:
        """Per detector: ``spearman`` (rank correlation of the two atlases' scores), ``k`` (heads
        over threshold in either atlas, at least 1), ``top_overlap`` (share of ``a``'s top ``k``
        heads among ``b``'s top ``k``), ``crossed`` (heads over threshold in one atlas only)
        and ``n_heads``."""
        rows = []
        for det in self.detectors:
            part = cast(pd.DataFrame, self.frame[self.frame["detector"] == det])
            over_a, over_b = part["over_a"].to_numpy(), part["over_b"].to_numpy()
            k = max(1, int(np.sum(over_a | over_b)))
            top_a = set(zip(part.nsmallest(k, "rank_a")["layer"], part.nsmallest(k, "rank_a")["head"]))
            top_b = set(zip(part.nsmallest(k, "rank_b")["layer"], part.nsmallest(k, "rank_b")["head"]))
            rows.append({
                "detector": det,
                "spearman": _spearman(part["score_a"].to_numpy(), part["score_b"].to_numpy()),
                "k": k,
                "top_overlap": len(top_a & top_b) / k,
                "crossed": int(np.sum(over_a != over_b)),
                "n_heads": len(part),
            })
        return pd.DataFrame(rows, columns=["detector", "spearman", "k", "top_overlap", "crossed", "n_heads"])

    def moved(self, ranks: int = _MOVED_RANKS) -> pd.DataFrame:
        """Heads that crossed their detector's threshold or moved at least ``ranks`` places:
        the rows of :meth:`to_frame` plus ``rank_change`` (``rank_a - rank_b``: positive when the
        head rose in ``b``) and ``crossed`` (``"up"``: over threshold in ``b`` only, ``"down"``:
        in ``a`` only, ``""``), largest moves first."""
        ranks = positive_int("ranks", ranks)
        frame = self.frame.assign(rank_change=self.frame["rank_a"] - self.frame["rank_b"])
        frame["crossed"] = np.where(frame["over_b"] & ~frame["over_a"], "up",
                                    np.where(frame["over_a"] & ~frame["over_b"], "down", ""))
        hit = (frame["crossed"] != "") | (frame["rank_change"].abs() >= ranks)
        out = cast(pd.DataFrame, frame[hit])
        out = out.assign(size=out["rank_change"].abs()).sort_values(
            ["size", "detector", "layer", "head"], ascending=[False, True, True, True], kind="stable")
        return out.drop(columns="size").reset_index(drop=True)

    def plot(self, detector: str | None = None) -> Any:
        """Layer x head heatmap of ``delta`` (``b - a``) per detector, as a plotly ``Figure``
        (returned, never shown); drawn by the same code as :meth:`hz.HeadScores.plot`."""
        if detector is not None and detector not in self.detectors:
            raise InvalidOptionError(f"unknown detector {detector!r}; compared: {self.detectors}")
        frame = self.frame.assign(score=self.frame["delta"])
        model = {**self.meta.get("model_a", {}), "name": f"{self.meta['a']['name']} -> {self.meta['b']['name']}"}
        scores = HeadScores(cast(pd.DataFrame, frame[["detector", "layer", "head", "score", "delta"]]), {"model": model})
        fig = scores.plot(detector, "delta")
        fig.update_layout(title=html.escape(f"headzoo: score change from {self.meta['a']['name']} to {self.meta['b']['name']}"))
        return fig

    def __repr__(self) -> str:
        corr = self.correlations()
        return (f"AtlasComparison({self.meta['a']['name']} vs {self.meta['b']['name']}: {len(self.detectors)} detectors, "
                f"median Spearman {float(np.nanmedian(corr['spearman'].to_numpy(dtype=float))):.3f}, {len(self.moved())} heads moved)")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the correlations and the heads that moved."""
        esc = html.escape
        corr = self.correlations().to_html(index=False, float_format=lambda x: f"{x:.3f}", escape=True)
        moved = self.moved()[["detector", "layer", "head", "score_a", "score_b", "rank_a", "rank_b", "crossed"]]
        moved_html = moved.head(20).to_html(index=False, float_format=lambda x: f"{x:.3f}", escape=True)
        only = [f"only in a: {', '.join(self.meta.get('only_a', []))}" if self.meta.get("only_a") else "",
                f"only in b: {', '.join(self.meta.get('only_b', []))}" if self.meta.get("only_b") else ""]
        note = "; ".join(x for x in only if x)
        return (f"<div style='font-family:sans-serif;font-size:12px'><p><b>AtlasComparison</b> &middot; "
                f"a: {esc(self.meta['a']['name'])} &middot; b: {esc(self.meta['b']['name'])}</p>"
                + (f"<p>{esc(note)}</p>" if note else "")
                + f"{corr}<p>heads that crossed a threshold or moved &ge; {_MOVED_RANKS} ranks ({len(moved)}):</p>"
                f"{moved_html}</div>")

    def _to_payload(self) -> Payload:
        return Payload(self.frame, self.meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> AtlasComparison:
        return cls(payload.frame, payload.meta)

    # -- files ------------------------------------------------------------------------------
    def html(self) -> str:
        """``compare.html``: the packaged template with its CSS and script inlined and this
        comparison as JSON; it makes no network request and writes every string as text."""
        from headzoo._atlas import json_for_script, render_page

        corr = self.correlations()
        data = {
            "a": self.meta["a"]["name"], "b": self.meta["b"]["name"],
            "shape": self.meta["shape"], "only_a": self.meta.get("only_a", []), "only_b": self.meta.get("only_b", []),
            "moved_ranks": _MOVED_RANKS,
            "correlations": corr.to_dict("records"),
            "moved": cast(pd.DataFrame, self.moved()[["detector", "layer", "head", "score_a", "score_b", "rank_a",
                                                      "rank_b", "rank_change", "crossed"]]).to_dict("records"),
            "delta": {det: cast(pd.DataFrame, self.frame[self.frame["detector"] == det])
                      .pivot(index="layer", columns="head", values="delta")
                      .reindex(index=range(self.meta["shape"][0]), columns=range(self.meta["shape"][1]))
                      .round(4).to_numpy().tolist()
                      for det in self.detectors},
        }
        return render_page("compare", ("compare.html", "compare.css", "compare.js"),
                           f"headzoo: {data['a']} vs {data['b']}", json_for_script(_plain(data)))

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``comparison.parquet`` (this result, checksummed), ``correlations.csv`` and
        ``compare.html`` (self-contained, offline) to ``directory``; return the folder."""
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidOptionError(f"directory must be a str or os.PathLike; got {type(directory).__name__}")
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise InvalidOptionError(f"{out} is a file, not a folder; choose a folder to write the comparison to")
        page = self.html()
        out.mkdir(parents=True, exist_ok=True)
        self.save(out / "comparison.parquet")
        corr = self.correlations()
        write_atomic(out / "correlations.csv", lambda tmp: corr.to_csv(tmp, index=False))
        write_atomic(out / "compare.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        return out


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as ``None`` (JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value
