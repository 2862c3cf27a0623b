"""class_fitting_report workflow and its figures."""

import matplotlib
import numpy as np
import pytest
import torch
from _architectures import HiddenOutMLP
from sklearn.neighbors import KNeighborsClassifier
from skorch import NeuralNetClassifier

from sksim.representations import (
    DirichletProcessGaussianMixture,
    class_fitting_report,
    memorization_scores,
    plot_class_log_density,
    plot_memorization_by_density,
)

matplotlib.use("Agg")

MIX = DirichletProcessGaussianMixture(n_sweeps=6, burn_in=2, thin=2)


@pytest.fixture(scope="module")
def report():
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(30, 4) + 3 * k for k in range(3)]).astype("float32")
    y = np.repeat([0, 1, 2], 30)
    net = NeuralNetClassifier(HiddenOutMLP, max_epochs=5, train_split=None, verbose=0)
    rep = class_fitting_report(
        net,
        X,
        y,
        ["hidden", "out"],
        n_components={"hidden": 4, "out": 3},
        mixture=MIX,
        memorization=KNeighborsClassifier(1),
        n_models=15,
        n_bins=5,
        n_samples=100,
        random_state=0,
    )
    return X, y, rep


def test_tables_agree_with_the_fitted_densities(report):
    X, y, rep = report
    assert rep.densities["hidden"].components_.shape == (4, 16)
    assert rep.densities["out"].components_.shape == (3, 3)
    for stage in ("hidden", "out"):
        density = rep.densities[stage]
        rows = rep.classes["stage"] == stage
        summary = density.class_summary(100)
        np.testing.assert_allclose(
            rep.classes["mean_log_density"][rows], summary.mean_log_density
        )
        high, _, threshold = density.split_classes()
        assert rep.splits["threshold"][rep.splits["stage"] == stage][0] == threshold
        np.testing.assert_array_equal(
            rep.classes["group"][rows] == "high", np.isin(density.classes_, high)
        )
        bins = density.density_bins(5)
        b = rep.bins["stage"] == stage
        want = [np.nanmean(rep.memorization[bins == k]) for k in range(5)]
        np.testing.assert_allclose(rep.bins["mean_memorization"][b], want)
    # the memorisation of the classifier given, on the report's 15 subsets
    expected = memorization_scores(KNeighborsClassifier(1), X, y, 15, random_state=0)
    np.testing.assert_array_equal(rep.memorization, expected)


def test_precomputed_memorization_and_frames(report):
    X, y, rep = report
    mem = np.linspace(0, 1, 90)
    frames = class_fitting_report(
        torch.nn.Sequential(torch.nn.Linear(4, 3)),
        X,
        y,
        "0",
        n_components=3,
        mixture=MIX,
        memorization=mem,
        n_bins=3,
        n_samples=50,
        as_frame=True,
        random_state=0,
    )
    assert list(frames.bins["bin"]) == [0, 1, 2]
    bins = frames.densities["0"].density_bins(3)
    np.testing.assert_allclose(
        frames.bins["mean_memorization"], [mem[bins == k].mean() for k in range(3)]
    )
    assert list(frames.classes.columns[:2]) == ["class", "n_samples"]
    with pytest.raises(ValueError, match="one score per example"):
        class_fitting_report(
            torch.nn.Sequential(torch.nn.Linear(4, 3)),
            X,
            y,
            "0",
            mixture=MIX,
            memorization=mem[:5],
        )


def test_figures_show_the_table_values(report):
    _, _, rep = report
    fig = plot_class_log_density(rep)
    assert len(fig.axes) == 2
    for ax, stage in zip(fig.axes, ["hidden", "out"], strict=True):
        rows = rep.classes["stage"] == stage
        shown = ax.collections[0].get_offsets()[:, 1]
        means = rep.classes["mean_log_density"][rows]
        np.testing.assert_allclose(shown, np.sort(means))
        threshold = rep.splits["threshold"][rep.splits["stage"] == stage][0]
        assert ax.lines[0].get_ydata()[0] == pytest.approx(threshold)
        # the classes are named, not ranked (ranks read as digit labels)
        named = [tick.get_text() for tick in ax.get_xticklabels()]
        classes = rep.classes["class"][rows][np.argsort(means)]
        assert named == [str(c) for c in classes]
        assert ax.get_title() == f"stage {stage}"
    assert fig.axes[0].get_legend_handles_labels()[1] == [
        "split (largest gap)",
        "above the split",
        "below the split",
    ]
    ax = plot_memorization_by_density(rep)
    np.testing.assert_allclose(
        ax.lines[0].get_ydata(), rep.bins["mean_memorization"][:5]
    )
    one_axes = matplotlib.pyplot.subplots(1, 1, squeeze=False)[1][0]
    with pytest.raises(ValueError, match=r"1 Axes; the report has 2 stages"):
        plot_class_log_density(rep, axes=one_axes)
    # the caller's figure keeps its layout (it was switched to tight)
    fig, axes = matplotlib.pyplot.subplots(1, 4, layout="constrained")
    plot_class_log_density(rep, axes=axes[:2])
    plot_memorization_by_density(rep, ax=axes[2])
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"


def test_memorization_figure_needs_scores(report):
    X, y, _ = report
    rep = class_fitting_report(
        torch.nn.Sequential(torch.nn.Linear(4, 3)),
        X,
        y,
        "0",
        n_components=3,
        mixture=MIX,
        n_bins=3,
        n_samples=50,
    )
    with pytest.raises(ValueError, match="has no memorisation scores"):
        plot_memorization_by_density(rep)


def test_a_stage_without_its_number_of_components_is_refused_before_any_work():
    """A bare KeyError came after the first stage was extracted and fitted."""
    X = np.zeros((6, 4), dtype=np.float32)
    net = NeuralNetClassifier(HiddenOutMLP, max_epochs=5, train_split=None, verbose=0)
    with pytest.raises(
        ValueError, match=r"it lacks \['out'\] \(its keys: \['hidden'\]"
    ):
        class_fitting_report(
            net, X, np.arange(6) % 2, ["hidden", "out"], n_components={"hidden": 4}
        )


def test_layers_given_by_a_generator_are_read_once(report):
    """The checks before any work took the generator's stages: "layers must
    name at least one layer"."""
    X, y, rep = report
    net = NeuralNetClassifier(HiddenOutMLP, max_epochs=5, train_split=None, verbose=0)
    got = class_fitting_report(
        net, X, y, (name for name in ["hidden"]), n_components=4, mixture=MIX, n_bins=5
    )
    assert list(got.densities) == ["hidden"]
