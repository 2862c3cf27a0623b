"""The soft count's sum of whitened Jacobians counts against ``max_memory``."""

import numpy as np
import pytest
from _architectures import mlp

from sksim import GradientDensityEstimator, network_similarity


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 4)).astype(np.float32)


def test_soft_counts_equal_the_row_sums_of_the_exact_kernel(data):
    net = mlp(4, 3)
    counts = GradientDensityEstimator(net, batch_size=7).fit(data).neighbor_counts(data)
    K = network_similarity(net, data, kind="cosine")
    np.testing.assert_allclose(counts, K.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_a_sum_larger_than_the_budget_is_refused(data):
    net = mlp(4, 3)
    p = sum(t.numel() for t in net.parameters())
    size = 8 * 3 * p  # the float64 sum of 3 outputs x p parameters
    estimator = GradientDensityEstimator(net, max_memory=int(1.4 * size))
    with pytest.raises(MemoryError, match=r'method="soft" keeps the sum.*max_memory'):
        estimator.fit(data)
    estimator.set_params(max_memory=int(1.6 * size)).fit(data)
    assert estimator.reference_sum_.shape == (3, p)
