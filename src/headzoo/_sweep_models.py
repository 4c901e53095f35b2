"""What a sweep runs over: models and training checkpoints, each described by a :class:`SweepModel`.

A sweep asks one question of many models: which heads does each have, and when during
training did they form? Its inputs are a list of bundled names, Hugging Face ids, local
folders, globs of checkpoint folders (``runs/zoo/checkpoints/step-*``) and hub revisions
(Pythia's ``EleutherAI/pythia-70m@step1000``); :func:`expand_models` turns them into one
:class:`SweepModel` per model or checkpoint, with its training step and the series it belongs to.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import glob
import json
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headzoo._errors import InvalidOptionError, ModelNotFoundError, did_you_mean

__all__ = ["SweepModel", "expand_models"]

_STEP = re.compile(r"step[-_]?(\d+)")
_GLOB = re.compile(r"[*?\[]")
# A Hugging Face id: "name" or "owner/name", made of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CHECKPOINT_FORMAT = "headzoo.checkpoint/1"  # headzoo._checkpoint.FORMAT (not imported: that pulls in torch)


@dataclasses.dataclass(frozen=True)
class SweepModel:
    """One model or checkpoint of a sweep.

    Attributes:
        model: the display label, unique within a sweep (``"zoo-cpu@step-001605"``).
        source: what :func:`hz.load_model` loads (a bundled name, a folder, a hub id); ``None``
            when ``loader`` builds the model.
        revision: a hub revision (``"step1000"``), or for a local folder the subfolder to load.
        step: the training step of a checkpoint (``None`` for a plain model).
        series: what the checkpoints belong to (a training run, a hub repo); ``None`` means
            the model itself.
        loader: a picklable zero-argument callable that returns a model (a planted model, a
            ``functools.partial``); exclusive with ``source``. Its identity in a job id is its
            qualified name and arguments, so two loaders that differ otherwise need two labels.

    Raises:
        InvalidOptionError: an empty label, both or neither of ``source`` and ``loader``, or a
            field of the wrong type.
    """

    model: str
    source: str | None
    revision: str | None = None
    step: int | None = None
    series: str | None = None
    loader: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidOptionError(f"SweepModel.model must be a non-empty label; got {self.model!r}")
        if (self.source is None) == (self.loader is None):
            raise InvalidOptionError(
                f"SweepModel {self.model!r} needs exactly one of source (a name, folder or hub id for hz.load_model) "
                "and loader (a zero-argument callable returning a model)"
            )
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", os.fspath(self.source))
        if self.source is not None and (not isinstance(self.source, str) or not self.source.strip()):
            raise InvalidOptionError(f"SweepModel {self.model!r}: source must be a non-empty string; got {self.source!r}")
        if self.loader is not None and not callable(self.loader):
            raise InvalidOptionError(f"SweepModel {self.model!r}: loader must be callable; got {type(self.loader).__name__}")
        for field in ("revision", "series"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidOptionError(f"SweepModel {self.model!r}: {field} must be a non-empty string or None; got {value!r}")
        if self.step is not None and (not isinstance(self.step, numbers.Integral) or isinstance(self.step, bool)
                                      or self.step < 0):
            raise InvalidOptionError(f"SweepModel {self.model!r}: step must be a non-negative integer or None; got {self.step!r}")
        if self.step is not None:
            object.__setattr__(self, "step", int(self.step))

    @property
    def series_name(self) -> str:
        """``series``, or the label when the model belongs to no series."""
        return self.series if self.series is not None else self.model

    def identity(self) -> dict[str, Any]:
        """What determines the weights this entry loads, for job ids: JSON-able and stable
        across runs (no memory addresses). A headzoo checkpoint folder is named by its
        weights' hash, so moving the folder keeps its jobs."""
        ident: dict[str, Any] = {"model": self.model, "revision": self.revision, "step": self.step,
                                 "series": self.series}
        if self.loader is not None:
            ident["loader"] = _callable_identity(self.loader)
            return ident
        assert self.source is not None
        folder = Path(self.source) / (self.revision or "") if os.path.isdir(self.source) else None
        config = _checkpoint_config(folder) if folder is not None else None
        if config is not None and isinstance(config.get("sha256"), str):
            ident["weights_sha256"] = config["sha256"]
        else:
            ident["source"] = os.path.abspath(self.source) if os.path.exists(self.source) else self.source
        return ident

    def load(self, device: Any = None, dtype: Any = None) -> Any:
        """The model: ``loader()``, or :func:`hz.load_model` of ``source`` (at ``revision``)."""
        if self.loader is not None:
            return self.loader()
        from headzoo._zoo import load_model

        extra: dict[str, Any] = {"revision": self.revision} if self.revision is not None else {}
        return load_model(self.source, device=device, dtype=dtype, **extra)


def _callable_identity(fn: Any) -> Any:
    """A stable description of a loader: qualified name and (for partials) arguments."""
    if isinstance(fn, functools.partial):
        return {"func": _callable_identity(fn.func), "args": [repr(a) for a in fn.args],
                "kwargs": {k: repr(v) for k, v in sorted(fn.keywords.items())}}
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{name}"


def _checkpoint_config(folder: Path) -> dict[str, Any] | None:
    """A headzoo checkpoint folder's config.json, or None when ``folder`` is not one."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and config.get("format") == _CHECKPOINT_FORMAT else None


def _step_of(folder: Path | None, name: str) -> int | None:
    """A checkpoint's step: config.json's ``step``, else the first ``step[-_]N`` in ``name``."""
    config = _checkpoint_config(folder) if folder is not None else None
    if config is not None and isinstance(config.get("step"), int) and not isinstance(config.get("step"), bool):
        return int(config["step"])
    found = _STEP.search(name)
    return int(found.group(1)) if found else None


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] or name


def _folder_entry(folder: Path, root: Path | None = None, revision: str | None = None) -> SweepModel:
    """A local folder (``root/revision`` when ``revision`` is given) as a SweepModel."""
    config = _checkpoint_config(folder)
    step = _step_of(folder, folder.name)
    name = str(config["name"]) if config is not None and isinstance(config.get("name"), str) else None
    if step is None:
        if root is None:
            return SweepModel(name or folder.name, str(folder))
        return SweepModel(f"{name or _short(str(root.resolve()))}@{revision}", str(root), revision=revision)
    # a checkpoint of a training run: the series is the run's name (config.json "name", else the
    # run folder: runs/zoo/checkpoints/step-10 -> "zoo")
    if name is None:
        parent = (root if root is not None else folder.parent).resolve()
        if parent.name == "checkpoints":
            parent = parent.parent
        name = parent.name or str(parent)
    return SweepModel(f"{_short(name)}@{folder.name}", str(root if root is not None else folder), revision=revision,
                      step=step, series=name)


def _bundled() -> list[str]:
    from headzoo._zoo import list_models

    return [str(n) for n in list_models()["name"]]


def _expand_one(item: Any) -> list[SweepModel]:
    if isinstance(item, SweepModel):
        return [item]
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if not isinstance(item, str):
        raise InvalidOptionError(
            f"a sweep model must be a name, hub id, folder, glob, 'SOURCE@REVISION' or hz.SweepModel; got "
            f"{type(item).__name__} {item!r:.80}"
        )
    text = item.strip()
    if not text:
        raise InvalidOptionError("a sweep model name is empty; give a bundled name, hub id, folder or glob")
    if os.path.exists(text):
        return [_folder_entry(Path(text))] if os.path.isdir(text) else [SweepModel(_short(text), text)]
    source, revision = text, None
    if "@" in text:
        source, revision = text.rsplit("@", 1)
        if not source or not revision:
            raise InvalidOptionError(f"{text!r}: write a revision as SOURCE@REVISION, e.g. 'EleutherAI/pythia-70m@step1000'")
    if _GLOB.search(source):
        matches = sorted(m for m in glob.glob(os.path.expanduser(source)) if os.path.isdir(m))
        if not matches:
            raise ModelNotFoundError(f"the glob {source!r} matches no folder; check the path (e.g. "
                                     "'runs/zoo/checkpoints/step-*')")
        return [e for m in matches for e in _expand_one(m if revision is None else f"{m}@{revision}")]
    if os.path.isdir(source):
        if revision is None:  # unreachable: an existing folder was handled above
            return [_folder_entry(Path(source))]
        subs = sorted(p.name for p in Path(source).iterdir() if p.is_dir() and fnmatch.fnmatch(p.name, revision)) \
            if _GLOB.search(revision) else [revision]
        missing = [s for s in subs if not (Path(source) / s).is_dir()]
        if not subs or missing:
            have = sorted(p.name for p in Path(source).iterdir() if p.is_dir())
            raise ModelNotFoundError(
                f"{source} has no subfolder matching {revision!r}.{did_you_mean(revision, have)} "
                f"Subfolders: {have[:10]}{' ...' if len(have) > 10 else ''}"
            )
        return [_folder_entry(Path(source) / s, root=Path(source), revision=s) for s in subs]
    bundled = _bundled()
    if source in bundled:
        if revision is not None:
            raise InvalidOptionError(f"{text!r}: bundled models have no revisions; give {source!r} alone")
        return [SweepModel(source, source)]
    # "owner/name" is a hub id; anything else with a path's shape is a folder that is not there
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelNotFoundError(
            f"{source!r} does not exist and is not a bundled model or a Hugging Face id."
            f"{did_you_mean(source, bundled)} Bundled models: {', '.join(bundled)}."
        )
    if "/" not in source and _close_to_bundled(source, bundled):
        raise ModelNotFoundError(f"{source!r} is not a bundled model.{did_you_mean(source, bundled)} "
                                 f"Bundled models: {', '.join(bundled)}.")
    if revision is not None and _GLOB.search(revision):
        raise InvalidOptionError(
            f"{text!r}: a revision glob works only for a local folder (the hub's branches are not listed offline); "
            "give the revisions one by one, e.g. ['EleutherAI/pythia-70m@step1000', 'EleutherAI/pythia-70m@step2000']"
        )
    if revision is None:
        return [SweepModel(_short(source), source)]
    return [SweepModel(f"{_short(source)}@{revision}", source, revision=revision,
                       step=_step_of(None, revision), series=source)]


def _close_to_bundled(name: str, bundled: list[str]) -> bool:
    """A typo of a bundled name (same cut-off as hz.load_model), not a hub id."""
    import difflib

    from headzoo._zoo import _TYPO_CUTOFF

    return bool(difflib.get_close_matches(name.strip().lower(), bundled, n=1, cutoff=_TYPO_CUTOFF))


def expand_models(models: Any) -> list[SweepModel]:
    """One :class:`SweepModel` per model or checkpoint that ``models`` names.

    Args:
        models: a :class:`SweepModel`; a bundled name, Hugging Face id or folder (``str`` or
            ``os.PathLike``); ``"SOURCE@REVISION"`` (a hub revision, or the subfolder
            ``REVISION`` of a local folder, which may be a glob such as ``"step*"``); a glob of
            checkpoint folders (``"runs/zoo/checkpoints/step-*"``); or a list of these. A
            checkpoint's step is its config.json ``step``, else the first ``step[-_]N`` in its
            folder or revision name.

    Returns:
        ``list[SweepModel]`` in the order given (globs sorted), labels made unique.

    Raises:
        InvalidOptionError: no models, a wrong type, or the same model (source, revision and
            step) twice.
        ModelNotFoundError: a glob matching nothing, or a path that does not exist and is not a
            bundled name or hub id (with a suggestion).
    """
    items: Sequence[Any]
    if isinstance(models, (str, os.PathLike, SweepModel)):
        items = [models]
    elif isinstance(models, (list, tuple)):
        items = list(models)
    else:
        raise InvalidOptionError(
            f"models must be a name, folder, glob, hz.SweepModel or a list of them; got {type(models).__name__}"
        )
    if not items:
        raise InvalidOptionError("models is empty; give at least one model, folder or glob to sweep")
    entries = [e for item in items for e in _expand_one(item)]
    seen: dict[str, str] = {}
    for e in entries:
        key = json.dumps(e.identity() | {"model": None, "series": None}, sort_keys=True, default=str)
        if key in seen:
            raise InvalidOptionError(
                f"the same model is given twice ({seen[key]!r} and {e.model!r}: same source, revision and step); "
                "give each model once"
            )
        seen[key] = e.model
    # distinct models may share a label (two folders named "model"): number the later ones
    out, used = [], set()
    for e in entries:
        label, n = e.model, 2
        while label in used:
            label, n = f"{e.model}#{n}", n + 1
        used.add(label)
        out.append(e if label == e.model else dataclasses.replace(e, model=label))
    return out

