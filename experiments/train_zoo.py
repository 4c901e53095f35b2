"""Train a small zoo model on headzoo's synthetic curriculum (seeded, resumable, logged per task).

Run::

    python experiments/train_zoo.py --config small --out results/zoo-small     # curriculum v2, 2 CPU cores
    python experiments/train_zoo.py --config medium --out results/zoo-medium --device cuda
    python experiments/train_zoo.py --config medium-cpu --out results/zoo-medium --checkpoints 24  # ~90 min, 2 cores
    python experiments/train_zoo.py --config cpu --out results/zoo-cpu     # curriculum v1, ~30 min on 2 CPU cores

A killed run resumes from ``OUT/checkpoint/`` when started again with the same arguments. Each
config names its curriculum: ``v2`` (``headzoo._curriculum_v2``: every head type's task, WordPiece
tokenizer) for ``small``/``medium``/``medium-cpu``/``tiny2``, ``v1`` (``headzoo._curriculum``: five tasks, word
tokenizer) for ``cpu``/``gpu``/``tiny``. The loss per task is written to ``OUT/log.jsonl``; the
final model goes to ``OUT/model/`` (``model.safetensors`` in TransformerLens' canonical names,
``config.json`` and the word tokenizer), which ``headzoo`` can ship and load into both model
classes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headzoo import _curriculum, _curriculum_v2

CONFIGS = {
    "small": dict(model=dict(n_layers=4, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=128),
                  steps=6000, batch=32, lr=1e-3, warmup=200, weight_decay=0.05, curriculum="v2"),
    "medium": dict(model=dict(n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=256),
                   steps=20000, batch=64, lr=6e-4, warmup=500, weight_decay=0.05, curriculum="v2"),
    # zoo-medium where no GPU is lent: 6 layers and context 256 as ``medium``, at zoo-small's width and
    # tokens per step (16 x 256). Measured on 2 CPU cores (OMP_NUM_THREADS=2): 1.35 s/step, so 4000
    # steps take ~90 min; ``medium`` itself takes 11 s/step there (~60 h), ``small`` 0.5 s/step.
    "medium-cpu": dict(model=dict(n_layers=6, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=256),
                       steps=4000, batch=16, lr=1e-3, warmup=200, weight_decay=0.05, curriculum="v2"),
    "tiny2": dict(model=dict(n_layers=2, d_model=64, n_heads=2, d_head=32, d_mlp=256, n_ctx=64),
                  steps=40, batch=8, lr=1e-3, warmup=5, weight_decay=0.0, curriculum="v2"),
    "cpu": dict(model=dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=128),
                steps=5000, batch=32, lr=1e-3, warmup=200, weight_decay=0.05),
    "gpu": dict(model=dict(n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=256),
                steps=20000, batch=64, lr=6e-4, warmup=500, weight_decay=0.05),
    "tiny": dict(model=dict(n_layers=2, d_model=64, n_heads=2, d_head=32, d_mlp=256, n_ctx=64),
                 steps=40, batch=8, lr=1e-3, warmup=5, weight_decay=0.0),
}


class Recipe:
    """What a config trains on: its curriculum's tasks, data stream and tokenizer."""

    def __init__(self, name: str) -> None:
        self.version = CONFIGS[name].get("curriculum", "v1")
        self.module = _curriculum_v2 if self.version == "v2" else _curriculum
        self.tasks: tuple[str, ...] = self.module.TASKS

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(self.module.vocabulary())

    def data(self, n_ctx: int, seed: int):
        klass = _curriculum_v2.CurriculumV2 if self.version == "v2" else _curriculum.Curriculum
        return klass(n_ctx=n_ctx, seed=seed)

    def tokenizer(self):
        if self.version == "v2":
            return _curriculum_v2.tokenizer()
        from headzoo.testing import word_tokenizer

        return word_tokenizer(list(self.vocabulary))


def model_config(name: str) -> dict:
    m = CONFIGS[name]["model"]
    return dict(**m, d_vocab=len(Recipe(name).vocabulary) + 2, act_fn="gelu", normalization_type="LN",
                positional_embedding_type="standard", attn_only=False, default_prepend_bos=True)


def build(cfg: dict, seed: int):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(seed)
    keys = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab", "d_mlp", "act_fn", "normalization_type",
            "positional_embedding_type", "attn_only", "default_prepend_bos")
    return TransformerBridge.boot_native(TransformerBridgeConfig(**{k: cfg[k] for k in keys}))


def task_losses(logits: torch.Tensor, ids: torch.Tensor, tasks: torch.Tensor,
                names: tuple[str, ...] = _curriculum.TASKS) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token loss, and the loss per task label of the predicted token."""
    per = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    labels = tasks[:, 1:].reshape(-1)
    out = {}
    for i, name in enumerate(names):
        mask = labels == i
        if mask.any():
            out[name] = float(per[mask].detach().mean())
    return per.mean(), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override the config's steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--export-only", action="store_true", help="only write OUT/model/ from the last checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this step as if killed (tests the resume)")
    p.add_argument("--checkpoints", type=int, default=0, metavar="N",
                   help="also keep N snapshots at log-spaced steps (and step 0) in OUT/checkpoints/step-XXXXXX/, "
                        "each a headzoo checkpoint folder that hz.load_model and hz.sweep read")
    args = p.parse_args()
    if args.export_only:
        export(Path(args.out), model_config(args.config), args, args.steps or CONFIGS[args.config]["steps"])
        return

    torch.use_deterministic_algorithms(True, warn_only=True)
    conf = CONFIGS[args.config]
    steps = args.steps or conf["steps"]
    cfg = model_config(args.config)
    out = Path(args.out)
    ckpt = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    model = build(cfg, args.seed).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=conf["lr"], betas=(0.9, 0.98), weight_decay=conf["weight_decay"])
    start = 0
    if (ckpt / "state.pt").exists():
        from safetensors.torch import load_file

        state = torch.load(ckpt / "state.pt", weights_only=True)
        if state["args"] != {"config": args.config, "seed": args.seed, "steps": steps}:
            sys.exit(f"{ckpt} belongs to another run ({state['args']}); use another --out")
        model.load_state_dict(load_file(ckpt / "model.safetensors"))
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"resuming at step {start}", file=sys.stderr)

    def lr_at(step: int) -> float:
        if step < conf["warmup"]:
            return conf["lr"] * (step + 1) / conf["warmup"]
        t = (step - conf["warmup"]) / max(1, steps - conf["warmup"])
        return conf["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    recipe = Recipe(args.config)
    data = recipe.data(cfg["n_ctx"], args.seed).batches(conf["batch"], start=start)
    snapshot_steps = log_spaced_steps(steps, args.checkpoints)
    if 0 in snapshot_steps and start == 0:
        snapshot(out, model, cfg, args, 0, steps)
    log = (out / "log.jsonl").open("a")
    bar = tqdm(range(start, steps), desc=f"train {args.config}", initial=start, total=steps)
    t0 = time.time()
    for step in bar:
        ids, tasks = next(data)
        ids, tasks = ids.to(args.device), tasks.to(args.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(ids)
        loss, per_task = task_losses(logits, ids, tasks, recipe.tasks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == steps - 1:
            log.write(json.dumps({"step": step, "loss": float(loss), **{f"loss_{k}": v for k, v in per_task.items()},
                                  "lr": lr_at(step), "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{float(loss):.3f}", **{k[:4]: f"{v:.2f}" for k, v in per_task.items() if k != "filler"})
        if (step + 1) % args.save_every == 0 or step == steps - 1:
            from safetensors.torch import save_file

            ckpt.mkdir(exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors.tmp")
            (ckpt / "model.safetensors.tmp").replace(ckpt / "model.safetensors")
            torch.save({"optimizer": opt.state_dict(), "step": step + 1,
                        "args": {"config": args.config, "seed": args.seed, "steps": steps}}, ckpt / "state.tmp")
            (ckpt / "state.tmp").replace(ckpt / "state.pt")
        if step + 1 in snapshot_steps:
            snapshot(out, model, cfg, args, step + 1, steps, loss=float(loss))
        if args.stop_after is not None and step + 1 >= args.stop_after:
            log.close()
            print(f"stopped after step {step + 1} (--stop-after)", file=sys.stderr)
            return
    log.close()
    print(f"trained {steps} steps in {time.time() - t0:.0f} s; checkpoint in {ckpt}")
    export(out, cfg, args, steps)


def log_spaced_steps(steps: int, n: int) -> set[int]:
    """``n`` snapshot steps from 0 to ``steps``, evenly spaced in log(1 + step): dense early,
    where heads form fast, sparse late. Deterministic, so a resumed run keeps the same ones."""
    if n <= 0:
        return set()
    if n == 1:
        return {steps}
    return {0} | {round(math.expm1(math.log1p(steps) * i / (n - 1))) for i in range(1, n)}


def snapshot(out: Path, model: torch.nn.Module, cfg: dict, args: argparse.Namespace, step: int, steps: int,
             loss: float | None = None) -> Path:
    """Write the weights at ``step`` as a headzoo checkpoint folder ``OUT/checkpoints/step-XXXXXX/``."""
    from headzoo._backends import from_bridge_state_dict
    from headzoo._checkpoint import save_checkpoint
    state = from_bridge_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    folder = out / "checkpoints" / f"step-{step:06d}"
    tmp = folder.with_name(folder.name + ".tmp")
    save_checkpoint(tmp, state, cfg, Recipe(args.config).tokenizer(), name=f"zoo-{args.config}", step=step,
                    training={"config": args.config, "seed": args.seed, "steps": steps, "loss": loss})
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def export(out: Path, cfg: dict, args: argparse.Namespace, steps: int) -> Path:
    """Write ``OUT/model/``: canonical safetensors, config.json (with the weights' hash) and tokenizer."""
    from safetensors.torch import load_file

    from headzoo._backends import from_bridge_state_dict
    from headzoo._checkpoint import save_checkpoint

    state = from_bridge_state_dict(load_file(out / "checkpoint" / "model.safetensors"), cfg)
    lines = (out / "log.jsonl").read_text().splitlines()
    final = json.loads(lines[-1]) if lines else {}
    name = f"zoo-{args.config}"
    path = save_checkpoint(
        out / "model", state, cfg, Recipe(args.config).tokenizer(), name=name,
        description=f"{cfg['n_layers']} layers x {cfg['n_heads']} heads, d_model {cfg['d_model']}, trained on headzoo's "
                    f"curriculum {Recipe(args.config).version}",
        training={"config": args.config, "seed": args.seed, "steps": steps, **CONFIGS[args.config], "final": final},
    )
    print(f"exported {path}")
    return path


if __name__ == "__main__":
    main()
