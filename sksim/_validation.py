"""Validation of network inputs at the scikit-learn boundary."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

from ._engine.inputs import check_finite, n_samples


def _as_array(X):
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


def check_net_input(X, estimator=None, reset=True, keep_tensors=False):
    """Validate inputs for a network: arrays of any rank, or a dict of them.

    Arrays keep integer dtypes (token ids) and may have any number of
    dimensions (images, sequences); NaN and infinity are refused. With an
    ``estimator``, ``n_features_in_`` is set (``reset=True``) or checked.
    With ``keep_tensors``, a tensor is checked and returned where it lives.
    """
    if isinstance(X, Mapping) and not issparse(X):  # a DOK matrix is a Mapping
        if not X:
            raise ValueError("A dict input needs at least one array.")
        checked = {
            k: check_array(
                _as_array(v), allow_nd=True, dtype="numeric", input_name=str(k)
            )
            for k, v in X.items()
        }
        n_samples(checked)
        return checked
    if keep_tensors and isinstance(X, torch.Tensor):
        return _check_tensor(X)
    kwargs = dict(allow_nd=True, dtype="numeric")
    if estimator is None:
        return check_array(_as_array(X), **kwargs)
    return validate_data(estimator, _as_array(X), reset=reset, **kwargs)


def _check_tensor(X: torch.Tensor) -> torch.Tensor:
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
    check_finite(X)
    return X.detach()


def check_positive_int(value, name, allow_none=False):
    """Raise a ValueError unless ``value`` is a positive int (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
