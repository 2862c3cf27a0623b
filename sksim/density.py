"""How many training examples the network treats as similar to an input.

See the theory page, "density".
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import DensityMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import NetworkEstimator, constraints, forget_failed_fit
from ._docs import fill_doc
from ._engine.budget import check_kept_bytes, left_beside
from ._engine.checkpoints import (
    checkpoint_seed,
    stacked,
    weighted_rows,
    weighted_sum,
)
from ._engine.inputs import n_samples
from ._engine.jacobian import DEFAULT_MAX_MEMORY, JacobianEngine
from ._engine.parallel import split_rows
from ._engine.rows import (
    cosine_rows,
    sketch_features,
    sketched_chunks,
    sketched_rows,
)
from ._typing import Checkpoints, NetInput, NetLike, Output, Self

COUNT_FLOOR = 0.5
COUNT_COPIES = 3  # a block of similarities and the two temporaries of its count
# The cosine similarity never exceeds 1: a threshold of 1 would count nothing.
THRESHOLD = Interval(Real, -1, 1, closed="left")
NEIGHBOR_PARAMETERS = ("net", "output", "params", "n_components", "batch_size")
NEIGHBOR_PARAMETERS += ("device", "rtol", "random_state", "n_jobs", "max_memory")
NEIGHBOR_PARAMETERS += ("verbose",)
CHECKPOINTS = ("checkpoints", "checkpoint_weights")


class SoftSumsMemoryError(MemoryError):
    """The exact sums of ``method="soft"`` would pass ``max_memory``."""


class FlooredDensityWarning(UserWarning):
    """Most counts are below the floor: their log-densities tie at the lowest."""


def positive_power(k: np.ndarray, power: float) -> np.ndarray:
    """``max(k, 0) ** power``, as a new array.

    An integer power is taken by repeated squaring: NumPy's ``**`` costs
    some twenty multiplications per value, and the denoising weights take
    the 8th power of every similarity.
    """
    w = np.maximum(k, 0.0)
    if power != int(power):
        w **= power
        return w
    n, result = int(power), None
    while n:
        if n & 1:
            if result is None:
                result = w if n == 1 else w.copy()
            else:
                result *= w
        n >>= 1
        if n:
            np.square(w, out=w)
    return result


def soft_counts(
    engine: JacobianEngine, X: NetInput, reference_sum: np.ndarray, rtol: float
) -> np.ndarray:
    """``N_S(x) = <A(x), S>_F / d`` for every row of ``X`` (the second pass)."""
    S = torch.as_tensor(reference_sum, device=engine.device)
    counts = np.empty(n_samples(X))
    for rows, pieces, _ in engine.mapped_pieces(X, -0.5, rtol):
        parts = S.split([p.width for p in pieces], dim=1)
        total = sum(
            p.inner(part.to(p.signal)) for p, part in zip(pieces, parts, strict=True)
        )
        counts[rows] = total.double().cpu().numpy()
    return counts / reference_sum.shape[0]


def whitened_sum(engine: JacobianEngine, X: NetInput, rtol: float) -> np.ndarray:
    """``S = sum_j A(x_j)`` of shape ``(d, p)`` in float64 (the first pass).

    Each batch's pieces are added into ``S`` in place, so the memory is that
    of ``S`` and of one piece.
    """
    S = None
    for _, pieces, _ in engine.mapped_pieces(X, -0.5, rtol):
        if S is None:
            d, width = pieces[0].signal.shape[1], sum(q.width for q in pieces)
            S = torch.zeros(d, width, dtype=torch.float64, device=engine.device)
        _add_totals(S, pieces)
    return S.cpu().numpy()


def _add_totals(S: torch.Tensor, pieces: list) -> None:
    """Add each piece's sum over the batch into its columns of ``S``.

    A function of its own, so that no piece outlives the batch in a loop
    variable while the next batch is computed.
    """
    start = 0
    for piece in pieces:
        S[:, start : start + piece.width] += piece.total()
        start += piece.width


@fill_doc
class GradientDensityEstimator(DensityMixin, NetworkEstimator):
    """Count the reference examples the network treats as similar to an input.

    The similarity is the network's cosine kernel ``k^C`` (see
    :func:`sksim.network_similarity`). Over the reference set ``{x_j}`` given to
    ``fit`` (usually the training set), three counts are offered:

    * ``"soft"``: ``N_S(x) = sum_j k^C(x, x_j)``, computed without any pair:
      ``fit`` accumulates ``S = sum_j A(x_j)`` of the whitened Jacobians
      ``A = (J J^T)^{-1/2} J`` in one streaming pass, and
      ``N_S(x) = <A(x), S>_F / d``. Time O(N p), memory O(p d): neither the
      ``N x N`` kernel nor the ``N x p`` Jacobian matrix is ever formed.
      With ``n_components`` set, the sketches of the reference are summed
      instead, and ``N_S(x)`` is the inner product of the sketch of ``x``
      with their sum: memory O(d n_components), for networks whose sums
      ``S`` would not fit.
    * ``"hard"``: ``N_tau(x) = #{j : k^C(x, x_j) > threshold}``.
    * ``"power"``: ``N_n(x) = sum_j max(k^C(x, x_j), 0)^power``.

    The last two need pairs: they are exact, computed in blocks of query rows
    against the reference set (similarities of one block, ``batch_size x N``,
    at a time; the engine keeps the reference Jacobians in memory when they
    fit in 2 GiB and recomputes them for every block otherwise), or,
    with ``n_components`` set, approximate through random sketches of the
    whitened Jacobians (unit-normalised, so that ``k(x, x) = 1`` exactly and
    other similarities carry an error of order ``1/sqrt(d n_components)`` for
    ``d`` outputs, or more: see the user guide).

    ``N_S / N`` is a relative density, a kernel density estimate with the
    network's kernel: low counts mark inputs the network treats as isolated,
    very high counts inputs it lumps together.

    **Across training.** With ``checkpoints``, ``k^C`` is the weighted
    average ``sum_c w_c k^C_c / sum_c w_c`` of the cosine kernels of the
    checkpoints. The soft count is linear in the kernel, so it is the same
    weighted average of the soft counts of each checkpoint (``fit`` keeps one
    sum ``S_c`` per checkpoint). The hard and power counts are not linear:
    they threshold or raise the averaged similarity, and count the examples
    that the network treats as similar on average over training, not the
    average of each checkpoint's counts.

    **Self-similarity.** Counts are sums over the whole reference set, so a
    reference example queried again counts itself: ``k^C(x_i, x_i) = 1`` adds
    exactly 1 to each of its counts (when ``threshold < 1 - 1e-6``: similarities
    are computed in float32 for networks of lower precision than float64, and
    float32 rounds the 1 of an example with itself to within about 1e-7; and
    when its ``J J^T`` is of full rank: a near-singular one, reported by a
    warning, gives it its rank over ``d``, 0.9 for a softmax over 10 classes).
    New inputs get
    no such term. Subtract 1 from the counts of the reference examples to
    exclude them.

    **Noise floor of the soft count.** Unrelated inputs have
    ``k^C = 0 +- O(1/sqrt(p))``, which do not cancel exactly: ``N_S`` carries
    an additive noise of order ``sqrt(N / p)``. Soft counts below a few times
    that are indistinguishable from no neighbour at all; ``hard`` and
    ``power`` counts suppress this background.

    Parameters
    ----------
    %(net)s
    method : {"soft", "hard", "power"}, default="soft"
        Which count, see above.
    threshold : float, default=0.9
        Similarity above which a reference example counts (``"hard"``), in
        ``[-1, 1)``. Below 0 it counts orthogonal examples too, and dead ones
        (whose similarity to every example is 0).
    power : float, default=2
        Exponent of the positive part of the similarity (``"power"``).
    %(output)s
    %(params)s
    %(n_components)s
        ``"soft"`` keeps only the sum of the reference sketches. The
        reference sketches may take two thirds of ``max_memory`` (``fit``
        raises a MemoryError past it); the queries are sketched in chunks
        that fit in what they leave, half to the chunk's sketches and half to
        its similarities.
    %(batch_size)s
    %(device)s
    %(rtol)s
    %(random_state)s
    %(n_jobs)s
        ``neighbor_counts`` splits the query rows among the workers.
    %(max_memory)s
        ``"soft"``'s sums ``S`` may take two thirds of it.
    %(verbose)s
    %(checkpoints)s
    %(checkpoint_weights)s

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network used.
    X_fit_ : ndarray, dict of ndarrays, or Dataset
        The reference inputs (a dataset is kept as it is, not read into memory).
    n_reference_ : int
        Number ``N`` of reference examples.
    n_outputs_ : int
        Number ``d`` of Jacobian rows per sample.
    reference_sum_ : ndarray of shape (d, p) or (n_checkpoints, d, p)
        ``S = sum_j A(x_j)`` (``method="soft"`` without ``n_components``
        only), one per checkpoint with ``checkpoints``. Its ``p`` columns
        are in the engine's layout of the parameters (a ``Linear`` layer's
        ``[W | b]`` row by row: each unit's weights, then its bias), not in
        ``net.parameters()``'s order.
    reference_features_ : ndarray of shape (N, d * k * n_checkpoints)
        Unit-normalised sketches of the reference (when ``n_components`` is
        set; their sum, one row, for ``method="soft"``), ``k`` equal to
        ``n_components`` (more where the network has more layer pieces, each
        taking one column at least; fewer where it has fewer parameters); with
        ``checkpoints``, those of the
        checkpoints side by side, each scaled by the square root of its share
        of the weight.
    %(sketch_weights_)s
    projection_seed_ : int or None
        Seed of the sketch, shared by reference and queries (None without
        sketches).
    n_features_in_ : int
        Size of the second axis of array inputs.

    See Also
    --------
    sksim.NetworkNeighbors : which reference examples are the most similar.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, the section on estimating
       sample density (the linear-time soft count).

    Examples
    --------
    >>> import torch
    >>> from sksim.density import GradientDensityEstimator
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 1))
    >>> X = torch.randn(20, 2).numpy()
    >>> dens = GradientDensityEstimator(net).fit(X)
    >>> dens.neighbor_counts(X[:3]).shape
    (3,)
    >>> hard = GradientDensityEstimator(net, method="hard", threshold=0.99).fit(X)
    >>> bool(hard.neighbor_counts(X).min() >= 1)  # each example counts itself
    True
    """

    _parameter_constraints = constraints(
        *NEIGHBOR_PARAMETERS,
        method=[StrOptions({"soft", "hard", "power"})],
        threshold=[THRESHOLD],
        power=[Interval(Real, 0, None, closed="neither")],
        **constraints(*CHECKPOINTS),
    )
    _fitted_params = ("method", "n_components", "rtol")

    def __init__(
        self,
        net: NetLike,
        *,
        method: str = "soft",
        threshold: float = 0.9,
        power: float = 2,
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        n_components: int | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        verbose: int = 0,
        checkpoints: Checkpoints | None = None,
        checkpoint_weights: ArrayLike | None = None,
    ) -> None:
        self.net = net
        self.method = method
        self.threshold = threshold
        self.power = power
        self.output = output
        self.params = params
        self.n_components = n_components
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_memory = max_memory
        self.verbose = verbose
        self.checkpoints = checkpoints
        self.checkpoint_weights = checkpoint_weights

    @forget_failed_fit
    def fit(self, X: NetInput, y: ArrayLike | None = None) -> Self:
        """Train the net if needed and prepare the reference set.

        ``method="soft"`` takes one streaming pass over ``X`` to accumulate
        ``S = sum_j A(x_j)``; sketched counts compute the reference sketches.

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
            The fitted estimator.
        """
        X = self._fit_network(X, y)
        self.X_fit_ = X
        self.n_reference_ = n_samples(X)
        self.n_outputs_ = self._engine.n_outputs(X)
        self._check_kept_bytes()
        if self.n_components is not None:
            self.sketch_weights_ = self._sketch_weights(X)
            self.reference_features_ = self._reference_sketches(X)
        elif self.method == "soft":
            engines = self._engines()
            with engines.warned_once():
                sums = [whitened_sum(e, X, self.rtol) for _, e in engines]
            self.reference_sum_ = (
                sums[0] if self.checkpoints is None else np.stack(sums)
            )
        return self

    def _reference_sketches(self, X) -> np.ndarray:
        """The reference's sketches, or their sum (one row) for soft counts.

        The sum is taken over chunks of the sketches, each within a third of
        ``max_memory``.
        """
        if self.method != "soft":
            return self._sketch(X)
        width = self.n_outputs_ * self.n_components * len(self._engines())
        chunks = sketched_chunks(self._sketch, X, width, self._engine.max_memory / 3)
        total = sum(F.sum(axis=0, dtype=np.float64) for _, F in chunks)
        return total[None].astype(np.float32)

    def _check_kept_bytes(self) -> None:
        """Raise a MemoryError when what ``fit`` keeps would not fit.

        The soft counts' sums ``S`` (float64) or the reference sketches
        (float32), one per checkpoint, may take two thirds of ``max_memory``.
        """
        d = self.n_outputs_
        copies = 1 if self.checkpoints is None else len(self.checkpoints)
        copies_text = f" x {copies} checkpoints" * (copies > 1)
        if self.method == "soft" and self.n_components is None:
            p = self._engine.n_params
            what = (
                'The sums of the whitened Jacobians that method="soft" keeps '
                f"({d} outputs x {p} parameters{copies_text}, float64)"
            )
            # a sketch takes half the float64 sum's bytes at p components
            advice = (
                f"sum sketches instead (n_components=, e.g. {min(2048, p // 2)}), "
                "select fewer parameters (params=) or outputs (output=), or raise "
                "max_memory."
            )
            kept = 8 * d * p * copies
            error = SoftSumsMemoryError
        elif self.n_components is not None:
            sketches = (
                "The summed reference sketches"
                if self.method == "soft"
                else f"The sketches of the {self.n_reference_} reference examples"
            )
            what = (
                f"{sketches} ({d} outputs x {self.n_components} "
                f"components{copies_text}, float32)"
            )
            advice = (
                "lower n_components or raise max_memory."
                if self.method == "soft"
                else 'lower n_components, count softly (method="soft", whose '
                "memory does not grow with the reference), or raise max_memory."
            )
            rows = 1 if self.method == "soft" else self.n_reference_
            kept = 4 * rows * d * self.n_components * copies
            error = MemoryError
        else:
            return
        check_kept_bytes(kept, self._engine.max_memory, what, advice, error)

    @property
    def _query_bytes(self) -> float:
        """Bytes a chunk of sketched queries and its similarities may take.

        Two thirds of ``max_memory`` (the engine's batches take the third
        one), less the reference sketches.
        """
        return left_beside(self.reference_features_.nbytes, self._engine.max_memory)

    def _sketch(self, X):
        """Sketches of ``X``, side by side for the checkpoints."""
        return stacked(
            self._engines(),
            lambda engine, c, out: sketch_features(
                engine,
                X,
                self.n_components,
                checkpoint_seed(self.projection_seed_, c),
                self.rtol,
                weights=self.sketch_weights_[c],
                out=out,
            ),
        )

    def _soft_counts(self, X):
        """``N_S(X)``: each checkpoint's soft counts, weighted."""
        sums = self.reference_sum_
        if self._engine_params["checkpoints"] is None:  # fit's, not set_params'
            sums = sums[None]
        return weighted_sum(
            self._engines(),
            lambda engine, c: soft_counts(engine, X, sums[c], self.rtol),
        )

    def _counts(self, X):
        if self.method == "soft" and self.n_components is None:
            return self._soft_counts(X)
        if self.n_components is not None:
            F_ref = self.reference_features_
            rows = sketched_rows(self._sketch, X, F_ref, self._query_bytes)
        else:
            rows = weighted_rows(
                self._engines(),
                lambda engine, Q: cosine_rows(
                    engine, self.X_fit_, Q, self.rtol, COUNT_COPIES
                ),
                X,
                n_samples(X),
                self.n_reference_,
            )
        counts = np.empty(n_samples(X))
        for block, k in rows:
            if self.method == "soft":  # against the sum of the reference sketches
                counts[block] = k[:, 0]
            elif self.method == "hard":
                counts[block] = np.count_nonzero(k > self.threshold, axis=1)
            else:
                counts[block] = positive_power(k, self.power).sum(axis=1)
        return counts

    def neighbor_counts(self, X: NetInput) -> np.ndarray:
        """Number of reference examples the network treats as similar to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset

        Returns
        -------
        counts : ndarray of shape (n_samples,)
            Float64 counts (``"hard"`` counts are whole numbers). A reference
            example counts itself, see the class docstring.
        """
        check_is_fitted(self)
        X = self._check_input(X)
        return split_rows(self._in_workers("_counts"), X, self.n_jobs)

    def score_samples(self, X: NetInput) -> np.ndarray:
        """Log relative density ``log(max(count, 0.5) / N)``.

        Counts are floored at half an example before the logarithm: a hard
        count of zero, or a soft count that the noise floor or anti-similar
        examples drive to zero or below, would otherwise give ``-inf`` or NaN.
        All counts below 0.5 therefore share the lowest score
        ``log(0.5 / N)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        counts = self.neighbor_counts(X)
        return np.log(np.maximum(counts, COUNT_FLOOR) / self.n_reference_)

    def score(self, X: NetInput, y: Any = None) -> float:
        """Total log relative density of ``X``, the sum of :meth:`score_samples`.

        Relative densities are not normalised: their scale changes with
        ``method``, ``threshold`` and ``power``, so that scores of different
        settings do not compare (a grid search over them by this score is
        meaningless; score a downstream task instead).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
        y : None
            Ignored.

        Returns
        -------
        score : float
        """
        return float(np.sum(self.score_samples(X)))
