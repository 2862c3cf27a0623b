"""Tests of SimilarityRegularizedNet and its pairs (Charpiat et al. 2019, section 4).

The vectorised term is compared with a brute-force oracle: a Python loop over
pairs with ``torch.autograd.grad(create_graph=True)``, values and gradients.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import (
    LazyLinear,
    MaxPoolCNN,
    RecurrentClassifier,
    TwoInputs,
    WithDropoutAndBatchNorm,
    mlp,
)
from _sklearn_checks import SKORCH_INHERITED_CHECKS
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.dataset import Dataset, ValidSplit
from skorch.helper import SliceDict, predefined_split

from sksim import (
    GradientDensityEstimator,
    SingularJacobianGramWarning,
    network_similarity,
    regularized,
)
from sksim._engine.differentiable import _ALIKE, per_sample_gradients
from sksim._pairs import PAIR_MASK, PAIR_PARTNER, same_class_partners
from sksim.regularized import (
    SimilarityRegularizedClassifier,
    SimilarityRegularizedNet,
    SimilarityRegularizedRegressor,
    posnegflat_weights,
    with_pairs,
)

# -- fixtures and module-level helpers (module level so that nets pickle) -------


def flip_sign(X):
    """An 'augmentation' used by the tests: x -> 0.9 x + 0.1."""
    return 0.9 * X + 0.1


def wrong_shape(X):
    return X[:, :-1]


def squared_first_output(out, y):
    return out[:, 0] ** 2 - out[:, 1]


def make_data(n=24, n_in=6, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, n_in).astype("float32")
    y = np.arange(n) % n_classes
    return X, y.astype("int64")


def make_net(module=None, **kwargs):
    params = dict(
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-2,
        max_epochs=2,
        batch_size=8,
        train_split=None,
        verbose=0,
    )
    params.update(kwargs)
    return SimilarityRegularizedNet(
        module if module is not None else mlp(6, 3, hidden=7, seed=None), **params
    )


def digits(n=None):
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype("float32")
    return (X, y) if n is None else (X[:n], y[:n])


# -- the oracle ------------------------------------------------------------------


def oracle_cosines(module, first, second, readout, params=None):
    """Loop over pairs: cos(grad phi(a), grad phi(b)) with create_graph=True.

    ``readout(output_of_one_sample (1, d), pair_index) -> scalar``.
    """
    named = dict(module.named_parameters())
    chosen = [p for n, p in named.items() if params is None or n.startswith(params)]
    was = module.training
    module.eval()
    cosines = []
    for i in range(len(first)):
        grads = []
        for x in (first[i], second[i]):
            one = (
                {k: v.unsqueeze(0) for k, v in x.items()}
                if isinstance(x, dict)
                else x.unsqueeze(0)
            )
            out = module(**one) if isinstance(one, dict) else module(one)
            g = torch.autograd.grad(
                readout(out, i),
                chosen,
                create_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            grads.append(torch.cat([t.reshape(-1) for t in g]))
        a, b = grads
        cosines.append(a @ b / (a.norm() * b.norm()))
    module.train(was)
    return torch.stack(cosines)


def posnegflat(labels, n_classes=3):
    def readout(out, i):
        v = torch.full((n_classes,), -1.0 / (n_classes - 1))
        v[labels[i]] = 1.0
        return (out[0] * v).sum()

    return readout


def rows(X, index):
    if isinstance(X, dict):
        return [{k: torch.as_tensor(v[i]) for k, v in X.items()} for i in index]
    return [torch.as_tensor(X[i]) for i in index]


def param_grads(value, module):
    return torch.autograd.grad(
        value,
        list(module.parameters()),
        allow_unused=True,
        materialize_grads=True,
        retain_graph=True,
    )


def assert_same_value_and_gradient(fast, slow, module):
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for g_fast, g_slow in zip(
        param_grads(fast.mean(), module),
        param_grads(slow.mean(), module),
        strict=True,
    ):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-6)


# -- the vectorised term against the oracle ------------------------------------


@pytest.mark.parametrize("create_graph", [True, False])
def test_engine_per_sample_gradients_match_a_loop(create_graph):
    torch.manual_seed(0)
    module = mlp(6, 3, hidden=7, seed=None)
    X = torch.randn(5, 6)
    v = torch.randn(5, 3)
    params = dict(module.named_parameters())
    grads = per_sample_gradients(
        module,
        params,
        X,
        lambda out, e: (out[0] * e).sum(),
        extra=v,
        extra_batched=True,
        create_graph=create_graph,
    )
    assert list(grads) == list(params)
    for i in range(5):
        loop = torch.autograd.grad(
            (module(X[i : i + 1])[0] * v[i]).sum(), params.values()
        )
        for name, g in zip(params, loop, strict=True):
            torch.testing.assert_close(grads[name][i], g, rtol=1e-5, atol=1e-6)
    # with the graph, the gradients can be differentiated again (double
    # back-prop); the last bias's gradient is v itself, constant either way
    assert grads["0.weight"].requires_grad == create_graph
    assert not any(g.requires_grad for g in grads.values()) or create_graph
    if create_graph:
        second = torch.autograd.grad(
            grads["0.weight"].square().sum(), params["2.weight"]
        )
        assert second[0].abs().sum() > 0


def _inputs(arch, n=10):
    rng = np.random.RandomState(1)
    if arch == "mlp":
        return mlp(6, 3, hidden=7, seed=None), rng.randn(n, 6).astype("float32")
    if arch == "cnn":
        return MaxPoolCNN(), rng.randn(n, 1, 6, 6).astype("float32")
    return TwoInputs(), {
        "left": rng.randn(n, 4).astype("float32"),
        "right": rng.randn(n, 2).astype("float32"),
    }


@pytest.mark.parametrize("gram_max", [256, 0], ids=["gram", "pairwise"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "dict"])
def test_given_pairs_posnegflat_match_oracle(arch, gram_max, monkeypatch):
    monkeypatch.setattr(regularized, "GRAM_MAX_SAMPLES", gram_max)
    torch.manual_seed(0)
    module, X = _inputs(arch)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pairs = np.array([[0, 3], [1, 4], [2, 5], [6, 9], [3, 6]])
    net = make_net(module, similarity_pairs="given").initialize()
    Xp = with_pairs(X, pairs)
    fast = net.batch_pair_cosines(Xp, y, 3, graph=True)
    # with_pairs moves a pair to the row with the smaller load; recover the order
    mask = np.asarray(Xp[PAIR_MASK])
    row, slot = np.nonzero(mask)
    partner_inputs = (
        {k: np.asarray(Xp[f"{PAIR_PARTNER}:{k}"])[row, slot] for k in X}
        if isinstance(X, dict)
        else np.asarray(Xp[PAIR_PARTNER])[row, slot]
    )
    slow = oracle_cosines(
        module, rows(X, row), rows(partner_inputs, range(len(row))), posnegflat(y[row])
    )
    assert fast.shape == (len(pairs),)
    assert_same_value_and_gradient(fast, slow, module)


def test_same_class_pairs_and_random_readout_match_oracle():
    torch.manual_seed(0)
    module, X = _inputs("mlp", n=12)
    y = np.array([0, 0, 1, 1, 1, 2, 0, 1, 0, 2, 2, 1])
    net = make_net(module, similarity_readout="random").initialize()
    fast = net.batch_pair_cosines(
        X, y, 3, generator=torch.Generator().manual_seed(5), graph=True
    )
    g = torch.Generator().manual_seed(5)
    anchor, partner = same_class_partners(torch.as_tensor(y), g)
    v = torch.randn(3, generator=g)
    slow = oracle_cosines(
        module,
        rows(X, anchor.numpy()),
        rows(X, partner.numpy()),
        lambda out, i: (out[0] * v).sum(),
    )
    assert_same_value_and_gradient(fast, slow, module)


def test_augment_callable_readout_and_parameter_selection_match_oracle():
    torch.manual_seed(0)
    module, X = _inputs("mlp", n=6)
    y = np.array([0, 1, 2, 0, 1, 2])
    net = make_net(
        module,
        similarity_pairs=flip_sign,
        similarity_readout=squared_first_output,
        similarity_params="0",
    ).initialize()
    fast = net.batch_pair_cosines(X, y, 3, graph=True)
    slow = oracle_cosines(
        module,
        rows(X, range(6)),
        rows(flip_sign(torch.as_tensor(X)), range(6)),
        lambda out, i: squared_first_output(out, None).sum(),
        params="0.",
    )
    # the term compares first-layer gradients but its own gradient reaches all
    assert_same_value_and_gradient(fast, slow, module)
    assert param_grads(fast.mean(), module)[2].abs().sum() > 0


def test_classifier_with_nllloss_reads_out_log_probabilities():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        mlp(6, 3, hidden=7, seed=None), torch.nn.Softmax(dim=-1)
    )
    X, y = make_data(n=6)
    net = SimilarityRegularizedClassifier(
        module, similarity_pairs=flip_sign, train_split=None, verbose=0
    ).initialize()
    fast = net.batch_pair_cosines(X, y, 3, graph=True)
    # posnegflat weights sum to zero: log-softmax read-out equals the logits one
    logits = module[0]
    slow = oracle_cosines(
        module,
        rows(X, range(6)),
        rows(flip_sign(torch.as_tensor(X)), range(6)),
        lambda out, i: posnegflat(y)(torch.log(out), i),
    )
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    on_logits = oracle_cosines(
        logits,
        rows(X, range(6)),
        rows(flip_sign(torch.as_tensor(X)), range(6)),
        posnegflat(y),
    )
    torch.testing.assert_close(fast, on_logits, rtol=1e-4, atol=1e-5)


def test_a_confident_nllloss_classifier_reads_out_its_logits_similarities():
    """log(p + eps) damped the gradients of classes below eps = 1.2e-7: the
    read-out of a confident net parted from the logits' (0.446 for 0.606)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        mlp(6, 3, hidden=7, seed=None), torch.nn.Softmax(dim=-1)
    )
    with torch.no_grad():
        module[0][-1].weight.mul_(40.0)
    X, y = make_data(n=6)
    with torch.no_grad():
        assert module(torch.as_tensor(X)).min() < 1e-9  # confident
    net = SimilarityRegularizedClassifier(
        module, similarity_pairs=flip_sign, train_split=None, verbose=0
    ).initialize()
    on_logits = oracle_cosines(
        module[0],
        rows(X, range(6)),
        rows(flip_sign(torch.as_tensor(X)), range(6)),
        posnegflat(y),
    )
    fast = net.batch_pair_cosines(X, y, 3, graph=True)
    torch.testing.assert_close(fast, on_logits, rtol=1e-4, atol=1e-5)


def test_term_uses_eval_mode_with_dropout_and_batchnorm():
    torch.manual_seed(0)
    module = WithDropoutAndBatchNorm()
    X, y = make_data(n=16)
    net = make_net(module, similarity_pairs=flip_sign, max_epochs=1).fit(X, y)
    fast = net.batch_pair_cosines(X[:5], y[:5], 3, graph=True)
    slow = oracle_cosines(
        module,
        rows(X, range(5)),
        rows(flip_sign(torch.as_tensor(X)), range(5)),
        posnegflat(y[:5]),
    )
    assert_same_value_and_gradient(fast, slow, module)
    assert module.training  # modes restored


def test_batchnorm_without_running_statistics_is_refused():
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 4),
        torch.nn.BatchNorm1d(4, track_running_stats=False),
        torch.nn.Linear(4, 3),
    )
    X, y = make_data()
    with pytest.raises(ValueError, match="use batch statistics even in eval mode"):
        make_net(module).fit(X, y)


def test_dead_gradients_give_cosine_zero_not_nan():
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)
    )
    with torch.no_grad():
        module[0].bias.fill_(-100.0)  # every hidden unit dead: only the bias of
        module[2].weight.zero_()  # the last layer moves, and phi's gradient there
    X, y = make_data(n=6)  # is the constant read-out vector
    net = make_net(
        module, similarity_pairs=flip_sign, similarity_params=["0", "2.weight"]
    ).initialize()
    cos = net.batch_pair_cosines(X, y, 3, graph=True)
    assert torch.equal(cos, torch.zeros(6))
    assert all(torch.isfinite(g).all() for g in param_grads(cos.mean(), module))


def test_small_gradients_keep_their_cosine():
    """Gradients of norm 1e-10 (a read-out layer in small units) have the
    cosines of the same gradients at norm 1: no absolute floor shrinks them."""
    module = mlp(6, 3, hidden=7, seed=0)
    with torch.no_grad():
        module[-1].weight.mul_(1e-5)  # first-layer gradients shrink with it
    X, y = make_data(n=6)
    net = make_net(module, similarity_pairs=flip_sign, similarity_params="0")
    cos = net.initialize().batch_pair_cosines(X, y, 3, graph=True)
    slow = oracle_cosines(
        module.double(),
        [x.double() for x in rows(X, range(6))],
        [x.double() for x in rows(flip_sign(torch.as_tensor(X)), range(6))],
        posnegflat(y),
        params="0",
    )
    assert slow.abs().min() > 0.1
    torch.testing.assert_close(cos.double(), slow, rtol=1e-4, atol=0)


# -- pairs ------------------------------------------------------------------------


def test_same_class_partners_rule():
    y = torch.tensor([3, 1, 3, 2, 3, 1, 7])
    g = torch.Generator().manual_seed(0)
    counts = np.zeros((7, 7))
    for _ in range(3000):
        anchor, partner = same_class_partners(y, g)
        # every sample of a class with >= 2 members is an anchor exactly once;
        # the singletons (labels 2 and 7) get no pair
        assert sorted(anchor.tolist()) == [0, 1, 2, 4, 5]
        assert torch.equal(y[anchor], y[partner])
        assert not (anchor == partner).any()
        counts[anchor.numpy(), partner.numpy()] += 1
    # uniform over the other members of the class
    np.testing.assert_allclose(counts[0, [2, 4]] / 3000, [0.5, 0.5], atol=0.04)
    np.testing.assert_allclose(counts[4, [0, 2]] / 3000, [0.5, 0.5], atol=0.04)
    assert counts[1, 5] == counts[5, 1] == 3000


def test_same_class_partners_without_any_pair():
    anchor, partner = same_class_partners(torch.tensor([0, 1, 2]))
    assert anchor.numel() == partner.numel() == 0
    net = make_net().initialize()
    assert net.batch_pair_cosines(np.zeros((3, 6), "float32"), [0, 1, 2], 3) is None


@pytest.mark.parametrize("kind", ["numpy", "tensor", "dict"])
def test_with_pairs_keeps_every_pair_with_its_data(kind):
    rng = np.random.RandomState(0)
    X = rng.randn(7, 3).astype("float32")
    pairs = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [5, 6], [1, 2], [6, 0]])
    data = {"numpy": X, "tensor": torch.as_tensor(X), "dict": {"a": X, "b": X * 2}}
    Xp = with_pairs(data[kind], pairs)
    assert isinstance(Xp, SliceDict)
    mask = np.asarray(Xp[PAIR_MASK])
    partner = np.asarray(
        Xp[f"{PAIR_PARTNER}:a"] if kind == "dict" else Xp[PAIR_PARTNER]
    )
    # loads are balanced: 7 pairs over 7 rows fit in one slot per row
    assert mask.shape == (7, 1)
    found = set()
    for r, s in zip(*np.nonzero(mask), strict=True):
        j = int(np.flatnonzero((X == partner[r, s]).all(axis=1))[0])
        found.add(frozenset((int(r), j)))
    assert found == {frozenset(p) for p in pairs.tolist()}
    if kind == "dict":
        np.testing.assert_array_equal(Xp[f"{PAIR_PARTNER}:b"], 2 * partner)


def test_with_pairs_survives_slicing_like_cross_validation():
    X = np.arange(20, dtype="float32").reshape(10, 2)
    Xp = with_pairs(X, [[i, (i + 3) % 10] for i in range(10)])
    part = Xp[np.array([8, 1, 4])]
    for r in range(3):
        for s in np.flatnonzero(np.asarray(part[PAIR_MASK][r])):
            i = int(part["similarity_input"][r, 0]) // 2
            j = int(part[PAIR_PARTNER][r, s, 0]) // 2
            assert (j - i) % 10 in (3, 7)


@pytest.mark.parametrize(
    "pairs, match",
    [
        (np.zeros((3, 3), int), r"shape \(n_pairs, 2\).*got shape \(3, 3\)"),
        (np.zeros((0, 2), int), r"non-empty integer array"),
        (np.array([[0, 1.5]]), "must hold integer row indices"),
        (
            np.array([[0, 1], [2, 5]]),
            r"indices outside \[0, 5\).*pairs\[1\] = \[2, 5\]",
        ),
        (np.array([[0, 1], [-1, 2]]), r"indices outside \[0, 5\)"),
        (np.array([[0, 1], [3, 3]]), r"pairs\[1\] = \[3, 3\] pairs a sample with"),
    ],
)
def test_with_pairs_errors(pairs, match):
    with pytest.raises(ValueError, match=match):
        with_pairs(np.zeros((5, 2)), pairs)


def test_with_pairs_refuses_reserved_keys():
    X = with_pairs(np.zeros((3, 2)), [[0, 1]])
    with pytest.raises(ValueError, match="already carries pairs"):
        with_pairs(X, [[0, 1]])
    with pytest.raises(ValueError, match="reserved prefix"):
        with_pairs({"similarity_partner_x": np.zeros((3, 2))}, [[0, 1]])


# -- training: the loss, the history, exactness at weight 0 ----------------------


@pytest.mark.parametrize("direction, sign", [("similar", -1), ("dissimilar", 1)])
@pytest.mark.parametrize("every", [2, np.int64(2)], ids=["int", "numpy_int"])
def test_training_steps_add_exactly_the_signed_weighted_term_every_k_steps(
    every, direction, sign
):
    torch.manual_seed(0)
    X, y = make_data(n=8)
    Xp = with_pairs(X, [[0, 3], [1, 4], [2, 5]])
    net = make_net(
        similarity_pairs="given",
        similarity_weight=0.7,
        similarity_direction=direction,
        similarity_every=every,
        optimizer=torch.optim.SGD,
        lr=0.0,  # the weights stay: each step's loss is that of the same net
    ).initialize()
    net.history.new_epoch()
    batch = {k: torch.as_tensor(np.asarray(v)) for k, v in Xp.items()}
    y_pred = net.infer(batch)
    plain = net.get_loss(y_pred, torch.as_tensor(y), X=batch, training=False)
    cos = net.batch_pair_cosines(batch, y, 3).mean()
    for step in range(3):
        net.history.new_batch()
        loss = net.train_step((batch, torch.as_tensor(y)))["loss"]
        recorded = net.history[-1, "batches", -1]
        if step % 2:
            assert loss.item() == pytest.approx(plain.item(), 1e-6)
            assert "similarity_term" not in recorded
        else:
            term = sign * 0.7 * cos.item()
            assert loss.item() == pytest.approx(plain.item() + term, 1e-6)
            assert recorded["similarity_cosine"] == pytest.approx(cos.item(), 1e-6)
            assert recorded["similarity_term"] == pytest.approx(term, 1e-6)
            # the step's gradients are the term's too (lr=0 leaves them in .grad)
            params = list(net.module_.parameters())
            with_graph = net.batch_pair_cosines(batch, y, 3, graph=True).mean()
            total = net.get_loss(net.infer(batch), torch.as_tensor(y))
            expected = torch.autograd.grad(total + sign * 0.7 * with_graph, params)
            for param, grad in zip(params, expected, strict=True):
                torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-6)
    assert net.similarity_steps_ == 3


def test_every_evaluation_of_a_steps_loss_has_the_same_term():
    """LBFGS evaluates a step's loss several times: one step is counted, and
    its evaluations share the term and its random read-out."""
    seeds = []

    class Recording(SimilarityRegularizedRegressor):
        def get_loss(self, y_pred, y_true, X=None, training=False):
            if training:
                seeds.append((self.similarity_steps_, self._step_seed_))
            return super().get_loss(y_pred, y_true, X=X, training=training)

    X, _ = make_data(n=8)
    torch.manual_seed(0)
    net = Recording(
        mlp(6, 3, hidden=7, seed=None),
        optimizer=torch.optim.LBFGS,
        optimizer__max_iter=4,
        similarity_every=2,
        max_epochs=1,
        batch_size=4,
        train_split=None,
        verbose=0,
    ).fit(with_pairs(X, [[0, 1], [4, 5]]), X[:, :3] ** 2)
    assert net.similarity_steps_ == 2
    first = {seed for step, seed in seeds if step == 0}
    second = {seed for step, seed in seeds if step == 1}
    assert len(first) == 1 and None not in first and second == {None}
    assert len(seeds) > 2


class Tempered(torch.nn.Module):
    """An MLP whose inputs a forward keyword divides, given or not."""

    def __init__(self, default=True):
        super().__init__()
        self.body = mlp(6, 3, hidden=7, seed=None)
        self.default = default

    def forward(self, x, temperature=None):
        if temperature is None and not self.default:
            raise TypeError("forward() missing 1 required argument: 'temperature'")
        return self.body(x / (1.0 if temperature is None else temperature))


@pytest.mark.parametrize("default", [True, False])
def test_the_terms_forward_gets_the_fit_params(default):
    """skorch passes fit(..., temperature=3.0) to the module's forward; the
    term compared the gradients of the network at its default temperature
    (-0.61 for -0.49), and failed where the keyword has no default."""
    torch.manual_seed(0)
    X, y = make_data(n=6)
    pairs = [[0, 3], [1, 4], [2, 5]]
    net = make_net(
        Tempered(default),
        similarity_pairs="given",
        optimizer=torch.optim.SGD,
        lr=0.0,
        max_epochs=1,
        train_split=predefined_split(Dataset(with_pairs(X, pairs), y)),
    ).fit(with_pairs(X, pairs), y, temperature=3.0)
    module = net.module_

    class At(torch.nn.Module):
        def __init__(self, temperature):
            super().__init__()
            self.module, self.temperature = module, temperature

        def forward(self, x):
            return self.module(x, temperature=self.temperature)

    first, second = (torch.as_tensor(X[[p[k] for p in pairs]]) for k in (0, 1))
    expected = {
        t: oracle_cosines(At(t), first, second, posnegflat(y[:3])).mean().item()
        for t in (3.0, 1.0)
    }
    assert abs(expected[3.0] - expected[1.0]) > 0.05
    recorded = net.history[-1, "batches", 0]
    assert recorded["similarity_cosine"] == pytest.approx(expected[3.0], rel=1e-5)
    assert net.history[-1, "valid_similarity_cosine"] == pytest.approx(
        expected[3.0], rel=1e-5
    )
    net.history.new_batch()  # a train_step called directly, as a loop of one's own
    batch = {k: torch.as_tensor(np.asarray(v)) for k, v in with_pairs(X, pairs).items()}
    net.train_step((batch, torch.as_tensor(y)), temperature=3.0)
    assert net.history[-1, "batches", -1, "similarity_cosine"] == pytest.approx(
        expected[3.0], rel=1e-5
    )


ACCUMULATED = 2  # steps of the gradient accumulation below


class AccumulatingClassifier(SimilarityRegularizedClassifier):
    """skorch's recipe for gradient accumulation: its own train_step."""

    def get_loss(self, *args, **kwargs):
        return super().get_loss(*args, **kwargs) / ACCUMULATED

    def train_step(self, batch, **fit_params):
        step = self.train_step_single(batch, **fit_params)
        if len(self.history[-1]["batches"]) % ACCUMULATED == 0:
            self.optimizer_.step()
            self.optimizer_.zero_grad()
        return step


@pytest.mark.parametrize("every", [1, 2])
def test_a_train_step_of_its_own_has_the_term(every):
    """A subclass's train_step that calls train_step_single (skorch's
    gradient accumulation) trained without the term, without a word."""
    torch.manual_seed(0)
    X, y = make_data(n=20)
    net = AccumulatingClassifier(
        mlp(6, 3, hidden=7, seed=None),
        batch_size=5,
        max_epochs=1,
        train_split=None,
        verbose=0,
        similarity_weight=10.0,
        similarity_every=every,
    ).fit(X, y)
    assert net.similarity_steps_ == 4
    termed = ["similarity_term" in b for b in net.history[-1, "batches"]]
    assert termed == [step % every == 0 for step in range(4)]


DRAWS = []  # the noise sums an augment drew, in the order of its calls


def noisy(X):
    """An augmentation drawing from torch's global generator."""
    noise = 0.1 * torch.randn_like(X)
    DRAWS.append(noise.sum().item())
    return X + noise


def test_an_augments_draws_are_the_steps_and_the_validations_own():
    """A random augment drew from torch's global generator: validation
    changed the training (4e-4), scored other pairs every epoch, and an
    LBFGS step's evaluations saw other augmentations."""
    X, y = make_data(n=24)
    trained = []
    for callback in (None, "default"):
        torch.manual_seed(0)
        options = {} if callback else {"callbacks__valid_similarity": None}
        net = make_net(
            similarity_pairs=noisy, train_split=ValidSplit(4), **options
        ).fit(X, y)
        trained.append(torch.cat([p.reshape(-1) for p in net.module_.parameters()]))
    assert torch.equal(*trained)
    torch.manual_seed(0)
    net = make_net(
        similarity_pairs=noisy,
        optimizer=torch.optim.SGD,
        lr=0.0,
        max_epochs=3,
        train_split=ValidSplit(4),
    ).fit(X, y)
    assert len(set(net.history[:, "valid_similarity_cosine"])) == 1
    DRAWS.clear()
    make_net(
        similarity_pairs=noisy,
        optimizer=torch.optim.LBFGS,
        optimizer__max_iter=4,
        max_epochs=1,
        batch_size=24,
    ).fit(X, y)
    assert len(DRAWS) > 1 and len(set(DRAWS)) == 1


def test_history_per_batch_and_per_epoch():
    torch.manual_seed(0)
    X, y = make_data(n=30)
    net = make_net(similarity_weight=0.5, batch_size=8, max_epochs=2).fit(X, y)
    # the default direction, "similar", subtracts the weighted mean cosine
    for epoch in net.history:
        batches = [b for b in epoch["batches"] if "train_loss" in b]
        assert len(batches) == 4
        sizes = [b["train_batch_size"] for b in batches]
        cos = [b["similarity_cosine"] for b in batches]
        np.testing.assert_allclose(
            [b["similarity_term"] for b in batches], -0.5 * np.array(cos), rtol=1e-6
        )
        assert epoch["similarity_cosine"] == pytest.approx(
            np.average(cos, weights=sizes)
        )
        assert epoch["similarity_term"] == pytest.approx(
            np.average([b["similarity_term"] for b in batches], weights=sizes)
        )


def test_validation_pair_similarity_is_recorded_every_epoch():
    torch.manual_seed(0)
    X, y = make_data(n=40)
    pairs = np.array([[i, i + 3] for i in range(0, 37, 2)])
    Xp = with_pairs(X, pairs)
    train, valid = np.arange(24), np.arange(24, 40)
    net = make_net(
        similarity_pairs="given",
        batch_size=6,
        max_epochs=3,
        train_split=predefined_split(Dataset(Xp[valid], y[valid])),
    ).fit(Xp[train], y[train])
    values = net.history[:, "valid_similarity_cosine"]
    assert len(values) == 3 and len(set(values)) == 3
    # the last epoch's value is the mean over the validation pairs of the
    # final network (validation runs after the epoch's training)
    expected = net.pair_similarity(Xp[valid], y[valid])
    assert len(expected) == np.asarray(Xp[valid][PAIR_MASK]).sum()
    assert values[-1] == pytest.approx(expected.mean(), rel=1e-5)
    batch_values = net.history[-1, "batches", :, "valid_similarity_cosine"]
    assert len(batch_values) == 3


def test_validation_seed_accepts_numpy_ints_and_refuses_floats():
    X, y = make_data(n=40)

    def valid_cosines(seed):
        torch.manual_seed(0)
        net = make_net(
            train_split=lambda ds, y: (ds, ds),
            callbacks__valid_similarity__seed=seed,
            similarity_readout="random",
            max_epochs=2,
        ).fit(X, y)
        return net.history[:, "valid_similarity_cosine"]

    assert valid_cosines(np.int64(3)) == valid_cosines(3)
    with pytest.raises(ValueError, match=r"seed must be an int; got 0\.5"):
        valid_cosines(0.5)


def test_validation_pair_similarity_can_be_switched_off():
    X, y = make_data(n=40)
    net = make_net(
        train_split=lambda ds, y: (ds, ds), callbacks__valid_similarity=None
    ).fit(X, y)
    assert "valid_similarity_cosine" not in net.history[-1]


@pytest.mark.parametrize("flavour", ["classifier", "regressor"])
def test_weight_zero_trains_exactly_like_plain_skorch(flavour):
    X, y = make_data(n=60)
    if flavour == "regressor":
        y = X[:, :2] ** 2
        ours = SimilarityRegularizedRegressor
        theirs = NeuralNetRegressor
        kwargs = {"module__n_out": 2}
    else:
        ours, theirs, kwargs = SimilarityRegularizedClassifier, NeuralNetClassifier, {}

    def module(n_out=3):
        return torch.nn.Sequential(
            torch.nn.Linear(6, 16),
            torch.nn.Dropout(0.3),
            torch.nn.ReLU(),
            torch.nn.Linear(16, n_out),
            torch.nn.Softmax(dim=-1),
        )

    common = dict(
        optimizer=torch.optim.Adam,
        lr=1e-2,
        max_epochs=3,
        batch_size=16,
        iterator_train__shuffle=True,
        verbose=0,
        **kwargs,
    )
    torch.manual_seed(0)
    plain = theirs(module, **common).fit(X, y)
    torch.manual_seed(0)
    regularized = ours(module, similarity_weight=0.0, **common).fit(X, y)
    for a, b in zip(
        plain.module_.state_dict().values(),
        regularized.module_.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    for key in ("train_loss", "valid_loss"):
        assert plain.history[:, key] == regularized.history[:, key]


@pytest.mark.slow
def test_direction_moves_the_pair_cosine_the_way_it_says():
    """On digits, "similar" raises the pairs' cosine and "dissimilar" lowers it."""
    X, y = digits(400)

    def train(weight, direction):
        torch.manual_seed(0)
        net = SimilarityRegularizedClassifier(
            torch.nn.Sequential(
                torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
            ),
            criterion=torch.nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=1e-3,
            max_epochs=3,
            batch_size=32,
            train_split=None,
            verbose=0,
            similarity_weight=weight,
            similarity_direction=direction,
        ).fit(X, y)
        return net.pair_similarity(X, y, random_state=0).mean()

    none = train(0.0, "similar")
    enforce, push_apart = train(1.0, "similar"), train(1.0, "dissimilar")
    assert enforce > none + 0.02
    assert push_apart < none - 0.02


# -- scikit-learn and skorch integration ------------------------------------------


def test_set_params_clone_and_pickle_round_trip():
    X, y = make_data(n=24)
    net = make_net(similarity_pairs=flip_sign, similarity_readout=squared_first_output)
    net.set_params(
        similarity_weight=0.3, similarity_direction="dissimilar", similarity_every=2
    )
    cloned = clone(net)
    for name in (
        "similarity_weight",
        "similarity_direction",
        "similarity_every",
        "similarity_pairs",
        "similarity_readout",
        "similarity_params",
    ):
        assert cloned.get_params()[name] == net.get_params()[name]
    torch.manual_seed(0)
    cloned.fit(X, y)
    restored = pickle.loads(pickle.dumps(cloned))
    np.testing.assert_array_equal(restored.predict_proba(X), cloned.predict_proba(X))
    np.testing.assert_allclose(
        restored.pair_similarity(X, y), cloned.pair_similarity(X, y), rtol=1e-6
    )
    assert restored.similarity_steps_ == cloned.similarity_steps_ == 6
    restored.partial_fit(X, y)  # training goes on after unpickling
    assert restored.similarity_steps_ == 12
    # the term every 2nd step (3 steps an epoch) goes on counting across pickling
    assert [
        len(restored.history[e, "batches", :, "similarity_cosine"]) for e in range(4)
    ] == [2, 1, 2, 1]


def test_grid_search_over_weight_and_direction():
    X, y = digits(240)
    net = SimilarityRegularizedClassifier(
        torch.nn.Sequential(
            torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        ),
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-2,
        max_epochs=2,
        batch_size=32,
        train_split=None,
        verbose=0,
    )
    directions = ["similar", "dissimilar"]
    grid = {"similarity_weight": [0.0, 5.0], "similarity_direction": directions}
    torch.manual_seed(0)
    search = GridSearchCV(net, grid, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_ in [
        {"similarity_weight": w, "similarity_direction": d}
        for w in (0.0, 5.0)
        for d in directions
    ]
    for key, value in search.best_params_.items():
        assert search.best_estimator_.get_params()[key] == value
    assert len(set(np.round(search.cv_results_["mean_test_score"], 6))) > 1


def test_grid_search_with_attached_pairs():
    X, y = digits(120)
    same = [[i, j] for i in range(120) for j in range(i + 1, 120) if y[i] == y[j]]
    Xp = with_pairs(X, np.array(same[::7]))
    net = SimilarityRegularizedClassifier(
        torch.nn.Sequential(torch.nn.Linear(64, 10)),
        criterion=torch.nn.CrossEntropyLoss,
        similarity_pairs="given",
        max_epochs=1,
        batch_size=40,
        train_split=None,
        verbose=0,
    )
    grid = {"similarity_direction": ["similar", "dissimilar"]}
    search = GridSearchCV(net, grid, cv=2).fit(Xp, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert len(search.best_estimator_.history[-1, "batches", :, "similarity_term"]) == 3


def test_regressor_with_given_pairs_and_random_readout():
    torch.manual_seed(0)
    X, _ = make_data(n=20)
    y = X[:, :1] ** 2
    reg = SimilarityRegularizedRegressor(
        mlp(6, 1, hidden=7, seed=None),
        max_epochs=2,
        batch_size=10,
        train_split=None,
        verbose=0,
    ).fit(with_pairs(X, [[0, 1], [2, 3], [4, 15]]), y)
    assert reg.similarity_pairs == "given" and reg.similarity_readout == "random"
    assert len(reg.history[:, "similarity_cosine"]) == 2
    # for one output the random read-out is +-f: the cosine is that of grad f
    cos = reg.pair_similarity(with_pairs(X, [[0, 1]]))
    slow = oracle_cosines(
        reg.module_, rows(X, [0]), rows(X, [1]), lambda out, i: out.sum()
    )
    assert cos[0] == pytest.approx(slow.item(), abs=1e-6)
    assert reg.predict(X).shape == (20, 1)
    # in the order given, not that of the rows carrying them
    pairs = np.array([[5, 1], [0, 3], [7, 2], [10, 4], [3, 9], [18, 6]])
    cos = reg.pair_similarity(with_pairs(X, pairs), batch_size=4)
    slow = oracle_cosines(
        reg.module_, rows(X, pairs[:, 0]), rows(X, pairs[:, 1]), lambda o, i: o.sum()
    )
    np.testing.assert_allclose(cos, slow.detach().numpy(), atol=1e-6)


def test_same_class_pair_similarity_is_each_samples_cosine_with_a_classmate():
    """Each sample whose class has another member, by label then row, paired
    with one of them and read out at its own label: a read-out at the next
    label passed every test (0.261 for 0.227)."""
    X, y = make_data(n=12)
    X, y = X[:11], y[:11]  # class 2 of 3 members, the others of 4
    net = make_net().fit(X, y)
    cosines = net.pair_similarity(X, y, random_state=0)
    anchors = np.concatenate([np.flatnonzero(y == c) for c in range(3)])
    assert len(cosines) == len(anchors)
    partners = []
    for value, a in zip(cosines, anchors, strict=True):
        mates = [b for b in np.flatnonzero(y == y[a]) if b != a]
        readout = posnegflat(np.full(len(mates), y[a]))
        oracle = oracle_cosines(
            net.module_, rows(X, [a] * len(mates)), rows(X, mates), readout
        )
        distance = np.abs(oracle.detach().numpy() - value)
        assert distance.min() < 1e-6
        partners.append(mates[distance.argmin()])
    assert len(set(partners)) > 3  # drawn, not always the first classmate


def test_pair_similarity_refuses_pairs_it_would_ignore():
    """A same-class or augmenting net gave as many of its own cosines as pairs
    were attached, numbered as theirs."""
    X, y = make_data(n=12)
    for pairs in ("same_class", flip_sign):
        net = make_net(similarity_pairs=pairs).fit(X, y)
        with pytest.raises(ValueError, match="carries pairs .* would ignore them"):
            net.pair_similarity(with_pairs(X, [[0, 3], [1, 4]]), y)


def test_pair_similarity_takes_inputs_of_any_float_dtype():
    """float64 arrays, lists and frames failed inside torch on a float32 net."""
    X, y = make_data(n=12)
    net = make_net().fit(X, y)
    expected = net.pair_similarity(X, y, random_state=0)
    X64 = X.astype(np.float64)
    for given in [X64, X64.tolist(), pd.DataFrame(X64)]:
        found = net.pair_similarity(given, y, random_state=0)
        np.testing.assert_array_equal(found, expected)


def test_pair_similarity_with_a_random_readout_is_one_readout_for_all_pairs():
    """Each chunk of batch_size pairs drew its own read-out: the cosines
    changed with batch_size (by up to 0.17)."""
    X, y = make_data()
    net = make_net(similarity_readout="random", similarity_pairs=flip_sign).fit(X, y)
    cosines = [
        net.pair_similarity(X, y, random_state=0, batch_size=size) for size in (4, 64)
    ]
    np.testing.assert_allclose(cosines[0], cosines[1], rtol=0, atol=1e-6)


def test_posnegflat_weights_sum_to_zero_in_float64():
    """They were float32, whose -1/3 left a sum of -6e-8, so that logits and
    log-softmax outputs read out differently in a float64 network."""
    v = posnegflat_weights(torch.tensor([0, 3]), 4)
    assert v.dtype == torch.float64
    np.testing.assert_array_equal(v.sum(1).abs() < 1e-15, [True, True])


def test_regressor_takes_one_target_per_sample_as_a_column():
    """The outputs are (n, 1): a 1-D y is not broadcast against them."""
    X, _ = make_data(n=20)
    Xp = with_pairs(X, [[0, 1], [2, 3]])
    histories = [
        fitted_regressor(
            lambda: mlp(6, 1, hidden=7, seed=None), Xp, y, max_epochs=2, batch_size=10
        ).history[:, "train_loss"]
        for y in (X[:, 0] ** 2, X[:, :1] ** 2)
    ]
    assert histories[0] == histories[1]


def fitted_regressor(make_module, X, y, **params):
    """A regressor on a module drawn under seed 0, fitted where torch must not
    warn (it warns of targets broadcast against the outputs)."""
    torch.manual_seed(0)
    reg = SimilarityRegularizedRegressor(
        make_module(), train_split=None, verbose=0, **params
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return reg.fit(X, y)


class Squeezed(torch.nn.Module):
    """A module whose outputs are ``(n,)``, as a scalar regression's often are."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, X):
        return self.module(X).squeeze(-1)


def test_regressor_with_flat_outputs_takes_flat_targets():
    """Outputs (n,): a column y was compared with every output (R^2 0.01)."""
    rng = np.random.RandomState(0)
    X = rng.randn(300, 3).astype(np.float32)
    y = (X @ np.float32([1.0, -2.0, 0.5])).astype(np.float32)
    Xp = with_pairs(X, np.stack([np.arange(20), np.arange(20, 40)], 1))
    scores = [
        fitted_regressor(
            lambda: Squeezed(mlp(3, 1, hidden=16, seed=None)),
            Xp,
            target,
            similarity_pairs="given",
            max_epochs=60,
            lr=0.05,
        ).score(X, y)
        for target in (y, y[:, None])
    ]
    assert scores[0] == scores[1] and scores[0] > 0.95


def test_prediction_ignores_attached_pairs():
    torch.manual_seed(0)
    X, y = make_data(n=12)
    net = make_net(similarity_pairs="given").fit(with_pairs(X, [[0, 3], [1, 4]]), y)
    np.testing.assert_array_equal(
        net.predict_proba(with_pairs(X, [[5, 6]])), net.predict_proba(X)
    )


@pytest.mark.parametrize(
    "estimator", ["NetworkSimilarityKernel", "NetworkNeighbors", "LabelIssueDetector"]
)
def test_estimators_train_a_given_pairs_net_on_its_pairs(estimator):
    """An unfitted net of given pairs handed to an estimator with
    with_pairs(X, pairs): the pairs were dropped before its training, which
    then asked for them ("fit on with_pairs(X, pairs)")."""
    import sksim

    X, y = make_data(n=24)
    X_pairs = with_pairs(X, [[0, 3], [1, 4], [2, 7], [5, 9]])
    net = make_net(similarity_pairs="given", similarity_weight=5.0)
    if estimator == "LabelIssueDetector":
        from sklearn.model_selection import KFold

        folds = KFold(2)
        detector = sksim.LabelIssueDetector(net, cv=folds, n_neighbors=3)
        detector.set_params(random_state=0).fit(X_pairs, y)
        for (train, test), seed in zip(
            folds.split(X),
            np.random.RandomState(0).randint(2**31 - 1, size=2),
            strict=True,
        ):
            torch.manual_seed(int(seed))
            fold = clone(net).fit(X_pairs[train], y[train])
            np.testing.assert_allclose(
                detector.oof_proba_[test], fold.predict_proba(X[test]), rtol=1e-6
            )
        return
    fitted = getattr(sksim, estimator)(net, random_state=0).fit(X_pairs, y)
    torch.manual_seed(0)
    expected = clone(net).fit(X_pairs, y)
    trained = zip(
        fitted.net_.module_.parameters(), expected.module_.parameters(), strict=True
    )
    assert all(torch.equal(a, b) for a, b in trained)
    assert fitted.n_features_in_ == 6  # the inputs, without the pairs


@pytest.mark.parametrize("kind", ["plain", "same_class"])
def test_other_nets_train_on_the_inputs_of_pair_data(kind):
    """Only a net of given pairs trains on them: a plain skorch net handed
    with_pairs(X, pairs) got them as keyword arguments of its forward, and a
    same_class one refused them."""
    import sksim

    X, y = make_data(n=24)
    X_pairs = with_pairs(X, [[0, 3], [1, 4]])
    net = (
        make_net()
        if kind == "same_class"
        else NeuralNetClassifier(
            mlp(6, 3, hidden=7, seed=None),
            criterion=torch.nn.CrossEntropyLoss,
            max_epochs=2,
            train_split=None,
            verbose=0,
        )
    )
    for estimator in ("NetworkSimilarityKernel", "LabelIssueDetector"):
        options = (
            {"cv": 2, "n_neighbors": 3} if estimator == "LabelIssueDetector" else {}
        )
        make = getattr(sksim, estimator)
        fitted = make(net, random_state=0, **options).fit(X_pairs, y)
        expected = make(net, random_state=0, **options).fit(X, y)
        if estimator == "LabelIssueDetector":
            np.testing.assert_array_equal(fitted.oof_proba_, expected.oof_proba_)
        else:
            np.testing.assert_array_equal(fitted.transform(X), expected.transform(X))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_cpu_pickle():
    X, y = make_data(n=32)
    torch.manual_seed(0)
    net = make_net(device="cuda", similarity_readout="random").fit(X, y)
    assert next(net.module_.parameters()).is_cuda
    assert len(net.history[:, "similarity_cosine"]) == 2
    cos = net.pair_similarity(X, y, random_state=0)
    assert np.all(np.abs(cos) <= 1 + 1e-6)
    restored = pickle.loads(pickle.dumps(net))
    np.testing.assert_allclose(restored.predict_proba(X), net.predict_proba(X))
    # an augmentation's seed is drawn from the step's CUDA generator
    augmented = make_net(device="cuda", similarity_pairs=flip_sign).fit(X, y)
    assert len(augmented.history[:, "similarity_term"]) == 2


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, match",
    [
        ({"similarity_weight": -1.0}, "similarity_weight must be a finite non-neg"),
        ({"similarity_weight": float("nan")}, "similarity_weight must be"),
        ({"similarity_direction": -1}, "similarity_direction must be one of"),
        (
            {"similarity_direction": "same"},
            r"one of \('similar', 'dissimilar'\).*got 'same'",
        ),
        ({"similarity_pairs": "all"}, "similarity_pairs must be one of"),
        ({"similarity_readout": "max"}, "similarity_readout must be one of"),
        ({"similarity_every": 0}, "similarity_every must be a positive int"),
        ({"similarity_params": "fc9"}, r"params \['fc9'\] match no trainable"),
    ],
)
def test_invalid_hyper_parameters(params, match):
    X, y = make_data()
    with pytest.raises(ValueError, match=match):
        make_net(**params).fit(X, y)


def test_pair_and_label_errors():
    X, y = make_data(n=12)
    with pytest.raises(ValueError, match=r'"given" needs pairs attached to X'):
        make_net(similarity_pairs="given").fit(X, y)
    with pytest.raises(ValueError, match="carries pairs .* would ignore them"):
        make_net().fit(with_pairs(X, [[0, 1]]), y)  # same_class makes its own
    net = make_net(similarity_pairs="given").initialize()
    with pytest.raises(ValueError, match=r'"given" needs pairs attached to X'):
        net.batch_pair_cosines(X, y, 3)
    with pytest.raises(ValueError, match=r"augment callable .* input's shape \(8, 6\)"):
        make_net(similarity_pairs=wrong_shape).fit(X, y)
    with pytest.raises(ValueError, match="return tensors as it is given them .*ndarr"):
        make_net(similarity_pairs=lambda X: X.numpy()).fit(X, y)  # torch's TypeError
    outputs = lambda out, y: out  # noqa: E731 (B, d): summed without a word
    for readout, got in [(outputs, r"shape \(1, 3\)"), (lambda out, y: 1.0, "float")]:
        with pytest.raises(ValueError, match=f"must return one number per .*{got}"):
            make_net(similarity_readout=readout).fit(X, y)
    with pytest.raises(ValueError, match=r"needs integer class labels.*float"):
        make_net().initialize().batch_pair_cosines(X, y.astype(float), 3)
    with pytest.raises(ValueError, match=r"needs integer class labels.*<U21"):
        make_net().fit(X, y).pair_similarity(X, y.astype(str))  # torch's TypeError
    with pytest.raises(ValueError, match="needs class labels y; none"):
        make_net(similarity_pairs=flip_sign).initialize().batch_pair_cosines(X, None, 3)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*\[0, 4\]"):
        make_net(similarity_pairs=flip_sign).initialize().batch_pair_cosines(
            X, np.arange(12) % 5, 3
        )
    with pytest.raises(ValueError, match="at least two outputs"):
        make_net(mlp(6, 1, hidden=7, seed=None)).initialize().batch_pair_cosines(
            X, y, 1
        )
    fitted = make_net().fit(X, y)
    with pytest.raises(ValueError, match="X has 12 samples but y has 11"):
        fitted.pair_similarity(X, y[:11])
    classifier = SimilarityRegularizedClassifier(  # 3 outputs, labels up to 4
        mlp(6, 3, hidden=7, seed=None), train_split=None, max_epochs=1, verbose=0
    )
    with pytest.raises(ValueError, match=r"learns label j as its output j, and a la"):
        classifier.fit(X, np.arange(12) % 5)


# -- scikit-learn's estimator checks ------------------------------------------------


# refused by fit's check of the inputs (the pair similarity's), which skorch lacks
CHECKED_INPUTS = (
    "check_complex_data",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_estimator_sparse_tag",
    "check_estimators_empty_data_messages",
    "check_fit1d",
)


def expected_failures(estimator):
    return {
        check: reason
        for check, reason in SKORCH_INHERITED_CHECKS.items()
        if check not in CHECKED_INPUTS
    }


@parametrize_with_checks(
    [
        SimilarityRegularizedClassifier(
            LazyLinear,
            criterion=torch.nn.CrossEntropyLoss,
            max_epochs=2,
            train_split=None,
            verbose=0,
        ),
        SimilarityRegularizedRegressor(
            LazyLinear,
            module__n_out=1,
            similarity_pairs=flip_sign,
            max_epochs=2,
            train_split=None,
            verbose=0,
        ),
    ],
    expected_failed_checks=lambda est: expected_failures(est),
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (
            SimilarityRegularizedClassifier,
            NeuralNetClassifier,
            {"criterion": torch.nn.CrossEntropyLoss},
        ),
        (SimilarityRegularizedRegressor, NeuralNetRegressor, {"module__n_out": 1}),
    ],
)
def test_estimator_check_failures_are_exactly_skorchs(ours, theirs, kwargs):
    """Every expected failure is one that skorch's own net also fails."""
    from sklearn.utils.estimator_checks import check_estimator

    def failed(est):
        torch.manual_seed(0)
        return {
            r["check_name"]
            for r in check_estimator(est, on_fail=None)
            if r["status"] == "failed"
        }

    common = dict(max_epochs=2, train_split=None, verbose=0, **kwargs)
    extra = (
        {}
        if ours is SimilarityRegularizedClassifier
        else {"similarity_pairs": flip_sign}
    )
    new = failed(ours(LazyLinear, **common, **extra)) - failed(
        theirs(LazyLinear, **common)
    )
    assert new <= {"check_fit_idempotent"}  # skorch passes it by chance only


def prelu_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 3), torch.nn.PReLU(), torch.nn.Linear(3, 3)
    )


@pytest.mark.parametrize("case", ["gru", "prelu"])
def test_per_sample_gradients_of_networks_vmap_cannot_run(case):
    """A GRU fails in vmap, a PReLU is wrong in it for d samples: both are
    differentiated one sample at a time, the graph kept for training."""
    torch.manual_seed(0)
    if case == "gru":
        module, samples = RecurrentClassifier(), torch.randint(0, 20, (3, 5))
    else:
        module, samples = prelu_mlp(), torch.randn(3, 6)
    module.eval()
    params = dict(module.named_parameters())

    def readout(out, _):
        return out[0].sum()

    grads = per_sample_gradients(module, params, samples, readout)
    for i in range(3):
        out = module(samples[i : i + 1])
        expected = torch.autograd.grad(readout(out, None), list(params.values()))
        for (name, g), e in zip(grads.items(), expected, strict=True):
            torch.testing.assert_close(g[i], e, msg=name)
    total = sum(g.square().sum() for g in grads.values())
    assert total.requires_grad  # double back-propagation reaches the parameters
    total.backward()
    first = next(module.parameters())  # its gradients depend on the others
    assert first.grad is not None and first.grad.abs().sum() > 0


class FunctionalLayerNorm(torch.nn.Module):
    """``torch.layer_norm`` with a weight of the module's own, by keyword."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return torch.layer_norm(
            x, x.shape[-1:], weight=self.weight, eps=1e-5, cudnn_enable=True
        )


@pytest.mark.parametrize("norm", ["layer", "functional", "instance"])
def test_gradients_through_layer_norms_differentiate_as_autograds(norm):
    """vmap's gradients through an affine layer norm are right, but their own
    derivatives were 0.4 to 0.9 % off: the similarity term trained with wrong
    gradients (torch's batching rule of the norm's second derivative)."""
    torch.manual_seed(0)
    if norm == "instance":
        module = torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3),
            torch.nn.InstanceNorm2d(3, affine=True),
            torch.nn.Tanh(),
            torch.nn.Flatten(),
            torch.nn.Linear(12, 2),
        )
        samples = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    else:
        layer = torch.nn.LayerNorm(6) if norm == "layer" else FunctionalLayerNorm(6)
        module = torch.nn.Sequential(
            torch.nn.Linear(4, 6), layer, torch.nn.Tanh(), torch.nn.Linear(6, 2)
        )
        samples = torch.randn(4, 4, dtype=torch.float64)
    module = module.double().eval()
    params = dict(module.named_parameters())

    def readout(out, _):
        return out[0, 0] - out[0, 1]

    head = dict(list(params.items())[-2:])  # the last layer's: right for it alone
    per_sample_gradients(module, head, samples, readout)
    grads = per_sample_gradients(module, params, samples, readout)
    # vectorised: the norms by elementary operations differentiate alike
    assert _ALIKE[module] == {tuple(head): True, tuple(params): True}
    _assert_derivatives_are_autograds(module, params, grads, samples, readout)


def _assert_derivatives_are_autograds(module, chosen, grads, samples, readout):
    """The derivatives, w.r.t. every parameter of ``module``, of a random
    combination of the per-sample ``grads`` (of the ``chosen`` parameters)
    equal those of the same combination of autograd's, one sample at a time."""
    params = dict(module.named_parameters())
    expected = [
        torch.autograd.grad(
            readout(module(samples[i : i + 1]), None),
            chosen.values(),
            create_graph=True,
        )
        for i in range(len(samples))
    ]
    weights = [torch.randn_like(g) for g in grads.values()]
    found = sum((w * g).sum() for w, g in zip(weights, grads.values(), strict=True))
    wanted = sum(
        (w[i] * g).sum()
        for i, row in enumerate(expected)
        for w, g in zip(weights, row, strict=True)
    )
    unused = dict(allow_unused=True, materialize_grads=True)  # the last bias's
    for name, a, b in zip(
        params,
        torch.autograd.grad(found, params.values(), **unused),
        torch.autograd.grad(wanted, params.values(), **unused),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("selected", ["2.weight", "2", "3"])
def test_a_selection_after_a_layer_norm_trains_the_layers_before_as_autograd(selected):
    """A head (LayerNorm, Linear) selected alone: its gradients' derivatives
    were right for the head, wrong (torch's batching rule of the norm) for
    the layers before, which the term trains too, and the check compared the
    head's alone (a training step 2 to 46 % off)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        torch.nn.Tanh(),
        torch.nn.LayerNorm(6),
        torch.nn.Linear(6, 2),
    )
    module = module.double().eval()
    samples = torch.randn(4, 4, dtype=torch.float64)
    params = dict(module.named_parameters())
    chosen = {n: p for n, p in params.items() if n.startswith(selected)}

    def readout(out, _):
        return out[0, 0] - out[0, 1]

    grads = per_sample_gradients(module, chosen, samples, readout)
    _assert_derivatives_are_autograds(module, chosen, grads, samples, readout)


@pytest.mark.parametrize("pairs", ["same_class", "given"])
@pytest.mark.parametrize("dtype", ["uint8", "int32"])
def test_labels_of_any_integer_dtype_train_as_int64(pairs, dtype):
    """uint8 labels (which skorch's CrossEntropyLoss takes) indexed the
    read-out as a mask: the term's sign flipped; int32 and uint8 labels
    failed inside the same-class pairing."""
    X, y = make_data(n=24)
    X = with_pairs(X, np.arange(24).reshape(12, 2)) if pairs == "given" else X

    def cross_entropy():
        return lambda out, target: torch.nn.functional.cross_entropy(out, target.long())

    trained = {}
    for labels in (y, y.astype(dtype)):
        torch.manual_seed(0)
        net = make_net(
            mlp(6, 3, hidden=7, seed=0),
            criterion=cross_entropy,
            similarity_pairs=pairs,
            max_epochs=1,
        ).fit(X, labels)
        trained[labels.dtype.name] = (
            net.history[-1, "similarity_term"],
            [p.detach().clone() for p in net.module_.parameters()],
        )
    (term, weights), (term_as, weights_as) = trained["int64"], trained[dtype]
    assert term_as == pytest.approx(term, rel=1e-12)
    for a, b in zip(weights_as, weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_device_none_trains_where_the_module_is():
    """skorch's device=None (do not move the module) crashed in torch.device."""
    X, y = make_data()
    weights = []
    for device in ("cpu", None):
        torch.manual_seed(0)
        net = make_net(mlp(6, 3, hidden=7, seed=0), device=device).fit(X, y)
        weights.append([p.detach().clone() for p in net.module_.parameters()])
        assert not [k for k in net.get_params() if "step_seed" in k]  # was leaked
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_estimators_take_the_inputs_of_pair_data():
    """The net's training data, with_pairs(X, pairs), given to another
    estimator: "forward() got an unexpected keyword argument
    'similarity_input'", though the net's own predict takes it."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(30, 4).astype(np.float32), rng.randint(0, 3, 30)
    Xp = with_pairs(X, [[0, 1], [2, 3]])
    torch.manual_seed(0)
    clf = SimilarityRegularizedClassifier(
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(-1)),
        similarity_pairs="given",
        max_epochs=1,
        verbose=0,
        train_split=None,
    ).fit(Xp, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularJacobianGramWarning)  # softmax
        counts = GradientDensityEstimator(clf).fit(Xp).neighbor_counts(Xp)
        expected = GradientDensityEstimator(clf).fit(X).neighbor_counts(X)
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_array_equal(
            network_similarity(clf, Xp), network_similarity(clf, X)
        )


def test_a_compiled_nets_parameters_are_named_as_the_kernels_name_them():
    """skorch's compile=True: similarity_params took '_orig_mod.'-prefixed names,
    which the kernels' params= refuses, and refused the kernels' names."""
    X, y = make_data(n=12)
    options = dict(compile=True, compile__backend="eager")
    torch.manual_seed(0)
    net = make_net(similarity_params="2", **options).fit(X, y)
    assert network_similarity(net, X[:3], params="2").shape == (3, 3)
    with pytest.raises(ValueError, match=r"params \['_orig_mod.2'\] match no"):
        make_net(similarity_params="_orig_mod.2", **options).fit(X, y)
    torch.manual_seed(0)
    plain = make_net(similarity_params="2").fit(X, y)
    assert net.history[-1, "similarity_cosine"] == pytest.approx(
        plain.history[-1, "similarity_cosine"], rel=1e-5
    )


def test_cosines_of_equal_gradients_stay_in_their_range():
    """A dead ReLU layer leaves every sample the last layer's gradient: the
    cosines came out 1 + 2e-16, recorded and returned (arccos: NaN)."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(6, 3), np.array([0, 0, 1, 1, 2, 2])
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU())
    module.append(torch.nn.Linear(5, 3)).double()
    with torch.no_grad():
        module[0].bias.fill_(-100.0)
    net = SimilarityRegularizedClassifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        verbose=0,
        max_epochs=1,
        batch_size=6,
    ).fit(X, y)
    cosines = net.pair_similarity(X, y, random_state=0)
    assert np.all(np.abs(cosines) <= 1) and np.allclose(cosines, 1)
    assert net.history[-1, "batches", -1, "similarity_cosine"] <= 1


def test_fit_refuses_inputs_with_nan_naming_their_rows():
    """skorch trained on them: one NaN cell made every weight NaN, silently,
    while pair_similarity refused the same inputs."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(10, 3).astype(np.float32), np.arange(10) % 2
    X[2, 1] = np.nan
    net = SimilarityRegularizedClassifier(
        torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ),
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=1,
        train_split=None,
        verbose=0,
    )
    with pytest.raises(ValueError, match=r"NaN or infinity in rows \[2\]"):
        net.fit(X, y)
    with pytest.raises(ValueError, match=r"NaN or infinity in rows \[2\]"):
        net.partial_fit(regularized.with_pairs(X, [[0, 2]]), y)
