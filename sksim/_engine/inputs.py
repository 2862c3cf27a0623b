"""Network inputs: arrays, tensors, dicts of them or datasets, in device batches.

Floating inputs are cast to the module's floating dtype; integer inputs (token
ids) are passed as ``int64``. A dict is passed to ``forward`` as keyword
arguments, as skorch does.

A map-style :class:`torch.utils.data.Dataset` is read as skorch reads one: an
item is the input ``x`` (an array, a tensor or a dict of them) or a tuple
``(x, y)``, whose ``x`` is used. Slicing one gives a lightweight view;
only :func:`to_tensor` and :func:`batches` read items, collated by torch's
``default_collate`` one batch at a time.
"""

from __future__ import annotations

import contextlib
import mmap
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, default_collate, default_convert

from .budget import rows_that_fit

# Bytes of a dataset's inputs read at once where no batch size is given.
READ_BYTES = 2**26


def is_dataset(X) -> bool:
    """Whether ``X`` is a torch dataset (read item by item)."""
    return isinstance(X, Dataset)


def split_item(item) -> tuple[object, object]:
    """``(x, y)`` of a dataset item: a tuple ``(x, y)``, or ``x`` alone (y None)."""
    if isinstance(item, tuple | list):
        if not item:
            raise ValueError("A dataset item is an empty tuple; expected x or (x, y).")
        if len(item) > 2:
            raise ValueError(
                f"A dataset item holds {len(item)} values; items are x or (x, y), "
                "as skorch reads them: return a sample's numbers as an array or "
                "tensor, and several inputs of the network as a dict x of its "
                "forward's keyword arguments, e.g. items "
                "({'input_ids': ids, 'attention_mask': mask}, y)."
            )
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


class _Rows(Subset):
    """Rows of a dataset, taken by :func:`take`; errors name the original items."""

    def origin(self, i: int) -> int:
        """The number of row ``i`` in the dataset the rows were first taken from."""
        i = int(self.indices[i])
        return self.dataset.origin(i) if isinstance(self.dataset, _Rows) else i


def n_samples(X) -> int:
    """Number of samples in ``X`` (the length of its first axis, or of a dataset)."""
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
    """Rows ``index`` (a slice or an integer array) of ``X``; a dataset's lazily."""
    if isinstance(X, Mapping):
        return {k: v[index] for k, v in X.items()}
    if is_dataset(X):
        if isinstance(index, slice):
            return _Rows(X, range(len(X))[index])
        return _Rows(X, np.asarray(index).tolist())
    return X[index]


class _MappedArray(Dataset):
    """A memory-mapped array read as a dataset: item ``i`` is its row ``i``."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        # copies: torch warns of arrays it cannot write, as a read-only file's
        return np.array(self.array[i])

    def __getitems__(self, rows: list[int]) -> list[np.ndarray]:
        return list(np.asarray(self.array[np.asarray(rows, dtype=np.intp)]))


class DictRows(Dataset):
    """A dict of arrays read as a dataset: item ``i`` holds row ``i`` of each.

    Its items are the dicts of keyword inputs that skorch passes to the
    network's ``forward``.
    """

    def __init__(self, X: Mapping):
        n_samples(X)  # the arrays' lengths agree
        self.X = X

    def __len__(self) -> int:
        return n_samples(self.X)

    def __getitem__(self, i: int) -> dict:
        rows = {key: value[i] for key, value in self.X.items()}
        # arrays copied: torch warns of those it cannot write (a read-only file's)
        return {
            key: np.array(row) if isinstance(row, np.ndarray) else row
            for key, row in rows.items()
        }


def lazy_rows(X):
    """``X``, or an array in a memory-mapped file as a dataset of its rows.

    The rows that :func:`take` takes from it are then read from disk a batch
    at a time, as a dataset's, rather than copied into memory at once.
    """
    return _MappedArray(X) if _memory_mapped(X) else X


def _memory_mapped(X) -> bool:
    """Whether ``X`` is an array in a memory-mapped file, or a view of one."""
    while isinstance(X, np.ndarray):
        if isinstance(X, np.memmap):
            return True
        X = X.base
    return isinstance(X, mmap.mmap)


def _dtype(t: torch.Tensor, float_dtype: torch.dtype) -> torch.dtype:
    if t.is_floating_point():
        return float_dtype
    return t.dtype if t.dtype == torch.bool else torch.int64


def _to_tensor(a, device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``a`` that shares no memory with it.

    A network that works in place on its input (an in-place first
    activation) then cannot change the caller's data.
    """
    if isinstance(a, torch.Tensor):
        t, shared = a.detach(), True
    else:
        a = np.asarray(a)
        shared = _takeable(a)
        t = torch.from_numpy(a if shared else a.copy())
    return t.to(device=device, dtype=_dtype(t, float_dtype), copy=shared)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a NumPy array on the CPU; bfloat16, which NumPy lacks, as float32."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def to_tensor(X, device: torch.device, float_dtype: torch.dtype):
    """``X`` as tensors on ``device`` (a dict stays a dict; a dataset is read)."""
    if is_dataset(X):
        return _read(X, range(len(X)), device, float_dtype)
    if isinstance(X, Mapping):
        return {k: _to_tensor(v, device, float_dtype) for k, v in X.items()}
    return _to_tensor(X, device, float_dtype)


def batches(
    X, batch_size: int, device: torch.device, float_dtype: torch.dtype
) -> Iterator[tuple[slice, object]]:
    """Yield ``(rows, batch)`` with the batch as tensors on ``device``.

    A dataset's batches must hold inputs of one shape, that of the first.
    """
    n, shape = n_samples(X), None
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        if not is_dataset(X):
            yield rows, to_tensor(take(X, rows), device, float_dtype)
            continue
        batch = _read(X, range(rows.start, rows.stop), device, float_dtype)
        here = sample_shape_of(batch)
        shape = here if shape is None else shape
        if here != shape:
            first, last = _origin(X, rows.start), _origin(X, rows.stop - 1)
            raise ValueError(
                f"The inputs of dataset items {first} to {last} have the shape "
                f"{here} per item, and those before them {shape}: every item must "
                "hold inputs of one shape (pad sequences to one length)."
            )
        yield rows, batch


def read_batch_size(dataset: Dataset, max_bytes: float, float_dtype) -> int:
    """Items of ``dataset`` whose inputs, as tensors, take ``max_bytes`` at most.

    Measured on the first item; one item at least, all of them at most.
    """
    first = _read(dataset, [0], torch.device("cpu"), float_dtype)
    tensors = first.values() if isinstance(first, Mapping) else [first]
    item_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return rows_that_fit(max_bytes, item_bytes, len(dataset))


def sample_shape_of(batch) -> tuple | dict:
    """The shape of one sample of a batch of arrays or tensors (or a dict of them)."""
    if isinstance(batch, Mapping):
        return {key: tuple(value.shape[1:]) for key, value in batch.items()}
    return tuple(batch.shape[1:])


def read_items(dataset: Dataset, rows: Sequence[int]) -> list:
    """The items ``rows`` of ``dataset``, through ``__getitems__`` if it has one."""
    getitems = getattr(dataset, "__getitems__", None)
    if callable(getitems):
        return list(getitems(list(rows)))
    return [dataset[i] for i in rows]


def _takeable(a: np.ndarray) -> bool:
    """Whether torch can take ``a``'s memory: not read-only, not a reversed view."""
    return a.flags.writeable and min(a.strides, default=0) >= 0


def _converted(x):
    """An item's input as tensors, as ``default_convert`` makes them.

    Arrays whose memory torch cannot take are copied first: a flipped view
    ``x[::-1]``, a read-only memory map.
    """
    if isinstance(x, Mapping):
        return {k: _converted(v) for k, v in x.items()}
    if isinstance(x, np.ndarray) and not _takeable(x):
        x = x.copy()
    return default_convert(x)


def _origin(dataset: Dataset, i: int) -> int:
    return dataset.origin(i) if isinstance(dataset, _Rows) else i


def _read(
    dataset: Dataset,
    rows: Sequence[int],
    device: torch.device,
    float_dtype: torch.dtype,
):
    """The inputs of items ``rows``, collated into a batch of tensors on ``device``.

    Floating values are checked to be finite; the error names the items.
    """
    inputs = [split_item(item)[0] for item in read_items(dataset, rows)]
    try:
        # converted one by one: items of two sources may mix arrays and tensors
        batch = default_collate([_converted(x) for x in inputs])
    except (RuntimeError, TypeError) as error:
        first, last = _origin(dataset, rows[0]), _origin(dataset, rows[-1])
        raise ValueError(
            f"The inputs of dataset items {first} to {last} cannot be stacked into "
            f"a batch: {str(error).splitlines()[0].rstrip('.')}. Every item must "
            "hold x (or (x, y)) as numeric arrays or tensors of one shape (pad "
            "sequences to one length)."
        ) from error
    del inputs
    tensors = batch.items() if isinstance(batch, Mapping) else [("X", batch)]
    for name, t in tensors:
        _check_finite_items(t, name, dataset, rows)
    if isinstance(batch, Mapping):
        return {k: v.to(device, _dtype(v, float_dtype)) for k, v in batch.items()}
    return batch.to(device, _dtype(batch, float_dtype))


def _check_finite_items(
    t: torch.Tensor, name: str, dataset: Dataset, rows: Sequence[int]
) -> None:
    """Raise a ValueError naming the items whose input ``name`` is not finite.

    ``t`` is the batch of items ``rows`` of ``dataset``.
    """
    bad = _non_finite_rows(t, name)
    if bad is not None and bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        named = [_origin(dataset, rows[i]) for i in first]
        raise ValueError(
            f"Input {name} contains NaN or infinity in dataset items {named}"
            f"{' and more' if int(bad.sum()) > len(named) else ''}; the network's "
            "outputs would be undefined. Remove or impute those values first."
        )


def _non_finite_rows(a, name: str = "X") -> np.ndarray | None:
    """A mask of the rows of ``a`` holding NaN or infinity; None if none can.

    An input named as a mask (``src_key_padding_mask``) may hold -inf, as
    torch's additive attention masks do. NumPy arrays are read as such:
    torch would warn that a read-only one (a memory map, a pandas column) is
    not writable.
    """
    additive = "mask" in name.lower()
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point() or bool(torch.isfinite(a.sum())):
            return None  # a finite sum is the fast common case
        finite = torch.isfinite(a) | (additive & (a == -torch.inf))
        return (~finite.reshape(len(a), -1).all(dim=1)).cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind != "f" or np.isfinite(a.sum()):
        return None
    finite = np.isfinite(a) | (additive & (a == -np.inf))
    return ~finite.reshape(len(a), -1).all(axis=1)


def check_finite(X, name: str = "X") -> None:
    """Raise a ValueError naming the rows if ``X`` (``name``) holds NaN or infinity."""
    arrays = X.items() if isinstance(X, Mapping) else [(name, X)]
    for name, a in arrays:
        bad = _non_finite_rows(a, name)
        if bad is not None and bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            more = " and more" if int(bad.sum()) > len(rows) else ""
            raise ValueError(
                f"Input {name} contains NaN or infinity in rows {rows}{more}; the "
                "network's outputs would be undefined. Remove or impute those "
                "values first."
            )


def module_float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the module's parameters (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@contextlib.contextmanager
def explained_failures(shape: Callable[[], object]) -> Iterator[None]:
    """A network's RuntimeError inside as a ValueError naming its inputs' shape.

    ``shape()`` gives the inputs' shape per sample (read only on a failure),
    with advice where torch's message is about their shape or dtype; running
    out of memory is raised as it is. For a network's first pass over the
    inputs, where such a failure means that it cannot take them.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        text = str(error).splitlines()[0]
        advice = ""
        if re.search(r"shape|size|dimension|channel|batched", text, re.IGNORECASE):
            advice = ": pass inputs shaped as the network expects"
        elif re.search(
            r"dtype|scalar type|type .* should be the same", text, re.IGNORECASE
        ):
            advice = ": pass inputs of the dtype the network expects"
        raise ValueError(
            f"The network fails on inputs of shape {shape()} per sample "
            f"({text}){advice}."
        ) from error
