"""A class or a mixture fitted on one point (by the sampler, exact for one point)."""

import warnings

import numpy as np
import pytest

from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
)


def test_one_point_is_fitted_by_the_sampler_whatever_the_backend():
    X = np.random.RandomState(0).randn(1, 3)
    queries = X + np.array([[0.1], [1.0]])
    kwargs = dict(n_sweeps=20, random_state=0)
    variational = DirichletProcessGaussianMixture(backend="variational", **kwargs)
    gibbs = DirichletProcessGaussianMixture(backend="gibbs", **kwargs)
    variational.fit(X)
    assert variational.method_ == "gibbs"
    np.testing.assert_allclose(
        variational.score_samples(queries), gibbs.fit(X).score_samples(queries)
    )
    # the predictive is highest at the point itself
    assert variational.score_samples(X)[0] > variational.score_samples(queries).max()


def test_class_with_one_training_example_is_fitted():
    rng = np.random.RandomState(0)
    Z = np.r_[rng.randn(20, 3), [[5.0, 5.0, 5.0]]]
    y = np.r_[np.zeros(20, int), [1]]
    mixture = DirichletProcessGaussianMixture(backend="variational", random_state=0)
    with pytest.warns(UserWarning, match=r"single point .*: 1\. Their densities"):
        density = ClassConditionalDensity(3, mixture=mixture).fit(Z, y)
    # each point is predicted as its own class, the singleton one included
    np.testing.assert_array_equal(density.predict(Z[[0, 20]]), [0, 1])
    own = density.score_samples(Z[[0, 20]], y[[0, 20]])
    assert np.isfinite(own).all()


def test_a_class_of_copies_is_warned_about_and_others_are_not():
    """A class of one point (copies) got a density of reg_covar alone, the
    highest of all (+20.8 against -4), which put it alone in the "high"
    group without a word."""
    rng = np.random.RandomState(0)
    Z = np.r_[rng.randn(40, 3), np.tile([[5.0, 5.0, 5.0]], (4, 1))]
    y = np.r_[np.arange(40) % 2, [7, 7, 7, 7]]
    mixture = DirichletProcessGaussianMixture(backend="variational", random_state=0)
    with pytest.warns(UserWarning, match=r"single point \(one example, or copies"):
        ClassConditionalDensity(3, mixture=mixture).fit(Z, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "Classes holding a single point")
        ClassConditionalDensity(3, mixture=mixture).fit(Z[:40], y[:40])
