"""How the engine runs a network: evaluation mode, a device copy, a seed."""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel


def check_device(device, float64: bool = True) -> torch.device:
    """``device`` as a torch device that this machine has; a ValueError otherwise.

    ``float64``: whether the work needs float64 tensors there, which MPS lacks.
    """
    try:
        checked = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{device!r} is not a torch device: {error}") from None
    if checked.type == "cuda":
        count = torch.cuda.device_count()
        if (checked.index or 0) >= count:
            raise ValueError(
                f"device={device!r}, but this machine has {count} CUDA device(s): "
                'use device="cpu", or one of them.'
            )
    elif checked.type == "mps" and float64:
        raise ValueError(
            f"device={device!r}: MPS has no float64 tensors, in which sksim "
            'computes similarities: use device="cpu", or a CUDA GPU.'
        )
    elif checked.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but MPS is not available here.")
    elif checked.type == "meta":
        raise ValueError(
            f"device={device!r} holds no values: compute on the CPU or a GPU."
        )
    return checked


def uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module that ``torch.compile`` wrapped, else ``module`` itself.

    The same parameters and computation, whose layers' calls the engine's hooks
    see (a compiled graph hides them).
    """
    original = getattr(module, "_orig_mod", None)
    return original if isinstance(original, torch.nn.Module) else module


# Layers that may renormalise the rows they look up in place (``max_norm``) and
# scale their gradients by the frequency of their indices
EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def on_device(module: torch.nn.Module, device) -> torch.nn.Module:
    """``module`` itself if it lives on ``device``, else a copy moved there.

    The caller's network (a skorch net's ``module_`` too) never changes device,
    nor its weights: an ``Embedding`` or ``EmbeddingBag`` with ``max_norm``,
    which renormalises the rows it looks up in place at every forward pass,
    is computed on a copy. The copy's parameters and buffers are made on
    ``device`` directly (a copy where they are first would take twice a GPU
    network's memory on its GPU), those shared staying shared.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tensors = itertools.chain(module.parameters(), module.buffers())
    renormalises = any(
        isinstance(layer, EMBEDDINGS) and layer.max_norm is not None
        for layer in module.modules()
    )
    if all(t.device == device for t in tensors) and not renormalises:
        return module
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if type(t) in (torch.nn.Parameter, torch.Tensor) and id(t) not in memo:
            moved = t.detach().to(device, copy=True).requires_grad_(t.requires_grad)
            if type(t) is torch.nn.Parameter:
                moved = torch.nn.Parameter(moved, requires_grad=t.requires_grad)
            memo[id(t)] = moved
    return copy.deepcopy(module, memo).to(device)


class _ProcessWideSetting:
    """A context of process-wide settings that blocks in several threads share.

    The first block to start enters ``context()``, the last to end leaves it:
    blocks that overlap in time leave the settings as they were before all.
    """

    def __init__(self, context):
        self._context = context
        self._lock = threading.Lock()
        self._users = 0
        self._stack = contextlib.ExitStack()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._stack.enter_context(self._context())
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._stack.close()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS and one OpenMP thread for the calling thread's small-matrix work.

    OpenMP's thread count is the calling thread's own, limited and restored
    in it. OpenBLAS's is the process's, and only the main thread changes it:
    set from another thread, OpenBLAS ignores every later change made from
    the others while that thread lives, so that a count set by one of a pool's
    threads could not be restored by another, nor by the user's main thread.
    """
    main = threading.current_thread() is threading.main_thread()
    with threadpool_limits(limits=1, user_api=None if main else "openmp"):
        yield


# torch.func has batching rules for the math kernel of attention, not for the
# fused kernels; torch's backend flags are process-wide
math_attention = _ProcessWideSetting(lambda: sdpa_kernel(SDPBackend.MATH))


@contextlib.contextmanager
def _without_fastpath() -> Iterator[None]:
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


# torch's transformer layers, run without gradients in eval mode, take a fast
# path that hands their modules nested tensors (a batch without its padding)
# or skips them: off, they compute what they compute under training
layerwise_attention = _ProcessWideSetting(_without_fastpath)


# Exclusive blocks draw from torch's global generators, which threads share,
# one at a time: each draws the same numbers (and restores the state it found)
# whatever the others do, and none restores a state under another's draws.
_SEEDED = threading.RLock()


@contextlib.contextmanager
def torch_seed(random_state, exclusive: bool = False) -> Iterator[None]:
    """Seed torch's global generators inside the block and restore them after.

    ``exclusive``: see :func:`forked_rng`.
    """
    if random_state is None:
        yield
        return
    seed = (
        int(random_state)
        if not hasattr(random_state, "randint")
        else (int(random_state.randint(2**31 - 1)))
    )
    with forked_rng(exclusive):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def forked_rng(exclusive: bool = False) -> Iterator[None]:
    """A block after which torch's global generators are as before it.

    For calls that draw from them without needing to, as a DataLoader draws
    its base seed in skorch's ``predict``. ``exclusive`` blocks of other
    threads wait until an ``exclusive`` one ends: for blocks that start no
    threaded work of their own (a training, a prediction), which would wait
    for it. Take it before :func:`evaluation_mode`, as a training does.
    CUDA's generators are forked once CUDA is initialised (reading their
    state initialises it, on every GPU, for work that may not use one).
    """
    initialised = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if initialised else []
    with _SEEDED if exclusive else contextlib.nullcontext():
        with torch.random.fork_rng(devices=devices):
            yield


def _uses_batch_statistics(module: torch.nn.Module) -> list[str]:
    bad = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and (
            sub.training or not sub.track_running_stats
        ):
            bad.append(name or type(sub).__name__)
    return bad


def check_not_inference_mode() -> None:
    """Raise a RuntimeError inside ``torch.inference_mode()``.

    Its tensors record no gradient, and copies of a network made in it carry
    no version counters, which sksim reads to restore buffers.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "sksim is called inside torch.inference_mode(), whose tensors record "
            "neither gradients nor the version counters by which sksim restores "
            "a network's buffers: call it outside of that block (torch.no_grad() "
            "is fine)."
        )


# One lock for every network: a pass changes the modes and hooks of all the
# modules of its network, which other networks may share (two heads on one
# backbone), so the passes of all threads (joblib's threading backend too)
# take turns.
_PASSES = threading.RLock()


@contextlib.contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``module`` in eval mode inside the block, restoring its modes after.

    Its buffers are restored too: a network that updates them in its forward
    pass (a counter, a moving average) is left as it was, as are the weights
    of an ``Embedding(max_norm=...)``, which renormalises the rows it looks
    up in place (an ``EmbeddingBag``'s too). The modes are restored by the
    module's own ``train`` (an override that also freezes or merges weights
    undoes what its ``eval`` did), then layer by layer. Embeddings'
    ``scale_grad_by_freq``, a training heuristic that scales their gradients,
    is off inside, as are the modules' backward hooks, global ones included
    (they may change gradients, and would run on every pass; they stay
    registered, and hooks may be added or removed meanwhile): gradients are
    the derivatives. cuDNN is off inside for a network with recurrent layers
    (``torch.nn.RNNBase``): its RNN kernels differentiate only in training
    mode, and never twice. The block holds
    one lock for all networks, which may share modules: another thread's
    block waits until this one ends (a thread may nest blocks).

    Raises
    ------
    ValueError
        If a BatchNorm layer would still use batch statistics (it was built with
        ``track_running_stats=False`` or its ``train`` method was overridden):
        per-sample quantities are then undefined.
    """
    with _PASSES:
        modes = {sub: sub.training for sub in module.modules()}
        embeddings = [sub for sub in module.modules() if isinstance(sub, EMBEDDINGS)]
        scaled = [sub for sub in embeddings if sub.scale_grad_by_freq]
        renormalised = [
            (sub.weight, sub.weight.detach().clone())
            for sub in embeddings
            if sub.max_norm is not None
        ]
        buffers, settings = _buffers(module), _settings(module)
        # an enclosing block on a shared submodule has set them already
        subs = [s for s in module.modules() if "_get_backward_hooks" not in vars(s)]
        cudnn = torch.backends.cudnn.enabled
        module.eval()
        try:
            if any(isinstance(sub, torch.nn.RNNBase) for sub in module.modules()):
                torch.backends.cudnn.enabled = False
            for embedding in scaled:
                embedding.scale_grad_by_freq = False
            for sub in subs:  # the hooks stay registered, but are not looked up
                sub._get_backward_hooks = _no_backward_hooks
                sub._get_backward_pre_hooks = _no_backward_pre_hooks
            yield _checked(module)
        finally:
            torch.backends.cudnn.enabled = cudnn
            for sub in subs:
                del sub._get_backward_hooks, sub._get_backward_pre_hooks
            module.train(modes[module])
            for sub, training in modes.items():
                sub.training = training
            for embedding in scaled:
                embedding.scale_grad_by_freq = True
            _restore(buffers)
            _restore_settings(settings)
            with torch.no_grad():
                for weight, values in renormalised:
                    if not torch.equal(weight, values):
                        weight.copy_(values)


_MISSING = object()  # an attribute a layer does not have


def plain_settings(layer: torch.nn.Module) -> dict[str, Any]:
    """The public attributes of ``layer`` holding numbers, text, None or tuples of them.

    Settings its ``forward`` may read (a temperature), which its
    ``extra_repr`` may leave out; ``training`` aside (the passes set it).
    """
    return {
        name: value
        for name, value in vars(layer).items()
        if not name.startswith("_") and name != "training" and _is_plain(value)
    }


def _is_plain(value) -> bool:
    """Whether ``value`` is a number, text, None, or a tuple of them."""
    if isinstance(value, tuple):
        return all(_is_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes))


#: The public attributes other than plain values that a forward pass of
#: sksim's wrote, by layer: what forward passes make (a cache, a recorded
#: activation), not settings (see :func:`~sksim._net.weights_digest`).
WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _settings(module: torch.nn.Module) -> list[tuple[torch.nn.Module, dict, dict]]:
    """Each layer, its public values and tensors held as attributes, and their versions.

    Those tensors are neither parameters nor buffers: a weight that
    ``torch.nn.utils.weight_norm`` computes before each forward pass. Their
    versions tell a change in place.
    """
    settings = []
    for sub in module.modules():
        held = {
            k: v
            for k, v in vars(sub).items()
            if isinstance(v, torch.Tensor)
            or (not k.startswith("_") and k != "training")
        }
        settings.append((sub, held, {k: _version(v) for k, v in held.items()}))
    return settings


def _version(value) -> int | None:
    """A tensor's version (changes in place bump it); None for other values."""
    if isinstance(value, torch.Tensor) and not value.is_inference():
        return value._version
    return None


def _restore_settings(settings: list[tuple[torch.nn.Module, dict, dict]]) -> None:
    """Put back the values :func:`_settings` saw; note what the pass wrote.

    A forward pass may change them (a cache's length, a recorded shape, a
    recomputed weight that holds the pass's graph); plain settings it added
    are removed, and the other values it wrote are noted in :data:`WRITTEN`.
    """
    for sub, before, versions in settings:
        tensors = sub._parameters.keys() | sub._buffers.keys() | sub._modules.keys()
        written = {
            name
            for name, value in vars(sub).items()
            if not name.startswith("_")
            and not _is_plain(value)
            and (
                before.get(name, _MISSING) is not value
                or versions.get(name) != _version(value)
            )
        }
        if written:
            WRITTEN.setdefault(sub, set()).update(written)
        for name in plain_settings(sub).keys() - before.keys():
            delattr(sub, name)
        for name, value in before.items():
            if name not in tensors and vars(sub).get(name, _MISSING) is not value:
                if isinstance(value, torch.Tensor):  # through the layer's own
                    setattr(sub, name, value)  # (a recurrent layer's list of them)
                else:
                    object.__setattr__(sub, name, value)


def _no_backward_hooks() -> tuple[list, list]:
    """A module's full and other backward hooks, as its passes in sksim see them."""
    return [], []


def _no_backward_pre_hooks() -> list:
    """A module's backward pre-hooks, as its passes in sksim see them."""
    return []


def _buffers(module: torch.nn.Module) -> list[tuple]:
    """Each buffer's ``(module, name, tensor, version, copy of its values)``."""
    return [
        (sub, name, t, t._version, t.clone())
        for sub in module.modules()
        for name, t in sub._buffers.items()
        if t is not None
    ]


def _restore(buffers: list[tuple]) -> None:
    """Put back the buffers :func:`_buffers` saw, with their values then."""
    with torch.no_grad():
        for sub, name, t, version, values in buffers:
            if sub._buffers.get(name) is not t:  # rebound by the forward pass
                sub._buffers[name] = t
            if t._version != version:  # changed in place
                t.copy_(values)


def _checked(module: torch.nn.Module) -> torch.nn.Module:
    """``module``, in eval mode, unless a BatchNorm layer still couples samples."""
    bad = _uses_batch_statistics(module)
    if bad:
        raise ValueError(
            f"BatchNorm layer(s) {bad} use batch statistics even in eval mode "
            "(track_running_stats=False), which couples the samples of a batch: "
            "a sample's outputs, representations and gradients depend on the "
            "others', so per-sample quantities are undefined. Build them with "
            "track_running_stats=True (the default) and train the net again; "
            "sksim uses it in eval mode."
        )
    return module


def functional_output(
    module: torch.nn.Module, params: dict, x, keywords: dict | None = None
):
    """``functional_call`` of ``module`` with ``params`` on ``x`` (a dict as keywords).

    ``keywords`` are passed too, as skorch passes ``fit_params``.

    The module's parameters are its own afterwards, always: torch does not
    put back those of a submodule registered under two names (``self.alias =
    self.body``, a ``torch.compile`` of a submodule kept beside it), nor any
    after a KeyboardInterrupt that arrives while it swaps them (the user's
    optimizer would then no longer train the tensors left in their place;
    after a vmapped pass, the next call failed). So are its recurrent
    layers' lists of weights, which torch leaves holding other tensors (a
    TorchScript copy of the network would train none of its recurrent
    weights).
    """
    keywords = keywords or {}
    kept = [
        (sub, name, p)
        for sub in module.modules()
        for name, p in sub._parameters.items()
    ]
    try:
        if isinstance(x, dict):
            return functional_call(module, params, args=(), kwargs={**x, **keywords})
        return functional_call(module, params, args=(x,), kwargs=keywords)
    finally:
        for sub, name, p in kept:
            if sub._parameters.get(name) is not p:
                sub._parameters[name] = p
        for sub in module.modules():
            if isinstance(sub, torch.nn.RNNBase) and any(
                w is not getattr(sub, name)
                for name, w in zip(
                    sub._flat_weights_names, sub._flat_weights, strict=True
                )
            ):
                sub._init_flat_weights()
