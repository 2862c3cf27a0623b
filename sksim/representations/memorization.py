"""Memorisation scores of Feldman & Zhang (2020)."""

from __future__ import annotations

import contextlib
import numbers
import warnings

import numpy as np
from joblib import Parallel, delayed
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.utils import check_random_state
from skorch import NeuralNet
from tqdm.auto import tqdm

from .._engine.context import torch_seed
from .._engine.inputs import is_dataset, n_samples, take
from .._engine.worker_warnings import recording_warnings, warn_again
from .._net import _unwrap, interrupts_kept, skorch_errors, training_targets
from .._typing import NetInput
from .._validation import (
    check_net_input,
    check_positive_int,
    given_or_item_labels,
    labelled,
    labels_key_hint,
)


def subset_masks(
    n: int, n_models: int, subset_fraction: float, rng: np.random.RandomState
) -> np.ndarray:
    """Boolean ``(n_models, n)`` masks, each holding ``round(fraction * n)`` rows."""
    size = int(round(subset_fraction * n))
    masks = np.zeros((n_models, n), dtype=bool)
    for m in range(n_models):
        masks[m, rng.choice(n, size, replace=False)] = True
    return masks


def _correct_when_trained_on(estimator, X, y, mask, seed):
    model = clone(estimator)
    model.set_params(  # a pipeline's or a meta-estimator's steps too
        **{
            name: seed
            for name in model.get_params()
            if name == "random_state" or name.endswith("__random_state")
        }
    )
    rows = np.flatnonzero(mask)
    # a skorch net's training draws from torch's generator, which threads
    # share: one at a time; another estimator may start threads that train
    # nets, which would wait for the turn it holds
    skorch = isinstance(model, NeuralNet)
    with torch_seed(seed, exclusive=skorch):
        with skorch_errors() if skorch else contextlib.nullcontext():
            with interrupts_kept():  # a skorch net's, in a pipeline too
                model.fit(take(X, rows), y[rows])
            return np.asarray(model.predict(X)) == y


def memorization_scores(
    estimator: BaseEstimator,
    X: NetInput,
    y: ArrayLike | None = None,
    n_models: int = 20,
    subset_fraction: float = 0.7,
    random_state: int | np.random.RandomState | None = None,
    n_jobs: int | None = None,
    verbose: int = 0,
) -> np.ndarray:
    """Memorisation score of every training example (Feldman & Zhang).

    ``n_models`` clones of ``estimator`` are trained on random subsets holding a
    fraction ``subset_fraction`` of the examples, and
    ``mem(i) = acc(i | i in subset) - acc(i | i not in subset)``: how much
    better example ``i`` is classified when the model has seen it. A high score
    means the label of ``i`` is not predicted from the other examples, only
    memorised (atypical or mislabelled examples).

    Parameters
    ----------
    estimator : classifier
        Any unfitted scikit-learn classifier, including a skorch net; it must
        be able to fit its training set for the scores to be informative.
    X : array-like of shape (n_samples, ...), dict of arrays, or Dataset
        Training inputs (any shape the estimator accepts); a map-style torch
        ``Dataset`` for a skorch net.
    y : array-like of shape (n_samples,), default=None
        Labels. Required, unless ``X`` is a Dataset of ``(x, y)`` items: its
        labels are then read from the items. A skorch classifier, trained
        afresh, learns each label as its code (0 to the number of labels - 1).
    n_models : int, default=20
        Models trained; each example should fall both in and out of several
        subsets.
    subset_fraction : float, default=0.7
        Fraction of the examples in each training subset, in (0, 1), leaving
        some examples in and some out.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsets and each model (its ``random_state`` parameters,
        those of a pipeline's steps too, and torch's generator during its
        fit).
    n_jobs : int, default=None
        Models trained in parallel through joblib. In threads (joblib's
        threading backend, a dask cluster of threads), skorch nets train one
        at a time, each seeded as in sequence; another estimator drawing from
        torch's generator (a pipeline around a skorch net) draws from the
        generator other threads draw from too: its scores are reproducible in
        processes (loky, joblib's default) only.
    verbose : int, default=0
        Show a progress bar over the models when positive.

    Returns
    -------
    scores : ndarray of shape (n_samples,)
        In [-1, 1]; NaN (with a warning) for an example that was never, or
        always, in the subsets.

    References
    ----------
    .. [1] V. Feldman, C. Zhang, "What Neural Networks Memorize and Why:
       Discovering the Long Tail via Influence Estimation", NeurIPS 2020,
       section 2.
    .. [2] M. Jamroż, M. Kurdziel, AAAI 2023, section 4.3 (memorisation against
       density).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from sksim.representations import memorization_scores
    >>> X = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]])
    >>> y = np.array([0, 0, 1, 1, 1, 1])  # the third label looks flipped
    >>> mem = memorization_scores(KNeighborsClassifier(1), X, y, n_models=30,
    ...                           random_state=0)
    >>> int(np.argmax(mem))
    2
    """
    check_positive_int(n_models, "n_models")
    if not (isinstance(subset_fraction, numbers.Real) and 0 < subset_fraction < 1):
        raise ValueError(
            f"subset_fraction must be a number in (0, 1); got {subset_fraction!r}."
        )
    X = check_net_input(X, pairs=True)  # a regularised net trains on its pairs
    if is_dataset(X) and not isinstance(_unwrap(estimator), NeuralNet):
        raise TypeError(
            f"A torch Dataset is read by a skorch net; {type(estimator).__name__} "
            "takes arrays: pass the dataset's inputs and labels as arrays."
        )
    y = given_or_item_labels(X, y)
    if y is None:
        raise ValueError(
            "memorization_scores needs labels: pass y, or a Dataset of (x, y) items."
            + labels_key_hint(X)
        )
    y = np.asarray(y)
    n = n_samples(X)
    if len(y) != n:
        raise ValueError(f"X and y have different lengths ({n} and {len(y)}).")
    net = _unwrap(estimator)
    if isinstance(net, NeuralNet):  # labels as skorch's loss takes them
        if is_classifier(net):  # trained afresh: each label as its code, 0 to K - 1
            y = np.unique(y, return_inverse=True)[1]
        y = training_targets(net, y, X)
    X = labelled(X, y)
    size = int(round(subset_fraction * n))
    if not 0 < size < n:
        raise ValueError(
            f"subset_fraction={subset_fraction} of {n} examples makes subsets of "
            f"{size}: every example would be {'always' if size else 'never'} in "
            "them, and its score undefined. Take a subset_fraction that leaves "
            "some examples in and some out."
        )
    rng = check_random_state(random_state)
    masks = subset_masks(n, n_models, subset_fraction, rng)
    seeds = rng.randint(2**31 - 1, size=n_models)
    jobs = (
        delayed(recording_warnings(_correct_when_trained_on))(
            estimator, X, y, mask, int(seed)
        )
        for mask, seed in zip(masks, seeds, strict=True)
    )
    fits = list(
        tqdm(
            Parallel(n_jobs=n_jobs, return_as="generator")(jobs),
            total=n_models,
            disable=verbose <= 0,
            desc="memorisation models",
        )
    )
    for _, raised in fits:
        warn_again(raised)
    correct = np.array([correct for correct, _ in fits])
    n_in, n_out = masks.sum(axis=0), (~masks).sum(axis=0)
    undefined = (n_in == 0) | (n_out == 0)
    if undefined.any():
        warnings.warn(
            f"{int(undefined.sum())} example(s) were never (or always) in the "
            "training subsets; their score is NaN. Increase n_models.",
            stacklevel=2,
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_in = (correct & masks).sum(axis=0) / n_in
        acc_out = (correct & ~masks).sum(axis=0) / n_out
    return np.where(undefined, np.nan, acc_in - acc_out)
