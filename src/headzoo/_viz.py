"""Attention views for Jupyter: circuitsvis' interactive patterns of chosen heads, offline.

circuitsvis' own ``RenderedHTML`` checks for internet access when displayed and then loads its
script from a CDN; headzoo inlines the script that ships with the package instead, and passes
the tokens as escaped JSON, so a view opens offline and a token string can never end the script.
"""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path
from typing import Any, final

import numpy as np

from headzoo._atlas import json_for_script
from headzoo._models import model_info
from headzoo._tokens import check_heads, check_int, token_strings

__all__ = ["attention_view", "AttentionView"]


@final
class AttentionView:
    """Attention patterns of some heads on one prompt. Displays itself in Jupyter (offline).

    Attributes:
        tokens: the prompt's token strings.
        heads: the ``(layer, head)`` pairs shown.
        patterns: ``[head, query, key]`` attention, float32.
    """

    __slots__ = ("tokens", "heads", "patterns")

    def __init__(self, tokens: list[str], heads: list[tuple[int, int]], patterns: np.ndarray) -> None:
        self.tokens, self.heads, self.patterns = tokens, heads, patterns

    def __repr__(self) -> str:
        names = ", ".join(f"L{a}H{b}" for a, b in self.heads[:6]) + (", ..." if len(self.heads) > 6 else "")
        return f"AttentionView({len(self.heads)} heads: {names}; {len(self.tokens)} tokens)"

    def html(self) -> str:
        """A self-contained HTML fragment: the circuitsvis script inline, the data as JSON."""
        import circuitsvis

        script = (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
        script = script.replace("</script", "<\\/script")
        ident = f"headzoo-attn-{uuid.uuid4().hex[:12]}"
        props = {
            "tokens": self.tokens,
            "attention": np.round(self.patterns.astype(float), 4).tolist(),
            "attentionHeadNames": [f"L{a}H{b}" for a, b in self.heads],
            "maxValue": 1, "minValue": 0,
        }
        return (
            f'<div id="{ident}" style="margin: 10px 0;"></div>'
            f'<script type="application/json" id="{ident}-data">{json_for_script(props)}</script>'
            f"<script>{script}\n;CircuitsVis.render({json.dumps(ident)}, CircuitsVis.AttentionHeads, "
            f"JSON.parse(document.getElementById({json.dumps(ident + '-data')}).textContent));</script>"
            f"<noscript>{html.escape(repr(self))}</noscript>"
        )

    def _repr_html_(self) -> str:
        return self.html()


def attention_view(model: Any, heads: Any = None, tokens: Any = None, *, seed: int = 0) -> AttentionView:
    """Interactive attention patterns of ``heads`` on ``tokens`` (circuitsvis, for Jupyter).

    Args:
        heads: ``(layer, head)`` pairs; ``None``: every head of the model.
        tokens: one prompt, as text or token ids (at most 128 tokens). ``None``: a
            repeated-random-token prompt, where previous-token, duplicate-token and induction
            heads show their stripes.
        seed: seeds the default prompt.

    Returns:
        :class:`AttentionView`: display it in a notebook, or write ``view.html()`` to a file.
    """
    from headzoo._atlas import example_ids, example_patterns

    info = model_info(model)
    if heads is None:
        pairs = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    else:
        by_layer: dict[int, list[int]] = {}
        for layer, head in check_heads(heads, info.n_layers, info.n_heads):
            by_layer.setdefault(layer, []).append(head)
        pairs = [(layer, head) for layer, hs in by_layer.items() for head in hs]
    seed = check_int(seed, "seed")
    ids = example_ids(model, info, tokens, seed)
    patterns = example_patterns(model, info, ids)
    chosen = np.stack([patterns[layer, head] for layer, head in pairs])
    return AttentionView(token_strings(model, ids.tolist()), pairs, chosen)
