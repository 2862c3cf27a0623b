"""Variational Dirichlet-process Gaussian mixture, batched over its components.

The coordinate ascent of Blei and Jordan (2006): a stick-breaking prior cut at
``n_components`` sticks, a Normal-Wishart base, full covariances (Bishop 2006,
Sec. 10.2), with the parametrisation, k-means start and stopping rule of
scikit-learn's :class:`~sklearn.mixture.BayesianGaussianMixture`, whose fit it
reproduces. Each step is a few matrix products over all components at once
where scikit-learn loops over them, which is what costs on small components.

The points' second moments about each component mean come from their outer
products about the data mean (kept while they fit in :data:`MOMENT_BYTES`),
and their squared Mahalanobis distances from one product with all the
components' precision factors, :data:`ROWS` points at a time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, digamma, gammaln
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from ._niw import NIWPrior

TOL = 1e-3  # stop when the lower bound gains less (scikit-learn's default)
ROWS = 4096  # points whose per-component products are held at once
MOMENT_BYTES = 2**26  # the points' outer products are kept up to this size


@dataclass(frozen=True)
class _Posterior:
    """Variational posterior of the components, as scikit-learn parametrises it.

    ``sticks`` are the Beta parameters of the stick-breaking weights; the
    component means are Gaussian with precisions ``kappa`` times their own,
    the precisions Wishart with ``nu`` degrees of freedom and mean
    ``covariance^{-1}``; ``precision_chol`` is upper triangular with
    ``precision_chol @ precision_chol.T = covariance^{-1}``.
    """

    sticks: tuple[np.ndarray, np.ndarray]
    kappa: np.ndarray
    mean: np.ndarray
    nu: np.ndarray
    chol: np.ndarray
    precision_chol: np.ndarray

    def log_weights(self) -> np.ndarray:
        """Expected log mixture weights under the stick-breaking posterior."""
        a, b = self.sticks
        total = digamma(a + b)
        rest = np.cumsum(digamma(b) - total)[:-1]
        return digamma(a) - total + np.concatenate(([0.0], rest))

    def weights(self) -> np.ndarray:
        """The mixture weights: the sticks' expected lengths, normalised."""
        a, b = self.sticks
        kept = b / (a + b)
        weights = a / (a + b) * np.concatenate(([1.0], np.cumprod(kept[:-1])))
        return weights / weights.sum()

    def log_det_precision_chol(self) -> np.ndarray:
        """``log det`` of each precision factor."""
        return np.log(np.diagonal(self.precision_chol, axis1=1, axis2=2)).sum(axis=1)


def _outer_products(Xc: np.ndarray) -> np.ndarray:
    """Each point's outer product with itself, flattened: ``(n, d * d)``."""
    return (Xc[:, :, None] * Xc[:, None, :]).reshape(len(Xc), -1)


def _outer_blocks(Xc: np.ndarray) -> list[np.ndarray] | None:
    """:func:`_outer_products` of each block of :data:`ROWS` points.

    None when they would take more than :data:`MOMENT_BYTES`: they are then
    computed again at each iteration.
    """
    if Xc.size * Xc.shape[1] * Xc.itemsize > MOMENT_BYTES:
        return None
    return [_outer_products(Xc[i : i + ROWS]) for i in range(0, len(Xc), ROWS)]


def _statistics(Xc: np.ndarray, outer, resp: np.ndarray, reg_covar: float):
    """Responsibility-weighted counts, means and covariances of the points.

    ``Xc`` are the points about the data mean, ``outer`` their
    :func:`_outer_blocks`; the means returned are about the data mean too.
    """
    n, d = Xc.shape
    counts = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    means = (resp.T @ Xc) / counts[:, None]
    moments = np.zeros((resp.shape[1], d * d))
    for block, start in enumerate(range(0, n, ROWS)):
        rows = slice(start, start + ROWS)
        products = _outer_products(Xc[rows]) if outer is None else outer[block]
        moments += resp[rows].T @ products
    covariance = moments.reshape(-1, d, d) / counts[:, None, None]
    covariance -= means[:, :, None] * means[:, None, :]
    covariance[:, np.arange(d), np.arange(d)] += reg_covar
    return counts, means, covariance


def _posterior(counts, means, covariance, prior: NIWPrior, centre) -> _Posterior:
    """The components' posterior given their weighted statistics."""
    a = 1.0 + counts
    b = 1.0 + np.concatenate((np.cumsum(counts[::-1])[-2::-1], [0.0]))
    kappa = prior.kappa + counts
    shift = means - (prior.mean - centre)
    mean = prior.mean + (counts[:, None] * shift) / kappa[:, None]
    nu = prior.nu + counts
    scatter = (counts * prior.kappa / kappa)[:, None, None] * (
        shift[:, :, None] * shift[:, None, :]
    )
    scale = prior.psi + counts[:, None, None] * covariance + scatter
    scale /= nu[:, None, None]
    chol = np.linalg.cholesky(scale)
    precision_chol = np.swapaxes(np.tril(np.linalg.inv(chol)), 1, 2)
    return _Posterior((a, b), kappa, mean, nu, chol, precision_chol)


def _log_joint(Xc: np.ndarray, post: _Posterior, centre) -> np.ndarray:
    """Expected log joint of each point and component, ``(n, n_components)``."""
    n, d = Xc.shape
    k = len(post.nu)
    factors = np.swapaxes(post.precision_chol, 0, 1).reshape(d, k * d)
    offsets = np.einsum("ka,kab->kb", post.mean - centre, post.precision_chol)
    distance = np.empty((n, k))
    for start in range(0, n, ROWS):
        rows = slice(start, start + ROWS)
        y = Xc[rows] @ factors
        y -= offsets.reshape(1, k * d)
        y = y.reshape(-1, k, d)
        distance[rows] = np.einsum("nka,nka->nk", y, y)
    shapes = 0.5 * (post.nu - np.arange(d)[:, None])
    log_lambda = d * np.log(2.0) + digamma(shapes).sum(axis=0)
    constant = (
        post.log_det_precision_chol()
        - 0.5 * d * (np.log(2 * np.pi) + np.log(post.nu))
        + 0.5 * (log_lambda - d / post.kappa)
        + post.log_weights()
    )
    distance *= -0.5
    distance += constant
    return distance


def _responsibilities(log_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log responsibilities and responsibilities of the points."""
    top = log_joint.max(axis=1, keepdims=True)
    norm = top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True))
    with np.errstate(under="ignore"):
        log_resp = log_joint - norm
        return log_resp, np.exp(log_resp)


def _lower_bound(post: _Posterior, log_resp, resp, d: int) -> float:
    """The evidence lower bound, up to constants (as scikit-learn computes it)."""
    log_det = post.log_det_precision_chol() - 0.5 * d * np.log(post.nu)
    log_wishart = -(
        post.nu * log_det
        + post.nu * d * 0.5 * np.log(2.0)
        + gammaln(0.5 * (post.nu - np.arange(d)[:, None])).sum(0)
    )
    return float(
        -np.sum(resp * log_resp)
        - log_wishart.sum()
        + np.sum(betaln(*post.sticks))
        - 0.5 * d * np.sum(np.log(post.kappa))
    )


@dataclass(frozen=True)
class VariationalFit:
    """A fitted variational mixture: its components, labels and convergence.

    ``chol`` are the components' lower Cholesky factors of their covariances,
    ``precision_chol`` their inverses (``precision = precision_chol.T @
    precision_chol``).
    """

    mean: np.ndarray
    chol: np.ndarray
    precision_chol: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    n_iter: int
    converged: bool


def fit_variational(
    X: np.ndarray,
    prior: NIWPrior,
    n_components: int,
    reg_covar: float,
    max_iter: int,
    random_state: int,
) -> VariationalFit:
    """Fit the variational DP mixture to the rows of ``X``.

    ``X`` is float64, with at least ``n_components`` rows. Starts from the
    responsibilities of k-means with ``n_components`` clusters (one run,
    seeded by ``random_state``) and iterates until the lower bound gains less
    than :data:`TOL` or ``max_iter`` iterations, warning when it does not
    converge. ``labels`` are each point's most responsible component.
    """
    n, d = X.shape
    centre = X.mean(axis=0)
    Xc = X - centre
    outer = _outer_blocks(Xc)
    with warnings.catch_warnings():  # fewer distinct points than components:
        # the extra components start empty, and the mixture's weights drop them
        warnings.filterwarnings(
            "ignore", "Number of distinct clusters", ConvergenceWarning
        )
        start = KMeans(
            n_components, n_init=1, random_state=np.random.RandomState(random_state)
        ).fit(X)
    resp = np.zeros((n, n_components))
    resp[np.arange(n), start.labels_] = 1.0
    post = _posterior(*_statistics(Xc, outer, resp, reg_covar), prior, centre)
    bound, converged, n_iter = -np.inf, False, 0
    while not converged and n_iter < max_iter:
        log_resp, resp = _responsibilities(_log_joint(Xc, post, centre))
        post = _posterior(*_statistics(Xc, outer, resp, reg_covar), prior, centre)
        previous, bound = bound, _lower_bound(post, log_resp, resp, d)
        converged, n_iter = abs(bound - previous) < TOL, n_iter + 1
    if not converged:
        warnings.warn(
            f"The variational mixture did not converge in max_iter={max_iter} "
            "iterations: increase max_iter.",
            ConvergenceWarning,
            stacklevel=4,
        )
    labels = _log_joint(Xc, post, centre).argmax(axis=1)
    return VariationalFit(
        post.mean,
        post.chol,
        np.swapaxes(post.precision_chol, 1, 2),
        post.weights(),
        labels,
        n_iter,
        converged,
    )
