"""S-inhibition heads (IOI): at END they attend to the repeated name S2 and write into the name
movers' queries, so that the name movers attend to IO instead of S.

Wang et al. (2022), arXiv 2211.00593, section 3.2: path patching each head's output on ABC
prompts into the name movers' queries only (every other path left clean, Wang et al.'s noising)
lowers the logit difference ``logit(IO) - logit(S)`` and moves the name movers' attention from
IO to S. The name movers are the top heads of this model's ``name_mover`` score, found first;
the score is the drop as a share of the clean logit difference. GPT-2 small: 7.3, 7.9, 8.6, 8.10.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

import headzoo as hz


@hz.register
@dataclasses.dataclass(frozen=True)
class SInhibition(hz.Detector):
    """Share of the clean logit difference lost when the head's ABC output reaches the top
    ``n_name_movers`` name movers' queries (path patching, noising; name movers: heads whose
    ``name_mover`` score passes its threshold, or else the best one); heads in or above the
    highest name mover's layer cannot reach it and are not scored.

    Not measured: the shift of the name movers' attention from IO to S under each patch (it
    would need the name movers' patterns from every patched run, which path patching does not
    return); ``attn_s2`` gives the attention END -> S2 on the clean prompts instead.
    Options: those of ``name_mover``, and ``n_name_movers``.
    """

    name = "s_inhibition"
    description = "At the end of an IOI sentence it tells the name movers which name not to copy (the repeated one)."
    reference = "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild, arXiv 2211.00593"
    variant = (
        "path patching (noising, ABC corruption) of each head into the queries of the top name movers (by this model's "
        "name_mover score); score = drop of logit(IO) - logit(S) at END as a share of the clean difference"
    )
    threshold = 0.1  # headzoo's choice, as name_mover's
    kind = "causal"
    stage = "latent reasoning"

    n_prompts: int = 32
    seed: int = 0
    k: int = 5
    max_exact_heads: int | None = None
    memory_mb: float = 512.0
    n_name_movers: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        hz.get_detector("name_mover", **self._nm_options())
        n = self.n_name_movers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise hz.InvalidOptionError(f"{self.name}: n_name_movers must be an integer >= 1; got {n!r}")

    def _nm_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options().items() if k != "n_name_movers"}

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        info = hz.model_info(model)
        nm, movers = hz.get_detector("name_mover", **self._nm_options()).top_heads(
            model, self.n_name_movers, purpose="no name mover queries to patch", progress=progress, circuits=circuits)
        prompts = hz.ioi_prompts(model, n=self.n_prompts, seed=self.seed)
        # a name mover in layer 0 reads no head's output: no path leads into its query
        receivers = [(layer, head, "q") for layer, head in movers if layer > 0]
        if not receivers:
            raise hz.DetectorNotApplicableError(f"the name movers {movers} sit in layer 0: no head can write into their queries")
        effects = hz.patching.path_patch_heads(
            model, prompts.clean_prompts, prompts.corrupted_prompts, prompts.logit_diff(), receivers=receivers,
            direction="noise", memory_mb=self.memory_mb, progress=progress,
        )
        baseline = float(effects.meta["baseline"])
        drop = torch.full((info.n_layers, info.n_heads), float("nan"), dtype=torch.float64)
        f = effects.to_frame()
        drop[torch.as_tensor(f["layer"].to_numpy().copy()), torch.as_tensor(f["head"].to_numpy().copy())] = torch.as_tensor(
            baseline - f["effect"].to_numpy().copy(), dtype=torch.float64)
        attn_s2 = _attention_to_s2(model, prompts)
        metrics = {"score": drop / baseline, "logit_diff_drop": drop, "attn_s2": attn_s2}
        layer, head = (a.reshape(-1) for a in np.indices((info.n_layers, info.n_heads)))
        details = pd.DataFrame({"layer": layer, "head": head, **{k: v.numpy().reshape(-1) for k, v in metrics.items()}})
        meta = {
            "name_movers": [list(h) for h in movers],
            "receivers": [list(r) for r in receivers],
            "clean_logit_diff": baseline,
            "attention_shift": "not measured: path patching returns the metric only, not the name movers' patterns",
            "name_mover_meta": nm.meta,
            "cost": {"forward_passes": nm.meta["cost"]["forward_passes"] + len(f) + 3,
                     "prompts_per_pass": len(prompts),
                     "note": "the name_mover measurement, then path patching of every head below the name movers "
                             "(about one patched run per sender and one to record the receivers), and one run for patterns"},
        }
        return hz.DetectorOutput(metrics, meta, details)


def _attention_to_s2(model: Any, prompts: hz.IOIPrompts) -> torch.Tensor:
    """``[layer, head]`` mean attention END -> S2 on the clean prompts."""
    info = hz.model_info(model)
    rows = torch.arange(len(prompts))
    out = torch.zeros(info.n_layers, info.n_heads, dtype=torch.float64)

    def keep(layer: int) -> Any:
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            out[layer] = pattern[rows, :, prompts.end_pos, prompts.s2_pos].double().mean(0).cpu()
        return hook

    with torch.no_grad():
        model.run_with_hooks(prompts.clean.to(info.device),
                             fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in range(info.n_layers)])
    return out
