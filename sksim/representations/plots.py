"""Figures of the class fitting workflow (needs matplotlib: the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._pyplot import pyplot

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from sklearn.utils import Bunch


NAMED_CLASSES = 30  # classes named along an x axis at most (more would overlap)


def _column(table, key):
    return np.asarray(table[key])


def plot_class_log_density(
    report: Bunch, axes: Sequence[Axes] | np.ndarray | None = None
) -> Figure:
    """Sorted class mean log-densities per stage, with the largest-gap split.

    One panel per stage (log-densities of stages with different projected
    dimensions are not comparable), its classes named along the x axis (up
    to 30 of them). Classes above the split threshold are drawn in orange,
    those below in blue.

    Parameters
    ----------
    report : Bunch
        The result of :func:`class_fitting_report`.
    axes : array of matplotlib Axes, default=None
        One per stage; None creates a figure.

    Returns
    -------
    fig : matplotlib Figure

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, AAAI 2023, section 4.1 (Fig. 2).
    """
    plt = pyplot("plot_class_log_density")
    stages = list(dict.fromkeys(_column(report.splits, "stage")))
    own = axes is None  # a figure of its own, laid out here; the caller's is not
    if own:
        fig, axes = plt.subplots(
            1, len(stages), figsize=(3.2 * len(stages), 3), squeeze=False
        )
        axes = axes[0]
    if np.size(axes) != len(stages):
        raise ValueError(
            f"axes holds {np.size(axes)} Axes; the report has {len(stages)} "
            f"stages ({[str(s) for s in stages]}), each drawn on its own Axes."
        )
    fig = np.ravel(axes)[0].figure
    stage_of = _column(report.classes, "stage")
    means = _column(report.classes, "mean_log_density")
    high = _column(report.classes, "group") == "high"
    thresholds = dict(
        zip(
            _column(report.splits, "stage"),
            _column(report.splits, "threshold"),
            strict=True,
        )
    )
    names = _column(report.classes, "class")
    for ax, stage in zip(np.ravel(axes), stages, strict=True):
        rows = np.flatnonzero(stage_of == stage)
        order = rows[np.argsort(means[rows])]
        colors = np.where(high[order], "tab:orange", "tab:blue")
        ax.scatter(np.arange(len(order)), means[order], c=colors)
        ax.axhline(
            thresholds[stage],
            color="gray",
            linestyle="--",
            linewidth=1,
            label="split (largest gap)",
        )
        if len(order) <= NAMED_CLASSES:
            ax.set_xticks(np.arange(len(order)), [str(c) for c in names[order]])
        ax.set_title(f"stage {stage}")
        ax.set_xlabel("class, by mean log-density")
    first = np.ravel(axes)[0]
    first.set_ylabel("mean own-class log-density")
    first.scatter([], [], c="tab:orange", label="above the split")
    first.scatter([], [], c="tab:blue", label="below the split")
    first.legend(fontsize="small")
    if own:
        fig.tight_layout()
    return fig


def plot_memorization_by_density(report: Bunch, ax: Axes | None = None) -> Axes:
    """Mean memorisation score per density bin, one line per stage.

    Parameters
    ----------
    report : Bunch
        The result of :func:`class_fitting_report` with memorisation scores.
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, AAAI 2023, section 4.3.
    """
    if report.memorization is None:
        raise ValueError(
            "The report has no memorisation scores: pass memorization= to "
            "class_fitting_report."
        )
    plt = pyplot("plot_memorization_by_density")
    own = ax is None  # a figure of its own, laid out here; the caller's is not
    if own:
        _, ax = plt.subplots(figsize=(4.5, 3))
    stage_of = _column(report.bins, "stage")
    for stage in dict.fromkeys(stage_of):
        rows = stage_of == stage
        ax.plot(
            _column(report.bins, "bin")[rows],
            _column(report.bins, "mean_memorization")[rows],
            marker="o",
            label=f"stage {stage}",
        )
    ax.set_xlabel("density bin (low to high own-class log-density)")
    ax.set_ylabel("mean memorisation score")
    ax.legend()
    if own:
        ax.figure.tight_layout()
    return ax
