"""GradientDensityEstimator against row sums and counts of the exact kernel."""

from functools import partial

import numpy as np
import pytest
import torch
from _architectures import AnyWidth, circle_sine_regressor
from _architectures import mlp as shared_mlp
from _sklearn_checks import EXPECTED_FAILED_CHECKS, SKETCH_ROUNDING_CHECKS
from scipy.stats import spearmanr
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetRegressor

from sksim import network_similarity
from sksim._engine.features import piece_energies
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.rows import sketch_features
from sksim.datasets import make_circle_sine
from sksim.density import GradientDensityEstimator, positive_power

mlp = partial(shared_mlp, 3)  # mlp(n_outputs, seed=0): 3 -> 12 -> n_outputs


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=(15, 3)).astype(
        np.float32
    )


@parametrize_with_checks(
    [GradientDensityEstimator(AnyWidth(n_hidden=6, n_out=1), batch_size=16)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS | SKETCH_ROUNDING_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(method="hard"),
        dict(n_components=1),
        dict(n_components=4, method="power"),
    ],
)
def test_density_does_not_depend_on_the_rows_order(options):
    """scikit-learn's check asks for 1e-9 of log-densities near 0 with one component."""
    rng = np.random.RandomState(0)
    X, order = 3 * rng.uniform(size=(20, 3)), rng.permutation(20)
    for seed in range(5):
        torch.manual_seed(seed)
        estimator = GradientDensityEstimator(
            AnyWidth(n_hidden=6, n_out=1), batch_size=16, random_state=1, **options
        ).fit(X)
        np.testing.assert_allclose(
            estimator.score_samples(X)[order],
            estimator.score_samples(X[order]),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize(
    "method, reduce",
    [
        ("soft", lambda k: k.sum(1)),
        ("hard", lambda k: (k > 0.8).sum(1)),
        ("power", lambda k: (np.maximum(k, 0) ** 3).sum(1)),
    ],
)
def test_counts_equal_the_exact_kernel(data, d, method, reduce):
    X_ref, X_new = data
    net = mlp(d)
    dens = GradientDensityEstimator(
        net, method=method, threshold=0.8, power=3, batch_size=7
    ).fit(X_ref)
    for X in (X_ref, X_new):
        expected = reduce(network_similarity(net, X, X_ref))
        # float32 gradients: sums of 40 similarities agree to float32 precision
        np.testing.assert_allclose(dens.neighbor_counts(X), expected, rtol=1e-5)


def test_soft_fit_holds_the_whitened_sum(data):
    X_ref, _ = data
    dens = GradientDensityEstimator(mlp(3)).fit(X_ref)
    n_params = sum(p.numel() for p in mlp(3).parameters())
    assert dens.reference_sum_.shape == (3, n_params)
    assert dens.n_reference_ == 40 and dens.n_outputs_ == 3
    assert not hasattr(dens, "reference_features_")


def test_soft_counts_never_build_pairs(data, monkeypatch):
    X_ref, X_new = data
    net = mlp(3)
    expected = network_similarity(net, X_new, X_ref).sum(1)

    def no_pairs(*args, **kwargs):
        raise AssertionError("the soft count must not compute kernel pairs")

    monkeypatch.setattr("sksim.density.cosine_rows", no_pairs)
    monkeypatch.setattr("sksim._engine.pieces.DensePiece.pair", no_pairs)
    monkeypatch.setattr("sksim._engine.pieces.SharedWeightPiece.pair", no_pairs)
    dens = GradientDensityEstimator(net).fit(X_ref)
    np.testing.assert_allclose(dens.neighbor_counts(X_new), expected, atol=1e-6)


def test_reference_counts_include_themselves(data):
    X_ref, _ = data
    net = mlp(1)
    hard = GradientDensityEstimator(net, method="hard", threshold=0.99999)
    counts = hard.fit(X_ref).neighbor_counts(X_ref)
    K = network_similarity(net, X_ref)
    np.testing.assert_array_equal(counts, (K > 0.99999).sum(1))
    assert counts.min() >= 1


@pytest.mark.parametrize("d", [1, 3])
def test_sketched_counts_approach_the_exact_ones(data, d):
    X_ref, X_new = data
    net = mlp(d)
    K = network_similarity(net, X_new, X_ref)
    power = GradientDensityEstimator(
        net, method="power", power=2, n_components=3000, random_state=0
    ).fit(X_ref)
    approx = power.neighbor_counts(X_new)
    exact = (np.maximum(K, 0) ** 2).sum(1)
    # n_components above the 12 * 3 + 12 + 13 * d parameters: every layer is
    # kept exactly, so the "sketch" is exact.
    n_params = sum(p.numel() for p in net.parameters())
    assert power.reference_features_.shape == (40, d * n_params)
    np.testing.assert_allclose(approx, exact, rtol=1e-4)
    sketched = GradientDensityEstimator(
        net, method="power", power=2, n_components=60, random_state=0
    ).fit(X_ref)
    assert sketched.reference_features_.shape == (40, d * 60)
    # the pieces share the columns by their energies on the reference
    engine, seed = JacobianEngine(net), sketched.projection_seed_
    weights = piece_energies(engine, X_ref, seed)
    np.testing.assert_allclose(sketched.sketch_weights_[0], weights, rtol=1e-6)
    np.testing.assert_allclose(
        sketched.reference_features_,
        sketch_features(engine, X_ref, 60, seed, weights=weights),
        atol=1e-6,
    )
    assert np.abs(sketched.neighbor_counts(X_new) - exact).max() < 0.3 * exact.max()
    # Same seed, same sketch: reference examples count themselves exactly once.
    hard = GradientDensityEstimator(
        net, method="hard", threshold=0.999999, n_components=8, random_state=1
    ).fit(X_ref)
    np.testing.assert_array_equal(hard.neighbor_counts(X_ref), np.ones(40))


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_score_samples_is_the_floored_log_relative_count(data, method):
    X_ref, X_new = data
    net = mlp(1)
    dens = GradientDensityEstimator(net, method=method, threshold=0.98).fit(X_ref)
    K = network_similarity(net, X_new, X_ref)
    counts = K.sum(1) if method == "soft" else (K > 0.98).sum(1)
    expected = np.log(np.maximum(counts, 0.5) / 40)
    np.testing.assert_allclose(dens.score_samples(X_new), expected, atol=1e-6)
    assert dens.score(X_new) == pytest.approx(expected.sum(), abs=1e-5)
    if method == "hard":  # empty neighbourhoods get the floor, not -inf
        assert (counts == 0).any() and (counts > 0).any()
        assert dens.score_samples(X_new).min() == pytest.approx(np.log(0.5 / 40))


def test_unfitted_skorch_net_is_trained_on_fit(data):
    X_ref, _ = data
    y = X_ref[:, :1] * 2
    net = NeuralNetRegressor(mlp(1), max_epochs=3, lr=0.1, train_split=None, verbose=0)
    dens = GradientDensityEstimator(net, random_state=0).fit(X_ref, y)
    assert dens.net_ is not net and dens.net_.initialized_
    assert not getattr(net, "initialized_", False)
    expected = network_similarity(dens.net_, X_ref).sum(1)
    np.testing.assert_allclose(dens.neighbor_counts(X_ref), expected, atol=1e-6)


def test_joblib_workers_give_the_same_counts(data):
    X_ref, X_new = data
    net = mlp(1)
    one = GradientDensityEstimator(net, method="power").fit(X_ref)
    two = GradientDensityEstimator(net, method="power", n_jobs=2).fit(X_ref)
    np.testing.assert_allclose(
        two.neighbor_counts(X_new), one.neighbor_counts(X_new), atol=1e-9
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"method": "knn"}, "'method' parameter .* among"),
        ({"threshold": 1.0}, r"'threshold' parameter .* range \[-1.0, 1.0\)"),
        ({"power": 0}, r"'power' parameter .* range \(0.0, inf\)"),
        ({"n_components": 0}, r"'n_components' parameter .* range \[1, inf\)"),
        ({"batch_size": 0}, r"'batch_size' parameter .* range \[1, inf\)"),
        ({"rtol": 1}, r"'rtol' parameter .* range \(0.0, 1.0\)"),
        ({"max_memory": -1}, r"'max_memory' parameter .* range \[1, inf\)"),
        ({"params": 5}, "'params' parameter .* None, an instance of 'str'"),
    ],
)
def test_bad_parameters_are_refused(data, params, message):
    with pytest.raises(ValueError, match=message):
        GradientDensityEstimator(mlp(1), **params).fit(data[0])


def test_counting_before_fit_is_refused(data):
    with pytest.raises(NotFittedError):
        GradientDensityEstimator(mlp(1)).neighbor_counts(data[0])


def test_counts_of_none_are_refused_with_what_to_pass(data):
    """scikit-learn's message advised a reshape of a scalar array."""
    density = GradientDensityEstimator(mlp(1)).fit(data[0])
    for counts in (density.neighbor_counts, density.score_samples):
        with pytest.raises(ValueError, match="X is None: pass the network's inputs"):
            counts(None)


def circle_sine_net(toy, epochs=60):
    """The toy's regressor, trained on ``toy``."""
    return circle_sine_regressor(epochs).fit(toy.data, toy.target[:, None])


@pytest.mark.slow
def test_circle_sine_density_falls_with_frequency_and_curvature():
    """Density falls with frequency (Charpiat et al.), 512 samples instead of 2048."""
    counts, curvatures = [], []
    for f in (1, 2, 4, 8):
        toy = make_circle_sine(512, frequency=f, random_state=0)
        net = circle_sine_net(toy)
        density = GradientDensityEstimator(net, batch_size=256).fit(toy.data)
        counts.append(density.neighbor_counts(toy.data))
        curvatures.append(toy.curvature)
    means = [c.mean() for c in counts]
    rho = spearmanr(np.concatenate(counts), np.concatenate(curvatures))[0]
    print(f"\nmean soft counts for f = 1, 2, 4, 8: {np.round(means, 1)}; rho {rho:.2f}")
    assert all(a > b for a, b in zip(means, means[1:], strict=False))
    assert rho < -0.5


def test_make_circle_sine_values():
    toy = make_circle_sine(2000, frequency=3, noise=0.2, random_state=0)
    angle = 2 * np.pi * toy.alpha
    np.testing.assert_allclose(
        toy.data, np.column_stack([np.cos(angle), np.sin(angle)]), atol=1e-6
    )
    np.testing.assert_allclose(toy.target_clean, np.sin(3 * angle), atol=1e-6)
    np.testing.assert_allclose(toy.curvature, 9 * np.abs(np.sin(3 * angle)), atol=1e-5)
    assert ((toy.alpha >= 0) & (toy.alpha < 1)).all()
    noise = toy.target - toy.target_clean
    assert noise.std() == pytest.approx(0.2, rel=0.05)
    assert abs(noise.mean()) < 0.02
    again = make_circle_sine(2000, frequency=3, noise=0.2, random_state=0)
    np.testing.assert_array_equal(again.target, toy.target)
    clean = make_circle_sine(5, frequency=1, random_state=0)
    np.testing.assert_array_equal(clean.target, clean.target_clean)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_samples": 0}, "n_samples must be a positive int"),
        ({"frequency": 0}, "frequency must be a finite positive number"),
        ({"frequency": "2"}, "frequency must be a finite positive number; got '2'"),
        ({"noise": -0.1}, "noise must be a finite non-negative number"),
        ({"noise": float("nan")}, "noise must be a finite non-negative number"),
    ],
)
def test_make_circle_sine_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_circle_sine(**{"n_samples": 10, **kwargs})


@pytest.mark.parametrize("power", [1, 2, 3, 8, 13, 8.0, 0.5, 2.5])
def test_positive_power_equals_numpys_power(power):
    k = np.random.default_rng(0).uniform(-1, 1, (30, 40))
    before = k.copy()
    w = positive_power(k, power)
    np.testing.assert_allclose(w, np.maximum(k, 0.0) ** power, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(k, before)
    assert not np.shares_memory(w, k)
