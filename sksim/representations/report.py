"""Class fitting workflow: representations, densities, split, memorisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.utils import Bunch

from .._layers import check_pool
from .._net import fit_net
from .._typing import NetInput, NetLike
from .._validation import (
    check_positive_int,
    given_or_item_labels,
    labels_key_hint,
    with_defaults,
)
from .class_density import ClassConditionalDensity, _as_table
from .dpmixture import DirichletProcessGaussianMixture
from .extract import extract_representations
from .memorization import memorization_scores


def check_report_params(options: Mapping) -> None:
    """Raise on an invalid argument of :func:`class_fitting_report`, before any work.

    ``options`` maps its keyword arguments to values; those not given take
    its defaults.
    """
    o = with_defaults(class_fitting_report, options)
    n_components = o["n_components"]
    per_stage = (
        n_components.values() if isinstance(n_components, Mapping) else [n_components]
    )
    layers = o.get("layers", ())  # the audit gives its own later
    layers = [layers] if isinstance(layers, str) else list(layers)
    if isinstance(n_components, Mapping) and set(layers) - set(n_components):
        raise ValueError(
            "n_components, a dict, must give a value for every stage of layers; "
            f"it lacks {sorted(set(layers) - set(n_components))} (its keys: "
            f"{sorted(n_components)})."
        )
    for value in per_stage:
        ClassConditionalDensity(value, mixture=o["mixture"])._check_params()
    for name in ("n_models", "n_bins", "n_samples", "batch_size"):
        check_positive_int(o[name], name)
    check_pool(o["pool"])


def _memorization(memorization, X, y, n_models, random_state, n_jobs, verbose):
    if memorization is None:
        return None
    if hasattr(memorization, "fit"):
        return memorization_scores(
            memorization,
            X,
            y,
            n_models,
            random_state=random_state,
            n_jobs=n_jobs,
            verbose=verbose,
        )
    scores = np.asarray(memorization, dtype=np.float64)
    if scores.shape != (len(y),):
        raise ValueError(
            "memorization must be None, a classifier, or one score per example "
            f"(shape ({len(y)},)); got shape {scores.shape}."
        )
    return scores


def _binned_mean(values, bins, n_bins):
    """Mean of the finite values in each bin (NaN for a bin with none)."""
    finite = np.isfinite(values)
    total = np.bincount(bins[finite], values[finite], n_bins)
    count = np.bincount(bins[finite], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _stage_tables(stage, density, memorization, n_bins, n_samples):
    summary = density.class_summary(n_samples)
    high, _, threshold = density.split_classes()
    k = len(summary["class"])
    rows = dict(summary)
    rows["stage"] = np.full(k, stage, dtype=object)
    rows["group"] = np.where(np.isin(summary["class"], high), "high", "low")
    split = dict(
        stage=[stage], threshold=[threshold], n_high=[len(high)], n_low=[k - len(high)]
    )
    bins = density.density_bins(n_bins)
    mem = np.full(len(bins), np.nan) if memorization is None else memorization
    count = np.bincount(bins, minlength=n_bins)
    binned = dict(
        stage=np.full(n_bins, stage, dtype=object),
        bin=np.arange(n_bins),
        n_samples=count,
        mean_log_density=np.bincount(bins, density.train_log_density_, n_bins) / count,
        mean_memorization=_binned_mean(mem, bins, n_bins),
    )
    return rows, split, binned


def _concat(tables):
    return Bunch(
        **{
            key: np.concatenate([np.asarray(t[key]) for t in tables])
            for key in tables[0]
        }
    )


def class_fitting_report(
    net: NetLike,
    X: NetInput,
    y: ArrayLike | None,
    layers: str | Sequence[str],
    n_components: int | float | Mapping[str, int | float | None] | None = 16,
    mixture: DirichletProcessGaussianMixture | None = None,
    memorization: BaseEstimator | ArrayLike | None = None,
    n_models: int = 20,
    n_bins: int = 10,
    n_samples: int = 1000,
    pool: str = "mean",
    batch_size: int = 128,
    device: str | torch.device | None = None,
    n_jobs: int | None = None,
    random_state: int | None = None,
    verbose: int = 0,
    as_frame: bool = False,
) -> Bunch:
    """Which classes a network fits in compact modes, stage by stage.

    For every stage in ``layers``: extract the representations of ``X``
    (:func:`extract_representations`), fit a :class:`ClassConditionalDensity`,
    summarise each class (mean and spread of own-class log-densities, intra-class
    distance, relative entropy), split the classes at the largest gap of mean
    log-density, and bin the examples by log-density, with their mean
    memorisation score per bin if ``memorization`` is given.

    Parameters
    ----------
    net : skorch net, FrozenEstimator or torch.nn.Module
        The network; an unfitted skorch net is first trained on ``X, y``.
    X : array-like, tensor, dict of them, or Dataset
        Training inputs; a map-style torch ``Dataset`` of ``x`` or ``(x, y)``
        items is read a batch at a time.
    y : array-like of shape (n_samples,) or None
        Labels; None takes those of a dataset's ``(x, y)`` items.
    layers : str or list of str
        Stage module names (outputs after the residual sum).
    n_components : int, float, None or dict, default=16
        Projected dimension per stage (a dict maps stage name to value; the
        paper uses 16 for early and 64 for late stages). Log-densities are
        comparable only between stages with the same value.
    mixture : DirichletProcessGaussianMixture, default=None
        Density estimator per class (None: Gibbs, 400 sweeps, blocked sampler
        with ``block_size="auto"``).
    memorization : None, classifier or array-like of shape (n_samples,)
        Memorisation scores, or a classifier to compute them with
        :func:`memorization_scores` (``n_models`` models).
    n_models : int, default=20
    n_bins : int, default=10
        Equal-size density bins.
    n_samples : int, default=1000
        Monte Carlo draws for the relative entropy.
    pool, batch_size, device : see :func:`extract_representations`.
    n_jobs : int, default=None
        Parallel jobs over classes (and memorisation models).
    random_state : int or None, default=None
    verbose : int, default=0
    as_frame : bool, default=False
        Return pandas DataFrames instead of Bunches of arrays.

    Returns
    -------
    report : Bunch
        ``classes`` (one row per stage and class, with its ``group``, "high" or
        "low"), ``splits`` (one row per stage: threshold and group sizes),
        ``bins`` (one row per stage and density bin: mean log-density and mean
        memorisation), ``densities`` (stage to fitted
        :class:`ClassConditionalDensity`) and ``memorization`` (scores or None).

    References
    ----------
    .. [1] M. Jamroż, M. Kurdziel, "Neural Representations Reveal Distinct
       Modes of Class Fitting in Residual Convolutional Networks", AAAI 2023,
       sections 4.1-4.3.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sksim.representations import (class_fitting_report,
    ...                                    DirichletProcessGaussianMixture)
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    >>> X = np.random.RandomState(0).randn(40, 3).astype("float32")
    >>> y = np.repeat([0, 1], 20)
    >>> mix = DirichletProcessGaussianMixture(backend="variational")
    >>> rep = class_fitting_report(net, X, y, ["0", "1"], n_components=3,
    ...                            mixture=mix, n_bins=4, random_state=0)
    >>> rep.splits["stage"].tolist(), rep.bins["bin"][:4].tolist()
    (['0', '1'], [0, 1, 2, 3])
    """
    layers = [layers] if isinstance(layers, str) else list(layers)  # once
    check_report_params(locals())  # the arguments, before any work
    y = given_or_item_labels(X, y)
    if y is None:
        raise ValueError(
            "class_fitting_report needs labels: pass y, or a Dataset of (x, y) items."
            + labels_key_hint(X)
        )
    y = np.asarray(y)
    net = fit_net(net, X, y, random_state)
    reps = extract_representations(
        net,
        X,
        layers,
        pool=pool,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
    )
    mem = _memorization(memorization, X, y, n_models, random_state, n_jobs, verbose)
    classes, splits, bins, densities = [], [], [], {}
    for stage in layers:
        d = n_components[stage] if isinstance(n_components, Mapping) else n_components
        density = ClassConditionalDensity(
            n_components=d, mixture=mixture, n_jobs=n_jobs, random_state=random_state
        ).fit(reps[stage], y)
        densities[stage] = density
        rows, split, binned = _stage_tables(stage, density, mem, n_bins, n_samples)
        classes.append(rows)
        splits.append(split)
        bins.append(binned)
    return Bunch(
        classes=_as_table(_concat(classes), as_frame),
        splits=_as_table(_concat(splits), as_frame),
        bins=_as_table(_concat(bins), as_frame),
        densities=densities,
        memorization=mem,
    )
