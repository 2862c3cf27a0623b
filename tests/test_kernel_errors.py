"""Every error and warning the kernel raises, with its message."""

import copy
import pickle
import re
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import (
    MLP,
    NaNRows,
    make_digits_net,
    oracle_jacobians,
    oracle_kernel,
)
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor

from sksim import (
    GradientDensityEstimator,
    NetworkNeighbors,
    NetworkSimilarityKernel,
    NonFiniteNetworkError,
    SingularJacobianGramWarning,
    gradient_features,
    network_similarity,
    relative_sensitivity,
)
from sksim._engine.jacobian import JacobianEngine
from sksim._engine.parallel import tiled_kernel
from sksim._net import training_targets
from sksim._validation import check_net_input
from sksim.representations import extract_representations

X = np.random.RandomState(0).randn(6, 5).astype(np.float32)

KINDS = ("cosine", "ntk", "influence")


@pytest.fixture
def module():
    torch.manual_seed(0)
    return MLP()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_inputs(module, bad):
    X_bad = X.copy()
    X_bad[[2, 4], 1] = bad
    rows = r"NaN or infinity in rows \[2, 4\]"
    with pytest.raises(ValueError, match=rows):
        network_similarity(module, X_bad)
    with pytest.raises(ValueError, match=rows):
        network_similarity(module, {"x": X_bad}, output=0)
    with pytest.raises(ValueError, match=rows):
        NetworkSimilarityKernel(module).fit(X_bad)
    with pytest.raises(ValueError, match=rows):
        NetworkSimilarityKernel(module).fit(X).transform(X_bad)
    with pytest.raises(ValueError, match=f"Input Y contains {rows}"):
        network_similarity(module, X, X_bad)
    with pytest.raises(ValueError, match=f"Input Y contains {rows}"):
        network_similarity(module, X, torch.as_tensor(X_bad))
    search = NetworkNeighbors(module, n_neighbors=2, n_components=8, algorithm="faiss")
    with pytest.raises(ValueError, match=f"Input X_val contains {rows}"):
        search.fit(X, X_val=X_bad)


def test_inputs_and_networks_without_values_are_explained(module):
    """Meta tensors, uninitialised lazy layers, Y the network cannot take."""
    meta = torch.empty(6, 5, device="meta")
    with pytest.raises(ValueError, match="X is on the meta device"):
        network_similarity(module, meta)
    with pytest.raises(ValueError, match="X is on the meta device"):
        NetworkSimilarityKernel(module).fit(X).transform(meta)
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        network_similarity(module, X, device="meta")
    with pytest.raises(ValueError, match=r"\['fc1.weight', .* on the meta device"):
        network_similarity(MLP().to("meta"), X)
    lazy = torch.nn.Sequential(torch.nn.LazyLinear(3))
    with pytest.raises(ValueError, match="not initialised yet"):
        network_similarity(lazy, X)
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(4,\)"):
        network_similarity(module, X, X[:, :4])


def test_wrong_number_of_features(module):
    kern = NetworkSimilarityKernel(module).fit(X)
    with pytest.raises(
        ValueError, match="X has 4 features, but NetworkSimilarityKernel"
    ):
        kern.transform(X[:, :4])


def test_unfitted_net_without_y():
    with pytest.raises(ValueError, match="not fitted and no y was given"):
        NetworkSimilarityKernel(make_digits_net()).fit(np.zeros((4, 64), np.float32))


def test_targets_of_an_unfitted_net_are_checked_and_cast():
    """Label j is output j, int64 as the cross-entropy needs; a regressor's 1-D
    targets are a column, as its outputs are, not broadcast against them."""
    rng = np.random.RandomState(0)
    Xd, y = rng.rand(40, 64).astype(np.float32), np.arange(40) % 10

    def kernel(net, targets):
        return NetworkSimilarityKernel(net, random_state=0).fit_transform(Xd, targets)

    expected = kernel(make_digits_net(max_epochs=2), y)
    one_hot = np.eye(10)[y]
    for given in (y.astype(np.int32), y.astype(float), list(y), y[:, None], one_hot):
        np.testing.assert_array_equal(
            kernel(make_digits_net(max_epochs=2), given), expected
        )
    soft = one_hot * 0.9 + 0.01  # label smoothing: not one label per sample
    for bad in (
        np.array(list("abcdefghij"))[y],
        y - 1,
        np.where(y == 0, np.nan, y),
        soft,
    ):
        with pytest.raises(ValueError, match="learns label j as its output j"):
            kernel(make_digits_net(max_epochs=2), bad)
    # labels 1 to 10 for 10 outputs: torch's bare "Target 10 is out of bounds"
    beyond = r"outputs \(Target 10 .*hold 10 classes, from 1 to 10: give the"
    with pytest.raises(ValueError, match=beyond):
        kernel(make_digits_net(max_epochs=2), np.where(y == 0, 10, y))
    regressor = NeuralNetRegressor(
        MLP, module__n_in=64, module__n_out=1, max_epochs=2, train_split=None, verbose=0
    )
    t = (y / 10).astype(np.float32)
    np.testing.assert_array_equal(kernel(regressor, t), kernel(regressor, t[:, None]))


def test_inputs_the_network_cannot_take_fail_in_fit(module):
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(4,\) per sample"):
        NetworkSimilarityKernel(module).fit(X[:, :4])


def test_object_inputs_and_missing_devices_are_refused(module):
    frame = pd.DataFrame(X, columns=list("vwxyz")).assign(
        z=pd.Categorical(list("abcabc"))
    )
    with pytest.raises(ValueError, match="not numbers .* OneHotEncoder"):
        NetworkSimilarityKernel(module).fit(frame)
    with pytest.raises(ValueError, match="this machine has 0 CUDA device"):
        NetworkSimilarityKernel(module, device="cuda").fit(X)
    with pytest.raises(ValueError, match="'banana' is not a torch device"):
        network_similarity(module, X, device="banana")
    with pytest.raises(ValueError, match="MPS has no float64 tensors"):
        network_similarity(module, X, device="mps")


def test_representations_and_sensitivity_check_their_device(module):
    images = torch.zeros(4, 1, 6, 6)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    with pytest.raises(ValueError, match="this machine has 0 CUDA device"):
        extract_representations(module, X, ["0"], device="cuda")
    with pytest.raises(ValueError, match="this machine has 0 CUDA device"):
        relative_sensitivity(conv, images, layers=["0"], device="cuda")
    with pytest.raises(ValueError, match="MPS has no float64 tensors"):
        relative_sensitivity(conv, images, layers=["0"], device="mps")
    if not torch.backends.mps.is_available():  # extraction needs no float64
        with pytest.raises(ValueError, match="MPS is not available here"):
            extract_representations(module, X, ["0"], device="mps")


def test_unused_parameters_inference_mode_and_model_outputs_are_explained(module):
    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(5, 2), torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"do not depend on .*\['unused.weight'"):
        network_similarity(Unused(), X, params="unused")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        network_similarity(module, X)

    class Outputs(dict):  # as a Hugging Face model returns its logits
        def __init__(self, logits):
            super().__init__(logits=logits)
            self.logits = logits

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x):
            return Outputs(self.inner(x))

    expected = network_similarity(module, X)  # the "logits" item, by default
    np.testing.assert_array_equal(network_similarity(Named(), X), expected)
    np.testing.assert_array_equal(
        network_similarity(Named(), X, output=lambda out: out.logits), expected
    )


def test_unfitted_skorch_net_in_function():
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        network_similarity(make_digits_net(), np.zeros((4, 64), np.float32))


def test_transform_before_fit(module):
    with pytest.raises(NotFittedError):
        NetworkSimilarityKernel(module).transform(X)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_softmax_output_warns_singular_gram(module, n_jobs):
    """Also from the worker processes of ``n_jobs``, which would only print it."""
    probabilities = torch.nn.Sequential(module, torch.nn.Softmax(dim=1))
    with pytest.warns(SingularJacobianGramWarning, match="Softmax or log-softmax"):
        K = network_similarity(probabilities, X, n_jobs=n_jobs)
    assert np.all(np.isfinite(K))


def test_batchnorm_with_batch_statistics_is_refused():
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 4),
        torch.nn.BatchNorm1d(4, track_running_stats=False),
        torch.nn.Linear(4, 2),
    )
    with pytest.raises(
        ValueError, match=r"BatchNorm layer\(s\) \['1'\] use batch statistics"
    ):
        network_similarity(module, X)


def test_bad_parameters(module):
    with pytest.raises(ValueError, match="'kind' parameter of network_similarity"):
        network_similarity(module, X, kind="euclid")
    with pytest.raises(ValueError, match="'kind' parameter of NetworkSimilarityK"):
        NetworkSimilarityKernel(module, kind="euclid").fit(X)
    with pytest.raises(
        ValueError, match="'reduce' parameter .* among .'trace'. or None"
    ):
        network_similarity(module, X, reduce="mean")
    for rtol in (2.0, 0):  # a zero eigenvalue has no inverse
        with pytest.raises(ValueError, match=r"'rtol' parameter .* range \(0.0, 1.0\)"):
            network_similarity(module, X, rtol=rtol)
    with pytest.raises(ValueError, match=r"'batch_size' parameter .* range \[1, inf"):
        network_similarity(module, X, batch_size=0)
    with pytest.raises(
        ValueError, match="output=7 is out of range for a network with 3"
    ):
        network_similarity(module, X, output=7)
    with pytest.raises(ValueError, match=r"shape \(\).*\.squeeze\(-1\)"):
        network_similarity(module, X, output=lambda out: out[:, :1].squeeze())
    with pytest.raises(ValueError, match=r"shape \(1, 0\): no output per sample"):
        network_similarity(module, X, output=lambda out: out[:, :0])
    with pytest.raises(ValueError, match="'output' parameter .* or a callable"):
        network_similarity(module, X, output="probabilities")
    with pytest.raises(
        ValueError, match=r"params \['conv'\] match no trainable parameter"
    ):
        network_similarity(module, X, params=["conv"])
    with pytest.raises(TypeError, match="net must be a skorch net"):
        network_similarity("my-net", X)


def test_pipelines_and_torchscript_are_refused_with_what_to_pass():
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh())
    with pytest.raises(TypeError, match=r"got Pipeline: pass the pipeline's net"):
        network_similarity(make_pipeline(StandardScaler()), X)
    traced = torch.jit.trace(module, torch.as_tensor(X[:2]))
    for scripted in (torch.jit.script(module), traced):
        with pytest.raises(TypeError, match="here 'the network'.*nn.Modules they"):
            network_similarity(scripted, X)
    # as a part of an eager network (a traced part left it in eval mode, its
    # backward hooks off for good; a scripted one failed on a list of names)
    for part in torch.jit.script(module), traced, torch.jit.script(torch.nn.Tanh()):
        outer = torch.nn.Sequential(part, torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
        outer.train()
        with pytest.raises(TypeError, match="here '0'"):
            network_similarity(outer, X)
        assert all(m.training for m in outer.modules())


def test_frozen_parameters_only():
    module = torch.nn.Linear(5, 2)
    module.requires_grad_(False)
    with pytest.raises(ValueError, match=r"call module.requires_grad_\(True\)"):
        network_similarity(module, X)
    module.requires_grad_(True)  # as the error says
    assert network_similarity(module, X).shape == (len(X), len(X))


def test_dict_input_lengths_must_agree():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, a, b):
            return self.lin(a + b)

    with pytest.raises(ValueError, match="same number of samples; got lengths"):
        network_similarity(Two(), {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    # a constant argument (ViT's interpolate_pos_encoding=True) failed inside
    # scikit-learn's check_array, naming neither the key nor what to do
    for constant in (True, torch.tensor(2.0), np.float32(1)):
        with pytest.raises(ValueError, match=r"values \['b'\] hold one value, not"):
            network_similarity(Two(), {"a": np.zeros((3, 2)), "b": constant})


def test_memory_bound_reblocks_or_explains(module):
    K = network_similarity(module, X)
    small = sum(p.numel() for p in module.parameters()) * 4 * 3 * 4  # a few samples
    np.testing.assert_allclose(network_similarity(module, X, max_memory=small), K)
    with pytest.raises(
        MemoryError,
        match=r"single sample take more than a third of max_memory \(.+ at least, "
        r"against 33 bytes of 100 bytes\): raise max_memory \(to \d+ bytes",
    ) as raised:
        network_similarity(module, X, max_memory=100)
    # the figure asked for is enough (it counted the pieces up to the budget's
    # end: raised to it, five tries on a CNN)
    enough = int(re.search(r"to (\d+) bytes", str(raised.value)).group(1))
    fits = network_similarity(module, X, max_memory=enough)
    np.testing.assert_allclose(fits, K, rtol=1e-6)  # float32: other blocks


def test_tensor_inputs_are_checked_where_they_live(module):
    X_bad = torch.from_numpy(X.copy())
    X_bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        network_similarity(module, X_bad)
    with pytest.raises(ValueError, match="at least two dimensions"):
        network_similarity(module, torch.zeros(5))
    with pytest.raises(ValueError, match="real tensor"):
        network_similarity(module, torch.zeros(2, 5, dtype=torch.complex64))
    np.testing.assert_array_equal(
        network_similarity(module, torch.from_numpy(X)), network_similarity(module, X)
    )


def test_large_finite_tensor_whose_sum_overflows_is_accepted():
    big = torch.full((2, 5), 3e38)
    assert not torch.isfinite(big.sum())
    torch.testing.assert_close(check_net_input(big, keep_tensors=True), big)


@pytest.mark.parametrize("n_components", [None, 8])
def test_nan_outputs_name_the_rows(n_components):
    X_bad = X.copy()
    X_bad[:, 0] = 0
    X_bad[[3, 5], 0] = 2.0
    with pytest.raises(
        ValueError, match=r"NaN or infinite outputs for input rows \[3, 5\]"
    ):
        network_similarity(NaNRows(), X_bad, n_components=n_components)
    dens = GradientDensityEstimator(NaNRows(), method="hard")
    with pytest.raises(NonFiniteNetworkError, match="diverged training"):
        dens.fit(X_bad).neighbor_counts(X_bad)


class NaNAdded(torch.nn.Module):
    """A linear map plus NaN on the rows whose first feature is large: its
    outputs there are NaN, its gradients finite."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x) + torch.where(x[:, :1] > 1.5, float("nan"), 0.0)


@pytest.mark.parametrize("whiten", [True, False])
def test_nan_outputs_with_finite_gradients_name_the_rows(whiten):
    X_bad = X.copy()
    X_bad[:, 0] = 0
    X_bad[[3, 5], 0] = 2.0
    with pytest.raises(
        NonFiniteNetworkError, match=r"NaN or infinite outputs for input rows \[3, 5\]"
    ):
        gradient_features(NaNAdded(), X_bad, whiten=whiten)


class NaNPast(torch.nn.Module):
    """An MLP whose outputs are infinite on the rows whose first feature is past
    its ``_limit``, which may change after fit unseen: the fitted estimators'
    check of the network reads its public settings, not its private ones."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)
        self._limit = 1.5

    def forward(self, x):
        return self.fc(x) / (x[:, :1] < self._limit)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_nan_rows_name_their_inputs(n_jobs):
    """Rows of queries are input rows, rows of the reference set are named so;
    tiles and chunks of rows name the rows of the whole inputs."""
    with joblib.parallel_config(backend="threading"):  # no processes to start
        _check_nan_rows_named(n_jobs)


def _check_nan_rows_named(n_jobs):
    ok, bad = X.copy(), X.copy()
    ok[:, 0] = bad[:, 0] = 0
    bad[[3, 5], 0] = 2.0
    net = NaNPast()
    reference = r"outputs for rows \[3, 5\] of the reference inputs \(the X given"
    with pytest.raises(NonFiniteNetworkError, match=reference):
        network_similarity(net, ok, bad, n_jobs=n_jobs)
    with pytest.raises(NonFiniteNetworkError, match=r"for input rows \[3, 5\]:"):
        network_similarity(net, bad, ok, n_jobs=n_jobs)
    with pytest.raises(NonFiniteNetworkError, match=r"for input rows \[3, 5\]:"):
        network_similarity(net, bad, n_jobs=n_jobs)
    net._limit = 3.0  # finite at fit; the network changes after it
    density = GradientDensityEstimator(net, method="hard", n_jobs=n_jobs).fit(bad)
    search = NetworkNeighbors(net, n_neighbors=2, n_jobs=n_jobs).fit(bad)
    net._limit = 1.5
    with pytest.raises(NonFiniteNetworkError, match=reference):
        density.neighbor_counts(ok)
    with pytest.raises(NonFiniteNetworkError, match=reference):
        search.kneighbors(ok)
    with pytest.raises(NonFiniteNetworkError, match=r"for input rows \[3, 5\]:"):
        GradientDensityEstimator(net, method="soft", n_jobs=n_jobs).fit(
            ok
        ).neighbor_counts(bad)


def test_nan_rows_of_a_tile_are_those_of_the_whole_inputs():
    ok, bad = X.copy(), X.copy()
    ok[:, 0] = bad[:, 0] = 0
    bad[[4, 5], 0] = 2.0
    engine = JacobianEngine(NaNPast())
    cases = [((bad,), "input"), ((ok, bad), "the reference"), ((bad, ok), "input")]
    for kind in ("cosine", "influence"):
        for args, inputs in cases:
            with pytest.raises(NonFiniteNetworkError) as error:
                tiled_kernel(engine, *args, kind=kind, tile=2)
            assert error.value.rows == [4, 5]  # in the third tile
            assert error.value.inputs.startswith(inputs)


def test_nan_weights_and_gradients_are_refused(module):
    broken = copy.deepcopy(module)
    with torch.no_grad():
        broken.out.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteNetworkError, match=r"rows \[0, 1, 2, 3, 4\] and more"):
        network_similarity(broken, X)

    class InfiniteGradient(torch.nn.Module):  # sqrt at 0: a finite output
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(5, 1)

        def forward(self, x):
            return torch.sqrt(self.fc(x) * (x[:, :1] > 0))

    X_pos = np.abs(X)
    X_pos[4, 0] = -1.0
    with pytest.raises(NonFiniteNetworkError, match=r"gradients for input rows \[4\]"):
        network_similarity(InfiniteGradient(), X_pos, kind="ntk")


@pytest.mark.parametrize(
    "output, message",
    [
        (
            lambda z: z.T,
            r"shape \(3, (\d)\); expected .* \(B=\1, the samples of the batch\)",
        ),
        (lambda z: z[:-1], r"shape \((\d), 3\); expected a tensor of shape \(B,\)"),
        (lambda z: z.detach(), "cut from the network's graph"),
        (lambda z: z.detach().numpy(), "returned ndarray; expected a tensor"),
        (lambda z: z.argmax(dim=1), "dtype torch.int64; expected floating"),
        (lambda z: z[:, :, None, None], r"shape \(\d, 3, 1, 1\)"),
    ],
)
def test_output_callables_are_checked(module, output, message):
    with pytest.raises((ValueError, TypeError), match=message):
        network_similarity(module, X, output=output, kind="ntk")


class Returns(torch.nn.Module):
    """A linear map whose outputs come back wrapped by ``wrap``."""

    def __init__(self, wrap):
        super().__init__()
        self.fc, self.wrap = torch.nn.Linear(5, 3), wrap

    def forward(self, x):
        return self.wrap(self.fc(x))


@pytest.mark.parametrize(
    "wrap, hint",
    [
        (lambda z: {"hidden": 1, "scores": z}, r"output=lambda out: out\['scores'\]"),
        (lambda z: SimpleNamespace(logits=z), "output=lambda out: out.logits"),
        (lambda z: None, "Select the tensor to compare with output=, a callable"),
    ],
)
def test_networks_returning_no_tensor_are_told_how_to_select_one(wrap, hint):
    with pytest.raises(TypeError, match=hint):
        network_similarity(Returns(wrap), X)


def test_a_loss_returned_first_is_not_taken_for_the_outputs():
    """A Hugging Face model with return_dict=False returns (loss, logits) when
    its inputs hold labels: the loss was read as the outputs, and the error
    said to squeeze the last axis alone, which no .squeeze() had done."""
    with_loss = Returns(lambda z: (z.pow(2).mean(), z))
    with pytest.raises(ValueError, match=r"a loss, as a Hugging Face model") as error:
        network_similarity(with_loss, X)
    assert str(error.value).endswith(
        "Leave the labels out of the inputs, or select them with "
        "output=lambda out: out[1]."
    )
    plain = Returns(lambda z: z)
    plain.fc = with_loss.fc
    advised = network_similarity(with_loss, X, kind="ntk", output=lambda o: o[1])
    np.testing.assert_allclose(advised, network_similarity(plain, X, kind="ntk"))


class RandomInEval(torch.nn.Module):
    """Dropout applied whatever the module's mode: each call differs."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.dropout(x, 0.5, training=True))


class TaskHeads(torch.nn.Module):
    """One head per task, chosen for the whole batch by its first input."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(5, 4)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(4, 2) for _ in range(2))

    def forward(self, x):
        return self.heads[int(x[0, 0] > 0)](torch.tanh(self.body(x)))


def test_outputs_that_are_not_per_sample_are_refused(module):
    """Outputs that mix the batch's samples or change from call to call."""
    coupled = "depend on the other inputs of its batch, or change from call to call"
    with pytest.raises(ValueError, match=coupled):  # an output= that mixes rows
        network_similarity(module, X, output=lambda z: z - z.mean(0, keepdim=True))
    with pytest.raises(ValueError, match=coupled):
        network_similarity(RandomInEval(), X)
    with pytest.raises(ValueError, match=r"call to call \(to NaN or infinity\)"):
        # a statistic of the batch, infinite for one sample alone
        network_similarity(module, X, output=lambda z: z / (len(z) - 1))
    positive, negative = np.abs(X), -np.abs(X)
    with pytest.raises(
        ValueError, match=r"ran the layers \['body', 'heads.\d'\] for input rows 0 to 5"
    ):
        network_similarity(TaskHeads(), positive, negative)
    mixed = np.concatenate([positive[:3], negative[:3]])
    with pytest.raises(ValueError, match="for input rows 3 to 5"):
        network_similarity(TaskHeads(), mixed, batch_size=3)


class FirstRowLength(torch.nn.Module):
    """Pools every sequence at the first one's length (``mask[0].sum()``)."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, ids, mask):
        length = int(mask[0].sum())
        return self.fc(torch.tanh(self.embedding(ids[:, :length])).mean(1))


@pytest.mark.parametrize("alike", ["identical", "lengths"])
def test_a_batch_dependence_hidden_by_the_first_two_rows_is_refused(alike):
    """The check compared rows 0 and 1 alone with the two together: when they
    agree on what the network reads across its batch (identical rows, or two
    sequences truncated to one length), it passed, and the kernel depended on
    batch_size (0.53 off the per-sample one at batch_size=3)."""
    rng = np.random.RandomState(0)
    coupled = "depend on the other inputs of its batch, or change from call to call"
    if alike == "identical":  # a statistic of the batch, equal for equal rows
        inputs = X.copy()
        inputs[1] = inputs[0]
        with pytest.raises(ValueError, match=coupled):
            network_similarity(
                torch.nn.Linear(5, 3), inputs, output=lambda z: z - z.mean(0)
            )
        return
    lengths = np.array([6, 6, 2, 4, 5, 3])
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.randint(1, 20, size=(6, 6)) * mask
    with pytest.raises(ValueError, match=coupled):
        network_similarity(FirstRowLength(), {"ids": ids, "mask": mask})


def test_cached_parametrisations_are_refused():
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh())
    torch.nn.utils.parametrizations.weight_norm(net[0])
    with torch.nn.utils.parametrize.cached():
        with pytest.raises(ValueError, match="inside torch.nn.utils.parametrize"):
            network_similarity(net, X)


def test_network_working_in_place_leaves_the_data_unchanged():
    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(torch.nn.functional.relu(x.mul_(2), inplace=True))

    torch.manual_seed(0)
    module, data = InPlace(), X.copy()
    kern = NetworkSimilarityKernel(module, kind="ntk").fit(data)
    first = kern.transform(data)
    np.testing.assert_array_equal(data, X)
    np.testing.assert_array_equal(kern.X_fit_, X)
    np.testing.assert_allclose(kern.transform(data), first)  # not doubled again
    tensor = torch.from_numpy(X.copy())
    network_similarity(module, tensor, kind="ntk", n_components=4)
    np.testing.assert_array_equal(tensor.numpy(), X)


@pytest.mark.parametrize("bag", [False, True])
def test_embedding_renormalising_in_place_leaves_the_network_unchanged(bag):
    """Embedding(max_norm=...) renormalises the rows it looks up at every
    forward pass: the kernel is that of the renormalised network, computed
    on a copy. An EmbeddingBag's rows were left renormalised (up to 7 off)."""
    torch.manual_seed(0)
    layers = (
        [torch.nn.EmbeddingBag(12, 4, max_norm=0.5), torch.nn.Linear(4, 2)]
        if bag
        else [
            torch.nn.Embedding(12, 4, max_norm=0.5),
            torch.nn.Flatten(),
            torch.nn.Linear(12, 2),
        ]
    )
    module = torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        module[0].weight.mul_(3)  # rows above max_norm
    tokens = torch.randint(0, 12, (5, 3))
    before = copy.deepcopy(module.state_dict())
    K = network_similarity(module, tokens, kind="ntk")
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
    renormalised = copy.deepcopy(module)
    renormalised(tokens)  # renormalises the rows of these tokens, once and for all
    J = oracle_jacobians(renormalised, tokens)
    np.testing.assert_allclose(K, oracle_kernel(J, J, "ntk"), rtol=1e-10)


def test_a_sparse_embeddings_gradients_are_those_of_the_dense_one():
    """A sparse EmbeddingBag's per-sample gradients failed to be flattened."""
    torch.manual_seed(0)
    dense = torch.nn.Sequential(
        torch.nn.EmbeddingBag(20, 5, mode="sum"), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    )
    sparse = copy.deepcopy(dense)
    sparse[0].sparse = True
    tokens = torch.randint(0, 20, (7, 4))
    for kind in KINDS:
        np.testing.assert_allclose(
            network_similarity(sparse, tokens, kind=kind, batch_size=3),
            network_similarity(dense, tokens, kind=kind, batch_size=3),
            rtol=1e-6,
            atol=1e-7,
        )


class Autocast(torch.nn.Module):
    """A float32 network whose forward runs in bfloat16 under autocast."""

    def __init__(self, autocast=True):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3)
        self.out = torch.nn.Linear(12, 3)
        self.autocast = autocast

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.out(torch.tanh(self.conv(x)).flatten(1))


def test_autocast_in_the_forward_is_followed_and_around_sksim_refused():
    """Autocast inside the forward crashed on a layer input of float32 with a
    signal of bfloat16; around sksim's call, its own products were formed in
    bfloat16 (5e-3 off)."""
    torch.manual_seed(0)
    module, plain = Autocast(), Autocast(autocast=False)
    plain.load_state_dict(module.state_dict())
    X = torch.randn(7, 2, 6)
    for kind in KINDS:
        K = network_similarity(module, X, kind=kind, batch_size=3)
        expected = network_similarity(plain, X, kind=kind, batch_size=3)
        error = np.abs(K - expected).max() / np.abs(expected).max()
        assert 1e-5 < error < 2e-2  # bfloat16's rounding, not float32's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="inside a torch.autocast block"):
            network_similarity(plain, X)


def test_several_inputs_in_a_list_are_told_to_go_in_a_dict():
    """NumPy's "inhomogeneous shape" error said nothing of the dict route."""
    images, features = np.zeros((4, 2, 3, 3)), np.zeros((4, 5))
    for X in [images, features], (images, features):
        with pytest.raises(ValueError, match=r"several shapes.*as a dict of them"):
            network_similarity(torch.nn.Linear(5, 2), X)


class FailsInForward(torch.nn.Module):
    def __init__(self, error):
        super().__init__()
        self.linear, self.error = torch.nn.Linear(3, 2), error

    def forward(self, x):
        raise self.error


def test_only_shape_and_dtype_errors_are_blamed_on_the_inputs():
    """Every RuntimeError of the first sample was said to be the inputs' shape."""
    X = np.zeros((4, 3), np.float32)
    cases = (
        ("mat1 and mat2 shapes cannot be multiplied", r"\): pass inputs shaped as"),
        ("expected scalar type Long", r"\): pass inputs of the dtype the network"),
        ("weights not loaded", r"\)\.$"),
    )
    for text, advice in cases:
        with pytest.raises(ValueError, match=re.escape(text) + advice):
            network_similarity(FailsInForward(RuntimeError(text)), X)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        network_similarity(FailsInForward(torch.OutOfMemoryError("out of memory")), X)


def test_unpadded_token_lists_are_told_to_be_padded():
    """NumPy's "inhomogeneous shape" error said nothing of padding."""
    embed = torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.Flatten())
    ragged = [[5, 6, 7], [8, 9]]
    padding = r"lists of different lengths \(from 2 to 3\).*pad them to one length"
    for X, name in (
        (ragged, "X"),
        (np.array(ragged, dtype=object), "X"),
        ({"input": ragged}, "input"),
    ):
        with pytest.raises(ValueError, match=f"^{name} holds " + padding):
            network_similarity(embed, X)
    padded = network_similarity(embed, [[5, 6, 7], [8, 9, 0]])
    assert padded.shape == (2, 2)


def test_rows_held_one_per_cell_are_stacked():
    """An object array (or pandas column) of equal-length token lists got
    NumPy's "setting an array element with a sequence"."""
    embed = torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.Flatten())
    tokens = [[5, 6, 7], [8, 9, 0], [1, 2, 3]]
    expected = network_similarity(embed, np.array(tokens))
    cells = np.empty(3, dtype=object)
    cells[:] = tokens
    arrays = np.empty(3, dtype=object)
    arrays[:] = [np.array(row) for row in tokens]
    for X in (cells, arrays, pd.Series(tokens), {"input": cells}):
        np.testing.assert_array_equal(network_similarity(embed, X), expected)
    assert cells[0] == [5, 6, 7]  # the user's cells are left as they are


def test_numpy_integers_and_parameter_errors(module):
    K = network_similarity(module, X, batch_size=4)
    np.testing.assert_allclose(network_similarity(module, X, batch_size=np.int64(4)), K)
    kern = NetworkSimilarityKernel(module, batch_size=np.int32(4), n_components=None)
    np.testing.assert_allclose(kern.fit_transform(X), K)
    with pytest.raises(ValueError, match=r"params=\[\] selects no parameter"):
        network_similarity(module, X, params=[])
    with pytest.raises(TypeError, match="'params' parameter .* Got 5 instead"):
        network_similarity(module, X, params=5)
    with pytest.raises(TypeError, match="params must be None, a parameter name"):
        network_similarity(module, X, params=[3])
    with pytest.raises(ValueError, match="'n_jobs' parameter .* Got 0 instead"):
        network_similarity(module, X, n_jobs=0)  # joblib's meaningless count


def test_max_memory_is_validated_and_honoured(module):
    K = network_similarity(module, X)
    np.testing.assert_allclose(network_similarity(module, X, max_memory=None), K)
    for bad in ("1GB", -1, 0, 1.5):
        with pytest.raises(ValueError, match="'max_memory' parameter"):
            network_similarity(module, X, max_memory=bad)
    with pytest.raises(MemoryError, match=r"419 parameters take 30168 bytes, more"):
        gradient_features(module, X, max_memory=1000)
    assert gradient_features(module, X, max_memory=40_000).shape == (6, 3, 419)


def test_integer_inputs_to_a_float_network_are_explained(module):
    with pytest.raises(TypeError, match=r"integer dtype.*X.astype\(np.float32\)"):
        network_similarity(module, np.arange(30).reshape(6, 5))
    with pytest.raises(TypeError, match=r"have a boolean dtype, passed to the net"):
        network_similarity(module, np.arange(30).reshape(6, 5) > 10)


class Tokens(torch.nn.Module):
    """An embedding of token ids, masked: inputs by keyword, as skorch gives a dict."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1)
        return self.out((self.embedding(input_ids) * mask).sum(1))


def test_float_token_ids_are_named_among_dict_inputs():
    ids = np.arange(12).reshape(4, 3) % 10
    mask = np.ones((4, 3), dtype=np.int64)
    K = network_similarity(Tokens(), {"input_ids": ids, "attention_mask": mask})
    assert K.shape == (4, 4)
    # it blamed the integer mask, and advised converting it to floats
    with pytest.raises(TypeError, match=r"floating-point inputs \(input_ids\)"):
        network_similarity(
            Tokens(), {"input_ids": ids.astype(np.float32), "attention_mask": mask}
        )


def test_inputs_must_have_the_fitted_axes_and_fit_the_network():
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    images = np.random.RandomState(0).randn(4, 1, 6, 6).astype(np.float32)
    cnn(torch.from_numpy(images))  # materialise the lazy layer
    kern = NetworkSimilarityKernel(cnn).fit(images)
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(1, 6, 5\)"):
        kern.transform(images[:, :, :, :5])
    with pytest.raises(
        ValueError, match=r"samples of shape \(1, 36\), but .* \(1, 6, 6\)"
    ):
        kern.transform(images.reshape(4, 1, 36))


def test_weights_changed_since_fit_are_refused(module):
    """What fit computed (reference sketches, sums, indexes) is not mixed with
    queries of other weights; pickling keeps the weights, and refitting works."""
    estimators = [
        GradientDensityEstimator(module),
        GradientDensityEstimator(module, method="hard", n_components=8),
        NetworkNeighbors(module, n_neighbors=2, n_components=8, algorithm="faiss"),
        NetworkNeighbors(module, n_neighbors=2),
        NetworkSimilarityKernel(module, n_components=8),
    ]
    queries = [
        lambda e: e.neighbor_counts(X),
        lambda e: e.neighbor_counts(X),
        lambda e: e.kneighbors(X),
        lambda e: e.kneighbors(),
        lambda e: e.transform(X),
    ]
    for estimator in estimators:
        estimator.fit(X)
    restored = [pickle.loads(pickle.dumps(e)) for e in estimators[:1]]
    restored[0].neighbor_counts(X)
    with torch.no_grad():
        module.out.weight.add_(0.1)  # one optimiser step, as it were
    for estimator, query in zip(estimators, queries, strict=True):
        with pytest.raises(ValueError, match="are trainable, changed since fit"):
            query(estimator)
        query(estimator.fit(X))
    module.out.weight.requires_grad_(False)  # frozen: its gradients leave the kernel
    for estimator, query in zip(estimators, queries, strict=True):
        with pytest.raises(ValueError, match="are trainable, changed since fit"):
            query(estimator)
        query(estimator.fit(X))


def test_a_module_replaced_since_fit_is_refused():
    """The estimator computed with the module of fit, whose changes went unseen."""
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ),
        criterion=torch.nn.CrossEntropyLoss,
    ).initialize()
    kernel = NetworkSimilarityKernel(net, n_components=None).fit(X)
    K = kernel.transform(X)
    old, net.module_ = net.module_, copy.deepcopy(net.module_)
    with torch.no_grad():
        old[2].weight.add_(0.1)  # a training loop holding the old module
    with pytest.raises(ValueError, match=r"module was replaced since fit \(net.modu"):
        kernel.transform(X)
    np.testing.assert_array_equal(kernel.fit(X).transform(X), K)


class Growing(torch.utils.data.Dataset):
    def __init__(self, X):
        self.items = list(X)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_a_dataset_grown_since_fit_is_refused(module):
    """Its counts were divided by the examples of fit: relative density 1.5."""
    data = Growing(X)
    estimators = [
        GradientDensityEstimator(module, method="hard", threshold=0.0),
        NetworkNeighbors(module, n_neighbors=2),
        NetworkSimilarityKernel(module, n_components=None),
    ]
    queries = [
        lambda e: e.score_samples(X),
        lambda e: e.kneighbors_graph(X),
        lambda e: e.transform(X),
    ]
    for estimator in estimators:
        estimator.fit(data)
    data.items.extend(X[:5])
    n = len(X)
    for estimator, query in zip(estimators, queries, strict=True):
        with pytest.raises(ValueError, match=f"holds {n + 5} items now and held {n}"):
            query(estimator)
        query(estimator.fit(data))


def test_a_layer_replaced_since_fit_is_refused():
    """A layer without weights (Tanh to ReLU) changed unseen what fit computed."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )
    estimator = GradientDensityEstimator(net).fit(X)
    net[1] = torch.nn.ReLU()
    with pytest.raises(
        ValueError, match="weights, layers or their settings .* changed since fit"
    ):
        estimator.score_samples(X)


#: A temperature as a forward may hold it, and how to change it in place.
TEMPERATURES = {
    "float": (lambda t: t, None),
    "numpy float": (np.float32, None),
    "tensor": (torch.tensor, lambda held, t: held.fill_(t)),
    "tuple": (lambda t: (torch.tensor(t),), lambda held, t: held[0].fill_(t)),
}


class Tempered(torch.nn.Module):
    """Logits divided by a temperature set after training, held as ``holder``."""

    def __init__(self, holder="float"):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        )
        self.temperature = TEMPERATURES[holder][0](1.0)
        self._calls = 0  # private: not a setting

    def forward(self, x):
        self._calls += 1
        t = self.temperature
        return self.body(x) / float(t[0] if isinstance(t, tuple) else t)


@pytest.mark.parametrize("holder", TEMPERATURES)
@pytest.mark.parametrize("in_place", [False, True])
def test_a_setting_changed_since_fit_is_refused(holder, in_place):
    """A temperature changed after fit went unseen: scores mixed fit's sums
    with the new network's gradients; held as a tensor, a NumPy scalar or in
    a tuple, it went unseen still (a GP's predictions 14 off)."""
    if in_place and TEMPERATURES[holder][1] is None:
        pytest.skip("not changed in place")
    make, change = TEMPERATURES[holder]
    torch.manual_seed(0)
    net = Tempered(holder)
    estimator = GradientDensityEstimator(net).fit(X)
    before = estimator.score_samples(X)  # private attributes may change
    if in_place:
        change(net.temperature, 3.0)
    else:
        net.temperature = make(3.0)
    named = "the network's own settings" if holder == "float" else "the attribute"
    with pytest.raises(ValueError, match=f"temperature.*here {named}"):
        estimator.score_samples(X)
    net.temperature = make(1.0)
    np.testing.assert_array_equal(estimator.score_samples(X), before)


class KeepsLast(torch.nn.Module):
    """An MLP that keeps its last hidden activation, for inspection."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)
        self.last_hidden = None

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        self.last_hidden = h.detach()
        return self.out(h)


class Records(torch.nn.Module):
    """An MLP that records what it computes, in place, as hooks of users do."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)
        self.history, self.outputs = [], {}
        self.counts, self.steps = np.zeros(3), torch.zeros(())

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        self.history.append(h.detach())
        self.outputs["hidden"] = h.detach()
        np.add.at(self.counts, 0, 1)
        self.steps += 1
        return self.out(h)


def test_values_a_forward_pass_changes_in_place_are_not_settings():
    """Lists, dicts, arrays and tensors that the forward fills in place were
    digested as settings: sksim's own second call was refused."""
    torch.manual_seed(0)
    net = Records()
    estimator = GradientDensityEstimator(net).fit(X)
    first = estimator.score_samples(X)
    net(torch.as_tensor(X))  # the user's own call too
    np.testing.assert_array_equal(estimator.score_samples(X), first)


@pytest.mark.parametrize("norm", ["keeps_last", "weight_norm", "spectral_norm"])
def test_values_a_forward_pass_writes_are_not_settings(norm):
    """A recorded activation, or the weight that weight_norm or spectral_norm
    recompute before each pass, changed by the user's own call after fit,
    was refused as a changed setting: the weights were the same."""
    torch.manual_seed(0)
    if norm == "keeps_last":
        module = KeepsLast()
    else:
        wrap = getattr(torch.nn.utils, norm)
        module = torch.nn.Sequential(wrap(torch.nn.Linear(5, 8)), torch.nn.Linear(8, 3))
    data = np.random.RandomState(0).randn(40, 5).astype(np.float32)
    net = NeuralNetClassifier(
        module, max_epochs=3, lr=0.1, train_split=None, verbose=0
    ).fit(data, np.arange(40) % 3)
    kernel = NetworkSimilarityKernel(net).fit(data[:20])
    before = kernel.transform(data[20:])
    net.predict(data[:7])  # the user's own call
    np.testing.assert_array_equal(kernel.transform(data[20:]), before)


class Recording(torch.nn.Module):
    """A forward that records public plain values: a count, the last shape."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.last_shape = x.shape
        return self.fc(x)


def test_plain_values_a_forward_records_are_put_back():
    """Fingerprinted since plain settings changed after fit are refused, they
    were left as sksim's passes set them: the next query was refused."""
    torch.manual_seed(0)
    net = Recording()
    search = NetworkNeighbors(net, n_neighbors=2).fit(X)
    first = search.kneighbors(X[:4])
    np.testing.assert_array_equal(search.kneighbors(X[:4])[1], first[1])
    assert net.calls == 0 and not hasattr(net, "last_shape")  # as before fit
    net(torch.as_tensor(X[:2]))  # the user's own calls change them, as they would
    with pytest.raises(ValueError, match="their settings"):
        search.kneighbors(X[:4])


class Stateful(torch.nn.Module):
    """A forward pass that counts its inputs in place and rebinds an average."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(5))

    def forward(self, x):
        self.seen += len(x)
        self.mean = 0.9 * self.mean + 0.1 * x.detach().mean(0)
        return self.fc(x)


def test_buffers_the_forward_pass_updates_are_restored():
    net = Stateful()
    buffers = {name: (b, b.clone()) for name, b in net.named_buffers()}
    network_similarity(net, X)
    GradientDensityEstimator(net).fit(X).score_samples(X)
    NetworkNeighbors(net, n_neighbors=2).fit(X).kneighbors(X)
    for name, (tensor, values) in buffers.items():
        assert getattr(net, name) is tensor
        assert torch.equal(tensor, values)


class FreezesInEval(torch.nn.Module):
    """A network whose ``train`` override freezes its first layer in eval mode."""

    def __init__(self):
        super().__init__()
        self.body, self.head = torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)

    def train(self, mode=True):
        self.body.requires_grad_(mode)
        return super().train(mode)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def test_modes_are_restored_through_the_networks_own_train():
    net = FreezesInEval()
    net.head.eval()  # modes mixed, as the caller left them
    with pytest.warns(UserWarning, match=r"layers \['body'\] get no gradient"):
        network_similarity(net, X)  # its body frozen in eval mode
    GradientDensityEstimator(net).fit(X).score_samples(X)
    assert [p.requires_grad for p in net.parameters()] == [True] * 4
    assert (net.training, net.body.training, net.head.training) == (True, True, False)


def test_renormalising_embeddings_are_left_unchanged_by_predictions():
    """The audit and the label issues predict with the network itself: an
    Embedding(max_norm=...) gets its rows back."""
    from sksim import LabelIssueDetector
    from sksim.audit.prefit import predictions

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Embedding(12, 4, max_norm=0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 3),
    )
    tokens = torch.randint(0, 12, (9, 3))
    before = copy.deepcopy(module.state_dict())
    predictions(module, tokens, "classification")
    LabelIssueDetector(module, cv="prefit", n_neighbors=2).fit(tokens, np.arange(9) % 3)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_estimators_without_sketches_leave_numpys_global_generator(module):
    """random_state=None draws a seed only where a sketch needs one."""

    def state():
        _, key, position, *_ = np.random.get_state()
        return key.tobytes(), position

    before = state()
    NetworkSimilarityKernel(module).fit(X).transform(X)
    GradientDensityEstimator(module, method="hard").fit(X).neighbor_counts(X)
    NetworkNeighbors(module, n_neighbors=2).fit(X).kneighbors(X)
    gradient_features(module, X)
    assert state() == before
    NetworkSimilarityKernel(module, n_components=4).fit(X)  # a sketch draws its seed
    assert state() != before


def test_errors_of_an_output_callable_are_its_own_not_the_inputs():
    def selector(out):
        raise RuntimeError("the selector's own failure")

    X = np.random.RandomState(0).randn(4, 5).astype(np.float32)
    with pytest.raises(RuntimeError, match="the selector's own failure"):
        network_similarity(MLP(), X, output=selector)


def test_bfloat16_tensors_are_taken_by_the_estimators():
    """NumPy has no bfloat16: the estimators' checks failed on its tensors."""
    module = MLP()
    X_bf16 = torch.as_tensor(X).to(torch.bfloat16)
    X_same = X_bf16.float().numpy()
    density = GradientDensityEstimator(module, method="soft").fit(X_bf16)
    expected = GradientDensityEstimator(module, method="soft").fit(X_same)
    np.testing.assert_array_equal(
        density.score_samples(X_bf16), expected.score_samples(X_same)
    )


class ReentrantCheckpoint(torch.nn.Module):
    """A block under reentrant activation checkpointing, optionally after a
    layer: without it, no input of the block needs a gradient, unless the
    network makes its input need one (as input-saliency code does)."""

    def __init__(self, first=False, saliency=False):
        super().__init__()
        self.first = torch.nn.Linear(4, 4) if first else torch.nn.Identity()
        self.block = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
        self.out = torch.nn.Linear(6, 2)
        self.saliency = saliency

    def forward(self, x):
        if self.saliency:
            x = x.detach().requires_grad_(True)
        h = self.first(x)
        h = torch.utils.checkpoint.checkpoint(self.block, h, use_reentrant=True)
        return self.out(h)


def test_reentrant_checkpointing_is_refused_or_its_idle_layers_named():
    """The block's parameters got no gradient, silently: the kernel was that
    of the last layer alone."""
    torch.manual_seed(0)
    X = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    refused = r"\['block.0'\] ran without gradients.*use_reentrant=False"
    # the block's parameters get a gradient in training: they got none here
    # when its input needed one because the network asked for it
    for module in ReentrantCheckpoint(first=True), ReentrantCheckpoint(saliency=True):
        module.train()(torch.as_tensor(X)).sum().backward()
        assert module.block[0].weight.grad.abs().sum() > 0
        with pytest.raises(ValueError, match=refused):
            network_similarity(module, X, batch_size=2)
        assert module.training
        hooks = [m._forward_hooks or m._forward_pre_hooks for m in module.modules()]
        assert not any(hooks)
    module = ReentrantCheckpoint()
    with pytest.warns(UserWarning, match=r"layers \['block.0'\] get no gradient"):
        K = network_similarity(module, X, batch_size=2)
    np.testing.assert_allclose(K, network_similarity(module, X, params="out"))
    # a checkpointed function without parameters hides nothing, beside a
    # layer that never runs
    module = ReentrantCheckpoint(saliency=True)
    module.block = torch.nn.Tanh()
    module.out, module.unused = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    with pytest.warns(UserWarning, match=r"layers \['unused'\] get no gradient"):
        K = network_similarity(module, X, batch_size=2)
    np.testing.assert_allclose(K, network_similarity(module, X, params="out"))


class SharedTableThenBug(torch.nn.Module):
    """A position table called once for the batch, then a head that flattens
    the batch: a bug of the network's own, for batches of more than one."""

    def __init__(self):
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(9, 4), torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])[None]
        h = self.tokens(ids) + self.positions(positions)
        return self.head(h[:, 0].reshape(1, -1))


class SharedTableInPlace(torch.nn.Module):
    """A position table computed once for the batch, then scaled in place (as
    DeBERTa's relative positions are)."""

    def __init__(self):
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(9, 4), torch.nn.Embedding(5, 4)
        self.project = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, ids):
        table = self.project(self.positions(torch.arange(ids.shape[1]))[None])
        table /= 2.0
        return self.head(torch.tanh(self.tokens(ids) + table).mean(1))


def test_a_shared_table_the_network_changes_in_place_is_differentiated():
    """It failed for batches of more than one sample, blaming routing to
    experts: the expanded rows of the table could not be written into."""
    torch.manual_seed(0)
    module = SharedTableInPlace().double()
    ids = torch.randint(0, 9, (5, 5))
    J = oracle_jacobians(module, ids)
    for kind in KINDS:
        K = network_similarity(module, ids, kind=kind, batch_size=3)
        np.testing.assert_allclose(K, oracle_kernel(J, J, kind), rtol=1e-9, atol=1e-12)


def test_the_networks_own_error_is_not_blamed_on_expanded_tables():
    """It was reported as sksim's expansion of the position table."""
    ids = np.random.RandomState(0).randint(0, 9, (4, 5))
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        network_similarity(SharedTableThenBug(), ids, batch_size=2)


def test_a_binary_classifier_takes_one_hot_rows_of_two_columns_only():
    """One-hot rows stand for their label; of three columns, for a binary
    classifier, they gave it labels up to 2 without a word."""
    net = NeuralNetBinaryClassifier(torch.nn.Linear(3, 1))
    labels = np.array([0, 1, 1, 0])
    np.testing.assert_array_equal(training_targets(net, np.eye(2)[labels]), labels)
    with pytest.raises(ValueError, match="learns label j as its output j"):
        training_targets(net, np.eye(3)[[0, 1, 2, 0]])


class _Picky(torch.nn.Module):
    """Fails on an input whose first value is out of its range."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        if (x[:, 0] > 100).any():
            raise RuntimeError("value out of range")
        return self.linear(x)


def test_a_network_failing_on_a_batch_is_told_which_rows_it_held():
    X = np.random.RandomState(0).randn(10, 3).astype(np.float32)
    X[7, 0] = 1000
    for call in (
        lambda: network_similarity(_Picky(), X, batch_size=4),
        lambda: (
            GradientDensityEstimator(_Picky(), batch_size=4).fit(X[:6]).score_samples(X)
        ),
    ):
        with pytest.raises(RuntimeError, match="value out of range") as error:
            call()
        assert error.value.__notes__ == [
            "sksim: the network failed on the batch of the inputs' rows 4 to 7."
        ]


class SparseGraph(torch.nn.Module):
    """A graph convolution whose adjacency is sparse, as a buffer or attribute."""

    def __init__(self, buffer):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
        adjacency = (torch.eye(5) + torch.diag(torch.ones(4), 1)).to_sparse()
        if buffer:
            self.register_buffer("adjacency", adjacency)
        else:
            self.adjacency = adjacency

    def forward(self, x):
        h = torch.stack([self.adjacency @ row for row in self.lin(x).unbind(0)])
        return self.head(torch.tanh(h).mean(1))


@pytest.mark.parametrize("buffer", [True, False])
def test_a_sparse_tensor_the_network_holds_is_digested(buffer):
    """Its digest failed ('reshape is not implemented for sparse tensors'),
    and the probe of the saved tensors could not read its storage."""
    net = SparseGraph(buffer)
    data = np.random.RandomState(0).randn(8, 5, 3).astype(np.float32)
    kernel = NetworkSimilarityKernel(net).fit(data[:5])
    np.testing.assert_allclose(
        kernel.transform(data[5:]), network_similarity(net, data[5:], data[:5])
    )
    with torch.no_grad():  # the graph's weights changed after fit
        net.adjacency.values().mul_(2)
    what = "the tensor 'adjacency'" if buffer else "the attribute 'adjacency'"
    with pytest.raises(ValueError, match=what):
        kernel.transform(data[5:])


class RunsOutOfMemory(torch.nn.Module):
    """Token and position embeddings; "out of memory" where ``full(x)`` says.

    A GPU's out-of-memory error is a RuntimeError, which the engine's
    fallbacks caught: the pass was explained as mixing samples, or made again
    one sample at a time. ``scaled``: a bare parameter, which goes to the
    vectorised ``torch.func`` pass.
    """

    def __init__(self, full, scaled):
        super().__init__()
        self.full = full
        self.tokens = torch.nn.Embedding(10, 6)
        self.positions = torch.nn.Embedding(8, 6)
        self.scale = torch.nn.Parameter(torch.ones(3)) if scaled else None
        self.head = torch.nn.Linear(6, 3)

    def forward(self, t):
        positions = self.positions(torch.arange(t.shape[1])[None])  # expanded
        if self.full(t):
            raise torch.OutOfMemoryError("CUDA out of memory (emulated)")
        out = self.head(torch.tanh(self.tokens(t) + positions).mean(1))
        return out if self.scale is None else out * self.scale


@pytest.mark.parametrize(
    "full, scaled",
    [
        (lambda t: torch.is_grad_enabled() and len(t) >= 3, False),  # a batch
        (torch._C._functorch.is_functorch_wrapped_tensor, True),  # vectorised
    ],
    ids=["batch", "vectorised"],
)
def test_out_of_memory_is_raised_as_it_is(full, scaled):
    torch.manual_seed(0)
    net, tokens = RunsOutOfMemory(full, scaled), torch.randint(0, 10, (8, 5))
    with pytest.raises(torch.OutOfMemoryError, match="emulated"):
        network_similarity(net, tokens, batch_size=4)


class Positions(torch.nn.Module):
    """A vector per position, and their mean unless ``pooled`` is False."""

    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x):  # (B, T, 3)
        hidden = torch.tanh(self.linear(x))
        out = {"last_hidden_state": hidden}
        return out | {"pooler_output": hidden.mean(1)} if self.pooled else out


@pytest.mark.parametrize(
    "pooled, hint, hinted",
    [
        (True, "out['pooler_output']", lambda out: out["pooler_output"]),
        (
            False,
            "out['last_hidden_state'][:, 0]",
            lambda out: out["last_hidden_state"][:, 0],
        ),
    ],
)
def test_the_output_hint_names_a_selection_of_the_right_shape(pooled, hint, hinted):
    """A BertModel's hint named its (B, T, H) last_hidden_state, which
    output= then refused."""
    torch.manual_seed(0)
    net, X = Positions(pooled), torch.randn(4, 5, 3)
    with pytest.raises(TypeError, match=re.escape(f"output=lambda out: {hint}")):
        network_similarity(net, X)
    K = network_similarity(net, X, output=hinted)  # the hint, followed
    assert K.shape == (4, 4) and np.allclose(np.diag(K), 1)
