"""The conformance suite: every registered detector passes it, and each rule catches a detector
broken on purpose, with a message that starts with the rule's name."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import headzoo as hz
from headzoo import _registry
from headzoo.testing import RULES, PlantSpec, _conformance, check_detector

from conftest import cached_planted
from headzoo.testing import FUNCTION_VECTOR_SEPARATOR, function_vector_model, function_vector_placements

#: small options that keep the slow detectors quick (the rules do not depend on probe size)
FAST = {
    "retrieval": {"lengths": (20,), "depths": (0.0, 1.0), "n_needles": 1, "filler": "random"},
}


#: detectors that the default models cannot serve get models that can: the IOI detectors need a
#: tokenizer that spells names and IOI sentences, and a model that solves IOI
IOI = ("name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition")
FAST.update({name: {"n_prompts": 8} for name in IOI})


#: function_vector leaves out tasks a model cannot do in context (the default models do none):
#: it gets two planted function-vector circuits, whose shots are separated by their own token
FAST["function_vector"] = {"n_prompts": 4, "n_shots": 4, "separator": FUNCTION_VECTOR_SEPARATOR}


#: successor_in_context applies to the default models too (their words include the days), but
#: the planted successor model has a successor head for it to find
FAST["successor_in_context"] = {"n": 16}


def _models_for(name: str) -> Any:
    if name == "successor_in_context":
        from headzoo.testing import successor_model

        return [successor_model(n_layers=2, n_heads=3, successor=(1, 2)), successor_model(n_layers=3, n_heads=2, successor=(2, 0))]
    if name == "function_vector":
        return [function_vector_model(), function_vector_model(n_layers=4, n_heads=2, **function_vector_placements(4, 2, 1))]
    if name not in IOI:
        return None
    from headzoo.testing import ioi_model

    return [ioi_model(n_layers=4, n_heads=3, seed=0), ioi_model(n_layers=5, n_heads=2, seed=1)]


@pytest.mark.parametrize("name", list(hz.list_detectors()["name"]))
def test_every_registered_detector_conforms(name):
    report = check_detector(name, model=_models_for(name), options=FAST.get(name))
    assert [r.rule for r in report.results] == list(RULES)
    assert set(report.passed) | set(report.skipped) == set(RULES)
    # only batching may be skipped, and only for detectors that do not batch prompts
    assert set(report.skipped) <= {"batch_size_invariance"}
    det = hz.get_detector(name)
    if isinstance(det, hz.PatternDetector) or any(f.name == "batch_size" for f in dataclasses.fields(det)):  # type: ignore[arg-type]
        assert "batch_size_invariance" in report.passed
    assert len(report.models) == 2


# -- a correct minimal detector, and the broken variants of it ------------------------------------

def _shape(model: Any) -> tuple[int, int]:
    info = hz.model_info(model)
    return info.n_layers, info.n_heads


@dataclasses.dataclass(frozen=True)
class Constant(hz.Detector):
    """Scores every head by its position; reads no forward pass."""

    name = "constant_test"
    description = "Scores each head by where it sits (a test detector)."
    reference = "tests/test_conformance.py"
    variant = "(layer + 1) / (head + 2)"
    threshold = 0.5
    kind = "test"

    scale: float = 1.0

    def scores(self, model: Any) -> torch.Tensor:
        n_layers, n_heads = _shape(model)
        layer = torch.arange(n_layers, dtype=torch.float64)[:, None]
        head = torch.arange(n_heads, dtype=torch.float64)[None, :]
        return self.scale * (layer + 1) / (head + 2)

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        return hz.DetectorOutput({"score": self.scores(model)}, meta={"n": 1})


@dataclasses.dataclass(frozen=True)
class Diagonal(hz.PatternDetector):
    """Attention on the current token, for queries q >= 1."""

    name = "diagonal_test"
    description = "Attends to itself (a test detector)."
    reference = "tests/test_conformance.py"
    variant = "mean over q >= 1 of A[q, q]"
    threshold = 0.4

    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, seq = tokens.shape
        diag = torch.eye(seq, dtype=torch.bool, device=tokens.device)
        diag[0, 0] = False
        return diag.expand(batch, seq, seq)


def _detail(report: Any, rule: str) -> str:
    return report.to_frame().set_index("rule").loc[rule, "detail"]


def test_correct_test_detectors_pass():
    report = check_detector(Constant)
    assert report.passed == [r for r in RULES if r != "batch_size_invariance"]
    assert "no batch_size option" in report.skipped["batch_size_invariance"]
    assert "not registered" in _detail(report, "metadata_contract")
    assert check_detector(Diagonal).passed == list(RULES)


# declared_fields ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CamelName(Constant):
    name = "CamelName"


@dataclasses.dataclass(frozen=True)
class NoDefault(Constant):
    window: int = dataclasses.field(kw_only=True)


@dataclasses.dataclass(frozen=True)
class ListOption(Constant):
    layers: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class NanThreshold(Constant):
    threshold = float("nan")


@dataclasses.dataclass
class NotFrozen(hz.Detector):
    name = "not_frozen_test"
    description = "x"
    kind = "test"


class Undecorated(Constant):
    extra: int = 3  # not a field: the subclass was not decorated


@dataclasses.dataclass(frozen=True)
class PatternKindLie(Diagonal):
    kind = "weights"


@dataclasses.dataclass(frozen=True)
class HiddenState(Constant):
    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_cache", {})


@pytest.mark.parametrize(
    ("cls", "fragment"),
    [
        (CamelName, "snake_case"),
        (NoDefault, "has no default"),
        (ListOption, "hashable"),
        (NanThreshold, "finite"),
        (NotFrozen, "frozen=True"),
        (Undecorated, "frozen=True"),
        (PatternKindLie, "kind"),
        (HiddenState, "not dataclass fields"),
        (dict, "not a subclass of hz.Detector"),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_declared_fields(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^declared_fields: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


# score_shape ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Transposed(Constant):
    def scores(self, model: Any) -> torch.Tensor:
        return super().scores(model).T.contiguous()  # [head, layer]: right only on square models


@dataclasses.dataclass(frozen=True)
class FutureKeys(Diagonal):
    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, seq = tokens.shape
        future = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).triu(1)
        return future.expand(batch, seq, seq) | super().match(tokens)


@dataclasses.dataclass(frozen=True)
class BatchMeanReduce(Diagonal):
    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        score, valid = super().reduce(pattern, match)["score"]
        return {"score": (score.mean(0), valid)}  # [head]: the batch axis is gone


@pytest.mark.parametrize(("cls", "fragment"), [
    (Transposed, "[n_layers, n_heads] = [2, 3]"),
    (FutureKeys, "above the diagonal"),
    (BatchMeanReduce, "[batch, head]"),
])
def test_score_shape(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^score_shape: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


def test_a_transposed_score_passes_on_a_square_model_only():
    square = cached_planted(PlantSpec(n_layers=2, n_heads=2, d_head=16, d_vocab=8, n_ctx=16, seed=3))
    report = check_detector(Transposed, model=square)
    assert "only square models" in _detail(report, "score_shape")
    with pytest.raises(hz.ConformanceError, match="^score_shape: "):
        check_detector(Transposed)  # the default models are 2 x 3 and 3 x 2


# scores_finite --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Infinite(Constant):
    def scores(self, model: Any) -> torch.Tensor:
        s = super().scores(model)
        s[0, 0] = float("inf")
        return s


@dataclasses.dataclass(frozen=True)
class NanForInvalidPrompts(Diagonal):
    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        score, valid = super().reduce(pattern, match)["score"]
        return {"score": (torch.where(torch.arange(len(valid))[:, None] == 0, torch.nan, score), valid)}


@dataclasses.dataclass(frozen=True)
class AllNan(Constant):
    def scores(self, model: Any) -> torch.Tensor:
        return torch.full(_shape(model), torch.nan, dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class OutOfRange(Constant):
    score_range = (0.0, 1.0)  # (layer + 1) / (head + 2) reaches 1.5 in the 3 x 2 model


@pytest.mark.parametrize(("cls", "fragment"), [
    (Infinite, "infinite"),
    (NanForInvalidPrompts, "NaN * 0"),
    (AllNan, "scored no head"),
    (OutOfRange, "score_range"),
])
def test_scores_finite(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^scores_finite: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


def test_declared_score_range_is_checked_and_reported():
    @dataclasses.dataclass(frozen=True)
    class InRange(Constant):
        score_range = (0.0, 2.0)

    assert "score_range" in _detail(check_detector(InRange), "scores_finite")


# batch_size_invariance ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BatchDependentWithOption(Diagonal):
    """Right with default options; with exclude_bos=True the score leaks the batch size."""

    def reduce(self, pattern: torch.Tensor, match: torch.Tensor) -> hz.Metrics:
        score, valid = super().reduce(pattern, match)["score"]
        if self.exclude_bos:
            score = score + 0.01 * pattern.shape[0]
        return {"score": (score, valid)}


@dataclasses.dataclass(frozen=True)
class BatchSizeOption(Constant):
    batch_size: int = 4

    def scores(self, model: Any) -> torch.Tensor:
        return super().scores(model) / self.batch_size


def test_batch_size_invariance_with_non_default_options():
    with pytest.raises(hz.ConformanceError, match="^batch_size_invariance: ") as err:
        check_detector(BatchDependentWithOption)
    assert "exclude_bos=True" in str(err.value)
    # the default options alone would not have shown it
    model = _conformance._default_model(2, 3)
    one, four = (hz.detect(model, BatchDependentWithOption(), n_prompts=4, batch_size=b).to_frame() for b in (1, 4))
    assert abs(one["score"].to_numpy() - four["score"].to_numpy()).max() < 1e-6


def test_batch_size_invariance_of_a_batch_size_option():
    with pytest.raises(hz.ConformanceError, match="^batch_size_invariance: .*batch_size=1 and batch_size=4"):
        check_detector(BatchSizeOption)


# no_mutation ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WritesWeights(Constant):
    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return super().compute(model)


@dataclasses.dataclass(frozen=True)
class CountsCalls(Constant):
    calls: int = 0

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        object.__setattr__(self, "calls", self.calls + 1)
        return super().compute(model)


@dataclasses.dataclass(frozen=True)
class WritesTokens(Diagonal):
    def match(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens[:, -1] = tokens[:, 0]
        return super().match(tokens)


@dataclasses.dataclass(frozen=True)
class SwitchesToTrain(Constant):
    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        model.train()
        return super().compute(model)


@pytest.mark.parametrize(("cls", "fragment"), [
    (WritesWeights, "the model changed"),
    (CountsCalls, "detector instance changed"),
    (WritesTokens, "tokens"),
    (SwitchesToTrain, "training"),
])
def test_no_mutation(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^no_mutation: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


def test_a_changed_default_model_is_rebuilt_for_the_next_check():
    check_detector(Constant)
    before = {k: v[0] for k, v in _conformance._MODELS.items()}
    with pytest.raises(hz.ConformanceError, match="^no_mutation: "):
        check_detector(WritesWeights)
    after = {k: v[0] for k, v in _conformance._MODELS.items()}
    assert (2, 3) not in after  # the model it wrote into (the first) is dropped ...
    assert after[(3, 2)] is before[(3, 2)]  # ... the one it never reached is kept
    check_detector("previous_token")  # a fresh, unchanged model


# hooks_removed --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LeavesHook(Constant):
    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)  # TransformerLens' registry, never reset
        return super().compute(model)


@dataclasses.dataclass(frozen=True)
class CleansOnlyOnSuccess(Constant):
    """Runs the model with a hook it removes afterwards, but not in a ``finally``."""

    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        seen = []
        handle = model.hook_dict["blocks.0.attn.hook_pattern"].register_forward_hook(lambda m, i, o: seen.append(1))
        with torch.no_grad():
            model(torch.tensor([[0, 3, 4, 5, 3, 4]]))
        handle.remove()
        return super().compute(model)


@dataclasses.dataclass(frozen=True)
class SwallowsErrors(Constant):
    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        try:
            with torch.no_grad():
                model(torch.tensor([[0, 3, 4, 5, 3, 4]]))
        except Exception:  # noqa: BLE001, S110 - the very thing this detector is broken by
            pass
        return super().compute(model)


@pytest.mark.parametrize(("cls", "fragment"), [
    (LeavesHook, "TransformerLens fwd_hooks"),
    (CleansOnlyOnSuccess, "failure injected"),
    (SwallowsErrors, "swallowed"),
])
def test_hooks_removed(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^hooks_removed: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


def test_hooks_the_user_added_before_are_not_blamed_and_survive(demo_model):
    demo_model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
    try:
        check_detector("previous_token", model=demo_model, options={"n_prompts": 2})
        assert len(demo_model.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks) == 1
    finally:
        demo_model.reset_hooks()


# metadata_contract ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WrongMetadata(Constant):
    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "threshold": 0.9}


@dataclasses.dataclass(frozen=True)
class PartialOptions(Constant):
    window: int = 2

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale}


@dataclasses.dataclass(frozen=True)
class TensorMeta(Constant):
    def compute(self, model: Any, *, progress: bool | None = None, circuits: Any = None) -> hz.DetectorOutput:
        return hz.DetectorOutput({"score": self.scores(model)}, meta={"norms": torch.ones(3)})


@dataclasses.dataclass(frozen=True)
class NoReference(Constant):
    name = "no_reference_test"
    reference = ""


@pytest.mark.parametrize(("cls", "fragment"), [
    (WrongMetadata, "threshold"),
    (PartialOptions, "every option"),
    (TensorMeta, "JSON-ready"),
])
def test_metadata_contract(cls, fragment):
    with pytest.raises(hz.ConformanceError, match="^metadata_contract: ") as err:
        check_detector(cls)
    assert fragment in str(err.value)


@pytest.fixture
def clean_registry():
    _registry.registered_names()
    registry, sources = dict(_registry._REGISTRY), dict(_registry._SOURCES)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(registry)
    _registry._SOURCES.clear()
    _registry._SOURCES.update(sources)


def test_registered_detector_needs_a_reference(clean_registry):
    hz.register(NoReference)
    check_detector(NoReference, checks=["declared_fields"])  # declared fields alone allow it
    with pytest.raises(hz.ConformanceError, match="^metadata_contract: .*empty 'reference'"):
        check_detector("no_reference_test")


# determinism ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GlobalRandom(Constant):
    def scores(self, model: Any) -> torch.Tensor:
        return torch.rand(_shape(model), dtype=torch.float64)  # the global RNG: differs every call


def test_determinism():
    with pytest.raises(hz.ConformanceError, match="^determinism: .*torch.Generator"):
        check_detector(GlobalRandom)


# the interface --------------------------------------------------------------------------------------

def test_checks_and_options_are_validated():
    with pytest.raises(hz.InvalidOptionError, match="unknown rule"):
        check_detector(Constant, checks=["score_shapes"])
    with pytest.raises(hz.InvalidOptionError, match="unknown option"):
        check_detector(Constant, options={"scal": 2.0})
    with pytest.raises(hz.InvalidOptionError, match="rejects options"):
        check_detector("copy_suppression", options={"k": 0})
    with pytest.raises(hz.UnknownDetectorError):
        check_detector("previous_tokens")
    with pytest.raises(hz.UnsupportedModelError):
        check_detector(Constant, model=torch.nn.Linear(2, 2))


def test_checks_subset_and_report(capsys):
    report = check_detector(Diagonal(exclude_bos=True), checks=["declared_fields", "score_shape"], options={"n_prompts": 2})
    assert report.passed == ["declared_fields", "score_shape"]
    assert report.skipped == {r: "not in checks" for r in RULES[2:]}
    assert list(report.to_frame().columns) == ["rule", "status", "detail"]
    assert "diagonal_test" in repr(report) and "<table>" in report._repr_html_()
    with pytest.raises(hz.ConformanceError, match="^scores_finite: "):
        check_detector(Infinite, checks=["scores_finite"])


def test_options_reach_the_detector_and_the_probe():
    report = check_detector(Constant(scale=0.5), options={"scale": 0.25})
    assert report.detector == "constant_test"
    report = check_detector("induction", options={"copying": False, "n_prompts": 3, "batch_size": 3})
    assert "batch_size 1 vs 3" in _detail(report, "batch_size_invariance")
