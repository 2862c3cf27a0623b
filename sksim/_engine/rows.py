"""Rows of the scalar cosine kernel against a reference set, in bounded memory.

Shared by the density estimator and the nearest-neighbour search: exact rows
of the scalar cosine kernel, or approximate rows from projected,
unit-normalised gradient features; the exact neighbours of a few queries
gathered while the features of the reference set are computed; and exact
similarities of chosen candidates, from whitened pieces kept during that pass
or computed again for the candidates alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .budget import rows_that_fit
from .features import gradient_features
from .finite import rows_of_reference
from .flags import FlaggedRows, block_move, flag_scope
from .gram import GramReference
from .inputs import n_samples, take
from .jacobian import JacobianEngine
from .pieces import nbytes_of, rectangular_pairs
from .sketch import shared_sketches

MAX_BLOCK_ENTRIES = 2**22  # similarities held at once by the sketched path
SIMILARITY_BYTES = 12  # a sketched similarity: the float32 product and its float64 copy
TAKE_ROWS = 16384  # reference rows read at a time for streamed similarities


def cosine_rows(
    engine: JacobianEngine, Y, X=None, rtol: float = 1e-5, copies: int = 1
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, k)``: exact ``k^C(x_i, y_j)`` of shape ``(b, m)``.

    ``X=None`` takes the reference set ``Y`` itself as the queries. A block,
    with the caller's copies of it (``copies`` arrays in all), takes at most
    a third of the engine's ``max_memory``.
    """
    reference = GramReference(engine, Y, "cosine", rtol=rtol, named=X is not None)
    blocks = reference.self_rows(copies) if X is None else reference.rows(X, copies)
    for rows, k, _ in blocks:
        yield rows, k


def top_k(k: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``n_neighbors`` entries of each row, sorted by decreasing value.

    Ties are broken by the smaller column index, as a stable sort would.
    """
    if n_neighbors < k.shape[1]:  # torch's selection: ~15 times numpy's argpartition
        found = torch.topk(torch.from_numpy(k), n_neighbors, dim=1, sorted=False)
        part = found.indices.numpy()
        part.sort(axis=1)
        # where entries equal to the k-th largest were left out, keep the first
        # ones, as a stable sort would
        kept = np.take_along_axis(k, part, axis=1)
        last = kept.min(axis=1, keepdims=True)
        tied = np.flatnonzero((k == last).sum(1) > (kept == last).sum(1))
        stable = np.argsort(-k[tied], axis=1, kind="stable")[:, :n_neighbors]
        part[tied] = np.sort(stable, axis=1)
    else:
        part = np.broadcast_to(np.arange(k.shape[1]), k.shape).copy()
    values = np.take_along_axis(k, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (
        np.take_along_axis(values, order, axis=1),
        np.take_along_axis(part, order, axis=1),
    )


class ExactNeighbors:
    """Exact cosine neighbours of queries ``Q``, gathered batch by batch.

    Called with the rows and whitened pieces of each batch of a reference
    set (as ``engine.mapped_pieces(Y, -0.5, rtol)`` yields them, e.g. through
    the ``each_batch`` of :func:`sketch_features`), it keeps the
    ``n_neighbors`` reference examples of each query most similar so far:
    memory ``O(n_queries n_neighbors)``, whatever the size of the reference.
    The queries' whitened pieces are kept in blocks that fit in
    ``max_memory`` bytes (None: the engine's). The first block meets the
    batches of the reference as they come; each further one takes a pass of
    its own over the reference (:meth:`finish`), where computing the queries
    again for every batch would take a pass over them per batch.

    Attributes
    ----------
    blocks : list of slice
        The blocks of query rows.
    similarities, indices : ndarray of shape (n_queries, n_neighbors)
        Cosine similarities in decreasing order and reference rows, once
        every block has seen the whole reference set.
    """

    def __init__(
        self,
        engine: JacobianEngine,
        Q,
        n_neighbors: int,
        rtol: float,
        max_memory: float | None = None,
    ):
        self.engine, self.Q, self.rtol = engine, Q, rtol
        self.n_neighbors = n_neighbors
        n = n_samples(Q)
        budget = engine.max_memory if max_memory is None else max_memory
        step = rows_that_fit(budget, whitened_bytes(engine, Q, rtol), n)
        self.blocks = [slice(i, min(i + step, n)) for i in range(0, n, step)]
        self.similarities = np.full((n, n_neighbors), -np.inf)
        self.indices = np.full((n, n_neighbors), -1, dtype=np.intp)
        self._first = self._block_queries(self.blocks[0])

    def _block_queries(self, block: slice) -> GramReference:
        """The queries of ``block``, their whitened pieces kept."""
        Q = take(self.Q, block)
        return GramReference(
            self.engine, Q, kind="cosine", rtol=self.rtol, max_memory=float("inf")
        )

    def __call__(self, rows: slice, pieces: list) -> None:
        """Gather the first block's neighbours in one batch of the reference."""
        self._gather(self.blocks[0], self._first, rows, pieces)

    def finish(self, Y) -> None:
        """Gather the other blocks' neighbours, in a pass over ``Y`` each."""
        self._first = None  # the first block is done: its pieces are released
        for block in self.blocks[1:]:
            queries = self._block_queries(block)
            with rows_of_reference():
                for rows, pieces, _ in self.engine.mapped_pieces(Y, -0.5, self.rtol):
                    self._gather(block, queries, rows, pieces)
            del queries  # freed before the next block's are computed

    def _gather(self, block: slice, queries, rows: slice, pieces: list) -> None:
        k = queries.rows_of(pieces).T  # symmetric: k(q, y) = k(y, q)
        reference_rows = np.broadcast_to(np.arange(rows.start, rows.stop), k.shape)
        values = np.concatenate([self.similarities[block], k], axis=1)
        columns = np.concatenate([self.indices[block], reference_rows], axis=1)
        self.similarities[block], order = top_k(values, self.n_neighbors)
        self.indices[block] = np.take_along_axis(columns, order, axis=1)


def whitened_bytes(engine: JacobianEngine, X, rtol: float) -> int:
    """Bytes of one sample's whitened pieces, measured on the first sample of ``X``.

    The pieces' shapes, not their values, set their size: one sample measures
    it for all of a fixed-size input, without a batch's pass.
    """
    first = take(X, slice(0, 1))
    _, pieces, _ = next(engine.mapped_pieces(first, -0.5, rtol, progress=False))
    return nbytes_of(pieces)


def candidate_similarities(
    left: list, right: list, columns: np.ndarray, max_memory: float
) -> np.ndarray:
    """Exact ``k^C(x_i, y_j)`` for each ``j`` of ``columns[i]``, float32 ``(b, c)``.

    ``left`` and ``right`` are whitened pieces of the queries and of the
    reference set (as :class:`~.pieces.KeptPieces` keeps them); each row of
    ``columns`` must be sorted. The pairing's intermediates take a third of
    ``max_memory`` at most.
    """
    device = left[0].signal.device
    columns = torch.as_tensor(columns, dtype=torch.int64, device=device)
    rows, flat = rectangular_pairs(columns)
    pairs = pair_similarities(left, right, rows, flat, max_memory)
    return pairs.reshape(columns.shape)


def pair_similarities(
    left: list,
    right: list,
    rows: torch.Tensor,
    columns: torch.Tensor,
    max_memory: float,
) -> np.ndarray:
    """Exact ``k^C`` of the pairs ``(rows[p], columns[p])``, float32 ``(P,)``.

    Rows of the whitened pieces ``left`` and ``right``, in the order of
    :func:`~.pieces.pair_products`; the pairing's intermediates take a third
    of ``max_memory`` at most.
    """
    total = sum(
        p.paired(q, rows, columns, max_memory) for p, q in zip(left, right, strict=True)
    )
    cosines = (total / left[0].signal.shape[1]).clamp_(-1.0, 1.0)  # rounding
    return cosines.float().cpu().numpy()


def streamed_similarities(
    engine: JacobianEngine, Y, runs: list, columns: np.ndarray, rtol: float
) -> np.ndarray:
    """:func:`candidate_similarities` against a reference set not kept in memory.

    ``runs``: the queries' whitened pieces, as the runs of
    :class:`~.pieces.KeptPieces` (rows of one form each). The whitened pieces
    of the rows of ``Y`` that ``columns`` names are computed in one pass over
    those rows (read :data:`TAKE_ROWS` at a time), and each batch meets the
    queries of every run of which it is a candidate. Each row of ``columns``
    must be sorted: the pairs of a read are then the next slots of each row,
    found without sorting all pairs at once.
    """
    n, c = columns.shape
    wanted = np.zeros(n_samples(Y), dtype=bool)
    wanted[columns.ravel()] = True
    needed = np.flatnonzero(wanted)
    where = np.cumsum(wanted) - 1  # row of needed, by reference row
    del wanted
    out = np.empty((n, c), dtype=np.float32)
    done = np.zeros(n, dtype=np.intp)  # slots of each query already met
    device = runs[0][1][0].signal.device
    for start in range(0, len(needed), TAKE_ROWS):
        read = needed[start : start + TAKE_ROWS]
        upto = (columns <= read[-1]).sum(axis=1)
        count = upto - done
        query = np.repeat(np.arange(n), count)  # the read's pairs, row by row
        slot = np.arange(len(query)) - np.repeat(np.cumsum(count) - count, count)
        slot += done[query]
        done = upto
        position = where[columns[query, slot]] - start  # row of the read
        by_position = np.argsort(position, kind="stable")
        bounds = position[by_position]
        with rows_of_reference(read):
            for rows, pieces, _ in engine.mapped_pieces(take(Y, read), -0.5, rtol):
                lo, hi = np.searchsorted(bounds, [rows.start, rows.stop])
                pairs = np.sort(by_position[lo:hi])  # compressed-row order
                for span, left in runs:
                    mine = pairs[
                        (query[pairs] >= span.start) & (query[pairs] < span.stop)
                    ]
                    out[query[mine], slot[mine]] = pair_similarities(
                        left,
                        pieces,
                        torch.as_tensor(query[mine] - span.start, device=device),
                        torch.as_tensor(position[mine] - rows.start, device=device),
                        engine.max_memory,
                    )
    return out


def sketch_features(
    engine: JacobianEngine,
    X,
    n_components: int,
    seed: int,
    rtol: float = 1e-5,
    each_batch: Callable[[slice, list], None] | None = None,
    directions: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Projected whitened Jacobians, flattened and scaled to unit norm.

    Returns a float32 array ``(n, d * n_components)`` whose inner products
    estimate the cosine kernel ``tr(A(x) A(y)^T) / d`` (``|A|_F^2 = d``);
    normalising makes the self-similarity exactly 1. Dead inputs stay zero.
    The same ``seed`` must be used for queries and reference. ``each_batch``
    is called with the rows and whitened pieces of every batch of ``X``.
    ``directions`` ``(d * n_components, m)``, if given, project each batch's
    sketches onto their columns: the result is ``(n, m)``, and the whole
    sketches are never held for more than a batch. ``weights`` share the
    sketch's columns among the pieces: the same for queries and reference.
    ``out``, if given, receives the result.
    """
    F = gradient_features(
        engine,
        X,
        n_components,
        True,
        seed,
        rtol,
        each_batch=each_batch,
        unit_norm=True,
        directions=directions,
        weights=weights,
        out=out,
    )
    return F.reshape(len(F), -1)


def sketch_rows(
    F: np.ndarray, F_ref: np.ndarray, max_bytes: float = float("inf")
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, F[rows] @ F_ref.T)`` in blocks of bounded size.

    A block holds at most :data:`MAX_BLOCK_ENTRIES` similarities, and at most
    ``max_bytes`` of them (:data:`SIMILARITY_BYTES` each); one row at least.
    """
    budget = min(MAX_BLOCK_ENTRIES * SIMILARITY_BYTES, max_bytes)
    step = rows_that_fit(budget, SIMILARITY_BYTES * len(F_ref), len(F))
    for start in range(0, len(F), step):
        rows = slice(start, min(start + step, len(F)))
        yield rows, (F[rows] @ F_ref.T).astype(np.float64)


def sketched_chunks(
    sketch: Callable, X, width: int, max_bytes: float
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, sketch(X[rows]))`` in chunks of rows of ``X``.

    Each chunk's sketches (float32, ``width`` columns) take at most
    ``max_bytes``: one row at a time at least. Inputs flagged (dead, with a
    near-singular Gram) are reported once, by their rows in ``X``.
    """
    n = n_samples(X)
    step = rows_that_fit(max_bytes, 4 * width, n)
    # one warning for all the chunks, at the end (no scope open across yields)
    flagged = FlaggedRows()
    with shared_sketches():  # the chunks draw the sketch's maps once
        for start in range(0, n, step):
            chunk = slice(start, min(start + step, n))
            with flag_scope(report=False) as found:
                F = sketch(take(X, chunk))
            flagged.merge(found, block_move(chunk))
            yield chunk, F
    flagged.report()


def sketched_rows(
    sketch: Callable, X, F_ref: np.ndarray, max_bytes: float
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, sketch(X[rows]) @ F_ref.T)`` for the queries ``X``.

    The queries are sketched in chunks whose sketches (float32, as wide as
    ``F_ref``) take at most half of ``max_bytes``, and whose blocks of
    similarities the other half: one query at a time at least. The chunks
    change no result.
    """
    for chunk, F in sketched_chunks(sketch, X, F_ref.shape[1], max_bytes / 2):
        for rows, k in sketch_rows(F, F_ref, max_bytes / 2):
            yield slice(chunk.start + rows.start, chunk.start + rows.stop), k
