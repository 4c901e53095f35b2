"""Name mover heads (IOI): at the end of "When Mary and John went to the store, John gave a
drink to", they attend to the indirect object " Mary" and copy it to the output.

Wang et al. (2022), Interpretability in the Wild, arXiv 2211.00593. Found by path patching each
head's direct path to the logits: the head's output on ABC prompts (the same sentences with the
three names replaced by three others) patched into the clean run, every other head frozen at its
clean output (their "noising" convention). The drop in the logit difference ``logit(IO) -
logit(S)`` at END, as a share of the clean one, is the score: positive for a head that carries
IO to the output. Supporting metrics: attention END -> IO and END -> S on the clean prompts, and
the OV copy score (share of names whose own token is in the top 5 of the head's OV circuit read
through the first block; name movers > 95%, an average head < 20%). GPT-2 small: 9.9, 10.0, 9.6.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

import headzoo as hz

#: vocabulary columns per block when ranking a name's own logit in its OV row
_BLOCK = 8192


def ioi_setup(model: Any, n_prompts: int, seed: int) -> tuple[hz.IOIPrompts, float, float]:
    """The prompts and the model's clean and ABC logit differences; refuses a model that does
    not prefer IO (nothing to explain)."""
    prompts = hz.ioi_prompts(model, n=n_prompts, seed=seed)
    with torch.no_grad():
        clean = float(prompts.logit_diffs(model(prompts.clean.to(hz.model_info(model).device))).mean())
        abc = float(prompts.logit_diffs(model(prompts.corrupted.to(hz.model_info(model).device))).mean())
    if not clean > 0:
        raise hz.DetectorNotApplicableError(
            f"the model does not solve IOI: its mean logit difference logit(IO) - logit(S) on {n_prompts} prompts is "
            f"{clean:.3f}; IOI heads are defined by how they produce a positive one"
        )
    return prompts, clean, abc


def effect_matrix(effects: hz.HeadEffects, n_layers: int, n_heads: int) -> torch.Tensor:
    """``[layer, head]`` effects from a per-head :class:`hz.HeadEffects` (NaN where not measured)."""
    out = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    f = effects.to_frame()
    out[torch.as_tensor(f["layer"].to_numpy().copy()), torch.as_tensor(f["head"].to_numpy().copy())] = torch.as_tensor(
        f["effect"].to_numpy().copy(), dtype=torch.float64)
    return out


def direct_drops(
    model: Any, prompts: hz.IOIPrompts, *, max_exact_heads: int | None, memory_mb: float, progress: bool | None,
) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """``([layer, head] drop of the logit difference when the head's direct path to the logits
    carries its ABC output, clean logit difference as path patching measured it, meta)``.

    With ``max_exact_heads`` below the number of heads, attribution patching of every head's
    output picks the heads with the largest estimated drops; only those are patched exactly
    (the others are NaN) and the agreement of both on them is reported.
    """
    info = hz.model_info(model)
    metric = prompts.logit_diff()
    clean, corrupted = prompts.clean_prompts, prompts.corrupted_prompts
    n_all = info.n_layers * info.n_heads
    meta: dict[str, Any] = {"method": "exact path patching of every head", "n_exact": n_all}
    senders = None
    attribution = None
    if max_exact_heads is not None and max_exact_heads < n_all:
        est = hz.patching.attribution_patch_heads(model, clean, corrupted, metric, direction="noise")
        attribution = est.meta["baseline"] - effect_matrix(est, info.n_layers, info.n_heads)
        order = attribution.abs().flatten().argsort(descending=True)[:max_exact_heads]
        senders = [(int(i) // info.n_heads, int(i) % info.n_heads) for i in order]
        meta = {"method": f"attribution patching of every head, exact path patching of the {max_exact_heads} "
                          "with the largest estimated |drop|", "n_exact": max_exact_heads}
    effects = hz.patching.path_patch_heads(
        model, clean, corrupted, metric, receivers="logits", senders=senders, direction="noise",
        memory_mb=memory_mb, progress=progress,
    )
    baseline = float(effects.meta["baseline"])
    drops = baseline - effect_matrix(effects, info.n_layers, info.n_heads)
    if attribution is not None:
        both = ~drops.isnan()
        a, e = attribution[both].numpy(), drops[both].numpy()
        meta["attribution_agreement"] = {
            "pearson": float(np.corrcoef(a, e)[0, 1]) if len(a) > 1 and a.std() > 0 and e.std() > 0 else None,
            "same_sign": float((np.sign(a) == np.sign(e)).mean()),
            "n_heads": int(both.sum()),
        }
    return drops, baseline, meta


def end_attention(model: Any, prompts: hz.IOIPrompts) -> tuple[torch.Tensor, torch.Tensor]:
    """``[layer, head]`` mean attention END -> IO and END -> S (both S1 and S2) on the clean prompts."""
    info = hz.model_info(model)
    rows = torch.arange(len(prompts))
    to_io = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
    to_s = torch.zeros_like(to_io)

    def keep(layer: int) -> Any:
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            end = pattern[rows, :, prompts.end_pos].double()  # [n, head, key]
            to_io[layer] = end[rows, :, prompts.io_pos].mean(0).cpu()
            to_s[layer] = (end[rows, :, prompts.s1_pos] + end[rows, :, prompts.s2_pos]).mean(0).cpu()
        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in range(info.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(prompts.clean.to(info.device), fwd_hooks=hooks)
    return to_io, to_s


def copy_scores(model: Any, prompts: hz.IOIPrompts, k: int, circuits: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``([layer, head] share of the prompts' names whose own token is in the top k of the OV
    circuit, [layer, head] share in the bottom k)``, the circuit read through the first block
    (effective embedding ``mlp0``) into the whole vocabulary, in column blocks."""
    info = hz.model_info(model)
    circuits = circuits if circuits is not None else hz.WeightCircuits(model)
    ids = torch.tensor(sorted(set(prompts.io.tolist()) | set(prompts.s.tolist()) | set(prompts.abc.flatten().tolist())))
    x = circuits.embedding(ids, "mlp0")
    n_out = circuits.n_outputs
    top = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)
    bottom = torch.zeros_like(top)
    for layer in range(info.n_layers):
        own = circuits.ov_logits(layer, x, ids)  # [head, n, n]
        own = own.diagonal(dim1=1, dim2=2)[..., None]  # [head, n, 1]
        above = torch.zeros(info.n_heads, len(ids), dtype=torch.long)
        below = torch.zeros_like(above)
        for start in range(0, n_out, _BLOCK):
            cols = torch.arange(start, min(start + _BLOCK, n_out))
            logits = circuits.ov_logits(layer, x, cols)  # [head, n, block]
            above += (logits > own).sum(-1).cpu()
            below += (logits < own).sum(-1).cpu()
        top[layer] = (above < k).double().mean(-1)
        bottom[layer] = (below < k).double().mean(-1)
    return top, bottom


@hz.register
@dataclasses.dataclass(frozen=True)
class NameMover(hz.Detector):
    """Share of the clean logit difference lost when the head's direct path to the logits carries
    its output on ABC prompts (path patching, Wang et al.'s noising). Metrics: ``attn_io``,
    ``attn_s`` (attention END -> IO, END -> S1 + S2), ``copy_score`` (names in the top ``k`` of
    the OV circuit), ``logit_diff_drop`` (the drop itself).

    Options:
        n_prompts, seed: the IOI prompts (:func:`hz.ioi_prompts`).
        k: the copy score's top-k.
        max_exact_heads: ``None``: path patch every head exactly. A number: rank every head by
            attribution patching and path patch only that many (the others are not scored).
        memory_mb: memory budget of path patching's shared forward passes.
    """

    name = "name_mover"
    description = "At the end of an IOI sentence it attends to the indirect object and copies its name to the output."
    variant = (
        "path patching (noising, ABC corruption) of each head's direct path to the logits; score = drop in "
        "logit(IO) - logit(S) at END as a share of the clean difference; OV copy score: names in the top 5 of "
        "W_EE(mlp0) W_OV W_U"
    )
    # headzoo's choice, not the paper's: Wang et al. pick name movers by eye from the path-patching
    # map (their Fig. 3); a tenth of the clean logit difference separates them there
    threshold = 0.1

    n_prompts: int = 32
    seed: int = 0
    k: int = 5
    max_exact_heads: int | None = None
    memory_mb: float = 512.0

    kind = "causal"
    stage = "expression preparation"
    reference = "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild, arXiv 2211.00593"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("n_prompts", 1), ("k", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise hz.InvalidOptionError(f"{self.name}: {name} must be an integer >= {low}; got {value!r}")
        m = self.max_exact_heads
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise hz.InvalidOptionError(f"{self.name}: max_exact_heads must be None (all heads) or an integer >= 1; got {m!r}")
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, (int, float)) or not self.memory_mb > 0:
            raise hz.InvalidOptionError(f"{self.name}: memory_mb must be a positive number; got {self.memory_mb!r}")

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        if circuits is None:
            return self._measure(model, progress, None)
        # negative_name_mover, backup_name_mover and s_inhibition read this same measurement:
        # within one hz.detect call (one workspace) the sweep runs once for all of them
        key = (self.name, tuple(sorted((k, repr(v)) for k, v in self.options().items())))
        out = circuits.shared(key, lambda: self._measure(model, progress, circuits))
        # each reader gets its own copy: nothing one detector does to it reaches another
        return hz.DetectorOutput({k: v.clone() for k, v in out.metrics.items()}, copy.deepcopy(out.meta), out.details.copy())

    def top_heads(self, model: Any, n: int, *, purpose: str, progress: bool | None = None,
                  circuits: Any = None) -> tuple[hz.DetectorOutput, list[tuple[int, int]]]:
        """This measurement on ``model`` and up to ``n`` heads whose score passes the threshold,
        best first (the single best head when none does but its score is positive): the name
        movers that backup_name_mover knocks out and s_inhibition patches into.

        Raises:
            DetectorNotApplicableError: no head has a positive score (``purpose`` says what
                the caller needed name movers for).
        """
        nm = self.compute(model, progress=progress, circuits=circuits)
        score = nm.metrics["score"]
        n_heads = score.shape[1]
        flat = torch.nan_to_num(score.flatten(), nan=-float("inf"))
        order = flat.argsort(descending=True)[:n]
        assert self.threshold is not None  # declared above
        heads = [(int(i) // n_heads, int(i) % n_heads) for i in order if flat[i] >= self.threshold]
        if not heads and flat[order[0]] > 0:
            heads = [(int(order[0]) // n_heads, int(order[0]) % n_heads)]
        if not heads:
            raise hz.DetectorNotApplicableError(f"no head of this model has a positive name_mover score: {purpose}")
        return nm, heads

    def _measure(self, model: Any, progress: bool | None, circuits: Any) -> hz.DetectorOutput:
        info = hz.model_info(model)
        prompts, clean, abc = ioi_setup(model, self.n_prompts, self.seed)
        drops, baseline, how = direct_drops(model, prompts, max_exact_heads=self.max_exact_heads,
                                            memory_mb=self.memory_mb, progress=progress)
        share = drops / baseline
        to_io, to_s = end_attention(model, prompts)
        top, bottom = copy_scores(model, prompts, self.k, circuits)
        metrics = {"score": share, "logit_diff_drop": drops, "attn_io": to_io, "attn_s": to_s,
                   "copy_score": top}
        layer, head = (a.reshape(-1) for a in np.indices((info.n_layers, info.n_heads)))
        details = pd.DataFrame({"layer": layer, "head": head, **{k: v.numpy().reshape(-1) for k, v in metrics.items()},
                                "copy_score_top": top.numpy().reshape(-1), "copy_score_bottom": bottom.numpy().reshape(-1)})
        n_exact = int(how["n_exact"])
        meta = {
            "prompts": {"n": len(prompts), "seed": self.seed, **{k: v for k, v in prompts.coverage.items()
                                                                  if k in ("names_kept", "names_listed", "templates_kept", "templates_listed")}},
            "clean_logit_diff": clean, "abc_logit_diff": abc, "path_patching_baseline": baseline,
            "direction": "noise: each head's ABC output into the clean run, its direct path to the logits only",
            "copy_k": self.k, **how,
            "cost": {"forward_passes": n_exact + 3 + (2 if self.max_exact_heads is not None else 0),
                     "prompts_per_pass": len(prompts),
                     "note": "one patched run per measured head, clean and ABC runs, one run for the attention "
                             "patterns (attribution adds a forward and a backward pass); plus the OV copy score over the vocabulary"},
        }
        return hz.DetectorOutput(metrics, meta, details)
