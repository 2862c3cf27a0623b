"""On a CUDA device every estimator gives the values it gives on the CPU.

Skipped where no CUDA device exists (as in CI); run on a GPU machine.
"""

import copy
import warnings

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
    SingularJacobianGramWarning,
    gradient_features,
    network_similarity,
    relative_sensitivity,
)
from sksim._engine import gram
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import KeptPieces
from sksim._engine.rows import candidate_similarities, streamed_similarities
from sksim.audit import audit
from sksim.audit.models import make_classifier
from sksim.representations import extract_representations

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)


def _case(name):
    return family_case(name, 9 if name == "mlp_d3" else 8)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
@pytest.mark.parametrize(
    "case", ["mlp_d3", "cnn_batchnorm", "residual", "tokens", "bert", "gpt2", "gru"]
)
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
    found = streamed_similarities(engine, X, [(slice(0, 4), queries)], columns, 1e-5)
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


class TwoRowsExchanged(torch.nn.Module):
    """Rows 0 and 15 of a batch exchanged around the middle layer only."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.b = (torch.nn.Linear(*s) for s in ((3, 8), (8, 8), (8, 2)))

    def forward(self, x):
        order = torch.arange(len(x), device=x.device)
        if len(x) == 16:
            order[0], order[15] = 15, 0
        h = torch.tanh(self.a(x))
        return self.b(torch.tanh(self.c(h[order]))[order])


def test_cuda_row_check_finds_exchanged_rows_and_spares_saturated_softmax():
    torch.manual_seed(0)
    net = TwoRowsExchanged().double()
    X = torch.randn(16, 3, dtype=torch.float64)
    J = oracle_jacobians(net, X)
    with pytest.warns(UserWarning, match="mixed the samples of the batch"):
        K = network_similarity(net, X, kind="ntk", batch_size=16, device="cuda")
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7, atol=1e-12)
    # confident float32 softmax outputs, whose backward pass cancels, on the GPU
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 100)
    )
    X = torch.randn(4000, 20)
    with torch.no_grad():
        net[2].weight.mul_(80)
        gap = 1 - torch.softmax(net(X), -1).max(1).values
    X = X[(gap > 1e-6) & (gap < 1e-4)][:16].numpy()

    def probabilities(out):
        return torch.softmax(out, -1)[:, :99]

    with warnings.catch_warnings():
        warnings.filterwarnings("error", "The network mixed the samples")
        warnings.simplefilter("ignore", SingularJacobianGramWarning)
        K = network_similarity(net, X, output=probabilities, device="cuda")
        one_by_one = network_similarity(net, X, output=probabilities, batch_size=1)
    np.testing.assert_allclose(K, one_by_one, rtol=0, atol=1e-5)


def test_cuda_prefit_audit_leaves_the_gpu_net_as_it_was(digits):
    X, y = digits
    X = (X[:240] / 16.0).astype(np.float32)
    y = y[:240].astype(np.int64)
    torch.manual_seed(0)
    net = make_classifier("mlp", X, n_classes=10, max_epochs=6, device="cuda")
    net.fit(X[:160], y[:160])
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    result = audit(
        net,
        X[:160],
        y[:160],
        cv="prefit",
        X_test=X[160:],
        y_test=y[160:],
        analyses=("density", "neighbors", "denoising"),
        n_neighbors=3,
        errors="raise",
    )
    after = net.module_.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert next(net.module_.parameters()).device.type == "cuda"
    accuracy = result["folds"]["accuracy"].tolist()
    assert accuracy == [net.score(X[160:], y[160:])]
