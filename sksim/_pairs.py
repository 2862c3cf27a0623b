"""Pairs of inputs known to be similar, for the similarity regulariser.

Three sources of pairs feed :class:`sksim.SimilarityRegularizedNet`, whose
term on the pairs follows Charpiat et al. (NeurIPS 2019, section 4):

* same-class pairs, sampled by :func:`same_class_partners`;
* explicit pairs ``(i, j)``, attached to the data by :func:`with_pairs` so that
  they travel through skorch's datasets, splits and batches with their rows;
* an augmentation callable giving each input a partner, applied batch-wise.

Explicit pairs are stored as a :class:`skorch.helper.SliceDict`: the original
input under :data:`PAIR_INPUT` (or the keys of a dict input), the partner
inputs of every row under :data:`PAIR_PARTNER` with shape ``(n, k, ...)``, and
a boolean ``(n, k)`` mask under :data:`PAIR_MASK` telling which of the ``k``
partner slots hold a pair, and under :data:`PAIR_NUMBER` the number of each
pair in the list given. :func:`split_pair_data` takes a batch apart again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from skorch.helper import SliceDict

from ._engine.inputs import n_samples, take

PAIR_INPUT = "similarity_input"
PAIR_PARTNER = "similarity_partner"
PAIR_MASK = "similarity_pair_mask"
PAIR_NUMBER = "similarity_pair_number"
_RESERVED = (PAIR_INPUT, PAIR_PARTNER, PAIR_MASK, PAIR_NUMBER)


def _partner_key(key: str) -> str:
    return f"{PAIR_PARTNER}:{key}"


def check_pairs(pairs: ArrayLike, n: int) -> np.ndarray:
    """``pairs`` as an int64 array of shape ``(n_pairs, 2)`` indexing ``n`` rows.

    Raises
    ------
    ValueError
        If ``pairs`` is not a non-empty integer array of that shape, holds an
        index outside ``[0, n)``, or pairs a sample with itself.
    """
    arr = np.asarray(pairs.cpu() if isinstance(pairs, torch.Tensor) else pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(
            "pairs must be a non-empty integer array of shape (n_pairs, 2), one "
            f"row (i, j) per pair of similar samples; got shape {arr.shape}."
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(f"pairs must hold integer row indices; got dtype {arr.dtype}.")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(
            f"pairs hold indices outside [0, {n}) for X with {n} samples: "
            f"{int(bad.any(axis=1).sum())} pair(s), the first is pairs[{row}] = "
            f"{arr[row].tolist()}."
        )
    same = arr[:, 0] == arr[:, 1]
    if same.any():
        row = int(np.flatnonzero(same)[0])
        raise ValueError(
            f"pairs[{row}] = {arr[row].tolist()} pairs a sample with itself; its "
            "gradient cosine is always 1 and carries no information. Remove it."
        )
    return arr.astype(np.int64)


def _attach(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign each pair to one of its two rows, balancing the rows' loads.

    Returns ``partner`` of shape ``(n, k)`` (row index of the partner, 0 where
    unused), ``mask`` of shape ``(n, k)``, with ``k`` the largest load, and
    ``number`` of shape ``(n, k)`` (the row of ``pairs``, -1 where unused).
    """
    load = np.zeros(n, dtype=np.int64)
    anchors = np.empty(len(pairs), dtype=np.int64)
    slots = np.empty(len(pairs), dtype=np.int64)
    for p, (i, j) in enumerate(pairs.tolist()):
        anchor = j if load[j] < load[i] else i
        anchors[p], slots[p] = anchor, load[anchor]
        load[anchor] += 1
    others = np.where(anchors == pairs[:, 0], pairs[:, 1], pairs[:, 0])
    partner = np.zeros((n, int(load.max())), dtype=np.int64)
    mask = np.zeros((n, int(load.max())), dtype=bool)
    number = np.full((n, int(load.max())), -1, dtype=np.int64)
    partner[anchors, slots] = others
    mask[anchors, slots] = True
    number[anchors, slots] = np.arange(len(pairs))
    return partner, mask, number


def _as_sliceable(a):
    return a if isinstance(a, torch.Tensor) else np.asarray(a)


def with_pairs(X: ArrayLike | Mapping[str, ArrayLike], pairs: ArrayLike) -> SliceDict:
    """Attach explicit pairs of similar samples to ``X``.

    The result is a :class:`skorch.helper.SliceDict` that can be passed to
    ``fit`` of a :class:`~sksim.SimilarityRegularizedNet` with
    ``similarity_pairs="given"``. Each pair travels with one of its two rows
    (the one with fewer pairs so far) together with a copy of its partner's
    input, so that skorch's batching, its validation split and scikit-learn's
    cross-validation keep every pair aligned with its data.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...), tensor, or dict of them
        The inputs, as the network takes them.
    pairs : array-like of int of shape (n_pairs, 2)
        Row indices ``(i, j)`` of samples known to be similar. Order inside a
        pair does not matter to the cosine, which is symmetric; the
        ``"posnegflat"`` readout takes the class of the row that carries the
        pair (see above), so a pair of two labels depends on which carries it.

    Returns
    -------
    X_pairs : SliceDict
        ``X`` (under ``"similarity_input"``, or its own keys for a dict), the
        partner inputs of shape ``(n_samples, k, ...)``, a boolean mask of
        shape ``(n_samples, k)`` and the number of each pair in ``pairs``
        (-1 where the mask is off); ``k`` is the largest number of pairs
        carried by one row. Memory grows as ``k`` copies of ``X``.

    Notes
    -----
    When skorch's ``train_split`` or a cross-validation split separates the two
    rows of a pair, the pair stays with the row that carries it, partner input
    included. Split the data first and attach pairs to each part when a pair
    must never straddle a split.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.regularized import with_pairs
    >>> Xp = with_pairs(np.arange(8.0).reshape(4, 2), [[0, 1], [0, 2], [0, 3]])
    >>> Xp["similarity_partner"].shape, int(Xp["similarity_pair_mask"].sum())
    ((4, 1, 2), 3)
    """
    if isinstance(X, Mapping) and any(k in X for k in _RESERVED):
        raise ValueError(
            "X already carries pairs (it has keys reserved by with_pairs); attach "
            "pairs once, to the plain input."
        )
    n = n_samples(X)
    partner, mask, number = _attach(check_pairs(pairs, n), n)
    if isinstance(X, Mapping):
        clash = [k for k in X if str(k).startswith(PAIR_PARTNER)]
        if clash:
            raise ValueError(
                f"Input keys {clash} start with the reserved prefix "
                f"{PAIR_PARTNER!r}; rename them."
            )
        data = {k: _as_sliceable(v) for k, v in X.items()}
        data.update({_partner_key(k): take(v, partner) for k, v in data.copy().items()})
    else:
        X = _as_sliceable(X)
        index = torch.from_numpy(partner) if isinstance(X, torch.Tensor) else partner
        data = {PAIR_INPUT: X, PAIR_PARTNER: X[index]}
    tensors = any(isinstance(v, torch.Tensor) for v in data.values())
    data[PAIR_MASK] = torch.from_numpy(mask) if tensors else mask
    data[PAIR_NUMBER] = torch.from_numpy(number) if tensors else number
    return SliceDict(**data)


def is_pair_data(X: Any) -> bool:
    """Whether ``X`` (a dataset or a batch) was built by :func:`with_pairs`."""
    return isinstance(X, Mapping) and PAIR_MASK in X


def split_pair_data(X: Any) -> tuple[Any, Any, Any]:
    """Split a (batch of) pair data into ``(inputs, partners, mask)``.

    Inputs without attached pairs come back as ``(X, None, None)``; ``inputs``
    and ``partners`` have the structure of the original input (array or dict).
    """
    if not is_pair_data(X):
        return X, None, None
    if PAIR_INPUT in X:
        return X[PAIR_INPUT], X[PAIR_PARTNER], X[PAIR_MASK]
    prefix = _partner_key("")
    inputs = {
        k: v
        for k, v in X.items()
        if k not in _RESERVED and not (str(k).startswith(prefix))
    }
    partners = {k: X[_partner_key(k)] for k in inputs}
    return inputs, partners, X[PAIR_MASK]


def carried_pair_numbers(X: Any) -> np.ndarray | None:
    """The numbers of the pairs ``X``'s rows carry, row by row, then slot by slot.

    None for data without pair numbers (attached by an older sksim).
    """
    if not is_pair_data(X) or PAIR_NUMBER not in X:
        return None
    mask, number = (np.asarray(X[key]) for key in (PAIR_MASK, PAIR_NUMBER))
    return number[mask]


def strip_pairs(X: Any) -> Any:
    """The network input of ``X``, without any attached pairs."""
    return split_pair_data(X)[0]


def check_labels(y: ArrayLike | None, what: str) -> torch.Tensor:
    """``y`` as a 1-d int64 tensor of class labels, or a ValueError for ``what``.

    int64 whatever integers ``y`` holds: torch reads a uint8 tensor used as
    an index as a mask.
    """
    if y is None:
        raise ValueError(f"{what} needs class labels y; none were given.")
    if not isinstance(y, torch.Tensor):
        y = np.asarray(y)
        if y.dtype.kind in "biu":
            y = torch.from_numpy(np.ascontiguousarray(y))
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if (
        isinstance(y, np.ndarray)
        or y.ndim != 1
        or y.is_floating_point()
        or y.is_complex()
        or y.dtype == torch.bool
    ):
        raise ValueError(
            f"{what} needs integer class labels, one per sample; got y of dtype "
            f"{y.dtype} and shape {tuple(y.shape)}. For regression targets, pass "
            'similarity_pairs="given" with with_pairs(X, pairs), or an augment '
            'callable, and similarity_readout="random" or a callable.'
        )
    return y.long()


def same_class_partners(
    y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw, for every sample, a partner of the same class among the others.

    The partner of sample ``i`` is uniform over the other samples sharing its
    label. A sample alone in its class has no partner and is left out, so a
    set where every class has a single member yields no pair at all. Runs in
    ``O(n log n)`` without building an ``n x n`` matrix.

    Parameters
    ----------
    y : Tensor of shape (n,)
        Integer class labels.
    generator : torch.Generator, optional
        Random source; None uses torch's global generator.

    Returns
    -------
    anchor, partner : Tensor of shape (m,)
        Row indices of the ``m`` pairs (``m`` = number of samples whose class has
        at least two members).
    """
    n = y.shape[0]
    order = torch.argsort(y, stable=True)
    _, inverse, counts = torch.unique_consecutive(
        y[order], return_inverse=True, return_counts=True
    )
    starts = torch.cumsum(counts, 0) - counts
    start, size = starts[inverse], counts[inverse]
    position = torch.arange(n, device=y.device) - start
    u = torch.rand(n, generator=generator, device=y.device)
    offset = 1 + torch.floor(u * (size - 1)).long().clamp_max(size - 2)
    valid = size > 1
    partner_sorted = start + (position + offset) % size
    return order[valid], order[partner_sorted[valid]]
