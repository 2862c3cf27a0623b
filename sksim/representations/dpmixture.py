"""Dirichlet-process Gaussian mixture with a Normal-inverse-Wishart base."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._engine.context import single_threaded_blas
from .._typing import Self
from .._validation import check_finite_number
from ._blocked import blocked_gibbs_sampler
from ._gibbs import gibbs_sampler
from ._logdensity import mixture_logpdf
from ._niw import NIWPrior
from ._variational import fit_variational

BACKENDS = ("gibbs", "variational")
BURN_IN_FRACTION = 0.8  # default share of the sweeps discarded
KEPT_SAMPLES = 20  # default thinning keeps about this many samples
AUTO_BLOCKS = 16  # block_size="auto" reassigns a sixteenth of the points at once


def _check_int(value, name, low):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
    ):
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")


class DirichletProcessGaussianMixture(DensityMixin, BaseEstimator):
    """Dirichlet-process Gaussian mixture with a Normal-inverse-Wishart base.

    The density of the rows of ``X`` is a DP mixture of Gaussians whose means
    and covariances have a data-derived NIW prior (see the theory page of the
    user guide): ``mu0`` the data
    mean, ``kappa0 = 0.01``, ``nu0 = d + 2`` and
    ``Psi0 = diag(var) / K0^(2/d)`` with ``K0 = prior_clusters``; the
    concentration has a Gamma(1, 1) prior. The predictive density of a new point
    averages the mixture's predictive over posterior samples (the paper's
    Eq. 3), computed with log-sum-exp.

    Parameters
    ----------
    backend : {"gibbs", "variational"}, default="gibbs"
        ``"gibbs"``: collapsed Gibbs sampling (Student-t posterior predictive of
        each cluster, Chinese-restaurant weights, Escobar-West update of the
        concentration), the reference method. ``"variational"``: coordinate
        ascent variational inference with a truncated Dirichlet-process prior
        and the same NIW base (the fit of scikit-learn's
        :class:`~sklearn.mixture.BayesianGaussianMixture`, batched over the
        components), a fast approximation
        (one Gaussian mixture, no averaging over samples; the concentration is
        fixed at its prior mean 1). A single point is always fitted by the
        sampler (its one partition makes the posterior exact).
    n_sweeps : int, default=400
        Gibbs sweeps (each reassigns every point once).
    burn_in : int, default=None
        Sweeps discarded before posterior samples are kept; None discards
        the first 80 % (``floor(0.8 n_sweeps)``, 320 of 400).
    thin : int, default=None
        Keep one sample every ``thin`` sweeps after the burn-in; None keeps
        about 20 (``max(1, (n_sweeps - burn_in) // 20)``, 4 for the defaults).
    block_size : int or "auto", default="auto"
        Points taken out and reassigned together in a Gibbs sweep. 1 is the
        exact collapsed Gibbs sampler, one point at a time with rank-one
        updates of the clusters' Cholesky factors (the reference). Larger
        blocks use the vectorised blocked sampler: the predictives of a
        block's points under every cluster are computed at once (one matrix
        product with the clusters' inverse scale matrices) and their new
        clusters drawn together, so each point of a block is reassigned
        from its exact single-site conditional given the state before the
        block, without seeing the others' new assignments (an
        approximation, exact in the limit of blocks of one point; points of
        a block opening clusters together split more than the posterior
        does: measured on 5 points against their posterior over partitions,
        enumerated, blocks of 2 moved it by 0.1 in total variation, and one
        block of all 5 left every point alone 99 % of the time, against 41 %).
        The points that move update their two clusters by Sherman-Morrison
        in ``O(d^2)``, and every 10 sweeps all clusters are recomputed from
        their members; a sweep costs about ``O(n K d^2)``.
        ``"auto"`` takes blocks of ``ceil(n / 16)`` points, 16 blocks per
        sweep (exact for at most 16 points); ``block_size_`` and ``method_``
        record the choice.
    init_clusters : int, default=30
        The sampler starts from a k-means partition into this many clusters (all
        points apart if it is at least the number of points); it merges an
        over-segmented start readily, but splits a large cluster slowly.
    prior_clusters : float, default=6.0
        ``K0`` of the prior scale ``Psi0``.
    kappa0 : float, default=0.01
        Prior precision factor of the cluster means.
    reg_covar : float, default=1e-6
        Added to the data variances in ``Psi0``, so that constant features and
        single points remain valid. Absolute: on features of variance near it,
        log-densities depend on the features' scale beyond ``-d log s``.
    max_components : int, default=20
        Truncation of the variational backend.
    max_iter : int, default=500
        EM iterations of the variational backend.
    max_samples : int or None, default=None
        Fit the mixture to at most this many rows, drawn at random without
        replacement (None: all of them); the prior is still derived from all
        rows, and the predictive density is evaluated wherever asked. Bounds
        the cost of the fit whatever the number of rows.
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means start, the sampler and the variational fit.
    verbose : int, default=0
        Show a progress bar over the Gibbs sweeps when positive.

    Attributes
    ----------
    mean_prior_ : ndarray of shape (n_features,)
        ``mu0``.
    covariance_prior_ : ndarray of shape (n_features, n_features)
        ``Psi0``.
    degrees_of_freedom_prior_ : float
        ``nu0 = n_features + 2``.
    component_means_ : ndarray of shape (n_components, n_features)
        Locations of every predictive component over all posterior samples
        (for the Gibbs backend each sample contributes its clusters and one
        prior component for a new cluster).
    component_chols_ : ndarray of shape (n_components, n_features, n_features)
        Lower Cholesky factors of the components' shape matrices.
    component_precision_chols_ : ndarray of shape (n_components, n_features, \
n_features)
        Their inverses.
    component_dfs_ : ndarray of shape (n_components,)
        Student-t degrees of freedom (``inf``: Gaussian component).
    component_log_weights_ : ndarray of shape (n_components,)
        Log weights including the ``1 / n_posterior_samples_`` average.
    n_posterior_samples_ : int
        Posterior samples averaged (1 for the variational backend).
    n_clusters_ : ndarray, one entry per posterior sample
        Occupied clusters in each sample (variational: components that are
        the most probable component of at least one training point; the
        others only hold the prior's share of the truncation).
    burn_in_, thin_ : int
        The burn-in and thinning used (Gibbs only).
    n_clusters_trace_, alpha_trace_ : ndarray of shape (n_sweeps,)
        Number of clusters and concentration after every sweep (Gibbs only).
    method_ : {"gibbs", "blocked-gibbs", "variational"}
        The method used: exact collapsed Gibbs, the blocked sampler, or the
        variational mixture.
    block_size_ : int
        Points reassigned together (Gibbs only; 1 for exact Gibbs).
    n_fit_samples_ : int
        Rows the mixture was fitted to (``min(n_samples, max_samples)``).
    n_features_in_ : int

    Notes
    -----
    The fit runs with one BLAS and one OpenMP thread (through
    ``threadpoolctl``): its linear algebra is on ``d x d`` matrices and its
    k-means start on one class, where more threads only wait for each other
    (an 8 x 8 triangular solve took 100 times longer with two OpenBLAS
    threads on a busy 2-core machine). Fit several mixtures in parallel
    instead, as :class:`ClassConditionalDensity` does with ``n_jobs``. In a
    thread other than the main one (a threading backend), only OpenMP's
    count is the fit's: OpenBLAS's is the process's, which such a thread
    could not restore.

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, "Neural Representations Reveal Distinct
       Modes of Class Fitting in Residual Convolutional Networks", AAAI 2023,
       section 3 (Eq. 3).
    .. [2] R. M. Neal, "Markov Chain Sampling Methods for Dirichlet Process
       Mixture Models", JCGS 2000, algorithm 3.
    .. [3] M. D. Escobar, M. West, "Bayesian Density Estimation and Inference
       Using Mixtures", JASA 1995, section 6.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.representations import DirichletProcessGaussianMixture
    >>> rng = np.random.RandomState(0)
    >>> X = np.concatenate([rng.randn(40, 2) * 0.1, rng.randn(40, 2) * 0.1 + 3])
    >>> dp = DirichletProcessGaussianMixture(n_sweeps=20, burn_in=10, thin=2,
    ...                                      random_state=0).fit(X)
    >>> dp.n_clusters_
    array([2, 2, 2, 2, 2])
    >>> bool(dp.log_predictive([[0.0, 0.0]])[0] > dp.log_predictive([[1.5, 1.5]])[0])
    True
    """

    def __init__(
        self,
        backend: str = "gibbs",
        n_sweeps: int = 400,
        burn_in: int | None = None,
        thin: int | None = None,
        block_size: int | str = "auto",
        init_clusters: int = 30,
        prior_clusters: float = 6.0,
        kappa0: float = 0.01,
        reg_covar: float = 1e-6,
        max_components: int = 20,
        max_iter: int = 500,
        max_samples: int | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ) -> None:
        self.backend = backend
        self.n_sweeps = n_sweeps
        self.burn_in = burn_in
        self.thin = thin
        self.block_size = block_size
        self.init_clusters = init_clusters
        self.prior_clusters = prior_clusters
        self.kappa0 = kappa0
        self.reg_covar = reg_covar
        self.max_components = max_components
        self.max_iter = max_iter
        self.max_samples = max_samples
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS}; got {self.backend!r}."
            )
        for name in ("n_sweeps", "init_clusters", "max_components"):
            _check_int(getattr(self, name), name, 1)
        if self.block_size != "auto":
            _check_int(self.block_size, "block_size", 1)
        if self.max_samples is not None:
            _check_int(self.max_samples, "max_samples", 1)
        _check_int(self.max_iter, "max_iter", 1)
        if self.thin is not None:
            _check_int(self.thin, "thin", 1)
        if self.burn_in is not None:
            _check_int(self.burn_in, "burn_in", 0)
        for name in ("prior_clusters", "kappa0", "reg_covar"):
            check_finite_number(getattr(self, name), name, positive=True)
        if self.backend == "gibbs":
            self._schedule()

    def _schedule(self):
        """The burn-in and thinning, defaults following ``n_sweeps``."""
        burn_in = self.burn_in
        if burn_in is None:
            burn_in = int(BURN_IN_FRACTION * self.n_sweeps)
        thin = self.thin
        if thin is None:
            thin = max(1, (self.n_sweeps - burn_in) // KEPT_SAMPLES)
        if burn_in + thin > self.n_sweeps:
            raise ValueError(
                f"No posterior sample would be kept: burn_in + thin = "
                f"{burn_in + thin} exceeds n_sweeps = {self.n_sweeps}. "
                "Increase n_sweeps or lower burn_in."
            )
        return burn_in, thin

    def fit(self, X: ArrayLike, y: Any = None) -> Self:
        """Fit the DP mixture to the rows of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : DirichletProcessGaussianMixture
        """
        self._check_params()
        X = validate_data(self, X, dtype=np.float64)
        rng = check_random_state(self.random_state)
        prior = NIWPrior.from_data(X, self.kappa0, self.prior_clusters, self.reg_covar)
        self.mean_prior_ = prior.mean
        self.covariance_prior_ = prior.psi
        self.degrees_of_freedom_prior_ = prior.nu
        if self.max_samples is not None and len(X) > self.max_samples:
            X = X[np.sort(rng.choice(len(X), self.max_samples, replace=False))]
        self.n_fit_samples_ = len(X)
        # The fit works on d x d matrices: BLAS and OpenMP threads only add
        # their synchronisation (100 times slower with two on a busy machine).
        # one point has one partition: the sampler is exact
        backend = self.backend if len(X) > 1 else "gibbs"
        with single_threaded_blas():
            if backend == "gibbs":
                self._fit_gibbs(X, prior, rng)
            else:
                self._fit_variational(X, prior, rng)
        return self

    def _initial_labels(self, X, rng):
        n_distinct = len(np.unique(X, axis=0))
        k = min(self.init_clusters, n_distinct)
        if k >= X.shape[0]:
            return np.arange(X.shape[0])
        labels = KMeans(k, n_init=1, random_state=rng.randint(2**31 - 1)).fit_predict(X)
        return np.unique(labels, return_inverse=True)[1]

    def _resolved_block_size(self, n):
        if self.block_size == "auto":
            return max(1, -(-n // AUTO_BLOCKS))
        return self.block_size

    def _fit_gibbs(self, X, prior, rng):
        self.burn_in_, self.thin_ = self._schedule()
        self.block_size_ = self._resolved_block_size(len(X))
        self.method_ = "gibbs" if self.block_size_ == 1 else "blocked-gibbs"
        schedule = (self.n_sweeps, self.burn_in_, self.thin_)
        initial = self._initial_labels(X, rng)
        if self.block_size_ == 1:
            samples, n_clusters, alphas = gibbs_sampler(
                X, prior, initial, *schedule, rng, self.verbose
            )
        else:
            samples, n_clusters, alphas = blocked_gibbs_sampler(
                X, prior, initial, *schedule, self.block_size_, rng, self.verbose
            )
        self._set_components(
            {key: np.concatenate([s[key] for s in samples]) for key in samples[0]},
            len(samples),
        )
        self.n_clusters_ = np.array([len(s["df"]) - 1 for s in samples])
        self.n_clusters_trace_, self.alpha_trace_ = n_clusters, alphas

    def _fit_variational(self, X, prior, rng):
        self.method_ = "variational"
        fit = fit_variational(
            X,
            prior,
            min(self.max_components, X.shape[0]),
            self.reg_covar,
            self.max_iter,
            rng.randint(2**31 - 1),
        )
        components = dict(
            mean=fit.mean,
            chol=fit.chol,
            prec_chol=fit.precision_chol,
            df=np.full(len(fit.weights), np.inf),
            log_weight=np.log(fit.weights),
        )
        self._set_components(components, 1)
        self.n_clusters_ = np.array([len(np.unique(fit.labels))])

    def _set_components(self, c, n_samples):
        self.component_means_ = c["mean"]
        self.component_chols_ = c["chol"]
        self.component_precision_chols_ = c["prec_chol"]
        self.component_dfs_ = c["df"]
        self.component_log_weights_ = c["log_weight"] - np.log(n_samples)
        self.n_posterior_samples_ = n_samples

    def log_predictive(self, X: ArrayLike) -> np.ndarray:
        """Log predictive density of each row, averaged over posterior samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return mixture_logpdf(
            X,
            self.component_means_,
            self.component_precision_chols_,
            self.component_dfs_,
            self.component_log_weights_,
        )

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Alias of :meth:`log_predictive` (scikit-learn's density API).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        return self.log_predictive(X)

    def score(self, X: ArrayLike, y: Any = None) -> float:
        """Mean log predictive density of the rows of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored (scikit-learn's signature).

        Returns
        -------
        score : float
        """
        return float(self.log_predictive(X).mean())

    def sample(
        self,
        n_samples: int = 1,
        random_state: int | np.random.RandomState | None = None,
    ) -> np.ndarray:
        """Draw from the predictive density.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Seed of the draws; None takes the estimator's ``random_state``, as
            scikit-learn's mixtures do.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        _check_int(n_samples, "n_samples", 1)
        rng = check_random_state(
            self.random_state if random_state is None else random_state
        )
        w = np.exp(self.component_log_weights_ - self.component_log_weights_.max())
        comp = rng.choice(len(w), size=n_samples, p=w / w.sum())
        d = self.component_means_.shape[1]
        g = rng.standard_normal((n_samples, d))
        X = np.einsum("nij,nj->ni", self.component_chols_[comp], g)
        df = self.component_dfs_[comp]
        t = np.isfinite(df)
        X[t] *= np.sqrt(df[t] / rng.chisquare(df[t]))[:, None]
        return X + self.component_means_[comp]
