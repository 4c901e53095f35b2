"""The detector registry: the only way headzoo finds a detector by name.

Detectors come from three places, all loaded lazily on first use: the built-in zoo (the
repository's top-level ``detectors/`` folder, shipped inside the wheel), the
``headzoo.detectors`` entry-point group of installed plugins (a broken plugin only warns), and
folders or files passed to :func:`load_detectors`. Names are unique: registering a taken name
is an error, and an unknown name raises with suggestions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from headzoo._detector import Detector
from headzoo._errors import (
    DetectorDefinitionError,
    DuplicateDetectorError,
    InvalidOptionError,
    UnknownDetectorError,
)

__all__ = ["register", "list_detectors", "get_detector", "load_detectors", "detector_class"]

ENTRY_POINT_GROUP = "headzoo.detectors"

_REGISTRY: dict[str, type[Detector]] = {}
_SOURCES: dict[str, str] = {}
_LOADED_FILES: set[Path] = set()
_LOCK = threading.RLock()
_state = {"discovered": False, "discovering": False, "source": "user"}


def builtin_detectors_dir() -> Path:
    """Folder of the built-in detectors: inside the installed wheel, or the source checkout's."""
    packaged = Path(__file__).parent / "_builtin_detectors"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "detectors"


def register(cls: Any = None, *, replace: bool = False) -> Any:
    """Class decorator that adds a detector to the registry.

    The class must subclass :class:`hz.Detector` (usually :class:`hz.PatternDetector`), be a
    frozen dataclass, and declare ``name`` and ``description``.

    Args:
        replace: allow replacing a detector of the same name (default: refuse).

    Raises:
        DuplicateDetectorError: the name is taken and ``replace`` is False.
        DetectorDefinitionError: the class does not declare what the registry needs.
    """

    def add(klass: Any) -> Any:
        if not (isinstance(klass, type) and issubclass(klass, Detector)):
            raise DetectorDefinitionError(
                f"@hz.register expects a subclass of hz.Detector; got {klass!r}."
            )
        params = getattr(klass, "__dataclass_params__", None)
        if params is None or not params.frozen or "__dataclass_fields__" not in klass.__dict__:
            raise DetectorDefinitionError(
                f"{klass.__name__} must be decorated with @dataclasses.dataclass(frozen=True) "
                "(below @hz.register), so its options are declared fields and it cannot be mutated."
            )
        for attr in ("name", "description"):
            if not isinstance(getattr(klass, attr, None), str) or not getattr(klass, attr):
                raise DetectorDefinitionError(f"{klass.__name__} must declare a non-empty `{attr}` string.")
        name = klass.name
        if not name.isidentifier():
            raise DetectorDefinitionError(f"detector name {name!r} must be a valid identifier (snake_case).")
        if getattr(klass, "__abstractmethods__", None):
            raise DetectorDefinitionError(
                f"{klass.__name__} does not implement {sorted(klass.__abstractmethods__)}."
            )
        with _LOCK:
            if name in _REGISTRY and not replace and _REGISTRY[name] is not klass:
                raise DuplicateDetectorError(
                    f"A detector named {name!r} is already registered (from {_SOURCES[name]}). "
                    "Choose another name, or pass replace=True to @hz.register to override it."
                )
            _REGISTRY[name] = klass
            _SOURCES[name] = _state["source"] if _state["source"] != "user" else klass.__module__
        return klass

    return add if cls is None else add(cls)


def _import_file(path: Path, source: str) -> None:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    module_name = f"headzoo._loaded.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    previous = _state["source"]
    _state["source"] = source
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        _state["source"] = previous


def load_detectors(path: str | os.PathLike[str]) -> list[str]:
    """Import detector definitions from a ``.py`` file or every ``*.py`` in a folder.

    Files whose name starts with ``_`` are skipped. Loading the same file twice does nothing.

    Returns:
        Names of the detectors this call registered.
    """
    _discover()
    return _load_path(Path(path), source=None)


def _load_path(path: Path, source: str | None) -> list[str]:
    path = path.expanduser().resolve()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    elif path.is_file() and path.suffix == ".py":
        files = [path]
    else:
        raise FileNotFoundError(f"load_detectors: {path} is neither a folder nor a .py file")
    before = set(_REGISTRY)
    with _LOCK:
        for file in files:
            if file in _LOADED_FILES:
                continue
            _import_file(file, source or str(file))
            _LOADED_FILES.add(file)
    return sorted(set(_REGISTRY) - before)


def _discover() -> None:
    """Load the built-in zoo and entry-point plugins once, on first use of the registry."""
    if _state["discovered"] or _state["discovering"]:
        return
    with _LOCK:
        if _state["discovered"]:
            return
        _state["discovering"] = True
        try:
            _load_path(builtin_detectors_dir(), source="builtin")
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    previous = _state["source"]
                    _state["source"] = f"entry point {ep.name} ({ep.value})"
                    try:
                        loaded = ep.load()
                        if isinstance(loaded, type) and issubclass(loaded, Detector) and loaded.name not in _REGISTRY:
                            register(loaded)
                    finally:
                        _state["source"] = previous
                except Exception as exc:  # a broken plugin must not break headzoo
                    warnings.warn(
                        f"headzoo: the detector plugin {ep.name!r} ({ep.value}) failed to load "
                        f"and is skipped: {type(exc).__name__}: {exc}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            _state["discovered"] = True
        finally:
            _state["discovering"] = False


def detector_class(name: str) -> type[Detector]:
    """The registered class for ``name``; raises :class:`UnknownDetectorError` with suggestions."""
    _discover()
    if not isinstance(name, str):
        raise InvalidOptionError(f"detector names are strings; got {type(name).__name__} {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDetectorError(name, _REGISTRY) from None


def get_detector(name: str, **options: Any) -> Detector:
    """An instance of detector ``name`` with ``options`` set (see its fields)."""
    cls = detector_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InvalidOptionError(
            f"{name} has no option {', '.join(map(repr, unknown))}; its options are "
            f"{sorted(fields) or 'none'}."
        )
    return cls(**options)


def list_detectors() -> pd.DataFrame:
    """Every registered detector, one row each.

    Columns: ``name, description, kind, variant, reference, threshold, options, source``.
    """
    _discover()
    rows = []
    for name in sorted(_REGISTRY):
        cls = _REGISTRY[name]
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING
        }
        rows.append({
            "name": name, "description": cls.description, "kind": cls.kind, "variant": cls.variant,
            "reference": cls.reference, "threshold": cls.threshold, "options": defaults,
            "source": _SOURCES.get(name, ""),
        })
    columns = ["name", "description", "kind", "variant", "reference", "threshold", "options", "source"]
    return pd.DataFrame(rows, columns=columns)


def registered_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)
