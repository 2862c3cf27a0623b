import itertools
import json
import subprocess
import sys

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import family_case, small_net
from _audit_helpers import AUDIT_OPTIONS
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GroupKFold, KFold, ShuffleSplit, StratifiedKFold
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor

from sksim import GradientDensityEstimator, NetworkNeighbors, SelfDenoisingAnalysis
from sksim._engine.context import torch_seed
from sksim.audit import ANALYSES, AuditAnalysisFailedWarning, audit, core
from sksim.audit.analyses import REGISTRY
from sksim.audit.analyses import sensitivity as sensitivity_analysis
from sksim.audit.analyses.class_fitting import default_layers
from sksim.audit.analyses.denoising import (
    Denoising,
    free_probabilities,
)
from sksim.audit.analyses.density import Density, n_density_bins, quantile_bins
from sksim.audit.analyses.neighbors import image_view
from sksim.representations import (
    DirichletProcessGaussianMixture,
    class_fitting_report,
    extract_representations,
)


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


@pytest.fixture(scope="module")
def small_audit():
    return _audit_helpers.small_audit()


def manual_fold(X, y, fold, seed=0):
    """The fold's split and a clone of the net trained on it by hand."""
    train, test = list(StratifiedKFold(3).split(X, y))[fold]
    with torch_seed(seed):
        net = clone(small_net(X)).fit(X[train], y[train])
    return train, test, net


@pytest.fixture(scope="module")
def fold1(digit_images):
    return manual_fold(*digit_images, fold=1)


def fold_rows(table, fold):
    return table[table["fold"] == fold].reset_index(drop=True)


def test_accuracy_equals_manual_clone_and_fit(digit_images, small_audit, fold1):
    X, y = digit_images
    train, test, net = fold1
    folds = small_audit["folds"]
    assert folds["n_train"].tolist() == [160, 160, 160]
    expected = float(np.mean(net.predict(X[test]) == y[test]))
    assert folds.loc[1, "accuracy"] == expected
    assert folds.loc[1, "error"] == pytest.approx(1 - expected)
    samples = fold_rows(small_audit["samples"], 1)
    np.testing.assert_array_equal(samples["index"], test)
    np.testing.assert_array_equal(samples["prediction"], net.predict(X[test]))
    np.testing.assert_array_equal(samples["label"], y[test])
    np.testing.assert_array_equal(
        samples["correct"], samples["label"] == samples["prediction"]
    )


def test_every_sample_held_out_once(digit_images, small_audit):
    index = np.sort(small_audit["samples"]["index"].to_numpy())
    np.testing.assert_array_equal(index, np.arange(len(digit_images[0])))


def test_density_equals_estimator_on_the_fold(digit_images, small_audit, fold1):
    X, y = digit_images
    train, test, net = fold1
    estimator = GradientDensityEstimator(net, method="hard", threshold=0.9)
    estimator.fit(X[train])
    samples = fold_rows(small_audit["samples"], 1)
    np.testing.assert_allclose(
        samples["neighbor_count"], estimator.neighbor_counts(X[test])
    )
    np.testing.assert_allclose(samples["log_density"], estimator.score_samples(X[test]))
    rows = small_audit["folds"].loc[1]
    assert rows["mean_log_density"] == pytest.approx(samples["log_density"].mean())
    errors = net.predict(X[test]) != y[test]
    expected = np.corrcoef(estimator.score_samples(X[test]), errors)[0, 1]
    assert rows["density_error_correlation"] == pytest.approx(expected, rel=1e-9)


def test_error_by_density_bin(small_audit):
    samples = small_audit["samples"]
    bins = small_audit["density_bins"]
    for fold in range(3):
        own = fold_rows(samples, fold)
        log_density = own["log_density"].to_numpy()
        n_bins = n_density_bins(len(own))
        assert n_bins == 8  # 80 held-out examples: at least 10 per bin
        # the lowest rank of equal values: those below
        below = (log_density[:, None] > log_density[None, :]).sum(axis=1)
        expected_bin = below * n_bins // len(own)
        np.testing.assert_array_equal(own["density_bin"], expected_bin)
        errors = ~own["correct"].to_numpy()
        held = np.unique(expected_bin)  # ties may leave a bin empty
        expected = [errors[expected_bin == b].mean() for b in held]
        own_bins = fold_rows(bins, fold)
        np.testing.assert_array_equal(own_bins["density_bin"], held)
        np.testing.assert_allclose(own_bins["error_rate"], expected)
        for name, statistic in (("min", np.min), ("max", np.max), ("mean", np.mean)):
            per_bin = [statistic(log_density[expected_bin == b]) for b in held]
            np.testing.assert_allclose(own_bins[f"{name}_log_density"], per_bin)
        assert (
            own_bins["n_samples"].tolist() == np.bincount(expected_bin)[held].tolist()
        )
    summary = small_audit["density_bins_summary"]
    counts = bins.groupby("density_bin")["n_samples"].sum()
    assert summary["n_samples"].tolist() == counts.tolist()
    for column in ("error_rate", "mean_log_density"):
        by_bin = bins.groupby("density_bin")[column]
        np.testing.assert_allclose(summary[f"{column}_mean"], by_bin.mean())
        np.testing.assert_allclose(summary[f"{column}_std"], by_bin.std(ddof=1))
        np.testing.assert_allclose(summary[f"{column}_min"], by_bin.min())
        np.testing.assert_allclose(summary[f"{column}_max"], by_bin.max())


def test_densities_at_the_floor_are_the_lowest_bin():
    """299 of 300 held-out examples at the floor and one above: the floor was
    put in bin 4 of 10 (the middle rank of the tie), under an axis reading
    "0 = lowest density", and in bin 2 in a fold with fewer at the floor."""
    floor = np.log(0.5 / 1000)
    samples = pd.DataFrame(
        dict(
            fold=np.repeat([0, 1], [300, 300]),
            log_density=np.r_[
                np.full(299, floor), -1.0, np.full(150, floor), -np.arange(150.0) / 200
            ],
            correct=np.tile([True, False], 300),
        )
    )
    tables = REGISTRY["density"].summarise(dict(samples=samples))
    bins = tables["samples"]["density_bin"].to_numpy()
    assert (bins[samples["log_density"] == floor] == 0).all()
    assert bins[299] == 9 and sorted(set(bins[300:])) == [0, *range(5, 10)]
    summary = tables["density_bins_summary"]
    assert summary.loc[0, ["density_bin", "n_samples"]].tolist() == [0, 449]


def test_density_bins_do_not_depend_on_order_and_are_alike_in_every_fold():
    """Ties share a bin whatever their rows; folds of 100, 100 and 99 held-out
    examples all get the 9 bins the smallest allows."""
    rng = np.random.RandomState(0)
    sizes = [100, 100, 99]
    samples = pd.DataFrame(
        dict(
            fold=np.repeat([0, 1, 2], sizes),
            log_density=rng.randint(0, 6, sum(sizes)).astype(float),
            correct=rng.rand(sum(sizes)) > 0.3,
        )
    )
    density = REGISTRY["density"]
    tables = density.summarise(dict(samples=samples))
    bins = tables["samples"]["density_bin"]
    assert bins.max() <= 8  # the 9 bins the smallest fold allows
    lowest = samples["log_density"] == samples.groupby("fold")["log_density"].transform(
        "min"
    )
    assert (bins[lowest] == 0).all()
    for _, rows in tables["samples"].groupby("log_density"):
        assert rows.groupby("fold")["density_bin"].nunique().max() == 1
    shuffled = samples.sample(frac=1, random_state=0)
    again = density.summarise(dict(samples=shuffled))["samples"]["density_bin"]
    pd.testing.assert_series_equal(again.sort_index(), bins)


def test_summary_is_mean_and_spread_over_folds(small_audit):
    summary = small_audit["summary"].set_index("metric")
    accuracy = small_audit["folds"]["accuracy"]
    assert summary.loc["accuracy", "mean"] == pytest.approx(accuracy.mean())
    assert summary.loc["accuracy", "std"] == pytest.approx(np.std(accuracy, ddof=1))
    assert summary.loc["accuracy", "min"] == accuracy.min()
    assert summary.loc["accuracy", "n_folds"] == 3
    sigma = small_audit["denoising"]["sigma"]
    assert summary.loc["denoising_sigma", "max"] == pytest.approx(sigma.max())


def test_neighbors_equal_network_neighbors(digit_images, small_audit, fold1):
    X, y = digit_images
    train, test, net = fold1
    similarities, indices = (
        NetworkNeighbors(net, n_neighbors=3).fit(X[train]).most_similar(X[test])
    )
    table = fold_rows(small_audit["neighbors"], 1)
    np.testing.assert_array_equal(table["index"], np.repeat(test, 3))
    np.testing.assert_array_equal(table["rank"], np.tile([1, 2, 3], len(test)))
    np.testing.assert_array_equal(table["train_index"], train[indices].ravel())
    np.testing.assert_allclose(table["similarity"], similarities.ravel())
    np.testing.assert_array_equal(table["train_label"], y[train[indices]].ravel())
    samples = fold_rows(small_audit["samples"], 1)
    agreement = (y[train[indices]] == y[test][:, None]).mean(axis=1)
    np.testing.assert_allclose(samples["neighbor_label_agreement"], agreement)
    fold = small_audit["folds"].loc[1, "neighbor_label_agreement"]
    assert fold == pytest.approx(agreement.mean(), rel=1e-12)
    np.testing.assert_allclose(samples["top_similarity"], similarities[:, 0])


def test_denoising_equals_analysis_on_the_fold(digit_images, small_audit, fold1):
    X, y = digit_images
    train, _, net = fold1
    onehot = (y[train][:, None] == np.arange(9)[None, :]).astype(float)
    analysis = SelfDenoisingAnalysis(
        net,
        weights="cosine_pos_pow",
        output=free_probabilities,
        max_samples=80,
        random_state=0,
    ).fit(X[train], onehot)
    assert len(analysis.sample_indices_) == 80
    expected = analysis.summary()
    row = small_audit["denoising"].loc[1]
    assert row["n_samples"] == 80
    for key in ("sigma", "mean_effective_neighbors", "predicted_rmse"):
        assert row[key] == pytest.approx(expected[key])


def test_class_fitting_equals_report_on_the_fold(digit_images, small_audit, fold1):
    X, y = digit_images
    train, test, net = fold1
    layers = ["hidden", "out"]
    report = class_fitting_report(
        net,
        X[train],
        y[train],
        layers,
        mixture=DirichletProcessGaussianMixture(backend="variational"),
        random_state=0,
        as_frame=True,
        **AUDIT_OPTIONS["class_fitting"],
    )
    table = fold_rows(small_audit["class_fitting"], 1)
    # every column of the report's classes, as the audit names them
    classes = report.classes.rename(
        columns={"stage": "layer", "mean_log_density": "train_mean_log_density"}
    )
    pd.testing.assert_frame_equal(
        table[classes.columns], classes, check_dtype=False, rtol=1e-12
    )
    Z = extract_representations(net, X[test], layers)
    own = report.densities["out"].score_samples(Z["out"], y[test])
    expected = [own[y[test] == c].mean() for c in range(10)]
    np.testing.assert_allclose(
        table.loc[table["layer"] == "out", "test_mean_log_density"], expected
    )
    for layer in layers:  # the density classifier of each layer, on the test part
        accuracy = np.mean(report.densities[layer].predict(Z[layer]) == y[test])
        rows = table.loc[table["layer"] == layer, "density_classifier_accuracy"]
        np.testing.assert_allclose(rows, accuracy, rtol=1e-12)


def test_gallery_holds_the_neighbor_images(digit_images, small_audit):
    X, y = digit_images
    gallery = small_audit.gallery
    kinds = [g["kind"] for g in gallery]
    assert kinds[:4] == ["lowest density"] * 4 and kinds[-1] == "typical"
    lowest = small_audit["samples"]["log_density"].min()
    assert gallery[0]["log_density"] == lowest
    for item in gallery:
        np.testing.assert_array_equal(item["image"], X[item["index"], 0])
        np.testing.assert_array_equal(item["neighbor_images"], X[item["neighbors"], 0])
        assert item["neighbor_labels"] == y[item["neighbors"]].tolist()
        if item["kind"] == "misclassified":
            assert item["label"] != item["prediction"]


def test_sensitivity_skipped_for_flat_inputs(digit_images):
    X, y = digit_images
    flat = X.reshape(len(X), -1)
    result = audit(small_net(flat, max_epochs=1), flat, y, cv=2, analyses=ANALYSES[:1])
    assert result.skipped == {}
    result = audit(
        small_net(flat, max_epochs=1), flat, y, cv=2, analyses=("sensitivity",)
    )
    assert "(n, C, H, W) with H == W" in result.skipped["sensitivity"]
    assert "(64,)" not in result.skipped["sensitivity"]
    assert "(240, 64)" in result.skipped["sensitivity"]
    assert "sensitivity" not in result.tables
    assert result.gallery == []


def test_sensitivity_skipped_without_the_module(digit_images, monkeypatch):
    X, y = digit_images
    monkeypatch.setattr(sensitivity_analysis, "import_sensitivity", lambda: None)
    result = audit(small_net(X, max_epochs=1), X, y, cv=2, analyses=("sensitivity",))
    assert result.skipped == {
        "sensitivity": "sksim.sensitivity is not available in this version of sksim."
    }
    assert result.metadata["analyses"] == []


def test_sensitivity_equals_relative_sensitivity(digit_images):
    sensitivity = pytest.importorskip("sksim.sensitivity")
    X, y = digit_images
    options = dict(sensitivity=dict(n_probe=30, n_init=1))
    result = audit(small_net(X), X, y, cv=3, analyses=("sensitivity",), options=options)
    _, test, net = manual_fold(X, y, fold=1)
    expected = pd.DataFrame(
        dict(
            sensitivity.relative_sensitivity(
                net, X[test], layers="all", n_probe=30, n_init=1, random_state=0
            )
        )
    )
    table = fold_rows(result["sensitivity"], 1)
    np.testing.assert_allclose(table["R"], expected["R"])
    assert table["layer"].tolist() == expected["layer"].tolist()
    summary = result["sensitivity_summary"]
    assert set(summary["net"]) == {"trained", "init"}
    sizes = sorted({len(manual_fold(X, y, fold=f)[1]) for f in range(3)})
    held_out = " to ".join(f"{n:,}" for n in sizes)
    assert result.metadata["methods"]["sensitivity"] == (
        f"30 of the {held_out} held-out images drawn at random, each deformed once "
        "by a random smooth diffeomorphism (typical displacement delta=1 pixel, "
        "wave numbers up to cutoff=3, linear interpolation) and noised once at the "
        "same norm (noise_norm='per_sample'), means of squared distances; "
        "initialisation: 1 re-initialised copy, combined by geometric means"
    )


def test_audit_cnn_runs_and_names_layers(digit_images):
    from sksim.audit.models import make_classifier

    X, y = digit_images
    net = make_classifier("cnn", X, 10, max_epochs=2)
    result = audit(net, X, y, cv=2, analyses=("class_fitting",), options=AUDIT_OPTIONS)
    assert set(result["class_fitting"]["layer"]) == {"conv1", "conv2", "out"}


def test_audit_leaves_a_fitted_net_untouched(digit_images):
    X, y = digit_images
    net = small_net(X, max_epochs=1)
    with torch_seed(0):
        net.fit(X, y)
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    audit(net, X, y, cv=2, analyses=())
    for key, value in net.module_.state_dict().items():
        torch.testing.assert_close(value, before[key])


def _instance_net(X, seed, **kwargs):
    """A skorch net around a module instance drawn under ``seed``."""
    with torch_seed(seed):
        module = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(int(np.prod(X.shape[1:])), 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 10),
        )
    params = dict(max_epochs=6, lr=0.1, batch_size=32, train_split=None, verbose=0)
    params.update(kwargs)
    return NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, **params)


def test_a_fitted_instance_net_is_trained_from_scratch_on_each_fold(digit_images):
    """Its clone's module holds the trained weights: the layers are drawn
    anew, as the module's construction under the fold's seed draws them."""
    X, y = digit_images
    fitted = _instance_net(X, seed=1, max_epochs=20)
    with torch_seed(0):
        fitted.fit(X, y)
    fitted.set_params(max_epochs=1)
    trained = audit(fitted, X, y, cv=3, analyses=(), random_state=0)
    fresh = audit(_instance_net(X, seed=0, max_epochs=1), X, y, cv=3, analyses=())
    pd.testing.assert_frame_equal(trained["samples"], fresh["samples"])
    assert trained["folds"]["accuracy"].max() < fitted.score(X, y) - 0.3


def test_a_fitted_net_with_parameters_no_layer_draws_is_refused(digit_images):
    X, y = digit_images
    net = _instance_net(X, seed=0, max_epochs=1)
    net.module.register_parameter("scale", torch.nn.Parameter(torch.ones(1)))
    with torch_seed(0):
        net.fit(X, y)
    with pytest.raises(ValueError, match=r"draws \['scale'\] anew.*module's class"):
        audit(net, X, y, cv=2, analyses=())


def test_a_binary_classifier_with_one_logit_is_denoised(digit_images):
    """skorch's NeuralNetBinaryClassifier gives one logit z: the probability
    of class 0, sigmoid(-z), is regressed on the labels of class 0."""
    X, y = digit_images
    binary = (y >= 5).astype(np.float32)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    net = NeuralNetBinaryClassifier(
        module, max_epochs=30, lr=0.5, train_split=None, verbose=0
    )
    result = audit(net, X, binary, cv=2, analyses=("denoising",), errors="raise")
    folds, denoised = result["folds"], result["denoising"]
    assert (denoised["mean_effective_neighbors"] >= 1).all()
    assert (denoised["training_rmse"] <= 1).all()  # probabilities against 0 or 1
    assert folds["accuracy"].min() > 0.75  # thresholded z, well above chance
    assert result.metadata["n_classes"] == 2  # it has no probabilities of them
    z = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(
        free_probabilities(z), 1 - torch.sigmoid(z.double())[:, None]
    )


def test_audit_takes_a_splitter(digit_images):
    X, y = digit_images
    result = audit(small_net(X, max_epochs=1), X, y, cv=KFold(4), analyses=())
    assert result["folds"]["n_test"].tolist() == [60] * 4
    assert set(result.tables) == {"folds", "samples", "summary"}


def test_audit_takes_groups_for_a_group_splitter(digit_images):
    """GroupKFold failed with scikit-learn's bare "groups should not be None"."""
    X, y = digit_images
    groups = np.arange(len(y)) // 20
    result = audit(
        small_net(X, max_epochs=1), X, y, cv=GroupKFold(3), groups=groups, analyses=()
    )
    tests = result["samples"].groupby("fold")["index"].apply(lambda i: set(groups[i]))
    assert all(not (a & b) for a, b in itertools.combinations(tests, 2))
    with pytest.raises(ValueError, match="groups has 3 entries for 240 examples"):
        audit(small_net(X), X, y, cv=GroupKFold(3), groups=[0, 1, 2], analyses=())


def test_a_failing_analysis_is_recorded_and_the_audit_goes_on(
    digit_images, monkeypatch
):
    X, y = digit_images
    net = small_net(X, max_epochs=1)
    denoising = Denoising.run

    def fails_on_fold_1(self, fold):
        if fold.fold == 1:
            raise RuntimeError("out of luck")
        return denoising(self, fold)

    monkeypatch.setattr(Denoising, "run", fails_on_fold_1)
    kwargs = dict(
        cv=3, analyses=("density", "denoising"), options=AUDIT_OPTIONS, random_state=0
    )
    with pytest.warns(
        AuditAnalysisFailedWarning,
        match=r"denoising analysis failed on fold 1 .*RuntimeError: out of luck",
    ):
        result = audit(net, X, y, **kwargs)
    assert result.failed == {"denoising": {1: "RuntimeError: out of luck"}}
    assert result.metadata["analyses"] == ["density", "denoising"]
    assert result["denoising"]["fold"].tolist() == [0, 2]
    assert result["density_bins"]["fold"].unique().tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="out of luck"):
        audit(net, X, y, errors="raise", **kwargs)


def test_a_density_failing_on_one_fold_leaves_a_report_of_the_others(
    digit_images, monkeypatch, tmp_path
):
    """The failed fold's missing densities were binned (a bin of -2^63), the
    summary counted 3 folds for a metric of 2, and the report crashed."""
    X, y = digit_images
    density = Density.run

    def fails_on_fold_1(self, fold):
        if fold.fold == 1:
            raise MemoryError("out of memory")
        return density(self, fold)

    monkeypatch.setattr(Density, "run", fails_on_fold_1)
    with pytest.warns(AuditAnalysisFailedWarning):
        result = audit(small_net(X, max_epochs=1), X, y, cv=3, analyses=("density",))
    assert result["density_bins"]["fold"].unique().tolist() == [0, 2]
    samples = result["samples"]
    assert samples.loc[samples["fold"] == 1, "density_bin"].isna().all()
    assert samples.loc[samples["fold"] != 1, "density_bin"].between(0, 9).all()
    summary = result["summary"].set_index("metric")
    assert summary.loc["mean_log_density", "n_folds"] == 2
    assert summary.loc["accuracy", "n_folds"] == 3
    text = result.to_html(tmp_path / "report.html").read_text()
    assert "<b>density</b>, fold 1: MemoryError: out of memory" in text
    section = text[text.index('<section id="density">') :]
    section = section[: section.index("</section>")]
    assert (  # its figures and tables cover two folds: the section said nothing
        '<p class="note">Failed on fold 1 of 3 (errors in the summary): what '
        "follows covers the other folds.</p>"
    ) in section


def test_a_diverged_network_fails_every_analysis_with_the_reason(digit_images):
    X, y = digit_images
    with pytest.warns(AuditAnalysisFailedWarning):
        result = audit(
            small_net(X, max_epochs=2, lr=1e30),
            X,
            y,
            cv=2,
            analyses=("density", "neighbors"),
        )
    assert result.metadata["analyses"] == []
    for name in ("density", "neighbors"):
        assert sorted(result.failed[name]) == [0, 1]
        for message in result.failed[name].values():
            assert message.startswith(
                "NonFiniteNetworkError: The network produced NaN or infinite"
            )


def test_numpy_integers_are_written_to_json(digit_images, tmp_path):
    """They were kept in the metadata, where json.dumps refused them."""
    X, y = digit_images
    result = audit(
        small_net(X, max_epochs=1),
        X,
        y,
        cv=2,
        analyses=("density",),
        scale_threshold=np.int64(50),
        random_state=np.int64(3),
    )
    saved = json.loads(result.to_json(tmp_path / "report.json").read_text())
    assert saved["metadata"]["scale_threshold"] == 50
    assert saved["metadata"]["random_state"] == 3


def test_an_analysis_failing_on_every_fold_leaves_no_tables(
    digit_images, tmp_path, monkeypatch
):
    X, y = digit_images

    def fails(self, fold):
        raise InvalidParameterError("refused")

    monkeypatch.setattr(Density, "run", fails)
    with pytest.warns(AuditAnalysisFailedWarning):
        result = audit(
            small_net(X, max_epochs=1),
            X,
            y,
            cv=2,
            analyses=("density", "neighbors"),
        )
    assert sorted(result.failed["density"]) == [0, 1]
    assert result.failed["density"][0].startswith("InvalidParameterError: ")
    assert result.metadata["analyses"] == ["neighbors"]
    assert "density_bins" not in result.tables
    assert "log_density" not in result["samples"]
    assert len(result["neighbors"]) == len(X) * 5
    text = result.to_html(tmp_path / "report.html").read_text()
    assert "Failed on every fold" in text
    assert "<b>density</b>, fold 1: InvalidParameterError: " in text
    saved = json.loads(result.to_json(tmp_path / "report.json").read_text())
    assert saved["failed"]["density"]["0"] == result.failed["density"][0]


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(density=dict(threshold=2.0)), InvalidParameterError, "'threshold'"),
        (dict(density=dict(method="bogus")), InvalidParameterError, "'method'"),
        (dict(neighbors=dict(algorithm="x")), InvalidParameterError, "'algorithm'"),
        (dict(denoising=dict(weights="x")), InvalidParameterError, "'weights'"),
        (dict(density="soft"), TypeError, "must be a dict of keyword arguments"),
        (dict(density=None), TypeError, "must be a dict of keyword arguments"),
        (dict(class_fitting=dict(n_bins=0)), ValueError, "n_bins must be a posit"),
        (dict(class_fitting=dict(n_components={"3": -1})), ValueError, "n_compo"),
        (dict(class_fitting=dict(pool="median")), ValueError, "pool must be one"),
        (dict(class_fitting=dict(mixture="gibbs")), TypeError, "mixture must be"),
        (dict(sensitivity=dict(n_probe=0)), ValueError, "n_probe must be a posi"),
        (dict(sensitivity=dict(statistic="max")), ValueError, "statistic must be"),
        (dict(sensitivity=dict(reference="trained")), ValueError, "reference must"),
    ],
)
def test_option_values_are_checked_before_any_training(
    digit_images, monkeypatch, options, error, message
):
    """They failed in every fold, after its training, as recorded failures."""
    X, y = digit_images

    def refuse(*args):
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr(core, "fit_net", refuse)
    with pytest.raises(error, match=message):
        audit(small_net(X), X, y, cv=2, analyses=tuple(options), options=options)


@pytest.mark.parametrize(
    "layers, options, message",
    [
        (["nope"], {}, r"Unknown layers \['nope'\]"),
        ("nope", {}, r"Unknown layers \['nope'\]"),
        (None, dict(n_components={"hidden": 2}), r"it lacks \['out'\]"),
        (["hidden"], dict(n_components={"out": 2}), r"it lacks \['hidden'\]"),
    ],
)
@pytest.mark.parametrize("prefit", [False, True])
def test_class_fitting_layers_are_checked_before_any_training(
    digit_images, monkeypatch, layers, options, message, prefit
):
    """They failed in every fold, after its training (a recorded failure each)."""
    X, y = digit_images
    net = small_net(X, max_epochs=1)
    if prefit:
        net.fit(X, y)
    else:
        monkeypatch.setattr(core, "fit_net", pytest.fail)
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match=message):
        audit(
            net,
            X,
            y,
            cv="prefit" if prefit else 2,
            X_test=X if prefit else None,
            y_test=y if prefit else None,
            analyses=("class_fitting",),
            layers=layers,
            options=dict(class_fitting=options),
        )
    assert torch.equal(torch.random.get_rng_state(), state)  # the module built aside


class SizedInFit(NeuralNetClassifier):
    """Sets its module's input width from the data in ``fit``, as some nets do."""

    def fit(self, X, y=None, **fit_params):
        self.set_params(module__n_features=int(np.prod(X.shape[1:])))
        return super().fit(X, y, **fit_params)


def test_nets_built_in_their_fit_are_checked_by_each_fold(digit_images):
    """Built before training for the checks, such a net failed the audit."""
    from sksim.audit.models import MLP

    X, y = digit_images
    net = SizedInFit(
        MLP,
        module__n_classes=10,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=1,
        train_split=None,
    )
    common = dict(cv=2, analyses=("class_fitting",), errors="raise")
    result = audit(net, X, y, **common)
    assert len(result.tables["class_fitting"]) > 0
    with pytest.raises(ValueError, match=r"Unknown layers \['nope'\]"):
        audit(net, X, y, layers=["nope"], **common)  # by the first fold


def test_class_fitting_without_default_layers_names_the_fix(digit_images):
    X, y = digit_images
    net = NeuralNetClassifier(MeanLogits, max_epochs=1, train_split=None)
    with pytest.raises(ValueError, match=r"MeanLogits has none: name the layers"):
        audit(net, X, y, cv=2, analyses=("class_fitting",))


class MeanLogits(torch.nn.Module):
    """A classifier without linear or convolutional modules."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(10))

    def forward(self, x):
        return x[:, :10] * self.scale


@pytest.mark.parametrize(
    "analyses, error, message",
    [
        ("density", TypeError, "analyses must be a sequence of names"),
        (None, TypeError, "analyses must be a sequence of names"),
        ([["density"]], ValueError, r"Unknown analyses \[\['density'\]\]"),
    ],
)
def test_analyses_of_a_wrong_type_are_named(digit_images, analyses, error, message):
    X, y = digit_images
    with pytest.raises(error, match=message):
        audit(small_net(X), X, y, analyses=analyses)


def test_analyses_may_be_any_iterable(digit_images):
    X, y = digit_images
    result = audit(small_net(X, max_epochs=1), X, y, cv=2, analyses=iter(["density"]))
    assert result.metadata["analyses"] == ["density"]


def test_audit_errors(digit_images):
    X, y = digit_images
    net = small_net(X, max_epochs=1)
    with pytest.raises(TypeError, match="trains a fresh network on every training"):
        audit(torch.nn.Linear(64, 10), X, y)
    with pytest.raises(ValueError, match=r"Unknown analyses \['dens'\]"):
        audit(net, X, y, analyses=("dens",))
    with pytest.raises(ValueError, match="n_neighbors must be a positive int"):
        audit(net, X, y, n_neighbors=0)
    with pytest.raises(ValueError, match="X has 240 samples but y has 239"):
        audit(net, X, y[:-1])
    with pytest.raises(ValueError, match="audits classifiers: y must hold class"):
        audit(net, X, y + 0.5)
    with pytest.raises(ValueError, match="test fold .* hold 173 examples never and 5"):
        audit(net, X, y, cv=ShuffleSplit(3, test_size=0.1, random_state=0))
    regressor = NeuralNetRegressor(torch.nn.Linear(64, 1), max_epochs=1)
    with pytest.raises(ValueError, match="NeuralNetRegressor is a regressor. A trai"):
        audit(regressor, X, y)  # integer targets, still a regression
    for labels in (np.array(list("abcdefghij"))[y], y - 1):
        with pytest.raises(ValueError, match="integer labels from 0 to n_classes"):
            audit(net, X, labels)
    with pytest.raises(ValueError, match=r"y holds a single class \(3\): the audit"):
        audit(net, X, np.full(len(X), 3))
    with pytest.raises(ValueError, match="A FrozenEstimator is not trained again"):
        audit(FrozenEstimator(net), X, y, cv=2)
    with pytest.raises(ValueError, match='errors must be "record" or "raise"'):
        audit(net, X, y, errors="ignore")
    with pytest.raises(ValueError, match=r"options\['density'\] has unknown names"):
        audit(net, X, y, options=dict(density=dict(treshold=0.8)))
    fixed = r"\['n_neighbors'\], which the audit sets for the neighbors analysis: give"
    with pytest.raises(ValueError, match=fixed + r" n_neighbors to audit\(\) itself"):
        audit(net, X, y, options=dict(neighbors=dict(n_neighbors=3)))
    with pytest.raises(ValueError, match=r"\['as_frame'\], which the audit sets fo"):
        audit(net, X, y, options=dict(class_fitting=dict(as_frame=False)))
    with pytest.raises(ValueError, match="n_neighbors=200 is more than the 120"):
        audit(net, X, y, cv=2, n_neighbors=200, analyses=("neighbors",))
    with pytest.raises(ValueError, match=r"the 160 .* or use more folds"):
        audit(net, X, y, cv=3, n_neighbors=200, analyses=("neighbors",))
    with pytest.raises(ValueError, match=r"options for unknown analyses \['dens'\]"):
        audit(net, X, y, options=dict(dens=dict(method="hard")))
    with pytest.warns(UserWarning, match=r"do not run, \['neighbors'\], are ignored"):
        audit(
            net,
            X,
            y,
            cv=2,
            analyses=("density",),
            options=dict(neighbors=dict(recall_queries=5)),
        )
    with pytest.raises(ValueError, match="'max_samples' parameter .* must be an int"):
        audit(
            net,
            X,
            y,
            cv=2,
            analyses=("denoising",),
            options=dict(denoising=dict(max_samples=0)),
        )


def test_missing_pandas_names_the_extra(digit_images, monkeypatch):
    X, y = digit_images
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(
        ImportError, match=r"pip install pandas. \(sksim's audit extra\)"
    ):
        audit(small_net(X), X, y)


def test_the_audit_imports_without_pandas():
    # pandas is the audit extra's: imported when tables are made, not before
    code = "import sys; sys.modules['pandas'] = None; import sksim.audit"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_helpers():
    assert n_density_bins(599) == 10
    assert n_density_bins(35) == 3
    assert n_density_bins(4) == 1
    np.testing.assert_array_equal(
        quantile_bins(np.array([0.5, 0.1, 0.3, 0.2, 0.4]), 2), [1, 0, 0, 0, 1]
    )
    images = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(image_view(images)[1, 2, 3], images[1, :, 2, 3])
    np.testing.assert_array_equal(image_view(np.ones((2, 64))), np.ones((2, 8, 8)))
    pixels = np.ones((2, 64), dtype=np.uint8)
    np.testing.assert_array_equal(image_view(pixels), np.ones((2, 8, 8)))
    tokens = np.ones((2, 64), dtype=np.int64)  # token ids: drawn as grey squares
    assert image_view(tokens) is None
    assert image_view(torch.utils.data.TensorDataset(torch.as_tensor(tokens))) is None
    pixels = torch.utils.data.TensorDataset(torch.ones(2, 64))
    np.testing.assert_array_equal(image_view(pixels)[0], np.ones((8, 8)))
    assert image_view(np.ones((2, 16))) is None  # more often a table's 16 features
    assert image_view(np.ones((2, 15))) is None
    assert image_view(np.ones((2, 2, 4, 4))) is None
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 3),
        torch.nn.Linear(3, 2),
    )
    assert default_layers(net) == ["0", "3", "4"]
    assert default_layers(net, 1) == ["4"]
    gpt2, _ = family_case("gpt2", 2)  # its Conv1D projections are linear layers
    assert default_layers(gpt2)[0] == "gpt2.transformer.h.1.mlp.c_fc"
    p = free_probabilities(torch.tensor([[0.0, 0.0, float(np.log(2.0))]]))
    torch.testing.assert_close(p, torch.tensor([[0.25, 0.25]], dtype=torch.float64))


def test_folds_train_a_given_pairs_net_on_its_pairs():
    """A regularised net of given pairs audited with with_pairs(X, pairs): the
    folds trained it on the inputs alone, and it asked for the pairs."""
    from sksim import SimilarityRegularizedNet, with_pairs

    rng = np.random.RandomState(0)
    X, y = rng.randn(60, 4).astype(np.float32), np.arange(60) % 3
    X_pairs = with_pairs(X, [[0, 3], [1, 4], [2, 5], [30, 33], [31, 34]])
    net = SimilarityRegularizedNet(
        torch.nn.Linear(4, 3),
        similarity_pairs="given",
        similarity_weight=5.0,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=3,
        train_split=None,
        verbose=0,
    )
    folds = KFold(2)
    result = audit(net, X_pairs, y, cv=folds, analyses=["density"], errors="raise")
    samples = result["samples"]
    for fold, (train, test) in enumerate(folds.split(X)):
        with torch_seed(0):
            expected = clone(net).fit(X_pairs[train], y[train])
        rows = fold_rows(samples, fold)
        np.testing.assert_array_equal(rows["index"], test)
        predicted = expected.predict_proba(X[test]).argmax(axis=1)
        np.testing.assert_array_equal(rows["prediction"], predicted)


def test_folds_train_without_the_nets_state_files(tmp_path):
    """A LoadInitState started every fold from the trained weights (held-out
    accuracy 1.0 on random labels, 0.36 from scratch), and a Checkpoint
    overwrote the files the trained net saved."""
    from skorch.callbacks import Checkpoint, LoadInitState

    X, y = _audit_helpers.digit_images()
    X, y = X[:120], y[:120]
    checkpoint = Checkpoint(monitor=None, dirname=str(tmp_path))
    callbacks = [checkpoint, ("load", LoadInitState(checkpoint))]
    with torch_seed(0):
        net = small_net(X, callbacks=callbacks).fit(X, y)
    saved = {path: path.read_bytes() for path in tmp_path.iterdir()}
    options = dict(cv=3, analyses=("density",), random_state=0, errors="raise")
    with pytest.warns(UserWarning, match=r"\['Checkpoint', 'load'\] load or save"):
        found = audit(net, X, y, **options)["folds"]["accuracy"]
    expected = audit(clone(net).set_params(callbacks=None), X, y, **options)
    np.testing.assert_array_equal(found, expected["folds"]["accuracy"])
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == saved


def test_class_names_of_a_classifier_trained_per_fold_read_as_its_outputs():
    """Its classes= named the outputs, and string labels were refused with the
    advice to audit such a classifier."""
    X, y = _audit_helpers.digit_images()
    X, y = X[:120], y[:120]
    names = np.array([f"digit {9 - j}" for j in range(10)])
    options = dict(cv=2, analyses=("density",), random_state=0, errors="raise")
    found = audit(small_net(X, classes=list(names)), X, names[y], **options)
    expected = audit(small_net(X), X, y, **options)
    pd.testing.assert_frame_equal(found["samples"], expected["samples"])
    assert found.metadata["class_names"] == names.tolist()
