"""Collapsed Gibbs sampler for the DP Gaussian mixture with NIW base.

Each point in turn is taken out of its cluster and reassigned with the Chinese
restaurant process weights times the cluster's Student-t posterior predictive,
``n_k t_k(x)`` for an existing cluster and ``alpha t_0(x)`` for a new one. The
cluster statistics are kept as the posterior mean and the Cholesky factor of
``Psi_n`` (and its inverse), changed by rank-one updates and downdates; they are
recomputed exactly from the members at the start of every sweep. The
concentration ``alpha`` has a Gamma(1, 1) prior and is resampled after every
sweep by the auxiliary-variable method of Escobar and West.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dtrtri
from tqdm.auto import tqdm

from ._logdensity import log_kernel, log_normaliser, student_t_logpdf
from ._niw import NIWPrior, cholesky_rank_one, predictive_shape_scale

ALPHA_SHAPE, ALPHA_RATE = 1.0, 1.0  # Gamma(1, 1) prior on the concentration


def _inverse_lower(L):
    inv, info = dtrtri(L, lower=1)
    if info != 0:  # pragma: no cover - a Cholesky factor is never singular
        raise np.linalg.LinAlgError("Singular Cholesky factor.")
    return inv


class ClusterState:
    """Assignments and per-cluster NIW posteriors, edited one point at a time."""

    def __init__(self, X, prior: NIWPrior, labels):
        self.X, self.prior = X, prior
        n, d = X.shape
        self.d = d
        self.z = np.asarray(labels, dtype=np.intp).copy()
        self.L0 = np.linalg.cholesky(prior.psi)
        self.inv_L0 = _inverse_lower(self.L0)
        cap = max(8, int(self.z.max()) + 1)
        self.count = np.zeros(cap, dtype=np.intp)
        self.mean = np.zeros((cap, d))
        self.L = np.zeros((cap, d, d))
        self.inv_L = np.zeros((cap, d, d))
        self.prec = np.zeros((cap, d, d))  # inverse Cholesky of the predictive
        self.df = np.zeros(cap)  # degrees of freedom of the predictive
        self.K = int(self.z.max()) + 1
        self.refresh()

    # -- exact recomputation -------------------------------------------------
    def refresh(self):
        """Recompute every cluster's posterior from its members."""
        order = np.argsort(self.z, kind="stable")
        bounds = np.searchsorted(self.z[order], np.arange(self.K + 1))
        for k in range(self.K):
            self._set_from_members(k, self.X[order[bounds[k] : bounds[k + 1]]])

    def _set_from_members(self, k, members):
        mean, _, _, psi = self.prior.posterior(members)
        self.count[k] = len(members)
        self.mean[k] = mean
        self.L[k] = np.linalg.cholesky(psi)
        self._derive(k)

    def _derive(self, k):
        """The cluster's Student-t predictive from its count and ``Psi_n``."""
        count = self.count[k]
        scale, df = predictive_shape_scale(
            self.prior.kappa + count, self.prior.nu + count, self.d
        )
        self.inv_L[k] = _inverse_lower(self.L[k])
        self.prec[k] = self.inv_L[k] / np.sqrt(scale)
        self.df[k] = df

    # -- one-point edits -----------------------------------------------------
    def remove(self, i):
        """Take point i out of its cluster (deleting the cluster if it empties)."""
        k, x = self.z[i], self.X[i]
        self.z[i] = -1
        if self.count[k] == 1:
            self._delete(k)
            return
        kappa = self.prior.kappa + self.count[k]
        diff = x - self.mean[k]
        self.count[k] -= 1
        self.mean[k] = (kappa * self.mean[k] - x) / (kappa - 1.0)
        try:
            self.L[k] = cholesky_rank_one(
                self.L[k], np.sqrt(kappa / (kappa - 1.0)) * diff, -1.0, self.inv_L[k]
            )
        except np.linalg.LinAlgError:  # round-off: recompute from the members
            self._set_from_members(k, self.X[self.z == k])
            return
        self._derive(k)

    def add(self, i, k):
        """Put point i into cluster k (``k == K`` opens a new cluster)."""
        if k == self.K:
            self._grow()
            self.count[k], self.mean[k] = 0, self.prior.mean
            self.L[k], self.inv_L[k] = self.L0, self.inv_L0
            self.K += 1
        x = self.X[i]
        kappa = self.prior.kappa + self.count[k]
        diff = x - self.mean[k]
        self.L[k] = cholesky_rank_one(
            self.L[k], np.sqrt(kappa / (kappa + 1.0)) * diff, 1.0, self.inv_L[k]
        )
        self.mean[k] = (kappa * self.mean[k] + x) / (kappa + 1.0)
        self.count[k] += 1
        self.z[i] = k
        self._derive(k)

    def _delete(self, k):
        last = self.K - 1
        if k != last:
            for a in (
                self.count,
                self.mean,
                self.L,
                self.inv_L,
                self.prec,
                self.df,
            ):
                a[k] = a[last]
            self.z[self.z == last] = k
        self.K -= 1

    def _grow(self):
        if self.K < len(self.count):
            return
        for name in ("count", "mean", "L", "inv_L", "prec", "df"):
            a = getattr(self, name)
            setattr(self, name, np.concatenate([a, np.zeros_like(a)]))

    # -- predictive ----------------------------------------------------------
    def log_predictive(self, Xb):
        """Student-t log predictive of rows ``Xb`` under each cluster, (b, K)."""
        K = self.K
        diff = Xb[:, None, :] - self.mean[None, :K]
        y = np.einsum("kij,bkj->bki", self.prec[:K], diff)
        r = np.einsum("bki,bki->bk", y, y)
        df = self.df[:K]
        return log_normaliser(self.prec[:K], df) + log_kernel(r, df, self.d)

    def components(self, alpha):
        """The predictive mixture of this state: clusters plus a new one."""
        K, d, n = self.K, self.d, self.X.shape[0]
        count = np.append(self.count[:K], 0)
        scale, df = predictive_shape_scale(
            self.prior.kappa + count, self.prior.nu + count, d
        )
        root = np.sqrt(scale)[:, None, None]
        weight = np.append(self.count[:K], alpha) / (n + alpha)
        return dict(
            mean=np.concatenate([self.mean[:K], self.prior.mean[None]]),
            chol=np.concatenate([self.L[:K], self.L0[None]]) * root,
            prec_chol=np.concatenate([self.prec[:K], self.inv_L0[None] / root[-1]]),
            df=df,
            log_weight=np.log(weight),
        )


def prior_log_predictive(X, prior: NIWPrior):
    """Student-t prior predictive (a cluster with no points) of every row."""
    d = X.shape[1]
    scale, df = predictive_shape_scale(prior.kappa, prior.nu, d)
    inv_L = _inverse_lower(np.linalg.cholesky(prior.psi)) / np.sqrt(scale)
    return student_t_logpdf(X, prior.mean[None], inv_L[None], np.array([df]))[:, 0]


def resample_alpha(alpha, n_clusters, n, rng):
    """Escobar & West (1995) update of the DP concentration, Gamma(1, 1) prior."""
    eta = rng.beta(alpha + 1.0, n)
    rate = ALPHA_RATE - np.log(eta)
    odds = (ALPHA_SHAPE + n_clusters - 1.0) / (n * rate)
    shape = ALPHA_SHAPE + n_clusters - (0.0 if rng.random() < odds / (1 + odds) else 1)
    return rng.gamma(shape, 1.0 / rate)


def _choose(logw, u):
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    cw = np.cumsum(w, axis=1)
    return np.minimum((cw < u[:, None] * cw[:, -1:]).sum(axis=1), logw.shape[1] - 1)


def _sweep(state, logp0, alpha, rng):
    """Reassign every point once, in random order."""
    X, n = state.X, state.X.shape[0]
    order = rng.permutation(n)
    u = rng.random_sample(n)
    for i, u_i in zip(order, u, strict=True):
        state.remove(i)
        K = state.K
        logw = np.append(
            np.log(state.count[:K]) + state.log_predictive(X[i : i + 1])[0],
            np.log(alpha) + logp0[i],
        )
        k = _choose(logw[None], u_i[None])[0]
        state.add(i, state.K if k == K else k)


def gibbs_sampler(X, prior, init_labels, n_sweeps, burn_in, thin, rng, verbose=0):
    """Run the sampler; return the kept posterior samples and the traces.

    Parameters
    ----------
    init_labels : ndarray of shape (n,)
        Initial partition, labels ``0..K-1``, each used. An over-segmented start
        (many small clusters) is best: the sampler merges clusters readily but
        is slow to split a large one.

    Returns
    -------
    samples : list of dict
        The predictive mixture (see :meth:`ClusterState.components`) after each
        kept sweep (sweep index ``> burn_in`` and a multiple of ``thin`` after it).
    n_clusters, alpha : ndarray of shape (n_sweeps,)
        Traces of the number of clusters and of the concentration.
    """
    n = X.shape[0]
    state = ClusterState(X, prior, init_labels)
    logp0 = prior_log_predictive(X, prior)
    alpha = 1.0
    samples, n_clusters, alphas = [], np.empty(n_sweeps, int), np.empty(n_sweeps)
    for sweep in tqdm(range(n_sweeps), disable=verbose <= 0, desc="Gibbs sweeps"):
        state.refresh()
        _sweep(state, logp0, alpha, rng)
        alpha = resample_alpha(alpha, state.K, n, rng)
        n_clusters[sweep], alphas[sweep] = state.K, alpha
        if sweep + 1 > burn_in and (sweep + 1 - burn_in) % thin == 0:
            samples.append(state.components(alpha))
    return samples, n_clusters, alphas
