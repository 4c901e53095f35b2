"""The survey's stages, probes shared across detectors, bind() and the dormant detector."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import headzoo as hz
from headzoo import _registry
from headzoo._runner import run_detectors
from headzoo.testing import PlantSpec, check_detector, random_placements

from conftest import BACKENDS, cached_planted


def test_every_builtin_declares_one_of_the_four_stages():
    table = hz.list_detectors().set_index("name")
    builtin = table[table["source"] == "builtin"]
    assert len(builtin) >= 11
    assert set(builtin["stage"]) <= set(hz.STAGES), builtin["stage"].to_dict()
    assert builtin["stage"].notna().all(), builtin[builtin["stage"].isna()].index.tolist()
    assert hz.STAGES == ("knowledge recalling", "in-context identification", "latent reasoning", "expression preparation")
    patterned = builtin[builtin["kind"] == "pattern"]
    assert patterned["probe"].notna().all()


def test_a_stage_outside_the_four_is_refused():
    saved = dict(_registry._REGISTRY), dict(_registry._SOURCES)
    try:
        with pytest.raises(hz.DetectorDefinitionError, match="four stages"):
            @hz.register
            @dataclasses.dataclass(frozen=True)
            class Bad(hz.PositionalDetector):
                name = "bad_stage_for_test"
                description = "refused"
                stage = "reasoning"

                def mask(self, seq, device):
                    return torch.eye(seq, dtype=torch.bool, device=device)
        with pytest.raises(hz.DetectorDefinitionError, match="can read"):
            @hz.register
            @dataclasses.dataclass(frozen=True)
            class BadReads(hz.PositionalDetector):
                name = "bad_reads_for_test"
                description = "refused"
                reads = ("mlp_out",)

                def mask(self, seq, device):
                    return torch.eye(seq, dtype=torch.bool, device=device)
    finally:
        for live, old in zip((_registry._REGISTRY, _registry._SOURCES), saved, strict=True):
            live.clear()
            live.update(old)


def _count_forwards(model):
    calls = []
    name = "hook_embed" if "hook_embed" in model.hook_dict else "embed.hook_out"
    handle = model.hook_dict[name].register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_detectors_of_one_probe_share_its_forward_passes(demo_model):
    calls, handle = _count_forwards(demo_model)
    try:
        scores = hz.detect(demo_model, ["previous_token", "induction", "first_token", "dormant"], n_prompts=8, batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == 2  # 8 prompts / 4 per batch, for all four detectors together
    assert set(scores.meta["probes"]) == {"repeated_tokens"}
    assert {scores.meta["detectors"][d]["probe"] for d in ("induction", "dormant")} == {"repeated_tokens"}
    assert scores.meta["detectors"]["dormant"]["stage"] == "in-context identification"


@dataclasses.dataclass(frozen=True)
class _NeedsTable(hz.PositionalDetector):
    """A detector that binds a model table (here: position 0 only) or refuses the model."""

    name = "needs_table_for_test"
    description = "attends to position 0 when the bound table says so"
    stage = "in-context identification"
    refuse: bool = False

    def bind(self, model, info):
        if self.refuse:
            raise hz.UnsupportedTokenizerError("needs_table_for_test: this tokenizer has no table")
        new = dataclasses.replace(self)
        object.__setattr__(new, "_first", 0)
        return new

    def mask(self, seq, device):
        m = torch.zeros(seq, seq, dtype=torch.bool, device=device)
        m[1:, self._first] = True  # fails unless bind() ran
        return m


def test_bind_runs_before_match_and_a_refusal_is_typed_or_skipped(demo_model):
    det = _NeedsTable()
    got = hz.detect(demo_model, det, n_prompts=2).to_frame()
    ref = hz.detect(demo_model, "first_token", n_prompts=2).to_frame()
    assert torch.allclose(torch.tensor(got["score"].values), torch.tensor(ref["score"].values))
    assert not hasattr(det, "_first")  # the user's instance is left as it was
    with pytest.raises(hz.UnsupportedTokenizerError, match="no table"):
        hz.detect(demo_model, _NeedsTable(refuse=True), n_prompts=2)
    assert issubclass(hz.UnsupportedTokenizerError, hz.DetectorNotApplicableError)
    with pytest.warns(UserWarning, match="skipped"):
        scores = run_detectors(demo_model, [_NeedsTable(refuse=True), "first_token"], tokens=None, cache=None,
                               explicit=False, n_prompts=2)
    assert "needs_table_for_test" in scores.meta["skipped_detectors"]


CASES = [(2, 4, 32, 64, 64, 0), (3, 3, 16, 20, 32, 1), (4, 8, 32, 500, 128, 2), (2, 2, 16, 12, 16, 3)]


@pytest.mark.parametrize("n_layers,n_heads,d_head,d_vocab,n_ctx,seed", CASES)
def test_dormant_finds_the_planted_silent_sink_and_not_the_writing_one(n_layers, n_heads, d_head, d_vocab, n_ctx, seed):
    placements = random_placements(n_layers, n_heads, seed, duplicate_token=False, sink=True, dormant=True)
    spec = PlantSpec(n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed, **placements)
    for backend in BACKENDS:
        frame = hz.detect(cached_planted(spec, backend), ["dormant", "first_token"], n_prompts=4).to_frame()
        dormant = frame[frame["detector"] == "dormant"].sort_values("score", ascending=False)
        top, second = dormant.iloc[0], dormant.iloc[1]
        assert (top["layer"], top["head"]) == placements["dormant"], dormant.head(3)
        assert top["score"] > 0.9 and top["score"] - second["score"] > 0.5, dormant.head(3)
        sink = dormant.set_index(["layer", "head"]).loc[placements["sink"]]
        assert sink["sink_share"] > 0.9 and sink["score"] < hz.get_detector("dormant").threshold, sink
        # the first-token score alone cannot tell the two apart
        first = frame[frame["detector"] == "first_token"].set_index(["layer", "head"])["score"]
        assert first[placements["sink"]] > 0.9 and first[placements["dormant"]] > 0.9


def test_dormant_from_a_users_cache_equals_the_live_run(demo_spec):
    spec = dataclasses.replace(demo_spec, dormant=(1, 0), sink=(2, 3))
    model = cached_planted(spec)
    tokens = torch.randint(0, spec.d_vocab, (3, 24), generator=torch.Generator().manual_seed(1))
    live = hz.detect(model, "dormant", tokens=tokens).to_frame()
    _, cache = model.run_with_cache(tokens)
    cached = hz.detect(model, "dormant", tokens=tokens, cache=cache).to_frame()
    assert (live["score"] - cached["score"]).abs().max() < 1e-5
    assert live.set_index(["layer", "head"])["score"].idxmax() == (1, 0)
    _, patterns_only = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(hz.MissingHooksError, match="hook_z"):
        hz.detect(model, "dormant", tokens=tokens, cache=patterns_only)


def test_dormant_passes_the_conformance_suite():
    check_detector("dormant")


# -- null baselines -----------------------------------------------------------------------------

def _digest(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_random_twin_keeps_the_architecture_and_redraws_the_weights(demo_model):
    from headzoo._baseline import init_scheme, random_twin

    before = _digest(demo_model)
    a, b, a2 = random_twin(demo_model, 0), random_twin(demo_model, 1), random_twin(demo_model, 0)
    after = _digest(demo_model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is untouched
    assert hz.model_info(a) == hz.model_info(demo_model) and a.tokenizer is not None
    std = init_scheme(demo_model)["std"]
    w = a.W_Q.detach()
    assert abs(float(w.std()) - std) < 0.1 * std
    assert not torch.equal(a.W_Q, b.W_Q) and torch.equal(a.W_Q, a2.W_Q)


def test_baseline_adds_z_scores_and_the_planted_heads_stand_out(demo_spec):
    model = cached_planted(demo_spec)
    scores = hz.detect(model, ["previous_token", "induction", "copying"], n_prompts=4, baseline=True, baseline_models=2)
    frame = scores.to_frame()
    assert {"baseline_mean", "baseline_std", "z"} <= set(frame.columns)
    assert frame["z"].notna().all()
    for name in ("previous_token", "induction"):
        part = frame[frame["detector"] == name].set_index(["layer", "head"])
        assert part["z"].idxmax() == demo_spec.planted[name]
    assert scores.meta["baseline"]["n_models"] == 2 and scores.meta["baseline"]["init"]["scheme"] == "gpt2"
    again = hz.detect(model, ["previous_token", "induction", "copying"], n_prompts=4, baseline=True, baseline_models=2)
    assert (again.to_frame()["z"] - frame["z"]).abs().max() < 1e-9


def test_on_a_short_context_a_random_heads_high_raw_score_is_chance():
    """With 6 positions a head attending uniformly puts ~0.4 on the previous token; the z-score
    against random copies says that is what chance gives."""
    from headzoo._baseline import random_twin

    spec = PlantSpec(n_layers=2, n_heads=4, d_head=16, d_vocab=30, n_ctx=6, previous_token=(0, 0), induction=(1, 1))
    model = random_twin(cached_planted(spec), seed=123)
    frame = hz.detect(model, "previous_token", n_prompts=8, baseline=True, baseline_models=4).to_frame()
    assert frame["score"].min() > 0.25
    assert frame["z"].abs().median() < 2.5, frame[["layer", "head", "score", "z"]]


def test_baseline_options_are_checked(demo_model):
    tokens = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    _, cache = demo_model.run_with_cache(tokens)
    with pytest.raises(hz.InvalidOptionError, match="needs the tokens"):
        hz.detect(demo_model, "first_token", cache=cache, baseline=True)
    with pytest.raises(hz.InvalidOptionError, match="baseline"):
        hz.detect(demo_model, "first_token", baseline="yes")
    with pytest.raises(hz.InvalidOptionError, match="baseline_models"):
        hz.detect(demo_model, "first_token", baseline=True, baseline_models=1)
    with_tokens = hz.detect(demo_model, "first_token", tokens=tokens, cache=cache, baseline=True, baseline_models=2)
    assert with_tokens.to_frame()["z"].notna().all()
