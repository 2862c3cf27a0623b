"""Which parameters and outputs the Jacobian is taken of (``params=``, ``output=``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def select_parameters(
    module: torch.nn.Module, params: str | Sequence[str] | None = None
) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters of ``module`` selected by names or name prefixes.

    Parameters
    ----------
    module : torch.nn.Module
    params : str, list of str or None
        None selects every parameter with ``requires_grad``; otherwise a name
        selects that parameter and a prefix such as ``"layer1"`` every parameter
        below it.

    Returns
    -------
    dict
        Name to parameter, in the module's order.
    """
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(
            "The network has no trainable parameter (requires_grad=True): there is "
            "no gradient to compare inputs with."
        )
    if params is None:
        return trainable
    wanted = [params] if isinstance(params, str) else list(params)

    def matches(name: str, query: str) -> bool:
        return name == query or name.startswith(query + ".")

    unknown = [q for q in wanted if not any(matches(n, q) for n in trainable)]
    if unknown:
        raise ValueError(
            f"params {unknown} match no trainable parameter of the network. "
            f"Trainable parameters are: {list(trainable)}."
        )
    return {n: p for n, p in trainable.items() if any(matches(n, q) for q in wanted)}


def select_output(
    out: torch.Tensor, output: str | int | Callable = "logits"
) -> torch.Tensor:
    """The rows of the Jacobian: a batch of network outputs reduced to ``(B, d)``.

    Parameters
    ----------
    out : Tensor of shape (B, ...)
        The network's output for a batch.
    output : "logits", int or callable, default="logits"
        ``"logits"`` keeps every output (flattened per sample), an int keeps that
        output index only (d = 1), a callable maps the batch output to ``(B,)`` or
        ``(B, d)``.
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if callable(output):
        out = output(out)
    elif isinstance(output, int) and not isinstance(output, bool):
        out = out.reshape(out.shape[0], -1)
        if not -out.shape[1] <= output < out.shape[1]:
            raise ValueError(
                f"output={output} is out of range for a network with "
                f"{out.shape[1]} outputs."
            )
        out = out[:, output]
    elif output != "logits":
        raise ValueError(
            f'output must be "logits", an int or a callable; got {output!r}.'
        )
    return out.reshape(out.shape[0], -1)
