"""An audit with a cache folder saves each finished piece and resumes from it."""

import os
import signal

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import small_net
from sklearn.base import clone
from skorch import NeuralNetClassifier
from torch.utils.data import TensorDataset

from sksim.audit import audit, cache, core
from sksim.audit.analyses.base import Analysis
from sksim.audit.analyses.denoising import Denoising
from sksim.audit.analyses.density import Density
from sksim.audit.models import MLP

ANALYSES = ("density", "denoising")
OPTIONS = dict(denoising=dict(max_samples=40))


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


@pytest.fixture
def calls(monkeypatch):
    """Counts of trainings and of runs per analysis, by fold."""
    counts = dict(fit=[], density=[], denoising=[])
    fit_net = core.fit_net

    def counted_fit(net, X, y, random_state):
        counts["fit"].append(len(X))
        return fit_net(net, X, y, random_state)

    monkeypatch.setattr(core, "fit_net", counted_fit)
    for cls in (Density, Denoising):
        monkeypatch.setattr(cls, "run", counted(cls.run, counts[cls.name]))
    return counts


def counted(run, log):
    def wrapper(self, fold):
        log.append(fold.fold)
        return run(self, fold)

    return wrapper


def run_audit(X, y, cache, cv=2, options=OPTIONS):
    return audit(
        small_net(X, max_epochs=1),
        X,
        y,
        cv=cv,
        analyses=ANALYSES,
        options=options,
        cache=cache,
    )


def assert_same_tables(result, expected):
    assert set(result.tables) == set(expected.tables)
    for name, table in expected.tables.items():
        if name == "folds":
            table = table.drop(columns="fit_seconds")
        if name == "summary":
            table = table[table["metric"] != "fit_seconds"]
        pd.testing.assert_frame_equal(
            result.tables[name].loc[table.index, table.columns], table
        )


def test_a_rerun_loads_every_piece(digit_images, calls, tmp_path):
    X, y = digit_images
    first = run_audit(X, y, tmp_path)
    assert calls == dict(fit=[120, 120], density=[0, 1], denoising=[0, 1])
    assert first.metadata["cache"] == dict(folder=str(tmp_path), loaded=0, saved=6)
    second = run_audit(X, y, tmp_path)
    assert calls == dict(fit=[120, 120], density=[0, 1], denoising=[0, 1])
    assert second.metadata["cache"]["loaded"] == 6
    assert_same_tables(second, first)
    pd.testing.assert_frame_equal(second["folds"], first["folds"])
    assert second.gallery == first.gallery == []


def test_a_changed_option_or_data_computes_again(digit_images, calls, tmp_path):
    X, y = digit_images
    run_audit(X, y, tmp_path)
    options = dict(OPTIONS, density=dict(threshold=0.8))
    changed = run_audit(X, y, tmp_path, options=options)
    # the folds' training and the denoising are reused, the density is not
    assert calls == dict(fit=[120] * 2, density=[0, 1] * 2, denoising=[0, 1])
    assert changed.metadata["cache"] == dict(folder=str(tmp_path), loaded=4, saved=2)
    fresh = audit(
        small_net(X, max_epochs=1), X, y, cv=2, analyses=ANALYSES, options=options
    )
    assert_same_tables(changed, fresh)
    n_fits, n_density = len(calls["fit"]), len(calls["density"])
    X2 = X.copy()
    X2[0, 0, 0, 0] += 0.5
    run_audit(X2, y, tmp_path)
    assert len(calls["fit"]) == n_fits + 2
    assert len(calls["density"]) == n_density + 2


def test_a_checkpoint_file_enters_by_its_content(digit_images, tmp_path):
    """A checkpoint given by path was hashed by its name: overwritten with other
    weights, the rerun loaded the first file's counts."""
    X, y = digit_images
    net = small_net(X, max_epochs=1).fit(X[:80], y[:80])
    path = tmp_path / "epoch.pt"
    options = dict(density=dict(method="soft", checkpoints=[str(path)]))

    def prefit_audit(cache=None):
        return audit(
            net,
            X[:80],
            y[:80],
            cv="prefit",
            X_test=X[80:],
            y_test=y[80:],
            analyses=("density",),
            options=options,
            cache=cache,
        )

    torch.manual_seed(1)
    torch.save(MLP(64, 10).state_dict(), path)
    first = prefit_audit(tmp_path / "cache")
    torch.manual_seed(2)
    torch.save(MLP(64, 10).state_dict(), path)  # the same name, other weights
    again = prefit_audit(tmp_path / "cache")
    assert again.metadata["cache"]["loaded"] == 0
    fresh = prefit_audit()
    np.testing.assert_array_equal(
        again["samples"]["log_density"], fresh["samples"]["log_density"]
    )
    assert not np.array_equal(
        again["samples"]["log_density"], first["samples"]["log_density"]
    )
    assert prefit_audit(tmp_path / "cache").metadata["cache"]["loaded"] == 1


def test_n_neighbors_and_layers_name_only_the_results_that_read_them(
    digit_images, calls, tmp_path, monkeypatch
):
    """Another n_neighbors or layers computed every analysis again, though only
    the neighbours read the one and class fitting the other."""
    X, y = digit_images
    analyses = ("density", "neighbors")

    def run(cache, **kwargs):
        net = small_net(X, max_epochs=1)
        return audit(net, X, y, cv=2, analyses=analyses, cache=cache, **kwargs)

    run(tmp_path, n_neighbors=3)
    changed = run(tmp_path, n_neighbors=4)
    assert calls["density"] == [0, 1]  # the folds' and density's loaded
    assert changed.metadata["cache"] == dict(folder=str(tmp_path), loaded=4, saved=2)
    assert changed["neighbors"].groupby("index").size().eq(4).all()
    layers = run(tmp_path, n_neighbors=4, layers=["hidden"])  # read by class fitting
    assert layers.metadata["cache"]["loaded"] == 6
    assert calls["density"] == [0, 1]
    assert_same_tables(changed, run(None, n_neighbors=4))
    # an analysis that does not say which it reads is named by both
    monkeypatch.setattr(Density, "audit_settings", Analysis.audit_settings)
    run(tmp_path, n_neighbors=4)
    run(tmp_path, n_neighbors=4, layers=["hidden"])
    assert calls["density"] == [0, 1] * 4


def test_an_interrupted_audit_resumes(digit_images, calls, tmp_path, monkeypatch):
    X, y = digit_images
    denoising = Denoising.run

    def interrupted_on_fold_1(self, fold):
        if fold.fold == 1:
            raise KeyboardInterrupt
        return denoising(self, fold)

    monkeypatch.setattr(Denoising, "run", interrupted_on_fold_1)
    with pytest.raises(KeyboardInterrupt):
        run_audit(X, y, tmp_path, cv=3)
    assert calls["fit"] == [160, 160] and calls["density"] == [0, 1]
    monkeypatch.setattr(Denoising, "run", denoising)
    resumed = run_audit(X, y, tmp_path, cv=3)
    # fold 0 entirely and fold 1's training and density come from the cache
    assert calls["fit"] == [160, 160, 160]
    assert calls["density"] == [0, 1, 2]
    assert calls["denoising"] == [0, 1, 2]
    assert resumed.metadata["cache"]["loaded"] == 5
    expected = audit(
        small_net(X, max_epochs=1), X, y, cv=3, analyses=ANALYSES, options=OPTIONS
    )
    assert_same_tables(resumed, expected)


def test_a_damaged_piece_is_computed_again(digit_images, calls, tmp_path):
    X, y = digit_images
    first = run_audit(X, y, tmp_path)
    pieces = sorted(tmp_path.glob("*.pkl"))
    assert len(pieces) == 6
    for piece in pieces:
        piece.write_bytes(piece.read_bytes()[:20])
    second = run_audit(X, y, tmp_path)
    assert len(calls["fit"]) == 4 and second.metadata["cache"]["loaded"] == 0
    assert_same_tables(second, first)
    assert np.all([p.stat().st_size > 20 for p in tmp_path.glob("*.pkl")])


def test_a_net_around_a_module_instance_resumes_by_its_weights(
    digit_images, calls, tmp_path
):
    """Pickled, a tensor names its storage by address: the net's hash reads
    the weights instead, so equal instances resume and others do not."""
    X, y = digit_images

    def run(seed):
        torch.manual_seed(seed)
        module = MLP(n_features=64, n_classes=10)
        net = NeuralNetClassifier(
            module, criterion=torch.nn.CrossEntropyLoss, max_epochs=1, verbose=0
        )
        return audit(
            net, X, y, cv=2, analyses=ANALYSES, options=OPTIONS, cache=tmp_path
        )

    first = run(0)
    assert run(0).metadata["cache"]["loaded"] == first.metadata["cache"]["saved"] == 6
    assert run(1).metadata["cache"]["loaded"] == 0


def test_a_cache_that_is_a_file_is_refused(digit_images, tmp_path):
    X, y = digit_images
    (tmp_path / "afile").write_text("")
    with pytest.raises(
        ValueError, match=r"cache \(cache=, --cache\) is a folder .* is a file"
    ):
        run_audit(X, y, tmp_path / "afile")


def test_arguments_that_do_not_pickle_fail_before_training(
    digit_images, calls, tmp_path
):
    """A lambda in options failed after the first fold, in 4,600 characters."""
    X, y = digit_images
    options = dict(density=dict(output=lambda out: out[:, :3]))
    with pytest.raises(TypeError, match="cache= names its files by a hash of the au"):
        run_audit(X, y, tmp_path, options=options)
    assert calls["fit"] == [] and not list(tmp_path.iterdir())


def test_a_folder_that_cannot_be_written_warns_and_the_audit_goes_on(
    digit_images, tmp_path, monkeypatch
):
    X, y = digit_images

    def full(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "open", full, raising=False)  # as root writes anyway
    with pytest.warns(UserWarning, match=r"Could not save .* \(\[Errno 13\] Perm"):
        result = run_audit(X, y, tmp_path)
    assert result.metadata["cache"]["saved"] == 0
    assert not list(tmp_path.iterdir())


def test_pieces_are_created_as_any_file_is(digit_images, tmp_path):
    """The umask sets their mode: a folder shared with others stays readable."""
    X, y = digit_images
    umask = os.umask(0o022)
    try:
        result = run_audit(X, y, tmp_path)
    finally:
        os.umask(umask)
    assert result.metadata["cache"]["saved"] > 0
    pieces = list(tmp_path.iterdir())
    assert {piece.suffix for piece in pieces} == {".pkl"}  # no temporary left
    assert {piece.stat().st_mode & 0o777 for piece in pieces} == {0o644}


def test_a_datasets_dtype_enters_its_fingerprint():
    """Read as float64, float32 and float64 items of equal values hashed alike."""
    values = torch.arange(12.0).reshape(6, 2)
    single, double = (
        TensorDataset(values.to(dtype)) for dtype in (torch.float32, torch.float64)
    )
    assert cache.dataset_fingerprint(single) != cache.dataset_fingerprint(double)
    again = TensorDataset(values.clone())
    assert cache.dataset_fingerprint(single) == cache.dataset_fingerprint(again)


def test_the_scale_threshold_named_by_a_loaded_method_is_the_runs(tmp_path):
    """Loaded past the threshold, the method named the first run's threshold."""
    for threshold in (100, 120):
        result = _audit_helpers.prefit_audit(
            ("density",), threshold, _audit_helpers.AUDIT_OPTIONS, cache=tmp_path
        )
    assert result.metadata["methods"]["density"].endswith("> scale_threshold 120")


class _CtrlCAt(torch.nn.Module):
    """A module that sends itself a Ctrl-C at its ``at``-th training batch."""

    def __init__(self, module, at):
        super().__init__()
        self.module, self.at, self.calls = module, at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                signal.raise_signal(signal.SIGINT)
        return self.module(x)


def test_a_ctrl_c_while_a_fold_trains_stops_the_audit_and_caches_no_fold(
    digit_images, tmp_path
):
    """skorch's fit ends its loop on a Ctrl-C and returns the net trained so
    far: the audit went on with it, cached it as fold 0's trained net, and the
    rerun's fold 0 had an accuracy of 0.48 for 0.77."""
    X, y = digit_images
    net = small_net(X, max_epochs=3)
    params = {k: v for k, v in net.get_params(deep=False).items() if "__" not in k}
    params["module"] = _CtrlCAt(clone(net).initialize().module_, at=3)
    with pytest.raises(KeyboardInterrupt):
        audit(
            NeuralNetClassifier(**params),
            X,
            y,
            cv=2,
            analyses=("density",),
            cache=tmp_path,
        )
    resumed = audit(net, X, y, cv=2, analyses=("density",), cache=tmp_path)
    fresh = audit(net, X, y, cv=2, analyses=("density",))
    assert_same_tables(resumed, fresh)


def test_partial_writes_of_a_killed_process_are_removed_when_the_piece_is_saved(
    tmp_path,
):
    """A process killed while it wrote left its {key}.{uuid}.tmp for good."""
    data = (np.zeros((2, 1), dtype=np.float32), np.arange(2))
    store = cache.AuditCache(tmp_path, data, torch.nn.Linear(1, 2), 0, prefit=True)
    stale, fresh, other = (
        tmp_path / name for name in ("k.dead.tmp", "k.writing.tmp", "j.dead.tmp")
    )
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    hours_ago = os.path.getmtime(fresh) - 2 * cache.STALE_SECONDS
    for path in (stale, other):
        os.utime(path, (hours_ago, hours_ago))
    store.save("k", [1, 2], "a piece")
    assert store.load("k") == [1, 2]
    assert not stale.exists()
    assert fresh.exists() and other.exists()  # another write, another piece
