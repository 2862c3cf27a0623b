"""Kernels as independent tiles, for joblib (and so dask.distributed).

Each tile ``K(X[rows], Y[cols])`` recomputes the pieces of both of its blocks,
so tiles share nothing and can run in other processes or on other machines:
``joblib.parallel_config(backend="dask")`` sends them to a dask cluster.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

from .gram import GramReference
from .inputs import n_samples, take
from .jacobian import JacobianEngine

DEFAULT_TILE = 1024


def _tile(engine: JacobianEngine, X, Y, kind: str, full: bool, rtol: float):
    reference = GramReference(engine, Y, kind, full, rtol)
    return reference.matrix(None if X is None else X)


def tiled_kernel(
    engine: JacobianEngine,
    X,
    Y=None,
    kind: str = "cosine",
    full: bool = False,
    rtol: float = 1e-5,
    n_jobs: int | None = None,
    tile: int = DEFAULT_TILE,
) -> np.ndarray:
    """``K(X, Y)`` assembled from tiles computed by ``joblib.Parallel(n_jobs)``.

    With ``Y=None`` only the tiles on and above the diagonal are computed (all of
    them for the asymmetric ``influence`` kernel) and the result is exactly
    symmetric.
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    n, m = n_samples(X), n_samples(Y)
    rows = [slice(i, min(i + tile, n)) for i in range(0, n, tile)]
    cols = [slice(j, min(j + tile, m)) for j in range(0, m, tile)]
    mirror = symmetric and kind != "influence"
    tasks = [
        (r, c)
        for i, r in enumerate(rows)
        for j, c in enumerate(cols)
        if not (mirror and j < i)
    ]
    blocks = Parallel(n_jobs=n_jobs)(
        delayed(_tile)(
            engine,
            None if (mirror and r == c) else take(X, r),
            take(Y, c),
            kind,
            full,
            rtol,
        )
        for r, c in tasks
    )
    d = blocks[0].shape[-1] if full else None
    out = np.empty((n, m, d, d) if full else (n, m))
    for (r, c), block in zip(tasks, blocks, strict=True):
        out[r, c] = block
        if mirror and r != c:
            out[c, r] = block.transpose((1, 0, 3, 2) if full else (1, 0))
    return out


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
