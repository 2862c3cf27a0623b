"""Class-conditional densities of representations (Jamroz & Kurdziel 2023)."""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from joblib import Parallel, delayed
from numpy.typing import ArrayLike
from scipy.spatial.distance import pdist
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._engine.worker_warnings import recording_warnings, warn_again
from .._typing import Self
from ._logdensity import expected_diagonal_gaussian_logpdf
from .dpmixture import DirichletProcessGaussianMixture, _check_int

if TYPE_CHECKING:
    import pandas as pd

_VAR_FLOOR = 1e-6  # added to class variances in the diagonal Gaussian reference
_MAX_DISTANCE_POINTS = 1000  # points per class for the mean pairwise distance
# a network computes its representations to within this many roundings of them
# (the rounding of a layer's inputs, summed over its fan-in, cancels in its outputs)
_ROUNDING_MARGIN = 100
# roundings this coarse (half precision's) put the margin at a tenth of a value
_COARSE_EPS = 1e-4


def _rounding(Z) -> float | None:
    """The relative rounding ``eps`` of ``Z``'s float dtype (torch's too), or None."""
    dtype = getattr(Z, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return float(np.finfo(dtype).eps)
    return None


def _rounding_floors(Z: np.ndarray, Vt: np.ndarray, eps: float) -> np.ndarray:
    """The singular value that rounding ``Z``'s entries can make in each direction.

    Entries rounded to a relative ``eps`` (times :data:`_ROUNDING_MARGIN`): a
    column ``j`` of norm ``|Z_j|`` adds noise of norm ``eps |Z_j|`` in its own
    direction, so the ``k``-th right singular vector ``V_k`` sees
    ``eps sqrt(sum_j V_kj^2 |Z_j|^2)`` (a large column does not drown the
    small ones).
    """
    squared_norms = np.einsum("ij,ij->j", Z, Z)
    return _ROUNDING_MARGIN * eps * np.sqrt(np.square(Vt) @ squared_norms)


def _rank(singular_values, floors) -> int:
    """The directions before the first whose singular value is within its floor."""
    above = singular_values > np.maximum(floors, singular_values[0] * 1e-12)
    return (len(above) if above.all() else int(np.argmin(above))) or 1


def _n_kept(singular_values, n_components, floors):
    rank = _rank(singular_values, floors)
    if n_components is None:
        return rank
    if isinstance(n_components, numbers.Integral):
        return min(int(n_components), rank)
    energy = np.cumsum(singular_values**2) / np.sum(singular_values**2)
    return min(int(np.searchsorted(energy, n_components) + 1), rank)


def _fit_mixture(mixture, X):
    """Fit ``mixture`` to X; return it and its log predictive density of X."""
    mixture.fit(X)
    return mixture, mixture.log_predictive(X)


class ClassConditionalDensity(ClassifierMixin, BaseEstimator):
    """One Dirichlet-process mixture density per class, on projected features.

    The representations ``Z`` of all classes are projected together on their
    top right singular vectors (an **uncentred** SVD, as in the paper), then a
    :class:`DirichletProcessGaussianMixture` is fitted to each class. The
    densities give each example's own-class log-density, a generative
    classifier ``argmax_C log p(z | C) + log p(C)``, and the class-level
    statistics of Jamroz & Kurdziel: spread of log-densities, relative entropy
    to a diagonal Gaussian, split of the classes at the largest gap of their
    mean log-densities, and between-class KL divergences.

    Log-densities depend on the projected dimension: compare them only between
    fits with the same number of components.

    Parameters
    ----------
    n_components : int, float or None, default=16
        Projected dimension ``d'``: an int (capped at the rank), a float in
        (0, 1) for the smallest ``d'`` whose singular values hold that fraction
        of the energy ``sum s^2``, or None for the full rank. The rank counts
        the directions above the rounding of ``Z``'s dtype: float32 (or
        float16) representations, a float32 network's, are rounded 5e8 times
        more coarsely than float64 ones, so pass them as they are; a direction
        along which features vary by less than 100 of their roundings is
        taken for rounding (warned of for half precision, where that is up
        to a tenth of their size). Rounding of a layer's inputs that cancels in its
        outputs (inputs of a large common offset, weights orthogonal to it)
        cannot be told from ``Z``: there, compare ``d'`` with the float64
        network's, or give ``n_components``. A bfloat16
        network's come out as float32, finer than their rounding: give those
        an ``n_components`` below their rank.
    mixture : DirichletProcessGaussianMixture, default=None
        The (unfitted) density estimator cloned for each class; None means
        ``DirichletProcessGaussianMixture()`` (Gibbs, 400 sweeps, blocked sampler
        with ``block_size="auto"``). Its
        ``random_state`` is replaced by one drawn from ``random_state``.
    priors : array-like of shape (n_classes,), default=None
        Class priors of the classifier; None uses the class frequencies.
    n_jobs : int, default=None
        Classes fitted in parallel through joblib.
    random_state : int, RandomState instance or None, default=None
        Seeds the per-class mixtures and the Monte Carlo estimates.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    components_ : ndarray of shape (d', n_features)
        Projection (top right singular vectors of the uncentred data).
    singular_values_ : ndarray of shape (d',)
    mixtures_ : list of DirichletProcessGaussianMixture
        The fitted density of each class, on projected features.
    class_prior_ : ndarray of shape (n_classes,)
    train_log_density_ : ndarray of shape (n_samples,)
        Own-class log-density of each training example.
    class_means_, class_variances_ : ndarray of shape (n_classes, d')
        Mean and variance of each class's projected training features.
    mean_intra_class_distance_ : ndarray of shape (n_classes,)
        Mean Euclidean distance between two projected examples of a class
        (on at most 1000 random examples per class).
    n_features_in_ : int

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, "Neural Representations Reveal Distinct
       Modes of Class Fitting in Residual Convolutional Networks", AAAI 2023,
       sections 3 and 4.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.representations import (ClassConditionalDensity,
    ...                                    DirichletProcessGaussianMixture)
    >>> rng = np.random.RandomState(0)
    >>> Z = np.concatenate([rng.randn(30, 3), rng.randn(30, 3) + 4])
    >>> y = np.repeat([0, 1], 30)
    >>> mix = DirichletProcessGaussianMixture(n_sweeps=10, burn_in=6, thin=2)
    >>> ccd = ClassConditionalDensity(n_components=3, mixture=mix,
    ...                               random_state=0).fit(Z, y)
    >>> ccd.score(Z, y)
    1.0
    >>> ccd.score_samples(Z[:2]).shape
    (2, 2)
    """

    def __init__(
        self,
        n_components: int | float | None = 16,
        mixture: DirichletProcessGaussianMixture | None = None,
        priors: ArrayLike | None = None,
        n_jobs: int | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_components = n_components
        self.mixture = mixture
        self.priors = priors
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _check_params(self):
        n = self.n_components
        if n is not None and not (
            (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1)
            or (isinstance(n, numbers.Real) and 0 < n < 1)
        ):
            raise ValueError(
                "n_components must be a positive int, a float in (0, 1) (energy "
                f"fraction) or None; got {n!r}."
            )
        mixture = self.mixture
        if not (
            mixture is None or isinstance(mixture, DirichletProcessGaussianMixture)
        ):
            raise TypeError(
                "mixture must be None or an unfitted DirichletProcessGaussianMixture "
                "(its predictive densities, draws and components make the class "
                f"statistics); got {mixture!r}. Set its backend and parameters "
                'there, e.g. DirichletProcessGaussianMixture(backend="variational").'
            )

    def _check_priors(self, n_classes, counts):
        if self.priors is None:
            return counts / counts.sum()
        priors = np.asarray(self.priors, dtype=np.float64)
        if priors.shape != (n_classes,):
            raise ValueError(
                f"priors must have one entry per class ({n_classes}); got shape "
                f"{priors.shape}."
            )
        if np.any(priors < 0) or not np.isclose(priors.sum(), 1.0):
            raise ValueError("priors must be non-negative and sum to 1.")
        return priors

    def fit(self, Z: ArrayLike, y: ArrayLike) -> Self:
        """Project ``Z`` and fit one DP mixture per class.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
            Representations (e.g. from :func:`extract_representations`).
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : ClassConditionalDensity
        """
        self._check_params()
        eps = _rounding(Z)  # of the representations given (float16 too)
        Z, y = validate_data(self, Z, y, dtype=[np.float64, np.float32])
        eps = np.finfo(Z.dtype).eps if eps is None else eps
        Z = Z.astype(np.float64, copy=False)
        check_classification_targets(y)
        self.classes_, y_index, counts = np.unique(
            y, return_inverse=True, return_counts=True
        )
        self.class_prior_ = self._check_priors(len(self.classes_), counts)
        _, s, Vt = np.linalg.svd(Z, full_matrices=False)
        floors = _rounding_floors(Z, Vt, eps)
        k = _n_kept(s, self.n_components, floors)
        if eps >= _COARSE_EPS and k == _rank(s, floors):
            _warn_of_coarse_rounding(s[k:], floors[k:], eps)
        self.components_, self.singular_values_ = Vt[:k], s[:k]
        P = Z @ self.components_.T
        rng = check_random_state(self.random_state)
        template = (
            DirichletProcessGaussianMixture() if self.mixture is None else self.mixture
        )
        seeds = rng.randint(2**31 - 1, size=len(self.classes_))
        members = [np.flatnonzero(y_index == c) for c in range(len(self.classes_))]
        _warn_of_single_points(self.classes_, [P[rows] for rows in members])
        fits = Parallel(n_jobs=self.n_jobs)(
            delayed(recording_warnings(_fit_mixture))(
                clone(template).set_params(random_state=int(seed)),
                P[rows],
            )
            for seed, rows in zip(seeds, members, strict=True)
        )
        self.mixtures_ = [mixture for (mixture, _), _ in fits]
        self._train_members = members
        self.train_log_density_ = np.empty(len(P))
        for ((_, log_density), raised), rows in zip(fits, members, strict=True):
            self.train_log_density_[rows] = log_density
            warn_again(raised)
        self.class_means_ = np.array([P[rows].mean(axis=0) for rows in members])
        self.class_variances_ = np.array([P[rows].var(axis=0) for rows in members])
        self.mean_intra_class_distance_ = np.array(
            [self._mean_distance(P[rows], rng) for rows in members]
        )
        return self

    @staticmethod
    def _mean_distance(P, rng):
        if len(P) < 2:
            return 0.0
        if len(P) > _MAX_DISTANCE_POINTS:
            P = P[rng.choice(len(P), _MAX_DISTANCE_POINTS, replace=False)]
        return float(pdist(P).mean())

    def _projected(self, Z):
        check_is_fitted(self)
        Z = validate_data(self, Z, dtype=np.float64, reset=False)
        return Z @ self.components_.T

    def _class_index(self, y):
        """Each label's index in ``classes_``; a ValueError names unseen ones.

        By lookup, not by sorting: labels of another type (None among
        strings) are unseen labels, not an error of their comparison.
        """
        lookup = {label: i for i, label in enumerate(self.classes_.tolist())}
        labels = np.asarray(y).ravel().tolist()
        unknown = [label for label in labels if label not in lookup]
        if unknown:
            shown = list(dict.fromkeys(map(repr, unknown)))[:5]
            raise ValueError(f"y contains labels not seen in fit: {', '.join(shown)}.")
        return np.array([lookup[label] for label in labels], dtype=np.intp)

    def _log_density_matrix(self, P):
        return np.column_stack([m.log_predictive(P) for m in self.mixtures_])

    def score_samples(self, Z: ArrayLike, y: ArrayLike | None = None) -> np.ndarray:
        """Log-densities of each example under the class densities.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            With labels, return each example's own-class log-density.

        Returns
        -------
        log_density : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        P = self._projected(Z)
        if y is None:
            return self._log_density_matrix(P)
        index = self._class_index(y)
        if len(index) != len(P):
            raise ValueError(
                f"Z and y have different lengths ({len(P)} and {len(index)})."
            )
        out = np.empty(len(P))
        for c, mixture in enumerate(self.mixtures_):
            rows = np.flatnonzero(index == c)
            if len(rows):
                out[rows] = mixture.log_predictive(P[rows])
        return out

    def predict_log_proba(self, Z: ArrayLike) -> np.ndarray:
        """Log posterior class probabilities of the generative classifier.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        with np.errstate(divide="ignore"):
            joint = self.score_samples(Z) + np.log(self.class_prior_)
        return joint - logsumexp(joint, axis=1, keepdims=True)

    def predict_proba(self, Z: ArrayLike) -> np.ndarray:
        """Posterior class probabilities ``p(C | z)``.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(Z))

    def predict(self, Z: ArrayLike) -> np.ndarray:
        """``argmax_C log p(z | C) + log p(C)``.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
            The classes of ``classes_``.
        """
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_log_proba(Z), axis=1)]

    # -- class-level statistics -------------------------------------------
    def _draws(self, n_samples):
        """``(class index, mixture, n_samples draws from it)`` of each class, lazily.

        The arguments are checked at the call, before any draw.
        """
        check_is_fitted(self)
        _check_int(n_samples, "n_samples", 1)
        rng = check_random_state(self.random_state)
        return (
            (c, mixture, mixture.sample(n_samples, random_state=rng))
            for c, mixture in enumerate(self.mixtures_)
        )

    def relative_entropy(self, n_samples: int = 1000) -> np.ndarray:
        """``KL(p_C || N(mean_C, diag var_C))`` of each class.

        The mean of ``log p_C(z)`` over draws ``z`` from the fitted class
        density ``p_C``, less the exact expectation of ``log N(z)`` under
        ``p_C`` (from its components' means and covariances: over draws, its
        estimate has no finite variance under the sampler's new-cluster
        component). The relative entropy of the *fitted* density, not of the
        data's true one. The two differ by the fit's error, which does not
        average out with more draws: on the 8 planted modes of
        :func:`~sksim.datasets.make_planted_modes` (default parameters,
        ``random_state=0``, 6 components) the estimate is 5.6-5.8 nats
        against 5.4 for the true mixture, most of the difference from the
        share of the predictive density kept for a new cluster (under half a
        percent of its mass, in a wide Student-t). Compare classes of one fit
        rather than values with a closed form.

        Parameters
        ----------
        n_samples : int, default=1000
            Draws from each class density.

        Returns
        -------
        kl : ndarray of shape (n_classes,)
        """
        draws = self._draws(n_samples)
        out = np.empty(len(self.classes_))
        for c, mixture, P in draws:
            var = self.class_variances_[c] + _VAR_FLOOR
            log_gauss = expected_diagonal_gaussian_logpdf(
                mixture, self.class_means_[c], var
            )
            out[c] = np.mean(mixture.log_predictive(P)) - log_gauss
        return out

    def kl_matrix(self, n_samples: int = 1000) -> np.ndarray:
        """Between-class KL divergences ``KL(p_i || p_j)`` by Monte Carlo.

        Parameters
        ----------
        n_samples : int, default=1000
            Draws from each class density.

        Returns
        -------
        kl : ndarray of shape (n_classes, n_classes)
            Row ``i`` uses draws from class ``i``; both directions are given
            (the matrix is not symmetric).
        """
        draws = self._draws(n_samples)
        kl = np.empty((len(self.classes_), len(self.classes_)))
        for i, _, P in draws:
            logp = self._log_density_matrix(P)
            kl[i] = (logp[:, [i]] - logp).mean(axis=0)
        return kl

    def class_summary(
        self, n_samples: int = 1000, as_frame: bool = False
    ) -> Bunch | pd.DataFrame:
        """Per-class table of the class-level statistics of the paper.

        Parameters
        ----------
        n_samples : int, default=1000
            Monte Carlo draws for the relative entropy.
        as_frame : bool, default=False
            Return a pandas DataFrame (needs pandas) instead of a Bunch.

        Returns
        -------
        summary : Bunch or pandas.DataFrame
            Columns ``class``, ``n_samples``, ``mean_log_density``,
            ``std_log_density`` (of own-class log-densities of the training
            examples), ``mean_intra_class_distance``, ``relative_entropy``
            and ``method`` (the fitting method of the class's mixture, its
            ``method_``: ``"gibbs"``, ``"blocked-gibbs"`` or ``"variational"``).
        """
        check_is_fitted(self)
        table = Bunch(**{"class": self.classes_})
        table.n_samples = np.array([len(r) for r in self._train_members])
        table.mean_log_density = np.array(
            [self.train_log_density_[r].mean() for r in self._train_members]
        )
        table.std_log_density = np.array(
            [self.train_log_density_[r].std() for r in self._train_members]
        )
        table.mean_intra_class_distance = self.mean_intra_class_distance_
        table.relative_entropy = self.relative_entropy(n_samples)
        table.method = np.array([m.method_ for m in self.mixtures_], dtype=object)
        return _as_table(table, as_frame)

    def split_classes(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Split the classes at the largest gap of their mean log-densities.

        Returns
        -------
        high : ndarray
            Labels of the classes above the gap (fitted in compact modes).
        low : ndarray
            Labels of the classes below it.
        threshold : float
            Middle of the gap.
        """
        check_is_fitted(self)
        if len(self.classes_) < 2:
            raise ValueError("split_classes needs at least two classes.")
        means = np.array(
            [self.train_log_density_[r].mean() for r in self._train_members]
        )
        ordered = np.sort(means)
        gap = int(np.argmax(np.diff(ordered)))
        threshold = float(0.5 * (ordered[gap] + ordered[gap + 1]))
        return (
            self.classes_[means > threshold],
            self.classes_[means <= threshold],
            (threshold),
        )

    def density_bins(self, n_bins: int = 10) -> np.ndarray:
        """Bin index of each training example by own-class log-density.

        Parameters
        ----------
        n_bins : int, default=10
            Equal-size bins of the examples sorted by log-density.

        Returns
        -------
        bins : ndarray of shape (n_samples,)
            0 for the lowest-density bin, ``n_bins - 1`` for the highest.
        """
        check_is_fitted(self)
        _check_int(n_bins, "n_bins", 1)
        n = len(self.train_log_density_)
        if n_bins > n:
            raise ValueError(
                f"n_bins={n_bins} exceeds the number of training examples ({n})."
            )
        order = np.argsort(self.train_log_density_, kind="stable")
        bins = np.empty(n, dtype=np.intp)
        bins[order] = np.arange(n) * n_bins // n
        return bins


def _as_table(table, as_frame):
    if not as_frame:
        return table
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dev dependency
        raise ImportError("as_frame=True needs pandas: pip install pandas.") from exc
    return pd.DataFrame(dict(table))


def _warn_of_coarse_rounding(singular_values, floors, eps) -> None:
    """Warn of dropped directions far above half-precision rounding.

    ``singular_values`` and ``floors``: of the directions the rank test took
    for rounding. Those above 3 roundings of the entries may hold the
    network's features, varying by up to a tenth of their size.
    """
    doubtful = int(np.sum(singular_values > 3 * floors / _ROUNDING_MARGIN))
    if doubtful:
        warnings.warn(
            f"{doubtful} direction(s) of these half-precision representations, "
            f"along which features vary by 3 to {_ROUNDING_MARGIN} roundings "
            f"(up to {_ROUNDING_MARGIN * eps:.0%} of their size), are taken for "
            "the rounding of the network's own computation and dropped. If the "
            "network computed them in float32 or float64, pass them so; or give "
            "n_components to keep them.",
            UserWarning,
            stacklevel=3,
        )


def _warn_of_single_points(classes, points) -> None:
    """Warn of classes whose examples are one point (one example, or copies).

    Their mixture's spread is the prior's ``reg_covar``, not the data's: their
    log-densities, often the highest, compare with no other class's.
    """
    single = [
        c for c, P in zip(classes, points, strict=True) if np.ptp(P, axis=0).max() == 0
    ]
    if single:
        named = ", ".join(str(c) for c in single[:5]) + (
            ", ..." if len(single) > 5 else ""
        )
        warnings.warn(
            f"Classes holding a single point (one example, or copies of it): "
            f"{named}. Their densities are set by the prior's "
            "reg_covar, not by data, and compare with no other class's (their "
            "log-densities are often the highest, which puts them in the 'high' "
            "group): give them more examples, or leave them out of the comparison.",
            UserWarning,
            stacklevel=3,
        )
