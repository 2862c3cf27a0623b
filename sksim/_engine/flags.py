"""Samples whose Jacobian Gram is zero or near-singular, warned about once.

A pass over inputs checks their Grams batch by batch and gathers the rows
found in a :class:`FlaggedRows`, which :meth:`~FlaggedRows.report` raises as
one warning per kind, naming the rows. Inside :func:`flag_scope` (a tile of a
kernel, a chunk of rows, a pass over the reference set) the rows are moved to
those of the larger inputs and gathered with the others: the outermost scope
warns once for all of them, each row counted once.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np


def name_rows(rows: list, more: bool, inputs: str = "input") -> str:
    """``"input rows [3, 7] and more"``, or ``"rows [3, 7] of <inputs>"``."""
    named = f"rows {rows}{' and more' if more else ''}"
    return f"input {named}" if inputs == "input" else f"{named} of {inputs}"


def moved_rows(named, rows) -> np.ndarray:
    """The rows ``named`` of a part of larger inputs, as rows of those inputs.

    ``rows`` are the larger inputs' rows the part holds: a slice (its start
    counts) or indices.
    """
    named = np.asarray(named, dtype=np.intp)
    if isinstance(rows, slice):
        return named + (rows.start or 0)
    return np.asarray(rows, dtype=np.intp)[named]


class DeadInputWarning(UserWarning):
    """Some samples have a zero gradient: their similarity is set to 0."""


class SingularJacobianGramWarning(UserWarning):
    """The d x d Gram ``J(x) J(x)^T`` of some sample is (near-)singular."""


def _message(category: type, count: int, named: str, checkpoints: int = 0) -> str:
    # the text before the first ": " is the same for every count but its number
    where = f" at some of the {checkpoints} checkpoints" if checkpoints > 1 else ""
    if category is DeadInputWarning:
        zero = (
            "at those checkpoints their similarity to every input is 0, and the "
            "average over the checkpoints counts the others only."
            if where
            else "their similarity to every input is set to 0."
        )
        return (
            f"{count} sample(s) have a zero gradient{where}: {named}. The network's "
            "output does not depend on the selected parameters there (e.g. dead "
            f"ReLUs): {zero}"
        )
    return (
        f"The Jacobian Gram J J^T is near-singular for {count} sample(s){where}: "
        f"{named}. "
        "Its eigenvalues below rtol times the largest are raised to it, and the "
        "cosine similarity of such a sample with itself is below 1 (0.9 for a "
        "softmax over 10 classes, one of whose 10 eigenvalues is 0): hard counts "
        "with a threshold above it miss the sample itself. Softmax "
        "or log-softmax outputs always cause this (the rows of their Jacobian sum "
        "to zero, weighted by the probabilities for log-softmax): "
        "compute similarities on logits, i.e. on a module without the final "
        "softmax, or pass output= a callable that selects the logits (where the "
        "module returns them too) or keeps d - 1 of the outputs "
        "(output=lambda out: out[:, :-1])."
    )


# Moves the rows of some inputs to those of larger ones:
# ``(inputs, rows) -> (inputs, rows)``, the inputs named as in the warnings.
Move = Callable[[str, np.ndarray], tuple[str, np.ndarray]]


def block_move(block: slice) -> Move:
    """The move of rows flagged in ``block`` of some inputs to rows of those inputs."""

    def move(inputs: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
        return inputs, rows + block.start if inputs == "input" else rows

    return move


class FlaggedRows:
    """Rows whose Gram is zero (dead) or was floored (near-singular), by inputs.

    ``checkpoints`` above 1: the rows were flagged at some of that many
    checkpoints of an averaged kernel, which the warnings say.
    """

    def __init__(self, checkpoints: int = 0):
        self._rows: dict[tuple[type, str], list[np.ndarray]] = {}
        self.checkpoints = checkpoints

    def add(self, dead: np.ndarray, singular: np.ndarray, rows) -> None:
        """Record the samples the masks flag, of ``rows`` (a slice or indices)."""
        if isinstance(rows, slice):
            rows = np.arange(len(dead)) + (rows.start or 0)
        flagged = {DeadInputWarning: dead, SingularJacobianGramWarning: singular}
        for category, mask in flagged.items():
            if mask.any():
                self._put(category, "input", np.asarray(rows)[mask])

    def _put(self, category: type, inputs: str, rows: np.ndarray) -> None:
        self._rows.setdefault((category, inputs), []).append(rows)

    def merge(self, other: FlaggedRows, move: Move | None = None) -> None:
        """Add the rows of ``other``, moved by ``move`` if given."""
        self.checkpoints = max(self.checkpoints, other.checkpoints)
        for (category, inputs), parts in other._rows.items():
            rows = np.concatenate(parts)
            self._put(category, *(move(inputs, rows) if move else (inputs, rows)))

    def report(self) -> None:
        """Hand the rows to the innermost :func:`flag_scope`, else warn."""
        scopes = _scopes()
        if scopes:
            scopes[-1].merge(self)
            return
        for (category, inputs), parts in self._rows.items():
            rows = np.unique(np.concatenate(parts))
            named = name_rows(rows[:5].tolist(), len(rows) > 5, inputs)
            text = _message(category, len(rows), named, self.checkpoints)
            warnings.warn(text, category, stacklevel=2)


_local = threading.local()


def _scopes() -> list[FlaggedRows]:
    if not hasattr(_local, "scopes"):
        _local.scopes = []
    return _local.scopes


@contextlib.contextmanager
def flag_scope(
    move: Move | None = None, report: bool = True, checkpoints: int = 0
) -> Iterator[FlaggedRows]:
    """Gather the rows reported inside, and report them once at the end.

    Parameters
    ----------
    move : callable or None, default=None
        ``(inputs, rows) -> (inputs, rows)``: the larger inputs' rows.
    report : bool, default=True
        Whether to report the rows at the end; if False, the caller takes
        them from the yielded :class:`FlaggedRows` (a tile of another
        process returns them), or drops them (a measurement on a few rows).
    checkpoints : int, default=0
        Above 1: the computations inside are those of that many checkpoints,
        whose rows are gathered and warned about once, as flagged at some.
    """
    found, scopes = FlaggedRows(checkpoints), _scopes()
    scopes.append(found)
    try:
        yield found
    finally:  # by identity: a scope opened in a generator may end out of order
        del scopes[next(i for i, s in enumerate(scopes) if s is found)]
    if report:
        moved = FlaggedRows()
        moved.merge(found, move)
        moved.report()
