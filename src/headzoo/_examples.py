"""Evidence on text: the contexts in a corpus where each head is most (and typically) active.

A head's score on a synthetic probe says what it *can* do; what it does on real text shows in
the contexts where it fires. Following the dataset examples of feature visualisation (Olah et al.
2017) and Anthropic's HeadVis, the corpus is streamed once through the model and, per head, two
activations are read at every query position: the largest attention the query pays to a key
other than BOS (many heads park unused attention on BOS, so that key says nothing), and the norm
of what the head writes there (``z @ W_O``). Per head and activation the ``k`` strongest
contexts are kept, and a decile sample: one context from each tenth of the activation's
distribution, since a head's top examples alone rarely describe its behaviour on the whole
distribution.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, cast, final

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from headzoo._errors import EmptyResultError, InvalidOptionError, UnsupportedTokenizerError
from headzoo._forward import check_finite, hook_name, require_hooks, run
from headzoo._io import Payload, Result, normalise, positive_int, strings_as_str
from headzoo._models import head_weights, library_versions, model_info
from headzoo._results import colour
from headzoo._stream import block, heads_of_z, rank_key, read_corpus, truncate, windows
from headzoo._tokens import check_bool, check_heads, check_int, token_strings

__all__ = ["HeadExamples", "head_examples", "ACTIVATIONS"]

#: what is ranked: max attention from the query to a non-BOS key, and the norm of the head's output
ACTIVATIONS = ("attention", "output_norm")
#: tokens of context shown per example (the query is the last)
CONTEXT = 24
#: positions held by the reservoir that the decile sample is drawn from
RESERVOIR = 2048
_COLUMNS = ["layer", "head", "activation", "kind", "rank", "decile", "doc", "pos", "value", "context",
            "attended", "attended_pos", "attended_token"]
_INTS = ("layer", "head", "rank", "doc", "pos")
_NULLABLE = ("decile", "attended", "attended_pos")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _position_keys(seed: int, doc: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """A pseudo-random ``uint64`` per (document, position), a hash (splitmix64) of the seed and
    both: it does not depend on the order positions are seen in, so neither does the sample."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) ^ (doc.astype(np.uint64) << np.uint64(32)) ^ pos.astype(np.uint64)
        for _ in range(2):
            x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
            x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
            x = x ^ (x >> np.uint64(31))
    return x


def _reader(store: dict[str, torch.Tensor], kind: str, heads: list[int], n_heads: int) -> Any:
    """A read hook keeping ``heads`` of ``hook_pattern`` (``[batch, head, query, key]``) or of
    ``hook_z`` (as ``[batch, pos, head, d_head]``) in ``store[kind]``."""

    def keep(act: torch.Tensor) -> None:
        if kind == "pattern":
            store["pattern"] = (act if heads == list(range(act.shape[1])) else act[:, heads]).detach().float()
        else:
            store["z"] = heads_of_z(act, n_heads)[:, :, heads].detach().float()

    return keep


def _check_corpus_heads(heads: Any, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    if heads is None:
        return [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in heads):
        heads = [heads]  # one (layer, head) pair
    pairs = check_heads(heads, n_layers, n_heads, "heads")
    if not pairs:
        raise InvalidOptionError("heads is empty; pass (layer, head) pairs, or None for every head")
    return pairs


def head_examples(
    model: Any,
    corpus: Any = None,
    heads: Any = None,
    *,
    k: int = 8,
    deciles: bool = True,
    batch_size: int = 8,
    max_tokens: int | None = 50_000,
    seed: int = 0,
    progress: bool | None = None,
) -> HeadExamples:
    """Per head, the contexts of a corpus where it is most active, and a decile sample.

    The corpus is streamed once: its documents are cut into windows of the model's context
    (BOS first when the model prepends one; windows do not overlap, so every token is a query
    exactly once, with the context of its own window), ``batch_size`` windows per forward pass,
    reading only ``hook_pattern`` and ``hook_z`` of the layers asked for (no cache; the pass
    stops after the last of them). Memory does not grow with the corpus beyond its token ids:
    per head only the ``k`` best positions so far and the reservoir below are held. At every
    query position ``q`` of head ``(layer, head)``:

    - ``"attention"``: ``max_j pattern[q, j]`` over keys ``j <= q`` that are not the BOS; the
      example's attended key is that ``j``;
    - ``"output_norm"``: ``||z[q] @ W_O||`` (the head's write into the residual stream, before
      biases); its attended key is the key attended most, BOS included.

    Decile sample (a streaming scheme, stated so it can be checked): every position gets a
    pseudo-random key, a hash of ``seed``, its document and its position; the ``RESERVOIR``
    (2048) positions of smallest key are kept (a uniform sample without replacement of all
    positions seen, the same for every head and every batching). At the end, per head and
    activation, the sample is sorted by value and cut into ten equal parts; decile ``d``
    (1 = lowest) shows its part's position of smallest key. With fewer than ten positions,
    some deciles are empty and absent.

    Args:
        model: a TransformerLens model with its tokenizer.
        corpus: ``None`` (the text shipped with headzoo), the path of a UTF-8 text file, of a
            folder (every ``*.txt`` in it, sorted by name, one document each) or of a dataset
            saved with ``datasets``' ``save_to_disk``, ``"hf:NAME[:CONFIG][@SPLIT]"`` (a Hugging
            Face dataset, streamed where the hub is reachable; ``NAME`` may be a local folder of
            data files), a list of strings (one document each), or a ``datasets.Dataset`` /
            ``IterableDataset`` with a ``"text"`` column (one document per row). Windows never
            cross documents.
        heads: ``(layer, head)`` pairs, or ``None`` for every head.
        k: top contexts kept per head and activation.
        deciles: also keep the decile sample.
        batch_size: windows per forward pass (speed and memory only).
        max_tokens: read at most this many corpus tokens (``None``: all).
        seed: seeds the decile sample.
        progress: a progress bar over batches (``None``: only for more than 20 batches).

    Returns:
        :class:`HeadExamples`; ``to_frame()`` has one row per example.

    Raises:
        InvalidOptionError: bad heads, ``k``, ``batch_size``, ``max_tokens``, ``seed`` or
            corpus (empty, unreadable, wrong type, a dataset without ``"text"``, ``datasets``
            missing for a saved dataset).
        UnsupportedTokenizerError: the model has no tokenizer to read text with.
        MissingHooksError: the model lacks ``hook_pattern`` / ``hook_z``.
    """
    info = model_info(model)
    pairs = _check_corpus_heads(heads, info.n_layers, info.n_heads)
    k = positive_int("k", k)
    batch_size = positive_int("batch_size", batch_size)
    if max_tokens is not None:
        max_tokens = positive_int("max_tokens", max_tokens)
    seed = check_int(seed, "seed", minimum=0)
    deciles = check_bool(deciles, "deciles")
    if progress is not None:
        progress = check_bool(progress, "progress")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedTokenizerError(
            "head_examples reads text, and the model has no tokenizer to read it with; load the model with its tokenizer"
        )
    check_finite(model)
    docs, corpus_meta = read_corpus(tokenizer, corpus, who="head_examples", limit=max_tokens)
    complete = corpus_meta.pop("complete")
    held = sum(len(d) for d in docs)
    docs = truncate(docs, max_tokens)
    n_read = sum(len(d) for d in docs)
    bos = info.bos_token_id if info.prepend_bos else None
    n_bos = int(bos is not None)
    length = info.n_ctx - n_bos
    if length < 1:
        raise InvalidOptionError(f"the model's context ({info.n_ctx}) leaves no room for a token after the BOS")
    wins = list(windows(docs, length))
    width = n_bos + max(len(w.ids) for w in wins)  # one block width: batching changes nothing
    pad_id = int(bos) if bos is not None else 0
    device = torch.device(info.device)

    layers = sorted({layer for layer, _ in pairs})
    by_layer = {layer: [h for lay, h in pairs if lay == layer] for layer in layers}
    names = {layer: (hook_name("pattern", layer), hook_name("z", layer)) for layer in layers}
    require_hooks(model, [n for pair in names.values() for n in pair], "head_examples")
    with torch.no_grad():
        w_o = {layer: head_weights(model, "O", layer)[by_layer[layer]].double().to(device) for layer in layers}  # [h, d_head, d_model]
        gram = {layer: (w @ w.transpose(1, 2)).float() for layer, w in w_o.items()}  # [h, d_head, d_head]
    n_sel = len(pairs)
    column = {pair: i for i, pair in enumerate(pairs)}
    # running top k per head and activation: values, rank keys, doc, pos, attended doc position (-1: BOS)
    top: dict[str, dict[str, np.ndarray]] = {}
    res: dict[str, np.ndarray] = {}  # the reservoir: key, doc, pos, window start, and per head values / attended
    batches = [wins[i : i + batch_size] for i in range(0, len(wins), batch_size)]
    show = progress if progress is not None else len(batches) > 20
    for chunk in tqdm(batches, desc="headzoo head examples", unit="batch", disable=not show, leave=False):
        tokens = block(chunk, width, bos, pad_id).to(device)
        got: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
        read = {}
        for layer in layers:
            read[names[layer][0]] = _reader(got[layer], "pattern", by_layer[layer], info.n_heads)
            read[names[layer][1]] = _reader(got[layer], "z", by_layer[layer], info.n_heads)
        with torch.no_grad():
            run(model, tokens, read=read, stop_after=names[layers[-1]][1])
            b, p = tokens.shape
            att = torch.empty(b, p, n_sel, device=device)
            att_key = torch.empty(b, p, n_sel, dtype=torch.long, device=device)
            norm = torch.empty(b, p, n_sel, device=device)
            norm_key = torch.empty(b, p, n_sel, dtype=torch.long, device=device)
            for layer in layers:
                cols = [column[(layer, h)] for h in by_layer[layer]]
                pattern = got[layer]["pattern"]  # [b, h, q, k]
                norm_key[:, :, cols] = pattern.argmax(-1).transpose(1, 2)
                best = pattern[..., n_bos:].max(-1)  # the BOS key never counts as the attended key (a view: no copy)
                att[:, :, cols] = best.values.transpose(1, 2)
                att_key[:, :, cols] = best.indices.transpose(1, 2) + n_bos
                # ||z W_O||^2 = z (W_O W_O^T) z^T: no [batch, pos, head, d_model] tensor is formed
                z = got[layer]["z"]  # [b, pos, h, d_head]
                square = (torch.einsum("bphe,hef->bphf", z, gram[layer]) * z).sum(-1)
                norm[:, :, cols] = square.clamp_min(0.0).sqrt()
        # the real query positions of the batch, flattened: row i, block position n_bos + j
        rows, qpos, doc, pos, start = [], [], [], [], []
        for i, w in enumerate(chunk):
            n = len(w.ids)
            rows.append(np.full(n, i))
            qpos.append(np.arange(n_bos, n_bos + n))
            doc.append(np.full(n, w.doc))
            pos.append(np.arange(w.start, w.start + n))
            start.append(np.full(n, w.start))
        r, q = np.concatenate(rows), np.concatenate(qpos)
        cand = {"doc": np.concatenate(doc).astype(np.int64), "pos": np.concatenate(pos).astype(np.int64),
                "start": np.concatenate(start).astype(np.int64)}
        offset = cand["start"] - n_bos  # block position -> document position

        # [n, heads]; a key's block position becomes a document position, -1 for the BOS
        values = {}
        for act, v, a in (("attention", att, att_key), ("output_norm", norm, norm_key)):
            key_at = a.cpu().numpy()[r, q]
            values[act] = (v.cpu().numpy()[r, q].astype(np.float64), np.where(key_at >= n_bos, key_at + offset[:, None], -1))
        for act, (v, a) in values.items():
            merged = {"value": v.T, "doc": np.broadcast_to(cand["doc"], v.T.shape), "pos": np.broadcast_to(cand["pos"], v.T.shape),
                      "start": np.broadcast_to(cand["start"], v.T.shape), "attended": a.T}  # [heads, n]
            if act in top:
                merged = {c: np.concatenate([top[act][c], merged[c]], axis=1) for c in merged}
            keep = np.stack([np.lexsort((merged["pos"][h], merged["doc"][h], -rank_key(merged["value"][h])))[:k]
                             for h in range(n_sel)])  # best first; ties by document and position
            top[act] = {c: np.take_along_axis(m, keep, axis=1) for c, m in merged.items()}
        if deciles:
            key = _position_keys(seed, cand["doc"], cand["pos"])
            new = {"key": key, "doc": cand["doc"], "pos": cand["pos"], "start": cand["start"],
                   "attention": values["attention"][0], "attention_at": values["attention"][1],
                   "output_norm": values["output_norm"][0], "output_norm_at": values["output_norm"][1]}
            if res:
                new = {c: np.concatenate([res[c], new[c]]) for c in new}
            keep_r = np.argsort(new["key"], kind="stable")[:RESERVOIR]
            res = {c: x[keep_r] for c, x in new.items()}
    if not top:
        raise EmptyResultError("head_examples saw no position; give a longer corpus")

    strings: dict[int, str] = {}

    def text(ids: Sequence[int]) -> list[str]:
        missing = sorted({int(i) for i in ids if int(i) not in strings})
        if missing:
            strings.update(zip(missing, token_strings(model, missing)))
        return [strings[int(i)] for i in ids]

    bos_string = text([bos])[0] if bos is not None else None

    def example(pair: tuple[int, int], act: str, kind: str, rank: int, decile: int | None, d: int, pos: int,
                value: float, start: int, attended: int) -> dict[str, Any]:
        first = max(start, pos - CONTEXT + 1)  # only what the model saw in the query's window
        ids = docs[d][first : pos + 1]
        inside = attended >= first
        return {
            "layer": pair[0], "head": pair[1], "activation": act, "kind": kind, "rank": rank, "decile": decile,
            "doc": d, "pos": pos, "value": value, "context": json.dumps(text(ids), ensure_ascii=False),
            "attended": attended - first if attended >= 0 and inside else None,
            "attended_pos": attended if attended >= 0 else None,
            "attended_token": text([docs[d][attended]])[0] if attended >= 0 else bos_string,
        }

    out = []
    for h, pair in enumerate(pairs):
        for act in ACTIVATIONS:
            t = top[act]
            for j in range(t["value"].shape[1]):
                out.append(example(pair, act, "top", j + 1, None, int(t["doc"][h, j]), int(t["pos"][h, j]),
                                   float(t["value"][h, j]), int(t["start"][h, j]), int(t["attended"][h, j])))
            if deciles and len(res["key"]):
                v = res[act][:, h]
                order = np.lexsort((res["key"], rank_key(v)))  # by value (to float noise), ties by key
                m = len(order)
                for dec in range(10):
                    part = order[(dec * m) // 10 : ((dec + 1) * m) // 10]
                    if not len(part):
                        continue
                    i = int(part[np.argmin(res["key"][part])])
                    out.append(example(pair, act, "decile", dec + 1, dec + 1, int(res["doc"][i]), int(res["pos"][i]),
                                       float(v[i]), int(res["start"][i]), int(res[f"{act}_at"][i, h])))
    frame = pd.DataFrame(out, columns=_COLUMNS)
    meta: dict[str, Any] = {
        "model": info.config_dict(),
        "model_config_hash": info.config_hash(),
        "versions": library_versions(),
        "heads": [list(pair) for pair in pairs],
        "corpus": {**corpus_meta, "n_tokens": n_read, "truncated": not complete or n_read < held},
        "k": k,
        "deciles": deciles,
        "reservoir": RESERVOIR if deciles else 0,
        "n_sampled": int(len(res["key"])) if deciles else 0,
        "seed": seed,
        "batch_size": batch_size,
        "window": length,
        "n_windows": len(wins),
        "bos": bos_string,
        "context": CONTEXT,
    }
    return HeadExamples(frame, meta)


@final
class HeadExamples(Result):
    """Contexts of a corpus where each head is active: the top ``k`` per head and activation,
    and a decile sample.

    Build it with :func:`hz.head_examples`. ``to_frame()`` has one row per example: ``layer,
    head``, ``activation`` (``"attention"``: max attention to a non-BOS key; ``"output_norm"``:
    the norm of the head's output), ``kind`` (``"top"`` or ``"decile"``), ``rank`` (1 = best
    for ``"top"``; the decile for ``"decile"``), ``decile`` (1-10, null for top rows), ``doc``
    and ``pos`` (the query's document and position), ``value`` (the activation), ``context``
    (a JSON list of token strings, up to 24 ending at the query; ``json.loads`` it, or use
    :meth:`for_head`), ``attended`` (index of the attended key in ``context``, null when it is
    the BOS or before the context), ``attended_pos`` (its document position, null for the
    BOS) and ``attended_token``.
    """

    __slots__ = ("_frame", "_meta")
    _FORMAT = "HeadExamples"

    def __init__(self, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"HeadExamples needs columns {_COLUMNS}; missing {missing}")
        frame = strings_as_str(cast(pd.DataFrame, frame[_COLUMNS]))
        for col in _INTS:
            frame[col] = frame[col].astype("int64")
        for col in _NULLABLE:
            frame[col] = frame[col].astype("Int64")
        frame["value"] = frame["value"].astype("float64")
        for col in ("activation", "kind", "context", "attended_token"):
            frame[col] = frame[col].astype(str)
        self._frame: pd.DataFrame = frame
        self._meta = normalise(meta)

    # -- access ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (model, corpus, options, the sampling scheme's sizes)."""
        return json.loads(json.dumps(self._meta))

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The heads read, in the order asked for."""
        return [(int(a), int(b)) for a, b in self._meta.get("heads", [])]

    def to_frame(self) -> pd.DataFrame:
        """Tidy copy: one row per example (columns in the class docstring)."""
        return self._frame.copy()

    def for_head(self, layer: int, head: int, activation: str | None = None) -> pd.DataFrame:
        """One head's examples (of one activation, or both), top first, then deciles, with
        ``context`` as a list of token strings.

        Raises:
            InvalidOptionError: the head was not read, or an unknown activation.
        """
        if (layer, head) not in self.heads:
            raise InvalidOptionError(f"head ({layer}, {head}) was not read; these examples have heads {self.heads}")
        part = self._frame[(self._frame["layer"] == layer) & (self._frame["head"] == head)]
        if activation is not None:
            if activation not in ACTIVATIONS:
                raise InvalidOptionError(f"activation must be one of {list(ACTIVATIONS)}; got {activation!r}")
            part = part[part["activation"] == activation]
        part = cast(pd.DataFrame, part).reset_index(drop=True).copy()
        part["context"] = [json.loads(c) for c in part["context"]]
        return part

    # -- display --------------------------------------------------------------------------
    def plot(self, activation: str = "attention") -> Any:
        """Layer x head heatmap of each head's strongest ``activation`` (its top example), the
        example's context in the hover, as a plotly ``Figure`` (returned, never shown)."""
        import plotly.graph_objects as go

        if activation not in ACTIVATIONS:
            raise InvalidOptionError(f"activation must be one of {list(ACTIVATIONS)}; got {activation!r}")
        info = self._meta.get("model", {})
        n_layers, n_heads = int(info.get("n_layers", 0)), int(info.get("n_heads", 0))
        z = np.full((n_layers, n_heads), np.nan)
        hover = np.full((n_layers, n_heads), "", dtype=object)
        best = self._frame[(self._frame["kind"] == "top") & (self._frame["rank"] == 1) & (self._frame["activation"] == activation)]
        for layer, head, value, context in zip(best["layer"], best["head"], best["value"], best["context"]):
            z[layer, head] = value
            hover[layer, head] = html.escape("".join(json.loads(context)[-12:]))
        fig = go.Figure(go.Heatmap(
            z=z, x=[f"H{h}" for h in range(n_heads)], y=[f"L{layer}" for layer in range(n_layers)], customdata=hover,
            colorscale="Blues", colorbar={"title": activation},
            hovertemplate="%{y} %{x}<br>" + activation + " %{z:.4f}<br>%{customdata}<extra></extra>",
        ))
        name = str(info.get("name", "model"))
        fig.update_layout(title=html.escape(f"headzoo: strongest {activation} on text, {name}"),
                          xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed",
                          height=max(320, 28 * n_layers + 160), width=max(420, 40 * n_heads + 200))
        return fig

    def __repr__(self) -> str:
        corpus = self._meta.get("corpus", {})
        return (f"HeadExamples({len(self.heads)} heads, k={self._meta.get('k')}, "
                f"{corpus.get('n_tokens', 0)} tokens of {corpus.get('source', '?')})")

    def _context_html(self, context: str, attended: Any) -> str:
        tokens = json.loads(context)
        spans = []
        for i, tok in enumerate(tokens):
            s = html.escape(tok).replace("\n", "&#8629;")
            if i == len(tokens) - 1:
                s = f"<b>{s}</b>"
            if attended is not None and attended is not pd.NA and i == int(attended):
                s = f"<mark>{s}</mark>"
            spans.append(s)
        return "<span style='white-space:pre-wrap;font-family:monospace'>" + "&#8203;".join(spans) + "</span>"

    def _repr_html_(self, max_heads: int = 8) -> str:
        """Self-contained HTML (no scripts): each head's top contexts (query in bold, attended
        token marked), for the first ``max_heads`` heads."""
        esc = html.escape
        name = str(self._meta.get("model", {}).get("name", ""))
        corpus = self._meta.get("corpus", {})
        parts = [f"<div style='font-family:sans-serif;font-size:12px'><b>HeadExamples</b> &middot; {esc(name)} &middot; "
                 f"{int(corpus.get('n_tokens', 0))} tokens of {esc(str(corpus.get('source', '')))}"]
        frame = self._frame[self._frame["kind"] == "top"]
        hi = {act: float(frame.loc[frame["activation"] == act, "value"].max()) if bool((frame["activation"] == act).any()) else 1.0
              for act in ACTIVATIONS}
        for layer, head in self.heads[:max_heads]:
            rows = []
            part = frame[(frame["layer"] == layer) & (frame["head"] == head)]
            for act, value, context, attended, token in zip(part["activation"], part["value"], part["context"],
                                                             part["attended"], part["attended_token"]):
                bg = colour(float(value), 0.0, hi[act] if hi[act] > 0 else 1.0)
                rows.append(f"<tr><td>{esc(act)}</td><td style='background:{bg}'>{float(value):.3f}</td>"
                            f"<td>{self._context_html(context, attended)}</td><td>&rarr; {esc(token)}</td></tr>")
            parts.append(f"<p><b>L{layer}H{head}</b></p><table style='border-collapse:collapse'>{''.join(rows)}</table>")
        if len(self.heads) > max_heads:
            parts.append(f"<p>&hellip; and {len(self.heads) - max_heads} more heads (see to_frame())</p>")
        parts.append("</div>")
        return "".join(parts)

    # -- persistence (save and load come from Result) ----------------------------------------
    def _to_payload(self) -> Payload:
        return Payload(self._frame, self._meta)

    @classmethod
    def _from_payload(cls, payload: Payload) -> HeadExamples:
        return cls(payload.frame, payload.meta)

