"""Representations of a trained network at named stages (SPEC 6)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .._engine.inputs import batches, module_float_dtype, n_samples
from .._net import evaluation_mode, on_device, resolve_device, resolve_module
from .._validation import check_net_input, check_positive_int

POOLS = ("avg", "max", None)


def _pooled(out, name: str, pool) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"Module {name!r} returned a {type(out).__name__}, not a tensor: pick a "
            "module whose output is a single tensor."
        )
    out = out.detach()
    if out.ndim > 2 and pool == "avg":
        out = out.mean(dim=tuple(range(2, out.ndim)))
    elif out.ndim > 2 and pool == "max":
        out = out.amax(dim=tuple(range(2, out.ndim)))
    return out.reshape(out.shape[0], -1)


def extract_representations(
    net, X, layers, pool="avg", batch_size=128, device=None, verbose=0
):
    """Outputs of named modules of a trained network, one row per input.

    Forward hooks record the output of each named module while the network runs
    on ``X`` in eval mode, without gradients, in batches. Feature maps
    ``(n, C, H, W, ...)`` are pooled over their spatial axes (global average
    pooling, SPEC 6); other outputs are flattened.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        A trained network.
    X : array-like, tensor or dict of them
        Inputs, in the shape the network accepts.
    layers : str or list of str
        Module names as in ``module.named_modules()`` (e.g. ``"layer3"`` for
        the output of a residual stage, after its residual sum).
    pool : {"avg", "max", None}, default="avg"
        Pooling of feature maps over their spatial axes; None flattens them.
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
    .. [1] P. Jamroz, M. Kurdziel, AAAI 2023, section 3 (stage representations).

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
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")
    check_positive_int(batch_size, "batch_size")
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers must name at least one module.")
    module = resolve_module(net)
    named = dict(module.named_modules())
    missing = [name for name in layers if name not in named]
    if missing:
        available = [name for name in named if name][:20]
        raise ValueError(
            f"No module named {missing} in the network; available names include "
            f"{available}."
        )
    X = check_net_input(X, keep_tensors=True)
    device = resolve_device(net, device)
    module = on_device(module, device)
    named = dict(module.named_modules())
    dtype = module_float_dtype(module)
    captured: dict[str, torch.Tensor] = {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def hook_for(name):
        def hook(_module, _inputs, out):
            captured[name] = _pooled(out, name, pool)

        return hook

    handles = [named[name].register_forward_hook(hook_for(name)) for name in layers]
    total = -(-n_samples(X) // batch_size)
    try:
        with evaluation_mode(module), torch.no_grad():
            blocks = batches(X, batch_size, device, dtype)
            for _, batch in tqdm(blocks, total=total, disable=verbose <= 0):
                captured.clear()
                module(**batch) if isinstance(batch, dict) else module(batch)
                for name in layers:
                    if name not in captured:
                        raise ValueError(
                            f"Module {name!r} was not called in the forward pass; "
                            "pick a module that the network uses."
                        )
                    parts[name].append(captured[name].cpu().numpy())
    finally:
        for handle in handles:
            handle.remove()
    return {name: np.concatenate(parts[name]) for name in layers}
