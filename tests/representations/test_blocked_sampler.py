"""The blocked Gibbs sampler against the exact one and the NIW algebra."""

import numpy as np
import pytest
from _niw_oracle import niw_log_predictive, niw_predictive

from sksim.datasets import make_planted_modes
from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
)
from sksim.representations._blocked import ClusterStatistics, _log_predictives
from sksim.representations._gibbs import ClusterState
from sksim.representations._niw import NIWPrior


def _state(seed=0, n=40, d=3, K=4):
    rng = np.random.RandomState(seed)
    X = rng.standard_normal((n, d)) * 2
    z = np.arange(n) % K
    z[-1] = K  # a singleton
    return X, z, NIWPrior.from_data(X)


def test_log_predictives_leave_the_point_out_of_its_own_cluster():
    X, z, prior = _state()
    stats = ClusterStatistics(X - prior.mean, z, prior)
    idx = np.array([0, 5, 13, len(X) - 1])
    logp, log_count = _log_predictives(stats, X[idx] - prior.mean, z[idx])
    for row, i in enumerate(idx):
        for k in range(z.max() + 1):
            members = (z == k) & (np.arange(len(X)) != i)
            assert np.exp(log_count[row, k]) == pytest.approx(members.sum())
            if members.any():
                want = niw_log_predictive(X[members], X[i], prior)
                assert logp[row, k] == pytest.approx(want, rel=1e-9)
    assert log_count[3, z[-1]] == -np.inf  # the singleton's cluster empties


def test_cluster_statistics_give_the_exact_sampler_components():
    X, z, prior = _state(seed=1, d=5)
    got = ClusterStatistics(X - prior.mean, z, prior).components(0.7)
    want = ClusterState(X, prior, z).components(0.7)
    for key in ("mean", "chol", "prec_chol", "df", "log_weight"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12)
    # the clusters', then a new cluster's predictive, as the textbook gives them
    for k, members in enumerate([X[z == k] for k in range(z.max() + 1)] + [X[:0]]):
        location, shape, df = niw_predictive(members, prior)
        np.testing.assert_allclose(got["mean"][k], location, rtol=1e-12)
        np.testing.assert_allclose(got["chol"][k] @ got["chol"][k].T, shape, rtol=1e-9)
        np.testing.assert_allclose(
            got["prec_chol"][k] @ got["chol"][k], np.eye(5), atol=1e-9
        )
        assert got["df"][k] == pytest.approx(df, rel=1e-12)


def test_moves_keep_the_statistics_equal_to_a_recomputation():
    X, z, prior = _state(seed=2, n=60)
    dp = DirichletProcessGaussianMixture(
        n_sweeps=3, burn_in=2, thin=1, block_size=7, random_state=0
    ).fit(X)
    assert dp.method_ == "blocked-gibbs" and dp.block_size_ == 7
    # the kept sample's components come from statistics recomputed from the
    # members; their weights are the cluster sizes over n + alpha
    weights = np.exp(dp.component_log_weights_[:-1]) * (60 + dp.alpha_trace_[-1])
    np.testing.assert_allclose(weights, np.round(weights), atol=1e-9)
    assert weights.sum() == pytest.approx(60)


def test_blocked_sampler_agrees_with_the_exact_sampler_on_planted_modes():
    X, y, _ = make_planted_modes(300, random_state=0)
    fits = {}
    for block_size in (1, "auto"):
        mixture = DirichletProcessGaussianMixture(
            n_sweeps=50, burn_in=30, thin=4, init_clusters=10, block_size=block_size
        )
        fits[block_size] = ClassConditionalDensity(
            6, mixture=mixture, random_state=1
        ).fit(X, y)
    exact, blocked = fits[1], fits["auto"]
    assert [m.method_ for m in exact.mixtures_] == ["gibbs", "gibbs"]
    assert [m.method_ for m in blocked.mixtures_] == ["blocked-gibbs"] * 2
    assert [m.block_size_ for m in blocked.mixtures_] == [19, 19]  # ceil(300 / 16)
    a = exact.class_summary(2000)
    b = blocked.class_summary(2000)
    np.testing.assert_allclose(b.mean_log_density, a.mean_log_density, atol=0.1)
    assert a.mean_log_density[1] - a.mean_log_density[0] > 6
    np.testing.assert_allclose(b.relative_entropy, a.relative_entropy, atol=0.3)
    assert b.method.tolist() == ["blocked-gibbs"] * 2
    assert exact.split_classes()[0].tolist() == blocked.split_classes()[0].tolist()
    assert blocked.split_classes()[0].tolist() == [1]
    assert [m.n_clusters_[-1] for m in blocked.mixtures_][1] == 8


@pytest.mark.parametrize(
    "n, block_size, method, resolved",
    [(16, "auto", "gibbs", 1), (17, "auto", "blocked-gibbs", 2), (100, 1, "gibbs", 1)],
)
def test_block_size_auto_is_a_sixteenth_of_the_points(n, block_size, method, resolved):
    X = np.random.RandomState(0).randn(n, 2)
    dp = DirichletProcessGaussianMixture(
        n_sweeps=2, burn_in=1, thin=1, block_size=block_size, random_state=0
    ).fit(X)
    assert (dp.method_, dp.block_size_, dp.n_fit_samples_) == (method, resolved, n)


def test_variational_backend_records_its_method():
    X = np.random.RandomState(0).randn(50, 2)
    dp = DirichletProcessGaussianMixture(backend="variational", random_state=0)
    assert dp.fit(X).method_ == "variational"


def test_max_samples_fits_a_random_subset_and_scores_everywhere():
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(300, 2), rng.randn(300, 2) + 6])
    dp = DirichletProcessGaussianMixture(
        n_sweeps=10, burn_in=9, max_samples=80, random_state=0
    ).fit(X)
    assert dp.n_fit_samples_ == 80 and dp.block_size_ == 5
    np.testing.assert_allclose(dp.mean_prior_, X.mean(axis=0))  # prior: all rows
    weights = np.exp(dp.component_log_weights_[:-1]) * (80 + dp.alpha_trace_[-1])
    assert weights.sum() == pytest.approx(80)
    assert dp.log_predictive(X).shape == (600,)
    full = DirichletProcessGaussianMixture(n_sweeps=10, random_state=0).fit(X)
    assert dp.score(X) == pytest.approx(full.score(X), abs=0.15)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(block_size=0), "block_size must be an int >= 1"),
        (dict(block_size="big"), "block_size must be an int >= 1"),
        (dict(max_samples=0), "max_samples must be an int >= 1"),
    ],
)
def test_parameter_errors(params, match):
    with pytest.raises(ValueError, match=match):
        DirichletProcessGaussianMixture(**params).fit(np.ones((5, 2)))
