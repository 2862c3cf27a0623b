"""Dead and near-singular Grams: one warning per inputs, each row counted once."""

import re
import warnings

import joblib
import numpy as np
import pytest
import torch

from sksim import (
    DeadInputWarning,
    GradientDensityEstimator,
    NetworkKernel,
    NetworkNeighbors,
    SelfDenoisingAnalysis,
    SingularJacobianGramWarning,
    network_similarity,
)
from sksim._engine.features import gradient_features
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.parallel import tiled_kernel

NAMED = re.compile(
    r"(\d+) sample\(s\) have a zero gradient: (?:input rows|rows) \[([\d, ]+)\]"
    r"( and more)?( of the reference inputs)?"
)


def dead_net():
    """An MLP whose gradient is zero exactly where the inputs sum to <= 0."""
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3, bias=False)
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    return net


@pytest.fixture(scope="module")
def data():
    X = np.random.default_rng(0).normal(size=(150, 4)).astype(np.float32)
    return X, np.flatnonzero(X.sum(axis=1) <= 0)


def dead_warnings(call):
    """``call()``'s DeadInputWarnings: (count, first rows, of the reference)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = []
    for w in caught:
        if issubclass(w.category, DeadInputWarning):
            match = NAMED.match(str(w.message))
            rows = [int(r) for r in match.group(2).split(", ")]
            found.append((int(match.group(1)), tuple(rows), bool(match.group(4))))
    return found


def expected(dead, reference=False):
    return (len(dead), tuple(dead[:5].tolist()), reference)


def test_one_warning_for_all_batches(data):
    X, dead = data
    assert len(dead) > 60  # many batches of 16 hold dead rows
    found = dead_warnings(lambda: network_similarity(dead_net(), X, batch_size=16))
    assert found == [expected(dead)]


def test_queries_and_reference_named_apart(data):
    X, dead = data
    Q = X[::-1].copy()  # its dead rows are the mirrored ones
    dead_q = np.sort(len(X) - 1 - dead)
    found = dead_warnings(
        lambda: network_similarity(dead_net(), Q, X, batch_size=16, max_memory=2**16)
    )
    assert sorted(found) == sorted([expected(dead, True), expected(dead_q)])


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiles_in_threads_report_rows_of_the_whole_inputs(data, symmetric):
    X, dead = data
    engine = JacobianEngine(dead_net(), batch_size=16)
    Y = None if symmetric else X[:90]

    def tiled():
        with joblib.parallel_config(backend="threading"):
            tiled_kernel(engine, X, Y, n_jobs=2, tile=40)

    found = dead_warnings(tiled)
    if symmetric:
        assert found == [expected(dead)]
    else:
        assert sorted(found) == sorted(
            [expected(dead), expected(dead[dead < 90], True)]
        )


def test_density_chunks_name_the_queries_rows(data):
    X, dead = data
    density = GradientDensityEstimator(dead_net(), batch_size=16, n_jobs=2)
    assert dead_warnings(lambda: density.fit(X)) == [expected(dead)]
    with joblib.parallel_config(backend="threading"):
        found = dead_warnings(lambda: density.score_samples(X[50:]))
    assert found == [expected(dead[dead >= 50] - 50)]


@pytest.mark.parametrize("algorithm", ["exact", "faiss"])
def test_neighbors_name_reference_and_queries(data, algorithm):
    if algorithm == "faiss":
        pytest.importorskip("faiss")
    X, dead = data
    search = NetworkNeighbors(
        dead_net(),
        n_neighbors=3,
        algorithm=algorithm,
        n_components=None if algorithm == "exact" else 16,
        batch_size=16,
        random_state=0,
    )
    fitted = dead_warnings(lambda: search.fit(X))
    queried = dead_warnings(lambda: search.kneighbors(X[100:]))
    queries = expected(dead[dead >= 100] - 100)
    if algorithm == "exact":  # the reference is read at query time
        assert fitted == []
        assert sorted(queried) == sorted([expected(dead, True), queries])
    else:  # the reference is sketched and kept at fit
        assert fitted == [expected(dead)]
        assert queried == [queries]
    assert dead_warnings(lambda: search.kneighbors()) == (
        [expected(dead)] if algorithm == "exact" else []
    )


@pytest.mark.parametrize("weights", ["cosine", "hard"])
def test_denoising_of_a_subset_names_rows_of_x(data, weights):
    X, dead = data
    y = np.repeat(X.sum(axis=1, keepdims=True), 3, axis=1)
    analysis = SelfDenoisingAnalysis(
        dead_net(), weights=weights, max_samples=70, random_state=0, batch_size=16
    )
    found = dead_warnings(lambda: analysis.fit(X, y))
    assert set(found) == {expected(dead)}


def test_sketched_features_and_gp_diagonal(data):
    X, dead = data
    engine = JacobianEngine(dead_net(), batch_size=16)
    found = dead_warnings(lambda: gradient_features(engine, X, n_components=8))
    assert found == [expected(dead)]
    kernel = NetworkKernel(dead_net(), kind="cosine", batch_size=16)
    assert dead_warnings(lambda: kernel.diag(X)) == [expected(dead)]


def test_softmax_outputs_warn_once_for_every_row(data):
    X, _ = data
    net = torch.nn.Sequential(dead_net(), torch.nn.Softmax(dim=1))
    alive = X[X.sum(axis=1) > 0]
    with pytest.warns(SingularJacobianGramWarning) as record:
        network_similarity(net, alive, batch_size=16)
    singular = [w for w in record if w.category is SingularJacobianGramWarning]
    assert len(singular) == 1
    assert str(singular[0].message).startswith(
        f"The Jacobian Gram J J^T is near-singular for {len(alive)} sample(s): "
        "input rows [0, 1, 2, 3, 4] and more."
    )
    assert str(singular[0].message).endswith("(output=lambda out: out[:, :-1]).")
    with warnings.catch_warnings():  # the advice followed: no warning, and K_ii = 1
        warnings.simplefilter("error", SingularJacobianGramWarning)
        K = network_similarity(
            net, alive, batch_size=16, output=lambda out: out[:, :-1]
        )
    np.testing.assert_allclose(np.diag(K), 1, atol=1e-6)
