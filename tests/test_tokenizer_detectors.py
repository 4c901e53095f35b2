"""Tokenizer-aware detectors (subword_merge, delimiter, rare_token), the tables they read from
the model's tokenizer, the text probe, and the planted heads that give them ground truth.

Every model here reads a real subword tokenizer trained offline on the shipped text: byte-level
BPE, SentencePiece-style or WordPiece (``headzoo.testing``); the planted token-feature heads
read per-id features derived from that same tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any

import pytest
import torch

import headzoo as hz
from headzoo._backends import build_model
from headzoo._probes import PROBES
from headzoo._runner import run_detectors
from headzoo._vocab import detect_convention, encode_corpus, shipped_text
from headzoo.testing import (
    PlantSpec,
    bpe_tokenizer,
    check_detector,
    features_from_tokenizer,
    planted_model,
    planted_state_dict,
    random_placements,
    sentencepiece_tokenizer,
    word_tokenizer,
    wordpiece_tokenizer,
)

from conftest import BACKENDS, cached_planted

TOKEN_DETECTORS = ("subword_merge", "delimiter", "rare_token")
BUILDERS = {"bpe": bpe_tokenizer, "sentencepiece": sentencepiece_tokenizer, "wordpiece": wordpiece_tokenizer}
CONVENTION = {"bpe": "byte_bpe", "sentencepiece": "sentencepiece", "wordpiece": "wordpiece"}
#: the heads of other types that must not be mistaken for a token-feature head
DISTRACTORS = ("previous_token", "induction", "duplicate_token", "sink")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Planted models spread their token codes with a small Adam loop; on a shared 2-core
    machine torch's two threads contend and that loop runs ~30x slower than on one thread.
    Only speed changes; the setting is restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=8)
def _tokenizer(kind: str, vocab_size: int) -> Any:
    return BUILDERS[kind](vocab_size)


@functools.lru_cache(maxsize=16)
def _planted(kind: str, vocab_size: int, n_layers: int, n_heads: int, d_head: int, n_ctx: int, seed: int,
             backend: str = "bridge") -> tuple[Any, dict[str, tuple[int, int]]]:
    tok = _tokenizer(kind, vocab_size)
    roles = random_placements(
        n_layers, n_heads, seed, duplicate_token=d_head >= 32 and n_layers * n_heads >= 8,
        sink=n_layers * n_heads >= 8, subword_merge=True, delimiter=True, rare_token=True,
    )
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=len(tok), n_ctx=n_ctx,
                     token_features=features_from_tokenizer(tok), seed=seed, **roles)
    return planted_model(spec, backend=backend, tokenizer=tok), spec.planted


def _scores(scores: hz.HeadScores, name: str, metric: str = "score") -> dict[tuple[int, int], float]:
    frame = scores.to_frame()
    frame = frame[frame["detector"] == name]
    return {(int(r["layer"]), int(r["head"])): float(r[metric]) for _, r in frame.iterrows()}


#: (tokenizer, vocab size, n_layers, n_heads, d_head, n_ctx, seed): every convention, small
#: vocabularies, short and longer contexts, narrow and wide heads
CASES = [
    ("bpe", 300, 3, 4, 32, 64, 0),
    ("sentencepiece", 150, 2, 3, 16, 16, 1),
    ("wordpiece", 200, 4, 2, 32, 48, 2),
    ("sentencepiece", 400, 3, 3, 32, 32, 3),
    ("wordpiece", 300, 2, 4, 16, 24, 4),
]
SLOW_CASES = [
    ("bpe", 512, 2, 6, 48, 128, 5),
    ("bpe", 400, 4, 4, 64, 40, 6),
]


def _check_ranking(case: tuple, backend: str) -> None:
    model, planted = _planted(*case, backend=backend)
    scores = hz.detect(model, list(TOKEN_DETECTORS))
    for name in TOKEN_DETECTORS:
        got = _scores(scores, name)
        ranked = sorted(got, key=lambda head: -got[head])
        top, runner_up = ranked[0], ranked[1]
        threshold = hz.get_detector(name).threshold
        assert top == planted[name], (case, name, got, planted)
        assert got[top] > threshold, (case, name, got[top])
        assert got[top] - got[runner_up] > 0.3, (case, name, got[top], runner_up, got[runner_up])
        for role in DISTRACTORS:  # no false positives on heads of other types
            if role in planted:
                assert got[planted[role]] < threshold, (case, name, role, got[planted[role]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-v{c[1]}-{c[2]}x{c[3]}-dh{c[4]}-ctx{c[5]}" for c in CASES])
def test_planted_heads_rank_first_with_a_clear_margin(case, backend):
    _check_ranking(case, backend)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=[f"{c[0]}-v{c[1]}-{c[2]}x{c[3]}-dh{c[4]}-ctx{c[5]}" for c in SLOW_CASES])
def test_planted_heads_rank_first_on_larger_models(case):
    _check_ranking(case, "bridge")


# -- no false positives ------------------------------------------------------------------------

def _with_fixed_position_heads(spec: PlantSpec, tok: Any, fixed: dict[tuple[int, int], int]) -> Any:
    """The planted model of ``spec`` with each head of ``fixed`` rewired to attend to its
    position from every query (a constant query, the bias, matching that position's code)."""
    sd = planted_state_dict(spec)
    c = spec.d_head // 2
    for (layer, h), position in fixed.items():
        assert (layer, h) not in spec.planted.values()
        p = f"blocks.{layer}.attn."
        code = sd["pos_embed.W_pos"][position, c : 2 * c]
        sd[p + "W_Q"][h].zero_()
        sd[p + "W_K"][h].zero_()
        sd[p + "W_K"][h, c : 2 * c, :c] = torch.eye(c)
        sd[p + "b_Q"][h, :c] = spec.gain * math.sqrt(spec.d_head) * code / code.norm()
    return build_model(spec.config(), sd, tokenizer=tok, name="fixed-position")


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_other_head_types_are_not_token_feature_heads(kind):
    """A previous-token head is no subword-merge head (its contrast is ~0), a sink is no
    delimiter head (it scores below 0), and heads on a fixed position are no rare-token heads."""
    tok = _tokenizer(kind, 300)
    spec = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=len(tok), n_ctx=48, previous_token=(0, 1),
                     induction=(1, 0), duplicate_token=(2, 3), sink=(0, 2), token_features=features_from_tokenizer(tok),
                     subword_merge=(1, 2), delimiter=(2, 1), rare_token=(0, 3), seed=7)
    fixed = {(1, 3): 1, (2, 0): 5}
    model = _with_fixed_position_heads(spec, tok, fixed)
    scores = hz.detect(model, [*TOKEN_DETECTORS, "previous_token", "first_token"])
    sub, delim, rare = (_scores(scores, n) for n in TOKEN_DETECTORS)
    # previous-token head: it does attend to earlier pieces of each word, and the contrast removes it
    assert _scores(scores, "previous_token")[(0, 1)] > 0.9
    assert _scores(scores, "subword_merge", "merge")[(0, 1)] > 0.9
    assert -0.2 < sub[(0, 1)] < 0.05  # minus the uniform pattern's chance, a little below 0
    # sink: all its attention on position 0, which is never a separator or a rare-token key
    assert _scores(scores, "first_token")[(0, 2)] > 0.9
    assert delim[(0, 2)] < 0 and rare[(0, 2)] < 0 and -0.2 < sub[(0, 2)] < 0.05
    # fixed positions 1 and 5: they hit the rarest token (or a separator) now and then, about
    # as often as chance; with 16 prompts that is one key identity per prompt, so allow 0.15
    for head in fixed:
        assert max(abs(rare[head]), abs(sub[head]), abs(delim[head])) < 0.15, (head, rare[head], sub[head], delim[head])
    assert _scores(scores, "rare_token", "hit_rate")[(1, 3)] > 0
    for head in ((1, 0), (2, 3)):  # induction and duplicate-token heads
        assert max(sub[head], delim[head], rare[head]) < 0.15, (head, sub[head], delim[head], rare[head])
    for name, head in (("subword_merge", (1, 2)), ("delimiter", (2, 1)), ("rare_token", (0, 3))):
        assert _scores(scores, name)[head] > 0.8, (name, _scores(scores, name)[head])
