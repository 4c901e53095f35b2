"""The shipped trained models, zoo-small (the default) and zoo-medium (curriculum v2): they solve
their tasks, IOI transfers to sentence frames held out of training, they load offline and
identically into both model classes, and for every head type the curriculum grew the detector's
top head is one the model uses (ablating it hurts its task far more than ablating random heads)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import headzoo as hz
from headzoo._backends import available_backends
from headzoo._curriculum_v2 import TASKS, CurriculumV2

#: held-out curriculum sequences per model (zoo-medium's are twice as long)
N_SEQUENCES = {"zoo-small": 128, "zoo-medium": 64}


@functools.cache
def _model(name):
    return hz.load_model(name)


@functools.cache
def _batch(name):
    return next(CurriculumV2(n_ctx=_model(name).cfg.n_ctx, seed=10_000).batches(N_SEQUENCES[name]))


def _task(model, ids, tasks, name):
    with torch.no_grad():
        logits = model(ids)[:, :-1]
    target, mask = ids[:, 1:], tasks[:, 1:] == TASKS.index(name)
    loss = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    return float(loss), float((logits[mask].argmax(-1) == target[mask]).float().mean())


def test_default_is_the_trained_model_and_loads_deterministically():
    a, b = hz.load_model(), hz.load_model("zoo-small")
    assert hz.model_info(a).name == "zoo-small"
    x = torch.randint(0, a.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["zoo-small", "zoo-medium"])
def test_bundled_models_load_offline_into_every_model_class_alike(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bridge = _model(name)
    assert hz.model_info(bridge).name == name and name in set(hz.list_models()["name"])
    x = torch.randint(0, bridge.cfg.d_vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = bridge(x)
        for backend in available_backends():
            again = hz.load_model(name, backend=backend)
            assert hz.model_info(again).name == name
            torch.testing.assert_close(again(x), expected, atol=1e-4, rtol=1e-4)


#: the lowest task accuracy each model reaches on held-out curriculum text (measured: zoo-small
#: 0.85 (icl) to 1.0; zoo-medium 0.82 (icl) to 0.98), and its repeated-token loss ratio's ceiling
#: (zoo-small 0.26: it trained on words, not random word pieces)
ACCURACY_FLOOR = {"zoo-small": 0.75, "zoo-medium": 0.75}
REPEAT_CEILING = {"zoo-small": 0.5, "zoo-medium": 0.5}
#: tasks a model had not learned when its training stopped, with the accuracy it does reach:
#: zoo-medium's IOI loss was still falling (4.7 -> 3.5 over its last 750 steps; 0.40 measured)
STILL_LEARNING = {"zoo-medium": {"ioi": 0.3}}


@pytest.mark.parametrize("name", ["zoo-small", "zoo-medium"])
def test_it_solves_its_tasks_on_held_out_curriculum_text(name):
    model, batch = _model(name), _batch(name)
    accuracy = {task: _task(model, *batch, task)[1] for task in TASKS if task != "filler"}
    print(name, {k: round(v, 3) for k, v in accuracy.items()})
    # chance is under 1/20 for every task but `seen` (1/2)
    learning = STILL_LEARNING.get(name, {})
    learned = {task: a for task, a in accuracy.items() if task not in learning}
    assert min(learned.values()) > ACCURACY_FLOOR[name] and accuracy["seen"] > 0.95, accuracy
    assert all(accuracy[task] > floor for task, floor in learning.items()), accuracy
    info = hz.model_info(model)
    ids = torch.cat(list(hz.RepeatedTokens(n_prompts=16).batches(info)))
    half = (ids.shape[1] - 1) // 2
    with torch.no_grad():
        logits = model(ids)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    first, second = float(loss[:, 1:half].mean()), float(loss[:, half + 1 :].mean())
    print(f"{name} repeated random tokens: first copy {first:.3f}, second copy {second:.3f}")
    assert second < REPEAT_CEILING[name] * first


@pytest.mark.parametrize("name", ["zoo-small"])  # zoo-medium had not learned IOI yet (STILL_LEARNING)
def test_ioi_on_the_builtin_templates_held_out_of_training(name):
    """The v1 model picked the indirect object in 28% of prompts outside its one training frame."""
    model = _model(name)
    prompts = hz.ioi_prompts(model, n=128, seed=1)
    assert prompts.coverage["templates_kept"] == 16
    with torch.no_grad():
        diffs = prompts.logit_diffs(model(prompts.clean))
    print(f"{name}: IO over S on {float((diffs > 0).float().mean()):.2f} of held-out prompts, "
          f"mean logit diff {float(diffs.mean()):.2f}")
    assert float(diffs.mean()) > 1.0 and float((diffs > 0).float().mean()) > 0.5


@pytest.mark.parametrize("name,detector,task", [
    ("zoo-small", "induction", "induction"), ("zoo-small", "ngram_induction", "ngram"),
    ("zoo-small", "duplicate_token", "seen"), ("zoo-small", "successor", "successor"),
    ("zoo-small", "name_mover", "ioi"),
    ("zoo-medium", "induction", "induction"), ("zoo-medium", "ngram_induction", "ngram"),
])
def test_ablating_the_detected_head_hurts_its_task_far_more_than_random_heads(name, detector, task):
    model, (ids, tasks) = _model(name), _batch(name)
    base = _task(model, ids, tasks, task)[0]
    scores = hz.detect(model, detector, progress=False)
    top = [tuple(int(v) for v in r) for r in scores.top(1, detector)[["layer", "head"]].values]
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
             if (layer, head) not in top]
    rng = np.random.default_rng(0)

    def damage(hs):
        with hz.ablate(model, hs, "mean", reference_tokens=ids[:32]):
            return _task(model, ids, tasks, task)[0] - base

    hit = damage(top)
    random = [damage([heads[i]]) for i in rng.choice(len(heads), 5, replace=False)]
    print(f"{name} {detector}: top head {top} +{hit:.2f} loss on {task}; random heads {np.round(random, 2)}")
    assert hit > 3 * max(np.mean(random), 0.0) and hit > 0.15
    if name == "zoo-medium":  # the bar there: the top head also scores over the threshold
        threshold = float(hz.list_detectors().set_index("name").loc[detector, "threshold"])
        assert float(scores.top(1, detector)["score"].iloc[0]) >= threshold


# --- names, devices, dtypes and backends are checked before anything is loaded ----------------

@pytest.fixture
def hub_calls(monkeypatch):
    """Record hub look-ups instead of making them (a typo must never reach the hub)."""
    from headzoo import _zoo

    calls = []

    def fake_hub(name, *args, **kwargs):  # whatever else load_model forwards (revision, device map, ...)
        calls.append(name)
        raise hz.ModelNotFoundError(f"(test) {name} looked up on the hub")

    monkeypatch.setattr(_zoo, "_load_from_hub", fake_hub)
    return calls


@pytest.mark.parametrize("typo,meant", [
    ("zoo-smal", "zoo-small"), ("zoo_small", "zoo-small"), ("Zoo-Small", "zoo-small"),
    ("zoosmall", "zoo-small"), ("planted_demo", "planted-demo"), ("planted-dem", "planted-demo"),
    ("zoo-medum", "zoo-medium"), ("zoo_medium", "zoo-medium"),
])
def test_a_typo_of_a_bundled_name_fails_fast_with_a_suggestion(hub_calls, typo, meant):
    import time

    start = time.perf_counter()
    with pytest.raises(hz.ModelNotFoundError, match=f"not a bundled model. Did you mean '{meant}'"):
        hz.load_model(typo)
    assert hub_calls == [] and time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/pythia-70m", "zoo-small/other", "zoo-large", "pythia"])
def test_hub_ids_still_go_to_the_hub(hub_calls, name):
    with pytest.raises(hz.ModelNotFoundError, match="looked up on the hub"):
        hz.load_model(name)
    assert hub_calls == [name]


def test_a_local_folder_named_like_a_typo_is_loaded_as_a_folder(hub_calls, tmp_path, monkeypatch):
    (tmp_path / "zoo-smal").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hz.ModelNotFoundError, match="looked up on the hub"):
        hz.load_model("zoo-smal")
    assert hub_calls == ["zoo-smal"]


def test_an_empty_name_is_refused(hub_calls):
    with pytest.raises(hz.ModelNotFoundError, match="empty"):
        hz.load_model("  ")
    assert hub_calls == []


@pytest.mark.parametrize("device,match", [
    ("nonsense", "is not a torch device"),
    ("cuda:x", "is not a torch device"),
    ("meta", "holds no weights"),
])
def test_bad_devices_are_named_as_such(device, match):
    with pytest.raises(hz.InvalidOptionError, match=match) as info:
        hz.load_model("planted-demo", device=device)
    assert "weights in" not in str(info.value)


def test_missing_accelerators_are_named_as_such(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(hz.InvalidOptionError, match="this torch build has no CUDA support"):
        hz.load_model("planted-demo", device="cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(hz.InvalidOptionError, match="no CUDA GPU is visible"):
        hz.load_model("planted-demo", device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(hz.InvalidOptionError, match="sees 1 CUDA device"):
        hz.load_model("planted-demo", device="cuda:3")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(hz.InvalidOptionError, match="device='mps'"):
        hz.load_model("planted-demo", device="mps")


def test_dtypes_by_name_and_bad_dtypes():
    model = hz.load_model("planted-demo", dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(hz.InvalidOptionError, match="float16"):
        hz.load_model("planted-demo", dtype="fp8")
    with pytest.raises(hz.InvalidOptionError, match="not a floating-point dtype"):
        hz.load_model("planted-demo", dtype=torch.int64)


def test_backend_mistakes_are_named_as_such():
    import inspect

    from headzoo._backends import available_backends

    # the runtime type checks of the test suite would refuse the value first; users get ours
    load = inspect.unwrap(hz.load_model)
    with pytest.raises(hz.InvalidOptionError, match="'bridge'.*'hooked'"):
        load("planted-demo", backend="hooked2")
    with pytest.raises(hz.InvalidOptionError, match="torch.dtype or its name"):
        load("planted-demo", dtype=16)
    with pytest.raises(hz.InvalidOptionError, match="model name"):
        load(42)
    if "hooked" not in available_backends():
        with pytest.raises(hz.UnsupportedModelError, match="TransformerLens 4.x removed"):
            hz.load_model("zoo-small", backend="hooked")
