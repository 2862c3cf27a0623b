"""Class-conditional densities of the representations at chosen layers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils import Bunch

from ..._engine.capture import is_transposed_linear
from ..._engine.inputs import take
from ..._net import resolve_module
from ..._validation import check_positive_int
from .._names import with_names
from .._render import errorbars, layer_tail, subplots
from .._tables import spread
from .base import Analysis, FoldOutput

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..core import AuditResult, _Fold

MAX_FIT_PER_CLASS = 1000  # rows of a class its mixture is fitted to, at scale


def default_layers(module: torch.nn.Module, n_layers: int = 3) -> list[str]:
    """The last ``n_layers`` linear or convolutional modules, in definition order.

    ``transformers``' ``Conv1D`` (GPT-2's projections) counts as linear.
    """
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    names = [
        name
        for name, m in module.named_modules()
        if isinstance(m, kinds) or is_transposed_linear(m)
    ]
    return names[-n_layers:]


MAX_CLASS_TICKS = 40  # classes named on a panel's axis, at most
TITLE_CHARACTERS = 9  # characters of a panel's title per inch of its width


@with_names
def class_densities(result: AuditResult) -> Figure | None:
    """Draw the classes, sorted by mean own-class log-density, per layer, over folds.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the class-fitting analysis did not run.
    """
    table = result.tables.get("class_fitting_summary")
    if table is None:
        return None
    layers = list(dict.fromkeys(table["layer"]))
    n_classes = int(table.groupby("layer").size().max())
    width = max(3.6, min(12.0, 0.18 * n_classes))  # inches per panel
    fig, axes = subplots(
        1, len(layers), figsize=(width * len(layers), 3.8), squeeze=False
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
        names = [_short(str(c)) for c in rows["class"]]
        step = -(-len(names) // MAX_CLASS_TICKS)  # every step-th class named
        upright = len(names) <= 10 and max(map(len, names)) <= 3
        ax.set_xticks(
            x[::step], names[::step], fontsize=7, rotation=0 if upright else 90
        )
        named = f", one in {step} named" if step > 1 else ""
        ax.set_xlabel(f"class (by training-fold log-density{named})")
        ax.set_ylabel("mean own-class log-density")  # each layer its own scale
        ax.set_title(layer_tail(str(layer), int(TITLE_CHARACTERS * width)))
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=2,
        fontsize="small",
    )
    fig.suptitle("Class-conditional densities of the representations")
    return fig


def _short(name: str, width: int = 16) -> str:
    """``name`` in ``width`` characters at most: its middle cut to an ellipsis.

    Both ends stay, where names of classes usually differ.
    """
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[head + 1 - width :]


def _held_out_columns(report, representations, y_test, layers):
    """Held-out columns per (layer, class) row of ``report.classes``.

    The held-out examples' mean own-class log-density and the accuracy of
    the density classifier. Held-out examples of classes absent from the
    training fold have no own-class density; the classifier, which cannot
    name their class, counts them as errors.
    """
    test_mean, test_accuracy = [], []
    for layer in layers:
        density = report.densities[layer]
        Z = representations[layer]
        known = np.isin(y_test, density.classes_)
        own = density.score_samples(Z[known], y_test[known])
        accuracy = float(np.mean(density.predict(Z) == y_test))
        for c in density.classes_:
            rows = y_test[known] == c
            test_mean.append(own[rows].mean() if rows.any() else np.nan)
            test_accuracy.append(accuracy)
    return test_mean, test_accuracy


def per_class_rows(
    y: np.ndarray, max_per_class: int | None, random_state: int | None
) -> np.ndarray:
    """Sorted rows of ``y`` keeping at most ``max_per_class`` of each class.

    All rows when ``max_per_class`` is None; otherwise each class larger than
    that is subsampled uniformly at random.

    Examples
    --------
    >>> from sksim.audit.analyses.class_fitting import per_class_rows
    >>> per_class_rows(np.array([0, 0, 0, 1]), 2, 0).shape
    (3,)
    """
    if max_per_class is None:
        return np.arange(len(y))
    rng = np.random.RandomState(random_state)
    kept = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) > max_per_class:
            rows = rng.choice(rows, max_per_class, replace=False)
        kept.append(rows)
    return np.sort(np.concatenate(kept))


def fitted_rows(report: Bunch) -> int:
    """Rows the class mixtures of a report were fitted to, over all classes."""
    density = next(iter(report.densities.values()))
    return int(sum(m.n_fit_samples_ for m in density.mixtures_))


def fitting_method(
    mixture: BaseEstimator,
    n_fitted: int,
    n_evaluated: int,
    n_train: int,
    cap: int | None,
    methods: list[str] | None = None,
) -> str:
    """The class-density fit, in words.

    ``n_fitted`` rows fitted (over all classes), ``n_evaluated`` rows whose
    own-class log-density the report gives, of the ``n_train`` training
    examples; ``cap`` is the most rows of one class either step kept.
    ``methods``, the fitting method of each class's mixture, names those
    that the backend's own did not fit (a class too small for it).
    """
    backend = getattr(mixture, "backend", type(mixture).__name__)
    others = Counter(m for m in methods or () if not m.endswith(backend))
    backend += " backend" + "".join(
        f"; {method} for {count} of the {len(methods)} classes"
        for method, count in others.items()
    )
    if n_fitted == n_train:
        data = f"all {n_train:,} training examples"
    else:
        data = (
            f"{n_fitted:,} of the {n_train:,} training examples (at most "
            f"{cap:,} per class, drawn at random)"
        )
    text = f"Dirichlet-process mixtures ({backend}) fitted on {data}"
    if n_evaluated > n_fitted:
        every = "all " if n_evaluated == n_train else ""
        text += f", own-class log-densities evaluated at {every}{n_evaluated:,}"
    return text


def fit_cap(mixture: BaseEstimator, max_per_class: int | None) -> int | None:
    """The most rows of one class kept by ``max_per_class`` or the mixture."""
    caps = [max_per_class, getattr(mixture, "max_samples", None)]
    caps = [c for c in caps if c is not None]
    return min(caps) if caps else None


def class_mixture(
    mixture: BaseEstimator | None, max_fit_per_class: int | None
) -> BaseEstimator:
    """The density estimator of each class.

    ``mixture`` (None: the variational DP mixture), fitted on at most
    ``max_fit_per_class`` rows of its class when that is not None.
    """
    if mixture is None:
        from ...representations import DirichletProcessGaussianMixture

        mixture = DirichletProcessGaussianMixture(backend="variational")
    if max_fit_per_class is None:
        return mixture
    return clone(mixture).set_params(max_samples=max_fit_per_class)


class ClassFitting(Analysis):
    """Dirichlet-process class densities fitted on the training fold."""

    name = "class_fitting"
    title = "Class fitting"
    defaults = dict(
        n_components=8,
        n_bins=5,
        n_samples=200,
        max_per_class=None,
        max_fit_per_class=None,
    )
    scaled_defaults = dict(max_fit_per_class=MAX_FIT_PER_CLASS)
    description = (
        "Mean own-class log-density of the representations, per class, "
        "fitted on the training fold and evaluated on both parts "
        "(Jamroz & Kurdziel 2023): classes with low density are fitted "
        "by memorising scattered examples rather than in compact modes."
    )
    figures = (class_densities,)
    report_table = "class_fitting_summary"
    tasks = ("classification",)

    own_options = ("max_per_class", "max_fit_per_class")
    fixed_options = ("random_state", "as_frame")
    audit_settings = ("layers",)

    def option_target(self) -> Callable:
        from ...representations import class_fitting_report

        return class_fitting_report

    def check_options(self, options: Mapping[str, Any]) -> None:
        from ...representations.report import check_report_params

        super().check_options(options)
        for name in ("max_per_class", "max_fit_per_class"):
            check_positive_int(options.get(name), name, allow_none=True)
        check_report_params(
            {
                name: value
                for name, value in options.items()
                if name not in self.own_options
            }
        )

    def check_network(
        self,
        module: Callable[[], torch.nn.Module],
        layers: Sequence[str] | None,
        options: Mapping[str, Any],
    ) -> None:
        """Raise on layers the network lacks, or ``n_components`` missing one.

        The layers are the audit's, else :func:`default_layers`.
        """
        from ..._layers import RepresentationCapture
        from ...representations.report import check_report_params

        built = module()
        if built is None:  # checked by each fold
            return
        if layers is None and not (layers := default_layers(built)):
            raise ValueError(
                "Class fitting reads the last linear or convolutional modules, "
                f"and {type(built).__name__} has none: name the layers to fit "
                "with audit(..., layers=[...]) (see dict(module.named_modules()))."
            )
        RepresentationCapture(built, layers)
        n_components = {**self.defaults, **options}["n_components"]
        check_report_params(dict(n_components=n_components, layers=layers))

    def run(self, fold: _Fold) -> FoldOutput:
        from ...representations import (
            class_fitting_report,
            extract_representations,
        )

        layers = (
            default_layers(resolve_module(fold.net))
            if fold.layers is None
            else fold.layers
        )
        options = self.options(fold)
        options["mixture"] = class_mixture(
            options.get("mixture"), options.pop("max_fit_per_class")
        )
        max_per_class = options.pop("max_per_class")
        rows = per_class_rows(fold.y_train, max_per_class, fold.random_state)
        report = class_fitting_report(
            fold.net,
            take(fold.X_train, rows),
            fold.y_train[rows],
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
            extract_representations(
                fold.net, fold.X_test, layers, **_reading_options(options)
            ),
            fold.y_test,
            layers,
        )
        classes["test_mean_log_density"] = test_mean
        classes["density_classifier_accuracy"] = test_accuracy
        classes.insert(0, "fold", fold.fold)
        n_fitted = fitted_rows(report)
        method = fitting_method(
            options["mixture"],
            n_fitted,
            len(rows),
            len(fold.train),
            fit_cap(options["mixture"], max_per_class),
            [m.method_ for m in next(iter(report.densities.values())).mixtures_],
        )
        if n_fitted < len(fold.train):  # the scale threshold's cap, if any, bound
            method = self.method_text(fold, method)
        return FoldOutput(tables=dict(class_fitting=classes), method=method)

    def summarise(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return dict(
            class_fitting_summary=spread(
                tables["class_fitting"],
                ["layer", "class"],
                ["train_mean_log_density", "test_mean_log_density"],
            )
        )


def _reading_options(options: Mapping[str, Any]) -> dict:
    """The options of :func:`class_fitting_report` that say how inputs are read.

    The held-out examples' representations are extracted as the training
    examples' are.
    """
    names = ("pool", "batch_size", "device", "verbose")
    return {name: options[name] for name in names if name in options}
