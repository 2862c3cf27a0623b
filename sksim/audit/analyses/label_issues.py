"""Suspected label errors, from the audit's own folds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ...label_issues import LabelIssueDetector, issues_frame, score_labels
from .. import _render
from .._names import with_names
from .._tables import frame, import_pandas, neighbor_text
from .base import Analysis, FoldOutput
from .neighbors import (
    image_view,
    not_contradicted,
    recall_method,
    recall_sample,
    recall_text,
    search_method,
    sketched_search,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..core import AuditResult, _Data, _Fold

TOP = 20  # issues shown in the report
SCALED_CANDIDATES = 16  # candidates per neighbour of the scaled search
SHOWN_NEIGHBORS = 5  # neighbours drawn beside each of them
FIXED = ("net", "cv", "combination", "random_state")  # set by the audit


def detector(fold: _Fold, options: Mapping[str, Any]) -> LabelIssueDetector:
    """The :class:`~sksim.LabelIssueDetector` of the fold's trained net, validated."""
    scorer = LabelIssueDetector(fold.net, random_state=fold.random_state, **options)
    scorer._validate_params()
    return scorer


def fold_signals(fold: _Fold, options: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """Both signals of the examples whose labels the fold scores.

    Cross-validated: the held-out examples, with the probabilities of the
    fold's net (out-of-fold; those the fold predicted with, when it has
    them) and their most similar examples of the training fold. Prefit:
    the training examples, as the detector's prefit path scores them
    (in-sample probabilities; the neighbours are the other training
    examples). The search comes from ``fold.fitted_search``.

    Returns
    -------
    rows, labels : ndarray of shape (n,)
        Rows of the training data ``X`` and given labels of the examples.
    P : ndarray of shape (n, n_classes)
    similarities, neighbors, neighbor_labels : ndarray of shape (n, k)
        The neighbours' similarities, rows of ``X`` and labels.
    search : NetworkNeighbors
        The fitted search that found the neighbours.
    """
    scorer = detector(fold, options)
    if fold.prefit:
        rows, labels, X, probabilities = fold.train, fold.y_train, None, None
        available = len(fold.train) - 1
    else:
        rows, labels, X, probabilities = (
            fold.test,
            fold.y_test,
            fold.X_test,
            fold.probabilities,
        )
        available = len(fold.train)
    k = scorer._n_neighbors(available)
    search = scorer._search(fold.net, fold.X_train, k)
    sketched = search.n_components is not None  # its recall is measured
    search = fold.fitted_search(search, recall_sample(fold) if sketched else None)
    # label j is output j: every output is a class
    P, similarities, found = scorer._signals(
        fold.net, search, X, k, None, probabilities
    )
    neighbor_rows = fold.train[found]
    return (
        rows,
        labels,
        P,
        similarities,
        neighbor_rows,
        fold.y_train[found],
        search,
    )


SIGNALS = ("proba", "neighbor", "similarity", "neighbor_label")  # 2-D signals


def signals_table(fold, rows, labels, *signals) -> pd.DataFrame:
    """The fold's signals, a 2-D one as numbered columns (``proba_0``, ...).

    Numeric columns rather than arrays in cells: the cache pickles them as
    blocks, and :func:`rank_issues` reads them back without a loop over rows.
    """
    parts = [frame(dict(fold=fold, index=rows, given_label=labels))]
    for name, values in zip(SIGNALS, signals, strict=True):
        columns = [f"{name}_{j}" for j in range(values.shape[1])]
        parts.append(frame(dict(zip(columns, values.T, strict=True))))
    return import_pandas().concat(parts, axis=1)


def _columns(signals, name):
    """The numbered columns of a signal present in every fold, as a 2-D array."""
    columns = []
    while f"{name}_{len(columns)}" in signals:
        column = signals[f"{name}_{len(columns)}"]
        if column.isna().any():  # a fold with fewer neighbours
            break
        columns.append(column.to_numpy())
    return np.stack(columns, axis=1)


def rank_issues(signals: pd.DataFrame) -> pd.DataFrame:
    """The ``label_issues`` table from the folds' signals, all folds scored at once.

    The scores, suggested labels and estimated count are those of
    :class:`~sksim.LabelIssueDetector` on the same signals.
    """
    P, neighbors, similarities, neighbor_labels = (
        _columns(signals, name) for name in SIGNALS
    )
    classes = np.arange(P.shape[1])  # label j is output j
    y = signals["given_label"].to_numpy().astype(np.int64)
    neighbor_labels = neighbor_labels.astype(np.int64)
    scored = score_labels(P, similarities, neighbor_labels, y)
    rows = np.arange(len(y))
    table = issues_frame(
        scored, y, classes, neighbors, similarities, neighbor_labels, rows
    )
    order = table.pop("index").to_numpy()
    table.insert(0, "index", signals["index"].to_numpy()[order])
    table.insert(1, "fold", signals["fold"].to_numpy()[order])
    table.insert(5, "proba_given_label", P[order, y[order]])
    table.insert(6, "neighbors_given_label", scored.neighbor_proba[order, y[order]])
    return table


def planted_precision(
    table: pd.DataFrame, noise: Mapping[str, Any]
) -> dict[str, float]:
    """Precision among the top ``k`` examples, ``k`` the number of planted flips.

    Also the recall of the estimated set (the examples with ``is_issue``).
    """
    flipped = set(noise["flipped"])
    k = len(flipped)
    top = table["index"].to_numpy()[:k]
    found = table.loc[table["is_issue"], "index"]
    hits = sum(int(i) in flipped for i in top)
    recall = sum(int(i) in flipped for i in found) / k if k else np.nan
    return dict(k=k, hits=hits, precision=hits / k if k else np.nan, recall=recall)


@with_names
def issue_grid(result: AuditResult) -> Figure | None:
    """The top suspected issues (left) and their most similar training examples.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the label-issue analysis did not run, or the inputs are not images.
    """
    items = [g for g in result.gallery if g["kind"] == "label issue"]
    if not items or items[0]["image"] is None:
        return None
    flipped = set(result.metadata.get("label_noise", {}).get("flipped", ()))
    k = len(items[0]["neighbor_images"])
    columns = 2 if len(items) > 10 else 1
    per_column = -(-len(items) // columns)
    width = k + 1
    ratios = ([1.3] + [1] * k + [0.35]) * columns
    fig, axes = _render.subplots(
        per_column,
        len(ratios),
        figsize=(0.85 * sum(ratios) + 0.5, 1.05 * per_column + 0.6),
        squeeze=False,
        gridspec_kw=dict(width_ratios=ratios),
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for n, item in enumerate(items):
        row = axes[n % per_column, (n // per_column) * (width + 1) :]
        given = item["label"]
        planted = " (flip)" if item["index"] in flipped else ""
        suggested = "" if item["suggested"] == given else f"→{item['suggested']}"
        _render.thumbnail(
            row[0],
            item["image"],
            f"#{item['index']} y={given}{suggested}{planted}",
            "tab:red" if item["issue"] else "black",
        )
        row[0].set_axis_on()
        for ax, image, label, sim in zip(
            row[1:width],
            item["neighbor_images"],
            item["neighbor_labels"],
            item["similarities"],
            strict=True,
        ):
            _render.thumbnail(ax, image, f"y={label} k={sim:.2f}", _color(label, given))
            ax.set_axis_on()
    planted = "; (flip): a label flipped on purpose" if flipped else ""
    fig.suptitle(
        f"The highest-scored labels (red: an estimated issue; given → "
        f"suggested label{planted}) and their most similar training examples\n"
        "(k: the network's cosine similarity; blue: a neighbour with another "
        "label than the given one)",
        fontsize=9,
    )
    return fig


def _color(label, given):
    return "black" if label == given else "tab:blue"


def _evidence(row, shown=SHOWN_NEIGHBORS):
    return neighbor_text(
        row["neighbors"], row["neighbor_labels"], row["neighbor_similarities"], shown
    )


def issue_rows(
    table: pd.DataFrame, noise: Mapping[str, Any] | None = None, top: int = TOP
) -> pd.DataFrame:
    """The first ``top`` issues as a report table, neighbours in words.

    With the planted ``noise`` known, a column says which labels were flipped.
    """
    head = table.head(top)
    rows = frame(
        dict(
            index=head["index"],
            fold=head["fold"],
            given_label=head["given_label"],
            suggested_label=head["suggested_label"],
            score=head["score"],
            estimated_issue=head["is_issue"].astype(bool),
            net_probability_of_given=head["proba_given_label"],
            neighbors_with_given=head["neighbors_given_label"],
            nearest_training_examples=[_evidence(r) for _, r in head.iterrows()],
        )
    )
    if noise is not None:
        rows.insert(5, "planted_flip", head["index"].isin(noise["flipped"]).to_numpy())
    return rows


def noise_text(result: AuditResult) -> str:
    """How many planted flips the ranking found, when the noise is known."""
    noise = result.metadata.get("label_noise")
    if noise is None:
        return ""
    found = planted_precision(result.tables["label_issues"], noise)
    return _render.paragraph(
        f"Planted noise: {found['k']} training labels were flipped at random "
        f"(rate {noise['rate']:g}, seed {noise['seed']}). Among the {found['k']} "
        f"highest-scored examples, {found['hits']} are flipped ones: a precision "
        f"of {found['precision']:.2f} at k = {found['k']} (a random ranking would give "
        f"{noise['rate']:.2f}); the estimated set holds "
        f"{found['recall']:.0%} of the flipped labels."
    )


class LabelIssues(Analysis):
    """Examples whose given label neither the net nor its neighbours support."""

    name = "label_issues"
    title = "Suspected label issues"
    # exact: the detector's "auto" switches to FAISS past a size of its own
    defaults = dict(n_neighbors=10, algorithm="exact")
    description = (
        "Every example's label is checked against two signals of the network: "
        "the class probabilities of the "
        "fold's network (in a cross-validated audit one that never saw the "
        "example, out-of-fold; in a prefit one the trained network itself, "
        "which did), and the labels of the training examples the network finds "
        "most similar to it, "
        "weighted by their similarity. The score is minus the average of the "
        "two probabilities of the given label: an example that neither the "
        "network nor its nearest training examples agree with is likely "
        "mislabelled (or ambiguous). The estimated number of issues follows "
        "confident learning's calibrated count."
    )
    tasks = ("classification",)
    shares_search = True

    def scaled_options(self, fold: _Fold) -> dict[str, Any]:
        """The neighbours analysis's search at scale (:func:`sketched_search`).

        Its FAISS search takes :data:`SCALED_CANDIDATES` candidates per
        neighbour: the ten neighbours of the label issues are found among 16
        each with the recall the neighbours analysis's five have among 24
        (0.969 against 0.975 at 50,000 examples), flagging the same issues to
        0.1 %, while searching and ranking the candidates costs time linear in
        their number.
        """
        options = sketched_search(fold)
        if options["algorithm"] == "faiss":
            options["candidates_per_neighbor"] = SCALED_CANDIDATES
        return not_contradicted(options, fold.options.get(self.name, {}))

    fixed_options = FIXED
    audit_settings = ()

    def option_target(self) -> type:
        return LabelIssueDetector

    def run(self, fold: _Fold) -> FoldOutput:
        options = self.options(fold)
        rows, labels, P, similarities, neighbors, neighbor_labels, search = (
            fold_signals(fold, options)
        )
        table = signals_table(
            fold.fold, rows, labels, P, neighbors, similarities, neighbor_labels
        )
        source = (
            "in-sample probabilities of the trained network (prefit: weaker "
            "evidence) and the most similar other training examples"
            if fold.prefit
            else "out-of-fold probabilities of the fold's network and the most "
            "similar examples of its training fold"
        )
        k = similarities.shape[1]
        method = f"{source}, k = {k}, by {search_method(search)}"
        metrics = {}
        if search.n_components_ is not None:
            recall, words = recall_method(search, k, len(fold.test), self.name)
            metrics["label_issue_recall"] = recall
            method += words
        return FoldOutput(
            metrics=metrics,
            tables=dict(label_issues=table),
            method=self.method_text(fold, method),
        )

    def summarise(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return dict(label_issues=rank_issues(tables["label_issues"]))

    def gallery(
        self, data: _Data, tables: Mapping[str, pd.DataFrame], top: int = TOP
    ) -> list[dict[str, Any]]:
        """The ``top`` suspected issues, with their neighbours."""
        images = image_view(data.X)
        items = []
        for _, row in tables["label_issues"].head(top).iterrows():
            neighbors = np.asarray(row["neighbors"])[:SHOWN_NEIGHBORS]
            items.append(
                dict(
                    kind="label issue",
                    fold=int(row["fold"]),
                    index=int(row["index"]),
                    label=np.asarray(row["given_label"]).item(),
                    suggested=np.asarray(row["suggested_label"]).item(),
                    score=float(row["score"]),
                    issue=bool(row["is_issue"]),
                    neighbors=neighbors.tolist(),
                    neighbor_labels=data.y[neighbors].tolist(),
                    similarities=list(row["neighbor_similarities"][:SHOWN_NEIGHBORS]),
                    image=None if images is None else images[int(row["index"])],
                    neighbor_images=None if images is None else images[neighbors],
                )
            )
        return items

    def section(self, result: AuditResult) -> str:
        table = result.tables["label_issues"]
        n_issues = int(table["is_issue"].sum())
        parts = [
            _render.paragraph(self.description),
            _render.paragraph(
                f"Estimated label issues: {n_issues} of {len(table)} examples "
                f"({n_issues / len(table):.1%}). Below, the {min(TOP, len(table))} "
                "highest-scored examples, the estimated issues among them marked "
                "(estimated_issue; red in the figure); the full ranking is the "
                "label_issues table (and the JSON output)."
            ),
            noise_text(result),
        ]
        method = result.metadata.get("methods", {}).get(self.name)
        if method is not None:
            parts.append(_render.paragraph(f"Method: {method}.", "note"))
        k = len(table["neighbors"].iloc[0])
        parts.append(recall_text(result, "label_issue_recall", k))
        parts.append(_render.figure(issue_grid, result))
        noise = result.metadata.get("label_noise")
        parts.append(_render.table(issue_rows(table, noise)))
        return "".join(parts)
