"""The audit of a torch Dataset equals the audit of the same arrays."""

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import small_net
from _audit_helpers import AUDIT_OPTIONS, digit_images, prefit_net, prefit_split
from torch.utils.data import Dataset, TensorDataset

from sksim.audit import audit
from sksim.audit.analyses.neighbors import DatasetImages, image_view
from sksim.sensitivity import relative_sensitivity

OPTIONS = {**AUDIT_OPTIONS, "denoising": dict(max_samples=40)}


class Inputs(Dataset):
    """Items ``x`` alone (no labels), counting the reads of each item."""

    def __init__(self, X):
        self.X, self.reads = X, np.zeros(len(X), dtype=int)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        self.reads[i] += 1
        return torch.from_numpy(self.X[i])


def pairs(X, y):
    return TensorDataset(torch.from_numpy(X), torch.from_numpy(y))


def assert_same_audit(a, b):
    """Equal tables (timings aside), methods, galleries and examples."""
    assert sorted(a.tables) == sorted(b.tables)
    assert a.failed == b.failed == {} and a.skipped == b.skipped
    for name, table in a.tables.items():
        other = b.tables[name]
        if name == "summary":  # the timings of training differ
            table, other = (t[t["metric"] != "fit_seconds"] for t in (table, other))
        timing = [c for c in table.columns if c.endswith("seconds")]
        pd.testing.assert_frame_equal(
            table.drop(columns=timing), other.drop(columns=timing)
        )
    assert a.metadata["methods"] == b.metadata["methods"]
    assert a.metadata["input_shape"] == b.metadata["input_shape"]
    for shown, again in [(a.gallery, b.gallery), (a.examples, b.examples)]:
        assert len(shown) == len(again) > 0
        for item, other in zip(shown, again, strict=True):
            assert item.keys() == other.keys()
            for key, value in item.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, other[key])
                else:
                    assert value == other[key] or (
                        value != value and other[key] != other[key]
                    )


@pytest.mark.parametrize("scale_threshold", [None, 50], ids=["exact", "scaled"])
def test_a_dataset_of_pairs_is_audited_as_its_arrays(scale_threshold):
    X, y = digit_images()
    X, y = X[:160], y[:160]
    net = small_net(X, max_epochs=2)
    common = dict(
        cv=2, options=OPTIONS, random_state=0, scale_threshold=scale_threshold
    )
    arrays = audit(net, X, y, **common)
    dataset = audit(net, pairs(X, y), **common)  # the labels of the items
    assert_same_audit(arrays, dataset)
    assert "sensitivity" in dataset.tables


def assert_same_tables(a, b):
    """Equal tables, timings aside."""
    assert sorted(a.tables) == sorted(b.tables) and a.failed == b.failed == {}
    for name, table in a.tables.items():
        other = b.tables[name]
        if name == "summary":
            table, other = (t[t["metric"] != "fit_seconds"] for t in (table, other))
        timing = [c for c in table.columns if c.endswith("seconds")]
        pd.testing.assert_frame_equal(
            table.drop(columns=timing), other.drop(columns=timing)
        )


@pytest.mark.parametrize("prefit", [False, True])
def test_a_dict_of_arrays_is_audited_as_its_arrays(prefit, tmp_path):
    """The network's keyword inputs, as skorch passes them (the audit refused them)."""
    X, y = digit_images()
    X, y = X[:160], y[:160]
    net = small_net(X, max_epochs=2)
    analyses = ("density", "neighbors", "label_issues", "class_fitting")
    split = dict(cv=2)
    if prefit:
        net.fit(X[:100], y[:100])
        split = dict(cv="prefit", X_test=X[100:], y_test=y[100:])
        X, y = X[:100], y[:100]
    arrays = audit(net, X, y, analyses=analyses, options=OPTIONS, **split)
    if prefit:
        split["X_test"] = {"X": split["X_test"]}
    keywords = audit(
        net, {"X": X}, y, analyses=(*analyses, "sensitivity"), options=OPTIONS, **split
    )
    assert_same_tables(arrays, keywords)
    assert keywords.metadata["input_shape"] == {"X": [1, 8, 8]}
    report = keywords.to_html(tmp_path / "report.html").read_text()
    assert ">X [1, 8, 8]</td>" in report
    shapes = f"these are a dict of inputs of shapes X ({len(X)}, 1, 8, 8)."
    assert keywords.skipped["sensitivity"].endswith(shapes)


def test_a_prefit_audit_of_datasets_with_given_targets():
    X_train, y_train, X_test, y_test = prefit_split()
    common = dict(cv="prefit", options=OPTIONS, random_state=0)
    arrays = audit(
        prefit_net(), X_train, y_train, X_test=X_test, y_test=y_test, **common
    )
    train, test = Inputs(X_train), Inputs(X_test)
    dataset = audit(prefit_net(), train, y_train, X_test=test, y_test=y_test, **common)
    assert_same_audit(arrays, dataset)
    assert train.reads.min() >= 1 and test.reads.min() >= 1


def test_labels_held_as_columns_are_audited_as_one_per_sample():
    """Items ``(x, tensor([y]))``, or arrays ``y[:, None]``."""
    X_train, y_train, X_test, y_test = prefit_split()
    common = dict(cv="prefit", options=OPTIONS, random_state=0)
    arrays = audit(
        prefit_net(), X_train, y_train, X_test=X_test, y_test=y_test, **common
    )
    columns = audit(
        prefit_net(),
        X_train,
        y_train[:, None],
        X_test=X_test,
        y_test=y_test[:, None],
        **common,
    )
    assert_same_audit(arrays, columns)
    in_items = audit(
        prefit_net(), pairs(X_train, y_train[:, None]),
        X_test=pairs(X_test, y_test[:, None]), **common,
    )  # fmt: skip
    assert_same_audit(arrays, in_items)


def test_tabular_datasets_show_their_atypical_features():
    rng = np.random.RandomState(0)
    X = (rng.standard_normal((120, 5)) * [1, 2, 3, 4, 500] + 1000).astype(np.float32)
    y = (X[:, 0] > 1000).astype(np.int64)
    net = small_net(X, max_epochs=2)
    common = dict(cv=2, analyses=("density", "neighbors"), random_state=0)
    arrays = audit(net, X, y, **common)
    dataset = audit(net, pairs(X, y), **common)
    assert image_view(pairs(X, y)) is None
    assert all(item["features"] for item in dataset.examples)
    assert_same_audit(arrays, dataset)


def test_dataset_images_are_read_for_the_rows_asked_for_only():
    X, _ = digit_images()
    items = Inputs(X)
    images = image_view(items)
    assert isinstance(images, DatasetImages)
    np.testing.assert_array_equal(images[np.array([3, 7])], X[[3, 7], 0])
    np.testing.assert_array_equal(images[5], X[5, 0])
    assert items.reads.sum() == 4  # item 0 for the shape, then 3, 7 and 5
    assert image_view(Inputs(X.reshape(len(X), -1)[:, :60])) is None


def test_sensitivity_reads_only_the_probe_of_a_dataset():
    X, _ = digit_images()
    items = Inputs(X)
    common = dict(n_probe=30, n_init=1, random_state=0)
    expected = relative_sensitivity(prefit_net(), X, **common)
    found = relative_sensitivity(prefit_net(), items, **common)
    pd.testing.assert_frame_equal(pd.DataFrame(found), pd.DataFrame(expected))
    assert (items.reads > 0).sum() == 30


def test_a_dataset_without_labels_needs_y():
    X, y = digit_images()
    with pytest.raises(ValueError, match="y is required: pass the targets of X"):
        audit(small_net(X), Inputs(X), cv=2, analyses=("density",))
    with pytest.raises(ValueError, match="X has 240 samples but y has 10"):
        audit(small_net(X), Inputs(X), y[:10], cv=2, analyses=("density",))


def test_a_dataset_audit_is_cached(tmp_path):
    X, y = digit_images()
    common = dict(cv=2, analyses=("density", "neighbors"), cache=tmp_path)
    first = audit(small_net(X, max_epochs=2), pairs(X, y), **common)
    again = audit(small_net(X, max_epochs=2), pairs(X, y), **common)
    assert first.metadata["cache"]["saved"] == 6  # two folds, two analyses each
    assert again.metadata["cache"]["loaded"] == 6
    pd.testing.assert_frame_equal(first["neighbors"], again["neighbors"])


def test_a_dataset_is_cached_by_its_content(tmp_path):
    X, y = digit_images()
    common = dict(cv=2, analyses=("density",), cache=tmp_path)
    audit(small_net(X, max_epochs=2), Inputs(X), y, **common)
    again = audit(small_net(X, max_epochs=2), pairs(X, y), **common)
    assert again.metadata["cache"]["loaded"] == 4  # the same inputs and labels
    changed = X.copy()
    changed[-1, 0, 0, 0] += 1
    other = audit(small_net(X, max_epochs=2), pairs(changed, y), **common)
    assert other.metadata["cache"]["loaded"] == 0


def test_a_float64_dataset_is_audited_as_its_float32_arrays():
    """A prefit skorch net's predict_proba took a float64 dataset as it was
    (a float32 module failed on it), while float64 arrays were cast."""
    X_train, y_train, X_test, y_test = prefit_split()
    common = dict(
        cv="prefit",
        analyses=("density", "label_issues"),
        options=AUDIT_OPTIONS,
        random_state=0,
    )
    arrays = audit(
        prefit_net(), X_train, y_train, X_test=X_test, y_test=y_test, **common
    )
    train = pairs(X_train.astype(np.float64), y_train)
    test = pairs(X_test.astype(np.float64), y_test)
    dataset = audit(prefit_net(), train, X_test=test, **common)
    assert_same_tables(arrays, dataset)
