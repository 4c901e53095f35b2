"""The plotly figures headzoo returns: a ``go.Figure`` that also carries an offline HTML view.

Plotly's default notebook display emits only the ``application/vnd.plotly.v1+json`` mimetype,
which JupyterLab's plotly extension draws and nothing else does: exported with nbconvert, or
opened in a viewer without the extension, every figure is gone. :class:`Figure` sends that
mimetype *and* ``text/html`` (a div and a ``Plotly.newPlot`` call); plotly.js itself, read
from the installed plotly package (never a CDN), rides inline in the first figure a process
displays, so a notebook carries it once. Nothing global changes: ``plotly.io.renderers`` and
every figure headzoo did not make behave as before.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["as_figure", "returns_figure"]  # and Figure, built on first use (module __getattr__)

#: Given to every view: size to the container, no plotly-cloud link in the mode bar.
CONFIG = {"responsive": True, "displaylogo": False}

# plotly.js is ~4.5 MB; sent with the first HTML view of this process (one kernel = one
# notebook session) and referred to by every later one.
_plotlyjs_sent = False


def _plotlyjs() -> str:
    """The plotly.js bundle of the installed plotly package as one inline ``<script>``.

    plotly.js is a UMD bundle: where a page has require.js (the classic notebook, some
    nbconvert templates) it would register itself as an AMD module instead of setting
    ``window.Plotly``. Shadowing ``define``, ``module`` and ``exports`` makes it take the
    browser-global branch everywhere.
    """
    from plotly.offline import get_plotlyjs

    source = get_plotlyjs().replace("</script", "<\\/script")  # can never close our tag early
    return (
        '<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>'
        '<script type="text/javascript">(function(define, module, exports) {\n'
        f"{source}\n"
        "}).call(window);</script>"
    )


def _view_html(fig: Any, with_plotlyjs: bool) -> str:
    """A div that fills its container's width and draws ``fig`` once plotly.js is there."""
    ident = f"headzoo-fig-{uuid.uuid4().hex[:12]}"
    height = fig.layout.height
    style = "width:100%;" + (f"height:{int(height)}px;" if height is not None else "height:450px;")
    spec = fig.to_plotly_json()
    # plotly's encoder handles numpy arrays and dates; "</" never closes the script early.
    from plotly.utils import PlotlyJSONEncoder

    data = json.dumps(spec.get("data", []), cls=PlotlyJSONEncoder).replace("</", "<\\/")
    layout = json.dumps(spec.get("layout", {}), cls=PlotlyJSONEncoder).replace("</", "<\\/")
    draw = (
        f'<div id="{ident}" class="plotly-graph-div headzoo-figure" style="{style}"></div>'
        '<script type="text/javascript">(function() {'
        f" var el = document.getElementById({json.dumps(ident)});"
        " if (!el) { return; }"
        " if (typeof window.Plotly === 'undefined') {"
        "  el.textContent = 'This headzoo figure needs plotly.js, which came with the first figure of the"
        " session: re-run that cell (or restart the kernel and run all).'; return; }"
        f" window.Plotly.newPlot(el, {data}, {layout}, {json.dumps(CONFIG)});"
        " })();</script>"
    )
    return (_plotlyjs() if with_plotlyjs else "") + draw


def _import_go() -> Any:
    import plotly.graph_objects as go

    return go


def _figure_class() -> type:
    """The :class:`Figure` class, built on first use so ``import headzoo`` does not import plotly."""
    global _FigureClass
    if _FigureClass is None:
        go = _import_go()

        class Figure(go.Figure):  # type: ignore[misc, valid-type]
            """A plotly ``go.Figure`` that also displays as offline HTML (nbconvert, classic
            notebook) and sizes to its container. Use it as any plotly figure."""

            def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, Any]:
                global _plotlyjs_sent
                spec = self.to_plotly_json()
                first = not _plotlyjs_sent
                html = _view_html(self, with_plotlyjs=first)
                _plotlyjs_sent = True
                bundle = {
                    "application/vnd.plotly.v1+json": {
                        "data": json.loads(json.dumps(spec.get("data", []), cls=_encoder())),
                        "layout": json.loads(json.dumps(spec.get("layout", {}), cls=_encoder())),
                        "config": dict(CONFIG),
                    },
                    "text/html": html,
                    "text/plain": repr(self),
                }
                if include:
                    bundle = {k: v for k, v in bundle.items() if k in include}
                if exclude:
                    bundle = {k: v for k, v in bundle.items() if k not in exclude}
                return bundle

            def _repr_html_(self) -> str:
                return self._repr_mimebundle_(include=["text/html"])["text/html"]

            def _ipython_display_(self) -> None:
                # plotly 5's own _ipython_display_ would win over _repr_mimebundle_ and send
                # only what plotly.io.renderers says: publish both mimetypes instead.
                from IPython.display import display  # pyright: ignore[reportMissingImports]  (only in a kernel)

                display(self._repr_mimebundle_(), raw=True)

        Figure.__module__ = __name__
        Figure.__qualname__ = "Figure"
        _FigureClass = Figure
    return _FigureClass


_FigureClass: type | None = None


def _encoder() -> type:
    from plotly.utils import PlotlyJSONEncoder

    return PlotlyJSONEncoder


def __getattr__(name: str) -> Any:
    # `from headzoo._figures import Figure` (and pickling) resolve the class lazily.
    if name == "Figure":
        return _figure_class()
    raise AttributeError(name)


def as_figure(fig: Any) -> Any:
    """``fig`` as a headzoo :class:`Figure` that fills its container's width.

    The same object (no copy): its class becomes the ``go.Figure`` subclass, and the fixed
    ``width`` a plot method chose is dropped (``autosize``), so JupyterLab and exported HTML
    fit the figure to the page; the height, chosen from the number of panels, stays.
    Anything that is not a ``go.Figure`` is returned unchanged.
    """
    go = _import_go()
    cls = _figure_class()
    if isinstance(fig, go.Figure) and not isinstance(fig, cls):
        object.__setattr__(fig, "__class__", cls)
    if isinstance(fig, cls):
        fig.update_layout(width=None, autosize=True)
    return fig


def returns_figure(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``plot*`` method so the figure it returns goes through :func:`as_figure`."""
    if getattr(method, "_headzoo_figure", False):
        return method

    @functools.wraps(method)
    def plot(*args: Any, **kwargs: Any) -> Any:
        return as_figure(method(*args, **kwargs))

    plot._headzoo_figure = True  # type: ignore[attr-defined]
    return plot
