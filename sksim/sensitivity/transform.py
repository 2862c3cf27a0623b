"""Random max-entropy deformations as a scikit-learn transformer."""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from .._engine.inputs import check_finite, is_dataset
from .._typing import Self
from .._validation import check_net_input
from .diffeo import as_channels, check_deformation, deform, temperature_from_delta

CONTAINERS = ("default", "pandas", "polars")  # set_output's, as scikit-learn's


_LAYOUTS = {
    2: "signals (n_samples, L)",
    3: "single-channel images (n_samples, H, W)",
    4: "images (n_samples, C, H, W)",
}


class DiffeoTransform(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Deform every input by its own random max-entropy diffeomorphism.

    Sample ``i`` of ``X`` is pulled back along the ``i``-th field drawn from
    ``random_state`` (:func:`sample_diffeo`, :func:`apply_diffeo`); ``fit``
    only validates. An int ``random_state`` gives the same fields, in the same
    order, on every call (reproducible audits): the field follows the row, not
    the image, so reordering ``X`` or taking some of its rows deforms an image
    by another field. ``None`` or a ``RandomState`` instance gives fresh ones
    (data augmentation).

    Torch tensors are transformed on their own device and returned as
    tensors, so the transformer also serves as a torch/skorch augmentation,
    for instance in a collate function:
    ``iterator_train__collate_fn=lambda b: (aug.transform(default_collate(b)[0]),
    default_collate(b)[1])``. Under a pandas output (``set_output`` or
    scikit-learn's ``transform_output`` setting), arrays of signals become
    DataFrames named as the inputs; images and tensors are returned as they are.

    Parameters
    ----------
    delta : float, default=1.0
        Typical displacement in pixels; the temperature is
        ``T = 4 delta^2 / (pi n^2 ln c)`` for images,
        ``T = 2 delta^2 / (n^2 sum_{i <= c} 1 / i^2)`` for signals ``(n, L)``.
    cutoff : int, default=3
        Highest wave number ``c``; at least 2 for images (their temperature
        divides by ``ln c``).
    interp : {"linear", "nearest", "gaussian"}, default="linear"
        Interpolation (see :func:`apply_diffeo`).
    random_state : int, RandomState instance or None, default=None
        Seed of the fields.

    Attributes
    ----------
    n_features_in_ : int
        Size of the second axis of ``X`` (channels, rows, or signal length).

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021, section 3.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.sensitivity import DiffeoTransform
    >>> X = np.random.RandomState(0).rand(4, 1, 8, 8)
    >>> Xt = DiffeoTransform(delta=1.0, random_state=0).fit_transform(X)
    >>> Xt.shape, bool(np.allclose(Xt[..., 0, :], X[..., 0, :]))
    ((4, 1, 8, 8), True)
    """

    def __init__(
        self,
        delta: float = 1.0,
        cutoff: int = 3,
        interp: str = "linear",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.delta = delta
        self.cutoff = cutoff
        self.interp = interp
        self.random_state = random_state

    def _check_params(self):
        check_deformation(self.delta, self.cutoff, self.interp)

    def fit(self, X: ArrayLike, y: Any = None) -> Self:
        """Validate the parameters and the input shape.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W), (n_samples, H, W) or \
(n_samples, L)
            Square images, or signals.
        y : ignored

        Returns
        -------
        self : object
        """
        self._check_params()
        X = self._validate(X, reset=True)
        as_channels(X)
        self._n_dims = X.dim()
        if X.dim() > 2:  # images need cutoff >= 2: refused here, not later
            temperature_from_delta(self.delta, self.cutoff, X.shape[-1])
        return self

    def set_output(self, *, transform: str | None = None) -> Self:
        """Set the container of the deformed arrays of signals, as scikit-learn does.

        Parameters
        ----------
        transform : {"default", "pandas", "polars"}, default=None
            ``"pandas"`` or ``"polars"``: arrays of signals ``(n_samples, L)``
            come back as DataFrames named as the inputs; ``"default"``: as
            arrays; None leaves the setting (scikit-learn's
            ``transform_output`` rules until one is set). Images and tensors
            are returned as they are, whatever the setting.

        Returns
        -------
        self : object
        """
        if transform is not None:
            if transform not in CONTAINERS:
                raise ValueError(
                    f"transform must be one of {CONTAINERS} or None; got {transform!r}."
                )
            self._sklearn_output_config = {"transform": transform}  # cloned so
        return self

    def _contained(self, out: np.ndarray, X) -> Any:
        """The deformed arrays ``out`` in the container of the output setting."""
        own = getattr(self, "_sklearn_output_config", {}).get("transform")
        container = own or sklearn.get_config()["transform_output"]
        if out.ndim != 2 or container == "default":
            return out
        names = self.get_feature_names_out()
        if container == "pandas":
            import pandas

            return pandas.DataFrame(out, columns=names, index=getattr(X, "index", None))
        import polars

        return polars.DataFrame(out, schema=list(names))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The names of the outputs of signals ``(n_samples, L)``: the inputs'.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            The input names; None takes ``feature_names_in_`` if fit saw
            them, else ``x0, x1, ...``.

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self)
        if self._n_dims > 2:
            raise ValueError(
                "DiffeoTransform names the features of signals (n_samples, L); "
                "images keep their shape and have no feature names."
            )
        return _check_feature_names_in(self, input_features)

    def _validate(self, X, reset):
        if is_dataset(X):
            raise TypeError(
                "DiffeoTransform deforms arrays or tensors of signals or "
                f"images, not a {type(X).__name__}: pass its inputs as one."
            )
        if isinstance(X, torch.Tensor):
            check_finite(X)
            if not reset and X.dim() > 1 and X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but DiffeoTransform is "
                    f"expecting {self.n_features_in_} features as input."
                )
            if reset:
                self.n_features_in_ = X.shape[1]
            return X if X.is_floating_point() else X.to(torch.float64)
        X = check_net_input(X, self, reset=reset)
        X = X if X.dtype.kind == "f" else X.astype(np.float64)
        return torch.from_numpy(np.array(X, order="C"))  # a copy

    def transform(self, X: ArrayLike) -> np.ndarray | torch.Tensor:
        """Deform each sample by its own random field.

        Parameters
        ----------
        X : array-like or tensor, shaped as in ``fit``

        Returns
        -------
        X_deformed : ndarray or tensor of the same shape (and device)
        """
        check_is_fitted(self)
        self._check_params()
        is_tensor = isinstance(X, torch.Tensor)
        x = self._validate(X, reset=False)
        if x.dim() != self._n_dims:
            raise ValueError(
                f"X has shape {tuple(x.shape)}, but DiffeoTransform was fitted "
                f"on {_LAYOUTS[self._n_dims]}: transform inputs of the same "
                "layout (images may change their size)."
            )
        rng = check_random_state(self.random_state)
        out = deform(x, self.delta, self.cutoff, self.interp, rng)
        return out if is_tensor else self._contained(out.numpy(), X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
