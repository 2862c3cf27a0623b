"""Which parameters and outputs the Jacobian is taken of (``params=``, ``output=``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

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
        below it. A parameter tied to several modules (a decoder sharing the
        embedding's weight) is selected by any of its names.

    Returns
    -------
    dict
        Name to parameter (each by the first of its names), in the module's
        order.
    """
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(
            "The network has no trainable parameter (requires_grad=True): there is "
            "no gradient to compare inputs with. A network frozen for inference "
            "(requires_grad_(False)) is compared over the parameters you unfreeze: "
            "call module.requires_grad_(True) (or that of the layers to compare "
            "with) first; sksim leaves the flags as they are."
        )
    if params is None:
        return trainable
    wanted = [params] if isinstance(params, str) else params
    if not isinstance(wanted, (list, tuple)) or not all(
        isinstance(q, str) for q in wanted
    ):
        raise TypeError(
            "params must be None, a parameter name or prefix, or a list of them; "
            f"got {params!r}."
        )
    if not wanted:
        raise ValueError(
            "params=[] selects no parameter: there would be no gradient to compare "
            "inputs with. Pass None for every trainable parameter, or names such "
            f"as {list(trainable)[:2]}."
        )

    def matches(name: str, query: str) -> bool:
        return name == query or name.startswith(query + ".")

    # every name of each trainable parameter, tied ones' too, to its first name
    first = {id(p): n for n, p in trainable.items()}
    names = {
        n: first[id(p)]
        for n, p in module.named_parameters(remove_duplicate=False)
        if id(p) in first
    }
    unknown = [q for q in wanted if not any(matches(n, q) for n in names)]
    if unknown:
        raise ValueError(
            f"params {unknown} match no trainable parameter of the network. "
            f"Trainable parameters are: {list(trainable)}."
        )
    chosen = {names[n] for n in names if any(matches(n, q) for q in wanted)}
    return {n: p for n, p in trainable.items() if n in chosen}


def network_logits(out):
    """The logits of a network's output, as ``output="logits"`` reads them.

    The first item of a tuple or list, the ``"logits"`` item of a mapping
    that holds one (a Hugging Face model's output), else ``out`` itself.
    """
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, Mapping) and torch.is_tensor(out.get("logits")):
        return out["logits"]
    return out


def select_output(
    out, output: str | int | Callable = "logits", n: int | None = None
) -> torch.Tensor:
    """The rows of the Jacobian: a batch of network outputs reduced to ``(B, d)``.

    Parameters
    ----------
    out : Tensor of shape (B, ...), a tuple or list whose first item is, or a
        mapping whose ``"logits"`` item is
        The network's output for a batch.
    output : "logits", int or callable, default="logits"
        ``"logits"`` keeps every output (flattened per sample), an int keeps that
        output index only (d = 1), both of :func:`network_logits`; a callable
        maps the batch output, as the network returns it, to ``(B,)`` or
        ``(B, d)``.
    n : int or None, default=None
        The number of samples B in the batch, checked against the result.

    Raises
    ------
    ValueError
        If the selected outputs are not a floating tensor of ``n`` rows.
    """
    if not callable(output):
        _check_not_a_loss(out)
        out = network_logits(out)
    if callable(output):
        out = output(out)
        check_selected(out, n, "output= callable returned")
    elif isinstance(output, numbers.Integral) and not isinstance(output, bool):
        output = int(output)  # a NumPy integer too, as a grid search gives
        check_selected(out, n, "The network returned")
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
    else:
        check_selected(out, n, "The network returned")
    return out.reshape(out.shape[0], -1)


def _check_not_a_loss(out) -> None:
    """Raise when a tuple's first item, read as the logits, is one number.

    A Hugging Face model returns ``(loss, logits, ...)`` when its inputs hold
    labels (``return_dict=False``); the loss is no output per sample.
    """
    if not (isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0])):
        return
    if out[0].ndim:
        return
    later = [i for i, item in enumerate(out) if torch.is_tensor(item) and item.ndim]
    select = (
        f", or select them with output=lambda out: out[{later[0]}]" if later else ""
    )
    raise ValueError(
        "The network returned a tuple whose first item, read as its outputs, is "
        "one number (shape ()): a loss, as a Hugging Face model returns first "
        f"when its inputs hold labels. Leave the labels out of the inputs{select}."
    )


def check_selected(out, n: int | None, what: str) -> None:
    """Raise unless ``out`` is a floating tensor of ``n`` rows (``what`` made it)."""
    expected = "a tensor of shape (B,) or (B, d)"
    if not isinstance(out, torch.Tensor):
        entries = out.items() if isinstance(out, Mapping) else ()
        tensors = {key: value for key, value in entries if torch.is_tensor(value)}
        flat = [key for key, value in tensors.items() if value.ndim <= 2]
        if isinstance(getattr(out, "logits", None), torch.Tensor):
            hint = " Select its logits with output=lambda out: out.logits."
        elif flat:
            hint = (
                f" Select one with output=, e.g. output=lambda out: out[{flat[0]!r}]."
            )
        elif tensors:  # one vector per position: the first (a [CLS] token's)
            first = next(iter(tensors))
            hint = (
                " Select one with output=, e.g. output=lambda out: "
                f"out[{first!r}][:, 0] (the first position's)."
            )
        elif what.startswith("output="):
            hint = ""
        else:
            hint = " Select the tensor to compare with output=, a callable."
        raise TypeError(f"{what} {type(out).__name__}; expected {expected}.{hint}")
    if not out.is_floating_point():
        raise TypeError(
            f"{what} a tensor of dtype {out.dtype}; expected floating outputs."
        )
    if n is not None:
        expected += f" (B={n}, the samples of the batch)"
    if out.ndim == 0 or (n is not None and out.shape[0] != n):
        hint = (
            " A .squeeze() drops the samples' axis of a batch of one (sksim reads "
            "one sample first, whatever batch_size): squeeze the last axis alone "
            "(.squeeze(-1))."
            if out.ndim == 0
            else ""
        )
        raise ValueError(
            f"{what} a tensor of shape {tuple(out.shape)}; expected {expected}: "
            f"one row per sample of the batch, samples on the first axis.{hint}"
        )
    if what.startswith("output=") and out.ndim > 2:
        raise ValueError(
            f"{what} a tensor of shape {tuple(out.shape)}; expected {expected}."
        )
    if math.prod(out.shape[1:]) == 0:
        raise ValueError(
            f"{what} a tensor of shape {tuple(out.shape)}: no output per sample "
            "to differentiate. Select at least one (output=)."
        )
