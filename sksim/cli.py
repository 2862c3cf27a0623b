"""Command line: ``sksim audit`` (also ``python -m sksim audit``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__

if TYPE_CHECKING:  # imported when used, to start quickly
    import torch
    from skorch import NeuralNet

    from .audit import AuditResult

# How progress messages are printed (to stderr unless --quiet).
Say = Callable[[str], None]

DATASETS = ("digits", "iris", "wine", "breast_cancer")

DESCRIPTION = """\
Cross-validated audit of a classifier from the network's perspective.

For each fold, a fresh network is trained on the training part; on the held-out
part sksim measures accuracy, the density of every example relative to the
training fold (how many training examples the network treats as similar), its
most similar training examples, the self-denoising summary, the layer-wise
relative sensitivity to deformations (square images only) and the
class-conditional densities of the representations. The result is one
self-contained HTML report (and, with --json, the tables as JSON).

With --checkpoint, a network you already trained is audited as it is, with no
training: its state_dict is loaded into the architecture of --model or
--module, --data (or --dataset) is the data it was trained on and --test-data
its test split. Regression networks (continuous targets y) are audited this way
too.
"""

EPILOG = """\
examples:
  sksim audit --dataset digits --model mlp --cv 3 --out report.html
  sksim audit --data mydata.npz --module mypkg.models:make_net --out audit.html
  python -m sksim audit --dataset digits --model cnn --analyses density,neighbors
  sksim audit --data big.npz --cache audit-cache --out big.html   # resumable
  sksim audit --data train.npz --test-data test.npz --model mlp \\
      --checkpoint mlp.pt --out trained.html   # a trained net, no training

exit status: 0 done, 1 every analysis failed, 2 invalid input, 130 interrupted.
"""
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


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before any training where an output cannot be written.

    Or where it would overwrite an input, the other output or the cache.
    """
    written = {"--out": args.out, "--json": args.json}
    read = {
        "--data": args.data,
        "--test-data": args.test_data,
        "--checkpoint": args.checkpoint,
        "--out": args.out,
    }
    for option, path in written.items():
        if path is None:
            continue
        check_output(path, option)
        target = Path(path).resolve()
        for other, source in read.items():
            if (
                other != option
                and source is not None
                and Path(source).resolve() == target
            ):
                raise ValueError(
                    f"{option} {path} is the file of {other}: it would be "
                    "overwritten; give another name."
                )
        if args.cache is not None and Path(args.cache).resolve() in (
            target,
            *target.parents,
        ):
            raise ValueError(
                f"{option} {path} is in the --cache folder {args.cache}, which "
                "holds the audit's saved pieces; write it elsewhere."
            )


def check_output(path: str | os.PathLike, option: str) -> None:
    """Fail before any training when ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name in it.")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, not a folder.")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable.")


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable ``factory`` of ``"package.module:factory"``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"--module must look like package.module:factory; got {spec!r}."
        )
    module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attribute)
    except AttributeError as error:
        raise ValueError(f"Module {module_name!r} has no {attribute!r}.") from error
    if not callable(factory):
        raise ValueError(f"{spec} is not callable.")
    return factory


def factory_output(
    args: argparse.Namespace, X: np.ndarray, n_outputs: int
) -> torch.nn.Module | NeuralNet:
    """The module or unfitted skorch net of --module, its weights drawn with --seed."""
    import torch
    from skorch import NeuralNet

    from ._engine.context import torch_seed
    from ._validation import sample_shape

    shape = sample_shape(X)
    factory = load_factory(args.module)  # its errors are the option's, as they are
    with torch_seed(args.seed):
        try:
            built = factory(shape, n_outputs)
        except Exception as error:  # whatever the user's code raises
            raise ValueError(
                f"{args.module}({shape!r}, {n_outputs!r}) failed: "
                f"{type(error).__name__}: {error}"
            ) from error
    if isinstance(built, NeuralNet):
        if args.device is not None:
            built.set_params(device=args.device)
        return built
    if isinstance(built, torch.nn.Module):
        return built if args.device is None else built.to(args.device)
    raise TypeError(
        f"{args.module} returned a {type(built).__name__}; it must return a "
        "torch.nn.Module that outputs logits, or an unfitted skorch net."
    )


def build_net(args: argparse.Namespace, X: np.ndarray, n_classes: int) -> NeuralNet:
    """The unfitted skorch classifier to audit."""
    import torch
    from skorch import NeuralNet, NeuralNetClassifier

    from .audit.models import make_classifier

    training = dict(max_epochs=args.max_epochs, lr=args.lr, batch_size=args.batch_size)
    if args.device is not None:
        training["device"] = args.device
    if args.module is None:
        return make_classifier(args.model, X, n_classes, **training)
    built = factory_output(args, X, n_classes)
    if isinstance(built, NeuralNet):
        return built
    return NeuralNetClassifier(
        built,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        verbose=0,
        **training,
    )


def _analyses(text):
    from .audit import ANALYSES

    names = _given_names(text, "name at least one analysis")
    unknown = [name for name in names if name not in ANALYSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown analyses {unknown}; choose among {', '.join(ANALYSES)}"
        )
    return tuple(names)


def _options(text):
    """``--options``: a JSON object of each analysis' options."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from None
    if not isinstance(options, dict) or not all(
        isinstance(given, dict) for given in options.values()
    ):
        raise argparse.ArgumentTypeError(
            "must be a JSON object of objects, one per analysis, e.g. "
            '\'{"neighbors": {"candidates_per_neighbor": 32}}\''
        )
    return options


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _threshold(text):
    """A positive integer, or "none": the scale threshold's (never switch)."""
    return None if text.lower() == "none" else _positive(text)


def _positive_real(text):
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive finite number; got {text}"
        )
    return value


def _noise_rate(text):
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1; got {text}")
    return value


def _number(text):
    """``text`` as a float; argparse's error names the value, not this function."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text}") from None


def _seed(text):
    """A seed of NumPy's and torch's: an integer from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to 2**32 - 1; got {text}"
        )
    return value


def _device(text):
    """A torch device that exists on this machine."""
    from ._engine.context import check_device

    try:
        device = check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: use cpu, cuda or cuda:N")
    return text


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sksim`` command."""
    parser = argparse.ArgumentParser(
        prog="sksim",
        description="sksim: input similarity from a neural network's perspective.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser(
        "audit",
        help="cross-validated audit of a classifier, or audit of a trained "
        "network (--checkpoint), written as an HTML report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = audit.add_argument_group("data (--dataset or --data)")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="a dataset bundled with scikit-learn (default: digits, as 1x8x8 "
        "images; the others are tabular and standardised)",
    )
    source.add_argument(
        "--data",
        metavar="PATH",
        help="your own data: an .npz file with an array X of inputs (first axis: "
        "samples, any other shape the network accepts; or, without X, the "
        "network's inputs by the names its forward takes, e.g. input_ids and "
        "attention_mask, integers kept) and an array y of class labels, or a "
        "folder of .npy files of the same names (X.npy or the inputs by name, "
        "and y.npy; the inputs are then memory-mapped: read from disk as needed)",
    )
    data.add_argument(
        "--test-data",
        metavar="PATH",
        default=None,
        help="with --checkpoint: the test split of the trained network, an .npz "
        "file or a folder of .npy files like --data (which is then the data it "
        "was trained on)",
    )
    data.add_argument(
        "--groups",
        action="store_true",
        help="with --data: keep the examples of each group in one fold (several "
        "images of one patient, frames of one video), as the array groups of the "
        ".npz file (or groups.npy of the folder) gives them; --cv folds are then "
        "StratifiedGroupKFold's",
    )
    model = audit.add_argument_group("model (--model or --module)")
    arch = model.add_mutually_exclusive_group()
    arch.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default="mlp",
        help="a built-in architecture: mlp (one hidden layer of 64, any input "
        "shape) or cnn (two 3x3 convolutions, square images (n, C, H, W) only); "
        "default: mlp",
    )
    arch.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        help="your own architecture: FACTORY(input_shape, n_classes) (input_shape "
        "a tuple, or a dict of them for inputs saved by name) must return "
        "a torch.nn.Module that outputs logits (trained with cross-entropy and "
        "SGD as configured below) or an unfitted skorch net (used as is); "
        "PKG.MOD must be importable (e.g. on PYTHONPATH)",
    )
    model.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="audit a network you already trained, with no training: a state_dict "
        "(torch.save(module.state_dict(), PATH), or skorch's save_params"
        "(f_params=PATH)), loaded with torch.load(weights_only=True) into the "
        "architecture of --model or --module; needs --test-data. Class labels "
        "are classified by the argmax of the outputs; continuous targets (or "
        "--task regression) are audited as a regression (one output)",
    )
    model.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="what the targets y are: auto (default) takes continuous values for a "
        "regression's targets, integers and text for class labels; regression "
        "(with --checkpoint) for whole-number targets such as counts",
    )
    model.add_argument(
        "--n-classes",
        type=_positive,
        default=None,
        metavar="N",
        help="classes the network outputs (default: as many as the labels need); "
        "for a --checkpoint trained on classes the audited data lack. With "
        "--checkpoint or --n-classes, integer labels from 0 are the network's "
        "outputs themselves (label j is output j); other labels are encoded in "
        "sorted order, or as --classes lists them",
    )
    model.add_argument(
        "--classes",
        type=_class_list,
        default=None,
        metavar="NAMES",
        help="the network's classes in the order of its outputs, comma-separated "
        "(e.g. cat,dog,bird): label NAMES[j] is output j. For labels that are "
        "not integers from 0, when the data lack some of the classes the network "
        "was trained on",
    )
    training = audit.add_argument_group("training")
    training.add_argument(
        "--max-epochs", type=_positive, default=20, help="epochs per fold (default 20)"
    )
    training.add_argument(
        "--lr", type=_positive_real, default=0.1, help="SGD learning rate (default 0.1)"
    )
    training.add_argument(
        "--batch-size", type=_positive, default=64, help="mini-batch size (default 64)"
    )
    training.add_argument(
        "--device",
        type=_device,
        default=None,
        help="where to train and analyse: cpu, cuda or cuda:N (default: cpu, "
        "or the device of the skorch net a --module factory returns)",
    )
    analysis = audit.add_argument_group("audit")
    analysis.add_argument(
        "--cv", type=_positive, default=5, help="number of stratified folds (default 5)"
    )
    analysis.add_argument(
        "--analyses",
        type=_analyses,
        default=None,
        metavar="A,B,...",
        help="comma-separated subset of density, neighbors, denoising, "
        "label_issues, sensitivity, class_fitting (default: all; those that do "
        "not apply are skipped with the reason in the report)",
    )
    analysis.add_argument(
        "--options",
        metavar="JSON",
        type=_options,
        default=None,
        help="each analysis' options, as audit(options=...) takes them, e.g. "
        '\'{"neighbors": {"candidates_per_neighbor": 32}}\' (default: none)',
    )
    analysis.add_argument(
        "--n-neighbors",
        type=_positive,
        default=5,
        help="most similar training examples shown per example (default 5)",
    )
    analysis.add_argument(
        "--scale-threshold",
        metavar="N",
        type=_threshold,
        default=20_000,
        help="training-fold size past which the analyses switch to methods whose "
        "cost grows linearly with the data: soft density counts, FAISS neighbours "
        "(recall measured), class fitting on a subsample (default 20000; none: "
        "never)",
    )
    analysis.add_argument(
        "--layers",
        metavar="NAME,...",
        type=_layer_names,
        default=None,
        help="module names whose representations the class-fitting analysis "
        "models (default: the last three linear or convolutional modules)",
    )
    analysis.add_argument(
        "--label-noise",
        metavar="RATE",
        type=_noise_rate,
        default=None,
        help="flip this share of the labels (e.g. 0.05) to another class at random "
        "before a cross-validated audit, to see the label-issue analysis find "
        "them: the report gives its precision on the flipped labels (default: "
        "none)",
    )
    analysis.add_argument(
        "--noise-seed",
        type=int,
        default=0,
        help="seed of the labels flipped by --label-noise (default 0)",
    )
    analysis.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the --module factory's call (the initial weights), the "
        "training of every fold and the analyses (default 0)",
    )
    output = audit.add_argument_group("output")
    output.add_argument(
        "--out",
        default="report.html",
        metavar="PATH.html",
        help="where to write the HTML report (default: report.html)",
    )
    output.add_argument(
        "--json",
        metavar="PATH.json",
        default=None,
        help="also write the tables as JSON",
    )
    output.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help="save every trained fold and finished analysis in DIR as it completes; "
        "rerunning the same command resumes an interrupted audit from there (a "
        "changed option or data computes the pieces it affects again; the code of "
        "--module is not read: after changing it, use another DIR)",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress bar or messages on stderr"
    )
    return parser


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
    try:
        return np.load(file, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as error:
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
    except (OSError, KeyError, ValueError):
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


def _names(text: str) -> list[str]:
    """``--layers``: comma-separated names, spaces around them dropped."""
    return [name.strip() for name in text.split(",")]


def _given_names(text: str, nothing: str) -> list[str]:
    """:func:`_names` without empty ones (a trailing comma); ``nothing`` if none."""
    names = [name for name in _names(text) if name]
    if not names:
        raise argparse.ArgumentTypeError(nothing)
    return names


def _layer_names(text: str) -> list[str]:
    """``--layers``: its names; an empty one would be the whole network's output."""
    return _given_names(text, f"names no layer; got {text!r}")


def _class_list(text: str) -> list[str]:
    """``--classes``: comma-separated names, each once."""
    names = _names(text)
    if len(names) < 2 or "" in names or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"expected two or more distinct comma-separated class names; got {text!r}"
        )
    return names


def _are_codes(y: np.ndarray) -> bool:
    """Whether the labels ``y`` are integers from 0 (as floats too)."""
    if y.dtype.kind not in "iuf" or not len(y):
        return False
    return bool(np.isfinite(y).all() and (y == np.round(y)).all() and y.min() >= 0)


def load_data(args: argparse.Namespace, say: Say) -> Data:
    """The training data, and the test split with --test-data."""
    if args.groups and (args.data is None or args.checkpoint is not None):
        raise ValueError(
            "--groups keeps each group in one fold of a cross-validated audit: "
            "it reads the groups from --data, and --checkpoint has no folds."
        )
    if args.data is None:
        X, y = load_dataset(args.dataset)
        source = args.dataset
    else:
        X, y = read_npz(args.data, say)
        source = args.data
    X_test = y_test = None
    if args.test_data is not None:
        X_test, y_test = read_npz(args.test_data, say)
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


def check_checkpoint_args(args: argparse.Namespace) -> None:
    """--checkpoint and --test-data go together."""
    if args.checkpoint is not None and args.test_data is None:
        raise ValueError(
            "--checkpoint audits a trained network on its test split: give it "
            "with --test-data PATH.npz (and the training data with --data or "
            "--dataset)."
        )
    if args.test_data is not None and args.checkpoint is None:
        raise ValueError(
            "--test-data is the test split of a trained network given with "
            "--checkpoint; without one, the audit cross-validates --data."
        )


def load_checkpoint(
    args: argparse.Namespace, X: np.ndarray, n_outputs: int
) -> torch.nn.Module | NeuralNet:
    """The architecture of --model or --module with the weights of --checkpoint.

    The file holds a ``state_dict`` (``torch.save(module.state_dict(), path)``
    or skorch's ``save_params(f_params=path)``), loaded with
    ``torch.load(weights_only=True)``, so it runs no code. A factory's own
    skorch net is kept, for its ``predict_proba`` (a binary classifier's one
    logit gives two columns); the classifier sksim builds around --model or
    a factory's module stands for the architecture only.
    """
    import torch
    from skorch import NeuralNet

    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint}: no such file.")
    if args.module is None:
        built = build_net(args, X, n_outputs)
    else:
        built = factory_output(args, X, n_outputs)
    module = built.initialize().module_ if isinstance(built, NeuralNet) else built
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever a damaged or unsafe file raises
        raise ValueError(
            f"--checkpoint {args.checkpoint} could not be loaded as a state_dict: "
            f"{_unloadable(args.checkpoint, error)}; save it with "
            "torch.save(module.state_dict(), path)."
        ) from error
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        held = (
            "a dict whose keys are not all names"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ValueError(
            f"--checkpoint {args.checkpoint} holds {held}, not a state_dict; save "
            "it with torch.save(module.state_dict(), path)."
        )
    architecture = args.module or f"--model {args.model}"
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"--checkpoint {args.checkpoint} does not fit the architecture of "
            f"{architecture} for {n_outputs} outputs (with --n-classes N when the "
            "data lack some of the classes it was trained on, --classes A,B,... "
            "naming the label of each output when the labels are not the "
            "outputs' numbers, --task regression for whole-number targets): "
            f"{state_mismatch(state, module.state_dict())}."
        ) from error
    return module if args.module is None else built


def _unloadable(path: str, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``error``, in words."""
    if os.path.getsize(path) == 0:
        return "the file is empty (an interrupted copy?)"
    text = str(error)
    pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if pickled:
        return (
            f"it holds pickled objects besides tensors ({pickled[1]}: a whole "
            "module saved with torch.save(module)?), which loading without "
            "running code refuses"
        )
    # torch's first lines advise weights_only=False; its unpickler's says why
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = reason[1] if reason else (text.splitlines() or [""])[0]
    return (
        f"it is damaged or not written by torch.save ({type(error).__name__}: {detail})"
    )


def state_mismatch(state: dict, expected: dict) -> str:
    """How a state_dict differs from a module's, in a few examples.

    Keys missing from it, keys the module lacks, shapes that differ, and,
    when its keys are the module's behind a common prefix (a wrapper's
    ``resnet.``) or the reverse, the prefix to strip or add.
    """
    from .audit._findings import counted

    def shape(value) -> tuple | str:
        return tuple(value.shape) if hasattr(value, "shape") else type(value).__name__

    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key!r}: {shape(state[key])} for {shape(expected[key])}"
        for key in expected
        if key in state and shape(state[key]) != shape(expected[key])
    ]
    parts = [
        f"{counted(len(found), noun)} {what} "
        f"({', '.join(found[:3])}{', ...' * (len(found) > 3)})"
        for found, noun, what in (
            ([repr(key) for key in missing], "key", "of the architecture missing"),
            ([repr(key) for key in unexpected], "key", "it lacks"),
            (shapes, "shape", "differing"),
        )
        if found
    ]
    text = "; ".join(parts)
    for longer, shorter, advice in (
        (unexpected, missing, "strip the prefix {!r} from the checkpoint's keys"),
        (missing, unexpected, "add the prefix {!r} to the checkpoint's keys"),
    ):
        prefix = os.path.commonprefix(longer).rpartition(".")[0]
        renamed = {key.removeprefix(prefix + ".") for key in longer}
        if prefix and shorter and renamed == set(shorter):
            return f"{text}: {advice.format(prefix + '.')}"
    return text


def check_forward(
    net, X: np.ndarray, args: argparse.Namespace, encoded: int | None = None
) -> None:
    """Pass two samples through the network before any training.

    A network that cannot take them, is set on a device this machine lacks,
    or lacks a layer ``--layers`` names, fails here with a ValueError rather
    than in the first fold or after the other analyses; so does one of more
    outputs than the ``encoded`` classes, labels that are not integers from
    0 encoded in sorted order (they would shift against its outputs).
    """
    import torch
    from sklearn.base import clone
    from skorch import NeuralNet

    from ._engine.context import check_device, evaluation_mode
    from ._engine.selection import network_logits
    from ._validation import sample_shape

    if isinstance(net, NeuralNet):
        check_device(net.device)
        module = clone(net).initialize().module_
    else:
        module = net
    architecture = args.module or f"--model {args.model}"
    device = next(module.parameters()).device
    try:
        with evaluation_mode(module), torch.no_grad():
            # a copy: the network may change its input in place
            if isinstance(X, dict):
                out = module(
                    **{k: torch.tensor(v[:2], device=device) for k, v in X.items()}
                )
            else:
                out = module(torch.tensor(np.asarray(X[:2]), device=device))
    except RuntimeError as error:
        tokens = (
            ". The command line casts every input to float32: a module on token "
            "ids (an Embedding) converts them back in its forward, x.long()"
            if "'indices'" in str(error)
            else ""
        )
        raise ValueError(
            f"the network of {architecture} cannot take the inputs, of shape "
            f"{sample_shape(X)}: {str(error).splitlines()[0]}{tokens}"
        ) from error
    outputs = network_logits(out).shape[-1]
    if encoded is not None and outputs > encoded:
        raise ValueError(
            f"The network of {architecture} gives {outputs} outputs, and the "
            f"labels, which are not integers from 0, name {encoded} classes: "
            "encoded in sorted order, they would shift against its outputs. Pass "
            "--classes with the network's classes in the order of its outputs."
        )
    if args.layers is not None:
        from ._layers import RepresentationCapture

        RepresentationCapture(module, args.layers)  # names checked


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


def run_audit(args: argparse.Namespace) -> AuditResult:
    """Load the data, build the net, audit it and write the report(s)."""
    from ._engine.inputs import n_samples
    from ._validation import sample_shape
    from .audit import ANALYSES, AuditAnalysisFailedWarning, audit

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    check_outputs(args)
    check_checkpoint_args(args)
    data = load_data(args, say)
    X, y = data.X, data.y
    noise = None
    if args.label_noise is not None:
        y, noise = noisy_labels(args, data)
        say(
            f"{len(noise['flipped'])} labels ({args.label_noise:g}) flipped at "
            f"random (seed {args.noise_seed})"
        )
    n_outputs = data.n_outputs
    if args.classes is not None:
        if data.task == "regression" or args.n_classes not in (None, len(args.classes)):
            raise ValueError(
                f"--classes names {len(args.classes)} classes, but --n-classes is "
                f"{args.n_classes}, or the targets are continuous."
            )
        n_outputs = len(args.classes)
    elif args.n_classes is not None:
        if data.task == "regression" or args.n_classes < n_outputs:
            raise ValueError(
                f"--n-classes {args.n_classes} is fewer than the {n_outputs} "
                "outputs the labels need (label j is output j), or the targets "
                "are continuous."
            )
        n_outputs = args.n_classes
    encoded = None  # classes encoded in sorted order, which an output may shift
    if data.class_names is not None and args.classes is None:
        encoded = len(data.class_names)
    if args.checkpoint is None:
        net = build_net(args, X, n_outputs)
        check_forward(net, X, args, encoded)
        protocol = dict(cv=args.cv)
        plan = f"{args.cv}-fold cross-validation"
        if data.groups is not None:
            from sklearn.model_selection import StratifiedGroupKFold

            protocol = dict(cv=StratifiedGroupKFold(args.cv), groups=data.groups)
            plan += f", {len(np.unique(data.groups))} groups kept whole"
    else:
        net = load_checkpoint(args, X, n_outputs)
        from skorch import NeuralNet, NeuralNetRegressor

        from ._net import resolve_device

        if data.task == "regression" and not isinstance(net, NeuralNet):
            # a regressor says the task, which whole-number targets would not
            device = str(resolve_device(net))
            net = NeuralNetRegressor(net, device=device).initialize()
        check_forward(net, X, args, encoded)
        protocol = dict(cv="prefit", X_test=data.X_test, y_test=data.y_test)
        plan = (
            f"{args.checkpoint} audited as it is (no training) on "
            f"{args.test_data}, {len(data.X_test)} test samples"
        )
    kind = "regression" if data.task == "regression" else f"{n_outputs} classes"
    say(
        f"sksim audit: {data.source}, {n_samples(X)} samples of shape "
        f"{sample_shape(X)}, {kind}, {plan}"
    )
    start = time.perf_counter()
    with warnings.catch_warnings():  # failures are reported below, in one line each
        warnings.simplefilter("ignore", AuditAnalysisFailedWarning)
        result = audit(
            net,
            X,
            y,
            analyses=ANALYSES if args.analyses is None else args.analyses,
            n_neighbors=args.n_neighbors,
            scale_threshold=args.scale_threshold,
            layers=args.layers,
            options=args.options,
            random_state=args.seed,
            verbose=0 if args.quiet else 1,
            cache=args.cache,
            **protocol,
        )
    result.metadata["data"] = data.source
    if data.class_names is not None:
        result.metadata["class_names"] = data.class_names
    if noise is not None:
        result.metadata["label_noise"] = noise
    if args.checkpoint is not None:
        result.metadata["checkpoint"] = str(args.checkpoint)
        result.metadata["test_data"] = str(args.test_data)
    out = result.to_html(args.out).resolve()
    say(f"audit done in {time.perf_counter() - start:.1f} s")
    if "cache" in result.metadata:
        cache = result.metadata["cache"]
        say(f"cache {cache['folder']}: {cache['loaded']} piece(s) loaded")
    for name, folds in result.failed.items():
        say(f"{name} failed on fold(s) {sorted(folds)}: see the report")
    if args.json is not None:
        say(f"JSON written to {Path(args.json).resolve()}")
        result.to_json(args.json)
    say(f"report written to {out}")
    return result


def every_analysis_failed(result: AuditResult) -> str | None:
    """One line on the first error when analyses failed and none ran, else None."""
    if not result.failed or result.metadata["analyses"]:
        return None
    name, errors = next(iter(result.failed.items()))
    error = next(iter(errors.values())).splitlines()[0]
    return (
        f"every analysis failed on every fold ({name}: {error}); "
        "the report lists them all"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sksim`` console script.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when every analysis failed on every fold, 2 on
        invalid input, 130 when interrupted (with one line on stderr).
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    prefix = f"sksim {args.command}"
    with _noted_interrupts() as interrupted:
        try:
            result = run_audit(args)
        except (ValueError, TypeError, ImportError, OSError) as error:
            parser.exit(2, f"{prefix}: error: {_one_line(error)}\n")
        except KeyboardInterrupt:
            interrupted.append(signal.SIGINT)
    if interrupted:
        resume = "" if args.cache is None else "; run it again to resume from --cache"
        parser.exit(130, f"{prefix}: interrupted{resume}\n")
    failure = every_analysis_failed(result)
    if failure is not None:
        parser.exit(1, f"{prefix}: error: {failure}\n")
    return 0


@contextlib.contextmanager
def _noted_interrupts():
    """A list that notes each Ctrl-C inside, which raises KeyboardInterrupt as usual.

    Python drops a KeyboardInterrupt raised in a callback of its garbage
    collector: the audit would then finish and exit 0. Where the signal is
    ignored (a job started in the background), or outside the main thread,
    nothing changes.
    """
    noted: list = []

    def interrupt(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else signal.SIG_IGN
    if previous is signal.SIG_IGN:
        yield noted
        return
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_line(error: BaseException) -> str:
    """The error's message on one line, without terminal colour codes."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
