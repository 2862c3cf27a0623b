"""The kernel averaged over training checkpoints.

With checkpoints ``theta_1, ..., theta_C`` of one network and weights ``w_c``
(for example the learning rate at each), the kernel is
``K = sum_c w_c K_c / sum_c w_c``, each ``K_c`` the kernel of the requested
kind with the network's parameters set to ``theta_c``. Each checkpoint is
loaded into a copy of the network in turn (the network itself never changes),
and only one checkpoint's engine and pieces exist at a time:

* exact kernels, counts and reference sums are accumulated checkpoint by
  checkpoint (:func:`weighted_sum`, :func:`weighted_rows`);
* sketched features of the checkpoints are concatenated, each scaled by
  ``sqrt(w_c / sum w)`` (:func:`stacked`), so that inner products of the
  concatenation are the weighted averages of the per-checkpoint inner
  products. Each checkpoint is sketched with its own seed
  (:func:`checkpoint_seed`), so that their sketch errors are independent.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .budget import rows_that_fit
from .digest import tensors_digest
from .flags import FlaggedRows, block_move, flag_scope
from .inputs import take
from .jacobian import JacobianEngine

SEED_LIMIT = 2**31 - 1


def checkpoint_shares(weights, n_checkpoints: int) -> np.ndarray:
    """The weights ``w_c / sum w`` of the checkpoints, validated.

    ``weights=None`` gives equal shares.
    """
    if n_checkpoints == 0:
        raise ValueError(
            "checkpoints is empty: pass a list of state_dicts (or paths to "
            "them), or None for the network as it is."
        )
    if weights is None:
        return np.full(n_checkpoints, 1.0 / n_checkpoints)
    values = np.asarray(weights)
    if values.dtype.kind not in "iuf":
        raise ValueError(
            "checkpoint_weights must be numbers, one per checkpoint; got "
            f"{reprlib.repr(weights)} of dtype {values.dtype}."
        )
    w = values.astype(float)
    if w.ndim != 1 or len(w) != n_checkpoints:
        raise ValueError(
            f"checkpoint_weights must hold one weight per checkpoint: got "
            f"{w.size} weight(s) of shape {w.shape} for {n_checkpoints} "
            "checkpoint(s)."
        )
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(
            f"checkpoint_weights must be positive and finite; got {w.tolist()}."
        )
    w = w / w.max()  # only ratios matter: a sum of large weights could overflow
    return w / w.sum()


def checkpoint_seed(seed: int, index: int) -> int:
    """The sketch seed of checkpoint ``index``: ``seed`` itself for the first."""
    return (seed + index) % SEED_LIMIT


def load_checkpoint(checkpoint, index: int) -> Mapping[str, torch.Tensor]:
    """A state_dict, or the one saved at a path (``torch.load``, weights only).

    One saved from a compiled module (``torch.compile``) loses the prefix its
    keys got there (``_orig_mod.``): checkpoints are loaded into the module it
    wraps.
    """
    if isinstance(checkpoint, Mapping):
        return _uncompiled_keys(checkpoint)
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(
            f"checkpoints[{index}] is a {type(checkpoint).__name__}; expected a "
            "state_dict (a dict of tensors) or the path of one saved with "
            "torch.save."
        )
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"checkpoints[{index}]: no file {os.fspath(checkpoint)!r}."
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's errors for a damaged or pickled file vary
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"checkpoints[{index}]: {os.fspath(checkpoint)!r} cannot be read as a "
            f"state_dict ({type(error).__name__}: {first[:200]}): save "
            "module.state_dict() with torch.save (skorch's save_params and "
            "Checkpoint do), not the module itself."
        ) from error
    if not isinstance(state, Mapping):
        raise TypeError(
            f"checkpoints[{index}]: {os.fspath(checkpoint)!r} holds a "
            f"{type(state).__name__}, not a state_dict: save "
            "module.state_dict() (skorch's save_params and Checkpoint do)."
        )
    return _uncompiled_keys(state)


def _uncompiled_keys(state: Mapping) -> Mapping:
    """``state`` with the prefix ``torch.compile`` gives every key removed."""
    prefix = "_orig_mod."
    if not state or not all(str(key).startswith(prefix) for key in state):
        return state
    return {key[len(prefix) :]: value for key, value in state.items()}


def check_state(module: torch.nn.Module, state: Mapping, index: int) -> None:
    """Raise a ValueError naming the first key where ``state`` differs.

    Its keys, shapes, tensors, and parameters' finite values; buffers may
    hold infinities where the network's own do, as attention masks do, but
    no NaN.
    """
    expected = module.state_dict()
    parameters = {name for name, _ in module.named_parameters()}
    problem = None
    for key, tensor in expected.items():
        value = state.get(key)
        if key not in state:
            problem = f"it lacks {key!r}"
            if f"module.{key}" in state:
                problem += (
                    " (its keys start with 'module.', as DataParallel's do: save "
                    "model.module.state_dict(), or strip the prefix)"
                )
        elif not isinstance(tensor, torch.Tensor):
            continue  # a module's extra state: its set_extra_state reads it
        elif not isinstance(value, torch.Tensor):
            problem = f"{key!r} is a {type(value).__name__} there, not a tensor"
        elif value.is_meta:
            problem = f"{key!r} is on the meta device there, with no values"
        elif value.shape != tensor.shape:
            problem = (
                f"{key!r} has shape {tuple(value.shape)} there and "
                f"{tuple(tensor.shape)} in the network"
            )
        elif not bool(torch.isfinite(value).all()) and (
            key in parameters
            or bool(torch.isnan(value).any())
            or bool((~torch.isfinite(value).cpu() & torch.isfinite(tensor).cpu()).any())
        ):
            problem = f"{key!r} holds NaN or infinity there (a diverged training?)"
        if problem:
            break
    else:
        extra = [key for key in state if key not in expected]
        if extra:
            problem = f"it has {extra[0]!r}, which the network has not"
    if problem:
        raise ValueError(
            f"checkpoints[{index}] does not match the network: {problem}. "
            "Checkpoints must be state_dicts of the network's own architecture "
            "(module.state_dict(), or skorch's net.module_.state_dict())."
        )


def check_weighted(checkpoints: Sequence | None, weights) -> None:
    """Raise a ValueError for ``checkpoint_weights`` without ``checkpoints``."""
    if checkpoints is None and weights is not None:
        raise ValueError(
            "checkpoint_weights were given without checkpoints: pass the "
            "checkpoints they weigh, or no weights."
        )


def check_checkpoints(
    module: torch.nn.Module, checkpoints: Sequence, weights
) -> tuple[np.ndarray, list[str]]:
    """Validate every checkpoint against ``module``; their shares and digests.

    Files are read one at a time and not kept; the digests tell later reads
    whether a checkpoint changed (see :class:`WeightedEngines`).
    """
    shares, digests = checkpoint_shares(weights, len(checkpoints)), []
    for index, checkpoint in enumerate(checkpoints):
        state = load_checkpoint(checkpoint, index)
        check_state(module, state, index)
        digests.append(tensors_digest(state.items()))
    return shares, digests


def loaded_copy(module: torch.nn.Module, state: Mapping) -> torch.nn.Module:
    """A copy of ``module`` with the parameters and buffers of ``state``."""
    try:
        module = copy.deepcopy(module)
    except Exception as error:  # whatever an attribute that cannot be copied raises
        raise TypeError(
            "checkpoints= loads each checkpoint into a copy of the network, and "
            f"this network cannot be copied ({type(error).__name__}: {error}). "
            "Make it copyable (e.g. torch.nn.utils.parametrizations.weight_norm "
            "rather than the legacy weight_norm; no locks or open files as "
            "attributes), or compute at each checkpoint yourself."
        ) from error
    module.load_state_dict(state)
    return module


class WeightedEngines:
    """The engines of a network at its checkpoints, with their shares.

    Iterating yields ``(share, engine)`` for one checkpoint at a time: the
    checkpoint is loaded into a fresh copy of the network when its turn comes,
    and the copy is dropped with its engine. Use each engine before asking
    for the next.

    Parameters
    ----------
    engines : list of (float, JacobianEngine), default=None
        Engines built already (``[(1.0, engine)]`` for a network without
        checkpoints).
    module : torch.nn.Module, default=None
        The network whose checkpoints are taken (never changed).
    checkpoints : list of state_dicts or paths, default=None
    shares : ndarray of shape (n_checkpoints,), default=None
        ``w_c / sum w``.
    make : callable, default=None
        ``make(module) -> JacobianEngine`` for each loaded copy.
    max_memory : int or None, default=None
        Bytes that :func:`weighted_rows` may hold in accumulated rows.
    digests : list of str, default=None
        The checkpoints' digests when they were validated (in ``fit``): one
        that reads otherwise now raises a ValueError.
    """

    def __init__(
        self,
        engines: list[tuple[float, JacobianEngine]] | None = None,
        module: torch.nn.Module | None = None,
        checkpoints: Sequence | None = None,
        shares: np.ndarray | None = None,
        make: Callable[[torch.nn.Module], JacobianEngine] | None = None,
        max_memory: int | None = None,
        digests: list[str] | None = None,
    ):
        self._engines = engines
        self.module, self.checkpoints, self.shares = module, checkpoints, shares
        self.make, self.digests = make, digests
        self.max_memory = float("inf") if max_memory is None else max_memory

    @property
    def single(self) -> bool:
        """Whether this is one engine of share 1, the network without checkpoints."""
        return self._engines is not None and len(self._engines) == 1

    def __len__(self) -> int:
        return len(self._engines if self._engines is not None else self.checkpoints)

    def warned_once(self) -> contextlib.AbstractContextManager:
        """A scope whose checkpoints' flagged samples are warned about once.

        Their warnings say that the samples were flagged at some checkpoints
        (see :func:`~sksim._engine.flags.flag_scope`); no scope for the
        network alone.
        """
        if self.single:
            return contextlib.nullcontext()
        return flag_scope(checkpoints=len(self))

    def __iter__(self) -> Iterator[tuple[float, JacobianEngine]]:
        if self._engines is not None:
            yield from self._engines
            return
        for index, (share, checkpoint) in enumerate(
            zip(self.shares, self.checkpoints, strict=True)
        ):
            state = load_checkpoint(checkpoint, index)
            if self.digests and tensors_digest(state.items()) != self.digests[index]:
                raise ValueError(
                    f"checkpoints[{index}] changed since fit (the file was "
                    "overwritten, or the state_dict changed): what fit computed "
                    "from it would be mixed with what it holds now. Call fit again."
                )
            yield float(share), self.make(loaded_copy(self.module, state))


def weighted_sum(
    engines: WeightedEngines, compute: Callable[[JacobianEngine, int], np.ndarray]
) -> np.ndarray:
    """``sum_c share_c compute(engine_c, c)``, one checkpoint at a time.

    Each part is scaled in place and freed before the next one is computed:
    the sum and one part are held at a time.
    """
    if engines.single:
        ((_, engine),) = engines
        return compute(engine, 0)
    total = None
    with engines.warned_once():
        for index, (share, engine) in enumerate(engines):
            part = np.asarray(compute(engine, index), dtype=np.float64)
            part *= share
            if total is None:
                total = part
            else:
                total += part
            del part
    return total


def stacked(
    engines: WeightedEngines,
    compute: Callable[[JacobianEngine, int, np.ndarray | None], np.ndarray],
) -> np.ndarray:
    """``compute(engine_c, c, out)`` times ``sqrt(share_c)``, joined on the last axis.

    Inner products of the result (over the last axis) are the weighted averages
    ``sum_c share_c <F_c(x), F_c(y)>``. ``compute`` returns its array, written
    into ``out`` when given. Every checkpoint's part is as wide (see
    :func:`~.sketch.allocate`): the first is computed alone (held beside the
    result while it is copied in), the others into their columns of it.
    """
    if engines.single:
        ((_, engine),) = engines
        return compute(engine, 0, None)
    with engines.warned_once():
        parts = enumerate(engines)
        _, (share, engine) = next(parts)
        first = compute(engine, 0, None)
        width = first.shape[-1]
        out = np.empty((*first.shape[:-1], width * len(engines)), np.float32)
        np.multiply(first, math.sqrt(share), out=out[..., :width])
        del first
        for index, (share, engine) in parts:
            columns = out[..., index * width : (index + 1) * width]
            compute(engine, index, columns)
            columns *= math.sqrt(share)
    return out


def weighted_rows(
    engines: WeightedEngines,
    rows_of: Callable[[JacobianEngine, object], Iterator[tuple[slice, np.ndarray]]],
    queries,
    n_queries: int,
    n_reference: int,
    reference=None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, sum_c share_c k_c[rows])`` for blocks of queries.

    ``rows_of(engine, Q)`` yields ``(rows, k)`` blocks of the rows of ``Q``
    against the reference set; ``Q=None`` (with ``queries=None``) means the
    reference set itself, taken from ``reference`` in blocks when it does not
    fit at once. Queries come in blocks whose accumulated rows take at most a
    third of ``max_memory``; every checkpoint is loaded once per block.
    """
    if engines.single:
        ((_, engine),) = engines
        yield from rows_of(engine, queries)
        return
    step = rows_that_fit(engines.max_memory / 3, 8 * n_reference, n_queries)
    # one warning for all the blocks, at the end: a scope left open across the
    # yields would hold the warnings of any later work should the caller stop
    flagged = FlaggedRows(checkpoints=len(engines))
    for start in range(0, n_queries, step):
        block = slice(start, min(start + step, n_queries))
        whole = step >= n_queries
        source = reference if queries is None else queries
        Q = queries if whole else take(source, block)
        out = np.zeros((block.stop - block.start, n_reference))
        with flag_scope(report=False) as found:
            for share, engine in engines:
                for rows, k in rows_of(engine, Q):
                    out[rows] += share * k
        flagged.merge(found, block_move(block))
        yield block, out
    flagged.report()
