"""Per-sample Jacobians of the network output with respect to its parameters.

``J(x) = d f(x) / d theta`` of shape ``(d, p)`` per sample, computed with
``torch.func`` (``functional_call`` + ``vmap`` of ``jacrev``) in batches, in
eval mode, on the module's device (SPEC 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import tqdm

from .._net import evaluation_mode
from .inputs import batches, module_float_dtype, n_samples, take, to_tensor
from .selection import select_output, select_parameters


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
    batch_size : int, default=64
        Samples per vectorised Jacobian computation.
    device : str, torch.device or None, default=None
        Where to compute; None keeps the module's device.
    verbose : int, default=0
        Show a progress bar over batches when positive.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        output: str | int | Callable = "logits",
        params: str | Sequence[str] | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        verbose: int = 0,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        self.module = module
        self.output = output
        self.parameters = select_parameters(module, params)
        self.batch_size = batch_size
        self.verbose = verbose
        self.device = (
            torch.device(device)
            if device is not None
            else next(iter(self.parameters.values())).device
        )
        self.dtype = module_float_dtype(module)
        self.n_params = sum(p.numel() for p in self.parameters.values())

    def _prepare(self):
        self.module.to(self.device)
        return {n: p.detach() for n, p in self.parameters.items()}

    def _forward(self, params, batch) -> torch.Tensor:
        """Selected outputs ``(B, d)`` of a batch with the given parameters."""
        if isinstance(batch, dict):
            out = functional_call(self.module, params, args=(), kwargs=batch)
        else:
            out = functional_call(self.module, params, args=(batch,))
        return select_output(out, self.output)

    def n_outputs(self, X) -> int:
        """The number d of Jacobian rows per sample."""
        params = self._prepare()
        first = to_tensor(take(X, slice(0, 1)), self.device, self.dtype)
        with evaluation_mode(self.module), torch.no_grad():
            return self._forward(params, first).shape[1]

    def outputs(self, X) -> torch.Tensor:
        """Selected outputs ``(n, d)`` of every sample, on the CPU."""
        params = self._prepare()
        with evaluation_mode(self.module), torch.no_grad():
            parts = [
                self._forward(params, b).cpu()
                for _, b in batches(X, self.batch_size, self.device, self.dtype)
            ]
        return torch.cat(parts)

    def jacobians(
        self, X, progress: bool = True
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, J)`` with ``J`` of shape ``(b, d, p)`` on the device."""
        params = self._prepare()
        names = list(params)

        def one_sample(p, x):
            x = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), x)
            return self._forward(p, x)[0]

        per_sample = vmap(jacrev(one_sample), in_dims=(None, 0))
        # torch.func differentiates despite the outer no_grad, which keeps the
        # parameters that are not selected out of the graph.
        with evaluation_mode(self.module), torch.no_grad():
            blocks = batches(X, self.batch_size, self.device, self.dtype)
            total = -(-n_samples(X) // self.batch_size)
            show = progress and self.verbose > 0
            for rows, batch in tqdm(blocks, total=total, disable=not show):
                jac = per_sample(params, batch)
                b = rows.stop - rows.start
                yield (
                    rows,
                    torch.cat(
                        [jac[n].reshape(b, jac[n].shape[1], -1) for n in names], dim=2
                    ),
                )

    def jacobian(self, X) -> torch.Tensor:
        """All per-sample Jacobians ``(n, d, p)`` at once (memory ``n d p``)."""
        return torch.cat([J for _, J in self.jacobians(X)]) if n_samples(X) else None
