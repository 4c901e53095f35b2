"""Successor, copy-suppression and copying detectors, read from the weights.

Ground truth first (planted heads at random places), then agreement with a brute-force
computation of the same ranks, then what must not be flagged, then the edges.
"""

from __future__ import annotations

import pytest
import torch

import headzoo as hz
from headzoo._backends import build_model
from headzoo.testing import PlantSpec, planted_state_dict, random_placements

from conftest import BACKENDS, cached_planted
from test_effective_embedding import random_model

WEIGHT_DETECTORS = ["successor", "copy_suppression", "copying", "negative_copying"]

CASES = [
    # (n_layers, n_heads, d_head, d_vocab, seed): placements drawn at random from the seed
    (2, 5, 64, 2000, 0),
    (5, 6, 32, 300, 1),
    (3, 8, 16, 2000, 4),  # narrow heads
    (4, 3, 32, 40, 6),  # small vocabulary
    (3, 4, 16, 14, 9),  # tiny vocabulary: 12 real tokens
]


def planted(n_layers, n_heads, d_head, d_vocab, seed, **overrides):
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32, weights=True)
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=32,
                     seed=seed, **{**placements, **overrides})
    return spec, cached_planted(spec)


def ranked(scores, detector):
    return [(int(r.layer), int(r.head), float(r.score)) for r in scores.top(1000, detector).itertuples()]


@pytest.mark.slow
@pytest.mark.parametrize("n_layers,n_heads,d_head,d_vocab,seed", CASES)
def test_planted_weight_heads_rank_first_with_a_margin(n_layers, n_heads, d_head, d_vocab, seed):
    spec, model = planted(n_layers, n_heads, d_head, d_vocab, seed)
    scores = hz.detect(model, WEIGHT_DETECTORS, tasks=list(spec.sequences))
    heads = spec.planted
    for detector, role in [("successor", "successor"), ("copy_suppression", "copy_suppression"),
                           ("negative_copying", "copy_suppression")]:
        order = ranked(scores, detector)
        assert order[0][:2] == heads[role], (detector, order[:3])
        assert order[0][2] > 0.9 and order[0][2] - order[1][2] > 0.5, (detector, order[:3])
    # two planted heads copy: the copying head and the induction head (its OV circuit copies)
    order = ranked(scores, "copying")
    assert {order[0][:2], order[1][:2]} == {heads["copying"], heads["induction"]}, order[:3]
    assert order[1][2] > 0.9 and order[1][2] - order[2][2] > 0.5, order[:4]
    frame = scores.to_frame().set_index(["detector", "layer", "head"])
    cs = frame.loc[("copy_suppression", *heads["copy_suppression"])]
    assert cs["ov"] > 0.9 and cs["qk"] > 0.9 and cs["qk_baseline"] < 0.2
    print(f"\n[weights {seed}] margins: " + ", ".join(
        f"{d} {ranked(scores, d)[0][2] - ranked(scores, d)[1 + (d == 'copying')][2]:.2f}" for d in WEIGHT_DETECTORS))


@pytest.mark.slow
def test_copy_suppression_does_not_flag_duplicate_copying_or_flat_heads():
    spec = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=300, n_ctx=32, seed=3,
                     previous_token=(0, 0), induction=(2, 1), duplicate_token=(0, 1), copying=(1, 0),
                     successor=(1, 1), copy_suppression=(2, 2))
    state = planted_state_dict(spec)
    # A head with the copy-suppression QK circuit but a flat (zero) OV circuit: L2H3.
    for name in ("W_Q", "W_K"):
        state[f"blocks.2.attn.{name}"][3] = state[f"blocks.2.attn.{name}"][2]
    state["blocks.2.attn.W_O"][3] = 0.0
    model = build_model(spec.config(), state, backend="bridge")
    frame = hz.detect(model, ["copy_suppression", "successor", "negative_copying"],
                      tasks=list(spec.sequences)).to_frame().set_index(["detector", "layer", "head"])
    cs = frame.loc["copy_suppression"]
    assert cs.loc[(2, 2), "score"] > 0.9
    for head in [(0, 1), (1, 0), (2, 1), (2, 3), (1, 1)]:  # duplicate, copying, induction, flat, successor
        assert cs.loc[head, "score"] < 0.15, (head, cs.loc[head])
    flat = cs.loc[(2, 3)]
    assert flat["qk"] > 0.9 and flat["ov"] == 0.0  # the QK half alone is not enough; ties count against
    assert frame.loc[("negative_copying", 2, 3), "score"] == 0.0
    dup = cs.loc[(0, 1)]
    assert dup["qk_baseline"] > 0.9 and dup["qk"] < 0.15  # duplicate-token: keys match embeddings, not predictions
    # the successor detector does not flag copying heads
    succ = frame.loc["successor"]
    assert succ.loc[(1, 0), "score"] < 0.2 and succ.loc[(2, 1), "score"] < 0.2 and succ.loc[(1, 1), "score"] == 1.0


@pytest.mark.skipif("hooked" not in BACKENDS, reason="HookedTransformer needs transformer-lens<4")
def test_same_numbers_on_both_model_classes():
    spec, _ = planted(3, 4, 32, 300, 5)
    opts = dict(tasks=list(spec.sequences), n_tokens=64, seed=2)
    a = hz.detect(cached_planted(spec, "bridge"), WEIGHT_DETECTORS, **opts).to_frame()
    b = hz.detect(cached_planted(spec, "hooked"), WEIGHT_DETECTORS, **opts).to_frame()
    assert a[["detector", "layer", "head"]].equals(b[["detector", "layer", "head"]])
    numeric = a.columns.drop("detector")
    assert (a[numeric] - b[numeric]).abs().max().max() < 1e-9


@pytest.mark.skipif("hooked" not in BACKENDS, reason="HookedTransformer needs transformer-lens<4")
def test_same_numbers_on_both_classes_with_layernorm():
    """A LayerNorm model built from one canonical state dict as either class."""
    cfg = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=120, d_mlp=64, act_fn="gelu",
               normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=True)
    donor = random_model("hooked", seed=4, **{k: v for k, v in cfg.items() if k not in ("positional_embedding_type", "default_prepend_bos")})
    state = {k: v for k, v in donor.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}
    a = hz.detect(build_model(cfg, state, backend="bridge"), ["copy_suppression", "copying"]).to_frame()
    b = hz.detect(build_model(cfg, state, backend="hooked"), ["copy_suppression", "copying"]).to_frame()
    numeric = a.columns.drop("detector")
    assert (a[numeric] - b[numeric]).abs().max().max() < 1e-9


def brute_force_ranks(model, ids, layer):
    """Every OV and QK logit, written out with the model's own modules (tiny vocabulary only)."""
    block = model.blocks[layer]
    unbias = lambda mod, x: mod(x[None])[0] - mod(torch.zeros_like(x[:1])[None])[0]  # noqa: E731
    ee = hz.effective_embedding(model, ids)
    x = unbias(block.ln1, ee)
    out = torch.einsum("nd,hde,hef->hnf", x, model.W_V[layer], model.W_O[layer])  # [head, n, d_model]
    final = torch.stack([unbias(model.ln_final, o) for o in out])  # the final LayerNorm, per row
    final = final / final.norm(dim=-1, keepdim=True)  # the final norm's scale does not change ranks
    logits = (final.double() @ model.W_U.double())  # [head, n, vocab]
    own = logits[:, torch.arange(len(ids)), ids]
    others = torch.ones_like(logits, dtype=torch.bool)
    others[:, torch.arange(len(ids)), ids] = False
    # ties (within 1e-6 of the largest possible logit) count against the head, as in headzoo
    tol = 1e-6 * model.W_U.norm(dim=0).max() * final.norm(dim=-1)
    below = ((logits <= (own + tol)[..., None]) & others).sum(-1)
    above = ((logits >= (own - tol)[..., None]) & others).sum(-1)
    q = torch.einsum("nd,hde->hne", unbias(block.ln1, model.W_U[:, ids].T), model.W_Q[layer])
    k = torch.einsum("nd,hde->hne", x, model.W_K[layer])
    scores = q @ k.transpose(1, 2)
    qk = (scores > scores.diagonal(dim1=1, dim2=2)[..., None]).sum(-1)
    return below, above, qk


@pytest.mark.parametrize("chunk_bytes", [24 * 2**20, 4096])
def test_ranks_equal_a_brute_force_computation(chunk_bytes):
    model = random_model("bridge", seed=1, normalization_type="LN", d_vocab=300)
    circuits = hz.WeightCircuits(model, chunk_bytes=chunk_bytes)
    ranks = circuits.ov_ranks(n_tokens=64, seed=0, variant="mlp0")
    qk = circuits.qk_ranks(n_tokens=64, seed=0, variant="mlp0", query="unembed")
    ids = circuits.sample(64, 0)
    assert len(ids) == 64 and len(set(ids.tolist())) == 64
    with torch.no_grad():
        for layer in range(2):
            below, above, qk_ref = brute_force_ranks(model, ids, layer)
            assert torch.equal(ranks.below[layer], below)
            assert torch.equal(ranks.above[layer], above)
            assert torch.equal(qk[layer], qk_ref)
    assert ranks.n_outputs == 300


def test_final_layernorm_readout_is_probed_exactly():
    model = random_model("bridge", seed=2, normalization_type="LN")
    centres, weight = hz.WeightCircuits(model).final_readout()
    assert centres
    assert torch.allclose(weight, model.ln_final.original_component.weight.detach(), rtol=1e-4)
    rms = random_model("bridge", seed=2, normalization_type="RMS")
    centres, weight = hz.WeightCircuits(rms).final_readout()
    assert not centres and torch.allclose(weight, rms.ln_final.original_component.weight.detach(), rtol=1e-4)


def test_no_vocab_by_vocab_array_is_ever_formed():
    """Record the size of every tensor torch produces while the detectors run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab = 20000
    spec = PlantSpec(n_layers=2, n_heads=4, d_head=16, d_vocab=vocab, n_ctx=16, seed=0,
                     previous_token=(0, 0), induction=(1, 0), copy_suppression=(0, 2), copying=(1, 2), successor=(1, 3))
    model = cached_planted(spec)

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    with Largest():
        scores = hz.detect(model, WEIGHT_DETECTORS, tasks=list(spec.sequences), n_tokens=512)
    assert Largest.numel < vocab * vocab / 50, Largest.numel
    meta = scores.meta["detectors"]["copy_suppression"]["result"]["sample"]
    assert meta == {"n_tokens": 512, "n_candidates": vocab, "sampled": True, "seed": 0, "n_outputs": vocab}
    assert scores.top(1, "copy_suppression")[["layer", "head"]].values.tolist() == [[0, 2]]
    print(f"\n[memory] largest tensor {Largest.numel} elements vs vocab^2 = {vocab * vocab}")


def test_the_sample_is_seeded():
    model = random_model("bridge", d_vocab=300)
    a = hz.detect(model, "copy_suppression", n_tokens=32, seed=1).to_frame()
    b = hz.detect(model, "copy_suppression", n_tokens=32, seed=1).to_frame()
    c = hz.detect(model, "copy_suppression", n_tokens=32, seed=2).to_frame()
    assert a.equals(b) and not a.equals(c)


def test_padding_rows_and_specials_are_not_ranked_or_sampled():
    from headzoo.testing import planted_model

    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=40, n_ctx=16, previous_token=(0, 0),
                     induction=(1, 0), copying=(0, 1))
    from headzoo.testing import word_tokenizer

    model = planted_model(spec, tokenizer=word_tokenizer([f"w{i}" for i in range(30)]))  # 32 real ids of 40
    circuits = hz.WeightCircuits(model)
    assert circuits.n_outputs == 32
    ids = circuits.sample(1000, 0)
    assert ids.tolist() == list(range(2, 32))  # no <bos>/<unk>, no padding rows


def test_detect_all_skips_an_inapplicable_successor_but_a_named_one_raises():
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=20, n_ctx=16)
    model = cached_planted(spec)  # no tokenizer: no built-in ordinal list can be expressed
    with pytest.warns(UserWarning, match="successor"):
        scores = hz.detect(model, n_prompts=2)
    assert "successor" not in scores.detectors
    assert "tasks=" in scores.meta["skipped_detectors"]["successor"]
    with pytest.raises(hz.DetectorNotApplicableError, match="tasks="):
        hz.detect(model, "successor")


def test_successor_reports_per_task_accuracy_and_skipped_lists_on_the_demo_model():
    model = hz.load_model("planted-demo")
    scores = hz.detect(model, "successor")
    assert scores.top(1, "successor")[["layer", "head"]].values.tolist() == [[1, 3]]
    details = scores.details("successor")
    assert list(details.columns) == ["layer", "head", "task", "accuracy", "n_pairs"]
    mine = details[(details["layer"] == 1) & (details["head"] == 3)].set_index("task")["accuracy"]
    assert set(mine.index) == {"days", "months", "number_words", "ordinals", "letters"}
    assert (mine >= 0.9).all(), mine
    result = scores.meta["detectors"]["successor"]["result"]
    assert "numbers" in result["skipped_tasks"]  # the demo vocabulary has no digits
    assert "same tokens as days" == result["skipped_tasks"]["days_space"]  # a word tokenizer ignores the space
    assert result["n_pairs"] == int(details.groupby("task")["n_pairs"].first().sum())


def test_details_survive_save_and_load(tmp_path):
    scores = hz.detect(hz.load_model("planted-demo"), ["successor", "copy_suppression"])
    back = hz.HeadScores.load(scores.save(tmp_path / "s.parquet"))
    assert back.details("successor").equals(scores.details("successor"))
    assert back.to_frame().equals(scores.to_frame()) and back.meta == scores.meta
    with pytest.raises(KeyError, match="no details"):
        scores.details("copy_suppression")


@pytest.mark.slow
def test_explicit_tasks_are_checked():
    model = hz.load_model("planted-demo")
    with pytest.raises(hz.InvalidTokensError, match="outside the vocabulary"):
        hz.detect(model, "successor", tasks=[[5, 6, 999]])
    with pytest.raises(hz.InvalidTokensError, match="at least two"):
        hz.detect(model, "successor", tasks=[[5]])
    with pytest.raises(hz.InvalidTokensError, match="repeats"):
        hz.detect(model, "successor", tasks=[[5, 6, 5]])
    with pytest.raises(hz.InvalidTokensError, match="integer"):
        hz.detect(model, "successor", tasks=[[5.5, 6.0]])
    with pytest.raises(hz.InvalidOptionError, match="tasks"):
        hz.detect(model, "successor", tasks="Monday Tuesday")
    tasks = {"mine": [9, 10, 11], "cycle": hz.OrdinalTask("cycle", (20, 21, 22), cyclic=True)}
    scores = hz.detect(model, "successor", tasks=tasks)
    assert set(scores.details("successor")["task"]) == {"mine", "cycle"}
    assert scores.meta["detectors"]["successor"]["options"]["tasks"][1]["cyclic"] is True


@pytest.mark.parametrize("option,value", [("n_tokens", 1), ("k", 0), ("embedding", "mlp1"), ("seed", "x")])
def test_bad_options_raise(option, value):
    with pytest.raises(hz.InvalidOptionError):
        hz.detect(hz.load_model("planted-demo"), "copy_suppression", **{option: value})


def test_weight_detectors_work_on_a_grouped_query_model():
    model = random_model("bridge", normalization_type="RMS", n_key_value_heads=2, positional_embedding_type="rotary")
    frame = hz.detect(model, ["copy_suppression", "copying"], n_tokens=16).to_frame()
    assert len(frame) == 2 * 2 * 4 and frame["score"].between(0, 1).all()


def test_a_hugging_face_gpt2_and_a_bfloat16_model(hf_gpt2):
    """boot_transformers wraps HF's modules (LN1, final LN) and bf16 weights: both are read."""
    hf, path = hf_gpt2
    model = hz.load_model(str(path))
    centres, weight = hz.WeightCircuits(model).final_readout()
    assert centres and torch.allclose(weight, hf.transformer.ln_f.weight.detach(), rtol=1e-4, atol=1e-5)
    frame = hz.detect(model, ["copy_suppression", "copying"], n_tokens=32).to_frame()
    assert len(frame) == 2 * 2 * 4 and frame["score"].between(0, 1).all()

    demo = hz.load_model("planted-demo", dtype=torch.bfloat16)
    top = hz.detect(demo, ["copy_suppression", "successor"]).top(1)
    assert top[["layer", "head"]].values.tolist() == [[2, 0], [1, 3]]
