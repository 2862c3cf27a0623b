"""The network-perspective similarity kernel (SPEC 1, 1.1)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._engine.gram import GramReference
from ._engine.jacobian import JacobianEngine
from ._engine.normalize import KINDS
from ._net import fit_net, resolve_module
from ._validation import check_net_input, check_positive_int

REDUCTIONS = ("trace", None)


def _check_kind(kind, reduce="trace", rtol=1e-5):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f'reduce must be "trace" or None; got {reduce!r}.')
    if not (isinstance(rtol, float) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be a float in [0, 1); got {rtol!r}.")


def _similarity(engine, X, Y, kind, reduce, rtol):
    full = reduce is None
    if Y is None:
        return GramReference(engine, X, kind, full, rtol).matrix()
    return GramReference(engine, Y, kind, full, rtol).matrix(X)


def network_similarity(
    net,
    X,
    Y=None,
    kind="cosine",
    output="logits",
    params=None,
    batch_size=64,
    device=None,
    reduce="trace",
    rtol=1e-5,
    verbose=0,
):
    """Similarity of inputs from the perspective of a trained network.

    Two inputs are similar when the parameter step that changes the output at
    one also changes it at the other: the kernel compares per-sample Jacobians
    ``J(x) = df(x)/dtheta`` of the output with respect to the parameters.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        A trained network (a plain module is taken as trained).
    X : array-like of shape (n_X, ...), tensor, or dict of them
        Inputs, in the shape the network accepts.
    Y : same as X, default=None
        Second set of inputs; None means ``Y = X``, and the kernel is then exactly
        symmetric.
    kind : {"cosine", "ntk", "influence"}, default="cosine"
        ``"cosine"``: normalised similarity, ``g(x).g(y) / (|g(x)| |g(y)|)`` for
        one output and ``tr(A(x) A(y)^T) / d`` with the whitened Jacobian
        ``A = (J J^T)^{-1/2} J`` for ``d`` outputs; in ``[-1, 1]``, 1 on the
        diagonal. ``"ntk"``: the empirical neural tangent kernel
        ``tr(J(x) J(y)^T) / d``. ``"influence"`` (asymmetric): the effect on
        ``y`` of the smallest parameter step that moves the output at ``x``,
        ``tr(K(y, x) K(x, x)^{-1}) / d``; row ``i`` is the input whose step is
        taken.
    output : "logits", int or callable, default="logits"
        Which outputs form the Jacobian: all, one index, or a callable mapping
        the batch output to ``(B,)`` or ``(B, d)``. Use logits, not softmax
        probabilities, whose Jacobian Gram is singular.
    params : str, list of str or None, default=None
        Parameters to differentiate: None for all trainable ones, else names or
        name prefixes (``"fc2"`` selects ``fc2.weight`` and ``fc2.bias``).
    batch_size : int, default=64
        Samples per vectorised Jacobian computation.
    device : str or torch.device, default=None
        Where to compute; None keeps the network's device.
    reduce : {"trace", None}, default="trace"
        ``"trace"`` returns the scalar kernel; None the full ``(n_X, n_Y, d, d)``
        matrix blocks.
    rtol : float, default=1e-5
        Eigenvalues of ``J(x) J(x)^T`` below ``rtol`` times the largest one are
        raised to that floor (with a warning) before whitening or inversion.
    verbose : int, default=0
        Show a progress bar when positive.

    Returns
    -------
    K : ndarray of shape (n_X, n_Y) or (n_X, n_Y, d, d)
        Float64 similarities. Inputs with a zero gradient get similarity 0 to
        everything (with a warning), never NaN.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, sections 2 and 2.3.

    Examples
    --------
    >>> import torch
    >>> from sksim import network_similarity
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 1))
    >>> K = network_similarity(net, torch.randn(3, 2))
    >>> K.shape, bool(abs(K.diagonal() - 1).max() < 1e-6)
    ((3, 3), True)
    """
    _check_kind(kind, reduce, rtol)
    check_positive_int(batch_size, "batch_size")
    X = check_net_input(X)
    Y = None if Y is None else check_net_input(Y)
    engine = JacobianEngine(
        resolve_module(net), output, params, batch_size, device, verbose
    )
    return _similarity(engine, X, Y, kind, reduce, rtol)


def similarity_to_distance(K):
    """Distances ``sqrt(max(2 - 2 k, 0))`` from normalised similarities.

    For the cosine kernel this is the Euclidean distance between the
    (whitened, unit-scaled) Jacobians, so it suits
    ``NearestNeighbors(metric="precomputed")`` and friends.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim import similarity_to_distance
    >>> similarity_to_distance(np.array([[1.0, 0.5], [-1.0, 0.0]])).round(3)
    array([[0.   , 1.   ],
           [2.   , 1.414]])
    """
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(K, dtype=float), 0.0))


class NetworkSimilarityKernel(TransformerMixin, BaseEstimator):
    """Transform inputs into their similarities to the training inputs.

    ``fit(X)`` stores the reference inputs; ``transform(X)`` returns the
    ``(n_samples, n_fit)`` kernel ``K(X, X_fit)`` from the network's perspective
    (see :func:`network_similarity`), ready for ``SVC(kernel="precomputed")``,
    ``KernelRidge(kernel="precomputed")``, ``KernelPCA`` or, through
    :func:`similarity_to_distance`, nearest-neighbour search.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The network. An unfitted skorch net is cloned and trained on ``fit``'s
        ``X, y`` first, so that ``GridSearchCV`` can tune its hyper-parameters
        (``kernel__net__max_epochs``).
    kind : {"cosine", "ntk", "influence"}, default="cosine"
        See :func:`network_similarity`.
    output : "logits", int or callable, default="logits"
        Which outputs form the Jacobian.
    params : str, list of str or None, default=None
        Which parameters form the Jacobian.
    batch_size : int, default=64
        Samples per vectorised Jacobian computation.
    device : str or torch.device, default=None
        Where to compute; None keeps the network's device.
    rtol : float, default=1e-5
        Relative eigenvalue floor of ``J J^T``.
    random_state : int or None, default=None
        Seeds torch while an unfitted skorch net is trained.
    verbose : int, default=0
        Show progress bars when positive.

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network used.
    X_fit_ : ndarray or dict of ndarrays
        The reference inputs.
    n_features_in_ : int
        Size of the second axis of array inputs.

    References
    ----------
    .. [1] G. Charpiat et al., "Input Similarity from the Neural Network
       Perspective", NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> from sksim import NetworkSimilarityKernel
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 3))
    >>> X = torch.randn(5, 2).numpy()
    >>> kern = NetworkSimilarityKernel(net).fit(X)
    >>> kern.transform(X[:2]).shape
    (2, 5)
    """

    def __init__(
        self,
        net,
        kind="cosine",
        output="logits",
        params=None,
        batch_size=64,
        device=None,
        rtol=1e-5,
        random_state=None,
        verbose=0,
    ):
        self.net = net
        self.kind = kind
        self.output = output
        self.params = params
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.random_state = random_state
        self.verbose = verbose

    def _engine(self):
        return JacobianEngine(
            resolve_module(self.net_),
            self.output,
            self.params,
            self.batch_size,
            self.device,
            self.verbose,
        )

    def fit(self, X, y=None):
        """Train the net if needed and store the reference inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or dict of them
            Reference inputs (usually the training set).
        y : array-like of shape (n_samples,), default=None
            Targets, needed only to train an unfitted skorch net.

        Returns
        -------
        self : object
        """
        _check_kind(self.kind, rtol=self.rtol)
        check_positive_int(self.batch_size, "batch_size")
        X = check_net_input(X, self, reset=True)
        self.net_ = fit_net(self.net, X, y, self.random_state)
        self.X_fit_ = X
        return self

    def transform(self, X):
        """Similarities of ``X`` to the reference inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or dict of them

        Returns
        -------
        K : ndarray of shape (n_samples, n_fit)
        """
        check_is_fitted(self)
        X = check_net_input(X, self, reset=False)
        return _similarity(
            self._engine(), X, self.X_fit_, self.kind, "trace", self.rtol
        )

    def fit_transform(self, X, y=None):
        """Fit, then return the exactly symmetric ``K(X, X)``."""
        self.fit(X, y)
        return _similarity(
            self._engine(), self.X_fit_, None, self.kind, "trace", self.rtol
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
