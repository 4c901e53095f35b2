"""The relation detector (MAPS, Elhelo and Geva 2025): weight-only relation heads.

Ground truth first (a planted relation head at random places, with random user pairs), then
what must not be flagged (copying, induction and successor heads on other relations), then
agreement with a brute-force computation of the same ranks, then the built-in relation lists
on real tokenizers (GPT-2's, vendored as test data, and headzoo's word tokenizer), then the
edges: bad options, the user's list untouched, conformance.
"""

from __future__ import annotations

import pytest
import torch
from _gpt2 import gpt2_tokenizer
from conftest import BACKENDS, cached_planted
from test_effective_embedding import random_model

import headzoo as hz
from headzoo._backends import build_model
from headzoo.testing import (
    RULES,
    PlantSpec,
    check_detector,
    planted_model,
    planted_state_dict,
    random_placements,
    word_tokenizer,
)

_BIG = pytest.mark.slow  # spreading 2000 token codes takes most of a minute on two cores
CASES = [
    # (n_layers, n_heads, d_head, d_vocab, seed): placements and pairs drawn from the seed
    pytest.param(2, 5, 64, 2000, 0, marks=_BIG),
    (5, 6, 32, 300, 1),
    pytest.param(3, 8, 16, 2000, 4, marks=_BIG),  # narrow heads: 8-dimensional token codes
    pytest.param(3, 8, 16, 200, 4, marks=_BIG),
    (4, 3, 32, 40, 6),  # small vocabulary
    (3, 4, 16, 14, 9),  # tiny vocabulary: k shrinks to 1
]

DETAIL_COLUMNS = ["layer", "head", "relation", "score", "suppression", "within", "n_pairs"]


def random_pairs(d_vocab: int, d_head: int, seed: int) -> list[tuple[int, int]]:
    """Between 2 and ``d_head // 2`` pairs with distinct random sources and random targets."""
    g = torch.Generator().manual_seed(1000 + seed)
    n = int(torch.randint(2, min(d_head // 2, d_vocab // 2) + 1, (1,), generator=g))
    ids = torch.randperm(d_vocab, generator=g)[: 2 * n].tolist()
    return list(zip(ids[:n], ids[n:]))


def planted(n_layers, n_heads, d_head, d_vocab, seed, backend="bridge"):
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=d_head >= 32, weights=True, relation=True)
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=32, seed=seed,
                     relation_pairs=tuple(random_pairs(d_vocab, d_head, seed)), **placements)
    return spec, cached_planted(spec, backend)


def ranked(scores, metric="score"):
    frame = scores.to_frame().query("detector == 'relation'").sort_values(metric, ascending=False, kind="stable")
    return [(int(r["layer"]), int(r["head"]), float(r[metric])) for _, r in frame.iterrows()]


# -- ground truth -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_layers,n_heads,d_head,d_vocab,seed", CASES)
def test_planted_relation_head_ranks_first_with_a_margin(n_layers, n_heads, d_head, d_vocab, seed, backend):
    spec, model = planted(n_layers, n_heads, d_head, d_vocab, seed, backend)
    pairs = list(spec.relations)
    scores = hz.detect(model, "relation", pairs=pairs)
    order = ranked(scores)
    assert order[0][:2] == spec.planted["relation"], order[:3]
    assert order[0][2] == 1.0 and order[0][2] > hz.get_detector("relation").threshold, order[:3]
    assert order[0][2] - order[1][2] > 0.3, order[:3]
    # the within-relation ranking agrees, and the planted head does not suppress its targets
    assert ranked(scores, "within")[0][:2] == spec.planted["relation"]
    assert scores.to_frame().set_index(["layer", "head"]).loc[spec.planted["relation"], "suppression"] == 0.0
    details = scores.details("relation")
    assert list(details.columns) == DETAIL_COLUMNS and set(details["relation"]) == {"pairs"}
    assert (details["n_pairs"] == len(pairs)).all()
    result = scores.meta["detectors"]["relation"]["result"]
    assert result["k"] == hz.rank_cutoff(10, d_vocab) and result["scored_relations"] == ["pairs"]
    print(f"\n[relation {seed}] {len(pairs)} pairs, margin {order[0][2] - order[1][2]:.2f}, runner-up {order[1]}")


@pytest.mark.skipif("hooked" not in BACKENDS, reason="HookedTransformer needs transformer-lens<4")
def test_same_numbers_on_both_model_classes():
    spec, bridge = planted(3, 4, 32, 300, 5, "bridge")
    _, hooked = planted(3, 4, 32, 300, 5, "hooked")
    a = hz.detect(bridge, "relation", pairs=list(spec.relations)).to_frame()
    b = hz.detect(hooked, "relation", pairs=list(spec.relations)).to_frame()
    numeric = a.columns.drop("detector")
    assert (a[numeric] - b[numeric]).abs().max().max() < 1e-9


# -- what is not a relation head ----------------------------------------------------------------

def test_copying_induction_and_successor_heads_are_not_relation_heads_for_other_relations():
    """A copying (or induction) head maps s -> s, so its source outranks any other target:
    it scores no pair. A successor head maps s -> successor(s): a relation head for the
    successor relation, and for no other."""
    spec = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=300, n_ctx=32, seed=3,
                     previous_token=(0, 0), induction=(2, 1), duplicate_token=(0, 1), copying=(1, 0),
                     successor=(1, 1), copy_suppression=(2, 2))
    model = cached_planted(spec)
    seq = spec.sequences[0]
    succession = list(zip(seq[:-1], seq[1:]))
    g = torch.Generator().manual_seed(7)
    others = [t for t in range(2, 300) if t not in seq]
    ids = torch.tensor(others)[torch.randperm(len(others), generator=g)[:24]].tolist()
    unrelated = list(zip(ids[:12], ids[12:]))
    frame = hz.detect(model, "relation", pairs=unrelated).to_frame().set_index(["layer", "head"])
    assert frame["score"].max() < 0.2, frame.sort_values("score").tail(3)
    assert frame["within"].max() < 0.5, frame.sort_values("within").tail(3)
    frame = hz.detect(model, "relation", pairs=succession).to_frame().set_index(["layer", "head"])
    assert frame.loc[(1, 1), "score"] == 1.0 and frame.loc[(1, 1), "within"] == 1.0
    for head in [(1, 0), (2, 1)]:  # copying, induction: the source itself comes first
        assert frame.loc[head, "score"] == 0.0 and frame.loc[head, "within"] == 0.0, (head, frame.loc[head])
    assert frame.drop(index=(1, 1))["score"].max() < 0.2
    # a copying head on copy pairs would be the copying detector's business: such pairs are refused
    with pytest.raises(hz.InvalidOptionError, match="copying"):
        hz.detect(model, "relation", pairs=[(5, 5), (6, 6)])


def test_a_head_that_maps_sources_away_from_their_targets_scores_on_suppression():
    """MAPS's suppression score: the same ranking with the head's OV circuit negated."""
    pairs = ((3, 9), (4, 11), (5, 2), (6, 12))
    spec = PlantSpec(n_layers=2, n_heads=3, d_head=32, d_vocab=16, n_ctx=16, seed=2, relation=(1, 2), relation_pairs=pairs)
    state = planted_state_dict(spec)
    state["blocks.1.attn.W_O"][2] *= -1
    model = build_model(spec.config(), state, backend="bridge")
    frame = hz.detect(model, "relation", pairs=list(pairs)).to_frame().set_index(["layer", "head"])
    assert frame.loc[(1, 2), "suppression"] == 1.0 and frame.loc[(1, 2), "score"] == 0.0
    assert frame.drop(index=(1, 2))["suppression"].max() < 0.5


def test_a_flat_head_ranks_no_target():
    """A head whose OV circuit is zero gives every output the same logit: ties count against."""
    pairs = ((3, 9), (4, 11), (5, 2))
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=32, d_vocab=16, n_ctx=16, seed=1, relation=(1, 1), relation_pairs=pairs)
    state = planted_state_dict(spec)
    state["blocks.1.attn.W_O"][1] = 0.0
    model = build_model(spec.config(), state, backend="bridge")
    frame = hz.detect(model, "relation", pairs=list(pairs)).to_frame().set_index(["layer", "head"])
    assert frame.loc[(1, 1)][["score", "suppression", "within"]].tolist() == [0.0, 0.0, 0.0]
    # the previous-token head writes where the unembedding does not read: flat too
    assert frame.loc[(0, 0)][["score", "suppression", "within"]].tolist() == [0.0, 0.0, 0.0]


# -- agreement with a brute-force computation ---------------------------------------------------

def brute_force_hits(model, pairs, k):
    """Every logit of every source row over the whole vocabulary (300), with the model's own modules."""
    unbias = lambda mod, x: mod(x[None])[0] - mod(torch.zeros_like(x[:1])[None])[0]  # noqa: E731
    src = torch.tensor([s for s, _ in pairs])
    tgt = torch.tensor([t for _, t in pairs])
    ee = hz.effective_embedding(model, src)
    tokens = sorted({*src.tolist(), *tgt.tolist()})
    rivals = torch.ones(len(pairs), 300, dtype=torch.bool)  # the relation's own tokens ...
    rivals[:, [t for t in range(300) if t not in tokens]] = False
    for i, (s, _) in enumerate(pairs):  # ... less every true target of the source
        rivals[i, [t for s2, t in pairs if s2 == s]] = False
    hits, supp, within = [], [], []
    for layer in range(model.cfg.n_layers):
        x = unbias(model.blocks[layer].ln1, ee)
        out = torch.einsum("nd,hde,hef->hnf", x, model.W_V[layer], model.W_O[layer])  # [head, pair, d_model]
        final = torch.stack([unbias(model.ln_final, o) for o in out])
        logits = final.double() @ model.W_U.double()  # [head, pair, vocab]
        own = logits[:, torch.arange(len(pairs)), tgt]
        others = torch.ones_like(logits, dtype=torch.bool)
        others[:, torch.arange(len(pairs)), tgt] = False
        hits.append((((logits > own[..., None]) & others).sum(-1) < k).double().mean(-1))
        supp.append((((logits < own[..., None]) & others).sum(-1) < k).double().mean(-1))
        within.append((own > logits.masked_fill(~rivals, float("-inf")).amax(-1)).double().mean(-1))
    return torch.stack(hits), torch.stack(supp), torch.stack(within)  # [layer, head]


@pytest.mark.parametrize("chunk_bytes", [24 * 2**20, 4096])
def test_scores_equal_a_brute_force_computation(chunk_bytes):
    model = random_model("bridge", seed=3, normalization_type="LN", d_vocab=300)
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(300, generator=g)[:40].tolist()
    pairs = list(zip(ids[:20], ids[20:])) + [(ids[0], ids[25])]  # a source with two targets
    det = hz.get_detector("relation", pairs=pairs, k=3)
    with torch.no_grad():
        out = det.compute(model, circuits=hz.WeightCircuits(model, chunk_bytes=chunk_bytes))
        hits, supp, within = brute_force_hits(model, pairs, k=3)
    assert torch.equal(out.metrics["score"], hits), (out.metrics["score"], hits)
    assert torch.equal(out.metrics["suppression"], supp)
    assert torch.equal(out.metrics["within"], within), (out.metrics["within"], within)
    assert hits.max() > 0 and supp.max() > 0 and within.max() > 0  # the comparison is not vacuous
    assert out.meta["k"] == 3 and out.meta["n_pairs"] == 21


def test_logits_equal_the_workspace_ov_logits():
    """The detector forms its logits from the workspace's values and readout; they must be
    WeightCircuits.ov_logits' (guards against the two drifting apart)."""
    from importlib import import_module

    module = import_module(type(hz.get_detector("relation")).__module__)
    model = random_model("bridge", seed=5, normalization_type="LN", d_vocab=120)
    circuits = hz.WeightCircuits(model)
    ids = torch.tensor([3, 17, 40, 99])
    x = circuits.embedding(ids, "mlp0")
    cols = torch.arange(120)
    for layer in range(2):
        mine = module._logits(circuits.ov_values(layer, x), module._w_o(circuits, layer), module._readout(circuits, cols))
        torch.testing.assert_close(mine, circuits.ov_logits(layer, x, cols), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module._readout(circuits, slice(0, 120)), module._readout(circuits, cols))


def test_no_vocab_by_vocab_array_is_ever_formed():
    """Record the size of every tensor torch produces while the detector runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab = 20000
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(vocab, generator=g)[:600].tolist()
    pairs = list(zip(ids[:300], ids[300:]))
    spec = PlantSpec(n_layers=2, n_heads=4, d_head=16, d_vocab=vocab, n_ctx=16, seed=0, relation=(1, 2),
                     relation_pairs=tuple(pairs[:8]))
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
        scores = hz.detect(model, "relation", pairs=pairs)
    assert Largest.numel < vocab * vocab / 50, Largest.numel
    details = scores.details("relation").set_index(["layer", "head"])
    assert details.loc[(1, 2), "score"] >= 8 / 300  # the 8 planted pairs (of 300) hit
    print(f"\n[memory] largest tensor {Largest.numel} elements vs vocab^2 = {vocab * vocab}")


# -- built-in relations on real tokenizers ------------------------------------------------------

#: measured on GPT-2's tokenizer (tests/data/gpt2): relation -> (listed, ' X' form, 'X' form, pairs)
GPT2_SURVIVAL = {
    "antonyms": (152, 152, 98, 250),
    "capitalisation": (124, 124, 119, 243),
    "country_capital": (88, 42, 3, 45),
    "plural": (95, 94, 44, 138),
    "successor": (103, 103, 88, 191),
}


def test_builtin_relations_on_the_gpt2_tokenizer():
    tok = gpt2_tokenizer()
    table = hz.relation_survival(tok, n_vocab=50257).set_index("relation")
    assert list(table.columns) == ["listed", "space", "bare", "collapsed", "pairs"]
    for name, (listed, space, bare, pairs) in GPT2_SURVIVAL.items():
        assert tuple(table.loc[name, ["listed", "space", "bare", "pairs"]]) == (listed, space, bare, pairs), table
    assert (table["collapsed"] == 0).all()  # GPT-2 keeps case: the -> The are two tokens
    rel = hz.relation_pairs(tok, "country_capital")["country_capital"]
    where = dict(zip(rel.words, rel.pairs))
    assert where[(" France", " Paris")] == (4881, 6342) and where[("France", "Paris")] == (28572, 40313)
    assert all(len(tok.encode(a)) == 1 and len(tok.encode(b)) == 1 for a, b in rel.words)
    # ids beyond the model's real vocabulary are not ordinary tokens
    small = hz.relation_survival(tok, "successor", n_vocab=1000).set_index("relation")
    assert small.loc["successor", "pairs"] < GPT2_SURVIVAL["successor"][3]


def test_builtin_relations_on_a_word_tokenizer():
    words = ["Monday", "Tuesday", "Wednesday", "one", "two", "three", "dog", "dogs", "cat", "cats", "hot", "cold",
             "Paris", "France"]
    table = hz.relation_survival(word_tokenizer(words)).set_index("relation")
    # a word tokenizer ignores the leading space: both forms give the same ids, counted once
    assert table.loc["successor"].tolist() == [103, 4, 4, 0, 4]  # Mon->Tue, Tue->Wed, one->two, two->three
    assert table.loc["plural"].tolist() == [95, 2, 2, 0, 2]
    assert table.loc["antonyms"].tolist() == [152, 2, 2, 0, 2]  # hot <-> cold, both directions
    assert table.loc["country_capital"].tolist() == [88, 1, 1, 0, 1]
    assert table.loc["capitalisation"].tolist() == [124, 0, 0, 0, 0]
    # headzoo's default word tokenizer (tok0, tok1, ...) spells no built-in pair
    assert (hz.relation_survival(word_tokenizer([f"tok{i}" for i in range(20)]))["pairs"] == 0).all()


def test_a_lower_casing_tokenizer_collapses_capitalisation():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "the": 1, "of": 2, "and": 3, "dog": 4, "dogs": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    table = hz.relation_survival(tok).set_index("relation")
    assert table.loc["capitalisation", ["space", "bare", "collapsed", "pairs"]].tolist() == [3, 3, 6, 0]
    assert table.loc["plural", "pairs"] == 1


def test_builtin_relations_find_a_planted_head_through_the_gpt2_tokenizer():
    """End to end: plant a head that maps GPT-2's countries to their capitals, in a model with
    GPT-2's vocabulary and tokenizer, and let the detector find it from the built-in lists."""
    tok = gpt2_tokenizer()
    capitals = hz.relation_pairs(tok, "country_capital")["country_capital"].pairs
    spec = PlantSpec(n_layers=2, n_heads=2, d_head=96, d_vocab=len(tok), n_ctx=16, seed=0, previous_token=(0, 0),
                     induction=(1, 0), relation=(1, 1), relation_pairs=capitals, attn_only=True)
    model = planted_model(spec, tokenizer=tok)
    scores = hz.detect(model, "relation", relations=["country_capital", "plural", "successor"])
    details = scores.details("relation").set_index(["layer", "head", "relation"])
    assert details.loc[(1, 1, "country_capital"), "score"] == 1.0
    assert details.loc[(1, 1, "plural"), "score"] < 0.1 and details.loc[(1, 1, "successor"), "score"] < 0.1
    assert ranked(scores)[0][:2] == (1, 1) and ranked(scores)[1][2] < 0.2
    result = scores.meta["detectors"]["relation"]["result"]
    assert result["scored_relations"] == ["country_capital", "plural", "successor"]
    counts = {c["relation"]: c for c in result["relations"]}
    assert counts["country_capital"]["space"] == 42 and counts["country_capital"]["pairs"] == 45


def test_relations_too_small_for_the_tokenizer_are_skipped_and_reported():
    model = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=20, n_ctx=16), "bridge", True)
    with pytest.raises(hz.DetectorNotApplicableError, match=r"pairs=\[\(source_id, target_id\)"):
        hz.detect(model, "relation")  # a tok0, tok1, ... vocabulary spells no built-in pair
    bare = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=20, n_ctx=16))
    with pytest.raises(hz.DetectorNotApplicableError, match="no tokenizer"):
        hz.detect(bare, "relation")
    with pytest.warns(UserWarning, match="relation"):
        scores = hz.detect(bare, n_prompts=2)  # all detectors: skipped, not fatal
    assert "relation" not in scores.detectors and "pairs=" in scores.meta["skipped_detectors"]["relation"]
    words = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "dog", "dogs"]
    model = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(words) + 2, n_ctx=16),
                          tokenizer=word_tokenizer(words))
    result = hz.detect(model, "relation").meta["detectors"]["relation"]["result"]
    assert result["scored_relations"] == ["successor"]  # 7 day pairs, Sunday -> Monday included
    assert "1 of 95 pairs" in result["skipped_relations"]["plural"] and "min_pairs=5" in result["skipped_relations"]["plural"]


def test_min_pairs_can_leave_nothing_to_score():
    words = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    model = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=len(words) + 2, n_ctx=16),
                          tokenizer=word_tokenizer(words))
    assert hz.detect(model, "relation", min_pairs=7).meta["detectors"]["relation"]["result"]["n_pairs"] == 7
    with pytest.raises(hz.DetectorNotApplicableError, match="successor: 7 of 103 pairs.*min_pairs=8"):
        hz.detect(model, "relation", min_pairs=8)


# -- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pairs,match", [
    ("12", "list of"),
    ({1: 2, 3: 4}, "list of"),
    (7, "list of"),
    ([(1, 2), (3,)], r"pairs\[1\] = \(3,\)"),
    ([(1, 2), (3, 4.0)], r"pairs\[1\] = \(3, 4.0\)"),
    ([(1, 2), (True, 4)], r"pairs\[1\] = \(True, 4\)"),
    ([(1, 2), (3, -4)], "negative"),
    ([(1, 2), (3, 3)], r"pairs\[1\] = \(3, 3\) maps a token to itself"),
    ([(1, 2), (3, 4), (1, 2)], r"pairs\[2\] = \(1, 2\) repeats pairs\[0\]"),
    ([(1, 2)], "at least 2"),
    ([], "at least 2"),
])
def test_bad_pairs_are_refused_naming_the_pair(pairs, match):
    with pytest.raises(hz.InvalidOptionError, match=match):
        hz.get_detector("relation", pairs=pairs)


def test_other_bad_options_are_refused():
    relation = type(hz.get_detector("relation"))
    model = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=20, n_ctx=16))
    with pytest.raises(hz.InvalidOptionError, match=r"pairs\[1\] = \(3, 25\) holds an id outside .*\[0, 19\]"):
        hz.detect(model, "relation", pairs=[(1, 2), (3, 25)])
    with pytest.raises(hz.InvalidOptionError, match=r"unknown relation\(s\) \['capitals'\].*country_capital"):
        relation(relations=["capitals"])
    with pytest.raises(hz.InvalidOptionError, match="non-empty list"):
        relation(relations=[])
    with pytest.raises(hz.InvalidOptionError, match="not both"):
        relation(pairs=[(1, 2), (3, 4)], relations="plural")
    for option, value in [("k", 0), ("k", True), ("k", 2.5), ("min_pairs", 1)]:
        with pytest.raises(hz.InvalidOptionError, match=option):
            relation(**{option: value})
    with pytest.raises(hz.InvalidOptionError, match="unknown relation"):
        hz.relation_pairs(gpt2_tokenizer(), ["nope"])
    assert relation(relations="plural").relations == ("plural",)


def test_the_users_pairs_are_not_mutated_and_any_sequence_form_works():
    spec, model = planted(3, 4, 32, 16, 2)
    given = [list(p) for p in spec.relations]
    snapshot = [list(p) for p in given]
    items = [id(p) for p in given]
    scores = hz.detect(model, "relation", pairs=given)
    assert given == snapshot and [id(p) for p in given] == items
    det = hz.get_detector("relation", pairs=given)
    assert det.pairs == tuple(tuple(p) for p in snapshot) and hash(det) == hash(hz.get_detector("relation", pairs=given))
    assert scores.meta["detectors"]["relation"]["options"]["pairs"] == snapshot
    for form in (torch.tensor(snapshot), tuple(map(tuple, snapshot)), __import__("numpy").array(snapshot)):
        other = hz.detect(model, "relation", pairs=form).to_frame()
        assert other.drop(columns="detector").equals(scores.to_frame().drop(columns="detector"))


def test_details_survive_save_and_load(tmp_path):
    spec, model = planted(3, 4, 32, 16, 2)
    scores = hz.detect(model, ["relation", "copying"], pairs=list(spec.relations))
    back = hz.HeadScores.load(scores.save(tmp_path / "s.parquet"))
    assert back.details("relation").equals(scores.details("relation"))
    assert back.to_frame().equals(scores.to_frame()) and back.meta == scores.meta


def test_planting_a_relation_head_changes_no_other_weight():
    """The relation role draws no random numbers: every tensor but the relation head's own
    query, key and output weights is what the same spec builds without it."""
    base = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=16, n_ctx=32, seed=5, copying=(1, 2), successor=(2, 2))
    with_relation = PlantSpec(**{**{f: getattr(base, f) for f in ("n_layers", "n_heads", "d_head", "d_vocab", "n_ctx",
                                                                      "seed", "copying", "successor")},
                                 "relation": (2, 3)})
    a, b = planted_state_dict(base), planted_state_dict(with_relation)
    assert a.keys() == b.keys()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {f"blocks.2.attn.{w}" for w in ("W_Q", "W_K", "W_V", "W_O")}
    for w in ("W_Q", "W_K", "W_V", "W_O"):
        keep = [h for h in range(4) if h != 3]
        assert torch.equal(a[f"blocks.2.attn.{w}"][keep], b[f"blocks.2.attn.{w}"][keep])
    placements = [random_placements(4, 5, s, weights=True) for s in range(10)]
    with_rel = [random_placements(4, 5, s, weights=True, relation=True) for s in range(10)]
    assert all({k: v for k, v in r.items() if k != "relation"} == p for p, r in zip(placements, with_rel))
    assert all(r["relation"] not in p.values() for p, r in zip(placements, with_rel))
    with pytest.raises(ValueError, match="distinct sources"):
        PlantSpec(relation=(1, 1), relation_pairs=((3, 4), (3, 5)))
    with pytest.raises(ValueError, match="to itself"):
        PlantSpec(relation=(1, 1), relation_pairs=((3, 3),))


def test_conformance():
    relation = type(hz.get_detector("relation"))
    report = check_detector(relation)  # the default models' tokenizer spells the days: successor
    assert set(report.passed) == set(RULES) - {"batch_size_invariance"}
    assert "no batch_size option" in report.skipped["batch_size_invariance"]  # nothing is batched
    assert check_detector(relation, options={"pairs": [(2, 3), (4, 5), (6, 7)], "k": 2}).passed
