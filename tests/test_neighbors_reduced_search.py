"""FAISS search over the sketches' principal components (``search_components``)."""

import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from _architectures import family_case, mlp, oracle_jacobians, oracle_kernel
from sklearn.utils._param_validation import InvalidParameterError

import sksim._engine.budget
import sksim.neighbors
from sksim import LabelIssueDetector, _reduced_search
from sksim._engine import rows
from sksim._engine.rows import TAKE_ROWS
from sksim._reduced_search import (
    direction_rows,
    flat_vectors,
    largest,
    largest_products,
    locality_order,
    principal_directions,
    rank_candidates,
    sketch_similarity,
)
from sksim.neighbors import (
    CANDIDATE_BYTES,
    MAX_RANKING_BLOCKS,
    NetworkNeighbors,
    index_bytes,
)

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    return X, rng.normal(size=(40, 4)).astype(np.float32)


def search(net, X, search_components, **kwargs):
    kwargs = dict(n_neighbors=5, n_components=16, random_state=3, **kwargs)
    return NetworkNeighbors(
        net, algorithm="faiss", search_components=search_components, **kwargs
    ).fit(X)


def recall(found, exact):
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]
    return np.mean(hits) / exact.shape[1]


def candidates_of(reduced, X, n_candidates):
    """The rows the FAISS index of a reduced search finds for ``X``."""
    if X is None:
        F = reduced.reference_features_
    else:
        F = reduced._sketch(X, None, reduced._kept_directions())
    return reduced._faiss_index.search(reduced._searched(F), n_candidates)[1]


def pieces_bytes(fitted):
    """Bytes of the whitened pieces a fitted search keeps of its reference."""
    return sum(p.nbytes() for p in fitted._reference_pieces)


def memory_for(query_bytes, fitted, kept=True):
    """The ``max_memory`` that gives a block of queries ``query_bytes``.

    Two thirds of it, less what a search like ``fitted`` (over the 'Flat'
    index) holds besides (the reference's float32 features and the index's
    copy of them), go to the Jacobians: half to the queries when the
    reference's are ``kept``, all of them otherwise.
    """
    held = 2 * fitted.reference_features_.nbytes
    share = 2 * sksim.neighbors.KEPT_MEMORY
    return int(np.ceil(((1 + kept) * query_bytes + held) / share)) + 3


@pytest.mark.parametrize("candidates", [1, 16])
@pytest.mark.parametrize(
    ("blocks", "take_rows"), [(1, TAKE_ROWS), (3, TAKE_ROWS), (3, 7)]
)
@pytest.mark.parametrize("query_reference", [False, True])
def test_candidates_are_ranked_by_their_exact_similarities(
    data, query_reference, blocks, candidates, take_rows, monkeypatch
):
    X_ref, X_new = data
    net = mlp(4, 3).double()
    # with 3 blocks, the reference's pieces are not kept: each block of queries
    # meets its candidates in a pass over them, reading take_rows at a time
    monkeypatch.setattr(rows, "TAKE_ROWS", take_rows)
    whole = search(net, X_ref, 4)
    max_memory = memory_for(pieces_bytes(whole) / blocks, whole, blocks == 1)
    reduced = search(
        net, X_ref, 4, max_memory=max_memory, candidates_per_neighbor=candidates
    )
    assert reduced.exact_ranking_
    assert (reduced._reference_pieces is None) == (blocks > 1)
    assert len(reduced._blocks(len(X_ref))) == blocks
    X = None if query_reference else X_new
    sim, ind = reduced.most_similar(X)
    queries = X_ref if query_reference else X_new
    J = oracle_jacobians(
        net, torch.as_tensor(np.r_[queries, X_ref], dtype=torch.float64)
    )
    K = oracle_kernel(J[: len(queries)], J[len(queries) :], "cosine")
    k = 5 + query_reference  # the sample itself is found, then dropped
    for q, row in enumerate(candidates_of(reduced, X, candidates * k)):
        if query_reference:
            row = row[row != q]
        expected = row[np.lexsort((row, -K[q, row]))][:5]
        np.testing.assert_array_equal(ind[q], expected)
        np.testing.assert_allclose(sim[q], K[q, expected], rtol=1e-6)  # float32
    if query_reference:
        assert not (ind == np.arange(len(X_ref))[:, None]).any()


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("family", ["cnn_batchnorm", "residual", "bert", "gru"])
def test_every_family_ranks_its_candidates_by_exact_similarities(
    family, blocks, monkeypatch
):
    # the engine's third must hold a sample's unwhitened pieces, larger than
    # its whitened ones: the search's two thirds shrink instead
    for shares in (sksim.neighbors, sksim._engine.budget):
        monkeypatch.setattr(shares, "KEPT_MEMORY", 0.1)
    module, X = family_case(family, 14)
    X_ref, X_new = X[:10].numpy(), X[10:].numpy()
    kwargs = dict(n_components=8, search_components=2, n_neighbors=2, batch_size=3)
    kept = NetworkNeighbors(module, algorithm="faiss", **kwargs).fit(X_ref)
    per_sample = sum(p.nbytes() for p in kept._reference_pieces) / len(X_ref)
    # blocks of 4, 4 and 2 rows: the reference's pieces are computed again
    max_memory = memory_for(4 * per_sample, kept, False) if blocks == 3 else None
    reduced = NetworkNeighbors(
        module, algorithm="faiss", max_memory=max_memory, **kwargs
    ).fit(X_ref)
    assert reduced.exact_ranking_ and len(reduced._blocks(10)) == blocks
    # 24 candidates per neighbour: every reference example is one of them
    J = oracle_jacobians(module, X)
    K = oracle_kernel(J, J[:10], "cosine")
    for X_query, K_query in [(X_new, K[10:]), (None, K[:10])]:
        if X_query is None:  # the reference itself: each example not its own
            np.fill_diagonal(K_query, -np.inf)
        sim, ind = reduced.most_similar(X_query)
        expected = np.argsort(-K_query, axis=1, kind="stable")[:, :2]
        np.testing.assert_array_equal(ind, expected)
        np.testing.assert_allclose(
            sim, np.take_along_axis(K_query, ind, 1), rtol=1e-5, atol=1e-6
        )


def test_exact_ranking_finds_more_exact_neighbors_than_the_sketches(data):
    X_ref, X_new = data
    net = mlp(4, 3)
    exhaustive = NetworkNeighbors(net, n_neighbors=5).fit(X_ref)
    _, exact = exhaustive.most_similar(X_new)
    flat = search(net, X_ref, None)
    assert not exhaustive.exact_ranking_ and not flat.exact_ranking_
    _, flat = flat.most_similar(X_new)
    _, reduced = search(net, X_ref, 8).most_similar(X_new)
    assert recall(reduced, exact) >= 0.9
    assert recall(reduced, exact) > recall(flat, exact) + 0.1


def test_enough_candidates_give_the_exact_neighbors(data):
    """Candidates that cover the whole reference: every neighbour is ranked."""
    X_ref, X_new = data
    net = mlp(4, 3).double()
    everyone = search(net, X_ref, 4, candidates_per_neighbor=len(X_ref) // 5)
    sim, ind = everyone.most_similar(X_new)
    J = oracle_jacobians(net, torch.as_tensor(np.r_[X_new, X_ref], dtype=torch.float64))
    K = oracle_kernel(J[: len(X_new)], J[len(X_new) :], "cosine")
    np.testing.assert_array_equal(ind, np.argsort(-K, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(sim, np.take_along_axis(K, ind, 1), rtol=1e-6)
    few = search(net, X_ref, 4, candidates_per_neighbor=1).most_similar(X_new)[1]
    assert recall(few, ind) < 1  # the test can tell


def test_sketches_rank_the_candidates_past_eight_blocks_of_jacobians(data):
    X_ref, X_new = data
    net = mlp(4, 3, 200)  # Jacobians larger than the sketches, as in practice
    whole = search(net, X_ref, 4)
    per_sample = pieces_bytes(whole) / len(X_ref)
    assert MAX_RANKING_BLOCKS == 8
    # thirds of max_memory of 38 rows: 8 of them hold the 300; of 37 rows, 9
    streamed = search(net, X_ref, 4, max_memory=int(3 * 38 * per_sample) + 3)
    assert streamed.exact_ranking_
    # ranked in blocks of what the index and projections leave of two thirds
    held = 2 * streamed.reference_features_.nbytes
    step = int((2 * 38 * per_sample - held) / per_sample)
    assert len(streamed._blocks(300)) == -(-300 // step)
    reduced = search(net, X_ref, 4, max_memory=int(3 * 37 * per_sample) + 3)
    assert not reduced.exact_ranking_ and reduced._reference_pieces is None
    sim, ind = reduced.most_similar(X_new)
    F = reduced._sketch(X_new)
    whole = np.einsum("qw,qkw->qk", F, reduced.reference_features_[ind])
    np.testing.assert_allclose(sim, whole, atol=1e-6)
    assert (np.diff(sim, axis=1) <= 0).all()


@pytest.mark.parametrize("search_components", [4, None])
def test_queries_go_in_chunks_that_fit_and_change_no_result(data, search_components):
    X_ref, _ = data
    X_new = np.random.default_rng(5).normal(size=(700, 4)).astype(np.float32)
    whole = search(mlp(4, 3), X_ref, search_components)
    per_sample = 4 * whole.reference_features_.shape[1]  # a query's sketch,
    per_sample += CANDIDATE_BYTES * (5 if search_components is None else 24 * 5)
    if whole.exact_ranking_:  # its candidates and its whitened pieces
        per_sample += pieces_bytes(whole) / len(X_ref)
    # 300 queries a chunk, beside the reference's Jacobians when ranked exactly
    max_memory = memory_for(300 * per_sample, whole, whole.exact_ranking_)
    chunked = search(mlp(4, 3), X_ref, search_components, max_memory=max_memory)
    assert chunked.exact_ranking_ == (search_components is not None)
    calls = []
    sketch = chunked._sketch
    chunked._sketch = lambda X, *args: calls.append(len(X)) or sketch(X, *args)
    sim, ind = chunked.most_similar(X_new)
    assert calls == [300, 300, 100]
    expected = whole.most_similar(X_new)
    np.testing.assert_array_equal(ind, expected[1])
    np.testing.assert_allclose(sim, expected[0], rtol=1e-6)


def test_candidates_ranked_in_a_pass_over_the_reference_hold_max_memory_at_most():
    """Where the reference's whitened pieces are not kept, the pass that ranks
    the candidates holds where it meets each (56 bytes a candidate), and the
    chunks of queries counted 16: 1.8 times max_memory for the queries, 1.9
    for the reference's own neighbours."""
    net = mlp(4, 3, hidden=16)
    rng = np.random.default_rng(1)
    X, queries = (rng.normal(size=(n, 4)).astype(np.float32) for n in (4000, 3000))
    max_memory = 3_490_000
    search = NetworkNeighbors(
        net,
        algorithm="faiss",
        n_components=64,
        search_components=16,
        max_memory=max_memory,
        random_state=0,
    ).fit(X)
    assert search.exact_ranking_ and search._kept_reference_pieces() is None
    index = sksim.neighbors.index_bytes(search._empty_index(16), len(X))
    kept = search.reference_features_.nbytes + index
    search.kneighbors(queries[:10])  # what a first call sets up once
    for Q in (queries, None):
        tracemalloc.start()
        distances, indices = search.kneighbors(Q)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak - distances.nbytes - indices.nbytes + kept < max_memory


@pytest.mark.parametrize("index", ["Flat", "HNSW32"])
@pytest.mark.parametrize("query_reference", [False, True])
def test_candidates_are_searched_in_chunks_that_change_no_result(
    data, query_reference, index, monkeypatch
):
    X_ref, X_new = data
    X = None if query_reference else X_new
    reduced = search(mlp(4, 3), X_ref, 4, index=index)
    expected = reduced.most_similar(X)
    monkeypatch.setattr(_reduced_search, "SEARCH_ROWS", 16)
    queries, budgets = [], set()
    searched = _reduced_search.largest_products

    def recorded(Q, R, n, max_bytes):
        queries.append(len(Q))
        budgets.add(max_bytes)
        return searched(Q, R, n, max_bytes)

    monkeypatch.setattr(_reduced_search, "largest_products", recorded)
    sim, ind = reduced.most_similar(X)
    n = len(X_ref if query_reference else X_new)
    # the exhaustive index's products are torch's, in the engine's batches' share
    assert queries == ([16] * (n // 16) + [n % 16] if index == "Flat" else [])
    assert budgets == ({reduced.max_memory / 3} if index == "Flat" else set())
    np.testing.assert_array_equal(ind, expected[1])
    np.testing.assert_array_equal(sim, expected[0])


@pytest.mark.parametrize("n_reference", [300, 40])
def test_largest_products_find_what_faiss_exhaustive_search_finds(
    n_reference, monkeypatch
):
    import faiss

    rng = np.random.default_rng(1)
    R = rng.normal(size=(n_reference, 8)).astype(np.float32)
    Q = rng.normal(size=(50, 8)).astype(np.float32)
    index = faiss.IndexFlatIP(8)
    index.add(R)
    monkeypatch.setattr(_reduced_search, "TILE_QUERIES", 7)  # tiles with remainders
    monkeypatch.setattr(_reduced_search, "TILE_REFERENCE", 32)
    inf = float("inf")
    for n in (1, 12, 40):
        found = largest_products(Q, flat_vectors(index), n, inf)
        np.testing.assert_array_equal(np.sort(found), np.sort(index.search(Q, n)[1]))
    products = Q.astype(np.float64) @ R.T.astype(np.float64)  # float64 oracle
    top = np.sort(np.argsort(-products, axis=1, kind="stable")[:, :12])
    np.testing.assert_array_equal(np.sort(largest_products(Q, R, 12, inf)), top)
    frozen = Q.copy()
    frozen.flags.writeable = False  # memory-mapped read-only: read, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            np.sort(largest_products(frozen, R, 12, inf)), top
        )
    mm = torch.mm
    tiles = []
    monkeypatch.setattr(
        torch, "mm", lambda a, b, out: tiles.append(out.shape) or mm(a, b, out=out)
    )
    three_rows = largest_products(Q, R, 12, 3 * 4 * 32)  # tiles of 3 x 32 float32
    assert {shape[0] for shape in tiles} == {3, 50 % 3}
    np.testing.assert_array_equal(np.sort(three_rows), top)
    monkeypatch.setattr(torch, "mm", mm)
    too_many = largest_products(Q, R, n_reference + 3, inf)  # FAISS marks: not found
    assert (np.sort(too_many)[:, :3] == -1).all()
    assert (np.sort(too_many)[:, 3:] == np.arange(n_reference)).all()


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat", "IDMap,Flat"])
def test_only_an_exhaustive_inner_product_index_is_searched_by_products(factory):
    import faiss

    index = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    assert flat_vectors(index) is None
    assert flat_vectors(faiss.IndexFlatL2(8)) is None
    flat = faiss.IndexFlatIP(8)
    X = np.arange(24, dtype=np.float32).reshape(3, 8)
    flat.add(X)
    np.testing.assert_array_equal(flat_vectors(flat), X)


@pytest.mark.parametrize(
    "factory", ["Flat", "HNSW32", "IVF16,Flat", "PQ8x4", "HNSW16,SQ8"]
)
def test_index_bytes_are_what_the_vectors_add_to_an_index(factory):
    import faiss

    X = np.random.default_rng(0).normal(size=(2000, 32)).astype(np.float32)
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    expected = index_bytes(index, len(X))  # from the empty index
    index.train(X)
    before = faiss.serialize_index(index).nbytes
    index.add(X)
    added = faiss.serialize_index(index).nbytes - before
    assert expected == pytest.approx(added, rel=0.02)


def test_no_reduction_when_the_sketches_are_not_wider(data):
    X_ref, X_new = data
    net = mlp(4, 3)
    reduced = search(net, X_ref, 48)
    assert reduced.search_directions_ is None and not reduced.exact_ranking_
    flat = search(net, X_ref, None)
    np.testing.assert_array_equal(
        reduced.most_similar(X_new)[1], flat.most_similar(X_new)[1]
    )


def test_a_reference_smaller_than_the_search_components_is_ranked_exactly(data):
    """Reduced to one component below its size: every example is a candidate."""
    X_ref, X_new = data
    net = mlp(4, 3).double()
    small = search(net, X_ref[:12], 16)
    assert small.exact_ranking_ and small.search_directions_.shape[1] == 11
    sim, ind = small.most_similar(X_new)
    J = oracle_jacobians(net, torch.as_tensor(np.r_[X_new, X_ref[:12]]).double())
    K = oracle_kernel(J[: len(X_new)], J[len(X_new) :], "cosine")
    np.testing.assert_array_equal(ind, np.argsort(-K, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(sim, np.take_along_axis(K, ind, 1), rtol=1e-6)


@pytest.mark.parametrize("max_memory", [2**31, 100_000])  # Jacobians kept or not
def test_pickled_search_gives_the_same_neighbors(data, max_memory):
    """Unpickled with Jacobians that do not fit, it failed on the missing ones."""
    X_ref, X_new = data
    reduced = search(mlp(4, 3), X_ref, 6, max_memory=max_memory)
    again = pickle.loads(pickle.dumps(reduced))
    assert again.exact_ranking_ and "_reference_pieces" not in again.__dict__
    found, expected = again.most_similar(X_new), reduced.most_similar(X_new)
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_search_components_needs_the_faiss_search(data):
    X_ref, _ = data
    with pytest.raises(ValueError, match='set algorithm="faiss"'):
        NetworkNeighbors(mlp(4, 1), n_components=8, search_components=4).fit(X_ref)
    with pytest.raises(InvalidParameterError, match="search_components"):
        search(mlp(4, 1), X_ref, 0)


def test_an_index_that_finds_too_few_candidates_says_so(data):
    X_ref, X_new = data
    kwargs = dict(index="IVF16,Flat", index_params="nprobe=1")
    reduced = search(mlp(4, 3), X_ref, 4, **kwargs)  # lists of about 19
    with pytest.raises(
        ValueError,
        match=r"'IVF16,Flat' found fewer than 120 candidates \(24 per neighbour; "
        r"fewer with a lower candidates_per_neighbor\) for some queries: search",
    ):
        reduced.most_similar(X_new)
    kwargs["index_params"] = "nprobe=16"  # every list
    _, found = search(mlp(4, 3), X_ref, 4, **kwargs).most_similar(X_new)
    assert found.shape == (len(X_new), 5)


@pytest.mark.parametrize("block_rows", [3, 2**16])
def test_rank_candidates_against_a_full_sort(block_rows, monkeypatch):
    monkeypatch.setattr(_reduced_search, "BLOCK_ROWS", block_rows)
    rng = np.random.default_rng(1)
    Q = rng.normal(size=(7, 5)).astype(np.float32)
    R = rng.normal(size=(30, 5)).astype(np.float32)
    R[3] = R[12] = 10 * Q[0]  # a tie at the top: the smaller row comes first
    candidates = np.stack([rng.permutation(30)[:10] for _ in range(7)])
    others = [r for r in rng.permutation(30) if r not in (3, 12)]
    candidates[0] = [12, 3, *others[:8]]
    given = candidates.copy()
    for array in (Q, R, candidates):  # read-only, as unpickled sketches may be
        array.setflags(write=False)
    sim, ind = rank_candidates(sketch_similarity(Q, R), candidates, 4)
    np.testing.assert_array_equal(candidates, given)
    shuffled = rank_candidates(
        sketch_similarity(Q, R), candidates, 4, order=rng.permutation(7)
    )
    np.testing.assert_array_equal(shuffled[0], sim)  # the order changes no bit
    np.testing.assert_array_equal(shuffled[1], ind)
    for q in range(7):
        inner = Q[q] @ R[candidates[q]].T
        order = np.lexsort((candidates[q], -inner))[:4]
        np.testing.assert_array_equal(ind[q], candidates[q][order])
        # float32 products summed in another order: errors of the inputs' scale
        np.testing.assert_allclose(sim[q], inner[order], rtol=1e-6, atol=1e-5)
    assert list(ind[0][:2]) == [3, 12]


@pytest.mark.parametrize("n", [1, 4, 12])
def test_largest_orders_as_a_stable_sort_of_the_values(n):
    rng = np.random.default_rng(3)
    values = rng.choice(
        np.float32([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 2.0, np.inf]),
        size=(50, 12),
    )
    values[:, 5] = rng.normal(size=50)
    given = values.copy()
    expected = np.argsort(-values, axis=1, kind="stable")[:, :n]
    np.testing.assert_array_equal(largest(values, n), expected)
    np.testing.assert_array_equal(values, given)


def test_locality_order_puts_each_cluster_together(monkeypatch):
    rng = np.random.default_rng(2)
    centres = 10 * rng.normal(size=(4, 8))
    blob = rng.permutation(np.repeat(np.arange(4), 60))
    G = (centres[blob] + rng.normal(size=(240, 8))).astype(np.float32)
    monkeypatch.setattr(_reduced_search, "LOCALITY_CLUSTERS", 4)
    order = locality_order(G, random_state=0)
    np.testing.assert_array_equal(np.sort(order), np.arange(240))
    runs = np.flatnonzero(np.diff(blob[order])) + 1  # where the blob changes
    assert len(runs) == 3  # four contiguous runs, one per blob
    np.testing.assert_array_equal(locality_order(G[:77], 0), np.arange(77))


def test_principal_directions_span_the_leading_singular_vectors():
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(40, 40)))[0]
    scales = np.r_[10, 8, 6, np.full(37, 0.1)]
    F = (rng.normal(size=(500, 40)) * scales) @ basis.T
    V = principal_directions(F.astype(np.float32), 3, random_state=0)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-5)
    # the projection onto V keeps the three leading directions of the basis
    leading = basis[:, :3]
    np.testing.assert_allclose(np.linalg.norm(V.T @ leading, axis=0), 1, atol=1e-3)


def test_principal_directions_under_a_float64_default_dtype():
    F = np.random.default_rng(4).normal(size=(60, 30)).astype(np.float32)
    expected = principal_directions(F, 4, random_state=0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        V = principal_directions(F, 4, random_state=0)
    finally:
        torch.set_default_dtype(default)
    assert V.dtype == np.float32
    np.testing.assert_array_equal(V, expected)


def test_the_directions_are_fitted_on_the_sketches_that_fit_in_max_memory(
    monkeypatch,
):
    """4 096 reference sketches of 100 outputs x 256 columns (400 MB) were
    sampled whatever max_memory, at 100 MB."""
    fitted, directions = [], sksim.neighbors.principal_directions

    def recorded(F, *args):
        fitted.append(F.shape)
        return directions(F, *args)

    monkeypatch.setattr(sksim.neighbors, "principal_directions", recorded)
    X = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
    net, max_memory = mlp(3, 10, hidden=16), 2**22
    search = sksim.neighbors.NetworkNeighbors(
        net,
        algorithm="faiss",
        n_components=64,
        search_components=8,
        max_memory=max_memory,
        random_state=0,
    ).fit(X)
    ((rows, width),) = fitted
    assert search.search_directions_.shape == (width, 8)
    assert 16 <= rows < 600 and rows * 8 * width <= max_memory / 3


def test_more_components_than_fitting_rows_fit_on_twice_as_many(monkeypatch):
    monkeypatch.setattr(_reduced_search, "MAX_FIT_ROWS", 8)
    rows = direction_rows(100, 10, random_state=0)
    assert len(rows) == 20 and (np.diff(rows) > 0).all() and rows[-1] < 100
    np.testing.assert_array_equal(direction_rows(20, 10, 0), np.arange(20))  # all
    F = np.random.default_rng(3).normal(size=(100, 40)).astype(np.float32)
    V = principal_directions(F[rows], 10, random_state=0)
    assert V.shape == (40, 10)
    np.testing.assert_allclose(V.T @ V, np.eye(10), atol=1e-5)


def test_label_issue_detector_passes_search_components_on(data):
    X_ref, _ = data
    y = (X_ref[:, 0] > 0).astype(int)
    kwargs = dict(algorithm="faiss", n_components=16, random_state=0)
    net = mlp(4, 2)
    detector = LabelIssueDetector(net, cv="prefit", search_components=4, **kwargs)
    detector.fit(X_ref, y)
    assert detector.exact_ranking_
    search = NetworkNeighbors(
        net, n_neighbors=detector.n_neighbors, search_components=4, **kwargs
    ).fit(X_ref)
    assert search.exact_ranking_
    np.testing.assert_array_equal(detector.neighbor_indices_, search.most_similar()[1])
    with pytest.raises(InvalidParameterError, match="search_components"):
        LabelIssueDetector(net, search_components=0, **kwargs).fit(X_ref, y)
    one = LabelIssueDetector(
        net, cv="prefit", search_components=4, candidates_per_neighbor=1, **kwargs
    ).fit(X_ref, y)
    search.set_params(candidates_per_neighbor=1)
    np.testing.assert_array_equal(one.neighbor_indices_, search.most_similar()[1])
    assert not np.array_equal(one.neighbor_indices_, detector.neighbor_indices_)
    with pytest.raises(InvalidParameterError, match="candidates_per_neighbor"):
        LabelIssueDetector(net, candidates_per_neighbor=0, **kwargs).fit(X_ref, y)


def test_candidates_are_ranked_exactly_when_the_layers_change_form():
    """Layers that see other numbers of positions in other batches (sequences
    cut to their batch's longest) change the form of their pieces: the
    queries' were dropped, and their candidates ranked by the sketches'
    4 components while exact_ranking_ said otherwise (0.09 off)."""
    net, ids = family_case("trimmed", 60)
    reference, queries = ids[:40], ids[40:]
    J = oracle_jacobians(net, ids)
    K = oracle_kernel(J, J, "cosine")
    reduced = search(net, reference, 4, batch_size=6)
    assert reduced.exact_ranking_
    sim, ind = reduced.most_similar(queries)
    np.testing.assert_allclose(sim, np.take_along_axis(K[40:, :40], ind, 1), rtol=1e-6)
    sim, ind = reduced.most_similar()  # the reference's own, in blocks
    np.testing.assert_allclose(sim, np.take_along_axis(K[:40, :40], ind, 1), rtol=1e-6)
    exact = np.argsort(-K[40:, :40], axis=1, kind="stable")[:, :5]
    assert recall(reduced.most_similar(queries)[1], exact) > 0.9
