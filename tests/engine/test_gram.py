"""Gram references: streamed and kept agree, symmetric strips match the oracle."""

import tracemalloc

import numpy as np
import pytest
import torch
from _architectures import (
    family_case,
    layer_case,
    mlp,
    oracle_jacobians,
    oracle_kernel,
)

from sksim._engine import gram
from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_streaming_reference_equals_kept_reference(kind):
    module, X = layer_case("conv1d")
    engine = JacobianEngine(module, batch_size=1)
    reference = GramReference(engine, X, kind)
    kept = reference.matrix(X[:3])
    total = sum(p.nbytes() for p in reference._pieces)
    streamed = GramReference(engine, X, kind, max_memory=int(0.6 * total))
    assert streamed._pieces is None
    np.testing.assert_allclose(streamed.matrix(X[:3]), kept, rtol=1e-12)
    np.testing.assert_allclose(
        streamed.matrix(), GramReference(engine, X, kind).matrix()
    )


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("kind", ["cosine", "ntk"])
def test_symmetric_strips_match_the_oracle(kind, full, monkeypatch):
    # strips of 3 rows, at most 2 columns wide in matrix-block mode: uneven
    # strips, several column chunks per strip, and a partial last strip
    monkeypatch.setattr(gram, "STRIP_ROWS", 3)
    monkeypatch.setattr(gram, "STRIP_ELEMENTS", 3 * 9 * 2)
    module, X = layer_case("conv1d")
    J = oracle_jacobians(module, X)
    if kind == "cosine":
        values, vectors = np.linalg.eigh(J @ J.transpose(0, 2, 1))
        inverse_root = (vectors / np.sqrt(values)[:, None]) @ vectors.transpose(0, 2, 1)
        J = inverse_root @ J
    blocks = np.einsum("adp,bep->abde", J, J)
    expected = blocks if full else np.trace(blocks, axis1=2, axis2=3) / J.shape[1]
    engine = JacobianEngine(module, batch_size=4)
    K = GramReference(engine, X, kind, full=full).matrix()
    np.testing.assert_allclose(K, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(K, K.swapaxes(0, 1).swapaxes(2, 3) if full else K.T)


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_streamed_reference_meets_queries_in_groups_that_fit(kind, monkeypatch):
    """Without kept pieces, the queries' batches are joined into groups whose
    pieces and rows take what the Grams leave of two thirds of max_memory:
    the reference is read once per group, not once per batch; the values do
    not change."""
    module, X = layer_case("conv1d")
    X = torch.cat([X, 0.5 * X, 2 * X])  # 18 rows
    engine = JacobianEngine(module, batch_size=2)
    kept = GramReference(engine, X, kind)
    per_row = sum(p.nbytes() for p in kept._pieces) / len(X)
    per_row += 8 * len(X)  # and a row of the kernel
    engine.max_memory = int(1.5 * (4.5 * per_row + kept.gram.nbytes))
    streamed = GramReference(engine, X, kind)
    assert streamed._pieces is None
    expected = kept.matrix(), kept.matrix(X[1:])
    reads = []
    blocks = GramReference._reference_blocks
    monkeypatch.setattr(
        GramReference,
        "_reference_blocks",
        lambda self: reads.append(1) or blocks(self),
    )
    np.testing.assert_allclose(streamed.matrix(), expected[0], rtol=1e-12)
    assert len(reads) == -(-len(X) // 4)  # groups of 4 rows from batches of 2
    reads.clear()
    np.testing.assert_allclose(streamed.matrix(X[1:]), expected[1], rtol=1e-12)
    assert len(reads) == -(-(len(X) - 1) // 4)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_layers_of_other_positions_in_other_batches_are_not_joined(kind, streamed):
    """A network cutting its sequences to each batch's longest gives its layers
    pieces of other shapes (or forms) in other batches: they are neither kept
    together nor joined into groups of queries, and the values are exact."""
    module, X = family_case("trimmed", 9)
    J = oracle_jacobians(module, X)
    engine = JacobianEngine(module, batch_size=2)
    if streamed:  # room for the pieces of about 5 samples: groups of queries
        _, pieces = next(engine.pieces(X[:2]))
        engine.max_memory = int(2.5 * sum(p.nbytes() for p in pieces))
    K = GramReference(engine, X, kind).matrix()
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-9, atol=1e-12)
    queries = X[[8, 0, 5, 1]]
    K = GramReference(engine, X, kind).matrix(queries)
    expected = oracle_kernel(J[[8, 0, 5, 1]], J, kind)
    np.testing.assert_allclose(K, expected, rtol=1e-9, atol=1e-12)


def test_clipping_to_the_diagonal_bound_goes_by_strips_that_fit():
    """Its bounds were two float64 temporaries of up to 2^22 entries whatever
    max_memory: 36 MB for the cosine kernel of 1 500 examples at 4 MB."""
    rng = np.random.default_rng(0)
    K = rng.normal(size=(50, 50))
    K = K + K.T
    np.fill_diagonal(K, rng.uniform(0.2, 1.0, 50))
    root = np.sqrt(np.diag(K))
    expected = np.clip(K, -np.outer(root, root), np.outer(root, root))
    clipped = K.copy()
    gram.bounded_by_diagonal(clipped, max_bytes=8 * 50 * 7)  # strips of 7 rows
    np.testing.assert_array_equal(clipped, expected)
    assert (clipped != K).any()
    net = mlp(4, 3, hidden=16)
    X = rng.normal(size=(1500, 4)).astype(np.float32)
    max_memory = 4_000_000
    engine = JacobianEngine(net, max_memory=max_memory)
    GramReference(engine, X[:10], "cosine").matrix()  # what a first call sets up
    tracemalloc.start()
    GramReference(engine, X, "cosine").matrix()  # its output is torch's, untraced
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < max_memory


@pytest.mark.parametrize("full", [False, True])
def test_symmetric_strips_take_the_batches_third_at_most(full, monkeypatch):
    """A strip's products took up to 2^22 entries whatever max_memory (32 MiB,
    three times over): 84 MiB above the start beside a 3 000 x 3 000 kernel
    of a 10-output MLP at max_memory of 16 MB."""
    # float64: other strips round float32 products otherwise
    module = mlp(4, 3, hidden=16).double()
    X = torch.randn(300, 4, dtype=torch.float64)
    expected = GramReference(JacobianEngine(module), X, "cosine", full=full).matrix()
    products, pair = [], gram._pair
    monkeypatch.setattr(
        gram, "_pair", lambda *a: products.append(pair(*a)) or products[-1]
    )
    max_memory = 450_000  # the pieces kept: 185 kB, their Grams 22 kB: in half
    engine = JacobianEngine(module, max_memory=max_memory)
    reference = GramReference(engine, X, "cosine", full=full)
    assert reference._pieces is not None  # the strips come from kept pieces
    K = reference.matrix()
    assert len(products) >= 10
    assert max(8 * gram.STRIP_COPIES * B.numel() for B in products) <= max_memory / 3
    np.testing.assert_allclose(K, expected, rtol=1e-12, atol=1e-15)


def test_clipping_without_a_budget_goes_by_strips_of_the_fixed_size(monkeypatch):
    """With max_memory=None its bound was one temporary as large as K."""
    monkeypatch.setattr(gram, "STRIP_ELEMENTS", 2000)
    rng = np.random.default_rng(1)
    K = rng.normal(size=(400, 400))  # a bound as large: 1.3 MB
    np.fill_diagonal(K, rng.uniform(0.2, 1.0, 400))
    root = np.sqrt(np.diag(K))
    expected = np.clip(K, -np.outer(root, root), np.outer(root, root))
    tracemalloc.start()
    gram.bounded_by_diagonal(K, max_bytes=float("inf"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(K, expected)
    assert peak < 8 * 2000 + 2**18  # a strip's bound, NumPy's buffers, the root
