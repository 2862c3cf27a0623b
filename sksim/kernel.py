"""The network-perspective similarity kernel (SPEC 1, 1.1)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._engine import features
from ._engine.gram import POWERS, GramReference, symmetrize
from ._engine.jacobian import JacobianEngine
from ._engine.normalize import KINDS
from ._engine.parallel import tiled_kernel
from ._estimator import fitted_engine
from ._net import fit_net, resolve_module
from ._validation import check_net_input, check_positive_int

REDUCTIONS = ("trace", None)


def _check_options(kind, reduce="trace", rtol=1e-5, n_components=None):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f'reduce must be "trace" or None; got {reduce!r}.')
    if not (isinstance(rtol, float) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be a float in [0, 1); got {rtol!r}.")
    check_positive_int(n_components, "n_components", allow_none=True)


def _similarity(engine, X, Y, kind, reduce, rtol, n_jobs):
    full = reduce is None
    if n_jobs is not None:
        return tiled_kernel(engine, X, Y, kind, full, rtol, n_jobs)
    if Y is None:
        return GramReference(engine, X, kind, full, rtol).matrix()
    return GramReference(engine, Y, kind, full, rtol).matrix(X)


def _features(engine, X, kind, side, n_components, seed, rtol):
    """Sketched features of the ``side`` ("left" or "right") of the kernel."""
    power = POWERS[kind][0 if side == "left" else 1]
    return features.gradient_features(
        engine,
        X,
        n_components,
        whiten=False,
        random_state=seed,
        rtol=rtol,
        power=power,
    )


def _contract(F_x, F_y, kind, reduce):
    """The kernel of feature stacks ``(n, d, k)``: ``tr(F_x F_y^T) / d`` or blocks."""
    F_x, F_y = F_x.astype(np.float64), F_y.astype(np.float64)
    if reduce is None:
        blocks = np.einsum("adk,bek->abde", F_x, F_y)
        return blocks.transpose(0, 1, 3, 2) if kind == "influence" else blocks
    n, d, _ = F_x.shape
    return (F_x.reshape(n, -1) @ F_y.reshape(len(F_y), -1).T) / d


def _projected_similarity(engine, X, Y, kind, reduce, rtol, n_components, seed):
    F_x = _features(engine, X, kind, "left", n_components, seed, rtol)
    if Y is None and kind != "influence":
        K = _contract(F_x, F_x, kind, reduce)
        symmetrize(K)
        return K
    F_y = _features(
        engine, X if Y is None else Y, kind, "right", n_components, seed, rtol
    )
    return _contract(F_x, F_y, kind, reduce)


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
    n_components=None,
    random_state=None,
    n_jobs=None,
    max_memory=2 * 2**30,
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
        Where to compute; None keeps the network's device. Elsewhere a copy
        of the network computes; the network itself does not move.
    reduce : {"trace", None}, default="trace"
        ``"trace"`` returns the scalar kernel; None the full ``(n_X, n_Y, d, d)``
        matrix blocks.
    rtol : float, default=1e-5
        Eigenvalues of ``J(x) J(x)^T`` below ``rtol`` times the largest one are
        raised to that floor (with a warning) before whitening or inversion.
    n_components : int or None, default=None
        None computes the exact kernel. An int sketches each sample's
        (whitened) Jacobian to about that many columns per output, layer by
        layer, and returns inner products of the sketches: an unbiased estimate
        whose error shrinks like ``1 / sqrt(n_components)``.
    random_state : int, RandomState or None, default=None
        Seeds the sketch when ``n_components`` is set.
    n_jobs : int or None, default=None
        None computes in this process. An int splits the kernel into
        independent tiles run by ``joblib.Parallel(n_jobs)``, which honours
        ``joblib.parallel_config`` (e.g. ``backend="dask"`` on a
        ``dask.distributed`` cluster). Each tile recomputes its gradients.
    max_memory : int, default=2 GiB
        Bytes that the per-layer gradient factors of ``Y`` may keep between
        blocks of ``X``; past it they are recomputed for every block (slower,
        bounded memory). The factors of one batch may take a third of it: a
        larger batch is computed in smaller parts, and a single sample that
        cannot fit raises a MemoryError saying what to change.
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
    _check_options(kind, reduce, rtol, n_components)
    check_positive_int(batch_size, "batch_size")
    X = check_net_input(X, keep_tensors=True)
    Y = None if Y is None else check_net_input(Y, keep_tensors=True)
    engine = JacobianEngine(
        resolve_module(net), output, params, batch_size, device, verbose, max_memory
    )
    if n_components is not None:
        seed = features.projection_seed(random_state)
        return _projected_similarity(
            engine, X, Y, kind, reduce, rtol, n_components, seed
        )
    return _similarity(engine, X, Y, kind, reduce, rtol, n_jobs)


def gradient_features(
    net,
    X,
    n_components=None,
    whiten=True,
    output="logits",
    params=None,
    batch_size=64,
    device=None,
    rtol=1e-5,
    random_state=None,
    max_memory=2 * 2**30,
    verbose=0,
):
    """Per-sample gradient features whose inner products are the kernel.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        A trained network.
    X : array-like of shape (n_samples, ...), tensor, or dict of them
        Inputs.
    n_components : int or None, default=None
        None returns the exact ``d x p`` Jacobian of every sample (memory
        ``n d p``); an int sketches it to about that many columns, layer by
        layer, without ever forming it.
    whiten : bool, default=True
        Return ``A(x) = (J J^T)^{-1/2} J`` (cosine kernel) rather than ``J`` (NTK).
    output, params, batch_size, device, rtol, verbose
        As in :func:`network_similarity`.
    random_state : int, RandomState or None, default=None
        Seeds the sketch; equal integers give comparable features.
    max_memory : int, default=2 GiB
        The gradient factors of one batch may take a third of it: a larger
        batch is computed in smaller parts, and a single sample that cannot
        fit raises a MemoryError saying what to change.

    Returns
    -------
    F : ndarray of shape (n_samples, d, k), float32
        ``tr(F(x) F(y)^T) / d`` is the cosine kernel (``whiten=True``) or the
        NTK, exactly or in expectation.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sksim import gradient_features, network_similarity
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                           torch.nn.Linear(4, 2))
    >>> X = np.random.RandomState(0).randn(5, 3).astype(np.float32)
    >>> F = gradient_features(net, X)
    >>> F.shape
    (5, 2, 26)
    >>> K = np.einsum("adk,bdk->ab", F, F) / 2
    >>> bool(np.allclose(K, network_similarity(net, X), atol=1e-5))
    True
    """
    check_positive_int(n_components, "n_components", allow_none=True)
    X = check_net_input(X, keep_tensors=True)
    engine = JacobianEngine(
        resolve_module(net), output, params, batch_size, device, verbose, max_memory
    )
    seed = features.projection_seed(random_state)
    return features.gradient_features(engine, X, n_components, whiten, seed, rtol)


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
        Where to compute; None keeps the network's device. Elsewhere a copy
        of the network computes; the network itself does not move.
    rtol : float, default=1e-5
        Relative eigenvalue floor of ``J J^T``.
    n_components : int or None, default=None
        None: exact kernel. An int: inner products of gradient sketches of
        about that many columns (see :func:`network_similarity`); the sketches
        of the reference inputs are computed once in ``fit``.
    random_state : int, RandomState or None, default=None
        Seeds torch while an unfitted skorch net is trained, and the sketch.
    n_jobs : int or None, default=None
        Tiles the exact kernel over ``joblib.Parallel(n_jobs)`` (dask-ready).
    max_memory : int, default=2 GiB
        Memory bound of the reference set's gradient factors, see
        :func:`network_similarity`.
    verbose : int, default=0
        Show progress bars when positive.

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network used.
    X_fit_ : ndarray or dict of ndarrays
        The reference inputs.
    features_fit_ : ndarray of shape (n_fit, d, n_components) or None
        Sketches of the reference inputs when ``n_components`` is set.
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
        n_components=None,
        random_state=None,
        n_jobs=None,
        max_memory=2 * 2**30,
        verbose=0,
    ):
        self.net = net
        self.kind = kind
        self.output = output
        self.params = params
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.n_components = n_components
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_memory = max_memory
        self.verbose = verbose

    def _engine(self):
        return fitted_engine(self)

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
        _check_options(self.kind, rtol=self.rtol, n_components=self.n_components)
        check_positive_int(self.batch_size, "batch_size")
        X = check_net_input(X, self, reset=True)
        self.net_ = fit_net(self.net, X, y, self.random_state)
        self.X_fit_ = X
        self.features_fit_ = None
        if self.n_components is not None:
            self.projection_seed_ = features.projection_seed(self.random_state)
            self.features_fit_ = self._features(X, "right")
        return self

    def _features(self, X, side):
        return _features(
            self._engine(),
            X,
            self.kind,
            side,
            self.n_components,
            self.projection_seed_,
            self.rtol,
        )

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
        if self.features_fit_ is not None:
            left = self._features(X, "left")
            return _contract(left, self.features_fit_, self.kind, "trace")
        return _similarity(
            self._engine(), X, self.X_fit_, self.kind, "trace", self.rtol, self.n_jobs
        )

    def fit_transform(self, X, y=None):
        """Fit, then return ``K(X, X)`` (exactly symmetric unless ``influence``)."""
        self.fit(X, y)
        if self.features_fit_ is not None:
            left = self.features_fit_
            if self.kind == "influence":
                left = self._features(self.X_fit_, "left")
            K = _contract(left, self.features_fit_, self.kind, "trace")
            if self.kind != "influence":
                symmetrize(K)
            return K
        return _similarity(
            self._engine(),
            self.X_fit_,
            None,
            self.kind,
            "trace",
            self.rtol,
            self.n_jobs,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
