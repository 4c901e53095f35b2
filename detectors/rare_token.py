"""Rare-token heads: the strongest attention goes to the least frequent token in context.

Voita et al. 2019 (Analyzing Multi-Head Self-Attention, arXiv 1905.09418) found, in every
encoder layer they pruned least, a head whose maximum attention points to the least frequent
token of the sentence. Frequency here is a count of a corpus tokenised by the model's own
tokenizer: the English text shipped with headzoo (default) or a UTF-8 text file the user
names (``frequency="path/to/text.txt"``). Ids never seen count 0, so they are the rarest.

A head that always looks at one position hits the rarest token now and then by chance, as
often as that position is the rarest; the score subtracts that chance (the rarest keys'
share of the keys), so fixed-position and sink heads score about 0 or below.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class RareToken(hz.PatternDetector):
    """``score = hit_rate - chance`` per prompt, averaged over prompts.

    For each query ``q``, the candidate keys are ``1..q`` without special tokens, and the
    rarest keys those with the fewest occurrences in the frequency corpus (ties all count).
    Queries whose candidates all tie (fewer than two distinct counts) are skipped.

    - ``hit_rate``: share of queries whose most-attended key (argmax over the keys the head
      may attend to: ``0..q``, less key 0 / the diagonal with ``exclude_bos`` /
      ``exclude_current_token``) is a rarest key.
    - ``chance``: mean over the same queries of the rarest keys' share of those keys: the
      hit rate of a head whose argmax is a uniformly random key.
    - ``mass``: attention on the rarest keys (by the detector's ``measure``).

    Options:
        frequency: ``"shipped"`` (the shipped English text) or the path of a UTF-8 text file;
            either is tokenised by the model's tokenizer, paragraph by paragraph, without
            special tokens, and counted per id (unseen ids: 0; no smoothing is needed since
            only the order of counts matters).

    Raises (from ``bind``):
        hz.UnsupportedTokenizerError: the model has no tokenizer, or it spells most of the
            frequency corpus as its unknown token (no frequency can be counted).
        hz.InvalidOptionError: ``frequency`` is neither ``"shipped"`` nor a readable text file.
    """

    name = "rare_token"
    stage = "in-context identification"
    probe = "text"
    description = "Puts its strongest attention on the least frequent token in context."
    reference = "Voita et al. 2019, Analyzing Multi-Head Self-Attention, arXiv 1905.09418"
    variant = (
        "argmax: share of queries whose most-attended key is a rarest token among keys 1..q (fewest "
        "occurrences in the frequency corpus tokenised by the model's tokenizer; specials never count) minus "
        "chance (the rarest keys' share of the keys); queries whose candidates all tie skipped; also hit_rate, "
        "chance, mass"
    )
    # Ours: Voita et al. name the head by inspection. 0.3 above chance means the head picks
    # the rarest token far more often than a fixed position or a uniform head would; planted
    # rare-token heads score 0.85-0.97 on the shipped text, heads of other types within 0.1 of 0.
    threshold = 0.3
    score_range = (-1.0, 1.0)

    frequency: str = "shipped"

    def __post_init__(self) -> None:
        if isinstance(self.frequency, os.PathLike):
            object.__setattr__(self, "frequency", os.fspath(self.frequency))
        super().__post_init__()
        if self.frequency != "shipped" and not Path(self.frequency).expanduser().is_file():
            raise hz.InvalidOptionError(
                f"{self.name}: frequency={self.frequency!r} is neither 'shipped' nor an existing file; give the "
                "path of a UTF-8 text file to count token frequencies in."
            )

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "frequency": {
                "source": "shipped text (headzoo/_data/text/shipped.txt)" if self.frequency == "shipped" else self.frequency,
                "counted": "tokenised by the model's tokenizer paragraph by paragraph, no special tokens; count per id",
                "unseen_ids": "count 0 (the rarest)",
                "smoothing": "none (only the order of counts matters)",
            },
        }

    def bind(self, model: Any, info: Any) -> RareToken:
        tokenizer = getattr(model, "tokenizer", None)
        tables = hz.vocab_tables(tokenizer, info.d_vocab, who=self.name)
        counts = hz.token_counts(tokenizer, self.frequency, info.d_vocab).double()
        unk = getattr(tokenizer, "unk_token_id", None)
        unknown = float(counts[unk] / counts.sum().clamp_min(1)) if unk is not None and 0 <= unk < len(counts) else 0.0
        if unknown > 0.5:
            raise hz.UnsupportedTokenizerError(
                f"{self.name}: the model's tokenizer spells {unknown:.0%} of the frequency corpus ({self.frequency}) "
                "as its unknown token, so token frequencies cannot be counted; pass frequency=<path of a text "
                "file in the tokenizer's vocabulary>."
            )
        counts[tables.special] = float("inf")  # specials are never the rare token
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "_counts", counts)
        return bound

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = getattr(self, "_counts", None)
        if counts is None:
            raise hz.DetectorNotApplicableError(
                f"{self.name} reads token frequencies through the model's tokenizer: bind it first, "
                "det = det.bind(model, hz.model_info(model)) (hz.detect does this)."
            )
        seq = tokens.shape[1]
        c = counts.to(tokens.device)[tokens]  # [batch, pos]
        keys = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(-1 if self.exclude_current_token else 0)
        keys[:, 0] = False
        candidate = keys & torch.isfinite(c)[:, None, :]  # [batch, query, key]
        inf = torch.tensor(float("inf"), dtype=c.dtype, device=c.device)
        low = torch.where(candidate, c[:, None, :], inf).amin(-1)
        high = torch.where(candidate, c[:, None, :], -inf).amax(-1)
        informative = high > low  # at least two distinct counts among the candidates
        return candidate & (c[:, None, :] == low[:, :, None]) & informative[:, :, None]

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        """``pattern [batch, head, query, key]``, ``match [batch, query, key]`` (the rarest keys)."""
        batch, heads, seq, _ = pattern.shape
        eligible = torch.ones(seq, seq, dtype=torch.bool, device=pattern.device).tril()
        if self.exclude_bos:
            eligible[:, 0] = False
        if self.exclude_current_token:
            eligible.fill_diagonal_(False)
        top = pattern.masked_fill(~eligible, -1.0).argmax(-1)  # [batch, head, query]; ties: the first key
        hit = match[:, None].expand(batch, heads, seq, seq).gather(-1, top[..., None])[..., 0].to(pattern.dtype)
        rows = match.any(-1)  # [batch, query]
        n_rows = rows.sum(-1).clamp_min(1).to(pattern.dtype)
        chance = (match & eligible).sum(-1).to(pattern.dtype) / eligible.sum(-1).clamp_min(1).to(pattern.dtype)
        w = rows[:, None, :].to(pattern.dtype)
        hit_rate = (hit * w).sum(-1) / n_rows[:, None]
        base = ((chance * rows).sum(-1) / n_rows)[:, None].expand(batch, heads)
        mass, _ = self._measure(pattern, match, self.exclude_bos, self.exclude_current_token)
        valid = rows.any(-1)
        return {"score": (hit_rate - base, valid), "hit_rate": (hit_rate, valid), "chance": (base, valid), "mass": (mass, valid)}
