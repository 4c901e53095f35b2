"""The small things a user meets first: figures that fit, readable labels and reprs, tables
that show what they are sorted by, a README that runs, a word when text becomes ``<unk>``, an
import that prints nothing, and a cost estimate before a long run."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headzoo as hz
from headzoo._effects import HeadEffects
from headzoo._masking import MaskingCurve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return hz.load_model()


@pytest.fixture(scope="module")
def scores(model):
    return hz.detect(model, ["previous_token", "induction"], n_prompts=2)


def _effects() -> HeadEffects:
    # effects on both sides of the baseline (0.5): sorted by |change|, the raw effects alternate
    index = [(layer, head) for layer in range(2) for head in range(2)]
    return HeadEffects.from_values(index, ("head",), [0.9, 0.05, 0.52, 0.3], {"kind": "z", "baseline": 0.5, "source": 1.0})


# -- 1 and 2: figures -----------------------------------------------------------------------
def test_plots_are_plotly_figures_that_fill_their_container(scores) -> None:
    import plotly.graph_objects as go

    for fig in (scores.plot(), scores.plot("induction"), scores.plot_top(3), _effects().plot(), _effects().plot_top(3)):
        assert isinstance(fig, go.Figure)
        assert fig.layout.width is None and fig.layout.autosize is True
        assert fig.layout.height is not None  # from the number of panels
        bundle = fig._repr_mimebundle_()
        assert bundle["application/vnd.plotly.v1+json"]["config"]["responsive"] is True
        assert 'style="width:100%;' in bundle["text/html"]
    # more panels, more height
    assert scores.plot(cols=1).layout.height > scores.plot("induction").layout.height


def test_plotly_js_is_sent_once_and_plotly_settings_are_untouched(scores) -> None:
    import plotly.io as pio

    from headzoo import _figures

    default = pio.renderers.default
    _figures._plotlyjs_sent = False
    first = scores.plot()._repr_mimebundle_()["text/html"]
    second = scores.plot()._repr_mimebundle_()["text/html"]
    assert len(first) > 1_000_000 > 100_000 > len(second)  # plotly.js inline once, then only the figure
    assert "https://cdn" not in second and "<script src" not in first + second
    assert pio.renderers.default == default
    # a figure the user builds is plain plotly
    import plotly.graph_objects as go

    assert type(go.Figure()) is go.Figure


def test_figure_html_escapes_hostile_labels() -> None:
    hostile = "</script><script>alert(1)</script>"
    frame = pd.DataFrame({"detector": ["x"] * 4, "layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [0.1, 0.2, 0.3, 0.4]})
    scores = hz.HeadScores(frame, {"model": {"name": hostile}, "detectors": {"x": {}}})
    html = scores.plot()._repr_mimebundle_()["text/html"]
    assert "</script><script>alert(1)" not in html


# -- 3 and 5: HeadEffects -------------------------------------------------------------------
def test_plot_top_labels_are_integers() -> None:
    fig = _effects().plot_top(4)
    assert list(fig.data[0].x) == ["L0H1", "L0H0", "L1H1", "L1H0"]


def test_top_shows_the_change_it_sorts_by() -> None:
    effects = _effects()
    top = effects.top(4)
    columns = list(top.columns)
    assert columns.index("change") == columns.index("effect") + 1
    np.testing.assert_allclose(top["change"], top["effect"] - 0.5)
    assert list(top["change"].abs()) == sorted(top["change"].abs(), reverse=True)
    by_effect = effects.top(4, by="effect")
    assert list(by_effect["effect"]) == sorted(by_effect["effect"], reverse=True)
    assert "change" not in effects.to_frame().columns  # the tidy frame is unchanged
    assert "change" in effects.top.__doc__


# -- 4: reprs -------------------------------------------------------------------------------
def test_reprs_print_plain_numbers(scores) -> None:
    frame = pd.DataFrame({
        "method": ["uniform"] * 3, "k": np.array([0, 1, 2], dtype=np.int64), "heads": ["none", "top", "top"],
        "draw": np.zeros(3, dtype=np.int64), "accuracy": [1.0, 0.5, 0.25], "retrieved": [1.0, 0.5, 0.0],
        "masked": ["", "L0H0", "L0H0 L1H1"],
    })
    curve = MaskingCurve(frame, {"n_random": np.int64(3), "model": {"name": "m"}})
    assert repr(curve) == "MaskingCurve(methods ['uniform'], K [1, 2], 3 random draws)"
    for text in (repr(curve), repr(scores), repr(_effects())):
        assert "np." not in text and "numpy" not in text, text


# -- 6: the README ---------------------------------------------------------------------------
def test_readme_patching_block_runs(model) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Patching and ablation", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert block is not None
    code = block.group(1)
    first, rest = code.split("\n", 1)
    assert first.startswith("clean, corrupted = ...")
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(2, model.cfg.d_vocab, (3, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(2, model.cfg.d_vocab, (3,), generator=g)
    namespace = {"hz": hz, "model": model, "clean": clean, "corrupted": corrupted,
                 "correct_ids": clean[:, 3].tolist(), "wrong_ids": corrupted[:, 3].tolist()}
    exec(compile(rest, "README.md", "exec"), namespace)
    assert {"layer", "head", "effect", "change"} <= set(namespace["effects"].top(3).columns)


# -- 7: unknown tokens ------------------------------------------------------------------------
def test_unknown_words_warn_once_per_call() -> None:
    # a word-level vocabulary (tok0, tok1, ...): the default model's WordPiece spells any word
    model = hz.testing.planted_model(n_layers=2, n_heads=2, d_head=16, d_vocab=40, tokenizer=True, previous_token=(0, 0),
                                     induction=(1, 0), duplicate_token=None)
    unk = model.tokenizer.unk_token_id
    text = ["zzqx tok1 blorf zzqx", "tok1 tok1"]
    n_unk = sum(int((model.to_tokens(t, truncate=False)[0] == unk).sum()) for t in text)
    assert n_unk == 3
    with pytest.warns(hz.UnknownTokenWarning) as caught:
        hz.detect(model, "previous_token", tokens=text)
    mine = [w for w in caught if issubclass(w.category, hz.UnknownTokenWarning)]
    assert len(mine) == 1
    message = str(mine[0].message)
    assert "3 tokens in 1 of 2 texts" in message and "'zzqx'" in message and "'blorf'" in message
    assert "<unk>" in message and "avoid" in message
    assert Path(mine[0].filename).resolve() == Path(__file__).resolve()  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", hz.UnknownTokenWarning)
        hz.detect(model, "previous_token", tokens="tok1 tok2 tok1")  # every word known: silent


def test_gpt2_style_unk_is_not_checked() -> None:
    # GPT-2's unk id is <|endoftext|>, its BOS: a BOS is no unknown word
    from headzoo._tokens import warn_unknown_tokens

    class Tok:
        unk_token, unk_token_id, bos_token_id, eos_token_id, pad_token_id = "<|endoftext|>", 7, 7, 7, None

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unknown_tokens(Tok(), ["x"], [torch.tensor([7, 7])], "tokens") == 0


# -- 8: a quiet import --------------------------------------------------------------------------
def test_import_prints_no_warning() -> None:
    env_code = "import headzoo"
    out = subprocess.run([sys.executable, "-W", "error", "-c", env_code], capture_output=True, text=True,
                         env={**_env(), "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stderr


def test_import_in_a_kernel_without_ipywidgets_is_quiet() -> None:
    # What a Jupyter kernel looks like to tqdm.auto (ipykernel.zmqshell imported, an IPython
    # shell running) with ipywidgets missing: tqdm warns "IProgress not found" on import.
    code = (
        "import sys, types, warnings\n"
        "sys.modules['ipykernel.zmqshell'] = types.ModuleType('ipykernel.zmqshell')\n"
        "ip = types.ModuleType('IPython'); ip.get_ipython = lambda: object(); sys.modules['IPython'] = ip\n"
        "sys.modules['ipywidgets'] = None\n"
        # shown, not raised: tqdm.autonotebook catches its own warning when it is an error
        "warnings.simplefilter('always')\n"
        "import headzoo\n"
        "from tqdm.auto import tqdm\n"
        "from tqdm.std import tqdm as text_bar\n"
        "assert issubclass(tqdm, text_bar) and 'notebook' not in str(tqdm.__mro__), tqdm.__mro__\n"
        "list(tqdm(range(3), desc='bar'))\n"  # the fallback: text bars still work
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**_env(), "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert "IProgress" not in out.stderr and "Warning" not in out.stderr
    assert "bar: 100%" in out.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}


# -- 9: masking decodes with a cache, and says what it will cost ---------------------------------
def _gpt2_bridge(hf_gpt2):
    from transformer_lens.model_bridge import TransformerBridge

    _, path = hf_gpt2
    return TransformerBridge.boot_transformers(str(path), device="cpu")


@pytest.mark.parametrize("method", ["uniform", "zero"])
def test_cached_masking_equals_the_full_forward_ablation(hf_gpt2, method) -> None:
    # The logits of a cached decode (the prompt, then one token per pass) with the running-sum
    # mask hooks, against the previous implementation: hz.ablation_hooks at the emitting
    # positions on one full forward, which is what masked decoding recomputed at every step.
    from headzoo._forward import open_kv_cache, run
    from headzoo._masking import decode_mask_hooks

    model = _gpt2_bridge(hf_gpt2)
    heads = [(0, 1), (1, 0), (1, 3)]
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(1, 64, (2, 14), generator=g)
    prompt_len = 9
    full_hooks = hz.ablation_hooks(model, heads, method, positions=slice(prompt_len - 1, None))
    with torch.no_grad():
        full = run(model, seq, edit=full_hooks, logits="all")
        plain = run(model, seq, logits="all")
        cache, why = open_kv_cache(model, 2, torch.device("cpu"))
        assert cache is not None, why
        hooks = decode_mask_hooks(model, heads, method, prompt_len)
        got = []
        for start, stop in [(0, prompt_len)] + [(p, p + 1) for p in range(prompt_len, seq.shape[1])]:
            ids = seq[:, start:stop]
            out = run(model, ids, edit=hooks, logits="all", forward=cache.forward(model, ids))
            assert cache.advance(stop - start)
            got.append(out[:, -1])
    want = full[:, prompt_len - 1:]
    torch.testing.assert_close(torch.stack(got, 1), want, atol=1e-4, rtol=0)
    # and the mask matters here (a tiny random model has small logits): far more than the gap
    effect = float((plain[:, prompt_len - 1:] - want).abs().max())
    assert effect > 100 * float((torch.stack(got, 1) - want).abs().max()) and effect > 1e-4


def test_masked_needle_decoding_uses_the_cache_and_decodes_the_same(hf_gpt2) -> None:
    model = _gpt2_bridge(hf_gpt2)
    trials = hz.NeedleHaystack(answer_len=3, n_needles=1).build(model)
    for method in ("uniform", "zero"):
        cached = hz.decode_needles(model, trials, batch_size=2, mask_heads=[(1, 2), (0, 0)], mask_method=method)
        full = hz.decode_needles(model, trials, use_kv_cache=False, mask_heads=[(1, 2), (0, 0)], mask_method=method)
        assert cached.mode == "kv_cache (Hugging Face)" and full.mode.startswith("recompute")
        assert torch.equal(cached.generated, full.generated)


def test_retrieval_masking_says_its_cost_first(demo_model, capsys) -> None:
    probe = hz.NeedleHaystack(lengths=(30,), depths=(0.5,), n_needles=2)
    curve = hz.retrieval_masking(demo_model, k=1, n_random=1, methods="zero", probe=probe)
    err = capsys.readouterr().err
    cost = err.index("headzoo masking: 2 masked runs x")
    assert "decode steps" in err and "forward passes" in err
    assert err.index("the first of 2 runs took") > cost and "s to go" in err
    assert curve.meta["decoding"]["masked"] == curve.meta["decoding"]["unmasked"]
    hz.retrieval_masking(demo_model, k=1, n_random=1, methods="zero", probe=probe, progress=False)
    assert capsys.readouterr().err == ""
