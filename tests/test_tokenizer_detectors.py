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
    RULES,
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

from conftest import BACKENDS

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


# -- refusals ----------------------------------------------------------------------------------

def _word_model(words: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "omega", "sigma")) -> Any:
    tok = word_tokenizer(list(words))
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(tok), n_ctx=32, seed=0)
    return planted_model(spec, tokenizer=tok)


def test_a_word_tokenizer_is_refused_by_subword_merge_with_the_reason():
    model = _word_model()
    info = hz.model_info(model)
    with pytest.raises(hz.UnsupportedTokenizerError, match="whole-word vocabulary"):
        hz.get_detector("subword_merge").bind(model, info)
    with pytest.raises(hz.UnsupportedTokenizerError, match="whole-word"):
        hz.detect(model, "subword_merge", tokens=[[0, 2, 3, 4, 5]])
    assert issubclass(hz.UnsupportedTokenizerError, hz.DetectorNotApplicableError)
    # no separator in this vocabulary either, and the shipped text is all unknown words to it
    with pytest.raises(hz.UnsupportedTokenizerError, match="no token made only of punctuation"):
        hz.get_detector("delimiter").bind(model, info)
    with pytest.raises(hz.UnsupportedTokenizerError, match="unknown token"):
        hz.get_detector("rare_token").bind(model, info)
    with pytest.raises(hz.UnsupportedTokenizerError, match="unknown token"):
        hz.TextProbe().prompts(model, info)


def test_word_tokenizers_still_serve_delimiter_and_rare_token_when_they_can(tmp_path):
    """Whole words are no obstacle to separators or frequencies: a word vocabulary with
    punctuation, and a frequency file written in it, is used."""
    words = ("alpha", "beta", "gamma", "delta", ",", ".", "!")
    model = _word_model(words)
    corpus = tmp_path / "counts.txt"
    corpus.write_text("alpha alpha alpha beta beta gamma , . alpha beta\n", encoding="utf-8")
    scores = hz.detect(model, [hz.get_detector("rare_token", frequency=str(corpus)), "delimiter"],
                       tokens=[[0, 2, 3, 6, 4, 2, 7, 5, 3, 8, 2, 3]])
    assert set(scores.to_frame()["detector"]) == {"rare_token", "delimiter"}
    assert scores.meta["detectors"]["rare_token"]["frequency"]["source"] == str(corpus)


def test_a_model_without_a_tokenizer_is_refused_with_the_reason():
    tok = _tokenizer("bpe", 300)
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(tok), n_ctx=32, seed=0)
    model = planted_model(spec)  # no tokenizer
    info = hz.model_info(model)
    for name in TOKEN_DETECTORS:
        with pytest.raises(hz.UnsupportedTokenizerError, match="has none"):
            hz.get_detector(name).bind(model, info)
        with pytest.raises(hz.UnsupportedTokenizerError, match="has none"):
            hz.detect(model, name, tokens=[[1, 2, 3, 4]])  # the user's tokens still need the tokenizer's tables
    with pytest.raises(hz.UnsupportedTokenizerError, match="has none"):
        hz.TextProbe().prompts(model, info)
    # with every detector selected, they are skipped (and say why), the rest still run
    with pytest.warns(UserWarning, match="skipped"):
        scores = run_detectors(model, [*TOKEN_DETECTORS, "previous_token"], tokens=None, cache=None, explicit=False)
    assert set(scores.to_frame()["detector"]) == {"previous_token"}
    assert set(scores.meta["skipped_detectors"]) == set(TOKEN_DETECTORS)
    assert all("has none" in why for why in scores.meta["skipped_detectors"].values())


class _SlowTokenizer:
    """A tokenizer without a fast backend: only its vocabulary can tell its convention."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab
        self.all_special_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.vocab)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] for _ in texts]}


def test_an_unreadable_convention_is_refused_and_markers_serve_slow_tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # no marker of word boundaries anywhere
    core.train_from_iterator(shipped_text().splitlines(), trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"], show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    holder = types.SimpleNamespace(tokenizer=plain)
    info = types.SimpleNamespace(d_vocab=len(plain))
    for name in TOKEN_DETECTORS:
        with pytest.raises(hz.UnsupportedTokenizerError, match="cannot tell how .* marks word boundaries"):
            hz.get_detector(name).bind(holder, info)
    # a slow tokenizer is read from its vocabulary's markers
    assert detect_convention(_SlowTokenizer(["a", "Ġthe", "Ġcat", "s", "."])) == "byte_bpe"
    assert detect_convention(_SlowTokenizer(["<s>", "▁the", "▁cat", "s", "."])) == "sentencepiece"
    assert detect_convention(_SlowTokenizer(["[CLS]", "the", "cat", "##s", "."])) == "wordpiece"
    with pytest.raises(hz.UnsupportedTokenizerError, match="under 5%"):
        detect_convention(_SlowTokenizer(["the", "cat", "s", "."]))


# -- the tables read from each tokenizer ---------------------------------------------------------

@pytest.mark.parametrize("kind", list(BUILDERS))
def test_vocab_tables_read_each_convention(kind):
    tok = _tokenizer(kind, 300)
    tables = hz.vocab_tables(tok, len(tok))
    assert tables.convention == CONVENTION[kind]
    ids = tok("The ferryman rang, unimaginably: (twice)!", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    row = torch.tensor([ids])
    cont = tables.continuation(row)[0].tolist()
    word, in_word = tables.words(row)
    spelled: dict[int, str] = {}
    for piece, w, inside in zip(pieces, word[0].tolist(), in_word[0].tolist()):
        if inside:
            spelled[w] = spelled.get(w, "") + piece.replace("Ġ", "").replace("▁", "").removeprefix("##")
    assert [w.lower() for w in spelled.values()] == ["the", "ferryman", "rang", "unimaginably", "twice"]
    assert not any(c for c, flag in zip(cont, tables.punctuation[row[0]].tolist()) if flag)
    separators = [p for p, flag in zip(pieces, tables.punctuation[row[0]].tolist()) if flag]
    assert [p.replace("Ġ", "").replace("▁", "") for p in separators] == [",", ":", "(", ")", "!"]
    # special tokens are never separators or word pieces
    for i in tok.all_special_ids:
        assert tables.special[i] and not tables.punctuation[i] and not tables.joinable[i]
    # ids beyond the tokenizer (padding rows of a bigger embedding) are nothing at all
    wide = hz.vocab_tables(tok, len(tok) + 7)
    assert not (wide.punctuation[len(tok):].any() or wide.joinable[len(tok):].any() or wide.special[len(tok):].any())


def test_line_breaks_are_separators_and_bare_spaces_are_not():
    tok = _tokenizer("bpe", 300)
    tables = hz.vocab_tables(tok, len(tok))
    vocab = tok.get_vocab()
    assert tables.punctuation[vocab["Ċ"]] and not tables.punctuation[vocab["Ġ"]]
    assert tables.joinable[vocab["Ġ"]] and tables.word_start[vocab["Ġ"]]


def test_delimiter_counts_special_tokens_only_when_asked():
    tok = _tokenizer("wordpiece", 300)
    model, planted = _planted("wordpiece", 300, 3, 4, 32, 64, 11)
    info = hz.model_info(model)
    sep = tok.convert_tokens_to_ids("[SEP]")
    ids = torch.tensor([[tok.convert_tokens_to_ids("[CLS]"), *tok("a ferry", add_special_tokens=False)["input_ids"], sep]])
    plain = hz.get_detector("delimiter").bind(model, info).match(ids)
    special = hz.get_detector("delimiter", special_tokens=True).bind(model, info).match(ids)
    assert not plain[0, -1, -1] and special[0, -1, -1]
    assert not special[:, :, 0].any()  # position 0 never counts, BOS or not


# -- the text probe -------------------------------------------------------------------------------

def test_the_text_probe_is_registered_and_deterministic():
    assert PROBES["text"] is hz.TextProbe
    model, _ = _planted("bpe", 300, 3, 4, 32, 64, 0)
    info = hz.model_info(model)
    tables = hz.vocab_tables(model.tokenizer, info.d_vocab)
    a = hz.TextProbe(n_prompts=5, seed=3).prompts(model, info)
    b = hz.TextProbe(n_prompts=5, seed=3).prompts(model, info)
    c = hz.TextProbe(n_prompts=5, seed=4).prompts(model, info)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert {len(p) for p in a} == {64} and all(int(p[0]) == info.bos_token_id for p in a)
    assert all(bool(tables.word_start[p[1]]) for p in a)  # every prompt opens on a word's first piece
    # the prompts are the shipped text, as the tokenizer spells it
    stream = [i for ids in encode_corpus(model.tokenizer, shipped_text()) for i in ids]
    meta = hz.TextProbe(n_prompts=5, seed=3).metadata(model, info)
    for p, start in zip(a, meta["starts"]):
        assert p[1:].tolist() == stream[start : start + 63]
    assert meta["kind"] == "text" and meta["corpus"] == "shipped" and meta["text_len"] == 64
    short = hz.TextProbe(n_prompts=2, text_len=20, prepend_bos=False).prompts(model, info)
    assert {len(p) for p in short} == {20} and all(int(p[0]) != info.bos_token_id for p in short)


def test_the_text_probe_reads_a_user_corpus_and_refuses_bad_options(tmp_path):
    model, _ = _planted("sentencepiece", 150, 2, 3, 16, 16, 1)
    info = hz.model_info(model)
    corpus = tmp_path / "mine.txt"
    corpus.write_text("the river is wide and the boat is slow. " * 40, encoding="utf-8")
    prompts = hz.TextProbe(n_prompts=3, corpus=str(corpus)).prompts(model, info)
    text = model.tokenizer.decode(torch.cat([p[1:] for p in prompts]).tolist())
    assert "river" in text and "ferry" not in text
    with pytest.raises(hz.InvalidOptionError, match="exceeds the model's context"):
        hz.TextProbe(text_len=17).prompts(model, info)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a boat", encoding="utf-8")
    with pytest.raises(hz.InvalidOptionError, match="shorter than one prompt"):
        hz.TextProbe(corpus=str(tiny)).prompts(model, info)
    with pytest.raises(hz.InvalidOptionError, match="neither 'shipped' nor an existing file"):
        hz.TextProbe(corpus=str(tmp_path / "missing.txt")).prompts(model, info)
    for bad in ({"n_prompts": 0}, {"text_len": 1}, {"seed": 1.5}, {"prepend_bos": "yes"}, {"corpus": 3}):
        with pytest.raises((hz.InvalidOptionError, TypeError)):  # beartype (a TypeError) may get there first in the tests
            hz.TextProbe(**bad)
    # probe options reach it through hz.detect
    scores = hz.detect(model, "delimiter", n_prompts=3, text_len=12, corpus=str(corpus), seed=2)
    assert scores.meta["probes"]["text"]["lengths"] == [12]
    assert scores.meta["probes"]["text"]["corpus"] == str(corpus)


def test_shipped_text_is_original_varied_english():
    text = shipped_text()
    assert 15_000 <= len(text.encode("utf-8")) <= 25_000
    for mark in ".,;:!?\"'()[]{}-/&%£°":
        assert mark in text, mark
    assert sum(ch.isdigit() for ch in text) > 100
    readme = (hz.__file__.rsplit("/", 1)[0] + "/_data/text/README.md")
    assert "written for headzoo" in open(readme, encoding="utf-8").read()


# -- the user's tokens, frequency files, metadata --------------------------------------------------

def test_user_text_is_scored_with_the_tokenizer_tables():
    model, planted = _planted("bpe", 300, 3, 4, 32, 128, 10)
    text = [
        "The schoolmistress, unimpressed, wrote: \"Progress; no noise!\" (Nobody replied.)",
        "Octopuses taste with their arms; some carry coconut shells, others escape.",
    ]
    scores = hz.detect(model, list(TOKEN_DETECTORS), tokens=text)
    assert scores.meta["probe"]["kind"] == "user_tokens"
    for name in TOKEN_DETECTORS:
        got = _scores(scores, name)
        assert max(got, key=got.get) == planted[name], (name, got)


def test_rare_token_counts_the_frequency_file_it_is_given(tmp_path):
    """A head planted with frequencies from the user's file is found with that file, and the
    metadata says where the frequencies came from."""
    tok = _tokenizer("bpe", 300)
    corpus = tmp_path / "frequencies.txt"
    # a corpus where the usual order of frequencies is turned around: digits and capitals common
    corpus.write_text(("0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ " * 50) + shipped_text()[:2000], encoding="utf-8")
    spec = PlantSpec(n_layers=2, n_heads=4, d_head=32, d_vocab=len(tok), n_ctx=64, previous_token=(0, 1),
                     induction=(1, 0), rare_token=(1, 3), token_features=features_from_tokenizer(tok, str(corpus)), seed=12)
    model = planted_model(spec, tokenizer=tok)
    mine = hz.get_detector("rare_token", frequency=str(corpus))
    scores = hz.detect(model, mine)
    got = _scores(scores, "rare_token")
    assert max(got, key=got.get) == (1, 3) and got[(1, 3)] > 0.8
    meta = scores.meta["detectors"]["rare_token"]
    assert meta["options"]["frequency"] == str(corpus) and meta["frequency"]["source"] == str(corpus)
    assert "count 0" in meta["frequency"]["unseen_ids"]
    shipped = _scores(hz.detect(model, "rare_token"), "rare_token")[(1, 3)]
    assert shipped < got[(1, 3)] - 0.2  # the shipped counts disagree with the file's
    with pytest.raises(hz.InvalidOptionError, match="neither 'shipped' nor an existing file"):
        hz.get_detector("rare_token", frequency=str(tmp_path / "nope.txt"))


def test_token_counts_and_features():
    tok = _tokenizer("wordpiece", 200)
    counts = hz.token_counts(tok)
    assert counts.shape == (len(tok),) and counts.dtype == torch.long
    assert int(counts.sum()) == sum(len(ids) for ids in encode_corpus(tok, shipped_text()))
    assert all(int(counts[i]) == 0 for i in tok.all_special_ids)
    feats = features_from_tokenizer(tok)
    assert len(feats) == len(tok)
    rare = torch.tensor(feats.rarity)
    assert float(rare.max()) == 1.0 and all(rare[i] == -1.0 for i in tok.all_special_ids)
    seen = counts > 0
    order = torch.argsort(counts[seen].double() + torch.arange(int(seen.sum())) * 1e-9)
    assert bool((rare[seen][order].diff() <= 1e-6).all())  # rarer = fewer occurrences


# -- planted models ---------------------------------------------------------------------------------

def test_token_feature_dims_appear_only_when_such_a_role_is_planted():
    tok = _tokenizer("sentencepiece", 150)
    feats = features_from_tokenizer(tok)
    base = PlantSpec(n_layers=2, n_heads=3, d_head=16, d_vocab=len(tok), n_ctx=16, seed=5)
    with_features = dataclasses.replace(base, token_features=feats)
    a, b = planted_state_dict(base), planted_state_dict(with_features)
    assert base.d_model == with_features.d_model == 5 * 8
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    planted = dataclasses.replace(with_features, delimiter=(1, 2))
    assert planted.d_model == 5 * 8 + 4 and planted.planted["delimiter"] == (1, 2)
    with pytest.raises(ValueError, match="token_features"):
        dataclasses.replace(base, rare_token=(1, 2))
    with pytest.raises(ValueError, match="d_vocab"):
        dataclasses.replace(base, d_vocab=len(tok) + 1, token_features=feats, subword_merge=(0, 1))
    placed = random_placements(3, 3, 0, subword_merge=True, delimiter=True, rare_token=True)
    assert {"subword_merge", "delimiter", "rare_token"} <= set(placed) and len(set(placed.values())) == len(placed)
    assert "delimiter" not in random_placements(3, 3, 0)


# -- conformance -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOKEN_DETECTORS)
def test_the_conformance_suite_passes(name):
    report = check_detector(name)
    assert report.passed == list(RULES)
    assert all("bpe" in m for m in report.models)  # the word-tokenizer defaults were refused, as they must be
