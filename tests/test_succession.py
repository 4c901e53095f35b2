"""Successor heads in context and on text: ground truth from the planted successor model first,
then agreement with TransformerLens' own direct logit attribution, then the code paths on a
GPT-2-shaped model with the real GPT-2 tokenizer."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pandas as pd
import pytest
import torch
from _gpt2 import gpt2_shaped_model
from conftest import BACKENDS, cached_planted

import headzoo as hz
from headzoo.testing import PlantSpec, successor_model, successor_placements


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


#: a planted model without tokenizer
BARE = PlantSpec(n_layers=2, n_heads=2, d_head=64, d_vocab=30, n_ctx=24)  # token codes by QR: quick to build


@pytest.fixture(scope="module")
def planted():
    return successor_model()


# -- prompts ----------------------------------------------------------------------------------

def test_prompts_on_the_planted_model(planted):
    p = hz.succession_prompts(planted, n=23, seed=4, gap=(2, 5))
    (task,) = p.tasks
    assert task.name == "numbers" and len(p) == 23 and p.tokens.shape == p.control.shape
    rows = torch.arange(23)
    assert torch.equal(p.tokens[rows, p.item_pos], p.item)
    assert all(task.successor(int(i)) == int(a) for i, a in zip(p.item, p.answer))
    assert torch.equal(p.end_pos, p.lengths - 1) and (p.end_pos - p.item_pos >= 2).all() and (p.end_pos - p.item_pos <= 5).all()
    assert (p.tokens[:, 0] == planted.tokenizer.bos_token_id).all() and p.prepend_bos
    assert set(p.source) == {"ids"}  # a bare-form task: filler ids, no template
    # the control differs from the prompt at the item only, by a token of no task
    diff = (p.tokens != p.control) & p.mask
    assert torch.equal(diff.nonzero()[:, 1], p.item_pos) and torch.equal(p.control[rows, p.item_pos], p.control_item)
    numbers = set(range(2, 102))
    real = p.tokens[p.mask].tolist()
    fillers = set(real) - numbers - {planted.tokenizer.bos_token_id}
    assert fillers and all(102 <= t for t in fillers) and not set(p.control_item.tolist()) & numbers
    assert sum(t in numbers for t in real) == 23  # one number per prompt: the item
    assert (~p.mask).sum() > 0 and (p.tokens[~p.mask] == p.pad_id).all()  # ragged, right-padded
    again = hz.succession_prompts(planted, n=23, seed=4, gap=(2, 5))
    assert torch.equal(again.tokens, p.tokens) and torch.equal(again.control, p.control)
    assert not torch.equal(hz.succession_prompts(planted, n=23, seed=5, gap=(2, 5)).item, p.item)
    frame = p.to_frame()
    assert list(frame.columns) == ["task", "source", "item", "answer", "control_item", "item_pos", "end_pos", "length"]


def test_prompts_write_templates_for_the_space_forms_of_gpt2():
    model = gpt2_shaped_model()
    tok = model.tokenizer
    p = hz.succession_prompts(model, n=72, seed=1)
    frame = p.to_frame()
    by_task = frame.groupby("task")["source"].agg(set)
    for name, sources in by_task.items():
        assert sources == ({"template"} if name.endswith("_space") else {"ids"}), name
    rows = torch.arange(len(p))
    assert torch.equal(p.tokens[rows, p.item_pos], p.item)
    tasks = {t.name: t for t in p.tasks}
    for i in range(len(p)):
        task = tasks[p.task[i]]
        assert task.successor(int(p.item[i])) == int(p.answer[i])
        assert int(p.end_pos[i] - p.item_pos[i]) >= 2
        if p.source[i] == "template":
            text = tok.decode(p.tokens[i, 1 : int(p.lengths[i])])
            item = tok.decode([int(p.item[i])])
            assert item.startswith(" ") and item in text and not text.endswith(item)
            # tokenising the sentence again gives the same ids: the item's position is real
            assert tok.encode(text, add_special_tokens=False) == p.tokens[i, 1 : int(p.lengths[i])].tolist()
    days = tasks["days_space"]
    assert {tok.decode([t]) for t in days.token_ids} >= {" Monday", " Sunday"}


def test_explicit_tasks_and_a_model_without_tokenizer():
    bare = cached_planted(BARE)
    tasks = [[3, 4, 5, 6], [10, 11, 12]]
    given = [list(t) for t in tasks]
    p = hz.succession_prompts(bare, tasks, n=10, seed=0)
    assert given == tasks  # nothing the user passed is changed
    assert [t.name for t in p.tasks] == ["task0", "task1"] and not p.prepend_bos and set(p.source) == {"ids"}
    assert not set(p.tokens[p.mask].tolist()) - set(p.item.tolist()) & {3, 4, 5, 6, 10, 11, 12}
    with pytest.raises(hz.DetectorNotApplicableError, match="no tokenizer"):
        hz.succession_prompts(bare)
    with pytest.raises(hz.DetectorNotApplicableError, match="no tokenizer"):
        hz.succession_in_context(bare)
    with pytest.raises(hz.InvalidTokensError, match="outside the vocabulary"):
        hz.succession_prompts(bare, [[3, 4, 99]])
    with pytest.raises(hz.InvalidTokensError, match="outside the vocabulary"):
        hz.succession_in_context(bare, {"far": [28, 29, 30]})
    for bad in (0, -3, True):  # (a float is refused before headzoo sees it, by the signature's type check)
        with pytest.raises(hz.InvalidOptionError, match="n must be"):
            hz.succession_prompts(bare, tasks, n=bad)
    for gap in ((0, 2), (5, 3), (2, -1)):
        with pytest.raises(hz.InvalidOptionError, match="gap"):
            hz.succession_prompts(bare, tasks, gap=gap)
    with pytest.raises(hz.InvalidOptionError, match="context"):
        hz.succession_prompts(bare, tasks, gap=(3, 20))
    with pytest.raises(hz.DetectorNotApplicableError, match="filler"):
        hz.succession_prompts(bare, [list(range(30))])


def test_a_short_context_narrows_the_gap():
    from headzoo.testing import planted_model, word_tokenizer

    words = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "dog", "cat", "sun"]
    short = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(words) + 2, n_ctx=8),
                          tokenizer=word_tokenizer(words))
    result = hz.succession_in_context(short, n=8, weight_scores=False)
    assert result.meta["gap"] == [3, 3] and result.prompts()["length"].max() <= 8
    tiny = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=len(words) + 2, n_ctx=4),
                         tokenizer=word_tokenizer(words))
    result = hz.succession_in_context(tiny, n=4, weight_scores=False)  # BOS, a filler, the item, a filler
    assert result.meta["gap"] == [1, 1] and result.prompts()["length"].tolist() == [4] * 4
    days_only = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=9, n_ctx=16),
                              tokenizer=word_tokenizer(words[:7]))
    with pytest.raises(hz.DetectorNotApplicableError, match="^successor_in_context: every ordinary token .* filler"):
        hz.detect(days_only, "successor_in_context")


# -- the planted successor head in context --------------------------------------------------------

SETTINGS = [  # (n_layers, n_heads, placement seed, tens_dim, units_dim, noise, model seed)
    (2, 4, 0, 10, 10, 0.1, 0),
    (3, 3, 1, 6, 12, 0.3, 5),
    (2, 5, 2, 12, 10, 0.0, 9),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s)))
def test_the_planted_successor_head_is_found_in_context(setting):
    n_layers, n_heads, where, tens, units, noise, seed = setting
    roles = successor_placements(n_layers, n_heads, where, copying=True)
    model = successor_model(n_layers=n_layers, n_heads=n_heads, successor=roles["successor"], copying=roles["copying"],
                            tens_dim=tens, units_dim=units, noise=noise, seed=seed)
    model(torch.zeros(1, 2, dtype=torch.long))  # a bridge wires its own hooks on its first forward
    before, hooks = digest(model), hook_count(model)
    result = hz.succession_in_context(model, n=48, seed=seed)
    assert hook_count(model) == hooks
    frame = result.to_frame().set_index(["layer", "head"])
    s, c = roles["successor"], roles["copying"]
    assert result.top(1)[["layer", "head"]].values.tolist() == [list(s)]
    # every successor pair hits except the x9 ones, which wrap inside the tens (by construction)
    items = result.prompts()["item"].to_numpy() - 2
    expected = np.mean(items % 10 != 9)
    assert frame.loc[s, "in_context"] == pytest.approx(expected, abs=1e-9) and expected > 0.8
    assert frame.loc[s, "attention"] > 0.99 and frame.loc[s, "attention_control"] < 0.01
    assert frame.loc[s, "dla_margin"] > 1.0
    # the copying head attends just as well, but its DLA names the item itself, not the successor
    assert frame.loc[c, "attention"] > 0.99 and frame.loc[c, "in_context"] == 0.0
    others = frame.drop(index=[s, c])
    assert (others["in_context"] < 0.2).all()
    assert frame.loc[s, "weight_score"] == pytest.approx(0.9, abs=0.05)
    agree = result.meta["agreement"]
    assert agree["same_top"] and agree["top_weight"] == list(s) and agree["top_in_context"] == list(s)
    assert result.meta["sources"] == {"template": 0, "ids": 48}
    scores = hz.detect(model, "successor_in_context", seed=seed, n=48)
    top = scores.top(2, "successor_in_context")
    assert top[["layer", "head"]].values.tolist()[0] == list(s) and top["score"][0] > 0.5 > top["score"][1]
    assert top["score"][0] == pytest.approx(frame.loc[s, "in_context"])
    assert digest(model) == before


def test_detector_options_are_kept_and_tasks_copied(planted):
    tasks = [list(range(2, 52))]  # the numbers 0..49 as ids
    det = hz.get_detector("successor_in_context", tasks=tasks, n=16, seed=3)
    assert isinstance(det.tasks, tuple) and tasks == [list(range(2, 52))]
    scores = hz.detect(planted, det)
    meta = scores.meta["detectors"]["successor_in_context"]
    assert meta["options"]["n"] == 16 and meta["options"]["tasks"][0]["token_ids"] == tasks[0]
    assert meta["result"]["n_prompts"] == 16
    assert set(scores.details("successor_in_context")["task"]) == {"task0"}
    with pytest.raises(hz.InvalidOptionError):
        hz.get_detector("successor_in_context", n=0)


# -- agreement with TransformerLens ---------------------------------------------------------------

def random_ln_model(backend: str, seed: int = 0):
    """A small model with every parameter random, LayerNorm weights and biases included."""
    cfg = dict(n_layers=2, d_model=32, n_ctx=24, d_head=8, n_heads=4, d_vocab=40, d_mlp=64, act_fn="gelu",
               normalization_type="LN")
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**cfg))
    else:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dla_agrees_with_transformer_lens(backend):
    """The margin of every head on every prompt equals the one TransformerLens computes from
    its cache: stack_head_results(apply_ln=True) (centred, divided by ln_final's scale), times
    ln_final's weight (what fold_ln would put into W_U), @ W_U."""
    model = random_ln_model(backend)
    tasks = {"a": [3, 4, 5, 6, 7, 8], "b": [20, 21, 22, 23]}
    result = hz.succession_in_context(model, tasks, n=12, seed=2, weight_scores=False)
    prompts = hz.succession_prompts(model, tasks, n=12, seed=2)
    margin, attention = result.arrays["margin"], result.arrays["attention"]
    L, H = 2, 4
    w = model.ln_final.w.detach()
    w_u = model.W_U.detach()
    checked = 0
    for i in range(len(prompts)):
        ids = prompts.tokens[i : i + 1, : int(prompts.lengths[i])]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids)
            stack = cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True)[:, 0]  # [L * H, d_model]
        cols = hz.as_ordinal_tasks(tasks)[0 if prompts.task[i] == "a" else 1].token_ids
        logits = (stack * w) @ w_u[:, list(cols)]  # [L * H, |task|]
        j = cols.index(int(prompts.answer[i]))
        others = torch.cat([logits[:, :j], logits[:, j + 1 :]], 1)
        tl_margin = (logits[:, j] - others.mean(1)).view(L, H).double().numpy()
        np.testing.assert_allclose(margin[i], tl_margin, atol=1e-4, rtol=1e-4)
        for layer in range(L):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1, int(prompts.item_pos[i])]
            np.testing.assert_allclose(attention[i, layer], row.detach().numpy(), atol=1e-6)
        checked += 1
    assert checked == 12
    frame = result.to_frame()
    assert frame["weight_score"].isna().all() and result.meta["agreement"] is None
    assert result.meta["final_scale"] == "ln_final.hook_scale"
    hits = result.arrays["hit"]
    assert frame["in_context"].to_numpy() == pytest.approx(hits.mean(0).ravel())


# -- the result protocol ----------------------------------------------------------------------------

def test_succession_in_context_result_protocol(planted, tmp_path):
    result = hz.succession_in_context(planted, n=20, seed=1)
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "head", "in_context", "dla_margin", "attention", "attention_control", "weight_score"]
    assert str(frame["layer"].dtype) == "int64" and len(frame) == 8
    path = result.save(tmp_path / "succ.parquet")
    back = hz.SuccessionInContext.load(path)
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    pd.testing.assert_frame_equal(back.tasks(), result.tasks())
    pd.testing.assert_frame_equal(back.prompts(), result.prompts())
    assert back.meta == result.meta
    for key, value in result.arrays.items():
        assert np.array_equal(back.arrays[key], value) and back.arrays[key].dtype == value.dtype
    fig = result.plot()
    assert type(fig).__name__ == "Figure" and "L1H1" in list(fig.data[0].text)
    assert fig.layout.xaxis.title.text == "successor weight score"
    html = result._repr_html_()
    assert "<script" not in html and "L1H1" in html
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(hz.CorruptFileError):
        hz.SuccessionInContext.load(path)
    with pytest.raises(hz.CorruptFileError, match="SuccessionInContext"):
        hz.SuccessorTextEffects.load(result.save(tmp_path / "again.parquet"))


# -- successor heads on text --------------------------------------------------------------------------

def number_text(seed: int, n_docs: int = 24) -> list[str]:
    """Short documents of filler words around one number, followed, in most of them, a few
    words later by its successor. No number ends in 9: the planted head wraps those inside
    their tens by construction (39 -> 30), which the successor category rightly leaves out."""
    rng = random.Random(seed)

    def fillers(low: int, high: int) -> list[str]:
        return [f"f{rng.randrange(24)}" for _ in range(rng.randint(low, high))]

    docs = []
    for _ in range(n_docs):
        n = rng.choice([m for m in range(99) if m % 10 != 9])
        words = fillers(1, 4) + [str(n)] + fillers(2, 5)
        if rng.random() < 0.7:
            words += [str(n + 1)] + fillers(1, 3)
        docs.append(" ".join(words))
    return docs


@pytest.mark.parametrize("seed", [0, 1])
def test_text_effects_of_the_planted_head(seed):
    roles = successor_placements(2, 4, seed + 7, copying=True)
    model = successor_model(n_layers=2, n_heads=4, successor=roles["successor"], copying=roles["copying"], seed=seed,
                            noise=0.2)
    docs = number_text(seed)
    given = list(docs)
    model(torch.zeros(1, 2, dtype=torch.long))  # a bridge wires its own hooks on its first forward
    before, hooks = digest(model), hook_count(model)
    result = hz.successor_on_text(model, roles["successor"], docs, k=40)
    assert docs == given and digest(model) == before and hook_count(model) == hooks
    frame = result.to_frame()
    assert len(frame) == 40 and frame["contribution"].is_monotonic_decreasing
    summary = result.summary().set_index("group")
    assert summary.loc["successor", "share"] > 0.9  # the planted head's top positions are increments
    # where the text continues with the successor of an earlier number, the head helps: ablating it costs loss
    assert summary.loc["succession examples", "count"] > 10
    assert summary.loc["succession examples", "mean_loss_increase"] > summary.loc["all positions", "mean_loss_increase"]
    assert summary.loc["succession examples", "mean_loss_increase"] > 0
    row = frame.iloc[0]
    words = docs[int(row["doc"])].split()
    assert row["token"] == words[int(row["pos"])] and row["next_token"] == words[int(row["pos"]) + 1]
    assert row["attended_token"] == words[int(row["attended"])] and row["attended_token"].isdigit()
    assert int(row["promoted_token"]) == int(row["attended_token"]) + 1 and row["category"] == "successor"
    copying = hz.successor_on_text(model, roles["copying"], docs, k=40).summary().set_index("group")
    assert copying.loc["copy", "share"] > 0.9


def test_text_batched_equals_unbatched_with_options(planted):
    docs = number_text(3, n_docs=10)
    extra = {"evens": [2 + 2 * i for i in range(20)]}  # an extra task: 0, 2, 4, ... as ids
    opts = dict(k=17, tasks=extra, ablation="zero")
    one = hz.successor_on_text(planted, (1, 1), docs, batch_size=1, **opts)
    many = hz.successor_on_text(planted, (1, 1), docs, batch_size=3, **opts)
    a, b = one.to_frame(), many.to_frame()
    assert a[["doc", "pos"]].values.tolist() == b[["doc", "pos"]].values.tolist()
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-5)
    for key in ("all", "succession"):
        pa, pb = one.meta["positions"][key], many.meta["positions"][key]
        assert pa["count"] == pb["count"] and pa["mean_loss_increase"] == pytest.approx(pb["mean_loss_increase"], abs=1e-5)
    assert "evens" in one.meta["tasks"] and one.meta["ablation"] == "zero" and one.meta["batch_size"] == 1
    # every position but each document's last is scored once
    assert one.meta["positions"]["all"]["count"] == sum(len(d.split()) - 1 for d in docs)
    short = hz.successor_on_text(planted, (1, 1), docs, k=5, max_tokens=40)
    assert short.meta["corpus"]["n_tokens"] == 40 and short.meta["corpus"]["truncated"]
    kept, left = [], 40
    for d in docs:
        kept.append(min(left, len(d.split())))
        left -= kept[-1]
    assert short.meta["positions"]["all"]["count"] == sum(n - 1 for n in kept if n >= 2)


def test_text_errors(planted, tmp_path):
    docs = number_text(0, n_docs=3)
    for head in ((2, 0), (0, 4), (-1, 0)):
        with pytest.raises(hz.InvalidOptionError, match="outside the model"):
            hz.successor_on_text(planted, head, docs)
    for head in ("L1H1", [(1, 1)], (1,), (1.0, 1)):
        with pytest.raises(hz.InvalidOptionError, match="head"):
            hz.successor_on_text(planted, head, docs)
    for corpus in ([], [""], ["   "], ["7"]):
        with pytest.raises(hz.InvalidOptionError, match="corpus"):
            hz.successor_on_text(planted, (1, 1), corpus)
    with pytest.raises(hz.InvalidOptionError, match="corpus"):
        hz.successor_on_text(planted, (1, 1), [b"bytes"])
    with pytest.raises(hz.InvalidOptionError, match="existing file"):
        hz.successor_on_text(planted, (1, 1), str(tmp_path / "nothing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(hz.InvalidOptionError, match="no text"):
        hz.successor_on_text(planted, (1, 1), empty)
    for opt, value in (("k", 0), ("batch_size", 0), ("max_tokens", 0), ("ablation", "half")):
        with pytest.raises(hz.InvalidOptionError, match=opt if opt != "ablation" else "ablation"):
            hz.successor_on_text(planted, (1, 1), docs, **{opt: value})
    with pytest.raises(hz.InvalidTokensError, match="outside the vocabulary"):
        hz.successor_on_text(planted, (1, 1), docs, tasks=[[5, 6, 500]])
    bare = cached_planted(BARE)
    with pytest.raises(hz.UnsupportedTokenizerError, match="no tokenizer"):
        hz.successor_on_text(bare, (0, 0), ["a b c"])
    path = tmp_path / "numbers.txt"
    path.write_text(" ".join(docs))
    from_file = hz.successor_on_text(planted, (1, 1), path, k=5)
    assert from_file.meta["corpus"]["source"] == str(path) and from_file.meta["corpus"]["n_docs"] == 1


def test_text_on_a_gpt2_shaped_model_is_hostile_safe(tmp_path):
    model = gpt2_shaped_model()
    before = digest(model)
    hostile = [
        "On Monday <script>alert('x')</script> & then Tuesday; 1, 2, 3 and <b>January</b> February.",
        "A B C D E <img src=x onerror=alert(1)> one two three, first second third \u2014 \"quoted\" \n new line",
    ]
    result = hz.successor_on_text(model, (1, 2), hostile, k=25, ablation="mean", batch_size=2)
    assert digest(model) == before
    frame = result.to_frame()
    assert len(frame) == 25 and set(frame["category"]) <= {"successor", "copy", "other"}
    assert frame["attended"].dtype == "Int64"
    bos = frame[frame["attended"].isna()]
    assert (bos["attended_token"] == "<|endoftext|>").all()
    html = result._repr_html_()
    assert "<script" not in html and "<img" not in html and "<b>January" not in html
    summary = result.summary()
    assert list(summary["group"]) == ["successor", "copy", "other", "all positions", "succession examples"]
    assert summary.loc[summary["group"] == "succession examples", "count"].item() >= 2  # 1, 2, 3 / one two three ...
    fig = result.plot()
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["successor", "copy", "other"]
    back = hz.SuccessorTextEffects.load(result.save(tmp_path / "text.parquet"))
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    assert back.meta == result.meta and back.head == (1, 2)
    pd.testing.assert_frame_equal(back.summary(), summary)
    shipped = hz.successor_on_text(model, (0, 0), None, k=5, max_tokens=300, ablation="resample")
    assert shipped.meta["corpus"]["source"] == "shipped" and shipped.meta["corpus"]["n_tokens"] == 300
