"""Class-conditional densities of the representations at chosen layers."""

from __future__ import annotations

import numpy as np
import torch

from ..._net import resolve_module
from .._render import errorbars, subplots
from .._tables import spread
from .base import Analysis, FoldOutput


def default_layers(module: torch.nn.Module, n_layers: int = 3) -> list[str]:
    """The last ``n_layers`` linear or convolutional modules, in definition order."""
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    names = [name for name, m in module.named_modules() if isinstance(m, kinds)]
    return names[-n_layers:]


def class_densities(result):
    """Classes sorted by mean own-class log-density, per layer, over folds."""
    table = result.tables.get("class_fitting_summary")
    if table is None:
        return None
    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = subplots(
        1,
        len(layers),
        figsize=(3.6 * len(layers), 3.4),
        squeeze=False,
    )
    for ax, layer in zip(axes[0], layers, strict=True):
        rows = table[table["layer"] == layer].sort_values("train_mean_log_density_mean")
        x = np.arange(len(rows))
        for column, color, label in (
            ("train_mean_log_density", "tab:orange", "training fold"),
            ("test_mean_log_density", "tab:blue", "held-out"),
        ):
            errorbars(
                ax,
                x,
                rows,
                column,
                marker="o",
                ls="none",
                capsize=2,
                color=color,
                label=label,
            )
        ax.set_xticks(x, [str(c) for c in rows["class"]], fontsize=7)
        ax.set_xlabel("class, sorted")
        ax.set_title(str(layer))
    axes[0, 0].set_ylabel("mean own-class log-density")
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Class-conditional densities of the representations")
    return fig


def _held_out_columns(report, representations, y_test, layers):
    """Held-out columns per (layer, class) row of ``report.classes``.

    The held-out examples' mean own-class log-density and the accuracy of
    the density classifier.
    """
    test_mean, test_accuracy = [], []
    for layer in layers:
        density = report.densities[layer]
        own = density.score_samples(representations[layer], y_test)
        accuracy = float(np.mean(density.predict(representations[layer]) == y_test))
        for c in density.classes_:
            rows = y_test == c
            test_mean.append(own[rows].mean() if rows.any() else np.nan)
            test_accuracy.append(accuracy)
    return test_mean, test_accuracy


class ClassFitting(Analysis):
    """Dirichlet-process class densities fitted on the training fold."""

    name = "class_fitting"
    title = "Class fitting"
    defaults = dict(n_components=8, n_bins=5, n_samples=200)
    description = (
        "Mean own-class log-density of the representations, per class, "
        "fitted on the training fold and evaluated on both parts "
        "(Jamroz & Kurdziel 2023): classes with low density are fitted "
        "by memorising scattered examples rather than in compact modes."
    )
    figures = (class_densities,)
    report_table = "class_fitting_summary"
    tasks = ("classification",)

    def run(self, fold):
        from ...representations import (
            DirichletProcessGaussianMixture,
            class_fitting_report,
            extract_representations,
        )

        layers = (
            default_layers(resolve_module(fold.net))
            if fold.layers is None
            else fold.layers
        )
        options = self.options(fold)
        options.setdefault(
            "mixture", DirichletProcessGaussianMixture(backend="variational")
        )
        report = class_fitting_report(
            fold.net,
            fold.X_train,
            fold.y_train,
            layers,
            random_state=fold.random_state,
            as_frame=True,
            **options,
        )
        classes = report.classes.rename(
            columns={"stage": "layer", "mean_log_density": "train_mean_log_density"}
        )
        test_mean, test_accuracy = _held_out_columns(
            report,
            extract_representations(fold.net, fold.X_test, layers),
            fold.y_test,
            layers,
        )
        classes["test_mean_log_density"] = test_mean
        classes["density_classifier_accuracy"] = test_accuracy
        classes.insert(0, "fold", fold.fold)
        return FoldOutput(tables=dict(class_fitting=classes))

    def summarise(self, tables):
        return dict(
            class_fitting_summary=spread(
                tables["class_fitting"],
                ["layer", "class"],
                ["train_mean_log_density", "test_mean_log_density"],
            )
        )
