"""Suspected label errors from the network's perspective.

Two class distributions per example, both out-of-fold: ``P_i``, the net's
predicted probabilities, and ``Q_i``, the labels of the training examples the
network finds most similar to ``x_i`` (cosine kernel ``k``), weighted by
``w_ij = max(k_ij, 0)``::

    Q_i(c) = sum_{j in N_k(i)} w_ij [y_j = c] / sum_{j in N_k(i)} w_ij

A label that neither the net nor the example's network-neighbours support is
suspect. The number of issues is estimated as confident learning does, from
per-class thresholds on the combined distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.model_selection import BaseCrossValidator
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d
from skorch import NeuralNet

from ._base import NetworkEstimator, constraints, forget_failed_fit, make_engine
from ._docs import fill_doc
from ._engine.inputs import lazy_rows, n_samples, take
from ._engine.jacobian import DEFAULT_MAX_MEMORY
from ._net import (
    CLONE_HINT,
    _unwrap,
    fit_net,
    is_unfitted_skorch,
    predicted_probabilities,
    skorch_task,
    training_input,
    untrained_clone,
)
from ._reduced_search import CANDIDATES_PER_NEIGHBOR
from ._typing import NetInput, NetLike, Output, Self
from ._validation import (
    check_net_input,
    cv_partition,
    given_or_item_labels,
    labelled,
    labels_key_hint,
)
from .density import NEIGHBOR_PARAMETERS
from .neighbors import N_COMPONENTS, NetworkNeighbors, automatic_index, check_sketched

if TYPE_CHECKING:
    import pandas as pd

EXACT_MAX_SAMPLES = 10_000  # reference sets above this are searched with FAISS
FAISS_SEARCH_COMPONENTS = 64  # principal components the automatic FAISS search uses
COMBINATIONS = ("mean", "rank", "proba", "neighbors")


def neighbor_label_distribution(
    similarities: np.ndarray, labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """``Q``: the similarity-weighted label distribution of each row's neighbours.

    Parameters
    ----------
    similarities : ndarray of shape (n, k)
        Similarities of each example to its neighbours.
    labels : ndarray of shape (n, k)
        Encoded labels (``0 .. n_classes - 1``) of the neighbours.
    n_classes : int
        Number of classes.

    Returns
    -------
    Q : ndarray of shape (n, n_classes)
        Rows sum to one; a row whose neighbours all have non-positive
        similarity is uniform.
    """
    weights = np.maximum(similarities, 0.0)
    Q = np.zeros((len(labels), n_classes))
    rows = np.broadcast_to(np.arange(len(labels))[:, None], labels.shape)
    np.add.at(Q, (rows, labels), weights)
    total = Q.sum(axis=1, keepdims=True)
    return np.divide(Q, total, out=np.full_like(Q, 1.0 / n_classes), where=total > 0)


def _ranks(values):
    """Ranks of ``values`` in ``[0, 1]`` (ties share their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(values) - 1) / max(len(values) - 1, 1)


def combine_signals(
    P: np.ndarray, Q: np.ndarray, y: np.ndarray, combination: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """The combined distribution and the score of each given label.

    Parameters
    ----------
    P : ndarray of shape (n, n_classes)
        Out-of-fold predicted probabilities.
    Q : ndarray of shape (n, n_classes)
        Neighbour label distributions.
    y : ndarray of shape (n,)
        Encoded given labels.
    combination : {"mean", "rank", "proba", "neighbors"}, default="mean"
        ``"mean"``: ``(P + Q) / 2``, scored by minus its probability of the
        given label; ``"rank"``: the same distribution, scored by the average
        of the ranks of ``-P(y)`` and ``-Q(y)`` (each signal counts equally
        whatever its scale); ``"proba"`` and ``"neighbors"``: one signal alone.

    Returns
    -------
    combined : ndarray of shape (n, n_classes)
        The distribution whose argmax is the suggested label.
    scores : ndarray of shape (n,)
        Higher means more likely mislabelled.
    """
    if combination not in COMBINATIONS:
        raise ValueError(
            f"combination must be one of {list(COMBINATIONS)}; got {combination!r}."
        )
    P, y = _checked_signal(P, y, "P")
    Q, _ = _checked_signal(Q, y, "Q")
    rows = np.arange(len(y))
    if combination == "proba":
        return P, -P[rows, y]
    if combination == "neighbors":
        return Q, -Q[rows, y]
    combined = (P + Q) / 2
    if combination == "rank":
        return combined, (_ranks(-P[rows, y]) + _ranks(-Q[rows, y])) / 2
    return combined, -combined[rows, y]


def _checked_signal(
    probabilities: ArrayLike, y: ArrayLike, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``probabilities`` ``(n, n_classes)``, finite, and ``y``, their ``n`` codes.

    Raises a ValueError naming ``name`` otherwise: a NaN row was left out of
    the count, float codes failed in NumPy's cast, a ``y`` of another length
    in its indexing.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y = column_or_1d(y)
    if probabilities.ndim != 2 or len(probabilities) != len(y):
        raise ValueError(
            f"{name} must have shape (n, n_classes) with n = len(y) = {len(y)}; "
            f"got {probabilities.shape}."
        )
    if not np.isfinite(probabilities).all():
        bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        raise ValueError(
            f"{name} holds NaN or infinity in {len(bad)} row(s), e.g. "
            f"{bad[:5].tolist()}."
        )
    whole = y.dtype.kind in "biuf" and bool(np.all(np.mod(y, 1) == 0))
    codes = y.astype(np.int64) if whole else None
    n_classes = probabilities.shape[1]
    if codes is None or codes.min() < 0 or codes.max() >= n_classes:
        raise ValueError(
            f"y must hold the class codes 0 .. {n_classes - 1} of {name}'s columns "
            "(encode labels with sklearn.preprocessing.LabelEncoder)."
        )
    return probabilities, codes


def estimate_n_issues(combined: np.ndarray, y: np.ndarray) -> int:
    """Number of label issues by confident learning's calibrated joint.

    Class ``c``'s threshold is its average self-confidence, the mean of
    ``combined[i, c]`` over the examples labelled ``c``, and at least chance,
    ``1 / n_classes``. An example counts
    towards ``(y_i, j)`` for the most probable class ``j`` whose probability
    reaches its threshold (examples with none are not counted); each row of
    these counts is rescaled to the number of examples of its class, and the
    off-diagonal total is the estimate.

    Parameters
    ----------
    combined : ndarray of shape (n, n_classes)
        Class probabilities of each example.
    y : ndarray of shape (n,)
        Encoded given labels.

    Returns
    -------
    n_issues : int
    """
    combined, y = _checked_signal(combined, y, "combined")
    n_classes = combined.shape[1]
    counts = np.bincount(y, minlength=n_classes)
    own = np.bincount(y, weights=combined[np.arange(len(y)), y], minlength=n_classes)
    thresholds = np.divide(own, counts, out=np.ones(n_classes), where=counts > 0)
    # a class the network does not recognise (one rare example) would claim
    # every example that gives it more than its own low probability
    thresholds = np.maximum(thresholds, 1 / n_classes)
    above = combined >= thresholds
    best = np.where(above, combined, -np.inf).argmax(axis=1)
    counted = above.any(axis=1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (y[counted], best[counted]), 1.0)
    per_row = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(
        joint * counts[:, None], per_row, out=np.zeros_like(joint), where=per_row > 0
    )
    return int(round(calibrated.sum() - np.trace(calibrated)))


def score_labels(
    P: np.ndarray,
    similarities: np.ndarray,
    neighbor_labels: np.ndarray,
    y: np.ndarray,
    combination: str = "mean",
) -> Bunch:
    """Both signals of every example combined: its score and suggested label.

    Parameters
    ----------
    P : ndarray of shape (n, n_classes)
        Out-of-fold (or, prefit, in-sample) predicted probabilities.
    similarities : ndarray of shape (n, k)
        Similarities of each example to its nearest training examples.
    neighbor_labels : ndarray of shape (n, k)
        Their encoded labels (``0 .. n_classes - 1``).
    y : ndarray of shape (n,)
        Encoded given labels of the examples.
    combination : {"mean", "rank", "proba", "neighbors"}, default="mean"
        The score (see :func:`combine_signals`).

    Returns
    -------
    scored : Bunch
        ``neighbor_proba`` (``Q``), ``scores`` (higher means more likely
        mislabelled), ``suggested`` (the encoded argmax of ``(P + Q) / 2``)
        and ``n_issues`` (:func:`estimate_n_issues` on ``(P + Q) / 2``).
    """
    Q = neighbor_label_distribution(similarities, neighbor_labels, P.shape[1])
    _, scores = combine_signals(P, Q, y, combination)
    mean = (P + Q) / 2
    return Bunch(
        neighbor_proba=Q,
        scores=scores,
        suggested=mean.argmax(axis=1),
        n_issues=estimate_n_issues(mean, y),
    )


def issues_frame(
    scored: Bunch,
    y: np.ndarray,
    classes: np.ndarray,
    neighbors: np.ndarray,
    similarities: np.ndarray,
    neighbor_labels: np.ndarray,
    rows: np.ndarray,
) -> pd.DataFrame:
    """Examples ranked by decreasing score, with their evidence.

    Parameters
    ----------
    scored : Bunch
        What :func:`score_labels` returns.
    y : ndarray of shape (n,)
        Encoded given labels of the examples.
    classes : ndarray of shape (n_classes,)
        The labels of the codes.
    neighbors : ndarray of shape (n, k)
        Rows (of the training data) of each example's neighbours.
    similarities : ndarray of shape (n, k)
        Their similarities.
    neighbor_labels : ndarray of shape (n, k)
        Their encoded labels.
    rows : ndarray of shape (n,)
        Row of each example in its data.

    Returns
    -------
    table : pandas.DataFrame
        ``index`` (row of the example), ``given_label``, ``suggested_label``,
        ``score``, ``is_issue`` (one of the first ``n_issues``),
        ``neighbors``, ``neighbor_similarities`` and ``neighbor_labels``
        (lists).
    """
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError(
            "label_issues_ is a pandas DataFrame: install pandas (`pip install "
            "pandas`), or read scores_ and the neighbor_* arrays."
        ) from error
    order = np.argsort(-scored.scores, kind="stable")
    return pd.DataFrame(
        {
            "index": rows[order],
            "given_label": classes[y[order]],
            "suggested_label": classes[scored.suggested[order]],
            "score": scored.scores[order],
            "is_issue": np.arange(len(order)) < scored.n_issues,
            "neighbors": list(neighbors[order]),
            "neighbor_similarities": list(similarities[order]),
            "neighbor_labels": list(classes[neighbor_labels[order]]),
        }
    )


@fill_doc
class LabelIssueDetector(NetworkEstimator):
    """Rank examples by how likely their label is wrong, with the evidence.

    For every example, two out-of-fold class distributions: the net's
    predicted probabilities ``P``, from a clone of the net trained without the
    example's fold, and ``Q``, the labels of the ``n_neighbors`` training
    examples (of that fold) the network finds most similar to it, weighted by
    their cosine similarity (negative similarities count zero)::

        Q_i(c) = sum_{j in N_k(i)} w_ij [y_j = c] / sum_{j in N_k(i)} w_ij

    They are combined into one score per example (``combination``); the
    suggested label is the argmax of ``(P + Q) / 2``, and the neighbours are
    the evidence: an example whose most similar training examples mostly
    carry another label is flagged with them. The number of issues is
    estimated with confident learning's calibrated joint on ``(P + Q) / 2``
    (class thresholds at their average self-confidence); the highest-scored
    ``n_issues_`` examples are the estimated set.

    Neighbours are exact below ``10 000`` training examples and searched with
    FAISS on random sketches above (``algorithm="auto"``); a FAISS search
    is exhaustive below 10^6 training examples and over HNSW graphs from
    there. Classification only: the targets must be class labels.

    Parameters
    ----------
    net : skorch classifier, FrozenEstimator or torch.nn.Module
        With ``cv`` folds, a skorch classifier (fitted or not): a clone of it
        is trained on each fold's training part. With ``cv="prefit"``, a
        trained network used as it is (a fitted skorch net, a
        ``FrozenEstimator`` around one, or a module taken as trained, whose
        outputs are logits); its probabilities are then in-sample and
        weaker evidence. With folds, the clones learn the labels in the order
        of ``classes_`` (the sorted labels) as their first outputs; more
        outputs are ignored. Prefit, the net's output ``j`` stands for label
        ``classes_[j]``: the skorch net's ``classes_`` when it names one label
        per output, else ``j`` itself, as skorch's ``predict`` reads it;
        numbers given for a net whose ``classes_`` are names (``"dog"``) are
        the outputs' numbers, the codes it was trained on.
    cv : int, cross-validation generator, iterable or "prefit", default=3
        The folds (an int means
        :class:`~sklearn.model_selection.StratifiedKFold`), or ``"prefit"``:
        no training; each example's neighbours are then the other examples.
    n_neighbors : int, default=10
        Neighbours per example in ``Q``; at most the training examples of the
        smallest training part of the folds (the same number for every
        example), or the other examples with ``cv="prefit"``, as
        ``neighbor_indices_`` then shows.
    combination : {"mean", "rank", "proba", "neighbors"}, default="mean"
        The score: ``"mean"`` is minus ``(P(y) + Q(y)) / 2``, the
        self-confidence of the averaged distribution; ``"rank"`` averages the
        ranks of the two self-confidences; ``"proba"`` and ``"neighbors"``
        use one signal alone.
    algorithm : {"auto", "exact", "faiss"}, default="auto"
        The neighbour search (see :class:`~sksim.neighbors.NetworkNeighbors`);
        ``"auto"`` is exact up to 10 000 training examples and FAISS above,
        with ``n_components`` (``"auto"`` if None) and ``search_components``
        (64 if None), as the audit searches at scale.
    %(output)s
    %(params)s
    n_components : int, "auto" or None, default=None
        The size per output of the sketches a search over sketches compares;
        ``"auto"`` lets the search choose it from ``max_memory`` (see
        :class:`~sksim.neighbors.NetworkNeighbors`). None computes exactly,
        except past 10 000 training examples with ``algorithm="auto"``.
    search_components : int or None, default=None
        The FAISS search's reduction of the sketches to principal components
        (see :class:`~sksim.neighbors.NetworkNeighbors`); unused by an exact
        search.
    candidates_per_neighbor : int, default=24
        The candidates a reduced FAISS search finds per neighbour (see
        :class:`~sksim.neighbors.NetworkNeighbors`).
    index : str, default="auto"
        The FAISS index of a FAISS search, as a string of
        ``faiss.index_factory`` (see :class:`~sksim.neighbors.NetworkNeighbors`):
        a compressed one such as ``"IVF1024,PQ32"`` holds less than the
        sketches. ``"auto"``: exhaustive (``"Flat"``) below a million
        training examples, HNSW graphs (``"HNSW32"``) from there.
    index_params : str or None, default=None
        Its search parameters, as a string of ``faiss.ParameterSpace`` (e.g.
        ``"nprobe=16"``).
    %(batch_size)s
    %(device)s
    %(rtol)s
    random_state : int, RandomState instance or None, default=None
        Seeds torch while each fold's clone is trained (each fold with its
        own seed drawn from it), and the sketches. A skorch net given a
        module instance starts every fold from that instance's weights, as
        skorch does; given the module's class, each fold draws its own.
    %(n_jobs)s
    %(max_memory)s
    %(verbose)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted labels; prefit, the label of each of the net's outputs
        (the net's ``classes_``, or the outputs' numbers when ``y`` gives
        numbers for its names).
    scores_ : ndarray of shape (n_samples,)
        Higher means more likely mislabelled.
    suggested_labels_ : ndarray of shape (n_samples,)
        The argmax of ``(P + Q) / 2``, as labels.
    n_issues_ : int
        Estimated number of label issues.
    oof_proba_ : ndarray of shape (n_samples, n_classes)
        ``P``, the out-of-fold predicted probabilities.
    neighbor_proba_ : ndarray of shape (n_samples, n_classes)
        ``Q``, the neighbour label distributions.
    neighbor_indices_ : ndarray of shape (n_samples, k)
        Rows of ``X`` of each example's neighbours, most similar first;
        ``k`` is ``n_neighbors``, or fewer where the smallest training part
        of the folds holds fewer.
    neighbor_similarities_ : ndarray of shape (n_samples, k)
        Their cosine similarities.
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        With ``cv="prefit"``: the trained network used (with ``cv`` folds,
        each fold's clone is dropped after its predictions).
    projection_seed_ : int or None
        With ``cv="prefit"``: seed of the sketches of the neighbour search
        (None without sketches).
    exact_ranking_ : bool
        Whether every neighbour search ranked the candidates of its reduced
        FAISS search by their exact similarities (see ``search_components``;
        False without reduction).
    label_issues_ : pandas.DataFrame
        Every example, ranked by decreasing score: ``index`` (row of ``X``),
        ``given_label``, ``suggested_label``, ``score``, ``is_issue`` (one of
        the first ``n_issues_``), ``neighbors`` and ``neighbor_similarities``
        (lists), ``neighbor_labels``. Needs pandas.
    n_features_in_ : int
        Size of the second axis of array inputs.

    See Also
    --------
    sksim.neighbors.NetworkNeighbors : The neighbour search.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019 (the similarity).
    .. [2] C. Northcutt, L. Jiang, I. Chuang, "Confident Learning: Estimating
       Uncertainty in Dataset Labels", JAIR 70, 2021 (the count).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sksim import LabelIssueDetector
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(30, 2) - 2, rng.randn(30, 2) + 2].astype(np.float32)
    >>> y = np.repeat([0, 1], 30)
    >>> y[[3, 40]] = [1, 0]  # two planted errors
    >>> net = NeuralNetClassifier(
    ...     torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
    ...                         torch.nn.Linear(16, 2)),
    ...     criterion=torch.nn.CrossEntropyLoss, max_epochs=30, lr=0.1,
    ...     train_split=None, verbose=0)
    >>> detector = LabelIssueDetector(net, n_neighbors=5, random_state=0)
    >>> sorted(np.argsort(-detector.fit(X, y).scores_)[:2].tolist())
    [3, 40]
    >>> detector.suggested_labels_[[3, 40]].tolist()
    [0, 1]
    """

    _parameter_constraints = constraints(
        *NEIGHBOR_PARAMETERS,
        cv=["cv_object", StrOptions({"prefit"})],
        n_neighbors=[Interval(Integral, 1, None, closed="left")],
        combination=[StrOptions(set(COMBINATIONS))],
        algorithm=[StrOptions({"auto", "exact", "faiss"})],
        search_components=[Interval(Integral, 1, None, closed="left"), None],
        candidates_per_neighbor=[Interval(Integral, 1, None, closed="left")],
        index=[str],
        index_params=[str, None],
        n_components=N_COMPONENTS,
    )

    def __init__(
        self,
        net: NetLike,
        *,
        cv: int | BaseCrossValidator | Iterable | str = 3,
        n_neighbors: int = 10,
        combination: str = "mean",
        algorithm: str = "auto",
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        n_components: int | str | None = None,
        search_components: int | None = None,
        candidates_per_neighbor: int = CANDIDATES_PER_NEIGHBOR,
        index: str = "auto",
        index_params: str | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        verbose: int = 0,
    ) -> None:
        self.net = net
        self.cv = cv
        self.n_neighbors = n_neighbors
        self.combination = combination
        self.algorithm = algorithm
        self.output = output
        self.params = params
        self.n_components = n_components
        self.search_components = search_components
        self.candidates_per_neighbor = candidates_per_neighbor
        self.index = index
        self.index_params = index_params
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_memory = max_memory
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    @forget_failed_fit
    def fit(
        self,
        X: NetInput,
        y: ArrayLike | None = None,
        groups: ArrayLike | None = None,
    ) -> Self:
        """Score every example's label.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            Inputs; a map-style torch ``Dataset`` is read batch by batch.
        y : array-like of shape (n_samples,), default=None
            The given class labels. Required, unless ``X`` is a Dataset of
            ``(x, y)`` items: its labels are then read from the items.
        groups : array-like of shape (n_samples,), default=None
            The group of each example, for a group splitter ``cv`` such as
            :class:`~sklearn.model_selection.GroupKFold` (``cv="prefit"`` has
            none).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        if self.algorithm == "faiss":
            check_sketched(self.n_components)
        if skorch_task(self.net) == "regression":
            raise ValueError(
                "LabelIssueDetector looks for wrong class labels and needs a "
                f"classifier; {type(_unwrap(self.net)).__name__} is a regressor."
            )
        if self.cv == "prefit":
            if groups is not None:
                raise ValueError('groups are for a splitter; cv="prefit" has none.')
            if is_unfitted_skorch(self.net):
                raise ValueError(
                    'cv="prefit" uses the net as it is, but this skorch net is not '
                    "fitted: fit it first, or let cv folds train clones of it. "
                    f"{CLONE_HINT}"
                )
            X = self._fit_network(X)
        else:
            self._forget_fit()
            if not isinstance(_unwrap(self.net), NeuralNet):
                raise TypeError(
                    "cv folds train a clone of the net on each fold, which needs a "
                    f"skorch classifier; got {type(self.net).__name__}. Pass "
                    'cv="prefit" to use a trained network as it is.'
                )
            X_net = training_input(self.net, X)
            X = check_net_input(X, self, reset=True)
        y = self._check_targets(X, given_or_item_labels(X, y))
        if self.cv == "prefit":
            if n_samples(X) < 2:
                raise ValueError(
                    'cv="prefit" compares each example with the other examples: '
                    f"got {n_samples(X)} sample; pass at least 2."
                )
            X = labelled(X, y)  # skorch reads a dataset's items as (x, y)
            probabilities = self._net_probabilities(self.net_, X)
            y = self._output_targets(y, probabilities.shape[1])
            P, similarities, indices, rankings = self._prefit_signals(
                X, y, probabilities
            )
        else:
            y = self._encode_targets(y)
            X = labelled(lazy_rows(X), y)  # folds of a mapped file stay on disk
            P, similarities, indices, rankings = self._cross_validated_signals(
                X, y, groups, X_net
            )
        self.exact_ranking_ = all(rankings)
        scored = score_labels(P, similarities, y[indices], y, self.combination)
        self.oof_proba_ = P
        self.neighbor_proba_ = scored.neighbor_proba
        self.neighbor_indices_ = indices
        self.neighbor_similarities_ = similarities
        self.scores_ = scored.scores
        self.suggested_labels_ = self.classes_[scored.suggested]
        self.n_issues_ = scored.n_issues
        self._y, self._suggested = y, scored.suggested
        return self

    def _check_targets(self, X, y):
        """``y`` as a 1-D array of class labels, one per sample of ``X``."""
        if y is None:
            raise ValueError(
                "LabelIssueDetector requires y to be passed, but the target y is "
                "None: pass the given labels, or a Dataset of (x, y) items."
                + labels_key_hint(X)
            )
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1 and len(y) == n_samples(X):
            raise ValueError(
                f"LabelIssueDetector takes one class label per sample, y of shape "
                f"(n_samples,); got y of shape {y.shape}. For one-hot labels, pass "
                "Y.argmax(axis=1)."
            )
        y = column_or_1d(y, warn=True)
        if len(y) != n_samples(X):
            raise ValueError(
                f"X and y have different numbers of samples: {n_samples(X)} and "
                f"{len(y)}."
            )
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind not in ("binary", "multiclass"):
            raise ValueError(
                "LabelIssueDetector looks for wrong class labels and needs "
                f"classification targets; got a {kind} target. Regression targets "
                "have no label issues in this sense."
            )
        return y

    def _encode_targets(self, y):
        """``y`` as ``0 .. n_classes - 1``, with ``classes_`` the sorted labels."""
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(
                "LabelIssueDetector needs at least two classes; y has one class "
                f"({self.classes_.tolist()[0]!r})."
            )
        return encoder.transform(y).astype(np.int64)

    def _output_targets(self, y, n_outputs):
        """``y`` as the numbers of the trained net's outputs, with ``classes_`` set.

        ``classes_`` is the net's ``classes_`` when it names one label per
        output (a skorch classifier), else the outputs' numbers ``0 ..
        n_outputs - 1``, as skorch's ``predict`` reads them (label ``j`` is
        output ``j``). Numbers given for a net whose ``classes_`` are names
        (not numbers) are the outputs' numbers, the codes it was trained on,
        as the audit reads them.
        """
        if n_outputs < 2:
            raise ValueError(
                f"The net gives {n_outputs} class probability per example: label "
                "issues need a classifier with one output per class."
            )
        numbers = np.arange(n_outputs)
        classes = getattr(_unwrap(self.net_), "classes_", None)
        named = classes is not None and len(classes) == n_outputs
        classes = np.asarray(classes) if named else numbers
        labels, inverse = np.unique(y, return_inverse=True)
        names = classes.dtype.kind not in "biuf"
        if names and labels.dtype.kind in "biuf":
            classes = numbers  # the codes of a net whose classes_ are names
        outputs = {label: j for j, label in enumerate(classes.tolist())}
        unknown = [label for label in labels.tolist() if label not in outputs]
        if unknown:
            accepted = (
                f"the outputs' numbers 0 to {n_outputs - 1} (output j for label j, "
                "as skorch's predict reads them)"
            )
            if named:
                given = np.asarray(_unwrap(self.net_).classes_)[:10].tolist()
                accepted = f"its classes_ {given}" + (
                    f", or {accepted}" if names else ""
                )
            raise ValueError(
                f'cv="prefit" compares each label with the trained net\'s output '
                f"for it, but y holds labels {unknown[:10]} that name none of its "
                f"{n_outputs} outputs: give y as {accepted}."
            )
        self.classes_ = classes
        return np.array([outputs[label] for label in labels.tolist()])[inverse]

    def _prefit_signals(self, X, y, probabilities):
        n_neighbors = self._n_neighbors(n_samples(X) - 1)
        # the labels given: a dataset's would be read in a pass over its items
        search = self._search(self.net_, X, n_neighbors).fit(X, y)
        P, similarities, indices = self._signals(
            self.net_, search, None, n_neighbors, len(self.classes_), probabilities
        )
        return P, similarities, indices, [search.exact_ranking_]

    def _cross_validated_signals(self, X, y, groups, X_net=None):
        """Out-of-fold signals of every example.

        Each fold's clone trains on the rows of ``X_net`` (``X`` with the pairs
        a regularised net trains on) when given, else on those of ``X``.
        """
        splits = cv_partition(self.cv, X, y, groups)
        seeds = check_random_state(self.random_state).randint(
            2**31 - 1, size=len(splits)
        )
        n = n_samples(X)
        n_neighbors = self._n_neighbors(min(len(train) for train, _ in splits))
        P = np.full((n, len(self.classes_)), np.nan)
        similarities = np.full((n, n_neighbors), np.nan)
        indices = np.full((n, n_neighbors), -1, dtype=np.intp)
        rankings = []
        for (train, test), seed in zip(splits, seeds, strict=True):
            X_train = take(X, train)
            seed = None if self.random_state is None else int(seed)
            X_fit = X_train if X_net is None else take(X_net, train)
            net = fit_net(untrained_clone(self.net, seed), X_fit, y[train], seed)
            search = self._search(net, X_train, n_neighbors).fit(X_train, y[train])
            P[test], similarities[test], found = self._signals(
                net, search, take(X, test), n_neighbors, len(self.classes_)
            )
            indices[test] = train[found]
            rankings.append(search.exact_ranking_)
        return P, similarities, indices, rankings

    def _signals(self, net, search, X, n_neighbors, n_classes, probabilities=None):
        """Both signals of the examples ``X``, from a net and its fitted search.

        The net's class probabilities of ``X`` (``probabilities`` when they
        are already computed, else computed here) and the similarities and
        rows of their ``n_neighbors`` most similar reference examples of
        ``search``, a :class:`NetworkNeighbors` of ``net`` fitted on the
        examples it was trained on. ``X=None`` scores the reference examples
        themselves, each excluded from its own neighbours (the audit's
        label-issue analysis calls it on its folds).
        """
        if probabilities is None:
            scored = search.X_fit_ if X is None else X
            probabilities = self._net_probabilities(net, scored)
        P = _class_probabilities(probabilities, n_classes)
        similarities, found = search.most_similar(X, n_neighbors)
        return P, similarities, found

    def _n_neighbors(self, available):
        """The neighbours per example, at most the ``available`` references."""
        return min(self.n_neighbors, available)

    def _search(self, net, X_reference, n_neighbors):
        """The unfitted :class:`NetworkNeighbors` of ``net`` for ``X_reference``.

        Exact up to :data:`EXACT_MAX_SAMPLES` reference examples with
        ``algorithm="auto"``; past it, FAISS over sketches (``"auto"`` wide
        and reduced to :data:`FAISS_SEARCH_COMPONENTS` unless set). A FAISS
        search uses ``index``, that of :func:`~sksim.neighbors.automatic_index`
        if ``"auto"``.
        """
        algorithm, n_components = self.algorithm, self.n_components
        search_components = self.search_components
        if algorithm == "auto":
            algorithm = "exact"
            if n_samples(X_reference) > EXACT_MAX_SAMPLES:
                algorithm = "faiss"
                n_components = n_components or "auto"
                search_components = search_components or FAISS_SEARCH_COMPONENTS
        return NetworkNeighbors(
            net,
            n_neighbors=n_neighbors,
            algorithm=algorithm,
            output=self.output,
            params=self.params,
            n_components=n_components,
            search_components=search_components if algorithm == "faiss" else None,
            candidates_per_neighbor=self.candidates_per_neighbor,
            index=(
                automatic_index(n_samples(X_reference))
                if self.index == "auto"
                else self.index
            ),
            index_params=self.index_params,
            batch_size=self.batch_size,
            device=self.device,
            rtol=self.rtol,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            max_memory=self.max_memory,
            verbose=self.verbose,
        )

    def _net_probabilities(self, net, X):
        """The net's ``predict_proba``, or the softmax of a module's logits.

        A module's logits are its outputs as ``output`` selects them, as for
        the similarities. The modes of the module's layers (training or
        evaluation) are restored after.
        """
        if hasattr(net, "predict_proba"):
            return predicted_probabilities(net, X)
        engine = make_engine(
            net, self.output, None, self.batch_size, self.device, 0, self.max_memory
        )
        return torch.softmax(engine.outputs(X).double(), dim=1).numpy()

    @property
    def label_issues_(self) -> pd.DataFrame:
        """Every example ranked by decreasing score, with its evidence."""
        check_is_fitted(self, "scores_")
        scored = Bunch(
            scores=self.scores_,
            suggested=self._suggested,
            n_issues=self.n_issues_,
        )
        indices = self.neighbor_indices_
        return issues_frame(
            scored,
            self._y,
            self.classes_,
            indices,
            self.neighbor_similarities_,
            self._y[indices],
            np.arange(len(self._y)),
        )


def _class_probabilities(P, n_classes=None):
    """The first ``n_classes`` columns of a net's probabilities, renormalised.

    None takes them all.
    """
    n_classes = P.shape[-1] if n_classes is None else n_classes
    if P.ndim != 2 or P.shape[1] < n_classes:
        raise ValueError(
            f"The net gives {P.shape[-1] if P.ndim == 2 else 1} class "
            f"probabilities per example, but y has {n_classes} classes: its "
            "output layer needs one output per class."
        )
    P = P[:, :n_classes]
    return P / P.sum(axis=1, keepdims=True)
