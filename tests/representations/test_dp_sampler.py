"""Correctness of the NIW algebra and of the collapsed Gibbs DP mixture."""

import numpy as np
import pytest
from _niw_oracle import niw_log_predictive
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_normal, multivariate_t
from sklearn.mixture import BayesianGaussianMixture
from sklearn.utils import check_random_state
from sklearn.utils.estimator_checks import parametrize_with_checks

from sksim.representations import DirichletProcessGaussianMixture
from sksim.representations._gibbs import ClusterState, resample_alpha
from sksim.representations._logdensity import student_t_logpdf
from sksim.representations._niw import (
    NIWPrior,
    cholesky_rank_one,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = dict(n_sweeps=6, burn_in=2, thin=2, random_state=0)


def _spd(rng, d):
    A = rng.standard_normal((d, d))
    return A @ A.T + d * np.eye(d)


@pytest.mark.parametrize("d", [1, 3, 7])
def test_student_t_and_gaussian_logpdf_match_scipy(d):
    rng = np.random.RandomState(d)
    X = rng.standard_normal((20, d)) * 2
    means = rng.standard_normal((3, d))
    shapes = np.array([_spd(rng, d) for _ in range(3)])
    chols = np.linalg.cholesky(shapes)
    prec = np.linalg.inv(chols)
    dfs = np.array([2.5, 7.0, np.inf])
    got = student_t_logpdf(X, means, prec, dfs)
    for k in range(2):
        want = multivariate_t(means[k], shapes[k], df=dfs[k]).logpdf(X)
        np.testing.assert_allclose(got[:, k], np.atleast_1d(want), rtol=1e-10)
    want = multivariate_normal(means[2], shapes[2]).logpdf(X)
    np.testing.assert_allclose(got[:, 2], np.atleast_1d(want), rtol=1e-10)


@pytest.mark.parametrize("d", [1, 2, 6, 16])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cholesky_rank_one_matches_recomputation(d, sign):
    rng = np.random.RandomState(d)
    S = _spd(rng, d)
    v = rng.standard_normal(d) * (1.0 if sign > 0 else 0.5)
    L = np.linalg.cholesky(S)
    new = cholesky_rank_one(L, v, sign)
    np.testing.assert_allclose(
        new, np.linalg.cholesky(S + sign * np.outer(v, v)), atol=1e-12
    )
    np.testing.assert_allclose(
        cholesky_rank_one(L, v, sign, np.linalg.inv(L)), new, atol=1e-12
    )


def test_cholesky_downdate_refuses_indefinite_result():
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        cholesky_rank_one(np.eye(2), np.array([2.0, 0.0]), -1.0)


def _state_predictive_oracle(X, labels, prior, x):
    """Student-t predictive of x under each cluster, from the NIW posterior."""
    clusters = range(labels.max() + 1)
    return np.array([niw_log_predictive(X[labels == k], x, prior) for k in clusters])


def test_incremental_cluster_statistics_match_recomputation():
    rng = np.random.RandomState(0)
    X = rng.standard_normal((40, 4)) + 5.0
    prior = NIWPrior.from_data(X)
    state = ClusterState(X, prior, rng.randint(4, size=40))
    for _ in range(200):  # random moves, including deletions and new clusters
        i = rng.randint(40)
        state.remove(i)
        state.add(i, rng.randint(state.K + 1))
    labels = state.z.copy()
    got = state.log_predictive(X[:3])
    np.testing.assert_allclose(
        got,
        np.array([_state_predictive_oracle(X, labels, prior, x) for x in X[:3]]),
        rtol=1e-9,
    )
    L_incremental = state.L[: state.K].copy()
    state.refresh()
    np.testing.assert_allclose(L_incremental, state.L[: state.K], atol=1e-9)
    assert state.count[: state.K].sum() == 40


def test_prior_is_the_data_derived_prior_of_spec_6():
    X = np.random.RandomState(0).standard_normal((50, 4)) * [1, 2, 3, 4]
    dp = DirichletProcessGaussianMixture(**FAST).fit(X)
    np.testing.assert_allclose(dp.mean_prior_, X.mean(axis=0))
    np.testing.assert_allclose(
        dp.covariance_prior_, np.diag((X.var(axis=0) + 1e-6) / 6 ** (2 / 4))
    )
    assert dp.degrees_of_freedom_prior_ == 6.0


def test_alpha_resampling_targets_the_escobar_west_posterior():
    # With a Gamma(1, 1) prior and n points in K clusters, the update is a
    # Gibbs sampler of p(alpha | K, n); check it against that density.
    n, K = 50, 4
    rng = np.random.RandomState(0)
    draws, alpha = [], 1.0
    for _ in range(20000):
        alpha = resample_alpha(alpha, K, n, rng)
        draws.append(alpha)
    grid = np.linspace(1e-3, 8, 8000)
    # p(alpha | K, n) ~ exp(-alpha) alpha^K Gamma(alpha) / Gamma(alpha + n)
    log_post = -grid + K * np.log(grid) + gammaln(grid) - gammaln(grid + n)
    post = np.exp(log_post - log_post.max())
    mean = (grid * post).sum() / post.sum()
    assert abs(np.mean(draws) - mean) < 0.03 * mean


def _separated(rng, n=50):
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return np.concatenate([c + 0.5 * rng.standard_normal((n, 2)) for c in centres])


@pytest.mark.parametrize("block_size", [1, 16])
def test_posterior_over_cluster_count_on_separated_clusters(block_size):
    X = _separated(np.random.RandomState(1))
    dp = DirichletProcessGaussianMixture(
        n_sweeps=40, burn_in=20, thin=2, block_size=block_size, random_state=0
    ).fit(X)
    counts = np.bincount(dp.n_clusters_)
    assert counts.argmax() == 3 and counts[3] >= 0.8 * len(dp.n_clusters_)
    assert dp.n_posterior_samples_ == 10


def test_log_predictive_averages_mixtures_over_posterior_samples():
    X = _separated(np.random.RandomState(2), n=20)
    dp = DirichletProcessGaussianMixture(
        n_sweeps=12, burn_in=4, thin=4, random_state=0
    ).fit(X)
    Y = np.random.RandomState(3).standard_normal((7, 2)) * 4
    dens = np.zeros(len(Y))
    shapes = dp.component_chols_ @ np.transpose(dp.component_chols_, (0, 2, 1))
    for k in range(len(dp.component_dfs_)):
        dens += np.exp(dp.component_log_weights_[k]) * multivariate_t(
            dp.component_means_[k], shapes[k], df=dp.component_dfs_[k]
        ).pdf(Y)
    np.testing.assert_allclose(dp.log_predictive(Y), np.log(dens), rtol=1e-10)
    # the weights of each posterior sample sum to one, the samples average
    assert np.isclose(logsumexp(dp.component_log_weights_), 0.0)
    assert dp.n_posterior_samples_ == 2


def test_random_state_makes_the_sampler_reproducible():
    X = _separated(np.random.RandomState(4), n=20)
    a = DirichletProcessGaussianMixture(**FAST).fit(X)
    b = DirichletProcessGaussianMixture(**FAST).fit(X)
    c = DirichletProcessGaussianMixture(**{**FAST, "random_state": 1}).fit(X)
    np.testing.assert_array_equal(a.alpha_trace_, b.alpha_trace_)
    np.testing.assert_array_equal(a.log_predictive(X), b.log_predictive(X))
    assert not np.array_equal(a.alpha_trace_, c.alpha_trace_)


def test_variational_backend_is_sklearn_bayesian_gaussian_mixture():
    X = _separated(np.random.RandomState(5), n=30)
    dp = DirichletProcessGaussianMixture(
        backend="variational", max_components=5, max_iter=100, random_state=0
    ).fit(X)
    seed = check_random_state(0).randint(2**31 - 1)
    bgm = BayesianGaussianMixture(
        n_components=5,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0,
        mean_prior=X.mean(axis=0),
        mean_precision_prior=0.01,
        degrees_of_freedom_prior=4.0,
        covariance_prior=np.diag((X.var(axis=0) + 1e-6) / 6.0),
        reg_covar=1e-6,
        max_iter=100,
        random_state=seed,
    ).fit(X)
    # the plug-in mixture of the variational posterior (a normalised density,
    # unlike BayesianGaussianMixture.score_samples, an expected log-likelihood)
    dens = sum(
        w * multivariate_normal(m, c).pdf(X)
        for w, m, c in zip(bgm.weights_, bgm.means_, bgm.covariances_, strict=True)
    )
    np.testing.assert_allclose(dp.log_predictive(X), np.log(dens), rtol=1e-9)


@pytest.mark.parametrize("backend", ["gibbs", "variational"])
def test_samples_follow_the_predictive_density(backend):
    X = _separated(np.random.RandomState(6), n=30)
    dp = DirichletProcessGaussianMixture(backend=backend, **FAST).fit(X)
    w = np.exp(dp.component_log_weights_)
    df = dp.component_dfs_
    with np.errstate(invalid="ignore"):
        factor = np.where(np.isinf(df), 1.0, df / (df - 2.0))
    covs = dp.component_chols_ @ np.transpose(dp.component_chols_, (0, 2, 1))
    mean = w @ dp.component_means_
    second = np.einsum("k,kij->ij", w * factor, covs) + np.einsum(
        "k,ki,kj->ij", w, dp.component_means_, dp.component_means_
    )
    S = dp.sample(100000, random_state=0)
    np.testing.assert_allclose(S.mean(axis=0), mean, atol=0.1)
    np.testing.assert_allclose(
        np.cov(S.T), second - np.outer(mean, mean), rtol=0.1, atol=0.3
    )


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(backend="em"), "backend must be one of"),
        (dict(n_sweeps=0), "n_sweeps must be an int >= 1"),
        (dict(burn_in=-1), "burn_in must be an int >= 0"),
        (dict(kappa0=0.0), "kappa0 must be a finite positive number"),
        # NaN was accepted, its log-densities NaN; infinity overflowed the variance
        (dict(kappa0=float("nan")), "kappa0 must be a finite positive number"),
        (dict(prior_clusters=np.nan), "prior_clusters must be a finite positive"),
        (dict(reg_covar=float("inf")), "reg_covar must be a finite positive number"),
        (dict(n_sweeps=10, burn_in=8, thin=4), "No posterior sample would be kept"),
    ],
)
def test_parameter_errors(params, match):
    with pytest.raises(ValueError, match=match):
        DirichletProcessGaussianMixture(**params).fit(np.ones((5, 2)))


def test_sample_draws_from_the_estimators_random_state():
    """It drew from NumPy's global generator, as scikit-learn's mixtures do not."""
    X = _separated(np.random.RandomState(6), n=30)
    dp = DirichletProcessGaussianMixture(**FAST).fit(X)  # random_state=0
    before = np.random.get_state()[1].copy()
    np.testing.assert_array_equal(dp.sample(5), dp.sample(5))
    np.testing.assert_array_equal(dp.sample(5), dp.sample(5, random_state=0))
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert not np.array_equal(dp.sample(5), dp.sample(5, random_state=1))


def test_sample_size_error():
    dp = DirichletProcessGaussianMixture(**FAST).fit(np.eye(3))
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        dp.sample(0)


@parametrize_with_checks(
    [
        DirichletProcessGaussianMixture(n_sweeps=4, burn_in=2, thin=2),
        DirichletProcessGaussianMixture(
            backend="variational", max_components=3, max_iter=50
        ),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_burn_in_and_thinning_follow_n_sweeps_unless_set():
    X = np.random.RandomState(0).randn(30, 2)
    dp = DirichletProcessGaussianMixture(n_sweeps=10, random_state=0).fit(X)
    assert (dp.burn_in_, dp.thin_, dp.n_posterior_samples_) == (8, 1, 2)
    assert DirichletProcessGaussianMixture()._schedule() == (320, 4)
    assert DirichletProcessGaussianMixture(n_sweeps=50, burn_in=10)._schedule() == (
        10,
        2,
    )
    dp = DirichletProcessGaussianMixture(n_sweeps=np.int64(6), thin=np.int64(2))
    assert dp.fit(X).burn_in_ == 4 and dp.n_posterior_samples_ == 1
    with pytest.raises(ValueError, match="burn_in \\+ thin = 11 exceeds n_sweeps"):
        DirichletProcessGaussianMixture(n_sweeps=10, burn_in=10).fit(X)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_variational_n_clusters_counts_the_components_that_hold_points(seed):
    from sksim.datasets import make_planted_modes

    X, _, _ = make_planted_modes(
        300, n_single=0, n_multi=1, mode_scale=0.05, random_state=seed
    )
    dp = DirichletProcessGaussianMixture(backend="variational", random_state=0)
    assert dp.fit(X).n_clusters_.tolist() == [8]  # the 8 planted modes, not 20
