"""Random projections, and tiles over joblib (dask clusters: test_parallel.py)."""

import numpy as np
import pytest
import torch
from _architectures import MLP, SmallCNN

from sksim import NetworkSimilarityKernel, gradient_features, network_similarity
from sksim._engine.sketch import allocate


@pytest.fixture(scope="module")
def mlp_case(digits, fitted_digits_net):
    X, _ = digits
    return fitted_digits_net, X[:200]


def test_sketch_error_on_digits_mlp(mlp_case):
    net, X = mlp_case
    exact = network_similarity(net, X)
    sketched = network_similarity(net, X, n_components=2048, random_state=0)
    error = np.abs(sketched - exact)
    assert error.max() < 0.05
    coarse = network_similarity(net, X, n_components=256, random_state=0)
    assert np.abs(coarse - exact).mean() > error.mean()  # more columns, less error


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_sketch_is_unbiased(kind):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 20),
        torch.nn.Tanh(),
        torch.nn.Linear(20, 30),
        torch.nn.Tanh(),
        torch.nn.Linear(30, 2),
    )
    X = np.random.RandomState(0).randn(5, 6).astype(np.float32)
    assert_unbiased(module, X, 64, kind=kind)


def assert_unbiased(module, X, n_components, **kwargs):
    """The mean of 60 sketched kernels is the exact one, within 5 standard errors."""
    exact = network_similarity(module, X, **kwargs)
    draws = [
        network_similarity(
            module, X, n_components=n_components, random_state=seed, **kwargs
        )
        for seed in range(60)
    ]
    spread = np.std(draws, axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(np.mean(draws, axis=0) - exact) < 5 * spread + 1e-6)
    assert spread.max() > 1e-4  # the sketch really is random


class MeanEmbedding(torch.nn.Module):
    """The mean of a sequence's token embeddings: one Embedding piece, 3 x 20."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 3)

    def forward(self, tokens):
        return self.emb(tokens).mean(dim=1)


@pytest.mark.parametrize("n_components", [20, 40, 60])
def test_sketch_of_embeddings(n_components):
    """TensorSketch (20 of 60 values), subspace projection (40) and exact (60)."""
    torch.manual_seed(0)
    module = MeanEmbedding().double()
    tokens = np.random.RandomState(0).randint(0, 20, size=(6, 5))
    tokens[0, :3] = 7  # a token repeated in a sequence
    if n_components < 60:
        assert_unbiased(module, tokens, n_components)
        return
    sketched = network_similarity(module, tokens, n_components=60, random_state=0)
    exact = network_similarity(module, tokens)
    np.testing.assert_allclose(sketched, exact, rtol=1e-6, atol=1e-7)  # float32


def test_sketch_of_convolutions_and_full_blocks():
    torch.manual_seed(0)
    module = SmallCNN().eval()
    X = np.random.RandomState(0).randn(6, 1, 8, 8).astype(np.float32)
    exact = network_similarity(module, X, reduce=None)
    sketched = network_similarity(
        module, X, reduce=None, n_components=4096, random_state=1
    )
    np.testing.assert_allclose(sketched, exact, atol=0.1)


def test_exact_features_give_the_kernel():
    torch.manual_seed(0)
    module = MLP()
    X = np.random.RandomState(0).randn(7, 5).astype(np.float32)
    for whiten, kind in [(True, "cosine"), (False, "ntk")]:
        F = gradient_features(module, X, whiten=whiten)
        K = np.einsum("adk,bdk->ab", F, F) / F.shape[1]
        np.testing.assert_allclose(
            K, network_similarity(module, X, kind=kind), rtol=1e-4
        )


def test_sketched_kernel_estimator_is_seeded(mlp_case):
    net, X = mlp_case
    kern = NetworkSimilarityKernel(net, n_components=512, random_state=3).fit(X[:100])
    again = NetworkSimilarityKernel(net, n_components=512, random_state=3).fit(X[:100])
    np.testing.assert_array_equal(kern.transform(X[100:]), again.transform(X[100:]))
    assert kern.features_fit_.shape == (100, 10, 512)
    K_fit = kern.fit_transform(X[:100])
    np.testing.assert_allclose(K_fit, kern.transform(X[:100]), atol=1e-5)
    exact = network_similarity(net, X[100:], X[:100])
    assert np.abs(kern.transform(X[100:]) - exact).mean() < 0.1  # ~ sqrt(2 / 512)


def test_allocation_keeps_small_pieces_exact():
    assert allocate([10, 1000, 3000], 1010) == [10, 500, 500]
    assert allocate([3000, 10, 300], 1010) == [700, 10, 300]
    assert allocate([1, 12, 12, 36], 24) == [1, 7, 8, 8]
    assert allocate([10, 20], 100) == [10, 20]


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_joblib_tiles_equal_single_process(kind):
    torch.manual_seed(0)
    module = MLP()
    X = np.random.RandomState(0).randn(23, 5).astype(np.float32)
    from sksim._engine.jacobian import JacobianEngine
    from sksim._engine.parallel import tiled_kernel

    engine = JacobianEngine(module, batch_size=4)
    expected = network_similarity(module, X, kind=kind)
    tiled = tiled_kernel(engine, X, kind=kind, n_jobs=2, tile=7)
    np.testing.assert_allclose(tiled, expected, rtol=1e-5, atol=1e-6)
    if kind == "cosine":
        assert np.array_equal(tiled, tiled.T)
    rect = tiled_kernel(engine, X[:5], X, kind=kind, n_jobs=1, tile=4)
    np.testing.assert_allclose(rect, expected[:5], rtol=1e-5, atol=1e-6)
