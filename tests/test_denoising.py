"""SelfDenoisingAnalysis against a direct NumPy evaluation of its formulas."""

import copy
import sys
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from _architectures import AnyWidth, circle_sine_regressor, mlp
from _sklearn_checks import EXPECTED_FAILED_CHECKS
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch.utils.data import TensorDataset

from sksim import SingularJacobianGramWarning, denoising
from sksim._engine import pieces
from sksim._engine.context import torch_seed
from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import nbytes_of
from sksim.datasets import make_circle_sine
from sksim.denoising import (
    IllConditionedWeightsWarning,
    NoiseEstimateWarning,
    SelfDenoisingAnalysis,
    plot_denoising,
)

matplotlib.use("Agg")


def brute_force_jacobians(net, X):
    """``J(x_i)`` of shape (n, d, p), one ``autograd.grad`` per output."""
    params = list(net.parameters())
    rows = []
    for x in torch.as_tensor(X, dtype=torch.float64):
        out = net(x[None])[0]
        rows.append(
            [
                torch.cat(
                    [
                        g.reshape(-1)
                        for g in torch.autograd.grad(o, params, retain_graph=True)
                    ]
                ).numpy()
                for o in out
            ]
        )
    return np.array(rows)


def inverse_sqrt(G):
    lam, V = np.linalg.eigh(G)
    return V @ np.diag(lam**-0.5) @ V.T


def spec_3(net, X, y, weights, power=8, threshold=0.95, sigma=None):
    """The self-denoising formulas evaluated literally, sample by sample."""
    J = brute_force_jacobians(net, X)
    n, d, _ = J.shape
    f = net(torch.as_tensor(X, dtype=torch.float64)).detach().numpy()
    y = y.reshape(n, d)
    A = np.array([inverse_sqrt(Ji @ Ji.T) @ Ji for Ji in J])
    out = {k: [] for k in ("C", "n_eff", "self_weight", "kernel_prediction", "c")}
    for i in range(n):
        if weights == "ntk":
            B = [J[i] @ J[j].T for j in range(n)]
        elif weights == "cosine":
            B = [A[i] @ A[j].T for j in range(n)]
        else:
            k = [np.trace(A[i] @ A[j].T) / d for j in range(n)]
            if weights == "hard":
                w = [float(kij > threshold) for kij in k]
            else:
                w = [max(kij, 0) ** power for kij in k]
            B = [wij * np.eye(d) for wij in w]
        M_inv = np.linalg.inv(sum(B))
        W = [M_inv @ Bij for Bij in B]
        C = sum(Wij @ Wij.T for Wij in W)
        out["C"].append(C)
        out["n_eff"].append(d / np.trace(C))
        out["self_weight"].append(np.trace(W[i]) / d)
        out["kernel_prediction"].append(sum(W[j] @ y[j] for j in range(n)))
        out["c"].append(np.linalg.norm(f[i] - sum(W[j] @ f[j] for j in range(n))))
    out = {k: np.array(v) for k, v in out.items()}
    if sigma is None:
        expected = sum(
            d + np.trace(out["C"][i]) - 2 * d * out["self_weight"][i] for i in range(n)
        )
        sigma = np.sqrt(((f - y) ** 2).sum() / expected)
    out["sigma"] = sigma
    out["predicted_error"] = sigma**2 * np.trace(out["C"], axis1=1, axis2=2)
    out["f"] = f
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(14, 2))
    y = np.column_stack([np.sin(X[:, 0]), np.cos(X[:, 1]), X[:, 0] * X[:, 1]])
    return X, y + 0.1 * rng.normal(size=y.shape)


@parametrize_with_checks(
    [
        SelfDenoisingAnalysis(
            AnyWidth(n_hidden=6, n_out=1), weights="cosine_pos_pow", batch_size=16
        )
    ],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("weights", ["ntk", "cosine", "cosine_pos_pow", "hard"])
def test_quantities_equal_a_direct_evaluation_of_spec_3(data, d, weights):
    X, Y = data
    y = Y[:, :d]
    net = mlp(2, d, hidden=10).double()
    kwargs = dict(weights=weights, power=3, threshold=0.6)
    analysis = SelfDenoisingAnalysis(net, batch_size=5, **kwargs).fit(X, y)
    expected = spec_3(net, X, y, **kwargs)
    assert analysis.n_outputs_ == d
    np.testing.assert_allclose(analysis.predictions_, expected["f"], atol=1e-10)
    np.testing.assert_allclose(analysis.noise_covariance_, expected["C"], atol=1e-8)
    np.testing.assert_allclose(
        analysis.effective_neighbors_, expected["n_eff"], rtol=1e-7
    )
    np.testing.assert_allclose(
        analysis.denoising_factor_, 1 / expected["n_eff"], rtol=1e-7
    )
    np.testing.assert_allclose(
        analysis.self_weight_, expected["self_weight"], atol=1e-8
    )
    np.testing.assert_allclose(
        analysis.kernel_prediction_, expected["kernel_prediction"], atol=1e-7
    )
    np.testing.assert_allclose(analysis.consistency_, expected["c"], atol=1e-7)
    assert analysis.sigma_ == pytest.approx(expected["sigma"], rel=1e-7)
    np.testing.assert_allclose(
        analysis.predicted_error_, expected["predicted_error"], rtol=1e-6
    )
    assert (analysis.condition_number_ >= 1 - 1e-9).all()
    assert not analysis.ill_conditioned_.any()


def test_single_output_formulas_are_the_papers(data):
    X, Y = data
    net = mlp(2, 1, hidden=10).double()
    analysis = SelfDenoisingAnalysis(net, weights="ntk", sigma=0.3).fit(X, Y[:, 0])
    J = brute_force_jacobians(net, X)[:, 0]
    K = J @ J.T
    n_eff = K.sum(1) ** 2 / (K**2).sum(1)
    np.testing.assert_allclose(analysis.effective_neighbors_, n_eff, rtol=1e-7)
    np.testing.assert_allclose(analysis.predicted_error_, 0.09 / n_eff, rtol=1e-7)
    np.testing.assert_allclose(
        analysis.condition_number_, np.abs(K).sum(1) / np.abs(K.sum(1)), rtol=1e-7
    )
    summary = analysis.summary()
    assert summary["sigma"] == 0.3 and summary["sigma_estimated"] is False
    # what fit did, not the parameter as set since
    assert analysis.set_params(sigma=None).summary()["sigma_estimated"] is False
    analysis.set_params(sigma=0.3)
    assert summary["predicted_rmse"] == pytest.approx(np.sqrt(np.mean(0.09 / n_eff)))
    f = analysis.predictions_[:, 0]
    assert summary["training_rmse"] == pytest.approx(
        np.sqrt(np.mean((f - Y[:, 0]) ** 2))
    )


def test_summary_compares_with_clean_labels(data):
    X, Y = data
    analysis = SelfDenoisingAnalysis(
        mlp(2, 3, hidden=10).double(), weights="hard", threshold=0.5
    )
    analysis.fit(X, Y)
    clean = Y + 0.05
    errors = ((analysis.predictions_ - clean) ** 2).sum(1)
    np.testing.assert_allclose(analysis.clean_errors(clean), errors)
    summary = analysis.summary(clean)
    measured = np.sqrt(errors.mean() / 3)
    assert summary["measured_rmse"] == pytest.approx(measured)
    residuals = ((analysis.predictions_ - Y) ** 2).sum(1)  # per output, as measured
    assert summary["training_rmse"] == pytest.approx(np.sqrt(residuals.mean() / 3))
    assert summary["predicted_over_measured"] == pytest.approx(
        summary["predicted_rmse"] / measured
    )
    assert summary["measured_effective_neighbors"] == pytest.approx(
        analysis.sigma_**2 / measured**2
    )
    message = r"y_clean has shape \({}\); expected the 14 training samples x 3"
    with pytest.raises(ValueError, match=message.format("14,")):
        analysis.summary(Y[:, 0])
    # a transposed y_clean was read as the samples' labels, shuffled
    with pytest.raises(ValueError, match=message.format("3, 14")):
        analysis.summary(Y.T)
    exact = analysis.summary(analysis.predictions_)  # predictions as clean labels
    assert exact["measured_rmse"] == 0
    assert exact["measured_effective_neighbors"] == np.inf
    assert exact["predicted_over_measured"] == np.inf


def test_cancelling_neighbors_are_flagged():
    # f(x) = w.x without bias: J(x) = x, and x, -x pairs make sum_j K_ij = 0.
    net = torch.nn.Linear(2, 1, bias=False).double()
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    with pytest.warns(IllConditionedWeightsWarning, match="ill-conditioned for 4"):
        analysis = SelfDenoisingAnalysis(net, weights="ntk", sigma=0.1)
        analysis.fit(X, X[:, 0])
    assert analysis.ill_conditioned_.all()
    assert np.isinf(analysis.condition_number_).all()
    # The pseudo-inverse of a zero sum is zero: no finite prediction exists.
    np.testing.assert_array_equal(analysis.kernel_prediction_, 0)
    hard = SelfDenoisingAnalysis(net, weights="hard", sigma=0.1).fit(X, X[:, 0])
    assert not hard.ill_conditioned_.any()
    np.testing.assert_allclose(hard.effective_neighbors_, 1.0)  # itself only


def test_a_noise_estimate_beyond_the_targets_spread_is_flagged():
    """Noise added to targets cannot exceed their spread: a net whose outputs
    do not follow them gives an estimate that warns, not one taken as is."""
    rng = np.random.RandomState(0)
    X = rng.randn(30, 3)
    net = mlp(3, 1).double()
    y = 5.0 + 0.01 * rng.randn(30)  # far from the net's outputs, little spread
    with pytest.warns(NoiseEstimateWarning, match="exceeds the spread of the targets"):
        analysis = SelfDenoisingAnalysis(net).fit(X, y)
    assert analysis.sigma_ > y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseEstimateWarning)
        SelfDenoisingAnalysis(net, sigma=0.01).fit(X, y)  # given, not estimated


def test_the_noise_estimate_is_checked_against_the_spread_of_all_targets():
    """The spread was that of the analysed samples' targets: 0 for one
    sample, so that any estimate warned."""
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    net = mlp(3, 1).double()
    with torch.no_grad():
        f = net(torch.from_numpy(X))[:, 0].numpy()
    y = f + 0.05 * rng.randn(40)  # the net's outputs, little noise
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseEstimateWarning)
        analysis = SelfDenoisingAnalysis(net, max_samples=1, random_state=0)
        analysis.fit(X, y)
    assert np.ptp(analysis.targets_) == 0 < analysis.sigma_ < y.std()


def test_sigma_cannot_be_estimated_without_neighbours():
    net = torch.nn.Linear(2, 1, bias=False).double()
    X = np.array([[1.0, 0.0], [0.0, 1.0]])  # orthogonal gradients
    with pytest.raises(ValueError, match="sigma cannot be estimated"):
        SelfDenoisingAnalysis(net, weights="hard").fit(X, [0.0, 1.0])


def test_samples_without_neighbours_get_nan_not_perfect_denoising():
    """A sample whose weights are all zero, its own included (a dead example):
    N_eff was infinite and its predicted error 0, as if perfectly denoised."""
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1, bias=False)
    ).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
    rng = np.random.RandomState(0)
    X = np.vstack([rng.uniform(0.5, 1.5, size=(9, 2)), [[-1.0, -1.0]]])  # last: dead
    y = X.sum(axis=1) + 0.1 * rng.randn(10)
    for weights in ("hard", "cosine_pos_pow", "ntk", "cosine"):
        with pytest.warns(UserWarning, match="1 analysed sample.* no neighbour"):
            analysis = SelfDenoisingAnalysis(net, weights=weights).fit(X, y)
        assert np.isnan(analysis.effective_neighbors_[-1])
        assert np.isnan(analysis.predicted_error_[-1])
        assert np.isnan(analysis.noise_covariance_[-1]).all()
        alive = SelfDenoisingAnalysis(net, weights=weights).fit(X[:-1], y[:-1])
        assert np.isfinite(analysis.effective_neighbors_[:-1]).all()
        np.testing.assert_allclose(  # the dead sample is no one's neighbour
            analysis.effective_neighbors_[:-1], alive.effective_neighbors_
        )
        y_clean = X.sum(axis=1)  # measured on the samples predicted, too
        summary, expected = analysis.summary(y_clean), alive.summary(y_clean[:-1])
        assert summary["n_without_neighbors"] == 1
        names = ("mean_effective_neighbors", "predicted_rmse", "measured_rmse")
        for name in (*names, "training_rmse"):
            assert summary[name] == pytest.approx(expected[name]), name


def test_softmax_outputs_have_no_neighbour_above_a_high_threshold():
    """Class probabilities keep every cosine at most (d - 1) / d: with the hard
    threshold 0.95, every N_eff was infinite and every predicted error 0."""
    rng = np.random.RandomState(0)
    X = rng.randn(30, 4)
    y = np.eye(3)[rng.randint(0, 3, 30)]
    torch.manual_seed(0)
    net = torch.nn.Sequential(mlp(4, 3), torch.nn.Softmax(-1)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularJacobianGramWarning)
        with pytest.raises(ValueError, match=r"No analysed sample has a neighbour"):
            SelfDenoisingAnalysis(net, weights="hard", sigma=0.1).fit(X, y)


def test_no_neighbour_advice_names_only_what_the_settings_can_change():
    """Under weights="cosine_pos_pow" the error advised that very weighting."""
    X = np.random.RandomState(0).randn(12, 4)
    dead = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.ReLU()).double()
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)  # every gradient zero: no weight anywhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="No analysed sample") as raised:
            SelfDenoisingAnalysis(dead, weights="cosine_pos_pow", sigma=0.1).fit(
                X, X[:, 0]
            )
    said = str(raised.value)
    assert 'cosine_pos_pow"' not in said.split(": ", 1)[1]
    assert "lower the threshold" not in said
    assert said.endswith(
        "(d - 1) / d: regress on logits or d - 1 of the probabilities."
    )


def test_unfitted_skorch_net_is_trained_on_fit(data):
    X, Y = data
    net = NeuralNetRegressor(
        mlp(2, 1, hidden=10), max_epochs=5, lr=0.05, train_split=None, verbose=0
    )
    analysis = SelfDenoisingAnalysis(net, random_state=0).fit(
        X.astype(np.float32), Y[:, :1]
    )
    assert analysis.net_.initialized_ and not getattr(net, "initialized_", False)
    expected = analysis.net_.predict(X.astype(np.float32))
    np.testing.assert_allclose(analysis.predictions_, expected, atol=1e-6)


class FlatOutput(torch.nn.Module):
    """A regressor whose outputs are ``(n,)``, as skorch trains on a 1-D y."""

    def __init__(self, flat=True):
        super().__init__()
        self.flat, self.body = flat, mlp(2, 1, hidden=10)

    def forward(self, x):
        return self.body(x)[:, 0] if self.flat else self.body(x)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("as_dataset", [False, True])
@pytest.mark.parametrize("column", [False, True])
def test_a_one_d_target_trains_outputs_of_either_shape(data, flat, as_dataset, column):
    """A 1-D y was made a column for (n,) outputs, and a column kept: the loss
    compared every output with every target (a net of the targets' mean)."""
    X, Y = data
    X, y = X.astype(np.float32), Y[:, 0].astype(np.float32)
    given_y = y[:, None] if column else y
    net = NeuralNetRegressor(
        FlatOutput, module__flat=flat, max_epochs=40, lr=0.05, train_split=None
    )
    net.set_params(verbose=0)
    given = (TensorDataset(torch.as_tensor(X), torch.as_tensor(given_y)), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch's broadcasting one
        fitted = SelfDenoisingAnalysis(net, random_state=0).fit(
            *(given if as_dataset else (X, given_y))
        )
    by_hand = clone(net).set_params(max_epochs=40)
    with torch_seed(0):
        by_hand.fit(X, y if flat else y[:, None])
    np.testing.assert_allclose(
        fitted.net_.predict(X), by_hand.predict(X), rtol=1e-5, atol=1e-6
    )
    assert r2_score(y, fitted.net_.predict(X).reshape(-1)) > 0.5  # old: 0.01


@pytest.mark.parametrize(
    "params, message",
    [
        ({"weights": "gaussian"}, "'weights' parameter .* among"),
        ({"power": -1}, r"'power' parameter .* range \(0.0, inf\)"),
        ({"threshold": 2}, r"'threshold' parameter .* range \[-1.0, 1.0\)"),
        ({"sigma": 0}, r"'sigma' parameter .* range \(0.0, inf\) or None"),
        ({"ridge": -1e-3}, r"'ridge' parameter .* range \[0.0, 1.0\)"),
    ],
)
def test_bad_parameters_are_refused(data, params, message):
    X, Y = data
    with pytest.raises(ValueError, match=message):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double(), **params).fit(X, Y[:, 0])


def test_bad_targets_are_refused(data):
    X, Y = data
    with pytest.raises(
        ValueError, match="requires y to be passed, but the target y is None"
    ):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).fit(X, None)
    with pytest.raises(ValueError, match="X has 14 samples but y has 13"):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).fit(X, Y[:13, 0])
    with pytest.raises(ValueError, match="y has 3 value.s. per sample but .* d=1"):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).fit(X, Y)
    with pytest.raises(ValueError, match="at least 2 training samples"):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).fit(X[:1], Y[:1, 0])
    net = mlp(2, 1, hidden=10).double()
    as_tensor = SelfDenoisingAnalysis(net).fit(X, torch.from_numpy(Y[:, 0]))
    as_array = SelfDenoisingAnalysis(net).fit(X, Y[:, 0])
    assert as_tensor.sigma_ == as_array.sigma_
    labels = np.array(["a", "b"] * 7)
    with pytest.raises(ValueError, match=r"y holds strings \(<U1\).*LabelBinarizer"):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).fit(X, labels)
    with pytest.raises(NotFittedError):
        SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double()).summary()


def test_plot_draws_predicted_and_measured_errors(data):
    X, Y = data
    analysis = SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double(), sigma=0.1).fit(
        X, Y[:, 0]
    )
    ax = plot_denoising(analysis, y_clean=Y[:, 0] + 0.01)
    assert len(ax.collections) == 2  # predicted and measured scatters
    predicted = ax.collections[0].get_offsets()
    np.testing.assert_allclose(predicted[:, 0], analysis.effective_neighbors_)
    np.testing.assert_allclose(
        predicted[:, 1], np.sqrt(analysis.predicted_error_), rtol=1e-6
    )
    assert [line.get_ydata()[0] for line in ax.lines][0] == pytest.approx(0.1)
    # the legend covered the noise's line; the log axis read 4 x 10^0
    figure = ax.figure
    figure.canvas.draw()
    legend = ax.get_legend().get_window_extent(figure.canvas.get_renderer())
    for line in ax.lines:
        y = ax.transData.transform((1, line.get_ydata()[0]))[1]
        assert not legend.y0 <= y <= legend.y1, line.get_label()
    labels = [tick.get_text() for tick in ax.get_xticklabels(which="both")]
    assert labels and not any("times" in text or "^" in text for text in labels)
    matplotlib.pyplot.close(ax.figure)
    before = matplotlib.pyplot.get_fignums()
    with pytest.raises(ValueError):  # checked before an empty figure was left open
        plot_denoising(analysis, y_clean=Y[:5, 0])
    assert matplotlib.pyplot.get_fignums() == before


def test_plot_without_matplotlib_names_the_extra(data, monkeypatch):
    X, Y = data
    analysis = SelfDenoisingAnalysis(mlp(2, 1, hidden=10).double(), sigma=0.1).fit(
        X, Y[:, 0]
    )
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(
        ImportError, match=r"pip install matplotlib. \(sksim's plot extra\)"
    ):
        plot_denoising(analysis)


@pytest.mark.parametrize("weights", ["cosine", "cosine_pos_pow", "hard"])
def test_blocks_within_max_memory_give_the_same_analysis(data, weights, monkeypatch):
    X, Y = data
    net = mlp(2, 3, hidden=10).double()
    kwargs = dict(weights=weights, power=3, threshold=0.6)
    whole = SelfDenoisingAnalysis(net, max_memory=None, **kwargs).fit(X, Y)
    # 4.5 rows (with 100 copies of each, and the copy of their kept pieces)
    # in what the reference's Grams and pieces leave of two thirds of
    # max_memory: blocks of 4 of the 14 rows
    if weights == "cosine":
        block, row, copies = "matrix_block", 8 * 14 * 3 * 3, "MATRIX_COPIES"
    else:
        block, row, copies = "scalar_block", 8 * 14, "SCALAR_COPIES"
    monkeypatch.setattr(denoising, copies, 100)
    reference = GramReference(JacobianEngine(net), X, "cosine")
    row = 100 * row + nbytes_of(reference._pieces) / len(X)
    max_memory = int(1.5 * (4.5 * row + reference._held_bytes()))
    sizes, analyse = [], getattr(denoising, block)

    def recorded(w, own, *args):
        sizes.append(len(own))
        return analyse(w, own, *args)

    monkeypatch.setattr(denoising, block, recorded)
    decomposed, eigh = [], pieces.floored_eigh

    def counted(G, *args):
        decomposed.append(len(G))
        return eigh(G, *args)

    monkeypatch.setattr(pieces, "floored_eigh", counted)
    bounded = SelfDenoisingAnalysis(net, max_memory=max_memory, **kwargs)
    bounded.fit(X, Y)
    assert sizes == [4, 4, 4, 2]
    # the reference's Grams decomposed once, not again for every block
    assert decomposed == [14]
    for name in ("noise_covariance_", "self_weight_", "kernel_prediction_"):
        np.testing.assert_allclose(
            getattr(bounded, name), getattr(whole, name), rtol=1e-12, atol=1e-14
        )
    assert bounded.sigma_ == pytest.approx(whole.sigma_, rel=1e-12)


@pytest.mark.parametrize("max_memory", [None, 4000])  # 4000: pieces not kept
@pytest.mark.parametrize("weights", ["ntk", "cosine", "cosine_pos_pow", "hard"])
def test_analysed_samples_get_their_values_in_the_full_analysis(
    data, weights, max_memory
):
    X, Y = data
    net = mlp(2, 3, hidden=10).double()
    kwargs = dict(weights=weights, power=3, threshold=0.6, batch_size=4)
    kwargs["max_memory"] = max_memory
    full = SelfDenoisingAnalysis(net, **kwargs).fit(X, Y)
    part = SelfDenoisingAnalysis(net, max_samples=5, random_state=1, **kwargs)
    rows = part.fit(X, Y).sample_indices_
    assert len(rows) == 5 and (np.diff(rows) > 0).all() and part.n_samples_fit_ == 14
    expected = np.sort(np.random.RandomState(1).choice(14, 5, replace=False))
    np.testing.assert_array_equal(rows, expected)
    for name in (
        "predictions_",
        "targets_",
        "noise_covariance_",
        "effective_neighbors_",
        "self_weight_",
        "kernel_prediction_",
        "consistency_",
        "condition_number_",
    ):
        np.testing.assert_allclose(
            getattr(part, name), getattr(full, name)[rows], rtol=1e-10, atol=1e-12
        )
    # sigma from the analysed samples' residuals alone
    d, factor = 3, part.denoising_factor_
    expected_sigma2 = ((part.predictions_ - part.targets_) ** 2).sum() / (
        d + d * factor - 2 * d * part.self_weight_
    ).sum()
    assert part.sigma_**2 == pytest.approx(expected_sigma2, rel=1e-12)
    errors = part.clean_errors(Y)  # the clean labels of the whole training set
    np.testing.assert_allclose(errors, full.clean_errors(Y)[rows])


def test_max_samples_above_the_training_set_analyses_all_of_it(data):
    X, Y = data
    net = mlp(2, 3, hidden=10).double()
    analysis = SelfDenoisingAnalysis(net, max_samples=50).fit(X, Y)
    np.testing.assert_array_equal(analysis.sample_indices_, np.arange(14))


def test_scalar_weights_have_the_condition_number_of_the_identity(data):
    X, Y = data
    net = mlp(2, 3, hidden=10).double()
    analysis = SelfDenoisingAnalysis(net, weights="cosine_pos_pow").fit(X, Y)
    # M_i = m_i I and sum_j |w_ij I|_F = sqrt(3) m_i
    np.testing.assert_allclose(analysis.condition_number_, np.sqrt(3), rtol=1e-12)


@pytest.mark.slow
def test_circle_sine_network_beats_its_label_noise():
    """Self-denoising on the toy at reduced size (512 samples, not 2048), f = 1."""
    sigma = 0.2
    toy = make_circle_sine(512, frequency=1, noise=sigma, random_state=0)
    net = circle_sine_regressor().fit(toy.data, toy.target[:, None])
    summaries = {
        weights: SelfDenoisingAnalysis(
            net, weights=weights, threshold=0.99, batch_size=256
        )
        .fit(toy.data, toy.target)
        .summary(toy.target_clean)
        for weights in ("hard", "ntk")
    }
    default = (
        SelfDenoisingAnalysis(net, batch_size=256)
        .fit(toy.data, toy.target)
        .summary(toy.target_clean)
    )
    hard, ntk = summaries["hard"], summaries["ntk"]
    measured = hard["measured_rmse"]
    print(
        f"\nmeasured {measured:.4f}, predicted hard(0.99) {hard['predicted_rmse']:.4f}"
        f" ntk {ntk['predicted_rmse']:.4f}, default {default['predicted_rmse']:.4f},"
        f" sigma estimated {hard['sigma']:.3f}"
    )
    assert measured < sigma / 2
    assert 1 / 3 < hard["predicted_over_measured"] < 3
    assert 1 / 2 < default["predicted_over_measured"] < 2  # the default is honest
    assert ntk["predicted_over_measured"] < 1 / 3  # far too optimistic
    assert hard["sigma"] == pytest.approx(sigma, rel=0.2)


@pytest.mark.parametrize("weights", ["ntk", "cosine"])
def test_a_float32_softmax_net_gives_its_float64_copys_analysis(weights):
    """Probability outputs make every M_i singular along the all-ones vector.
    Whitening float32 NTK blocks raised their rounding there to M_i's scale:
    nothing flagged, the noise covariance 2e4 times too large, N_eff 1.3 for
    36 (the whitened Jacobians' products are as precise as the gradients)."""
    rng = np.random.RandomState(0)
    X = rng.randn(30, 4).astype(np.float32)
    y = np.eye(3)[rng.randint(0, 3, 30)]
    torch.manual_seed(0)
    net = torch.nn.Sequential(mlp(4, 3), torch.nn.Softmax(-1))
    twin = copy.deepcopy(net).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular Grams and M_i, as documented
        single = SelfDenoisingAnalysis(net, weights=weights, sigma=0.1).fit(X, y)
        double = SelfDenoisingAnalysis(twin, weights=weights, sigma=0.1).fit(X, y)
    assert double.ill_conditioned_.all() and single.ill_conditioned_.all()
    for name in ("noise_covariance_", "kernel_prediction_", "effective_neighbors_"):
        got, expected = getattr(single, name), getattr(double, name)
        assert np.abs(got - expected).max() < 1e-2 * np.abs(expected).max()


@pytest.mark.filterwarnings("ignore::sksim.SingularJacobianGramWarning")
def test_unfitted_classifier_trains_on_one_hot_labels():
    """The analysis takes one-hot labels for a classifier, which a skorch
    NeuralNetClassifier refused to train on; integer labels, as its error
    advised, were then refused by the analysis."""
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4).astype(np.float32)
    labels = (X[:, 0] > 0).astype(np.int64)

    def classifier():
        return NeuralNetClassifier(
            mlp(4, 2), max_epochs=3, lr=0.1, train_split=None, verbose=0
        )

    kwargs = dict(
        output=lambda o: torch.softmax(o, -1), weights="cosine_pos_pow", random_state=0
    )
    analysis = SelfDenoisingAnalysis(classifier(), **kwargs).fit(X, np.eye(2)[labels])
    torch.manual_seed(0)
    fitted = classifier().fit(X, labels)  # the same training, on the labels
    assert not hasattr(analysis.net, "module_")  # the user's net stays unfitted
    expected = SelfDenoisingAnalysis(fitted, **kwargs).fit(X, np.eye(2)[labels])
    np.testing.assert_allclose(
        analysis.effective_neighbors_, expected.effective_neighbors_, rtol=1e-6
    )


def test_float32_matrix_weights_of_a_trained_nets_probabilities_agree_with_float64():
    """Trained, the rounding along the probabilities' all-ones direction,
    raised by the cosine's whitening, was amplified by the default ridge:
    predictions of order one off the float64 network's, effective neighbours
    1.2 for 10.5."""
    X, labels = make_blobs(120, centers=3, n_features=4, random_state=0, cluster_std=2)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)
    )
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            net(torch.as_tensor(X)), torch.tensor(labels)
        )
        loss.backward()
        optimizer.step()
    wide = copy.deepcopy(net).double()
    Y = np.eye(3)[labels]

    def probabilities(out):
        return torch.softmax(out, -1)

    for weights in ("ntk", "cosine"):
        with pytest.warns(IllConditionedWeightsWarning):  # every M_i is singular
            single = SelfDenoisingAnalysis(net, weights=weights, output=probabilities)
            single.fit(X, Y)
            double = SelfDenoisingAnalysis(wide, weights=weights, output=probabilities)
            double.fit(X.astype(np.float64), Y)
        np.testing.assert_allclose(
            single.kernel_prediction_, double.kernel_prediction_, atol=1e-3
        )
        np.testing.assert_allclose(
            single.effective_neighbors_, double.effective_neighbors_, rtol=1e-3
        )
        assert double.ridge_ == 1e-6
    precision = 3 * np.finfo(np.float32).eps / np.sqrt(1e-5)
    assert single.ridge_ == pytest.approx(precision)
    half = SelfDenoisingAnalysis(net.to(torch.bfloat16), weights="cosine")
    with pytest.warns(IllConditionedWeightsWarning):  # formed in float32
        assert half.set_params(output=probabilities).fit(X, Y).ridge_ == single.ridge_


def test_samples_whose_only_neighbour_is_themselves_do_not_estimate_sigma():
    """Their prediction is their own label under the model, which expects no
    residual: theirs went into the sum alone (sigma_ 0.53 for a noise of 0.2
    at threshold 0.999, 87 of 120 samples their own only neighbour)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(80, 2)).astype(np.float32)
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2 + 0.2 * rng.normal(size=80)
    net = mlp(2, 1, hidden=16)
    analysis = SelfDenoisingAnalysis(net, weights="hard", threshold=0.999).fit(X, y)
    alone = np.isclose(analysis.self_weight_, 1, rtol=0, atol=1e-9)  # the ridge
    assert 0 < alone.sum() < len(alone)
    residuals = (analysis.predictions_ - analysis.targets_)[~alone, 0] ** 2
    expected = 1 + analysis.denoising_factor_ - 2 * analysis.self_weight_
    sigma = np.sqrt(residuals.sum() / expected[~alone].sum())
    assert analysis.sigma_ == pytest.approx(sigma, rel=1e-12)
