"""Function vectors: which heads carry the task of an in-context prompt?

Todd et al. (2024, Function Vectors in Large Language Models, arXiv 2310.15213): average each
head's output at a prompt's last token over clean in-context prompts of one task; then, on
prompts of the same task whose shown labels are shuffled (so the prompt no longer says which
task it is), replace one head's last-token output with that mean and measure how much the
probability of the correct answer rises. That rise, averaged over prompts, is the head's
causal indirect effect (CIE) for the task; heads with a large mean CIE over tasks carry a
"function vector".

Computed exactly, one head at a time, with several heads sharing one forward (the shuffled
batch repeated once per head, each copy patched at its own head) that restarts at the patched
layer from the shuffled run's residual stream; or estimated for every head at once by
attribution (the gradient of the answer's probability times the change of the head's output,
one forward and one backward pass), which ranks heads where exact patching of all of them costs
too much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from headzoo._effects import HeadEffects
from headzoo._errors import InvalidOptionError
from headzoo._forward import check_finite, hook_name, require_hooks, run, run_from_layer
from headzoo._icl_tasks import ICLPrompts, build_prompts, icl_tasks, separator_id
from headzoo._models import model_info
from headzoo._tokens import check_heads, check_int

__all__ = ["function_vector_effects"]

Method = Literal["exact", "attribution"]


def _answer_prob(logits: Float[torch.Tensor, "batch 1 vocab"], answer: Int[torch.Tensor, " batch"]) -> Float[torch.Tensor, " batch"]:
    """Probability of each row's answer at the (one) unembedded position."""
    probs = logits[:, -1].float().softmax(-1)
    return probs.gather(1, answer[:, None].to(probs.device))[:, 0]


class _Counter:
    """Forward and backward passes run, and prompt rows they carried (the cost in meta)."""

    def __init__(self) -> None:
        self.forward = self.backward = self.rows = 0

    def add(self, rows: int, backward: bool = False) -> None:
        self.forward += 1
        self.rows += rows
        self.backward += int(backward)

    def to_dict(self) -> dict[str, int]:
        return {"forward_passes": self.forward, "backward_passes": self.backward, "prompt_rows": self.rows}


def function_vector_effects(
    model: Any,
    tasks: Any = None,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    method: Method = "exact",
    n_prompts: int = 12,
    n_shots: int = 5,
    seed: int = 0,
    separator: str = "auto",
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[str, HeadEffects]:
    """Each head's causal indirect effect on in-context tasks (Todd et al. 2024).

    For every task: ``n_prompts`` clean prompts give each head's mean output ``z`` at the last
    token ``[n_layers, n_heads, d_head]``; ``n_prompts`` other prompts with shuffled labels
    receive it, one head at a time, at their last token.

    Args:
        tasks: built-in task names, :class:`hz.ICLTask` objects, or ``None`` for every
            built-in task the tokenizer can spell (see :func:`hz.icl_tasks`).
        heads: ``[(layer, head), ...]`` to patch (default: all).
        method: ``"exact"`` (patched forward passes) or ``"attribution"`` (first-order
            estimate of the same effect for the chosen heads, from one forward and one
            backward pass per task).
        n_prompts: clean prompts (for the means), and as many shuffled prompts (for the effect).
        n_shots: input-output pairs shown per prompt (``>= 2``).
        seed: seeds the prompts.
        separator: token between pairs (see :func:`headzoo._icl_tasks.separator_id`).
        batch_size: heads patched per forward (exact method); only speed depends on it.

    Returns:
        ``{task name: hz.HeadEffects}``: rows ``layer, head``, ``effect`` = mean probability of
        the correct answer on the shuffled prompts with that head patched (``stderr`` and a 95%
        interval over prompts); ``meta["baseline"]`` = on the unpatched shuffled prompts (so
        the CIE is ``effect - baseline``), ``meta["source"]`` = on the clean prompts; also the
        task's coverage, accuracies, and ``meta["cost"]`` (forward and backward passes).

    Raises:
        UnsupportedTokenizerError: the tokenizer cannot spell enough pairs of the tasks.
        InvalidOptionError: a bad option.
    """
    info = model_info(model)
    check_finite(model)
    if method not in ("exact", "attribution"):
        raise InvalidOptionError(f"method must be 'exact' or 'attribution'; got {method!r}")
    n_prompts = check_int(n_prompts, "n_prompts", minimum=1)
    n_shots = check_int(n_shots, "n_shots", minimum=2)
    seed = check_int(seed, "seed")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(separator, str):
        raise InvalidOptionError(f"separator must be a string ('auto', '' for none, or a one-token string); got {separator!r}")
    chosen = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)] if heads is None else (
        check_heads(heads, info.n_layers, info.n_heads))
    if not chosen:
        raise InvalidOptionError("heads is empty; give at least one (layer, head) or None for all")
    bound = icl_tasks(model, tasks, min_pairs=n_shots + 1)
    tokenizer = getattr(model, "tokenizer", None)
    sep = separator_id(tokenizer, separator)
    bos = info.bos_token_id if info.prepend_bos else None
    length = (3 if sep is not None else 2) * n_shots + 1 + int(bos is not None)
    if length > info.n_ctx:
        raise InvalidOptionError(f"a prompt of n_shots={n_shots} is {length} tokens, beyond the model's context of {info.n_ctx}")
    z_hooks = {layer: hook_name("z", layer) for layer in range(info.n_layers)}
    require_hooks(model, z_hooks.values(), "function-vector patching")
    device = torch.device(info.device)
    out: dict[str, HeadEffects] = {}
    show = progress if progress is not None else method == "exact" and len(chosen) * len(bound) > 64
    bar = tqdm(total=len(chosen) * len(bound), desc="headzoo function vectors", disable=not show, leave=False)
    try:
        for task in bound:
            prompts = build_prompts(task, n_prompts, n_shots, seed, bos=bos, sep=sep)
            cost = _Counter()
            mean_z, source, clean_acc = _clean_means(model, prompts, z_hooks, device, cost)
            if method == "exact":
                values, baseline, acc, engine = _exact(model, prompts, mean_z, chosen, z_hooks, device, batch_size, cost, bar)
            else:
                values, baseline, acc = _attribution(model, prompts, mean_z, chosen, z_hooks, device, cost)
                engine = {}
                bar.update(len(chosen))
            meta = {
                "kind": "function_vector", "method": method, "task": task.to_dict(),
                "direction": "clean mean head output (last token) into shuffled-label prompts",
                "metric": "probability of the correct answer at the last token",
                "baseline": float(baseline.mean()), "source": source, "clean_accuracy": clean_acc,
                "shuffled_accuracy": acc, "n_prompts": n_prompts, "n_shots": n_shots, "seed": seed,
                "separator": None if sep is None else int(sep), "prepend_bos": bos is not None,
                "prompt_length": int(prompts.clean.shape[1]), "cost": cost.to_dict(), "engine": engine,
            }
            out[task.name] = HeadEffects.from_values(chosen, ("head",), values.numpy(), meta, seed=seed)
    finally:
        bar.close()
    return out


def _clean_means(
    model: Any, prompts: ICLPrompts, z_hooks: dict[int, str], device: torch.device, cost: _Counter
) -> tuple[Float[torch.Tensor, "layer head d_head"], float, float]:
    """Each head's mean last-token output over the clean prompts, and the clean answer's mean
    probability and top-1 accuracy."""
    zs: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Callable[..., None]:
        def fn(z: torch.Tensor, hook: Any) -> None:
            zs[layer] = z[:, -1].detach().double().mean(0)  # [head, d_head]
        return fn

    with torch.no_grad():
        # an editing hook that returns nothing: TransformerLens hands it z as [batch, pos, head,
        # d_head] also on bridges whose raw hook output is flattened, the shape the patch edits
        logits = run(model, prompts.clean.to(device), edit=[(name, keep(layer)) for layer, name in z_hooks.items()], logits="last")
    cost.add(len(prompts.clean))
    assert logits is not None
    p = _answer_prob(logits, prompts.clean_answer)
    acc = (logits[:, -1].argmax(-1).cpu() == prompts.clean_answer).double().mean()
    mean_z = torch.stack([zs[layer] for layer in sorted(zs)])
    return mean_z, float(p.double().mean()), float(acc)


def _exact(
    model: Any, prompts: ICLPrompts, mean_z: torch.Tensor, chosen: list[tuple[int, int]], z_hooks: dict[int, str],
    device: torch.device, batch_size: int, cost: _Counter, bar: Any,
) -> tuple[torch.Tensor, torch.Tensor, float, dict[str, Any]]:
    """``[n_heads_chosen, n_prompts]`` patched probabilities, ``[n_prompts]`` baseline, accuracy."""
    corrupted, answer = prompts.corrupted.to(device), prompts.answer
    n = corrupted.shape[0]
    layers = sorted({layer for layer, _ in chosen})
    resid_names = {layer: hook_name("resid_pre", layer) for layer in layers}
    can_reuse = all(name in model.hook_dict for name in resid_names.values())
    resid: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            resid[layer] = x.detach().clone()
        return fn

    with torch.no_grad():
        base_logits = run(model, corrupted, read={resid_names[layer]: keep(layer) for layer in layers} if can_reuse else None,
                          logits="last")
        cost.add(n)
        assert base_logits is not None
        baseline = _answer_prob(base_logits, answer).double().cpu()
        acc = float((base_logits[:, -1].argmax(-1).cpu() == answer).double().mean())
        reuse = False
        if can_reuse:
            # restart at the patched layer only where that reproduces the model's own forward
            again = run_from_layer(model, resid[layers[0]], layers[0], logits="last")
            cost.add(n)
            reuse = again is not None and bool(torch.allclose(again, base_logits, rtol=1e-4, atol=1e-4))
        values: dict[tuple[int, int], torch.Tensor] = {}
        for layer in layers:
            in_layer = [h for lay, h in chosen if lay == layer]
            for start in range(0, len(in_layer), batch_size):
                group = in_layer[start : start + batch_size]
                g = len(group)
                donor = mean_z[layer].to(device)

                def patch(z: torch.Tensor, hook: Any, group: list[int] = group, donor: torch.Tensor = donor) -> torch.Tensor:
                    z = z.clone()
                    for j, h in enumerate(group):
                        z[j * n : (j + 1) * n, -1, h] = donor[h].to(z.dtype)
                    return z

                edit = [(z_hooks[layer], patch)]
                if reuse:
                    logits = run_from_layer(model, resid[layer].repeat(g, 1, 1), layer, edit=edit, logits="last")
                else:
                    logits = run(model, corrupted.repeat(g, 1), edit=edit, logits="last")
                cost.add(g * n)
                assert logits is not None
                p = _answer_prob(logits, answer.repeat(g)).double().cpu().view(g, n)
                for j, h in enumerate(group):
                    values[(layer, h)] = p[j]
                bar.update(g)
    stacked = torch.stack([values[head] for head in chosen])
    return stacked, baseline, acc, {"reused_layers": reuse}


def _attribution(
    model: Any, prompts: ICLPrompts, mean_z: torch.Tensor, chosen: list[tuple[int, int]], z_hooks: dict[int, str],
    device: torch.device, cost: _Counter,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """First-order estimate ``p + dp/dz . (mean_z - z)`` of every chosen patch, per prompt."""
    corrupted, answer = prompts.corrupted.to(device), prompts.answer
    layers = sorted({layer for layer, _ in chosen})
    leaves: dict[int, torch.Tensor] = {}

    def leaf(layer: int) -> Callable[..., torch.Tensor]:
        def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
            # a fresh leaf: the gradient reaches it with frozen parameters, and none lands in .grad
            leaves[layer] = z.detach().clone().requires_grad_(True)
            return leaves[layer]
        return fn

    with torch.enable_grad():
        logits = run(model, corrupted, edit=[(z_hooks[layer], leaf(layer)) for layer in layers], logits="last")
        assert logits is not None
        p = _answer_prob(logits, answer)
        grads = torch.autograd.grad(p.sum(), [leaves[layer] for layer in layers], allow_unused=True)
    cost.add(len(corrupted), backward=True)
    baseline = p.detach().double().cpu()
    acc = float((logits.detach()[:, -1].argmax(-1).cpu() == answer).double().mean())
    by_layer = dict(zip(layers, grads))
    rows = []
    for layer, head in chosen:
        grad = by_layer[layer]
        z = leaves[layer].detach()[:, -1, head].double()  # [n, d_head]
        if grad is None:  # the answer does not depend on this layer's heads at all
            rows.append(baseline.clone())
            continue
        delta = (grad[:, -1, head].double() * (mean_z[layer, head].to(z.device) - z)).sum(-1)
        rows.append(baseline + delta.cpu())
    return torch.stack(rows), baseline, acc
