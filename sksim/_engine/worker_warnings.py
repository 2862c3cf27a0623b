"""Warnings of work done by joblib, raised again where it was asked for.

A worker process of ``n_jobs`` only prints its warnings. Recorded there and
raised again in the caller, they reach the caller's filters (the audit counts
them, ``pytest.warns`` sees them), whichever ``n_jobs``. Work done in the
caller's process (joblib's threads) raises them as it goes: recording them
there would swap the process's warning filters under the other threads,
which then lose theirs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

# Where warnings raised again are remembered, so that the default filter
# shows each once per location, as for warnings raised in the caller.
_REGISTRY: dict = {}


def recording_warnings(function: Callable) -> Callable[..., tuple[Any, list]]:
    """``function``, made to return its result and the warnings it raised.

    Made in the caller and sent to a joblib worker: ``recording_warnings(f)(*args)``
    returns ``(f(*args), raised)``. In another process the warnings are
    recorded, as ``(text, category, filename, lineno)`` tuples that pickle
    back (a warning's own arguments might not), for :func:`warn_again`; in
    the caller's process they are raised as usual and ``raised`` is empty.
    """
    return functools.partial(_recorded, function, os.getpid())


def _recorded(function: Callable, caller: int, *args: Any) -> tuple[Any, list]:
    if os.getpid() == caller:
        return function(*args), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args)
    return result, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def warn_again(raised: list) -> None:
    """Raise again, in the caller, the warnings :func:`recording_warnings` kept."""
    for message, category, filename, lineno in raised:
        warnings.warn_explicit(message, category, filename, lineno, registry=_REGISTRY)
