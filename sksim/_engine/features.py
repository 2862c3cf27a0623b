"""Per-sample gradient features whose inner products are the kernel.

``A(x) = (J J^T)^{-1/2} J`` (SPEC 1.1) is the whitened Jacobian; with
``n_components=k`` it is sketched to ``k`` columns by a Gaussian random
projection ``R`` (``E[R R^T] = I``), generated in blocks of parameters from
``random_state`` so that the ``p x k`` matrix need not fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.utils import check_random_state

from .inputs import n_samples
from .jacobian import JacobianEngine
from .normalize import gram_power

PROJECTION_BLOCK = 2**15  # parameters per block of the random projection
MAX_CACHED_PROJECTION = 2**29  # bytes of projection matrix kept between batches


def whitened_jacobians(
    engine: JacobianEngine, X, rtol: float = 1e-5
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, A)`` with ``A = (J J^T)^{-1/2} J`` of shape ``(b, d, p)``.

    Rows of ``A(x)`` are orthonormal, so ``tr(A(x) A(y)^T) / d`` is the cosine
    kernel; a zero gradient gives ``A = 0``.
    """
    for rows, J in engine.jacobians(X):
        G = torch.einsum("adp,aep->ade", J, J).double().cpu().numpy()
        W = torch.as_tensor(gram_power(G, -0.5, rtol), dtype=J.dtype, device=J.device)
        yield rows, W @ J


class GaussianProjection:
    """A ``p x k`` Gaussian matrix with ``N(0, 1/k)`` entries, made block by block.

    Parameters
    ----------
    n_params, n_components : int
    seed : int
    device : torch.device
    dtype : torch.dtype
    """

    def __init__(self, n_params, n_components, seed, device, dtype):
        self.n_params = n_params
        self.n_components = n_components
        self.seed = seed
        self.device = device
        self.dtype = dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        cache = n_params * n_components * itemsize <= MAX_CACHED_PROJECTION
        self._blocks = list(self._make_blocks()) if cache else None

    def _make_blocks(self):
        for i, start in enumerate(range(0, self.n_params, PROJECTION_BLOCK)):
            stop = min(start + PROJECTION_BLOCK, self.n_params)
            generator = torch.Generator().manual_seed(self.seed + i)
            R = torch.randn(stop - start, self.n_components, generator=generator)
            R = (R / np.sqrt(self.n_components)).to(self.device, self.dtype)
            yield slice(start, stop), R

    def apply(self, A: torch.Tensor) -> torch.Tensor:
        """``A R`` for ``A`` of shape ``(..., p)``."""
        blocks = self._blocks if self._blocks is not None else self._make_blocks()
        out = None
        for cols, R in blocks:
            part = A[..., cols] @ R
            out = part if out is None else out + part
        return out


def gradient_features(
    engine: JacobianEngine,
    X,
    n_components: int | None = None,
    whiten: bool = True,
    random_state=None,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Per-sample gradient features ``(n, d, k)`` as a float32 NumPy array.

    ``tr(F(x) F(y)^T) / d`` is the cosine kernel (``whiten=True``) or the NTK
    (``whiten=False``), exactly when ``n_components`` is None (``k = p``) and in
    expectation, with relative error of order ``1/sqrt(k)``, otherwise.
    """
    n = n_samples(X)
    d = engine.n_outputs(X)
    k = engine.n_params if n_components is None else n_components
    projection = None
    if n_components is not None:
        seed = int(check_random_state(random_state).randint(2**31 - 1))
        projection = GaussianProjection(
            engine.n_params, n_components, seed, engine.device, engine.dtype
        )
    blocks = whitened_jacobians(engine, X, rtol) if whiten else engine.jacobians(X)
    features = np.empty((n, d, k), dtype=np.float32)
    for rows, A in blocks:
        if projection is not None:
            A = projection.apply(A)
        features[rows] = A.float().cpu().numpy()
    return features
