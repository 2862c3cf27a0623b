"""LabelIssueDetector: planted label errors, brute-force oracles, errors."""

import numpy as np
import pytest
import torch
from _architectures import AnyWidth
from _sklearn_checks import EXPECTED_FAILED_CHECKS
from skorch import NeuralNetClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from sksim import LabelIssueDetector


def any_width_net(**kwargs):
    params = dict(
        module=AnyWidth,
        module__n_out=6,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=2,
        lr=0.1,
        train_split=None,
        verbose=0,
    )
    return NeuralNetClassifier(**(params | kwargs))


def _plain_module():
    torch.manual_seed(0)
    return AnyWidth(n_out=6)


@parametrize_with_checks(
    [
        LabelIssueDetector(_plain_module(), cv="prefit", n_neighbors=3),
        LabelIssueDetector(any_width_net(), cv=2, n_neighbors=3, random_state=0),
    ],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
