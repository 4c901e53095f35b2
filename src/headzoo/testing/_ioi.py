"""A planted IOI circuit: a small model that completes "When Mary and John went to the store,
John gave a drink to" with " Mary" through the heads Wang et al. (2022, arXiv 2211.00593)
found in GPT-2 small, each built by hand.

The residual stream holds six subspaces of width ``c = (d_head - 4) // 2`` and three scalar
features: ``TOK`` (token code; names get orthonormal codes, other words codes orthogonal to
every name), ``POS`` (orthonormal position codes), ``INH`` (the name to inhibit), ``OUT`` (read
by the unembedding with the token codes), ``DONE`` (what the name mover already said),
``SCRATCH`` (where random heads write); ``NAME`` (1 on name tokens), ``DUP`` (written by the
duplicate-token head), ``FIRST`` (1 at position 0).

- duplicate-token head: query and key are token codes, minus a position term that stops a
  token from matching itself, plus a constant pull towards position 0: S2 attends to S1,
  other tokens park on position 0. Its value reads ``NAME`` and writes ``DUP``: 1 on a
  repeated name.
- S-inhibition head: a constant query against keys that read ``DUP``: END attends to S2 and
  copies its token code into ``INH``.
- name mover: a constant query against ``NAME`` keys, minus the query's ``INH`` against the
  key's token code: END attends to the names except the inhibited one, so to IO. Its OV
  circuit copies the name's code into ``OUT`` (and into ``DONE``).
- negative name mover: the same attention, OV = ``-negative_gain`` times the copy.
- backup name mover: the name mover's attention, minus ``DONE`` against the key's token code
  (a name already said is not said again), plus a constant pull towards position 0: while the
  name mover works, END parks on position 0 (whose code is zero); when the name mover is
  ablated, ``DONE`` is gone and the backup copies IO itself, at ``backup_gain`` of the name
  mover's strength (so it makes up for part of the loss, as in GPT-2 small).

Random heads write only ``SCRATCH`` (which the unembedding reads weakly), so they never break
the circuit. The model has no MLPs and no LayerNorm.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from headzoo._backends import Backend, build_model

__all__ = ["IOI_ROLES", "ioi_placements", "ioi_model", "ioi_vocabulary"]

Head = tuple[int, int]

#: the planted roles, in the order of the circuit
IOI_ROLES = ("duplicate_token", "s_inhibition", "name_mover", "negative_name_mover", "backup_name_mover")


def ioi_vocabulary(n_names: int = 12) -> tuple[list[str], list[str]]:
    """``(names, words)``: the first ``n_names`` built-in names and every word of the built-in
    templates filled with the built-in places and objects (split on whitespace, punctuation
    attached), so a word tokenizer over ``names + words`` spells every built-in IOI prompt."""
    from headzoo._ioi import ioi_lists

    lists = ioi_lists()
    names = list(lists["names"][:n_names])
    words: dict[str, None] = {}
    for t in lists["templates"]:
        for p in lists["places"]:
            for o in lists["objects"]:
                text = t.replace("{PLACE}", p).replace("{OBJECT}", o).replace("{IO}", " ").replace("{S}", " ")
                words.update(dict.fromkeys(text.split()))
    return names, [w for w in words if w not in names]


def ioi_placements(n_layers: int, n_heads: int, seed: int) -> dict[str, Head]:
    """Random distinct placements of the five IOI roles that respect the circuit's order:
    duplicate-token < S-inhibition < name mover < backup name mover (layers), and the negative
    name mover above the S-inhibition head. Needs ``n_layers >= 4``."""
    if n_layers < 4 or n_heads < 1:
        raise ValueError(f"the IOI circuit needs 4 layers in a row (duplicate, S-inhibition, name mover, backup); got {n_layers}")
    g = torch.Generator().manual_seed(seed)
    layers = sorted(torch.randperm(n_layers, generator=g)[:4].tolist())
    pick = lambda: int(torch.randint(0, n_heads, (1,), generator=g))  # noqa: E731
    out = {role: (layer, pick()) for role, layer in zip(("duplicate_token", "s_inhibition", "name_mover", "backup_name_mover"), layers)}
    taken = set(out.values())
    free = [(ll, hh) for ll in range(out["s_inhibition"][0] + 1, n_layers) for hh in range(n_heads) if (ll, hh) not in taken]
    if not free:
        raise ValueError(f"{n_layers} x {n_heads} heads leave no room for a negative name mover above the S-inhibition head")
    out["negative_name_mover"] = free[int(torch.randint(0, len(free), (1,), generator=g))]
    return {role: out[role] for role in IOI_ROLES}


def _check(placements: dict[str, Any], n_layers: int, n_heads: int) -> dict[str, Head]:
    unknown = set(placements) - set(IOI_ROLES)
    if unknown:
        raise ValueError(f"unknown IOI roles {sorted(unknown)}; the roles are {list(IOI_ROLES)}")
    missing = [r for r in IOI_ROLES if r not in placements]
    if missing:
        raise ValueError(f"placements lack {missing}; every role of {list(IOI_ROLES)} needs a (layer, head)")
    out = {r: (int(placements[r][0]), int(placements[r][1])) for r in IOI_ROLES}
    bad = {r: h for r, h in out.items() if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)}
    if bad:
        raise ValueError(f"placements {bad} lie outside the model ({n_layers} layers x {n_heads} heads)")
    if len(set(out.values())) != len(out):
        raise ValueError(f"placements must be distinct heads; got {out}")
    layer = {r: h[0] for r, h in out.items()}
    if not (layer["duplicate_token"] < layer["s_inhibition"] < layer["name_mover"] < layer["backup_name_mover"]
            and layer["s_inhibition"] < layer["negative_name_mover"]):
        raise ValueError(
            "the IOI circuit reads forward: duplicate_token < s_inhibition < name_mover < backup_name_mover, and "
            f"s_inhibition < negative_name_mover (layers); got {layer}"
        )
    return out


def ioi_state_dict(
    placements: dict[str, Head], n_layers: int, n_heads: int, d_head: int, n_names: int, n_words: int,
    *, seed: int = 0, gain: float = 30.0, negative_gain: float = 0.3, backup_gain: float = 0.5,
    logit_scale: float = 4.0, noise: float = 1.0,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, canonical state dict)`` of the planted IOI model; token ids are
    ``[bos, unk, *names, *words]``."""
    c = (d_head - 4) // 2
    if n_names > c // 2:
        raise ValueError(f"{n_names} names need d_head >= {4 + 4 * n_names} (orthonormal codes with room for other words)")
    n_ctx = c  # orthonormal position codes: one dimension per position
    v = 2 + n_names + n_words
    tok, pos, inh, out, done, scratch = (slice(i * c, (i + 1) * c) for i in range(6))
    name_f, dup_f, first_f = 6 * c, 6 * c + 1, 6 * c + 2
    d = 6 * c + 3
    x, y = 2 * c, 2 * c + 1  # scalar dimensions of a head, after its two c-wide blocks
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(c, c, generator=g))[0]
    codes = torch.zeros(v, c)
    codes[2 : 2 + n_names] = basis[:n_names]
    # other words: random unit codes in the span orthogonal to every name
    words = torch.randn(n_words, c - n_names, generator=g) @ basis[n_names:]
    codes[2 + n_names :] = words / words.norm(dim=1, keepdim=True)
    pcodes = torch.linalg.qr(torch.randn(c, c, generator=g))[0][:n_ctx]
    w_e = torch.zeros(v, d)
    w_e[:, tok] = codes
    w_e[2 : 2 + n_names, name_f] = 1.0
    w_pos = torch.zeros(n_ctx, d)
    w_pos[:, pos] = pcodes
    w_pos[0, first_f] = 1.0
    w_u = torch.zeros(d, v)
    w_u[out] = logit_scale * codes.T
    w_u[scratch] = 0.1 * torch.randn(c, v, generator=g)
    sd: dict[str, torch.Tensor] = {"embed.W_E": w_e, "pos_embed.W_pos": w_pos, "unembed.W_U": w_u, "unembed.b_U": torch.zeros(v)}
    q = gain * math.sqrt(d_head)  # TransformerLens divides scores by sqrt(d_head)
    eye = torch.eye(c)
    sigma = math.sqrt(0.75 * noise)
    roles = {head: role for role, head in placements.items()}
    for layer in range(n_layers):
        w_q = sigma * torch.randn(n_heads, d, d_head, generator=g)
        w_k = sigma * torch.randn(n_heads, d, d_head, generator=g)
        w_v = torch.randn(n_heads, d, d_head, generator=g) / math.sqrt(d)
        w_o = torch.zeros(n_heads, d_head, d)
        w_o[:, :, scratch] = 0.5 * torch.randn(n_heads, d_head, c, generator=g) / math.sqrt(d_head)
        b_q = torch.zeros(n_heads, d_head)
        for head in range(n_heads):
            role = roles.get((layer, head))
            if role is None:
                continue
            for w in (w_q, w_k, w_v, w_o):
                w[head].zero_()
            if role == "duplicate_token":
                w_q[head, tok, :c] = q * eye  # same token ...
                w_k[head, tok, :c] = eye
                w_q[head, pos, c : 2 * c] = -q * eye  # ... but not the same position
                w_k[head, pos, c : 2 * c] = eye
                b_q[head, x] = 0.5 * q  # nothing repeated: park on position 0
                w_k[head, first_f, x] = 1.0
                w_v[head, name_f, x] = 1.0
                w_o[head, x, dup_f] = 1.0
            elif role == "s_inhibition":
                b_q[head, x] = q
                w_k[head, dup_f, x] = 1.0
                w_v[head, tok, :c] = eye
                w_o[head, :c, inh] = eye
            else:  # the three name movers share the attention to names minus the inhibited one
                b_q[head, x] = q
                w_k[head, name_f, x] = 1.0
                w_q[head, inh, :c] = -q * eye
                w_k[head, tok, :c] = eye
                w_v[head, tok, :c] = eye
                if role == "name_mover":
                    w_o[head, :c, out] = eye
                    w_o[head, :c, done] = eye
                elif role == "negative_name_mover":
                    w_o[head, :c, out] = -negative_gain * eye
                else:  # backup: a name already said is not said again; then park on position 0
                    w_q[head, done, :c] = -q * eye
                    b_q[head, y] = 0.5 * q
                    w_k[head, first_f, y] = 1.0
                    w_o[head, :c, out] = backup_gain * eye
        p = f"blocks.{layer}."
        sd.update({
            p + "attn.W_Q": w_q, p + "attn.W_K": w_k, p + "attn.W_V": w_v, p + "attn.W_O": w_o,
            p + "attn.b_Q": b_q, p + "attn.b_K": torch.zeros(n_heads, d_head), p + "attn.b_V": torch.zeros(n_heads, d_head),
            p + "attn.b_O": torch.zeros(d),
        })
    config = dict(
        n_layers=n_layers, d_model=d, n_ctx=n_ctx, d_head=d_head, n_heads=n_heads, d_vocab=v, d_mlp=None,
        act_fn="gelu", normalization_type=None, attn_only=True, positional_embedding_type="standard",
        default_prepend_bos=True,
    )
    return config, sd


def ioi_model(
    *,
    placements: dict[str, Head] | None = None,
    n_layers: int = 4,
    n_heads: int = 4,
    d_head: int = 64,
    n_names: int = 12,
    seed: int = 0,
    backend: Backend = "bridge",
    tokenizer: Any = None,
    gain: float = 30.0,
    negative_gain: float = 0.3,
    backup_gain: float = 0.5,
    device: str | torch.device | None = None,
) -> Any:
    """A small attention-only model with a planted IOI circuit (see the module docstring).

    Args:
        placements: ``{role: (layer, head)}`` for every role of :data:`IOI_ROLES`; ``None``
            draws them with :func:`ioi_placements` from ``seed``.
        n_names: how many built-in names the tokenizer knows (orthonormal codes need
            ``d_head >= 4 + 4 * n_names``).
        seed: seeds the placements (when drawn) and every random weight.
        tokenizer: ``None`` builds a word tokenizer over ``[<bos>, <unk>, *names, *words]``
            (:func:`ioi_vocabulary`), which spells every built-in IOI prompt; or give a word
            tokenizer with that vocabulary in that order.
        gain: attention logit margin of the planted heads.
        negative_gain: the negative name mover's output relative to the name mover's.
        backup_gain: the backup name mover's output relative to the name mover's (below 1, it
            makes up for part of a lost name mover, as backups in GPT-2 small do).

    Returns:
        The model, in eval mode. The placements drawn for ``seed`` are
        ``ioi_placements(n_layers, n_heads, seed)``.
    """
    placements = ioi_placements(n_layers, n_heads, seed) if placements is None else _check(placements, n_layers, n_heads)
    names, words = ioi_vocabulary(n_names)
    if tokenizer is None:
        from headzoo.testing._tokenizer import word_tokenizer

        tokenizer = word_tokenizer([*names, *words])
    config, sd = ioi_state_dict(placements, n_layers, n_heads, d_head, len(names), len(words), seed=seed, gain=gain,
                                negative_gain=negative_gain, backup_gain=backup_gain)
    if len(tokenizer) != config["d_vocab"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens; the planted IOI model needs {config['d_vocab']}")
    return build_model(config, sd, backend=backend, tokenizer=tokenizer, device=device, name="planted-ioi")
