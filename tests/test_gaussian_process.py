"""NetworkKernel inside scikit-learn's Gaussian processes."""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from _architectures import (
    MLP,
    SmallCNN,
    TokenModel,
    make_digits_net,
    trained_batchnorm,
)
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.gaussian_process import (
    GaussianProcessClassifier,
    GaussianProcessRegressor,
)
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils._param_validation import InvalidParameterError

from sksim import (
    DeadInputWarning,
    NetworkKernel,
    SingularJacobianGramWarning,
    gaussian_process,
    network_similarity,
)

KINDS = ("ntk", "cosine", "influence")


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return MLP(n_in=2, n_hidden=16, n_out=3)


def clone_double(module):
    return copy.deepcopy(module).double()


@pytest.fixture(scope="module")
def regression():
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, (60, 2)).astype(np.float32)
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 / 4 + 0.05 * rng.randn(60)
    return X[:40], y[:40], X[40:]


@pytest.mark.parametrize("kind", ["ntk", "cosine"])
def test_posterior_mean_is_kernel_ridge(mlp, regression, kind):
    X, y, X_test = regression
    alpha = 0.05
    gp = GaussianProcessRegressor(
        NetworkKernel(mlp, kind=kind), alpha=alpha, optimizer=None
    ).fit(X, y)
    ridge = KernelRidge(kernel="precomputed", alpha=alpha)
    ridge.fit(network_similarity(mlp, X, kind=kind), y)
    expected = ridge.predict(network_similarity(mlp, X_test, X, kind=kind))
    np.testing.assert_allclose(gp.predict(X_test), expected, rtol=1e-8)


def test_predictive_std_is_the_posterior_variance(mlp, regression):
    module = clone_double(mlp)  # float64 throughout: the variance cancels
    X, y, X_test = (np.asarray(a, dtype=np.float64) for a in regression)
    alpha = 0.05
    gp = GaussianProcessRegressor(
        NetworkKernel(module), alpha=alpha, optimizer=None
    ).fit(X, y)
    _, std = gp.predict(X_test, return_std=True)
    K = network_similarity(module, X, kind="ntk")
    K_star = network_similarity(module, X_test, X, kind="ntk")
    prior = np.diag(network_similarity(module, X_test, kind="ntk"))
    explained = np.einsum(
        "ij,ji->i", K_star, np.linalg.solve(K + alpha * np.eye(len(X)), K_star.T)
    )
    np.testing.assert_allclose(std**2, prior - explained, rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("output", ["logits", 1])
def test_diag_is_the_diagonal_of_the_kernel(mlp, regression, kind, output):
    X = regression[0]
    kernel = NetworkKernel(mlp, kind=kind, output=output, batch_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # influence is asymmetric
        K = kernel(X)
    diag = kernel.diag(X)
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-5)
    if kind != "ntk":
        np.testing.assert_allclose(diag, 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_diag_of_softmax_outputs_is_exactly_the_kernels(kind):
    """Softmax outputs floor an eigenvalue: diag read the float32 Grams'
    share of it, and the influence kernel's diagonal was 3e-3 off both."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
    )
    X = np.random.RandomState(0).randn(9, 4).astype(np.float32)
    kernel = NetworkKernel(module, kind=kind, output=lambda z: z.softmax(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_array_equal(kernel.diag(X), np.diag(kernel(X)))
        np.testing.assert_allclose(kernel.diag(X), 0.5, rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_diag_of_dead_and_singular_inputs(kind):
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        module[0].bias.zero_()
    # The first input moves all three outputs, the second two of them (its
    # Jacobian Gram has rank 2), the third none (dead). An active output's
    # gradient is (x, 1), of squared norm |x|^2 + 1 = 6 for both.
    X = np.array([[1.0, 2.0], [2.0, -1.0], [-1.0, -1.0]], dtype=np.float32)
    kernel = NetworkKernel(module, kind=kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        K = kernel(X)
    if kind == "ntk":
        diag = kernel.diag(X)
        expected = [6.0, 4.0, 0.0]
    else:
        with (
            pytest.warns(DeadInputWarning, match="zero gradient"),
            pytest.warns(SingularJacobianGramWarning, match="near-singular for 1"),
        ):
            diag = kernel.diag(X)
        expected = [1.0, 2 / 3, 0.0]
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(diag, expected, rtol=1e-5, atol=1e-12)


def test_composite_kernel_optimises_and_predicts_with_std(mlp, regression):
    X, y, X_test = regression
    kernel = ConstantKernel() * NetworkKernel(mlp, kind="ntk") + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    # only the constant and the noise level are hyper-parameters
    assert gp.kernel_.theta.shape == (2,)
    assert not np.allclose(gp.kernel_.theta, kernel.theta)
    assert gp.log_marginal_likelihood_value_ > gp.log_marginal_likelihood(kernel.theta)
    mean, std = gp.predict(X_test, return_std=True)
    constant = gp.kernel_.k1.k1.constant_value
    noise = gp.kernel_.k2.noise_level
    K = constant * network_similarity(mlp, X, kind="ntk") + noise * np.eye(len(X))
    K_star = constant * network_similarity(mlp, X_test, X, kind="ntk")
    np.testing.assert_allclose(mean, K_star @ np.linalg.solve(K, y), rtol=1e-6)
    prior = constant * NetworkKernel(mlp).diag(X_test) + noise
    explained = np.einsum("ij,ji->i", K_star, np.linalg.solve(K, K_star.T))
    np.testing.assert_allclose(std**2, prior - explained, rtol=1e-5)


def test_the_optimiser_evaluates_the_network_once(mlp, regression, monkeypatch):
    """Each optimiser step computed the same network kernel again: 21 times for
    one fit with two restarts."""
    X, y, _ = regression
    calls = []
    similarity = gaussian_process._similarity
    monkeypatch.setattr(
        gaussian_process,
        "_similarity",
        lambda *args: calls.append(1) or similarity(*args),
    )
    kernel = ConstantKernel() * NetworkKernel(mlp, kind="ntk") + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=2, random_state=0)
    gp.fit(X, y)
    assert len(calls) == 2  # the optimiser's steps, then the final factorisation
    network = gp.kernel_.k1.k2
    K, _ = network(X, eval_gradient=True)
    K += 1.0  # as a Gaussian process adds its alpha, in place
    expected = network_similarity(mlp, X, kind="ntk")
    np.testing.assert_array_equal(network(X, eval_gradient=True)[0], expected)
    network.set_params(kind="cosine")
    cosine = network_similarity(mlp, X)
    np.testing.assert_array_equal(network(X, eval_gradient=True)[0], cosine)
    assert "_last" not in pickle.loads(pickle.dumps(network)).__dict__
    other = copy.deepcopy(mlp)  # the same weights, another function:
    other.forward = lambda x: other.out(torch.tanh(other.fc2(torch.tanh(other.fc1(x)))))
    network.set_params(net=other)
    np.testing.assert_array_equal(
        network(X, eval_gradient=True)[0], network_similarity(other, X)
    )


def test_gradient_is_empty(mlp, regression):
    X = regression[0]
    kernel = NetworkKernel(mlp, kind="cosine")
    K, gradient = kernel(X, eval_gradient=True)
    np.testing.assert_array_equal(K, kernel(X))
    assert gradient.shape == (len(X), len(X), 0)
    assert kernel.theta.shape == (0,)
    assert kernel.bounds.size == 0
    assert kernel.n_dims == 0
    assert kernel.hyperparameters == []
    kernel.theta = np.array([])
    with pytest.raises(ValueError, match="only be evaluated when Y is None"):
        kernel(X, X[:3], eval_gradient=True)


def test_properties_and_repr(mlp):
    kernel = NetworkKernel(mlp, kind="cosine")
    assert kernel.is_stationary() is False
    assert kernel.requires_vector_input is False
    assert repr(kernel) == "NetworkKernel(kind='cosine')"
    assert repr(2.0 * kernel) == "1.41**2 * NetworkKernel(kind='cosine')"
    other = NetworkKernel(mlp, output=0, params="fc1")  # settings that tell apart
    assert repr(other) == "NetworkKernel(kind='ntk', output=0, params='fc1')"


def test_classifier_binary_and_multiclass(mlp, regression):
    X = regression[0]
    binary = (X[:, 0] > 0).astype(int)
    for labels in (binary, np.digitize(X[:, 0] + X[:, 1], [-1.0, 1.0])):
        gpc = GaussianProcessClassifier(
            ConstantKernel() * NetworkKernel(mlp), random_state=0
        ).fit(X, labels)
        proba = gpc.predict_proba(X)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert proba.shape == (len(X), len(np.unique(labels)))
        assert gpc.score(X, labels) >= 0.95


def test_influence_warns_that_it_is_not_a_covariance(mlp, regression):
    X = regression[0]
    kernel = NetworkKernel(mlp, kind="influence")
    with pytest.warns(UserWarning, match='kind="influence" is not symmetric'):
        K = kernel(X)
    assert np.abs(K - K.T).max() > 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(kernel(X[:5], X), K[:5], rtol=1e-6)


def test_get_params_set_params_and_nested_names(mlp):
    kernel = NetworkKernel(mlp, kind="cosine", params="out", batch_size=8)
    assert kernel.get_params() == dict(
        net=mlp,
        kind="cosine",
        output="logits",
        params="out",
        batch_size=8,
        device=None,
        rtol=1e-5,
        max_memory=kernel.max_memory,
    )
    composite = ConstantKernel() * kernel + WhiteKernel()
    composite.set_params(k1__k2__kind="ntk")
    assert kernel.kind == "ntk"
    assert composite.get_params()["k1__k2__params"] == "out"


def test_clone_shares_a_fitted_skorch_net(fitted_digits_net, digits):
    X = digits[0][:30]
    kernel = ConstantKernel(2.0) * NetworkKernel(fitted_digits_net, kind="ntk")
    copy = clone(kernel)
    assert copy == kernel and copy is not kernel
    assert copy.k2.net is fitted_digits_net
    np.testing.assert_array_equal(copy(X), kernel(X))
    rescaled = kernel.clone_with_theta(np.log([3.0]))
    np.testing.assert_allclose(rescaled(X), 1.5 * kernel(X), rtol=1e-12)


def test_a_grid_over_the_shared_nets_parameters_is_refused(fitted_digits_net, digits):
    """Clones share the user's net: setting its parameters through one would
    change (and reinitialise) the user's trained net for every candidate."""
    X, y = digits[0][:40], digits[1][:40].astype(float)
    weights = copy.deepcopy(fitted_digits_net.module_.state_dict())
    process = GaussianProcessRegressor(
        ConstantKernel() * NetworkKernel(fitted_digits_net) + WhiteKernel()
    )
    search = GridSearchCV(
        process, {"kernel__k1__k2__net__module__n_hidden": [4, 8]}, cv=2
    )
    with pytest.raises(ValueError, match=r"does not set its net's parameters"):
        search.fit(X, y)
    with pytest.raises(ValueError, match=r"\['net__lr'\].*as net="):
        clone(NetworkKernel(fitted_digits_net)).set_params(net__lr=0.5)
    assert fitted_digits_net.lr != 0.5
    for name, value in fitted_digits_net.module_.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_unfitted_skorch_net_is_refused(digits):
    with pytest.raises(
        NotFittedError, match="fit the skorch net before.*FrozenEstimator"
    ):
        NetworkKernel(make_digits_net())(digits[0][:5])


def test_invalid_parameter_is_refused(mlp, regression):
    with pytest.raises(InvalidParameterError, match="'kind' parameter"):
        NetworkKernel(mlp, kind="rbf").diag(regression[0])


def test_pickle_of_kernel_and_fitted_process(mlp, regression, tmp_path):
    X, y, X_test = regression
    kernel = ConstantKernel() * NetworkKernel(mlp, kind="cosine") + WhiteKernel()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(kernel))(X), kernel(X))
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    joblib.dump(gp, tmp_path / "gp.joblib")
    loaded = joblib.load(tmp_path / "gp.joblib")
    for a, b in zip(
        loaded.predict(X_test, return_std=True),
        gp.predict(X_test, return_std=True),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_cross_validation_clones_the_process(mlp, regression):
    X, y, _ = regression
    gp = GaussianProcessRegressor(
        ConstantKernel() * NetworkKernel(mlp) + WhiteKernel(), random_state=0
    )
    scores = cross_val_score(gp, X, y, cv=3)
    expected = [
        clone(gp).fit(X[train], y[train]).score(X[test], y[test])
        for train, test in KFold(3).split(X)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_inputs_like_the_other_estimators():
    torch.manual_seed(0)
    cnn = trained_batchnorm(SmallCNN(), torch.randn(16, 1, 6, 6))
    images = torch.randn(5, 1, 6, 6)
    kernel = NetworkKernel(cnn, kind="cosine")
    expected = network_similarity(cnn, images)
    np.testing.assert_allclose(kernel(images), expected)
    np.testing.assert_allclose(kernel(images.numpy()), expected)
    np.testing.assert_allclose(kernel.diag(images), np.diag(expected), rtol=1e-5)

    class Keywords(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TokenModel()

        def forward(self, tokens, scale):
            return self.inner(tokens) * scale

    tokens = np.random.RandomState(0).randint(0, 11, (4, 5))
    inputs = {"tokens": tokens, "scale": np.full((4, 1), 2.0, np.float32)}
    module = Keywords()
    kernel = NetworkKernel(module, kind="ntk")
    K = kernel(inputs)
    np.testing.assert_allclose(K, network_similarity(module, inputs, kind="ntk"))
    np.testing.assert_allclose(kernel.diag(inputs), np.diag(K), rtol=1e-5)


def test_flattened_images_in_a_process():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 6, 6)),
        trained_batchnorm(SmallCNN(n_out=1), torch.randn(16, 1, 6, 6)),
    )
    rng = np.random.RandomState(0)
    X = rng.randn(20, 36).astype(np.float32)
    y = X[:, :6].sum(axis=1)
    gp = GaussianProcessRegressor(
        ConstantKernel() * NetworkKernel(cnn) + WhiteKernel(), random_state=0
    ).fit(X, y)
    mean, std = gp.predict(X[:4], return_std=True)
    assert mean.shape == std.shape == (4,)
    assert np.all(std > 0)


def test_influence_in_a_process_warns_and_fails(mlp, regression):
    X, y, _ = regression
    gp = GaussianProcessRegressor(
        ConstantKernel() * NetworkKernel(mlp, kind="influence") + WhiteKernel(),
        random_state=0,
    )
    with (
        pytest.warns(UserWarning, match='kind="influence" is not symmetric'),
        pytest.raises(np.linalg.LinAlgError, match="not returning a positive"),
    ):
        gp.fit(X, y)


def test_a_process_refuses_weights_changed_after_fit(regression):
    """Its fitted factorisation is of the old weights' kernel."""
    X, y, X_test = regression
    torch.manual_seed(0)
    module = MLP(n_in=2, n_hidden=16, n_out=3)
    kernel = ConstantKernel() * NetworkKernel(module) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    gp.predict(X_test)
    with torch.no_grad():
        next(module.parameters()).add_(0.1)  # trained further, as it were
    with pytest.raises(ValueError, match="changed since this NetworkKernel was first"):
        gp.predict(X_test)
    refit = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    expected = GaussianProcessRegressor(clone(kernel), random_state=0).fit(X, y)
    np.testing.assert_allclose(refit.predict(X_test), expected.predict(X_test))
    next(module.parameters()).requires_grad_(False)  # frozen: another kernel
    with pytest.raises(ValueError, match="changed since this NetworkKernel was first"):
        refit.predict(X_test)


def test_a_process_refuses_a_layer_replaced_after_fit(regression):
    """A Tanh replaced by a ReLU (no weights) went unseen: predict mixed the
    old network's training kernel with the new one's rows."""
    X, y, X_test = regression
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    gp = GaussianProcessRegressor(NetworkKernel(module), alpha=1e-2).fit(X, y)
    module[1] = torch.nn.ReLU()
    with pytest.raises(ValueError, match="weights, layers or their settings"):
        gp.predict(X_test)


@pytest.mark.parametrize("holder", [float, torch.tensor])
def test_a_process_refuses_a_temperature_changed_after_fit(regression, holder):
    """A plain float the forward reads, changed after fit, went unseen:
    predict mixed the training kernel of one temperature with rows of another;
    held as a tensor, it went unseen still (predictions 14 off)."""
    X, y, X_test = regression

    class Tempered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            )
            self.temperature = holder(1.0)

        def forward(self, x):
            return self.body(x / self.temperature)

    torch.manual_seed(0)
    module = Tempered()
    gp = GaussianProcessRegressor(NetworkKernel(module), alpha=1e-2).fit(X, y)
    module.temperature = holder(3.0)
    with pytest.raises(ValueError, match="settings \\(such as a temperature"):
        gp.predict(X_test)


def test_a_net_given_by_set_params_is_evaluated_afresh(mlp, regression):
    """The first net's weights were held against the second: every call
    failed, saying that the weights had changed."""
    X, _, X_test = regression
    torch.manual_seed(1)
    other = MLP(n_in=2, n_hidden=16, n_out=3)
    kernel = NetworkKernel(mlp)
    kernel(X)
    kernel(X, eval_gradient=True)  # kept for an optimiser's next step
    kernel.set_params(net=other)
    np.testing.assert_array_equal(kernel(X), NetworkKernel(other)(X))
    np.testing.assert_array_equal(
        kernel(X, eval_gradient=True)[0], NetworkKernel(other)(X)
    )


def test_a_fitted_process_does_not_follow_the_users_params_list(mlp, regression):
    """Clones shared the list: appending to it after fit mixed the training
    factorisation of one selection with kernel rows of another (0.4 off)."""
    X, y, X_test = regression
    selection = ["out"]
    kernel = NetworkKernel(mlp, kind="ntk", params=selection)
    gp = GaussianProcessRegressor(kernel, alpha=1e-2)
    expected = gp.fit(X, y).predict(X_test)
    selection.append("fc2")
    assert gp.kernel_.params == ["out"]
    np.testing.assert_array_equal(gp.predict(X_test), expected)


def test_diag_names_the_shape_the_network_cannot_take(mlp):
    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(3,\) per sample"):
        NetworkKernel(mlp).diag(X)
