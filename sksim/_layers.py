"""Outputs of a network's layers by name: forward hooks, eval mode, no gradients.

One capture serves :mod:`sksim.sensitivity` and :mod:`sksim.representations`.
Layers are named ``"input"``, ``"output"``, by module name
(``dict(net.named_modules())``, captured with forward hooks) or, for
functional operations, by the ``torch.fx`` node name in the traced network;
``"all"`` means the input, every leaf module in execution order and the
output. Each captured batch is pooled (:data:`POOLS`) and flattened to
``(batch, features)``. The hooks are registered through the engine's
:class:`~sksim._engine.hooks.ForwardHooks`, as the gradient capture's are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from ._engine.context import evaluation_mode
from ._engine.finite import check_finite_rows
from ._engine.hooks import ForwardHooks

#: ``"flatten"``: keep every value; ``"mean"``/``"max"``: global average/max over
#: the spatial axes (one value per channel); ``"channel_mean"``: average over
#: channels (one value per position). Outputs of shape ``(batch, features)`` are
#: never pooled.
POOLS = ("flatten", "mean", "max", "channel_mean")


class NotATensorError(TypeError, ValueError):
    """A layer or the network returned something other than one tensor."""


def check_pool(pool) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")


def pooled(t: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a batch ``(B, C, ...)`` as ``pool`` says and flatten it to ``(B, d)``."""
    if t.dim() > 2 and pool != "flatten":
        spatial = tuple(range(2, t.dim()))
        if pool == "mean":
            t = t.mean(spatial)
        elif pool == "max":
            t = t.amax(spatial)
        else:
            t = t.mean(1)
    return t.reshape(len(t), -1)


def leaf_names(module: torch.nn.Module) -> list[str]:
    return [
        name
        for name, sub in module.named_modules()
        if name and next(sub.children(), None) is None
    ]


def _fx_module(module: torch.nn.Module, node_names: list[str]):
    """A traced copy of ``module`` returning ``(output, (node outputs...))``."""
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # tracing failures have many types
        raise ValueError(
            f"Layers {node_names} are not module names, and the network could not "
            f"be traced with torch.fx to find them as graph nodes ({exc}). Name "
            "modules instead (see dict(net.named_modules()))."
        ) from exc
    nodes = {node.name: node for node in gm.graph.nodes}
    missing = [name for name in node_names if name not in nodes]
    if missing:
        raise ValueError(
            f"Unknown layers {missing}. No module named {missing} in the network "
            f"(names include {leaf_names(module)[:8]}) and no torch.fx node "
            f"either (nodes include {list(nodes)[:8]}); 'input' and 'output' are "
            "also accepted."
        )
    out_node = next(node for node in gm.graph.nodes if node.op == "output")
    out_node.args = ((out_node.args[0], tuple(nodes[n] for n in node_names)),)
    gm.recompile()
    return gm


def _tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise NotATensorError(
            f"Layer {name!r} returns a {type(t).__name__}, not a tensor; capture "
            "one of its submodules instead."
        )
    return t


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
        self.forward = _fx_module(module, self.fx_names) if self.fx_names else module

    def _hook(self, name: str, captured: dict):
        def store(_module, _inputs, output):
            if name in captured:
                raise ValueError(
                    f"Module {name!r} ran twice in one forward pass, so its "
                    "representation is ambiguous; capture another layer."
                )
            captured[name] = pooled(_tensor(output, name).detach(), self.pool)

        return store

    def _run(self, x, captured: dict):
        hooks = [(self._modules[n], self._hook(n, captured)) for n in self.hooked]
        with ForwardHooks(hooks):
            return self.forward(**x) if isinstance(x, Mapping) else self.forward(x)

    def __call__(self, x) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        out = self._run(x, captured)
        if self.fx_names:
            out, extra = out
            for name, t in zip(self.fx_names, extra, strict=True):
                captured[name] = pooled(_tensor(t, name).detach(), self.pool)
        if self.names is None:  # "all": execution order of this first call
            self.names = ["input", *captured, "output"]
        if "output" in self.names:
            if not isinstance(out, torch.Tensor):
                raise NotATensorError(
                    f"The network returns a {type(out).__name__}, not a tensor; "
                    "wrap it so that forward returns the output tensor."
                )
            captured["output"] = pooled(out.detach(), self.pool)
        if "input" in self.names:
            captured["input"] = pooled(_tensor(x, "input"), self.pool)
        for name in self.names:
            if name not in captured:
                raise ValueError(
                    f"Module {name!r} was not called in the forward pass; pick a "
                    "module that the network uses."
                )
        return {name: captured[name] for name in self.names}


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
    with evaluation_mode(module), torch.no_grad():
        for batch in batches:
            yield capture(batch)


def check_finite_representations(name: str, values: torch.Tensor, start: int = 0):
    """Raise a :class:`~sksim.NonFiniteNetworkError` unless ``values`` are finite.

    ``values`` are the representations of layer ``name`` of a batch whose first
    row is ``start``.
    """
    check_finite_rows(values, start, f"representations at layer {name!r}")


def check_layers(layers) -> None:
    """Raise a ValueError unless ``layers`` names layers (see the module)."""
    _layer_names(layers)
