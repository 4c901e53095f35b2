"""The head atlas: every detector's scores for every head of one model, on one offline page.

``hz.build_atlas(model)`` runs the detectors (all pattern detectors share one forward pass),
records an example attention pattern of every head on a repeated-token probe, the keys each
head attends to most, the tokens its OV circuit promotes and suppresses, and the heads it
reads from and writes to most (composition scores above the random baseline). ``atlas.write(dir)``
writes ``index.html`` (one self-contained file: it opens from ``file://`` with no network and no
``assets/`` folder, drawing its heatmaps as SVG), ``scores.parquet`` and ``meta.json``, each
atomically.

The page is package data (``headzoo/_data/atlas/``: ``index.html``, ``atlas.css``, ``atlas.js``):
the CSS and JavaScript are inlined into the template and the data goes in as the JSON of one
typed :class:`AtlasPayload`, escaped by :func:`json_for_script` (the only JSON-in-HTML escaper).

Each card also explains its head with evidence from outside the probes: the contexts of a corpus
where it is most active (:func:`hz.head_examples`, after Anthropic's HeadVis; the full table is
written as ``examples.parquet``), the loss increase when it is ablated on a battery of tasks
(:func:`hz.head_importance`), and what the papers called it (:func:`hz.published_heads`), with
the page's table of published labels against headzoo's (:func:`hz.literature_agreement`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import html
import importlib.resources
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch

from headzoo._detector import STAGES, Detector, PatternDetector
from headzoo._errors import (
    DetectorNotApplicableError,
    HeadzooError,
    InvalidOptionError,
    InvalidTokensError,
    MissingHooksError,
    NonFiniteError,
    UnsupportedModelError,
)
from headzoo._examples import HeadExamples, head_examples
from headzoo._fingerprint import weights_fingerprint
from headzoo._io import Payload, Result, normalise, positive_int, write_atomic
from headzoo._literature import literature_agreement, published_heads
from headzoo._models import ModelInfo, library_versions, model_info
from headzoo._probes import RepeatedTokens
from headzoo._results import HeadScores
from headzoo._runner import read_patterns, run_detectors, select_detectors
from headzoo._tokens import as_prompts, check_bool, token_strings

__all__ = ["build_atlas", "HeadAtlas"]

_FORMAT = "headzoo.HeadAtlas/1"
_EXAMPLES_TABLE = "atlas/examples"  # the saved atlas's side table of corpus examples
_PAGE_CONTEXT = 16  # tokens of a corpus context on the page (examples.parquet keeps all 24)
#: what the examples' two activations are, in the page's words
_ACTIVATION_WORDS = {"attention": "max attention from the query to a non-BOS key",
                     "output_norm": "norm of the head's output at the query"}
_TOP_KEYS = 5
_TOP_OV = 5
_OV_SOURCES = 64
_TOP_EDGES = 3  # senders and receivers a card lists
_COMPOSITION_DRAWS = 64  # random pairs for the composition baseline (it only orders the lists)


def json_for_script(value: Any) -> str:
    """JSON to place inside ``<script>``: no ``</script>``, ``<!--`` or anything a browser parses
    as markup (``<``, ``>``, ``&`` and the JavaScript line separators are escaped).

    Raises:
        NonFiniteError: ``value`` holds a NaN or an infinity (JSON has no spelling for them);
            the message says where.
    """
    try:
        # no spaces after separators: a 12 x 12 atlas with examples is ~10% smaller
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        found = _first_non_finite(value)
        if found is None:
            raise
        where, number = found
        raise NonFiniteError(
            f"Cannot write {number} at {where} into the page: JSON has no NaN or infinity. It comes from "
            "the model (check its weights with torch.isfinite) or from the detector that computed it."
        ) from None
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _first_non_finite(value: Any, where: str = "data") -> tuple[str, float] | None:
    """The path (``data['heads'][3]['argmax_bos']``) and value of the first NaN or infinity in a
    tree of dicts, lists and tuples, or ``None`` when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, Mapping):
        items: Any = ((f"{where}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _first_non_finite(item, path)
        if found is not None:
            return found
    return None


def _finite(value: Any, what: str) -> float:
    """``value`` as a float, or a :class:`NonFiniteError` saying that ``what`` is not finite."""
    number = float(value)
    if not math.isfinite(number):
        raise NonFiniteError(
            f"{what} is {number}: the atlas needs finite numbers. It comes from the model (check its "
            "weights with torch.isfinite) or from the detector that computed it."
        )
    return number


# -- the page's data, typed ---------------------------------------------------------------
# Field order is the JSON's key order. Every string reaches the page through to_json(), i.e.
# through json_for_script, and atlas.js shows it with textContent or createTextNode only.


@dataclasses.dataclass(frozen=True, slots=True)
class PageModel:
    """The model, as the page's header names it."""

    name: str
    model_class: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    d_vocab: int


@dataclasses.dataclass(frozen=True, slots=True)
class PageDetector:
    """One detector's heatmap and table column."""

    name: str
    threshold: float | None
    kind: str | None
    variant: str | None
    reference: str | None
    stage: str | None
    description: str = ""  # the registry's one line on what a high score means


@dataclasses.dataclass(frozen=True, slots=True)
class PageKey:
    """A key position a head attends to on the example: ``attention`` is the mean over queries."""

    pos: int
    token: str
    attention: float


@dataclasses.dataclass(frozen=True, slots=True)
class PageOffset:
    """A head's most common ``query - argmax key`` offset (BOS aside) and the share of queries."""

    offset: int
    share: float


@dataclasses.dataclass(frozen=True, slots=True)
class PageOvPair:
    """One OV-circuit entry: attending to ``source`` raises (or lowers) the logit of ``output``."""

    source: str
    output: str
    logit: float


@dataclasses.dataclass(frozen=True, slots=True)
class PageEdge:
    """Another head this one composes with: ``kind`` is the receiver's input (``q``, ``k``,
    ``v``), ``excess`` the composition score above the random baseline."""

    layer: int
    head: int
    kind: str
    score: float
    excess: float


@dataclasses.dataclass(frozen=True, slots=True)
class PageSuccessorTask:
    """A successor head's result on one ordinal task: ``accuracy`` is the succession score's hit
    rate; ``editing`` the share of mod-10 edits that gave the edited item's successor (``None``
    where the task had no edit to try)."""

    task: str
    accuracy: float
    editing: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class PageSuccessor:
    """What a successor head's card shows: per-task accuracies and mod-10 editing success, with
    the random-direction control and the success without carries into the next ten."""

    tasks: tuple[PageSuccessorTask, ...]
    editing: float
    editing_no_carry: float | None
    control: float
    n_pairs: int


@dataclasses.dataclass(frozen=True, slots=True)
class PageMod10:
    """The model's mod-10 features (class means of number-like tokens' effective embeddings):
    held-out accuracy per modulus against chance, and the figure: ``projections[i][r]`` is token
    ``i``'s projection on residue ``r``'s direction."""

    method: str
    variance_explained: float
    moduli: tuple[tuple[int, float, float], ...]
    tokens: tuple[str, ...]
    values: tuple[int, ...]
    projections: tuple[tuple[float, ...], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PageHeadExample:
    """A context of the corpus where the head is active (a row of :class:`hz.HeadExamples`).

    ``context`` holds token strings ending at the query (the last one); ``attended`` indexes the
    attended key in ``context`` (``None`` when it is the BOS or lies before the context shown);
    ``kind`` is ``"top"`` (``rank`` 1 = strongest) or ``"decile"`` (``decile`` 1-10, lowest first).
    """

    activation: str
    kind: str
    rank: int
    decile: int | None
    value: float
    context: tuple[str, ...]
    attended: int | None
    attended_token: str


@dataclasses.dataclass(frozen=True, slots=True)
class PageImportance:
    """The effect of ablating the head on one task (loss increase); ``method`` is ``"exact"``
    (measured by ablation) or ``"attribution"`` (attribution patching's estimate)."""

    effect: float
    method: str


@dataclasses.dataclass(frozen=True, slots=True)
class PageLiterature:
    """What a paper called this head: ``label`` is the headzoo detector for that role
    (``"none"`` when none measures it), ``paper_label`` the paper's own name for it."""

    label: str
    paper_label: str
    citation: str
    verified: bool
    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class PageHead:
    """One head's card."""

    layer: int
    head: int
    labels: tuple[str, ...]
    top_keys: tuple[PageKey, ...]
    argmax_bos: float
    common_offset: PageOffset | None
    promotes: tuple[PageOvPair, ...]
    suppresses: tuple[PageOvPair, ...]
    reads_from: tuple[PageEdge, ...]
    writes_to: tuple[PageEdge, ...]
    successor: PageSuccessor | None = None
    examples: tuple[PageHeadExample, ...] = ()
    importance: Mapping[str, PageImportance] = dataclasses.field(default_factory=dict)
    literature: tuple[PageLiterature, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PageExample:
    """The example prompt: ``patterns`` is the base64 of uint8 ``[layer, head, query, key]``
    attention (value / 255), of shape ``shape``."""

    tokens: tuple[str, ...]
    patterns: str
    shape: tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class PageExamplesInfo:
    """Where the cards' contexts come from: ``corpus`` in words, the tokens read, ``k`` top
    contexts per activation, and what each activation is."""

    corpus: str
    n_tokens: int
    k: int
    activations: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class PageTask:
    """One task of the importance battery: ``baseline`` is the clean model's mean ``metric``."""

    name: str
    description: str
    metric: str
    baseline: float


@dataclasses.dataclass(frozen=True, slots=True)
class PageImportanceInfo:
    """How importance was measured: the tasks, the ablation, how many top heads per task were
    ablated exactly (the rest are attribution estimates), and the tasks skipped, with why."""

    tasks: tuple[PageTask, ...]
    ablation: str
    exact_top: int
    note: str | None
    skipped: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class PageAgreementRow:
    """A catalogued head beside headzoo's score for the detector of its published role:
    ``agrees`` is ``score >= threshold`` (``None`` where either is missing)."""

    layer: int
    head: int
    label: str
    paper_label: str
    citation: str
    verified: bool
    headzoo_score: float | None
    threshold: float | None
    agrees: bool | None
    headzoo_labels: str


@dataclasses.dataclass(frozen=True, slots=True)
class PageAgreement:
    """The literature's labels for this model's heads against headzoo's (``model`` is the
    catalogued name it was matched to)."""

    model: str
    note: str
    rows: tuple[PageAgreementRow, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PageMeta:
    """Provenance shown in the header (and kept with the data)."""

    created: str | None
    versions: Mapping[str, str]
    model_config_hash: str | None
    weights_fingerprint: str | None
    skipped_detectors: Mapping[str, str]
    composition_note: str | None = None  # why cards list no composition partners, when they cannot
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)  # part ("examples", ...) -> why it is absent


@dataclasses.dataclass(frozen=True, slots=True)
class AtlasPayload:
    """Everything ``atlas.js`` reads, typed. ``scores[detector][layer][head]`` is the score
    rounded to 4 decimals, ``None`` where the detector did not score that head."""

    model: PageModel
    detectors: tuple[PageDetector, ...]
    scores: Mapping[str, tuple[tuple[float | None, ...], ...]]
    heads: tuple[PageHead, ...]
    example: PageExample
    meta: PageMeta
    n_layers: int
    n_heads: int
    mod10: PageMod10 | None = None
    examples: PageExamplesInfo | None = None
    importance: PageImportanceInfo | None = None
    agreement: PageAgreement | None = None
    downloads: tuple[str, ...] = ()  # files written beside index.html that the page links to

    def to_json(self) -> str:
        """The payload as JSON that is safe inside ``<script>`` (see :func:`json_for_script`)."""
        return json_for_script(dataclasses.asdict(self))


def _page_head(h: Mapping[str, Any], examples: tuple[PageHeadExample, ...] = ()) -> PageHead:
    """A card from one of ``HeadAtlas.heads``' dicts (and the head's corpus contexts, already
    made by :func:`_page_examples`), checking that every number is finite."""
    name = f"L{h['layer']}H{h['head']}"
    offset = h.get("common_offset")

    def pairs(kind: str) -> tuple[PageOvPair, ...]:
        return tuple(
            PageOvPair(str(p["source"]), str(p["output"]),
                       _finite(p["logit"], f"the OV logit of head {name} ({kind}: {p['source']!r} -> {p['output']!r})"))
            for p in h.get(kind, ())
        )

    def edges(kind: str) -> tuple[PageEdge, ...]:
        return tuple(
            PageEdge(int(e["layer"]), int(e["head"]), str(e["kind"]),
                     _finite(e["score"], f"the composition score of head {name} ({kind} L{e['layer']}H{e['head']})"),
                     _finite(e["excess"], f"the composition excess of head {name} ({kind} L{e['layer']}H{e['head']})"))
            for e in h.get(kind, ())  # atlases saved before composition scores have none
        )

    return PageHead(
        layer=int(h["layer"]),
        head=int(h["head"]),
        labels=tuple(str(label) for label in h["labels"]),
        top_keys=tuple(
            PageKey(int(k["pos"]), str(k["token"]),
                    _finite(k["attention"], f"the attention of head {name} to key position {k['pos']}"))
            for k in h.get("top_keys", ())
        ),
        argmax_bos=_finite(h.get("argmax_bos", 0.0), f"the BOS share of head {name}"),
        common_offset=None if offset is None else PageOffset(
            int(offset["offset"]), _finite(offset["share"], f"the common-offset share of head {name}")),
        promotes=pairs("promotes"),
        suppresses=pairs("suppresses"),
        reads_from=edges("reads_from"),
        writes_to=edges("writes_to"),
        successor=_page_successor(h.get("successor"), name),
        examples=examples,
        importance={
            str(task): PageImportance(_sig(v["effect"], f"the {task!r} importance of head {name}"), str(v["method"]))
            for task, v in (h.get("importance") or {}).items()  # atlases saved before importance have none
        },
        literature=tuple(
            PageLiterature(str(r["label"]), str(r["paper_label"]), str(r["citation"]), bool(r["verified"]), str(r["note"]))
            for r in h.get("literature", ())
        ),
    )


def _sig(value: float, what: str) -> float:
    """``value`` to 4 significant digits (the page shows no more; the files keep every digit)."""
    return float(f"{_finite(value, what):.4g}")


def _page_examples(examples: HeadExamples) -> dict[tuple[int, int], tuple[PageHeadExample, ...]]:
    """Every head's examples for its card, in :class:`hz.HeadExamples` order (per activation:
    top first, then the deciles), with the context cut to its last ``_PAGE_CONTEXT`` tokens and
    values to 4 significant digits, so that a GPT-2-small-shaped page (12 x 12 heads, every
    detector, k=5 and all deciles) is about 1.5 MB; ``examples.parquet`` keeps everything."""
    frame = examples.to_frame()
    out: dict[tuple[int, int], list[PageHeadExample]] = {}
    for layer, head, act, kind, rank, decile, value, context, attended, token in zip(
        frame["layer"], frame["head"], frame["activation"], frame["kind"], frame["rank"], frame["decile"],
        frame["value"], frame["context"], frame["attended"], frame["attended_token"], strict=True,
    ):
        tokens = json.loads(context)
        cut = max(0, len(tokens) - _PAGE_CONTEXT)
        at = None if attended is pd.NA or attended is None else int(attended) - cut
        out.setdefault((int(layer), int(head)), []).append(PageHeadExample(
            activation=str(act), kind=str(kind), rank=int(rank),
            decile=None if decile is pd.NA or decile is None else int(decile),
            value=_sig(value, f"the {act} of head L{layer}H{head} on a corpus context"),
            context=tuple(str(t) for t in tokens[cut:]),
            attended=at if at is not None and at >= 0 else None,
            attended_token=str(token),
        ))
    return {key: tuple(rows) for key, rows in out.items()}


def _corpus_words(source: str) -> str:
    """How the page names a corpus (``HeadExamples.meta["corpus"]["source"]``)."""
    if source.startswith("hf:"):
        return f"the Hugging Face dataset {source[3:]}"
    return {"shipped": "headzoo's shipped text",
            "curriculum": "held-out text of headzoo's synthetic curriculum (what the zoo models were trained on)",
            "strings": "a list of strings given in Python",
            "dataset": "a datasets.Dataset given in Python"}.get(source, source)


def _description(name: str, meta: Mapping[str, Any]) -> str:
    """A detector's one-line description: as recorded when the atlas was built, else the
    registry's (an atlas saved before descriptions were recorded), else ``""`` (a plugin
    detector that is not installed here)."""
    recorded = meta.get("descriptions", {}).get(name)
    if isinstance(recorded, str):
        return recorded
    from headzoo._registry import detector_class

    try:
        return str(detector_class(name).description)
    except HeadzooError:
        return ""


def _page_examples_info(examples: HeadExamples | None) -> PageExamplesInfo | None:
    if examples is None:
        return None
    meta = examples.meta
    corpus = meta.get("corpus", {})
    return PageExamplesInfo(corpus=_corpus_words(str(corpus.get("source", "?"))), n_tokens=int(corpus.get("n_tokens", 0)),
                            k=int(meta.get("k", 0)), activations=dict(_ACTIVATION_WORDS))


def _page_importance_info(info: Mapping[str, Any] | None) -> PageImportanceInfo | None:
    if not info:
        return None
    return PageImportanceInfo(
        tasks=tuple(PageTask(str(t["name"]), str(t["description"]), str(t["metric"]),
                             _sig(t["baseline"], f"the clean baseline of importance task {t['name']!r}"))
                    for t in info["tasks"]),
        ablation=str(info["ablation"]), exact_top=int(info["exact_top"]),
        note=None if info.get("note") is None else str(info["note"]),
        skipped={str(k): str(v) for k, v in info.get("skipped", {}).items()},
    )


def _page_agreement(agreement: Mapping[str, Any] | None) -> PageAgreement | None:
    if not agreement:
        return None
    rows = []
    for r in agreement["rows"]:
        where = f"head {r['layer']}.{r['head']} of the agreement table"
        rows.append(PageAgreementRow(
            layer=int(r["layer"]), head=int(r["head"]), label=str(r["label"]), paper_label=str(r["paper_label"]),
            citation=str(r["citation"]), verified=bool(r["verified"]),
            headzoo_score=None if r["headzoo_score"] is None else _finite(r["headzoo_score"], f"the score of {where}"),
            threshold=None if r["threshold"] is None else _finite(r["threshold"], f"the threshold of {where}"),
            agrees=None if r["agrees"] is None else bool(r["agrees"]), headzoo_labels=str(r["headzoo_labels"]),
        ))
    return PageAgreement(model=str(agreement["model"]), note=str(agreement["note"]), rows=tuple(rows))


def _page_successor(s: Mapping[str, Any] | None, name: str) -> PageSuccessor | None:
    if not s:
        return None
    return PageSuccessor(
        tasks=tuple(PageSuccessorTask(
            str(t["task"]), _finite(t["accuracy"], f"the {t['task']!r} accuracy of head {name}"),
            None if t.get("editing") is None else _finite(t["editing"], f"the {t['task']!r} editing success of head {name}"))
            for t in s.get("tasks", ())),
        editing=_finite(s["success"], f"the editing success of head {name}"),
        editing_no_carry=None if s.get("success_no_carry") is None
        else _finite(s["success_no_carry"], f"the editing success without carries of head {name}"),
        control=_finite(s["control_success"], f"the editing control of head {name}"),
        n_pairs=int(s["n_pairs"]),
    )


def _page_mod10(m: Mapping[str, Any] | None) -> PageMod10 | None:
    if not m:
        return None
    fig = m["figure"]
    return PageMod10(
        method=str(m["method"]),
        variance_explained=_finite(m["variance_explained"], "the mod-10 variance explained"),
        moduli=tuple((int(x["modulus"]), _finite(x["accuracy"], f"the mod-{x['modulus']} accuracy"), float(x["chance"]))
                     for x in m["moduli"]),
        tokens=tuple(str(t) for t in fig["tokens"]),
        values=tuple(int(v) for v in fig["values"]),
        projections=tuple(tuple(_finite(x, "a mod-10 projection") for x in row) for row in fig["projections"]),
    )


def _successor_cards(scores: HeadScores) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[str, Any] | None]:
    """Per analysed head, what its card shows of the ``successor`` detector's analysis (per-task
    accuracies, editing success), and the model's mod-10 summary; empty without that detector."""
    if "successor" not in scores.detectors:
        return {}, None
    analysis = scores.meta["detectors"]["successor"].get("result", {}).get("analysis") or {}
    details = scores.details("successor") if _has_details(scores, "successor") else None
    cards: dict[tuple[int, int], dict[str, Any]] = {}
    for h in analysis.get("heads", []):
        key = (int(h["layer"]), int(h["head"]))
        editing = {str(t["task"]): t.get("success") for t in h.get("tasks", [])}
        tasks = []
        if details is not None:
            mine = details[(details["layer"] == key[0]) & (details["head"] == key[1])]
            tasks = [{"task": str(t), "accuracy": float(a), "editing": editing.get(str(t))}
                     for t, a in zip(mine["task"], mine["accuracy"])]
        cards[key] = {"tasks": tasks, **{k: h.get(k) for k in ("success", "success_no_carry", "control_success", "n_pairs")}}
    return cards, analysis.get("mod10")


def _score_rows(scores: HeadScores, name: str) -> tuple[tuple[float | None, ...], ...]:
    """``[layer][head]`` scores of one detector, ``None`` where a head is not scored.

    Raises:
        NonFiniteError: a scored head's score is NaN or infinite (names the heads).
    """
    frame = scores.to_frame()
    rows = frame.loc[frame["detector"] == name, ["layer", "head", "score"]]
    bad = rows.loc[~np.isfinite(rows["score"].to_numpy(dtype=float))]
    if len(bad):
        heads = ", ".join(f"L{a}H{b} ({v})" for a, b, v in zip(bad["layer"], bad["head"], bad["score"]))
        raise NonFiniteError(
            f"Detector {name!r} gave non-finite scores to {len(bad)} head(s): {heads}. The atlas needs "
            "finite scores; a head a detector cannot score should be left out, not given NaN. Check the "
            "model's weights with torch.isfinite, or the detector."
        )
    table = scores.matrix(name).to_numpy()
    return tuple(tuple(None if math.isnan(v) else round(float(v), 4) for v in row) for row in table)


_PLACEHOLDER = re.compile(r"\{\{headzoo:(title|css|data|js)\}\}")


def render_page(folder: str, files: tuple[str, str, str], title: str, data: str) -> str:
    """A packaged page: the template ``files[0]`` in ``headzoo/_data/<folder>`` with its CSS
    (``files[1]``) and script (``files[2]``) inlined, ``title`` escaped and ``data`` (JSON made
    by :func:`json_for_script`) put in. The atlas and the comparison page are both made here.

    Placeholders are filled in one pass, so text put in (a model named ``{{headzoo:js}}``)
    is never read as a placeholder itself.
    """
    package = importlib.resources.files("headzoo").joinpath(f"_data/{folder}")
    template, css, js = (package.joinpath(n).read_text(encoding="utf-8") for n in files)
    found = sorted(_PLACEHOLDER.findall(template))
    if found != ["css", "data", "js", "title"]:
        raise RuntimeError(f"headzoo's {files[0]} is damaged: placeholders {found}; reinstall headzoo")
    # Inlined as raw text, so the packaged files must not end their own element early.
    for name, text, stop in ((files[1], css, "</style"), (files[2], js, "</script"), (files[2], js, "<!--")):
        if stop in text.lower():
            raise RuntimeError(f"headzoo's {name} contains {stop!r} and cannot be inlined; reinstall headzoo")
    values = {"title": html.escape(title), "css": css, "data": data, "js": js}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _render_page(title: str, payload: AtlasPayload) -> str:
    """The atlas page (:func:`render_page` with the atlas's files and the payload's JSON)."""
    return render_page("atlas", ("index.html", "atlas.css", "atlas.js"), title, payload.to_json())


def _units(selected: list[Detector]) -> list[list[Detector]]:
    """What is computed (and cached for a resume) together: every pattern detector shares one
    forward pass, every weight detector one vocabulary pass; other detectors run alone."""
    from headzoo._detector import WeightDetector

    pattern: list[Detector] = [d for d in selected if isinstance(d, PatternDetector)]
    weights: list[Detector] = [d for d in selected if isinstance(d, WeightDetector)]
    rest: list[list[Detector]] = [[d] for d in selected if not isinstance(d, (PatternDetector, WeightDetector))]
    return [u for u in (pattern, weights) if u] + rest


def _merge(parts: list[HeadScores]) -> HeadScores:
    frames = [p.to_frame() for p in parts]
    meta = parts[0].meta
    meta["detectors"] = {}
    meta["probes"] = {}
    skipped: dict[str, str] = {}
    details: dict[str, pd.DataFrame] = {}
    for p in parts:
        m = p.meta
        meta["detectors"].update(m["detectors"])
        for name in m["detectors"]:
            meta["probes"][name] = m["probe"]
        skipped.update(m.get("skipped_detectors", {}))
        details.update({name: p.details(name) for name in p.detectors if _has_details(p, name)})
    meta.pop("probe", None)
    if skipped:
        meta["skipped_detectors"] = skipped
    else:
        meta.pop("skipped_detectors", None)
    frame = pd.concat(frames, ignore_index=True)
    base = ["detector", "layer", "head", "score"]
    frame = frame.reindex(columns=base + sorted(c for c in frame.columns if c not in base))
    return HeadScores(frame, meta, details=details)


def example_patterns(model: Any, info: ModelInfo, tokens: torch.Tensor) -> np.ndarray:
    """Every head's attention pattern on one prompt, ``[layer, head, query, key]`` float32.

    The runner's pattern pass: it stops after the last attention layer, so no logits are made.

    Raises:
        NonFiniteError: a head's pattern holds NaN or infinity (the message names the heads).
    """
    out = np.zeros((info.n_layers, info.n_heads, len(tokens), len(tokens)), dtype=np.float32)

    def keep(layer: int, pattern: torch.Tensor) -> None:
        out[layer] = pattern[0].detach().float().cpu().numpy()

    with torch.no_grad():
        read_patterns(model, info, tokens[None].to(info.device), keep)
    finite = np.isfinite(out).all(axis=(2, 3))
    if not finite.all():
        heads = ", ".join(f"L{a}H{b}" for a, b in zip(*np.nonzero(~finite)))
        raise NonFiniteError(
            f"The attention patterns of heads {heads} on the example prompt hold NaN or infinity. "
            "Check the model's weights with torch.isfinite; a half-precision model may overflow "
            "(load it in float32)."
        )
    return out


def _key_summary(pattern: np.ndarray, strings: list[str]) -> dict[str, Any]:
    """Where one head looks on the example: its top keys and its usual offset."""
    seq = pattern.shape[0]
    received = pattern.sum(0)  # total attention each key position receives
    order = np.argsort(-received, kind="stable")[:_TOP_KEYS]
    argmax = pattern.argmax(-1)
    offsets = np.arange(seq) - argmax
    queries = np.arange(1, seq)  # the first query can only look at itself
    to_bos = float((argmax[queries] == 0).mean()) if seq > 1 else 0.0
    values, counts = np.unique(offsets[queries][argmax[queries] != 0], return_counts=True) if seq > 1 else ([], [])
    common = None
    if len(values):
        i = int(np.argmax(counts))
        common = {"offset": int(values[i]), "share": float(counts[i] / len(queries))}
    return {
        "top_keys": [{"pos": int(k), "token": strings[k], "attention": round(float(received[k]) / seq, 4)} for k in order],
        "argmax_bos": round(to_bos, 4),
        "common_offset": common,
    }


def _ov_summary(model: Any, n_sources: int, seed: int) -> tuple[dict[tuple[int, int], dict[str, Any]], str | None]:
    """The strongest (source -> output) promotions and suppressions of every head's OV circuit."""
    from headzoo._circuits import WeightCircuits

    try:
        circuits = WeightCircuits(model)
        ext = circuits.ov_extremes(n_sources, seed, "mlp0")
    except (UnsupportedModelError, InvalidOptionError, AttributeError) as exc:
        return {}, f"OV circuits unavailable: {exc}"
    ids = ext["ids"].tolist()
    all_ids = sorted(set(ids) | set(ext["up_id"].reshape(-1).tolist()) | set(ext["down_id"].reshape(-1).tolist()))
    text = dict(zip(all_ids, token_strings(model, all_ids)))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    n_layers, n_heads, _ = ext["up"].shape
    for layer in range(n_layers):
        for head in range(n_heads):
            up, down = ext["up"][layer, head], ext["down"][layer, head]
            ups = torch.argsort(-up, stable=True)[:_TOP_OV].tolist()
            downs = torch.argsort(down, stable=True)[:_TOP_OV].tolist()
            out[(layer, head)] = {
                "promotes": [{"source": text[ids[i]], "output": text[int(ext["up_id"][layer, head, i])],
                              "logit": round(float(up[i]), 3)} for i in ups],
                "suppresses": [{"source": text[ids[i]], "output": text[int(ext["down_id"][layer, head, i])],
                                "logit": round(float(down[i]), 3)} for i in downs],
            }
    return out, None


def _composition_summary(model: Any, seed: int) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[str, Any]]:
    """Every head's strongest senders (``reads_from``) and receivers (``writes_to``) by
    composition score above the random baseline, all kinds together; and what was computed."""
    from headzoo._composition import composition_scores

    try:
        scores = composition_scores(model, n_random=_COMPOSITION_DRAWS, seed=seed)
    except (UnsupportedModelError, InvalidOptionError, AttributeError) as exc:
        return {}, {"note": f"composition scores unavailable: {exc}"}
    frame = scores.to_frame()
    frame = cast(pd.DataFrame, frame[frame["excess"] > 0]).sort_values("excess", ascending=False, kind="stable")
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for side, me, other in (("reads_from", "receiver", "sender"), ("writes_to", "sender", "receiver")):
        top = frame.groupby([f"{me}_layer", f"{me}_head"], sort=False).head(_TOP_EDGES)
        for key, layer, head, kind, score, excess in zip(
            zip(top[f"{me}_layer"], top[f"{me}_head"]), top[f"{other}_layer"], top[f"{other}_head"], top["kind"],
            top["score"], top["excess"],
        ):
            card = out.setdefault((int(key[0]), int(key[1])), {"reads_from": [], "writes_to": []})
            card[side].append({"layer": int(layer), "head": int(head), "kind": str(kind),
                               "score": round(float(score), 4), "excess": round(float(excess), 4)})
    meta = scores.meta
    return out, {"kinds": meta["kinds"], "baseline": meta["baseline"], "n_random": meta["n_random"], "seed": meta["seed"],
                 "top": _TOP_EDGES, "note": None}


@final
class HeadAtlas(Result):
    """Everything the atlas page shows about one model's heads. Build with :func:`build_atlas`.

    Attributes:
        scores: the :class:`HeadScores` of every detector run.
        heads: one dict per head: ``layer, head, labels`` (detectors over threshold),
            ``top_keys``, ``argmax_bos``, ``common_offset``, ``promotes``, ``suppresses``,
            ``reads_from``, ``writes_to`` (the heads it composes with most, above random).
        example_tokens: the example prompt's token strings.
        example_patterns: ``[layer, head, query, key]`` attention on the example (uint8, /255).
        meta: model name and config hash, the weights' fingerprint, versions, detector
            options, probe seeds, date; ``importance`` and ``agreement`` (what the page's
            importance and literature sections show) and ``skipped`` (part -> why it is absent).
        examples: the :class:`hz.HeadExamples` the cards' corpus contexts come from (``None``
            when not computed; ``write()`` saves it as ``examples.parquet``).

    Each head's dict also holds ``importance`` (task -> ``{effect, method}``; empty when not
    computed) and ``literature`` (what papers called the head; empty when the model is not
    catalogued).
    """

    __slots__ = ("scores", "heads", "example_tokens", "example_patterns", "meta", "examples")
    _FORMAT = "HeadAtlas"

    def __init__(self, scores: HeadScores, heads: list[dict[str, Any]], example_tokens: list[str],
                 example_patterns: np.ndarray, meta: dict[str, Any], examples: HeadExamples | None = None) -> None:
        self.scores = scores
        self.heads = heads
        self.example_tokens = example_tokens
        self.example_patterns = example_patterns
        self.meta = normalise(meta)
        self.examples = examples

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, labels`` and every detector's score as a column."""
        wide = self.scores.to_frame().pivot(index=["layer", "head"], columns="detector", values="score")
        wide.columns.name = None
        labels = pd.Series({(h["layer"], h["head"]): ", ".join(h["labels"]) for h in self.heads}, name="labels")
        labels.index.names = ["layer", "head"]
        return wide.join(labels, how="right").reset_index()

    def plot(self, detector: str | None = None, metric: str = "score", *, cols: int = 4) -> Any:
        """Layer x head heatmaps of the scores (see :meth:`HeadScores.plot`): a plotly
        ``Figure``, returned, never shown."""
        return self.scores.plot(detector, metric, cols=cols)

    def _payload(self) -> AtlasPayload:
        """What the page shows, typed and checked.

        Raises:
            NonFiniteError: a score, threshold, attention value or OV logit is NaN or infinite
                (the message names the detector or head and the field).
        """
        n_layers, n_heads = self.scores.shape
        model = self.meta["model"]
        detector_meta = self.scores.meta["detectors"]
        detectors = []
        for name in _by_stage(self.scores.detectors, detector_meta):
            d = detector_meta[name]
            threshold = d.get("threshold")
            detectors.append(PageDetector(
                name=name,
                threshold=None if threshold is None else _finite(threshold, f"the threshold of detector {name!r}"),
                kind=d.get("kind"), variant=d.get("variant"), reference=d.get("reference"), stage=d.get("stage"),
                description=_description(name, self.meta),
            ))
        patterns = self.example_patterns
        examples = _page_examples(self.examples) if self.examples is not None else {}
        return AtlasPayload(
            model=PageModel(
                name=str(model.get("name", "model")), model_class=str(model.get("model_class", "")),
                n_layers=int(model["n_layers"]), n_heads=int(model["n_heads"]), d_model=int(model["d_model"]),
                d_head=int(model["d_head"]), n_ctx=int(model["n_ctx"]), d_vocab=int(model["d_vocab"]),
            ),
            detectors=tuple(detectors),
            scores={name: _score_rows(self.scores, name) for name in self.scores.detectors},
            heads=tuple(_page_head(h, examples.get((int(h["layer"]), int(h["head"])), ())) for h in self.heads),
            example=PageExample(
                tokens=tuple(str(t) for t in self.example_tokens),
                patterns=base64.b64encode(patterns.tobytes()).decode("ascii"),
                shape=tuple(int(n) for n in patterns.shape),  # type: ignore[arg-type]
            ),
            meta=PageMeta(
                created=self.meta.get("created"), versions=dict(self.meta.get("versions", {})),
                model_config_hash=self.meta.get("model_config_hash"),
                weights_fingerprint=self.meta.get("weights_fingerprint"),
                skipped_detectors=dict(self.meta.get("skipped_detectors", {})),
                composition_note=self.meta.get("composition", {}).get("note")
                if "composition" in self.meta else "composition scores were not computed for this atlas",
                skipped={str(k): str(v) for k, v in self.meta.get("skipped", {}).items()},
            ),
            n_layers=n_layers,
            n_heads=n_heads,
            mod10=_page_mod10(self.meta.get("mod10")),
            examples=_page_examples_info(self.examples),
            importance=_page_importance_info(self.meta.get("importance")),
            agreement=_page_agreement(self.meta.get("agreement")),
            downloads=tuple(self._files()),
        )

    def _files(self) -> list[str]:
        """The data files :meth:`write` puts beside ``index.html``."""
        return ["scores.parquet", "meta.json"] + (["examples.parquet"] if self.examples is not None else [])

    def html(self) -> str:
        """The page: one self-contained HTML file (its CSS, script and data inlined; no library,
        no ``assets/``, no network).

        Raises:
            NonFiniteError: the data holds a NaN or infinity (the message says where).
        """
        return _render_page(f"headzoo atlas: {self.meta['model'].get('name', 'model')}", self._payload())

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.html``, ``scores.parquet``, ``meta.json`` and, when the atlas read a
        corpus, ``examples.parquet`` to ``directory``.

        The page needs nothing beside it; an ``assets/`` folder left by an older atlas in the
        same directory is left alone (the page no longer reads it).

        Every file is written to a temporary name and renamed, so a killed run never leaves a
        half-written file; the page is written last.

        Raises:
            NonFiniteError: the data or metadata holds a NaN or infinity (checked before any
                file is written; :func:`build_atlas` already refuses such data).
        """
        meta = _meta_json(self.meta)
        page = self.html()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.scores.save(out / "scores.parquet")
        write_atomic(out / "meta.json", lambda tmp: Path(tmp).write_text(meta, encoding="utf-8"))
        if self.examples is not None:
            self.examples.save(out / "examples.parquet")
        write_atomic(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        return out

    def _to_payload(self) -> Payload:
        # the scores' own payload, with the atlas's per-head records and example beside it
        # (and the corpus examples, when computed, as one more side table)
        inner = self.scores._to_payload()
        tables = dict(inner.tables)
        records = {"scores_meta": inner.meta, "heads": self.heads, "example_tokens": self.example_tokens}
        if self.examples is not None:
            ex = self.examples._to_payload()
            tables[_EXAMPLES_TABLE] = ex.frame
            records["examples_meta"] = ex.meta
        return Payload(inner.frame, self.meta, tables=tables, arrays={"example_patterns": self.example_patterns},
                       records=records)

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadAtlas:
        tables = {k: v for k, v in payload.tables.items() if k != _EXAMPLES_TABLE}
        scores = HeadScores._from_payload(Payload(payload.frame, payload.records["scores_meta"], tables=tables))
        examples = None  # files written before the atlas had corpus examples have none
        if _EXAMPLES_TABLE in payload.tables:
            examples = HeadExamples._from_payload(Payload(payload.tables[_EXAMPLES_TABLE], payload.records["examples_meta"]))
        return cls(scores, list(payload.records["heads"]), list(payload.records["example_tokens"]),
                   payload.arrays["example_patterns"], payload.meta, examples)

    def __repr__(self) -> str:
        n_layers, n_heads = self.scores.shape
        n_labelled = sum(1 for h in self.heads if h["labels"])
        return (f"HeadAtlas({self.meta['model'].get('name', 'model')}: {n_layers} x {n_heads} heads, "
                f"{len(self.scores.detectors)} detectors, {n_labelled} heads labelled)")

    def _repr_html_(self) -> str:
        """A table of the labelled heads (offline, no script); ``write()`` makes the full page."""
        rows = []
        for h in self.heads:
            if h["labels"]:
                rows.append(f"<tr><td>L{h['layer']}H{h['head']}</td><td>{html.escape(', '.join(h['labels']))}</td></tr>")
        body = "".join(rows) or "<tr><td colspan=2>no head passes a detector's threshold</td></tr>"
        return (f"<div><p>{html.escape(repr(self))}</p><table><thead><tr><th>head</th><th>labels</th></tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


def _meta_json(meta: dict[str, Any]) -> str:
    """``meta.json``'s text.

    Raises:
        NonFiniteError: an option or other entry is NaN or infinite (the message gives its path).
    """
    found = _first_non_finite(meta, "meta")
    if found is not None:
        raise NonFiniteError(
            f"The atlas metadata holds {found[1]} at {found[0]}; JSON has no NaN or infinity. "
            "Pass finite option values."
        )
    return json.dumps(meta, indent=1, ensure_ascii=False, allow_nan=False)


def build_atlas(
    model: Any,
    detectors: Any = None,
    *,
    example: Any = None,
    seed: int = 0,
    ov_sources: int = _OV_SOURCES,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    corpus: Any = None,
    examples: bool = True,
    examples_k: int = 5,
    importance: bool = True,
    literature: bool = True,
    **options: Any,
) -> HeadAtlas:
    """Score every head with every detector and gather what the atlas page shows.

    Args:
        model: any TransformerLens model.
        detectors: as for :func:`hz.detect` (``None``: all registered).
        example: the prompt whose attention patterns the head cards show: text or token ids.
            ``None``: a repeated-random-token prompt (``[BOS] r r``, up to 20 tokens a half).
        seed: seeds the probes, the example and the OV token sample.
        ov_sources: source tokens sampled for each head's OV promotions and suppressions.
        cache_dir: where finished detectors are kept while building, so a killed build
            resumes without recomputing them (the command line uses ``DIR/.partial``). An
            entry is reused only for the same weights (:func:`weights_fingerprint`), the same
            architecture, detector options and seed.
        corpus: the text each card's contexts come from (:func:`hz.head_examples`): ``None``
            (the text shipped with headzoo), a text file, a folder of ``*.txt``, a dataset saved
            with ``save_to_disk``, a list of strings or a ``datasets.Dataset``.
        examples: gather the contexts where each head is most active (and a decile sample).
            Without a tokenizer and with ``corpus=None`` they are skipped, and
            ``meta["skipped"]["examples"]`` says why.
        examples_k: top contexts kept per head and activation.
        importance: measure each head's effect on the task battery headzoo builds for the
            model's tokenizer (:func:`hz.head_importance`: mean ablation, exact for the top
            heads of each task, attribution patching's estimate for the rest). When no task
            applies, ``meta["skipped"]["importance"]`` says why.
        literature: when the model's name is catalogued (:func:`hz.published_heads`), say on
            each card what the papers called the head and set their labels beside headzoo's.
        **options: passed to :func:`hz.detect` (probe and detector options).

    Returns:
        :class:`HeadAtlas`; ``atlas.write(directory)`` writes the page.

    Raises:
        NonFiniteError: a score, attention pattern, OV logit or option is NaN or infinite (the
            message names the detector or head and the field).
        InvalidOptionError: a bad ``corpus`` (unreadable, empty, wrong type) or ``examples_k``,
            or ``examples`` / ``importance`` / ``literature`` not a bool.
        UnsupportedTokenizerError: a ``corpus`` was given but the model has no tokenizer.
    """
    examples = check_bool(examples, "examples")
    importance = check_bool(importance, "importance")
    literature = check_bool(literature, "literature")
    examples_k = positive_int("examples_k", examples_k)
    info = model_info(model)
    selected = select_detectors(detectors, dict(options, seed=seed))
    # The corpus is read first: a path that cannot be read fails in seconds, not after every detector.
    parts_skipped: dict[str, str] = {}
    corpus_examples = None
    if not examples:
        parts_skipped["examples"] = "not asked for (examples=False; on the command line --no-examples)"
    elif corpus is None and getattr(model, "tokenizer", None) is None:
        parts_skipped["examples"] = ("the model has no tokenizer to read text with; load it with its tokenizer "
                                     "to see each head's contexts on text")
    else:  # a corpus the user gave that cannot be read raises its own typed error
        try:
            corpus_examples = head_examples(model, corpus, k=examples_k, seed=seed, progress=progress)
        except MissingHooksError as exc:  # a model without hook_z: the rest of the atlas still stands
            if corpus is not None:
                raise
            parts_skipped["examples"] = str(exc)
    explicit = detectors is not None
    cache = Path(cache_dir) if cache_dir is not None else None
    parts: list[HeadScores] = []
    skipped: dict[str, str] = {}
    key = info.config_hash()
    # Scores depend on the weights, not only the architecture: two models of one shape must
    # never share a cache entry.
    fingerprint = weights_fingerprint(model)
    for unit in _units(selected):
        names = [d.name for d in unit]
        tag = "+".join(names)
        stamp = json.dumps({"model": key, "weights": fingerprint, "options": [d.options() for d in unit], "seed": seed},
                           sort_keys=True, default=str)
        digest = hashlib.sha256(f"{tag}|{stamp}".encode()).hexdigest()[:16]
        path = cache / f"{names[0]}-{digest}.parquet" if cache is not None else None
        if path is not None and path.exists():
            try:
                done = HeadScores.load(path)
                if done.meta.get("atlas_stamp") == stamp:
                    parts.append(done)
                    continue
            except Exception:  # a damaged cache file is recomputed, never trusted
                pass
        try:
            part = run_detectors(model, unit, tokens=None, cache=None, explicit=explicit, seed=seed, progress=progress,
                           **{k: v for k, v in options.items() if k in _unit_options(unit)})
        except DetectorNotApplicableError as exc:
            if explicit:
                raise
            skipped.update({n: str(exc) for n in names})
            continue
        meta = part.meta
        meta["atlas_stamp"] = stamp
        part = HeadScores(part.to_frame(), meta, details={n: part.details(n) for n in part.detectors if _has_details(part, n)})
        skipped.update(part.meta.get("skipped_detectors", {}))
        for name in part.detectors:  # before caching: a non-finite result is never kept for a resume
            _score_rows(part, name)
        if path is not None:
            part.save(path)
        parts.append(part)
    if not parts:
        raise DetectorNotApplicableError(f"no selected detector applies to this model: {skipped}")
    scores = _merge(parts)
    ids = example_ids(model, info, example, seed)
    strings = token_strings(model, ids.tolist())
    patterns = example_patterns(model, info, ids)
    ov, ov_note = _ov_summary(model, ov_sources, seed)
    composition, composition_meta = _composition_summary(model, seed)
    labels = scores.labels()
    successor_cards, mod10 = _successor_cards(scores)
    effects: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    importance_info = None
    if not importance:
        parts_skipped["importance"] = "not asked for (importance=False; on the command line --no-importance)"
    else:
        from headzoo._importance import head_importance

        try:
            effects, importance_info = _importance_summary(head_importance(model, seed=seed, progress=progress))
        except (DetectorNotApplicableError, MissingHooksError) as exc:  # no task applies, or no hook_z to ablate
            parts_skipped["importance"] = str(exc)
    papers: dict[tuple[int, int], list[dict[str, Any]]] = {}
    agreement = None
    if literature:
        papers, agreement, why = _literature(scores, info)
        if why is not None:
            parts_skipped["literature"] = why
    else:
        parts_skipped["literature"] = "not asked for (literature=False)"
    heads = []
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            mine = labels[(labels["layer"] == layer) & (labels["head"] == head)]
            heads.append({
                "layer": layer, "head": head, "labels": mine["detector"].tolist(),
                **_key_summary(patterns[layer, head], strings),
                **ov.get((layer, head), {"promotes": [], "suppresses": []}),
                **composition.get((layer, head), {"reads_from": [], "writes_to": []}),
                **({"successor": successor_cards[(layer, head)]} if (layer, head) in successor_cards else {}),
                "importance": effects.get((layer, head), {}),
                "literature": papers.get((layer, head), []),
            })
    meta = {
        "format": _FORMAT,
        "model": info.config_dict(),
        "model_config_hash": key,
        "weights_fingerprint": fingerprint,
        "versions": library_versions(),
        "detectors": scores.meta["detectors"],
        "probes": scores.meta.get("probes", {}),
        "seed": seed,
        "example": {"source": "user" if example is not None else "repeated_random_tokens", "seed": seed, "length": len(ids)},
        "ov": {"n_sources": ov_sources, "seed": seed, "embedding": "mlp0", "note": ov_note},
        "composition": composition_meta,
        **({"mod10": mod10} if mod10 else {}),
        "descriptions": {d.name: str(d.description) for d in selected if d.name in scores.detectors},
        **({"importance": importance_info} if importance_info is not None else {}),
        **({"agreement": agreement} if agreement is not None else {}),
        "skipped": parts_skipped,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    skipped.update(scores.meta.get("skipped_detectors", {}))
    if skipped:
        meta["skipped_detectors"] = skipped
    quantised = np.clip(np.rint(patterns * 255), 0, 255).astype(np.uint8)
    atlas = HeadAtlas(scores, heads, strings, quantised, meta, corpus_examples)
    # A NaN or infinity fails here, naming where it is, not later as a JSON error in write().
    _meta_json(atlas.meta)
    atlas._payload()
    return atlas


_METHODS = ("exact", "attribution")


def _importance_summary(imp: Any) -> tuple[dict[tuple[int, int], dict[str, dict[str, Any]]], dict[str, Any]]:
    """What the atlas keeps of a :class:`hz.HeadImportance`: per head, task -> ``{effect,
    method}``, and the page's description of the measurement (tasks with their clean
    baselines, the ablation, how many heads per task were ablated exactly, the tasks skipped).

    Raises:
        NonFiniteError: an effect or a baseline is NaN or infinite (names the head and task).
        InvalidOptionError: a row's method is neither ``"exact"`` nor ``"attribution"``, or a
            row's task is not among ``imp.meta["tasks"]`` (the result is malformed).
    """
    frame = imp.to_frame()
    meta = imp.meta
    tasks = meta["tasks"]
    effects: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for task, layer, head, effect, method in zip(frame["task"], frame["layer"], frame["head"], frame["effect"],
                                                 frame["method"], strict=True):
        if method not in _METHODS:
            raise InvalidOptionError(f"head_importance gave method {method!r} for head L{layer}H{head} on task "
                                     f"{task!r}; the atlas knows {list(_METHODS)}")
        if task not in tasks:
            raise InvalidOptionError(f"head_importance gave a row for task {task!r}, which its meta['tasks'] "
                                     f"({sorted(tasks)}) does not describe")
        effects.setdefault((int(layer), int(head)), {})[str(task)] = {
            "effect": _finite(effect, f"the {task!r} importance of head L{layer}H{head}"), "method": str(method)}
    exact_top = int(meta["exact_top"])
    info = {
        "tasks": [{"name": str(name), "description": str(t["description"]), "metric": str(t["metric"]),
                   "baseline": _finite(t["baseline"], f"the clean baseline of importance task {name!r}")}
                  for name, t in tasks.items()],
        "ablation": str(meta["ablation"]),
        "exact_top": exact_top,
        "note": (f"effect: the rise of the task's loss when the head is {meta['ablation']}-ablated; measured "
                 f"exactly for the {exact_top} heads per task that attribution patching ranks highest, attribution "
                 "patching's estimate for the rest"),
        "skipped": {str(k): str(v) for k, v in meta.get("skipped", {}).items()},
    }
    return effects, info


_AGREEMENT_NOTE = ("Published labels are for the pretrained weights; a model with other weights under the same "
                   "name is not expected to agree. 'agrees' is headzoo's score for the published role against that "
                   "detector's threshold (empty where the role has no detector or it was not run).")


def _literature(scores: HeadScores, info: ModelInfo) -> tuple[dict[tuple[int, int], list[dict[str, Any]]],
                                                             dict[str, Any] | None, str | None]:
    """What the papers called each head of a catalogued model (:func:`hz.published_heads`) and
    the agreement table (:func:`hz.literature_agreement`); ``({}, None, why)`` when the model is
    not catalogued or its shape cannot be the catalogued model's."""
    try:
        rows = published_heads(info.name)
    except InvalidOptionError as exc:  # a name that cannot be matched ("/"): no catalogue entry
        return {}, None, str(exc)
    if rows.empty:
        return {}, None, f"the literature catalogue has no head of a model named {info.name!r}"
    try:
        table = literature_agreement(scores, info.name)
    except InvalidOptionError as exc:  # named like a catalogued model, but another shape
        return {}, None, str(exc)
    cards: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for layer, head, label, paper, citation, verified, note in zip(
        rows["layer"], rows["head"], rows["label"], rows["paper_label"], rows["citation"], rows["verified"], rows["note"],
        strict=True,
    ):
        cards.setdefault((int(layer), int(head)), []).append(
            {"label": str(label), "paper_label": str(paper), "citation": str(citation), "verified": bool(verified),
             "note": str(note)})

    def number(x: Any) -> float | None:  # NaN (no score, no threshold) is JSON null
        return None if pd.isna(x) else float(x)

    agreement = {
        "model": str(rows["model"].iloc[0]),
        "note": _AGREEMENT_NOTE,
        "rows": [{"layer": int(r["layer"]), "head": int(r["head"]), "label": str(r["label"]),
                  "paper_label": str(r["paper_label"]), "citation": str(r["citation"]), "verified": bool(r["verified"]),
                  "headzoo_score": number(r["headzoo_score"]), "threshold": number(r["threshold"]),
                  "agrees": None if pd.isna(r["agrees"]) else bool(r["agrees"]), "headzoo_labels": str(r["headzoo_labels"])}
                 for r in table.to_dict("records")],
    }
    return cards, agreement, None


def _by_stage(names: list[str], detector_meta: Mapping[str, Any]) -> list[str]:
    """Detector names in the survey's stage order (unstaged last), keeping their order within a stage."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(names, key=lambda n: order.get(detector_meta[n].get("stage"), len(order)))


def _unit_options(unit: list[Detector]) -> set[str]:
    from headzoo._runner import probe_options

    names = probe_options() if any(isinstance(d, PatternDetector) for d in unit) else set()
    for d in unit:
        names |= {f.name for f in dataclasses.fields(d)}  # type: ignore[arg-type]
    return names - {"seed"}


def _has_details(scores: HeadScores, name: str) -> bool:
    try:
        scores.details(name)
    except KeyError:
        return False
    return True


def example_ids(model: Any, info: ModelInfo, example: Any, seed: int) -> torch.Tensor:
    if example is None:
        probe = RepeatedTokens(n_prompts=1, seed=seed, half_len=None)
        half, _, _ = probe.resolve(info)
        probe = dataclasses.replace(probe, half_len=min(20, half))
        return next(iter(probe.batches(info)))[0]
    prompts = as_prompts(model, info, example, "example")
    if len(prompts) != 1:
        raise InvalidTokensError(f"example must be one prompt; got {len(prompts)}")
    if len(prompts[0]) > 128:
        raise InvalidTokensError(f"example has {len(prompts[0])} tokens; the atlas shows at most 128 (shorten it)")
    return prompts[0]
