"""Models headzoo can hand out: the bundled zoo (offline), headzoo checkpoint folders (offline) and
Hugging Face models by name, at any revision.

Training checkpoints come in two layouts: a folder of headzoo checkpoints (``train_zoo.py
--checkpoints``: ``step-000100/``, ...) and a Hugging Face repository whose revisions are the
steps (Pythia's ``step1000`` branches). ``load_model(path)`` reads the first kind directly;
``revision=`` picks one checkpoint of either kind, on the hub or in a local folder of revisions.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd
import torch

from headzoo._backends import Backend, check_backend
from headzoo._errors import InvalidOptionError, ModelNotFoundError, UnsupportedModelError, did_you_mean

__all__ = ["load_model", "list_models", "DEFAULT_MODEL"]

DEFAULT_MODEL = "zoo-small"


@dataclass(frozen=True)
class _ZooEntry:
    name: str
    description: str
    build: Callable[..., Any]


def _demo_words() -> tuple[list[str], tuple[tuple[int, ...], ...]]:
    """The demo vocabulary (256 words) and the id sequences its successor head advances."""
    from headzoo._ordinal import ORDINAL_LISTS

    chained = ["days", "months", "number_words", "ordinals", "letters"]
    words: list[str] = []
    for name in chained:
        words += [w for w in ORDINAL_LISTS[name][0] if w not in words]
    words += [f"tok{i}" for i in range(256 - len(words))]
    first = 2  # ids 0 and 1 are <bos> and <unk>
    seqs = tuple(tuple(first + words.index(w) for w in ORDINAL_LISTS[name][0]) for name in chained)
    return words, seqs


def _planted_demo(backend: Backend, device: Any, dtype: Any) -> Any:
    from headzoo.testing import PlantSpec, planted_model, word_tokenizer

    words, seqs = _demo_words()
    spec = PlantSpec(
        n_layers=3, n_heads=4, d_head=32, d_vocab=258, n_ctx=128,
        previous_token=(0, 2), duplicate_token=(1, 1), induction=(2, 3),
        successor=(1, 3), copy_suppression=(2, 0), successor_sequences=seqs, seed=2026,
    )
    return planted_model(
        spec, backend=backend, tokenizer=word_tokenizer(words), device=device, dtype=dtype, name="planted-demo"
    )


def _bundled(name: str) -> Callable[..., Any]:
    def build(backend: Backend, device: Any, dtype: Any) -> Any:
        import importlib.resources

        from headzoo._checkpoint import load_checkpoint

        folder = importlib.resources.files("headzoo").joinpath(f"_data/zoo/{name}")
        return load_checkpoint(str(folder), backend=backend, device=device, dtype=dtype, name=name)

    return build


_ZOO: dict[str, _ZooEntry] = {
    "zoo-small": _ZooEntry(
        "zoo-small",
        "4 layers x 8 heads, d_model 128, with MLPs and a WordPiece vocabulary; trained here (40 min on 2 CPU "
        "cores) on headzoo's curriculum v2: induction L3H1, n-gram induction L3H3, duplicate-token L3H6, "
        "successor L2H1, S-inhibition L1H5, name mover L3H1 (experiments/train_zoo.py --config small).",
        _bundled("zoo-small"),
    ),
    "zoo-medium": _ZooEntry(
        "zoo-medium",
        "6 layers x 8 heads, d_model 128, context 256, with MLPs and zoo-small's WordPiece vocabulary; trained here "
        "(91 min on 2 CPU cores) on curriculum v2, 4000 steps: induction and n-gram induction L3H5; IOI was still "
        "being learned when training stopped (experiments/train_zoo.py --config medium-cpu; docs/zoo.md).",
        _bundled("zoo-medium"),
    ),
    "planted-demo": _ZooEntry(
        "planted-demo",
        "3 layers x 4 heads, weights constructed by hand: previous-token L0H2, duplicate-token "
        "L1H1, induction L2H3 (K-composition with L0H2, a copying OV circuit), successor L1H3 "
        "(days, months, number words, ordinals, letters), copy-suppression L2H0; word tokenizer of 256 words "
        "(ordinal words, letters, tok0...).",
        _planted_demo,
    ),
}


def list_models() -> pd.DataFrame:
    """The bundled models: ``name, description, default``."""
    return pd.DataFrame(
        [{"name": e.name, "description": e.description, "default": e.name == DEFAULT_MODEL} for e in _ZOO.values()]
    )


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    backend: Backend = "bridge",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    device_map: str | int | dict[str, str | int] | None = None,
) -> Any:
    """A ready model: the bundled default, a zoo model by short name, a headzoo checkpoint folder,
    or a Hugging Face model, optionally at a revision.

    Args:
        name: ``None`` for the default bundled model (offline); a name from
            :func:`list_models` (offline); otherwise a Hugging Face model id or local directory,
            loaded with ``TransformerBridge.boot_transformers`` (or
            ``HookedTransformer.from_pretrained`` for ``backend="hooked"``), which needs the hub
            or a local cache. A name that is a near miss of a bundled one (``"zoo-smal"``) is
            refused at once with a suggestion instead of being looked up on the hub. A local
            headzoo checkpoint folder (``config.json`` of format ``headzoo.checkpoint/1``, as
            ``experiments/train_zoo.py --checkpoints`` writes) is loaded offline; its
            ``cfg.model_name`` is the checkpoint's name plus ``"@step-N"`` when it records a step.
        revision: which checkpoint of ``name``: for a hub id, the Hugging Face revision (branch,
            tag or commit, e.g. Pythia's ``"step1000"``); for a local folder, its subfolder of
            that name (a folder of revisions such as ``repo/step1000/``, each a Hugging Face
            model folder or a headzoo checkpoint). ``None``: the main revision / the folder itself.
        backend: ``"bridge"`` (TransformerBridge) or ``"hooked"`` (HookedTransformer, 3.x only).
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) that this torch
            build and machine offer; default: where TransformerLens puts it.
        dtype: a floating-point dtype, as ``torch.float16`` or ``"float16"``; default float32.
        device_map: split a model too large for one device across several, as Hugging Face
            accelerate does (``docs/large-models.md``): ``"auto"`` (also ``"balanced"``,
            ``"balanced_low_0"``, ``"sequential"``), a number of GPUs, or a dict from module
            names (``"transformer.h.0"``) to devices (``"cuda:1"``, ``1``, ``"cpu"``,
            ``"disk"``: offloaded, loaded layer by layer in each forward pass). Hugging Face
            models go through ``TransformerBridge.boot_transformers(device_map=...)``
            (``HookedTransformer.from_pretrained(n_devices=...)`` for ``backend="hooked"``,
            which splits by block count: ``"auto"`` or a number only). Bundled models are small:
            ``"auto"`` puts them on the first GPU, else the CPU; a dict must name one device.
            Exclusive with ``device``.

    Raises:
        InvalidOptionError: an unknown device, dtype, backend or device map, a device (also
            in a device map) this torch build or machine does not have; checked before
            anything is loaded.
        UnsupportedModelError: ``backend="hooked"`` on TransformerLens 4.x.
        ModelNotFoundError: a near miss of a bundled name, a name that is not bundled and
            could not be loaded from the hub/cache, or a local folder without that revision
            (the message lists the revisions it has).
        CheckpointError: a headzoo checkpoint folder that is damaged or incomplete.
    """
    torch_device = _check_device(device)
    torch_dtype = _check_dtype(dtype)
    check_backend(backend)
    revision = _check_revision(revision)
    split = _check_device_map(device_map, device, backend)
    name = DEFAULT_MODEL if name is None else _check_name(name)
    if name in _ZOO and revision is None:
        if split is not None:
            torch_device = _one_device(split)
        return _ZOO[name].build(backend, torch_device, torch_dtype)
    if name in _ZOO:
        raise InvalidOptionError(
            f"revision={revision!r}, but {name!r} is a bundled model, which has one version. Drop revision=, or "
            "pass a Hugging Face id or a local folder of revisions."
        )
    if os.path.isdir(name) and revision is not None:
        name, revision = _local_revision(name, revision), None
    if os.path.isdir(name) and _is_headzoo_checkpoint(name):
        return _load_headzoo_checkpoint(name, backend, torch_device, torch_dtype)
    if not os.path.exists(name):
        # A near miss of a bundled name is a typo, not a hub id: say so now rather than after
        # the hub's retries time out (tens of seconds offline).
        close = difflib.get_close_matches(name.strip().lower(), list(_ZOO), n=3, cutoff=_TYPO_CUTOFF)
        if close and "/" not in name:
            raise ModelNotFoundError(
                f"{name!r} is not a bundled model.{did_you_mean(name, close)} Bundled models: "
                f"{', '.join(_ZOO)} (hz.list_models()). Hugging Face ids are looked up on the hub "
                "as given, e.g. 'gpt2' or 'EleutherAI/pythia-70m'."
            )
    return _load_from_hub(name, backend, torch_device, torch_dtype, revision, split)


#: difflib ratio above which a non-bundled name counts as a typo of a bundled one
#: ("zoo-smal" 0.94, "zoo_small" 0.89; "zoo-large" 0.56 and "gpt2" stay hub ids).
_TYPO_CUTOFF = 0.8
_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "float64": torch.float64, "double": torch.float64}


def _check_name(name: object) -> str:
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise InvalidOptionError(
            f"load_model takes a model name, Hugging Face id or local directory as a string; got "
            f"{type(name).__name__} {name!r}. Bundled models: {', '.join(_ZOO)}."
        )
    if not name.strip():
        raise ModelNotFoundError(
            f"the model name is empty. Pass a bundled name ({', '.join(_ZOO)}), a Hugging Face id or "
            "a local directory, or nothing for the default model."
        )
    return name


def _check_revision(revision: object) -> str | None:
    if revision is None:
        return None
    if not isinstance(revision, str):
        raise InvalidOptionError(
            f"revision must be a string naming a branch, tag or commit (e.g. 'step1000') or a subfolder of a local "
            f"folder; got {type(revision).__name__} {revision!r}."
        )
    if not revision.strip():
        raise InvalidOptionError("revision is empty. Pass a revision such as 'step1000', or revision=None for the model itself.")
    return revision


def _local_revision(folder: str, revision: str) -> str:
    """The subfolder ``revision`` of the local folder of revisions ``folder``."""
    path = os.path.join(folder, revision)
    root, target = os.path.realpath(folder), os.path.realpath(path)
    # Only a folder inside it: "..", "../other" or an absolute path would load some other model.
    if not os.path.isabs(revision) and os.path.isdir(path) and target != root and os.path.commonpath([root, target]) == root:
        return path
    have = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    raise ModelNotFoundError(
        f"{folder!r} has no revision {revision!r} (no subfolder of that name).{did_you_mean(revision, have)} "
        f"Revisions there: {', '.join(have) or '(none: it has no subfolders)'}. Pass one of them, or "
        "revision=None to load the folder itself."
    )


def _is_headzoo_checkpoint(folder: str) -> bool:
    """Whether ``folder`` is meant as a headzoo checkpoint: its config.json says so, or is damaged
    (then load_checkpoint says how); a Hugging Face model folder's config.json has no such format."""
    from headzoo._checkpoint import FORMAT

    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return isinstance(fmt, str) and fmt.split("/")[0] == FORMAT.split("/")[0]


def _load_headzoo_checkpoint(folder: str, backend: Backend, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    """A headzoo checkpoint folder, named by its config (plus ``@step-N``) so atlases and sweeps tell steps apart."""
    from headzoo._checkpoint import CheckpointError, load_checkpoint

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None  # load_checkpoint reports the damaged config
    name = None
    if isinstance(meta, dict):
        base = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else os.path.basename(os.path.normpath(folder))
        step = meta.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise CheckpointError(f"{os.path.join(folder, 'config.json')} has step={step!r}; a step is a whole number >= 0")
        name = f"{base}@step-{step}" if step is not None else base
    return load_checkpoint(folder, backend=backend, device=device, dtype=dtype, name=name)


def _check_device(device: object) -> torch.device | None:
    """``device`` as a torch.device this torch build and machine can use, or None."""
    if device is None:
        return None
    if isinstance(device, str):
        try:
            device = torch.device(device.strip())
        except (RuntimeError, ValueError) as exc:
            raise InvalidOptionError(
                f"device={device!r} is not a torch device ({exc}). Use 'cpu', 'cuda', 'cuda:N' or 'mps'."
            ) from None
    if not isinstance(device, torch.device):
        raise InvalidOptionError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device; got {type(device).__name__} {device!r}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support (a CPU-only wheel)" if torch.version.cuda is None
                   and getattr(torch.version, "hip", None) is None else "no CUDA GPU is visible to torch")
            raise InvalidOptionError(
                f"device={str(device)!r}, but {why}. Use device='cpu', or install a CUDA build of torch on a machine with a GPU."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"device={str(device)!r}, but torch sees {torch.cuda.device_count()} CUDA device(s): use cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}."
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            why = "this torch build has no MPS support" if not torch.backends.mps.is_built() else "no MPS device is available"
            raise InvalidOptionError(f"device='mps', but {why} (MPS needs Apple silicon and macOS 12.3+). Use device='cpu'.")
    elif device.type == "meta":
        raise InvalidOptionError("device='meta' holds no weights, so no model can be loaded onto it. Use 'cpu' or a GPU.")
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = getattr(module, "is_available", None)
        if not callable(available) or not available():
            raise InvalidOptionError(f"device={str(device)!r} is not available in this torch build or on this machine. Use device='cpu'.")
    return device


def _check_dtype(dtype: object) -> torch.dtype | None:
    """``dtype`` as a floating-point torch.dtype, or None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().removeprefix("torch.")
        if key not in _DTYPES:
            raise InvalidOptionError(
                f"dtype={dtype!r} is not a dtype headzoo can load a model in. Use one of "
                f"{sorted(_DTYPES)} (or torch.float32, torch.float16, torch.bfloat16)."
            )
        return _DTYPES[key]
    if not isinstance(dtype, torch.dtype):
        raise InvalidOptionError(f"dtype must be a torch.dtype or its name (e.g. 'float16'); got {type(dtype).__name__} {dtype!r}.")
    if not dtype.is_floating_point:
        raise InvalidOptionError(f"dtype={dtype} is not a floating-point dtype; use torch.float32, torch.float16 or torch.bfloat16.")
    return dtype


def _load_from_hub(
    name: str, backend: Backend, device: torch.device | None, dtype: torch.dtype | None,
    revision: str | None = None, split: str | int | dict[str, str | int] | None = None,
) -> Any:
    """A Hugging Face model by id or local directory, at ``revision``, optionally split over
    devices by ``split`` (needs the hub or a local cache)."""
    try:
        if backend == "hooked":
            # Looked up at run time: only TransformerLens 3.x has it (4.x types the name as a
            # migration pointer), and check_backend has made sure this install does.
            # from_pretrained forwards revision= to the Hugging Face loader.
            hooked: Any = importlib.import_module("transformer_lens").HookedTransformer
            kwargs: dict[str, Any] = {"device": device} if device is not None else {}
            if revision is not None:
                kwargs["revision"] = revision
            n_devices = _n_devices(split)
            if n_devices > 1:
                kwargs["n_devices"] = n_devices
            model = hooked.from_pretrained(name, dtype=dtype or torch.float32, **kwargs)
        else:
            from transformer_lens.model_bridge import TransformerBridge

            boot: Any = TransformerBridge.boot_transformers
            kwargs = {"device": device}
            if isinstance(split, int):
                kwargs = {"n_devices": split} if split > 1 else {}
            elif split is not None and not _cpu_only_auto(split):
                kwargs = {"device_map": split}
                if isinstance(split, dict) and "disk" in split.values():
                    if "offload_folder" not in inspect.signature(boot).parameters:
                        raise UnsupportedModelError(
                            f"device_map={split!r} offloads layers to 'disk', but this TransformerLens "
                            f"({_tl_version()}) has no offload_folder= and its TransformerBridge refuses disk "
                            "offload. Upgrade transformer-lens to 4.x, or map every module to a GPU or the CPU."
                        )
                    # accelerate reads offloaded layers back from here in every forward pass,
                    # so the folder must outlive this call (it is the model's, like a cache)
                    kwargs["offload_folder"] = tempfile.mkdtemp(prefix="headzoo-offload-")
            if revision is not None:
                kwargs.update(_bridge_revision_kwargs(boot, name, revision, dtype or torch.float32))
            model = boot(name, dtype=dtype or torch.float32, **kwargs)
    except ValueError as exc:
        if split is not None and "device_map" in str(exc):
            # TransformerLens refuses some placements (3.x: CPU and GPU mixed in one map)
            raise UnsupportedModelError(
                f"this TransformerLens ({_tl_version()}) cannot place {name!r} by device_map={split!r}: {exc}"
            ) from exc
        raise _not_found(name, revision, exc) from exc
    except (OSError, KeyError) as exc:
        raise _not_found(name, revision, exc) from exc
    model.eval()
    return model


def _tl_version() -> str:
    """The installed TransformerLens' version, for messages."""
    import importlib.metadata

    try:
        return "transformer-lens " + importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        return "transformer-lens, version unknown"


def _not_found(name: str, revision: str | None, exc: BaseException) -> ModelNotFoundError:
    """The error for a model that is neither bundled nor loadable from the hub or a local path."""
    at = f" at revision {revision!r}" if revision is not None else ""
    return ModelNotFoundError(
        f"{name!r} is not a bundled model{did_you_mean(name, _ZOO)} and could not be loaded{at} "
        f"from the Hugging Face hub or a local cache/path ({type(exc).__name__}: {exc}). "
        f"Bundled models: {', '.join(_ZOO)}. For hub models, connect to the hub once or "
        "point HF_HOME at a cache that has the model."
    )


def _bridge_revision_kwargs(boot: Callable[..., Any], name: str, revision: str, dtype: torch.dtype) -> dict[str, Any]:
    """Keywords that make ``boot_transformers`` load ``revision``: its own ``revision=`` where it has
    one (TransformerLens 4.x), else the Hugging Face model loaded at that revision and handed in."""
    params = inspect.signature(boot).parameters
    if "revision" in params:
        return {"revision": revision}
    if "hf_model" in params:
        from transformers import AutoModelForCausalLM

        return {"hf_model": AutoModelForCausalLM.from_pretrained(name, revision=revision, torch_dtype=dtype)}
    raise UnsupportedModelError(
        "this TransformerLens' TransformerBridge.boot_transformers takes neither revision= nor hf_model=, so it "
        f"cannot load {name!r} at revision {revision!r}. Upgrade transformer-lens, or download that revision to a "
        "folder and pass the folder."
    )


_AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map: object, device: object, backend: Backend) -> str | int | dict[str, str | int] | None:
    """``device_map`` checked: every device it names exists here; exclusive with ``device``."""
    if device_map is None:
        return None
    if device is not None:
        raise InvalidOptionError(
            f"device={device!r} and device_map={device_map!r} both say where the model goes; pass one "
            "(device for a model that fits one device, device_map to split it)."
        )
    if isinstance(device_map, bool) or not isinstance(device_map, (str, int, dict)):
        raise InvalidOptionError(
            f"device_map must be 'auto', a number of GPUs or a dict from module names to devices; got "
            f"{type(device_map).__name__} {device_map!r}."
        )
    if isinstance(device_map, str):
        key = device_map.strip()
        if key not in _AUTO_MAPS:
            raise InvalidOptionError(
                f"device_map={device_map!r} is not one of {', '.join(map(repr, _AUTO_MAPS))}; or pass a number of "
                "GPUs, or a dict such as {'transformer.h.0': 'cuda:0', 'transformer.h.1': 'cuda:1'}."
            )
        return key
    if isinstance(device_map, int):
        available = torch.cuda.device_count()
        if device_map < 1 or device_map > max(available, 1):
            raise InvalidOptionError(
                f"device_map={device_map} asks for {device_map} GPU(s), but torch sees {available}; "
                f"pass a number from 1 to {max(available, 1)}, or 'auto'."
            )
        return device_map
    if backend == "hooked":
        raise InvalidOptionError(
            "backend='hooked' splits a model by block count only (HookedTransformer's n_devices): pass "
            "device_map='auto' or a number of GPUs, or use backend='bridge' for a dict device map."
        )
    if not device_map:
        raise InvalidOptionError("device_map={} places nothing; map module names to devices, or pass 'auto'.")
    out: dict[str, str | int] = {}
    for module, where in device_map.items():
        if not isinstance(module, str):
            raise InvalidOptionError(f"device_map keys are module names such as 'transformer.h.0'; got {module!r}.")
        if isinstance(where, bool) or not isinstance(where, (str, int)):
            raise InvalidOptionError(f"device_map[{module!r}] must be a device name or GPU index; got {where!r}.")
        if where == "disk":
            out[module] = where
            continue
        try:
            _check_device(f"cuda:{where}" if isinstance(where, int) else where)
        except InvalidOptionError as exc:
            raise InvalidOptionError(f"device_map[{module!r}]={where!r}: {exc}") from None
        out[module] = where
    return out


def _n_devices(split: str | int | dict[str, str | int] | None) -> int:
    """How many GPUs a block-count split (HookedTransformer's ``n_devices``) uses."""
    if isinstance(split, int):
        return split
    return torch.cuda.device_count() if isinstance(split, str) else 1


def _cpu_only_auto(split: str | int | dict[str, str | int]) -> bool:
    """``"auto"`` on a machine without a GPU: the whole model on the CPU, as one device."""
    return isinstance(split, str) and not torch.cuda.is_available()


def _one_device(split: str | int | dict[str, str | int]) -> torch.device:
    """The device a bundled (small) model goes to under ``split``."""
    if not isinstance(split, dict):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    devices = {torch.device(f"cuda:{v}" if isinstance(v, int) else v) if v != "disk" else "disk" for v in split.values()}
    if len(devices) != 1 or "disk" in devices:
        raise InvalidOptionError(
            f"bundled models fit on one device, so their device_map must name one (got {sorted(map(str, devices))}); "
            "pass device=... instead, or device_map='auto'. Splitting across devices is for Hugging Face models."
        )
    (device,) = devices
    return cast(torch.device, device)
