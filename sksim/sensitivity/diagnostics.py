"""Diagnostics of how a trained net pools space and channels."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._net import resolve_module
from .._typing import NetLike

if TYPE_CHECKING:
    import pandas as pd

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _conv_layers(module: torch.nn.Module):
    return [
        (name, sub) for name, sub in module.named_modules() if isinstance(sub, _CONVS)
    ]


def shuffle_conv_input_channels(
    module: NetLike, random_state: int | np.random.RandomState | None = None
) -> torch.nn.Module:
    """Copy of the net with the input channels of every conv filter permuted.

    For each convolution (``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``) and
    each output filter ``o``, the slices ``weight[o, :, ...]`` are permuted
    along the input-channel axis with an independent random permutation.
    Every spatial filter is kept, but the learned way channels are combined
    (channel pooling) is destroyed. Biases and all other layers, transposed
    convolutions included, are unchanged; the original is not modified.

    Parameters
    ----------
    module : torch.nn.Module, skorch net or FrozenEstimator
        The trained network.
    random_state : int, RandomState instance or None, default=None
        Seed of the permutations.

    Returns
    -------
    shuffled : torch.nn.Module
        A deep copy with permuted conv weights.

    References
    ----------
    .. [1] U. M. Tomasini, L. Petrini, F. Cagnetta, M. Wyart, "How deep
       convolutional neural networks lose spatial information with training",
       2023, section 4.

    Examples
    --------
    >>> import torch
    >>> from sksim.sensitivity import shuffle_conv_input_channels
    >>> conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    >>> shuffled = shuffle_conv_input_channels(conv, random_state=0)
    >>> w, ws = conv.weight.flatten(1), shuffled.weight.flatten(1)
    >>> bool((ws.sort(1).values == w.sort(1).values).all())
    True
    """
    rng = check_random_state(random_state)
    shuffled = copy.deepcopy(resolve_module(module))
    if not _conv_layers(shuffled):
        raise ValueError(
            "The network has no convolution (nn.Conv1d, nn.Conv2d or nn.Conv3d) "
            "whose filters' input channels could be shuffled: the shuffled "
            "network would be the trained one."
        )
    with torch.no_grad():
        for _, conv in _conv_layers(shuffled):
            w = conv.weight
            n_out, n_in = w.shape[:2]
            perms = np.argsort(rng.random_sample((n_out, n_in)), axis=1)
            index = torch.as_tensor(perms, device=w.device)
            index = index.reshape(n_out, n_in, *([1] * (w.dim() - 2))).expand_as(w)
            w.copy_(torch.gather(w, 1, index))
    return shuffled


def grid_laplacian(height: int, width: int) -> np.ndarray:
    """Graph Laplacian of the 4-neighbour ``height x width`` grid (free border)."""
    n = height * width
    lap = np.zeros((n, n))
    for r in range(height):
        for c in range(width):
            p = r * width + c
            for rr, cc in ((r + 1, c), (r, c + 1)):
                if rr < height and cc < width:
                    q = rr * width + cc
                    lap[p, q] = lap[q, p] = -1.0
                    lap[p, p] += 1.0
                    lap[q, q] += 1.0
    return lap


def filter_laplacian_spectrum(
    module: NetLike, decimals: int = 8
) -> pd.DataFrame | dict[str, np.ndarray]:
    """Share of each 2-D conv layer's filter energy per Laplacian eigenvalue.

    Every spatial slice ``w = weight[o, i]`` (``k_h x k_w``) is expanded on
    the eigenvectors ``v_m`` of the grid Laplacian of its support (4-neighbour,
    free border): ``|w|^2 = sum_m (v_m . w)^2``. Energies of slices are summed
    per layer and per distinct eigenvalue, then normalised to fractions.
    Eigenvalue 0 is the constant (mean) mode; trained filters that pool space
    concentrate their energy on small eigenvalues (low frequencies).

    Parameters
    ----------
    module : torch.nn.Module, skorch net or FrozenEstimator
        The network; its ``Conv2d`` layers are analysed.
    decimals : int, default=8
        Eigenvalues equal after rounding to this many decimals are grouped.

    Returns
    -------
    spectrum : pandas.DataFrame or dict of ndarrays
        Columns ``layer``, ``eigenvalue`` and ``energy`` (fraction of the
        layer's squared filter norm; sums to 1 per layer).

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021, section 5.

    Examples
    --------
    >>> import torch
    >>> from sksim.sensitivity import filter_laplacian_spectrum
    >>> conv = torch.nn.Conv2d(1, 1, 3, bias=False)
    >>> _ = torch.nn.init.constant_(conv.weight, 1.0)
    >>> spec = filter_laplacian_spectrum(conv)
    >>> spec["energy"].round(6).tolist()[:2]
    [1.0, 0.0]
    """
    rows = {"layer": [], "eigenvalue": [], "energy": []}
    convs = [
        (n, c)
        for n, c in _conv_layers(resolve_module(module))
        if isinstance(c, torch.nn.Conv2d)
    ]
    if not convs:
        raise ValueError("The network has no torch.nn.Conv2d layer to analyse.")
    for name, conv in convs:
        w = conv.weight.detach().to("cpu", torch.float64).numpy()
        kh, kw = w.shape[-2:]
        eigval, eigvec = np.linalg.eigh(grid_laplacian(kh, kw))
        energy = ((w.reshape(-1, kh * kw) @ eigvec) ** 2).sum(0)
        total = energy.sum()
        keys = np.round(eigval, decimals) + 0.0  # no negative zero
        for value in np.unique(keys):
            rows["layer"].append(name or type(conv).__name__)
            rows["eigenvalue"].append(float(value))
            share = energy[keys == value].sum() / total if total > 0 else np.nan
            rows["energy"].append(float(share))
    return _table(rows)


def _table(rows: dict):
    try:
        import pandas as pd
    except ImportError:
        return {k: np.asarray(v) for k, v in rows.items()}
    return pd.DataFrame(rows)
