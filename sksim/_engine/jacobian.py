"""Per-sample Jacobians of the network output with respect to its parameters.

``J(x) = d f(x) / d theta`` of shape ``(d, p)`` per sample, computed with
``torch.func`` (``functional_call`` + ``vmap`` of ``jacrev``) in batches, in
eval mode, on the module's device or a copy of it on another (see the theory page).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.func import jacrev, vmap
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.checkpoint import CheckpointFunction
from tqdm.auto import tqdm

from .budget import readable_bytes, rows_that_fit
from .capture import (
    LayerCapture,
    RowsMixed,
    idle_pieces,
    join_name,
    leaf_uses,
    parameter_pieces,
    plan_layers,
)
from .context import (
    check_device,
    check_not_inference_mode,
    evaluation_mode,
    functional_output,
    math_attention,
    on_device,
    uncompiled,
)
from .finite import NonFiniteNetworkError, check_finite_rows
from .flags import FlaggedRows
from .inputs import (
    batches,
    explained_failures,
    module_float_dtype,
    n_samples,
    sample_shape_of,
    take,
    to_tensor,
)
from .pieces import (
    DensePiece,
    PieceBudget,
    PiecesTooLarge,
    gram_of,
    in_common_dtype,
    map_pieces,
)
from .selection import select_output, select_parameters

DEFAULT_MAX_MEMORY = 2 * 2**30
# The largest batch chosen by batch_size=None: past it, batches gain little speed.
AUTO_BATCH_LIMIT = 1024
# Samples at the head of each pass whose rows are checked whatever the graph
ROW_PROBE = 8
# float64 (d, d) arrays a sample's Gram takes while its powers are made: the
# Gram, its eigenvectors, LAPACK's copy, the power and a temporary.
GRAM_COPIES = 5
# Layers through which torch.func's vmap of jacrev gives wrong Jacobians (PReLU:
# when a batch holds as many samples as the network has outputs, torch 2.13).
UNVECTORISED = (torch.nn.PReLU,)
# Rows among which the probe pass's second sample is the most unlike the first
PROBE_CANDIDATES = 16


class JacobianEngine:
    """Per-sample parameter Jacobians of a module's selected outputs.

    Parameters
    ----------
    module : torch.nn.Module
        The trained network.
    output : "logits", int or callable, default="logits"
        Which outputs form the rows of the Jacobian, see ``select_output``.
    params : str, list of str or None, default=None
        Which parameters form its columns, see ``select_parameters``.
    batch_size : int or None, default=None
        Samples per vectorised Jacobian computation. None measures what one
        sample of this network takes (activations, and its pieces as their
        budget counts them: back-propagated signals, the per-sample gradients
        or patches that some layers make, fallback Jacobians, and the float64
        arrays of its ``(d, d)`` Gram's powers) on a first pass over two
        samples, and takes as many samples as fit in a third of
        ``max_memory``, at most ``AUTO_BATCH_LIMIT``.
    device : str, torch.device or None, default=None
        Where to compute; None keeps the module's device. Elsewhere the engine
        computes with a copy of the module, which itself stays where it is.
    verbose : int, default=0
        Show a progress bar over batches when positive.
    max_memory : int or None, default=2 GiB
        Bytes that a prepared reference set may keep (see ``gram``). The
        pieces of one batch may take a third of it: a larger batch is split
        into parts that fit. None sets no limit.

    Every batch's outputs and gradients are checked: NaN or infinity raises
    a :class:`~.finite.NonFiniteNetworkError` naming the first rows concerned.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        output: str | int | Callable = "logits",
        params: str | Sequence[str] | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        verbose: int = 0,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
    ):
        module = uncompiled(module)
        own_device = next(iter(_with_values(module, params).values())).device
        self.device = check_device(own_device if device is None else device)
        self.network = module  # the caller's, which self.module may copy
        self.module = on_device(module, self.device)
        self.output = output
        self.parameters = select_parameters(self.module, params)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._automatic_batches = batch_size is None
        self.verbose = verbose
        self.max_memory = float("inf") if max_memory is None else int(max_memory)
        self.dtype = module_float_dtype(self.module)
        self.n_params = sum(p.numel() for p in self.parameters.values())
        self._copy_activations = False
        self._part_size = self.batch_size
        self._n_outputs = None
        self._plan = None
        self._unbatched = set()  # layers whose rows turned out not to be samples
        self._mixed_by = None  # the layer that mixed a batch's samples, if any
        self._recheck = False  # check the next part's rows whatever the graph

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_plan"] = None  # holds torch.func closures; made again on demand
        return state

    def _call(self, batch, start: int | None = 0) -> torch.Tensor:
        """Selected outputs ``(B, d)`` of a batch (a dict goes in as keywords).

        They are checked to be finite unless ``start``, the number of the
        batch's first row in errors, is None.
        """
        outputs = select_output(self._output(batch), self.output, n_samples(batch))
        if start is not None:
            check_finite_rows(outputs, start, "outputs")
        return outputs

    def _output(self, batch):
        """The network's own output for a batch (see :func:`network_output`).

        The network gets a copy of the batch, as in :meth:`_forward`.
        """
        return network_output(self.module, _copied(batch), self.dtype)

    def _forward(self, params, batch) -> torch.Tensor:
        """Selected outputs ``(B, d)`` of a batch with the given parameters.

        The network gets a copy of the batch: one that works in place on its
        inputs leaves them as the other passes over the batch read them.
        """
        with _input_dtype_errors(batch, self.dtype):
            out = functional_output(self.module, params, _copied(batch))
        return select_output(out, self.output, n_samples(batch))

    def n_outputs(self, X) -> int:
        """The number d of Jacobian rows per sample."""
        if self._n_outputs is None:
            self._n_outputs = self.check_inputs(X)
        return self._n_outputs

    def check_inputs(self, X) -> int:
        """The number of outputs the network gives for the first sample of ``X``.

        A ValueError names the sample's shape if the network fails on it,
        with advice where torch's message is about shapes or dtypes; running
        out of memory is raised as it is.
        """
        first = to_tensor(take(X, slice(0, 1)), self.device, self.dtype)
        with evaluation_mode(self.module), torch.no_grad():
            with explained_failures(lambda: sample_shape_of(first)):
                out = self._output(first)
            return select_output(out, self.output, 1).shape[1]

    def outputs(self, X) -> torch.Tensor:
        """Selected outputs ``(n, d)`` of every sample, on the CPU."""
        _check_no_autocast(self.device)
        self._layer_plan(X)  # sets an automatic batch size
        parts = []
        with evaluation_mode(self.module), torch.no_grad():
            for rows, b in batches(X, self.batch_size, self.device, self.dtype):
                with _rows_named(rows.start, rows.stop - rows.start):
                    parts.append(self._call(b, rows.start).cpu())
        return torch.cat(parts)

    def _batches(self, X, progress: bool, size: int | None = None):
        _check_no_autocast(self.device)
        size = self.batch_size if size is None else size
        blocks = batches(X, size, self.device, self.dtype)
        total = -(-n_samples(X) // size)
        show = progress and self.verbose > 0
        return tqdm(blocks, total=total, disable=not show)

    def _per_sample_jacobian(self, names: list[str]):
        """A function ``batch -> blocks``: ``J`` of each of ``names``, ``(b, d, p_n)``.

        Vectorised with ``torch.func`` (``vmap`` of ``jacrev``); a network
        that ``vmap`` cannot run (recurrent layers such as ``nn.GRU`` write
        into tensors they create), or runs wrongly (:data:`UNVECTORISED`, or
        a batch whose Jacobians :meth:`_agrees_with_autograd` refutes: the
        batching rules of ``torch.cdist`` and of a functional ``prelu`` are
        wrong, the latter for some batch sizes), is differentiated one sample
        and one output at a time instead, from the batch that fails on. The
        first batch of each shape (its size, a sequence's length) is checked.
        The blocks are those computed, not joined: joining them would hold
        ``J`` twice.
        """
        params = {n: self.parameters[n].detach() for n in names}
        # the other parameters go in as constants, so that torch.func holds
        # them all: a forward that moves a layer with .to() (transformers'
        # Switch router) then fails with an error, not a crash (torch 2.13)
        constants = {
            n: p.detach() for n, p in self.module.named_parameters() if n not in params
        }
        layers = self.module.modules()
        wrong = any(isinstance(layer, UNVECTORISED) for layer in layers)

        def one_sample(p, c, x):
            x = tree_map(lambda t: t.unsqueeze(0), x)
            return self._forward({**p, **c}, x)[0]

        per_sample = vmap(jacrev(one_sample), in_dims=(None, None, 0))
        vectorised = False if wrong else None  # None: unknown until a batch ran
        checked = set()  # the shapes of the batches checked

        def jacobian(batch) -> list[torch.Tensor]:
            nonlocal vectorised
            if parametrize._cache_enabled:
                raise ValueError(
                    "sksim cannot run inside torch.nn.utils.parametrize.cached(): "
                    "the cached weights hide their parameters' gradients. Call it "
                    "outside that block."
                )
            if vectorised is not False:
                try:
                    # torch.func differentiates despite the caller's no_grad,
                    # which keeps the parameters not selected out of the graph.
                    # attention's fused CPU kernels have no vmap rule: the
                    # math kernel computes the same, batched
                    with math_attention(), warnings.catch_warnings():
                        # operations without a vmap rule run in a loop, which
                        # torch warns of per call: a cost the user cannot cut
                        warnings.filterwarnings(
                            "ignore", "There is a performance drop", UserWarning
                        )
                        jac = per_sample(params, constants, batch)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError:  # a real error recurs in the looped pass
                    vectorised = False
                else:
                    b = next(iter(jac.values())).shape[0]
                    blocks = [jac[n].reshape(b, jac[n].shape[1], -1) for n in names]
                    shapes = tuple(tuple(t.shape) for t in tree_leaves(batch))
                    if shapes not in checked:
                        vectorised = self._agrees_with_autograd(names, batch, blocks)
                        checked.add(shapes)
                    if vectorised is not False:
                        return blocks
            return self._looped_jacobian(names, batch)

        return jacobian

    def _agrees_with_autograd(self, names: list[str], batch, blocks) -> bool:
        """Whether ``blocks`` give autograd's ``J^T v`` for the batch's end rows.

        One backward pass per checked sample, of its outputs along a random
        direction ``v``, against the same product of the vectorised blocks.
        """
        leaves = {n: self.parameters[n].detach().requires_grad_() for n in names}
        generator = torch.Generator().manual_seed(0)
        for i in sorted({0, n_samples(batch) - 1}):
            with torch.enable_grad():
                outputs = self._forward(leaves, take(batch, slice(i, i + 1)))[0]
                v = torch.randn(
                    len(outputs), generator=generator, device="cpu", dtype=torch.float64
                )
                v = v.to(outputs.device, outputs.dtype)
                grads = torch.autograd.grad(
                    outputs @ v, list(leaves.values()), allow_unused=True
                )
            expected = torch.cat(
                [
                    torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                    if g is None
                    else _dense(g).flatten()
                    for g, p in zip(grads, leaves.values(), strict=True)
                ]
            ).double()
            found = torch.cat([v.to(block.dtype) @ block[i] for block in blocks])
            found = found.double()
            error = torch.linalg.vector_norm(found - expected)
            scale = torch.linalg.vector_norm(found) + torch.linalg.vector_norm(expected)
            # half-precision networks' passes round at a few times their epsilon
            resolution = max(1e-3, 4 * torch.finfo(outputs.dtype).eps)
            if error > resolution * scale:
                return False
        return True

    def _looped_jacobian(self, names: list[str], batch) -> list[torch.Tensor]:
        """The blocks ``(b, d, p_n)`` by one backward pass per sample and output.

        The parameters are differentiated as leaves of their own: hooks the
        user registered on them (gradient scaling, masks) do not run.
        """
        leaves = {n: self.parameters[n].detach().requires_grad_() for n in names}
        params = list(leaves.values())
        b, blocks = n_samples(batch), None
        with torch.enable_grad():
            for i in range(b):
                outputs = self._forward(leaves, take(batch, slice(i, i + 1)))[0]
                if blocks is None:
                    blocks = [p.new_empty(b, len(outputs), p.numel()) for p in params]
                for c in range(len(outputs)):
                    grads = torch.autograd.grad(
                        outputs[c],
                        params,
                        retain_graph=c < len(outputs) - 1,
                        allow_unused=True,
                    )
                    for block, g in zip(blocks, grads, strict=True):
                        block[i, c] = 0 if g is None else _dense(g).flatten()
        return blocks

    def jacobians(
        self, X, progress: bool = True
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, J)`` with ``J`` of shape ``(b, d, p)`` on the device.

        The batch's outputs are checked to be finite first (a NaN added to an
        output leaves its gradients finite).
        """
        self._layer_plan(X)  # sets an automatic batch size
        size = self.batch_size
        if self._automatic_batches:  # J materialised, by vmap and whoever reads it
            element = next(iter(self.parameters.values())).element_size()
            d = self.n_outputs(X)
            per_sample = 3 * d * self.n_params * element + GRAM_COPIES * 8 * d * d
            size = rows_that_fit(self.max_memory / 3, per_sample, size)
        jacobian = self._per_sample_jacobian(list(self.parameters))
        for rows, batch in self._batches(X, progress, size):
            with evaluation_mode(self.module), torch.no_grad():
                self._call(batch, rows.start)
                J = torch.cat(jacobian(batch), dim=2)
            check_finite_rows(J, rows.start, "gradients")
            yield rows, J

    def pieces(self, X, progress: bool = True) -> Iterator[tuple[slice, list]]:
        """Yield ``(rows, pieces)``: the batch's Jacobians, layer by layer.

        Supported layers come factorised or materialised from one batched
        forward and ``d`` backward passes (see ``capture``); any other selected
        parameter comes from per-sample ``torch.func`` Jacobians. A batch whose
        pieces would take more than a third of ``max_memory`` comes in parts
        half as large, and so on, down to single samples; from a batch whose
        samples the network moves between rows (:class:`RowsMixed`; see
        :meth:`_check_rows`), single samples, with a warning. Each list of pieces
        is emptied when the next batch is asked for, so that one batch at a
        time is held: copy what must outlive the iteration. The network is in
        eval mode for each batch's passes, not in between (see
        :func:`~.context.evaluation_mode`): an iteration left unfinished (an
        error or Ctrl-C in the loop that reads it, whose traceback keeps it)
        leaves the network as it was.
        """
        with evaluation_mode(self.module):
            plan = self._layer_plan(X)
            if plan.layers and self._part_size > 1:
                self._check_rows(plan, X)
        for rows, batch in self._batches(X, progress):
            start, n = 0, rows.stop - rows.start
            while start < n:
                part = slice(start, min(start + self._part_size, n))
                try:
                    with evaluation_mode(self.module):
                        pieces = self._batch_pieces(
                            plan,
                            take(batch, part),
                            rows.start + start,
                            self._recheck,
                        )
                except PiecesTooLarge as large:
                    self._split(part.stop - part.start, large.args[0])
                    continue
                except RowsMixed as mixed:
                    if part.stop - part.start > 1:
                        self._single_samples(mixed.args[0], rows.start + start)
                    else:  # a single sample's rows are not one: the layer falls back
                        self._unbatched.add(mixed.args[0])
                        self._plan = None
                        plan = self._layer_plan(X)
                        if self._mixed_by == mixed.args[0]:  # the batches' cause
                            # another layer may mix them unseen: the next part's
                            # rows are checked whatever the graph
                            self._part_size, self._mixed_by = self.batch_size, None
                            self._recheck = True
                    continue
                if part.stop - part.start > 1:  # rows checked, if they were to be
                    self._recheck = False
                yield slice(rows.start + part.start, rows.start + part.stop), pieces
                pieces.clear()
                start = part.stop

    def _check_rows(self, plan: _Plan, X) -> None:
        """Single samples from here on if the network moves ``X``'s first ones.

        The first samples, as many as a batch holds up to :data:`ROW_PROBE`,
        are captured and their rows checked (:class:`RowsMixed`) whatever the
        graph, which the batches are only where it has operations that can
        move rows: a product with a permutation matrix does not show as one.
        """
        n = min(ROW_PROBE, self._part_size, n_samples(X))
        if n < 2:
            return
        batch = to_tensor(take(X, np.arange(n)), self.device, self.dtype)
        try:
            self._captured_pieces(plan, batch, PieceBudget(math.inf), 0, True)
        except RowsMixed as mixed:
            self._single_samples(mixed.args[0], 0)

    def _single_samples(self, layer: str, start: int) -> None:
        """Single samples from here on: ``layer`` mixed those of a batch."""
        _warn_mixed(layer, start)
        self._part_size, self._mixed_by = 1, layer

    def mapped_pieces(
        self, X, power: float | None, rtol: float, progress: bool = True
    ) -> Iterator[tuple[slice, list, np.ndarray]]:
        """Yield ``(rows, pieces, G)``: pieces of ``G^power J`` and ``G = J J^T``.

        ``power=-0.5`` whitens (``A = (J J^T)^{-1/2} J``, the cosine kernel's
        features), ``-1`` gives the left side of the influence kernel, None
        leaves ``J`` as it is. ``G`` is float64 on the CPU. The pieces are
        emptied when the next batch is asked for, as those of :meth:`pieces`.
        The rows of dead or near-singular Grams are reported once the pass
        is over.
        """
        found = FlaggedRows()
        for rows, pieces in self.pieces(X, progress):
            G = gram_of(pieces).double().cpu().numpy()
            yield rows, map_pieces(pieces, G, power, rtol, found, rows), G
        found.report()

    def _layer_plan(self, X) -> _Plan:
        """The layers handled, and the fallback's parameters, made once.

        The plan is checked on two samples of ``X`` (the first one twice if
        there is only one): a layer whose recorded tensors do not hold one
        sample per row, whose parameters the network also uses outside its
        calls, whose pieces differ from autograd's gradients, or whose
        expansion to the batch would change the outputs, goes to the
        fallback. The layers that ran are those every batch must run. The
        same pass measures what a sample takes, for an automatic batch size.
        """
        if self._plan is None:
            with evaluation_mode(self.module):
                layers, fallback = plan_layers(self.module, self.parameters)
                supported = dict(layers)
                mixing, per_sample, ran = (
                    self._probe(layers, X, bool(fallback))
                    if layers
                    else (set(), 0, set())
                )
            mixing |= self._unbatched & set(layers)
            for name in mixing:
                fallback += [join_name(name, local) for local in layers.pop(name)[1]]
            ran -= mixing
            if not ran and not fallback:
                raise ValueError(
                    f"The network's outputs do not depend on the parameters "
                    f"selected ({list(self.parameters)[:5]}): params= must select "
                    "parameters that the forward pass uses."
                )
            _warn_idle([name for name in layers if name not in ran])
            fallback = [n for n in self.parameters if n in fallback]
            jacobian = self._per_sample_jacobian(fallback) if fallback else None
            n_fallback = sum(self.parameters[n].numel() for n in fallback)
            size = next(iter(self.parameters.values())).element_size()
            d = self.n_outputs(X)
            per_sample += d * n_fallback * size + GRAM_COPIES * 8 * d * d
            if self.batch_size is None:
                self.batch_size = self._part_size = rows_that_fit(
                    self.max_memory / 3, per_sample, AUTO_BATCH_LIMIT
                )
            self._plan = _Plan(
                supported, layers, ran, fallback, jacobian, n_fallback, per_sample
            )
        return self._plan

    def _probe(self, layers: dict, X, whole: bool) -> tuple[set[str], int, set[str]]:
        """Layers for the fallback, the bytes of a sample's batch, layers that ran.

        All come from a pass over two samples; the bytes count the recorded
        activations and what the pieces' budget counts of the two samples'
        pieces (back-propagated signals, per-sample gradients, patches). When
        some layer mixes samples, its pieces cannot be made: the signals stand
        for the pieces. ``whole``: parameters of the fallback are
        differentiated too, through the whole pass. Raises a ValueError if a
        sample's outputs depend on the other sample: that check takes the
        first and :meth:`_unlike_first`, so that a network reading one
        sample's field (a length, a mask) for the whole batch shows it.
        """
        rows = np.array([0, min(1, n_samples(X) - 1)])
        probe = to_tensor(take(X, rows), self.device, self.dtype)
        unlike = self._unlike_first(X)
        pair = probe
        if unlike != rows[1]:
            pair = to_tensor(take(X, np.array([0, unlike])), self.device, self.dtype)
        try:
            return self._probe_pass(layers, probe, 2, whole, pair)
        except OneRowCalls:
            # layers called on single samples of the batch (a loop over the
            # samples, experts routed to): unexpanded, their rows are not the
            # batch's, and they go to the fallback
            return self._probe_pass(layers, probe, 1, whole, pair)

    def _unlike_first(self, X) -> int:
        """The row most unlike row 0 among the first :data:`PROBE_CANDIDATES` of ``X``.

        The first of those whose inputs differ from row 0's in the most values
        (row 1 when none differs; 0 when ``X`` has one row): two rows alike in
        what a network reads across its batch (equal lengths, identical
        inputs) hide that it does. Read one row at a time, as a dataset's
        batches are.
        """

        def values(row: int) -> list[torch.Tensor]:
            leaves = tree_leaves(to_tensor(take(X, [row]), self.device, self.dtype))
            return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]

        first, best, most = values(0), min(1, n_samples(X) - 1), 0
        for row in range(1, min(n_samples(X), PROBE_CANDIDATES)):
            differing = sum(
                int((a != b).sum()) if a.shape == b.shape else a.numel() + b.numel()
                for a, b in zip(first, values(row), strict=True)
            )
            if differing > most:
                best, most = row, differing
        return best

    def _probe_pass(self, layers: dict, probe, expand: int, whole: bool, pair) -> tuple:
        """:meth:`_probe`'s pass, one-row calls expanded to ``expand`` rows.

        ``pair``, two rows, are checked to give their outputs alone as together.
        """
        saved = SavedTensors([layer for layer, _ in layers.values()])
        with torch.enable_grad(), LayerCapture(layers, True, expand) as capture:
            # finiteness is checked in the real pass, where rows are numbered
            with saved:
                outputs = _attached(
                    _explained_call(capture, lambda: self._call(probe, start=None))
                )
            capture.recording = False
            _check_not_hidden(capture.without_gradient - set(capture.calls), outputs)
            rows_mixed = capture.mixing_layers(outputs)
            mixing = rows_mixed | capture.tied_layers(outputs) | capture.nested
            recorded = [call for calls in capture.calls.values() for call in calls]
            if rows_mixed:  # no pieces: their back-propagated signals stand for them
                d = outputs.shape[1]
                pieces = sum(d * z.numel() * z.element_size() for _, z in recorded)
            else:
                budget = PieceBudget(float("inf"))
                mixing |= capture.unfaithful_layers(outputs, budget)
                pieces = budget.taken
        _check_per_sample(self._call, pair)
        if capture.expanded - mixing:
            with torch.no_grad():
                plain = self._call(probe, start=None)
            if not torch.allclose(plain, outputs.detach()):
                mixing |= capture.expanded
        activations = sum(
            (h.numel() + z.numel()) * z.element_size() for h, z in recorded
        )
        known = [t for call in recorded for t in call]
        known += [*self.module.parameters(), *self.module.buffers()]
        signals = [z for _, z in recorded]
        d = outputs.shape[1]
        # layers moved to the fallback are differentiated through the whole pass
        whole = whole or bool(mixing)
        intermediates = saved.bytes_besides(known, signals, d, from_start=whole)
        return mixing, (activations + pieces + intermediates) // 2, set(capture.calls)

    def _split(self, size: int, taken: int) -> None:
        """Parts half as large; a MemoryError if ``size`` was one sample.

        ``taken``: the bytes the part's pieces took when they passed the budget
        (those after it uncounted); the error asks for three times what a
        sample took on the probe, if more.
        """
        if size == 1:
            needed = 3 * max(taken, self._plan.sample_bytes)
            raise MemoryError(
                "The gradient pieces of a single sample take more than a third of "
                f"max_memory ({readable_bytes(taken)} at least, against "
                f"{readable_bytes(self.max_memory / 3)} of {self.max_memory} bytes): "
                f"raise max_memory (to {needed} bytes, three times what a sample "
                "took on the first ones), or select fewer parameters (params=) or "
                "outputs (output=)."
            )
        self._part_size = (size + 1) // 2

    def _batch_pieces(
        self, plan: _Plan, batch, start: int, check_rows: bool = False
    ) -> list:
        """One batch's pieces, checked finite; ``PiecesTooLarge`` past the budget.

        No piece outlives the call but in the list returned, so that emptying
        the list frees the batch. ``check_rows``: see :meth:`_captured_pieces`.
        """
        budget = PieceBudget(self.max_memory / 3)
        with _rows_named(start, n_samples(batch)):
            captured = (
                self._captured_pieces(plan, batch, budget, start, check_rows)
                if plan.layers
                else {}
            )
            blocks, b, d = {}, n_samples(batch), self.n_outputs(batch)
            if plan.jacobian is not None:
                first = next(iter(self.parameters.values()))
                budget.take((b, d, plan.n_fallback), first)
                with torch.no_grad():
                    blocks = dict(zip(plan.fallback, plan.jacobian(batch), strict=True))
            pieces = plan.pieces(captured, blocks, b, d)
        for piece in pieces:
            check_finite_rows(piece.signal, start, "gradients")
        return in_common_dtype(pieces)

    def _captured_pieces(
        self,
        plan: _Plan,
        batch,
        budget: PieceBudget,
        start: int,
        check_rows: bool = False,
    ) -> dict:
        """Pieces of the handled layers from one forward and backward pass, by layer.

        Recorded activations are not copied unless an in-place operation of
        the network changes them; then this batch is captured again, and the
        following ones at once, with copies.
        """
        copy = self._copy_activations
        b = n_samples(batch)
        with torch.enable_grad(), LayerCapture(plan.layers, copy, b) as capture:
            try:
                outputs = _attached(
                    _explained_call(capture, lambda: self._call(batch, start))
                )
            except OneRowCalls as calls:  # routed samples: one at a time
                raise RowsMixed(calls.args[0][0]) from calls.args[1]
            capture.recording = False
            _check_same_layers(set(capture.calls), plan.ran, start, b)
            if capture.intact():
                return capture.layer_pieces(outputs, budget, check_rows)
        self._copy_activations = True
        return self._captured_pieces(plan, batch, budget, start, check_rows)

    def jacobian(self, X) -> torch.Tensor:
        """All per-sample Jacobians ``(n, d, p)`` at once (memory ``n d p``)."""
        return torch.cat([J for _, J in self.jacobians(X)])


@dataclasses.dataclass
class _Plan:
    """How a batch's pieces are made: captured layers and ``torch.func``.

    Attributes
    ----------
    supported : dict
        Every layer that captures handle, name to ``(layer, own parameters)``,
        in the network's order.
    layers : dict
        Those captured: the others mix samples, or share their parameters
        outside their calls.
    ran : set of str
        The captured layers that ran on the probe, which every batch must run.
    fallback : list of str
        The parameters that ``jacobian`` differentiates, those of the
        supported layers not captured included.
    jacobian : callable or None
        ``batch -> blocks``, a gradient ``(b, d, p_n)`` per ``fallback`` name.
    n_fallback : int
        The number of parameters in ``fallback``.
    sample_bytes : int
        What a sample takes, measured on the probe (its activations, pieces
        and the fallback's gradients).
    """

    supported: dict
    layers: dict
    ran: set[str]
    fallback: list[str]
    jacobian: Callable | None
    n_fallback: int
    sample_bytes: int

    def pieces(self, captured: dict, blocks: dict, b: int, d: int) -> list:
        """A batch's pieces from the ``captured`` layers' and the fallback's ``blocks``.

        Every supported layer's pieces take its own layout and place, captured
        or not, zero if it did not run (``b`` samples, ``d`` outputs), so that
        batches before and after a layer moves to the fallback (its rows found
        mixed), and engines whose plans differ, pair piece by piece and sketch
        alike. The other parameters' blocks come last.
        """
        pieces = []
        for name, (layer, own) in self.supported.items():
            if name in captured:
                pieces.extend(captured[name])
            elif name in self.layers:
                pieces.extend(idle_pieces(layer, own, b, d))
            else:
                grads = {local: blocks.pop(join_name(name, local)) for local in own}
                pieces.extend(parameter_pieces(layer, own, grads))
        pieces.extend(DensePiece(block) for block in blocks.values())
        return pieces


def _with_values(module: torch.nn.Module, params) -> dict:
    """The selected parameters, unless some hold no values yet (a ValueError)."""
    selected = select_parameters(module, params)
    lazy = [n for n, p in selected.items() if is_lazy(p)]
    if lazy:
        raise ValueError(
            f"The network's parameters {lazy[:5]} are not initialised yet (lazy "
            "layers such as nn.LazyLinear): pass it one batch of inputs first, or "
            "train it."
        )
    meta = [n for n, p in selected.items() if p.is_meta]
    if meta:
        raise ValueError(
            f"The network's parameters {meta[:5]} are on the meta device and hold "
            "no values: load its weights first (e.g. module.to_empty(device='cpu') "
            "then module.load_state_dict(...))."
        )
    return selected


def _check_per_sample(call: Callable, batch) -> None:
    """Raise a ValueError unless the two samples of ``batch`` give alone its outputs.

    ``call(batch, None)`` gives the selected outputs of a batch; each call has
    its own copy of the inputs, which a network may change in place. Outputs
    that are not finite are left to the real pass to report.
    """

    def outputs(rows: slice) -> torch.Tensor:
        return call(tree_map(torch.clone, take(batch, rows)), None)

    with torch.no_grad():  # a network differentiating inside (enable_grad) too
        together = outputs(slice(0, 2)).detach()
        alone = torch.cat([outputs(slice(0, 1)), outputs(slice(1, 2))]).detach()
    if not bool(torch.isfinite(together).all()):
        return
    scale = float(together.abs().max())
    rtol = max(1e-3, 8 * torch.finfo(together.dtype).eps)  # half precision: coarser
    if not torch.allclose(alone, together, rtol=rtol, atol=rtol / 100 * scale):
        gap = float((alone - together).abs().max())
        change = f"by up to {gap:.3g}" if math.isfinite(gap) else "to NaN or infinity"
        raise ValueError(
            "The network's outputs for an input depend on the other inputs of "
            f"its batch, or change from call to call ({change}): "
            "per-sample similarities are undefined. Typical causes: dropout left "
            "on in eval mode (F.dropout(x, training=True)), statistics over the "
            "batch, an output= callable that mixes rows (it must act on each "
            "row alone), a forward that reads one input's field for the whole "
            "batch."
        )


class OneRowCalls(Exception):
    """A pass failed after layers called on one row got an output per sample.

    ``args``: the names of the expanded layers and the error of the pass.
    """


def _explained_call(capture: LayerCapture, call: Callable) -> torch.Tensor:
    """``call()``, a forward pass, explained if it fails after expansions.

    The capture expands a layer's output of one row to the batch, as for a
    table shared by it; a network that called the layer on one of its
    samples (a loop over them, samples routed to layers) then fails in its
    own code, or gives outputs of other rows. The pass is made again
    without expansions: an error it raises too is the network's own, and is
    raised as it is; otherwise :class:`OneRowCalls`.
    """
    try:
        return call()
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, IndexError, ValueError) as error:
        if not capture.expanded:
            raise
        capture.recording = False  # the hooks expand nothing then
        try:
            with torch.no_grad():
                call()
        except Exception:
            raise error from None
        raise OneRowCalls(sorted(capture.expanded), error) from error


def _copied(batch):
    """A copy of a batch's tensors (a dict's too)."""
    return tree_map(torch.clone, batch)


def _warn_mixed(layer: str, start: int) -> None:
    """Warn that the batch from row ``start`` mixed its samples in ``layer``."""
    warnings.warn(
        f"The network mixed the samples of the batch from input row {start} in "
        f"the layer {layer!r}: a sample's outputs reach another sample's row "
        "(it reorders its batch, as code that sorts sequences by length does, "
        "or combines its samples), or the layer's rows are not the samples "
        "(positions of packed or flattened sequences, or the samples routed to "
        "it, as a mixture of experts routes them), so the gradients of a "
        "batch cannot be told apart. They are computed one sample at a time "
        "from there, which is exact but slower; keep the samples in their order (e.g. "
        "pack_padded_sequence(..., enforce_sorted=False)) to batch them.",
        UserWarning,
        stacklevel=3,
    )


def _warn_idle(idle: list[str]) -> None:
    """Warn that the selected parameters of the layers ``idle`` get no gradient."""
    if idle:
        warnings.warn(
            f"The parameters of the layers {idle[:5]} get no gradient from the "
            "selected outputs in evaluation mode, so they add nothing to the "
            "similarities: the layers ran under torch.no_grad(), inside "
            "activation checkpointing with use_reentrant=True of inputs that "
            "need no gradient, with their parameters frozen, or not at all. "
            "Checkpoint with use_reentrant=False for them to count, or select "
            "the other parameters with params= to silence this warning.",
            UserWarning,
            stacklevel=2,
        )


def _check_not_hidden(idle: set[str], outputs: torch.Tensor) -> None:
    """Raise a ValueError if reentrant checkpointing may hide the ``idle`` layers.

    Its first pass runs without gradients, and the pass that brings them
    back runs only in ``backward()``, never in the ``autograd.grad`` sksim
    uses: layers inside it would count in training and not here.
    """
    if idle and any(
        type(node) is CheckpointFunction._backward_cls for node in leaf_uses(outputs)[1]
    ):
        raise ValueError(
            f"The layers {sorted(idle)[:5]} ran without gradients, and the "
            "network runs activation checkpointing with use_reentrant=True "
            "on inputs that need one: layers inside it get a gradient in "
            "training (backward()) but none from torch.autograd.grad, "
            "with which sksim differentiates. Checkpoint with "
            "use_reentrant=False."
        )


def _check_same_layers(ran: set, expected: set, start: int, b: int) -> None:
    """Raise a ValueError if a batch ran other handled layers than the probe."""
    if ran != expected:
        raise ValueError(
            f"The network ran the layers {sorted(ran)} for input rows {start} to "
            f"{start + b - 1}, but {sorted(expected)} for the first inputs it was "
            "given: sksim pairs the gradients of the same layers for every "
            "sample. Compute the similarities of inputs that run the same layers "
            "apart (one task or branch at a time), or select the parameters "
            "they share with params=."
        )


class SavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Context: records the tensors autograd saves for the backward pass.

    Those beyond a network's layer inputs and outputs (attention weights, an
    activation's result) take memory the pieces' budget does not see, and the
    vectorised backward pass over ``d`` outputs makes a gradient of those
    saved once the first of ``layers`` (the differentiated ones) has started,
    ``d`` at a time: the backward pass to them goes through those only.
    """

    def __init__(self, layers: list[torch.nn.Module]):
        # order of saving and bytes, by storage address
        self.storages: dict[int, tuple[int, int]] = {}
        self.start: int | None = None  # saved before the first layer started
        self._layers, self._handles = layers, []
        # outside torch.compile's tracing: its guards on the recorded storages
        # recompiled a compiled submodule on every pass, up to its limit
        super().__init__(torch.compiler.disable(self._pack), lambda t: t)

    def __enter__(self):
        def started(*_):
            if self.start is None:
                self.start = len(self.storages)

        self._handles = [m.register_forward_pre_hook(started) for m in self._layers]
        try:
            return super().__enter__()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        """Record ``t``'s storage; keep ``t`` without its history.

        An operation's output that it saves (``exp``'s) would otherwise hold
        its own node, which holds it: a cycle of torch's that Python's
        collector cannot see, which kept every probe pass's graph and the
        network copies it reads. Autograd gives the unpacked tensor its node
        again.
        """
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # functorch's wrappers
            return t
        address = storage.data_ptr()
        if address not in self.storages:
            self.storages[address] = (len(self.storages), storage.nbytes())
        return t.detach()

    def bytes_besides(
        self,
        known: list[torch.Tensor],
        outputs: list[torch.Tensor],
        d: int,
        from_start: bool = False,
    ) -> int:
        """Bytes of the saved tensors not in ``known``, and of some gradients.

        The gradients of those larger than every layer output of ``outputs``:
        the gradients of tensors as large as a layer's output are as large as
        its back-propagated signals, which the pieces' budget counts; larger
        ones (attention weights) take two at a time (a node's input and
        output) for each of the ``d`` outputs. ``from_start``: count those of
        every saved tensor (parameters outside the layers are differentiated).
        """
        largest = max((t.nbytes for t in outputs), default=0)
        for t in known:
            if t.layout == torch.strided:  # a sparse buffer's parts were not saved
                self.storages.pop(t.untyped_storage().data_ptr(), None)
        start = 0 if from_start else self.start or 0
        on_path = [size for order, size in self.storages.values() if order >= start]
        beyond = max(on_path, default=0) - largest
        total = sum(size for _, size in self.storages.values())
        # and beside the kept signals, the gradient the backward pass makes next
        return total + 2 * d * max(beyond, 0) + d * largest


def _dense(gradient: torch.Tensor) -> torch.Tensor:
    """``gradient`` as a dense tensor (a sparse embedding's is sparse)."""
    return gradient.to_dense() if gradient.is_sparse else gradient


def _check_no_autocast(device: torch.device) -> None:
    """Raise a RuntimeError inside a ``torch.autocast`` block of the caller's.

    sksim's own products would be formed in its lower precision.
    """
    if torch.is_autocast_enabled(device.type):
        raise RuntimeError(
            "sksim is called inside a torch.autocast block, which would form its "
            "products in the block's lower precision: call it outside of the "
            "block (autocast inside the network's forward is kept)."
        )


def _attached(outputs: torch.Tensor) -> torch.Tensor:
    """``outputs``, if gradients flow through them to the parameters."""
    check_not_inference_mode()
    if not outputs.requires_grad:
        raise ValueError(
            "The selected outputs are cut from the network's graph (no gradient "
            "flows through them): build an output= callable from the network's "
            "output with torch operations, without .detach(), .numpy() or "
            "torch.no_grad()."
        )
    return outputs


def network_output(module: torch.nn.Module, batch, float_dtype: torch.dtype):
    """``module``'s own output for a batch; a dict goes in as keywords.

    A failure on integer inputs says that they went in as token ids.
    """
    with _input_dtype_errors(batch, float_dtype):
        if isinstance(batch, dict):
            return module(**batch)
        return module(batch)


#: The beginning of the note :func:`_rows_named` adds to an error.
_ROWS_NOTE = "sksim: the network failed on the batch of the inputs' rows"


@contextlib.contextmanager
def _rows_named(start: int, n: int) -> Iterator[None]:
    """Name the batch's rows ``start .. start + n - 1`` on an error raised in it.

    As a note on the exception (its type and message are the network's), once;
    not on sksim's own signals, nor its errors that name the rows already.
    """
    try:
        yield
    except (PiecesTooLarge, RowsMixed, NonFiniteNetworkError):
        raise
    except Exception as error:
        notes = getattr(error, "__notes__", [])
        if not any(note.startswith(_ROWS_NOTE) for note in notes):
            error.add_note(f"{_ROWS_NOTE} {start} to {start + n - 1}.")
        raise


@contextlib.contextmanager
def _input_dtype_errors(batch, float_dtype: torch.dtype) -> Iterator[None]:
    """Explain in the user's terms a forward pass that fails on the inputs' dtypes.

    Floating-point inputs where the network takes integers (token ids of an
    embedding), or integer inputs where it computes with floats.
    """
    try:
        yield
    except RuntimeError as error:
        message = str(error)
        first = message.splitlines()[0].rstrip(".")
        if "type" not in message.lower():
            raise
        inputs = batch if isinstance(batch, dict) else {"X": batch}
        floats = [name for name, t in inputs.items() if t.is_floating_point()]
        integer = {n: t.dtype for n, t in inputs.items() if not t.is_floating_point()}
        if floats and "indices" in message:  # an embedding's lookup
            raise TypeError(
                f"The network takes integers (token ids) where it was given "
                f"floating-point inputs ({', '.join(floats)}): {first}. Pass "
                "token ids as integers, e.g. ids.astype(np.int64)."
            ) from error
        if not integer:
            raise
        name, dtype = next(iter(integer.items()))
        which = f"input {name!r} has" if isinstance(batch, dict) else "inputs have"
        kind = "a boolean" if dtype == torch.bool else "an integer"
        taken = "" if dtype == torch.bool else " (token ids)"
        raise TypeError(
            f"The {which} {kind} dtype, passed to the network as {dtype}{taken}, "
            "and the network failed on them: "
            f"{first}. If they are features, convert them first, e.g. "
            f"X.astype(np.float32) (the network computes in {float_dtype})."
        ) from error
