"""Tiled kernels: joblib workers, a real dask.distributed cluster, a lost worker."""

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from _architectures import MLP
from joblib import parallel_config

from sksim import (
    GradientDensityEstimator,
    NetworkNeighbors,
    SingularJacobianGramWarning,
    network_similarity,
)
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.parallel import run_tiles, tiled_kernel

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _tile_workers(stream) -> set[str]:
    """Workers that ran at least one tile, from a dask task stream."""
    return {task["worker"] for task in stream.data if "_tile" in str(task["key"])}


@pytest.mark.parametrize("reduce", ["trace", None])
def test_tiles_written_as_they_come_equal_the_serial_kernel(reduce):
    torch.manual_seed(0)
    module = MLP()
    X = np.random.RandomState(0).randn(23, 5).astype(np.float32)
    full = reduce is None
    expected = network_similarity(module, X, reduce=reduce)
    engine = JacobianEngine(module, batch_size=4)
    tiled = tiled_kernel(engine, X, full=full, n_jobs=2, tile=5)
    np.testing.assert_allclose(tiled, expected, rtol=1e-5, atol=1e-6)
    swap = (1, 0, 3, 2) if full else (1, 0)
    assert np.array_equal(tiled, tiled.transpose(swap))
    rect = tiled_kernel(engine, X[:9], X[4:], full=full, n_jobs=2, tile=4)
    np.testing.assert_allclose(rect, expected[:9, 4:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "influence"])
def test_tiles_of_floored_grams_keep_the_exact_diagonal_and_its_bound(kind):
    """Softmax outputs floor one eigenvalue of every Gram (self-similarity 0.8
    for 5 classes). Influence tiles on the diagonal were computed as
    rectangles (their diagonal 1e-3 off), and the cosines of duplicates in
    other tiles passed Cauchy-Schwarz."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5)
    )
    X = np.random.RandomState(0).randn(30, 4).astype(np.float32)
    X = np.concatenate([X, X[:10]])  # duplicates 30 rows, so three tiles, away
    engine = JacobianEngine(net, output=lambda z: z.softmax(-1), batch_size=4)
    with pytest.warns(SingularJacobianGramWarning):
        K = tiled_kernel(engine, X, kind=kind, n_jobs=2, tile=10)
        expected = network_similarity(net, X, kind=kind, output=lambda z: z.softmax(-1))
    np.testing.assert_allclose(np.diag(K), 0.8, rtol=1e-9)
    # the influence of float32 Grams this singular is float32's limit, 5e-4 off
    atol = 1e-5 if kind == "cosine" else 1e-3
    np.testing.assert_allclose(K, expected, rtol=1e-4, atol=atol)
    if kind == "cosine":
        bound = np.sqrt(np.outer(np.diag(K), np.diag(K)))
        assert (np.abs(K) <= bound * (1 + 1e-12)).all()
        assert (K[np.arange(10), np.arange(30, 40)] <= np.diag(K)[:10] + 1e-9).all()


def test_a_kernel_too_large_to_allocate_fails_before_any_tile():
    torch.manual_seed(0)
    # 10^7 samples as a view of one row: 728 TiB of kernel (6.5 PiB of blocks),
    # more than any address space, refused before a single tile
    X = np.broadcast_to(np.zeros((1, 5), np.float32), (10**7, 5))
    engine = JacobianEngine(MLP(), batch_size=4)
    with pytest.raises(
        MemoryError,
        match=r"The kernel of shape \(10000000, 10000000\) takes 7.45e\+05 GiB "
        r"of float64, which cannot be allocated: pass fewer samples \(X, Y\)\.$",
    ):
        tiled_kernel(engine, X, n_jobs=2)
    with pytest.raises(
        MemoryError,
        match=r"shape \(10000000, 10000000, 3, 3\) takes 6.71e\+06 GiB of float64, "
        r"which cannot be allocated: pass fewer samples \(X, Y\), "
        r"reduce='trace' rather than \(d, d\) blocks, or fewer outputs\.$",
    ):
        tiled_kernel(engine, X, full=True, n_jobs=2)


def test_dask_cluster_spreads_tiles_over_both_workers(client):
    torch.manual_seed(0)
    module = MLP()
    X = np.random.RandomState(1).randn(200, 5).astype(np.float32)
    engine = JacobianEngine(module, batch_size=50)
    with parallel_config(backend="dask"), distributed.get_task_stream(client) as ts:
        remote = tiled_kernel(engine, X, n_jobs=2, tile=50)  # 10 tiles
    assert _tile_workers(ts) == set(client.scheduler_info()["workers"])
    assert len(_tile_workers(ts)) == 2
    np.testing.assert_array_equal(remote, tiled_kernel(engine, X, n_jobs=1, tile=50))
    np.testing.assert_allclose(remote, network_similarity(module, X), atol=1e-6)


def _kill_a_busy_worker(client, pids: dict, killed: list, done: threading.Event):
    """SIGKILL the process of the first worker seen computing a tile."""
    while not done.wait(0.01):
        for address, keys in client.processing().items():
            if any("_tile" in str(key) for key in keys) and address in pids:
                os.kill(pids[address], signal.SIGKILL)
                killed.append(address)
                return


def test_tiles_lost_with_a_killed_worker_are_computed_again(client):
    torch.manual_seed(0)
    module = MLP(n_hidden=64)
    X = np.random.RandomState(2).randn(300, 5).astype(np.float32)
    engine = JacobianEngine(module, batch_size=50)
    pids = client.run(os.getpid)
    killed, done = [], threading.Event()
    killer = threading.Thread(
        target=_kill_a_busy_worker, args=(client, pids, killed, done)
    )
    with parallel_config(backend="dask"):
        killer.start()
        try:
            remote = tiled_kernel(engine, X, n_jobs=2, tile=75)
        finally:
            done.set()
            killer.join()
    assert len(killed) == 1
    np.testing.assert_array_equal(remote, tiled_kernel(engine, X, n_jobs=1, tile=75))
    np.testing.assert_allclose(remote, network_similarity(module, X), atol=1e-6)


class UnpicklableWarning(UserWarning):
    """A warning whose instance does not pickle (it holds a generator)."""

    def __init__(self, text):
        super().__init__(text)
        self.pending = (i for i in range(3))


def _warning_identity(x):
    warnings.warn(UnpicklableWarning(f"tile {x}"), stacklevel=1)
    return x


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_warnings_of_the_tiles_reach_the_caller(n_jobs):
    """From worker processes too, even when the warning itself does not pickle."""
    placed = {}
    with pytest.warns(UnpicklableWarning) as caught:
        run_tiles(_warning_identity, [1, 2], lambda t: (t,), placed.__setitem__, n_jobs)
    assert placed == {1: 1, 2: 2}
    assert sorted(str(w.message) for w in caught) == ["tile 1", "tile 2"]


def _same_warning_identity(x):
    warnings.warn("each tile plans the network again", UserWarning, stacklevel=1)
    return x


def test_a_warning_that_every_tile_raises_reaches_the_caller_once():
    """Recorded as they all are (pytest.warns, the audit), it came once per tile."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_tiles(_same_warning_identity, [1, 2, 3], lambda t: (t,), {}.__setitem__, 2)
    assert [str(w.message) for w in caught] == ["each tile plans the network again"]


def _slow_warning_identity(x):
    for step in range(20):
        warnings.warn(f"tile {x}, step {step}", stacklevel=1)
        time.sleep(0.001)  # the threads interleave
    return x


def test_warnings_of_threads_reach_the_caller_and_leave_its_filters():
    """Tiles in joblib's threads share the process's warning machinery."""
    tiles = list(range(8))
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with parallel_config(backend="threading"):
            run_tiles(
                _slow_warning_identity, tiles, lambda t: (t,), dict().__setitem__, 4
            )
    assert sorted(str(w.message) for w in caught) == sorted(
        f"tile {x}, step {step}" for x in tiles for step in range(20)
    )
    assert warnings.filters == filters


def test_threads_sharing_a_network_take_turns():
    """joblib's threading backend: tiles and chunks share one network, whose
    passes change its modes and hooks; the results equal the serial ones."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    )
    module(torch.randn(32, 5))  # running statistics; left in train mode
    X = np.random.RandomState(0).randn(300, 5).astype(np.float32)
    engine = JacobianEngine(module, batch_size=16)

    def results(n_jobs):
        density = GradientDensityEstimator(module, batch_size=16, n_jobs=n_jobs)
        search = NetworkNeighbors(module, n_neighbors=3, batch_size=16, n_jobs=n_jobs)
        return [
            tiled_kernel(engine, X[:100], X[100:], n_jobs=n_jobs, tile=20),
            density.fit(X).neighbor_counts(X[:120]),
            search.fit(X).kneighbors(X[:120])[1],
        ]

    expected = results(None)
    with parallel_config(backend="threading"):
        got = results(4)
    for value, serial in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, serial, rtol=1e-5)
    assert all(sub.training for sub in module.modules())


def test_threads_on_networks_sharing_a_module_take_turns():
    """Two heads on one backbone (BatchNorm, Dropout, left in train mode), their
    kernels computed in two threads at once: each network's lock let both
    passes change the backbone's modes and swap its parameters, giving wrong
    kernels and leaving the backbone in eval mode or its parameters replaced."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Linear(5, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Tanh(),
        torch.nn.Dropout(0.5),
    )
    backbone(torch.randn(32, 5))  # running statistics
    heads = [
        torch.nn.Sequential(backbone, torch.nn.Linear(16, d)).train() for d in (4, 3)
    ]
    parameters = [list(head.parameters()) for head in heads]
    X = np.random.RandomState(0).randn(64, 5).astype(np.float32)
    expected = [network_similarity(head, X, batch_size=8) for head in heads]
    got = {0: [], 1: []}

    def work(i):
        for _ in range(8):
            got[i].append(network_similarity(heads[i], X, batch_size=8))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in (0, 1):
        assert len(got[i]) == 8
        for K in got[i]:
            np.testing.assert_allclose(K, expected[i], rtol=1e-5, atol=1e-6)
    assert all(sub.training for head in heads for sub in head.modules())
    for head, before in zip(heads, parameters, strict=True):
        assert all(p is q for p, q in zip(head.parameters(), before, strict=True))


def test_a_network_that_does_not_pickle_is_kept_out_of_worker_processes():
    """joblib's "Could not pickle the task" hid torch's reason."""
    torch.manual_seed(0)
    linear = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 3))
    net = torch.nn.Sequential(linear)
    with pytest.raises(TypeError, match=r"n_jobs=2 sends .*parametrized modules"):
        network_similarity(net, torch.randn(6, 4), n_jobs=2)


class _Locked(torch.nn.Module):
    """A module holding a lock, which does not pickle."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.lock = threading.Lock()

    def forward(self, x):
        return self.linear(x)


def test_a_network_that_does_not_pickle_is_refused_under_dask(client):
    """dask dropped the pickling error of the tiles, which were awaited for ever."""
    torch.manual_seed(0)
    with (
        parallel_config(backend="dask"),
        pytest.raises(
            TypeError, match=r"n_jobs=2 sends .*cannot pickle '_thread.lock'"
        ),
    ):
        network_similarity(_Locked(), torch.randn(6, 4), n_jobs=2)
    # arrays past 64 KiB reach the pickler's file as buffers: they pickle
    X = np.random.RandomState(0).randn(300, 64).astype(np.float32)
    net = torch.nn.Linear(64, 3)
    with parallel_config(backend="dask"):
        K = network_similarity(net, X, n_jobs=2)
    np.testing.assert_array_equal(K, network_similarity(net, X))
