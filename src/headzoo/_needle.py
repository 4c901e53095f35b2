"""The needle-in-a-haystack probe, and what its greedy decoding says each head copies.

Retrieval heads (Wu, Wang, Xiao, Peng, Fu 2024, arXiv 2404.15574) are the few heads that copy a
fact out of a long context: while the model writes the answer, the head's strongest attention
lands on the very token it is emitting, inside the needle. The probe hides a needle (a lead-in
and answer tokens that occur nowhere else in the prompt) at a grid of depths in haystacks of
several lengths and asks for it; the model decodes greedily, and for every head only the argmax
key of the emitting query is kept, so no attention pattern outlives its layer.

Everything is built at the token-id level, so the needle's span is exact for any tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib
import importlib.resources
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, final

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from headzoo._decode import greedy_decode
from headzoo._errors import DetectorNotApplicableError, InvalidOptionError
from headzoo._forward import check_finite
from headzoo._io import Payload, Result
from headzoo._models import ModelInfo, model_info
from headzoo._tokens import check_bool, check_int, ordinary_ids

__all__ = ["NeedleHaystack", "NeedleTrials", "NeedleRun", "decode_needles"]

FillerKind = Literal["auto", "text", "random"]
QuestionStyle = Literal["copy", "natural"]

# Needles are "The secret word of the <place> is <answer>." The places vary the lead-in; the
# shipped filler sentences never use " is", so the lead-in's last token is unique in a prompt.
_PLACES = (
    "old mill", "blue harbour", "northern tower", "silver lake", "hidden garden", "stone bridge",
    "painted door", "quiet valley", "copper mine", "winter palace", "red lighthouse", "green island",
)
_LEAD = "The secret word of the {place} is"
_QUESTION = "Question: What is the secret word of the {place}? Answer:"
_RANDOM_LEAD_LEN = 2
_MIN_TEXT_SENTENCES = 0.5  # share of the shipped sentences a tokenizer must spell for text filler


@functools.cache
def _sentences() -> tuple[str, ...]:
    text = importlib.resources.files("headzoo").joinpath("_data/haystack.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclasses.dataclass(frozen=True)
class NeedleHaystack:
    """The needle-in-a-haystack probe of the retrieval-head paper, for any tokenizer and context.

    Each trial is ``[BOS] haystack[:i] needle haystack[i:] question``. The needle is a lead-in
    followed by ``answer_len`` answer tokens that occur nowhere else in the prompt (and are
    distinct), then a full stop in text mode. The question is either the lead-in again
    (``"copy"``: the prompt ends with the tokens that came just before the answer, so a model
    that only has induction heads can retrieve) or a natural question (``"natural"``, text
    filler only). In copy style the lead-in's last token is unique in the haystack, so copying
    is unambiguous.

    Attributes:
        lengths: prompt lengths in tokens (BOS, needle and question included). ``None``: three
            lengths, a quarter, half and all of ``min(max_length, room)``, where ``room`` is the
            model's context minus the decoded tokens.
        depths: where the needle goes, as a fraction of the haystack (0 = first, 1 = last). In
            text mode the needle is moved to the nearest sentence boundary.
        n_needles: trials (different needles and haystacks) per (length, depth) cell.
        answer_len: answer tokens per needle (the score's ``len(needle)``).
        extra_tokens: tokens decoded beyond ``answer_len`` (room for a preamble in natural style).
        question: ``"copy"`` or ``"natural"``.
        filler: ``"text"`` (the shipped English sentences), ``"random"`` (random ordinary
            tokens) or ``"auto"`` (text when the tokenizer spells at least half of the
            sentences with ordinary tokens, otherwise random; no tokenizer means random).
        max_length: cap on the default lengths (long contexts cost time on a CPU).
        seed: seeds every draw (a private generator; global RNG untouched).
        prepend_bos: ``None`` follows the model.
    """

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_needles: int = 2
    answer_len: int = 4
    extra_tokens: int = 0
    question: QuestionStyle = "copy"
    filler: FillerKind = "auto"
    max_length: int = 1024
    seed: int = 0
    prepend_bos: bool | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, low: int = 1) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidOptionError(f"{name} must be an integer >= {low}; got {value!r}")

        positive_int("n_needles", self.n_needles)
        positive_int("answer_len", self.answer_len)
        positive_int("extra_tokens", self.extra_tokens, 0)
        positive_int("max_length", self.max_length, 8)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidOptionError(f"seed must be an integer; got {self.seed!r}")
        if self.question not in ("copy", "natural"):
            raise InvalidOptionError(f"question must be 'copy' or 'natural'; got {self.question!r}")
        if self.filler not in ("auto", "text", "random"):
            raise InvalidOptionError(f"filler must be 'auto', 'text' or 'random'; got {self.filler!r}")
        if self.prepend_bos not in (None, True, False):
            raise InvalidOptionError(f"prepend_bos must be None, True or False; got {self.prepend_bos!r}")
        if self.lengths is not None:
            lengths = (self.lengths,) if isinstance(self.lengths, int) else self.lengths
            try:
                values = tuple(int(x) for x in lengths)
            except (TypeError, ValueError):
                raise InvalidOptionError(f"lengths must be positive integers; got {self.lengths!r}") from None
            if not values or any(v < 1 or v != x for v, x in zip(values, lengths)):
                raise InvalidOptionError(f"lengths must be a non-empty list of positive integers; got {self.lengths!r}")
            object.__setattr__(self, "lengths", tuple(sorted(set(values))))
        depths = (self.depths,) if isinstance(self.depths, (int, float)) else self.depths
        try:
            dvalues = tuple(float(x) for x in depths)
        except (TypeError, ValueError):
            raise InvalidOptionError(f"depths must be numbers in [0, 1]; got {self.depths!r}") from None
        if not dvalues or any(not (0.0 <= d <= 1.0) for d in dvalues):
            raise InvalidOptionError(f"depths must be a non-empty list of numbers in [0, 1]; got {self.depths!r}")
        object.__setattr__(self, "depths", tuple(sorted(set(dvalues))))

    @property
    def n_decode(self) -> int:
        """Tokens decoded per trial."""
        return self.answer_len + self.extra_tokens

    def build(self, model: Any) -> NeedleTrials:
        """Build the trials for ``model``'s tokenizer and context.

        Raises:
            DetectorNotApplicableError: the context is too short for any needle, or the
                vocabulary cannot make a needle whose answer occurs nowhere else.
            InvalidOptionError: a requested length does not fit, or ``filler="text"`` /
                ``question="natural"`` with a tokenizer that cannot spell the text.
        """
        info = model_info(model)
        bos = info.prepend_bos if self.prepend_bos is None else self.prepend_bos
        if bos and info.bos_token_id is None:
            raise InvalidOptionError("prepend_bos=True but the model has no tokenizer with a BOS token")
        ordinary = ordinary_ids(info)
        text, reason = _TextFiller.make(getattr(model, "tokenizer", None), ordinary, self)
        filler = "text" if text is not None else "random"
        if self.question == "natural" and text is None:
            raise InvalidOptionError(
                f"question='natural' needs text filler, and this model cannot have it ({reason}); "
                "use question='copy'"
            )
        if text is None:
            needed = _RANDOM_LEAD_LEN + self.answer_len + 1
            if len(ordinary) < needed:
                raise DetectorNotApplicableError(
                    f"the vocabulary cannot make needles: a needle needs {needed - 1} distinct ordinary tokens "
                    f"that occur nowhere else, plus at least one token of haystack, but the model has "
                    f"{len(ordinary)} ordinary tokens. Lower answer_len (now {self.answer_len})."
                )
            fixed = int(bos) + 2 * _RANDOM_LEAD_LEN + self.answer_len
        else:
            fixed = int(bos) + text.max_fixed_len(self.question, self.answer_len)
        shortest = fixed + 1  # at least one haystack token
        room = info.n_ctx - (self.n_decode - 1)  # decoded tokens, but the last, are fed back
        if room < shortest:
            raise DetectorNotApplicableError(
                f"the model's context ({info.n_ctx} tokens) is too short for any needle: a prompt needs "
                f"at least {shortest} tokens (BOS, needle with {self.answer_len} answer tokens, question, "
                f"one haystack token) plus {self.n_decode - 1} decoded tokens. Lower answer_len."
            )
        if self.lengths is None:
            top = min(room, max(self.max_length, shortest))
            lengths = sorted({max(shortest, top // 4), max(shortest, top // 2), top})
        else:
            lengths = list(self.lengths)
            bad = [n for n in lengths if not shortest <= n <= room]
            if bad:
                raise InvalidOptionError(
                    f"lengths {bad} do not fit: with {filler} filler a prompt needs at least {shortest} "
                    f"tokens, and at most {room} fit the model's context of {info.n_ctx} with "
                    f"{self.n_decode} decoded tokens. Choose lengths in [{shortest}, {room}]."
                )
        g = torch.Generator().manual_seed(self.seed)
        tokens, answers, rows = [], [], []
        for length in lengths:
            for depth in self.depths:
                for k in range(self.n_needles):
                    if text is None:
                        prompt, answer, row = _random_trial(ordinary, length, depth, bos, info, self, g)
                    else:
                        prompt, answer, row = text.trial(length, depth, bos, info, self, g)
                    rows.append({"trial": len(rows), "length": length, "depth": depth, "needle": k, **row})
                    tokens.append(prompt)
                    answers.append(answer)
        meta = {
            "kind": "needle_in_a_haystack",
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "lengths": lengths,
            "filler": filler,
            "filler_reason": reason,
            "prepend_bos": bool(bos),
            "n_trials": len(rows),
            "n_decode": self.n_decode,
        }
        return NeedleTrials(tuple(tokens), tuple(answers), pd.DataFrame(rows), self.n_decode, meta)


def _draw(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return pool[torch.randperm(len(pool), generator=g)[:n]]


def _insert_at(haystack_len: int, depth: float, boundaries: Sequence[int]) -> int:
    target = depth * haystack_len
    return min(boundaries, key=lambda b: (abs(b - target), b))


def _assemble(
    bos: bool, info: ModelInfo, hay: torch.Tensor, at: int, needle: torch.Tensor, question: torch.Tensor
) -> torch.Tensor:
    parts = [hay[:at], needle, hay[at:], question]
    if bos:
        parts.insert(0, torch.tensor([info.bos_token_id]))
    return torch.cat(parts).long()


def _random_trial(
    ordinary: torch.Tensor, length: int, depth: float, bos: bool, info: ModelInfo, probe: NeedleHaystack,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    picked = _draw(ordinary, _RANDOM_LEAD_LEN + probe.answer_len, g)
    lead, answer = picked[:_RANDOM_LEAD_LEN], picked[_RANDOM_LEAD_LEN:]
    pool = ordinary[~torch.isin(ordinary, picked)]
    hay_len = length - int(bos) - 2 * _RANDOM_LEAD_LEN - probe.answer_len
    hay = pool[torch.randint(len(pool), (hay_len,), generator=g)]
    at = _insert_at(hay_len, depth, range(hay_len + 1))
    prompt = _assemble(bos, info, hay, at, torch.cat([lead, answer]), lead)
    start = int(bos) + at
    return prompt, answer.clone(), {
        "needle_start": start, "answer_start": start + _RANDOM_LEAD_LEN, "answer_len": probe.answer_len,
        "filler": "random",
    }


@dataclasses.dataclass(frozen=True)
class _TextFiller:
    """The shipped sentences and needle templates, in one tokenizer's ids."""

    tokenizer: Any
    sentences: tuple[torch.Tensor, ...]
    places: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]  # (lead, natural question, stop)
    answer_pool: torch.Tensor

    @classmethod
    def make(cls, tokenizer: Any, ordinary: torch.Tensor, probe: NeedleHaystack) -> tuple[_TextFiller | None, str]:
        if probe.filler == "random":
            return None, "filler='random' was asked for"
        if tokenizer is None:
            reason = "the model has no tokenizer"
        else:
            allowed = set(ordinary.tolist())
            encode = _encoder(tokenizer)

            def spell(text: str) -> torch.Tensor | None:
                ids = encode(text)
                return torch.tensor(ids) if ids and all(i in allowed for i in ids) else None

            sentences = [s for s in (spell(x) for x in _sentences()) if s is not None]
            stop = spell(".")
            places = []
            for place in _PLACES:
                lead, question = spell(_LEAD.format(place=place)), spell(_QUESTION.format(place=place))
                if lead is not None and question is not None and stop is not None:
                    places.append((lead, question, stop))
            share = len(sentences) / len(_sentences())
            # copy style needs the lead-in's last token absent from most sentences (a
            # character-level tokenizer ends it in a letter found everywhere)
            places = [p for p in places if sum(not bool((s == p[0][-1]).any()) for s in sentences) >= len(sentences) / 4]
            used = torch.cat([*sentences, *(t for p in places for t in p)]) if sentences and places else None
            spare = ordinary if used is None else ordinary[~torch.isin(ordinary, used)]
            if share < _MIN_TEXT_SENTENCES or not places:
                reason = (
                    f"the tokenizer spells {share:.0%} of the shipped filler sentences"
                    + ("" if places else " and no needle template whose lead-in ends in a token the sentences rarely use")
                    + " with ordinary tokens"
                )
            elif len(spare) < 2 * probe.answer_len:
                reason = (f"only {len(spare)} tokens of the vocabulary are unused by the filler text, too few "
                          f"to make answers of {probe.answer_len} tokens that occur nowhere else")
            else:
                # answers look like words where the vocabulary has enough of them
                decoded = tokenizer.batch_decode([[i] for i in spare.tolist()])
                words = [i for i, s in zip(spare.tolist(), decoded) if len(s.strip()) >= 2 and s.strip().isascii() and s.strip().isalpha()]
                pool = torch.tensor(words) if len(words) >= 8 * probe.answer_len else spare
                return cls(tokenizer, tuple(sentences), tuple(places), pool), (
                    f"the tokenizer spells {share:.0%} of the shipped filler sentences"
                )
        if probe.filler == "text":
            raise InvalidOptionError(
                f"filler='text' needs a tokenizer that spells the shipped sentences, but {reason}; "
                "use filler='auto' or 'random'"
            )
        return None, reason

    def max_fixed_len(self, question: QuestionStyle, answer_len: int) -> int:
        """Longest needle plus question over the templates (tokens)."""
        return max(len(lead) + answer_len + len(stop) + (len(lead) if question == "copy" else len(q))
                   for lead, q, stop in self.places)

    def trial(
        self, length: int, depth: float, bos: bool, info: ModelInfo, probe: NeedleHaystack, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lead, natural, stop = self.places[int(torch.randint(len(self.places), (1,), generator=g))]
        question = lead if probe.question == "copy" else natural
        key = lead[-1]
        usable = [s for s in self.sentences if len(s) and not bool((s == key).any())]
        if not usable:  # make() keeps only templates whose last token most sentences avoid
            raise DetectorNotApplicableError("no filler sentence avoids the needle's lead-in token; use filler='random'")
        hay_len = length - int(bos) - len(lead) - probe.answer_len - len(stop) - len(question)
        chunks, total = [], 0
        while total < hay_len:
            for i in torch.randperm(len(usable), generator=g).tolist():
                chunks.append(usable[i])
                total += len(usable[i])
                if total >= hay_len:
                    break
        # trim the front of the first sentence, so the haystack reads like an excerpt
        cut = total - hay_len
        while chunks and cut >= len(chunks[0]):
            cut -= len(chunks.pop(0))
        if chunks:
            chunks[0] = chunks[0][cut:]
        hay = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
        ends = np.cumsum([0] + [len(c) for c in chunks]).tolist()
        at = _insert_at(hay_len, depth, ends)
        taken = torch.cat([hay, lead, question, stop])
        pool = self.answer_pool[~torch.isin(self.answer_pool, taken)]
        if len(pool) < probe.answer_len:
            raise DetectorNotApplicableError(
                f"the vocabulary cannot make needles: only {len(pool)} tokens are left that occur "
                f"nowhere in the prompt, and a needle needs {probe.answer_len}. Lower answer_len or "
                "use filler='random'."
            )
        answer = _draw(pool, probe.answer_len, g)
        prompt = _assemble(bos, info, hay, at, torch.cat([lead, answer, stop]), question)
        start = int(bos) + at
        return prompt, answer.clone(), {
            "needle_start": start, "answer_start": start + len(lead), "answer_len": probe.answer_len,
            "filler": "text",
        }


def _encoder(tokenizer: Any) -> Any:
    """``text -> ids`` that joins sentences with one space whatever the tokenizer's convention."""

    def raw(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    # Byte-level BPE needs the space in the token (" The"); SentencePiece adds its own word
    # marker, and a leading space would become an extra token. Ask the tokenizer which it is.
    sep = " " if len(raw(" a b")) == len(raw("a b")) else ""
    return lambda text: raw(sep + text)


@dataclasses.dataclass(frozen=True, eq=False)
class NeedleTrials:
    """Built needle trials: what :func:`decode_needles` runs.

    Attributes:
        tokens: one prompt ``[pos]`` per trial.
        answers: the answer ids ``[answer_len]`` of each trial.
        frame: one row per trial: ``trial, length, depth, needle, needle_start, answer_start,
            answer_len, filler``.
        n_decode: tokens to decode per trial.
        meta: the probe's options and what was resolved (lengths, filler and why).
    """

    tokens: tuple[Int[torch.Tensor, " _pos"], ...]
    answers: tuple[Int[torch.Tensor, " _answer"], ...]
    frame: pd.DataFrame
    n_decode: int
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (f"NeedleTrials({len(self)} trials, lengths {self.meta['lengths']}, depths "
                f"{list(self.meta['depths'])}, {self.meta['filler']} filler, {self.meta['question']} question)")


@final
@dataclasses.dataclass(frozen=True, eq=False)
class NeedleRun(Result):
    """What greedy decoding of needle trials produced.

    Attributes:
        trials: the trials decoded.
        generated: ``[trial, step]`` the greedily decoded ids.
        keys: ``[trial, step, layer, head]`` the argmax key position of each head's emitting
            query at each step, or ``None`` when not recorded (masked runs).
        mode: ``"kv_cache"`` or ``"recompute"`` (full forward per step), and why.
        masked: the heads masked during decoding and how, or ``None``.

    ``save(path)`` keeps all of it (the trials' prompts and answers, the decoded ids and keys
    with their dtypes); ``hz.NeedleRun.load(path)`` gives it back.
    """

    _FORMAT = "NeedleRun"

    trials: NeedleTrials
    generated: Int[torch.Tensor, "trial step"]
    keys: Int[torch.Tensor, "trial step layer head"] | None
    mode: str
    masked: dict[str, Any] | None = None

    @property
    def recall(self) -> np.ndarray:
        """``[trial]`` share of each answer's tokens that appear among the decoded tokens."""
        out = np.zeros(len(self.trials))
        for i, answer in enumerate(self.trials.answers):
            out[i] = float(torch.isin(answer, self.generated[i]).double().mean())
        return out

    def retrieved(self, min_recall: float = 0.5) -> np.ndarray:
        """``[trial]`` whether the needle was retrieved (recall strictly above ``min_recall``)."""
        return self.recall > min_recall

    def copy_scores(self) -> Float[torch.Tensor, "trial layer head"]:
        """Per-trial retrieval score of every head: the share of the answer's tokens the head
        copy-pasted (its argmax key lay in the answer span and held the token being emitted)."""
        if self.keys is None:
            raise InvalidOptionError("this run did not record attention (masked runs do not); decode with mask_heads=None")
        n, steps, n_layers, n_heads = self.keys.shape
        out = torch.zeros(n, n_layers, n_heads, dtype=torch.float64)
        for i in range(n):
            seq = torch.cat([self.trials.tokens[i], self.generated[i]])
            row = self.trials.frame.iloc[i]
            a0, alen = int(row["answer_start"]), int(row["answer_len"])
            j = self.keys[i].long()  # [step, layer, head]
            at = seq[j.clamp(0, len(seq) - 1)]
            hit = (j >= a0) & (j < a0 + alen) & (at == self.generated[i][:, None, None])
            # a head scores each answer token once, however many steps it copied it in
            copied = torch.zeros(alen, n_layers, n_heads, dtype=torch.bool)
            for p in range(alen):
                copied[p] = (hit & (j == a0 + p)).any(0)
            out[i] = copied.double().sum(0) / alen
        return out

    def head_scores(self, min_recall: float = 0.5) -> Float[torch.Tensor, "layer head"]:
        """The retrieval score: mean per-trial score over the trials whose needle was retrieved.

        Raises:
            DetectorNotApplicableError: no needle was retrieved, so there is nothing to score
                (all-zero scores would look like a finding).
        """
        ok = torch.as_tensor(self.retrieved(min_recall))
        if not bool(ok.any()):
            recall = self.recall
            raise DetectorNotApplicableError(
                f"retrieval: the model retrieved none of the {len(recall)} needles (a trial counts when the "
                f"answer recall is above {min_recall}; mean recall {recall.mean():.2f}, best {recall.max():.2f}), "
                "so no head can be scored as copying it. Scores of 0 would not be a finding. Check that the "
                "model can copy from context at these lengths (shorter lengths, question='copy'), or lower min_recall."
            )
        return self.copy_scores()[ok].mean(0)

    def to_frame(self, min_recall: float = 0.5) -> pd.DataFrame:
        """One row per trial: the trial's layout plus ``recall``, ``retrieved`` and the decoded ids."""
        df = self.trials.frame.copy()
        df["recall"] = self.recall
        df["retrieved"] = self.retrieved(min_recall)
        df["answer"] = [a.tolist() for a in self.trials.answers]
        df["generated"] = self.generated.tolist()
        return df

    def frame(self, min_recall: float = 0.5) -> pd.DataFrame:
        """The same as :meth:`to_frame` (its earlier name)."""
        return self.to_frame(min_recall)

    def _recall_table(self) -> pd.DataFrame:
        """Mean answer recall, ``length x depth``."""
        df = self.trials.frame[["length", "depth"]].copy()
        df["recall"] = self.recall
        return cast(pd.Series, df.groupby(["length", "depth"])["recall"].mean()).unstack("depth")

    def plot(self, min_recall: float = 0.5) -> Any:
        """Mean answer recall per prompt length and needle depth, as a plotly ``Figure``
        (returned, never shown); the title gives the share of needles retrieved."""
        import plotly.graph_objects as go

        table = self._recall_table()
        share = float(self.retrieved(min_recall).mean()) if len(self.trials) else float("nan")
        fig = go.Figure(go.Heatmap(
            z=table.to_numpy(), x=[f"{d:g}" for d in table.columns], y=[str(n) for n in table.index],
            colorscale="Blues", zmin=0.0, zmax=1.0, colorbar={"title": "recall"},
            hovertemplate="length %{y}, depth %{x}<br>recall %{z:.2f}<extra></extra>",
        ))
        fig.update_xaxes(title_text="needle depth", type="category")
        fig.update_yaxes(title_text="prompt length (tokens)", type="category")
        what = "masked " + " ".join(f"L{a}H{b}" for a, b in self.masked["heads"]) if self.masked else "no heads masked"
        fig.update_layout(title=html.escape(f"headzoo: needles retrieved {share:.0%} ({what}; {self.mode})"),
                          height=max(300, 40 * len(table) + 180), width=max(420, 70 * len(table.columns) + 220))
        return fig

    def __repr__(self) -> str:
        return (f"NeedleRun({len(self.trials)} trials, mean recall {self.recall.mean():.2f}, {self.mode}"
                + (f", masked {self.masked['heads']} ({self.masked['method']})" if self.masked else "") + ")")

    def _repr_html_(self) -> str:
        """Self-contained HTML (no scripts): the run in one line and recall per length and depth."""
        table = self._recall_table().to_html(float_format=lambda x: f"{x:.2f}", escape=True)
        return (f"<div style='font-family:sans-serif;font-size:12px'><b>NeedleRun</b> &middot; "
                f"{html.escape(repr(self))}<br>mean answer recall by prompt length (rows) and needle depth "
                f"(columns){table}</div>")

    # -- persistence (save and load come from Result) --------------------------------------
    def _to_payload(self) -> Payload:
        def ragged(name: str, parts: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
            dtypes = {p.dtype for p in parts}
            if len(dtypes) > 1:
                raise InvalidOptionError(f"cannot save: the trials' {name} mix dtypes {sorted(map(str, dtypes))}")
            flat = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
            return {name: flat.detach().cpu().numpy(),
                    f"{name}_lengths": np.array([p.numel() for p in parts], dtype=np.int64)}

        arrays = {**ragged("tokens", self.trials.tokens), **ragged("answers", self.trials.answers),
                  "generated": self.generated.detach().cpu().numpy()}
        if self.keys is not None:
            arrays["keys"] = self.keys.detach().cpu().numpy()
        meta = {"mode": self.mode, "masked": self.masked, "n_decode": self.trials.n_decode, "trials": self.trials.meta}
        return Payload(self.to_frame(), meta, tables={"trials": self.trials.frame}, arrays=arrays)

    @classmethod
    def _from_payload(cls, payload: Payload) -> NeedleRun:
        arrays = payload.arrays

        def split(name: str) -> tuple[torch.Tensor, ...]:
            flat, lengths = arrays[name], arrays[f"{name}_lengths"]
            if int(lengths.sum()) != len(flat):
                raise ValueError(f"{name}: lengths add up to {int(lengths.sum())}, not {len(flat)}")
            if not len(lengths):
                return ()
            return tuple(torch.from_numpy(part.copy()) for part in np.split(flat, np.cumsum(lengths)[:-1]))

        meta = payload.meta
        trials = NeedleTrials(split("tokens"), split("answers"), payload.tables["trials"], meta["n_decode"], meta["trials"])
        keys = torch.from_numpy(arrays["keys"].copy()) if "keys" in arrays else None
        return cls(trials, torch.from_numpy(arrays["generated"].copy()), keys, meta["mode"], meta["masked"])


def decode_needles(
    model: Any,
    trials: NeedleTrials,
    *,
    batch_size: int = 4,
    use_kv_cache: bool = True,
    mask_heads: Any = None,
    mask_method: Literal["uniform", "zero"] = "uniform",
    progress: bool | None = None,
) -> NeedleRun:
    """Decode every trial greedily and keep, per step and head, the argmax key of the last query.

    With ``use_kv_cache`` the prompt is run once and each new token costs one single-position
    forward: ``HookedTransformer``'s own key-value cache, or the Hugging Face cache behind a
    ``TransformerBridge``. It is checked once against a full forward; a model whose cache is
    missing (``boot_native`` bridges) or disagrees is decoded by a full forward per step, which
    gives the same tokens and keys.

    Args:
        trials: from :meth:`NeedleHaystack.build`.
        batch_size: trials per forward (trials of one length are batched; no padding).
        mask_heads: ``(layer, head)`` pairs to mask while decoding: at every query that emits a
            token (the prompt's last position and each decoded one), as in the paper; the
            prompt itself is processed normally. Masked runs decode with the key-value cache
            too (where the model has one) and do not record attention.
        mask_method: ``"uniform"`` (attention spread evenly over the visible keys, the paper's
            masking) or ``"zero"`` (the head's output zeroed), via :func:`hz.ablate`'s hooks.

    Returns:
        :class:`NeedleRun`.
    """
    from headzoo._ablation import ablation_hooks

    info = model_info(model)
    check_finite(model)
    if not isinstance(trials, NeedleTrials):
        raise InvalidOptionError(f"trials must come from hz.NeedleHaystack(...).build(model); got {type(trials).__name__}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    use_kv_cache = check_bool(use_kv_cache, "use_kv_cache")
    if mask_method not in ("uniform", "zero"):
        raise InvalidOptionError(f"mask_method must be 'uniform' or 'zero'; got {mask_method!r}")
    too_long = [i for i, t in enumerate(trials.tokens) if len(t) + trials.n_decode - 1 > info.n_ctx]
    if too_long or any(int(t.max()) >= info.d_vocab for t in trials.tokens):
        raise InvalidOptionError("these trials were built for another model (they do not fit this one); build them with this model")
    edit: Callable[[int], list] | None = None
    if mask_heads is not None:
        ablation_hooks(model, mask_heads, mask_method)  # checks the heads and hooks up front

        from headzoo._masking import decode_mask_hooks

        def mask_edit(prompt_len: int) -> list:
            # every query that emits a token: the prompt's last position and each decoded one;
            # the hooks follow the positions across cached passes (a running sum of values)
            return decode_mask_hooks(model, mask_heads, mask_method, prompt_len)

        edit = mask_edit

    out = greedy_decode(model, info, trials.tokens, trials.n_decode, batch_size=batch_size, use_kv_cache=use_kv_cache,
                        record_keys=mask_heads is None, edit=edit, progress=progress, desc="headzoo needles")
    masked = None if mask_heads is None else {"heads": [list(map(int, h)) for h in mask_heads], "method": mask_method}
    return NeedleRun(trials, out.generated, out.keys, out.mode, masked)
