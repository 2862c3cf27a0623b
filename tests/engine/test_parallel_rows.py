"""split_rows and run_tiles: the row-chunk path of the joblib tiling helper."""

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
