"""Per-layer pieces: factorised and materialised agree, and the cost model."""

import weakref

import numpy as np
import pytest
import torch

from sksim._engine import pieces as pieces_module
from sksim._engine.pieces import (
    DensePiece,
    SharedWeightPiece,
    factorised_is_cheaper,
    gram_of,
    map_pieces,
    materialize,
)

INF = float("inf")  # no max_memory


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_factorised_and_materialised_pieces_agree(T, bias):
    g = torch.Generator().manual_seed(0)
    h, delta = torch.randn(5, T, 4, generator=g), torch.randn(5, 2, T, 3, generator=g)
    h2, delta2 = torch.randn(3, T, 4, generator=g), torch.randn(3, 2, T, 3, generator=g)
    fa = SharedWeightPiece(h, delta, bias=bias)
    fb = SharedWeightPiece(h2, delta2, bias=bias)
    ma, mb = materialize(fa.inputs, delta), materialize(fb.inputs, delta2)
    assert fa.width == ma.width == 3 * (4 + bias)
    for full in (True, False):
        torch.testing.assert_close(
            fa.pair(fb, full, INF), ma.pair(mb, full, INF), rtol=1e-4, atol=1e-4
        )
    torch.testing.assert_close(fa.self_gram(), ma.self_gram(), rtol=1e-4, atol=1e-4)
    W = torch.randn(5, 2, 2, generator=g)
    torch.testing.assert_close(
        fa.transform(W).pair(fb, False, INF),
        ma.transform(W).pair(mb, False, INF),
        rtol=1e-4,
        atol=1e-4,
    )
    S = fb.total()
    torch.testing.assert_close(S, mb.total(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fa.inner(S), ma.inner(S), rtol=1e-4, atol=1e-4)


def test_cost_model():
    assert factorised_is_cheaper(T=1, a=256, o=256, d=1)
    assert not factorised_is_cheaper(T=784, a=9, o=32, d=1)
    assert factorised_is_cheaper(T=4, a=288, o=64, d=10)


def test_mapped_pieces_replace_the_batch_s_own():
    """Whitening holds a batch once: each raw piece is released once mapped."""
    g = torch.Generator().manual_seed(0)
    J = torch.randn(4, 3, 6, generator=g)
    delta = torch.randn(4, 3, 5, 7, generator=g)
    pieces = [DensePiece(J.clone()), SharedWeightPiece(torch.randn(4, 5, 2), delta)]
    raw = [weakref.ref(pieces[0].grad), weakref.ref(delta)]
    del delta
    G = gram_of(pieces).double().numpy()
    mapped = map_pieces(pieces, G, -0.5, 1e-5)
    assert mapped is pieces
    assert all(ref() is None for ref in raw)
    lam, V = np.linalg.eigh(G)
    W = torch.as_tensor(V * lam[:, None, :] ** -0.5 @ V.transpose(0, 2, 1)).float()
    torch.testing.assert_close(mapped[0].grad, W @ J)
    whitened = gram_of(mapped).double().numpy()
    np.testing.assert_allclose(whitened, np.broadcast_to(np.eye(3), G.shape), atol=1e-5)


def test_full_pairs_are_chunked_by_their_largest_product(monkeypatch):
    """A chunk of the full form holds the input products met with one side's
    signals, d T' O per pair (here more than the T T' products of positions)."""
    g = torch.Generator().manual_seed(0)
    b, m, T, d, o = 3, 5, 7, 2, 6
    a = SharedWeightPiece(torch.randn(b, T, 4, generator=g), torch.randn(b, d, T, o))
    other = SharedWeightPiece(
        torch.randn(m, T, 4, generator=g), torch.randn(m, d, T, o, generator=g)
    )
    dense = {
        full: materialize(a.h, a.delta).pair(
            materialize(other.h, other.delta), full, INF
        )
        for full in (False, True)
    }
    # the scalar form's T T' = 49 products per pair: every column at once;
    # the full form's d T' O = 84 per pair: 2 columns at a time
    monkeypatch.setattr(pieces_module, "PAIR_CHUNK_ELEMENTS", m * b * T * T)
    calls = []
    einsum = torch.einsum
    monkeypatch.setattr(
        torch, "einsum", lambda *args: calls.append(args[0]) or einsum(*args)
    )
    for full, n_chunks in ((False, 1), (True, 3)):  # m = 5 columns, 2 at a time
        calls.clear()
        torch.testing.assert_close(
            a.pair(other, full, INF), dense[full], rtol=1e-4, atol=1e-4
        )
        assert sum(equation.startswith("ictO") for equation in calls) == n_chunks


@pytest.mark.parametrize("tokens", [False, True])
def test_pairs_take_a_third_of_max_memory_in_rows_and_columns(tokens, monkeypatch):
    """A small max_memory splits both sides: the queries' rows as well as the
    reference's columns, whatever the number of rows; values are unchanged."""
    g = torch.Generator().manual_seed(0)
    b, m, T, d, o = 5, 4, 7, 2, 3
    h = (
        torch.randint(0, 6, (b + m, T), generator=g)
        if tokens
        else (torch.randn(b + m, T, 4, generator=g))
    )
    delta = torch.randn(b + m, d, T, o, generator=g)
    both = SharedWeightPiece(h, delta, n_tokens=6 if tokens else None)
    a, other = both.take(slice(0, b)), both.take(slice(b, None))
    dense = materialize(both.dense_inputs, delta)
    expected = dense.take(slice(0, b)).pair(dense.take(slice(b, None)), False, INF)
    calls = []
    einsum = torch.einsum
    monkeypatch.setattr(
        torch, "einsum", lambda *args: calls.append(args[:2]) or einsum(*args)
    )
    # room for 2 pairs' T T' = 49 products of positions in each of the step's
    # intermediates: 2 rows by 1 column, 3 x 4 steps
    max_memory = 3 * pieces_module.PAIR_INTERMEDIATES * 4 * 2 * T * T
    found = a.pair(other, False, max_memory)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    signals = [left.shape for equation, left in calls if equation.startswith("ictO")]
    assert len(signals) == 12 and max(shape[0] for shape in signals) == 2
    # chosen pairs: 2 at a time (their signals, d T O = 42 per pair, fit too)
    rows, columns = torch.tensor([0, 0, 3, 4, 4]), torch.tensor([1, 3, 0, 2, 3])
    calls.clear()
    found = a.paired(other, rows, columns, max_memory)
    torch.testing.assert_close(found, expected[rows, columns], rtol=1e-4, atol=1e-4)
    assert sum(equation.startswith("idtO") for equation, _ in calls) == 3
