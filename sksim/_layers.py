"""Outputs of a network's layers by name: forward hooks, eval mode, no gradients.

One capture serves :mod:`sksim.sensitivity` and :mod:`sksim.representations`.
Layers are named ``"input"``, ``"output"``, by module name
(``dict(net.named_modules())``, captured with forward hooks) or, for
functional operations, by the ``torch.fx`` node name in the traced network;
``"all"`` means the input, every leaf module in execution order (those run
more than once, and those whose rows are not the samples, left out with a
warning) and the output. A layer returning a tuple is its first item (a
recurrent layer's output sequence); sequence-first layers' values
(:func:`sequence_first`) are read with the samples on axis 1. Each captured batch
is pooled (:data:`POOLS`) into a new tensor, flattened to ``(batch,
features)``, as soon as the layer has run. Pooling needs to know which axis
holds the features: the channels (axis 1), as torch's convention, or the last
axis, as token sequences ``(batch, T, E)`` and linear layers' outputs hold
them: see :func:`layout` (on the first batch, a value of a layout unknown
until the pass ends is pooled both ways, and the pass tells which to keep).
The hooks are registered through
the engine's :class:`~sksim._engine.hooks.ForwardHooks`, as the gradient
capture's are.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import torch
from torch.nn.utils.parametrize import is_parametrized
from torch.nn.utils.rnn import PackedSequence

from ._engine.capture import is_transposed_linear
from ._engine.context import evaluation_mode, layerwise_attention
from ._engine.finite import check_finite_rows
from ._engine.hooks import ForwardHooks
from ._engine.inputs import n_samples
from ._engine.selection import network_logits

#: ``"flatten"``: keep every value; ``"mean"``/``"max"``: global average/max over
#: the positions (spatial axes, or tokens; one value per channel or feature);
#: ``"channel_mean"``: average over channels or features (one value per
#: position). Outputs of shape ``(batch, features)`` are never pooled.
POOLS = ("flatten", "mean", "max", "channel_mean")

nn = torch.nn
#: Layers whose outputs hold channels on axis 1, ``(batch, C, ...)``.
CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,  # batch and instance norms
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
#: Layers whose outputs hold features on the last axis, ``(batch, ..., E)``.
FEATURES_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),  # torch 2.4
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def layout(module: torch.nn.Module) -> bool | None:
    """True if ``module``'s output holds its features last, False if on axis 1.

    None for a module of no known kind: its output holds its features last
    when the layers of a known kind that read or made a tensor of its shape
    in the pass all do (an activation after a linear layer, a transformer
    block, a transpose before a recurrent layer); channels come first
    otherwise, as torch's convention.
    ``transformers``' ``Conv1D`` (GPT-2's projections) is a linear layer; a
    layer with a ``data_format`` (ConvNeXt's layer norms) has the layout it
    names, and a layer norm over several axes or with a forward of its own (a
    ``LayerNorm2d`` permuting feature maps) is of no known kind.
    """
    data_format = getattr(module, "data_format", None)
    if data_format in ("channels_first", "channels_last"):
        return data_format == "channels_last"
    if isinstance(module, nn.LayerNorm) and (
        len(module.normalized_shape) != 1
        or type(module).forward is not nn.LayerNorm.forward
    ):
        return None
    if isinstance(module, FEATURES_LAST) or is_transposed_linear(module):
        return True
    if isinstance(module, CHANNELS_FIRST):
        return False
    return None


class NotATensorError(TypeError, ValueError):
    """A layer or the network returned something other than one tensor."""


def check_pool(pool) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")


def pooled(
    t: torch.Tensor,
    pool: str,
    features_last: bool = False,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool a batch ``(B, C, ...)`` as ``pool`` says and flatten it to ``(B, d)``.

    With ``features_last``, the batch is ``(B, ..., C)``. ``tokens``, the
    ``(B, T)`` booleans of the tokens an attention mask keeps, restricts
    ``"mean"`` and ``"max"`` of token sequences ``(B, T, E)`` to them. The
    result is a new tensor: what the network does in place afterwards (an
    in-place activation, a residual ``+=``) cannot change it.
    """
    masked = features_last and tokens is not None and t.dim() == 3
    if masked and pool in ("mean", "max") and t.shape[1] == tokens.shape[1]:
        keep = tokens | ~tokens.any(1, keepdim=True)  # none: all
        if pool == "max":
            return t.masked_fill(~keep.unsqueeze(-1), -torch.inf).amax(1)
        weights = keep.to(t.dtype).unsqueeze(-1)
        return (t * weights).sum(1) / weights.sum(1)
    if t.dim() > 2 and pool != "flatten":
        features = t.dim() - 1 if features_last else 1
        positions = tuple(axis for axis in range(1, t.dim()) if axis != features)
        if pool == "mean":
            t = t.mean(positions)
        elif pool == "max":
            t = t.amax(positions)
        else:
            t = t.mean(features)
        return t.reshape(len(t), -1)
    return t.reshape(len(t), -1).clone()


def leaf_names(module: torch.nn.Module) -> list[str]:
    """The names of the modules without children, the layers of ``"all"``.

    A parametrized module (``spectral_norm``, ``weight_norm``) is a layer:
    its ``parametrizations`` compute its weights, not representations.
    """
    names, weights = [], []
    for name, sub in module.named_modules():
        if any(name.startswith(f"{prefix}.") for prefix in weights):
            continue
        children = dict(sub.named_children())
        if is_parametrized(sub):
            weights.append(f"{name}.parametrizations".lstrip("."))
            children.pop("parametrizations")
        if name and not children:
            names.append(name)
    return names


def _traced(module: torch.nn.Module, node_names: list[str]) -> torch.fx.GraphModule:
    """``module`` traced with torch.fx, checked to hold the nodes ``node_names``."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # tracing failures have many types
        raise ValueError(
            f"Layers {node_names} are not module names, and the network could not "
            f"be traced with torch.fx to find them as graph nodes ({exc}). Name "
            "modules instead (see dict(net.named_modules()))."
        ) from exc
    nodes = {node.name for node in gm.graph.nodes}
    missing = [name for name in node_names if name not in nodes]
    if missing:
        raise ValueError(
            f"Unknown layers {missing}. No module named {missing} in the network "
            f"(names include {leaf_names(module)[:8]}) and no torch.fx node "
            f"either (nodes include {list(nodes)[:8]}); 'input' and 'output' are "
            "also accepted."
        )
    return gm


class _NodeOutputs(torch.fx.Interpreter):
    """Runs a traced network, storing the wanted nodes' values as they come.

    Stored at once, before a later node can change them in place.
    """

    def __init__(self, gm: torch.fx.GraphModule, names: list[str], store):
        super().__init__(gm)
        self.names, self.store = set(names), store

    def run_node(self, node):
        value = super().run_node(node)
        if node.name in self.names:
            self.store(node.name, value)
        return value


def _attention_mask(x) -> torch.Tensor | None:
    """The tokens an ``attention_mask`` of keyword inputs keeps, ``(B, T)`` booleans.

    Of ones (or True) for the tokens kept and zeros for the others, as
    ``transformers`` takes it, or additive (0 kept, negative or -inf not);
    None for any other value.
    """
    mask = x.get("attention_mask") if isinstance(x, Mapping) else None
    if not (
        isinstance(mask, torch.Tensor) and mask.dim() == 2 and len(mask) == n_samples(x)
    ):
        return None
    if bool(((mask == 0) | (mask == 1)).all()):
        return mask != 0
    return mask == 0 if bool((mask <= 0).all()) else None


class _Unpooled(NamedTuple):
    """A layer's value on the first batch, pooled both ways until the pass ends."""

    channels_first: torch.Tensor
    features_last: torch.Tensor
    shape: torch.Size


def _first(value) -> torch.Tensor | None:
    """``value``, or its first tensor (a tuple of them); None if it holds none.

    A nested tensor (attention's fast path) has no shape: None too.
    """
    if isinstance(value, tuple | list):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor) or value.is_nested:
        return None
    return value


def _form(t: torch.Tensor) -> tuple:
    """The shape and strides of ``t``: its axes' order, which views change."""
    return t.shape, t.stride() if t.layout == torch.strided else None


def _shape(value) -> torch.Size | None:
    """The shape of ``value``, or of its first tensor (a tuple of them)."""
    first = _first(value)
    return None if first is None else first.shape


def sequence_first(module: torch.nn.Module) -> bool:
    """Whether ``module`` and its own modules hold the sequence on axis 0.

    Their values are ``(T, B, E)``: torch's recurrent, attention and
    transformer layers (and stacks of them) without ``batch_first``.
    """
    if isinstance(module, nn.TransformerEncoder | nn.TransformerDecoder):
        module = module.layers[0]
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        module = module.self_attn
    sequences = nn.RNNBase | nn.MultiheadAttention | nn.Transformer
    return isinstance(module, sequences) and not module.batch_first


def _sequence_first_names(module: torch.nn.Module) -> set[str]:
    """The names of the modules of ``module`` whose values hold the sequence first."""
    outer = [name for name, m in module.named_modules() if sequence_first(m)]
    return {
        name
        for name, _ in module.named_modules()
        if any(name == o or name.startswith(f"{o}.") or not o for o in outer)
    }


def _tensor(value, name: str) -> torch.Tensor:
    """A layer's value: its tensor, or the first item of the tuple it returns.

    The first item is a recurrent layer's output sequence, an attention
    layer's output, a ``transformers`` layer's hidden states.
    """
    if isinstance(value, tuple | list) and not isinstance(value, PackedSequence):
        value = value[0] if value else value
    if isinstance(value, PackedSequence):
        raise NotATensorError(
            f"Layer {name!r} returns a PackedSequence, whose rows are time steps "
            "of all the samples, not the samples; capture a layer after the "
            "network pads it back (torch.nn.utils.rnn.pad_packed_sequence)."
        )
    if not isinstance(value, torch.Tensor):
        raise NotATensorError(
            f"Layer {name!r} returns a {type(value).__name__}, not a tensor; "
            "capture one of its submodules instead."
        )
    return value


def _layer_names(layers) -> list[str] | None:
    """The requested names, or None for ``"all"`` (known after a forward pass)."""
    if layers == "all":
        return None
    if isinstance(layers, str):
        return [layers]
    if not isinstance(layers, list | tuple):
        raise ValueError(
            f'layers must be "output", "all", a layer name or a list of names; '
            f"got {layers!r}."
        )
    if not layers:
        raise ValueError(
            "layers must name at least one layer: at least one module name, "
            "torch.fx node name, 'input' or 'output'."
        )
    repeated = sorted({name for name in layers if list(layers).count(name) > 1})
    if repeated:
        raise ValueError(f"layers names {repeated} more than once; name each once.")
    return list(layers)


class RepresentationCapture:
    """Callable: a batch of inputs -> ``{layer: (B, d) pooled representation}``.

    Call it inside :func:`layer_outputs` (or eval mode without gradients).

    Parameters
    ----------
    module : torch.nn.Module
    layers : "all", str or list of str
        See the module docstring.
    pool : {"flatten", "mean", "max", "channel_mean"}, default="flatten"
        See :data:`POOLS`.
    """

    def __init__(self, module: torch.nn.Module, layers, pool: str = "flatten"):
        check_pool(pool)
        self.pool = pool
        self.names = _layer_names(layers)
        self.module = module
        self._modules = dict(module.named_modules())
        special = ("input", "output")
        if self.names is None:
            self.hooked, self.fx_names = leaf_names(module), []
        else:
            self.hooked = [
                n for n in self.names if n not in special and n in self._modules
            ]
            self.fx_names = [
                n for n in self.names if n not in special and n not in self._modules
            ]
        self.traced = _traced(module, self.fx_names) if self.fx_names else None
        self._sequence_first = _sequence_first_names(module)
        # on the first batch: the shapes the sequence-first modules read and
        # made, and those of the values stored beside them
        self._sequence_shapes: set[torch.Size] | None = set()
        self._shapes: dict[str, torch.Size] = {}
        self._layouts: dict[str, bool] = {}  # features last, by layer (first batch)
        # (input shape, output shape, layout) of the known layers run so far
        self._ran: list[tuple] = []
        # the values of undecided layout of the pass, by id, and the layouts of
        # the known layers that made or read each of them (the very tensor)
        # (their names with their forms then: an in-place transpose changes it)
        self._watched: dict[int, tuple[weakref.ref, list[tuple]]] = {}
        self._told: dict[str, set[bool]] = {}
        self._last_made: tuple[weakref.ref, bool, tuple] | None = None
        self._undecided: list[str] = []  # layouts known layers did not tell
        self._not_tensors: dict[str, str] = {}  # "all"'s layers of other values
        self._tokens: torch.Tensor | None = None  # the batch's attention mask

    def _features_last(self, name: str, value: _Unpooled) -> bool:
        """Layer ``name``'s layout, learnt on the first batch, after its pass.

        Another tensor than a known module's holds its features last when
        every known layer of the pass that read or made a tensor of its shape
        does, and at least one did; channels come first otherwise. Where
        layers of both layouts read or made one, those that made or read the
        value itself (the same tensor object, see :meth:`_watch`) decide, if
        they agree; otherwise, or where no known layer read or made a tensor
        of its shape, channels come first, and the layer is named in a warning
        (of the latter, unless a known layer of channels first read or made a
        tensor of as many axes and channels: a feature map after a functional
        pool).
        """
        if name not in self._layouts:
            matches = {
                last
                for read_shape, out_shape, last in self._ran
                if value.shape in (read_shape, out_shape)
            }
            if len(matches) > 1:
                matches = self._told.get(name) or matches
            self._layouts[name] = matches == {True}
            if len(matches) > 1 or not (matches or self._channels_alike(value.shape)):
                self._undecided.append(name)
        return self._layouts[name]

    def _pooled(self, name: str, t: torch.Tensor):
        """``t`` pooled, or pooled both ways while its layout is unknown.

        A module of a known kind has its layout at once, as have values that
        pooling does not need it for (``"flatten"``, two axes or fewer).
        """
        if name in self.hooked and name not in self._layouts:
            own = layout(self._modules[name])
            if name in self._sequence_first:  # (T, B, E), read as (B, T, E)
                own = True
            if own is not None:
                self._layouts[name] = own
        if self.pool == "flatten" or t.dim() <= 2:
            self._layouts.setdefault(name, False)  # not needed
        if name in self._layouts:
            return pooled(t, self.pool, self._layouts[name], self._tokens)
        both = (pooled(t, self.pool, last, self._tokens) for last in (False, True))
        return _Unpooled(*both, t.shape)

    def _channels_alike(self, shape) -> bool:
        """Whether a known layer of channels first saw a tensor like ``shape``.

        One of as many axes and as many channels, read or made in the pass.
        """
        return any(
            not last
            and seen is not None
            and len(seen) == len(shape)
            and seen[1] == shape[1]
            for read_shape, out_shape, last in self._ran
            for seen in (read_shape, out_shape)
        )

    def _watch(self, name: str, value: torch.Tensor) -> None:
        """Follow ``value``, of undecided layout, through the rest of the pass.

        The known layers that read it (the same object, alive: a tensor
        freed meanwhile cannot be taken for another at its address) and the
        one that made it, if it ran last, tell its layout.
        """
        if name in self._layouts:
            return
        watched, names = self._watched.get(id(value), (None, []))
        if watched is None or watched() is not value:
            watched, names = weakref.ref(value), []
        self._watched[id(value)] = watched, [*names, (name, _form(value))]
        if self._last_made is not None:
            made, features_last, form = self._last_made
            if made() is value and form == _form(value):
                self._told.setdefault(name, set()).add(features_last)

    def _layout_hooks(self) -> list:
        """Hooks recording the layout of each known layer as it runs.

        Needed until every layer's layout is learnt, on the first batch;
        there too, the shapes that sequence-first modules read and make.
        """
        if self.names is not None and all(n in self._layouts for n in self.names):
            return []

        def ran(features_last):
            def record(_m, i, o):
                self._ran.append((_shape(i), _shape(o), features_last))
                read, made = _first(i), _first(o)
                watched, names = self._watched.get(id(read), (None, ()))
                if watched is not None and watched() is read:
                    for name, form in names:
                        if _form(read) == form:
                            self._told.setdefault(name, set()).add(features_last)
                if made is not None:
                    self._last_made = weakref.ref(made), features_last, _form(made)

            return record

        def sequence(_m, i, o):
            self._sequence_shapes.update((_shape(i), _shape(o)))

        return [
            (m, ran(features_last))
            for m in self.module.modules()
            if (features_last := layout(m)) is not None
        ] + [
            (m, sequence)
            for name, m in self._modules.items()
            if self._sequence_shapes is not None and name in self._sequence_first
        ]

    def _store(self, captured: dict, calls: dict):
        def store(name, value):
            calls[name] = calls.get(name, 0) + 1
            try:
                value = _tensor(value, name)
            except NotATensorError as error:
                if self.names is not None:
                    raise
                self._not_tensors[name] = str(error).split(";")[0].split(",")[0]
                return
            if name in self.hooked and name in self._sequence_first:
                value = value.transpose(0, 1) if value.dim() == 3 else value
            elif self._sequence_shapes is not None:
                self._shapes[name] = value.shape
            captured[name] = self._pooled(name, value.detach())
            if isinstance(captured[name], _Unpooled):
                self._watch(name, value)

        return store

    def _run(self, x, captured: dict, calls: dict):
        """The network's output; the layers' values stored as they come.

        Modules are hooked on the network itself; torch.fx nodes are read in a
        run of its traced graph (a second forward pass when modules are asked
        for too, as the trace inlines the modules that hold others), which
        calls the network's own layers: the layouts of the known ones are
        recorded in both.
        """
        store = self._store(captured, calls)
        layouts = self._layout_hooks()
        out = None
        if self.hooked or self.traced is None:
            hooks = [
                (self._modules[n], lambda _m, _i, o, n=n: store(n, o))
                for n in self.hooked
            ]
            with ForwardHooks(layouts + hooks):
                out = self._forward(self.module, x)
        if self.traced is not None:
            nodes = _NodeOutputs(self.traced, self.fx_names, store)
            with ForwardHooks(layouts):
                traced = self._forward(nodes.run, x)
            out = traced if out is None else out  # the network's own, if it ran
        return out

    @staticmethod
    def _forward(call, x):
        return call(**x) if isinstance(x, Mapping) else call(x)

    def __call__(self, x) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        self._ran, self._watched, self._told, self._last_made = [], {}, {}, None
        self._not_tensors, self._shapes = {}, {}
        self._tokens = _attention_mask(x)
        if self.names is None and isinstance(x, Mapping):
            self._not_tensors["input"] = "The input is a dict of several tensors"
        elif self.names is None or "input" in self.names:  # before the network
            captured["input"] = self._pooled("input", _tensor(x, "input"))
            if isinstance(captured["input"], _Unpooled):
                self._watch("input", x)
        calls: dict[str, int] = {}
        out = self._run(x, captured, calls)
        for name, value in captured.items():
            if isinstance(value, _Unpooled):
                last = self._features_last(name, value)
                captured[name] = value.features_last if last else value.channels_first
        twice = [name for name, count in calls.items() if count > 1]
        n = n_samples(x)
        sequence_rows = self._sequence_rows(n)
        other_rows = [
            name
            for name, t in captured.items()
            if len(t) != n and name not in sequence_rows
        ]
        left_out = twice + other_rows + sequence_rows
        if self.names is None:  # "all": execution order of this first call
            self._leave_out(twice, other_rows, self._not_tensors)
            if sequence_rows:
                warnings.warn(
                    f'{self._unsure_rows(sequence_rows)}: "all" leaves them out.',
                    UserWarning,
                    stacklevel=3,
                )
            self.names = [
                *(n for n in captured if n not in left_out),
                "output",
            ]
            self.hooked = [n for n in self.hooked if n in self.names]
        elif ambiguous := [name for name in twice if name in self.names]:
            raise ValueError(
                f"Module {ambiguous[0]!r} ran more than once in one forward pass, "
                "so its representation is ambiguous; capture another layer."
            )
        elif unsure := [name for name in sequence_rows if name in self.names]:
            raise ValueError(
                f"{self._unsure_rows(unsure)}; pass another batch_size, capture "
                "another layer (one of those sequence-first modules, whose rows "
                "sksim takes from axis 1), or build the network with "
                "batch_first=True."
            )
        elif unbatched := [name for name in other_rows if name in self.names]:
            rows = len(captured[unbatched[0]])
            raise ValueError(
                f"Layer {unbatched[0]!r} gave {rows} rows for a batch of {n} "
                "inputs: its rows are not the samples (windows or patches of "
                "them, a table the batch shares); capture another layer."
            )
        if "output" in self.names:
            out = network_logits(out)
            if not isinstance(out, torch.Tensor):
                raise NotATensorError(
                    f"The network returns a {type(out).__name__}, not a tensor; "
                    "wrap it so that forward returns the output tensor."
                )
            value = self._pooled("output", out.detach())
            if isinstance(value, _Unpooled):
                self._watch("output", out)
                last = self._features_last("output", value)
                value = value.features_last if last else value.channels_first
            captured["output"] = value
        self._warn_undecided(left_out)
        for name in self.names:
            if name not in captured:
                raise ValueError(
                    f"Module {name!r} was not called in the forward pass; pick a "
                    "module that the network uses."
                )
        return {name: captured[name] for name in self.names}

    @staticmethod
    def _leave_out(twice: list[str], other_rows: list[str], not_tensors: dict) -> None:
        if not_tensors:
            warnings.warn(
                f'{"; ".join(not_tensors.values())}: "all" leaves '
                f"{'it' if len(not_tensors) == 1 else 'them'} out.",
                UserWarning,
                stacklevel=4,
            )
        if twice:
            warnings.warn(
                f"Modules {twice} ran more than once in one forward pass (a module "
                'reused in forward), so their representations are ambiguous: "all" '
                "leaves them out.",
                UserWarning,
                stacklevel=4,
            )
        if other_rows:
            warnings.warn(
                f"The rows of the layers {other_rows[:5]} are not the samples "
                "(windows or patches of them, a table the batch shares): "
                '"all" leaves them out.',
                UserWarning,
                stacklevel=4,
            )

    def _sequence_rows(self, n: int) -> list[str]:
        """The layers whose rows may be time steps, judged on the first batch.

        Values beside sequence-first modules, of a shape these read or made,
        with as many time steps as samples: ``(n, n, ...)``.
        """
        if self._sequence_shapes is None:
            return []
        seen, self._sequence_shapes = self._sequence_shapes, None
        return [
            name
            for name, shape in self._shapes.items()
            if len(shape) >= 3 and shape[0] == shape[1] == n and shape in seen
        ]

    def _unsure_rows(self, names: list[str]) -> str:
        """Why the values of layers ``names`` may not have the samples as rows."""
        outer = sorted(self._sequence_first, key=len)[:3]
        return (
            f"The layers {names[:5]} give values of a shape that the modules "
            f"{outer}, which hold sequences first (T, B, ...), read or made, "
            "with as many time steps as samples in the batch: their rows may be "
            "time steps, not samples"
        )

    def _warn_undecided(self, left_out: list[str]) -> None:
        """Warn of the layers whose layout the known layers did not tell, once.

        Those ``left_out`` of the results are not named.
        """
        self._undecided = [n for n in self._undecided if n not in left_out]
        if self._undecided:
            warnings.warn(
                f"The layers of known kinds did not tell the layout of the values "
                f"of the layers {self._undecided[:5]} (none read or made a tensor "
                "of their shape, or some with their features on axis 1 and "
                "others with them last): they were pooled as holding channels on "
                "axis 1. Capture layers of a known kind (a linear layer, a "
                'convolution) or pool="flatten" where that is not their layout.',
                UserWarning,
                stacklevel=4,
            )
            self._undecided = []


def layer_outputs(
    module: torch.nn.Module, batches: Iterable, layers, pool: str = "flatten"
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{layer: (B, d) representation}`` for each batch, in eval mode.

    The module runs in eval mode (its modes restored afterwards) without
    gradients; the representations stay on the module's device.

    Parameters
    ----------
    module : torch.nn.Module
    batches : iterable of tensors or dicts of tensors
        Inputs on the module's device, in its dtype; a dict is passed as
        keyword arguments.
    layers : "all", str or list of str
        See the module docstring.
    pool : {"flatten", "mean", "max", "channel_mean"}, default="flatten"
        See :data:`POOLS`.
    """
    capture = RepresentationCapture(module, layers, pool)
    for batch in batches:  # eval mode batch by batch: a loop left unfinished
        with evaluation_mode(module), torch.no_grad(), layerwise_attention():
            outputs = capture(batch)  # modes and attention's fast path as they were
        yield outputs
        del outputs  # freed before the next batch's are made


def check_finite_representations(name: str, values: torch.Tensor, start: int = 0):
    """Raise a :class:`~sksim.NonFiniteNetworkError` unless ``values`` are finite.

    ``values`` are the representations of layer ``name`` of a batch whose first
    row is ``start``.
    """
    check_finite_rows(values, start, f"representations at layer {name!r}")


def check_layers(layers) -> None:
    """Raise a ValueError unless ``layers`` names layers (see the module)."""
    _layer_names(layers)
