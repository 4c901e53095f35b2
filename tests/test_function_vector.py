"""The function_vector detector (Todd et al. 2024): in-context tasks for any tokenizer, the
planted function-vector head found first, agreement with a plain TransformerLens reference,
user tasks, typed refusals, attribution ranking, batching and no mutation."""

from __future__ import annotations

import math

import pytest
import torch

import headzoo as hz
from headzoo._icl_tasks import build_prompts, separator_id
from headzoo.testing import (
    PlantSpec,
    function_vector_model,
    function_vector_placements,
    planted_model,
    word_tokenizer,
)

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FAST = {"n_prompts": 4, "n_shots": 4}


@pytest.fixture(scope="module")
def fv_model():
    return function_vector_model()


@pytest.fixture(scope="module")
def small_model():
    """The conformance suite's 2 x 3 planted model: random heads, a word tokenizer with the days."""
    spec = PlantSpec(n_layers=2, n_heads=3, d_head=32, d_vocab=16, n_ctx=32, previous_token=(0, 0), induction=(1, 1))
    return planted_model(spec, tokenizer=word_tokenizer([*DAYS, "apple", "river", "stone", "cloud", "ember", "maple", "tiger"]))


# -- tasks -------------------------------------------------------------------------------------

def test_icl_tasks_report_coverage_and_keep_single_tokens(small_model):
    tasks = hz.icl_tasks(small_model)
    assert [t.name for t in tasks] == ["successor"]  # the vocabulary spells no capitals, no letters
    (task,) = tasks
    assert len(task.ids) == 7 and task.candidates == len(hz.ICL_TASKS["successor"][1])
    assert task.coverage == pytest.approx(7 / task.candidates)
    vocab = small_model.tokenizer.get_vocab()
    assert ("Sunday", "Monday") in task.pairs and (vocab["Sunday"], vocab["Monday"]) in task.ids  # days wrap
    assert task.to_dict()["n_pairs"] == 7


def test_icl_tasks_refuse_with_the_reason(small_model):
    with pytest.raises(hz.UnsupportedTokenizerError, match="capitalize: 0/"):
        hz.icl_tasks(small_model, ["capitalize"])
    with pytest.raises(hz.InvalidOptionError, match="Did you mean 'successor'"):
        hz.icl_tasks(small_model, ["sucessor"])
    with pytest.raises(hz.UnsupportedTokenizerError, match="fewer than 8 pairs"):
        hz.icl_tasks(small_model, min_pairs=8)


def test_from_pairs_validates():
    with pytest.raises(hz.InvalidOptionError, match="at least two pairs"):
        hz.ICLTask.from_pairs("one", [("a", "b")])
    with pytest.raises(hz.InvalidOptionError, match="two non-blank strings"):
        hz.ICLTask.from_pairs("mixed", [("a", 1), ("b", "c")])
    with pytest.raises(hz.InvalidOptionError, match="non-empty name"):
        hz.ICLTask.from_pairs("", [("a", "b"), ("c", "d")])
    pairs = [("Monday", "Tuesday"), ("Tuesday", "Wednesday")]
    task = hz.ICLTask.from_pairs("days", pairs)
    assert not task.bound and math.isnan(task.coverage) and task.pairs == tuple(pairs)


def test_shuffled_prompts_show_no_true_pair(small_model):
    (task,) = hz.icl_tasks(small_model)
    prompts = build_prompts(task, 8, 4, 0, bos=0, sep=None)
    true = set(task.ids)
    for row in prompts.corrupted.tolist():
        shots = row[1:-1]
        assert not any((x, y) in true for x, y in zip(shots[::2], shots[1::2]))
    for row, answer in zip(prompts.clean.tolist(), prompts.clean_answer.tolist()):
        shots = row[1:-1]
        assert all((x, y) in true for x, y in zip(shots[::2], shots[1::2])) and (row[-1], answer) in true


# -- the planted circuit -----------------------------------------------------------------------

def _ranking(scores):
    return scores.to_frame().sort_values("score", ascending=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_function_vector_head_ranks_first(seed):
    placements = function_vector_placements(4, 3, seed)
    model = function_vector_model(n_layers=4, n_heads=3, seed=seed, **placements)
    scores = hz.detect(model, "function_vector", separator=";", **FAST)
    ranked = _ranking(scores)
    top = ranked.iloc[0]
    assert (int(top["layer"]), int(top["head"])) == placements["function_vector"]
    assert top["score"] > 0.9 and ranked.iloc[1]["score"] < 0.1  # a margin, not a tie
    result = scores.meta["detectors"]["function_vector"]["result"]
    assert result["tasks"]["successor"]["source"] > 0.99 and result["tasks"]["successor"]["baseline"] < 0.1


def _reference_cie(model, task, n_prompts, n_shots, seed, sep):
    """One head at a time, full forwards, plain TransformerLens hooks."""
    info = hz.model_info(model)
    prompts = build_prompts(task, n_prompts, n_shots, seed, bos=info.bos_token_id, sep=sep)
    _, cache = model.run_with_cache(prompts.clean)
    rows = torch.arange(n_prompts)
    with torch.no_grad():
        base = model(prompts.corrupted)[:, -1].softmax(-1)[rows, prompts.answer]
        out = torch.zeros(info.n_layers, info.n_heads)
        for layer in range(info.n_layers):
            mean = cache[f"blocks.{layer}.attn.hook_z"][:, -1].mean(0)  # [head, d_head]
            for head in range(info.n_heads):
                def patch(z, hook, head=head, mean=mean):
                    z = z.clone()
                    z[:, -1, head] = mean[head]
                    return z

                logits = model.run_with_hooks(prompts.corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
                out[layer, head] = (logits[:, -1].softmax(-1)[rows, prompts.answer] - base).mean()
    return out


@pytest.mark.parametrize("which", ["small", "planted"])
def test_matches_a_plain_transformer_lens_reference(which, small_model, fv_model):
    model = small_model if which == "small" else fv_model
    sep_text = "" if which == "small" else ";"
    opts = {"n_prompts": 5, "n_shots": 3, "seed": 4}
    scores = hz.detect(model, "function_vector", separator=sep_text, batch_size=2, **opts)
    (task,) = hz.icl_tasks(model)
    ref = _reference_cie(model, task, opts["n_prompts"], opts["n_shots"], opts["seed"], separator_id(model.tokenizer, sep_text) if sep_text else None)
    got = torch.tensor(scores.matrix("function_vector").to_numpy(), dtype=torch.float32)
    assert torch.allclose(got, ref, atol=1e-4), (got, ref)
    assert ref.abs().max() > 1e-4  # the comparison compares something


def test_user_tasks(fv_model):
    vocab = fv_model.tokenizer.get_vocab()
    days = hz.ICLTask.from_pairs("next_day", list(zip(DAYS, DAYS[1:] + DAYS[:1])))
    ids = hz.ICLTask.from_pairs("next_day_ids", [(vocab[a], vocab[b]) for a, b in zip(DAYS, DAYS[1:] + DAYS[:1])])
    scores = hz.detect(fv_model, "function_vector", tasks=(days, ids), separator=";", **FAST)
    top = _ranking(scores).iloc[0]
    assert (int(top["layer"]), int(top["head"])) == (1, 1)
    details = scores.details("function_vector")
    assert sorted(set(details["task"])) == ["next_day", "next_day_ids"]
    assert {"layer", "head", "cie", "stderr"} <= set(details.columns)
    # strings and token ids name the same pairs: the planted head restores both tasks
    by_task = details.set_index(["task", "layer", "head"])["cie"]
    assert by_task[("next_day", 1, 1)] > 0.9 and by_task[("next_day_ids", 1, 1)] > 0.9
    assert scores.meta["detectors"]["function_vector"]["options"]["tasks"][0]["name"] == "next_day"


def test_typed_refusals(small_model, fv_model):
    bare = planted_model(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=16, n_ctx=16))
    with pytest.raises(hz.UnsupportedTokenizerError, match="no tokenizer"):
        hz.detect(bare, "function_vector")
    with pytest.raises(hz.InvalidOptionError, match="n_shots must be an integer >= 2"):
        hz.get_detector("function_vector", n_shots=1)
    with pytest.raises(hz.InvalidOptionError, match="tasks must be None"):
        hz.get_detector("function_vector", tasks=(3,))
    with pytest.raises(hz.UnsupportedTokenizerError, match="fewer than 8 pairs"):  # 7 days; 7 shots + a query need 8
        hz.detect(small_model, "function_vector", n_shots=7)
    with pytest.raises(hz.UnsupportedTokenizerError, match="not one"):
        hz.detect(fv_model, "function_vector", separator="; ;", **FAST)
    with pytest.raises(hz.InvalidOptionError, match="max_exact_heads"):
        hz.get_detector("function_vector", max_exact_heads=0)


def test_attribution_ranking_reports_agreement_and_cost(fv_model):
    scores = hz.detect(fv_model, "function_vector", separator=";", max_exact_heads=4, **FAST)
    frame = scores.to_frame()
    assert len(frame) == 4  # heads not done exactly are not scored
    assert frame["attribution"].notna().all()
    assert scores.matrix("function_vector").shape == (3, 4)
    result = scores.meta["detectors"]["function_vector"]["result"]
    agreement = result["attribution"]
    assert agreement["heads_compared"] == 4 and 0 <= agreement["top_k_overlap"] <= 1
    assert agreement["spearman"] is None or -1 <= agreement["spearman"] <= 1
    cost = result["cost"]
    # per task: clean + shuffled + the reuse check + 4 heads in one batch (exact), and one attribution pass
    assert cost["backward_passes"] == 1 and cost["forward_passes"] == 2 + 1 + 1 + 1 + 1
    details = scores.details("function_vector")
    assert (details["method"] == "exact").all() and details["attribution"].notna().all()


def test_batched_equals_unbatched_with_non_default_options(small_model):
    opts = {"n_prompts": 3, "n_shots": 3, "seed": 7, "separator": ""}
    one = hz.detect(small_model, "function_vector", batch_size=1, **opts).to_frame()
    many = hz.detect(small_model, "function_vector", batch_size=5, **opts).to_frame()
    assert one["score"].to_numpy() == pytest.approx(many["score"].to_numpy(), abs=1e-7)
    other_seed = hz.detect(small_model, "function_vector", batch_size=5, **{**opts, "seed": 8}).to_frame()
    assert not (other_seed["score"].to_numpy() == pytest.approx(many["score"].to_numpy(), abs=1e-7))


def test_model_and_tasks_not_mutated(fv_model):
    before = {k: v.clone() for k, v in fv_model.state_dict().items()}
    tasks = [hz.ICLTask.from_pairs("next_day", list(zip(DAYS, DAYS[1:] + DAYS[:1])))]
    hz.detect(fv_model, "function_vector", tasks=tasks, separator=";", **FAST)
    after = fv_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad or p.grad is None for p in fv_model.parameters())
    assert isinstance(tasks, list) and not tasks[0].bound
