"""Typed errors. Every message says what happened, why, and what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "HeadzooError",
    "UnknownDetectorError",
    "DuplicateDetectorError",
    "DetectorDefinitionError",
    "InvalidTokensError",
    "InvalidOptionError",
    "MissingHooksError",
    "UnsupportedModelError",
    "UnsupportedTokenizerError",
    "ModelNotFoundError",
    "DetectorNotApplicableError",
    "InvalidCacheError",
    "NonFiniteError",
    "InvalidScoresError",
    "EmptyResultError",
    "CorruptFileError",
    "ConformanceError",
]


class HeadzooError(Exception):
    """Base class of every error headzoo raises on purpose."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise print repr()
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' phrase, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class UnknownDetectorError(HeadzooError, KeyError):
    """A detector name that is not registered."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        available = sorted(available)
        super().__init__(
            f"No detector is registered under the name {name!r}.{did_you_mean(name, available)} "
            f"Available detectors: {', '.join(available) or '(none)'}. "
            "Add your own with @hz.register or hz.load_detectors(path)."
        )
        self.name = name
        self.available = available


class DuplicateDetectorError(HeadzooError, ValueError):
    """Registering a second detector under a name that is taken."""


class DetectorDefinitionError(HeadzooError, TypeError):
    """A detector class that does not declare what the registry needs."""


class InvalidTokensError(HeadzooError, ValueError):
    """Tokens that cannot be fed to the model (empty, not integers, too long, out of vocabulary)."""


class InvalidOptionError(HeadzooError, TypeError):
    """An option that no selected detector or probe understands, or a value of the wrong kind."""


class MissingHooksError(HeadzooError, KeyError):
    """A cache that lacks activations a detector needs."""


class UnsupportedModelError(HeadzooError, TypeError):
    """A model that does not offer what headzoo needs (config, hooks, readable attention)."""


class ModelNotFoundError(HeadzooError, LookupError):
    """A model name that is neither bundled nor loadable from the hub or a local path."""


class DetectorNotApplicableError(HeadzooError, ValueError):
    """A detector that cannot score this model (e.g. no ordinal task its tokenizer expresses)."""


class UnsupportedTokenizerError(DetectorNotApplicableError):
    """A tokenizer-aware detector given a model whose tokenizer it cannot read (none, whole-word
    vocabulary where pieces are needed, or an unknown piece convention)."""


class InvalidCacheError(HeadzooError, ValueError):
    """A cache that does not belong to the given tokens or model (or holds no attention patterns)."""


class NonFiniteError(HeadzooError, ValueError):
    """NaN or infinity in a model's weights, a pattern or a score, where a number was needed."""


class InvalidScoresError(HeadzooError, ValueError):
    """A detector returned scores of the wrong shape or type."""


class EmptyResultError(HeadzooError, ValueError):
    """A computation that scored nothing (no query had a matching key, no prompt long enough)."""


class CorruptFileError(HeadzooError, ValueError):
    """A saved result whose content does not match its checksum, or that is not a headzoo file."""


class ConformanceError(HeadzooError, AssertionError):
    """A detector that breaks a rule of :func:`headzoo.testing.check_detector`."""
