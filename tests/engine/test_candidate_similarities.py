"""Exact similarities of chosen candidate pairs, against the float64 oracle."""

import numpy as np
import pytest
from _architectures import (
    LAYER_CASES,
    family_case,
    layer_case,
    oracle_jacobians,
    oracle_kernel,
)

from sksim._engine import capture
from sksim._engine import pieces as pieces_module
from sksim._engine import rows as rows_module
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import KeptPieces
from sksim._engine.rows import candidate_similarities, streamed_similarities


def whitened(engine, X, max_bytes=float("inf")):
    kept = KeptPieces(len(X), max_bytes)
    for rows, pieces, _ in engine.mapped_pieces(X, -0.5, 1e-5):
        kept(rows, pieces)
    return kept


@pytest.mark.parametrize("factorised", ["by cost", "always"])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_candidate_similarities_match_the_oracle(name, factorised, monkeypatch):
    if factorised == "always":  # layers of many positions kept as their factors
        monkeypatch.setattr(capture, "factorised_is_cheaper", lambda *_: True)
    module, X = layer_case(name)
    K = oracle_kernel(*(2 * [oracle_jacobians(module, X)]), "cosine")
    engine = JacobianEngine(module, batch_size=4)  # two batches, kept together
    reference = whitened(engine, X).pieces
    queries = [p.take(slice(1, 5)) for p in reference]
    rng = np.random.default_rng(0)
    columns = np.sort([rng.choice(len(X), 3, replace=False) for _ in range(4)], axis=1)
    found = candidate_similarities(queries, reference, columns, engine.max_memory)
    expected = np.take_along_axis(K[1:5], columns, axis=1)
    np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factorised", ["by cost", "always"])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_streamed_similarities_match_the_oracle(name, factorised, monkeypatch):
    if factorised == "always":
        monkeypatch.setattr(capture, "factorised_is_cheaper", lambda *_: True)
    monkeypatch.setattr(rows_module, "TAKE_ROWS", 3)  # candidates read in parts
    module, X = layer_case(name)
    K = oracle_kernel(*(2 * [oracle_jacobians(module, X)]), "cosine")
    engine = JacobianEngine(module, batch_size=2)
    queries = whitened(engine, X[1:5]).pieces
    rng = np.random.default_rng(1)
    # reference row 0 is nobody's candidate; batches meet 0, 1 or 2 per query
    columns = np.sort(
        [rng.choice(np.arange(1, len(X)), 3, replace=False) for _ in range(4)], axis=1
    )
    found = streamed_similarities(engine, X, [(slice(0, 4), queries)], columns, 1e-5)
    expected = np.take_along_axis(K[1:5], columns, axis=1)
    np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-7)


def test_pairs_of_many_positions_go_a_few_queries_at_a_time(monkeypatch):
    monkeypatch.setattr(capture, "factorised_is_cheaper", lambda *_: True)
    module, X = layer_case("conv1d")
    K = oracle_kernel(*(2 * [oracle_jacobians(module, X)]), "cosine")
    reference = whitened(JacobianEngine(module, batch_size=6), X).pieces
    columns = np.tile(np.arange(len(X)), (len(X), 1))
    monkeypatch.setattr(pieces_module, "PAIR_CHUNK_ELEMENTS", 1)  # one query a time
    found = candidate_similarities(reference, reference, columns, float("inf"))
    np.testing.assert_allclose(found, K, rtol=1e-6, atol=1e-7)


def test_pieces_are_kept_when_the_first_batch_says_they_fit():
    module, X = layer_case("linear")
    one_batch = whitened(JacobianEngine(module, batch_size=6), X).pieces
    engine = JacobianEngine(module, batch_size=2)  # three batches copied in
    kept = whitened(engine, X).pieces
    for joined, piece in zip(kept, one_batch, strict=True):
        np.testing.assert_allclose(joined.h, piece.h, rtol=1e-12)
        np.testing.assert_allclose(joined.delta, piece.delta, rtol=1e-12)
    total = sum(p.nbytes() for p in kept)
    assert whitened(engine, X, max_bytes=total).pieces is not None
    # the first batch, extrapolated to the six samples, is already too large
    assert whitened(engine, X, max_bytes=total - 1).pieces is None


def test_streamed_similarities_meet_every_run_of_queries_in_one_pass(monkeypatch):
    """Queries whose pieces take several forms (runs) were ranked in a pass
    over the reference each: 94 passes for 800 queries of a token model."""
    module, X = family_case("trimmed", 12)
    K = oracle_kernel(*(2 * [oracle_jacobians(module, X)]), "cosine")
    engine = JacobianEngine(module, batch_size=3)  # sequences cut per batch
    kept = KeptPieces(8, float("inf"), several_forms=True)
    for rows, pieces, _ in engine.mapped_pieces(X[:8], -0.5, 1e-5):
        kept(rows, pieces)
    assert len(kept.runs) > 1
    passes, mapped = [], engine.mapped_pieces
    monkeypatch.setattr(
        engine, "mapped_pieces", lambda *a, **k: passes.append(1) or mapped(*a, **k)
    )
    monkeypatch.setattr(rows_module, "TAKE_ROWS", 100)  # one read of the reference
    columns = np.tile(np.arange(4, 12), (8, 1))
    found = streamed_similarities(engine, X, kept.runs, columns, 1e-5)
    assert len(passes) == 1
    np.testing.assert_allclose(found, K[:8, 4:], rtol=1e-6, atol=1e-7)
