"""Importing headzoo prints nothing: ``tqdm.auto`` is imported here first, without its warning.

Inside a Jupyter kernel without ipywidgets, importing ``tqdm.auto`` warns ("IProgress not
found. Please update jupyter and ipywidgets") and falls back to text bars. headzoo's modules
import it at import time for their progress bars, so ``import headzoo`` would print that
warning. Here the first import runs with that one warning silenced; the fallback is the same
(text bars in that kernel, widget bars where ipywidgets is installed, text bars in a
terminal), and a user who imported ``tqdm.auto`` before headzoo saw tqdm's warning from their
own import, not from ours.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # TqdmWarning is what tqdm.autonotebook warns with; it lives in tqdm.std, which imports
    # nothing from IPython, so importing it first warns about nothing.
    from tqdm.std import TqdmExperimentalWarning, TqdmWarning

    warnings.simplefilter("ignore", TqdmWarning)
    warnings.simplefilter("ignore", TqdmExperimentalWarning)
    import tqdm.auto  # noqa: F401
