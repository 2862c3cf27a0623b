"""Matplotlib figures of an audit (needs the ``plot`` extra).

Each function takes an :class:`~sksim.audit.AuditResult` and returns a
matplotlib ``Figure``, or None when the analysis behind it did not run.
"""

from __future__ import annotations

import numpy as np


def pyplot():
    """Import ``matplotlib.pyplot`` lazily, with an error naming the extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "The audit report draws its figures with matplotlib: install it with "
            '`pip install "sksim[plot]"`.'
        ) from error
    return plt


def density_histogram(result):
    """Histogram of the held-out log-densities, correct and misclassified."""
    samples = result.tables["samples"]
    if "log_density" not in samples:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    values = samples["log_density"].to_numpy()
    correct = samples["correct"].to_numpy()
    edges = np.histogram_bin_edges(values, bins=30)
    ax.hist(
        [values[correct], values[~correct]],
        bins=edges,
        stacked=True,
        color=["tab:blue", "tab:red"],
        label=[f"correct ({correct.sum()})", f"misclassified ({(~correct).sum()})"],
    )
    ax.set_xlabel("log relative density (network's perspective)")
    ax.set_ylabel("held-out examples")
    ax.set_title("Density of held-out examples relative to their training fold")
    ax.legend(fontsize="small")
    return fig


def error_by_density(result):
    """Error rate by density quantile bin, mean and spread over folds."""
    table = result.tables.get("density_bins_summary")
    if table is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    per_fold = result.tables["density_bins"]
    for fold, rows in per_fold.groupby("fold"):
        ax.plot(
            rows["density_bin"],
            rows["error_rate"],
            color="0.7",
            lw=1,
            marker=".",
            label="one fold" if fold == per_fold["fold"].min() else None,
        )
    ax.errorbar(
        table["density_bin"],
        table["error_rate_mean"],
        yerr=table["error_rate_std"].fillna(0),
        color="tab:red",
        marker="o",
        capsize=3,
        label="mean over folds (± std)",
    )
    ax.set_xlabel("density bin (0 = lowest density)")
    ax.set_ylabel("error rate")
    ax.set_ylim(bottom=0)
    ax.set_title("Error versus network-perspective density")
    ax.legend(fontsize="small")
    return fig


def _show(ax, image):
    cmap = "gray_r" if image.ndim == 2 else None
    if image.ndim == 3:
        low, high = image.min(), image.max()
        image = (image - low) / (high - low) if high > low else image * 0
    ax.imshow(image, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def neighbor_grid(result):
    """Each gallery example, then its most similar training examples."""
    gallery = [g for g in result.gallery if g["image"] is not None]
    if not gallery:
        return None
    plt = pyplot()
    k = len(gallery[0]["neighbors"])
    fig, axes = plt.subplots(
        len(gallery),
        k + 1,
        figsize=(1.25 * (k + 1) + 1.2, 1.45 * len(gallery)),
        squeeze=False,
        layout="constrained",
    )
    for row, item in zip(axes, gallery, strict=True):
        _show(row[0], item["image"])
        row[0].set_title(
            f"y={item['label']} pred={item['prediction']}",
            fontsize=8,
            color="tab:red" if item["label"] != item["prediction"] else "black",
        )
        row[0].set_ylabel(item["kind"].replace(" ", "\n"), fontsize=8)
        for ax, image, label, sim in zip(
            row[1:],
            item["neighbor_images"],
            item["neighbor_labels"],
            item["similarities"],
            strict=True,
        ):
            _show(ax, image)
            ax.set_title(f"y={label} k={sim:.2f}", fontsize=8)
    fig.suptitle(
        "Held-out example (left) and its most similar training examples, "
        "by the network's cosine similarity k",
        fontsize=9,
    )
    return fig


def sensitivity_layers(result):
    """Layer-wise D, G and R, trained and at initialisation, mean over folds."""
    table = result.tables.get("sensitivity_summary")
    if table is None:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), layout="constrained")
    styles = {"trained": "tab:blue", "init": "tab:gray", "shuffled": "tab:green"}
    for net, rows in table.groupby("net", sort=False):
        rows = rows.sort_values("depth")
        for ax, name in zip(axes, ("D", "G", "R"), strict=True):
            ax.errorbar(
                rows["depth"],
                rows[f"{name}_mean"],
                yerr=rows[f"{name}_std"].fillna(0),
                marker="o",
                capsize=2,
                color=styles.get(net),
                label=net,
            )
    layers = table.sort_values("depth").drop_duplicates("depth")
    for ax, name in zip(axes, ("D", "G", "R"), strict=True):
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xticks(layers["depth"], layers["layer"], rotation=60, fontsize=7)
    axes[0].legend(fontsize="small")
    fig.suptitle("Relative sensitivity to diffeomorphisms per layer (R = D / G)")
    return fig


def class_densities(result):
    """Classes sorted by mean own-class log-density, per layer, over folds."""
    table = result.tables.get("class_fitting_summary")
    if table is None:
        return None
    plt = pyplot()
    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = plt.subplots(
        1,
        len(layers),
        figsize=(3.6 * len(layers), 3.4),
        squeeze=False,
        layout="constrained",
    )
    for ax, layer in zip(axes[0], layers, strict=True):
        rows = table[table["layer"] == layer].sort_values("train_mean_log_density_mean")
        x = np.arange(len(rows))
        for column, color, label in (
            ("train_mean_log_density", "tab:orange", "training fold"),
            ("test_mean_log_density", "tab:blue", "held-out"),
        ):
            ax.errorbar(
                x,
                rows[f"{column}_mean"],
                yerr=rows[f"{column}_std"].fillna(0),
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
