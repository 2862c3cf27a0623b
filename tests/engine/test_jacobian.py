"""The Jacobian engine: memory-bounded batches, activation copies, device copies."""

import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from _architectures import (
    LAYER_CASES,
    MLP,
    RecurrentClassifier,
    _inv_sqrt,
    family_case,
    layer_case,
    oracle_jacobians,
)
from _engine_helpers import ntk_blocks, smallest_fitting_engine
from _live_memory import LiveBytes
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sksim._engine.capture import idle_pieces, plan_layers
from sksim._engine.context import on_device
from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.pieces import dense
from sksim._engine.sketch import _factors, _size
from sksim.density import whitened_sum


def test_activations_are_copied_only_after_an_in_place_change():
    plain, X = layer_case("linear_sequence")
    engine = JacobianEngine(plain, batch_size=4)
    list(engine.pieces(X))
    assert not engine._copy_activations
    in_place, X = layer_case("shared")  # ReLU(inplace=True) on a recorded output
    engine = JacobianEngine(in_place, batch_size=4)
    K, _, _ = ntk_blocks(engine, X)
    assert engine._copy_activations
    J = oracle_jacobians(in_place, X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)


@pytest.mark.parametrize("name", LAYER_CASES)
def test_batches_are_split_to_fit_the_memory_bound(name):
    module, X = layer_case(name)
    J = oracle_jacobians(module, X)
    engine, sizes = smallest_fitting_engine(module, X)
    assert sum(sizes) == len(X) and max(sizes) <= 2
    K, _, G = ntk_blocks(engine, X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)
    np.testing.assert_allclose(G, np.einsum("adp,aep->ade", J, J), rtol=1e-9)


class CopiesOnTheCPU(TorchDispatchMode):
    """Counts the tensor copies made on the CPU inside the block."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_):
            self.copies += out.device.type == "cpu"
        return out


def test_another_device_computes_with_a_copy_of_the_layer_case():
    module, X = layer_case("linear")
    with CopiesOnTheCPU() as counted:  # made there directly, not copied first
        copy = on_device(module, "meta")  # another device (no values: not computed on)
    assert copy is not module and counted.copies == 0
    assert {p.device.type for p in copy.parameters()} == {"meta"}
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    assert JacobianEngine(module, device="cpu").module is module


def test_a_copy_on_another_device_keeps_shared_and_frozen_parameters():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = embedding.weight  # tied
    norm = torch.nn.BatchNorm1d(3).requires_grad_(False)
    norm.register_buffer("tracked", torch.ones(3, requires_grad=True))
    module = torch.nn.Sequential(embedding, norm, head)
    copy = on_device(module, "meta")
    assert copy[1].tracked.requires_grad and not copy[1].running_mean.requires_grad
    assert copy[2].weight is copy[0].weight and copy[0].weight is not embedding.weight
    assert [p.requires_grad for p in copy.parameters()] == [True, False, False]
    assert isinstance(copy[0].weight, torch.nn.Parameter)
    assert {t.device.type for t in copy.buffers()} == {"meta"}
    assert [t.device.type for t in module.parameters()] == ["cpu"] * 3


@pytest.mark.parametrize("name", LAYER_CASES)
def test_the_automatic_batch_fits_its_budget_whole(name):
    """The automatic batch size counts what the pieces take: no batch is split."""
    module, X = layer_case(name)
    sizes = set()
    for max_memory in np.geomspace(2**8, 2**22, 29):
        engine = JacobianEngine(module, max_memory=max_memory)
        try:
            list(engine.pieces(X, progress=False))
        except MemoryError:  # a single sample does not fit
            continue
        assert engine._part_size == engine.batch_size
        sizes.add(min(engine.batch_size, len(X)))
    assert len(sizes) > 2  # from single samples to the whole set


@pytest.mark.parametrize("max_mib", [16, 40])
def test_a_batch_and_its_backward_pass_take_their_third(max_mib):
    """The automatic batch left out the gradient that the backward pass over
    the outputs makes beside the kept signals: 1.2 times the third here."""
    module = MLP(n_in=64, n_hidden=256, n_out=10).eval()
    X = np.random.default_rng(0).normal(size=(600, 64)).astype(np.float32)
    engine = JacobianEngine(module, max_memory=max_mib * 2**20)
    next(engine.pieces(X[:4], progress=False))  # the plan, made once
    with LiveBytes() as live:
        for _ in engine.mapped_pieces(X, -0.5, 1e-5, progress=False):
            pass
    assert engine.batch_size < len(X)
    assert live.peak < engine.max_memory / 3


def test_many_outputs_keep_the_grams_within_max_memory():
    """The automatic batch counted the pieces only, not the (d, d) float64
    arrays of the Grams' powers: 300 outputs took twice max_memory (1000
    outputs, 100 samples: 3.4 GiB at 2 GiB). The reference's Grams count
    against what its kept pieces may take."""
    torch.manual_seed(0)
    d, max_memory = 300, 64 * 2**20
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, d)
    )
    X = np.random.RandomState(0).randn(30, 8).astype(np.float32)
    engine = JacobianEngine(net, max_memory=max_memory)
    tracemalloc.start()
    try:
        K = GramReference(engine, X, "cosine").matrix()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_memory
    expected = GramReference(JacobianEngine(net, batch_size=30), X, "cosine").matrix()
    np.testing.assert_allclose(K, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("power", [None, -0.5])
def test_one_batch_of_pieces_is_held_at_a_time(power):
    module, X = layer_case("linear")
    engine = JacobianEngine(module, batch_size=2)
    batches = engine.mapped_pieces(X, power, 1e-5, progress=False)
    _, first, _ = next(batches)
    signals = [weakref.ref(piece.signal) for piece in first]
    next(batches)
    assert first == []
    assert all(signal() is None for signal in signals)


def _recurrent_case():
    torch.manual_seed(0)
    return RecurrentClassifier("gru").double(), torch.randint(0, 20, (6, 5))


@pytest.mark.parametrize("case", ["linear", "custom", "gru"])
def test_a_batch_is_freed_before_the_next_is_computed(case):
    """Nothing holds the last batch's pieces while the next one is computed:
    neither the engine (its finiteness check kept the last piece in a loop
    variable) nor the soft density's sum. ``custom`` and the GRU take the
    fallback, vectorised and looped."""
    module, X = _recurrent_case() if case == "gru" else layer_case(case)
    engine = JacobianEngine(module, batch_size=2)
    seen, alive = [], []
    mapped, compute = engine.mapped_pieces, engine._batch_pieces

    def spy_mapped(*args, **kwargs):
        for rows, pieces, G in mapped(*args, **kwargs):
            seen.extend(weakref.ref(piece.signal) for piece in pieces)
            yield rows, pieces, G

    def spy_compute(*args, **kwargs):
        alive.append(sum(ref() is not None for ref in seen))
        return compute(*args, **kwargs)

    engine.mapped_pieces, engine._batch_pieces = spy_mapped, spy_compute
    S = whitened_sum(engine, X, 1e-5)
    assert alive == [0, 0, 0]
    # |S|^2 is the sum of all pairs' <A(x_i), A(x_j)>, whatever the column order
    A = np.stack([_inv_sqrt(j @ j.T) @ j for j in oracle_jacobians(module, X)])
    np.testing.assert_allclose(np.sum(S**2), np.sum(A.sum(axis=0) ** 2), rtol=1e-7)


class Attention(torch.nn.Module):
    """Few parameters, large parameter-free intermediates (B, heads, T, T)."""

    def __init__(self, width=16, heads=4, d=10):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, d)

    def forward(self, x):
        B, T, H = x.shape
        q, k, v = (
            t.reshape(B, T, self.heads, -1).transpose(1, 2)
            for t in self.qkv(x).chunk(3, -1)
        )
        a = torch.softmax(q @ k.transpose(-1, -2), -1)
        return self.out((a @ v).transpose(1, 2).reshape(B, T, H).mean(1))


def test_the_automatic_batch_counts_what_autograd_saves():
    """The batch size counted the layers' inputs, outputs and pieces, not the
    attention weights autograd saves, nor their gradients in the backward
    pass over all outputs: 3 to 7 times max_memory was taken."""
    torch.manual_seed(0)
    T, heads, d, max_memory = 64, 4, 10, 2**26
    net = Attention(heads=heads, d=d)
    X = torch.randn(40, T, 16).numpy()
    engine = JacobianEngine(net, max_memory=max_memory)
    K = GramReference(engine, X, "cosine").matrix()
    weights = heads * T * T * 4  # bytes of a sample's attention weights
    assert engine.batch_size * (2 * d + 1) * weights <= max_memory / 3
    one = GramReference(JacobianEngine(net, batch_size=1), X, "cosine").matrix()
    np.testing.assert_allclose(K, one, atol=1e-6)
    # the backward pass to the head alone makes no gradient of the weights
    head = JacobianEngine(net, params="out", max_memory=max_memory)
    GramReference(head, X, "cosine").matrix()
    assert head.batch_size * (2 * d + 1) * weights > max_memory / 3
    # a parameter of torch.func's fallback, before the attention: it does
    net.register_parameter("scale", torch.nn.Parameter(torch.ones(16)))
    net.forward = lambda x: Attention.forward(net, x * net.scale)
    scaled = JacobianEngine(net, params=["scale", "out.weight"], max_memory=max_memory)
    GramReference(scaled, X, "cosine").matrix()
    assert scaled.batch_size * (2 * d + 1) * weights <= max_memory / 3


def _pieces_and_moved(module, X, params=None):
    """The first batch's pieces, captured and with every layer left to torch.func."""
    captured = JacobianEngine(module, params=params, batch_size=len(X))
    moved = JacobianEngine(module, params=params, batch_size=len(X))
    moved._unbatched = set(plan_layers(module, moved.parameters)[0])
    (_, first), (_, second) = next(captured.pieces(X)), next(moved.pieces(X))
    assert moved._plan.layers == {} and moved._plan.supported
    return list(first), list(second)


def _layer_kind_case(case):
    """A layer case, GPT-2 (transposed linear layers), or a large convolution."""
    if case == "gpt2":
        return family_case(case, 3)
    if case != "big_convolution":
        return layer_case(case)
    torch.manual_seed(0)  # a weight of 73 728 values, which a TensorSketch takes
    module = nn.Sequential(
        nn.Conv2d(64, 128, 3), nn.Tanh(), nn.Flatten(), nn.Linear(128, 2)
    )
    return module.double(), torch.randn(3, 64, 3, 3, dtype=torch.float64)


@pytest.mark.parametrize(
    "case, params",
    [
        *((name, None) for name in LAYER_CASES),
        ("gpt2", None),  # transposed linear layers
        ("linear", ["0.weight", "2.bias"]),
        ("big_convolution", None),
    ],
)
def test_layers_left_to_torch_func_give_their_captured_pieces(case, params):
    """A layer found mixing samples at a later batch went to torch.func with a
    block per parameter: pieces of other sizes than the batches before, which
    the sketches drew other maps for (kernel 0.8 off with every piece kept
    exactly), and whose pairing with a kernel's reference failed."""
    module, X = _layer_kind_case(case)
    captured, moved = _pieces_and_moved(module, X, params)
    assert [_size(p) for p in moved] == [_size(p) for p in captured]
    assert [_factors(p) for p in moved] == [_factors(p) for p in captured]
    for ours, theirs in zip(moved, captured, strict=True):
        torch.testing.assert_close(dense(ours).grad, dense(theirs).grad)


@pytest.mark.parametrize("case", [*LAYER_CASES, "gpt2", "big_convolution"])
def test_a_layer_that_did_not_run_gives_zero_pieces_of_its_layout(case):
    """A layer that ran for the reference but not for the queries (a branch on
    the data) gave no pieces: an unpickled estimator, whose engine's probe
    saw the queries' layers, paired the pieces of other layers (a kernel 0.7
    off)."""
    module, X = _layer_kind_case(case)
    captured = JacobianEngine(module, batch_size=len(X))
    plan = captured._layer_plan(X)
    (_, pieces) = next(captured.pieces(X))
    b, d = len(X), captured.n_outputs(X)
    idle = [
        piece
        for layer, own in plan.supported.values()
        for piece in idle_pieces(layer, own, b, d)
    ]
    pieces = list(pieces)[: len(idle)]  # the supported layers' first
    assert [_size(p) for p in idle] == [_size(p) for p in pieces]
    assert [_factors(p) for p in idle] == [_factors(p) for p in pieces]
    for piece in idle:
        assert not dense(piece).grad.any()


def test_no_graph_of_the_probe_pass_outlives_a_call():
    """The probe pass saved outputs (tanh's) with their own nodes: a cycle of
    torch's that kept each call's graph, and with checkpoints each call's
    copies of the network (18 MiB more per call for a 1 M-parameter MLP)."""
    import gc

    from sksim import network_similarity

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    X = torch.randn(12, 6)
    checkpoints = [
        {k: v + 0.01 * i for k, v in net.state_dict().items()} for i in range(3)
    ]

    def alive():
        gc.collect()
        objects = gc.get_objects()
        graphs = sum(torch.is_tensor(o) and o.grad_fn is not None for o in objects)
        copies = sum(
            isinstance(o, nn.Parameter) and o.shape == (16, 6) for o in objects
        )
        return graphs, copies

    before = alive()
    for _ in range(2):
        network_similarity(net, X, checkpoints=checkpoints)
    assert alive() == before
