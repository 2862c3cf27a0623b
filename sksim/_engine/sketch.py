"""Random projections of per-sample gradients, built from layer pieces.

Each piece's gradient is sketched without forming the ``N x p`` matrix:

* a gradient of ``q`` values with ``k_l >= q / 2`` and ``q k_l`` small enough
  (``MAX_ORTHOGONAL``), where a sketch would waste most of its budget, is
  projected onto a random ``k_l``-dimensional subspace (orthonormal columns
  scaled by ``sqrt(q / k_l)``): unbiased, and its error vanishes as ``k_l``
  approaches ``q``;
* a larger dense gradient ``g`` (``q`` values per output row) by a CountSketch: every
  coordinate is added, with a random sign, to one of ``k_l`` random buckets;
* a shared weight gradient ``sum_u delta(u) h(u)^T`` by a TensorSketch (Pham and
  Pagh, 2013): the circular convolution of CountSketches of ``delta(u)`` and
  ``h(u)``, computed with FFTs and summed over positions, which is the
  CountSketch of the outer product under a hash built from the two; an
  Embedding's token ids stand for one-hot inputs ``h(u)``, whose CountSketch
  is one signed bucket.

The sketches preserve inner products in expectation, with variance of order
``(|g|^2 |g'|^2 + (g . g')^2) / k_l`` (times ``1 - k_l / q`` for the subspace
projection). Pieces no larger than their share of
``n_components`` are kept exactly (see :func:`allocate`).
"""

from __future__ import annotations

import torch

from .pieces import DensePiece, SharedWeightPiece, materialize

MAX_ORTHOGONAL = 2**24  # entries of a q x k subspace projection worth building


def _size(piece) -> int:
    if isinstance(piece, DensePiece):
        return piece.grad.shape[2]
    return piece.width


def allocate(sizes: list[int], n_components: int) -> list[int]:
    """Split ``n_components`` over pieces by water-filling.

    Every piece gets the same number of columns, except those smaller than
    that level, which are kept exactly (biases, small layers); what they leave
    is shared among the others, the largest pieces taking the remainder, so
    the shares add up to ``n_components`` unless every piece is kept exactly.
    """
    shares = [0] * len(sizes)
    budget, left = n_components, sorted(range(len(sizes)), key=sizes.__getitem__)
    while left:
        level = max(1, budget // len(left))
        if sizes[left[0]] > level:
            extra = max(0, budget - level * len(left))
            for rank, i in enumerate(reversed(left)):
                shares[i] = level + (rank < extra)
            break
        first = left.pop(0)
        shares[first] = sizes[first]
        budget -= sizes[first]
    return shares


class CountSketch:
    """Random bucket and sign per coordinate of a ``q``-vector, ``k`` buckets."""

    def __init__(self, q: int, k: int, generator: torch.Generator, like: torch.Tensor):
        self.k = k
        self.bucket = torch.randint(0, k, (q,), generator=generator).to(like.device)
        sign = torch.randint(0, 2, (q,), generator=generator) * 2 - 1
        self.sign = sign.to(like)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Sketch the last axis of ``v``."""
        out = v.new_zeros(*v.shape[:-1], self.k)
        return out.index_add_(-1, self.bucket, v * self.sign)

    def one_hot(self, ids: torch.Tensor) -> torch.Tensor:
        """Sketch the one-hot vectors of the integer ``ids``, ``(*ids.shape, k)``."""
        out = self.sign.new_zeros(*ids.shape, self.k)
        return out.scatter_(-1, self.bucket[ids, None], self.sign[ids, None])


class SubspaceProjection:
    """Projection onto a random ``k``-dimensional subspace of ``R^q``, unbiased."""

    def __init__(self, q: int, k: int, generator: torch.Generator, like: torch.Tensor):
        gaussian = torch.randn(q, k, generator=generator, dtype=torch.float64)
        basis, _ = torch.linalg.qr(gaussian)
        self.matrix = (basis * (q / k) ** 0.5).to(like)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Project the last axis of ``v``."""
        return v @ self.matrix


class GradientSketch:
    """The projection of a network's layer pieces to about ``n_components`` columns.

    Parameters
    ----------
    n_components : int or None
        None keeps every piece exactly.
    seed : int
        Seeds every hash, so equal seeds sketch alike.
    """

    def __init__(self, n_components: int, seed: int):
        self.n_components = n_components
        self.seed = seed
        self._maps = None

    def _build(self, pieces: list) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        sizes = [_size(p) for p in pieces]
        exact = self.n_components is None
        shares = sizes if exact else allocate(sizes, self.n_components)
        self._maps = []
        for piece, k in zip(pieces, shares, strict=True):
            like = piece.signal
            q = _size(piece)
            if k >= q:
                self._maps.append(None)
            elif 2 * k >= q and q * k <= MAX_ORTHOGONAL:
                self._maps.append(SubspaceProjection(q, k, generator, like))
            elif isinstance(piece, DensePiece):
                self._maps.append(CountSketch(_size(piece), k, generator, like))
            else:
                o = piece.delta.shape[3]
                a = piece.width // o
                self._maps.append(
                    (
                        CountSketch(o, k, generator, like),
                        CountSketch(a, k, generator, like),
                    )
                )

    def features(self, pieces: list) -> torch.Tensor:
        """Sketched gradients ``(b, d, k)`` of a batch's pieces."""
        if self._maps is None:
            self._build(pieces)
        parts = []
        for piece, sketch in zip(pieces, self._maps, strict=True):
            if isinstance(piece, SharedWeightPiece) and not isinstance(sketch, tuple):
                piece = materialize(piece.dense_inputs, piece.delta)
            if isinstance(piece, DensePiece):
                parts.append(piece.grad if sketch is None else sketch(piece.grad))
            else:
                sketch_delta, sketch_h = sketch
                k = sketch_delta.k
                if piece.tokens:
                    h = sketch_h.one_hot(piece.h)
                else:
                    h = sketch_h(piece.inputs)
                spectrum = torch.einsum(
                    "bctf,btf->bcf",
                    torch.fft.rfft(sketch_delta(piece.delta), dim=-1),
                    torch.fft.rfft(h, dim=-1),
                )
                parts.append(torch.fft.irfft(spectrum, n=k, dim=-1))
        return torch.cat(parts, dim=2)
