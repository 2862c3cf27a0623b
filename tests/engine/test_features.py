"""Gradient features: sketched in memory-bounded parts as in whole batches."""

import numpy as np
import pytest
import torch
from _architectures import layer_case
from _engine_helpers import smallest_fitting_engine

from sksim import DeadInputWarning
from sksim._engine import capture
from sksim._engine.features import gradient_features
from sksim._engine.jacobian import JacobianEngine


def test_sketched_features_in_parts_equal_those_of_whole_batches():
    module, X = layer_case("conv2d_big")
    engine, _ = smallest_fitting_engine(module, X)
    whole = JacobianEngine(module, batch_size=4)
    F, F_parts = (
        gradient_features(e, X, n_components=16, seed=0) for e in (whole, engine)
    )
    np.testing.assert_allclose(F_parts, F, rtol=1e-9, atol=1e-12)


def test_unit_norm_scales_each_sample_and_leaves_dead_inputs_zero():
    torch.manual_seed(0)
    module = torch.nn.Sequential(  # no biases: a zero input has a zero gradient
        torch.nn.Linear(4, 6, bias=False),
        torch.nn.Tanh(),
        torch.nn.Linear(6, 3, bias=False),
    )
    X = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    X[[2, 5]] = 0.0
    engine = JacobianEngine(module, batch_size=3)  # rows normalised batch by batch
    with pytest.warns(DeadInputWarning):
        plain = gradient_features(engine, X, 8, seed=0)
        unit = gradient_features(engine, X, 8, seed=0, unit_norm=True)
    norms = np.linalg.norm(plain.reshape(len(X), -1), axis=1)
    dead = norms == 0
    assert dead.tolist() == [False, False, True, False, False, True, False]
    assert np.ptp(norms[~dead]) > 0.1  # the scaling is not the same for all
    np.testing.assert_allclose(
        unit[~dead], plain[~dead] / norms[~dead, None, None], rtol=1e-6
    )
    np.testing.assert_array_equal(unit[dead], 0.0)


@pytest.mark.parametrize(
    "option", [dict(unit_norm=True), dict(directions=np.eye(4, dtype=np.float32))]
)
def test_unit_norm_and_directions_need_sketched_features(option):
    module, X = layer_case("conv2d_big")
    with pytest.raises(ValueError, match="need sketched features"):
        gradient_features(JacobianEngine(module), X, **option)


class _OverPositions(torch.nn.Module):
    """Layers over positions, then their mean: factorised on few.

    A small convolution (CountSketch) and a large one (TensorSketch).
    """

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.conv = torch.nn.Conv1d(16, 24, 3)
        self.wide = torch.nn.Conv1d(24, 256, 11, padding=5)  # 67 584 weights
        self.head = torch.nn.Linear(256, 3)

    def forward(self, x):  # x: (B, T, 16)
        h = torch.tanh(self.lin(x)).transpose(1, 2)
        return self.head(torch.tanh(self.wide(torch.tanh(self.conv(h)))).mean(2))


@pytest.mark.parametrize("n_components", [64, 600])
def test_a_layer_sketches_alike_factorised_or_materialised(monkeypatch, n_components):
    """Inputs of other sizes may take a layer's other form: the sketches of
    the two forms drew unrelated maps, and their products were about 0."""
    torch.manual_seed(0)
    net, X = _OverPositions(), torch.randn(5, 6, 16)
    engine = JacobianEngine(net, batch_size=2)
    factorised = gradient_features(engine, X, n_components=n_components, seed=0)
    monkeypatch.setattr(capture, "factorised_is_cheaper", lambda *args: False)
    engine = JacobianEngine(net, batch_size=2)
    materialised = gradient_features(engine, X, n_components=n_components, seed=0)
    np.testing.assert_allclose(materialised, factorised, rtol=1e-4, atol=1e-5)


def test_factors_materialised_for_a_count_sketch_stay_within_max_memory(monkeypatch):
    """A small convolution on few positions comes factorised and takes a
    CountSketch of its gradients: those were materialised 64 MB at a time
    whatever max_memory, one sample's (100 outputs x 36 864) at least."""
    from sksim._engine import sketch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, stride=4),
        torch.nn.Tanh(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(100),
    )
    torch.manual_seed(0)
    X = torch.randn(6, 3, 16, 16)
    net(X)
    whole = gradient_features(JacobianEngine(net), X, n_components=256, seed=0)
    made, materialize = [], sketch.materialize

    def recorded(*args, **kwargs):
        piece = materialize(*args, **kwargs)
        made.append(piece.grad.numel() * piece.grad.element_size())
        return piece

    monkeypatch.setattr(sketch, "materialize", recorded)
    max_memory = 2**25  # a sample's conv gradients take 14.7 MB, over a third
    engine = JacobianEngine(net, max_memory=max_memory)
    bounded = gradient_features(engine, X, n_components=256, seed=0)
    assert made and max(made) <= max_memory / 3
    np.testing.assert_allclose(bounded, whole, rtol=1e-5, atol=1e-6)
    # without a limit, the batch's gradients at once: inf // bytes is NaN,
    # which made them one sample's output at a time
    made.clear()
    engine = JacobianEngine(net, batch_size=6, max_memory=None)
    gradient_features(engine, X, n_components=256, seed=0)
    assert len(made) == 1


def test_a_batch_is_sketched_a_few_samples_at_a_time_within_max_memory(monkeypatch):
    """The automatic batch size counts the gradient pieces, not the sketch's
    own intermediates (several copies of a sample's d x n_components
    values): 3 000 examples sketched to 4 096 took 6 times max_memory."""
    from sksim._engine import features, sketch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10)
    )
    X = torch.randn(300, 32)
    whole = gradient_features(JacobianEngine(net), X, n_components=512, seed=0)
    sketched = []
    features_of = sketch.GradientSketch.features

    def recorded(self, pieces, max_bytes=float("inf")):
        sketched.append(len(pieces[0]))
        return features_of(self, pieces, max_bytes)

    monkeypatch.setattr(sketch.GradientSketch, "features", recorded)
    max_memory = 2**23
    engine = JacobianEngine(net, max_memory=max_memory)
    bounded = gradient_features(engine, X, n_components=512, seed=0)
    per_sample = features.SKETCH_COPIES * 8 * 10 * 512
    assert engine.batch_size > max(sketched) and len(sketched) > 1
    assert max(sketched) * per_sample <= max_memory / 3
    np.testing.assert_allclose(bounded, whole, rtol=1e-5, atol=1e-6)
