"""The network of ``sksim audit``: --model or --module, and --checkpoint's weights."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._parser import TRAINING

if TYPE_CHECKING:  # imported when used, to start quickly
    import torch
    from skorch import NeuralNet


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable ``factory`` of ``"package.module:factory"``.

    The current folder is put first on ``sys.path`` (as ``python -m sksim``
    does, and the ``sksim`` console script does not), so that the module, and
    what it imports when the factory runs, are found there.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"--module must look like package.module:factory; got {spec!r}."
        )
    if module_name.endswith(".py") or any(c in module_name for c in "/\\"):
        raise ValueError(
            f"--module names a module as Python imports it, not its file: "
            f"package.module for package/module.py (mynet for mynet.py), run "
            f"from the folder that holds it; got {module_name!r}."
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not f"{module_name}.".startswith(f"{error.name}."):
            raise  # the user's module imports something missing: its own error
        raise ValueError(
            f"--module {spec}: {error}; run sksim from the folder that holds it, "
            "or put that folder on PYTHONPATH."
        ) from error
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

    from .._engine.context import torch_seed
    from .._validation import sample_shape

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


def training_options(args: argparse.Namespace) -> dict:
    """The training options given on the command line, by skorch's names."""
    given = dict(max_epochs=args.max_epochs, lr=args.lr, batch_size=args.batch_size)
    return {name: value for name, value in given.items() if value is not None}


def build_net(args: argparse.Namespace, X: np.ndarray, n_classes: int) -> NeuralNet:
    """The unfitted skorch classifier to audit."""
    import torch
    from skorch import NeuralNet, NeuralNetClassifier

    from ..audit.models import make_classifier

    given = training_options(args)
    training = {**TRAINING, **given}
    if args.device is not None:
        training["device"] = args.device
    if args.module is None:
        return make_classifier(args.model, X, n_classes, **training)
    built = factory_output(args, X, n_classes)
    if isinstance(built, NeuralNet):
        return built.set_params(**given)
    return NeuralNetClassifier(
        built,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        verbose=0,
        **training,
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
        codes = (
            f", one per label code from 0 to the largest that --data and "
            f"--test-data hold, {n_outputs - 1} (label j is output j)"
            if n_outputs > 1 and args.n_classes is None and args.classes is None
            else ""
        )
        raise ValueError(
            f"--checkpoint {args.checkpoint} does not fit the architecture of "
            f"{architecture} for {n_outputs} outputs{codes} (with --n-classes N "
            "when the data lack some of the classes it was trained on, --classes "
            "A,B,... naming the label of each output when the labels are not the "
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
    from ..audit._findings import counted

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

    from .._engine.context import check_device, evaluation_mode, forked_rng
    from .._engine.selection import network_logits
    from .._validation import sample_shape

    if isinstance(net, NeuralNet):
        if net.device is not None:  # None: skorch moves nothing
            try:
                check_device(net.device)
            except ValueError as error:  # --device sets the net's
                raise ValueError(
                    str(error).replace('device="cpu"', "--device cpu")
                ) from None
        with forked_rng():  # the weights of a check: the user's generator untouched
            initialized = clone(net).initialize()
        module = initialized.module_
    else:
        module = net
    architecture = args.module or f"--model {args.model}"
    device = next(module.parameters()).device

    def two_samples():  # a copy: the network may change its input in place
        if isinstance(X, dict):
            return {k: torch.tensor(v[:2], device=device) for k, v in X.items()}
        return torch.tensor(np.asarray(X[:2]), device=device)

    try:
        with evaluation_mode(module), torch.no_grad():
            inputs = two_samples()
            out = module(**inputs) if isinstance(inputs, dict) else module(inputs)
            if args.checkpoint is None and isinstance(net, NeuralNet):
                _check_trainable_output(initialized, two_samples(), architecture)
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
    except TypeError as error:
        if not isinstance(X, dict) or "keyword argument" not in str(error):
            raise
        raise ValueError(
            f"the network of {architecture} does not take the inputs saved by "
            f"name, {', '.join(X)}: each array is passed to its forward by its "
            f"name ({error}); save them under the names forward takes."
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
        from .._layers import RepresentationCapture

        RepresentationCapture(module, args.layers)  # names checked


def _check_trainable_output(net: NeuralNet, inputs, architecture: str) -> None:
    """Refuse a net whose output skorch's own loss cannot train on.

    skorch's losses take a tensor of logits; a Hugging Face model gives an
    output object (its ``.logits`` among others), which a net of the user's
    may turn into logits in its ``infer`` or read in its ``get_loss``.
    """
    import torch

    if not type(net).get_loss.__module__.startswith("skorch."):
        return
    out = net.infer(inputs)
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the network of {architecture} outputs a {type(out).__name__}, not "
            "a tensor of logits, which training with skorch's loss needs: make "
            "the module's forward return the logits (for a Hugging Face model, "
            "model(**inputs).logits), or audit a model you trained as it is, "
            "with --checkpoint."
        )
