"""Cross-validated audit of a classifier from the network's perspective."""

from __future__ import annotations

import importlib
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import clone
from sklearn.model_selection import check_cv
from sklearn.utils.multiclass import type_of_target
from skorch import NeuralNet
from tqdm.auto import tqdm

from .._engine.inputs import take
from .._net import _unwrap, fit_net
from .._validation import check_net_input, check_positive_int
from ..denoising import IllConditionedWeightsWarning, SelfDenoisingAnalysis
from ..density import COUNT_FLOOR, GradientDensityEstimator
from ..neighbors import NetworkNeighbors
from .models import is_square_image_batch

ANALYSES = ("density", "neighbors", "denoising", "sensitivity", "class_fitting")
SENSITIVITY_DEFAULTS = dict(layers="all", n_probe=200, n_init=2)
CLASS_FITTING_DEFAULTS = dict(n_components=8, n_bins=5, n_samples=200)
DENSITY_DEFAULTS = dict(method="hard", threshold=0.9)
DENOISING_DEFAULTS = dict(weights="cosine_pos_pow", max_samples=500)
GALLERY_SIZE = 4


class AuditAnalysisFailedWarning(UserWarning):
    """An analysis of :func:`audit` raised on a fold and was left out there."""


def free_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The first ``d - 1`` class probabilities, the outputs regressed on labels.

    The last probability is one minus the others: keeping it would make the
    Jacobian Gram ``J J^T`` singular and every cosine self-similarity
    ``(d - 1) / d`` instead of 1 (SPEC 1.1, 3).
    """
    return torch.softmax(logits, dim=-1)[..., :-1]


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-size bins of ``values`` by rank, 0 for the smallest values.

    Examples
    --------
    >>> from sksim.audit.core import quantile_bins
    >>> quantile_bins(np.array([3.0, 1.0, 2.0, 0.0]), 2).tolist()
    [1, 0, 1, 0]
    """
    order = np.argsort(values, kind="stable")
    bins = np.empty(len(values), dtype=np.intp)
    bins[order] = np.arange(len(values)) * n_bins // len(values)
    return bins


def n_density_bins(n_test: int, max_bins: int = 10, min_per_bin: int = 10) -> int:
    """Deciles when every bin holds ``min_per_bin`` examples, fewer bins otherwise."""
    return int(max(1, min(max_bins, n_test // min_per_bin)))


def denoising_rows(n_train, max_samples, random_state):
    """Sorted rows of the training fold analysed for self-denoising.

    All of them when ``max_samples`` is None or at least ``n_train``, else a
    uniform random subset of ``max_samples`` (the analysis costs O(N^2)).
    """
    if max_samples is None or max_samples >= n_train:
        return np.arange(n_train)
    rng = np.random.RandomState(random_state)
    return np.sort(rng.choice(n_train, max_samples, replace=False))


def _import_sensitivity():
    try:
        return importlib.import_module("sksim.sensitivity")
    except ImportError:
        return None


def sensitivity_skip_reason(X) -> str | None:
    """Why relative sensitivity does not apply to ``X`` (None when it does)."""
    if not is_square_image_batch(X):
        return (
            "relative sensitivity deforms images: it needs inputs of shape "
            f"(n, C, H, W) with H == W, and these have shape {tuple(X.shape)}."
        )
    if _import_sensitivity() is None:
        return "sksim.sensitivity is not available in this version of sksim."
    return None


def default_layers(module: torch.nn.Module, n_layers: int = 3) -> list[str]:
    """The last ``n_layers`` linear or convolutional modules, in definition order."""
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    names = [name for name, m in module.named_modules() if isinstance(m, kinds)]
    return names[-n_layers:]


def image_view(X) -> np.ndarray | None:
    """``X`` as images ``(n, H, W)`` or ``(n, H, W, 3)``, or None if not image-like.

    Image-like: ``(n, C, H, W)`` with one or three channels, ``(n, H, W)``,
    or flat ``(n, H * H)`` with ``H >= 4`` (such as scikit-learn's 8x8 digits).
    """
    X = np.asarray(X)
    if X.ndim == 4 and X.shape[1] == 1:
        return X[:, 0]
    if X.ndim == 4 and X.shape[1] == 3:
        return np.moveaxis(X, 1, -1)
    if X.ndim == 3:
        return X
    if X.ndim == 2:
        side = int(round(np.sqrt(X.shape[1])))
        if side >= 4 and side * side == X.shape[1]:
            return X.reshape(len(X), side, side)
    return None


def import_pandas():
    """Import pandas lazily, with an error naming the extra that provides it."""
    try:
        import pandas
    except ImportError as error:
        raise ImportError(
            "The audit's tables are pandas DataFrames: install pandas with "
            '`pip install "sksim[audit]"`.'
        ) from error
    return pandas


def _frame(rows):
    return import_pandas().DataFrame(rows)


def _spread(frame, by, columns):
    """Mean, standard deviation, min and max of ``columns`` over folds."""
    grouped = frame.groupby(by, sort=False)[columns]
    out = grouped.agg(["mean", "std", "min", "max"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    out.insert(0, "n_folds", grouped.size())
    return out.reset_index()


@dataclass
class AuditResult:
    """Tables, skipped analyses and example images of an :func:`audit`.

    Every table is a tidy :class:`pandas.DataFrame`; per-fold tables carry a
    ``fold`` column, and their ``*_summary`` counterparts aggregate over
    folds (mean, standard deviation, min and max).

    Attributes
    ----------
    tables : dict of str to pandas.DataFrame
        ``folds`` (accuracy, error, mean log-density per fold), ``summary``
        (every per-fold metric aggregated), ``samples`` (one row per held-out
        example: label, prediction, correctness, neighbour count, log-density,
        density bin, most similar training example), ``density_bins`` and
        ``density_bins_summary`` (error rate by density quantile bin),
        ``neighbors`` (the ``k`` most similar training examples of each
        held-out example), ``denoising``, ``sensitivity`` and
        ``sensitivity_summary``, ``class_fitting`` and ``class_fitting_summary``
        (for the analyses that ran).
    skipped : dict of str to str
        Analyses not run, with the reason.
    failed : dict of str to dict
        Analyses that raised (with ``errors="record"``): for each, the fold
        number mapped to ``"ExceptionType: message"``. An analysis that failed
        on every fold has no tables.
    metadata : dict
        Dataset, model and cross-validation description, timings, versions.
    gallery : list of dict
        A few held-out examples (lowest density, misclassified, typical) with
        their nearest training examples: ``kind``, ``fold``, ``index``,
        ``label``, ``prediction``, ``log_density``, ``neighbors`` (training
        indices), ``neighbor_labels``, ``similarities``, and ``image`` /
        ``neighbor_images`` for image-like inputs (None otherwise).
    """

    tables: dict
    skipped: dict
    metadata: dict
    gallery: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)

    def __getitem__(self, name):
        return self.tables[name]

    def to_html(self, path):
        """Write the audit as one self-contained HTML file (figures embedded).

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        path : pathlib.Path
        """
        from .report import write_html

        return write_html(self, path)

    def to_json(self, path):
        """Write the tables, skipped analyses and metadata as JSON.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        path : pathlib.Path
        """
        from .report import write_json

        return write_json(self, path)


def _check_audit_args(net, X, y, analyses, n_neighbors, options, errors):
    if not isinstance(_unwrap(net), NeuralNet):
        raise TypeError(
            "audit trains a fresh network on every training fold: pass a skorch "
            f"net (fitted or not, it is cloned); got {type(net).__name__}."
        )
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown:
        raise ValueError(f"Unknown analyses {unknown}; choose among {ANALYSES}.")
    check_positive_int(n_neighbors, "n_neighbors")
    unknown = [a for a in options if a not in ANALYSES]
    if unknown:
        raise ValueError(f"options for unknown analyses {unknown}; use {ANALYSES}.")
    max_samples = options.get("denoising", {}).get("max_samples")
    check_positive_int(max_samples, "max_samples", allow_none=True)
    if errors not in ("record", "raise"):
        raise ValueError(f'errors must be "record" or "raise"; got {errors!r}.')
    X = check_net_input(X)
    if isinstance(X, dict):
        raise TypeError("audit takes array inputs; got a dict.")
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}.")
    kind = type_of_target(y)
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"audit audits classifiers: y must hold class labels; got a {kind} target."
        )
    return X, y


class _Fold:
    """The analyses of one fold: a trained clone and its held-out part."""

    def __init__(self, net, X, y, train, test, fold, options, random_state):
        self.X, self.y, self.train, self.test, self.fold = X, y, train, test, fold
        self.X_train, self.y_train = take(X, train), y[train]
        self.X_test, self.y_test = take(X, test), y[test]
        self.options = options
        self.random_state = random_state
        start = time.perf_counter()
        self.net = fit_net(
            clone(_unwrap(net)), self.X_train, self.y_train, random_state
        )
        self.fit_seconds = time.perf_counter() - start
        self.prediction = np.asarray(self.net.predict(self.X_test))
        self.correct = self.prediction == self.y_test

    def opts(self, name, defaults=None):
        return {**(defaults or {}), **self.options.get(name, {})}

    def density(self):
        estimator = GradientDensityEstimator(
            self.net,
            random_state=self.random_state,
            **self.opts("density", DENSITY_DEFAULTS),
        ).fit(self.X_train)
        counts = estimator.neighbor_counts(self.X_test)
        return counts, np.log(np.maximum(counts, COUNT_FLOOR) / len(self.train))

    def neighbors(self, k):
        search = NetworkNeighbors(
            self.net,
            n_neighbors=k,
            random_state=self.random_state,
            **self.opts("neighbors"),
        ).fit(self.X_train)
        similarities, indices = search.most_similar(self.X_test)
        return similarities, self.train[indices]

    def denoising(self):
        opts = self.opts("denoising", DENOISING_DEFAULTS)
        rows = denoising_rows(
            len(self.train), opts.pop("max_samples"), self.random_state
        )
        classes = np.unique(self.y)
        y_train = self.y_train[rows]
        onehot = (y_train[:, None] == classes[None, :-1]).astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllConditionedWeightsWarning)
            analysis = SelfDenoisingAnalysis(
                self.net,
                output=free_probabilities,
                random_state=self.random_state,
                **opts,
            ).fit(take(self.X_train, rows), onehot)
        return dict(n_samples=len(rows), **analysis.summary())

    def sensitivity(self):
        module = _import_sensitivity()
        table = module.relative_sensitivity(
            self.net,
            self.X_test,
            random_state=self.random_state,
            **self.opts("sensitivity", SENSITIVITY_DEFAULTS),
        )
        table = _frame(dict(table))
        table.insert(0, "fold", self.fold)
        return table

    def class_fitting(self, layers):
        from ..representations import (
            DirichletProcessGaussianMixture,
            class_fitting_report,
            extract_representations,
        )

        opts = self.opts("class_fitting", CLASS_FITTING_DEFAULTS)
        opts.setdefault(
            "mixture", DirichletProcessGaussianMixture(backend="variational")
        )
        report = class_fitting_report(
            self.net,
            self.X_train,
            self.y_train,
            layers,
            random_state=self.random_state,
            as_frame=True,
            **opts,
        )
        test_reps = extract_representations(self.net, self.X_test, layers)
        classes = report.classes.rename(columns={"stage": "layer"})
        classes = classes.rename(columns={"mean_log_density": "train_mean_log_density"})
        test_mean, test_accuracy = [], []
        for layer in layers:
            density = report.densities[layer]
            own = density.score_samples(test_reps[layer], self.y_test)
            accuracy = float(np.mean(density.predict(test_reps[layer]) == self.y_test))
            for c in density.classes_:
                rows = self.y_test == c
                test_mean.append(own[rows].mean() if rows.any() else np.nan)
                test_accuracy.append(accuracy)
        classes["test_mean_log_density"] = test_mean
        classes["density_classifier_accuracy"] = test_accuracy
        classes.insert(0, "fold", self.fold)
        return classes


def audit(
    net,
    X,
    y,
    cv=5,
    analyses=ANALYSES,
    *,
    n_neighbors=5,
    layers=None,
    options=None,
    random_state=0,
    errors="record",
    verbose=0,
):
    """Cross-validated audit of a classifier from the network's perspective.

    For each fold of a scikit-learn cross-validation splitter, a clone of
    ``net`` is trained on the training part; on the held-out part the audit
    computes the accuracy and, per analysis:

    * ``"density"``: the network-perspective density of each held-out example
      relative to the training fold (soft neighbour count of
      :class:`~sksim.GradientDensityEstimator`, SPEC 2), and the error rate by
      density quantile bin (deciles when every bin holds at least 10
      examples): do the errors sit where the network sees few similar
      training examples?
    * ``"neighbors"``: the ``n_neighbors`` most similar training examples of
      each held-out example (:class:`~sksim.NetworkNeighbors`) and whether
      they share its label.
    * ``"denoising"``: the self-denoising summary of the net on its training
      fold (:class:`~sksim.SelfDenoisingAnalysis` on one-hot labels and the
      first ``d - 1`` softmax probabilities, ``weights="cosine_pos_pow"``,
      SPEC 3), on at most ``max_samples=500`` training examples drawn at
      random (its cost grows as ``N^2``; the sums over neighbours run over
      that subset): effective number of neighbours, estimated label noise,
      predicted error.
    * ``"sensitivity"``: layer-wise relative sensitivity to diffeomorphisms
      ``D``, ``G`` and ``R = D / G`` on the held-out images, trained and at
      initialisation (``sksim.sensitivity.relative_sensitivity``, SPEC 5);
      square images ``(n, C, H, W)`` only.
    * ``"class_fitting"``: class-conditional densities of the representations
      at ``layers`` fitted on the training fold
      (:func:`~sksim.representations.class_fitting_report`, SPEC 6), with the
      held-out examples' own-class log-densities per class.

    Analyses that do not apply are skipped and listed with the reason; one
    that raises on a fold is recorded with its error and the audit goes on
    (``errors="record"``), so a long audit is never lost to one failure.

    Parameters
    ----------
    net : skorch net
        The classifier to audit (outputting logits). It is cloned, never
        modified: a fitted net is retrained from scratch on each fold.
    X : array-like of shape (n_samples, ...)
        Inputs, in the shape the network accepts.
    y : array-like of shape (n_samples,)
        Class labels.
    cv : int, cross-validation generator or iterable, default=5
        As in :func:`sklearn.model_selection.cross_validate` (an int means
        :class:`~sklearn.model_selection.StratifiedKFold`).
    analyses : sequence of str, default=all five
        Which of ``"density"``, ``"neighbors"``, ``"denoising"``,
        ``"sensitivity"`` and ``"class_fitting"`` to run.
    n_neighbors : int, default=5
        Training examples retrieved per held-out example.
    layers : list of str, default=None
        Module names for class fitting; None takes the last three linear or
        convolutional modules.
    options : dict of str to dict, default=None
        Keyword arguments per analysis, passed on to the estimator or function
        behind it (e.g. ``{"density": {"method": "hard"}, "sensitivity":
        {"n_probe": 500}}``). Defaults kept small for speed: sensitivity
        ``layers="all", n_probe=200, n_init=2``; class fitting
        ``n_components=8, n_bins=5, n_samples=200`` with variational
        mixtures; denoising ``weights="cosine_pos_pow", max_samples=500``
        (``max_samples=None`` analyses the whole training fold).
    random_state : int or None, default=0
        Seeds the training of every fold (each fold's clone is trained under
        ``torch.manual_seed(random_state)``) and the analyses.
    errors : {"record", "raise"}, default="record"
        What an analysis that raises on a fold does: ``"record"`` warns, keeps
        the error in ``result.failed`` (and the report) and goes on with the
        other analyses and folds; ``"raise"`` stops the audit with it.
    verbose : int, default=0
        Show a progress bar over folds and analyses (on stderr) when positive.

    Returns
    -------
    result : AuditResult
        Tidy tables per fold and aggregated over folds, the skipped analyses,
        and a gallery of examples; ``result.to_html(path)`` writes the report.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019 (density,
       neighbours, self-denoising; SPEC 2 and 3).
    .. [2] L. Petrini, A. Favero, M. Geiger, M. Wyart, "Relative stability
       toward diffeomorphisms indicates performance in deep nets", NeurIPS
       2021 (SPEC 5).
    .. [3] P. Jamroz, M. Kurdziel, "Neural Representations Reveal Distinct
       Modes of Class Fitting in Residual Convolutional Networks", AAAI 2023
       (SPEC 6).

    Examples
    --------
    >>> import numpy as np
    >>> from sksim.audit import audit
    >>> from sksim.audit.models import make_classifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32")
    >>> y = (X[:, 0] > 0).astype("int64")
    >>> net = make_classifier("mlp", X, n_classes=2, max_epochs=5)
    >>> result = audit(net, X, y, cv=3, analyses=("density", "sensitivity"))
    >>> result["folds"]["n_test"].tolist()
    [20, 20, 20]
    >>> sorted(result.skipped)
    ['sensitivity']
    """
    import_pandas()
    options = dict(options or {})
    X, y = _check_audit_args(net, X, y, analyses, n_neighbors, options, errors)
    analyses = [a for a in ANALYSES if a in analyses]
    skipped = {}
    if "sensitivity" in analyses:
        reason = sensitivity_skip_reason(X)
        if reason is not None:
            skipped["sensitivity"] = reason
            analyses.remove("sensitivity")
    splitter = check_cv(cv, y, classifier=True)
    splits = list(splitter.split(X, y))
    started = time.perf_counter()
    collected = {name: [] for name in ("folds", "samples", "neighbors")}
    collected.update(denoising=[], sensitivity=[], class_fitting=[])
    collected["warnings"] = {}
    failed = {}
    seconds = {name: 0.0 for name in ["fit", *analyses]}
    steps = tqdm(
        total=len(splits) * (1 + len(analyses)), disable=verbose <= 0, desc="audit"
    )
    with steps:
        for fold, (train, test) in enumerate(splits):
            steps.set_postfix_str(f"fold {fold}: training")
            state = _Fold(net, X, y, train, test, fold, options, random_state)
            seconds["fit"] += state.fit_seconds
            steps.update()
            _run_fold(
                state,
                analyses,
                n_neighbors,
                layers,
                collected,
                seconds,
                steps,
                failed=failed if errors == "record" else None,
            )
    caught = collected.pop("warnings")
    analyses = [a for a in analyses if len(failed.get(a, {})) < len(splits)]
    tables = _assemble(collected, analyses)
    metadata = dict(
        n_samples=int(len(X)),
        input_shape=list(X.shape[1:]),
        n_classes=int(len(np.unique(y))),
        cv=repr(splitter),
        n_folds=len(splits),
        analyses=list(analyses),
        n_neighbors=int(n_neighbors),
        random_state=random_state,
        net=_describe(net),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        total_seconds=round(time.perf_counter() - started, 3),
        torch_version=torch.__version__,
        warnings=[f"{text} (x{count})" for text, count in caught.items()],
    )
    gallery = _gallery(X, y, tables) if "neighbors" in analyses else []
    return AuditResult(tables, skipped, metadata, gallery, failed)


def _describe(net):
    net = _unwrap(net)
    module = getattr(net, "module", None)
    name = getattr(module, "__name__", type(module).__name__)
    return f"{type(net).__name__}(module={name}, max_epochs={net.max_epochs})"


def _run_fold(state, analyses, n_neighbors, layers, collected, seconds, steps, failed):
    """Run the analyses on one fold; ``failed=None`` lets their errors raise."""
    fold = state.fold
    folds_row = dict(
        fold=fold,
        n_train=len(state.train),
        n_test=len(state.test),
        accuracy=float(state.correct.mean()),
        error=float(1 - state.correct.mean()),
        fit_seconds=state.fit_seconds,
    )
    samples = dict(
        fold=fold,
        index=state.test,
        label=state.y_test,
        prediction=state.prediction,
        correct=state.correct,
    )
    for name in analyses:
        steps.set_postfix_str(f"fold {fold}: {name}")
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _run_analysis(
                    name, state, n_neighbors, layers, collected, folds_row, samples
                )
            except Exception as error:
                if failed is None:
                    raise
                failed.setdefault(name, {})[fold] = f"{type(error).__name__}: {error}"
        for w in caught:
            message = re.sub(r"\d+", "N", str(w.message).split(": ")[0])
            text = f"{name}: {w.category.__name__}: {message}"
            collected["warnings"][text] = collected["warnings"].get(text, 0) + 1
        seconds[name] += time.perf_counter() - start
        steps.update()
        if failed and fold in failed.get(name, {}):
            warnings.warn(
                f"The {name} analysis failed on fold {fold} and is left out there: "
                f"{failed[name][fold]}. Pass errors='raise' to stop on it.",
                AuditAnalysisFailedWarning,
                stacklevel=3,
            )
    collected["folds"].append(_frame([folds_row]))
    collected["samples"].append(_frame(samples))


def _run_analysis(name, state, n_neighbors, layers, collected, folds_row, samples):
    fold = state.fold
    if name == "density":
        counts, log_density = state.density()
        samples.update(neighbor_count=counts, log_density=log_density)
        samples["density_bin"] = quantile_bins(
            log_density, n_density_bins(len(state.test))
        )
        folds_row["mean_log_density"] = float(log_density.mean())
        errors = (~state.correct).astype(float)
        folds_row["density_error_correlation"] = (
            float(np.corrcoef(log_density, errors)[0, 1])
            if errors.std() > 0 and log_density.std() > 0
            else np.nan
        )
    elif name == "neighbors":
        similarities, indices = state.neighbors(n_neighbors)
        same = state.y[indices] == state.y_test[:, None]
        samples.update(
            top_similarity=similarities[:, 0],
            nearest_train_index=indices[:, 0],
            neighbor_label_agreement=same.mean(axis=1),
        )
        folds_row["neighbor_label_agreement"] = float(same.mean())
        k = indices.shape[1]
        collected["neighbors"].append(
            _frame(
                dict(
                    fold=fold,
                    index=np.repeat(state.test, k),
                    rank=np.tile(np.arange(1, k + 1), len(state.test)),
                    train_index=indices.ravel(),
                    similarity=similarities.ravel(),
                    train_label=state.y[indices].ravel(),
                )
            )
        )
    elif name == "denoising":
        collected["denoising"].append(_frame([dict(fold=fold, **state.denoising())]))
    elif name == "sensitivity":
        collected["sensitivity"].append(state.sensitivity())
    elif name == "class_fitting":
        chosen = default_layers(state.net.module_) if layers is None else layers
        collected["class_fitting"].append(state.class_fitting(chosen))


def _assemble(collected, analyses):
    pd = import_pandas()

    tables = {
        name: pd.concat(parts, ignore_index=True)
        for name, parts in collected.items()
        if parts
    }
    folds = tables["folds"]
    metrics = [c for c in folds.columns if c not in ("fold", "n_train", "n_test")]
    long = folds.melt(id_vars="fold", value_vars=metrics, var_name="metric")
    if "denoising" in tables:
        long = pd.concat(
            [
                long,
                tables["denoising"]
                .drop(columns="sigma_estimated")
                .melt(id_vars="fold", var_name="metric")
                .assign(metric=lambda t: "denoising_" + t["metric"]),
            ],
            ignore_index=True,
        )
    long["value"] = long["value"].astype(float)
    tables["summary"] = _spread(long, "metric", ["value"]).rename(
        columns=lambda c: c.removeprefix("value_")
    )
    if "density" in analyses:
        samples = tables["samples"]
        bins = (
            samples.assign(error=~samples["correct"])
            .groupby(["fold", "density_bin"])
            .agg(
                n_samples=("error", "size"),
                min_log_density=("log_density", "min"),
                max_log_density=("log_density", "max"),
                mean_log_density=("log_density", "mean"),
                error_rate=("error", "mean"),
            )
            .reset_index()
        )
        tables["density_bins"] = bins
        tables["density_bins_summary"] = _spread(
            bins, "density_bin", ["error_rate", "mean_log_density"]
        )
    if "sensitivity" in tables:
        tables["sensitivity_summary"] = _spread(
            tables["sensitivity"], ["net", "layer", "depth"], ["D", "G", "R"]
        ).sort_values(["net", "depth"], ignore_index=True)
    if "class_fitting" in tables:
        tables["class_fitting_summary"] = _spread(
            tables["class_fitting"],
            ["layer", "class"],
            ["train_mean_log_density", "test_mean_log_density"],
        )
    return tables


def _gallery(X, y, tables, size=GALLERY_SIZE):
    """Held-out examples worth looking at, with their nearest training examples."""
    samples, neighbors = tables["samples"], tables["neighbors"]
    chosen = []
    if "log_density" in samples:
        order = samples.sort_values("log_density", kind="stable")
        chosen += [("lowest density", i) for i in order.index[:size]]
        typical = order.index[len(order) // 2 : len(order) // 2 + 1]
    else:
        typical = samples.index[:1]
    taken = {i for _, i in chosen}
    errors = [
        i for i in samples.index[~samples["correct"].to_numpy()] if i not in taken
    ]
    chosen += [("misclassified", i) for i in errors[:size]]
    chosen += [("typical", i) for i in typical if i not in taken]
    images = image_view(X)
    gallery = []
    by_query = neighbors.groupby(["fold", "index"])
    for kind, row in chosen:
        sample = samples.loc[row]
        fold, index = int(sample["fold"]), int(sample["index"])
        near = by_query.get_group((fold, index)).sort_values("rank")
        train = near["train_index"].to_numpy()
        gallery.append(
            dict(
                kind=kind,
                fold=fold,
                index=index,
                label=sample["label"].item(),
                prediction=sample["prediction"].item(),
                log_density=float(sample.get("log_density", np.nan)),
                neighbors=train.tolist(),
                neighbor_labels=y[train].tolist(),
                similarities=near["similarity"].tolist(),
                image=None if images is None else images[index],
                neighbor_images=None if images is None else images[train],
            )
        )
    return gallery
