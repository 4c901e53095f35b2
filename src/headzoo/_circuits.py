"""Weight-based circuit scores, computed on small factors or in chunks: never ``vocab x vocab``.

A head's OV circuit says what it writes about the token it attends to, its QK circuit which
tokens it attends to (Elhage et al. 2021). Read from the weights, with each side normalised
the way the model normalises it:

- OV: source token ``t`` -> ``LN1(W_EE[t]) @ W_V @ W_O``, then the final LayerNorm's linear
  part (centring for LayerNorm, its weight) and ``W_U``: the head's direct effect on every
  output logit (value and output biases, the same for every token, are left out).
- QK: query vector ``LN1(x_q) @ W_Q`` against key vectors ``LN1(W_EE[k]) @ W_K`` (biases left
  out), where ``x_q`` is a predicted token's unembedding (copy suppression) or its effective
  embedding (the baseline).

This is the weight processing of McDougall et al. (2023): LayerNorm folded into the weights and
writing weights centred, done on the fly so the model is never modified. ``LN(x) - LN(0)``
removes a normalisation's bias whatever its kind (LayerNorm, RMSNorm, none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from headzoo._embedding import EmbeddingVariant, effective_embedding
from headzoo._errors import InvalidOptionError, UnsupportedModelError
from headzoo._models import ModelInfo, has_weight, head_weights, model_info, model_weight
from headzoo._tokens import ordinary_ids

__all__ = ["ov_copying_ratio", "WeightCircuits", "OVRanks", "rank_cutoff"]

#: ties: two logits closer than this fraction of the largest possible logit (a bound, by
#: Cauchy-Schwarz) count as equal; well above float32 rounding, far below real differences
_TIE = 1e-6


def ov_copying_ratio(model: Any) -> Float[torch.Tensor, "layer head"]:
    """Olsson et al.'s copying score: ``sum(lambda) / sum(|lambda|)`` over the eigenvalues of
    ``W_E @ W_V[l,h] @ W_O[l,h] @ W_U``, in ``[-1, 1]``; +1 is a pure copying head.

    The non-zero eigenvalues of ``(W_E W_V)(W_O W_U)`` equal those of the ``d_head x d_head``
    matrix ``W_O (W_U W_E) W_V``, so only a ``d_model x d_model`` product touches the
    vocabulary. Raw embeddings are used (no LayerNorm, no MLP0), as in the paper.
    A head whose OV circuit is (numerically) zero scores 0.

    Returns:
        ``[layer, head]`` float64 tensor on the CPU.
    """
    w_e = model_weight(model, "W_E")
    w_u = model_weight(model, "W_U")
    if w_e is None or w_u is None:
        raise UnsupportedModelError(f"{type(model).__name__} exposes no W_E/W_U; copying scores need them.")
    info = model_info(model)
    out = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
    with torch.no_grad():
        ue = w_u.float() @ w_e.float().to(w_u.device)  # [d_model, d_model]
        for layer in range(info.n_layers):  # one layer at a time keeps the peak small
            w_v = head_weights(model, "V", layer).float().to(ue.device)  # [head, d_model, d_head]
            w_o = head_weights(model, "O", layer).float().to(ue.device)  # [head, d_head, d_model]
            small = ((w_o @ ue) @ w_v).double()  # [head, d_head, d_head]
            eig = torch.linalg.eigvals(small)
            total = eig.abs().sum(-1)
            scale = small.abs().amax(dim=(-1, -2)) * small.shape[-1]
            flat = total <= 1e-9 * scale.clamp_min(1e-300)  # a (numerically) zero OV circuit
            ratio = eig.sum(-1).real / total.clamp_min(1e-300)
            out[layer] = torch.where(flat, torch.zeros_like(ratio), ratio).cpu()
    return out


def rank_cutoff(k: int, n: int) -> int:
    """A rank cut-off ``k`` over ``n`` candidates, shrunk to ``n // 20`` (at least 1) so that a
    random head passes about 5% of the time even in a tiny vocabulary."""
    return max(1, min(k, n // 20))


def _unbiased(module: Any, x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n d"]:
    """``module(x) - module(0)``: a normalisation without its bias (identity when ``None``)."""
    if module is None:
        return x
    y = module(x[None].to(_dtype_of(module, x)))[0].float()
    z = module(torch.zeros_like(x[:1])[None].to(_dtype_of(module, x)))[0].float()
    return y - z


@torch.no_grad()
def norm_linear_part(module: Any, d_model: int, device: torch.device) -> tuple[bool, Float[torch.Tensor, " d_model"]]:
    """A normalisation's linear part: ``(centres, weight)``, what folding it into the weights
    that read its output keeps (its ``1 / scale`` is a positive number per token).

    Found by probing the module, so it works for LayerNorm, RMSNorm, folded (``Pre``)
    variants and none (``module=None``: ``(False, ones)``): it centres when it maps a constant
    vector to zero, and its weight is read off an alternating vector that it leaves otherwise
    unchanged.
    """
    if module is None:
        return False, torch.ones(d_model, device=device)
    ones = torch.ones(1, d_model, device=device)
    centres = bool(_unbiased(module, ones).abs().max() < 1e-3)
    v = torch.ones(d_model, device=device)
    v[1::2] = -1.0
    if centres:
        v = v - v.mean()
    out = _unbiased(module, v[None])[0]
    return centres, out / (v / v.pow(2).mean().sqrt())


def _dtype_of(module: Any, x: torch.Tensor) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return x.dtype


def output_columns(model: Any, info: ModelInfo) -> int:
    """Vocabulary columns a token can be ranked over: real tokens only (no padding rows of
    ``W_U``); ``d_vocab`` bounds it for a model that exposes no ``W_U``."""
    w_u = getattr(model, "W_U", None)
    return min(info.n_real_tokens, int(w_u.shape[-1]) if w_u is not None else info.d_vocab)


@dataclass(frozen=True)
class OVRanks:
    """Where each sampled token's own logit falls in its OV row, per head.

    Attributes:
        below: ``[layer, head, n]`` other outputs whose logit is at most the own logit (ties
            count: a flat row puts every other output here), so 0 means "own logit is the
            strict minimum".
        above: ``[layer, head, n]`` other outputs whose logit is at least the own logit.
        n_outputs: how many outputs (vocabulary columns) each row ranks over.
    """

    below: Int[torch.Tensor, "layer head n"]
    above: Int[torch.Tensor, "layer head n"]
    n_outputs: int


class WeightCircuits:
    """Per-``detect`` workspace shared by the weight-based and causal detectors.

    One token sample, one effective embedding and one pass over the vocabulary serve every
    weight detector selected in the same call; results are memoised by their options.

    Args:
        model: any TransformerLens model.
        progress: show a progress bar on the vocabulary pass (``None``: only for large models).
        chunk_bytes: memory budget of one block of logits in the vocabulary pass (blocks that
            fit in cache are counted fastest).
    """

    def __init__(self, model: Any, *, progress: bool | None = None, chunk_bytes: int = 24 * 2**20) -> None:
        for name in ("W_U", "W_V", "W_O", "W_Q", "W_K"):
            if not has_weight(model, name):
                raise UnsupportedModelError(
                    f"{type(model).__name__} exposes no {name}; weight-based detectors need "
                    "TransformerLens' weight properties (W_Q, W_K, W_V, W_O, W_U)."
                )
        self.model = model
        self.info: ModelInfo = model_info(model)
        self.progress = progress
        self.chunk_bytes = chunk_bytes
        self.device = torch.device(self.info.device)
        self._memo: dict[Any, Any] = {}

    def shared(self, key: Any, compute: Any) -> Any:
        """``compute()`` once per ``key`` in this workspace: a measurement several detectors of
        one ``hz.detect`` call build on (the name-mover sweep that the negative and backup
        name-mover and S-inhibition detectors all read) runs once. ``key`` must name the
        measurement and every option it depends on."""
        key = ("shared", key)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # -- tokens and embeddings --------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        """Vocabulary columns ranked over: real tokens only (no padding rows of W_U)."""
        return output_columns(self.model, self.info)

    def candidates(self) -> Int[torch.Tensor, " n"]:
        """Token ids a sample may hold: real, non-special tokens."""
        ids = ordinary_ids(self.info)
        return ids[ids < self.n_outputs]

    def sample(self, n_tokens: int, seed: int) -> Int[torch.Tensor, " n"]:
        """``n_tokens`` distinct source tokens, sorted (all candidates when there are fewer)."""
        if n_tokens < 2:
            raise InvalidOptionError(f"n_tokens must be at least 2; got {n_tokens}")
        key = ("sample", n_tokens, seed)
        if key not in self._memo:
            ids = self.candidates()
            if len(ids) < 2:
                raise InvalidOptionError(
                    f"the model has {len(ids)} non-special tokens; weight scores need at least 2"
                )
            if len(ids) > n_tokens:
                g = torch.Generator().manual_seed(seed)
                ids = ids[torch.randperm(len(ids), generator=g)[:n_tokens]].sort().values
            self._memo[key] = ids
        return self._memo[key]

    def sample_metadata(self, n_tokens: int, seed: int) -> dict[str, Any]:
        ids = self.sample(n_tokens, seed)
        n_candidates = len(self.candidates())
        return {
            "n_tokens": int(len(ids)),
            "n_candidates": int(n_candidates),
            "sampled": bool(len(ids) < n_candidates),
            "seed": seed,
            "n_outputs": self.n_outputs,
        }

    def embedding(self, ids: Int[torch.Tensor, " n"], variant: EmbeddingVariant) -> Float[torch.Tensor, "n d_model"]:
        key = ("embedding", variant, tuple(ids.tolist()))
        if key not in self._memo:
            self._memo[key] = effective_embedding(self.model, ids, variant=variant)
        return self._memo[key]

    # -- normalisation ----------------------------------------------------------------------
    @torch.no_grad()
    def layer_input(self, layer: int, x: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n d_model"]:
        """``x`` as layer ``layer``'s attention reads it (its LN1, without bias)."""
        block = self.model.blocks[layer]
        return _unbiased(getattr(block, "ln1", None), x)

    def _w_u(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        w_u = model_weight(self.model, "W_U")
        assert w_u is not None  # checked in __init__
        return w_u

    def readout(self, cols: slice | Int[torch.Tensor, " c"]) -> Float[torch.Tensor, "d_model c"]:
        """``[d_model, c]``: the unembedding of output tokens ``cols`` behind the final norm's
        linear part (its weight, and centring where the norm centres), float32 on :attr:`device`."""
        return self._readout(cols)

    def w_o(self, layer: int) -> Float[torch.Tensor, "head d_head d_model"]:
        """Layer ``layer``'s ``W_O`` as float32 on :attr:`device` (read layer by layer, so a model
        split or offloaded by a device map is never gathered whole)."""
        return head_weights(self.model, "O", layer).float().to(self.device)

    def final_readout(self) -> tuple[bool, Float[torch.Tensor, " d_model"]]:
        """The final normalisation's linear part: ``(centres, weight)``.

        Found by probing the module, so it works for LayerNorm, RMSNorm, folded (``Pre``)
        variants and none: it centres when it maps a constant vector to zero, and its weight
        is read off an alternating vector that it leaves otherwise unchanged.
        """
        if "final" not in self._memo:
            self._memo["final"] = norm_linear_part(getattr(self.model, "ln_final", None), self.info.d_model, self.device)
        return self._memo["final"]

    def _readout(self, cols: slice | Int[torch.Tensor, " c"]) -> Float[torch.Tensor, "d_model c"]:
        """``diag(w) @ W_U[:, cols]``, centred over ``d_model`` when the final norm centres."""
        centres, weight = self.final_readout()
        w_u = self._w_u()
        # W_U may sit on another device than the first layer (a device map): index it there
        w_u = w_u[:, cols if isinstance(cols, slice) else cols.to(w_u.device)].float().to(self.device)
        if centres:  # C @ diag(w) @ W_U with C = I - 11^T/d: centre the rows of diag(w) W_U
            w_u = weight[:, None] * w_u
            return w_u - w_u.mean(0, keepdim=True)
        return weight[:, None] * w_u

    # -- OV ---------------------------------------------------------------------------------
    @torch.no_grad()
    def ov_values(self, layer: int, x: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "head n d_head"]:
        w_v = head_weights(self.model, "V", layer).float().to(self.device)
        return torch.einsum("nd,hde->hne", self.layer_input(layer, x), w_v)

    @torch.no_grad()
    def ov_logits(
        self, layer: int, x: Float[torch.Tensor, "n d_model"], cols: Int[torch.Tensor, " c"]
    ) -> Float[torch.Tensor, "head n c"]:
        """The direct logit effect on output tokens ``cols`` of each head attending to ``x``."""
        w_o = head_weights(self.model, "O", layer).float().to(self.device)
        return self.ov_values(layer, x) @ (w_o @ self._readout(cols.to(self.device)))

    def _ov_pass(self, n_tokens: int, seed: int, variant: EmbeddingVariant) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
        """The sampled source ids, their effective embeddings, and the vocabulary's column
        blocks, sized so one block of ``[head, n, block]`` logits fits ``chunk_bytes``."""
        ids = self.sample(n_tokens, seed)
        x = self.embedding(ids, variant)
        n, n_out = len(ids), self.n_outputs
        chunk = max(1, min(n_out, self.chunk_bytes // (4 * self.info.n_heads * max(n, self.info.d_head))))
        return ids, x, [slice(s, min(s + chunk, n_out)) for s in range(0, n_out, chunk)]

    def ov_ranks(self, n_tokens: int, seed: int, variant: EmbeddingVariant) -> OVRanks:
        """Rank of each sampled token's own logit in its OV row over the whole vocabulary.

        The vocabulary is processed in column blocks of at most ``chunk_bytes`` of logits (small
        enough to stay in cache while they are counted), each block going through the
        ``d_head``-wide factor ``W_O @ readout`` (one GEMM per layer and block), so neither a
        ``vocab x vocab`` nor a ``tokens x vocab x d_model`` array is ever formed.
        """
        key = ("ov_ranks", n_tokens, seed, variant)
        if key in self._memo:
            return self._memo[key]
        info = self.info
        ids, x, blocks = self._ov_pass(n_tokens, seed, variant)
        n, n_out, h, dh = len(ids), self.n_outputs, info.n_heads, info.d_head
        below = torch.zeros(info.n_layers, h, n, dtype=torch.long)
        above = torch.zeros(info.n_layers, h, n, dtype=torch.long)
        col_norm = max(float(self._readout(b).norm(dim=0).max()) for b in blocks)
        show = self.progress if self.progress is not None else info.n_layers * n_out > 2_000_000
        with torch.no_grad():
            ids_dev = ids.to(self.device)
            own_cols = self._readout(ids_dev)  # [d_model, n]
            for layer in tqdm(range(info.n_layers), desc="headzoo OV circuits", unit="layer", disable=not show, leave=False):
                v = self.ov_values(layer, x)  # [head, n, d_head]
                w_o = head_weights(self.model, "O", layer).float().to(self.device)  # [head, d_head, d_model]
                flat_o = w_o.reshape(h * dh, -1)
                own = torch.einsum("hne,hen->hn", v, (flat_o @ own_cols).view(h, dh, n))
                tol = (_TIE * col_norm) * (v @ w_o).norm(dim=-1)  # [head, n]
                lo_bound, hi_bound = (own + tol)[..., None], (own - tol)[..., None]
                lo_count = torch.zeros(h, n, dtype=torch.int32, device=self.device)
                hi_count = torch.zeros(h, n, dtype=torch.int32, device=self.device)
                for cols in blocks:
                    logits = torch.bmm(v, (flat_o @ self._readout(cols)).view(h, dh, -1))  # [head, n, c]
                    mine = (ids_dev >= cols.start) & (ids_dev < cols.stop)
                    if mine.any():  # a token is not ranked against itself (NaN compares False)
                        rows = mine.nonzero().squeeze(1)
                        logits[:, rows, ids_dev[rows] - cols.start] = float("nan")
                    lo_count += (logits <= lo_bound).sum(-1, dtype=torch.int32)
                    hi_count += (logits >= hi_bound).sum(-1, dtype=torch.int32)
                    del logits
                below[layer] = lo_count.long().cpu()
                above[layer] = hi_count.long().cpu()
        ranks = OVRanks(below=below, above=above, n_outputs=n_out)
        self._memo[key] = ranks
        return ranks

    def ov_extremes(self, n_tokens: int, seed: int, variant: EmbeddingVariant) -> dict[str, torch.Tensor]:
        """For each sampled source token and head: the output token its OV circuit raises most
        and lowers most, relative to the mean over the vocabulary.

        Returns:
            ``{"ids": [n], "up": [layer, head, n], "up_id": ..., "down": ..., "down_id": ...}``;
            ``up``/``down`` are logit differences from the row's mean over all outputs.
        """
        key = ("ov_extremes", n_tokens, seed, variant)
        if key in self._memo:
            return self._memo[key]
        info = self.info
        ids, x, blocks = self._ov_pass(n_tokens, seed, variant)
        n, n_out, h, dh = len(ids), self.n_outputs, info.n_heads, info.d_head
        shape = (info.n_layers, h, n)
        out = {"up": torch.empty(shape), "up_id": torch.empty(shape, dtype=torch.long),
               "down": torch.empty(shape), "down_id": torch.empty(shape, dtype=torch.long)}
        show = self.progress if self.progress is not None else info.n_layers * n_out > 2_000_000
        with torch.no_grad():
            for layer in tqdm(range(info.n_layers), desc="headzoo OV extremes", unit="layer", disable=not show, leave=False):
                v = self.ov_values(layer, x)
                flat_o = head_weights(self.model, "O", layer).float().to(self.device).reshape(h * dh, -1)
                total = torch.zeros(h, n, device=self.device)
                hi = torch.full((h, n), -float("inf"), device=self.device)
                lo = torch.full((h, n), float("inf"), device=self.device)
                hi_id = torch.zeros(h, n, dtype=torch.long, device=self.device)
                lo_id = torch.zeros(h, n, dtype=torch.long, device=self.device)
                for cols in blocks:
                    logits = torch.bmm(v, (flat_o @ self._readout(cols)).view(h, dh, -1))  # [head, n, c]
                    total += logits.sum(-1)
                    bmax, bargmax = logits.max(-1)
                    bmin, bargmin = logits.min(-1)
                    better, worse = bmax > hi, bmin < lo
                    hi, hi_id = torch.where(better, bmax, hi), torch.where(better, bargmax + cols.start, hi_id)
                    lo, lo_id = torch.where(worse, bmin, lo), torch.where(worse, bargmin + cols.start, lo_id)
                    del logits
                mean = total / n_out
                out["up"][layer], out["up_id"][layer] = (hi - mean).cpu(), hi_id.cpu()
                out["down"][layer], out["down_id"][layer] = (lo - mean).cpu(), lo_id.cpu()
        out["ids"] = ids.clone()
        self._memo[key] = out
        return out

    # -- QK ---------------------------------------------------------------------------------
    def qk_ranks(
        self, n_tokens: int, seed: int, variant: EmbeddingVariant, query: str
    ) -> Int[torch.Tensor, "layer head n"]:
        """For each sampled token ``i``: how many other sampled keys score at least as high as
        key ``i`` for the query made from token ``i`` (0 = it attends to its own token first).

        ``query="unembed"``: the query is token ``i``'s unembedding ``W_U[:, i]`` (a predicted
        token, copy suppression). ``query="embed"``: its effective embedding (the baseline).
        Keys are the effective embeddings of the same sample.
        """
        key = ("qk_ranks", n_tokens, seed, variant, query)
        if key in self._memo:
            return self._memo[key]
        info = self.info
        ids = self.sample(n_tokens, seed)
        keys_x = self.embedding(ids, variant)
        if query == "unembed":
            w_u = self._w_u()
            q_x = w_u[:, ids.to(w_u.device)].T.float().to(self.device)
        elif query == "embed":
            q_x = keys_x
        else:
            raise InvalidOptionError(f"query must be 'unembed' or 'embed'; got {query!r}")
        out = torch.zeros(info.n_layers, info.n_heads, len(ids), dtype=torch.long)
        with torch.no_grad():
            for layer in range(info.n_layers):
                w_q = head_weights(self.model, "Q", layer).float().to(self.device)
                w_k = head_weights(self.model, "K", layer).float().to(self.device)
                q = torch.einsum("nd,hde->hne", self.layer_input(layer, q_x), w_q)
                k = torch.einsum("nd,hde->hne", self.layer_input(layer, keys_x), w_k)
                scores = q @ k.transpose(1, 2)  # [head, n, n]: n is the sample, not the vocabulary
                own = scores.diagonal(dim1=1, dim2=2)
                tol = _TIE * q.norm(dim=-1) * k.norm(dim=-1).amax(-1, keepdim=True)
                out[layer] = ((scores >= (own - tol)[..., None]).sum(-1) - 1).clamp_min(0).cpu()
        self._memo[key] = out
        return out
