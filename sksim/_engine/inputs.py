"""Network inputs: arrays, tensors or dicts of them, sliced into device batches.

Floating inputs are cast to the module's floating dtype; integer inputs (token
ids) are passed as ``int64``. A dict is passed to ``forward`` as keyword
arguments, as skorch does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch


def n_samples(X) -> int:
    """Number of samples in ``X`` (the length of its first axis)."""
    if isinstance(X, Mapping):
        lengths = {len(v) for v in X.values()}
        if len(lengths) != 1:
            raise ValueError(
                "All arrays of a dict input must have the same number of samples; "
                f"got lengths {sorted(lengths)}."
            )
        return lengths.pop()
    return len(X)


def take(X, index):
    """Rows ``index`` (a slice or an integer array) of ``X``."""
    if isinstance(X, Mapping):
        return {k: v[index] for k, v in X.items()}
    return X[index]


def _to_tensor(a, device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``a`` that shares no memory with it.

    A network that works in place on its input (an in-place first
    activation) then cannot change the caller's data.
    """
    if isinstance(a, torch.Tensor):
        t, shared = a.detach(), True
    else:
        a = np.asarray(a)
        shared = a.flags.writeable  # else torch.tensor copies it
        t = torch.from_numpy(a) if shared else torch.tensor(a)
    if t.is_floating_point():
        dtype = float_dtype
    elif t.dtype == torch.bool:
        dtype = t.dtype
    else:
        dtype = torch.int64
    return t.to(device=device, dtype=dtype, copy=shared)


def to_tensor(X, device: torch.device, float_dtype: torch.dtype):
    """``X`` as tensors on ``device`` (a dict stays a dict)."""
    if isinstance(X, Mapping):
        return {k: _to_tensor(v, device, float_dtype) for k, v in X.items()}
    return _to_tensor(X, device, float_dtype)


def batches(
    X, batch_size: int, device: torch.device, float_dtype: torch.dtype
) -> Iterator[tuple[slice, object]]:
    """Yield ``(rows, batch)`` with the batch as tensors on ``device``."""
    n = n_samples(X)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        yield rows, to_tensor(take(X, rows), device, float_dtype)


def check_finite(X) -> None:
    """Raise a ValueError naming the problem if ``X`` holds NaN or infinity."""
    arrays = X.items() if isinstance(X, Mapping) else [("X", X)]
    for name, a in arrays:
        t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
        if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
            continue  # a finite sum is the fast common case
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"Input {name} contains NaN or infinity; the network's gradients "
                "would be undefined. Remove or impute those values first."
            )


def module_float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the module's parameters (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
