"""Blocked, vectorised collapsed Gibbs sampler for the DP Gaussian mixture.

The model and the moves are those of :mod:`._gibbs`, but a sweep reassigns the
points a block at a time. For every point of a block the Student-t posterior
predictives under all clusters come from one matrix product with the clusters'
factorised shapes; the predictive under the point's own cluster *without the
point* follows from the same product in closed form (a Sherman-Morrison
rank-one downdate: with ``v = x - mu_n``, ``q = v^T Psi_n^{-1} v`` and
``a = kappa_n / (kappa_n - 1)``, the cluster without ``x`` has
``|Psi| (1 - a q)`` for determinant and ``a^2 q / (1 - a q)`` for the
``Psi``-Mahalanobis distance of ``x``). These are the exact conditionals of
single-site collapsed Gibbs; the points of a block are then drawn together,
each from its conditional given the state before the block (a point opening a
new cluster opens one of its own). Each point of a block therefore does not
see the others' new assignments; that is the approximation, and with blocks of
one point the sampler is exact.

Clusters are held as sufficient statistics of the data centred on the prior
mean, count ``n``, sum ``s`` and sum of outer products ``S``, with
``mu_n = s / kappa_n`` and ``Psi_n = Psi0 + S - s s^T / kappa_n``; they are
recomputed exactly from the members at the start of every sweep. Only the
clusters that a block changed are factorised again (``O(d^3)`` each), so once
the sampler has settled a block costs little more than its ``O(b K d^2)``
matrix product.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln
from tqdm.auto import tqdm

from ._gibbs import _choose, _inverse_lower, prior_log_predictive, resample_alpha
from ._niw import NIWPrior, predictive_shape_scale


def _t_log_normaliser(df, d, half_logdet_shape):
    """Log normalising constant of a d-variate Student-t from ``log|shape|/2``."""
    return (
        gammaln(0.5 * (df + d))
        - gammaln(0.5 * df)
        - 0.5 * d * np.log(df * np.pi)
        - half_logdet_shape
    )


class ClusterStatistics:
    """Sufficient statistics of the clusters and their factorised predictives.

    Parameters
    ----------
    Xc : ndarray of shape (n, d)
        The data centred on the prior mean.
    z : ndarray of shape (n,)
        Labels ``0..K-1``, each used.
    prior : NIWPrior
    """

    def __init__(self, Xc, z, prior: NIWPrior):
        self.prior, self.d = prior, Xc.shape[1]
        K = int(z.max()) + 1
        self.count = np.zeros(K, dtype=np.intp)
        self.total = np.zeros((K, self.d))
        self.scatter = np.zeros((K, self.d, self.d))
        self.mean = np.zeros((K, self.d))  # centred location of the predictive
        self.prec = np.zeros((K, self.d, self.d))  # inverse Cholesky of its shape
        self.log_c = np.zeros(K)  # log normalising constant
        self.half_logdet_psi = np.zeros(K)  # log|Psi_n| / 2
        self.change(Xc, z, 1)
        self.factorise(np.arange(K))

    def change(self, X, labels, sign):
        """Add (``sign=1``) or take out (``sign=-1``) the rows of X."""
        order = np.argsort(labels, kind="stable")
        X, labels = X[order], labels[order]
        present, starts = np.unique(labels, return_index=True)
        ends = np.append(starts[1:], len(labels))
        self.count[present] += sign * (ends - starts)
        self.total[present] += sign * np.add.reduceat(X, starts, axis=0)
        for k, a, b in zip(present, starts, ends, strict=True):
            self.scatter[k] += sign * (X[a:b].T @ X[a:b])
        return present

    def grow(self, n_clusters):
        """Make room for ``n_clusters`` clusters (the new ones empty)."""
        extra = n_clusters - len(self.count)
        if extra <= 0:
            return
        extra = max(extra, len(self.count))
        for name in (
            "count",
            "total",
            "scatter",
            "mean",
            "prec",
            "log_c",
            "half_logdet_psi",
        ):
            a = getattr(self, name)
            pad = np.zeros((extra,) + a.shape[1:], dtype=a.dtype)
            setattr(self, name, np.concatenate([a, pad]))

    def factorise(self, clusters):
        """Recompute the predictives of the non-empty ``clusters``."""
        clusters = clusters[self.count[clusters] > 0]
        kappa = self.prior.kappa + self.count[clusters]
        mean = self.total[clusters] / kappa[:, None]
        psi = self.prior.psi + self.scatter[clusters]
        psi -= self.total[clusters][:, :, None] * mean[:, None, :]
        scale, df = predictive_shape_scale(
            kappa, self.prior.nu + self.count[clusters], self.d
        )
        chol = np.linalg.cholesky(psi)
        inv = np.array([_inverse_lower(L) for L in chol])
        half_logdet = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        self.mean[clusters] = mean
        self.prec[clusters] = inv / np.sqrt(scale)[:, None, None]
        self.half_logdet_psi[clusters] = half_logdet
        self.log_c[clusters] = _t_log_normaliser(
            df, self.d, half_logdet + 0.5 * self.d * np.log(scale)
        )

    def mahalanobis(self, X):
        """Squared Mahalanobis distances of the rows of X to every cluster."""
        K = len(self.count)
        proj = (X @ self.prec.reshape(K * self.d, self.d).T).reshape(len(X), K, -1)
        proj -= np.einsum("kij,kj->ki", self.prec, self.mean)
        return np.einsum("nki,nki->nk", proj, proj)

    def components(self, alpha):
        """The predictive mixture of this state: clusters plus a new one."""
        clusters = np.flatnonzero(self.count > 0)
        count = np.append(self.count[clusters], 0)  # the new cluster is empty
        scale, df = predictive_shape_scale(
            self.prior.kappa + count, self.prior.nu + count, self.d
        )
        L0 = np.linalg.cholesky(self.prior.psi)
        prec = np.concatenate(
            [self.prec[clusters], _inverse_lower(L0)[None] / np.sqrt(scale[-1])]
        )
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
    r = stats.mahalanobis(Xb)
    count = stats.count.astype(float)
    df = prior.nu + count - d + 1.0
    with np.errstate(divide="ignore"):
        log_count = np.broadcast_to(np.log(count), r.shape).copy()
    logp = stats.log_c - 0.5 * (df + d) * np.log1p(r / df)
    rows = np.arange(len(own))
    n = count[own]
    with np.errstate(divide="ignore"):
        log_count[rows, own] = np.log(n - 1.0)
    logp[rows, own] = _left_out(r[rows, own], n, stats.half_logdet_psi[own], prior, d)
    return logp, log_count


def _left_out(r, n, half_logdet_psi, prior, d):
    """Log predictive of x under its own cluster (n points) without x.

    Singletons (n = 1) give an arbitrary finite value: their weight is zero.
    """
    kappa = prior.kappa + n
    scale, df = predictive_shape_scale(kappa, prior.nu + n, d)
    q = r * scale  # v^T Psi_n^{-1} v
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
    logw = np.concatenate([logp + log_count, log_new[:, None]], axis=1)
    K = len(stats.count)
    choice = _choose(logw, u)
    new = choice == K
    choice[new] = K + np.arange(new.sum())
    moved = choice != own
    if not moved.any():
        return
    stats.grow(K + int(new.sum()))
    idx, own, choice = idx[moved], own[moved], choice[moved]
    left = stats.change(Xc[idx], own, -1)
    joined = stats.change(Xc[idx], choice, 1)
    z[idx] = choice
    stats.factorise(np.union1d(left, joined))


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
    alpha = 1.0
    samples, n_clusters, alphas = [], np.empty(n_sweeps, int), np.empty(n_sweeps)
    for sweep in tqdm(range(n_sweeps), disable=verbose <= 0, desc="Gibbs sweeps"):
        stats = ClusterStatistics(Xc, z, prior)
        order = rng.permutation(n)
        u = rng.random_sample(n)
        log_new = np.log(alpha) + logp0
        for start in range(0, n, block_size):
            idx = order[start : start + block_size]
            _reassign_block(
                stats, Xc, z, idx, log_new[idx], u[start : start + len(idx)]
            )
        z = np.unique(z, return_inverse=True)[1].astype(np.intp)
        K = int(z.max()) + 1
        alpha = resample_alpha(alpha, K, n, rng)
        n_clusters[sweep], alphas[sweep] = K, alpha
        if sweep + 1 > burn_in and (sweep + 1 - burn_in) % thin == 0:
            samples.append(ClusterStatistics(Xc, z, prior).components(alpha))
    return samples, n_clusters, alphas
