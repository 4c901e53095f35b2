"""The registry: built-ins discovered from detectors/, user folders, entry points, refusals."""

from __future__ import annotations

import dataclasses
import sys
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
    for live, old in zip((_registry._REGISTRY, _registry._SOURCES, _registry._LOADED_FILES, _registry._state), saved, strict=True):
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


# --- transactions: nothing a failed registration or load did stays behind -------------------

GOOD = '''
import dataclasses, torch
import headzoo as hz

@hz.register
@dataclasses.dataclass(frozen=True)
class {cls}(hz.PatternDetector):
    name = "{name}"
    description = "Attends to position 1 (a test detector)."
    needs_tokens = False

    def match(self, tokens):
        b, s = tokens.shape
        m = torch.zeros(s, s, dtype=torch.bool, device=tokens.device)
        m[2:, 1] = True
        return m.expand(b, s, s)
'''


def _detector_file(folder, stem, name, extra=""):
    (folder / f"{stem}.py").write_text(textwrap.dedent(GOOD.format(cls=stem.title().replace("_", ""), name=name)) + extra)


@pytest.fixture
def fresh_process_registry():
    """The registry as a new process has it: nothing registered, built-ins not yet discovered."""
    _registry._REGISTRY.clear()
    _registry._SOURCES.clear()
    _registry._LOADED_FILES.clear()
    _registry._state.update(discovered=False, discovering=False, source="user")


def _induction_lookalike():
    @dataclasses.dataclass(frozen=True)
    class MyInduction(hz.PatternDetector):
        name = "induction"
        description = "a user's own induction score"

        def match(self, tokens):
            return tokens[:, :, None] == tokens[:, None, :]

    return MyInduction


def test_a_builtin_name_is_refused_at_registration_before_first_use(fresh_process_registry):
    with pytest.raises(hz.DuplicateDetectorError, match="already registered .*builtin"):
        hz.register(_induction_lookalike())
    # the registry is not poisoned: the built-in is there and every later call works
    table = hz.list_detectors().set_index("name")
    assert BUILTINS <= set(table.index) and table.loc["induction", "source"] == "builtin"
    assert type(hz.get_detector("induction")).__module__.startswith("headzoo._loaded.")
    assert hz.get_detector("previous_token").name == "previous_token"


def test_replace_true_overrides_a_builtin_before_first_use(fresh_process_registry, demo_model):
    mine = hz.register(replace=True)(_induction_lookalike())
    assert _registry.detector_class("induction") is mine
    table = hz.list_detectors().set_index("name")
    assert table.loc["induction", "description"] == "a user's own induction score"
    assert BUILTINS - {"induction"} <= set(table.index)
    frame = hz.detect(demo_model, ["induction", "previous_token"], n_prompts=2).to_frame()
    assert set(frame["detector"]) == {"induction", "previous_token"}
    # and again after discovery: replace is still honoured, a plain clash still refused
    again = hz.register(replace=True)(_induction_lookalike())
    assert _registry.detector_class("induction") is again
    with pytest.raises(hz.DuplicateDetectorError):
        hz.register(_induction_lookalike())
    assert _registry.detector_class("induction") is again


@pytest.mark.parametrize(
    "breakage,error",
    [
        ("\nraise RuntimeError('boom at import')\n", hz.DetectorDefinitionError),
        ("\ndef broken(:\n", hz.DetectorDefinitionError),  # a syntax error
        ("\nimport headzoo_no_such_module\n", hz.DetectorDefinitionError),
    ],
    ids=["raises", "syntax-error", "missing-import"],
)
def test_a_folder_loads_whole_or_not_at_all_and_reloads_after_the_fix(tmp_path, breakage, error):
    names = _registry.registered_names()
    _detector_file(tmp_path, "a_first", "first_for_test")
    _detector_file(tmp_path, "b_second", "second_for_test", extra=breakage)  # registers, then fails
    _detector_file(tmp_path, "c_third", "third_for_test")
    with pytest.raises(error, match="b_second.py.*nothing from .* was registered"):
        hz.load_detectors(tmp_path)
    assert _registry.registered_names() == names
    loaded_files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    assert str((tmp_path / "a_first.py").resolve()) not in loaded_files
    _detector_file(tmp_path, "b_second", "second_for_test")  # the fix
    assert hz.load_detectors(tmp_path) == ["first_for_test", "second_for_test", "third_for_test"]
    assert hz.load_detectors(tmp_path) == []


def test_a_clash_inside_a_folder_takes_back_the_whole_folder(tmp_path):
    names = _registry.registered_names()
    _detector_file(tmp_path, "a_one", "clash_for_test")
    _detector_file(tmp_path, "b_two", "clash_for_test")
    with pytest.raises(hz.DuplicateDetectorError, match="clash_for_test") as info:
        hz.load_detectors(tmp_path)
    assert any("b_two.py" in note for note in getattr(info.value, "__notes__", []))
    assert _registry.registered_names() == names
    (tmp_path / "b_two.py").unlink()
    assert hz.load_detectors(tmp_path) == ["clash_for_test"]


def test_a_failed_folder_restores_a_builtin_it_replaced(tmp_path):
    builtin = _registry.detector_class("induction")
    source = "\n".join([
        "import dataclasses", "import headzoo as hz", "",
        "@hz.register(replace=True)", "@dataclasses.dataclass(frozen=True)",
        "class Mine(hz.PatternDetector):",
        "    name = 'induction'", "    description = 'replacement'",
        "    def match(self, tokens):", "        return tokens[:, :, None] == tokens[:, None, :]",
        "", "raise ValueError('later failure')",
    ])
    (tmp_path / "replace_then_fail.py").write_text(source)
    with pytest.raises(hz.DetectorDefinitionError, match="later failure"):
        hz.load_detectors(tmp_path)
    assert _registry.detector_class("induction") is builtin
    assert hz.list_detectors().set_index("name").loc["induction", "source"] == "builtin"


def test_a_plugin_that_fails_half_way_leaves_nothing(monkeypatch):
    def make(name):
        @dataclasses.dataclass(frozen=True)
        class Plugged(hz.PatternDetector):
            description = "from a half-broken plugin"

            def match(self, tokens):
                return tokens[:, :, None] == tokens[:, None, :]

        Plugged.name = name
        return Plugged

    class HalfBroken:
        name, value = "half", "half:thing"

        def load(self):
            hz.register(make("half_one_for_test"))  # what a plugin module does at import
            raise ImportError("second half missing")

    class Clashing:
        name, value = "clash", "clash:Induction"

        def load(self):
            return make("induction")

    builtin = _registry.detector_class("induction")
    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group: [HalfBroken(), Clashing()])
    monkeypatch.setitem(_registry._state, "discovered", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = _registry.registered_names()
    assert "half_one_for_test" not in names
    assert _registry.detector_class("induction") is builtin
    messages = [str(w.message) for w in caught]
    assert any("'half'" in m and "second half missing" in m for m in messages)
    assert any("'clash'" in m and "already registered" in m for m in messages)


def test_a_broken_builtin_folder_leaves_the_registry_usable_once_fixed(fresh_process_registry, tmp_path, monkeypatch):
    _detector_file(tmp_path, "good_builtin", "good_builtin_for_test")
    (tmp_path / "bad_builtin.py").write_text("raise RuntimeError('broken install')")
    monkeypatch.setattr(_registry, "builtin_detectors_dir", lambda: tmp_path)
    with pytest.raises(hz.DetectorDefinitionError, match="broken install"):
        hz.list_detectors()
    assert not _registry._REGISTRY and not _registry._state["discovered"]
    (tmp_path / "bad_builtin.py").unlink()
    assert list(hz.list_detectors()["name"]) == ["good_builtin_for_test"]
