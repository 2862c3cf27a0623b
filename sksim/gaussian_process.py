"""The network-perspective kernel as a scikit-learn Gaussian-process kernel.

:class:`NetworkKernel` is the similarity of the theory page of the user guide
(any kind) as a fixed kernel without hyper-parameters of its own, to be
combined with ``ConstantKernel`` and ``WhiteKernel`` inside
``GaussianProcessRegressor`` or ``GaussianProcessClassifier``.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Mapping, Sequence

import joblib
import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError
from sklearn.gaussian_process.kernels import Kernel
from sklearn.utils._param_validation import validate_parameter_constraints

from ._base import constraints, make_engine
from ._docs import fill_doc
from ._engine.flags import FlaggedRows
from ._engine.inputs import is_dataset, n_samples
from ._engine.jacobian import DEFAULT_MAX_MEMORY
from ._engine.normalize import self_similarity
from ._engine.pieces import gram_of, refined_eigh
from ._net import (
    changed_parts,
    is_unfitted_skorch,
    resolve_module,
    weights_digest,
)
from ._typing import NetLike, Output
from ._validation import check_net_input
from .kernel import _similarity

PARAMETERS = ("net", "kind", "output", "params", "batch_size", "device", "rtol")
PARAMETERS += ("max_memory",)

# What the kernel takes: an array or tensor, or a dict of them.
KernelInput = ArrayLike | Mapping[str, ArrayLike]


@fill_doc
class NetworkKernel(Kernel):
    """The network's similarity as a Gaussian-process kernel.

    ``k(x, y)`` is :func:`~sksim.network_similarity` of the network: a fixed
    kernel with no hyper-parameters of its own (``theta`` is empty). Scale it
    and add noise with scikit-learn's kernels, whose hyper-parameters the
    Gaussian process then optimises::

        ConstantKernel() * NetworkKernel(net, kind="ntk") + WhiteKernel()

    Called directly, the kernel takes what the network takes: arrays of any
    rank, tensors or dicts of arrays. ``GaussianProcessRegressor`` and
    ``GaussianProcessClassifier`` pass on 2-D arrays only: for images or
    sequences, flatten them and put ``torch.nn.Unflatten`` in front of the
    network.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The trained network: a fitted skorch net, a ``FrozenEstimator``
        around one, or a plain module (taken as trained). A Gaussian process
        cannot train it, so an unfitted skorch net is refused. ``clone``
        shares it rather than copying it: the kernel never changes it.
    kind : {"ntk", "cosine", "influence"}, default="ntk"
        ``"ntk"``: the empirical neural tangent kernel ``tr(J(x) J(y)^T) / d``,
        the prior covariance of the network linearised around its trained
        parameters (with an isotropic Gaussian prior on the parameter step).
        ``"cosine"``: its normalised version ``tr(A(x) A(y)^T) / d`` with
        ``A = (J J^T)^{-1/2} J``, a correlation kernel (1 on the diagonal).
        ``"influence"``: ``tr(K(y, x) K(x, x)^{-1}) / d``; it is not
        symmetric, so it is no covariance: a Gaussian process reads one
        triangle of it, and calling it on one set of inputs warns.
    %(output)s
    %(params)s
    %(batch_size)s
    %(device)s
    %(rtol)s
    %(max_memory)s

    See Also
    --------
    sksim.network_similarity : The same kernel as a function.
    sksim.NetworkSimilarityKernel : The kernel as a transformer, for
        ``kernel="precomputed"`` estimators.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, section 2.
    .. [2] A. Jacot, F. Gabriel, C. Hongler, "Neural Tangent Kernel:
       Convergence and Generalization in Neural Networks", NeurIPS 2018.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
    >>> from sksim import NetworkKernel
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
    ...                           torch.nn.Linear(16, 1))
    >>> X = np.random.RandomState(0).randn(20, 2).astype(np.float32)
    >>> y = np.sin(X[:, 0]) + 0.1 * np.random.RandomState(1).randn(20)
    >>> kernel = ConstantKernel() * NetworkKernel(net) + WhiteKernel()
    >>> gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    >>> mean, std = gp.predict(X[:3], return_std=True)
    >>> mean.shape, std.shape
    ((3,), (3,))
    """

    _parameter_constraints = constraints(*PARAMETERS)

    def __init__(
        self,
        net: NetLike,
        *,
        kind: str = "ntk",
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
    ) -> None:
        self.net = net
        self.kind = kind
        self.output = output
        self.params = params
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.max_memory = max_memory

    def _make_engine(self):
        """The gradient engine of the network, after checking the parameters."""
        validate_parameter_constraints(
            self._parameter_constraints,
            self.get_params(deep=False),
            caller_name=type(self).__name__,
        )
        if is_unfitted_skorch(self.net):
            raise NotFittedError(
                "NetworkKernel needs a trained network, and a Gaussian process "
                "cannot train it: fit the skorch net before building the kernel. "
                "A fitted net given by set_params (a grid search over net=) is "
                "cloned, which unfits it: wrap it in sklearn's "
                "FrozenEstimator(net), or give its module (net.module_)."
            )
        self._check_weights()
        return make_engine(
            self.net,
            self.output,
            self.params,
            self.batch_size,
            self.device,
            0,
            self.max_memory,
        )

    def _check_weights(self) -> None:
        """Raise a ValueError if the weights changed since the first evaluation.

        A Gaussian process evaluates a clone of its kernel in ``fit`` and
        keeps what it computed (the training kernel's factorisation): kernel
        rows of other weights at ``predict`` would be mixed with it.
        """
        digest = weights_digest(resolve_module(self.net))
        changed = changed_parts(self.__dict__.setdefault("_weights", digest), digest)
        if changed:
            raise ValueError(
                "The network's weights, layers or their settings (such as a "
                "temperature), or which weights are trainable, changed since "
                f"this NetworkKernel was first evaluated (here {changed}): a "
                "Gaussian process fitted with it holds what it computed from the "
                "network it had then. Fit the Gaussian process again (it "
                "evaluates a fresh clone of its kernel), or evaluate clone(kernel)."
            )

    def set_params(self, **params) -> NetworkKernel:
        """Set the parameters; another ``net`` is evaluated afresh.

        Parameters
        ----------
        **params : dict
            Parameter names mapped to their new values.

        Returns
        -------
        self : NetworkKernel
        """
        nested = sorted(name for name in params if name.startswith("net__"))
        if nested:
            raise ValueError(
                f"NetworkKernel does not set its net's parameters ({nested}): "
                "its clones share the network, which would change it for all of "
                "them, and for you. Pass another network as net= (a grid over "
                "trained skorch nets: 'kernel__net': [FrozenEstimator(net_a), "
                "FrozenEstimator(net_b)], which clones keep trained)."
            )
        net = self.net
        super().set_params(**params)  # all of them at each step of an optimiser
        if self.net is not net:  # checked from its own first evaluation
            for state in ("_weights", "_last"):
                self.__dict__.pop(state, None)
        return self

    def __call__(
        self,
        X: KernelInput,
        Y: KernelInput | None = None,
        eval_gradient: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The kernel ``k(X, Y)`` and, if asked, its (empty) gradient.

        Parameters
        ----------
        X : array-like of shape (n_X, ...), tensor, dict of them, or Dataset
            Inputs, in the shape the network accepts. scikit-learn's Gaussian
            processes check their ``X`` first: a Dataset of ``(x, y)`` items
            passes there only as arrays of its inputs.
        Y : same as X, default=None
            Second inputs; None means ``Y = X``, and the kernel is then exactly
            symmetric (except for ``kind="influence"``).
        eval_gradient : bool, default=False
            Also return the gradient with respect to the log of the
            hyper-parameters: there are none, so it is empty. Only allowed
            when ``Y`` is None.

        Returns
        -------
        K : ndarray of shape (n_X, n_Y)
            Float64 similarities.
        K_gradient : ndarray of shape (n_X, n_X, 0), optional
            Returned when ``eval_gradient`` is True.
        """
        if eval_gradient and Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        engine = self._make_engine()
        X = check_net_input(X, keep_tensors=True)
        Y = None if Y is None else check_net_input(Y, keep_tensors=True, input_name="Y")
        if Y is None and self.kind == "influence":
            warnings.warn(
                'kind="influence" is not symmetric, so it is not a covariance: a '
                "Gaussian process would use one triangle of it. Use "
                'kind="ntk" or "cosine" in a Gaussian process.',
                UserWarning,
                stacklevel=2,
            )
        # an optimiser's steps ask for the gradient: only they reuse a matrix
        key = self._key(X, Y) if eval_gradient else None
        K = self._remembered(key)
        if K is None:
            K = _similarity(engine, X, Y, self.kind, "trace", self.rtol, None)
            self._remember(key, K)
        if eval_gradient:
            return K, np.empty((len(K), len(K), 0))
        return K

    def _key(self, X, Y) -> str | None:
        """A hash of the inputs and settings of a kernel matrix (None for datasets).

        The net enters by its identity: its weights cannot change (see
        :meth:`_check_weights`).
        """
        if is_dataset(X) or is_dataset(Y):
            return None  # hashing would read them whole
        settings = self.get_params(deep=False)
        settings["net"] = id(settings["net"])
        return joblib.hash((X, Y, repr(settings)))

    def _remembered(self, key: str | None) -> np.ndarray | None:
        """A copy of the last matrix, if it was of these inputs and settings.

        A Gaussian process's optimiser evaluates its kernel and its gradient
        on the training inputs at every step, though this kernel has no
        hyper-parameter. Other calls compute again.
        """
        last = self.__dict__.get("_last")
        if key is None or last is None or last[0] != key:
            return None
        return last[1].copy()  # a Gaussian process adds its alpha in place

    def _remember(self, key: str | None, K: np.ndarray) -> None:
        """Keep ``K`` for :meth:`_remembered`, if it fits in a third of max_memory."""
        budget = math.inf if self.max_memory is None else self.max_memory / 3
        if key is not None and K.nbytes <= budget:
            self._last = (key, K.copy())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_last", None)  # not pickled with a fitted Gaussian process
        return state

    def diag(self, X: KernelInput) -> np.ndarray:
        """The diagonal ``k(x, x)``, computed without the full kernel.

        Parameters
        ----------
        X : array-like of shape (n_X, ...), tensor, dict of them, or Dataset
            Inputs, in the shape the network accepts.

        Returns
        -------
        K_diag : ndarray of shape (n_X,)
            ``tr(J(x) J(x)^T) / d`` for the ntk; 1 for the other kinds, less
            where eigenvalues of ``J J^T`` were floored (``rtol``) and 0 for
            inputs with a zero gradient.
        """
        engine = self._make_engine()
        X = check_net_input(X, keep_tensors=True)
        engine.check_inputs(X)
        out, found = np.empty(n_samples(X)), FlaggedRows()
        for rows, pieces in engine.pieces(X, progress=False):
            G = gram_of(pieces).double().cpu().numpy()
            if self.kind == "ntk":
                out[rows] = np.trace(G, axis1=-2, axis2=-1) / G.shape[-1]
            else:  # tr(G_f^{-1} G) / d for both, as the kernel's floors give it
                decomposition = refined_eigh(G, pieces, self.rtol)
                out[rows] = self_similarity(decomposition, found=found, rows=rows)
        found.report()
        return out

    def is_stationary(self) -> bool:
        """Whether the kernel depends only on ``x - x'``.

        Returns
        -------
        stationary : bool
            False: the network's kernel depends on the inputs themselves.
        """
        return False

    @property
    def requires_vector_input(self) -> bool:
        """False: inputs are whatever the network takes, of any shape."""
        return False

    def __sklearn_clone__(self):
        # A fitted skorch net would come back unfitted from sklearn.clone, and
        # the kernel never changes the net: clones share it, and copy the
        # other parameters, as sklearn.clone does (a Gaussian process's fitted
        # kernel must not follow changes to the user's list of params)
        params = self.get_params(deep=False)
        net = params.pop("net")
        return type(self)(net=net, **copy.deepcopy(params))

    def __repr__(self):
        """The kind, and every other setting but the net that is not its default."""
        defaults = inspect.signature(type(self)).parameters
        shown = [f"kind={self.kind!r}"] + [
            f"{name}={value!r}"
            for name, value in self.get_params(deep=False).items()
            if name not in ("net", "kind") and value != defaults[name].default
        ]
        return f"{type(self).__name__}({', '.join(shown)})"
