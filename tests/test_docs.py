"""Every Python block in docs/*.md runs (the blocks of one page share a namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headzoo import _registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_runs(page, capsys):
    _registry.registered_names()  # discover the built-ins before taking the snapshot
    saved = dict(_registry._REGISTRY), dict(_registry._SOURCES)
    try:
        namespace = {"__name__": f"docs_{page.stem}"}  # blocks of a page run in order, like a notebook
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            exec(compile(block, str(page), "exec"), namespace)
    finally:
        _registry._REGISTRY.clear(), _registry._REGISTRY.update(saved[0])
        _registry._SOURCES.clear(), _registry._SOURCES.update(saved[1])
