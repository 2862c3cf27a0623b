"""Relative sensitivity to diffeomorphisms and noise, layer by layer.

The definitions are on the theory page of the user guide.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.utils._pytree import tree_leaves
from torch.utils.data import Dataset

from .._engine.budget import (
    KEPT_MEMORY,
    check_kept_bytes,
    readable_bytes,
    rows_that_fit,
)
from .._engine.context import check_not_inference_mode, torch_seed
from .._engine.finite import NonFiniteNetworkError
from .._engine.inputs import (
    check_finite,
    explained_failures,
    is_dataset,
    split_item,
    take,
    to_tensor,
)
from .._engine.jacobian import DEFAULT_MAX_MEMORY
from .._layers import (
    check_finite_representations,
    check_layers,
    check_pool,
    layer_outputs,
)
from .._net import (
    fit_net,
    layer_resets,
    reset_of,
    resolve_device,
    resolve_module,
    training_input,
)
from .._typing import NetLike, Self
from .._validation import (
    check_map_style,
    check_net_input,
    check_not_streamed,
    check_positive_int,
    sample_shape,
    with_defaults,
)
from .diagnostics import _table, shuffle_conv_input_channels
from .diffeo import as_channels, check_deformation, deform
from .noise import check_noise_norm, noise_like

if TYPE_CHECKING:
    import pandas as pd

PROBE_INPUTS = "X, in the probe or its deformed or noisy copies"

STATISTICS = ("mean", "median")
VALUES = ("D", "G", "R", "deformation", "noise", "denominator")
COLUMNS = (
    "net",
    "layer",
    "depth",
    "D",
    "G",
    "R",
    "R_min",
    "R_max",
    "R_gstd",
    "deformation",
    "noise",
    "denominator",
)

# A task's own perturbation: (X_batch, random_state) -> X_deformed.
Deformation = Callable[[torch.Tensor, np.random.RandomState], ArrayLike]
# The network at initialisation: "reinitialized", a state_dict or a network.
Reference = str | Mapping[str, torch.Tensor] | NetLike


def _probe_rows(n: int, n_probe: int, rng) -> np.ndarray:
    """The rows of ``n`` inputs the probe takes: ``n_probe`` drawn, or all."""
    if n > n_probe:
        return np.sort(rng.choice(n, n_probe, replace=False))
    return np.arange(n)


def _purpose_rngs(random_state) -> tuple[np.random.RandomState, ...]:
    """Generators of the probe, the re-initialisations and the shuffles.

    The probe draws from ``random_state`` itself; the others from seeds of
    their own, drawn from a copy of it, so that what the probe draws (its
    size, the deformation) leaves the copies and the shuffles unchanged.
    """
    rng = check_random_state(random_state)
    seeds = copy.deepcopy(rng).randint(2**31 - 1, size=2)
    return rng, *(np.random.RandomState(seed) for seed in seeds)


class _Probe:
    """The probe inputs and their perturbations, drawn once, served in batches.

    With ``rng`` fresh, the perturbations are those of
    ``sample_diffeo(n, n_fields=len(X), random_state=rng)`` then
    ``matched_noise(X, tau X, random_state=rng)`` (after the subset draw when
    ``X`` has more than ``n_probe`` samples).
    """

    def __init__(
        self,
        X: np.ndarray | torch.Tensor,
        n_probe: int,
        delta: float,
        cutoff: int,
        interp: str,
        noise_norm: str | float,
        deformation: Deformation | None,
        device: torch.device,
        max_memory: int | None,
        rng: np.random.RandomState,
    ) -> None:
        _check_not_dicts(X)
        check_not_streamed(X)
        dataset = is_dataset(X)
        if dataset:  # only the probe's items are read
            check_map_style(X)
        else:  # only the probe's rows are copied
            X = X if isinstance(X, torch.Tensor) else np.asarray(X)
            check_finite(X)
        if min(len(X), n_probe) < 2:
            raise ValueError(
                "The sensitivity needs at least 2 samples (pairs of distinct inputs "
                f"set the scale); got {len(X)} sample(s) and n_probe={n_probe}."
            )
        self.rows = rows = _probe_rows(len(X), n_probe, rng)  # of the inputs given
        X = take(X, rows)
        if dataset:
            _check_not_dicts(split_item(X[0])[0])
            X = to_tensor(X, torch.device("cpu"), torch.float64)
            check_finite(X)
        X = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.asarray(X))
        if X.is_complex():
            raise ValueError(
                "Complex inputs are not measured (the sensitivity deforms and "
                "compares real float64 inputs): pass their real and imaginary "
                "parts as channels."
            )
        as_channels(X)  # validates the shape
        if X.shape[-1] < 3:
            warnings.warn(
                f"Signals and images of {X.shape[-1]} value(s) a side: the "
                "deformations fix the border, so they move nothing: D and G are 0 "
                "and R is NaN. Give inputs of at least 3 values a side.",
                UserWarning,
                stacklevel=3,
            )
        _check_probe_bytes(3 * X.numel() * 8, max_memory)  # before they are made
        self.X = X = X.detach().to(device, torch.float64)
        self.batch_size = len(X)  # see fit_batches
        if deformation is None:
            TX = deform(X, delta, cutoff, interp, rng)
        else:
            # a copy: a deformation that edits its argument leaves the clean X
            TX = torch.as_tensor(
                deformation(X.clone(), rng), dtype=X.dtype, device=X.device
            )
            if TX.shape != X.shape:
                raise ValueError(
                    "deformation must return an array of the input's shape "
                    f"{tuple(X.shape)}; got {tuple(TX.shape)}."
                )
        self.TX = TX
        self.NX = noise_like(X, TX, noise_norm, rng).add_(X)

    def fit_batches(
        self, model: torch.nn.Module, layers, pool, statistic, batch_size, max_memory
    ) -> None:
        """Serve batches of ``batch_size`` inputs at most, within ``max_memory``.

        A pass over the first input's three versions measures what an input
        takes: its representations at the layers measured, and the forward
        pass's working memory (a module's output twice, or a convolution's
        output and its unfolded input, at their largest). The probe set, and
        for the median every input's representations, may take two thirds of
        ``max_memory`` (a MemoryError past them); a batch takes the third.
        """
        self.batch_size = batch_size
        if max_memory is None:
            return
        working = 0  # the forward pass's, at its largest

        def record(module, inputs, output):
            nonlocal working
            made = sum(
                t.numel() * t.element_size()
                for t in tree_leaves(output)
                if isinstance(t, torch.Tensor)
            )
            working = max(working, 2 * made)
            if isinstance(module, torch.nn.modules.conv._ConvNd):
                unfolded = _unfolded_bytes(module, inputs[0], output)
                working = max(working, made + unfolded)

        hooks = [m.register_forward_hook(record) for m in model.modules()]
        try:
            triple = torch.cat([self.X[:1], self.TX[:1], self.NX[:1]])
            with explained_failures(lambda: tuple(self.X.shape[1:])):
                outputs = next(
                    _float64_errors(layer_outputs(model, [triple], layers, pool))
                )
        finally:
            for hook in hooks:
                hook.remove()
        represented = sum(f.numel() * f.element_size() for f in outputs.values())
        if statistic == "median":
            kept = 3 * self.X.numel() * self.X.element_size()
            _check_probe_bytes(kept + len(self.X) * represented, max_memory, True)
        per_input = represented + working
        if per_input > KEPT_MEMORY * max_memory:
            fewer = (
                ', measure fewer layers, or pool them (pool="mean")'
                if represented > working
                else ""
            )
            raise MemoryError(
                "One probe input, deformed and noisy, takes "
                f"{readable_bytes(per_input)} through the network (its "
                "representations at the layers measured, "
                f"{readable_bytes(represented)}, and the forward pass's working "
                "memory: its largest output twice, or a convolution's output "
                "and unfolded input), more than a third "
                f"of max_memory ({readable_bytes(KEPT_MEMORY * max_memory)}): "
                f"raise max_memory (above {3 * per_input} bytes){fewer}."
            )
        self.batch_size = rows_that_fit(KEPT_MEMORY * max_memory, per_input, batch_size)

    def _slices(self):
        for start in range(0, len(self.X), self.batch_size):
            yield slice(start, start + self.batch_size)

    def clean(self) -> Iterator[torch.Tensor]:
        """Yield batches of copies of the clean inputs.

        Copies: a network may change its inputs in place (``x /= 255``).
        """
        for rows in self._slices():
            yield self.X[rows].clone()

    def triples(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, tau x, x + eta)`` batches."""
        for rows in self._slices():
            yield self.X[rows], self.TX[rows], self.NX[rows]


def _unfolded_bytes(conv, x: torch.Tensor, out: torch.Tensor) -> int:
    """The bytes of a convolution's input unfolded to its output positions.

    A float64 convolution on the CPU forms this matrix (the input's channels
    times the kernel's size, per output position): it may take many times
    the layer's output.
    """
    positions = math.prod(out.shape[2:]) * out.shape[0]
    return x.shape[1] * math.prod(conv.kernel_size) * positions * x.element_size()


def _check_not_dicts(X) -> None:
    """A ValueError for dict inputs, or a dataset's dict items."""
    if isinstance(X, Mapping):
        raise ValueError(
            "Dict inputs are not supported (here a dict of "
            f"{sorted(X)[:5]}): deformations and noise act on one array of "
            "images or signals; pass that array (a dataset of dict items: one "
            "whose items are the images)."
        )


def _check_probe_bytes(kept: int, max_memory: int | None, median: bool = False) -> None:
    """A MemoryError past two thirds of ``max_memory`` for the probe set kept.

    ``median``: the median's representations of every probe input are kept
    too.
    """
    if max_memory is None:
        return
    check_kept_bytes(
        kept,
        max_memory,
        "The probe inputs with their deformed and noisy copies"
        + (", and the median's representations of all three," if median else ""),
        "raise max_memory, lower n_probe"
        + (
            ', measure fewer layers, pool them (pool="mean") or use statistic="mean".'
            if median
            else "."
        ),
    )


class _Moments:
    """Per-layer sums for the ``mean`` statistic (Chan's pairwise update).

    Representations are shifted by the first one seen, so that a constant
    representation has a spread of exactly zero (not a rounding error).
    """

    def __init__(self) -> None:
        self.count = 0
        self.tau = 0.0
        self.eta = 0.0
        self.shift = None
        self.mean = None
        self.m2 = 0.0

    def add(self, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> None:
        self.tau += float((f1 - f0).square().sum())
        self.eta += float((f2 - f0).square().sum())
        if self.shift is None:
            self.shift = f0[0].clone()
        f0 = f0 - self.shift
        nb = len(f0)
        mean_b = f0.mean(0)
        m2_b = float((f0 - mean_b).square().sum())
        if self.mean is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            diff = mean_b - self.mean
            total = self.count + nb
            self.m2 += m2_b + float(diff.square().sum()) * self.count * nb / total
            self.mean = self.mean + diff * nb / total
        self.count += nb

    def result(self) -> tuple[float, float, float]:
        n = self.count
        # mean over ordered pairs i != j of |f_i - f_j|^2 = 2 sum |f_i - m|^2 / (n-1)
        return self.tau / n, self.eta / n, 2.0 * self.m2 / (n - 1)


class _Medians:
    """Per-layer arrays for the ``median`` statistic."""

    def __init__(self) -> None:
        self.parts = ([], [], [])

    def add(self, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> None:
        for part, t in zip(
            self.parts, ((f1 - f0).square(), (f2 - f0).square(), f0), strict=True
        ):
            part.append(t.cpu())

    def result(self) -> tuple[float, float, float]:
        tau, eta, f = (torch.cat(p).numpy() for p in self.parts)
        n = len(f)
        ft = torch.from_numpy(f)
        dist = torch.cdist(ft, ft, compute_mode="donot_use_mm_for_euclid_dist")
        pairs = dist.square().numpy()[np.triu_indices(n, k=1)]
        return (
            float(np.median(tau, 0).sum()),
            float(np.median(eta, 0).sum()),
            float(np.median(pairs)),
        )


def _measure(model: torch.nn.Module, probe: _Probe, layers, pool, statistic):
    """``{layer: (tau, eta, denominator)}`` for one network.

    Representations that are not finite raise a
    :class:`~sksim.NonFiniteNetworkError` naming the inputs' rows.
    """
    stats: dict[str, _Moments | _Medians] = {}
    batches = (torch.cat(triple) for triple in probe.triples())
    start = 0
    for reps in _float64_errors(layer_outputs(model, batches, layers, pool)):
        for name, f in reps.items():
            parts = f.chunk(3)
            try:
                for part in parts:
                    check_finite_representations(name, part)
            except NonFiniteNetworkError as error:
                rows = probe.rows[start : start + len(parts[0])]
                raise error.moved(rows, PROBE_INPUTS) from None
            acc = stats.setdefault(
                name, _Moments() if statistic == "mean" else _Medians()
            )
            acc.add(*parts)
        start += len(parts[0])
        del reps, f, parts  # freed before the next batch's are made
    return {name: acc.result() for name, acc in stats.items()}


# what torch says when a forward pass mixes float32 and float64 tensors
DTYPE_MISMATCHES = ("should be the same", "expected scalar type", "same dtype")


def _float64_errors(outputs: Iterator) -> Iterator:
    """``outputs``, a forward pass's error over dtypes explained.

    The network is measured as a float64 copy, on float64 inputs: a forward
    pass that casts its inputs to float32 fails inside torch.
    """
    try:
        yield from outputs
    except RuntimeError as error:
        if not any(text in str(error) for text in DTYPE_MISMATCHES):
            raise
        raise TypeError(
            "The sensitivity is measured on a float64 copy of the network, with "
            "float64 inputs (ratios of small differences stay exact), and its "
            f"forward pass failed there: {error}. Does it cast its inputs to "
            "float32 (x.float())? Cast them to its weights' dtype instead, e.g. "
            "x.to(self.fc.weight.dtype). Does it hold a float32 tensor as a plain "
            "attribute? Register it as a buffer (self.register_buffer), which "
            "the copy converts."
        ) from error


#: Hooks computing a weight from parameters ``reset_parameters`` does not reach.
WEIGHT_HOOKS = (WeightNorm, SpectralNorm)


def _unreset_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that no ``reset_parameters`` re-initialises.

    Those of modules without the method, and those behind the weights that
    ``torch.nn.utils.weight_norm`` and ``spectral_norm`` compute (the method
    draws into the computed weight, which their hook overwrites).
    """
    names = []
    for mname, sub in model.named_modules():
        computed = [
            hook.name
            for hook in sub._forward_pre_hooks.values()
            if isinstance(hook, WEIGHT_HOOKS)
        ]
        names += [
            f"{mname}.{p}" if mname else p
            for p, _ in sub.named_parameters(recurse=False)
            if reset_of(sub) is None
            or any(p.startswith(f"{name}_") for name in computed)
        ]
    return names


def fresh_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deep copy re-initialised by every submodule's own initialisation."""
    fresh = copy.deepcopy(model)
    with torch_seed(seed, exclusive=True):
        for reset in layer_resets(fresh):
            reset()
    return fresh


class _Reached(Exception):
    """The layer being calibrated has run: the rest of the forward pass is skipped."""


def calibrate_batchnorm(
    model: torch.nn.Module, batches: Callable[[], Iterable[torch.Tensor]]
) -> None:
    """Set BatchNorm running statistics to the statistics of the probe set.

    Layer by layer, in the order the network runs them, each gets the mean and
    variance of its input over all the batches ``batches()`` yields, the
    layers before it normalising with theirs: every layer then normalises as
    in training mode with the whole probe set as one batch, whatever the batch
    size. One pass over the batches per layer, each stopped once the layer
    has run.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
    ]
    if not norms:
        return
    modes = {sub: sub.training for sub in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for norm in _execution_order(model, norms, batches):
                _set_statistics(model, norm, batches)
    finally:
        for sub, training in modes.items():
            sub.training = training


def _execution_order(model, norms, batches) -> list[torch.nn.Module]:
    """``norms`` in the order a forward pass of the first batch calls them."""
    called = []
    hooks = [
        norm.register_forward_pre_hook(lambda m, _: called.append(m)) for norm in norms
    ]
    try:
        model(next(iter(batches())))
    finally:
        for hook in hooks:
            hook.remove()
    order = list(dict.fromkeys(called))  # a layer called twice counts once
    return order + [norm for norm in norms if norm not in order]


def _set_statistics(model, norm, batches) -> None:
    """Set ``norm``'s statistics to those of its input over all the batches."""
    shift, parts = None, []  # per batch: count, sum, sum of squares, shifted

    def accumulate(_module, inputs):
        nonlocal shift
        x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
        if shift is None:
            shift = x.mean(1, keepdim=True)  # for a stable variance
        x = x - shift
        parts.append((x.shape[1], x.sum(1), (x * x).sum(1)))
        raise _Reached

    hook = norm.register_forward_pre_hook(accumulate)
    try:
        for x in batches():
            try:
                model(x)
            except _Reached:
                pass
    finally:
        hook.remove()
    if not parts:
        return  # the layer did not run: its statistics stay
    n = sum(count for count, _, _ in parts)
    mean = sum(total for _, total, _ in parts) / n
    variance = sum(squares for _, _, squares in parts) / n - mean**2
    norm.running_mean.copy_(mean + shift[:, 0])
    norm.running_var.copy_(variance.clamp_min(0))


def _reinitialized(model: torch.nn.Module, n_init, rng) -> Iterator[torch.nn.Module]:
    """``n_init`` re-initialised copies, made one at a time (seeds drawn now)."""
    unreset = _unreset_parameters(model)
    if unreset:
        warnings.warn(
            f"Parameters {unreset} are not re-initialised by a reset_parameters "
            "(or _reset_parameters) method (their modules have none, or they "
            "are behind a weight that "
            "weight_norm or spectral_norm computes), so the initialised copies "
            "keep their trained values; give those modules a reset_parameters "
            "method that re-initialises them.",
            UserWarning,
            stacklevel=3,
        )
    seeds = rng.randint(2**31 - 1, size=n_init)
    return (fresh_copy(model, int(seed)) for seed in seeds)


def _given_state(model: torch.nn.Module, reference) -> torch.nn.Module:
    if not isinstance(reference, Mapping):
        return _float64_copy(resolve_module(reference), _device_of(model))
    state = copy.deepcopy(model)
    try:
        state.load_state_dict(reference)
    except RuntimeError as exc:
        raise ValueError(
            f"The reference state_dict does not fit the network: {exc}"
        ) from exc
    return state


def _reference_nets(model, reference, n_init, probe, rng) -> Iterator[torch.nn.Module]:
    """The nets at initialisation, their BatchNorm calibrated on the probe set.

    Made one at a time, as they are measured.
    """
    if isinstance(reference, str):
        nets = _reinitialized(model, n_init, rng)
    else:
        nets = iter([_given_state(model, reference)])
    for net in nets:
        calibrate_batchnorm(net, probe.clean)
        yield net


def _device_of(model: torch.nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _float64_copy(module: torch.nn.Module, device) -> torch.nn.Module:
    return copy.deepcopy(module).to(device=device, dtype=torch.float64)


def _ratios(tau, eta, den):
    """``VALUES`` of one layer of one net."""
    d = tau / den if den > 0 else np.nan
    g = eta / den if den > 0 else np.nan
    r = tau / eta if eta > 0 else np.nan
    return d, g, r, tau, eta, den


def _rows(tag, runs, order):
    """One row per layer: geometric means over the nets ``runs`` and R's spread.

    ``runs`` holds one ``{layer: (tau, eta, denominator)}`` per net measured.
    """
    rows = []
    for depth, name in enumerate(order):
        values = np.array([_ratios(*run[name]) for run in runs], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(values)
            r_gstd = np.exp(np.std(logs[:, 2], ddof=1)) if len(runs) > 1 else np.nan
            means = np.exp(logs.mean(axis=0))
        row = dict(zip(VALUES, means, strict=True), net=tag, layer=name, depth=depth)
        row.update(R_min=values[:, 2].min(), R_max=values[:, 2].max(), R_gstd=r_gstd)
        rows.append(row)
    return rows


def check_params(options: Mapping) -> None:
    """Raise on an invalid argument of :func:`relative_sensitivity`, before any work.

    ``options`` maps its keyword arguments to values; those not given take
    its defaults.
    """
    o = with_defaults(relative_sensitivity, options)
    check_deformation(o["delta"], o["cutoff"], o["interp"])
    if o["delta"] == 0:
        raise ValueError(
            "delta=0 deforms nothing: the noise of the same norm is zero too, and "
            "R = D / G is 0 / 0. Give a typical displacement above 0."
        )
    check_positive_int(o["n_probe"], "n_probe")
    check_positive_int(o["n_init"], "n_init")
    check_positive_int(o["batch_size"], "batch_size")
    check_positive_int(o["max_memory"], "max_memory", allow_none=True)
    check_noise_norm(o["noise_norm"])
    if not isinstance(o["noise_norm"], str) and o["noise_norm"] == 0:
        raise ValueError(
            "noise_norm=0 adds no noise: G is 0, and R = D / G undefined. Give "
            'a norm above 0, or "per_sample" (that of each deformation).'
        )
    check_pool(o["pool"])
    check_layers(o["layers"])
    statistic, deformation = o["statistic"], o["deformation"]
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}; got {statistic!r}.")
    if deformation is not None and not callable(deformation):
        raise ValueError(
            "deformation must be None (max-entropy diffeomorphisms) or a callable "
            f"(X_batch, random_state) -> X_deformed; got {deformation!r}."
        )
    _check_reference(o["reference"])


def _check_reference(reference) -> None:
    message = (
        'reference must be "reinitialized", None, a state_dict or the network '
        "(torch.nn.Module, skorch net) at initialisation; got {!r}."
    )
    if isinstance(reference, str) and reference != "reinitialized":
        raise ValueError(message.format(reference))
    if reference is None or isinstance(reference, str | Mapping):
        return
    try:
        resolve_module(reference)
    except TypeError as exc:
        raise ValueError(message.format(reference)) from exc


def relative_sensitivity(
    net: NetLike,
    X: np.ndarray | torch.Tensor | Dataset,
    layers: str | Sequence[str] = "output",
    delta: float = 1.0,
    cutoff: int = 3,
    interp: str = "linear",
    n_probe: int = 500,
    statistic: str = "mean",
    noise_norm: str | float = "per_sample",
    reference: Reference | None = "reinitialized",
    n_init: int = 5,
    shuffled: bool = False,
    pool: str = "flatten",
    deformation: Deformation | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    random_state: int | np.random.RandomState | None = None,
) -> pd.DataFrame | dict[str, np.ndarray]:
    """Sensitivity of each layer to smooth deformations relative to noise.

    For a representation ``f`` (a layer's activations, flattened), inputs
    ``x, z`` of the probe set, a max-entropy deformation ``tau`` and noise
    ``eta`` of matched norm (see the theory page of the user guide)::

        D = E|f(tau x) - f(x)|^2 / E|f(x) - f(z)|^2
        G = E|f(x + eta) - f(x)|^2 / E|f(x) - f(z)|^2
        R = D / G

    The denominator averages over pairs ``x != z`` of the probe set. One
    deformation and one noise draw per probe input, shared by every network
    measured. Computed in float64, in eval mode, without gradients, in
    batches on the network's device.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The trained network, taking inputs shaped like ``X``.
    X : ndarray or tensor of shape (n, C, H, W), (n, H, W) or (n, L), or Dataset
        Probe inputs in the network's input space (after any normalisation):
        square images, or signals (2-D ``X``, deformed along their one axis);
        of a map-style torch dataset, only the ``n_probe`` items drawn are read.
    layers : "output", "all", str or list of str, default="output"
        Which representations: the output; ``"all"`` (the input, every leaf
        module in execution order, then the output); or names: ``"input"``,
        ``"output"``, module names (``dict(net.named_modules())``, captured
        with forward hooks) or, for functional operations, ``torch.fx`` node
        names of the traced network.
    delta : float, default=1.0
        Typical displacement in pixels; ``T = 4 delta^2 / (pi n^2 ln c)`` for
        images, ``T = 2 delta^2 / (n^2 sum_{i <= c} 1 / i^2)`` for signals
        ``(n, L)``.
    cutoff : int, default=3
        Highest wave number ``c`` of the deformations; at least 2 for images
        (their temperature divides by ``ln c``).
    interp : {"linear", "nearest", "gaussian"}, default="linear"
        Interpolation of the deformed images (see :func:`apply_diffeo`).
    n_probe : int, default=500
        Probe inputs, drawn at random without replacement when ``X`` is larger.
    statistic : {"mean", "median"}, default="mean"
        ``"mean"``: means of squared norms. ``"median"``: numerators are the
        coordinate-wise medians of squared differences, summed; the
        denominator is the median squared distance over pairs. The two give
        different numbers (a trained net's ``R`` by a factor 3): compare
        numbers only at one statistic.
    noise_norm : {"per_sample", "batch_mean"} or float, default="per_sample"
        Norm of the noise (see :func:`matched_noise`).
    reference : "reinitialized", None, dict or network, default="reinitialized"
        The network at initialisation, measured in the ``"init"`` rows.
        ``"reinitialized"``: ``n_init`` copies re-initialised under seeds
        drawn from ``random_state`` (the same copies for every network
        measured with that seed); a state_dict (loaded into a copy of
        ``net``) or a network (torch.nn.Module or skorch net): the network's
        actual initial state, one row per layer; None: no ``"init"`` rows.
    n_init : int, default=5
        Re-initialised copies (``reference="reinitialized"``); their
        ``deformation``, ``noise``, ``denominator``, ``D``, ``G`` and ``R``
        are combined by geometric means.
    shuffled : bool, default=False
        Also measure the trained net with the input channels of every conv
        filter shuffled (:func:`shuffle_conv_input_channels`).
    pool : {"flatten", "mean", "max", "channel_mean"}, default="flatten"
        How representations of shape ``(B, C, ...)`` (or token sequences
        ``(B, T, E)``, see :func:`~sksim.representations.extract_representations`)
        are reduced before measuring: kept whole (``"flatten"``), averaged or
        maximised over positions (``"mean"``, ``"max"``: one value per channel)
        or averaged over channels (``"channel_mean"``: one value per position).
    deformation : callable, default=None
        A task's own perturbation ``deformation(X, random_state) -> X'``, called
        once on a copy of the float64 probe set on the device with a
        ``RandomState``; replaces the max-entropy diffeomorphisms (``delta``,
        ``cutoff`` and ``interp`` are then unused). See
        :func:`sksim.datasets.scale_detection_perturbation`.
    batch_size : int, default=64
        Probe inputs per forward pass at most (each pass holds ``3 *
        batch_size``); fewer where their representations would take more
        than a third of ``max_memory``.
    device : str or torch.device, default=None
        Where to compute; None keeps the network's device. Elsewhere a copy
        of the network computes; the network itself does not move.
    max_memory : int or None, default=2 GiB
        Bytes the probe set (with its deformed and noisy copies, and, for
        the median, every probe input's representations) may take, two
        thirds at most (a MemoryError past them), and one pass's
        representations, the last third; None: no bound. The network's
        float64 copies (the trained one and one reference at a time) come on
        top.
    random_state : int, RandomState instance or None, default=None
        Seeds the probe subset, deformations and noise, and, from seeds of
        their own, the re-initialisations and the channel shuffles: the
        copies and the shuffles do not change with the probe or the
        deformation.

    Returns
    -------
    table : pandas.DataFrame (dict of ndarrays without pandas)
        One row per (net, layer): ``net`` (``"trained"``, ``"init"``,
        ``"shuffled"``), ``layer``, ``depth`` (position in ``layers``), ``D``,
        ``G``, ``R``, the smallest and largest ``R`` over the nets of the row
        (``R_min``, ``R_max``: the spread over the re-initialised copies;
        equal to ``R`` for one net) and their geometric standard deviation
        ``R_gstd`` (``exp`` of the standard deviation of ``log R``; NaN for
        one net), the numerators ``deformation`` and ``noise`` and the
        ``denominator``. Layers whose representation is constant on the probe
        set get NaN ``D`` and ``G`` (with a warning).

    Notes
    -----
    The re-initialised copies are deep copies of the trained module on which
    every submodule's ``reset_parameters`` (``nn.MultiheadAttention``'s
    ``_reset_parameters``) is called (under a seed from ``random_state``);
    parameters of modules without that method are not
    re-initialised (a warning names them). ``R`` at initialisation varies
    much between initialisations (16-fold between seeds for the
    scale-detection CNN of the user guide): pass the trained network's own
    initial state as ``reference`` to compare each net with where it started.
    The BatchNorm layers of the reference nets use batch statistics: those of
    the clean probe set, accumulated in one pass and then frozen, so that
    ``x``, ``tau x`` and ``x + eta`` see the same normalisation.

    References
    ----------
    .. [1] L. Petrini, A. Favero, M. Geiger, M. Wyart, "Relative stability
       toward diffeomorphisms indicates performance in deep nets", NeurIPS 2021.
    .. [2] U. M. Tomasini, L. Petrini, F. Cagnetta, M. Wyart, "How deep
       convolutional neural networks lose spatial information with training",
       2023, section 3.

    Examples
    --------
    >>> import copy, torch
    >>> from sksim.sensitivity import relative_sensitivity
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(144, 2))
    >>> X = torch.randn(20, 1, 8, 8)
    >>> table = relative_sensitivity(net, X, layers=["input", "1"], n_init=2,
    ...                              random_state=0)
    >>> table[["net", "layer"]].values.tolist()
    [['trained', 'input'], ['trained', '1'], ['init', 'input'], ['init', '1']]
    >>> round(float(table["R"].iloc[0]), 9)  # matched noise: R = 1 on the input
    1.0
    >>> initial = copy.deepcopy(net.state_dict())  # before training
    >>> table = relative_sensitivity(net, X, reference=initial, random_state=0)
    >>> table["net"].tolist()
    ['trained', 'init']
    """
    check_params(locals())  # the arguments, before any work
    check_not_inference_mode()
    probe_rng, init_rng, shuffle_rng = _purpose_rngs(random_state)
    device = resolve_device(net, device)
    probe = _Probe(
        X,
        n_probe,
        delta,
        cutoff,
        interp,
        noise_norm,
        deformation,
        device,
        max_memory,
        probe_rng,
    )
    model = _float64_copy(resolve_module(net), device)
    # made first: a network without convolutions is refused before any work
    model_s = shuffle_conv_input_channels(model, shuffle_rng) if shuffled else None
    probe.fit_batches(model, layers, pool, statistic, batch_size, max_memory)
    trained = _measure(model, probe, layers, pool, statistic)
    order = list(trained)
    rows = _rows("trained", [trained], order)
    if reference is not None:
        nets = _reference_nets(model, reference, n_init, probe, init_rng)
        runs = [_measure(fresh, probe, order, pool, statistic) for fresh in nets]
        rows += _rows("init", runs, order)
    if model_s is not None:
        rows += _rows(
            "shuffled", [_measure(model_s, probe, order, pool, statistic)], order
        )
    constant = sorted({r["layer"] for r in rows if not r["denominator"] > 0})
    if constant:
        warnings.warn(
            f"Layers {constant} have a constant representation on the probe set "
            "for some net: their D and G are NaN (R = deformation / noise is "
            "defined where the deformations or the noise change it).",
            UserWarning,
            stacklevel=2,
        )
    return _table({c: [r[c] for r in rows] for c in COLUMNS})


class DiffeoSensitivity(BaseEstimator):
    """Layer-wise relative sensitivity to diffeomorphisms, as an estimator.

    ``fit(X, y)`` trains the net if it is an unfitted skorch net (on ``X, y``)
    and measures :func:`relative_sensitivity` on ``X_probe`` when given, on
    ``X`` otherwise; ``score(X)`` returns ``-R`` of the trained net's output on
    new inputs (greater is better, as scikit-learn expects), so that
    ``cross_validate`` audits how relatively stable a network is across folds.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The network; an unfitted skorch net is cloned and trained by ``fit``.
    layers, delta, cutoff, interp, n_probe, statistic, noise_norm, reference, \
n_init, shuffled, pool, deformation, batch_size, device, max_memory
        As in :func:`relative_sensitivity`.
    random_state : int, RandomState instance or None, default=None
        Seeds the training of an unfitted skorch net and the measurement.

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network.
    results_ : pandas.DataFrame or dict of ndarrays
        The table of :func:`relative_sensitivity` on the probe inputs.
    n_features_in_ : int
        Size of the second axis of ``X``.

    References
    ----------
    .. [1] L. Petrini et al., "Relative stability toward diffeomorphisms
       indicates performance in deep nets", NeurIPS 2021.

    Examples
    --------
    >>> import torch
    >>> from sksim.sensitivity import DiffeoSensitivity
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Tanh())
    >>> X = torch.randn(10, 1, 8, 8).numpy()
    >>> est = DiffeoSensitivity(net, n_init=2, random_state=0).fit(X)
    >>> est.results_["net"].tolist()
    ['trained', 'init']
    """

    def __init__(
        self,
        net: NetLike,
        layers: str | Sequence[str] = "output",
        delta: float = 1.0,
        cutoff: int = 3,
        interp: str = "linear",
        n_probe: int = 500,
        statistic: str = "mean",
        noise_norm: str | float = "per_sample",
        reference: Reference | None = "reinitialized",
        n_init: int = 5,
        shuffled: bool = False,
        pool: str = "flatten",
        deformation: Deformation | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.net = net
        self.layers = layers
        self.delta = delta
        self.cutoff = cutoff
        self.interp = interp
        self.n_probe = n_probe
        self.statistic = statistic
        self.noise_norm = noise_norm
        self.reference = reference
        self.n_init = n_init
        self.shuffled = shuffled
        self.pool = pool
        self.deformation = deformation
        self.batch_size = batch_size
        self.device = device
        self.max_memory = max_memory
        self.random_state = random_state

    def _options(self, **overrides):
        """The parameters of :func:`relative_sensitivity`, with ``overrides``."""
        options = self.get_params(deep=False)
        del options["net"]
        return {**options, **overrides}

    def fit(
        self, X: ArrayLike, y: ArrayLike | None = None, X_probe: ArrayLike | None = None
    ) -> Self:
        """Train the net if needed and measure its sensitivities.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W), (n_samples, H, W) or \
(n_samples, L)
            Training inputs of an unfitted skorch net, and the probe inputs
            when ``X_probe`` is None; or a map-style torch ``Dataset`` of them.
        y : array-like of shape (n_samples,), default=None
            Targets, needed only to train an unfitted skorch net on arrays or
            on a Dataset whose items carry no labels.
        X_probe : array-like shaped like ``X``, default=None
            Inputs to measure on, e.g. held out from training; None measures
            on ``X``.

        Returns
        -------
        self : object
        """
        check_params(self._options())
        X_net = training_input(self.net, X)
        X = check_net_input(X, self, reset=True)
        probe = (
            X
            if X_probe is None
            else check_net_input(X_probe, self, reset=False, input_name="X_probe")
        )
        self._sample_shape = sample_shape(probe)
        self.net_ = fit_net(
            self.net, X if X_net is None else X_net, y, self.random_state
        )
        self.results_ = relative_sensitivity(self.net_, probe, **self._options())
        return self

    def score(self, X: ArrayLike, y: Any = None) -> float:
        """Minus the relative sensitivity ``R`` of the trained net's output on X.

        Parameters
        ----------
        X : array-like or Dataset
            Probe inputs, with the channels of ``fit``'s (other image sizes
            where the network takes them).
        y : ignored

        Returns
        -------
        score : float
            ``-R`` (greater means more stable to deformations than to noise).
        """
        check_is_fitted(self)
        # n_features_in_ counts the channels of (n, C, H, W) images, the rows of
        # (n, H, W) ones, which may take other sizes too
        rows = len(self._sample_shape) == 2
        X = check_net_input(X, None if rows else self, reset=False)
        if len(sample_shape(X)) != len(self._sample_shape):
            raise ValueError(
                f"X has samples of shape {sample_shape(X)}, but fit measured "
                f"samples of shape {self._sample_shape}: score inputs with the "
                "same axes."
            )
        options = self._options(layers="output", reference=None, shuffled=False)
        try:
            table = relative_sensitivity(self.net_, X, **options)
        except ValueError as error:  # a network that takes one image size
            failed = error.__cause__
            if sample_shape(X) == self._sample_shape or not isinstance(
                failed, RuntimeError
            ):
                raise
            raise ValueError(
                f"The network failed on samples of shape {sample_shape(X)}; fit "
                f"measured samples of shape {self._sample_shape}: score inputs of "
                f"that shape ({failed})."
            ) from failed
        return -float(np.asarray(table["R"])[0])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
