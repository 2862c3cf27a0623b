"""Rows of the scalar cosine kernel against a reference set, in bounded memory.

Shared by the density estimator and the nearest-neighbour search: exact rows
of the engine's scalar cosine kernel (SPEC 1.1), or approximate rows from projected,
unit-normalised gradient features, and a joblib split of the query rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from ._engine.features import gradient_features
from ._engine.gram import GramReference
from ._engine.inputs import n_samples, take
from ._engine.jacobian import JacobianEngine

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
    F = F.reshape(len(F), -1)
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return np.divide(F, norms, out=np.zeros_like(F), where=norms > 0)


def sketch_rows(F: np.ndarray, F_ref: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, F[rows] @ F_ref.T)`` in blocks of bounded size."""
    step = max(1, MAX_BLOCK_ENTRIES // max(len(F_ref), 1))
    for start in range(0, len(F), step):
        rows = slice(start, min(start + step, len(F)))
        yield rows, (F[rows] @ F_ref.T).astype(np.float64)


def split_rows(function: Callable, X, n_jobs=None) -> np.ndarray:
    """``function(X)`` computed on contiguous chunks of rows through joblib.

    With ``n_jobs`` None or 1 the function runs once, in process; otherwise the
    rows are cut into ``n_jobs`` chunks (``-1``: one per CPU) handed to
    :class:`joblib.Parallel`, so ``joblib.parallel_config(backend="dask")``
    spreads them over a cluster. Results are concatenated along axis 0.
    """
    if n_jobs in (None, 1):
        return function(X)
    n = n_samples(X)
    n_chunks = max(1, min(n, effective_n_jobs(n_jobs)))
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    chunks = [take(X, slice(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    parts = Parallel(n_jobs=n_jobs)(delayed(function)(chunk) for chunk in chunks)
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return np.concatenate(parts)
