"""NetworkNeighbors against the argsort of the exact kernel, and FAISS recall."""

import math
import pickle
import sys
import warnings
from itertools import islice

import matplotlib.pyplot
import numpy as np
import pytest
import torch
from _architectures import AnyWidth, mlp
from _sklearn_checks import EXPECTED_FAILED_CHECKS
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch.utils.data import TensorDataset

import sksim.neighbors
from sksim import DeadInputWarning, network_similarity, similarity_to_distance
from sksim._engine.features import piece_energies
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import nbytes_of
from sksim._engine.rows import ExactNeighbors, sketch_features
from sksim.neighbors import NetworkNeighbors
from sksim.plotting import plot_neighbors


def expected_neighbors(K, n_neighbors):
    order = np.argsort(-K, axis=1, kind="stable")[:, :n_neighbors]
    return np.take_along_axis(K, order, axis=1), order


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    return X, rng.normal(size=(12, 3)).astype(np.float32)


@parametrize_with_checks(
    [NetworkNeighbors(AnyWidth(n_hidden=6, n_out=1), batch_size=16)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("d", [1, 3])
def test_exact_neighbors_are_the_argsort_of_the_kernel(data, d):
    X_ref, X_new = data
    net = mlp(3, d)
    nn = NetworkNeighbors(net, n_neighbors=7, batch_size=5).fit(X_ref)
    sim, ind = nn.most_similar(X_new)
    K = network_similarity(net, X_new, X_ref)
    expected_sim, expected_ind = expected_neighbors(K, 7)
    np.testing.assert_array_equal(ind, expected_ind)
    np.testing.assert_allclose(sim, expected_sim, atol=1e-6)
    dist, ind_d = nn.kneighbors(X_new, n_neighbors=4)
    np.testing.assert_array_equal(ind_d, expected_ind[:, :4])
    np.testing.assert_allclose(dist, np.sqrt(2 - 2 * expected_sim[:, :4]), atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()  # ascending, as scikit-learn's
    np.testing.assert_array_equal(
        nn.kneighbors(X_new, return_distance=False), expected_ind
    )


def test_kneighbors_graph_holds_the_neighbours_as_scikit_learns(data):
    """The graph scikit-learn's NearestNeighbors gives, for SpectralClustering's
    precomputed_nearest_neighbors and the like: it was missing."""
    X_ref, X_new = data
    net = mlp(3, 2)
    search = NetworkNeighbors(net, n_neighbors=4).fit(X_ref)
    for X in (X_new, None):
        K = network_similarity(net, X_ref if X is None else X, X_ref)
        if X is None:
            np.fill_diagonal(K, -np.inf)  # each example not its own neighbour
        expected_sim, expected_ind = expected_neighbors(K, 4)
        graph = search.kneighbors_graph(X)
        assert graph.format == "csr" and graph.shape == (len(K), 50)
        dense = np.zeros_like(K)
        np.put_along_axis(dense, expected_ind, 1.0, axis=1)
        np.testing.assert_array_equal(graph.toarray(), dense)
        distance = search.kneighbors_graph(X, n_neighbors=2, mode="distance")
        dense = np.zeros_like(K)
        np.put_along_axis(
            dense, expected_ind[:, :2], np.sqrt(2 - 2 * expected_sim[:, :2]), axis=1
        )
        np.testing.assert_allclose(distance.toarray(), dense, atol=1e-5)
    with pytest.raises(ValueError, match='mode must be "connectivity" or "distance"'):
        search.kneighbors_graph(mode="similarity")


def _radius_in_a_gap(D):
    """A radius between two distances of ``D`` far apart, near their median."""
    values = np.sort(D[np.isfinite(D)].ravel())
    middle = len(values) // 2
    gaps = np.diff(values[middle : middle + 200])
    at = middle + int(np.argmax(gaps))
    return float(values[at] + values[at + 1]) / 2


@pytest.mark.parametrize("n_components", [None, 16])
def test_radius_neighbors_are_scikit_learns_on_the_distances(data, n_components):
    """NearestNeighbors' radius queries, for DBSCAN and the like: they were
    missing. Compared with scikit-learn's on the precomputed distances."""
    from sklearn.neighbors import NearestNeighbors

    X_ref, X_new = data
    net = mlp(3, 2)
    search = NetworkNeighbors(net, n_components=n_components, random_state=0)
    search.fit(X_ref)
    for X in (X_new, None):
        if n_components is None:
            K = network_similarity(net, X_ref if X is None else X, X_ref)
        else:  # the similarities of the sketches
            engine = JacobianEngine(net)
            seed, weights = search.projection_seed_, search.sketch_weights_[0]
            F_ref = sketch_features(engine, X_ref, 16, seed, weights=weights)
            F = (
                F_ref
                if X is None
                else sketch_features(engine, X, 16, seed, weights=weights)
            )
            K = (F @ F_ref.T).astype(np.float64)
        D = similarity_to_distance(K)
        if X is None:
            np.fill_diagonal(D, np.inf)  # each example not its own neighbour
        radius = _radius_in_a_gap(D)
        reference = NearestNeighbors(radius=radius, metric="precomputed").fit(
            np.zeros((len(X_ref), len(X_ref)))
        )
        expected_d, expected_i = reference.radius_neighbors(
            np.where(np.isfinite(D), D, 1e9), sort_results=True
        )
        d, i = search.radius_neighbors(X, radius=radius, sort_results=True)
        assert d.dtype == object and len(d) == len(D)
        assert 0 < sum(map(len, i)) < np.isfinite(D).sum()
        for row in range(len(D)):
            np.testing.assert_array_equal(i[row], expected_i[row])
            np.testing.assert_allclose(d[row], expected_d[row], atol=1e-5)
        by_index = search.set_params(radius=radius).radius_neighbors(
            X, return_distance=False
        )
        assert all(
            np.array_equal(a, np.sort(b)) for a, b in zip(by_index, i, strict=True)
        )
        graph = search.radius_neighbors_graph(X, mode="distance")
        expected = reference.radius_neighbors_graph(
            np.where(np.isfinite(D), D, 1e9), mode="distance"
        )
        assert graph.format == "csr" and graph.shape == D.shape
        np.testing.assert_allclose(graph.toarray(), expected.toarray(), atol=1e-5)
        connected = search.radius_neighbors_graph(X)
        np.testing.assert_array_equal(connected.toarray(), expected.toarray() > 0)


def test_radius_neighbors_refuse_a_faiss_search_and_bad_radii(data):
    X_ref, _ = data
    net = mlp(3, 2)
    search = NetworkNeighbors(net).fit(X_ref)
    for radius in (-0.1, np.nan, "1", True):
        with pytest.raises(ValueError, match="radius must be a number >= 0"):
            search.radius_neighbors(radius=radius)
    # an infinite radius holds every other example, as scikit-learn's does
    _, everyone = search.radius_neighbors(radius=np.inf, sort_results=True)
    for row, found in enumerate(everyone):
        assert sorted(set(found)) == sorted(set(range(len(X_ref))) - {row})
    unbounded = NetworkNeighbors(net, radius=np.inf).fit(X_ref)
    for a, b in zip(unbounded.radius_neighbors()[1], everyone, strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    faiss = NetworkNeighbors(net, algorithm="faiss", n_components=8).fit(X_ref)
    with pytest.raises(ValueError, match='fit with algorithm="exact"'):
        faiss.radius_neighbors_graph()


def test_querying_the_reference_excludes_each_example_itself(data):
    X_ref, _ = data
    net = mlp(3, 2)
    sim, ind = NetworkNeighbors(net, n_neighbors=5).fit(X_ref).most_similar()
    K = network_similarity(net, X_ref)
    np.fill_diagonal(K, -np.inf)
    expected_sim, expected_ind = expected_neighbors(K, 5)
    np.testing.assert_array_equal(ind, expected_ind)
    np.testing.assert_allclose(sim, expected_sim, atol=1e-6)
    assert not (ind == np.arange(50)[:, None]).any()


@pytest.mark.parametrize("d", [1, 3])
def test_sketched_search_ranks_by_the_sketch(data, d):
    X_ref, X_new = data
    net = mlp(3, d)
    nn = NetworkNeighbors(net, n_neighbors=6, n_components=16, random_state=0)
    sim, ind = nn.fit(X_ref).most_similar(X_new)
    engine = JacobianEngine(net)
    weights = piece_energies(engine, X_ref, nn.projection_seed_)
    np.testing.assert_array_equal(nn.sketch_weights_[0], weights)
    F_ref = sketch_features(engine, X_ref, 16, nn.projection_seed_, weights=weights)
    F_new = sketch_features(engine, X_new, 16, nn.projection_seed_, weights=weights)
    expected_sim, expected_ind = expected_neighbors(F_new @ F_ref.T, 6)
    np.testing.assert_array_equal(ind, expected_ind)
    np.testing.assert_allclose(sim, expected_sim, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(F_ref, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("query_reference", [False, True])
def test_faiss_index_agrees_with_the_exact_search_on_the_sketch(data, query_reference):
    X_ref, X_new = data
    net = mlp(3, 2)
    kwargs = dict(n_neighbors=5, n_components=32, random_state=3)
    exact = NetworkNeighbors(net, **kwargs).fit(X_ref)
    faiss = NetworkNeighbors(net, algorithm="faiss", **kwargs).fit(X_ref)
    X = None if query_reference else X_new
    sim_e, ind_e = exact.most_similar(X)
    sim_f, ind_f = faiss.most_similar(X)
    np.testing.assert_array_equal(ind_f, ind_e)
    np.testing.assert_allclose(sim_f, sim_e, atol=1e-5)


@pytest.mark.parametrize("per_block", [12, 5])
@pytest.mark.parametrize("d", [1, 3])
def test_exact_neighbors_are_gathered_while_the_reference_is_sketched(
    data, d, per_block
):
    X_ref, X_new = data
    net = mlp(3, d)
    engine = JacobianEngine(net, batch_size=4)  # batches narrower than 6
    ((_, pieces),) = islice(JacobianEngine(net).pieces(X_new[:1]), 1)
    budget = per_block * nbytes_of(pieces)  # the 12 queries in one block, or 3
    gathered = ExactNeighbors(engine, X_new, 6, 1e-5, budget)
    n = len(X_new)
    assert gathered.blocks == [
        slice(i, min(i + per_block, n)) for i in range(0, n, per_block)
    ]
    F = sketch_features(engine, X_ref, 8, 0, each_batch=gathered)
    np.testing.assert_array_equal(F, sketch_features(engine, X_ref, 8, 0))
    passes = []
    engine.mapped_pieces = _counted(engine.mapped_pieces, passes)
    gathered.finish(X_ref)
    assert len(passes) == len(gathered.blocks) - 1  # one per further block
    K = network_similarity(net, X_new, X_ref)
    expected_sim, expected_ind = expected_neighbors(K, 6)
    np.testing.assert_array_equal(gathered.indices, expected_ind)
    np.testing.assert_allclose(gathered.similarities, expected_sim, atol=1e-6)


def _counted(mapped_pieces, passes):
    """``mapped_pieces`` noting each pass it starts in ``passes``."""

    def counted(*args, **kwargs):
        passes.append(args[0])
        return mapped_pieces(*args, **kwargs)

    return counted


@pytest.mark.parametrize("algorithm", ["exact", "faiss"])
def test_fit_measures_the_recall_on_held_out_queries(data, algorithm):
    X_ref, X_new = data
    net = mlp(3, 2)
    kwargs = dict(algorithm=algorithm, n_components=2, random_state=0, batch_size=7)
    nn = NetworkNeighbors(net, **kwargs).fit(X_ref, X_val=X_new)
    _, found = nn.most_similar(X_new)
    _, exact = expected_neighbors(network_similarity(net, X_new, X_ref), 5)
    hits = [len(set(a) & set(b)) for a, b in zip(found, exact, strict=True)]
    assert nn.recall_ == pytest.approx(np.mean(hits) / 5)
    assert 0 < nn.recall_ < 1  # a sketch this small misses some neighbours
    plain = NetworkNeighbors(net, **kwargs).fit(X_ref)
    np.testing.assert_array_equal(nn.reference_features_, plain.reference_features_)
    assert not hasattr(nn.fit(X_ref), "recall_")  # not left from the last fit


def test_the_recall_is_searched_once_per_setting(data, monkeypatch):
    X_ref, X_new = data
    net = mlp(3, 2)
    nn = NetworkNeighbors(
        net, algorithm="faiss", n_components=4, search_components=2, random_state=0
    ).fit(X_ref, X_val=X_new)
    searched = []
    most_similar = nn.most_similar
    monkeypatch.setattr(
        nn, "most_similar", lambda X: searched.append(len(X)) or most_similar(X)
    )
    assert nn._sample_recall() == nn.recall_  # measured by fit, not searched again
    assert searched == []
    _, exact = expected_neighbors(network_similarity(net, X_new, X_ref), 5)
    recalls = {}
    for setting in ({"n_neighbors": 2}, {"candidates_per_neighbor": 1}, {}):
        nn.set_params(**{"n_neighbors": 5, "candidates_per_neighbor": 24, **setting})
        recalls[str(setting)] = nn._sample_recall()
        _, found = most_similar(X_new)
        nearest = exact[:, : nn.n_neighbors]
        hits = [len(set(a) & set(b)) for a, b in zip(found, nearest, strict=True)]
        assert recalls[str(setting)] == pytest.approx(np.mean(hits) / nn.n_neighbors)
    assert searched == [len(X_new)] * 2  # the third setting is fit's
    assert recalls["{'candidates_per_neighbor': 1}"] < nn.recall_
    nn.set_params(candidates_per_neighbor=1)
    assert nn._sample_recall() == recalls["{'candidates_per_neighbor': 1}"]
    assert searched == [len(X_new)] * 2


def test_held_out_queries_keep_their_jacobians_within_their_share_of_max_memory(
    data, monkeypatch
):
    X_ref, X_new = data
    net = mlp(3, 2)
    ((_, pieces),) = islice(JacobianEngine(net).pieces(X_new[:1]), 1)
    per_sample = nbytes_of(pieces)
    gatherers = []

    class Recorded(ExactNeighbors):
        def __init__(self, *args):
            super().__init__(*args)
            gatherers.append(self)

    monkeypatch.setattr(sksim.neighbors, "ExactNeighbors", Recorded)
    kwargs = dict(algorithm="faiss", n_components=4, random_state=0, batch_size=4)
    # the reference's sketches and the 'Flat' index's copy of them are held
    held = 2 * NetworkNeighbors(net, **kwargs).fit(X_ref).reference_features_.nbytes
    recalls = []
    for n_kept in (len(X_new), len(X_new) - 1):  # all the queries fit, or not
        # two thirds less what is held, for the Jacobians of the queries
        max_memory = int(1.5 * (n_kept * per_sample + held))
        nn = NetworkNeighbors(net, max_memory=max_memory, **kwargs)
        recalls.append(nn.fit(X_ref, X_val=X_new).recall_)
    NetworkNeighbors(net, max_memory=None, **kwargs).fit(X_ref, X_val=X_new)
    assert [len(g.blocks) for g in gatherers] == [1, 2, 1]  # None: no limit
    assert recalls[0] == recalls[1]
    _, found = nn.most_similar(X_new)
    _, exact = expected_neighbors(network_similarity(net, X_new, X_ref), 5)
    hits = [len(set(a) & set(b)) for a, b in zip(found, exact, strict=True)]
    assert recalls[1] == pytest.approx(np.mean(hits) / 5)


def test_joblib_workers_give_the_same_neighbors(data):
    X_ref, X_new = data
    net = mlp(3, 1)
    one = NetworkNeighbors(net).fit(X_ref).kneighbors(X_new)
    two = NetworkNeighbors(net, n_jobs=2).fit(X_ref).kneighbors(X_new)
    np.testing.assert_array_equal(two[1], one[1])
    np.testing.assert_allclose(two[0], one[0], atol=1e-9)


@pytest.mark.slow
def test_faiss_recall_at_10_on_20000_samples():
    """Recall@10 of the FAISS search against the exact one (printed with -s)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 8)).astype(np.float32)
    queries = rng.normal(size=(500, 8)).astype(np.float32)
    net = mlp(8, 1, hidden=32)
    exact = NetworkNeighbors(net, n_neighbors=10, batch_size=256).fit(X)
    ind_exact = exact.kneighbors(queries, return_distance=False)
    recalls = {}
    for n_components in (32, 128):
        approx = NetworkNeighbors(
            net,
            n_neighbors=10,
            algorithm="faiss",
            n_components=n_components,
            batch_size=256,
            random_state=0,
        ).fit(X)
        ind = approx.kneighbors(queries, return_distance=False)
        recalls[n_components] = np.mean(
            [len(set(a) & set(e)) / 10 for a, e in zip(ind, ind_exact, strict=True)]
        )
    print(
        f"\nrecall@10 vs exact, 20000 samples, 500 new queries, p = "
        f"{sum(p.numel() for p in net.parameters())}: {recalls}"
    )
    assert recalls[128] > recalls[32]
    assert recalls[128] > 0.75


def test_labels_are_checked_and_read_from_a_dataset(data):
    X_ref, X_query = data
    y = np.arange(50) % 4
    with pytest.raises(ValueError, match="different numbers of samples: 50 and 49"):
        NetworkNeighbors(mlp(3, 1)).fit(X_ref, y[:-1])
    with pytest.raises(ValueError, match=r"y must be of shape \(n_samples,\) or"):
        NetworkNeighbors(mlp(3, 1)).fit(X_ref, y[:, None, None])
    targets = np.stack([y, -y], axis=1)  # several targets: a row each
    why = NetworkNeighbors(mlp(3, 1), n_neighbors=3).fit(X_ref, targets)
    why = why.explain(X_query)
    np.testing.assert_array_equal(why.labels, targets[why.indices])
    assert why.labels.shape == (len(X_query), 3, 2)
    items = torch.utils.data.TensorDataset(torch.from_numpy(X_ref), torch.from_numpy(y))
    from_items = NetworkNeighbors(mlp(3, 1), n_neighbors=3).fit(items)
    from_arrays = NetworkNeighbors(mlp(3, 1), n_neighbors=3).fit(X_ref, y)
    np.testing.assert_array_equal(
        from_items.explain(X_query).labels, from_arrays.explain(X_query).labels
    )


def test_bad_parameters_are_refused(data):
    X_ref, _ = data
    with pytest.raises(ValueError, match="'algorithm' parameter of NetworkNeighbors"):
        NetworkNeighbors(mlp(3, 1), algorithm="kd_tree").fit(X_ref)
    with pytest.raises(ValueError, match='algorithm="faiss" searches sketched'):
        NetworkNeighbors(mlp(3, 1), algorithm="faiss").fit(X_ref)
    with pytest.raises(ValueError, match="'n_neighbors' parameter .* range .1, inf"):
        NetworkNeighbors(mlp(3, 1), n_neighbors=0).fit(X_ref)
    with pytest.raises(ValueError, match=r"'rtol' parameter .* range \(0.0, 1.0\)"):
        NetworkNeighbors(mlp(3, 1), rtol=2.0).fit(X_ref)
    with pytest.raises(ValueError, match="X_val measures the recall of a search over"):
        NetworkNeighbors(mlp(3, 1)).fit(X_ref, X_val=X_ref[:2])
    with pytest.raises(ValueError, match="n_neighbors=51 is more than the 50"):
        NetworkNeighbors(mlp(3, 1), n_neighbors=51, n_components=4).fit(
            X_ref, X_val=X_ref[:2]
        )
    with pytest.raises(ValueError, match="^X_val has 2 features, but NetworkNeighbors"):
        NetworkNeighbors(mlp(3, 1), n_components=4).fit(X_ref, X_val=X_ref[:2, :2])
    nn = NetworkNeighbors(mlp(3, 1)).fit(X_ref)
    with pytest.raises(ValueError, match="between 1 and the 50 reference examples"):
        nn.kneighbors(X_ref[:2], n_neighbors=51)
    with pytest.raises(ValueError, match="49 reference examples available .each"):
        nn.kneighbors(n_neighbors=50)
    np.testing.assert_array_equal(  # numpy integers are ints
        nn.kneighbors(X_ref[:2], n_neighbors=np.int64(3), return_distance=False),
        nn.kneighbors(X_ref[:2], n_neighbors=3, return_distance=False),
    )
    with pytest.raises(NotFittedError):
        NetworkNeighbors(mlp(3, 1)).kneighbors(X_ref)


def test_missing_faiss_names_the_extra(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match=r"pip install faiss-cpu. \(sksim's faiss"):
        NetworkNeighbors(mlp(3, 1), algorithm="faiss", n_components=8).fit(data[0])


@pytest.mark.parametrize(
    "index, params", [("HNSW32", "efSearch=64"), ("IVF16,Flat", "nprobe=8")]
)
def test_approximate_faiss_indexes_recall_the_flat_neighbors(index, params):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 4)).astype(np.float32)
    net = mlp(4, 2, hidden=16)
    kwargs = dict(n_neighbors=10, algorithm="faiss", n_components=16, random_state=0)
    flat = NetworkNeighbors(net, **kwargs).fit(X)
    approx = NetworkNeighbors(net, index=index, index_params=params, **kwargs).fit(X)
    queries = X[:200]
    expected = flat.kneighbors(queries, return_distance=False)
    found = approx.kneighbors(queries, return_distance=False)
    recall = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(found, expected, strict=True)]
    )
    assert recall > 0.9
    sim, ind = approx.most_similar(queries[:5])
    F = approx.reference_features_
    np.testing.assert_allclose(  # the similarities are those of the sketches
        sim, np.take_along_axis(F[:5] @ F.T, ind, axis=1), atol=1e-5
    )
    again = pickle.loads(pickle.dumps(approx))
    np.testing.assert_array_equal(
        again.kneighbors(queries, return_distance=False), found
    )


@pytest.mark.parametrize("index", ["Flat", "HNSW16"])
def test_numpy_integers_search_as_ints(data, index):
    """A grid of np.arange values hands numpy integers to the parameters:
    FAISS's bindings refused them ("Wrong number or type of arguments")."""
    X, X_new = data
    net = mlp(3, 2, hidden=8)
    params = dict(n_components=16, search_components=6, n_neighbors=4)
    found = []
    for cast in (int, np.int64):
        search = NetworkNeighbors(
            net,
            algorithm="faiss",
            index=index,
            candidates_per_neighbor=cast(3),
            random_state=0,
            **{name: cast(value) for name, value in params.items()},
        ).fit(X)
        found.append(search.kneighbors(X_new, n_neighbors=cast(3)))
        assert search.n_components_ == 16 and type(search.n_components_) is int
    for a, b in zip(*found, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("index", ["PQ8x4fs", "PCA8,Flat", "IVF4,SQ8"])
def test_compressing_indexes_give_the_sketches_similarities(index):
    """A compressing index finds the neighbours; their sketches score them."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    search = NetworkNeighbors(
        mlp(4, 2, hidden=16),
        n_neighbors=5,
        algorithm="faiss",
        n_components=16,
        index=index,
        random_state=0,
    ).fit(X)
    sim, ind = search.most_similar(X[:50])
    F = search.reference_features_
    np.testing.assert_allclose(
        sim, np.take_along_axis(F[:50] @ F.T, ind, axis=1), atol=1e-5
    )
    assert (np.diff(sim, axis=1) <= 0).all()


def test_recall_counts_either_copy_of_a_duplicated_example():
    """Every reference example twice: the nearest is either copy."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    search = NetworkNeighbors(
        mlp(4, 2, hidden=16),
        n_neighbors=1,
        algorithm="faiss",
        n_components=16,
        index="HNSW32",
        random_state=0,
    ).fit(np.concatenate([X, X]), X_val=X[:50] + 0.01)
    assert search.recall_ == 1.0


def test_dead_inputs_are_warned_about_once_with_their_rows():
    """Zero inputs of a network without biases have no gradient: the rows
    sketched for the principal directions (a sample past 4 096) and the
    recall's queries are not warned about again, nor under other numbers."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    net[2].bias.requires_grad_(False)
    X = np.random.default_rng(0).normal(size=(4500, 4)).astype(np.float32)
    X[[10, 4400]] = 0
    X_val = X[:50].copy()
    X_val[[20, 30]] = 0
    search = NetworkNeighbors(
        net,
        n_neighbors=3,
        algorithm="faiss",
        n_components=16,
        search_components=8,
        random_state=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(X, X_val=X_val)
    texts = [str(w.message) for w in caught if w.category is DeadInputWarning]
    with torch.no_grad():  # dead: every hidden unit off
        expected = [(net[0](torch.from_numpy(x)) <= 0).all(1) for x in (X, X_val)]
    named = [np.flatnonzero(rows.numpy()) for rows in expected]
    assert {10, 4400} <= set(named[0]) and {10, 20, 30} <= set(named[1])
    assert sorted(texts) == sorted(
        f"{len(rows)} sample(s) have a zero gradient: input rows "
        f"{rows[:5].tolist()}{' and more' if len(rows) > 5 else ''}. "
        + texts[0].split(". ", 1)[1]
        for rows in named
    )


@pytest.mark.parametrize("index", ["HNSW32", "PCA4,HNSW32"])
def test_hnsw_searches_with_a_beam_twice_its_candidates(data, index):
    """Behind a transform, the graph was searched with FAISS's beam of 16."""
    faiss = pytest.importorskip("faiss")
    X = data[0]
    kwargs = dict(n_neighbors=3, algorithm="faiss", n_components=8, random_state=0)
    hnsw = NetworkNeighbors(mlp(3, 1), index=index, **kwargs).fit(X)
    params = hnsw._search_parameters(48)
    if index.startswith("PCA"):
        assert isinstance(params, faiss.SearchParametersPreTransform)
        params = params.referenced_objects[0]  # its index_params, kept alive
    assert isinstance(params, faiss.SearchParametersHNSW) and params.efSearch == 96
    given = NetworkNeighbors(  # 3 neighbours: the beam of 6 by hand
        mlp(3, 1), index=index, index_params="efSearch=6", **kwargs
    ).fit(X)
    assert given._search_parameters(48) is None  # the user's efSearch stands
    for a, b in zip(hnsw.most_similar(X), given.most_similar(X), strict=True):
        np.testing.assert_array_equal(a, b)
    flat = NetworkNeighbors(mlp(3, 1), **kwargs).fit(X)
    assert flat._search_parameters(48) is None


def test_bad_faiss_index_is_explained(data):
    with pytest.raises(ValueError, match="FAISS cannot build index='Bogus'"):
        NetworkNeighbors(
            mlp(3, 1), algorithm="faiss", n_components=8, index="Bogus"
        ).fit(data[0])
    X = data[0]
    with pytest.raises(  # more lists than examples to cluster
        ValueError, match=f"cannot train and fill, on {len(X)} reference examples, "
    ):
        NetworkNeighbors(
            mlp(3, 1), algorithm="faiss", n_components=8, index="IVF1024,Flat"
        ).fit(X)
    search = NetworkNeighbors(
        mlp(3, 1), algorithm="faiss", n_components=8, index="IVF4,Flat"
    )
    search.set_params(index_params="nprobe=0").fit(X)
    with pytest.raises(ValueError, match="FAISS cannot search index='IVF4,Flat'"):
        search.most_similar(X[:2])


def expected_percentiles(K_ref, rows, similarities, columns=None):
    """Percentage of similarities between distinct reference examples (those of
    the reference ``rows`` to the others among ``columns``, all for None) below
    each similarity."""
    columns = np.arange(len(K_ref)) if columns is None else columns
    others = rows[:, None] != columns[None, :]
    background = K_ref[np.ix_(rows, columns)][others]
    return np.array(
        [[100 * np.mean(background < s) for s in row] for row in similarities]
    )


def test_explain_places_similarities_among_the_networks_own(data):
    X_ref, X_new = data
    net = mlp(3, 2)
    y = np.arange(50) % 4
    why = NetworkNeighbors(net, n_neighbors=4).fit(X_ref, y).explain(X_new)
    K = network_similarity(net, X_new, X_ref)
    expected_sim, expected_ind = expected_neighbors(K, 4)
    np.testing.assert_array_equal(why.indices, expected_ind)
    np.testing.assert_allclose(why.similarities, expected_sim, atol=1e-6)
    np.testing.assert_array_equal(why.labels, y[expected_ind])
    K_ref = network_similarity(net, X_ref)
    np.testing.assert_allclose(
        why.percentiles,
        expected_percentiles(K_ref, np.arange(50), why.similarities),
        atol=1e-9,
    )
    assert (why.percentiles > 50).all()  # nearest neighbours are unusually close


def test_explain_percentiles_count_the_pairs_strictly_below():
    """Ties count as not below: a network whose dead inputs (x <= 0) have
    similarity 0 to everything."""
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
    reference = np.linspace(-1, 1, 20, dtype=np.float32)[:, None]  # 10 dead
    with pytest.warns(DeadInputWarning):
        search = NetworkNeighbors(net, n_neighbors=3).fit(reference)
        why = search.explain(np.array([[0.5], [-0.5]], dtype=np.float32))
    # 380 pairs of distinct examples: 90 live pairs, 290 at exactly 0
    np.testing.assert_array_equal(why.similarities[1], 0.0)
    np.testing.assert_array_equal(why.percentiles[1], 0.0)  # none below 0
    assert (why.similarities[0] > 0).all()
    assert (why.percentiles[0] >= 100 * 290 / 380).all()  # the zeros below


def test_explain_subsamples_the_reference_pairs_and_follows_the_sketch(monkeypatch):
    monkeypatch.setattr(sksim.neighbors, "N_BACKGROUND_COLUMNS", 100)
    rng = np.random.default_rng(1)
    X_ref = rng.normal(size=(250, 3)).astype(np.float32)
    X_new = rng.normal(size=(5, 3)).astype(np.float32)
    net = mlp(3, 1)
    search = NetworkNeighbors(net, n_neighbors=3, n_components=16, random_state=0)
    why = search.fit(X_ref).explain(X_new, n_neighbors=2)
    assert why.labels is None
    assert why.indices.shape == (5, 2)
    F = search.reference_features_
    rows = np.unique(np.linspace(0, 249, 200).astype(np.intp))  # 200 evenly spaced
    columns = np.unique(np.linspace(0, 249, 100).astype(np.intp))  # paired with 100
    np.testing.assert_allclose(
        why.percentiles,
        expected_percentiles(F @ F.T, rows, why.similarities, columns),
        atol=1e-9,
    )
    background = search._background  # computed once per fit
    search.explain(X_new[:2])
    assert search._background is background
    search.fit(X_ref[:100])
    assert search._background is None


def test_explain_of_an_exactly_ranked_search_places_exact_similarities(monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(sksim.neighbors, "N_BACKGROUND_COLUMNS", 100)
    rng = np.random.default_rng(2)
    X_ref = rng.normal(size=(250, 3)).astype(np.float32)
    X_new = rng.normal(size=(5, 3)).astype(np.float32)
    net = mlp(3, 2)
    search = NetworkNeighbors(
        net, n_neighbors=3, algorithm="faiss", n_components=16,
        search_components=4, random_state=0,
    ).fit(X_ref)  # fmt: skip
    assert search.exact_ranking_  # its sketches are not kept whole
    why = search.explain(X_new)
    K = network_similarity(net, X_new, X_ref)
    np.testing.assert_allclose(
        why.similarities, np.take_along_axis(K, why.indices, axis=1), atol=1e-6
    )
    rows = np.unique(np.linspace(0, 249, 200).astype(np.intp))  # 200 evenly spaced
    columns = np.unique(np.linspace(0, 249, 100).astype(np.intp))
    K_ref = network_similarity(net, X_ref)
    np.testing.assert_allclose(
        why.percentiles,
        expected_percentiles(K_ref, rows, why.similarities, columns),
        atol=1e-9,
    )


def test_explain_needs_two_reference_examples(data):
    X_ref, X_new = data
    search = NetworkNeighbors(mlp(3, 1), n_neighbors=1).fit(X_ref[:1])
    with pytest.raises(ValueError, match="at least two of them"):
        search.explain(X_new)


def test_plot_neighbors_draws_images_with_their_captions(digits, fitted_digits_net):
    X, y = digits
    search = NetworkNeighbors(fitted_digits_net, n_neighbors=3).fit(X[:200], y[:200])
    fig = plot_neighbors(search, X[300:302], image_shape=(8, 8))
    why = search.explain(X[300:302])
    assert len(fig.axes) == 2 * 4
    first = fig.axes[1]  # the first neighbour of the first query
    np.testing.assert_array_equal(
        first.images[0].get_array(), X[why.indices[0, 0]].reshape(8, 8)
    )
    assert first.get_title() == (
        f"y={y[why.indices[0, 0]]}\n{why.similarities[0, 0]:.3f} "
        f"(p{math.floor(why.percentiles[0, 0])})"
    )
    assert fig.axes[0].get_title() == "query"


def test_plot_neighbors_images_with_channels():
    torch.manual_seed(0)
    X = torch.randn(12, 1, 4, 4).numpy()
    with pytest.raises(NotFittedError):
        plot_neighbors(NetworkNeighbors(AnyWidth()), X[:1])
    search = NetworkNeighbors(AnyWidth(), n_neighbors=2).fit(X)
    fig = plot_neighbors(search, X[:1])
    assert fig.axes[1].images[0].get_array().shape == (4, 4)
    items = TensorDataset(torch.as_tensor(X))
    on_items = NetworkNeighbors(AnyWidth(), n_neighbors=2).fit(items)
    with pytest.raises(ValueError, match="fitted on a torch Dataset. Read the"):
        plot_neighbors(on_items, X[:1])


def test_plot_neighbors_images_share_one_scale_of_values():
    """Each image had its own colour scale (a neighbour ten times the query
    looked like it), standardised colour images were clipped to [0, 1], and 2
    channels crashed inside matplotlib."""
    torch.manual_seed(0)
    for channels in (1, 2, 3, 5):
        X = torch.randn(12, channels, 4, 4).numpy() * 2  # standardised-like
        search = NetworkNeighbors(AnyWidth(), n_neighbors=2).fit(X)
        fig = plot_neighbors(search, X[:2])
        drawn = [ax.images[0] for ax in fig.axes]
        if channels == 3:
            values = np.stack([image.get_array() for image in drawn])
            assert values.min() == 0 and values.max() == 1
        else:
            assert {image.get_clim() for image in drawn} == {
                (
                    min(i.get_array().min() for i in drawn),
                    max(i.get_array().max() for i in drawn),
                )
            }
        matplotlib.pyplot.close(fig)
    # channels last, as an image file's: (4, 6, 3) was drawn as a (6, 3) RGBA
    for shape in [(6, 6, 3), (4, 6, 3), (4, 4, 3)]:
        last = torch.randn(12, *shape).numpy()
        search = NetworkNeighbors(AnyWidth(), n_neighbors=2).fit(last)
        fig = plot_neighbors(search, last[:1])
        assert fig.axes[0].images[0].get_array().shape == shape
        matplotlib.pyplot.close(fig)
    flat = NetworkNeighbors(mlp(4, 2), n_neighbors=2).fit(np.zeros((5, 4)))
    before = matplotlib.pyplot.get_fignums()
    with pytest.raises(ValueError, match=r"4 values cannot be viewed as an image"):
        plot_neighbors(flat, np.zeros((1, 4)), image_shape=(3, 3))
    assert matplotlib.pyplot.get_fignums() == before  # no empty figure left


def test_plot_neighbors_without_matplotlib_names_the_extra(data, monkeypatch):
    search = NetworkNeighbors(mlp(3, 2), n_neighbors=2).fit(data[0])
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"plot_neighbors needs matplotlib: ins"):
        plot_neighbors(search, data[1][:2])


def test_plot_neighbors_tabulates_tabular_data(data):
    X_ref, X_new = data
    y = np.arange(50) % 3
    search = NetworkNeighbors(mlp(3, 2), n_neighbors=3).fit(X_ref, y)
    fig = plot_neighbors(search, X_new[:2], n_features=2)
    why = search.explain(X_new[:2])
    assert len(fig.axes) == 2
    cells = fig.axes[1].tables[0].get_celld()
    header = [cells[0, c].get_text().get_text() for c in range(6)]
    assert header == ["index", "label", "similarity", "percentile", "x0", "x1"]
    j = why.indices[1, 0]
    row = [cells[1, c].get_text().get_text() for c in range(6)]
    assert row == [
        str(j),
        str(y[j]),
        f"{why.similarities[1, 0]:.3f}",
        f"{math.floor(why.percentiles[1, 0] * 10) / 10:.1f}",
        f"{X_ref[j, 0]:.3g}",
        f"{X_ref[j, 1]:.3g}",
    ]


def test_plot_neighbors_draws_on_the_callers_axes(data):
    """It had no axes=: a user's figure could not hold it."""
    torch.manual_seed(0)
    X = torch.randn(12, 1, 4, 4).numpy()
    search = NetworkNeighbors(AnyWidth(), n_neighbors=2).fit(X)
    fig, axes = matplotlib.pyplot.subplots(3, 3)
    fig.subplots_adjust(left=0.3)
    position = axes[2, 2].get_position().bounds
    assert plot_neighbors(search, X[:2], axes=axes[:2]) is fig
    assert axes[1, 2].images[0].get_array().shape == (4, 4)
    assert not axes[2, 0].images  # the caller's other Axes untouched
    assert axes[2, 2].get_position().bounds == position  # its layout too
    assert fig._suptitle is None  # and its title
    with pytest.raises(ValueError, match=r"axes holds 9 Axes; 2 queries with 2 "):
        plot_neighbors(search, X[:2], axes=axes)
    matplotlib.pyplot.close(fig)
    X_ref, X_new = data
    tables = NetworkNeighbors(mlp(3, 2), n_neighbors=3).fit(X_ref)
    fig, axes = matplotlib.pyplot.subplots(1, 2)
    plot_neighbors(tables, X_new[:2], axes=axes)
    assert axes[1].tables and axes[1].get_title() == "query 1"
    matplotlib.pyplot.close(fig)
