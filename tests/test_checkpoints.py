"""The kernel averaged over training checkpoints, against one net per checkpoint."""

import copy
import pickle
import threading
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import family_case
from conftest import make_digits_net
from sklearn.base import clone
from skorch.callbacks import Checkpoint

from sksim import (
    DeadInputWarning,
    GradientDensityEstimator,
    NetworkNeighbors,
    NetworkSimilarityKernel,
    network_similarity,
)
from sksim._base import make_engine, projection_seed
from sksim.checkpoints import collect_checkpoints
from sksim.kernel import _projected_similarity

KINDS = ["cosine", "ntk", "influence"]
WEIGHTS = [1.0, 2.0, 0.5]


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )


def perturbed_states(net, n=3):
    """State dicts of ``net`` with its parameters moved, as training would."""
    states = []
    for c in range(n):
        generator = torch.Generator().manual_seed(100 + c)
        states.append(
            {
                k: v + 0.5 * torch.randn(v.shape, generator=generator)
                for k, v in net.state_dict().items()
            }
        )
    return states


def at(net, state):
    """A copy of ``net`` set to a checkpoint: the oracle's net per checkpoint."""
    copied = copy.deepcopy(net)
    copied.load_state_dict(state)
    return copied


def average(kernels, weights=WEIGHTS):
    return sum(w * K for w, K in zip(weights, kernels, strict=True)) / sum(weights)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    return rng.randn(12, 3).astype(np.float32), rng.randn(5, 3).astype(np.float32)


@pytest.fixture(scope="module")
def net_and_states():
    net = mlp()
    return net, perturbed_states(net)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_is_the_weighted_average_of_checkpoint_kernels(
    data, net_and_states, kind
):
    X, Y = data
    net, states = net_and_states
    for second in (Y, None):
        K = network_similarity(
            net,
            X,
            second,
            kind=kind,
            batch_size=5,
            checkpoints=states,
            checkpoint_weights=WEIGHTS,
        )
        expected = average(
            [network_similarity(at(net, s), X, second, kind=kind) for s in states]
        )
        # float32 sums in batches of 5 or not: rounding of the values' scale
        scale = np.abs(expected).max()
        np.testing.assert_allclose(K, expected, rtol=1e-6, atol=1e-6 * scale)
    if kind != "influence":
        np.testing.assert_array_equal(K, K.T)


@pytest.mark.parametrize("kind", KINDS)
def test_full_blocks_are_the_weighted_average(data, net_and_states, kind):
    X, Y = data
    net, states = net_and_states
    K = network_similarity(
        net, X, Y, kind=kind, reduce=None, checkpoints=states, batch_size=4
    )
    expected = average(
        [network_similarity(at(net, s), X, Y, kind=kind, reduce=None) for s in states],
        [1, 1, 1],
    )
    assert K.shape == (12, 5, 2, 2)
    np.testing.assert_allclose(K, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_sketched_kernel_is_the_average_of_sketched_kernels(data, net_and_states, kind):
    """Checkpoint c is sketched with its own seed, derived from random_state."""
    X, Y = data
    net, states = net_and_states
    seed = projection_seed(7)
    K = network_similarity(
        net,
        X,
        Y,
        kind=kind,
        n_components=12,
        random_state=7,
        batch_size=5,
        checkpoints=states,
        checkpoint_weights=WEIGHTS,
    )
    expected = average(
        [
            _projected_similarity(
                make_engine(at(net, s), "logits", None, 5, None, 0, None),
                X,
                Y,
                kind,
                "trace",
                1e-5,
                12,
                seed + c,
            )
            for c, s in enumerate(states)
        ]
    )
    np.testing.assert_allclose(K, expected, rtol=1e-5, atol=1e-6)
    # one state twice: two sketches, whose errors average, not one counted twice
    sketch = dict(kind=kind, n_components=12, random_state=7)
    once = network_similarity(at(net, states[0]), X, Y, **sketch)
    K = network_similarity(net, X, Y, checkpoints=states[:1] * 2, **sketch)
    assert np.abs(K - once).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_wide_sketches_give_the_exact_average(data, net_and_states, kind):
    """Sketches at least as wide as the 50 parameters keep every piece exactly."""
    X, Y = data
    net, states = net_and_states
    kwargs = dict(kind=kind, checkpoints=states, checkpoint_weights=WEIGHTS)
    exact = network_similarity(net, X, Y, **kwargs)
    sketched = network_similarity(net, X, Y, n_components=64, random_state=0, **kwargs)
    np.testing.assert_allclose(sketched, exact, rtol=1e-4, atol=1e-5)
    kern = NetworkSimilarityKernel(net, n_components=64, random_state=0, **kwargs)
    np.testing.assert_allclose(kern.fit(Y).transform(X), exact, rtol=1e-4, atol=1e-5)
    assert kern.features_fit_.shape == (5, 2, 3 * 50)  # 50 exact columns each


@pytest.mark.parametrize("n_components", [None, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_one_checkpoint_is_todays_kernel(data, kind, n_components):
    X, Y = data
    net = mlp()
    kwargs = dict(kind=kind, n_components=n_components, random_state=3)
    today = network_similarity(net, X, Y, **kwargs)
    K = network_similarity(net, X, Y, checkpoints=[net.state_dict()], **kwargs)
    np.testing.assert_allclose(K, today, rtol=1e-12, atol=1e-12)
    kern = NetworkSimilarityKernel(net, checkpoints=[net.state_dict()], **kwargs)
    plain = NetworkSimilarityKernel(net, **kwargs)
    np.testing.assert_allclose(
        kern.fit(Y).transform(X), plain.fit(Y).transform(X), rtol=1e-12, atol=1e-12
    )


def test_the_kernel_estimator_averages_like_the_function(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    kwargs = dict(kind="cosine", checkpoints=states, checkpoint_weights=WEIGHTS)
    kern = NetworkSimilarityKernel(net, batch_size=4, **kwargs)
    K = kern.fit_transform(X)
    # batches of 4 or not: float32 rounding, which depends on the processor
    np.testing.assert_allclose(K, network_similarity(net, X, **kwargs), atol=1e-6)
    np.testing.assert_allclose(
        kern.transform(Y), network_similarity(net, Y, X, **kwargs), atol=1e-6
    )


def test_the_network_is_left_bit_identical(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kwargs = dict(checkpoints=states, checkpoint_weights=WEIGHTS)
    network_similarity(net, X, Y, kind="influence", **kwargs)
    NetworkSimilarityKernel(net, n_components=8, **kwargs).fit(X).transform(Y)
    NetworkNeighbors(net, n_neighbors=2, **kwargs).fit(X).kneighbors(Y)
    GradientDensityEstimator(net, **kwargs).fit(X).score_samples(Y)
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_paths_equal_state_dicts(data, net_and_states, tmp_path):
    X, Y = data
    net, states = net_and_states
    paths = []
    for c, state in enumerate(states):
        paths.append(tmp_path / f"epoch_{c}.pt")
        torch.save(state, paths[-1])
    from_files = network_similarity(net, X, Y, checkpoints=paths)
    np.testing.assert_array_equal(
        from_files, network_similarity(net, X, Y, checkpoints=states)
    )
    as_str = network_similarity(net, X, Y, checkpoints=[str(p) for p in paths])
    np.testing.assert_array_equal(as_str, from_files)


def test_checkpoint_files_changed_after_fit_are_refused(data, net_and_states, tmp_path):
    X, Y = data
    net, states = net_and_states
    paths = [str(tmp_path / f"{c}.pt") for c in range(len(states))]
    for state, path in zip(states, paths, strict=True):
        torch.save(state, path)
    estimators = [
        GradientDensityEstimator(net, method="soft", checkpoints=paths),
        NetworkSimilarityKernel(net, n_components=8, checkpoints=paths),
        NetworkNeighbors(net, n_neighbors=2, checkpoints=paths),
    ]
    queries = [
        lambda e: e.score_samples(Y),
        lambda e: e.transform(Y),
        lambda e: e.kneighbors(Y),
    ]
    for estimator in estimators:
        estimator.fit(X)
    torch.save(states[0], paths[1])  # another epoch's weights in its place
    for estimator, query in zip(estimators, queries, strict=True):
        with pytest.raises(ValueError, match=r"checkpoints\[1\] changed since fit"):
            query(estimator)
        query(estimator.fit(X))


@pytest.mark.parametrize("use_paths", [False, True])
def test_clone_and_pickle(data, net_and_states, tmp_path, use_paths):
    X, Y = data
    net, states = net_and_states
    checkpoints = states
    if use_paths:
        checkpoints = [str(tmp_path / f"{c}.pt") for c in range(len(states))]
        for state, path in zip(states, checkpoints, strict=True):
            torch.save(state, path)
    kern = NetworkSimilarityKernel(
        net, kind="ntk", checkpoints=checkpoints, checkpoint_weights=WEIGHTS
    )
    cloned = clone(kern)
    assert len(cloned.checkpoints) == 3
    assert cloned.checkpoint_weights == WEIGHTS
    expected = kern.fit(X).transform(Y)
    np.testing.assert_array_equal(cloned.fit(X).transform(Y), expected)
    restored = pickle.loads(pickle.dumps(kern))
    np.testing.assert_array_equal(restored.transform(Y), expected)


def test_neighbors_recall_is_measured_against_the_averaged_kernel(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    kwargs = dict(checkpoints=states, checkpoint_weights=WEIGHTS)
    K = network_similarity(net, Y, X, **kwargs)
    exact = np.argsort(-K, axis=1, kind="stable")[:, :4]
    nn = NetworkNeighbors(
        net, n_neighbors=4, n_components=2, random_state=0, batch_size=3, **kwargs
    ).fit(X, X_val=Y)
    _, found = nn.most_similar(Y)
    hits = [len(set(a) & set(b)) for a, b in zip(found, exact, strict=True)]
    assert nn.recall_ == pytest.approx(np.mean(hits) / 4)
    assert 0 < nn.recall_ < 1


def test_neighbors_rank_by_the_averaged_kernel(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    kwargs = dict(checkpoints=states, checkpoint_weights=WEIGHTS)
    K = network_similarity(net, Y, X, **kwargs)
    K_self = network_similarity(net, X, **kwargs)
    np.fill_diagonal(K_self, -np.inf)
    # max_memory small enough to accumulate the rows in blocks of 2 queries
    for max_memory in (None, 3 * 8 * 12 * 2):
        nn = NetworkNeighbors(
            net, n_neighbors=4, batch_size=3, max_memory=max_memory, **kwargs
        ).fit(X)
        for queries, kernel in ((Y, K), (None, K_self)):
            similarities, indices = nn.most_similar(queries)
            order = np.argsort(-kernel, axis=1, kind="stable")[:, :4]
            np.testing.assert_array_equal(indices, order)
            np.testing.assert_allclose(
                similarities,
                np.take_along_axis(kernel, order, axis=1),
                rtol=1e-6,
            )


def test_neighbors_first_epoch_differ_from_the_average(data, net_and_states):
    """The averaged kernel is not one checkpoint's: neighbours can change."""
    X, Y = data
    net, states = net_and_states
    first = NetworkNeighbors(net, n_neighbors=3, checkpoints=states[:1]).fit(X)
    averaged = NetworkNeighbors(net, n_neighbors=3, checkpoints=states).fit(X)
    only_first = NetworkNeighbors(at(net, states[0]), n_neighbors=3).fit(X)
    np.testing.assert_array_equal(
        first.kneighbors(Y, return_distance=False),
        only_first.kneighbors(Y, return_distance=False),
    )
    assert not np.allclose(first.most_similar(Y)[0], averaged.most_similar(Y)[0])


def test_sketched_neighbors_use_unit_stacked_features(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    kwargs = dict(checkpoints=states, checkpoint_weights=WEIGHTS)
    nn = NetworkNeighbors(
        net, n_neighbors=3, n_components=64, random_state=0, **kwargs
    ).fit(X)
    F = nn.reference_features_
    assert F.shape == (12, 3 * 2 * 50)  # 50 exact columns each
    # one array of energies per checkpoint, each adding up to d = 2 per example
    assert len(nn.sketch_weights_) == 3
    np.testing.assert_allclose([w.sum() for w in nn.sketch_weights_], 2, rtol=1e-5)
    assert not np.allclose(nn.sketch_weights_[0], nn.sketch_weights_[1])
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), 1.0, rtol=1e-5)
    similarities, indices = nn.most_similar(Y)
    K = network_similarity(net, Y, X, **kwargs)
    np.testing.assert_array_equal(indices, np.argsort(-K, axis=1)[:, :3])
    np.testing.assert_allclose(
        similarities, np.take_along_axis(K, indices, axis=1), atol=1e-5
    )


def test_soft_counts_are_the_weighted_counts_of_each_checkpoint(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    dens = GradientDensityEstimator(
        net, batch_size=5, checkpoints=states, checkpoint_weights=WEIGHTS
    ).fit(X)
    assert dens.reference_sum_.shape == (3, 2, 50)
    per_checkpoint = [
        GradientDensityEstimator(at(net, s)).fit(X).neighbor_counts(Y) for s in states
    ]
    counts = dens.neighbor_counts(Y)
    np.testing.assert_allclose(counts, average(per_checkpoint), rtol=1e-5)
    K = network_similarity(net, Y, X, checkpoints=states, checkpoint_weights=WEIGHTS)
    np.testing.assert_allclose(counts, K.sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("n_components", [None, 64])
def test_hard_and_power_counts_use_the_averaged_kernel(
    data, net_and_states, n_components
):
    X, Y = data
    net, states = net_and_states
    kwargs = dict(checkpoints=states, checkpoint_weights=WEIGHTS)
    K = network_similarity(net, Y, X, **kwargs)
    hard = GradientDensityEstimator(
        net, method="hard", threshold=0.5, n_components=n_components, **kwargs
    ).fit(X)
    # a threshold between the similarities, away from sketch errors
    np.testing.assert_array_equal(hard.neighbor_counts(Y), (K > 0.5).sum(axis=1))
    power = GradientDensityEstimator(
        net, method="power", power=2, n_components=n_components, **kwargs
    ).fit(X)
    np.testing.assert_allclose(
        power.neighbor_counts(Y), (np.maximum(K, 0) ** 2).sum(axis=1), rtol=1e-4
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.pop("2.bias"),
            r"checkpoints\[1\] does not match .* lacks '2.bias'",
        ),
        (
            lambda s: s.update({"extra": torch.zeros(1)}),
            r"checkpoints\[1\] does not match .* has 'extra', which the network",
        ),
        (
            lambda s: s.update({"0.weight": torch.zeros(4, 3)}),
            r"'0.weight' has shape \(4, 3\) there and \(8, 3\) in the network",
        ),
        (
            lambda s: s.update({"0.weight": np.zeros((8, 3), np.float32)}),
            r"'0.weight' is a ndarray there, not a tensor",
        ),
        (
            lambda s: s.update({"2.bias": torch.tensor([0.0, float("nan")])}),
            r"'2.bias' holds NaN or infinity there",
        ),
        (
            lambda s: s.update({"0.weight": torch.zeros(8, 3, device="meta")}),
            r"'0.weight' is on the meta device there, with no values",
        ),
        (  # saved from DataParallel
            lambda s: [s.update({f"module.{k}": s.pop(k)}) for k in list(s)],
            r"lacks '0.weight' \(its keys start with 'module.', as DataParallel",
        ),
    ],
)
def test_mismatched_checkpoints_are_named(data, net_and_states, change, message):
    X, _ = data
    net, states = net_and_states
    wrong = [states[0], dict(states[1]), states[2]]
    change(wrong[1])
    with pytest.raises(ValueError, match=message):
        network_similarity(net, X, checkpoints=wrong)
    with pytest.raises(ValueError, match=message):
        NetworkNeighbors(net, checkpoints=wrong).fit(X)


def test_nan_in_a_checkpoints_buffer_is_named_and_masks_infinities_pass(data):
    """A NaN running variance made every output NaN, and the error blamed the
    network's weights; an attention-style mask of -inf is a buffer's right."""
    X, _ = data
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    net.register_buffer("mask", torch.tensor([0.0, -torch.inf]))
    masked = dict(net.state_dict())
    broken = dict(masked, **{"1.running_var": torch.tensor([1.0, np.nan, 1.0, 1.0])})
    with pytest.raises(ValueError, match=r"checkpoints\[1\] .*'1.running_var' holds"):
        network_similarity(net, X, checkpoints=[masked, broken])
    K = network_similarity(net, X, checkpoints=[masked, masked])
    np.testing.assert_allclose(K, network_similarity(net, X), atol=1e-6)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, 0.0, 1.0], r"positive and finite; got \[1.0, 0.0, 1.0\]"),
        ([1.0, -2.0, 1.0], "positive and finite"),
        ([1.0, np.nan, 1.0], "positive and finite"),
        ([1.0, 2.0], r"one weight per checkpoint: got 2 weight\(s\) .* for 3"),
        ([[1.0, 2.0, 3.0]], "one weight per checkpoint"),
        (["a", "b", "c"], r"must be numbers, one per checkpoint; got \['a', 'b',"),
        ([True, True, False], "must be numbers, one per checkpoint; got .* bool"),
    ],
)
def test_bad_weights(data, net_and_states, weights, message):
    X, _ = data
    net, states = net_and_states
    with pytest.raises(ValueError, match=message):
        network_similarity(net, X, checkpoints=states, checkpoint_weights=weights)
    with pytest.raises(ValueError, match=message):
        GradientDensityEstimator(
            net, checkpoints=states, checkpoint_weights=weights
        ).fit(X)


def test_weights_of_any_scale_give_their_ratios(data, net_and_states):
    """A sum of large weights overflowed: the kernel was all zeros."""
    X, _ = data
    net, states = net_and_states
    K = network_similarity(net, X, checkpoints=states, checkpoint_weights=[1e308] * 3)
    np.testing.assert_array_equal(K, network_similarity(net, X, checkpoints=states))


@pytest.mark.parametrize(
    "estimator",
    [
        lambda net, **kw: NetworkSimilarityKernel(net, n_components=64, **kw),
        lambda net, **kw: GradientDensityEstimator(net, method="soft", **kw),
        lambda net, **kw: NetworkNeighbors(net, n_neighbors=3, **kw),
    ],
    ids=["sketched kernel", "soft counts", "neighbours"],
)
@pytest.mark.parametrize(
    "container", [np.array, torch.tensor, pd.Series], ids=["array", "tensor", "Series"]
)
def test_checkpoints_and_weights_changed_in_place_or_reset_after_fit_are_refused(
    data, net_and_states, estimator, container
):
    """The list and weights were read again at each query: changed in place
    after fit, a sketched kernel mixed the old and new weights (0.23 off), a
    grown list raised an IndexError, a shorter one answered with fewer
    checkpoints; set_params(checkpoints=None) crashed the soft counts. Weights
    in a tensor or a Series were still read again. Then fit's were kept while
    get_params showed others; now every change is refused until the next fit,
    as a change of output or kind is."""
    X, Y = data
    net, states = net_and_states

    def answer(fitted):
        if isinstance(fitted, NetworkSimilarityKernel):
            return fitted.transform(Y)
        if isinstance(fitted, GradientDensityEstimator):
            return fitted.score_samples(Y)
        return fitted.most_similar(Y)[0]

    checkpoints, weights = list(states[:2]), container([1.0, 2.0])
    fitted = estimator(net, checkpoints=checkpoints, checkpoint_weights=weights)
    expected = answer(fitted.fit(X))
    changed = "changed since fit: checkpoint.*Call fit again"
    weights[1] = 99.0
    with pytest.raises(ValueError, match=changed):
        answer(fitted)
    weights[1] = 2.0
    checkpoints.append(states[2])
    with pytest.raises(ValueError, match=changed):
        answer(fitted)
    del checkpoints[2:]
    np.testing.assert_array_equal(answer(fitted), expected)  # as fitted again
    fitted.set_params(checkpoints=None, checkpoint_weights=None)
    with pytest.raises(ValueError, match=changed):
        answer(fitted)
    fitted.set_params(checkpoints=list(states[:2]), checkpoint_weights=[1, 2])
    np.testing.assert_array_equal(answer(fitted), expected)  # equal values


def test_weights_without_checkpoints_are_refused(data, net_and_states):
    X, _ = data
    net, _ = net_and_states
    alone = "checkpoint_weights were given without checkpoints"
    with pytest.raises(ValueError, match=alone):
        network_similarity(net, X, checkpoint_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=alone):
        NetworkSimilarityKernel(net, checkpoint_weights=[1.0, 2.0]).fit(X)


def test_one_checkpoint_alone_is_refused_in_a_line(data, net_and_states, tmp_path):
    """A state_dict given as checkpoints= (not in a list) printed the whole
    state_dict, tensor by tensor, without saying what to do."""
    X, _ = data
    net, states = net_and_states
    torch.save(states[0], tmp_path / "one.pt")
    calls = (
        lambda one: network_similarity(net, X, checkpoints=one),
        lambda one: NetworkSimilarityKernel(net, checkpoints=one).fit(X),
        lambda one: GradientDensityEstimator(net, checkpoints=one).fit(X),
    )
    for one, what in ((states[0], "state_dict"), (tmp_path / "one.pt", "path")):
        for call in calls:
            with pytest.raises(ValueError) as error:
                call(one)
            assert str(error.value) == (
                "checkpoints must be a list of checkpoints (state_dicts or paths "
                f"to them); got one {what}: pass checkpoints=[checkpoint]."
            )


def test_missing_files_empty_lists_and_other_types(data, net_and_states, tmp_path):
    X, _ = data
    net, states = net_and_states
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=r"checkpoints\[1\]: no file .*nowhere"):
        NetworkSimilarityKernel(net, checkpoints=[states[0], missing]).fit(X)
    with pytest.raises(ValueError, match="checkpoints is empty"):
        network_similarity(net, X, checkpoints=[])
    with pytest.raises(TypeError, match=r"checkpoints\[0\] is a int; expected"):
        network_similarity(net, X, checkpoints=[3])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="holds a list, not a state_dict"):
        network_similarity(net, X, checkpoints=[tmp_path / "list.pt"])
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    torch.save(net, tmp_path / "module.pt")  # the module itself, pickled
    for name in ("damaged.pt", "module.pt"):
        with pytest.raises(ValueError, match=rf"checkpoints\[1\]: .*{name}' cannot"):
            network_similarity(net, X, checkpoints=[states[0], tmp_path / name])


# --- skorch's Checkpoint callback -------------------------------------------


def checkpointed_net(folder, **checkpoint):
    checkpoint = dict(monitor=None, f_params="params_{last_epoch[epoch]}.pt") | (
        checkpoint
    )
    return make_digits_net(
        max_epochs=3,
        callbacks=[("cp", Checkpoint(dirname=str(folder), **checkpoint))],
    )


def test_collect_checkpoints_of_a_skorch_net(digits, tmp_path):
    X, y = digits
    torch.manual_seed(0)
    net = checkpointed_net(tmp_path).fit(X[:200], y[:200])
    paths, epochs = collect_checkpoints(net, return_epochs=True)
    assert epochs == [1, 2, 3]
    assert paths == [str(tmp_path / f"params_{e}.pt") for e in epochs]
    assert collect_checkpoints(net, "cp") == paths
    # the last file holds the trained net itself
    last = torch.load(paths[-1], weights_only=True)
    for key, value in net.module_.state_dict().items():
        assert torch.equal(last[key], value)
    K = network_similarity(net, X[200:210], X[:20], checkpoints=paths)
    first = copy.deepcopy(net.module_)
    per_epoch = []
    for path in paths:
        first.load_state_dict(torch.load(path, weights_only=True))
        per_epoch.append(network_similarity(first, X[200:210], X[:20]))
    np.testing.assert_allclose(K, average(per_epoch, [1, 1, 1]), rtol=1e-6)


def test_collect_checkpoints_errors(digits, tmp_path):
    X, y = digits
    torch.manual_seed(0)
    overwriting = checkpointed_net(tmp_path, f_params="params.pt").fit(X[:100], y[:100])
    with pytest.raises(ValueError, match=r"3 epochs to 1 file\(s\) .*params_\{last"):
        collect_checkpoints(overwriting)
    with pytest.raises(ValueError, match="no Checkpoint callback named 'other'"):
        collect_checkpoints(overwriting, "other")
    plain = make_digits_net(max_epochs=1).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="no Checkpoint callback: train it with"):
        collect_checkpoints(plain)
    with pytest.raises(ValueError, match="trained skorch net; got DigitsMLP"):
        collect_checkpoints(plain.module_)
    kept = checkpointed_net(tmp_path / "kept").fit(X[:100], y[:100])
    (tmp_path / "kept" / "params_2.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"params_2.pt', which is gone"):
        collect_checkpoints(kept)


def test_a_compiled_network_takes_checkpoints_of_either_form(data, net_and_states):
    X, Y = data
    net, states = net_and_states
    compiled = torch.compile(net, backend="aot_eager")
    expected = network_similarity(net, X, Y, checkpoints=states)
    prefixed = [{f"_orig_mod.{k}": v for k, v in s.items()} for s in states]
    for checkpoints in (states, prefixed):
        np.testing.assert_array_equal(
            network_similarity(compiled, X, Y, checkpoints=checkpoints), expected
        )


class Locked(torch.nn.Module):
    """A module holding a lock, which cannot be copied."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.lock = threading.Lock()

    def forward(self, x):
        return self.fc(x)


def test_a_network_that_cannot_be_copied_says_so(data):
    X, _ = data
    net = Locked()
    network_similarity(net, X)  # fine without checkpoints
    with pytest.raises(TypeError, match="cannot be copied .*cannot pickle"):
        network_similarity(net, X, checkpoints=[net.state_dict()])


class ScaledOutputs(torch.nn.Module):
    """A Linear whose outputs are scaled by a number kept as extra state."""

    def __init__(self):
        super().__init__()
        self.lin, self.scale = torch.nn.Linear(3, 2), 1.0

    def get_extra_state(self):
        return {"scale": self.scale}

    def set_extra_state(self, state):
        self.scale = state["scale"]

    def forward(self, x):
        return self.lin(x) * self.scale


def test_checkpoints_with_extra_state_are_loaded_as_torch_loads_them():
    """They were refused: "'_extra_state' is a dict there, not a tensor"."""
    torch.manual_seed(0)
    net = ScaledOutputs()
    X = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    doubled = {**net.state_dict(), "_extra_state": {"scale": 2.0}}
    K = network_similarity(net, X, kind="ntk", checkpoints=[doubled])
    np.testing.assert_allclose(K, 4 * network_similarity(net, X, kind="ntk"), rtol=1e-6)
    assert net.scale == 1.0
    kernel = NetworkSimilarityKernel(net, kind="ntk", checkpoints=[doubled]).fit(X)
    np.testing.assert_allclose(kernel.transform(X), K, rtol=1e-6)
    doubled["_extra_state"]["scale"] = 3.0  # changed in place after fit
    with pytest.raises(ValueError, match=r"checkpoints\[0\] changed since fit"):
        kernel.transform(X)


@pytest.mark.parametrize(
    "estimator",
    [
        lambda net: NetworkSimilarityKernel(net, checkpoints=perturbed_states(net)),
        lambda net: NetworkNeighbors(
            net, n_neighbors=3, checkpoints=perturbed_states(net)
        ),
    ],
    ids=["kernel", "neighbours"],
)
def test_the_nets_own_weights_may_change_when_checkpoints_set_them(data, estimator):
    """The checkpoints replace every weight, but training the net further after
    fit refused every query ("call fit again"); which weights are trainable
    still counts."""
    X, Y = data
    net = mlp()
    fitted = estimator(net).fit(X)

    def answer():
        if isinstance(fitted, NetworkSimilarityKernel):
            return fitted.transform(Y)
        return fitted.most_similar(Y)[1]

    expected = answer()
    with torch.no_grad():
        net[0].weight.add_(1.0)  # trained further
    np.testing.assert_array_equal(answer(), expected)
    net[2].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="are trainable, changed since fit"):
        answer()


def test_samples_flagged_at_some_checkpoints_are_warned_about_once():
    """Each checkpoint warned on its own, without its name, that the samples'
    similarity "is set to 0", which the average is not; the neighbours' query
    blocks warned again each, with rows of the block."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1, bias=False)
    )
    alive = net.state_dict()
    dead = {**alive, "0.bias": torch.full((4,), -100.0)}  # every ReLU off
    X = np.random.RandomState(0).randn(12, 2).astype(np.float32)
    checkpoints = [alive, dead, alive]
    with pytest.warns(DeadInputWarning) as caught:
        K = network_similarity(net, X, checkpoints=checkpoints)
    assert [str(w.message)[:80] for w in caught] == [
        "12 sample(s) have a zero gradient at some of the 3 checkpoints: input rows "
        "[0, 1"
    ]
    assert "the average over the checkpoints counts the others only" in str(
        caught[0].message
    )
    assert (K[np.triu_indices(12)] != 0).any()  # not set to 0
    search = NetworkNeighbors(net, n_neighbors=2, checkpoints=checkpoints).fit(X)
    search.set_params(max_memory=3000)  # queries in blocks of a few
    with pytest.warns(DeadInputWarning) as caught:
        search.kneighbors(X[5:])
    queried = [w for w in caught if "input rows" in str(w.message)]
    assert [str(w.message)[:98] for w in queried] == [
        "7 sample(s) have a zero gradient at some of the 3 checkpoints: input rows "
        "[0, 1, 2, 3, 4] and more"
    ]
    assert len(caught) == 2  # and the reference's rows, once


def test_a_search_stopped_between_blocks_leaves_no_scope_open(monkeypatch):
    """The blocks' generator kept a warning scope open across its yields:
    stopped there (Ctrl-C, a MemoryError) with its traceback kept, it took
    every later warning of the thread into that scope, never shown."""
    from sksim import neighbors
    from sksim._engine import flags

    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
    state = net.state_dict()
    X = np.linspace(1, 5, 40, dtype=np.float32)[:, None]
    search = NetworkNeighbors(net, n_neighbors=2, checkpoints=[state, state])
    search.set_params(max_memory=2000).fit(X[:5])  # queries in blocks
    top_k, calls = neighbors.top_k, []

    def stopped(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return top_k(*args)

    monkeypatch.setattr(neighbors, "top_k", stopped)
    with pytest.raises(KeyboardInterrupt) as kept:  # holds the traceback
        search.kneighbors(X)
    assert kept.value is not None and flags._scopes() == []
    with pytest.warns(DeadInputWarning, match="1 sample"):
        network_similarity(net, np.array([[-1.0], [1.0]], np.float32))


def test_infinite_buffers_are_refused_where_the_networks_are_finite(data):
    """A BatchNorm's running mean gone infinite in one checkpoint: the error
    came later, blaming the network's weights; buffers infinite in the network
    too (attention masks) stay allowed."""
    X, _ = data
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    ).eval()
    net.register_buffer("mask", torch.tensor([0.0, -float("inf")]))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    bad = {k: v.clone() for k, v in good.items()}
    bad["1.running_mean"][0] = float("inf")
    K = network_similarity(net, X, checkpoints=[good, good])
    np.testing.assert_allclose(K, network_similarity(net, X), rtol=1e-6)
    with pytest.raises(ValueError, match=r"checkpoints\[1\] .* '1.running_mean' holds"):
        network_similarity(net, X, checkpoints=[good, bad])
    moved = {k: v.clone() for k, v in good.items()}
    moved["mask"] = torch.tensor([-float("inf"), 0.0])  # infinite elsewhere
    with pytest.raises(ValueError, match=r"checkpoints\[1\] .* 'mask' holds NaN or"):
        network_similarity(net, X, checkpoints=[good, moved])


def test_the_dataparallel_hint_is_given_only_for_its_prefix(data):
    """A network whose own keys start with 'module.' was told about DataParallel
    for any missing key."""
    X, _ = data

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.module(x)

    net = Wrapper()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.pop("module.bias")
    with pytest.raises(ValueError, match=r"lacks 'module.bias'\. Checkpoints must"):
        network_similarity(net, X, checkpoints=[state, state])


def test_every_checkpoints_sketch_is_as_wide_whatever_its_energies():
    """Each layer piece's columns follow its energy at each checkpoint, and a
    piece left none was given one more: 65 and 64 columns for a CNN's two
    checkpoints at n_components=64."""
    module, X = family_case("cnn_batchnorm", 20)
    states = [module.state_dict(), *perturbed_states(module, 1)]
    kern = NetworkSimilarityKernel(
        module, n_components=64, checkpoints=states, random_state=0
    ).fit(X.numpy())
    assert kern.features_fit_.shape[-1] == 2 * 64
    assert not np.allclose(*kern.sketch_weights_)  # other energies, one width


def test_checkpoints_sketches_are_joined_within_max_memory():
    """Each checkpoint's sketches were held beside their joined copy: twice
    what is kept (1.21 times max_memory with them at 0.6 of it)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    X = np.random.default_rng(1).normal(size=(4000, 4)).astype(np.float32)
    states = perturbed_states(net, 2)
    max_memory = int(4 * len(X) * 3 * 64 * 2 / 0.64)
    density = GradientDensityEstimator(
        net,
        method="hard",
        n_components=64,
        checkpoints=states,
        max_memory=max_memory,
        random_state=0,
    )
    clone(density).fit(X[:50])  # what a first call sets up once
    tracemalloc.start()
    density.fit(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert density.reference_features_.nbytes > 0.6 * max_memory
    assert peak < max_memory
