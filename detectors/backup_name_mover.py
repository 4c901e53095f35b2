"""Backup name mover heads (IOI): they do little while the name movers work, and take over
when the name movers are knocked out.

Wang et al. (2022), arXiv 2211.00593, section 3.4: after mean-ablating the name movers (their
activation replaced by its mean over the ABC distribution), some heads' direct effect on the
logit difference rises. headzoo measures each head's direct effect by path patching to the logits
(the ``name_mover`` measurement) twice, as the model is and with the top name movers
mean-ablated; the score is the rise of the direct effect as a share of the clean logit
difference. GPT-2 small: 10.10, 10.6, 10.2, 10.1, 11.2, 9.7, 9.0, 11.9.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

import headzoo as hz


def reference_block(prompts: hz.IOIPrompts) -> torch.Tensor:
    """``[m, pos]`` the ABC prompts of the most common length (every row whole, no padding): the
    distribution a mean ablation averages over."""
    lengths = prompts.lengths
    common = int(torch.mode(lengths).values)
    rows = (lengths == common).nonzero().flatten()
    return prompts.corrupted[rows, :common]


@hz.register
@dataclasses.dataclass(frozen=True)
class BackupNameMover(hz.Detector):
    """Rise of the head's direct effect on ``logit(IO) - logit(S)`` (path patching to the logits,
    as ``name_mover``) when the top ``n_name_movers`` name movers (heads whose ``name_mover``
    score passes its threshold, or else the best one) are mean-ablated over ABC prompts, as a share of the clean logit difference. The ablated heads are not scored.

    Metrics: ``drop_before``, ``drop_after`` (the direct effects themselves).
    Options: those of ``name_mover``, and ``n_name_movers``.
    """

    name = "backup_name_mover"
    description = "Its direct effect on the IOI answer rises when the name movers are knocked out."
    reference = "Wang, Variengien, Conmy, Shlegeris, Steinhardt 2022, Interpretability in the Wild, arXiv 2211.00593"
    variant = (
        "direct effect = drop of logit(IO) - logit(S) when the head's direct path to the logits carries its ABC output "
        "(path patching, noising); score = (direct effect with the top name movers mean-ablated over ABC prompts - "
        "without) / clean logit difference"
    )
    threshold = 0.05  # headzoo's choice: Wang et al. report the rise per head without a cut-off
    kind = "causal"
    stage = "expression preparation"

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
            model, self.n_name_movers, purpose="it has no name mover to knock out", progress=progress, circuits=circuits)
        prompts = hz.ioi_prompts(model, n=self.n_prompts, seed=self.seed)
        before = nm.metrics["logit_diff_drop"]
        measured = [(int(ly), int(hd)) for ly, hd in zip(*np.nonzero(~before.isnan().numpy()))]
        senders = None if len(measured) == info.n_layers * info.n_heads else measured
        ref = reference_block(prompts)
        with hz.ablate(model, movers, method="mean", reference_tokens=ref):
            effects = hz.patching.path_patch_heads(
                model, prompts.clean_prompts, prompts.corrupted_prompts, prompts.logit_diff(), receivers="logits",
                senders=senders, direction="noise", memory_mb=self.memory_mb, progress=progress,
            )
        after_baseline = float(effects.meta["baseline"])
        after = torch.full_like(before, float("nan"))
        f = effects.to_frame()
        after[torch.as_tensor(f["layer"].to_numpy().copy()), torch.as_tensor(f["head"].to_numpy().copy())] = torch.as_tensor(
            after_baseline - f["effect"].to_numpy().copy(), dtype=after.dtype)
        clean = float(nm.meta["path_patching_baseline"])
        score = (after - before) / clean
        for ly, hd in movers:
            score[ly, hd] = float("nan")
        metrics = {"score": score, "drop_before": before, "drop_after": after}
        layer, head = (a.reshape(-1) for a in np.indices((info.n_layers, info.n_heads)))
        details = pd.DataFrame({"layer": layer, "head": head, **{k: v.numpy().reshape(-1) for k, v in metrics.items()}})
        n_measured = len(measured)
        meta = {
            "name_movers": [list(h) for h in movers],
            "clean_logit_diff": clean,
            "ablated_logit_diff": after_baseline,
            "ablation": f"mean over {len(ref)} ABC prompts of length {ref.shape[1]} (hz.ablate method='mean')",
            "name_mover_meta": nm.meta,
            "cost": {"forward_passes": nm.meta["cost"]["forward_passes"] + n_measured + 3,
                     "prompts_per_pass": len(prompts),
                     "note": "the name_mover measurement, then one patched run per measured head with the name movers "
                             "ablated, its clean and ABC runs and the ablation's reference run"},
        }
        return hz.DetectorOutput(metrics, meta, details)
