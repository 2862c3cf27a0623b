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
