"""Auditing a network that is already trained (``cv="prefit"``).

The network is used as it is, on the train/test split the user gives: its
task comes from the net or the targets, its predictions from its own
``predict`` or from its outputs, and it is never trained or modified.
"""

from __future__ import annotations

import contextlib

import joblib
import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import is_regressor
from sklearn.utils.multiclass import type_of_target
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier

from .._engine.context import evaluation_mode, forked_rng
from .._engine.inputs import (
    batches,
    explained_failures,
    module_float_dtype,
    take,
    to_numpy,
)
from .._engine.jacobian import network_output
from .._engine.selection import check_selected, network_logits
from .._net import (
    CLONE_HINT,
    _unwrap,
    is_unfitted_skorch,
    predicted_probabilities,
    resolve_device,
    resolve_module,
    skorch_errors,
    skorch_task,
    weights_digest,
)
from .._typing import NetInput, NetLike
from .._validation import sample_shape

CLASSIFICATION_TARGETS = ("binary", "multiclass")
#: Ends the errors of a module taken for a classifier by its whole-number targets.
WHOLE_NUMBER_TARGETS = (
    "A regression network whose targets are whole numbers (counts) is taken "
    "for a classifier by them: give the trained module as a skorch regressor, "
    "NeuralNetRegressor(module).initialize(), which keeps its weights (the "
    "command line: --task regression)."
)
REGRESSION_TARGETS = ("continuous",)
PREDICT_BATCH_SIZE = 256


def check_prefit_net(net: NetLike) -> torch.nn.Module:
    """The trained module behind ``net``; raise when there is none."""
    if is_unfitted_skorch(net):
        folds = (  # a regressor is audited prefit only
            ""
            if is_regressor(_unwrap(net))
            else ", or pass an int or a splitter as cv to train a clone of it on "
            "every fold"
        )
        raise ValueError(
            'cv="prefit" audits a network that is already trained, and this '
            f"{type(_unwrap(net)).__name__} is not fitted: fit it first{folds}. "
            f"{CLONE_HINT}"
        )
    try:
        return resolve_module(net)
    except TypeError:
        raise TypeError(
            'cv="prefit" audits a trained network: pass a fitted skorch net, a '
            "FrozenEstimator around one or a torch.nn.Module; got "
            f"{type(net).__name__}."
        ) from None


def target_task(net: NetLike, y: ArrayLike) -> str:
    """``"classification"`` or ``"regression"``.

    A skorch classifier or regressor (or a FrozenEstimator around one) says
    which it is; for any other net (a torch module, a plain skorch
    ``NeuralNet``) the targets decide, by
    :func:`sklearn.utils.multiclass.type_of_target`: class labels (binary or
    multiclass) are classification, continuous values regression.
    """
    task = skorch_task(net)
    if task is not None:
        return task
    kind = type_of_target(np.asarray(y))
    if kind in CLASSIFICATION_TARGETS:
        return "classification"
    if kind in REGRESSION_TARGETS:
        return "regression"
    raise ValueError(
        "The audit takes class labels or one continuous target per sample; "
        f"y is a {kind} target."
    )


def regression_targets(y: ArrayLike, name: str) -> np.ndarray:
    """One continuous target per sample, as a float array of shape (n,)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            "The audit of a regression network takes one target per sample "
            f"({name} of shape (n,) or (n, 1)); {name} has shape {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must hold numbers; its dtype is {y.dtype}.")
    y = y.astype(np.float64)
    check_finite_targets(y, name)
    return y


def check_finite_targets(y: np.ndarray, name: str) -> None:
    """A ValueError naming the rows of ``y`` that hold NaN or infinity."""
    missing = np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))
    if len(missing):
        raise ValueError(
            f"{name} holds NaN or infinity at {len(missing)} row(s), the first "
            f"{missing[:5].tolist()}: leave those examples out of the audit."
        )


def module_outputs(module: torch.nn.Module, X: NetInput) -> np.ndarray:
    """Outputs of ``module`` on ``X`` in eval mode, without gradients.

    A failure on the first batch is explained as the kernel explains it.
    """
    device = resolve_device(module)
    dtype = module_float_dtype(module)
    parts = []
    with evaluation_mode(module), torch.no_grad():
        for rows, batch in batches(X, PREDICT_BATCH_SIZE, device, dtype):
            explained = (  # the first batch's failure: inputs the net cannot take
                explained_failures(lambda: sample_shape(X))
                if rows.start == 0
                else contextlib.nullcontext()
            )
            with explained:
                out = _tensor_output(network_output(module, batch, dtype))
            check_selected(out, rows.stop - rows.start, "The network returned")
            parts.append(out.detach().cpu())
    return to_numpy(torch.cat(parts))


def _tensor_output(out) -> torch.Tensor:
    """The network's logits (:func:`~sksim._engine.selection.network_logits`).

    A TypeError says what to do when they are not a tensor.
    """
    out = network_logits(out)
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"The network returned {type(out).__name__}, not a tensor: the audit reads "
        "the network's outputs (logits for a classifier) as one tensor. Audit a "
        "module that returns it, e.g. one whose forward returns "
        "model(input_ids=x).logits for a Hugging Face model."
    )


def predictions(
    net: NetLike, X: NetInput, task: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions of the trained ``net`` on ``X``, and its class probabilities.

    A skorch classifier or regressor predicts with its own ``predict``; a
    torch module (or a plain skorch ``NeuralNet``) predicts the argmax of its
    outputs for classification and its outputs for regression. The modes of
    the module's layers (training or evaluation) are restored after.

    Returns
    -------
    prediction : ndarray of shape (n,)
    probabilities : ndarray of shape (n, n_outputs) or None
        For classification, when one pass gives them with the predictions:
        ``predict_proba`` of a skorch classifier whose ``predict`` is its
        argmax (skorch's own), or the softmax of a module's outputs. None
        otherwise.
    """
    module = resolve_module(net)
    probabilities = None
    if skorch_task(net) is None:
        prediction = module_outputs(module, X)
        if task == "classification":
            if prediction.ndim != 2 or prediction.shape[1] < 2:
                raise ValueError(
                    f"The network gives outputs of shape {prediction.shape[1:]} "
                    "per example; the audit reads class j from its output j (as "
                    "skorch's predict does): a classifier needs one logit per "
                    "class, two for a binary one. A binary classifier with one "
                    "logit is audited as a skorch "
                    "NeuralNetBinaryClassifier(module).initialize(), which keeps "
                    "its weights, and reads the logit as a tensor the forward "
                    "returns (wrap a Hugging Face model so that it returns "
                    f"model(**x).logits.squeeze(-1)). {WHOLE_NUMBER_TARGETS}"
                )
            probabilities = torch.softmax(torch.from_numpy(prediction).double(), 1)
            probabilities = probabilities.numpy()
            prediction = prediction.argmax(axis=-1)
    elif type(_unwrap(net)).predict is NeuralNetClassifier.predict:
        probabilities = predicted_probabilities(net, X)
        prediction = probabilities.argmax(axis=1)
    else:  # the user's predict
        with forked_rng(exclusive=True), evaluation_mode(module), skorch_errors():
            prediction = np.asarray(net.predict(X))
        if task == "classification":
            prediction = _class_codes(net, prediction)
    if task == "regression":
        return regression_targets(prediction, "the network's output"), None
    return prediction, probabilities


def _class_codes(net: NetLike, prediction: np.ndarray) -> np.ndarray:
    """Predicted classes as the indices of the classifier's outputs.

    A ``predict`` of the user's that returns the net's ``classes_`` (names,
    or integers other than 0 to K - 1) gives their positions, as the audit
    reads class j from output j.
    """
    classes = getattr(_unwrap(net), "classes_", None)
    if classes is None or np.array_equal(classes, np.arange(len(classes))):
        return prediction
    position = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    values = prediction.tolist()
    if prediction.ndim != 1 or not all(value in position for value in values):
        return prediction
    return np.array([position[value] for value in values])


def class_outputs(net: NetLike, X: NetInput, probabilities: np.ndarray | None) -> int:
    """The classes a classifier's outputs tell apart, one output per class.

    Its probabilities' columns when it gives them, two for a skorch binary
    classifier (one logit), else its module's outputs on one example.
    """
    if probabilities is not None:
        return probabilities.shape[1]
    if isinstance(_unwrap(net), NeuralNetBinaryClassifier):
        return 2
    return module_outputs(resolve_module(net), take(X, np.arange(1))).size


def check_predicted_classes(prediction: np.ndarray, n_outputs: int) -> np.ndarray:
    """``prediction`` as integer indices of the ``n_outputs`` class outputs.

    A ValueError says what to do when ``predict`` gives something else.
    """
    whole = prediction.dtype.kind in "iub" or (
        prediction.dtype.kind == "f" and np.array_equal(prediction, prediction.round())
    )
    if prediction.ndim == 1 and whole:
        codes = prediction.astype(np.int64)
        if len(codes) == 0 or (codes.min() >= 0 and codes.max() < n_outputs):
            return codes
    values = list(dict.fromkeys(prediction.ravel().tolist()))
    shown = ", ".join(map(repr, values[:3])) + (", ..." if len(values) > 3 else "")
    raise ValueError(
        f"The network's predict gives {shown}: the audit compares predictions "
        "with the labels as indices of the network's class outputs (0 to "
        f"{n_outputs - 1}, output j for class j). Make predict return them "
        "(skorch's own predict does), or the net's classes_ in the order of its "
        "outputs."
    )


def weights_fingerprint(net: NetLike) -> str:
    """A hash of the trained module: its classes, layers and every tensor of its state.

    The layers enter by the module's ``repr`` (an activation swapped for
    another changes it, not the weights); the code of a ``forward`` does not.
    """
    module = resolve_module(net)
    names = type(_unwrap(net)).__qualname__, type(module).__qualname__
    return joblib.hash((*names, repr(module), weights_digest(module)))
