"""On a CUDA device every estimator gives the values it gives on the CPU.

Skipped where no CUDA device exists (as in CI); run on a GPU machine.
"""

import copy

import numpy as np
import pytest
import torch
from _architectures import (
    family_case,
    make_digits_net,
    oracle_jacobians,
    oracle_kernel,
)

from sksim import (
    GradientDensityEstimator,
    NetworkNeighbors,
    NetworkSimilarityKernel,
    SelfDenoisingAnalysis,
    gradient_features,
    network_similarity,
    relative_sensitivity,
)
from sksim._engine import gram
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import KeptPieces
from sksim._engine.rows import candidate_similarities, streamed_similarities
from sksim.representations import extract_representations

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)


def _case(name):
    return family_case(name, 9 if name == "mlp_d3" else 8)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
@pytest.mark.parametrize("case", ["mlp_d3", "cnn_batchnorm", "residual", "tokens"])
def test_cuda_kernel_matches_the_cpu_oracle(case, kind):
    module, X = _case(case)
    J = oracle_jacobians(module, X)
    K = network_similarity(module, X[:4], X, kind=kind, batch_size=3, device="cuda")
    np.testing.assert_allclose(K, oracle_kernel(J[:4], J, kind), rtol=1e-5, atol=1e-10)
    assert next(module.parameters()).device.type == "cpu"  # the caller's net


def test_cuda_symmetric_strips_match_the_oracle(monkeypatch):
    monkeypatch.setattr(gram, "STRIP_ROWS", 3)
    monkeypatch.setattr(gram, "STRIP_ELEMENTS", 12)
    module, X = _case("cnn_batchnorm")
    J = oracle_jacobians(module, X)
    K = network_similarity(module, X, batch_size=3, device="cuda")
    np.testing.assert_allclose(K, oracle_kernel(J, J, "cosine"), rtol=1e-5, atol=1e-10)


def test_cuda_tensors_stay_on_the_gpu_and_give_the_oracle():
    module, X = _case("cnn_batchnorm")
    J = oracle_jacobians(module, X)
    on_gpu, X_gpu = copy.deepcopy(module).cuda(), X.cuda()
    K = network_similarity(on_gpu, X_gpu, batch_size=3)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "cosine"), rtol=1e-5, atol=1e-10)
    X_gpu[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        network_similarity(on_gpu, X_gpu)


@pytest.mark.parametrize("case", ["residual", "tokens"])
def test_cuda_sketch_equals_the_cpu_sketch(case):
    module, X = _case(case)
    kwargs = dict(n_components=64, random_state=3, batch_size=3)
    cpu = gradient_features(module, X, device="cpu", **kwargs)
    gpu = gradient_features(module, X, device="cuda", **kwargs)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["mlp_d3", "cnn_batchnorm", "tokens"])
def test_cuda_exact_ranking_of_candidates_matches_the_oracle(case):
    module, X = _case(case)
    K = oracle_kernel(*(2 * [oracle_jacobians(module, X)]), "cosine")
    engine = JacobianEngine(module, batch_size=3, device="cuda")
    kept = KeptPieces(len(X), float("inf"))
    for rows, pieces, _ in engine.mapped_pieces(X, -0.5, 1e-5):
        kept(rows, pieces)
    rng = np.random.default_rng(0)
    columns = np.sort([rng.choice(len(X), 5, replace=False) for _ in range(4)], axis=1)
    queries = [p.take(slice(0, 4)) for p in kept.pieces]
    expected = np.take_along_axis(K[:4], columns, 1)
    found = candidate_similarities(queries, kept.pieces, columns, engine.max_memory)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)
    # the reference's pieces not kept: computed again for the candidates
    found = streamed_similarities(engine, X, queries, columns, 1e-5)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def digits_nets(digits):
    X, y = digits
    torch.manual_seed(0)
    cpu = make_digits_net(max_epochs=5).fit(X[:300], y[:300])
    gpu = make_digits_net(max_epochs=5, device="cuda").initialize()
    gpu.module_.load_state_dict(cpu.module_.state_dict())
    return cpu, gpu, X[:300], y[:300]


def test_cuda_skorch_estimators_give_the_cpu_values(digits_nets):
    cpu, gpu, X, y = digits_nets
    for make in [
        lambda net: NetworkSimilarityKernel(net).fit(X[:80]).transform(X[80:100]),
        lambda net: GradientDensityEstimator(net).fit(X[:80]).score_samples(X[80:100]),
        lambda net: (
            NetworkNeighbors(net, n_neighbors=3).fit(X[:80]).most_similar(X[80:90])[0]
        ),
        lambda net: (
            SelfDenoisingAnalysis(net).fit(X[:60], np.eye(10)[y[:60]]).noise_covariance_
        ),
    ]:
        np.testing.assert_allclose(make(gpu), make(cpu), rtol=1e-4, atol=1e-5)


def test_cuda_computation_leaves_a_cpu_net_on_the_cpu(digits_nets):
    cpu, _, X, _ = digits_nets
    before = cpu.predict_proba(X[:20])
    on_cpu = NetworkSimilarityKernel(cpu).fit(X[:40]).transform(X[40:50])
    on_gpu = NetworkSimilarityKernel(cpu, device="cuda").fit(X[:40]).transform(X[40:50])
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)
    extract_representations(cpu, X[:10], ["hidden"], device="cuda")
    assert next(cpu.module_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(cpu.predict_proba(X[:20]), before)


def test_cuda_representations_and_sensitivity(digits_nets):
    cpu, gpu, X, _ = digits_nets
    reps = {net: extract_representations(net, X[:50], ["hidden"]) for net in (cpu, gpu)}
    np.testing.assert_allclose(reps[gpu]["hidden"], reps[cpu]["hidden"], atol=1e-5)
    images = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()
    )
    results = [
        relative_sensitivity(
            module, images, layers=["1"], reference=None, random_state=0, device=d
        )
        for d in ("cpu", "cuda")
    ]
    np.testing.assert_allclose(
        results[1]["R"].to_numpy(dtype=float),
        results[0]["R"].to_numpy(dtype=float),
        rtol=1e-3,
    )
