"""Training that makes known-similar examples similar to the network.

The regulariser of Charpiat et al. (NeurIPS 2019, section 4); the user guide's
theory page has the mathematics. For pairs ``(a, b)`` of inputs known to be
similar, the training loss gets the extra term ``weight * s * mean_pairs
cos(grad phi(a), grad phi(b))``, where ``grad`` is the gradient with respect to
the network's parameters, ``phi`` a scalar read-out of the output and
``s = -1`` to make the pairs similar (``+1`` to push them apart). The term is
differentiated by double back-propagation: the engine
(``sksim._engine.differentiable``) computes the per-sample gradients of all
samples of a batch at once, keeping their graph, and the outer
``loss.backward()`` of skorch differentiates through them.

Design
------
:class:`SimilarityRegularizedNet` subclasses :class:`skorch.NeuralNet` and
overrides only skorch's documented hooks:

* ``get_loss`` adds the term during training (``training=True``) and records it
  in the history; validation and scoring losses are left untouched;
* ``infer`` strips the pairs attached by :func:`with_pairs` before calling the
  module;
* ``initialize`` and ``partial_fit`` check the new hyper-parameters;
* ``_default_callbacks`` adds the per-epoch aggregates of the recorded values
  and :class:`ValidPairSimilarity`.

The classifier and regressor flavours inherit from both
:class:`SimilarityRegularizedNet` and skorch's
:class:`~skorch.NeuralNetClassifier` / :class:`~skorch.NeuralNetRegressor`.
Python's method resolution order puts the regulariser first and skorch's
flavour next (``SimilarityRegularizedClassifier -> SimilarityRegularizedNet ->
NeuralNetClassifier -> NeuralNet``), so every ``super()`` call reaches skorch's
own behaviour (the classifier's criterion default, its ``log`` of
probabilities before ``NLLLoss``, ``predict``...), and ``isinstance(clf,
SimilarityRegularizedNet)`` holds. No skorch code is duplicated.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import is_classifier, is_regressor
from skorch import NeuralNet, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback, PassthroughScoring
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch.utils._pytree import tree_leaves, tree_map

from ._engine.context import evaluation_mode, torch_seed, uncompiled
from ._engine.differentiable import per_sample_gradients
from ._engine.inputs import is_dataset, module_float_dtype, n_samples, take
from ._engine.inputs import to_tensor as read_tensors
from ._engine.selection import select_output, select_parameters
from ._net import (
    float_inputs_as,
    labels_within_outputs,
    resolve_device,
    training_targets,
)
from ._pairs import (
    carried_pair_numbers,
    check_labels,
    is_pair_data,
    same_class_partners,
    split_pair_data,
    strip_pairs,
    with_pairs,
)
from ._typing import NetInput, Self
from ._validation import (
    LabelledDataset,
    carries_labels,
    check_net_input,
    check_positive_int,
    dataset_targets,
    given_or_item_labels,
    is_finite_number,
    is_map_style,
    labelled,
)

__all__ = [
    "SimilarityRegularizedClassifier",
    "SimilarityRegularizedNet",
    "SimilarityRegularizedRegressor",
    "ValidPairSimilarity",
    "with_pairs",
]

#: The sign ``s`` of the term for each ``similarity_direction``.
DIRECTIONS = {"similar": -1.0, "dissimilar": 1.0}
PAIR_MODES = ("same_class", "given")
#: Up to this many samples per batch, pair dot products come from a Gram matrix.
GRAM_MAX_SAMPLES = 256
READOUTS = ("posnegflat", "random")
# A batch of inputs as skorch passes it: a tensor, or a dict of them (pairs
# attached by with_pairs travel in the dict).
Batch = torch.Tensor | Mapping[str, torch.Tensor]


def _take(X, index: torch.Tensor):
    return tree_map(lambda t: t[index], X)


def _cat(first, second):
    if isinstance(first, dict):
        return {k: torch.cat([first[k], second[k]]) for k in first}
    return torch.cat([first, second])


def _shapes(X):
    if isinstance(X, dict):
        return {k: tuple(v.shape) for k, v in X.items()}
    return tuple(X.shape)


def _n_outputs(y_pred) -> int:
    return select_output(y_pred).shape[1]


def posnegflat_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Read-out vectors ``v`` of shape ``(n, C)``: +1 at the label, -1/(C-1) elsewhere.

    ``sum_c v_c = 0``, so ``v . z`` is the same on logits and on log-softmax
    outputs (Charpiat et al. 2019, section 4).
    """
    if n_classes < 2:
        raise ValueError(
            'similarity_readout="posnegflat" needs a network with at least two '
            f"outputs (one per class); this one has {n_classes}. Use "
            'similarity_readout="random" or a callable.'
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(
            'similarity_readout="posnegflat" needs class labels in '
            f"[0, {n_classes}) to index the network's {n_classes} outputs; got "
            f"labels in [{low}, {high}]. Encode y as 0..C-1."
        )
    v = torch.full(  # float64, then the outputs' dtype: exact in a float64 network
        (labels.shape[0], n_classes),
        -1.0 / (n_classes - 1),
        dtype=torch.float64,
        device=labels.device,
    )
    v[torch.arange(labels.shape[0], device=labels.device), labels] = 1.0
    return v


def pair_gradient_cosines(
    grads: dict[str, torch.Tensor], first: torch.Tensor, second: torch.Tensor
) -> torch.Tensor:
    """Cosines between the per-sample gradients of pairs of samples.

    Parameters
    ----------
    grads : dict of str to Tensor of shape (s, ...)
        Per-sample gradients of s samples, one entry per parameter.
    first, second : Tensor of shape (m,)
        Indices into the s samples of the two members of each pair.

    Returns
    -------
    cos : Tensor of shape (m,)
        ``g_a . g_b / (|g_a| |g_b|)`` in ``[-1, 1]``; 0 when a gradient
        vanishes.
    """
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    if flat[0].shape[0] <= GRAM_MAX_SAMPLES:
        # one small Gram matrix per parameter: matrix products, fast on any device
        gram = sum(g @ g.T for g in flat)
        dot, sq = gram[first, second], gram.diagonal()
    else:
        # past a few hundred samples the s x s Gram costs more than pairwise sums
        dot = sum((g[first] * g[second]).sum(1) for g in flat)
        sq = sum((g * g).sum(1) for g in flat)
    # a vanishing gradient's dot products are 0: any norm standing for its own
    # gives 0, and 1 keeps the square root differentiable there
    norms = torch.sqrt(torch.where(sq > 0, sq, 1.0))
    cos = dot / (norms[first] * norms[second])
    # rounding puts equal gradients' at 1 + 2e-16 (arccos: NaN): the values
    # clamped to the cosine's range, the gradient the unclamped one's
    return cos - (cos - cos.clamp(-1.0, 1.0)).detach()


class ValidPairSimilarity(Callback):
    """Record the mean gradient cosine of the validation pairs of every epoch.

    For each validation batch, pairs are formed as in training (same rule,
    same read-out) and their gradient cosine is computed in eval mode, without
    affecting the parameters or torch's global random state (a private
    generator, re-seeded every epoch, draws same-class partners and random
    read-outs, so every epoch scores the same pairs; with
    ``similarity_pairs="given"``, validation data without attached pairs is
    skipped). The batch means go to
    ``history[-1, "batches", i, name]``, their pair-weighted mean to
    ``history[-1, name]``. Disable with ``callbacks__valid_similarity=None``.

    Parameters
    ----------
    name : str, default="valid_similarity_cosine"
        History key.
    seed : int, default=0
        Seed of the private generator.
    """

    def __init__(self, name: str = "valid_similarity_cosine", seed: int = 0) -> None:
        self.name = name
        self.seed = seed

    def on_epoch_begin(self, net: SimilarityRegularizedNet, **kwargs: Any) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an int; got {self.seed!r}.")
        self.generator_ = torch.Generator(device=net._compute_device())
        self.generator_.manual_seed(int(self.seed))
        self.total_, self.count_ = 0.0, 0

    def on_batch_end(
        self,
        net: SimilarityRegularizedNet,
        batch: tuple[Any, Any] | None = None,
        training: bool = False,
        y_pred: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        if training:
            return
        Xi, yi = unpack_data(batch)
        if net.similarity_pairs == "given" and not is_pair_data(Xi):
            return  # no pairs to score (the term may be off: weight 0)
        cos = net.batch_pair_cosines(
            Xi, yi, _n_outputs(y_pred), generator=self.generator_, graph=False
        )
        if cos is None:
            return
        net.history.record_batch(self.name, cos.mean().item())
        self.total_ += cos.sum().item()
        self.count_ += cos.shape[0]

    def on_epoch_end(self, net: SimilarityRegularizedNet, **kwargs: Any) -> None:
        if self.count_:
            net.history.record(self.name, self.total_ / self.count_)


class SimilarityRegularizedNet(NeuralNet):
    """A skorch net trained to make known-similar inputs similar to it.

    During training the loss of every batch (every ``similarity_every``-th
    batch) gets the term ``similarity_weight * s * mean cos``, the mean over
    the batch's pairs ``(a, b)`` of the cosine between the parameter gradients
    ``grad_theta phi(a)`` and ``grad_theta phi(b)`` of a scalar read-out
    ``phi`` of the output (Charpiat et al. 2019, section 4; see
    :ref:`theory-pairs`). Pairs are same-class samples, explicit pairs or
    input/augmentation pairs. The term is computed for all pairs of the batch
    in one vectorised ``torch.func`` call and differentiated by double
    back-propagation; the network is evaluated in eval mode for it (no
    dropout, BatchNorm running statistics), where per-sample gradients are
    defined.

    ``similarity_direction`` sets the sign ``s``. ``"similar"`` (``s = -1``,
    the default) subtracts the cosine from the loss: training raises the
    similarity of the pairs. ``"dissimilar"`` (``s = +1``) adds it: training
    pushes the pairs' gradients apart, which is the setting of the authors'
    published experiment. The user guide reports which direction sped up
    training, in that experiment on MNIST and in a reproduction on digits.

    The term is computed in eval mode and materialises the per-sample
    gradients of the batch: a step costs about 4x a plain one for a batch of
    one pair, more for large batches of large networks (see the user guide);
    ``similarity_every`` and ``similarity_params`` reduce it.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        As for :class:`skorch.NeuralNet`.
    *args
        Passed to skorch (``criterion`` for this base class).
    similarity_weight : float, default=1.0
        Non-negative weight ``lambda`` of the term. 0 switches it off: training
        is then identical to the plain skorch net under the same seed.
    similarity_direction : {"similar", "dissimilar"}, default="similar"
        Where the term moves the pairs' gradients: ``"similar"`` subtracts the
        mean cosine from the loss (raises it), ``"dissimilar"`` adds it (lowers
        it; the authors' published setting).
    similarity_pairs : {"same_class", "given"} or callable, default="same_class"
        Where pairs come from. ``"same_class"``: in every batch, each sample is
        paired with a partner drawn uniformly among the other samples of the
        batch with its label; a sample alone in its class within the batch gets
        no pair, and a batch without any two samples of one class contributes
        no term (and records nothing). ``"given"``: explicit pairs attached to
        ``X`` with :func:`with_pairs`. A callable ``augment(X_batch) ->
        X_partner`` (module-level, so that the net pickles): each input is
        paired with its augmentation, which must have the input's shape.
    similarity_readout : {"posnegflat", "random"} or callable, default="posnegflat"
        The scalar ``phi``. ``"posnegflat"``: ``sum_c v_c z_c`` with ``v_c = +1``
        for the pair's class and ``-1/(C-1)`` otherwise (the pair's class is the
        label of the row that carries the pair). ``"random"``: ``v ~ N(0, I)``
        drawn once per step. A callable ``readout(output, y) -> (B,)`` on a batch
        of outputs ``(B, d)`` and labels, evaluated per sample (``B = 1``).
        Outputs are logits, or the log of probabilities for a classifier
        trained with ``NLLLoss``.
    similarity_every : int, default=1
        Add the term every ``similarity_every`` training steps.
    similarity_params : str, list of str or None, default=None
        Parameters whose gradients are compared: None for all trainable ones,
        else names or name prefixes (``"fc2"``).
    **kwargs
        Any other skorch parameter.

    Attributes
    ----------
    similarity_steps_ : int
        Training steps taken since the net was initialised.
    history : skorch.History
        Besides skorch's entries: ``similarity_term`` and ``similarity_cosine``
        (the term and the mean pair cosine) per training batch and per epoch,
        and ``valid_similarity_cosine`` for the validation pairs, see
        :class:`ValidPairSimilarity`. The recorded ``train_loss`` includes the
        term.

    See Also
    --------
    with_pairs : attach explicit pairs to X.
    SimilarityRegularizedClassifier, SimilarityRegularizedRegressor

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, section 4
       ("enforcing similarity").

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sksim.regularized import SimilarityRegularizedNet
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(40, 4).astype("float32")
    >>> y = (X[:, 0] > 0).astype("int64")
    >>> _ = torch.manual_seed(0)
    >>> net = SimilarityRegularizedNet(
    ...     torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
    ...                         torch.nn.Linear(8, 2)),
    ...     criterion=torch.nn.CrossEntropyLoss, max_epochs=3, train_split=None,
    ...     verbose=0,
    ... ).fit(X, y)
    >>> cos = net.history[:, "similarity_cosine"]
    >>> len(cos), all(-1 <= c <= 1 for c in cos)
    (3, True)
    """

    def __init__(
        self,
        module: type[torch.nn.Module] | torch.nn.Module,
        *args: Any,
        similarity_weight: float = 1.0,
        similarity_direction: str = "similar",
        similarity_pairs: str | Callable = "same_class",
        similarity_readout: str | Callable = "posnegflat",
        similarity_every: int = 1,
        similarity_params: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(module, *args, **kwargs)
        self.similarity_weight = similarity_weight
        self.similarity_direction = similarity_direction
        self.similarity_pairs = similarity_pairs
        self.similarity_readout = similarity_readout
        self.similarity_every = similarity_every
        self.similarity_params = similarity_params

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        ours = [
            (name, PassthroughScoring(name, lower_is_better=None, on_train=True))
            for name in ("similarity_term", "similarity_cosine")
        ]
        ours.append(("valid_similarity", ValidPairSimilarity()))
        names = [name for name, _ in callbacks]
        at = names.index("print_log") if "print_log" in names else len(callbacks)
        return callbacks[:at] + ours + callbacks[at:]

    # -- hyper-parameters -----------------------------------------------------

    def _check_similarity_params(self):
        w = self.similarity_weight
        if not is_finite_number(w) or w < 0:
            raise ValueError(
                "similarity_weight must be a finite non-negative number (choose "
                f"the direction with similarity_direction); got {w!r}."
            )
        direction = self.similarity_direction
        if not isinstance(direction, str) or direction not in DIRECTIONS:
            raise ValueError(
                f"similarity_direction must be one of {tuple(DIRECTIONS)}: make "
                "the pairs' gradients similar or dissimilar; got "
                f"{direction!r}."
            )
        pairs = self.similarity_pairs
        if not callable(pairs) and pairs not in PAIR_MODES:
            raise ValueError(
                f"similarity_pairs must be one of {PAIR_MODES} or an augment "
                f"callable; got {pairs!r}."
            )
        readout = self.similarity_readout
        if not callable(readout) and readout not in READOUTS:
            raise ValueError(
                f"similarity_readout must be one of {READOUTS} or a callable; got "
                f"{readout!r}."
            )
        check_positive_int(self.similarity_every, "similarity_every")

    def _refuse_ignored_pairs(self, X) -> None:
        """Raise a ValueError if ``X`` carries pairs ``similarity_pairs`` ignores."""
        if self.similarity_pairs != "given" and is_pair_data(X):
            raise ValueError(
                f"X carries pairs (with_pairs), but similarity_pairs="
                f"{self.similarity_pairs!r} makes its own, and would ignore them: "
                'use similarity_pairs="given" for them, or X without pairs.'
            )

    def _compute_device(self) -> torch.device:
        """Where the module computes: ``device``, or the module's own for None."""
        return resolve_device(self.module_, self.device)

    def initialize(self) -> Self:
        """Initialise as skorch does, then check the similarity settings."""
        self._check_similarity_params()
        super().initialize()
        select_parameters(uncompiled(self.module_), self.similarity_params)
        self.similarity_steps_ = 0
        return self

    def fit(self, X: NetInput, y: ArrayLike | None = None, **fit_params: Any) -> Self:
        """Initialise and train as skorch does; see :meth:`partial_fit`.

        ``y`` may be left out for a dataset of ``(x, y)`` items (skorch's
        classifier and regressor would need ``fit(X, None)``).

        Parameters
        ----------
        X : array-like, tensor, dict, Dataset or the output of :func:`with_pairs`
        y : array-like of shape (n_samples,), default=None
        **fit_params : dict
            Passed to the module's forward, as skorch passes them.

        Returns
        -------
        self : object
        """
        return super().fit(X, y, **fit_params)

    def partial_fit(
        self,
        X: NetInput,
        y: ArrayLike | None = None,
        classes: ArrayLike | None = None,
        **fit_params: Any,
    ) -> Self:
        """Fit as skorch does; ``X`` may carry pairs (see :func:`with_pairs`).

        A dataset's items are ``x`` or ``(x, y)``; a ``y`` given replaces the
        items' labels (skorch alone would train on the items' own). NaN or
        infinite inputs are refused, naming their rows, as by
        :meth:`pair_similarity` (skorch would train on them: NaN weights).

        Parameters
        ----------
        X : array-like, tensor, dict, Dataset or the output of :func:`with_pairs`
        y : array-like of shape (n_samples,), default=None
        classes : array-like, default=None
            As skorch takes them (unused by skorch's nets).
        **fit_params : dict
            Passed to the module's forward, as skorch passes them.

        Returns
        -------
        self : object
        """
        self._check_similarity_params()
        if not isinstance(X, torch.utils.data.IterableDataset):  # a stream, as skorch
            check_net_input(X, pairs=True)  # checked only: skorch reads X as given
        if (
            self.similarity_pairs == "given"
            and self.similarity_weight != 0
            and not is_pair_data(X)
            and not isinstance(X, torch.utils.data.Dataset)
        ):
            raise ValueError(
                'similarity_pairs="given" needs pairs attached to X: fit on '
                "with_pairs(X, pairs)."
            )
        self._refuse_ignored_pairs(X)
        if y is None:
            y = self._item_labels(X)
        if y is not None:
            y = self._training_targets(y, X)
            X = labelled(X, y)
        with labels_within_outputs(self, y):
            return super().partial_fit(X, y, classes=classes, **fit_params)

    def _training_targets(self, y: ArrayLike, X: NetInput) -> ArrayLike:
        """``y`` as the loss takes it, for the checked inputs ``X``: as given."""
        return y

    def _item_labels(self, X) -> np.ndarray | None:
        """The labels of a dataset's ``(x, y)`` items, for a classifier or regressor.

        A classifier's stratified split and classes read them, a regressor's
        targets become a column (see :class:`SimilarityRegularizedRegressor`).
        None for other nets, other inputs, and labels that do not stack into
        one array (sequences a ``collate_fn`` pads): skorch reads those.
        """
        if not (is_classifier(self) or is_regressor(self)) or not is_dataset(X):
            return None
        if not is_map_style(X) or not len(X):  # as skorch reads them
            return None
        if is_pair_data(X) or not carries_labels(X):
            return None
        try:
            return dataset_targets(X)
        except ValueError:  # labels of several shapes
            return None

    # -- skorch hooks ---------------------------------------------------------

    def forward_iter(
        self, X: NetInput, training: bool = False, device: str | torch.device = "cpu"
    ) -> Iterator:
        """Yield the outputs of batches of ``X``, as skorch does, for ``x`` items too.

        skorch reads a dataset's items as ``(x, y)``; a dataset of ``x`` items
        is given placeholder labels, which inference does not read.
        ``predict``, ``predict_proba`` and ``forward`` pass through it.

        Parameters
        ----------
        X : array-like, tensor, dict or Dataset
            Inputs; a dataset's items are ``x`` or ``(x, y)``.
        training : bool, default=False
            Whether to run the module in training mode.
        device : str or torch.device, default="cpu"
            Where the outputs are moved.

        Returns
        -------
        outputs : iterator
            The module's output for each batch, as skorch's ``forward_iter``.
        """
        if is_dataset(X) and not is_pair_data(X) and not carries_labels(X):
            X = LabelledDataset(X, np.zeros(len(X)))  # labels unread in inference
        return super().forward_iter(X, training=training, device=device)

    def infer(self, x: Batch, **fit_params: Any) -> Any:
        """Forward pass of skorch, on the input without its attached pairs.

        Parameters
        ----------
        x : tensor or dict of tensors
            A batch of inputs, possibly carrying pairs (see :func:`with_pairs`).
        **fit_params : dict
            Passed to the module's forward.

        Returns
        -------
        y_infer
            The module's output.
        """
        return super().infer(strip_pairs(x), **fit_params)

    def run_single_epoch(
        self, iterator, training: bool, prefix: str, step_fn, **fit_params: Any
    ) -> None:
        """One epoch, as skorch runs it; the term's passes get ``fit_params`` too.

        skorch passes them to the module's ``forward`` in training and
        validation: the gradients compared are those of that network.

        Parameters
        ----------
        iterator : DataLoader or None
            The epoch's batches (None: none, as skorch takes it).
        training : bool
            Whether the batches are trained on.
        prefix : str
            The history's prefix of the batches' records (``"train"``, ``"valid"``).
        step_fn : callable
            :meth:`train_step` or skorch's ``validation_step``.
        **fit_params : dict
            Passed to the module's ``forward``, as skorch does.
        """
        self._forward_keywords = fit_params
        try:
            super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        finally:
            del self._forward_keywords

    def train_step(self, batch: Batch, **fit_params: Any) -> dict:
        """One optimiser step, as skorch takes it.

        The step has the term or not (every ``similarity_every``-th step), and
        its random draws (same-class partners, random read-outs, an augment's
        draws) are the same in every evaluation of its loss: an optimiser
        such as LBFGS evaluates it several times.

        Parameters
        ----------
        batch : tuple
            The batch ``(X, y)`` of skorch's training iterator.
        **fit_params : dict
            Passed to the module's ``forward``, as skorch does.

        Returns
        -------
        step : dict
            The loss and predictions, ``{"loss": ..., "y_pred": ...}``, as skorch's.
        """
        with self._similarity_step(fit_params):
            return super().train_step(batch, **fit_params)

    def train_step_single(self, batch: Batch, **fit_params: Any) -> dict:
        """One evaluation of the loss and its gradients, as skorch's.

        Called by :meth:`train_step`, it belongs to its step; called by a
        ``train_step`` of a subclass's own (skorch's gradient accumulation), it
        is a step of its own, with the term or not.

        Parameters
        ----------
        batch : tuple
            The batch ``(X, y)`` of skorch's training iterator.
        **fit_params : dict
            Passed to the module's ``forward``, as skorch does.

        Returns
        -------
        step : dict
            The loss and predictions, ``{"loss": ..., "y_pred": ...}``, as skorch's.
        """
        if hasattr(self, "_step_seed_"):
            return super().train_step_single(batch, **fit_params)
        with self._similarity_step(fit_params):
            return super().train_step_single(batch, **fit_params)

    @contextlib.contextmanager
    def _similarity_step(self, fit_params: dict) -> Iterator[None]:
        """A training step: its term's seed, and the ``fit_params`` its passes get.

        The seed is None in steps without the term.
        """
        step = getattr(self, "similarity_steps_", 0)
        on = self.similarity_weight != 0 and step % self.similarity_every == 0
        # drawn from torch's global generator, as the draws themselves were
        self._step_seed_ = int(torch.randint(2**62, (), device="cpu")) if on else None
        outer = getattr(self, "_forward_keywords", None)  # the epoch's
        self._forward_keywords = fit_params
        try:
            yield
        finally:
            del self._step_seed_
            if outer is None:
                del self._forward_keywords
            else:
                self._forward_keywords = outer
            self.similarity_steps_ = step + 1

    def get_loss(
        self,
        y_pred: torch.Tensor,
        y_true: torch.Tensor,
        X: Batch | None = None,
        training: bool = False,
    ) -> torch.Tensor:
        """The skorch loss, plus the similarity term in the training steps that have it.

        The term ``similarity_weight * s * mean cos`` (``s = -1`` for
        ``similarity_direction="similar"``, +1 for ``"dissimilar"``) and the mean
        cosine are recorded in the current batch of the history as
        ``similarity_term`` and ``similarity_cosine``.

        Parameters
        ----------
        y_pred : tensor
            The module's output for the batch.
        y_true : tensor
            The batch's targets.
        X : tensor or dict of tensors, default=None
            The batch's inputs, with their pairs; None adds no term.
        training : bool, default=False
            Whether the batch is trained on; only then is the term added.

        Returns
        -------
        loss : tensor
            A scalar.
        """
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        seed = getattr(self, "_step_seed_", None)
        if not training or seed is None or X is None:
            return loss
        generator = torch.Generator(device=self._compute_device())
        cos = self.batch_pair_cosines(
            X, y_true, _n_outputs(y_pred), generator.manual_seed(seed), graph=True
        )
        if cos is None:
            return loss
        mean = cos.mean()
        sign = DIRECTIONS[self.similarity_direction]
        term = float(self.similarity_weight) * sign * mean
        self.history.record_batch("similarity_term", term.item())
        self.history.record_batch("similarity_cosine", mean.item())
        return loss + term

    # -- the term -------------------------------------------------------------

    def _readout_output(self, out: torch.Tensor) -> torch.Tensor:
        """The output the read-out acts on, as ``(B, d)``."""
        return select_output(out)

    def _given_or_augmented_pairs(self, X, y, generator):
        """``(samples, labels, first, second)`` of one batch, or None if no pair.

        An augment callable draws from torch's global generators seeded from
        ``generator`` (when given) and restored after it.
        """
        inputs, partners, mask = split_pair_data(X)
        inputs = to_tensor(inputs, device=self.device)
        labels = None if y is None else to_tensor(y, device=self.device)
        mode = self.similarity_pairs
        if callable(mode):
            seed = None
            if generator is not None:
                seed = int(
                    torch.randint(
                        2**62, (), generator=generator, device=generator.device
                    )
                )
            with torch_seed(seed):
                augmented = mode(inputs)
            if isinstance(augmented, dict) != isinstance(inputs, dict) or any(
                not isinstance(part, torch.Tensor) for part in tree_leaves(augmented)
            ):
                raise ValueError(
                    "The augment callable (similarity_pairs) must return tensors as "
                    f"it is given them ({type(inputs).__name__}); it returned "
                    f"{type(augmented).__name__}."
                )
            if _shapes(augmented) != _shapes(inputs):
                raise ValueError(
                    "The augment callable (similarity_pairs) must return a batch "
                    f"of the input's shape {_shapes(inputs)}; it returned "
                    f"{_shapes(augmented)}."
                )
            return _pairs_of(inputs, augmented, labels)
        if mask is None:
            raise ValueError(
                'similarity_pairs="given" needs pairs attached to X: fit on '
                "with_pairs(X, pairs)."
            )
        rows, slots = torch.nonzero(to_tensor(mask, device=self.device), as_tuple=True)
        if rows.shape[0] == 0:
            return None
        partners = to_tensor(partners, device=self.device)
        return _pairs_of(
            _take(inputs, rows),
            tree_map(lambda t: t[rows, slots], partners),
            None if labels is None else labels[rows],
        )

    def _readout(self, labels, n_outputs, generator, vector=None):
        """``(readout, extra, extra_batched)`` for ``per_sample_gradients``.

        A random read-out is ``vector``, or else drawn from ``generator``.
        """
        transform = self._readout_output
        readout = self.similarity_readout
        if callable(readout):

            def phi(out: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
                z = transform(out)
                one = None if y is None else y.unsqueeze(0)
                value = readout(z, one)
                if not isinstance(value, torch.Tensor) or value.shape != z.shape[:1]:
                    got = (
                        f"shape {tuple(value.shape)}"
                        if isinstance(value, torch.Tensor)
                        else type(value).__name__
                    )
                    raise ValueError(
                        "similarity_readout must return one number per sample, a "
                        f"tensor of shape (B,) for outputs of shape (B, d); it "
                        f"returned {got} for outputs of shape {tuple(z.shape)}."
                    )
                return value.sum()

            return phi, labels, labels is not None

        def project(out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            z = transform(out)[0]
            return (z * v.to(z.dtype)).sum()

        if readout == "random":
            device = self._compute_device()
            v = vector
            if v is None:
                v = torch.randn(n_outputs, generator=generator, device=device)
            return project, v, False
        labels = check_labels(labels, 'similarity_readout="posnegflat"')
        return project, posnegflat_weights(labels, n_outputs), True

    def _cosines(self, pairs, n_outputs, generator, graph, vector=None):
        samples, labels, first, second = pairs
        # parameters named as the kernels name them: a compiled module's by
        # the module it wraps, whose computation they are
        module = uncompiled(self.module_)
        params = select_parameters(module, self.similarity_params)
        readout, extra, batched = self._readout(labels, n_outputs, generator, vector)
        with evaluation_mode(self.module_), torch.set_grad_enabled(graph):
            grads = per_sample_gradients(
                module,
                params,
                samples,
                readout,
                extra,
                batched,
                graph,
                getattr(self, "_forward_keywords", None),
            )
            return pair_gradient_cosines(grads, first, second)

    def batch_pair_cosines(
        self,
        X: Batch,
        y: torch.Tensor | None,
        n_outputs: int,
        generator: torch.Generator | None = None,
        graph: bool = False,
        readout_vector: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Gradient cosines of the pairs of one batch, formed as in training.

        Parameters
        ----------
        X : batch of inputs, possibly carrying pairs
        y : batch of labels or targets, or None
        n_outputs : int
            Outputs per sample (``d``).
        generator : torch.Generator, optional
            Random source for same-class partners and random read-outs; None
            uses torch's global generator.
        graph : bool, default=False
            Keep the graph to the parameters (double back-propagation).
        readout_vector : Tensor of shape (n_outputs,), default=None
            The random read-out (``similarity_readout="random"``); None draws
            one from ``generator``.

        Returns
        -------
        cos : Tensor of shape (m,) or None
            None when the batch holds no pair.
        """
        if self.similarity_pairs != "same_class":
            pairs = self._given_or_augmented_pairs(X, y, generator)
        else:
            inputs = to_tensor(strip_pairs(X), device=self.device)
            labels = check_labels(
                None if y is None else to_tensor(y, device=self.device),
                'similarity_pairs="same_class"',
            )
            anchor, partner = same_class_partners(labels, generator)
            pairs = _same_class_batch(inputs, labels, anchor, partner)
        if pairs is None:
            return None
        return self._cosines(pairs, n_outputs, generator, graph, readout_vector)

    def pair_similarity(
        self,
        X: NetInput,
        y: ArrayLike | None = None,
        random_state: int | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Gradient cosine of pairs of ``X`` under the current network.

        Pairs follow ``similarity_pairs``: same-class partners drawn over the
        whole of ``X`` (not per batch), the pairs attached by
        :func:`with_pairs`, or each input with its augmentation. Computed in
        eval mode, ``batch_size`` pairs at a time, without changing the network.
        Use it on validation data to see whether training made the pairs
        similar.

        Parameters
        ----------
        X : array-like, tensor, dict, Dataset, or the output of :func:`with_pairs`
            A dataset's items are ``x`` or ``(x, y)``, read a batch at a time.
        y : array-like of shape (n_samples,), default=None
            Labels (needed by ``"same_class"`` and ``"posnegflat"``); None
            takes those of a dataset's ``(x, y)`` items.
        random_state : int or None, default=None
            Seeds the partner draw and a random read-out.
        batch_size : int, default=64
            Pairs (or rows, for attached pairs and augmentations) per
            vectorised computation.

        Returns
        -------
        cos : ndarray of shape (n_pairs,)
            One cosine per pair, in ``[-1, 1]``: pairs attached by
            :func:`with_pairs` in the order given to it (of those the rows
            of ``X`` carry); same-class pairs one per sample whose class has
            another member, ordered by label, then by row.
        """
        self.check_is_fitted()
        self._check_similarity_params()
        self._refuse_ignored_pairs(X)
        X = check_net_input(X, pairs=True)
        n = n_samples(X)
        y = given_or_item_labels(X, y)
        if y is not None:
            y = np.asarray(y)
            if len(y) != n:
                raise ValueError(f"X has {n} samples but y has {len(y)}.")
        probe = strip_pairs(X)
        with evaluation_mode(self.module_), torch.no_grad():
            n_outputs = _n_outputs(self.infer(self._rows(probe, slice(0, 1))))
        check_positive_int(batch_size, "batch_size")
        size = batch_size
        parts = []
        with torch_seed(random_state, exclusive=True):
            vector = None  # a random read-out, one for every chunk of pairs
            if self.similarity_readout == "random":
                vector = torch.randn(n_outputs, device=self._compute_device())
            if self.similarity_pairs == "same_class":
                labels = check_labels(y, 'similarity_pairs="same_class"')
                anchor, partner = same_class_partners(labels)
                for i in range(0, anchor.shape[0], size):
                    a, b = anchor[i : i + size].numpy(), partner[i : i + size].numpy()
                    pairs = _pairs_of(
                        to_tensor(self._rows(probe, a), self.device),
                        to_tensor(self._rows(probe, b), self.device),
                        to_tensor(labels[a], self.device),
                    )
                    parts.append(self._cosines(pairs, n_outputs, None, False, vector))
            else:
                for i in range(0, n, size):
                    parts.append(
                        self.batch_pair_cosines(
                            self._rows(X, slice(i, i + size)),
                            None if y is None else y[i : i + size],
                            n_outputs,
                            readout_vector=vector,
                        )
                    )
        parts = [p.detach().cpu() for p in parts if p is not None]
        if not parts:
            return np.zeros(0)
        cos = torch.cat(parts).numpy().astype(np.float64)
        numbers = carried_pair_numbers(X)  # ranked: X may hold some rows only
        return cos if numbers is None else cos[np.argsort(numbers, kind="stable")]

    def _rows(self, X, index):
        """Rows ``index`` of ``X``, floats in the module's dtype.

        A dataset's as tensors read from its items.
        """
        dtype = module_float_dtype(self.module_)
        if not is_dataset(X):
            return float_inputs_as(take(X, index), dtype)
        return read_tensors(take(X, index), self.device, dtype)


def _pairs_of(first_inputs, second_inputs, labels):
    """Pairs ``(first_inputs[i], second_inputs[i])`` sharing ``labels[i]``."""
    m = n_samples(first_inputs)
    samples = _cat(first_inputs, second_inputs)
    if labels is not None:
        labels = torch.cat([labels, labels])
    first = torch.arange(m, device=_device_of(samples))
    return samples, labels, first, first + m


def _same_class_batch(inputs, labels, anchor, partner):
    """Pairs of a batch with each sample's gradient computed once."""
    if anchor.shape[0] == 0:
        return None
    position = torch.full_like(labels, -1)
    position[anchor] = torch.arange(anchor.shape[0], device=labels.device)
    return _take(inputs, anchor), labels[anchor], position[anchor], position[partner]


def _device_of(samples) -> torch.device:
    """The device of a batch of samples (tensor or dict of tensors)."""
    first = next(iter(samples.values())) if isinstance(samples, dict) else samples
    return first.device


class SimilarityRegularizedClassifier(SimilarityRegularizedNet, NeuralNetClassifier):
    """A skorch classifier trained to make known-similar inputs similar to it.

    :class:`SimilarityRegularizedNet` on top of
    :class:`skorch.NeuralNetClassifier`: skorch's defaults hold
    (``criterion=NLLLoss`` on a module that outputs probabilities, stratified
    validation split, ``valid_acc``), and the read-out acts on the
    log-probabilities when the criterion is ``NLLLoss`` (equal to logits for
    ``"posnegflat"``), on the raw outputs (logits) otherwise. See
    :class:`SimilarityRegularizedNet` for the similarity parameters and the
    reference to the paper.

    Parameters
    ----------
    module : torch.nn.Module class or instance
    *args, **kwargs
        As for :class:`SimilarityRegularizedNet` and skorch's classifier.

    Examples
    --------
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from sksim.regularized import SimilarityRegularizedClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = (X[:200] / 16).astype("float32"), y[:200]
    >>> _ = torch.manual_seed(0)
    >>> clf = SimilarityRegularizedClassifier(
    ...     torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
    ...                         torch.nn.Linear(32, 10), torch.nn.Softmax(dim=-1)),
    ...     optimizer=torch.optim.Adam, lr=1e-2, max_epochs=5, verbose=0,
    ... ).fit(X, y)
    >>> bool(clf.score(X, y) > 0.5), "valid_similarity_cosine" in clf.history[-1]
    (True, True)
    """

    def _readout_output(self, out: torch.Tensor) -> torch.Tensor:
        out = super()._readout_output(out)
        if isinstance(self.criterion_, torch.nn.NLLLoss):  # log p, exact down to
            return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))  # underflow
        return out


class SimilarityRegularizedRegressor(SimilarityRegularizedNet, NeuralNetRegressor):
    """A skorch regressor trained to make known-similar inputs similar to it.

    :class:`SimilarityRegularizedNet` on top of
    :class:`skorch.NeuralNetRegressor`. Targets are not classes, so the defaults
    differ: pairs are explicit (``similarity_pairs="given"``, fit on
    :func:`with_pairs`) or given by an augment callable, and the read-out is
    ``"random"`` (for one output it is the output itself, up to a sign that the
    cosine ignores). One target per sample, ``(n,)`` or ``(n, 1)``, is trained
    on as the network's outputs are, a column or flat (skorch's loss would
    otherwise compare every output with every target).

    Parameters
    ----------
    module : torch.nn.Module class or instance
    *args
        As for :class:`SimilarityRegularizedNet` and skorch's regressor.
    similarity_pairs : {"given"} or callable, default="given"
    similarity_readout : {"random"} or callable, default="random"
        The regressor's defaults; :class:`SimilarityRegularizedNet` describes
        these and the other similarity parameters, and cites the paper.
    **kwargs
        As for :class:`SimilarityRegularizedNet` and skorch's regressor.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sksim.regularized import SimilarityRegularizedRegressor, with_pairs
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(30, 3).astype("float32")
    >>> y = X[:, :1] ** 2
    >>> _ = torch.manual_seed(0)
    >>> reg = SimilarityRegularizedRegressor(
    ...     torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
    ...                         torch.nn.Linear(8, 1)),
    ...     max_epochs=2, train_split=None, verbose=0,
    ... ).fit(with_pairs(X, [[0, 1], [2, 3]]), y)
    >>> reg.pair_similarity(with_pairs(X, [[0, 1]])).shape
    (1,)
    """

    def __init__(
        self,
        module: type[torch.nn.Module] | torch.nn.Module,
        *args: Any,
        similarity_pairs: str | Callable = "given",
        similarity_readout: str | Callable = "random",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            module,
            *args,
            similarity_pairs=similarity_pairs,
            similarity_readout=similarity_readout,
            **kwargs,
        )

    def _training_targets(self, y: ArrayLike, X: NetInput) -> np.ndarray:
        """One target per sample as the outputs are: see :func:`training_targets`.

        The outputs are read for the first inputs of ``X`` (not of a stream).
        """
        stream = isinstance(X, torch.utils.data.IterableDataset)
        return training_targets(self, y, None if stream else X)
