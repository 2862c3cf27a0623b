"""Auditing a network already trained (cv="prefit"): no training, weights untouched."""

import copy
import math
import warnings

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import skorch
import torch
from _architectures import MaskedMean, small_net
from _audit_helpers import AUDIT_OPTIONS
from matplotlib.colors import to_hex
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score
from skorch import (
    NeuralNet,
    NeuralNetBinaryClassifier,
    NeuralNetClassifier,
    NeuralNetRegressor,
)

import sksim
from sksim import (
    FlooredDensityWarning,
    GradientDensityEstimator,
    NetworkNeighbors,
    SelfDenoisingAnalysis,
)
from sksim._engine.context import torch_seed
from sksim.audit import audit
from sksim.audit._findings import (
    findings,
    fit_finding,
    mean_pair_difference,
    rmse_meaning,
    target_difference_meaning,
)
from sksim.audit.analyses.density import _warn_if_floored, quantile_bins
from sksim.audit.figures import neighbor_grid
from sksim.audit.models import make_classifier
from sksim.audit.prefit import check_predicted_classes, predictions

N_TRAIN = 160
PREFIT_ANALYSES = ("density", "neighbors", "denoising", "class_fitting")


@pytest.fixture(scope="module")
def split():
    X, y = _audit_helpers.digit_images()
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


@pytest.fixture(scope="module")
def trained(split):
    X, y, _, _ = split
    with torch_seed(0):
        return small_net(X).fit(X, y)


@pytest.fixture(scope="module")
def regression():
    """A skorch regressor trained on 120 of 160 noisy samples of a smooth map."""
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, size=(160, 2)).astype(np.float32)
    y = np.sin(X[:, :1]) + 0.5 * X[:, 1:] + 0.1 * rng.randn(160, 1)
    y = y.astype(np.float32)
    with torch_seed(0):
        net = NeuralNetRegressor(
            torch.nn.Sequential(
                torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            ),
            max_epochs=40,
            lr=0.1,
            batch_size=32,
            train_split=None,
            verbose=0,
        ).fit(X[:120], y[:120])
    return net, X[:120], y[:120], X[120:], y[120:]


def state(module):
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def assert_bit_identical(module, before):
    after = module.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def prefit_audit(net, split, analyses=PREFIT_ANALYSES, **kwargs):
    X, y, X_test, y_test = split
    return audit(
        net,
        X,
        y,
        cv="prefit",
        X_test=X_test,
        y_test=y_test,
        analyses=analyses,
        n_neighbors=3,
        options=AUDIT_OPTIONS,
        **kwargs,
    )


def no_training(monkeypatch):
    """Make any skorch training raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("a prefit audit trained the network")

    monkeypatch.setattr(NeuralNet, "fit", refuse)
    monkeypatch.setattr(NeuralNet, "partial_fit", refuse)


def test_prefit_leaves_weights_bit_identical_and_scores_as_the_net(
    split, trained, monkeypatch
):
    X, y, X_test, y_test = split
    before = state(trained.module_)
    modes = [m.training for m in trained.module_.modules()]
    no_training(monkeypatch)
    generator = torch.get_rng_state()
    result = prefit_audit(
        trained, split, analyses=(*PREFIT_ANALYSES, "sensitivity"), errors="raise"
    )
    assert torch.equal(torch.get_rng_state(), generator)  # the user's, untouched
    assert_bit_identical(trained.module_, before)
    assert [m.training for m in trained.module_.modules()] == modes
    folds = result["folds"]
    assert folds["accuracy"].tolist() == [trained.score(X_test, y_test)]
    assert folds["error"].iloc[0] == pytest.approx(1 - folds["accuracy"].iloc[0])
    assert folds[["fold", "n_train", "n_test"]].values.tolist() == [[0, 160, 80]]
    assert "fit_seconds" not in folds
    assert set(result.metadata["seconds"]) == {
        "predict",
        *PREFIT_ANALYSES,
        "sensitivity",
    }
    assert result.metadata["cv"] == "prefit" and result.metadata["n_folds"] == 1
    assert result.metadata["task"] == "classification"
    assert result.metadata["net"] == "NeuralNetClassifier(module=MLP, prefit)"
    versions = result.metadata["versions"]
    assert versions["sksim"] == sksim.__version__
    assert versions["torch"] == torch.__version__
    assert versions["skorch"] == skorch.__version__
    assert set(versions) == {
        "sksim",
        "python",
        "torch",
        "numpy",
        "scikit-learn",
        "skorch",
    }
    assert result.skipped == {} and result.failed == {}
    samples = result["samples"]
    np.testing.assert_array_equal(samples["index"], np.arange(len(X_test)))
    np.testing.assert_array_equal(samples["prediction"], trained.predict(X_test))
    np.testing.assert_array_equal(samples["label"], y_test)


def test_prefit_analyses_equal_the_estimators_on_the_net(split, trained):
    X, y, X_test, y_test = split
    result = prefit_audit(trained, split, analyses=("density", "neighbors"))
    samples = result["samples"]
    density = GradientDensityEstimator(trained, method="hard", threshold=0.9)
    counts = density.fit(X).neighbor_counts(X_test)
    np.testing.assert_allclose(samples["neighbor_count"], counts)
    similarities, indices = (
        NetworkNeighbors(trained, n_neighbors=3).fit(X).most_similar(X_test)
    )
    neighbors = result["neighbors"]
    np.testing.assert_array_equal(neighbors["train_index"], indices.ravel())
    np.testing.assert_array_equal(neighbors["train_label"], y[indices].ravel())
    np.testing.assert_allclose(neighbors["similarity"], similarities.ravel())
    agreement = (y[indices] == y_test[:, None]).mean(axis=1)
    np.testing.assert_allclose(samples["neighbor_label_agreement"], agreement)
    item = result.gallery[0]
    np.testing.assert_array_equal(item["image"], X_test[item["index"], 0])
    np.testing.assert_array_equal(item["neighbor_images"], X[item["neighbors"], 0])


def test_prefit_frozen_estimator_audits_like_the_net(split, trained, monkeypatch):
    before = state(trained.module_)
    no_training(monkeypatch)
    frozen = prefit_audit(FrozenEstimator(trained), split, analyses=("density",))
    plain = prefit_audit(trained, split, analyses=("density",))
    assert_bit_identical(trained.module_, before)
    for name in ("folds", "samples", "density_bins"):
        assert frozen[name].equals(plain[name]), name


def test_prefit_torch_module_predicts_the_argmax_of_its_outputs(
    split, trained, monkeypatch
):
    X, y, X_test, y_test = split
    module = trained.module_
    before = state(module)
    no_training(monkeypatch)
    result = prefit_audit(module, split, errors="raise")
    assert_bit_identical(module, before)
    with torch.no_grad():
        argmax = module(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(result["samples"]["prediction"], argmax)
    assert result["folds"]["accuracy"].tolist() == [trained.score(X_test, y_test)]
    assert result.metadata["net"] == "MLP (torch module, prefit)"
    assert set(result["class_fitting"]["layer"]) == {"hidden", "out"}
    skorch_audit = prefit_audit(trained, split, analyses=("denoising",))
    assert result["denoising"].equals(skorch_audit["denoising"])


def test_prefit_module_failing_on_its_inputs_names_their_shapes():
    """A mask one token short gave torch's RuntimeError alone."""
    ids = np.random.RandomState(0).randint(0, 9, (20, 6))
    X = {"input_ids": ids, "attention_mask": np.ones((20, 5), np.int64)}
    y = np.arange(20) % 2
    shapes = r"shape \{'input_ids': \(6,\), 'attention_mask': \(5,\)\} per sample"
    with pytest.raises(ValueError, match=shapes):
        audit(MaskedMean(), X, y, cv="prefit", X_test=X, y_test=y, analyses=())


def test_prefit_regression_net(regression, monkeypatch, tmp_path):
    net, X, y, X_test, y_test = regression
    before = state(net.module_)
    no_training(monkeypatch)
    result = audit(
        net,
        X,
        y,
        cv="prefit",
        X_test=X_test,
        y_test=y_test,
        n_neighbors=3,
        options=dict(denoising=dict(max_samples=None)),
        errors="raise",
    )
    assert_bit_identical(net.module_, before)
    assert result.metadata["task"] == "regression"
    assert result.metadata["n_classes"] is None
    assert set(result.skipped) == {"class_fitting", "label_issues", "sensitivity"}
    assert result.skipped["class_fitting"] == (
        "the class_fitting analysis needs class labels, and this audit is of a "
        "regression network."
    )
    assert "needs inputs of shape (n, C, H, W)" in result.skipped["sensitivity"]
    isolated = next(g for g in result.examples if g["kind"] == "isolated")
    target = f"#{isolated['index']} (target {isolated['label']:.3g})"
    assert any(target in text for text in findings(result))  # was a label
    prediction = net.predict(X_test)[:, 0]
    folds = result["folds"]
    assert folds["r2"].iloc[0] == pytest.approx(net.score(X_test, y_test), rel=1e-6)
    squared = (prediction.astype(float) - y_test[:, 0]) ** 2
    assert folds["rmse"].iloc[0] == pytest.approx(np.sqrt(squared.mean()), rel=1e-6)
    assert "accuracy" not in folds
    assert findings(result)[0] == (
        f"Held-out R² {folds['r2'].iloc[0]:.3f}, root mean squared error "
        f"{folds['rmse'].iloc[0]:.3g}: the network accounts for "
        f"{folds['r2'].iloc[0]:.0%} of the variance of targets it never saw "
        "(on the one held-out split)."
    )
    samples = result["samples"]
    np.testing.assert_allclose(samples["squared_error"], squared, rtol=1e-6)
    assert "correct" not in samples
    bins = result["density_bins"]
    expected_bins = quantile_bins(samples["log_density"].to_numpy(), 4)
    np.testing.assert_array_equal(samples["density_bin"], expected_bins)
    per_bin = [squared[expected_bins == b].mean() for b in range(4)]
    np.testing.assert_allclose(bins["mean_squared_error"], per_bin, rtol=1e-6)
    neighbors = result["neighbors"]
    targets = y[:, 0].astype(float)
    train_targets = targets[neighbors["train_index"].to_numpy()].reshape(-1, 3)
    difference = np.abs(train_targets - y_test.astype(float)).mean(axis=1)
    np.testing.assert_allclose(samples["neighbor_target_difference"], difference)
    expected = (
        SelfDenoisingAnalysis(net, weights="cosine_pos_pow", random_state=0)
        .fit(X, y[:, 0])
        .summary()
    )
    row = result["denoising"].iloc[0]
    assert row["n_samples"] == len(X)
    for key in ("sigma", "mean_effective_neighbors", "predicted_rmse"):
        assert row[key] == pytest.approx(expected[key]), key
    assert [g["kind"] for g in result.gallery].count("largest error") == 4
    html = result.to_html(tmp_path / "report.html").read_text()
    assert "prefit network, given train/test split" in html
    assert "R² (one split)" in html and "<th>target</th>" in html  # the gallery
    assert "between two held-out examples drawn at random" in html  # its card
    # the R² and RMSE cards read, as the other headline numbers do
    r2 = folds["r2"].iloc[0]
    assert (
        f"<span>The network accounts for {r2:.0%} of the variance of targets it "
        "never saw.</span>"
    ) in html
    baseline = np.std(y_test[:, 0].astype(float))
    assert (
        "<span>In the targets&#x27; units; predicting their mean for every held-out "
        f"example would give {baseline:.3g}.</span>"
    ) in html
    assert "Skipped: the class_fitting analysis needs class labels" in html
    facts = "<th>samples</th><td style='text-align:left'>120 training and 40 test"
    assert facts in html  # was 160, as if the test inputs were trained on
    assert "<h3>Every score</h3>" in html and "Aggregated over folds" not in html
    isolated = html[html.index('<section id="isolated">') :]
    isolated = isolated[: isolated.index("</section>")]
    assert "<th>target</th>" in isolated and "<th>label</th>" not in isolated


def test_the_neighbours_target_difference_is_read_against_random_pairs():
    """The card "mean |target difference| to the neighbours 0.834" had no
    reference: random training targets differed by 1.12, the mean by 0.77."""
    rng = np.random.default_rng(0)
    targets = rng.normal(size=41)
    pairs = np.abs(targets[:, None] - targets[None, :])
    baseline = pairs[np.triu_indices(41, 1)].mean()  # each pair once
    assert mean_pair_difference(targets) == pytest.approx(baseline, rel=1e-12)
    samples = pd.DataFrame(dict(label=targets))
    close = target_difference_meaning(0.5 * baseline, 5, samples)
    assert close == (
        f"The targets of the 5 training examples most similar to a held-out "
        f"example differ from its own by {0.5 * baseline:.3g} on average, against "
        f"{baseline:.3g} between two held-out examples drawn at random: the "
        "network's most similar examples have similar targets."
    )
    assert target_difference_meaning(0.9 * baseline, 5, samples).endswith(
        "hardly closer than any two: the similarity follows the targets weakly."
    )
    assert target_difference_meaning(1.1 * baseline, 5, samples).endswith(
        "no closer than any two: the similarity does not follow the targets."
    )


def test_a_regression_worse_than_the_mean_is_read_as_such():
    text = fit_finding((-0.25, 0.05), (1.5, 0.1), 2)
    assert text == (
        "Held-out R² -0.250 ± 0.050, root mean squared error 1.5 ± 0.1: the "
        "network predicts targets it never saw no better than their mean would "
        "(mean over 2 folds)."
    )


def test_a_regressions_numbers_read_without_exponents():
    """Targets in the thousands read "3.22e+03" in the findings' sentences."""
    text = fit_finding((0.5, math.nan), (3217.6, math.nan), 1)
    assert "root mean squared error 3218: " in text
    assert rmse_meaning(pd.DataFrame(dict(label=[0.0, 4990.2]))).endswith(
        "would give 2495."
    )


def test_prefit_regression_module_decided_by_the_targets(regression):
    net, X, y, X_test, y_test = regression
    result = prefit_audit(net.module_, (X, y, X_test, y_test), analyses=("density",))
    assert result.metadata["task"] == "regression"
    with torch.no_grad():
        outputs = net.module_(torch.from_numpy(X_test))[:, 0].numpy()
    np.testing.assert_allclose(result["samples"]["prediction"], outputs)
    assert result["folds"]["r2"].iloc[0] == pytest.approx(r2_score(y_test, outputs))


def test_a_module_on_whole_number_targets_is_told_how_to_be_a_regression(
    regression,
):
    """Counts made it a classifier, and the error advised a LabelEncoder."""
    net, X, y, X_test, y_test = regression
    counts = [np.round(4 * targets) for targets in (y, y_test)]
    data = (X, counts[0], X_test, counts[1])
    advice = r"NeuralNetRegressor\(module\)\.initialize\(\), which keeps its"
    with pytest.raises(ValueError, match=advice):  # negative counts: no labels
        prefit_audit(net.module_, data, analyses=("density",))
    shifted = (X, counts[0] - counts[0].min(), X_test, counts[1] - counts[0].min())
    with pytest.raises(ValueError, match=f"two for a binary one. .*{advice}"):
        prefit_audit(net.module_, shifted, analyses=("density",))  # one output
    text = tuple(np.array(["a", "b"])[(t > t.mean()).astype(int)] for t in counts)
    with pytest.raises(ValueError, match="integer labels from 0") as error:
        prefit_audit(net.module_, (X, text[0], X_test, text[1]), analyses=("density",))
    assert "whole numbers" not in str(error.value)  # text labels: no such hint
    regressor = NeuralNetRegressor(net.module_).initialize()
    result = prefit_audit(regressor, data, analyses=("density",))
    assert result.metadata["task"] == "regression"


def test_label_errors_give_the_advice_that_fits(split, trained):
    """A one-logit binary module was told to be a regressor, and a single
    class or labels -1/1 were told about whole-number regression targets."""
    X, y, X_test, y_test = split
    logit = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    binary = (X, (y > 4).astype(int), X_test, (y_test > 4).astype(int))
    with pytest.raises(ValueError, match=r"NeuralNetBinaryClassifier\(module\)"):
        prefit_audit(logit, binary, analyses=("density",))
    module = trained.module_
    one_class = (X, np.zeros_like(y), X_test, np.zeros_like(y_test))
    signs = (X, 2 * binary[1] - 1, X_test, 2 * binary[3] - 1)
    for data, match in ((one_class, "a single class"), (signs, "labels from 0")):
        with pytest.raises(ValueError, match=match) as error:
            prefit_audit(module, data, analyses=("density",))
        assert "whole numbers" not in str(error.value)
    for cv in ("Prefit", "5"):
        with pytest.raises(ValueError, match=r'cv must be "prefit", a number'):
            audit(trained, X, y, cv=cv, analyses=("density",))


def test_boolean_labels_are_classes_0_and_1(split, trained):
    """scikit-learn takes labels False and True as two classes: the audit
    refused them as "not integer labels from 0"."""
    X, y, X_test, y_test = split
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    as_bool = (X, y > 4, X_test, y_test > 4)
    as_int = (X, (y > 4).astype(int), X_test, (y_test > 4).astype(int))
    results = [
        prefit_audit(module, d, analyses=("density",)) for d in (as_bool, as_int)
    ]
    pd.testing.assert_frame_equal(results[0]["samples"], results[1]["samples"])


def test_prefit_cache_hashes_the_weights(split, trained, tmp_path):
    first = prefit_audit(trained, split, analyses=("density",), cache=tmp_path)
    again = prefit_audit(trained, split, analyses=("density",), cache=tmp_path)
    assert again.metadata["cache"]["loaded"] == 1
    assert again["samples"].equals(first["samples"])
    changed = small_net(split[0]).initialize()
    changed.module_.load_state_dict(trained.module_.state_dict())
    with torch.no_grad():
        changed.module_.out.bias[0] += 1.0
    other = prefit_audit(changed, split, analyses=("density",), cache=tmp_path)
    assert other.metadata["cache"]["loaded"] == 0
    module = prefit_audit(trained.module_, split, analyses=("density",), cache=tmp_path)
    assert module.metadata["cache"]["saved"] == 1
    swapped = copy.deepcopy(trained.module_)  # the same weights, another layer
    swapped.relu = torch.nn.Tanh()
    fresh = prefit_audit(swapped, split, analyses=("density",), cache=tmp_path)
    assert fresh.metadata["cache"]["loaded"] == 0
    expected = prefit_audit(swapped, split, analyses=("density",))
    assert fresh["samples"].equals(expected["samples"])


def test_prefit_cache_follows_predictions_that_change_without_the_weights(
    split, tmp_path
):
    """A binary net's decision threshold changes its predictions, not its
    weights: the cached density's correlation with the errors was that of
    the first threshold (-0.18 where the errors gave -0.21)."""
    X, y, X_test, y_test = split
    binary, binary_test = (y >= 5).astype(np.float32), (y_test >= 5).astype(int)

    class Logit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh()
            )
            self.out = torch.nn.Linear(8, 1)

        def forward(self, x):
            return self.out(self.net(x)).squeeze(-1)

    with torch_seed(0):
        net = NeuralNetBinaryClassifier(
            Logit, max_epochs=5, lr=0.1, train_split=None, verbose=0
        ).fit(X, binary)
    for threshold in (0.5, 0.9):
        net.threshold = threshold
        kwargs = dict(cv="prefit", X_test=X_test, y_test=binary_test)
        kwargs.update(analyses=("density",), errors="raise")
        cached = audit(net, X, binary.astype(int), cache=tmp_path, **kwargs)
        fresh = audit(net, X, binary.astype(int), **kwargs)
        assert cached["folds"].equals(fresh["folds"])
    assert cached.metadata["cache"]["loaded"] == 0


class ReturnsOutput(torch.nn.Module):
    """Gives its logits in a Hugging Face output object, as its models do."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.linear(x.reshape(len(x), -1)))


def test_a_skorch_net_of_a_module_giving_an_object_says_to_unwrap_it(split):
    """skorch's own softmax error came through, about an argument's type."""
    pytest.importorskip("transformers")
    net = NeuralNetClassifier(ReturnsOutput, criterion=torch.nn.CrossEntropyLoss)
    with pytest.raises(TypeError, match=r"model\(x\)\.logits\), or give sksim"):
        prefit_audit(net.initialize(), split, analyses=("density",))


def test_prefit_errors(split, trained, regression):
    X, y, X_test, y_test = split
    with pytest.raises(ValueError, match=r"not fitted: fit it first, or pass an int"):
        prefit_audit(small_net(X), split)
    net, Xr, yr, Xr_test, yr_test = regression
    unfitted = clone(net)  # a regressor is audited prefit only: no folds advised
    with pytest.raises(ValueError, match=r"not fitted: fit it first\. A clone"):
        audit(unfitted, Xr, yr, cv="prefit", X_test=Xr_test, y_test=yr_test)
    with pytest.raises(TypeError, match="got LogisticRegression"):
        prefit_audit(LogisticRegression(), split)
    with pytest.raises(ValueError, match="pass X_test and y_test"):
        audit(trained, X, y, cv="prefit")
    with pytest.raises(ValueError, match="X_test and y_test are the test split"):
        audit(small_net(X), X, y, cv=2, X_test=X_test, y_test=y_test)
    with pytest.raises(ValueError, match="X_test has 80 samples but y_test has 79"):
        audit(trained, X, y, cv="prefit", X_test=X_test, y_test=y_test[:-1])
    with pytest.raises(ValueError, match=r"X_test holds samples of shape \(64,\)"):
        audit(trained, X, y, cv="prefit", X_test=X_test.reshape(80, 64), y_test=y_test)
    # tabular data were told to "pad sequences of both to one length"
    with pytest.raises(ValueError, match=r"the same features, or sequences padded"):
        audit(net, Xr, yr, cv="prefit", X_test=Xr_test[:, :1], y_test=yr_test)
    with pytest.raises(ValueError, match=r"one target per sample \(y of shape"):
        audit(net, Xr, np.hstack([yr, yr]), cv="prefit", X_test=Xr_test, y_test=yr_test)
    with pytest.raises(ValueError, match=r"more than the 120 training examples: "):
        audit(net, Xr, yr, cv="prefit", X_test=Xr_test, y_test=yr_test, n_neighbors=121)
    missing = yr.copy()
    missing[[4, 9]] = np.nan  # for a module, the targets decide the task
    with pytest.raises(ValueError, match=r"y holds NaN .* 2 row.*\[4, 9\]"):
        audit(net.module_, Xr, missing, cv="prefit", X_test=Xr_test, y_test=yr_test)
    missing = yr_test.copy()
    missing[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"y_test holds NaN .* 2 row.*\[3, 7\]"):
        audit(net, Xr, yr, cv="prefit", X_test=Xr_test, y_test=missing)
    labels = y.astype(np.float64)
    labels[5] = np.nan  # cross-validated: named as in the prefit audit
    with pytest.raises(
        ValueError, match=r"^y holds NaN or infinity at 1 row\(s\), the"
    ):
        audit(small_net(X), X, labels, cv=2)
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="y is a multilabel-indicator target"):
        audit(
            module,
            Xr,
            np.eye(2)[np.arange(120) % 2],
            cv="prefit",
            X_test=Xr_test,
            y_test=yr_test,
        )


def test_prefit_classes_must_be_the_networks_outputs(split):
    """Label j is output j: a module with too few outputs, or one logit, is
    refused before any analysis, not scored by a meaningless argmax."""
    X, y, X_test, y_test = split
    flat = torch.nn.Flatten()
    for outputs, message in (
        (3, "y holds the label 9, but the network gives 3 class outputs"),
        (1, r"outputs of shape \(1,\) per example.*one logit per class"),
    ):
        module = torch.nn.Sequential(flat, torch.nn.Linear(64, outputs))
        with pytest.raises(ValueError, match=message):
            audit(module, X, y, cv="prefit", X_test=X_test, y_test=y_test)
    module = torch.nn.Sequential(flat, torch.nn.Linear(64, 9))
    below = y < 9  # the label 9 in the test split alone was said to be y's
    with pytest.raises(ValueError, match="y_test holds the label 9, but the net"):
        prefit_audit(module, (X[below], y[below], X_test, y_test), ("density",))
    mixed = y.astype(object)
    mixed[:5] = "nine"  # NumPy's TypeError: '<' between str and int
    with pytest.raises(ValueError, match=r"mix values of the types \['int', 'str'\]"):
        audit(module, X, mixed, cv="prefit", X_test=X_test, y_test=y_test)


class SqueezedRegression(torch.nn.Module):
    """A regression whose forward ends in ``.squeeze()``: a batch of one is 0-d."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)

    def forward(self, x):
        return self.fc(x).squeeze()


def test_a_squeezed_output_of_a_last_prediction_batch_of_one_is_explained():
    """The held-out split's last batch of one met torch's 'zero-dimensional
    tensor cannot be concatenated'."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(377, 2).astype(np.float32), rng.randn(377)
    with pytest.raises(ValueError, match=r"squeeze the last axis alone \(.squeeze"):
        audit(
            SqueezedRegression(),
            X[:120],
            y[:120],
            cv="prefit",
            X_test=X[120:],  # 257 rows: batches of 256 and 1
            y_test=y[120:],
            analyses=("density",),
        )


def test_prefit_label_issues_of_some_classes_read_their_outputs(split, trained):
    """Audited on three of the ten classes, each label is scored by the
    net's own output for it, with every output a class."""
    X, y, X_test, y_test = split
    part, part_test = np.isin(y, [3, 5, 7]), np.isin(y_test, [3, 5, 7])
    result = audit(
        trained,
        X[part],
        y[part],
        cv="prefit",
        X_test=X_test[part_test],
        y_test=y_test[part_test],
        analyses=("label_issues",),
        errors="raise",
    )
    issues = result["label_issues"]
    P = trained.predict_proba(X[part]).astype(np.float64)
    rows, labels = issues["index"].to_numpy(), issues["given_label"].to_numpy()
    np.testing.assert_array_equal(labels, y[part][rows])
    expected = P[rows, labels] / P[rows].sum(1)
    np.testing.assert_allclose(issues["proba_given_label"], expected, rtol=1e-6)
    assert set(issues["suggested_label"]) <= set(range(10))
    assert result.metadata["n_classes"] == 10  # the net's, not the labels' 3


def test_prefit_class_fitting_with_a_test_class_absent_from_training(split, trained):
    """Held-out examples of a class the training split lacks have no own-class
    density: the other classes' means are those of their own examples, and
    the density classifier counts the unseen ones as errors."""
    X, y, X_test, y_test = split
    seen, known = y != 9, y_test != 9

    def class_fitting(X_test, y_test):
        return audit(
            trained,
            X[seen],
            y[seen],
            cv="prefit",
            X_test=X_test,
            y_test=y_test,
            analyses=("class_fitting",),
            options=dict(class_fitting=AUDIT_OPTIONS["class_fitting"]),
            errors="raise",
        )["class_fitting"]

    every, of_known = (
        class_fitting(X_test, y_test),
        class_fitting(X_test[known], y_test[known]),
    )
    assert set(every["class"]) == set(range(9))
    np.testing.assert_allclose(
        every["test_mean_log_density"], of_known["test_mean_log_density"]
    )
    np.testing.assert_allclose(
        every["density_classifier_accuracy"],
        of_known["density_classifier_accuracy"] * known.mean(),
    )


def test_prefit_density_warns_when_most_hard_counts_are_zero(split, trained):
    """At a threshold no pair reaches, the held-out densities all tie at the
    floor: the audit says so and names the remedies; at 0.9 it is silent."""

    def warnings_at(threshold):
        result = audit(
            trained,
            *split[:2],
            cv="prefit",
            X_test=split[2],
            y_test=split[3],
            analyses=("density",),
            options=dict(density=dict(threshold=threshold)),
            errors="raise",
        )
        counts = result["samples"]["neighbor_count"]
        return counts, result.metadata["warnings"]

    counts, warned = warnings_at(0.9999)
    assert (counts == 0).all() and len(warned) == 1
    text = warned[0]["warning"]
    assert text.startswith("FlooredDensityWarning: N sample(s) of the N held out")
    assert "threshold N.N" in text and "['method'] = 'soft'." in text
    assert "with several outputs" in text  # a classifier of several classes
    assert warned[0]["samples"] == len(counts)  # the report counts them
    counts, warned = warnings_at(0.9)
    assert (counts == 0).mean() < 0.5 and warned == []
    with pytest.warns(FlooredDensityWarning) as one_output:
        _warn_if_floored(np.zeros(4), 0.9, n_outputs=1)
    assert "many outputs" not in str(one_output[0].message)


def title_is_red(ax):
    return to_hex(ax.title.get_color()) == to_hex("tab:red")


def test_gallery_titles_mark_the_errors(split, trained):
    result = prefit_audit(trained, split, analyses=("density", "neighbors"))
    rows = neighbor_grid(result).axes[::4]  # the example, then 3 neighbours
    wrong = [g["label"] != g["prediction"] for g in result.gallery]
    assert [title_is_red(ax) for ax in rows] == wrong
    assert any(wrong) and not all(wrong)
    X, _, X_test, _ = split
    with torch_seed(0):
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    brightness = split[0].mean(axis=(1, 2, 3)), split[2].mean(axis=(1, 2, 3))
    result = prefit_audit(
        module, (X, brightness[0], X_test, brightness[1]), ("density", "neighbors")
    )
    assert result.metadata["task"] == "regression"
    rows = neighbor_grid(result).axes[::4]
    kinds = [g["kind"] for g in result.gallery]
    assert [title_is_red(ax) for ax in rows] == [k == "largest error" for k in kinds]
    first = result.gallery[0]
    assert rows[0].get_title() == (
        f"y={first['label']:.3g} pred={first['prediction']:.3g}"
    )


class TopTwoClassifier(NeuralNetClassifier):
    """A classifier whose ``predict`` is not the argmax of ``predict_proba``."""

    def predict(self, X):
        return np.argsort(self.predict_proba(X), axis=1)[:, -2]


def test_predictions_take_probabilities_from_the_pass_that_predicts(
    split, trained, regression
):
    _, _, X_test, _ = split
    prediction, P = predictions(trained, X_test, "classification")
    np.testing.assert_array_equal(prediction, trained.predict(X_test))
    np.testing.assert_array_equal(P, trained.predict_proba(X_test))
    assert P.dtype == np.float64
    frozen, P_frozen = predictions(FrozenEstimator(trained), X_test, "classification")
    np.testing.assert_array_equal(frozen, prediction)
    np.testing.assert_array_equal(P_frozen, P)
    with torch.no_grad():
        logits = trained.module_(torch.from_numpy(X_test)).double()
    argmax, softmax = predictions(trained.module_, X_test, "classification")
    np.testing.assert_array_equal(argmax, logits.argmax(dim=1).numpy())
    np.testing.assert_allclose(softmax, torch.softmax(logits, 1).numpy(), rtol=1e-5)
    own = TopTwoClassifier(**trained.get_params(deep=False))
    own.initialize().module_.load_state_dict(trained.module_.state_dict())
    second, none = predictions(own, X_test, "classification")
    assert none is None
    np.testing.assert_array_equal(second, own.predict(X_test))
    assert (second != prediction).all()
    net, _, _, Xr_test, _ = regression
    outputs, none = predictions(net, Xr_test, "regression")
    assert none is None
    np.testing.assert_allclose(outputs, net.predict(Xr_test)[:, 0])


class NamedClassifier(NeuralNetClassifier):
    """A classifier whose ``predict`` gives its ``classes_``, as scikit-learn's do."""

    def predict(self, X):
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]


@pytest.mark.parametrize("names", [[f"digit {i}" for i in range(10)], [3, 5, 7]])
def test_a_predict_giving_the_nets_classes_is_read_as_its_outputs(
    split, trained, names
):
    """A predict giving classes_ (names, or integers beyond the outputs) was
    compared with the labels' codes: string predictions crashed the audit's
    end, integer ones went unchecked and the self-denoising regressed rows of
    zeros (labels 3, 5, 7 never matched outputs 0 to 2)."""
    X, y, X_test, y_test = split
    if len(names) == 3:  # the first three digits, three outputs
        keep, keep_test = y < 3, y_test < 3
        split = X[keep], y[keep], X_test[keep_test], y_test[keep_test]
        X, y, X_test, y_test = split
        with torch_seed(0):
            trained = make_classifier("mlp", X, n_classes=3, max_epochs=6).fit(X, y)
    params = {**trained.get_params(deep=False), "classes": names}
    named = NamedClassifier(**params).initialize()
    named.module_.load_state_dict(trained.module_.state_dict())
    assert set(named.predict(X_test)) <= set(names)
    analyses = ("density", "neighbors", "denoising")
    found = prefit_audit(named, split, analyses=analyses, errors="raise")
    expected = prefit_audit(trained, split, analyses=analyses, errors="raise")
    assert found["folds"]["accuracy"].tolist() == [trained.score(X_test, y_test)]
    np.testing.assert_array_equal(
        found["samples"]["prediction"], trained.predict(X_test)
    )
    assert found["denoising"].equals(expected["denoising"])
    assert found.metadata["n_classes"] == expected.metadata["n_classes"]


def test_skorchs_own_predict_is_read_as_it_is_whatever_the_nets_classes(split, trained):
    """classes= of skorch's metadata, not 0 to K - 1: its own predict gives
    output indices already, which the mapping of a user's predict renumbered
    (accuracy 0.35 for 0.93)."""
    X, y, X_test, y_test = split
    reversed_names = list(range(9, -1, -1))
    params = {**trained.get_params(deep=False), "classes": reversed_names}
    named = NeuralNetClassifier(**params).initialize()
    named.module_.load_state_dict(trained.module_.state_dict())
    found = prefit_audit(named, split, analyses=("density",), errors="raise")
    assert found["folds"]["accuracy"].tolist() == [trained.score(X_test, y_test)]
    np.testing.assert_array_equal(found["samples"]["prediction"], named.predict(X_test))


def test_class_names_of_a_skorch_classifier_read_as_its_outputs(split, trained):
    """String labels were refused with the advice of a LabelEncoder, which
    numbers them in sorted order: names not in it (classes=["dog", "cat",
    "bird"]) read the wrong outputs (accuracy 0.5 for 0.7), without a word."""
    X, y, X_test, y_test = split
    names = np.array([f"digit {9 - j}" for j in range(10)])  # not sorted
    params = {**trained.get_params(deep=False), "classes": list(names)}
    named = NeuralNetClassifier(**params).initialize()
    named.module_.load_state_dict(trained.module_.state_dict())
    analyses = ("density", "neighbors", "denoising")
    found = prefit_audit(
        named, (X, names[y], X_test, names[y_test]), analyses, errors="raise"
    )
    expected = prefit_audit(trained, split, analyses, errors="raise")
    assert found["folds"]["accuracy"].tolist() == [trained.score(X_test, y_test)]
    pd.testing.assert_frame_equal(found["samples"], expected["samples"])
    assert found.metadata["class_names"] == names.tolist()
    with pytest.raises(ValueError, match="right only if the outputs follow it"):
        prefit_audit(trained.module_, (X, names[y], X_test, names[y_test]))
    # a name the net lacks was answered with the advice to name the classes
    unknown = names[y_test].copy()
    unknown[0] = "ten"
    with pytest.raises(
        ValueError, match=r"The labels \['ten'\] are not among the network's classes_"
    ):
        prefit_audit(named, (X, names[y], X_test, unknown))


def test_continuous_targets_of_a_prefit_classifier_say_what_to_pass(split, trained):
    """The error advised cv="prefit", which the audit was given."""
    X, _, X_test, _ = split
    targets = np.linspace(0, 1, len(X)), np.linspace(0, 1, len(X_test))
    with pytest.raises(ValueError, match="NeuralNetClassifier is a classifier: a"):
        prefit_audit(trained, (X, targets[0], X_test, targets[1]))


class GuessingClassifier(NeuralNetClassifier):
    """A classifier whose ``predict`` gives neither output indices nor classes_."""

    def predict(self, X):
        return np.full(len(X), "unsure")


def test_a_predict_of_other_values_is_refused_with_what_to_return(split, trained):
    guessing = GuessingClassifier(**trained.get_params(deep=False)).initialize()
    guessing.module_.load_state_dict(trained.module_.state_dict())
    with pytest.raises(ValueError, match="predict gives 'unsure'.*classes_"):
        prefit_audit(guessing, split, analyses=("density",))


class _KeywordItems(torch.utils.data.Dataset):
    """Items ``({"x": x}, y)``: the network's input by keyword."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"x": self.X[i]}, self.y[i]


class _ByKeyword(torch.nn.Module):
    """A linear classifier of the digits whose input is named ``x``."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x)


def test_a_module_predicts_items_given_by_keyword():
    """The audit called the module on the dict itself: "must be Tensor, not dict"."""
    X_train, y_train, X_test, y_test = _audit_helpers.prefit_split()
    X_train, X_test = X_train.reshape(-1, 64), X_test.reshape(-1, 64)
    torch.manual_seed(0)
    module = _ByKeyword()
    result = audit(
        module,
        _KeywordItems(X_train, y_train),
        cv="prefit",
        X_test=_KeywordItems(X_test, y_test),
        analyses=(),
    )
    with torch.no_grad():
        expected = module(x=torch.from_numpy(X_test)).argmax(1).numpy()
    np.testing.assert_array_equal(result["samples"]["prediction"], expected)


def test_a_module_on_integer_features_is_told_to_convert_them():
    X_train, y_train, X_test, y_test = _audit_helpers.prefit_split()
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    train, test = ((X * 16).astype(np.uint8) for X in (X_train, X_test))
    with pytest.raises(TypeError, match=r"integer dtype.*X.astype\(np.float32\)"):
        audit(module, train, y_train, cv="prefit", X_test=test, y_test=y_test)


def test_a_prefit_audit_shows_the_most_isolated_test_inputs(tmp_path):
    """Refused as "a prefit audit measures the density of the test inputs only",
    which is what the section shows: held-out inputs by density."""
    result = _audit_helpers.prefit_audit(("density",), None)
    isolated = [g for g in result.examples if g["kind"] == "isolated"]
    samples = result["samples"].sort_values("log_density", kind="stable")
    assert [g["index"] for g in isolated][:3] == samples["index"][:3].tolist()
    X_test = _audit_helpers.prefit_split()[2]
    np.testing.assert_array_equal(isolated[0]["image"], X_test[isolated[0]["index"], 0])
    html = result.to_html(tmp_path / "r.html").read_text()
    assert "The held-out test inputs with the lowest network-perspective" in html


def test_a_prefit_audits_atypical_features_are_those_of_the_training_inputs():
    """Test inputs shifted by 4 training standard deviations in feature 0 were
    scored against the test split itself, which hid the shift (+1.6 sd)."""
    rng = np.random.RandomState(0)
    X = rng.randn(240, 5).astype(np.float32)
    y = (X[:, 1] > 0).astype(np.int64)
    X_train, y_train, X_test, y_test = X[:160], y[:160], X[160:], y[160:]
    X_test = X_test.copy()
    X_test[:, 0] += 4.0
    with torch_seed(0):
        net = make_classifier("mlp", X_train, n_classes=2, max_epochs=3)
        net.fit(X_train, y_train)
    split = X_train, y_train, X_test, y_test
    result = prefit_audit(net, split, analyses=("density",), errors="raise")
    isolated = [g for g in result.examples if g["kind"] == "isolated"]
    mean, sd = X_train.mean(axis=0), X_train.std(axis=0)
    for item in isolated:
        x = X_test[item["index"]]
        z = (x[0] - mean[0]) / sd[0]
        assert f"feature 0 = {x[0]:.3g} ({z:+.1f} sd)" in item["features"]
        assert abs(z) > 2


class LogitsAndHidden(torch.nn.Module):
    """``module``'s logits and hidden layer, as many models return them."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        logits = self.module(x)
        return logits, torch.tanh(logits)


def test_self_denoising_reads_the_logits_of_a_tuple_output(split):
    """It failed ('tuple' object has no attribute 'ndim'), alone of the
    analyses, on a module returning (logits, hidden) or a Hugging Face
    output: its probabilities took the output as logits."""
    X, y, X_test, y_test = split
    with torch_seed(0):
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    tables = [
        audit(
            net,
            X,
            y,
            cv="prefit",
            X_test=X_test,
            y_test=y_test,
            analyses=("denoising",),
            options=AUDIT_OPTIONS,
            errors="raise",
        )["denoising"]
        for net in (module, LogitsAndHidden(module))
    ]
    assert tables[0]["mean_effective_neighbors"].iloc[0] > 1
    pd.testing.assert_frame_equal(tables[1], tables[0])


def test_a_confident_float32_classifiers_denoising_is_its_float64_copys():
    """Its probabilities, computed in float32, rounded to 0 and 1, whose
    derivatives vanish: the kernel was 0.5 off in one row of three, the mean
    effective neighbours 12 % low."""
    rng = np.random.RandomState(8)
    X = rng.randn(200, 4).astype("float32")
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    with torch_seed(0):
        module = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        )
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(1500):  # logit gaps past 17 for a quarter of the inputs
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            module(torch.as_tensor(X[:160])), torch.as_tensor(y[:160])
        )
        loss.backward()
        optimizer.step()
    tables = []
    for net, dtype in ((module, np.float32), (copy.deepcopy(module).double(), float)):
        Xd = X.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # near-singular Grams, as expected
            split = Xd[:160], y[:160], Xd[160:], y[160:]
            result = prefit_audit(net, split, ("denoising",), errors="raise")
        tables.append(result["denoising"])
    columns = ["sigma", "mean_effective_neighbors", "predicted_rmse"]
    np.testing.assert_allclose(tables[0][columns], tables[1][columns], rtol=1e-4)


class OwnPredict(NeuralNetClassifier):
    """A skorch classifier whose predict is the user's own."""

    def predict(self, X):
        return super().predict(X)


def test_predictions_are_the_eval_modes_and_leave_the_modes_as_they_were():
    """A module left in training mode (its Dropout on) is predicted in eval
    mode, and left in training mode; a user's own predict too (skorch's
    predict leaves eval mode on)."""
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def dropout_mlp():
        return torch.nn.Sequential(
            torch.nn.Linear(4, 32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(32, 2),
        )

    module = dropout_mlp().train()
    with torch.no_grad():
        logits = module.eval()(torch.from_numpy(X)).double()
    module.train()
    prediction, probabilities = predictions(module, X, "classification")
    np.testing.assert_array_equal(prediction, logits.argmax(dim=1).numpy())
    np.testing.assert_allclose(probabilities, torch.softmax(logits, 1), rtol=1e-6)
    assert module.training
    net = OwnPredict(dropout_mlp(), max_epochs=2, train_split=None, verbose=0)
    net.fit(X, y).module_.train()
    with torch.no_grad():
        expected = net.module_.eval()(torch.from_numpy(X)).argmax(dim=1).numpy()
    net.module_.train()
    prediction, _ = predictions(net, X, "classification")
    np.testing.assert_array_equal(prediction, expected)
    assert net.module_.training


def test_predicted_classes_past_the_outputs_are_refused():
    np.testing.assert_array_equal(
        check_predicted_classes(np.array([0, 1.0]), 2), [0, 1]
    )
    with pytest.raises(ValueError, match="predict gives 0, 1, 2"):
        check_predicted_classes(np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="predict gives -1"):
        check_predicted_classes(np.array([-1, 0]), 2)
