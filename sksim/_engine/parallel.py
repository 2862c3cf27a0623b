"""Work cut into independent tiles, for joblib (and so dask.distributed).

:func:`run_tiles` runs tiles and places each result as it arrives;
:func:`tiled_kernel` cuts a kernel into blocks, :func:`split_rows` any row-wise
function into chunks of rows. A kernel tile ``K(X[rows], Y[cols])`` recomputes
the pieces of both of its blocks, so tiles share nothing and can run in other
processes or on other machines: ``joblib.parallel_config(backend="dask")``
sends them to a dask cluster. Tiles are idempotent: those lost with a worker
are computed again.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Callable, Hashable

import numpy as np

from .finite import REFERENCE_INPUTS, NonFiniteNetworkError
from .flags import flag_scope, moved_rows
from .gram import GramReference, bounded_by_diagonal
from .inputs import n_samples, take
from .jacobian import JacobianEngine
from .worker_warnings import recording_warnings, warn_again

DEFAULT_TILE = 1024
# Times the tiles still missing are submitted again after a lost worker.
LOST_WORKER_RETRIES = 2

Tile = tuple[int, int, int, int]  # first and last + 1 row, first and last + 1 column


def _tile(recorded: Callable, where: Hashable, *args) -> tuple:
    """``where``, ``function(*args)``, its warnings and its flagged rows.

    Wherever joblib sends it: ``recorded`` is :func:`recording_warnings` of the
    function; the rows of dead or near-singular Grams come back to be
    reported once for all tiles.
    """
    with flag_scope(report=False) as found:
        result, raised = recorded(*args)
    return where, result, raised, found


def _block(
    engine: JacobianEngine,
    X,
    Y,
    kind: str,
    full: bool,
    rtol: float,
    starts: tuple[int, int],
    symmetric: bool,
):
    """The block ``K(X, Y)``; ``X=None`` for the symmetric ``K(Y, Y)``.

    ``starts`` are the first rows of ``X`` and ``Y`` in the whole inputs, which
    a :class:`NonFiniteNetworkError` and the rows of dead or near-singular
    Grams are named by; the reference ``Y`` is named as such unless the
    kernel is ``symmetric``.
    """

    def whole(inputs: str) -> tuple[slice, str]:
        """The whole inputs' rows the block's ``inputs`` start at, and their name."""
        in_y = inputs == REFERENCE_INPUTS
        start = starts[1] if in_y or X is None else starts[0]
        named = REFERENCE_INPUTS if in_y and not symmetric else "input"
        return slice(start, None), named

    def move(inputs: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
        start, inputs = whole(inputs)
        return inputs, moved_rows(rows, start)

    try:
        with flag_scope(move):
            return GramReference(engine, Y, kind, full, rtol, named=True).matrix(X)
    except NonFiniteNetworkError as error:
        raise error.moved(*whole(error.inputs)) from None


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


def run_tiles(
    function: Callable,
    tiles: list[Hashable],
    arguments: Callable,
    place: Callable,
    n_jobs: int | None,
) -> None:
    """``place(tile, function(*arguments(tile)))`` for every tile, through joblib.

    The tiles run as ``joblib.Parallel(n_jobs)`` tasks and each result is placed
    as soon as it arrives, in any order, its warnings raised again here (a
    worker process only prints them; a warning that several tiles raise, as
    each plans the network again, once), and the rows of dead or near-singular
    Grams of all tiles are reported once. Tiles lost with a ``dask.distributed``
    worker are submitted again, up to ``LOST_WORKER_RETRIES`` times.
    """
    from joblib import Parallel, delayed

    missing, recorded = list(tiles), recording_warnings(function)
    if missing:
        _check_dask_pickles(arguments, missing[0], n_jobs)
    seen = set()
    for attempt in range(LOST_WORKER_RETRIES + 1):
        done = set()
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        try:
            with flag_scope() as found:
                for where, result, raised, flagged in parallel(
                    delayed(_tile)(recorded, where, *arguments(where))
                    for where in missing
                ):
                    warn_again([w for w in raised if w[:2] not in seen])
                    seen.update(w[:2] for w in raised)
                    found.merge(flagged)
                    place(where, result)
                    done.add(where)
            return
        except _lost_worker_errors():
            if attempt == LOST_WORKER_RETRIES:
                raise
            missing = [t for t in missing if t not in done]
        except pickle.PicklingError as error:
            raise _not_pickled(n_jobs, _pickling_reason(error)) from error


def _not_pickled(n_jobs, reason: str) -> TypeError:
    """The error of tiles that cannot be sent to worker processes, for ``reason``."""
    return TypeError(
        f"n_jobs={n_jobs} sends the network and the inputs to worker "
        "processes, which needs them to pickle, and one does not "
        f"({reason}): leave n_jobs=None."
    )


def _check_dask_pickles(arguments: Callable, tile: Hashable, n_jobs) -> None:
    """Under joblib's dask backend, pickle ``arguments(tile)`` here first.

    dask logs the error of a task that does not pickle and drops it: the
    tiles would be waited for without end.
    """
    from joblib import effective_n_jobs
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    if (
        type(backend).__name__ != "DaskDistributedBackend"
        or effective_n_jobs(n_jobs) == 1
    ):
        return  # a single job runs in the caller, unpickled
    import cloudpickle  # dask's own pickler, installed with it

    try:
        cloudpickle.dump(arguments(tile), _Discarded())
    except Exception as error:  # whatever the pickler meets
        raise _not_pickled(n_jobs, f"{type(error).__name__}: {error}") from error


class _Discarded:
    """A file that keeps nothing of what is written to it."""

    def write(self, data) -> int:
        return memoryview(data).nbytes  # a large array comes as a PickleBuffer


def _pickling_reason(error: pickle.PicklingError) -> str:
    """What the pickler met, in a sentence: the error it raised, or joblib's.

    joblib's feeder thread chains it, or the traceback of it as text.
    """
    for cause in (error.__context__, error.__cause__):
        lines = str(cause or "").strip().splitlines()
        raised = [
            line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)
        ]
        if raised or lines:
            reason = raised[0].split(": ", 1)[1] if raised else lines[0]
            return reason.split(". ")[0].rstrip(".:")
    return str(error).rstrip(".")


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
    symmetric, its diagonal exact and its cosines bounded by it as
    :meth:`~.gram.GramReference.matrix` makes them. The output is allocated
    first (a ``MemoryError`` says what to lower) and each tile is written
    into it as it arrives. Tiles lost with a ``dask.distributed`` worker are
    submitted again, up to ``LOST_WORKER_RETRIES`` times.
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    n, m = n_samples(X), n_samples(Y)
    d = engine.n_outputs(X) if full else None
    out = _empty((n, m, d, d) if full else (n, m))
    mirror = symmetric and kind != "influence"

    def arguments(where: Tile) -> tuple:
        i0, i1, j0, j1 = where
        left = None if (symmetric and i0 == j0) else take(X, slice(i0, i1))
        right = take(Y, slice(j0, j1))
        return engine, left, right, kind, full, rtol, (i0, j0), symmetric

    def place(where: Tile, block: np.ndarray) -> None:
        i0, i1, j0, j1 = where
        out[i0:i1, j0:j1] = block
        if mirror and i0 != j0:
            out[j0:j1, i0:i1] = block.transpose((1, 0, 3, 2) if full else (1, 0))

    run_tiles(_block, _tiles(n, m, tile, mirror), arguments, place, n_jobs)
    if symmetric and kind == "cosine" and not full:  # across tiles too
        bounded_by_diagonal(out, engine.max_memory / 3)
    return out


def _chunk(function: Callable, start: int, X):
    """``function(X)`` of the chunk of rows of larger inputs from ``start``.

    A :class:`NonFiniteNetworkError` and the rows of dead or near-singular
    Grams are named by the larger inputs' rows.
    """

    def move(inputs: str, rows: np.ndarray) -> tuple[str, np.ndarray]:
        if inputs == REFERENCE_INPUTS:  # not of the chunk
            return inputs, rows
        return inputs, rows + start

    try:
        with flag_scope(move):
            return function(X)
    except NonFiniteNetworkError as error:
        if error.inputs == REFERENCE_INPUTS:  # not of the chunk
            raise
        raise error.moved(slice(start, None)) from None


def split_rows(function: Callable, X, n_jobs=None) -> np.ndarray:
    """``function(X)`` computed on contiguous chunks of rows through joblib.

    With ``n_jobs`` None or 1 the function runs once, in process; otherwise the
    rows are cut into ``n_jobs`` chunks (``-1``: one per CPU) handed to
    :class:`joblib.Parallel`, so ``joblib.parallel_config(backend="dask")``
    spreads them over a cluster. Results are concatenated along axis 0 (each
    part of a tuple of results along its own). Chunks lost with a
    ``dask.distributed`` worker are computed again, as in :func:`tiled_kernel`.
    """
    from joblib import effective_n_jobs

    if n_jobs in (None, 1):
        return function(X)
    n = n_samples(X)
    n_chunks = max(1, min(n, effective_n_jobs(n_jobs)))
    bounds = np.linspace(0, n, n_chunks + 1).astype(int).tolist()
    chunks = list(zip(bounds, bounds[1:], strict=False))
    done = {}

    def arguments(rows: tuple[int, int]) -> tuple:
        return function, rows[0], take(X, slice(*rows))

    run_tiles(_chunk, chunks, arguments, done.__setitem__, n_jobs)
    parts = [done[rows] for rows in chunks]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return np.concatenate(parts)
