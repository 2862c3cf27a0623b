"""Resolve what the user passed as ``net`` into a trained torch module.

sksim accepts a fitted skorch net, a :class:`~sklearn.frozen.FrozenEstimator`
around one, a plain :class:`torch.nn.Module` (taken as trained), or an
*unfitted* skorch net, which :func:`fit_net` clones and trains on ``X, y``.
Cross-validation trains :func:`untrained_clone` of a net on each fold.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier
from skorch.callbacks import Checkpoint, LoadInitState, TrainEndCheckpoint
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.utils.data import Dataset

from ._engine.context import (
    WRITTEN,
    check_device,
    evaluation_mode,
    forked_rng,
    plain_settings,
    torch_seed,
)
from ._engine.digest import strided_parts, tensors_digest
from ._engine.inputs import is_dataset, module_float_dtype, take, to_tensor
from ._engine.selection import network_logits
from ._pairs import is_pair_data
from ._typing import NetInput, NetLike
from ._validation import check_net_input, skorch_training_data

#: Ends the errors on an unfitted net that may be the clone of a fitted one.
CLONE_HINT = (
    "A clone of a fitted skorch net (scikit-learn's clone, made by "
    "GridSearchCV or cross_val_score) is unfitted: wrap the fitted net in "
    "sklearn.frozen.FrozenEstimator(net) to keep its weights."
)


def _unwrap(net: NetLike) -> NeuralNet | torch.nn.Module:
    return net.estimator if isinstance(net, FrozenEstimator) else net


def is_unfitted_skorch(net: NetLike) -> bool:
    """Whether ``net`` is a skorch net that has not been initialised."""
    net = _unwrap(net)
    return isinstance(net, NeuralNet) and not getattr(net, "initialized_", False)


def fit_net(
    net: NetLike,
    X: NetInput,
    y: ArrayLike | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> NetLike:
    """Return a trained net: an unfitted skorch net is cloned and fitted on X, y.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        What the user passed.
    X, y : array-like, dict or Dataset
        Training data, used only when ``net`` is an unfitted skorch net. A
        torch dataset of ``(x, y)`` items needs no ``y``.
    random_state : int or None
        Seeds torch's global generator for the duration of the fit only.

    Returns
    -------
    net : skorch net, FrozenEstimator or torch.nn.Module
        ``net`` itself when already trained, otherwise a fitted clone.
    """
    if not is_unfitted_skorch(net):
        resolve_module(net)  # fail early on anything we cannot use
        return net
    if isinstance(net, FrozenEstimator):
        raise ValueError(
            "The FrozenEstimator holds an unfitted skorch net: frozen, it is never "
            "trained. Fit the net before freezing it, or pass it unfrozen with y "
            "to train a clone of it."
        )
    fitted = clone(net)
    if is_dataset(X):
        X, y = skorch_training_data(
            X, y, lambda labels: training_targets(fitted, labels, X)
        )
        y = y if isinstance(fitted, NeuralNetClassifier) else None
    elif y is None:
        raise ValueError(
            "The skorch net is not fitted and no y was given: pass y to fit() so "
            "that a clone of the net can be trained, or pass a fitted net. "
            + CLONE_HINT
        )
    else:
        y = training_targets(fitted, y, X)
    with torch_seed(random_state, exclusive=True), skorch_errors():
        with labels_within_outputs(fitted, y), interrupts_kept():
            fitted.fit(X, y)
    return fitted


@contextlib.contextmanager
def labels_within_outputs(net, y) -> Iterator[None]:
    """Torch's IndexError of a label beyond a classifier's outputs, explained.

    Raised inside, by the cross-entropy of a classifier ``net`` trained on
    labels ``y`` ("Target 2 is out of bounds"), it becomes a ValueError that
    says what to do.
    """
    try:
        yield
    except IndexError as error:
        if not is_classifier(net) or "out of bounds" not in str(error):
            raise
        found = "" if y is None else _classes_found(y)
        raise ValueError(
            f"A {type(net).__name__} learns label j as its output j, and "
            f"a label is beyond the network's outputs ({error}){found}: give "
            "the network one output per class, or encode the labels from 0 "
            "to n_classes - 1, e.g. with scikit-learn's LabelEncoder."
        ) from error


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Raise the KeyboardInterrupt that a Ctrl-C inside made and skorch dropped.

    skorch's ``fit`` ends its training loop on a Ctrl-C and returns the net
    trained so far, as someone stopping their own training wants; sksim's
    clone would stand for a trained one (an audit's fold, cached as such).
    Signals reach the main thread only; where Ctrl-C is ignored or left to
    the system, nothing changes.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if not callable(previous):
        yield
        return
    noted = []

    def interrupt(signum, frame):
        try:
            previous(signum, frame)
        except KeyboardInterrupt:  # Python's handler's, or the CLI's
            noted.append(signum)
            raise

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        raise KeyboardInterrupt


@contextlib.contextmanager
def skorch_errors() -> Iterator[None]:
    """Explain a skorch net's failures on what its module takes and gives.

    skorch passes arrays to the module as they are: float64 inputs to a
    float32 module fail inside torch; it stacks a dataset's items into
    batches: items of other shapes fail in torch's collation. Its
    ``predict_proba`` takes the module's output as a tensor: a Hugging Face
    model's output object fails in its softmax.
    """
    try:
        yield
    except RuntimeError as error:
        if "stack expects each tensor to be equal size" in str(error):
            raise ValueError(
                f"The skorch net could not batch the dataset's items ({error}): "
                "every item must hold x (or (x, y)) of one shape; pad them "
                "(sequences to one length), or pass arrays."
            ) from error
        if "dtype" not in str(error):
            raise
        first = str(error).splitlines()[0].rstrip(".")
        raise TypeError(
            f"The skorch net failed on a dtype: {first}. skorch passes the inputs "
            "to the module as they are: if theirs is not the module's, convert "
            "them, e.g. X.astype(np.float32) for a float32 module (a dataset's "
            "items in its __getitem__)."
        ) from error
    except TypeError as error:
        if "must be Tensor, not" not in str(error):
            raise
        raise TypeError(
            f"The skorch net failed on its module's output ({error}): skorch "
            "reads the output as a tensor of logits. Wrap the module so that its "
            "forward returns them (for a Hugging Face model, model(x).logits), "
            "or give sksim the module itself (net.module_), whose logits it finds."
        ) from error


def _output_ndim(net: NeuralNet, X: NetInput) -> int:
    """Axes of the skorch ``net``'s output for the first two inputs of ``X``.

    An unfitted net is initialised on a copy, drawing from a fork of torch's
    generators, so that its training draws the weights it would have drawn.
    """
    if not getattr(net, "initialized_", False):
        with forked_rng():
            net = clone(net).initialize()
    module = net.module_
    first = to_tensor(take(X, slice(0, 2)), net.device, module_float_dtype(module))
    with evaluation_mode(module), torch.no_grad():
        return network_logits(net.infer(first)).dim()


def skorch_task(net: NetLike) -> str | None:
    """The task of a skorch net, or None for another network.

    ``"classification"`` for a skorch classifier, ``"regression"`` for a
    skorch regressor (or a FrozenEstimator around either).
    """
    net = _unwrap(net)
    if not isinstance(net, NeuralNet):
        return None
    if is_classifier(net):
        return "classification"
    if is_regressor(net):
        return "regression"
    return None


def training_targets(
    net: NeuralNet, y: ArrayLike, X: NetInput | None = None
) -> np.ndarray:
    """``y`` as the skorch ``net`` trains on it, checked.

    A classifier takes integer labels from 0 (int64, as its cross-entropy
    does; float32, as its logistic loss does, for skorch's
    ``NeuralNetBinaryClassifier``), one-hot rows standing for their label
    (the cross-entropy of either is the same); a regressor one row of targets
    per sample, one target of shape ``(n,)`` or ``(n, 1)`` as its outputs
    are (else its loss would compare every output with every target): a
    column, unless the outputs for the first inputs of ``X`` are ``(n,)``.
    """
    y = np.asarray(y)
    if is_regressor(net):
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            flat = X is not None and _output_ndim(net, X) == 1
            return y.reshape(-1) if flat else y.reshape(-1, 1)
        return y
    if not is_classifier(net):
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and ((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all():
        binary = isinstance(net, NeuralNetBinaryClassifier)
        y = y.argmax(1) if y.shape[1] == 2 or not binary else y  # one-hot
    integers = y.dtype.kind in "iub" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y))
    )
    if y.ndim != 1 or not integers or (y.size and y.min() < 0):
        shown = np.unique(y)[:10].tolist() if y.ndim == 1 else f"shape {y.shape}"
        raise ValueError(
            f"A {type(net).__name__} learns label j as its output j: y must be "
            f"one integer label per sample, from 0 to n_classes - 1; got {shown}. "
            "Encode the labels, e.g. with scikit-learn's LabelEncoder."
        )
    return y.astype(
        np.float32 if isinstance(net, NeuralNetBinaryClassifier) else np.int64
    )


def training_input(net: NetLike, X):
    """``X`` with its pairs, validated, when ``net`` trains on them; else None.

    A regularised net of ``similarity_pairs="given"`` trains on the pairs
    :func:`~sksim.regularized.with_pairs` attached; every other net trains,
    as every other computation runs, on the inputs alone.
    """
    if is_pair_data(X) and getattr(_unwrap(net), "similarity_pairs", None) == "given":
        return check_net_input(X, pairs=True)
    return None


def reset_of(layer: torch.nn.Module) -> Callable | None:
    """A layer's own initialisation of its parameters, if it has one.

    ``reset_parameters``, or ``_reset_parameters`` (``nn.MultiheadAttention``'s).
    """
    for name in ("reset_parameters", "_reset_parameters"):
        if callable(reset := getattr(layer, name, None)):
            return reset
    return None


def layer_resets(module: torch.nn.Module) -> list[Callable]:
    """The :func:`reset_of` of each layer of ``module`` that has one.

    Children before their parent, as they are built: a parent's own
    initialisation (``nn.MultiheadAttention`` zeroing its output bias,
    ``nn.Transformer``'s xavier weights) comes last.
    """

    def after_children(layer):
        for child in layer.children():
            yield from after_children(child)
        yield layer

    layers = dict.fromkeys(after_children(module))  # each shared layer once
    return [reset for layer in layers if (reset := reset_of(layer))]


def untrained_clone(net: NetLike, random_state=None) -> NeuralNet:
    """An unfitted clone of the skorch net ``net``, to train from scratch.

    scikit-learn's ``clone`` deep-copies a module given as an instance,
    weights included: the clone of a fitted net built around one
    (``NeuralNetClassifier(MyModule())``) would go on from the trained
    weights. Its layers' ``reset_parameters`` (PyTorch's initialisation of
    each layer) draw them anew, seeded by ``random_state``; a parameter that
    none of them draws is refused, and so is a ``FrozenEstimator``, which is
    not trained again. Callbacks that load or save the net's state in files
    are left out (see :func:`_without_state_files`).
    """
    if isinstance(net, FrozenEstimator):
        raise ValueError(
            "A FrozenEstimator is not trained again, and cross-validation trains "
            "a clone of the net on every fold: pass the net itself, or analyse "
            'the frozen net as it is with cv="prefit".'
        )
    fresh = _without_state_files(clone(net))
    module = fresh.module
    if is_unfitted_skorch(net) or not isinstance(module, torch.nn.Module):
        return fresh
    resets = layer_resets(module)
    drawn = {
        id(parameter)
        for layer in module.modules()
        if any(reset.__self__ is layer for reset in resets)
        for parameter in layer.parameters(recurse=False)
    }
    kept = [name for name, p in module.named_parameters() if id(p) not in drawn]
    if kept:
        raise ValueError(
            f"This fitted {type(fresh).__name__} is built around a module "
            "instance, whose clone keeps the trained weights, and no "
            f"reset_parameters() draws {kept[:5]} anew to train from scratch. "
            "Pass the module's class instead (e.g. NeuralNetClassifier(MyModule, "
            "module__hidden=32)), or an unfitted net; or audit the trained net "
            'as it is with cv="prefit".'
        )
    with torch_seed(random_state, exclusive=True), torch.no_grad():
        for reset in resets:
            reset()
    return fresh


#: skorch's callbacks that load or save a net's state in files.
STATE_FILE_CALLBACKS = (Checkpoint, LoadInitState, TrainEndCheckpoint)


def _without_state_files(net: NeuralNet) -> NeuralNet:
    """``net`` without its callbacks that load or save its state in files.

    Loaded, the files would start each clone from the trained weights (the
    held-out results of cross-validation would leak); saved, the clones'
    training would overwrite the trained net's files. A warning names them.
    """
    callbacks = net.callbacks if isinstance(net.callbacks, list | tuple) else []

    def touches_files(item) -> bool:
        callback = item[1] if isinstance(item, tuple) else item
        kind = callback if isinstance(callback, type) else type(callback)
        return issubclass(kind, STATE_FILE_CALLBACKS)

    dropped = [item for item in callbacks if touches_files(item)]
    if dropped:
        warnings.warn(
            f"The net's callbacks {[_callback_name(c) for c in dropped]} load or "
            "save its state in files: the clones trained for cross-validation "
            "would start from the trained weights (their held-out results would "
            "leak) or overwrite those files. The clones are trained without them "
            "(a Checkpoint's load_best, which restores the best epoch, too).",
            UserWarning,
            stacklevel=3,
        )
        net.set_params(callbacks=[c for c in callbacks if not touches_files(c)])
    return net


def _callback_name(item) -> str:
    """A skorch callback's name, as given (``(name, callback)``) or its class's."""
    if isinstance(item, tuple):
        return item[0]
    return item.__name__ if isinstance(item, type) else type(item).__name__


def resolve_module(net: NetLike) -> torch.nn.Module:
    """Return the trained :class:`torch.nn.Module` behind ``net``."""
    net = _unwrap(net)
    if isinstance(net, NeuralNet):
        if not getattr(net, "initialized_", False):
            raise NotFittedError(
                f"This {type(net).__name__} is not fitted yet: call fit() on it "
                "first, or pass it unfitted to an sksim estimator together with y "
                "so that sksim trains a clone."
            )
        module = net.module_
    elif isinstance(net, torch.nn.Module):
        module = net
    else:
        advice = ""
        if isinstance(net, Pipeline):
            advice = (
                ": pass the pipeline's net (pipe[-1]) and the inputs its other "
                "steps make (pipe[:-1].transform(X))"
            )
        raise TypeError(
            "net must be a skorch net, a FrozenEstimator around one, or a "
            f"torch.nn.Module; got {type(net).__name__}{advice}."
        )
    scripted = [
        name or "the network"
        for name, sub in module.named_modules()
        if isinstance(sub, torch.jit.ScriptModule)
    ]
    if scripted:
        raise TypeError(
            f"TorchScript modules (torch.jit.script or trace; here {scripted[0]!r}) "
            "cannot be differentiated per sample: build the network from the "
            "nn.Modules they were made from (torch.compile'd modules are taken)."
        )
    return module


#: How :func:`weights_digest` names a value held as an attribute.
_ATTRIBUTE = "the attribute"


def weights_digest(module: torch.nn.Module, checkpointed: bool = False) -> dict:
    """Digests of ``module``'s layers, the values they hold and its weights.

    By what each describes (``"the layer 'fc'"``, ``"the tensor 'fc.weight'"``):
    equal digests mean equal layers (their names, types and settings, a
    ``Tanh`` replaced by a ``ReLU`` too, and the plain values their
    ``forward`` may read, such as a temperature), equal values held as
    attributes (see :func:`_held_values`) and equal weights (dtypes, shapes
    and bytes, and which parameters are trainable: the gradients are
    theirs), wherever the tensors live. ``checkpointed`` leaves out the
    values of the tensors of the ``state_dict``, which every checkpoint
    replaces.
    """
    unread = module.state_dict(keep_vars=True).keys() if checkpointed else ()
    digests = {
        (f"the layer {name!r}" if name else "the network's own settings"): (
            tensors_digest([(name, settings)])
        )
        for name, settings in _layer_settings(module)
    }
    digests |= {
        f"{_ATTRIBUTE} {name!r}": tensors_digest([(name, value)])
        for name, value in _held_values(module)
    }
    named = itertools.chain(module.named_parameters(), module.named_buffers())
    digests |= {
        f"the tensor {name!r}": tensors_digest([(name, tensor)], unread)
        for name, tensor in named
    }
    return digests


def changed_parts(before: dict, after: dict) -> str:
    """The parts of two :func:`weights_digest` that differ (three named), in words.

    An attribute in one of them only is not counted: a forward pass wrote it
    since (see :func:`_held_values`).
    """
    changed = [
        part
        for part in {**before, **after}
        if before.get(part) != after.get(part)
        and (part in before.keys() & after.keys() or not part.startswith(_ATTRIBUTE))
    ]
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return ", ".join(changed[:3]) + more


def _held_values(module: torch.nn.Module) -> Iterator[tuple[str, object]]:
    """Each layer's other values its ``forward`` may read, by name.

    Tensors held as attributes (neither parameters nor buffers, such as a
    temperature ``torch.tensor(1.0)``), NumPy scalars, and tuples of them and
    of plain values; tensors as their layout, dtype, shape and bytes. Not
    lists, dicts and arrays, which forward passes may fill in place unseen
    (the outputs that hooks record), nor what sksim's passes saw written or
    changed in place (a cache, a recorded activation), nor the weights
    ``weight_norm`` and ``spectral_norm`` compute from parameters before each
    pass.
    """
    for name, layer in module.named_modules():
        made = WRITTEN.get(layer, set()) | {
            hook.name
            for hook in layer._forward_pre_hooks.values()
            if isinstance(hook, WeightNorm | SpectralNorm)
        }
        for attribute, value in sorted(vars(layer).items()):
            if (
                attribute.startswith("_")
                or attribute == "training"
                or attribute in made
            ):
                continue
            if isinstance(value, torch.Tensor | np.generic | tuple):
                held = _as_arrays(value)
                if held is not _UNHELD:
                    yield f"{name}.{attribute}" if name else attribute, held


_UNHELD = object()  # a value holding other objects than those digested


def _as_arrays(value):
    """``value``, its tensors as arrays of their bytes; ``_UNHELD`` for others."""
    if isinstance(value, torch.Tensor):
        return [
            (str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy())
            for t in strided_parts(value.detach().cpu())
        ]
    plain = np.generic | bool | int | float | complex | str | bytes
    if value is None or isinstance(value, plain):
        return value
    if isinstance(value, tuple):
        items = [_as_arrays(part) for part in value]
        if not any(item is _UNHELD for item in items):
            return items
    return _UNHELD


def _layer_settings(module: torch.nn.Module) -> list[tuple[str, tuple]]:
    """Each layer's name, and its type, settings (``extra_repr``) and plain values.

    Parameter containers describe their parameters' devices: their tensors
    count by themselves. The plain values are those of
    :func:`~._engine.context.plain_settings`, such as a temperature set
    after training.
    """
    containers = (torch.nn.ParameterList, torch.nn.ParameterDict)
    return [
        (
            name,
            (
                type(layer).__qualname__,
                "" if isinstance(layer, containers) else layer.extra_repr(),
                repr(sorted(plain_settings(layer).items())),
            ),
        )
        for name, layer in module.named_modules()
    ]


def predicted_probabilities(net: NetLike, X: NetInput) -> np.ndarray:
    """``net.predict_proba(X)`` in eval mode, float64, checked to be probabilities.

    skorch applies a softmax to the module's outputs only for a
    ``CrossEntropyLoss`` criterion (a sigmoid for ``BCEWithLogitsLoss``); with
    another one ``predict_proba`` gives the outputs as they are, which would
    be read as probabilities without a word. Rows holding NaN or infinity
    are left to the checks of the network's outputs. The torch global
    generator is left as it was, as are the module's modes.
    """
    module = resolve_module(net)
    X = float_inputs_as(X, module_float_dtype(module))
    with forked_rng(exclusive=True), evaluation_mode(module), skorch_errors():
        P = np.asarray(net.predict_proba(X), dtype=np.float64)
    if P.ndim != 2:
        return P  # the callers say what shape they need
    finite = P[np.isfinite(P).all(axis=1)]
    sums = finite.sum(axis=1)
    if len(finite) and (finite.min() < 0 or not np.allclose(sums, 1, atol=1e-3)):
        raise ValueError(
            f"{type(_unwrap(net)).__name__}.predict_proba does not give class "
            f"probabilities: values from {finite.min():.3g} to {finite.max():.3g}, "
            f"rows summing to {sums.min():.3g} to {sums.max():.3g}. "
            + _probability_advice(_unwrap(net))
        )
    return P


def _probability_advice(net) -> str:
    """What to do about a ``predict_proba`` that gives no probabilities."""
    criterion = getattr(net, "criterion", None)
    if isinstance(criterion, torch.nn.NLLLoss) or (
        isinstance(criterion, type) and issubclass(criterion, torch.nn.NLLLoss)
    ):
        return (
            "With the criterion NLLLoss (skorch's default), skorch takes the log "
            "of the module's outputs as they are, which must then be "
            "probabilities: a network trained so on other outputs was trained on "
            "the log of these values (a NaN loss where they are negative). End "
            "the module with a softmax, or train with "
            "criterion=torch.nn.CrossEntropyLoss on its logits."
        )
    return (
        "skorch applies a softmax to the module's outputs only when the criterion "
        "is CrossEntropyLoss: set the net's predict_nonlinearity (e.g. "
        "predict_nonlinearity=lambda out: out.softmax(dim=-1)), or make the module "
        "output probabilities."
    )


def _classes_found(y) -> str:
    """``"; the labels hold k classes, from a to b"``, for an error message."""
    labels = np.unique(np.asarray(y))
    return f"; the labels hold {len(labels)} classes, from {labels[0]} to {labels[-1]}"


def float_inputs_as(X, dtype: torch.dtype):
    """Float arrays (or tensors, a dict of them, a dataset's items) in ``dtype``.

    As the module takes them: skorch passes inputs as they are.
    """
    if isinstance(X, dict):
        return {k: float_inputs_as(v, dtype) for k, v in X.items()}
    if is_dataset(X):
        return _ItemsInDtype(X, dtype)
    if isinstance(X, torch.Tensor) and X.is_floating_point():
        return X.to(dtype)
    numpy_dtype = {torch.float64: np.float64, torch.float32: np.float32}.get(dtype)
    if isinstance(X, np.ndarray) and X.dtype.kind == "f" and numpy_dtype:
        return X.astype(numpy_dtype, copy=False)
    return X


class _ItemsInDtype(Dataset):
    """A dataset whose items' float inputs are in ``dtype``, their labels as given."""

    def __init__(self, dataset: Dataset, dtype: torch.dtype):
        self.dataset, self.dtype = dataset, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self._cast(self.dataset[i])

    def __getitems__(self, rows: list[int]) -> list:
        """The items of ``rows``, read together where the dataset can."""
        if hasattr(self.dataset, "__getitems__"):
            items = self.dataset.__getitems__(rows)
        else:
            items = [self.dataset[i] for i in rows]
        return [self._cast(item) for item in items]

    def _cast(self, item):
        if isinstance(item, tuple | list):
            return (float_inputs_as(item[0], self.dtype), *item[1:])
        return float_inputs_as(item, self.dtype)


def resolve_device(
    net: NetLike, device: str | torch.device | None = None, float64: bool = True
) -> torch.device:
    """The device to compute on: ``device`` if given, else the net's own.

    Checked by :func:`~._engine.context.check_device` (``float64``: the
    work needs float64 tensors there).
    """
    if device is None:
        first = next(resolve_module(net).parameters(), None)
        device = "cpu" if first is None else first.device
    return check_device(device, float64)
