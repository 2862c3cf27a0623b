"""Self-denoising of the network on its training fold."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..._engine.selection import network_logits
from ..._typing import Output
from ...denoising import IllConditionedWeightsWarning, SelfDenoisingAnalysis
from .._tables import frame
from .base import Analysis, FoldOutput

if TYPE_CHECKING:
    import pandas as pd

    from ..core import _Fold


def free_probabilities(out) -> torch.Tensor:
    """The first ``d - 1`` class probabilities, the outputs regressed on labels.

    The logits are read from the network's output ``out`` as ``output="logits"``
    reads them (a tuple's first item, a Hugging Face output's ``logits``). The
    last probability is one minus the others: keeping it would make the
    Jacobian Gram ``J J^T`` singular and every cosine self-similarity
    ``(d - 1) / d`` instead of 1 (see the theory page of the user guide). A
    single logit ``z`` per example (shape ``(B,)`` or ``(B, 1)``) is a binary
    classifier's, as skorch's ``NeuralNetBinaryClassifier`` reads it: the
    probability of class 0 is ``sigmoid(-z)``. They are computed in float64:
    a confident float32 network's probabilities round to 0 and 1, whose
    derivatives vanish (its kernel 0.5 off in one row of three).
    """
    logits = network_logits(out).double()
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return torch.sigmoid(-logits.reshape(-1, 1))
    return torch.softmax(logits, dim=-1)[..., :-1]


def denoised_targets(fold: _Fold, y_train: np.ndarray) -> tuple[np.ndarray, Output]:
    """The labels regressed on and the outputs selected to predict them.

    Classification: one-hot labels of the first ``d - 1`` of the network's
    ``d`` classes (label ``j`` is output ``j``) and the matching
    probabilities; regression (its original form): the raw targets and the
    network's outputs.
    """
    if fold.task == "regression":
        return y_train, "logits"
    d = fold.n_class_outputs
    onehot = (y_train[:, None] == np.arange(d - 1)[None, :]).astype(np.float64)
    return onehot, free_probabilities


def sample_method(n_analysed: int, n_train: int) -> str:
    """Which training examples self-denoising analysed, in words."""
    if n_analysed == n_train:
        return f"all {n_train:,} training examples (time O(N^2))"
    return (
        f"{n_analysed:,} of the {n_train:,} training examples drawn at random, "
        f"each against all {n_train:,} (time O(max_samples N))"
    )


class Denoising(Analysis):
    """Self-denoising summary on (a random subset of) the training fold."""

    name = "denoising"
    title = "Self-denoising"
    defaults = dict(weights="cosine_pos_pow", max_samples=500)
    description = (
        "Self-denoising of the network on its training fold (Charpiat et al. "
        "2019): how many training examples each prediction effectively averages "
        "over, the noise of the training targets estimated from its residuals "
        "(misfit counts as noise), and the paper's prediction of the error "
        "against the unknown clean targets. That prediction counts only the "
        "noise left after the averaging, assuming the network averages its "
        "neighbours' targets: no bias, no misfit."
    )
    report_table = "denoising"

    fixed_options = ("output", "random_state")
    audit_settings = ()

    def option_target(self) -> type:
        return SelfDenoisingAnalysis

    def run(self, fold: _Fold) -> FoldOutput:
        options = self.options(fold)
        targets, output = denoised_targets(fold, fold.y_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllConditionedWeightsWarning)
            analysis = SelfDenoisingAnalysis(
                fold.net,
                output=output,
                random_state=fold.random_state,
                **options,
            ).fit(fold.X_train, targets)
        n_analysed = len(analysis.sample_indices_)
        row = dict(fold=fold.fold, n_samples=n_analysed, **analysis.summary())
        weights = options["weights"]
        method = f"{sample_method(n_analysed, len(fold.train))}, weights={weights!r}"
        if weights == self.defaults["weights"]:
            method += (
                "; take the predicted error as a lower bound: with these weights it "
                "was 2 to 2.5 times too optimistic on the user guide's synthetic "
                "data, and is more so where the network misfits"
            )
        return FoldOutput(tables=dict(denoising=frame([row])), method=method)

    def summary_metrics(self, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        return (
            tables["denoising"]
            .drop(columns="sigma_estimated")
            .melt(id_vars="fold", var_name="metric")
            .assign(metric=lambda t: "denoising_" + t["metric"])
        )
