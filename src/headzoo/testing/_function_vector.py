"""A planted function-vector circuit: one head's mean output carries the task.

The model reads prompts ``[BOS] x1 y1 ; x2 y2 ; ... xq`` of a successor task (by default the
weekdays and months, cyclic, so the built-in ``successor`` task of :func:`hz.icl_tasks` spells
them) and answers ``succ(xq)``. Codes are one-hot, so every step is exact up to softmax leakage.
The residual stream is split into ``TOK`` (token), ``POS`` (position), ``S`` (the successor of
the previous token), ``FLAG``, ``T`` (the task), ``OUT`` (read by the unembedding) and
``SCRATCH`` (where every random head and MLP writes):

- previous-token head (layer ``a``): the one-hot position query is shifted one step back, so it
  attends to the previous position; its OV circuit writes ``onehot(succ(previous token))`` to ``S``.
- flag MLP (same layer ``a``): ``FLAG = sum_j relu(TOK_j + S_j - 1)``: 1 exactly where a token is
  the successor of the one before it, i.e. at every correctly labelled shot's output.
- function-vector head (layer ``b > a``): a constant query against keys ``FLAG`` (and half as
  much on BOS): it attends to the flagged positions, else to BOS; its value is ``FLAG``, written
  to ``T``. With shuffled labels no position is flagged, so it writes nothing.
- executor head (layer ``c > b``): with ``T`` in its query it attends to its own position, else
  to BOS; its OV circuit maps a token to its successor's ``OUT`` code.

Patching the FV head's clean mean output (``T = 1``) into a shuffled-label prompt turns the
executor back on: its causal indirect effect is about ``1 - 1/d_vocab``; every other head's
patched mean changes only ``SCRATCH`` (random heads) or close to nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from headzoo._backends import Backend, build_model
from headzoo._ordinal import ORDINAL_LISTS

__all__ = ["function_vector_model", "function_vector_placements", "FUNCTION_VECTOR_SEPARATOR"]

Head = tuple[int, int]

#: the separator word of the planted model's vocabulary (pass ``separator=";"`` to the detector)
FUNCTION_VECTOR_SEPARATOR = ";"


def _default_words() -> tuple[list[str], list[tuple[str, str]]]:
    days, months = ORDINAL_LISTS["days"][0], ORDINAL_LISTS["months"][0]
    pairs = [(a, b) for seq in (days, months) for a, b in zip(seq, seq[1:] + seq[:1])]
    return [FUNCTION_VECTOR_SEPARATOR, *days, *months], pairs


def function_vector_placements(n_layers: int, n_heads: int, seed: int) -> dict[str, Head]:
    """Random distinct ``previous_token``, ``function_vector`` and ``executor`` heads in
    strictly increasing layers (needs ``n_layers >= 3``)."""
    if n_layers < 3:
        raise ValueError(f"the function-vector circuit needs 3 layers in a row; got n_layers={n_layers}")
    g = torch.Generator().manual_seed(seed)
    layers = sorted(torch.randperm(n_layers, generator=g)[:3].tolist())
    heads = torch.randint(0, n_heads, (3,), generator=g).tolist()
    return {role: (int(layer), int(head)) for role, layer, head in zip(("previous_token", "function_vector", "executor"), layers, heads)}


def function_vector_model(
    *,
    n_layers: int = 3,
    n_heads: int = 4,
    previous_token: Head = (0, 0),
    function_vector: Head = (1, 1),
    executor: Head = (2, 2),
    n_ctx: int = 32,
    seed: int = 0,
    gain: float = 30.0,
    logit_scale: float = 12.0,
    backend: Backend = "bridge",
    name: str = "planted-function-vector",
) -> Any:
    """A TransformerLens model with a planted function-vector circuit (see the module doc).

    Args:
        previous_token, function_vector, executor: ``(layer, head)`` of the three planted heads,
            in strictly increasing layers.
        n_ctx: context length (one-hot positions: ``d_model`` grows with it).
        seed: seeds the random heads and MLPs (which write only into ``SCRATCH``).
        gain: attention logit margin of the planted heads.
        logit_scale: the executor's logit for the answer.

    Returns:
        The model (eval mode) with a word tokenizer over ``;``, the weekdays and the months;
        the detector needs ``separator=";"`` (the vocabulary has no newline). The same
        arguments give the same weights.
    """
    from headzoo.testing._tokenizer import word_tokenizer

    roles = {"previous_token": previous_token, "function_vector": function_vector, "executor": executor}
    for role, (layer, head) in roles.items():
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"{role} head {(layer, head)} is outside a {n_layers} x {n_heads} model")
    if not previous_token[0] < function_vector[0] < executor[0]:
        raise ValueError(f"the heads must sit in increasing layers previous_token < function_vector < executor; got {roles}")
    words, pairs = _default_words()
    tokenizer = word_tokenizer(words)
    vocab = tokenizer.get_vocab()
    v = len(tokenizer)
    bos = int(tokenizer.bos_token_id)
    succ = {vocab[a]: vocab[b] for a, b in pairs}

    n_scratch = 8
    dims: dict[str, slice] = {}
    at = 0
    for part, width in (("tok", v), ("pos", n_ctx), ("s", v), ("flag", 1), ("t", 1), ("out", v), ("scratch", n_scratch)):
        dims[part] = slice(at, at + width)
        at += width
    d = at
    dh = max(n_ctx + 2, v)
    tok, pos, s_, out, scratch = dims["tok"], dims["pos"], dims["s"], dims["out"], dims["scratch"]
    flag, t = dims["flag"].start, dims["t"].start
    g = torch.Generator().manual_seed(seed)
    q_gain = gain * math.sqrt(dh)  # TransformerLens divides scores by sqrt(d_head)
    succ_map = torch.zeros(v, v)  # onehot(x) @ succ_map = onehot(succ(x))
    for a, b in succ.items():
        succ_map[a, b] = 1.0

    sd: dict[str, torch.Tensor] = {}
    w_e = torch.zeros(v, d)
    w_e[:, tok] = torch.eye(v)
    w_pos = torch.zeros(n_ctx, d)
    w_pos[:, pos] = torch.eye(n_ctx)
    w_u = torch.zeros(d, v)
    w_u[out] = torch.eye(v)
    sd.update({"embed.W_E": w_e, "pos_embed.W_pos": w_pos, "unembed.W_U": w_u, "unembed.b_U": torch.zeros(v)})
    d_mlp = v
    by_head = {head: role for role, head in roles.items()}
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
            if role == "previous_token":
                for p in range(1, n_ctx):
                    w_q[head, pos.start + p, p - 1] = q_gain
                w_k[head, pos, :n_ctx] = torch.eye(n_ctx)
                w_v[head, tok, :v] = torch.eye(v)
                w_o[head, :v, s_] = succ_map
            elif role == "function_vector":
                b_q[head, 0] = q_gain
                w_k[head, flag, 0] = 1.0
                w_k[head, tok.start + bos, 0] = 0.5
                w_v[head, flag, 0] = 1.0
                w_o[head, 0, t] = 1.0
            else:  # executor: own position when T is on, else BOS
                w_q[head, t, 0] = q_gain
                w_k[head, tok, 0] = 1.0
                w_k[head, tok.start + bos, 0] = 0.0
                b_q[head, 1] = 1.5 * q_gain
                w_k[head, tok.start + bos, 1] = 1.0
                for p in range(n_ctx):
                    w_q[head, pos.start + p, 2 + p] = q_gain
                    w_k[head, pos.start + p, 2 + p] = 1.0
                w_v[head, tok, :v] = torch.eye(v)
                w_o[head, :v, out] = logit_scale * succ_map
        p_ = f"blocks.{layer}."
        sd.update({
            p_ + "attn.W_Q": w_q, p_ + "attn.W_K": w_k, p_ + "attn.W_V": w_v, p_ + "attn.W_O": w_o,
            p_ + "attn.b_Q": b_q, p_ + "attn.b_K": torch.zeros(n_heads, dh), p_ + "attn.b_V": torch.zeros(n_heads, dh),
            p_ + "attn.b_O": torch.zeros(d),
        })
        if layer == previous_token[0]:  # the flag: relu(TOK_j + S_j - 1), summed over j
            w_in = torch.zeros(d, d_mlp)
            w_in[tok, :v] = torch.eye(v)
            w_in[s_, :v] = torch.eye(v)
            b_in = -torch.ones(d_mlp)
            w_out = torch.zeros(d_mlp, d)
            w_out[:v, flag] = 1.0
        else:  # a random MLP that writes only into SCRATCH
            w_in = torch.randn(d, d_mlp, generator=g) / math.sqrt(d)
            b_in = torch.zeros(d_mlp)
            w_out = torch.zeros(d_mlp, d)
            w_out[:, scratch] = torch.randn(d_mlp, n_scratch, generator=g) / math.sqrt(d_mlp)
        sd.update({p_ + "mlp.W_in": w_in, p_ + "mlp.b_in": b_in, p_ + "mlp.W_out": w_out, p_ + "mlp.b_out": torch.zeros(d)})
    config = dict(
        n_layers=n_layers, d_model=d, n_ctx=n_ctx, d_head=dh, n_heads=n_heads, d_vocab=v, d_mlp=d_mlp, act_fn="relu",
        normalization_type=None, attn_only=False, positional_embedding_type="standard", default_prepend_bos=True,
    )
    return build_model(config, sd, backend=backend, tokenizer=tokenizer, name=name)
