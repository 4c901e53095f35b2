"""Path patching equals a plain two-step implementation with TransformerLens hooks, on both
model classes, with and without frozen MLPs, into queries, keys, values, MLPs and the logits."""

from __future__ import annotations

import pytest
import torch

import headzoo as hz

from conftest import BACKENDS, cached_planted
from headzoo.testing import PlantSpec
from test_effective_embedding import random_model

SPEC = PlantSpec(n_layers=3, n_heads=4, d_head=32, d_vocab=66, n_ctx=32, previous_token=(0, 1),
                 induction=(2, 0), duplicate_token=(1, 2), seed=3)


def induction_task(n: int = 3, half: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(2, SPEC.d_vocab, (n, half), generator=g)
    bos = torch.zeros(n, 1, dtype=torch.long)
    clean = torch.cat([bos, r, r], 1)
    corrupted = torch.cat([bos, torch.randint(2, SPEC.d_vocab, (n, half), generator=g), r], 1)
    return clean, corrupted, r[:, 2], half + 2


def reference(model, clean, corrupted, metric, senders, receivers, freeze_mlps=False, direction="denoise"):
    """Path patching written out: full forward passes, one TransformerLens hook per activation."""
    receiver_tokens, donor_tokens = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    n_layers, attn_only = model.cfg.n_layers, bool(getattr(model.cfg, "attn_only", False))
    group = model.cfg.n_heads // (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    with torch.no_grad():
        _, donor = model.run_with_cache(donor_tokens)
        _, own = model.run_with_cache(receiver_tokens)
        donor = {k: v.clone() for k, v in donor.items()}
        own = {k: v.clone() for k, v in own.items()}

        def freeze_z(layer):  # (bridges report their own names for aliased hooks: key by layer)
            name = f"blocks.{layer}.attn.hook_z"

            def hook(act, hook):
                out = own[name].clone()
                for sl, sh in senders:
                    if sl == layer:
                        out[:, :, sh] = donor[name][:, :, sh]
                return out
            return hook

        receiver_mlps = [] if receivers == "logits" else [r[0] for r in receivers if r[1] == "mlp"]
        hooks = [(f"blocks.{layer}.attn.hook_z", freeze_z(layer)) for layer in range(n_layers)]
        if freeze_mlps and not attn_only:
            hooks += [(f"blocks.{layer}.hook_mlp_out", lambda act, hook, name=f"blocks.{layer}.hook_mlp_out": own[name].clone())
                      for layer in range(n_layers) if layer not in receiver_mlps]
        if receivers == "logits":
            return float(metric(model.run_with_hooks(receiver_tokens, fwd_hooks=hooks)))
        recorded = {}

        def record(name):
            def hook(act, hook):
                recorded[name] = act.clone()
            return hook

        names = {}
        for r in receivers:
            name = f"blocks.{r[0]}.hook_mlp_out" if r[1] == "mlp" else f"blocks.{r[0]}.attn.hook_{r[2]}"
            names.setdefault(name, []).append(r)
        model.run_with_hooks(receiver_tokens, fwd_hooks=hooks + [(name, record(name)) for name in names])

        def replace(name):
            def hook(act, hook):
                act = act.clone()
                for r in names[name]:
                    if r[1] == "mlp":
                        act = recorded[name].clone()
                    else:
                        index = r[1] if r[2] == "q" else r[1] // group
                        act[:, :, index] = recorded[name][:, :, index]
                return act
            return hook

        return float(metric(model.run_with_hooks(receiver_tokens, fwd_hooks=[(name, replace(name)) for name in names])))


CASES = [
    ([(0, 1)], [(2, 0, "k")]),
    ([(0, 1)], [(2, 0, "q"), (2, 3, "v")]),
    ([(0, 1), (1, 2)], [(2, 0, "k"), (1, "mlp")]),
    ([(1, 0)], [(2, 1, "v"), (2, 0, "q")]),
    ([(0, 1), (2, 0)], "logits"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("senders,receivers", CASES)
@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_equals_the_reference(backend, senders, receivers, freeze_mlps):
    model = cached_planted(SPEC, backend)
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    for direction in ("denoise", "noise"):
        want = reference(model, clean, corrupted, metric, senders, receivers, freeze_mlps, direction)
        got = hz.patching.path_patch(model, clean, corrupted, metric, senders=senders, receivers=receivers,
                                     freeze_mlps=freeze_mlps, direction=direction)
        frame = got.to_frame()
        assert list(frame.columns[:2]) == ["group", "effect"] and len(frame) == 1
        assert abs(frame["effect"].iloc[0] - want) < 1e-4, (direction, frame, want)


def test_every_sender_equals_the_reference_one_at_a_time():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task(seed=1)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    receivers = [(2, 0, "k"), (2, 2, "q")]
    sweep = hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=receivers, memory_mb=0.05)
    frame = sweep.to_frame()
    assert sorted(zip(frame["layer"], frame["head"])) == [(layer, head) for layer in range(2) for head in range(4)]
    for layer, head, effect in zip(frame["layer"], frame["head"], frame["effect"]):
        assert abs(effect - reference(model, clean, corrupted, metric, [(layer, head)], receivers)) < 1e-4
    # groups patched together in one call equal separate calls
    groups = [[(0, 1)], [(0, 1), (1, 2)], [(1, 3)]]
    joint = hz.patching.path_patch(model, clean, corrupted, metric, senders=groups, receivers=receivers).to_frame()
    for i, group in enumerate(groups):
        assert abs(joint["effect"].iloc[i] - reference(model, clean, corrupted, metric, group, receivers)) < 1e-4


def test_planted_previous_token_head_reaches_the_induction_key_and_nothing_else_does():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task(seed=2)
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    sweep = hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=[(2, 0, "k")])
    change = (sweep.to_frame().set_index(["layer", "head"])["effect"] - sweep.meta["baseline"]).abs()
    assert change.idxmax() == (0, 1)
    # the other heads write where the induction head's key does not read: no effect at all
    assert change.drop((0, 1)).max() < 1e-5
    assert change[(0, 1)] > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_senders_at_or_above_the_receivers_have_no_effect(backend):
    model = cached_planted(SPEC, backend)
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    out = hz.patching.path_patch(model, clean, corrupted, metric, senders=[[(1, 0)], [(2, 3)]], receivers=[(1, 2, "q")])
    assert (out.to_frame()["effect"] - out.meta["baseline"]).abs().max() < 1e-5


def test_grouped_query_rotary_model_equals_the_reference():
    model = random_model("bridge", seed=5, n_layers=3, normalization_type="RMS", n_key_value_heads=2,
                         positional_embedding_type="rotary")
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 50, (3, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:4] = torch.randint(0, 50, (3, 2), generator=g)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    for receivers in ([(2, 3, "k"), (2, 0, "q")], [(1, 1, "v"), (2, 2, "v")], [(2, "mlp")], "logits"):
        for freeze in (False, True):
            want = reference(model, clean, corrupted, metric, [(0, 2), (1, 0)], receivers, freeze)
            got = hz.patching.path_patch(model, clean, corrupted, metric, senders=[(0, 2), (1, 0)], receivers=receivers,
                                         freeze_mlps=freeze)
            assert abs(got.to_frame()["effect"].iloc[0] - want) < 1e-4, (receivers, freeze)
    assert got.meta["receivers"] == ["logits"]


def test_strict_direct_path_equals_transformer_lens_direct_path(hf_gpt2):
    """TransformerLens' direct path adds the sender's write to one head's own input: exactly the
    strict direct path (every other head and every MLP frozen)."""
    tl_patching = pytest.importorskip("transformer_lens.patching")
    if not hasattr(tl_patching, "get_act_patch_direct_path"):
        pytest.skip("this TransformerLens has no get_act_patch_direct_path")
    from transformer_lens.model_bridge import TransformerBridge

    _, path = hf_gpt2
    model = TransformerBridge.boot_transformers(str(path), device="cpu")  # GPT-2's joint QKV supports the split input
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(1, 60, (2, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = torch.randint(1, 60, (2,), generator=g)
    metric = hz.patching.logit_diff(clean[:, 0], clean[:, 1])
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    for component in ("q", "k", "v"):
        tl = tl_patching.get_act_patch_direct_path(model, corrupted, clean_cache, corrupted_cache, metric, 0, 1,
                                                   component=component, verbose=False)
        for head in range(4):
            got = hz.patching.path_patch(model, clean, corrupted, metric, senders=[(0, 1)],
                                         receivers=[(1, head, component)], freeze_mlps=True)
            assert abs(got.to_frame()["effect"].iloc[0] - float(tl[1, head])) < 1e-4, (component, head)


def test_bad_inputs_are_refused_and_nothing_is_changed():
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    before = (clean.clone(), corrupted.clone())
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos)
    call = lambda **kw: hz.patching.path_patch(model, clean, corrupted, metric, **kw)  # noqa: E731
    with pytest.raises(hz.InvalidOptionError, match="receivers"):
        call(senders=[(0, 1)], receivers="logit")
    with pytest.raises(hz.InvalidOptionError, match="'q', 'k' or 'v'"):
        call(senders=[(0, 1)], receivers=[(2, 0, "z")])
    with pytest.raises(hz.InvalidOptionError, match="outside"):
        call(senders=[(0, 9)], receivers="logits")
    with pytest.raises(hz.InvalidOptionError, match="outside"):
        call(senders=[(0, 1)], receivers=[(5, 0, "q")])
    with pytest.raises(hz.InvalidOptionError, match="senders"):
        call(senders=[], receivers="logits")
    with pytest.raises(hz.InvalidOptionError, match="one list per group"):
        call(senders=[(0, 1), [(1, 2)]], receivers="logits")
    with pytest.raises(hz.InvalidOptionError, match="below"):
        hz.patching.path_patch_heads(model, clean, corrupted, metric, receivers=[(0, 1, "q")])
    attn_only = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, attn_only=True), "bridge")
    with pytest.raises(hz.InvalidOptionError, match="MLP"):
        hz.patching.path_patch(attn_only, clean % 64, corrupted % 64, metric, senders=[(0, 1)], receivers=[(1, "mlp")])
    assert torch.equal(before[0], clean) and torch.equal(before[1], corrupted)


def test_result_protocol_and_per_example_values(tmp_path):
    model = cached_planted(SPEC, "bridge")
    clean, corrupted, answer, pos = induction_task()
    metric = hz.patching.logit_diff(answer, (answer + 1) % SPEC.d_vocab, pos=pos, per_example=True)
    out = hz.patching.path_patch(model, clean, corrupted, metric, senders=[[(0, 1)], [(1, 2)]], receivers=[(2, 0, "k")],
                                 per_example=True)
    frame = out.to_frame()
    assert {"group", "effect", "stderr", "ci_low", "ci_high"} <= set(frame.columns)
    assert out.meta["senders"] == [[[0, 1]], [[1, 2]]] and out.meta["receivers"] == ["L2H0.k"]
    assert out.plot() is not None and "HeadEffects" in out._repr_html_()
    out.save(tmp_path / "p.hz")
    again = hz.HeadEffects.load(tmp_path / "p.hz")
    assert again.to_frame().equals(frame)
    with pytest.raises(ValueError, match="group"):
        out.matrix()
