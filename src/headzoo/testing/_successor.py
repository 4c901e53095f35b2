"""A planted successor head over numbers built from a tens code plus a units code.

Gould et al. (2023, arXiv 2312.09230) find that successor heads increment a number through
"mod-10" features: the effective embedding of a number holds a direction for its last digit,
and the head's OV circuit maps the direction of digit ``k`` to that of ``k + 1``. This model is
that account made exact, so every analysis of the paper has a known answer:

- vocabulary (a word tokenizer): ``<bos>``, ``<unk>``, the numbers ``"0" ... "N-1"`` and filler
  words ``"f0" ... ``;
- residual stream: ``TEN`` (tens code), ``UNIT`` (units code), ``FLAG`` (1 on numbers), ``BOS``
  (1 on the BOS token), ``FILL`` (filler codes), ``OUT`` (read by the unembedding) and
  ``SCRATCH`` (where every random head and MLP writes);
- number ``n`` embeds as ``T[n // 10] + U[n % 10]`` plus Gaussian noise of relative size
  ``noise`` (orthonormal codes where the width allows, random unit vectors otherwise), with
  ``FLAG = 1``; the unembedding reads ``OUT`` with each number's clean codes;
- successor head: a constant query against keys ``FLAG`` (and half as much ``BOS``), so from any
  position it attends to the numbers in context, else to BOS; its OV circuit copies the tens
  code and maps ``U[k]`` to ``U[(k + 1) % 10]`` into ``OUT``, so attending to ``n`` raises the
  logit of ``n + 1``. A units increment cannot carry: for ``n`` ending in 9 it raises
  ``10 * (n // 10)``, as the mod-10 account predicts;
- copying head (optional): the same attention, with an OV circuit that copies both codes (a
  head a succession score must not confuse with a successor head).

Every other head and MLP is random and writes only into ``SCRATCH``, which nothing planted reads.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from headzoo._backends import Backend, build_model

__all__ = ["successor_model", "successor_placements"]

Head = tuple[int, int]


def successor_placements(n_layers: int, n_heads: int, seed: int, *, copying: bool = False) -> dict[str, Head]:
    """A random ``successor`` head (and a distinct ``copying`` head) for :func:`successor_model`."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_layers * n_heads, generator=g).tolist()
    roles = ["successor", "copying"] if copying else ["successor"]
    if len(order) < len(roles):
        raise ValueError(f"a {n_layers} x {n_heads} model has no room for {roles}")
    return {role: (i // n_heads, i % n_heads) for role, i in zip(roles, order)}


def _codes(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """``[n, dim]`` unit codes: orthonormal when ``n <= dim``, random unit vectors otherwise."""
    x = torch.randn(max(n, dim), dim, generator=g)
    if n <= dim:
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        return q[:n].contiguous()
    return x[:n] / x[:n].norm(dim=-1, keepdim=True)


def successor_model(
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    successor: Head = (1, 1),
    copying: Head | None = None,
    n_numbers: int = 100,
    tens_dim: int = 10,
    units_dim: int = 10,
    noise: float = 0.1,
    n_filler: int = 24,
    n_ctx: int = 64,
    seed: int = 0,
    gain: float = 30.0,
    logit_scale: float = 8.0,
    backend: Backend = "bridge",
    name: str = "planted-successor",
) -> Any:
    """A TransformerLens model with a planted successor head over tens + units codes (module doc).

    Args:
        successor: ``(layer, head)`` of the successor head.
        copying: ``(layer, head)`` of an optional copying head with the same attention.
        n_numbers: the numbers ``0 .. n_numbers - 1`` are tokens (at least 20).
        tens_dim, units_dim: widths of the tens and units codes. With ``units_dim >= 10`` the
            units increment is exact; narrower codes make it a least-squares approximation.
        noise: relative size of the Gaussian noise added to each number's codes (0 = none).
        n_filler: filler words ``"f0" ...`` (what prompts and text are padded with).
        n_ctx: context length.
        seed: seeds the codes, the noise and the random heads and MLPs.
        gain: attention logit margin of the planted heads.
        logit_scale: size of the planted heads' output in ``OUT``.

    Returns:
        The model (eval mode) with its word tokenizer; the same arguments give the same weights.
    """
    from headzoo.testing._tokenizer import word_tokenizer

    roles: dict[str, Head] = {"successor": successor}
    if copying is not None:
        roles["copying"] = copying
    for role, (layer, head) in roles.items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"{role} head {(layer, head)} is outside a {n_layers} x {n_heads} model")
    if copying is not None and copying == successor:
        raise ValueError("the copying head must differ from the successor head")
    if n_numbers < 20:
        raise ValueError(f"n_numbers must be at least 20 (two full tens); got {n_numbers}")
    if tens_dim < 1 or units_dim < 2 or n_filler < 1 or noise < 0:
        raise ValueError("tens_dim >= 1, units_dim >= 2, n_filler >= 1 and noise >= 0 are required")

    words = [str(n) for n in range(n_numbers)] + [f"f{k}" for k in range(n_filler)]
    tokenizer = word_tokenizer(words)
    v = len(tokenizer)
    bos = int(tokenizer.bos_token_id)
    first_number = 2  # after <bos> and <unk>
    n_tens = (n_numbers + 9) // 10
    fill_dim = 8
    n_scratch = 8
    dims: dict[str, slice] = {}
    at = 0
    for part, width in (("ten", tens_dim), ("unit", units_dim), ("flag", 1), ("bos", 1), ("fill", fill_dim),
                        ("out", tens_dim + units_dim), ("scratch", n_scratch)):
        dims[part] = slice(at, at + width)
        at += width
    d = at
    dh = tens_dim + units_dim + 2
    ten, unit, fill, out, scratch = dims["ten"], dims["unit"], dims["fill"], dims["out"], dims["scratch"]
    flag, bos_dim = dims["flag"].start, dims["bos"].start
    g = torch.Generator().manual_seed(seed)
    t_codes = _codes(n_tens, tens_dim, g)  # [n_tens, tens_dim]
    u_codes = _codes(10, units_dim, g)  # [10, units_dim]
    # the units increment as a map on row vectors: u_codes @ inc ~= u_codes rolled by one digit
    inc = torch.linalg.pinv(u_codes) @ u_codes.roll(-1, dims=0)  # [units_dim, units_dim]

    numbers = torch.arange(n_numbers)
    w_e = torch.zeros(v, d)
    rows = first_number + numbers
    w_e[rows, ten] = t_codes[numbers // 10] + noise * torch.randn(n_numbers, tens_dim, generator=g) / math.sqrt(tens_dim)
    w_e[rows, unit] = u_codes[numbers % 10] + noise * torch.randn(n_numbers, units_dim, generator=g) / math.sqrt(units_dim)
    w_e[rows, flag] = 1.0
    w_e[bos, bos_dim] = 1.0
    others = [i for i in range(v) if i != bos and not first_number <= i < first_number + n_numbers]
    w_e[others, fill] = torch.randn(len(others), fill_dim, generator=g) / math.sqrt(fill_dim)
    w_u = torch.zeros(d, v)
    w_u[out.start : out.start + tens_dim, rows] = t_codes[numbers // 10].T
    w_u[out.start + tens_dim : out.stop, rows] = u_codes[numbers % 10].T
    sd: dict[str, torch.Tensor] = {
        "embed.W_E": w_e, "pos_embed.W_pos": torch.zeros(n_ctx, d), "unembed.W_U": w_u, "unembed.b_U": torch.zeros(v),
    }
    q_gain = gain * math.sqrt(dh)  # TransformerLens divides scores by sqrt(d_head)
    by_head = {head: role for role, head in roles.items()}
    d_mlp = 4 * n_scratch
    for layer in range(n_layers):
        w_q = 0.5 * torch.randn(n_heads, d, dh, generator=g)
        w_k = 0.5 * torch.randn(n_heads, d, dh, generator=g)
        w_v = torch.randn(n_heads, d, dh, generator=g) / math.sqrt(d)
        w_o = torch.zeros(n_heads, dh, d)
        w_o[:, :, scratch] = torch.randn(n_heads, dh, n_scratch, generator=g) / math.sqrt(dh)
        b_q = torch.zeros(n_heads, dh)
        for head in range(n_heads):
            role = by_head.get((layer, head))
            if role is None:
                continue
            for w in (w_q, w_k, w_v, w_o):
                w[head].zero_()
            b_q[head, 0] = q_gain  # a constant query: numbers first, BOS second, the rest last
            w_k[head, flag, 0] = 1.0
            w_k[head, bos_dim, 0] = 0.5
            w_v[head, ten, :tens_dim] = torch.eye(tens_dim)
            w_v[head, unit, tens_dim : tens_dim + units_dim] = torch.eye(units_dim)
            w_o[head, :tens_dim, out.start : out.start + tens_dim] = logit_scale * torch.eye(tens_dim)
            units_map = inc if role == "successor" else torch.eye(units_dim)
            w_o[head, tens_dim : tens_dim + units_dim, out.start + tens_dim : out.stop] = logit_scale * units_map
        p_ = f"blocks.{layer}."
        sd.update({
            p_ + "attn.W_Q": w_q, p_ + "attn.W_K": w_k, p_ + "attn.W_V": w_v, p_ + "attn.W_O": w_o,
            p_ + "attn.b_Q": b_q, p_ + "attn.b_K": torch.zeros(n_heads, dh), p_ + "attn.b_V": torch.zeros(n_heads, dh),
            p_ + "attn.b_O": torch.zeros(d),
        })
        w_out = torch.zeros(d_mlp, d)  # a random MLP that writes only into SCRATCH
        w_out[:, scratch] = torch.randn(d_mlp, n_scratch, generator=g) / math.sqrt(d_mlp)
        sd.update({
            p_ + "mlp.W_in": torch.randn(d, d_mlp, generator=g) / math.sqrt(d), p_ + "mlp.b_in": torch.zeros(d_mlp),
            p_ + "mlp.W_out": w_out, p_ + "mlp.b_out": torch.zeros(d),
        })
    config = dict(
        n_layers=n_layers, d_model=d, n_ctx=n_ctx, d_head=dh, n_heads=n_heads, d_vocab=v, d_mlp=d_mlp, act_fn="relu",
        normalization_type=None, attn_only=False, positional_embedding_type="standard", default_prepend_bos=True,
    )
    return build_model(config, sd, backend=backend, tokenizer=tokenizer, name=name)
