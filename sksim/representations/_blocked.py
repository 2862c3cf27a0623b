"""Blocked, vectorised collapsed Gibbs sampler for the DP Gaussian mixture.

The model and the moves are those of :mod:`._gibbs`, but a sweep reassigns the
points a block at a time. For every point of a block the Student-t posterior
predictives under all clusters come from one matrix product with the clusters'
inverse scale matrices ``Psi_n^{-1}``; the predictive under the point's own
cluster *without the point* follows from the same product in closed form (a
Sherman-Morrison rank-one downdate: with ``v = x - mu_n``,
``q = v^T Psi_n^{-1} v`` and ``a = kappa_n / (kappa_n - 1)``, the cluster
without ``x`` has ``|Psi| (1 - a q)`` for determinant and ``a^2 q / (1 - a q)``
for the ``Psi``-Mahalanobis distance of ``x``). These are the exact
conditionals of single-site collapsed Gibbs; the points of a block are then
drawn together, each from its conditional given the state before the block (a
point opening a new cluster opens one of its own). Each point of a block
therefore does not see the others' new assignments; that is the approximation,
and with blocks of one point the sampler is exact.

Each cluster is held as its count, its posterior mean ``mu_n`` and the inverse
and log-determinant of ``Psi_n``. A point that moves changes ``Psi_n`` of the
two clusters by a rank-one term ``+- kappa_n / (kappa_n +- 1) v v^T``, so the
inverses follow by Sherman-Morrison and the determinants by the matrix
determinant lemma, in ``O(d^2)`` per move; a block therefore costs little more
than its ``O(b K d^2)`` matrix product. Every ``REFRESH_SWEEPS`` sweeps all
clusters are recomputed exactly from their members (``O(K d^3)``), which
bounds the round-off of the updates.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln
from tqdm.auto import tqdm

from ._gibbs import _choose, prior_log_predictive, resample_alpha
from ._niw import NIWPrior, predictive_shape_scale

REFRESH_SWEEPS = 10  # sweeps between exact recomputations of the clusters


def _t_log_normaliser(df, d, half_logdet_shape):
    """Log normalising constant of a d-variate Student-t from ``log|shape|/2``."""
    return (
        gammaln(0.5 * (df + d))
        - gammaln(0.5 * df)
        - 0.5 * d * np.log(df * np.pi)
        - half_logdet_shape
    )


def _inverse_and_half_logdet(psi):
    """``psi^{-1}`` and ``log|psi| / 2`` of a stack of SPD matrices."""
    chol = np.linalg.cholesky(psi)
    inv_chol = np.linalg.inv(chol)
    half_logdet = np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    return np.swapaxes(inv_chol, -1, -2) @ inv_chol, half_logdet


class ClusterStatistics:
    """The clusters' posteriors: counts, means and inverses of ``Psi_n``.

    Parameters
    ----------
    Xc : ndarray of shape (n, d)
        The data centred on the prior mean.
    z : ndarray of shape (n,)
        Labels ``0..K-1``, each used.
    prior : NIWPrior
    """

    # per cluster: count, mu_n, Psi_n^{-1}, log|Psi_n| / 2, and for the
    # distances Psi_n^{-1} mu_n ("shift") and mu_n^T Psi_n^{-1} mu_n ("offset")
    FIELDS = ("count", "mean", "inv_psi", "half_logdet_psi", "shift", "offset")

    def __init__(self, Xc, z, prior: NIWPrior):
        self.prior, self.d = prior, Xc.shape[1]
        self.empty_inv_psi, self.empty_half_logdet = _inverse_and_half_logdet(prior.psi)
        self.refresh(Xc, z)

    def refresh(self, Xc, z):
        """Recompute every cluster exactly from its members."""
        K = int(z.max()) + 1
        order = np.argsort(z, kind="stable")
        bounds = np.searchsorted(z[order], np.arange(K + 1))
        self.count = np.diff(bounds)
        members = np.split(Xc[order], bounds[1:-1])
        total = np.array([m.sum(axis=0) for m in members])
        self.mean = total / (self.prior.kappa + self.count)[:, None]  # mu_n
        psi = np.array([m.T @ m for m in members])
        psi += self.prior.psi - total[:, :, None] * self.mean[:, None, :]
        self.inv_psi, self.half_logdet_psi = _inverse_and_half_logdet(psi)
        self.shift = np.einsum("kij,kj->ki", self.inv_psi, self.mean)
        self.offset = np.einsum("ki,ki->k", self.shift, self.mean)

    def compact(self):
        """Drop the empty clusters, keeping the others in order."""
        keep = self.count > 0
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[keep])

    def grow(self, n_clusters):
        """Make room for ``n_clusters`` clusters, the new ones empty."""
        extra = n_clusters - len(self.count)
        if extra <= 0:
            return
        extra = max(extra, len(self.count))
        d = self.d
        empty = dict(
            count=np.zeros(extra, dtype=self.count.dtype),
            mean=np.zeros((extra, d)),
            inv_psi=np.broadcast_to(self.empty_inv_psi, (extra, d, d)),
            half_logdet_psi=np.full(extra, self.empty_half_logdet),
            shift=np.zeros((extra, d)),
            offset=np.zeros(extra),
        )
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), empty[name]]))

    def move(self, x, source, target):
        """Move the point ``x`` (centred) from cluster ``source`` to ``target``."""
        self._rank_one(source, x, -1.0)
        self._rank_one(target, x, 1.0)

    def _rank_one(self, k, x, sign):
        """Add (``sign=1``) or take out (``sign=-1``) the point x of cluster k.

        ``Psi_n`` changes by ``sign * c v v^T`` with ``v = x - mu_n`` and
        ``c = kappa_n / (kappa_n + sign)``; its inverse follows by
        Sherman-Morrison and its determinant by the determinant lemma.
        """
        count = int(self.count[k])
        self.count[k] = count + int(sign)
        if count + sign == 0:  # the cluster empties: back to the prior
            self.mean[k], self.shift[k], self.offset[k] = 0.0, 0.0, 0.0
            self.inv_psi[k] = self.empty_inv_psi
            self.half_logdet_psi[k] = self.empty_half_logdet
            return
        inv_psi, mean = self.inv_psi[k], self.mean[k]
        kappa = self.prior.kappa + count
        c = kappa / (kappa + sign)
        v = x - mean
        u = inv_psi @ v
        factor = 1.0 + sign * c * float(v @ u)
        inv_psi -= np.multiply.outer(u, (sign * c / factor) * u)
        self.half_logdet_psi[k] += 0.5 * math.log(factor)
        mean += (sign / (kappa + sign)) * v  # (kappa mu + sign x) / (kappa + sign)
        self.shift[k] = inv_psi @ mean
        self.offset[k] = mean @ self.shift[k]

    def psi_distances(self, X):
        """``(x - mu_n)^T Psi_n^{-1} (x - mu_n)`` of the rows of X, every cluster."""
        K, d = len(self.count), self.d
        y = (X @ self.inv_psi.reshape(K * d, d).T).reshape(len(X), K, d)
        q = np.matmul(y, X[:, :, None])[..., 0] - 2.0 * X @ self.shift.T + self.offset
        return np.maximum(q, 0.0)

    def components(self, alpha):
        """The predictive mixture of this state: clusters plus a new one."""
        clusters = np.flatnonzero(self.count > 0)
        count = np.append(self.count[clusters], 0)  # the new cluster is empty
        scale, df = predictive_shape_scale(
            self.prior.kappa + count, self.prior.nu + count, self.d
        )
        inv_psi = np.concatenate([self.inv_psi[clusters], self.empty_inv_psi[None]])
        # Psi^{-1} = M^T M with M = L^{-1} lower: reversing rows and columns
        # turns this into the Cholesky factorisation J M^T J (J M^T J)^T.
        reversed_chol = np.linalg.cholesky(inv_psi[:, ::-1, ::-1])
        inv_chol = np.swapaxes(reversed_chol, 1, 2)[:, ::-1, ::-1]
        prec = inv_chol / np.sqrt(scale)[:, None, None]
        weight = np.append(count[:-1], alpha)
        mean = np.concatenate([self.mean[clusters], np.zeros((1, self.d))])
        return dict(
            mean=mean + self.prior.mean,
            chol=np.linalg.inv(prec),
            prec_chol=prec,
            df=df,
            log_weight=np.log(weight / weight.sum()),
        )


def _log_predictives(stats, Xb, own):
    """Log predictive of each row under each cluster, its own one left out.

    Returns the ``(b, K)`` log predictives and the log counts ``log n_{-i}``
    (``-inf`` for an empty cluster, or for the own cluster of a singleton).
    """
    d, prior = stats.d, stats.prior
    count = stats.count.astype(float)
    scale, df = predictive_shape_scale(prior.kappa + count, prior.nu + count, d)
    log_c = _t_log_normaliser(df, d, stats.half_logdet_psi + 0.5 * d * np.log(scale))
    q = stats.psi_distances(Xb)
    logp = log_c - 0.5 * (df + d) * np.log1p(q / (scale * df))
    rows = np.arange(len(own))
    n = count[own]
    with np.errstate(divide="ignore"):
        log_count = np.broadcast_to(np.log(count), q.shape).copy()
        log_count[rows, own] = np.log(n - 1.0)
    logp[rows, own] = _left_out(q[rows, own], n, stats.half_logdet_psi[own], prior, d)
    return logp, log_count


def _left_out(q, n, half_logdet_psi, prior, d):
    """Log predictive of x under its own cluster (n points) without x.

    ``q`` is ``v^T Psi_n^{-1} v``. Singletons (n = 1) give an arbitrary
    finite value: their weight is zero.
    """
    kappa = prior.kappa + n
    a = kappa / (kappa - 1.0)
    shrink = np.maximum(1.0 - a * q, 1e-300)
    scale_out, df_out = predictive_shape_scale(kappa - 1.0, prior.nu + n - 1.0, d)
    r_out = a * a * q / (shrink * scale_out)
    half_logdet = half_logdet_psi + 0.5 * np.log(shrink) + 0.5 * d * np.log(scale_out)
    log_c = _t_log_normaliser(df_out, d, half_logdet)
    return log_c - 0.5 * (df_out + d) * np.log1p(r_out / df_out)


def _reassign_block(stats, Xc, z, idx, log_new, u):
    """Draw the clusters of the points ``idx`` together; update the statistics."""
    own = z[idx]
    logp, log_count = _log_predictives(stats, Xc[idx], own)
    K = len(stats.count)
    logw = np.empty((len(idx), K + 1))
    np.add(logp, log_count, out=logw[:, :K])
    logw[:, K] = log_new
    choice = _choose(logw, u)
    new = choice == K
    choice[new] = K + np.arange(new.sum())
    moved = np.flatnonzero(choice != own)
    if len(moved) == 0:
        return
    stats.grow(K + int(new.sum()))
    for i, source, target in zip(idx[moved], own[moved], choice[moved], strict=True):
        stats.move(Xc[i], source, target)
    z[idx[moved]] = choice[moved]


def blocked_gibbs_sampler(
    X, prior, init_labels, n_sweeps, burn_in, thin, block_size, rng, verbose=0
):
    """Run the blocked sampler; the returns are those of ``gibbs_sampler``.

    Parameters
    ----------
    block_size : int
        Points drawn together.
    """
    n = X.shape[0]
    Xc = X - prior.mean
    logp0 = prior_log_predictive(X, prior)
    z = np.unique(init_labels, return_inverse=True)[1].astype(np.intp)
    stats = ClusterStatistics(Xc, z, prior)
    alpha = 1.0
    samples, n_clusters, alphas = [], np.empty(n_sweeps, int), np.empty(n_sweeps)
    for sweep in tqdm(range(n_sweeps), disable=verbose <= 0, desc="Gibbs sweeps"):
        order = rng.permutation(n)
        u = rng.random_sample(n)
        log_new = np.log(alpha) + logp0
        for start in range(0, n, block_size):
            idx = order[start : start + block_size]
            _reassign_block(
                stats, Xc, z, idx, log_new[idx], u[start : start + len(idx)]
            )
        z = np.unique(z, return_inverse=True)[1].astype(np.intp)
        if (sweep + 1) % REFRESH_SWEEPS == 0:
            stats.refresh(Xc, z)
        else:
            stats.compact()
        K = len(stats.count)
        alpha = resample_alpha(alpha, K, n, rng)
        n_clusters[sweep], alphas[sweep] = K, alpha
        if sweep + 1 > burn_in and (sweep + 1 - burn_in) % thin == 0:
            samples.append(stats.components(alpha))
    return samples, n_clusters, alphas
