"""``n_components="auto"``: the sketch width chosen from ``max_memory``."""

import numpy as np
import pytest
import torch
from _architectures import mlp
from sklearn.utils._param_validation import InvalidParameterError

import sksim.neighbors
from sksim import LabelIssueDetector
from sksim.neighbors import (
    AUTO_COMPONENTS,
    CANDIDATE_COMPONENTS,
    KEPT_MEMORY,
    NetworkNeighbors,
)

pytest.importorskip("faiss")

N_REF, D, HIDDEN = 300, 3, 200  # 1 603 parameters: sketches up to 1 024 are smaller
PER_COMPONENT = 4 * N_REF * D  # bytes of the reference's float32 sketches


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_REF, 4)).astype(np.float32)
    return X, rng.normal(size=(40, 4)).astype(np.float32)


def fit(X, n_components, search_components=4, **kwargs):
    return NetworkNeighbors(
        mlp(4, D, HIDDEN),
        algorithm="faiss",
        n_components=n_components,
        search_components=search_components,
        random_state=3,
        **kwargs,
    ).fit(X)


def held(width, search_components=4):
    """Bytes of the reference's sketches of ``width`` and of the 'Flat' index.

    The index holds the sketches' projections on ``search_components``, or
    a copy of the whole sketches.
    """
    searched = D * width if search_components is None else search_components
    return width * PER_COMPONENT + 4 * N_REF * searched


def widest(max_memory, search_components=4, widths=AUTO_COMPONENTS):
    budget = KEPT_MEMORY * max_memory
    fitting = [w for w in widths if held(w, search_components) <= budget]
    return fitting[0] if fitting else widths[-1]


def assert_same_search(got, expected, X):
    assert got.n_components_ == expected.n_components_
    np.testing.assert_array_equal(got.reference_features_, expected.reference_features_)
    for a, b in zip(got.most_similar(X), expected.most_similar(X), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sketches_only_choosing_candidates_are_256_wide(data):
    X, X_new = data
    auto = fit(X, "auto")
    assert auto.exact_ranking_ and auto.n_components_ == CANDIDATE_COMPONENTS
    assert auto.reference_features_.shape == (N_REF, 4)  # the projections alone
    assert_same_search(auto, fit(X, CANDIDATE_COMPONENTS), X_new)


def test_exact_ranking_keeps_the_projections_of_sketches_that_would_not_fit(data):
    X, X_new = data
    net = mlp(4, D, 8)  # 67 parameters: whitened pieces much smaller than sketches
    small = NetworkNeighbors(net, algorithm="faiss", n_components=16,
                             search_components=4).fit(X)  # fmt: skip
    max_memory = 3 * sum(p.nbytes() for p in small._reference_pieces) + 3
    auto = NetworkNeighbors(
        net,
        n_neighbors=3,
        algorithm="faiss",
        n_components="auto",
        search_components=4,
        max_memory=max_memory,
        batch_size=64,
        random_state=3,
    ).fit(X)  # fmt: skip  (5 batches, each projected as it is sketched)
    assert auto.exact_ranking_ and auto.n_components_ == CANDIDATE_COMPONENTS
    whole = auto._sketch(X)  # 3 x 67 values per example: more than the budget
    assert whole.nbytes > KEPT_MEMORY * max_memory
    assert auto.reference_features_.shape == (N_REF, 4)
    np.testing.assert_allclose(
        auto.reference_features_, whole @ auto.search_directions_, atol=1e-5
    )
    exact = NetworkNeighbors(net, n_neighbors=3).fit(X).most_similar(X_new)
    found = auto.most_similar(X_new)
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found[1], exact[1], strict=True)]
    assert np.mean(hits) / 3 >= 0.9


@pytest.mark.parametrize("search_components", [None, 4])
@pytest.mark.parametrize("max_memory", [2**31, 3 * held(512) + 3, 3 * held(64) + 3])
def test_sketches_that_rank_are_as_wide_as_memory_allows(
    data, search_components, max_memory, monkeypatch
):
    X, X_new = data
    # the sketches rank the candidates, as past 8 thirds of max_memory of Jacobians
    monkeypatch.setattr(sksim.neighbors, "MAX_RANKING_BLOCKS", 0)
    auto = fit(X, "auto", search_components, max_memory=max_memory)
    assert not auto.exact_ranking_
    expected = widest(max_memory, search_components)
    assert auto.n_components_ == expected
    assert_same_search(
        auto, fit(X, expected, search_components, max_memory=max_memory), X_new
    )


@pytest.mark.parametrize("search_components", [None, 4])
def test_sketches_that_cannot_fit_say_what_to_change(
    data, search_components, monkeypatch
):
    X, _ = data
    monkeypatch.setattr(sksim.neighbors, "MAX_RANKING_BLOCKS", 0)  # sketches rank
    # the narrowest sketches and their index take more than two thirds
    max_memory = int(1.5 * held(64, search_components)) - 3
    with pytest.raises(MemoryError, match="lower n_components or search_comp"):
        fit(X, "auto", search_components, max_memory=max_memory)
    max_memory = int(1.5 * held(64, search_components)) + 3
    assert fit(X, 64, search_components, max_memory=max_memory).n_components_ == 64


def test_the_ladder_and_its_ends():
    assert AUTO_COMPONENTS == tuple(sorted(AUTO_COMPONENTS, reverse=True))
    assert AUTO_COMPONENTS[0] == 4096 and AUTO_COMPONENTS[-1] == 64
    assert widest(3 * held(512) + 3) == 512
    assert widest(3 * held(512) - 3) == 256
    assert widest(10**5) == 64  # none fits: the narrowest


def test_checkpoints_side_by_side_share_the_budget(data):
    X, _ = data
    net = mlp(4, D, HIDDEN)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    max_memory = 3 * held(1024, None) + 3
    auto = NetworkNeighbors(
        net, algorithm="faiss", n_components="auto", checkpoints=[state, state],
        max_memory=max_memory, random_state=0,
    ).fit(X)  # fmt: skip
    assert auto.n_components_ == 512  # two checkpoints of 512 take what 1024 would
    assert auto.reference_features_.shape[1] == 2 * D * 512


def test_fixed_widths_stay_as_given_and_others_are_refused(data):
    X, _ = data
    assert fit(X, 16).n_components_ == 16
    assert NetworkNeighbors(mlp(4, D, HIDDEN)).fit(X).n_components_ is None
    with pytest.raises(InvalidParameterError, match="n_components"):
        fit(X, "wide")


def test_label_issue_detector_takes_auto(data):
    X, _ = data
    torch.manual_seed(0)
    y = (X[:, 0] > 0).astype(int)
    net = mlp(4, 2)
    found = LabelIssueDetector(
        net, cv="prefit", algorithm="faiss", n_components="auto",
        search_components=4, random_state=0,
    ).fit(X, y)  # fmt: skip
    expected = LabelIssueDetector(
        net, cv="prefit", algorithm="faiss", n_components=CANDIDATE_COMPONENTS,
        search_components=4, random_state=0,
    ).fit(X, y)  # fmt: skip
    np.testing.assert_array_equal(found.neighbor_indices_, expected.neighbor_indices_)
    np.testing.assert_array_equal(found.scores_, expected.scores_)
