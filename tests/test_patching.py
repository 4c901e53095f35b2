"""Activation patching equals TransformerLens' on the same model and tokens, and says why not."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

import headzoo as hz

from conftest import BACKENDS, cached_planted
from headzoo.testing import PlantSpec

SPEC = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=32, previous_token=(0, 1),
                 induction=(2, 0), duplicate_token=(1, 2), seed=3)

# headzoo kind, by_pos -> the TransformerLens function computing the same patch
TL_FUNCTIONS = {
    ("z", False): "get_act_patch_attn_head_out_all_pos",
    ("z", True): "get_act_patch_attn_head_out_by_pos",
    ("q", False): "get_act_patch_attn_head_q_all_pos",
    ("q", True): "get_act_patch_attn_head_q_by_pos",
    ("k", False): "get_act_patch_attn_head_k_all_pos",
    ("k", True): "get_act_patch_attn_head_k_by_pos",
    ("v", False): "get_act_patch_attn_head_v_all_pos",
    ("v", True): "get_act_patch_attn_head_v_by_pos",
    ("pattern", False): "get_act_patch_attn_head_pattern_all_pos",
    ("pattern", True): "get_act_patch_attn_head_pattern_by_pos",
    ("resid_pre", False): "get_act_patch_resid_pre",
    ("resid_mid", False): "get_act_patch_resid_mid",
    ("attn_out", False): "get_act_patch_attn_out",
    ("mlp_out", False): "get_act_patch_mlp_out",
}


def induction_task(n: int = 3, half: int = 6, seed: int = 0):
    """Clean ``[BOS] r r``; corrupted replaces the first half, so only the clean run can copy."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(2, SPEC.d_vocab, (n, half), generator=g)
    bos = torch.zeros(n, 1, dtype=torch.long)
    clean = torch.cat([bos, r, r], 1)
    corrupted = torch.cat([bos, torch.randint(2, SPEC.d_vocab, (n, half), generator=g), r], 1)
    target_pos = half + 2  # predicts r[:, 2] after seeing r[:, 1] the second time
    return clean, corrupted, r[:, 2], target_pos


def pattern_edits_reach_the_output(model, tokens) -> bool:
    """False on TransformerLens 3.x bridges, whose attention ignores an edited hook_pattern."""
    with torch.no_grad():
        base = model(tokens)
        last = f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"
        edited = model.run_with_hooks(tokens, fwd_hooks=[(last, lambda p, hook: p * 0 + 0.1)])
    return not torch.equal(base, edited)


def as_tensor(effects: hz.HeadEffects, shape: tuple[int, ...]) -> torch.Tensor:
    frame = effects.to_frame()
    out = torch.full(shape, float("nan"), dtype=torch.float64)
    index = torch.tensor(frame[effects.index_columns].to_numpy())
    out[tuple(index.T)] = torch.tensor(frame["effect"].to_numpy())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,by_pos", list(TL_FUNCTIONS))
def test_equals_transformer_lens(backend, kind, by_pos):
    model = cached_planted(SPEC, backend)
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    if kind == "pattern" and not pattern_edits_reach_the_output(model, clean):
        with pytest.raises(hz.UnsupportedModelError, match="hook_pattern"):
            hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos)
        return
    _, cache = model.run_with_cache(clean)
    reference = getattr(tl_patching, TL_FUNCTIONS[(kind, by_pos)])(model, corrupted, cache, metric).double()
    effects = hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos, progress=False)
    mine = as_tensor(effects, tuple(reference.shape))
    assert not torch.isnan(mine).any()
    assert (mine - reference).abs().max() < 1e-4


def test_batching_and_layer_reuse_do_not_change_numbers():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos, per_example=True)
    wide = hz.patching.patch_heads(model, clean, corrupted, metric, by_pos=True, per_example=True)
    narrow = hz.patching.patch_heads(model, clean, corrupted, metric, by_pos=True, per_example=True, memory_mb=1e-6)
    assert wide.meta["engine"]["patches_per_forward"] > 1 and narrow.meta["engine"]["patches_per_forward"] == 1
    assert (wide.to_frame()["effect"] - narrow.to_frame()["effect"]).abs().max() < 1e-5


def test_the_planted_induction_head_carries_the_answer():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task(n=8)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos, per_example=True)
    effects = hz.patching.patch_heads(model, clean, corrupted, metric, per_example=True)
    top = effects.top(1)
    assert (top.loc[0, "layer"], top.loc[0, "head"]) == SPEC.induction
    normalized = effects.normalized()
    frame = effects.to_frame()
    is_induction = (frame["layer"] == SPEC.induction[0]) & (frame["head"] == SPEC.induction[1])
    assert normalized[is_induction].iloc[0] > 0.5 and normalized[~is_induction].abs().max() < 0.3
    row = frame[is_induction].iloc[0]
    assert row["ci_low"] <= row["effect"] <= row["ci_high"] and row["stderr"] > 0


def test_logits_only_where_the_metric_reads_them():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, answer + 1, pos=pos)
    everywhere = hz.patching.patch_heads(model, clean, corrupted, metric, positions=None)
    auto = hz.patching.patch_heads(model, clean, corrupted, metric)
    explicit = hz.patching.patch_heads(model, clean, corrupted, metric, positions=[pos])
    assert everywhere.meta["engine"]["read_positions"] is None
    assert auto.meta["engine"]["read_positions"] == [pos] == explicit.meta["engine"]["read_positions"]
    for other in (auto, explicit):
        assert (everywhere.to_frame()["effect"] - other.to_frame()["effect"]).abs().max() < 1e-5
    with pytest.raises(hz.InvalidOptionError, match="outside positions"):
        hz.patching.patch_heads(model, clean, corrupted, metric, positions=[0])
    # a metric that reads every position, or one without a gradient, gets every position
    whole = hz.patching.patch_heads(model, clean, corrupted, lambda logits: logits.mean())
    argmax = hz.patching.patch_heads(model, clean, corrupted, lambda logits: (logits[:, pos].argmax(-1) == answer).float().mean())
    assert whole.meta["engine"]["read_positions"] is None and argmax.meta["engine"]["read_positions"] is None


def test_noising_patches_the_other_way():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, answer + 1, pos=pos)
    noised = hz.patching.patch_heads(model, clean, corrupted, metric, direction="noise")
    denoised_swapped = hz.patching.patch_heads(model, corrupted, clean, metric)
    assert noised.to_frame()["effect"].equals(denoised_swapped.to_frame()["effect"])
    assert noised.meta["baseline"] == denoised_swapped.meta["baseline"]


def test_results_round_trip_and_render(tmp_path):
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    effects = hz.patching.patch_heads(model, clean, corrupted, hz.patching.logit_diff(answer, answer + 1, pos=pos, per_example=True), per_example=True)
    back = hz.HeadEffects.load(effects.save(tmp_path / "e.parquet"))
    assert back.to_frame().equals(effects.to_frame()) and back.meta == effects.meta
    assert back.per_example().equals(effects.per_example())
    assert "<script" not in effects._repr_html_()
    assert effects.plot().data[0].type == "heatmap"


def test_clear_errors():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, answer + 1, pos=pos)
    with pytest.raises(hz.InvalidTokensError, match="same shape"):
        hz.patching.patch_heads(model, clean, corrupted[:, :-1], metric)
    with pytest.raises(hz.InvalidOptionError, match="scalar"):
        hz.patching.patch_heads(model, clean, corrupted, lambda logits: logits[:, -1, 0])
    with pytest.raises(hz.InvalidOptionError, match="one value per example"):
        hz.patching.patch_heads(model, clean, corrupted, metric, per_example=True)
    with pytest.raises(hz.InvalidOptionError, match="out of range"):
        hz.patching.patch_heads(model, clean, corrupted, metric, layers=[7])
    with pytest.raises(hz.InvalidOptionError, match="kind"):
        hz.patching.patch(model, clean, corrupted, metric, kind="zz")
    with pytest.raises(hz.InvalidTokensError, match="vocabulary"):
        hz.patching.patch_heads(model, clean + 1000, corrupted, metric)
    before = clean.clone()
    hz.patching.patch_heads(model, clean, corrupted, metric, layers=[0])
    assert torch.equal(clean, before)
    assert all(not h._forward_hooks for h in model.hook_dict.values())


# -- attribution patching -------------------------------------------------------------------


@pytest.mark.parametrize("by_pos", [False, True])
def test_attribution_ranks_like_exact_patching(by_pos):
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task(n=8)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    exact = hz.patching.patch_heads(model, clean, corrupted, metric, by_pos=by_pos).to_frame()
    approx = hz.patching.attribution_patch_heads(model, clean, corrupted, metric, by_pos=by_pos).to_frame()
    assert exact[["layer", "head"]].equals(approx[["layer", "head"]])
    rho = exact["effect"].rank().corr(approx["effect"].rank())
    r = exact["effect"].corr(approx["effect"])
    print(f"\n[attribution planted by_pos={by_pos}] Spearman rank correlation with exact patching: {rho:.3f} (Pearson {r:.3f})")
    # most heads do nothing here, so their ranks are noise; the values must still line up
    assert r > 0.9 and rho > 0.3
    top_exact = exact.loc[(exact["effect"] - exact["effect"].median()).abs().idxmax(), ["layer", "head"]].tolist()
    top_approx = approx.loc[(approx["effect"] - approx["effect"].median()).abs().idxmax(), ["layer", "head"]].tolist()
    assert top_exact == top_approx == list(SPEC.induction)


def test_attribution_on_a_random_model_and_its_bookkeeping():
    from test_effective_embedding import random_model

    model = random_model("bridge", seed=3, normalization_type="LN", d_vocab=50)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (6, 10), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = torch.randint(0, 50, (6,), generator=g)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1], per_example=True)  # depends on the inputs
    exact = hz.patching.patch_heads(model, clean, corrupted, metric, per_example=True)
    approx = hz.patching.attribution_patch_heads(model, clean, corrupted, metric, per_example=True)
    rho = exact.to_frame()["effect"].rank().corr(approx.to_frame()["effect"].rank())
    print(f"\n[attribution random model] Spearman rank correlation with exact patching: {rho:.3f}")
    assert rho > 0.3
    assert approx.meta["baseline"] == pytest.approx(exact.meta["baseline"], abs=1e-5)
    assert approx.meta["method"] == "attribution" and exact.meta["method"] == "exact"
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


# -- ablation ---------------------------------------------------------------------------------


def by_hand_zero(model, heads):
    """Zero ablation written out with plain TransformerLens hooks."""
    def make(hs):
        def hook(z, hook):
            z = z.clone()
            z[:, :, hs] = 0
            return z
        return hook
    layers = {}
    for layer, head in heads:
        layers.setdefault(layer, []).append(head)
    return [(f"blocks.{layer}.attn.hook_z", make(hs)) for layer, hs in layers.items()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_ablation_equals_hand_written_hooks_and_finds_the_copier(backend):
    model = cached_planted(SPEC, backend)
    clean, _, answer, pos = induction_task(n=8)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    with torch.no_grad():
        intact = float(metric(model(clean)))
        for heads in ([SPEC.induction], [(1, 3)], [(0, 0), (2, 2)]):
            with hz.ablate(model, heads, method="zero"):
                ours = model(clean)
            theirs = model.run_with_hooks(clean, fwd_hooks=by_hand_zero(model, heads))
            assert (ours - theirs).abs().max() < 1e-5
        with hz.ablate(model, [SPEC.induction]):
            broken = float(metric(model(clean)))
        with hz.ablate(model, [(1, 3)]):
            kept = float(metric(model(clean)))
    assert intact > 0.5 and broken < 0.2 * intact and kept > 0.8 * intact, (intact, broken, kept)


def test_every_method_runs_and_the_hooks_go_away_even_after_an_error():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task(n=4)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    hooks_before = {name: (len(h._forward_hooks), len(getattr(h, "fwd_hooks", []))) for name, h in model.hook_dict.items()}
    with torch.no_grad():
        intact = float(metric(model(clean)))
        for method in ("zero", "mean", "resample", "uniform"):
            with hz.ablate(model, [SPEC.induction], method=method, reference_tokens=corrupted):
                assert float(metric(model(clean))) < 0.5 * intact, method
        with pytest.raises(RuntimeError, match="boom"):
            with hz.ablate(model, [SPEC.induction]):
                raise RuntimeError("boom")
    after = {name: (len(h._forward_hooks), len(getattr(h, "fwd_hooks", []))) for name, h in model.hook_dict.items()}
    assert after == hooks_before
    with torch.no_grad():
        assert float(metric(model(clean))) == pytest.approx(intact)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_ablation_equals_uniform_attention(backend):
    """The head's output must be what a uniform causal pattern gives: the running mean of v."""
    model = cached_planted(SPEC, backend)
    clean, *_ = induction_task(n=2)
    layer, head = SPEC.induction
    seen = {}

    def grab(name):
        def hook(act, hook):
            seen[name] = act.detach().clone()
        return hook

    hooks = hz.ablation_hooks(model, [SPEC.induction], "uniform")
    hooks += [(f"blocks.{layer}.attn.hook_v", grab("v")), (f"blocks.{layer}.attn.hook_z", grab("z"))]
    with torch.no_grad():
        model.run_with_hooks(clean, fwd_hooks=hooks)
        intact = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", grab("z0"))])
    seq = clean.shape[1]
    uniform = torch.ones(seq, seq).tril() / torch.arange(1, seq + 1)[:, None]
    want = torch.einsum("qk,bkd->bqd", uniform, seen["v"][:, :, head])
    assert torch.allclose(seen["z"][:, :, head], want, atol=1e-5)
    other = [h for h in range(SPEC.n_heads) if h != head]
    assert torch.equal(seen["z"][:, :, other], seen["z0"][:, :, other])


def test_ablation_errors():
    model = cached_planted(SPEC, "bridge")
    with pytest.raises(hz.InvalidOptionError, match="outside the model"):
        hz.ablation_hooks(model, [(9, 0)])
    with pytest.raises(hz.InvalidOptionError, match="method"):
        hz.ablation_hooks(model, [(0, 0)], "erase")
    with pytest.raises(hz.InvalidOptionError, match="reference_tokens"):
        hz.ablation_hooks(model, [(0, 0)], "mean")
    with pytest.raises(hz.InvalidOptionError, match="pairs"):
        hz.ablation_hooks(model, [0, 1])
    with pytest.raises(hz.InvalidTokensError, match="one"):
        with torch.no_grad(), hz.ablate(model, [(0, 0)], "resample"):
            model(torch.tensor([[0, 5, 6]]))


@pytest.mark.parametrize("kind,tl_name", [("k", "get_act_patch_attn_head_k_all_pos"), ("v", "get_act_patch_attn_head_v_by_pos"),
                                          ("z", "get_act_patch_attn_head_out_all_pos"), ("q", "get_act_patch_attn_head_q_all_pos")])
def test_grouped_query_models_are_patched_like_transformer_lens(kind, tl_name):
    from test_effective_embedding import random_model

    model = random_model("bridge", seed=5, normalization_type="RMS", n_key_value_heads=2, positional_embedding_type="rotary")
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 50, (3, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 50, (3,), generator=g)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    _, cache = model.run_with_cache(clean)
    reference = getattr(tl_patching, tl_name)(model, corrupted, cache, metric).double()
    effects = hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos="by_pos" in tl_name)
    assert (as_tensor(effects, tuple(reference.shape)) - reference).abs().max() < 1e-4
    if kind in ("k", "v"):
        assert effects.to_frame()["kv_head"].max() == 1  # two key-value heads, as TransformerLens indexes them


def test_a_model_without_the_hook_is_refused():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()

    class Hidden:  # the same model, minus every hook_z
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name == "hook_dict":
                return {k: v for k, v in self._inner.hook_dict.items() if not k.endswith("hook_z")}
            return getattr(self._inner, name)

        def __call__(self, *args, **kwargs):
            return self._inner(*args, **kwargs)

    with pytest.raises(hz.MissingHooksError, match="hook_z"):
        hz.patching.patch_heads(Hidden(model), clean, corrupted, hz.patching.logit_diff(answer, answer + 1, pos=pos))


# -- prefix reuse ---------------------------------------------------------------------------------

GQA_ROTARY = dict(normalization_type="RMS", n_key_value_heads=2, positional_embedding_type="rotary")


def corrupt_from(clean: torch.Tensor, where: str, seed: int = 4) -> torch.Tensor:
    """``clean`` with new tokens at position 0, in the middle (two positions, IOI-like) or at
    the last position only."""
    g = torch.Generator().manual_seed(seed)
    corrupted = clean.clone()
    seq = clean.shape[1]
    at = {"start": [0, seq // 2], "middle": [seq // 2, seq - 1], "last": [seq - 1]}[where]
    for pos in at:
        corrupted[:, pos] = (clean[:, pos] + 1 + torch.randint(0, 40, (clean.shape[0],), generator=g)) % 50
    return corrupted


def without_attention_input_hooks(model):
    """The same model, hiding the hooks prefix reuse reads the prefix through."""

    class Hidden:
        def __getattr__(self, name):
            if name == "hook_dict":
                return {k: v for k, v in model.hook_dict.items() if not k.endswith(("attn.hook_in", "ln1.hook_normalized"))}
            return getattr(model, name)

        def __call__(self, *args, **kwargs):
            return model(*args, **kwargs)

    return Hidden()


# every kind on a GPT-2-like model, the attention kinds again on a grouped-query rotary one
PREFIX_CASES = [("LN", kind, by_pos) for kind, by_pos in TL_FUNCTIONS] + [
    ("GQA_ROTARY", kind, by_pos) for kind, by_pos in [("z", True), ("q", True), ("k", False), ("v", True), ("pattern", True), ("resid_pre", False)]
]


@pytest.mark.parametrize("config,kind,by_pos", PREFIX_CASES)
def test_prefix_reuse_equals_transformer_lens(config, kind, by_pos):
    """Corrupted from the middle on: patched runs compute the suffix only, same numbers."""
    from test_effective_embedding import random_model

    extra = GQA_ROTARY if config == "GQA_ROTARY" else dict(normalization_type="LN")
    model = random_model("bridge", seed=5, n_ctx=24, **extra)
    clean = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    corrupted = corrupt_from(clean, "middle")
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    if kind == "pattern" and not pattern_edits_reach_the_output(model, clean):  # TransformerLens 3.x bridges
        with pytest.raises(hz.UnsupportedModelError, match="hook_pattern"):
            hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos)
        return
    _, cache = model.run_with_cache(clean)
    reference = getattr(tl_patching, TL_FUNCTIONS[(kind, by_pos)])(model, corrupted, cache, metric).double()
    effects = hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos, progress=False)
    engine = effects.meta["engine"]
    assert engine["prefix_reused"] == engine["first_difference"] == 4 and "prefix_not_reused" not in engine
    assert (as_tensor(effects, tuple(reference.shape)) - reference).abs().max() < 1e-4
    if kind in ("resid_pre", "resid_mid", "attn_out", "mlp_out"):
        # patches before the first difference write the run's own values: the baseline, not rerun
        assert engine["prefix_patches_baseline"] == 4 * model.cfg.n_layers
        inside = effects.to_frame().query("pos < 4")["effect"]
        assert (inside == effects.meta["baseline"]).all()


@pytest.mark.parametrize("where,reused", [("start", 0), ("last", 7)])
@pytest.mark.parametrize("kind,by_pos", [("z", False), ("z", True), ("resid_pre", False), ("pattern", True)])
def test_prefix_reuse_at_either_end(where, reused, kind, by_pos):
    from test_effective_embedding import random_model

    model = random_model("bridge", seed=3, n_ctx=24, normalization_type="LN")
    clean = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(7))
    corrupted = corrupt_from(clean, where)
    # reads every position: the logits inside the prefix come from the unpatched run
    metric = lambda logits: logits[..., 3].mean() - logits[..., 5].mean()  # noqa: E731
    if kind == "pattern" and not pattern_edits_reach_the_output(model, clean):  # TransformerLens 3.x bridges
        with pytest.raises(hz.UnsupportedModelError, match="hook_pattern"):
            hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos)
        return
    _, cache = model.run_with_cache(clean)
    reference = getattr(tl_patching, TL_FUNCTIONS[(kind, by_pos)])(model, corrupted, cache, metric).double()
    effects = hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=by_pos, progress=False)
    assert effects.meta["engine"]["prefix_reused"] == reused
    assert effects.meta["engine"]["read_positions"] is None
    if reused == 0:
        assert effects.meta["engine"]["prefix_not_reused"] == "clean and corrupted differ at position 0"
    assert (as_tensor(effects, tuple(reference.shape)) - reference).abs().max() < 1e-4


def test_prefix_reuse_with_ragged_rows_and_a_fallback_with_the_same_numbers():
    """Rows of different lengths share the prefix before the batch's first difference; a model
    without the hooks to read the prefix falls back, says why, and gives the same numbers."""
    from test_effective_embedding import random_model

    model = random_model("bridge", seed=5, n_ctx=24, **GQA_ROTARY)
    g = torch.Generator().manual_seed(9)
    clean = [torch.randint(0, 50, (n,), generator=g) for n in (9, 12, 7)]
    corrupted = [c.clone() for c in clean]
    for c, at in zip(corrupted, (5, 8, 6)):
        c[at] = (c[at] + 7) % 50
    correct = torch.tensor([int(c[0]) for c in clean])
    wrong = torch.tensor([int(c[1]) for c in clean])
    metric = hz.patching.logit_diff(correct, wrong, per_example=True)
    reused = hz.patching.patch_heads(model, clean, corrupted, metric, by_pos=True, per_example=True, progress=False)
    plain = hz.patching.patch_heads(without_attention_input_hooks(model), clean, corrupted, metric, by_pos=True,
                                    per_example=True, progress=False)
    assert reused.meta["engine"]["prefix_reused"] == 5 and reused.meta["engine"]["lengths"] == [9, 12, 7]
    assert plain.meta["engine"]["prefix_reused"] == 0
    assert "attention-input hook" in plain.meta["engine"]["prefix_not_reused"]
    mine, theirs = reused.per_example(), plain.per_example()
    assert mine.drop(columns="effect").equals(theirs.drop(columns="effect"))
    assert (mine["effect"] - theirs["effect"]).abs().max() < 1e-5
    keys = ["layer", "pos", "head"]
    for i in range(3):  # and each row alone (its own, longer prefix)
        one = hz.patching.patch_heads(model, clean[i][None], corrupted[i][None],
                                      hz.patching.logit_diff(correct[i : i + 1], wrong[i : i + 1], per_example=True),
                                      by_pos=True, per_example=True, progress=False).to_frame().set_index(keys)["effect"]
        row = mine[mine["example"] == i].set_index(keys)["effect"]
        assert (row.loc[one.index] - one).abs().max() < 1e-4


def test_prefix_reuse_on_a_hugging_face_model(hf_gpt2):
    from transformer_lens.model_bridge import TransformerBridge

    _, path = hf_gpt2
    model = TransformerBridge.boot_transformers(str(path), device="cpu")
    clean = torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    corrupted = clean.clone()
    corrupted[:, 6] = (clean[:, 6] + 5) % 64
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    _, cache = model.run_with_cache(clean)
    for kind, name in [("z", "get_act_patch_attn_head_out_by_pos"), ("resid_pre", "get_act_patch_resid_pre")]:
        reference = getattr(tl_patching, name)(model, corrupted, cache, metric).double()
        effects = hz.patching.patch(model, clean, corrupted, metric, kind=kind, by_pos=True, progress=False)
        engine = effects.meta["engine"]
        assert engine["prefix_reused"] == 6 and "prefix_not_reused" not in engine
        assert (as_tensor(effects, tuple(reference.shape)) - reference).abs().max() < 1e-4


@pytest.mark.parametrize("receivers", [[(2, 1, "q"), (2, 3, "k")], [(1, 0, "v"), (2, "mlp")], "logits"])
def test_path_patching_reuses_the_prefix_with_the_same_numbers(receivers):
    """Path patching runs on the same prefix engine: corrupted from the middle on, its two steps
    compute the suffix only and equal the plain two-step reference written with full forwards."""
    from test_effective_embedding import random_model
    from test_path_patching import reference

    model = random_model("bridge", seed=4, n_layers=3, n_ctx=24, normalization_type="LN")
    clean = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    corrupted = corrupt_from(clean, "middle")
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    for freeze in (False, True):
        got = hz.patching.path_patch(model, clean, corrupted, metric, senders=[[(0, 2)], [(0, 1), (1, 3)]],
                                     receivers=receivers, freeze_mlps=freeze)
        assert got.meta["engine"]["prefix_reused"] == 5 and "prefix_not_reused" not in got.meta["engine"]
        for i, group in enumerate([[(0, 2)], [(0, 1), (1, 3)]]):
            want = reference(model, clean, corrupted, metric, group, receivers, freeze)
            assert abs(got.to_frame()["effect"].iloc[i] - want) < 1e-4, (receivers, freeze, group)


def test_path_patching_with_a_receiver_below_every_sender():
    """A receiver below the senders reads its own value; path patching must not look for a
    record that step 1 (started at the senders' layer) never made."""
    from test_effective_embedding import random_model
    from test_path_patching import reference

    model = random_model("bridge", seed=4, n_layers=3, n_ctx=24, normalization_type="LN")
    clean = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    corrupted = corrupt_from(clean, "middle")
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    receivers = [(0, 1, "q"), (2, 0, "k")]
    for group in ([(1, 3)], [(1, 0), (1, 2)]):  # alone in its forward: step 1 starts at layer 1
        got = hz.patching.path_patch(model, clean, corrupted, metric, senders=group, receivers=receivers)
        assert abs(got.to_frame()["effect"].iloc[0] - reference(model, clean, corrupted, metric, group, receivers)) < 1e-4
