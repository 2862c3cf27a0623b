"""Warnings of work done by joblib, raised again where it was asked for.

A worker process of ``n_jobs`` only prints its warnings. Recorded there and
raised again in the caller, they reach the caller's filters (the audit counts
them, ``pytest.warns`` sees them), whichever ``n_jobs``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

# Where warnings raised again are remembered, so that the default filter
# shows each once per location, as for warnings raised in the caller.
_REGISTRY: dict = {}


def recording_warnings(function: Callable, *args: Any) -> tuple[Any, list]:
    """``function(*args)`` and the warnings it raised, for :func:`warn_again`.

    The warnings are ``(text, category, filename, lineno)`` tuples, which
    pickle back from a worker process (a warning's own arguments might not).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args)
    return result, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def warn_again(raised: list) -> None:
    """Raise again, in the caller, the warnings :func:`recording_warnings` kept."""
    for message, category, filename, lineno in raised:
        warnings.warn_explicit(message, category, filename, lineno, registry=_REGISTRY)
