"""What the density estimator keeps counts against ``max_memory``.

The soft count's sum of whitened Jacobians, or the reference sketches of the
sketched counts, may take two thirds of it; sketched queries are counted in
chunks that fit in what is left, as the exact search over sketches takes its
queries and its all-pairs query.
"""

import re
import sys
import tracemalloc

import numpy as np
import pytest
from _architectures import MLP, mlp
from _live_memory import LiveBytes

from sksim import (
    GradientDensityEstimator,
    NetworkNeighbors,
    density,
    neighbors,
    network_similarity,
)
from sksim._engine import rows, sketch
from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 4)).astype(np.float32)


def test_soft_counts_equal_the_row_sums_of_the_exact_kernel(data):
    net = mlp(4, 3)
    counts = GradientDensityEstimator(net, batch_size=7).fit(data).neighbor_counts(data)
    K = network_similarity(net, data, kind="cosine")
    np.testing.assert_allclose(counts, K.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_a_sum_larger_than_the_budget_is_refused(data):
    net = mlp(4, 3)
    p = sum(t.numel() for t in net.parameters())
    size = 8 * 3 * p  # the float64 sum of 3 outputs x p parameters
    estimator = GradientDensityEstimator(net, max_memory=int(1.4 * size))
    with pytest.raises(MemoryError, match=r'method="soft" keeps.*max_memory') as error:
        estimator.fit(data)
    # the advice's sketch, fewer components than the p parameters, fits
    advised = int(re.search(r"n_components=, e\.g\. (\d+)", str(error.value))[1])
    assert advised < p
    estimator.set_params(n_components=advised).fit(data)
    assert estimator.reference_features_.shape[0] == 1  # the sketches' sum
    estimator.set_params(n_components=None, max_memory=int(1.6 * size)).fit(data)
    assert estimator.reference_sum_.shape == (3, p)


def test_sketched_soft_counts_are_the_sketched_kernels_row_sums(data, monkeypatch):
    """A network whose sums S do not fit sums the reference's sketches: the
    counts are the row sums of the sketched hard counts' similarities, with
    the reference sketched in chunks within a third of max_memory."""
    net = mlp(4, 3)
    p = sum(t.numel() for t in net.parameters())
    max_memory = int(1.4 * 8 * 3 * p)  # too small for S, as above
    kwargs = dict(n_components=64, random_state=0)
    soft = GradientDensityEstimator(net, max_memory=max_memory, **kwargs)
    sketched = recorded_sketches(soft, monkeypatch)
    counts = soft.fit(data).neighbor_counts(data[:9])
    assert soft.reference_features_.shape == (1, 3 * 64)
    assert not hasattr(soft, "reference_sum_")
    per_chunk = int(max_memory / 3 / sketch_bytes(1, 3, 64))
    assert sketched[:2] == [per_chunk, per_chunk]  # the reference, in chunks
    pairs = GradientDensityEstimator(
        net, method="power", power=1, max_memory=None, **kwargs
    ).fit(data)  # the same sketches, all similarities kept
    F = pairs._sketch(data[:9]) @ pairs.reference_features_.T
    np.testing.assert_allclose(counts, F.sum(axis=1), rtol=1e-5, atol=1e-5)
    exact = network_similarity(net, data[:9], data).sum(axis=1)
    assert np.abs(counts - exact).max() < 0.1 * len(data)  # an estimate of them


def test_chunks_of_sketches_draw_their_maps_once(data, monkeypatch):
    """Each chunk drew the maps anew: a QR per chunk, 0.4 s a row at the least.

    Another network of another form draws its own.
    """
    drawn = []
    build = sketch.GradientSketch._build
    monkeypatch.setattr(
        sketch.GradientSketch,
        "_build",
        lambda self, pieces: drawn.append(len(pieces)) or build(self, pieces),
    )
    net, kwargs = mlp(4, 3), dict(n_components=64, random_state=0)
    p = sum(t.numel() for t in net.parameters())
    max_memory = int(1.4 * 8 * 3 * p)  # the reference sketched in chunks
    chunked = GradientDensityEstimator(net, max_memory=max_memory, **kwargs)
    sizes = recorded_sketches(chunked, monkeypatch)
    chunked.fit(data)
    assert len(sizes) > 5 and drawn == [2]  # its two linear layers, for all chunks
    whole = GradientDensityEstimator(net, max_memory=None, method="power", **kwargs)
    np.testing.assert_allclose(
        chunked.reference_features_[0],
        whole.fit(data).reference_features_.sum(0),
        rtol=1e-5,
        atol=1e-5,
    )
    drawn.clear()
    wider = GradientDensityEstimator(mlp(4, 3, hidden=40), max_memory=None, **kwargs)
    assert wider.fit(data).reference_features_.shape == (1, 3 * 64)
    assert drawn == [2]
    assert getattr(sketch._SHARED, "sketches", None) is None  # freed at the end


def sketch_bytes(n, d, n_components):
    """Bytes of ``n`` float32 sketches of ``d`` outputs x ``n_components``."""
    return 4 * n * d * n_components


def recorded_sketches(estimator, monkeypatch):
    """The sizes of the chunks ``estimator`` sketches from now on."""
    sizes, sketch = [], estimator._sketch

    def recorded(X):
        sizes.append(len(X))
        return sketch(X)

    monkeypatch.setattr(estimator, "_sketch", recorded)
    return sizes


def test_reference_sketches_larger_than_the_budget_are_refused(data):
    net = mlp(4, 3)
    size = sketch_bytes(len(data), 3, 8)
    estimator = GradientDensityEstimator(
        net, method="hard", n_components=8, max_memory=int(1.4 * size)
    )
    with pytest.raises(MemoryError, match="30 reference examples.*lower n_comp"):
        estimator.fit(data)
    estimator.set_params(max_memory=int(1.6 * size)).fit(data)
    assert estimator.reference_features_.nbytes == size


@pytest.mark.parametrize("method", ["hard", "power"])
def test_sketched_queries_in_chunks_count_as_in_one(data, method, monkeypatch):
    net = mlp(4, 3)
    kwargs = dict(method=method, threshold=0.2, n_components=8, random_state=0)
    whole = GradientDensityEstimator(net, max_memory=None, **kwargs).fit(data)
    # chunks of 4 queries: half of what the reference sketches leave
    chunk = 2 * sketch_bytes(4, 3, 8)
    max_memory = int(1.5 * (chunk + sketch_bytes(len(data), 3, 8))) + 1
    chunked = GradientDensityEstimator(net, max_memory=max_memory, **kwargs).fit(data)
    sketched, blocks = recorded_sketches(chunked, monkeypatch), []
    sketch_rows = rows.sketch_rows

    def counted_rows(F, F_ref, max_bytes=float("inf")):
        for block, k in sketch_rows(F, F_ref, max_bytes):
            blocks.append(k.shape[0])
            yield block, k

    monkeypatch.setattr(rows, "sketch_rows", counted_rows)
    counts = chunked.neighbor_counts(data)
    assert sketched == [4] * 7 + [2]
    assert blocks == [1] * 30  # 32 similarities of 12 bytes fit in half of a chunk
    # float32 products of other shapes: equal to rounding
    np.testing.assert_allclose(counts, whole.neighbor_counts(data), rtol=1e-6)
    assert counts.min() >= 1  # each reference example counts itself


@pytest.fixture(scope="module")
def searches(data):
    """Exact searches over sketches: without a limit, and with queries in chunks.

    The limited one's chunks of queries take 4 of them at a time.
    """
    net = mlp(4, 3)
    kwargs = dict(algorithm="exact", n_components=8, n_neighbors=3, random_state=0)
    whole = NetworkNeighbors(net, max_memory=None, **kwargs).fit(data[:20])
    chunk = 2 * sketch_bytes(4, 3, 8)
    max_memory = int(1.5 * (chunk + sketch_bytes(20, 3, 8))) + 1
    chunked = NetworkNeighbors(net, max_memory=max_memory, **kwargs).fit(data[:20])
    return whole, chunked


def assert_same_neighbours(found, expected):
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-6)


def test_sketched_hard_counts_hold_max_memory_at_most():
    """The chunks' sizes were checked, not what is held: every chunk's
    similarities kept at once (128 MB here) passed."""
    net = mlp(4, 3, hidden=16)
    X = np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32)
    max_memory = 4 * len(X) * 3 * 16 * 4  # four times the reference's sketches
    density = GradientDensityEstimator(
        net, method="hard", n_components=16, max_memory=max_memory, random_state=0
    ).fit(X)
    tracemalloc.start()
    density.neighbor_counts(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < max_memory


def test_sketched_exact_neighbours_hold_max_memory_at_most():
    """With the reference's sketches near their two thirds, the queries go a
    few rows at a time: their results were gathered as lists of small arrays
    (2.9 times max_memory in all here), and their distances computed through
    three temporaries."""
    net = mlp(4, 3, hidden=16)
    X = np.random.default_rng(0).normal(size=(8000, 4)).astype(np.float32)
    reference = X[:4000]
    max_memory = int(4 * len(reference) * 3 * 16 / 0.6)
    search = NetworkNeighbors(
        net,
        algorithm="exact",
        n_components=16,
        n_neighbors=5,
        max_memory=max_memory,
        random_state=0,
    ).fit(reference)
    kept = search.reference_features_.nbytes
    search.kneighbors(X[:10])  # what a first call sets up once
    tracemalloc.start()
    distances, indices = search.kneighbors(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak - distances.nbytes - indices.nbytes + kept < max_memory


def test_sketched_neighbours_within_a_radius_hold_max_memory_at_most():
    """Each block of the reference's own similarities and its distances were
    held while the next block was made: 28 bytes a similarity where 12 were
    counted (1.28 times max_memory here)."""
    net = mlp(4, 3, hidden=16)
    X = np.random.default_rng(1).normal(size=(4000, 4)).astype(np.float32)
    max_memory = int(4 * len(X) * 3 * 64 / 0.3)
    search = NetworkNeighbors(
        net, n_components=64, max_memory=max_memory, random_state=0
    ).fit(X)
    kept = search.reference_features_.nbytes
    search.radius_neighbors(X[:10], radius=0.3)  # what a first call sets up once
    tracemalloc.start()
    distances, indices = search.radius_neighbors(radius=0.3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows = [*distances, *indices]  # the output: its rows, each an array
    output = sum(sys.getsizeof(row) for row in rows) + 2 * sys.getsizeof(distances)
    assert peak - output + kept < max_memory


def test_sketched_exact_neighbours_in_chunks_are_those_of_one(
    data, searches, monkeypatch
):
    whole, chunked = searches
    sketched = recorded_sketches(chunked, monkeypatch)
    found = chunked.most_similar(data[20:])
    assert sketched == [4, 4, 2]
    assert_same_neighbours(found, whole.most_similar(data[20:]))


def test_sketched_exact_self_neighbours_come_in_blocks_within_max_memory(
    searches, monkeypatch
):
    whole, chunked = searches
    blocks, sketch_rows = [], neighbors.sketch_rows

    def recorded_rows(F, F_ref, max_bytes=float("inf")):
        for block, k in sketch_rows(F, F_ref, max_bytes):
            blocks.append(k.shape)
            yield block, k

    monkeypatch.setattr(neighbors, "sketch_rows", recorded_rows)
    found = chunked.most_similar()
    assert len(blocks) > 1
    budget = chunked._query_bytes
    assert all(rows.SIMILARITY_BYTES * r * c <= budget for r, c in blocks)
    assert_same_neighbours(found, whole.most_similar())


def test_similarity_blocks_fit_in_their_bytes():
    rng = np.random.default_rng(1)
    F, F_ref = rng.normal(size=(10, 6)), rng.normal(size=(7, 6))
    max_bytes = rows.SIMILARITY_BYTES * 7 * 3 + 5  # 3 rows of 7 similarities
    blocks = list(rows.sketch_rows(F, F_ref, max_bytes))
    assert [b.stop - b.start for b, _ in blocks] == [3, 3, 3, 1]
    np.testing.assert_allclose(np.concatenate([k for _, k in blocks]), F @ F_ref.T)
    assert len(list(rows.sketch_rows(F, F_ref, 1))) == 10  # a row at least


def test_exact_counts_come_in_blocks_within_what_the_kept_reference_leaves(
    data, monkeypatch
):
    """Blocks took a third of max_memory beside a kept reference that could
    take all of it."""
    net = mlp(4, 3)
    kwargs = dict(method="power", batch_size=10)
    whole = GradientDensityEstimator(net, max_memory=None, **kwargs).fit(data)
    monkeypatch.setattr(density, "COUNT_COPIES", 100)
    row = 8 * len(data) * 100  # a row of similarities, and its copies
    held = GramReference(JacobianEngine(net), data, "cosine")._held_bytes()
    # 3.5 rows in what the reference's Grams and pieces leave of two thirds
    # of max_memory: batches of 10 queries come in blocks of 3, 3, 3 and 1
    max_memory = int(1.5 * (3.5 * row + held))
    bounded = GradientDensityEstimator(net, max_memory=max_memory, **kwargs)
    bounded.fit(data)
    sizes, rows_of = [], GramReference.rows_of

    def recorded(reference, left):
        sizes.append(len(left[0]))
        return rows_of(reference, left)

    monkeypatch.setattr(GramReference, "rows_of", recorded)
    queries = data[:20]
    counts = bounded.neighbor_counts(queries)
    assert sizes == [3, 3, 3, 1] * 2
    np.testing.assert_allclose(counts, whole.neighbor_counts(queries), rtol=1e-6)


@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("max_mib", [8, 16, 20])
def test_exact_searches_hold_max_memory_at_most(own, max_mib):
    """The reference's pieces (14 MB here) were kept up to all of max_memory,
    and the blocks of rows took a third beside them; made again for each
    group of queries, the reference's batches were held beside the queries'
    batch, and a group's last batch beside the group; a batch's backward
    pass took more than its third: 1.09 to 1.28 times max_memory in arrays
    and tensors here. (At 4 MiB, the results and the Grams of the queries,
    which no share counts, take a few percent more.)"""
    net = MLP(n_in=64, n_hidden=256, n_out=10).eval()
    X = np.random.default_rng(0).normal(size=(600, 64)).astype(np.float32)
    max_memory = max_mib * 2**20
    search = NetworkNeighbors(net, max_memory=max_memory).fit(X)
    search.kneighbors(X[:5])  # what a first call sets up once
    with LiveBytes() as live:
        distances, indices = search.kneighbors() if own else search.kneighbors(X)
    assert live.peak < max_memory
    expected = NetworkNeighbors(net, max_memory=None).fit(X)
    expected = expected.kneighbors() if own else expected.kneighbors(X)
    np.testing.assert_array_equal(indices, expected[1])
    # float32 products in other blocks: sqrt(2 (1 - k)) of rounding near k = 1
    np.testing.assert_allclose(distances, expected[0], atol=1e-3)
