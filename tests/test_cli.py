"""The command line, in process and as the installed script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headzoo._cli import main


@pytest.mark.slow
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


# --- user errors: one line on stderr, exit status 2, no traceback ----------------------------

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.count("\n") == 0 and err.startswith("headzoo: error: "), err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Errors about paths must come before the model is loaded (no waiting for a doomed run)."""
    import headzoo as hz

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(hz, "load_model", refuse)


def test_atlas_out_is_a_file(capsys, tmp_path, no_model):
    target = tmp_path / "taken.txt"
    target.write_text("not a folder")
    assert main(["atlas", "--out", str(target)]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert target.read_text() == "not a folder"


def test_atlas_out_below_a_file(capsys, tmp_path, no_model):
    (tmp_path / "file").write_text("x")
    assert main(["atlas", "--out", str(tmp_path / "file" / "atlas")]) == 2
    assert f"--out {tmp_path / 'file' / 'atlas'}: {tmp_path / 'file'} is a file" in _one_error_line(capsys)


def test_detect_out_is_a_folder_or_below_a_file(capsys, tmp_path, no_model):
    assert main(["detect", "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in _one_error_line(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["detect", "--out", str(tmp_path / "file" / "scores.parquet")]) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in _one_error_line(capsys)


def test_read_only_out_folder(capsys, tmp_path, monkeypatch, no_model):
    import tempfile

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere; refuse the write as the kernel would for a user
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(folder))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        assert main(["atlas", "--out", str(folder)]) == 2
        assert "cannot write in" in _one_error_line(capsys)
        assert main(["detect", "--out", str(folder / "scores.parquet")]) == 2
        assert "Permission denied" in _one_error_line(capsys)
    finally:
        folder.chmod(0o755)


def test_a_file_system_error_while_writing_is_one_line(capsys, tmp_path, monkeypatch):
    import headzoo as hz

    class Atlas:
        def write(self, directory):
            raise OSError(30, "Read-only file system", str(directory))

    monkeypatch.setattr(hz, "load_model", lambda *args, **kwargs: object())
    monkeypatch.setattr(hz, "build_atlas", lambda *args, **kwargs: Atlas())
    assert main(["atlas", "--out", str(tmp_path / "atlas")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("headzoo: error: Read-only file system (") and "--out" in err[-1]


def test_cuda_on_a_cpu_only_torch_is_reported_as_such(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert main(["detect", "planted-demo", "--device", "cuda"]) == 2
    err = _one_error_line(capsys)
    assert "no CUDA support" in err and "device='cpu'" in err
    assert "weights" not in err and "architecture" not in err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["detect", "planted-demo", "--device", "nonsense"], "is not a torch device"),
        (["detect", "planted-demo", "--dtype", "int8"], "is not a dtype headzoo can load"),
        (["atlas", "planted-demo", "--device", "meta", "--out", "{tmp}/a"], "holds no weights"),
        (["detect", "zoo-smal"], "Did you mean 'zoo-small'?"),
        (["detect", "--detectors", "inducton"], "Did you mean 'induction'"),
        (["detect", "--top", "0"], "argument --top: must be at least 1 (see `headzoo detect --help`)"),
        (["detect", "--seed", "-1"], "argument --seed: -1 is negative"),
        (["atlas", "--seed", "x"], "'x' is not a whole number"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: command"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, expected):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("headzoo: error: ") and expected in err[-1], err


def test_help_exits_0(capsys):
    assert main(["detect", "--help"]) == 0
    assert "--device" in capsys.readouterr().out


def test_the_real_process_prints_no_traceback():
    """As a user runs it: a separate process, its exit status and its whole stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "headzoo._cli", "detect", "planted-demo", "--device", "cuda:nonsense"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("headzoo: error: device='cuda:nonsense' is not a torch device")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --- atlas --corpus, --no-examples, --no-importance -----------------------------------------

class _Built:
    """Stands in for a HeadAtlas where only the command line's handling is tested."""

    def write(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "index.html").write_text("<html></html>")
        return Path(directory)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": [0], "head": [1], "labels": ["induction"]})


def test_atlas_corpus_and_switches_are_passed_through(capsys, tmp_path, monkeypatch):
    import headzoo as hz

    calls = []
    corpus = tmp_path / "text.txt"
    corpus.write_text("Some text the heads will be shown on.")
    monkeypatch.setattr(hz, "load_model", lambda *args, **kwargs: object())
    monkeypatch.setattr(hz, "build_atlas", lambda model, detectors, **kw: calls.append(kw) or _Built())
    assert main(["atlas", "--out", str(tmp_path / "a"), "--corpus", str(corpus)]) == 0
    assert calls[-1]["corpus"] == str(corpus) and calls[-1]["examples"] is True and calls[-1]["importance"] is True
    assert main(["atlas", "--out", str(tmp_path / "b"), "--no-examples", "--no-importance"]) == 0
    assert calls[-1]["corpus"] is None and calls[-1]["examples"] is False and calls[-1]["importance"] is False
    assert "wrote" in capsys.readouterr().out


def test_atlas_corpus_that_does_not_exist(capsys, tmp_path, no_model):
    assert main(["atlas", "--out", str(tmp_path / "a"), "--corpus", str(tmp_path / "missing.txt")]) == 2
    err = _one_error_line(capsys)
    assert "--corpus" in err and "missing.txt: no such file or folder" in err
    corpus = tmp_path / "text.txt"
    corpus.write_text("text")
    assert main(["atlas", "--out", str(tmp_path / "a"), "--corpus", str(corpus), "--no-examples"]) == 2
    assert "drop --no-examples or --corpus" in _one_error_line(capsys)


def test_atlas_corpus_that_cannot_be_read_is_one_line(capsys, tmp_path):
    empty = tmp_path / "no_text_here"
    empty.mkdir()
    assert main(["atlas", "planted-demo", "--out", str(tmp_path / "a"), "--corpus", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("headzoo: error: head_examples: the folder") and "no *.txt file" in err[-1], err
    assert not (tmp_path / "a" / "index.html").exists()
