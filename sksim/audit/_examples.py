"""Examples worth a look: isolated training examples, least-supported predictions.

Chosen after the analyses, from their tables: the lowest densities of the
density analysis, and the held-out predictions that the fewest of their most
similar training examples carry (neighbours analysis).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._engine.budget import rows_that_fit
from .._engine.inputs import (
    READ_BYTES,
    batches,
    is_dataset,
    n_samples,
    read_batch_size,
    take,
    to_tensor,
)
from .._validation import sample_shape
from . import _render
from ._names import with_names
from ._tables import (
    frame,
    import_pandas,
    isolation_order,
    neighbor_text,
    query_neighbors,
)
from .analyses.neighbors import image_view

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .core import AuditResult

SHOWN = 10  # examples per section
FEATURES = 4  # most atypical features described per tabular example


def prediction_support(samples, neighbors):
    """Per held-out example, the share of its neighbours carrying the prediction.

    Each neighbour weighs its similarity (negative ones count zero), as in
    the neighbour label distribution of the label-issue detector; an
    example whose neighbours all have non-positive similarity has support
    NaN.

    Parameters
    ----------
    samples : pandas.DataFrame
        The audit's ``samples`` table (``fold``, ``index``, ``prediction``).
    neighbors : pandas.DataFrame
        The audit's ``neighbors`` table.

    Returns
    -------
    support : ndarray of shape (len(samples),)
    """
    predictions = samples[["fold", "index", "prediction"]]
    pairs = neighbors.merge(predictions, on=["fold", "index"], how="left")
    weight = pairs["similarity"].clip(lower=0)
    pairs = pairs.assign(
        weight=weight, agreeing=weight * (pairs["train_label"] == pairs["prediction"])
    )
    sums = pairs.groupby(["fold", "index"])[["weight", "agreeing"]].sum()
    rows = import_pandas().MultiIndex.from_frame(samples[["fold", "index"]])
    sums = sums.reindex(rows)
    total = sums["weight"].to_numpy()
    return np.divide(
        sums["agreeing"].to_numpy(),
        total,
        out=np.full(len(total), np.nan),
        where=total > 0,
    )


def isolated_rows(samples, size=SHOWN):
    """The ``size`` most isolated rows of ``samples`` (:func:`isolation_order`)."""
    return isolation_order(samples)[:size]


def least_supported_rows(samples, support, size=SHOWN):
    """Rows of ``samples`` with the least support of their prediction.

    Ties (several at zero, typically) are broken by the lower similarity of
    the nearest training example when the table has it.
    """
    keys = samples.assign(support=support)
    by = ["support"] + (["top_similarity"] if "top_similarity" in keys else [])
    return keys.sort_values(by, kind="stable", na_position="first").index[:size]


def atypical_features(x, mean, std, count=FEATURES):
    """The ``count`` features of ``x`` farthest from the data's mean, in words."""
    z = np.divide(x - mean, std, out=np.zeros_like(mean), where=std > 0)
    order = np.argsort(-np.abs(z), kind="stable")[:count]
    return ", ".join(f"feature {j} = {x[j]:.3g} ({z[j]:+.1f} sd)" for j in order)


class _Looks:
    """How an example looks: its image, or its most atypical features.

    Inputs that are neither images nor arrays of floating features (dicts,
    token ids) show neither. ``like``: the looks whose features' moments
    score these (the training inputs', for a prefit audit's test inputs).
    """

    def __init__(self, X, like: _Looks | None = None):
        self.X, self.images, self._like = X, image_view(X), like
        self.tabular = (
            self.images is None
            and isinstance(sample_shape(X), tuple)
            and _flat(take(X, np.array([0]))).dtype.kind == "f"
        )

    @functools.cached_property
    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The features' means and standard deviations (:func:`_moments`)."""
        return _moments(self.X) if self._like is None else self._like.moments

    def image(self, rows):
        return None if self.images is None else self.images[rows]

    def features(self, row):
        if not self.tabular:
            return None
        x = _flat(take(self.X, np.array([row])))[0]
        return atypical_features(x, *self.moments)


def _flat(X) -> np.ndarray:
    """Rows of an array or dataset, read and flattened to ``(n, n_features)``."""
    n = n_samples(X)
    if is_dataset(X):
        X = to_tensor(X, torch.device("cpu"), torch.float32).numpy()
    return np.asarray(X).reshape(n, -1)


def _moments(X) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature.

    From two passes over blocks of 64 MiB (the mean, then the squared
    deviations from it), so that neither a dataset nor the deviations of an
    array are held whole.
    """
    if is_dataset(X):
        batch_size = read_batch_size(X, READ_BYTES, torch.float32)

        def blocks():
            cpu = torch.device("cpu")
            for _, batch in batches(X, batch_size, cpu, torch.float32):
                yield batch.reshape(len(batch), -1).numpy()

    else:
        flat = _flat(X)
        rows = rows_that_fit(READ_BYTES, 8 * flat.shape[1], len(flat))  # float64

        def blocks():
            for start in range(0, len(flat), rows):
                yield flat[start : start + rows]

    n = n_samples(X)
    mean = sum(block.sum(axis=0, dtype=np.float64) for block in blocks()) / n
    variance = sum(_squares(block - mean) for block in blocks()) / n
    return mean, np.sqrt(variance)


def _squares(deviations: np.ndarray) -> np.ndarray:
    """Per feature, the sum of the squared ``deviations`` (squared in place)."""
    deviations *= deviations
    return deviations.sum(axis=0)


def _item(kind, sample, looks):
    index = int(sample["index"])
    return dict(
        kind=kind,
        fold=int(sample["fold"]),
        index=index,
        label=sample["label"].item(),
        prediction=sample["prediction"].item(),
        log_density=float(sample.get("log_density", np.nan)),
        image=looks.image(index),
        features=looks.features(index),
    )


def worth_a_look(data, tables):
    """The isolated and least-supported examples of an audit (dicts).

    Isolated: the lowest densities of the held-out examples (every
    example of a cross-validated audit; a prefit one's test inputs). Least
    supported: the
    held-out examples whose prediction the fewest of their nearest training
    examples carry, with those neighbours (classification only).
    """
    samples = tables["samples"]
    train_looks = _Looks(data.X)
    looks = train_looks if data.X_test is data.X else _Looks(data.X_test, train_looks)
    items = []
    if "log_density" in samples:
        for row in isolated_rows(samples):
            item = _item("isolated", samples.loc[row], looks)
            item["neighbor_count"] = float(samples.loc[row, "neighbor_count"])
            items.append(item)
    if "neighbors" in tables and "correct" in samples:
        support = prediction_support(samples, tables["neighbors"])
        for row in least_supported_rows(samples, support):
            sample = samples.loc[row]
            item = _item("least support", sample, looks)
            near = query_neighbors(tables["neighbors"], item["fold"], item["index"])
            train = near["train_index"].to_numpy()
            item.update(
                support=float(support[samples.index.get_loc(row)]),
                neighbors=train.tolist(),
                neighbor_labels=data.y[train].tolist(),
                similarities=near["similarity"].tolist(),
                neighbor_images=train_looks.image(train),
            )
            items.append(item)
    return items


@with_names
def isolated_figure(result: AuditResult) -> Figure | None:
    """Draw the most isolated examples as thumbnails, with their log-density.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the density analysis did not run, or the inputs are not images.
    """
    items = [g for g in result.examples if g["kind"] == "isolated"]
    if not items or items[0]["image"] is None:
        return None
    fig, axes = _render.subplots(
        1, len(items), figsize=(1.1 * len(items) + 0.4, 1.7), squeeze=False
    )
    regression = result.metadata["task"] == "regression"
    for ax, item in zip(axes[0], items, strict=True):
        shown = f"{item['label']:.3g}" if regression else item["label"]
        wrong = not regression and item["label"] != item["prediction"]
        _render.thumbnail(
            ax,
            item["image"],
            f"#{item['index']} y={shown}\nlog ρ={item['log_density']:.2f}",
            "tab:red" if wrong else "black",
        )
    fig.suptitle(
        "Most isolated examples, lowest log relative density ρ first"
        + ("" if regression else " (red: misclassified when held out)"),
        fontsize=8,
    )
    return fig


@with_names
def support_figure(result: AuditResult) -> Figure | None:
    """The least-supported predictions (left) and their nearest training examples.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the neighbours analysis of a classifier did not run, or
        the inputs are not images.
    """
    items = [g for g in result.examples if g["kind"] == "least support"]
    if not items or items[0]["image"] is None:
        return None
    k = len(items[0]["neighbors"])
    fig, axes = _render.subplots(
        len(items),
        k + 1,
        figsize=(1.1 * (k + 1) + 0.6, 1.2 * len(items) + 0.5),
        squeeze=False,
    )
    for row, item in zip(axes, items, strict=True):
        _render.thumbnail(
            row[0],
            item["image"],
            f"#{item['index']} y={item['label']} pred={item['prediction']}",
            "tab:red" if item["label"] != item["prediction"] else "black",
        )
        row[0].set_ylabel(f"support {item['support']:.2f}", fontsize=7)
        for ax, image, label, sim in zip(
            row[1:],
            item["neighbor_images"],
            item["neighbor_labels"],
            item["similarities"],
            strict=True,
        ):
            _render.thumbnail(ax, image, f"y={label} k={sim:.2f}")
    fig.suptitle(
        "Held-out inputs whose prediction the fewest of their most similar\n"
        "training examples carry (left; red: misclassified), and those "
        "training examples\n(k: the network's cosine similarity)",
        fontsize=8,
    )
    return fig


def _rows(items, columns):
    return frame([{c: g[c] for c in columns if c in g} for g in items])


def soft_counts(result) -> bool:
    """Whether the densities are soft counts: sums of similarities, not counts."""
    return "soft counts" in result.metadata.get("methods", {}).get("density", "")


def isolated_section(result) -> str:
    """The report section on the most isolated examples."""
    items = [g for g in result.examples if g["kind"] == "isolated"]
    if not items:
        return _render.paragraph(
            "Not available: it needs the density analysis.", "skipped"
        )
    worst = items[0]
    count = worst["neighbor_count"]
    held_out = "test inputs" if result.metadata["cv"] == "prefit" else "examples"
    if soft_counts(result):
        text = (
            f"The held-out {held_out} with the lowest soft counts: the least "
            "similarity to the training examples, summed. A soft count sums "
            "every similarity, so it also follows the size and spread of the "
            "classes, not only how atypical an input is (hard counts, "
            "options={'density': {'method': 'hard'}}, single out the isolated "
            f"ones). The lowest, #{worst['index']}, had a soft count of "
            f"{count:.3g} (log relative density {worst['log_density']:.2f})."
        )
    else:
        kinds = (
            ""
            if result.metadata["task"] == "regression"
            else ", rare variants of their class or mislabelled examples"
        )
        similar = (
            "no training example the network treats as similar"
            if count < 1
            else f"{count:.3g} similar training example{'' if count == 1 else 's'}"
        )
        text = (
            f"The held-out {held_out} with the lowest network-perspective "
            "density: the fewest training examples that the network treats as "
            f"similar to them. They are often atypical inputs{kinds}; the "
            "network learns little about them from the others. The most "
            f"isolated, #{worst['index']}, "
            f"had {similar} (log relative density {worst['log_density']:.2f}; "
            "counts below one half are floored); ties are broken by the lower "
            "similarity of the nearest training example."
        )
        if count < 1 and result.metadata["n_folds"] > 1:
            text += (
                " Examples at the floor tie whatever their fold, though the "
                "floor's log relative density depends on the size of the fold's "
                "training part."
            )
    columns = ["index", "fold", "label", "prediction", "log_density"]
    columns += ["neighbor_count", "features"]
    rows = _rows(items, columns).dropna(axis=1, how="all")
    if result.metadata["task"] == "regression":
        rows = rows.rename(columns={"label": "target"})
    return (
        _render.paragraph(text)
        + _render.figure(isolated_figure, result)
        + _render.table(rows)
    )


def support_section(result) -> str:
    """The report section on the least-supported held-out predictions."""
    items = [g for g in result.examples if g["kind"] == "least support"]
    if not items:
        return _render.paragraph(
            "Not available: it needs the neighbours analysis of a classifier.",
            "skipped",
        )
    unsupported = sum(g["support"] == 0 for g in items)
    text = (
        "Held-out inputs whose prediction is carried by the smallest share of "
        "their most similar training examples (support: the similarity-"
        "weighted share of those neighbours with the predicted label; 0 means "
        "none of them). A prediction without support is not backed by any "
        "training example the network relates the input to: a guess, or a "
        f"sign of a mislabelled neighbourhood. {unsupported} of the "
        f"{len(items)} shown have support 0."
    )
    rows = []
    for g in items:
        rows.append(
            dict(
                index=g["index"],
                fold=g["fold"],
                label=g["label"],
                prediction=g["prediction"],
                support=g["support"],
                log_density=g["log_density"],
                nearest_training_examples=neighbor_text(
                    g["neighbors"], g["neighbor_labels"], g["similarities"]
                ),
                features=g["features"],
            )
        )
    return (
        _render.paragraph(text)
        + _render.figure(support_figure, result)
        + _render.table(frame(rows).dropna(axis=1, how="all"))
    )
