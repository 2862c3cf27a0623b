"""Non-finite outputs and gradients of the network, named by their rows.

:func:`check_finite_rows` raises :class:`NonFiniteNetworkError` for the first
rows of a batch that hold NaN or infinity; :func:`rows_of_reference` renames
the rows of a pass over the reference set, and
:meth:`NonFiniteNetworkError.moved` those of a part of larger inputs (a tile, a
chunk, a probe), as :func:`rows_of_part` does around a pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from .flags import block_move, flag_scope, moved_rows, name_rows


class NonFiniteNetworkError(ValueError):
    """The network's outputs or gradients hold NaN or infinity.

    Parameters
    ----------
    what : str
        What is not finite: ``"outputs"``, ``"gradients"``, a layer's
        representations.
    rows : list of int
        The first rows concerned.
    more : bool
        Whether more rows are.
    inputs : str, default="input"
        The inputs the rows belong to, as the message names them.
    """

    def __init__(self, what: str, rows: list, more: bool, inputs: str = "input"):
        self.what, self.rows, self.more, self.inputs = what, rows, more, inputs
        super().__init__(
            f"The network produced NaN or infinite {what} for "
            f"{name_rows(rows, more, inputs)}: what "
            "sksim computes from them would be meaningless. Check the network's "
            "weights (a diverged training, e.g. a learning rate too high) and "
            "these inputs (those of the first batch found to hold any: later "
            "batches may hold more)."
        )

    def __reduce__(self):
        return type(self), (self.what, self.rows, self.more, self.inputs)

    def moved(self, rows=None, inputs: str | None = None) -> NonFiniteNetworkError:
        """The error of the same rows, read among the ``rows`` of larger inputs.

        Parameters
        ----------
        rows : slice, ndarray or None, default=None
            The larger inputs' rows the failed pass read (of a slice, its start
            counts); None keeps the rows.
        inputs : str or None, default=None
            The name of those inputs; None keeps it.

        Returns
        -------
        NonFiniteNetworkError
            The error naming the rows of the larger inputs.
        """
        named = self.rows if rows is None else moved_rows(self.rows, rows).tolist()
        inputs = self.inputs if inputs is None else inputs
        return NonFiniteNetworkError(self.what, named, self.more, inputs)


REFERENCE_INPUTS = "the reference inputs (the X given to fit, or Y)"


@contextlib.contextmanager
def rows_of_reference(rows=None) -> Iterator[None]:
    """Name the rows of a :class:`NonFiniteNetworkError` as the reference's.

    For passes over the reference set while queries are read too. ``rows``
    (a slice or array) are the reference's rows the pass reads, when not all.
    The rows of dead or near-singular Grams found inside are named so too.
    """

    def move(inputs: str, named: np.ndarray) -> tuple[str, np.ndarray]:
        return REFERENCE_INPUTS, named if rows is None else moved_rows(named, rows)

    try:
        with flag_scope(move):
            yield
    except NonFiniteNetworkError as error:
        raise error.moved(rows, REFERENCE_INPUTS) from None


@contextlib.contextmanager
def rows_of_part(rows: slice) -> Iterator[None]:
    """Name the rows of errors and flags inside as the ``rows`` of larger inputs.

    For a pass over a chunk of the inputs, read a chunk at a time.
    """
    try:
        with flag_scope(block_move(rows)):
            yield
    except NonFiniteNetworkError as error:
        raise error.moved(rows) from None


def check_finite_rows(values: torch.Tensor, start: int, what: str) -> None:
    """Raise :class:`NonFiniteNetworkError` naming the first non-finite rows.

    ``values`` holds one row per sample on its first axis; ``start`` is the
    number of the first one.
    """
    if bool(torch.isfinite(values.sum())):
        return  # the fast common case
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    if not bool(bad.any()):
        return  # the sum overflowed; every value is finite
    rows = (torch.nonzero(bad).flatten()[:5] + start).tolist()
    raise NonFiniteNetworkError(what, rows, int(bad.sum()) > len(rows))
