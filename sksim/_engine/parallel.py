"""Kernels as independent tiles, for joblib (and so dask.distributed).

Each tile ``K(X[rows], Y[cols])`` recomputes the pieces of both of its blocks,
so tiles share nothing and can run in other processes or on other machines:
``joblib.parallel_config(backend="dask")`` sends them to a dask cluster. Tiles
are idempotent: those lost with a worker are computed again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np

from .gram import GramReference
from .inputs import n_samples, take
from .jacobian import JacobianEngine

DEFAULT_TILE = 1024
# Times the tiles still missing are submitted again after a lost worker.
LOST_WORKER_RETRIES = 2

Tile = tuple[int, int, int, int]  # first and last + 1 row, first and last + 1 column


def _tile(
    where: Tile, engine: JacobianEngine, X, Y, kind: str, full: bool, rtol: float
) -> tuple[Tile, np.ndarray]:
    """``where`` and its block ``K(X, Y)``; ``X=None`` for the symmetric ``K(Y, Y)``."""
    return where, GramReference(engine, Y, kind, full, rtol).matrix(X)


def _tiles(n: int, m: int, size: int, mirror: bool) -> list[Tile]:
    """The tiles to compute: with ``mirror``, those on and above the diagonal."""
    return [
        (i, min(i + size, n), j, min(j + size, m))
        for i in range(0, n, size)
        for j in range(0, m, size)
        if not (mirror and j < i)
    ]


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    """The float64 output, allocated before any tile is computed."""
    try:
        return np.empty(shape)
    except MemoryError as error:
        gib = 8 * np.prod(shape, dtype=float) / 2**30
        lower = "pass fewer samples (X, Y)"
        if len(shape) == 4:
            lower += ", reduce='trace' rather than (d, d) blocks, or fewer outputs"
        raise MemoryError(
            f"The kernel of shape {shape} takes {gib:.3g} GiB of float64, which "
            f"cannot be allocated: {lower}."
        ) from error


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Errors of a tile lost with its worker, for the backends loaded."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return ()
    # data that joblib scattered to a worker dies with it, and the tiles that
    # needed it are cancelled ("already forgotten") instead of rescheduled
    from distributed.client import FutureCancelledError

    return (FutureCancelledError,)


def _computed(
    engine, X, Y, tiles: list[Tile], kind, full, rtol, n_jobs, mirror
) -> Iterator[tuple[Tile, np.ndarray]]:
    """``(tile, block)`` pairs in the order in which the tiles finish."""
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    return parallel(
        delayed(_tile)(
            (i0, i1, j0, j1),
            engine,
            None if (mirror and i0 == j0) else take(X, slice(i0, i1)),
            take(Y, slice(j0, j1)),
            kind,
            full,
            rtol,
        )
        for i0, i1, j0, j1 in tiles
    )


def _place(out: np.ndarray, tile: Tile, block: np.ndarray, mirror: bool) -> None:
    i0, i1, j0, j1 = tile
    out[i0:i1, j0:j1] = block
    if mirror and i0 != j0:
        out[j0:j1, i0:i1] = block.transpose((1, 0, 3, 2) if out.ndim == 4 else (1, 0))


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
    symmetric. The output is allocated first (a ``MemoryError`` says what to
    lower) and each tile is written into it as it arrives. Tiles lost with a
    ``dask.distributed`` worker are submitted again, up to
    ``LOST_WORKER_RETRIES`` times.
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    n, m = n_samples(X), n_samples(Y)
    d = engine.n_outputs(X) if full else None
    out = _empty((n, m, d, d) if full else (n, m))
    mirror = symmetric and kind != "influence"
    missing = _tiles(n, m, tile, mirror)
    for attempt in range(LOST_WORKER_RETRIES + 1):
        done = set()
        try:
            for where, block in _computed(
                engine, X, Y, missing, kind, full, rtol, n_jobs, mirror
            ):
                _place(out, where, block, mirror)
                done.add(where)
            return out
        except _lost_worker_errors():
            if attempt == LOST_WORKER_RETRIES:
                raise
            missing = [t for t in missing if t not in done]


def split_rows(function: Callable, X, n_jobs=None) -> np.ndarray:
    """``function(X)`` computed on contiguous chunks of rows through joblib.

    With ``n_jobs`` None or 1 the function runs once, in process; otherwise the
    rows are cut into ``n_jobs`` chunks (``-1``: one per CPU) handed to
    :class:`joblib.Parallel`, so ``joblib.parallel_config(backend="dask")``
    spreads them over a cluster. Results are concatenated along axis 0.
    """
    from joblib import Parallel, delayed, effective_n_jobs

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
