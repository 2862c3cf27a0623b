"""Helpers shared by the engine tests."""

import numpy as np

from sksim._engine.gram import NTKReference, symmetrize
from sksim._engine.jacobian import JacobianEngine


def smallest_fitting_engine(module, X):
    """An engine whose max_memory, a power of 2, is the least that one sample fits."""
    max_memory = 3
    while True:
        engine = JacobianEngine(module, batch_size=4, max_memory=max_memory)
        try:
            sizes = [rows.stop - rows.start for rows, _ in engine.pieces(X)]
            return engine, sizes
        except MemoryError as error:
            assert "pieces of a single sample take more" in str(error)
            max_memory *= 2


def ntk_blocks(engine, X, Y=None, max_memory=None):
    """NTK blocks of all pairs and the per-sample Grams, float64 on the CPU.

    Returns ``K`` ``(n, m, d, d)`` (exactly symmetric when ``Y`` is None),
    ``G_x`` ``(n, d, d)`` and ``G_y`` ``(m, d, d)``.
    """
    reference = NTKReference(engine, X if Y is None else Y, max_memory, Y is not None)
    blocks = list(reference.self_rows() if Y is None else reference.rows(X))
    K = np.concatenate([B for _, B, _ in blocks])
    if Y is None:
        symmetrize(K)
    return K, np.concatenate([G for _, _, G in blocks]), reference.gram
