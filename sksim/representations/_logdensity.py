"""Log-densities of Student-t and Gaussian components and of their mixtures.

The one place where sksim evaluates these densities: the Gibbs sampler's
cluster predictives, the fitted mixtures and the Gaussian references of the
class statistics.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp

_CHUNK_FLOATS = 2**22  # rows x components x features evaluated at once


def log_normaliser(prec_chol, df):
    """Log normalising constants of Student-t (or Gaussian) components.

    Parameters
    ----------
    prec_chol : ndarray of shape (..., d, d)
        Inverse lower Cholesky factors of the shape matrices.
    df : ndarray of shape (...)
        Degrees of freedom; ``np.inf`` gives a Gaussian component.

    Returns
    -------
    log_c : ndarray of shape (...)
        ``log Gamma((df + d) / 2) - log Gamma(df / 2) - d/2 log(df pi)
        + log|prec_chol|``, or ``-d/2 log(2 pi) + log|prec_chol|``.
    """
    d = prec_chol.shape[-1]
    half_logdet = np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)).sum(axis=-1)
    with np.errstate(invalid="ignore"):  # inf - inf for Gaussian components
        student = (
            gammaln(0.5 * (df + d)) - gammaln(0.5 * df) - 0.5 * d * np.log(df * np.pi)
        )
    gauss = -0.5 * d * np.log(2 * np.pi)
    return half_logdet + np.where(np.isinf(df), gauss, student)


def log_kernel(r, df, d):
    """``-(df + d)/2 log(1 + r / df)``, or ``-r / 2`` where ``df`` is infinite.

    ``r`` holds squared Mahalanobis distances, shape (n, m); ``df`` shape (m,).
    """
    gauss = np.isinf(df)
    nu = np.where(gauss, 1.0, df)  # finite stand-in where the component is Gaussian
    return np.where(gauss, -0.5 * r, -0.5 * (nu + d) * np.log1p(r / nu))


def student_t_logpdf(X, mean, prec_chol, df):
    """Log-density of multivariate Student-t (or Gaussian) components.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    mean : ndarray of shape (m, d)
    prec_chol : ndarray of shape (m, d, d)
        ``L^{-1}`` for the lower Cholesky factor ``L`` of each shape matrix, so
        that the Mahalanobis distance is ``|prec_chol (x - mean)|^2``.
    df : ndarray of shape (m,)
        Degrees of freedom; ``np.inf`` gives a Gaussian component.

    Returns
    -------
    logpdf : ndarray of shape (n, m)
    """
    n, d = X.shape
    m = mean.shape[0]
    proj = (X @ prec_chol.reshape(m * d, d).T).reshape(n, m, d)
    proj -= np.einsum("mij,mj->mi", prec_chol, mean)
    r = np.einsum("nmi,nmi->nm", proj, proj)
    return log_normaliser(prec_chol, df) + log_kernel(r, df, d)


def mixture_logpdf(X, mean, prec_chol, df, log_weight):
    """Log-density of a mixture of :func:`student_t_logpdf` components.

    ``log sum_m w_m p_m(x)`` by log-sum-exp, evaluated in chunks of rows so
    that at most about ``2**22`` floats are held at once.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    mean, prec_chol, df
        The components, as in :func:`student_t_logpdf`.
    log_weight : ndarray of shape (m,)
        Log weights of the components.

    Returns
    -------
    logpdf : ndarray of shape (n,)
    """
    m, d = mean.shape
    rows = max(1, _CHUNK_FLOATS // (m * d))
    out = np.empty(X.shape[0])
    for start in range(0, X.shape[0], rows):
        chunk = slice(start, start + rows)
        logpdf = student_t_logpdf(X[chunk], mean, prec_chol, df)
        out[chunk] = logsumexp(logpdf + log_weight, axis=1)
    return out


def expected_diagonal_gaussian_logpdf(mixture, mean, var):
    """``E_p[log N(z; mean, diag(var))]`` under a fitted mixture ``p``, exactly.

    The log-density is quadratic in ``z``: its expectation needs each
    component's mean and covariance (``df / (df - 2)`` times its shape
    matrix for a Student-t), not draws, whose estimate has no finite
    variance under a component of 4 degrees of freedom or fewer (the
    sampler's new-cluster component has ``d + 2 - d + 1 = 3``).

    Parameters
    ----------
    mixture : DirichletProcessGaussianMixture
        Fitted; components of more than 2 degrees of freedom.
    mean, var : ndarray of shape (n_features,)

    Returns
    -------
    expected : float
    """
    df = mixture.component_dfs_
    t = np.isfinite(df)
    spread = np.ones_like(df)
    spread[t] = df[t] / (df[t] - 2)
    chols = mixture.component_chols_
    covariance_diagonal = spread[:, None] * np.einsum("kij,kij->ki", chols, chols)
    offset = (mixture.component_means_ - mean) ** 2
    weights = np.exp(mixture.component_log_weights_)
    quadratic = weights @ ((covariance_diagonal + offset) / var).sum(axis=1)
    return -0.5 * (np.log(2 * np.pi * var).sum() + quadratic / weights.sum())
