"""Audit of a network from its own perspective: cross-validated, or prefit."""

from __future__ import annotations

import functools
import numbers
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.metrics import r2_score
from sklearn.model_selection import BaseCrossValidator, check_cv
from sklearn.utils.multiclass import type_of_target
from skorch import NeuralNet
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .._engine.inputs import DictRows, is_dataset, lazy_rows, n_samples, take
from .._net import (
    _unwrap,
    fit_net,
    resolve_module,
    skorch_task,
    training_input,
    untrained_clone,
)
from .._typing import NetInput, NetLike
from .._validation import (
    check_net_input,
    check_positive_int,
    cv_partition,
    given_or_item_labels,
    labelled,
    labels_key_hint,
    sample_shape,
)
from ..neighbors import QUERY_PARAMS, NetworkNeighbors
from ._examples import worth_a_look
from ._tables import frame, import_pandas, spread
from .analyses import ANALYSES, REGISTRY
from .cache import AuditCache
from .prefit import (
    WHOLE_NUMBER_TARGETS,
    check_finite_targets,
    check_predicted_classes,
    check_prefit_net,
    class_outputs,
    predictions,
    regression_targets,
    target_task,
)


class AuditAnalysisFailedWarning(UserWarning):
    """An analysis of :func:`audit` raised on a fold and was left out there."""


@dataclass
class AuditResult:
    """Tables, skipped analyses and example images of an :func:`audit`.

    Every table is a tidy :class:`pandas.DataFrame`; per-fold tables carry a
    ``fold`` column, and their ``*_summary`` counterparts aggregate over
    folds (mean, standard deviation, min and max).

    Attributes
    ----------
    tables : dict of str to pandas.DataFrame
        ``folds`` (accuracy and error, or ``r2`` and ``rmse`` for a
        regression, mean log-density per fold), ``summary`` (every per-fold
        metric aggregated), ``samples`` (one row per held-out example: label
        (the target, for a regression), prediction, correctness (the squared
        error, for a regression), neighbour count, log-density, density bin,
        most similar training example), ``density_bins`` and
        ``density_bins_summary`` (error rate, or mean squared error, by density
        quantile bin), ``neighbors`` (the ``k`` most similar training examples
        of each held-out example), ``label_issues`` (every example ranked by
        how likely its label is wrong: ``index``, ``fold``, ``given_label``,
        ``suggested_label``, ``score``, ``proba_given_label`` and
        ``neighbors_given_label`` (the two signals' probability of the given
        label), ``is_issue``, and ``neighbors`` with their
        ``neighbor_similarities`` and ``neighbor_labels``; rows of ``X``,
        training rows when prefit), ``denoising``, ``sensitivity`` and
        ``sensitivity_summary``, ``class_fitting`` and ``class_fitting_summary``
        (for the analyses that ran). Indices of held-out examples (``index``)
        and of training examples (``train_index``, ``nearest_train_index``)
        are rows of ``X``; with ``cv="prefit"``, held-out indices are rows of
        ``X_test``.
    skipped : dict of str to str
        Analyses not run, with the reason.
    failed : dict of str to dict
        Analyses that raised (with ``errors="record"``): for each, the fold
        number mapped to ``"ExceptionType: message"``. An analysis that failed
        on every fold has no tables.
    metadata : dict
        The data (``n_samples``, ``input_shape``, ``n_classes``), ``task``
        (``"classification"`` or ``"regression"``), the network (``net``, in
        words), the cross-validation (``cv``: the splitter's repr,
        ``"prefit"`` for a prefit audit; ``cv_words``: what it does, in
        words; ``n_folds``), ``analyses`` (those that ran), ``n_neighbors``,
        ``random_state``,
        ``scale_threshold`` and ``methods`` (the method each analysis used,
        and why, in words), timings (``seconds``: ``fit`` for the training,
        ``predict`` instead when prefit, then each analysis;
        ``total_seconds``), ``versions`` (of sksim, Python, torch, NumPy,
        scikit-learn and skorch), and
        ``warnings`` raised by the analyses: one dict per kind of warning
        (its text with the numbers masked), with ``times`` raised,
        ``samples`` (the total of the samples they concern, when they say;
        else None) and ``analyses`` (per analysis, its ``times`` and
        ``samples``).
    gallery : list of dict
        A few held-out examples (``kind``: lowest density, misclassified or
        with the largest errors, typical, chosen diverse in fold, class and
        confusion pair) with their nearest training examples: ``kind``,
        ``fold``, ``index``, ``label``, ``prediction``, ``log_density``,
        ``neighbors`` (training indices), ``neighbor_labels``,
        ``similarities``, and ``image`` / ``neighbor_images`` for image-like
        inputs (None otherwise). Then the top suspected label issues
        (``kind="label issue"``, with ``suggested``, ``score`` and
        ``issue``: whether it is among the estimated issues).
    examples : list of dict
        Examples worth a look, chosen from the tables of several analyses:
        the most isolated (``kind="isolated"``: lowest log-density, with
        ``neighbor_count``) and the held-out
        examples with the least support (``"least support"``: ``support``,
        the similarity-weighted share of their neighbours carrying the
        prediction, with the neighbours as in ``gallery``); ``image`` for
        image-like inputs, else ``features``, their most atypical features
        in words.
    """

    tables: dict
    skipped: dict
    metadata: dict
    gallery: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    def __getitem__(self, name):
        return self.tables[name]

    def to_html(self, path: str | os.PathLike) -> Path:
        """Write the report to ``path``, one self-contained HTML file.

        Figures are embedded as PNG data URIs.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.

        Returns
        -------
        path : pathlib.Path
        """
        from .report import write_html

        return write_html(self, path)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write tables, skipped and failed analyses and metadata to ``path``.

        Strict JSON: NaN and infinities become null.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.

        Returns
        -------
        path : pathlib.Path
        """
        from .report import write_json

        return write_json(self, path)


@dataclass
class _Data:
    """The audited data and what it holds.

    ``X, y`` is where training indices point, ``X_test, y_test`` where
    held-out indices point: the same arrays in a cross-validated audit, the
    given train and test splits in a prefit one. ``X_net``: ``X`` with the
    pairs a regularised net trains on, which the folds' nets train on (None
    without pairs).
    """

    X: object
    y: np.ndarray
    X_test: object
    y_test: np.ndarray
    task: str
    classes: np.ndarray | None
    X_net: object = None
    class_names: list[str] | None = None

    def arrays(self) -> tuple[ArrayLike, ...]:
        """The arrays, once each, for the cache's hash."""
        pairs = () if self.X_net is None else (self.X_net,)
        if self.X_test is self.X:
            return self.X, self.y, *pairs
        return self.X, self.y, self.X_test, self.y_test


def _check_analyses(analyses) -> tuple[str, ...]:
    """``analyses`` as a tuple of registered names, or raise saying what to pass."""
    if isinstance(analyses, str) or not isinstance(analyses, Iterable):
        raise TypeError(
            f"analyses must be a sequence of names among {ANALYSES}, such as "
            f"({ANALYSES[0]!r},); got {analyses!r}."
        )
    analyses = tuple(analyses)
    unknown = [a for a in analyses if not isinstance(a, str) or a not in REGISTRY]
    if unknown:
        raise ValueError(f"Unknown analyses {unknown}; choose among {ANALYSES}.")
    return analyses


def _check_options(n_neighbors, options, errors):
    check_positive_int(n_neighbors, "n_neighbors")
    unknown = [a for a in options if a not in REGISTRY]
    if unknown:
        raise ValueError(f"options for unknown analyses {unknown}; use {ANALYSES}.")
    for name, given in options.items():
        REGISTRY[name].check_options(given)
    if errors not in ("record", "raise"):
        raise ValueError(f'errors must be "record" or "raise"; got {errors!r}.')


def _check_inputs(X, y, names=("X", "y")):
    """Array, dict or dataset inputs and one target per sample of them.

    A dict of arrays is read as a dataset of its rows. A dataset's targets
    are those of its ``(x, y)`` items when ``y`` is None; it is returned with
    its targets as items ``(x, y)``, as skorch reads one.
    Targets of shape ``(n, 1)`` become ``(n,)``.
    """
    X = check_net_input(X, input_name=names[0])
    if isinstance(X, dict):  # read as skorch reads it: by keyword, row by row
        X = DictRows(X)
    y = given_or_item_labels(X, y)
    if y is None:
        raise ValueError(
            f"{names[1]} is required: pass the targets of {names[0]}, or a "
            "dataset of (x, y) items." + labels_key_hint(X)
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # a column, or items' labels [y_i]
        y = y[:, 0]
    if y.dtype == bool:  # classes False and True, as outputs 0 and 1
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        check_finite_targets(y, names[1])
    if len(y) != n_samples(X):
        raise ValueError(
            f"{names[0]} has {n_samples(X)} samples but {names[1]} has {len(y)}."
        )
    return labelled(lazy_rows(X), y), y


_REGRESSION_BY_PREFIT = 'A trained regression network is audited with cv="prefit".'


def _check_labels(*labels, regression: str = _REGRESSION_BY_PREFIT):
    """The sorted classes of class labels ``labels`` (at least two of them).

    Label ``j`` is the network's output ``j``: the labels are integers from 0.
    ``regression`` says how targets of another kind are audited.
    """
    for y in labels:
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise ValueError(
                "audit audits classifiers: y must hold class labels; got a "
                f"{kind} target. {regression}"
            )
    classes = np.unique(np.concatenate(labels))
    integers = classes.dtype.kind in "iu" or (
        classes.dtype.kind == "f" and np.array_equal(classes, np.round(classes))
    )
    if not integers or classes[0] < 0:
        raise ValueError(
            "audit reads class j from the network's output j (as skorch's "
            "predict does): y must hold integer labels from 0 to n_classes - 1; "
            f"got {classes[:10].tolist()}. Encode them as the network's outputs "
            "(scikit-learn's LabelEncoder numbers them in sorted order: right "
            "only if the outputs follow it), or audit a skorch classifier whose "
            "classes= names its outputs, and read the tables through those "
            "names."
        )
    if len(classes) < 2:
        raise ValueError(
            f"y holds a single class ({classes[0]}): the audit "
            "analyses a classifier, and its analyses need at least two classes."
        )
    return classes


def _cv_data(net, X, y, X_test, y_test):
    """The data of a cross-validated audit, checked."""
    if not isinstance(_unwrap(net), NeuralNet):
        raise TypeError(
            "audit trains a fresh network on every training fold: pass a skorch "
            f"net (fitted or not, it is cloned); got {type(net).__name__}. A "
            'trained network is audited as it is with cv="prefit".'
        )
    if skorch_task(net) == "regression":
        raise ValueError(
            f"audit cross-validates classifiers; {type(_unwrap(net)).__name__} is "
            'a regressor. A trained regression network is audited with cv="prefit".'
        )
    if X_test is not None or y_test is not None:
        raise ValueError(
            'X_test and y_test are the test split of cv="prefit"; a '
            "cross-validated audit holds out parts of X itself."
        )
    X_net = training_input(net, X)
    X, y = _check_inputs(X, y)
    (y,), names = _net_class_codes(net, y)
    X = labelled(X, y)  # a dataset's items take the codes as labels
    classes = _check_labels(y)
    return _Data(X, y, X, y, "classification", classes, X_net, class_names=names)


def _prefit_data(net, X, y, X_test, y_test):
    """The data of a prefit audit, checked, and its task."""
    check_prefit_net(net)
    if X_test is None or (y_test is None and not is_dataset(X_test)):
        raise ValueError(
            'cv="prefit" audits the trained network on a given split: pass '
            "X_test and y_test, or a dataset of (x, y) items as X_test (X and y "
            "are the data it was trained on)."
        )
    X, y = _check_inputs(X, y)
    X_test, y_test = _check_inputs(X_test, y_test, ("X_test", "y_test"))
    if sample_shape(X) != sample_shape(X_test):
        raise ValueError(
            f"X_test holds samples of shape {sample_shape(X_test)} and X of "
            f"shape {sample_shape(X)} (their first items, for datasets); they "
            "must be alike: the same features, or sequences padded to one length "
            "(sksim reads a dataset's items as they are, without a skorch net's "
            "collate_fn)."
        )
    _check_orderable(y, y_test)
    task = target_task(net, y)
    if task == "regression":
        y, y_test = regression_targets(y, "y"), regression_targets(y_test, "y_test")
        return _Data(X, y, X_test, y_test, task, None)
    (y, y_test), names = _net_class_codes(net, y, y_test)
    try:
        classes = _check_labels(
            y,
            y_test,
            regression=(
                f"{type(_unwrap(net)).__name__} is a classifier: a trained "
                "regression network is audited as a skorch NeuralNetRegressor "
                "or as its module."
            ),
        )
    except ValueError as error:
        values = np.unique(np.concatenate([y, y_test]))
        whole = values.dtype.kind in "iuf" and np.array_equal(values, values.round())
        if skorch_task(net) is not None or not whole or len(values) < 3:
            raise  # not counts that a regression network could be taken for
        raise ValueError(f"{error} {WHOLE_NUMBER_TARGETS}") from None
    return _Data(X, y, X_test, y_test, task, classes, class_names=names)


def _check_orderable(*labels: np.ndarray) -> None:
    """Raise a ValueError if ``labels`` of object dtype mix names and numbers.

    NumPy orders neither among the other (a TypeError in every sort); splits
    of other dtypes are compared apart.
    """
    objects = [y for y in map(np.asarray, labels) if y.dtype == object]
    values = [v for y in objects for v in y.ravel().tolist()]
    kinds = {isinstance(v, str | bytes) for v in values}
    if len(kinds) > 1:
        names = sorted({type(v).__name__ for v in values})
        raise ValueError(
            f"The labels mix values of the types {names}: give every label as a "
            "name (str) or every label as a number."
        )


def _net_class_codes(net: NetLike, *labels: np.ndarray) -> tuple[list, list | None]:
    """The ``labels`` as output numbers, and the class names, where the net names them.

    Labels other than numbers (class names) that a skorch classifier's
    ``classes_`` holds, one per output (``classes=["dog", "cat", "bird"]``),
    are the numbers of their outputs there, as skorch's ``predict`` reads
    them; numbers are outputs' numbers already. Others are left as they are,
    with no names.
    """
    values = np.unique(np.concatenate(labels))
    classes = getattr(_unwrap(net), "classes_", None)
    if values.dtype.kind in "biuf" or classes is None:
        return list(labels), None
    outputs = {label: j for j, label in enumerate(np.asarray(classes).tolist())}
    unknown = sorted(set(values.tolist()) - outputs.keys(), key=str)
    if unknown:
        raise ValueError(
            f"The labels {unknown[:5]} are not among the network's classes_ "
            f"{list(outputs)[:10]}, which name the network's outputs (output j "
            "is classes_[j]): every label must be one of them."
        )
    codes = [np.array([outputs[label] for label in y.tolist()]) for y in labels]
    return codes, [str(label) for label in outputs]


def _n_classes(data: _Data, outputs: set[int]) -> int | None:
    """The classes the networks tell apart: their outputs, one per class.

    The labels may hold fewer (a prefit network's classes absent from them).
    """
    if data.classes is None:
        return None
    return int(max([len(data.classes), *outputs]))


def _shape_list(shape: tuple | dict) -> list | dict:
    """A sample's shape as JSON holds it: a list, or a list per dict input."""
    if isinstance(shape, dict):
        return {key: list(value) for key, value in shape.items()}
    return list(shape)


def _built_module(net: NetLike, prefit: bool) -> torch.nn.Module | None:
    """The module the folds analyse, built without training, for checks.

    The trained module when prefit; otherwise the module given as an
    instance, that of a fitted net, or one built on the CPU by an unfitted
    clone, its parameters drawn under a forked random state (the caller's
    stays as it is). None when the clone cannot be built before its training
    (module arguments its ``fit`` sets): each fold's analyses check it then.
    """
    if prefit:
        return resolve_module(net)
    net = _unwrap(net)
    if isinstance(net.module, torch.nn.Module):
        return net.module
    if getattr(net, "initialized_", False):
        return net.module_
    with torch.random.fork_rng(devices=[]):
        try:
            return clone(net).set_params(device="cpu").initialize().module_
        except Exception:  # whatever the user's module raises without fit
            return None


def _skip_reason(analysis, data):
    """Why ``analysis`` does not apply to ``data`` (None when it does)."""
    if data.task not in analysis.tasks:
        return (
            f"the {analysis.name} analysis needs class labels, and this audit is "
            "of a regression network."
        )
    return analysis.skip_reason(data.X)


def _part(X: NetInput, rows: np.ndarray) -> NetInput:
    """Rows ``rows`` of ``X``; all of them in order are ``X`` itself, not a copy."""
    return X if np.array_equal(rows, np.arange(n_samples(X))) else take(X, rows)


class _Fold:
    """One fold: its split, the net trained on it and the audit's arguments.

    The attributes are those :meth:`Analysis.run
    <sksim.audit.analyses.base.Analysis.run>` documents.
    """

    def __init__(
        self,
        data: _Data,
        train: np.ndarray,
        test: np.ndarray,
        fold: int,
        *,
        n_neighbors: int,
        layers: Sequence[str] | None,
        options: Mapping[str, Mapping[str, Any]],
        scale_threshold: int | None,
        train_sizes: Sequence[int],
        random_state: int | None,
    ) -> None:
        self.train, self.test, self.fold = train, test, fold
        self.X_train, self.y_train = _part(data.X, train), data.y[train]
        self._X_fit = self.X_train if data.X_net is None else take(data.X_net, train)
        self.X_test, self.y_test = _part(data.X_test, test), data.y_test[test]
        self.task, self.classes = data.task, data.classes
        self.n_neighbors, self.layers = n_neighbors, layers
        self.options, self.random_state = options, random_state
        self.scale_threshold, self.train_sizes = scale_threshold, tuple(train_sizes)
        self.fit_seconds = None
        self.n_class_outputs = None  # a classifier's, once it predicted
        self.prefit = False
        self._search = None

    @property
    def scale_size(self) -> int:
        """The largest training part of the audit's folds."""
        return max(self.train_sizes)

    def fit(self, net: NetLike) -> None:
        """Train a clone of ``net`` on the training part, predict the held-out one."""
        start = time.perf_counter()
        fresh = untrained_clone(net, self.random_state)
        self.net = fit_net(fresh, self._X_fit, self.y_train, self.random_state)
        self.fit_seconds = time.perf_counter() - start
        self._predict()

    def use(self, net: NetLike) -> None:
        """Take the trained ``net`` as it is and predict the held-out part."""
        self.net, self.prefit = net, True
        self._predict()

    def _predict(self) -> None:
        """Predictions (and class probabilities) of the held-out part.

        Every class must have its output among the probabilities.
        """
        self.prediction, self.probabilities = predictions(
            self.net, self.X_test, self.task
        )
        if self.task != "classification":
            return
        n_outputs = class_outputs(self.net, self.X_test, self.probabilities)
        if self.classes[-1] >= n_outputs:
            where = (
                "y_test"
                if self.prefit and self.classes[-1] not in self.y_train
                else "y"
            )
            raise ValueError(
                f"{where} holds the label {self.classes[-1]}, but the network gives "
                f"{n_outputs} class outputs: the audit reads class j from "
                "output j, so it needs one output per class."
            )
        self.prediction = check_predicted_classes(self.prediction, n_outputs)
        self.n_class_outputs = n_outputs

    def fitted_search(
        self, search: NetworkNeighbors, X_val: NetInput | None = None
    ) -> NetworkNeighbors:
        """``search`` fitted on the training part, or the equal one the fold kept.

        The fold keeps the last search it fitted until :meth:`release_search`.
        Asked again for a search with the same parameters (those of its
        queries aside, :data:`~sksim.neighbors.QUERY_PARAMS`, which it takes
        from ``search``), it returns the kept one, so that the neighbours and
        label-issue analyses sketch the training part once; with ``X_val``, only if the
        kept one measured its recall on as many held-out queries (the same:
        both analyses draw them by ``recall_rows`` with the fold's seed),
        on which ``_sample_recall`` measures the new queries.
        """
        kept = self._search
        if (
            kept is not None
            and _same_search(kept, search)
            and (X_val is None or kept._n_recall_queries == n_samples(X_val))
        ):
            wanted = search.get_params(deep=False)
            return kept.set_params(**{name: wanted[name] for name in QUERY_PARAMS})
        self._search = None  # freed before the new one is fitted
        self._search = search.fit(self.X_train, X_val=X_val)
        return self._search

    def release_search(self) -> None:
        """Free the kept search (its sketches and Jacobians)."""
        self._search = None

    @property
    def correct(self) -> np.ndarray:
        return self.prediction == self.y_test

    @property
    def error(self) -> np.ndarray:
        """Per held-out example: 1.0 if misclassified, or the squared error."""
        if self.task == "regression":
            return (self.prediction - self.y_test) ** 2
        return (~self.correct).astype(float)

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs: the trained net and its predictions."""
        return dict(
            net=self.net,
            prediction=self.prediction,
            probabilities=self.probabilities,
            n_class_outputs=self.n_class_outputs,
            fit_seconds=self.fit_seconds,
        )

    def restore(self, state: Mapping[str, Any]) -> None:
        self.net = state["net"]
        self.prediction = state["prediction"]
        self.probabilities = state["probabilities"]
        self.n_class_outputs = state["n_class_outputs"]
        self.fit_seconds = state["fit_seconds"]

    def scores(self) -> dict[str, float]:
        """Accuracy and error rate, or R^2 and root mean squared error."""
        if self.task == "regression":
            return dict(
                r2=float(r2_score(self.y_test, self.prediction)),
                rmse=float(np.sqrt(self.error.mean())),
            )
        accuracy = float(self.correct.mean())
        return dict(accuracy=accuracy, error=float(1 - accuracy))

    def row(self) -> dict[str, Any]:
        """The fold's row of the ``folds`` table, before the analyses."""
        row = dict(fold=self.fold, n_train=len(self.train), n_test=len(self.test))
        row.update(self.scores())
        if self.fit_seconds is not None:
            row["fit_seconds"] = self.fit_seconds
        return row

    def samples(self) -> dict[str, Any]:
        """The fold's columns of the ``samples`` table, before the analyses."""
        columns = dict(
            fold=self.fold,
            index=self.test,
            label=self.y_test,
            prediction=self.prediction,
        )
        if self.task == "regression":
            columns["squared_error"] = self.error
        else:
            columns["correct"] = self.correct
        return columns


def audit(
    net: NetLike,
    X: ArrayLike | Dataset,
    y: ArrayLike | None = None,
    cv: int | BaseCrossValidator | Iterable | str = 5,
    analyses: Sequence[str] = ANALYSES,
    *,
    X_test: ArrayLike | Dataset | None = None,
    y_test: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    n_neighbors: int = 5,
    layers: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    random_state: int | None = 0,
    errors: str = "record",
    verbose: int = 0,
    cache: str | os.PathLike | None = None,
    scale_threshold: int | None = 20_000,
) -> AuditResult:
    """Audit a classifier, or a trained network, from the network's perspective.

    For each fold of a scikit-learn cross-validation splitter, a clone of
    ``net`` is trained on the training part; on the held-out part the audit
    computes the accuracy and, per analysis, the quantities below. With
    ``cv="prefit"``, the trained ``net`` is audited as it is on the split
    given, ``X, y`` (the data it was trained on) and ``X_test, y_test``: one
    fold, no training, its weights untouched.

    * ``"density"``: the network-perspective density of each held-out example
      relative to the training fold (by default the hard neighbour count of
      :class:`~sksim.GradientDensityEstimator` [1]_), and the error rate by
      density quantile bin (deciles when every bin holds at least 10
      examples): do the errors sit where the network sees few similar
      training examples?
    * ``"neighbors"``: the ``n_neighbors`` most similar training examples of
      each held-out example (:class:`~sksim.NetworkNeighbors`) and whether
      they share its label.
    * ``"label_issues"``: suspected label errors, the two signals of
      :class:`~sksim.LabelIssueDetector` on the audit's own folds (each fold
      net's out-of-fold probabilities and the labels of the example's
      ``n_neighbors=10`` most similar training examples), ranked in the
      ``label_issues`` table; with ``cv="prefit"``, the detector's prefit path
      on the training data. Classification only.
    * ``"denoising"``: the self-denoising summary of the net on its training
      fold (:class:`~sksim.SelfDenoisingAnalysis` on one-hot labels and the
      first ``d - 1`` softmax probabilities, ``weights="cosine_pos_pow"``
      [1]_), on at most ``max_samples=500`` training examples drawn at
      random, each against the whole training fold (its cost grows as
      ``max_samples N``): effective number of neighbours, estimated label
      noise, predicted error.
    * ``"sensitivity"``: layer-wise relative sensitivity to diffeomorphisms
      ``D``, ``G`` and ``R = D / G`` on the held-out images, trained and at
      initialisation (``sksim.sensitivity.relative_sensitivity`` [2]_);
      square images ``(n, C, H, W)`` only.
    * ``"class_fitting"``: class-conditional densities of the representations
      at ``layers`` fitted on the training fold
      (:func:`~sksim.representations.class_fitting_report` [3]_), with the
      held-out examples' own-class log-densities per class.

    **Regression** (``cv="prefit"`` only): a skorch regressor, or a network
    whose targets ``y`` are continuous, is audited with ``r2`` and ``rmse``
    instead of accuracy and error; density bins tabulate the mean squared
    error, neighbours the mean absolute difference of their targets
    (``neighbor_target_difference``), and self-denoising runs in its original
    regression form, on the raw targets and the network's outputs. Class
    fitting, which needs class labels, is skipped with the reason.

    **Large data**: when the largest training fold holds more than
    ``scale_threshold`` examples (every fold then uses the same methods, so
    that their results can be pooled), density uses the soft count
    (``method="soft"``, O(N p), no pair of examples formed) instead of the
    hard count over all pairs (summing the reference's gradient sketches,
    ``n_components=2048``, when its exact sums would pass ``max_memory``);
    neighbours are searched with FAISS over gradient sketches, as wide as
    ``NetworkNeighbors(n_components="auto")`` makes them (``algorithm="faiss"``,
    candidates from 64 principal components, an exact ``"Flat"`` index below
    10^6 training examples, ``"HNSW32"`` from there), and their
    recall@``n_neighbors`` against exact neighbours is measured on 200
    held-out examples drawn at random (``neighbor_recall`` in ``folds`` and
    ``summary``; the label issues' search, on the same sketches, likewise:
    ``label_issue_recall``; a recall below 0.8 adds a warning to
    ``metadata["warnings"]`` and the report); class fitting fits
    each class's mixture on at most 1 000 of its training examples drawn at
    random (``max_fit_per_class``) and evaluates the densities at all of
    them; self-denoising stays on its ``max_samples`` subset. Which method
    each analysis used, and why, is in ``result.metadata["methods"]`` and in
    the report.

    Analyses that do not apply are skipped and listed with the reason; one
    that raises on a fold is recorded with its error and the audit goes on
    (``errors="record"``), so a long audit is never lost to one failure.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The network to audit (outputting logits for a classifier). With a
        cross-validation, a skorch net: it is cloned, never modified, and a
        fitted net is retrained from scratch on each fold (a module passed as
        an instance has its layers drawn anew by their ``reset_parameters``). With
        ``cv="prefit"``, the trained network itself, never trained nor
        modified: a fitted skorch net or a ``FrozenEstimator`` around one
        predicts with its own ``predict``; a ``torch.nn.Module`` (which has no
        ``predict``) predicts the argmax of its outputs for classification
        and its outputs for regression. Classification or regression: a
        skorch classifier or regressor says which; for any other network the
        targets decide, by :func:`sklearn.utils.multiclass.type_of_target`
        (``"binary"`` or ``"multiclass"`` labels are classification,
        ``"continuous"`` targets regression).
    X : array-like of shape (n_samples, ...), dict or Dataset
        Inputs, in the shape the network accepts, a dict of such arrays (the
        keyword arguments of its ``forward``, as skorch passes them), or a
        map-style torch dataset of them (items ``x`` or ``(x, y)``), read in
        batches; with ``cv="prefit"``, those it was trained on.
    y : array-like of shape (n_samples,), default=None
        Class labels (or, with ``cv="prefit"``, continuous targets of shape
        ``(n_samples,)`` or ``(n_samples, 1)``). None takes those of a
        dataset's ``(x, y)`` items.
    cv : int, cross-validation generator, iterable or "prefit", default=5
        As in :func:`sklearn.model_selection.cross_validate` (an int means
        :class:`~sklearn.model_selection.StratifiedKFold`), or ``"prefit"``
        to audit the trained ``net`` on ``X, y`` and ``X_test, y_test``.
    analyses : sequence of str, default=all six
        Which of ``"density"``, ``"neighbors"``, ``"label_issues"``,
        ``"denoising"``, ``"sensitivity"`` and ``"class_fitting"`` to run.
    X_test : array-like of shape (n_test, ...), dict or Dataset, default=None
        With ``cv="prefit"`` (and only then), the held-out inputs.
    y_test : array-like of shape (n_test,), default=None
        With ``cv="prefit"`` (and only then), their labels or targets (None
        takes those of a dataset's items).
    groups : array-like of shape (n_samples,), default=None
        The group of each example, for a group splitter such as
        :class:`~sklearn.model_selection.GroupKFold`, as
        :func:`~sklearn.model_selection.cross_validate` takes them.
    n_neighbors : int, default=5
        Training examples retrieved per held-out example.
    layers : list of str, default=None
        Module names for class fitting; None takes the last three linear or
        convolutional modules. Checked against the network before any
        training.
    options : dict of str to dict, default=None
        Keyword arguments per analysis, passed on to the estimator or function
        behind it (e.g. ``{"density": {"method": "hard"}, "sensitivity":
        {"n_probe": 500}}``). Defaults kept small for speed: sensitivity
        ``layers="all", n_probe=200, n_init=2``; class fitting
        ``n_components=8, n_bins=5, n_samples=200`` with variational
        mixtures; denoising ``weights="cosine_pos_pow", max_samples=500``
        (``max_samples=None`` analyses the whole training fold).
    random_state : int or None, default=0
        Seeds the training of every fold (each fold's clone is trained under
        ``torch.manual_seed(random_state)``) and the analyses.
    errors : {"record", "raise"}, default="record"
        What an analysis that raises on a fold does: ``"record"`` warns, keeps
        the error in ``result.failed`` (and the report) and goes on with the
        other analyses and folds; ``"raise"`` stops the audit with it. The
        checks made before any training (arguments, options, layers) raise
        either way.
    verbose : int, default=0
        Show a progress bar over folds and analyses (on stderr) when positive.
    cache : str or path-like, default=None
        A folder where every trained fold and every finished analysis of a
        fold is saved as it completes, in a file named by a hash of what it
        depends on (the data, the net and its parameters, the split, the seed,
        the analysis' options). A rerun with the same arguments loads these
        pieces instead of computing them again, so an interrupted audit
        resumes where it stopped; a changed argument or data computes the
        pieces it affects again (with ``cv="prefit"``, the hash covers the
        network's weights, and only analyses are saved). The files are
        pickles: use a folder only you write to.
    scale_threshold : int or None, default=20_000
        Training-fold size past which the analyses switch by themselves to
        methods whose cost grows linearly with the data (see "Large data"
        above); None never switches. Options given in ``options`` still
        take precedence.

    Returns
    -------
    result : AuditResult
        Tidy tables per fold and aggregated over folds, the skipped analyses,
        and a gallery of examples; ``result.to_html(path)`` writes the report.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019 (density,
       neighbours, self-denoising; see the theory page of the user guide).
    .. [2] L. Petrini, A. Favero, M. Geiger, M. Wyart, "Relative stability
       toward diffeomorphisms indicates performance in deep nets", NeurIPS
       2021.
    .. [3] M. Jamroż, M. Kurdziel, "Neural Representations Reveal Distinct
       Modes of Class Fitting in Residual Convolutional Networks", AAAI 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.audit import audit
    >>> from sksim.audit.models import make_classifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32")
    >>> y = (X[:, 0] > 0).astype("int64")
    >>> net = make_classifier("mlp", X, n_classes=2, max_epochs=5)
    >>> result = audit(net, X, y, cv=3, analyses=("density", "sensitivity"))
    >>> result["folds"]["n_test"].tolist()
    [20, 20, 20]
    >>> sorted(result.skipped)
    ['sensitivity']

    Auditing the network already trained, on its own train/test split:

    >>> from sksim.audit.models import MLP
    >>> module = MLP(n_features=4, n_classes=2)
    >>> result = audit(module, X[:40], y[:40], cv="prefit", X_test=X[40:],
    ...                y_test=y[40:], analyses=("density",))
    >>> result["folds"][["n_train", "n_test"]].values.tolist()
    [[40, 20]]
    """
    import_pandas()
    options = dict(options or {})
    if isinstance(cv, str) and cv != "prefit":
        raise ValueError(
            'cv must be "prefit", a number of folds, a splitter or an iterable of '
            f"(train, test) index arrays; got {cv!r}."
        )
    prefit = isinstance(cv, str)
    analyses = _check_analyses(analyses)
    _check_options(n_neighbors, options, errors)
    idle = [name for name in options if name not in analyses]
    if idle:
        warnings.warn(
            f"options for analyses that do not run, {idle}, are ignored: add "
            f"them to analyses={analyses!r} (--analyses on the command line) "
            "to run them.",
            UserWarning,
            stacklevel=2,
        )
    check_positive_int(scale_threshold, "scale_threshold", allow_none=True)
    if random_state is not None and not (
        isinstance(random_state, numbers.Integral)
        and not isinstance(random_state, bool)
        and 0 <= random_state < 2**32
    ):  # refused by the analyses only, after every fold's training
        raise ValueError(
            "random_state must be None or an integer from 0 to 2**32 - 1; got "
            f"{random_state!r}."
        )
    # Python integers, as JSON writes them (NumPy's are accepted above)
    scale_threshold = None if scale_threshold is None else int(scale_threshold)
    random_state = None if random_state is None else int(random_state)
    check_data = _prefit_data if prefit else _cv_data
    data = check_data(net, X, y, X_test, y_test)
    requested = [a for a in REGISTRY.values() if a.name in analyses]
    reasons = {a.name: _skip_reason(a, data) for a in requested}
    skipped = {name: reason for name, reason in reasons.items() if reason}
    requested = [a for a in requested if a.name not in skipped]
    module = functools.cache(functools.partial(_built_module, net, prefit))
    for analysis in requested:
        analysis.check_network(module, layers, options.get(analysis.name, {}))
    del module  # a module built for the checks is not kept during training
    with warnings.catch_warnings(record=True) as split_warnings:
        warnings.simplefilter("always")
        protocol, protocol_words, splits = _splits(cv, data, prefit, groups)
    smallest = min(len(train) for train, _ in splits)
    if "neighbors" in (a.name for a in requested) and n_neighbors > smallest:
        where = "" if prefit else " of the smallest fold"
        remedy = "" if prefit else ", or use more folds (larger training folds)"
        raise ValueError(
            f"n_neighbors={n_neighbors} is more than the {smallest} training "
            f"examples{where}: lower it{remedy}."
        )
    store = AuditCache(cache, data.arrays(), net, random_state, prefit)
    store.key(options)  # arguments that cannot be hashed fail before any training
    started = time.perf_counter()
    collected = dict(folds=[], samples=[], tables={}, warnings={}, methods={})
    for caught in split_warnings:  # e.g. a class too small for every fold
        _count_warning(collected["warnings"], *_warning_text("cv", caught))
        warnings.warn_explicit(
            caught.message, caught.category, caught.filename, caught.lineno
        )
    failed, outputs = {}, set()  # the networks' numbers of class outputs
    first = "predict" if prefit else "fit"
    seconds = {name: 0.0 for name in [first, *(a.name for a in requested)]}
    steps = tqdm(
        total=len(splits) * (1 + len(requested)), disable=verbose <= 0, desc="audit"
    )
    arguments = dict(
        n_neighbors=n_neighbors,
        layers=layers,
        options=options,
        scale_threshold=scale_threshold,
        train_sizes=[len(train) for train, _ in splits],
        random_state=random_state,
    )
    with steps:
        for index, (train, test) in enumerate(splits):
            fold = _Fold(data, train, test, index, **arguments)
            steps.set_postfix_str(
                f"fold {index}: {'predicting' if prefit else 'training'}"
            )
            seconds[first] += _prepare(fold, net, store, prefit)
            if fold.task == "classification":
                outputs.add(fold.n_class_outputs)
            steps.update()
            _run_fold(
                fold,
                requested,
                store,
                collected,
                seconds,
                steps,
                failed=failed if errors == "record" else None,
            )
    ran = [a for a in requested if len(failed.get(a.name, {})) < len(splits)]
    tables = _assemble(collected, ran)
    metadata = dict(
        task=data.task,
        n_samples=int(len(data.X) + (len(data.X_test) if prefit else 0)),
        input_shape=_shape_list(sample_shape(data.X)),
        n_classes=_n_classes(data, outputs),
        cv=protocol,
        cv_words=protocol_words,
        n_folds=len(splits),
        analyses=[a.name for a in ran],
        n_neighbors=int(n_neighbors),
        random_state=random_state,
        scale_threshold=scale_threshold,
        methods=_methods(collected["methods"], ran),
        net=_describe(net, prefit),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        total_seconds=round(time.perf_counter() - started, 3),
        versions=_versions(),
        warnings=_warning_rows(collected["warnings"]),
    )
    if data.class_names is not None:
        metadata["class_names"] = data.class_names
    if cache is not None:
        metadata["cache"] = store.summary()
    gallery = [item for a in ran for item in a.gallery(data, tables)]
    examples = worth_a_look(data, tables)
    return AuditResult(tables, skipped, metadata, gallery, failed, examples)


def _splits(cv, data, prefit, groups=None):
    """The protocol (its repr and in words) and its (train, test) index pairs."""
    if prefit:
        if groups is not None:
            raise ValueError('groups are for a splitter; cv="prefit" has none.')
        split = (np.arange(len(data.X)), np.arange(len(data.X_test)))
        words = "none: the trained network (prefit) on the given train/test split"
        return "prefit", words, [split]
    splitter = check_cv(cv, data.y, classifier=True)
    splits = cv_partition(splitter, data.X, data.y, groups)
    return repr(splitter), splitter_words(splitter, len(splits)), splits


def splitter_words(splitter, n_splits: int) -> str:
    """What a scikit-learn splitter does, in words, with its class name.

    >>> from sklearn.model_selection import StratifiedKFold
    >>> splitter_words(StratifiedKFold(3, shuffle=True, random_state=0), 3)
    'StratifiedKFold: 3 folds, the classes in like proportions, shuffled with seed 0'
    """
    name = type(splitter).__name__
    if name == "_CVIterableWrapper":
        return f"{n_splits} train/test splits given as index arrays"
    if not name.endswith("KFold"):
        return f"{n_splits} train/test splits: {splitter!r}"
    parts = [f"{n_splits} folds"]
    if "Group" in name:
        parts.append("each group whole in one fold")
    if "Stratified" in name:
        parts.append("the classes in like proportions")
    shuffle, seed = (
        getattr(splitter, key, None) for key in ("shuffle", "random_state")
    )
    if shuffle:
        seeded = isinstance(seed, numbers.Integral)
        parts.append(f"shuffled with seed {seed}" if seeded else "shuffled at random")
    elif shuffle is not None:  # group splitters deal the groups by their sizes
        parts.append("not shuffled" if "Group" in name else "in the data's order")
    return f"{name}: {', '.join(parts)}"


def _methods(methods, analyses):
    """The method of each analysis that ran, in words.

    One text when every fold used the same, else one per fold, prefixed with
    the fold's number.
    """
    described = {}
    for analysis in analyses:
        per_fold = methods.get(analysis.name, {})
        texts = list(dict.fromkeys(per_fold.values()))
        if len(texts) == 1:
            described[analysis.name] = texts[0]
        elif texts:
            described[analysis.name] = _numbers_as_ranges(texts) or "; ".join(
                f"fold {fold}: {text}" for fold, text in per_fold.items()
            )
    return described


_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def _numbers_as_ranges(texts) -> str | None:
    """One text for texts that differ only in their numbers, given as ranges.

    None when their words differ.

    >>> _numbers_as_ranges(["fitted on 9,986 of 10,000", "fitted on 9,987 of 10,000"])
    'fitted on 9,986 to 9,987 (over the folds) of 10,000'
    """
    words = {_NUMBER.sub("#", text) for text in texts}
    if len(words) > 1:
        return None
    columns = zip(*(_NUMBER.findall(text) for text in texts), strict=True)
    shown = []
    for values in columns:
        ordered = sorted(set(values), key=lambda n: float(n.replace(",", "")))
        shown.append(
            ordered[0]
            if len(ordered) == 1
            else f"{ordered[0]} to {ordered[-1]} (over the folds)"
        )
    pieces = _NUMBER.split(texts[0])
    return pieces[0] + "".join(n + p for n, p in zip(shown, pieces[1:], strict=True))


def _versions() -> dict[str, str]:
    """The versions of sksim and what its results depend on."""
    import platform

    import sklearn
    import skorch

    from .. import __version__

    return {
        "sksim": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
    }


def _describe(net, prefit):
    net = _unwrap(net)
    if not isinstance(net, NeuralNet):
        return f"{type(net).__name__} (torch module, prefit)"
    module = getattr(net, "module", None)
    name = getattr(module, "__name__", type(module).__name__)
    if prefit:
        return f"{type(net).__name__}(module={name}, prefit)"
    return f"{type(net).__name__}(module={name}, max_epochs={net.max_epochs})"


def _prepare(fold, net, store, prefit):
    """Give the fold its net and predictions.

    Also records the seconds of training (of predicting, when prefit).
    """
    if not prefit:
        _train(fold, net, store)
        return fold.fit_seconds
    start = time.perf_counter()
    fold.use(net)
    return time.perf_counter() - start


def _train(fold, net, store):
    """Train the fold's net, or load it from the cache."""
    key = store.key("fold", fold.train, fold.test)
    state = store.load(key)
    if state is not None:
        fold.restore(state)
        return
    fold.fit(net)
    store.save(key, fold.state(), f"the network trained on fold {fold.fold}")


def _warning_text(name, caught):
    """A warning raised by an analysis (or the splitter, ``"cv"``): what is counted.

    ``(analysis, text, samples)``: the text is its category and first
    sentence with the numbers masked (``N``), so that warnings differing only
    by their numbers count together; ``samples`` is the number of samples it
    concerns when it says so (``"... for 12 sample(s)"``), else None.
    """
    message = str(caught.message).split(": ")[0]
    concerned = re.search(r"(\d+) sample", message)
    masked = re.sub(r"\d+", "N", message)
    text = f"{caught.category.__name__}: {masked}"
    return name, text, None if concerned is None else int(concerned.group(1))


def _count_warning(counts, name, text, samples):
    """Add one warning to ``counts``: per text, per analysis, times and samples."""
    per_analysis = counts.setdefault(text, {}).setdefault(
        name, dict(times=0, samples=None)
    )
    per_analysis["times"] += 1
    if samples is not None:
        per_analysis["samples"] = (per_analysis["samples"] or 0) + samples


def _warning_rows(counts):
    """The warnings of the metadata: text, times raised, samples, analyses."""
    rows = []
    for text, analyses in counts.items():
        samples = [a["samples"] for a in analyses.values() if a["samples"]]
        rows.append(
            dict(
                warning=text,
                times=sum(a["times"] for a in analyses.values()),
                samples=sum(samples) if samples else None,
                analyses=analyses,
            )
        )
    return rows


def _analyse(analysis, fold, store, failed):
    """The analysis' output on the fold (None when it failed) and its warnings.

    A finished analysis is saved to the cache, or loaded from it; with
    ``failed=None`` an error raises, otherwise it is recorded in ``failed``.
    """
    name = analysis.name
    # past it, the method's words name the threshold
    scaled = ("at scale", fold.scale_threshold) if analysis.at_scale(fold) else ()
    key = store.key(
        name,
        fold.train,
        fold.test,
        fold.prediction,  # a prefit net's decision threshold changes them
        fold.probabilities,
        fold.options.get(name),
        *(getattr(fold, setting) for setting in analysis.audit_settings),
        *scaled,
    )
    saved = store.load(key)
    if saved is not None:
        return saved
    output = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            output = analysis.run(fold)
        except Exception as error:
            if failed is None:
                raise
            failed.setdefault(name, {})[fold.fold] = f"{type(error).__name__}: {error}"
    texts = [_warning_text(name, w) for w in caught]
    if output is not None:
        store.save(key, (output, texts), f"the {name} analysis of fold {fold.fold}")
    return output, texts


def _same_search(kept: NetworkNeighbors, wanted: NetworkNeighbors) -> bool:
    """Whether two searches have the same parameters, their queries' aside.

    Each parameter the same object or equal by ``==``: the same net, and
    callables or tensors that are not the same objects count as different.
    """
    a, b = (search.get_params(deep=False) for search in (kept, wanted))
    return all(_same(a[name], b[name]) for name in a if name not in QUERY_PARAMS)


def _same(a: Any, b: Any) -> bool:
    """``a is b``, or ``a == b`` where that is a plain truth value."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays, tensors
        return False


def _run_fold(fold, analyses, store, collected, seconds, steps, failed):
    """Run the analyses on one fold; ``failed=None`` lets their errors raise.

    The fold's kept neighbour search is freed before an analysis that does
    not share it, and at the end.
    """
    folds_row, samples = fold.row(), fold.samples()
    for analysis in analyses:
        name = analysis.name
        if not analysis.shares_search:
            fold.release_search()
        steps.set_postfix_str(f"fold {fold.fold}: {name}")
        start = time.perf_counter()
        output, texts = _analyse(analysis, fold, store, failed)
        for text in texts:
            _count_warning(collected["warnings"], *text)
        seconds[name] += time.perf_counter() - start
        steps.update()
        if output is None:
            warnings.warn(
                f"The {name} analysis failed on fold {fold.fold} and is left out "
                f"there: {failed[name][fold.fold].rstrip('.')}. Pass "
                "errors='raise' to stop "
                "on it.",
                AuditAnalysisFailedWarning,
                stacklevel=3,
            )
            continue
        samples.update(output.samples)
        folds_row.update(output.metrics)
        if output.method is not None:
            collected["methods"].setdefault(name, {})[fold.fold] = output.method
        for table, rows in output.tables.items():
            collected["tables"].setdefault(table, []).append(rows)
    fold.release_search()
    collected["folds"].append(frame([folds_row]))
    collected["samples"].append(frame(samples))


def _metrics(folds):
    """The metric columns of the ``folds`` table (or of one fold's row)."""
    return [c for c in folds.columns if c not in ("fold", "n_train", "n_test")]


def _assemble(collected, analyses):
    """The audit's tables from the folds' pieces, with the analyses' summaries."""
    pd = import_pandas()
    tables = {
        name: pd.concat(parts, ignore_index=True)
        for name, parts in [
            ("folds", collected["folds"]),
            ("samples", collected["samples"]),
            *collected["tables"].items(),
        ]
    }
    # each fold's own metrics: not those of analyses that failed on it
    long = [
        row.melt(id_vars="fold", value_vars=_metrics(row), var_name="metric")
        for row in collected["folds"]
    ]
    long += [a.summary_metrics(tables) for a in analyses]
    long = pd.concat([part for part in long if part is not None], ignore_index=True)
    long["value"] = long["value"].astype(float)
    tables["summary"] = spread(long, "metric", ["value"]).rename(
        columns=lambda c: c.removeprefix("value_")
    )
    for analysis in analyses:
        tables.update(analysis.summarise(tables))
    return tables
