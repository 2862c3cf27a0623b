"""Matplotlib figures of sksim's analyses (needs the ``plot`` extra).

Each function takes the fitted object (or table) it draws and returns the
matplotlib ``Figure``, but ``plot_denoising`` and
``plot_memorization_by_density``, which draw into one ``Axes``, return it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted

from ._engine.inputs import is_dataset
from ._pyplot import pyplot
from .denoising import plot_denoising
from .neighbors import NetworkNeighbors
from .representations.plots import plot_class_log_density, plot_memorization_by_density

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_class_log_density",
    "plot_denoising",
    "plot_memorization_by_density",
    "plot_neighbors",
]


def plot_neighbors(
    neighbors: NetworkNeighbors,
    X: ArrayLike,
    *,
    n_neighbors: int | None = None,
    image_shape: tuple[int, ...] | None = None,
    n_features: int = 6,
    axes: np.ndarray | None = None,
) -> Figure:
    """Each query beside the training examples the network finds most similar.

    Draws :meth:`~sksim.neighbors.NetworkNeighbors.explain`: for images (samples
    with two or more axes, or flat ones given an ``image_shape``) a row per
    query, the query first and then its neighbours, each titled with its
    label, similarity and percentile among the network's similarities; for
    tabular data a table per query with the same columns and the first
    ``n_features`` features of each neighbour. The images of a figure share
    one scale of values, from the smallest to the largest they hold (colour
    images are rescaled to it, standardised ones too); images of 2 or more
    than 4 channels are drawn as their channels' mean. Channels come first, as
    torch's, unless the last axis holds 3 or 4 and is shorter than the others
    (``(H, W, 3)``, ``(4, 6, 3)`` too).

    Parameters
    ----------
    neighbors : NetworkNeighbors
        A fitted search; fitted with ``y`` to show labels.
    X : array-like of shape (n_queries, ...)
        Queries (arrays only, not dicts).
    n_neighbors : int, default=None
        Neighbours per query; None uses the search's own.
    image_shape : tuple of int, default=None
        Shape to view each flat sample as an image, e.g. ``(8, 8)``.
    n_features : int, default=6
        Features of each neighbour shown in a table.
    axes : array of matplotlib Axes, default=None
        Where to draw: for images one row per query of ``1 + n_neighbors``
        Axes, for tables one Axes per query. None creates a figure.

    Returns
    -------
    fig : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import torch
    >>> from sksim.neighbors import NetworkNeighbors
    >>> from sksim.plotting import plot_neighbors
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 2))
    >>> X = torch.randn(30, 4).numpy()
    >>> search = NetworkNeighbors(net, n_neighbors=3).fit(X, (X[:, 0] > 0) * 1)
    >>> fig = plot_neighbors(search, X[:2])
    >>> len(fig.axes)
    2
    """
    plt = pyplot("plot_neighbors")
    check_is_fitted(neighbors)
    if isinstance(neighbors.X_fit_, dict) or is_dataset(neighbors.X_fit_):
        kind = "a dict" if isinstance(neighbors.X_fit_, dict) else "a torch Dataset"
        raise ValueError(
            f"plot_neighbors draws array inputs; this search was fitted on {kind}. "
            "Read the neighbours with its explain(X), and draw their items."
        )
    why = neighbors.explain(X, n_neighbors)
    X = np.asarray(X)
    reference = neighbors.X_fit_
    images = image_shape is not None or X.ndim >= 3
    n_queries, k = why.indices.shape
    if images:
        grid, size = (n_queries, k + 1), (1.4 * (k + 1), 1.7 * n_queries)
        per_query = f"{k + 1} per query, the query and its neighbours"
    else:
        columns = 4 + min(n_features, reference[0].size)
        grid, size = (n_queries, 1), (1.1 * columns, 0.3 * (k + 2) * n_queries)
        per_query = "one per query"
    if images:  # checked before a figure is made
        drawn = _images(why, X, reference, image_shape or X.shape[1:])
    own = axes is None  # a figure of its own, laid out here; the caller's is not
    if own:
        _, axes = plt.subplots(*grid, figsize=size, squeeze=False)
    if np.size(axes) != np.prod(grid):
        raise ValueError(
            f"axes holds {np.size(axes)} Axes; {n_queries} queries with {k} "
            f"neighbours are drawn on {np.prod(grid)}: {per_query}."
        )
    axes = np.reshape(axes, grid)
    if images:
        _image_grid(why, drawn, axes)
    else:
        _tables(why, reference, n_features, axes[:, 0])
    fig = axes[0, 0].figure
    if own:  # the caller's figure keeps its title and layout
        if images:
            fig.suptitle("most similar training examples (similarity, percentile)")
        fig.tight_layout()
    return fig


def _as_image(sample, shape):
    """A sample as ``(H, W)`` or ``(H, W, C)`` with 3 or 4 channels."""
    sample = np.asarray(sample, dtype=float)
    if sample.size != np.prod(shape):
        raise ValueError(
            f"A sample of {sample.size} values cannot be viewed as an image of "
            f"shape {tuple(shape)}: pass the image_shape its values fill."
        )
    image = sample.reshape(shape)
    if image.ndim == 3:
        if image.shape[-1] in (3, 4) and image.shape[-1] < min(image.shape[:2]):
            return image  # channels last, as an image file's
        if image.shape[0] in (3, 4):  # channels first, as torch's
            return np.moveaxis(image, 0, -1)
        return image.mean(axis=0)  # one channel, or no colour to show them in
    return image


def _caption(why, q, j):
    label = "" if why.labels is None else f"y={why.labels[q, j]}\n"
    # floored: 99.7 reads "more similar than 99 % of pairs", not than every pair
    percentile = math.floor(why.percentiles[q, j])
    return f"{label}{why.similarities[q, j]:.3f} (p{percentile})"


def _images(why, X, reference, shape):
    """Each query's row of images: the query, then its neighbours."""
    return [
        [_as_image(X[q], shape)]
        + [_as_image(reference[i], shape) for i in why.indices[q]]
        for q in range(len(why.indices))
    ]


def _image_grid(why, images, axes):
    low = min(image.min() for row in images for image in row)
    high = max(image.max() for row in images for image in row)
    span = high - low if high > low else 1.0
    for q, row in enumerate(axes):
        for j, (ax, image) in enumerate(zip(row, images[q], strict=True)):
            if image.ndim == 3:  # colours: rescaled to [0, 1] together
                ax.imshow((image - low) / span)
            else:
                ax.imshow(image, cmap="gray_r", vmin=low, vmax=high)
            if j:
                ax.set_title(_caption(why, q, j - 1), fontsize=7)
        row[0].set_title("query", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])


def _tables(why, reference, n_features, axes):
    flat = np.asarray(reference).reshape(len(reference), -1)
    shown = min(n_features, flat.shape[1])
    columns = ["index", "label", "similarity", "percentile"]
    columns += [f"x{f}" for f in range(shown)]
    for q, ax in enumerate(axes):
        cells = [
            [
                str(i),
                "" if why.labels is None else str(why.labels[q, j]),
                f"{why.similarities[q, j]:.3f}",
                f"{math.floor(why.percentiles[q, j] * 10) / 10:.1f}",
                *(f"{v:.3g}" for v in flat[i, :shown]),
            ]
            for j, i in enumerate(why.indices[q])
        ]
        ax.axis("off")
        ax.table(cellText=cells, colLabels=columns, loc="center")
        ax.set_title(f"query {q}", fontsize=9)
