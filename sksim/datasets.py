"""Small synthetic data generators and loaders of bundled data."""

import numpy as np
from sklearn.utils import check_random_state


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
