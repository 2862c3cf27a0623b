"""Random projections of per-sample gradients, built from layer pieces.

Each piece's gradient is sketched without forming the ``N x p`` matrix:

* a gradient of ``q`` values with ``k_l >= q / 2`` and ``q k_l`` small enough
  (``MAX_ORTHOGONAL``), where a sketch would waste most of its budget, is
  projected onto a random ``k_l``-dimensional subspace (orthonormal columns
  scaled by ``sqrt(q / k_l)``): unbiased, and its error vanishes as ``k_l``
  approaches ``q``;
* a larger dense gradient ``g`` (``q`` values per output row) by a CountSketch: every
  coordinate is added, with a random sign, to one of ``k_l`` random buckets;
* a linear layer's or an embedding's weight gradient ``sum_u delta(u) h(u)^T``
  by a TensorSketch (Pham and Pagh, 2013): the circular convolution of
  CountSketches of ``delta(u)`` and ``h(u)``, computed with FFTs and summed
  over positions, which is the CountSketch of the outer product under a hash
  built from the two, in :func:`fft_length` buckets; an Embedding's token ids
  stand for one-hot inputs ``h(u)``, whose CountSketch is one signed bucket.
  So does a convolution's of more than ``TENSOR_SKETCH_MIN`` parameters.
  Materialised (on inputs of many positions), the same gradient takes the same
  CountSketch under that hash, so that the two forms pair. A smaller
  convolution's takes a CountSketch of its gradient in both forms (its factors
  materialised a few samples at a time), whose error is smaller (half, on a
  small convolution's gradients).

The sketches preserve inner products in expectation, with variance of order
``(|g|^2 |g'|^2 + (g . g')^2) / k_l`` (times ``1 - k_l / q`` for the subspace
projection). Pieces no larger than their share of ``n_components`` are kept
exactly (see :func:`allocate`). The shares are equal, or in proportion to the
pieces' mean ``|g|^2`` (their energies) where those were measured: the split
that minimises the summed variance.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .pieces import DensePiece, SharedWeightPiece, materialize

MAX_ORTHOGONAL = 2**24  # entries of a q x k subspace projection worth building


def _size(piece) -> int:
    if isinstance(piece, DensePiece):
        return piece.grad.shape[2]
    return piece.width


def allocate(
    sizes: list[int], n_components: int, weights: Sequence[float] | None = None
) -> list[int]:
    """Split ``n_components`` over pieces by water-filling.

    Every piece gets columns in proportion to its weight (the same number
    without ``weights``), except those smaller than their share, which are
    kept exactly; what they leave is shared among the others. Shares are
    rounded down, the columns left over going one each to the largest
    fractions (ties: to the largest pieces). A sketched piece gets one column
    at least, taken from the widest sketched share, else from the widest
    piece kept exactly (ties: the first), so that they add up to
    ``n_components`` whatever the weights: fewer only when every piece is
    kept exactly, more only when there are more pieces (one each). Pieces
    whose weights sum to zero (all of them, or those left once the others
    are kept exactly) share equally.
    """
    w = np.ones(len(sizes)) if weights is None else np.array(weights, float)
    shares, budget, left = [0] * len(sizes), n_components, list(range(len(sizes)))
    while left:
        if not w[left].sum() > 0:
            w[left] = 1.0
        level = budget / w[left].sum()
        exact = [i for i in left if sizes[i] <= level * w[i]]
        if not exact:
            break
        for i in exact:
            shares[i] = sizes[i]
            budget -= sizes[i]
        left = [i for i in left if i not in exact]
    if left:
        ideal = {i: level * w[i] for i in left}
        for i in left:
            shares[i] = int(ideal[i])
        extra = budget - sum(shares[i] for i in left)
        by_fraction = sorted(left, key=lambda i: (shares[i] - ideal[i], -sizes[i], -i))
        for i in by_fraction[: max(0, extra)]:
            shares[i] += 1
        for i in [i for i in left if shares[i] == 0]:
            shares[i] = 1
            for donors in (left, range(len(sizes))):
                widest = max(donors, key=lambda j: (shares[j], -j))
                if shares[widest] > 1:
                    shares[widest] -= 1
                    break
    return shares


def fft_length(k: int) -> int:
    """The largest ``2^a 3^b 5^c`` up to ``k``: a TensorSketch's number of buckets.

    FFTs of such lengths are fast; a large prime factor (``186 = 2 x 3 x
    31``) made them twice as slow. Rounding down leaves at most a tenth of
    the piece's ``k`` columns zero (6 of 186).
    """
    best, power2 = 1, 1
    while power2 <= k:
        power3 = power2
        while power3 <= k:
            power5 = power3
            while power5 <= k:
                best = max(best, power5)
                power5 *= 5
            power3 *= 3
        power2 *= 2
    return best


class CountSketch:
    """A bucket (of ``k``) and a sign per coordinate of a vector."""

    def __init__(self, bucket: torch.Tensor, sign: torch.Tensor, k: int):
        self.bucket, self.sign, self.k = bucket, sign, k

    @classmethod
    def drawn(
        cls, q: int, k: int, generator: torch.Generator, like: torch.Tensor
    ) -> CountSketch:
        """Random buckets and signs of a ``q``-vector, as ``like``'s dtype."""
        bucket = torch.randint(0, k, (q,), generator=generator, device="cpu").to(
            like.device
        )
        sign = torch.randint(0, 2, (q,), generator=generator, device="cpu") * 2 - 1
        return cls(bucket, sign.to(like), k)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Sketch the last axis of ``v``."""
        out = v.new_zeros(*v.shape[:-1], self.k)
        return out.index_add_(-1, self.bucket, v * self.sign)

    def one_hot(self, ids: torch.Tensor) -> torch.Tensor:
        """Sketch the one-hot vectors of the integer ``ids``, ``(*ids.shape, k)``."""
        out = self.sign.new_zeros(*ids.shape, self.k)
        return out.scatter_(-1, self.bucket[ids, None], self.sign[ids, None])


class TensorSketch:
    """TensorSketch of a weight's gradient ``o x a``, factorised or materialised.

    Of factors ``sum_u delta(u) h(u)^T``: the circular convolutions of the
    sketched factors, through FFTs. Materialised, the same sketch: the
    CountSketch of its ``o a`` values whose bucket of ``(i, j)`` is the sum of
    the factors' buckets, modulo their number, and whose sign is their product.
    Of ``width`` columns, the last ``width - buckets`` zero.
    """

    def __init__(
        self, o: int, a: int, width: int, generator: torch.Generator, like: torch.Tensor
    ):
        buckets = fft_length(width)  # a fast FFT length
        self.rows = CountSketch.drawn(o, buckets, generator, like)
        self.columns = CountSketch.drawn(a, buckets, generator, like)
        self.width = width
        self._flat = None  # the materialised form's CountSketch, when needed

    def _pad(self, sketched: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(sketched, (0, self.width - self.rows.k))

    def factorised(self, piece: SharedWeightPiece) -> torch.Tensor:
        """Sketches ``(b, d, width)`` of a piece's factors."""
        if piece.tokens:
            h = self.columns.one_hot(piece.h)
        else:
            h = self.columns(piece.inputs)
        spectrum = torch.einsum(
            "bctf,btf->bcf",
            torch.fft.rfft(self.rows(piece.delta), dim=-1),
            torch.fft.rfft(h, dim=-1),
        )
        return self._pad(torch.fft.irfft(spectrum, n=self.rows.k, dim=-1))

    def materialised(self, grad: torch.Tensor) -> torch.Tensor:
        """Sketches ``(b, d, width)`` of gradients ``(b, d, o a)``, row by row."""
        if self._flat is None:
            rows, columns = self.rows, self.columns
            self._flat = CountSketch(
                (rows.bucket[:, None] + columns.bucket).flatten() % rows.k,
                (rows.sign[:, None] * columns.sign).flatten(),
                rows.k,
            )
        return self._pad(self._flat(grad))


class SubspaceProjection:
    """Projection onto a random ``k``-dimensional subspace of ``R^q``, unbiased."""

    def __init__(self, q: int, k: int, generator: torch.Generator, like: torch.Tensor):
        gaussian = torch.randn(
            q, k, generator=generator, device="cpu", dtype=torch.float64
        )
        basis, _ = torch.linalg.qr(gaussian)
        self.matrix = (basis * (q / k) ** 0.5).to(like)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Project the last axis of ``v``."""
        return v @ self.matrix


def _factors(piece) -> tuple[int, int] | None:
    """``(o, a)`` of a piece's weight ``o x a``, if a TensorSketch takes it."""
    if isinstance(piece, DensePiece):
        return piece.factors
    if not piece.tensor_sketch:
        return None
    o = piece.delta.shape[3]
    return o, piece.width // o


def _materialised(piece: SharedWeightPiece, sketch, max_bytes: float) -> torch.Tensor:
    """``sketch`` of a piece's gradients, materialised a few at a time.

    Each chunk of samples, or of one sample's outputs, holds ``max_bytes`` of
    gradients at most (one output's at least).
    """
    b, d = piece.delta.shape[:2]
    one = piece.delta.element_size() * _size(piece)  # a sample's output's
    outputs = int(min(d, max(1, max_bytes / one)))  # inf / one is inf, // NaN
    samples = int(min(b, max(1, max_bytes / (one * d)))) if outputs == d else 1
    rows = []
    for start in range(0, b, samples):
        part = piece.take(slice(start, start + samples))
        columns = []
        for first in range(0, d, outputs):
            delta = part.delta[:, first : first + outputs]
            grad = materialize(part.dense_inputs, delta, tensor_sketch=False).grad
            columns.append(grad if sketch is None else sketch(grad))
        rows.append(torch.cat(columns, dim=1))
    return torch.cat(rows)


_SHARED = threading.local()  # the sketches of the current shared_sketches block


@contextlib.contextmanager
def shared_sketches() -> Iterator[None]:
    """A block in which :func:`gradient_sketch` gives one sketch per arguments.

    Rows sketched in chunks (within ``max_memory``) then draw their maps
    once, not once a chunk (a subspace projection's QR took 0.4 s a chunk);
    the maps are freed when the outermost block ends. One thread's blocks
    share nothing with another's.
    """
    outer = getattr(_SHARED, "sketches", None)
    if outer is None:
        _SHARED.sketches = {}
    try:
        yield
    finally:
        if outer is None:
            _SHARED.sketches = None


def gradient_sketch(
    n_components: int | None, seed: int, weights: tuple[float, ...] | None = None
) -> GradientSketch:
    """A :class:`GradientSketch`; the same one in a :func:`shared_sketches` block."""
    sketches = getattr(_SHARED, "sketches", None)
    if sketches is None:
        return GradientSketch(n_components, seed, weights)
    key = n_components, seed, weights
    if key not in sketches:
        sketches[key] = GradientSketch(n_components, seed, weights)
    return sketches[key]


class GradientSketch:
    """The projection of a network's layer pieces to ``n_components`` columns.

    Parameters
    ----------
    n_components : int or None
        None keeps every piece exactly.
    seed : int
        Seeds every hash, so equal seeds and weights sketch alike.
    weights : sequence of float or None, default=None
        The pieces' weights in :func:`allocate` (their energies, from
        :func:`~sksim._engine.features.piece_energies`); None shares the
        columns equally.
    """

    def __init__(
        self,
        n_components: int | None,
        seed: int,
        weights: Sequence[float] | None = None,
    ):
        self.n_components = n_components
        self.seed = seed
        self.weights = weights
        self._built = None  # (the pieces' form, their maps, their columns)

    @staticmethod
    def _form(pieces: list) -> tuple:
        """What the maps depend on: each piece's size, factors, dtype and device.

        Not whether it comes factorised, nor whether its layer ran: a layer's
        gradients sketch alike whatever form they take (inputs of other sizes
        than the reference's may take the other, or run other layers), or they
        would not pair.
        """
        return tuple(
            (_size(p), _factors(p), p.signal.dtype, p.signal.device) for p in pieces
        )

    def _build(self, pieces: list) -> tuple[list, list[int]]:
        """The pieces' maps (None: kept as they are) and their numbers of columns."""
        generator = torch.Generator().manual_seed(self.seed)
        sizes = [_size(p) for p in pieces]
        if self.n_components is None:
            return [None] * len(pieces), sizes
        shares = allocate(sizes, self.n_components, self.weights)
        maps = []
        for piece, k in zip(pieces, shares, strict=True):
            like = piece.signal
            q = _size(piece)
            if k >= q:
                maps.append(None)
            elif 2 * k >= q and q * k <= MAX_ORTHOGONAL:
                maps.append(SubspaceProjection(q, k, generator, like))
            elif _factors(piece) is None:
                maps.append(CountSketch.drawn(q, k, generator, like))
            else:
                maps.append(TensorSketch(*_factors(piece), k, generator, like))
        return maps, shares

    def features(self, pieces: list, max_bytes: float = float("inf")) -> torch.Tensor:
        """Sketched gradients ``(b, d, k)`` of a batch's pieces.

        The maps are drawn for the first batch, and again only for pieces of
        another form (another network; threads may share the sketch). Factors
        that a CountSketch takes are materialised ``max_bytes`` at a time.
        """
        form, built = self._form(pieces), self._built
        if built is None or built[0] != form:
            built = self._built = form, *self._build(pieces)
        _, maps, shares = built
        parts = []
        for piece, sketch, k in zip(pieces, maps, shares, strict=True):
            if _idle(piece):  # zeros, of its share of the columns
                parts.append(piece.signal.new_zeros(*piece.signal.shape[:2], k))
            else:
                parts.append(_sketched(piece, sketch, max_bytes))
        return torch.cat(parts, dim=2)


def _idle(piece) -> bool:
    """Whether ``piece`` is that of a layer that did not run (no positions)."""
    return isinstance(piece, SharedWeightPiece) and not piece.delta.shape[2]


def _sketched(piece, sketch, max_bytes: float) -> torch.Tensor:
    """``sketch`` (None: the identity) of a piece's gradients, ``(b, d, k)``."""
    if isinstance(sketch, TensorSketch):
        if isinstance(piece, DensePiece):
            return sketch.materialised(piece.grad)
        return sketch.factorised(piece)
    if isinstance(piece, SharedWeightPiece):
        return _materialised(piece, sketch, max_bytes)
    return piece.grad if sketch is None else sketch(piece.grad)
