"""hz.head_examples: ground truth from planted heads first (a previous-token head's top contexts
attend one token back; a successor head's attend to numbers), then the corpus forms, batching,
the sampling scheme, errors, and the result protocol."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cached_planted

import headzoo as hz
from headzoo.testing import PlantSpec, planted_model, successor_model, successor_placements, word_tokenizer

SPEC = PlantSpec(n_layers=2, n_heads=4, d_head=32, d_vocab=66, n_ctx=32, previous_token=(0, 1), induction=(1, 0), seed=3)


def digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def hook_count(model) -> int:
    """Torch hooks on every module plus TransformerLens hook-point hooks."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "fwd_hooks", None) or [])
               for m in model.modules())


def word_docs(seed: int, n_docs: int = 12, low: int = 5, high: int = 60) -> list[str]:
    """Documents of random words of the planted model's word tokenizer (``tok0 ... tok63``)."""
    rng = random.Random(seed)
    return [" ".join(f"tok{rng.randrange(64)}" for _ in range(rng.randint(low, high))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def planted():
    return cached_planted(SPEC, "bridge", True)


# -- ground truth ------------------------------------------------------------------------------------
def test_previous_token_head_attends_one_back(planted):
    docs = word_docs(0)
    given = list(docs)
    planted(torch.zeros(1, 2, dtype=torch.long))  # a bridge wires its own hooks on its first forward
    before, hooks = digest(planted), hook_count(planted)
    result = hz.head_examples(planted, docs, k=10)
    assert docs == given and digest(planted) == before and hook_count(planted) == hooks
    top = result.for_head(0, 1, "attention")
    top = top[top["kind"] == "top"]
    assert len(top) == 10 and list(top["rank"]) == list(range(1, 11))
    assert (top["value"] > 0.9).all()
    words = [d.split() for d in docs]
    for _, row in top.iterrows():
        doc = words[int(row["doc"])]
        assert row["attended_pos"] == row["pos"] - 1  # the planted head reads the previous token
        assert row["attended_token"] == doc[int(row["pos"]) - 1]
        assert row["context"][-1] == doc[int(row["pos"])]  # the query ends the context
        assert row["context"][int(row["attended"])] == row["attended_token"]
        assert row["context"] == doc[max(0, int(row["pos"]) - 23) : int(row["pos"]) + 1]
    # on a typical position too: the decile sample attends one back except at a window's first token
    dec = result.for_head(0, 1, "attention")
    dec = dec[dec["kind"] == "decile"]
    assert sorted(dec["decile"]) == list(range(1, 11))
    assert (dec["attended_pos"] == dec["pos"] - 1).mean() >= 0.8
    # a random head's strongest attention is weaker than the planted head's typical one
    median = float(dec.loc[dec["decile"] == 5, "value"].item())
    assert median > 0.9


def test_successor_head_attends_to_numbers():
    roles = successor_placements(2, 4, 8, copying=True)
    model = successor_model(n_layers=2, n_heads=4, successor=roles["successor"], copying=roles["copying"], seed=1)
    rng = random.Random(1)
    docs = []
    for _ in range(16):
        words = [f"f{rng.randrange(24)}" for _ in range(rng.randint(2, 6))] + [str(rng.randrange(99))]
        docs.append(" ".join(words + [f"f{rng.randrange(24)}" for _ in range(rng.randint(3, 8))]))
    result = hz.head_examples(model, docs, heads=[roles["successor"]], k=8, deciles=False)
    frame = result.to_frame()
    assert set(frame["kind"]) == {"top"} and result.heads == [roles["successor"]]
    for act in ("attention", "output_norm"):
        top = frame[frame["activation"] == act]
        assert len(top) == 8
        assert all(t.isdigit() for t in top["attended_token"]), top["attended_token"].tolist()


# -- corpus forms and batching -------------------------------------------------------------------------
def test_batched_equals_unbatched_with_options(planted):
    docs = word_docs(2, n_docs=9, low=20, high=70)
    opts = dict(heads=[(1, 2), (0, 1)], k=3, seed=5, max_tokens=300)
    one = hz.head_examples(planted, docs, batch_size=1, **opts)
    many = hz.head_examples(planted, docs, batch_size=8, **opts)
    a, b = one.to_frame(), many.to_frame()
    assert a[["layer", "head", "activation", "kind", "rank", "doc", "pos"]].values.tolist() == \
        b[["layer", "head", "activation", "kind", "rank", "doc", "pos"]].values.tolist()
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-5)
    assert one.meta["batch_size"] == 1 and one.meta["k"] == 3 and one.meta["seed"] == 5
    assert one.meta["corpus"]["n_tokens"] == 300 and one.meta["corpus"]["truncated"]
    assert list(dict.fromkeys(zip(a["layer"], a["head"]))) == [(1, 2), (0, 1)]  # heads in the order asked
    # every token was a query once: the reservoir saw all 300 positions
    assert one.meta["n_sampled"] == 300
    other = hz.head_examples(planted, docs, batch_size=4, **{**opts, "seed": 6}).to_frame()
    assert a[a["kind"] == "top"]["pos"].tolist() == other[other["kind"] == "top"]["pos"].tolist()
    assert a[a["kind"] == "decile"]["pos"].tolist() != other[other["kind"] == "decile"]["pos"].tolist()


def test_deciles_follow_the_distribution(planted):
    docs = word_docs(3)
    frame = hz.head_examples(planted, docs, heads=[(0, 0), (1, 3)], k=2).to_frame()
    for _, part in frame.groupby(["layer", "head", "activation"]):
        dec = part[part["kind"] == "decile"].sort_values("decile")
        assert list(dec["decile"]) == list(range(1, 11)) and list(dec["rank"]) == list(range(1, 11))
        assert dec["value"].is_monotonic_increasing
        top = part[part["kind"] == "top"]
        assert top["value"].is_monotonic_decreasing and top["decile"].isna().all()
        assert top["value"].iloc[0] >= dec["value"].max() - 1e-6
    short = hz.head_examples(planted, ["tok1 tok2 tok3"], heads=[(0, 1)], k=8).to_frame()
    assert (short["kind"] == "top").sum() == 6  # three positions, two activations
    assert (short["kind"] == "decile").sum() == 6  # deciles of three positions: three are not empty, per activation


def test_corpus_forms_agree(planted, tmp_path):
    docs = word_docs(4, n_docs=3)
    base = hz.head_examples(planted, docs, heads=[(0, 1)], k=3).to_frame()
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:02d}.txt").write_text(d)
    (folder / "notes.md").write_text("tok1 tok1 tok1")  # not a *.txt: not read
    from_folder = hz.head_examples(planted, folder, heads=[(0, 1)], k=3)
    pd.testing.assert_frame_equal(from_folder.to_frame(), base)
    assert from_folder.meta["corpus"]["n_docs"] == 3 and from_folder.meta["corpus"]["source"] == str(folder)
    one_file = tmp_path / "one.txt"
    one_file.write_text(docs[0])
    single = hz.head_examples(planted, one_file, heads=[(0, 1)], k=3)
    assert single.meta["corpus"]["n_docs"] == 1 and set(single.to_frame()["doc"]) == {0}
    with pytest.warns(hz.UnknownTokenWarning):  # English prose, read by a word tokenizer of tok0...
        shipped = hz.head_examples(planted, None, heads=[(0, 1)], k=2, max_tokens=100)
    assert shipped.meta["corpus"]["source"] == "shipped" and shipped.meta["corpus"]["n_tokens"] == 100


def test_saved_dataset_corpus(planted, tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = word_docs(5, n_docs=4)
    base = hz.head_examples(planted, docs, heads=[(0, 1)], k=3).to_frame()
    data = datasets.Dataset.from_dict({"text": docs, "id": list(range(4))})
    direct = hz.head_examples(planted, data, heads=[(0, 1)], k=3)
    pd.testing.assert_frame_equal(direct.to_frame(), base)
    data.save_to_disk(str(tmp_path / "saved"))
    saved = hz.head_examples(planted, tmp_path / "saved", heads=[(0, 1)], k=3)
    pd.testing.assert_frame_equal(saved.to_frame(), base)
    assert saved.meta["corpus"]["n_docs"] == 4
    # max_tokens stops reading rows once enough ids are held
    few = hz.head_examples(planted, data, heads=[(0, 1)], k=3, max_tokens=5)
    assert few.meta["corpus"]["n_docs"] == 1 and few.meta["corpus"]["truncated"]
    with pytest.raises(hz.InvalidOptionError, match="'text' column"):
        hz.head_examples(planted, data.rename_column("text", "body"), heads=[(0, 1)])
    with pytest.raises(hz.InvalidOptionError, match="DatasetDict"):
        hz.head_examples(planted, datasets.DatasetDict({"train": data}), heads=[(0, 1)])


def test_hub_dataset_by_name(planted, tmp_path, monkeypatch):
    """``hf:NAME`` goes through ``datasets.load_dataset`` (streamed). Offline, NAME is a local folder
    of data files, which load_dataset reads with no network; a name the hub cannot serve is a typed
    error that says to save the dataset to disk."""
    datasets = pytest.importorskip("datasets")
    import json

    docs = word_docs(5, n_docs=4)
    base = hz.head_examples(planted, docs, heads=[(0, 1)], k=3).to_frame()
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    (folder / "validation.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n")
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    got = hz.head_examples(planted, f"hf:{folder}", heads=[(0, 1)], k=3)
    pd.testing.assert_frame_equal(got.to_frame(), base)
    assert got.meta["corpus"]["source"] == f"hf:{folder}" and got.meta["corpus"]["n_docs"] == 4
    assert calls[-1] == ((str(folder), None), {"split": "train", "streaming": True})
    one = hz.head_examples(planted, f"hf:{folder}@validation", heads=[(0, 1)], k=3)
    assert one.meta["corpus"]["n_docs"] == 1 and calls[-1][1]["split"] == "validation"

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(hz.InvalidOptionError, match="save_to_disk") as err:
        hz.head_examples(planted, "hf:someone/corpus:cfg@test", heads=[(0, 1)])
    assert "'someone/corpus'" in str(err.value) and "'cfg'" in str(err.value) and "'test'" in str(err.value)
    with pytest.raises(hz.InvalidOptionError, match="names no dataset"):
        hz.head_examples(planted, "hf:", heads=[(0, 1)])


def test_saved_dataset_without_datasets_says_how_to_install(planted, tmp_path, monkeypatch):
    import sys

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(hz.InvalidOptionError, match="pip install datasets"):
        hz.head_examples(planted, tmp_path / "saved")


# -- errors --------------------------------------------------------------------------------------------
def test_errors(planted, tmp_path):
    docs = word_docs(6, n_docs=2)
    for corpus in ([], [""], ["   "]):
        with pytest.raises(hz.InvalidOptionError, match="corpus"):
            hz.head_examples(planted, corpus)
    for corpus in ([b"bytes"], 7, {"text": "tok1"}):
        with pytest.raises(hz.InvalidOptionError, match="corpus"):
            hz.head_examples(planted, corpus)
    with pytest.raises(hz.InvalidOptionError, match="existing file"):
        hz.head_examples(planted, tmp_path / "nothing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hz.InvalidOptionError, match=r"no \*\.txt"):
        hz.head_examples(planted, tmp_path / "empty")
    for heads in ([(2, 0)], [(0, 4)], [(-1, 0)]):
        with pytest.raises(hz.InvalidOptionError, match="outside the model"):
            hz.head_examples(planted, docs, heads)
    for heads in ("L0H1", [(0,)], [(0.0, 1)], []):
        with pytest.raises(hz.InvalidOptionError, match="heads"):
            hz.head_examples(planted, docs, heads)
    # (values of the wrong type are refused the same way; under the tests' runtime type checks
    # the annotations refuse them first)
    for opt, value in (("k", 0), ("batch_size", 0), ("max_tokens", 0), ("seed", -1)):
        with pytest.raises(hz.InvalidOptionError, match=opt):
            hz.head_examples(planted, docs, **{opt: value})
    bare = successor_model()  # built in a moment (a planted model's codes take seconds)
    bare.tokenizer = None  # this test's own model: nothing shared is changed
    with pytest.raises(hz.UnsupportedTokenizerError, match="no tokenizer"):
        hz.head_examples(bare, ["a b c"])
    one = hz.head_examples(planted, docs, (0, 1), k=1)  # one pair is accepted as it is
    assert one.heads == [(0, 1)]
    with pytest.raises(hz.InvalidOptionError, match="was not read"):
        one.for_head(1, 1)
    with pytest.raises(hz.InvalidOptionError, match="activation"):
        one.for_head(0, 1, "norm")
    with pytest.raises(hz.InvalidOptionError, match="activation"):
        one.plot("norm")


# -- the result protocol -------------------------------------------------------------------------------
def test_result_protocol_and_hostile_tokens(tmp_path):
    words = ["<script>", "alert(1)</script>", "&amp;", "<b>bold</b>", "\"q\"", "plain", "word"]
    tok = word_tokenizer(words, directory=tmp_path / "tok")
    model = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(words) + 2, n_ctx=16,
                                    previous_token=(0, 1), induction=(1, 0), seed=2), tokenizer=tok)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(3)]
    result = hz.head_examples(model, docs, k=4, progress=False)
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "head", "activation", "kind", "rank", "decile", "doc", "pos", "value",
                                   "context", "attended", "attended_pos", "attended_token"]
    assert frame["attended"].dtype == "Int64" and frame["decile"].dtype == "Int64"
    assert set(frame["activation"]) == {"attention", "output_norm"} and set(frame["kind"]) == {"top", "decile"}
    assert np.isfinite(frame["value"]).all() and (frame["value"] >= 0).all()
    assert all(isinstance(json.loads(c), list) for c in frame["context"])
    # output_norm examples whose head parks on the BOS name it and give no index into the context
    bos_rows = frame[frame["attended_pos"].isna()]
    assert (bos_rows["attended_token"] == "<bos>").all() and bos_rows["attended"].isna().all()
    page = result._repr_html_()
    assert "<script" not in page and "<b>bold" not in page and "&lt;script&gt;" in page
    assert "<mark>" in page
    back = hz.HeadExamples.load(result.save(tmp_path / "examples.parquet"))
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    assert back.meta == result.meta and back.heads == result.heads
    assert hz.HeadExamples.save is hz.HeadScores.save and hz.HeadExamples._FORMAT == "HeadExamples"
    with pytest.raises(hz.CorruptFileError):
        hz.HeadScores.load(tmp_path / "examples.parquet")  # another result type's file is refused
    data = bytearray((tmp_path / "examples.parquet").read_bytes())
    data[len(data) // 3] ^= 0x01
    (tmp_path / "flipped.parquet").write_bytes(bytes(data))
    with pytest.raises(hz.CorruptFileError):
        hz.HeadExamples.load(tmp_path / "flipped.parquet")
    fig = result.plot()
    assert type(fig).__name__ == "Figure" and fig.data[0].z.shape == (2, 2)
    assert "HeadExamples(4 heads" in repr(result)
    hz.head_examples(model, docs, k=1).to_frame()  # idempotent: nothing left behind by the first run


def test_activations_agree_with_transformer_lens_cache(planted):
    """With k as large as the corpus, the top rows hold every position: each value equals what
    a full run_with_cache gives (max non-BOS attention; ||z @ W_O||)."""
    doc = word_docs(7, n_docs=1, low=20, high=20)
    result = hz.head_examples(planted, doc, heads=[(0, 1), (1, 2)], k=20, deciles=False)
    tokens = planted.to_tokens(doc[0])  # [1, 21]: BOS first
    _, cache = planted.run_with_cache(tokens)
    frame = result.to_frame()
    for layer, head in ((0, 1), (1, 2)):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]  # [q, k]
        z = cache[f"blocks.{layer}.attn.hook_z"]
        z = z[0, :, head] if z.ndim == 4 else z[0].unflatten(-1, (4, -1))[:, head]  # [pos, d_head]
        norm = (z @ planted.W_O[layer, head]).norm(dim=-1)
        part = frame[(frame["layer"] == layer) & (frame["head"] == head)]
        att = part[part["activation"] == "attention"].sort_values("pos")
        out = part[part["activation"] == "output_norm"].sort_values("pos")
        assert list(att["pos"]) == list(range(20)) and list(out["pos"]) == list(range(20))
        np.testing.assert_allclose(att["value"], pattern[1:, 1:].max(-1).values.numpy(), atol=1e-5)
        assert list(att["attended_pos"]) == (pattern[1:, 1:].argmax(-1)).tolist()
        np.testing.assert_allclose(out["value"], norm[1:].detach().numpy(), rtol=1e-4, atol=1e-5)
        assert list(out["attended_pos"].fillna(-1)) == (pattern[1:].argmax(-1) - 1).tolist()


def test_gpt2_shaped_model_with_hostile_text(tmp_path):
    from _gpt2 import gpt2_shaped_model

    model = gpt2_shaped_model()
    before = digest(model)
    hostile = [
        "On Monday <script>alert('x')</script> & then Tuesday; 1, 2, 3 and <b>January</b> February.",
        "A B C <img src=x onerror=alert(1)> one two three \u2014 \"quoted\" \n new line " * 3,
    ]
    result = hz.head_examples(model, hostile, heads=[(0, 0), (1, 2)], k=5, batch_size=3)
    assert digest(model) == before
    frame = result.to_frame()
    bos = frame[frame["attended_pos"].isna()]
    assert (bos["attended_token"] == "<|endoftext|>").all()
    for context, doc in zip(frame["context"], frame["doc"]):
        assert "".join(json.loads(context)) in hostile[int(doc)]  # token strings decode back to the text
    page = result._repr_html_()
    assert "<script" not in page and "<img" not in page and "<b>January" not in page
    back = hz.HeadExamples.load(result.save(tmp_path / "gpt2.parquet"))
    pd.testing.assert_frame_equal(back.to_frame(), frame)


def test_progress_bar_and_shared_corpus_reading(planted, capsys, tmp_path):
    docs = word_docs(8, n_docs=20, low=30, high=40)
    hz.head_examples(planted, docs, heads=[(0, 1)], k=1, batch_size=1, progress=True)
    assert "headzoo head examples" in capsys.readouterr().err
    hz.head_examples(planted, docs, heads=[(0, 1)], k=1, batch_size=1, progress=False)
    assert "headzoo head examples" not in capsys.readouterr().err
    # successor_on_text reads a corpus the same way: a folder of texts is one document per file
    from headzoo.testing import successor_model

    model = successor_model()
    (tmp_path / "a.txt").write_text("f1 3 f2 4 f5")
    (tmp_path / "b.txt").write_text("f3 7 f4 8 f6")
    text = hz.successor_on_text(model, (1, 1), tmp_path, k=3)
    assert text.meta["corpus"]["n_docs"] == 2 and text.meta["corpus"]["source"] == str(tmp_path)


def test_default_corpus_follows_the_model():
    """corpus=None: a model with the zoo's curriculum tokenizer reads held-out curriculum text, the
    distribution it was trained on; other models read the shipped text."""
    zoo = hz.load_model()
    got = hz.head_examples(zoo, heads=[(3, 3)], k=2, deciles=False, max_tokens=2000)
    corpus = got.meta["corpus"]
    assert corpus["source"] == "curriculum" and corpus["unknown_share"] == 0.0 and corpus["n_tokens"] == 2000
    again = hz.head_examples(zoo, heads=[(3, 3)], k=2, deciles=False, max_tokens=2000)
    pd.testing.assert_frame_equal(got.to_frame(), again.to_frame())  # seeded: the same text every time
    # the shipped prose, asked for by name: the zoo's WordPiece vocabulary spells English in pieces
    shipped = hz.head_examples(zoo, "shipped", heads=[(3, 3)], k=2, deciles=False, max_tokens=2000)
    assert shipped.meta["corpus"]["source"] == "shipped" and shipped.meta["corpus"]["unknown_share"] == 0.0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_model_with_either_curriculum_tokenizer_reads_that_curriculum(version):
    """The zoo's tokenizers of both curricula: the default corpus is held-out text of the curriculum
    that tokenizer was built for, with no unknown token; a tokenizer missing a word reads the
    shipped text."""
    from headzoo import _curriculum, _curriculum_v2
    from headzoo._stream import _curriculum_documents

    tok = _curriculum_v2.tokenizer() if version == "v2" else word_tokenizer(list(_curriculum.VOCABULARY))
    model = planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=len(tok), n_ctx=128, tokenizer=tok, seed=1)
    got = hz.head_examples(model, heads=[(1, 1)], k=2, deciles=False, max_tokens=1500, progress=False)
    assert got.meta["corpus"]["source"] == "curriculum" and got.meta["corpus"]["unknown_share"] == 0.0
    docs = _curriculum_documents(tok)
    assert docs is not None and len(docs) == 64
    if version == "v2":  # v2 text: sentences with capitals and pieces of invented words, not v1's word list
        assert any(w not in set(_curriculum.VOCABULARY) for d in docs for w in d.split())
    assert _curriculum_documents(word_tokenizer(list(_curriculum.VOCABULARY)[:-1])) is None


def test_unknown_words_in_a_corpus_warn(planted):
    docs = word_docs(7, n_docs=2)
    with pytest.warns(hz.UnknownTokenWarning, match="qwertyuiop"):
        hz.head_examples(planted, [docs[0] + " qwertyuiop", docs[1]], heads=[(0, 1)], k=2)
