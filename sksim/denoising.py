"""Self-denoising: why a net trained on noisy labels can beat the noise.

See the theory page, "self-denoising".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import POSITIVE_INT, NetworkEstimator, constraints, forget_failed_fit
from ._docs import fill_doc
from ._engine.gram import GramReference, NTKReference
from ._engine.inputs import is_dataset, n_samples
from ._engine.jacobian import DEFAULT_MAX_MEMORY
from ._pyplot import log_scale, pyplot
from ._typing import NetInput, NetLike, Output, Self
from ._validation import check_net_input, dataset_targets, labels_key_hint
from .density import THRESHOLD, positive_power

MATRIX_WEIGHTS = ("ntk", "cosine")  # the others are scalars times the identity
# The least ridge of the matrix weights, in roundings of the network's dtype
RIDGE_ROUNDINGS = 3
MATRIX_COPIES = 4  # arrays of a block's (b, N, d, d) size its analysis holds at once
SCALAR_COPIES = 3  # arrays of a block's (b, N) size its analysis holds at once

if TYPE_CHECKING:
    from matplotlib.axes import Axes


class IllConditionedWeightsWarning(UserWarning):
    """``sum_j K_ij`` is near-singular: similar and anti-similar samples cancel."""


class NoiseEstimateWarning(UserWarning):
    """The estimated ``sigma`` exceeds the spread of the targets themselves."""


def scalar_weights(
    k: np.ndarray, weights: str, power: float, threshold: float
) -> np.ndarray:
    """The scalar weights ``w_ij`` of cosine similarities ``k``: ``B_ij = w_ij I``.

    ``"cosine_pos_pow"``: ``max(k_ij, 0)^power``; ``"hard"``:
    ``1[k_ij > threshold]``.
    """
    if weights == "cosine_pos_pow":
        return positive_power(k, power)
    return (k > threshold).astype(np.float64)


class BlockResult(NamedTuple):
    """The analysis of a block of rows ``i``, with ``M_i = sum_j B_ij``."""

    noise_covariance: np.ndarray  # C_i = M_i^-1 (sum_j B_ij B_ij^T) M_i^-T
    self_weight: np.ndarray  # tr(W_ii) / d
    kernel_prediction: np.ndarray  # sum_j W_ij y_j
    smoothed: np.ndarray  # sum_j W_ij f_j
    scale: np.ndarray  # sum_j |B_ij|_F
    smallest: np.ndarray  # the smallest singular value of M_i


def matrix_block(B, own, y, f, ridge: float) -> BlockResult:
    """The analysis of matrix weights ``B`` ``(b, N, d, d)``.

    ``own`` holds each row's own column ``j = i``.
    """
    M = B.sum(axis=1)
    scale = np.linalg.norm(B, axis=(-2, -1)).sum(axis=1)
    inverse, smallest = regularized_inverse(M, scale, ridge)
    Q = np.einsum("bjde,bjfe->bdf", B, B)
    own_weight = inverse @ B[np.arange(B.shape[0]), own]
    return BlockResult(
        inverse @ Q @ np.swapaxes(inverse, -1, -2),
        np.trace(own_weight, axis1=-2, axis2=-1) / B.shape[-1],
        weighted_average(inverse, B, y),
        weighted_average(inverse, B, f),
        scale,
        smallest,
    )


def scalar_block(w, own, y, f, ridge: float) -> BlockResult:
    """:func:`matrix_block` of ``B_ij = w_ij I``, from the scalars ``w`` ``(b, N)``.

    The weights are non-negative: ``M_i = m_i I`` with ``m_i = sum_j w_ij``
    has the singular values ``m_i`` and the Tikhonov inverse
    ``m_i / (m_i^2 + lam_i^2) I``, ``sum_j |B_ij|_F = sqrt(d) m_i``, and
    every sum over ``j`` is one over the scalars, without the ``d x d``
    blocks.
    """
    d = y.shape[1]
    m = w.sum(axis=1)
    scale = np.sqrt(d) * m
    denominator = m**2 + (ridge * scale) ** 2
    inverse = np.divide(m, denominator, out=np.zeros_like(m), where=denominator > 0)
    variance = inverse**2 * np.einsum("ij,ij->i", w, w)
    return BlockResult(
        variance[:, None, None] * np.eye(d),
        inverse * w[np.arange(len(w)), own],
        inverse[:, None] * (w @ y),
        inverse[:, None] * (w @ f),
        scale,
        m,
    )


def regularized_inverse(
    M: np.ndarray, scale: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Tikhonov inverse ``V diag(s / (s^2 + lam^2)) U^T`` of ``M = U S V^T``.

    ``lam = ridge * scale`` per sample; ``ridge = 0`` gives the pseudo-inverse.
    Also returns the smallest singular value of each ``M``.
    """
    U, s, Vt = np.linalg.svd(M)
    lam = (ridge * scale)[:, None]
    denominator = s**2 + lam**2
    inv_s = np.divide(s, denominator, out=np.zeros_like(s), where=denominator > 0)
    inverse = np.swapaxes(Vt, -1, -2) @ (inv_s[..., None] * np.swapaxes(U, -1, -2))
    return inverse, s[:, -1]


def weighted_average(
    inverse: np.ndarray, B: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """``sum_j W_ij v_j = M_i^{-1} sum_j B_ij v_j`` for a block of rows."""
    return np.einsum("bde,be->bd", inverse, np.einsum("bjef,jf->be", B, values))


@fill_doc
class SelfDenoisingAnalysis(NetworkEstimator):
    """Per-sample self-denoising of a net trained with a squared loss on noisy labels.

    At a critical point of the squared loss on labels ``y_j = y*_j + eps_j``
    (noise covariance ``sigma^2 I_d``), and if the network is locally constant
    over the samples that matter, its prediction is a weighted average of the
    labels::

        f(x_i) ~ sum_j W_ij y_j,        W_ij = (sum_k B_ik)^{-1} B_ij.

    The paper's weights are the unnormalised NTK blocks ``B_ij = J_i J_j^T``.
    Because "locally constant" fails when the kernel has a large shared
    component, they can be far too optimistic: on the circle-sine task
    (:func:`sksim.datasets.make_circle_sine`, label noise 0.2) they predict a
    clean error 4 to 7 times smaller than the one measured. **The weighting
    is a parameter**, and the default, ``"hard"`` with ``threshold=0.95``,
    predicted that error within a factor of two there (0.74 to 0.83 times
    the measured one). The choices: ``"ntk"`` (the paper's),
    ``"cosine"`` (the matrix cosine kernel ``A_i A_j^T``),
    ``"cosine_pos_pow"`` (``max(k^C_ij, 0)^power I_d``) and ``"hard"``
    (``1[k^C_ij > threshold] I_d``, the samples the network treats as nearly
    the same). Per training sample ``i`` it reports

    * the noise covariance of the prediction in units of ``sigma^2``,
      ``C_i = sum_j W_ij W_ij^T`` (``noise_covariance_``), and its scalar
      ``tr(C_i) / d``, the **denoising factor** (variance ratio; for
      ``d = 1``, ``sum_j K_ij^2 / (sum_j K_ij)^2``);
    * the **effective number of neighbours** ``N_eff = d / tr(C_i)`` (for
      ``d = 1``, ``(sum_j K_ij)^2 / sum_j K_ij^2``); the standard deviation of
      the noise is reduced by ``1 / sqrt(N_eff)``;
    * the **predicted error against the unknown clean labels**
      ``E |f(x_i) - y*_i|^2 ~ sigma^2 tr(C_i)``, with ``sigma`` given or
      estimated from the training residuals (noisy labels only);
    * the **neighbour consistency** ``c_i = |f(x_i) - sum_j W_ij f(x_j)|``
      (predictions only): large values flag samples where the locally
      constant assumption fails.

    **Estimating sigma.** Under the same model the training residual is
    ``f(x_i) - y_i = (W_ii - I) eps_i + sum_{j != i} W_ij eps_j``, so
    ``E |f(x_i) - y_i|^2 = sigma^2 (d + tr C_i - 2 tr W_ii)``: the estimate is
    ``sigma^2 = sum_i |f(x_i) - y_i|^2 / sum_i (d + tr C_i - 2 tr W_ii)``, which
    corrects the plain residual variance for the part of its own label each
    prediction absorbed; samples whose only neighbour is themselves, whose
    term is zero, are left out of both sums. An estimate above the spread of
    the targets, which
    noise added to them cannot exceed, warns (``NoiseEstimateWarning``).

    **Guarding the normalisation.** Similar and anti-similar samples can
    cancel in ``M_i = sum_j B_ij``. Its inverse is a Tikhonov-regularised
    pseudo-inverse with ``lambda_i = ridge * sum_j |B_ij|_F``, and the
    condition number ``kappa_i = sum_j |B_ij|_F / s_min(M_i) >= 1`` is reported
    (for ``d = 1``, ``sum_j |K_ij| / |sum_j K_ij|``; infinite when ``M_i`` is
    singular). Samples with ``kappa_i > 1 / ridge`` are flagged in
    ``ill_conditioned_`` with a warning: their results are dominated by the
    regularisation. Non-negative weights (``"cosine_pos_pow"``, ``"hard"``)
    never cancel.

    Cost: one row of weights per analysed sample against the whole training
    set, O(n N p) time for ``n`` of the ``N`` samples (all of them by
    default; ``max_samples`` bounds ``n``), computed in blocks of rows:
    ``b x N x d x d`` values for the matrix weights (``"ntk"``,
    ``"cosine"``), ``b x N`` scalar similarities for the others. A block, with
    the analysis' copies of it, takes at most a third of ``max_memory``.

    Parameters
    ----------
    %(net)s
        It was trained with a squared loss on ``(X, y)``. Classification:
        pass one-hot labels as ``y`` and an ``output`` that selects the
        quantity regressed on them (e.g. probabilities).
    weights : {"ntk", "cosine", "cosine_pos_pow", "hard"}, default="hard"
        The neighbour weighting, see above.
    power : float, default=8
        Exponent of ``"cosine_pos_pow"``.
    threshold : float, default=0.95
        Cosine similarity above which ``"hard"`` counts a neighbour, in
        ``[-1, 1)``; 0.95-0.99 matches measured errors on the circle-sine toy.
    sigma : float or None, default=None
        Standard deviation of the label noise per output; None estimates it
        from the training residuals, see above.
    ridge : float, default=1e-6
        Relative Tikhonov regularisation of ``(sum_j B_ij)^{-1}``. The matrix
        weights take at least three times their precision: the rounding of
        the network's float dtype, divided by ``sqrt(rtol)`` for
        ``"cosine"`` (whose whitening raises it that much along near-null
        directions): about 1e-4 for a float32 network's cosine weights.
    max_samples : int or None, default=None
        The training samples analysed: None analyses all of them; an int at
        most that many, drawn at random with ``random_state``. Their sums over
        neighbours still run over the whole training set, so each analysed
        sample gets the values it has in the full analysis; ``sigma`` is
        estimated from their residuals.
    %(output)s
        They must match the columns of ``y``.
    %(params)s
    %(batch_size)s
    %(device)s
    %(rtol)s
    random_state : int, RandomState instance or None, default=None
        Seeds the training of an unfitted skorch net and the draw of
        ``max_samples``.
    %(max_memory)s
    %(verbose)s

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network analysed.
    sample_indices_ : ndarray of shape (n_analysed,)
        The rows of the training set analysed, in increasing order; every
        per-sample attribute below is about them.
    n_samples_fit_ : int
        ``N``, the training samples every sum over neighbours runs over.
    predictions_ : ndarray of shape (n_analysed, d)
        ``f(x_i)``.
    targets_ : ndarray of shape (n_analysed, d)
        The (noisy) training labels.
    noise_covariance_ : ndarray of shape (n_analysed, d, d)
        ``C_i = sum_j W_ij W_ij^T``.
    denoising_factor_ : ndarray of shape (n_analysed,)
        ``tr(C_i) / d``.
    effective_neighbors_ : ndarray of shape (n_analysed,)
        ``d / tr(C_i)``. NaN, as are the sample's other results, for a
        sample without any neighbour (all its weights zero: a dead example,
        or similarities all below a ``"hard"`` threshold), with a warning.
    self_weight_ : ndarray of shape (n_analysed,)
        ``tr(W_ii) / d``, the share of its own label in the prediction.
    kernel_prediction_ : ndarray of shape (n_analysed, d)
        ``sum_j W_ij y_j``, what the locally constant model predicts.
    consistency_ : ndarray of shape (n_analysed,)
        ``|f(x_i) - sum_j W_ij f(x_j)|``.
    condition_number_ : ndarray of shape (n_analysed,)
        ``kappa_i``, see above.
    ill_conditioned_ : ndarray of shape (n_analysed,), bool
        ``kappa_i > 1 / ridge_`` or ``kappa_i`` infinite.
    ridge_ : float
        The ridge used: ``ridge``, or the matrix weights' precision if larger.
    sigma_ : float
        The noise level used (given or estimated).
    predicted_error_ : ndarray of shape (n_analysed,)
        ``sigma^2 tr(C_i)``, the predicted ``E |f(x_i) - y*_i|^2``.
    n_outputs_ : int
        ``d``.
    n_features_in_ : int
        Size of the second axis of array inputs.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, the section on the
       self-denoising effect (its quantification without true labels).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sksim.denoising import SelfDenoisingAnalysis
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 1))
    >>> X = torch.randn(30, 2).numpy()
    >>> y = np.sin(X[:, 0]) + 0.1 * np.random.default_rng(0).normal(size=30)
    >>> analysis = SelfDenoisingAnalysis(net, sigma=0.1).fit(X, y)  # noise known
    >>> analysis.effective_neighbors_.shape
    (30,)
    >>> sorted(analysis.summary())[:3]
    ['max_condition_number', 'mean_consistency', 'mean_effective_neighbors']
    """

    _parameter_constraints = constraints(
        "net",
        "output",
        "params",
        "batch_size",
        "device",
        "rtol",
        "random_state",
        "max_memory",
        "verbose",
        weights=[StrOptions({"ntk", "cosine", "cosine_pos_pow", "hard"})],
        power=[Interval(Real, 0, None, closed="neither")],
        threshold=[THRESHOLD],
        sigma=[Interval(Real, 0, None, closed="neither"), None],
        ridge=[Interval(Real, 0, 1, closed="left")],
        max_samples=[POSITIVE_INT, None],
    )

    def __init__(
        self,
        net: NetLike,
        *,
        weights: str = "hard",
        power: float = 8,
        threshold: float = 0.95,
        sigma: float | None = None,
        ridge: float = 1e-6,
        max_samples: int | None = None,
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        random_state: int | np.random.RandomState | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        verbose: int = 0,
    ) -> None:
        self.net = net
        self.weights = weights
        self.power = power
        self.threshold = threshold
        self.sigma = sigma
        self.ridge = ridge
        self.max_samples = max_samples
        self.output = output
        self.params = params
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.random_state = random_state
        self.max_memory = max_memory
        self.verbose = verbose

    def _check_targets(self, X, y):
        if n_samples(X) < 2:
            raise ValueError(
                "SelfDenoisingAnalysis needs at least 2 training samples; got 1 sample."
            )
        if len(y) != n_samples(X):
            raise ValueError(
                f"X has {n_samples(X)} samples but y has {len(y)}: pass one label "
                "per training sample."
            )

    @forget_failed_fit
    def fit(self, X: NetInput, y: ArrayLike | None = None) -> Self:
        """Analyse the net on its training set ``(X, y)`` with noisy labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            The training inputs; a map-style torch ``Dataset`` is read batch by
            batch.
        y : array-like of shape (n_samples,) or (n_samples, d), default=None
            The (noisy) training labels, in the space of the selected outputs.
            Required, unless ``X`` is a Dataset of ``(x, y)`` items: its labels
            are then read from the items.

        Returns
        -------
        self : object
        """
        labels_in_items = y is None and is_dataset(X)
        if labels_in_items:
            y = dataset_targets(check_net_input(X))
        if y is None:
            raise ValueError(
                "SelfDenoisingAnalysis requires y to be passed, but the target y is "
                "None: call fit(X, y) with the noisy training labels, or pass a "
                "Dataset of (x, y) items." + labels_key_hint(X)
            )
        y = np.asarray(y) if isinstance(y, (list, tuple)) else y
        kind = getattr(getattr(y, "dtype", None), "kind", "")  # not torch's
        strings = kind == "O" and any(isinstance(v, str) for v in np.ravel(y))
        if kind in ("S", "U") or strings:
            raise ValueError(
                f"y holds strings ({y.dtype}): the self-denoising needs numbers in "
                "the space of the network's selected outputs, one per output (for "
                "class labels, one-hot rows, e.g. sklearn.preprocessing."
                "LabelBinarizer().fit_transform(y), with outputs that are "
                "probabilities)."
            )
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        X = self._fit_network(
            X,
            y_net=None if labels_in_items else y.astype(np.float32),
            check_targets=lambda X: self._check_targets(X, y),
        )
        engine = self._engine
        f = engine.outputs(X).double().numpy()
        n, d = f.shape
        if y.size != n * d:
            raise ValueError(
                f"y has {y.size // n} value(s) per sample but the network's selected "
                f"output has d={d}: pass labels in the space of the outputs "
                "(one-hot labels for a classifier) or choose the outputs with "
                "output=."
            )
        y = y.reshape(n, d)
        self.n_samples_fit_ = n
        self.sample_indices_ = self._analysed_rows(n)
        self._analyse(engine, X, f, y)
        # the spread of all the training targets, not of those analysed
        self._set_noise_level(float(np.sqrt(np.var(y, axis=0).mean())))
        return self

    def _analysed_rows(self, n: int) -> np.ndarray:
        """All ``n`` rows, or ``max_samples`` of them drawn at random, sorted."""
        if self.max_samples is None or self.max_samples >= n:
            return np.arange(n)
        rng = check_random_state(self.random_state)
        return np.sort(rng.choice(n, self.max_samples, replace=False))

    def _effective_ridge(self, engine) -> float:
        """``ridge``, raised to the precision of the matrix weights if below it.

        ``RIDGE_ROUNDINGS`` times the rounding of the network's float dtype
        (float32 for half precision, whose gradients the engine forms in it),
        which the cosine's whitening raises up to ``1 / sqrt(rtol)`` times
        along near-null directions (class probabilities' all-ones one): a
        smaller ridge amplified it to the predictions' scale.
        """
        if self.weights not in MATRIX_WEIGHTS:
            return self.ridge
        dtype = next(iter(engine.parameters.values())).dtype
        rounding = torch.finfo(torch.promote_types(dtype, torch.float32)).eps
        if self.weights == "cosine":
            rounding /= np.sqrt(self.rtol)
        return max(self.ridge, RIDGE_ROUNDINGS * rounding)

    def _analyse(self, engine, X, f, y):
        self.ridge_ = self._effective_ridge(engine)
        n, d = len(self.sample_indices_), f.shape[1]
        C = np.empty((n, d, d))
        self_weight = np.empty(n)
        kernel_prediction = np.empty((n, d))
        smoothed_f = np.empty((n, d))
        condition = np.empty(n)
        weight = np.empty(n)
        for rows, block in self._blocks(engine, X, f, y):
            weight[rows] = block.scale
            C[rows] = block.noise_covariance
            self_weight[rows] = block.self_weight
            kernel_prediction[rows] = block.kernel_prediction
            smoothed_f[rows] = block.smoothed
            with np.errstate(divide="ignore", invalid="ignore"):
                condition[rows] = np.where(
                    block.smallest > 0, block.scale / block.smallest, np.inf
                )
        alone = weight == 0  # every weight zero, the sample's own included
        self._check_neighbors(alone)
        for values in (C, self_weight, kernel_prediction, smoothed_f, condition):
            values[alone] = np.nan
        trace = np.trace(C, axis1=-2, axis2=-1)
        self.n_outputs_ = d
        self.predictions_ = f[self.sample_indices_]
        self.targets_ = y[self.sample_indices_]
        self.noise_covariance_ = C
        self.denoising_factor_ = trace / d
        self.effective_neighbors_ = np.full(n, np.inf)
        np.divide(d, trace, out=self.effective_neighbors_, where=trace > 0)
        self.effective_neighbors_[alone] = np.nan
        self.self_weight_ = self_weight
        self.kernel_prediction_ = kernel_prediction
        self.consistency_ = np.linalg.norm(self.predictions_ - smoothed_f, axis=1)
        self.condition_number_ = condition
        limit = 1 / self.ridge_ if self.ridge_ > 0 else np.inf
        self.ill_conditioned_ = (condition > limit) | np.isinf(condition)
        if self.ill_conditioned_.any():
            warnings.warn(
                f"sum_j K_ij is ill-conditioned for {int(self.ill_conditioned_.sum())} "
                f"sample(s) (condition number above 1/ridge = {limit:g}): "
                "similar and anti-similar samples cancel there, and their results "
                "are set by the ridge regularisation. See ill_conditioned_, or use "
                'non-negative weights ("cosine_pos_pow" or "hard").',
                IllConditionedWeightsWarning,
                stacklevel=3,
            )

    def _check_neighbors(self, alone: np.ndarray) -> None:
        """Warn of analysed samples without a neighbour; raise if none has one."""
        if not alone.any():
            return
        remedies = {
            "lower the threshold": self.weights == "hard",
            'use weights="cosine_pos_pow"': self.weights != "cosine_pos_pow",
            "regress on logits or d - 1 of the probabilities": True,
        }
        advice = (
            "every weight zero, their own included: no prediction is a weighted "
            "average of labels there. Class probabilities (softmax outputs) keep "
            "every similarity at most (d - 1) / d: "
            + ", or ".join(remedy for remedy, applies in remedies.items() if applies)
            + "."
        )
        if alone.all():
            threshold = (
                f", threshold={self.threshold}" if self.weights == "hard" else ""
            )
            raise ValueError(
                "No analysed sample has a neighbour under "
                f"weights={self.weights!r}{threshold}: {advice}"
            )
        warnings.warn(
            f"{int(alone.sum())} analysed sample(s) have no neighbour under "
            f"weights={self.weights!r} ({advice} Dead examples, whose gradients "
            "vanish, have none.) Their noise covariance, effective neighbours and "
            "predicted error are NaN, and the summary leaves them out.",
            UserWarning,
            stacklevel=3,
        )

    def _blocks(self, engine, X, f, y):
        """Yield ``(rows, BlockResult)`` for blocks of the analysed rows.

        Each analysed sample's weights run over all of ``X``: matrix weights
        ``B_ij``, the NTK blocks ``J_i J_j^T`` (``"ntk"``) or ``A_i A_j^T``
        (``"cosine"``, from the whitened Jacobians ``A = (J J^T)^{-1/2} J``:
        whitening float32 NTK blocks instead raised their rounding along
        near-null directions to the weights' scale), scalar weights from the
        scalar cosine kernel. A block and the arrays of its size that its
        analysis makes take at most a third of ``max_memory``.
        """
        matrix = self.weights in MATRIX_WEIGHTS
        if self.weights == "ntk":
            reference = NTKReference(engine, X)
        else:
            reference = GramReference(
                engine, X, kind="cosine", full=matrix, rtol=self.rtol
            )
        copies = MATRIX_COPIES if matrix else SCALAR_COPIES
        analysed = self.sample_indices_
        subset = None if len(analysed) == self.n_samples_fit_ else analysed
        for rows, kernel, _ in reference.self_rows(copies, subset):
            own = analysed[rows]
            if matrix:
                yield rows, matrix_block(kernel, own, y, f, self.ridge_)
            else:
                w = scalar_weights(kernel, self.weights, self.power, self.threshold)
                yield rows, scalar_block(w, own, y, f, self.ridge_)

    def _set_noise_level(self, spread: float):
        f, y, d = self.predictions_, self.targets_, self.n_outputs_
        self._sigma_estimated = self.sigma is None  # what summary() reports
        if self.sigma is not None:
            self.sigma_ = float(self.sigma)
        else:
            expected = d + d * self.denoising_factor_ - 2 * d * self.self_weight_
            # samples with neighbours other than themselves: the model predicts
            # the others' labels as their own, and their residuals tell nothing
            kept = ~np.isnan(expected) & (expected > 1e-9 * d)
            if not expected[kept].sum() > 1e-12:
                raise ValueError(
                    "sigma cannot be estimated from the training residuals: every "
                    "prediction is its own label under this weighting (no "
                    "neighbours). Pass sigma=, or widen the weighting."
                )
            residuals = ((f - y)[kept] ** 2).sum()
            self.sigma_ = float(np.sqrt(residuals / expected[kept].sum()))
            if self.sigma_ > spread:
                warnings.warn(
                    f"The estimated label noise sigma={self.sigma_:.3g} exceeds the "
                    f"spread of the targets themselves ({spread:.3g}), so sigma_ "
                    "and the predicted errors are unreliable: noise added to the "
                    "targets cannot exceed their spread, and the network does not "
                    "average its neighbours' labels as the estimate assumes (it "
                    "fits them poorly, with few effective neighbours). Pass "
                    "sigma= to give the noise level instead.",
                    NoiseEstimateWarning,
                    stacklevel=3,
                )
        self.predicted_error_ = self.sigma_**2 * d * self.denoising_factor_

    def clean_errors(self, y_clean: ArrayLike) -> np.ndarray:
        """Measured squared errors ``|f(x_i) - y*_i|^2`` against clean labels.

        Parameters
        ----------
        y_clean : array-like of shape (n_samples,) or (n_samples, d)
            The clean labels of the training set given to ``fit``, when known
            (synthetic data).

        Returns
        -------
        errors : ndarray of shape (n_analysed,)
            Those of the analysed samples, comparable to ``predicted_error_``.
        """
        check_is_fitted(self)
        y_clean = check_array(
            y_clean, ensure_2d=False, dtype=np.float64, input_name="y_clean"
        )
        n, d = self.n_samples_fit_, self.n_outputs_
        if len(y_clean) != n or y_clean.size != n * d:
            raise ValueError(
                f"y_clean has shape {y_clean.shape}; expected the {n} training "
                f"samples x {d} outputs, of shape ({n}, {d})"
                + (f" or ({n},)." if d == 1 else ".")
            )
        y_clean = y_clean.reshape(n, d)[self.sample_indices_]
        return ((self.predictions_ - y_clean) ** 2).sum(axis=1)

    def summary(self, y_clean: ArrayLike | None = None) -> dict[str, float]:
        """Headline numbers, as a dict of floats.

        Errors are root mean squared per output, ``sqrt(mean_i e_i / d)``.

        Parameters
        ----------
        y_clean : array-like of shape (n_samples,) or (n_samples, d), default=None
            Clean labels, when known: adds the measured error against them.

        Returns
        -------
        summary : dict
            ``sigma``, ``sigma_estimated``, ``mean_effective_neighbors``,
            ``median_effective_neighbors``, ``predicted_rmse`` (against clean
            labels), ``training_rmse`` (against the noisy labels),
            ``mean_consistency``, ``max_condition_number``,
            ``n_ill_conditioned``, ``n_without_neighbors`` (left out of the
            means); with ``y_clean`` also ``measured_rmse``,
            ``measured_effective_neighbors`` (``sigma^2 / measured_rmse^2``)
            and ``predicted_over_measured`` (both inf where the predictions
            are the clean labels).
        """
        check_is_fitted(self)
        d = self.n_outputs_
        kept = ~np.isnan(self.effective_neighbors_)  # samples with neighbours
        residuals = ((self.predictions_ - self.targets_)[kept] ** 2).sum(axis=1)
        out = {
            "sigma": self.sigma_,
            "sigma_estimated": self._sigma_estimated,
            "mean_effective_neighbors": float(np.nanmean(self.effective_neighbors_)),
            "median_effective_neighbors": float(
                np.nanmedian(self.effective_neighbors_)
            ),
            "predicted_rmse": float(np.sqrt(np.nanmean(self.predicted_error_) / d)),
            "training_rmse": float(np.sqrt(np.mean(residuals) / d)),
            "mean_consistency": float(np.nanmean(self.consistency_)),
            "max_condition_number": float(np.nanmax(self.condition_number_)),
            "n_ill_conditioned": int(self.ill_conditioned_.sum()),
            "n_without_neighbors": int(np.isnan(self.effective_neighbors_).sum()),
        }
        if y_clean is not None:
            measured = float(np.sqrt(np.mean(self.clean_errors(y_clean)[kept]) / d))
            out["measured_rmse"] = measured
            with np.errstate(divide="ignore"):  # inf for predictions equal to y_clean
                neighbors, ratio = np.divide(
                    [self.sigma_**2, out["predicted_rmse"]], [measured**2, measured]
                )
            out["measured_effective_neighbors"] = float(neighbors)
            out["predicted_over_measured"] = float(ratio)
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


def plot_denoising(
    analysis: SelfDenoisingAnalysis,
    y_clean: ArrayLike | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Per-sample predicted error against the effective number of neighbours.

    Each training sample is a point at ``(N_eff, sigma sqrt(tr C / d))``; with
    clean labels the measured per-sample errors are drawn too, and horizontal
    lines mark ``sigma``, the predicted RMSE and the measured RMSE.

    Parameters
    ----------
    analysis : SelfDenoisingAnalysis
        A fitted analysis.
    y_clean : array-like of shape (n_samples,) or (n_samples, d), default=None
        Clean labels, when known.
    ax : matplotlib Axes, default=None
        Where to draw; None creates a figure.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, torch
    >>> from sksim.denoising import SelfDenoisingAnalysis, plot_denoising
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 1))
    >>> X = torch.randn(20, 2).numpy()
    >>> analysis = SelfDenoisingAnalysis(net, sigma=0.1).fit(X, X[:, 0])
    >>> plot_denoising(analysis).get_xscale()
    'log'
    """
    plt = pyplot("plot_denoising")
    check_is_fitted(analysis)
    d = analysis.n_outputs_
    summary = analysis.summary(y_clean)  # y_clean checked before a figure is made
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    n_eff = analysis.effective_neighbors_
    predicted = np.sqrt(analysis.predicted_error_ / d)
    ax.scatter(n_eff, predicted, s=6, alpha=0.6, label="predicted per sample")
    ax.axhline(summary["sigma"], color="k", lw=1, label="label noise sigma")
    ax.axhline(summary["predicted_rmse"], color="C0", ls="--", label="predicted RMSE")
    if y_clean is not None:
        measured = np.sqrt(analysis.clean_errors(y_clean) / d)
        ax.scatter(
            n_eff, measured, s=6, alpha=0.4, color="C1", label="measured per sample"
        )
        ax.axhline(summary["measured_rmse"], color="C1", ls="--", label="measured RMSE")
    log_scale(ax, "x")
    ax.set_xlabel("effective number of neighbours N_eff")
    ax.set_ylabel("error against clean labels")
    ax.set_title(f'self-denoising, weights="{analysis.weights}"')
    # room above the values for the legend, which covered the sigma line
    shown = [predicted, [summary["sigma"], summary["predicted_rmse"]]]
    if y_clean is not None:
        shown += [measured, [summary["measured_rmse"]]]
    top = np.nanmax(np.concatenate([np.ravel(values) for values in shown]))
    if np.isfinite(top) and top > 0:
        ax.set_ylim(0, 1.8 * top)
    ax.legend(fontsize="small", loc="upper right", ncols=2)
    return ax
