"""Per-layer pieces of per-sample Jacobians, and their Gram products.

A batch's Jacobian ``J(x)`` (``d x p``) is held as one piece per layer:

* :class:`SharedWeightPiece` keeps the factors of a weight applied at ``T``
  positions, ``dW = sum_u delta(u) h(u)^T``: the layer input ``h`` (or token
  ids, for an embedding) and the back-propagated output signal ``delta``. Inner
  products of two such gradients are
  ``sum_{u,u'} (delta(u) . delta'(u')) (h(u) . h'(u'))``, computed without ever
  forming ``dW``.
* :class:`DensePiece` keeps the per-sample gradient itself, ``(b, d, q)``.

Both are linear in the output axis ``d``, so whitening ``J -> W J`` acts on
``delta`` or on the gradient. Besides the products of all pairs of two batches
(``pair``), both give those of chosen pairs (``paired``): samples of a batch
with a few rows of a reference set each.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from .flags import FlaggedRows
from .normalize import decomposed_power, floored_eigh

# Elements of the largest intermediate of one pairing step, at most: the
# (b, m, T, T') products of positions; in the full form, the smaller of those
# times the d^2 output pairs and the (b, m, d, T', O) input products met with
# one side's signals. Fewer when a third of max_memory asks for it.
PAIR_CHUNK_ELEMENTS = 2**23
# Intermediates of a pairing step's size alive at once.
PAIR_INTERMEDIATES = 3
# Elements of a piece widened to float64 at once for its samples' Gram.
GRAM_ROWS_ELEMENTS = 2**22
# Diagonal entries of a Gram formed in float32 trusted as they are: squared
# gradients far from both ends of float32's range (1.2e-38 to 3.4e38).
GRAM_RANGE = (1e-30, 1e30)
# Grams less well conditioned are formed in float64 before they are inverted
COND_FLOAT64 = 100.0
# Squared gradients, and entries of their Grams' powers, that float32 pieces
# pair without losing precision to its subnormal range or overflowing.
FLOAT32_RANGE = (1e-36, 1e36)


class PiecesTooLarge(Exception):
    """The pieces of a batch would take more memory than its budget.

    Its argument: the bytes they took when they passed it.
    """


class PieceBudget:
    """Bytes that the pieces of one batch may still allocate.

    Each allocation is announced with :meth:`take` before it is made, so a
    batch that cannot fit stops before the memory is used.
    """

    def __init__(self, nbytes: float):
        self.left = nbytes
        self.taken = 0

    def take(self, shape, like: torch.Tensor) -> None:
        """Reserve a tensor of ``shape`` and ``like``'s dtype, or raise."""
        nbytes = int(np.prod(shape)) * like.element_size()
        self.left -= nbytes
        self.taken += nbytes
        if self.left < 0:
            raise PiecesTooLarge(self.taken)


def chunk_elements(max_memory: float, like: torch.Tensor) -> int:
    """Elements that one intermediate of a pairing step may hold.

    :data:`PAIR_CHUNK_ELEMENTS` at most, fewer when the step's
    :data:`PAIR_INTERMEDIATES` intermediates of ``like``'s dtype would take
    more than a third of ``max_memory`` bytes; one at least.
    """
    fit = max_memory / (3 * PAIR_INTERMEDIATES * like.element_size())
    return int(max(1, min(PAIR_CHUNK_ELEMENTS, fit)))


def chunks(n_rows: int, n_columns: int, per_pair: int, elements: int):
    """Yield ``(rows, columns)`` slices of at most ``elements // per_pair`` pairs.

    Whole rows are kept together while they fit, so that wide blocks make
    few steps; one pair per step at least.
    """
    row_step = max(1, min(n_rows, elements // max(1, per_pair)))
    column_step = max(1, elements // max(1, row_step * per_pair))
    for i in range(0, n_rows, row_step):
        for j in range(0, n_columns, column_step):
            yield slice(i, i + row_step), slice(j, j + column_step)


class DensePiece:
    """Materialised per-sample gradients ``(b, d, q)`` of some parameters.

    ``factors``: ``(o, a)`` when ``q`` holds a weight ``o x a`` (row by row)
    that comes factorised, as a :class:`SharedWeightPiece`, for inputs of
    other sizes.
    """

    def __init__(self, grad: torch.Tensor, factors: tuple[int, int] | None = None):
        self.grad = grad
        self.factors = factors

    def __len__(self) -> int:
        return self.grad.shape[0]

    @property
    def signal(self) -> torch.Tensor:
        """The tensor carrying the output axis ``d``."""
        return self.grad

    def transform(self, W: torch.Tensor) -> DensePiece:
        return DensePiece(W @ self.grad, self.factors)

    def astype(self, dtype: torch.dtype) -> DensePiece:
        """The piece in floating ``dtype`` (itself if it is in it already)."""
        if self.grad.dtype == dtype:
            return self
        return DensePiece(self.grad.to(dtype), self.factors)

    def self_gram(self) -> torch.Tensor:
        return self.grad @ self.grad.transpose(1, 2)

    def pair(
        self, other: DensePiece | SharedWeightPiece, full: bool, max_memory: float
    ) -> torch.Tensor:
        """Products of all pairs, ``(b, m)``, or ``(b, m, d, e)`` when ``full``.

        No intermediate is larger than the result, whatever ``max_memory``.
        """
        other = dense(other)
        if full:
            return torch.einsum("icq,jeq->ijce", self.grad, other.grad)
        b, m = len(self), len(other)
        return self.grad.reshape(b, -1) @ other.grad.reshape(m, -1).T

    def paired(
        self,
        other: DensePiece | SharedWeightPiece,
        rows: torch.Tensor,
        columns: torch.Tensor,
        max_memory: float,
    ) -> torch.Tensor:
        """``tr(g_i g'_j^T)`` of the pairs ``(rows[p], columns[p])``, ``(P,)``.

        The pairs are in the order of :func:`pair_products`; no intermediate
        is larger than the result, whatever ``max_memory``.
        """
        other = dense(other)
        return pair_products(self.grad.flatten(1), other.grad.flatten(1), rows, columns)

    @property
    def width(self) -> int:
        """Number of parameters ``q`` of the piece."""
        return self.grad.shape[2]

    def total(self) -> torch.Tensor:
        """The sum of the batch's gradients, ``(d, q)``."""
        return self.grad.sum(dim=0)

    def inner(self, S: torch.Tensor) -> torch.Tensor:
        """``<g(x), S>_F`` for every sample, ``(b,)``, with ``S`` from ``total``."""
        return torch.einsum("bcq,cq->b", self.grad, S)

    def take(self, rows) -> DensePiece:
        return DensePiece(self.grad[rows], self.factors)

    def empty(self, n: int) -> DensePiece:
        """A piece of ``n`` samples shaped like these, not yet filled."""
        return DensePiece(self.grad.new_empty((n, *self.grad.shape[1:])), self.factors)

    def put(self, rows: slice, other: DensePiece) -> None:
        """Copy the samples of ``other`` into ``rows``."""
        self.grad[rows] = other.grad

    def holds(self, other: DensePiece | SharedWeightPiece) -> bool:
        """Whether ``other``'s samples have this piece's form (see :func:`held`)."""
        return (
            isinstance(other, DensePiece)
            and other.grad.shape[1:] == self.grad.shape[1:]
        )

    def nbytes(self) -> int:
        return self.grad.numel() * self.grad.element_size()


class SharedWeightPiece:
    """Factors of ``dW = sum_u delta(u) h(u)^T`` over ``T`` positions.

    Parameters
    ----------
    h : Tensor of shape (b, T, a), or integer Tensor (b, T) of token ids
        Layer inputs at each position. Token ids stand for one-hot vectors:
        ``h(u) . h'(u')`` is then 1 when the tokens are equal, 0 otherwise.
    delta : Tensor of shape (b, d, T, o)
        Derivative of each selected output with respect to the layer output.
    n_tokens : int or None, default=None
        Size of the vocabulary when ``h`` holds token ids.
    bias : bool, default=False
        Whether the layer's bias rides along as a constant last input 1,
        implied rather than stored: ``db = sum_u delta(u)``.
    tensor_sketch : bool, default=True
        Whether sketches take the factors (a TensorSketch, as for linear
        layers, embeddings and large convolutions), or the gradient
        materialised (a CountSketch, whose error is smaller, for convolutions
        of few parameters, cheap to materialise), in either form of the layer.
    """

    def __init__(
        self,
        h: torch.Tensor,
        delta: torch.Tensor,
        n_tokens: int | None = None,
        bias: bool = False,
        tensor_sketch: bool = True,
    ):
        self.h = h
        self.delta = delta
        self.n_tokens = n_tokens
        self.bias = bias
        self.tensor_sketch = tensor_sketch

    def __len__(self) -> int:
        return self.delta.shape[0]

    @property
    def signal(self) -> torch.Tensor:
        """The tensor carrying the output axis ``d``."""
        return self.delta

    @property
    def tokens(self) -> bool:
        return not self.h.is_floating_point()

    @property
    def inputs(self) -> torch.Tensor:
        """``h`` with the bias's constant input appended, ``(b, T, a)``."""
        if not self.bias:
            return self.h
        return torch.cat([self.h, self.h.new_ones(*self.h.shape[:2], 1)], dim=2)

    @property
    def dense_inputs(self) -> torch.Tensor:
        """``inputs``, token ids as one-hot vectors of ``n_tokens``, ``(b, T, a)``."""
        if not self.tokens:
            return self.inputs
        return torch.nn.functional.one_hot(self.h, self.n_tokens).to(self.delta)

    def transform(self, W: torch.Tensor) -> SharedWeightPiece:
        delta = (W @ self.delta.flatten(2)).reshape(self.delta.shape)
        return self._with(self.h, delta)

    def astype(self, dtype: torch.dtype) -> SharedWeightPiece:
        """The piece in floating ``dtype`` (token ids stay integers)."""
        if self.delta.dtype == dtype:
            return self
        h = self.h if self.tokens else self.h.to(dtype)
        return self._with(h, self.delta.to(dtype))

    def _with_bias(self, HH: torch.Tensor) -> torch.Tensor:
        return HH.add_(1) if self.bias else HH

    def _input_products(self, other: SharedWeightPiece) -> torch.Tensor:
        """``h_i(u) . h_j(u')`` of shape (b, m, T, T')."""
        if self.tokens:
            return (self.h[:, None, :, None] == other.h[None, :, None, :]).to(
                self.delta.dtype
            )
        return self._with_bias(torch.einsum("ita,jua->ijtu", self.h, other.h))

    def _aligned_input_products(self, other: SharedWeightPiece) -> torch.Tensor:
        """``h_i(u) . h'_i(u')`` of the ``i``-th samples of both, (b, T, T')."""
        if self.tokens:
            return (self.h[:, :, None] == other.h[:, None, :]).to(self.delta.dtype)
        return self._with_bias(torch.einsum("ita,iua->itu", self.h, other.h))

    def self_gram(self) -> torch.Tensor:
        HH = self._aligned_input_products(self)
        # the input products met with one side's signals first: (b, T, e, O), the
        # size of the signals, where the two signals first would take d^2 T^2
        mixed = torch.einsum("btu,beuO->bteO", HH, self.delta)
        return torch.einsum("bctO,bteO->bce", self.delta, mixed)

    def pair(
        self, other: SharedWeightPiece | DensePiece, full: bool, max_memory: float
    ) -> torch.Tensor:
        """Products of all pairs, ``(b, m)``, or ``(b, m, d, e)`` when ``full``.

        Pairs of positions are met in steps whose intermediates take a third
        of ``max_memory`` at most (see :func:`chunk_elements`), each written
        into the result as it is made.
        """
        if isinstance(other, DensePiece):
            return dense(self).pair(other, full, max_memory)
        b, m = len(self), len(other)
        T, T_other = self.h.shape[1], other.h.shape[1]
        if T == 1 and T_other == 1 and not self.tokens:
            HH = self._with_bias(self.h[:, 0] @ other.h[:, 0].T)
            if full:
                DD = torch.einsum(
                    "icO,jeO->ijce", self.delta[:, :, 0], other.delta[:, :, 0]
                )
                return DD * HH[:, :, None, None]
            D = self.delta.reshape(b, -1)
            return (D @ other.delta.reshape(m, -1).T).mul_(HH)
        d, e, o = self.delta.shape[1], other.delta.shape[1], self.delta.shape[3]
        if full:
            # contract first what makes the smaller tensor per pair: the products
            # of the signals over each pair of positions (d e T T'), or the
            # input products met with this side's signals (d T' O)
            signals_first = e * T <= o
            per_pair = T_other * max(T, d * (e * T if signals_first else o))
            out = self.delta.new_empty((b, m, d, e))
        else:  # the products of the signals over each pair of positions
            per_pair = T * T_other
            out = self.delta.new_empty((b, m))
        # written into out step by step: results of many small steps collected
        # and joined at the end leave the steps' large blocks fragmented
        elements = chunk_elements(max_memory, self.delta)
        for rows, columns in chunks(b, m, per_pair, elements):
            query, chunk = self.take(rows), other.take(columns)
            HH = query._input_products(chunk)
            if not full:
                products = torch.einsum("ictO,jcuO->ijtu", query.delta, chunk.delta)
                torch.sum(products.mul_(HH), dim=(2, 3), out=out[rows, columns])
            elif signals_first:
                out[rows, columns] = torch.einsum(
                    "ictO,jeuO,ijtu->ijce", query.delta, chunk.delta, HH
                )
            else:
                mixed = torch.einsum("ictO,ijtu->ijcuO", query.delta, HH)
                out[rows, columns] = torch.einsum(
                    "ijcuO,jeuO->ijce", mixed, chunk.delta
                )
        return out

    def paired(
        self,
        other: SharedWeightPiece | DensePiece,
        rows: torch.Tensor,
        columns: torch.Tensor,
        max_memory: float,
    ) -> torch.Tensor:
        """``tr(dW_i dW'_j^T)`` of the pairs ``(rows[p], columns[p])``, ``(P,)``.

        The pairs are in the order of :func:`pair_products`. Layers of one
        position give two such products; others copy the samples of a few
        pairs at a time, as many as fit in a third of ``max_memory``.
        """
        if isinstance(other, DensePiece):
            return dense(self).paired(other, rows, columns, max_memory)
        T, T_other = self.h.shape[1], other.h.shape[1]
        if T == 1 and T_other == 1 and not self.tokens:
            HH = pair_products(self.h[:, 0], other.h[:, 0], rows, columns)
            D = pair_products(
                self.delta.flatten(1), other.delta.flatten(1), rows, columns
            )
            return self._with_bias(HH).mul_(D)
        # per pair: the positions' input products and the two samples' signals
        d, o = self.delta.shape[1], self.delta.shape[3]
        per_pair = max(T * T_other, d * o * max(T, T_other))
        out = self.delta.new_empty(len(rows))
        elements = chunk_elements(max_memory, self.delta)
        for _, pairs in chunks(1, len(rows), per_pair, elements):
            query = self.take(rows[pairs])
            match = other.take(columns[pairs])
            HH = query._aligned_input_products(match)
            out[pairs] = torch.einsum("idtO,iduO,itu->i", query.delta, match.delta, HH)
        return out

    @property
    def width(self) -> int:
        """Number of parameters ``o a`` (``o n_tokens`` for an embedding)."""
        a = self.n_tokens if self.tokens else self.h.shape[2] + self.bias
        return self.delta.shape[3] * a

    def total(self) -> torch.Tensor:
        """The sum of the batch's gradients ``sum_u delta(u) h(u)^T``, ``(d, o a)``."""
        d, o = self.delta.shape[1], self.delta.shape[3]
        if self.tokens:
            flat = self.delta.permute(1, 3, 0, 2).reshape(d, o, -1)
            out = flat.new_zeros(d, o, self.n_tokens)
            return out.index_add_(2, self.h.reshape(-1), flat).reshape(d, -1)
        total = torch.einsum("bctO,bta->cOa", self.delta, self.h)
        if self.bias:
            total = torch.cat([total, self.delta.sum(dim=(0, 2))[:, :, None]], dim=2)
        return total.reshape(d, -1)

    def inner(self, S: torch.Tensor) -> torch.Tensor:
        """``<g(x), S>_F`` for every sample, ``(b,)``, with ``S`` from ``total``."""
        S = S.reshape(S.shape[0], self.delta.shape[3], -1)
        if self.tokens:
            picked = S[:, :, self.h]  # (d, o, b, T)
            return torch.einsum("bctO,cObt->b", self.delta, picked)
        if not self.bias:
            return torch.einsum("bctO,cOa,bta->b", self.delta, S, self.h)
        weight, bias = S[:, :, :-1], S[:, :, -1]
        return torch.einsum("bctO,cOa,bta->b", self.delta, weight, self.h) + (
            torch.einsum("bctO,cO->b", self.delta, bias)
        )

    def _with(self, h: torch.Tensor, delta: torch.Tensor) -> SharedWeightPiece:
        """A piece of the same layer with the factors ``h`` and ``delta``."""
        return SharedWeightPiece(h, delta, self.n_tokens, self.bias, self.tensor_sketch)

    def take(self, rows) -> SharedWeightPiece:
        return self._with(self.h[rows], self.delta[rows])

    def empty(self, n: int) -> SharedWeightPiece:
        """A piece of ``n`` samples shaped like these, not yet filled."""
        return self._with(
            self.h.new_empty((n, *self.h.shape[1:])),
            self.delta.new_empty((n, *self.delta.shape[1:])),
        )

    def put(self, rows: slice, other: SharedWeightPiece) -> None:
        """Copy the samples of ``other`` into ``rows``."""
        self.h[rows] = other.h
        self.delta[rows] = other.delta

    def holds(self, other: DensePiece | SharedWeightPiece) -> bool:
        """Whether ``other``'s samples have this piece's form (see :func:`held`)."""
        return (
            isinstance(other, SharedWeightPiece)
            and (other.n_tokens, other.bias) == (self.n_tokens, self.bias)
            and other.h.shape[1:] == self.h.shape[1:]
            and other.delta.shape[1:] == self.delta.shape[1:]
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.h, self.delta))


def pair_products(
    A: torch.Tensor, B: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """``A[rows[p]] . B[columns[p]]`` for each pair ``p``, ``(P,)``.

    A sampled matrix product (``torch.sparse.sampled_addmm``) over the pattern
    of the pairs, which must be in compressed-row order: ``rows``
    non-decreasing, and ``columns`` increasing within each row. The rows of
    ``A`` and ``B`` are read where they are, not copied.
    """
    if len(rows) == 0:
        return A.new_zeros(0)
    with warnings.catch_warnings():  # CSR tensors are "in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            torch.searchsorted(rows, torch.arange(len(A) + 1, device=rows.device)),
            columns,
            A.new_zeros(len(columns)),
            size=(len(A), len(B)),
            device=A.device,
            check_invariants=False,
        )
        out = torch.sparse.sampled_addmm(pattern, A, B.T, beta=0.0)
    return out.values()


def rectangular_pairs(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs ``(i, columns[i, j])`` of every row ``i``, as ``(rows, columns)``."""
    n, c = columns.shape
    rows = torch.arange(n, device=columns.device).repeat_interleave(c)
    return rows, columns.flatten()


def materialize(
    h: torch.Tensor, delta: torch.Tensor, tensor_sketch: bool = True
) -> DensePiece:
    """The per-sample gradient ``sum_u delta(u) h(u)^T`` as a dense piece.

    With ``tensor_sketch``, it keeps its factors' sizes, for the sketch of
    its factorised form (see :class:`SharedWeightPiece`).
    """
    grad = torch.einsum("bctO,bta->bcOa", delta, h)
    factors = (grad.shape[2], grad.shape[3]) if tensor_sketch else None
    return DensePiece(grad.reshape(grad.shape[0], grad.shape[1], -1), factors)


def dense(piece: DensePiece | SharedWeightPiece) -> DensePiece:
    """``piece`` materialised, to pair with a dense piece of the same layer.

    A layer's form depends on its positions (the cost model of
    :func:`factorised_is_cheaper`): inputs of other lengths or sizes than the
    reference's may give it materialised on one side and factorised on the
    other.
    """
    if isinstance(piece, DensePiece):
        return piece
    return materialize(piece.dense_inputs, piece.delta, piece.tensor_sketch)


def factorised_is_cheaper(T: int, a: int, o: int, d: int) -> bool:
    """The cost model choosing, per layer, factors over materialised gradients.

    Pairing two samples costs ``T^2 (d o + a)`` with factors and ``d o a`` with
    materialised gradients (which also cost ``T d o a`` once per sample to form);
    factors win when ``T^2 (d o + a) < d o a``: for a dense layer (``T = 1``)
    unless ``d o`` or ``a`` is 1 (or both are 2), rarely for an early
    convolution (large ``T``).
    """
    return T * T * (d * o + a) < d * o * a


def in_common_dtype(pieces: list) -> list:
    """``pieces`` in one floating dtype: the widest of theirs, float32 at least.

    Products of half-precision gradients overflow its range (65504) for
    ordinary inputs, and pieces of layers kept in different dtypes cannot
    be paired.
    """
    dtype = functools.reduce(
        torch.promote_types, (p.signal.dtype for p in pieces), torch.float32
    )
    return [p.astype(dtype) for p in pieces]


def nbytes_of(pieces: list) -> int:
    """Bytes that a batch's pieces hold."""
    return sum(p.nbytes() for p in pieces)


class KeptPieces:
    """The pieces of a pass over ``n`` samples, kept if they fit.

    Called with the rows and pieces of every batch, in order (as the
    ``each_batch`` of :func:`~.rows.sketch_features` calls it). The first
    batch's pieces are allocated for the ``n`` samples, and every batch is
    copied into its rows. A batch whose pieces take another form (see
    :func:`held`) starts a run of its own, allocated for the rows left, the
    run before it cut to its rows, if ``several_forms``; otherwise none are
    kept. Past ``max_bytes`` (the runs kept, and a new one as its first
    batch extrapolates it) none are kept either.

    Attributes
    ----------
    runs : list of (slice, list) or None
        The rows of each run of batches of one form, and their pieces, layer
        by layer; None if they are not kept.
    """

    def __init__(self, n: int, max_bytes: float, several_forms: bool = False):
        self.n, self.max_bytes = n, max_bytes
        self.several_forms = several_forms
        self.runs: list[tuple[slice, list]] | None = []

    @property
    def pieces(self) -> list | None:
        """The pieces of all ``n`` samples when they took one form, else None."""
        if self.runs is None or len(self.runs) != 1:
            return None
        return self.runs[0][1]

    def __call__(self, rows: slice, pieces: list) -> None:
        if self.runs is None:
            return
        if not self.runs or not held(self.runs[-1][1], pieces):
            # the first batch, or the layers changed form with the inputs
            if self.runs and not self.several_forms:
                self.runs = None
                return
            self._cut_last(rows.start)
            left = self.n - rows.start
            kept = sum(nbytes_of(run) for _, run in self.runs)
            per_sample = nbytes_of(pieces) / (rows.stop - rows.start)
            if kept + per_sample * left > self.max_bytes:
                self.runs = None
                return
            run = [piece.empty(left) for piece in pieces]
            self.runs.append((slice(rows.start, self.n), run))
        start, run = self.runs[-1][0].start, self.runs[-1][1]
        for into, piece in zip(run, pieces, strict=True):
            into.put(slice(rows.start - start, rows.stop - start), piece)

    def _cut_last(self, stop: int) -> None:
        """The last run cut to its rows before ``stop``, copied to free the rest."""
        if not self.runs:
            return
        rows, run = self.runs[-1]
        filled = slice(0, stop - rows.start)
        cut = [piece.empty(filled.stop) for piece in run]
        for into, piece in zip(cut, run, strict=True):
            into.put(filled, piece.take(filled))
        self.runs[-1] = slice(rows.start, stop), cut


def held(kept: list, pieces: list) -> bool:
    """Whether a batch's ``pieces`` can be put into the ``kept`` ones, layer by layer.

    Not when a network's layers see other numbers of positions in other
    batches (sequences cut to their batch's longest), which can change the
    shapes of their pieces, or their form, factors or gradients.
    """
    return len(kept) == len(pieces) and all(
        k.holds(p) for k, p in zip(kept, pieces, strict=True)
    )


def gram_of(pieces: list) -> torch.Tensor:
    """``J(x) J(x)^T`` of every sample of a batch, ``(b, d, d)``, in float64.

    Formed in the pieces' dtype, unless a diagonal entry leaves
    :data:`GRAM_RANGE` (zero included: a dead sample, or one whose float32
    squares vanish), or is not finite: the batch's Gram is then formed again
    in float64 (:func:`float64_gram`), so that the whitening sees neither an
    overflow nor a vanished gradient.
    """
    G = sum(p.self_gram() for p in pieces)
    diagonal = G.diagonal(dim1=1, dim2=2)
    low, high = GRAM_RANGE
    if G.dtype == torch.float64 or bool(((diagonal > low) & (diagonal < high)).all()):
        return G.double()
    return float64_gram(pieces)


def float64_gram(pieces: list) -> torch.Tensor:
    """``J(x) J(x)^T`` of every sample of a batch, formed in float64.

    Each piece is widened :data:`GRAM_ROWS_ELEMENTS` elements at a time.
    """
    G = 0
    for piece in pieces:
        per_row = piece.nbytes() / max(1, len(piece)) / piece.signal.element_size()
        step = max(1, int(GRAM_ROWS_ELEMENTS // max(1, per_row)))
        G = G + torch.cat(
            [
                piece.take(slice(i, i + step)).astype(torch.float64).self_gram()
                for i in range(0, len(piece), step)
            ]
        )
    return G


def map_pieces(
    pieces: list,
    G: np.ndarray,
    power: float | None,
    rtol: float,
    found: FlaggedRows | None = None,
    rows=None,
    decomposition: tuple[np.ndarray, ...] | None = None,
) -> list:
    """Pieces of ``G^power J`` (``power=None`` leaves them as they are).

    They replace those of ``J`` in ``pieces`` one by one, so that a batch's
    Jacobians are held once, not twice; ``pieces`` is returned. The power
    is taken from ``decomposition``, :func:`~.normalize.floored_eigh` of
    ``G`` when it is known; otherwise the ill-conditioned Grams ``G`` are
    first formed again in float64, in place, and decomposed (see
    :func:`refined_eigh`). Dead and near-singular samples are recorded in
    ``found`` (see :func:`~.normalize.decomposed_power`).
    """
    dtype = pieces[0].signal.dtype
    if power is None:
        diagonal = np.diagonal(G, axis1=1, axis2=2)
        _check_range(diagonal[diagonal > 0], dtype)  # the products of pairs
        return pieces
    if decomposition is None:
        decomposition = refined_eigh(G, pieces, rtol)
    W = decomposed_power(decomposition, power, found, rows)
    scale = np.abs(W).max(axis=(1, 2))
    _check_range(scale[scale > 0], dtype)  # the map's entries
    W = torch.from_numpy(W).to(pieces[0].signal)
    for i, piece in enumerate(pieces):
        pieces[i] = piece.transform(W)
    return pieces


def refined_eigh(G: np.ndarray, pieces: list, rtol: float) -> tuple[np.ndarray, ...]:
    """:func:`~.normalize.floored_eigh` of the Grams ``G`` of ``pieces``, refined.

    Grams of pieces below float64 whose condition number passes
    :data:`COND_FLOAT64` are formed again in float64, in ``G`` itself, and
    decomposed again: float32 rounding of ``J J^T`` moves its powers by about
    ``cond(G)`` times its resolution.
    """
    decomposition = floored_eigh(G, rtol)
    if pieces[0].signal.dtype == torch.float64:
        return decomposition
    lam = decomposition[0]
    ill = np.flatnonzero(lam[:, -1] > COND_FLOAT64 * np.maximum(lam[:, 0], 0))
    ill = ill[lam[ill, -1] > 0]  # not dead
    if len(ill):
        chosen = torch.as_tensor(ill, device=pieces[0].signal.device)
        G[ill] = float64_gram([p.take(chosen) for p in pieces]).cpu().numpy()
        redone = floored_eigh(G[ill], rtol)
        for part, again in zip(decomposition, redone, strict=True):
            part[ill] = again
    return decomposition


def _check_range(values: np.ndarray, dtype: torch.dtype) -> None:
    """Raise when ``values`` leave :data:`FLOAT32_RANGE` for pieces below float64."""
    low, high = FLOAT32_RANGE
    if dtype != torch.float64 and ((values < low) | (values > high)).any():
        raise out_of_range(dtype)


def out_of_range(dtype: torch.dtype) -> FloatingPointError:
    """The error of products of gradients that leave the range of ``dtype``."""
    return FloatingPointError(
        f"Products of the network's gradients leave the range of {dtype} "
        "(squared gradients beyond about 1e36 or below 1e-36, or their inverses): "
        "compute in float64 (the network in float64, net.double(), with float64 "
        "inputs), or scale the network's outputs."
    )
