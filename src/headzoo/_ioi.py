"""Indirect-object identification (IOI) prompts, written in any model's own tokens.

Wang et al. (2022, "Interpretability in the Wild", arXiv 2211.00593) found the circuit with
which GPT-2 small completes "When Mary and John went to the store, John gave a drink to" with
" Mary": the indirect object (IO), not the subject (S) that was repeated. They measure the
logit difference ``logit(IO) - logit(S)`` at the last token (END) and patch from the "ABC"
distribution, the same sentences with the three names (IO, S1, S2) replaced by three other,
distinct names, so no name is repeated and no answer is favoured.

:func:`ioi_prompts` builds both from built-in lists (package data under
``headzoo/_data/ioi/``, written for headzoo) or the user's own. A name is kept only where
``" Name"`` is one ordinary token; a template only where every sentence filled from it
tokenises exactly as its pieces do one by one, so the positions of IO, S1, S2 and END are known,
with no unknown token. :attr:`IOIPrompts.coverage` says how many survived.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from headzoo._errors import CorruptFileError, InvalidOptionError, UnsupportedTokenizerError
from headzoo._tokens import check_bool, check_int

__all__ = ["IOIPrompts", "ioi_prompts", "ioi_lists", "MIN_NAMES"]

#: IO, S and the three ABC names must all differ
MIN_NAMES = 5
_SLOT = re.compile(r"\{(IO|S|PLACE|OBJECT)\}")


@functools.cache
def _builtin() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    folder = importlib.resources.files("headzoo").joinpath("_data/ioi")
    try:
        names = json.loads(folder.joinpath("names.json").read_text(encoding="utf-8"))["names"]
        doc = json.loads(folder.joinpath("templates.json").read_text(encoding="utf-8"))
        out = (tuple(map(str, names)), tuple(map(str, doc["templates"])), tuple(map(str, doc["places"])),
               tuple(map(str, doc["objects"])))
    except (OSError, KeyError, TypeError, ValueError) as exc:  # a broken install, not a user error
        raise CorruptFileError(f"the built-in IOI lists under headzoo/_data/ioi cannot be read ({exc}); reinstall headzoo") from exc
    return out


def ioi_lists() -> dict[str, tuple[str, ...]]:
    """The built-in lists: ``names``, ``templates``, ``places``, ``objects`` (a fresh dict)."""
    names, templates, places, objects = _builtin()
    return {"names": names, "templates": templates, "places": places, "objects": objects}


@dataclass(frozen=True)
class IOIPrompts:
    """IOI prompts and their ABC-corrupted twins, in one tokenizer's ids.

    Prompts built from different templates differ in length; the blocks are right-padded
    (exact under causal attention) and ``lengths`` holds each row's real length. END, the last
    real position, is where the model should predict IO.

    Attributes:
        clean: ``[n, pos]`` ids of the IOI sentences, right-padded with ``pad_id``.
        corrupted: ``[n, pos]`` the same sentences with IO, S1 and S2 replaced by three other
            distinct names (the ABC distribution of Wang et al.).
        lengths: ``[n]`` real length of each row (clean and corrupted rows match).
        io, s: ``[n]`` token ids of the indirect object and the subject (the answer and the
            distractor of the logit difference).
        abc: ``[n, 3]`` the names that replace IO, S1 and S2 in ``corrupted``.
        io_pos, s1_pos, s2_pos, end_pos: ``[n]`` positions of IO, S1, S2 and END.
        template: ``[n]`` index into ``templates`` of each prompt's template.
        order: per prompt, ``"ABBA"`` (IO introduced first) or ``"BABA"``.
        texts: the clean sentences as text.
        templates, names: the templates and names that survived (names without leading space).
        coverage: how many names and templates were listed and kept, and why the others went.
        prepend_bos: whether position 0 is the tokenizer's BOS.
        pad_id: the id right-padding fills.
        seed: the seed the prompts were drawn with.
    """

    clean: Int[torch.Tensor, "n pos"]
    corrupted: Int[torch.Tensor, "n pos"]
    lengths: Int[torch.Tensor, " n"]
    io: Int[torch.Tensor, " n"]
    s: Int[torch.Tensor, " n"]
    abc: Int[torch.Tensor, "n 3"]
    io_pos: Int[torch.Tensor, " n"]
    s1_pos: Int[torch.Tensor, " n"]
    s2_pos: Int[torch.Tensor, " n"]
    end_pos: Int[torch.Tensor, " n"]
    template: Int[torch.Tensor, " n"]
    order: tuple[str, ...]
    texts: tuple[str, ...]
    templates: tuple[str, ...]
    names: tuple[str, ...]
    coverage: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = False
    pad_id: int = 0
    seed: int = 0

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def clean_prompts(self) -> list[list[int]]:
        """The clean rows without padding, as ``hz.patching`` takes prompts of different lengths."""
        return [row[:n].tolist() for row, n in zip(self.clean, self.lengths.tolist())]

    @property
    def corrupted_prompts(self) -> list[list[int]]:
        """The corrupted rows without padding (see :attr:`clean_prompts`)."""
        return [row[:n].tolist() for row, n in zip(self.corrupted, self.lengths.tolist())]

    def logit_diff(self, *, per_example: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The IOI metric for ``hz.patching`` on :attr:`clean_prompts` / :attr:`corrupted_prompts`:
        ``logit(IO) - logit(S)`` at each row's END (its last real position), mean over prompts
        (``[n]`` with ``per_example``)."""
        from headzoo.patching import logit_diff

        return logit_diff(self.io, self.s, pos=-1, per_example=per_example)

    def logit_diffs(self, logits: torch.Tensor) -> torch.Tensor:
        """``[n]`` ``logit(IO) - logit(S)`` at END, from logits ``[n, pos, vocab]`` of the padded
        :attr:`clean` (or :attr:`corrupted`) block."""
        if logits.ndim != 3 or logits.shape[0] != len(self):
            raise InvalidOptionError(f"logits must be [n={len(self)}, pos, vocab]; got {tuple(logits.shape)}")
        rows = torch.arange(len(self), device=logits.device)
        end = logits[rows, self.end_pos.to(logits.device)].float()
        return end[rows, self.io.to(logits.device)] - end[rows, self.s.to(logits.device)]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: ``text, template, order, io, s, io_pos, s1_pos, s2_pos, end_pos, length``."""
        return pd.DataFrame({
            "text": list(self.texts), "template": self.template.numpy(), "order": list(self.order),
            "io": self.io.numpy(), "s": self.s.numpy(), "io_pos": self.io_pos.numpy(), "s1_pos": self.s1_pos.numpy(),
            "s2_pos": self.s2_pos.numpy(), "end_pos": self.end_pos.numpy(), "length": self.lengths.numpy(),
        })

    def __repr__(self) -> str:
        c = self.coverage
        return (f"IOIPrompts({len(self)} prompts, names {c.get('names_kept')}/{c.get('names_listed')}, "
                f"templates {c.get('templates_kept')}/{c.get('templates_listed')}, seed={self.seed})")


# -- tokenizer access ---------------------------------------------------------------------------


def _tokenizer_of(model_or_tokenizer: Any) -> tuple[Any, int | None, bool]:
    """``(tokenizer, n_vocab, model's prepend_bos)`` from a model or a tokenizer."""
    if model_or_tokenizer is None:
        raise UnsupportedTokenizerError("IOI prompts need a tokenizer to spell names and templates; got None")
    if hasattr(model_or_tokenizer, "cfg"):  # a model
        from headzoo._models import model_info

        info = model_info(model_or_tokenizer)
        tok = getattr(model_or_tokenizer, "tokenizer", None)
        if tok is None:
            raise UnsupportedTokenizerError(
                f"{info.name} has no tokenizer, so IOI prompts (names and sentences) cannot be written in its ids; "
                "load the model with its tokenizer"
            )
        return tok, info.n_real_tokens, info.prepend_bos
    if not callable(getattr(model_or_tokenizer, "encode", None)):
        raise UnsupportedTokenizerError(
            f"ioi_prompts needs a model with a tokenizer or a Hugging Face tokenizer; got {type(model_or_tokenizer).__name__}"
        )
    tok = model_or_tokenizer
    return tok, None, getattr(tok, "bos_token_id", None) is not None


def _encoder(tok: Any, n_vocab: int | None) -> tuple[Callable[[str], tuple[int, ...]], set[int]]:
    banned = {int(i) for i in (getattr(tok, "all_special_ids", None) or [])}
    if getattr(tok, "unk_token_id", None) is not None:
        banned.add(int(tok.unk_token_id))

    @functools.cache
    def encode(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(i) for i in tok.encode(text, add_special_tokens=False))
        except Exception:  # a tokenizer that cannot encode the text cannot spell it
            return (-1,)

    return encode, banned


def _ordinary(ids: Sequence[int], banned: set[int], n_vocab: int | None) -> bool:
    return all(i >= 0 and i not in banned and (n_vocab is None or i < n_vocab) for i in ids)


def _check_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise InvalidOptionError(f"{what} must be a list of non-empty strings; got {value!r}")
    if not value:
        raise InvalidOptionError(f"{what} is empty")
    return tuple(dict.fromkeys(value))


def _check_template(t: str) -> None:
    slots = _SLOT.findall(t)
    names = [s for s in slots if s in ("IO", "S")]
    stray = re.sub(_SLOT, "", t)
    if "{" in stray or "}" in stray:
        raise InvalidOptionError(f"template {t!r} has a placeholder other than {{IO}}, {{S}}, {{PLACE}}, {{OBJECT}}")
    if names.count("IO") != 1 or names.count("S") != 2 or names[-1] != "S":
        raise InvalidOptionError(
            f"template {t!r} must hold {{IO}} once and {{S}} twice, the second {{S}} after {{IO}} "
            "(the sentence introduces IO and S, then S acts again)"
        )
    if not t.rstrip() or t != t.rstrip() or _SLOT.match(t) or t.rstrip().endswith(("{IO}", "{S}")):
        raise InvalidOptionError(
            f"template {t!r} must start with a word (a name at the very start is spelled without its "
            "leading space) and end right before the answer, with no trailing space"
        )


def _pieces(template: str, place: str, obj: str) -> list[str | None]:
    """The template as literal text pieces and ``None`` for each name slot (IO or S, in order)."""
    text = template.replace("{PLACE}", place).replace("{OBJECT}", obj)
    out: list[str | None] = []
    for part in re.split(r"(\{IO\}|\{S\})", text):
        if part in ("{IO}", "{S}"):
            if out and isinstance(out[-1], str) and out[-1].endswith(" "):
                out[-1] = out[-1][:-1]  # the space belongs to the name's token (" Mary")
            out.append(None)
        elif part:
            out.append(part)
    return out


def _fits(pieces: list[str | None], name_ids: Sequence[int], names: Sequence[str], encode: Callable, banned: set[int],
          n_vocab: int | None) -> tuple[list[int], list[int]] | None:
    """``(ids, slot positions)`` when the sentence tokenises as its pieces do one by one."""
    ids: list[int] = []
    slots: list[int] = []
    k = 0
    text = ""
    for p in pieces:
        if p is None:
            slots.append(len(ids))
            ids.append(name_ids[k])
            text += " " + names[k]
            k += 1
        else:
            part = encode(p)
            if not part or not _ordinary(part, banned, n_vocab):
                return None
            ids.extend(part)
            text += p
    return (ids, slots) if list(encode(text)) == ids else None


def ioi_prompts(
    model_or_tokenizer: Any,
    n: int = 64,
    *,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    prepend_bos: bool | None = None,
) -> IOIPrompts:
    """IOI prompts and their ABC corruptions for a model's (or a tokenizer's) own tokens.

    Args:
        model_or_tokenizer: a TransformerLens model with a tokenizer, or a Hugging Face tokenizer.
        n: number of prompts, drawn with equal chances from the surviving templates (ABBA and
            BABA alike among the built-in ones).
        seed: seeds the draws of templates, names, places and objects.
        templates: sentences with ``{IO}`` once and ``{S}`` twice (the second after IO), ending
            right before the answer; ``{PLACE}`` and ``{OBJECT}`` are filled from the built-in
            lists. Default: the built-in 16.
        names: first names without leading space (default: the built-in 100).
        prepend_bos: put the tokenizer's BOS first; ``None`` follows the model (a bare
            tokenizer: yes when it has a BOS token).

    Raises:
        UnsupportedTokenizerError: no tokenizer; fewer than 5 names are one token each; no
            template tokenises with known positions. The message says what was missing.
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed")
    if prepend_bos is not None:
        check_bool(prepend_bos, "prepend_bos")
    listed = ioi_lists()
    name_list = listed["names"] if names is None else _check_list(names, "names")
    template_list = listed["templates"] if templates is None else _check_list(templates, "templates")
    for t in template_list:
        _check_template(t)
    tok, n_vocab, model_bos = _tokenizer_of(model_or_tokenizer)
    bos = model_bos if prepend_bos is None else prepend_bos
    bos_id = getattr(tok, "bos_token_id", None)
    if bos and bos_id is None:
        raise InvalidOptionError("prepend_bos=True but the tokenizer has no BOS token")
    encode, banned = _encoder(tok, n_vocab)

    # names: " Name" must be one ordinary token, and distinct names distinct tokens
    kept_names: list[str] = []
    name_id: dict[str, int] = {}
    split: list[str] = []
    for name in name_list:
        ids = encode(" " + name.strip())
        if len(ids) != 1 or not _ordinary(ids, banned, n_vocab):
            split.append(name)
            continue
        if ids[0] in name_id.values():
            continue
        kept_names.append(name)
        name_id[name] = ids[0]
    if len(kept_names) < MIN_NAMES:
        raise UnsupportedTokenizerError(
            f"this tokenizer spells only {len(kept_names)} of {len(name_list)} names as one token (' Name'), "
            f"e.g. {split[:3]!r} are not; IOI prompts need at least {MIN_NAMES} (IO, S and three ABC names). "
            "Pass names= that are single tokens of this tokenizer."
        )

    # templates: every place and object filled in, with two probe names, must line up
    places, objects = listed["places"], listed["objects"]
    probe = kept_names[:2]
    kept_templates: list[str] = []
    dropped: dict[str, str] = {}
    for t in template_list:
        fills = [(p, o) for p in (places if "{PLACE}" in t else places[:1]) for o in (objects if "{OBJECT}" in t else objects[:1])]
        good = [(p, o) for p, o in fills
                if _fits(_pieces(t, p, o), [name_id[probe[0]], name_id[probe[1]], name_id[probe[1]]],
                         [probe[0], probe[1], probe[1]], encode, banned, n_vocab) is not None]
        if len(good) == len(fills):
            kept_templates.append(t)
        else:
            dropped[t] = f"{len(fills) - len(good)} of {len(fills)} fillings do not tokenise piece by piece or hold unknown tokens"
    if not kept_templates:
        raise UnsupportedTokenizerError(
            f"none of the {len(template_list)} IOI templates tokenises with known name positions and no unknown "
            f"token in this tokenizer (e.g. {next(iter(dropped))!r}: {next(iter(dropped.values()))}); "
            "pass templates= written in words this tokenizer knows"
        )

    rng = np.random.default_rng(seed)
    rows_c, rows_x, meta = [], [], []
    for _ in range(n):
        ti = int(rng.integers(len(kept_templates)))
        t = kept_templates[ti]
        place = places[int(rng.integers(len(places)))] if "{PLACE}" in t else places[0]
        obj = objects[int(rng.integers(len(objects)))] if "{OBJECT}" in t else objects[0]
        picks = [kept_names[j] for j in rng.choice(len(kept_names), size=MIN_NAMES, replace=False)]
        io_name, s_name, abc = picks[0], picks[1], picks[2:]
        order = re.findall(r"\{(IO|S)\}", t)
        slot_names = [io_name if s == "IO" else s_name for s in order]
        # ABC: IO, S1, S2 each replaced by its own name (S1 and S2 differ)
        abc_names, s_seen = [], 0
        for s in order:
            if s == "IO":
                abc_names.append(abc[0])
            else:
                abc_names.append(abc[1 + s_seen])
                s_seen += 1
        pieces = _pieces(t, place, obj)
        clean = _fits(pieces, [name_id[x] for x in slot_names], slot_names, encode, banned, n_vocab)
        corrupt = _fits(pieces, [name_id[x] for x in abc_names], abc_names, encode, banned, n_vocab)
        if clean is None or corrupt is None or len(clean[0]) != len(corrupt[0]):
            raise UnsupportedTokenizerError(
                f"the IOI sentence from template {t!r} with names {slot_names} / {abc_names} does not tokenise "
                "piece by piece although the template passed with other names; pass names= or templates= that do"
            )
        head = [int(bos_id)] if bos and bos_id is not None else []  # (checked above: bos needs an id)
        ids_c, ids_x = head + clean[0], head + corrupt[0]
        slots = [p + len(head) for p in clean[1]]
        io_slot = slots[order.index("IO")]
        s_slots = [p for p, s in zip(slots, order) if s == "S"]
        rows_c.append(ids_c)
        rows_x.append(ids_x)
        text = t.replace("{PLACE}", place).replace("{OBJECT}", obj)
        text = text.replace("{IO}", io_name).replace("{S}", s_name)
        meta.append((name_id[io_name], name_id[s_name], [name_id[a] for a in abc], io_slot, s_slots[0], s_slots[1],
                     len(ids_c) - 1, ti, "ABBA" if order[0] == "IO" else "BABA", text))

    pad = getattr(tok, "pad_token_id", None)
    pad = int(pad) if pad is not None and (n_vocab is None or int(pad) < n_vocab) else 0
    length = max(len(r) for r in rows_c)
    clean_t = torch.full((n, length), pad, dtype=torch.long)
    corrupt_t = torch.full((n, length), pad, dtype=torch.long)
    for i, (a, b) in enumerate(zip(rows_c, rows_x)):
        clean_t[i, : len(a)] = torch.tensor(a)
        corrupt_t[i, : len(b)] = torch.tensor(b)
    col = lambda k: torch.tensor([m[k] for m in meta], dtype=torch.long)  # noqa: E731
    coverage = {
        "names_listed": len(name_list), "names_kept": len(kept_names), "names_not_one_token": split,
        "templates_listed": len(template_list), "templates_kept": len(kept_templates), "templates_dropped": dropped,
    }
    return IOIPrompts(
        clean=clean_t, corrupted=corrupt_t, lengths=torch.tensor([len(r) for r in rows_c], dtype=torch.long),
        io=col(0), s=col(1), abc=torch.tensor([m[2] for m in meta], dtype=torch.long), io_pos=col(3), s1_pos=col(4),
        s2_pos=col(5), end_pos=col(6), template=col(7), order=tuple(m[8] for m in meta), texts=tuple(m[9] for m in meta),
        templates=tuple(kept_templates), names=tuple(kept_names), coverage=coverage, prepend_bos=bool(bos), pad_id=pad,
        seed=seed,
    )
