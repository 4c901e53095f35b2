"""headzoo: what does each attention head of this model do?

``import headzoo as hz``; see ``hz.detect``, ``hz.list_detectors`` and ``hz.load_model``.
"""

from importlib import metadata as _metadata  # noqa: E402

# first, before any module imports tqdm.auto: without its ipywidgets warning
from headzoo import _quiet_import  # noqa: F401

# isort: split

from headzoo import (
    _probe_sequences,  # noqa: F401  (registers the random, long and n-gram probes)
    patching,  # noqa: E402  (the hz.patching namespace)
)
from headzoo._ablation import ablate, ablation_hooks
from headzoo._atlas import HeadAtlas, build_atlas
from headzoo._circuits import OVRanks, WeightCircuits, ov_copying_ratio, rank_cutoff
from headzoo._compare import AtlasComparison, compare_atlases
from headzoo._composition import CompositionScores, composition_scores
from headzoo._detector import (
    STAGES,
    Detector,
    DetectorOutput,
    Metrics,
    PatternDetector,
    PositionalDetector,
    WeightDetector,
)
from headzoo._effects import HeadEffects
from headzoo._embedding import EMBEDDING_VARIANTS, effective_embedding, embedding_metadata
from headzoo._errors import (
    ConformanceError,
    CorruptFileError,
    DetectorDefinitionError,
    DetectorNotApplicableError,
    DuplicateDetectorError,
    EmptyResultError,
    HeadzooError,
    InvalidCacheError,
    InvalidOptionError,
    InvalidScoresError,
    InvalidTokensError,
    MissingHooksError,
    ModelNotFoundError,
    NonFiniteError,
    UnknownDetectorError,
    UnsupportedModelError,
    UnsupportedTokenizerError,
)
from headzoo._examples import HeadExamples, head_examples
from headzoo._function_vectors import function_vector_effects
from headzoo._graph import HeadGraph, head_graph
from headzoo._icl_tasks import ICL_TASKS, ICLTask, icl_tasks
from headzoo._importance import HeadImportance, head_importance
from headzoo._ioi import IOIPrompts, ioi_prompts
from headzoo._literature import literature_agreement, published_heads
from headzoo._masking import MaskingCurve, retrieval_masking
from headzoo._memory import memory_plan
from headzoo._mod10 import Mod10Features, SuccessorEditing, mod10_features, successor_editing
from headzoo._models import ModelInfo, TransformerLensModel, model_info
from headzoo._needle import NeedleHaystack, NeedleRun, NeedleTrials, decode_needles
from headzoo._ordinal import NUMERIC_LISTS, ORDINAL_LISTS, OrdinalTask, numeric_tasks, ordinal_tasks, task_coverage
from headzoo._ordinal import as_tasks as as_ordinal_tasks
from headzoo._probe_text import TextProbe
from headzoo._probes import RepeatedTokens
from headzoo._registry import get_detector, list_detectors, load_detectors, register
from headzoo._relations import RelationList, RelationPairs, relation_lists, relation_pairs, relation_survival
from headzoo._results import HeadScores
from headzoo._runner import detect
from headzoo._succession import (
    SuccessionInContext,
    SuccessionPrompts,
    SuccessorTextEffects,
    succession_in_context,
    succession_prompts,
    successor_on_text,
)
from headzoo._sweep import Sweep, sweep
from headzoo._sweep_models import SweepModel
from headzoo._sweep_page import formation_steps, match_heads, sweep_figure
from headzoo._tokens import UnknownTokenWarning
from headzoo._viz import AttentionView, attention_view
from headzoo._vocab import VocabTables, token_counts, vocab_tables
from headzoo._zoo import list_models, load_model

try:  # the installed distribution's version, so it cannot drift from pyproject.toml
    __version__ = _metadata.version("headzoo")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "memory_plan",
    "UnknownTokenWarning",
    "STAGES",
    "Detector",
    "PatternDetector",
    "PositionalDetector",
    "WeightDetector",
    "DetectorOutput",
    "Metrics",
    "RepeatedTokens",
    "TextProbe",
    "VocabTables",
    "vocab_tables",
    "token_counts",
    "NeedleHaystack",
    "NeedleTrials",
    "NeedleRun",
    "decode_needles",
    "retrieval_masking",
    "MaskingCurve",
    "HeadScores",
    "HeadEffects",
    "HeadAtlas",
    "build_atlas",
    "AttentionView",
    "attention_view",
    "patching",
    "ablate",
    "ablation_hooks",
    "ModelInfo",
    "TransformerLensModel",
    "detect",
    "ov_copying_ratio",
    "effective_embedding",
    "embedding_metadata",
    "EMBEDDING_VARIANTS",
    "WeightCircuits",
    "OVRanks",
    "rank_cutoff",
    "ICLTask",
    "ICL_TASKS",
    "icl_tasks",
    "function_vector_effects",
    "composition_scores",
    "CompositionScores",
    "head_examples",
    "HeadExamples",
    "head_importance",
    "compare_atlases",
    "sweep",
    "Sweep",
    "SweepModel",
    "AtlasComparison",
    "formation_steps",
    "match_heads",
    "sweep_figure",
    "HeadImportance",
    "head_graph",
    "HeadGraph",
    "OrdinalTask",
    "ORDINAL_LISTS",
    "NUMERIC_LISTS",
    "ordinal_tasks",
    "numeric_tasks",
    "task_coverage",
    "as_ordinal_tasks",
    "mod10_features",
    "Mod10Features",
    "successor_editing",
    "SuccessorEditing",
    "SuccessionPrompts",
    "succession_prompts",
    "SuccessionInContext",
    "succession_in_context",
    "SuccessorTextEffects",
    "successor_on_text",
    "published_heads",
    "literature_agreement",
    "IOIPrompts",
    "ioi_prompts",
    "RelationList",
    "RelationPairs",
    "relation_lists",
    "relation_pairs",
    "relation_survival",
    "get_detector",
    "list_detectors",
    "list_models",
    "load_detectors",
    "load_model",
    "model_info",
    "register",
    "HeadzooError",
    "DetectorDefinitionError",
    "DetectorNotApplicableError",
    "DuplicateDetectorError",
    "InvalidOptionError",
    "InvalidTokensError",
    "MissingHooksError",
    "ModelNotFoundError",
    "UnknownDetectorError",
    "UnsupportedModelError",
    "UnsupportedTokenizerError",
    "ConformanceError",
    "CorruptFileError",
    "EmptyResultError",
    "InvalidCacheError",
    "InvalidScoresError",
    "NonFiniteError",
]
