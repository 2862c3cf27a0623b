"""The options of ``sksim audit`` and how each is read."""

from __future__ import annotations

import argparse
import json
import math

from .. import __version__
from ._data import DATASETS

#: The training options' values when not given.
TRAINING = dict(max_epochs=20, lr=0.1, batch_size=64)

DESCRIPTION = """\
Cross-validated audit of a classifier from the network's perspective.

For each fold, a fresh network is trained on the training part; on the held-out
part sksim measures accuracy, the density of every example relative to the
training fold (how many training examples the network treats as similar), its
most similar training examples, the labels that the network and those examples
dispute (label issues), the self-denoising summary, the layer-wise
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


def _analyses(text):
    from ..audit import ANALYSES

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


def _folds(text):
    """A number of folds: 2 at least."""
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be 2 folds or more; got {text}")
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
    from .._engine.context import check_device

    try:
        device = check_device(text)
    except ValueError as error:  # in the command line's words
        message = str(error).replace('device="cpu"', "--device cpu")
        raise argparse.ArgumentTypeError(message) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: use cpu, cuda or cuda:N")
    return text


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
        "and y.npy, written by np.save or np.lib.format.open_memmap; the inputs "
        "are then memory-mapped: read from disk as needed)",
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
        "SGD as configured below) or an unfitted skorch net (used as is but for "
        "the training options given); "
        "PKG.MOD is imported from the current folder or PYTHONPATH",
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
    own = "; a skorch net from --module keeps its own unless given"
    training.add_argument(
        "--max-epochs",
        type=_positive,
        default=None,
        help=f"epochs per fold (default {TRAINING['max_epochs']}{own})",
    )
    training.add_argument(
        "--lr",
        type=_positive_real,
        default=None,
        help=f"SGD learning rate (default {TRAINING['lr']}{own})",
    )
    training.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help=f"mini-batch size (default {TRAINING['batch_size']}{own})",
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
        "--cv", type=_folds, default=5, help="number of stratified folds (default 5)"
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
        type=_seed,
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
