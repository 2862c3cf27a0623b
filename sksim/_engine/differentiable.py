"""Per-sample parameter gradients that training can differentiate again.

The Jacobian engine computes per-sample gradients as plain values (detached
parameters, no graph). A training term on those gradients, such as the
similarity regulariser's pair cosine, needs them as part of the graph, so that
the loss's ``backward()`` differentiates through them (double
back-propagation). :func:`per_sample_gradients` computes them for a batch in
one vectorised ``torch.func`` call (``vmap`` of ``grad`` over a
``functional_call``); torch.func transforms compose with ordinary autograd, so
the result keeps its graph to the module's own parameters. A network that
``vmap`` cannot run (data-dependent control flow, recurrent layers) or runs
wrongly (:data:`~sksim._engine.jacobian.UNVECTORISED`, or a network whose
gradients' own derivatives, with respect to every trainable parameter,
:func:`_differentiates_alike` refutes: the batching rule of an affine layer
norm's second derivative is wrong, for the layers before it too) is
differentiated one sample at a time; attention runs on PyTorch's math
kernel, the one whose backward can be differentiated again.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from .context import functional_output, math_attention
from .jacobian import UNVECTORISED

# whether vmap's gradients of each network differentiate as autograd's do,
# by the names of the parameters differentiated
_ALIKE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _call_one(module: torch.nn.Module, params, x, keywords: dict | None):
    """The module's output on one sample ``x`` as a batch of one."""
    one = tree_map(lambda t: t.unsqueeze(0), x)
    return functional_output(module, params, one, keywords)


def per_sample_gradients(
    module: torch.nn.Module,
    params: dict[str, torch.Tensor],
    samples,
    readout: Callable,
    extra=None,
    extra_batched: bool = False,
    create_graph: bool = True,
    keywords: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients ``d readout(module(x_i), e_i) / d params``, one per sample.

    The module is called as it is: put it in eval mode first where batch
    statistics or dropout would make per-sample gradients undefined.

    Parameters
    ----------
    module : torch.nn.Module
        The network, called through ``functional_call`` with ``params`` (a dict
        sample goes in as keyword arguments).
    params : dict of str to Tensor
        The parameters to differentiate, typically from ``select_parameters``.
    samples : Tensor or dict of Tensors, batch of s inputs
        The inputs, one per row.
    readout : callable
        ``readout(output, e) -> scalar Tensor``, with ``output`` the module's
        raw output for one sample as a batch of one and ``e`` the sample's row
        of ``extra`` (or the whole of it when not ``extra_batched``).
    extra : Tensor, dict of Tensors or None, default=None
        Data given to ``readout``.
    extra_batched : bool, default=False
        Whether ``extra`` holds one row per sample.
    create_graph : bool, default=True
        Keep the graph from the gradients to ``params`` (whose own gradients a
        later ``backward()`` then fills); False returns plain values.
    keywords : dict, default=None
        Keyword arguments of every call of the module, the same for every
        sample (skorch's ``fit_params``).

    Returns
    -------
    grads : dict of str to Tensor of shape (s, *param.shape)
        The per-sample gradients, in the order of ``params``.
    """
    if not create_graph:
        params = {name: p.detach() for name, p in params.items()}

    def phi(p, x, e):
        return readout(_call_one(module, p, x, keywords), e)

    in_extra = 0 if extra_batched else None
    vectorised = not any(isinstance(m, UNVECTORISED) for m in module.modules())
    # the second derivatives of the gradients of these parameters, if checked
    alike = _ALIKE.setdefault(module, {})
    selection = tuple(params)
    with torch.set_grad_enabled(create_graph), math_attention():
        if vectorised and (not create_graph or alike.get(selection, True)):
            try:
                with ElementaryNorms():
                    grads = vmap(grad(phi), in_dims=(None, 0, in_extra))(
                        params, samples, extra
                    )
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:  # a real error recurs one sample at a time
                grads = None
            if grads is not None and create_graph and selection not in alike:
                looped = _looped(phi, params, samples, extra, extra_batched, True)
                leaves = _trained(module, params)
                alike[selection] = _differentiates_alike(grads, looped, leaves)
                return grads if alike[selection] else looped
            if grads is not None:  # checked alike, or first-order
                return grads
        return _looped(phi, params, samples, extra, extra_batched, create_graph)


_INSTANCE_NORM = inspect.signature(F.instance_norm)


class ElementaryNorms(TorchFunctionMode):
    """Layer and instance norms computed by elementary operations.

    torch's batching rule of the second derivative of their fused kernels
    is wrong (a layer norm's by 2 to 8 %, an affine instance norm's by
    orders of magnitude); as means, a square root and products, ``vmap``
    differentiates them twice as autograd does, at the fused kernels'
    values to rounding. An instance norm that would update its running
    statistics (in training mode) is left as it is.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.layer_norm, torch.layer_norm):
            return _layer_norm(*args, **kwargs)
        if func is F.instance_norm:
            inputs = _INSTANCE_NORM.bind(*args, **kwargs)
            inputs.apply_defaults()
            values = inputs.arguments
            if not (values["use_input_stats"] and values["running_mean"] is not None):
                return _instance_norm(**values)
        return func(*args, **kwargs)


def _layer_norm(
    input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=None
):
    """``F.layer_norm`` (or ``torch.layer_norm``) by elementary operations.

    Half-precision inputs are normalised in float32, as the fused kernel does.
    """
    axes = tuple(range(-len(normalized_shape), 0))
    x = _at_least_float32(input)
    centred = x - x.mean(axes, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(axes, keepdim=True) + eps)
    out = out.to(input.dtype)
    out = out if weight is None else out * weight
    return out if bias is None else out + bias


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _instance_norm(
    input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
):
    """``F.instance_norm`` by elementary operations, statistics not updated."""
    per_channel = (1, -1) + (1,) * (input.ndim - 2)
    x = _at_least_float32(input)
    if use_input_stats:
        axes = tuple(range(2, input.ndim))
        mean = x.mean(axes, keepdim=True)
        var = (x - mean).square().mean(axes, keepdim=True)
    else:
        mean, var = running_mean.view(per_channel), running_var.view(per_channel)
    out = ((x - mean) * torch.rsqrt(var + eps)).to(input.dtype)
    out = out if weight is None else out * weight.view(per_channel)
    return out if bias is None else out + bias.view(per_channel)


def _trained(module: torch.nn.Module, params: dict) -> list[torch.Tensor]:
    """The tensors a ``backward()`` through the gradients reaches and trains.

    The parameters differentiated, and the module's other trainable ones:
    the gradients of a selection depend on the layers around it too.
    """
    leaves = [p for p in params.values() if p.requires_grad]
    seen = {id(p) for p in leaves}
    return leaves + [
        p
        for name, p in module.named_parameters()
        if p.requires_grad and name not in params and id(p) not in seen
    ]


def _differentiates_alike(grads: dict, looped: dict, leaves: list) -> bool:
    """Whether two sets of per-sample gradients have the same derivatives.

    Compares the derivatives, with respect to ``leaves`` (see
    :func:`_trained`), of one random combination of each, as training's
    ``backward()`` would take them.
    """
    if not leaves:
        return True
    generator = torch.Generator().manual_seed(0)
    weights = {
        name: torch.randn(
            g.shape, generator=generator, device="cpu", dtype=torch.float64
        ).to(g)
        for name, g in looped.items()
    }
    derivatives = []
    for found in grads, looped:
        combined = sum((weights[name] * g).sum() for name, g in found.items())
        derivatives.append(
            torch.autograd.grad(combined, leaves, retain_graph=True, allow_unused=True)
            if combined.requires_grad  # gradients that depend on the parameters
            else [None] * len(leaves)
        )
    error = scale = 0.0
    for a, b, p in zip(*derivatives, leaves, strict=True):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        error += float((a - b).double().square().sum())
        scale += float(b.double().square().sum())
    resolution = max(1e-4, 8 * torch.finfo(leaves[0].dtype).eps)
    return error <= resolution**2 * scale


def _row(tree, i: int):
    return tree_map(lambda t: t[i], tree)


def _looped(phi, params, samples, extra, extra_batched, create_graph):
    """The gradients of ``phi`` sample by sample, by autograd, stacked by parameter."""
    leaves = {
        name: p if p.requires_grad else p.detach().requires_grad_()
        for name, p in params.items()
    }
    rows = []
    with torch.enable_grad():
        for i in range(len(tree_leaves(samples)[0])):
            e = _row(extra, i) if extra_batched else extra
            value = phi(leaves, _row(samples, i), e)
            grads = torch.autograd.grad(
                value,
                list(leaves.values()),
                create_graph=create_graph,
                allow_unused=True,
            )
            rows.append(
                [
                    torch.zeros_like(p) if g is None else g
                    for g, p in zip(grads, leaves.values(), strict=True)
                ]
            )
    return {
        name: torch.stack([row[k] for row in rows]) for k, name in enumerate(leaves)
    }
