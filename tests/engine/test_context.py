"""Process-wide settings of torch that the engine changes inside its blocks."""

import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from sksim import gradient_features, network_similarity
from sksim._engine import features, gram
from sksim._engine.context import forked_rng, math_attention
from sksim.representations import extract, extract_representations


def _flags():
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.math_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
    )


def test_math_attention_blocks_of_two_threads_restore_the_flags():
    """Blocks overlapping in time, as two threads' networks do, end in either
    order: the flags stay set until the last ends, then are as before."""
    before = _flags()
    first, second = math_attention(), math_attention()
    first.__enter__()
    inside = _flags()
    assert inside != before and inside[2]  # the math kernel alone
    second.__enter__()
    first.__exit__(None, None, None)  # the first thread ends first
    assert _flags() == inside
    second.__exit__(None, None, None)
    assert _flags() == before
    with math_attention():  # and again
        assert _flags() == inside
    assert _flags() == before


# Two threads' blocks overlapping in time, the first to start ending first,
# as a threading backend's fits do, in a process of two threads per pool
_OVERLAPPING_BLOCKS = """
import threading
from threadpoolctl import threadpool_info
from sksim._engine.context import single_threaded_blas

def pools():
    return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())

before = pools()
assert {n for _, n in before} == {2}, before
entered, leave, ended, done = (threading.Event() for _ in range(4))
seen = {}

def first():
    with single_threaded_blas():
        entered.set()
        leave.wait()
    ended.set()
    done.wait()  # alive while the second thread's block ends

def second():
    entered.wait()
    with single_threaded_blas():
        seen["pools"] = threadpool_info()
        ended.wait()

one = threading.Thread(target=first, daemon=True)  # a failed check ends all
two = threading.Thread(target=second, daemon=True)
one.start()
two.start()
while "pools" not in seen:
    two.join(0.01)
leave.set()
two.join()
assert pools() == before, ("second ended", pools(), before)
done.set()
one.join()
assert pools() == before, ("first ended", pools(), before)
openmp = {p["num_threads"] for p in seen["pools"] if p["user_api"] == "openmp"}
assert openmp == {1}, seen["pools"]
with single_threaded_blas():
    assert {p["num_threads"] for p in threadpool_info()} == {1}
assert pools() == before
"""


def test_small_matrix_blocks_of_two_threads_leave_the_pools_as_they_were():
    """OpenBLAS's pool, which a thread that set it alone can change while it
    lives, is as before after the blocks, in the threads and in the main
    thread; each thread's OpenMP count is limited in its block, every pool of
    the main thread in its block."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "-c", _OVERLAPPING_BLOCKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("where", ["features", "kernel", "representations"])
def test_an_interrupt_between_batches_leaves_the_network_as_it_was(monkeypatch, where):
    """Ctrl-C in the loop reading the batches, its traceback kept (as IPython
    keeps it): the network stayed in eval mode, its backward hooks unseen and
    grad mode off, and other threads' calls waited, until the traceback went."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh()
    )
    module.append(torch.nn.Linear(8, 3)).train()
    hooked = []
    module[3].register_full_backward_hook(lambda *args: hooked.append(1))
    X = np.random.RandomState(0).randn(40, 5).astype(np.float32)
    consumer, call = {
        "features": (features, lambda: gradient_features(module, X, batch_size=8)),
        "kernel": (
            gram.GramReference,
            lambda: network_similarity(module, X, batch_size=8, max_memory=2**14),
        ),
        "representations": (
            extract,
            lambda: extract_representations(module, X, layers="2", batch_size=8),
        ),
    }[where]
    name = {
        "features": "copy_to_host",
        "kernel": "rows_of",
        "representations": "check_finite_representations",
    }[where]
    original, calls = getattr(consumer, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(consumer, name, interrupted)
    with pytest.raises(KeyboardInterrupt) as kept:  # kept: the traceback lives on
        call()
    assert kept.traceback and len(calls) == 2
    assert all(sub.training for sub in module.modules())
    assert torch.is_grad_enabled()
    module(torch.randn(4, 5)).sum().backward()
    assert hooked == [1]
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("K", network_similarity(module, X[:4]))
    )
    thread.start()
    thread.join(60)
    assert result["K"].shape == (4, 4)


def test_an_interrupt_while_torch_swaps_parameters_leaves_them_the_networks(
    monkeypatch,
):
    """torch's functional_call puts the parameters back after an Exception, not
    after a KeyboardInterrupt amid its swaps: the user's Parameters were left
    replaced by plain tensors, which their optimizer no longer trains."""
    from torch.nn.utils import _named_member_accessor as accessor

    class Recurrent(torch.nn.Module):  # the torch.func path: a GRU
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 4, batch_first=True)
            self.out = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.gru(x)[0][:, -1])

    torch.manual_seed(0)
    module = Recurrent()
    before = list(module.parameters())
    original, calls = accessor.swap_tensor, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two parameters swapped, then Ctrl-C
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(accessor, "swap_tensor", interrupted)
    X = np.random.RandomState(0).randn(6, 5, 3).astype(np.float32)
    with pytest.raises(KeyboardInterrupt):
        gradient_features(module, X, n_components=None)
    assert len(calls) >= 3
    assert all(p is q for p, q in zip(module.parameters(), before, strict=True))
    assert all(isinstance(p, torch.nn.Parameter) for p in module.parameters())


class Dropped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(5, 16), torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.out(torch.nn.functional.dropout(self.hidden(x), 0.3, self.training))


def test_seeded_training_in_threads_is_the_sequential_one():
    """Two unfitted nets trained under random_state=0 in two threads (joblib's
    threading backend, as a cross-validation with n_jobs=2 runs them) drew from
    torch's shared generator in turn: weights other than the sequential ones,
    and the generator left changed."""
    from joblib import Parallel, delayed, parallel_config
    from skorch import NeuralNetClassifier

    from sksim import NetworkSimilarityKernel

    rng = np.random.RandomState(0)
    X, y = rng.randn(200, 5).astype(np.float32), rng.randint(0, 2, 200)

    def trained(_):
        net = NeuralNetClassifier(
            Dropped,  # built by skorch, inside the seeded block
            criterion=torch.nn.CrossEntropyLoss,
            max_epochs=4,
            batch_size=16,
            train_split=None,
            verbose=0,
        )
        kernel = NetworkSimilarityKernel(net, random_state=0).fit(X, y)
        return kernel.net_.module_.hidden.weight.detach().clone()

    expected = trained(0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for _ in range(2):
        with parallel_config(backend="threading"):
            weights = Parallel(n_jobs=2)(delayed(trained)(i) for i in range(2))
        assert all(torch.equal(w, expected) for w in weights)
        assert torch.equal(torch.get_rng_state(), state)


def test_a_seeded_fit_that_trains_seeded_nets_in_threads_ends():
    """memorisation (a seeded fit per model) of a search whose threads train
    seeded nets: each thread waited for the lock the fit held, for ever."""
    from joblib import parallel_config
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC
    from skorch import NeuralNetClassifier

    from sksim import NetworkSimilarityKernel
    from sksim.representations import memorization_scores

    rng = np.random.RandomState(0)
    X, y = rng.randn(40, 5).astype(np.float32), np.repeat([0, 1], 20)
    net = NeuralNetClassifier(Dropped, max_epochs=1, train_split=None, verbose=0)
    pipeline = make_pipeline(
        NetworkSimilarityKernel(net, random_state=0), SVC(kernel="precomputed")
    )
    search = GridSearchCV(pipeline, {"svc__C": [0.1, 1.0]}, cv=2, n_jobs=2)
    done = []

    def run():
        with parallel_config(backend="threading"):
            done.append(memorization_scores(search, X, y, n_models=2, random_state=0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and done[0].shape == (40,)


def test_predictions_in_a_thread_leave_a_seeded_training_as_it_is():
    """A prediction restores torch's generator after it (skorch's DataLoader
    draws from it): run beside a seeded training in another thread, it put the
    generator back under the training's draws, whose weights then changed."""
    from skorch import NeuralNetClassifier

    from sksim import NetworkSimilarityKernel
    from sksim._net import predicted_probabilities

    rng = np.random.RandomState(0)
    X, y = rng.randn(400, 5).astype(np.float32), rng.randint(0, 2, 400)
    net = NeuralNetClassifier(
        Dropped,
        max_epochs=3,
        batch_size=8,
        train_split=None,
        verbose=0,
    )

    def trained():
        kernel = NetworkSimilarityKernel(net, random_state=0).fit(X, y)
        return kernel.net_.module_.hidden.weight.detach().clone()

    expected = trained()
    fitted = NeuralNetClassifier(
        Dropped,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=1,
        batch_size=1,
        verbose=0,
    )
    fitted.fit(X[:20], y[:20])
    stop, predicting, predictions = threading.Event(), threading.Event(), []

    def predict():
        while not stop.is_set():
            predictions.append(predicted_probabilities(fitted, X[:20]))
            predicting.set()

    for round in range(3):
        thread = threading.Thread(target=predict)
        thread.start()
        predicting.wait()  # predictions run before and beside the training
        try:
            weights = trained()
        finally:
            stop.set()
            thread.join()
        stop.clear()
        predicting.clear()
        assert torch.equal(weights, expected)
        assert len(predictions) > round


def test_recurrent_layers_keep_their_weights_for_torchscript():
    """torch.func leaves a GRU's list of weights holding other tensors.

    Eager forwards heal it; a TorchScript copy of the network trained none of
    its recurrent weights.
    """

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(12, 5)
            self.rnn = torch.nn.GRU(5, 6, batch_first=True)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, tokens):
            return self.head(self.rnn(self.emb(tokens))[1][-1])

    torch.manual_seed(0)
    net, X = Classifier(), torch.randint(0, 12, (7, 6))
    network_similarity(net, X, batch_size=3)
    rnn = net.rnn
    assert all(
        w is getattr(rnn, name)
        for name, w in zip(rnn._flat_weights_names, rnn._flat_weights, strict=True)
    )
    scripted = torch.jit.script(net)
    torch.nn.functional.cross_entropy(scripted(X), torch.zeros(7).long()).backward()
    assert scripted.rnn.weight_ih_l0.grad is not None


@pytest.mark.parametrize("recurrent", [True, False])
def test_recurrent_layers_run_without_cudnn(recurrent):
    """cuDNN's RNN kernels differentiate only in training mode (and never
    twice), so a network with recurrent layers runs without cuDNN in the
    engine's passes, which are in evaluation mode; others keep it."""
    torch.manual_seed(0)
    layer = torch.nn.GRU(4, 4, batch_first=True) if recurrent else torch.nn.Linear(4, 4)
    seen = []

    def record(module, args, out):
        seen.append(torch.backends.cudnn.enabled)
        return out[0][:, -1] if recurrent else out.mean(1)

    layer.register_forward_hook(record)
    given = torch.backends.cudnn.enabled
    network_similarity(torch.nn.Sequential(layer), torch.randn(5, 3, 4))
    assert seen and set(seen) == {not recurrent and given}
    assert torch.backends.cudnn.enabled == given


@pytest.mark.parametrize("block", ["prelu", "gru"])
def test_a_block_registered_under_two_names_keeps_its_parameters(block):
    """torch.func puts back none of its parameters: they were left plain
    tensors, which the user's optimizer no longer trained."""

    class Aliased(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Linear(4, 6)
            self.body = (
                torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.PReLU(6))
                if block == "prelu"
                else torch.nn.GRU(6, 6, batch_first=True)
            )
            self.alias = self.body  # a shared block, registered twice
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.stem(x))
            if block == "prelu":
                return self.head(self.alias(h))
            return self.head(self.alias(h.unsqueeze(1))[1][-1])

    torch.manual_seed(0)
    net, X = Aliased(), torch.randn(7, 4)
    before = dict(net.named_parameters())
    network_similarity(net, X, batch_size=3)
    after = dict(net.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[name] is p for name, p in before.items())
    net(X).pow(2).sum().backward()
    assert all(p.grad is not None for p in before.values())


def test_a_weight_recomputed_before_each_pass_is_left_as_it_was():
    """The old weight_norm sets ``weight`` before each forward pass: it held
    the engine's graph afterwards, and the network no longer deep-copied."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.utils.weight_norm(torch.nn.Linear(4, 8)),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    )
    with torch.no_grad():
        net(torch.zeros(1, 4))  # its weight as a plain tensor
    weight = net[0].weight
    network_similarity(net, torch.randn(5, 4), batch_size=2)
    assert net[0].weight is weight and weight.grad_fn is None
    copy.deepcopy(net)


@pytest.mark.parametrize("initialised", [False, True])
def test_cuda_generators_are_forked_once_cuda_is_initialised(monkeypatch, initialised):
    """Reading a CUDA generator's state initialises CUDA on every GPU: a
    prediction on the CPU did it on a GPU machine."""
    read = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialised)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: read.append(d))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, d: None)
    with forked_rng():
        torch.rand(1)
    assert read == ([0, 1] if initialised else [])
