"""The most similar training examples of each held-out example."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from ..._engine.inputs import (
    is_dataset,
    split_item,
    take,
    to_numpy,
    to_tensor,
)
from ..._validation import check_positive_int
from ...neighbors import NetworkNeighbors, automatic_index
from .. import _render
from .._names import with_names
from .._tables import (
    floored,
    frame,
    isolation_order,
    neighbor_text,
    query_neighbors,
)
from .base import Analysis, FoldOutput

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..._typing import NetInput
    from ..core import AuditResult, _Data, _Fold

GALLERY_SIZE = 4
SKETCH_COMPONENTS = (256, 128, 64)  # the largest whose sketches fit the budget
SEARCH_COMPONENTS = 64  # principal components of the sketches FAISS searches
SKETCH_MEMORY = 2**29  # bytes of the training fold's float32 sketches (512 MiB)
MIN_RECALL = 0.8  # a lower measured recall is warned about
RECALL_QUERIES = 200  # held-out examples the recall is measured on, by default
KINDS = ("lowest density", "misclassified", "largest error", "typical")


FLAT_IMAGE_SIDE = 8  # the smallest flat square input drawn as an image


def image_view(X: ArrayLike | Dataset) -> np.ndarray | DatasetImages | None:
    """``X`` as images ``(n, H, W)`` or ``(n, H, W, 3)``, or None if not image-like.

    Image-like: ``(n, C, H, W)`` with one or three channels, ``(n, H, W)``,
    or flat ``(n, H * H)`` with ``H >=`` :data:`FLAT_IMAGE_SIDE` (such as
    scikit-learn's 8x8 digits; 16 or 36 features are more often a table's).
    A dataset's images are read when indexed (:class:`DatasetImages`).
    """
    if is_dataset(X):
        first = split_item(X[0])[0]
        if isinstance(first, Mapping):
            return None
        first = np.asarray(to_numpy(torch.as_tensor(first, device="cpu")))
        if _images(np.zeros((1, *first.shape), first.dtype)) is None:
            return None
        return DatasetImages(X)
    return _images(np.asarray(X))


class DatasetImages:
    """The images of a dataset's inputs, read only for the rows asked for.

    Indexed as the array :func:`image_view` gives: by one row, or by an
    array of rows.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, rows):
        single = np.ndim(rows) == 0
        rows = np.atleast_1d(rows)
        X = to_tensor(take(self.dataset, rows), torch.device("cpu"), torch.float32)
        images = _images(X.numpy())
        return images[0] if single else images


def _images(X: np.ndarray) -> np.ndarray | None:
    """The array ``X`` as images, or None (see :func:`image_view`)."""
    if X.ndim == 4 and X.shape[1] == 1:
        return X[:, 0]
    if X.ndim == 4 and X.shape[1] == 3:
        return np.moveaxis(X, 1, -1)
    if X.ndim == 3:
        return X
    if X.ndim == 2 and (X.dtype.kind == "f" or X.dtype == np.uint8):  # not token ids
        side = int(round(np.sqrt(X.shape[1])))
        if side >= FLAT_IMAGE_SIDE and side * side == X.shape[1]:
            return X.reshape(len(X), side, side)
    return None


def recall_rows(n_test: int, n_queries: int, random_state: int | None) -> np.ndarray:
    """Sorted held-out rows on which the recall is measured.

    All of them when ``n_queries >= n_test``, else a uniform random subset.
    """
    if n_queries >= n_test:
        return np.arange(n_test)
    rng = np.random.RandomState(random_state)
    return np.sort(rng.choice(n_test, n_queries, replace=False))


def recall_sample(fold: _Fold, n_queries: int = RECALL_QUERIES) -> NetInput:
    """Held-out examples of ``fold`` on which a sketched search's recall is measured."""
    return take(fold.X_test, recall_rows(len(fold.test), n_queries, fold.random_state))


def recall_method(
    search: NetworkNeighbors, n_neighbors: int, n_test: int, analysis: str
) -> tuple[float | None, str]:
    """The recall of the fitted sketched ``search`` as set now, and its words.

    Measured on the held-out examples it was fitted with (``X_val``): those
    of the analysis that fitted it, which may be another sharing the search;
    None where that one gathered too few exact neighbours. Warned about
    below :data:`MIN_RECALL`.
    """
    recall = search._sample_recall()
    if recall is None:
        return None, ""
    low_recall_warning(recall, search, n_neighbors, analysis)
    n_queries = search._n_recall_queries
    drawn = "" if n_queries == n_test else " drawn at random"
    return recall, (
        f", recall@{n_neighbors} against exact neighbours measured on "
        f"{n_queries} held-out examples{drawn}"
    )


def search_method(search: NetworkNeighbors) -> str:
    """The neighbour search of the fitted ``search``, in words.

    Its parameters, how wide its sketches are, whether it ranked the
    candidates of its reduced search by their exact similarities, and
    whether the similarities it gives are the sketches' estimates.
    """
    n_components = search.n_components_
    if n_components is None:
        return "exact search over all pairs of examples"
    if search.algorithm == "faiss":
        ranking = "exact similarities" if search.exact_ranking_ else "whole sketches"
        text = (
            f"FAISS search (index {search.index!r}) over "
            f"gradient sketches with n_components={n_components}"
            + (
                f", candidates ({search.candidates_per_neighbor} per neighbour) "
                f"from their {search.search_directions_.shape[1]} principal "
                "components "
                f"ranked by their {ranking}"
                if search.search_directions_ is not None
                else ""
            )
        )
    else:
        text = (
            "exact search over all pairs of gradient sketches with "
            f"n_components={n_components}"
        )
    if search.exact_ranking_:
        return text
    return text + " (similarities estimated by the sketches)"


def label_agreement(
    fold: _Fold, labels: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-example columns and fold metric comparing neighbours' labels.

    Classification: the share of neighbours with the example's label
    (``neighbor_label_agreement``); regression: the mean absolute difference
    between their targets and the example's (``neighbor_target_difference``).
    """
    if fold.task == "regression":
        name = "neighbor_target_difference"
        per_pair = np.abs(labels - fold.y_test[:, None])
    else:
        name = "neighbor_label_agreement"
        per_pair = labels == fold.y_test[:, None]
    return {name: per_pair.mean(axis=1)}, {name: float(per_pair.mean())}


def _is_error(item, regression) -> bool:
    """Whether a gallery example is shown as an error.

    Misclassified, or among the largest errors of a regression.
    """
    if regression:
        return item["kind"] == "largest error"
    return item["label"] != item["prediction"]


def _shown(value) -> str:
    """A label or prediction as shown in a title: floats to 3 digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@with_names
def neighbor_grid(result: AuditResult) -> Figure | None:
    """Each gallery example, then its most similar training examples.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when no gallery example has an image (the neighbours analysis
        did not run, or the inputs are not images).
    """
    gallery = [g for g in own_gallery(result) if g["image"] is not None]
    if not gallery:
        return None
    k = len(gallery[0]["neighbors"])
    regression = "correct" not in result.tables["samples"]
    fig, axes = _render.subplots(
        len(gallery),
        k + 1,
        figsize=(1.25 * (k + 1) + 1.2, 1.45 * len(gallery)),
        squeeze=False,
    )
    for row, item in zip(axes, gallery, strict=True):
        _render.image(row[0], item["image"])
        row[0].set_title(
            f"y={_shown(item['label'])} pred={_shown(item['prediction'])}",
            fontsize=8,
            color="tab:red" if _is_error(item, regression) else "black",
        )
        row[0].set_ylabel(item["kind"].replace(" ", "\n"), fontsize=8)
        for ax, image, label, sim in zip(
            row[1:],
            item["neighbor_images"],
            item["neighbor_labels"],
            item["similarities"],
            strict=True,
        ):
            _render.image(ax, image)
            ax.set_title(f"y={_shown(label)} k={sim:.2f}", fontsize=8)
    fig.suptitle(
        "Held-out example (left) and its most similar training examples, "
        "by the network's cosine similarity k",
        fontsize=9,
    )
    return fig


def _traits(sample):
    """What makes a gallery example different: fold, class, confusion pair."""
    label, prediction = sample["label"].item(), sample["prediction"].item()
    return sample["fold"].item(), label, (label, prediction)


def diverse(samples: pd.DataFrame, candidates: Iterable[int], size: int) -> list[int]:
    """Up to ``size`` of the rows ``candidates`` of ``samples``, diverse.

    Each pick is the candidate with the most traits (fold, class, confusion
    pair of label and prediction) not yet shown, the earliest in
    ``candidates`` (their priority order) among equals.
    """
    remaining, chosen = list(candidates), []
    seen = [set(), set(), set()]
    while remaining and len(chosen) < size:
        traits = [_traits(samples.loc[i]) for i in remaining]
        novelty = [
            sum(t not in s for t, s in zip(ts, seen, strict=True)) for ts in traits
        ]
        best = int(np.argmax(novelty))
        chosen.append(remaining.pop(best))
        for trait, shown in zip(traits[best], seen, strict=True):
            shown.add(trait)
    return chosen


def _gallery_rows(samples, size, pool=5):
    """(kind, row of ``samples``) of the examples the gallery shows.

    Diverse picks (see :func:`diverse`) among the ``pool * size`` most
    isolated (:func:`~sksim.audit._tables.isolation_order`: ties at the floor
    by their nearest training example, as the isolated examples' section),
    and among the ``pool * size`` errors of lowest density; then a typical
    example, the one of median density among those not at the floor (the
    first, without densities) not shown yet, correctly classified for a
    classifier.
    """
    chosen = []
    if "log_density" in samples:
        order = samples.loc[isolation_order(samples)]
        lowest = diverse(samples, order.index[: pool * size], size)
        chosen += [("lowest density", i) for i in lowest]
        above = order.index[~floored(order)]
        above = above if len(above) else order.index
        middle = len(above) // 2  # outwards from the median, upwards first
        typical = [*above[middle:], *above[:middle][::-1]]
    else:
        order = samples
        typical = list(samples.index)
    taken = {i for _, i in chosen}
    if "correct" in samples:
        kind = "misclassified"
        wrong = order.index[~order["correct"].to_numpy()]
        wrong = [i for i in wrong if i not in taken][: pool * size]
        wrong = diverse(samples, wrong, size)
    else:
        kind = "largest error"
        wrong = samples.sort_values(
            "squared_error", ascending=False, kind="stable"
        ).index
        wrong = [i for i in wrong if i not in taken][:size]
    chosen += [(kind, i) for i in wrong]
    taken.update(wrong)
    right = samples["correct"] if "correct" in samples else None
    shown = (i for i in typical if i not in taken and (right is None or right[i]))
    chosen += [("typical", i) for i in itertools.islice(shown, 1)]
    return chosen


def own_gallery(result: AuditResult) -> list[dict[str, Any]]:
    """The gallery examples this analysis chose (not those of the others)."""
    return [g for g in result.gallery if g["kind"] in KINDS]


def recall_text(result: AuditResult, column: str, n_neighbors: int) -> str:
    """The recall of approximate neighbours in ``folds[column]``, as HTML (or "")."""
    folds = result.tables["folds"]
    if column not in folds:
        return ""
    measured = folds.dropna(subset=[column])
    if measured.empty:
        return ""
    values = measured[column]
    per_fold = ", ".join(
        f"fold {fold} {v:.3f}" for fold, v in zip(measured["fold"], values, strict=True)
    )
    return _render.paragraph(
        f"Recall@{n_neighbors} of the approximate neighbours against exact ones: "
        f"{values.mean():.3f} ({per_fold})."
    )


def sketch_components(n_train: int, n_outputs: int, budget: int = SKETCH_MEMORY) -> int:
    """Components per output of the sketches an exact search compares at scale.

    The largest of :data:`SKETCH_COMPONENTS` whose float32 sketches of the
    ``n_train`` training examples (``n_outputs * n_components`` values each)
    hold in ``budget`` bytes; the smallest when none does.
    """
    for n_components in SKETCH_COMPONENTS:
        if n_train * n_outputs * n_components * 4 <= budget:
            return n_components
    return SKETCH_COMPONENTS[-1]


def sketched_search(fold: _Fold) -> dict[str, Any]:
    """Search options of the fold at scale: FAISS over gradient sketches.

    FAISS searches the sketches' :data:`SEARCH_COMPONENTS` leading principal
    components for candidates (when the training fold is larger), ranked by
    their exact similarities (recomputed for the candidates in up to 8
    blocks when the network's Jacobians do not fit in memory; by the whole
    sketches past that). The sketch size is chosen in ``fit``
    (``n_components="auto"``): enough to choose candidates, or as wide as
    memory allows when the sketches rank them. Without faiss, the sketches
    of :func:`sketch_components` are searched exactly, one output per class
    (one for a regression).
    """
    if find_spec("faiss") is None:
        n_outputs = 1 if fold.classes is None else len(fold.classes)
        n_components = sketch_components(len(fold.train), n_outputs)
        return dict(algorithm="exact", n_components=n_components)
    options = dict(algorithm="faiss", n_components="auto")
    if len(fold.train) > SEARCH_COMPONENTS:
        options["search_components"] = SEARCH_COMPONENTS
    return options


# Scaled options that only a FAISS search takes
FAISS_ONLY = ("search_components", "index", "candidates_per_neighbor")


def not_contradicted(
    scaled: dict[str, Any], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The scaled search options that the user's options ``given`` leave standing.

    ``n_components=None`` (no sketches: an exact search of exact similarities)
    leaves none of them, ``algorithm="exact"`` none of :data:`FAISS_ONLY`:
    the search the low-recall warning advises, and that fit would otherwise
    refuse for a scaled option the user never set.
    """
    if "n_components" in given and given["n_components"] is None:
        return {}
    if given.get("algorithm") == "exact":
        return {k: v for k, v in scaled.items() if k not in FAISS_ONLY}
    return scaled


def low_recall_warning(
    recall: float, search: NetworkNeighbors, n_neighbors: int, analysis: str
) -> None:
    """Warn when the ``recall`` of ``search`` is below :data:`MIN_RECALL`.

    The advice names what limits the search: the candidates, when they are
    ranked by their exact similarities, else the sketches; and the options
    of ``analysis`` that widen them.
    """
    if recall >= MIN_RECALL:
        return
    if search.exact_ranking_:
        cause = (
            f"candidates ({search.candidates_per_neighbor} per neighbour) ranked "
            f"by their exact similarities; raise options[{analysis!r}]"
            "['candidates_per_neighbor'] (at a cost linear in it)"
        )
    else:
        cause = (
            f"sketches of n_components={search.n_components_}; raise "
            f"options[{analysis!r}]['n_components'] (or max_memory, from which "
            "n_components='auto' sizes them)"
        )
    warnings.warn(
        f"The approximate neighbours of the {analysis} analysis have a "
        f"recall@{n_neighbors} of {recall:.2f} against exact ones, below "
        f"{MIN_RECALL}, with {cause}, or search exactly with algorithm='exact' "
        "and n_components=None.",
        UserWarning,
        stacklevel=3,
    )


class Neighbors(Analysis):
    """The training examples the network finds most similar to each held-out one."""

    name = "neighbors"
    title = "Nearest training examples"
    description = (
        "For a few held-out examples (lowest density, misclassified for a "
        "classifier or with the largest errors for a regression, typical), "
        "the training examples of their "
        "fold that the network considers most similar, with the cosine "
        "similarity k."
    )
    defaults = dict(recall_queries=RECALL_QUERIES)
    figures = (neighbor_grid,)
    shares_search = True

    own_options = ("recall_queries",)
    fixed_options = ("n_neighbors", "random_state")
    audit_settings = ("n_neighbors",)

    def option_target(self) -> type:
        return NetworkNeighbors

    def check_options(self, options: Mapping[str, Any]) -> None:
        super().check_options(options)
        check_positive_int(options.get("recall_queries", 1), "recall_queries")

    def scaled_options(self, fold: _Fold) -> dict[str, Any]:
        """:func:`sketched_search` of the fold, with its FAISS index.

        That of :func:`~sksim.neighbors.automatic_index`, which the label
        issues use too.
        """
        options = sketched_search(fold)
        if options["algorithm"] == "faiss":
            options["index"] = automatic_index(len(fold.train))
        return not_contradicted(options, fold.options.get(self.name, {}))

    def run(self, fold: _Fold) -> FoldOutput:
        options = self.options(fold)
        n_queries = options.pop("recall_queries")
        sketched = options.get("n_components") is not None
        search = fold.fitted_search(
            NetworkNeighbors(
                fold.net,
                n_neighbors=fold.n_neighbors,
                random_state=fold.random_state,
                **options,
            ),
            X_val=recall_sample(fold, n_queries) if sketched else None,
        )
        similarities, rows = search.most_similar(fold.X_test, fold.n_neighbors)
        labels, indices = fold.y_train[rows], fold.train[rows]
        columns, metrics = label_agreement(fold, labels)
        method = search_method(search)
        if sketched:
            recall, words = recall_method(
                search, fold.n_neighbors, len(fold.test), self.name
            )
            metrics["neighbor_recall"] = recall
            method += words
        k = indices.shape[1]
        table = frame(
            dict(
                fold=fold.fold,
                index=np.repeat(fold.test, k),
                rank=np.tile(np.arange(1, k + 1), len(fold.test)),
                train_index=indices.ravel(),
                similarity=similarities.ravel(),
                train_label=labels.ravel(),
            )
        )
        return FoldOutput(
            samples=dict(
                top_similarity=similarities[:, 0],
                nearest_train_index=indices[:, 0],
                **columns,
            ),
            metrics=metrics,
            tables=dict(neighbors=table),
            method=self.method_text(fold, method),
        )

    def gallery(
        self,
        data: _Data,
        tables: Mapping[str, pd.DataFrame],
        size: int = GALLERY_SIZE,
    ) -> list[dict[str, Any]]:
        """Held-out examples worth looking at, with their nearest training examples."""
        samples = tables["samples"]
        images, test_images = image_view(data.X), image_view(data.X_test)
        gallery = []
        for kind, row in _gallery_rows(samples, size):
            sample = samples.loc[row]
            fold, index = int(sample["fold"]), int(sample["index"])
            near = query_neighbors(tables["neighbors"], fold, index)
            train = near["train_index"].to_numpy()
            gallery.append(
                dict(
                    kind=kind,
                    fold=fold,
                    index=index,
                    label=sample["label"].item(),
                    prediction=sample["prediction"].item(),
                    log_density=float(sample.get("log_density", np.nan)),
                    neighbors=train.tolist(),
                    neighbor_labels=data.y[train].tolist(),
                    similarities=near["similarity"].tolist(),
                    image=None if test_images is None else test_images[index],
                    neighbor_images=None if images is None else images[train],
                )
            )
        return gallery

    def section(self, result: AuditResult) -> str:
        rows = [
            dict(
                kind=g["kind"],
                fold=g["fold"],
                index=g["index"],
                label=g["label"],
                prediction=g["prediction"],
                log_density=g["log_density"],
                neighbors=neighbor_text(
                    g["neighbors"], g["neighbor_labels"], g["similarities"]
                ),
            )
            for g in own_gallery(result)
        ]
        table = frame(rows)
        if result.metadata["task"] == "regression":
            table = table.rename(columns={"label": "target"})
        n_neighbors = result.metadata["n_neighbors"]
        text = super().section(result) + recall_text(
            result, "neighbor_recall", n_neighbors
        )
        return text + (_render.table(table) if rows else "")
