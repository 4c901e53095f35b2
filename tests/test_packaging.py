"""Built-in detectors are there after an editable install and after a plain wheel install; the
package declares its license, ships its type marker, and its declared lower bounds are what CI's
oldest-versions pass installs."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import headzoo as hz
from headzoo._registry import builtin_detectors_dir

REPO = Path(__file__).resolve().parents[1]
BUILTINS = [
    "backup_name_mover", "copy_suppression", "copying", "current_token", "delimiter", "dormant", "duplicate_token",
    "first_token", "function_vector", "induction", "name_mover", "negative_name_mover", "ngram_induction",
    "previous_token", "rare_token", "relation", "relative_position", "retrieval", "s_inhibition", "streaming",
    "subword_merge", "successor", "successor_in_context",
]
#: registered names: copying.py holds both copying and negative_copying
REGISTERED = sorted([*BUILTINS, "negative_copying"])
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_builtins_in_this_install():
    folder = builtin_detectors_dir()
    assert sorted(p.stem for p in folder.glob("*.py")) == BUILTINS
    assert set(REGISTERED) <= set(hz.list_detectors()["name"])


@pytest.mark.slow
def test_builtins_after_a_plain_wheel_install(tmp_path):
    pytest.importorskip("hatchling")
    dist, site = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
    )
    wheel = next(dist.glob("headzoo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"headzoo/_builtin_detectors/{n}.py" for n in BUILTINS} <= set(names)
    version = PYPROJECT["project"]["version"]
    info = f"headzoo-{version}.dist-info"
    data = {"literature/heads.csv", "atlas/index.html", "atlas/atlas.js", "atlas/atlas.css",
            "compare/compare.html", "compare/compare.js", "compare/compare.css",
            "sweep/sweep.html", "sweep/sweep.js", "sweep/sweep.css"}
    assert {"headzoo/py.typed", f"{info}/licenses/LICENSE", *(f"headzoo/_data/{n}" for n in data)} <= set(names)
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    code = (
        "import headzoo, sys; assert headzoo.__file__.startswith(sys.argv[1]), headzoo.__file__; "
        "print(headzoo.__version__); print(','.join(sorted(headzoo.list_detectors()['name'])))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], env=env, check=True, capture_output=True, text=True, cwd=tmp_path)
    printed_version, printed_names = out.stdout.strip().splitlines()
    assert printed_version == version
    assert printed_names.split(",") == REGISTERED


def test_license_and_type_marker_are_declared():
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 the headzoo authors" in license_text
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (REPO / "src" / "headzoo" / "py.typed").is_file()


def test_version_comes_from_the_installed_metadata(monkeypatch):
    assert hz.__version__ == importlib.metadata.version("headzoo")

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        importlib.reload(hz)
        assert hz.__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(hz)
    assert hz.__version__ == importlib.metadata.version("headzoo")


def _oldest_pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: the oldest-versions pass pins every version with =="
            pins[req.name] = Version(spec.version)
    return pins


def test_declared_lower_bounds_are_what_the_oldest_pass_installs():
    """Every lower bound in pyproject.toml is pinned, exactly, in .ci/constraints-oldest.txt."""
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    declared += PYPROJECT["build-system"]["requires"]
    pins = _oldest_pins()
    for text in declared:
        req = Requirement(text)
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower, f"{text}: declare a lower bound (and pin it in .ci/constraints-oldest.txt)"
        assert pins.get(req.name) == lower[0], f"{text}: .ci/constraints-oldest.txt pins {pins.get(req.name)}"


def test_the_slow_marker_is_registered():
    assert any(m.startswith("slow:") for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
