"""From NTK blocks ``J(x) J(x')^T`` to the normalised kernels (see the theory page)."""

from __future__ import annotations

import warnings

import numpy as np

KINDS = ("cosine", "ntk", "influence")


class SingularJacobianGramWarning(UserWarning):
    """The d x d Gram ``J(x) J(x)^T`` of some sample is (near-)singular."""


class DeadInputWarning(UserWarning):
    """Some samples have a zero gradient: their similarity is set to 0."""


def _floored_eigh(G: np.ndarray, rtol: float):
    """Eigen-decompositions of a stack of PSD matrices, eigenvalues floored.

    Returns eigenvalues, eigenvectors and a mask of dead samples (zero gradient).
    Eigenvalues under ``rtol * lambda_max`` are raised to it, with one warning.
    """
    G = 0.5 * (G + np.swapaxes(G, -1, -2))
    lam, V = np.linalg.eigh(G)
    lam_max = lam[..., -1:]
    dead = lam_max[..., 0] <= 0
    if dead.any():
        warnings.warn(
            f"{int(dead.sum())} sample(s) have a zero gradient (the network's output "
            "does not depend on the selected parameters there, e.g. dead ReLUs): "
            "their similarity to every input is set to 0.",
            DeadInputWarning,
            stacklevel=4,
        )
    floor = rtol * np.maximum(lam_max, 0)
    singular = (lam < floor).any(axis=-1) & ~dead
    if singular.any() and G.shape[-1] > 1:
        warnings.warn(
            f"The Jacobian Gram J J^T is near-singular for {int(singular.sum())} "
            f"sample(s): eigenvalues below rtol * lambda_max (rtol={rtol:g}) are "
            "floored. Softmax or log-softmax outputs always cause this (their rows "
            "sum to zero): compute similarities on logits, i.e. on a module without "
            "the final softmax, or pass output= a callable selecting the logits.",
            SingularJacobianGramWarning,
            stacklevel=4,
        )
    lam = np.where(dead[..., None], 0.0, np.maximum(lam, floor))
    return lam, V, dead


def gram_power(G: np.ndarray, power: float, rtol: float) -> np.ndarray:
    """``G^power`` for a stack of d x d PSD matrices (symmetric, floored).

    Dead samples (``G = 0``) get the zero matrix, so they are similar to nothing.
    """
    lam, V, dead = _floored_eigh(G, rtol)
    with np.errstate(divide="ignore"):
        scaled = np.where(dead[..., None], 0.0, lam**power)
    return (V * scaled[..., None, :]) @ np.swapaxes(V, -1, -2)


def normalize(
    K: np.ndarray,
    G_x: np.ndarray,
    G_y: np.ndarray,
    kind: str,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Matrix kernel blocks ``(n, m, d, d)`` of the given kind.

    Parameters
    ----------
    K : ndarray of shape (n, m, d, d)
        NTK blocks ``J(x_i) J(y_j)^T``.
    G_x, G_y : ndarray of shape (n, d, d) and (m, d, d)
        Diagonal blocks ``J(x_i) J(x_i)^T`` and ``J(y_j) J(y_j)^T``.
    kind : {"cosine", "ntk", "influence"}
        ``cosine``: ``A(x) A(y)^T`` with ``A = (J J^T)^{-1/2} J``;
        ``ntk``: ``K`` itself; ``influence``: ``K(y, x) K(x, x)^{-1}``, the
        effect on ``y`` of the smallest step that moves ``x``.
    rtol : float, default=1e-5
        Eigenvalues of ``J J^T`` below ``rtol * lambda_max`` are floored.
    """
    if kind == "ntk":
        return K
    if kind == "cosine":
        W_x = gram_power(G_x, -0.5, rtol)
        W_y = gram_power(G_y, -0.5, rtol)
        return np.einsum("iab,ijbc,jcd->ijad", W_x, K, W_y, optimize=True)
    if kind == "influence":
        inv_x = gram_power(G_x, -1.0, rtol)
        return np.einsum("ijba,ibc->ijac", K, inv_x, optimize=True)
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
