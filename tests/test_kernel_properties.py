"""Properties and invariances of the normalised (whitened) kernel."""

import copy
import warnings

import numpy as np
import pytest
import torch
from _architectures import MLP
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from sksim import (
    DeadInputWarning,
    SingularJacobianGramWarning,
    gradient_features,
    network_similarity,
    similarity_to_distance,
)


class GivenJacobians(torch.nn.Module):
    """A float64 network ``f(J) = J theta`` whose Jacobian at input ``J`` is ``J``."""

    def __init__(self, n_params):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n_params, dtype=torch.float64))

    def forward(self, J):
        return torch.einsum("adp,p->ad", J, self.theta)


def cosine(J, reduce="trace"):
    """The cosine kernel of explicit Jacobians ``J`` (n, d, p), by sksim."""
    return network_similarity(GivenJacobians(J.shape[2]), J, reduce=reduce)


jacobians = st.builds(
    lambda seed, n, d, extra: np.random.RandomState(seed).randn(n, d, d + extra),
    st.integers(0, 2**31 - 1),
    st.integers(2, 5),
    st.integers(1, 4),
    st.integers(1, 12),
)


@settings(max_examples=40, deadline=None)
@given(J=jacobians)
def test_symmetric_unit_diagonal_and_bounded(J):
    K = cosine(J)
    np.testing.assert_allclose(K, K.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(K), 1.0, atol=1e-10)
    assert K.min() >= -1 - 1e-10 and K.max() <= 1 + 1e-10


@settings(max_examples=40, deadline=None)
@given(J=jacobians, seed=st.integers(0, 2**31 - 1))
def test_invariances(J, seed):
    rng = np.random.RandomState(seed)
    n, d, p = J.shape
    K = cosine(J)
    R = ortho_group.rvs(d, random_state=rng) if d > 1 else np.array([[-1.0]])
    U = ortho_group.rvs(p, random_state=rng)
    scale = rng.uniform(0.1, 10.0, size=(n, 1, 1))
    np.testing.assert_allclose(cosine(np.einsum("ce,aep->acp", R, J)), K, atol=1e-9)
    np.testing.assert_allclose(cosine(J @ U), K, atol=1e-9)
    np.testing.assert_allclose(cosine(scale * J), K, atol=1e-9)


def test_not_invariant_to_general_output_map():
    rng = np.random.RandomState(0)
    J = rng.randn(6, 3, 10)
    B = np.array([[5.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.3]])
    changed = cosine(np.einsum("ce,aep->acp", B, J))
    assert np.abs(changed - cosine(J)).max() > 0.05


def test_one_output_reduces_to_cosine_of_gradients():
    g = np.random.RandomState(1).randn(5, 1, 8)
    flat = g[:, 0]
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine(g), unit @ unit.T, atol=1e-12)


def test_whitening_is_symmetric_not_cholesky():
    J = np.random.RandomState(2).randn(4, 3, 7)
    K = np.einsum("adp,bep->abde", J, J)
    G = np.einsum("adp,aep->ade", J, J)
    blocks = cosine(J, reduce=None)
    L_inv = np.linalg.inv(np.linalg.cholesky(G))
    cholesky = np.einsum("iab,ijbc,jdc->ijad", L_inv, K, L_inv)
    # Both whitenings give orthonormal rows on the diagonal ...
    np.testing.assert_allclose(blocks[0, 0], np.eye(3), atol=1e-10)
    np.testing.assert_allclose(cholesky[0, 0], np.eye(3), atol=1e-10)
    # ... but the symmetric one alone matches the inverse square root.
    lam, V = np.linalg.eigh(G[0])
    A0 = V @ np.diag(lam**-0.5) @ V.T @ J[0]
    lam, V = np.linalg.eigh(G[1])
    A1 = V @ np.diag(lam**-0.5) @ V.T @ J[1]
    np.testing.assert_allclose(blocks[0, 1], A0 @ A1.T, atol=1e-10)
    assert np.abs(cholesky[0, 1] - blocks[0, 1]).max() > 1e-3


def test_dead_input_has_zero_similarity():
    J = np.random.RandomState(3).randn(4, 2, 6)
    J[2] = 0.0
    with pytest.warns(DeadInputWarning):
        K = cosine(J)
    assert np.all(np.isfinite(K))
    np.testing.assert_array_equal(K[2], 0.0)
    np.testing.assert_array_equal(K[:, 2], 0.0)


def test_network_invariance_to_orthogonal_output_map():
    torch.manual_seed(0)
    module = MLP(n_out=3).double()
    X = torch.randn(6, 5, dtype=torch.float64)
    R = torch.as_tensor(ortho_group.rvs(3, random_state=0))
    K = network_similarity(module, X)
    K_rotated = network_similarity(module, X, output=lambda z: z @ R.T)
    np.testing.assert_allclose(K_rotated, K, atol=1e-10)


def test_dead_relu_input_is_not_nan():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    with torch.no_grad():
        module[0].weight.copy_(torch.eye(3, 2))
        module[0].bias.zero_()
    X = np.array([[1.0, 2.0], [-1.0, -1.0], [2.0, 0.5]], dtype=np.float32)
    with pytest.warns(DeadInputWarning):
        K = network_similarity(module, X, output=0)
    assert np.all(np.isfinite(K))
    assert K[1].tolist() == [0.0, 0.0, 0.0]
    g0, g2 = np.array([1.0, 2.0, 1.0]), np.array([2.0, 0.5, 1.0])  # (x, 1) if active
    expected = g0 @ g2 / np.linalg.norm(g0) / np.linalg.norm(g2)
    np.testing.assert_allclose(K[0, 2], expected, rtol=1e-6)


class _Scaled(torch.nn.Module):
    def __init__(self, module, scale):
        super().__init__()
        self.module, self.scale = module, scale

    def forward(self, x):
        return self.scale * self.module(x)


@pytest.mark.parametrize("scale", [1e19, 1e-22])
def test_float32_gradients_of_any_magnitude_give_scale_free_kernels(scale):
    """Gradients near 1e19 or 1e-22 are finite in float32 but their squares
    are not: the Grams are formed in float64, so the cosine kernel is that of
    the unscaled network; kernels whose products (ntk, overflowing or
    vanishing) or maps (influence's inverse Gram) leave float32's range raise."""
    torch.manual_seed(0)
    module = MLP(n_out=3)
    X = np.random.RandomState(0).randn(8, 5).astype(np.float32)
    expected = network_similarity(module, X, kind="cosine")
    scaled = _Scaled(module, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dead or singular samples reported
        K = network_similarity(scaled, X, kind="cosine", batch_size=3)
    np.testing.assert_allclose(K, expected, rtol=0, atol=1e-5)
    for kind in ("ntk", "influence"):  # |J|^2 and 1 / |J|^2 leave float32's range
        with pytest.raises(FloatingPointError, match="compute in float64"):
            network_similarity(scaled, X, kind=kind)


@pytest.mark.parametrize("reduce", ["trace", None])
@pytest.mark.parametrize("n_jobs", [None, 2])
def test_float32_cosine_self_similarity_is_exactly_one_and_bounded(reduce, n_jobs):
    """float32 products round past Cauchy-Schwarz (1 + 3e-7, a self-similarity
    of 1 - 2e-7 at distance 7e-4): values are clipped to [-1, 1] and the
    diagonal of K(X, X) is exactly 1 (the identity block), so no duplicate of
    an example is nearer to it than itself."""
    torch.manual_seed(0)
    module = MLP(n_in=20, n_hidden=64, n_out=10)
    X = np.random.RandomState(0).randn(60, 20).astype(np.float32)
    X = np.concatenate([X, X[:20]])
    K = network_similarity(module, X, batch_size=7, reduce=reduce, n_jobs=n_jobs)
    diagonal = np.arange(len(X))
    if reduce is None:
        np.testing.assert_array_equal(
            K[diagonal, diagonal], np.broadcast_to(np.eye(10), (80, 10, 10))
        )
    else:
        np.testing.assert_array_equal(np.diag(K), 1.0)
        assert similarity_to_distance(K)[diagonal, diagonal].max() == 0.0
    assert np.abs(K).max() <= 1.0
    rectangular = network_similarity(module, X[:20], X, batch_size=7, reduce=reduce)
    assert np.abs(rectangular).max() <= 1.0


def _ill_conditioned(singular_values):
    """A float32 network whose first layer's Jacobian Grams have the condition
    number of ``singular_values`` squared (the last layer's, 4 outputs)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4, bias=False)
    )
    with torch.no_grad():
        U, _, Vt = torch.linalg.svd(torch.randn(4, 16), full_matrices=False)
        net[2].weight.copy_(U @ torch.diag(torch.tensor(singular_values)) @ Vt)
    return net


def _first_layer_jacobians(net, X):
    """``d f / d theta_0`` of each sample, float64, by autograd on a copy."""
    net = copy.deepcopy(net).double()
    params = list(net[0].parameters())
    rows = []
    for x in torch.as_tensor(X, dtype=torch.float64):
        out = net(x[None])[0]
        rows.append(
            [
                torch.cat(
                    [
                        g.flatten()
                        for g in torch.autograd.grad(o, params, retain_graph=True)
                    ]
                )
                for o in out
            ]
        )
    return np.array([[g.numpy() for g in row] for row in rows])


def test_float32_cosine_of_ill_conditioned_grams_is_float32_accurate():
    """cond(J J^T) of 7e4 (under 1/rtol: nothing floored, no warning): Grams
    formed in float32 put the cosine 2e-4 off; formed again in float64, it is
    within float32's resolution of the float64 kernel."""
    net = _ill_conditioned([1.0, 0.1, 0.02, 0.005])
    X = np.random.RandomState(1).randn(12, 5).astype(np.float32)
    expected = cosine(_first_layer_jacobians(net, X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing near-singular is reported
        K = network_similarity(net, X, params="0", batch_size=5)
        K_xy = network_similarity(net, X, X, params="0", batch_size=5)
    np.testing.assert_allclose(K, expected, atol=3e-6)
    np.testing.assert_allclose(K_xy, expected, atol=3e-6)


def test_exact_whitened_features_of_a_float16_network_are_computed_in_float32():
    """float16 Grams underflowed (NaN features, or a self-similarity of 1.6)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    with torch.no_grad():
        net[2].weight.mul_(3e-4)
    net = net.half()
    X = np.random.RandomState(1).randn(12, 5).astype(np.float32)
    F = gradient_features(net, X, params="0", batch_size=5).astype(np.float64)
    K = network_similarity(net, X, params="0", batch_size=5)
    np.testing.assert_allclose(np.einsum("adk,bdk->ab", F, F) / 3, K, atol=1e-5)


def test_influence_of_ill_conditioned_grams_is_alike_on_both_paths():
    """K(X) inverted float32 Grams the refinement had skipped (K(X, X) did
    not): both now invert the same float64 Grams."""
    net = _ill_conditioned([1.0, 0.1, 0.02, 0.005])
    X = np.random.RandomState(1).randn(12, 5).astype(np.float32)
    K = network_similarity(net, X, kind="influence", params="0", batch_size=5)
    K_xy = network_similarity(net, X, X, kind="influence", params="0", batch_size=5)
    off = ~np.eye(len(X), dtype=bool)
    np.testing.assert_allclose(K[off], K_xy[off], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.diag(K), 1.0)


def test_singular_grams_keep_duplicates_within_cauchy_schwarz():
    """Softmax outputs floor one eigenvalue (self-similarity 0.8 for 5
    classes): rounding made a duplicate 4e-6 more similar than the example."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)
    )
    X = np.random.RandomState(0).randn(30, 4).astype(np.float32)
    X = np.concatenate([X, X[:10]])
    with pytest.warns(SingularJacobianGramWarning):
        K = network_similarity(net, X, output=lambda z: torch.softmax(z, -1))
    np.testing.assert_allclose(np.diag(K), 0.8, rtol=1e-9)
    bound = np.sqrt(np.outer(np.diag(K), np.diag(K)))
    assert (np.abs(K) <= bound * (1 + 1e-12)).all()
    assert (K[np.arange(10), np.arange(30, 40)] <= np.diag(K)[:10] + 1e-9).all()


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_a_tiny_rtol_gives_no_nan_for_singular_grams(kind):
    """Eigenvalues of a singular Gram below 0 by rounding, divided by a floor of
    1e-300 of the largest, made the self-similarities hugely negative: NaN."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    X = np.random.RandomState(0).randn(12, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularJacobianGramWarning)
        for rtol in (1e-300, 1e-320):  # the floor under the smallest float too
            K = network_similarity(
                net, X, kind=kind, output=lambda z: z.softmax(-1), rtol=rtol
            )
            assert np.isfinite(K).all()
            assert ((np.diag(K) > 0) & (np.diag(K) <= 1 + 1e-12)).all()


@pytest.mark.parametrize("max_memory", [None, 60_000])
def test_influence_self_similarity_of_floored_grams_with_streamed_reference(
    max_memory,
):
    """Reference pieces not kept (small max_memory): the diagonal came from
    Grams never refined, 1.5e-3 off 2/3 (softmax over 3 classes)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)
    )
    X = np.random.RandomState(0).randn(60, 4).astype(np.float32)
    options = {} if max_memory is None else {"max_memory": max_memory}
    with pytest.warns(SingularJacobianGramWarning):
        K = network_similarity(
            net, X, kind="influence", output=lambda z: z.softmax(-1), **options
        )
    np.testing.assert_allclose(np.diag(K), 2 / 3, rtol=1e-8)
