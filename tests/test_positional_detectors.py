"""relative_position, streaming and ngram_induction: their probes, their scores on hand-made
patterns, and ground truth on planted models (relative-position heads at offsets 1..4, an
n-gram induction head beside a plain one, local heads beside far-looking ones)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import headzoo as hz
from headzoo._models import ModelInfo
from headzoo._probe_sequences import LongRepeatedTokens, NGramTokens, RandomTokens
from headzoo._probes import PROBES
from headzoo.testing import PlantSpec, check_detector, random_placements

from conftest import BACKENDS, cached_planted

DETECTORS = ["relative_position", "streaming", "ngram_induction"]


def _info(n_ctx: int = 64, d_vocab: int = 50, bos: int | None = None, specials: tuple[int, ...] = ()) -> ModelInfo:
    """The facts a probe reads, for a model that need not exist."""
    return ModelInfo(
        n_layers=2, n_heads=2, n_kv_heads=2, d_model=40, d_head=16, n_ctx=n_ctx, d_vocab=d_vocab,
        prepend_bos=bos is not None, bos_token_id=bos, special_token_ids=specials, n_real_tokens=d_vocab,
        model_class="none", name="none", device="cpu", dtype="float32",
    )


# -- probes -----------------------------------------------------------------------------------

def test_probes_are_registered_and_their_options_reach_them():
    assert PROBES["random_tokens"] is RandomTokens
    assert PROBES["long_repeated_tokens"] is LongRepeatedTokens
    assert PROBES["ngram"] is NGramTokens
    assert hz.get_detector("relative_position").probe == "random_tokens"
    assert hz.get_detector("streaming").probe == "long_repeated_tokens"
    assert hz.get_detector("ngram_induction").probe == "ngram"


@pytest.mark.parametrize("bos", [None, 0])
def test_random_tokens_never_repeat_and_draw_ordinary_ids(bos):
    info = _info(n_ctx=40, d_vocab=30, bos=bos, specials=(0, 1))
    prompts = RandomTokens(n_prompts=5, seed=3).prompts(None, info)
    assert len(prompts) == 5
    for p in prompts:
        body = p[1:] if bos is not None else p
        if bos is not None:
            assert p[0] == bos
        assert len(body) == 28  # the vocabulary (30 - 2 specials) caps it before the context does
        assert len(set(body.tolist())) == len(body)
        assert not set(body.tolist()) & {0, 1}
    again = RandomTokens(n_prompts=5, seed=3, batch_size=1).prompts(None, info)
    assert all(torch.equal(a, b) for a, b in zip(prompts, again, strict=True))
    other = RandomTokens(n_prompts=5, seed=4).prompts(None, info)
    assert not all(torch.equal(a, b) for a, b in zip(prompts, other, strict=True))


def test_random_tokens_fit_short_contexts_and_refuse_impossible_models():
    assert len(RandomTokens(n_prompts=1).prompts(None, _info(n_ctx=16, d_vocab=500))[0]) == 16
    assert len(RandomTokens(n_prompts=1).prompts(None, _info(n_ctx=1024, d_vocab=5000))[0]) == 128
    with pytest.raises(hz.DetectorNotApplicableError, match="3 ordinary tokens"):
        RandomTokens().prompts(None, _info(d_vocab=3))
    with pytest.raises(hz.DetectorNotApplicableError, match="context of 3"):
        RandomTokens().prompts(None, _info(n_ctx=3))
    with pytest.raises(hz.InvalidOptionError, match="seq_len <= 64"):
        RandomTokens(seq_len=65).prompts(None, _info(n_ctx=64, d_vocab=500))
    with pytest.raises(hz.InvalidOptionError, match="seq_len <= 50"):
        RandomTokens(seq_len=60).prompts(None, _info(n_ctx=64, d_vocab=50))
    with pytest.raises(hz.InvalidOptionError):
        RandomTokens(seq_len=2)
    with pytest.raises(hz.InvalidOptionError):
        RandomTokens(n_prompts=0)


def test_long_repeated_tokens_repeat_far_back_as_long_as_the_context_allows():
    info = _info(n_ctx=1024, d_vocab=2000, bos=1999, specials=(1999,))
    probe = LongRepeatedTokens(n_prompts=2)
    (p, _) = probe.prompts(None, info)
    assert p[0] == 1999 and len(p) == 1 + 2 * 255  # capped by long_len's default 512
    assert torch.equal(p[1:256], p[256:]) and len(set(p[1:256].tolist())) == 255
    assert probe.metadata(None, info)["half_len"] == 255
    assert len(LongRepeatedTokens(long_len=101).prompts(None, info)[0]) == 101
    assert len(LongRepeatedTokens().prompts(None, _info(n_ctx=32, d_vocab=12))[0]) == 24  # 12 tokens per half
    with pytest.raises(hz.DetectorNotApplicableError, match="3 ordinary tokens"):
        LongRepeatedTokens().prompts(None, _info(d_vocab=3))
    with pytest.raises(hz.DetectorNotApplicableError, match="context 7"):
        LongRepeatedTokens().prompts(None, _info(n_ctx=7))
    with pytest.raises(hz.InvalidOptionError, match="long_len <= 64"):
        LongRepeatedTokens(long_len=100).prompts(None, _info(n_ctx=64))


def _designed_queries(meta: dict) -> list[int]:
    """Positions of each episode's last ``x`` in an ngram prompt."""
    c, m = meta["context_len"], meta["n_distractors"] + 1
    episode = (m + 1) * (c + 2)
    return [int(meta["prepend_bos"]) + e * episode + m * (c + 2) + c for e in range(meta["n_episodes"])]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ngram_probe_has_one_ngram_match_among_several_one_gram_ones_at_a_random_rank(n):
    info = _info(n_ctx=128, d_vocab=60, bos=59, specials=(59,))
    probe = NGramTokens(n_prompts=12, seed=1)
    meta = probe.metadata(None, info)
    assert (meta["context_len"], meta["n_distractors"]) == (3, 3)
    tokens = torch.stack(probe.prompts(None, info))
    det = hz.get_detector("ngram_induction", n=n)
    ngram, onegram = det.split(det.match(tokens))
    ranks = []
    for b in range(tokens.shape[0]):
        for q in _designed_queries(meta):
            assert int(ngram[b, q].sum()) == 1 and int(onegram[b, q].sum()) == 3
            keys = torch.nonzero(ngram[b, q] | onegram[b, q]).flatten()
            ranks.append(int(torch.nonzero(ngram[b, q][keys]).item()))
    # the true match is at every rank among the four earlier occurrences, not always the latest
    assert set(ranks) == {0, 1, 2, 3}
    assert max(ranks.count(r) for r in range(4)) < 0.5 * len(ranks)


def test_ngram_probe_fits_short_contexts_and_tiny_vocabularies_and_refuses_impossible_ones():
    short = NGramTokens().metadata(None, _info(n_ctx=16, d_vocab=500))
    assert (short["context_len"], short["n_distractors"], short["ngram_len"]) == (1, 3, 15)
    tiny = NGramTokens().metadata(None, _info(n_ctx=64, d_vocab=5))
    assert tiny["n_distractors"] == 3 and tiny["n_episodes"] == 1
    squeezed = NGramTokens().metadata(None, _info(n_ctx=12, d_vocab=500))
    assert (squeezed["context_len"], squeezed["n_distractors"]) == (1, 2)
    with pytest.raises(hz.DetectorNotApplicableError, match="3 ordinary tokens"):
        NGramTokens().prompts(None, _info(d_vocab=3))
    with pytest.raises(hz.DetectorNotApplicableError, match="context 10"):
        NGramTokens().prompts(None, _info(n_ctx=10))
    with pytest.raises(hz.InvalidOptionError, match="n_distractors <= 3"):
        NGramTokens(n_distractors=4).prompts(None, _info(d_vocab=5))
    with pytest.raises(hz.InvalidOptionError, match="lower context_len"):
        NGramTokens(context_len=3).prompts(None, _info(n_ctx=16))
    a = NGramTokens(n_prompts=3, seed=2).prompts(None, _info())
    b = NGramTokens(n_prompts=3, seed=2, batch_size=1).prompts(None, _info())
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# -- scores on hand-made patterns ----------------------------------------------------------------

def _one_hot_pattern(keys: torch.Tensor) -> torch.Tensor:
    """``[1, heads, seq, seq]`` attention with all of query ``q``'s weight on ``keys[h, q]``."""
    n_heads, seq = keys.shape
    return torch.nn.functional.one_hot(keys, seq).float()[None]


def test_relative_position_reads_the_offset_and_counts_sink_argmaxes_as_misses():
    seq = 40
    q = torch.arange(seq)
    keys = torch.stack([(q - 3).clamp_min(0), torch.zeros(seq, dtype=torch.long), q, (q - 1).clamp_min(0)])
    keys[3, 30:] = 0  # a previous-token head that parks a quarter of its queries on BOS
    det = hz.get_detector("relative_position")
    pattern = _one_hot_pattern(keys)
    out = det.reduce(pattern, det.match(torch.zeros(1, seq, dtype=torch.long)))
    score, offset = out["score"][0][0], out["offset"][0][0]
    assert score[0] == 1 and offset[0] == 3 and out["attention"][0][0, 0] == 1
    assert score[1] == 0  # the sink: its argmax offset q changes with every query
    assert score[2] == 1 and offset[2] == 0  # a current-token head is offset 0
    assert offset[3] == 1 and score[3] == pytest.approx(13 / 23)  # queries 17..39 scored; 30..39 miss
    no_bos = dataclasses.replace(det, exclude_bos=True)
    assert no_bos.reduce(pattern, no_bos.match(torch.zeros(1, seq, dtype=torch.long)))["score"][0][0, 1] < 0.1
    no_self = dataclasses.replace(det, exclude_current_token=True)
    assert no_self.reduce(pattern, no_self.match(torch.zeros(1, seq, dtype=torch.long)))["score"][0][0, 2] < 0.1


def test_relative_position_refuses_options_that_do_not_apply():
    with pytest.raises(hz.InvalidOptionError, match="argmax"):
        hz.get_detector("relative_position", measure="transformer_lens")
    with pytest.raises(hz.InvalidOptionError, match="max_offset"):
        hz.get_detector("relative_position", max_offset=0)
    with pytest.raises(hz.InvalidOptionError):
        hz.get_detector("relative_position", max_offset=2.0)


def test_streaming_window_shrinks_with_the_prompt_by_its_documented_rule():
    det = hz.get_detector("streaming")
    assert det.window(200) == (3, 47)
    assert det.window(512) == (4, 64)
    assert det.window(272) == (4, 64)  # exactly a quarter
    assert det.window(129) == (2, 30)
    assert det.window(32) == (1, 7)
    assert det.window(5) == (1, 1)
    seq = 200
    q = torch.arange(seq)
    # previous token; the sink; 48 back (never in the 3 + 47 window: the cache cut would lose it)
    keys = torch.stack([(q - 1).clamp_min(0), torch.zeros(seq, dtype=torch.long), (q - 48).clamp_min(3)])
    out = det.reduce(_one_hot_pattern(keys), det.match(torch.zeros(1, seq, dtype=torch.long)))
    assert out["score"][0][0].tolist() == pytest.approx([1, 1, 0])
    assert out["sink"][0][0].tolist() == pytest.approx([0, 1, 0])
    assert out["recent_used"][0][0, 0] == det.window(seq)[1]
    with pytest.raises(hz.InvalidOptionError, match="recent_size"):
        hz.get_detector("streaming", recent_size=0)


def test_ngram_split_on_a_hand_written_sequence():
    # a b x P | c d x Q | a b x ?   (tokens: a=1 b=2 x=3 P=4 c=5 d=6 Q=7)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 3, 7, 1, 2, 3]])
    det2, det3 = hz.get_detector("ngram_induction"), hz.get_detector("ngram_induction", n=3)
    for det in (det2, det3):
        ngram, onegram = det.split(det.match(tokens))
        assert torch.nonzero(ngram[0]).tolist() == [[10, 3]]
        assert torch.nonzero(onegram[0]).tolist() == [[10, 7]]
    pattern = torch.zeros(1, 2, 11, 11)
    pattern[0, 0, :, 0] = 1
    pattern[0, 0, 10] = 0
    pattern[0, 0, 10, 3] = 1  # an n-gram head
    pattern[0, 1] = pattern[0, 0]
    pattern[0, 1, 10, 3] = pattern[0, 1, 10, 7] = 0.5  # a plain induction head
    out = det2.reduce(pattern, det2.match(tokens))
    assert out["score"][0][0].tolist() == [1.0, 0.5]
    assert out["onegram"][0][0].tolist() == [0.0, 0.5]
    assert out["selectivity"][0][0].tolist() == [1.0, 0.5]
    with pytest.raises(hz.InvalidOptionError, match="induction"):
        hz.get_detector("ngram_induction", n=1)


# -- planted ground truth --------------------------------------------------------------------

#: (n_layers, n_heads, d_head, d_vocab, n_ctx, seed, relative_offset); offset 2 cases also plant
#: an n-gram induction head (its second previous token comes from the offset-2 head)
CASES = [
    (3, 4, 32, 64, 64, 0, 2),
    (2, 4, 32, 20, 16, 1, 2),   # short context, small vocabulary
    (3, 3, 16, 40, 32, 2, 3),   # narrow heads
    (2, 3, 32, 24, 16, 3, 4),   # offset 4 in a 16-token context
]


def _spec(n_layers, n_heads, d_head, d_vocab, n_ctx, seed, offset) -> PlantSpec:
    ngram = offset == 2
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32, sink=True,
                                   relative_position=True, ngram_induction=ngram)
    return PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed,
                     relative_offset=offset, **placements)


def _ranked(scores: hz.HeadScores, name: str):
    frame = scores.to_frame()
    return frame[frame["detector"] == name].sort_values("score", ascending=False).set_index(["layer", "head"])


@pytest.mark.parametrize("case", CASES, ids=[f"offset{c[-1]}-ctx{c[4]}-vocab{c[3]}" for c in CASES])
def test_planted_heads_are_recovered_first_with_a_clear_margin(case):
    spec = _spec(*case)
    planted = spec.planted
    scores = hz.detect(cached_planted(spec, "bridge"), DETECTORS + ["induction"], n_prompts=8)
    threshold = {name: hz.get_detector(name).threshold for name in DETECTORS}

    # relative_position: the relative head at its offset, the previous-token head at offset 1
    rel = _ranked(scores, "relative_position")
    positional = {planted["relative_position"]: spec.relative_offset, planted["previous_token"]: 1}
    for head, offset in positional.items():
        assert rel.loc[head, "score"] > threshold["relative_position"], (head, rel.head(4))
        assert rel.loc[head, "offset"] == offset, (head, rel.head(4))
    others = rel.drop(index=list(positional))
    assert set(rel.index[:2]) == set(positional)
    assert rel.loc[list(positional), "score"].min() - others["score"].max() > 0.3, rel.head(4)
    assert others["score"].max() < threshold["relative_position"]
    for role in ("induction", "duplicate_token", "sink", "ngram_induction"):
        if role in planted:
            # (a planted duplicate-token head with no copy to find falls back on position codes,
            # a weakly positional pattern: up to ~0.5 in 16-token contexts)
            assert rel.loc[planted[role], "score"] < threshold["relative_position"] - 0.3, (role, rel.loc[planted[role]])

    # streaming: the sink head and the positional heads whose offset lies inside the recent
    # window first, far above the induction head and every unplanted one
    stream = _ranked(scores, "streaming")
    recent = stream["recent_used"].iloc[0]
    local = [h for h, offset in positional.items() if offset < recent] + [planted["sink"]]
    assert len(local) >= 2
    assert set(stream.index[: len(local)]) == set(local), stream.head(4)
    assert stream.loc[local, "score"].min() > threshold["streaming"]
    far = stream.drop(index=local)
    assert stream.loc[local, "score"].min() - far["score"].max() > 0.3, stream.head(5)
    assert stream.loc[planted["induction"], "score"] < 0.5

    # ngram_induction: the n-gram head first; the plain induction head clearly below threshold
    ngram = _ranked(scores, "ngram_induction")
    if "ngram_induction" in planted:
        head = planted["ngram_induction"]
        assert ngram.index[0] == head, ngram.head(3)
        assert ngram.loc[head, "score"] > 0.9 and ngram.loc[head, "selectivity"] > 0.9
        assert ngram.loc[head, "score"] - ngram["score"].iloc[1] > 0.3
    plain = ngram.loc[planted["induction"]]
    assert plain["score"] < threshold["ngram_induction"] - 0.1 and plain["selectivity"] < 0.45, plain
    assert _ranked(scores, "induction").loc[planted["induction"], "score"] > 0.8  # it is an induction head


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_offsets_and_ngram_head_in_every_model_class(backend):
    spec = _spec(*CASES[1])
    scores = hz.detect(cached_planted(spec, backend), DETECTORS, n_prompts=4)
    rel = _ranked(scores, "relative_position")
    assert rel.loc[spec.planted["relative_position"], "offset"] == 2
    assert _ranked(scores, "ngram_induction").index[0] == spec.planted["ngram_induction"]


def test_positional_scores_from_a_users_cache_equal_the_live_run_without_tokens():
    spec = _spec(*CASES[1])
    model = cached_planted(spec, "bridge")
    tokens = torch.randint(0, spec.d_vocab, (3, 16), generator=torch.Generator().manual_seed(5))
    live = hz.detect(model, ["relative_position", "streaming"], tokens=tokens).to_frame()
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    cached = hz.detect(model, ["relative_position", "streaming"], cache=cache).to_frame()  # positions only
    assert live[["detector", "layer", "head"]].equals(cached[["detector", "layer", "head"]])
    assert (live["score"] - cached["score"]).abs().max() < 1e-5
    with pytest.raises(hz.InvalidTokensError, match="ngram_induction"):
        hz.detect(model, "ngram_induction", cache=cache)


def test_plant_spec_refuses_an_ngram_head_without_its_inputs():
    with pytest.raises(ValueError, match="relative_offset=2"):
        PlantSpec(relative_position=(0, 1), relative_offset=3, ngram_induction=(1, 2))
    with pytest.raises(ValueError, match="earlier layers"):
        PlantSpec(relative_position=(1, 1), ngram_induction=(1, 2))
    with pytest.raises(ValueError, match="relative_offset"):
        PlantSpec(relative_position=(0, 1), relative_offset=0)
    base = PlantSpec()
    assert PlantSpec(relative_position=(0, 1)).d_model == base.d_model
    assert PlantSpec(relative_position=(0, 1), ngram_induction=(1, 2)).d_model == base.d_model + base.d_head // 2


@pytest.mark.parametrize("name", DETECTORS)
def test_conformance(name):
    report = check_detector(name)
    assert not report.skipped, report
