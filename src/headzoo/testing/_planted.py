"""Small models whose heads are built by hand, so the right answer is known.

The residual stream is split into subspaces of width ``c = d_head // 2``:
``TOK`` (token code), ``POS`` (position code), ``PREV`` (the previous token, written by the
previous-token head), ``OUT`` (read by the unembedding) and ``SCRATCH`` (where every random
head and MLP writes). Planted heads read and write only their own subspaces, so the random
heads around them can have any attention pattern without breaking the planted circuit.

- previous-token head: the query is the position code rotated one step back, so it matches
  the key of position ``q - 1`` (sinusoidal codes make that rotation exact); it copies the
  token code into ``PREV``.
- induction head (a later layer): the query is the current token code, the key is the
  ``PREV`` subspace, so it attends to the position after an earlier copy of the current token
  (K-composition); it copies the attended token code into ``OUT`` (a copying OV circuit).
- duplicate-token head: query and key are token codes, minus a position-code term that stops
  a token from matching itself; it writes into ``SCRATCH``.
- copying head: its OV circuit copies the token code into ``OUT``, which the unembedding reads
  with the same codes, so the attended token's own logit rises most.
- successor head: the tokens of each successor sequence get chained codes,
  ``code(s[i+1]) = code(s[i]) @ R`` for one random rotation ``R``, and the head's OV circuit is
  ``R`` (token code in, ``OUT`` out): attending to ``s[i]`` raises the logit of ``s[i+1]``.
- copy-suppression head: its query reads ``OUT`` (the unembedding of what earlier heads
  predict), its key the token code, so it attends to the predicted token; its OV circuit is
  minus the copying circuit, lowering that token's logit.
- sink head: a constant query (its bias) matches position 0's code, so every query parks its
  attention on the first token; it writes into ``SCRATCH`` as strongly as a random head.
- dormant head: the same attention, but an output ``10**-3`` as large: a no-op, as the
  active-dormant heads of Guo et al. 2024 are on inputs where they rest on the sink.
- relative-position head (offset ``k``): the previous-token construction with the rotation
  applied ``k`` times, so it attends to position ``q - k``; it copies the token code into
  ``SCRATCH``, or into ``PREV2`` when an n-gram induction head needs it (``k = 2``).
- n-gram induction head (n = 2): its query reads ``TOK`` and ``PREV`` (the current and the
  previous token), its key reads ``PREV`` and ``PREV2`` (the two tokens before the key), so it
  attends to the position whose previous two tokens equal the query's last two; it copies the
  attended token into ``OUT``. ``PREV2`` is a sixth subspace, appended only when this head is
  planted; the relative-position head with offset 2 writes it.

Composition partners of the previous-token head (for composition scores; induction is its
K-composition partner). ``PREV`` is written by the previous-token head alone, so each is the
only head that composes with it in its way:

- Q-composition head: its query reads ``PREV`` (the previous token), its key the token code, so
  it attends to the previous position and to earlier copies of the previous token; it writes
  the attended token code into ``SCRATCH``.
- V-composition head: attends to its own position (the copying pattern) and its value reads
  ``PREV``, so it moves the previous token into ``SCRATCH``: with the previous-token head it
  forms a virtual head that attends one position back.

Token-feature heads (planted only with ``token_features`` from a real tokenizer, see
:func:`features_from_tokenizer`) read four extra residual dimensions ``FEAT`` after
``SCRATCH`` (and ``PREV2``), present only when one of them is planted: ``is separator``, ``rarity`` (scaled
``-log frequency``) and ``is word start`` written by the embedding, and ``is position 0``
written by the position embedding.

- delimiter head: a constant query (its bias) against keys that read ``is separator``: it
  spreads its attention over the separators in context.
- rare-token head: a constant query against keys that read ``rarity``: its strongest
  attention goes to the rarest token in context.
- subword-merge head: a previous-token query, plus a large term on word-start queries that
  matches ``is position 0``: continuation pieces attend to the piece before them, word starts
  park on the first token.
- relation head: attends to its own position, and its OV circuit (token code in, ``OUT`` out)
  is the least-squares map sending the code of each source of ``relation_pairs`` to the code
  of its target (exact when the sources' codes are linearly independent, so for at most
  ``d_head // 2`` sources): attending to ``France`` raises ``Paris``. It draws no random
  numbers, so planting it changes no other weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from headzoo._backends import Backend, build_model

__all__ = ["PlantSpec", "TokenFeatures", "features_from_tokenizer", "planted_model", "planted_state_dict", "random_placements"]

Head = tuple[int, int]

_ROLES = ("previous_token", "induction", "duplicate_token", "copying", "successor", "copy_suppression", "sink", "dormant",
          "subword_merge", "delimiter", "rare_token", "relation", "q_composition", "v_composition")
#: roles that read what the previous-token head writes (``PREV``), so they sit above it
_PREV_READERS = ("induction", "q_composition", "v_composition")
#: roles built by :func:`_plant_positional` (relative position and n-gram induction)
_POSITIONAL_ROLES = ("relative_position", "ngram_induction")
#: the roles that read token features (``PlantSpec.token_features``) from the ``FEAT`` dimensions
_TOKEN_ROLES = ("subword_merge", "delimiter", "rare_token")
#: ``FEAT`` dimensions: is separator, rarity, is word start (embedding), is position 0 (position embedding)
_N_FEAT = 4


@dataclass(frozen=True)
class PlantSpec:
    """Architecture and head placements of a planted model.

    Attributes:
        n_layers, n_heads, d_head, d_vocab, n_ctx: the architecture. ``d_model`` follows as
            ``5 * (d_head // 2)`` (``6 * (d_head // 2)`` with an n-gram induction head).
        previous_token, induction, duplicate_token, copying, successor, copy_suppression, sink,
            dormant: ``(layer, head)`` of each planted head, or ``None`` to leave it out. The induction
            head needs a previous-token head in an earlier layer.
        relative_position: a head attending ``relative_offset`` positions back.
        relative_offset: its offset (``>= 1``; 1 is what a previous-token head does).
        ngram_induction: an n-gram (n = 2) induction head; needs ``previous_token`` and
            ``relative_position`` with ``relative_offset=2`` in earlier layers.
        successor_sequences: token-id sequences the successor head advances along (ids must be
            distinct across sequences). ``None``: one sequence ``2, 3, ..., 11`` (shorter in tiny vocabularies).
        subword_merge, delimiter, rare_token: ``(layer, head)`` of the token-feature heads (any
            layer); they need ``token_features``, and add 4 dimensions to ``d_model``.
        token_features: per-id features of a tokenizer (:func:`features_from_tokenizer`), one
            value per id of the ``d_vocab``-sized vocabulary.
        seed: seeds every random weight and code.
        gain: attention logit margin of the planted heads (larger = sharper patterns).
        noise: scale of the random heads' query/key weights (their patterns' sharpness).
        attn_only: leave out the MLPs.
        relation: ``(layer, head)`` of a planted relation head, or ``None``.
        relation_pairs: ``(source, target)`` id pairs the relation head maps (sources distinct,
            source != target). ``None``: ``min(d_head // 4, (d_vocab - 2) // 2)`` pairs from the
            top of the vocabulary, ``(v - 2m + i) -> (v - m + i)``.
        q_composition, v_composition: ``(layer, head)`` of a head that Q-composes / V-composes
            with the previous-token head (its query / its value reads ``PREV``); each needs the
            previous-token head in an earlier layer. They draw no random numbers.
    """

    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 64
    d_vocab: int = 64
    n_ctx: int = 128
    previous_token: Head | None = (0, 0)
    induction: Head | None = (1, 0)
    duplicate_token: Head | None = None
    copying: Head | None = None
    successor: Head | None = None
    copy_suppression: Head | None = None
    sink: Head | None = None
    dormant: Head | None = None
    subword_merge: Head | None = None
    delimiter: Head | None = None
    rare_token: Head | None = None
    token_features: TokenFeatures | None = None
    relative_position: Head | None = None
    relative_offset: int = 2
    ngram_induction: Head | None = None
    successor_sequences: tuple[tuple[int, ...], ...] | None = None
    seed: int = 0
    gain: float = 30.0
    noise: float = 1.0
    attn_only: bool = False
    relation: Head | None = None
    relation_pairs: tuple[tuple[int, int], ...] | None = None
    q_composition: Head | None = None
    v_composition: Head | None = None
    _planted: dict[str, Head] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.d_head < 16 or self.d_head % 2:
            raise ValueError(f"d_head must be even and at least 16 to hold the codes; got {self.d_head}")
        if self.n_layers < 1 or self.n_heads < 1 or self.n_ctx < 4 or self.d_vocab < 2:
            raise ValueError("need n_layers >= 1, n_heads >= 1, n_ctx >= 4 and d_vocab >= 2")
        planted = {
            name: getattr(self, name)
            for name in (*_ROLES, *_POSITIONAL_ROLES)
            if getattr(self, name) is not None
        }
        for name, (layer, head) in planted.items():
            if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
                raise ValueError(f"{name} head {(layer, head)} is outside the model")
        if self.duplicate_token is not None and self.d_head < 32:
            raise ValueError(
                f"a planted duplicate-token head needs d_head >= 32 (got {self.d_head}): its query "
                "holds a token code and a position code of d_head // 2 dimensions each, and "
                "narrower codes overlap too much for the head to skip its own position "
                "(measured: planted scores fell to 0.02-0.34 with d_head=16). Use d_head >= 32."
            )
        if len(set(planted.values())) != len(planted):
            raise ValueError(f"planted heads must be distinct heads; got {planted}")
        for role in _PREV_READERS:
            reader = getattr(self, role)
            if reader is not None and (self.previous_token is None or self.previous_token[0] >= reader[0]):
                how = {"induction": "an induction head works by K-composition", "q_composition": "a q_composition head "
                       "Q-composes", "v_composition": "a v_composition head V-composes"}[role]
                raise ValueError(
                    f"{how} with a previous-token head, which must sit in an earlier layer; got previous_token="
                    f"{self.previous_token}, {role}={reader}"
                )
        _check_token_roles(self, planted)
        _check_positional(self)
        if self.successor_sequences is not None:
            seqs = tuple(tuple(int(t) for t in seq) for seq in self.successor_sequences)
            flat = [t for seq in seqs for t in seq]
            if any(len(seq) < 2 for seq in seqs) or len(set(flat)) != len(flat):
                raise ValueError("successor_sequences need >= 2 ids each, all distinct across sequences")
            if flat and not all(0 <= t < self.d_vocab for t in flat):
                raise ValueError(f"successor_sequences hold ids outside [0, {self.d_vocab - 1}]")
            object.__setattr__(self, "successor_sequences", seqs)
        if self.relation_pairs is not None:
            object.__setattr__(self, "relation_pairs", _check_relation_pairs(self.relation_pairs, self.d_vocab))
        object.__setattr__(self, "_planted", planted)

    @property
    def sequences(self) -> tuple[tuple[int, ...], ...]:
        """The successor sequences in use (the default when none were given)."""
        if self.successor_sequences is not None:
            return self.successor_sequences
        return (tuple(range(min(2, self.d_vocab - 2), min(self.d_vocab, 12))),)

    @property
    def relations(self) -> tuple[tuple[int, int], ...]:
        """The relation head's ``(source, target)`` pairs in use (the default when none were given)."""
        if self.relation_pairs is not None:
            return self.relation_pairs
        v = self.d_vocab
        m = max(1, min(self.d_head // 4, (v - 2) // 2))
        return tuple((v - 2 * m + i, v - m + i) for i in range(m))

    @property
    def planted(self) -> dict[str, Head]:
        """``{detector name: (layer, head)}`` of the planted heads."""
        return dict(self._planted)

    @property
    def d_model(self) -> int:
        return 5 * (self.d_head // 2) + _positional_width(self) + _token_feature_dims(self)

    def config(self) -> dict[str, Any]:
        """HookedTransformerConfig-style fields of this architecture."""
        return dict(
            n_layers=self.n_layers, d_model=self.d_model, n_ctx=self.n_ctx, d_head=self.d_head,
            n_heads=self.n_heads, d_vocab=self.d_vocab, d_mlp=None if self.attn_only else 4 * self.d_model,
            act_fn="gelu", normalization_type=None, attn_only=self.attn_only,
            positional_embedding_type="standard", default_prepend_bos=True,
        )


def _check_relation_pairs(pairs: Any, d_vocab: int) -> tuple[tuple[int, int], ...]:
    """``relation_pairs`` as int tuples: in the vocabulary, source != target, sources distinct
    (a linear map sends one code to one place)."""
    out = tuple((int(s), int(t)) for s, t in pairs)
    if not out:
        raise ValueError("relation_pairs needs at least one (source, target) pair")
    bad = [p for p in out if not (0 <= p[0] < d_vocab and 0 <= p[1] < d_vocab) or p[0] == p[1]]
    if bad:
        raise ValueError(f"relation_pairs {bad[:3]} are outside [0, {d_vocab - 1}] or map a token to itself")
    sources = [s for s, _ in out]
    if len(set(sources)) != len(sources):
        raise ValueError(f"relation_pairs need distinct sources (one target each); got {out}")
    return out


def _relation_map(spec: PlantSpec, codes: torch.Tensor) -> torch.Tensor:
    """``[c, c]`` least-squares ``A`` with ``codes[source] @ A = codes[target]`` for every pair."""
    sources = [s for s, _ in spec.relations]
    targets = [t for _, t in spec.relations]
    return torch.linalg.pinv(codes[sources].double()) @ codes[targets].double()


def _token_codes(n: int, c: int, g: torch.Generator) -> torch.Tensor:
    """``n`` unit vectors in ``c`` dimensions with small pairwise overlaps ``[n, c]``."""
    if n <= c:
        return torch.linalg.qr(torch.randn(c, c, generator=g))[0][:n].contiguous()
    codes = torch.randn(n, c, generator=g)
    return _spread(codes, torch.zeros(n, dtype=torch.bool))


def _spread(codes: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Unit codes with the ones not ``frozen`` moved to minimise a soft maximum of |cosine|."""
    n = codes.shape[0]
    if n <= 4096:  # beyond that the n x n overlap matrix is too costly; random codes will do
        free = codes[~frozen].clone().requires_grad_(True)
        fixed = codes[frozen]
        opt = torch.optim.Adam([free], lr=0.02)
        eye = torch.eye(n)
        with torch.enable_grad():
            for _ in range(300):
                full = torch.empty_like(codes)
                full[frozen] = fixed
                full[~frozen] = free
                unit = full / full.norm(dim=1, keepdim=True)
                loss = torch.logsumexp(20 * ((unit @ unit.T) - eye).abs().flatten(), 0)
                opt.zero_grad()
                loss.backward()
                opt.step()
        codes = codes.clone()
        codes[~frozen] = free.detach()
    return codes / codes.norm(dim=1, keepdim=True)


def _position_codes(n_ctx: int, c: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sinusoidal codes ``[n_ctx, c]`` and the rotation ``R`` with ``P[i] @ R = P[i-1]``."""
    best, best_w = math.inf, None
    offsets = torch.arange(1, n_ctx).float()[:, None]
    for _ in range(64):  # choose frequencies whose codes overlap least at every distance
        w = torch.rand(c // 2, generator=g) * (math.pi - 0.15) + 0.15
        worst = torch.cos(w[None] * offsets).mean(1).abs().max().item()
        if worst < best:
            best, best_w = worst, w
    assert best_w is not None
    angles = torch.arange(n_ctx).float()[:, None] * best_w[None]
    scale = math.sqrt(2.0 / c)
    codes = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1) * scale
    half = c // 2
    rot = torch.zeros(c, c)
    idx = torch.arange(half)
    rot[idx, idx] = torch.cos(best_w)
    rot[idx, idx + half] = -torch.sin(best_w)
    rot[idx + half, idx] = torch.sin(best_w)
    rot[idx + half, idx + half] = torch.cos(best_w)
    return codes, rot


# -- relative-position and n-gram induction heads ------------------------------------------

def _check_positional(spec: PlantSpec) -> None:
    """Refuse relative-position / n-gram induction placements that cannot work."""
    k = spec.relative_offset
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < spec.n_ctx:
        raise ValueError(f"relative_offset must be an integer in [1, n_ctx - 1 = {spec.n_ctx - 1}]; got {k!r}")
    if spec.ngram_induction is None:
        return
    layer = spec.ngram_induction[0]
    prev, rel = spec.previous_token, spec.relative_position
    if prev is None or rel is None or prev[0] >= layer or rel[0] >= layer or k != 2:
        raise ValueError(
            "an n-gram induction head reads the two previous tokens, written by a previous-token head "
            "and a relative_position head with relative_offset=2, both in earlier layers; got "
            f"previous_token={prev}, relative_position={rel} (offset {k}), ngram_induction={spec.ngram_induction}"
        )


def _positional_width(spec: PlantSpec) -> int:
    """Residual dimensions added after ``SCRATCH``: ``PREV2`` only when an n-gram head is planted."""
    return spec.d_head // 2 if spec.ngram_induction is not None else 0


def _plant_positional(
    spec: PlantSpec, role: str, head: int, w_q: torch.Tensor, w_k: torch.Tensor, w_o: torch.Tensor,
    rot: torch.Tensor, q_scale: float,
) -> None:
    """Write a relative-position or n-gram induction head into one layer's ``[head, ...]``
    weights (the value already reads ``TOK``; everything else is zero)."""
    c = spec.d_head // 2
    eye = torch.eye(c)
    tok, pos, prev, out, scratch, prev2 = (slice(i * c, (i + 1) * c) for i in range(6))
    if role == "relative_position":
        # P[q] @ rot^k = P[q - k]: the query matches the key k positions back
        w_q[head, pos, :c] = q_scale * torch.linalg.matrix_power(rot, spec.relative_offset)
        w_k[head, pos, :c] = eye
        w_o[head, :c, prev2 if spec.ngram_induction is not None else scratch] = eye
    elif role == "ngram_induction":
        # query (tok[q], tok[q-1]) against key (tok[k-1], tok[k-2]): both halves match only where
        # the key follows the same two tokens; one match (a 1-gram continuation) scores half
        w_q[head, tok, :c] = q_scale * eye
        w_q[head, prev, c:] = q_scale * eye
        w_k[head, prev, :c] = eye
        w_k[head, prev2, c:] = eye
        w_o[head, :c, out] = eye


def planted_state_dict(spec: PlantSpec) -> dict[str, torch.Tensor]:
    """Canonical (HookedTransformer-named) parameters of the planted model ``spec``."""
    g = torch.Generator().manual_seed(spec.seed)
    c, d, dh, h, v = spec.d_head // 2, spec.d_model, spec.d_head, spec.n_heads, spec.d_vocab
    tok, pos, prev, out, scratch = (slice(i * c, (i + 1) * c) for i in range(5))
    eye = torch.eye(c)
    codes = _token_codes(v, c, g)
    pcodes, rot = _position_codes(spec.n_ctx, c, g)
    succ_rot = None
    if spec.successor is not None:
        # Chain the sequences' codes along one sinusoidal track (the position-code trick, in a
        # random basis): advancing one step is a fixed rotation, and codes at every distance
        # along the track overlap little, so the other planted heads still tell them apart.
        g_succ = torch.Generator().manual_seed(spec.seed + 104729)  # own stream: other weights unchanged
        gap = 5
        track_len = sum(len(seq) + gap for seq in spec.sequences)
        track, back = _position_codes(track_len, c, g_succ)  # track[i] @ back = track[i - 1]
        basis = torch.linalg.qr(torch.randn(c, c, generator=g_succ))[0]
        succ_rot = basis.T @ back.T @ basis  # (track[i] @ basis) @ succ_rot = track[i + 1] @ basis
        at = 0
        chained = torch.zeros(v, dtype=torch.bool)
        for seq in spec.sequences:
            codes[list(seq)] = track[at : at + len(seq)] @ basis
            chained[list(seq)] = True
            at += len(seq) + gap
        if v > c:  # move the other tokens' codes away from the chained ones
            codes = _spread(codes, chained)
    sd: dict[str, torch.Tensor] = {}
    w_e = torch.zeros(v, d)
    w_e[:, tok] = codes
    w_pos = torch.zeros(spec.n_ctx, d)
    w_pos[:, pos] = pcodes
    w_u = torch.zeros(d, v)
    w_u[out] = codes.T
    w_u[scratch] = 0.1 * torch.randn(c, v, generator=g)  # random heads get random copying scores
    feat = _write_token_features(spec, w_e, w_pos)
    sd.update({"embed.W_E": w_e, "pos_embed.W_pos": w_pos, "unembed.W_U": w_u, "unembed.b_U": torch.zeros(v)})
    q_scale = spec.gain * math.sqrt(dh)  # TransformerLens divides scores by sqrt(d_head)
    sigma = math.sqrt(0.75 * spec.noise)
    roles = {head: name for name, head in spec.planted.items()}
    for layer in range(spec.n_layers):
        w_q = sigma * torch.randn(h, d, dh, generator=g)
        w_k = sigma * torch.randn(h, d, dh, generator=g)
        w_v = torch.randn(h, d, dh, generator=g) / math.sqrt(d)
        w_o = torch.zeros(h, dh, d)
        w_o[:, :, scratch] = 0.5 * torch.randn(h, dh, c, generator=g) / math.sqrt(dh)
        for head in range(h):
            role = roles.get((layer, head))
            if role is None:
                continue
            for w in (w_q, w_k, w_v, w_o):
                w[head].zero_()
            w_v[head, tok, :c] = eye
            if role == "previous_token":
                w_q[head, pos, :c] = q_scale * rot
                w_k[head, pos, :c] = eye
                w_o[head, :c, prev] = eye
            elif role == "induction":
                w_q[head, tok, :c] = q_scale * eye
                w_k[head, prev, :c] = eye
                w_o[head, :c, out] = eye
            elif role == "duplicate_token":
                w_q[head, tok, :c] = q_scale * eye
                w_k[head, tok, :c] = eye
                w_q[head, pos, c:] = -0.75 * q_scale * eye  # a token must not match itself
                w_k[head, pos, c:] = eye
                w_o[head, :c, scratch] = eye
            elif role == "copying":  # attends to its own position, copies the token
                w_q[head, pos, :c] = q_scale * eye
                w_k[head, pos, :c] = eye
                w_o[head, :c, out] = eye
            elif role == "successor":  # attends to its own position, writes the successor
                w_q[head, pos, :c] = q_scale * eye
                w_k[head, pos, :c] = eye
                assert succ_rot is not None  # the successor role exists only when spec.successor is set
                w_o[head, :c, out] = succ_rot
            elif role == "copy_suppression":  # attends to the predicted token, suppresses it
                w_q[head, out, :c] = q_scale * eye
                w_k[head, tok, :c] = eye
                w_o[head, :c, out] = -eye
            elif role in _TOKEN_ROLES:
                assert feat is not None  # _write_token_features gives FEAT whenever such a role is planted
                _plant_token_role(sd, role, layer, head, w_q, w_k, w_o, rot, q_scale, pos, scratch, feat)
            elif role in ("sink", "dormant"):
                _plant_sink(sd, layer, head, w_k, w_o, pcodes[0], q_scale, scratch, quiet=role == "dormant", seed=spec.seed)
            elif role in _POSITIONAL_ROLES:
                _plant_positional(spec, role, head, w_q, w_k, w_o, rot, q_scale)
            elif role == "relation":  # attends to its own position, writes the source's target
                w_q[head, pos, :c] = q_scale * eye
                w_k[head, pos, :c] = eye
                w_o[head, :c, out] = _relation_map(spec, codes).float()
            elif role == "q_composition":  # the query is the previous token (PREV), the key the token
                w_q[head, prev, :c] = q_scale * eye
                w_k[head, tok, :c] = eye
                w_o[head, :c, scratch] = eye
            elif role == "v_composition":  # attends to itself; the value is the previous token (PREV)
                w_q[head, pos, :c] = q_scale * eye
                w_k[head, pos, :c] = eye
                w_v[head, tok] = 0.0
                w_v[head, prev, :c] = eye
                w_o[head, :c, scratch] = eye
        p = f"blocks.{layer}."
        sd.update({
            p + "attn.W_Q": w_q, p + "attn.W_K": w_k, p + "attn.W_V": w_v, p + "attn.W_O": w_o,
            p + "attn.b_Q": sd.pop(p + "attn.b_Q", torch.zeros(h, dh)), p + "attn.b_K": torch.zeros(h, dh),
            p + "attn.b_V": torch.zeros(h, dh), p + "attn.b_O": torch.zeros(d),
        })
        if not spec.attn_only:
            d_mlp = 4 * d
            w_out = torch.zeros(d_mlp, d)
            w_out[:, scratch] = 0.5 * torch.randn(d_mlp, c, generator=g) / math.sqrt(d_mlp)
            sd.update({
                p + "mlp.W_in": torch.randn(d, d_mlp, generator=g) / math.sqrt(d),
                p + "mlp.b_in": torch.zeros(d_mlp), p + "mlp.W_out": w_out, p + "mlp.b_out": torch.zeros(d),
            })
    return sd


def _plant_sink(
    sd: dict[str, torch.Tensor], layer: int, head: int, w_k: torch.Tensor, w_o: torch.Tensor,
    first_code: torch.Tensor, q_scale: float, scratch: slice, *, quiet: bool, seed: int,
) -> None:
    """A head whose constant query (the bias ``b_Q``) matches position 0's code: every query
    attends to the first token. Its output goes to ``SCRATCH`` at a random head's scale, or at
    ``10**-3`` of it when ``quiet`` (a dormant head)."""
    c = first_code.shape[0]
    h, dh = w_k.shape[0], w_k.shape[2]
    pos = slice(c, 2 * c)
    w_k[head, pos, :c] = torch.eye(c)
    b_q = sd.setdefault(f"blocks.{layer}.attn.b_Q", torch.zeros(h, dh))
    b_q[head, :c] = q_scale * first_code / first_code.norm()
    g = torch.Generator().manual_seed(seed + 7919 * (layer + 1) + head)  # own stream: other weights unchanged
    w_o[head, :c, scratch] = (1e-3 if quiet else 0.5) * torch.randn(c, c, generator=g) / math.sqrt(dh)


# -- token-feature roles (subword_merge, delimiter, rare_token) ---------------------------------

@dataclass(frozen=True)
class TokenFeatures:
    """Per-id features of a tokenizer that token-feature heads read (hashable, so a
    :class:`PlantSpec` holding them can key a cache).

    Attributes:
        separator: 1.0 for separator ids (punctuation, symbols, line breaks), else 0.0.
        rarity: ``-log frequency`` (add-one smoothed) scaled to ``[0, 1]``; -1.0 for specials,
            so a rare-token head never picks them.
        word_start: 0.0 for pieces marked as continuing a word, else 1.0.
        source: where the frequencies were counted (for reprs and messages).
    """

    separator: tuple[float, ...]
    rarity: tuple[float, ...]
    word_start: tuple[float, ...]
    source: str = "shipped"

    def __post_init__(self) -> None:
        n = {len(self.separator), len(self.rarity), len(self.word_start)}
        if len(n) != 1:
            raise ValueError(f"token features must have one value per id each; got lengths {sorted(n)}")

    def __len__(self) -> int:
        return len(self.separator)

    def __repr__(self) -> str:
        return f"TokenFeatures({len(self)} ids, frequencies from {self.source!r})"


def features_from_tokenizer(tokenizer: Any, frequency: str = "shipped") -> TokenFeatures:
    """The :class:`TokenFeatures` of ``tokenizer`` as the tokenizer-aware detectors read it:
    separators and word starts from :func:`headzoo.vocab_tables`, rarity from
    :func:`headzoo.token_counts` of ``frequency`` (``"shipped"`` or a text file's path).

    Plant with ``PlantSpec(d_vocab=len(tokenizer), token_features=features, ...)`` and build
    with ``planted_model(spec, tokenizer=tokenizer)``.
    """
    from headzoo._vocab import rarity, token_counts, vocab_tables

    n = len(tokenizer)
    tables = vocab_tables(tokenizer, n, who="features_from_tokenizer")
    rare = rarity(token_counts(tokenizer, frequency, n)).float()
    rare[tables.special] = -1.0
    return TokenFeatures(
        separator=tuple(tables.punctuation.float().tolist()), rarity=tuple(rare.tolist()),
        word_start=tuple((~tables.continues).float().tolist()), source=str(frequency),
    )


def _token_feature_dims(spec: PlantSpec) -> int:
    """Width of ``FEAT``: 0 unless a token-feature role is planted (other models keep their shape)."""
    return _N_FEAT if any(getattr(spec, r) is not None for r in _TOKEN_ROLES) else 0


def _check_token_roles(spec: PlantSpec, planted: dict[str, Head]) -> None:
    roles = [r for r in _TOKEN_ROLES if r in planted]
    if spec.token_features is not None and not isinstance(spec.token_features, TokenFeatures):
        raise ValueError(f"token_features must be a TokenFeatures (see features_from_tokenizer); got {type(spec.token_features).__name__}")
    if not roles:
        return
    if spec.token_features is None:
        raise ValueError(
            f"planted {roles} read token features; pass token_features=features_from_tokenizer(tokenizer) "
            "with d_vocab=len(tokenizer), and build with planted_model(spec, tokenizer=tokenizer)"
        )
    if len(spec.token_features) != spec.d_vocab:
        raise ValueError(
            f"token_features cover {len(spec.token_features)} ids but d_vocab={spec.d_vocab}; use "
            "d_vocab=len(tokenizer) for the tokenizer the features came from"
        )


def _write_token_features(spec: PlantSpec, w_e: torch.Tensor, w_pos: torch.Tensor) -> slice | None:
    """Write ``FEAT`` into the embeddings (in place; only when a token-feature role is planted)."""
    if not _token_feature_dims(spec):
        return None
    assert spec.token_features is not None  # _check_token_roles requires it with these roles
    start = 5 * (spec.d_head // 2) + _positional_width(spec)  # after SCRATCH and PREV2 (when planted)
    feat = slice(start, start + _N_FEAT)
    f = spec.token_features
    w_e[:, start] = torch.tensor(f.separator)
    w_e[:, start + 1] = torch.tensor(f.rarity)
    w_e[:, start + 2] = torch.tensor(f.word_start)
    w_pos[0, start + 3] = 1.0
    return feat


def _plant_token_role(
    sd: dict[str, torch.Tensor], role: str, layer: int, head: int, w_q: torch.Tensor, w_k: torch.Tensor,
    w_o: torch.Tensor, rot: torch.Tensor, q_scale: float, pos: slice, scratch: slice, feat: slice,
) -> None:
    """One token-feature head (its weights were zeroed and its value reads the token code).
    Every such head writes its output into ``SCRATCH``, as a duplicate-token head does."""
    c = rot.shape[0]
    h, dh = w_q.shape[0], w_q.shape[2]
    separator, rarity, word_start, first = (feat.start + i for i in range(_N_FEAT))
    b_q = sd.setdefault(f"blocks.{layer}.attn.b_Q", torch.zeros(h, dh))
    if role == "delimiter":  # constant query x "is separator" key: uniform over the separators
        b_q[head, 0] = q_scale
        w_k[head, separator, 0] = 1.0
    elif role == "rare_token":  # constant query x rarity key: the rarest key wins
        # rarity gaps between rare counts are ~0.05 on the [0, 1] scale: a 10x sharper query
        # puts most of the attention, not just the argmax, on the rarest key
        b_q[head, 0] = 10 * q_scale
        w_k[head, rarity, 0] = 1.0
    elif role == "subword_merge":
        w_q[head, pos, :c] = q_scale * rot  # a previous-token query ...
        w_k[head, pos, :c] = torch.eye(c)
        # ... plus, on word-start queries, twice that logit towards "is position 0"
        w_q[head, word_start, c] = 2 * q_scale
        w_k[head, first, c] = 1.0
    w_o[head, :c, scratch] = torch.eye(c)


def planted_model(
    spec: PlantSpec | None = None,
    *,
    backend: Backend = "bridge",
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    name: str = "planted",
    **spec_fields: Any,
) -> Any:
    """Build a TransformerLens model with planted heads.

    Args:
        spec: the architecture and placements; or give :class:`PlantSpec` fields as keywords.
        backend: ``"bridge"`` (TransformerBridge, any TransformerLens) or ``"hooked"``
            (HookedTransformer, TransformerLens 3.x).
        tokenizer: a Hugging Face tokenizer, ``True`` for a word tokenizer over
            ``d_vocab - 2`` words ``tok0, tok1, ...``, or ``None`` for none.

    Returns:
        The model, in eval mode. The same ``spec`` gives identical weights in either class.

    Example:
        >>> model = planted_model(previous_token=(0, 3), induction=(1, 1))  # doctest: +SKIP
    """
    if spec is None:
        spec = PlantSpec(**spec_fields)
    elif spec_fields:
        known = {f.name for f in fields(PlantSpec) if f.init}
        spec = PlantSpec(**{**{k: getattr(spec, k) for k in known}, **spec_fields})
    if tokenizer is True:
        from headzoo.testing._tokenizer import word_tokenizer

        tokenizer = word_tokenizer([f"tok{i}" for i in range(spec.d_vocab - 2)])
    return build_model(
        spec.config(), planted_state_dict(spec), backend=backend, tokenizer=tokenizer,
        device=device, dtype=dtype, name=name,
    )


def random_placements(
    n_layers: int, n_heads: int, seed: int, *, duplicate_token: bool = True, weights: bool = False,
    sink: bool = False, dormant: bool = False, subword_merge: bool = False, delimiter: bool = False,
    rare_token: bool = False, relative_position: bool = False, ngram_induction: bool = False,
    relation: bool = False, q_composition: bool = False, v_composition: bool = False,
) -> dict[str, Head]:
    """Random distinct head placements with the previous-token head below the induction head.

    Args:
        duplicate_token: also place a duplicate-token head (needs ``d_head >= 32``).
        relation: also place a relation head (drawn after the other roles of this list, so
            they stay where they are drawn without it).
        weights: also place the heads that weight-based detectors find: ``copying``,
            ``successor`` and ``copy_suppression``. The copy-suppression head goes no later
            than the induction and copying heads: after them it would attend to what they
            predict, which on a repeated-token probe is exactly an induction (or
            duplicate-token) stripe, as a real copy-suppression head does.
        sink, dormant: also place a sink head / a dormant head (attention on position 0,
            ordinary / near-zero output).
        subword_merge, delimiter, rare_token: also place these token-feature heads (any layer;
            the spec then needs ``token_features``).
        relative_position: also place a relative-position head (any layer).
        ngram_induction: also place an n-gram induction head, above both the previous-token
            head and a relative-position head (placed too; plant it with ``relative_offset=2``).
            These draws come after all others, so the other placements do not move.
        q_composition, v_composition: also place a head that Q-composes / V-composes with the
            previous-token head, in a layer above it. Drawn after everything else (in this
            order), so the other placements do not move.
    """
    if n_layers < 2:
        raise ValueError("placements with an induction head need at least 2 layers")
    g = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prev_layer = pick(0, n_layers - 1)
    out = {"previous_token": (prev_layer, pick(0, n_heads)), "induction": (pick(prev_layer + 1, n_layers), pick(0, n_heads))}
    # the constrained roles first, so small models still have room for them
    extra = (["copy_suppression", "copying"] if weights else []) + (["duplicate_token"] if duplicate_token else []) + (
        ["successor"] if weights else []) + (["sink"] if sink else []) + (["dormant"] if dormant else []) + [
        role for role, on in (("subword_merge", subword_merge), ("delimiter", delimiter), ("rare_token", rare_token),
                              ("relation", relation)) if on]
    for role in extra:
        lo, hi = 0, n_layers
        if role == "copy_suppression":
            hi = out["induction"][0] + 1
        elif role == "copying":
            lo = out["copy_suppression"][0]
        taken = set(out.values())
        free = [(ll, hh) for ll in range(lo, hi) for hh in range(n_heads) if (ll, hh) not in taken]
        if not free:
            raise ValueError(f"{n_layers} x {n_heads} heads are too few to place {['previous_token', 'induction', *extra]}")
        out[role] = free[pick(0, len(free))]
    _place_positional(out, n_layers, n_heads, pick, relative_position or ngram_induction, ngram_induction)
    for role, on in (("q_composition", q_composition), ("v_composition", v_composition)):
        if not on:
            continue
        taken = set(out.values())
        free = [(ll, hh) for ll in range(out["previous_token"][0] + 1, n_layers) for hh in range(n_heads) if (ll, hh) not in taken]
        if not free:
            raise ValueError(f"{n_layers} x {n_heads} heads leave no free head above the previous-token head for {role}")
        out[role] = free[pick(0, len(free))]
    return out


def _place_positional(out: dict[str, Head], n_layers: int, n_heads: int, pick: Any, relative: bool, ngram: bool) -> None:
    """Add relative-position (and n-gram induction) heads to ``out`` in free slots."""
    if not relative:
        return
    taken = set(out.values())
    # under an n-gram head the relative head must leave a layer above it (and above the
    # previous-token head) with a free slot
    hi = n_layers - 1 if ngram else n_layers
    free = [(ll, hh) for ll in range(hi) for hh in range(n_heads) if (ll, hh) not in taken]
    if ngram:
        free = [p for p in free if any((ll, hh) not in taken for ll in range(max(p[0], out["previous_token"][0]) + 1,
                                                                             n_layers) for hh in range(n_heads))]
    if not free:
        raise ValueError(f"{n_layers} x {n_heads} heads are too few to place {[*out, 'relative_position']}")
    out["relative_position"] = free[pick(0, len(free))]
    if ngram:
        lo = max(out["previous_token"][0], out["relative_position"][0]) + 1
        taken = set(out.values())
        free = [(ll, hh) for ll in range(lo, n_layers) for hh in range(n_heads) if (ll, hh) not in taken]
        out["ngram_induction"] = free[pick(0, len(free))]
