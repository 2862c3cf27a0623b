"""Small synthetic data sets that reproduce the papers' toy experiments."""

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._validation import check_positive_int


def make_circle_sine(n_samples=2048, frequency=1, noise=0.0, random_state=None):
    """The circle-sine regression toy of Charpiat et al. (SPEC 7.1).

    A position ``alpha ~ U[0, 1)`` on the circle gives the input
    ``(cos 2 pi alpha, sin 2 pi alpha)`` and the clean target
    ``sin(2 pi f alpha)``; with ``noise > 0`` the returned targets carry
    i.i.d. Gaussian label noise of standard deviation ``noise`` (SPEC 7.2).

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
       on density versus frequency and on self-denoising; SPEC 7.1 and 7.2.

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
    if not np.isfinite(frequency) or frequency <= 0:
        raise ValueError(f"frequency must be a positive number; got {frequency!r}.")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a non-negative number; got {noise!r}.")
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
    n_samples_per_class=300,
    n_single=1,
    n_multi=1,
    n_features=6,
    n_modes=8,
    mode_scale=0.2,
    class_separation=3.0,
    random_state=None,
):
    """Classes that are one Gaussian or many compact modes (SPEC 7.5).

    The first ``n_single`` classes are standard Gaussians; the next ``n_multi``
    are mixtures of ``n_modes`` compact Gaussian clusters (standard deviation
    ``mode_scale`` around centres drawn from a standard Gaussian), rescaled so
    that every feature has exactly the empirical mean and unit variance of a
    single-Gaussian class. Each class is then shifted by its own random mean
    (``class_separation`` times a standard Gaussian vector).

    Parameters
    ----------
    n_samples_per_class : int, default=300
    n_single, n_multi : int, default=1
        Numbers of single-Gaussian and multi-modal classes.
    n_features : int, default=6
    n_modes : int, default=8
    mode_scale : float, default=0.2
    class_separation : float, default=3.0
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_classes * n_samples_per_class, n_features)
    y : ndarray of shape (n_classes * n_samples_per_class,)
        Labels ``0 .. n_single + n_multi - 1``.
    multimodal : ndarray of shape (n_classes,) of bool
        Whether each class is multi-modal.

    References
    ----------
    .. [1] P. Jamroz, M. Kurdziel, AAAI 2023, section 4.2 (two modes of class
       fitting).

    Examples
    --------
    >>> from sksim.datasets import make_planted_modes
    >>> X, y, multimodal = make_planted_modes(50, random_state=0)
    >>> X.shape, multimodal.tolist()
    ((100, 6), [False, True])
    """
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
