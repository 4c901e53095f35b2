"""Built-in detectors are there after an editable install and after a plain wheel install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import headzoo as hz
from headzoo._registry import builtin_detectors_dir

REPO = Path(__file__).resolve().parents[1]
BUILTINS = [
    "copy_suppression", "copying", "current_token", "duplicate_token", "first_token", "induction",
    "previous_token", "retrieval", "successor",
]
#: registered names: copying.py holds both copying and negative_copying
REGISTERED = sorted([*BUILTINS, "negative_copying"])


def test_builtins_in_this_install():
    folder = builtin_detectors_dir()
    assert sorted(p.stem for p in folder.glob("*.py")) == BUILTINS
    assert set(REGISTERED) <= set(hz.list_detectors()["name"])


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
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    code = (
        "import headzoo, sys; assert headzoo.__file__.startswith(sys.argv[1]), headzoo.__file__; "
        "print(','.join(sorted(headzoo.list_detectors()['name'])))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], env=env, check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip().split(",") == REGISTERED
