"""The data of ``sksim audit``: bundled datasets, ``.npz`` or ``.npy`` files, labels."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import MAGIC_PREFIX

# How progress messages are printed (to stderr unless --quiet).
Say = Callable[[str], None]

DATASETS = ("digits", "iris", "wine", "breast_cancer")
ZIP_MAGIC = b"PK\x03\x04"


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled scikit-learn dataset as float32 inputs and integer labels.

    ``digits`` gives 8x8 images of shape ``(n, 1, 8, 8)`` scaled to [0, 1];
    the tabular ones are standardised per feature.
    """
    from sklearn import datasets

    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}; got {name!r}.")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    if name == "digits":
        X = (X / 16.0).reshape(-1, 1, 8, 8)
    else:
        X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X.astype(np.float32), y.astype(np.int64)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray | dict, np.ndarray]:
    """The inputs and the labels ``y`` of an ``.npz`` file, as saved.

    The inputs are its array ``X``, or without one, its other arrays (``y``
    and ``groups`` aside) as a dict: the keyword inputs of the network's
    ``forward``, such as ``input_ids`` and ``attention_mask``. Raises a
    ValueError naming the problem when the file is not an ``.npz`` archive,
    is truncated or corrupt, or lacks inputs or ``y``.
    """
    with open(path, "rb") as handle:
        magic = handle.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:
        raise ValueError(
            f"{path} is not an .npz file (a zip archive of arrays): save the "
            "inputs and labels with np.savez(path, X=X, y=y)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [key for key in data.files if key != "groups"]
            if "X" in names:  # the other arrays are not inputs
                names = [key for key in ("X", "y") if key in names]
            arrays = {key: data[key] for key in names}
    except Exception as error:  # whatever a damaged archive raises
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path} holds an array of Python objects (dtype object, e.g. a "
                "pandas column's .values), which is not read for safety: save it "
                "as numbers or strings, e.g. np.savez(path, X=X, y=y.astype(str))."
            ) from None
        raise ValueError(
            f"{path} could not be read as an .npz file; is it truncated or "
            f"damaged? ({type(error).__name__}: {error})"
        ) from error
    y = arrays.pop("y", None)
    if "arr_0" in arrays:
        raise ValueError(
            f"{path} holds arrays saved without a name (arr_0, ...): save the "
            "inputs as X, np.savez(path, X=X, y=y)."
        )
    if y is None or not arrays:
        raise ValueError(
            f"{path} lacks {'the labels y' if y is None else 'inputs'}: save the "
            "inputs as X and the labels as y, e.g. np.savez(path, X=X, y=y), or "
            "several inputs of the network by the names its forward takes, e.g. "
            "np.savez(path, input_ids=ids, attention_mask=mask, y=y)."
        )
    return arrays["X"] if "X" in arrays else arrays, y


def prepare_inputs(X: np.ndarray | dict) -> np.ndarray | dict:
    """``X`` as float32, the dtype of the networks' weights.

    Integers (such as ``uint8`` pixels) and booleans are cast as they are,
    without rescaling. The inputs of a dict keep integer and boolean dtypes
    (token ids, masks), their floating ones cast to float32; each holds one
    sample per row.
    """
    if isinstance(X, dict):
        return {name: _prepared_input(value, name) for name, value in X.items()}
    if X.ndim < 2:
        raise ValueError(
            f"X must hold one sample per row: its shape is {X.shape}, it needs "
            "at least two axes (samples, features...)."
        )
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"X must hold numbers; its dtype is {X.dtype}.")
    if np.iscomplexobj(X):
        raise ValueError("X must hold real numbers; it is complex.")
    return X.astype(np.float32, copy=False)


def _prepared_input(value: np.ndarray, name: str) -> np.ndarray:
    """One input of a dict: numbers, one sample per row, float32 if floating."""
    numbers = np.issubdtype(value.dtype, np.number) or value.dtype == bool
    if value.ndim < 1 or not numbers:
        raise ValueError(
            f"input {name} must hold numbers, one sample per row; its shape is "
            f"{value.shape} and its dtype {value.dtype}."
        )
    if np.iscomplexobj(value):
        raise ValueError(f"input {name} must hold real numbers; it is complex.")
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32, copy=False)
    return value


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class labels as ``0 .. n_classes - 1`` (the rows of the logits).

    Returns the codes and the sorted original labels.
    """
    if y.ndim != 1:
        raise ValueError(f"y must hold one label per sample; its shape is {y.shape}.")
    if not len(y):
        raise ValueError("y holds no examples: give data of at least two classes.")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"y holds a single class ({classes[0]}): the audit analyses a "
            "classifier, and its analyses need at least two classes."
        )
    return codes.astype(np.int64), classes


def plant_label_noise(
    y: np.ndarray, rate: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with a share ``rate`` of its labels flipped to another class.

    The flipped rows are drawn at random without replacement, each new label
    uniformly among the other classes of ``y`` (those it holds: codes kept
    with --n-classes or --classes may leave some out).

    Returns
    -------
    noisy : ndarray
        The labels with the flips.
    flipped : ndarray
        Sorted rows whose label was flipped.
    """
    classes = np.unique(y)
    rng = np.random.RandomState(seed)
    flipped = np.sort(rng.choice(len(y), int(round(rate * len(y))), replace=False))
    shift = rng.randint(1, len(classes), len(flipped))
    noisy = y.copy()
    noisy[flipped] = classes[
        (np.searchsorted(classes, y[flipped]) + shift) % len(classes)
    ]
    return noisy, flipped


@dataclass
class Data:
    """What the audit runs on.

    ``X`` (float32) and ``y`` (codes ``0 .. n_classes - 1``, or continuous
    targets), their source, the task, with --test-data the test split, the
    labels the codes stand for when they were encoded, and with --groups the
    group of each example.
    """

    X: np.ndarray
    y: np.ndarray
    source: str
    task: str = "classification"
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] | None = None
    groups: np.ndarray | None = None

    @property
    def n_outputs(self) -> int:
        """Outputs the codes need (the largest + 1), 1 for a regression."""
        if self.task == "regression":
            return 1
        labels = [self.y] if self.y_test is None else [self.y, self.y_test]
        return int(np.concatenate(labels).max()) + 1


def load_npy_folder(path: str | os.PathLike) -> tuple[np.ndarray | dict, np.ndarray]:
    """The inputs (memory-mapped) and the labels ``y`` of a folder of ``.npy`` files.

    The inputs are ``X.npy``, or without one, the folder's other ``.npy``
    files (``groups.npy`` aside) as a dict named by their stems, as
    :func:`load_npz` reads an archive. They are read from disk batch by batch
    as the audit needs them, so a training set larger than memory can be
    audited; float32 inputs are never copied.
    """
    folder = Path(path)
    files = {file.stem: file for file in sorted(folder.glob("*.npy"))}
    names = ["X"] if "X" in files else sorted(set(files) - {"y", "groups"})
    if "y" not in files or not names:
        missing = "y.npy" if "y" not in files else "inputs"
        raise ValueError(
            f"{path} is a folder without {missing}: save "
            "the inputs and labels with np.save(folder / 'X.npy', X) and "
            "np.save(folder / 'y.npy', y), or several inputs of the network by "
            "the names its forward takes, e.g. np.save(folder / 'input_ids.npy', "
            "ids) and np.save(folder / 'attention_mask.npy', mask)."
        )
    inputs = {name: _load_npy(files[name], mmap_mode="r") for name in names}
    y = _load_npy(files["y"])
    return inputs["X"] if "X" in inputs else inputs, y


def _load_npy(file: Path, mmap_mode: str | None = None) -> np.ndarray:
    """The array of a ``.npy`` file, or a ValueError naming it."""
    with open(file, "rb") as opened:
        start = opened.read(len(MAGIC_PREFIX))
        if not start:
            raise ValueError(f"{file} is empty: write it again (np.save).")
        if start != MAGIC_PREFIX:
            raise ValueError(
                f"{file} is not a .npy file (it lacks the header that holds the "
                "array's dtype and shape): save arrays with np.save, or with "
                "np.lib.format.open_memmap for one written in parts; np.memmap "
                "and tofile write the values alone."
            )
    try:
        return np.load(file, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise ValueError(f"{file} could not be read as a .npy file: {error}") from None


def load_groups(path: str | os.PathLike) -> np.ndarray:
    """The array ``groups`` of an ``.npz`` file, or ``groups.npy`` of a folder."""
    folder = Path(path).is_dir()
    where = Path(path) / "groups.npy" if folder else Path(path)
    try:
        if folder:
            groups = np.load(where, allow_pickle=False)
        else:
            with np.load(where, allow_pickle=False) as data:
                groups = data["groups"]
    except (OSError, KeyError, ValueError, EOFError):
        raise ValueError(
            f"--groups reads the group of each example from {where}, which has "
            "none that can be read: save them as numbers or strings, e.g. "
            "np.savez(path, X=X, y=y, groups=groups) or np.save(folder / "
            "'groups.npy', groups)."
        ) from None
    if groups.ndim != 1:
        raise ValueError(
            f"--groups needs one group per example, an array of shape (n,); the "
            f"one of {where} has shape {groups.shape}."
        )
    return groups


def read_npz(path: str | os.PathLike, say: Say) -> tuple[np.ndarray | dict, np.ndarray]:
    """Inputs and targets of an ``.npz`` file or a folder of ``.npy``.

    The inputs as :func:`prepare_inputs` makes them; labels saved as bytes
    (as ``np.savez`` keeps them) as text.
    """
    X, y = load_npy_folder(path) if Path(path).is_dir() else load_npz(path)
    if y.ndim == 2 and y.shape[1] == 1:  # a column, as audit() takes it
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"The audit takes one target per example, y of shape (n,) or (n, 1); "
            f"the y of {path} has shape {y.shape}: audit one target (a column of "
            "y) at a time."
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        rows = np.flatnonzero(~np.isfinite(y))
        raise ValueError(
            f"y holds NaN or infinity in {len(rows)} row(s) of {path}, the first "
            f"{rows[:5].tolist()}: leave those examples out of the audit."
        )
    if y.dtype.kind == "S":
        y = np.char.decode(y)
    if isinstance(X, dict):
        return prepare_inputs(X), y
    dtype, X = X.dtype, prepare_inputs(X)
    if dtype != X.dtype:
        say(f"X cast from {dtype} to float32 ({path})")
    return X, y


def is_continuous(y: np.ndarray) -> bool:
    """Whether ``y`` holds continuous targets rather than class labels."""
    from sklearn.utils.multiclass import type_of_target

    return type_of_target(y) in ("continuous", "continuous-multioutput")


def encode_splits(
    y: np.ndarray,
    y_test: np.ndarray | None,
    say: Say,
    keep_codes: bool = False,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Class labels of both splits encoded together (one code per class).

    Returns the codes of both and the labels of the codes, None when the
    labels were codes already. With ``keep_codes``, labels that are
    integers from 0 are the codes themselves (label j is the network's
    output j, whichever classes the data lack), integers saved as text too
    (sorted as text, "10" would come before "2"). ``classes`` (``--classes``)
    gives the label of each code; otherwise the labels found are sorted.
    """
    if y_test is not None and (y.dtype.kind in "biuf") != (y_test.dtype.kind in "biuf"):
        raise ValueError(
            f"The labels of --data are {y.dtype} and those of --test-data "
            f"{y_test.dtype}: give both splits' labels alike (the same classes, "
            "written the same way)."
        )
    both = y if y_test is None else np.concatenate([y, y_test])
    if keep_codes and both.dtype.kind == "U" and _integer_text(both):
        both = both.astype(np.int64)
    if classes is not None:
        codes, names = _listed_codes(both, classes), classes
    elif keep_codes and _are_codes(both):
        codes, names = both.astype(np.int64), None
    else:
        codes, found = encode_labels(both)
        names = None
        if len(found) > 1 and not np.array_equal(found, np.arange(len(found))):
            names = [str(label) for label in found]
            shown = ", ".join(names[:10]) + (", ..." * (len(found) > 10))
            say(f"labels {shown} encoded as 0 .. {len(found) - 1} in that order")
    if y_test is None:
        return codes, None, names
    return codes[: len(y)], codes[len(y) :], names


def _integer_text(y: np.ndarray) -> bool:
    """Whether every label of the text array ``y`` is an integer, such as "10".

    Raises a ValueError when two of them are one integer ("7" and "007").
    """
    found = np.unique(y)
    if not all(re.fullmatch(r"\s*[+-]?[0-9]+\s*", label) for label in found):
        return False
    if len(np.unique(found.astype(np.int64))) < len(found):
        raise ValueError(
            f"the labels {found[:10].tolist()} are integers written as text, and "
            "some of them are the same integer (such as '7' and '007'): write "
            "each class one way."
        )
    return True


def _label_text(label) -> str:
    """A label as ``--classes`` names it: whole floats as integers ("2", not "2.0")."""
    if isinstance(label, float | np.floating) and float(label).is_integer():
        return str(int(label))
    return str(label)


def _listed_codes(y: np.ndarray, classes: list[str]) -> np.ndarray:
    """The position of each label of ``y`` in ``classes`` (labels as text)."""
    position = {name: j for j, name in enumerate(classes)}
    labels = [
        text if (text := _label_text(label)) in position else str(label) for label in y
    ]
    unknown = sorted(set(labels) - position.keys())
    if unknown:
        raise ValueError(
            f"labels {unknown[:5]} are not among --classes {','.join(classes)}: "
            "list every class the network outputs, in the order of its outputs."
        )
    return np.array([position[label] for label in labels], dtype=np.int64)


def _are_codes(y: np.ndarray) -> bool:
    """Whether the labels ``y`` are integers from 0 (as floats too)."""
    if y.dtype.kind not in "iuf" or not len(y):
        return False
    return bool(np.isfinite(y).all() and (y == np.round(y)).all() and y.min() >= 0)


def _read(path, option: str, say: Say) -> tuple[np.ndarray | dict, np.ndarray]:
    """:func:`read_npz` of ``path``, a missing file named by its ``option``."""
    if not os.path.exists(path):
        raise ValueError(f"{option} {path}: no such file or folder.")
    return read_npz(path, say)


def load_data(args: argparse.Namespace, say: Say) -> Data:
    """The training data, and the test split with --test-data."""
    if args.groups and args.checkpoint is not None:
        raise ValueError(
            "--groups keeps each group in one fold of a cross-validated audit, "
            "and --checkpoint has no folds."
        )
    if args.groups and args.data is None:
        raise ValueError(
            "--groups reads the group of each example from --data (an .npz file "
            "with an array groups, or a folder with groups.npy), and --dataset "
            "has none."
        )
    if args.data is None:
        X, y = load_dataset(args.dataset)
        source = args.dataset
    else:
        X, y = _read(args.data, "--data", say)
        source = args.data
    X_test = y_test = None
    if args.test_data is not None:
        X_test, y_test = _read(args.test_data, "--test-data", say)
    regression = args.task == "regression" or (args.task == "auto" and is_continuous(y))
    if regression and args.checkpoint is not None:
        return Data(X, y, str(source), "regression", X_test, y_test)
    if regression:
        raise ValueError(
            "y holds a regression's targets (continuous values, or --task "
            "regression): a cross-validated audit trains classifiers. A trained "
            "regression network is audited with --checkpoint and --test-data."
        )
    if args.task == "classification" and is_continuous(y):
        raise ValueError(
            "--task classification, but y holds continuous values, not class "
            "labels: encode the classes as integers or text."
        )
    keep_codes = args.checkpoint is not None or args.n_classes is not None
    y, y_test, names = encode_splits(y, y_test, say, keep_codes, args.classes)
    if keep_codes and args.classes is None and names is not None:
        _check_sorted_codes(args, len(names))
    groups = load_groups(args.data) if args.groups else None
    return Data(X, y, str(source), "classification", X_test, y_test, names, groups)


def _check_sorted_codes(args: argparse.Namespace, n_found: int) -> None:
    """Refuse sorted codes of labels for a network with more classes.

    Which output each label is would depend on the classes the data lack.
    """
    if args.n_classes is not None and args.n_classes > n_found:
        raise ValueError(
            f"The labels are not integers from 0, and the data hold {n_found} of "
            f"the {args.n_classes} classes of --n-classes: encoded in sorted order, "
            "they would shift against the network's outputs. Pass --classes with "
            "the network's classes in the order of its outputs."
        )


def noisy_labels(
    args: argparse.Namespace, data: Data
) -> tuple[np.ndarray, dict[str, Any]]:
    """The labels with --label-noise planted, and what the report records of it."""
    if args.checkpoint is not None or data.task != "classification":
        raise ValueError(
            "--label-noise flips class labels before a cross-validated audit; "
            "it does not apply to a trained network (--checkpoint)."
        )
    y, flipped = plant_label_noise(data.y, args.label_noise, args.noise_seed)
    if not len(flipped):
        raise ValueError(
            f"--label-noise {args.label_noise} flips no label of the {len(y)} "
            f"examples (it flips round(rate x n)): give at least {1 / len(y):.2g}."
        )
    noise = dict(
        rate=args.label_noise,
        seed=args.noise_seed,
        flipped=flipped.tolist(),
        original=data.y[flipped].tolist(),
    )
    return y, noise
