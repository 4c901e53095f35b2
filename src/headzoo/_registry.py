"""The detector registry: the only way headzoo finds a detector by name.

Detectors come from three places, all loaded lazily on first use: the built-in zoo (the
repository's top-level ``detectors/`` folder, shipped inside the wheel), the
``headzoo.detectors`` entry-point group of installed plugins (a broken plugin only warns), and
folders or files passed to :func:`load_detectors`. Names are unique: registering a taken name
is an error, and an unknown name raises with suggestions.

Every change is a transaction. ``@hz.register`` first discovers the built-ins and plugins, so
a clash with one of them is refused at the moment of registration rather than poisoning the
registry later; a folder, a file or a plugin either registers everything it defines or, on any
error, nothing (whatever it registered before failing is taken back), so fixing the file and
loading it again works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from headzoo._detector import READS, STAGES, Detector, PatternDetector
from headzoo._errors import (
    DetectorDefinitionError,
    DuplicateDetectorError,
    HeadzooError,
    InvalidOptionError,
    UnknownDetectorError,
)

__all__ = ["register", "list_detectors", "get_detector", "load_detectors", "detector_class"]

ENTRY_POINT_GROUP = "headzoo.detectors"

_REGISTRY: dict[str, type[Detector]] = {}
_SOURCES: dict[str, str] = {}
_LOADED_FILES: set[Path] = set()
# Reentrant: discovery imports detector files whose @hz.register calls come back in here on
# the same thread; any other thread waits until discovery or a folder load has finished.
_LOCK = threading.RLock()
_state: dict[str, Any] = {"discovered": False, "discovering": False, "source": "user"}
_MODULE_PREFIX = "headzoo._loaded."


def builtin_detectors_dir() -> Path:
    """Folder of the built-in detectors: inside the installed wheel, or the source checkout's."""
    packaged = Path(__file__).parent / "_builtin_detectors"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "detectors"


@contextlib.contextmanager
def _transaction() -> Iterator[None]:
    """All registry changes inside happen together or not at all.

    On any exception the registry, the sources, the set of loaded files and the modules imported
    from detector files are put back as they were, then the exception propagates.
    """
    with _LOCK:
        registry, sources, loaded = dict(_REGISTRY), dict(_SOURCES), set(_LOADED_FILES)
        modules = {m for m in sys.modules if m.startswith(_MODULE_PREFIX)}
        try:
            yield
        except BaseException:
            # In place: other modules and test fixtures hold references to these containers.
            _REGISTRY.clear()
            _REGISTRY.update(registry)
            _SOURCES.clear()
            _SOURCES.update(sources)
            _LOADED_FILES.clear()
            _LOADED_FILES.update(loaded)
            for name in [m for m in sys.modules if m.startswith(_MODULE_PREFIX) and m not in modules]:
                del sys.modules[name]
            raise


def register(cls: Any = None, *, replace: bool = False) -> Any:
    """Class decorator that adds a detector to the registry.

    The class must subclass :class:`hz.Detector` (usually :class:`hz.PatternDetector`), be a
    frozen dataclass, and declare ``name`` and ``description``. The built-in detectors and
    installed plugins are discovered first, so a clash with any of them is reported here.

    Args:
        replace: allow replacing a detector of the same name, built-ins included (default: refuse).

    Raises:
        DuplicateDetectorError: the name is taken and ``replace`` is False.
        DetectorDefinitionError: the class does not declare what the registry needs.
    """
    def add(klass: Any) -> Any:
        _check_definition(klass)
        name = klass.name
        _discover()  # a clash with a built-in or plugin must show now, not on first use
        with _LOCK:
            current = _REGISTRY.get(name)
            if current is not None and current is not klass and not replace:
                raise DuplicateDetectorError(
                    f"A detector named {name!r} is already registered (from {_SOURCES[name]}). "
                    "Choose another name, or pass replace=True to @hz.register to override it."
                )
            _REGISTRY[name] = klass
            _SOURCES[name] = _state["source"] if _state["source"] != "user" else klass.__module__
        return klass

    return add if cls is None else add(cls)


def _check_definition(klass: Any) -> None:
    if not (isinstance(klass, type) and issubclass(klass, Detector)):
        raise DetectorDefinitionError(f"@hz.register expects a subclass of hz.Detector; got {klass!r}.")
    params = getattr(klass, "__dataclass_params__", None)
    if params is None or not params.frozen or "__dataclass_fields__" not in klass.__dict__:
        raise DetectorDefinitionError(
            f"{klass.__name__} must be decorated with @dataclasses.dataclass(frozen=True) "
            "(below @hz.register), so its options are declared fields and it cannot be mutated."
        )
    for attr in ("name", "description"):
        if not isinstance(getattr(klass, attr, None), str) or not getattr(klass, attr):
            raise DetectorDefinitionError(f"{klass.__name__} must declare a non-empty `{attr}` string.")
    if not klass.name.isidentifier():
        raise DetectorDefinitionError(f"detector name {klass.name!r} must be a valid identifier (snake_case).")
    stage = getattr(klass, "stage", None)
    if stage is not None and stage not in STAGES:
        raise DetectorDefinitionError(
            f"{klass.__name__}.stage = {stage!r} is not one of the survey's four stages {list(STAGES)} (or None)."
        )
    if issubclass(klass, PatternDetector):
        unknown = sorted(set(klass.reads) - set(READS))
        if unknown:
            raise DetectorDefinitionError(f"{klass.__name__}.reads names {unknown}; a pattern detector can read {list(READS)}.")
    if getattr(klass, "__abstractmethods__", None):
        raise DetectorDefinitionError(f"{klass.__name__} does not implement {sorted(klass.__abstractmethods__)}.")


def _import_file(path: Path, source: str) -> None:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    module_name = f"{_MODULE_PREFIX}{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DetectorDefinitionError(f"load_detectors: cannot import {path} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    previous = _state["source"]
    _state["source"] = source
    try:
        spec.loader.exec_module(module)
    finally:
        _state["source"] = previous


def load_detectors(path: str | os.PathLike[str]) -> list[str]:
    """Import detector definitions from a ``.py`` file or every ``*.py`` in a folder.

    Files whose name starts with ``_`` are skipped. Loading the same file twice does nothing.
    A folder loads whole or not at all: if any file fails to import or registers a taken name,
    nothing from this call stays registered, and the call can be repeated once the file is fixed.

    Returns:
        Names of the detectors this call registered (or replaced).

    Raises:
        FileNotFoundError: ``path`` is neither a folder nor a ``.py`` file.
        DuplicateDetectorError, DetectorDefinitionError: a file defines a detector the registry
            refuses; DetectorDefinitionError also wraps any other error a file raised on import.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidOptionError(f"load_detectors takes a folder or .py file path; got {type(path).__name__} {path!r}.")
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
    with _transaction():
        before = dict(_REGISTRY)
        for file in files:
            if file in _LOADED_FILES:
                continue
            try:
                _import_file(file, source or str(file))
            except HeadzooError as exc:
                exc.add_note(f"while loading {file}: nothing from {path} was registered; fix it and load again.")
                raise
            except Exception as exc:
                raise DetectorDefinitionError(
                    f"{file} failed to import ({type(exc).__name__}: {exc}), so nothing from {path} was "
                    "registered. Fix the file and call hz.load_detectors again."
                ) from exc
            _LOADED_FILES.add(file)
        return sorted(name for name, cls in _REGISTRY.items() if before.get(name) is not cls)


def _discover() -> None:
    """Load the built-in zoo and entry-point plugins once, on first use of the registry."""
    if _state["discovered"]:
        return
    with _LOCK:
        if _state["discovered"] or _state["discovering"]:  # done meanwhile, or re-entered from a file
            return
        _state["discovering"] = True
        try:
            _load_path(builtin_detectors_dir(), source="builtin")
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                _load_entry_point(ep)
            _state["discovered"] = True
        finally:
            _state["discovering"] = False


def _load_entry_point(ep: Any) -> None:
    """One plugin, whole or not at all; a broken one warns and leaves the registry as it was."""
    previous = _state["source"]
    _state["source"] = f"entry point {ep.name} ({ep.value})"
    try:
        with _transaction():
            loaded = ep.load()
            if isinstance(loaded, type) and issubclass(loaded, Detector) and _REGISTRY.get(loaded.name) is not loaded:
                register(loaded)
    except Exception as exc:  # a broken plugin must not break headzoo
        warnings.warn(
            f"headzoo: the detector plugin {ep.name!r} ({ep.value}) failed to load and is skipped "
            f"(nothing from it is registered): {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        _state["source"] = previous


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

    Columns: ``name, description, kind, stage, probe, variant, reference, threshold, options,
    source``: ``stage`` is one of the survey's four (:data:`hz.STAGES`); ``probe`` names the
    probe a pattern detector is scored on when no tokens are given (``None`` for others).
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
            "name": name, "description": cls.description, "kind": cls.kind, "stage": cls.stage,
            "probe": cls.probe if issubclass(cls, PatternDetector) else None, "variant": cls.variant,
            "reference": cls.reference, "threshold": cls.threshold, "options": defaults,
            "source": _SOURCES.get(name, ""),
        })
    columns = ["name", "description", "kind", "stage", "probe", "variant", "reference", "threshold", "options", "source"]
    return pd.DataFrame(rows, columns=columns)


def registered_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)
