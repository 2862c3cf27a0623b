"""Map-style torch datasets as network inputs give the results of arrays."""

import pickle
import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import AnyWidth, KeywordMLP, MaskedMean
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.dataset import Dataset as SkorchDataset
from skorch.dataset import ValidSplit
from torch.utils.data import (
    ConcatDataset,
    Dataset,
    IterableDataset,
    Subset,
    TensorDataset,
)

from sksim import (
    DiffeoTransform,
    GradientDensityEstimator,
    LabelIssueDetector,
    NetworkSimilarityKernel,
    SimilarityRegularizedClassifier,
    SimilarityRegularizedNet,
    SimilarityRegularizedRegressor,
    gradient_features,
    network_similarity,
    relative_sensitivity,
)
from sksim._engine.inputs import batches, take
from sksim._net import predicted_probabilities
from sksim._validation import check_net_input
from sksim.audit import audit
from sksim.denoising import SelfDenoisingAnalysis
from sksim.neighbors import NetworkNeighbors
from sksim.representations import (
    DirichletProcessGaussianMixture,
    class_fitting_report,
    extract_representations,
    memorization_scores,
)

N, BATCH = 30, 7
EXACT = dict(rtol=0, atol=1e-10)


class Pairs(Dataset):
    """Items ``(x, y)`` as NumPy arrays, as a custom dataset would give them."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i].copy(), self.y[i]


class Dicts(Dataset):
    """Items ``{"x": x}``: the network's input by keyword, without labels."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"x": self.X[i].copy()}


class Counting(Dataset):
    """Items ``(x, y)``; counts the items alive at once (fresh arrays each read)."""

    def __init__(self, X, y):
        self.X, self.y = X, y
        self.alive = self.max_alive = self.reads = 0

    def __len__(self):
        return len(self.X)

    def _freed(self):
        self.alive -= 1

    def __getitem__(self, i):
        x = self.X[i].copy()
        self.alive += 1
        self.reads += 1
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(x, self._freed)
        return x, self.y[i]


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(N, 3)
    y = (X[:, 0] > 0).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def net():
    return KeywordMLP()


def as_dataset(X, y, form):
    if form == "tensors":
        return TensorDataset(torch.tensor(X), torch.tensor(y))
    if form == "pairs":
        return Pairs(X, y)
    return Dicts(X)


FORMS = ["tensors", "pairs", "dicts"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["cosine", "ntk", "influence"])
def test_network_similarity_of_datasets_equals_arrays(data, net, form, kind):
    X, y = data
    ds, queries = as_dataset(X, y, form), as_dataset(X[:9], y[:9], form)
    options = dict(kind=kind, batch_size=BATCH)
    expected = network_similarity(net, X, **options)
    np.testing.assert_allclose(
        network_similarity(net, ds, **options), expected, **EXACT
    )
    np.testing.assert_allclose(
        network_similarity(net, queries, ds, **options), expected[:9], **EXACT
    )
    sketched = dict(options, n_components=16, random_state=0)
    np.testing.assert_allclose(
        network_similarity(net, ds, **sketched),
        network_similarity(net, X, **sketched),
        **EXACT,
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n_components", [None, 16])
def test_gradient_features_of_datasets_equal_arrays(data, net, form, n_components):
    X, y = data
    options = dict(n_components=n_components, random_state=0, batch_size=BATCH)
    np.testing.assert_array_equal(
        gradient_features(net, as_dataset(X, y, form), **options),
        gradient_features(net, X, **options),
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n_components", [None, 16])
def test_kernel_estimator_on_datasets_equals_arrays(data, net, form, n_components):
    X, y = data
    ds, queries = as_dataset(X, y, form), as_dataset(X[:9], y[:9], form)
    options = dict(batch_size=BATCH, n_components=n_components, random_state=0)
    on_arrays = NetworkSimilarityKernel(net, **options).fit(X)
    on_data = NetworkSimilarityKernel(net, **options).fit(ds)
    assert on_data.X_fit_ is ds
    n_features = None if form == "dicts" else 3  # none for dicts, as for arrays
    assert getattr(on_data, "n_features_in_", None) == n_features
    expected = on_arrays.transform(X[:9])
    np.testing.assert_allclose(on_data.transform(queries), expected, **EXACT)
    same_shape = dict(x=X[:9]) if form == "dicts" else X[:9]
    np.testing.assert_allclose(on_data.transform(same_shape), expected, **EXACT)
    if form != "dicts":
        np.testing.assert_allclose(on_arrays.transform(queries), expected, **EXACT)
    np.testing.assert_allclose(
        NetworkSimilarityKernel(net, **options).fit_transform(ds),
        on_arrays.fit_transform(X),
        **EXACT,
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "options",
    [
        dict(method="soft"),
        dict(method="hard", threshold=0.5),
        dict(method="hard", threshold=0.5, n_components=16, random_state=0),
    ],
)
def test_density_on_datasets_equals_arrays(data, net, form, options):
    X, y = data
    ds, queries = as_dataset(X, y, form), as_dataset(X[:9], y[:9], form)
    on_arrays = GradientDensityEstimator(net, batch_size=BATCH, **options).fit(X)
    on_data = GradientDensityEstimator(net, batch_size=BATCH, **options).fit(ds)
    expected = on_arrays.neighbor_counts(X[:9])
    assert expected.max() > expected.min()  # the counts tell the queries apart
    np.testing.assert_allclose(on_data.neighbor_counts(queries), expected, **EXACT)
    np.testing.assert_allclose(
        on_data.score_samples(ds), on_arrays.score_samples(X), **EXACT
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n_components", [None, 16])
def test_neighbors_on_datasets_equal_arrays(data, net, form, n_components):
    X, y = data
    ds, queries = as_dataset(X, y, form), as_dataset(X[:9], y[:9], form)
    options = dict(n_neighbors=4, batch_size=BATCH, n_components=n_components)
    on_arrays = NetworkNeighbors(net, random_state=0, **options).fit(X)
    on_data = NetworkNeighbors(net, random_state=0, **options).fit(ds)
    assert on_data.n_samples_fit_ == N
    for got, expected in [
        (on_data.most_similar(queries), on_arrays.most_similar(X[:9])),
        (on_data.most_similar(), on_arrays.most_similar()),
    ]:
        np.testing.assert_allclose(got[0], expected[0], **EXACT)
        np.testing.assert_array_equal(got[1], expected[1])
    if n_components is not None:  # the recall on held-out queries
        on_arrays.fit(X, X_val=X[:9])
        assert on_data.fit(ds, X_val=queries).recall_ == on_arrays.recall_


def test_datasets_go_to_parallel_workers(data, net):
    X, y = data
    queries = Pairs(X[:9], y[:9])
    nn = NetworkNeighbors(net, n_neighbors=4, batch_size=BATCH).fit(X)
    expected = nn.most_similar(X[:9])
    got = nn.set_params(n_jobs=2).most_similar(queries)  # chunks of rows
    np.testing.assert_allclose(got[0], expected[0], **EXACT)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(
        network_similarity(net, queries, Pairs(X, y), n_jobs=2),  # tiles
        network_similarity(net, X[:9], X),
        **EXACT,
    )


@pytest.mark.parametrize("weights", ["hard", "ntk"])
@pytest.mark.parametrize("form", ["tensors", "pairs"])
def test_denoising_takes_labels_from_dataset_items(data, form, weights):
    X, _ = data
    net = KeywordMLP(n_outputs=2)
    targets = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    options = dict(weights=weights, threshold=0.5, batch_size=BATCH)
    expected = SelfDenoisingAnalysis(net, **options).fit(X, targets)
    ds = as_dataset(X, targets, form)
    for got in [
        SelfDenoisingAnalysis(net, **options).fit(ds),
        SelfDenoisingAnalysis(net, **options).fit(Dicts(X), targets),
    ]:
        for name in ["predictions_", "targets_", "noise_covariance_", "self_weight_"]:
            np.testing.assert_allclose(
                getattr(got, name), getattr(expected, name), **EXACT
            )
        assert got.sigma_ == pytest.approx(expected.sigma_, rel=1e-12)


def test_denoising_needs_labels_in_dataset_or_y(data):
    with pytest.raises(ValueError, match="or pass a Dataset of \\(x, y\\) items"):
        SelfDenoisingAnalysis(KeywordMLP()).fit(Dicts(data[0]))


def classifier(**kwargs):
    params = dict(
        module=KeywordMLP,
        module__dtype=torch.float32,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=3,
        lr=0.1,
        batch_size=8,
        verbose=0,
    )
    return NeuralNetClassifier(**(params | kwargs))


def assert_same_weights(a, b):
    for (name, p), q in zip(
        a.module_.named_parameters(), b.module_.parameters(), strict=True
    ):
        np.testing.assert_array_equal(p.detach(), q.detach(), err_msg=name)


@pytest.mark.parametrize("split", ["stratified", None])
def test_unfitted_skorch_classifier_trains_on_labels_in_dataset(data, split):
    X, y = data
    X = X.astype(np.float32)
    net = classifier() if split else classifier(train_split=None)
    ds = TensorDataset(torch.tensor(X), torch.tensor(y))
    on_arrays = NetworkSimilarityKernel(net, random_state=0).fit(X, y)
    on_data = NetworkSimilarityKernel(net, random_state=0).fit(ds)
    assert on_data.net_.initialized_ and on_data.net is net
    assert_same_weights(on_data.net_, on_arrays.net_)
    assert len(on_data.net_.history) == 3
    np.testing.assert_array_equal(on_data.net_.classes_, [0, 1])
    np.testing.assert_allclose(on_data.transform(ds), on_arrays.transform(X), **EXACT)


def test_unfitted_skorch_regressor_trains_on_dataset_or_given_labels(data):
    X, _ = data
    X = X.astype(np.float32)
    targets = np.sin(X[:, :1])
    net = NeuralNetRegressor(
        KeywordMLP, module__n_outputs=1, module__dtype=torch.float32, max_epochs=3,
        lr=0.1, batch_size=8, train_split=None, verbose=0,
    )  # fmt: skip
    on_arrays = GradientDensityEstimator(net, random_state=0).fit(X, targets)
    in_items = GradientDensityEstimator(net, random_state=0).fit(Pairs(X, targets))
    given = GradientDensityEstimator(net, random_state=0).fit(Dicts(X), targets)
    for fitted in [in_items, given]:
        assert_same_weights(fitted.net_, on_arrays.net_)
        np.testing.assert_allclose(
            fitted.reference_sum_, on_arrays.reference_sum_, **EXACT
        )


@pytest.mark.parametrize("labels", ["series", "int32", "float64"])
def test_labels_train_as_array_labels_do(data, labels):
    """Given with a dataset or in its items: converted (and read by position)
    as labels given with arrays are."""
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None)
    on_arrays = NetworkSimilarityKernel(net, random_state=0).fit(X, y)
    shuffled = np.random.RandomState(1).permutation(N)  # a shuffled frame's index
    given = dict(
        series=pd.Series(y, index=shuffled),
        int32=y.astype(np.int32),
        float64=y.astype(np.float64),
    )[labels]
    fits = [NetworkSimilarityKernel(net, random_state=0).fit(Dicts(X), given)]
    if labels != "series":
        items = Pairs(X, given)
        fits.append(NetworkSimilarityKernel(net, random_state=0).fit(items))
    for fitted in fits:
        assert_same_weights(fitted.net_, on_arrays.net_)


def test_unfitted_regressor_takes_one_value_per_item(data):
    """1-D targets become a column, as the network's outputs are (n, 1)."""
    X, _ = data
    X = X.astype(np.float32)
    targets = np.sin(X[:, 0])
    net = NeuralNetRegressor(
        KeywordMLP, module__n_outputs=1, module__dtype=torch.float32, max_epochs=3,
        lr=0.1, batch_size=8, train_split=None, verbose=0,
    )  # fmt: skip
    on_arrays = GradientDensityEstimator(net, random_state=0).fit(X, targets)
    for X_fit, y_fit in [(Dicts(X), targets), (Pairs(X, targets), None)]:
        fitted = GradientDensityEstimator(net, random_state=0).fit(X_fit, y_fit)
        assert_same_weights(fitted.net_, on_arrays.net_)


def test_wrapped_skorch_datasets_made_without_labels_carry_none(data):
    """skorch's Dataset(X) gives a placeholder target, not a label."""
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None)
    for wrapped in [
        Subset(SkorchDataset(X), range(N)),
        ConcatDataset([SkorchDataset(X[:10]), SkorchDataset(X[10:])]),
    ]:
        with pytest.raises(ValueError, match="dataset's items carry no labels"):
            NetworkSimilarityKernel(net).fit(wrapped)
        with pytest.raises(ValueError, match="requires y to be passed"):
            LabelIssueDetector(on_arrays_net(X, y), cv="prefit").fit(wrapped)
    mixed = ConcatDataset([SkorchDataset(X[:10], y[:10]), SkorchDataset(X[10:])])
    with pytest.raises(ValueError, match="others x alone: give them all labels"):
        NetworkSimilarityKernel(net).fit(mixed)


def on_arrays_net(X, y):
    torch.manual_seed(0)
    return classifier(train_split=None).fit(X, y)


def test_unfitted_skorch_net_needs_labels(data):
    X, y = data
    net = classifier(train_split=None)
    with pytest.raises(ValueError, match="dataset's items carry no labels"):
        NetworkSimilarityKernel(net).fit(Dicts(X.astype(np.float32)))
    with pytest.raises(ValueError, match="X has 30 items but y has 29 labels"):
        NetworkSimilarityKernel(net).fit(Dicts(X.astype(np.float32)), y[:-1])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cv", [2, "prefit"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # float64: cast
def test_label_issues_of_datasets_equal_arrays(data, form, cv, dtype):
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None)
    if cv == "prefit":
        net = net.fit(X, y)
    expected = LabelIssueDetector(net, cv=cv, n_neighbors=4, random_state=0).fit(X, y)
    given = None if form != "dicts" else y  # dicts carry no labels
    detector = LabelIssueDetector(net, cv=cv, n_neighbors=4, random_state=0)
    if cv == 2 and dtype == np.float64:  # training: refused, as arrays are
        with pytest.raises(TypeError, match=r"a dataset's items in its __getitem"):
            detector.fit(as_dataset(X.astype(dtype), y, form), given)
        return
    got = detector.fit(as_dataset(X.astype(dtype), y, form), given)
    np.testing.assert_array_equal(got.neighbor_indices_, expected.neighbor_indices_)
    for name in ["oof_proba_", "neighbor_similarities_", "scores_"]:
        np.testing.assert_allclose(
            getattr(got, name), getattr(expected, name), rtol=0, atol=1e-6
        )
    np.testing.assert_array_equal(got.suggested_labels_, expected.suggested_labels_)


@pytest.mark.filterwarnings("ignore:.*never \\(or always\\) in the training subsets")
def test_memorization_scores_of_datasets_equal_arrays(data):
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None)
    expected = memorization_scores(net, X, y, n_models=6, random_state=0)
    for dataset, given in [(Pairs(X, y), None), (Dicts(X), y)]:
        got = memorization_scores(net, dataset, given, n_models=6, random_state=0)
        np.testing.assert_array_equal(got, expected)


def test_label_estimators_need_labels_in_dataset_or_y(data):
    X = data[0].astype(np.float32)
    net = classifier(train_split=None)
    with pytest.raises(ValueError, match="or a Dataset of \\(x, y\\) items"):
        LabelIssueDetector(net, cv=2).fit(Dicts(X))
    with pytest.raises(ValueError, match="or a Dataset of \\(x, y\\) items"):
        memorization_scores(net, Dicts(X), n_models=2)


def test_labels_given_for_items_whose_second_value_is_an_input_are_refused(data, net):
    """TensorDataset(ids, mask) items are pairs: the y given replaced each
    attention mask, which the network never got (neighbours of 88 % of a
    masked audit's, without a word)."""
    X, y = data[0].astype(np.float32), data[1]
    pairs = TensorDataset(torch.as_tensor(X), torch.as_tensor(X[:, :3]))
    message = r"second value, of shape \(3,\), the y given replaces with labels"
    with pytest.raises(ValueError, match=message):
        NetworkNeighbors(net, n_neighbors=2).fit(pairs, y)
    with pytest.raises(ValueError, match=message):
        NetworkSimilarityKernel(classifier(train_split=None)).fit(pairs, y)  # trains
    # labels replacing labels (a column of them), or skorch's placeholder
    for labelled in (
        TensorDataset(torch.as_tensor(X), torch.as_tensor(y[:, None])),
        SkorchDataset(X),
        Subset(SkorchDataset(X), np.arange(len(X))),
        ConcatDataset([SkorchDataset(X[:5]), SkorchDataset(X[5:], y[5:])]),
    ):
        found = NetworkNeighbors(net, n_neighbors=2).fit(labelled, y)
        np.testing.assert_array_equal(found.y_fit_, y)


def test_an_attention_mask_read_as_a_label_is_warned_of():
    """Without y, TensorDataset(ids, mask) items gave the kernel of the ids
    alone (0.63 off the masked one), the mask read as a label, without a word."""
    ids = torch.randint(0, 10, (12, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(12, 5, dtype=torch.long)
    mask[:, 3:] = 0
    with pytest.warns(UserWarning, match=r"looks like their attention mask"):
        network_similarity(MaskedMean(), TensorDataset(ids, mask))
    with pytest.warns(UserWarning, match=r"looks like their attention mask"):
        items = TensorDataset(ids[:, None], mask[:, None])  # a tokenizer's (1, L)
        check_net_input(items)
    labels = torch.randint(0, 4, (12, 5), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # labels per token, and labels
        network_similarity(MaskedMean(), TensorDataset(ids, labels + 2))
        network_similarity(MaskedMean(), TensorDataset(ids, labels[:, 0]))


def test_a_list_of_examples_as_dicts_is_refused_with_the_dict_to_pass(data, net):
    examples = [{"x": row} for row in data[0][:5]]
    with pytest.raises(ValueError, match=r"list of dicts, one per example"):
        network_similarity(net, examples)


class LabelsByKey(Dicts):
    """Items ``{"x": x, "labels": y}``, as Hugging Face's datasets give them."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __getitem__(self, i):
        return {"x": self.X[i].copy(), "labels": self.y[i]}


def test_labels_held_by_key_are_named_when_labels_are_missing(data):
    X, y = data[0].astype(np.float32), data[1]
    keyed = LabelsByKey(X, y)
    hint = "inputs hold 'labels', which skorch passes to the network's forward"
    with pytest.raises(ValueError, match=hint):
        LabelIssueDetector(classifier(train_split=None), cv=2).fit(keyed)
    with pytest.raises(ValueError, match=hint):
        NetworkSimilarityKernel(classifier(train_split=None)).fit(keyed)
    with pytest.raises(ValueError, match=hint):
        audit(classifier(train_split=None), keyed)
    with pytest.raises(ValueError, match=r"items\.$"):  # no hint without the key
        audit(classifier(train_split=None), Dicts(X))
    arrays = {"x": X, "labels": y}  # a dict input: the labels are taken out of it
    for fit in (
        lambda: LabelIssueDetector(classifier(train_split=None), cv=2).fit(arrays),
        lambda: audit(classifier(train_split=None), arrays),
    ):
        with pytest.raises(ValueError, match=f"{hint}.*pass them as y, and X without"):
            fit()


def test_datasets_are_read_batch_by_batch(data, net):
    X, y = data
    batch_size = 4
    ds = Counting(X, y)
    expected = NetworkSimilarityKernel(net, batch_size=batch_size).fit(X)
    kernel = NetworkSimilarityKernel(net, batch_size=batch_size).fit(ds)
    np.testing.assert_allclose(kernel.transform(ds), expected.transform(X), **EXACT)
    GradientDensityEstimator(net, batch_size=batch_size).fit(ds).neighbor_counts(ds)
    NetworkNeighbors(net, batch_size=batch_size).fit(ds).most_similar()
    network_similarity(net, ds, batch_size=batch_size, n_components=8)
    assert ds.reads > 4 * N  # every call above read every item
    assert 1 <= ds.max_alive <= batch_size
    assert ds.alive == 0


def test_taken_rows_are_lazy_views_that_pickle(data):
    X, y = data
    ds = Counting(X, y)
    rows = take(take(ds, slice(10, 20)), np.array([1, 3]))
    assert ds.reads == 0 and len(rows) == 2
    copy = pickle.loads(pickle.dumps(rows))
    np.testing.assert_array_equal(copy[1][0], X[13])


def test_nan_in_an_item_is_refused_naming_it(data, net):
    X, y = data
    X = X.copy()
    X[12, 1] = np.nan
    message = r"Input {} contains NaN or infinity in dataset items \[12\]; the"
    with pytest.raises(ValueError, match=message.format("X")):
        network_similarity(net, Pairs(X, y), batch_size=BATCH)
    with pytest.raises(ValueError, match=message.format("x")):
        GradientDensityEstimator(net, batch_size=BATCH).fit(Dicts(X))
    rows = take(Pairs(X, y), slice(10, 20))
    with pytest.raises(ValueError, match=r"dataset items \[12\]"):
        list(batches(rows, 4, torch.device("cpu"), torch.float64))


class Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_items_a_skorch_net_cannot_batch_are_explained(data):
    """skorch's collation raised torch's RuntimeError as it was."""
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None).fit(X, y)
    ragged = Items(
        [
            (x if i < 20 else x[:2], label)
            for i, (x, label) in enumerate(zip(X, y, strict=True))
        ]
    )
    with pytest.raises(ValueError, match="could not batch the dataset's items .* pad"):
        LabelIssueDetector(net, cv="prefit").fit(ragged)


class ReadTogether(Pairs):
    """Items ``(x, y)`` that ``__getitems__`` reads together (a mapped file's)."""

    def __init__(self, X, y):
        super().__init__(X, y)
        self.alone = self.together = 0

    def __getitem__(self, i):
        self.alone += 1
        return super().__getitem__(i)

    def __getitems__(self, rows):
        self.together += 1
        return [Pairs.__getitem__(self, i) for i in rows]


def test_a_skorch_nets_predictions_read_items_together(data):
    """The dtype's cast of a dataset read every item alone: 600 reads of a
    mapped file, row by row, instead of 5."""
    X, y = data
    net = classifier(train_split=None).fit(X.astype(np.float32), y)
    dataset = ReadTogether(X, y)  # float64: cast for the float32 module
    P = predicted_probabilities(net, dataset)
    np.testing.assert_allclose(P, net.predict_proba(X.astype(np.float32)), rtol=1e-6)
    assert dataset.alone == 0 and dataset.together == -(-len(X) // net.batch_size)


def test_items_of_other_shapes_in_later_batches_are_refused():
    """Sequences bucketed by length: each batch stacks, but batches differ."""
    short, long = np.zeros((4, 2), np.int64), np.ones((4, 8), np.int64)
    bucketed = Items([*long, *short])
    with pytest.raises(
        ValueError, match=r"items 4 to 7 have the shape \(2,\) .* \(8,\)"
    ):
        list(batches(bucketed, 4, torch.device("cpu"), torch.float32))


class Augmented(Dataset):
    """Items with fresh noise at every read, as a training transform gives."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        x = torch.as_tensor(self.X[i])
        return x + 0.1 * torch.randn_like(x)


class Flipped(Augmented):
    """Items reversed for half the reads, at random, as a horizontal flip."""

    def __init__(self, X, seed):
        super().__init__(X)
        self.rng = np.random.RandomState(seed)

    def __getitem__(self, i):
        x = torch.as_tensor(self.X[i])
        return x.flip(0) if self.rng.rand() < 0.5 else x


def test_items_that_change_between_reads_are_refused(data, net):
    X, y = data
    augmented = Augmented(X)
    with pytest.raises(ValueError, match="item 0 differs from one read to the next"):
        network_similarity(net, Augmented(X))
    with pytest.raises(ValueError, match="item 0 differs from one read to the next"):
        NetworkNeighbors(net, n_neighbors=2).fit(Pairs(X, y)).kneighbors(augmented)
    # flipped for half the reads: item 0 alone was read twice, and 4 of 12
    # seeds ran to the end with mixed versions of the items
    for seed in range(12):
        flipped = Flipped(X, seed)
        with pytest.raises(ValueError, match="differs from one read to the next"):
            network_similarity(net, flipped)
    stable = Pairs(X.copy(), y)
    stable.X[0, 0] = np.nan  # NaN equals NaN here: the NaN error names the item
    with pytest.raises(ValueError, match=r"NaN or infinity in dataset items \[0\]"):
        network_similarity(net, stable)


def test_invalid_datasets_are_refused_with_a_reason(data, net):
    X, y = data
    with pytest.raises(TypeError, match="IterableDataset, without random access"):
        network_similarity(net, Stream())

    class SizedStream(Stream):  # a length does not make it map-style
        def __len__(self):
            return 3

    with pytest.raises(TypeError, match="IterableDataset, without random access"):
        network_similarity(net, SizedStream())
    with pytest.raises(ValueError, match=r"list of \(x, y\) items, as scikit-learn"):
        network_similarity(net, [Pairs(X, y)[i] for i in range(4)])
    # pairs that numpy stacks are examples of two rows each, as before
    views = [(x, 2 * x) for x in X[:4]]
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2)).double()
    np.testing.assert_array_equal(
        network_similarity(flat, views), network_similarity(flat, np.asarray(views))
    )
    loader = torch.utils.data.DataLoader(Pairs(X, y), batch_size=4)
    with pytest.raises(TypeError, match=r"DataLoader: pass its dataset \(loader"):
        network_similarity(net, loader)
    with pytest.raises(TypeError, match="iterator .generator., which can be read"):
        network_similarity(net, (x for x in X))
    image = np.zeros((2, 1, 5, 5))
    for streamed in (loader, Stream()):
        with pytest.raises(TypeError, match="DataLoader|map-style torch Dataset"):
            relative_sensitivity(net, streamed, reference=None)
    with pytest.raises(TypeError, match="not a TensorDataset: pass its inputs"):
        DiffeoTransform().fit_transform(TensorDataset(torch.as_tensor(image)))
    with pytest.raises(ValueError, match="Found a dataset with 0 items"):
        network_similarity(net, Items([]))
    with pytest.raises(ValueError, match="scalar input X"):
        network_similarity(net, Items([1.0, 2.0]))
    with pytest.raises(
        ValueError, match="holds input X of dtype <U1; expected real numbers"
    ):
        network_similarity(net, Items(["a", "b"]))
    stacked = r"stacked into a batch: .*[^.]\. Every .*\(pad sequences"
    with pytest.raises(ValueError, match=stacked):
        network_similarity(net, Items([X[0], X[1, :2]]))
    with pytest.raises(ValueError, match="holds input X as a list, which torch's"):
        network_similarity(net, Items([(X[0].tolist(), 0), (X[1].tolist(), 1)]))
    several = r"as a tuple, .* or several inputs as a dict of them"
    with pytest.raises(ValueError, match=several):  # (image, tabular), label
        network_similarity(net, Items([((X[0], X[0, :2]), 0), ((X[1], X[1, :2]), 1)]))
    with pytest.raises(ValueError, match=r"holds 3 values.*numbers as an array"):
        network_similarity(net, Items([X[0].tolist(), X[1].tolist()]))
    with pytest.raises(ValueError, match=r"scalar input X.*read as \(x, y\)"):
        network_similarity(net, Items([X[0, :2].tolist(), X[1, :2].tolist()]))
    # (input_ids, attention_mask, labels): the mask was taken for the labels
    triples = TensorDataset(torch.as_tensor(X), torch.as_tensor(X), torch.as_tensor(y))
    for estimator in (NetworkSimilarityKernel(net), NetworkNeighbors(net)):
        with pytest.raises(ValueError, match=r"holds 3 values; items are x or"):
            estimator.fit(triples)
    kernel = NetworkSimilarityKernel(net).fit(Pairs(X, y))
    wide = Items([np.ones(4)] * 3)
    with pytest.raises(ValueError, match="X has 4 features, but Network"):
        kernel.transform(wide)
    with pytest.raises(ValueError, match="X has 4 features, but Network"):
        NetworkSimilarityKernel(net).fit(X).transform(wide)


def test_labels_of_invalid_datasets_are_refused_before_they_are_read(data, net):
    """Reading the labels of items came first: torch's NotImplementedError for
    an IterableDataset, an IndexError for an empty one."""
    X, y = data
    for labels in (None, y):  # y given: read against the items' own first
        with pytest.raises(TypeError, match="pass a map-style torch Dataset"):
            class_fitting_report(net, Stream(), labels, layers=["hidden"])
        with pytest.raises(ValueError, match="Found a dataset with 0 items"):
            class_fitting_report(net, Items([]), labels, layers=["hidden"])
    # as skorch does, the regularised classifier trains on a stream of items
    stream = Batches(X, y)
    classifier = SimilarityRegularizedClassifier(
        KeywordMLP,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=1,
        train_split=None,
        batch_size=8,
        verbose=0,
    ).fit(stream, None)
    assert classifier.history[-1, "train_loss"] > 0
    with pytest.raises(TypeError, match="KNeighborsClassifier takes arrays"):
        memorization_scores(KNeighborsClassifier(1), Pairs(X, y), n_models=3)


class Batches(IterableDataset):
    """A stream of ``(x, y)`` items, without a length."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        return iter(zip(self.X, self.y, strict=True))


class TokenMean(torch.nn.Module):
    """Token ids of any length, embedded and averaged, to 2 logits."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(12, 4), torch.nn.Linear(4, 2)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)).mean(dim=1))


def test_token_datasets_of_another_length_are_taken_as_arrays_are():
    """Token ids padded to another length: arrays were taken, a Dataset of
    them refused ("X has 4 features, but ... is expecting 6")."""
    torch.manual_seed(0)
    module = TokenMean()
    rng = np.random.RandomState(0)
    ids, queries = rng.randint(1, 12, (20, 6)), rng.randint(1, 12, (5, 4))
    for estimator in (NetworkSimilarityKernel(module), NetworkNeighbors(module)):
        from_arrays = estimator.fit(ids)
        expected = (
            from_arrays.transform(queries)
            if isinstance(estimator, NetworkSimilarityKernel)
            else from_arrays.kneighbors(queries)[1]
        )
        fitted = clone(estimator).fit(Items(ids))
        found = (
            fitted.transform(Items(queries))
            if isinstance(estimator, NetworkSimilarityKernel)
            else fitted.kneighbors(Items(queries))[1]
        )
        np.testing.assert_allclose(found, expected, rtol=1e-6)
    # integer images are not token ids: another size is refused, as from arrays
    images = np.random.RandomState(0).randint(0, 255, (20, 8, 8)).astype(np.uint8)
    kernel = NetworkSimilarityKernel(AnyWidth()).fit(Items(images))
    with pytest.raises(ValueError, match="X has 6 features, but NetworkSimilarity"):
        kernel.transform(Items(images[:3, :6, :6]))


@pytest.mark.parametrize("items", ["flipped", "read_only"])
def test_items_torch_cannot_take_are_copied(data, net, items):
    """A flipped view x[::-1] failed inside torch ("stride ... is negative"),
    read-only arrays (a memory map's rows) leaked torch's warning."""
    X, _ = data
    source = X.copy()
    if items == "read_only":
        source.setflags(write=False)
        dataset = Items(source)
    else:
        dataset = Items(source[:, ::-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = network_similarity(net, dataset)
    expected = source if items == "read_only" else source[:, ::-1].copy()
    np.testing.assert_allclose(K, network_similarity(net, expected), rtol=1e-12)


def test_representations_of_datasets_equal_arrays(data, net):
    X, y = data
    got = extract_representations(net, Pairs(X, y), "hidden", batch_size=BATCH)
    expected = extract_representations(net, X, "hidden", batch_size=BATCH)
    np.testing.assert_array_equal(got["hidden"], expected["hidden"])


def regularized(**kwargs):
    params = dict(
        module=KeywordMLP,
        module__dtype=torch.float32,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=2,
        lr=0.1,
        batch_size=8,
        train_split=None,
        verbose=0,
        similarity_weight=0.5,
    )
    return SimilarityRegularizedClassifier(**(params | kwargs))


def trained_weights(net, X, y):
    torch.manual_seed(0)
    net.fit(X, y)
    return [p.detach().clone() for p in net.module_.parameters()]


def test_regularized_net_trains_on_the_labels_given_with_a_dataset(data):
    """A y given replaces the items' labels, and gives labels to x-only items."""
    X, y = data
    X = X.astype(np.float32)
    other = 1 - y
    expected = trained_weights(regularized(), X, other)
    for dataset in (Pairs(X, y), Dicts(X)):
        got = trained_weights(regularized(), dataset, other)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    own = trained_weights(regularized(), Pairs(X, y), None)
    assert not torch.allclose(own[0], expected[0])  # trained on the items' labels


def test_regularized_pair_similarity_of_datasets_equals_arrays(data):
    X, y = data
    X = X.astype(np.float32)
    net = regularized()
    net.fit(X, y)
    expected = net.pair_similarity(X, y, random_state=0, batch_size=BATCH)
    for dataset, given in [(Pairs(X, y), None), (Dicts(X), y)]:
        got = net.pair_similarity(dataset, given, random_state=0, batch_size=BATCH)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="same_class"):
        net.pair_similarity(Dicts(X), random_state=0)


def test_class_fitting_report_takes_labels_from_dataset_items(data, net):
    X, y = data
    mixture = DirichletProcessGaussianMixture(backend="variational")
    options = dict(n_components=3, mixture=mixture, n_bins=3, random_state=0)
    expected = class_fitting_report(net, X, y, "hidden", **options)
    got = class_fitting_report(net, Pairs(X, y), None, "hidden", **options)
    for name in ("classes", "splits", "bins"):
        for column in expected[name]:
            np.testing.assert_array_equal(got[name][column], expected[name][column])
    with pytest.raises(ValueError, match="or a Dataset of \\(x, y\\) items"):
        class_fitting_report(net, Dicts(X), None, "hidden", **options)


def test_audit_reads_held_out_items_in_the_class_fitting_batches(data):
    """The held-out examples' representations are read in the batches the
    class fitting's options ask for, as the net's own predictions are."""
    X, y = data
    X = X.astype(np.float32)
    net = classifier(train_split=None, batch_size=4).fit(X, y)
    held_out = Counting(X, y)
    options = dict(class_fitting=dict(n_components=3, n_bins=3, batch_size=4))
    audit(
        net,
        X,
        y,
        cv="prefit",
        analyses=["class_fitting"],
        X_test=held_out,
        y_test=y,
        layers=["hidden"],
        options=options,
        errors="raise",
    )
    assert held_out.reads >= N and 1 <= held_out.max_alive <= 4


def test_audit_reads_datasets_without_a_batch_size_by_bytes(data, monkeypatch):
    """The cache's fingerprint and the tabular examples' moments read as many
    items as fit in READ_BYTES (measured on the first item), not a count."""
    from sksim.audit import _examples, cache

    X, y = data
    # three features, read as float64 for the fingerprint, float32 for moments
    monkeypatch.setattr(cache, "READ_BYTES", 4 * 3 * 8)
    monkeypatch.setattr(_examples, "READ_BYTES", 2 * 3 * 4)
    ds = Counting(X, y)
    assert cache.dataset_fingerprint(ds) == cache.dataset_fingerprint(Pairs(X, y))
    assert ds.reads > N and ds.max_alive == 4
    ds = Counting(X, y)
    mean, std = _examples._moments(ds)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, X.std(axis=0), rtol=1e-5)
    assert ds.reads > 2 * N and ds.max_alive == 2
    # an array in blocks of as many rows too (their deviations were one array)
    for rows in (X, X.astype(np.float32)):
        blocked = _examples._moments(rows)
        np.testing.assert_allclose(blocked[0], X.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(blocked[1], X.std(axis=0), rtol=1e-5)


def test_items_of_two_sources_mixing_arrays_and_tensors(data, net):
    """torch's collation refused the mix: "expected Tensor as element 20"."""
    X, y = data
    X = X.astype(np.float32)
    mixed = ConcatDataset(
        [
            TensorDataset(torch.tensor(X[:20]), torch.tensor(y[:20])),
            Pairs(X[20:], y[20:]),
        ]
    )
    net = KeywordMLP(dtype=torch.float32)
    np.testing.assert_allclose(
        network_similarity(net, mixed), network_similarity(net, X), rtol=0, atol=1e-6
    )
    found = NetworkNeighbors(net, n_neighbors=3).fit(mixed)
    np.testing.assert_array_equal(found.y_fit_, y)


def test_bfloat16_items_give_what_a_bfloat16_tensor_gives(data):
    """Reading the first item twice went through NumPy, which has no bfloat16."""
    X, _ = data
    net = KeywordMLP(dtype=torch.float32)
    X = torch.tensor(X).bfloat16()
    np.testing.assert_array_equal(
        network_similarity(net, TensorDataset(X)), network_similarity(net, X)
    )


def test_regularized_nets_fit_a_dataset_without_y(data):
    """skorch's classifier and regressor take fit(X, y): fit(dataset) was refused."""
    X, y = data
    X = X.astype(np.float32)
    for net, targets in (
        (regularized, y),
        (
            lambda: SimilarityRegularizedRegressor(
                KeywordMLP(1, torch.float32),
                similarity_pairs=lambda x: x,
                max_epochs=2,
                train_split=None,
                verbose=0,
            ),
            X[:, 0],
        ),
    ):
        torch.manual_seed(0)
        got = [
            p.detach().clone()
            for p in net().fit(Pairs(X, targets)).module_.parameters()
        ]
        expected = trained_weights(net(), Pairs(X, targets), None)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float64_inputs_to_a_float32_skorch_net_are_explained(data):
    """skorch trains on them as they are: torch's bare "mat1 and mat2" error.

    A prefit net's predictions take them in its dtype, as the kernels do.
    """
    X, y = data
    net = classifier(train_split=None)
    with pytest.raises(TypeError, match=r"convert them, e.g. X.astype\(np.float32\)"):
        LabelIssueDetector(net, cv=2, n_neighbors=4).fit(X, y)


def test_regularized_classifier_fits_and_predicts_datasets_as_arrays(data):
    """fit(dataset) failed on the default stratified split ("Stratified CV
    requires explicitly passing a suitable y"), and predict on a dataset of
    x items failed in skorch, which reads (x, y) items."""
    X, y = data
    X = X.astype(np.float32)
    params = dict(train_split=ValidSplit(3, stratified=True), max_epochs=3)
    expected = trained_weights(regularized(**params), X, y)
    net = regularized(**params)
    got = trained_weights(net, Pairs(X, y), None)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(net.predict_proba(Dicts(X)), net.predict_proba(X))
    np.testing.assert_array_equal(net.predict(Dicts(X)), net.predict(X))


class RaggedTargets(Dataset):
    """Items ``(x, y)`` whose targets have 1 to 3 values, padded by a collate_fn."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.full((4,), float(i)), torch.arange(1.0, 2 + i % 3)


def padded(items):
    xs, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.nn.utils.rnn.pad_sequence(ys, batch_first=True)


class PaddedMSE(torch.nn.Module):
    def forward(self, out, y):
        return ((out[:, : y.shape[1]] - y) ** 2).mean()


def test_a_regularized_net_streams_targets_that_do_not_stack():
    """Every fit read the dataset's targets whole and stacked them, which
    these cannot be, as skorch alone does not."""
    torch.manual_seed(0)
    net = SimilarityRegularizedNet(
        torch.nn.Linear(4, 3),
        criterion=PaddedMSE,
        max_epochs=1,
        batch_size=4,
        train_split=None,
        verbose=0,
        similarity_pairs=lambda x: x + 0.01,
        similarity_readout="random",
        iterator_train__collate_fn=padded,
    )
    net.fit(RaggedTargets())
    assert len(net.history[-1]["batches"]) == 3


def test_a_regularized_regressor_trains_on_a_dataset_as_on_arrays():
    """The items' scalar targets were compared with (n, 1) outputs by
    broadcasting: a training MSE of 4.8 against 4e-14 on arrays."""
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5], np.float32)

    def trained(X, y=None):
        torch.manual_seed(0)
        return SimilarityRegularizedRegressor(
            torch.nn.Linear(3, 1),
            max_epochs=5,
            lr=0.1,
            batch_size=8,
            train_split=None,
            verbose=0,
            similarity_pairs=lambda x: x + 0.01,
        ).fit(X, y)

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(trained(dataset).predict(X), trained(X, y).predict(X))
