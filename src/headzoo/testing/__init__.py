"""Test builders: small TransformerLens models whose heads are known by construction, and the
conformance suite every detector must pass.

Use them to check that a detector finds the head it is meant to find::

    from headzoo.testing import planted_model
    model = planted_model(previous_token=(0, 2), induction=(1, 3))
    scores = hz.detect(model, "induction")
    assert scores.top(1, "induction")[["layer", "head"]].values.tolist() == [[1, 3]]

and that it keeps the rules the runner relies on::

    from headzoo.testing import check_detector
    check_detector(MyDetector)  # raises hz.ConformanceError naming the first broken rule
"""

from headzoo.testing._conformance import (
    RULES,
    ConformanceReport,
    RuleResult,
    check_detector,
)
from headzoo.testing._function_vector import (
    FUNCTION_VECTOR_SEPARATOR,
    function_vector_model,
    function_vector_placements,
)
from headzoo.testing._ioi import IOI_ROLES, ioi_model, ioi_placements, ioi_vocabulary
from headzoo.testing._planted import (
    PlantSpec,
    TokenFeatures,
    features_from_tokenizer,
    planted_model,
    planted_state_dict,
    random_placements,
)
from headzoo.testing._successor import successor_model, successor_placements
from headzoo.testing._tokenizer import bpe_tokenizer, sentencepiece_tokenizer, word_tokenizer, wordpiece_tokenizer

__all__ = [
    "FUNCTION_VECTOR_SEPARATOR",
    "function_vector_model",
    "function_vector_placements",
    "IOI_ROLES",
    "RULES",
    "ConformanceReport",
    "PlantSpec",
    "RuleResult",
    "TokenFeatures",
    "bpe_tokenizer",
    "check_detector",
    "features_from_tokenizer",
    "ioi_model",
    "ioi_placements",
    "ioi_vocabulary",
    "planted_model",
    "planted_state_dict",
    "random_placements",
    "sentencepiece_tokenizer",
    "successor_model",
    "successor_placements",
    "word_tokenizer",
    "wordpiece_tokenizer",
]
