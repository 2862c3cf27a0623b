"""Per-sample Grams ``J J^T`` decomposed, for the normalised kernels (theory page)."""

from __future__ import annotations

import numpy as np

from .flags import FlaggedRows

KINDS = ("cosine", "ntk", "influence")


def floored_eigh(G: np.ndarray, rtol: float) -> tuple[np.ndarray, ...]:
    """Eigen-decompositions of a stack of PSD matrices, eigenvalues floored.

    Returns the eigenvalues, the floored eigenvalues, the eigenvectors, and
    masks of dead samples (zero gradient) and of near-singular ones:
    eigenvalues under ``rtol * lambda_max`` are raised to it.
    """
    G = 0.5 * (G + np.swapaxes(G, -1, -2))
    lam, V = np.linalg.eigh(G)
    lam = np.maximum(lam, 0)  # a PSD matrix's, below 0 by rounding alone
    lam_max = lam[..., -1:]
    dead = lam_max[..., 0] <= 0
    # a floor of 0 (rtol * lam_max below the smallest float) inverts nothing
    floor = np.maximum(rtol * lam_max, np.finfo(lam.dtype).tiny)
    singular = (lam < floor).any(axis=-1) & ~dead & (G.shape[-1] > 1)
    floored = np.where(dead[..., None], 0.0, np.maximum(lam, floor))
    return lam, floored, V, dead, singular


def decomposed_power(
    decomposition: tuple[np.ndarray, ...],
    power: float,
    found: FlaggedRows | None = None,
    rows=None,
) -> np.ndarray:
    """``G^power`` of the Grams whose :func:`floored_eigh` is given.

    Dead samples (``G = 0``) get the zero matrix, so they are similar to
    nothing. Dead and near-singular samples are recorded in ``found`` as the
    ``rows`` (a slice or indices) of their inputs; None records nothing (a
    pass that computed them first did).
    """
    _, lam, V, dead, singular = decomposition
    if found is not None:
        found.add(dead, singular, rows)
    with np.errstate(divide="ignore"):
        scaled = np.where(dead[..., None], 0.0, lam**power)
    return (V * scaled[..., None, :]) @ np.swapaxes(V, -1, -2)


def self_similarity(
    decomposition: tuple[np.ndarray, ...],
    full: bool = False,
    found: FlaggedRows | None = None,
    rows=None,
) -> np.ndarray:
    """``k(x, x)`` of the cosine and influence kernels, from :func:`floored_eigh`.

    Both are ``tr(G_f^{-1} G) / d`` of each Gram ``G`` whose decomposition
    is given, with ``G_f`` the floored Gram: the mean
    of ``lambda / max(lambda, floor)`` over the eigenvalues, exactly 1 unless
    some were floored (then less), 0 for dead samples. ``full`` gives the
    blocks ``A(x) A(x)^T = K(x, x) K_f(x, x)^{-1}`` ``(n, d, d)`` of both
    instead: exactly the identity unless floored. Dead and near-singular
    samples are recorded in ``found`` as in :func:`decomposed_power`.
    """
    lam, floored, V, dead, singular = decomposition
    if found is not None:
        found.add(dead, singular, rows)
    share = np.divide(lam, floored, out=np.zeros_like(lam), where=~dead[..., None])
    if not full:
        return share.mean(axis=-1)
    blocks = (V * share[..., None, :]) @ np.swapaxes(V, -1, -2)
    blocks = 0.5 * (blocks + np.swapaxes(blocks, -1, -2))  # exactly symmetric
    blocks[~dead & ~singular] = np.eye(V.shape[-1])
    return blocks
