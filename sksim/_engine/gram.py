"""Kernel rows between query inputs and a reference set, in bounded memory.

Every kernel is ``B(x, y) = (L(x) J(x)) (R(y) J(y))^T`` with per-sample
``d x d`` maps: ``L = R = I`` for ``ntk``, ``L = R = (J J^T)^{-1/2}`` for
``cosine``, and ``L = (J J^T)^{-1}, R = I`` for ``influence`` (whose matrix
kernel ``K(y, x) K(x, x)^{-1}`` is ``B^T``). The maps act on the layer pieces
before pairing, so scalar kernels (``tr B / d``) cost ``d`` inner products per
pair, not ``d^2``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from .budget import left_beside, rows_that_fit
from .finite import rows_of_reference
from .flags import FlaggedRows, flag_scope, moved_rows
from .inputs import n_samples, take
from .jacobian import JacobianEngine
from .normalize import KINDS, floored_eigh, self_similarity
from .pieces import (
    KeptPieces,
    gram_of,
    held,
    map_pieces,
    nbytes_of,
    out_of_range,
    refined_eigh,
)
from .transfer import copy_to_host, to_host

# Tiles of symmetric kernels: small enough for the transposes to stay in cache.
SYMMETRIC_TILE = 256
# Rows of one strip of a symmetric kernel, and the most elements a strip holds.
STRIP_ROWS = 128
STRIP_ELEMENTS = 2**22
STRIP_COPIES = 3  # a strip's products: a layer's, their sum, its scaled copy
# Of max_memory: what a reference's kept pieces and Grams take at most. Blocks
# of kernel rows take what they leave of the kept data's two thirds (a sixth at
# least), the engine's batches the third one.
KEPT_PIECES = 1 / 2
# Powers of J J^T applied on the (left, right) of each kernel, None for none.
POWERS = {"ntk": (None, None), "cosine": (-0.5, -0.5), "influence": (-1.0, None)}


def _pair(left: list, right: list, full: bool, max_memory: float) -> torch.Tensor:
    pairs = (p.pair(q, full, max_memory) for p, q in zip(left, right, strict=True))
    total = next(pairs)
    for products in pairs:
        total += products
    if not bool(torch.isfinite(total).all()):  # the network's own are finite
        raise out_of_range(total.dtype)
    return total


def _joined(
    batches: Iterator, n: int, max_bytes: float, row_bytes: float = 0
) -> Iterator:
    """The ``(rows, pieces, G)`` of consecutive batches, joined into groups.

    A group holds the rows whose pieces, and ``row_bytes`` more a row (what
    is made for the group), fit in ``max_bytes`` (measured on the first
    batch; as many whole batches of its size as fit) in one buffer that
    every group reuses: a group must be used before the next is asked for.
    A batch copied into the buffer is emptied (the engine's next batch would
    empty it), so that its pieces are not held beside the group's. A batch
    whose pieces the buffer cannot hold (see :func:`~.pieces.held`) is
    passed on as it is, as every batch is when a group would hold no more
    rows than the first batch.
    """
    buffer, size, start, grams = None, 0, 0, []

    def group():  # the rows filled so far, from ``start``
        filled = sum(map(len, grams))
        pieces = (
            buffer if filled == size else [p.take(slice(0, filled)) for p in buffer]
        )
        return slice(start, start + filled), pieces, np.concatenate(grams)

    for rows, pieces, G in batches:
        if buffer is None:
            per_row = nbytes_of(pieces) / len(G) + row_bytes
            size = rows_that_fit(max_bytes, per_row, n)
            if len(G) < size < n:  # whole batches: none held beside a full group
                size -= size % len(G)
            buffer = [piece.empty(size) for piece in pieces] if size > len(G) else []
        if not buffer or not held(buffer, pieces):
            if grams:
                yield group()
                grams = []
            yield rows, pieces, G
            start = rows.stop
            continue
        done = 0
        while done < len(G):
            filled = sum(map(len, grams))
            part = slice(done, min(len(G), done + size - filled))
            into = slice(filled, filled + part.stop - part.start)
            for kept, piece in zip(buffer, pieces, strict=True):
                kept.put(into, piece.take(part))
            grams.append(G[part])
            done = part.stop
            if into.stop == size:
                if done == len(G):
                    pieces.clear()
                yield group()
                start, grams = rows.start + done, []
        pieces.clear()
    if grams:
        yield group()


def _gram_array(pieces: list) -> np.ndarray:
    """``J(x) J(x)^T`` of a batch's samples, float64 on the CPU."""
    return gram_of(pieces).double().cpu().numpy()


class GramReference:
    """A reference set ``Y`` prepared once, for kernel rows of many queries.

    Parameters
    ----------
    engine : JacobianEngine
    Y : network inputs
    kind : {"ntk", "cosine", "influence"}, default="ntk"
    full : bool, default=False
        Yield matrix blocks ``(b, m, d, d)`` rather than scalars ``tr / d``.
    rtol : float, default=1e-5
        Relative eigenvalue floor of ``J J^T``.
    max_memory : int or None, default=None
        Bytes the prepared pieces of ``Y`` and its Grams (which are always
        kept, ``m d^2`` float64) may take, None: :data:`KEPT_PIECES` of the
        engine's ``max_memory``. Past it the pieces are recomputed for every
        block of queries (slower, bounded memory), grouped into blocks whose
        pieces and rows take what the Grams leave of two thirds of the
        engine's ``max_memory``.
    named : bool, default=False
        Name the rows of ``Y`` as the reference's when the network gives NaN
        or infinity for them: for queries other than ``Y`` itself.

    Attributes
    ----------
    gram : ndarray of shape (m, d, d)
        ``J(y_j) J(y_j)^T``, float64.
    """

    def __init__(
        self,
        engine: JacobianEngine,
        Y,
        kind: str = "ntk",
        full: bool = False,
        rtol: float = 1e-5,
        max_memory: int | None = None,
        named: bool = False,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
        self.engine, self.Y, self.kind, self.full, self.rtol = (
            engine,
            Y,
            kind,
            full,
            rtol,
        )
        self.left_power, self.right_power = POWERS[kind]
        self.n_samples = n_samples(Y)
        if max_memory is None:
            max_memory = KEPT_PIECES * engine.max_memory
        self.max_memory = max_memory
        self.named = named
        # J J^T whitens the kept pieces, and the rows of a streamed Y
        self.gram, selves, kept, found = None, [], None, FlaggedRows()
        with self._naming():
            for rows, pieces in engine.pieces(Y):
                G = _gram_array(pieces)
                if kept is None:  # the Grams are kept too, filled batch by batch
                    self.n_outputs = G.shape[1]
                    self.gram = np.empty((self.n_samples, *G.shape[1:]), G.dtype)
                    kept = KeptPieces(
                        self.n_samples, self.max_memory - self.gram.nbytes
                    )
                decomposition = None
                if kind != "ntk":  # refined here, as the kernel's rows read G
                    decomposition = refined_eigh(G, pieces, rtol)
                    selves.append(self_similarity(decomposition, full))
                power = self.right_power
                kept(
                    rows, map_pieces(pieces, G, power, rtol, found, rows, decomposition)
                )
                self.gram[rows] = G
            found.report()
        self._self_similarity = np.concatenate(selves) if selves else None
        self._pieces = kept.pieces

    def _naming(self):
        """Where ``Y`` is read: names its non-finite rows if :attr:`named`."""
        return rows_of_reference() if self.named else contextlib.nullcontext()

    def _reference_blocks(self) -> Iterator[tuple[slice, list]]:
        if self._pieces is not None:
            yield slice(0, self.n_samples), self._pieces
            return
        with self._naming():
            for cols, pieces in self.engine.pieces(self.Y, progress=False):
                yield cols, self._mapped(pieces, self.right_power, cols)

    def _mapped(self, pieces: list, power, of_y, found=None) -> list:
        """:func:`~.pieces.map_pieces` of pieces of ``Y[of_y]``, refined when made."""
        if power is None:
            return pieces
        G = self.gram[of_y]
        decomposition = floored_eigh(G, self.rtol)
        return map_pieces(pieces, G, power, self.rtol, found, of_y, decomposition)

    def rows_of(self, left: list) -> np.ndarray:
        """Kernel rows of queries given by their pieces, mapped by ``left_power``."""
        b, d = len(left[0]), self.n_outputs
        shape = (b, self.n_samples, d, d) if self.full else (b, self.n_samples)
        out, max_memory = np.empty(shape), self.engine.max_memory
        for cols, right in self._reference_blocks():  # widened to float64 as copied
            copy_to_host(out[:, cols], _pair(left, right, self.full, max_memory))
        if not self.full:
            out /= d
        if self.kind == "cosine":  # rounding can pass Cauchy-Schwarz's bound
            np.clip(out, -1.0, 1.0, out=out)
        if self.full and self.kind == "influence":
            return out.transpose(0, 1, 3, 2)
        return out

    def rows(
        self, X, copies: int = 1
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield ``(rows, B, G)`` for blocks of queries of ``X``.

        ``B`` is ``(b, m)`` (scalar kernel) or ``(b, m, d, d)`` (``full``), ``G``
        the queries' ``J J^T`` ``(b, d, d)``; float64 on the CPU. ``copies``
        arrays of ``B``'s size, ``B`` included, take what the reference's
        Grams and kept pieces leave of two thirds of the engine's
        ``max_memory``, and so do the queries' pieces with them when the
        reference's are made again for each block (the reference's batches
        take the third one).
        """
        batches = self.engine.mapped_pieces(X, self.left_power, self.rtol)
        left = left_beside(self._held_bytes(), self.engine.max_memory)
        if self._pieces is None:  # each group of queries reads the reference once
            batches = _joined(batches, n_samples(X), left, self._row_bytes(copies))
        for rows, pieces, G in batches:
            # the queries' pieces are the engine's batch when the reference's are kept
            beside = 0 if self._pieces is not None else nbytes_of(pieces)
            step = rows_that_fit(left - beside, self._row_bytes(copies), len(G))
            for start in range(0, len(G), step):
                part = slice(start, min(start + step, len(G)))
                left_pieces = (
                    pieces if step >= len(G) else [p.take(part) for p in pieces]
                )
                block = slice(rows.start + part.start, rows.start + part.stop)
                yield block, self.rows_of(left_pieces), G[part]

    def self_rows(
        self, copies: int = 1, subset: np.ndarray | None = None
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Like ``rows(Y[subset], copies)``, reusing the kept pieces of ``Y``.

        ``subset`` holds rows of ``Y``, in increasing order; None takes all.
        Without kept pieces, those of the subset are computed again.
        """
        if self._pieces is None:
            if subset is None:
                yield from self.rows(self.Y, copies)
                return
            with flag_scope(lambda inputs, rows: (inputs, moved_rows(rows, subset))):
                yield from self.rows(take(self.Y, subset), copies)
            return
        n = self.n_samples if subset is None else len(subset)
        # a block's rows, and the copies of their kept pieces
        row_bytes = self._row_bytes(copies) + nbytes_of(self._pieces) / self.n_samples
        left = left_beside(self._held_bytes(), self.engine.max_memory)
        step = rows_that_fit(left, row_bytes, self.engine.batch_size)
        found = FlaggedRows()
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            of_y = rows if subset is None else subset[rows]  # rows of Y
            chosen = rows if subset is None else torch.from_numpy(of_y)
            left = [p.take(chosen) for p in self._pieces]
            G = self.gram[of_y]
            if self.left_power != self.right_power:  # influence: R = I, L = G^-1
                left = self._mapped(left, self.left_power, of_y, found)
            yield rows, self.rows_of(left), G
        found.report()

    def _row_bytes(self, copies: int) -> int:
        """Bytes of a row of a block and of its ``copies - 1`` copies.

        A row holds ``m`` float64 values, ``m d^2`` when ``full``. The
        caller's copies of a block (its temporaries) count, as the engine's
        batches and the kept pieces of ``Y`` do, against the engine's
        ``max_memory``.
        """
        d = self.n_outputs
        return 8 * self.n_samples * (d * d if self.full else 1) * copies

    def _held_bytes(self) -> int:
        """What the reference holds: its Grams, and its pieces if they are kept."""
        kept = 0 if self._pieces is None else nbytes_of(self._pieces)
        return self.gram.nbytes + kept

    def matrix(self, X=None) -> np.ndarray:
        """All rows at once; ``X=None`` gives the exactly symmetric ``K(Y, Y)``.

        Its cosine and influence self-similarities are exact: 1 unless
        eigenvalues were floored (see :func:`~.normalize.self_similarity`);
        the cosines of other pairs are bounded by theirs (Cauchy-Schwarz), so
        that rounding makes no other sample more similar to one than itself.
        """
        if X is None and self.kind != "influence" and self._pieces is not None:
            out = self._symmetric_matrix()
        else:
            out = None
            for rows, B, _ in self.self_rows() if X is None else self.rows(X):
                if out is None:
                    n = self.n_samples if X is None else n_samples(X)
                    out = np.empty((n, *B.shape[1:]))
                out[rows] = B
            if X is None and self.kind != "influence":
                symmetrize(out)
        if X is None and self.kind != "ntk":
            diagonal = np.arange(self.n_samples)
            out[diagonal, diagonal] = self._self_similarity
            if self.kind == "cosine" and not self.full:  # the batches' third
                bounded_by_diagonal(out, self.engine.max_memory / 3)
        return out

    def _symmetric_matrix(self) -> np.ndarray:
        """``K(Y, Y)`` from row strips on and right of the diagonal, mirrored.

        Strips of rows against all later columns (:meth:`_strip_shape`) make a
        few large products that together cover just over half of the matrix.
        """
        m, d = self.n_samples, self.n_outputs
        shape = (m, m, d, d) if self.full else (m, m)
        # filled on the pieces' device when it fits there: one transfer at the end
        where = self._pieces[0].signal.device
        if 8 * np.prod(shape) > self.engine.max_memory / 3:
            where = torch.device("cpu")
        out = torch.empty(shape, dtype=torch.float64, device=where)
        swap = (1, 0, 3, 2) if self.full else (1, 0)
        height, width = self._strip_shape()
        for i in range(0, m, height):
            rows = slice(i, min(i + height, m))
            left = [p.take(rows) for p in self._pieces]
            for j in range(i, m, width):
                cols = slice(j, min(j + width, m))
                right = [p.take(cols) for p in self._pieces]
                B = _pair(left, right, self.full, self.engine.max_memory)
                B = (B if self.full or d == 1 else B / d).to(where)
                if self.kind == "cosine":
                    B.clamp_(-1.0, 1.0)
                if i == j:
                    diagonal = B[:, : rows.stop - i]
                    diagonal.copy_(0.5 * (diagonal + diagonal.permute(swap)))
                out[rows, cols] = B
                out[cols, rows] = B.permute(swap)
        return to_host(out)

    def _strip_shape(self) -> tuple[int, int]:
        """Rows and columns of the strips of :meth:`_symmetric_matrix`.

        ``STRIP_ROWS`` rows against ``STRIP_ELEMENTS`` entries' worth of
        columns, fewer of both where the strip's products
        (:data:`STRIP_COPIES` of them, float64) would pass the batches' third
        of ``max_memory`` (no batch runs beside them); as many columns as rows
        at least, so that the strip on the diagonal holds its square.
        """
        m, d = self.n_samples, self.n_outputs
        entries = d * d if self.full else 1  # of one pair's product
        budget = self.engine.max_memory / 3
        fit = budget / (8 * STRIP_COPIES * entries)  # pairs a strip may hold
        side = max(1, math.isqrt(int(min(fit, m * m))))
        height = min(STRIP_ROWS, side)
        width = max(STRIP_ROWS, STRIP_ELEMENTS // (STRIP_ROWS * d * d))
        return height, max(height, int(min(width, fit // height)))


def bounded_by_diagonal(K: np.ndarray, max_bytes: float) -> None:
    """Clip ``K`` in place to Cauchy-Schwarz's ``|k(x, y)| <= sqrt(k(x, x) k(y, y))``.

    Rounding passes it where Grams were floored (self-similarities below 1),
    which would make a duplicate more similar to an example than the example
    itself. Clipped by strips of rows whose bounds take ``max_bytes`` at most,
    and :data:`STRIP_ELEMENTS` whatever ``max_bytes``.
    """
    root = np.sqrt(np.diagonal(K))
    step = rows_that_fit(min(max_bytes, 8 * STRIP_ELEMENTS), 8 * len(K), len(K))
    for i in range(0, len(K), step):
        strip = K[i : i + step]
        bound = np.multiply(root[i : i + step, None], root[None, :])
        np.minimum(strip, bound, out=strip)
        np.maximum(strip, np.negative(bound, out=bound), out=strip)


def symmetrize(K: np.ndarray, tile: int = SYMMETRIC_TILE) -> None:
    """Replace ``K`` by ``(K + K^T) / 2`` in place, tile by tile.

    For matrix blocks ``(n, n, d, d)`` the transpose also swaps the last axes.
    """
    n = len(K)
    swap = (1, 0, 3, 2) if K.ndim == 4 else (1, 0)
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            upper = K[i : i + tile, j : j + tile]
            lower = K[j : j + tile, i : i + tile]
            mean = 0.5 * (upper + lower.transpose(swap))
            upper[...] = mean
            lower[...] = mean.transpose(swap)


class NTKReference(GramReference):
    """Reference set for unnormalised NTK blocks ``J(x_i) J(y_j)^T``.

    ``rows(X)`` yields ``(rows, K, G)`` with ``K`` of shape ``(b, m, d, d)``;
    ``gram`` holds ``J(y_j) J(y_j)^T``.
    """

    def __init__(
        self,
        engine: JacobianEngine,
        Y,
        max_memory: int | None = None,
        named: bool = False,
    ):
        super().__init__(
            engine, Y, kind="ntk", full=True, max_memory=max_memory, named=named
        )
