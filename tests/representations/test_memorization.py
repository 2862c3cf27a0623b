"""Memorisation scores (Feldman & Zhang) and the memorisation check of the guide."""

import signal
import warnings

import numpy as np
import pytest
import torch
from _architectures import WrappedMLP
from joblib import parallel_config
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier

from sksim._engine.context import torch_seed
from sksim.representations import memorization_scores
from sksim.representations.memorization import subset_masks


def _toy(n=40, seed=0):
    rng = np.random.RandomState(seed)
    X = np.concatenate([rng.randn(n // 2, 2), rng.randn(n // 2, 2) + 3])
    return X.astype(np.float32), np.repeat([0, 1], n // 2)


def test_scores_match_a_brute_force_recomputation():
    X, y = _toy()
    y[3] = 1  # one flipped label
    got = memorization_scores(
        KNeighborsClassifier(3), X, y, n_models=12, random_state=0
    )
    rng = check_random_state(0)
    masks = subset_masks(len(y), 12, 0.7, rng)
    want = np.empty(len(y))
    correct = np.array(
        [clone(KNeighborsClassifier(3)).fit(X[m], y[m]).predict(X) == y for m in masks]
    )
    for i in range(len(y)):
        want[i] = correct[masks[:, i], i].mean() - correct[~masks[:, i], i].mean()
    np.testing.assert_allclose(got, want)
    assert masks.sum(axis=1).tolist() == [28] * 12


FEW_MODELS = pytest.mark.filterwarnings("ignore:.*never \\(or always\\) in the")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@FEW_MODELS
@pytest.mark.parametrize("n_jobs", [None, 2])
def test_warnings_of_the_models_reach_the_caller(n_jobs):
    """Also from worker processes, which would only print them."""
    X, y = _toy()
    one_step = MLPClassifier((8,), max_iter=1)
    with pytest.warns(ConvergenceWarning) as caught:
        memorization_scores(one_step, X, y, n_models=3, random_state=0, n_jobs=n_jobs)
    converged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(converged) == 3  # one per model


@FEW_MODELS
def test_n_jobs_and_random_state_reproduce_scores():
    X, y = _toy()
    mlp = MLPClassifier((8,), max_iter=50)
    a = memorization_scores(mlp, X, y, n_models=4, random_state=1)
    with parallel_config(backend="threading"):
        b = memorization_scores(mlp, X, y, n_models=4, random_state=1, n_jobs=2)
    np.testing.assert_array_equal(a, b)
    # a pipeline's step is seeded as the bare model is (up to 0.78 apart before)
    piped = make_pipeline(StandardScaler(), mlp)
    runs = [
        memorization_scores(piped, X, y, n_models=4, random_state=1) for _ in range(2)
    ]
    np.testing.assert_array_equal(*runs)


@FEW_MODELS
def test_skorch_net_scores_match_a_brute_force_recomputation():
    X, y = _toy(30, seed=2)
    y = y.astype(np.int64)
    net = NeuralNetClassifier(
        WrappedMLP,
        max_epochs=8,
        lr=0.05,
        train_split=None,
        verbose=0,
        optimizer=torch.optim.Adam,
    )
    generator = torch.get_rng_state()
    got = memorization_scores(net, X, y, n_models=3, random_state=0)
    assert torch.equal(torch.get_rng_state(), generator)  # the user's, untouched
    rng = check_random_state(0)
    masks = subset_masks(len(y), 3, 0.7, rng)
    seeds = rng.randint(2**31 - 1, size=3)
    correct = []
    for mask, seed in zip(masks, seeds, strict=True):
        with torch_seed(int(seed)):
            model = clone(net).fit(X[mask], y[mask])
        correct.append(model.predict(X) == y)
    correct = np.array(correct)
    n_in, n_out = masks.sum(axis=0), (~masks).sum(axis=0)
    defined = (n_in > 0) & (n_out > 0)
    want = (correct & masks).sum(0)[defined] / n_in[defined] - (correct & ~masks).sum(
        0
    )[defined] / n_out[defined]
    np.testing.assert_allclose(got[defined], want)
    assert np.isnan(got[~defined]).all()


def test_a_skorch_net_scores_text_labels_as_their_codes():
    """skorch failed deep inside ("new(): invalid data type 'numpy.str_'")."""
    X, y = _toy(30, seed=2)
    net = NeuralNetClassifier(WrappedMLP, max_epochs=3, train_split=None, verbose=0)
    codes = memorization_scores(net, X, y.astype(np.int64), n_models=3, random_state=0)
    names = np.array(["ant", "bee"])[y]
    got = memorization_scores(net, X, names, n_models=3, random_state=0)
    np.testing.assert_array_equal(got, codes)
    # labels 1 and 2 on two outputs: "Target 2 is out of bounds" from the loss
    got = memorization_scores(net, X, y + 1, n_models=3, random_state=0)
    np.testing.assert_array_equal(got, codes)
    # a binary classifier's logistic loss takes float labels: its codes too
    binary = NeuralNetBinaryClassifier(
        torch.nn.Linear(2, 1), max_epochs=3, train_split=None, verbose=0
    )
    floats = memorization_scores(
        binary, X, y.astype(np.float32), n_models=3, random_state=0
    )
    for labels in (names, y.astype(bool), y):
        scores = memorization_scores(binary, X, labels, n_models=3, random_state=0)
        np.testing.assert_array_equal(scores, floats)


@pytest.mark.slow
def test_flipped_digit_labels_are_memorised():
    """The memorisation check of the guide, reduced: 5 % of 600 digit labels flipped."""
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600].copy()
    rng = np.random.RandomState(0)
    flipped = rng.choice(len(y), 30, replace=False)
    y[flipped] = (y[flipped] + rng.randint(1, 10, size=30)) % 10
    is_flipped = np.isin(np.arange(len(y)), flipped)
    mem = memorization_scores(
        KNeighborsClassifier(1), X, y, n_models=30, random_state=0
    )
    assert np.isfinite(mem).all()
    assert mem[is_flipped].mean() > 0.8 and mem[~is_flipped].mean() < 0.2
    mlp = MLPClassifier((128,), alpha=0.0, learning_rate_init=0.01, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence, a few NaN scores
        mem = memorization_scores(mlp, X, y, n_models=10, random_state=0)
    assert np.nanmean(mem[is_flipped]) > np.nanmean(mem[~is_flipped]) + 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_models=0), "n_models must be a positive int"),
        (dict(subset_fraction=1.0), "subset_fraction must be a number in"),
    ],
)
def test_parameter_errors(kwargs, match):
    X, y = _toy()
    with pytest.raises(ValueError, match=match):
        memorization_scores(KNeighborsClassifier(1), X, y, **kwargs)


def test_subsets_of_all_or_no_examples_are_refused():
    """round(0.95 * 6) = 6: every score NaN, with advice to add models."""
    X, y = _toy(6)
    for fraction, what in ((0.95, "always"), (0.05, "never")):
        with pytest.raises(ValueError, match=f"subsets of .*would be {what} in them"):
            memorization_scores(KNeighborsClassifier(1), X, y, subset_fraction=fraction)


def test_length_mismatch_and_undefined_scores():
    X, y = _toy()
    with pytest.raises(ValueError, match="different lengths"):
        memorization_scores(KNeighborsClassifier(1), X, y[:-1])
    with pytest.warns(UserWarning, match="never \\(or always\\) in the training"):
        mem = memorization_scores(KNeighborsClassifier(1), X, y, n_models=1)
    assert np.isnan(mem).all()


def test_a_net_trained_on_given_pairs_keeps_them():
    """with_pairs data: each model was refit without its pairs ("needs pairs
    attached to X") once network inputs dropped them by default."""
    from sksim import SimilarityRegularizedClassifier, with_pairs

    X, y = _toy(40)
    net = SimilarityRegularizedClassifier(
        torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh()).append(
            torch.nn.Linear(8, 2)
        ),
        max_epochs=2,
        train_split=None,
        verbose=0,
        similarity_pairs="given",
    )
    data = with_pairs(X, [[0, 1], [2, 3], [20, 21]])
    scores = memorization_scores(net, data, y, n_models=4, random_state=0)
    assert scores.shape == (40,)


def test_threads_train_skorch_nets_as_in_sequence():
    """Threads seeded torch's shared generator at once: scores of a net with
    dropout and shuffled batches differed from the sequential ones (by up to
    1.5 of their range of 2) and from run to run, and the caller's generator
    was left changed."""
    X, y = _toy(60, seed=3)
    net = NeuralNetClassifier(
        torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Dropout(0.3),
            torch.nn.Linear(16, 2),
        ),
        max_epochs=6, lr=0.2, batch_size=8, train_split=None, verbose=0,
        iterator_train__shuffle=True,
    )  # fmt: skip
    expected = memorization_scores(net, X, y, n_models=6, random_state=0)
    generator = torch.get_rng_state()
    with parallel_config(backend="threading"):
        got = memorization_scores(net, X, y, n_models=6, random_state=0, n_jobs=3)
    assert torch.equal(torch.get_rng_state(), generator)
    np.testing.assert_array_equal(got, expected)


class _CtrlCInTraining(torch.nn.Module):
    """A linear classifier that sends itself a Ctrl-C in its second training batch."""

    def __init__(self):
        super().__init__()
        self.linear, self.calls = torch.nn.Linear(4, 2), 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 2:
                signal.raise_signal(signal.SIGINT)
        return self.linear(x)


def test_a_ctrl_c_while_a_skorch_model_trains_stops_the_scores():
    """skorch's fit ended its loop on it: the scores came from half-trained models."""
    X = np.random.RandomState(0).randn(40, 4).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    net = NeuralNetClassifier(
        _CtrlCInTraining,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=3,
        batch_size=8,
        train_split=None,
        verbose=0,
    )
    with pytest.raises(KeyboardInterrupt):
        memorization_scores(make_pipeline(StandardScaler(), net), X, y, n_models=2)
