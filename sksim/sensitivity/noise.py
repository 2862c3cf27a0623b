"""Isotropic noise whose norm matches a deformation's."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state

from .._typing import ArrayOrTensor
from .._validation import is_finite_number

NOISE_NORMS = ("per_sample", "batch_mean")


def check_noise_norm(noise_norm: str | float) -> None:
    """Raise a ValueError unless ``noise_norm`` is a known noise matching."""
    if isinstance(noise_norm, str):
        known = noise_norm in NOISE_NORMS
    else:
        known = is_finite_number(noise_norm) and noise_norm >= 0
    if not known:
        raise ValueError(
            f"noise_norm must be one of {NOISE_NORMS} or a finite non-negative "
            f"float; got {noise_norm!r}."
        )


def noise_like(
    x: torch.Tensor,
    x_deformed: torch.Tensor,
    noise_norm: str | float,
    rng: np.random.RandomState,
) -> torch.Tensor:
    """Matched noise on tensors (same device and dtype as ``x``).

    The Gaussian directions are drawn on the CPU in float64 from a seed taken
    from ``rng``, so a seed gives the same noise on every device.
    """
    generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
    xi = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float64)
    xi = xi.to(x.device)
    if isinstance(noise_norm, str):
        moved = x_deformed.to(torch.float64) - x.to(torch.float64)
        target = _sample_norms(moved)
        del moved
        if noise_norm == "batch_mean":
            target = target.mean().expand(len(x))
    else:
        target = torch.full(
            (len(x),), float(noise_norm), dtype=torch.float64, device=x.device
        )
    scale = target / _sample_norms(xi)
    return xi.mul_(scale.reshape((-1,) + (1,) * (x.dim() - 1))).to(x.dtype)


def _sample_norms(t: torch.Tensor) -> torch.Tensor:
    """The norm of each sample (row) of ``t``; of 1-D ``t``, its entries'."""
    if t.dim() == 1:  # vector_norm(dim=()) would reduce over everything
        return t.abs()
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())))


def matched_noise(
    x: ArrayOrTensor,
    x_deformed: ArrayLike | None = None,
    noise_norm: str | float = "per_sample",
    random_state: int | np.random.RandomState | None = None,
) -> ArrayOrTensor:
    """Gaussian noise with the norm of the deformation, ``|eta_i| = |tau x_i - x_i|``.

    ``eta_i = xi_i / |xi_i| * r_i`` with ``xi ~ N(0, I)``: an isotropic direction
    scaled to the matched norm ``r_i``.

    Parameters
    ----------
    x : ndarray or tensor of shape (n_samples, ...)
        Clean inputs.
    x_deformed : same as x, default=None
        Deformed inputs ``tau x``; needed unless ``noise_norm`` is a float.
    noise_norm : {"per_sample", "batch_mean"} or float, default="per_sample"
        ``"per_sample"``: ``r_i = |tau x_i - x_i|``; ``"batch_mean"``: every
        sample gets the mean of those norms; a float: that fixed norm.
    random_state : int, RandomState instance or None, default=None
        Seed of the Gaussian directions.

    Returns
    -------
    eta : same type, shape, dtype and device as ``x``
        The noise; the noisy inputs are ``x + eta``. Float64 for an array of
        integers.

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021, section 3.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.sensitivity import matched_noise
    >>> x = np.zeros((2, 4, 4))
    >>> x_def = x.copy(); x_def[0, 0, 0] = 3.0; x_def[1, 1, 1] = 4.0
    >>> eta = matched_noise(x, x_def, random_state=0)
    >>> np.linalg.norm(eta.reshape(2, -1), axis=1).round(12)
    array([3., 4.])
    """
    check_noise_norm(noise_norm)
    is_tensor = isinstance(x, torch.Tensor)
    if not is_tensor:
        x = np.asarray(x)
        x = x if x.dtype.kind == "f" else x.astype(float)
    xt = x if is_tensor else torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(noise_norm, str):
        if x_deformed is None:
            raise ValueError(
                f'noise_norm="{noise_norm}" matches the norm of x_deformed - x: '
                "pass x_deformed, or a float noise_norm."
            )
        dt = torch.as_tensor(
            x_deformed
            if isinstance(x_deformed, torch.Tensor)
            else np.asarray(x_deformed, dtype=float),
            device=xt.device,
        )
        if dt.shape != xt.shape:
            raise ValueError(
                f"x_deformed must have the shape of x {tuple(xt.shape)}; got "
                f"{tuple(dt.shape)}."
            )
    else:
        dt = xt
    eta = noise_like(xt, dt, noise_norm, check_random_state(random_state))
    return eta if is_tensor else eta.numpy()
