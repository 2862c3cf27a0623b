"""Checkpoints of a skorch net's training, for the kernel averaged over training.

skorch's :class:`~skorch.callbacks.Checkpoint` callback saves the module's
``state_dict`` during training; :func:`collect_checkpoints` finds the files it
wrote, in the order of the epochs, ready for the ``checkpoints=`` parameter of
:func:`sksim.network_similarity`, :class:`sksim.NetworkSimilarityKernel`,
:class:`sksim.NetworkNeighbors` and :class:`sksim.GradientDensityEstimator`.
"""

from __future__ import annotations

import os

from sklearn.frozen import FrozenEstimator
from skorch import NeuralNet
from skorch.callbacks import Checkpoint

from ._net import _unwrap

__all__ = ["collect_checkpoints"]

TEMPLATE = "params_{last_epoch[epoch]}.pt"
EXAMPLE = f'Checkpoint(monitor=None, f_params="{TEMPLATE}", dirname=...)'


def _find_checkpoint(net, checkpoint) -> Checkpoint:
    """The ``Checkpoint`` callback of ``net``: the one given, named, or the only one."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    found = {
        name: callback
        for name, callback in getattr(net, "callbacks_", [])
        if isinstance(callback, Checkpoint)
    }
    if checkpoint is not None:
        if checkpoint not in found:
            raise ValueError(
                f"The net has no Checkpoint callback named {checkpoint!r}; its "
                f"Checkpoint callbacks are {sorted(found)}."
            )
        return found[checkpoint]
    if not found:
        raise ValueError(
            "The net has no Checkpoint callback: train it with "
            f"callbacks=[{EXAMPLE}] to save its parameters at every epoch."
        )
    if len(found) > 1:
        raise ValueError(
            f"The net has {len(found)} Checkpoint callbacks, {sorted(found)}: "
            "pass checkpoint= the name of one of them."
        )
    return next(iter(found.values()))


def _check_writes_files(checkpoint: Checkpoint) -> None:
    if not isinstance(checkpoint.f_params, str):
        raise ValueError(
            "The Checkpoint callback saves no parameter files "
            f"(f_params={checkpoint.f_params!r}): give it a file name template "
            f"such as f_params={TEMPLATE!r}."
        )
    if checkpoint.event_name is None:
        raise ValueError(
            "The Checkpoint callback has event_name=None, so the history does not "
            "say in which epochs it saved: keep its default event_name."
        )
    if getattr(checkpoint, "use_safetensors", False):
        raise ValueError(
            "The Checkpoint callback saved safetensors files, which torch.load "
            "cannot read: train with use_safetensors=False (the default)."
        )


def _path(net, checkpoint: Checkpoint, epoch: int) -> str:
    """The file of ``f_params`` written at the end of epoch ``epoch`` (index)."""
    name = checkpoint.f_params.format(
        net=net,
        last_epoch=net.history[epoch],
        last_batch=net.history[epoch, "batches", -1],
    )
    return os.path.join(checkpoint.dirname, checkpoint.fn_prefix + name)


def collect_checkpoints(
    net: NeuralNet | FrozenEstimator,
    checkpoint: str | Checkpoint | None = None,
    *,
    return_epochs: bool = False,
) -> list[str] | tuple[list[str], list[int]]:
    """The parameter files that skorch's ``Checkpoint`` wrote while ``net`` trained.

    skorch's :class:`~skorch.callbacks.Checkpoint` records in the net's
    history, in the column ``event_cp``, whether it saved in each epoch; this
    returns the ``f_params`` files of those epochs, oldest first. To keep one
    file per epoch, train with a template naming the epoch and no monitor::

        Checkpoint(monitor=None, f_params="params_{last_epoch[epoch]}.pt",
                   dirname="checkpoints")

    (the default ``monitor="valid_loss_best"`` saves only the epochs that
    improved the validation loss, which this collects just as well).

    Parameters
    ----------
    net : skorch net or FrozenEstimator
        A net trained with a ``Checkpoint`` callback.
    checkpoint : str, Checkpoint or None, default=None
        Which callback: its name in ``net.callbacks_``, the callback itself,
        or None for the net's only ``Checkpoint``.
    return_epochs : bool, default=False
        Also return the epochs (numbered from 1, as in ``net.history``) at
        which the files were written, e.g. to weigh the checkpoints by the
        learning rate of those epochs.

    Returns
    -------
    paths : list of str
        The files, in the order of the epochs, for the ``checkpoints=``
        parameter of the network estimators.
    epochs : list of int
        Only with ``return_epochs=True``.

    Raises
    ------
    ValueError
        If the net has no (or several) ``Checkpoint`` callbacks, if the
        callback writes no files, or if it wrote several epochs to one file,
        each overwriting the last (``f_params`` does not name the epoch).
    FileNotFoundError
        If a file that the callback wrote is gone.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from skorch.callbacks import Checkpoint
    >>> from sksim import network_similarity
    >>> from sksim.checkpoints import collect_checkpoints
    >>> folder = tempfile.mkdtemp()
    >>> net = NeuralNetClassifier(
    ...     torch.nn.Linear, module__in_features=4, module__out_features=2,
    ...     criterion=torch.nn.CrossEntropyLoss, max_epochs=3, train_split=None,
    ...     verbose=0, callbacks=[Checkpoint(
    ...         monitor=None, f_params="params_{last_epoch[epoch]}.pt",
    ...         dirname=folder)])
    >>> X = np.random.RandomState(0).randn(20, 4).astype(np.float32)
    >>> _ = net.fit(X, (X[:, 0] > 0).astype(np.int64))
    >>> paths, epochs = collect_checkpoints(net, return_epochs=True)
    >>> [p.rsplit("/", 1)[-1] for p in paths], epochs
    (['params_1.pt', 'params_2.pt', 'params_3.pt'], [1, 2, 3])
    >>> network_similarity(net, X[:3], checkpoints=paths).shape
    (3, 3)
    """
    net = _unwrap(net)
    if not isinstance(net, NeuralNet) or not getattr(net, "initialized_", False):
        raise ValueError(
            "collect_checkpoints reads the history of a trained skorch net; got "
            f"{type(net).__name__}"
            + (" (not fitted)." if isinstance(net, NeuralNet) else ".")
        )
    checkpoint = _find_checkpoint(net, checkpoint)
    _check_writes_files(checkpoint)
    saved = [
        i for i, row in enumerate(net.history) if row.get(checkpoint.event_name, False)
    ]
    paths = [_path(net, checkpoint, i) for i in saved]
    if len(set(paths)) < len(paths):
        raise ValueError(
            f"The Checkpoint callback wrote {len(paths)} epochs to "
            f"{len(set(paths))} file(s) (f_params={checkpoint.f_params!r}), each "
            "overwriting the last: put the epoch in the file name, "
            f"f_params={TEMPLATE!r}."
        )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"The Checkpoint callback wrote {missing[0]!r}, which is gone"
            + (f" (and {len(missing) - 1} more)." if len(missing) > 1 else ".")
        )
    epochs = [int(net.history[i, "epoch"]) for i in saved]
    return (paths, epochs) if return_epochs else paths
