"""Maximum-entropy diffeomorphisms of square images (Petrini et al. 2021, section 3).

A displacement component on the unit square is the sine series
``sum_{i,j>=1} C_ij sin(i pi u) sin(j pi v)`` with ``C_ij ~ N(0, T / (i^2 + j^2))``,
kept for ``sqrt(i^2 + j^2) < c + 0.5``; in pixels it is multiplied by the image
size ``n``. Pixel ``k`` of an ``n``-pixel axis sits at ``u = k / (n - 1)``, so
the field vanishes on the border. Images are pulled back,
``(tau x)(s) = x(s - tau(s))``, with source coordinates clamped to the image.

Two-dimensional inputs ``(n_samples, L)`` are taken as one-dimensional signals,
deformed by the one-dimensional analogue ``sum_i C_i sin(i pi u)`` with
``C_i ~ N(0, T / i^2)``, ``i < c + 0.5`` (the same maximum-entropy argument on
one axis); this sksim extension lets the estimators accept any
``(n_samples, n_features)`` array.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state

from .._typing import ArrayOrTensor
from .._validation import check_finite_number

INTERPOLATIONS = ("linear", "nearest", "gaussian")
# the width in pixels of the Gaussian interpolation in Petrini et al.'s own code
GAUSSIAN_SIGMA = 0.4715


def _check_cutoff(cutoff) -> None:
    if isinstance(cutoff, bool) or not isinstance(cutoff, Integral) or cutoff < 1:
        raise ValueError(f"cutoff must be a positive int; got {cutoff!r}.")


def _check_size(n) -> None:
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(
            f"n (the image side in pixels) must be a positive int; got {n!r}."
        )


def kept_modes(cutoff: int, ndim: int = 2) -> np.ndarray:
    """Integer wave vectors ``k`` (all entries >= 1) with ``|k| < cutoff + 0.5``.

    Returns an int array of shape ``(n_modes, ndim)``.
    """
    _check_cutoff(cutoff)
    axes = np.meshgrid(*[np.arange(1, cutoff + 1)] * ndim, indexing="ij")
    k = np.stack([a.ravel() for a in axes], axis=1)
    return k[(k**2).sum(1) < (cutoff + 0.5) ** 2]


def temperature_from_delta(delta: float, cutoff: int = 3, n: int = 32) -> float:
    """Temperature whose deformations move pixels by about ``delta`` pixels.

    ``T(delta) = 4 delta^2 / (pi n^2 ln c)`` (the paper's), from approximating the
    sum ``sum_kept 1/(i^2 + j^2)`` by the quarter-disc integral
    ``(pi / 2) ln c``. The exact root-mean-square displacement of the sampled
    fields is ``sqrt(T n^2 / 2 * sum_kept 1/(i^2+j^2))``: about ``0.84 delta``
    for ``c = 3`` (the sum over the wave vectors ``(i, j)`` of positive
    entries with ``|(i, j)| < c + 1/2``); the approximation is
    kept so that numbers compare with the literature.

    Parameters
    ----------
    delta : float
        Typical displacement in pixels (non-negative).
    cutoff : int, default=3
        Highest wave number ``c``; must be at least 2 (``ln 1 = 0``).
    n : int, default=32
        Image side in pixels.

    Returns
    -------
    temperature : float

    References
    ----------
    .. [1] L. Petrini, A. Favero, M. Geiger, M. Wyart, "Relative stability
       toward diffeomorphisms indicates performance in deep nets", NeurIPS 2021,
       section 3.

    Examples
    --------
    >>> from sksim.sensitivity import temperature_from_delta
    >>> round(temperature_from_delta(1.0, cutoff=3, n=32), 7)
    0.0011318
    """
    check_finite_number(delta, "delta")
    _check_cutoff(cutoff)
    _check_size(n)
    if cutoff < 2:
        raise ValueError(
            "The temperature of a typical displacement delta needs cutoff >= 2 "
            "(it divides by ln(cutoff)); for cutoff=1, sample fields with "
            "sample_diffeo(n, cutoff=1, temperature=T) and deform with "
            "apply_diffeo (for relative_sensitivity, in a deformation= of yours)."
        )
    return 4.0 * delta * delta / (math.pi * n**2 * math.log(cutoff))


def temperature_range(n: int, cutoff: int = 3) -> tuple[float, float]:
    """Natural range ``[T_min, T_max]`` of temperatures (Petrini et al. 2021).

    ``T_min = 1 / (pi n^2 ln c)`` (typical displacement of half a pixel) and
    ``T_max = 4 / (pi^3 c^2 ln c)`` (beyond it the map stops being a
    diffeomorphism: displacement ``n / (pi c)``, comparable to the shortest
    wavelength).

    Parameters
    ----------
    n : int
        The images' side, in pixels.
    cutoff : int, default=3
        Highest wave number ``c`` of the deformations, at least 2.

    Returns
    -------
    T_min, T_max : float

    Examples
    --------
    >>> from sksim.sensitivity import temperature_range
    >>> [round(t, 6) for t in temperature_range(32, cutoff=3)]
    [0.000283, 0.013047]
    """
    _check_size(n)
    _check_cutoff(cutoff)
    if cutoff < 2:
        raise ValueError("temperature_range needs cutoff >= 2.")
    log_c = math.log(cutoff)
    return 1.0 / (math.pi * n**2 * log_c), 4.0 / (math.pi**3 * cutoff**2 * log_c)


def _signal_temperature(delta: float, cutoff: int, n: int) -> float:
    # One-dimensional extension: the exact relation E tau^2 = T n^2/2 sum 1/i^2.
    return (
        2.0 * delta * delta / (n**2 * float((1.0 / kept_modes(cutoff, 1) ** 2).sum()))
    )


def _delta_temperature(delta: float, cutoff: int, n: int, ndim: int) -> float:
    """The temperature of typical displacement ``delta`` on ``n`` pixels.

    Raises a ValueError where ``delta`` is so large that it overflows.
    """
    if ndim == 2:
        temperature = temperature_from_delta(delta, cutoff, n)
    else:
        temperature = _signal_temperature(delta, cutoff, n)
    if not math.isfinite(temperature):
        raise ValueError(
            f"delta={delta!r} pixels is too large: its temperature overflows. "
            f"Displacements beyond the {n} pixels of a side are clamped to it."
        )
    return temperature


def sample_fields(
    n_fields: int,
    n: int,
    ndim: int,
    cutoff: int,
    temperature: float,
    rng: np.random.RandomState,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Displacements in pixels, shape ``(n_fields, ndim, n, ..., n)``.

    Component 0 moves along the last axis (columns), component 1 along rows.
    The coefficients are drawn from ``rng`` on the CPU, so a seed gives the
    same fields on every device.
    """
    k = kept_modes(cutoff, ndim)
    std = np.sqrt(temperature / (k**2).sum(1))
    coef = rng.standard_normal((n_fields, ndim, len(k))) * std
    coef = torch.as_tensor(coef, dtype=dtype, device=device)
    grid = torch.linspace(0.0, 1.0, n, dtype=dtype, device=device)
    waves = torch.as_tensor(k, dtype=dtype, device=device)
    # sines[m, a, p] = sin(k_{m,a} pi u_p); axis a of k runs over the field axes
    # in the order (last, second to last): u along columns, v along rows.
    sines = torch.sin(math.pi * waves[:, :, None] * grid)
    sines[..., -1] = 0.0  # sin(k pi) exactly: the border does not move
    if ndim == 1:
        field = torch.einsum("fcm,mp->fcp", coef, sines[:, 0])
    else:
        field = torch.einsum("fcm,mr,mk->fcrk", coef, sines[:, 1], sines[:, 0])
    return n * field


def sample_diffeo(
    n: int,
    cutoff: int = 3,
    temperature: float | None = None,
    delta: float = 1.0,
    n_fields: int | None = None,
    ndim: int = 2,
    random_state: int | np.random.RandomState | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Sample maximum-entropy displacement fields, in pixels.

    Parameters
    ----------
    n : int
        Image side in pixels (or signal length when ``ndim=1``).
    cutoff : int, default=3
        Keep wave vectors with ``sqrt(i^2 + j^2) < cutoff + 0.5``.
    temperature : float, default=None
        Variance scale ``T``; None derives it from ``delta`` with
        :func:`temperature_from_delta` (for ``ndim=1`` from the exact relation
        ``delta^2 = T n^2 / 2 sum_i 1/i^2``).
    delta : float, default=1.0
        Typical displacement in pixels, used when ``temperature`` is None.
    n_fields : int, default=None
        Number of independent fields; None returns a single one.
    ndim : {1, 2}, default=2
        2 for images, 1 for signals.
    random_state : int, RandomState instance or None, default=None
        Seed of the coefficients.

    Returns
    -------
    dx, dy : ndarray of shape (n, n) or (n_fields, n, n)
        Horizontal (along columns) and vertical (along rows) displacements,
        float64, zero on the border. For ``ndim=1`` only ``dx`` (shape
        ``(n,)`` or ``(n_fields, n)``) is returned.

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021, section 3.

    Examples
    --------
    >>> from sksim.sensitivity import sample_diffeo
    >>> dx, dy = sample_diffeo(8, cutoff=3, delta=1.0, random_state=0)
    >>> dx.shape, float(abs(dx[0]).max()), float(abs(dy[:, -1]).max()) < 1e-12
    ((8, 8), 0.0, True)
    """
    _check_size(n)
    _check_cutoff(cutoff)
    if ndim not in (1, 2):
        raise ValueError(f"ndim must be 1 (signals) or 2 (images); got {ndim!r}.")
    if temperature is None:
        check_finite_number(delta, "delta")
        temperature = _delta_temperature(delta, cutoff, n, ndim)
    check_finite_number(temperature, "temperature")
    if n_fields is not None and (
        isinstance(n_fields, bool) or not isinstance(n_fields, Integral) or n_fields < 1
    ):
        raise ValueError(f"n_fields must be a positive int or None; got {n_fields!r}.")
    rng = check_random_state(random_state)
    fields = sample_fields(
        1 if n_fields is None else n_fields, n, ndim, cutoff, float(temperature), rng
    ).numpy()
    if n_fields is None:
        fields = fields[0]
        return fields[0] if ndim == 1 else (fields[0], fields[1])
    return fields[:, 0] if ndim == 1 else (fields[:, 0], fields[:, 1])


#: Gaussian interpolation weights formed at once, at most: samples are
#: deformed in chunks of this many ``n^(ndim+1)`` weights.
GAUSSIAN_ELEMENTS = 2**20
#: Values of the samples :func:`deform` pulls back at a time.
DEFORMED_ELEMENTS = 2**20


def _source_index(src: torch.Tensor, size: int):
    """Lower neighbour, upper neighbour and weight of clamped coordinates."""
    lo = src.floor().clamp(0, max(size - 2, 0))
    frac = src - lo
    hi = (lo + 1).clamp(max=size - 1)
    return lo.long(), hi.long(), frac


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat[b, c, index[b, p]]`` for flat of shape (B, C, P) and index (B', P)."""
    index = index.reshape(index.shape[0], 1, -1)
    index = index.expand(flat.shape[0], flat.shape[1], -1)
    return torch.gather(flat, 2, index)


def _gaussian_weights(src: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    grid = torch.arange(size, dtype=src.dtype, device=src.device)
    logw = -((src[..., None] - grid) ** 2) / (2.0 * sigma**2)
    return torch.softmax(logw, dim=-1)


def pull_back(
    x: torch.Tensor, fields: torch.Tensor, interp: str, sigma: float = GAUSSIAN_SIGMA
) -> torch.Tensor:
    """``(tau x)(s) = x(s - tau(s))`` on tensors.

    ``x`` has shape ``(B, C, n)`` (signals) or ``(B, C, n, n)`` (images) and
    ``fields`` shape ``(B or 1, ndim, n[, n])`` in pixels, on any device.
    """
    dtype = x.dtype
    x = x.to(_working_dtype(dtype))
    fields = fields.to(dtype=x.dtype, device=x.device)
    return _pulled_back(x, fields, interp, sigma).to(dtype)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float32 at least: half precision rounds pixel coordinates past 256."""
    return torch.promote_types(dtype, torch.float32)


def _pulled_back(
    x: torch.Tensor, fields: torch.Tensor, interp: str, sigma: float
) -> torch.Tensor:
    B, C = x.shape[:2]
    n = x.shape[-1]
    step = max(1, GAUSSIAN_ELEMENTS // n ** (x.dim() - 1))
    if interp == "gaussian" and B > step:  # weights of n^3 per image and sample
        shared = len(fields) == 1  # one field for all the samples
        return torch.cat(
            [
                _pulled_back(
                    x[i : i + step],
                    fields if shared else fields[i : i + step],
                    interp,
                    sigma,
                )
                for i in range(0, B, step)
            ]
        )
    grid = torch.arange(n, dtype=x.dtype, device=x.device)
    if x.dim() == 3:
        src = (grid - fields[:, 0]).clamp(0, n - 1)
        if interp == "gaussian":
            w = _gaussian_weights(src, n, sigma)
            return torch.einsum("bpq,bcq->bcp", w.expand(B, -1, -1), x)
        if interp == "nearest":
            return _gather(x, src.round().long()).reshape(x.shape)
        lo, hi, f = _source_index(src, n)
        f = f[:, None]
        return ((1 - f) * _gather(x, lo) + f * _gather(x, hi)).reshape(x.shape)
    col = (grid[None, None, :] - fields[:, 0]).clamp(0, n - 1)
    row = (grid[None, :, None] - fields[:, 1]).clamp(0, n - 1)
    if interp == "gaussian":
        wr = _gaussian_weights(row, n, sigma).expand(B, -1, -1, -1)
        wc = _gaussian_weights(col, n, sigma).expand(B, -1, -1, -1)
        # the columns first: n^3 values a channel, where both weights at once
        # (the einsum of the three) take n^4
        columns = torch.einsum("brkq,bcpq->bcrkp", wc, x)
        return torch.einsum("brkp,bcrkp->bcrk", wr, columns)
    flat = x.reshape(B, C, n * n)
    if interp == "nearest":
        index = row.round().long() * n + col.round().long()
        return _gather(flat, index).reshape(x.shape)
    r0, r1, fr = _source_index(row, n)
    c0, c1, fc = _source_index(col, n)
    fr = fr.reshape(fr.shape[0], 1, -1)
    fc = fc.reshape(fc.shape[0], 1, -1)

    def row_mix(r: torch.Tensor) -> torch.Tensor:
        return (1 - fc) * _gather(flat, r * n + c0) + fc * _gather(flat, r * n + c1)

    return ((1 - fr) * row_mix(r0) + fr * row_mix(r1)).reshape(x.shape)


def as_channels(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """View inputs as ``(B, C, n[, n])``; return the view and the spatial ndim.

    ``(B, L)`` are signals, ``(B, H, W)`` single-channel images and
    ``(B, C, H, W)`` multi-channel images. Images must be square.
    """
    if x.dim() == 2:
        return x[:, None], 1
    if x.dim() not in (3, 4):
        raise ValueError(
            "Expected signals (n_samples, length), images (n_samples, H, W) or "
            f"(n_samples, C, H, W); got an array with {x.dim()} dimensions."
        )
    if x.shape[-1] != x.shape[-2]:
        shape = tuple(x.shape[1:])
        if x.dim() == 4 and x.shape[1] == x.shape[2]:
            hint = (
                f"these look like channel-last images {shape}: put the channels "
                "first, x.transpose(0, 3, 1, 2)"
            )
        elif x.dim() == 3:
            hint = (
                f"if these are signals of {x.shape[1]} channels {shape}, only "
                "single-channel signals (n_samples, length) are deformed; if "
                "images, pad or crop them to a square"
            )
        else:
            hint = "pad or crop them to a square first"
        raise ValueError(
            f"Images must be square (n_samples, [C,] H, H); got samples of shape "
            f"{shape}: {hint}."
        )
    return (x[:, None] if x.dim() == 3 else x), 2


def check_interp(interp: str) -> None:
    """Raise a ValueError unless ``interp`` is a known interpolation."""
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interp must be one of {INTERPOLATIONS}; got {interp!r}.")


def check_deformation(delta: float, cutoff: int, interp: str) -> None:
    """Validate the parameters of random max-entropy deformations."""
    check_finite_number(delta, "delta")
    _check_cutoff(cutoff)
    check_interp(interp)


def deform(
    x: torch.Tensor,
    delta: float,
    cutoff: int,
    interp: str,
    rng: np.random.RandomState,
) -> torch.Tensor:
    """Pull each sample of ``x`` back along its own field drawn from ``rng``.

    Fields have typical displacement ``delta`` pixels (images) or the exact
    one-dimensional analogue (signals); same device and dtype as ``x``. The
    samples are pulled back :data:`DEFORMED_ELEMENTS` values at a time: the
    interpolation's temporaries take several times what they deform.
    """
    xc, ndim = as_channels(x)
    n = xc.shape[-1]
    temperature = _delta_temperature(delta, cutoff, n, ndim)
    dtype = _working_dtype(x.dtype)
    fields = sample_fields(len(x), n, ndim, cutoff, temperature, rng, x.device, dtype)
    deformed = torch.empty_like(xc)
    step = max(1, DEFORMED_ELEMENTS // xc[0].numel())
    for i in range(0, len(xc), step):
        deformed[i : i + step] = pull_back(
            xc[i : i + step], fields[i : i + step], interp
        )
    return deformed.reshape(x.shape)


def apply_diffeo(
    images: ArrayOrTensor,
    dx: ArrayLike,
    dy: ArrayLike | None = None,
    interp: str = "linear",
    sigma: float = GAUSSIAN_SIGMA,
) -> ArrayOrTensor:
    """Deform images by pulling them back along displacement fields.

    ``(tau x)(s) = x(s - tau(s))``: the output pixel at ``s`` reads the input
    at ``s - tau(s)``, clamped to the image; one field for all channels.

    Parameters
    ----------
    images : ndarray or tensor of shape (n, C, H, W), (n, H, W) or (n, L)
        Square images (or, 2-D input, signals). A tensor stays on its device.
    dx, dy : ndarray or tensor of shape (H, W) or (n, H, W)
        Displacements in pixels along columns and rows, as returned by
        :func:`sample_diffeo`; one field for all images or one per image.
        Signals take only ``dx`` of shape (L,) or (n, L).
    interp : {"linear", "nearest", "gaussian"}, default="linear"
        Bilinear, nearest-pixel (ties rounded half to even) or Gaussian
        interpolation (separable weights ``exp(-d^2 / 2 sigma^2)`` normalised
        over the pixels of each axis; it smooths even a zero displacement).
    sigma : float, default=0.4715
        Width in pixels of the Gaussian interpolation (positive): by default
        that of the authors' code [1]_, which :func:`relative_sensitivity`
        and :class:`DiffeoTransform` use.

    Returns
    -------
    deformed : same type, shape and device as ``images``
        In their dtype when floating; integer images (such as ``uint8``
        pixels) come back as float64, the interpolated values between them.

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021, section 3.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.sensitivity import apply_diffeo
    >>> x = np.arange(9.0).reshape(1, 3, 3)
    >>> shift = np.ones((3, 3))  # every pixel reads its left neighbour
    >>> apply_diffeo(x, shift, np.zeros((3, 3)))[0]
    array([[0., 0., 1.],
           [3., 3., 4.],
           [6., 6., 7.]])
    """
    check_interp(interp)
    check_finite_number(sigma, "sigma", positive=True)
    is_tensor = isinstance(images, torch.Tensor)
    x = images if is_tensor else torch.from_numpy(np.ascontiguousarray(images))
    if not x.is_floating_point():
        x = x.to(torch.float64)
    xc, ndim = as_channels(x)
    n = xc.shape[-1]
    comps = [dx] if ndim == 1 else [dx, dy]
    if ndim == 2 and dy is None:
        raise ValueError("Images need both dx and dy; got dy=None.")
    if ndim == 1 and dy is not None:
        raise ValueError(
            f"Inputs of shape {tuple(x.shape)} are signals (n, L), which take dx "
            "alone; got dy too. Pass a single image as images[None], of shape "
            "(1, H, W)."
        )
    fields = []
    for comp in comps:
        t = torch.as_tensor(
            np.ascontiguousarray(comp) if isinstance(comp, np.ndarray) else comp,
            dtype=_working_dtype(x.dtype),
            device=x.device,
        )
        if (
            t.shape[-ndim:] != (n,) * ndim
            or t.dim() not in (ndim, ndim + 1)
            or (t.dim() == ndim + 1 and t.shape[0] not in (1, len(x)))
        ):
            raise ValueError(
                f"Displacement fields must have shape {(n,) * ndim} or "
                f"{(len(x),) + (n,) * ndim}; got {tuple(t.shape)}."
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                "Displacement fields hold NaN or infinity: pass finite fields "
                "(sample_diffeo's, or displacements in pixels)."
            )
        fields.append(t if t.dim() == ndim + 1 else t[None])
    if ndim == 2 and fields[0].shape[0] != fields[1].shape[0]:
        fields = list(torch.broadcast_tensors(*fields))
    out = pull_back(xc, torch.stack(fields, dim=1), interp, sigma).reshape(x.shape)
    return out if is_tensor else out.numpy()
