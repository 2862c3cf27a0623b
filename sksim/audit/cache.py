"""Resuming an audit: finished folds and analyses saved as they complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import torch
from numpy.typing import ArrayLike
from sklearn.base import clone
from torch.utils.data import Dataset

from .. import __version__
from .._engine.inputs import (
    READ_BYTES,
    batches,
    is_dataset,
    read_batch_size,
    split_item,
)
from .._net import _unwrap
from .._typing import NetLike
from .prefit import weights_fingerprint

# The layout of the saved pieces; a change of layout names new files, so that
# pieces saved by an older layout are recomputed rather than misread.
CACHE_FORMAT = 5
# A partial write of a piece this old was cut short (a killed process): removed
# when the piece is saved again.
STALE_SECONDS = 3600


class _ContentHasher(joblib.hashing.Hasher):
    """joblib's hasher, with tensors hashed by their content.

    Pickled, a tensor names its storage by its address, which differs between
    two copies of one module.
    """

    def save(self, obj):
        if isinstance(obj, torch.Tensor):
            data = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            obj = str(obj.dtype), tuple(obj.shape), joblib.hash(data.numpy())
        super().save(obj)


def net_fingerprint(net: NetLike) -> str:
    """A hash of the unfitted net: its class and every parameter.

    Modules passed as instances enter with their weights; a fitted net hashes
    as its clone, since the audit retrains it on every fold.
    """
    try:
        return _ContentHasher().hash(clone(_unwrap(net)))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(
            "cache= names its files by a hash of the net, which must pickle; "
            f"this one does not ({error}). Define its module and callbacks at "
            "the top level of an importable module, or audit without a cache."
        ) from error


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the inputs of a dataset's items, read in batches of 64 MiB.

    By content: a pickled dataset of tensors hashes differently every time;
    with the dtypes of its first item's inputs, which the values read as
    float64 lose.
    """
    hashes = [_dtypes(split_item(dataset[0])[0])]
    batch_size = read_batch_size(dataset, READ_BYTES, torch.float64)
    for _, batch in batches(dataset, batch_size, torch.device("cpu"), torch.float64):
        if isinstance(batch, Mapping):
            batch = {key: value.numpy() for key, value in sorted(batch.items())}
        else:
            batch = batch.numpy()
        hashes.append(joblib.hash(batch))
    return joblib.hash(hashes)


def _dtypes(x) -> list[str]:
    """The dtype of an item's input, or of each of its named inputs."""
    values = [x[key] for key in sorted(x)] if isinstance(x, Mapping) else [x]
    return [str(getattr(v, "dtype", type(v).__name__)) for v in values]


def _read_checkpoints(value: Any, hashes: dict) -> Any:
    """``value`` with the files of its options' ``checkpoints`` as their bytes' hash.

    A checkpoint given by path enters by its content, not by its name, so
    that a file overwritten with other weights names other pieces. ``hashes``
    keeps each file's hash by its path, size and modification time, so that
    it is read once.
    """
    if isinstance(value, Mapping):
        return {
            key: _file_contents(item, hashes)
            if key == "checkpoints"
            else _read_checkpoints(item, hashes)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_read_checkpoints(item, hashes) for item in value)
    return value


def _file_contents(checkpoints: Any, hashes: dict) -> Any:
    """The checkpoints, each path as ``(path, hash of its bytes)``."""
    if not isinstance(checkpoints, list | tuple):
        return checkpoints  # refused by the analysis, which says why
    read = []
    for checkpoint in checkpoints:
        if isinstance(checkpoint, str | os.PathLike) and os.path.isfile(checkpoint):
            path, stat = os.fspath(checkpoint), os.stat(checkpoint)
            seen = path, stat.st_size, stat.st_mtime_ns
            if seen not in hashes:
                digest = hashlib.blake2b(digest_size=16)
                with open(path, "rb") as file:
                    for block in iter(lambda: file.read(2**24), b""):
                        digest.update(block)
                hashes[seen] = digest.hexdigest()
            checkpoint = path, hashes[seen]
        read.append(checkpoint)
    return read


class AuditCache:
    """Pickled pieces of an audit in a folder, each named by what it depends on.

    A piece (a trained fold, or one analysis of one fold) is a file whose name
    hashes the sksim version and cache format, the data, the net, the seed and
    the arguments the piece depends on: a rerun with the same arguments loads
    it, a changed argument or data names another file, so it is computed
    again.

    Parameters
    ----------
    folder : str, path-like or None
        Where the pieces are kept (created if missing); None caches nothing.
    arrays : tuple of ndarray or Dataset
        The audited data (``X, y``, then ``X_test, y_test`` when prefit); a
        dataset enters by :func:`dataset_fingerprint`.
    net : skorch net, FrozenEstimator or torch.nn.Module
        The audited net.
    random_state : int or None
        The audit's seed.
    prefit : bool, default=False
        Whether the net is audited as it is (its weights enter the hash)
        rather than retrained on every fold (its parameters enter the hash).
    """

    def __init__(
        self,
        folder: str | os.PathLike | None,
        arrays: tuple[ArrayLike, ...],
        net: NetLike,
        random_state: int | None,
        prefit: bool = False,
    ) -> None:
        self.folder = None if folder is None else Path(folder)
        self.loaded, self.saved = 0, 0
        self._hashes = {}  # of the checkpoint files the options name
        if self.folder is None:
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                "The audit's cache (cache=, --cache) is a folder for its pieces; "
                f"{folder} is a file."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        fingerprint = weights_fingerprint(net) if prefit else net_fingerprint(net)
        data = tuple(dataset_fingerprint(a) if is_dataset(a) else a for a in arrays)
        self.base = joblib.hash(
            (__version__, CACHE_FORMAT, data, fingerprint, random_state)
        )

    def key(self, *parts: Any) -> str | None:
        """The file name (without suffix) of the piece ``parts`` describe."""
        if self.folder is None:
            return None
        try:
            return joblib.hash((self.base, _read_checkpoints(parts, self._hashes)))
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise TypeError(
                "cache= names its files by a hash of the audit's arguments, which "
                f"must pickle; these do not ({type(error).__name__}: a lambda or "
                "a function defined inside another?). Define functions given in "
                "options at the top level of an importable module, or audit "
                "without a cache."
            ) from None

    def _path(self, key):
        return self.folder / f"{key}.pkl"

    def load(self, key: str | None) -> Any:
        """The piece saved under ``key``, or None (absent, unreadable or no cache)."""
        if key is None or not self._path(key).is_file():
            return None
        try:
            value = joblib.load(self._path(key))
        except Exception:  # an unreadable piece is computed again
            return None
        self.loaded += 1
        return value

    def save(self, key: str | None, value: Any, what: str) -> None:
        """Write ``value`` under ``key`` atomically; warn when it cannot be pickled.

        ``what`` names the piece in the warning. Partial writes of the piece
        older than :data:`STALE_SECONDS` (of a process killed while it wrote)
        are removed.
        """
        if key is None:
            return
        temporary = self.folder / f"{key}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "xb") as file:  # as any file: the umask sets its mode
                joblib.dump(value, file)
            os.replace(temporary, self._path(key))
        except (pickle.PicklingError, AttributeError, TypeError, OSError) as error:
            warnings.warn(  # a folder not writable, a full disk: the audit goes on
                f"Could not save {what} to the cache ({error}); a rerun computes "
                "it again.",
                UserWarning,
                stacklevel=3,
            )
            return
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        self.saved += 1
        for partial in self.folder.glob(f"{key}.*.tmp"):
            with contextlib.suppress(OSError):  # gone, or another process's
                if time.time() - partial.stat().st_mtime > STALE_SECONDS:
                    partial.unlink()

    def summary(self) -> dict[str, Any]:
        """The folder and the numbers of pieces loaded and saved, for metadata."""
        return dict(folder=str(self.folder), loaded=self.loaded, saved=self.saved)
