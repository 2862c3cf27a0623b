"""NTK blocks ``J(x_i) J(y_j)^T`` of two sets of inputs, in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .inputs import n_samples
from .jacobian import JacobianEngine

DEFAULT_MAX_MEMORY = 2 * 2**30


def _pairs(J_x: torch.Tensor, J_y: torch.Tensor) -> np.ndarray:
    return torch.einsum("adp,bep->abde", J_x, J_y).double().cpu().numpy()


def _diagonal(J: torch.Tensor) -> np.ndarray:
    return torch.einsum("adp,aep->ade", J, J).double().cpu().numpy()


class NTKReference:
    """A reference set ``Y`` prepared for streaming NTK rows against it.

    Parameters
    ----------
    engine : JacobianEngine
    Y : network inputs
    max_memory : int
        Bytes the cached Jacobians of ``Y`` may take; past it they are
        recomputed for every block of query rows.

    Attributes
    ----------
    gram : ndarray of shape (m, d, d)
        ``J(y_j) J(y_j)^T``, float64.
    """

    def __init__(self, engine: JacobianEngine, Y, max_memory: int = DEFAULT_MAX_MEMORY):
        self.engine = engine
        self.Y = Y
        self.n_samples = n_samples(Y)
        self.n_outputs = engine.n_outputs(Y)
        itemsize = torch.empty((), dtype=engine.dtype).element_size()
        per_sample = self.n_outputs * engine.n_params * itemsize
        self._J = None
        if self.n_samples * per_sample <= max_memory:
            self._J = engine.jacobian(Y)
            self.gram = _diagonal(self._J)
        else:
            self.gram = np.concatenate(
                [_diagonal(J) for _, J in engine.jacobians(Y, progress=False)]
            )

    def _against(self, J_x: torch.Tensor) -> np.ndarray:
        if self._J is not None:
            return _pairs(J_x, self._J)
        return np.concatenate(
            [_pairs(J_x, J) for _, J in self.engine.jacobians(self.Y, progress=False)],
            axis=1,
        )

    def rows(self, X) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield ``(rows, K, G)`` for blocks of query rows of ``X``.

        ``K`` has shape ``(b, m, d, d)`` (``J(x_i) J(y_j)^T``) and ``G`` shape
        ``(b, d, d)`` (``J(x_i) J(x_i)^T``), both float64 on the CPU.
        """
        for rows, J_x in self.engine.jacobians(X):
            yield rows, self._against(J_x), _diagonal(J_x)

    def self_rows(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Like ``rows(Y)`` but reusing the cached Jacobians of ``Y`` if any."""
        if self._J is None:
            yield from self.rows(self.Y)
            return
        for start in range(0, self.n_samples, self.engine.batch_size):
            rows = slice(start, min(start + self.engine.batch_size, self.n_samples))
            yield rows, _pairs(self._J[rows], self._J), self.gram[rows]


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
        Memory bound of :class:`NTKReference`.

    Returns
    -------
    K : ndarray of shape (n, m, d, d)
        ``J(x_i) J(y_j)^T``.
    G_x, G_y : ndarray of shape (n, d, d) and (m, d, d)
        ``J(x_i) J(x_i)^T`` and ``J(y_j) J(y_j)^T``.
    """
    symmetric = Y is None
    reference = NTKReference(engine, X if symmetric else Y, max_memory)
    d = reference.n_outputs
    n = n_samples(X)
    K = np.empty((n, reference.n_samples, d, d))
    G_x = np.empty((n, d, d))
    blocks = reference.self_rows() if symmetric else reference.rows(X)
    for rows, K_rows, G_rows in blocks:
        K[rows] = K_rows
        G_x[rows] = G_rows
    if symmetric:
        K = 0.5 * (K + K.transpose(1, 0, 3, 2))
    return K, G_x, reference.gram
