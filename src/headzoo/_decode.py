"""Greedy decoding that records, per step and head, where the emitting query looks.

A probe (the needle-in-a-haystack probe of retrieval heads, Wu et al. 2024) builds prompts; this
module only decodes them. Each step keeps the argmax key of every head's emitting query and
drops the pattern at once, and only the emitting position is unembedded. With a key-value cache
(the execution kernel's :func:`~headzoo._forward.open_kv_cache`) the prompt runs once and each
new token costs a one-position forward; the cache is checked once against a full forward. A
model without one is decoded by a full forward per step, which gives the same tokens and keys:
that fallback is slower, so it is warned about once and recorded in the returned mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from headzoo._forward import KVCache, hook_name, open_kv_cache, run, warn_once
from headzoo._models import ModelInfo
from headzoo._tokens import pad_right

__all__ = ["Decoded", "greedy_decode"]

#: ``prompt_len -> TransformerLens edit hooks`` for one decode of a batch of equal-length
#: prompts. The hooks see the positions in order and may keep state (a running sum): with a
#: key-value cache one call serves the prompt's pass and every one-token pass after it; when
#: decoding by full forwards, each pass gets a fresh call.
EditFactory = Callable[[int], list[tuple[str, Callable[..., Any]]]]


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What :func:`greedy_decode` produced.

    Attributes:
        generated: ``[prompt, step]`` greedily decoded ids.
        keys: ``[prompt, step, layer, head]`` int32 argmax key of each head's emitting query, or
            ``None`` when not recorded.
        mode: ``"kv_cache (<kind>)"`` or ``"recompute: <why>"``.
    """

    generated: Int[torch.Tensor, "prompt step"]
    keys: Int[torch.Tensor, "prompt step layer head"] | None
    mode: str


class _Mode:
    def __init__(self, cache: bool, reason: str) -> None:
        self.cache, self.reason, self.verified = cache, reason, False

    def fall_back(self, reason: str) -> None:
        self.cache, self.reason = False, f"recompute: {reason}"
        warn_once(f"headzoo decodes this model by one full forward pass per token ({reason}); this is slower "
                  "than a key-value cache but gives the same tokens. The result's mode records it.")


def _step(model: Any, info: ModelInfo, ids: torch.Tensor, last: torch.Tensor, record: bool,
          edit: Sequence[tuple[str, Any]], forward: Callable[[], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward: ``(logits [b, vocab], argmax keys [b, layer, head])`` at each row's query
    ``last`` (an index into ``ids``; with a cache, key indices still count from the start)."""
    keys: dict[int, torch.Tensor] = {}
    rows = torch.arange(ids.shape[0], device=ids.device)
    q = last.to(ids.device)

    def keeper(layer: int) -> Callable[[torch.Tensor], None]:
        def keep(pattern: torch.Tensor) -> None:
            # only each row's emitting query is kept, as its argmax key
            keys[layer] = pattern[rows, :, q.to(pattern.device)].detach().argmax(-1).to(torch.int32).cpu()
        return keep

    read = {hook_name("pattern", layer): keeper(layer) for layer in range(info.n_layers)} if record else None
    logits = run(model, ids, read=read, edit=edit, logits=q, forward=forward)
    assert logits is not None
    got = torch.stack([keys[layer] for layer in range(info.n_layers)], 1) if record else None
    return logits[:, 0].float(), got


def greedy_decode(
    model: Any,
    info: ModelInfo,
    prompts: Sequence[torch.Tensor],
    steps: int,
    *,
    batch_size: int = 4,
    use_kv_cache: bool = True,
    record_keys: bool = True,
    edit: EditFactory | None = None,
    progress: bool | None = None,
    desc: str = "headzoo decode",
) -> Decoded:
    """Decode ``steps`` tokens after each prompt, greedily.

    Args:
        prompts: 1-D id tensors; prompts of different lengths are batched (right-padded, exact
            under causal attention) when decoding by full forwards, and grouped by length when a
            key-value cache or ``edit`` hooks need equal lengths.
        edit: ``prompt_len -> hooks`` applied to every forward of a batch (e.g. head masking),
            see :data:`EditFactory`. Edited runs use the cache too: the cache then holds the
            edited keys and values, exactly what a full forward with the same edits computes
            (checked once against one).

    Returns:
        :class:`Decoded`.
    """
    device = torch.device(info.device)
    n = len(prompts)
    generated = torch.zeros(n, steps, dtype=torch.long)
    keys = torch.zeros(n, steps, info.n_layers, info.n_heads, dtype=torch.int32) if record_keys else None
    if use_kv_cache:
        state = _Mode(True, "kv_cache")
    else:
        state = _Mode(False, "recompute: use_kv_cache=False")
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    equal_lengths = state.cache or edit is not None
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
            not equal_lengths or len(prompts[batches[-1][0]]) == len(prompts[i])
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    show = progress if progress is not None else n > 64
    bar = tqdm(total=n, desc=desc, unit="prompt", disable=not show, leave=False)
    try:
        with torch.no_grad():
            for idx in batches:
                group = [prompts[i] for i in idx]
                make = _hooks_for(edit, len(group[0]))
                out = None
                if state.cache:
                    prompt = torch.stack(group).to(device)
                    cache, why = open_kv_cache(model, len(idx), device)
                    if cache is None:
                        state.fall_back(f"no key-value cache: {why}")
                    else:
                        out = _decode_cached(model, info, cache, prompt, steps, record_keys, make, verify=not state.verified)
                        if out is None:
                            state.fall_back(f"the {cache.kind} key-value cache did not advance or disagreed with a full forward")
                        else:
                            state.verified, state.reason = True, f"kv_cache ({cache.kind})"
                if out is None:
                    out = _decode_recompute(model, info, group, steps, record_keys, make, device)
                generated[idx] = out[0]
                if keys is not None:
                    keys[idx] = out[1]
                bar.update(len(idx))
    finally:
        bar.close()
    return Decoded(generated, keys, state.reason)


def _hooks_for(edit: EditFactory | None, prompt_len: int) -> Callable[[], Sequence[tuple[str, Any]]]:
    """A maker of fresh edit hooks for one decode (no hooks without ``edit``)."""
    if edit is None:
        return lambda: ()
    return lambda: edit(prompt_len)


def _decode_recompute(model: Any, info: ModelInfo, group: list[torch.Tensor], steps: int, record: bool,
                      make: Callable[[], Sequence[tuple[str, Any]]], device: torch.device) -> tuple[torch.Tensor, Any]:
    """A full forward per step over right-padded rows; each row reads its own last position."""
    padded = pad_right(group)
    lengths = padded.lengths.to(device)
    seq = torch.cat([padded.ids, torch.zeros(len(group), steps - 1, dtype=torch.long)], 1).to(device) if steps > 1 else padded.ids.to(device)
    rows = torch.arange(len(group), device=device)
    gens, keys = [], []
    width = int(padded.lengths.max())
    for step in range(steps):
        last = lengths + step - 1
        logits, k = _step(model, info, seq[:, : width + step], last, record, make())  # each pass from position 0
        nxt = logits.argmax(-1)
        gens.append(nxt.cpu())
        keys.append(k)
        if step + 1 < steps:
            seq[rows, last + 1] = nxt.to(device)
    return torch.stack(gens, 1), (torch.stack(keys, 1) if record else None)


def _decode_cached(model: Any, info: ModelInfo, cache: KVCache, prompt: torch.Tensor, steps: int, record: bool,
                   make: Callable[[], Sequence[tuple[str, Any]]], verify: bool) -> tuple[torch.Tensor, Any] | None:
    """Decode with ``cache``; ``None`` when it does not advance or disagrees with a full forward.
    One set of edit hooks from ``make`` sees the prompt's pass and then each one-token pass."""
    batch, width = prompt.shape
    hooks = make()

    def cached_step(ids: torch.Tensor, last: int) -> tuple[torch.Tensor, Any] | None:
        try:
            out = _step(model, info, ids, torch.full((batch,), last, dtype=torch.long, device=ids.device), record, hooks,
                        forward=cache.forward(model, ids))
        except (TypeError, ValueError, NotImplementedError, AttributeError):
            return None
        return out if cache.advance(ids.shape[1]) else None

    got = cached_step(prompt, width - 1)  # the prompt once; then one new token a step
    if got is None:
        return None
    gens, keys = [got[0].argmax(-1)], [got[1]]
    seq = prompt
    for step in range(1, steps):
        seq = torch.cat([seq, gens[-1][:, None].to(seq.device)], 1)
        got = cached_step(seq[:, -1:], 0)
        if got is None:
            return None
        if verify and step == 1:
            # Checked once per run against a full forward: a cache that silently disagrees (a
            # custom attention, hooks that edit keys) would make every later step wrong.
            full, _ = _step(model, info, seq, torch.full((batch,), seq.shape[1] - 1, device=seq.device), False, make())
            tol = (1e-3 if full.dtype == torch.float32 else 3e-2) * max(1.0, float(full.abs().max()))
            if not torch.allclose(got[0], full, atol=tol, rtol=0):
                return None
        gens.append(got[0].argmax(-1))
        keys.append(got[1])
    return torch.stack([g.cpu() for g in gens], 1), (torch.stack(keys, 1) if record else None)
