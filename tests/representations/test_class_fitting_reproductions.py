"""Reduced-size reproductions of SPEC 6 / targets 7.5 (planted modes) and friends."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sksim.datasets import make_planted_modes
from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
)

pytestmark = pytest.mark.slow


def _planted_conclusions(ccd, strict_single=True):
    summary = ccd.class_summary(n_samples=2000)
    mean_a, mean_b = summary.mean_log_density
    kl_a, kl_b = summary.relative_entropy
    assert mean_b > mean_a + 3  # B fitted in compact modes: far higher density
    assert kl_b > 3
    if strict_single:
        assert kl_a < 0.5
    else:
        assert kl_a < kl_b / 3
    high, low, _ = ccd.split_classes()
    assert high.tolist() == [1] and low.tolist() == [0]
    return summary


def test_planted_modes_gibbs():
    """Planted modes: 2 x 300 points, d' = 6, 50 Gibbs sweeps."""
    X, y, _ = make_planted_modes(300, random_state=0)
    mixture = DirichletProcessGaussianMixture(
        n_sweeps=50, burn_in=30, thin=4, init_clusters=10
    )
    ccd = ClassConditionalDensity(6, mixture=mixture, random_state=0).fit(X, y)
    _planted_conclusions(ccd)


def test_planted_modes_variational_agrees():
    X, y, _ = make_planted_modes(300, random_state=0)
    mixture = DirichletProcessGaussianMixture(
        backend="variational", max_components=10, max_iter=200
    )
    ccd = ClassConditionalDensity(6, mixture=mixture, random_state=0).fit(X, y)
    # the variational fit splits the single Gaussian into a few components, so
    # its relative entropy is larger than the sampler's, but far below B's
    _planted_conclusions(ccd, strict_single=False)


def test_split_separates_single_gaussian_from_multimodal_classes():
    X, y, multimodal = make_planted_modes(120, n_single=5, n_multi=5, random_state=1)
    mixture = DirichletProcessGaussianMixture(
        n_sweeps=30, burn_in=18, thin=4, init_clusters=10
    )
    ccd = ClassConditionalDensity(6, mixture=mixture, random_state=0).fit(X, y)
    high, low, _ = ccd.split_classes()
    np.testing.assert_array_equal(high, np.flatnonzero(multimodal))
    np.testing.assert_array_equal(low, np.flatnonzero(~multimodal))


def test_kl_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.RandomState(0)
    mixture = DirichletProcessGaussianMixture(
        n_sweeps=30, burn_in=14, thin=4, init_clusters=5
    )
    kls = []
    for shift in (0.0, 1.0, 3.0):
        Z = np.concatenate([rng.randn(300, 4), rng.randn(300, 4) + [shift, 0, 0, 0]])
        ccd = ClassConditionalDensity(4, mixture=mixture, random_state=0).fit(
            Z + 5, np.repeat([0, 1], 300)
        )
        kl = ccd.kl_matrix(2000)
        assert np.diag(kl) == pytest.approx(0.0)
        kls.append(kl[0, 1])
    assert kls[0] < 0.2 and kls[0] < kls[1] < kls[2]
    assert kls[2] == pytest.approx(3.0**2 / 2, rel=0.3)  # Gaussian KL = shift^2/2


def test_generative_classifier_on_svd_features_of_digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0
    )
    mixture = DirichletProcessGaussianMixture(n_sweeps=20, burn_in=10, thin=2)
    ccd = ClassConditionalDensity(16, mixture=mixture, random_state=0)
    assert ccd.fit(X_train, y_train).score(X_test, y_test) > 0.8
