"""Normal-inverse-Wishart algebra for the DP Gaussian mixture.

A cluster with ``n`` points under the NIW base ``(mu0, kappa0, nu0, Psi0)`` has
posterior ``(mu_n, kappa_n, nu_n, Psi_n)`` and a Student-t posterior predictive
with ``df = nu_n - d + 1`` degrees of freedom, location ``mu_n`` and shape
``Psi_n (kappa_n + 1) / (kappa_n df)``. Adding or removing one point changes
``Psi_n`` by a rank-one term, so its Cholesky factor is updated in ``O(d^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular


@dataclass(frozen=True)
class NIWPrior:
    """Normal-inverse-Wishart base measure ``(mu0, kappa0, nu0, Psi0)``."""

    mean: np.ndarray
    kappa: float
    nu: float
    psi: np.ndarray

    @classmethod
    def from_data(cls, X, kappa0=0.01, prior_clusters=6.0, reg_covar=1e-6):
        """The data-derived prior (see the theory page of the user guide).

        ``mu0`` is the data mean, ``nu0 = d + 2`` and
        ``Psi0 = diag(var + reg_covar) / K0^(2/d)``: with ``nu0 = d + 2`` the
        prior mean covariance is ``Psi0``, a cluster covering ``1/K0`` of the
        data's volume.
        """
        d = X.shape[1]
        with np.errstate(over="ignore"):
            var = X.var(axis=0) + reg_covar
        if not np.isfinite(var).all():
            raise ValueError(
                "The variance of the points overflows float64 (largest magnitude "
                f"{np.abs(X).max():.3g}): scale them, e.g. with StandardScaler."
            )
        psi = np.diag(var / prior_clusters ** (2.0 / d))
        return cls(X.mean(axis=0), float(kappa0), float(d + 2), psi)

    def posterior(self, X):
        """Posterior ``(mean, kappa, nu, Psi)`` after observing the rows of X."""
        n = X.shape[0]
        kappa, nu = self.kappa + n, self.nu + n
        if n == 0:
            return self.mean.copy(), kappa, nu, self.psi.copy()
        xbar = X.mean(axis=0)
        centred = X - xbar
        shift = xbar - self.mean
        psi = (
            self.psi
            + centred.T @ centred
            + (self.kappa * n / kappa) * np.outer(shift, shift)
        )
        return (self.kappa * self.mean + n * xbar) / kappa, kappa, nu, psi


def cholesky_rank_one(L, v, sign=1.0, inv_L=None):
    """Lower Cholesky factor of ``L L^T + sign * v v^T``, in closed form.

    With ``w = L^{-1} v`` and ``t_j = 1 + sign * sum_{i<=j} w_i^2``,
    ``I + sign * w w^T = M M^T`` where ``M`` is lower triangular with
    ``M_jj = sqrt(t_j / t_{j-1})`` and ``M_ij = sign * w_i w_j / sqrt(t_j t_{j-1})``
    (``i > j``); the new factor is ``L M``, formed with cumulative sums in
    ``O(d^2)``.

    Parameters
    ----------
    L : ndarray of shape (d, d)
        Lower Cholesky factor.
    v : ndarray of shape (d,)
    sign : {1.0, -1.0}, default=1.0
        Update (+1) or downdate (-1).
    inv_L : ndarray of shape (d, d), default=None
        ``L^{-1}`` if known, to form ``w`` by a product instead of a solve.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a downdate leaves a matrix that is not positive definite.
    """
    w = inv_L @ v if inv_L is not None else solve_triangular(L, v, lower=True)
    t = 1.0 + sign * np.cumsum(w * w)
    if t[-1] <= 1e-12:
        raise np.linalg.LinAlgError(
            "The Cholesky downdate leaves a matrix that is not positive definite."
        )
    t_prev = np.concatenate(([1.0], t[:-1]))
    tail = np.cumsum((L * w)[:, ::-1], axis=1)[:, ::-1]
    after = np.zeros_like(L)
    after[:, :-1] = tail[:, 1:]
    return L * np.sqrt(t / t_prev) + sign * after * (w / np.sqrt(t * t_prev))


def predictive_shape_scale(kappa, nu, d):
    """Factor ``c`` with predictive shape ``c * Psi`` and its ``df``."""
    df = nu - d + 1.0
    return (kappa + 1.0) / (kappa * df), df
