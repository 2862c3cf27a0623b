"""The largest similarities of each row (exact neighbours)."""

import numpy as np
import pytest

from sksim._engine.rows import top_k


@pytest.mark.parametrize("values", ["tied", "continuous"])
def test_top_k_is_the_start_of_a_stable_sort(values):
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = int(rng.integers(2, 40))
        n_neighbors = int(rng.integers(1, m + 1))
        if values == "tied":  # four values: ties straddle the k-th one
            k = rng.integers(0, 4, size=(6, m)).astype(float)
            k[rng.random(k.shape) < 0.1] = -np.inf  # excluded examples
        else:
            k = rng.normal(size=(6, m))
        similarities, indices = top_k(k, n_neighbors)
        expected = np.argsort(-k, axis=1, kind="stable")[:, :n_neighbors]
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_array_equal(
            similarities, np.take_along_axis(k, expected, axis=1)
        )
