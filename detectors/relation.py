"""Relation heads, read from the weights in the manner of MAPS.

Elhelo and Geva (2025), Inferring Functionality of Attention Heads from their Parameters
(MAPS), arXiv 2412.11965: a head's OV circuit mapped into vocabulary space,
``M = W_EE @ W_OV @ W_U``, says which output tokens the head raises when it attends to each
input token. For a relation given as (source, target) token pairs (France -> Paris, dog ->
dogs, hot -> cold), the relation score is the share of pairs whose target is among the top
``k`` logits of the source's row, over the whole vocabulary. Only the relation's source rows
are formed, in vocabulary blocks: never ``vocab x vocab``. Relations come from small built-in
lists written in the model's tokenizer (:func:`hz.relation_pairs`) or from the user's id pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import headzoo as hz

#: ties, as for the copying scores: two logits closer than this fraction of the largest logit
#: a source's row could hold (a Cauchy-Schwarz bound) count as equal; well above float32
#: rounding, far below real differences
_TIE = 1e-6


def _w_o(circuits: Any, layer: int) -> torch.Tensor:
    """``W_O`` of one layer as ``[head * d_head, d_model]`` (float32, on the workspace's device)."""
    w_o = circuits.w_o(layer)  # [head, d_head, d_model]
    return w_o.reshape(-1, w_o.shape[-1])


def _readout(circuits: Any, cols: slice | torch.Tensor) -> torch.Tensor:
    """``[d_model, col]``: the unembedding of output tokens ``cols`` behind the final norm's
    linear part (``WeightCircuits.final_readout``: its weight, and centring where it centres)."""
    return circuits.readout(cols)


def _logits(v: torch.Tensor, w_o: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """``[head, source, col]`` direct logit effects of the values ``v`` ``[head, source, d_head]``
    through ``W_O`` ``[head * d_head, d_model]`` and a ``readout`` ``[d_model, col]``.

    ``hz.WeightCircuits.ov_logits`` computes the same (a test checks it), but recomputes the
    values (LN1 and ``W_V``) on every call; a vocabulary pass asks once per block, so here the
    values are computed once per layer.
    """
    h, _, dh = v.shape
    return torch.bmm(v, (w_o @ readout).view(h, dh, -1))


def _as_pairs(pairs: Any) -> tuple[tuple[int, int], ...]:
    """The user's pairs as a tuple of ``(source, target)`` int tuples, checked; never mutated."""
    if isinstance(pairs, torch.Tensor):
        pairs = pairs.tolist()
    elif hasattr(pairs, "tolist") and hasattr(pairs, "ndim"):  # a numpy array
        pairs = pairs.tolist()
    if isinstance(pairs, (str, bytes, dict)) or not isinstance(pairs, (list, tuple)):
        raise hz.InvalidOptionError(
            f"relation: pairs must be a list of (source_id, target_id) pairs; got {type(pairs).__name__}"
        )
    out: list[tuple[int, int]] = []
    for i, pair in enumerate(pairs):
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(t, int) and not isinstance(t, bool) for t in pair
        )
        if not ok:
            raise hz.InvalidOptionError(
                f"relation: pairs[{i}] = {pair!r} is not a (source_id, target_id) pair of two integer token ids"
            )
        s, t = int(pair[0]), int(pair[1])
        if s < 0 or t < 0:
            raise hz.InvalidOptionError(f"relation: pairs[{i}] = {pair!r} holds a negative token id")
        if s == t:
            raise hz.InvalidOptionError(
                f"relation: pairs[{i}] = {pair!r} maps a token to itself; that is copying, which the "
                "'copying' detector scores. A relation pairs a source with a different target."
            )
        if (s, t) in out:
            raise hz.InvalidOptionError(f"relation: pairs[{i}] = {pair!r} repeats pairs[{out.index((s, t))}]")
        out.append((s, t))
    if len(out) < 2:
        raise hz.InvalidOptionError(
            f"relation: pairs needs at least 2 (source_id, target_id) pairs to give a hit rate; got {len(out)}"
        )
    return tuple(out)


@hz.register
@dataclasses.dataclass(frozen=True)
class Relation(hz.WeightDetector):
    """Relation score (MAPS): share of a relation's ``(source, target)`` pairs whose target is
    in the top ``k`` of ``W_EE[source] @ W_OV @ W_U`` over the whole vocabulary (ties count
    against the head), per relation; ``score`` is the best relation's.

    The best relation, not the mean: a head that maps countries to their capitals need not
    pluralise nouns, and a mean over five lists would cap such a head at 0.2. The chance of a
    hit is at most 5% per pair (``k`` shrinks to ``n_outputs // 20`` in small vocabularies), so
    the best of a few relations, each averaged over ``min_pairs`` or more pairs, stays low for
    a head that implements none.

    Other metrics, also per relation in ``details``:
        mean: mean over the relations scored.
        suppression: MAPS's suppression score, the same with ``-M`` (target in the bottom ``k``).
        within: share of pairs whose target has the largest logit among the relation's own
            tokens (its sources and targets, other true targets of the same source left out):
            the ranking restricted to the relation. A copying head fails it (the source itself
            competes), as it fails ``score``.

    Options:
        pairs: ``None`` (default): the built-in relations (``hz.relation_lists()``: antonyms,
            capitalisation, country_capital, plural, successor) in the model's tokenizer, each
            word tried as ``" X"`` and ``"X"``. Otherwise a list of ``(source_id, target_id)``
            pairs (at least 2, distinct, source != target), scored as one relation ``"pairs"``.
        relations: names of built-in relations to score (default: all); not with ``pairs``.
        k: rank cut-off over the vocabulary (default 10, as MAPS for relations other than
            copying); shrunk to ``n_outputs // 20`` (at least 1) in small vocabularies.
        min_pairs: built-in relations with fewer single-token pairs are skipped (and listed).
        n_tokens, seed: unused (every pair is scored).

    Per-relation scores: ``scores.details("relation")``; per-relation single-token counts
    (leading space or not) and skipped relations: ``scores.meta["detectors"]["relation"]["result"]``.
    """

    name = "relation"
    description = "Its OV circuit maps a token to a related one (France -> Paris, dog -> dogs, hot -> cold)."
    reference = "Elhelo and Geva 2025, Inferring Functionality of Attention Heads from their Parameters (MAPS), arXiv 2412.11965"
    variant = (
        "target in top k=10 of W_EE[s] W_OV W_U over the whole vocabulary (LN folded, MLP0 effective embedding); "
        "hit rate per relation; score = best relation"
    )
    # MAPS ranks heads by the score without one cut-off; 0.5 is headzoo's, as for copying: half
    # the relation's sources put their target in the top k, ten times what chance gives (<= 5%)
    threshold = 0.5
    score_range = (0.0, 1.0)  # hit rates
    stage = "knowledge recalling"

    pairs: Any = None
    relations: Any = None
    k: int = 10
    min_pairs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for option, low in (("k", 1), ("min_pairs", 2)):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise hz.InvalidOptionError(f"relation: {option} must be an integer >= {low}; got {value!r}")
        if self.pairs is not None:
            if self.relations is not None:
                raise hz.InvalidOptionError(
                    "relation: give pairs= (your own relation) or relations= (built-in ones), not both"
                )
            object.__setattr__(self, "pairs", _as_pairs(self.pairs))
        if self.relations is not None:
            names = [self.relations] if isinstance(self.relations, str) else self.relations
            known = sorted(hz.relation_lists())
            if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
                raise hz.InvalidOptionError(
                    f"relation: relations must be a name or a non-empty list of names from {known}; got {self.relations!r}"
                )
            unknown = [n for n in names if n not in known]
            if unknown:
                raise hz.InvalidOptionError(f"relation: unknown relation(s) {unknown}; the built-in relations are {known}")
            object.__setattr__(self, "relations", tuple(dict.fromkeys(names)))

    def options(self) -> dict[str, Any]:
        out = super().options()
        out["pairs"] = None if self.pairs is None else [list(p) for p in self.pairs]
        out["relations"] = None if self.relations is None else list(self.relations)
        return out

    def _relations(self, model: Any, n_out: int) -> tuple[list[tuple[str, tuple[tuple[int, int], ...]]], list[dict], dict[str, str]]:
        """``([(name, pairs)], per-relation counts, {skipped name: why})``."""
        if self.pairs is not None:
            for i, (s, t) in enumerate(self.pairs):
                if s >= n_out or t >= n_out:
                    raise hz.InvalidOptionError(
                        f"relation: pairs[{i}] = {(s, t)} holds an id outside the model's vocabulary [0, {n_out - 1}]"
                    )
            counts = [{"relation": "pairs", "listed": len(self.pairs), "pairs": len(self.pairs), "given": "pairs="}]
            return [("pairs", self.pairs)], counts, {}
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise hz.DetectorNotApplicableError(
                "relation: the model has no tokenizer, so the built-in relations cannot be written in its "
                "tokens. Pass your own token-id pairs instead: "
                "hz.detect(model, 'relation', pairs=[(source_id, target_id), ...])."
            )
        found = hz.relation_pairs(tokenizer, self.relations, n_vocab=n_out)
        kept, counts, skipped = [], [], {}
        for name, rel in found.items():
            counts.append(rel.counts())
            if rel.n_pairs < self.min_pairs:
                skipped[name] = (
                    f"{rel.n_pairs} of {rel.n_listed} pairs are single tokens of this tokenizer "
                    f"({rel.n_space} as ' X', {rel.n_bare} as 'X'); min_pairs={self.min_pairs}"
                )
            else:
                kept.append((name, rel.pairs))
        if not kept:
            raise hz.DetectorNotApplicableError(
                "relation: no built-in relation keeps min_pairs="
                f"{self.min_pairs} single-token pairs in this model's tokenizer ("
                + "; ".join(f"{n}: {why}" for n, why in skipped.items())
                + "). Pass your own token-id pairs: hz.detect(model, 'relation', pairs=[(source_id, target_id), ...]), "
                "or lower min_pairs."
            )
        return kept, counts, skipped

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        circuits = circuits if circuits is not None else hz.WeightCircuits(model, progress=progress)
        info = circuits.info
        n_out = circuits.n_outputs
        relations, counts, skipped = self._relations(model, n_out)
        k = hz.rank_cutoff(self.k, n_out)
        flat = [(r, s, t) for r, (_, pairs) in enumerate(relations) for s, t in pairs]
        rel_of = torch.tensor([r for r, _, _ in flat])  # [pair]
        src = torch.tensor([s for _, s, _ in flat])
        tgt = torch.tensor([t for _, _, t in flat])
        sources = torch.unique(src)  # sorted
        row = torch.searchsorted(sources, src)  # [pair] -> row of its source
        n_pairs = len(flat)
        # the within-relation ranking: a pair's rivals are its relation's own tokens (sources and
        # targets), less every true target of its source (its own target is compared apart)
        groups: dict[tuple[int, int], list[int]] = {}
        for r, s, t in flat:
            groups.setdefault((r, s), []).append(t)
        h = info.n_heads
        within_chunks = []  # (relation's tokens, [(pairs, their target columns, (row, column) not rivals)])
        for r in range(len(relations)):
            index = (rel_of == r).nonzero().squeeze(1)
            tokens = torch.unique(torch.cat([src[index], tgt[index]]))  # sorted
            step = max(1, circuits.chunk_bytes // (4 * h * len(tokens)))  # [head, step, token] logits
            chunks = []
            for c0 in range(0, len(index), step):
                ps = index[c0 : c0 + step]
                true = [torch.searchsorted(tokens, torch.tensor(groups[(r, int(src[p]))])) for p in ps]
                not_rival = (torch.repeat_interleave(torch.arange(len(ps)), torch.tensor([len(c) for c in true])),
                             torch.cat(true))
                chunks.append((ps, torch.searchsorted(tokens, tgt[ps]), not_rival))
            within_chunks.append((tokens, chunks))
        x = circuits.embedding(sources, self.embedding)
        dev = circuits.device
        row_d, tgt_d = row.to(dev), tgt.to(dev)
        n_src = len(sources)
        # a source with several targets is compared once per target: slot j holds each
        # source's j-th pair, so slot 0 covers every row without copying the logits
        seen: dict[int, int] = {}
        nth = [seen.__setitem__(r, seen.get(r, -1) + 1) or seen[r] for r in row.tolist()]  # [pair]
        slots = []
        for j in range(max(nth) + 1):
            pairs_j = sorted((p for p in range(n_pairs) if nth[p] == j), key=lambda p: int(row[p]))  # by row
            index = torch.tensor(pairs_j)
            slots.append((index.to(dev), row[index].to(dev), j == 0))  # slot 0: rows 0, 1, ..., n_src - 1
        chunk = max(1, min(n_out, circuits.chunk_bytes // (4 * h * max(n_src, info.d_head))))
        blocks = [slice(a, min(a + chunk, n_out)) for a in range(0, n_out, chunk)]
        col_norm = max(float(_readout(circuits, cols).norm(dim=0).max()) for cols in blocks)
        above = torch.zeros(info.n_layers, h, n_pairs, dtype=torch.long)
        below = torch.zeros(info.n_layers, h, n_pairs, dtype=torch.long)
        within = torch.zeros(info.n_layers, h, n_pairs, dtype=torch.bool)
        with torch.no_grad():
            show = progress if progress is not None else info.n_layers * n_out > 2_000_000
            for layer in tqdm(range(info.n_layers), desc="headzoo relations", unit="layer", disable=not show, leave=False):
                v = circuits.ov_values(layer, x)  # [head, source, d_head]: once per layer
                w_o = _w_o(circuits, layer)  # [head * d_head, d_model]
                # a flat row (every logit equal) ties everywhere, so it ranks no target
                out_norm = (v @ w_o.view(h, v.shape[-1], -1)).norm(dim=-1)  # [head, source]
                tol = (_TIE * col_norm) * out_norm[:, row_d]  # [head, pair]
                own = torch.empty(h, n_pairs, device=dev)
                for tokens, chunks in within_chunks:  # each relation's own tokens, its pairs in chunks
                    factor = (w_o @ _readout(circuits, tokens.to(dev))).view(h, v.shape[-1], -1)
                    for ps, cols, not_rival in chunks:
                        ps_d = ps.to(dev)
                        local = torch.bmm(v[:, row_d[ps_d]], factor)  # [head, pair, token]
                        own[:, ps_d] = local[:, torch.arange(len(ps), device=dev), cols.to(dev)]
                        rivals = torch.ones(len(ps), len(tokens), dtype=torch.bool)
                        rivals[not_rival] = False
                        best_rival = local.masked_fill(~rivals.to(dev), float("-inf")).amax(-1)
                        within[layer, :, ps] = (own[:, ps_d] > best_rival + tol[:, ps_d]).cpu()
                hi_bound, lo_bound = own - tol, own + tol
                hi = torch.zeros(h, n_pairs, dtype=torch.int32, device=dev)
                lo = torch.zeros(h, n_pairs, dtype=torch.int32, device=dev)
                for cols in blocks:
                    logits = _logits(v, w_o, _readout(circuits, cols))  # [head, source, block]
                    for pairs_j, rows_j, every_row in slots:
                        sub = logits if every_row else logits[:, rows_j]
                        hi[:, pairs_j] += (sub >= hi_bound[:, pairs_j, None]).sum(-1, dtype=torch.int32)
                        lo[:, pairs_j] += (sub <= lo_bound[:, pairs_j, None]).sum(-1, dtype=torch.int32)
                    # a target is not ranked against itself: take back its own count
                    mine = ((tgt_d >= cols.start) & (tgt_d < cols.stop)).nonzero().squeeze(1)
                    if len(mine):
                        at = logits[:, row_d[mine], tgt_d[mine] - cols.start]  # [head, mine]
                        hi[:, mine] -= (at >= hi_bound[:, mine]).int()
                        lo[:, mine] -= (at <= lo_bound[:, mine]).int()
                    del logits
                above[layer], below[layer] = hi.long().cpu(), lo.long().cpu()
        per_rel = {"score": [], "suppression": [], "within": []}
        for r in range(len(relations)):
            sel = rel_of == r
            per_rel["score"].append((above[..., sel] < k).double().mean(-1))
            per_rel["suppression"].append((below[..., sel] < k).double().mean(-1))
            per_rel["within"].append(within[..., sel].double().mean(-1))
        stacked = {m: torch.stack(v) for m, v in per_rel.items()}  # [relation, layer, head]
        metrics = {
            "score": stacked["score"].amax(0),
            "mean": stacked["score"].mean(0),
            "suppression": stacked["suppression"].amax(0),
            "within": stacked["within"].amax(0),
        }
        rows = []
        for r, (name, pairs) in enumerate(relations):
            for layer in range(info.n_layers):
                for head in range(h):
                    rows.append((layer, head, name, float(stacked["score"][r, layer, head]),
                                 float(stacked["suppression"][r, layer, head]),
                                 float(stacked["within"][r, layer, head]), len(pairs)))
        details = pd.DataFrame(rows, columns=["layer", "head", "relation", "score", "suppression", "within", "n_pairs"])
        meta = {
            "k": k,
            "n_outputs": n_out,
            "relations": counts,
            "scored_relations": [name for name, _ in relations],
            "skipped_relations": skipped,
            "n_pairs": n_pairs,
            "embedding": hz.embedding_metadata(model, self.embedding),
        }
        return hz.DetectorOutput(metrics, meta=meta, details=details)
