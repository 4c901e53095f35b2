"""Figures in notebooks: docs/tour.ipynb runs in a fresh kernel and its figures survive export.

Plotly's default display sends only the JSON mimetype JupyterLab's extension draws, so a
notebook exported with nbconvert used to lose every figure. These tests execute the shipped
notebook with nbclient (a real ipykernel), export it with nbconvert's HTMLExporter and look
for the figure and plotly.js in the page, offline.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
nbconvert = pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "tour.ipynb"
PLOTLY_JSON = "application/vnd.plotly.v1+json"


def _execute(nb: object) -> object:
    # The kernel is this interpreter (ipykernel's native spec) and imports the headzoo under
    # test: src/ leads its PYTHONPATH, set only while the kernel starts.
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), before) if p)
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})
        return client.execute()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    nb = nbformat.read(TOUR, as_version=4)
    out = _execute(nb)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(out)
    (tmp_path_factory.mktemp("tour") / "tour.html").write_text(body, encoding="utf-8")
    return out, body


def test_tour_is_stored_without_outputs() -> None:
    # Executed by this test, not in git: outputs (with plotly.js inline) would bloat the repo.
    nb = json.loads(TOUR.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "docs/tour.ipynb has no code cells"
    assert all(c.get("outputs") == [] and c.get("execution_count") is None for c in code)
    joined = "\n".join("".join(c["source"]) for c in code)
    assert "hz.load_model()" in joined and ".plot()" in joined


def test_tour_runs_and_figure_has_both_mimetypes(executed: tuple[object, str]) -> None:
    nb, _ = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # `import headzoo` in a kernel (here without ipywidgets) prints no tqdm IProgress warning
    stderr = [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "stream" and o.get("name") == "stderr"]
    assert not any("Warning" in t for t in stderr), stderr
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type in ("display_data", "execute_result") and PLOTLY_JSON in o.get("data", {})]
    assert len(figures) == 1
    data = figures[0]["data"]
    # JupyterLab draws the JSON; the classic notebook and nbconvert draw the HTML
    assert "text/html" in data
    spec = data[PLOTLY_JSON]
    assert spec["data"][0]["type"] == "heatmap"
    assert spec["config"]["responsive"] is True
    assert "width" not in spec["layout"] and spec["layout"]["autosize"] is True


def _network_scripts(body: str) -> set[str]:
    sources = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", body, flags=re.IGNORECASE)
    return {s for s in sources if re.match(r"(https?:)?//", s)}


def test_exported_html_carries_the_figure_and_plotlyjs(executed: tuple[object, str]) -> None:
    _, body = executed
    # the figure's div (nbconvert's sanitiser may reorder attributes) and the call that draws it
    divs = re.findall(r'<div[^>]*\bid="(headzoo-fig-[0-9a-f]{12})"', body)
    assert len(divs) == 1
    assert "Plotly.newPlot(el" in body and f'getElementById("{divs[0]}")' in body
    # plotly.js itself, inline, before the figure that needs it
    from plotly.offline import get_plotlyjs

    head = get_plotlyjs()[:2000].replace("</script", "<\\/script")
    at = body.find(head)
    assert 0 <= at < body.find(divs[0])
    # headzoo adds no network reference: the only scripts from http(s) are the ones nbconvert's
    # own template puts in every export (require.js, MathJax), as in a notebook with no output
    empty = nbformat.v4.new_notebook()
    empty.cells = [nbformat.v4.new_code_cell("1")]
    baseline, _ = nbconvert.HTMLExporter().from_notebook_node(empty)
    assert _network_scripts(body) == _network_scripts(baseline)


@pytest.mark.slow
def test_exported_html_draws_the_figure_offline(executed: tuple[object, str], tmp_path: Path) -> None:
    # The exported page in a real headless Chromium with every network request refused: the
    # figure still draws (plotly.js came inline) and no script fails.
    from test_atlas_browser import _chromium

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the [test] extra)")
    _, body = executed
    page_file = tmp_path / "tour.html"
    page_file.write_text(body, encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route(re.compile(r"^https?://"), lambda route: route.abort())
            page.goto(page_file.as_uri())
            page.wait_for_selector(".headzoo-figure .main-svg", timeout=20_000)
            # sized to the page: no wider than the viewport
            width = page.eval_on_selector(".headzoo-figure .main-svg", "e => e.getBoundingClientRect().width")
            assert 100 < width <= 800
            assert not errors, errors
        finally:
            browser.close()


def test_kernel_is_this_interpreter() -> None:
    # The fresh kernel must run the environment under test (where nbclient found ipykernel).
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    argv0 = spec.argv[0]
    assert argv0 in ("python", sys.executable) or Path(argv0).resolve() == Path(sys.executable).resolve()
