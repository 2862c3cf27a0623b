"""Per-sample gradient features whose inner products are the kernel.

``A(x) = (J J^T)^{-1/2} J`` (SPEC 1.1) is the whitened Jacobian. Exact features
are the ``p`` columns of ``A`` (or ``J``); with ``n_components=k`` they are
sketched layer by layer to about ``k`` columns (see ``sketch``), never forming
``A`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.utils import check_random_state

from .jacobian import JacobianEngine
from .normalize import gram_power
from .pieces import gram_of, map_pieces
from .sketch import GradientSketch
from .transfer import to_host


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


def projection_seed(random_state) -> int:
    """The integer seed of a sketch drawn from ``random_state``."""
    return int(check_random_state(random_state).randint(2**31 - 1))


def gradient_features(
    engine: JacobianEngine,
    X,
    n_components: int | None = None,
    whiten: bool = True,
    random_state=None,
    rtol: float = 1e-5,
    power: float | None = None,
) -> np.ndarray:
    """Per-sample gradient features ``(n, d, k)`` as a float32 NumPy array.

    ``tr(F(x) F(y)^T) / d`` is the cosine kernel (``whiten=True``) or the NTK
    (``whiten=False``): exactly when ``n_components`` is None (``k = p``), and
    in expectation, with error of order ``1/sqrt(k)``, otherwise. Equal integer
    ``random_state`` values give equal sketches. ``power``, if given, replaces
    the whitening by ``(J J^T)^power J`` (``-1`` for the left side of the
    influence kernel).
    """
    if power is None and whiten:
        power = -0.5
    if n_components is None and power in (None, -0.5):
        blocks = whitened_jacobians(engine, X, rtol) if power else engine.jacobians(X)
        return np.concatenate([to_host(A.float()) for _, A in blocks])
    sketch = GradientSketch(n_components, projection_seed(random_state))
    parts = []
    for _, pieces in engine.pieces(X):
        G = gram_of(pieces).double().cpu().numpy()
        pieces = map_pieces(pieces, G, power, rtol)
        parts.append(to_host(sketch.features(pieces).float()))
    return np.concatenate(parts)
