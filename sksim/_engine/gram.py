"""NTK blocks ``J(x_i) J(y_j)^T`` of two sets of inputs, in bounded memory."""

from __future__ import annotations

import numpy as np
import torch

from .inputs import n_samples
from .jacobian import JacobianEngine

DEFAULT_MAX_MEMORY = 2 * 2**30


def _pairs(J_x: torch.Tensor, J_y: torch.Tensor) -> np.ndarray:
    return torch.einsum("adp,bep->abde", J_x, J_y).double().cpu().numpy()


def _diagonal(J: torch.Tensor) -> np.ndarray:
    return torch.einsum("adp,aep->ade", J, J).double().cpu().numpy()


def ntk_blocks(
    engine: JacobianEngine, X, Y=None, max_memory: int = DEFAULT_MAX_MEMORY
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NTK blocks of all pairs and the per-sample Grams, float64 on the CPU.

    Parameters
    ----------
    engine : JacobianEngine
    X, Y : network inputs
        ``Y=None`` means ``Y = X``; the result is then exactly symmetric.
    max_memory : int
        Bytes the cached Jacobians of ``Y`` may take; past it they are
        recomputed for every block of rows of ``X``.

    Returns
    -------
    K : ndarray of shape (n, m, d, d)
        ``J(x_i) J(y_j)^T``.
    G_x, G_y : ndarray of shape (n, d, d) and (m, d, d)
        ``J(x_i) J(x_i)^T`` and ``J(y_j) J(y_j)^T``.
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    n, m = n_samples(X), n_samples(Y)
    d = engine.n_outputs(X)
    itemsize = torch.empty((), dtype=engine.dtype).element_size()
    keep_y = m * d * engine.n_params * itemsize <= max_memory
    K = np.empty((n, m, d, d))
    G_x = np.empty((n, d, d))
    if keep_y:
        J_y = engine.jacobian(Y)
        G_y = _diagonal(J_y)
        if symmetric:
            for start in range(0, n, engine.batch_size):
                rows = slice(start, min(start + engine.batch_size, n))
                K[rows] = _pairs(J_y[rows], J_y)
            G_x = G_y
        else:
            for rows, J_x in engine.jacobians(X):
                K[rows] = _pairs(J_x, J_y)
                G_x[rows] = _diagonal(J_x)
    else:
        G_y = np.empty((m, d, d))
        for rows, J_x in engine.jacobians(X):
            G_x[rows] = _diagonal(J_x)
            for cols, J_c in engine.jacobians(Y, progress=False):
                K[rows, cols] = _pairs(J_x, J_c)
                G_y[cols] = _diagonal(J_c)
        if symmetric:
            G_y = G_x
    if symmetric:
        K = 0.5 * (K + K.transpose(1, 0, 3, 2))
    return K, G_x, G_y
