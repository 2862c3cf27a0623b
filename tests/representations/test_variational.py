"""The batched variational DP mixture against scikit-learn's, its oracle."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture

from sksim.representations import DirichletProcessGaussianMixture, _variational
from sksim.representations._niw import NIWPrior
from sksim.representations._variational import fit_variational


def _modes(seed, n, d, n_modes=4, offset=0.0):
    """Gaussian modes of different spreads, shifted ``offset`` from the origin."""
    rng = np.random.RandomState(seed)
    parts = [
        rng.uniform(0.05, 2.0) * rng.randn(n // n_modes, d) + 3 * rng.randn(d)
        for _ in range(n_modes)
    ]
    return np.concatenate(parts) + offset


def _sklearn(X, prior, n_components, max_iter, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return BayesianGaussianMixture(
            n_components=n_components,
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=1.0,
            mean_prior=prior.mean,
            mean_precision_prior=prior.kappa,
            degrees_of_freedom_prior=prior.nu,
            covariance_prior=prior.psi,
            reg_covar=1e-6,
            max_iter=max_iter,
            random_state=seed,
        ).fit(X)


def _assert_same_fit(fit, bgm, X):
    np.testing.assert_allclose(fit.mean, bgm.means_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fit.weights, bgm.weights_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        fit.chol @ np.swapaxes(fit.chol, 1, 2), bgm.covariances_, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        np.swapaxes(fit.precision_chol, 1, 2),
        bgm.precisions_cholesky_,
        rtol=1e-8,
        atol=1e-9,
    )
    assert fit.n_iter == bgm.n_iter_
    assert fit.converged == bgm.converged_
    np.testing.assert_array_equal(fit.labels, bgm.predict(X))


@pytest.mark.parametrize(
    "seed, n, d, n_components, offset",
    [
        (0, 40, 2, 5, 0.0),
        (1, 300, 8, 20, 0.0),
        (2, 500, 16, 20, 1e3),  # far from the origin: moments about the mean
        (3, 200, 3, 10, -50.0),
        (4, 24, 4, 24, 0.0),  # as many components as points
    ],
)
def test_fit_is_scikit_learns(seed, n, d, n_components, offset):
    X = _modes(seed, n, d, offset=offset)
    prior = NIWPrior.from_data(X, 0.01, 6.0, 1e-6)
    fit = fit_variational(X, prior, n_components, 1e-6, 500, seed)
    _assert_same_fit(fit, _sklearn(X, prior, n_components, 500, seed), X)
    assert fit.converged


def test_points_in_blocks_give_the_same_fit(monkeypatch):
    X = _modes(5, 90, 5)
    prior = NIWPrior.from_data(X, 0.01, 6.0, 1e-6)
    whole = fit_variational(X, prior, 8, 1e-6, 500, 0)
    monkeypatch.setattr(_variational, "ROWS", 16)
    kept = fit_variational(X, prior, 8, 1e-6, 500, 0)
    monkeypatch.setattr(_variational, "MOMENT_BYTES", 0)  # products recomputed
    recomputed = fit_variational(X, prior, 8, 1e-6, 500, 0)
    assert _variational._outer_blocks(X) is None
    for fit in (kept, recomputed):
        np.testing.assert_allclose(fit.mean, whole.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fit.chol, whole.chol, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fit.weights, whole.weights, rtol=1e-10)
        assert fit.n_iter == whole.n_iter
        np.testing.assert_array_equal(fit.labels, whole.labels)


def test_unconverged_fit_warns_and_stops_where_scikit_learns_does():
    X = _modes(6, 400, 6)
    prior = NIWPrior.from_data(X, 0.01, 6.0, 1e-6)
    with pytest.warns(ConvergenceWarning, match="max_iter=3 iterations"):
        fit = fit_variational(X, prior, 20, 1e-6, 3, 0)
    bgm = _sklearn(X, prior, 20, 3, 0)
    assert not bgm.converged_
    _assert_same_fit(fit, bgm, X)


@pytest.mark.parametrize("backend", ["variational", "gibbs"])
def test_points_whose_variance_overflows_are_refused(backend):
    X = np.random.RandomState(0).randn(30, 3) * 1e160
    mixture = DirichletProcessGaussianMixture(backend=backend, n_sweeps=4)
    with pytest.raises(ValueError, match="variance of the points overflows"):
        mixture.fit(X)


def test_duplicate_points_fit_without_k_means_warning():
    """Fewer distinct points than components: k-means' warning about its
    n_clusters, a setting the user never chose, reached the user."""
    X = np.repeat(np.random.RandomState(0).randn(3, 2), 8, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = DirichletProcessGaussianMixture(backend="variational", random_state=0)
        model.fit(X)
    assert np.isfinite(model.log_predictive(X)).all()
