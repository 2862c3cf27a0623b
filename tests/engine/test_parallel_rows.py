"""split_rows and run_tiles: the row-chunk path of the joblib tiling helper."""

import os
import subprocess
import sys

import numpy as np

from sksim._engine.parallel import run_tiles, split_rows


def _doubled_and_sums(Q):
    return 2 * Q[:, 0], Q.sum(axis=1, keepdims=True)


def test_split_rows_keeps_row_order_of_each_result():
    X = np.arange(46.0).reshape(23, 2)
    doubled, sums = split_rows(_doubled_and_sums, X, n_jobs=3)
    np.testing.assert_array_equal(doubled, 2 * X[:, 0])
    np.testing.assert_array_equal(sums, X.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(
        split_rows(np.cumsum, X[:, 0], n_jobs=2),
        [*np.cumsum(X[:11, 0]), *np.cumsum(X[11:, 0])],
    )


def test_split_rows_in_process_calls_the_function_once():
    calls = []

    def whole(Q):
        calls.append(len(Q))
        return Q

    np.testing.assert_array_equal(split_rows(whole, np.ones((7, 1)), n_jobs=None), 1)
    assert calls == [7]


def test_run_tiles_places_every_tile_once():
    placed = {}

    def place(where, value):
        assert where not in placed
        placed[where] = value

    tiles = [(0, 3), (3, 5), (5, 9)]
    run_tiles(np.arange, tiles, lambda t: t, place, n_jobs=2)
    assert {t: v.tolist() for t, v in placed.items()} == {
        (0, 3): [0, 1, 2],
        (3, 5): [3, 4],
        (5, 9): [5, 6, 7, 8],
    }


SCRIPT_MODULE = """
import numpy as np, torch
from skorch import NeuralNetClassifier
from sksim import GradientDensityEstimator, NetworkNeighbors


class ScriptNet(torch.nn.Module):  # defined in __main__, as in a user's script
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                        torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


if __name__ == "__main__":
    torch.manual_seed(0)
    X = np.random.RandomState(0).randn(80, 5).astype(np.float32)
    net = NeuralNetClassifier(ScriptNet, max_epochs=1, train_split=None, verbose=0)
    net.fit(X, np.arange(80) % 3)
    for make in (
        lambda n_jobs: GradientDensityEstimator(net, method="hard", n_jobs=n_jobs)
        .fit(X).neighbor_counts(X[:30]),
        lambda n_jobs: NetworkNeighbors(net, n_neighbors=3, n_jobs=n_jobs)
        .fit(X).kneighbors(X[:30])[1],
        lambda n_jobs: NetworkNeighbors(net, radius=0.5, n_jobs=n_jobs)
        .fit(X).radius_neighbors(X[:30])[1][7],
    ):
        np.testing.assert_array_equal(make(2), make(None))
    print("same")
"""


def test_workers_load_a_skorch_net_of_a_script_module(tmp_path):
    """skorch pickles its module by reference to its class: a class of the
    user's script could not be loaded in a worker process (BrokenProcessPool
    from density counts, neighbours, label issues and audits with n_jobs=2)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_MODULE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("same")
