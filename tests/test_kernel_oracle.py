"""The kernel against a brute-force oracle: one autograd.grad per sample and output."""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from _architectures import (
    ResNet18Logits,
    TokenModel,
    family_case,
    oracle_jacobians,
    oracle_kernel,
    trained_batchnorm,
)
from torch.utils.data import StackDataset

from sksim import (
    NetworkSimilarityKernel,
    SingularJacobianGramWarning,
    gradient_features,
    network_similarity,
)
from sksim._engine.capture import leaf_uses, may_move_rows
from sksim._engine.context import evaluation_mode


def _case(name):
    return family_case(name, {"mlp": 7, "mlp_d3": 7, "bert": 5}.get(name, 6))


CASES = [
    "mlp",
    "mlp_d3",
    "cnn_batchnorm",
    "residual",
    "tokens",
    "bert",
    "gpt2",  # transformers' Conv1D: linear layers with transposed weights
    "shared_tables",
    "gru",
    "lstm",
    "tied_embedding",  # weights used outside their layer's calls
    "tied_functional",
    "tied_bypassed",  # no layer's hooks run
    "sequence_first_3",  # sequences as long as a batch (3): axes ambiguous
    "sequence_first_4",
    "output_hooks",  # the user's hooks change the layers' outputs
    "prelu",  # torch.func's vmap is wrong through it for batches of d samples
    "functional_prelu",  # the same through F.prelu: its Jacobians checked
    "prototypes",  # torch.func's vmap is wrong through torch.cdist
    "call_forms",  # checkpointed, under no_grad, called with input=
]


@pytest.mark.parametrize("output", [0, "logits"])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_transformer_kernel_matches_oracle_for_every_batch_size(
    kind, batch_size, output
):
    """Position embeddings are one table broadcast over the batch: each sample
    still gets its own gradient, in every batch size."""
    module, X = _case("bert")
    J = oracle_jacobians(module, X, output=output)
    K = network_similarity(module, X, kind=kind, output=output, batch_size=batch_size)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_oracle(case, kind):
    module, X = _case(case)
    J = oracle_jacobians(module, X)
    expected = oracle_kernel(J[:4], J, kind)
    K = network_similarity(module, X[:4], X, kind=kind, batch_size=3)
    np.testing.assert_allclose(K, expected, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_symmetric_kernel_matches_oracle(case):
    module, X = _case(case)
    J = oracle_jacobians(module, X)
    K = network_similarity(module, X, batch_size=4)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "cosine"), rtol=1e-5, atol=1e-10)
    assert np.array_equal(K, K.T)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_a_batch_reordered_by_its_data_is_computed_sample_by_sample(kind):
    """Sorting each batch by length moved the samples between the first
    layer's rows from the third sample on: the kernel was off by 0.05, with
    no warning."""
    module, X = _case("sorted_by_length")
    J = oracle_jacobians(module, X)
    expected = oracle_kernel(J, J, kind)
    for batch_size in (1, 2, 3, 5):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            K = network_similarity(module, X, kind=kind, batch_size=batch_size)
        np.testing.assert_allclose(K, expected, rtol=1e-7, atol=1e-12)
        messages = [str(w.message) for w in caught]
        mixed = [m for m in messages if "mixed the samples of the batch" in m]
        # batches of two are sorted already, but not the first three samples,
        # which the pass checks first (as many as a batch holds, up to 8)
        assert len(mixed) == (batch_size >= 3), messages
        if mixed:
            assert "from input row 0 in the layer 'inp'" in mixed[0]


class SortedByProduct(torch.nn.Module):
    """The batch sorted by its first feature with a permutation matrix (a
    product, which the graph does not show as moving rows), and back."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        order = x[:, 0].argsort()
        P = torch.nn.functional.one_hot(order, len(x)).to(x.dtype)
        h = torch.tanh(self.inp(P @ x))
        return self.out(P.T @ h)


class HalvesOfTheBatch(torch.nn.Module):
    """A layer run on each half of a batch of four or more, rows kept."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)
        self.body = torch.nn.Linear(5, 5)

    def forward(self, x):
        h, half = torch.tanh(self.inp(x)), len(x) // 2
        if len(x) >= 4:
            h = torch.cat([self.body(h[:half]), self.body(h[half:])])
        else:
            h = self.body(h)
        return self.out(torch.tanh(h))


@pytest.mark.parametrize("module", [SortedByProduct, HalvesOfTheBatch])
def test_the_first_batch_of_a_pass_is_checked_whatever_its_graph(module):
    """A batch sorted by a permutation matrix was 0.2 off, with no warning; a
    layer run on half of the batch crashed in sksim's own code."""
    torch.manual_seed(0)
    net = module().double()
    X = torch.randn(6, 3, dtype=torch.float64)
    X[:, 0] = torch.tensor([-2.0, -1.0, 1.0, 0.0, 2.0, -3.0])  # the first two in order
    J = oracle_jacobians(net, X)
    with pytest.warns(UserWarning, match="mixed the samples of the batch from input"):
        K = network_similarity(net, X, kind="ntk", batch_size=6)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7, atol=1e-12)


class OneRowExperts(torch.nn.Module):
    """Each sample routed to one of two experts by the sign of its first input."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)
        self.experts = torch.nn.ModuleList([torch.nn.Linear(6, 6) for _ in range(2)])

    def forward(self, x):
        h, route = torch.tanh(self.inp(x)), (x[:, 0] > 0).long()
        y = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            rows = (route == e).nonzero().flatten()
            if len(rows):
                y = y.index_copy(0, rows, expert(h[rows]))
        return self.out(torch.tanh(y))


class SampleBySample(torch.nn.Module):
    """A loop over the samples of the batch, each run alone, joined again."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        one = [self.out(torch.tanh(self.inp(x[i : i + 1]))) for i in range(len(x))]
        return torch.cat(one)


@pytest.mark.parametrize("module", [OneRowExperts, SampleBySample])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_layers_called_on_single_samples_go_to_the_fallback(module, kind):
    """Their one-row outputs were expanded to the batch as a shared table's: the
    experts' network failed in its own index_copy (refused with a ValueError),
    the loop's returned twice the batch's rows (refused)."""
    torch.manual_seed(0)
    net = module().double()
    X = np.random.RandomState(0).randn(6, 4)
    X[:, 0] = [-1, 1, 1, -1, 1, -1]
    J = oracle_jacobians(net, torch.from_numpy(X))
    expected = oracle_kernel(J, J, kind)
    for batch_size in (2, 3, 6):
        K = network_similarity(net, X, kind=kind, batch_size=batch_size)
        np.testing.assert_allclose(K, expected, rtol=1e-7, atol=1e-12)


class MaskedExperts(torch.nn.Module):
    """Samples routed by a mask; both experts called on every batch (on no row
    at all, when no sample goes to one)."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(4, 6)
        self.e1, self.e2 = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)

    def forward(self, x):
        h, route = torch.tanh(self.inp(x)), x[:, 0] > 0
        out = h.new_zeros(len(x), 3)
        out[route] = self.e1(h[route])
        out[~route] = self.e2(h[~route])
        return out


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_an_expert_called_on_one_sample_of_a_later_batch_is_exact(kind):
    """The first samples go to e1; the second batch routes one sample alone to
    it, whose one-row output is taken for a shared table's: that batch was
    refused, asking to split the inputs (with batches of 2 or 4 the kernel was
    exact). Its samples are taken one at a time, as a mixing batch's are."""
    X = np.random.RandomState(0).randn(7, 4)
    X[:, 0] = [1, 1, 1, 1, -1, -1, -1]
    torch.manual_seed(0)
    net = MaskedExperts().double()
    J = oracle_jacobians(net, torch.from_numpy(X))
    with pytest.warns(UserWarning, match="input row 3 in the layer 'e1'.*routed to"):
        K = network_similarity(net, X, kind=kind, batch_size=3)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


def test_an_expert_idle_on_the_first_samples_is_refused_where_it_runs():
    """The first samples share an expert; a later sample alone runs the other,
    whose gradients the first samples' plan has no place for."""
    X = np.random.RandomState(0).randn(6, 4).astype(np.float32)
    X[:, 0] = [-1, -1, 1, -1, -1, -1]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # experts.1 idle at first
        with pytest.raises(ValueError, match=r"ran the layers \['experts.1', "):
            network_similarity(OneRowExperts(), X, batch_size=3)


class FlattenedPositions(torch.nn.Module):
    """A Linear on the flattened ``(B * T, H)`` positions of sequences cut to
    the batch's longest, as on a ``PackedSequence``'s data: one row per sample
    while the sequences are one token long, more after."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 4, padding_idx=0)
        self.lin, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, ids):
        ids = ids[:, : int(ids.ne(0).any(dim=0).nonzero().max()) + 1]
        b, t = ids.shape
        h = torch.tanh(self.lin(self.emb(ids).reshape(b * t, -1))).reshape(b, t, -1)
        mask = ids.ne(0).unsqueeze(-1).to(h.dtype)
        return self.out((h * mask).sum(1) / mask.sum(1))


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_a_layer_whose_rows_are_positions_falls_back_when_found(kind):
    """The first two sequences one token long, the probe saw one row per
    sample: a longer sequence, alone, was retried for ever."""
    torch.manual_seed(0)
    module = FlattenedPositions().double()
    X = torch.tensor([[3, 0, 0], [5, 0, 0], [2, 4, 6], [7, 8, 0], [9, 0, 0]])
    J = oracle_jacobians(module, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the batch's rows mixed
        K = network_similarity(module, X, kind=kind, batch_size=2)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


class FineTunedEncoder(torch.nn.Module):
    """A padded TransformerEncoder whose lower layer is frozen (set in the
    test), as fine-tuning leaves it: in eval mode its fast path hands the
    trainable layer above it nested tensors, which have no rows. Pooled over
    the unpadded positions or ``"all"`` (those the fast path zeroes too)."""

    def __init__(self, pool="masked"):
        super().__init__()
        self.pool = pool
        self.emb = torch.nn.Embedding(13, 8, padding_idx=0)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, tokens):
        pad = tokens.eq(0)
        out = self.enc(self.emb(tokens), src_key_padding_mask=pad)
        if self.pool == "all":
            return self.head(out.mean(1))
        keep = (~pad).unsqueeze(-1).to(out.dtype)
        return self.head((out * keep).sum(1) / keep.sum(1))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the oracle's
@pytest.mark.parametrize("pool", ["masked", "all"])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_a_fine_tuned_encoders_layers_given_nested_tensors_fall_back(kind, pool):
    """The frozen layer's fast path gave the next one a nested tensor: "Internal
    error: NestedTensorImpl doesn't support sizes". The kernel is that of the
    network as it runs, fast path included."""
    torch.manual_seed(0)
    module = FineTunedEncoder(pool).eval()
    for name, p in module.named_parameters():
        p.requires_grad_(
            name.startswith(("enc.layers.1.linear", "enc.layers.1.norm", "head"))
        )
    tokens = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]])
    J = oracle_jacobians(module, tokens)
    K = network_similarity(module, tokens, kind=kind, batch_size=3)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-4, atol=1e-6)
    assert torch.backends.mha.get_fastpath_enabled()


class BareScale(torch.nn.Module):
    """A hidden layer scaled by a bare parameter, which goes to the fallback."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 3))

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x)) * self.scale)


class MovesItsLayer(BareScale):
    """A forward that converts a layer with ``.to()`` (a no-op here), as
    transformers' Switch router does."""

    def forward(self, x):
        self.lin = self.lin.to(self.scale.dtype)
        return self.out(torch.tanh(self.lin(x)) * self.scale)


class EnergyGradient(torch.nn.Module):
    """Outputs the gradient of a scalar energy in its inputs (create_graph=True)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 10)
        self.b = torch.nn.Linear(10, 1)

    def forward(self, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            energy = self.b(torch.tanh(self.a(x))).sum()
            (gradient,) = torch.autograd.grad(energy, x, create_graph=True)
        return gradient[:, :3]


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
@pytest.mark.parametrize(
    "make, width", [(MovesItsLayer, 4), (EnergyGradient, 6)], ids=["moves", "energy"]
)
def test_a_forward_that_works_on_its_own_layers_is_exact(make, width, kind):
    """torch.func crashed the process (a segmentation fault) on the fallback's
    parameters when the forward called .to() on a layer outside them. A forward
    that differentiates (create_graph=True) has its first layer's weight enter
    the outputs through its inner backward pass, which the hooks do not see: the
    check of the layers' pieces was skipped once another layer (the last, tied
    the same way) went to the fallback, and the kernel was 0.35 off."""
    torch.manual_seed(0)
    module = make().double()
    X = torch.randn(8, width, dtype=torch.float64)
    J = oracle_jacobians(module, X)
    K = network_similarity(module, X, kind=kind, batch_size=3)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


class DoublesItsInput(BareScale):
    """Works in place on its input."""

    def forward(self, x):
        x.mul_(2.0)
        return self.out(torch.tanh(self.lin(x)) * self.scale)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_a_network_working_in_place_on_its_inputs_gets_its_kernel(kind):
    """Each pass over a batch handed the network the same tensors: the factorised
    layers' capture doubled them for the fallback's vmap, whose check doubled
    them again for the per-sample pass (9.6 times the NTK off)."""
    torch.manual_seed(0)
    module = DoublesItsInput().double()
    X = torch.randn(6, 4, dtype=torch.float64)
    J = oracle_jacobians(module, X.clone())  # the oracle's rows are views
    K = network_similarity(module, X.numpy(), kind=kind, batch_size=3)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


def test_half_precision_fallbacks_are_not_refuted_by_their_rounding(monkeypatch):
    """bfloat16 Jacobians differ from autograd's by their rounding (about 3e-3):
    the check took that for a wrong vmap rule, and computed every bfloat16
    network with a fallback one sample and one output at a time."""
    from sksim._engine.jacobian import JacobianEngine

    def refuse(*args):
        raise AssertionError("computed one sample at a time")

    monkeypatch.setattr(JacobianEngine, "_looped_jacobian", refuse)
    torch.manual_seed(0)
    X = torch.randn(16, 4)
    for dtype, rtol in ((torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
        module = BareScale().to(dtype)
        K = network_similarity(module, X.to(dtype), kind="ntk", batch_size=8)
        same = copy.deepcopy(module).double()  # its rounded weights, in float64
        J = oracle_jacobians(same, X.to(dtype).double())
        expected = oracle_kernel(J, J, "ntk")
        atol = rtol * np.abs(expected).max()
        np.testing.assert_allclose(K, expected, rtol=rtol, atol=atol)


class SortedAndGated(torch.nn.Module):
    """Rows sorted by a permutation matrix the graph does not show as moving
    them, and a gate run on a data-chosen subset of the batch's rows."""

    def __init__(self):
        super().__init__()
        self.lin, self.gate = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        self.out = torch.nn.Linear(3, 2)

    def forward(self, x):
        eye = torch.eye(x.shape[0], dtype=x.dtype)
        P = eye[torch.argsort(x[:, 0].detach())]
        h = P.T @ torch.tanh(self.lin(P @ x))
        chosen = x[:, 1].detach() > 0
        gated = eye[:, chosen] @ torch.tanh(self.gate(x.detach()[chosen]))
        return self.out(h + gated)


@pytest.mark.parametrize("gated", [12, 3])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_batches_resume_only_when_the_layer_that_mixed_them_falls_back(kind, gated):
    """The sorted layer sent the engine to single samples; the gate, run on no
    row of one sample, then fell back, and the batch size came back for the
    sorted layer too, unchecked: cosine 0.11 off. With that sample in the first
    batch, the gate was named first: the batches resume, their rows checked."""
    torch.manual_seed(0)
    module = SortedAndGated().double()
    X = torch.randn(24, 4, dtype=torch.float64)
    X[:, 1] = X[:, 1].abs() + 0.1
    X[0, 0], X[1, 0] = -3.0, 3.0  # the first two in order: the probe sees no sort
    X[gated, 1] = -1.0  # a sample whose gate runs on no row
    J = oracle_jacobians(module, X.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the batch's rows mixed
        K = network_similarity(module, X.numpy(), kind=kind, batch_size=8)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


class TwoRowsExchanged(torch.nn.Module):
    """Rows ``i`` and ``j`` exchanged around the middle layer only."""

    def __init__(self, i, j):
        super().__init__()
        self.i, self.j = i, j
        self.a, self.c, self.b = (torch.nn.Linear(*s) for s in ((3, 8), (8, 8), (8, 2)))

    def forward(self, x):
        order = torch.arange(len(x))
        if len(x) > max(self.i, self.j):
            order[self.i], order[self.j] = self.j, self.i
        h = torch.tanh(self.a(x))
        return self.b(torch.tanh(self.c(h[order]))[order])


class PositionsAsRows(torch.nn.Module):
    """A layer run on the rows of a batch's non-zero positions, as packed data.

    A batch of one-position sequences gives one row per sample: the layer's
    rows are the samples until a longer sequence comes.
    """

    def __init__(self):
        super().__init__()
        self.inner, self.head = torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        present = x.abs().sum(-1) != 0
        full = x.new_zeros(*present.shape, 5)
        full[present] = torch.tanh(self.inner(x[present]))
        return self.head(full.sum(1))


def _positions(lengths):
    X = torch.randn(len(lengths), 3, 4, dtype=torch.float64)
    for row, length in zip(X, lengths, strict=True):
        row[length:] = 0
    return X


@pytest.mark.parametrize("n_components", [None, 10_000])
def test_a_layer_found_mixing_at_a_later_batch_pairs_with_the_batches_before(
    n_components,
):
    """The layer's batches before it moved to torch.func and those after
    gave pieces of other layouts: sketches of other maps (a kernel 0.8 off,
    every piece kept exactly) and a kernel's transform of references that
    had it captured failed (RuntimeError: mat1 and mat2 shapes ...)."""
    torch.manual_seed(0)
    net = PositionsAsRows().double()
    short, mixed = _positions([1] * 8), _positions([1, 1, 2, 3, 1, 3, 2, 1])
    J_short, J_mixed = oracle_jacobians(net, short), oracle_jacobians(net, mixed)
    sketch = {"n_components": n_components, "random_state": 0}
    tolerance = (
        {"rtol": 1e-7, "atol": 1e-12} if n_components is None else {"atol": 1e-6}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the batch's rows mixed
        K = network_similarity(net, mixed, batch_size=4, **sketch)
        kernel = NetworkSimilarityKernel(net, batch_size=4, **sketch).fit(short)
        K_queries = kernel.transform(mixed)
    np.testing.assert_allclose(
        K, oracle_kernel(J_mixed, J_mixed, "cosine"), **tolerance
    )
    expected = oracle_kernel(J_mixed, J_short, "cosine")
    np.testing.assert_allclose(K_queries, expected, **tolerance)


def test_threads_that_share_an_engine_keep_their_own_plans():
    """Tiles in joblib's threading backend share an engine: a layer that one
    tile's pass moved to torch.func changed the layers every batch must run
    under the others' passes, which refused theirs ("The network ran the
    layers ['head', 'inner'] ... but ['head']")."""
    torch.manual_seed(0)
    net = PositionsAsRows().double()
    lengths = [1] * 1100
    lengths[700] = lengths[1060] = 2  # in both row blocks of the tiles
    X = _positions(lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the batch's rows mixed
        expected = network_similarity(net, X, batch_size=32)
        with joblib.parallel_config(backend="threading"):
            K = network_similarity(net, X, batch_size=32, n_jobs=3)
    np.testing.assert_allclose(K, expected, rtol=0, atol=1e-12)


def test_a_hook_that_changes_a_layers_output_for_some_inputs_is_differentiated():
    """The engine's hooks ran after the user's and recorded the clamped
    output, whose derivative they missed; the probe's two samples, clamped
    nowhere, left the layer captured: a cosine kernel 0.31 off, an ntk 4.5."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()
    net[0].register_forward_hook(lambda layer, args, out: out.clamp(-1.0, 1.0))
    X = torch.randn(8, 3, dtype=torch.float64)
    X[:2] *= 0.05  # the probe's samples: clamped nowhere
    X[2:] *= 4.0
    J = oracle_jacobians(net, X)
    for kind in ("cosine", "ntk"):
        K = network_similarity(net, X, kind=kind)
        np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-9, atol=1e-12)


class Branch(torch.nn.Module):
    """A layer run for batches of positive first features only."""

    def __init__(self):
        super().__init__()
        self.a, self.extra, self.head = (
            torch.nn.Linear(*shape) for shape in ((4, 6), (6, 6), (6, 2))
        )

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if bool((x[:, 0] > 0).all()):
            h = h + torch.tanh(self.extra(h))
        return self.head(h)


@pytest.mark.parametrize("rebuilt", ["unpickled", "checkpoints"])
def test_engines_that_saw_other_layers_run_pair_their_pieces(rebuilt):
    """A kernel whose engine is made again (unpickled, or one per checkpoint
    at every call) probes the queries' layers: they ran without the
    reference's layer 'extra', whose pieces were missing from their list,
    and the sketches paired the pieces of other layers (0.41 off, every
    piece kept exactly)."""
    torch.manual_seed(0)
    net = Branch().double()
    reference, queries = torch.randn(12, 4, dtype=torch.float64), torch.randn(6, 4)
    reference[:, 0] = reference[:, 0].abs() + 0.1
    queries = queries.double()
    queries[:, 0] = -queries[:, 0].abs() - 0.1
    expected = oracle_kernel(
        oracle_jacobians(net, queries), oracle_jacobians(net, reference), "cosine"
    )
    settings = dict(n_components=10_000, random_state=0)
    if rebuilt == "checkpoints":
        settings["checkpoints"] = [net.state_dict()] * 2
    kernel = NetworkSimilarityKernel(net, **settings).fit(reference)
    if rebuilt == "unpickled":
        kernel = pickle.loads(pickle.dumps(kernel))
    np.testing.assert_allclose(kernel.transform(queries), expected, atol=1e-6)


def test_features_of_inputs_that_run_other_layers_pair():
    """gradient_features' equal shares gave a layer that did not run no
    columns: the queries' maps differed from the reference's, every later
    layer's too (their mean over seeds as far off as the kernel itself)."""
    torch.manual_seed(0)
    net = Branch().double()
    reference, queries = torch.randn(12, 4, dtype=torch.float64), torch.randn(6, 4)
    reference[:, 0] = reference[:, 0].abs() + 0.1  # run 'extra'
    queries = queries.double()
    queries[:, 0] = -queries[:, 0].abs() - 0.1
    J_q, J_r = oracle_jacobians(net, queries), oracle_jacobians(net, reference)
    expected = np.einsum("adp,bdp->ab", J_q, J_r) / 2
    estimates = []
    for seed in range(60):
        F_q, F_r = (
            gradient_features(net, X, n_components=40, whiten=False, random_state=seed)
            for X in (queries, reference)
        )
        estimates.append(np.einsum("adk,bdk->ab", F_q, F_r) / 2)
    error = np.abs(np.mean(estimates, axis=0) - expected).max()
    assert error < 0.2 * np.abs(expected).max()  # 0.05 here; 1.0 when unpaired


@pytest.mark.parametrize("rows", [(0, 15), (6, 8), (2, 5)])
def test_any_two_rows_exchanged_in_a_batch_are_found(rows):
    """Row weights 2^(k mod 11) were shared by rows of batches of 12 or more:
    rows 0 and 15 of 16 exchanged gave a kernel 0.9 off, without a warning."""
    torch.manual_seed(0)
    net = TwoRowsExchanged(*rows).double()
    X = torch.randn(16, 3, dtype=torch.float64)
    J = oracle_jacobians(net, X)
    with pytest.warns(UserWarning, match="mixed the samples of the batch"):
        K = network_similarity(net, X, kind="ntk", batch_size=16)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7, atol=1e-12)


def test_saturated_softmax_outputs_are_not_taken_for_mixed_rows():
    """Outputs of 1 - 1e-5 or so cancel in the backward pass of the softmax,
    which rounds each sample's gradient by 1e-3 in float32: the row check
    compared two such passes, warned that the network mixed its samples
    and computed them one at a time."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 100)
    )
    X = torch.randn(4000, 20)
    with torch.no_grad():
        net[2].weight.mul_(80)
        gap = 1 - torch.softmax(net(X), -1).max(1).values
    X = X[(gap > 1e-6) & (gap < 1e-4)][:16].numpy()  # confident, not exactly 1
    assert len(X) == 16

    def probabilities(out):
        return torch.softmax(out, -1)[:, :99]

    with warnings.catch_warnings():
        warnings.filterwarnings("error", "The network mixed the samples")
        warnings.simplefilter("ignore", SingularJacobianGramWarning)
        K = network_similarity(net, X, output=probabilities)
        one_by_one = network_similarity(net, X, output=probabilities, batch_size=1)
    # float32 rounding of the softmax's backward pass, 1e-3 of a gradient (by the
    # processor's BLAS: 1.6e-5 of a diagonal of 0.016 on one, 1e-5 on another)
    np.testing.assert_allclose(K, one_by_one, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("case", ["mlp", "cnn_batchnorm", "residual", "bert"])
def test_graphs_that_keep_their_rows_are_not_checked(case):
    """Past the first batch of a pass, the extra backward pass that finds
    reordered batches is made only for graphs with operations that can move
    rows."""
    module, X = _case(case)
    outputs = module(torch.as_tensor(X))
    assert not may_move_rows(leaf_uses(getattr(outputs, "logits", outputs))[1])
    for moving in (lambda z: z[torch.tensor([1, 0])], lambda z: z.flip(0)):
        assert may_move_rows(leaf_uses(moving(outputs))[1])
    assert not may_move_rows(leaf_uses(outputs[:, :1])[1])  # along axis 1


def test_params_of_a_layer_whose_hooks_never_run():
    """params= selects a layer called through its forward (no hooks run):
    its parameters are differentiated by the fallback."""
    module, X = _case("tied_bypassed")
    K = network_similarity(module, X, params="mix", batch_size=4)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(name.startswith("mix."))
    J = oracle_jacobians(module, X)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "cosine"), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("case", ["mlp_d3", "gru"])
def test_hooks_on_parameters_do_not_change_the_kernel(case):
    """A gradient hook on a parameter (scaling, masking) changes what training
    applies, not the derivatives: on every path, the one-sample loop of a
    GRU's Jacobians included."""
    module, X = _case(case)
    J = oracle_jacobians(module, X)
    hooks = [p.register_hook(lambda g: 1000 * g) for p in module.parameters()]
    K = network_similarity(module, X, kind="ntk", batch_size=3)
    for hook in hooks:
        hook.remove()
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7)


def test_int_output_selects_one_row():
    module, X = _case("mlp_d3")
    J = oracle_jacobians(module, X, output=1)
    K = network_similarity(module, X, output=1, kind="ntk")
    np.testing.assert_allclose(K, J[:, 0] @ J[:, 0].T, rtol=1e-10)


def test_callable_output_and_params_selection():
    module, X = _case("mlp_d3")
    J = oracle_jacobians(module, X)
    n_last = sum(p.numel() for p in module.out.parameters())
    J_last = J[:, :, -n_last:]
    summed = J_last.sum(axis=1)  # the callable sums the outputs
    K = network_similarity(
        module, X, kind="ntk", params="out", output=lambda z: z.sum(dim=1)
    )
    np.testing.assert_allclose(K, summed @ summed.T, rtol=1e-10)


@pytest.mark.parametrize("params", ["out", "out.weight", ["emb", "out.bias"]])
def test_params_select_a_tied_weight_by_any_of_its_names(params):
    """An output projection tied to the embedding: params="out" took out.bias
    alone (0.22 off) and "out.weight" matched no parameter, named_parameters()
    giving each tied parameter under its first name only."""
    module, X = _case("tied_embedding")
    J = oracle_jacobians(module, X)
    n_embedding, n_bias = module.emb.weight.numel(), module.out.bias.numel()
    if params == "out.weight":
        J = J[:, :, :n_embedding]
    else:  # the embedding's weight, which out's is, and out's bias
        J = np.concatenate([J[:, :, :n_embedding], J[:, :, -n_bias:]], axis=2)
    for kind in ("cosine", "ntk", "influence"):
        K = network_similarity(module, X, kind=kind, params=params, batch_size=4)
        np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-10)


def test_full_blocks_match_oracle_matrices():
    module, X = _case("mlp_d3")
    J = oracle_jacobians(module, X)
    blocks = network_similarity(module, X[:2], X, kind="ntk", reduce=None)
    expected = np.einsum("adp,bep->abde", J[:2], J)
    np.testing.assert_allclose(blocks, expected, rtol=1e-10)


def test_dict_input_for_multi_input_module():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 2)
            self.b = torch.nn.Linear(4, 2)

        def forward(self, left, right):
            return torch.tanh(self.a(left)) * self.b(right)

    torch.manual_seed(0)
    module = TwoInputs().double()
    X = {
        "left": np.random.RandomState(0).randn(5, 3),
        "right": np.random.RandomState(1).randn(5, 4),
    }
    K = network_similarity(module, X, kind="ntk")
    J = oracle_jacobians(module, X)
    np.testing.assert_allclose(K, np.einsum("adp,bdp->ab", J, J) / 2, rtol=1e-10)


class MaskedTokens(torch.nn.Module):
    """Token ids with their lengths, one per sample (shape ``(n,)``)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, tokens, lengths):
        kept = torch.arange(tokens.shape[1]) < lengths.reshape(-1, 1)
        h = torch.tanh(self.emb(tokens)) * kept[..., None]
        return self.head(h.sum(1) / lengths.reshape(-1, 1))


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_dict_input_with_a_value_per_sample(kind):
    torch.manual_seed(0)
    module = MaskedTokens().double()
    rng = np.random.RandomState(0)
    X = {"tokens": rng.randint(0, 11, (6, 5)), "lengths": np.array([5, 2, 3, 1, 4, 5])}
    J = oracle_jacobians(module, X)
    expected = oracle_kernel(J, J, kind)
    items = StackDataset(**{key: torch.as_tensor(value) for key, value in X.items()})
    for given in (X, items):
        K = network_similarity(module, given, kind=kind, batch_size=4)
        np.testing.assert_allclose(K, expected, rtol=1e-7, atol=1e-12)


@pytest.fixture(scope="module")
def resnet18():
    """A ResNet-18 with non-trivial BatchNorm statistics, and its Jacobians."""
    torch.manual_seed(0)
    X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    module = trained_batchnorm(ResNet18Logits().double(), X.double() * 2 + 1)
    X = X.double()
    return module, X, oracle_jacobians(module, X)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_resnet18_kernel_matches_oracle(resnet18, kind):
    module, X, J = resnet18
    K = network_similarity(module, X, kind=kind, batch_size=2)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_inputs_of_other_sizes_pair_across_forms(kind):
    """A layer's form, factors or materialised gradients, depends on its
    positions: long sequences or large images pair with short or small ones."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).double()
    images = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cases = [
        (
            TokenModel().double(),
            torch.randint(0, 11, (3, 6), generator=g),
            torch.randint(0, 11, (2, 2), generator=g),
        ),
        (cnn, images(3, 3, 16, 16), images(2, 3, 2, 2)),
    ]
    for module, X, Y in cases:
        for left, right in ((X, Y), (Y, X)):
            K = network_similarity(module, left, right, kind=kind)
            J_left, J_right = (
                oracle_jacobians(module, left),
                oracle_jacobians(module, right),
            )
            expected = oracle_kernel(J_left, J_right, kind)
            np.testing.assert_allclose(K, expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("compiled", ["whole", "submodule"])
def test_compiled_network_matches_oracle(compiled):
    """A compiled graph hides the layers' calls from the hooks: the engine
    computes on the module torch.compile wrapped, or leaves the layers whose
    pieces differ from autograd's gradients to torch.func."""
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh())
    module = torch.nn.Sequential(body, torch.nn.Linear(8, 3)).double()
    X = torch.randn(6, 5, dtype=torch.float64)
    J = oracle_jacobians(module, X)  # before compiling: autograd goes through once
    if compiled == "whole":
        module = torch.compile(module, backend="aot_eager")
    else:
        module[0] = torch.compile(body, backend="aot_eager")
    for kind in ("cosine", "ntk", "influence"):
        K = network_similarity(module, X[:4], X, kind=kind, batch_size=3)
        np.testing.assert_allclose(
            K, oracle_kernel(J[:4], J, kind), rtol=1e-7, atol=1e-12
        )


def test_a_compiled_submodule_is_not_recompiled_by_every_call():
    """torch.compile traced sksim's hook on saved tensors, whose records its
    guards read: each call compiled the submodule again, up to dynamo's limit
    (19 frames after three calls, 28 after four more)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
    module = torch.nn.Sequential(torch.compile(body, backend="aot_eager"))
    module.append(torch.nn.Linear(6, 3))
    rng = np.random.RandomState(0)

    def calls(n):
        for _ in range(n):
            network_similarity(module, rng.randn(7, 4).astype(np.float32), batch_size=3)
        return counters["frames"]["total"]

    warm = calls(3)
    assert calls(4) == warm


@pytest.mark.parametrize("case", ["tokens", "tied_embedding"])
def test_embeddings_scaling_gradients_by_frequency_give_the_derivatives(case):
    """scale_grad_by_freq scales autograd's gradients, a training heuristic:
    the kernel is of the derivatives, on the hooked and the torch.func path."""
    module, X = _case(case)
    J = oracle_jacobians(module, X)  # as built: no scaling
    embeddings = [m for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    for embedding in embeddings:
        embedding.scale_grad_by_freq = True
    K = network_similarity(module, X, kind="ntk", batch_size=4)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7, atol=1e-12)
    assert all(embedding.scale_grad_by_freq for embedding in embeddings)


@pytest.mark.parametrize("case", ["tokens", "tied_embedding"])
def test_module_backward_hooks_that_change_gradients_leave_the_derivatives(case):
    """Module backward hooks change autograd's gradients (and ran on every
    pass): the kernel is of the derivatives, and the hooks stay registered."""
    module, X = _case(case)
    J = oracle_jacobians(module, X)
    calls = []
    leaves = [m for m in module.modules() if not list(m.children())]
    doubling = leaves[-1].register_full_backward_pre_hook(lambda m, g: (2 * g[0],))
    counting = leaves[0].register_full_backward_hook(lambda *_: calls.append(1))
    for kind in ("cosine", "ntk", "influence"):
        K = network_similarity(module, X, kind=kind, batch_size=4)
        np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-7, atol=1e-12)
    assert calls == []
    assert doubling.id in leaves[-1]._backward_pre_hooks
    assert counting.id in leaves[0]._backward_hooks
    with evaluation_mode(module):  # hooks added or removed inside stay so
        later = leaves[0].register_full_backward_hook(lambda *_: None)
        counting.remove()
    assert list(leaves[0]._backward_hooks) == [later.id]
    global_hook = torch.nn.modules.module.register_module_full_backward_hook(
        lambda *_: calls.append(1)
    )
    try:  # global hooks are not looked up either
        K = network_similarity(module, X, kind="ntk", batch_size=4)
    finally:
        global_hook.remove()
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-7, atol=1e-12)
    assert calls == []


def test_callable_output_receives_a_tuple_as_the_network_returns_it():
    """An int or "logits" reads the first item; a callable sees the tuple."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(5, 6)
            self.heads = torch.nn.ModuleList(torch.nn.Linear(6, 3) for _ in range(2))

        def forward(self, x):
            h = torch.tanh(self.body(x))
            return self.heads[0](h), self.heads[1](h)

    torch.manual_seed(0)
    module = TwoHeads().double()
    X = torch.randn(5, 5, dtype=torch.float64)

    class Head(torch.nn.Module):  # the oracle's view: one head alone
        def __init__(self, i):
            super().__init__()
            self.net, self.i = module, i

        def forward(self, x):
            return self.net(x)[self.i]

    first, second = (oracle_jacobians(Head(i), X) for i in (0, 1))
    K = network_similarity(module, X, kind="ntk", output=lambda out: out[1])
    np.testing.assert_allclose(K, oracle_kernel(second, second, "ntk"), rtol=1e-10)
    K = network_similarity(module, X, kind="ntk")
    np.testing.assert_allclose(K, oracle_kernel(first, first, "ntk"), rtol=1e-10)


class MixedPrecision(torch.nn.Module):
    """A float32 body and a float64 head: pieces of both dtypes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 3).double()

    def forward(self, x):
        return self.head(self.body(x).double())


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_layers_in_other_dtypes_pair_in_the_widest(kind):
    module = MixedPrecision()
    X = torch.randn(6, 5)
    expected = oracle_kernel(*[oracle_jacobians(module, X)] * 2, kind)
    K = network_similarity(module, X, kind=kind, batch_size=4)
    np.testing.assert_allclose(K, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_half_precision_gradients_pair_in_float32(dtype, kind):
    """On raw 0..255 pixels the gradients fit half precision, but their
    products do not (its largest value is 65504)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    with torch.no_grad():
        module[0].weight.mul_(0.01)
    module = module.to(dtype)
    X = torch.randint(0, 256, (6, 64)).float()
    J = oracle_jacobians(module, X.to(dtype))
    assert (np.einsum("idp,idp->i", J, J) > 65504).all()  # past half precision
    expected = oracle_kernel(J, J, kind)
    K = network_similarity(module, X, kind=kind, batch_size=4)
    np.testing.assert_allclose(
        K, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()
    )
    sketched = network_similarity(module, X, kind=kind, n_components=8)
    assert np.isfinite(sketched).all()


class EncoderClassifier(torch.nn.Module):
    """Token ids -> a batch-first transformer encoder layer -> mean -> logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(11, 8)
        self.encoder = torch.nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = torch.nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.emb(tokens)).mean(dim=1))


@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_attention_runs_batched_without_torch_warnings(kind):
    """Fused attention kernels have no vmap rule (torch warns, per call):
    the math kernel computes the same, batched."""
    module = EncoderClassifier().eval()
    X = torch.randint(0, 11, (5, 6), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # "error" makes torch's warning an error
        K = network_similarity(module, X, kind=kind, batch_size=5)
    assert [str(w.message) for w in caught] == []
    J = oracle_jacobians(module, X)
    np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-4, atol=1e-5)


class PackedGRU(torch.nn.Module):
    """A GRU over padded sequences packed by their given lengths."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(9, 4)
        self.gru = torch.nn.GRU(4, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, tokens, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return self.head(h[-1])


def test_packed_sequences_run_without_torch_warnings():
    """torch warned at every call that packing has no vmap rule."""
    torch.manual_seed(0)
    module = PackedGRU().double()
    tokens = torch.randint(1, 9, (5, 6), generator=torch.Generator().manual_seed(0))
    X = dict(tokens=tokens, lengths=torch.tensor([6, 4, 6, 2, 5]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # "error" makes torch's warning an error
        K = network_similarity(module, X, kind="ntk", batch_size=5)
    assert [str(w.message) for w in caught] == []
    J = oracle_jacobians(module, X)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-9, atol=1e-12)
