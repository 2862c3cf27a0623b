"""Forward hooks on a network's modules, registered for the span of a block.

The one hook utility of the package: the engine's gradient capture
(:class:`~sksim._engine.capture.LayerCapture`) and the layer outputs of
``sksim.sensitivity`` and ``sksim.representations`` (``sksim._layers``) both
register their hooks through :class:`ForwardHooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class ForwardHooks:
    """Context manager: forward hooks registered on entry, all removed on exit.

    On exit the hooks are also dropped, so that a hook closing over its owner
    (as :class:`~sksim._engine.capture.LayerCapture`'s do) leaves no reference
    cycle: what the owner recorded, and the autograd graph it holds, are freed
    as soon as the owner is, not at the next garbage collection. A block is
    entered once.

    Parameters
    ----------
    hooks : iterable of (torch.nn.Module, callable)
        Each module and the hook ``hook(module, args, output)`` to register on
        it; a hook returning a tensor replaces the module's output.
    with_kwargs : bool, default=False
        Call ``hook(module, args, kwargs, output)`` instead, with the keyword
        arguments of the module's call.
    prepend : bool, default=False
        Run the hooks before the module's own forward hooks, on the output
        of its forward (which those hooks may change); otherwise after them.
    """

    def __init__(
        self,
        hooks: Iterable[tuple[torch.nn.Module, Callable]],
        with_kwargs: bool = False,
        prepend: bool = False,
    ):
        self.hooks = list(hooks)
        self.with_kwargs = with_kwargs
        self.prepend = prepend
        self._handles = []

    def __enter__(self):
        try:
            for module, hook in self.hooks:
                handle = module.register_forward_hook(
                    hook, with_kwargs=self.with_kwargs, prepend=self.prepend
                )
                self._handles.append(handle)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.hooks.clear()
