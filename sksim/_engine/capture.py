"""Capture layer inputs and back-propagated signals in one batched pass.

Forward hooks record each supported layer's input ``h`` and output ``z``; one
backward pass per output row ``c`` of ``sum_b f_c(x_b)`` gives
``delta_c = d f_c(x_b) / d z_b`` for every sample at once (samples do not
interact in eval mode). Per-sample parameter gradients follow layer by layer:

* ``Linear`` (and ``transformers``' ``Conv1D``, a linear layer whose weight is
  stored transposed), ``Conv1d``/``Conv2d`` (through ``unfold``), ``Embedding``:
  the weight gradient ``sum_u delta(u) h(u)^T``, kept factorised or
  materialised by the cost model of
  :func:`~sksim._engine.pieces.factorised_is_cheaper` (inner products of
  gradients do not depend on the order their entries are stored in);
* their biases, and the affine parameters of ``LayerNorm``, ``GroupNorm`` and
  ``BatchNorm`` (eval mode): small, materialised.

Any other parameter is left to the caller (``torch.func`` per-sample Jacobians).

The factorisation needs each recorded ``z`` to hold the samples along its first
axis, one row each. A layer whose output is shared by the batch (a position
table computed once with a leading axis of 1) is expanded to the batch; a layer
that breaks the rule otherwise (sequence-first layouts, tensors without a batch
axis) is found by :meth:`LayerCapture.mixing_layers` and left to the caller, as is a
layer whose weight the network also uses outside its calls
(:meth:`LayerCapture.tied_layers`). A batch whose samples the network moves
between rows as its data decide (sorting sequences by length) is found by the
signals' own pass (:class:`RowsMixed`).
"""

from __future__ import annotations

import math
import warnings
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import BackwardCFunction

from .hooks import ForwardHooks
from .pieces import (
    DensePiece,
    PieceBudget,
    SharedWeightPiece,
    factorised_is_cheaper,
    gram_of,
    materialize,
)

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _supported(module: nn.Module) -> bool:
    kind = type(module)
    if kind is nn.Linear or is_transposed_linear(module):
        return True
    if kind in (nn.Conv1d, nn.Conv2d):
        return module.padding_mode == "zeros"
    if kind is nn.Embedding:
        return module.max_norm is None
    return kind in _NORMS


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (GPT-2's projections).

    It computes ``x @ weight + bias`` with ``weight`` of shape (in, out): a
    ``Linear`` layer, its weight stored transposed.
    """
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers.")


def plan_layers(
    module: nn.Module, selected: dict[str, nn.Parameter]
) -> tuple[dict[str, tuple[nn.Module, list[str]]], list[str]]:
    """Split the selected parameters into handled layers and a fallback list.

    Returns
    -------
    layers : dict
        Layer name to ``(layer, names of its selected direct parameters)``, for
        layers handled here; parameter local names are ``weight``/``bias``.
    fallback : list of str
        Full names of the selected parameters left to per-sample autograd.
    """
    layers, claimed = {}, set()
    for name, sub in module.named_modules():
        own = [
            local
            for local, _ in sub.named_parameters(recurse=False)
            if join_name(name, local) in selected
        ]
        if own and _supported(sub) and set(own) <= {"weight", "bias"}:
            layers[name] = (sub, own)
            claimed.update(join_name(name, local) for local in own)
    fallback = [n for n in selected if n not in claimed]
    return layers, fallback


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _conv_patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches (b, T, C_in k) matching ``weight.reshape(o, -1)``."""
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation = (1, *layer.kernel_size), (1, *layer.dilation)
        stride = (1, *layer.stride)
        padding = (
            layer.padding if isinstance(layer.padding, str) else (0, *layer.padding)
        )
    else:
        kernel, dilation, stride = layer.kernel_size, layer.dilation, layer.stride
        padding = layer.padding
    if isinstance(padding, str):
        if padding == "same":
            x = F.pad(x, layer._reversed_padding_repeated_twice)
        padding = (0, 0)
    if x.device.type == "cpu":
        patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        return patches.transpose(1, 2)
    return _strided_patches(x, kernel, dilation, padding, stride)


def _strided_patches(x, kernel, dilation, padding, stride) -> torch.Tensor:
    """``unfold`` through strided views and one copy.

    CUDA's ``unfold`` loops over the samples, one kernel launch each.
    """
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    geometry = zip(kernel, stride, dilation, strict=True)
    for axis, (k, step, spacing) in enumerate(geometry):
        x = x.unfold(2 + axis, (k - 1) * spacing + 1, step)
    x = x[..., :: dilation[0], :: dilation[1]]  # (b, C, H_out, W_out, k_h, k_w)
    b, _, height, width = x.shape[:4]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b, height * width, -1)


def _normalised_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x_hat``: the input normalised as the layer does, before its affine map."""
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, None, None, layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(x, layer.num_groups, None, None, layer.eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = layer.running_mean.reshape(shape)
    return (x - mean) / torch.sqrt(layer.running_var.reshape(shape) + layer.eps)


class LayerCapture(ForwardHooks):
    """Records inputs and outputs of the handled layers during a forward pass.

    The hooks record inside a ``with`` block only, while :attr:`recording`:
    the caller sets it False after the forward pass, before a backward pass
    that recomputes layers (activation checkpointing) calls them again. A call
    whose output has no gradient (run under ``torch.no_grad()``) contributes
    none and is not recorded.

    The recorded tensors are those the network goes on with, unless ``copy``:
    :meth:`intact` then tells whether an in-place operation downstream (an
    in-place ReLU, ``out += x``) changed one of them, in which case the pass
    must be captured again with ``copy=True``, which records copies.

    With ``batch_size`` above one, a call whose input and output have a leading
    axis of 1 (shared by the batch, as a position embedding of ``(1, T)`` ids)
    is expanded to ``batch_size`` rows, which the network goes on with:
    broadcasting gives the same result, and each sample gets its own signal.
    """

    def __init__(
        self,
        layers: dict[str, tuple[nn.Module, list[str]]],
        copy: bool = False,
        batch_size: int = 1,
    ):
        super().__init__(
            ((layer, self._hook(name)) for name, (layer, _) in layers.items()),
            with_kwargs=True,
            prepend=True,  # the layer's own output: a hook of the user's may change it
        )
        self.layers = layers
        self.copy = copy
        self.batch_size = batch_size
        self.expanded: set[str] = set()
        self.nested: set[str] = set()  # layers given nested tensors, not recorded
        self.recording = True
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.without_gradient: set[str] = set()  # called, their outputs cut off
        self._versions: list[tuple[torch.Tensor, int]] = []

    def _hook(self, name: str):
        def record(layer, args, kwargs, output):
            if not self.recording:
                return None  # a recomputation in backward
            if not output.requires_grad:
                self.without_gradient.add(name)
                return None
            h, z = (args[0] if args else kwargs["input"]).detach(), output
            if h.is_nested or z.is_nested:  # attention's fast path: rows unknown
                self.nested.add(name)
                return None
            b = self.batch_size
            shared = b > 1 and h.shape[:1] == z.shape[:1] == (1,)
            if shared:
                self.expanded.add(name)
                h, z = h.expand(b, *h.shape[1:]), z.expand(b, *z.shape[1:])
            if self.copy:  # the network goes on with copies of what is recorded
                self.calls.setdefault(name, []).append((h.clone(), z))
                return z.clone()
            self.calls.setdefault(name, []).append((h, z))
            self._versions += [(h, h._version), (z, z._version)]
            # a copy of the expanded rows, which the network may change in place
            return z.clone() if shared else None

        return record

    def intact(self) -> bool:
        """Whether no recorded tensor was changed in place after it was recorded."""
        return all(t._version == version for t, version in self._versions)

    def mixing_layers(self, outputs: torch.Tensor) -> set[str]:
        """Layers whose recorded tensors do not hold one sample per row.

        A call breaks the rule when its input or output has another number of
        rows than ``outputs``, or when the gradient of the first or last
        sample's outputs reaches another row of its output (the samples are
        on another axis).
        """
        b = outputs.shape[0]
        calls = [(n, h, z) for n, cs in self.calls.items() for h, z in cs]
        mixing = {n for n, h, z in calls if h.shape[0] != b or z.shape[0] != b}
        checked = [(n, z) for n, _, z in calls if n not in mixing]
        for row in {0, b - 1} if checked else ():
            grads = torch.autograd.grad(
                outputs[row].sum(),
                [z for _, z in checked],
                retain_graph=True,
                allow_unused=True,
            )
            for (name, _), g in zip(checked, grads, strict=True):
                if g is None:
                    continue
                others = torch.cat([g[:row], g[row + 1 :]])
                # non-finite gradients are reported by the pass itself
                if bool((others.ne(0) & others.isfinite()).any()):
                    mixing.add(name)
        return mixing

    def tied_layers(self, outputs: torch.Tensor) -> set[str]:
        """Layers whose parameters get gradient from uses the hooks do not see.

        A weight tied to another module (an output projection sharing the
        embedding's) or used by the network's own code (``h @ emb.weight.T``)
        enters the graph of ``outputs`` more often than its layer's recorded
        calls that reach ``outputs``.
        """
        uses, nodes = leaf_uses(outputs)
        tied = set()
        for name, (layer, own) in self.layers.items():
            calls = sum(z.grad_fn in nodes for _, z in self.calls.get(name, []))
            if any(uses.get(id(getattr(layer, local)), 0) != calls for local in own):
                tied.add(name)
        return tied

    def layer_pieces(
        self, outputs: torch.Tensor, budget: PieceBudget, check_rows: bool = False
    ) -> dict:
        """Pieces of the Jacobian of ``outputs`` (b, d), by the layer that ran.

        In the layers' order. Raises ``PiecesTooLarge`` before the signals or
        a piece would pass ``budget``, and :class:`RowsMixed` as
        :func:`_output_signals` does (``check_rows`` checks the rows whatever
        the graph).
        """
        names = [(n, i) for n, calls in self.calls.items() for i in range(len(calls))]
        zs = [self.calls[n][i][1] for n, i in names]
        for z in zs:
            budget.take((outputs.shape[1], *z.shape), z)
        try:
            signals = _output_signals(outputs, zs, check_rows)
        except RowsMixed as mixed:
            raise RowsMixed(names[mixed.args[0]][0]) from None
        deltas = dict(zip(names, signals, strict=True))
        pieces = {}
        for name, (layer, own) in self.layers.items():
            calls = [
                _common_dtype(h, deltas[(name, i)])
                for i, (h, _) in enumerate(self.calls.get(name, []))
            ]
            if calls:
                d = outputs.shape[1]
                pieces[name] = _layer_pieces(layer, own, calls, d, budget)
        return pieces

    def unfaithful_layers(self, outputs: torch.Tensor, budget: PieceBudget) -> set:
        """Layers whose pieces differ from autograd's gradients.

        For a random direction ``v_i`` of each sample's outputs, a layer's
        pieces must give ``v_i^T J J^T v_i = |J^T v_i|^2`` as autograd computes
        it from the layer's parameters. They do not when the network's graph
        hides what the hooks record (a module compiled by ``torch.compile``).
        The pieces are made in ``budget``. All layers are unfaithful when
        autograd cannot go through the graph twice, and while a global forward
        hook is registered: it runs before the hooks, and may change a
        layer's output for some inputs only (a clamp), which two samples need
        not show.
        """
        if torch.nn.modules.module._global_forward_hooks:
            warnings.warn(
                "A global forward hook is registered (register_module_forward_hook, "
                "or a tool of torch's such as FlopCounterMode): every layer is "
                "differentiated by torch.func, which is exact but slower (tens of "
                "times on an MLP). Remove the hook while sksim computes to "
                "factorise the layers again.",
                UserWarning,
                stacklevel=2,
            )
            return {name for name in self.layers if name in self.calls}
        b, d = outputs.shape
        generator = torch.Generator(device=outputs.device).manual_seed(0)
        v = torch.randn(b, d, generator=generator, device=outputs.device)
        v = v.to(outputs.dtype)
        ran = [name for name in self.layers if name in self.calls]
        leaves = [
            [getattr(self.layers[name][0], local) for local in self.layers[name][1]]
            for name in ran
        ]
        flat = [p for params in leaves for p in params]
        expected = torch.zeros(b, len(ran), dtype=torch.float64, device="cpu")
        for i in range(b):
            try:
                grads = torch.autograd.grad(
                    outputs[i] @ v[i], flat, retain_graph=True, allow_unused=True
                )
            except RuntimeError:  # a compiled graph's backward runs only once
                return set(ran)
            grads = iter(grads)
            for j, params in enumerate(leaves):
                for g in (next(grads) for _ in params):
                    if g is not None:
                        expected[i, j] += g.double().square().sum().cpu()
        pieces = self.layer_pieces(outputs, budget)
        unfaithful = set()
        total = expected.sum(dim=1, keepdim=True)
        for j, name in enumerate(ran):
            G = gram_of(pieces[name]).double()
            w = v.double()
            found = torch.einsum("bi,bij,bj->b", w, G, w).cpu()
            tolerance = 1e-3 * (found.abs() + expected[:, j]) + 1e-5 * total[:, 0]
            if bool(((found - expected[:, j]).abs() > tolerance).any()):
                unfaithful.add(name)
        return unfaithful


def _common_dtype(h, delta: torch.Tensor) -> tuple:
    """A layer's floating input and output signal in the wider of their dtypes.

    They differ where the network's forward runs under ``torch.autocast``:
    the hooks see the input before autocast casts it. Token ids stay as
    they are.
    """
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        return h, delta
    dtype = torch.promote_types(h.dtype, delta.dtype)
    return h.to(dtype), delta.to(dtype)


def leaf_uses(outputs: torch.Tensor) -> tuple[dict[int, int], set]:
    """How many operations of the graph of ``outputs`` take each leaf, by ``id``.

    Returns the counts and the graph's nodes.
    """
    uses, nodes, stack = {}, set(), [outputs.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        for child, _ in node.next_functions:
            leaf = getattr(child, "variable", None)  # AccumulateGrad
            if leaf is not None:
                uses[id(leaf)] = uses.get(id(leaf), 0) + 1
            elif child is not None:
                stack.append(child)
    return uses, nodes


# Autograd nodes of operations that move values along any axis as the data
# decide (indices computed from them, sorting, selecting extremes) ...
DATA_MOVES = {
    f"{name}Backward{i}"
    for name in (
        "Index", "IndexSelect", "IndexPut", "IndexAdd", "IndexCopy", "IndexReduce",
        "Gather", "Scatter", "ScatterAdd", "ScatterReduce", "MaskedScatter",
        "MaskedSelect", "Take", "Put", "Sort", "Topk", "Kthvalue", "Median",
        "Nanmedian", "Mode", "Max", "Min", "Cummax", "Cummin",
    )
    for i in (0, 1)
}  # fmt: skip
# ... and those that cut or join tensors, which move rows when along axis 0
ROW_MOVES = {
    f"{name}Backward0"
    for name in (
        "Select", "Slice", "Cat", "Stack", "Unbind", "Split", "SplitWithSizes",
        "UnsafeSplit", "Flip", "Roll",
    )
}  # fmt: skip


def may_move_rows(nodes) -> bool:
    """Whether some node of an autograd graph can move a batch's samples between rows.

    True for the operations of :data:`DATA_MOVES`, those of :data:`ROW_MOVES`
    along axis 0 (or a negative axis), and the custom or compiled functions,
    whose operations the graph does not show.
    """
    for node in nodes:
        name = type(node).__name__
        if name in DATA_MOVES or isinstance(node, BackwardCFunction):
            return True
        if name.startswith("CompiledFunction"):
            return True
        if name in ROW_MOVES:
            dims = getattr(node, "_saved_dims", None)
            dims = (getattr(node, "_saved_dim", -1),) if dims is None else dims
            if any(dim <= 0 for dim in dims):
                return True
    return False


def _output_signals(
    outputs: torch.Tensor, zs: list, check_rows: bool = False
) -> list[torch.Tensor]:
    """``d outputs[:, c] / d z`` for every recorded ``z``, each ``(b, d, *z[0].shape)``.

    When ``check_rows``, or when the graph has operations that can move
    samples between rows (:func:`may_move_rows`), in a batch of several, a
    direction ``u`` of each sample's outputs is back-propagated too, as it
    is and scaled by a weight ``w_i`` per sample: :class:`RowsMixed` is
    raised with the index of the first ``z`` whose row ``i`` does not get
    ``w_i`` times the first, that is, when the network reorders or mixes the
    samples of this batch, and for a ``z`` of another number of rows than
    the batch (a layer run on some of its rows).
    """
    b, d = outputs.shape
    if not zs:  # no handled layer ran: their gradients are zero
        return []
    for i, z in enumerate(zs):
        if z.shape[0] != b:  # a layer run on some of the batch's rows
            raise RowsMixed(i)
    seeds = torch.eye(d, dtype=outputs.dtype, device=outputs.device)
    seeds = seeds[:, None, :].expand(d, b, d)
    check = b > 1 and (check_rows or may_move_rows(leaf_uses(outputs)[1]))
    if check:
        w, u = _row_direction(b, d, outputs)
        seeds = torch.cat([seeds, u.expand(1, b, d), w[:, :, None] * u])
    signals = []
    for i, (g, z) in enumerate(zip(_seeded_grads(outputs, zs, seeds), zs, strict=True)):
        if g is None:
            signals.append(z.new_zeros(b, d, *z.shape[1:]))
            continue
        g = g.detach()
        if check and any(_rows_mixed(g[d], g[d + 1 + k], w[k]) for k in range(len(w))):
            raise RowsMixed(i)
        signals.append(g[:d].transpose(0, 1))
    return signals


def _seeded_grads(outputs: torch.Tensor, zs: list, seeds: torch.Tensor) -> list:
    """Gradients of ``outputs`` seeded by ``seeds``, ``(s, *z.shape)`` per ``z``.

    One vectorised backward pass (``is_grads_batched``) for several outputs;
    a plain pass per seed for one output, or when some operation of the
    network has no batching rule. None for a ``z`` the outputs do not reach.
    """
    if outputs.shape[1] > 1:
        try:
            return torch.autograd.grad(
                outputs,
                zs,
                seeds,
                retain_graph=True,  # kept for the plain passes should this fail
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError:
            pass
    per_seed = [
        torch.autograd.grad(
            outputs, zs, seed, retain_graph=i < len(seeds) - 1, allow_unused=True
        )
        for i, seed in enumerate(seeds)
    ]
    return [
        None if g[0] is None else torch.stack(g) for g in zip(*per_seed, strict=True)
    ]


WEIGHT_LEVELS = 11  # row weights 2^0 .. 2^10: no overflow of float16 gradients below 64


class RowsMixed(Exception):
    """Some sample's outputs reach another row of a recorded layer output."""


def _row_direction(b: int, d: int, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sets of row weights ``w`` ``(m, b)`` and an output direction ``u`` ``(d,)``.

    The weights are powers of two: a seed scaled by them scales every
    rounding of a backward pass exactly, so that a row's gradient is exactly
    ``w_i`` times that of the unscaled seed, however much the network's own
    rounding cancels (a saturated softmax). Set ``k`` gives row ``i``
    ``2^digit_k``, the ``k``-th base-11 digit of its number in a fixed
    shuffle: two rows differ in some set, which finds any exchange of rows.
    """
    generator = torch.Generator().manual_seed(0)
    rank = torch.randperm(b, generator=generator, device="cpu")
    u = torch.randn(d, generator=generator, device="cpu", dtype=torch.float64)
    m = max(1, math.ceil(math.log(b, WEIGHT_LEVELS) - 1e-9))
    digits = torch.stack([(rank // WEIGHT_LEVELS**k) % WEIGHT_LEVELS for k in range(m)])
    like = dict(dtype=outputs.dtype, device=outputs.device)
    return torch.exp2(digits.double()).to(**like), u.to(**like)


def _rows_mixed(plain, weighted, w) -> bool:
    """Whether row ``i`` of ``weighted`` differs from ``w_i`` times that of ``plain``.

    Both ``(b, ...)``, gradients of one direction of each sample's outputs,
    the second scaled by ``w_i`` per sample. Each row is compared in norm,
    within the square root of the dtype's resolution of the two (for
    reductions whose order varies between passes), and the rounding of values
    below the dtype's smallest normal number, which scaling does not keep;
    rows with non-finite values are left to the finiteness checks.
    """
    b = weighted.shape[0]
    expected = w.to(weighted.dtype)[:, None] * plain.reshape(b, -1)
    weighted = weighted.reshape(b, -1)
    error = (weighted - expected).norm(dim=-1)
    scale = expected.norm(dim=-1) + weighted.norm(dim=-1)
    info = torch.finfo(weighted.dtype)
    subnormal = info.tiny * w.max() * weighted.shape[1] ** 0.5
    bound = info.eps**0.5 * scale + info.eps * scale.max() + subnormal
    return bool(((error > bound) & error.isfinite() & scale.isfinite()).any())


def _layer_pieces(layer, own, calls, d, budget) -> list:
    """Pieces of one layer's selected parameters, over all its calls."""
    if isinstance(layer, _NORMS):
        return _norm_pieces(layer, own, calls, d, budget)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return _conv_pieces(layer, own, calls, d, budget)
    hs, deltas = [], []
    for h, delta in calls:
        b = h.shape[0]
        delta = delta.reshape(b, d, -1, delta.shape[-1])
        if isinstance(layer, nn.Embedding):
            h = h.reshape(b, -1)
            if layer.padding_idx is not None:
                delta = delta * (h != layer.padding_idx)[:, None, :, None]
        else:
            h = h.reshape(b, -1, h.shape[-1])
        hs.append(h)
        deltas.append(delta)
    h, delta = _joined(hs, dim=1), _joined(deltas, dim=2)
    if isinstance(layer, nn.Embedding):
        return [SharedWeightPiece(h, delta, layer.num_embeddings)]
    return _weight_and_bias(h, delta, own, d, budget)


def _joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The positions of all calls of a layer, without a copy for a single call."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _weight_and_bias(
    h: torch.Tensor, delta: torch.Tensor, own, d: int, budget, tensor_sketch=True
) -> list:
    """Pieces of ``dW = sum_u delta(u) h(u)^T`` and ``db = sum_u delta(u)``.

    With both selected, the bias rides along as a constant input 1 of ``h``
    (implied, not stored): one piece, one product of ``delta`` per pair
    instead of two. ``tensor_sketch``: see :class:`SharedWeightPiece`.
    """
    b, _, T, o = delta.shape
    if "weight" not in own:
        budget.take((b, d, o), delta)
        return [DensePiece(delta.sum(dim=2))]
    piece = SharedWeightPiece(h, delta, bias="bias" in own, tensor_sketch=tensor_sketch)
    a = h.shape[2] + piece.bias
    if factorised_is_cheaper(T, a, o, d):
        return [piece]
    budget.take((b, d, o, a), delta)
    return [materialize(piece.inputs, delta, tensor_sketch)]


#: Weights of more values than this sketched by the TensorSketch of their
#: factors (see :class:`~sksim._engine.pieces.SharedWeightPiece`); smaller
#: convolutions by a CountSketch, their factors materialised.
TENSOR_SKETCH_MIN = 2**16


def _conv_pieces(layer, own, calls, d, budget) -> list:
    """Convolution pieces: factors on few positions, else per-sample gradients.

    A grouped convolution's gradients are always materialised: each output
    channel sees the inputs of its group only.
    """
    b, o = len(calls[0][0]), layer.out_channels
    positions = sum(delta[0, 0, 0].numel() for _, delta in calls)
    a = layer.weight[0].numel()
    factorised = layer.groups == 1 and factorised_is_cheaper(positions, a, o, d)
    tensor_sketch = _takes_tensor_sketch(layer)
    if "weight" in own and factorised:
        budget.take((b, positions, a), calls[0][0])
        h = _joined([_conv_patches(layer, x) for x, _ in calls], dim=1)
        delta = _joined([_per_position_delta(delta) for _, delta in calls], dim=2)
        # the bias a piece of its own, as when materialised: inputs of another
        # size may take the other form, and the two must pair piece by piece
        pieces = _weight_and_bias(h, delta, ["weight"], d, budget, tensor_sketch)
        if "bias" in own:
            budget.take((b, d, o), delta)
            pieces.append(DensePiece(delta.sum(dim=2)))
        return pieces
    pieces = []
    if "weight" in own:
        budget.take((b, d, o, a), calls[0][0])
        grads = (_conv_weight_grad(layer, x, g) for x, g in calls)
        factors = (o, a) if tensor_sketch else None
        pieces.append(DensePiece(reduce(torch.add, grads), factors))
    if "bias" in own:
        budget.take((b, d, o), calls[0][0])
        grads = (g.flatten(3).sum(dim=3) for _, g in calls)
        pieces.append(DensePiece(reduce(torch.add, grads)))
    return pieces


def _per_position_delta(delta: torch.Tensor) -> torch.Tensor:
    """A convolution's output signal (b, d, o, *spatial) as (b, d, T, o)."""
    return delta.flatten(3).transpose(2, 3)


# Below this many input channels, unfold + einsum beats the grouped convolution.
GROUPED_MIN_CHANNELS = 4


def _conv_weight_grad(layer: nn.Module, x: torch.Tensor, delta: torch.Tensor):
    """Per-sample weight gradients (b, d, o * C_in / groups * k) of one call.

    A convolution over the batch as groups (sample ``i``'s input channels
    against its own ``d * o`` output signals) gives every sample's gradient in
    one call; with very few input channels, ``unfold`` and a product is faster,
    and a grouped convolution's groups are met in one product over them.
    """
    b, channels = x.shape[:2]
    d, o = delta.shape[1], delta.shape[2]
    if layer.groups > 1:  # each group's outputs against its own input channels
        g = layer.groups
        patches = _conv_patches(layer, x)
        patches = patches.reshape(*patches.shape[:2], g, -1)  # (b, T, g, C_in k / g)
        signals = _per_position_delta(delta)
        signals = signals.reshape(*signals.shape[:3], g, o // g)  # (b, d, T, g, o / g)
        grad = torch.einsum("btgA,bdtgO->bdgOA", patches, signals)
        return grad.reshape(b, d, -1)
    if channels < GROUPED_MIN_CHANNELS:
        return materialize(_conv_patches(layer, x), _per_position_delta(delta)).grad
    padding = layer.padding
    if isinstance(padding, str):
        if padding == "same":
            x = F.pad(x, layer._reversed_padding_repeated_twice)
        padding = 0
    weight_grad = (
        torch.nn.grad.conv1d_weight
        if isinstance(layer, nn.Conv1d)
        else torch.nn.grad.conv2d_weight
    )
    grad = weight_grad(
        x.reshape(1, b * channels, *x.shape[2:]),
        (b * d * o, channels, *layer.kernel_size),
        delta.reshape(1, b * d * o, *delta.shape[3:]),
        stride=layer.stride,
        padding=padding,
        dilation=layer.dilation,
        groups=b,
    )
    return grad.reshape(b, d, -1)


def _norm_pieces(layer, own, calls, d, budget) -> list:
    budget.take((len(own), len(calls[0][0]), d, layer.weight.numel()), calls[0][0])
    weight = bias = 0
    for x, delta in calls:
        b = x.shape[0]
        if isinstance(layer, nn.LayerNorm):
            shape = (b, d, -1, layer.weight.numel())
            x_hat = _normalised_input(layer, x).reshape(b, 1, -1, layer.weight.numel())
            delta = delta.reshape(shape)
            position_axis = 2
        else:  # channels on axis 1 of the input, axis 2 of delta
            x_hat = _normalised_input(layer, x).reshape(b, 1, x.shape[1], -1)
            delta = delta.reshape(b, d, x.shape[1], -1)
            position_axis = 3
        weight = weight + (delta * x_hat).sum(dim=position_axis)
        bias = bias + delta.sum(dim=position_axis)
    pieces = []
    if "weight" in own:
        pieces.append(DensePiece(weight))
    if "bias" in own:
        pieces.append(DensePiece(bias))
    return pieces


def parameter_pieces(layer: nn.Module, own: list[str], grads: dict) -> list:
    """A layer's pieces from its parameters' per-sample gradients ``(b, d, p)``.

    ``grads`` maps ``weight``/``bias`` to the gradients. The pieces take the
    layout, order and factors of :func:`_layer_pieces`, so that those of a
    layer left to ``torch.func`` pair, and sketch alike, with its captured
    ones (of other batches, or of another plan's).
    """
    b, d = next(iter(grads.values())).shape[:2]
    pieces = []
    if isinstance(layer, (*_NORMS, nn.Conv1d, nn.Conv2d)):  # a piece per parameter
        if "weight" in own:
            sketched = not isinstance(layer, _NORMS) and _takes_tensor_sketch(layer)
            factors = _weight_shape(layer) if sketched else None
            pieces.append(DensePiece(grads["weight"], factors))
        if "bias" in own:
            pieces.append(DensePiece(grads["bias"]))
        return pieces
    if "weight" not in own:
        return [DensePiece(grads["bias"])]
    o, a = _weight_shape(layer)
    if isinstance(layer, nn.Embedding) or is_transposed_linear(layer):
        weight = grads["weight"].reshape(b, d, a, o).transpose(2, 3)
    else:
        weight = grads["weight"].reshape(b, d, o, a)
    if "bias" in own:  # the constant last input
        weight = torch.cat([weight, grads["bias"][..., None]], dim=3)
        a += 1
    return [DensePiece(weight.reshape(b, d, o * a), (o, a))]


def idle_pieces(layer: nn.Module, own: list[str], b: int, d: int) -> list:
    """The zero pieces of a layer that did not run, in :func:`_layer_pieces`'s layout.

    Factorised over no positions where its weight's pieces are (no memory
    taken, whatever the layer's size); dense zeros for biases and norms. So
    that the pieces of inputs that run other layers, found by engines whose
    probes saw other layers run (an estimator unpickled, checkpoints), pair
    piece by piece with them, the layer's gradients being zero.
    """
    like = layer.weight
    if isinstance(layer, _NORMS):
        return [DensePiece(like.new_zeros(b, d, like.numel())) for _ in own]
    convolution = isinstance(layer, (nn.Conv1d, nn.Conv2d))
    o, a = _weight_shape(layer)
    if "weight" not in own:
        return [DensePiece(like.new_zeros(b, d, o))]
    big = convolution and _takes_tensor_sketch(layer)
    delta = like.new_zeros(b, d, 0, o)
    if isinstance(layer, nn.Embedding):
        h = torch.zeros(b, 0, dtype=torch.long, device=like.device)
        return [SharedWeightPiece(h, delta, layer.num_embeddings)]
    bias = "bias" in own and not convolution  # a convolution's bias: a piece apart
    weight = SharedWeightPiece(
        like.new_zeros(b, 0, a), delta, bias=bias, tensor_sketch=big or not convolution
    )
    if convolution and "bias" in own:
        return [weight, DensePiece(like.new_zeros(b, d, o))]
    return [weight]


def _weight_shape(layer: nn.Module) -> tuple[int, int]:
    """``(o, a)``: the layer's weight as its pieces hold it, outputs by inputs."""
    if isinstance(layer, nn.Embedding) or is_transposed_linear(layer):
        a, o = layer.weight.shape  # stored transposed: (inputs, outputs)
        return o, a
    return layer.weight.shape[0], layer.weight[0].numel()


def _takes_tensor_sketch(convolution: nn.Module) -> bool:
    """Whether a convolution's weight is sketched by a TensorSketch of its factors."""
    o, a = _weight_shape(convolution)
    return convolution.groups == 1 and o * a > TENSOR_SKETCH_MIN
