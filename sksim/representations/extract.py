"""Representations of a trained network at named stages."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._engine.context import on_device
from .._engine.inputs import (
    batches,
    explained_failures,
    module_float_dtype,
    n_samples,
    to_numpy,
)
from .._layers import (
    check_finite_representations,
    check_layers,
    check_pool,
    layer_outputs,
)
from .._net import resolve_device, resolve_module
from .._typing import NetInput, NetLike
from .._validation import check_net_input, check_positive_int, sample_shape


def extract_representations(
    net: NetLike,
    X: NetInput,
    layers: str | Sequence[str],
    pool: str = "mean",
    batch_size: int = 128,
    device: str | torch.device | None = None,
    verbose: int = 0,
) -> dict[str, np.ndarray]:
    """Outputs of named modules of a trained network, one row per input.

    Forward hooks record the output of each named module while the network runs
    on ``X`` in eval mode, without gradients, in batches. Feature maps
    ``(n, C, H, W, ...)`` are pooled over their spatial axes (global average
    pooling, as in the paper's section 3), token sequences ``(n, T, E)`` over
    their tokens (those an ``attention_mask`` input keeps, as ``transformers``
    names it); outputs ``(n, d)`` are kept. A module that returns a tuple (a
    recurrent layer) is read as its first item, the network's output as the
    kernels read it (a ``transformers`` model's logits). Torch's transformer
    layers run as under training, without their fast path. Features are on
    axis 1 after convolution, batch-norm and pooling layers, on the last axis
    after linear, layer-norm, embedding, attention and recurrent layers;
    another module's output (an activation, a block), the input and the
    output are read as the layers of those kinds that read or made a tensor
    of their shape read them, when they all agree, with channels first
    otherwise.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        A trained network.
    X : array-like, tensor, dict of them, or Dataset
        Inputs, in the shape the network accepts; a map-style torch
        ``Dataset`` of ``x`` or ``(x, y)`` items is read a batch at a time.
    layers : str or list of str
        Module names as in ``module.named_modules()`` (e.g. ``"layer3"`` for
        the output of a residual stage, after its residual sum), ``torch.fx``
        node names of functional operations, ``"input"``, ``"output"``, or
        ``"all"`` (input, every leaf module in execution order, output).
    pool : {"mean", "max", "flatten", "channel_mean"}, default="mean"
        Reduction of feature maps and token sequences: global average or
        maximum over the positions (one value per channel or feature), none
        (``"flatten"``), or the average over channels or features (one value
        per position).
    batch_size : int, default=128
    device : str or torch.device, default=None
        Where to run; None keeps the network's device. Elsewhere a copy of
        the network runs; the network itself does not move.
    verbose : int, default=0
        Show a progress bar over the batches when positive.

    Returns
    -------
    representations : dict of str to ndarray of shape (n_samples, d_l)
        In the order of ``layers``, on the CPU, in the network's float dtype.

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, AAAI 2023, section 3 (stage representations).

    Examples
    --------
    >>> import torch
    >>> from sksim.representations import extract_representations
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.LazyLinear(2))
    >>> reps = extract_representations(net, torch.randn(5, 1, 6, 6), ["0", "3"])
    >>> {k: v.shape for k, v in reps.items()}
    {'0': (5, 4), '3': (5, 2)}
    """
    check_pool(pool)
    check_positive_int(batch_size, "batch_size")
    check_layers(layers)
    X = check_net_input(X, keep_tensors=True)
    device = resolve_device(net, device, float64=False)
    module = on_device(resolve_module(net), device)
    total = -(-n_samples(X) // batch_size)
    blocks = batches(X, batch_size, device, module_float_dtype(module))
    inputs = (batch for _, batch in tqdm(blocks, total=total, disable=verbose <= 0))
    # written into arrays made at the first batch: no list of batches joined
    # after, which held the result twice
    found: dict[str, np.ndarray] = {}
    start = 0
    outputs = layer_outputs(module, inputs, layers, pool)
    with explained_failures(lambda: sample_shape(X)):  # the first batch's
        first = next(outputs)
    for reps in itertools.chain([first], outputs):
        for name, t in reps.items():
            check_finite_representations(name, t, start)
            part = to_numpy(t)
            if name not in found:
                found[name] = np.empty((n_samples(X), *part.shape[1:]), part.dtype)
            elif part.shape[1:] != found[name].shape[1:]:
                raise ValueError(
                    f"Layer {name!r} gave {part.shape[1:]} values per input from "
                    f"input row {start}, {found[name].shape[1:]} before: inputs of "
                    "other sizes (sequences padded to their batch's longest) give "
                    'other numbers of values unpooled. Pool them (pool="mean"), or '
                    "pad the inputs to one size."
                )
            found[name][start : start + len(part)] = part
        start += len(t)
    return found
