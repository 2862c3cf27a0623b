"""Per-sample gradient features whose inner products are the kernel.

``A(x) = (J J^T)^{-1/2} J`` is the whitened Jacobian. Exact features
are the ``p`` columns of ``A`` (or ``J``); with ``n_components=k`` they are
sketched layer by layer to about ``k`` columns (see ``sketch``), never forming
``A`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from sklearn.utils import check_random_state

from .budget import readable_bytes, rows_that_fit
from .finite import NonFiniteNetworkError
from .flags import FlaggedRows, flag_scope
from .inputs import n_samples, take
from .jacobian import JacobianEngine
from .pieces import DensePiece, gram_of, in_common_dtype, map_pieces
from .sketch import gradient_sketch
from .transfer import copy_to_host


def whitened_jacobians(
    engine: JacobianEngine, X, rtol: float = 1e-5
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, A)`` with ``A = (J J^T)^{-1/2} J`` of shape ``(b, d, p)``.

    Rows of ``A(x)`` are orthonormal, so ``tr(A(x) A(y)^T) / d`` is the cosine
    kernel; a zero gradient gives ``A = 0``.
    """
    found = FlaggedRows()
    for rows, J in engine.jacobians(X):
        (J,) = in_common_dtype([DensePiece(J)])
        G = gram_of([J]).double().cpu().numpy()
        (A,) = map_pieces([J], G, -0.5, rtol, found, rows)
        yield rows, A.grad
    found.report()


ENERGY_ROWS = 64  # examples the pieces' energies are measured on, at most

# What a sample's sketch holds while it is made, in its d x n_components
# values of 8 bytes (a TensorSketch's complex64 FFTs): the sketches of its
# factors, their FFTs and product, the inverse, the joined pieces and the
# float32 copy
SKETCH_COPIES = 6


def piece_energies(
    engine: JacobianEngine, X, seed: int, rtol: float = 1e-5
) -> np.ndarray:
    """Mean squared norm of each whitened piece, over examples of ``X``.

    Measured on :data:`ENERGY_ROWS` examples drawn at random (all of them
    when there are no more); the pieces' energies add up to ``d`` per
    example. A piece sketched to ``k`` columns adds a variance of order
    ``energy^2 / k`` to the sketch's inner products, so columns in proportion
    to the energies (the ``weights`` of :class:`~sksim._engine.sketch.GradientSketch`)
    minimise the total.
    """
    n = n_samples(X)
    rows = np.arange(n)
    if n > ENERGY_ROWS:
        rows = np.sort(check_random_state(seed).choice(n, ENERGY_ROWS, replace=False))
    total = 0.0
    try:
        with flag_scope(report=False):  # the pass over X reports them
            for _, pieces, _ in engine.mapped_pieces(take(X, rows), -0.5, rtol, False):
                grams = [piece.self_gram() for piece in pieces]
                total = total + np.array(
                    [g.diagonal(0, 1, 2).sum().item() for g in grams]
                )
    except NonFiniteNetworkError as error:  # named by X's rows
        raise error.moved(rows) from None
    return total / len(rows)


def gradient_features(
    engine: JacobianEngine,
    X,
    n_components: int | None = None,
    whiten: bool = True,
    seed: int = 0,
    rtol: float = 1e-5,
    power: float | None = None,
    each_batch: Callable[[slice, list], None] | None = None,
    unit_norm: bool = False,
    directions: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Per-sample gradient features ``(n, d, k)`` as a float32 NumPy array.

    ``tr(F(x) F(y)^T) / d`` is the cosine kernel (``whiten=True``) or the NTK
    (``whiten=False``): exactly when ``n_components`` is None (``k = p``), and
    in expectation, with error of order ``1/sqrt(k)``, otherwise. Equal
    ``seed`` values give equal sketches. ``power``, if given, replaces the
    whitening by ``(J J^T)^power J`` (``-1`` for the left side of the
    influence kernel). ``each_batch``, if given, is called with the rows
    and mapped pieces of every batch of sketched features, so that another
    computation shares their pass over ``X``. ``unit_norm`` scales every
    sample's sketched features to unit Frobenius norm, batch by batch (zero
    features stay zero). ``directions`` ``(d * k, m)``, if given, project
    every batch's flattened sketched features onto their ``m`` columns, so
    that only ``(n, m)`` values are kept. ``weights`` share the sketch's
    columns among the pieces (see :class:`~sksim._engine.sketch.GradientSketch`).
    ``out``, if given, receives the features (each row's values in its own
    shape, e.g. flattened) and is returned.

    Raises
    ------
    MemoryError
        If exact features (``n d p`` float32 numbers) would pass the engine's
        ``max_memory``.
    """
    if power is None and whiten:
        power = -0.5
    if n_components is None and power in (None, -0.5):
        if each_batch is not None or unit_norm or directions is not None:
            raise ValueError(
                "each_batch, unit_norm and directions need sketched features "
                "(n_components)."
            )
        n, d = n_samples(X), engine.n_outputs(X)
        size = 4 * n * d * engine.n_params
        if size > engine.max_memory:
            raise MemoryError(
                f"Exact gradient features of {n} samples x {d} outputs x "
                f"{engine.n_params} parameters take {readable_bytes(size)}, more "
                f"than max_memory ({engine.max_memory} bytes): sketch them with "
                "n_components=, select fewer parameters (params=) or outputs "
                "(output=), pass fewer samples, or raise max_memory."
            )
        blocks = whitened_jacobians(engine, X, rtol) if power else engine.jacobians(X)
        return _stacked(blocks, n_samples(X), out=out)
    weights = None if weights is None else tuple(float(w) for w in weights)
    sketch = gradient_sketch(n_components, seed, weights)
    width = engine.n_params if n_components is None else n_components
    budget = engine.max_memory / 3

    def blocks():
        for rows, pieces, _ in engine.mapped_pieces(X, power, rtol):
            if each_batch is not None:
                each_batch(rows, pieces)
            # a few samples at a time: their sketches' intermediates fit
            d, n = pieces[0].signal.shape[1], rows.stop - rows.start
            step = rows_that_fit(budget, SKETCH_COPIES * 8 * d * width, n)
            for start in range(0, n, step):
                part = slice(start, min(start + step, n))
                chunk = [piece.take(part) for piece in pieces]
                part = slice(rows.start + part.start, rows.start + part.stop)
                yield part, sketch.features(chunk, budget)

    return _stacked(blocks(), n_samples(X), unit_norm, directions, out)


def _stacked(
    blocks: Iterator[tuple[slice, torch.Tensor]],
    n: int,
    unit_norm: bool = False,
    directions: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The ``(rows, tensor)`` blocks of ``n`` rows, copied into one float32 array.

    ``unit_norm`` divides each row of a block by its norm where it is not
    zero; ``directions`` then project its flattened rows onto their columns.
    Into ``out`` if given, each row in its shape.
    """
    for rows, block in blocks:
        block = block.float()
        if unit_norm:
            flat = block.flatten(1)
            norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
            block = (flat / torch.where(norms > 0, norms, 1.0)).view_as(block)
        if directions is not None:
            block = block.flatten(1) @ torch.from_numpy(directions).to(block)
        if out is None:
            out = np.empty((n, *block.shape[1:]), dtype=np.float32)
        copy_to_host(out[rows], block.reshape(len(block), *out.shape[1:]))
    return out
