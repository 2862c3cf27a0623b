"""Type aliases of sksim's public signatures, each defined once."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Self, TypeAlias, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNet
from torch.utils.data import Dataset

__all__ = [
    "ArrayOrTensor",
    "Checkpoints",
    "NetInput",
    "NetLike",
    "Output",
    "Self",
]

# What ``net`` accepts: a skorch net (fitted, or unfitted to be trained in
# ``fit``), a FrozenEstimator around one, or a trained torch module.
NetLike: TypeAlias = NeuralNet | FrozenEstimator | torch.nn.Module

# The inputs of a network: an array or tensor, a dict of them passed to the
# module as keywords, or a map-style torch Dataset of ``x`` or ``(x, y)`` items.
NetInput: TypeAlias = ArrayLike | Mapping[str, ArrayLike] | Dataset

# Which outputs form the Jacobian: "logits" (all), one index, or a callable
# mapping the batch output to a tensor of shape (B,) or (B, d).
Output: TypeAlias = str | int | Callable[[torch.Tensor], torch.Tensor]

# The ``checkpoints=`` parameter: state_dicts or paths of files holding them.
Checkpoints: TypeAlias = Sequence[Mapping[str, torch.Tensor] | str | os.PathLike]

# An array or a tensor, returned as the same type as it came.
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)
