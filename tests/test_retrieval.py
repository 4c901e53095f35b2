"""Retrieval heads: the needle probe, decoding, the score, masking, and the refusals."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo._needle import _LEAD, _PLACES, _QUESTION, _sentences
from headzoo.testing import PlantSpec, random_placements, word_tokenizer

from conftest import BACKENDS, cached_planted

#: (n_layers, n_heads, d_head, d_vocab, n_ctx, seed): shapes the planted recovery runs on,
#: from a 12-token vocabulary with a 24-token context up to 5 x 8 heads and 1000 tokens.
CASES = [
    (2, 2, 16, 14, 24, 0),
    (3, 4, 32, 66, 64, 1),
    (4, 3, 32, 200, 128, 2),
    (6, 6, 32, 500, 96, 3),
    (2, 8, 48, 40, 48, 4),
    (5, 8, 64, 1000, 128, 5),
    (3, 4, 16, 30, 32, 6),
]


def _induction_spec(n_layers, n_heads, d_head, d_vocab, n_ctx, seed) -> PlantSpec:
    placed = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32)
    return PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed, **placed)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_retrieval_ranks_the_planted_induction_head_first(case):
    spec = _induction_spec(*case)
    model = cached_planted(spec, "bridge", True)
    scores = hz.detect(model, "retrieval")
    frame = scores.to_frame().set_index(["layer", "head"])["score"]
    planted = spec.planted["induction"]
    others = frame.drop(index=[planted])
    rate = scores.meta["detectors"]["retrieval"]["result"]["retrieval_rate"]
    print(f"{case}: planted {frame[planted]:.3f}, best other {others.max():.3f}, retrieval rate {rate:.2f}")
    assert frame.idxmax() == planted
    # In the large planted models, 30+ random heads add noise to the logits, so some needles are
    # lost (retrieval rate 0.23 for 6 x 6) and some retrieved ones lose a token the head
    # attended to correctly: the planted score is then 0.79-0.94 rather than 1.
    assert frame[planted] > 0.75 and frame[planted] - others.max() > 0.5


def test_masking_the_retrieval_head_breaks_retrieval_and_random_heads_do_not():
    spec = _induction_spec(4, 3, 32, 200, 128, 2)
    model = cached_planted(spec, "bridge", True)
    probe = hz.NeedleHaystack(lengths=(40, 100), depths=(0.2, 0.8), n_needles=3)
    curve = hz.retrieval_masking(model, k=[1, 2], n_random=4, probe=probe, progress=False)
    frame = curve.to_frame()
    assert set(frame.columns) >= {"method", "k", "heads", "draw", "accuracy", "retrieved", "masked"}
    assert set(frame["method"]) == {"uniform", "zero"}
    assert curve.meta["top_heads"][0] == list(spec.planted["induction"])
    base = frame[frame["heads"] == "none"]["accuracy"]
    assert (base == 1.0).all()
    top = frame[frame["heads"] == "top"]
    rand = frame[frame["heads"] == "random"]
    print(curve.summary())
    assert top["accuracy"].max() < 0.1
    assert rand.groupby(["method", "k"])["accuracy"].mean().min() > 0.9
    assert all(f"L{spec.planted['induction'][0]}H{spec.planted['induction'][1]}" not in m for m in rand["masked"])
    assert (rand.groupby(["method", "k"])["draw"].nunique() == 4).all()
    fig = curve.plot()
    assert len(fig.data) > 0 and "masking" in fig.layout.title.text
    assert "<table" in curve._repr_html_()


def test_masking_uses_given_scores_and_refuses_bad_k(demo_model):
    scores = hz.detect(demo_model, "retrieval")
    probe = hz.NeedleHaystack(lengths=(30,), depths=(0.5,), n_needles=2)
    curve = hz.retrieval_masking(demo_model, k=1, n_random=1, methods="zero", scores=scores, probe=probe, progress=False)
    assert curve.meta["ranking"] == "HeadScores"
    assert curve.meta["top_heads"][0] == list(scores.top(1, "retrieval")[["layer", "head"]].iloc[0])
    with pytest.raises(hz.InvalidOptionError, match="at most 6"):
        hz.retrieval_masking(demo_model, k=7, probe=probe)
    with pytest.raises(hz.InvalidOptionError, match="methods"):
        hz.retrieval_masking(demo_model, methods=["mean"], probe=probe)
    with pytest.raises(hz.InvalidOptionError, match="no 'retrieval'"):
        hz.retrieval_masking(demo_model, scores=hz.detect(demo_model, "induction"), probe=probe)


def test_scores_do_not_depend_on_batch_size(demo_model):
    opts = dict(answer_len=3, depths=(0.1, 0.6, 0.9), n_needles=3, seed=5, min_recall=0.3)
    frames = [hz.detect(demo_model, "retrieval", batch_size=b, **opts) for b in (1, 4, 9)]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0].to_frame(), other.to_frame())
        pd.testing.assert_frame_equal(frames[0].details("retrieval"), other.details("retrieval"))
    assert frames[0].meta["detectors"]["retrieval"]["options"]["answer_len"] == 3


@pytest.mark.skipif("hooked" not in BACKENDS, reason="HookedTransformer needs TransformerLens 3.x")
def test_scores_do_not_depend_on_the_model_class():
    spec = _induction_spec(3, 4, 32, 66, 64, 1)
    hooked = cached_planted(spec, "hooked", True)
    bridge = cached_planted(spec, "bridge", True)
    a = hz.detect(hooked, "retrieval")
    b = hz.detect(bridge, "retrieval")
    # the HookedTransformer decodes with its key-value cache, the native bridge by full forwards
    assert a.meta["detectors"]["retrieval"]["result"]["decoding"].startswith("kv_cache")
    assert b.meta["detectors"]["retrieval"]["result"]["decoding"].startswith("recompute")
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())


def test_hugging_face_cache_decodes_like_full_forwards(hf_gpt2):
    from transformer_lens.model_bridge import TransformerBridge

    _, path = hf_gpt2
    model = TransformerBridge.boot_transformers(str(path), device="cpu")
    trials = hz.NeedleHaystack(answer_len=3, n_needles=1).build(model)
    cached = hz.decode_needles(model, trials, batch_size=2)
    full = hz.decode_needles(model, trials, use_kv_cache=False)
    assert cached.mode == "kv_cache (Hugging Face)"
    assert torch.equal(cached.generated, full.generated)
    assert torch.equal(cached.keys, full.keys)


def test_needles_are_exact_and_unique_with_random_filler(demo_model):
    probe = hz.NeedleHaystack(lengths=(20, 60), n_needles=3, answer_len=5, seed=3)
    trials = probe.build(demo_model)
    assert trials.meta["filler"] == "random"
    assert len(trials) == 2 * 5 * 3
    bos = demo_model.tokenizer.bos_token_id
    for tokens, answer, (_, row) in zip(trials.tokens, trials.answers, trials.frame.iterrows()):
        assert len(tokens) == row["length"] and tokens[0] == bos
        a0 = row["answer_start"]
        assert torch.equal(tokens[a0 : a0 + 5], answer)
        assert len(set(answer.tolist())) == 5
        for t in answer.tolist():
            assert int((tokens == t).sum()) == 1  # the answer occurs nowhere else
        lead = tokens[row["needle_start"] : a0]
        assert torch.equal(tokens[-len(lead):], lead)  # copy style: the prompt ends with the lead-in
        assert int((tokens == lead[-1]).sum()) == 2
    # depths order the needles within a length
    short = trials.frame[trials.frame["length"] == 60].groupby("depth")["needle_start"].mean()
    assert short.is_monotonic_increasing
    again = probe.build(demo_model)
    assert all(torch.equal(a, b) for a, b in zip(trials.tokens, again.tokens))


def _text_spec(d_head: int = 64, seed: int = 0) -> tuple[PlantSpec, object]:
    """A planted spec and a word tokenizer that spells the shipped sentences and needle templates."""
    words: list[str] = []
    texts = list(_sentences()) + [_LEAD.format(place=p) for p in _PLACES] + [_QUESTION.format(place=p) for p in _PLACES] + ["."]
    for text in texts:
        for w in text.split():
            if w not in words:
                words.append(w)
    words += [f"<script>alert({i})</script>" for i in range(40)] + [f"zq{i}" for i in range(60)]
    tokenizer = word_tokenizer(words)
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=d_head, d_vocab=len(words) + 2, n_ctx=160,
                     previous_token=(0, 1), induction=(1, 0), seed=seed)
    return spec, tokenizer


def test_text_filler_spells_sentences_and_the_needle():
    from headzoo.testing import planted_model

    spec, tokenizer = _text_spec()
    model = planted_model(spec, tokenizer=tokenizer)
    trials = hz.NeedleHaystack(lengths=(60, 150), n_needles=2, seed=1).build(model)
    assert trials.meta["filler"] == "text"
    sentence_ids = [tokenizer.encode(" " + s, add_special_tokens=False) for s in _sentences()]
    ends = {tuple(s[-1:]) for s in sentence_ids}
    for tokens, answer, (_, row) in zip(trials.tokens, trials.answers, trials.frame.iterrows()):
        assert len(tokens) == row["length"]
        text = tokenizer.decode(tokens[row["needle_start"] : row["answer_start"]])
        assert re.fullmatch(r"The secret word of the [a-z ]+ is", text)
        for t in answer.tolist():
            assert int((tokens == t).sum()) == 1
        # the needle sits at a sentence boundary: what precedes it ends a sentence (or is the BOS)
        before = tokens[row["needle_start"] - 1].item()
        assert before == tokenizer.bos_token_id or (before,) in ends
    scores = hz.detect(model, "retrieval", lengths=(60, 150), n_needles=2)
    assert scores.top(1, "retrieval")[["layer", "head"]].values.tolist() == [[1, 0]]
    natural = hz.NeedleHaystack(lengths=(60,), question="natural").build(model)
    assert tokenizer.decode(natural.tokens[0][-13:]).endswith("? Answer:")


def _saved(tokenizer, directory):
    """Save and reload, as from the hub: TransformerLens reloads tokenizers from their path."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.slow
@pytest.mark.parametrize("style", ["byte_level", "metaspace"])
def test_text_filler_with_subword_tokenizers(style, tmp_path):
    """Byte-level BPE (GPT-2's convention, spaces inside tokens) and SentencePiece-style
    Metaspace tokenizers, trained offline on the filler: both spell it, and the needle decodes
    to its template whatever the tokenizer does with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from headzoo.testing import planted_model

    texts = list(_sentences()) + [_LEAD.format(place=p) + " " for p in _PLACES] + [_QUESTION.format(place=p) for p in _PLACES]
    core = Tokenizer(models.BPE(unk_token="<unk>" if style == "metaspace" else None))
    if style == "byte_level":
        core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        core.pre_tokenizer, core.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<bos>", "<unk>"], initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(texts, trainer)
    tokenizer = _saved(PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", unk_token="<unk>"), tmp_path)
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=64, d_vocab=len(tokenizer), n_ctx=200,
                     previous_token=(0, 1), induction=(1, 0))
    model = planted_model(spec, tokenizer=tokenizer)
    trials = hz.NeedleHaystack(lengths=(80, 190), n_needles=2, seed=2).build(model)
    assert trials.meta["filler"] == "text", trials.meta["filler_reason"]
    for tokens, answer, (_, row) in zip(trials.tokens, trials.answers, trials.frame.iterrows()):
        lead = tokenizer.decode(tokens[row["needle_start"] : row["answer_start"]]).strip()
        assert re.fullmatch(r"The secret word of the [a-z ]+ is", lead), lead
        assert torch.equal(tokens[-(row["answer_start"] - row["needle_start"]):], tokens[row["needle_start"] : row["answer_start"]])
        for t in answer.tolist():
            assert int((tokens == t).sum()) == 1
        assert int((tokens == tokens[row["answer_start"] - 1]).sum()) == 2  # the lead-in's last token
    scores = hz.detect(model, "retrieval", lengths=(80, 190), n_needles=2)
    assert scores.top(1, "retrieval")[["layer", "head"]].values.tolist() == [[1, 0]]


def test_hostile_token_strings_are_only_ids():
    from headzoo.testing import planted_model

    words = ['<script>alert(1)</script>', '"><svg/onload=alert(1)>', "'", '\\', "{{x}}"] + [f"t{i}" for i in range(40)]
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(words) + 2, n_ctx=40, previous_token=(0, 0), induction=(1, 1))
    model = planted_model(spec, tokenizer=word_tokenizer(words))
    scores = hz.detect(model, "retrieval")
    assert scores.top(1, "retrieval")[["layer", "head"]].values.tolist() == [[1, 1]]


def test_a_character_level_tokenizer_falls_back_to_random_filler(tmp_path):
    """It spells every sentence, but the lead-in ends in a letter found in nearly all of them."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from headzoo.testing import planted_model

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<bos>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    core = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = _saved(PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", unk_token="<unk>"), tmp_path)
    assert tokenizer.decode(tokenizer.encode("The mill.", add_special_tokens=False)) == "The mill."
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(vocab), n_ctx=64, previous_token=(0, 0), induction=(1, 1))
    model = planted_model(spec, tokenizer=tokenizer)
    trials = hz.NeedleHaystack().build(model)
    assert trials.meta["filler"] == "random" and "needle template" in trials.meta["filler_reason"]
    with pytest.raises(hz.InvalidOptionError, match="filler='text'"):
        hz.NeedleHaystack(filler="text").build(model)
    assert hz.detect(model, "retrieval").top(1, "retrieval")[["layer", "head"]].values.tolist() == [[1, 1]]


def test_context_too_short_for_any_needle():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=30, n_ctx=8, previous_token=(0, 0), induction=(1, 1))
    model = cached_planted(spec, "bridge", True)
    with pytest.raises(hz.DetectorNotApplicableError, match=r"context \(8 tokens\) is too short"):
        hz.detect(model, "retrieval")
    assert hz.detect(model, "retrieval", answer_len=1).shape == (2, 2)  # a one-token needle fits


def test_vocabulary_that_cannot_make_needles():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=8, n_ctx=32, previous_token=(0, 0), induction=(1, 1))
    model = cached_planted(spec, "bridge", True)
    with pytest.raises(hz.DetectorNotApplicableError, match="cannot make needles.*6 ordinary tokens"):
        hz.detect(model, "retrieval")
    with pytest.raises(hz.InvalidOptionError, match="filler='text' needs a tokenizer"):
        hz.NeedleHaystack(filler="text").build(model)
    with pytest.raises(hz.InvalidOptionError, match="question='natural' needs text filler"):
        hz.NeedleHaystack(question="natural").build(model)


def test_a_model_that_never_retrieves_says_so():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=48, previous_token=(0, 0), induction=None)
    model = cached_planted(spec, "bridge", True)
    with pytest.raises(hz.DetectorNotApplicableError, match=r"retrieved none of the 30 needles.*mean recall 0\.\d\d"):
        hz.detect(model, "retrieval")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = hz.detect(model)
    assert "retrieval" not in scores.detectors
    assert "retrieved none" in scores.meta["skipped_detectors"]["retrieval"]
    assert any("retrieval" in str(w.message) for w in caught)


@pytest.mark.parametrize("options,match", [
    ({"lengths": (500,)}, r"lengths \[500\] do not fit"),
    ({"depths": (1.5,)}, "depths"),
    ({"answer_len": 0}, "answer_len"),
    ({"min_recall": 1.5}, "min_recall"),
    ({"question": "riddle"}, "question"),
    ({"filler": "lorem"}, "filler"),
])
def test_bad_options_are_refused(demo_model, options, match):
    with pytest.raises(hz.InvalidOptionError, match=match):
        hz.detect(demo_model, "retrieval", **options)


def test_decoding_keeps_only_argmax_keys_and_leaves_the_model_alone(demo_model):
    trials = hz.NeedleHaystack(lengths=(30,), depths=(0.5,), n_needles=2).build(demo_model)
    before = {k: v.clone() for k, v in demo_model.state_dict().items()}
    n_hooks = sum(len(h._forward_hooks) for h in demo_model.hook_dict.values())
    run = hz.decode_needles(demo_model, trials)
    assert run.keys.dtype == torch.int32 and run.keys.shape == (2, 4, 3, 4)
    assert sum(len(h._forward_hooks) for h in demo_model.hook_dict.values()) == n_hooks
    assert all(torch.equal(before[k], v) for k, v in demo_model.state_dict().items())
    with pytest.raises(hz.InvalidOptionError, match="another model"):
        other = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=20, n_ctx=16), "bridge", True)
        hz.decode_needles(other, trials)
    masked = hz.decode_needles(demo_model, trials, mask_heads=[(2, 0)])
    assert masked.keys is None and masked.masked == {"heads": [[2, 0]], "method": "uniform"}
    with pytest.raises(hz.InvalidOptionError, match="record"):
        masked.copy_scores()


def test_ablation_at_chosen_positions_leaves_the_others_untouched(demo_model):
    tokens = torch.randint(2, 66, (2, 20), generator=torch.Generator().manual_seed(0))
    clean = demo_model(tokens)
    for method in ("zero", "uniform", "mean"):
        ref = tokens if method == "mean" else None
        with hz.ablate(demo_model, [(2, 0), (1, 2)], method, reference_tokens=ref, positions=slice(15, None)):
            late = demo_model(tokens)
        with hz.ablate(demo_model, [(2, 0), (1, 2)], method, reference_tokens=ref):
            everywhere = demo_model(tokens)
        torch.testing.assert_close(late[:, :15], clean[:, :15])
        assert not torch.allclose(late[:, 15:], clean[:, 15:])
        with hz.ablate(demo_model, [(2, 0), (1, 2)], method, reference_tokens=ref, positions=list(range(20))):
            torch.testing.assert_close(demo_model(tokens), everywhere)
    with pytest.raises(hz.InvalidOptionError, match="positions"):
        hz.ablation_hooks(demo_model, [(0, 0)], positions="last")
    with pytest.raises(hz.InvalidOptionError, match=r"positions \[25\] are outside"):
        with hz.ablate(demo_model, [(0, 0)], positions=[25]):
            demo_model(tokens)


def test_recall_and_copy_scores_by_hand(demo_model):
    trials = hz.NeedleHaystack(lengths=(30,), depths=(0.5,), n_needles=1, answer_len=3).build(demo_model)
    row = trials.frame.iloc[0]
    a0 = int(row["answer_start"])
    answer = trials.answers[0]
    stranger = next(t for t in range(2, 66) if t not in answer.tolist())
    generated = torch.tensor([[answer[0], answer[2], stranger]])
    keys = torch.zeros(1, 3, 3, 4, dtype=torch.int32)
    keys[0, 0, 1, 1] = a0  # copies answer[0] while emitting it
    keys[0, 1, 1, 1] = a0 + 2  # copies answer[2] while emitting it
    keys[0, 2, 1, 1] = a0 + 2  # emits another token while looking at answer[2]: no copy
    keys[0, 0, 2, 3] = a0 + 1  # looks at answer[1] while emitting answer[0]: no copy
    keys[0, 1, 0, 0] = a0 + 2
    keys[0, 2, 0, 0] = a0 + 2  # the same answer token counts once
    run = hz.NeedleRun(trials, generated, keys, "by hand")
    assert run.recall.tolist() == [pytest.approx(2 / 3)]
    scores = run.copy_scores()[0]
    assert scores[1, 1] == pytest.approx(2 / 3)
    assert scores[0, 0] == pytest.approx(1 / 3)
    assert scores[2, 3] == 0 and float(scores.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(run.head_scores(0.5).numpy(), scores.numpy())
    with pytest.raises(hz.DetectorNotApplicableError, match="none of the 1 needles"):
        run.head_scores(0.9)
