"""Layer representations by module name (forward hooks) or torch.fx node name."""

from __future__ import annotations

import torch

POOLS = (None, "channels", "space")


def check_pool(pool) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")


def _pooled(t: torch.Tensor, pool: str | None) -> torch.Tensor:
    """Flatten a batch of representations to ``(B, d)``, pooled first."""
    if pool is not None and t.dim() >= 3:
        t = t.mean(1) if pool == "channels" else t.flatten(2).mean(2)
    return t.reshape(len(t), -1)


def _leaf_names(module: torch.nn.Module) -> list[str]:
    return [name for name, sub in module.named_modules()
            if name and next(sub.children(), None) is None]


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
            f"Unknown layers {missing}: use module names "
            f"({_leaf_names(module)[:8]}...), torch.fx node names "
            f"({list(nodes)[:8]}...), 'input' or 'output'."
        )
    out_node = next(node for node in gm.graph.nodes if node.op == "output")
    out_node.args = ((out_node.args[0], tuple(nodes[n] for n in node_names)),)
    gm.recompile()
    return gm


class LayerRepresentations:
    """Callable: a batch of inputs -> ``{layer: (B, d) representation}``.

    ``layers`` is ``"output"``, ``"all"`` (the input, every leaf module in
    execution order, the output) or a list of names: ``"input"``, ``"output"``,
    module names (``net.named_modules()``), or torch.fx node names for
    functional operations. Representations are detached, pooled and flattened.
    """

    def __init__(self, module: torch.nn.Module, layers, pool: str | None = None):
        check_pool(pool)
        self.module = module
        self.pool = pool
        modules = dict(module.named_modules())
        if isinstance(layers, str) and layers not in ("output", "all"):
            layers = [layers]
        if layers == "output":
            names = ["output"]
        elif layers == "all":
            names = None  # resolved at the first call, in execution order
        else:
            names = list(layers)
            if not names:
                raise ValueError("layers must name at least one layer.")
        self.all = names is None
        self.names = names
        hooked = _leaf_names(module) if self.all else [
            n for n in names if n not in ("input", "output") and n in modules
        ]
        self.fx_names = [] if self.all else [
            n for n in names if n not in ("input", "output") and n not in modules
        ]
        self.hooked = hooked
        self.forward = (
            _fx_module(module, self.fx_names) if self.fx_names else module
        )
        self._modules = modules

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def hook(name):
            def store(_module, _inputs, output):
                if name in captured:
                    raise ValueError(
                        f"Module {name!r} ran twice in one forward pass, so its "
                        "representation is ambiguous; measure another layer."
                    )
                if not isinstance(output, torch.Tensor):
                    raise ValueError(
                        f"Layer {name!r} returns a {type(output).__name__}, not a "
                        "tensor; measure one of its submodules instead."
                    )
                captured[name] = _pooled(output.detach(), self.pool).clone()
            return store

        handles = [self._modules[n].register_forward_hook(hook(n)) for n in self.hooked]
        try:
            out = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        if self.fx_names:
            out, extra = out
            for name, t in zip(self.fx_names, extra, strict=True):
                if not isinstance(t, torch.Tensor):
                    raise ValueError(
                        f"Layer {name!r} returns a {type(t).__name__}, not a tensor."
                    )
                captured[name] = _pooled(t.detach(), self.pool).clone()
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"The network returns a {type(out).__name__}, not a tensor; wrap it "
                "so that forward returns the output tensor."
            )
        captured["input"] = _pooled(x, self.pool)
        captured["output"] = _pooled(out.detach(), self.pool)
        if self.names is None:  # "all": execution order of this first call
            self.names = ["input"] + [n for n in captured if n not in
                                      ("input", "output")] + ["output"]
        missing = [n for n in self.names if n not in captured]
        if missing:
            raise ValueError(
                f"Layers {missing} did not run in the forward pass; pick modules "
                "that the network calls."
            )
        return {name: captured[name] for name in self.names}
