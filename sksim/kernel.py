"""The network-perspective similarity kernel (theory: the kernel, multi-output)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from ._base import (
    NetworkEstimator,
    constraints,
    forget_failed_fit,
    make_engine,
    make_engines,
    projection_seed,
)
from ._docs import fill_doc
from ._engine import features
from ._engine.budget import check_kept_bytes, left_beside, rows_that_fit
from ._engine.checkpoints import checkpoint_seed, stacked, weighted_sum
from ._engine.finite import rows_of_part, rows_of_reference
from ._engine.flags import flag_scope
from ._engine.gram import POWERS, GramReference, symmetrize
from ._engine.inputs import n_samples, take
from ._engine.jacobian import DEFAULT_MAX_MEMORY
from ._engine.parallel import tiled_kernel
from ._typing import Checkpoints, NetInput, NetLike, Output, Self
from ._validation import check_net_input, one_checkpoint_refused

SHARED = ("output", "params", "batch_size", "device", "rtol", "random_state")
SHARED += ("max_memory", "verbose")
CHECKPOINTS = ("checkpoints", "checkpoint_weights")
PRODUCT_ENTRIES = 2**22  # of a contraction's block of products, whatever max_memory


def _check_inputs(engine, X, Y) -> None:
    """A ValueError naming the shape of ``X`` or ``Y`` the network cannot take."""
    for inputs in (X, Y):
        if inputs is not None:
            engine.check_inputs(inputs)


def _similarity(engine, X, Y, kind, reduce, rtol, n_jobs):
    _check_inputs(engine, X, Y)
    full = reduce is None
    if n_jobs is not None:
        return tiled_kernel(engine, X, Y, kind, full, rtol, n_jobs)
    if Y is None:
        return GramReference(engine, X, kind, full, rtol).matrix()
    return GramReference(engine, Y, kind, full, rtol, named=True).matrix(X)


def _features(engine, X, kind, side, n_components, seed, rtol, weights, out=None):
    """Sketched features of the ``side`` ("left" or "right") of the kernel.

    ``weights``: the pieces' energies on the reference (see
    :func:`~sksim._engine.features.piece_energies`), for both sides; into
    ``out`` if given.
    """
    power = POWERS[kind][0 if side == "left" else 1]
    return features.gradient_features(
        engine,
        X,
        n_components,
        whiten=False,
        seed=seed,
        rtol=rtol,
        power=power,
        weights=weights,
        out=out,
    )


def _contract(F_x, F_y, kind, reduce, max_bytes=float("inf"), out=None):
    """The kernel of feature stacks ``(n, d, k)``: ``tr(F_x F_y^T) / d`` or blocks.

    Computed in float64, over blocks of rows whose float64 copies and products
    take at most ``max_bytes`` together (a third each; the products no more
    than :data:`PRODUCT_ENTRIES`), into ``out`` if given.
    """
    (n, d, k), m = F_x.shape, len(F_y)
    full = reduce is None
    if out is None:
        out = np.empty((n, m, d, d) if full else (n, m))
    # the influence kernel's blocks pair the right side's outputs first
    blocks = "adk,bek->abed" if kind == "influence" else "adk,bek->abde"
    step_y = rows_that_fit(max_bytes / 3, 8 * d * k, m)
    step_x = min(
        rows_that_fit(max_bytes / 3, 8 * d * k, n),
        rows_that_fit(min(max_bytes / 3, 8 * PRODUCT_ENTRIES), 8 * step_y, n),
    )
    # buffers made once: a copy made anew would be held beside the last one,
    # and a product written into a block of out that is not contiguous (not
    # whole rows) through another
    A_rows, B_rows = np.empty((step_x, d, k)), np.empty((step_y, d, k))
    direct = full or (step_y >= m and out.flags.c_contiguous)
    products = np.empty(0 if direct else step_x * step_y)
    for start_y in range(0, m, step_y):
        ys = slice(start_y, start_y + step_y)
        B = B_rows[: len(F_y[ys])]
        B[...] = F_y[ys]
        for start_x in range(0, n, step_x):
            xs = slice(start_x, start_x + step_x)
            A = A_rows[: len(F_x[xs])]
            A[...] = F_x[xs]
            if full:
                np.einsum(blocks, A, B, out=out[xs, ys])
            else:
                block = out[xs, ys]
                P = block if direct else products[: block.size].reshape(block.shape)
                np.matmul(A.reshape(len(A), -1), B.reshape(len(B), -1).T, out=P)
                np.divide(P, d, out=block)
    return out


def _check_sketch_bytes(engine, X, n_components, copies, inputs, advice) -> None:
    """Raise a MemoryError when the sketches of ``X``, held whole, would not fit.

    ``copies``: the checkpoints sketched side by side; ``inputs`` names ``X``.
    """
    n, d = n_samples(X), engine.n_outputs(X)
    copies_text = f" x {copies} checkpoints" * (copies > 1)
    what = (
        f"The sketches of the {n} {inputs} ({d} outputs x {n_components} "
        f"components{copies_text}, float32)"
    )
    kept = 4 * n * d * n_components * copies
    check_kept_bytes(kept, engine.max_memory, what, advice)


def _projected_similarity(engine, X, Y, kind, reduce, rtol, n_components, seed):
    _check_inputs(engine, X, Y)
    _check_sketch_bytes(  # held whole, as a kernel's reference sketches are
        engine,
        X,
        n_components,
        1,
        "inputs X",
        "lower n_components, pass X in parts, or raise max_memory.",
    )
    right = X if Y is None else Y
    with rows_of_reference() if Y is not None else contextlib.nullcontext():
        weights = features.piece_energies(engine, right, seed, rtol)
    F_x = _features(engine, X, kind, "left", n_components, seed, rtol, weights)
    bound = engine.max_memory / 3  # the batches' third: they are done by then
    if Y is None and kind != "influence":
        K = _contract(F_x, F_x, kind, reduce, bound)
        symmetrize(K)
        return K

    def read(rows):  # a reference Y's rows are named as its, as the exact kernel's
        return rows_of_part(rows) if Y is None else rows_of_reference(rows)

    # the reference sketched a chunk at a time, in what F_x leaves: its rows
    # are not kept
    (n, d, _), m = F_x.shape, n_samples(right)
    K = np.empty((n, m, d, d) if reduce is None else (n, m))
    step = rows_that_fit(left_beside(F_x.nbytes, engine.max_memory), F_x[0].nbytes, m)
    with flag_scope():  # one warning for the chunks
        for start in range(0, m, step):
            chunk = slice(start, min(start + step, m))
            with read(chunk):
                F_y = _features(
                    engine,
                    take(right, chunk),
                    kind,
                    "right",
                    n_components,
                    seed,
                    rtol,
                    weights,
                )
            _contract(F_x, F_y, kind, reduce, bound, out=K[:, chunk])
            del F_y  # before the next chunk's are made
    return K


@one_checkpoint_refused
@validate_params(
    constraints(
        "net",
        "kind",
        "n_components",
        "n_jobs",
        *SHARED,
        *CHECKPOINTS,
        X="no_validation",
        Y="no_validation",
        reduce=[StrOptions({"trace"}), None],
    ),
    prefer_skip_nested_validation=True,
)
@fill_doc
def network_similarity(
    net: NetLike,
    X: NetInput,
    Y: NetInput | None = None,
    *,
    kind: str = "cosine",
    output: Output = "logits",
    params: str | Sequence[str] | None = None,
    batch_size: int | str = "auto",
    device: str | torch.device | None = None,
    reduce: str | None = "trace",
    rtol: float = 1e-5,
    n_components: int | None = None,
    random_state: int | np.random.RandomState | None = None,
    n_jobs: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    verbose: int = 0,
    checkpoints: Checkpoints | None = None,
    checkpoint_weights: ArrayLike | None = None,
) -> np.ndarray:
    """Similarity of inputs from the perspective of a trained network.

    Two inputs are similar when the parameter step that changes the output at
    one also changes it at the other: the kernel compares per-sample Jacobians
    ``J(x) = df(x)/dtheta`` of the output with respect to the parameters.

    Parameters
    ----------
    %(trained_net)s
    X : array-like of shape (n_X, ...), tensor, dict of them, or Dataset
        Inputs, in the shape the network accepts. A map-style torch ``Dataset``
        of ``x`` or ``(x, y)`` items is read batch by batch, as skorch reads it.
    Y : same as X, default=None
        Second set of inputs; None means ``Y = X``, and the kernel is then exactly
        symmetric.
    %(kind)s
        Row ``i`` of the influence kernel is the input whose step is taken.
    %(output)s
    %(params)s
    %(batch_size)s
    %(device)s
    reduce : {"trace", None}, default="trace"
        ``"trace"`` returns the scalar kernel; None the full ``(n_X, n_Y, d, d)``
        matrix blocks.
    %(rtol)s
    %(n_components)s
    random_state : int, RandomState instance or None, default=None
        Seeds the sketch when ``n_components`` is set. Its columns are shared
        among the layers by their energies on up to 64 examples of the
        reference (``Y``, or ``X`` without it): calls with one seed sketch
        alike only with one reference; a fitted
        :class:`~sksim.NetworkSimilarityKernel` keeps its sketch.
    %(n_jobs)s
        Sketches (``n_components``) are made in this process, in one pass.
    %(max_memory)s
    %(verbose)s
    %(checkpoints)s
    %(checkpoint_weights)s

    Returns
    -------
    K : ndarray of shape (n_X, n_Y) or (n_X, n_Y, d, d)
        Float64 similarities. Inputs with a zero gradient get similarity 0 to
        everything, never NaN (with a warning for the normalised kinds,
        ``"cosine"`` and ``"influence"``).

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
    X = check_net_input(X, keep_tensors=True)
    Y = None if Y is None else check_net_input(Y, keep_tensors=True, input_name="Y")
    engines = make_engines(
        net,
        checkpoints,
        checkpoint_weights,
        output,
        params,
        batch_size,
        device,
        verbose,
        max_memory,
    )
    if n_components is not None:
        seed = projection_seed(random_state)
        return weighted_sum(
            engines,
            lambda engine, c: _projected_similarity(
                engine,
                X,
                Y,
                kind,
                reduce,
                rtol,
                n_components,
                checkpoint_seed(seed, c),
            ),
        )
    return weighted_sum(
        engines,
        lambda engine, _: _similarity(engine, X, Y, kind, reduce, rtol, n_jobs),
    )


@validate_params(
    constraints("net", "n_components", *SHARED, X="no_validation", whiten=["boolean"]),
    prefer_skip_nested_validation=True,
)
@fill_doc
def gradient_features(
    net: NetLike,
    X: NetInput,
    *,
    n_components: int | None = None,
    whiten: bool = True,
    output: Output = "logits",
    params: str | Sequence[str] | None = None,
    batch_size: int | str = "auto",
    device: str | torch.device | None = None,
    rtol: float = 1e-5,
    random_state: int | np.random.RandomState | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    verbose: int = 0,
) -> np.ndarray:
    """Per-sample gradient features whose inner products are the kernel.

    Parameters
    ----------
    %(trained_net)s
    X : array-like of shape (n_samples, ...), tensor, dict of them, or Dataset
        Inputs; a map-style torch ``Dataset`` of ``x`` or ``(x, y)`` items is
        read batch by batch.
    n_components : int or None, default=None
        None returns the exact ``d x p`` Jacobian of every sample (memory
        ``n d p``, which must fit in ``max_memory``); an int sketches it to
        about that many columns, layer by layer, without ever forming it.
    whiten : bool, default=True
        Return ``A(x) = (J J^T)^{-1/2} J`` (cosine kernel) rather than ``J`` (NTK).
    %(output)s
    %(params)s
    %(batch_size)s
    %(device)s
    %(rtol)s
    random_state : int, RandomState instance or None, default=None
        Seeds the sketch; equal integers give comparable features.
    %(max_memory)s
    %(verbose)s

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
    X = check_net_input(X, keep_tensors=True)
    engine = make_engine(net, output, params, batch_size, device, verbose, max_memory)
    seed = 0 if n_components is None else projection_seed(random_state)
    return features.gradient_features(engine, X, n_components, whiten, seed, rtol)


def similarity_to_distance(K: ArrayLike) -> np.ndarray:
    """Distances ``sqrt(max(2 - 2 k, 0))`` from normalised similarities.

    For the cosine kernel this is the Euclidean distance between the
    (whitened, unit-scaled) Jacobians, so it suits
    ``NearestNeighbors(metric="precomputed")`` and friends.

    Parameters
    ----------
    K : array-like
        Similarities at most 1 (those of the ``"cosine"`` kernel), any shape.

    Returns
    -------
    D : ndarray of the shape of ``K``
        The distances, float64.

    Examples
    --------
    >>> import numpy as np
    >>> from sksim import similarity_to_distance
    >>> similarity_to_distance(np.array([[1.0, 0.5], [-1.0, 0.0]])).round(3)
    array([[0.   , 1.   ],
           [2.   , 1.414]])
    """
    return distance_in_place(np.array(K, dtype=float))[()]  # a scalar for a scalar


def distance_in_place(K: np.ndarray) -> np.ndarray:
    """:func:`similarity_to_distance` of the float64 ``K``, written over it."""
    K *= -2.0
    K += 2.0
    return np.sqrt(np.maximum(K, 0.0, out=K), out=K)


@fill_doc
class NetworkSimilarityKernel(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, NetworkEstimator
):
    """Transform inputs into their similarities to the training inputs.

    ``fit(X)`` stores the reference inputs; ``transform(X)`` returns the
    ``(n_samples, n_fit)`` kernel ``K(X, X_fit)`` from the network's perspective
    (see :func:`network_similarity`), ready for ``SVC(kernel="precomputed")``,
    ``KernelRidge(kernel="precomputed")``, ``KernelPCA`` or, through
    :func:`similarity_to_distance`, nearest-neighbour search. These need a
    symmetric positive semi-definite kernel, ``"cosine"`` or ``"ntk"``: the
    asymmetric ``"influence"`` kernel can keep libsvm iterating without end
    (``SVC``'s default ``max_iter=-1``), so leave it out of a search over
    ``kind`` that ends in one of them.

    Parameters
    ----------
    %(net)s
    %(kind)s
    %(output)s
    %(params)s
    %(batch_size)s
    %(device)s
    %(rtol)s
    %(n_components)s
        The sketches of the reference inputs are computed once in ``fit``.
    %(random_state)s
    %(n_jobs)s
        Sketches (``n_components``) are made in this process, in one pass.
    %(max_memory)s
    %(verbose)s
    %(checkpoints)s
    %(checkpoint_weights)s

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network used.
    X_fit_ : ndarray, dict of ndarrays, or Dataset
        The reference inputs (a dataset is kept as it is, not read into memory).
    features_fit_ : ndarray of shape (n_fit, d, k * n_checkpoints) or None
        Sketches of the reference inputs when ``n_components`` is set, ``k``
        equal to ``n_components`` (more where the network has more layer
        pieces, each taking one column at least; fewer where it has fewer
        parameters); those of the checkpoints side by side, each scaled by
        the square root of its share of the weight.
    %(sketch_weights_)s
    projection_seed_ : int or None
        Seed of the sketch, shared by reference and queries (None without
        sketches).
    n_features_in_ : int
        Size of the second axis of array inputs.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, sections 2 and 2.3.

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

    _parameter_constraints = constraints(
        "net", "kind", "n_components", "n_jobs", *SHARED, *CHECKPOINTS
    )
    _fitted_params = ("kind", "n_components", "rtol")

    def __init__(
        self,
        net: NetLike,
        *,
        kind: str = "cosine",
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        n_components: int | None = None,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        verbose: int = 0,
        checkpoints: Checkpoints | None = None,
        checkpoint_weights: ArrayLike | None = None,
    ) -> None:
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
        self.checkpoints = checkpoints
        self.checkpoint_weights = checkpoint_weights

    @forget_failed_fit
    def fit(self, X: NetInput, y: ArrayLike | None = None) -> Self:
        """Train the net if needed and store the reference inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            Reference inputs (usually the training set).
        y : array-like of shape (n_samples,), default=None
            Targets, needed only to train an unfitted skorch net; a Dataset of
            ``(x, y)`` items carries its own.

        Returns
        -------
        self : object
            The fitted kernel.
        """
        X = self._fit_network(X, y)
        self.X_fit_ = X
        self.features_fit_ = None
        if self.n_components is not None:
            _check_sketch_bytes(
                self._engine,
                X,
                self.n_components,
                1 if self.checkpoints is None else len(self.checkpoints),
                "reference examples",
                "lower n_components, or raise max_memory.",
            )
            self.sketch_weights_ = self._sketch_weights(X)
            self.features_fit_ = self._features(X, "right")
        return self

    @property
    def _bound(self) -> float:
        """Bytes the float64 blocks of a contraction of sketches may take.

        The engine's batches' third of ``max_memory``: the batches are done
        when a contraction runs.
        """
        return self._engine.max_memory / 3

    @property
    def _n_features_out(self):
        return n_samples(self.X_fit_)

    def _features(self, X, side):
        return stacked(
            self._engines(),
            lambda engine, c, out: _features(
                engine,
                X,
                self.kind,
                side,
                self.n_components,
                checkpoint_seed(self.projection_seed_, c),
                self.rtol,
                self.sketch_weights_[c],
                out,
            ),
        )

    def _exact(self, X=None):
        """``K(X, X_fit_)``, or the symmetric ``K(X_fit_, X_fit_)`` for None."""
        X, Y = (self.X_fit_, None) if X is None else (X, self.X_fit_)
        return weighted_sum(
            self._engines(),
            lambda engine, _: _similarity(
                engine, X, Y, self.kind, "trace", self.rtol, self.n_jobs
            ),
        )

    def transform(self, X: NetInput) -> np.ndarray:
        """Similarities of ``X`` to the reference inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            Inputs shaped as in ``fit``.

        Returns
        -------
        K : ndarray of shape (n_samples, n_fit)
            Float64 similarities.
        """
        check_is_fitted(self)
        X = self._check_input(X)
        if self.features_fit_ is not None:
            return self._sketched(X)
        return self._exact(X)

    def _sketched(self, X) -> np.ndarray:
        """``K(X, X_fit_)`` from sketches of ``X``, a chunk of rows at a time.

        A chunk's sketches take what the reference's leave of two thirds of
        ``max_memory``; the float64 blocks of their contraction take the third
        one.
        """
        n, F = n_samples(X), self.features_fit_
        step = rows_that_fit(
            left_beside(F.nbytes, self._engine.max_memory), F[0].nbytes, n
        )
        K = np.empty((n, len(F)))
        with flag_scope():  # one warning for the chunks
            for start in range(0, n, step):
                chunk = slice(start, min(start + step, n))
                with rows_of_part(chunk):
                    left = self._features(take(X, chunk), "left")
                _contract(
                    left,
                    F,
                    self.kind,
                    "trace",
                    self._bound,
                    out=K[chunk],
                )
                del left  # before the next chunk's sketches are made
        return K

    def fit_transform(self, X: NetInput, y: ArrayLike | None = None) -> np.ndarray:
        """Fit, then return ``K(X, X)`` (exactly symmetric unless ``influence``).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            Reference inputs (usually the training set).
        y : array-like of shape (n_samples,), default=None
            Targets, needed only to train an unfitted skorch net; a Dataset of
            ``(x, y)`` items carries its own.

        Returns
        -------
        K : ndarray of shape (n_samples, n_samples)
            Float64 similarities.
        """
        self.fit(X, y)
        if self.features_fit_ is None:
            return self._exact()
        if self.kind == "influence":  # its left side sketched apart
            return self._sketched(self.X_fit_)
        F = self.features_fit_
        K = _contract(F, F, self.kind, "trace", self._bound)
        symmetrize(K)
        return K
