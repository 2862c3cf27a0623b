"""Density of each held-out example relative to its training fold."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from ...density import (
    COUNT_FLOOR,
    FlooredDensityWarning,
    GradientDensityEstimator,
    SoftSumsMemoryError,
)
from .._render import errorbars, subplots
from .._tables import spread
from .base import Analysis, FoldOutput

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..core import AuditResult, _Fold


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins of ``values`` by rank, 0 for the smallest values.

    The bins hold equal numbers of values, but for ties: equal values share
    the bin of their lowest rank, whatever their order, so that the smallest
    values (densities at the floor) are always in bin 0; bins above a large
    tie may be empty.

    Examples
    --------
    >>> from sksim.audit.analyses.density import quantile_bins
    >>> quantile_bins(np.array([3.0, 1.0, 2.0, 0.0]), 2).tolist()
    [1, 0, 1, 0]
    >>> quantile_bins(np.array([0.0, 0.0, 0.0, 1.0]), 2).tolist()
    [0, 0, 0, 1]
    >>> quantile_bins(np.array([1.0, 0.0, 0.0, 0.0]), 4).tolist()
    [3, 0, 0, 0]
    """
    ranks = rankdata(values, method="min") - 1  # ties: their lowest rank
    return (ranks * n_bins // len(values)).astype(np.intp)


def n_density_bins(n_test: int, max_bins: int = 10, min_per_bin: int = 10) -> int:
    """Deciles from 100 examples, one bin per ``min_per_bin`` below that.

    ``max_bins`` at most and one at least; ties then make bins uneven.
    """
    return int(max(1, min(max_bins, n_test // min_per_bin)))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b``, NaN when either is constant.

    Constant means equal values: the standard deviation of equal values that
    their mean does not hold exactly is a rounding, not zero.
    """
    if np.ptp(a) > 0 and np.ptp(b) > 0:
        return float(np.corrcoef(a, b)[0, 1])
    return np.nan


def error_column(samples: pd.DataFrame) -> str:
    """The per-bin error of ``samples``.

    ``error_rate`` of a classification, ``mean_squared_error`` of a regression.
    """
    return "error_rate" if "correct" in samples else "mean_squared_error"


def density_histogram(result: AuditResult) -> Figure | None:
    """Histogram of the held-out log-densities, correct and misclassified.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the density analysis did not run.
    """
    samples = result.tables["samples"]
    if "log_density" not in samples:
        return None
    samples = samples[samples["log_density"].notna()]  # not of failed folds
    fig, ax = subplots(figsize=(6, 3.4))
    values = samples["log_density"].to_numpy()
    edges = np.histogram_bin_edges(values, bins=30)
    if "correct" in samples:
        correct = samples["correct"].to_numpy(dtype=bool)
        ax.hist(
            [values[correct], values[~correct]],
            bins=edges,
            stacked=True,
            color=["tab:blue", "tab:red"],
            label=[
                f"correct ({correct.sum()})",
                f"misclassified ({(~correct).sum()})",
            ],
        )
    else:
        ax.hist(values, bins=edges, color="tab:blue", label=f"all ({len(values)})")
    ax.set_xlabel("log relative density (network's perspective)")
    ax.set_ylabel("held-out examples")
    ax.set_title("Density of held-out examples relative to their training fold")
    ax.legend(fontsize="small")
    return fig


def _with_counts(summary: pd.DataFrame, bins: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``n_samples``: each bin's held-out examples, all folds."""
    counts = bins.groupby("density_bin")["n_samples"].sum()
    summary.insert(1, "n_samples", summary["density_bin"].map(counts).to_numpy())
    return summary


def error_by_density(result: AuditResult) -> Figure | None:
    """Error by density quantile bin, mean and spread over folds.

    The error rate, or the mean squared error of a regression.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the density analysis did not run.
    """
    table = result.tables.get("density_bins_summary")
    if table is None:
        return None
    column = error_column(result.tables["samples"])
    fig, ax = subplots(figsize=(6, 3.4))
    per_fold = result.tables["density_bins"]
    n_folds = per_fold["fold"].nunique()
    several = n_folds > 1
    for fold, rows in per_fold.groupby("fold") if several else ():
        ax.plot(
            rows["density_bin"],
            rows[column],
            color="0.7",
            lw=1,
            marker=".",
            label="one fold" if fold == per_fold["fold"].min() else None,
        )
    errorbars(
        ax,
        table["density_bin"],
        table,
        column,
        color="tab:red",
        marker="o",
        capsize=3,
        label="mean over folds (± std)" if several else "held-out examples",
    )
    # ties at the floor leave a fold's upper bins empty: their means are of fewer folds
    partial = table[table["n_folds"] < n_folds]
    if len(partial):
        ax.plot(
            partial["density_bin"],
            partial[f"{column}_mean"],
            "o",
            color="tab:red",
            markerfacecolor="white",
            zorder=3,  # over the mean's filled marker
            label="bins only some folds have",
        )
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole bins
    ax.set_xlabel("density bin (0 = lowest density; tied examples share one)")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_ylim(bottom=0)
    ax.set_title("Error versus network-perspective density")
    ax.legend(fontsize="small")
    return fig


def count_method(options: Mapping[str, Any]) -> str:
    """The neighbour count that ``options`` of the estimator select, in words."""
    method = options.get("method", "soft")
    if method == "soft" and options.get("n_components") is not None:
        return (
            "soft counts over gradient sketches with "
            f"n_components={options['n_components']} (time O(N), no pair of "
            "examples formed)"
        )
    if method == "soft":
        return "soft counts (exact, time O(N p), no pair of examples formed)"
    rule = (
        f"similarity above {options.get('threshold', 0.9)}"
        if method == "hard"
        else f"similarity to the power {options.get('power', 2)}"
    )
    if options.get("n_components") is not None:
        return (
            f"{method} counts ({rule}) over all pairs of sketches with "
            f"n_components={options['n_components']}"
        )
    return f"{method} counts ({rule}) over all pairs of examples"


def _warn_if_floored(counts: np.ndarray, threshold: float, n_outputs: int) -> None:
    """Warn when most hard counts are zero: the bins cannot rank those examples."""
    floored = int(np.sum(counts < COUNT_FLOOR))
    if floored > len(counts) / 2:
        why = (
            " (with several outputs, whitened gradients are seldom nearly identical)"
            if n_outputs > 1
            else ""
        )
        warnings.warn(
            f"{floored} sample(s) of the {len(counts)} held out have no training "
            f"example with similarity above the threshold {threshold}, so their "
            "log-densities tie at the floor and the density bins and the "
            f"density-error correlation cannot rank them{why}; lower "
            "options['density']['threshold'], or count softly with "
            "options['density']['method'] = 'soft'.",
            FlooredDensityWarning,
            stacklevel=2,
        )


# Options of the density's counts over pairs, which soft counts do not take.
PAIR_OPTIONS = ("threshold", "power", "n_components")
# Sketch size of the soft counts of networks whose exact sums do not fit
SOFT_COMPONENTS = 2048


class Density(Analysis):
    """Log relative density of each held-out example, and error by density bin."""

    name = "density"
    title = "Density and error"
    defaults = dict(method="hard", threshold=0.9)
    scaled_defaults = dict(method="soft")
    description = (
        "Log relative density of each held-out example: the number of "
        "training examples of its fold that the trained network treats "
        "as similar to it (by default, cosine similarity of the parameter "
        "gradients above 0.9; counts below one half are floored), divided "
        "by the training-fold size (past the audit's scale threshold, the "
        "soft count, the sum of the similarities, which costs time linear in "
        "the fold size). Errors that cluster at low density "
        "are inputs unlike anything the network was trained on (for a "
        "regression, the bins show the mean squared error). Bins are "
        "quantile bins of each fold's held-out examples, as many in every "
        "fold; equal densities share the bin of the lowest of them, so that "
        "bin 0 holds every example at the floor."
    )
    figures = (density_histogram, error_by_density)
    report_table = "density_bins_summary"
    fixed_options = ("random_state",)
    audit_settings = ()

    def option_target(self) -> type:
        return GradientDensityEstimator

    def scaled_options(self, fold: _Fold) -> dict[str, Any]:
        """Soft counts, unless the user's options are those of counts over pairs.

        A ``threshold``, a ``power`` or sketches (``n_components``) given
        without a ``method`` keep the method of pairs they set, at any size.
        """
        given = fold.options.get(self.name, {})
        if any(name in given for name in PAIR_OPTIONS):
            return {}
        return super().scaled_options(fold)

    def run(self, fold: _Fold) -> FoldOutput:
        options = self.options(fold)
        sketched = ""
        try:
            estimator = self._fitted(fold, options)
        except SoftSumsMemoryError as error:
            if "method" in fold.options.get(self.name, {}):
                raise  # the user chose the exact sums
            options = dict(options, n_components=SOFT_COMPONENTS)
            estimator = self._fitted(fold, options)
            sketched = f" ({str(error).split(':')[0]})"
        counts = estimator.neighbor_counts(fold.X_test)
        if estimator.method == "hard":
            _warn_if_floored(counts, estimator.threshold, estimator.n_outputs_)
        log_density = np.log(np.maximum(counts, COUNT_FLOOR) / len(fold.train))
        errors = fold.error
        return FoldOutput(
            samples=dict(neighbor_count=counts, log_density=log_density),
            metrics=dict(
                mean_log_density=float(log_density.mean()),
                density_error_correlation=correlation(log_density, errors),
            ),
            method=self.method_text(fold, count_method(options) + sketched),
        )

    @staticmethod
    def _fitted(fold: _Fold, options: dict) -> GradientDensityEstimator:
        estimator = GradientDensityEstimator(
            fold.net, random_state=fold.random_state, **options
        )
        return estimator.fit(fold.X_train)

    def summarise(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """The held-out examples' density bins, and the error by bin.

        Every fold has as many bins, set by the smallest fold, so that bin
        ``j`` means the same in each.
        """
        samples = tables["samples"]
        measured = samples[samples["log_density"].notna()]  # not of failed folds
        n_bins = n_density_bins(measured.groupby("fold").size().min())
        density_bin = measured.groupby("fold")["log_density"].transform(
            lambda values: quantile_bins(values.to_numpy(), n_bins)
        )
        samples = samples.assign(density_bin=density_bin.astype("Int64"))
        measured = samples.loc[measured.index]
        column = error_column(measured)
        if "correct" in measured:
            error = ~measured["correct"].astype(bool)
        else:
            error = measured["squared_error"]
        bins = (
            measured.assign(error=error)
            .groupby(["fold", "density_bin"])
            .agg(
                n_samples=("error", "size"),
                min_log_density=("log_density", "min"),
                max_log_density=("log_density", "max"),
                mean_log_density=("log_density", "mean"),
                **{column: ("error", "mean")},
            )
            .reset_index()
        )
        return dict(
            samples=samples,
            density_bins=bins,
            density_bins_summary=spread(
                bins, "density_bin", [column, "mean_log_density"]
            )
            .sort_values("density_bin")  # a bin may be empty in the first fold
            .reset_index(drop=True)
            .pipe(_with_counts, bins),
        )
