"""The shipped default model, zoo-small: it copies in context, solves its tasks, and the detectors'
top heads are the ones it uses (ablating them hurts far more than ablating random heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headzoo as hz
from headzoo._curriculum import TASKS, Curriculum


@pytest.fixture(scope="module")
def zoo():
    return hz.load_model("zoo-small")


@pytest.fixture(scope="module")
def batch(zoo):
    return next(Curriculum(n_ctx=zoo.cfg.n_ctx, seed=10_000).batches(48))


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


def test_it_copies_in_context_and_solves_its_tasks(zoo, batch):
    info = hz.model_info(zoo)
    ids = torch.cat(list(hz.RepeatedTokens(n_prompts=16).batches(info)))
    half = (ids.shape[1] - 1) // 2
    with torch.no_grad():
        logits = zoo(ids)[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    first, second = float(loss[:, 1:half].mean()), float(loss[:, half + 1 :].mean())
    print(f"repeated tokens: first copy {first:.3f}, second copy {second:.3f}")
    assert second < 0.05 * first
    accuracy = {name: _task(zoo, *batch, name)[1] for name in ("induction", "retrieval", "ordinal", "ioi")}
    print(accuracy)
    # chance: 1/481 for induction, 1/20 for retrieval, 1/2 for IOI, well under 0.5 for ordinals
    assert accuracy["induction"] > 0.95 and accuracy["retrieval"] > 0.9 and accuracy["ordinal"] > 0.85 and accuracy["ioi"] > 0.9


@pytest.mark.parametrize("detector,task", [("induction", "induction"), ("retrieval", "retrieval")])
def test_ablating_the_detected_heads_hurts_their_task_far_more_than_random_heads(zoo, batch, detector, task):
    ids, tasks = batch
    base = _task(zoo, ids, tasks, task)[0]
    scores = hz.detect(zoo, detector)
    top = [tuple(int(v) for v in r) for r in scores.top(1, detector)[["layer", "head"]].values]
    heads = [(layer, head) for layer in range(zoo.cfg.n_layers) for head in range(zoo.cfg.n_heads) if (layer, head) not in top]
    rng = np.random.default_rng(0)

    def damage(hs):
        with hz.ablate(zoo, hs, "mean", reference_tokens=ids[:16]):
            return _task(zoo, ids, tasks, task)[0] - base

    hit = damage(top)
    random = [damage([heads[i]]) for i in rng.choice(len(heads), 5, replace=False)]
    print(f"{detector}: top head {top} +{hit:.2f} loss; random heads {np.round(random, 2)}")
    assert hit > 3 * np.mean(random) and hit > 1.0
