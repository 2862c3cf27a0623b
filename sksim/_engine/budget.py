"""Shares of ``max_memory``: what an estimator keeps, and how many rows fit."""

from __future__ import annotations

KEPT_MEMORY = 1 / 3  # of max_memory: the engine's batches take one, the kept data two


def rows_that_fit(budget: float, row_bytes: float, n: int) -> int:
    """How many rows of ``row_bytes`` each fit in ``budget`` bytes.

    ``n`` at most (all ``n`` when ``budget`` is infinite), one at least.
    """
    return int(max(1, min(n, budget / max(row_bytes, 1))))


def left_beside(kept: float, max_memory: float) -> float:
    """What ``kept`` bytes leave of the two thirds of ``max_memory`` kept data take.

    Chunks of rows held beside the kept data take it; the engine's batches
    take the third one.
    """
    return 2 * KEPT_MEMORY * max_memory - kept


def check_kept_bytes(
    kept: float,
    max_memory: float,
    what: str,
    advice: str,
    error: type[MemoryError] = MemoryError,
) -> None:
    """Raise ``error`` when ``kept`` bytes pass two thirds of ``max_memory``.

    What an estimator keeps may take twice :data:`KEPT_MEMORY` of
    ``max_memory``: the engine's batches take the third one. ``what`` names
    the kept data (plural), ``advice`` says what to change.
    """
    limit = 2 * KEPT_MEMORY * max_memory
    if kept > limit:
        raise error(
            f"{what} take {readable_bytes(kept)}, more than the "
            f"{readable_bytes(limit)} they may take (two thirds of max_memory, "
            f"{max_memory} bytes; the batches take the third one): {advice}"
        )


def readable_bytes(n: float) -> str:
    """``n`` bytes in GiB, MiB or bytes, whichever shows it best."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size / 10:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} bytes"
