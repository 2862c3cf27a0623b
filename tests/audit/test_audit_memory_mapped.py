"""Inputs in a memory-mapped file are audited without copying a fold into memory."""

import tracemalloc

import numpy as np
import pytest
from _architectures import small_net
from sklearn.datasets import make_classification

from sksim import LabelIssueDetector
from sksim._engine.inputs import lazy_rows
from sksim.audit import _examples, audit

N, D = 1200, 5000  # 24 MB of float32 inputs: a fold's copy is 12 MB


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    X, y = make_classification(N, D, n_informative=20, n_classes=3, random_state=0)
    path = tmp_path_factory.mktemp("mapped") / "X.npy"
    np.save(path, X.astype(np.float32))
    return np.load(path, mmap_mode="r"), y


def traced_peak(call):
    """``call()``'s result and the most memory Python allocated during it, in MB."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def without_times(table):
    """``table`` without its columns, or summary rows, of seconds."""
    table = table.drop(columns=[c for c in table if "seconds" in c])
    if "metric" in table:
        table = table[~table["metric"].str.contains("seconds")]
    return table


def test_the_audit_reads_a_mapped_file_batch_by_batch(mapped, monkeypatch):
    """Each fold's rows were copied: 24 MB allocated for a 24 MB file."""
    X, y = mapped
    monkeypatch.setattr(_examples, "READ_BYTES", 2**20)  # the features' statistics

    def run(inputs):
        net = small_net(X, max_epochs=1, module__n_hidden=8)
        density = dict(batch_size=64)  # the engine's batches, not a fold's copy
        return audit(
            net, inputs, y, cv=2, analyses=("density",), options=dict(density=density)
        )

    in_memory = run(np.array(X))  # first: what the first run imports is not traced
    result, peak = traced_peak(lambda: run(X))
    assert peak < 8, f"{peak:.1f} MB allocated for {X.nbytes / 1e6:.0f} MB of inputs"
    for name, table in result.tables.items():
        np.testing.assert_equal(
            without_times(table).to_dict("list"),
            without_times(in_memory.tables[name]).to_dict("list"),
            err_msg=name,
        )


def test_label_issues_cross_validate_a_mapped_file_batch_by_batch(mapped):
    X, y = mapped

    def run(inputs):
        net = small_net(X, max_epochs=1, module__n_hidden=8)
        # too little room to keep a fold's gradients, which are no copy of X
        detector = LabelIssueDetector(
            net, cv=2, n_neighbors=3, max_memory=2**22, random_state=0
        )
        return detector.fit(inputs, y).scores_

    in_memory = run(np.array(X))
    scores, peak = traced_peak(lambda: run(X))
    assert peak < 8, f"{peak:.1f} MB allocated for {X.nbytes / 1e6:.0f} MB of inputs"
    np.testing.assert_allclose(scores, in_memory, rtol=1e-6)


@pytest.mark.parametrize("where", ["file", "memory"])
def test_a_prefit_audit_copies_none_of_its_inputs(mapped, monkeypatch, where):
    """All training rows in order were taken as a copy of the training set."""
    X, y = mapped
    X = X if where == "file" else np.array(X)
    monkeypatch.setattr(_examples, "READ_BYTES", 2**20)
    net = small_net(X, max_epochs=1, module__n_hidden=8).fit(X[:100], y[:100])

    def run():
        return audit(net, X, y, cv="prefit", X_test=X, y_test=y, analyses=())

    run()  # first: what the first run imports is not traced
    result, peak = traced_peak(run)
    assert peak < 8, f"{peak:.1f} MB allocated for {X.nbytes / 1e6:.0f} MB of inputs"
    assert result["folds"]["accuracy"].item() == net.score(X, y)


def test_rows_read_from_a_read_only_file_are_writable_copies(mapped):
    """torch warned that it cannot write them (a network working in place)."""
    X, _ = mapped
    rows = lazy_rows(X)
    assert not X.flags.writeable
    assert rows[3].flags.writeable and rows.__getitems__([1, 2])[0].flags.writeable
    np.testing.assert_array_equal(rows[3], X[3])
