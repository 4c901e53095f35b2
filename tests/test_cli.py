"""The command line, in process and as the installed script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headzoo._cli import main


def test_detect_prints_the_planted_heads(capsys, tmp_path):
    out_file = tmp_path / "scores.parquet"
    assert main(["detect", "planted-demo", "--top", "1", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "previous_token      0     2" in out and "induction      2     3" in out
    assert out_file.exists()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "induction" in out and "planted-demo" in out


def test_errors_exit_2_with_a_message(capsys):
    assert main(["detect", "--detectors", "inducton"]) == 2
    assert "Did you mean 'induction'" in capsys.readouterr().err


def test_installed_script():
    beside = Path(sys.executable).parent / "headzoo"
    exe = str(beside) if beside.exists() else shutil.which("headzoo")
    if exe is None:
        pytest.skip("headzoo script not on PATH")
    out = subprocess.run([exe, "list"], capture_output=True, text=True, check=True).stdout
    assert "previous_token" in out
