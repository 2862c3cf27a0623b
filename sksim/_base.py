"""The shared base of sksim's network estimators.

One table of parameter constraints, one opening of ``fit`` (validation, the
trained net, ``n_features_in_``, the seed) and one gradient engine per fit,
reused by every later call.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._engine.checkpoints import (
    WeightedEngines,
    check_checkpoints,
    check_weighted,
    checkpoint_seed,
    checkpoint_shares,
)
from ._engine.context import uncompiled
from ._engine.features import piece_energies
from ._engine.inputs import is_dataset, n_samples
from ._engine.jacobian import JacobianEngine
from ._engine.normalize import KINDS
from ._net import (
    changed_parts,
    fit_net,
    resolve_module,
    training_input,
    weights_digest,
)
from ._typing import Checkpoints, NetLike, Output
from ._validation import check_checkpoint_list, check_net_input, sample_shape

POSITIVE_INT = Interval(Integral, 1, None, closed="left")

CONSTRAINTS = {
    "net": "no_validation",
    "output": [
        StrOptions({"logits"}),
        Interval(Integral, None, None, closed="neither"),
        callable,
    ],
    "kind": [StrOptions(set(KINDS))],
    "params": [None, str, list, tuple],
    "batch_size": [POSITIVE_INT, StrOptions({"auto"})],
    "device": [None, str, torch.device],
    "rtol": [Interval(Real, 0, 1, closed="neither")],
    "n_components": [POSITIVE_INT, None],
    "random_state": ["random_state"],
    "n_jobs": [  # joblib's: -1 for every core, -2 for all but one, ...; not 0
        Interval(Integral, None, -1, closed="right"),
        POSITIVE_INT,
        None,
    ],
    "max_memory": [POSITIVE_INT, None],
    "verbose": ["verbose"],
    "checkpoints": [list, tuple, None],
    "checkpoint_weights": ["array-like", None],
}


def constraints(*names: str, **own: Any) -> dict:
    """The shared constraints of ``names``, with an estimator's ``own`` added."""
    return {name: CONSTRAINTS[name] for name in names} | own


def make_engine(
    net: NetLike,
    output: Output,
    params: str | Sequence[str] | None,
    batch_size: int | str,
    device: str | torch.device | None,
    verbose: int,
    max_memory: int | None,
) -> JacobianEngine:
    """The gradient engine of the trained module behind ``net``."""
    return JacobianEngine(
        resolve_module(net),
        output,
        params,
        None if batch_size == "auto" else batch_size,
        device,
        verbose,
        max_memory,
    )


def make_engines(
    net: NetLike,
    checkpoints: Checkpoints | None,
    checkpoint_weights: ArrayLike | None,
    output: Output,
    params: str | Sequence[str] | None,
    batch_size: int | str,
    device: str | torch.device | None,
    verbose: int,
    max_memory: int | None,
    validate: bool = True,
    digests: list[str] | None = None,
) -> WeightedEngines:
    """The engines of ``net`` at its checkpoints, with their shares.

    Without checkpoints, the one engine of ``net`` as it is, of share 1.
    ``validate`` reads every checkpoint first to check it against the network;
    otherwise ``digests`` (those ``fit`` took) check each as it is read.
    """
    check_weighted(checkpoints, checkpoint_weights)
    if checkpoints is None:
        engine = make_engine(
            net, output, params, batch_size, device, verbose, max_memory
        )
        return WeightedEngines([(1.0, engine)])
    module = uncompiled(resolve_module(net))
    if validate:
        shares, _ = check_checkpoints(module, checkpoints, checkpoint_weights)
    else:
        shares = checkpoint_shares(checkpoint_weights, len(checkpoints))
    return WeightedEngines(
        module=module,
        checkpoints=checkpoints,
        shares=shares,
        make=lambda m: make_engine(
            m, output, params, batch_size, device, verbose, max_memory
        ),
        max_memory=max_memory,
        digests=digests,
    )


def projection_seed(random_state: int | np.random.RandomState | None) -> int:
    """The integer seed of a sketch drawn from ``random_state``."""
    return int(check_random_state(random_state).randint(2**31 - 1))


def _axes(shape):
    """The number of axes of a sample's shape, by key for dict inputs."""
    if isinstance(shape, dict):
        return {key: len(value) for key, value in shape.items()}
    return len(shape)


# the parameters an engine is made from, in make_engine's order, and the
# checkpoints': fit's values hold until the next fit
_ENGINE_PARAMS = ("output", "params", "batch_size", "device", "verbose", "max_memory")
_CHECKPOINT_PARAMS = ("checkpoints", "checkpoint_weights")
# Those of them that change every result: checked as _fitted_params are
_RESULT_PARAMS = ("output", "params", *_CHECKPOINT_PARAMS)


def _kept(name, value):
    """Parameter ``name``'s ``value`` as ``fit`` keeps it.

    Weights as a float array of their own (from a list, an array, a tensor or
    a pandas Series alike), copies of other lists and arrays, else ``value``.
    """
    if name == "checkpoint_weights" and value is not None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return np.array(value, dtype=float)  # validated by check_checkpoints
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def _same(a, b) -> bool:
    """Whether two parameter values are the same, arrays and lists included.

    Lists are compared item by item (checkpoints: the same state dicts, or
    equal paths); values that do not compare (tensors) are the same only
    when they are the same object.
    """
    if a is b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    try:
        return bool(np.all(a == b)) and type(a) is type(b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _unchanged(name: str, value, fitted) -> bool:
    """Whether parameter ``name`` set to ``value`` is still ``fitted`` (as kept)."""
    try:
        return _same(_kept(name, value), fitted)
    except (TypeError, ValueError):  # weights that are no numbers
        return False


def _changed_text(name: str, value, fitted) -> str:
    """``name=value (fitted with ...)``, or ``(not the value fit had)``.

    Values as ``fit`` keeps them: weights as arrays.
    """
    with contextlib.suppress(TypeError, ValueError):  # weights that are no numbers
        value = _kept(name, value)
    now, then = _shown(value), _shown(fitted)
    return f"{name}={now} " + (
        "(not the value fit had)" if now == then else f"(fitted with {then})"
    )


def _shown(value, width: int = 80) -> str:
    """``repr(value)``, or its type (and length) when longer than ``width``.

    A repr of several lines (a tensor's, a DataFrame's) counts as too long.
    """
    text = repr(value)
    if len(text) <= width and "\n" not in text:
        return text
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


class _WorkerCall:
    """See :meth:`NetworkEstimator._in_workers`."""

    def __init__(self, estimator, method: str, args: tuple):
        self.estimator, self.method, self.args = estimator, method, args

    def __call__(self, X):
        return getattr(self.estimator, self.method)(X, *self.args)

    def __reduce__(self):
        light = copy.copy(self.estimator)
        light.net = light.net_ = resolve_module(self.estimator.net_)
        return _WorkerCall, (light, self.method, self.args)


def forget_failed_fit(fit: Callable) -> Callable:
    """``fit``, leaving the estimator unfitted when it raises.

    A fit that fails halfway kept the attributes set before the failure
    (``net_``, ``n_features_in_`` of the failed inputs), beside what an
    earlier fit computed: later calls failed on a missing attribute, or
    checked inputs against the failed ones.
    """

    @functools.wraps(fit)
    def fitted(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self._forget_fit()
            raise

    return fitted


class NetworkEstimator(BaseEstimator):
    """Base of the estimators that compare inputs through a network's gradients.

    Subclasses declare ``_parameter_constraints`` with :func:`constraints`
    and ``_fitted_params``, call :meth:`_fit_network` first in ``fit`` and
    :meth:`_check_input` in every later method, and reach the engine through
    :attr:`_engine`.
    """

    _parameter_constraints: dict = {}
    # Parameters that what fit computed depends on: set to other values after
    # fit, later calls raise until fit runs again (so do _RESULT_PARAMS; the
    # engine's other settings, which change no result, are kept from fit)
    _fitted_params: tuple = ()
    # Made again on demand rather than pickled: a device copy of the net, ...
    _transient_attributes: tuple = ("_engine_cache",)

    def _forget_fit(self) -> None:
        """Drop a previous fit's attributes: none of another setting's stays."""
        for name in [n for n in vars(self) if n.endswith("_") and not n.endswith("__")]:
            delattr(self, name)

    def _fit_network(self, X, y=None, y_net=None, check_targets=None):
        """The opening of ``fit``: validated ``X``, with the net trained if needed.

        Sets ``net_``, ``n_features_in_`` and, with a ``n_components``
        parameter, ``projection_seed_`` (None without sketches: nothing is
        drawn from ``random_state`` then). ``y_net`` (default ``y``) is what an
        unfitted skorch net is trained on; ``check_targets(X)``, if given,
        runs before the training.
        """
        self._forget_fit()
        check_checkpoint_list(getattr(self, "checkpoints", None))
        self._validate_params()
        self._fitted_settings = {
            name: _kept(name, getattr(self, name)) for name in self._fitted_params
        }
        X_net = training_input(self.net, X)
        X = check_net_input(X, self, reset=True)
        if check_targets is not None:
            check_targets(X)
        self._sample_shape = sample_shape(X)
        self._n_samples_fit = n_samples(X)  # a dataset kept as X_fit_ may change
        self.net_ = fit_net(
            self.net,
            X if X_net is None else X_net,
            y if y_net is None else y_net,
            self.random_state,
        )
        if "n_components" in self._parameter_constraints:
            sketched = self.n_components is not None
            self.projection_seed_ = (
                projection_seed(self.random_state) if sketched else None
            )
        check_weighted(
            getattr(self, "checkpoints", None),
            getattr(self, "checkpoint_weights", None),
        )
        if getattr(self, "checkpoints", None) is not None:
            _, self._checkpoint_digests = check_checkpoints(
                uncompiled(resolve_module(self.net_)),
                self.checkpoints,
                self.checkpoint_weights,
            )
        # set_params changes them at the next fit (those of _RESULT_PARAMS are
        # refused until then); lists, arrays and the checkpoints' weights are
        # copied, so that changing them in place does not either
        self._engine_params = {
            name: _kept(name, getattr(self, name, None))
            for name in _ENGINE_PARAMS + _CHECKPOINT_PARAMS
        }
        # built once here, so that later calls leave __dict__ as it is
        self._engine_cache = self._make_engine()
        self._engine_cache.n_outputs(X)  # inputs the network cannot take fail here
        self._weights = self._weights_digest()
        return X

    def _weights_digest(self) -> dict:
        """The net's weights digest, less the values that checkpoints set."""
        checkpointed = self._engine_params["checkpoints"] is not None
        return weights_digest(resolve_module(self.net_), checkpointed)

    def _check_network(self) -> None:
        """Raise a ValueError if the network's weights changed since ``fit``.

        What ``fit`` computed from them (reference sketches, sums, indexes)
        would be mixed with what later calls compute from the new ones. So
        would what it computed with the values of ``_fitted_params`` and
        ``_RESULT_PARAMS``.
        """
        engine = getattr(self, "_engine_params", {})
        fitted = {
            **getattr(self, "_fitted_settings", {}),
            **{name: engine[name] for name in _RESULT_PARAMS if name in engine},
        }
        changed = [
            _changed_text(name, getattr(self, name, None), value)
            for name, value in fitted.items()
            if not _unchanged(name, getattr(self, name, None), value)
        ]
        if changed:
            raise ValueError(
                f"{type(self).__name__}'s parameters changed since fit: "
                f"{', '.join(changed)}, while what fit computed holds the "
                "fitted values. Call fit again."
            )
        engine = getattr(self, "_engine_cache", None)  # made again after unpickling
        if engine is not None and engine.network is not uncompiled(
            resolve_module(self.net_)
        ):
            raise ValueError(
                "The network's module was replaced since fit (net.module_ = ...): "
                f"{type(self).__name__} computes with the module it had then, which "
                "may change apart from the network's. Call fit again."
            )
        X_fit = getattr(self, "X_fit_", None)
        if is_dataset(X_fit) and n_samples(X_fit) != self._n_samples_fit:
            raise ValueError(
                f"The dataset given to fit holds {n_samples(X_fit)} items now and "
                f"held {self._n_samples_fit} then: {type(self).__name__} holds "
                "what it computed from those. Call fit again."
            )
        changed = changed_parts(self._weights, self._weights_digest())
        if changed:
            raise ValueError(
                "The network's weights, layers or their settings (such as a "
                "temperature), or which weights are trainable, changed since "
                "fit (it was trained further, given other weights or layers, "
                f"or layers were frozen; here {changed}): {type(self).__name__} "
                "holds what it computed from the network it had then. Call fit "
                "again."
            )

    def _check_input(self, X, input_name="X"):
        """``X`` validated against the inputs seen in ``fit``, and the network.

        Its samples must have the axes (and, for dicts, the keys) of those of
        ``fit``; their lengths may differ where the network takes that
        (sequences padded to another length, images of another size).
        """
        self._check_network()
        X = check_net_input(X, self, reset=False, input_name=input_name)
        shape = sample_shape(X)
        if _axes(shape) != _axes(self._sample_shape):
            raise ValueError(
                f"{input_name} has samples of shape {shape}, but "
                f"{type(self).__name__} was fitted on samples of shape "
                f"{self._sample_shape}: pass inputs with the same axes as in fit."
            )
        self._engine.check_inputs(X)
        return X

    @property
    def _engine(self) -> JacobianEngine:
        """The gradient engine of ``net_``, built once per fit."""
        if getattr(self, "_engine_cache", None) is None:  # after unpickling
            self._engine_cache = self._make_engine()
        return self._engine_cache

    def _engines(self) -> WeightedEngines:
        """The engines of ``net_`` at the ``checkpoints``, or ``net_`` alone."""
        settings = self._engine_params
        if settings["checkpoints"] is None:
            return WeightedEngines([(1.0, self._engine)])
        return make_engines(
            self.net_,
            *(settings[name] for name in _CHECKPOINT_PARAMS + _ENGINE_PARAMS),
            validate=False,  # done in fit
            digests=getattr(self, "_checkpoint_digests", None),
        )

    def _sketch_weights(self, X) -> list[np.ndarray]:
        """The pieces' energies on the reference ``X``, one array per engine.

        The ``weights`` with which the sketches of reference and queries
        share their columns among the pieces (see
        :func:`~sksim._engine.features.piece_energies`).
        """
        return [
            piece_energies(
                engine, X, checkpoint_seed(self.projection_seed_, c), self.rtol
            )
            for c, (_, engine) in enumerate(self._engines())
        ]

    def _make_engine(self) -> JacobianEngine:
        settings = self._engine_params
        return make_engine(self.net_, *(settings[name] for name in _ENGINE_PARAMS))

    def _in_workers(self, method: str, *args) -> Callable:
        """``lambda X: getattr(self, method)(X, *args)``, for joblib's workers.

        Called in this process, it calls this estimator, its caches included;
        pickled for a worker process, it holds a shallow copy whose nets are
        torch modules: skorch pickles its module with ``torch.save``, by
        reference to its class, and a class defined in the user's script
        (``__main__``) cannot be loaded there, which cloudpickle sends by
        value.
        """
        return _WorkerCall(self, method, args)

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._transient_attributes:
            state.pop(name, None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images, sequences: any rank
        tags.input_tags.dict = True  # dicts of arrays, passed as keywords
        return tags
