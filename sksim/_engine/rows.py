"""Rows of the scalar cosine kernel against a reference set, in bounded memory.

Shared by the density estimator and the nearest-neighbour search: exact rows
of the scalar cosine kernel, or approximate rows from projected,
unit-normalised gradient features.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .features import gradient_features
from .gram import GramReference
from .jacobian import JacobianEngine

MAX_BLOCK_ENTRIES = 2**22  # similarities held at once by the sketched path


def cosine_rows(
    engine: JacobianEngine, Y, X=None, rtol: float = 1e-5
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, k)``: exact ``k^C(x_i, y_j)`` of shape ``(b, m)``.

    ``X=None`` takes the reference set ``Y`` itself as the queries.
    """
    reference = GramReference(engine, Y, kind="cosine", rtol=rtol)
    blocks = reference.self_rows() if X is None else reference.rows(X)
    for rows, k, _ in blocks:
        yield rows, k


def sketch_features(
    engine: JacobianEngine, X, n_components: int, seed: int, rtol: float = 1e-5
) -> np.ndarray:
    """Projected whitened Jacobians, flattened and scaled to unit norm.

    Returns a float32 array ``(n, d * n_components)`` whose inner products
    estimate the cosine kernel ``tr(A(x) A(y)^T) / d`` (``|A|_F^2 = d``);
    normalising makes the self-similarity exactly 1. Dead inputs stay zero.
    The same ``seed`` must be used for queries and reference.
    """
    F = gradient_features(engine, X, n_components, True, seed, rtol)
    F = F.reshape(len(F), -1)  # a fresh array: normalised in place
    norms = np.sqrt(np.einsum("ij,ij->i", F, F))[:, None]
    return np.divide(F, norms, out=F, where=norms > 0)


def sketch_rows(F: np.ndarray, F_ref: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, F[rows] @ F_ref.T)`` in blocks of bounded size."""
    step = max(1, MAX_BLOCK_ENTRIES // max(len(F_ref), 1))
    for start in range(0, len(F), step):
        rows = slice(start, min(start + step, len(F)))
        yield rows, (F[rows] @ F_ref.T).astype(np.float64)
