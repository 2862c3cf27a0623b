"""Validation of network inputs at the scikit-learn boundary."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.model_selection import StratifiedKFold, check_cv
from sklearn.utils import check_array
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import validate_data
from skorch.dataset import Dataset as SkorchDataset
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    Subset,
)

from ._engine.inputs import (
    DictRows,
    check_finite,
    is_dataset,
    n_samples,
    read_items,
    sample_shape_of,
    split_item,
    to_numpy,
)
from ._pairs import strip_pairs


def _as_array(X):
    """A tensor as an array; rows held one per cell of an object array stacked.

    A pandas column of token lists, or an object array of them, holds one
    list (or array) per sample: NumPy refuses to convert it.
    """
    if isinstance(X, torch.Tensor):
        return to_numpy(_with_values(X))
    dtype = getattr(X, "dtype", None)  # an array's or a pandas column's
    rows = isinstance(dtype, np.dtype) and dtype.kind == "O" and np.ndim(X) == 1
    if rows and len(X) and all(isinstance(x, list | tuple | np.ndarray) for x in X):
        return np.stack([np.asarray(x) for x in X])
    return X


def _with_values(X: torch.Tensor) -> torch.Tensor:
    """``X``, unless it is on the meta device (a ValueError)."""
    if X.is_meta:
        raise ValueError(
            "X is on the meta device and holds no values: pass its data, on the "
            "CPU or a GPU."
        )
    return X


def check_net_input(
    X, estimator=None, reset=True, keep_tensors=False, input_name="X", pairs=False
):
    """Validate inputs for a network: arrays of any rank, a dict of them, or a dataset.

    Arrays keep integer dtypes (token ids) and may have any number of
    dimensions (images, sequences); NaN and infinity are refused, naming the
    rows of ``input_name`` (a dict's, its keys). With an
    ``estimator``, ``n_features_in_`` is set (``reset=True``) or checked.
    With ``keep_tensors``, a tensor is checked and returned where it lives.
    A map-style torch dataset is returned as it is, once its first item is
    checked: its values are checked batch by batch as they are read. Pairs
    attached by :func:`~sksim.regularized.with_pairs` are kept with
    ``pairs``, else dropped (the network takes the inputs alone, as its
    ``predict`` does).
    """
    if X is None:  # scikit-learn's message advises a reshape
        raise ValueError(
            f"{input_name} is None: pass the network's inputs (the training "
            "set's own, to score those)."
        )
    if not pairs:
        X = strip_pairs(X)
    check_not_streamed(X)
    if is_dataset(X):
        return _check_dataset(X, estimator, reset)
    if isinstance(X, Mapping) and not issparse(X):  # a DOK matrix is a Mapping
        if not X:
            raise ValueError("A dict input needs at least one array.")
        for k, v in X.items():
            _check_not_ragged(v, str(k))
        constants = [k for k, v in X.items() if np.ndim(v) == 0]
        if constants:
            raise ValueError(
                f"The dict input's values {constants} hold one value, not one row "
                "per sample: every value of a dict input is split into batches. "
                "Give the network its constant arguments another way: a module "
                "whose forward passes them (e.g. model(pixel_values=x, "
                "interpolate_pos_encoding=True))."
            )
        checked = {  # one value per sample, shape (n,), is an input as well
            k: check_array(
                _as_array(v),
                allow_nd=True,
                ensure_2d=False,
                dtype="numeric",
                ensure_all_finite=False,  # check_finite names the rows
                input_name=str(k),
            )
            for k, v in X.items()
        }
        n_samples(checked)
        check_finite(checked)
        return checked
    if keep_tensors and isinstance(X, torch.Tensor):
        return _check_tensor(X, input_name)
    kwargs = dict(allow_nd=True, dtype="numeric", ensure_all_finite=False)
    _check_single_input(X, input_name)
    X = _as_array(X)
    if estimator is None or (not reset and _token_sequences(X)):
        X = check_array(X, input_name=input_name, **kwargs)  # any length of tokens
    else:
        try:
            X = validate_data(estimator, X, reset=reset, **kwargs)
        except ValueError as error:  # scikit-learn calls any input X
            if input_name == "X" or not str(error).startswith("X has "):
                raise
            raise ValueError(f"{input_name}{str(error)[1:]}") from None
    if X.dtype == object:  # e.g. a data frame with a categorical column
        raise ValueError(
            f"{input_name} holds values that are not numbers (an array of dtype "
            "object, e.g. from a categorical column): encode them first, e.g. "
            "with scikit-learn's OneHotEncoder or OrdinalEncoder."
        )
    check_finite(X, input_name)
    return X


def _token_sequences(X) -> bool:
    """Whether ``X`` holds integer rows, token ids, whose length may vary.

    The network, not ``n_features_in_``, says which lengths it takes.
    """
    return (
        isinstance(X, np.ndarray) and X.ndim == 2 and np.issubdtype(X.dtype, np.integer)
    )


def _check_tensor(X: torch.Tensor, input_name: str) -> torch.Tensor:
    """Validate a tensor where it lives, so that one on a GPU stays there."""
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(
            "Expected a tensor of shape (n_samples, ...) with at least two "
            f"dimensions and one sample; got shape {tuple(X.shape)}. Reshape a "
            "single feature with X.reshape(-1, 1), a single sample with "
            "X.reshape(1, -1)."
        )
    if X.is_complex():
        raise ValueError(f"Expected a real tensor; got dtype {X.dtype}.")
    _with_values(X)
    check_finite(X, input_name)
    return X.detach()


def _check_dataset(dataset, estimator, reset: bool):
    """Check a dataset's length and first item; set or check ``n_features_in_``."""
    check_map_style(dataset)
    first, second = split_item(dataset[0])
    _warn_mask_read_as_label(first, second)
    shape = _input_shape(first)
    _check_same_reads(dataset, first)
    if estimator is not None:
        item = np.asarray(_as_array(first))
        tokens = item.ndim == 1 and item.dtype.kind in "iu"
        _check_n_features(estimator, shape, reset, tokens)
    return dataset


def _warn_mask_read_as_label(x, v) -> None:
    """Warn when an item's second value looks like an attention mask of its input.

    Items ``(x, v)`` are read as ``(input, label)``: ``v`` is not passed to
    the network. One of 0s and 1s shaped as token ids ``x`` is more likely
    their attention mask (a ``TensorDataset(input_ids, attention_mask)``)
    than a label per token.
    """
    if not all(isinstance(a, np.ndarray | torch.Tensor) for a in (x, v)):
        return  # a label of numbers, or values whose own checks come later
    x, v = np.asarray(_as_array(x)), np.asarray(_as_array(v))
    # one sequence per item, (L,) or a tokenizer's (1, L)
    tokens = x.dtype.kind in "iu" and x.size > 1 and max(x.shape) == x.size
    if tokens and v.shape == x.shape and np.isin(v, (0, 1)).all():
        warnings.warn(
            f"The dataset's items are pairs (x, v) read as (input, label), and v, "
            f"0s and 1s of the token ids' shape {x.shape}, looks like their "
            "attention mask, which the network does not get. If it is one (a "
            "TensorDataset(input_ids, attention_mask)), make the items "
            "({'input_ids': ids, 'attention_mask': mask}, y), or dicts of the "
            "inputs alone; if it holds a label per token, pass the token ids "
            "alone (and the labels as y where needed) to silence this warning.",
            UserWarning,
            stacklevel=4,
        )


def is_map_style(dataset: Dataset) -> bool:
    """Whether ``dataset`` has a length and random access (not an IterableDataset)."""
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__")


def check_not_streamed(X) -> None:
    """Raise a TypeError if ``X`` is a loader or an iterator, read only once."""
    if isinstance(X, DataLoader):
        raise TypeError(
            "X is a DataLoader: pass its dataset (loader.dataset, a map-style "
            "torch Dataset), which sksim reads in batches of its own "
            "batch_size, or arrays."
        )
    if isinstance(X, Iterator):
        raise TypeError(
            f"X is an iterator ({type(X).__name__}), which can be read only "
            "once: pass arrays, tensors or a map-style torch Dataset."
        )


def check_map_style(dataset: Dataset) -> None:
    """Raise unless ``dataset`` is map-style and holds at least one item."""
    if not is_map_style(dataset):
        lacks = (
            "an IterableDataset, without random access"
            if isinstance(dataset, IterableDataset)
            else "without a length"
        )
        raise TypeError(
            f"X is a {type(dataset).__name__}, {lacks}: pass a map-style torch "
            "Dataset (with __len__ and __getitem__), or arrays."
        )
    if len(dataset) == 0:
        raise ValueError(
            "Found a dataset with 0 items while a minimum of 1 is required."
        )


REREAD_ITEMS = 8  # items read twice to find a random transform


def _check_same_reads(dataset: Dataset, first) -> None:
    """Raise a ValueError if an item's input differs from one read to the next.

    The first :data:`REREAD_ITEMS` items are read twice (item 0's first read
    is ``first``): a transform drawn at random for half the reads, such as a
    horizontal flip, escapes with probability 1/256.
    """
    for i in range(min(REREAD_ITEMS, len(dataset))):
        once = first if i == 0 else split_item(dataset[i])[0]
        if not _same_input(once, split_item(dataset[i])[0]):
            raise ValueError(
                f"Dataset item {i} differs from one read to the next (a random "
                "transform, as data augmentation uses?): sksim reads an item "
                "several times in one call (for the network's outputs, its "
                "gradients, the exact ranking of candidates) and would mix "
                "different versions of it. Pass the dataset with its evaluation "
                "transforms."
            )


def _without_ones(shape: tuple) -> tuple:
    return tuple(size for size in shape if size != 1)


def _check_single_input(X, input_name: str) -> None:
    """Raise a ValueError for a list or tuple of inputs that no array stacks.

    Dicts (examples as a Hugging Face dataset gives them), ``(x, y)`` items
    (those of a torch Dataset that scikit-learn's splitters indexed), or
    arrays of several shapes (several inputs: an image and tabular features).
    """
    _check_not_ragged(X, input_name)
    if not isinstance(X, list | tuple):
        return
    first = X[0] if X else None
    if (  # a label beside an input of other shape: no array stacks them
        isinstance(first, tuple)
        and len(first) == 2
        and isinstance(first[0], np.ndarray | torch.Tensor | Mapping)
        and np.shape(first[1]) != np.shape(first[0])
    ):
        raise ValueError(
            f"{input_name} is a {type(X).__name__} of (x, y) items, as "
            "scikit-learn's splitters (cross_val_score, GridSearchCV) make of a "
            "torch Dataset they index: pass them arrays of the inputs and "
            "labels instead (np.stack of the items' x, and their y), or call "
            "sksim on the Dataset itself, outside the search."
        )
    if X and isinstance(X[0], Mapping):
        raise ValueError(
            f"{input_name} is a {type(X).__name__} of dicts, one per example (as "
            "iterating a Hugging Face dataset gives them): pass a dict of "
            "arrays, one row per example in each ({key: np.stack([x[key] for x "
            f"in {input_name}]) for key in {input_name}[0]}}), or a map-style "
            "torch Dataset of those dicts (a Hugging Face dataset with "
            '.with_format("torch")).'
        )
    shapes = {tuple(v.shape) for v in X if isinstance(v, np.ndarray | torch.Tensor)}
    if len(shapes) > 1:
        raise ValueError(
            f"{input_name} is a {type(X).__name__} of arrays of several shapes "
            f"{sorted(shapes)[:3]}, which cannot be stacked into samples: pass "
            "several inputs as a dict of them, one row per sample in each (e.g. "
            '{"image": images, "tabular": features}), which goes to the '
            "network's forward by name (forward(self, image, tabular))."
        )


def _check_not_ragged(X, input_name: str) -> None:
    """Raise a ValueError for lists of several lengths, such as unpadded tokens."""
    listed = isinstance(X, list | tuple) or (
        isinstance(X, np.ndarray) and X.dtype == object
    )
    if not listed:
        return
    lengths = {len(x) for x in X if isinstance(x, list | tuple)}
    if len(lengths) > 1:
        raise ValueError(
            f"{input_name} holds lists of different lengths (from {min(lengths)} "
            f"to {max(lengths)}), which do not stack into one row per sample: "
            "pad them to one length, with an attention mask (e.g. "
            "tokenizer(texts, padding=True))."
        )


def _same_input(a, b) -> bool:
    """Whether two reads of an item's input (an array or a dict) are equal."""
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_equal(a[k], b[k]) for k in a)
        )
    return _equal(a, b)


def _equal(a, b) -> bool:
    """Whether two inputs of items hold the same values (NaN equal to NaN)."""
    a, b = (np.asarray(_as_array(v)) for v in (a, b))
    floating = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=floating)


def sample_shape(X):
    """The shape of one sample: a tuple, or a dict of them for dict inputs."""
    if is_dataset(X):
        return dataset_sample_shape(X)
    return sample_shape_of(X)


def dataset_sample_shape(dataset: Dataset):
    """The shape of the input of a dataset's first item, checked to be numeric.

    A tuple, or a dict of them for items whose input is a dict.
    """
    return _input_shape(split_item(dataset[0])[0])


def _input_shape(x):
    """The shape of item 0's input ``x``, checked to be numeric."""
    if isinstance(x, Mapping):
        if not x:
            raise ValueError("Dataset item 0 holds an empty dict as input.")
        return {k: _item_shape(v, str(k), scalar=True) for k, v in x.items()}
    return _item_shape(x, "X")


def _item_shape(value, name: str, scalar: bool = False) -> tuple:
    """The shape of one input ``name`` of item 0, refusing what no network takes.

    A scalar is refused unless ``scalar``: one entry of a dict (a length).
    """
    if isinstance(value, list | tuple):
        raise ValueError(
            f"Dataset item 0 holds input {name} as a {type(value).__name__}, which "
            "torch's collation would split into one tensor per entry: return an "
            "array or a tensor from __getitem__ (e.g. np.asarray(x)), or several "
            'inputs as a dict of them (e.g. {"image": x, "tabular": t}), which '
            "goes to the network's forward by name."
        )
    if isinstance(value, torch.Tensor):
        shape, dtype, real = tuple(value.shape), value.dtype, not value.is_complex()
    else:
        array = np.asarray(value)
        shape, dtype, real = array.shape, array.dtype, array.dtype.kind in "biuf"
    if not real:
        raise ValueError(
            f"Dataset item 0 holds input {name} of dtype {dtype}; expected real "
            "numbers (floats, or integers for token ids)."
        )
    if not shape and not scalar:
        raise ValueError(
            f"Dataset item 0 holds a scalar input {name}; an item is one sample, an "
            "array or tensor of shape (n_features,) or with more dimensions (a "
            "tuple or list item is read as (x, y): return a sample's numbers as "
            "an array, e.g. np.asarray(row), not as a list)."
        )
    return shape


def _check_n_features(estimator, shape, reset: bool, tokens: bool) -> None:
    """``n_features_in_`` of dataset inputs: the first axis of an item's input.

    Token ids (integer items of one axis) may come in other lengths, as
    arrays of them do.
    """
    n_features = shape[0] if isinstance(shape, tuple) else None
    if reset:
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(estimator, name):
                delattr(estimator, name)
        if n_features is not None:
            estimator.n_features_in_ = n_features
        return
    expected = getattr(estimator, "n_features_in_", None)
    if tokens or n_features is None or expected is None:
        return
    if n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but {type(estimator).__name__} is "
            f"expecting {expected} features as input."
        )


def carries_labels(dataset: Dataset) -> bool:
    """Whether the items are ``(x, y)``.

    A skorch dataset made without ``y`` gives a placeholder, not labels, also
    within a ``Subset`` or a ``ConcatDataset``, whose parts must agree.
    """
    if isinstance(dataset, Subset):
        return carries_labels(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        carried = {carries_labels(part) for part in dataset.datasets}
        if len(carried) > 1:
            raise ValueError(
                "Some datasets of the ConcatDataset give (x, y) items and others "
                "x alone: give them all labels, or pass y."
            )
        return carried.pop()
    if isinstance(dataset, SkorchDataset):
        return dataset.y is not None
    return split_item(dataset[0])[1] is not None


def dataset_targets(dataset: Dataset) -> np.ndarray | None:
    """The labels ``y`` of a dataset of ``(x, y)`` items, read in one pass.

    Returns None when its items carry no labels.
    """
    check_map_style(dataset)
    if not carries_labels(dataset):
        return None
    labels = (split_item(dataset[i])[1] for i in range(len(dataset)))
    # one by one: items of two sources may give tensors and NumPy values
    return np.stack([np.asarray(_as_array(label)) for label in labels])


def labels_key_hint(X) -> str:
    """Advice for dict inputs that hold the labels by key, else "".

    Hugging Face's datasets give items ``{"input_ids": ..., "labels": ...}``;
    skorch passes every key of a dict input to the network's ``forward``.
    """
    if isinstance(X, DictRows):
        X = X.X
    if isinstance(X, Mapping):
        inputs, advice = X, "pass them as y, and X without them"
    elif is_dataset(X) and len(X):
        inputs = split_item(X[0])[0]
        advice = "make the items (x, y) pairs, the labels out of x"
    else:
        return ""
    if not isinstance(inputs, Mapping):
        return ""
    keys = [key for key in ("labels", "label") if key in inputs]
    if not keys:
        return ""
    return (
        f" The inputs hold {keys[0]!r}, which skorch passes to the network's "
        f"forward with the other keys, not as y: {advice}."
    )


def given_or_item_labels(X, y):
    """``y``, or when it is None the labels of a dataset ``X``'s ``(x, y)`` items."""
    if is_dataset(X):
        check_map_style(X)
        if y is None:
            return dataset_targets(X)
        check_replaced_labels(X, y)
    return y


def check_replaced_labels(dataset: Dataset, y) -> None:
    """Raise a ValueError if ``y`` replaces items' second values unlike its labels.

    Items ``(x, v)`` are read as ``(x, y)``, ``y`` given replacing ``v``: a
    ``v`` of another shape than a label of ``y`` (axes of one aside) is likely
    an input (an attention mask beside token ids), which the network would
    not get. A skorch dataset's placeholder is no label.
    """
    _, own = split_item(dataset[0])
    if own is None or isinstance(own, Mapping):
        return
    own, label = np.shape(_as_array(own)), np.shape(np.asarray(y)[0])
    if _without_ones(own) == _without_ones(label):
        return
    try:
        carried = carries_labels(dataset)  # not a skorch dataset's placeholder
    except ValueError:  # parts with labels and parts without: y settles it
        return
    if carried:
        raise ValueError(
            f"The dataset's items are pairs (x, v) read as (x, y), whose second "
            f"value, of shape {own}, the y given replaces with labels of shape "
            f"{label}. If it is an input of the network (a TensorDataset(input_ids, "
            "attention_mask)), make the items ({'input_ids': ids, "
            "'attention_mask': mask}, y), or dicts of the inputs alone; if it is "
            "the label, pass y=None to use it."
        )


def labelled(X, y):
    """``X`` as skorch's ``fit`` and ``predict`` read it, with the labels ``y``.

    A dataset becomes items ``(x, y_i)``; arrays and dicts are returned as they are.
    """
    return LabelledDataset(X, y) if is_dataset(X) else X


def skorch_training_data(
    dataset: Dataset, y, convert: Callable[[np.ndarray], np.ndarray]
) -> tuple[Dataset, np.ndarray]:
    """``(X, y)`` for a skorch net's ``fit`` to train on ``dataset``.

    The labels, ``y`` if given (they replace those of the items) or else the
    items' own, are converted by ``convert`` as those given with arrays are
    (their dtype and shape as the net's loss takes them, read by position),
    and paired with the items' inputs.
    """
    if y is not None:
        check_replaced_labels(dataset, y)
    labels = dataset_targets(dataset) if y is None else y
    if labels is None:
        raise ValueError(
            "The skorch net is not fitted and the dataset's items carry no labels: "
            "make its items (x, y) pairs or pass y to fit() so that a clone of the "
            "net can be trained, or pass a fitted net." + labels_key_hint(dataset)
        )
    labels = convert(labels)
    return LabelledDataset(dataset, labels), labels


class LabelledDataset(Dataset):
    """The inputs of ``dataset`` with the labels ``y``: items ``(x_i, y_i)``."""

    def __init__(self, dataset: Dataset, y):
        if len(y) != len(dataset):
            raise ValueError(
                f"X has {len(dataset)} items but y has {len(y)} labels: pass one "
                "label per item, or y=None to use the labels of (x, y) items."
            )
        self.dataset, self.y = dataset, np.asarray(y)  # read by position

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return split_item(self.dataset[i])[0], self.y[i]

    def __getitems__(self, rows: list[int]) -> list:
        """Items ``rows`` at once, read so by the dataset if it can (a mapped file)."""
        items = read_items(self.dataset, rows)
        return [
            (split_item(item)[0], self.y[i])
            for item, i in zip(items, rows, strict=True)
        ]


def with_defaults(func: Callable, options: Mapping) -> dict:
    """The keyword arguments ``options`` of ``func``, its defaults for the others."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return defaults | dict(options)


def check_positive_int(value, name, allow_none=False):
    """Raise a ValueError unless ``value`` is a positive int (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")


def is_finite_number(value) -> bool:
    """Whether ``value`` is a finite real number (not a bool, nor a string)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
    )


def check_finite_number(value, name, positive=False):
    """Raise a ValueError unless ``value`` is a finite real number, >= 0 or > 0."""
    if not is_finite_number(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number; got {value!r}.")


def cv_partition(cv, X, y, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train, test)`` splits of ``cv``, checked to hold out each example once.

    ``cv`` is what :func:`sklearn.model_selection.check_cv` takes (stratified
    for class labels ``y``); ``X`` gives the number of examples, ``groups``
    the group of each for a group splitter.
    """
    rows = np.zeros((n_samples(X), 1))  # the splitters read the length alone
    if groups is not None and len(groups) != len(rows):
        raise ValueError(f"groups has {len(groups)} entries for {len(rows)} examples.")
    splitter = check_cv(cv, y, classifier=True)
    if isinstance(splitter, StratifiedKFold):
        largest = int(np.unique(y, return_counts=True)[1].max())
        if splitter.n_splits > largest:
            raise ValueError(
                f"{splitter.n_splits} stratified folds, but no class has that many "
                f"examples (the largest has {largest}): each fold needs one. Use "
                f"{largest} folds or fewer (cv=, or --cv on the command line)."
            )
    splits = list(splitter.split(rows, y, groups))
    tests = [test for _, test in splits]
    held = np.bincount(np.concatenate(tests), minlength=len(rows)) if tests else 0
    if not np.all(held == 1):
        raise ValueError(
            "cv must put every example in exactly one test fold (a partition, as "
            f"KFold does); its test folds hold {int(np.sum(held == 0))} examples "
            f"never and {int(np.sum(held > 1))} more than once."
        )
    _warn_of_unseen_classes(splits, y)
    return splits


def _warn_of_unseen_classes(splits, y) -> None:
    """Warn when the training part of some fold lacks a class of ``y``.

    That fold's network never sees the class: its held-out examples are
    misclassified and look mislabelled.
    """
    classes = np.unique(y)
    lacking = {
        fold: np.setdiff1d(classes, y[train]).tolist()
        for fold, (train, _) in enumerate(splits)
    }
    lacking = {fold: missing for fold, missing in lacking.items() if missing}
    if lacking:
        named = ", ".join(
            f"fold {f} lacks {m[:5]}" for f, m in list(lacking.items())[:5]
        )
        warnings.warn(
            "Training folds lack classes of y, which their networks never see: "
            f"the held-out examples of those classes look mislabelled ({named}). "
            "A class with fewer examples than folds cannot be in every training "
            "fold; otherwise use a stratified splitter (StratifiedKFold, which an "
            "int cv gives, or StratifiedGroupKFold for groups), or shuffle the "
            "examples before splitting.",
            UserWarning,
            stacklevel=3,
        )


def check_checkpoint_list(checkpoints) -> None:
    """Refuse one checkpoint given alone, with a short error.

    scikit-learn's check of the ``checkpoints`` parameter would print the
    whole ``state_dict``, tensor by tensor.
    """
    if isinstance(checkpoints, (Mapping, str, os.PathLike)):
        what = "state_dict" if isinstance(checkpoints, Mapping) else "path"
        raise InvalidParameterError(
            "checkpoints must be a list of checkpoints (state_dicts or paths to "
            f"them); got one {what}: pass checkpoints=[checkpoint]."
        )


def one_checkpoint_refused(function: Callable) -> Callable:
    """``function``, refusing one checkpoint alone before validating its parameters."""

    @functools.wraps(function)
    def checked(*args, **kwargs):
        check_checkpoint_list(kwargs.get("checkpoints"))
        return function(*args, **kwargs)

    return checked
