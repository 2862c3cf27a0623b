"""Small synthetic data sets that reproduce the papers' toy experiments."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import Bunch, check_random_state

from ._typing import ArrayOrTensor
from ._validation import check_finite_number, check_positive_int


def make_circle_sine(
    n_samples: int = 2048,
    frequency: float = 1,
    noise: float = 0.0,
    random_state: int | np.random.RandomState | None = None,
) -> Bunch:
    """The circle-sine regression toy of Charpiat et al.

    A position ``alpha ~ U[0, 1)`` on the circle gives the input
    ``(cos 2 pi alpha, sin 2 pi alpha)`` and the clean target
    ``sin(2 pi f alpha)``; with ``noise > 0`` the returned targets carry
    i.i.d. Gaussian label noise of standard deviation ``noise`` (the
    self-denoising experiment).

    Parameters
    ----------
    n_samples : int, default=2048
        Number of samples.
    frequency : float, default=1
        Number ``f`` of periods of the target around the circle; use an
        integer for a target continuous on the circle.
    noise : float, default=0.0
        Standard deviation of the label noise added to ``target``.
    random_state : int, RandomState instance or None, default=None
        Seeds the positions and the noise.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields

        * ``data``, float32 ndarray of shape (n_samples, 2): the inputs;
        * ``target``, float32 ndarray of shape (n_samples,): the (noisy)
          targets;
        * ``target_clean``, float32 ndarray of shape (n_samples,): the targets
          without noise;
        * ``curvature``, ndarray of shape (n_samples,): the magnitude of the
          target's second derivative with respect to the arc length
          ``s = 2 pi alpha`` on the unit circle, ``|d^2 y / ds^2| =
          f^2 |sin(f s)|``: zero where the target crosses zero, ``f^2`` at its
          extrema;
        * ``alpha``, ndarray of shape (n_samples,): the positions.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, the toy experiments
       on density versus frequency and on self-denoising.

    Examples
    --------
    >>> from sksim.datasets import make_circle_sine
    >>> toy = make_circle_sine(4, frequency=2, random_state=0)
    >>> toy.data.shape, toy.target.shape
    ((4, 2), (4,))
    >>> bool(abs(toy.target - toy.target_clean).max() == 0)
    True
    """
    check_positive_int(n_samples, "n_samples")
    check_finite_number(frequency, "frequency", positive=True)
    check_finite_number(noise, "noise")
    rng = check_random_state(random_state)
    alpha = rng.uniform(0.0, 1.0, n_samples)
    s = 2 * np.pi * alpha
    X = np.column_stack([np.cos(s), np.sin(s)]).astype(np.float32)
    clean = np.sin(frequency * s)
    curvature = frequency**2 * np.abs(clean)
    target = clean + noise * rng.standard_normal(n_samples) if noise > 0 else clean
    return Bunch(
        data=X,
        target=target.astype(np.float32),
        target_clean=clean.astype(np.float32),
        curvature=curvature,
        alpha=alpha,
    )


def make_planted_modes(
    n_samples_per_class: int = 300,
    n_single: int = 1,
    n_multi: int = 1,
    n_features: int = 6,
    n_modes: int = 8,
    mode_scale: float = 0.2,
    class_separation: float = 3.0,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes that are one Gaussian or many compact modes.

    The first ``n_single`` classes are standard Gaussians; the next ``n_multi``
    are mixtures of ``n_modes`` compact Gaussian clusters (standard deviation
    ``mode_scale`` around centres drawn from a standard Gaussian), rescaled so
    that every feature has mean 0 and variance 1 exactly, those a
    single-Gaussian class has in expectation. Each class is then shifted by
    its own random mean (``class_separation`` times a standard Gaussian
    vector).

    The defaults are the planted-modes check of the class fitting guide: two
    classes of 300 points in 6 dimensions, one Gaussian and one of 8 modes
    whose spread (0.2 before rescaling) is small against their distances
    (of root mean square ``sqrt(2 * 6) = 3.5``, 3.0 to 3.3 on average for 8
    modes), so that a density estimator finds the
    modes; classes 3 standard deviations apart per feature.

    Parameters
    ----------
    n_samples_per_class : int, default=300
        Points in each class.
    n_single, n_multi : int, default=1
        Numbers of single-Gaussian and multi-modal classes.
    n_features : int, default=6
        Dimension ``d``.
    n_modes : int, default=8
        Modes of each multi-modal class, equally likely.
    mode_scale : float, default=0.2
        Standard deviation of each mode around its centre, before the class is
        rescaled to unit variance (after it, about ``0.2`` divided by the
        features' standard deviation of about 1).
    class_separation : float, default=3.0
        Scale of each class's random shift.
    random_state : int, RandomState instance or None, default=None
        Seeds the points, the centres and the shifts.

    Returns
    -------
    X : ndarray of shape (n_classes * n_samples_per_class, n_features)
    y : ndarray of shape (n_classes * n_samples_per_class,)
        Labels ``0 .. n_single + n_multi - 1``.
    multimodal : ndarray of shape (n_classes,) of bool
        Whether each class is multi-modal.

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, AAAI 2023, section 4.2 (two modes of class
       fitting).

    Examples
    --------
    >>> from sksim.datasets import make_planted_modes
    >>> X, y, multimodal = make_planted_modes(50, random_state=0)
    >>> X.shape, multimodal.tolist()
    ((100, 6), [False, True])
    """
    check_positive_int(n_samples_per_class, "n_samples_per_class")
    check_positive_int(n_features, "n_features")
    check_positive_int(n_modes, "n_modes")
    check_finite_number(mode_scale, "mode_scale", positive=True)
    check_finite_number(class_separation, "class_separation")
    if n_multi and n_samples_per_class < 2:
        raise ValueError(
            "A multi-modal class is rescaled to unit variance, which needs "
            f"n_samples_per_class >= 2; got {n_samples_per_class}."
        )
    for value, name in ((n_single, "n_single"), (n_multi, "n_multi")):
        if not (isinstance(value, int | np.integer) and value >= 0):
            raise ValueError(f"{name} must be a non-negative int; got {value!r}.")
    if n_single + n_multi == 0:
        raise ValueError("n_single + n_multi must be at least 1: no class to draw.")
    rng = check_random_state(random_state)
    n, d = n_samples_per_class, n_features
    parts, multimodal = [], []
    for c in range(n_single + n_multi):
        if c < n_single:
            Xc = rng.standard_normal((n, d))
        else:
            centres = rng.standard_normal((n_modes, d))
            Xc = centres[rng.randint(n_modes, size=n)] + mode_scale * (
                rng.standard_normal((n, d))
            )
            Xc = (Xc - Xc.mean(axis=0)) / Xc.std(axis=0)
        parts.append(Xc + class_separation * rng.standard_normal(d))
        multimodal.append(c >= n_single)
    y = np.repeat(np.arange(n_single + n_multi), n)
    return np.concatenate(parts), y, np.array(multimodal)


_DISTANCES = {
    "l2": lambda d: np.sqrt((d**2).sum(-1)),
    "l1": lambda d: np.abs(d).sum(-1),
    "linf": lambda d: np.abs(d).max(-1),
}


def make_scale_detection(
    n_samples: int = 1024,
    size: int = 16,
    xi: float = 8,
    gap: float = 2,
    norm: str = "l2",
    shuffle: bool = True,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images with two active pixels, close or far apart.

    Two distinct pixels of a ``size x size`` image are set to 1. The class is
    0 ("close") when their distance is ``< xi - gap / 2`` and 1 ("far") when it
    is ``>= xi + gap / 2``; pairs in between are dropped, and the classes are
    balanced. Moving each pixel by one (see
    :func:`scale_detection_perturbation`) changes the distance by at most 2,
    so with ``gap >= 2`` labels are stable to the task's own small
    deformations while small distances matter: the task asks for spatial
    pooling at the scale ``xi``.

    Parameters
    ----------
    n_samples : int, default=1024
        Number of images; class 0 gets ``n_samples // 2`` of them.
    size : int, default=16
        Image side in pixels.
    xi : float, default=8
        Characteristic distance separating the classes.
    gap : float, default=2
        Width of the band of dropped distances around ``xi``.
    norm : {"l2", "l1", "linf"}, default="l2"
        Distance between the two pixels.
    shuffle : bool, default=True
        Shuffle the samples; otherwise class 0 comes first.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, 1, size, size), float32
    y : ndarray of shape (n_samples,), int64

    References
    ----------
    .. [1] U. M. Tomasini, L. Petrini, F. Cagnetta, M. Wyart, "How deep
       convolutional neural networks lose spatial information with training",
       2023, section 2.

    Examples
    --------
    >>> from sksim.datasets import make_scale_detection
    >>> X, y = make_scale_detection(6, size=8, xi=4, random_state=0)
    >>> X.shape, X.sum(axis=(1, 2, 3)).tolist(), sorted(y.tolist())
    ((6, 1, 8, 8), [2.0, 2.0, 2.0, 2.0, 2.0, 2.0], [0, 0, 0, 1, 1, 1])
    """
    if norm not in _DISTANCES:
        raise ValueError(f"norm must be one of {tuple(_DISTANCES)}; got {norm!r}.")
    if not (isinstance(n_samples, int | np.integer) and n_samples >= 2):
        raise ValueError(f"n_samples must be an int >= 2; got {n_samples!r}.")
    if not (isinstance(size, int | np.integer) and size >= 2):
        raise ValueError(f"size must be an int >= 2; got {size!r}.")
    if not gap > 0:
        raise ValueError(
            f"gap must be positive (the classes' distances differ by it); got {gap!r}."
        )
    distance = _DISTANCES[norm]
    largest = distance(np.array([size - 1.0, size - 1.0]))
    if not (xi - gap / 2 > 1 and xi + gap / 2 <= largest):
        raise ValueError(
            f"With size={size} and norm={norm!r}, pixel distances lie in "
            f"[1, {largest:.3g}]: xi - gap/2 must exceed 1 and xi + gap/2 must not "
            f"exceed {largest:.3g} so that both classes exist; got xi={xi}, "
            f"gap={gap}."
        )
    rng = check_random_state(random_state)
    wanted = (n_samples // 2, n_samples - n_samples // 2)
    found = ([], [])
    while any(sum(len(p) for p in f) < w for f, w in zip(found, wanted, strict=True)):
        pos = rng.randint(size, size=(4 * n_samples, 2, 2))
        d = distance((pos[:, 0] - pos[:, 1]).astype(float))
        found[0].append(pos[(d < xi - gap / 2) & (d > 0)])
        found[1].append(pos[d >= xi + gap / 2])
    pairs = np.concatenate(
        [np.concatenate(f)[:w] for f, w in zip(found, wanted, strict=True)]
    )
    X = np.zeros((n_samples, 1, size, size), dtype=np.float32)
    rows = np.arange(n_samples)
    for k in range(2):
        X[rows, 0, pairs[:, k, 0], pairs[:, k, 1]] = 1.0
    y = np.repeat([0, 1], wanted).astype(np.int64)
    if shuffle:
        order = rng.permutation(n_samples)
        X, y = X[order], y[order]
    return X, y


_STEPS = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]])


def scale_detection_perturbation(
    X: ArrayOrTensor, random_state: int | np.random.RandomState | None = None
) -> ArrayOrTensor:
    """Move each active pixel of scale-detection images by one pixel.

    Each of the two active pixels moves to a random 4-neighbour, staying in
    the image and never onto the other pixel: the task's own small
    deformation, usable as ``deformation=`` of :func:`relative_sensitivity`.
    The background is the most frequent value of each image, so images
    normalised by one mean and standard deviation (``(X - m) / s``, as probes
    in the network's input space are) work as well as raw ones; the moved
    pixels keep their values and the vacated ones take the background's. For
    a per-pixel normalisation, undo it, perturb, and normalise again.

    Parameters
    ----------
    X : ndarray or tensor of shape (n, 1, size, size) or (n, size, size)
        Images with exactly two pixels that differ from the background.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X_moved : same type, shape and device as ``X``

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.datasets import make_scale_detection, scale_detection_perturbation
    >>> X, _ = make_scale_detection(4, size=8, xi=4, random_state=0)
    >>> Xm = scale_detection_perturbation(X, random_state=0)
    >>> np.abs(Xm - X).sum(axis=(1, 2, 3)).tolist()
    [4.0, 4.0, 4.0, 4.0]
    >>> Xs = (X - 0.03) / 0.17  # standardised images move the same way
    >>> bool(np.allclose(scale_detection_perturbation(Xs, random_state=0),
    ...                  (Xm - 0.03) / 0.17))
    True
    """
    rng = check_random_state(random_state)
    is_tensor = isinstance(X, torch.Tensor)
    x = X.detach().cpu().numpy() if is_tensor else np.asarray(X)
    images = x.reshape(len(x), x.shape[-2], x.shape[-1])
    out = np.array([_moved(image, i, rng) for i, image in enumerate(images)])
    out = out.reshape(x.shape).astype(x.dtype, copy=False)
    return torch.as_tensor(out, device=X.device) if is_tensor else out


def _moved(image, i, rng):
    """One image with its two active pixels moved to random 4-neighbours."""
    values, counts = np.unique(image, return_counts=True)
    background = values[np.argmax(counts)]
    points = np.argwhere(image != background)
    if len(points) != 2:
        raise ValueError(
            f"Image {i} has {len(points)} non-zero pixels once its background "
            f"value {background:g} is subtracted; the perturbation moves the two "
            "active pixels of make_scale_detection images."
        )
    size = np.array(image.shape)
    moved = points.copy()
    for k in range(2):
        other = moved[1 - k]
        options = [
            p
            for p in points[k] + _STEPS
            if (p >= 0).all() and (p < size).all() and (p != other).any()
        ]
        moved[k] = options[rng.randint(len(options))]
    out = np.full_like(image, background)
    out[moved[:, 0], moved[:, 1]] = image[points[:, 0], points[:, 1]]
    return out
