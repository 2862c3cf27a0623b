"""Random projections, and tiles over joblib (dask clusters: test_parallel.py)."""

import numpy as np
import pytest
import torch
from _architectures import MLP, SmallCNN, oracle_jacobians
from sklearn.utils import check_random_state

from sksim import NetworkSimilarityKernel, gradient_features, network_similarity
from sksim._engine import features
from sksim._engine.features import piece_energies
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.rows import sketch_features
from sksim._engine.sketch import GradientSketch, allocate, fft_length


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
    """64 values per output sketch the second convolution's 222 parameters (with
    4 096, as this test once asked, every block was kept exactly)."""
    torch.manual_seed(0)
    module = SmallCNN().eval()
    X = np.random.RandomState(0).randn(6, 1, 8, 8).astype(np.float32)
    assert_unbiased(module, X, 64, reduce=None)


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


def test_allocation_follows_the_weights():
    assert allocate([10, 1000, 3000], 1010, [1, 1, 3]) == [10, 250, 750]
    # pieces below their weighted share are kept exactly, the rest goes on
    assert allocate([10, 100, 3000], 1000, [0.1, 5, 1]) == [10, 100, 890]
    assert allocate([9, 9, 9], 10, [1, 1, 1]) == allocate([9, 9, 9], 10)
    # one column at least, taken from the widest: n_components whatever the weights
    assert allocate([100, 100], 10, [0, 1]) == [1, 9]
    assert allocate([100, 100, 100], 10, [0, 0.001, 1]) == [1, 1, 8]
    assert allocate([100] * 4, 3) == [1, 1, 1, 1]  # more pieces: one each
    # the widest piece kept exactly gives its columns when no sketched one can
    assert allocate([60, 1000, 1000, 1000], 62, [1, 1e-4, 1e-4, 1e-4]) == [59, 1, 1, 1]
    assert allocate([100, 100], 10, [0, 0]) == [5, 5]  # none measured: equal
    weights = np.array([0.0, 0.0, 1.0])  # the others kept exactly: the rest shared
    assert allocate([100, 100, 30], 50, weights) == [10, 10, 30]
    assert weights.tolist() == [0.0, 0.0, 1.0]


class DeadBranch(torch.nn.Module):
    """A linear map beside a branch whose ReLUs are all off: the branch's
    first two layers get no gradient."""

    def __init__(self):
        super().__init__()
        self.live = torch.nn.Linear(4, 2)
        self.dead = torch.nn.Sequential(
            torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        )
        with torch.no_grad():
            self.dead[0].bias.fill_(-100.0)

    def forward(self, x):
        return self.live(x) + self.dead(x)


def test_sketches_of_layers_without_gradient():
    """The pieces with gradient (12 parameters) are kept exactly in the
    sketch, the pieces without share the other columns: the sketch is exact."""
    from sksim import GradientDensityEstimator, NetworkNeighbors

    torch.manual_seed(0)
    net = DeadBranch()
    X = np.random.RandomState(0).normal(size=(30, 4)).astype(np.float32)
    sketched = NetworkNeighbors(net, n_neighbors=3, n_components=100, random_state=0)
    exact = NetworkNeighbors(net, n_neighbors=3).fit(X)
    np.testing.assert_allclose(
        sketched.fit(X).most_similar(X)[0], exact.most_similar(X)[0], atol=1e-6
    )
    density = GradientDensityEstimator(net, method="hard", n_components=100)
    np.testing.assert_allclose(
        density.fit(X).score_samples(X),
        GradientDensityEstimator(net, method="hard").fit(X).score_samples(X),
        atol=1e-5,
    )


def test_fft_length_is_the_largest_product_of_2_3_and_5_up_to_k():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for k in range(1, 600):
        assert fft_length(k) == max(m for m in range(1, k + 1) if smooth(m))


def test_tensor_sketch_leaves_the_columns_past_its_buckets_zero():
    module = three_layers()
    X = np.random.RandomState(0).randn(30, 8).astype(np.float32)
    _, pieces, _ = next(JacobianEngine(module).mapped_pieces(X, -0.5, 1e-5))
    sketch = GradientSketch(3 * 62, seed=0)  # 62 columns each: 60 buckets
    F = sketch.features(pieces)
    assert F.shape == (30, 3, 3 * 62)
    for part in F.split(62, dim=2):
        assert part[..., :60].abs().sum() > 0
        assert not part[..., 60:].any()


def three_layers(last_scale=1.0):
    """``Linear(8, 64) -> tanh -> Linear(64, 64) -> tanh -> Linear(64, 3)``."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(8, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 3),
    )
    with torch.no_grad():
        module[4].weight.mul_(last_scale)
    return module


@pytest.mark.parametrize("energy_rows", [10, 64])
def test_piece_energies_against_the_oracle(energy_rows, monkeypatch):
    monkeypatch.setattr(features, "ENERGY_ROWS", energy_rows)
    module = three_layers()
    X = np.random.RandomState(0).randn(40, 8).astype(np.float32)
    energies = piece_energies(JacobianEngine(module), X, seed=4)
    rows = np.arange(40)
    if energy_rows < 40:
        rows = np.sort(check_random_state(4).choice(40, energy_rows, replace=False))
    J = oracle_jacobians(module, torch.from_numpy(X[rows]))
    lam, V = np.linalg.eigh(J @ J.transpose(0, 2, 1))
    A = (V / np.sqrt(lam)[:, None, :]) @ V.transpose(0, 2, 1) @ J  # whitened
    ends = np.cumsum([8 * 64 + 64, 64 * 64 + 64, 64 * 3 + 3])  # one piece a layer
    expected = [(a**2).sum((1, 2)).mean() for a in np.split(A, ends[:-1], axis=2)]
    np.testing.assert_allclose(energies, expected, rtol=1e-4)
    assert energies.sum() == pytest.approx(3, rel=1e-5)  # d per example


def test_energy_weights_lower_the_sketch_error():
    # the last layer carries nearly all the energy, but is not the widest
    module = three_layers(last_scale=0.1)
    X = np.random.RandomState(0).randn(60, 8).astype(np.float32)
    engine = JacobianEngine(module)
    exact = network_similarity(module, X)
    weights = piece_energies(engine, X, seed=0)
    assert weights[-1] > 0.9 * weights.sum()

    def error(weights):
        sketches = [
            sketch_features(engine, X, 64, s, weights=weights) for s in range(5)
        ]
        return np.mean([np.abs(F @ F.T - exact).mean() for F in sketches])

    assert error(weights) < 0.75 * error(None)


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
