"""Tidy tables of the audit: pandas imported lazily, spreads over folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..density import COUNT_FLOOR


def import_pandas():
    """Import pandas lazily, with an error naming the extra that provides it."""
    try:
        import pandas
    except ImportError as error:
        raise ImportError(
            "The audit's tables are pandas DataFrames: install pandas with "
            "`pip install pandas` (sksim's audit extra)."
        ) from error
    return pandas


def frame(rows):
    """A DataFrame of ``rows`` (a dict of columns or a list of row dicts)."""
    return import_pandas().DataFrame(rows)


def spread(table, by, columns):
    """Mean, standard deviation, min and max of ``columns`` over folds.

    ``n_folds`` counts the folds with a value (in any of ``columns``): a
    statistic undefined on a fold (NaN) is taken over the others. Values that
    differ by rounding alone (a few units in their last place) have a spread
    of 0, not of the order of 1e-16.
    """
    grouped = table.groupby(by, sort=False)[columns]
    out = grouped.agg(["mean", "std", "min", "max"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    for column in columns:
        low, high = out[f"{column}_min"], out[f"{column}_max"]
        rounding = high - low <= 8 * np.finfo(float).eps * np.maximum(
            abs(low), abs(high)
        )
        out[f"{column}_std"] = out[f"{column}_std"].mask(rounding & (low < high), 0.0)
    out.insert(0, "n_folds", grouped.count().max(axis=1))
    return out.reset_index()


def floored(samples):
    """Whether each row of ``samples`` has no similar training example.

    Its neighbour count below ``COUNT_FLOOR`` (its log-density at its fold's
    floor, which depends on the size of the fold's training part); the lowest
    log-density where the table has no counts.
    """
    if "neighbor_count" in samples:
        return samples["neighbor_count"] < COUNT_FLOOR
    return samples["log_density"] == samples["log_density"].min()


def isolation_order(samples):
    """The rows of ``samples`` from the most isolated: lowest log-density first.

    The examples that no training example is similar to (a count below
    ``COUNT_FLOOR``) tie, whatever the size of their fold's training part;
    ties are broken by the lower similarity of the nearest training example
    when the table has it.
    """
    keys = samples.assign(
        isolation=samples["log_density"].mask(floored(samples), -np.inf)
    )
    by = ["isolation"] + (["top_similarity"] if "top_similarity" in keys else [])
    return keys.sort_values(by, kind="stable").index


def query_neighbors(neighbors, fold: int, index: int):
    """The rows of the audit's ``neighbors`` table of one held-out example, by rank.

    A mask over the table: grouping its ``n_test * k`` rows to read a few
    queries took longer than the mask for each of them.
    """
    query = (neighbors["fold"].to_numpy() == fold) & (
        neighbors["index"].to_numpy() == index
    )
    return neighbors[query].sort_values("rank")


def neighbor_text(
    indices: Sequence,
    labels: Sequence,
    similarities: Sequence,
    shown: int | None = None,
) -> str:
    """Neighbours in words: ``#index (y=label, k=similarity)``, comma-separated.

    Float labels (regression targets) are shown to 4 significant digits, as
    the report's tables show numbers; only the first ``shown`` neighbours are
    written (all for None).
    """
    return ", ".join(
        f"#{i} (y={f'{y:.4g}' if isinstance(y, float) else y}, k={k:.2f})"
        for i, y, k in list(zip(indices, labels, similarities, strict=True))[:shown]
    )
