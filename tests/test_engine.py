"""The factorised engine, layer type by layer type, against the brute-force oracle."""

import warnings

import numpy as np
import pytest
import torch
from _architectures import oracle_jacobians, trained_batchnorm
from torch import nn

from sksim._engine import capture, gram, transfer
from sksim._engine.capture import plan_layers
from sksim._engine.features import gradient_features
from sksim._engine.gram import GramReference, ntk_blocks
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import SharedWeightPiece, factorised_is_cheaper, materialize


class Shared(nn.Module):
    """One Linear layer called twice (weight sharing across calls), in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.lin(self.act(self.lin(x))))


class Custom(nn.Module):
    """A bare parameter and an unsupported layer: both go to per-sample autograd."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.bilinear = nn.Bilinear(4, 4, 3)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.lin(x) * self.scale)
        return self.bilinear(h, x)


def _layers(name):
    g = torch.Generator().manual_seed(1)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if name == "linear":
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), t(6, 5)
    if name == "linear_sequence":
        return nn.Sequential(
            nn.Linear(5, 4), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)
        ), t(6, 3, 5)
    if name == "conv1d":
        return nn.Sequential(
            nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 11)
    if name == "conv2d_same":
        return nn.Sequential(
            nn.Conv2d(2, 3, (3, 2), padding="same"),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 5, 4)
    if name == "conv2d_big":  # the cost model materialises this one
        return nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(2, 3, 3),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 1, 12, 12)
    if name == "embedding":
        return nn.Sequential(
            nn.Embedding(7, 4, padding_idx=0), nn.Flatten(), nn.Linear(20, 3)
        ), torch.randint(0, 7, (6, 5), generator=g)
    if name == "layernorm":
        return nn.Sequential(
            nn.Linear(5, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)
        ), t(6, 5)
    if name == "groupnorm":
        return nn.Sequential(
            nn.Conv1d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 7)
    if name == "batchnorm":
        return nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 1, 5, 5)
    if name == "shared":
        return Shared(), t(6, 4)
    if name == "custom":
        return Custom(), t(6, 4)
    raise ValueError(name)


LAYERS = [
    "linear",
    "linear_sequence",
    "conv1d",
    "conv2d_same",
    "conv2d_big",
    "embedding",
    "layernorm",
    "groupnorm",
    "batchnorm",
    "shared",
    "custom",
]


def _module(name):
    torch.manual_seed(0)
    module, X = _layers(name)
    module = module.double()
    module(X[:2])  # materialise lazy layers
    if name == "batchnorm":
        module = trained_batchnorm(module, X * 3 + 1)
    with torch.no_grad():  # non-trivial affine parameters
        for sub in module.modules():
            if isinstance(sub, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.uniform_(-0.5, 0.5)
    return module, X


@pytest.mark.parametrize("output", ["logits", 1])
@pytest.mark.parametrize("name", LAYERS)
def test_ntk_blocks_match_oracle(name, output):
    module, X = _module(name)
    J = oracle_jacobians(module, X, output=output)
    engine = JacobianEngine(module, output=output, batch_size=4)
    K, G_x, G_y = ntk_blocks(engine, X[:4], X)
    np.testing.assert_allclose(
        K, np.einsum("adp,bep->abde", J[:4], J), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        G_y, np.einsum("adp,aep->ade", J, J), rtol=1e-9, atol=1e-12
    )


def test_plans_use_factors_where_supported():
    for name in LAYERS[:-1]:
        module, _ = _module(name)
        layers, fallback = plan_layers(module, dict(module.named_parameters()))
        assert fallback == [], name
    module, _ = _module("custom")
    _, fallback = plan_layers(module, dict(module.named_parameters()))
    assert fallback == ["scale", "bilinear.weight", "bilinear.bias"]


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_factorised_and_materialised_pieces_agree(T, bias):
    g = torch.Generator().manual_seed(0)
    h, delta = torch.randn(5, T, 4, generator=g), torch.randn(5, 2, T, 3, generator=g)
    h2, delta2 = torch.randn(3, T, 4, generator=g), torch.randn(3, 2, T, 3, generator=g)
    fa = SharedWeightPiece(h, delta, bias=bias)
    fb = SharedWeightPiece(h2, delta2, bias=bias)
    ma, mb = materialize(fa.inputs, delta), materialize(fb.inputs, delta2)
    assert fa.width == ma.width == 3 * (4 + bias)
    for full in (True, False):
        torch.testing.assert_close(
            fa.pair(fb, full), ma.pair(mb, full), rtol=1e-4, atol=1e-4
        )
    torch.testing.assert_close(fa.self_gram(), ma.self_gram(), rtol=1e-4, atol=1e-4)
    W = torch.randn(5, 2, 2, generator=g)
    torch.testing.assert_close(
        fa.transform(W).pair(fb, False),
        ma.transform(W).pair(mb, False),
        rtol=1e-4,
        atol=1e-4,
    )
    S = fb.total()
    torch.testing.assert_close(S, mb.total(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fa.inner(S), ma.inner(S), rtol=1e-4, atol=1e-4)


def test_cost_model():
    assert factorised_is_cheaper(T=1, a=256, o=256, d=1)
    assert not factorised_is_cheaper(T=784, a=9, o=32, d=1)
    assert factorised_is_cheaper(T=4, a=288, o=64, d=10)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_streaming_reference_equals_kept_reference(kind):
    module, X = _module("conv1d")
    engine = JacobianEngine(module, batch_size=1)
    reference = GramReference(engine, X, kind)
    kept = reference.matrix(X[:3])
    total = sum(p.nbytes() for p in reference._pieces)
    streamed = GramReference(engine, X, kind, max_memory=int(0.6 * total))
    assert streamed._pieces is None
    np.testing.assert_allclose(streamed.matrix(X[:3]), kept, rtol=1e-12)
    np.testing.assert_allclose(
        streamed.matrix(), GramReference(engine, X, kind).matrix()
    )


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("kind", ["cosine", "ntk"])
def test_symmetric_strips_match_the_oracle(kind, full, monkeypatch):
    # strips of 3 rows, at most 2 columns wide in matrix-block mode: uneven
    # strips, several column chunks per strip, and a partial last strip
    monkeypatch.setattr(gram, "STRIP_ROWS", 3)
    monkeypatch.setattr(gram, "STRIP_ELEMENTS", 3 * 9 * 2)
    module, X = _module("conv1d")
    J = oracle_jacobians(module, X)
    if kind == "cosine":
        values, vectors = np.linalg.eigh(J @ J.transpose(0, 2, 1))
        inverse_root = (vectors / np.sqrt(values)[:, None]) @ vectors.transpose(0, 2, 1)
        J = inverse_root @ J
    blocks = np.einsum("adp,bep->abde", J, J)
    expected = blocks if full else np.trace(blocks, axis1=2, axis2=3) / J.shape[1]
    engine = JacobianEngine(module, batch_size=4)
    K = GramReference(engine, X, kind, full=full).matrix()
    np.testing.assert_allclose(K, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(K, K.swapaxes(0, 1).swapaxes(2, 3) if full else K.T)


def test_array_inputs_are_read_in_place_and_left_unchanged():
    module, X = _module("linear_sequence")
    array = X.numpy().copy()
    frozen = array.copy()
    frozen.flags.writeable = False  # torch warns on sharing such memory: copied
    engine = JacobianEngine(module, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = GramReference(engine, frozen).matrix()
    np.testing.assert_array_equal(GramReference(engine, array).matrix(), K)
    np.testing.assert_array_equal(array, frozen)


def test_activations_are_copied_only_after_an_in_place_change():
    plain, X = _module("linear_sequence")
    engine = JacobianEngine(plain, batch_size=4)
    list(engine.pieces(X))
    assert not engine._copy_activations
    in_place, X = _module("shared")  # ReLU(inplace=True) on a recorded output
    engine = JacobianEngine(in_place, batch_size=4)
    K, _, _ = ntk_blocks(engine, X)
    assert engine._copy_activations
    J = oracle_jacobians(in_place, X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)


def _smallest_fitting_engine(module, X):
    """An engine whose max_memory, a power of 2, is the least that one sample fits."""
    max_memory = 3
    while True:
        engine = JacobianEngine(module, batch_size=4, max_memory=max_memory)
        try:
            sizes = [rows.stop - rows.start for rows, _ in engine.pieces(X)]
            return engine, sizes
        except MemoryError as error:
            assert "pieces of a single sample take more" in str(error)
            max_memory *= 2


@pytest.mark.parametrize("name", LAYERS)
def test_batches_are_split_to_fit_the_memory_bound(name):
    module, X = _module(name)
    J = oracle_jacobians(module, X)
    engine, sizes = _smallest_fitting_engine(module, X)
    assert sum(sizes) == len(X) and max(sizes) <= 2
    K, _, G = ntk_blocks(engine, X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)
    np.testing.assert_allclose(G, np.einsum("adp,aep->ade", J, J), rtol=1e-9)


def test_sketched_features_in_parts_equal_those_of_whole_batches():
    module, X = _module("conv2d_big")
    engine, _ = _smallest_fitting_engine(module, X)
    whole = JacobianEngine(module, batch_size=4)
    F, F_parts = (
        gradient_features(e, X, n_components=16, seed=0) for e in (whole, engine)
    )
    np.testing.assert_allclose(F_parts, F, rtol=1e-9, atol=1e-12)


def test_another_device_computes_with_a_copy_of_the_module():
    module, X = _module("linear")
    engine = JacobianEngine(module, device="meta")
    assert engine.module is not module
    assert {p.device.type for p in engine.module.parameters()} == {"meta"}
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    assert JacobianEngine(module, device="cpu").module is module


class _Cube(torch.autograd.Function):
    """Python control flow on the gradient: vmap cannot batch this backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if bool((grad == 0).all()):
            return torch.zeros_like(x)
        return 3 * x**2 * grad


def test_output_rows_fall_back_to_one_backward_each():
    torch.manual_seed(0)
    first, head = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.head = first, head

        def forward(self, x):
            return self.head(_Cube.apply(self.first(x)))

    module = Net()
    X = torch.randn(5, 4, dtype=torch.float64)
    J = oracle_jacobians(module, X)
    K, _, _ = ntk_blocks(JacobianEngine(module), X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)


@pytest.mark.parametrize(
    "kernel, dilation, padding, stride",
    [
        ((3, 3), (1, 1), (0, 0), (1, 1)),
        ((3, 2), (2, 1), (1, 2), (2, 1)),
        ((1, 4), (1, 2), (0, 3), (1, 3)),
    ],
)
def test_strided_patches_equal_unfold(kernel, dilation, padding, stride):
    x = torch.randn(3, 2, 11, 13, dtype=torch.float64)
    expected = torch.nn.functional.unfold(x, kernel, dilation, padding, stride)
    patches = capture._strided_patches(x, kernel, dilation, padding, stride)
    torch.testing.assert_close(patches, expected.transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_results_reach_the_host_intact(device, monkeypatch):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.setattr(transfer, "STAGING_BYTES", 3 * 7 * 8)  # 3 rows at a time
    tensor = torch.randn(10, 7, dtype=torch.float64, device=device)
    out = np.zeros((10, 9))
    transfer.copy_to_host(out[:, 1:8], tensor)  # a strided view
    np.testing.assert_array_equal(out[:, 1:8], tensor.cpu().numpy())
    assert not out[:, [0, 8]].any()
    np.testing.assert_array_equal(transfer.to_host(tensor), tensor.cpu().numpy())
