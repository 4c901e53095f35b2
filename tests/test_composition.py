"""Composition scores: planted Q/K/V pairs rank first, agreement with a dense reference and with
TransformerLens, LayerNorm folding, grouped-query heads, bad inputs, the result protocol."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo._backends import build_model, from_bridge_state_dict
from headzoo.testing import PlantSpec, planted_state_dict, random_placements

from conftest import BACKENDS, cached_planted

PARTNER = {"q": "q_composition", "k": "induction", "v": "v_composition"}


def planted_spec(n_layers: int, n_heads: int, d_head: int, seed: int) -> PlantSpec:
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32, q_composition=True, v_composition=True)
    # d_vocab <= d_head // 2: token codes are then orthonormal at once (no code spreading), and
    # composition scores do not read the vocabulary
    return PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_head // 2, n_ctx=16, seed=seed, **placements)


def random_model(seed: int = 0, **extra):
    """A small bridge model with every parameter random (LayerNorm weights included)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, d_mlp=64, act_fn="gelu")
    cfg.update(extra)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval(), cfg


def dense_reference(model, cfg: dict) -> pd.DataFrame:
    """Scores from the full ``d_model x d_model`` matrices in float64, with LayerNorm folded by
    hand (weight into W_Q/W_K/W_V, reading and writing weights centred for LayerNorm) and
    grouped key-value heads expanded: the definition written out, for comparison."""
    sd = {k: v.double() for k, v in from_bridge_state_dict(model.state_dict(), cfg).items()}
    d, h = cfg["d_model"], cfg["n_heads"]
    norm = cfg.get("normalization_type")
    centre = torch.eye(d, dtype=torch.float64) - 1.0 / d if norm == "LN" else torch.eye(d, dtype=torch.float64)
    ov, qk = {}, {}
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        w = sd[p + "ln1.w"] if norm in ("LN", "RMS") else torch.ones(d, dtype=torch.float64)
        weights = {}
        for x in "QKV":
            m = sd[p + f"attn.W_{x}"]
            weights[x] = m.repeat_interleave(h // m.shape[0], 0)  # query head h reads kv head h // group
        for head in range(h):
            q, k, v = (centre @ torch.diag(w) @ weights[x][head] for x in "QKV")
            ov[layer, head] = v @ sd[p + "attn.W_O"][head] @ centre
            qk[layer, head] = q @ k.T
    heads = list(ov)
    a = torch.stack([ov[x] for x in heads])  # [n, d, d]
    rows = []
    for kind in "qkv":
        b = torch.stack([{"q": qk[x], "k": qk[x].T, "v": ov[x]}[kind] for x in heads])
        prod = torch.linalg.norm(torch.einsum("sij,rjk->srik", a, b), dim=(2, 3))  # every pair at once
        score = prod / (torch.linalg.norm(a, dim=(1, 2))[:, None] * torch.linalg.norm(b, dim=(1, 2))[None, :])
        for i, (ls, hs) in enumerate(heads):
            for j, (lr, hr) in enumerate(heads):
                if ls < lr:
                    rows.append((ls, hs, lr, hr, kind, float(score[i, j])))
    return pd.DataFrame(rows, columns=["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind", "score"])


def merged(ours: hz.CompositionScores, ref: pd.DataFrame) -> pd.DataFrame:
    keys = ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind"]
    out = ours.to_frame().merge(ref, on=keys, suffixes=("", "_ref"), validate="one_to_one")
    assert len(out) == len(ref) == len(ours.to_frame())
    return out


# -- ground truth by construction ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 32), (4, 4, 16), (4, 6, 32)])
@pytest.mark.parametrize("seed", range(3))
def test_planted_pairs_rank_first_with_a_margin(shape, seed):
    """previous-token -> induction first among K pairs, -> q_composition among Q pairs and
    -> v_composition among V pairs, wherever random_placements puts them."""
    spec = planted_spec(*shape, seed)
    scores = hz.composition_scores(cached_planted(spec), n_random=16)
    prev = spec.planted["previous_token"]
    for kind, role in PARTNER.items():
        top = scores.top(2, kind)
        first = tuple(int(top.loc[0, c]) for c in ("sender_layer", "sender_head", "receiver_layer", "receiver_head"))
        assert first == (*prev, *spec.planted[role]), (kind, top)
        # the planted pair reads a subspace exactly: 1 / sqrt(d_head / 2); the runner-up is
        # a random pair near the baseline
        assert top.loc[0, "score"] == pytest.approx((shape[2] // 2) ** -0.5, rel=1e-4)
        assert top.loc[0, "score"] - top.loc[1, "score"] > 0.05
        assert top.loc[0, "excess"] > 1.5 * top.loc[1, "excess"]


def test_new_roles_leave_every_other_weight_and_placement_alone():
    plain = random_placements(4, 5, 3, weights=True, relation=True)
    more = random_placements(4, 5, 3, weights=True, relation=True, q_composition=True, v_composition=True)
    assert {k: more[k] for k in plain} == plain
    assert more["q_composition"][0] > more["previous_token"][0] < more["v_composition"][0]
    base = PlantSpec(n_layers=3, n_heads=4, d_head=16, d_vocab=8, n_ctx=16, seed=5, previous_token=(0, 1), induction=(2, 0))
    with_roles = PlantSpec(n_layers=3, n_heads=4, d_head=16, d_vocab=8, n_ctx=16, seed=5, previous_token=(0, 1),
                           induction=(2, 0), q_composition=(1, 3), v_composition=(2, 2))
    a, b = planted_state_dict(base), planted_state_dict(with_roles)
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(("blocks.1.attn.", "blocks.2.attn.")) and a[key].ndim == 3:
            head = 3 if key.startswith("blocks.1") else 2
            keep = [i for i in range(4) if i != head]
            assert torch.equal(a[key][keep], b[key][keep]), key
        else:
            assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="q_composition head Q-composes with a previous-token head"):
        PlantSpec(n_layers=2, previous_token=(1, 0), induction=None, q_composition=(1, 1))
    with pytest.raises(ValueError, match="v_composition"):
        PlantSpec(n_layers=2, previous_token=None, induction=None, v_composition=(1, 1))


# -- agreement with the definition and with TransformerLens -----------------------------------
@pytest.mark.parametrize("extra", [
    {"normalization_type": "LN"},
    {"normalization_type": "RMS"},
    {"normalization_type": None},
    {"normalization_type": "LN", "n_key_value_heads": 2},
    {"normalization_type": "RMS", "n_key_value_heads": 2, "positional_embedding_type": "rotary"},
], ids=["LN", "RMS", "none", "LN-GQA", "RMS-GQA-rotary"])
def test_equals_the_dense_definition(extra):
    model, cfg = random_model(seed=1, **extra)
    out = merged(hz.composition_scores(model, baseline=False), dense_reference(model, cfg))
    np.testing.assert_allclose(out["score"], out["score_ref"], atol=1e-5)
    assert out["score"].between(0, 1).all() and out["score"].std() > 0.01


@pytest.mark.parametrize("extra", [{"normalization_type": "LN"}, {"normalization_type": "RMS", "n_key_value_heads": 2,
                                                                   "positional_embedding_type": "rotary"}], ids=["LN", "RMS-GQA"])
def test_agrees_with_transformer_lens_after_fold_ln(extra):
    """TransformerBridge.all_composition_scores on weights processed by TL's fold_ln and
    center_writing_weights (what the paper's scores assume) equals ours on the raw model."""
    model, _ = random_model(seed=2, **extra)
    if not hasattr(model, "all_composition_scores") or not hasattr(model, "process_weights"):
        pytest.skip("this TransformerLens has no all_composition_scores / process_weights")
    ours = hz.composition_scores(model, baseline=False).to_frame()
    processed = copy.deepcopy(model)
    processed.process_weights(fold_ln=True, center_writing_weights=True)
    for kind in "qkv":
        tl = processed.all_composition_scores(kind.upper()).scores.detach().double()
        part = ours[ours["kind"] == kind]
        ref = tl[part["sender_layer"].to_numpy(), part["sender_head"].to_numpy(), part["receiver_layer"].to_numpy(),
                 part["receiver_head"].to_numpy()].numpy()
        np.testing.assert_allclose(part["score"].to_numpy(), ref, atol=1e-4)


def test_agrees_with_transformer_lens_on_a_planted_model():
    model = cached_planted(planted_spec(3, 4, 16, 0))
    if not hasattr(model, "all_composition_scores"):
        pytest.skip("this TransformerLens has no all_composition_scores")
    ours = hz.composition_scores(model, baseline=False).to_frame()
    for kind in "qkv":
        tl = model.all_composition_scores(kind.upper()).scores.detach()
        part = ours[ours["kind"] == kind]
        ref = tl[part["sender_layer"].to_numpy(), part["sender_head"].to_numpy(), part["receiver_layer"].to_numpy(),
                 part["receiver_head"].to_numpy()].numpy()
        np.testing.assert_allclose(part["score"].to_numpy(), ref, atol=1e-4)


def test_grouped_query_receivers_read_their_key_value_head():
    """Changing key-value head 0's W_K moves the K scores of query heads 0 and 1 (its group)
    and nothing else; its W_V moves V and Q/K-as-sender rows of those query heads only."""
    model, cfg = random_model(seed=3, normalization_type="RMS", n_key_value_heads=2)
    before = hz.composition_scores(model, baseline=False).to_frame()
    edited = copy.deepcopy(model)
    with torch.no_grad():
        weight = edited.blocks[2].attn.k.weight  # [n_kv * d_head, d_model]
        weight[: cfg["d_head"]] += 0.5
    after = hz.composition_scores(edited, baseline=False).to_frame()
    moved = (before["score"] - after["score"]).abs() > 1e-6
    changed = before[moved]
    assert len(changed) and set(changed["kind"]) <= {"q", "k"}
    assert set(changed["receiver_layer"]) == {2} and set(changed["receiver_head"]) == {0, 1}


@pytest.mark.skipif(len(BACKENDS) < 2, reason="HookedTransformer needs TransformerLens 3.x")
def test_both_model_classes_give_the_same_numbers():
    spec = planted_spec(3, 4, 32, 1)
    a = hz.composition_scores(cached_planted(spec, "bridge")).to_frame()
    b = hz.composition_scores(cached_planted(spec, "hooked")).to_frame()
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)


def test_hooked_and_bridge_built_from_one_state_dict_agree_with_layer_norm():
    if "hooked" not in BACKENDS:
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    model, cfg = random_model(seed=4, normalization_type="LN")
    hooked = build_model(cfg, from_bridge_state_dict(model.state_dict(), cfg), backend="hooked")
    pd.testing.assert_frame_equal(hz.composition_scores(model).to_frame(), hz.composition_scores(hooked).to_frame(),
                                  check_exact=False, atol=1e-6)


# -- options, baseline, inputs ------------------------------------------------------------------
def test_one_kind_equals_its_rows_of_all_kinds():
    model = cached_planted(planted_spec(3, 4, 16, 2))
    full = hz.composition_scores(model, n_random=8).to_frame()
    for kind in ("K", "v"):
        one = hz.composition_scores(model, kind, n_random=8).to_frame()
        part = full[full["kind"] == kind.lower()].reset_index(drop=True)
        pd.testing.assert_frame_equal(one, part)
    two = hz.composition_scores(model, ["v", "q"], baseline=False)
    assert two.kinds == ["q", "v"] and "excess" not in two.to_frame().columns


def test_baseline_is_the_seeded_score_of_random_matrices():
    model = cached_planted(planted_spec(3, 4, 16, 0))
    a = hz.composition_scores(model, n_random=50, seed=7)
    b = hz.composition_scores(model, n_random=50, seed=7)
    c = hz.composition_scores(model, n_random=50, seed=8)
    assert a.meta["baseline"] == b.meta["baseline"] != c.meta["baseline"]
    # the same draws, scored densely
    d, e = model.cfg.d_model, model.cfg.d_head
    g = torch.Generator().manual_seed(7)
    mats = [torch.randn((50, *shape), generator=g, dtype=torch.float64) for shape in ((d, e), (e, d), (d, e), (e, d))]
    left, right = mats[0] @ mats[1], mats[2] @ mats[3]
    dense = torch.linalg.norm(left @ right, dim=(1, 2)) / (torch.linalg.norm(left, dim=(1, 2)) * torch.linalg.norm(right, dim=(1, 2)))
    assert a.meta["baseline"] == pytest.approx(float(dense.mean()), rel=1e-9)
    assert a.meta["baseline_std"] == pytest.approx(float(dense.std()), rel=1e-6)
    frame = a.to_frame()
    assert (frame["baseline"] == a.meta["baseline"]).all()
    np.testing.assert_allclose(frame["excess"], frame["score"] - frame["baseline"])


@pytest.mark.parametrize("kind, match", [
    ("x", "not a composition kind"),
    ("qk", r"pass a tuple, e\.g\. \('q', 'k'\)"),
    ("kk", "pass a tuple"),
    ("Q-composition", "did you mean 'q'"),
    ((), "empty"),
    (("q", "z"), "'z' is not a composition kind"),
])
def test_bad_kinds_are_refused(kind, match):
    model = cached_planted(planted_spec(3, 4, 16, 0))
    with pytest.raises(hz.InvalidOptionError, match=match):
        hz.composition_scores(model, kind)


@pytest.mark.parametrize("kind, match", [(5, "must be 'q', 'k', 'v'"), ([1], "1 is not a composition kind"),
                                         (b"q", "must be"), ({"q": 1}, "must be")])
def test_kinds_of_the_wrong_type_are_refused(kind, match):
    # (the tests run headzoo under beartype, which stops these before composition_scores
    # sees them; without beartype, this is the check it makes)
    from headzoo._composition import check_kinds

    with pytest.raises(hz.InvalidOptionError, match=match):
        check_kinds(kind)


def test_bad_models_and_options_are_refused():
    model = cached_planted(planted_spec(3, 4, 16, 0))
    for bad in (object(), type(model), "gpt2"):
        with pytest.raises(hz.UnsupportedModelError):
            hz.composition_scores(bad)
    for name, value in (("n_random", 0), ("n_random", -3)):
        with pytest.raises(hz.InvalidOptionError, match=name):
            hz.composition_scores(model, **{name: value})
    scores = hz.composition_scores(model, "k", n_random=4)
    with pytest.raises(hz.InvalidOptionError, match="was not computed"):
        scores.top(3, "q")
    with pytest.raises(hz.InvalidOptionError, match="k must be a positive integer"):
        scores.top(0)


def test_the_model_is_not_modified():
    model, _ = random_model(seed=5, normalization_type="LN")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(h._forward_hooks) for h in model.modules())
    hz.composition_scores(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(len(h._forward_hooks) for h in model.modules()) == hooks


# -- the result ---------------------------------------------------------------------------------
def test_result_round_trip_and_views(tmp_path):
    spec = planted_spec(3, 4, 16, 1)
    scores = hz.composition_scores(cached_planted(spec), n_random=8)
    back = hz.CompositionScores.load(scores.save(tmp_path / "c.parquet"))
    pd.testing.assert_frame_equal(scores.to_frame(), back.to_frame(), check_exact=True)
    assert back.meta == scores.meta and repr(back) == repr(scores)
    frame = scores.to_frame()
    assert list(frame.columns) == ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind", "score",
                                   "baseline", "excess"]
    assert (frame["sender_layer"] < frame["receiver_layer"]).all()
    assert len(frame) == 3 * 3 * 16  # kinds x layer pairs (0, 1), (0, 2), (1, 2) x head pairs
    matrix = scores.matrix("k")
    prev, ind = spec.planted["previous_token"], spec.planted["induction"]
    assert matrix.loc[f"L{prev[0]}H{prev[1]}", f"L{ind[0]}H{ind[1]}"] == scores.top(1, "k").loc[0, "score"]
    assert np.isnan(matrix.loc["L1H0", "L1H1"])  # same layer: no composition
    into = scores.edges_into(*ind, kind="k")
    assert (into.loc[0, "sender_layer"], into.loc[0, "sender_head"]) == prev
    fig = scores.plot()
    assert len(fig.data) == 3
    page = scores._repr_html_()
    assert "<script" not in page and "K-composition" in page


# -- the head graph ------------------------------------------------------------------------------
def test_head_graph_from_composition_puts_the_planted_pairs_first():
    spec = planted_spec(4, 4, 16, 2)
    model = cached_planted(spec)
    graph = hz.head_graph(model, top_k=5)
    frame = graph.to_frame()
    assert list(frame.columns) == ["source_layer", "source_head", "target_layer", "target_head", "target", "kind", "weight",
                                   "evidence"]
    assert set(frame["evidence"]) == {"composition"} and (frame.groupby("kind").size() == 5).all()
    prev = spec.planted["previous_token"]
    for kind, role in PARTNER.items():
        best = frame[frame["kind"] == kind].iloc[0]
        assert (best["source_layer"], best["source_head"], best["target_layer"], best["target_head"]) == (*prev, *spec.planted[role])
    reads, writes = graph.edges_of(*spec.planted["induction"])
    assert (reads.loc[0, "source_layer"], reads.loc[0, "source_head"], reads.loc[0, "kind"]) == (*prev, "k")
    assert {tuple(x) for x in writes[["source_layer", "source_head"]].to_numpy()} <= {spec.planted["induction"]}
    _, out = graph.edges_of(*prev)
    assert {(int(a), int(b)) for a, b in zip(out["target_layer"], out["target_head"])} >= {
        spec.planted[r] for r in PARTNER.values()}
    # the same edges from precomputed scores, without the model
    again = hz.head_graph(composition=hz.composition_scores(model), top_k=5)
    pd.testing.assert_frame_equal(again.to_frame(), frame)
    fig = graph.plot()
    assert len(fig.data) == len(frame) + 1  # one line per edge and the nodes


def test_head_graph_from_path_patching():
    """Path patching every sender into the induction head's keys: the previous-token head's
    edge is the strongest (it is the only head whose output the keys read)."""
    spec = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=64, previous_token=(0, 1), duplicate_token=(1, 2),
                     induction=(2, 0), seed=11)
    model = cached_planted(spec)
    if not hasattr(hz.patching, "path_patch_heads"):
        pytest.skip("hz.patching.path_patch_heads is not in this headzoo yet")
    g = torch.Generator().manual_seed(0)
    r = torch.randint(2, spec.d_vocab, (4, 6), generator=g)
    bos = torch.zeros(4, 1, dtype=torch.long)
    clean = torch.cat([bos, r, r], 1)
    corrupted = torch.cat([bos, torch.randint(2, spec.d_vocab, (4, 6), generator=g), r], 1)  # the first copy corrupted
    metric = hz.patching.logit_diff(r[:, 5], (r[:, 5] + 1) % spec.d_vocab, pos=11)  # at the second r[:, 4]
    effects = hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=[(2, 0, "k")])
    graph = hz.head_graph(model, path_effects=effects, top_k=3)
    frame = graph.to_frame()
    assert set(frame["evidence"]) == {"path_patching"} and 1 <= len(frame) <= 3 and (frame["weight"] > 0).all()
    assert (frame["weight"].iloc[1:] < 1e-4 * frame["weight"].iloc[0]).all()  # no other head writes what the key reads
    assert (frame.loc[0, "source_layer"], frame.loc[0, "source_head"], frame.loc[0, "target"], frame.loc[0, "kind"]) == (0, 1, "L2H0", "k")
    best = effects.top(1).loc[0]
    assert frame.loc[0, "weight"] == pytest.approx(abs(best["effect"] - effects.meta["baseline"]))
    both = hz.head_graph(model, composition=hz.composition_scores(model, "k"), path_effects=[effects], kinds="k", top_k=3)
    assert set(both.to_frame()["evidence"]) == {"composition", "path_patching"}
    to_logits = hz.patching.path_patch_heads(model, clean, corrupted, metric)
    logits = hz.head_graph(model, path_effects=to_logits, top_k=2).to_frame()
    assert list(logits["target"]) == ["logits", "logits"] and logits["target_layer"].isna().all()
    with pytest.raises(hz.InvalidOptionError, match="path_patch_heads"):
        hz.head_graph(model, path_effects=hz.patching.patch_heads(model, clean, corrupted, metric))


def test_head_graph_round_trip_and_refusals(tmp_path):
    spec = planted_spec(3, 4, 16, 0)
    model = cached_planted(spec)
    frame = pd.DataFrame({"source_layer": [0, 1], "source_head": [1, 2], "target_layer": [2, pd.NA], "target_head": [0, pd.NA],
                          "target": ["L2H0", "logits"], "kind": ["k", "logits"], "weight": [0.5, 1.25],
                          "evidence": ["composition", "path_patching"]})
    graph = hz.HeadGraph(frame, {"model": {"n_layers": 3, "n_heads": 4, "name": "<script>x</script>"}, "top_k": 2})
    back = hz.HeadGraph.load(graph.save(tmp_path / "g.parquet"))
    pd.testing.assert_frame_equal(back.to_frame(), graph.to_frame(), check_exact=True)
    assert back.meta == graph.meta and "<script>x" not in graph._repr_html_()
    assert len(graph.plot().data) == 3
    reads, writes = graph.edges_of(2, 0)
    assert len(reads) == 1 and len(writes) == 0
    with pytest.raises(hz.InvalidOptionError, match="needs a model"):
        hz.head_graph()
    with pytest.raises(hz.InvalidOptionError, match="top_k must be a positive integer"):
        hz.head_graph(model, top_k=0)
    with pytest.raises(hz.InvalidOptionError, match="has no \\['q', 'v'\\] scores"):
        hz.head_graph(model, composition=hz.composition_scores(model, "k", baseline=False))
    with pytest.raises(hz.InvalidOptionError, match="kinds"):
        hz.head_graph(model, kinds="qv")
    other = cached_planted(planted_spec(4, 4, 16, 0))
    with pytest.raises(hz.InvalidOptionError, match="model"):
        hz.head_graph(model, composition=hz.composition_scores(other, baseline=False))
