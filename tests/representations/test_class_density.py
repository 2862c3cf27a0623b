"""ClassConditionalDensity: projection, densities, classifier, class statistics."""

import copy
import warnings

import numpy as np
import pytest
import torch
from joblib import parallel_config
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
    extract_representations,
)
from sksim.representations._logdensity import expected_diagonal_gaussian_logpdf

GIBBS = DirichletProcessGaussianMixture(n_sweeps=6, burn_in=2, thin=2)
VARIATIONAL = DirichletProcessGaussianMixture(
    backend="variational", max_components=4, max_iter=100
)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.RandomState(0)
    Z = np.concatenate(
        [rng.randn(40, 5) + 2, 0.3 * rng.randn(40, 5) - 2, rng.randn(30, 5) * 2]
    )
    y = np.repeat(["a", "b", "c"], [40, 40, 30])
    return Z, y, ClassConditionalDensity(3, mixture=GIBBS, random_state=0).fit(Z, y)


def test_projection_is_the_uncentred_svd(fitted):
    Z, _, ccd = fitted
    _, s, Vt = np.linalg.svd(Z, full_matrices=False)  # no centring
    np.testing.assert_allclose(ccd.singular_values_, s[:3])
    np.testing.assert_allclose(
        ccd.components_.T @ ccd.components_, Vt[:3].T @ Vt[:3], atol=1e-10
    )


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999, np.float32(0.9)])
def test_energy_threshold_keeps_the_smallest_sufficient_dimension(fraction):
    rng = np.random.RandomState(1)
    Z = rng.randn(60, 6) * [5, 3, 2, 1, 0.5, 0.1]
    y = np.repeat([0, 1], 30)
    ccd = ClassConditionalDensity(fraction, mixture=GIBBS).fit(Z, y)
    s = np.linalg.svd(Z, compute_uv=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    want = next(k + 1 for k in range(6) if energy[k] >= fraction)
    assert ccd.components_.shape == (want, 6)


@pytest.mark.parametrize("n_components", [16, None])
def test_float32_rounding_adds_no_dimension(n_components):
    """A float32 network's rank-5 layer got d' = 16 from its rounding noise, whose
    variances reg_covar sets: log-densities 90 nats above the float64 net's."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 32)
    )
    rng = np.random.RandomState(0)
    X = rng.randn(150, 3) + np.repeat([[0.0], [2.0], [-2.0]], 50, axis=0)
    y = np.repeat([0, 1, 2], 50)
    fits = []
    for dtype in (torch.float16, torch.float32, torch.float64):
        layer = copy.deepcopy(net).to(dtype)
        Z = extract_representations(layer, X.astype(np.float32), ["2"])["2"]
        assert Z.dtype == torch.empty(0, dtype=dtype).numpy().dtype
        fits.append(
            ClassConditionalDensity(n_components, mixture=GIBBS, random_state=0).fit(
                Z, y
            )
        )
    # Linear(4, 32) of 4 values, and its bias (an uncentred SVD): rank 5
    assert [fit.components_.shape[0] for fit in fits] == [5, 5, 5]
    # the chains part ways on the rounding; the classes' densities agree
    means = [[fit.train_log_density_[y == c].mean() for c in range(3)] for fit in fits]
    np.testing.assert_allclose(means[:2], [means[2]] * 2, atol=0.2)


def test_rounding_of_a_large_feature_does_not_hide_small_ones():
    """A float32 feature of 1000 +- 300 set one floor for all directions: the
    classes, in features of scale 0.002, were cut (d' = 1, accuracy 0.61)."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 100)
    small = 0.002 * rng.randn(200, 4) + 0.0012 * (2 * y[:, None] - 1)
    Z = np.column_stack([1000 + 300 * rng.randn(200), small]).astype(np.float32)
    fit = ClassConditionalDensity(None, mixture=GIBBS, random_state=0).fit(Z, y)
    assert fit.components_.shape[0] == 5
    assert fit.score(Z, y) > 0.9


def test_half_precision_directions_dropped_far_above_rounding_are_warned_of():
    """Float16 features of 3 +- 0.2 (68 roundings) went from d' = 8 to 2, silently;
    a float16 matrix of rank 4 loses only its rounding, without a word."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 100)
    offset = 3 + 0.2 * rng.randn(3, 8)[y] + 0.1 * rng.randn(300, 8)
    with pytest.warns(UserWarning, match="6 direction.s. of these half-precision"):
        fit = ClassConditionalDensity(None, mixture=GIBBS, random_state=0).fit(
            offset.astype(np.float16), y
        )
    assert fit.components_.shape[0] == 2
    low_rank = (rng.randn(300, 4) @ rng.randn(4, 8)).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = ClassConditionalDensity(None, mixture=GIBBS, random_state=0).fit(
            low_rank, y
        )
    assert fit.components_.shape[0] == 4


def test_scores_are_the_class_mixtures_on_projected_features(fitted):
    Z, y, ccd = fitted
    P = Z @ ccd.components_.T
    matrix = ccd.score_samples(Z)
    for c, mixture in enumerate(ccd.mixtures_):
        np.testing.assert_allclose(matrix[:, c], mixture.log_predictive(P))
    own = ccd.score_samples(Z, y)
    index = np.searchsorted(ccd.classes_, y)
    np.testing.assert_allclose(own, matrix[np.arange(len(y)), index])
    np.testing.assert_allclose(ccd.train_log_density_, own)


def test_generative_classifier_uses_bayes_rule(fitted):
    Z, y, ccd = fitted
    joint = ccd.score_samples(Z) + np.log([40 / 110, 40 / 110, 30 / 110])
    np.testing.assert_allclose(
        ccd.predict_log_proba(Z), joint - logsumexp(joint, axis=1, keepdims=True)
    )
    np.testing.assert_array_equal(ccd.predict(Z), ccd.classes_[joint.argmax(axis=1)])
    tilted = ClassConditionalDensity(
        3, mixture=GIBBS, priors=[1.0, 0.0, 0.0], random_state=0
    ).fit(Z, y)
    assert set(tilted.predict(Z)) == {"a"}


def test_split_classes_at_largest_gap(fitted):
    _, y, ccd = fitted
    means = np.array([ccd.train_log_density_[y == c].mean() for c in ccd.classes_])
    high, low, threshold = ccd.split_classes()
    s = np.sort(means)
    j = np.argmax(np.diff(s))
    assert threshold == pytest.approx((s[j] + s[j + 1]) / 2)
    np.testing.assert_array_equal(high, ccd.classes_[means > threshold])
    np.testing.assert_array_equal(low, ccd.classes_[means <= threshold])
    assert "b" in high  # the compact class


def test_density_bins_are_equal_sized_and_ordered(fitted):
    _, _, ccd = fitted
    bins = ccd.density_bins(4)
    counts = np.bincount(bins)
    assert counts.max() - counts.min() <= 1 and len(counts) == 4
    by_bin = [ccd.train_log_density_[bins == b] for b in range(4)]
    assert all(by_bin[b].max() <= by_bin[b + 1].min() for b in range(3))


def test_class_summary_values(fitted):
    Z, y, ccd = fitted
    summary = ccd.class_summary(n_samples=200)
    P = Z @ ccd.components_.T
    from scipy.spatial.distance import pdist

    for c, label in enumerate(ccd.classes_):
        own = ccd.train_log_density_[y == label]
        assert summary.mean_log_density[c] == pytest.approx(own.mean())
        assert summary.std_log_density[c] == pytest.approx(own.std())
        assert summary.mean_intra_class_distance[c] == pytest.approx(
            pdist(P[y == label]).mean()
        )
    np.testing.assert_array_equal(summary.n_samples, [40, 40, 30])
    frame = ccd.class_summary(n_samples=200, as_frame=True)
    np.testing.assert_allclose(frame["relative_entropy"], summary.relative_entropy)


@pytest.mark.parametrize(
    "mixture", [GaussianMixture(2), BayesianGaussianMixture(n_components=2)]
)
def test_another_mixture_is_refused_before_any_fit(mixture):
    """Refused after the first class's fit, by a missing log_predictive."""
    with pytest.raises(TypeError, match="DirichletProcessGaussianMixture"):
        ClassConditionalDensity(2, mixture=mixture).fit(
            np.random.RandomState(0).randn(10, 2), np.repeat([0, 1], 5)
        )


def test_the_gaussians_expected_log_density_is_the_mean_over_draws():
    """Student-t components of 12 degrees of freedom (covariance 12/10 of
    their shape matrix) and weights of several posterior samples."""
    rng = np.random.RandomState(0)
    Z = np.concatenate([rng.randn(60, 3), rng.randn(60, 3) + 4])
    mixture = DirichletProcessGaussianMixture(n_sweeps=12, random_state=0).fit(Z)
    mean, var = np.array([1.0, 2.0, -1.0]), np.array([2.0, 0.5, 3.0])
    for dfs in (12.0, np.inf):  # and Gaussian components
        mixture.component_dfs_ = np.full_like(mixture.component_dfs_, dfs)
        draws = mixture.sample(400_000, random_state=1)
        log_gauss = -0.5 * (
            np.log(2 * np.pi * var).sum() + ((draws - mean) ** 2 / var).sum(axis=1)
        )
        error = 4 * log_gauss.std() / np.sqrt(len(draws))  # 0.1 and 0.08
        found = expected_diagonal_gaussian_logpdf(mixture, mean, var)
        assert found == pytest.approx(log_gauss.mean(), abs=error)


def test_relative_entropy_is_monte_carlo_kl_to_diagonal_gaussian():
    # A Gaussian with a strongly non-diagonal covariance: the exact KL of the
    # fitted (single-component) density to N(mean, diag var) is known.
    rng = np.random.RandomState(2)
    C = np.array([[1.0, 0.9], [0.9, 1.0]])
    Z = rng.multivariate_normal([5, 0], C, size=400)  # not along the mean
    ccd = ClassConditionalDensity(
        2,
        mixture=DirichletProcessGaussianMixture(
            backend="variational", max_components=1
        ),
        random_state=0,
    ).fit(Z, np.zeros(400))
    P = Z @ ccd.components_.T  # the class's points in the reduced space
    np.testing.assert_allclose(ccd.class_means_[0], P.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ccd.class_variances_[0], P.var(0), rtol=1e-12)
    m = ccd.mixtures_[0]
    S = m.component_chols_[0] @ m.component_chols_[0].T
    D = np.diag(P.var(0) + 1e-6)
    diff = m.component_means_[0] - P.mean(0)
    exact = 0.5 * (
        np.trace(np.linalg.solve(D, S))
        - 2
        + diff @ np.linalg.solve(D, diff)
        + np.log(np.linalg.det(D) / np.linalg.det(S))
    )
    assert ccd.relative_entropy(20000)[0] == pytest.approx(exact, abs=0.03)
    assert exact > 0.5


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_components=0), "n_components must be a positive int"),
        (dict(n_components=1.5), "n_components must be a positive int"),
        (dict(priors=[0.5, 0.5, 0.0]), "one entry per class"),
        (dict(priors=[0.7, 0.7]), "non-negative and sum to 1"),
    ],
)
def test_parameter_errors(params, match):
    with pytest.raises(ValueError, match=match):
        ClassConditionalDensity(mixture=VARIATIONAL, **params).fit(
            np.random.RandomState(0).randn(10, 2), np.repeat([0, 1], 5)
        )


def test_method_errors(fitted):
    Z, y, ccd = fitted
    with pytest.raises(ValueError, match="labels not seen in fit: 'z'"):
        ccd.score_samples(Z[:2], ["a", "z"])
    with pytest.raises(ValueError, match="labels not seen in fit: None, 3"):
        ccd.score_samples(Z[:3], np.array(["a", None, 3], dtype=object))
    with pytest.raises(ValueError, match="different lengths"):
        ccd.score_samples(Z[:2], ["a"])
    with pytest.raises(ValueError, match="exceeds the number of training examples"):
        ccd.density_bins(1000)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        ccd.kl_matrix(0)
    unfitted = ClassConditionalDensity(mixture=VARIATIONAL)
    for method in (unfitted.relative_entropy, unfitted.kl_matrix):
        with pytest.raises(NotFittedError):  # was a bare AttributeError
            method()
    one = ClassConditionalDensity(mixture=VARIATIONAL).fit(Z[:10], np.zeros(10))
    with pytest.raises(ValueError, match="at least two classes"):
        one.split_classes()


def test_n_jobs_gives_the_same_fit(fitted):
    Z, y, ccd = fitted
    with parallel_config(backend="threading"):
        par = ClassConditionalDensity(3, mixture=GIBBS, random_state=0, n_jobs=2).fit(
            Z, y
        )
    np.testing.assert_allclose(par.train_log_density_, ccd.train_log_density_)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_warnings_of_the_class_fits_reach_the_caller(fitted, n_jobs):
    """Also from worker processes, which would only print them."""
    Z, y, _ = fitted
    one_step = DirichletProcessGaussianMixture(backend="variational", max_iter=1)
    density = ClassConditionalDensity(
        3, mixture=one_step, random_state=0, n_jobs=n_jobs
    )
    with pytest.warns(ConvergenceWarning) as caught:
        density.fit(Z, y)
    converged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(converged) == 3  # one per class


@parametrize_with_checks(
    [
        ClassConditionalDensity(mixture=GIBBS),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
