"""DiffeoTransform and DiffeoSensitivity as scikit-learn estimators."""

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from _architectures import pooled_cnn, signal_conv
from _sklearn_checks import EXPECTED_FAILED_CHECKS, ORDER_DEPENDENT_CHECKS
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from torch import nn

from sksim.sensitivity import (
    DiffeoSensitivity,
    DiffeoTransform,
    apply_diffeo,
    relative_sensitivity,
    sample_diffeo,
)


@parametrize_with_checks(
    [
        DiffeoTransform(random_state=0),
        DiffeoSensitivity(signal_conv(), n_init=2, random_state=0),
    ],
    expected_failed_checks=lambda est: (
        ORDER_DEPENDENT_CHECKS
        if isinstance(est, DiffeoTransform)
        else EXPECTED_FAILED_CHECKS
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_transform_matches_sample_and_apply():
    X = np.random.RandomState(0).rand(5, 2, 8, 8)
    Xt = DiffeoTransform(
        delta=1.5, cutoff=4, interp="nearest", random_state=3
    ).fit_transform(X)
    dx, dy = sample_diffeo(8, 4, delta=1.5, n_fields=5, random_state=3)
    np.testing.assert_array_equal(Xt, apply_diffeo(X, dx, dy, "nearest"))
    # (n, H, W) images and float32 tensors
    t = torch.tensor(X[:, 0], dtype=torch.float32)
    tt = DiffeoTransform(random_state=0).fit(t).transform(t)
    assert isinstance(tt, torch.Tensor) and tt.dtype == torch.float32
    # an int seed repeats, None draws fresh fields
    aug = DiffeoTransform(random_state=None).fit(X)
    assert not np.allclose(aug.transform(X), aug.transform(X))


def test_transform_in_a_pipeline_and_as_augmentation():
    rng = np.random.RandomState(0)
    X = rng.rand(60, 6, 6)  # (n, H, W) images
    y = (X[:, :3].sum((1, 2)) > X[:, 3:].sum((1, 2))).astype(int)

    class Flat(DiffeoTransform):
        def transform(self, X):
            return super().transform(X).reshape(len(X), -1)

    pipe = make_pipeline(Flat(random_state=0), LogisticRegression()).fit(X, y)
    assert pipe.score(X, y) > 0.8
    aug = DiffeoTransform(random_state=np.random.RandomState(0)).fit(X[:1])

    def collate(batch):
        xb, yb = torch.utils.data.default_collate(batch)
        return aug.transform(xb), yb

    module = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    net = NeuralNetClassifier(
        module,
        max_epochs=2,
        train_split=None,
        verbose=0,
        iterator_train__collate_fn=collate,
    )
    net.fit(X.astype(np.float32), y)
    assert len(net.history) == 2


def test_transform_errors():
    with pytest.raises(ValueError, match="interp must be one of"):
        DiffeoTransform(interp="cubic").fit(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="Images must be square"):
        DiffeoTransform().fit(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="needs cutoff >= 2"):  # raised by transform
        DiffeoTransform(cutoff=1).fit(np.zeros((2, 4, 4)))
    DiffeoTransform(cutoff=1).fit(np.zeros((2, 4)))  # signals take it
    t = DiffeoTransform().fit(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="X has 5 features, but DiffeoTransform"):
        t.transform(torch.zeros(2, 5, 5))
    # another layout of as many "features" was deformed as if it were the same
    images = DiffeoTransform().fit(np.zeros((2, 8, 8, 8)))  # 8 channels
    signals = DiffeoTransform().fit(np.zeros((2, 8)))
    for fitted, X in [(images, np.zeros((2, 8, 8))), (signals, np.zeros((2, 8, 4, 4)))]:
        with pytest.raises(ValueError, match="transform inputs of the same layout"):
            fitted.transform(X)
    with pytest.raises(ValueError, match="delta must be a finite non-negative"):
        DiffeoTransform(delta=np.inf).fit(np.zeros((2, 4, 4)))


def test_estimator_trains_an_unfitted_skorch_net_and_cross_validates():
    from sksim.datasets import make_scale_detection

    X, y = make_scale_detection(96, size=8, xi=4, random_state=0)
    module = pooled_cnn()
    net = NeuralNetClassifier(module, max_epochs=2, train_split=None, verbose=0)
    est = DiffeoSensitivity(
        net, layers="all", n_init=2, shuffled=True, random_state=0
    ).fit(X, y)
    assert est.net_ is not net and est.net_.initialized_
    expected = relative_sensitivity(
        est.net_, X, layers="all", n_init=2, shuffled=True, random_state=0
    )
    np.testing.assert_allclose(est.results_["R"], expected["R"], rtol=1e-12)
    trained = est.results_.query("net == 'trained' and layer == 'output'")
    assert est.score(X) == pytest.approx(-float(trained["R"].iloc[0]), rel=1e-12)
    # another image size: taken by a pooling network, explained for another
    assert np.isfinite(est.score(np.random.RandomState(0).rand(8, 1, 6, 6)))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    fixed = DiffeoSensitivity(flat, reference=None, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"failed on samples of shape \(1, 6, 6\)"):
        fixed.score(np.zeros((4, 1, 6, 6), np.float32))

    def out_of_memory(module, args):  # a GPU's on the larger images
        if args[0].shape[-1] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (emulated)")

    pooled = DiffeoSensitivity(pooled_cnn(), reference=None, random_state=0).fit(X)
    pooled.net_.register_forward_pre_hook(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="emulated"):
        pooled.score(np.zeros((4, 1, 16, 16), np.float32))
    scores = cross_validate(
        DiffeoSensitivity(net, reference=None, random_state=0), X, y, cv=2
    )["test_score"]
    assert scores.shape == (2,) and (scores < 0).all()


def test_estimator_trains_a_given_pairs_net_on_its_pairs():
    """with_pairs(X, pairs) lost its pairs before the training, which asked for them."""
    from sksim import SimilarityRegularizedNet, with_pairs
    from sksim.datasets import make_scale_detection

    X, y = make_scale_detection(48, size=8, xi=4, random_state=0)
    module = pooled_cnn()
    net = SimilarityRegularizedNet(
        module,
        similarity_pairs="given",
        criterion=nn.CrossEntropyLoss,
        max_epochs=2,
        train_split=None,
        verbose=0,
    )
    X_pairs = with_pairs(X, [[0, 1], [2, 3]])
    est = DiffeoSensitivity(net, reference=None, random_state=0).fit(X_pairs, y)
    torch.manual_seed(0)
    expected = clone(net).fit(X_pairs, y)
    trained = zip(
        est.net_.module_.parameters(), expected.module_.parameters(), strict=True
    )
    assert all(torch.equal(a, b) for a, b in trained)


def test_images_without_channels_are_scored_at_other_sizes():
    """n_features_in_ of (n, H, W) images is H: another size was refused as
    other features, where images with channels were scored."""

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x[:, None])).mean((2, 3)))

    torch.manual_seed(0)
    rng, net = np.random.RandomState(0), Pooled()
    estimator = DiffeoSensitivity(net, reference=None, random_state=0)
    estimator.fit(rng.rand(20, 8, 8))
    X = rng.rand(20, 10, 10)
    table = relative_sensitivity(
        net, X, layers="output", reference=None, random_state=0
    )
    assert estimator.score(X) == -table["R"].item()
    with pytest.raises(ValueError, match=r"shape \(10,\), but fit measured"):
        estimator.score(rng.rand(20, 10))


def test_a_probe_set_of_other_features_is_named_in_the_error():
    """It said "X has 2 features", of the X that was right."""
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    X = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="^X_probe has 2 features, but Diffeo"):
        DiffeoSensitivity(module, reference=None).fit(X, X_probe=np.zeros((3, 2, 8, 8)))


def test_estimator_on_datasets_equals_arrays():
    from torch.utils.data import TensorDataset

    from sksim.datasets import make_scale_detection

    X, y = make_scale_detection(64, size=8, xi=4, random_state=0)
    X = X.astype(np.float32)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    net = NeuralNetClassifier(module, max_epochs=2, train_split=None, verbose=0)
    options = dict(layers="all", n_init=2, n_probe=32, random_state=0)
    expected = DiffeoSensitivity(net, **options).fit(X, y)
    inputs = torch.from_numpy(X)
    for data, labels in [
        (TensorDataset(inputs, torch.from_numpy(y)), None),
        (TensorDataset(inputs), y),
    ]:
        got = DiffeoSensitivity(net, **options).fit(data, labels)
        np.testing.assert_allclose(got.results_["R"], expected.results_["R"], rtol=1e-6)
        assert got.score(data) == pytest.approx(expected.score(X), rel=1e-6)


def test_diffeo_transform_of_signals_names_its_features():
    """It had no get_feature_names_out: set_output, and pipelines with it, failed."""
    X = pd.DataFrame(
        np.random.RandomState(0).randn(20, 16), columns=[f"t{i}" for i in range(16)]
    )
    pipe = make_pipeline(StandardScaler(), DiffeoTransform(random_state=0))
    out = pipe.set_output(transform="pandas").fit_transform(X)
    assert list(out.columns) == list(X.columns)
    expected = make_pipeline(StandardScaler(), DiffeoTransform(random_state=0))
    np.testing.assert_array_equal(out.to_numpy(), expected.fit_transform(X))
    images = DiffeoTransform(random_state=0).fit(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="images keep their shape"):
        images.get_feature_names_out()


@pytest.mark.parametrize("config", ["global", "set_output"])
def test_diffeo_transform_under_pandas_output_keeps_images_and_tensors(config):
    """A pandas output refused images and turned tensors into DataFrames."""
    rng = np.random.RandomState(0)
    images, signals = rng.randn(3, 1, 8, 8), torch.tensor(rng.randn(3, 16))
    expected = [
        DiffeoTransform(random_state=0).fit_transform(x) for x in (images, signals)
    ]
    with sklearn.config_context(
        transform_output="pandas" if config == "global" else "default"
    ):
        for x, want in zip((images, signals), expected, strict=True):
            transform = DiffeoTransform(random_state=0)
            if config == "set_output":
                transform.set_output(transform="pandas")
            got = transform.fit_transform(x)
            assert type(got) is type(want)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            np.testing.assert_array_equal(
                np.asarray(transform.transform(x)), np.asarray(want)
            )
        # fitted on arrays of signals, tensors stay tensors and arrays become frames
        fitted = DiffeoTransform(random_state=0).fit(signals.numpy())
        if config == "set_output":
            fitted.set_output(transform="pandas")
        assert isinstance(fitted.transform(signals), torch.Tensor)
        assert isinstance(fitted.transform(signals.numpy()), pd.DataFrame)
    # set after a fit on images, in a pipeline too, as scikit-learn's
    pipe = make_pipeline(DiffeoTransform(random_state=0)).fit(images)
    pipe.set_output(transform="default").set_output(transform="pandas")
    assert isinstance(pipe.transform(images), np.ndarray)
    with pytest.raises(ValueError, match="transform must be one of"):
        DiffeoTransform().set_output(transform="arrow")
