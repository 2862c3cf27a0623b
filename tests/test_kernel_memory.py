"""Sketched kernels count against ``max_memory``: the reference sketches kept by
``NetworkSimilarityKernel``, the reference sketched a chunk at a time by
``network_similarity``, and the float64 blocks of their contraction."""

import tracemalloc
from functools import partial

import numpy as np
import pytest
import torch
from _architectures import mlp

from sksim import (
    DeadInputWarning,
    GradientDensityEstimator,
    NetworkNeighbors,
    NetworkSimilarityKernel,
    NonFiniteNetworkError,
    kernel,
    network_similarity,
)

N_COMPONENTS = 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 4)).astype(np.float32)


def sketch_bytes(n, d=3):
    return 4 * n * d * N_COMPONENTS


def sketched_sizes(monkeypatch) -> list:
    """The numbers of examples the kernel sketches at a time, as it sketches them."""
    sizes, features = [], kernel._features
    monkeypatch.setattr(
        kernel,
        "_features",
        lambda engine, X, *args: sizes.append(len(X)) or features(engine, X, *args),
    )
    return sizes


@pytest.mark.parametrize("reduce", ["trace", None])
def test_the_reference_is_sketched_a_chunk_at_a_time(data, monkeypatch, reduce):
    """The whole reference was sketched, then copied to float64: 9 times
    max_memory for 200 queries against 20 000 examples; 38 times for the
    blocks of 5 queries against 3 000 (reduce=None) until later."""
    net, queries = mlp(4, 3), data[:5]
    common = dict(n_components=N_COMPONENTS, random_state=0, reduce=reduce)
    expected = network_similarity(net, queries, data, max_memory=None, **common)
    sizes = sketched_sizes(monkeypatch)
    max_memory = 3 * sketch_bytes(12)  # two thirds: 24 examples' sketches
    K = network_similarity(net, queries, data, max_memory=max_memory, **common)
    # the queries, then the reference in what they leave of the two thirds
    assert sizes == [5, 19, 19, 19, 3]
    np.testing.assert_allclose(K, expected, rtol=1e-6, atol=1e-6)  # float32 sketches


def test_the_queries_sketches_are_refused_past_their_share(data):
    """They were held whole whatever max_memory: 320 MiB above the start for
    3 000 examples' own similarities at 20 MiB (the sketches 234 MiB)."""
    net, kept = mlp(4, 3), sketch_bytes(len(data))
    common = dict(n_components=N_COMPONENTS, random_state=0)
    with pytest.raises(MemoryError, match=r"The sketches of the 60 inputs X \(3 out"):
        network_similarity(net, data, max_memory=int(1.4 * kept), **common)
    K = network_similarity(net, data, max_memory=int(1.6 * kept), **common)
    np.testing.assert_allclose(K, network_similarity(net, data, **common), rtol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_contraction_blocks_stay_within_their_bytes(kind):
    rng = np.random.default_rng(1)
    F_x, F_y = (rng.normal(size=(n, 3, 64)).astype(np.float32) for n in (300, 500))
    whole = kernel._contract(F_x, F_y, kind, "trace")
    tracemalloc.start()
    blocked = kernel._contract(F_x, F_y, kind, "trace", max_bytes=100_000)
    peak = tracemalloc.get_traced_memory()[1] - blocked.nbytes
    tracemalloc.stop()
    # was two float64 copies of the stacks, 1.2 MB; then each block's copies
    # made beside the last ones, and its products through a temporary
    assert peak < 100_000
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-14)


def test_sketched_kernels_hold_their_output_and_max_memory_at_most():
    """transform held each chunk's rows twice, the contraction's and K's: 51.9 MB
    beyond K for 2 000 queries, with max_memory of 4.6 MB. With the kept
    sketches near their two thirds, both kernels then held 1.5 max_memory:
    a chunk of the other side's sketches and the contraction took a third
    each beside them, and each made its copies beside the last ones."""
    net = mlp(4, 3, hidden=16)
    # three chunks of the other side at least, each made once the last is freed
    X = np.random.default_rng(0).normal(size=(12000, 4)).astype(np.float32)
    reference = X[:3000]
    for kept_share in (0.64, 0.3):
        max_memory = int(4 * len(reference) * 3 * 64 / kept_share)
        sketch = dict(n_components=64, max_memory=max_memory, random_state=0)
        kern = NetworkSimilarityKernel(net, **sketch).fit(reference)
        kept = kern.features_fit_.nbytes
        assert kept == pytest.approx(kept_share * max_memory, rel=0.01)
        for compute, args, held in (
            (kern.transform, (X,), kept),
            (partial(network_similarity, **sketch), (net, reference, X), 0),
        ):
            tracemalloc.start()
            K = compute(*args)
            peak = tracemalloc.get_traced_memory()[1] - K.nbytes + held
            tracemalloc.stop()
            assert peak < max_memory


def test_kept_reference_sketches_are_refused_past_their_share(data):
    net = mlp(4, 3)
    kept = sketch_bytes(len(data))
    kern = NetworkSimilarityKernel(
        net, n_components=N_COMPONENTS, max_memory=int(1.4 * kept), random_state=0
    )
    with pytest.raises(MemoryError, match=r"The sketches of the 60 reference.*n_comp"):
        kern.fit(data)
    kern.set_params(max_memory=int(1.6 * kept)).fit(data)
    expected = network_similarity(
        net, data[:7], data, n_components=N_COMPONENTS, random_state=0
    )
    np.testing.assert_allclose(kern.transform(data[:7]), expected, rtol=1e-6)


def test_an_exact_search_over_sketches_is_advised_what_applies_to_it(data):
    """It was told to use search_components or a compressed index, which an
    exact search refuses or does not use."""
    search = NetworkNeighbors(
        mlp(4, 3), n_components=N_COMPONENTS, max_memory=sketch_bytes(len(data))
    )
    with pytest.raises(MemoryError, match='search with algorithm="faiss" over fewer'):
        search.fit(data)


def dead_below_zero():
    """``Linear(1, 4) -> ReLU -> Linear``: a zero gradient for inputs x <= 0."""
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
    return net


def test_chunks_of_sketched_queries_warn_once_with_the_queries_rows():
    """Each chunk warned on its own, naming rows of the chunk: [0, 1, 2], [0, 1]."""
    net, reference = dead_below_zero(), np.linspace(0.5, 8, 20, dtype=np.float32)
    queries = np.linspace(-3, 9, 17, dtype=np.float32)[:, None]  # rows 0-4 dead
    density = GradientDensityEstimator(
        net, method="hard", n_components=8, max_memory=2500
    ).fit(reference[:, None])
    with pytest.warns(DeadInputWarning) as caught:
        density.score_samples(queries)
    assert [str(w.message)[:54] for w in caught] == [
        "5 sample(s) have a zero gradient: input rows [0, 1, 2,"
    ]


def test_the_energies_pass_names_the_rows_of_the_inputs_it_samples():
    """The pass over 64 sampled reference rows named the rows of its sample."""
    reference = np.linspace(0.5, 8, 200, dtype=np.float32)[:, None]
    reference[150:] = 1e4  # exp overflows
    net = torch.nn.Sequential(torch.nn.Linear(1, 2), Exp(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    rows = r"outputs for rows \[1[5-9]\d, .* of the reference inputs"
    with pytest.raises(NonFiniteNetworkError, match=rows):
        network_similarity(net, reference[:5], reference, n_components=8)
    with pytest.raises(
        NonFiniteNetworkError, match=r"outputs for input rows \[1[5-9]\d"
    ):
        NetworkSimilarityKernel(net, n_components=8).fit(reference)


def test_a_sketched_kernel_names_the_references_rows_as_the_exact_one():
    net = dead_below_zero()
    queries = np.linspace(1, 9, 17, dtype=np.float32)[:, None]
    reference = np.linspace(-3, 8, 20, dtype=np.float32)[:, None]  # rows 0-5 dead
    for n_components in (None, 8):
        with pytest.warns(DeadInputWarning, match=r"6 .* rows \[0, .* of the refe"):
            network_similarity(net, queries, reference, n_components=n_components)


def test_a_kernel_sketches_its_queries_a_chunk_at_a_time(data, monkeypatch):
    """transform sketched every query at once: 3 000 queries to 2 048
    components took 16 times a max_memory of 20 MiB."""
    net, reference, queries = mlp(4, 3), data[:10], data[10:]
    common = dict(n_components=N_COMPONENTS, random_state=0)
    expected = network_similarity(net, queries, reference, max_memory=None, **common)
    sizes = sketched_sizes(monkeypatch)
    kern = NetworkSimilarityKernel(net, max_memory=3 * sketch_bytes(12), **common)
    K = kern.fit(reference).transform(queries)
    # the reference, then the queries in what it leaves of two thirds of
    # max_memory (24 examples' sketches)
    assert sizes == [10, 14, 14, 14, 8]
    np.testing.assert_allclose(K, expected, rtol=1e-6, atol=1e-6)


class Exp(torch.nn.Module):
    def forward(self, x):
        return torch.exp(x)


def test_chunks_of_a_kernels_queries_name_the_queries_rows():
    net = dead_below_zero()
    reference = np.linspace(1, 8, 6, dtype=np.float32)[:, None]
    queries = np.linspace(-3, 9, 17, dtype=np.float32)[:, None]  # rows 0-4 dead
    kern = NetworkSimilarityKernel(net, n_components=8, max_memory=2000).fit(reference)
    with pytest.warns(DeadInputWarning) as caught:
        kern.transform(queries)
    assert [str(w.message)[:54] for w in caught] == [
        "5 sample(s) have a zero gradient: input rows [0, 1, 2,"
    ]
    overflowing = torch.nn.Sequential(
        torch.nn.Linear(1, 2), Exp(), torch.nn.Linear(2, 2)
    )
    with torch.no_grad():
        overflowing[0].weight.fill_(1.0)  # exp(1e4) overflows
    kern = NetworkSimilarityKernel(overflowing, n_components=8, max_memory=2000)
    queries[11] = 1e4
    with pytest.raises(NonFiniteNetworkError, match=r"outputs for input rows \[11\]"):
        kern.fit(reference).transform(queries)


def test_contraction_without_a_budget_holds_products_of_the_fixed_size(monkeypatch):
    """With max_memory=None the products went through a buffer as large as the
    output: whole rows of it are written directly now, others through a buffer
    of :data:`~sksim.kernel.PRODUCT_ENTRIES` at most."""
    monkeypatch.setattr(kernel, "PRODUCT_ENTRIES", 5000)
    rng = np.random.default_rng(2)
    F_x, F_y = (rng.normal(size=(n, 3, 8)).astype(np.float32) for n in (300, 400))
    expected = np.einsum("adk,bdk->ab", F_x.astype(float), F_y.astype(float)) / 3
    copies = 8 * 3 * 8 * (300 + 400)  # the float64 copies of the two sides
    for out, products in ((np.empty((300, 400)), 0), (np.empty((400, 300)).T, 5000)):
        tracemalloc.start()
        kernel._contract(F_x, F_y, "cosine", "trace", out=out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        assert peak < copies + 8 * products + 2000
