"""The registry: built-ins discovered from detectors/, user folders, entry points, refusals."""

from __future__ import annotations

import dataclasses
import textwrap
import warnings

import pytest

import headzoo as hz
from headzoo import _registry

BUILTINS = {"previous_token", "duplicate_token", "induction", "current_token", "first_token"}


@pytest.fixture(autouse=True)
def isolated_registry():
    """Detectors registered by a test must not leak into other tests."""
    _registry.registered_names()
    saved = (dict(_registry._REGISTRY), dict(_registry._SOURCES), set(_registry._LOADED_FILES), dict(_registry._state))
    yield
    for live, old in zip((_registry._REGISTRY, _registry._SOURCES, _registry._LOADED_FILES, _registry._state), saved):
        live.clear()
        live.update(old)


def test_list_detectors_has_builtins_and_columns():
    table = hz.list_detectors()
    assert BUILTINS <= set(table["name"])
    for col in ("name", "description", "kind", "reference", "variant", "threshold"):
        assert col in table.columns
    assert (table.set_index("name").loc[sorted(BUILTINS), "source"] == "builtin").all()
    assert table["description"].str.len().min() > 10


def test_every_builtin_declares_its_variant_and_reports_it(demo_model):
    scores = hz.detect(demo_model, sorted(BUILTINS), n_prompts=2)
    for name in BUILTINS:
        meta = scores.meta["detectors"][name]
        assert meta["variant"] and meta["reference"] and "options" in meta


def test_load_detectors_from_a_user_folder(tmp_path, demo_model):
    (tmp_path / "bos_only.py").write_text(textwrap.dedent('''
        import dataclasses, torch
        import headzoo as hz

        @hz.register
        @dataclasses.dataclass(frozen=True)
        class SecondToken(hz.PatternDetector):
            name = "second_token_for_test"
            description = "Attends to position 1."
            needs_tokens = False

            def match(self, tokens):
                b, s = tokens.shape
                m = torch.zeros(s, s, dtype=torch.bool, device=tokens.device)
                m[2:, 1] = True
                return m.expand(b, s, s)
    '''))
    (tmp_path / "_private.py").write_text("raise RuntimeError('must not be imported')")
    assert hz.load_detectors(tmp_path) == ["second_token_for_test"]
    assert hz.load_detectors(tmp_path) == []  # loading again is a no-op
    frame = hz.detect(demo_model, "second_token_for_test", n_prompts=2).to_frame()
    assert len(frame) == 12 and frame["score"].between(0, 1).all()


def test_duplicate_names_are_refused():
    with pytest.raises(hz.DuplicateDetectorError, match="already registered"):
        @hz.register
        @dataclasses.dataclass(frozen=True)
        class Again(hz.PatternDetector):
            name = "induction"
            description = "clash"

            def match(self, tokens):
                return tokens


def test_malformed_detectors_are_refused():
    with pytest.raises(hz.DetectorDefinitionError, match="frozen"):
        @hz.register
        class NotADataclass(hz.PatternDetector):
            name = "bad_one"
            description = "x"

            def match(self, tokens):
                return tokens
    with pytest.raises(hz.DetectorDefinitionError, match="subclass"):
        hz.register(object)
    with pytest.raises(hz.DetectorDefinitionError, match="match"):
        @hz.register
        @dataclasses.dataclass(frozen=True)
        class NoMatch(hz.PatternDetector):
            name = "no_match"
            description = "missing match()"


def test_broken_entry_point_only_warns(monkeypatch):
    class EP:
        name, value = "broken", "nowhere:thing"

        def load(self):
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group: [EP()])
    monkeypatch.setitem(_registry._state, "discovered", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = _registry.registered_names()
    assert BUILTINS <= set(names)
    assert any("broken" in str(w.message) for w in caught)


def test_entry_point_detector_is_registered(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class FromPlugin(hz.PatternDetector):
        name = "from_plugin_for_test"
        description = "registered through an entry point"
        needs_tokens = False

        def match(self, tokens):
            return tokens[:, :, None] == tokens[:, None, :]

    class EP:
        name, value = "plugin", "plugin:FromPlugin"

        def load(self):
            return FromPlugin

    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group: [EP()])
    monkeypatch.setitem(_registry._state, "discovered", False)
    assert "from_plugin_for_test" in _registry.registered_names()
    assert "entry point" in hz.list_detectors().set_index("name").loc["from_plugin_for_test", "source"]


def test_get_detector_options():
    det = hz.get_detector("induction", measure="transformer_lens")
    assert det.measure == "transformer_lens"
    with pytest.raises(dataclasses.FrozenInstanceError):
        det.measure = "match"  # type: ignore[misc]
    with pytest.raises(hz.InvalidOptionError, match="no option"):
        hz.get_detector("induction", nonsense=1)
